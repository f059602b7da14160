//! A snapshot's encrypted metadata database (`metadata/<id>/db.zst.age`):
//! every entry with its chunk list, and where each chunk is. Written next
//! to the index while a backup runs (`MetaWriter`), sealed, uploaded; read
//! back by restore and `verify --deep`. The clear manifest beside it is
//! `manifest.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};

use age::x25519;
use rusqlite::{Connection, OptionalExtension, params};

use crate::blob::SealWriter;
use crate::chunk::ChunkId;
use crate::error::{DbContext, Error, IoContext, Result};
use crate::xattrs::Attrs;

/// The metadata database's format, in its `info` table. Bumped whenever
/// its schema changes; every older one is still read:
/// - 1: the first; hard links (the `link` column) were added to it
///   without a bump, so a format 1 database may or may not have them;
/// - 2: `link` always there;
/// - 3: chunk lists may hold hole records (`chunk::Piece::Hole`), and
///   entries carry their extended attributes and inode flags (`xattrs`,
///   `flags`: `crate::xattrs`).
pub const FORMAT_VERSION: u64 = 3;
/// The oldest format still read.
pub const OLDEST_FORMAT: u64 = 1;

/// Entry kinds as stored in the metadata database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir = 1,
    File = 2,
    Symlink = 3,
    Fifo = 4,
    CharDev = 5,
    BlockDev = 6,
    Socket = 7,
}

impl Kind {
    pub fn from_i64(v: i64) -> Option<Kind> {
        Some(match v {
            1 => Kind::Dir,
            2 => Kind::File,
            3 => Kind::Symlink,
            4 => Kind::Fifo,
            5 => Kind::CharDev,
            6 => Kind::BlockDev,
            7 => Kind::Socket,
            _ => return None,
        })
    }
}

