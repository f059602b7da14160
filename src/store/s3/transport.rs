//! Sending a request and reading its answer: the agent's time bounds,
//! retries of transient failures with backoff and jitter, answers read
//! within a size limit, and S3's error answers and redirects turned into
//! failures that say what happened.

use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::S3Store;
use super::creds::CredError;
use super::limit::{Permit, Throttled};
use super::sign::{Req, Signed};
use crate::error::{Error, Result, StoreCause, Tried};
use crate::store::Op;
use crate::store::settings::Checksum;

/// The first wait after a failed attempt; it doubles up to `BACKOFF_CAP`.
pub(super) const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between attempts (with jitter: 30 to 60 s).
pub(super) const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// The longest `Retry-After` taken as it is said (a server asking for
/// hours is asked again sooner).
pub(super) const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);
/// Characters of a name the server chose (a Location, a key) that an error
/// message shows.
pub(super) const SHOWN_MAX: usize = 200;

/// Time bounds on one request, so that a server that stops answering, or
/// answers a byte at a time, cannot hold vaultik forever (on top of the
/// agent's 15 s to connect and 300 s to receive an answer's headers).
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    /// The longest silence accepted: every read and write on the
    /// connection (the wait for the answer's headers included) must move
    /// something within it.
    pub(super) stall: Duration,
    /// What every request is allowed whatever its size, beyond `rate`.
    pub(super) base: Duration,
    /// The slowest transfer accepted, in bytes per second: a request
    /// moving `n` bytes may take `base + n / rate` in all.
    pub(super) rate: u64,
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
pub(super) const BOUNDS: Bounds = Bounds {
    stall: Duration::from_secs(120),
    base: Duration::from_secs(600),
    rate: 4 << 10,
};

/// No request is given more than this, whatever its size (a week: far
/// beyond any real transfer, and far from overflowing a clock).
pub(super) const TOTAL_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

impl Bounds {
    /// The whole time a request moving `bytes` may take.
    pub(super) fn total(&self, bytes: u64) -> Duration {
        let secs = bytes / self.rate.max(1);
        self.base
            .saturating_add(Duration::from_secs(secs))
            .min(TOTAL_MAX)
    }

    /// What a timeout of ureq means, in words.
    pub(super) fn explain(&self, t: ureq::Timeout) -> String {
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
    pub(super) fn io_message(&self, e: &io::Error) -> String {
        match e.get_ref().and_then(|x| x.downcast_ref::<ureq::Error>()) {
            Some(ureq::Error::Timeout(t)) => self.explain(*t),
            _ => e.to_string(),
        }
    }
}

/// Why one attempt failed, and whether another attempt may succeed.
pub(super) struct Failure {
    pub(super) retry: bool,
    pub(super) not_found: bool,
    pub(super) cause: StoreCause,
    /// The server asked every client to slow down (503 SlowDown, 429,
    /// `Retry-After`): the whole store waits at least this long.
    pub(super) wait: Option<Duration>,
}

impl Failure {
    /// An answer refused, not worth asking again.
    pub(super) fn permanent(msg: String) -> Failure {
        Failure {
            retry: false,
            not_found: false,
            cause: StoreCause::Refused(msg),
            wait: None,
        }
    }

    /// A redirect, never followed (nor asked again).
    pub(super) fn redirect(msg: String) -> Failure {
        Failure {
            retry: false,
            not_found: false,
            cause: StoreCause::Redirect(msg),
            wait: None,
        }
    }

