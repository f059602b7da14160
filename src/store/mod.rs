//! Where backups live: a small object-store contract with two
//! implementations, S3 (`s3.rs`) and a local directory (`local.rs`), plus
//! exact accounting of the requests each command makes.
//!
//! Contract: keys are relative to the store's prefix and are keys of the
//! layout (`layout.rs`): every operation refuses any other key, and a
//! listing returns other objects apart, as foreign, never to be read or
//! deleted. `put_*` is atomic (an object is either absent or complete);
//! `get` refuses an object larger than its limit before reading more than
//! that; the reader from `open_range` gives exactly the bytes asked for or
//! fails (`UnexpectedEof` if the answer ends early); `get` and
//! `open_range` of a missing key are `Error::NotFound`.
//!
//! The store is hostile (see the threat model in README.md): whatever it
//! answers, an implementation never follows a name it chose through the
//! local file system, never allocates what it claims, and never hangs.

pub mod class;
pub mod identity;
mod local;
pub mod lock;
mod s3;
pub(crate) use s3::load_roots;
pub mod settings;
pub mod versions;

use std::fmt::Write as _;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use class::{StorageClass, Tier};
use settings::StoreConfig;

pub use local::LocalStore;
pub use s3::{S3Store, base64};

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// Last modification, seconds since the epoch (0 when unknown).
    pub modified: u64,
    /// As the listing says (STANDARD when it says nothing).
    pub class: StorageClass,
}

/// What a HEAD says of an object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectMeta {
    pub size: u64,
    pub class: StorageClass,
    pub thaw: ThawState,
    /// The SHA-256 the server stored with the object, when asked for and
    /// the server keeps one.
    pub sha256: Option<[u8; 32]>,
    /// Until when the current version is locked (Object Lock), seconds
    /// since the epoch, when the server says.
    pub locked_until: Option<u64>,
    /// The id of the current version, on a versioned bucket (checked:
    /// `versions::is_version_id`).
    pub version: Option<String>,
}

/// Whether an object can be read, as far as its storage class goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThawState {
    /// Not in a cold class (or tier): readable.
    NotNeeded,
    /// Cold, and no thawed copy: a GET fails until a thaw is requested
    /// and done.
    Frozen,
    /// A thaw is under way.
    Ongoing,
    /// A thawed copy is readable (until it expires).
    Thawed,
}

/// What a listing found: objects of the layout, in key order, and the keys
/// of anything else (left alone, reported).
#[derive(Debug, Default)]
pub struct Listing {
    pub objects: Vec<ObjectInfo>,
    /// The first `FOREIGN_SHOWN` foreign keys (control characters escaped).
    pub foreign: Vec<String>,
    /// How many foreign objects there are in all.
    pub foreign_count: u64,
}

/// Foreign keys kept by a listing to be named; the rest are counted.
pub const FOREIGN_SHOWN: usize = 100;

/// Objects a listing holds at most (about 1.3 GB of memory; at the default
/// blob size that is 640 TB of blobs): a store that lists more is refused
/// rather than allowed to exhaust memory.
pub const LIST_MAX: usize = 10_000_000;

/// The error for a listing past `LIST_MAX`.
pub fn too_many(prefix: &str) -> crate::error::Error {
    crate::error::Error::store(
        "LIST",
        prefix,
        format!("more than {LIST_MAX} objects; refusing to hold a larger listing"),
    )
}

impl Listing {
    /// Sort what was found into objects and foreign keys.
    pub fn add(&mut self, key: String, size: u64, modified: u64, class: StorageClass) {
        if crate::layout::parse(&key).is_some() {
            self.objects.push(ObjectInfo {
                key,
                size,
                modified,
                class,
            });
        } else {
            self.add_foreign(key);
        }
    }

