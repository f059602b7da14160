//! Reading a versioned bucket as vaultik wrote it. vaultik never writes a
//! key twice with different content: a blob's key is the SHA-256 of its
//! bytes, and a snapshot id is never reused. So on a versioned bucket a
//! later version of a key is somebody else's doing (a host's stolen
//! credentials overwriting or deleting what they can), and:
//! - a snapshot's metadata and manifest are read from their *earliest*
//!   version, and later versions are reported;
//! - a blob whose current version is not the one its key names (or is a
//!   delete marker) is read from a version whose content hashes to its key;
//! - snapshots whose current objects were deleted while versions remain
//!   can be listed (`snapshot list --versions`) and restored.
//!
//! `Versioned` wraps a store and sends the reads of such keys to the
//! chosen version; everything else goes to the store as it is. A store
//! without versions (a directory, a server without ListObjectVersions) is
//! used as it is.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::RwLock;

use sha2::{Digest, Sha256};

use super::class::{StorageClass, Tier};
use super::lock::Lock;
use super::{Listing, ObjectMeta, Stats, Store, ThawState};
use crate::error::{Error, Result};
use crate::layout::{self, Key};

/// One version of an object, as a version listing gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    /// Relative to the store's prefix.
    pub key: String,
    /// Opaque, chosen by the server; only ever sent back to it.
    pub id: String,
    pub size: u64,
    /// Seconds since the epoch.
    pub modified: u64,
    /// The current version of its key.
    pub latest: bool,
    /// A delete marker, not content.
    pub deleted: bool,
}

/// The versions of each key, newest first: the current one, then by time,
/// versions of the same second in the order listed (S3 lists a key's
/// versions newest first; moto lists delete markers after versions).
fn by_key(versions: Vec<Version>) -> HashMap<String, Vec<Version>> {
    let mut out: HashMap<String, Vec<Version>> = HashMap::new();
    for v in versions {
        out.entry(v.key.clone()).or_default().push(v);
    }
    for vs in out.values_mut() {
        vs.sort_by(|a, b| b.latest.cmp(&a.latest).then(b.modified.cmp(&a.modified)));
    }
    out
}

/// A store whose reads of some keys go to a chosen version.
pub struct Versioned {
    inner: Box<dyn Store>,
    /// Key -> the version read instead of the current one.
    pins: RwLock<HashMap<String, Version>>,
    /// Snapshot objects whose current version is a delete marker, with the
    /// version kept (pinned): listed only when `with_deleted`.
    deleted: Vec<Version>,
    with_deleted: bool,
}

/// What was found of a snapshot object on opening, for the warnings.
pub struct Finding {
    pub key: String,
    pub message: String,
}

