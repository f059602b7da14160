//! The restore pipeline: fetch and decrypt the snapshot's metadata -> check
//! every path (nothing may land outside the target) -> create directories and
//! empty, pre-sized files -> plan: group the needed chunks by blob, sort by
//! offset and merge neighbours into ranged reads -> read the units in
//! parallel, checking every chunk's SHA-256, writing with `pwrite` (all-zero
//! chunks are skipped, so holes stay holes) -> symlinks and special files ->
//! owners, modes and times last, directories deepest first.
//!
//! A file with a chunk that fails its check is removed, named in the error,
//! and the restore exits non-zero: nothing corrupt is left looking good.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use age::x25519;
use rusqlite::{Connection, OptionalExtension, params};

use crate::blob::{BlobReader, Location};
use crate::chunk::ChunkId;
use crate::error::{DbContext, Error, IoContext, Result};
use crate::snapshot::{self, Kind};
use crate::store::Store;

/// Parallel ranged downloads. Each streams one ranged GET per unit and keeps
/// its chunk buffers (up to the largest chunk, twice) from chunk to chunk.
/// Six keep a 2-core machine and a local S3 server busy (8 were no faster
/// and held 8 MB more).
const THREADS: usize = 6;
/// Read units span at most this much of a blob, so a single blob is still
/// read by several threads.
const UNIT_BYTES: u64 = 4 << 20;
/// ...and hold at most this many jobs (a chunk shared by many files, or many
/// copies of a tree, would otherwise make units as big as the snapshot).
const UNIT_JOBS: usize = 1024;
/// Neighbouring chunks closer than this are read in one request.
const MERGE_GAP: u64 = 256 << 10;
/// Entries whose attributes a thread sets at a time.
const ATTR_BATCH: usize = 256;

pub struct Restore<'a> {
    pub store: &'a dyn Store,
    pub identities: Vec<x25519::Identity>,
    pub target: PathBuf,
    /// Only these source paths (and what is below them), when not empty.
    pub paths: Vec<String>,
    pub warn: &'a (dyn Fn(&str) + Sync),
}

#[derive(Debug, Default)]
pub struct Summary {
    pub id: String,
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub other: u64,
    pub bytes: u64,
    pub chunks: u64,
    pub seconds: f64,
}

/// One chunk to write somewhere.
struct Job {
    loc: Location,
    chunk: ChunkId,
    /// The entry's id in the metadata.
    file: i64,
    offset: u64,
    /// The file is this one chunk: the writer creates it and sets these
    /// attributes through the open file (saves an open and four lookups).
    whole: Option<Attrs>,
    dest: Arc<Path>,
}

/// One of the ranges of jobs `plan_units` reads side by side.
struct Cursor<'s> {
    rows: rusqlite::Rows<'s>,
    /// The unit being filled.
    cur: Option<Unit>,
    /// The last destination, shared by the jobs of one file.
    last_dest: Option<(i64, Arc<Path>)>,
    done: bool,
}

/// Neighbouring chunks of one blob, read with one ranged GET.
struct Unit {
    blob: usize,
    jobs: Vec<Job>,
}

/// The destination of a source path under `target`, or None when the path
/// could escape it (`..`, `.`, empty components).
pub fn dest_path(target: &Path, src: &[u8]) -> Option<PathBuf> {
    // Snapshots record absolute paths only; anything else is forged.
    let rel = src.strip_prefix(b"/")?;
    if rel.is_empty() {
        return Some(target.to_path_buf());
    }
    for c in rel.split(|b| *b == b'/') {
        if c.is_empty() || c == b"." || c == b".." || c.contains(&0) {
            return None;
        }
    }
    Some(target.join(OsStr::from_bytes(rel)))
}

fn normalize_filter(p: &str) -> Vec<u8> {
    let mut v = p.as_bytes().to_vec();
    while v.len() > 1 && v.ends_with(b"/") {
        v.pop();
    }
    if !v.starts_with(b"/") {
        v.insert(0, b'/');
    }
    v
}

fn under(path: &[u8], filter: &[u8]) -> bool {
    path == filter
        || (path.starts_with(filter) && (filter == b"/" || path.get(filter.len()) == Some(&b'/')))
}