    /// No answer, or a bad one: asked again.
    pub(super) fn transient(msg: String) -> Failure {
        Failure {
            retry: true,
            not_found: false,
            cause: StoreCause::Transport(msg),
            wait: None,
        }
    }
}

pub(super) type Attempt<T> = std::result::Result<T, Failure>;

impl From<CredError> for Failure {
    /// No credentials to sign with: asked again when an endpoint did not
    /// answer (STS, IMDS), not when they are misconfigured.
    fn from(e: CredError) -> Failure {
        Failure {
            retry: e.transient,
            not_found: false,
            cause: StoreCause::Credentials(e.msg),
            wait: None,
        }
    }
}

impl S3Store {
    /// Run `attempt` until it succeeds, fails permanently, or has been
    /// failing for `retry_for` (or `attempts` tries, a bound for tests).
    /// Between attempts: exponential backoff with jitter, from
    /// `BACKOFF_FIRST` up to `BACKOFF_CAP`, and at least what the server
    /// asked for (`Retry-After`, SlowDown), which every thread of the
    /// store honours. The first outage of the run is announced on one line
    /// (what failed, how long vaultik keeps trying), its end too.
    pub(super) fn retry<T>(
        &self,
        op: &'static str,
        key: &str,
        mut attempt: impl FnMut() -> Attempt<T>,
    ) -> Result<T> {
        self.retry_with(op, key, |permit| {
            let r = attempt();
            drop(permit);
            r
        })
    }

    /// `retry`, each attempt given the slot it runs in (`connections`), to
    /// give back or keep (a body read later holds it).
    pub(super) fn retry_with<'s, T>(
        &'s self,
        op: &'static str,
        key: &str,
        mut attempt: impl FnMut(Permit<'s>) -> Attempt<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let deadline = start + self.retry_for;
        let mut delay = self.backoff_first;
        let mut n = 0u32;
        loop {
            self.wait_for_pause(deadline);
            n += 1;
            let f = match attempt(self.slots.acquire()) {
                Ok(v) => {
                    self.recovered();
                    return Ok(v);
                }
                Err(f) => f,
            };
            if f.not_found {
                return Err(Error::NotFound { key: key.into() });
            }
            let now = Instant::now();
            if !f.retry || n >= self.attempts.max(1) || now >= deadline {
                return Err(Error::Store {
                    op,
                    key: key.to_string(),
                    attempts: f.retry.then(|| Tried {
                        attempts: n,
                        secs: secs32(now.duration_since(start)),
                        retry_for: secs32(self.retry_for),
                    }),
                    cause: f.cause,
                });
            }
            let mut wait = jitter(delay);
            if let Some(asked) = f.wait {
                wait = wait.max(asked.min(RETRY_AFTER_MAX));
                self.pause_all(now + wait);
            }
            // The last attempt at the deadline, not past it.
            let wait = wait.min(deadline - now);
            if n >= 2 {
                self.announce(op, key, &f.cause);
            }
            std::thread::sleep(wait);
            delay = delay.saturating_mul(2).min(self.backoff_cap);
        }
    }

    /// Every request waits until a pause the server asked for is over (at
    /// most until `deadline`).
    fn wait_for_pause(&self, deadline: Instant) {
        let until = *self.pause.lock().expect("pause poisoned by a panic");
        if let Some(u) = until {
            let now = Instant::now();
            if u > now {
                std::thread::sleep(u.min(deadline).saturating_duration_since(now));
            }
        }
    }

    fn pause_all(&self, until: Instant) {
        let mut p = self.pause.lock().expect("pause poisoned by a panic");
        if p.is_none_or(|u| u < until) {
            *p = Some(until);
        }
    }

    /// Say once that the store is failing, and for how long vaultik keeps
    /// trying a request.
    fn announce(&self, op: &str, key: &str, cause: &StoreCause) {
        let mut o = self.outage.lock().expect("outage poisoned by a panic");
        if o.is_some() {
            return;
        }
        *o = Some(Instant::now());
        let until = crate::time::now().saturating_add(self.retry_for.as_secs());
        crate::notice(&format!(
            "the store is unreachable or failing ({op} {key}: {cause}); vaultik keeps \
             trying each request for up to {} (retry_for), until {}",
            crate::span(self.retry_for.as_secs()),
            crate::time::display(until)
        ));
    }

