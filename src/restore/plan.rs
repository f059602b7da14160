//! The restore plan: the snapshot's entries, checked, as a tree of nodes
//! (each a parent node and one name), with the chunks to write in blob and
//! offset order. Kept in a scratch database attached to the spilled
//! metadata (an unlinked 0600 file in the target), so that memory does
//! not grow with the number of entries or chunks.
//!
//! Every entry is placed under a directory node: one the snapshot records,
//! or one made for it as a parent (a restore of single paths, or forged
//! metadata that lacks it). A path that is already a directory's (a
//! parent of other entries) can only be that directory; a second entry
//! for a path, or an entry below something that is not a directory, is
//! refused and named. So the tree the restore builds is the plan's, with
//! no entry able to turn a directory into something else after the fact.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::blob::Location;
use crate::chunk::{self, ChunkId, Piece};
use crate::error::{DbContext, Error, Result};
use crate::layout;
use crate::snapshot::Kind;

/// - `nodes`: what to make, node 0 being the target itself; `entry` is the
///   snapshot's row (NULL for a directory made only as a parent), `link`
///   the node a further hard link links to; `single`: a file of one chunk
///   (and no hard link's first path), made and finished by the thread that
///   writes its chunk;
/// - `paths`: every path once, with its node;
/// - `made`: the identity (device, inode) of every node made so far;
/// - `jobs`: every chunk to write, in blob and offset order (the primary
///   key: read back in order without a sort);
/// - `pending`: files of more than one chunk, with how many `jobs` write
///   them; `state` 1 once the content phase has met them (it tracks some
///   to finish each as soon as its last chunk is in), 2 once finished so
///   (owner, mode and times set).
pub const SCHEMA: &str = "
CREATE TABLE plan.nodes(
    id INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    kind INTEGER NOT NULL,
    entry INTEGER,
    link INTEGER,
    depth INTEGER NOT NULL,
    single INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX plan.dirs ON nodes(depth) WHERE kind = 1;
CREATE TABLE plan.paths(
    path BLOB PRIMARY KEY,
    node INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    first INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE plan.made(
    node INTEGER PRIMARY KEY,
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL
);
CREATE TABLE plan.jobs(
    blob INTEGER NOT NULL,
    boffset INTEGER NOT NULL,
    node INTEGER NOT NULL,
    foffset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    size INTEGER NOT NULL,
    chunk BLOB NOT NULL,
    PRIMARY KEY (blob, boffset, node, foffset)
) WITHOUT ROWID;
CREATE TABLE plan.pending(
    node INTEGER PRIMARY KEY,
    jobs INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0
);
INSERT INTO plan.nodes(id, parent, name, kind, depth, single, size) VALUES (0, 0, x'', 1, 0, 0, 0);
INSERT INTO plan.paths(path, node, kind, first) VALUES (x'2f', 0, 0, 0);
";

/// The plan's queries that walk many rows. None of them sorts (checked by
/// a test): each follows a primary key or index.
pub const Q_DIRS_UP: &str = "SELECT n.id, n.parent, n.name, n.entry IS NOT NULL,
     coalesce(e.path, x'') FROM plan.nodes n LEFT JOIN main.entries e ON e.rowid = n.entry
     WHERE n.kind = 1 AND n.depth > 0 ORDER BY n.depth";
pub const Q_FILES: &str = "SELECT n.id, n.parent, n.name, n.size, n.single, e.path
     FROM plan.nodes n JOIN main.entries e ON e.rowid = n.entry
     WHERE n.kind = 2 AND n.link IS NULL ORDER BY n.id";
pub const Q_JOBS: &str = "SELECT j.blob, j.boffset, j.length, j.size, j.chunk, j.node, j.foffset,
     n.single, n.parent, n.name, m.dev, m.ino, e.kind, e.mode, e.uid, e.gid, e.mtime_ns
     FROM plan.jobs j JOIN plan.nodes n ON n.id = j.node
     LEFT JOIN plan.made m ON m.node = j.node
     JOIN main.entries e ON e.rowid = n.entry
     WHERE (j.blob, j.boffset) >= (?1, ?2) AND (j.blob, j.boffset) < (?3, ?4)
     ORDER BY j.blob, j.boffset, j.node, j.foffset";
pub const Q_JOB_AT: &str =
    "SELECT blob, boffset FROM plan.jobs ORDER BY blob, boffset, node, foffset LIMIT 1 OFFSET ?1";
pub const Q_LINKS: &str = "SELECT n.id, n.parent, n.name, n.size, e.path,
     f.parent, f.name, fm.dev, fm.ino, t.path
     FROM plan.nodes n JOIN main.entries e ON e.rowid = n.entry
     JOIN plan.nodes f ON f.id = n.link JOIN main.entries t ON t.rowid = f.entry
     LEFT JOIN plan.made fm ON fm.node = n.link
     WHERE n.link IS NOT NULL ORDER BY n.id";
pub const Q_OTHER: &str = "SELECT n.id, n.parent, n.name, e.path,
     e.kind, e.mode, e.uid, e.gid, e.mtime_ns, e.target, e.rdev
     FROM plan.nodes n JOIN main.entries e ON e.rowid = n.entry
     WHERE n.kind NOT IN (1, 2) ORDER BY n.id";
/// (Files of one chunk had theirs set when written, and so had files
/// finished as their last chunk was written; hard links share their first
/// path's.)
pub const Q_ATTRS: &str = "SELECT n.parent, n.name, m.dev, m.ino, e.path,
     e.kind, e.mode, e.uid, e.gid, e.mtime_ns
     FROM plan.nodes n JOIN plan.made m ON m.node = n.id JOIN main.entries e ON e.rowid = n.entry
     WHERE n.kind != 1 AND n.link IS NULL AND NOT n.single
     AND NOT EXISTS (SELECT 1 FROM plan.pending p WHERE p.node = n.id AND p.state = 2)
     ORDER BY n.id";
pub const Q_DIRS_DOWN: &str = "SELECT n.id, e.path, e.kind, e.mode, e.uid, e.gid, e.mtime_ns
     FROM plan.nodes n JOIN plan.made m ON m.node = n.id JOIN main.entries e ON e.rowid = n.entry
     WHERE n.kind = 1 ORDER BY n.depth DESC";
/// Where a directory node is, for reopening it.
pub const Q_NODE: &str = "SELECT n.parent, n.name, m.dev, m.ino FROM plan.nodes n
     LEFT JOIN plan.made m ON m.node = n.id WHERE n.id = ?1";

pub const PLAN: &str = "restore plan";
pub const META: &str = "snapshot metadata";

pub fn ppath() -> &'static Path {
    Path::new(PLAN)
}

pub fn mpath() -> &'static Path {
    Path::new(META)
}

