//! Reading a snapshot's entries without restoring anything: `ls`
//! (`ls.rs`), `find` (`find.rs`) and `diff` (`diff.rs`), rendered by
//! `show.rs`. They need the private key, as a restore does.
//!
//! The metadata database is decrypted into an unlinked 0600 file in the
//! temporary directory and checked (`metadata::open`), never into memory,
//! and every query streams its rows in path order along the `path` index:
//! no query sorts (a sort would build a temporary B-tree in memory, which
//! would grow with the snapshot; checked by a test, and at run time for
//! each database, see `Snapshot::from_conn`). Memory stays flat whatever
//! the number of entries.
//!
//! Paths are absolute byte strings, compared as bytes (as SQLite compares
//! BLOBs), so everything below `/etc` lies in one range: `path >= '/etc/'
//! AND path < '/etc0'` ('0' is the byte after '/').
//!
//! The database may be forged by anyone who can write to the store (the
//! public key is on every host): its values are read strictly (a column
//! of the wrong type is an error naming the entry), printed escaped
//! (`show.rs`), and never used as a path to anything here.

pub mod diff;
pub mod find;
pub mod ls;
mod show;

use std::path::Path;

use age::x25519;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Statement};
use sha2::{Digest, Sha256};

use crate::error::{DbContext, Error, Result};
use crate::metadata::{self, Metadata};
use crate::snapshot::{self, Kind};
use crate::store::Store;

pub use show::{
    entry_json, entry_line, implied_json, implied_line, json_line, kind_name, put_bytes, shown,
};

const META: &str = "snapshot metadata";

fn mpath() -> &'static Path {
    Path::new(META)
}

/// One entry as recorded in a snapshot, read for a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub path: Vec<u8>,
    /// `None`: a kind this build does not know (`kind_raw` says which).
    pub kind: Option<Kind>,
    pub kind_raw: i64,
    /// Permission bits, with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: i64,
    pub gid: i64,
    pub size: i64,
    pub mtime_ns: i64,
    pub rdev: u64,
    pub target: Option<Vec<u8>>,
    /// A further hard link: the path of the first one.
    pub link: Option<Vec<u8>>,
    /// SHA-256 of the chunk list, when read (`diff`): equal lists, equal
    /// content.
    pub content: Option<[u8; 32]>,
    /// Extended attributes (checked) and inode flags.
    pub attrs: crate::xattrs::Attrs,
}

impl Entry {
    /// The bytes a regular file holds (0 for anything else, and for a
    /// forged negative size).
    pub fn file_bytes(&self) -> u64 {
        if self.kind == Some(Kind::File) {
            u64::try_from(self.size).unwrap_or(0)
        } else {
            0
        }
    }

    /// The mtime in whole seconds (rounded down, also before 1970).
    pub fn mtime(&self) -> i64 {
        self.mtime_ns.div_euclid(1_000_000_000)
    }
}

/// A PATH given by the user and the range of paths below it.
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    /// Normalized as restore does: a leading `/`, no trailing `/`.
    pub path: Vec<u8>,
    /// `path/` (`/` for the root): the first path below it...
    pub lo: Vec<u8>,
    /// ...and `path0`, past the last one.
    pub hi: Vec<u8>,
    /// Given without its leading `/` (for the error when it is not there).
    pub relative: bool,
}

impl Scope {
    pub fn of(user: &[u8]) -> Scope {
        let mut path = user.to_vec();
        while path.len() > 1 && path.ends_with(b"/") {
            path.pop();
        }
        let relative = !path.starts_with(b"/");
        if relative {
            path.insert(0, b'/');
        }
        let mut lo = path.clone();
        if lo != b"/" {
            lo.push(b'/');
        }
        let mut hi = lo.clone();
        *hi.last_mut().expect("lo ends with a /") = b'0';
        Scope {
            path,
            lo,
            hi,
            relative,
        }
    }

    pub fn root() -> Scope {
        Scope::of(b"/")
    }

    pub fn is_root(&self) -> bool {
        self.path == b"/"
    }

