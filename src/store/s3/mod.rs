//! S3-compatible object storage: every request is presigned with rusty-s3
//! and sent over one blocking ureq agent. Transient failures (transport
//! errors, timeouts, 429, 5xx) are retried for up to `retry_for` with
//! exponential backoff and jitter (`Retry-After` and SlowDown honoured);
//! other answers fail at once with the S3 error code.
//!
//! The server is not trusted (see `store/mod.rs`): no redirect is followed
//! (a 3xx is a permanent error naming the endpoint), every answer is read
//! within a size limit and within time bounds, and a listing that repeats
//! itself, goes backwards or strays outside its prefix is refused.
//!
//! This file holds the store and its object requests; around it:
//! `sign.rs` (signing), `transport.rs` (sending: time bounds, retries,
//! answers read within limits), `headers.rs` (what a PUT carries and a
//! HEAD says), `list.rs` (listings of objects and of versions), `lock.rs`
//! (the bucket's versioning and Object Lock, lock extensions), `limit.rs`
//! (bandwidth limits and requests in flight, shared by every thread).

mod creds;
mod headers;
mod limit;
mod list;
mod lock;
mod sign;
mod transport;

#[cfg(test)]
mod fake;

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;

use rusty_s3::actions::{DeleteObjects, DeleteObjectsResponse, ObjectIdentifier};
use rusty_s3::{Bucket, UrlStyle};
use sha2::{Digest, Sha256};

use super::class::{StorageClass, Tier};
use super::lock::Lock;
use super::versions::{self, Version};
use super::{Listing, ObjectMeta, Op, Stats, Store, check_key, too_large};
use crate::error::{Error, Result, StoreCause};
use crate::store::settings::{Checksum, RETRY_FOR, S3Config};
use headers::{file_md5, file_sha256, object_meta, put_headers};
use list::LIST_PAGE_MAX;
use sign::{Method, Req};
pub(crate) use transport::load_roots;
use transport::{BACKOFF_CAP, BACKOFF_FIRST, BOUNDS, Bounds, Failure, Paced, shown};

pub use headers::base64;

