//! `restore SNAPSHOT --target DIR [--identity FILE] [PATH...]`

use std::io::Write;
use std::path::Path;

use super::{open_existing_store, warn};
use crate::cli::Global;
use crate::error::Result;
use crate::restore::Restore;
use crate::{human_bytes, keys, manifest};

pub fn run(
    g: &Global,
    id: &str,
    target: &Path,
    paths: Vec<String>,
    identity: Option<&Path>,
) -> Result<()> {
    let identities = keys::load_identities(identity)?;
    let (_, store) = open_existing_store(g)?;
    let id = manifest::resolve(store.as_ref(), id)?;
    let r = Restore {
        store: store.as_ref(),
        identities,
        target: target.to_path_buf(),
        paths,
        warn: &warn,
    };
    let result = r.run(&id);
    let mut out = std::io::stdout().lock();
    if let Ok(s) = &result {
        let _ = writeln!(
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
        );
    }
    let _ = writeln!(out, "{}", store.stats().summary());
    result.map(|_| ())
}