    /// What follows `lo` in `path` (a path of the range): empty for the
    /// root itself.
    pub fn rest<'p>(&self, path: &'p [u8]) -> &'p [u8] {
        path.get(self.lo.len()..).unwrap_or_default()
    }
}

/// What a scan does after an entry.
pub enum Next {
    Go,
    /// Go on from this path on (skipping what lies before it).
    SeekTo(Vec<u8>),
}

/// A snapshot's metadata, opened for reading its entries.
pub struct Snapshot {
    pub id: String,
    conn: Metadata,
    /// The `link` column as an SQL expression (`snapshot::link_column`).
    link: &'static str,
    /// The `xattrs, flags` columns, likewise (`snapshot::attr_columns`).
    attrs: &'static str,
}

impl Snapshot {
    /// Fetch and decrypt snapshot `id`'s metadata into the temporary
    /// directory (unlinked, in a private directory: `metadata::open`).
    /// `expect`: see `metadata::open`.
    pub fn open(
        store: &dyn Store,
        id: &str,
        identities: &[x25519::Identity],
        expect: &[[u8; 32]],
    ) -> Result<Snapshot> {
        let conn = metadata::open(store, id, identities, &std::env::temp_dir(), expect)?;
        Snapshot::from_conn(id, conn)
    }

    /// A database already open and checked (`open`, and tests), once it
    /// is known to be read in path order without a sort: its schema is
    /// vaultik's (`metadata` checked it), whose `path` is UNIQUE, so
    /// SQLite reads along that index; checked all the same, as a sort
    /// would hold every entry in memory.
    pub fn from_conn(id: &str, conn: Metadata) -> Result<Snapshot> {
        let link = snapshot::link_column(&conn, "main");
        let attrs = snapshot::attr_columns(&conn, "main");
        let s = Snapshot {
            id: id.to_string(),
            conn,
            link,
            attrs,
        };
        if !plan_is_ordered(&s.conn, &s.q_range(false))? {
            return Err(Error::corrupt(
                format!("metadata of snapshot {id}"),
                "its entries cannot be read in path order",
            ));
        }
        Ok(s)
    }

    /// `e`, naming this snapshot when reading it went past its budget
    /// (`metadata::Metadata::explain`).
    pub fn explain(&self, e: Error) -> Error {
        self.conn.explain(e)
    }

    fn columns(&self, content: bool) -> String {
        format!(
            "path, kind, mode, uid, gid, size, mtime_ns, rdev, target, {}, {}, {}",
            self.link,
            if content { "chunks" } else { "NULL" },
            self.attrs
        )
    }

    fn q_range(&self, content: bool) -> String {
        format!(
            "SELECT {} FROM entries WHERE path >= ?1 AND path < ?2 ORDER BY path",
            self.columns(content),
        )
    }

    /// The entry at `path` (the first, should a forged database hold it
    /// twice).
    pub fn entry(&self, path: &[u8], content: bool) -> Result<Option<Entry>> {
        let q = format!(
            "SELECT {} FROM entries WHERE path = ?1 LIMIT 1",
            self.columns(content),
        );
        let mut st = self.conn.prepare_cached(&q).db(mpath())?;
        let mut rows = st.query([path]).db(mpath())?;
        match rows.next().db(mpath())? {
            Some(r) => read(r, content).map(Some),
            None => Ok(None),
        }
    }

    /// Whether any entry lies in `[lo, hi)`.
    pub fn any_in(&self, lo: &[u8], hi: &[u8]) -> Result<bool> {
        let q = "SELECT 1 FROM entries WHERE path >= ?1 AND path < ?2 LIMIT 1";
        let mut st = self.conn.prepare_cached(q).db(mpath())?;
        st.exists([lo, hi]).db(mpath())
    }

