//! A snapshot's metadata database as read back from the store (restore,
//! `restore --stdout`, `ls`, `find`, `diff`, `verify --deep`).
//!
//! Anyone who can write to the store has the public key, so anyone can
//! seal a database of their own choosing, and a database is code: its
//! schema can make a table a view (a recursive query that never ends),
//! give a column a generated expression (`zeroblob(1e9)`), add triggers,
//! or steer the query planner (`sqlite_stat1`). So a database from the
//! store can do no more than a real one of its size:
//!
//! - its plaintext is at most `METADATA_RATIO` times its sealed size (at
//!   least `METADATA_FLOOR`), checked before anything is written;
//! - it is kept in a private scratch directory (`scratch`), unlinked once
//!   open;
//! - the connection is hardened before its first statement: SQLite's
//!   defensive mode, no triggers, no views, an untrusted schema, no
//!   extensions, no memory maps, a small page cache, temporary
//!   structures in memory, and tight limits on statement and value sizes;
//! - its schema must be exactly one that vaultik wrote (`SCHEMAS`: the
//!   same tables, columns, types and constraints, and nothing else: no
//!   view, trigger, index or statistics of its own);
//! - every query over it shares one budget of SQLite virtual machine
//!   steps, proportional to the database's size (`STEPS_PER_BYTE`): a
//!   query that would go on longer is interrupted, and the error names
//!   the database as damaged (`error::OVER_BUDGET`).
//!
//! Its values are still the forger's: every reader checks them (types,
//! sizes, paths) as it reads.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use age::x25519;
use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::{Connection, OpenFlags};

use sha2::Digest;

use crate::error::{DbContext, Error, IoContext, Result};
use crate::layout;
use crate::scratch::PrivateDir;
use crate::snapshot::{FORMAT_VERSION, OLDEST_FORMAT};
use crate::store::Store;

/// A metadata database is at most this many times the size of its sealed
/// object (and at least `METADATA_FLOOR` is always allowed): what a forged
/// one can make a command write and read grows with what is stored, not
/// with what it claims. Real ones compress far better than one would
/// think: paths share their prefixes, and each is stored twice (its row
/// and the `path` index). Measured (zstd level 1, as written): 2.6 times
/// for /usr/share (43k files), 8 for 10,000 empty files, 18 for 60,000 in
/// one directory, 80 for 100,000 empty files with 190-byte names eight
/// directories down, 311 for 20,000 empty files under a 3,840-byte path
/// (PATH_MAX allows no longer). 64, the bound until this one, refused the
/// last two: real snapshots.
pub const METADATA_RATIO: u64 = 1024;
/// Any database up to this size is read, whatever its sealed size (a
/// small snapshot's database is mostly empty pages: 36 KiB sealed in
/// 1.2 KB, 31 times).
pub const METADATA_FLOOR: u64 = 1 << 20;

/// SQLite virtual machine steps allowed per byte of database, over
/// everything a command does with it (`STEPS_FLOOR` at least). Measured
/// (VAULTIK_TIMINGS prints it), a whole restore, the page check
/// included: 0.6 steps per byte for /usr/share (43k files, a 17.7 MB
/// database: 10.8 million steps) and for 100k small files (36.7 MB: 22.4
/// million); 1.1 for 20k hard links, 20k symlinks and 20k directories;
/// 1.5 for 10k empty files with short names (the smallest rows); 0.1 and
/// less for long paths. `ls`, `find`, `diff` and `verify --deep` take
/// about 0.1 (mostly the page check). SQLite runs about 100 million steps
/// a second here: a forged database of a few kilobytes is stopped within
/// a second or two, one of a megabyte (up to a gigabyte of database)
/// within about five minutes.
pub const STEPS_PER_BYTE: u64 = 32;
pub const STEPS_FLOOR: u64 = 50_000_000;
/// Steps between two looks at the budget.
const STEP_GRAIN: i32 = 10_000;

/// Pages of the restore's plan database (attached to this connection),
/// at most: `PLAN_RATIO` times the metadata, plus `PLAN_FLOOR` bytes (a
/// plan holds a row per entry and per chunk to write, each a little
/// larger than the metadata's).
pub const PLAN_RATIO: u64 = 8;
pub const PLAN_FLOOR: u64 = 16 << 20;

