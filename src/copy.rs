//! Copying snapshots from one store to another, without any key (`vaultik
//! copy`, issue 33): blobs are content-addressed and already encrypted,
//! metadata is encrypted, manifests are clear; all three are copied byte
//! for byte.
//!
//! Order, per snapshot, so that the destination never shows a snapshot
//! that is not all there (a snapshot exists once its manifest does): the
//! blobs the destination lacks, then the metadata, the manifest last; then
//! a check that no blob went missing meanwhile (a purge on the destination),
//! which withdraws the snapshot if one did. A copy interrupted anywhere is
//! run again: what is at the destination with its size is not copied again.
//!
//! The destination's garbage collection is respected as a backup respects
//! it (see `gc/mod.rs`): a blob a purge there has marked for deletion is
//! copied again (fresh, so younger than the grace period), never counted
//! as present; and a blob deleted before the manifest is published makes
//! the snapshot withdrawn and the copy fail, to be run again.
//!
//! The source is hostile like any store: its manifest is read bounded and
//! checked (`manifest.rs`); a blob it lists must be listed by the source
//! with the manifest's size, at most `BLOB_MAX` bytes, and its bytes must
//! hash to its name; the metadata must have the size the manifest records.
//! Objects are streamed through a private temporary file (`scratch.rs`),
//! never held in memory; nothing is written but objects of the layout in
//! the destination (and that file).

use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::layout;
use crate::manifest::{self, MANIFEST_MAX};
use crate::scratch::PrivateDir;
use crate::store::class::StorageClass;
use crate::store::lock::LockPlan;
use crate::store::{ObjectInfo, Store};

/// The largest blob a copy reads: the largest `blob_size_limit`, with room
/// for the last chunk past it and the encryption's overhead.
pub const BLOB_MAX: u64 = crate::config::MAX_BLOB_SIZE_LIMIT + (64 << 20);

/// The largest metadata database a copy reads (a snapshot of tens of
/// millions of files).
pub const METADATA_MAX: u64 = 16 << 30;

/// Objects copied at once (each through its own temporary file).
const PARALLEL: usize = 4;

/// What makes cold blobs readable (`Options::thawed`).
pub type Gate<'a> = dyn Fn(&[(String, u64)]) -> Result<()> + Sync + 'a;

/// A blob to copy: its key, size, and the SHA-256 its key names.
type Wanted = (String, u64, [u8; 32]);

/// How the destination is written.
pub struct Options<'a> {
    /// The storage class of blobs there (`[s3] storage_class`).
    pub blob_class: StorageClass,
    /// Object Lock there: every object written is locked (set on the store
    /// already), and blobs already there are kept locked long enough.
    pub lock: Option<LockPlan>,
    /// Where temporary files go.
    pub tmp: &'a Path,
    /// Called with the source blobs to copy that a listing shows in a cold
    /// storage class (or INTELLIGENT_TIERING): returns once they are
    /// readable (`thaw.rs`, as `--thaw` asks).
    pub thawed: &'a Gate<'a>,
}

/// What copying one snapshot did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Copied {
    pub id: String,
    /// The snapshot was at the destination already (nothing written).
    pub already: bool,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    /// Blobs the destination had already.
    pub blobs_present: u64,
    /// Blobs whose lock was extended at the destination.
    pub locks_extended: u64,
}

/// The two stores and what their listings said.
pub struct Copy<'a> {
    src: &'a dyn Store,
    dst: &'a dyn Store,
    opts: Options<'a>,
    /// The source's objects of `blobs/` and `metadata/`: size and class.
    src_objects: HashMap<String, ObjectInfo>,
    /// The destination's blobs (their sizes), less those a purge marked;
    /// grows as blobs are copied.
    dst_blobs: Mutex<HashMap<String, u64>>,
}

