//! `restore SNAPSHOT (--target DIR | --stdout) [--identity FILE] [--thaw[=TIER]]
//! [--thaw-days N] [--wait] [--json] [--no-xattrs] [--include GLOB]... [--exclude GLOB]...
//! [--overwrite MODE] [--verify-existing] [--delete] [--dry-run] [PATH...]`

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Mutex;

use super::settings::{self, Settings};
use super::{Expect, Requests, open_versioned_store, output, warn};
use crate::browse::{json_line, kind_name, put_bytes, shown};
use crate::cli::{Global, RestoreArgs, RestoreTo};
use crate::error::{Error, Result};
use crate::human_bytes;
use crate::restore::{Action, Restore, Summary};

pub fn run(g: &Global, a: &RestoreArgs) -> Result<()> {
    // The key first: no network work without it.
    let identities = settings::identities(g, a.identity.as_deref())?;
    // Deleted snapshots (versions remain) only by id: `latest` is never
    // one that was removed.
    let by_id = a.snapshot != "latest";
    super::requests_to(match &a.to {
        _ if a.controls.dry_run && a.json => Requests::Nowhere,
        RestoreTo::Stdout => Requests::Stderr,
        RestoreTo::Target(_) => Requests::Stdout,
    });
    let settings = Settings::resolve(g, false)?;
    let store = open_versioned_store(&settings, by_id, Expect::Snapshots)?;
    let r = (|| -> Result<()> {
        let picked = settings.pick(store.as_ref(), &a.snapshot, &a.narrow)?;
        let id = picked.id.clone();
        // With --stdout, standard output is the file's: everything else goes
        // to standard error.
        let to_stdout = a.to == RestoreTo::Stdout;
        let report: Mutex<Box<dyn Write + Send>> = Mutex::new(if to_stdout {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        });
        let thaw = super::thaw(
            store.as_ref(),
            a.thaw,
            format!("restore of {id}"),
            a.json,
            &report,
        );
        // On a versioned bucket, blobs written over or deleted are read from
        // the version vaultik wrote; then cold ones are thawed.
        let gate = |blobs: &[(String, u64)]| {
            store.choose_versions(blobs, &warn)?;
            thaw.ensure(blobs)
        };
        // A dry run's actions: one line each, or one JSON object each.
        let dry_json = a.controls.dry_run && a.json;
        let report_action = |act: &Action<'_>| -> Result<()> {
            let line = if dry_json {
                action_json(act)
            } else {
                action_line(act)
            };
            writeln!(report.lock().expect("report lock"), "{line}").map_err(output)
        };
        let r = Restore {
            store: store.as_ref(),
            identities: identities.clone(),
            target: match &a.to {
                RestoreTo::Target(t) => t.clone(),
                RestoreTo::Stdout => std::env::temp_dir(),
            },
            paths: a.paths.clone(),
            controls: a.controls.clone(),
            warn: &warn,
            gate: &gate,
            report: a.controls.dry_run.then_some(&report_action),
            xattrs: !a.no_xattrs,
            expect_metadata: picked.metadata_sums.clone(),
        };
        let result = match &a.to {
            RestoreTo::Target(_) => r.run(&id),
            RestoreTo::Stdout => {
                let mut out = raw_stdout()?;
                r.to_stdout(&id, a.paths.first().map(String::as_str), &mut out)
            }
        };
        let mut out = report.lock().expect("report lock");
        let into = match &a.to {
            RestoreTo::Target(t) => format!("into {}", t.display()),
            RestoreTo::Stdout => "to standard output".into(),
        };
        if let Ok(s) = &result {
            if dry_json {
                let mut v = dry_json_summary(s, &a.to);
                v["summary"]["requests"] = store.stats().to_json();
                super::requests_line(store.as_ref());
                writeln!(out, "{}", json_line(&v)).map_err(output)?;
                return Ok(());
            }
            writeln!(out, "{}", summary_line(s, &into, &a.controls)).map_err(output)?;
        }
        // The index after a restore that went well (the restore's own
        // result, files not restored included, comes first).
        let rebuilt = match &result {
            Ok(_) if a.rebuild_index => {
                super::index::after_restore(&settings, store.as_ref(), &identities, &id, &mut *out)
            }
            _ => Ok(()),
        };
        writeln!(out, "{}", super::requests_line(store.as_ref())).map_err(output)?;
        result.map(|_| ())?;
        rebuilt
    })();
    super::ended(store.as_ref(), r)
}

