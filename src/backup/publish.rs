//! Stage 6, publish (once the pipeline is done and every referenced chunk
//! is in the store): the files read are remembered in the index; the
//! snapshot's chunk table is written as the index locates its chunks; the
//! metadata database is sealed and uploaded, then the manifest, which
//! makes the snapshot exist; last, a check that no blob it reuses was
//! deleted meanwhile by a purge elsewhere (else it is withdrawn).

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::sync_channel;

use super::{Backup, Summary, join};
use crate::config::SnapshotConfig;
use crate::error::{Error, Result};
use crate::index::Located;
use crate::layout;
use crate::manifest::Manifest;
use crate::snapshot::{self, MetaWriter};
use crate::store::class::StorageClass;

/// Chunk locations handed from the index to the metadata at a time, and
/// batches of them queued.
const LOCATE_BATCH: usize = 2048;
const LOCATE_BATCHES: usize = 4;

/// One snapshot to publish.
pub struct Publish<'p, 'a> {
    pub backup: &'p Backup<'a>,
    pub meta: MetaWriter,
    pub snap: &'p SnapshotConfig,
    pub id: &'p str,
    pub time: u64,
    /// The kept metadata of the name's last snapshot.
    pub last: &'p Path,
    /// Entries were carried over from the last snapshot: a chunk the index
    /// cannot locate means that base is out of date (`StaleBase`), not a
    /// damaged index.
    pub carried: bool,
    /// Publish nothing when nothing differs from the last snapshot.
    pub skip_unchanged: bool,
    /// When the run started, in ns since the epoch.
    pub started_ns: i64,
}

impl Publish<'_, '_> {
    pub fn run(self, mut s: Summary) -> Result<Summary> {
        let t = super::Timings::start();
        self.remember_files()?;
        t.lap("publish: files remembered in the index");
        let Some(blobs) = self.chunk_table()? else {
            s.unchanged = true;
            return Ok(s);
        };
        t.lap("publish: chunk table");
        let b = self.backup;
        if let Some(plan) = &b.lock {
            // A write-only host cannot withdraw a snapshot once published
            // (that is a DELETE): check its blobs before, too.
            missing_blobs(b, self.id, &blobs)?;
            s.locks_extended = extend_locks(b, plan, &blobs)?;
            // The snapshot's own objects: lock_for from now, however long
            // the run took since the lock was first set.
            b.store.set_lock(Some(plan.extended(crate::time::now())));
            t.lap("publish: locks of reused blobs extended");
        }
        let sealed = self
            .meta
            .seal(&b.tmp_dir, &b.recipients, snapshot::METADATA_LEVEL)?;
        t.lap("publish: metadata sealed");
        b.store.put_file(
            &layout::metadata(self.id),
            sealed.temp.path(),
            StorageClass::Standard,
        )?;
        t.lap("publish: metadata uploaded");
        let manifest = Manifest {
            id: self.id.to_string(),
            hostname: b.hostname.clone(),
            name: self.snap.name.clone(),
            time: self.time,
            blobs,
            metadata_size: sealed.size,
            metadata_sha256: Some(sealed.hash),
            metadata_sha256_also: None,
        };
        let bytes = manifest.to_bytes()?;
        // The signature before the manifest: a snapshot exists only once
        // its manifest does, signed from its first moment.
        b.store
            .put_bytes(&layout::signature(self.id), &b.signer.sign(self.id, &bytes))?;
        b.store.put_bytes(&layout::manifest(self.id), &bytes)?;
        check_blobs(b, &manifest)?;
        t.lap("publish: manifest uploaded, blobs checked");
        Ok(s)
    }

    /// Everything referenced is in the store: remember the files (not
    /// those changed too shortly before the run to trust their stat).
    fn remember_files(&self) -> Result<()> {
        self.backup.index().store_files(&mut |put| {
            self.meta.each_file(&mut |path, stat, chunks, attrs| {
                if stat.racy(self.started_ns) {
                    Ok(())
                } else {
                    put(path, stat, chunks, attrs)
                }
            })
        })?;
        self.meta.drop_files()
    }

