//! The local index made again from the snapshots in the store (`index
//! rebuild`, `restore --rebuild-index`), after it was lost: without it the
//! next backup would upload everything again. Needs the private key (the
//! chunk locations are in the snapshots' encrypted metadata).
//!
//! What the index gets, and why it can be trusted as far as it goes:
//! - blobs: only those the store lists, with the size it lists, and not
//!   marked for deletion by a purge (as `snapshot create` checks before
//!   every run): a chunk is only recorded in a blob confirmed stored;
//! - chunks: from each snapshot's `chunks` table, each a 32-byte id in
//!   one of those blobs, of a plausible size, lying within the blob;
//!   anything else is left out (counted, said);
//! - files: nothing. A snapshot holds no ctime, inode or device, so no
//!   row could tell a changed file from an unchanged one: the next
//!   backup reads every file once and uploads only what changed;
//! - blob locks (`[s3] object_lock`): a blob is recorded as locked only
//!   when the store says its current version is locked, until when, and
//!   that its stored SHA-256 is the one its key names (the version
//!   vaultik wrote); the others are uploaded again, locked, as after
//!   `object_lock` is first set.
//!
//! A snapshot's metadata is as hostile as anything else in the store
//! (anyone with the public key can seal one): it is read through
//! `metadata` (bounded, hardened), its paths are never used, and a
//! snapshot whose metadata cannot be read is left out with a warning (the
//! one before it of the same name is read instead; and read too after one
//! that names chunks the store does not have). What cannot be
//! checked without reading every blob is whether a chunk really is where
//! a snapshot says: the snapshots made after a rebuild are checked by
//! `snapshot verify --deep` like any other.
//!
//! The new index is written into a private scratch directory beside the
//! old place (`scratch`), under the run lock of `snapshot create` (`lock`),
//! and renamed into place once complete: a crash leaves the old index or
//! none, never half of one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use age::x25519;
use rusqlite::OptionalExtension;

use crate::blob::Location;
use crate::chunk::ChunkId;
use crate::error::{DbContext, Error, IoContext, Result};
use crate::index::Index;
use crate::layout;
use crate::lock::RunLock;
use crate::manifest::{self, Narrow};
use crate::metadata::{self, Metadata};
use crate::scratch::PrivateDir;
use crate::store::Store;

/// Older snapshots of a name tried, at most, when the newest cannot be
/// read (a forger can add snapshots without end: each costs a GET).
pub const FALLBACKS: usize = 3;

pub struct Rebuild<'a> {
    pub store: &'a dyn Store,
    pub identities: &'a [x25519::Identity],
    pub index_path: &'a Path,
    /// Whose snapshots: a host (required) and perhaps one name.
    pub narrow: Narrow,
    /// Every snapshot of them, not only the latest of each name.
    pub all: bool,
    /// Replace an index that already knows this store.
    pub force: bool,
    /// `[s3] object_lock` is set (see the module doc).
    pub object_lock: bool,
    /// The recipient set the config's `age_recipient`s make
    /// (`keys::set_fingerprint`), when there is a config: a snapshot that
    /// says it was sealed to another set is left out (a backup may not
    /// reuse its blobs), and the index is of that set. None: every
    /// snapshot is read, and the first backup takes the index to be of the
    /// set it is configured with.
    pub sealed_to: Option<String>,
    pub warn: &'a dyn Fn(&str),
}

/// What a rebuild did.
#[derive(Debug, Default)]
pub struct Report {
    pub path: PathBuf,
    /// The snapshots read, and those left out because their metadata could
    /// not be read (each named in a warning).
    pub snapshots: Vec<String>,
    pub damaged: Vec<String>,
    pub blobs: u64,
    pub blob_bytes: u64,
    pub chunks: u64,
    /// Plaintext bytes of the chunks recorded.
    pub chunk_bytes: u64,
    /// Chunk rows left out (not in a blob of the store, or not within it).
    pub left_out: u64,
    /// Blobs recorded as locked (object_lock).
    pub locked: u64,
    pub seconds: f64,
}

