//! The backup pipeline for one snapshot, one stage per file in the order
//! the data flows:
//!
//! 1. `walk`: the walk (a thread) finds every entry with its stat (for a
//!    stream, `stream` records its one entry instead);
//! 2. `detect`: change detection (a thread) finds the chunk lists of files
//!    the index knows unchanged; `record`, on this thread (the owner of the
//!    snapshot's metadata), adds every entry and queues the changed files;
//! 3. `chunk`: rayon workers read, cut, hash and compress them (a big
//!    file's or a stream's chunks compressed on every worker: `compress`);
//!    new chunks (`dedup`) go to the packer within a byte budget;
//! 4. `pack`: one thread packs them into blobs, encrypted as written;
//! 5. `upload`: uploader threads put finished blobs; once stored, `record`
//!    has the index record their chunks;
//! 6. `publish`: the metadata database, then the manifest, are uploaded.
//!    A snapshot exists only once its manifest does.
//!
//! One token (`cancel`) stops every stage; `progress` draws the progress
//! line.

mod cancel;
mod chunk;
mod compress;
mod dedup;
mod detect;
mod ids;
mod pack;
pub mod progress;
mod publish;
mod record;
mod stream;
mod upload;
mod walk;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use age::x25519;

use crate::blob::FinishedBlob;
use crate::chunk::{ChunkId, Params};
use crate::config::SnapshotConfig;
use crate::error::{Error, Result};
use crate::index::{FileStat, Index};
use crate::layout;
use crate::manifest;
use crate::snapshot::{self, MetaWriter};
use crate::store::Store;
use crate::store::class::StorageClass;
use crate::xattrs::Read;

use cancel::Cancel;
use dedup::Dedup;
use pack::{Budget, CHUNK_QUEUE_BYTES};
use progress::Progress;
use record::Recorder;
use upload::UPLOADERS;
use walk::{Roots, Walked};

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
    /// The storage class of new blobs, unless a snapshot says otherwise.
    pub blob_class: StorageClass,
    /// What walks leave out, unless a snapshot says more.
    pub walk: crate::walk::WalkDefaults,
    pub skip_errors: bool,
    /// Called with each warning (skipped or changing files).
    pub warn: &'a (dyn Fn(&str) + Sync),
    /// Show progress on stderr: a line redrawn in place (a terminal), or
    /// JSON lines (`--json --progress`, for wrappers).
    pub progress: Option<progress::Style>,
    /// Where the metadata database of each name's last snapshot is kept,
    /// as the base of incremental (scoped) runs and to tell "unchanged".
    pub last_dir: PathBuf,
    /// Set from outside (a daemon being stopped) to abandon the run cleanly.
    pub abort: Option<&'a AtomicBool>,
    /// `[s3] object_lock`: how the run locks what it writes and reuses.
    pub lock: Option<crate::store::lock::LockPlan>,
    /// Signs each manifest (`signing.rs`).
    pub signer: &'a crate::signing::SigningKey,
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
    /// Of the files read, those the index knew by path (changed since it
    /// saw them); the others are new.
    pub files_changed: u64,
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
    /// Entries an exclude pattern left out.
    pub excluded: u64,
    /// Entries with the nodump flag left out (`exclude_nodump`).
    pub nodump: u64,
    /// Directories whose contents a tag file left out (`exclude_if_present`,
    /// `exclude_caches`).
    pub tagged: u64,
    /// Mount points not descended into (`one_file_system`, or a
    /// pseudo-filesystem).
    pub mounts: u64,
    /// Reused blobs whose lock was extended.
    pub locks_extended: u64,
    pub seconds: f64,
}

/// What travels between the stages.
///
/// A changed file to read (`record` -> `chunk`).
struct Todo {
    entry: i64,
    path: PathBuf,
    stat: FileStat,
    /// A stream instead of the file at `path`.
    stream: Option<Box<crate::stream::Stream>>,
    /// A file the index knows unchanged but not its attributes (an index
    /// of an earlier build; an empty file seen for the first time): its
    /// chunk list, kept; only its attributes are read.
    reuse: Option<Vec<u8>>,
}

/// What reading a file gave.
#[derive(Debug, Clone, Copy)]
struct Got {
    /// The bytes its chunks and holes cover: its size in the snapshot.
    size: u64,
    /// The bytes of data read (holes are not read).
    data: u64,
}

