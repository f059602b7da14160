//! `repack [--max-unused PERCENT] [--dry-run] [--json] [--identity FILE]`
//! (the work is `repack/`'s).

use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::settings::{self, Settings};
use super::{Expect, Requests, open_existing_store, output, warn};
use crate::cli::{Global, RepackArgs};
use crate::error::Result;
use crate::human_bytes;
use crate::repack::{Repack, Report};

pub fn run(g: &Global, a: &RepackArgs) -> Result<()> {
    // The key first: no network work without it.
    let identities = settings::identities(g, a.identity.as_deref())?;
    let settings = Settings::resolve(g, true)?;
    let cfg = settings.config();
    let recipients = crate::keys::parse_recipients(&cfg.age_recipients, &cfg.path)?;
    super::requests_to(if a.json {
        Requests::Stderr
    } else {
        Requests::Stdout
    });
    let store = open_existing_store(&settings, Expect::Snapshots)?;
    let r = (|| -> Result<()> {
        let (class, lock) =
            super::copy::policy(store.as_ref(), &settings.store, Some(cfg), "the store")?;
        store.set_lock(lock.map(|p| p.lock()));
        let state = settings
            .index_path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        crate::blob::private_dir(&state)?;
        let tmp = state.join("tmp");
        crate::blob::private_dir(&tmp)?;
        let report = Repack {
            store: store.as_ref(),
            identities: &identities,
            recipients: &recipients,
            sealed_to: crate::keys::set_fingerprint(&recipients),
            max_unused: a.max_unused,
            blob_size: cfg.blob_size_limit,
            class,
            trust: &settings.trust,
            state: &state,
            tmp_dir: &tmp,
            dry_run: a.dry_run,
            warn: &warn,
        }
        .run()?;
        if report.resigned > 0 && settings.trust.is_set() {
            let own = report
                .signer
                .as_deref()
                .and_then(crate::signing::parse_signer);
            if own.is_some_and(|k| !settings.trust.signers.contains(&k)) {
                warn(&format!(
                    "the rewritten snapshots are signed with this host's key {}, which \
                     trusted_signers does not name: restores that trust only those keys refuse \
                     them; add it where snapshots are restored",
                    report.signer.as_deref().unwrap_or("")
                ));
            }
        }
        let note = if report.new.is_empty() || lock.is_some() {
            None
        } else {
            learn(&settings, store.as_ref(), &report)?
        };
        let mut out = std::io::stdout().lock();
        if a.json {
            writeln!(out, "{}", to_json(&report)).map_err(output)?;
        } else {
            for (id, why) in &report.blocked {
                writeln!(
                    out,
                    "left alone: snapshot {}: {}",
                    crate::error::one_line(id.clone()),
                    crate::error::one_line(why.clone())
                )
                .map_err(output)?;
            }
            writeln!(out, "{}", summary(&report)).map_err(output)?;
            if let Some(n) = note {
                writeln!(out, "{n}").map_err(output)?;
            }
            if !a.dry_run {
                writeln!(out, "{}", super::requests_line(store.as_ref())).map_err(output)?;
            }
        }
        Ok(())
    })();
    super::ended(store.as_ref(), r)
}

/// This host's index (when it has one for this store, of the same
/// recipient set, and no backup holds it) learns the new blobs, so that
/// its next backup deduplicates against them rather than upload again
/// what it still has of the replaced ones. (Not under Object Lock: a
/// backup trusts only blobs it saw locked.)
fn learn(
    settings: &Settings,
    store: &dyn crate::store::Store,
    r: &Report,
) -> Result<Option<String>> {
    let (found, note) = super::purge::local_index(settings, store);
    let Some((mut index, _lock)) = found else {
        return Ok(note.map(|n| format!("{n}: it did not learn the new blobs")));
    };
    let cfg = settings.config();
    let recipients = crate::keys::parse_recipients(&cfg.age_recipients, &cfg.path)?;
    if !index.is_sealed_to(&crate::keys::set_fingerprint(&recipients))? {
        return Ok(None);
    }
    for (key, size, entries) in &r.new {
        let mut entries = entries.clone();
        entries.sort_unstable_by_key(|(id, _)| *id);
        index.move_into_blob(key, *size, &entries)?;
    }
    Ok(Some(format!(
        "local index: learned the {} new blob(s)",
        r.new.len()
    )))
}

fn summary(r: &Report) -> String {
    let pct = format!("{}%", (r.threshold * 100.0 * 10.0).round() / 10.0);
    if r.blobs == 0 {
        let mut s = format!(
            "nothing to repack: no blob has more than {pct} unused ({} snapshot(s) read",
            r.snapshots
        );
        if r.pinned > 0 {
            s.push_str(&format!(
                "; {} blob(s) above it are used by snapshots left alone",
                r.pinned
            ));
        }
        s.push(')');
        return s;
    }
    let mut s = if r.dry_run {
        format!(
            "would repack {} blob(s) with more than {pct} unused ({}, of which {} still used) \
             and rewrite {} snapshot(s)",
            r.blobs,
            human_bytes(r.blob_bytes),
            human_bytes(r.used_bytes),
            r.rewritten.len()
        )
    } else {
        format!(
            "repacked {} blob(s) with more than {pct} unused ({}, of which {} still used) into \
             {} new blob(s) ({}); rewrote {} snapshot(s)",
            r.blobs,
            human_bytes(r.blob_bytes),
            human_bytes(r.used_bytes),
            r.new_blobs,
            human_bytes(r.new_bytes),
            r.rewritten.len()
        )
    };
    if r.resigned > 0 {
        s.push_str(&format!(
            " ({} signed again with this host's key {})",
            r.resigned,
            r.signer.as_deref().unwrap_or("")
        ));
    }
    if r.pinned > 0 {
        s.push_str(&format!(
            "; {} blob(s) left: snapshots left alone use them",
            r.pinned
        ));
    }
    if r.dry_run {
        s.push_str(&format!(
            "; a prune afterwards would free about {}",
            human_bytes(r.freed())
        ));
    } else {
        s.push_str(&format!(
            "; {} old blob(s) marked: the next prune past the grace period frees {} ({:.1}s)",
            r.marked,
            human_bytes(r.freed()),
            r.seconds
        ));
    }
    s
}

fn to_json(r: &Report) -> serde_json::Value {
    json!({
        "dry_run": r.dry_run,
        "max_unused": r.threshold,
        "snapshots_read": r.snapshots,
        "blobs": r.blobs,
        "blob_bytes": r.blob_bytes,
        "used_bytes": r.used_bytes,
        "new_blobs": r.new_blobs,
        "new_bytes": r.new_bytes,
        "freed_bytes": r.freed(),
        "rewritten": r.rewritten,
        "resigned": r.resigned,
        "signer": r.signer,
        "marked": r.marked,
        "pinned": r.pinned,
        "left_alone": r.blocked.iter().map(|(id, why)| json!({"id": id, "why": why})).collect::<Vec<_>>(),
        "seconds": r.seconds,
    })
}
