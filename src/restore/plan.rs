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
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, params};

use super::existing::{self, Decision, Existing, Overwrite, Wanted};
use super::select::Select;
use super::{Act, Action};
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
/// - `kept`: nodes left as the target has them (`--overwrite`): no phase
///   makes them; `attrs`: their owner, mode and times are still set;
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
CREATE TABLE plan.kept(
    node INTEGER PRIMARY KEY,
    attrs INTEGER NOT NULL
);
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
     WHERE n.kind = 2 AND n.link IS NULL AND NOT EXISTS (SELECT 1 FROM plan.kept k WHERE k.node = n.id)
     ORDER BY n.id";
pub const Q_JOBS: &str = "SELECT j.blob, j.boffset, j.length, j.size, j.chunk, j.node, j.foffset,
     n.single, n.parent, n.name, m.dev, m.ino, e.kind, e.mode, e.uid, e.gid, e.mtime_ns,
     e.xattrs, e.flags, e.path
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
     WHERE n.link IS NOT NULL AND NOT EXISTS (SELECT 1 FROM plan.kept k WHERE k.node = n.id)
     ORDER BY n.id";
pub const Q_OTHER: &str = "SELECT n.id, n.parent, n.name, e.path,
     e.kind, e.mode, e.uid, e.gid, e.mtime_ns, e.xattrs, e.flags, e.target, e.rdev
     FROM plan.nodes n JOIN main.entries e ON e.rowid = n.entry
     WHERE n.kind NOT IN (1, 2) AND NOT EXISTS (SELECT 1 FROM plan.kept k WHERE k.node = n.id)
     ORDER BY n.id";
/// (Files of one chunk had theirs set when written, and so had files
/// finished as their last chunk was written; hard links share their first
/// path's; entries kept as they are keep theirs.)
pub const Q_ATTRS: &str = "SELECT n.parent, n.name, m.dev, m.ino, e.path,
     e.kind, e.mode, e.uid, e.gid, e.mtime_ns, e.xattrs, e.flags
     FROM plan.nodes n JOIN plan.made m ON m.node = n.id JOIN main.entries e ON e.rowid = n.entry
     WHERE n.kind != 1 AND n.link IS NULL AND NOT n.single
     AND NOT EXISTS (SELECT 1 FROM plan.kept k WHERE k.node = n.id AND NOT k.attrs)
     AND NOT EXISTS (SELECT 1 FROM plan.pending p WHERE p.node = n.id AND p.state = 2)
     ORDER BY n.id";
pub const Q_DIRS_DOWN: &str = "SELECT n.id, e.path, e.kind, e.mode, e.uid, e.gid, e.mtime_ns,
     e.xattrs, e.flags
     FROM plan.nodes n JOIN plan.made m ON m.node = n.id JOIN main.entries e ON e.rowid = n.entry
     WHERE n.kind = 1 AND NOT EXISTS (SELECT 1 FROM plan.kept k WHERE k.node = n.id AND NOT k.attrs)
     ORDER BY n.depth DESC";
/// Where a directory node is, for reopening it.
pub const Q_NODE: &str = "SELECT n.parent, n.name, m.dev, m.ino FROM plan.nodes n
     LEFT JOIN plan.made m ON m.node = n.id WHERE n.id = ?1";

/// Plan query `q` for a snapshot with (`attrs`) or without (formats 1
/// and 2) the `xattrs` and `flags` columns, which it then reads as NULL.
pub fn q(query: &str, attrs: bool) -> std::borrow::Cow<'_, str> {
    if attrs {
        query.into()
    } else {
        query
            .replace("e.xattrs", "NULL")
            .replace("e.flags", "NULL")
            .into()
    }
}

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

/// A look into the target that failed, for a dry run's parents.
fn look_error(p: &[u8], e: std::io::Error) -> Error {
    Error::Io {
        op: "look at",
        path: std::path::PathBuf::from(std::ffi::OsStr::from_bytes(p)),
        source: e,
    }
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
    /// Entries (not directories) left as the target has them.
    pub kept: u64,
    /// What a dry run would do, by action.
    pub counts: super::Counts,
}