/// A snapshot path with control characters escaped, for messages.
pub fn shown(p: &[u8]) -> String {
    crate::error::one_line(String::from_utf8_lossy(p).into_owned())
}

/// Forged paths can be anything: at most this many components.
const DEPTH_MAX: usize = 4096;

/// The components of an absolute snapshot path, or None when the path
/// could escape (`..`, `.`, empty components, NUL) or is too deep. `/` has
/// none.
pub fn components(src: &[u8]) -> Option<Vec<&[u8]>> {
    // Snapshots record absolute paths only; anything else is forged.
    let rel = src.strip_prefix(b"/")?;
    if rel.is_empty() {
        return Some(Vec::new());
    }
    let parts: Vec<&[u8]> = rel.split(|b| *b == b'/').collect();
    let bad = |c: &&[u8]| c.is_empty() || *c == b"." || *c == b".." || c.contains(&0);
    if parts.iter().any(bad) || parts.len() > DEPTH_MAX {
        return None;
    }
    Some(parts)
}

/// `p` (a `/`-separated path) without its last component.
fn parent_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|b| *b == b'/') {
        Some(0) => b"/",
        Some(i) => &p[..i],
        None => b"/",
    }
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

/// What building the plan found.
pub struct Built {
    /// The blobs the jobs read, by index: key and size.
    pub blobs: Vec<(String, u64)>,
    /// Entries refused, with why.
    pub failures: super::Failures,
}

