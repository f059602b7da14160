//! The backup pipeline for one snapshot:
//!
//! walk (this thread) -> unchanged files reuse their chunk list from the index
//! -> changed files are chunked, hashed and compressed in parallel (rayon)
//! -> new chunks go through a bounded channel to one packer thread that
//! writes the current blob -> finished blobs go through a bounded channel to
//! uploader threads -> once an upload is confirmed, this thread records the
//! blob's chunks in the index -> at the end the metadata database and then
//! the manifest are uploaded. A snapshot exists only once its manifest does.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use age::x25519;
use rayon::prelude::*;
use rustix::fs::{FileType, Stat};

use crate::blob::{BlobWriter, FinishedBlob, Location};
use crate::chunk::{self, ChunkId, Params};
use crate::config::SnapshotConfig;
use crate::error::{Error, IoContext, Result};
use crate::index::{FileStat, Index};
use crate::layout;
use crate::manifest::{self, Manifest};
use crate::snapshot::{self, Entry, Kind, MetaWriter};
use crate::store::Store;
use crate::walk::{self, Excludes};

/// Uploads in flight at once; each holds one finished blob on disk.
const UPLOADERS: usize = 2;

pub struct Backup<'a> {
    pub store: &'a dyn Store,
    pub index: Mutex<Index>,
    pub recipients: Vec<x25519::Recipient>,
    pub hostname: String,
    /// Mode-0700 directory for encrypted temporary files and the metadata
    /// database being built.
    pub tmp_dir: PathBuf,
    pub params: Params,
    pub level: i32,
    pub blob_limit: u64,
    pub global_excludes: Vec<String>,
    pub skip_errors: bool,
    /// Called with each warning (skipped or changing files).
    pub warn: &'a (dyn Fn(&str) + Sync),
    /// Show a progress line on stderr (only when it is a terminal).
    pub progress: bool,
    /// Where the metadata database of each name's last snapshot is kept,
    /// as the base of incremental (scoped) runs and to tell "unchanged".
    pub last_dir: PathBuf,
    /// Set from outside (a daemon being stopped) to abandon the run cleanly.
    pub abort: Option<&'a AtomicBool>,
    /// New chunks on their way to the store in this run (dropped once their
    /// blob is recorded in the index, so this stays small).
    pub pending: Mutex<HashSet<ChunkId>>,
}

/// Which part of a snapshot's paths a run walks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scope<'a> {
    /// Everything.
    Full,
    /// Only these subtrees; the rest is carried over from the last snapshot
    /// of the same name (a full walk when there is none).
    Dirty(&'a [PathBuf]),
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub id: String,
    pub entries: u64,
    pub files: u64,
    pub bytes_scanned: u64,
    pub files_read: u64,
    pub bytes_read: u64,
    pub new_chunks: u64,
    pub new_bytes: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Files left out because they could not be read (exit code 1).
    pub skipped: u64,
    /// Everything reported as a warning (skipped files, files that changed
    /// while being read).
    pub warnings: u64,
    /// Nothing differed from the last snapshot, so none was made
    /// (only when asked to skip unchanged snapshots).
    pub unchanged: bool,
    /// Entries carried over from the last snapshot without a walk.
    pub carried: u64,
    pub seconds: f64,
}

/// A changed file to read.
struct Todo {
    entry: i64,
    path: PathBuf,
    stat: FileStat,
}

struct NewChunk {
    id: ChunkId,
    frame: Vec<u8>,
    size: u64,
}

enum Event {
    FileDone {
        todo: Todo,
        read: u64,
        chunks: Vec<u8>,
        changed: bool,
    },
    FileSkipped {
        entry: i64,
        msg: String,
    },
    /// Deleted between the walk and its read: not an error, not in the
    /// snapshot.
    FileVanished {
        entry: i64,
        path: PathBuf,
    },
    /// Replaced between the walk and its read (by a symlink, a FIFO,
    /// another file...): treated like a file deleted meanwhile, since what
    /// is at the path now is not what the walk recorded there (owner, mode,
    /// size), and may be someone else's. Not an error, not in the snapshot;
    /// the next run finds what is there then.
    FileReplaced {
        entry: i64,
        path: PathBuf,
        now: &'static str,
    },
    BlobStored {
        key: String,
        size: u64,
        entries: Vec<(ChunkId, Location)>,
    },
}

fn stat_of(st: &Stat) -> FileStat {
    let (dev, ino) = walk::dev_ino(st);
    FileStat {
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
        ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec as i64,
        ino,
        dev,
    }
}

/// The warning for an entry replaced between its stat and its read.
fn replaced_warning(path: &Path, now: &str, dir: bool) -> String {
    let what = if dir {
        "its contents are not in this snapshot"
    } else {
        "not in this snapshot"
    };
    format!(
        "{}: replaced during the backup (now {now}); {what}",
        path.display()
    )
}