    /// Something under the prefix that is not an object of the layout.
    pub fn add_foreign(&mut self, key: String) {
        self.foreign_count += 1;
        if self.foreign.len() < FOREIGN_SHOWN {
            self.foreign.push(crate::error::one_line(key));
        }
    }

    fn sorted(mut self) -> Listing {
        self.objects.sort_by(|a, b| a.key.cmp(&b.key));
        self.foreign.sort();
        self
    }
}

/// Refuse a key that is not of the layout (defence in depth: keys are
/// built by `layout.rs` or come from listings and manifests that checked
/// them).
pub fn check_key<'k>(op: &'static str, key: &'k str) -> Result<&'k str> {
    if crate::layout::parse(key).is_some() {
        Ok(key)
    } else {
        Err(crate::error::Error::store(
            op,
            &crate::error::one_line(key.to_string()),
            "not a key of vaultik's store layout; refused",
        ))
    }
}

/// Everything `r` gives, if that is at most `limit` bytes; None if it is
/// more (after reading `limit + 1` bytes). Read through a small buffer so
/// that memory is what was read, never a capacity grown ahead of it and
/// zeroed (as `read_to_end` does for readers without `read_buf`).
pub fn read_bounded(mut r: impl Read, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(Some(out)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if (out.len() + n) as u64 > limit {
            return Ok(None);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The error for an object larger than its reader allows.
pub fn too_large(key: &str, size: u64, limit: u64) -> crate::error::Error {
    crate::error::Error::corrupt(
        format!("object {key}"),
        format!(
            "{size} bytes, more than the {} such an object may have; not read",
            crate::human_bytes(limit)
        ),
    )
}

pub trait Store: Send + Sync {
    /// Human-readable location, e.g. `s3://bucket/prefix at https://...`.
    fn describe(&self) -> String;
    /// Put the file at `path` in storage class `class` (a store without
    /// classes ignores it).
    fn put_file(&self, key: &str, path: &Path, class: StorageClass) -> Result<()>;
    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Write `key` only if no object has it: true if this call made it.
    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool>;
    /// The whole object, if it has at most `limit` bytes (`too_large`
    /// otherwise, before more than `limit` bytes are read).
    fn get(&self, key: &str, limit: u64) -> Result<Vec<u8>>;
    /// Stream `len` bytes from `start`: one request, read as it arrives, so
    /// that a large range costs no memory. Received bytes count as read.
    fn open_range(&self, key: &str, start: u64, len: u64) -> Result<Box<dyn Read + Send + '_>>;
    /// Size of the object, or None when it does not exist.
    fn head(&self, key: &str) -> Result<Option<u64>>;
    /// What a HEAD says of the object (with the SHA-256 the server stored,
    /// when `checksum`), or None when it does not exist. A store without
    /// classes or checksums says STANDARD and no checksum.
    fn stat(&self, key: &str, checksum: bool) -> Result<Option<ObjectMeta>> {
        let _ = checksum;
        Ok(self.head(key)?.map(|size| ObjectMeta {
            size,
            class: StorageClass::Standard,
            thaw: ThawState::NotNeeded,
            sha256: None,
            locked_until: None,
            version: None,
        }))
    }
    /// Whether objects here have storage classes (cold ones among them).
    fn has_classes(&self) -> bool {
        false
    }
    /// The server's clock minus this host's, in seconds, from the `Date`
    /// of the last HEAD answered (`store check`); None when not known.
    fn clock_skew(&self) -> Option<i64> {
        None
    }
    /// Whether the store keeps the SHA-256 sent with each PUT, for `stat`.
    fn keeps_checksums(&self) -> bool {
        false
    }
    /// Ask for a thawed copy of the cold object `key`, readable `days`
    /// days, at `tier`: true if this asked anew, false if a thaw was
    /// already under way or done (S3 then only extends the copy's days).
    fn request_thaw(&self, key: &str, days: u32, tier: Tier) -> Result<bool> {
        let _ = (days, tier);
        Err(Error::store(
            "RESTORE",
            key,
            "this store has no cold storage classes",
        ))
    }
    /// Every object whose key starts with `prefix`, in key order, with
    /// the keys that are not of the layout apart.
    fn list(&self, prefix: &str) -> Result<Listing>;
    /// Deleting a missing key is not an error.
    fn delete(&self, key: &str) -> Result<()>;
    /// Delete many keys, in as few requests as the store allows.
    fn delete_many(&self, keys: &[String]) -> Result<()> {
        keys.iter().try_for_each(|k| self.delete(k))
    }
    fn stats(&self) -> &Stats;

    /// Every version of every object whose key starts with `prefix`
    /// (objects of the layout only), each key's newest first; None when
    /// the store keeps no versions (a directory, a server without
    /// ListObjectVersions).
    fn list_versions(&self, prefix: &str) -> Result<Option<Vec<versions::Version>>> {
        let _ = prefix;
        Ok(None)
    }
    /// `get` of one version of `key`.
    fn get_version(&self, key: &str, version: &str, limit: u64) -> Result<Vec<u8>> {
        let _ = (version, limit);
        Err(versions::unsupported("GET", key))
    }
    /// `open_range` of one version of `key`.
    fn open_version_range(
        &self,
        key: &str,
        version: &str,
        start: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>> {
        let _ = (version, start, len);
        Err(versions::unsupported("GET", key))
    }
    /// Before `blobs` (key, size) are read: on a versioned store, choose
    /// for each blob whose current version is not the one vaultik wrote a
    /// version that is, saying so through `report` (`versions.rs`).
    fn choose_versions(&self, blobs: &[(String, u64)], report: &dyn Fn(&str)) -> Result<()> {
        let _ = (blobs, report);
        Ok(())
    }
    /// Snapshots whose current objects were deleted while versions of them
    /// remain (a versioned store only).
    fn deleted_snapshots(&self) -> Vec<String> {
        Vec::new()
    }
    /// Lock every object written from now on (`[s3] object_lock`).
    fn set_lock(&self, lock: Option<lock::Lock>) {
        let _ = lock;
    }
    /// Whether the bucket keeps versions (versioning enabled or suspended).
    fn versioned(&self) -> Result<bool> {
        Ok(false)
    }
    /// Where the credentials that sign requests come from (None for a
    /// store that signs nothing, a directory).
    fn signed_by(&self) -> Option<String> {
        None
    }
    /// Whether the bucket has Object Lock enabled.
    fn object_lock_enabled(&self) -> Result<bool> {
        Ok(false)
    }
    /// Check that the bucket has versioning and Object Lock enabled.
    fn check_lock_setup(&self) -> Result<()> {
        Err(Error::Setup(
            "object_lock needs an S3 store (a directory has no Object Lock)".into(),
        ))
    }
    /// The version id the store gave the blob `key` this process put
    /// (once: taken).
    fn take_put_version(&self, key: &str) -> Option<String> {
        let _ = key;
        None
    }
    /// Extend the lock of `version` of `key` (of its current version when
    /// None) to `lock` (PutObjectRetention); never called with an earlier
    /// date than the object has, as far as vaultik knows.
    fn extend_lock(&self, key: &str, version: Option<&str>, lock: lock::Lock) -> Result<()> {
        let _ = (version, lock);
        Err(Error::store(
            "RETENTION",
            key,
            "this store has no Object Lock",
        ))
    }
}

/// Requests made and bytes moved, by kind. Counted once per HTTP request
/// actually sent (retries included), so the figures match the bill.
#[derive(Debug, Default)]
pub struct Stats {
    pub put: AtomicU64,
    pub get: AtomicU64,
    pub head: AtomicU64,
    pub list: AtomicU64,
    pub delete: AtomicU64,
    /// RestoreObject requests (thaws).
    pub restore: AtomicU64,
    /// PutObjectRetention requests (lock extensions).
    pub retention: AtomicU64,
    /// Reads of the bucket's configuration (versioning, Object Lock): no
    /// object is read.
    pub config: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Head,
    List,
    Delete,
    Restore,
    Retention,
    Config,
}

impl Stats {
    pub fn count(&self, op: Op, sent: u64, received: u64) {
        let c = match op {
            Op::Put => &self.put,
            Op::Get => &self.get,
            Op::Head => &self.head,
            Op::List => &self.list,
            Op::Delete => &self.delete,
            Op::Restore => &self.restore,
            Op::Retention => &self.retention,
            Op::Config => &self.config,
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(sent, Ordering::Relaxed);
        self.bytes_received.fetch_add(received, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> [u64; 7] {
        [
            &self.put,
            &self.get,
            &self.head,
            &self.list,
            &self.delete,
            &self.bytes_sent,
            &self.bytes_received,
        ]
        .map(|a| a.load(Ordering::Relaxed))
    }

    /// One line for human summaries.
    pub fn summary(&self) -> String {
        let [put, get, head, list, delete, sent, recv] = self.snapshot();
        let mut s = String::new();
        let _ = write!(
            s,
            "requests: {put} PUT, {get} GET, {head} HEAD, {list} LIST, {delete} DELETE"
        );
        // Thaws, lock extensions and configuration reads only where there
        // were some: most stores have none.
        for (n, what) in [
            (&self.restore, "RESTORE"),
            (&self.retention, "RETENTION"),
            (&self.config, "CONFIG"),
        ] {
            let n = n.load(Ordering::Relaxed);
            if n > 0 {
                let _ = write!(s, ", {n} {what}");
            }
        }
        let _ = write!(
            s,
            "; sent {}, received {}",
            crate::human_bytes(sent),
            crate::human_bytes(recv)
        );
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        let [put, get, head, list, delete, sent, recv] = self.snapshot();
        serde_json::json!({
            "put": put, "get": get, "head": head, "list": list, "delete": delete,
            "restore": self.restore.load(Ordering::Relaxed),
            "retention": self.retention.load(Ordering::Relaxed),
            "config": self.config.load(Ordering::Relaxed),
            "bytes_sent": sent, "bytes_received": recv,
        })
    }
}

/// Reads exactly `remaining` bytes from `inner`, counting them in
/// `received`; an answer that ends early is an `UnexpectedEof` error.
pub struct Exact<'a, R> {
    pub inner: R,
    pub remaining: u64,
    pub received: &'a AtomicU64,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || out.is_empty() {
            return Ok(0);
        }
        let want = out
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut out[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the answer ended {} bytes early", self.remaining),
            ));
        }
        self.remaining -= n as u64;
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Requests of one kind sent at once (HEADs, thaws): they wait on the
/// network, not on the machine.
const PARALLEL: usize = 8;

/// Run `f` over `items`, `PARALLEL` at a time (small requests, each its
/// own round trip); the results in order.
pub fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = Mutex::new(0usize);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL.min(items.len()) {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().expect("a request thread panicked");
                        let i = *n;
                        *n += 1;
                        i
                    };
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    out.lock().expect("a request thread panicked")[i] = Some(r);
                }
            });
        }
    });
    out.into_inner()
        .expect("a request thread panicked")
        .into_iter()
        .map(|r| r.expect("every item done"))
        .collect()
}

/// The store `cfg` names (credentials already resolved: see
/// `cmd/settings.rs`). A local store directory is created only when
/// `create` is set (backups); reading from a mistyped path is an error,
/// not an empty store.
pub fn open(cfg: &StoreConfig, create: bool) -> Result<Box<dyn Store>> {
    match cfg {
        StoreConfig::Local { path } => Ok(Box::new(LocalStore::open(path, create)?)),
        StoreConfig::S3(s3) => Ok(Box::new(S3Store::open(s3)?)),
    }
}
