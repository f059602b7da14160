//! Stages 2 and 3 of a repack: the used chunks of the chosen blobs moved
//! into new blobs (uploaded before anything names them), then each
//! snapshot that used them rewritten to name the new ones, in steps that
//! leave it whole and signed at every moment:
//!
//! 1. (signed) the signature object gets a second signature, over the
//!    manifest of step 2, beside the one over the current manifest;
//! 2. the manifest is replaced by one that lists the old blobs and the new
//!    ones, and vouches for both the old metadata and the new
//!    (`metadata_sha256_also`);
//! 3. the metadata is replaced (it names the new blobs);
//! 4. the manifest is replaced by one that lists only the blobs the new
//!    metadata uses, vouching only for it, signed likewise (two
//!    signatures, then one).
//!
//! A reader or a garbage collection that sees any of these states finds
//! every blob the metadata it reads names listed in the manifest, and the
//! metadata one the manifest vouches for. A repack interrupted anywhere
//! leaves snapshots that restore; the next repack finishes them.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::blob::{BlobReader, BlobWriter, Location};
use crate::chunk::ChunkId;
use crate::error::{DbContext, Error, Result};
use crate::layout;
use crate::manifest::{self, Manifest};
use crate::scratch::PrivateDir;
use crate::signing::{self, SigningKey};
use crate::store::class::StorageClass;

use super::usage::{Census, Sign, Snap};
use super::{Repack, Report};

/// What takes each chunk read out of a blob: its id, its frame as stored,
/// its plaintext size.
type FrameSink<'a> = dyn FnMut(ChunkId, &[u8], u64) -> Result<()> + 'a;

/// Where the moved chunks are now: the new blob's key and size, and each
/// chunk's place in it.
#[derive(Debug, Default)]
pub struct Moved {
    pub blobs: Vec<(String, u64)>,
    pub chunks: HashMap<ChunkId, (usize, Location)>,
}

