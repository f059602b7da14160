//! `snapshot purge`, `prune` and `snapshot remove`: keyless maintenance.

use std::io::{BufRead, Write};

use serde_json::json;

use super::settings::Settings;
use super::{Expect, Requests, json_report, open_existing_store, output};
use crate::cli::PurgeArgs;
use crate::error::{Error, Result};
use crate::gc::purge::{Purge, Report};
use crate::gc::{self, Collect, Decision, Keep, Retention, View};
use crate::human_bytes;
use crate::index::Index;
use crate::lock::RunLock;
use crate::manifest::{self, Summary};
use crate::store::{self, Store};
use crate::time::now as unix_now;

impl Report {
    pub fn print_text(&self, out: &mut impl Write, purge: bool) -> std::io::Result<()> {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        if purge {
            writeln!(out, "{verb} {} snapshot(s)", self.removed.len())?;
            for m in &self.removed {
                writeln!(
                    out,
                    "  {}  {}  {}",
                    m.id,
                    crate::time::display(m.time),
                    human_bytes(m.total_size())
                )?;
            }
        }
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        writeln!(
            out,
            "{verb} {} unreferenced object(s), {}",
            self.deleted.len(),
            human_bytes(Collect::bytes(&self.deleted))
        )?;
        if !self.marked.is_empty() {
            let verb = if self.dry_run { "would mark" } else { "marked" };
            writeln!(
                out,
                "{verb} {} unreferenced blob(s), {}, for deletion by a purge at least {} from when they were marked",
                self.marked.len(),
                human_bytes(Collect::bytes(&self.marked)),
                crate::human_duration(self.grace)
            )?;
        }
        if !self.young.is_empty() {
            writeln!(
                out,
                "kept {} unreferenced object(s), {}, younger than the grace period ({})",
                self.young.len(),
                human_bytes(Collect::bytes(&self.young)),
                crate::human_duration(self.grace)
            )?;
        }
        if !self.ahead.is_empty() {
            writeln!(
                out,
                "left alone {} snapshot(s) dated ahead of the store's clock \
                 (remove them with `vaultik snapshot remove`): {}",
                self.ahead.len(),
                self.ahead.join(", ")
            )?;
        }
        if self.foreign > 0 {
            writeln!(
                out,
                "left alone {} object(s) that are not vaultik's (see `vaultik store info`)",
                self.foreign
            )?;
        }
        for e in self.early_deletions(crate::time::now()) {
            writeln!(
                out,
                "warning: {} {} object(s), {}, {} before the class's minimum storage duration \
                 of {} days: the provider bills them as if kept that long",
                e.objects,
                e.class,
                human_bytes(e.bytes),
                if self.dry_run { "would go" } else { "go" },
                e.class.min_days()
            )?;
        }
        if let Some((n, bytes, locks)) = &self.lingering {
            if *n > 0 {
                writeln!(
                    out,
                    "versioned bucket: the {n} object(s) {} ({}) stay as noncurrent versions \
                     until a lifecycle rule expires them (see vaultik(1), IMMUTABLE BACKUPS); \
                     locked: {}",
                    if self.dry_run {
                        "this would delete"
                    } else {
                        "deleted"
                    },
                    human_bytes(*bytes),
                    locks.describe()
                )?;
            }
        }
        if let Some(n) = &self.index_note {
            writeln!(out, "{n}")?;
        }
        Ok(())
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "dry_run": self.dry_run,
            "removed_snapshots": self.removed.iter().map(|m| json!({
                "id": m.id, "time": crate::time::rfc3339(m.time), "size": m.total_size(),
            })).collect::<Vec<_>>(),
            "deleted_objects": self.deleted.len(),
            "deleted_bytes": Collect::bytes(&self.deleted),
            "deleted_keys": self.deleted.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
            "young_objects": self.young.len(),
            "young_bytes": Collect::bytes(&self.young),
            "marked_objects": self.marked.len(),
            "marked_bytes": Collect::bytes(&self.marked),
            "grace_period_seconds": self.grace,
            "dated_ahead": self.ahead,
            "foreign_objects": self.foreign,
            "lingering": self.lingering.as_ref().map(|(n, bytes, locks)| json!({
                "objects": n, "bytes": bytes, "locked": locks.to_json(),
            })),
            "early_deletions": self.early_deletions(crate::time::now()).iter().map(|e| json!({
                "class": e.class.name(), "objects": e.objects, "bytes": e.bytes,
                "minimum_days": e.class.min_days(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The local index when this host has one for this store and no run holds
/// it; maintenance never creates or resets an index.
pub(super) fn local_index(
    settings: &Settings,
    store: &dyn Store,
) -> (Option<(Index, RunLock)>, Option<String>) {
    let path = &settings.index_path;
    if !path.is_file() {
        return (None, None);
    }
    let lock = match RunLock::acquire(path) {
        Ok(l) => l,
        Err(_) => {
            return (
                None,
                Some(
                    "local index busy (a backup is running): it will notice the deletions itself"
                        .into(),
                ),
            );
        }
    };
    // A store without an identity yet is known by its description; one
    // may name several (hosts that started at once): the index's is one.
    let mut ids = store::identity::all(store).unwrap_or_default();
    if ids.is_empty() {
        ids.push(store.describe());
    }
    for id in ids {
        if let Ok(Some(i)) = Index::open_existing(path, &id, &store.describe()) {
            return (Some((i, lock)), None);
        }
    }
    (None, None)
}

/// The store for purge, prune and remove. With `[s3] object_lock`, the
/// deletion marks they write are locked too, for the grace period they
/// serve plus a day: long enough for two-phase deletion, no longer.
fn marking_store(settings: &Settings) -> Result<Box<dyn Store>> {
    let store = open_existing_store(settings, Expect::Maintenance)?;
    if let crate::store::settings::StoreConfig::S3(s3) = &settings.store {
        if s3.object_lock.is_on() {
            store.set_lock(Some(store::lock::Lock {
                mode: s3.object_lock,
                until: unix_now()
                    .saturating_add(settings.grace_period)
                    .saturating_add(86_400),
            }));
        }
    }
    Ok(store)
}

pub fn purge(settings: &Settings, a: &PurgeArgs) -> Result<()> {
    let rule = Retention {
        keep_latest: a.keep_latest,
        keep_within: a.older_than,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_yearly: a.keep_yearly,
        timezone: a
            .timezone
            .clone()
            .or_else(|| settings.retention_timezone.clone()),
    };
    // A zone that does not exist is refused before the store is asked.
    rule.zone()?;
    super::requests_to(if a.json {
        Requests::Nowhere
    } else {
        Requests::Stdout
    });
    let store = marking_store(settings)?;
    let r = (|| -> Result<()> {
        let view = View::load_trusting(store.as_ref(), &settings.trust)?;
        let decisions = rule.decide(&view.manifests, a.name.as_deref(), None, unix_now())?;
        let mut removed: Vec<Summary> = decisions
            .iter()
            .filter(|(_, d)| *d == Decision::Remove)
            .map(|(m, _)| (*m).clone())
            .collect();
        removed.sort_by(manifest::order);
        if a.dry_run && !a.json {
            print_decisions(&decisions).map_err(output)?;
        }
        let decisions_json: Vec<serde_json::Value> =
            decisions.iter().map(|(m, d)| decision_json(m, d)).collect();
        if !a.dry_run
            && !a.force
            && !removed.is_empty()
            && !confirmed(settings, store.as_ref(), &removed)?
        {
            writeln!(
                std::io::stdout(),
                "{}",
                super::requests_line(store.as_ref())
            )
            .map_err(output)?;
            return Ok(());
        }
        let shown = Shown {
            dry_run: a.dry_run,
            json: a.json,
            purge: true,
            decisions: Some(decisions_json),
        };
        run_and_report(settings, store.as_ref(), view, removed, shown)
    })();
    super::ended(store.as_ref(), r)
}

/// For every snapshot the rules looked at, newest first: kept (and by
/// which rules), removed, or left alone.
fn print_decisions(decisions: &[(&Summary, Decision)]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut all: Vec<&(&Summary, Decision)> = decisions.iter().collect();
    all.sort_by(|a, b| manifest::order(b.0, a.0));
    for (m, d) in all {
        let (verb, why) = match d {
            Decision::Keep(why) => (
                "keep",
                why.iter()
                    .map(|k| flag_name(*k))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Decision::Remove => ("remove", String::new()),
            Decision::Ahead => ("leave", "dated ahead of the store's clock".to_string()),
            Decision::Untrusted => ("leave", "not signed by a trusted key".to_string()),
        };
        writeln!(
            out,
            "{verb:<6}  {}  {}  {why}",
            m.id,
            crate::time::display(m.time)
        )?;
    }
    Ok(())
}

/// A rule by the flag that set it: the dry run of `snapshot purge` explains
/// itself with the names the user typed (JSON keeps the rules' ids).
fn flag_name(k: Keep) -> &'static str {
    match k {
        Keep::Newest => "newest",
        Keep::Latest => "--keep-latest",
        Keep::Within => "--older-than",
        Keep::Hourly => "--keep-hourly",
        Keep::Daily => "--keep-daily",
        Keep::Weekly => "--keep-weekly",
        Keep::Monthly => "--keep-monthly",
        Keep::Yearly => "--keep-yearly",
    }
}

fn decision_json(m: &Summary, d: &Decision) -> serde_json::Value {
    let (keep, rules): (Option<bool>, Vec<&str>) = match d {
        Decision::Keep(why) => (Some(true), why.iter().map(|k| k.name()).collect()),
        Decision::Remove => (Some(false), Vec::new()),
        Decision::Ahead | Decision::Untrusted => (None, Vec::new()),
    };
    json!({"id": m.id, "time": crate::time::rfc3339(m.time), "keep": keep, "rules": rules})
}

/// Ask on the terminal before removing `removed`. The preview and the
/// question go to stderr, so that --json stays parseable.
fn confirmed(settings: &Settings, store: &dyn Store, removed: &[Summary]) -> Result<bool> {
    // SAFETY: isatty has no preconditions.
    if unsafe { libc::isatty(0) } != 1 {
        return Err(Error::Usage(
            "snapshot purge: standard input is not a terminal; pass --force to purge without confirmation"
                .into(),
        ));
    }
    let preview = Purge {
        store,
        grace: settings.grace_period,
        dry_run: true,
        index: None,
    }
    .snapshots(View::load(store)?, removed.to_vec())?;
    let mut err = std::io::stderr().lock();
    preview.print_text(&mut err, true).map_err(output)?;
    write!(err, "Remove these {} snapshot(s)? [y/N] ", removed.len()).map_err(output)?;
    err.flush().map_err(output)?;
    let mut answer = String::new();
    // No answer (end of input) is no.
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
        return Ok(true);
    }
    writeln!(err, "nothing removed").map_err(output)?;
    Ok(false)
}

/// How a report is shown.
struct Shown {
    dry_run: bool,
    json: bool,
    /// A purge (its removed snapshots are listed), not a prune.
    purge: bool,
    /// A purge's decision for every snapshot, for the JSON report.
    decisions: Option<Vec<serde_json::Value>>,
}

/// Remove `removed`, collect garbage (updating this host's index when it
/// is free), and print the report.
fn run_and_report(
    settings: &Settings,
    store: &dyn Store,
    view: View,
    removed: Vec<Summary>,
    shown: Shown,
) -> Result<()> {
    let (mut idx, note) = if shown.dry_run {
        (None, None)
    } else {
        local_index(settings, store)
    };
    let mut report = Purge {
        store,
        grace: settings.grace_period,
        dry_run: shown.dry_run,
        index: idx.as_mut().map(|(i, _)| i),
    }
    .snapshots(view, removed)?;
    if report.index_note.is_none() {
        report.index_note = note;
    }
    let mut out = std::io::stdout().lock();
    if shown.json {
        let mut v = report.to_json();
        if let Some(d) = shown.decisions {
            v["snapshots"] = serde_json::Value::Array(d);
        }
        writeln!(out, "{}", json_report(v, store)).map_err(output)?;
    } else {
        report.print_text(&mut out, shown.purge).map_err(output)?;
        writeln!(out, "{}", super::requests_line(store)).map_err(output)?;
    }
    Ok(())
}

pub fn prune(settings: &Settings, dry_run: bool, json: bool) -> Result<()> {
    super::requests_to(if json {
        Requests::Nowhere
    } else {
        Requests::Stdout
    });
    let store = marking_store(settings)?;
    let r = (|| -> Result<()> {
        let view = View::load(store.as_ref())?;
        let shown = Shown {
            dry_run,
            json,
            purge: false,
            decisions: None,
        };
        run_and_report(settings, store.as_ref(), view, Vec::new(), shown)
    })();
    super::ended(store.as_ref(), r)
}

pub fn remove(settings: &Settings, snapshots: &[String]) -> Result<()> {
    super::requests_to(Requests::Stdout);
    let store = marking_store(settings)?;
    let r = (|| -> Result<()> {
        let mut ids = Vec::new();
        for s in snapshots {
            ids.push(manifest::resolve(store.as_ref(), s)?);
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        gc::remove_snapshots(store.as_ref(), &refs)?;
        let mut out = std::io::stdout().lock();
        for id in &ids {
            writeln!(out, "removed {id}").map_err(output)?;
        }
        writeln!(
            out,
            "their blobs are deleted by `vaultik prune` once no snapshot needs them"
        )
        .map_err(output)?;
        writeln!(out, "{}", super::requests_line(store.as_ref())).map_err(output)?;
        Ok(())
    })();
    super::ended(store.as_ref(), r)
}
