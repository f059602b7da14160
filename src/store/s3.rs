//! S3-compatible object storage: every request is presigned with rusty-s3
//! and sent over one blocking ureq agent. Transient failures (transport
//! errors, timeouts, 429, 5xx) are retried with bounded exponential backoff
//! and jitter; other answers fail at once with the S3 error code.
//!
//! The server is not trusted (see `mod.rs`): no redirect is followed (a 3xx
//! is a permanent error naming the endpoint), every answer is read within a
//! size limit and within time bounds (`Bounds`), and a listing that repeats
//! itself, goes backwards or strays outside its prefix is refused.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusty_s3::actions::{DeleteObjects, DeleteObjectsResponse, ListObjectsV2, ObjectIdentifier};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use sha2::{Digest, Sha256};

use super::class::{StorageClass, Tier};
use super::lock::Lock;
use super::versions::{self, Version};
use super::{Listing, ObjectMeta, Op, Stats, Store, ThawState, check_key, too_large};
use crate::config::S3Config;
use crate::error::{Error, Result, StoreCause};

/// Presigned URLs are used at once; an hour covers the slowest upload.
const SIGN_FOR: Duration = Duration::from_secs(3600);
const ATTEMPTS: u32 = 6;
/// A ListObjectsV2 page (1000 keys) is about 300 KB of XML; a larger
/// answer is refused, whatever the server says.
const LIST_PAGE_MAX: u64 = 8 << 20;
/// Pages a listing follows at most: ten times what `LIST_MAX` objects take
/// at S3's 1000 keys a page (a page may hold fewer, even none), so that a
/// server answering empty pages with ever new tokens cannot keep a listing
/// going forever.
const LIST_PAGES_MAX: usize = super::LIST_MAX / 100;
/// Characters of a name the server chose (a Location, a key) that an error
/// message shows.
const SHOWN_MAX: usize = 200;

/// Time bounds on one request, so that a server that stops answering, or
/// answers a byte at a time, cannot hold vaultik forever (on top of the
/// agent's 15 s to connect and 300 s to receive an answer's headers).
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// The longest silence accepted: every read and write on the
    /// connection (the wait for the answer's headers included) must move
    /// something within it.
    stall: Duration,
    /// What every request is allowed whatever its size, beyond `rate`.
    base: Duration,
    /// The slowest transfer accepted, in bytes per second: a request
    /// moving `n` bytes may take `base + n / rate` in all.
    rate: u64,
}

/// A stall of 2 minutes: S3 sends an answer's headers within seconds (a
/// PUT's once it has stored the body) and does not pause a transfer that
/// long; a network outage that does is retried. A whole request may take
/// 10 minutes (connecting and the headers, at most 315 s, with room to
/// spare) plus a second per 4 KiB: 32 kbit/s, what each of the 2 uploads
/// vaultik runs at once gets from a 64 kbit/s uplink, or each of its 6
/// restore streams from 200 kbit/s. So a 64 MiB blob upload may take
/// 4 h 43 min, a 4 MiB ranged download 27 min, a 32 MiB manifest 2 h 26 min,
/// an 8 MiB listing page 44 min: bounds that stop a server that trickles,
/// not a slow link.
const BOUNDS: Bounds = Bounds {
    stall: Duration::from_secs(120),
    base: Duration::from_secs(600),
    rate: 4 << 10,
};

/// No request is given more than this, whatever its size (a week: far
/// beyond any real transfer, and far from overflowing a clock).
const TOTAL_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

impl Bounds {
    /// The whole time a request moving `bytes` may take.
    fn total(&self, bytes: u64) -> Duration {
        let secs = bytes / self.rate.max(1);
        self.base
            .saturating_add(Duration::from_secs(secs))
            .min(TOTAL_MAX)
    }

    /// What a timeout of ureq means, in words.
    fn explain(&self, t: ureq::Timeout) -> String {
        match t {
            ureq::Timeout::PerRead | ureq::Timeout::PerWrite => format!(
                "the server stalled: nothing moved for {:?} (timeout)",
                self.stall
            ),
            ureq::Timeout::Global => format!(
                "not done in the time allowed (slower than {} per second; timeout)",
                crate::human_bytes(self.rate)
            ),
            other => format!("timeout ({other})"),
        }
    }

    /// An I/O error from reading an answer, in words.
    fn io_message(&self, e: &io::Error) -> String {
        match e.get_ref().and_then(|x| x.downcast_ref::<ureq::Error>()) {
            Some(ureq::Error::Timeout(t)) => self.explain(*t),
            _ => e.to_string(),
        }
    }
}