pub struct S3Store {
    bucket: Bucket,
    /// The credentials that sign, kept fresh (`creds/`).
    creds: creds::Chain,
    prefix: String,
    endpoint: String,
    agent: ureq::Agent,
    stats: Stats,
    /// How long a request is tried through transient failures
    /// (`retry_for`), the first backoff and its cap (shorter in tests).
    retry_for: Duration,
    backoff_first: Duration,
    backoff_cap: Duration,
    /// At most this many tries (a bound for tests; no bound otherwise).
    attempts: u32,
    /// Until when every request waits: the server asked (SlowDown,
    /// `Retry-After`).
    pause: std::sync::Mutex<Option<std::time::Instant>>,
    /// Since when the store fails, once announced (`transport::retry`).
    outage: std::sync::Mutex<Option<std::time::Instant>>,
    /// Time bounds of every request (`BOUNDS`; shorter in tests).
    bounds: Bounds,
    /// The checksum every PUT carries (`checksum`).
    checksum: Checksum,
    /// The server's clock minus ours, from the last HEAD's `Date`.
    skew: std::sync::Mutex<Option<i64>>,
    /// Bandwidth limits (`limit_upload`, `limit_download`) and requests in
    /// flight (`connections`), shared by every thread.
    up: Option<limit::Rate>,
    down: Option<limit::Rate>,
    slots: limit::Slots,
    /// The lock every PUT carries (`set_lock`).
    lock: RwLock<Option<Lock>>,
    /// The version id S3 gave each blob put by this process, until taken
    /// (`take_put_version`).
    put_versions: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// Headers signed with a request and sent with it (lower-case names).
type Headers = Vec<(&'static str, String)>;

impl S3Store {
    pub fn open(cfg: &S3Config) -> Result<S3Store> {
        let endpoint = cfg
            .endpoint
            .parse()
            .map_err(|e| Error::Setup(format!("S3 endpoint `{}`: {e}", cfg.endpoint)))?;
        let style = if cfg.url_style.virtual_host(&cfg.endpoint, &cfg.bucket) {
            UrlStyle::VirtualHost
        } else {
            UrlStyle::Path
        };
        let bucket = Bucket::new(endpoint, style, cfg.bucket.clone(), cfg.region.clone())
            .map_err(|e| Error::Setup(format!("S3 endpoint `{}`: {e}", cfg.endpoint)))?;
        let mut agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A 3xx is returned as it is, and refused (`redirect`): followed,
            // it would send a signed request wherever the server says,
            // https to http included.
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(300)));
        // TLS: the web PKI roots built into the binary (the same on every
        // host, rescue systems included), or the roots of `ca_file`.
        let tls = match &cfg.ca_file {
            Some(ca) => Some(
                ureq::tls::TlsConfig::builder()
                    .root_certs(load_roots(ca)?)
                    .build(),
            ),
            None => None,
        };
        if let Some(t) = &tls {
            agent = agent.tls_config(t.clone());
        }
        let agent: ureq::Agent = agent.build().into();
        // STS and the metadata endpoints: the store's roots only for an STS
        // endpoint given with it (AWS_ENDPOINT_URL_STS), else the web PKI.
        let http = creds::Http::new(tls.filter(|_| cfg.aws.sts_endpoint.is_some()));
        Ok(S3Store {
            bucket,
            creds: creds::Chain::new(cfg, http),
            prefix: cfg.prefix.clone(),
            endpoint: cfg.endpoint.clone(),
            agent,
            stats: Stats::default(),
            retry_for: cfg.retry_for.unwrap_or(RETRY_FOR),
            backoff_first: BACKOFF_FIRST,
            backoff_cap: BACKOFF_CAP,
            attempts: u32::MAX,
            pause: Default::default(),
            outage: Default::default(),
            bounds: limited_bounds(cfg),
            checksum: cfg.checksum,
            skew: Default::default(),
            up: cfg.limit_upload.map(limit::Rate::new),
            down: cfg.limit_download.map(limit::Rate::new),
            slots: limit::Slots::new(cfg.connections),
            lock: RwLock::new(None),
            put_versions: Default::default(),
        })
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The full key of `key`, which must be a key of the layout.
    fn checked(&self, op: &'static str, key: &str) -> Result<String> {
        check_key(op, key).map(|k| self.full_key(k))
    }

    /// The headers of a PUT of an object whose SHA-256 is `sha256` (and
    /// MD5 `md5`, asked for with `checksum = md5`), in `class`, with the
    /// lock when one is set.
    fn headers_for(&self, sha256: [u8; 32], md5: Option<[u8; 16]>, class: StorageClass) -> Headers {
        let mut h = put_headers(self.checksum, sha256, md5, class);
        if let Some(lock) = *self.lock.read().expect("lock setting poisoned by a panic") {
            h.extend(lock.headers());
        }
        h
    }

    /// The server's clock against ours, from an answer's `Date` (RFC 9110,
    /// which RFC 2822's parser reads); an unreadable one is left out.
    fn note_date(&self, h: &ureq::http::HeaderMap) {
        static PARSER: jiff::fmt::rfc2822::DateTimeParser =
            jiff::fmt::rfc2822::DateTimeParser::new();
        let server = h
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| PARSER.parse_timestamp(v.trim()).ok())
            .map(|t| t.as_second());
        if let Some(server) = server {
            let ours = i64::try_from(crate::time::now()).unwrap_or(i64::MAX);
            *self.skew.lock().expect("skew poisoned by a panic") =
                Some(server.saturating_sub(ours));
        }
    }

    /// `get` of the current version, or of `version`.
    fn get_at(&self, key: &str, version: Option<&str>, limit: u64) -> Result<Vec<u8>> {
        let full = self.checked("GET", key)?;
        let mut large = None;
        let r = self.retry("GET", &full, || {
            let mut req = Req::new(Method::Get, Some(&full));
            if let Some(v) = version {
                req = req.query("versionId", v);
            }
            let s = self.signed(&req)?;
            let mut resp = s
                .apply(self.bounded(self.agent.get(&s.url), Some(limit)))
                .call()
                .map_err(|e| {
                    self.stats.count(Op::Get, 0, 0);
                    self.transport(e)
                })?;
            if !resp.status().is_success() {
                self.stats.count(Op::Get, 0, 0);
                return Err(self.status_failure(&mut resp));
            }
            let expect = resp.body().content_length();
            if let Some(n) = expect.filter(|n| *n > limit) {
                // Refused on the claim alone: not a byte of the body is read.
                self.stats.count(Op::Get, 0, 0);
                large = Some(n);
                return Err(Failure::permanent(String::new()));
            }
            let body = self.read_body(resp, expect, limit);
            let got = body.as_ref().map(|b| b.len() as u64).unwrap_or(0);
            self.stats.count(Op::Get, 0, got);
            body
        });
        match large {
            Some(n) => Err(too_large(key, n, limit)),
            None => r,
        }
    }

