//! Forged snapshots, made as an attacker with write access to the store
//! would: the public recipient key is on every host, so anyone can encrypt
//! a metadata database to it and write a manifest beside it. Files can be
//! given real content by pointing at chunks of a real snapshot (`Base`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::Env;

/// One forged entry, column for column.
#[derive(Clone, Debug)]
pub struct Forged {
    pub path: Vec<u8>,
    pub kind: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub rdev: u64,
    pub target: Option<Vec<u8>>,
    pub chunks: Option<Vec<u8>>,
    pub link: Option<Vec<u8>>,
    /// Extended attributes as stored (`vaultik::xattrs::encode`, or any
    /// bytes), and inode flags (any number).
    pub xattrs: Option<Vec<u8>>,
    pub flags: Option<i64>,
}

pub const DIR: i64 = 1;
pub const FILE: i64 = 2;
pub const SYMLINK: i64 = 3;
pub const FIFO: i64 = 4;
pub const CHARDEV: i64 = 5;
pub const BLOCKDEV: i64 = 6;

fn entry(path: &[u8], kind: i64, mode: u32) -> Forged {
    Forged {
        path: path.to_vec(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        size: 0,
        mtime_ns: 1_600_000_000_000_000_000,
        rdev: 0,
        target: None,
        chunks: (kind == FILE).then(Vec::new),
        link: None,
        xattrs: None,
        flags: None,
    }
}

/// An empty file.
pub fn file(path: &[u8], mode: u32) -> Forged {
    entry(path, FILE, mode)
}

pub fn dir(path: &[u8]) -> Forged {
    entry(path, DIR, 0o755)
}

pub fn symlink(path: &[u8], to: &[u8]) -> Forged {
    Forged {
        target: Some(to.to_vec()),
        ..entry(path, SYMLINK, 0o777)
    }
}

pub fn fifo(path: &[u8]) -> Forged {
    entry(path, FIFO, 0o666)
}

/// A character device with `/dev/null`'s numbers (1, 3).
pub fn chardev(path: &[u8]) -> Forged {
    Forged {
        rdev: rustix::fs::makedev(1, 3),
        ..entry(path, CHARDEV, 0o666)
    }
}

/// A block device with `/dev/loop0`'s numbers (7, 0).
pub fn blockdev(path: &[u8]) -> Forged {
    Forged {
        rdev: rustix::fs::makedev(7, 0),
        ..entry(path, BLOCKDEV, 0o666)
    }
}

/// A further hard link of `first`.
pub fn hard_link(path: &[u8], first: &[u8]) -> Forged {
    Forged {
        link: Some(first.to_vec()),
        ..entry(path, FILE, 0o644)
    }
}

impl Forged {
    /// Give a file content: these chunks of `base`, in order.
    pub fn with(mut self, base: &Base, chunks: &[usize]) -> Forged {
        let mut list = Vec::new();
        let mut size = 0;
        for &i in chunks {
            list.extend_from_slice(&base.chunks[i].0);
            size += base.chunks[i].1;
        }
        self.chunks = Some(list);
        self.size = size;
        self
    }

    pub fn owned(mut self, uid: u32, gid: u32) -> Forged {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// These extended attributes, encoded as a backup does.
    pub fn xattrs(mut self, pairs: &[(&str, &[u8])]) -> Forged {
        let list = pairs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect();
        self.xattrs = Some(vaultik::xattrs::encode(list).expect("within the bounds"));
        self
    }

    /// These bytes as the extended attributes column.
    pub fn raw_xattrs(mut self, raw: Vec<u8>) -> Forged {
        self.xattrs = Some(raw);
        self
    }

    pub fn flags(mut self, flags: i64) -> Forged {
        self.flags = Some(flags);
        self
    }
}

/// One attribute as encoded (`vaultik::xattrs`), whatever its name and
/// lengths: a byte of name length, the name, 4 bytes of value length.
pub fn xattr_record(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut b = vec![name.len() as u8];
    b.extend_from_slice(name);
    b.extend_from_slice(&(value.len() as u32).to_le_bytes());
    b.extend_from_slice(value);
    b
}

/// The chunks and blobs of a real snapshot, to give forged files real
/// content (and, with `bad_chunk`, content that fails its check).
pub struct Base {
    /// (chunk id, plaintext size), in the order the snapshot lists them.
    pub chunks: Vec<([u8; 32], u64)>,
    /// (key, size) of its blobs.
    blobs: Vec<(i64, String, i64)>,
    /// (id, blob, offset, length, size) rows.
    rows: Vec<(Vec<u8>, i64, i64, i64, i64)>,
}

impl Base {
    /// The real snapshot `id` of `env` (a directory store).
    pub fn of(env: &Env, id: &str) -> Base {
        let store = vaultik::store::LocalStore::open(&env.store_dir(), false).unwrap();
        let identity = age::x25519::Identity::from_str(&env.identity).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let conn = vaultik::metadata::open(&store, id, &[identity], scratch.path(), &[]).unwrap();
        let blobs = conn
            .prepare("SELECT id, key, size FROM blobs")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let rows: Vec<(Vec<u8>, i64, i64, i64, i64)> = conn
            .prepare("SELECT id, blob, offset, length, size FROM chunks ORDER BY blob, offset")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let chunks = rows
            .iter()
            .map(|(id, _, _, _, size)| (id.as_slice().try_into().unwrap(), *size as u64))
            .collect();
        Base {
            chunks,
            blobs,
            rows,
        }
    }

    /// Place chunk `i` at `offset` in its blob (past its end, say).
    pub fn misplace(&mut self, i: usize, offset: i64) {
        let id = self.chunks[i].0.to_vec();
        for row in self.rows.iter_mut().filter(|r| r.0 == id) {
            row.2 = offset;
        }
    }

    /// A chunk id no blob holds the right data for: it is located where
    /// chunk `i` is (so it is read and fails its SHA-256 check).
    pub fn bad_chunk(&mut self, i: usize) -> usize {
        let mut row = self.rows[i].clone();
        row.0 = vec![0xee; 32];
        row.0[0] = self.chunks.len() as u8;
        self.chunks
            .push((row.0.as_slice().try_into().unwrap(), row.4 as u64));
        self.rows.push(row);
        self.chunks.len() - 1
    }
}

/// Write snapshot `id` with `entries` into `env`'s directory store, its
/// metadata encrypted to `env`'s recipient like a real one, with a
/// manifest whose host, name and time are those `id` spells (so that it
/// is a valid snapshot to every keyless command). Chunks of `base` are
/// located as in the real snapshot, and its blobs listed.
pub fn forge(env: &Env, id: &str, entries: &[Forged], base: Option<&Base>) {
    forge_db(env, id, &metadata_db(env, entries, base, false), base);
}

/// `forge`, as a build of format 2 wrote it (`vaultik::metadata::SCHEMA_2`:
/// no extended attributes or flags; those of `entries` are left out).
pub fn forge_format_2(env: &Env, id: &str, entries: &[Forged], base: Option<&Base>) {
    forge_db(env, id, &metadata_db(env, entries, base, true), base);
}

/// Write snapshot `id` with `db` as its metadata database (any bytes),
/// sealed like a real one, and a manifest listing `base`'s blobs.
pub fn forge_db(env: &Env, id: &str, db: &[u8], base: Option<&Base>) {
    let mut plain = (db.len() as u64).to_le_bytes().to_vec();
    plain.extend_from_slice(db);
    forge_sealed(env, id, &seal(env, &plain), base);
}

/// Write snapshot `id` whose metadata object is `sealed` (any bytes), and
/// a manifest listing `base`'s blobs.
pub fn forge_sealed(env: &Env, id: &str, sealed: &[u8], base: Option<&Base>) {
    let dir = env.store_dir().join("metadata").join(id);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("db.zst.age"), sealed).unwrap();
    let p = vaultik::layout::parse_id(id).unwrap_or_else(|| panic!("{id} is not an id"));
    let blobs: Vec<serde_json::Value> = base
        .map(|b| {
            b.blobs
                .iter()
                .map(|(_, k, s)| serde_json::json!({"key": k, "size": s}))
                .collect()
        })
        .unwrap_or_default();
    let manifest = serde_json::json!({
        "format": 1, "id": id, "hostname": p.host, "name": p.name, "time": p.time,
        "metadata_size": sealed.len(), "blobs": blobs,
    });
    write_manifest(&dir.join("manifest.json.zst"), &manifest);
}

pub fn write_manifest(path: &Path, manifest: &serde_json::Value) {
    fs::write(
        path,
        zstd::bulk::compress(manifest.to_string().as_bytes(), 3).unwrap(),
    )
    .unwrap();
}

/// A metadata database holding `entries` (and `base`'s chunk locations),
/// of today's format, or of format 2 (`v2`).
fn metadata_db(env: &Env, entries: &[Forged], base: Option<&Base>, v2: bool) -> Vec<u8> {
    let db_path: PathBuf = env.path().join("forged.sqlite");
    let _ = fs::remove_file(&db_path);
    {
        let conn = rusqlite::Connection::open(&db_path).unwrap();
        // A forger's database passes for a backup's only with its schema
        // (`vaultik::metadata` checks it): the same statements, and no
        // more. Duplicate paths need more work, as they would for a
        // forger: a table without the UNIQUE constraint, and an index on
        // `path` that holds them, then the schema rewritten to claim the
        // constraint, with that index as the one it implies.
        let mut seen = std::collections::HashSet::new();
        let duplicates = !entries.iter().all(|e| seen.insert(e.path.clone()));
        let ours = if v2 {
            vaultik::metadata::SCHEMA_2
        } else {
            let ours = vaultik::snapshot::META_SCHEMA;
            &ours[..ours.find("CREATE TABLE temp_files").unwrap()]
        };
        let entries_ddl = ours
            .split(';')
            .find(|s| s.contains("CREATE TABLE entries"))
            .unwrap()
            .trim()
            .to_string();
        if duplicates {
            conn.execute_batch(&ours.replace("path BLOB NOT NULL UNIQUE", "path BLOB NOT NULL"))
                .unwrap();
            conn.execute_batch("CREATE INDEX dup ON entries(path)")
                .unwrap();
        } else {
            conn.execute_batch(ours).unwrap();
        }
        let format = if v2 {
            2
        } else {
            vaultik::snapshot::FORMAT_VERSION
        };
        conn.execute(
            "INSERT INTO info VALUES ('format', ?1)",
            [format.to_string()],
        )
        .unwrap();
        for e in entries {
            if v2 {
                conn.execute(
                    "INSERT INTO entries(path, kind, mode, uid, gid, size, mtime_ns, rdev, target,
                     chunks, link) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    rusqlite::params![
                        e.path,
                        e.kind,
                        e.mode,
                        e.uid,
                        e.gid,
                        e.size as i64,
                        e.mtime_ns,
                        e.rdev as i64,
                        e.target,
                        e.chunks,
                        e.link
                    ],
                )
                .unwrap();
                continue;
            }
            conn.execute(
                "INSERT INTO entries(path, kind, mode, uid, gid, size, mtime_ns, rdev, target, chunks,
                 link, xattrs, flags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                rusqlite::params![
                    e.path,
                    e.kind,
                    e.mode,
                    e.uid,
                    e.gid,
                    e.size as i64,
                    e.mtime_ns,
                    e.rdev as i64,
                    e.target,
                    e.chunks,
                    e.link,
                    e.xattrs,
                    e.flags
                ],
            )
            .unwrap();
        }
        if let Some(b) = base {
            for (id, key, size) in &b.blobs {
                conn.execute(
                    "INSERT INTO blobs(id, key, size) VALUES (?1, ?2, ?3)",
                    rusqlite::params![id, key, size],
                )
                .unwrap();
            }
            for r in &b.rows {
                conn.execute(
                    "INSERT OR IGNORE INTO chunks(id, blob, offset, length, size)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![r.0, r.1, r.2, r.3, r.4],
                )
                .unwrap();
            }
        }
        if duplicates {
            conn.execute_batch("PRAGMA writable_schema=ON").unwrap();
            conn.execute(
                "UPDATE sqlite_schema SET sql = ?1 WHERE name = 'entries'",
                [&entries_ddl],
            )
            .unwrap();
            conn.execute_batch(
                "UPDATE sqlite_schema SET name = 'sqlite_autoindex_entries_1', sql = NULL
                 WHERE name = 'dup';
                 PRAGMA writable_schema=OFF;",
            )
            .unwrap();
        }
    }
    fs::read(&db_path).unwrap()
}