impl Versioned {
    /// `inner`, read as described above when it keeps versions; the
    /// findings (later versions of snapshot objects) go to `warn`. With
    /// `with_deleted`, listings include the snapshots whose current
    /// objects were deleted.
    pub fn open(
        inner: Box<dyn Store>,
        with_deleted: bool,
        warn: &dyn Fn(&str),
    ) -> Result<Box<dyn Store>> {
        let versions = match inner.list_versions(layout::METADATA) {
            Ok(Some(v)) => v,
            Ok(None) => return Ok(inner),
            // A key that may not list versions (no s3:ListBucketVersions):
            // read what is current, as before versions.
            Err(e) if denied(&e) => {
                warn(&format!(
                    "{e}; reading current objects only (on a versioned bucket, grant \
                     s3:ListBucketVersions to read it as vaultik wrote it)"
                ));
                return Ok(inner);
            }
            Err(e) => return Err(e),
        };
        let mut pins = HashMap::new();
        let mut deleted = Vec::new();
        let mut keys: Vec<(String, Vec<Version>)> = by_key(versions).into_iter().collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, vs) in keys {
            if !matches!(
                layout::parse(&key),
                Some(Key::Metadata(_) | Key::Manifest(_) | Key::Signature(_))
            ) {
                continue;
            }
            let content: Vec<&Version> = vs.iter().filter(|v| !v.deleted).collect();
            // Newest first: the earliest is the last.
            let Some(first) = content.last() else {
                continue;
            };
            let current_deleted = vs.first().is_some_and(|v| v.deleted);
            if content.len() > 1 {
                warn(&format!(
                    "{key}: {} later version(s) written over the one vaultik wrote (a sign of \
                     tampering); reading the first, of {}",
                    content.len() - 1,
                    crate::time::display(first.modified)
                ));
            }
            if current_deleted {
                deleted.push((*first).clone());
            }
            if content.len() > 1 || current_deleted {
                pins.insert(key, (*first).clone());
            }
        }
        Ok(Box::new(Versioned {
            inner,
            pins: RwLock::new(pins),
            deleted,
            with_deleted,
        }))
    }

    fn pin(&self, key: &str) -> Option<Version> {
        self.pins
            .read()
            .expect("pins lock poisoned by a panic")
            .get(key)
            .cloned()
    }

    /// Choose the version to read of each of `blobs` (key and size) whose
    /// current version may not be the one vaultik wrote: found from one
    /// listing of the blobs' versions, checked by hashing it whole.
    fn choose_blobs(&self, blobs: &[(String, u64)], report: &dyn Fn(&str)) -> Result<()> {
        let versions = match self.inner.list_versions(layout::BLOBS) {
            Ok(Some(v)) => v,
            Ok(None) => return Ok(()),
            Err(e) if denied(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut all = by_key(versions);
        for (key, size) in blobs {
            let Some(vs) = all.remove(key) else { continue };
            let Some(Key::Blob(hash)) = layout::parse(key) else {
                continue;
            };
            let current = vs.first().filter(|v| !v.deleted);
            if vs.len() == 1 && current.is_some_and(|v| v.size == *size) {
                continue;
            }
            // Earliest first: the one vaultik wrote comes before an
            // attacker's.
            let mut found = None;
            for v in vs.iter().rev().filter(|v| !v.deleted && v.size == *size) {
                if self.hashes_to(v, &hash)? {
                    found = Some(v.clone());
                    break;
                }
            }
            let what = match current {
                None => "was deleted".to_string(),
                Some(_) => format!(
                    "has {} version(s) besides the one vaultik wrote",
                    vs.len() - 1
                ),
            };
            match found {
                Some(v) if v.latest => {
                    if vs.len() > 1 {
                        report(&format!(
                            "{key} {what}; its current version is intact, and read"
                        ));
                    }
                }
                Some(v) => {
                    report(&format!(
                        "{key} {what}; read from its version of {} whose content matches its key",
                        crate::time::display(v.modified)
                    ));
                    self.pins
                        .write()
                        .expect("pins lock poisoned by a panic")
                        .insert(key.clone(), v);
                }
                None => report(&format!(
                    "{key} {what}; no version of it holds the content its key names"
                )),
            }
        }
        Ok(())
    }

    /// Whether version `v` of a blob hashes to `hash` (read whole, not
    /// kept).
    fn hashes_to(&self, v: &Version, hash: &[u8; 32]) -> Result<bool> {
        let mut r = self.inner.open_version_range(&v.key, &v.id, 0, v.size)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => h.update(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A version that cannot be read whole is not the one.
                Err(_) => return Ok(false),
            }
        }
        Ok(<[u8; 32]>::from(h.finalize()) == *hash)
    }
}