/// One entry of the snapshot, as read.
struct Row {
    rowid: i64,
    src: Vec<u8>,
    kind: Kind,
    size: i64,
    chunks: Vec<u8>,
    /// A further hard link's first path.
    link: Option<Vec<u8>>,
}

/// Build the plan from the metadata (every entry, in row order), keeping
/// only what is under `paths` when any are given.
pub fn build(conn: &Connection, paths: &[String], id: &str) -> Result<Built> {
    let (mpath, ppath) = (mpath(), ppath());
    let filters: Vec<Vec<u8>> = paths.iter().map(|p| normalize_filter(p)).collect();
    let mut matched = vec![false; filters.len()];
    conn.execute_batch("BEGIN").db(ppath)?;
    let built = {
        let link = crate::snapshot::link_column(conn, "main");
        let mut st = conn
            .prepare(&format!(
                "SELECT rowid, path, kind, size, chunks, {link} FROM main.entries ORDER BY rowid"
            ))
            .db(mpath)?;
        let mut planner = Planner::new(conn)?;
        let mut rows = st.query([]).db(mpath)?;
        while let Some(r) = rows.next().db(mpath)? {
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
            let kind = Kind::from_i64(r.get(2).db(mpath)?).ok_or_else(|| {
                Error::corrupt(META, format!("{}: unknown entry kind", shown(&src)))
            })?;
            let chunks: Option<Vec<u8>> = r.get(4).db(mpath)?;
            planner.entry(Row {
                rowid: r.get(0).db(mpath)?,
                src,
                kind,
                size: r.get(3).db(mpath)?,
                chunks: chunks.unwrap_or_default(),
                link: r.get(5).db(mpath)?,
            })?;
        }
        Built {
            blobs: planner.locator.blobs,
            failures: planner.failures,
        }
    };
    conn.execute_batch("COMMIT").db(ppath)?;
    for (f, m) in paths.iter().zip(&matched) {
        if !m {
            return Err(Error::Usage(format!(
                "path {} is not in snapshot {id}",
                crate::error::one_line(f.clone())
            )));
        }
    }
    Ok(built)
}

/// Where the chunks of a snapshot are, as its metadata says: each chunk's
/// blob (an index into `blobs`, checked to be a blob's key) and place in
/// it. Forged metadata may say anything: a chunk without a location or in
/// a blob that is not one is an error; `inside` tells whether a chunk lies
/// within its blob.
pub struct Locator<'c> {
    st: rusqlite::Statement<'c>,
    /// The blobs met so far: key and size.
    pub blobs: Vec<(String, u64)>,
    /// The snapshot's blob ids, as indexes into `blobs`.
    ids: HashMap<i64, usize>,
}