/// The schema a backup writes (`temp_files` is dropped before sealing).
/// Changing it: bump `FORMAT_VERSION`, and add the schema it replaces to
/// `metadata::SCHEMAS`, which readers accept nothing but.
pub const META_SCHEMA: &str = "
CREATE TABLE info(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries(
    id INTEGER PRIMARY KEY,
    path BLOB NOT NULL UNIQUE,
    kind INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    rdev INTEGER NOT NULL DEFAULT 0,
    target BLOB,
    chunks BLOB,
    link BLOB,
    xattrs BLOB,
    flags INTEGER
);
CREATE TABLE blobs(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, size INTEGER NOT NULL);
CREATE TABLE chunks(
    id BLOB PRIMARY KEY,
    blob INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE temp_files(
    path BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    dev INTEGER NOT NULL,
    chunks BLOB NOT NULL,
    xattrs BLOB,
    flags INTEGER
) WITHOUT ROWID;
";

/// One entry as recorded in a snapshot.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub rdev: u64,
    pub target: Option<Vec<u8>>,
    /// For a file with more than one link: the path of the first link seen
    /// in this snapshot (the entry keeps its own chunk list, so it can also
    /// be restored alone).
    pub link: Option<Vec<u8>>,
    /// Extended attributes and inode flags (the columns are NULL for
    /// none).
    pub attrs: crate::xattrs::Attrs,
}

/// The metadata database of a snapshot being written: a file next to the
/// index (never in the store unencrypted).
pub struct MetaWriter {
    pub conn: Connection,
    pub path: PathBuf,
}

impl MetaWriter {
    pub fn create(path: &Path) -> Result<MetaWriter> {
        let _ = std::fs::remove_file(path);
        crate::blob::private_file(path)?;
        let conn = Connection::open(path).db(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA temp_store=MEMORY;
             PRAGMA locking_mode=EXCLUSIVE; PRAGMA cache_size=-4096;",
        )
        .db(path)?;
        conn.execute_batch(META_SCHEMA).db(path)?;
        Ok(MetaWriter {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Remember a file read in this run, for the index once its chunks are
    /// all confirmed stored (kept on disk, not in memory), with its
    /// attributes when they were read whole (None: the index does not
    /// know them, and the next run reads them again).
    pub fn note_file(
        &self,
        path: &[u8],
        st: &crate::index::FileStat,
        chunks: &[u8],
        attrs: Option<&Attrs>,
    ) -> Result<()> {
        let mut q = self
            .conn
            .prepare_cached(
                "INSERT OR REPLACE INTO temp_files(path, size, mtime_ns, ctime_ns, ino, dev, chunks,
                 xattrs, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .db(&self.path)?;
        q.execute(params![
            path,
            st.size as i64,
            st.mtime_ns,
            st.ctime_ns,
            st.ino as i64,
            st.dev as i64,
            chunks,
            attrs.map(|a| a.xattrs.as_slice()),
            attrs.map(|a| i64::from(a.flags)),
        ])
        .db(&self.path)?;
        Ok(())
    }

    /// Call `f` with each remembered file, streaming from disk.
    pub fn each_file(&self, f: &mut crate::index::PutFile<'_>) -> Result<()> {
        let mut st = self
            .conn
            .prepare(
                "SELECT path, size, mtime_ns, ctime_ns, ino, dev, chunks, xattrs, flags
                 FROM temp_files",
            )
            .db(&self.path)?;
        let mut rows = st.query([]).db(&self.path)?;
        while let Some(r) = rows.next().db(&self.path)? {
            let stat = crate::index::FileStat {
                size: r.get::<_, i64>(1).db(&self.path)? as u64,
                mtime_ns: r.get(2).db(&self.path)?,
                ctime_ns: r.get(3).db(&self.path)?,
                ino: r.get::<_, i64>(4).db(&self.path)? as u64,
                dev: r.get::<_, i64>(5).db(&self.path)? as u64,
            };
            let blob = |i: usize| -> Result<&[u8]> {
                r.get_ref(i)
                    .db(&self.path)?
                    .as_blob()
                    .map_err(|e| Error::corrupt("snapshot database", e))
            };
            let (path, chunks) = (blob(0)?, blob(6)?);
            let xattrs: Option<Vec<u8>> = r.get(7).db(&self.path)?;
            let flags: Option<i64> = r.get(8).db(&self.path)?;
            let attrs = match (xattrs, flags) {
                (Some(xattrs), Some(flags)) => Some(Attrs {
                    xattrs,
                    flags: u32::try_from(flags).unwrap_or(0),
                }),
                _ => None,
            };
            f(path, stat, chunks, attrs.as_ref())?;
        }
        Ok(())
    }

    /// Forget the remembered files (the table never reaches the store).
    pub fn drop_files(&self) -> Result<()> {
        self.conn
            .execute_batch("DROP TABLE temp_files")
            .db(&self.path)
    }

    /// Start the one transaction that ends in `seal`.
    pub fn begin(&self) -> Result<()> {
        self.conn.execute_batch("BEGIN").db(&self.path)
    }

    /// Copy the entries of the previous snapshot `prev` that are outside
    /// every path in `scopes` (which the caller walks again). Returns the
    /// number of entries, of regular files and their bytes; None, having
    /// copied nothing, when `prev` was made by a build that did not record
    /// extended attributes and inode flags (its entries' are unknown, not
    /// none: everything is to be walked again).
    pub fn carry_over(&self, prev: &Path, scopes: &[PathBuf]) -> Result<Option<(u64, u64, u64)>> {
        use std::os::unix::ffi::OsStrExt;
        let prev_s = prev
            .to_str()
            .ok_or_else(|| Error::Setup(format!("{} is not UTF-8", prev.display())))?;
        self.conn
            .execute("ATTACH DATABASE ?1 AS prev", [prev_s])
            .db(&self.path)?;
        if !has_attrs(&self.conn, "prev") {
            self.conn
                .execute_batch("DETACH DATABASE prev")
                .db(&self.path)?;
            return Ok(None);
        }
        let mut cond = String::from("1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        for sc in scopes {
            let b = sc.as_os_str().as_bytes().to_vec();
            let mut under = b.clone();
            under.push(b'/');
            let (i, j, k) = (args.len() + 1, args.len() + 2, args.len() + 3);
            // Byte-wise on BLOBs: `||` would turn them into TEXT.
            cond.push_str(&format!(
                " AND NOT (path = ?{i} OR substr(path, 1, ?{k}) = ?{j})"
            ));
            let len = under.len() as i64;
            args.push(rusqlite::types::Value::Blob(b));
            args.push(rusqlite::types::Value::Blob(under));
            args.push(rusqlite::types::Value::Integer(len));
        }
        // Hard links stay links.
        let link = link_column(&self.conn, "prev");
        let sql = format!(
            "INSERT INTO entries(path, kind, mode, uid, gid, size, mtime_ns, rdev, target, chunks,
             link, xattrs, flags)
             SELECT path, kind, mode, uid, gid, size, mtime_ns, rdev, target, chunks, {link},
             xattrs, flags FROM prev.entries WHERE {cond} ORDER BY id"
        );
        let n = self
            .conn
            .execute(&sql, rusqlite::params_from_iter(args.iter()))
            .db(&self.path)?;
        let (files, bytes): (i64, i64) = self
            .conn
            .query_row(
                "SELECT count(*), coalesce(sum(size), 0) FROM entries WHERE kind = 2",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .db(&self.path)?;
        self.conn
            .execute_batch("DETACH DATABASE prev")
            .db(&self.path)?;
        Ok(Some((n as u64, files as u64, bytes as u64)))
    }

    /// SHA-256 over every entry in path order: equal digests mean the
    /// snapshots would restore identically.
    pub fn digest(&self) -> Result<String> {
        digest_of(&self.conn, &self.path)
    }

    pub fn set_info(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO info(key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .db(&self.path)?;
        Ok(())
    }

    pub fn add(&self, e: &Entry, chunks: Option<&[u8]>) -> Result<i64> {
        let mut st = self
            .conn
            .prepare_cached(
                "INSERT INTO entries(path, kind, mode, uid, gid, size, mtime_ns, rdev, target, chunks,
                 link, xattrs, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .db(&self.path)?;
        let (xattrs, flags) = e.attrs.columns();
        st.execute(params![
            e.path,
            e.kind as i64,
            e.mode,
            e.uid,
            e.gid,
            e.size as i64,
            e.mtime_ns,
            e.rdev as i64,
            e.target,
            chunks,
            e.link,
            xattrs,
            flags
        ])
        .db(&self.path)?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Set the extended attributes and inode flags of entry `id` (a file
    /// whose were read with its content, or alone).
    pub fn set_attrs(&self, id: i64, attrs: &Attrs) -> Result<()> {
        let mut st = self
            .conn
            .prepare_cached("UPDATE entries SET xattrs=?2, flags=?3 WHERE id=?1")
            .db(&self.path)?;
        let (xattrs, flags) = attrs.columns();
        st.execute(params![id, xattrs, flags]).db(&self.path)?;
        Ok(())
    }

    pub fn set_chunks(&self, id: i64, size: u64, chunks: &[u8]) -> Result<()> {
        let mut st = self
            .conn
            .prepare_cached("UPDATE entries SET chunks=?2, size=?3 WHERE id=?1")
            .db(&self.path)?;
        st.execute(params![id, chunks, size as i64])
            .db(&self.path)?;
        Ok(())
    }

    pub fn remove(&self, id: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM entries WHERE id=?1", [id])
            .db(&self.path)?;
        Ok(())
    }

    /// Call `f` with every chunk id the entries reference (in no order,
    /// repeats included; holes are no chunks).
    pub fn each_chunk_id(&self, f: &mut dyn FnMut(ChunkId) -> Result<()>) -> Result<()> {
        let mut st = self
            .conn
            .prepare("SELECT chunks FROM entries WHERE chunks IS NOT NULL")
            .db(&self.path)?;
        let mut rows = st.query([]).db(&self.path)?;
        while let Some(row) = rows.next().db(&self.path)? {
            let list = row
                .get_ref(0)
                .db(&self.path)?
                .as_blob()
                .map_err(|e| Error::corrupt(self.path.display().to_string(), e))?;
            for id in crate::chunk::chunk_ids(list) {
                f(id)?;
            }
        }
        Ok(())
    }

    /// Fill the chunk and blob tables with where the index says the
    /// snapshot's chunks are, as `located` hands them over (every id once,
    /// in order). Returns the (key, size) of every blob needed; `Cancelled`
    /// if `located` ends before `done` is said (the error is the locating
    /// side's). A chunk the index has no location for is `StaleBase` when
    /// entries were carried over from the last snapshot (`carried`: its
    /// blob was deleted since), else a damaged index.
    pub fn write_chunks(
        &self,
        located: impl IntoIterator<Item = crate::index::Located>,
        index: &Path,
        carried: bool,
    ) -> Result<Vec<(String, u64)>> {
        let mut blobs: Vec<(String, u64)> = Vec::new();
        let mut ins_blob = self
            .conn
            .prepare_cached("INSERT INTO blobs(id, key, size) VALUES (?1, ?2, ?3)")
            .db(&self.path)?;
        let mut rows = LocatedRows::new(self, index, carried)?;
        let mut done = false;
        for found in located {
            done |= found.last;
            rows.add(&found, &mut |key, size| {
                let id = blobs.len() as i64 + 1;
                ins_blob
                    .execute(params![id, key, size as i64])
                    .db(&self.path)?;
                blobs.push((key.to_string(), size));
                Ok(id)
            })?;
        }
        if !done {
            return Err(Error::Cancelled);
        }
        blobs.sort();
        Ok(blobs)
    }

    /// Start from the chunk and blob tables of `prev` (the kept metadata
    /// of the last snapshot of the same name) when this snapshot's chunks
    /// (`ids`: sorted, each once) differ from its by at most `PATCH_MAX`,
    /// and the index still has every blob `prev` names: the tables are
    /// copied (SQLite's transfer path), the chunks no longer referenced
    /// removed, and the new ones located in the index and added. A million
    /// locations are copied in a fraction of the time it takes to look them
    /// up and insert them one by one. A blob's chunks never move (its key
    /// is the hash of its bytes), so the copied locations hold. Returns the
    /// (key, size) of every blob needed, or None, having written nothing,
    /// when the tables cannot be reused (`ids` is then part read). A new
    /// chunk the index cannot locate is an error as in `write_chunks`.
    pub fn reuse_chunks(
        &self,
        prev: &Path,
        ids: &mut dyn Iterator<Item = Result<ChunkId>>,
        index: &crate::index::Index,
        carried: bool,
    ) -> Result<Option<Vec<(String, u64)>>> {
        let Some(prev_s) = prev.to_str() else {
            return Ok(None);
        };
        // ATTACH and DETACH are refused within a transaction.
        self.conn.execute_batch("COMMIT").db(&self.path)?;
        self.conn
            .execute("ATTACH DATABASE ?1 AS prev", [prev_s])
            .db(&self.path)?;
        // A kept database that cannot be read only means no reuse.
        let reused = match self.chunk_diff(ids, index) {
            Ok(Some(diff)) => self
                .conn
                .execute_batch("BEGIN")
                .db(&self.path)
                .and_then(|()| {
                    let r = self.patch_chunks(&diff, index, carried);
                    let end = if r.is_ok() { "COMMIT" } else { "ROLLBACK" };
                    let ended = self.conn.execute_batch(end).db(&self.path);
                    let blobs = r?;
                    ended.map(|()| Some(blobs))
                }),
            Ok(None) | Err(_) => Ok(None),
        };
        let restarted = self
            .conn
            .execute_batch("DETACH DATABASE prev; BEGIN")
            .db(&self.path);
        let reused = reused?;
        restarted?;
        Ok(reused)
    }

    /// How this snapshot's chunks differ from those of the attached
    /// `prev`, if `prev` can be reused: a format with these tables, every
    /// blob known to the index, at most `PATCH_MAX` differences.
    fn chunk_diff(
        &self,
        ids: &mut dyn Iterator<Item = Result<ChunkId>>,
        index: &crate::index::Index,
    ) -> Result<Option<ChunkDiff>> {
        let format: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM prev.info WHERE key = 'format'",
                [],
                |r| r.get(0),
            )
            .optional()
            .db(&self.path)?;
        // Formats 2 and 3 have the same chunk and blob tables (3 only lets
        // entries' lists hold holes).
        if !matches!(format.as_deref(), Some("2" | "3")) {
            return Ok(None);
        }
        {
            let mut st = self
                .conn
                .prepare("SELECT key, size FROM prev.blobs")
                .db(&self.path)?;
            let mut rows = st.query([]).db(&self.path)?;
            while let Some(r) = rows.next().db(&self.path)? {
                let key: String = r.get(0).db(&self.path)?;
                let size = r.get::<_, i64>(1).db(&self.path)? as u64;
                if !index.has_blob(&key, size)? {
                    return Ok(None);
                }
            }
        }
        let mut diff = ChunkDiff::default();
        let mut st = self
            .conn
            .prepare("SELECT id FROM prev.chunks ORDER BY id")
            .db(&self.path)?;
        let mut rows = st.query([]).db(&self.path)?;
        let mut theirs = next_prev_id(rows.next().db(&self.path)?)?;
        let mut ours = ids.next().transpose()?;
        loop {
            match (theirs, ours) {
                (None, None) => break,
                (Some(t), Some(o)) if t == o => {
                    theirs = next_prev_id(rows.next().db(&self.path)?)?;
                    ours = ids.next().transpose()?;
                }
                (Some(t), o) if o.is_none_or(|o| t < o) => {
                    diff.gone.push(t);
                    theirs = next_prev_id(rows.next().db(&self.path)?)?;
                }
                (_, o) => {
                    diff.new.extend(o);
                    ours = ids.next().transpose()?;
                }
            }
            if diff.gone.len() + diff.new.len() > PATCH_MAX {
                return Ok(None);
            }
        }
        Ok(Some(diff))
    }

    /// Copy the attached `prev`'s tables and apply `diff`; the blobs needed.
    fn patch_chunks(
        &self,
        diff: &ChunkDiff,
        index: &crate::index::Index,
        carried: bool,
    ) -> Result<Vec<(String, u64)>> {
        self.conn
            .execute_batch(
                "INSERT INTO blobs SELECT * FROM prev.blobs;
                 INSERT INTO chunks SELECT * FROM prev.chunks;",
            )
            .db(&self.path)?;
        {
            let mut del = self
                .conn
                .prepare("DELETE FROM chunks WHERE id = ?1")
                .db(&self.path)?;
            for id in &diff.gone {
                del.execute([&id.0[..]]).db(&self.path)?;
            }
        }
        if !diff.new.is_empty() {
            let mut find_blob = self
                .conn
                .prepare("SELECT id FROM blobs WHERE key = ?1")
                .db(&self.path)?;
            let mut ins_blob = self
                .conn
                .prepare("INSERT INTO blobs(key, size) VALUES (?1, ?2)")
                .db(&self.path)?;
            let mut rows = LocatedRows::new(self, index.path(), carried)?;
            let ids = diff.new.iter().copied().map(Ok);
            index.locate(ids, 2048, &mut |found| {
                rows.add(&found, &mut |key, size| {
                    let ours: Option<i64> = find_blob
                        .query_row([key], |r| r.get(0))
                        .optional()
                        .db(&self.path)?;
                    match ours {
                        Some(id) => Ok(id),
                        None => {
                            ins_blob.execute(params![key, size as i64]).db(&self.path)?;
                            Ok(self.conn.last_insert_rowid())
                        }
                    }
                })
            })?;
        }
        if !diff.gone.is_empty() {
            self.conn
                .execute(
                    "DELETE FROM blobs WHERE id NOT IN (SELECT DISTINCT blob FROM chunks)",
                    [],
                )
                .db(&self.path)?;
        }
        let mut st = self
            .conn
            .prepare("SELECT key, size FROM blobs ORDER BY key")
            .db(&self.path)?;
        let blobs = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })
            .db(&self.path)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .db(&self.path)?;
        Ok(blobs)
    }

    /// The error for a chunk the index has no blob for, naming a file.
    fn unlocated(&self, index: &Path, id: &ChunkId) -> Error {
        let path: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT path FROM entries WHERE instr(chunks, ?1) > 0 LIMIT 1",
                [&id.0[..]],
                |r| r.get(0),
            )
            .ok();
        Error::corrupt(
            format!("index {}", index.display()),
            format!(
                "chunk {} of {} is not recorded in any blob",
                id.hex(),
                String::from_utf8_lossy(&path.unwrap_or_default())
            ),
        )
    }

    /// Commit, then compress and encrypt the database into a temporary file.
    pub fn seal(
        self,
        tmp_dir: &Path,
        recipients: &[x25519::Recipient],
        level: i32,
    ) -> Result<crate::blob::SealedFile> {
        self.conn.execute_batch("COMMIT").db(&self.path)?;
        let path = self.path.clone();
        self.conn.close().map_err(|(_, e)| e).db(&path)?;
        seal_database(&path, tmp_dir, recipients, level)
    }
}

/// zstd level for the metadata database: it is a small part of the bucket,
/// and compressing it is on the critical path of every run (level 1: 30 ms
/// for 50k entries where level 3 takes 50 ms, for 3% more bytes).
pub const METADATA_LEVEL: i32 = 1;

/// Compress and encrypt the database file at `path` (closed) into a
/// temporary file in `tmp_dir`, as a snapshot's metadata is stored: its
/// length (8 bytes, little-endian), then the file, in one zstd stream.
pub fn seal_database(
    path: &Path,
    tmp_dir: &Path,
    recipients: &[x25519::Recipient],
    level: i32,
) -> Result<crate::blob::SealedFile> {
    let mut src = std::fs::File::open(path).at("open", path)?;
    let len = src.metadata().at("stat", path)?.len();
    let seal = SealWriter::create(tmp_dir, "metadata", recipients)?;
    let mut enc = zstd::Encoder::new(SealSink(seal), level).at("compress", path)?;
    // Compressed by worker threads while this one reads and encrypts:
    // sealing is on the critical path of every run (a million entries:
    // 190 MB of database).
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    enc.multithread(workers as u32).at("compress", path)?;
    enc.write_all(&len.to_le_bytes()).at("compress", path)?;
    std::io::copy(&mut src, &mut enc).at("compress", path)?;
    let SealSink(seal) = enc.finish().at("compress", path)?;
    seal.finish()
}

/// Writes the chunk rows of what the index located, mapping the index's
/// blob ids to the database's (`write_chunks`, `patch_chunks`).
struct LocatedRows<'m> {
    meta: &'m MetaWriter,
    insert: rusqlite::CachedStatement<'m>,
    /// The index's blob id -> the database's.
    blob_ids: std::collections::HashMap<i64, i64>,
    index: &'m Path,
    /// A chunk the index cannot locate means a stale base (see
    /// `write_chunks`).
    carried: bool,
}

impl<'m> LocatedRows<'m> {
    fn new(meta: &'m MetaWriter, index: &'m Path, carried: bool) -> Result<LocatedRows<'m>> {
        let insert = meta
            .conn
            .prepare_cached(
                "INSERT INTO chunks(id, blob, offset, length, size) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .db(&meta.path)?;
        Ok(LocatedRows {
            meta,
            insert,
            blob_ids: Default::default(),
            index,
            carried,
        })
    }

    /// Add one batch; `blob` gives the database's id for a blob first
    /// named here (its key and size).
    fn add(
        &mut self,
        found: &crate::index::Located,
        blob: &mut dyn FnMut(&str, u64) -> Result<i64>,
    ) -> Result<()> {
        for (index_blob, key, size) in &found.blobs {
            let id = blob(key, *size)?;
            self.blob_ids.insert(*index_blob, id);
        }
        for (id, (index_blob, loc)) in found.ids.iter().zip(&found.at) {
            let blob_id = self
                .blob_ids
                .get(index_blob)
                .expect("locate() names each blob before pointing at it");
            loc.insert_row(&mut self.insert, id, *blob_id)
                .db(&self.meta.path)?;
        }
        match &found.missing {
            Some(_) if self.carried => Err(Error::StaleBase),
            Some(id) => Err(self.meta.unlocated(self.index, id)),
            None => Ok(()),
        }
    }
}

/// Differences between a snapshot's chunks and the last one's at most
/// that reuse its chunk table (a million-chunk snapshot where a thousand
/// files changed is patched; one where most did is built anew).
const PATCH_MAX: usize = 1 << 16;

/// How a snapshot's chunks differ from the last snapshot's.
#[derive(Default)]
struct ChunkDiff {
    /// In the last snapshot's table only.
    gone: Vec<ChunkId>,
    /// In this snapshot only.
    new: Vec<ChunkId>,
}

/// A chunk id read from the last snapshot's table.
fn next_prev_id(row: Option<&rusqlite::Row<'_>>) -> Result<Option<ChunkId>> {
    let Some(r) = row else { return Ok(None) };
    let b = r
        .get_ref(0)
        .map_err(|e| Error::corrupt("kept snapshot database", e))?
        .as_blob()
        .map_err(|e| Error::corrupt("kept snapshot database", e))?;
    ChunkId::from_slice(b)
        .map(Some)
        .ok_or_else(|| Error::corrupt("kept snapshot database", "a chunk id is not 32 bytes"))
}

/// Lets a zstd encoder write into a `SealWriter`.
struct SealSink(SealWriter);

impl Write for SealSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The digest of a kept metadata database: recorded in it, or computed
/// (once: it is then recorded) for one made without (`snapshot create`
/// does not spend the time; only the daemon compares). `None` if it
/// cannot be read.
pub fn stored_digest(path: &Path) -> Option<String> {
    if let Some(d) = stored_info(path, "digest") {
        return Some(d);
    }
    // Read-write to record it, but never created: a missing file is no
    // snapshot (an empty one would be taken as the base of the next run).
    let conn =
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE).ok()?;
    let d = digest_of(&conn, path).ok()?;
    // A cache: if it cannot be written, it is computed again next time.
    let _ = conn.execute(
        "INSERT OR REPLACE INTO info(key, value) VALUES ('digest', ?1)",
        [&d],
    );
    Some(d)
}

/// SHA-256 over every entry in path order: equal digests mean the
/// snapshots would restore identically.
///
/// A stream's snapshot (`info` has `stream`) is dated by when it was read:
/// its entry's time is left out, so that the same output twice is the
/// same snapshot.
fn digest_of(conn: &Connection, path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let stream: bool = conn
        .query_row("SELECT count(*) FROM info WHERE key = 'stream'", [], |r| {
            r.get::<_, i64>(0)
        })
        .db(path)?
        > 0;
    let mut st = conn
        .prepare(&format!(
            "SELECT path, kind, mode, uid, gid, size, CASE WHEN ?1 THEN 0 ELSE mtime_ns END,
             rdev, target, chunks, link, {} FROM entries ORDER BY path",
            attr_columns(conn, "main")
        ))
        .db(path)?;
    let mut rows = st.query([stream]).db(path)?;
    while let Some(r) = rows.next().db(path)? {
        for i in 0..13 {
            use rusqlite::types::ValueRef;
            let int;
            let bytes: &[u8] = match r.get_ref(i).db(path)? {
                ValueRef::Null => b"N",
                ValueRef::Integer(n) => {
                    int = n.to_le_bytes();
                    &int
                }
                ValueRef::Real(f) => {
                    int = f.to_le_bytes();
                    &int
                }
                ValueRef::Blob(b) | ValueRef::Text(b) => b,
            };
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
    }
    Ok(crate::chunk::hex(&h.finalize()))
}

/// The `link` column of `schema`'s entries, as an SQL expression: always
/// there from format 2; in format 1 only in databases made after hard
/// links were recorded (`NULL` for the others, which have none).
pub fn link_column(conn: &Connection, schema: &str) -> &'static str {
    let format: Option<String> = conn
        .query_row(
            &format!("SELECT value FROM {schema}.info WHERE key = 'format'"),
            [],
            |r| r.get(0),
        )
        .ok();
    let v1 = format.as_deref().is_none_or(|f| f == "1");
    if !v1
        || conn
            .prepare(&format!("SELECT link FROM {schema}.entries LIMIT 0"))
            .is_ok()
    {
        "link"
    } else {
        "NULL"
    }
}

/// Whether `schema`'s entries have the `xattrs` and `flags` columns:
/// every database of format 3 read from the store (its schema is checked),
/// but not a kept one (`last/`) made by an earlier build.
pub fn has_attrs(conn: &Connection, schema: &str) -> bool {
    conn.prepare(&format!(
        "SELECT xattrs, flags FROM {schema}.entries LIMIT 0"
    ))
    .is_ok()
}

/// The `xattrs, flags` columns of `schema`'s entries as SQL expressions
/// (`NULL, NULL` where there are none: formats 1 and 2, which recorded
/// none).
pub fn attr_columns(conn: &Connection, schema: &str) -> &'static str {
    if has_attrs(conn, schema) {
        "xattrs, flags"
    } else {
        "NULL, NULL"
    }
}

/// A value from the info table of a kept metadata database.
pub fn stored_info(path: &Path, key: &str) -> Option<String> {
    let conn =
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.query_row("SELECT value FROM info WHERE key=?1", [key], |r| r.get(0))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_of_a_missing_snapshot_is_none_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("last.sqlite");
        assert_eq!(stored_digest(&path), None);
        assert!(!path.exists());
    }

    /// Format 1 databases are still read: the `link` column is there in
    /// some (NULL for the others), in format 2 it always is (which formats
    /// and schemas are read: `metadata`'s tests).
    #[test]
    fn older_formats_are_read() {
        let db = |format: &str, with_link: bool| {
            let conn = Connection::open_in_memory().unwrap();
            conn.execute_batch(&format!(
                "CREATE TABLE info(key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 INSERT INTO info VALUES ('format', '{format}');
                 CREATE TABLE entries(path BLOB{});",
                if with_link { ", link BLOB" } else { "" }
            ))
            .unwrap();
            conn
        };
        assert_eq!(link_column(&db("1", false), "main"), "NULL");
        assert_eq!(link_column(&db("1", true), "main"), "link");
        assert_eq!(link_column(&db("2", true), "main"), "link");
        assert_eq!(FORMAT_VERSION, 3);
        // What a backup writes today has it.
        let w = Connection::open_in_memory().unwrap();
        w.execute_batch(META_SCHEMA).unwrap();
        w.execute("INSERT INTO info VALUES ('format', '3')", [])
            .unwrap();
        w.prepare("SELECT link FROM entries").unwrap();
    }

    /// The entries of a kept last snapshot are carried over with their
    /// attributes; one kept by an earlier build (without them) carries
    /// nothing, so that everything is walked, and read, again.
    #[test]
    fn carry_over_keeps_attributes_and_never_takes_unknown_ones_for_none() {
        let dir = tempfile::tempdir().unwrap();
        let entry = |path: &[u8], attrs: Attrs| Entry {
            path: path.to_vec(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 0,
            rdev: 0,
            target: None,
            link: None,
            attrs,
        };
        let attrs = Attrs {
            xattrs: crate::xattrs::encode(vec![(b"user.a".to_vec(), b"1".to_vec())]).unwrap(),
            flags: crate::xattrs::IMMUTABLE,
        };
        let prev = dir.path().join("prev.sqlite");
        {
            let w = MetaWriter::create(&prev).unwrap();
            w.add(&entry(b"/kept/f", attrs.clone()), Some(&[])).unwrap();
            w.add(&entry(b"/walked/g", Attrs::default()), Some(&[]))
                .unwrap();
            w.set_info("format", "3").unwrap();
        }
        let scopes = [PathBuf::from("/walked")];
        let next = MetaWriter::create(&dir.path().join("next.sqlite")).unwrap();
        assert_eq!(next.carry_over(&prev, &scopes).unwrap(), Some((1, 1, 0)));
        let (x, f): (Vec<u8>, i64) = next
            .conn
            .query_row("SELECT xattrs, flags FROM entries", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((x, f), (attrs.xattrs.clone(), 0x10));
        // Kept by an earlier build: format 2's schema (no such columns).
        let old = dir.path().join("old.sqlite");
        let conn = Connection::open(&old).unwrap();
        conn.execute_batch(crate::metadata::SCHEMA_2).unwrap();
        conn.execute_batch(
            "INSERT INTO info VALUES ('format', '3');
             INSERT INTO entries(path, kind, mode, uid, gid, size, mtime_ns, chunks)
             VALUES (x'2f6b6570742f66', 2, 420, 0, 0, 0, 0, x'');",
        )
        .unwrap();
        drop(conn);
        let fresh = MetaWriter::create(&dir.path().join("fresh.sqlite")).unwrap();
        assert_eq!(fresh.carry_over(&old, &scopes).unwrap(), None);
        let n: i64 = fresh
            .conn
            .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        // Its digest is still computed (every column there is NULL).
        assert!(stored_digest(&old).is_some());
    }
}