    /// `open_range` of the current version, or of `version`.
    fn open_range_at(
        &self,
        key: &str,
        version: Option<&str>,
        start: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>> {
        let full = self.checked("GET", key)?;
        let last = start
            .checked_add(len.max(1) - 1)
            .ok_or_else(|| Error::store("GET", &full, format!("range {start}+{len} overflows")))?;
        let range = format!("bytes={start}-{last}");
        let (body, permit) = self.retry_with("GET", &full, |permit| {
            let mut req = Req::new(Method::Get, Some(&full));
            req.unsigned.push(("range", range.clone()));
            if let Some(v) = version {
                req = req.query("versionId", v);
            }
            let s = self.signed(&req)?;
            let resp = s.apply(self.bounded(self.agent.get(&s.url), None)).call();
            self.stats.count(Op::Get, 0, 0);
            let mut resp = resp.map_err(|e| self.transport(e))?;
            match resp.status().as_u16() {
                206 => Ok((resp.into_body().into_reader(), permit)),
                200 => Err(Failure::transient(format!(
                    "asked for {range}, got the whole object (HTTP 200): Range ignored"
                ))),
                _ => Err(self.status_failure(&mut resp)),
            }
        })?;
        // The slot is held until the body's last byte is read.
        let paced = Paced::new(body, self.bounds, self.bounds.total(len));
        Ok(Box::new(super::Exact {
            inner: limit::Held {
                inner: limit::Throttled::new(paced, self.down.as_ref()),
                permit: Some(permit),
                remaining: len,
            },
            remaining: len,
            received: &self.stats.bytes_received,
        }))
    }

    /// PUT of a small object from memory; with `only_new`, only if there is
    /// no object at `key` yet (`If-None-Match: *`): false when there was.
    fn put_small(&self, key: &str, data: &[u8], only_new: bool) -> Result<bool> {
        let full = self.checked("PUT", key)?;
        let sha: [u8; 32] = Sha256::digest(data).into();
        let md5 = (self.checksum == Checksum::Md5).then(|| md5::Md5::digest(data).into());
        let mut headers = self.headers_for(sha, md5, StorageClass::Standard);
        if only_new {
            headers.push(("if-none-match", "*".into()));
        }
        self.retry("PUT", &full, || {
            let mut req = Req::new(Method::Put, Some(&full)).payload(&sha);
            req.headers = headers.clone();
            let s = self.signed(&req)?;
            self.stats.count(Op::Put, data.len() as u64, 0);
            let rb = s.apply(self.bounded(self.agent.put(&s.url), Some(data.len() as u64)));
            let mut resp = match &self.up {
                None => rb.send(data),
                Some(rate) => {
                    let mut body = limit::Throttled::new(data, Some(rate));
                    rb.header("content-length", data.len().to_string())
                        .send(ureq::SendBody::from_reader(&mut body))
                }
            }
            .map_err(|e| self.transport(e))?;
            match resp.status().as_u16() {
                // Taken (by another host, or by this request's own first
                // attempt: the caller reads what is there).
                412 if only_new => Ok(false),
                s if (200..300).contains(&s) => Ok(true),
                _ => Err(self.status_failure(&mut resp)),
            }
        })
    }
}

/// The time bounds of requests: under a bandwidth limit, a request may be
/// as slow as its share of it (a sixteenth: more threads than that seldom
/// move bodies at once).
fn limited_bounds(cfg: &S3Config) -> Bounds {
    let slowest = [cfg.limit_upload, cfg.limit_download]
        .into_iter()
        .flatten()
        .min();
    Bounds {
        rate: slowest.map_or(BOUNDS.rate, |l| BOUNDS.rate.min((l / 16).max(1))),
        ..BOUNDS
    }
}

impl Store for S3Store {
    fn describe(&self) -> String {
        format!(
            "s3://{}/{} at {}",
            self.bucket.name(),
            self.prefix,
            self.endpoint
        )
    }