    /// The statement of a range scan (`cursor` runs it).
    pub fn range_statement(&self, content: bool) -> Result<Statement<'_>> {
        self.conn.prepare(&self.q_range(content)).db(mpath())
    }

    /// Call `f` with every entry in `[lo, hi)`, in path order; it may skip
    /// ahead (`Next::SeekTo` a later path).
    pub fn scan(
        &self,
        lo: &[u8],
        hi: &[u8],
        content: bool,
        f: &mut dyn FnMut(Entry) -> Result<Next>,
    ) -> Result<()> {
        let mut st = self.range_statement(content)?;
        let mut from = lo.to_vec();
        'query: loop {
            let mut c = cursor(&mut st, &from, hi, content)?;
            while let Some(e) = c.next()? {
                let at = e.path.clone();
                if let Next::SeekTo(to) = f(e)? {
                    // Only ever forward: a scan always ends.
                    if to > at {
                        from = to;
                        continue 'query;
                    }
                }
            }
            return Ok(());
        }
    }
}

/// Whether the query plan of `q` streams without a temporary B-tree.
fn plan_is_ordered(conn: &Connection, q: &str) -> Result<bool> {
    let mut st = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {q}"))
        .db(mpath())?;
    let params = rusqlite::params_from_iter(std::iter::repeat_n(
        rusqlite::types::Null,
        st.parameter_count(),
    ));
    let mut rows = st.query(params).db(mpath())?;
    while let Some(r) = rows.next().db(mpath())? {
        let detail: String = r.get(3).db(mpath())?;
        if detail.contains("TEMP B-TREE") {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Entries in path order, pulled one at a time (`diff` walks two).
pub struct Cursor<'s> {
    rows: rusqlite::Rows<'s>,
    content: bool,
}

/// Run a range statement (`Snapshot::range_statement`) over `[lo, hi)`.
pub fn cursor<'s>(
    st: &'s mut Statement<'_>,
    lo: &[u8],
    hi: &[u8],
    content: bool,
) -> Result<Cursor<'s>> {
    Ok(Cursor {
        rows: st.query([lo, hi]).db(mpath())?,
        content,
    })
}

impl Cursor<'_> {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Entry>> {
        match self.rows.next().db(mpath())? {
            Some(r) => read(r, self.content).map(Some),
            None => Ok(None),
        }
    }
}