/// How a file changed while it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// It is larger now than what was read (its size when opened): the
    /// next run reads the rest.
    Grew,
    /// Anything else (written to, shrunk, grown before it was opened).
    Modified,
}

/// A new chunk, compressed (`chunk` -> `pack`).
struct NewChunk {
    id: ChunkId,
    frame: Vec<u8>,
    size: u64,
}

/// What a file or a blob came to (`chunk`, `upload` -> `record`).
enum Event {
    FileDone {
        todo: Todo,
        got: Got,
        chunks: Vec<u8>,
        /// Set when it changed while it was read: stored as read, and not
        /// remembered as unchanged (the next run reads it again).
        change: Option<Change>,
        /// Its attributes, read from the open file.
        attrs: Read,
    },
    /// The attributes of a file whose chunk list was kept (`Todo::reuse`).
    AttrsDone {
        todo: Todo,
        chunks: Vec<u8>,
        attrs: Read,
    },
    /// A file with the nodump flag, with `exclude_nodump`: not in the
    /// snapshot.
    FileNodump {
        entry: i64,
    },
    FileSkipped {
        entry: i64,
        msg: String,
    },
    /// A stream read to its end, and ended well.
    StreamDone {
        entry: i64,
        what: String,
        read: u64,
        chunks: Vec<u8>,
        /// What its command said on standard error (warnings).
        said: Vec<String>,
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
    /// A blob stored and recorded in the index: its size, its chunks and
    /// their bytes (before compression).
    BlobStored {
        size: u64,
        chunks: u64,
        bytes: u64,
    },
}

/// Batches of files to read (up to a walk batch each) queued for the
/// readers while the walk goes on.
const TODO_BATCHES: usize = 4;

/// What the stages of one run share across threads.
struct Shared<'r, 'a> {
    backup: &'r Backup<'a>,
    cancel: &'r Cancel<'a>,
    dedup: &'r Dedup<'r>,
    progress: &'r Progress,
    /// The storage class of this run's blobs.
    class: StorageClass,
    /// `exclude_nodump`: files with the nodump flag are left out.
    nodump: bool,
}

impl Backup<'_> {
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().expect("index lock poisoned by a panic")
    }

    /// Is the snapshot recorded in the kept metadata `last` still in the
    /// store? (It may have been removed, and then nothing stands for now.)
    fn last_still_stored(&self, last: &Path) -> Result<bool> {
        match snapshot::stored_info(last, "id") {
            // A listing, not a HEAD: a write-only host may not read objects
            // (AWS authorises HEAD with s3:GetObject).
            Some(id) => {
                let manifest = layout::manifest(&id);
                let dir = format!("{}{id}/", layout::METADATA);
                Ok(self
                    .store
                    .list(&dir)?
                    .objects
                    .iter()
                    .any(|o| o.key == manifest))
            }
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
            match self.run_once(snap, Input::Walk(scope), skip_unchanged) {
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

    /// Back up `stream` as the one file of snapshot `snap` (`/stdin/NAME`).
    /// A stream cannot be read twice: blobs vanishing meanwhile fail the
    /// run (nothing is published) instead of making it again.
    pub fn run_stream(
        &self,
        snap: &SnapshotConfig,
        stream: crate::stream::Stream,
        skip_unchanged: bool,
    ) -> Result<Summary> {
        self.run_once(snap, Input::Stream(Box::new(stream)), skip_unchanged)
    }

    fn run_once(
        &self,
        snap: &SnapshotConfig,
        input: Input<'_>,
        skip_unchanged: bool,
    ) -> Result<Summary> {
        let started = Instant::now();
        // Ids have one-second resolution. A run within the same second as
        // an earlier one gets a `.N` suffix, one past the highest stored
        // (a purged id is never reused: ids must grow, `latest` is the
        // highest), which sorts after the plain id and before the next
        // second. Past `.9`, wait for the next second.
        let (id, time) = loop {
            let time = crate::testhook::snapshot_time();
            let base = layout::make_id(&self.hostname, &snap.name, time);
            match manifest::next_free_id(self.store, &base)? {
                Some(id) => break (id, time),
                None => std::thread::sleep(std::time::Duration::from_millis(250)),
            }
        };
        let meta_path = self.tmp_dir.join(format!("{id}.sqlite"));
        let result = self.run_inner(snap, &id, time, &meta_path, input, skip_unchanged);
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
        input: Input<'_>,
        skip_unchanged: bool,
    ) -> Result<Summary> {
        let started_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let t = Timings::start();
        let meta = MetaWriter::create(meta_path)?;
        let last = self.last_path(&snap.name);
        let mut s = Summary {
            id: id.to_string(),
            ..Summary::default()
        };
        // Incremental: keep what lies outside the dirty subtrees.
        let scope = match &input {
            Input::Walk(scope) => *scope,
            Input::Stream(_) => Scope::Full,
        };
        let carried = match scope {
            Scope::Dirty(dirty) if last.is_file() => Some(meta.carry_over(&last, dirty)?),
            _ => None,
        };
        // A last snapshot of a build that did not record attributes is no
        // base: everything is walked again.
        let scope = match carried {
            Some(None) => Scope::Full,
            _ => scope,
        };
        let walk_roots: Vec<PathBuf> = match (scope, carried.flatten()) {
            (Scope::Dirty(dirty), Some((n, files, bytes))) => {
                t.lap("carried over from the last snapshot");
                s.carried = n;
                s.entries += n;
                s.files += files;
                s.bytes_scanned += bytes;
                // Chunks of carried entries that the index no longer has
                // (their blobs were purged meanwhile) are found when the
                // chunk table is written, and make the run a full one
                // (`StaleBase`): a million lookups here cost more than the
                // rest of a one-directory run.
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
        // The recipient set every blob of this snapshot is sealed to (an
        // index rebuilt from it knows which blobs a backup may reuse).
        meta.set_info("sealed_to", &crate::keys::set_fingerprint(&self.recipients))?;

        let excludes = self.walk.excludes_for(snap)?;
        let roots = Roots {
            roots: &walk_roots,
            paths: &snap.paths,
            scoped: scope != Scope::Full,
            excludes: &excludes,
        };
        let cancel = Cancel::new(self.abort);
        let dedup = Dedup::new(&self.index)?;
        let progress = Progress::default();
        let shared = Shared {
            backup: self,
            cancel: &cancel,
            dedup: &dedup,
            progress: &progress,
            class: snap.storage_class.unwrap_or(self.blob_class),
            nodump: excludes.nodump,
        };
        t.lap("metadata started");
        let s = match input {
            Input::Walk(_) => shared.back_up(&meta, s, |rec, todo, events| {
                shared.scan(&roots, rec, todo, events)
            })?,
            Input::Stream(stream) => shared.back_up(&meta, s, |rec, todo, _| {
                stream::feed(rec, &snap.name, time, stream, todo)
            })?,
        };
        t.lap("walked, read, packed, uploaded and recorded");
        publish::Publish {
            backup: self,
            meta,
            snap,
            id,
            time,
            last: &last,
            carried: scope != Scope::Full,
            skip_unchanged,
            started_ns,
        }
        .run(s)
    }
}

/// What a run backs up.
enum Input<'s> {
    /// A walk of the snapshot's paths (or some of them).
    Walk(Scope<'s>),
    /// A stream, as one file.
    Stream(Box<crate::stream::Stream>),
}

impl Shared<'_, '_> {
    /// Stages 1 to 5: `feed` (the walk, detection and records, or a
    /// stream's one entry) on this thread's side, read, pack and upload on
    /// the pipeline's; events are recorded as they come.
    fn back_up(
        &self,
        meta: &MetaWriter,
        s: Summary,
        feed: impl FnOnce(
            &mut Recorder<'_, '_, '_, '_>,
            &SyncSender<Vec<Todo>>,
            &Receiver<Vec<Event>>,
        ) -> Result<()>,
    ) -> Result<Summary> {
        // Files and their results travel in batches (one per batch of
        // walked entries): one wakeup per batch instead of two per file.
        let (todo_tx, todo_rx) = sync_channel::<Vec<Todo>>(TODO_BATCHES);
        let (ev_tx, ev_rx) = channel::<Vec<Event>>();
        let mut rec = Recorder::new(self, meta, s);
        std::thread::scope(|threads| -> Result<()> {
            let pipe = threads.spawn(move || self.cancel.on_error(self.pipeline(todo_rx, ev_tx)));
            let walked = feed(&mut rec, &todo_tx, &ev_rx);
            drop(todo_tx);
            self.progress.walk_done.store(true, Ordering::Relaxed);
            let recorded = walked.and_then(|()| {
                for ev in ev_rx.iter().flatten() {
                    rec.event(ev)?;
                }
                Ok(())
            });
            let recorded = self.cancel.on_error(recorded);
            drop(ev_rx);
            first_error(vec![recorded, join(pipe)])
        })?;
        let mut s = rec.finish();
        s.files_changed = self.progress.changed.load(Ordering::Relaxed);
        Ok(s)
    }

    /// Stages 1 and 2 (threads) feeding `rec`: every walked entry is added
    /// to the metadata, changed files go to `todo`. Pipeline events are
    /// recorded between batches, so nothing piles up.
    fn scan(
        &self,
        roots: &Roots<'_>,
        rec: &mut Recorder<'_, '_, '_, '_>,
        todo: &SyncSender<Vec<Todo>>,
        events: &Receiver<Vec<Event>>,
    ) -> Result<()> {
        if !rustix::process::geteuid().is_root() {
            rec.not_root();
        }
        let (wtx, walked) = sync_channel::<Vec<Walked>>(8);
        let (dtx, detected) = sync_channel::<Vec<Walked>>(8);
        std::thread::scope(|threads| -> Result<()> {
            let index = &self.backup.index;
            let nodump = self.nodump;
            let changed = &self.progress.changed;
            let detector =
                threads.spawn(move || detect::detect(index, nodump, changed, walked, dtx));
            let walker = threads.spawn(move || walk::walk(roots, self.cancel, wtx));
            let recorded = (|| -> Result<()> {
                for batch in detected.iter() {
                    self.cancel.check()?;
                    while let Ok(evs) = events.try_recv() {
                        for ev in evs {
                            rec.event(ev)?;
                        }
                    }
                    rec.walked(batch, todo)?;
                }
                Ok(())
            })();
            // Unblock the walk if we stopped early.
            drop(detected);
            first_error(vec![recorded, join(detector), join(walker)])
        })
    }

    /// Stages 3 to 5: read, chunk, pack and upload the files that arrive
    /// on `todo`.
    fn pipeline(&self, todo: Receiver<Vec<Todo>>, events: Sender<Vec<Event>>) -> Result<()> {
        let (chunk_tx, chunk_rx) = channel::<NewChunk>();
        let budget = &Budget::new(CHUNK_QUEUE_BYTES);
        let (blob_tx, blob_rx) = sync_channel::<FinishedBlob>(1);
        let queue = &Mutex::new(Some(blob_rx));
        let finished = AtomicBool::new(false);
        std::thread::scope(|scope| {
            if let Some(style) = self.backup.progress {
                let finished = &finished;
                scope.spawn(move || self.progress.show(style, finished));
            }
            let chunker = {
                let events = events.clone();
                scope.spawn(move || {
                    self.cancel
                        .on_error(self.chunk_all(todo, chunk_tx, events, budget))
                })
            };
            let packer = scope.spawn(move || {
                let r = self.pack(chunk_rx, budget, blob_tx);
                budget.close();
                self.cancel.on_error(r)
            });
            let uploaders: Vec<_> = (0..UPLOADERS)
                .map(|_| {
                    let events = events.clone();
                    scope.spawn(move || {
                        let r = self.upload(queue, events);
                        if r.is_err() {
                            self.hang_up(queue);
                        }
                        r
                    })
                })
                .collect();
            drop(events);
            let mut results = vec![join(chunker), join(packer)];
            results.extend(uploaders.into_iter().map(join));
            finished.store(true, Ordering::Relaxed);
            first_error(results)
        })
    }
}

/// With `VAULTIK_TIMINGS` set, how long each step of a run took, on
/// standard error (for benchmarks: where the time goes).
struct Timings(Option<std::cell::Cell<Instant>>);

impl Timings {
    fn start() -> Timings {
        Timings(std::env::var_os("VAULTIK_TIMINGS").map(|_| std::cell::Cell::new(Instant::now())))
    }

    fn lap(&self, what: &str) {
        if let Some(t) = &self.0 {
            eprintln!(
                "vaultik: timing: {what}: {:.3}s",
                t.get().elapsed().as_secs_f64()
            );
            t.set(Instant::now());
        }
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