/// What the plan restores, and how it treats what the target has.
pub struct Options<'o> {
    /// Only these source paths (and what is below them), when not empty.
    pub paths: &'o [String],
    /// `--include`, `--exclude`.
    pub select: &'o mut Select,
    /// The target, looked at where a decision needs it; None when none
    /// does (`--overwrite always`, not a dry run).
    pub existing: Option<&'o mut Existing>,
    pub overwrite: Overwrite,
    pub verify: bool,
    pub as_root: bool,
    /// A dry run: each action, as it is decided.
    pub report: Option<&'o super::Report<'o>>,
}

/// One entry of the snapshot, as read.
struct Row {
    rowid: i64,
    src: Vec<u8>,
    kind: Kind,
    size: i64,
    mtime_ns: i64,
    chunks: Vec<u8>,
    /// A further hard link's first path.
    link: Option<Vec<u8>>,
    /// Its extended attributes and flags, checked: Err says what is wrong.
    attrs: std::result::Result<(), String>,
}

/// Build the plan from the metadata (every entry, in row order), keeping
/// only what is under `o.paths` when any are given and what `o.select`
/// keeps, and deciding for each entry what to do with what the target
/// has at its path when `o.existing` is given.
pub fn build(conn: &Connection, o: Options<'_>, id: &str) -> Result<Built> {
    let (mpath, ppath) = (mpath(), ppath());
    let filters: Vec<Vec<u8>> = o.paths.iter().map(|p| normalize_filter(p)).collect();
    let mut matched = vec![false; filters.len()];
    let paths = o.paths;
    conn.execute_batch("BEGIN").db(ppath)?;
    let built = {
        let link = crate::snapshot::link_column(conn, "main");
        let attrs = crate::snapshot::attr_columns(conn, "main");
        let mut st = conn
            .prepare(&format!(
                "SELECT rowid, path, kind, size, chunks, {link}, mtime_ns, {attrs}
                 FROM main.entries ORDER BY rowid"
            ))
            .db(mpath)?;
        let mut planner = Planner::new(conn, o)?;
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
            if !planner.o.select.wants(&src, kind == Kind::Dir) {
                continue;
            }
            let chunks: Option<Vec<u8>> = r.get(4).db(mpath)?;
            let attrs = match (r.get_ref(7).db(mpath)?, r.get_ref(8).db(mpath)?) {
                (
                    x @ (ValueRef::Null | ValueRef::Blob(_)),
                    f @ (ValueRef::Null | ValueRef::Integer(_)),
                ) => {
                    let x = if let ValueRef::Blob(b) = x {
                        Some(b)
                    } else {
                        None
                    };
                    let f = if let ValueRef::Integer(n) = f {
                        Some(n)
                    } else {
                        None
                    };
                    crate::xattrs::check(x, f).map(|_| ())
                }
                _ => Err("extended attributes or inode flags of the wrong type".into()),
            };
            planner.entry(Row {
                rowid: r.get(0).db(mpath)?,
                src,
                kind,
                size: r.get(3).db(mpath)?,
                mtime_ns: r.get(6).db(mpath)?,
                chunks: chunks.unwrap_or_default(),
                link: r.get(5).db(mpath)?,
                attrs,
            })?;
        }
        Built {
            blobs: planner.locator.blobs,
            failures: planner.failures,
            kept: planner.kept,
            counts: planner.counts,
        }
    };
    conn.execute_batch("COMMIT").db(ppath)?;
    for (f, m) in paths.iter().zip(&matched) {
        if !m {
            return Err(Error::not_in_snapshot(f, id));
        }
    }
    Ok(built)
}

/// Each place in a blob the jobs read, once (in primary key order: no
/// sort).
pub const Q_READS: &str = "SELECT blob, boffset, length FROM plan.jobs GROUP BY blob, boffset";