/// The schemas vaultik has written, each a frozen copy of what its formats
/// hold: format 1 without hard links, then with them (formats 1 and 2);
/// then format 3's, with extended attributes and inode flags
/// (`META_SCHEMA`). `temp_files` is dropped before a database is sealed.
/// (Public for the integration tests of older formats.)
pub const SCHEMA_1: &str = "
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
    chunks BLOB
);
CREATE TABLE blobs(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, size INTEGER NOT NULL);
CREATE TABLE chunks(
    id BLOB PRIMARY KEY,
    blob INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    size INTEGER NOT NULL
) WITHOUT ROWID;
";

pub const SCHEMA_2: &str = "
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
    link BLOB
);
CREATE TABLE blobs(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, size INTEGER NOT NULL);
CREATE TABLE chunks(
    id BLOB PRIMARY KEY,
    blob INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    size INTEGER NOT NULL
) WITHOUT ROWID;
";

/// A schema vaultik wrote: which formats may have it, and its DDL.
struct Known {
    formats: std::ops::RangeInclusive<u64>,
    ddl: fn() -> String,
}

const SCHEMAS: &[Known] = &[
    Known {
        formats: 1..=1,
        ddl: || SCHEMA_1.to_string(),
    },
    Known {
        formats: 1..=2,
        ddl: || SCHEMA_2.to_string(),
    },
    Known {
        formats: 3..=FORMAT_VERSION,
        ddl: written,
    },
];

/// The schema a backup writes today, as sealed (without `temp_files`).
fn written() -> String {
    let ddl = crate::snapshot::META_SCHEMA;
    let end = ddl
        .find("CREATE TABLE temp_files")
        .expect("META_SCHEMA ends with temp_files");
    ddl[..end].to_string()
}

/// A snapshot's metadata database, opened from the store and checked.
/// Used as the `Connection` it holds.
pub struct Metadata {
    conn: Connection,
    /// What it is, for errors ("metadata of snapshot ID").
    what: String,
    /// Its size, in bytes.
    pub len: u64,
    /// The SHA-256 of the stored object, when it was checked (`open`
    /// given SHA-256s to expect, or `open_hashed`).
    pub sha256: Option<[u8; 32]>,
    /// The stored object's size.
    pub stored: u64,
    /// Steps of the budget used so far, and the budget, in `STEP_GRAIN`s.
    used: Arc<AtomicU64>,
    budget: u64,
}

impl Metadata {
    /// A database made by a unit test, taken as checked.
    #[cfg(test)]
    pub(crate) fn for_tests(conn: Connection) -> Metadata {
        Metadata {
            conn,
            what: "metadata of a test".into(),
            len: 0,
            sha256: None,
            stored: 0,
            used: Arc::default(),
            budget: u64::MAX,
        }
    }

    /// `e`, naming this database when it is the one whose budget is spent
    /// (an interrupted query names only what it was reading).
    pub fn explain(&self, e: Error) -> Error {
        match e {
            Error::Corrupt { msg, .. }
                if msg == crate::error::OVER_BUDGET
                    && self.used.load(Ordering::Relaxed) > self.budget =>
            {
                Error::Corrupt {
                    what: self.what.clone(),
                    msg,
                }
            }
            e => e,
        }
    }

