//! `copy`: snapshots from the store to a second one, without any key (the
//! work is `copy.rs`'s); the destination named by `--to` and/or
//! `--to-config` (`settings::destination`).

use std::io::Write;

use super::settings::{self, Settings};
use super::{Expect, open_existing_store, output};
use crate::cli::{CopyArgs, Global};
use crate::config::Config;
use crate::copy::{Copy, Options};
use crate::error::{Error, Result};
use crate::gc::Retention;
use crate::human_bytes;
use crate::store::class::StorageClass;
use crate::store::lock::LockPlan;
use crate::store::settings::StoreConfig;
use crate::store::{self, Store};

pub fn run(g: &Global, a: &CopyArgs) -> Result<()> {
    let settings = Settings::resolve(g, false)?;
    let (to, to_cfg) =
        settings::destination(a.to.as_deref(), a.to_config.as_deref(), &settings.store)?;
    if same_store(&settings.store, &to) {
        return Err(Error::Usage(
            "copy: the destination is the store copied from".into(),
        ));
    }
    super::requests_to(super::Requests::Stdout);
    let src = open_existing_store(&settings, Expect::Snapshots)?;
    let dst = store::open(&to, true)?;
    let r = copy(src.as_ref(), dst.as_ref(), &to, to_cfg.as_ref(), a);
    // Both stores' requests, success or failure (the error follows on
    // standard error).
    let _ = super::requests_line(src.as_ref());
    let mut out = std::io::stdout().lock();
    let shown = writeln!(
        out,
        "{}\n{}",
        src.stats()
            .summary()
            .replacen("requests:", "requests from the source:", 1),
        dst.stats()
            .summary()
            .replacen("requests:", "requests to the destination:", 1)
    )
    .map_err(output);
    r.and(shown)
}

fn copy(
    src: &dyn Store,
    dst: &dyn Store,
    to: &StoreConfig,
    to_cfg: Option<&Config>,
    a: &CopyArgs,
) -> Result<()> {
    let (blob_class, lock) = policy(dst, to, to_cfg, "the copy's destination")?;
    if let Some(plan) = lock {
        // From the first object written, the identity included.
        dst.set_lock(Some(plan.lock()));
    }
    let tmp = std::env::temp_dir();
    let report: std::sync::Mutex<Box<dyn Write + Send>> =
        std::sync::Mutex::new(Box::new(std::io::stdout()));
    let thaw = super::thaw(src, a.thaw, "copy".into(), false, &report);
    let thawed = |blobs: &[(String, u64)]| thaw.ensure(blobs);
    let c = Copy::open(
        src,
        dst,
        Options {
            blob_class,
            lock,
            tmp: &tmp,
            thawed: &thawed,
        },
    )?;
    let ids = crate::copy::select(&c.source_snapshots(), &a.snapshots, a.all, &a.narrow)?;
    // Nothing is written before the snapshots are known. A damaged
    // identity at the source was warned about: a new one then.
    let source_id = store::identity::read(src).ok().flatten();
    store::identity::ensure_copy(dst, source_id.as_ref())?;
    let mut out = std::io::stdout().lock();
    let (mut snapshots, mut blobs, mut bytes) = (0u64, 0u64, 0u64);
    let mut failed = 0;
    for id in &ids {
        let done = match c.snapshot(id) {
            Ok(done) => done,
            // What is wrong with one snapshot (at the source, or its
            // manifest at the destination) leaves the others to copy.
            Err(e) if of_one_snapshot(&e) => {
                super::warn(&format!("snapshot {id} not copied: {e}"));
                failed += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        if done.already {
            writeln!(out, "{id}: already at the destination").map_err(output)?;
            continue;
        }
        snapshots += 1;
        blobs += done.blobs_copied;
        bytes += done.bytes_copied;
        let mut line = format!(
            "{id}: copied, {} blob(s) ({}) copied, {} already there",
            done.blobs_copied,
            human_bytes(done.bytes_copied),
            done.blobs_present
        );
        if done.locks_extended > 0 {
            line.push_str(&format!(", {} lock(s) extended", done.locks_extended));
        }
        writeln!(out, "{line}").map_err(output)?;
    }
    writeln!(
        out,
        "copied {snapshots} snapshot(s) of {} to {}: {blobs} blob(s), {}",
        ids.len(),
        dst.describe(),
        human_bytes(bytes)
    )
    .map_err(output)?;
    if failed > 0 {
        return Err(Error::Problems {
            count: failed,
            what: "copy (the snapshots not copied are named above)".into(),
        });
    }
    Ok(())
}

/// An error about one snapshot's objects (damaged or missing at the
/// source, refused at the destination), not about reaching the stores.
fn of_one_snapshot(e: &Error) -> bool {
    matches!(
        e,
        Error::Corrupt { .. } | Error::NotFound { .. } | Error::Store { op: "COPY", .. }
    )
}

/// The storage class for new blobs and the Object Lock plan of a store
/// written to without a backup (a copy's destination, a repack's store):
/// `what` names it in errors.
pub(super) fn policy(
    dst: &dyn Store,
    to: &StoreConfig,
    to_cfg: Option<&Config>,
    what: &str,
) -> Result<(StorageClass, Option<LockPlan>)> {
    let StoreConfig::S3(s3) = to else {
        return Ok((StorageClass::Standard, None));
    };
    if !s3.object_lock.is_on() {
        return Ok((s3.storage_class, None));
    }
    dst.check_lock_setup()?;
    let lock_for = match (s3.lock_for, to_cfg) {
        (Some(d), _) => Some(d.as_secs()),
        (None, Some(c)) => {
            let rule = Retention::of_config(c);
            let latest = c.keep_latest.map(|n| (n as u64).saturating_mul(86_400));
            crate::gc::retention::derived_lock_for(&rule, c.grace_period.as_secs(), latest)
        }
        (None, None) => None,
    };
    let lock_for = lock_for.ok_or_else(|| {
        Error::Setup(format!(
            "{what} has object_lock set but no lock_for, and no retention rule says how long \
             snapshots are kept: set lock_for in its [s3] section"
        ))
    })?;
    Ok((
        s3.storage_class,
        Some(LockPlan::new(s3.object_lock, lock_for, crate::time::now())),
    ))
}

/// Whether two store settings reach the same objects.
fn same_store(a: &StoreConfig, b: &StoreConfig) -> bool {
    match (a, b) {
        (StoreConfig::S3(a), StoreConfig::S3(b)) => {
            a.endpoint.trim_end_matches('/') == b.endpoint.trim_end_matches('/')
                && a.bucket == b.bucket
                && a.prefix == b.prefix
        }
        (StoreConfig::Local { path: a }, StoreConfig::Local { path: b }) => {
            match (a.canonicalize(), b.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => a == b,
            }
        }
        _ => false,
    }
}