/// The restore plan, kept in a scratch database attached to the spilled
/// metadata (an unlinked 0600 file in the target), so that memory does not
/// grow with the number of entries or chunks:
/// - `state`: the entries to restore (a row is deleted when its entry
///   fails), with the entry a further hard link is restored as a link to;
/// - `paths`: every accepted path once (duplicates in forged metadata are
///   refused, hard links find their first path);
/// - `jobs`: every chunk to write, in blob and offset order (the primary
///   key: rows are read back in order without a sort).
const PLAN_SCHEMA: &str = "
CREATE TABLE plan.state(
    id INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    link INTEGER,
    depth INTEGER NOT NULL,
    single INTEGER NOT NULL
);
CREATE INDEX plan.dirs ON state(depth) WHERE kind = 1;
CREATE TABLE plan.paths(
    path BLOB PRIMARY KEY,
    id INTEGER NOT NULL,
    first INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE plan.jobs(
    blob INTEGER NOT NULL,
    boffset INTEGER NOT NULL,
    entry INTEGER NOT NULL,
    foffset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    size INTEGER NOT NULL,
    chunk BLOB NOT NULL,
    whole INTEGER NOT NULL,
    PRIMARY KEY (blob, boffset, entry, foffset)
) WITHOUT ROWID;
";

/// The plan's queries that walk many rows. None of them sorts (checked by
/// a test): each follows a primary key or index.
const Q_DIRS_UP: &str =
    "SELECT s.id, e.path FROM plan.state s JOIN main.entries e ON e.rowid = s.id
     WHERE s.kind = 1 ORDER BY s.depth";
const Q_FILES: &str = "SELECT s.id, e.path, e.size, s.single FROM plan.state s
     JOIN main.entries e ON e.rowid = s.id WHERE s.kind = 2 AND s.link IS NULL ORDER BY s.id";
const Q_JOBS: &str = "SELECT j.blob, j.boffset, j.length, j.size, j.chunk, j.entry, j.foffset,
     j.whole, e.path, e.kind, e.mode, e.uid, e.gid, e.mtime_ns
     FROM plan.jobs j JOIN plan.state s ON s.id = j.entry
     JOIN main.entries e ON e.rowid = j.entry
     WHERE (j.blob, j.boffset) >= (?1, ?2) AND (j.blob, j.boffset) < (?3, ?4)
     ORDER BY j.blob, j.boffset, j.entry, j.foffset";
const Q_JOB_AT: &str =
    "SELECT blob, boffset FROM plan.jobs ORDER BY blob, boffset, entry, foffset LIMIT 1 OFFSET ?1";
const Q_LINKS: &str = "SELECT s.id, e.path, e.size, t.path, ts.id IS NOT NULL FROM plan.state s
     JOIN main.entries e ON e.rowid = s.id JOIN main.entries t ON t.rowid = s.link
     LEFT JOIN plan.state ts ON ts.id = s.link WHERE s.link IS NOT NULL ORDER BY s.id";
const Q_OTHER: &str = "SELECT s.id, e.path, e.kind, e.target, e.rdev FROM plan.state s
     JOIN main.entries e ON e.rowid = s.id WHERE s.kind NOT IN (1, 2) ORDER BY s.id";
/// (Files of one chunk had theirs set when written.)
const Q_ATTRS: &str = "SELECT e.path, e.kind, e.mode, e.uid, e.gid, e.mtime_ns FROM plan.state s
     JOIN main.entries e ON e.rowid = s.id WHERE s.kind != 1 AND s.link IS NULL AND NOT s.single
     ORDER BY s.id";
const Q_DIRS_DOWN: &str =
    "SELECT e.path, e.kind, e.mode, e.uid, e.gid, e.mtime_ns FROM plan.state s
     JOIN main.entries e ON e.rowid = s.id WHERE s.kind = 1 ORDER BY s.depth DESC";

/// What `set_attrs` needs of an entry.
struct Attrs {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
}

impl Attrs {
    /// From the columns `kind, mode, uid, gid, mtime_ns` of `r`, from `at`.
    fn from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Attrs> {
        Ok(Attrs {
            kind: Kind::from_i64(r.get(at)?).unwrap_or(Kind::Socket),
            mode: r.get::<_, i64>(at + 1)? as u32 & 0o7777,
            uid: r.get::<_, i64>(at + 2)? as u32,
            gid: r.get::<_, i64>(at + 3)? as u32,
            mtime_ns: r.get(at + 4)?,
        })
    }

    /// Access and modification times for utimensat/futimens (both mtime).
    fn times(&self) -> [libc::timespec; 2] {
        let ts = libc::timespec {
            tv_sec: self.mtime_ns.div_euclid(1_000_000_000) as _,
            tv_nsec: self.mtime_ns.rem_euclid(1_000_000_000) as libc::c_long,
        };
        [ts, ts]
    }
}

/// Directories known to exist under the target. Bounded: entries come in
/// walk order, so a small cache catches nearly every parent.
struct DirCache(HashSet<PathBuf>);

impl DirCache {
    const MAX: usize = 4096;

    fn contains(&self, p: &Path) -> bool {
        self.0.contains(p)
    }

    fn insert(&mut self, p: PathBuf) {
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(p);
    }
}

/// Deletes of failed entries from the plan, applied between phases (never
/// while a query over `state` is open).
fn drop_failed(conn: &Connection, ids: &mut Vec<i64>) -> Result<()> {
    let mpath = Path::new("restore plan");
    let mut st = conn
        .prepare_cached("DELETE FROM plan.state WHERE id = ?1")
        .db(mpath)?;
    for id in ids.drain(..) {
        st.execute([id]).db(mpath)?;
    }
    Ok(())
}

/// Attach the plan database: a 0600 file in the target, unlinked at once.
fn attach_plan(conn: &Connection, target: &Path) -> Result<()> {
    let path = target.join(format!(".vaultik-plan-{}.sqlite", std::process::id()));
    let made = (|| -> Result<()> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .at("create", &path)?;
        conn.execute("ATTACH DATABASE ?1 AS plan", [path.as_os_str().as_bytes()])
            .db(&path)?;
        conn.execute_batch(
            "PRAGMA plan.journal_mode=OFF; PRAGMA plan.synchronous=OFF;
             PRAGMA plan.locking_mode=EXCLUSIVE; PRAGMA plan.cache_size=-2048;",
        )
        .db(&path)?;
        conn.execute_batch(PLAN_SCHEMA).db(&path)
    })();
    let _ = fs::remove_file(&path);
    made
}