    fn put_file(&self, key: &str, path: &Path, class: StorageClass) -> Result<()> {
        let full = self.checked("PUT", key)?;
        // A blob's key is the SHA-256 of its bytes; anything else is hashed
        // here. The server refuses bytes that do not match, and keeps the
        // sum (`verify --checksums`). Only blobs take the configured class
        // (and `store check`'s probes, the class it tries).
        let (sha, class) = match crate::layout::parse(key) {
            Some(crate::layout::Key::Blob(hash)) => (hash, class),
            Some(crate::layout::Key::Probe { .. }) => (file_sha256(path)?, class),
            _ => (file_sha256(path)?, StorageClass::Standard),
        };
        let md5 = match self.checksum {
            Checksum::Md5 => Some(file_md5(path)?),
            _ => None,
        };
        let headers = self.headers_for(sha, md5, class);
        self.retry("PUT", &full, || {
            let file = File::open(path)
                .map_err(|e| Failure::permanent(format!("cannot open {}: {e}", path.display())))?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let mut req = Req::new(Method::Put, Some(&full)).payload(&sha);
            req.headers = headers.clone();
            let s = self.signed(&req)?;
            self.stats.count(Op::Put, len, 0);
            // ureq sends a File with its length as Content-Length (never
            // chunked); a throttled one with the length said.
            let rb = s.apply(self.bounded(self.agent.put(&s.url), Some(len)));
            let mut resp = match &self.up {
                None => rb.send(&file),
                Some(rate) => {
                    let mut body = limit::Throttled::new(&file, Some(rate));
                    rb.header("content-length", len.to_string())
                        .send(ureq::SendBody::from_reader(&mut body))
                }
            }
            .map_err(|e| self.transport(e))?;
            if resp.status().is_success() {
                Ok(resp
                    .headers()
                    .get("x-amz-version-id")
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| versions::is_version_id(v) && *v != "null")
                    .map(str::to_string))
            } else {
                Err(self.status_failure(&mut resp))
            }
        })
        .map(|version| {
            let locked = self
                .lock
                .read()
                .expect("lock setting poisoned by a panic")
                .is_some();
            if let Some(v) = version.filter(|_| locked && crate::layout::is_blob(key)) {
                self.put_versions
                    .lock()
                    .expect("put versions poisoned by a panic")
                    .insert(key.to_string(), v);
            }
        })
    }

    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<()> {
        self.put_small(key, data, false).map(|_| ())
    }

    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool> {
        self.put_small(key, data, true)
    }

    fn get(&self, key: &str, limit: u64) -> Result<Vec<u8>> {
        self.get_at(key, None, limit)
    }

