//! `snapshot create [--cron] [--prune] [--skip-errors] [NAME...]`

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use super::{default_index_path, load_config, store_config, system_hostname, warn};
use crate::backup::Backup;
use crate::chunk::Params;
use crate::cli::Global;
use crate::error::{Error, Result};
use crate::gc::Retention;
use crate::index::Index;
use crate::lock::RunLock;
use crate::{blob, human_bytes, keys, store};

pub fn run(g: &Global, names: &[String], skip_errors: bool, cron: bool, prune: bool) -> Result<()> {
    let cfg = load_config(g, true)?.expect("a required config is loaded or an error");
    let recipients = keys::parse_recipients(&cfg.age_recipients, &cfg.path)?;
    if cfg.snapshots.is_empty() {
        return Err(Error::Setup(format!(
            "{}: no [snapshot NAME] section configured",
            cfg.path.display()
        )));
    }
    let retention = Retention {
        keep_latest: cfg.keep_latest,
        keep_within: cfg.keep_within.map(|d| d.as_secs()),
    };
    if prune && retention == Retention::default() {
        return Err(Error::Setup(format!(
            "{}: --prune needs a retention policy: set keep_latest and/or keep_within",
            cfg.path.display()
        )));
    }
    let selected: Vec<_> = if names.is_empty() {
        cfg.snapshots.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                cfg.snapshots.iter().find(|s| &s.name == n).ok_or_else(|| {
                    Error::Usage(format!(
                        "no [snapshot {n}] in {} (configured: {})",
                        cfg.path.display(),
                        cfg.snapshots
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?
    };
    let store = store::open(&store_config(g, Some(&cfg))?, true)?;
    let index_path = cfg.index_path.clone().unwrap_or_else(default_index_path);
    if let Some(dir) = index_path.parent() {
        blob::private_dir(dir)?;
    }
    let _lock = RunLock::acquire(&index_path)?;
    let (mut index, _fresh) = Index::open(&index_path, &store.describe())?;
    let tmp_dir = index_path.parent().unwrap_or(Path::new(".")).join("tmp");
    blob::private_dir(&tmp_dir)?;
    clean_tmp(&tmp_dir);

    // Never deduplicate against a blob that is no longer in the store
    // (purged from another host, or lost).
    let present: Vec<String> = store.list("blobs/")?.into_iter().map(|o| o.key).collect();
    let dropped = index.forget_missing_blobs(&present)?;
    if dropped > 0 && !cron {
        warn(&format!(
            "{dropped} blob(s) known to the index are gone from the store; their data will be uploaded again"
        ));
    }

    let hostname = cfg.hostname.clone().unwrap_or_else(system_hostname);
    // SAFETY: isatty has no preconditions.
    let terminal = unsafe { libc::isatty(2) } == 1;
    let backup = Backup {
        store: store.as_ref(),
        index: Mutex::new(index),
        recipients,
        hostname: hostname.clone(),
        tmp_dir,
        params: Params::new(cfg.chunk_size),
        level: cfg.compression_level,
        blob_limit: cfg.blob_size_limit,
        global_excludes: cfg.exclude.clone(),
        skip_errors,
        warn: &warn,
        progress: terminal && !cron,
    };
    let mut skipped = 0;
    let mut out = std::io::stdout().lock();
    for snap in selected {
        let s = backup.run(snap)?;
        skipped += s.skipped;
        if !cron {
            let _ = writeln!(
                out,
                "snapshot {}: {} entries, {} files ({}) scanned; {} files ({}) read; \
                 {} new chunks ({}) in {} blobs ({} uploaded); {} warnings; {:.1}s",
                s.id,
                s.entries,
                s.files,
                human_bytes(s.bytes_scanned),
                s.files_read,
                human_bytes(s.bytes_read),
                s.new_chunks,
                human_bytes(s.new_bytes),
                s.blobs,
                human_bytes(s.blob_bytes),
                s.warnings,
                s.seconds
            );
        }
    }

    if prune {
        let mut index = backup
            .index
            .into_inner()
            .expect("index lock poisoned by a panic");
        let report = super::purge::purge_with(
            store.as_ref(),
            retention,
            None,
            Some(&hostname),
            cfg.grace_period.as_secs(),
            false,
            Some(&mut index),
        )?;
        if !cron {
            report.print_text(&mut out, false);
        }
    }
    if !cron {
        let _ = writeln!(out, "{}", store.stats().summary());
    }
    if skipped > 0 {
        return Err(Error::Partial {
            failed: skipped as usize,
            what: "skipped",
        });
    }
    Ok(())
}

/// Remove temporary files left by a killed run (we hold the run lock).
fn clean_tmp(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