/// Run `produce` on this thread, handing items through a bounded channel to
/// `THREADS` threads that each `work` on them as they come; returns what
/// `produce` returned, once every item is done.
fn fan_out<T: Send>(
    produce: impl FnOnce(&SyncSender<T>) -> Result<()>,
    work: impl Fn(T) + Sync,
) -> Result<()> {
    let (tx, rx) = mpsc::sync_channel::<T>(THREADS);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                loop {
                    let next = rx.lock().expect("lock").recv();
                    let Ok(item) = next else { break };
                    work(item);
                }
            });
        }
        let r = produce(&tx);
        // Closing the channel lets the threads finish.
        drop(tx);
        r
    })
}

impl Restore<'_> {
    pub fn run(&self, id: &str) -> Result<Summary> {
        let started = Instant::now();
        let conn =
            snapshot::open_metadata_at(self.store, id, &self.identities, Some(&self.target))?;
        attach_plan(&conn, &self.target)?;
        let mpath = Path::new("snapshot metadata");
        let ppath = Path::new("restore plan");
        let mut s = Summary {
            id: id.to_string(),
            ..Summary::default()
        };
        let mut failures: Vec<String> = Vec::new();
        let mut failed: Vec<i64> = Vec::new();
        let shown = |p: &[u8]| String::from_utf8_lossy(p).into_owned();

        // 1. Entries, checked and filtered, into the plan; the chunks of each
        //    file located (in the metadata) and queued as jobs.
        let filters: Vec<Vec<u8>> = self.paths.iter().map(|p| normalize_filter(p)).collect();
        let mut matched = vec![false; filters.len()];
        let mut blobs: Vec<(String, u64)> = Vec::new();
        let mut blob_ids: HashMap<i64, usize> = HashMap::new();
        let mut located: Vec<(ChunkId, usize, Location)> = Vec::new();
        conn.execute_batch("BEGIN").db(ppath)?;
        {
            let link = crate::snapshot::link_column(&conn, "main");
            let mut st = conn
                .prepare(&format!(
                    "SELECT rowid, path, kind, size, chunks, {link} FROM main.entries ORDER BY rowid"
                ))
                .db(mpath)?;
            let mut q = conn
                .prepare(
                    "SELECT c.blob, c.offset, c.length, c.size, b.key, b.size
                     FROM main.chunks c JOIN main.blobs b ON b.id = c.blob WHERE c.id = ?1",
                )
                .db(mpath)?;
            let mut add_path = conn
                .prepare("INSERT OR IGNORE INTO plan.paths(path, id, first) VALUES (?1, ?2, ?3)")
                .db(ppath)?;
            let mut find_path = conn
                .prepare("SELECT id, first FROM plan.paths WHERE path = ?1")
                .db(ppath)?;
            let mut add_state = conn
                .prepare(
                    "INSERT INTO plan.state(id, kind, link, depth, single)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .db(ppath)?;
            let mut add_job = conn
                .prepare(
                    "INSERT OR IGNORE INTO plan.jobs(blob, boffset, entry, foffset, length, size,
                     chunk, whole) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .db(ppath)?;
            let mut rows = st.query([]).db(mpath)?;
            while let Some(r) = rows.next().db(mpath)? {
                let rowid: i64 = r.get(0).db(mpath)?;
                let src: Vec<u8> = r.get(1).db(mpath)?;
                if !filters.is_empty() {
                    let mut any = false;
                    for (f, m) in filters.iter().zip(matched.iter_mut()) {
                        if under(&src, f) {
                            *m = true;
                            any = true;
                        }
                    }
                    if !any {
                        continue;
                    }
                }
                if dest_path(&self.target, &src).is_none() {
                    failures.push(format!(
                        "{}: unsafe path in snapshot metadata, not restored",
                        shown(&src)
                    ));
                    continue;
                }
                let kind = Kind::from_i64(r.get(2).db(mpath)?).ok_or_else(|| {
                    Error::corrupt(
                        "snapshot metadata",
                        format!("{}: unknown entry kind", shown(&src)),
                    )
                })?;
                let size: i64 = r.get(3).db(mpath)?;
                let chunks: Option<Vec<u8>> = r.get(4).db(mpath)?;
                let chunks = chunks.unwrap_or_default();
                if size < 0 || chunks.len() % 32 != 0 {
                    failures.push(format!(
                        "{}: malformed entry in snapshot metadata",
                        shown(&src)
                    ));
                    continue;
                }
                let link_path: Option<Vec<u8>> = r.get(5).db(mpath)?;
                if kind == Kind::File {
                    located.clear();
                    for c in chunks.chunks_exact(32) {
                        let id = ChunkId::from_slice(c).expect("chunks_exact(32)");
                        let row = q
                            .query_row([c], |r| {
                                Ok((
                                    r.get::<_, i64>(0)?,
                                    Location::from_row(r, 1)?,
                                    r.get::<_, String>(4)?,
                                    r.get::<_, i64>(5)? as u64,
                                ))
                            })
                            .optional()
                            .db(mpath)?;
                        let Some((bid, loc, key, bsize)) = row else {
                            return Err(Error::corrupt(
                                "snapshot metadata",
                                format!("chunk {} has no location", id.hex()),
                            ));
                        };
                        let bi = match blob_ids.get(&bid) {
                            Some(bi) => *bi,
                            None => {
                                if !key.starts_with("blobs/") || key.contains("..") {
                                    return Err(Error::corrupt(
                                        "snapshot metadata",
                                        format!("bad blob key {key}"),
                                    ));
                                }
                                blobs.push((key, bsize));
                                blob_ids.insert(bid, blobs.len() - 1);
                                blobs.len() - 1
                            }
                        };
                        located.push((id, bi, loc));
                    }
                    // The size must be what the chunks add up to (no forged giants).
                    let sum: u64 = located.iter().map(|(_, _, l)| l.size).sum();
                    if sum != size as u64 {
                        failures.push(format!(
                            "{}: size {size} does not match its chunks ({sum}); not restored",
                            shown(&src)
                        ));
                        continue;
                    }
                }
                // Two entries for one path (forged metadata): only the first.
                // Checked paths map one-to-one to destinations.
                let first = kind == Kind::File && link_path.is_none();
                if add_path.execute(params![src, rowid, first]).db(ppath)? == 0 {
                    failures.push(format!(
                        "{}: duplicate path in snapshot metadata, not restored",
                        shown(&src)
                    ));
                    continue;
                }
                // Hard links: a file recorded as a further link of an
                // earlier path that is restored too becomes a link to it (its
                // own chunks are not written); otherwise it is restored as a
                // file of its own.
                let mut link_to: Option<i64> = None;
                if let (Kind::File, Some(p)) = (kind, &link_path) {
                    if let Some((t, true)) = find_path
                        .query_row([p], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)))
                        .optional()
                        .db(ppath)?
                    {
                        link_to = Some(t);
                    }
                }
                let depth = src.split(|b| *b == b'/').count() as i64;
                let single = kind == Kind::File && chunks.len() == 32;
                add_state
                    .execute(params![rowid, kind as i64, link_to, depth, single])
                    .db(ppath)?;
                if kind == Kind::File && link_to.is_none() {
                    let whole = located.len() == 1;
                    let mut offset = 0u64;
                    for (chunk, bi, loc) in &located {
                        add_job
                            .execute(params![
                                *bi as i64,
                                loc.offset as i64,
                                rowid,
                                offset as i64,
                                loc.length as i64,
                                loc.size as i64,
                                &chunk.0[..],
                                whole
                            ])
                            .db(ppath)?;
                        offset += loc.size;
                    }
                }
            }
        }
        conn.execute_batch("COMMIT").db(ppath)?;
        for (f, m) in self.paths.iter().zip(&matched) {
            if !m {
                return Err(Error::Usage(format!("path {f} is not in snapshot {id}")));
            }
        }

        // 2. Directories, parents first, then files (pre-sized, so holes
        //    stay holes).
        fs::create_dir_all(&self.target).at("create target directory", &self.target)?;
        let mut dirs_ok = DirCache(HashSet::new());
        dirs_ok.insert(self.target.clone());
        {
            let mut st = conn.prepare(Q_DIRS_UP).db(ppath)?;
            let mut rows = st.query([]).db(ppath)?;
            while let Some(r) = rows.next().db(ppath)? {
                let (i, src): (i64, Vec<u8>) = (r.get(0).db(ppath)?, r.get(1).db(ppath)?);
                if let Err(err) = self.ensure_dir(&self.dest(&src), &mut dirs_ok) {
                    failures.push(format!("{}: {err}", shown(&src)));
                    failed.push(i);
                } else {
                    s.dirs += 1;
                }
            }
        }
        drop_failed(&conn, &mut failed)?;
        {
            let mut st = conn.prepare(Q_FILES).db(ppath)?;
            let mut rows = st.query([]).db(ppath)?;
            while let Some(r) = rows.next().db(ppath)? {
                let i: i64 = r.get(0).db(ppath)?;
                let src: Vec<u8> = r.get(1).db(ppath)?;
                let size = r.get::<_, i64>(2).db(ppath)? as u64;
                let single: bool = r.get(3).db(ppath)?;
                let dest = self.dest(&src);
                let made = self.ensure_parent(&dest, &mut dirs_ok).and_then(|_| {
                    if single {
                        // One chunk: created (replacing what is there) when
                        // its chunk is written.
                        return Ok(());
                    }
                    let f = create_fresh(&dest)?;
                    f.set_len(size).at("size", &dest)
                });
                if let Err(err) = made {
                    failures.push(format!("{}: {err}", shown(&src)));
                    failed.push(i);
                    continue;
                }
                s.files += 1;
                s.bytes += size;
            }
        }
        drop_failed(&conn, &mut failed)?;

        // Owners are restored only by root (phases 3 to 5).
        let as_root = unsafe { libc::geteuid() } == 0;

        // 3. Read units, planned as the jobs stream by in blob and offset
        //    order, read by the threads as they come.
        let failed_files: Mutex<HashMap<i64, String>> = Mutex::new(HashMap::new());
        let chunks_done = AtomicU64::new(0);
        let fatal: Mutex<Option<Error>> = Mutex::new(None);
        let stop = AtomicBool::new(false);
        let planned = fan_out(
            |tx| self.plan_units(&conn, tx, &stop),
            |u: Unit| {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Err(e) = self.read_unit(&u, &blobs, as_root, &failed_files, &chunks_done) {
                    // A wrong key fails every unit the same way: stop early.
                    if matches!(e, Error::Key(_)) {
                        stop.store(true, Ordering::Relaxed);
                        fatal.lock().expect("lock").get_or_insert(e);
                    } else {
                        let mut ff = failed_files.lock().expect("lock");
                        for j in &u.jobs {
                            ff.entry(j.file).or_insert_with(|| e.to_string());
                        }
                    }
                }
            },
        );
        planned?;
        if let Some(e) = fatal.into_inner().expect("lock") {
            return Err(e);
        }
        s.chunks = chunks_done.load(Ordering::Relaxed);
        let mut bad: Vec<_> = failed_files
            .into_inner()
            .expect("lock")
            .into_iter()
            .collect();
        bad.sort();
        for (i, msg) in bad {
            let src: Vec<u8> = conn
                .query_row("SELECT path FROM main.entries WHERE rowid = ?1", [i], |r| {
                    r.get(0)
                })
                .db(mpath)?;
            let _ = fs::remove_file(self.dest(&src));
            failed.push(i);
            s.files -= 1;
            failures.push(format!("{}: {msg}; the file was not restored", shown(&src)));
        }
        drop_failed(&conn, &mut failed)?;

        // 4. Hard links to files now complete, then symlinks and special
        //    files.
        {
            let mut st = conn.prepare(Q_LINKS).db(ppath)?;
            let mut rows = st.query([]).db(ppath)?;
            while let Some(r) = rows.next().db(ppath)? {
                let i: i64 = r.get(0).db(ppath)?;
                let src: Vec<u8> = r.get(1).db(ppath)?;
                let size = r.get::<_, i64>(2).db(ppath)? as u64;
                let first: Vec<u8> = r.get(3).db(ppath)?;
                let first_ok: bool = r.get(4).db(ppath)?;
                if !first_ok {
                    failed.push(i);
                    failures.push(format!(
                        "{}: not restored: it is a hard link of {}, which was not restored",
                        shown(&src),
                        shown(&first)
                    ));
                    continue;
                }
                let dest = self.dest(&src);
                let made = self.ensure_parent(&dest, &mut dirs_ok).and_then(|_| {
                    let first = self.dest(&first);
                    replacing(&dest, "create hard link", || fs::hard_link(&first, &dest))
                });
                match made {
                    Ok(()) => {
                        s.files += 1;
                        s.bytes += size;
                    }
                    Err(err) => {
                        failed.push(i);
                        failures.push(format!("{}: {err}", shown(&src)));
                    }
                }
            }
        }
        drop_failed(&conn, &mut failed)?;
        {
            let mut st = conn.prepare(Q_OTHER).db(ppath)?;
            let mut rows = st.query([]).db(ppath)?;
            while let Some(r) = rows.next().db(ppath)? {
                let i: i64 = r.get(0).db(ppath)?;
                let src: Vec<u8> = r.get(1).db(ppath)?;
                let kind = Kind::from_i64(r.get(2).db(ppath)?).unwrap_or(Kind::Socket);
                let target: Option<Vec<u8>> = r.get(3).db(ppath)?;
                let rdev = r.get::<_, i64>(4).db(ppath)? as u64;
                let dest = self.dest(&src);
                let made = match kind {
                    Kind::Symlink => self.ensure_parent(&dest, &mut dirs_ok).and_then(|_| {
                        let t = OsStr::from_bytes(target.as_deref().unwrap_or_default());
                        replacing(&dest, "create symlink", || {
                            std::os::unix::fs::symlink(t, &dest)
                        })?;
                        s.symlinks += 1;
                        Ok(())
                    }),
                    Kind::Fifo | Kind::CharDev | Kind::BlockDev => {
                        if kind != Kind::Fifo && !as_root {
                            (self.warn)(&format!(
                                "{}: device node not restored (needs root)",
                                shown(&src)
                            ));
                            failed.push(i);
                            continue;
                        }
                        self.ensure_parent(&dest, &mut dirs_ok).and_then(|_| {
                            let fmt = match kind {
                                Kind::Fifo => libc::S_IFIFO,
                                Kind::CharDev => libc::S_IFCHR,
                                _ => libc::S_IFBLK,
                            };
                            let c = cstr(&dest)?;
                            replacing(&dest, "create special file", || {
                                // SAFETY: c is a valid NUL-terminated path.
                                let rc = unsafe {
                                    libc::mknod(c.as_ptr(), fmt | 0o600, rdev as libc::dev_t)
                                };
                                if rc == 0 {
                                    Ok(())
                                } else {
                                    Err(io::Error::last_os_error())
                                }
                            })?;
                            s.other += 1;
                            Ok(())
                        })
                    }
                    // Sockets belong to the process that listens on them.
                    _ => {
                        failed.push(i);
                        continue;
                    }
                };
                if let Err(err) = made {
                    failures.push(format!("{}: {err}", shown(&src)));
                    failed.push(i);
                }
            }
        }
        drop_failed(&conn, &mut failed)?;

        // 5. Owners, modes and times; directories last, deepest first.
        // Three syscalls per entry: batches go to threads as they are read.
        {
            let errs = Mutex::new(Vec::new());
            let read = fan_out(
                |tx| {
                    let mut st = conn.prepare(Q_ATTRS).db(ppath)?;
                    let mut rows = st.query([]).db(ppath)?;
                    let mut batch = Vec::with_capacity(ATTR_BATCH);
                    while let Some(r) = rows.next().db(ppath)? {
                        batch.push((r.get(0).db(ppath)?, Attrs::from_row(r, 1).db(ppath)?));
                        if batch.len() == ATTR_BATCH {
                            let full =
                                std::mem::replace(&mut batch, Vec::with_capacity(ATTR_BATCH));
                            if tx.send(full).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    if !batch.is_empty() {
                        let _ = tx.send(batch);
                    }
                    Ok(())
                },
                |batch: Vec<(Vec<u8>, Attrs)>| {
                    for (src, a) in batch {
                        if let Err(err) = set_attrs(&a, &self.dest(&src), as_root) {
                            let msg = format!("{}: {err}", shown(&src));
                            errs.lock().expect("lock").push(msg);
                        }
                    }
                },
            );
            read?;
            failures.extend(errs.into_inner().expect("lock"));
        }
        {
            let mut st = conn.prepare(Q_DIRS_DOWN).db(ppath)?;
            let mut rows = st.query([]).db(ppath)?;
            while let Some(r) = rows.next().db(ppath)? {
                let src: Vec<u8> = r.get(0).db(ppath)?;
                let a = Attrs::from_row(r, 1).db(ppath)?;
                if let Err(err) = set_attrs(&a, &self.dest(&src), as_root) {
                    failures.push(format!("{}: {err}", shown(&src)));
                }
            }
        }

        s.seconds = started.elapsed().as_secs_f64();
        if !failures.is_empty() {
            for f in &failures {
                (self.warn)(f);
            }
            return Err(Error::Partial {
                failed: failures.len(),
                what: "could not be restored",
            });
        }
        Ok(s)
    }

    /// Stream the jobs in blob and offset order into read units: chunks of
    /// one blob closer than `MERGE_GAP`, up to `UNIT_BYTES` and `UNIT_JOBS`
    /// per unit. The jobs are cut into `THREADS` ranges read side by side,
    /// one unit from each in turn, so that the threads work on different
    /// parts of the snapshot: neighbouring units write files into the same
    /// directories, and creating files in one directory from six threads at
    /// once contends on its lock (+0.5 s for /usr/share).
    fn plan_units(
        &self,
        conn: &Connection,
        tx: &SyncSender<Unit>,
        stop: &AtomicBool,
    ) -> Result<()> {
        let ppath = Path::new("restore plan");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM plan.jobs", [], |r| r.get(0))
            .db(ppath)?;
        let mut bounds: Vec<(i64, i64)> = vec![(i64::MIN, i64::MIN)];
        {
            let mut at = conn.prepare(Q_JOB_AT).db(ppath)?;
            for k in 1..THREADS as i64 {
                let b: Option<(i64, i64)> = at
                    .query_row([k * n / THREADS as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .db(ppath)?;
                if let Some(b) = b {
                    if bounds.last().is_some_and(|l| *l < b) {
                        bounds.push(b);
                    }
                }
            }
        }
        bounds.push((i64::MAX, i64::MAX));
        let mut stmts = Vec::new();
        for _ in 1..bounds.len() {
            stmts.push(conn.prepare(Q_JOBS).db(ppath)?);
        }
        let mut cursors = Vec::new();
        for (st, w) in stmts.iter_mut().zip(bounds.windows(2)) {
            let (lo, hi) = (w[0], w[1]);
            cursors.push(Cursor {
                rows: st.query(params![lo.0, lo.1, hi.0, hi.1]).db(ppath)?,
                cur: None,
                last_dest: None,
                done: false,
            });
        }
        while cursors.iter().any(|c| !c.done) {
            for c in cursors.iter_mut().filter(|c| !c.done) {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                match self.next_unit(c)? {
                    Some(u) => {
                        if tx.send(u).is_err() {
                            return Ok(());
                        }
                    }
                    None => c.done = true,
                }
            }
        }
        Ok(())
    }

    /// The next complete unit of a cursor, or None at its end.
    fn next_unit(&self, c: &mut Cursor<'_>) -> Result<Option<Unit>> {
        let ppath = Path::new("restore plan");
        while let Some(r) = c.rows.next().db(ppath)? {
            let blob = r.get::<_, i64>(0).db(ppath)? as usize;
            let loc = Location {
                offset: r.get::<_, i64>(1).db(ppath)? as u64,
                length: r.get::<_, i64>(2).db(ppath)? as u64,
                size: r.get::<_, i64>(3).db(ppath)? as u64,
            };
            let chunk: Vec<u8> = r.get(4).db(ppath)?;
            let chunk = ChunkId::from_slice(&chunk)
                .ok_or_else(|| Error::corrupt("restore plan", "chunk id of the wrong length"))?;
            let file: i64 = r.get(5).db(ppath)?;
            let offset = r.get::<_, i64>(6).db(ppath)? as u64;
            let whole = if r.get::<_, bool>(7).db(ppath)? {
                Some(Attrs::from_row(r, 9).db(ppath)?)
            } else {
                None
            };
            let dest = match &c.last_dest {
                Some((f, d)) if *f == file => d.clone(),
                _ => {
                    let src: Vec<u8> = r.get(8).db(ppath)?;
                    let d: Arc<Path> = self.dest(&src).into();
                    c.last_dest = Some((file, d.clone()));
                    d
                }
            };
            let job = Job {
                loc,
                chunk,
                file,
                offset,
                whole,
                dest,
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
                if u.blob != blob
                    || gap > MERGE_GAP
                    || span > UNIT_BYTES
                    || u.jobs.len() >= UNIT_JOBS
                {
                    full = c.cur.take();
                }
            }
            c.cur
                .get_or_insert_with(|| Unit {
                    blob,
                    jobs: Vec::new(),
                })
                .jobs
                .push(job);
            if full.is_some() {
                return Ok(full);
            }
        }
        Ok(c.cur.take())
    }

    /// Where an entry goes (its source path was checked when loaded).
    fn dest(&self, src: &[u8]) -> PathBuf {
        dest_path(&self.target, src).expect("entry paths are checked when loaded")
    }

    fn read_unit(
        &self,
        u: &Unit,
        blobs: &[(String, u64)],
        as_root: bool,
        failed: &Mutex<HashMap<i64, String>>,
        done: &AtomicU64,
    ) -> Result<()> {
        let (key, size) = &blobs[u.blob];
        let mut reader = BlobReader::open(self.store, key, *size, &self.identities)?;
        let last = u.jobs.last().expect("units are not empty");
        reader.plan_range(last.loc.offset.saturating_add(last.loc.length));
        let mut open: Option<(i64, File)> = None;
        let mut i = 0;
        while i < u.jobs.len() {
            let j = &u.jobs[i];
            // Every job that wants this same chunk at this same place.
            let mut end = i + 1;
            while end < u.jobs.len() && u.jobs[end].loc.offset == j.loc.offset {
                end += 1;
            }
            match reader.read_chunk(&j.chunk, &j.loc) {
                Ok(data) => {
                    done.fetch_add(1, Ordering::Relaxed);
                    let zero = is_zero(data);
                    for t in &u.jobs[i..end] {
                        let dest = &*t.dest;
                        let w = (|| -> Result<()> {
                            if let Some(attrs) = &t.whole {
                                // The file is this chunk: create it now.
                                let f = create_fresh(dest)?;
                                if zero {
                                    f.set_len(data.len() as u64).at("size", dest)?;
                                } else {
                                    f.write_all_at(data, 0).at("write", dest)?;
                                }
                                return set_file_attrs(attrs, &f, dest, as_root);
                            }
                            if zero {
                                return Ok(());
                            }
                            if open.as_ref().is_none_or(|(f, _)| *f != t.file) {
                                let f = OpenOptions::new()
                                    .write(true)
                                    .custom_flags(libc::O_NOFOLLOW)
                                    .open(dest)
                                    .at("open", dest)?;
                                open = Some((t.file, f));
                            }
                            let (_, f) = open.as_ref().expect("just opened");
                            f.write_all_at(data, t.offset).at("write", dest)
                        })();
                        if let Err(err) = w {
                            failed
                                .lock()
                                .expect("lock")
                                .entry(t.file)
                                .or_insert_with(|| err.to_string());
                        }
                    }
                }
                Err(e @ Error::Key(_)) => return Err(e),
                Err(err) => {
                    let mut ff = failed.lock().expect("lock");
                    for t in &u.jobs[i..end] {
                        ff.entry(t.file).or_insert_with(|| err.to_string());
                    }
                }
            }
            i = end;
        }
        Ok(())
    }

    /// Create `dir` and its missing parents under the target, refusing to
    /// go through anything that is not a real directory.
    fn ensure_dir(&self, dir: &Path, ok: &mut DirCache) -> Result<()> {
        if ok.contains(dir) {
            return Ok(());
        }
        let rel = dir
            .strip_prefix(&self.target)
            .expect("destinations are under the target");
        let mut cur = self.target.clone();
        for c in rel.components() {
            cur.push(c);
            if ok.contains(&cur) {
                continue;
            }
            let mkdir = || fs::DirBuilder::new().mode(0o700).create(&cur);
            match mkdir() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    match fs::symlink_metadata(&cur) {
                        Ok(m) if m.is_dir() => {}
                        Ok(_) => {
                            // A file or symlink in the way: replace it, never
                            // follow it.
                            fs::remove_file(&cur).at("replace", &cur)?;
                            mkdir().at("create directory", &cur)?;
                        }
                        Err(e) => return Err(e).at("inspect", &cur),
                    }
                }
                Err(e) => return Err(e).at("create directory", &cur),
            }
            ok.insert(cur.clone());
        }
        Ok(())
    }

    fn ensure_parent(&self, path: &Path, ok: &mut DirCache) -> Result<()> {
        match path.parent() {
            Some(p) if path != self.target => self.ensure_dir(p, ok),
            _ => Err(Error::Setup(format!(
                "{}: cannot restore a non-directory as the target itself",
                path.display()
            ))),
        }
    }
}