impl Store for Versioned {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn put_file(&self, key: &str, path: &Path, class: StorageClass) -> Result<()> {
        self.inner.put_file(key, path, class)
    }
    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<()> {
        self.inner.put_bytes(key, data)
    }
    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool> {
        self.inner.put_new(key, data)
    }
    fn get(&self, key: &str, limit: u64) -> Result<Vec<u8>> {
        match self.pin(key) {
            Some(v) => self.inner.get_version(key, &v.id, limit),
            None => self.inner.get(key, limit),
        }
    }
    fn open_range(&self, key: &str, start: u64, len: u64) -> Result<Box<dyn Read + Send + '_>> {
        match self.pin(key) {
            Some(v) => self.inner.open_version_range(key, &v.id, start, len),
            None => self.inner.open_range(key, start, len),
        }
    }
    fn head(&self, key: &str) -> Result<Option<u64>> {
        match self.pin(key) {
            Some(v) => Ok(Some(v.size)),
            None => self.inner.head(key),
        }
    }
    fn stat(&self, key: &str, checksum: bool) -> Result<Option<ObjectMeta>> {
        match self.pin(key) {
            Some(v) => Ok(Some(ObjectMeta {
                size: v.size,
                class: StorageClass::Standard,
                thaw: ThawState::NotNeeded,
                sha256: None,
                locked_until: None,
                version: Some(v.id.clone()),
            })),
            None => self.inner.stat(key, checksum),
        }
    }
    fn has_classes(&self) -> bool {
        self.inner.has_classes()
    }
    fn keeps_checksums(&self) -> bool {
        self.inner.keeps_checksums()
    }
    fn request_thaw(&self, key: &str, days: u32, tier: Tier) -> Result<bool> {
        self.inner.request_thaw(key, days, tier)
    }
    /// The store's listing, with the pinned versions' sizes and times for
    /// pinned keys (deleted blobs whose version was found included) and,
    /// `with_deleted`, the deleted snapshots' objects.
    fn list(&self, prefix: &str) -> Result<Listing> {
        let mut l = self.inner.list(prefix)?;
        let pins = self.pins.read().expect("pins lock poisoned by a panic");
        let mut seen = std::collections::HashSet::new();
        for o in &mut l.objects {
            if let Some(v) = pins.get(&o.key) {
                o.size = v.size;
                o.modified = v.modified;
                seen.insert(o.key.clone());
            }
        }
        for (k, v) in pins.iter() {
            let snapshot = matches!(
                layout::parse(k),
                Some(Key::Metadata(_) | Key::Manifest(_) | Key::Signature(_))
            );
            if k.starts_with(prefix) && !seen.contains(k) && (self.with_deleted || !snapshot) {
                l.add(k.clone(), v.size, v.modified, StorageClass::Standard);
            }
        }
        l.objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(l)
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key)
    }
    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.inner.delete_many(keys)
    }
    fn stats(&self) -> &Stats {
        self.inner.stats()
    }
    fn list_versions(&self, prefix: &str) -> Result<Option<Vec<Version>>> {
        self.inner.list_versions(prefix)
    }
    fn get_version(&self, key: &str, version: &str, limit: u64) -> Result<Vec<u8>> {
        self.inner.get_version(key, version, limit)
    }
    fn open_version_range(
        &self,
        key: &str,
        version: &str,
        start: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>> {
        self.inner.open_version_range(key, version, start, len)
    }
    fn choose_versions(&self, blobs: &[(String, u64)], report: &dyn Fn(&str)) -> Result<()> {
        self.choose_blobs(blobs, report)
    }
    fn deleted_snapshots(&self) -> Vec<String> {
        self.deleted
            .iter()
            .filter_map(|v| match layout::parse(&v.key) {
                Some(Key::Manifest(id)) => Some(id.to_string()),
                _ => None,
            })
            .collect()
    }
    fn set_lock(&self, lock: Option<Lock>) {
        self.inner.set_lock(lock)
    }
    fn check_lock_setup(&self) -> Result<()> {
        self.inner.check_lock_setup()
    }
    fn versioned(&self) -> Result<bool> {
        self.inner.versioned()
    }
    fn object_lock_enabled(&self) -> Result<bool> {
        self.inner.object_lock_enabled()
    }
    fn signed_by(&self) -> Option<String> {
        self.inner.signed_by()
    }
    fn take_put_version(&self, key: &str) -> Option<String> {
        self.inner.take_put_version(key)
    }
    fn extend_lock(&self, key: &str, version: Option<&str>, lock: Lock) -> Result<()> {
        self.inner.extend_lock(key, version, lock)
    }
}

/// Whether `e` is the store refusing the request itself (HTTP 400, 403,
/// 405 or 501: a key without the right, a server without the call), as
/// opposed to failing to answer.
pub fn denied(e: &Error) -> bool {
    matches!(
        e,
        Error::Store {
            cause: crate::error::StoreCause::Http {
                status: 400 | 403 | 405 | 501,
                ..
            },
            ..
        }
    )
}

/// The error of a store that keeps no versions, for what needs them.
pub fn unsupported(op: &'static str, key: &str) -> Error {
    Error::store(op, key, "this store keeps no object versions")
}

/// One page of a ListObjectVersions answer: the versions and delete
/// markers in document order (keys as the server gave them), and where the
/// next page starts (key marker, version id marker) when it is truncated.
#[derive(Debug, Default)]
pub struct Page {
    pub versions: Vec<Version>,
    pub next: Option<(String, String)>,
}

/// The longest version id accepted (AWS's are 32 characters).
const VERSION_ID_MAX: usize = 1024;