/// A row of `Snapshot::columns`, read strictly: anything a backup would
/// not have written is an error naming the entry.
fn read(r: &rusqlite::Row<'_>, content: bool) -> Result<Entry> {
    let path = match r.get_ref(0).db(mpath())? {
        ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
        _ => return Err(Error::corrupt(META, "an entry without a path")),
    };
    let bad = |column: &str| {
        Error::corrupt(
            META,
            format!("{}: its {column} is not what a backup writes", shown(&path)),
        )
    };
    let int = |i: usize, column: &str| match r.get_ref(i) {
        Ok(ValueRef::Integer(n)) => Ok(n),
        _ => Err(bad(column)),
    };
    let bytes = |i: usize, column: &str| match r.get_ref(i) {
        Ok(ValueRef::Null) => Ok(None),
        Ok(ValueRef::Blob(b) | ValueRef::Text(b)) => Ok(Some(b)),
        _ => Err(bad(column)),
    };
    let kind_raw = int(1, "kind")?;
    let rdev = match r.get_ref(7) {
        Ok(ValueRef::Null) => 0,
        _ => int(7, "device number")?,
    };
    let content = if content {
        let list = bytes(10, "chunk list")?.unwrap_or_default();
        Some(Sha256::digest(list).into())
    } else {
        None
    };
    let flags = match r.get_ref(12) {
        Ok(ValueRef::Null) => None,
        _ => Some(int(12, "inode flags")?),
    };
    let attrs = crate::xattrs::check(bytes(11, "extended attributes")?, flags)
        .map_err(|why| Error::corrupt(META, format!("{}: {why}", shown(&path))))?;
    Ok(Entry {
        kind: Kind::from_i64(kind_raw),
        kind_raw,
        mode: (int(2, "mode")? & 0o7777) as u32,
        uid: int(3, "owner")?,
        gid: int(4, "group")?,
        size: int(5, "size")?,
        mtime_ns: int(6, "mtime")?,
        rdev: rdev as u64,
        target: bytes(8, "symlink target")?.map(<[u8]>::to_vec),
        link: bytes(9, "hard link")?.map(<[u8]>::to_vec),
        content,
        attrs,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database made by a backup (`META_SCHEMA`) with `paths` as files.
    pub(crate) fn db(schema: &str, paths: &[&[u8]]) -> Metadata {
        let conn = Metadata::for_tests(Connection::open_in_memory().unwrap());
        conn.execute_batch(schema).unwrap();
        conn.execute("INSERT INTO info VALUES ('format', '2')", [])
            .unwrap();
        for p in paths {
            conn.execute(
                "INSERT INTO entries(path, kind, mode, uid, gid, size, mtime_ns, chunks)
                 VALUES (?1, 2, 420, 0, 0, 1, 0, x'')",
                [p],
            )
            .unwrap();
        }
        conn
    }

    #[test]
    fn scopes() {
        let s = Scope::of(b"etc/");
        assert_eq!(
            (s.path.as_slice(), s.lo.as_slice(), s.hi.as_slice()),
            (&b"/etc"[..], &b"/etc/"[..], &b"/etc0"[..])
        );
        for root in [&b"/"[..], b"", b"//"] {
            let s = Scope::of(root);
            assert!(s.is_root());
            assert_eq!((s.lo.as_slice(), s.hi.as_slice()), (&b"/"[..], &b"0"[..]));
        }
        assert_eq!(Scope::of(b"/etc").rest(b"/etc/nginx/x"), b"nginx/x");
        assert_eq!(Scope::root().rest(b"/"), b"");
        assert_eq!(Scope::root().rest(b""), b"");
    }

    /// No query a listing runs sorts: each follows the `path` index (a
    /// sort would build a temporary B-tree in memory, which grows with
    /// the snapshot).
    #[test]
    fn entries_are_read_back_without_sorting() {
        let s = Snapshot::from_conn("t", db(crate::snapshot::META_SCHEMA, &[])).unwrap();
        for content in [false, true] {
            assert!(plan_is_ordered(&s.conn, &s.q_range(content)).unwrap());
        }
        for q in [
            "SELECT 1 FROM entries WHERE path >= ?1 AND path < ?2 LIMIT 1".to_string(),
            format!(
                "SELECT {} FROM entries WHERE path = ?1 LIMIT 1",
                s.columns(true),
            ),
        ] {
            let mut st = s.conn.prepare(&format!("EXPLAIN QUERY PLAN {q}")).unwrap();
            let nulls = std::iter::repeat_n(rusqlite::types::Null, st.parameter_count());
            let plan: Vec<String> = st
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get(3))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            assert!(
                plan.iter()
                    .all(|l| l.contains("USING") && !l.contains("TEMP")),
                "{q}\n{plan:#?}"
            );
        }
        // Without the index a sort would be needed: the check says so
        // (`metadata` refuses such a database before it gets here).
        let forged = Connection::open_in_memory().unwrap();
        forged
            .execute_batch("CREATE TABLE entries(path BLOB)")
            .unwrap();
        let q = "SELECT path FROM entries WHERE path >= ?1 AND path < ?2 ORDER BY path";
        assert!(!plan_is_ordered(&forged, q).unwrap());
    }

    #[test]
    fn what_a_backup_would_not_write_is_an_error_naming_the_entry() {
        let conn = db(crate::snapshot::META_SCHEMA, &[]);
        conn.execute_batch(
            "INSERT INTO entries(path, kind, mode, uid, gid, size, mtime_ns)
             VALUES (x'2f611b5b326a', 'file', 420, 0, 0, 1, 0);",
        )
        .unwrap();
        let s = Snapshot::from_conn("t", conn).unwrap();
        let e = s.entry(b"/a\x1b[2j", false).unwrap_err().to_string();
        assert!(e.contains("/a\\u{1b}[2j: its kind is not"), "{e}");
    }
}
