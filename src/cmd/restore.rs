//! `restore SNAPSHOT --target DIR [--identity FILE] [PATH...]`

use std::io::Write;
use std::path::Path;

use super::settings::{self, Settings};
use super::{open_existing_store, output, warn};
use crate::cli::{Global, RestoreArgs};
use crate::error::Result;
use crate::restore::Restore;
use crate::{human_bytes, manifest};

pub fn run(g: &Global, a: &RestoreArgs) -> Result<()> {
    // The key first: no network work without it.
    let identities = settings::identities(a.identity.as_deref())?;
    let store = open_existing_store(&Settings::resolve(g, false)?)?;
    let id = manifest::resolve(store.as_ref(), &a.snapshot)?;
    let target: &Path = &a.target;
    let r = Restore {
        store: store.as_ref(),
        identities,
        target: target.to_path_buf(),
        paths: a.paths.clone(),
        warn: &warn,
    };
    let result = r.run(&id);
    let mut out = std::io::stdout().lock();
    if let Ok(s) = &result {
        writeln!(
            out,
            "restored {} into {}: {} files ({}), {} directories, {} symlinks, {} other; {} chunks; {:.1}s",
            s.id,
            target.display(),
            s.files,
            human_bytes(s.bytes),
            s.dirs,
            s.symlinks,
            s.other,
            s.chunks,
            s.seconds
        ).map_err(output)?;
    }
    writeln!(out, "{}", store.stats().summary()).map_err(output)?;
    result.map(|_| ())
}