impl<'a> Copy<'a> {
    /// List both stores. The destination's identity is dealt with before
    /// (`store::identity::ensure_copy`).
    pub fn open(src: &'a dyn Store, dst: &'a dyn Store, opts: Options<'a>) -> Result<Copy<'a>> {
        let mut src_objects = HashMap::new();
        for o in src
            .list(layout::BLOBS)?
            .objects
            .into_iter()
            .chain(src.list(layout::METADATA)?.objects)
        {
            src_objects.insert(o.key.clone(), o);
        }
        let c = Copy {
            src,
            dst,
            opts,
            src_objects,
            dst_blobs: Mutex::new(HashMap::new()),
        };
        c.list_destination()?;
        Ok(c)
    }

    /// The destination's blobs, less those a purge there has marked for
    /// deletion (copied again, as a backup uploads them again).
    fn list_destination(&self) -> Result<HashMap<String, u64>> {
        let marked = crate::gc::marked_blobs(self.dst)?;
        let listed: HashMap<String, u64> = self
            .dst
            .list(layout::BLOBS)?
            .objects
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        let mut usable = listed.clone();
        usable.retain(|k, _| !marked.contains(k));
        *self.dst_blobs.lock().expect("a copy thread panicked") = usable;
        Ok(listed)
    }

    /// The snapshots of the source, oldest first.
    pub fn source_snapshots(&self) -> Vec<manifest::Listed> {
        let objects: Vec<ObjectInfo> = self
            .src_objects
            .values()
            .filter(|o| o.key.starts_with(layout::METADATA))
            .cloned()
            .collect();
        manifest::snapshots_in(&objects)
    }

    /// Copy snapshot `id` (one the source lists).
    pub fn snapshot(&self, id: &str) -> Result<Copied> {
        let mut done = Copied {
            id: id.to_string(),
            ..Copied::default()
        };
        let mkey = layout::manifest(id);
        let raw = self.src.get(&mkey, MANIFEST_MAX)?;
        let parsed = manifest::parse(&mkey, &raw)?;
        if let Some(there) = self.dst.head(&mkey)? {
            // Published last: the snapshot is all there, if it is this one.
            let theirs = if there == raw.len() as u64 {
                Some(self.dst.get(&mkey, MANIFEST_MAX)?)
            } else {
                None
            };
            if theirs.as_deref() == Some(&raw[..]) {
                done.already = true;
                return Ok(done);
            }
            return Err(Error::store(
                "COPY",
                &mkey,
                "the destination has another manifest for this snapshot; nothing copied \
                 (remove it there with `snapshot remove` if it is to be replaced)",
            ));
        }
        // On a versioned source, read the versions vaultik wrote (those of
        // blobs replaced or deleted behind its back are pinned).
        let pairs: Vec<(String, u64)> = parsed
            .blobs
            .iter()
            .map(|b| (layout::blob(&b.hash), b.size))
            .collect();
        self.src.choose_versions(&pairs, &|m| {
            eprintln!(
                "{}vaultik: warning: {}",
                crate::error::priority(4),
                crate::error::one_line(m.to_string())
            )
        })?;
        // Every blob, checked against the source's listing before anything
        // is written (a blob the listing does not show with its size is
        // asked for: a version pinned above is known without a request).
        let mut blobs = Vec::with_capacity(parsed.blobs.len());
        for (b, (key, _)) in parsed.blobs.iter().zip(pairs) {
            let size = match self.src_objects.get(&key) {
                Some(o) if o.size == b.size => Some(o.size),
                _ => self.src.head(&key)?,
            };
            let Some(size) = size else {
                return Err(Error::store(
                    "COPY",
                    &key,
                    format!(
                        "snapshot {id} lists this blob, but the source has no such object; nothing of the snapshot copied"
                    ),
                ));
            };
            if size != b.size {
                return Err(Error::corrupt(
                    format!("blob {key} at the source"),
                    format!(
                        "{size} bytes, but the manifest of snapshot {id} records {}; nothing of the snapshot copied",
                        b.size
                    ),
                ));
            }
            if b.size > BLOB_MAX {
                return Err(crate::store::too_large(&key, b.size, BLOB_MAX));
            }
            blobs.push((key, b.size, b.hash));
        }
        let dkey = layout::metadata(id);
        let msize = parsed.summary.metadata_size;
        match self.src_objects.get(&dkey) {
            None => {
                return Err(Error::store(
                    "COPY",
                    &dkey,
                    format!("snapshot {id} has no metadata at the source; nothing of it copied"),
                ));
            }
            Some(o) if o.size != msize => {
                return Err(Error::corrupt(
                    format!("metadata {dkey} at the source"),
                    format!(
                        "{} bytes, but the manifest records {msize}; nothing of the snapshot copied",
                        o.size
                    ),
                ));
            }
            Some(_) if msize > METADATA_MAX => {
                return Err(crate::store::too_large(&dkey, msize, METADATA_MAX));
            }
            Some(_) => {}
        }

        let pairs: Vec<(String, u64)> = blobs.iter().map(|(k, s, _)| (k.clone(), *s)).collect();
        let (todo, present) = self.to_copy(&blobs, &mut done)?;
        done.blobs_present = present;
        let cold: Vec<(String, u64)> = todo
            .iter()
            .filter(|(k, _, _)| {
                self.src_objects.get(k).is_some_and(|o| {
                    o.class.is_cold() || o.class == StorageClass::IntelligentTiering
                })
            })
            .map(|(k, s, _)| (k.clone(), *s))
            .collect();
        if !cold.is_empty() {
            (self.opts.thawed)(&cold)?;
        }
        self.copy_blobs(&todo, &mut done)?;
        match self.dst.head(&dkey)? {
            Some(s) if s == msize && self.opts.lock.is_none() => {}
            _ => {
                self.copy_object(&dkey, msize, None, StorageClass::Standard)?;
            }
        }
        // The host's signature, as it is (a reader checks it).
        let skey = layout::signature(id);
        if self.src_objects.contains_key(&skey) {
            let sig = self.src.get(&skey, crate::signing::SIG_MAX)?;
            self.dst.put_bytes(&skey, &sig)?;
        }
        self.dst.put_bytes(&mkey, &raw)?;
        self.check_published(id, &pairs)?;
        Ok(done)
    }

    /// The blobs of `blobs` to copy, and how many the destination has
    /// (under Object Lock: locked, their locks extended as needed).
    fn to_copy(&self, blobs: &[Wanted], done: &mut Copied) -> Result<(Vec<Wanted>, u64)> {
        let there: Vec<&Wanted>;
        let mut todo = Vec::new();
        {
            let have = self.dst_blobs.lock().expect("a copy thread panicked");
            let (a, b): (Vec<_>, Vec<_>) = blobs
                .iter()
                .partition(|(k, size, _)| have.get(k) == Some(size));
            there = a;
            todo.extend(b.into_iter().cloned());
        }
        let Some(plan) = self.opts.lock else {
            return Ok((todo, there.len() as u64));
        };
        // Under Object Lock a blob already there must be the one named,
        // locked, and stay locked `lock_for` past now: one HEAD each.
        let now = crate::time::now();
        let needed = plan.needed(now);
        let lock = plan.extended(now);
        let checksums = self.dst.keeps_checksums();
        let mut present = 0;
        let results = crate::store::parallel(&there, |(k, _, hash)| -> Result<Option<bool>> {
            let Some(meta) = self.dst.stat(k, checksums)? else {
                return Ok(None);
            };
            if meta.sha256.is_some_and(|s| s != *hash) {
                return Ok(None);
            }
            match meta.locked_until {
                // Not locked (written before object_lock was set): copied
                // again, locked.
                None => Ok(None),
                Some(u) if u >= needed => Ok(Some(false)),
                Some(_) => self.dst.extend_lock(k, None, lock).map(|()| Some(true)),
            }
        });
        for (b, r) in there.into_iter().zip(results) {
            match r? {
                None => todo.push(b.clone()),
                Some(extended) => {
                    present += 1;
                    done.locks_extended += u64::from(extended);
                }
            }
        }
        Ok((todo, present))
    }

    /// Copy `todo`, `PARALLEL` at a time; the first error stops the rest.
    fn copy_blobs(&self, todo: &[Wanted], done: &mut Copied) -> Result<()> {
        let next = Mutex::new(0usize);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<Error>> = Mutex::new(None);
        let copied = Mutex::new((0u64, 0u64));
        std::thread::scope(|s| {
            for _ in 0..PARALLEL.min(todo.len()) {
                s.spawn(|| {
                    while !failed.load(Ordering::Relaxed) {
                        let i = {
                            let mut n = next.lock().expect("a copy thread panicked");
                            let i = *n;
                            *n += 1;
                            i
                        };
                        let Some((key, size, hash)) = todo.get(i) else {
                            break;
                        };
                        match self.copy_object(key, *size, Some(hash), self.opts.blob_class) {
                            Ok(()) => {
                                self.dst_blobs
                                    .lock()
                                    .expect("a copy thread panicked")
                                    .insert(key.clone(), *size);
                                let mut c = copied.lock().expect("a copy thread panicked");
                                c.0 += 1;
                                c.1 += size;
                            }
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                first_error
                                    .lock()
                                    .expect("a copy thread panicked")
                                    .get_or_insert(e);
                            }
                        }
                    }
                });
            }
        });
        let (n, bytes) = copied.into_inner().expect("a copy thread panicked");
        done.blobs_copied += n;
        done.bytes_copied += bytes;
        match first_error.into_inner().expect("a copy thread panicked") {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stream `key` (`size` bytes) from the source into a private
    /// temporary file, hashing it: a blob's bytes must hash to `name`;
    /// other objects must match the SHA-256 the source stored, when it
    /// keeps one. Then put it at the destination and check what it says
    /// of it: its size, and its SHA-256 when it keeps one.
    fn copy_object(
        &self,
        key: &str,
        size: u64,
        name: Option<&[u8; 32]>,
        class: StorageClass,
    ) -> Result<()> {
        let mut dir = PrivateDir::new(self.opts.tmp)?;
        let (path, file) = dir.file("object")?;
        let mut w = BufWriter::with_capacity(256 << 10, file);
        let mut hash = Sha256::new();
        if size > 0 {
            let mut r = self.src.open_range(key, 0, size)?;
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::store("GET", key, e)),
                };
                hash.update(&buf[..n]);
                w.write_all(&buf[..n]).at("write", &path)?;
            }
        }
        // A scratch file, read back at once: flushed, not synced.
        w.into_inner()
            .map_err(|e| e.into_error())
            .at("write", &path)?;
        let sum: [u8; 32] = hash.finalize().into();
        let want = match name {
            Some(n) => Some(*n),
            None if self.src.keeps_checksums() => self.src.stat(key, true)?.and_then(|m| m.sha256),
            None => None,
        };
        if want.is_some_and(|w| w != sum) {
            return Err(Error::corrupt(
                format!("{key} at the source"),
                format!(
                    "its bytes hash to {}, not to {}; not copied",
                    crate::chunk::hex(&sum),
                    crate::chunk::hex(&want.unwrap_or_default())
                ),
            ));
        }
        self.dst.put_file(key, &path, class)?;
        drop(dir);
        let meta = self
            .dst
            .stat(key, self.dst.keeps_checksums())?
            .ok_or_else(|| Error::store("COPY", key, "not at the destination after its PUT"))?;
        if meta.size != size || meta.sha256.is_some_and(|s| s != sum) {
            return Err(Error::store(
                "COPY",
                key,
                format!(
                    "the destination says {} bytes{} after its PUT of {size} bytes",
                    meta.size,
                    if meta.sha256.is_some_and(|s| s != sum) {
                        " and another SHA-256"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(())
    }

    /// A purge on the destination may have deleted a blob the snapshot
    /// needs before its manifest was published: check, and withdraw the
    /// snapshot if so (not under Object Lock: the locked versions remain).
    fn check_published(&self, id: &str, blobs: &[(String, u64)]) -> Result<()> {
        let listed = self.list_destination()?;
        let missing = blobs
            .iter()
            .filter(|(k, size)| listed.get(k) != Some(size))
            .count();
        if missing == 0 {
            return Ok(());
        }
        if self.opts.lock.is_none() {
            crate::gc::remove_snapshots(self.dst, &[id])?;
        }
        Err(Error::BlobsVanished {
            id: id.to_string(),
            missing,
        })
    }
}

/// The snapshots `wanted` names among `all` (the source's, oldest first):
/// ids and `latest`, or every one (`all`), narrowed; each once, oldest
/// first.
pub fn select(
    all: &[manifest::Listed],
    wanted: &[String],
    every: bool,
    narrow: &manifest::Narrow,
) -> Result<Vec<String>> {
    let mut ids: Vec<String> = if every {
        all.iter()
            .filter(|l| narrow.admits(&l.id))
            .map(|l| l.id.clone())
            .collect()
    } else {
        wanted
            .iter()
            .map(|w| manifest::pick(all, w, narrow))
            .collect::<Result<_>>()?
    };
    let mut seen = HashSet::new();
    ids.retain(|i| seen.insert(i.clone()));
    ids.sort_by(|a, b| layout::id_order(a, b));
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use crate::store::{LocalStore, Stats};

    /// A store that deletes `victim` as soon as a manifest is put: a
    /// purge elsewhere, between a copy's blobs and its check.
    struct Purged {
        inner: LocalStore,
        victim: String,
    }

    impl Store for Purged {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn put_file(&self, key: &str, path: &Path, class: StorageClass) -> Result<()> {
            self.inner.put_file(key, path, class)
        }
        fn put_bytes(&self, key: &str, data: &[u8]) -> Result<()> {
            self.inner.put_bytes(key, data)?;
            if matches!(layout::parse(key), Some(layout::Key::Manifest(_))) {
                self.inner.delete(&self.victim)?;
            }
            Ok(())
        }
        fn put_new(&self, key: &str, data: &[u8]) -> Result<bool> {
            self.inner.put_new(key, data)
        }
        fn get(&self, key: &str, limit: u64) -> Result<Vec<u8>> {
            self.inner.get(key, limit)
        }
        fn open_range(&self, key: &str, start: u64, len: u64) -> Result<Box<dyn Read + Send + '_>> {
            self.inner.open_range(key, start, len)
        }
        fn head(&self, key: &str) -> Result<Option<u64>> {
            self.inner.head(key)
        }
        fn list(&self, prefix: &str) -> Result<crate::store::Listing> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key)
        }
        fn stats(&self) -> &Stats {
            self.inner.stats()
        }
    }

    /// A source store holding one snapshot of two blobs; its id and the
    /// blobs' keys.
    fn source(dir: &Path) -> (LocalStore, String, Vec<String>) {
        let src = LocalStore::open(&dir.join("src"), true).unwrap();
        let mut blobs = Vec::new();
        for data in [&b"first blob"[..], b"second blob"] {
            let key = layout::blob(&Sha256::digest(data).into());
            src.put_bytes(&key, data).unwrap();
            blobs.push((key, data.len() as u64));
        }
        let id = layout::make_id("h", "n", 1_795_422_615);
        src.put_bytes(&layout::metadata(&id), b"sealed metadata")
            .unwrap();
        let m = Manifest {
            id: id.clone(),
            hostname: "h".into(),
            name: "n".into(),
            time: 1_795_422_615,
            blobs: blobs.clone(),
            metadata_size: 15,
            metadata_sha256: None,
            metadata_sha256_also: None,
        };
        src.put_bytes(&layout::manifest(&id), &m.to_bytes().unwrap())
            .unwrap();
        (src, id, blobs.into_iter().map(|b| b.0).collect())
    }

    fn no_thaw(_: &[(String, u64)]) -> Result<()> {
        Ok(())
    }

    fn options(tmp: &Path) -> Options<'_> {
        Options {
            blob_class: StorageClass::Standard,
            lock: None,
            tmp,
            thawed: &no_thaw,
        }
    }

