//! The local index: a SQLite cache of what is already in the store (blobs
//! and the chunks inside them) and of each file's last-seen stat and chunk
//! list, for change detection. A chunk is only recorded after the blob that
//! holds it is confirmed uploaded. The schema is versioned; a cache of
//! another version or another store is dropped and rebuilt.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::blob::{Location, private_dir};
use crate::chunk::ChunkId;
use crate::error::{DbContext, Result};
use crate::xattrs::Attrs;

const SCHEMA_VERSION: &str = "2";

/// How `Index::open` found the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// It belongs to this store.
    Kept,
    /// It was made for this store before stores had identities: kept, and
    /// keyed by the identity from now on.
    Adopted,
    /// Started empty: there was none, one of another schema, or one of
    /// another store (whose identity, if it had one, is given).
    Fresh(Option<String>),
}

const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE blobs(
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL
);
CREATE TABLE chunks(
    id BLOB PRIMARY KEY,
    blob INTEGER NOT NULL REFERENCES blobs(id),
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX chunks_blob ON chunks(blob);
CREATE TABLE files(
    path BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    chunks BLOB NOT NULL
) WITHOUT ROWID;
";

/// How long each blob is locked in the store, as far as this host knows
/// (`[s3] object_lock`): set when it uploads a blob or extends its lock.
/// Kept apart from the versioned schema: an index without it gets it, and
/// one that loses it only extends locks again.
const LOCKS: &str = "CREATE TABLE IF NOT EXISTS blob_locks(
    key TEXT PRIMARY KEY,
    until INTEGER NOT NULL,
    version TEXT
) WITHOUT ROWID;";

/// The extended attributes and inode flags of each file (`crate::xattrs`),
/// beside its stat and chunk list, so that a file whose stat is unchanged
/// is not asked for them either (setting either changes its ctime). Kept
/// apart from the versioned schema, as `LOCKS`: an index without them gets
/// them, NULL (unknown: the next run reads them, and only them).
const FILE_ATTRS: [&str; 2] = [
    "ALTER TABLE files ADD COLUMN xattrs BLOB",
    "ALTER TABLE files ADD COLUMN flags INTEGER",
];

/// Where a run of a snapshot's chunks are, from `Index::locate`.
#[derive(Default)]
pub struct Located {
    /// The ids located, in order.
    pub ids: Vec<ChunkId>,
    /// The index's blob id and the location of each id, in order.
    pub at: Vec<(i64, Location)>,
    /// The last batch: every id asked for was located.
    pub last: bool,
    /// The index's id, key and size of each blob first pointed at here.
    pub blobs: Vec<(i64, String, u64)>,
    /// The first id with no location; nothing is located past it.
    pub missing: Option<ChunkId>,
}

/// Receives one file row: path, stat, chunk list, and its attributes when
/// known.
pub type PutFile<'a> = dyn FnMut(&[u8], FileStat, &[u8], Option<&Attrs>) -> Result<()> + 'a;

/// What the index knows of a file whose stat is unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub chunks: Vec<u8>,
    /// None: not known (recorded by an earlier build, or not read whole).
    pub attrs: Option<Attrs>,
}

/// What stat says about a regular file, for change detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
}

impl FileStat {
    /// Whether the file changed so shortly before `started_ns` (when the
    /// run began, in ns since the epoch) that a later write could leave
    /// the same ctime: file times come from a clock that advances in ticks
    /// (a few ms), or in whole seconds on some filesystems. Such a file is
    /// not remembered as read, so the next run reads it again instead of
    /// trusting its stat ("racily clean" in git's words).
    pub fn racy(&self, started_ns: i64) -> bool {
        const TICK_NS: i64 = 100_000_000;
        const COARSE_NS: i64 = 2_000_000_000;
        let margin = if self.ctime_ns % 1_000_000_000 == 0 {
            COARSE_NS
        } else {
            TICK_NS
        };
        self.ctime_ns > started_ns.saturating_sub(margin)
    }
}

pub struct Index {
    conn: Connection,
    path: PathBuf,
}

/// Reads whether the index has a chunk, beside the connection that writes.
pub struct ChunkLookup {
    conn: Connection,
    path: PathBuf,
}

impl ChunkLookup {
    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM chunks WHERE id=?1")
            .db(&self.path)?;
        st.exists([&id.0[..]]).db(&self.path)
    }
}