    /// `e`, or, when it is the database attached as `name` (by
    /// `attach_scratch`, in `dir`) reaching its bound, an error saying
    /// so (calling it `label`). (Its pages are back to what they were once the failed
    /// transaction is undone: a full disk is told apart by the room left
    /// on it.)
    pub fn explain_scratch(&self, e: Error, name: &str, label: &str, dir: &Path) -> Error {
        let e = self.explain(e);
        let full = matches!(&e, Error::Database { source, .. }
            if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull));
        let cap = self
            .conn
            .query_row(&format!("PRAGMA {name}.max_page_count"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map_or(u64::MAX, |n| (n.max(0) as u64).saturating_mul(4096));
        let room = rustix::fs::statvfs(dir).map_or(0, |s| s.f_bavail.saturating_mul(s.f_frsize));
        if full && room > cap {
            Error::corrupt(
                &self.what,
                format!(
                    "the {label} it needs would be larger than a snapshot database of its \
                     size can need (forged or damaged); stopped"
                ),
            )
        } else {
            e
        }
    }
}

impl std::ops::Deref for Metadata {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Drop for Metadata {
    /// With `VAULTIK_TIMINGS`, how much of its budget the command used
    /// (to compare the budget with real use).
    fn drop(&mut self) {
        if std::env::var_os("VAULTIK_TIMINGS").is_some() {
            let used = self.used.load(Ordering::Relaxed) * STEP_GRAIN as u64;
            eprintln!(
                "vaultik: timing: metadata database of {} bytes: {used} steps ({:.1} per byte)",
                self.len,
                used as f64 / self.len.max(1) as f64
            );
        }
    }
}

/// Download and decrypt snapshot `id`'s metadata into a private scratch
/// directory made in `dir` (created if missing, once the key has been
/// found to match; a restore passes its target, the one place plaintext
/// may go, the rest the temporary directory), open it, unlinked, and check
/// it: see the module doc. The connection is read-write for what a
/// command attaches to it (the restore's plan); the database itself is
/// never written.
///
/// `expect`: the SHA-256s a signed manifest gives the stored metadata
/// (`signing.rs`; two while a repack replaces it); when there are any,
/// anything else is refused, read to its end first.
pub fn open(
    store: &dyn Store,
    id: &str,
    identities: &[x25519::Identity],
    dir: &Path,
    expect: &[[u8; 32]],
) -> Result<Metadata> {
    open_inner(store, id, identities, dir, expect, false)
}

/// `open`, the stored object read to its end and its SHA-256 and size
/// recorded (`Metadata::sha256`, `stored`) whatever `expect` is: for
/// `repack`, which must rewrite the very object it read.
pub fn open_hashed(
    store: &dyn Store,
    id: &str,
    identities: &[x25519::Identity],
    dir: &Path,
    expect: &[[u8; 32]],
) -> Result<Metadata> {
    open_inner(store, id, identities, dir, expect, true)
}

fn open_inner(
    store: &dyn Store,
    id: &str,
    identities: &[x25519::Identity],
    dir: &Path,
    expect: &[[u8; 32]],
    hash_always: bool,
) -> Result<Metadata> {
    let key = layout::metadata(id);
    // Streamed from the store: nothing is held whole.
    let Some(sealed) = store.head(&key)? else {
        return Err(Error::UnknownSnapshot(id.to_string()));
    };
    let tap = crate::blob::Tap::default();
    let plain = crate::blob::open_sealed_stream(store, &key, sealed, identities, tap.clone())?;
    let (mut dec, len) = metadata_stream(&key, plain, sealed)?;
    let mut scratch = PrivateDir::new(dir)?;
    let (path, mut f) = scratch.file("metadata.sqlite")?;
    let copied =
        std::io::copy(&mut (&mut dec).take(len), &mut f).map_err(|e| Error::corrupt(&key, e))?;
    if copied != len {
        return Err(Error::corrupt(&key, "metadata database cut short"));
    }
    let mut checked = None;
    if !expect.is_empty() || hash_always {
        // The rest of the stream (at most the object's stored size), so
        // that every stored byte is hashed.
        std::io::copy(&mut dec.finish(), &mut std::io::sink())
            .map_err(|e| Error::corrupt(&key, e))?;
        let (hash, read) = {
            let t = tap.lock().expect("a tap is only locked while read");
            (t.0.clone().finalize(), t.1)
        };
        let matches = expect.iter().any(|want| hash[..] == want[..]);
        if expect.is_empty() && read != sealed {
            return Err(Error::corrupt(&key, "not read to its stored size"));
        }
        if !expect.is_empty() && (read != sealed || !matches) {
            return Err(Error::corrupt(
                &key,
                "is not the metadata its signed manifest names (another SHA-256): refused",
            ));
        }
        checked = Some(hash.into());
    }
    // Bytes 18 and 19 of the header say "WAL mode" when 2: a forged
    // database would then make SQLite look for -wal and -shm files. Ours
    // are never WAL: say "rollback" (1).
    if len >= 20 {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[1, 1], 18).at("write", &path)?;
    }
    drop(f);
    let m = open_checked(&path, len, &format!("metadata of snapshot {id}"));
    // Unlinked (once open): the open descriptor is all that is left.
    drop(scratch);
    m.map(|mut m| {
        m.sha256 = checked;
        m.stored = sealed;
        m
    })
}

/// Open the database at `path` (`len` bytes) hardened, and check its
/// schema and format; `what` names it in errors.
fn open_checked(path: &Path, len: u64, what: &str) -> Result<Metadata> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .db(path)?;
    let budget = len.saturating_mul(STEPS_PER_BYTE).max(STEPS_FLOOR);
    let used = harden(&mut conn, len, budget, what)?;
    let m = Metadata {
        conn,
        what: what.to_string(),
        len,
        sha256: None,
        stored: 0,
        used,
        budget: budget.div_ceil(STEP_GRAIN as u64),
    };
    check_schema(&m, what).map_err(|e| m.explain(e))?;
    check_pages(&m, what).map_err(|e| m.explain(e))?;
    Ok(m)
}