pub struct S3Store {
    bucket: Bucket,
    credentials: Option<Credentials>,
    prefix: String,
    endpoint: String,
    agent: ureq::Agent,
    stats: Stats,
    /// Tries per request for transient failures.
    attempts: u32,
    /// Time bounds of every request (`BOUNDS`; shorter in tests).
    bounds: Bounds,
    /// The lock every PUT carries (`set_lock`).
    lock: RwLock<Option<Lock>>,
    /// The version id S3 gave each blob put by this process, until taken
    /// (`take_put_version`).
    put_versions: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// Headers signed with a request and sent with it (lower-case names).
type Headers = Vec<(&'static str, String)>;

/// Why one attempt failed, and whether another attempt may succeed.
struct Failure {
    retry: bool,
    not_found: bool,
    cause: StoreCause,
}

impl Failure {
    /// An answer refused, not worth asking again.
    fn permanent(msg: String) -> Failure {
        Failure {
            retry: false,
            not_found: false,
            cause: StoreCause::Refused(msg),
        }
    }

    /// A redirect, never followed (nor asked again).
    fn redirect(msg: String) -> Failure {
        Failure {
            retry: false,
            not_found: false,
            cause: StoreCause::Redirect(msg),
        }
    }

    /// No answer, or a bad one: asked again.
    fn transient(msg: String) -> Failure {
        Failure {
            retry: true,
            not_found: false,
            cause: StoreCause::Transport(msg),
        }
    }
}

type Attempt<T> = std::result::Result<T, Failure>;

impl S3Store {
    pub fn open(cfg: &S3Config) -> Result<S3Store> {
        let endpoint = cfg
            .endpoint
            .parse()
            .map_err(|e| Error::Setup(format!("S3 endpoint `{}`: {e}", cfg.endpoint)))?;
        let bucket = Bucket::new(
            endpoint,
            UrlStyle::Path,
            cfg.bucket.clone(),
            cfg.region.clone(),
        )
        .map_err(|e| Error::Setup(format!("S3 endpoint `{}`: {e}", cfg.endpoint)))?;
        let credentials = match (&cfg.access_key_id, &cfg.secret_access_key) {
            (Some(k), Some(s)) => Some(Credentials::new(k.clone(), s.clone())),
            (None, None) => None,
            _ => {
                return Err(Error::Setup(
                    "S3 credentials need both access_key_id and secret_access_key \
                     (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                        .into(),
                ));
            }
        };
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
        if let Some(ca) = &cfg.ca_file {
            let roots = load_roots(ca)?;
            agent = agent.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
        }
        let agent: ureq::Agent = agent.build().into();
        Ok(S3Store {
            bucket,
            credentials,
            prefix: cfg.prefix.clone(),
            endpoint: cfg.endpoint.clone(),
            agent,
            stats: Stats::default(),
            attempts: ATTEMPTS,
            bounds: BOUNDS,
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

    /// Run `attempt` until it succeeds, fails permanently, or runs out of tries.
    fn retry<T>(
        &self,
        op: &'static str,
        key: &str,
        mut attempt: impl FnMut() -> Attempt<T>,
    ) -> Result<T> {
        let attempts = self.attempts.max(1);
        let mut delay = Duration::from_millis(200);
        for n in 1..=attempts {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(f) if f.not_found => return Err(Error::NotFound { key: key.into() }),
                Err(f) if !f.retry || n == attempts => {
                    return Err(Error::Store {
                        op,
                        key: key.to_string(),
                        cause: f.cause,
                        attempts: f.retry.then_some(n),
                    });
                }
                Err(_) => {
                    std::thread::sleep(jitter(delay));
                    delay = (delay * 2).min(Duration::from_secs(8));
                }
            }
        }
        unreachable!("the last attempt returns")
    }

    fn sign<'b>(&self, action: &impl S3Action<'b>) -> String {
        action.sign(SIGN_FOR).to_string()
    }

    /// A presigned PUT of `full` with `headers` signed.
    fn sign_put(&self, full: &str, headers: &Headers) -> String {
        let mut action = self.bucket.put_object(self.credentials.as_ref(), full);
        for (name, value) in headers {
            action.headers_mut().insert(*name, value.as_str());
        }
        self.sign(&action)
    }

    /// A presigned request of `method` to object `full` (the bucket itself
    /// when None) with `query` (sorted by name; an empty value is a name
    /// alone, as `?restore`) and `headers` signed, for what rusty-s3 has no
    /// action for.
    fn sign_url(
        &self,
        method: rusty_s3::Method,
        full: Option<&str>,
        query: &[(&str, &str)],
        headers: &Headers,
    ) -> String {
        let mut url = self.bucket.object_url(full.unwrap_or(""));
        let mut headers: Vec<(&str, &str)> =
            headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        headers.sort();
        match &self.credentials {
            Some(c) => rusty_s3::signing::sign(
                &jiff::Timestamp::now(),
                method,
                url,
                c.key(),
                c.secret(),
                c.token(),
                self.bucket.region(),
                SIGN_FOR.as_secs(),
                query.iter().copied(),
                headers.into_iter(),
            )
            .to_string(),
            None => {
                let q: Vec<String> = query
                    .iter()
                    .map(|(k, v)| {
                        if v.is_empty() {
                            k.to_string()
                        } else {
                            format!("{k}={}", query_escape(v))
                        }
                    })
                    .collect();
                if !q.is_empty() {
                    url.set_query(Some(&q.join("&")));
                }
                url.to_string()
            }
        }
    }

    /// The headers of a PUT of an object whose SHA-256 is `sha256`, in
    /// `class`, with the lock when one is set.
    fn headers_for(&self, sha256: [u8; 32], class: StorageClass) -> Headers {
        let mut h = put_headers(sha256, class);
        if let Some(lock) = *self.lock.read().expect("lock setting poisoned by a panic") {
            h.extend(lock.headers());
        }
        h
    }

    /// A bucket configuration (`?versioning`, `?object-lock`): its XML.
    fn bucket_config(&self, query: &'static str) -> Result<String> {
        let what = format!("{}?{query}", self.bucket.name());
        self.retry("GET", &what, || {
            let url = self.sign_url(rusty_s3::Method::Get, None, &[(query, "")], &Vec::new());
            let body = self.get_bounded(&url, Op::Config, 64 << 10)?;
            Ok(String::from_utf8_lossy(&body).into_owned())
        })
    }

    /// One GET of a small answer (a listing page, a bucket setting) at
    /// `url`: its body, at most `limit` bytes, counted as one `op`.
    fn get_bounded(&self, url: &str, op: Op, limit: u64) -> Attempt<Vec<u8>> {
        let mut resp = self
            .bounded(self.agent.get(url), Some(limit))
            .call()
            .map_err(|e| {
                self.stats.count(op, 0, 0);
                self.transport(e)
            })?;
        if !resp.status().is_success() {
            self.stats.count(op, 0, 0);
            return Err(self.status_failure(&mut resp));
        }
        let body = self.read_body(resp, None, limit);
        let got = body.as_ref().map_or(0, |b| b.len() as u64);
        self.stats.count(op, 0, got);
        body
    }

    /// `get` of the current version, or of `version`.
    fn get_at(&self, key: &str, version: Option<&str>, limit: u64) -> Result<Vec<u8>> {
        let full = self.checked("GET", key)?;
        let mut large = None;
        let r = self.retry("GET", &full, || {
            let mut action = self.bucket.get_object(self.credentials.as_ref(), &full);
            if let Some(v) = version {
                action.query_mut().insert("versionId", v);
            }
            let url = self.sign(&action);
            let mut resp = self
                .bounded(self.agent.get(&url), Some(limit))
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
        let body = self.retry("GET", &full, || {
            let mut action = self.bucket.get_object(self.credentials.as_ref(), &full);
            if let Some(v) = version {
                action.query_mut().insert("versionId", v);
            }
            let url = self.sign(&action);
            let resp = self
                .bounded(self.agent.get(&url).header("Range", &range), None)
                .call();
            self.stats.count(Op::Get, 0, 0);
            let mut resp = resp.map_err(|e| self.transport(e))?;
            match resp.status().as_u16() {
                206 => Ok(resp.into_body().into_reader()),
                200 => Err(Failure::transient(format!(
                    "asked for {range}, got the whole object (HTTP 200): Range ignored"
                ))),
                _ => Err(self.status_failure(&mut resp)),
            }
        })?;
        Ok(Box::new(super::Exact {
            inner: Paced::new(body, self.bounds, self.bounds.total(len)),
            remaining: len,
            received: &self.stats.bytes_received,
        }))
    }

    /// PUT of a small object from memory; with `only_new`, only if there is
    /// no object at `key` yet (`If-None-Match: *`): false when there was.
    fn put_small(&self, key: &str, data: &[u8], only_new: bool) -> Result<bool> {
        let full = self.checked("PUT", key)?;
        let headers = self.headers_for(Sha256::digest(data).into(), StorageClass::Standard);
        self.retry("PUT", &full, || {
            let url = self.sign_put(&full, &headers);
            self.stats.count(Op::Put, data.len() as u64, 0);
            let mut req = self.bounded(self.agent.put(&url), Some(data.len() as u64));
            for (name, value) in &headers {
                req = req.header(*name, value);
            }
            if only_new {
                req = req.header("If-None-Match", "*");
            }
            let mut resp = req.send(data).map_err(|e| self.transport(e))?;
            match resp.status().as_u16() {
                // Taken (by another host, or by this request's own first
                // attempt: the caller reads what is there).
                412 if only_new => Ok(false),
                s if (200..300).contains(&s) => Ok(true),
                _ => Err(self.status_failure(&mut resp)),
            }
        })
    }

    /// `req` with the stall bound on every read and write, and, when the
    /// request moves at most `bytes` (sent and received), a bound on the
    /// whole of it. Without one (`open_range`, whose reader is handed to a
    /// caller that may pause between reads), the body is read through
    /// `Paced`.
    fn bounded<B>(
        &self,
        req: ureq::RequestBuilder<B>,
        bytes: Option<u64>,
    ) -> ureq::RequestBuilder<B> {
        req.config()
            .timeout_per_read(Some(self.bounds.stall))
            .timeout_per_write(Some(self.bounds.stall))
            .timeout_global(bytes.map(|n| self.bounds.total(n)))
            .build()
    }

    fn transport(&self, e: ureq::Error) -> Failure {
        if let ureq::Error::Timeout(t) = e {
            return Failure::transient(self.bounds.explain(t));
        }
        // A certificate the roots do not trust will not be trusted next
        // time. (rustls reports a failed handshake as an I/O error that
        // carries its own error.)
        let tls = match &e {
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) => true,
            ureq::Error::Io(io) => io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()),
            _ => false,
        };
        let msg = e.to_string();
        Failure {
            retry: !tls,
            not_found: false,
            cause: if tls {
                StoreCause::Tls(msg)
            } else {
                StoreCause::Transport(msg)
            },
        }
    }

    /// Turn a non-success answer into a failure with S3's error code.
    fn status_failure(&self, resp: &mut ureq::http::Response<ureq::Body>) -> Failure {
        if resp.status().is_redirection() {
            return self.redirect(resp);
        }
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        // What fails here only leaves the code out of the message.
        let _ = Paced::new(resp.body_mut().as_reader(), self.bounds, self.bounds.base)
            .take(64 * 1024)
            .read_to_end(&mut body);
        let body = String::from_utf8_lossy(&body);
        let code = between(&body, "<Code>", "</Code>").map_or(String::new(), shown);
        let message = between(&body, "<Message>", "</Message>").map_or(String::new(), shown);
        Failure {
            // 501 Not Implemented will not be implemented by asking again.
            retry: status == 429 || (status >= 500 && status != 501),
            not_found: status == 404,
            cause: StoreCause::Http {
                status,
                code,
                message,
            },
        }
    }

    /// A 3xx: never followed (the endpoint or region is wrong, or the
    /// server wants the request elsewhere), and not retried.
    fn redirect(&self, resp: &ureq::http::Response<ureq::Body>) -> Failure {
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        // Without its query: that may be vaultik's own presigned one,
        // signature included, which has no place in a log.
        let to = match header("location") {
            None => " without a Location".into(),
            Some(l) => match l.split_once('?') {
                Some((l, _)) => format!(" to {}?...", shown(l)),
                None => format!(" to {}", shown(&l)),
            },
        };
        let hint = match header("x-amz-bucket-region") {
            Some(r) => format!("S3 says the bucket is in {}", shown(&r)),
            None => "the bucket may be in another region".into(),
        };
        Failure::redirect(format!(
            "the endpoint {} answered with a redirect (HTTP {status}{to}); vaultik never \
             follows one: check `endpoint` and `region` (region is {}; {hint})",
            self.endpoint,
            self.bucket.region()
        ))
    }

    /// The body of `resp`, at most `limit` bytes (a longer one is an error),
    /// and exactly `expect` bytes when the answer said so. The length the
    /// server claims is never allocated up front.
    fn read_body(
        &self,
        resp: ureq::http::Response<ureq::Body>,
        expect: Option<u64>,
        limit: u64,
    ) -> Attempt<Vec<u8>> {
        let buf = super::read_bounded(resp.into_body().into_reader(), limit)
            .map_err(|e| {
                Failure::transient(format!(
                    "reading the answer: {}",
                    self.bounds.io_message(&e)
                ))
            })?
            .ok_or_else(|| {
                Failure::permanent(format!("answer longer than {limit} bytes; refused"))
            })?;
        let got = buf.len() as u64;
        if let Some(n) = expect {
            if got != n {
                return Err(Failure::transient(format!(
                    "short answer: {got} of {n} bytes"
                )));
            }
        }
        Ok(buf)
    }
}

/// A name the server chose, for a message: control characters escaped,
/// at most `SHOWN_MAX` characters.
fn shown(s: &str) -> String {
    let mut t: String = s.chars().take(SHOWN_MAX).collect();
    if t.len() < s.len() {
        t.push_str("...");
    }
    crate::error::one_line(t)
}

/// An answer's body read within `budget` of time spent waiting for it. The
/// time the caller spends between reads does not count (a restore writing
/// to a slow disk is not the server being slow); each read is itself
/// bounded by the stall bound (ureq's per-read timeout).
struct Paced<R> {
    inner: R,
    bounds: Bounds,
    budget: Duration,
    waited: Duration,
}

impl<R> Paced<R> {
    fn new(inner: R, bounds: Bounds, budget: Duration) -> Paced<R> {
        Paced {
            inner,
            bounds,
            budget,
            waited: Duration::ZERO,
        }
    }
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.waited > self.budget {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                self.bounds.explain(ureq::Timeout::Global),
            ));
        }
        let t = Instant::now();
        let r = self.inner.read(out);
        self.waited = self.waited.saturating_add(t.elapsed());
        r.map_err(
            |e| match e.get_ref().and_then(|x| x.downcast_ref::<ureq::Error>()) {
                Some(ureq::Error::Timeout(t)) => {
                    io::Error::new(io::ErrorKind::TimedOut, self.bounds.explain(*t))
                }
                _ => e,
            },
        )
    }
}