/// Parse a `ListVersionsResult`. Everything in it was chosen by the
/// server: an entry without a key or a version id, or with a version id
/// that is too long or not printable ASCII, refuses the page.
pub fn parse_page(xml: &str) -> std::result::Result<Page, String> {
    let mut page = Page::default();
    // The next entry of each kind, searched for again only once passed:
    // every byte of the page is scanned a bounded number of times.
    let next_of = |tag: &str, from: usize| xml[from..].find(tag).map(|i| i + from);
    let mut next_v = next_of("<Version>", 0);
    let mut next_d = next_of("<DeleteMarker>", 0);
    loop {
        let (at, deleted, close) = match (next_v, next_d) {
            (Some(v), Some(d)) if d < v => (d, true, "</DeleteMarker>"),
            (Some(v), _) => (v, false, "</Version>"),
            (None, Some(d)) => (d, true, "</DeleteMarker>"),
            (None, None) => break,
        };
        let body_start = at + if deleted { 14 } else { 9 };
        let end = xml[body_start..]
            .find(close)
            .ok_or("an entry that does not end")?
            + body_start;
        let entry = &xml[body_start..end];
        let after = end + close.len();
        if next_v.is_some_and(|v| v < after) {
            next_v = next_of("<Version>", after);
        }
        if next_d.is_some_and(|d| d < after) {
            next_d = next_of("<DeleteMarker>", after);
        }
        let field = |name: &str| {
            let open = format!("<{name}>");
            let close = format!("</{name}>");
            let s = entry.find(&open)? + open.len();
            let e = entry[s..].find(&close)? + s;
            Some(unescape(&entry[s..e]))
        };
        let key = field("Key").ok_or("an entry without a Key")?;
        let id = field("VersionId").ok_or("an entry without a VersionId")?;
        if id.is_empty() || id.len() > VERSION_ID_MAX || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("a version id that is not one ({} bytes)", id.len()));
        }
        page.versions.push(Version {
            key,
            id,
            size: if deleted {
                0
            } else {
                field("Size")
                    .and_then(|s| s.parse().ok())
                    .ok_or("a version without a Size")?
            },
            // Versions are ordered by it: one without a readable time is
            // not placed anywhere (it could pass for the earliest).
            modified: field("LastModified")
                .as_deref()
                .and_then(crate::time::parse_s3)
                .ok_or("an entry without a readable LastModified")?,
            latest: field("IsLatest").as_deref() == Some("true"),
            deleted,
        });
    }
    let top = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        // Outside the entries: the page's own fields come first or last.
        let s = xml.rfind(&open)? + open.len();
        let e = xml[s..].find(&close)? + s;
        Some(unescape(&xml[s..e]))
    };
    if top("IsTruncated").as_deref() == Some("true") {
        let key = top("NextKeyMarker").filter(|k| !k.is_empty());
        let ver = top("NextVersionIdMarker").unwrap_or_default();
        match key {
            Some(k) => page.next = Some((k, ver)),
            None => return Err("a truncated page without a NextKeyMarker".into()),
        }
    }
    Ok(page)
}

/// Whether `id` may be a version id: 1 to `VERSION_ID_MAX` bytes of
/// printable ASCII.
pub fn is_version_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= VERSION_ID_MAX && id.bytes().all(|b| b.is_ascii_graphic())
}