impl<'c> Locator<'c> {
    pub fn new(conn: &'c Connection) -> Result<Locator<'c>> {
        Ok(Locator {
            st: conn
                .prepare(
                    "SELECT c.blob, c.offset, c.length, c.size, b.key, b.size
                     FROM main.chunks c JOIN main.blobs b ON b.id = c.blob WHERE c.id = ?1",
                )
                .db(mpath())?,
            blobs: Vec::new(),
            ids: HashMap::new(),
        })
    }

    /// The blob (index) and place of chunk `id`.
    pub fn locate(&mut self, id: &ChunkId) -> Result<(usize, Location)> {
        let row = self
            .st
            .query_row([&id.0[..]], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    Location::from_row(r, 1)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .optional()
            .db(mpath())?;
        let Some((bid, loc, key, bsize)) = row else {
            return Err(Error::corrupt(
                META,
                format!("chunk {} has no location", id.hex()),
            ));
        };
        if let Some(bi) = self.ids.get(&bid) {
            return Ok((*bi, loc));
        }
        if !layout::is_blob(&key) || bsize < 0 {
            return Err(Error::corrupt(
                META,
                format!("bad blob {}", crate::error::one_line(key)),
            ));
        }
        self.blobs.push((key, bsize as u64));
        self.ids.insert(bid, self.blobs.len() - 1);
        Ok((self.blobs.len() - 1, loc))
    }

    /// Whether `loc` lies within blob `bi` (forged offsets may be anything:
    /// never overflow).
    pub fn inside(&self, bi: usize, loc: &Location) -> bool {
        loc.offset
            .checked_add(loc.length)
            .is_some_and(|end| end <= self.blobs[bi].1)
    }
}

/// Places entries and queues their chunks.
struct Planner<'c> {
    conn: &'c Connection,
    tree: Tree<'c>,
    locator: Locator<'c>,
    add_job: rusqlite::Statement<'c>,
    /// The chunks of the file being planned: where each goes in the file,
    /// its id, blob and place in it.
    located: Vec<(u64, ChunkId, usize, Location)>,
    failures: super::Failures,
}

impl<'c> Planner<'c> {
    fn new(conn: &'c Connection) -> Result<Planner<'c>> {
        Ok(Planner {
            conn,
            tree: Tree::new(conn)?,
            locator: Locator::new(conn)?,
            add_job: conn
                .prepare(
                    "INSERT OR IGNORE INTO plan.jobs(blob, boffset, node, foffset, length, size, chunk)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .db(ppath())?,
            located: Vec::new(),
            failures: super::Failures::default(),
        })
    }

    fn refuse(&mut self, src: &[u8], why: &str) {
        self.failures.push(format!("{}: {why}", shown(src)));
    }

    /// Check, place and queue one entry.
    fn entry(&mut self, e: Row) -> Result<()> {
        let Some(parts) = components(&e.src) else {
            self.refuse(&e.src, "unsafe path in snapshot metadata, not restored");
            return Ok(());
        };
        if e.size < 0 || e.chunks.len() % chunk::RECORD != 0 {
            self.refuse(&e.src, "malformed entry in snapshot metadata");
            return Ok(());
        }
        if e.kind == Kind::File && !self.locate_chunks(&e)? {
            return Ok(());
        }
        let (node, link_to) = match self.tree.place(&e, &parts)? {
            Ok(p) => p,
            Err(why) => {
                self.refuse(&e.src, &format!("{why}, not restored"));
                return Ok(());
            }
        };
        // Holes queue nothing: the file is made empty and sized, so they
        // stay holes.
        if e.kind == Kind::File && link_to.is_none() {
            let mut jobs = 0;
            for (offset, chunk, bi, loc) in &self.located {
                jobs += self
                    .add_job
                    .execute(params![
                        *bi as i64,
                        loc.offset as i64,
                        node,
                        *offset as i64,
                        loc.length as i64,
                        loc.size as i64,
                        &chunk.0[..],
                    ])
                    .db(ppath())?;
            }
            let single = e.chunks.len() == chunk::RECORD && jobs == 1;
            if jobs > 0 && !single {
                self.conn
                    .prepare_cached(
                        "INSERT OR REPLACE INTO plan.pending(node, jobs) VALUES (?1, ?2)",
                    )
                    .db(ppath())?
                    .execute(params![node, jobs as i64])
                    .db(ppath())?;
            }
        }
        Ok(())
    }

    /// Where each chunk of file `e` is, and where it goes in the file
    /// (into `located`); false when the file is refused (named in
    /// `failures`).
    fn locate_chunks(&mut self, e: &Row) -> Result<bool> {
        self.located.clear();
        // The size must be what the chunks and holes add up to (no forged
        // giants: a hole may say anything, never overflow), and every
        // chunk must lie inside its blob.
        let mut sum = Some(0u64);
        for piece in chunk::pieces(&e.chunks) {
            let Some(at) = sum else { break };
            match piece {
                Piece::Chunk(id) => {
                    let (bi, loc) = self.locator.locate(&id)?;
                    self.located.push((at, id, bi, loc));
                    sum = at.checked_add(loc.size);
                }
                Piece::Hole(len) => sum = at.checked_add(len),
            }
        }
        if sum != Some(e.size as u64) {
            let why = format!("size {} does not match its chunks; not restored", e.size);
            self.refuse(&e.src, &why);
            return Ok(false);
        }
        let locator = &self.locator;
        if self
            .located
            .iter()
            .any(|(_, _, bi, l)| !locator.inside(*bi, l))
        {
            self.refuse(&e.src, "a chunk lies outside its blob; not restored");
            return Ok(false);
        }
        Ok(true)
    }
}

/// Places entries in the tree of nodes.
struct Tree<'c> {
    conn: &'c Connection,
    find: rusqlite::Statement<'c>,
    add_path: rusqlite::Statement<'c>,
    add_node: rusqlite::Statement<'c>,
    attach: rusqlite::Statement<'c>,
    attach_path: rusqlite::Statement<'c>,
    unsingle: rusqlite::Statement<'c>,
    /// The directories on the way to the last one placed (path, node):
    /// entries come in walk order, so an entry's parent is nearly always
    /// one of them, without a lookup.
    recent: Vec<(Vec<u8>, i64)>,
}

/// `paths.kind` of a directory made only as a parent.
const IMPLICIT: i64 = 0;

impl<'c> Tree<'c> {
    fn new(conn: &'c Connection) -> Result<Tree<'c>> {
        let p = ppath();
        Ok(Tree {
            conn,
            find: conn
                .prepare("SELECT node, kind, first FROM plan.paths WHERE path = ?1")
                .db(p)?,
            add_path: conn
                .prepare("INSERT INTO plan.paths(path, node, kind, first) VALUES (?1, ?2, ?3, ?4)")
                .db(p)?,
            add_node: conn
                .prepare(
                    "INSERT INTO plan.nodes(parent, name, kind, entry, link, depth, single, size)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .db(p)?,
            attach: conn
                .prepare("UPDATE plan.nodes SET entry = ?2 WHERE id = ?1 AND entry IS NULL")
                .db(p)?,
            attach_path: conn
                .prepare("UPDATE plan.paths SET kind = ?2 WHERE path = ?1")
                .db(p)?,
            unsingle: conn
                .prepare("UPDATE plan.nodes SET single = 0 WHERE id = ?1")
                .db(p)?,
            recent: Vec::new(),
        })
    }

    /// (node, kind, is the first path of a file, is a directory made only
    /// as a parent) of `path`, if placed.
    fn find(&mut self, path: &[u8]) -> Result<Option<(i64, i64, bool, bool)>> {
        let row = self
            .find
            .query_row([path], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get(2)?))
            })
            .optional()
            .db(ppath())?;
        Ok(row.map(|(n, k, first)| {
            let dir = Kind::Dir as i64;
            (n, if k == IMPLICIT { dir } else { k }, first, k == IMPLICIT)
        }))
    }