/// The chunks the jobs read, each once, in blob and offset order:
/// (blob index, stored length). For the blobs a restore needs, and what
/// a dry run would fetch.
pub fn each_read(conn: &Connection, mut f: impl FnMut(usize, u64)) -> Result<()> {
    let mut st = conn.prepare(Q_READS).db(ppath())?;
    let mut rows = st.query([]).db(ppath())?;
    while let Some(r) = rows.next().db(ppath())? {
        f(
            r.get::<_, i64>(0).db(ppath())? as usize,
            r.get::<_, i64>(2).db(ppath())? as u64,
        );
    }
    Ok(())
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

/// Places entries, decides what to do with what the target has, and
/// queues their chunks.
struct Planner<'c, 'o> {
    conn: &'c Connection,
    tree: Tree<'c>,
    locator: Locator<'c>,
    add_job: rusqlite::Statement<'c>,
    /// The chunks of the file being planned: where each goes in the file,
    /// its id, blob and place in it.
    located: Vec<(u64, ChunkId, usize, Location)>,
    failures: super::Failures,
    o: Options<'o>,
    kept: u64,
    counts: super::Counts,
}

impl<'c, 'o> Planner<'c, 'o> {
    fn new(conn: &'c Connection, o: Options<'o>) -> Result<Planner<'c, 'o>> {
        let mut tree = Tree::new(conn)?;
        tree.note_parents = o.report.is_some();
        Ok(Planner {
            conn,
            tree,
            locator: Locator::new(conn)?,
            add_job: conn
                .prepare(
                    "INSERT OR IGNORE INTO plan.jobs(blob, boffset, node, foffset, length, size, chunk)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .db(ppath())?,
            located: Vec::new(),
            failures: super::Failures::default(),
            o,
            kept: 0,
            counts: super::Counts::default(),
        })
    }

    fn refuse(&mut self, src: &[u8], why: &str) -> Result<()> {
        self.failures.push(format!("{}: {why}", shown(src)));
        self.act(Act::Skip, src, None, None, why)
    }

    /// Count an action, and report it in a dry run.
    fn act(
        &mut self,
        act: Act,
        path: &[u8],
        kind: Option<Kind>,
        size: Option<u64>,
        why: &str,
    ) -> Result<()> {
        self.counts.add(act, size);
        match self.o.report {
            Some(report) => report(&Action {
                act,
                path,
                kind,
                size,
                why,
            }),
            None => Ok(()),
        }
    }

    /// Check, place and queue one entry.
    fn entry(&mut self, e: Row) -> Result<()> {
        let Some(parts) = components(&e.src) else {
            return self.refuse(&e.src, "unsafe path in snapshot metadata, not restored");
        };
        if e.size < 0 || e.chunks.len() % chunk::RECORD != 0 {
            return self.refuse(&e.src, "malformed entry in snapshot metadata");
        }
        if let Err(why) = &e.attrs {
            return self.refuse(&e.src, &format!("{why} in snapshot metadata; not restored"));
        }
        if e.kind == Kind::File && !self.locate_chunks(&e)? {
            return Ok(());
        }
        let placed = self.tree.place(&e, &parts)?;
        self.report_parents()?;
        let (node, link_to) = match placed {
            Ok(p) => p,
            Err(why) => return self.refuse(&e.src, &format!("{why}, not restored")),
        };
        if !self.decide(&e, &parts, node, link_to)? {
            return Ok(());
        }
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

    /// A dry run: the directories just made as parents.
    fn report_parents(&mut self) -> Result<()> {
        if self.tree.parents.is_empty() {
            return Ok(());
        }
        for p in std::mem::take(&mut self.tree.parents) {
            let parts = components(&p).unwrap_or_default();
            let found = match self.o.existing.as_deref_mut() {
                Some(ex) => ex.look(&parts).map_err(|e| look_error(&p, e))?,
                None => None,
            };
            match existing::decide_dir(Overwrite::Always, found.as_ref()) {
                Decision::New => self.act(Act::Create, &p, Some(Kind::Dir), None, "as a parent")?,
                Decision::Replace(why) => {
                    self.act(Act::Replace, &p, Some(Kind::Dir), None, &why)?
                }
                Decision::Keep { .. } => {}
            }
        }
        Ok(())
    }

    /// Decide what to do with what the target has at entry `e`'s path
    /// (placed as `node`), recording it in the plan and reporting it in a
    /// dry run: false when the entry is kept as it is there (or cannot be
    /// looked at, named), so that nothing is queued for it.
    fn decide(
        &mut self,
        e: &Row,
        parts: &[&[u8]],
        node: i64,
        link_to: Option<i64>,
    ) -> Result<bool> {
        let dry = self.o.report.is_some();
        let device = matches!(e.kind, Kind::CharDev | Kind::BlockDev);
        if e.kind == Kind::Socket || (device && !self.o.as_root) {
            // Not made, as the entry phases say (a warning for devices).
            if dry {
                let why = if device {
                    "device node not restored (needs root)"
                } else {
                    "sockets are not restored"
                };
                self.act(Act::Skip, &e.src, Some(e.kind), None, why)?;
            }
            return Ok(true);
        }
        let first = e.kind == Kind::File && link_to.is_none();
        let mode = self.o.overwrite;
        let Some(ex) = self.o.existing.as_deref_mut() else {
            return Ok(true);
        };
        if !(dry || mode == Overwrite::Never || (first && mode != Overwrite::Always)) {
            return Ok(true);
        }
        let found = match ex.look(parts) {
            Ok(f) => f,
            Err(err) => {
                // Left to no phase, and named.
                self.keep(node, false)?;
                let why = format!("cannot look at what the target has there: {err}; not restored");
                self.refuse(&e.src, &why)?;
                return Ok(false);
            }
        };
        let size = e.size as u64;
        let decision = if e.kind == Kind::Dir {
            existing::decide_dir(mode, found.as_ref())
        } else {
            let wanted = Wanted {
                file: first,
                size,
                mtime_ns: e.mtime_ns,
                chunks: &self.located,
            };
            existing::decide(mode, self.o.verify, &wanted, found.as_ref())
        };
        let kind = Some(e.kind);
        let size = (e.kind == Kind::File).then_some(size);
        match decision {
            Decision::New if e.kind == Kind::Dir => {
                self.act(Act::Create, &e.src, kind, None, "")?
            }
            Decision::New => {
                let why = match &e.link {
                    Some(first) if link_to.is_some() => format!("a hard link to {}", shown(first)),
                    _ => String::new(),
                };
                self.act(Act::Write, &e.src, kind, size, &why)?;
            }
            Decision::Replace(why) => self.act(Act::Replace, &e.src, kind, size, &why)?,
            Decision::Keep { attrs, .. } if e.kind == Kind::Dir => {
                if !attrs {
                    self.keep(node, false)?;
                }
            }
            Decision::Keep { attrs, why } => {
                self.kept += 1;
                self.keep(node, attrs)?;
                if first {
                    // The file there stands for the node: hard links to
                    // it link to it, and its attributes are set through
                    // it (checked to be this very file).
                    let (dev, ino) = found.as_ref().expect("kept: found").id();
                    self.conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO plan.made(node, dev, ino) VALUES (?1, ?2, ?3)",
                        )
                        .db(ppath())?
                        .execute(params![node, dev as i64, ino as i64])
                        .db(ppath())?;
                    self.tree.unsingle.execute([node]).db(ppath())?;
                }
                self.act(Act::Keep, &e.src, kind, size, &why)?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Record node `node` as kept as the target has it.
    fn keep(&mut self, node: i64, attrs: bool) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO plan.kept(node, attrs) VALUES (?1, ?2)")
            .db(ppath())?
            .execute(params![node, attrs])
            .db(ppath())?;
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
            self.refuse(&e.src, &why)?;
            return Ok(false);
        }
        let locator = &self.locator;
        if self
            .located
            .iter()
            .any(|(_, _, bi, l)| !locator.inside(*bi, l))
        {
            self.refuse(&e.src, "a chunk lies outside its blob; not restored")?;
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
    /// Directories made as parents since last taken (for a dry run's
    /// report, when `note_parents`).
    parents: Vec<Vec<u8>>,
    note_parents: bool,
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
            parents: Vec::new(),
            note_parents: false,
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
        if entry.is_none() && self.note_parents {
            self.parents.push(path.to_vec());
        }
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