impl Repack<'_> {
    /// Read the used chunks of `chosen` (each checked against its id) and
    /// write them into new blobs, uploaded. A blob whose chunks cannot all
    /// be read (damaged, forged, another key's) is left out of the repack
    /// (said), not the run. Frames stream from blob to blob (one chunk in
    /// memory); those a failed blob gave before it failed stay in the new
    /// blob, checked chunks no snapshot is pointed at (a few wasted bytes).
    pub(super) fn move_chunks(
        &self,
        census: &Census,
        chosen: &mut Vec<String>,
        report: &mut Report,
    ) -> Result<Moved> {
        let mut moved = Moved::default();
        let mut writer: Option<BlobWriter> = None;
        let mut failed = HashSet::new();
        for key in chosen.iter() {
            let usage = &census.blobs[key];
            let mut order: Vec<(&ChunkId, &Location)> = usage.chunks.iter().collect();
            order.sort_by_key(|(_, l)| l.offset);
            let copied = self.copy_frames(key, usage.size, &order, &mut |id, frame, size| {
                let w = match &mut writer {
                    Some(w) => w,
                    None => writer.insert(BlobWriter::create(self.tmp_dir, self.recipients)?),
                };
                w.add(id, frame, size)?;
                if w.len() >= self.blob_size {
                    let full = writer.take().expect("a writer was just used");
                    self.upload(full, &mut moved, report)?;
                }
                Ok(())
            });
            match copied {
                Ok(()) => {}
                Err(e @ (Error::Corrupt { .. } | Error::Key(_))) => {
                    (self.warn)(&format!("blob {key} not repacked: {e}"));
                    failed.insert(key.clone());
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(w) = writer.filter(|w| !w.is_empty()) {
            self.upload(w, &mut moved, report)?;
        }
        chosen.retain(|k| !failed.contains(k));
        Ok(moved)
    }

    /// Give `to` each chunk of `order` in blob `key`, read and checked.
    fn copy_frames(
        &self,
        key: &str,
        size: u64,
        order: &[(&ChunkId, &Location)],
        to: &mut FrameSink<'_>,
    ) -> Result<()> {
        let mut r = BlobReader::open(self.store, key, size, self.identities)?;
        if let Some((_, last)) = order.last() {
            // One GET from the first used byte to the last.
            r.plan_range(last.offset.saturating_add(last.length));
        }
        for (id, loc) in order {
            r.read_chunk(id, loc)?;
            to(**id, r.frame(), loc.size)?;
        }
        Ok(())
    }

    fn upload(&self, w: BlobWriter, moved: &mut Moved, report: &mut Report) -> Result<()> {
        let done = w.finish()?;
        self.store
            .put_file(&done.key, done.file.temp.path(), self.class)?;
        let at = moved.blobs.len();
        moved.blobs.push((done.key.clone(), done.file.size));
        report.new_blobs += 1;
        report.new_bytes = report.new_bytes.saturating_add(done.file.size);
        for (id, loc) in &done.entries {
            moved.chunks.insert(*id, (at, *loc));
        }
        report
            .new
            .push((done.key.clone(), done.file.size, done.entries));
        Ok(())
    }

    /// Rewrite `snap` to name the new blobs instead of `chosen` (see the
    /// module doc): the blobs its manifest lists afterwards, or None when
    /// it changed since it was read (left as it is, said).
    pub(super) fn rewrite(
        &self,
        snap: &Snap,
        chosen: &HashSet<&str>,
        moved: &Moved,
        signer: Option<&SigningKey>,
    ) -> Result<Option<Vec<(String, u64)>>> {
        let id = snap.id.as_str();
        // The object the census read, or nothing is changed.
        let m = match crate::metadata::open_hashed(
            self.store,
            id,
            self.identities,
            self.tmp_dir,
            &[snap.meta_sha256],
        ) {
            Ok(m) => m,
            Err(e @ Error::Corrupt { .. }) => {
                (self.warn)(&format!(
                    "snapshot {id} not rewritten: its metadata changed since it was read ({e})"
                ));
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let mpath = Path::new("snapshot metadata");
        // The metadata as read in the census: the same chunks where they
        // were moved from, or nothing is changed.
        let mut uses: HashSet<usize> = HashSet::new();
        {
            m.execute_batch("BEGIN").db(mpath)?;
            let mut blob_rows: HashMap<usize, i64> = HashMap::new();
            let mut old_rows: Vec<i64> = Vec::new();
            {
                let mut st = m.prepare("SELECT id, key FROM main.blobs").db(mpath)?;
                let rows = st
                    .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                    .db(mpath)?;
                for row in rows {
                    let (rid, key) = row.db(mpath)?;
                    if chosen.contains(key.as_str()) {
                        old_rows.push(rid);
                    }
                }
            }
            // The chunk rows in the moved blobs: one scan (the table has
            // no index on `blob`), then each row by its key.
            let old: HashSet<i64> = old_rows.iter().copied().collect();
            let rows: Vec<Vec<u8>> = {
                let mut st = m.prepare("SELECT id, blob FROM main.chunks").db(mpath)?;
                let mut found = Vec::new();
                let mut q = st.query([]).db(mpath)?;
                while let Some(r) = q.next().db(mpath)? {
                    if old.contains(&r.get::<_, i64>(1).db(mpath)?) {
                        found.push(r.get::<_, Vec<u8>>(0).db(mpath)?);
                    }
                }
                found
            };
            let mut ins = m
                .prepare("INSERT INTO main.blobs(key, size) VALUES (?1, ?2)")
                .db(mpath)?;
            let mut upd = m
                .prepare(
                    "UPDATE main.chunks SET blob = ?1, offset = ?2, length = ?3, size = ?4 \
                     WHERE id = ?5",
                )
                .db(mpath)?;
            for raw in rows {
                let found = ChunkId::from_slice(&raw).and_then(|c| moved.chunks.get(&c));
                let Some((at, loc)) = found else {
                    (self.warn)(&format!(
                        "snapshot {id} not rewritten: its metadata changed since it was read"
                    ));
                    return Ok(None);
                };
                let row = match blob_rows.get(at) {
                    Some(r) => *r,
                    None => {
                        let (key, size) = &moved.blobs[*at];
                        ins.execute(rusqlite::params![key, *size as i64])
                            .db(mpath)?;
                        let r = m.last_insert_rowid();
                        blob_rows.insert(*at, r);
                        r
                    }
                };
                uses.insert(*at);
                upd.execute(rusqlite::params![
                    row,
                    loc.offset as i64,
                    loc.length as i64,
                    loc.size as i64,
                    raw
                ])
                .db(mpath)?;
            }
            for old in &old_rows {
                m.execute("DELETE FROM main.blobs WHERE id = ?1", [old])
                    .db(mpath)?;
            }
            drop((ins, upd));
            m.execute_batch("COMMIT").db(mpath)?;
        }
        // The blobs the metadata uses now (those of the census, checked
        // there against the store's listing, and the new ones).
        let after: Vec<(String, u64)> = {
            let mut st = m
                .prepare(
                    "SELECT key, size FROM main.blobs WHERE id IN (SELECT blob FROM main.chunks) \
                     ORDER BY key",
                )
                .db(mpath)?;
            st.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .db(mpath)?
            .collect::<rusqlite::Result<_>>()
            .db(mpath)?
        };
        let changed = !uses.is_empty();
        // The metadata stored now (the census read it, and so did `open`).
        let (old_sha, old_size) = (Some(snap.meta_sha256), snap.meta_size);
        let sealed = if changed {
            let mut scratch = PrivateDir::new(self.tmp_dir)?;
            let (path, file) = scratch.file("metadata.sqlite")?;
            drop(file);
            let name = path.to_str().ok_or_else(|| {
                Error::Setup(format!(
                    "{}: not UTF-8, which SQLite needs to write a database there",
                    path.display()
                ))
            })?;
            m.execute("VACUUM main INTO ?1", [name]).db(&path)?;
            drop(m);
            let sealed = crate::snapshot::seal_database(
                &path,
                self.tmp_dir,
                self.recipients,
                crate::snapshot::METADATA_LEVEL,
            )?;
            drop(scratch);
            Some(sealed)
        } else {
            drop(m);
            None
        };
        let s = &snap.parsed.summary;
        let manifest = |blobs: Vec<(String, u64)>, size, first, also| Manifest {
            id: s.id.clone(),
            hostname: s.hostname.clone(),
            name: s.name.clone(),
            time: s.time,
            blobs,
            metadata_size: size,
            metadata_sha256: first,
            metadata_sha256_also: also,
        };
        // Listing the old blobs and the new, vouching for the old metadata
        // and the new: while the metadata is replaced.
        let mid = match &sealed {
            Some(new) => {
                let mut both: Vec<(String, u64)> = snap
                    .parsed
                    .blobs
                    .iter()
                    .map(|b| (layout::blob(&b.hash), b.size))
                    .collect();
                let listed: HashSet<String> = both.iter().map(|(k, _)| k.clone()).collect();
                both.extend(after.iter().filter(|(k, _)| !listed.contains(k)).cloned());
                let sums = match old_sha {
                    Some(old) => (Some(old), Some(new.hash)),
                    None => (Some(new.hash), None),
                };
                // The size of the metadata stored until it is replaced.
                Some(manifest(both, old_size, sums.0, sums.1).to_bytes()?)
            }
            None => None,
        };
        let last = match &sealed {
            Some(new) => manifest(after.clone(), new.size, Some(new.hash), None),
            None => manifest(after.clone(), old_size, old_sha, None),
        }
        .to_bytes()?;
        // Changed or removed since the census (a purge elsewhere): left.
        let key = layout::manifest(id);
        match self.store.get(&key, manifest::MANIFEST_MAX) {
            Ok(now) if now == snap.raw => {}
            Ok(_) | Err(Error::NotFound { .. }) => {
                (self.warn)(&format!(
                    "snapshot {id} not rewritten: its manifest changed since it was read"
                ));
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let sig_key = layout::signature(id);
        let resign = match &snap.sign {
            Sign::Unsigned => None,
            Sign::Resign(old) => Some((
                old,
                signer.expect("run loads the signing key when a signed snapshot is rewritten"),
            )),
        };
        // Each manifest put is signed before and after: the signature
        // object holds one over the manifest stored and one over the next.
        let mut current = resign.map(|(old, _)| old.clone());
        let mut put_manifest = |bytes: &[u8]| -> Result<()> {
            if let Some((_, k)) = resign {
                let next = k.entry(id, bytes);
                let before = current.take().expect("the stored manifest's signature");
                self.store
                    .put_bytes(&sig_key, &signing::object(&[before, next.clone()]))?;
                current = Some(next);
            }
            self.store.put_bytes(&key, bytes)
        };
        if let (Some(mid), Some(new)) = (&mid, &sealed) {
            put_manifest(mid)?;
            crate::testhook::pause_at(&self.state.join("repack-pause-mid"));
            self.store.put_file(
                &layout::metadata(id),
                new.temp.path(),
                StorageClass::Standard,
            )?;
            crate::testhook::pause_at(&self.state.join("repack-pause-metadata"));
        }
        put_manifest(&last)?;
        if let Some((_, k)) = resign {
            self.store.put_bytes(&sig_key, &k.sign(id, &last))?;
        }
        Ok(Some(after))
    }
}