use std::os::unix::fs::DirBuilderExt;

fn remove_existing(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir(path).at("replace", path),
        Ok(_) => fs::remove_file(path).at("replace", path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at("inspect", path),
    }
}

/// Make `path` with `make`, which fails if the name exists (symlinks
/// included, never followed); if it does, remove what is there and make it
/// again. Into an empty target that is one syscall per entry, where an
/// lstat first cost two.
fn replacing<T>(path: &Path, what: &'static str, make: impl Fn() -> io::Result<T>) -> Result<T> {
    match make() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            remove_existing(path)?;
            make().at(what, path)
        }
        made => made.at(what, path),
    }
}

/// A new, empty regular file (whatever was there is replaced).
fn create_fresh(path: &Path) -> Result<File> {
    replacing(path, "create", || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    })
}

fn is_zero(data: &[u8]) -> bool {
    let (head, words, tail) = unsafe { data.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Io {
        op: "use path",
        path: p.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"),
    })
}

fn set_attrs(e: &Attrs, dest: &Path, as_root: bool) -> Result<()> {
    // Never follow a symlink to something outside the target: what is at
    // the destination must be what this entry created.
    let m = fs::symlink_metadata(dest).at("inspect", dest)?;
    let ft = m.file_type();
    let expected = match e.kind {
        Kind::Dir => ft.is_dir(),
        Kind::File => ft.is_file(),
        Kind::Symlink => ft.is_symlink(),
        _ => !ft.is_symlink() && !ft.is_dir() && !ft.is_file(),
    };
    if !expected {
        return Err(Error::Setup(format!(
            "{}: not the {:?} restored there; attributes not set",
            dest.display(),
            e.kind
        )));
    }
    if as_root {
        std::os::unix::fs::lchown(dest, Some(e.uid), Some(e.gid)).at("set owner of", dest)?;
    }
    if e.kind != Kind::Symlink {
        fs::set_permissions(dest, fs::Permissions::from_mode(e.mode)).at("set mode of", dest)?;
    }
    let c = cstr(dest)?;
    let times = e.times();
    // SAFETY: c is a valid NUL-terminated path and times has two elements.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).at("set times of", dest);
    }
    Ok(())
}