    /// An answer after an announced outage: say that it is over.
    fn recovered(&self) {
        let mut o = self.outage.lock().expect("outage poisoned by a panic");
        if let Some(since) = o.take() {
            crate::notice(&format!(
                "the store answers again, after {}",
                crate::span(since.elapsed().as_secs())
            ));
        }
    }

    /// One GET of a small answer (a listing page, a bucket setting) at
    /// `url`: its body, at most `limit` bytes, counted as one `op`.
    pub(super) fn get_bounded(&self, req: &Req<'_>, op: Op, limit: u64) -> Attempt<Vec<u8>> {
        let s = self.signed(req)?;
        let mut resp = s
            .apply(self.bounded(self.agent.get(&s.url), Some(limit)))
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

    /// `req` with the stall bound on every read and write, and, when the
    /// request moves at most `bytes` (sent and received), a bound on the
    /// whole of it. Without one (`open_range`, whose reader is handed to a
    /// caller that may pause between reads), the body is read through
    /// `Paced`.
    /// `req` signed with the credentials of the moment.
    pub(super) fn signed(&self, req: &Req<'_>) -> Attempt<Signed> {
        let creds = self.creds.current()?;
        Ok(self.sign_with(req, creds.as_deref(), crate::time::now()))
    }

    pub(super) fn bounded<B>(
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

    pub(super) fn transport(&self, e: ureq::Error) -> Failure {
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
            wait: None,
        }
    }

    /// Turn a non-success answer into a failure with S3's error code.
    pub(super) fn status_failure(&self, resp: &mut ureq::http::Response<ureq::Body>) -> Failure {
        if resp.status().is_redirection() {
            return self.redirect(resp);
        }
        let status = resp.status().as_u16();
        // `Retry-After: SECONDS` (an HTTP date is not taken: the server's
        // clock is not ours).
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = Vec::new();
        // What fails here only leaves the code out of the message.
        let _ = Paced::new(resp.body_mut().as_reader(), self.bounds, self.bounds.base)
            .take(64 * 1024)
            .read_to_end(&mut body);
        let body = String::from_utf8_lossy(&body);
        let code = between(&body, "<Code>", "</Code>").map_or(String::new(), shown);
        let mut message = between(&body, "<Message>", "</Message>").map_or(String::new(), shown);
        // Refused credentials: say which source they came from.
        if matches!(
            code.as_str(),
            "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "InvalidToken"
                | "ExpiredToken"
                | "TokenRefreshRequired"
                | "InvalidClientTokenId"
                | "AccessDenied"
                | "AuthorizationHeaderMalformed"
        ) || (status == 403 && code.is_empty())
        {
            if let Some(source) = self.creds.known_source() {
                message = if message.is_empty() {
                    source
                } else {
                    format!("{message} ({source})")
                };
            }
        }
        // A provider that takes no checksum headers (B2: 400 "Unsupported
        // header 'x-amz-checksum-sha256'"; GCS's XML API): name the setting.
        if status == 400 && self.checksum != Checksum::None {
            let said = format!("{code} {message}").to_ascii_lowercase();
            if said.contains("unsupported header")
                || (said.contains("header") && (said.contains("checksum") || said.contains("md5")))
            {
                let other = match self.checksum {
                    Checksum::Sha256 => "`checksum = md5` or `checksum = none`",
                    _ => "`checksum = none`",
                };
                message = format!(
                    "{message} (the provider refuses the headers of `checksum = {}`: set \
                     {other} in [s3])",
                    self.checksum.name()
                );
            }
        }
        // Asked to slow down: the whole store waits, at least a backoff
        // step (`retry` takes the longer of the two).
        let slow = status == 429 || code == "SlowDown" || code == "RequestLimitExceeded";
        let wait = retry_after.or(slow.then_some(Duration::ZERO));
        Failure {
            // 501 Not Implemented will not be implemented by asking again.
            retry: status == 429 || (status >= 500 && status != 501),
            not_found: status == 404,
            cause: StoreCause::Http {
                status,
                code,
                message,
            },
            wait,
        }
    }

    /// A 3xx: never followed (the endpoint or region is wrong, or the
    /// server wants the request elsewhere), and not retried.
    pub(super) fn redirect(&self, resp: &ureq::http::Response<ureq::Body>) -> Failure {
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
    pub(super) fn read_body(
        &self,
        resp: ureq::http::Response<ureq::Body>,
        expect: Option<u64>,
        limit: u64,
    ) -> Attempt<Vec<u8>> {
        let body = Throttled::new(resp.into_body().into_reader(), self.down.as_ref());
        let buf = crate::store::read_bounded(body, limit)
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
pub(super) fn shown(s: &str) -> String {
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
pub(super) struct Paced<R> {
    inner: R,
    bounds: Bounds,
    budget: Duration,
    waited: Duration,
}

impl<R> Paced<R> {
    pub(super) fn new(inner: R, bounds: Bounds, budget: Duration) -> Paced<R> {
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

/// Whole seconds, within a u32 (136 years).
fn secs32(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// Between half and all of `d`, so that parallel clients spread out.
pub(super) fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let frac = 0.5 + (nanos % 1000) as f64 / 2000.0;
    d.mul_f64(frac)
}

pub(super) fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let end = s[start..].find(close)? + start;
    Some(&s[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::s3::fake::*;
    use crate::store::s3::list::LIST_PAGE_MAX;
    use std::net::TcpListener;

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
    fn retries_are_bounded_by_time_not_tries() {
        // Three 500s, then nothing listens: every attempt fails until
        // retry_for has passed, however many attempts that takes.
        let (mut s, seen) = fake(vec![
            answer("500 Internal Server Error", b""),
            answer("500 Internal Server Error", b""),
            answer("500 Internal Server Error", b""),
        ]);
        s.attempts = u32::MAX;
        s.retry_for = Duration::from_millis(1500);
        s.backoff_first = Duration::from_millis(20);
        s.backoff_cap = Duration::from_millis(200);
        let t = Instant::now();
        let e = s.get(K, 100).unwrap_err().to_string();
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
            "{took:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 3);
        assert!(e.contains("retry_for is 1s"), "{e}");
        let n: u32 = e
            .split("(after ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(n > 6, "more tries than the old bound of 6: {e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn retry_after_and_slow_down_are_honoured() {
        let (mut s, seen) = fake(vec![
            Answer {
                headers: vec!["Retry-After: 2".into()],
                ..answer("503 Service Unavailable", b"")
            },
            answer("200 OK", b"hi"),
        ]);
        s.backoff_cap = Duration::from_millis(100);
        let t = Instant::now();
        assert_eq!(s.get(K, 100).unwrap(), b"hi");
        assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(seen.lock().unwrap().len(), 2);
        // SlowDown: the whole store waits, not only the request told.
        let (mut s, _) = fake(vec![
            answer(
                "503 Slow Down",
                b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>",
            ),
            answer("200 OK", b"a"),
            answer("200 OK", b"b"),
        ]);
        s.backoff_first = Duration::from_millis(800);
        let t = Instant::now();
        assert_eq!(s.get(K, 100).unwrap(), b"a");
        let first = t.elapsed();
        assert!(first >= Duration::from_millis(400), "{first:?}");
        *s.pause.lock().unwrap() = Some(Instant::now() + Duration::from_millis(700));
        let t = Instant::now();
        assert_eq!(s.get(K, 100).unwrap(), b"b");
        assert!(
            t.elapsed() >= Duration::from_millis(600),
            "{:?}",
            t.elapsed()
        );
        let (s, _) = fake(vec![answer(
            "503 Slow Down",
            b"<Error><Code>SlowDown</Code></Error>",
        )]);
        let mut resp = ureq::http::Response::builder()
            .status(503)
            .body(ureq::Body::builder().data("<Error><Code>SlowDown</Code></Error>"))
            .unwrap();
        let f = s.status_failure(&mut resp);
        assert!(f.retry && f.wait == Some(Duration::ZERO));
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
}
