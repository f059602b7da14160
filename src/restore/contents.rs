//! The restore's file contents: the jobs stream out of the plan in blob and
//! offset order and are cut into read units (neighbouring chunks of one
//! blob, read with one ranged GET); threads read the units, check every
//! chunk's SHA-256 and write it through the directory descriptors the
//! planning thread opened for them (all-zero chunks are skipped, so holes
//! stay holes). A file of one chunk is made, written and given its
//! attributes by the thread that reads its chunk; a file of more chunks is
//! given its attributes by the thread that writes its last one (most of
//! them: see `TRACKED_MAX`), so that a restore stopped midway leaves every
//! file either complete with the snapshot's mtime or with the time it was
//! made (what `--overwrite if-changed` tells apart when run again).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use age::x25519;
use rusqlite::{Connection, OptionalExtension, params};

use super::plan::{self, ppath};
use super::target::{self, Attrs, FileId, Target};
use crate::blob::{BlobReader, Location};
use crate::chunk::ChunkId;
use crate::error::{DbContext, Error, Result};
use crate::store::Store;
use crate::xattrs::Apply;

/// Parallel ranged downloads. Each streams one ranged GET per unit and keeps
/// its chunk buffers (up to the largest chunk, twice) from chunk to chunk.
/// Six keep a 2-core machine and a local S3 server busy (8 were no faster
/// and held 8 MB more).
pub const THREADS: usize = 6;
/// Read units span at most this much of a blob, so a single blob is still
/// read by several threads.
const UNIT_BYTES: u64 = 4 << 20;
/// ...and hold at most this many jobs (a chunk shared by many files, or many
/// copies of a tree, would otherwise make units as big as the snapshot).
const UNIT_JOBS: usize = 1024;
/// ...and write into at most this many directories (each unit in flight
/// holds their descriptors open): what the open-file limit leaves for the
/// units in flight (`2 * THREADS` of them), the rest kept for the cache
/// and the store. With the usual hard limits (raised to, at start) that
/// is 1024, as many as jobs; with a soft limit of 1024 alone, 60.
fn unit_dirs() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if let (Some(cur), Some(max)) = (lim.current, lim.maximum) {
        if max > cur {
            // The hard limit is ours to use: ask for it (or keep what is).
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(max),
                    maximum: Some(max),
                },
            );
        }
    }
    let cur = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let per_unit = cur.saturating_sub(256) / (2 * THREADS as u64 + 1);
    (per_unit as usize).clamp(8, UNIT_JOBS)
}
/// Neighbouring chunks closer than this are read in one request.
const MERGE_GAP: u64 = 256 << 10;
/// ...and carry at most this many bytes of extended attributes and paths
/// (of the files they set attributes of that have some: a forged entry
/// may hold 1 MiB)...
const UNIT_XATTR_BYTES: usize = 1 << 20;

/// Files of more than one chunk tracked at a time (each until its last
/// chunk is written, when its attributes are set): a few megabytes. Files
/// met while the table is full get theirs in the attribute phase, as
/// files whose chunks failed do.
const TRACKED_MAX: usize = 1 << 16;

/// One chunk to write somewhere.
struct Job {
    loc: Location,
    chunk: ChunkId,
    node: i64,
    offset: u64,
    parent: Arc<OwnedFd>,
    name: Arc<[u8]>,
    /// How the file is reached: made by this job (its one chunk), with
    /// these attributes; or made earlier, with this identity.
    how: Reach,
}

enum Reach {
    /// With its source path when it has extended attributes or flags (for
    /// what cannot be set of them).
    Make(Attrs, Vec<u8>),
    /// `finish`: tracked, with the attributes to set once its last chunk
    /// is written (and the source path, as `Make`'s).
    Made {
        id: FileId,
        finish: Option<(Attrs, Vec<u8>)>,
    },
}

/// Neighbouring chunks of one blob, read with one ranged GET.
pub struct Unit {
    blob: usize,
    jobs: Vec<Job>,
    dirs: usize,
    /// Bytes of extended attributes its jobs carry.
    xattrs: usize,
}

/// One of the ranges of jobs `plan_units` reads side by side.
struct Cursor<'s> {
    rows: rusqlite::Rows<'s>,
    /// The unit being filled.
    cur: Option<Unit>,
    /// The last file, shared by the jobs of one file.
    last: Option<LastFile>,
    done: bool,
}