/// zstd level for the metadata database: it is a small part of the bucket,
/// and compressing it is on the critical path of every run (level 1: 30 ms
/// for 50k entries where level 3 takes 50 ms, for 3% more bytes).
const METADATA_LEVEL: i32 = 1;

/// Compressed chunks queued for the packer, at most.
const CHUNK_QUEUE_BYTES: u64 = 16 << 20;

/// A count of bytes in flight, shared by the workers (who take) and the
/// packer (who gives back); closed when the packer stops.
struct Budget {
    state: Mutex<(u64, bool)>,
    changed: std::sync::Condvar,
    limit: u64,
}

impl Budget {
    fn new(limit: u64) -> Budget {
        Budget {
            state: Mutex::new((0, false)),
            changed: std::sync::Condvar::new(),
            limit,
        }
    }

    /// Wait until `n` more bytes fit (one item always fits when nothing is
    /// queued); `Cancelled` once the packer has stopped.
    fn take(&self, n: u64) -> Result<()> {
        let mut s = self.state.lock().expect("budget lock poisoned by a panic");
        while !s.1 && s.0 > 0 && s.0 + n > self.limit {
            s = self
                .changed
                .wait(s)
                .expect("budget lock poisoned by a panic");
        }
        if s.1 {
            return Err(Error::Cancelled);
        }
        s.0 += n;
        Ok(())
    }

    fn give_back(&self, n: u64) {
        let mut s = self.state.lock().expect("budget lock poisoned by a panic");
        s.0 = s.0.saturating_sub(n);
        self.changed.notify_all();
    }

    fn close(&self) {
        let mut s = self.state.lock().expect("budget lock poisoned by a panic");
        s.1 = true;
        self.changed.notify_all();
    }
}

/// Chunk locations handed from the index to the metadata at a time, and
/// batches of them queued.
const LOCATE_BATCH: usize = 2048;
const LOCATE_BATCHES: usize = 4;

/// Entries handed from the walk thread at a time.
const WALK_BATCH: usize = 256;
/// Batches of files to read (up to `WALK_BATCH` each) queued for the
/// readers while the walk goes on.
const TODO_BATCHES: usize = 4;

/// What the walk thread found.
enum Walked {
    /// An entry, its stat and, for a file the index knows unchanged, the
    /// chunk list to reuse (looked up on the walk thread).
    Entry(Entry, FileStat, Option<Vec<u8>>),
    Failed(walk::WalkError),
    Replaced(walk::Replaced),
}

/// The entry for a walked path, its stat and (a symlink's) target.
fn entry_of(path: PathBuf, st: &Stat, target: Option<Vec<u8>>) -> Option<Entry> {
    let kind = match walk::kind(st) {
        FileType::Directory => Kind::Dir,
        FileType::RegularFile => Kind::File,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::CharacterDevice => Kind::CharDev,
        FileType::BlockDevice => Kind::BlockDev,
        FileType::Socket => Kind::Socket,
        FileType::Unknown => return None,
    };
    let stat = stat_of(st);
    Some(Entry {
        path: std::os::unix::ffi::OsStringExt::into_vec(path.into_os_string()),
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: if kind == Kind::File { stat.size } else { 0 },
        mtime_ns: stat.mtime_ns,
        rdev: st.st_rdev,
        target: if kind == Kind::Symlink { target } else { None },
        link: None,
    })
}