/// Every page of the database where its b-trees say, and used once
/// (`PRAGMA quick_check`: its cost follows the number of pages, within
/// the budget). SQLite does not otherwise notice an overflow page that a
/// thousand rows share, or that points to itself: each read would then
/// cost megabytes that the database does not hold.
fn check_pages(conn: &Connection, what: &str) -> Result<()> {
    let mut st = conn
        .prepare("PRAGMA main.quick_check(1)")
        .db(Path::new(what))?;
    let first: String = st.query_row([], |r| r.get(0)).db(Path::new(what))?;
    if first == "ok" {
        Ok(())
    } else {
        Err(Error::corrupt(
            what,
            format!(
                "its pages are not a sound database: {}",
                forged_text(&first)
            ),
        ))
    }
}

/// Attach a new, empty database as `name` to `m`, in a private scratch
/// directory made in `dir`, unlinked once attached, and bounded in size
/// (`PLAN_RATIO` times `m`'s) like everything else done with `m`.
pub fn attach_scratch(m: &Metadata, name: &str, dir: &Path) -> Result<()> {
    let mut scratch = PrivateDir::new(dir)?;
    let (path, _) = scratch.file(&format!("{name}.sqlite"))?;
    let path_bytes = {
        use std::os::unix::ffi::OsStrExt;
        path.as_os_str().as_bytes().to_vec()
    };
    m.execute(
        "ATTACH DATABASE ?1 AS ?2",
        rusqlite::params![path_bytes, name],
    )
    .db(&path)?;
    let pages = m.len.saturating_mul(PLAN_RATIO).saturating_add(PLAN_FLOOR) / 4096;
    // No journal (nothing is made beside it once it is unlinked):
    // defensive mode refuses that, so it is lifted for these statements
    // of ours.
    m.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, false)
        .db(&path)?;
    let set = m.execute_batch(&format!(
        "PRAGMA {name}.journal_mode=OFF; PRAGMA {name}.synchronous=OFF;
         PRAGMA {name}.locking_mode=EXCLUSIVE; PRAGMA {name}.cache_size=-2048;
         PRAGMA {name}.page_size=4096; PRAGMA {name}.max_page_count={pages};"
    ));
    m.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .db(&path)?;
    set.db(&path)?;
    drop(scratch);
    Ok(())
}