/// The certificates of a PEM file, as the only roots to trust.
pub(crate) fn load_roots(path: &Path) -> Result<ureq::tls::RootCerts> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::Setup(format!("ca_file {}: {e}", path.display())))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::Setup(format!("ca_file {}: {e}", path.display())));
            }
        }
    }
    if certs.is_empty() {
        return Err(Error::Setup(format!(
            "ca_file {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

/// Between half and all of `d`, so that parallel clients spread out.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let frac = 0.5 + (nanos % 1000) as f64 / 2000.0;
    d.mul_f64(frac)
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let end = s[start..].find(close)? + start;
    Some(&s[start..end])
}

/// Why a listing is refused.
/// The headers of a PUT: the SHA-256 of the body (the server checks it
/// and keeps it; some servers, moto among them, keep it only when the
/// algorithm is named too, as the AWS SDKs do) and, past STANDARD, the
/// storage class.
fn put_headers(sha256: [u8; 32], class: StorageClass) -> Headers {
    let mut h = vec![
        ("x-amz-checksum-sha256", base64(&sha256)),
        ("x-amz-sdk-checksum-algorithm", "SHA256".to_string()),
    ];
    if class != StorageClass::Standard {
        h.push(("x-amz-storage-class", class.name().to_string()));
    }
    h
}

/// The SHA-256 of the file at `path` (a run's own temporary file).
fn file_sha256(path: &Path) -> Result<[u8; 32]> {
    let mut f = File::open(path).map_err(|e| Error::Io {
        op: "open",
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(h.finalize().into()),
            Ok(n) => h.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::Io {
                    op: "read",
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        }
    }
}

/// What a HEAD's headers say: the size (required), the class (absent:
/// STANDARD), where a thaw stands, the stored SHA-256. The server chose
/// every byte: values that cannot be read are errors (the size) or left
/// out (a checksum that is not 32 bytes of base64 is none).
fn object_meta(h: &ureq::http::HeaderMap) -> std::result::Result<ObjectMeta, String> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let len = h.get("content-length");
    let size = get("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| match len {
            None => "answer without a Content-Length".to_string(),
            Some(v) => format!(
                "answer with an unreadable Content-Length `{}`",
                shown(&String::from_utf8_lossy(v.as_bytes()))
            ),
        })?;
    let class = StorageClass::from_server(get("x-amz-storage-class"));
    let archived = matches!(
        get("x-amz-archive-status"),
        Some("ARCHIVE_ACCESS" | "DEEP_ARCHIVE_ACCESS")
    );
    let thaw = match get("x-amz-restore") {
        Some(r) if r.contains("ongoing-request=\"true\"") => ThawState::Ongoing,
        Some(r) if r.contains("ongoing-request=\"false\"") => ThawState::Thawed,
        _ if class.is_cold() || archived => ThawState::Frozen,
        _ => ThawState::NotNeeded,
    };
    let sha256 = get("x-amz-checksum-sha256")
        .and_then(unbase64)
        .and_then(|b| <[u8; 32]>::try_from(b).ok());
    let locked_until = get("x-amz-object-lock-retain-until-date").and_then(crate::time::parse_s3);
    Ok(ObjectMeta {
        size,
        class,
        thaw,
        sha256,
        locked_until,
    })
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (S3's checksum headers).
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The bytes of standard base64 with padding, or None.
pub fn unbase64(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if s.len() % 4 != 0 || s.len() > 4096 {
        return None;
    }
    let val = |c: u8| B64.iter().position(|b| *b == c).map(|v| v as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, q) in s.chunks(4).enumerate() {
        let last = i + 1 == s.len() / 4;
        let pad = q.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

fn list_error(prefix: &str, msg: String) -> Error {
    Error::store("LIST", prefix, msg)
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
        // sum (`verify --checksums`). Only blobs take the configured class.
        let (sha, class) = match crate::layout::parse(key) {
            Some(crate::layout::Key::Blob(hash)) => (hash, class),
            _ => (file_sha256(path)?, StorageClass::Standard),
        };
        let headers = self.headers_for(sha, class);
        self.retry("PUT", &full, || {
            let file = File::open(path)
                .map_err(|e| Failure::permanent(format!("cannot open {}: {e}", path.display())))?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let url = self.sign_put(&full, &headers);
            self.stats.count(Op::Put, len, 0);
            let mut req = self.bounded(self.agent.put(&url), Some(len));
            for (name, value) in &headers {
                req = req.header(*name, value);
            }
            // ureq sends a File with its length as Content-Length (never chunked).
            let mut resp = req.send(&file).map_err(|e| self.transport(e))?;
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
            let mut action = self.bucket.head_object(self.credentials.as_ref(), &full);
            if checksum {
                action
                    .headers_mut()
                    .insert("x-amz-checksum-mode", "ENABLED");
            }
            let url = self.sign(&action);
            self.stats.count(Op::Head, 0, 0);
            let mut req = self.bounded(self.agent.head(&url), Some(0));
            if checksum {
                req = req.header("x-amz-checksum-mode", "ENABLED");
            }
            let mut resp = req.call().map_err(|e| self.transport(e))?;
            if !resp.status().is_success() {
                return Err(self.status_failure(&mut resp));
            }
            object_meta(resp.headers()).map_err(Failure::permanent)
        });
        match r {
            Ok(m) => Ok(Some(m)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn has_classes(&self) -> bool {
        true
    }

    fn keeps_checksums(&self) -> bool {
        true
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
            let url = self.sign_url(
                rusty_s3::Method::Post,
                Some(&full),
                &[("restore", "")],
                &Vec::new(),
            );
            self.stats.count(Op::Restore, body.len() as u64, 0);
            let mut resp = self
                .bounded(self.agent.post(&url), Some(body.len() as u64))
                .header("Content-Type", "application/xml")
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

    /// Pages are followed while the server says there are more. A page
    /// that repeats a token, a key at or before the last one (S3 lists in
    /// key order, without repeats), or a key outside the prefix is a server
    /// that lies or loops: the listing is refused rather than patched up.
    fn list(&self, prefix: &str) -> Result<Listing> {
        let full_prefix = self.full_key(prefix);
        let mut out = Listing::default();
        let mut token: Option<String> = None;
        // Digests of the tokens followed (a token may be megabytes).
        let mut tokens: HashSet<[u8; 32]> = HashSet::new();
        let mut last: Option<String> = None;
        for page_no in 1.. {
            if page_no > LIST_PAGES_MAX {
                return Err(list_error(
                    &full_prefix,
                    format!(
                        "more than {LIST_PAGES_MAX} pages; refusing a listing that does not end"
                    ),
                ));
            }
            let page = self.retry("LIST", &full_prefix, || {
                let mut action = ListObjectsV2::new(&self.bucket, self.credentials.as_ref());
                action.with_prefix(full_prefix.as_str());
                if let Some(t) = &token {
                    action.with_continuation_token(t.as_str());
                }
                let url = self.sign(&action);
                let body = self.get_bounded(&url, Op::List, LIST_PAGE_MAX)?;
                let text = String::from_utf8_lossy(&body);
                // Said before parsing, which would only report a missing field.
                let token = between(&text, "<NextContinuationToken>", "</NextContinuationToken>");
                if text.contains("<IsTruncated>true</IsTruncated>")
                    && token.is_none_or(|t| t.trim().is_empty())
                {
                    return Err(Failure::permanent(format!(
                        "page {page_no} says the listing goes on (IsTruncated) but gives \
                         no NextContinuationToken (a server without ListObjectsV2?); \
                         refusing an incomplete listing"
                    )));
                }
                ListObjectsV2::parse_response(&text).map_err(|e| {
                    Failure::permanent(format!("unreadable listing: {}", shown(&e.to_string())))
                })
            })?;
            for obj in page.contents {
                if let Some(l) = last.as_deref().filter(|l| obj.key.as_str() <= *l) {
                    return Err(list_error(
                        &full_prefix,
                        format!(
                            "page {page_no} lists {} after {}: keys out of order or repeated; \
                             refusing the listing",
                            shown(&obj.key),
                            shown(l)
                        ),
                    ));
                }
                if !obj.key.starts_with(&full_prefix) {
                    return Err(list_error(
                        &full_prefix,
                        format!(
                            "page {page_no} lists {}, which is not under the prefix asked for; \
                             refusing the listing",
                            shown(&obj.key)
                        ),
                    ));
                }
                let key = obj.key[self.prefix.len()..].to_string();
                last = Some(obj.key);
                out.add(
                    key,
                    obj.size.unwrap_or(0),
                    obj.last_modified
                        .as_deref()
                        .and_then(crate::time::parse_s3)
                        .unwrap_or(0),
                    StorageClass::from_server(obj.storage_class.as_deref()),
                );
                if out.objects.len() > super::LIST_MAX {
                    return Err(super::too_many(&full_prefix));
                }
            }
            // rusty-s3 gives a token only for a truncated page, never empty.
            let Some(t) = page.next_continuation_token else {
                break;
            };
            if !tokens.insert(Sha256::digest(t.as_bytes()).into()) {
                return Err(list_error(
                    &full_prefix,
                    format!(
                        "page {page_no} gives a continuation token an earlier page gave; \
                         refusing a listing that loops"
                    ),
                ));
            }
            token = Some(t);
        }
        Ok(out.sorted())
    }

    fn delete(&self, key: &str) -> Result<()> {
        let full = self.checked("DELETE", key)?;
        let r = self.retry("DELETE", &full, || {
            let url = self.sign(&self.bucket.delete_object(self.credentials.as_ref(), &full));
            self.stats.count(Op::Delete, 0, 0);
            let mut resp = self
                .bounded(self.agent.delete(&url), Some(0))
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
            let what = format!("{} objects from {}", ids.len(), self.full_key(&batch[0]));
            self.retry("DELETE", &what, || {
                let mut action =
                    DeleteObjects::new(&self.bucket, self.credentials.as_ref(), ids.iter());
                action.set_quiet(true);
                let url = self.sign(&action);
                let (body, md5) = action.body_with_md5();
                self.stats.count(Op::Delete, body.len() as u64, 0);
                let moved = (body.len() as u64).saturating_add(LIST_PAGE_MAX);
                let mut resp = self
                    .bounded(self.agent.post(&url), Some(moved))
                    .header("Content-MD5", &md5)
                    .header("Content-Type", "application/xml")
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

    /// Pages are followed by key and version id markers; a page that
    /// repeats a marker, or an entry outside the prefix, refuses the
    /// listing, as `list` does. A server without ListObjectVersions (HTTP
    /// 501, s3s-fs) keeps no versions: None.
    fn list_versions(&self, prefix: &str) -> Result<Option<Vec<Version>>> {
        let full_prefix = self.full_key(prefix);
        let mut out: Vec<Version> = Vec::new();
        let mut marker: Option<(String, String)> = None;
        let mut seen: HashSet<[u8; 32]> = HashSet::new();
        for page_no in 1.. {
            if page_no > LIST_PAGES_MAX {
                return Err(list_error(
                    &full_prefix,
                    format!(
                        "more than {LIST_PAGES_MAX} pages of versions; refusing a listing that \
                         does not end"
                    ),
                ));
            }
            let page = self.retry("LIST", &full_prefix, || {
                let mut query = vec![("prefix", full_prefix.as_str())];
                if let Some((k, v)) = &marker {
                    query.push(("key-marker", k.as_str()));
                    if !v.is_empty() {
                        query.push(("version-id-marker", v.as_str()));
                    }
                }
                query.push(("versions", ""));
                query.sort();
                let url = self.sign_url(rusty_s3::Method::Get, None, &query, &Vec::new());
                let body = self.get_bounded(&url, Op::List, LIST_PAGE_MAX)?;
                versions::parse_page(&String::from_utf8_lossy(&body)).map_err(|e| {
                    Failure::permanent(format!("unreadable version listing: {}", shown(&e)))
                })
            });
            let page = match page {
                Ok(p) => p,
                Err(Error::Store {
                    cause: StoreCause::Http { status: 501, .. },
                    ..
                }) if page_no == 1 => return Ok(None),
                Err(e) => return Err(e),
            };
            for mut v in page.versions {
                if !v.key.starts_with(&full_prefix) {
                    return Err(list_error(
                        &full_prefix,
                        format!(
                            "page {page_no} lists a version of {}, which is not under the prefix \
                             asked for; refusing the listing",
                            shown(&v.key)
                        ),
                    ));
                }
                v.key = v.key[self.prefix.len()..].to_string();
                if crate::layout::parse(&v.key).is_some() {
                    out.push(v);
                }
                if out.len() > super::LIST_MAX {
                    return Err(super::too_many(&full_prefix));
                }
            }
            let Some(next) = page.next else { break };
            let digest: [u8; 32] = Sha256::digest(format!("{}\0{}", next.0, next.1)).into();
            if !seen.insert(digest) {
                return Err(list_error(
                    &full_prefix,
                    format!(
                        "page {page_no} gives markers an earlier page gave; refusing a listing \
                         that loops"
                    ),
                ));
            }
            marker = Some(next);
        }
        Ok(Some(out))
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
        match self.bucket_config("versioning") {
            Ok(x) => Ok(matches!(
                between(&x, "<Status>", "</Status>").map(str::trim),
                Some("Enabled" | "Suspended")
            )),
            // A server without versioning (s3s-fs).
            Err(Error::Store {
                cause: StoreCause::Http { status: 501, .. },
                ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn object_lock_enabled(&self) -> Result<bool> {
        match self.bucket_config("object-lock") {
            Ok(x) => Ok(
                between(&x, "<ObjectLockEnabled>", "</ObjectLockEnabled>").map(str::trim)
                    == Some("Enabled"),
            ),
            Err(Error::Store {
                cause: StoreCause::Http { status, code, .. },
                ..
            }) if status == 501 || code == "ObjectLockConfigurationNotFoundError" => Ok(false),
            // S3 answers a bucket without Object Lock with a 404
            // (ObjectLockConfigurationNotFoundError).
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn check_lock_setup(&self) -> Result<()> {
        let bucket = self.bucket.name();
        let versioning = self.bucket_config("versioning")?;
        if between(&versioning, "<Status>", "</Status>").map(str::trim) != Some("Enabled") {
            return Err(Error::Setup(format!(
                "object_lock is set, but the bucket {bucket} does not have versioning enabled: \
                 Object Lock needs a bucket created with it (see \"Ransomware-proof setup\" in \
                 README.md)"
            )));
        }
        let enabled = self.object_lock_enabled()?;
        if !enabled {
            return Err(Error::Setup(format!(
                "object_lock is set, but the bucket {bucket} does not have Object Lock enabled: \
                 it must be created with Object Lock (see \"Ransomware-proof setup\" in \
                 README.md)"
            )));
        }
        Ok(())
    }

    fn take_put_version(&self, key: &str) -> Option<String> {
        self.put_versions
            .lock()
            .expect("put versions poisoned by a panic")
            .remove(key)
    }

    fn extend_lock(&self, key: &str, version: Option<&str>, lock: Lock) -> Result<()> {
        let full = self.checked("RETENTION", key)?;
        let body = lock.retention_xml();
        let headers: Headers = vec![
            (
                "x-amz-checksum-sha256",
                base64(&Sha256::digest(body.as_bytes())),
            ),
            ("x-amz-sdk-checksum-algorithm", "SHA256".to_string()),
        ];
        self.retry("RETENTION", &full, || {
            let mut query = vec![("retention", "")];
            if let Some(v) = version {
                query.push(("versionId", v));
            }
            let url = self.sign_url(rusty_s3::Method::Put, Some(&full), &query, &headers);
            self.stats.count(Op::Retention, body.len() as u64, 0);
            let mut req = self
                .bounded(self.agent.put(&url), Some(body.len() as u64))
                .header("Content-Type", "application/xml");
            for (name, value) in &headers {
                req = req.header(*name, value);
            }
            let mut resp = req.send(body.as_bytes()).map_err(|e| self.transport(e))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(self.status_failure(&mut resp))
            }
        })
    }
}

/// A query value, percent-encoded (unsigned requests only: signing
/// encodes its own).
fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// One scripted answer: raw status line + headers + body, then close.
    struct Answer {
        status: &'static str,
        headers: Vec<String>,
        body: Vec<u8>,
        /// Claim this Content-Length (to send a truncated body).
        claim: Option<usize>,
        /// Send no Content-Length: the body ends with the connection (or
        /// as `headers` say: chunked).
        no_length: bool,
        /// After the body, hold the connection open without a word.
        hold: bool,
        /// Read the request's head only, then hold the connection open
        /// without answering or reading its body.
        silent: bool,
        /// Send the body a byte at a time, this far apart.
        trickle: Option<Duration>,
        /// Send the body again and again, for as long as the client reads.
        endless: bool,
    }

    fn answer(status: &'static str, body: &[u8]) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.to_vec(),
            claim: None,
            no_length: false,
            hold: false,
            silent: false,
            trickle: None,
            endless: false,
        }
    }

    /// Keep `c` open, silent, for longer than any test runs.
    fn hold(c: std::net::TcpStream) {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            drop(c);
        });
    }

    /// A fake S3 on 127.0.0.1 answering requests in order; records the
    /// request heads it saw. Its store tries 3 times and gives up on a
    /// stall of 5 s (tests of stalls shorten it).
    fn fake(answers: Vec<Answer>) -> (S3Store, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for a in answers {
                let (mut c, _) = l.accept().unwrap();
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut head = String::new();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                }
                seen2.lock().unwrap().push(head);
                if a.silent {
                    hold(c);
                    continue;
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let mut resp = format!("HTTP/1.1 {}\r\nConnection: close\r\n", a.status);
                if !a.no_length {
                    let n = a.claim.unwrap_or(a.body.len());
                    resp.push_str(&format!("Content-Length: {n}\r\n"));
                }
                for h in &a.headers {
                    resp.push_str(h);
                    resp.push_str("\r\n");
                }
                resp.push_str("\r\n");
                // Written apart, so that a slow answer does not hold up
                // the next request.
                std::thread::spawn(move || {
                    let _ = c.write_all(resp.as_bytes());
                    match a.trickle {
                        None if a.endless => while c.write_all(&a.body).is_ok() {},
                        None => {
                            let _ = c.write_all(&a.body);
                        }
                        Some(pause) => {
                            for b in &a.body {
                                if c.write_all(&[*b]).is_err() {
                                    return;
                                }
                                std::thread::sleep(pause);
                            }
                        }
                    }
                    if a.hold {
                        hold(c);
                    }
                });
            }
        });
        let mut store = S3Store::open(&S3Config {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "b".into(),
            prefix: "p/".into(),
            region: "us-east-1".into(),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ca_file: None,
            storage_class: StorageClass::Standard,
            ..Default::default()
        })
        .unwrap();
        store.attempts = 3;
        store.bounds = Bounds {
            stall: Duration::from_secs(5),
            base: Duration::from_secs(30),
            rate: 1 << 20,
        };
        (store, seen)
    }

    /// A key of the layout (every store operation refuses others).
    const K: &str = "metadata/h_n_2026-11-23T083015Z/manifest.json.zst";
    const K2: &str = "metadata/h_n_2026-11-23T083016Z/manifest.json.zst";
    const K3: &str = "metadata/h_n_2026-11-23T083017Z/manifest.json.zst";

    const NO_SUCH_KEY: &[u8] = b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>";

    #[test]
    fn transient_errors_are_retried() {
        let (s, seen) = fake(vec![
            answer("500 Internal Server Error", b""),
            answer("503 Slow Down", b""),
            answer("200 OK", b"hello"),
        ]);
        assert_eq!(s.get(K, 1 << 20).unwrap(), b"hello");
        assert_eq!(seen.lock().unwrap().len(), 3);
        assert_eq!(s.stats().snapshot()[1], 3, "every attempt is counted");
    }

    #[test]
    fn retries_are_bounded() {
        let (s, _) = fake(vec![
            answer("429 Too Many Requests", b""),
            answer("500 Internal Server Error", b""),
            answer("503 Service Unavailable", b""),
        ]);
        let e = s.get(K, 1 << 20).unwrap_err().to_string();
        assert!(
            e.contains("HTTP 503") && e.contains("after 3 attempts"),
            "{e}"
        );
        assert!(e.contains(&format!("p/{K}")), "names the key: {e}");
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let (s, seen) = fake(vec![Answer {
            body: b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>".to_vec(),
            ..answer("403 Forbidden", b"")
        }]);
        let e = s.get(K, 1 << 20).unwrap_err().to_string();
        assert!(e.contains("403 AccessDenied: no"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 1);
        let (s, _) = fake(vec![answer("404 Not Found", NO_SUCH_KEY)]);
        assert!(matches!(s.get(K, 1 << 20), Err(Error::NotFound { .. })));
        let (s, _) = fake(vec![answer("404 Not Found", b"")]);
        assert_eq!(s.head(K).unwrap(), None);
    }

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

    fn read_range(s: &S3Store, start: u64, len: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        s.open_range(K, start, len)?
            .read_to_end(&mut out)
            .map_err(|e| Error::store("GET", K, e.to_string()))?;
        Ok(out)
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
    fn puts_are_retried_and_always_carry_a_length() {
        let (s, seen) = fake(vec![
            answer("500 Internal Server Error", b""),
            answer("200 OK", b""),
        ]);
        s.put_bytes(K, b"data!").unwrap();
        let heads = seen.lock().unwrap();
        assert_eq!(heads.len(), 2);
        for h in heads.iter() {
            let h = h.to_ascii_lowercase();
            assert!(h.starts_with("put "), "{h}");
            assert!(h.contains("content-length: 5"), "{h}");
            assert!(!h.contains("transfer-encoding"), "{h}");
        }
    }

    /// Run one store operation, by name.
    fn run_op(s: &S3Store, op: &str) -> Result<()> {
        match op {
            "GET" => s.get(K, 1 << 20).map(drop),
            "range" => read_range(s, 0, 10).map(drop),
            "PUT" => s.put_bytes(K, b"data!"),
            "HEAD" => s.head(K).map(drop),
            "LIST" => s.list("").map(drop),
            "DELETE" => s.delete(K),
            "DELETE many" => s.delete_many(&[K.to_string()]),
            _ => unreachable!("{op}"),
        }
    }

    #[test]
    fn redirects_are_never_followed() {
        for op in [
            "GET",
            "range",
            "PUT",
            "HEAD",
            "LIST",
            "DELETE",
            "DELETE many",
        ] {
            // Where the server would send vaultik: it must see no connection.
            let elsewhere = TcpListener::bind("127.0.0.1:0").unwrap();
            elsewhere.set_nonblocking(true).unwrap();
            let to = format!("http://{}/b/p/{K}", elsewhere.local_addr().unwrap());
            let (s, seen) = fake(vec![Answer {
                headers: vec![format!("Location: {to}")],
                ..answer("301 Moved Permanently", b"")
            }]);
            let e = run_op(&s, op).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "the endpoint {} answered with a redirect (HTTP 301 to {to}); vaultik \
                     never follows one: check `endpoint` and `region` (region is us-east-1",
                    s.endpoint
                )),
                "{op}: {e}"
            );
            assert!(e.starts_with("store "), "{op}: {e}");
            assert!(!e.contains('\n'), "{op}: {e}");
            assert_eq!(seen.lock().unwrap().len(), 1, "{op}: not retried");
            let contacted = elsewhere.accept();
            assert!(
                matches!(&contacted, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "{op}: the redirect was followed: {contacted:?}"
            );
        }
    }

    #[test]
    fn a_redirect_is_reported_on_one_line_with_s3s_hint() {
        let (s, _) = fake(vec![Answer {
            headers: vec![
                "Location: https://evil.example/a\tb?X-Amz-Signature=0123abcd".into(),
                "x-amz-bucket-region: eu-west-3".into(),
            ],
            ..answer("307 Temporary Redirect", b"")
        }]);
        let e = s.get(K, 100).unwrap_err().to_string();
        assert!(
            e.contains("(HTTP 307 to https://evil.example/a\\tb?...)"),
            "control characters escaped: {e}"
        );
        assert!(e.contains("S3 says the bucket is in eu-west-3"), "{e}");
        assert!(!e.contains("0123abcd"), "no query shown: {e}");
        let (s, _) = fake(vec![answer("302 Found", b"")]);
        let e = s.head(K).unwrap_err().to_string();
        assert!(e.contains("(HTTP 302 without a Location)"), "{e}");
    }

    /// A ListObjectsV2 page holding `keys` (URL-encoded, as vaultik asks).
    fn page(keys: &[&str], truncated: bool, token: Option<&str>) -> Answer {
        let mut x = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
             <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Name>b</Name><Prefix>p/</Prefix><MaxKeys>1000</MaxKeys>\
             <EncodingType>url</EncodingType>",
        );
        x.push_str(&format!("<IsTruncated>{truncated}</IsTruncated>"));
        for k in keys {
            let enc: String = k
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'.' | b'-' | b'_' => {
                        char::from(b).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            x.push_str(&format!(
                "<Contents><Key>{enc}</Key><LastModified>2026-11-23T08:30:15.000Z\
                 </LastModified><Size>5</Size></Contents>"
            ));
        }
        if let Some(t) = token {
            x.push_str(&format!(
                "<NextContinuationToken>{t}</NextContinuationToken>"
            ));
        }
        x.push_str("</ListBucketResult>");
        answer("200 OK", x.as_bytes())
    }

    fn keys(l: &Listing) -> Vec<&str> {
        l.objects.iter().map(|o| o.key.as_str()).collect()
    }

    /// A ListObjectVersions page: (key, version id, size) entries, and the
    /// markers of the next page.
    fn versions_page(entries: &[(&str, &str, u64)], next: Option<(&str, &str)>) -> Answer {
        let mut x = format!(
            "<?xml version=\"1.0\"?><ListVersionsResult><IsTruncated>{}</IsTruncated>",
            next.is_some()
        );
        for (k, v, size) in entries {
            x.push_str(&format!(
                "<Version><Key>{k}</Key><VersionId>{v}</VersionId><IsLatest>true</IsLatest>\
                 <LastModified>2026-11-23T08:30:15.000Z</LastModified><Size>{size}</Size></Version>"
            ));
        }
        if let Some((k, v)) = next {
            x.push_str(&format!(
                "<NextKeyMarker>{k}</NextKeyMarker><NextVersionIdMarker>{v}</NextVersionIdMarker>"
            ));
        }
        x.push_str("</ListVersionsResult>");
        answer("200 OK", x.as_bytes())
    }

    #[test]
    fn version_listings_follow_markers_and_refuse_what_loops_or_strays() {
        let (k1, k2) = (format!("p/{K}"), format!("p/{K2}"));
        // Two pages, markers followed; keys outside the layout dropped.
        let (s, seen) = fake(vec![
            versions_page(
                &[(&k1, "v1", 5), ("p/metadata/junk", "v9", 1)],
                Some((&k1, "v1")),
            ),
            versions_page(&[(&k2, "v2", 7)], None),
        ]);
        let v = s.list_versions("metadata/").unwrap().unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].key.as_str(), v[1].size), (K, 7));
        let heads = seen.lock().unwrap();
        assert!(heads[0].contains("versions"), "{}", heads[0]);
        assert!(heads[1].contains("key-marker="), "{}", heads[1]);
        drop(heads);
        // Markers that repeat: refused, not followed forever.
        let (s, _) = fake(vec![
            versions_page(&[(&k1, "v1", 5)], Some((&k1, "v1"))),
            versions_page(&[], Some((&k1, "v1"))),
        ]);
        let e = s.list_versions("metadata/").unwrap_err().to_string();
        assert!(e.contains("loops"), "{e}");
        // A key outside the prefix asked for.
        let (s, _) = fake(vec![versions_page(&[("q/other", "v1", 5)], None)]);
        let e = s.list_versions("metadata/").unwrap_err().to_string();
        assert!(e.contains("not under the prefix"), "{e}");
        // Truncated XML, an oversized page: refused.
        let (s, _) = fake(vec![answer(
            "200 OK",
            b"<ListVersionsResult><Version><Key>p/x</Key><VersionId>v",
        )]);
        let e = s.list_versions("metadata/").unwrap_err().to_string();
        assert!(e.contains("unreadable version listing"), "{e}");
        let big = vec![b' '; LIST_PAGE_MAX as usize + 10];
        let (s, _) = fake(vec![answer("200 OK", &big)]);
        assert!(s.list_versions("metadata/").is_err());
        // A server without versions: None, asked once.
        let (s, seen) = fake(vec![answer(
            "501 Not Implemented",
            b"<Error><Code>NotImplemented</Code></Error>",
        )]);
        assert_eq!(s.list_versions("metadata/").unwrap(), None);
        assert_eq!(seen.lock().unwrap().len(), 1, "501 is not asked again");
    }

    #[test]
    fn lock_headers_and_bucket_settings_are_read_defensively() {
        let (s, _) = fake(vec![with_headers(&[
            "x-amz-object-lock-retain-until-date: 2026-12-05T15:50:44Z",
            "x-amz-object-lock-mode: COMPLIANCE",
        ])]);
        let m = s.stat(K, false).unwrap().unwrap();
        assert_eq!(
            m.locked_until,
            crate::time::parse_compact("2026-12-05T155044Z")
        );
        for bad in [
            "x-amz-object-lock-retain-until-date: soon",
            "x-amz-object-lock-retain-until-date: 99999-1",
        ] {
            let (s, _) = fake(vec![with_headers(&[bad])]);
            assert_eq!(
                s.stat(K, false).unwrap().unwrap().locked_until,
                None,
                "{bad}"
            );
        }
        // Versioning suspended, never enabled, or not answered.
        let (s, _) = fake(vec![answer(
            "200 OK",
            b"<VersioningConfiguration><Status>Suspended</Status></VersioningConfiguration>",
        )]);
        assert!(s.versioned().unwrap());
        let e = {
            let (s, _) = fake(vec![answer("200 OK", b"<VersioningConfiguration/>")]);
            s.check_lock_setup().unwrap_err().to_string()
        };
        assert!(e.contains("bucket b") && e.contains("versioning"), "{e}");
        let (s, _) = fake(vec![
            answer(
                "200 OK",
                b"<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>",
            ),
            answer(
                "404 Not Found",
                b"<Error><Code>ObjectLockConfigurationNotFoundError</Code></Error>",
            ),
        ]);
        let e = s.check_lock_setup().unwrap_err().to_string();
        assert!(e.contains("bucket b") && e.contains("Object Lock"), "{e}");
    }

    #[test]
    fn listings_follow_tokens_in_order() {
        let (s, seen) = fake(vec![
            page(&[&format!("p/{K}")], true, Some("t1")),
            page(&[&format!("p/{K2}")], true, Some("t2")),
            page(&[], true, Some("t3")),
            page(&[&format!("p/{K3}")], false, None),
        ]);
        let l = s.list("").unwrap();
        assert_eq!(keys(&l), [K, K2, K3]);
        assert_eq!(l.foreign_count, 0);
        let heads = seen.lock().unwrap();
        assert!(heads[1].contains("continuation-token=t1"), "{}", heads[1]);
        assert!(heads[3].contains("continuation-token=t3"), "{}", heads[3]);
    }

    #[test]
    fn a_listing_that_repeats_a_token_is_refused() {
        // Every page new keys, the same token: a server that would keep
        // vaultik listing forever.
        let (s, seen) = fake(vec![
            page(&[&format!("p/{K}")], true, Some("again")),
            page(&[&format!("p/{K2}")], true, Some("again")),
            page(&[&format!("p/{K3}")], true, Some("again")),
        ]);
        let e = s.list("").unwrap_err().to_string();
        assert!(
            e.contains("store LIST p/: page 2 gives a continuation token an earlier page gave"),
            "{e}"
        );
        assert_eq!(seen.lock().unwrap().len(), 2);
        // Empty pages going round two tokens.
        let (s, _) = fake(vec![
            page(&[], true, Some("a")),
            page(&[], true, Some("b")),
            page(&[], true, Some("a")),
            page(&[], true, Some("b")),
        ]);
        let e = s.list("").unwrap_err().to_string();
        assert!(e.contains("page 3 gives a continuation token"), "{e}");
    }

    #[test]
    fn listed_keys_that_repeat_or_go_back_are_refused() {
        let cases: Vec<Vec<Answer>> = vec![
            // Backwards within a page.
            vec![page(&[&format!("p/{K2}"), &format!("p/{K}")], false, None)],
            // Repeated within a page.
            vec![page(&[&format!("p/{K}"), &format!("p/{K}")], false, None)],
            // The same page again, under a new token.
            vec![
                page(&[&format!("p/{K}")], true, Some("t1")),
                page(&[&format!("p/{K}")], false, None),
            ],
            // Backwards across pages.
            vec![
                page(&[&format!("p/{K2}")], true, Some("t1")),
                page(&[&format!("p/{K}")], false, None),
            ],
        ];
        for (i, answers) in cases.into_iter().enumerate() {
            let (s, _) = fake(answers);
            let e = s.list("").unwrap_err().to_string();
            assert!(
                e.starts_with("store LIST p/: page ")
                    && e.contains(&format!("lists p/{K} after p/"))
                    && e.contains("keys out of order or repeated"),
                "case {i}: {e}"
            );
        }
    }

    #[test]
    fn a_truncated_page_without_a_token_is_refused() {
        for answers in [
            vec![page(&[&format!("p/{K}")], true, None)],
            vec![page(&[&format!("p/{K}")], true, Some(""))],
            vec![
                page(&[&format!("p/{K}")], true, Some("t1")),
                page(&[&format!("p/{K2}")], true, None),
            ],
        ] {
            let pages = answers.len();
            let (s, _) = fake(answers);
            let e = s.list("").unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "store LIST p/: page {pages} says the listing goes on (IsTruncated) but \
                     gives no NextContinuationToken"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn listed_keys_outside_the_prefix_are_refused() {
        let (s, _) = fake(vec![page(&[K2, &format!("p/{K}")], false, None)]);
        let e = s.list("").unwrap_err().to_string();
        assert!(
            e.contains(&format!("lists {K2}, which is not under the prefix")),
            "{e}"
        );
        // Under the store's prefix but not under the one listed.
        let (s, _) = fake(vec![page(&[&format!("p/{K}")], false, None)]);
        let e = s.list("blobs/").unwrap_err().to_string();
        assert!(
            e.contains("store LIST p/blobs/: page 1 lists p/metadata/"),
            "{e}"
        );
    }

    #[test]
    fn foreign_keys_are_listed_apart() {
        // A key the URL library would turn into K if it were ever used in a
        // request: `..` segments are resolved.
        let dotted = "blobs/../metadata/h_n_2026-11-23T083015Z/manifest.json.zst";
        let (s, seen) = fake(vec![page(
            &{
                let mut v = vec![
                    format!("p/{K}"),
                    format!("p/{dotted}"),
                    "p/host1/../x".into(),
                    "p/blobs/../../etc/passwd".into(),
                    "p/metadata/h_n_2026-11-23T083015Z\u{1b}[2J/db.zst.age".into(),
                    "p/gc/pending/x\n.json".into(),
                ];
                v.sort();
                v
            }
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
            false,
            None,
        )]);
        let url = s.bucket.object_url(&format!("p/{dotted}"));
        assert_eq!(url.path(), format!("/b/p/{K}"), "normalised");
        let l = s.list("").unwrap();
        assert_eq!(keys(&l), [K]);
        assert_eq!(l.foreign_count, 5);
        let mut want = vec![
            dotted.to_string(),
            "host1/../x".into(),
            "blobs/../../etc/passwd".into(),
            "metadata/h_n_2026-11-23T083015Z\\u{1b}[2J/db.zst.age".into(),
            "gc/pending/x\\n.json".into(),
        ];
        want.sort();
        assert_eq!(l.foreign, want);
        // And none is ever asked for.
        for k in [dotted, "host1/../x", "blobs/../../etc/passwd"] {
            assert!(s.get(k, 100).is_err());
            assert!(s.head(k).is_err());
            assert!(s.delete(k).is_err());
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "no request for a foreign key"
        );
    }

    #[test]
    fn a_content_length_over_the_limit_is_refused_unread() {
        let (s, seen) = fake(vec![Answer {
            claim: Some(1 << 40),
            hold: true,
            ..answer("200 OK", &[7; 64 << 10])
        }]);
        let t = Instant::now();
        let e = s.get(K, 1000).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains(&format!("{} bytes, more than", 1u64 << 40)),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert_eq!(s.stats.snapshot()[6], 0, "not a byte read");
        assert_eq!(seen.lock().unwrap().len(), 1, "not retried");
    }

    #[test]
    fn a_body_longer_than_its_limit_is_refused() {
        let long = vec![b'x'; 5000];
        // No Content-Length: the body runs to the end of the connection.
        let (s, seen) = fake(vec![Answer {
            no_length: true,
            ..answer("200 OK", &long)
        }]);
        let e = s.get(K, 1000).unwrap_err().to_string();
        assert!(e.contains("answer longer than 1000 bytes; refused"), "{e}");
        assert_eq!(seen.lock().unwrap().len(), 1, "not retried");
        // One that never ends: refused once the limit is passed, without
        // reading on.
        let (s, _) = fake(vec![Answer {
            no_length: true,
            endless: true,
            ..answer("200 OK", &[b'y'; 64 << 10])
        }]);
        let t = Instant::now();
        let e = s.get(K, 1000).unwrap_err().to_string();
        assert!(e.contains("answer longer than 1000 bytes; refused"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // Chunked: no length until it ends.
        let mut chunked = format!("{:x}\r\n", long.len()).into_bytes();
        chunked.extend_from_slice(&long);
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let (s, _) = fake(vec![Answer {
            no_length: true,
            headers: vec!["Transfer-Encoding: chunked".into()],
            ..answer("200 OK", &chunked)
        }]);
        let e = s.get(K, 1000).unwrap_err().to_string();
        assert!(e.contains("answer longer than 1000 bytes; refused"), "{e}");
        // A Content-Length that says less than is sent: the body is what it
        // says, the rest is not read.
        let (s, _) = fake(vec![Answer {
            claim: Some(10),
            ..answer("200 OK", &long)
        }]);
        assert_eq!(s.get(K, 1000).unwrap(), &long[..10]);
        // Both framings at once (a smuggling trick): refused either way,
        // never more than the limit.
        let (s, _) = fake(vec![Answer {
            claim: Some(10),
            headers: vec!["Transfer-Encoding: chunked".into()],
            ..answer("200 OK", &chunked)
        }]);
        if let Ok(b) = s.get(K, 1000) {
            assert!(b.len() <= 1000, "{}", b.len());
        }
        // A listing page past LIST_PAGE_MAX, without a length.
        let (s, _) = fake(vec![Answer {
            no_length: true,
            ..answer("200 OK", &vec![b' '; LIST_PAGE_MAX as usize + 1])
        }]);
        let e = s.list("").unwrap_err().to_string();
        assert!(
            e.contains(&format!("answer longer than {LIST_PAGE_MAX} bytes")),
            "{e}"
        );
    }

    /// The fake's store with a short stall bound.
    fn impatient(answers: Vec<Answer>) -> S3Store {
        let (mut s, _) = fake(answers);
        s.bounds.stall = Duration::from_millis(300);
        s
    }

    #[test]
    fn a_stalled_answer_times_out() {
        let stalled = || Answer {
            claim: Some(100),
            hold: true,
            ..answer("200 OK", b"0123456789")
        };
        let s = impatient(vec![stalled(), stalled(), stalled()]);
        let t = Instant::now();
        let e = s.get(K, 1000).unwrap_err().to_string();
        assert!(
            e.contains("the server stalled: nothing moved for 300ms")
                && e.contains("after 3 attempts"),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        // A range: the reader is handed out, then the body stops.
        let s = impatient(vec![Answer {
            status: "206 Partial Content",
            ..stalled()
        }]);
        let t = Instant::now();
        let e = read_range(&s, 0, 100).unwrap_err().to_string();
        assert!(e.contains("the server stalled"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // No answer at all, to a GET and to a listing.
        let silent = || Answer {
            silent: true,
            ..answer("200 OK", b"")
        };
        let s = impatient(vec![silent(), silent(), silent()]);
        let e = s.get(K, 1000).unwrap_err().to_string();
        assert!(e.contains("the server stalled"), "{e}");
        let s = impatient(vec![silent(), silent(), silent()]);
        let e = s.list("").unwrap_err().to_string();
        assert!(e.contains("store LIST p/: the server stalled"), "{e}");
        // An upload the server stops reading.
        let s = impatient(vec![silent(), silent(), silent()]);
        let t = Instant::now();
        let e = s.put_bytes(K, &vec![0; 32 << 20]).unwrap_err().to_string();
        assert!(
            e.contains("the server stalled") && e.contains("after 3 attempts"),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    }

    #[test]
    fn a_trickled_answer_hits_the_total_bound() {
        // A byte every 50 ms never stalls, but would take 10 s.
        let trickled = |status| Answer {
            trickle: Some(Duration::from_millis(50)),
            ..answer(status, &[b'x'; 200])
        };
        let (mut s, _) = fake(vec![trickled("200 OK")]);
        s.attempts = 1;
        s.bounds.base = Duration::from_millis(600);
        let t = Instant::now();
        let e = s.get(K, 1000).unwrap_err().to_string();
        assert!(e.contains("not done in the time allowed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        // A range, whose reader does not count the time between reads.
        let (mut s, _) = fake(vec![trickled("206 Partial Content")]);
        s.attempts = 1;
        s.bounds.base = Duration::from_millis(600);
        let t = Instant::now();
        let e = read_range(&s, 0, 200).unwrap_err().to_string();
        assert!(e.contains("not done in the time allowed"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
        let (mut s, _) = fake(vec![answer("206 Partial Content", b"0123456789")]);
        s.bounds.base = Duration::from_millis(300);
        let mut r = s.open_range(K, 0, 10).unwrap();
        let mut out = [0u8; 10];
        r.read_exact(&mut out[..2]).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        r.read_exact(&mut out[2..]).unwrap();
        assert_eq!(&out, b"0123456789", "a slow reader is not a slow server");
    }

    #[test]
    fn sizes_from_the_server_are_checked() {
        for claim in ["99999999999999999999999", "-1", "12abc"] {
            let (s, _) = fake(vec![Answer {
                no_length: true,
                headers: vec![format!("Content-Length: {claim}")],
                ..answer("200 OK", b"")
            }]);
            // An error, retried or not, never a panic nor a size.
            assert!(s.head(K).is_err(), "{claim}");
        }
        let (s, _) = fake(vec![Answer {
            no_length: true,
            ..answer("200 OK", b"")
        }]);
        let e = s.head(K).unwrap_err().to_string();
        assert!(e.contains("answer without a Content-Length"), "{e}");
        let (s, _) = fake(vec![answer("200 OK", b"12345")]);
        assert_eq!(s.head(K).unwrap(), Some(5));
        let (s, _) = fake(vec![answer("200 OK", b"hi")]);
        assert_eq!(s.get(K, u64::MAX).unwrap(), b"hi");
        let (s, _) = fake(vec![]);
        assert!(s.open_range(K, u64::MAX, 2).is_err());
        assert_eq!(BOUNDS.total(u64::MAX), TOTAL_MAX);
        assert_eq!(
            BOUNDS.total(64 << 20),
            Duration::from_secs(600 + (64 << 20) / (4 << 10))
        );
        let (mut s, _) = fake(vec![answer("200 OK", b"hi")]);
        s.attempts = 0;
        assert_eq!(s.get(K, 10).unwrap(), b"hi", "at least one attempt");
    }

    fn with_headers(headers: &[&str]) -> Answer {
        Answer {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            ..answer("200 OK", b"12345")
        }
    }

    #[test]
    fn what_a_head_says_is_read_defensively() {
        let stat = |headers: &[&str]| {
            let (s, _) = fake(vec![with_headers(headers)]);
            s.stat(K, true)
                .unwrap_or_else(|e| panic!("{headers:?}: {e}"))
                .unwrap()
        };
        let m = stat(&[]);
        assert_eq!(
            (m.size, m.class, m.thaw, m.sha256),
            (5, StorageClass::Standard, ThawState::NotNeeded, None)
        );
        let m = stat(&["x-amz-storage-class: DEEP_ARCHIVE"]);
        assert_eq!(
            (m.class, m.thaw),
            (StorageClass::DeepArchive, ThawState::Frozen)
        );
        let m = stat(&[
            "x-amz-storage-class: GLACIER",
            "x-amz-restore: ongoing-request=\"true\"",
        ]);
        assert_eq!(m.thaw, ThawState::Ongoing);
        let m = stat(&[
            "x-amz-storage-class: GLACIER",
            "x-amz-restore: ongoing-request=\"false\", expiry-date=\"Fri, 21 Dec 2012 00:00:00 GMT\"",
        ]);
        assert_eq!(m.thaw, ThawState::Thawed);
        let m = stat(&[
            "x-amz-storage-class: INTELLIGENT_TIERING",
            "x-amz-archive-status: DEEP_ARCHIVE_ACCESS",
        ]);
        assert_eq!(m.thaw, ThawState::Frozen);
        // A class vaultik does not know, a restore header that says
        // nothing: readable, as a GET will tell otherwise.
        let m = stat(&[
            "x-amz-storage-class: REDUCED_REDUNDANCY",
            "x-amz-restore: maybe",
        ]);
        assert_eq!(
            (m.class, m.thaw),
            (StorageClass::Standard, ThawState::NotNeeded)
        );
        // A header that paints the terminal: the answer is refused whole.
        let (s, _) = fake(vec![with_headers(&[
            "x-amz-storage-class: \u{1b}[31mPAINT",
        ])]);
        assert!(s.stat(K, true).is_err());
        // Checksums: 32 bytes of base64, or none.
        let sum = base64(&[7u8; 32]);
        assert_eq!(
            stat(&[&format!("x-amz-checksum-sha256: {sum}")]).sha256,
            Some([7u8; 32])
        );
        for bad in [
            "x-amz-checksum-sha256: not base64!".to_string(),
            format!("x-amz-checksum-sha256: {}", base64(&[7u8; 31])),
            format!("x-amz-checksum-sha256: {sum}-3"),
            format!("x-amz-checksum-sha256: {}", "A".repeat(4000)),
        ] {
            assert_eq!(stat(&[&bad]).sha256, None, "{bad}");
        }
        // A header past what the HTTP client takes: an error, never a value.
        let (s, _) = fake(vec![with_headers(&[&format!(
            "x-amz-checksum-sha256: {}",
            "A".repeat(100_000)
        )])]);
        assert!(s.stat(K, true).is_err());
    }

    #[test]
    fn base64_round_trips() {
        for n in 0..70 {
            let data: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(unbase64(&base64(&data)).unwrap(), data, "{n}");
        }
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        for bad in ["a", "aGVsbG8", "aGV=bG8=", "a===", "aGVsbG8*"] {
            assert_eq!(unbase64(bad), None, "{bad}");
        }
    }

    #[test]
    fn thaw_requests_say_what_s3_answered() {
        let (s, heads) = fake(vec![answer("202 Accepted", b"")]);
        assert!(s.request_thaw(K, 3, Tier::Bulk).unwrap(), "a new thaw");
        let h = heads.lock().unwrap()[0].clone();
        assert!(h.starts_with("POST "), "{h}");
        assert!(h.contains("restore="), "{h}");
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
        // Signed: the names are in the presigned URL's SignedHeaders.
        let signed = low(0)
            .split("x-amz-signedheaders=")
            .nth(1)
            .and_then(|r| r.split(['&', ' ']).next())
            .map(str::to_string)
            .unwrap_or_default();
        for name in [
            "x-amz-checksum-sha256",
            "x-amz-sdk-checksum-algorithm",
            "x-amz-storage-class",
        ] {
            assert!(signed.contains(name), "{name} not in {signed}");
        }
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
