//! `index rebuild [--identity FILE] [--index PATH] [--host HOST] [--name NAME] [--all]
//! [--force]`, and the rebuild `restore --rebuild-index` does afterwards.

use std::io::Write;
use std::path::Path;

use age::x25519;

use super::settings::{self, Settings};
use super::{Expect, Requests, open_existing_store, output, warn};
use crate::cli::{Global, RebuildArgs};
use crate::error::{Error, Result};
use crate::manifest::Narrow;
use crate::rebuild::{Outcome, Rebuild, Report};
use crate::store::Store;
use crate::store::settings::StoreConfig;
use crate::{human_bytes, layout};

pub fn run(g: &Global, a: &RebuildArgs) -> Result<()> {
    // The key first: no network work without it.
    let identities = settings::identities(g, a.identity.as_deref())?;
    let settings = Settings::resolve(g, false)?;
    super::requests_to(Requests::Stdout);
    let store = open_existing_store(&settings, Expect::Snapshots)?;
    let index_path = a.index.clone().unwrap_or(settings.index_path.clone());
    let narrow = Narrow {
        host: Some(a.narrow.host.clone().unwrap_or(settings.hostname.clone())),
        name: a.narrow.name.clone(),
    };
    let r = rebuild(
        &settings,
        store.as_ref(),
        &identities,
        &index_path,
        narrow,
        a.all,
        a.force,
    )
    .and_then(|outcome| match outcome {
        Outcome::Rebuilt(report) => {
            let mut out = std::io::stdout();
            writeln!(out, "{}", summary_line(&report)).map_err(output)?;
            writeln!(out, "{}", super::requests_line(store.as_ref())).map_err(output)?;
            damaged(&report)
        }
        Outcome::Kept { blobs, files } => Err(Error::Setup(format!(
            "the index {} already knows this store ({blobs} blobs, {files} files): left as \
             it is; give --force to replace it with one rebuilt from the store",
            index_path.display()
        ))),
    });
    super::ended(store.as_ref(), r)
}

/// After `restore --rebuild-index` of snapshot `id`: the index of the
/// config (or the default one) rebuilt from the latest snapshot of each
/// name of `id`'s host. An index that already knows the store is left as
/// it is, with a warning (the restore went well: that is not undone).
pub fn after_restore(
    settings: &Settings,
    store: &dyn Store,
    identities: &[x25519::Identity],
    id: &str,
    out: &mut dyn Write,
) -> Result<()> {
    let host = layout::parse_id(id).map(|p| p.host.to_string());
    let narrow = Narrow {
        host: Some(host.unwrap_or(settings.hostname.clone())),
        name: None,
    };
    let path = settings.index_path.clone();
    match rebuild(settings, store, identities, &path, narrow, false, false)? {
        Outcome::Rebuilt(report) => {
            writeln!(out, "{}", summary_line(&report)).map_err(output)?;
            damaged(&report)
        }
        Outcome::Kept { blobs, files } => {
            warn(&format!(
                "the index {} already knows this store ({blobs} blobs, {files} files): not \
                 rebuilt (`vaultik index rebuild --force` replaces it)",
                path.display()
            ));
            Ok(())
        }
    }
}

fn rebuild(
    settings: &Settings,
    store: &dyn Store,
    identities: &[x25519::Identity],
    index_path: &Path,
    narrow: Narrow,
    all: bool,
    force: bool,
) -> Result<Outcome> {
    let object_lock = match &settings.store {
        StoreConfig::S3(s3) => s3.object_lock.is_on(),
        StoreConfig::Local { .. } => false,
    };
    Rebuild {
        store,
        identities,
        index_path,
        narrow,
        all,
        force,
        object_lock,
        sealed_to: settings.config.as_ref().and_then(|c| {
            crate::keys::parse_recipients(&c.age_recipients, Path::new(""))
                .ok()
                .map(|r| crate::keys::set_fingerprint(&r))
        }),
        warn: &warn,
    }
    .run()
}

/// Snapshots left out: exit code 1, once the index is in place.
fn damaged(r: &Report) -> Result<()> {
    if r.damaged.is_empty() {
        return Ok(());
    }
    Err(Error::Damaged {
        count: r.damaged.len(),
        what: "index rebuild",
    })
}

fn summary_line(r: &Report) -> String {
    let mut line = format!(
        "rebuilt the index {} from {} snapshot(s) ({}): {} blobs ({}), {} chunks ({} of data)",
        r.path.display(),
        r.snapshots.len(),
        crate::error::one_line(r.snapshots.join(", ")),
        r.blobs,
        human_bytes(r.blob_bytes),
        r.chunks,
        human_bytes(r.chunk_bytes),
    );
    if r.left_out > 0 {
        line.push_str(&format!("; {} chunks left out", r.left_out));
    }
    if r.locked > 0 {
        line.push_str(&format!("; {} blobs known locked", r.locked));
    }
    line.push_str(&format!(
        "; {:.1}s. The next backup reads every file once and uploads only what changed",
        r.seconds
    ));
    line
}