impl Index {
    /// Open (creating if needed) the index at `path` for the store whose
    /// identity is `store_id`. An index made for `legacy` (how the store
    /// was named before stores had identities) is adopted; one of another
    /// store, or of another schema, is started afresh.
    pub fn open(path: &Path, store_id: &str, legacy: &str) -> Result<(Index, Opened)> {
        if let Some(dir) = path.parent() {
            private_dir(dir)?;
        }
        // Private from the first byte (SQLite gives its -wal and -shm files
        // the database's mode).
        crate::blob::private_file(path)?;
        let conn = Connection::open(path).db(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .db(path)?;
        // Runs hold the run lock, but a backup looks chunks up through a
        // second connection (`ChunkLookup`) while blobs are recorded through
        // this one: WAL with shared-memory locking lets it read meanwhile.
        conn.pragma_update(None, "locking_mode", "NORMAL")
            .db(path)?;
        // A cache: no foreign key enforcement (it would also block a reset).
        conn.pragma_update(None, "foreign_keys", "OFF").db(path)?;
        conn.pragma_update(None, "journal_mode", "WAL").db(path)?;
        conn.pragma_update(None, "synchronous", "NORMAL").db(path)?;
        conn.pragma_update(None, "cache_size", -4096).db(path)?;
        let mut idx = Index {
            conn,
            path: path.to_path_buf(),
        };
        let version: Option<String> = idx.meta("schema_version")?;
        if version.as_deref() == Some("1") {
            idx.upgrade_from_1()?;
        }
        let version: Option<String> = idx.meta("schema_version")?;
        let store: Option<String> = idx.meta("store")?;
        let opened = match store.as_deref() {
            _ if version.as_deref() != Some(SCHEMA_VERSION) => Opened::Fresh(None),
            Some(s) if s == store_id => Opened::Kept,
            Some(s) if s == legacy => {
                idx.set_meta("store", store_id)?;
                Opened::Adopted
            }
            other => Opened::Fresh(other.map(str::to_string)),
        };
        if let Opened::Fresh(_) = opened {
            idx.reset(store_id)?;
        }
        idx.conn.execute_batch(LOCKS).db(&idx.path)?;
        idx.add_file_attrs()?;
        Ok((idx, opened))
    }

    /// Make the index one of blobs sealed to the recipient set
    /// `fingerprint` (`keys::set_fingerprint`): a backup only reuses blobs
    /// sealed to exactly its recipients, so that once `age_recipient`
    /// changes, the newest snapshot restores with the new keys alone. An
    /// index of another set forgets its blobs, chunks and files (they stay
    /// in the store for the snapshots that use them): true then. An index
    /// that never said (made before sets were recorded) is taken to be of
    /// the set configured now.
    pub fn seal_to(&mut self, fingerprint: &str) -> Result<bool> {
        match self.meta("sealed_to")?.as_deref() {
            Some(f) if f == fingerprint => Ok(false),
            None => {
                self.set_meta("sealed_to", fingerprint)?;
                Ok(false)
            }
            Some(_) => {
                let tx = self.conn.transaction().db(&self.path)?;
                tx.execute_batch(
                    "DELETE FROM chunks; DELETE FROM blobs; DELETE FROM files;
                     DELETE FROM blob_locks;",
                )
                .db(&self.path)?;
                tx.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('sealed_to', ?1)",
                    [fingerprint],
                )
                .db(&self.path)?;
                tx.commit().db(&self.path)?;
                Ok(true)
            }
        }
    }

    /// Whether the blobs this index records are sealed to the recipient
    /// set `fingerprint` (an index that never said is taken to be).
    pub fn is_sealed_to(&self, fingerprint: &str) -> Result<bool> {
        Ok(self.meta("sealed_to")?.is_none_or(|f| f == fingerprint))
    }

    /// The identity of the store the index at `path` was made for, if it
    /// exists and says (read only; anything amiss is None).
    pub fn store_of(path: &Path) -> Option<String> {
        if !path.is_file() {
            return None;
        }
        let conn =
            Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        conn.busy_timeout(std::time::Duration::from_secs(30)).ok()?;
        conn.query_row("SELECT value FROM meta WHERE key='store'", [], |r| r.get(0))
            .ok()
    }