/// XML's five entities and numeric references (what S3 escapes in keys).
fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        // An entity is a few characters: a `;` further away is not one
        // (and is never searched for across the whole field).
        let Some(semi) = rest.bytes().take(12).position(|b| b == b';') else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let ent = &rest[1..semi];
        let c = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A versioned store in memory: per key, its versions oldest first.
    struct Mem {
        versions: Vec<Version>,
        data: HashMap<String, Vec<u8>>,
        stats: Stats,
        /// Refuse version listings (a key without s3:ListBucketVersions).
        deny: bool,
    }

    impl Mem {
        fn new(entries: &[(&str, &str, &[u8], u64, bool)]) -> Mem {
            let mut m = Mem {
                versions: Vec::new(),
                data: HashMap::new(),
                stats: Stats::default(),
                deny: false,
            };
            for (key, id, bytes, modified, deleted) in entries {
                m.versions.push(Version {
                    key: key.to_string(),
                    id: id.to_string(),
                    size: bytes.len() as u64,
                    modified: *modified,
                    latest: false,
                    deleted: *deleted,
                });
                m.data.insert(id.to_string(), bytes.to_vec());
            }
            // The newest of each key is current.
            let n = m.versions.len();
            for i in 0..n {
                let k = m.versions[i].key.clone();
                let newest = m
                    .versions
                    .iter()
                    .filter(|v| v.key == k)
                    .map(|v| v.modified)
                    .max();
                m.versions[i].latest = Some(m.versions[i].modified) == newest;
            }
            m
        }
        fn current(&self, key: &str) -> Option<&Version> {
            self.versions
                .iter()
                .find(|v| v.key == key && v.latest && !v.deleted)
        }
    }

    impl Store for Mem {
        fn describe(&self) -> String {
            "memory".into()
        }
        fn put_file(&self, _: &str, _: &Path, _: StorageClass) -> Result<()> {
            unreachable!("read only")
        }
        fn put_bytes(&self, _: &str, _: &[u8]) -> Result<()> {
            unreachable!("read only")
        }
        fn put_new(&self, _: &str, _: &[u8]) -> Result<bool> {
            unreachable!("read only")
        }
        fn get(&self, key: &str, _: u64) -> Result<Vec<u8>> {
            let v = self
                .current(key)
                .ok_or(Error::NotFound { key: key.into() })?;
            Ok(self.data[&v.id].clone())
        }
        fn open_range(&self, key: &str, start: u64, len: u64) -> Result<Box<dyn Read + Send + '_>> {
            let d = self.get(key, u64::MAX)?;
            Ok(Box::new(std::io::Cursor::new(
                d[start as usize..(start + len) as usize].to_vec(),
            )))
        }
        fn head(&self, key: &str) -> Result<Option<u64>> {
            Ok(self.current(key).map(|v| v.size))
        }
        fn list(&self, prefix: &str) -> Result<Listing> {
            let mut l = Listing::default();
            for v in self
                .versions
                .iter()
                .filter(|v| v.latest && !v.deleted && v.key.starts_with(prefix))
            {
                l.add(v.key.clone(), v.size, v.modified, StorageClass::Standard);
            }
            Ok(l)
        }
        fn delete(&self, _: &str) -> Result<()> {
            unreachable!("read only")
        }
        fn stats(&self) -> &Stats {
            &self.stats
        }
        fn list_versions(&self, prefix: &str) -> Result<Option<Vec<Version>>> {
            if self.deny {
                return Err(Error::Store {
                    op: "LIST",
                    key: prefix.into(),
                    cause: crate::error::StoreCause::Http {
                        status: 403,
                        code: "AccessDenied".into(),
                        message: String::new(),
                    },
                    attempts: None,
                });
            }
            // Newest first, as S3 lists them.
            let mut v: Vec<Version> = self
                .versions
                .iter()
                .filter(|v| v.key.starts_with(prefix))
                .cloned()
                .collect();
            v.reverse();
            Ok(Some(v))
        }
        fn get_version(&self, _: &str, version: &str, _: u64) -> Result<Vec<u8>> {
            Ok(self.data[version].clone())
        }
        fn open_version_range(
            &self,
            _: &str,
            version: &str,
            start: u64,
            len: u64,
        ) -> Result<Box<dyn Read + Send + '_>> {
            let d = &self.data[version];
            Ok(Box::new(std::io::Cursor::new(
                d[start as usize..(start + len) as usize].to_vec(),
            )))
        }
    }

    #[test]
    fn the_version_vaultik_wrote_is_read() {
        let mine = b"the blob vaultik wrote".to_vec();
        let hash: [u8; 32] = Sha256::digest(&mine).into();
        let blob = layout::blob(&hash);
        let other: [u8; 32] = Sha256::digest(b"x").into();
        let lost = layout::blob(&other);
        let id = layout::make_id("h", "n", 1_700_000_000);
        let manifest = layout::manifest(&id);
        // Same size, other content, before and after it; a delete marker
        // on top. And a blob of which no version holds its content.
        let junk = vec![b'j'; mine.len()];
        let mem = Mem::new(&[
            (&blob, "early-junk", &junk, 5, false),
            (&blob, "mine", &mine, 10, false),
            (&blob, "late-junk", &junk, 20, false),
            (&blob, "marker", b"", 30, true),
            (&lost, "lost-junk", b"1", 10, false),
            (&lost, "lost-junk-2", b"2", 20, false),
            (&manifest, "m1", b"real manifest", 10, false),
            (&manifest, "m2", b"forged", 20, false),
        ]);
        let warned = std::sync::Mutex::new(Vec::new());
        let v = Versioned::open(Box::new(mem), false, &|m: &str| {
            warned.lock().unwrap().push(m.to_string())
        })
        .unwrap();
        assert_eq!(v.get(&manifest, 100).unwrap(), b"real manifest");
        assert!(warned.lock().unwrap()[0].contains("1 later version"));
        let said = std::sync::Mutex::new(Vec::new());
        let report = |m: &str| said.lock().unwrap().push(m.to_string());
        v.choose_versions(
            &[(blob.clone(), mine.len() as u64), (lost.clone(), 1)],
            &report,
        )
        .unwrap();
        let said = said.into_inner().unwrap();
        assert!(
            said[0].contains("was deleted") && said[0].contains("matches its key"),
            "{said:?}"
        );
        assert!(said[1].contains("no version of it holds"), "{said:?}");
        let mut r = v.open_range(&blob, 0, mine.len() as u64).unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, mine);
        // Listed as vaultik wrote it: present, its size.
        let l = v.list(layout::BLOBS).unwrap();
        assert!(
            l.objects
                .iter()
                .any(|o| o.key == blob && o.size == mine.len() as u64)
        );
    }

    #[test]
    fn versions_are_ordered_current_first_then_newest() {
        let v = |id: &str, modified: u64, latest: bool, deleted: bool| Version {
            key: "k".into(),
            id: id.into(),
            size: 1,
            modified,
            latest,
            deleted,
        };
        // As moto lists them: versions (newest first), then delete markers.
        let got = by_key(vec![
            v("evil", 20, false, false),
            v("mine", 10, false, false),
            v("marker", 20, true, true),
        ]);
        let ids: Vec<&str> = got["k"].iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["marker", "evil", "mine"]);
    }

    #[test]
    fn version_pages_are_parsed_and_checked() {
        let xml = "<?xml version=\"1.0\"?><ListVersionsResult><IsTruncated>true</IsTruncated>\
            <Version><Key>p/a&amp;b</Key><VersionId>v2</VersionId><IsLatest>true</IsLatest>\
            <LastModified>2026-12-02T10:00:00.000Z</LastModified><Size>5</Size></Version>\
            <DeleteMarker><Key>p/c</Key><VersionId>v9</VersionId><IsLatest>true</IsLatest>\
            <LastModified>2026-12-02T11:00:00.000Z</LastModified></DeleteMarker>\
            <Version><Key>p/c</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest>\
            <LastModified>2026-12-01T10:00:00.000Z</LastModified><Size>7</Size></Version>\
            <NextKeyMarker>p/c</NextKeyMarker><NextVersionIdMarker>v1</NextVersionIdMarker>\
            </ListVersionsResult>";
        let p = parse_page(xml).unwrap();
        assert_eq!(unescape("a&b&amp;c&#x41;&zz;"), "a&b&cA&zz;");
        // A page of many entries is read in one pass (a hostile page of
        // 8 MiB of versions must not take quadratic time).
        let entry = "<Version><Key>k</Key><VersionId>v</VersionId><IsLatest>false</IsLatest>\
            <LastModified>2026-12-02T10:00:00.000Z</LastModified><Size>1</Size></Version>";
        let big = format!(
            "<ListVersionsResult>{}</ListVersionsResult>",
            entry.repeat(60_000)
        );
        assert_eq!(parse_page(&big).unwrap().versions.len(), 60_000);
        assert_eq!(p.versions.len(), 3);
        assert_eq!(p.versions[0].key, "p/a&b");
        assert!(p.versions[0].latest && !p.versions[0].deleted);
        assert!(p.versions[1].deleted && p.versions[1].latest);
        assert_eq!(p.versions[2].size, 7);
        assert_eq!(p.next, Some(("p/c".into(), "v1".into())));
        for bad in [
            "<Version><Key>k</Key><Size>1</Size></Version>",
            "<Version><Key>k</Key><VersionId>a b</VersionId><Size>1</Size></Version>",
            "<Version><Key>k</Key><VersionId>v</VersionId></Version>",
            "<Version><Key>k</Key><VersionId>v</VersionId><Size>1</Size>",
            "<IsTruncated>true</IsTruncated>",
        ] {
            assert!(parse_page(bad).is_err(), "{bad}");
        }
        let long = format!(
            "<Version><Key>k</Key><VersionId>{}</VersionId><Size>1</Size></Version>",
            "v".repeat(VERSION_ID_MAX + 1)
        );
        assert!(parse_page(&long).is_err());
    }
}