    /// The node of directory `dir` if it is one of `recent`.
    fn recent_dir(&mut self, dir: &[u8]) -> Option<i64> {
        while let Some((p, n)) = self.recent.last() {
            if p == dir {
                return Some(*n);
            }
            let below = dir.len() > p.len() && dir.starts_with(p) && dir[p.len()] == b'/';
            if below || p == b"/" {
                return None;
            }
            self.recent.pop();
        }
        None
    }

    /// A directory just placed: its entries come next.
    fn entered(&mut self, dir: &[u8], node: i64) {
        self.recent_dir(dir);
        self.recent.push((dir.to_vec(), node));
    }

    /// Add node `n` at `path`.
    fn add(&mut self, path: &[u8], n: NewNode<'_>) -> Result<i64> {
        let p = ppath();
        let NewNode {
            parent,
            name,
            kind,
            entry,
            link,
            depth,
            single,
            size,
        } = n;
        self.add_node
            .execute(params![
                parent,
                name,
                kind as i64,
                entry,
                link,
                depth as i64,
                single,
                size as i64
            ])
            .db(p)?;
        let node = self.conn.last_insert_rowid();
        let first = kind == Kind::File && link.is_none() && entry.is_some();
        let k = if entry.is_none() {
            IMPLICIT
        } else {
            kind as i64
        };
        self.add_path.execute(params![path, node, k, first]).db(p)?;
        if kind == Kind::Dir {
            self.entered(path, node);
        }
        Ok(node)
    }