/// A file's node, directory and name, and whether it is tracked.
type LastFile = (i64, Arc<OwnedFd>, Arc<[u8]>, bool);

/// What reading the units did.
pub struct Read {
    pub chunks: u64,
    /// Files that failed, with why (removed, or never made).
    pub failed: HashMap<i64, String>,
}

/// The files of more than one chunk being written: how many chunks each
/// has still to be written, and where the files finished go.
struct Progress {
    left: Mutex<HashMap<i64, u64>>,
    finished: Sender<i64>,
}

/// The planning thread's side of `Progress`: which files to track (the
/// plan's `pending`), and recording those finished.
struct Tracker<'c> {
    progress: &'c Progress,
    find: rusqlite::Statement<'c>,
    met: rusqlite::Statement<'c>,
    finish: rusqlite::Statement<'c>,
    finished: Receiver<i64>,
}

impl Tracker<'_> {
    /// Whether the file of node `node` is tracked: the first time a job of
    /// it is met, it is if there is room.
    fn track(&mut self, node: i64) -> Result<bool> {
        let pp = ppath();
        if self.progress.left.lock().expect("lock").contains_key(&node) {
            return Ok(true);
        }
        let jobs: Option<i64> = self
            .find
            .query_row([node], |r| r.get(0))
            .optional()
            .db(pp)?;
        let Some(jobs) = jobs else {
            return Ok(false);
        };
        self.met.execute([node]).db(pp)?;
        let mut left = self.progress.left.lock().expect("lock");
        if left.len() >= TRACKED_MAX {
            return Ok(false);
        }
        left.insert(node, jobs as u64);
        Ok(true)
    }

    /// Record the files finished so far: the attribute phase skips them.
    fn record(&mut self) -> Result<()> {
        while let Ok(node) = self.finished.try_recv() {
            self.finish.execute([node]).db(ppath())?;
        }
        Ok(())
    }
}