    /// Write the chunk table: the last snapshot's, copied and patched, when
    /// it holds nearly this snapshot's chunks (a run where little changed), or as
    /// the index locates the chunks (on another thread). Returns the blobs
    /// the snapshot needs, or None when nothing differs from the last
    /// snapshot and that may be skipped. Only a run that may skip an
    /// unchanged snapshot (the daemon) spends the time on the digest; it is
    /// recorded, for the next run to compare with.
    fn chunk_table(&self) -> Result<Option<Vec<(String, u64)>>> {
        let b = self.backup;
        if self.skip_unchanged {
            let digest = self.meta.digest()?;
            if snapshot::stored_digest(self.last).as_deref() == Some(digest.as_str())
                && b.last_still_stored(self.last)?
            {
                return Ok(None);
            }
            self.meta.set_info("digest", &digest)?;
        }
        if b.abort
            .is_some_and(|a| a.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Err(Error::Cancelled);
        }
        let mut sorter = super::ids::Sorter::new(&b.tmp_dir);
        self.meta.each_chunk_id(&mut |id| sorter.push(id))?;
        let mut ids = sorter.sorted()?;
        if self.last.is_file() {
            let index = b.index();
            let reused = self
                .meta
                .reuse_chunks(self.last, &mut ids, &index, self.carried)?;
            if reused.is_some() {
                return Ok(reused);
            }
            ids.rewind()?;
        }
        let index_path = b.index().path().to_path_buf();
        let (tx, rx) = sync_channel::<Located>(LOCATE_BATCHES);
        let (written, located) = std::thread::scope(|t| {
            let locating = t.spawn(move || {
                b.index().locate(ids, LOCATE_BATCH, &mut |found| {
                    tx.send(found).map_err(|_| Error::Cancelled)
                })
            });
            // Takes `rx`, dropped on return: a locating side still sending stops.
            let written = self.meta.write_chunks(rx, &index_path, self.carried);
            (written, join(locating))
        });
        match (written, located) {
            // The table ended early: why is the locating side's to say.
            (Err(Error::Cancelled), Err(e)) => Err(e),
            (written, _) => written.map(Some),
        }
    }
}

/// Every blob the snapshot names must stay locked `lock_for` past now:
/// extend the lock of those the index does not know to be (reused blobs),
/// eight requests at a time, each to what is needed plus a step (so that
/// the next runs need not). Done before the snapshot is published: a
/// snapshot is never published with a blob whose lock ends before its
/// own. Returns how many were extended.
fn extend_locks(
    b: &Backup<'_>,
    plan: &crate::store::lock::LockPlan,
    blobs: &[(String, u64)],
) -> Result<u64> {
    let now = crate::time::now();
    let needed = plan.needed(now);
    // The version this host uploaded when it knows it (a version put over
    // it later must not take its place), else the current one.
    let stale: Vec<(String, Option<String>)> = {
        let index = b.index();
        let mut stale = Vec::new();
        for (k, _) in blobs {
            let (until, version) = index.locked_until(k)?;
            if until < needed {
                stale.push((k.clone(), version));
            }
        }
        stale
    };
    if stale.is_empty() {
        return Ok(0);
    }
    let lock = plan.extended(now);
    for r in crate::store::parallel(&stale, |(k, v)| b.store.extend_lock(k, v.as_deref(), lock)) {
        r?;
    }
    let keys: Vec<String> = stale.into_iter().map(|(k, _)| k).collect();
    b.index().set_locked_until(&keys, lock.until, None)?;
    Ok(keys.len() as u64)
}

/// Whether every blob of `blobs` is in the store with its size; if not,
/// the index forgets what is gone and the snapshot `id` is to be made
/// again (`BlobsVanished`).
fn missing_blobs(b: &Backup<'_>, id: &str, blobs: &[(String, u64)]) -> Result<()> {
    let present: HashMap<String, u64> = b
        .store
        .list(layout::BLOBS)?
        .objects
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let missing = blobs
        .iter()
        .filter(|(k, size)| present.get(k) != Some(size))
        .count();
    if missing == 0 {
        return Ok(());
    }
    let mut keys: Vec<(String, u64)> = present.into_iter().collect();
    keys.sort();
    b.index().forget_missing_blobs(&keys)?;
    Err(Error::BlobsVanished {
        id: id.to_string(),
        missing,
    })
}

/// A purge elsewhere may have deleted an old blob the snapshot reuses
/// before it was published: check, and withdraw it if so. Under Object
/// Lock nothing is withdrawn (a write-only host may not delete; the blob's
/// locked version remains, and restores read it): the run is made again,
/// and the snapshot left is for `snapshot remove` from an admin machine.
fn check_blobs(b: &Backup<'_>, manifest: &Manifest) -> Result<()> {
    let r = missing_blobs(b, &manifest.id, &manifest.blobs);
    if r.is_err() && b.lock.is_none() {
        crate::gc::remove_snapshots(b.store, &[&manifest.id])?;
    }
    r
}