/// The database made by `sql` (run on an empty one), as bytes: a forger's
/// schema and rows.
pub fn db_of_sql(env: &Env, sql: &str) -> Vec<u8> {
    let db_path: PathBuf = env.path().join("forged-sql.sqlite");
    let _ = fs::remove_file(&db_path);
    rusqlite::Connection::open(&db_path)
        .unwrap()
        .execute_batch(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    fs::read(&db_path).unwrap()
}

/// zstd-compressed `plain`, encrypted to `env`'s recipient.
pub fn seal(env: &Env, plain: &[u8]) -> Vec<u8> {
    let compressed = zstd::bulk::compress(plain, 19).unwrap();
    let recipient = age::x25519::Recipient::from_str(&env.recipient).unwrap();
    let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .unwrap();
    let mut sealed = Vec::new();
    let mut w = enc.wrap_output(&mut sealed).unwrap();
    w.write_all(&compressed).unwrap();
    w.finish().unwrap();
    sealed
}

/// Everything under `root` except `skip` (a path below it): relative path,
/// kind, mode, owner, extended attributes, inode flags, and content or
/// symlink target, for "nothing outside the target changed".
pub fn census(root: &Path, skip: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p == skip {
            continue;
        }
        let m = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let what = if m.file_type().is_symlink() {
            format!("-> {}", fs::read_link(&p).unwrap().display())
        } else if m.is_file() {
            format!("{:?}", fs::read(&p).unwrap())
        } else {
            format!("rdev {}", m.rdev())
        };
        out.push(format!(
            "{rel} mode {:o} owner {}:{} nlink {} xattrs {:?} flags {:?} {what}",
            m.mode(),
            m.uid(),
            m.gid(),
            if m.is_dir() { 0 } else { m.nlink() },
            xattrs_of(&p),
            flags_of(&p, &m),
        ));
        if m.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// Every extended attribute of `p` itself (not followed), name and value.
pub fn xattrs_of(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(c.as_c_str(), &mut names[..]) {
        Ok(n) => n,
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cn = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(c.as_c_str(), cn.as_c_str(), &mut v[..]) {
            v.truncate(len);
            out.push((String::from_utf8_lossy(name).into_owned(), v));
        }
    }
    out.sort();
    out
}

/// The inode flags of a regular file or directory (None for anything
/// else, never opened).
pub fn flags_of(p: &Path, m: &fs::Metadata) -> Option<u32> {
    if !(m.is_file() || m.is_dir()) {
        return None;
    }
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY,
        Mode::empty(),
    )
    .ok()?;
    rustix::fs::ioctl_getflags(&fd).ok().map(|f| f.bits())
}
