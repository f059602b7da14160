//! `ping_url`: health pings in the healthchecks.io convention, around
//! each snapshot's run: `URL/start` when it starts, `URL` when it is
//! stored, `URL/fail` when it fails, each a POST whose body says what
//! happened (the summary, or the exit status and the last lines of the
//! error). cronitor and Uptime Kuma's push monitors take the same URLs.
//!
//! A ping that cannot be sent is a warning, never a failed backup; it is
//! sent over the same blocking ureq stack as the store's requests (the
//! built-in web PKI roots, or `[s3] ca_file`), with a short time limit.
//! The URL's path is the check's secret: messages name its host only.

use std::time::Duration;

use crate::error::{Error, Result};

/// Each ping's time limit, and how many tries it gets.
const TIMEOUT: Duration = Duration::from_secs(10);
const TRIES: u32 = 2;
/// What a failure ping carries of the error.
const BODY_MAX: usize = 10_000;

pub struct Pinger {
    url: String,
    agent: ureq::Agent,
}

/// Which ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    Start,
    Success,
    Fail,
}

impl Pinger {
    /// A pinger for `url` (http or https); `roots`: the store's CA roots
    /// when it has its own.
    pub fn new(url: &str, roots: Option<ureq::tls::RootCerts>) -> Result<Pinger> {
        check_url(url)?;
        let mut agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(TIMEOUT));
        if let Some(roots) = roots {
            agent = agent.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
        }
        Ok(Pinger {
            url: url.trim_end_matches('/').to_string(),
            agent: agent.build().into(),
        })
    }

    /// Send `ping` with `body`; Err: a warning to give (naming the host
    /// only).
    pub fn send(&self, ping: Ping, body: &str) -> std::result::Result<(), String> {
        let url = match ping {
            Ping::Start => format!("{}/start", self.url),
            Ping::Success => self.url.clone(),
            Ping::Fail => format!("{}/fail", self.url),
        };
        let body = bounded(body);
        let mut last = String::new();
        for n in 1..=TRIES {
            match self
                .agent
                .post(&url)
                .header("Content-Type", "text/plain; charset=utf-8")
                .send(body.as_bytes())
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => last = format!("answered {}", r.status()),
                Err(e) => last = e.to_string(),
            }
            if n < TRIES {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Err(format!(
            "health ping ({}) to {} failed: {}",
            ping.name(),
            host_of(&self.url),
            crate::error::one_line(last).replace(&self.url, &host_of(&self.url))
        ))
    }
}

impl Ping {
    pub fn name(self) -> &'static str {
        match self {
            Ping::Start => "start",
            Ping::Success => "success",
            Ping::Fail => "fail",
        }
    }
}

/// `ping_url` must be an http(s) URL with a host.
pub fn check_url(url: &str) -> Result<()> {
    if crate::config::is_ping_url(url) {
        return Ok(());
    }
    Err(Error::Setup(format!(
        "ping_url: `{}` is not an http:// or https:// URL",
        host_of(url)
    )))
}

/// The scheme and host of `url` (what may be shown of it).
fn host_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split('/').next().unwrap_or("");
    // Credentials in the authority are not shown either.
    let host = host.rsplit('@').next().unwrap_or(host);
    if scheme.is_empty() {
        "(not a URL)".to_string()
    } else {
        format!("{scheme}://{host}")
    }
}

/// The last `BODY_MAX` bytes of `body`, on a character boundary.
fn bounded(body: &str) -> &str {
    if body.len() <= BODY_MAX {
        return body;
    }
    let mut at = body.len() - BODY_MAX;
    while !body.is_char_boundary(at) {
        at += 1;
    }
    &body[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_shown_without_their_secret() {
        assert!(check_url("https://hc-ping.com/0b8a1f2e").is_ok());
        assert!(check_url("http://127.0.0.1:8000/ping/x").is_ok());
        for bad in ["hc-ping.com/x", "ftp://x/y", "https:///x", "https://a b/"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            host_of("https://user:pw@hc-ping.com/0b8a1f2e"),
            "https://hc-ping.com"
        );
    }

    #[test]
    fn bodies_keep_their_end() {
        let long = format!("{}é{}", "a".repeat(BODY_MAX), "the end");
        let b = bounded(&long);
        assert!(b.len() <= BODY_MAX && b.ends_with("the end"));
    }
}