/// How a rebuild ended.
#[derive(Debug)]
pub enum Outcome {
    Rebuilt(Report),
    /// An index that knows this store was there, and `force` was not
    /// given: left as it was (its blobs and files).
    Kept {
        blobs: u64,
        files: u64,
    },
}

/// What failed while a snapshot was read into the index: the snapshot
/// (left out), or the run (the index, the store, the key).
enum Failed {
    Snapshot(Error),
    Run(Error),
    /// Sealed to another recipient set than the config's.
    OtherSet,
}

/// An error of the run's own (the index being written).
impl From<Error> for Failed {
    fn from(e: Error) -> Failed {
        Failed::Run(e)
    }
}

impl Rebuild<'_> {
    pub fn run(&self) -> Result<Outcome> {
        let started = Instant::now();
        let path = self.index_path;
        let state = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::blob::private_dir(state)?;
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::Setup(format!(
                    "{} is a symlink: an index is never written through one, nor is one \
                     replaced; remove it, or give --index PATH",
                    path.display()
                )));
            }
            Ok(m) if !m.is_file() => {
                return Err(Error::Setup(format!(
                    "{} is not a file: not replaced by an index",
                    path.display()
                )));
            }
            _ => {}
        }
        let _lock = RunLock::acquire(path)?;
        let identity = crate::store::identity::read(self.store)?.ok_or_else(|| {
            Error::Setup(format!(
                "{} names no store identity: nothing was ever backed up to it, so there is no \
                 index to rebuild",
                self.store.describe()
            ))
        })?;
        if let Some((of, blobs, files)) = Index::peek(path) {
            let ours = of == identity.id || of == self.store.describe();
            if ours && (blobs > 0 || files > 0) && !self.force {
                return Ok(Outcome::Kept { blobs, files });
            }
        }
        let chosen = self.candidates()?;
        // The store's blobs, as a backup sees them before it runs.
        let marked = crate::gc::marked_blobs(self.store)?;
        let present: HashMap<String, u64> = self
            .store
            .list(layout::BLOBS)?
            .objects
            .into_iter()
            .filter(|o| !marked.contains(&o.key))
            .map(|o| (o.key, o.size))
            .collect();
        let mut scratch = PrivateDir::new(state)?;
        let (new_path, file) = scratch.file("index.sqlite")?;
        drop(file);
        let mut index = Index::create_new(&new_path, &identity.id)?;
        if let Some(f) = &self.sealed_to {
            index.seal_to(f)?;
        }
        let mut report = Report {
            path: path.to_path_buf(),
            ..Report::default()
        };
        for group in &chosen {
            for id in group {
                match self.read_one(&index, id, &present, state) {
                    Ok(left_out) => {
                        report.left_out += left_out;
                        report.snapshots.push(id.clone());
                        // One that names chunks the store does not have
                        // (forged, or its blobs purged) is not the whole
                        // picture: the one before it is read too.
                        if !self.all && left_out == 0 {
                            break;
                        }
                    }
                    Err(Failed::Run(e)) => return Err(e),
                    Err(Failed::OtherSet) => {
                        (self.warn)(&format!(
                            "snapshot {id} left out of the index: it is sealed to other \
                             recipients than the config's age_recipient (a backup does not \
                             reuse its blobs)"
                        ));
                    }
                    Err(Failed::Snapshot(e)) => {
                        (self.warn)(&format!("snapshot {id} left out of the index: {e}"));
                        report.damaged.push(id.clone());
                    }
                }
            }
        }
        if report.snapshots.is_empty() {
            return Err(Error::Setup(format!(
                "no snapshot {} could be read (see the warnings): the index was not rebuilt",
                self.describe()
            )));
        }
        if self.object_lock {
            report.locked = self.record_locks(&mut index)?;
        }
        (
            report.blobs,
            report.blob_bytes,
            report.chunks,
            report.chunk_bytes,
        ) = index.totals()?;
        index.close()?;
        install(&new_path, path)?;
        drop(scratch);
        // Metadata kept for scoped runs belongs to the index it was made
        // with (as when an index is started afresh).
        if let Ok(rd) = std::fs::read_dir(state.join("last")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(Outcome::Rebuilt(report))
    }

    /// `of host H, name N`, for messages.
    fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(h) = &self.narrow.host {
            s.push_str(&format!("of host {h}"));
        }
        if let Some(n) = &self.narrow.name {
            s.push_str(&format!(", named {n}"));
        }
        crate::error::one_line(s)
    }

    /// The snapshots to read, a group per name: with `all`, every one;
    /// else the newest first, and `FALLBACKS` before it in case it cannot
    /// be read. Never one dated ahead of the store's clock (as `latest`).
    fn candidates(&self) -> Result<Vec<Vec<String>>> {
        let mut by_name: HashMap<String, Vec<String>> = HashMap::new();
        for l in manifest::list(self.store)?.into_iter().rev() {
            if l.dated_ahead() || !self.narrow.admits(&l.id) {
                continue;
            }
            let Some(p) = layout::parse_id(&l.id) else {
                continue;
            };
            let group = by_name.entry(p.name.to_string()).or_default();
            if self.all || group.len() <= FALLBACKS {
                group.push(l.id.clone());
            }
        }
        if by_name.is_empty() {
            return Err(Error::Setup(format!(
                "the store has no snapshot {}: nothing to rebuild the index from (give --host \
                 HOST for another host's)",
                self.describe()
            )));
        }
        let mut groups: Vec<(String, Vec<String>)> = by_name.into_iter().collect();
        groups.sort();
        Ok(groups.into_iter().map(|(_, g)| g).collect())
    }

    /// Read snapshot `id` into `index`, in one transaction (all of it or
    /// none): how many chunk rows were left out.
    fn read_one(
        &self,
        index: &Index,
        id: &str,
        present: &HashMap<String, u64>,
        state: &Path,
    ) -> std::result::Result<u64, Failed> {
        let m = match metadata::open(self.store, id, self.identities, state, &[]) {
            Ok(m) => m,
            // A key that does not match, or a store that fails: the run.
            Err(e @ (Error::Key(_) | Error::Store { .. } | Error::Io { .. })) => {
                return Err(Failed::Run(e));
            }
            Err(e) => return Err(Failed::Snapshot(e)),
        };
        if let Some(want) = &self.sealed_to {
            // A snapshot written before sets were recorded says nothing,
            // and is taken to be of the config's set.
            let said: Option<String> = m
                .query_row(
                    "SELECT value FROM info WHERE key = 'sealed_to' AND length(value) = 64",
                    [],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| Failed::Snapshot(m.explain(Error::corrupt(id, e))))?;
            if said.is_some_and(|s| s != *want) {
                return Err(Failed::OtherSet);
            }
        }
        let left_out = index.in_transaction(|idx| fill(idx, &m, present))?;
        if left_out > 0 {
            (self.warn)(&format!(
                "snapshot {id}: {left_out} chunk(s) left out of the index: their blobs are not \
                 in the store with the size it lists, or they do not lie within them (the next \
                 backup uploads their data again if it needs it)"
            ));
        }
        Ok(left_out)
    }

    /// Under Object Lock, record as locked the blobs whose current version
    /// the store says is locked past now and is the one vaultik wrote (its
    /// stored SHA-256 is the one its key names): how many.
    fn record_locks(&self, index: &mut Index) -> Result<u64> {
        let keys = index.blob_keys()?;
        let now = crate::time::now();
        let seen = crate::store::parallel(&keys, |k| self.store.stat(k, true));
        let mut locked = 0;
        for (k, meta) in keys.iter().zip(seen) {
            let Some(meta) = meta? else { continue };
            let named = match layout::parse(k) {
                Some(layout::Key::Blob(hash)) => hash,
                _ => continue,
            };
            match meta.locked_until {
                Some(until) if until > now && meta.sha256 == Some(named) => {
                    index.set_locked_until(
                        std::slice::from_ref(k),
                        until,
                        meta.version.as_deref(),
                    )?;
                    locked += 1;
                }
                _ => {}
            }
        }
        Ok(locked)
    }
}