    /// The index at `path` when it exists and belongs to `store_id` (or,
    /// not adopted yet, to `legacy`); never creates, resets or changes one
    /// (for maintenance commands).
    pub fn open_existing(path: &Path, store_id: &str, legacy: &str) -> Result<Option<Index>> {
        if !path.is_file() {
            return Ok(None);
        }
        let conn = Connection::open(path).db(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .db(path)?;
        let idx = Index {
            conn,
            path: path.to_path_buf(),
        };
        let version = idx.meta("schema_version")?;
        let store = idx.meta("store")?;
        let ok = matches!(version.as_deref(), Some("1") | Some(SCHEMA_VERSION))
            && store
                .as_deref()
                .is_some_and(|s| s == store_id || s == legacy);
        Ok(ok.then_some(idx))
    }

    /// A new, empty index for `store_id` in `path`, a file the caller
    /// made empty (never an existing one, never through a symlink): filled
    /// by `rebuild`, then renamed into place. No journal: until it is
    /// renamed, a crash leaves a file that is thrown away, never an index.
    pub fn create_new(path: &Path, store_id: &str) -> Result<Index> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
                | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .db(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA foreign_keys=OFF;
             PRAGMA locking_mode=EXCLUSIVE; PRAGMA cache_size=-16384;",
        )
        .db(path)?;
        let mut idx = Index {
            conn,
            path: path.to_path_buf(),
        };
        idx.reset(store_id)?;
        idx.conn.execute_batch(LOCKS).db(&idx.path)?;
        idx.add_file_attrs()?;
        Ok(idx)
    }

    /// Close the index, saying whether that worked (a dropped one says
    /// nothing).
    pub fn close(self) -> Result<()> {
        let path = self.path;
        self.conn.close().map_err(|(_, e)| e).db(&path)
    }