/// The line a restore ends with (a dry run's says what it would do).
fn summary_line(s: &Summary, into: &str, c: &crate::restore::Controls) -> String {
    if let Some(d) = &s.dry {
        return format!(
            "dry run of the restore of {} {into}: would create {} directories, write {} new \
             entries and replace {} ({} of contents), keep {}, delete {}, skip {}; would fetch \
             {} chunks ({}) from {} blobs; nothing was written",
            s.id,
            d.create,
            d.write,
            d.replace,
            human_bytes(d.bytes),
            d.keep,
            d.delete,
            d.skip,
            s.chunks,
            human_bytes(s.fetch_bytes),
            s.blobs,
        );
    }
    let mut line = format!(
        "restored {} {into}: {} files ({}), {} directories, {} symlinks, {} other; {} chunks; {:.1}s",
        s.id,
        s.files,
        human_bytes(s.bytes),
        s.dirs,
        s.symlinks,
        s.other,
        s.chunks,
        s.seconds
    );
    if c.overwrite != crate::restore::Overwrite::Always {
        line.push_str(&format!("; {} kept as they were", s.kept));
    }
    if c.delete {
        line.push_str(&format!("; {} deleted", s.deleted));
    }
    // Attributes not restored: counted here, one warning per kind said
    // which.
    if s.attrs_lost > 0 {
        line.push_str(&format!(
            "; attributes of {} entries not all restored (see the warnings)",
            s.attrs_lost
        ));
    }
    line
}

/// A dry run's action, for a terminal: `ACTION PATH (why)`.
fn action_line(a: &Action<'_>) -> String {
    let mut line = format!("{:<7} {}", a.act.name(), shown(a.path));
    if a.kind == Some(crate::snapshot::Kind::Dir) {
        line.push('/');
    }
    if !a.why.is_empty() {
        line.push_str(&format!(" ({})", crate::error::one_line(a.why.to_string())));
    }
    line
}

/// A dry run's action as JSON: `action`, `path` (and `path_hex` when it
/// is not UTF-8), `type` (the snapshot's, when known), `size`, `why`.
fn action_json(a: &Action<'_>) -> String {
    let mut v = serde_json::json!({ "action": a.act.name() });
    put_bytes(&mut v, "path", a.path);
    if a.kind.is_some() {
        v["type"] = kind_name(a.kind).into();
    }
    if let Some(n) = a.size {
        v["size"] = n.into();
    }
    if !a.why.is_empty() {
        v["why"] = a.why.into();
    }
    json_line(&v)
}

/// A dry run's summary as JSON.
fn dry_json_summary(s: &Summary, to: &RestoreTo) -> serde_json::Value {
    let d = s.dry.clone().unwrap_or_default();
    let target = match to {
        RestoreTo::Target(t) => t.display().to_string(),
        RestoreTo::Stdout => String::new(),
    };
    serde_json::json!({"summary": {
        "dry_run": true,
        "snapshot": s.id,
        "target": target,
        "create": d.create, "write": d.write, "replace": d.replace,
        "keep": d.keep, "delete": d.delete, "skip": d.skip,
        "bytes": d.bytes,
        "chunks": s.chunks, "blobs": s.blobs, "fetch_bytes": s.fetch_bytes,
    }})
}

/// Standard output as a plain file: large writes go straight to the
/// descriptor (std's stdout looks for newlines in everything written).
fn raw_stdout() -> Result<std::fs::File> {
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::Stream {
            what: "standard output".into(),
            msg: format!("cannot use it: {e}"),
        })?;
    Ok(std::fs::File::from(fd))
}
