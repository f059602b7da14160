//! `restore SNAPSHOT (--target DIR | --stdout) [--identity FILE] [--thaw[=TIER]]
//! [--thaw-days N] [--wait] [--json] [PATH...]`

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Mutex;

use super::settings::{self, Settings};
use super::{open_versioned_store, output, warn};
use crate::cli::{Global, RestoreArgs, RestoreTo};
use crate::error::{Error, Result};
use crate::restore::Restore;
use crate::{human_bytes, manifest};

pub fn run(g: &Global, a: &RestoreArgs) -> Result<()> {
    // The key first: no network work without it.
    let identities = settings::identities(a.identity.as_deref())?;
    // Deleted snapshots (versions remain) only by id: `latest` is never
    // one that was removed.
    let by_id = a.snapshot != "latest";
    let store = open_versioned_store(&Settings::resolve(g, false)?, by_id)?;
    let id = manifest::resolve_narrowed(store.as_ref(), &a.snapshot, &a.narrow)?;
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
    let r = Restore {
        store: store.as_ref(),
        identities,
        target: match &a.to {
            RestoreTo::Target(t) => t.clone(),
            RestoreTo::Stdout => std::env::temp_dir(),
        },
        paths: a.paths.clone(),
        warn: &warn,
        gate: &gate,
    };
    let result = match &a.to {
        RestoreTo::Target(_) => r.run(&id),
        RestoreTo::Stdout => {
            let mut out = raw_stdout()?;
            r.to_stdout(&id, a.paths.first().map(String::as_str), &mut out)
        }
    };
    let mut out = report.lock().expect("report lock");
    if let Ok(s) = &result {
        let into = match &a.to {
            RestoreTo::Target(t) => format!("into {}", t.display()),
            RestoreTo::Stdout => "to standard output".into(),
        };
        writeln!(
            out,
            "restored {} {into}: {} files ({}), {} directories, {} symlinks, {} other; {} chunks; {:.1}s",
            s.id,
            s.files,
            human_bytes(s.bytes),
            s.dirs,
            s.symlinks,
            s.other,
            s.chunks,
            s.seconds
        )
        .map_err(output)?;
    }
    writeln!(out, "{}", store.stats().summary()).map_err(output)?;
    result.map(|_| ())
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
