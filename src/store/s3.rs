//! S3-compatible object storage: every request is presigned with rusty-s3
//! and sent over one blocking ureq agent. Transient failures (transport
//! errors, 429, 5xx) are retried with bounded exponential backoff and
//! jitter; other answers fail at once with the S3 error code.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusty_s3::actions::{DeleteObjects, DeleteObjectsResponse, ListObjectsV2, ObjectIdentifier};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use super::{Listing, Op, Stats, Store, check_key, too_large};
use crate::config::S3Config;
use crate::error::{Error, Result};

/// Presigned URLs are used at once; an hour covers the slowest upload.
const SIGN_FOR: Duration = Duration::from_secs(3600);
const ATTEMPTS: u32 = 6;
/// A ListObjectsV2 page (1000 keys) is about 300 KB of XML; a larger
/// answer is refused, whatever the server says.
const LIST_PAGE_MAX: u64 = 8 << 20;

pub struct S3Store {
    bucket: Bucket,
    credentials: Option<Credentials>,
    prefix: String,
    endpoint: String,
    agent: ureq::Agent,
    stats: Stats,
    /// Tries per request for transient failures.
    attempts: u32,
}

/// Why one attempt failed, and whether another attempt may succeed.
struct Failure {
    retry: bool,
    not_found: bool,
    msg: String,
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
        let mut delay = Duration::from_millis(200);
        for n in 1..=self.attempts {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(f) if f.not_found => return Err(Error::NotFound { key: key.into() }),
                Err(f) if !f.retry || n == self.attempts => {
                    let tries = if f.retry {
                        format!(" (after {n} attempts)")
                    } else {
                        String::new()
                    };
                    return Err(Error::store(op, key, format!("{}{tries}", f.msg)));
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
}

/// The certificates of a PEM file, as the only roots to trust.
fn load_roots(path: &Path) -> Result<ureq::tls::RootCerts> {
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

fn transport(e: ureq::Error) -> Failure {
    // A certificate the roots do not trust will not be trusted next time.
    let msg = e.to_string();
    let tls =
        matches!(e, ureq::Error::Tls(_) | ureq::Error::Rustls(_)) || msg.contains("certificate");
    Failure {
        retry: !tls,
        not_found: false,
        msg,
    }
}

/// Turn a non-success answer into a failure with S3's error code.
fn status_failure(resp: &mut ureq::http::Response<ureq::Body>) -> Failure {
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    let code = between(&body, "<Code>", "</Code>").unwrap_or("");
    let message = between(&body, "<Message>", "</Message>").unwrap_or("");
    let msg = match (code, message) {
        ("", _) => format!("HTTP {status}"),
        (c, "") => format!("HTTP {status} {c}"),
        (c, m) => format!("HTTP {status} {c}: {m}"),
    };
    Failure {
        retry: status == 429 || status >= 500,
        not_found: status == 404,
        msg,
    }
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let end = s[start..].find(close)? + start;
    Some(&s[start..end])
}

/// The body of `resp`, at most `limit` bytes (a longer one is an error),
/// and exactly `expect` bytes when the answer said so. The length the
/// server claims is never allocated up front.
fn read_body(
    resp: ureq::http::Response<ureq::Body>,
    expect: Option<u64>,
    limit: u64,
) -> Attempt<Vec<u8>> {
    let mut buf = Vec::new();
    resp.into_body()
        .into_reader()
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Failure {
            retry: true,
            not_found: false,
            msg: format!("reading the answer: {e}"),
        })?;
    if buf.len() as u64 > limit {
        return Err(Failure {
            retry: false,
            not_found: false,
            msg: format!("answer longer than {limit} bytes; refused"),
        });
    }
    if let Some(n) = expect {
        if buf.len() as u64 != n {
            return Err(Failure {
                retry: true,
                not_found: false,
                msg: format!("short answer: {} of {n} bytes", buf.len()),
            });
        }
    }
    Ok(buf)
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

    fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        let full = self.checked("PUT", key)?;
        self.retry("PUT", &full, || {
            let file = File::open(path).map_err(|e| Failure {
                retry: false,
                not_found: false,
                msg: format!("cannot open {}: {e}", path.display()),
            })?;
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let url = self.sign(&self.bucket.put_object(self.credentials.as_ref(), &full));
            self.stats.count(Op::Put, len, 0);
            // ureq sends a File with its length as Content-Length (never chunked).
            let mut resp = self.agent.put(&url).send(&file).map_err(transport)?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(status_failure(&mut resp))
            }
        })
    }

    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<()> {
        let full = self.checked("PUT", key)?;
        self.retry("PUT", &full, || {
            let url = self.sign(&self.bucket.put_object(self.credentials.as_ref(), &full));
            self.stats.count(Op::Put, data.len() as u64, 0);
            let mut resp = self.agent.put(&url).send(data).map_err(transport)?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(status_failure(&mut resp))
            }
        })
    }

    fn get(&self, key: &str, limit: u64) -> Result<Vec<u8>> {
        let full = self.checked("GET", key)?;
        let mut large = None;
        let r = self.retry("GET", &full, || {
            let url = self.sign(&self.bucket.get_object(self.credentials.as_ref(), &full));
            let mut resp = self.agent.get(&url).call().map_err(|e| {
                self.stats.count(Op::Get, 0, 0);
                transport(e)
            })?;
            if !resp.status().is_success() {
                self.stats.count(Op::Get, 0, 0);
                return Err(status_failure(&mut resp));
            }
            let expect = resp.body().content_length();
            if let Some(n) = expect.filter(|n| *n > limit) {
                self.stats.count(Op::Get, 0, 0);
                large = Some(n);
                return Err(Failure {
                    retry: false,
                    not_found: false,
                    msg: String::new(),
                });
            }
            let body = read_body(resp, expect, limit);
            let got = body.as_ref().map(|b| b.len() as u64).unwrap_or(0);
            self.stats.count(Op::Get, 0, got);
            body
        });
        match large {
            Some(n) => Err(too_large(key, n, limit)),
            None => r,
        }
    }

    fn open_range(&self, key: &str, start: u64, len: u64) -> Result<Box<dyn Read + Send + '_>> {
        let full = self.checked("GET", key)?;
        let last = start
            .checked_add(len.max(1) - 1)
            .ok_or_else(|| Error::store("GET", &full, format!("range {start}+{len} overflows")))?;
        let range = format!("bytes={start}-{last}");
        let body = self.retry("GET", &full, || {
            let url = self.sign(&self.bucket.get_object(self.credentials.as_ref(), &full));
            let resp = self.agent.get(&url).header("Range", &range).call();
            self.stats.count(Op::Get, 0, 0);
            let mut resp = resp.map_err(transport)?;
            match resp.status().as_u16() {
                206 => Ok(resp.into_body().into_reader()),
                200 => Err(Failure {
                    retry: true,
                    not_found: false,
                    msg: format!(
                        "asked for {range}, got the whole object (HTTP 200): Range ignored"
                    ),
                }),
                _ => Err(status_failure(&mut resp)),
            }
        })?;
        Ok(Box::new(super::Exact {
            inner: body,
            remaining: len,
            received: &self.stats.bytes_received,
        }))
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        let full = self.checked("HEAD", key)?;
        let r = self.retry("HEAD", &full, || {
            let url = self.sign(&self.bucket.head_object(self.credentials.as_ref(), &full));
            self.stats.count(Op::Head, 0, 0);
            let mut resp = self.agent.head(&url).call().map_err(transport)?;
            if resp.status().is_success() {
                let len = resp
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                Ok(len)
            } else {
                Err(status_failure(&mut resp))
            }
        });
        match r {
            Ok(n) => Ok(Some(n)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> Result<Listing> {
        let full_prefix = self.full_key(prefix);
        let mut out = Listing::default();
        let mut token: Option<String> = None;
        loop {
            let page = self.retry("LIST", &full_prefix, || {
                let mut action = ListObjectsV2::new(&self.bucket, self.credentials.as_ref());
                action.with_prefix(full_prefix.as_str());
                if let Some(t) = &token {
                    action.with_continuation_token(t.as_str());
                }
                let url = self.sign(&action);
                let mut resp = self.agent.get(&url).call().map_err(|e| {
                    self.stats.count(Op::List, 0, 0);
                    transport(e)
                })?;
                if !resp.status().is_success() {
                    self.stats.count(Op::List, 0, 0);
                    return Err(status_failure(&mut resp));
                }
                let body = read_body(resp, None, LIST_PAGE_MAX)?;
                self.stats.count(Op::List, 0, body.len() as u64);
                let text = String::from_utf8_lossy(&body);
                ListObjectsV2::parse_response(&text).map_err(|e| Failure {
                    retry: false,
                    not_found: false,
                    msg: format!("unreadable listing: {e}"),
                })
            })?;
            for obj in page.contents {
                let Some(key) = obj.key.strip_prefix(&self.prefix) else {
                    continue;
                };
                out.add(
                    key.to_string(),
                    obj.size.unwrap_or(0),
                    obj.last_modified
                        .as_deref()
                        .and_then(crate::time::parse_s3)
                        .unwrap_or(0),
                );
                if out.objects.len() > super::LIST_MAX {
                    return Err(super::too_many(&full_prefix));
                }
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        Ok(out.sorted())
    }

    fn delete(&self, key: &str) -> Result<()> {
        let full = self.checked("DELETE", key)?;
        let r = self.retry("DELETE", &full, || {
            let url = self.sign(&self.bucket.delete_object(self.credentials.as_ref(), &full));
            self.stats.count(Op::Delete, 0, 0);
            let mut resp = self.agent.delete(&url).call().map_err(transport)?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(status_failure(&mut resp))
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
                let mut resp = self
                    .agent
                    .post(&url)
                    .header("Content-MD5", &md5)
                    .header("Content-Type", "application/xml")
                    .send(body.as_bytes())
                    .map_err(transport)?;
                if !resp.status().is_success() {
                    return Err(status_failure(&mut resp));
                }
                let text = read_body(resp, None, LIST_PAGE_MAX)?;
                let parsed = DeleteObjectsResponse::parse(&String::from_utf8_lossy(&text));
                match parsed {
                    Ok(r) if !r.errors.is_empty() => {
                        let e = &r.errors[0];
                        Err(Failure {
                            retry: false,
                            not_found: false,
                            msg: format!(
                                "{} of them failed; {}: {} {}",
                                r.errors.len(),
                                e.key,
                                e.code,
                                e.message
                            ),
                        })
                    }
                    _ => Ok(()),
                }
            })?;
        }
        Ok(())
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }
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
    }

    fn answer(status: &'static str, body: &[u8]) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.to_vec(),
            claim: None,
        }
    }

    /// A fake S3 on 127.0.0.1 answering requests in order; records the
    /// request heads it saw.
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
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                seen2.lock().unwrap().push(head);
                let mut resp = format!(
                    "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: close\r\n",
                    a.status,
                    a.claim.unwrap_or(a.body.len())
                );
                for h in &a.headers {
                    resp.push_str(h);
                    resp.push_str("\r\n");
                }
                resp.push_str("\r\n");
                let _ = c.write_all(resp.as_bytes());
                let _ = c.write_all(&a.body);
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
        })
        .unwrap();
        store.attempts = 3;
        (store, seen)
    }

    /// A key of the layout (every store operation refuses others).
    const K: &str = "metadata/h_n_2026-11-23T083015Z/manifest.json.zst";

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
}