/// Everything a forged database could use to do more than a real one,
/// turned off before its first statement; and the budget of steps (the
/// count of steps used is returned).
fn harden(conn: &mut Connection, len: u64, budget: u64, what: &str) -> Result<Arc<AtomicU64>> {
    let p = Path::new(what);
    for (setting, on) in [
        (DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_VIEW, false),
        (DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_FKEY, false),
        (DbConfig::SQLITE_DBCONFIG_DQS_DDL, false),
        (DbConfig::SQLITE_DBCONFIG_DQS_DML, false),
        (DbConfig::SQLITE_DBCONFIG_WRITABLE_SCHEMA, false),
        (DbConfig::SQLITE_DBCONFIG_ENABLE_ATTACH_CREATE, false),
    ] {
        conn.set_db_config(setting, on).db(p)?;
    }
    // Not in rusqlite's DbConfig: the C API's loading of extensions (the
    // SQL function is off unless asked for; this is the rest of it).
    // SAFETY: a valid open handle, and the call's documented arguments (an
    // int, then an int pointer that may be null).
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION,
            0 as std::ffi::c_int,
            std::ptr::null_mut::<std::ffi::c_int>(),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(Error::corrupt(what, "cannot turn off SQLite extensions"));
    }
    // No value can be longer than the database holds (plus room for what
    // a query makes of one); no statement, expression or schema of ours
    // comes near these.
    let longest = i32::try_from(len.saturating_add(1 << 20)).unwrap_or(i32::MAX);
    for (limit, value) in [
        (Limit::SQLITE_LIMIT_LENGTH, longest),
        (Limit::SQLITE_LIMIT_SQL_LENGTH, 64 << 10),
        (Limit::SQLITE_LIMIT_COLUMN, 64),
        (Limit::SQLITE_LIMIT_EXPR_DEPTH, 100),
        (Limit::SQLITE_LIMIT_PARSER_DEPTH, 100),
        (Limit::SQLITE_LIMIT_COMPOUND_SELECT, 4),
        (Limit::SQLITE_LIMIT_FUNCTION_ARG, 8),
        (Limit::SQLITE_LIMIT_ATTACHED, 2),
        (Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1000),
        (Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 32),
        (Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 0),
        (Limit::SQLITE_LIMIT_WORKER_THREADS, 0),
        (Limit::SQLITE_LIMIT_SCHEMA, 32),
    ] {
        conn.set_limit(limit, value).db(p)?;
    }
    let budget = budget.div_ceil(STEP_GRAIN as u64);
    let used = Arc::new(AtomicU64::new(0));
    let counter = used.clone();
    conn.progress_handler(
        STEP_GRAIN,
        Some(move || counter.fetch_add(1, Ordering::Relaxed) + 1 > budget),
    )
    .db(p)?;
    conn.execute_batch(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA locking_mode=EXCLUSIVE;
         PRAGMA temp_store=MEMORY; PRAGMA cache_size=-2048; PRAGMA mmap_size=0;
         PRAGMA cell_size_check=ON; PRAGMA foreign_keys=OFF; PRAGMA recursive_triggers=OFF;",
    )
    .db(p)?;
    // Last: defensive mode refuses `journal_mode=OFF`.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)
        .db(p)?;
    Ok(used)
}

/// One `sqlite_schema` row: type, name, table, SQL (byte for byte: a
/// character SQLite takes as part of a name, such as U+00A0, could
/// otherwise pass for a space).
type Row = (String, String, String, Option<String>);

/// The `sqlite_schema` rows of `conn`, sorted.
fn schema_rows(conn: &Connection) -> rusqlite::Result<Vec<Row>> {
    let mut st = conn.prepare("SELECT type, name, tbl_name, sql FROM main.sqlite_schema")?;
    let mut rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<Vec<Row>>>()?;
    rows.sort();
    Ok(rows)
}

/// The rows of each known schema, as SQLite records them.
fn known_rows() -> &'static [(std::ops::RangeInclusive<u64>, Vec<Row>)] {
    static KNOWN: OnceLock<Vec<(std::ops::RangeInclusive<u64>, Vec<Row>)>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        SCHEMAS
            .iter()
            .map(|k| {
                let conn = Connection::open_in_memory().expect("an in-memory database");
                conn.execute_batch(&(k.ddl)())
                    .expect("vaultik's own schema is valid");
                let rows = schema_rows(&conn).expect("reading an in-memory schema");
                (k.formats.clone(), rows)
            })
            .collect()
    })
}

/// Refuse a database whose schema is not exactly one vaultik wrote for
/// its format, or of a format this build does not read.
fn check_schema(conn: &Connection, what: &str) -> Result<()> {
    let bad = |msg: String| Error::corrupt(what, msg);
    let rows =
        schema_rows(conn).map_err(|e| bad(format!("not a vaultik metadata database: {e}")))?;
    let Some(stranger) = rows
        .iter()
        .find(|r| !known_rows().iter().any(|(_, k)| k.contains(r)))
    else {
        return check_format(conn, what, &rows);
    };
    Err(bad(format!(
        "its schema is not one vaultik writes ({} {}); not read",
        stranger.0,
        forged_text(&stranger.1)
    )))
}

