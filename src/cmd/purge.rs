//! `snapshot purge`, `prune` and `snapshot remove`: keyless maintenance.

use std::collections::HashSet;
use std::io::{BufRead, Write};

use serde_json::json;

use super::{default_index_path, json_report, open_existing_store};
use crate::cli::Global;
use crate::config::{Config, DEFAULT_GRACE_PERIOD};
use crate::error::{Error, Result};
use crate::gc::{self, Collect, Retention, View};
use crate::human_bytes;
use crate::index::Index;
use crate::lock::RunLock;
use crate::manifest::{self, Manifest};
use crate::store::{self, ObjectInfo, Store};
use crate::time::now as unix_now;

/// What a purge or prune chose and did.
pub struct Report {
    pub dry_run: bool,
    pub removed: Vec<Manifest>,
    /// Blobs (and orphaned metadata) deleted, or that would be.
    pub deleted: Vec<ObjectInfo>,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub young: Vec<ObjectInfo>,
    /// Unreferenced blobs marked for deletion (now or by an earlier purge),
    /// deleted by a purge once the mark is older than the grace period.
    pub marked: Vec<ObjectInfo>,
    pub grace: u64,
    pub index_note: Option<String>,
    /// Snapshots dated ahead of the store's clock, which retention leaves alone.
    pub ahead: Vec<String>,
    /// Objects that are not vaultik's, left alone.
    pub foreign: u64,
}