    #[test]
    fn copies_once_then_finds_it_there() {
        let dir = tempfile::tempdir().unwrap();
        let (src, id, blobs) = source(dir.path());
        let dst = LocalStore::open(&dir.path().join("dst"), true).unwrap();
        let c = Copy::open(&src, &dst, options(dir.path())).unwrap();
        let ids: Vec<String> = c.source_snapshots().into_iter().map(|l| l.id).collect();
        assert_eq!(ids, std::slice::from_ref(&id));
        let done = c.snapshot(&id).unwrap();
        assert_eq!((done.blobs_copied, done.blobs_present), (2, 0));
        for k in blobs
            .iter()
            .chain([&layout::metadata(&id), &layout::manifest(&id)])
        {
            assert_eq!(dst.get(k, 1 << 20).unwrap(), src.get(k, 1 << 20).unwrap());
        }
        let c = Copy::open(&src, &dst, options(dir.path())).unwrap();
        assert!(c.snapshot(&id).unwrap().already);
    }

    #[test]
    fn a_blob_purged_before_the_manifest_is_checked_withdraws_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (src, id, blobs) = source(dir.path());
        let dst = Purged {
            inner: LocalStore::open(&dir.path().join("dst"), true).unwrap(),
            victim: blobs[1].clone(),
        };
        let c = Copy::open(&src, &dst, options(dir.path())).unwrap();
        let e = c.snapshot(&id).unwrap_err();
        assert!(matches!(&e, Error::BlobsVanished { missing: 1, .. }), "{e}");
        assert_eq!(dst.head(&layout::manifest(&id)).unwrap(), None);
        assert_eq!(dst.head(&layout::metadata(&id)).unwrap(), None);
    }
}