/// `set_attrs` for a regular file this restore has just created and
/// written, through its open descriptor (no lookups, nothing to check).
fn set_file_attrs(e: &Attrs, f: &File, dest: &Path, as_root: bool) -> Result<()> {
    if as_root {
        std::os::unix::fs::fchown(f, Some(e.uid), Some(e.gid)).at("set owner of", dest)?;
    }
    f.set_permissions(fs::Permissions::from_mode(e.mode))
        .at("set mode of", dest)?;
    let times = e.times();
    // SAFETY: the descriptor is open and times has two elements.
    if unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error()).at("set times of", dest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        let t = Path::new("/restore");
        assert_eq!(
            dest_path(t, b"/etc/passwd"),
            Some(PathBuf::from("/restore/etc/passwd"))
        );
        assert_eq!(
            dest_path(t, b"etc"),
            None,
            "relative paths are never recorded"
        );
        assert_eq!(dest_path(t, b"/"), Some(PathBuf::from("/restore")));
        for bad in [
            &b"/../x"[..],
            b"/a/../../x",
            b"/a//b",
            b"/a/./b",
            b"/a/",
            b"//etc",
            b"/a\0b",
        ] {
            assert_eq!(dest_path(t, bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn filters() {
        assert!(under(b"/etc/hosts", b"/etc"));
        assert!(under(b"/etc", b"/etc"));
        assert!(!under(b"/etcetera", b"/etc"));
        assert!(under(b"/x", b"/"));
        assert_eq!(normalize_filter("etc/"), b"/etc".to_vec());
    }

    #[test]
    fn the_plan_is_read_back_without_sorting() {
        // A sort would build a temporary b-tree in memory (temp_store is
        // MEMORY): memory would grow with the snapshot again.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::snapshot::META_SCHEMA).unwrap();
        conn.execute_batch("ATTACH DATABASE ':memory:' AS plan")
            .unwrap();
        conn.execute_batch(PLAN_SCHEMA).unwrap();
        for q in [
            Q_DIRS_UP,
            Q_FILES,
            Q_JOBS,
            Q_JOB_AT,
            Q_LINKS,
            Q_OTHER,
            Q_ATTRS,
            Q_DIRS_DOWN,
        ] {
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {q}")).unwrap();
            let plan: Vec<String> = st
                .query_map(
                    rusqlite::params_from_iter(std::iter::repeat_n(
                        rusqlite::types::Null,
                        st.parameter_count(),
                    )),
                    |r| r.get::<_, String>(3),
                )
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            assert!(
                !plan.iter().any(|l| l.contains("TEMP B-TREE")),
                "{q}\n{plan:#?}"
            );
            assert!(
                !plan.iter().any(|l| l.starts_with("SCAN e")),
                "entries are looked up by rowid, never scanned: {q}\n{plan:#?}"
            );
        }
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0; 1000]));
        let mut v = vec![0u8; 1000];
        v[999] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }
}