impl Report {
    pub fn print_text(&self, out: &mut impl Write, purge: bool) {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        if purge {
            let _ = writeln!(out, "{verb} {} snapshot(s)", self.removed.len());
            for m in &self.removed {
                let _ = writeln!(
                    out,
                    "  {}  {}  {}",
                    m.id,
                    crate::time::display(m.time),
                    human_bytes(m.total_size())
                );
            }
        }
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let _ = writeln!(
            out,
            "{verb} {} unreferenced object(s), {}",
            self.deleted.len(),
            human_bytes(Collect::bytes(&self.deleted))
        );
        if !self.marked.is_empty() {
            let verb = if self.dry_run { "would mark" } else { "marked" };
            let _ = writeln!(
                out,
                "{verb} {} unreferenced blob(s), {}, for deletion by a purge at least {} from when they were marked",
                self.marked.len(),
                human_bytes(Collect::bytes(&self.marked)),
                crate::human_duration(self.grace)
            );
        }
        if !self.young.is_empty() {
            let _ = writeln!(
                out,
                "kept {} unreferenced object(s), {}, younger than the grace period ({})",
                self.young.len(),
                human_bytes(Collect::bytes(&self.young)),
                crate::human_duration(self.grace)
            );
        }
        if !self.ahead.is_empty() {
            let _ = writeln!(
                out,
                "left alone {} snapshot(s) dated ahead of the store's clock \
                 (remove them with `vaultik snapshot remove`): {}",
                self.ahead.len(),
                self.ahead.join(", ")
            );
        }
        if self.foreign > 0 {
            let _ = writeln!(
                out,
                "left alone {} object(s) that are not vaultik's (see `vaultik store info`)",
                self.foreign
            );
        }
        if let Some(n) = &self.index_note {
            let _ = writeln!(out, "{n}");
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "dry_run": self.dry_run,
            "removed_snapshots": self.removed.iter().map(|m| json!({
                "id": m.id, "time": crate::time::compact(m.time), "size": m.total_size(),
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
        })
    }
}

/// Remove the snapshots `rule` selects, then collect garbage, updating
/// `index` (when given) so no later backup deduplicates against a deleted blob.
pub fn purge_with(
    store: &dyn Store,
    rule: Retention,
    name: Option<&str>,
    host: Option<&str>,
    grace: u64,
    dry_run: bool,
    index: Option<&mut Index>,
) -> Result<Report> {
    let view = View::load(store)?;
    let now = unix_now();
    let removed: Vec<Manifest> = gc::select(&view.manifests, rule, name, host, now)
        .into_iter()
        .cloned()
        .collect();
    finish(store, view, removed, grace, dry_run, index)
}

fn finish(
    store: &dyn Store,
    view: View,
    removed: Vec<Manifest>,
    grace: u64,
    dry_run: bool,
    index: Option<&mut Index>,
) -> Result<Report> {
    view.check_deletable(if removed.is_empty() { "prune" } else { "purge" })?;
    let ids: HashSet<&str> = removed.iter().map(|m| m.id.as_str()).collect();
    let now = unix_now();
    let plan = gc::plan(&view, &ids, grace, now);
    let marks = gc::load_marks(store)?;
    let staged = gc::stage(plan.delete, &marks, grace, now);
    let mut marked = staged.mark.clone();
    marked.extend(staged.waiting.iter().cloned());
    let ahead: Vec<String> = view.dated_ahead().map(|m| m.id.clone()).collect();
    let foreign = view.foreign_count;
    if dry_run {
        return Ok(Report {
            dry_run,
            removed,
            deleted: staged.delete,
            young: plan.young,
            marked,
            grace,
            index_note: None,
            ahead,
            foreign,
        });
    }
    let id_list: Vec<&str> = removed.iter().map(|m| m.id.as_str()).collect();
    if !id_list.is_empty() {
        gc::remove_snapshots(store, &id_list)?;
    }
    for batch in staged.mark.chunks(gc::MARK_BLOBS) {
        let m = gc::Mark::new(now, batch.iter().map(|o| o.key.clone()).collect());
        store.put_bytes(&m.key, &m.to_bytes())?;
    }
    let young = plan.young;
    let deleted = gc::collect(store, &view, staged.delete)?;
    // Every blob a ripe mark names is now deleted, referenced again, or
    // gone: the mark has done its work.
    store.delete_many(&staged.done_marks)?;
    let mut index_note = None;
    if let Some(index) = index {
        let gone: HashSet<&str> = deleted.iter().map(|o| o.key.as_str()).collect();
        let mut left: Vec<String> = view
            .blobs
            .iter()
            .filter(|o| !gone.contains(o.key.as_str()))
            .map(|o| o.key.clone())
            .collect();
        left.sort();
        let n = index.forget_missing_blobs(&left)?;
        if n > 0 {
            index_note = Some(format!("local index: forgot {n} deleted blob(s)"));
        }
    }
    Ok(Report {
        dry_run,
        removed,
        deleted,
        young,
        marked,
        grace,
        index_note,
        ahead,
        foreign,
    })
}

fn grace_of(cfg: Option<&Config>) -> u64 {
    cfg.map_or(DEFAULT_GRACE_PERIOD, |c| c.grace_period)
        .as_secs()
}

/// The local index when this host has one for this store and no run holds
/// it; maintenance never creates or resets an index.
fn local_index(
    cfg: Option<&Config>,
    store: &dyn Store,
) -> (Option<(Index, RunLock)>, Option<String>) {
    let path = cfg
        .and_then(|c| c.index_path.clone())
        .unwrap_or_else(default_index_path);
    if !path.is_file() {
        return (None, None);
    }
    let lock = match RunLock::acquire(&path) {
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
    // A store without an identity yet is known by its description.
    let id = match store::identity::read(store) {
        Ok(Some(i)) => i.id,
        _ => store.describe(),
    };
    match Index::open_existing(&path, &id, &store.describe()) {
        Ok(Some(i)) => (Some((i, lock)), None),
        _ => (None, None),
    }
}

#[allow(clippy::too_many_arguments)]
pub fn purge(
    g: &Global,
    keep_latest: bool,
    older_than: Option<u64>,
    name: Option<&str>,
    dry_run: bool,
    force: bool,
    json: bool,
) -> Result<()> {
    let (cfg, store) = open_existing_store(g)?;
    let rule = Retention {
        keep_latest: keep_latest.then_some(1),
        keep_within: older_than,
    };
    let grace = grace_of(cfg.as_ref());
    let view = View::load(store.as_ref())?;
    let removed: Vec<Manifest> = gc::select(&view.manifests, rule, name, None, unix_now())
        .into_iter()
        .cloned()
        .collect();
    let mut out = std::io::stdout().lock();
    if !dry_run && !force && !removed.is_empty() {
        // SAFETY: isatty has no preconditions.
        if unsafe { libc::isatty(0) } != 1 {
            return Err(Error::Usage(
                "snapshot purge: standard input is not a terminal; pass --force to purge without confirmation"
                    .into(),
            ));
        }
        // The preview and the question go to stderr, so --json stays parseable.
        let mut err = std::io::stderr().lock();
        let preview = finish(
            store.as_ref(),
            View::load(store.as_ref())?,
            removed.clone(),
            grace,
            true,
            None,
        )?;
        preview.print_text(&mut err, true);
        let _ = write!(err, "Remove these {} snapshot(s)? [y/N] ", removed.len());
        let _ = err.flush();
        let mut answer = String::new();
        let _ = std::io::stdin().lock().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
            let _ = writeln!(err, "nothing removed");
            let _ = writeln!(out, "{}", store.stats().summary());
            return Ok(());
        }
    }
    drop(out);
    collect_and_report(
        cfg.as_ref(),
        store.as_ref(),
        view,
        removed,
        grace,
        dry_run,
        json,
        true,
    )
}

/// Remove `removed`, collect garbage (updating this host's index when it
/// is free), and print the report.
#[allow(clippy::too_many_arguments)]
fn collect_and_report(
    cfg: Option<&Config>,
    store: &dyn Store,
    view: View,
    removed: Vec<Manifest>,
    grace: u64,
    dry_run: bool,
    json: bool,
    purge: bool,
) -> Result<()> {
    let (mut idx, note) = if dry_run {
        (None, None)
    } else {
        local_index(cfg, store)
    };
    let mut report = finish(
        store,
        view,
        removed,
        grace,
        dry_run,
        idx.as_mut().map(|(i, _)| i),
    )?;
    if report.index_note.is_none() {
        report.index_note = note;
    }
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", json_report(report.to_json(), store));
    } else {
        report.print_text(&mut out, purge);
        let _ = writeln!(out, "{}", store.stats().summary());
    }
    Ok(())
}

pub fn prune(g: &Global, dry_run: bool, json: bool) -> Result<()> {
    let (cfg, store) = open_existing_store(g)?;
    let grace = grace_of(cfg.as_ref());
    let view = View::load(store.as_ref())?;
    collect_and_report(
        cfg.as_ref(),
        store.as_ref(),
        view,
        Vec::new(),
        grace,
        dry_run,
        json,
        false,
    )
}

pub fn remove(g: &Global, snapshots: &[String]) -> Result<()> {
    let (_, store) = open_existing_store(g)?;
    let mut ids = Vec::new();
    for s in snapshots {
        ids.push(manifest::resolve(store.as_ref(), s)?);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    gc::remove_snapshots(store.as_ref(), &refs)?;
    let mut out = std::io::stdout().lock();
    for id in &ids {
        let _ = writeln!(out, "removed {id}");
    }
    let _ = writeln!(
        out,
        "their blobs are deleted by `vaultik prune` once no snapshot needs them"
    );
    let _ = writeln!(out, "{}", store.stats().summary());
    Ok(())
}