/// The format the `info` table gives: one this build reads, with the
/// schema vaultik wrote for it (`rows`).
fn check_format(conn: &Connection, what: &str, rows: &[Row]) -> Result<()> {
    let bad = |msg: String| Error::corrupt(what, msg);
    let format: rusqlite::types::Value = conn
        .query_row(
            "SELECT value FROM main.info WHERE key = 'format'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| bad(format!("not a vaultik metadata database: {e}")))?;
    let format = match format {
        rusqlite::types::Value::Text(t) => t,
        v => format!("of type {}", v.data_type()),
    };
    let format = match format.parse::<u64>() {
        Ok(n) if (OLDEST_FORMAT..=FORMAT_VERSION).contains(&n) => n,
        Ok(n) if n > FORMAT_VERSION => {
            return Err(bad(format!(
                "metadata format {n}, newer than this vaultik reads \
                 ({OLDEST_FORMAT} to {FORMAT_VERSION}): upgrade vaultik if a newer one made it"
            )));
        }
        _ => {
            return Err(bad(format!(
                "unsupported metadata format {}",
                forged_text(&format)
            )));
        }
    };
    if known_rows()
        .iter()
        .any(|(formats, known)| formats.contains(&format) && known == rows)
    {
        return Ok(());
    }
    Err(bad(format!(
        "its schema is not the one vaultik writes for format {format}; not read"
    )))
}

/// A name or value chosen by whoever made the database, for a message:
/// on one line, and short.
fn forged_text(s: &str) -> String {
    let mut short: String = s.chars().take(40).collect();
    if short.len() < s.len() {
        short.push_str("...");
    }
    crate::error::one_line(short)
}

/// The zstd stream of a metadata database and its length (the first 8
/// bytes, little-endian).
fn metadata_stream<R: Read>(
    key: &str,
    plain: R,
    sealed: u64,
) -> Result<(zstd::Decoder<'static, std::io::BufReader<R>>, u64)> {
    let mut dec = zstd::Decoder::new(plain).map_err(|e| Error::corrupt(key, e))?;
    let mut len = [0u8; 8];
    dec.read_exact(&mut len)
        .map_err(|e| Error::corrupt(key, e))?;
    let len = u64::from_le_bytes(len);
    let max = sealed.saturating_mul(METADATA_RATIO).max(METADATA_FLOOR);
    if len > max {
        return Err(Error::corrupt(
            key,
            format!(
                "claims a {len}-byte database, more than {METADATA_RATIO} times its \
                 {sealed} stored bytes; not read"
            ),
        ));
    }
    Ok((dec, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A database file made by `sql` (with `format` in its info table
    /// when it has one), in a directory of its own; its path.
    fn db_file(sql: &str, format: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(sql).unwrap();
        let _ = conn.execute("INSERT INTO info VALUES ('format', ?1)", [format]);
        (dir, path)
    }

    /// The database made by `sql`, opened as one from the store would be.
    fn forged(sql: &str, format: &str) -> Result<Metadata> {
        let (_dir, path) = db_file(sql, format);
        let len = std::fs::metadata(&path).unwrap().len();
        open_checked(&path, len, "metadata of snapshot t")
    }

    fn refused(sql: &str, format: &str, why: &str) {
        let started = Instant::now();
        let e = match forged(sql, format) {
            Ok(_) => panic!("accepted: {sql}"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("metadata of snapshot t") && e.contains(why),
            "{sql}\n{e}"
        );
        assert!(!e.contains('\n'));
        assert!(started.elapsed().as_secs() < 2, "{sql}: slow");
    }

    #[test]
    fn the_schemas_vaultik_wrote_are_read_for_their_formats() {
        let now = written();
        forged(&now, "3").unwrap();
        forged(SCHEMA_1, "1").unwrap();
        forged(SCHEMA_2, "1").unwrap();
        forged(SCHEMA_2, "2").unwrap();
        refused(SCHEMA_1, "2", "not the one vaultik writes for format 2");
        // Format 3 has attributes: a database of format 2's schema that
        // says 3 (written by a development build) is not read as one...
        refused(SCHEMA_2, "3", "not the one vaultik writes for format 3");
        // ...nor today's schema as an older format.
        refused(&now, "2", "not the one vaultik writes for format 2");
        // The text is compared byte for byte: a no-break space is part of
        // a type name to SQLite (dropping the rowid alias, NOT NULL).
        refused(
            &now.replace(
                "id INTEGER PRIMARY KEY,\n    path",
                "id INTEGER\u{a0}PRIMARY\u{a0}KEY,\n    path",
            ),
            "3",
            "table entries",
        );
        refused(
            &now.replace(",\n    kind", ",\n  kind"),
            "3",
            "table entries",
        );
        refused(&now, &(FORMAT_VERSION + 1).to_string(), "upgrade vaultik");
        for bad in ["0", "x", "-1", ""] {
            refused(&now, bad, "unsupported metadata format");
        }
        // A temp_files table left over is not what a backup seals.
        refused(crate::snapshot::META_SCHEMA, "3", "table temp_files");
    }

    /// Each way a schema can make a database do more than hold rows is
    /// refused before any of it runs.
    #[test]
    fn forged_schemas_are_refused() {
        let now = written();
        let entries = now
            .split(';')
            .find(|s| s.contains("CREATE TABLE entries"))
            .unwrap()
            .trim()
            .to_string();
        let without_entries = now.replace(&entries, "");
        let cases: Vec<(String, &str)> = vec![
            // A view whose rows never end.
            (
                format!(
                    "{without_entries}; CREATE VIEW entries AS WITH RECURSIVE r(path) AS \
                     (SELECT x'2f' UNION ALL SELECT path || x'61' FROM r) SELECT path, 2 AS kind, \
                     0 AS mode, 0 AS uid, 0 AS gid, 0 AS size, 0 AS mtime_ns, 0 AS rdev, \
                     NULL AS target, NULL AS chunks, NULL AS link, NULL AS xattrs, \
                     NULL AS flags FROM r"
                ),
                "view entries",
            ),
            // Generated columns that build huge values.
            (
                now.replace(
                    "target BLOB,",
                    "target BLOB GENERATED ALWAYS AS (zeroblob(1000000000)) VIRTUAL,",
                ),
                "table entries",
            ),
            (
                now.replace(
                    "target BLOB,",
                    "target BLOB AS (printf('%.*c', 1000000000, 'x')),",
                ),
                "table entries",
            ),
            // Triggers, indexes, statistics and tables of its own.
            (
                format!("{now}; CREATE TRIGGER t AFTER INSERT ON info BEGIN DELETE FROM info; END"),
                "trigger t",
            ),
            (
                format!("{now}; CREATE INDEX p ON entries(kind, path)"),
                "index p",
            ),
            (
                format!("{now}; ANALYZE; INSERT INTO sqlite_stat1 VALUES ('entries', NULL, '1')"),
                "sqlite_stat1",
            ),
            (format!("{now}; CREATE TABLE extra(x)"), "table extra"),
            // Changed types, constraints, collations; a missing table.
            (now.replace("kind INTEGER", "kind TEXT"), "table entries"),
            (
                now.replace("path BLOB NOT NULL UNIQUE", "path BLOB NOT NULL"),
                "table entries",
            ),
            (
                now.replace(
                    "path BLOB NOT NULL UNIQUE",
                    "path BLOB NOT NULL UNIQUE COLLATE NOCASE",
                ),
                "table entries",
            ),
            (
                now.replace(
                    "size INTEGER NOT NULL,\n    mtime",
                    "size INTEGER NOT NULL CHECK (size > 0),\n    mtime",
                ),
                "table entries",
            ),
            (
                now.replace(&now[now.find("CREATE TABLE chunks").unwrap()..], ""),
                "not the one vaultik writes",
            ),
            // A virtual table in place of a table.
            (
                format!(
                    "{without_entries}; CREATE VIRTUAL TABLE entries USING fts5(path, kind, mode, \
                     uid, gid, size, mtime_ns, rdev, target, chunks, link, xattrs, flags)"
                ),
                "entries",
            ),
        ];
        for (sql, why) in &cases {
            refused(sql, "3", why);
        }
    }

    /// A query that would run longer than the budget is stopped, and the
    /// error says why.
    #[test]
    fn work_past_the_budget_is_stopped_and_named() {
        let (_dir, path) = db_file(&written(), "3");
        let mut conn = Connection::open(&path).unwrap();
        let budget = 1_000_000;
        let used = harden(&mut conn, 1, budget, "t").unwrap();
        let m = Metadata {
            conn,
            what: "metadata of snapshot t".into(),
            len: 1,
            sha256: None,
            stored: 0,
            used: used.clone(),
            budget: budget / STEP_GRAIN as u64,
        };
        let endless = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) \
                       SELECT count(*) FROM r";
        let started = Instant::now();
        // The query names what it read; `explain` names the snapshot.
        let e = m
            .query_row(endless, [], |r| r.get::<_, i64>(0))
            .db(Path::new("snapshot metadata"))
            .unwrap_err();
        assert!(started.elapsed().as_secs() < 2);
        let e = m.explain(e).to_string();
        assert!(
            e.starts_with("metadata of snapshot t: ") && e.contains("more work"),
            "{e}"
        );
        let steps = used.load(Ordering::Relaxed) * STEP_GRAIN as u64;
        assert!((budget..budget + 100_000).contains(&steps), "{steps}");
        // And stays spent: the budget is for everything done with it.
        assert!(m.query_row(endless, [], |r| r.get::<_, i64>(0)).is_err());
        assert_eq!(
            used.load(Ordering::Relaxed) * STEP_GRAIN as u64,
            steps + STEP_GRAIN as u64
        );
        // A database whose budget is not spent leaves others' errors be.
        let other = Metadata::for_tests(Connection::open_in_memory().unwrap());
        let e = Error::corrupt("snapshot metadata", crate::error::OVER_BUDGET);
        assert!(
            other
                .explain(e)
                .to_string()
                .starts_with("snapshot metadata: ")
        );
    }

    /// An overflow page that a row's chain visits twice (here: it points
    /// to itself) would make each read of the row cost what the database
    /// does not hold; the page check finds it before any query.
    #[test]
    fn a_shared_overflow_page_is_refused() {
        let (_dir, path) = db_file(&written(), "3");
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO entries(path, kind, mode, uid, gid, size, mtime_ns, chunks)
                 VALUES (x'2f78', 2, 420, 0, 0, 0, 0, ?1)",
                [vec![0xabu8; 20_000]],
            )
            .unwrap();
        let mut db = std::fs::read(&path).unwrap();
        let page = 4096;
        let next = |db: &[u8], p: usize| {
            u32::from_be_bytes(db[(p - 1) * page..][..4].try_into().unwrap()) as usize
        };
        // Overflow pages: a next pointer, then the row's bytes.
        let overflow: Vec<usize> = (1..=db.len() / page)
            .filter(|p| db[(p - 1) * page + 4..][..64].iter().all(|b| *b == 0xab))
            .collect();
        assert!(overflow.len() >= 4, "{overflow:?}");
        let first = *overflow
            .iter()
            .find(|p| !overflow.iter().any(|q| next(&db, *q) == **p))
            .unwrap();
        db[(first - 1) * page..][..4].copy_from_slice(&(first as u32).to_be_bytes());
        std::fs::write(&path, &db).unwrap();
        let e = open_checked(&path, db.len() as u64, "metadata of snapshot t")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("metadata of snapshot t") && e.contains("not a sound database"),
            "{e}"
        );
    }

    /// Neither the database nor an attached plan has a journal: once
    /// unlinked, there is nowhere to make one; and writing the plan works
    /// with its directory gone.
    #[test]
    fn no_journal_and_a_writable_attached_plan() {
        let (dir, path) = db_file(&written(), "3");
        let len = std::fs::metadata(&path).unwrap().len();
        let m = open_checked(&path, len, "t").unwrap();
        std::fs::remove_file(&path).unwrap();
        attach_scratch(&m, "plan", dir.path()).unwrap();
        for db in ["main", "plan"] {
            let mode: String = m
                .query_row(&format!("PRAGMA {db}.journal_mode"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "off", "{db}");
        }
        m.execute_batch("CREATE TABLE plan.t(x); INSERT INTO plan.t VALUES (1)")
            .unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(m.db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE).unwrap());
    }

    /// The schema a backup writes is pinned: changing it (even its
    /// spacing, which is compared byte for byte) needs a new format, and
    /// the old text kept in `SCHEMAS`. The frozen copies are pinned too:
    /// `SCHEMA_2` is byte for byte what formats 1 and 2 were written with.
    #[test]
    fn the_schema_written_is_pinned() {
        use sha2::{Digest, Sha256};
        let hash = |s: &str| crate::chunk::hex(&Sha256::digest(s));
        assert_eq!(
            hash(&written()),
            "87c07eb7a3f7906596614822fd5c8b9449b7dfc96efc4a0d59246980ba769211",
            "META_SCHEMA changed: add its old text to metadata::SCHEMAS, bump FORMAT_VERSION"
        );
        assert_eq!(
            hash(SCHEMA_2),
            "609fb1c62eda82022d1447b35be962cca74dde0bc83cebb5009ddcbe8427cbec"
        );
    }
}