impl Backup<'_> {
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().expect("index lock poisoned by a panic")
    }

    fn aborted(&self) -> bool {
        self.abort.is_some_and(|a| a.load(Ordering::Relaxed))
    }

    /// Is the snapshot recorded in the kept metadata `last` still in the
    /// store? (It may have been removed, and then nothing stands for now.)
    fn last_still_stored(&self, last: &Path) -> Result<bool> {
        match snapshot::stored_info(last, "id") {
            Some(id) => Ok(self.store.head(&layout::manifest(&id))?.is_some()),
            None => Ok(false),
        }
    }

    fn last_path(&self, name: &str) -> PathBuf {
        self.last_dir.join(format!("{name}.sqlite"))
    }

    /// Back up one snapshot. If blobs it reuses vanish while it runs (a
    /// purge on another host), the snapshot is withdrawn and made again.
    /// With `skip_unchanged`, no snapshot is published when nothing differs
    /// from the last one of the same name.
    pub fn run(
        &self,
        snap: &SnapshotConfig,
        scope: Scope<'_>,
        skip_unchanged: bool,
    ) -> Result<Summary> {
        let mut attempt = 1;
        let mut scope = scope;
        loop {
            match self.run_once(snap, scope, skip_unchanged) {
                Err(Error::StaleBase) => {
                    // The last snapshot names chunks that are gone: walk everything.
                    scope = Scope::Full;
                }
                Err(Error::BlobsVanished { id, missing }) if attempt < 3 => {
                    (self.warn)(&format!(
                        "{missing} blob(s) were deleted from the store while snapshot {id} was made \
                         (a purge elsewhere?); making it again"
                    ));
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    fn run_once(
        &self,
        snap: &SnapshotConfig,
        scope: Scope<'_>,
        skip_unchanged: bool,
    ) -> Result<Summary> {
        let started = Instant::now();
        // Ids have one-second resolution. A run within the same second as
        // an earlier one gets a `.N` suffix, one past the highest stored
        // (a purged id is never reused: ids must grow, `latest` is the
        // highest), which sorts after the plain id and before the next
        // second. Past `.9`, wait for the next second.
        let (id, time) = loop {
            let time = crate::time::now();
            let base = layout::make_id(&self.hostname, &snap.name, time);
            match manifest::next_free_id(self.store, &base)? {
                Some(id) => break (id, time),
                None => std::thread::sleep(std::time::Duration::from_millis(250)),
            }
        };
        let meta_path = self.tmp_dir.join(format!("{id}.sqlite"));
        let result = self.run_inner(snap, &id, time, &meta_path, scope, skip_unchanged);
        if result.as_ref().is_ok_and(|s| !s.unchanged) {
            // Keep it as the base of the next incremental run.
            let last = self.last_path(&snap.name);
            if std::fs::rename(&meta_path, &last).is_err() {
                let _ = std::fs::remove_file(&last);
            }
        }
        let _ = std::fs::remove_file(&meta_path);
        let mut summary = result?;
        summary.seconds = started.elapsed().as_secs_f64();
        Ok(summary)
    }

    fn run_inner(
        &self,
        snap: &SnapshotConfig,
        id: &str,
        time: u64,
        meta_path: &Path,
        scope: Scope<'_>,
        skip_unchanged: bool,
    ) -> Result<Summary> {
        let started_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let meta = MetaWriter::create(meta_path)?;
        let last = self.last_path(&snap.name);
        let mut s = Summary {
            id: id.to_string(),
            ..Summary::default()
        };
        // Incremental: keep what lies outside the dirty subtrees.
        let walk_roots: Vec<PathBuf> = match scope {
            Scope::Dirty(dirty) if last.is_file() => {
                let (n, files, bytes) = meta.carry_over(&last, dirty)?;
                s.carried = n;
                s.entries += n;
                s.files += files;
                s.bytes_scanned += bytes;
                let missing = {
                    let index = self.index();
                    meta.missing_chunks(|c| index.has_chunk(c))?
                };
                if missing > 0 {
                    return Err(Error::StaleBase);
                }
                dirty.to_vec()
            }
            _ => snap.paths.clone(),
        };
        meta.begin()?;
        meta.set_info("format", &snapshot::FORMAT_VERSION.to_string())?;
        meta.set_info("id", id)?;
        meta.set_info("hostname", &self.hostname)?;
        meta.set_info("name", &snap.name)?;
        meta.set_info("time", &time.to_string())?;

        // 1+2. Walk on this thread, reusing the chunk lists of unchanged
        // files, while changed files are read, packed and uploaded by the
        // pipeline threads; their results are recorded here as they come.
        let excludes = Excludes::new(self.global_excludes.iter().chain(&snap.exclude))?;
        // Files and their results travel in batches (one per batch of walked
        // entries): one wakeup per batch instead of two per file.
        let (todo_tx, todo_rx) = sync_channel::<Vec<Todo>>(TODO_BATCHES);
        let (ev_tx, ev_rx) = channel::<Vec<Event>>();
        let cancel = AtomicBool::new(false);
        let progress = Progress::default();
        let scoped = scope != Scope::Full;
        std::thread::scope(|threads| -> Result<()> {
            let pipe = {
                let (cancel, progress) = (&cancel, &progress);
                threads.spawn(move || {
                    let r = self.pipeline(todo_rx, ev_tx, cancel, progress);
                    if r.is_err() {
                        cancel.store(true, Ordering::Relaxed);
                    }
                    r
                })
            };
            let walked = self.walk_roots(
                &walk_roots,
                &snap.paths,
                scoped,
                &excludes,
                &meta,
                &todo_tx,
                &ev_rx,
                &cancel,
                &progress,
                &mut s,
            );
            drop(todo_tx);
            progress.walk_done.store(true, Ordering::Relaxed);
            let recorded = walked.and_then(|()| {
                for ev in ev_rx.iter().flatten() {
                    self.record(ev, &meta, &mut s)?;
                }
                Ok(())
            });
            if recorded.is_err() {
                cancel.store(true, Ordering::Relaxed);
            }
            drop(ev_rx);
            first_error(vec![recorded, join(pipe)])
        })?;

        // 3. Everything referenced is in the store: remember the files
        // (not those changed too shortly before the run to trust their stat).
        self.index().store_files(&mut |put| {
            meta.each_file(&mut |path, stat, chunks| {
                if stat.racy(started_ns) {
                    Ok(())
                } else {
                    put(path, stat, chunks)
                }
            })
        })?;
        meta.drop_files()?;

        // 4. Nothing changed? Then there is nothing to publish. Only a run
        // that may skip an unchanged snapshot (the daemon) spends the time
        // on the digest (metadata); it is recorded, for the next run to
        // compare with.
        // 5. Metadata, then the manifest that makes the snapshot visible.
        // The chunk table is written as the index locates the chunks, on
        // another thread.
        let ids = meta.chunk_ids()?;
        let index_path = self.index().path().to_path_buf();
        let (tx, rx) = sync_channel::<crate::index::Located>(LOCATE_BATCHES);
        let (written, located) = std::thread::scope(|t| {
            let ids = &ids;
            let locating = t.spawn(move || {
                self.index().locate(ids, LOCATE_BATCH, &mut |found| {
                    tx.send(found).map_err(|_| Error::Cancelled)
                })
            });
            let (meta, last) = (&meta, &last);
            // Takes `rx`, dropped on return: a locating side still sending stops.
            let written = (move || -> Result<Option<Vec<(String, u64)>>> {
                if skip_unchanged {
                    let digest = meta.digest()?;
                    if snapshot::stored_digest(last).as_deref() == Some(digest.as_str())
                        && self.last_still_stored(last)?
                    {
                        return Ok(None);
                    }
                    meta.set_info("digest", &digest)?;
                }
                if self.aborted() {
                    return Err(Error::Cancelled);
                }
                meta.write_chunks(ids, rx, &index_path).map(Some)
            })();
            (written, join(locating))
        });
        let blobs = match (written, located) {
            (Ok(Some(blobs)), _) => blobs,
            (Ok(None), _) => {
                s.unchanged = true;
                return Ok(s);
            }
            // The table ended early: why is the locating side's to say.
            (Err(Error::Cancelled), Err(e)) => return Err(e),
            (Err(e), _) => return Err(e),
        };
        let sealed = meta.seal(&self.tmp_dir, &self.recipients, METADATA_LEVEL)?;
        self.store
            .put_file(&layout::metadata(id), sealed.temp.path())?;
        let manifest = Manifest {
            id: id.to_string(),
            hostname: self.hostname.clone(),
            name: snap.name.clone(),
            time,
            blobs,
            metadata_size: sealed.size,
            stored: 0,
        };
        self.store
            .put_bytes(&layout::manifest(id), &manifest.to_bytes()?)?;

        // A purge elsewhere may have deleted an old blob this snapshot
        // reuses before it was published: check, and withdraw it if so.
        let present: HashMap<String, u64> = self
            .store
            .list(layout::BLOBS)?
            .objects
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        let missing = manifest
            .blobs
            .iter()
            .filter(|(k, size)| present.get(k) != Some(size))
            .count();
        if missing > 0 {
            crate::gc::remove_snapshots(self.store, &[id])?;
            let mut keys: Vec<String> = present.into_keys().collect();
            keys.sort();
            self.index().forget_missing_blobs(&keys)?;
            return Err(Error::BlobsVanished {
                id: id.to_string(),
                missing,
            });
        }
        Ok(s)
    }

    /// Walk `roots` (the configured `paths`, or subtrees of them), adding
    /// entries to `meta`; changed files go to `todo`. Pipeline events are
    /// recorded between entries, so nothing piles up.
    #[allow(clippy::too_many_arguments)]
    fn walk_roots(
        &self,
        roots: &[PathBuf],
        paths: &[PathBuf],
        scoped: bool,
        excludes: &Excludes,
        meta: &MetaWriter,
        todo: &SyncSender<Vec<Todo>>,
        events: &Receiver<Vec<Event>>,
        cancel: &AtomicBool,
        progress: &Progress,
        s: &mut Summary,
    ) -> Result<()> {
        // A root inside another root is walked with it, not twice.
        let mut kept: Vec<&PathBuf> = Vec::new();
        let mut sorted: Vec<&PathBuf> = roots.iter().collect();
        sorted.sort_by_key(|p| p.as_os_str().len());
        for r in sorted {
            if !kept.iter().any(|k| r.starts_with(k)) {
                kept.push(r);
            }
        }
        let mut walk_warnings = 0u64;
        // The walk (directory reads, stat, readlink) runs on its own thread
        // and hands entries over in batches; this thread writes the
        // metadata.
        let (wtx, walked) = sync_channel::<Vec<Walked>>(8);
        let (ltx, wrx) = sync_channel::<Vec<Walked>>(8);
        let result = std::thread::scope(|threads| -> Result<()> {
            // Between the two, a third thread finds the chunk lists of
            // unchanged files in the index: the walk alone (stat) keeps a
            // core busy, the metadata writes most of the other.
            let looker = threads.spawn(move || -> Result<()> {
                for mut batch in walked {
                    self.look_up(&mut batch)?;
                    ltx.send(batch).map_err(|_| Error::Cancelled)?;
                }
                Ok(())
            });
            let walker = threads.spawn(move || -> Result<()> {
                let batch = std::cell::RefCell::new(Vec::with_capacity(WALK_BATCH));
                let push = |w: Walked| -> Result<()> {
                    let mut b = batch.borrow_mut();
                    b.push(w);
                    if b.len() >= WALK_BATCH {
                        let full = std::mem::replace(&mut *b, Vec::with_capacity(WALK_BATCH));
                        wtx.send(full).map_err(|_| Error::Cancelled)?;
                    }
                    Ok(())
                };
                // Files with more than one link: (device, inode) -> the
                // path first seen, which later links point at.
                let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
                for root in roots.iter().filter(|r| kept.contains(r)) {
                    // A dirty subtree that is gone now simply has no entries.
                    if scoped && std::fs::symlink_metadata(root).is_err() {
                        continue;
                    }
                    // Reached from the configured path that holds it, the one
                    // a full walk goes through (the shortest).
                    let base = paths
                        .iter()
                        .filter(|p| root.starts_with(p))
                        .min_by_key(|p| p.as_os_str().len())
                        .unwrap_or(root);
                    let mut visit =
                        |path: PathBuf, st: &Stat, target: Option<Vec<u8>>| -> Result<()> {
                            if cancel.load(Ordering::Relaxed) {
                                return Err(Error::Cancelled);
                            }
                            match entry_of(path, st, target) {
                                Some(mut e) => {
                                    if e.kind == Kind::File && st.st_nlink > 1 {
                                        let inode = walk::dev_ino(st);
                                        match links.get(&inode) {
                                            Some(first) => e.link = Some(first.clone()),
                                            None => {
                                                links.insert(inode, e.path.clone());
                                            }
                                        }
                                    }
                                    push(Walked::Entry(e, stat_of(st), None))
                                }
                                None => Ok(()),
                            }
                        };
                    let mut failed = |w: walk::WalkError| push(Walked::Failed(w));
                    let mut replaced = |r: walk::Replaced| push(Walked::Replaced(r));
                    walk::walk(root, base, excludes, &mut visit, &mut failed, &mut replaced)?;
                }
                let rest = batch.into_inner();
                if !rest.is_empty() {
                    wtx.send(rest).map_err(|_| Error::Cancelled)?;
                }
                Ok(())
            });
            let recorded = (|| -> Result<()> {
                for batch in wrx.iter() {
                    if cancel.load(Ordering::Relaxed) || self.aborted() {
                        return Err(Error::Cancelled);
                    }
                    while let Ok(evs) = events.try_recv() {
                        for ev in evs {
                            self.record(ev, meta, s)?;
                        }
                    }
                    self.note_batch(batch, meta, todo, progress, s, &mut walk_warnings)?;
                }
                Ok(())
            })();
            // Unblock the walker if we stopped early.
            drop(wrx);
            first_error(vec![recorded, join(looker), join(walker)])
        });
        s.warnings += walk_warnings;
        s.skipped += walk_warnings;
        result
    }

    /// Record one batch of walked entries.
    fn note_batch(
        &self,
        batch: Vec<Walked>,
        meta: &MetaWriter,
        todo: &SyncSender<Vec<Todo>>,
        progress: &Progress,
        s: &mut Summary,
        walk_warnings: &mut u64,
    ) -> Result<()> {
        let mut files = Vec::new();
        for w in batch {
            match w {
                Walked::Entry(e, stat, reuse) => {
                    self.note_entry(e, stat, reuse, meta, &mut files, progress, s)?
                }
                Walked::Failed(w) if self.skip_errors => {
                    *walk_warnings += 1;
                    (self.warn)(&format!("skipped {}: {}", w.path.display(), w.err));
                }
                Walked::Failed(w) => {
                    return Err(Error::Io {
                        op: "read",
                        path: w.path,
                        source: w.err,
                    });
                }
                Walked::Replaced(r) => {
                    s.warnings += 1;
                    (self.warn)(&replaced_warning(&r.path, r.now, r.dir));
                }
            }
        }
        if !files.is_empty() {
            todo.send(files).map_err(|_| Error::Cancelled)?;
        }
        Ok(())
    }

    /// Find the chunk lists of the files in `batch` that the index knows
    /// unchanged, in one read transaction.
    fn look_up(&self, batch: &mut [Walked]) -> Result<()> {
        self.index().read_batch(|index| {
            for w in batch.iter_mut() {
                if let Walked::Entry(e, stat, reuse) = w {
                    // The index only keeps file rows whose chunks it holds
                    // (forgetting a blob forgets the files), so this is safe.
                    if e.kind == Kind::File && stat.size > 0 {
                        *reuse = index.unchanged_file(&e.path, stat)?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Add one walked entry to the metadata; a file the index does not know
    /// unchanged goes to `files`, for the pipeline.
    #[allow(clippy::too_many_arguments)]
    fn note_entry(
        &self,
        e: Entry,
        stat: FileStat,
        reuse: Option<Vec<u8>>,
        meta: &MetaWriter,
        files: &mut Vec<Todo>,
        progress: &Progress,
        s: &mut Summary,
    ) -> Result<()> {
        s.entries += 1;
        if e.kind != Kind::File {
            meta.add(&e, None)?;
            return Ok(());
        }
        s.files += 1;
        s.bytes_scanned += e.size;
        if stat.size == 0 {
            meta.add(&e, Some(&[]))?;
            return Ok(());
        }
        match reuse {
            Some(list) => {
                meta.add(&e, Some(&list))?;
            }
            None => {
                let entry = meta.add(&e, None)?;
                progress.total_files.fetch_add(1, Ordering::Relaxed);
                progress.total_bytes.fetch_add(stat.size, Ordering::Relaxed);
                files.push(Todo {
                    entry,
                    path: PathBuf::from(
                        <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(e.path),
                    ),
                    stat,
                });
            }
        }
        Ok(())
    }

    /// Read, chunk, pack and upload the files that arrive on `todo`.
    fn pipeline(
        &self,
        todo: Receiver<Vec<Todo>>,
        ev_tx: Sender<Vec<Event>>,
        cancel: &AtomicBool,
        done: &Progress,
    ) -> Result<()> {
        // Compressed chunks wait for the packer within a byte budget, not a
        // count: many small chunks queue without stalling the workers, and a
        // few big ones cannot pile up.
        let (chunk_tx, chunk_rx) = channel::<NewChunk>();
        let budget = &Budget::new(CHUNK_QUEUE_BYTES);
        let (blob_tx, blob_rx) = sync_channel::<FinishedBlob>(1);
        // Shared by the uploaders; the first to fail drops it, so a packer
        // waiting to hand over a blob is released instead of waiting forever.
        let blob_rx = Mutex::new(Some(blob_rx));
        let finished = AtomicBool::new(false);

        std::thread::scope(|scope| {
            if self.progress {
                let finished = &finished;
                scope.spawn(move || done.show(finished));
            }
            let producer = {
                let ev_tx = ev_tx.clone();
                let pending = &self.pending;
                scope.spawn(move || {
                    // A batch is spread over the threads too: one batch may
                    // hold all the big files of a tree.
                    let r = todo.into_iter().par_bridge().try_for_each_with(
                        (chunk_tx, ev_tx),
                        |(ctx, etx), files| {
                            let events = files
                                .into_par_iter()
                                // One file per task: a few big files must
                                // not end up queued behind one thread.
                                .with_max_len(1)
                                .map_with(ctx.clone(), |ctx, t| {
                                    self.read_file(t, ctx, budget, pending, cancel, done)
                                })
                                .collect::<Result<Vec<Event>>>()?;
                            etx.send(events).map_err(|_| Error::Cancelled)
                        },
                    );
                    if r.is_err() {
                        cancel.store(true, Ordering::Relaxed);
                    }
                    r
                })
            };
            let packer = scope.spawn(move || {
                let r = self.pack(chunk_rx, budget, blob_tx);
                budget.close();
                if r.is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
                r
            });
            let uploaders: Vec<_> = (0..UPLOADERS)
                .map(|_| {
                    let ev_tx = ev_tx.clone();
                    let blob_rx = &blob_rx;
                    scope.spawn(move || {
                        let r = self.upload(blob_rx, ev_tx, cancel);
                        if r.is_err() {
                            cancel.store(true, Ordering::Relaxed);
                            blob_rx
                                .lock()
                                .expect("blob queue lock poisoned by a panic")
                                .take();
                        }
                        r
                    })
                })
                .collect();
            drop(ev_tx);
            let mut results = vec![join(producer), join(packer)];
            results.extend(uploaders.into_iter().map(join));
            finished.store(true, Ordering::Relaxed);
            first_error(results)
        })
    }

    /// Chunk one file; send its new chunks to the packer, and return what
    /// to record (its chunk list, or why it has none).
    #[allow(clippy::too_many_arguments)]
    fn read_file(
        &self,
        t: Todo,
        chunk_tx: &mut Sender<NewChunk>,
        budget: &Budget,
        pending: &Mutex<HashSet<ChunkId>>,
        cancel: &AtomicBool,
        done: &Progress,
    ) -> Result<Event> {
        if cancel.load(Ordering::Relaxed) || self.aborted() {
            return Err(Error::Cancelled);
        }
        let _counted = done.file_guard();
        let skip = |e: Error| -> Result<Event> {
            if self.skip_errors {
                Ok(Event::FileSkipped {
                    entry: t.entry,
                    msg: e.to_string(),
                })
            } else {
                Err(e)
            }
        };
        // Only the file the walk stat'ed is read (never a FIFO, a symlink's
        // target or another file put in its place).
        let file = match walk::open_file(&t.path, (t.stat.dev, t.stat.ino)) {
            Ok(walk::Opened::File(f)) => f,
            Ok(walk::Opened::Gone) => {
                return Ok(Event::FileVanished {
                    entry: t.entry,
                    path: t.path,
                });
            }
            Ok(walk::Opened::Replaced(now)) => {
                return Ok(Event::FileReplaced {
                    entry: t.entry,
                    path: t.path,
                    now,
                });
            }
            Err(e) => {
                return skip(Error::Io {
                    op: "open",
                    path: t.path.clone(),
                    source: e,
                });
            }
        };
        let mut list: Vec<u8> =
            Vec::with_capacity(32 * (t.stat.size as usize / self.params.avg + 1));
        let result = CHUNK_BUF.with_borrow_mut(|buf| {
            chunk::split(&file, &t.path, t.stat.size, self.params, buf, |data| {
                if cancel.load(Ordering::Relaxed) || self.aborted() {
                    return Err(Error::Cancelled);
                }
                done.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                let id = ChunkId::of(data);
                list.extend_from_slice(&id.0);
                let is_new = {
                    let mut p = pending.lock().expect("pending lock poisoned by a panic");
                    if p.contains(&id) || self.index().has_chunk(&id)? {
                        false
                    } else {
                        p.insert(id);
                        true
                    }
                };
                if is_new {
                    let frame = compress(data, self.level).at("compress", &t.path)?;
                    budget.take(frame.len() as u64)?;
                    chunk_tx
                        .send(NewChunk {
                            id,
                            frame,
                            size: data.len() as u64,
                        })
                        .map_err(|_| Error::Cancelled)?;
                }
                Ok(())
            })
        });
        let read = match result {
            Ok(n) => n,
            Err(e @ Error::Io { .. }) => return skip(e),
            Err(e) => return Err(e),
        };
        // A file that changed while we read it is stored as read, but not
        // remembered as unchanged, so the next run reads it again. (The
        // open file is asked, not the path: no lookup. A file renamed over
        // once it was open does not matter: what was read is the walked
        // file, and the next run notices the new inode.)
        let changed = match rustix::fs::fstat(&file) {
            Ok(st) => {
                let now = stat_of(&st);
                now.size != t.stat.size || now.mtime_ns != t.stat.mtime_ns || read != t.stat.size
            }
            Err(_) => true,
        };
        Ok(Event::FileDone {
            todo: t,
            read,
            chunks: list,
            changed,
        })
    }

    fn pack(
        &self,
        rx: Receiver<NewChunk>,
        budget: &Budget,
        tx: SyncSender<FinishedBlob>,
    ) -> Result<()> {
        let mut current: Option<BlobWriter> = None;
        for c in rx {
            let w = match &mut current {
                Some(w) => w,
                None => current.insert(BlobWriter::create(&self.tmp_dir, &self.recipients)?),
            };
            w.add(c.id, &c.frame, c.size)?;
            budget.give_back(c.frame.len() as u64);
            if w.len() >= self.blob_limit {
                let done = current.take().expect("current blob").finish()?;
                tx.send(done).map_err(|_| Error::Cancelled)?;
            }
        }
        if let Some(w) = current {
            if !w.is_empty() {
                tx.send(w.finish()?).map_err(|_| Error::Cancelled)?;
            }
        }
        Ok(())
    }

    fn upload(
        &self,
        rx: &Mutex<Option<Receiver<FinishedBlob>>>,
        ev_tx: Sender<Vec<Event>>,
        cancel: &AtomicBool,
    ) -> Result<()> {
        loop {
            let next = match &*rx.lock().expect("blob queue lock poisoned by a panic") {
                Some(rx) => rx.recv(),
                // Another uploader failed: the run is over.
                None => return Err(Error::Cancelled),
            };
            let Ok(blob) = next else { return Ok(()) };
            if cancel.load(Ordering::Relaxed) || self.aborted() {
                return Err(Error::Cancelled);
            }
            self.store.put_file(&blob.key, blob.file.temp.path())?;
            ev_tx
                .send(vec![Event::BlobStored {
                    key: blob.key,
                    size: blob.file.size,
                    entries: blob.entries,
                }])
                .map_err(|_| Error::Cancelled)?;
        }
    }

    /// Apply one pipeline event, on the thread that owns the metadata database.
    fn record(&self, ev: Event, meta: &MetaWriter, s: &mut Summary) -> Result<()> {
        match ev {
            Event::BlobStored {
                key,
                size,
                mut entries,
            } => {
                s.blobs += 1;
                s.blob_bytes += size;
                s.new_chunks += entries.len() as u64;
                s.new_bytes += entries.iter().map(|(_, l)| l.size).sum::<u64>();
                // In key order, each B-tree page is visited once: the
                // readers wait for the index while this runs.
                entries.sort_unstable_by_key(|(id, _)| *id);
                self.index().add_blob(&key, size, &entries)?;
                let mut p = self
                    .pending
                    .lock()
                    .expect("pending lock poisoned by a panic");
                for (id, _) in &entries {
                    p.remove(id);
                }
            }
            Event::FileDone {
                todo: t,
                read,
                chunks,
                changed,
            } => {
                s.files_read += 1;
                s.bytes_read += read;
                meta.set_chunks(t.entry, read, &chunks)?;
                if changed {
                    s.warnings += 1;
                    (self.warn)(&format!(
                        "{} changed while it was read; stored as read",
                        t.path.display()
                    ));
                } else {
                    meta.note_file(t.path.as_os_str().as_bytes(), &t.stat, &chunks)?;
                }
            }
            Event::FileSkipped { entry, msg } => {
                s.warnings += 1;
                s.skipped += 1;
                (self.warn)(&format!("skipped: {msg}"));
                meta.remove(entry)?;
            }
            Event::FileVanished { entry, path } => {
                s.warnings += 1;
                (self.warn)(&format!(
                    "{}: deleted during the backup; not in this snapshot",
                    path.display()
                ));
                meta.remove(entry)?;
            }
            Event::FileReplaced { entry, path, now } => {
                s.warnings += 1;
                (self.warn)(&replaced_warning(&path, now, false));
                meta.remove(entry)?;
            }
        }
        Ok(())
    }
}

/// Files and bytes read so far, for the progress line.
#[derive(Default)]
struct Progress {
    files: AtomicU64,
    bytes: AtomicU64,
    /// Known so far; final once `walk_done`.
    total_files: AtomicU64,
    total_bytes: AtomicU64,
    walk_done: AtomicBool,
}

/// Counts a file as done when dropped, whatever way reading it ended.
struct FileGuard<'a>(&'a AtomicU64);

impl Drop for FileGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Progress {
    fn file_guard(&self) -> FileGuard<'_> {
        FileGuard(&self.files)
    }

    /// One line on stderr, redrawn in place, until `finished`.
    fn show(&self, finished: &AtomicBool) {
        use std::io::Write as _;
        let start = Instant::now();
        let mut err = std::io::stderr();
        loop {
            let files = self.files.load(Ordering::Relaxed);
            let bytes = self.bytes.load(Ordering::Relaxed);
            let total_files = self.total_files.load(Ordering::Relaxed);
            let total_bytes = self.total_bytes.load(Ordering::Relaxed);
            let walking = !self.walk_done.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64().max(0.001);
            let rate = bytes as f64 / secs;
            let eta = if walking {
                "(still scanning)".to_string()
            } else if rate > 0.0 && total_bytes > bytes {
                format!("{:.0}s", (total_bytes - bytes) as f64 / rate)
            } else {
                "-".into()
            };
            let _ = write!(
                err,
                "\r\x1b[K{files}/{total_files} files, {} of {}, {}/s, ETA {eta}",
                crate::human_bytes(bytes),
                crate::human_bytes(total_bytes),
                crate::human_bytes(rate as u64),
            );
            let _ = err.flush();
            if finished.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let _ = write!(err, "\r\x1b[K");
        let _ = err.flush();
    }
}

/// The first real failure among `results`, not the cancellations it caused.
fn first_error(results: Vec<Result<()>>) -> Result<()> {
    let mut first: Option<Error> = None;
    for r in results {
        if let Err(e) = r {
            if first.is_none() || matches!(first, Some(Error::Cancelled)) {
                first = Some(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

fn join<T>(h: std::thread::ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    h.join()
        .unwrap_or_else(|_| Err(Error::Panicked("a backup thread")))
}

thread_local! {
    static CHUNK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// One zstd frame per chunk, with a per-thread reusable context.
fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|c| {
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, comp) = c.as_mut().expect("compressor just set");
        // The output is allocated at the worst-case bound: give back the rest.
        let mut frame = comp.compress(data)?;
        frame.shrink_to_fit();
        Ok(frame)
    })
}