    /// The directory node of `dir` (a path whose components are `parts`),
    /// made as a parent where the snapshot has none; Err when something
    /// that is not a directory is there.
    fn dir_node(
        &mut self,
        dir: &[u8],
        parts: &[&[u8]],
    ) -> Result<std::result::Result<i64, String>> {
        if let Some(n) = self.recent_dir(dir) {
            return Ok(Ok(n));
        }
        // Up to the nearest placed ancestor, then down, making each.
        let mut missing = 0;
        let mut at = dir;
        let mut node = loop {
            match self.find(at)? {
                Some((n, k, _, _)) if k == Kind::Dir as i64 => break n,
                Some(_) => {
                    return Ok(Err(format!(
                        "{} is not a directory in this snapshot",
                        shown(at)
                    )));
                }
                None => {
                    missing += 1;
                    at = parent_of(at);
                }
            }
        };
        let depth = parts.len();
        for k in (0..missing).rev() {
            // The ancestor with `depth - k` components.
            let n = depth - k;
            let path = join(&parts[..n]);
            let made = NewNode {
                parent: node,
                name: parts[n - 1],
                kind: Kind::Dir,
                entry: None,
                link: None,
                depth: n,
                single: false,
                size: 0,
            };
            node = self.add(&path, made)?;
        }
        Ok(Ok(node))
    }

    /// Place entry `e` (its path's components are `parts`): its node, and
    /// the node a hard link links to. Err(why) when it cannot be placed.
    fn place(
        &mut self,
        e: &Row,
        parts: &[&[u8]],
    ) -> Result<std::result::Result<(i64, Option<i64>), String>> {
        let (src, kind) = (e.src.as_slice(), e.kind);
        if let Some((node, k, _, implicit)) = self.find(src)? {
            // Only a directory made as a parent can become an entry, and
            // only a directory entry.
            if implicit && k == Kind::Dir as i64 && kind == Kind::Dir {
                self.attach.execute(params![node, e.rowid]).db(ppath())?;
                self.attach_path
                    .execute(params![src, Kind::Dir as i64])
                    .db(ppath())?;
                self.entered(src, node);
                return Ok(Ok((node, None)));
            }
            return Ok(Err("duplicate path in snapshot metadata".into()));
        }
        let Some((name, dirs)) = parts.split_last() else {
            // `/` is placed from the start (node 0, the target).
            return Ok(Err("duplicate path in snapshot metadata".into()));
        };
        let parent = match self.dir_node(parent_of(src), dirs)? {
            Ok(p) => p,
            Err(why) => return Ok(Err(why)),
        };
        // Hard links: a file recorded as a further link of an earlier path
        // that is restored too becomes a link to it (its own chunks are
        // not written); otherwise it is restored as a file of its own.
        let mut link_to = None;
        if let (Kind::File, Some(p)) = (kind, &e.link) {
            if let Some((first, _, true, _)) = self.find(p)? {
                self.unsingle.execute([first]).db(ppath())?;
                link_to = Some(first);
            }
        }
        let node = self.add(
            src,
            NewNode {
                parent,
                name,
                kind,
                entry: Some(e.rowid),
                link: link_to,
                depth: parts.len(),
                single: kind == Kind::File
                    && link_to.is_none()
                    && e.chunks.len() == chunk::RECORD
                    && matches!(chunk::pieces(&e.chunks).next(), Some(Piece::Chunk(_))),
                size: e.size as u64,
            },
        )?;
        Ok(Ok((node, link_to)))
    }
}

/// A node to add to the plan.
struct NewNode<'n> {
    parent: i64,
    name: &'n [u8],
    kind: Kind,
    /// The snapshot's entry (None: a directory made as a parent).
    entry: Option<i64>,
    /// The node a further hard link links to.
    link: Option<i64>,
    depth: usize,
    single: bool,
    size: u64,
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut p = Vec::new();
    for c in parts {
        p.push(b'/');
        p.extend_from_slice(c);
    }
    p
}