/// Read every unit of the plan, `THREADS` at a time (`pause`: the test
/// hook, after each unit); files get their attributes as `apply` says (the
/// snapshot has the `xattrs` and `flags` columns: `attrs`).
pub fn read_all(
    conn: &Connection,
    target: &mut Target,
    store: &dyn Store,
    identities: &[x25519::Identity],
    blobs: &[(String, u64)],
    pause: &Path,
    (apply, attrs): (&Apply<'_>, bool),
) -> Result<Read> {
    let failed: Mutex<HashMap<i64, String>> = Mutex::new(HashMap::new());
    let chunks_done = AtomicU64::new(0);
    let fatal: Mutex<Option<Error>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let (finished, finished_rx) = mpsc::channel();
    let progress = Progress {
        left: Mutex::new(HashMap::new()),
        finished,
    };
    let pp = ppath();
    let mut tracker = Tracker {
        progress: &progress,
        find: conn
            .prepare("SELECT jobs FROM plan.pending WHERE node = ?1 AND state = 0")
            .db(pp)?,
        met: conn
            .prepare("UPDATE plan.pending SET state = 1 WHERE node = ?1")
            .db(pp)?,
        finish: conn
            .prepare("UPDATE plan.pending SET state = 2 WHERE node = ?1")
            .db(pp)?,
        finished: finished_rx,
    };
    let planned = super::fan_out(
        |tx| plan_units(conn, target, tx, &stop, &failed, &mut tracker, attrs),
        |u: Unit| {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let ctx = Ctx {
                store,
                identities,
                blobs,
                apply,
                failed: &failed,
                done: &chunks_done,
                progress: &progress,
            };
            if let Err(e) = ctx.read_unit(&u) {
                // A wrong key fails every unit the same way: stop early.
                if matches!(e, Error::Key(_)) {
                    stop.store(true, Ordering::Relaxed);
                    fatal.lock().expect("lock").get_or_insert(e);
                } else {
                    let mut ff = failed.lock().expect("lock");
                    for j in &u.jobs {
                        ff.entry(j.node).or_insert_with(|| e.to_string());
                        // A one-chunk file may have been made: not left.
                        if let Reach::Make(..) = j.how {
                            let _ = rustix::fs::unlinkat(
                                &*j.parent,
                                &*j.name,
                                rustix::fs::AtFlags::empty(),
                            );
                        }
                    }
                }
            }
            crate::testhook::pause_at(pause);
        },
    );
    planned?;
    tracker.record()?;
    if let Some(e) = fatal.into_inner().expect("lock") {
        return Err(e);
    }
    Ok(Read {
        chunks: chunks_done.load(Ordering::Relaxed),
        failed: failed.into_inner().expect("lock"),
    })
}

/// Stream the jobs in blob and offset order into read units: chunks of
/// one blob closer than `MERGE_GAP`, up to `UNIT_BYTES`, `UNIT_JOBS` and
/// `unit_dirs()` per unit. The jobs are cut into `THREADS` ranges read side
/// by side, one unit from each in turn, so that the threads work on
/// different parts of the snapshot: neighbouring units write files into
/// the same directories, and creating files in one directory from six
/// threads at once contends on its lock (+0.5 s for /usr/share).
fn plan_units(
    conn: &Connection,
    target: &mut Target,
    tx: &SyncSender<Unit>,
    stop: &AtomicBool,
    failed: &Mutex<HashMap<i64, String>>,
    tracker: &mut Tracker<'_>,
    attrs: bool,
) -> Result<()> {
    let pp = ppath();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM plan.jobs", [], |r| r.get(0))
        .db(pp)?;
    let mut bounds: Vec<(i64, i64)> = vec![(i64::MIN, i64::MIN)];
    {
        let mut at = conn.prepare(plan::Q_JOB_AT).db(pp)?;
        for k in 1..THREADS as i64 {
            let b: Option<(i64, i64)> = at
                .query_row([k * n / THREADS as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .db(pp)?;
            if let Some(b) = b {
                if bounds.last().is_some_and(|l| *l < b) {
                    bounds.push(b);
                }
            }
        }
    }
    bounds.push((i64::MAX, i64::MAX));
    let q_jobs = plan::q(plan::Q_JOBS, attrs);
    let mut stmts = Vec::new();
    for _ in 1..bounds.len() {
        stmts.push(conn.prepare(&q_jobs).db(pp)?);
    }
    let mut node_q = conn.prepare(plan::Q_NODE).db(pp)?;
    let mut cursors = Vec::new();
    for (st, w) in stmts.iter_mut().zip(bounds.windows(2)) {
        let (lo, hi) = (w[0], w[1]);
        cursors.push(Cursor {
            rows: st.query(params![lo.0, lo.1, hi.0, hi.1]).db(pp)?,
            cur: None,
            last: None,
            done: false,
        });
    }
    let mut info = |node: i64| super::node_info(&mut node_q, node);
    let max_dirs = unit_dirs();
    while cursors.iter().any(|c| !c.done) {
        for c in cursors.iter_mut().filter(|c| !c.done) {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            match next_unit(c, target, &mut info, failed, max_dirs, tracker)? {
                Some(u) => {
                    if tx.send(u).is_err() {
                        return Ok(());
                    }
                }
                None => c.done = true,
            }
            tracker.record()?;
        }
    }
    Ok(())
}

/// The next complete unit of a cursor, or None at its end.
fn next_unit(
    c: &mut Cursor<'_>,
    target: &mut Target,
    info: &mut dyn FnMut(i64) -> Result<target::NodeInfo>,
    failed: &Mutex<HashMap<i64, String>>,
    max_dirs: usize,
    tracker: &mut Tracker<'_>,
) -> Result<Option<Unit>> {
    let pp = ppath();
    while let Some(r) = c.rows.next().db(pp)? {
        let blob = r.get::<_, i64>(0).db(pp)? as usize;
        let loc = Location {
            offset: r.get::<_, i64>(1).db(pp)? as u64,
            length: r.get::<_, i64>(2).db(pp)? as u64,
            size: r.get::<_, i64>(3).db(pp)? as u64,
        };
        let chunk: Vec<u8> = r.get(4).db(pp)?;
        let chunk = ChunkId::from_slice(&chunk)
            .ok_or_else(|| Error::corrupt(plan::PLAN, "chunk id of the wrong length"))?;
        let node: i64 = r.get(5).db(pp)?;
        let offset = r.get::<_, i64>(6).db(pp)? as u64;
        let single: bool = r.get(7).db(pp)?;
        let mut how = if single {
            let (a, src) = attrs_and_path(r)?;
            Reach::Make(a, src)
        } else {
            match (
                r.get::<_, Option<i64>>(10).db(pp)?,
                r.get::<_, Option<i64>>(11).db(pp)?,
            ) {
                (Some(dev), Some(ino)) => Reach::Made {
                    id: (dev as u64, ino as u64),
                    finish: None,
                },
                // Not made (it failed, and is named already).
                _ => continue,
            }
        };
        let (parent, name, tracked) = match &c.last {
            Some((n, p, name, t)) if *n == node => (p.clone(), name.clone(), *t),
            _ => {
                let parent_node: i64 = r.get(8).db(pp)?;
                let name: Vec<u8> = r.get(9).db(pp)?;
                let parent = match target.dir(parent_node, info)? {
                    Ok(p) => p,
                    Err(e) => {
                        failed
                            .lock()
                            .expect("lock")
                            .entry(node)
                            .or_insert_with(|| e.to_string());
                        continue;
                    }
                };
                let tracked = !single && tracker.track(node)?;
                let name: Arc<[u8]> = name.into();
                c.last = Some((node, parent.clone(), name.clone(), tracked));
                (parent, name, tracked)
            }
        };
        if let (Reach::Made { finish, .. }, true) = (&mut how, tracked) {
            *finish = Some(attrs_and_path(r)?);
        }
        let job = Job {
            loc,
            chunk,
            node,
            offset,
            parent,
            name,
            how,
        };
        let mut full = None;
        if let Some(u) = &c.cur {
            let (first, last) = (&u.jobs[0], u.jobs.last().expect("units are not empty"));
            // Forged offsets may be anything: never overflow.
            let gap = loc
                .offset
                .saturating_sub(last.loc.offset.saturating_add(last.loc.length));
            let span = loc
                .offset
                .saturating_add(loc.length)
                .saturating_sub(first.loc.offset);
            let new_dir = !Arc::ptr_eq(&last.parent, &job.parent);
            if u.blob != blob
                || gap > MERGE_GAP
                || span > UNIT_BYTES
                || u.jobs.len() >= UNIT_JOBS
                || (new_dir && u.dirs >= max_dirs)
                || u.xattrs >= UNIT_XATTR_BYTES
            {
                full = c.cur.take();
            }
        }
        let u = c.cur.get_or_insert_with(|| Unit {
            blob,
            jobs: Vec::new(),
            dirs: 0,
            xattrs: 0,
        });
        if u.jobs
            .last()
            .is_none_or(|l| !Arc::ptr_eq(&l.parent, &job.parent))
        {
            u.dirs += 1;
        }
        if let Reach::Make(a, src)
        | Reach::Made {
            finish: Some((a, src)),
            ..
        } = &job.how
        {
            u.xattrs += a.extra.xattrs.len() + src.len();
        }
        u.jobs.push(job);
        if full.is_some() {
            return Ok(full);
        }
    }
    Ok(c.cur.take())
}

/// A job row's attributes, with the source path when they hold extended
/// attributes or flags (to name what cannot be set of them).
fn attrs_and_path(r: &rusqlite::Row<'_>) -> Result<(Attrs, Vec<u8>)> {
    let pp = ppath();
    let a = super::attrs_from_row(r, 12).db(pp)?;
    let src = if a.extra.is_empty() {
        Vec::new()
    } else {
        r.get::<_, Vec<u8>>(19).db(pp)?
    };
    Ok((a, src))
}

/// What the reading threads share.
struct Ctx<'a> {
    store: &'a dyn Store,
    identities: &'a [x25519::Identity],
    blobs: &'a [(String, u64)],
    apply: &'a Apply<'a>,
    failed: &'a Mutex<HashMap<i64, String>>,
    done: &'a AtomicU64,
    progress: &'a Progress,
}

impl Ctx<'_> {
    fn read_unit(&self, u: &Unit) -> Result<()> {
        let (key, size) = &self.blobs[u.blob];
        let mut reader = BlobReader::open(self.store, key, *size, self.identities)?;
        let last = u.jobs.last().expect("units are not empty");
        reader.plan_range(last.loc.offset.saturating_add(last.loc.length));
        let mut open: Option<(i64, File)> = None;
        let mut i = 0;
        while i < u.jobs.len() {
            let j = &u.jobs[i];
            // Every job that wants this same chunk at this same place
            // (forged metadata may put another id there: it is read, and
            // checked, on its own).
            let mut end = i + 1;
            while end < u.jobs.len() && u.jobs[end].loc == j.loc && u.jobs[end].chunk == j.chunk {
                end += 1;
            }
            match reader.read_chunk(&j.chunk, &j.loc) {
                Ok(data) => {
                    self.done.fetch_add(1, Ordering::Relaxed);
                    let zero = is_zero(data);
                    for t in &u.jobs[i..end] {
                        if let Err(msg) = self.write(t, data, zero, &mut open) {
                            self.failed
                                .lock()
                                .expect("lock")
                                .entry(t.node)
                                .or_insert(msg);
                        }
                    }
                }
                Err(e @ Error::Key(_)) => return Err(e),
                Err(err) => {
                    let mut ff = self.failed.lock().expect("lock");
                    for t in &u.jobs[i..end] {
                        ff.entry(t.node).or_insert_with(|| err.to_string());
                    }
                }
            }
            i = end;
        }
        Ok(())
    }

    /// Write one chunk where job `t` says.
    fn write(
        &self,
        t: &Job,
        data: &[u8],
        zero: bool,
        open: &mut Option<(i64, File)>,
    ) -> std::result::Result<(), String> {
        match &t.how {
            Reach::Make(attrs, src) => {
                // The file is this chunk: make it now, and finish it.
                let f = target::create_new(&t.parent, &t.name).map_err(|e| e.to_string())?;
                let written = if zero {
                    f.set_len(data.len() as u64)
                        .map_err(|e| format!("cannot size: {e}"))
                } else {
                    f.write_all_at(data, 0)
                        .map_err(|e| format!("cannot write: {e}"))
                }
                .and_then(|()| {
                    target::set_fd_attrs(&f, attrs, self.apply, src).map_err(|e| e.to_string())
                });
                if written.is_err() {
                    // Only now is its identity needed (to remove it, and
                    // nothing else that took its name meanwhile).
                    if let Ok(st) = rustix::fs::fstat(&f) {
                        let _ = target::remove_file(&t.parent, &t.name, (st.st_dev, st.st_ino));
                    }
                }
                written
            }
            Reach::Made { id, finish } => {
                if !zero {
                    if open.as_ref().is_none_or(|(n, _)| *n != t.node) {
                        let f = target::open_file(&t.parent, &t.name, *id)
                            .map_err(|e| e.to_string())?;
                        *open = Some((t.node, f));
                    }
                    let (_, f) = open.as_ref().expect("just opened");
                    f.write_all_at(data, t.offset)
                        .map_err(|e| format!("cannot write: {e}"))?;
                }
                if let Some(attrs) = finish {
                    self.finish(t, *id, attrs, open);
                }
                Ok(())
            }
        }
    }

    /// One more chunk of tracked file `t` is written: once it is its
    /// last, set the file's owner, mode and times now. Failing here, the
    /// attribute phase sets them (and names what fails).
    fn finish(
        &self,
        t: &Job,
        id: FileId,
        attrs: &(Attrs, Vec<u8>),
        open: &mut Option<(i64, File)>,
    ) {
        {
            let mut left = self.progress.left.lock().expect("lock");
            let Some(n) = left.get_mut(&t.node) else {
                return;
            };
            *n = n.saturating_sub(1);
            if *n > 0 {
                return;
            }
            left.remove(&t.node);
        }
        if open.as_ref().is_none_or(|(n, _)| *n != t.node) {
            match target::open_file(&t.parent, &t.name, id) {
                Ok(f) => *open = Some((t.node, f)),
                Err(_) => return,
            }
        }
        let (_, f) = open.as_ref().expect("just opened");
        let (attrs, src) = attrs;
        if target::set_fd_attrs(f, attrs, self.apply, src).is_ok() {
            let _ = self.progress.finished.send(t.node);
        }
    }
}

pub(super) fn is_zero(data: &[u8]) -> bool {
    // SAFETY: any bytes are valid u64s; align_to splits off what is not
    // aligned.
    let (head, words, tail) = unsafe { data.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 1000]));
        let mut v = vec![0u8; 1000];
        v[999] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }
}