    fn open_range(&self, key: &str, start: u64, len: u64) -> Result<Box<dyn Read + Send + '_>> {
        self.open_range_at(key, None, start, len)
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        Ok(self.stat(key, false)?.map(|m| m.size))
    }

    fn stat(&self, key: &str, checksum: bool) -> Result<Option<ObjectMeta>> {
        let full = self.checked("HEAD", key)?;
        let r = self.retry("HEAD", &full, || {
            let mut req = Req::new(Method::Head, Some(&full));
            if checksum {
                req = req.header("x-amz-checksum-mode", "ENABLED".into());
            }
            let s = self.signed(&req)?;
            self.stats.count(Op::Head, 0, 0);
            let mut resp = s
                .apply(self.bounded(self.agent.head(&s.url), Some(0)))
                .call()
                .map_err(|e| self.transport(e))?;
            if !resp.status().is_success() {
                return Err(self.status_failure(&mut resp));
            }
            self.note_date(resp.headers());
            object_meta(resp.headers()).map_err(Failure::permanent)
        });
        match r {
            Ok(m) => Ok(Some(m)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn signed_by(&self) -> Option<String> {
        Some(self.creds.describe())
    }

    fn has_classes(&self) -> bool {
        true
    }

    fn clock_skew(&self) -> Option<i64> {
        *self.skew.lock().expect("skew poisoned by a panic")
    }

    fn keeps_checksums(&self) -> bool {
        self.checksum == Checksum::Sha256
    }

    fn request_thaw(&self, key: &str, days: u32, tier: Tier) -> Result<bool> {
        let full = self.checked("RESTORE", key)?;
        let body = format!(
            "<RestoreRequest xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Days>{days}</Days><GlacierJobParameters><Tier>{}</Tier></GlacierJobParameters>\
             </RestoreRequest>",
            tier.name()
        );
        self.retry("RESTORE", &full, || {
            let req = Req::new(Method::Post, Some(&full))
                .query("restore", "")
                .header("content-type", "application/xml".into())
                .payload(&Sha256::digest(body.as_bytes()).into());
            let s = self.signed(&req)?;
            self.stats.count(Op::Restore, body.len() as u64, 0);
            let mut resp = s
                .apply(self.bounded(self.agent.post(&s.url), Some(body.len() as u64)))
                .send(body.as_bytes())
                .map_err(|e| self.transport(e))?;
            match resp.status().as_u16() {
                // Accepted: a thaw is under way.
                202 => Ok(true),
                // Already thawed: S3 only sets the copy's new expiry.
                200 => Ok(false),
                _ => {
                    let f = self.status_failure(&mut resp);
                    match &f.cause {
                        // Already under way (another run asked).
                        StoreCause::Http {
                            status: 409, code, ..
                        } if code == "RestoreAlreadyInProgress" => Ok(false),
                        _ => Err(f),
                    }
                }
            }
        })
    }

    fn list(&self, prefix: &str) -> Result<Listing> {
        self.list_objects(prefix)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let full = self.checked("DELETE", key)?;
        let r = self.retry("DELETE", &full, || {
            let s = self.signed(&Req::new(Method::Delete, Some(&full)))?;
            self.stats.count(Op::Delete, 0, 0);
            let mut resp = s
                .apply(self.bounded(self.agent.delete(&s.url), Some(0)))
                .call()
                .map_err(|e| self.transport(e))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(self.status_failure(&mut resp))
            }
        });
        match r {
            Err(Error::NotFound { .. }) => Ok(()),
            r => r,
        }
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        for batch in keys.chunks(1000) {
            let ids: Vec<ObjectIdentifier> = batch
                .iter()
                .map(|k| self.checked("DELETE", k).map(ObjectIdentifier::new))
                .collect::<Result<_>>()?;
            let what = match ids.len() {
                1 => format!("1 object, {}", self.full_key(&batch[0])),
                n => format!("{n} objects from {}", self.full_key(&batch[0])),
            };
            self.retry("DELETE", &what, || {
                // rusty-s3 writes the body (and its MD5, which S3 requires).
                let mut action = DeleteObjects::new(&self.bucket, None, ids.iter());
                action.set_quiet(true);
                let (body, md5) = action.body_with_md5();
                let req = Req::new(Method::Post, None)
                    .query("delete", "")
                    .header("content-md5", md5)
                    .header("content-type", "application/xml".into())
                    .payload(&Sha256::digest(body.as_bytes()).into());
                let s = self.signed(&req)?;
                self.stats.count(Op::Delete, body.len() as u64, 0);
                let moved = (body.len() as u64).saturating_add(LIST_PAGE_MAX);
                let mut resp = s
                    .apply(self.bounded(self.agent.post(&s.url), Some(moved)))
                    .send(body.as_bytes())
                    .map_err(|e| self.transport(e))?;
                if !resp.status().is_success() {
                    return Err(self.status_failure(&mut resp));
                }
                let text = self.read_body(resp, None, LIST_PAGE_MAX)?;
                let parsed = DeleteObjectsResponse::parse(&String::from_utf8_lossy(&text));
                match parsed {
                    Ok(r) if !r.errors.is_empty() => {
                        let e = &r.errors[0];
                        Err(Failure::permanent(format!(
                            "{} of them failed; {}: {} {}",
                            r.errors.len(),
                            shown(&e.key),
                            shown(&e.code),
                            shown(&e.message)
                        )))
                    }
                    Ok(_) => Ok(()),
                    // A 200 that cannot be read says nothing of what was
                    // deleted: ask again (deleting is idempotent).
                    Err(e) => Err(Failure::transient(format!(
                        "unreadable answer: {}",
                        shown(&e.to_string())
                    ))),
                }
            })?;
        }
        Ok(())
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn list_versions(&self, prefix: &str) -> Result<Option<Vec<Version>>> {
        self.list_object_versions(prefix)
    }

    fn get_version(&self, key: &str, version: &str, limit: u64) -> Result<Vec<u8>> {
        self.get_at(key, Some(version), limit)
    }

    fn open_version_range(
        &self,
        key: &str,
        version: &str,
        start: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>> {
        self.open_range_at(key, Some(version), start, len)
    }

    fn set_lock(&self, lock: Option<Lock>) {
        *self.lock.write().expect("lock setting poisoned by a panic") = lock;
    }

    fn versioned(&self) -> Result<bool> {
        self.bucket_versioned()
    }

    fn object_lock_enabled(&self) -> Result<bool> {
        self.bucket_lock_enabled()
    }

    fn check_lock_setup(&self) -> Result<()> {
        self.check_bucket_lock()
    }

    fn take_put_version(&self, key: &str) -> Option<String> {
        self.put_versions
            .lock()
            .expect("put versions poisoned by a panic")
            .remove(key)
    }

    fn extend_lock(&self, key: &str, version: Option<&str>, lock: Lock) -> Result<()> {
        self.put_retention(key, version, lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::s3::fake::*;
    use crate::store::settings::UrlStyle;

    #[test]
    fn a_200_to_a_range_request_is_refused() {
        let (s, seen) = fake(vec![
            answer("200 OK", b"0123456789"),
            answer("206 Partial Content", b"234"),
        ]);
        assert_eq!(read_range(&s, 2, 3).unwrap(), b"234");
        let heads = seen.lock().unwrap();
        assert!(
            heads[0].to_ascii_lowercase().contains("range: bytes=2-4"),
            "{}",
            heads[0]
        );
        let (s, _) = fake(vec![
            answer("200 OK", b"0123456789"),
            answer("200 OK", b"0123456789"),
            answer("200 OK", b"0123456789"),
        ]);
        let e = read_range(&s, 2, 3).unwrap_err().to_string();
        assert!(e.contains("Range ignored"), "{e}");
    }

    #[test]
    fn truncated_ranges_are_an_error_and_counted() {
        let (s, _) = fake(vec![Answer {
            claim: Some(10),
            ..answer("206 Partial Content", b"01234")
        }]);
        // ureq notices the short body itself ("Peer disconnected"); the
        // `Exact` wrapper catches a body that ends cleanly but early.
        assert!(read_range(&s, 0, 10).is_err());
        let [_, get, _, _, _, _, received] = s.stats.snapshot();
        assert_eq!(get, 1);
        assert!(received <= 5, "{received}");
    }

    #[test]
    fn thaw_requests_say_what_s3_answered() {
        let (s, heads) = fake(vec![answer("202 Accepted", b"")]);
        assert!(s.request_thaw(K, 3, Tier::Bulk).unwrap(), "a new thaw");
        let h = heads.lock().unwrap()[0].clone();
        assert!(h.starts_with("POST "), "{h}");
        assert!(h.contains("?restore "), "{h}");
        let (s, _) = fake(vec![answer("200 OK", b"")]);
        assert!(!s.request_thaw(K, 3, Tier::Bulk).unwrap(), "already thawed");
        let (s, _) = fake(vec![answer(
            "409 Conflict",
            b"<Error><Code>RestoreAlreadyInProgress</Code></Error>",
        )]);
        assert!(!s.request_thaw(K, 3, Tier::Bulk).unwrap(), "under way");
        let (s, _) = fake(vec![answer(
            "403 Forbidden",
            b"<Error><Code>InvalidObjectState</Code></Error>",
        )]);
        let e = s.request_thaw(K, 3, Tier::Bulk).unwrap_err().to_string();
        assert!(
            e.contains("store RESTORE") && e.contains("InvalidObjectState"),
            "{e}"
        );
        assert_eq!(
            s.stats().restore.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[test]
    fn puts_carry_the_checksum_the_setting_names() {
        let (mut s, heads) = fake(vec![answer("200 OK", b""), answer("200 OK", b"")]);
        s.checksum = Checksum::Md5;
        s.put_bytes(K, b"{}").unwrap();
        s.checksum = Checksum::None;
        s.put_bytes(K, b"{}").unwrap();
        let heads = heads.lock().unwrap();
        let md5 = base64(&md5::Md5::digest(b"{}")).to_ascii_lowercase();
        let (first, second) = (heads[0].to_ascii_lowercase(), heads[1].to_ascii_lowercase());
        assert!(first.contains(&format!("content-md5: {md5}")), "{first}");
        for h in [&first, &second] {
            assert!(!h.contains("x-amz-checksum"), "{h}");
            assert!(!h.contains("x-amz-sdk-checksum-algorithm"), "{h}");
        }
        assert!(!second.contains("content-md5"), "{second}");
        // SigV4's own payload hash stays.
        assert!(second.contains("x-amz-content-sha256: "), "{second}");
        assert!(
            !s.keeps_checksums(),
            "verify --checksums has none to compare"
        );
    }

    #[test]
    fn url_style_puts_the_bucket_in_the_host_or_the_path() {
        let at = |endpoint: &str, bucket: &str, style| {
            let s = S3Store::open(&S3Config {
                endpoint: endpoint.into(),
                bucket: bucket.into(),
                prefix: "p/".into(),
                region: "eu-west-1".into(),
                url_style: style,
                ..Default::default()
            })
            .unwrap();
            let signed = s.sign_with(
                &Req::new(Method::Get, Some("p/k")),
                Some(&creds::Creds::new("AKID", "secret", None)),
                1_700_000_000,
            );
            let host = signed
                .headers
                .iter()
                .find(|(k, _)| k == "host")
                .map(|(_, v)| v.clone())
                .unwrap();
            (signed.url, host)
        };
        let aws = "https://s3.eu-west-1.amazonaws.com";
        assert_eq!(
            at(aws, "my-backups", UrlStyle::Auto),
            (
                "https://my-backups.s3.eu-west-1.amazonaws.com/p/k".into(),
                "my-backups.s3.eu-west-1.amazonaws.com".into()
            )
        );
        assert_eq!(
            at(aws, "my-backups", UrlStyle::Path).0,
            "https://s3.eu-west-1.amazonaws.com/my-backups/p/k"
        );
        // A bucket name with dots would not match AWS's certificate.
        assert_eq!(
            at(aws, "my.backups", UrlStyle::Auto).0,
            "https://s3.eu-west-1.amazonaws.com/my.backups/p/k"
        );
        let oss = "https://oss-eu-central-1.aliyuncs.com";
        assert_eq!(
            at(oss, "b1", UrlStyle::Auto).0,
            "https://oss-eu-central-1.aliyuncs.com/b1/p/k"
        );
        assert_eq!(
            at(oss, "b1", UrlStyle::Virtual),
            (
                "https://b1.oss-eu-central-1.aliyuncs.com/p/k".into(),
                "b1.oss-eu-central-1.aliyuncs.com".into()
            )
        );
    }

    #[test]
    fn puts_carry_their_checksum_and_blobs_their_class() {
        let (s, heads) = fake(vec![answer("200 OK", b""), answer("200 OK", b"")]);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b");
        std::fs::write(&f, b"blob bytes").unwrap();
        let hash: [u8; 32] = Sha256::digest(b"blob bytes").into();
        let key = crate::layout::Key::Blob(hash).to_key();
        s.put_file(&key, &f, StorageClass::DeepArchive).unwrap();
        s.put_bytes(crate::layout::IDENTITY, b"{}").unwrap();
        let heads = heads.lock().unwrap();
        let low = |i: usize| heads[i].to_ascii_lowercase();
        assert!(
            low(0).contains(&format!(
                "x-amz-checksum-sha256: {}",
                base64(&hash).to_ascii_lowercase()
            )),
            "{}",
            heads[0]
        );
        assert!(
            low(0).contains("x-amz-storage-class: deep_archive"),
            "{}",
            heads[0]
        );
        assert!(
            low(0).contains("x-amz-sdk-checksum-algorithm: sha256"),
            "{}",
            heads[0]
        );
        // Signed: the names are in the Authorization header's SignedHeaders,
        // with the body's SHA-256.
        let signed = low(0)
            .split("signedheaders=")
            .nth(1)
            .and_then(|r| r.split([',', ' ']).next())
            .map(str::to_string)
            .unwrap_or_default();
        for name in [
            "host",
            "x-amz-checksum-sha256",
            "x-amz-content-sha256",
            "x-amz-date",
            "x-amz-sdk-checksum-algorithm",
            "x-amz-storage-class",
        ] {
            assert!(
                signed.split(';').any(|n| n == name),
                "{name} not in {signed}"
            );
        }
        assert!(
            low(0).contains(&format!(
                "x-amz-content-sha256: {}",
                crate::chunk::hex(&hash)
            )),
            "{}",
            heads[0]
        );
        // Everything else stays STANDARD, and carries its own checksum.
        assert!(!low(1).contains("x-amz-storage-class"), "{}", heads[1]);
        let sum = base64(&Sha256::digest(b"{}")).to_ascii_lowercase();
        assert!(
            low(1).contains(&format!("x-amz-checksum-sha256: {sum}")),
            "{}",
            heads[1]
        );
    }
}
