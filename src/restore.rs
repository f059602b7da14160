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
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use age::x25519;
use rayon::prelude::*;
use rusqlite::OptionalExtension;

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
/// Read units are at most this much plaintext, so a single blob is still
/// read by several threads.
const UNIT_BYTES: u64 = 4 << 20;
/// Neighbouring chunks closer than this are read in one request.
const MERGE_GAP: u64 = 256 << 10;

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

struct REntry {
    /// Checked: absolute, no empty, `.` or `..` components (`dest_path`).
    src: Box<[u8]>,
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime_ns: i64,
    rdev: u64,
    target: Option<Box<[u8]>>,
    /// A file of one chunk: the writer creates it (saves an open).
    single: bool,
}

/// One chunk to write somewhere.
#[derive(Clone, Copy)]
struct Job {
    loc: Location,
    chunk: ChunkId,
    file: usize,
    offset: u64,
    /// The file is this one chunk: the writer creates it (saves an open).
    whole: bool,
}

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

impl Restore<'_> {
    pub fn run(&self, id: &str) -> Result<Summary> {
        let started = Instant::now();
        let conn =
            snapshot::open_metadata_at(self.store, id, &self.identities, Some(&self.target))?;
        let mpath = Path::new("snapshot metadata");
        let mut s = Summary {
            id: id.to_string(),
            ..Summary::default()
        };
        let mut failures: Vec<String> = Vec::new();

        // 1. Entries, checked and filtered; the chunks of each file located
        //    (in the metadata) and queued per blob. Entries are kept slim:
        //    destinations are derived from the checked source path on use.
        let filters: Vec<Vec<u8>> = self.paths.iter().map(|p| normalize_filter(p)).collect();
        let mut matched = vec![false; filters.len()];
        let mut entries: Vec<REntry> = Vec::new();
        let mut blobs: Vec<(String, u64)> = Vec::new();
        let mut blob_ids: HashMap<i64, usize> = HashMap::new();
        let mut per_blob: Vec<Vec<Job>> = Vec::new();
        let mut located: Vec<(ChunkId, usize, Location)> = Vec::new();
        // Files recorded as further links of an earlier path: (entry, path).
        let mut link_of: Vec<(usize, Box<[u8]>)> = Vec::new();
        {
            // Snapshots made before hard links were recorded have no column.
            let link = if conn.prepare("SELECT link FROM entries LIMIT 0").is_ok() {
                "link"
            } else {
                "NULL"
            };
            let mut st = conn
                .prepare(&format!(
                    "SELECT path, kind, mode, uid, gid, size, mtime_ns, rdev, target, chunks, {link}
                     FROM entries ORDER BY id"
                ))
                .db(mpath)?;
            let mut q = conn
                .prepare(
                    "SELECT c.blob, c.offset, c.length, c.size, b.key, b.size
                     FROM chunks c JOIN blobs b ON b.id = c.blob WHERE c.id = ?1",
                )
                .db(mpath)?;
            let mut rows = st.query([]).db(mpath)?;
            while let Some(r) = rows.next().db(mpath)? {
                let src: Vec<u8> = r.get(0).db(mpath)?;
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
                let shown = || String::from_utf8_lossy(&src).into_owned();
                if dest_path(&self.target, &src).is_none() {
                    failures.push(format!(
                        "{}: unsafe path in snapshot metadata, not restored",
                        shown()
                    ));
                    continue;
                }
                let kind = Kind::from_i64(r.get(1).db(mpath)?).ok_or_else(|| {
                    Error::corrupt(
                        "snapshot metadata",
                        format!("{}: unknown entry kind", shown()),
                    )
                })?;
                let size: i64 = r.get(5).db(mpath)?;
                let chunks: Option<Vec<u8>> = r.get(9).db(mpath)?;
                let chunks = chunks.unwrap_or_default();
                if size < 0 || chunks.len() % 32 != 0 {
                    failures.push(format!("{}: malformed entry in snapshot metadata", shown()));
                    continue;
                }
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
                                per_blob.push(Vec::new());
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
                            shown()
                        ));
                        continue;
                    }
                    if let Some(first) = r.get::<_, Option<Vec<u8>>>(10).db(mpath)? {
                        link_of.push((entries.len(), first.into_boxed_slice()));
                    }
                    let whole = located.len() == 1;
                    let mut offset = 0u64;
                    for &(chunk, bi, loc) in &located {
                        per_blob[bi].push(Job {
                            loc,
                            chunk,
                            file: entries.len(),
                            offset,
                            whole,
                        });
                        offset += loc.size;
                    }
                }
                entries.push(REntry {
                    src: src.into_boxed_slice(),
                    kind,
                    mode: r.get::<_, i64>(2).db(mpath)? as u32 & 0o7777,
                    uid: r.get::<_, i64>(3).db(mpath)? as u32,
                    gid: r.get::<_, i64>(4).db(mpath)? as u32,
                    size: size as u64,
                    mtime_ns: r.get(6).db(mpath)?,
                    rdev: r.get::<_, i64>(7).db(mpath)? as u64,
                    target: r
                        .get::<_, Option<Vec<u8>>>(8)
                        .db(mpath)?
                        .map(Vec::into_boxed_slice),
                    single: kind == Kind::File && chunks.len() == 32,
                });
            }
        }
        drop(conn);
        for (f, m) in self.paths.iter().zip(&matched) {
            if !m {
                return Err(Error::Usage(format!("path {f} is not in snapshot {id}")));
            }
        }

        // 2. Two entries for one path (forged metadata): only the first.
        // Checked paths map one-to-one to destinations.
        let mut skip: Vec<bool> = vec![false; entries.len()];
        {
            let mut order: Vec<u32> = (0..entries.len() as u32).collect();
            order.sort_unstable_by(|&a, &b| {
                entries[a as usize]
                    .src
                    .cmp(&entries[b as usize].src)
                    .then(a.cmp(&b))
            });
            for w in order.windows(2) {
                let (a, b) = (w[0] as usize, w[1] as usize);
                if entries[a].src == entries[b].src {
                    skip[b] = true;
                    failures.push(format!(
                        "{}: duplicate path in snapshot metadata, not restored",
                        String::from_utf8_lossy(&entries[b].src)
                    ));
                }
            }
        }

        // Hard links: a file recorded as a further link of an earlier path
        // that is restored too becomes a link to it (its own chunks are not
        // written); otherwise it is restored as a file of its own.
        let mut as_link = vec![false; entries.len()];
        let mut hard: Vec<(usize, usize)> = Vec::new();
        if !link_of.is_empty() {
            let is_link: HashSet<usize> = link_of.iter().map(|(i, _)| *i).collect();
            let wanted: HashSet<&[u8]> = link_of.iter().map(|(_, p)| &**p).collect();
            let mut first_of: HashMap<&[u8], usize> = HashMap::new();
            for (j, e) in entries.iter().enumerate() {
                if e.kind == Kind::File
                    && !skip[j]
                    && !is_link.contains(&j)
                    && wanted.contains(&*e.src)
                {
                    first_of.entry(&e.src).or_insert(j);
                }
            }
            for (i, p) in &link_of {
                if let Some(&t) = first_of.get(&**p) {
                    if t != *i && !skip[*i] {
                        as_link[*i] = true;
                        hard.push((*i, t));
                    }
                }
            }
        }

        // 3. Directories, then files (pre-sized, so holes stay holes).
        fs::create_dir_all(&self.target).at("create target directory", &self.target)?;
        let mut dirs_ok: HashSet<PathBuf> = HashSet::new();
        dirs_ok.insert(self.target.clone());
        for (i, e) in entries.iter().enumerate() {
            if e.kind != Kind::Dir || skip[i] {
                continue;
            }
            if let Err(err) = self.ensure_dir(&self.dest(e), &mut dirs_ok) {
                failures.push(format!("{}: {err}", String::from_utf8_lossy(&e.src)));
                skip[i] = true;
            } else {
                s.dirs += 1;
            }
        }
        for (i, e) in entries.iter().enumerate() {
            if e.kind != Kind::File || skip[i] || as_link[i] {
                continue;
            }
            let dest = self.dest(e);
            let made = self.ensure_parent(&dest, &mut dirs_ok).and_then(|_| {
                if e.single {
                    // One chunk: created when its chunk is written.
                    return remove_existing(&dest);
                }
                let f = create_fresh(&dest)?;
                f.set_len(e.size).at("size", &dest)
            });
            if let Err(err) = made {
                failures.push(format!("{}: {err}", String::from_utf8_lossy(&e.src)));
                skip[i] = true;
                continue;
            }
            s.files += 1;
            s.bytes += e.size;
        }

        // 4. Plan read units and run them in parallel.
        let mut units: Vec<Unit> = Vec::new();
        for (bi, mut jobs) in per_blob.into_iter().enumerate() {
            jobs.retain(|j| !skip[j.file] && !as_link[j.file]);
            jobs.sort_by_key(|j| (j.loc.offset, j.file, j.offset));
            let mut cur: Vec<Job> = Vec::new();
            for j in jobs {
                if let (Some(first), Some(last)) = (cur.first(), cur.last()) {
                    let gap = j
                        .loc
                        .offset
                        .saturating_sub(last.loc.offset + last.loc.length);
                    let span = j.loc.offset + j.loc.length - first.loc.offset;
                    if gap > MERGE_GAP || span > UNIT_BYTES {
                        units.push(Unit {
                            blob: bi,
                            jobs: std::mem::take(&mut cur),
                        });
                    }
                }
                cur.push(j);
            }
            if !cur.is_empty() {
                units.push(Unit {
                    blob: bi,
                    jobs: cur,
                });
            }
        }
        let failed_files: Mutex<HashMap<usize, String>> = Mutex::new(HashMap::new());
        let chunks_done = AtomicU64::new(0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(THREADS)
            .build()
            .map_err(|e| Error::Setup(format!("cannot start restore threads: {e}")))?;
        let fatal: Mutex<Option<Error>> = Mutex::new(None);
        pool.install(|| {
            units.par_iter().for_each(|u| {
                if let Err(e) = self.read_unit(u, &blobs, &entries, &failed_files, &chunks_done) {
                    // A wrong key fails every unit the same way: stop early.
                    if matches!(e, Error::Key(_)) {
                        fatal.lock().expect("lock").get_or_insert(e);
                    } else {
                        let mut ff = failed_files.lock().expect("lock");
                        for j in &u.jobs {
                            ff.entry(j.file).or_insert_with(|| e.to_string());
                        }
                    }
                }
            })
        });
        if let Some(e) = fatal.into_inner().expect("lock") {
            return Err(e);
        }
        s.chunks = chunks_done.load(Ordering::Relaxed);
        let failed_files = failed_files.into_inner().expect("lock");
        let mut bad: Vec<_> = failed_files.into_iter().collect();
        bad.sort();
        for (i, msg) in bad {
            let e = &entries[i];
            let _ = fs::remove_file(self.dest(e));
            skip[i] = true;
            s.files -= 1;
            failures.push(format!(
                "{}: {msg}; the file was not restored",
                String::from_utf8_lossy(&e.src)
            ));
        }

        // 5. Hard links to files now complete, then symlinks and special
        // files.
        for &(i, t) in &hard {
            let (e, first) = (&entries[i], &entries[t]);
            if skip[t] {
                skip[i] = true;
                failures.push(format!(
                    "{}: not restored: it is a hard link of {}, which was not restored",
                    String::from_utf8_lossy(&e.src),
                    String::from_utf8_lossy(&first.src)
                ));
                continue;
            }
            let dest = self.dest(e);
            let made = self.ensure_parent(&dest, &mut dirs_ok).and_then(|_| {
                remove_existing(&dest)?;
                fs::hard_link(self.dest(first), &dest).at("create hard link", &dest)
            });
            match made {
                Ok(()) => {
                    s.files += 1;
                    s.bytes += e.size;
                }
                Err(err) => {
                    skip[i] = true;
                    failures.push(format!("{}: {err}", String::from_utf8_lossy(&e.src)));
                }
            }
        }
        let as_root = unsafe { libc::geteuid() } == 0;
        for (i, e) in entries.iter().enumerate() {
            if skip[i] || matches!(e.kind, Kind::File | Kind::Dir) {
                continue;
            }
            let dest = self.dest(e);
            let r = match e.kind {
                Kind::Symlink => self.ensure_parent(&dest, &mut dirs_ok).and_then(|_| {
                    remove_existing(&dest)?;
                    let t = e.target.as_deref().unwrap_or_default();
                    std::os::unix::fs::symlink(OsStr::from_bytes(t), &dest)
                        .at("create symlink", &dest)?;
                    s.symlinks += 1;
                    Ok(())
                }),
                Kind::Fifo | Kind::CharDev | Kind::BlockDev => {
                    if e.kind != Kind::Fifo && !as_root {
                        (self.warn)(&format!(
                            "{}: device node not restored (needs root)",
                            String::from_utf8_lossy(&e.src)
                        ));
                        skip[i] = true;
                        continue;
                    }
                    self.ensure_parent(&dest, &mut dirs_ok).and_then(|_| {
                        remove_existing(&dest)?;
                        let fmt = match e.kind {
                            Kind::Fifo => libc::S_IFIFO,
                            Kind::CharDev => libc::S_IFCHR,
                            _ => libc::S_IFBLK,
                        };
                        let c = cstr(&dest)?;
                        // SAFETY: c is a valid NUL-terminated path.
                        let rc =
                            unsafe { libc::mknod(c.as_ptr(), fmt | 0o600, e.rdev as libc::dev_t) };
                        if rc != 0 {
                            return Err(io::Error::last_os_error())
                                .at("create special file", &dest);
                        }
                        s.other += 1;
                        Ok(())
                    })
                }
                // Sockets belong to the process that listens on them.
                Kind::Socket => {
                    skip[i] = true;
                    continue;
                }
                _ => continue,
            };
            if let Err(err) = r {
                failures.push(format!("{}: {err}", String::from_utf8_lossy(&e.src)));
                skip[i] = true;
            }
        }

        // 6. Owners, modes and times; directories last, deepest first.
        // Three syscalls per entry: spread them over the pool.
        let attr_failures: Vec<String> = pool.install(|| {
            entries
                .par_iter()
                .enumerate()
                // A hard link shares its inode with the first path.
                .filter(|(i, e)| !skip[*i] && !as_link[*i] && e.kind != Kind::Dir)
                .filter_map(|(_, e)| {
                    set_attrs(e, &self.dest(e), as_root)
                        .err()
                        .map(|err| format!("{}: {err}", String::from_utf8_lossy(&e.src)))
                })
                .collect()
        });
        failures.extend(attr_failures);
        let mut dirs: Vec<usize> = (0..entries.len())
            .filter(|&i| !skip[i] && entries[i].kind == Kind::Dir)
            .collect();
        dirs.sort_by_key(|&i| std::cmp::Reverse(entries[i].src.split(|b| *b == b'/').count()));
        for i in dirs {
            let e = &entries[i];
            if let Err(err) = set_attrs(e, &self.dest(e), as_root) {
                failures.push(format!("{}: {err}", String::from_utf8_lossy(&e.src)));
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

    /// Where an entry goes (its source path was checked when loaded).
    fn dest(&self, e: &REntry) -> PathBuf {
        dest_path(&self.target, &e.src).expect("entry paths are checked when loaded")
    }

    fn read_unit(
        &self,
        u: &Unit,
        blobs: &[(String, u64)],
        entries: &[REntry],
        failed: &Mutex<HashMap<usize, String>>,
        done: &AtomicU64,
    ) -> Result<()> {
        let (key, size) = &blobs[u.blob];
        let mut reader = BlobReader::open(self.store, key, *size, &self.identities)?;
        let last = u.jobs.last().expect("units are not empty");
        reader.plan_range(last.loc.offset + last.loc.length);
        let mut open: Option<(usize, File)> = None;
        let mut i = 0;
        while i < u.jobs.len() {
            let j = u.jobs[i];
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
                        let dest = self.dest(&entries[t.file]);
                        let w = (|| -> Result<()> {
                            if t.whole {
                                // The file is this chunk: create it now.
                                let f = create_fresh(&dest)?;
                                return if zero {
                                    f.set_len(data.len() as u64).at("size", &dest)
                                } else {
                                    f.write_all_at(data, 0).at("write", &dest)
                                };
                            }
                            if zero {
                                return Ok(());
                            }
                            if open.as_ref().is_none_or(|(f, _)| *f != t.file) {
                                let f = OpenOptions::new()
                                    .write(true)
                                    .custom_flags(libc::O_NOFOLLOW)
                                    .open(&dest)
                                    .at("open", &dest)?;
                                open = Some((t.file, f));
                            }
                            let (_, f) = open.as_ref().expect("just opened");
                            f.write_all_at(data, t.offset).at("write", &dest)
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
    fn ensure_dir(&self, dir: &Path, ok: &mut HashSet<PathBuf>) -> Result<()> {
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
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    // A file or symlink in the way: replace it, never follow it.
                    fs::remove_file(&cur).at("replace", &cur)?;
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&cur)
                        .at("create directory", &cur)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::DirBuilder::new()
                        .mode(0o700)
                        .create(&cur)
                        .at("create directory", &cur)?;
                }
                Err(e) => return Err(e).at("inspect", &cur),
            }
            ok.insert(cur.clone());
        }
        Ok(())
    }

    fn ensure_parent(&self, path: &Path, ok: &mut HashSet<PathBuf>) -> Result<()> {
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

/// A new, empty regular file (whatever was there is replaced, never followed).
fn create_fresh(path: &Path) -> Result<File> {
    remove_existing(path)?;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at("create", path)
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

fn set_attrs(e: &REntry, dest: &Path, as_root: bool) -> Result<()> {
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
    let ts = libc::timespec {
        tv_sec: e.mtime_ns.div_euclid(1_000_000_000) as _,
        tv_nsec: e.mtime_ns.rem_euclid(1_000_000_000) as libc::c_long,
    };
    let times = [ts, ts];
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
    fn zero_detection() {
        assert!(is_zero(&[0; 1000]));
        let mut v = vec![0u8; 1000];
        v[999] = 1;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }
}