/// Read one snapshot's blobs and chunks into `idx`: how many chunk rows
/// were left out. Errors of the metadata are the snapshot's; of the index,
/// the run's.
fn fill(
    idx: &Index,
    m: &Metadata,
    present: &HashMap<String, u64>,
) -> std::result::Result<u64, Failed> {
    let bad = |e: Error| Failed::Snapshot(m.explain(e));
    let mpath = Path::new("snapshot metadata");
    // The snapshot's blob ids: the index's id and the blob's size, or None
    // for one that is not in the store as listed.
    let mut blobs: HashMap<i64, Option<(i64, u64)>> = HashMap::new();
    {
        let mut st = m
            .prepare("SELECT id, key, size FROM main.blobs")
            .db(mpath)
            .map_err(bad)?;
        let mut rows = st.query([]).db(mpath).map_err(bad)?;
        while let Some(r) = rows.next().db(mpath).map_err(bad)? {
            let (Ok(id), Ok(key), Ok(size)) = (
                r.get_ref(0).and_then(|v| Ok(v.as_i64()?)),
                r.get_ref(1).and_then(|v| Ok(v.as_str()?)),
                r.get_ref(2).and_then(|v| Ok(v.as_i64()?)),
            ) else {
                continue;
            };
            let listed = u64::try_from(size)
                .ok()
                .filter(|s| layout::is_blob(key) && present.get(key) == Some(s));
            let at = match listed {
                Some(size) => Some((idx.insert_blob(key, size)?, size)),
                None => None,
            };
            blobs.insert(id, at);
        }
    }
    let mut left_out = 0u64;
    let mut st = m
        .prepare("SELECT id, blob, offset, length, size FROM main.chunks")
        .db(mpath)
        .map_err(bad)?;
    let mut rows = st.query([]).db(mpath).map_err(bad)?;
    while let Some(r) = rows.next().db(mpath).map_err(bad)? {
        let row = (|| -> rusqlite::Result<Option<(ChunkId, i64, Location)>> {
            let Some(id) = ChunkId::from_slice(r.get_ref(0)?.as_blob()?) else {
                return Ok(None);
            };
            let n = |i: usize| -> rusqlite::Result<Option<u64>> {
                Ok(u64::try_from(r.get_ref(i)?.as_i64()?).ok())
            };
            let (Some(offset), Some(length), Some(size)) = (n(2)?, n(3)?, n(4)?) else {
                return Ok(None);
            };
            let blob = r.get_ref(1)?.as_i64()?;
            Ok(Some((
                id,
                blob,
                Location {
                    offset,
                    length,
                    size,
                },
            )))
        })();
        let Ok(Some((id, blob, loc))) = row else {
            left_out += 1;
            continue;
        };
        let Some(Some((at, blob_size))) = blobs.get(&blob).copied() else {
            left_out += 1;
            continue;
        };
        if !loc.plausible_within(blob_size) {
            left_out += 1;
            continue;
        }
        idx.insert_chunk(&id, at, &loc)?;
    }
    Ok(left_out)
}

/// Put the index built at `new` in the place of `path`: on disk first,
/// then the old index's write-ahead log and shared memory removed (SQLite
/// would replay a stale log into the new file), then renamed over it (a
/// symlink there was refused before; a rename never follows one).
fn install(new: &Path, path: &Path) -> Result<()> {
    std::fs::File::open(new)
        .and_then(|f| f.sync_all())
        .at("sync", new)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        match std::fs::remove_file(&side) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).at("remove", Path::new(&side)),
        }
    }
    std::fs::rename(new, path).at("rename into place", path)?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .at("sync", dir)?;
    }
    Ok(())
}