    /// Run `f` in one write transaction, undone if it fails.
    pub fn in_transaction<T, E: From<crate::error::Error>>(
        &self,
        f: impl FnOnce(&Index) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.conn.execute_batch("BEGIN").db(&self.path)?;
        match f(self) {
            Ok(v) => {
                self.conn.execute_batch("COMMIT").db(&self.path)?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Record the blob `key` of `size` bytes (confirmed in the store by
    /// the caller): the index's id for it.
    pub fn insert_blob(&self, key: &str, size: u64) -> Result<i64> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO blobs(key, size) VALUES (?1, ?2)")
            .db(&self.path)?
            .execute(params![key, size as i64])
            .db(&self.path)?;
        self.conn
            .prepare_cached("SELECT id FROM blobs WHERE key=?1")
            .db(&self.path)?
            .query_row([key], |r| r.get(0))
            .db(&self.path)
    }

    /// Record chunk `id` at `loc` in the index's blob `blob`, unless the
    /// index knows it already: whether it was new.
    pub fn insert_chunk(&self, id: &ChunkId, blob: i64, loc: &Location) -> Result<bool> {
        let mut st = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO chunks(id, blob, offset, length, size)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .db(&self.path)?;
        Ok(loc.insert_row(&mut st, id, blob).db(&self.path)? > 0)
    }

    /// Blobs, their bytes, chunks and their plaintext bytes, recorded.
    pub fn totals(&self) -> Result<(u64, u64, u64, u64)> {
        let two = |sql: &str| {
            self.conn
                .query_row(sql, [], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
                .map(|(a, b)| (a.max(0) as u64, b.max(0) as u64))
                .db(&self.path)
        };
        let (blobs, blob_bytes) = two("SELECT count(*), coalesce(sum(size), 0) FROM blobs")?;
        let (chunks, bytes) = two("SELECT count(*), coalesce(sum(size), 0) FROM chunks")?;
        Ok((blobs, blob_bytes, chunks, bytes))
    }

    /// Every blob key recorded.
    pub fn blob_keys(&self) -> Result<Vec<String>> {
        let mut st = self.conn.prepare("SELECT key FROM blobs").db(&self.path)?;
        st.query_map([], |r| r.get(0))
            .db(&self.path)?
            .collect::<rusqlite::Result<_>>()
            .db(&self.path)
    }

    /// What the index at `path` holds, if it is a database of this
    /// schema: the store it was made for, its blobs and its files (read
    /// only, never through a symlink; anything amiss is None).
    pub fn peek(path: &Path) -> Option<(String, u64, u64)> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
                | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .ok()?;
        conn.busy_timeout(std::time::Duration::from_secs(30)).ok()?;
        let store: String = conn
            .query_row("SELECT value FROM meta WHERE key='store'", [], |r| r.get(0))
            .ok()?;
        let count = |t: &str| {
            conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .ok()
            .map(|n| n.max(0) as u64)
        };
        Some((store, count("blobs")?, count("files")?))
    }

    /// Schema 1 had a `snapshots` table and `blobs.created`, written and
    /// never read: dropped, the rest kept.
    fn upgrade_from_1(&mut self) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        tx.execute_batch(
            "DROP TABLE IF EXISTS snapshots;
             ALTER TABLE blobs DROP COLUMN created;
             UPDATE meta SET value = '2' WHERE key = 'schema_version';",
        )
        .db(&self.path)?;
        tx.commit().db(&self.path)
    }

    /// The `FILE_ATTRS` columns, unless there.
    fn add_file_attrs(&self) -> Result<()> {
        let there = self
            .conn
            .prepare("SELECT xattrs, flags FROM files LIMIT 0")
            .is_ok();
        if !there {
            let tx = self.conn.unchecked_transaction().db(&self.path)?;
            for add in FILE_ATTRS {
                tx.execute_batch(add).db(&self.path)?;
            }
            tx.commit().db(&self.path)?;
        }
        Ok(())
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .db(&self.path)?;
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        let has_meta: bool = self
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .db(&self.path)?
            > 0;
        if !has_meta {
            return Ok(None);
        }
        self.conn
            .query_row("SELECT value FROM meta WHERE key=?1", [key], |r| r.get(0))
            .optional()
            .db(&self.path)
    }

    /// Drop everything and start an empty cache for `store_id`.
    fn reset(&mut self, store_id: &str) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        let tables: Vec<String> = {
            let mut st = tx
                .prepare("SELECT name FROM sqlite_master WHERE type='table'")
                .db(&self.path)?;
            st.query_map([], |r| r.get(0))
                .db(&self.path)?
                .collect::<rusqlite::Result<_>>()
                .db(&self.path)?
        };
        for t in tables {
            tx.execute_batch(&format!("DROP TABLE IF EXISTS \"{t}\""))
                .db(&self.path)?;
        }
        tx.execute_batch(SCHEMA).db(&self.path)?;
        tx.execute(
            "INSERT INTO meta(key, value) VALUES ('schema_version', ?1), ('store', ?2)",
            params![SCHEMA_VERSION, store_id],
        )
        .db(&self.path)?;
        tx.commit().db(&self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM chunks WHERE id=?1")
            .db(&self.path)?;
        st.exists([&id.0[..]]).db(&self.path)
    }

    /// A second, read-only connection that answers `has_chunk` while this
    /// one writes (WAL: it sees what is committed).
    pub fn lookup(&self) -> Result<ChunkLookup> {
        let conn = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .db(&self.path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .db(&self.path)?;
        conn.pragma_update(None, "cache_size", -2048)
            .db(&self.path)?;
        Ok(ChunkLookup {
            conn,
            path: self.path.clone(),
        })
    }

    /// How many chunks the index records, and each of their ids (in key
    /// order, in one read transaction).
    pub fn chunk_count(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT count(*) FROM chunks", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .db(&self.path)
    }

    pub fn each_chunk_id(&self, f: &mut dyn FnMut(&ChunkId)) -> Result<()> {
        self.read_batch(|index| {
            let mut st = index
                .conn
                .prepare("SELECT id FROM chunks")
                .db(&index.path)?;
            let mut rows = st.query([]).db(&index.path)?;
            while let Some(r) = rows.next().db(&index.path)? {
                let b = r.get_ref(0).db(&index.path)?.as_blob().unwrap_or(&[]);
                if let Some(id) = ChunkId::from_slice(b) {
                    f(&id);
                }
            }
            Ok(())
        })
    }

    /// Where each of `ids` is stored, in one read transaction, handed to
    /// `each` in order, `batch` ids at a time (so that they can be written
    /// elsewhere while the rest are looked up), the last batch saying so.
    /// Stops at the first id it has no location for (`missing`).
    pub fn locate(
        &self,
        ids: impl Iterator<Item = Result<ChunkId>>,
        batch: usize,
        each: &mut dyn FnMut(Located) -> Result<()>,
    ) -> Result<()> {
        self.read_batch(|index| {
            // One prepared statement for every id, and two simple lookups
            // (SQLite re-prepares the equivalent JOIN on every call).
            let mut chunk = index
                .conn
                .prepare_cached("SELECT blob, offset, length, size FROM chunks WHERE id=?1")
                .db(&index.path)?;
            let mut seen: HashSet<i64> = HashSet::new();
            let mut ids = ids.peekable();
            loop {
                let mut found = Located {
                    at: Vec::with_capacity(batch.max(1)),
                    ids: Vec::with_capacity(batch.max(1)),
                    ..Located::default()
                };
                while found.ids.len() < batch.max(1) {
                    let Some(id) = ids.next() else { break };
                    let id = id?;
                    let at = chunk
                        .query_row([&id.0[..]], |r| {
                            Ok((r.get::<_, i64>(0)?, Location::from_row(r, 1)?))
                        })
                        .optional()
                        .db(&index.path)?;
                    let Some((blob, loc)) = at else {
                        found.missing = Some(id);
                        return each(found);
                    };
                    if seen.insert(blob) {
                        let (key, size) = index.blob(blob)?;
                        found.blobs.push((blob, key, size));
                    }
                    found.ids.push(id);
                    found.at.push((blob, loc));
                }
                found.last = ids.peek().is_none();
                let last = found.last;
                each(found)?;
                if last {
                    return Ok(());
                }
            }
        })
    }

    /// Run many reads in one read transaction (one lock and one check of
    /// the file instead of one per statement).
    pub fn read_batch<T>(&self, f: impl FnOnce(&Index) -> Result<T>) -> Result<T> {
        self.conn.execute_batch("BEGIN").db(&self.path)?;
        let r = f(self);
        self.conn.execute_batch("COMMIT").db(&self.path)?;
        r
    }

    /// A blob's key and size, by the index's id for it.
    pub fn blob(&self, id: i64) -> Result<(String, u64)> {
        let mut st = self
            .conn
            .prepare_cached("SELECT key, size FROM blobs WHERE id=?1")
            .db(&self.path)?;
        st.query_row([id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .db(&self.path)
    }

    /// Does the index know the blob `key`, of `size` bytes?
    pub fn has_blob(&self, key: &str, size: u64) -> Result<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT size FROM blobs WHERE key=?1")
            .db(&self.path)?;
        let found: Option<i64> = st
            .query_row([key], |r| r.get(0))
            .optional()
            .db(&self.path)?;
        Ok(found == Some(size as i64))
    }

    /// Record a blob confirmed in the store, with the chunks inside it.
    pub fn add_blob(&mut self, key: &str, size: u64, chunks: &[(ChunkId, Location)]) -> Result<()> {
        self.record_blob(key, size, chunks, "INSERT OR IGNORE")
    }

    /// Record a blob `repack` wrote, its chunks moved there from blobs it
    /// marked for deletion: where the index knows a chunk, it is now here.
    pub fn move_into_blob(
        &mut self,
        key: &str,
        size: u64,
        chunks: &[(ChunkId, Location)],
    ) -> Result<()> {
        self.record_blob(key, size, chunks, "INSERT OR REPLACE")
    }

    fn record_blob(
        &mut self,
        key: &str,
        size: u64,
        chunks: &[(ChunkId, Location)],
        insert: &str,
    ) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        {
            tx.execute(
                "INSERT OR IGNORE INTO blobs(key, size) VALUES (?1, ?2)",
                params![key, size as i64],
            )
            .db(&self.path)?;
            let blob_id: i64 = tx
                .query_row("SELECT id FROM blobs WHERE key=?1", [key], |r| r.get(0))
                .db(&self.path)?;
            let mut st = tx
                .prepare_cached(&format!(
                    "{insert} INTO chunks(id, blob, offset, length, size)
                     VALUES (?1, ?2, ?3, ?4, ?5)"
                ))
                .db(&self.path)?;
            for (id, loc) in chunks {
                loc.insert_row(&mut st, id, blob_id).db(&self.path)?;
            }
        }
        tx.commit().db(&self.path)
    }

    /// Until when the store keeps `key` locked, as far as this index knows
    /// (0: not known), and the version this host uploaded, when the store
    /// said.
    pub fn locked_until(&self, key: &str) -> Result<(u64, Option<String>)> {
        let mut st = self
            .conn
            .prepare_cached("SELECT until, version FROM blob_locks WHERE key=?1")
            .db(&self.path)?;
        let row: Option<(i64, Option<String>)> = st
            .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .db(&self.path)?;
        Ok(row.map_or((0, None), |(u, v)| (u.max(0) as u64, v)))
    }

    /// The store locked `keys` until `until` (never recorded as earlier
    /// than it was); with `version`, the version of the one key uploaded.
    pub fn set_locked_until(
        &mut self,
        keys: &[String],
        until: u64,
        version: Option<&str>,
    ) -> Result<()> {
        let tx = self.conn.transaction().db(&self.path)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO blob_locks(key, until, version) VALUES (?1, ?2, ?3)
                     ON CONFLICT(key) DO UPDATE SET until = max(until, excluded.until),
                       version = coalesce(excluded.version, version)",
                )
                .db(&self.path)?;
            let until = i64::try_from(until).unwrap_or(i64::MAX);
            for k in keys {
                st.execute(params![k, until, version]).db(&self.path)?;
            }
        }
        tx.commit().db(&self.path)
    }

    /// Forget blobs that are no longer in the store, or no longer of the
    /// size they were uploaded with (written over), and their chunks, so
    /// nothing deduplicates against data that is gone (the data is uploaded
    /// again). `present` is the store's blob keys, sorted, with their
    /// sizes. Returns how many were dropped.
    pub fn forget_missing_blobs(&mut self, present: &[(String, u64)]) -> Result<usize> {
        let known: Vec<(i64, String, i64)> = {
            let mut st = self
                .conn
                .prepare("SELECT id, key, size FROM blobs")
                .db(&self.path)?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .db(&self.path)?
                .collect::<rusqlite::Result<_>>()
                .db(&self.path)?
        };
        let gone: Vec<i64> = known
            .into_iter()
            .filter(|(_, k, size)| {
                present
                    .binary_search_by(|(p, _)| p.as_str().cmp(k))
                    .map_or(true, |i| present[i].1 as i64 != *size)
            })
            .map(|(id, _, _)| id)
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let tx = self.conn.transaction().db(&self.path)?;
        // Forget the files that name a chunk of a forgotten blob, so the
        // next run reads them again (and uploads what is really missing).
        let mut lost: HashSet<[u8; 32]> = HashSet::new();
        {
            let mut st = tx
                .prepare("SELECT id FROM chunks WHERE blob=?1")
                .db(&self.path)?;
            for id in &gone {
                let mut rows = st.query([id]).db(&self.path)?;
                while let Some(r) = rows.next().db(&self.path)? {
                    let c: Vec<u8> = r.get(0).db(&self.path)?;
                    if let Ok(c) = <[u8; 32]>::try_from(c.as_slice()) {
                        lost.insert(c);
                    }
                }
            }
            let mut stale: Vec<Vec<u8>> = Vec::new();
            let mut st = tx
                .prepare("SELECT path, chunks FROM files")
                .db(&self.path)?;
            let mut rows = st.query([]).db(&self.path)?;
            while let Some(r) = rows.next().db(&self.path)? {
                let list: Vec<u8> = r.get(1).db(&self.path)?;
                if crate::chunk::chunk_ids(&list).any(|c| lost.contains(&c.0)) {
                    stale.push(r.get(0).db(&self.path)?);
                }
            }
            drop(rows);
            for p in stale {
                tx.execute("DELETE FROM files WHERE path=?1", [p])
                    .db(&self.path)?;
            }
        }
        for id in &gone {
            tx.execute("DELETE FROM chunks WHERE blob=?1", [id])
                .db(&self.path)?;
            tx.execute("DELETE FROM blobs WHERE id=?1", [id])
                .db(&self.path)?;
        }
        tx.commit().db(&self.path)?;
        Ok(gone.len())
    }

    /// The chunk list and attributes recorded for `path`, if its stat is
    /// unchanged.
    pub fn unchanged_file(&self, path: &[u8], stat: &FileStat) -> Result<Option<Known>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT chunks, xattrs, flags FROM files WHERE path=?1 AND size=?2 AND mtime_ns=?3
                 AND ctime_ns=?4 AND ino=?5 AND dev=?6",
            )
            .db(&self.path)?;
        st.query_row(
            params![
                path,
                stat.size as i64,
                stat.mtime_ns,
                stat.ctime_ns,
                stat.ino as i64,
                stat.dev as i64
            ],
            |r| {
                let attrs = match (r.get::<_, Option<Vec<u8>>>(1)?, r.get::<_, Option<i64>>(2)?) {
                    (Some(xattrs), Some(flags)) => u32::try_from(flags)
                        .ok()
                        .map(|flags| Attrs { xattrs, flags }),
                    _ => None,
                };
                Ok(Known {
                    chunks: r.get(0)?,
                    attrs,
                })
            },
        )
        .optional()
        .db(&self.path)
    }

    /// Whether the index has a row for `path` (whatever its stat): a file
    /// to read is then a changed one, not a new one.
    pub fn knows_file(&self, path: &[u8]) -> Result<bool> {
        self.conn
            .prepare_cached("SELECT 1 FROM files WHERE path=?1")
            .db(&self.path)?
            .exists([path])
            .db(&self.path)
    }

    /// Record files, in one transaction, from a source that calls `put`
    /// for each one.
    pub fn store_files(
        &mut self,
        source: &mut dyn FnMut(&mut PutFile<'_>) -> Result<()>,
    ) -> Result<()> {
        let path = self.path.clone();
        let tx = self.conn.transaction().db(&path)?;
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO files(path, size, mtime_ns, ctime_ns, ino, dev, chunks,
                     xattrs, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .db(&path)?;
            source(&mut |p, s, chunks, attrs| {
                st.execute(params![
                    p,
                    s.size as i64,
                    s.mtime_ns,
                    s.ctime_ns,
                    s.ino as i64,
                    s.dev as i64,
                    chunks,
                    attrs.map(|a| a.xattrs.as_slice()),
                    attrs.map(|a| i64::from(a.flags)),
                ])
                .db(&path)?;
                Ok(())
            })?;
        }
        tx.commit().db(&path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_store_resets_a_full_index() {
        let dir = tempfile::tempdir().unwrap();
        // (The index's directory must be private: made so here.)
        let path = dir.path().join("state/index.sqlite");
        let id = ChunkId::of(b"x");
        let loc = Location {
            offset: 0,
            length: 1,
            size: 1,
        };
        {
            let (mut idx, opened) = Index::open(&path, "store a", "at a").unwrap();
            assert_eq!(opened, Opened::Fresh(None));
            idx.add_blob("blobs/aa/bb/k", 10, &[(id, loc)]).unwrap();
            assert!(idx.has_chunk(&id).unwrap());
        }
        let (idx, opened) = Index::open(&path, "store a", "elsewhere").unwrap();
        assert_eq!(opened, Opened::Kept);
        assert!(idx.has_chunk(&id).unwrap());
        drop(idx);
        let (idx, opened) = Index::open(&path, "store b", "at a").unwrap();
        assert_eq!(opened, Opened::Fresh(Some("store a".into())));
        assert!(!idx.has_chunk(&id).unwrap());
        // A run holds the index exclusively until it closes it.
        drop(idx);
        assert!(
            Index::open_existing(&path, "store a", "x")
                .unwrap()
                .is_none()
        );
        assert!(
            Index::open_existing(&path, "store b", "x")
                .unwrap()
                .is_some()
        );
    }

    /// An index of schema 1, keyed by how its store was reached: upgraded
    /// in place and adopted by the store's identity, its contents kept.
    #[test]
    fn an_old_index_is_upgraded_and_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/index.sqlite");
        crate::blob::private_dir(path.parent().unwrap()).unwrap();
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE blobs(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE,
                   size INTEGER NOT NULL, created INTEGER NOT NULL);
                 CREATE TABLE chunks(id BLOB PRIMARY KEY, blob INTEGER NOT NULL REFERENCES blobs(id),
                   offset INTEGER NOT NULL, length INTEGER NOT NULL, size INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE INDEX chunks_blob ON chunks(blob);
                 CREATE TABLE files(path BLOB PRIMARY KEY, size INTEGER NOT NULL,
                   mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, ino INTEGER NOT NULL,
                   dev INTEGER NOT NULL, chunks BLOB NOT NULL) WITHOUT ROWID;
                 CREATE TABLE snapshots(id TEXT PRIMARY KEY, name TEXT NOT NULL, finished INTEGER NOT NULL);
                 INSERT INTO meta VALUES ('schema_version', '1'), ('store', 'directory /s');
                 INSERT INTO blobs VALUES (1, 'blobs/aa/bb/k', 10, 5);
                 INSERT INTO chunks VALUES (x'00', 1, 0, 1, 1);",
            )
            .unwrap();
        }
        let (idx, opened) = Index::open(&path, "0123", "directory /s").unwrap();
        assert_eq!(opened, Opened::Adopted);
        assert_eq!(
            idx.meta("schema_version").unwrap().as_deref(),
            Some(SCHEMA_VERSION)
        );
        assert_eq!(idx.blob(1).unwrap(), ("blobs/aa/bb/k".to_string(), 10));
        drop(idx);
        let (_, opened) = Index::open(&path, "0123", "directory /s").unwrap();
        assert_eq!(opened, Opened::Kept);
    }

    /// A file's attributes are kept beside its stat; an index made before
    /// they were gets the columns, its rows NULL: known unchanged, but not
    /// their attributes (the next run reads those, and only those).
    #[test]
    fn attributes_are_kept_and_an_older_index_gets_their_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/i.sqlite");
        let stat = FileStat {
            size: 1,
            mtime_ns: 2,
            ctime_ns: 3,
            ino: 4,
            dev: 5,
        };
        {
            let (idx, _) = Index::open(&path, "s", "s").unwrap();
            // As an earlier build left it: no such columns, a file row.
            idx.conn
                .execute_batch(
                    "ALTER TABLE files DROP COLUMN xattrs; ALTER TABLE files DROP COLUMN flags;
                     INSERT INTO files VALUES (x'2f6f6c64', 1, 2, 3, 4, 5, x'');",
                )
                .unwrap();
            assert!(idx.unchanged_file(b"/new", &stat).is_err());
        }
        let (mut idx, opened) = Index::open(&path, "s", "s").unwrap();
        assert_eq!(opened, Opened::Kept);
        assert_eq!(
            idx.unchanged_file(b"/old", &stat).unwrap(),
            Some(Known {
                chunks: Vec::new(),
                attrs: None
            })
        );
        let attrs = Attrs {
            xattrs: crate::xattrs::encode(vec![(b"user.a".to_vec(), b"1".to_vec())]).unwrap(),
            flags: crate::xattrs::NODUMP,
        };
        let none = Attrs::default();
        idx.store_files(&mut |put| {
            put(b"/new", stat, b"", Some(&attrs))?;
            put(b"/plain", stat, b"", Some(&none))
        })
        .unwrap();
        let known = |p: &[u8]| idx.unchanged_file(p, &stat).unwrap().unwrap().attrs;
        assert_eq!(known(b"/new"), Some(attrs.clone()));
        assert_eq!(known(b"/plain"), Some(none));
        // Another stat: not unchanged, whatever is known.
        let later = FileStat {
            ctime_ns: 9,
            ..stat
        };
        assert_eq!(idx.unchanged_file(b"/new", &later).unwrap(), None);
    }

    /// An index built by `create_new` (as `rebuild` does) is one
    /// `Index::open` keeps for its store, with what was put in it.
    #[test]
    fn a_built_index_is_kept_by_its_store() {
        let dir = tempfile::tempdir().unwrap();
        // (The index's directory must be private for `open`: made so here.)
        let path = dir.path().join("state/index.sqlite");
        private_dir(path.parent().unwrap()).unwrap();
        std::fs::File::create(&path).unwrap();
        let id = ChunkId::of(b"c");
        let loc = Location {
            offset: 5,
            length: 3,
            size: 1,
        };
        let idx = Index::create_new(&path, "s").unwrap();
        idx.in_transaction(|i| -> Result<()> {
            let b = i.insert_blob("blobs/k", 10)?;
            assert_eq!(i.insert_blob("blobs/k", 10)?, b);
            assert!(i.insert_chunk(&id, b, &loc)?);
            assert!(!i.insert_chunk(&id, b, &loc)?);
            Ok(())
        })
        .unwrap();
        // A failed transaction leaves nothing.
        assert!(
            idx.in_transaction(|i| {
                i.insert_blob("blobs/other", 1)?;
                Err::<(), crate::error::Error>(crate::error::Error::Cancelled)
            })
            .is_err()
        );
        assert_eq!(idx.totals().unwrap(), (1, 10, 1, 1));
        assert_eq!(idx.blob_keys().unwrap(), vec!["blobs/k".to_string()]);
        idx.close().unwrap();
        assert_eq!(Index::peek(&path), Some(("s".to_string(), 1, 0)));
        let (idx, opened) = Index::open(&path, "s", "elsewhere").unwrap();
        assert_eq!(opened, Opened::Kept);
        assert!(idx.has_chunk(&id).unwrap());
        drop(idx);
        // Never through a symlink.
        let link = dir.path().join("state/link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(Index::peek(&link), None);
        assert!(Index::create_new(&link, "s").is_err());
    }

    #[test]
    fn forgetting_missing_blobs_drops_their_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (mut idx, _) = Index::open(&dir.path().join("state/i.sqlite"), "s", "s").unwrap();
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let loc = Location {
            offset: 0,
            length: 1,
            size: 1,
        };
        idx.add_blob("blobs/1", 1, &[(a, loc)]).unwrap();
        idx.add_blob("blobs/2", 1, &[(b, loc)]).unwrap();
        let stat = FileStat {
            size: 1,
            mtime_ns: 2,
            ctime_ns: 3,
            ino: 4,
            dev: 5,
        };
        idx.store_files(&mut |put| {
            put(b"/in-1", stat, &a.0, None)?;
            put(b"/in-2", stat, &b.0, None)
        })
        .unwrap();
        assert_eq!(
            idx.forget_missing_blobs(&[("blobs/2".to_string(), 1)])
                .unwrap(),
            1
        );
        assert!(!idx.has_chunk(&a).unwrap());
        assert!(idx.has_chunk(&b).unwrap());
        // Only the file whose chunk was lost must be read again.
        assert!(idx.unchanged_file(b"/in-1", &stat).unwrap().is_none());
        assert!(idx.unchanged_file(b"/in-2", &stat).unwrap().is_some());
    }
}
