//! Credentials: where the keys that sign S3 requests come from, in the
//! AWS SDKs' order, and how temporary ones are kept fresh.
//!
//! The chain (the first that is configured wins):
//! 1. the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//!    `AWS_SESSION_TOKEN`;
//! 2. the config file's `access_key_id` and `secret_access_key`;
//! 3. the shared files (`~/.aws/credentials`, `~/.aws/config`; `AWS_PROFILE`,
//!    `AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`): static keys,
//!    `credential_process`, `role_arn` with `source_profile`,
//!    `credential_source` or `web_identity_token_file` (`profile.rs`), SSO
//!    (`sso.rs`: the token `aws sso login` left);
//! 4. web identity: `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`
//!    (STS AssumeRoleWithWebIdentity: EKS IRSA);
//! 5. container credentials: `AWS_CONTAINER_CREDENTIALS_FULL_URI` or
//!    `_RELATIVE_URI` (ECS, EKS Pod Identity);
//! 6. EC2 instance metadata (IMDSv2), unless `AWS_EC2_METADATA_DISABLED`.
//!
//! With none, requests go unsigned (a public bucket). The chain is walked
//! on the first request, not when the store is opened. Temporary
//! credentials are fetched again `REFRESH_AHEAD` before they expire, by
//! one thread while the others sign with the current ones; every request
//! is signed with the credentials of the moment, so a ten-hour run or the
//! daemon never sends one signed with expired keys.
//!
//! Whatever a credential endpoint answers (STS, IMDS, a container agent, a
//! process) is read within a size limit and a time limit, and checked. No
//! secret is ever shown: not in messages, not in `Debug`; a process's
//! output is never echoed.

mod http;
mod imds;
mod process;
mod profile;
mod sso;
mod sts;

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::store::settings::{AwsEnv, S3Config};

pub(super) use http::Http;

/// Temporary credentials are fetched again this long before they expire
/// (the AWS SDKs refresh 5 minutes ahead).
const REFRESH_AHEAD: u64 = 300;
/// After a failed refresh while the current credentials are still valid,
/// the next try waits this long (the current ones keep signing).
const RETRY_REFRESH: Duration = Duration::from_secs(15);

/// Keys that sign: an access key id, its secret, a session token for
/// temporary ones, and when they expire.
#[derive(Clone, PartialEq)]
pub(crate) struct Creds {
    key: String,
    secret: String,
    token: Option<String>,
    /// Seconds since the epoch.
    expires: Option<u64>,
}

impl Creds {
    #[cfg(test)]
    pub(crate) fn new(key: &str, secret: &str, token: Option<String>) -> Creds {
        Creds {
            key: key.to_string(),
            secret: secret.to_string(),
            token,
            expires: None,
        }
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Checked credentials from what a source gave (an endpoint, a file, a
    /// process: untrusted). Errors name the field, never its value.
    fn checked(
        key: &str,
        secret: &str,
        token: Option<&str>,
        expires: Option<u64>,
    ) -> Result<Creds, String> {
        check_field("access key id", key, 256)?;
        check_field("secret access key", secret, 256)?;
        if let Some(t) = token {
            check_field("session token", t, 16 << 10)?;
        }
        Ok(Creds {
            key: key.to_string(),
            secret: secret.to_string(),
            token: token.map(str::to_string),
            expires,
        })
    }
}

/// A value that goes into a header: printable ASCII, no space.
fn check_field(what: &str, v: &str, max: usize) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if v.len() > max {
        return Err(format!("the {what} is longer than {max} bytes"));
    }
    if !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the {what} holds characters that cannot go into a header"
        ));
    }
    Ok(())
}

/// The key id, never the secret nor the token.
impl fmt::Debug for Creds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Creds")
            .field("key", &self.key)
            .field("token", &self.token.as_ref().map(|_| "..."))
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Why no credentials could be had: whether asking again later may work
/// (an endpoint that did not answer), and what happened, in words that
/// name the source and never a secret.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CredError {
    pub(crate) transient: bool,
    pub(crate) msg: String,
}

impl CredError {
    fn permanent(msg: impl Into<String>) -> CredError {
        CredError {
            transient: false,
            msg: msg.into(),
        }
    }

    fn transient(msg: impl Into<String>) -> CredError {
        CredError {
            transient: true,
            msg: msg.into(),
        }
    }

    /// The same error, said of `what`.
    fn of(self, what: &str) -> CredError {
        CredError {
            msg: format!("{what}: {}", self.msg),
            ..self
        }
    }
}

type Fetched = Result<Creds, CredError>;

/// One place credentials come from.
trait Source: Send + Sync {
    /// Credentials, now (files are read again, processes run, endpoints
    /// asked).
    fn fetch(&self, http: &Http) -> Fetched;
    /// What it is, for `store info` and messages.
    fn describe(&self) -> String;
}

/// Keys given as they are: the environment, the config file, a profile.
struct Fixed {
    creds: Creds,
    what: String,
}

impl Source for Fixed {
    fn fetch(&self, _: &Http) -> Fetched {
        Ok(self.creds.clone())
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// What the chain found: a source, or none (unsigned requests) and what
/// was looked at.
enum Found {
    Source(Box<dyn Source>),
    Nothing(String),
}

/// The credentials a store signs with: the chain walked once, then the
/// current credentials, refreshed ahead of their expiry.
pub(crate) struct Chain {
    aws: AwsEnv,
    /// `[s3] access_key_id` and `secret_access_key`.
    config_keys: (Option<String>, Option<String>),
    /// The S3 region (STS's when nothing else says).
    region: String,
    http: Http,
    found: Mutex<Option<Arc<Found>>>,
    current: RwLock<Option<Arc<Creds>>>,
    /// Held by the thread that fetches; when the last try failed.
    refresh: Mutex<Option<Instant>>,
}

impl Chain {
    pub(crate) fn new(cfg: &S3Config, http: Http) -> Chain {
        Chain {
            aws: cfg.aws.clone(),
            config_keys: (cfg.access_key_id.clone(), cfg.secret_access_key.clone()),
            region: cfg.region.clone(),
            http,
            found: Mutex::new(None),
            current: RwLock::new(None),
            refresh: Mutex::new(None),
        }
    }

    /// The chain walked (once).
    fn found(&self) -> Result<Arc<Found>, CredError> {
        let mut f = self
            .found
            .lock()
            .expect("credential chain poisoned by a panic");
        if let Some(found) = &*f {
            return Ok(found.clone());
        }
        let found = Arc::new(self.walk()?);
        *f = Some(found.clone());
        Ok(found)
    }

    /// The first configured source, in the SDKs' order.
    fn walk(&self) -> Result<Found, CredError> {
        let a = &self.aws;
        let mut looked = Vec::new();
        // 1. and 2. The environment, then the config file, key by key (an
        // access key id in the config with its secret in the environment
        // works, as it always did).
        let (ck, cs) = &self.config_keys;
        let key = a.access_key_id.as_ref().or(ck.as_ref());
        let secret = a.secret_access_key.as_ref().or(cs.as_ref());
        match (key, secret) {
            (Some(k), Some(s)) => {
                let env_key = a.access_key_id.is_some();
                let env_secret = a.secret_access_key.is_some();
                let what = match (env_key, env_secret) {
                    (true, true) if a.session_token.is_some() => {
                        "the environment (AWS_ACCESS_KEY_ID, with AWS_SESSION_TOKEN)"
                    }
                    (true, true) => "the environment (AWS_ACCESS_KEY_ID)",
                    (false, false) => "the config file (access_key_id, secret_access_key)",
                    _ => "the environment and the config file (access_key_id, secret_access_key)",
                };
                let token = if env_key {
                    a.session_token.as_deref()
                } else {
                    None
                };
                let creds = Creds::checked(k, s, token, None)
                    .map_err(|m| CredError::permanent(format!("{what}: {m}")))?;
                return Ok(fixed(creds, what));
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(CredError::permanent(
                    "an access key id without its secret, or a secret without its key id \
                     (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or [s3] access_key_id and \
                     secret_access_key)",
                ));
            }
            (None, None) => looked.push("the environment, the config file"),
        }
        // 3. The shared files.
        let files = profile::Files::read(a)?;
        let name = a.profile.clone().unwrap_or_else(|| "default".into());
        match files.source(&name, a, &self.region)? {
            Some(s) => return Ok(Found::Source(s)),
            None if a.profile.is_some() => {
                return Err(CredError::permanent(format!(
                    "AWS_PROFILE is `{}`, but {} has no such profile",
                    crate::error::one_line(name),
                    files.describe()
                )));
            }
            None => looked.push("profile `default`"),
        }
        // 4. Web identity.
        if let (Some(role), Some(file)) = (&a.role_arn, &a.web_identity_token_file) {
            let s = sts::WebIdentity {
                sts: sts::Sts::new(a, None, &self.region),
                role_arn: role.clone(),
                token_file: file.clone(),
                session_name: a.role_session_name.clone(),
                what: format!(
                    "web identity (AWS_WEB_IDENTITY_TOKEN_FILE, role {})",
                    crate::error::one_line(role.clone())
                ),
            };
            return Ok(Found::Source(Box::new(s)));
        }
        looked.push("web identity");
        // 5. Container credentials.
        if let Some(c) = imds::Container::from_env(a)? {
            return Ok(Found::Source(Box::new(c)));
        }
        looked.push("container credentials");
        // 6. EC2 instance metadata, when it answers.
        if a.imds_disabled {
            looked.push("EC2 instance metadata (disabled)");
        } else {
            let i = imds::Imds::new(a);
            match i.probe(&self.http) {
                Ok(()) => return Ok(Found::Source(Box::new(i))),
                Err(why) => looked.push(if why.transient {
                    "EC2 instance metadata (no answer)"
                } else {
                    "EC2 instance metadata (no instance role)"
                }),
            }
        }
        Ok(Found::Nothing(format!(
            "no credentials found (looked at {}): requests are unsigned",
            looked.join(", ")
        )))
    }

    /// The credentials to sign with now, None to send unsigned.
    pub(crate) fn current(&self) -> Result<Option<Arc<Creds>>, CredError> {
        let now = crate::time::now();
        let have = self
            .current
            .read()
            .expect("credentials poisoned by a panic")
            .clone();
        if let Some(c) = &have {
            match c.expires {
                None => return Ok(have),
                Some(e) if e > now.saturating_add(REFRESH_AHEAD) => return Ok(have),
                // Still valid: whoever gets the refresh lock fetches, the
                // others sign with these meanwhile.
                Some(e) if e > now + 10 => {
                    let Ok(mut last) = self.refresh.try_lock() else {
                        return Ok(have);
                    };
                    if last.is_some_and(|t| t.elapsed() < RETRY_REFRESH) {
                        return Ok(have);
                    }
                    match self.fetch() {
                        Ok(fresh) => {
                            *last = None;
                            return Ok(fresh);
                        }
                        Err(_) => {
                            // Tried again after RETRY_REFRESH; the expiry
                            // itself turns this into an error.
                            *last = Some(Instant::now());
                            return Ok(have);
                        }
                    }
                }
                Some(_) => {}
            }
        }
        let found = self.found()?;
        if let Found::Nothing(_) = &*found {
            return Ok(None);
        }
        let mut last = self
            .refresh
            .lock()
            .expect("credential refresh poisoned by a panic");
        // Another thread may have fetched while this one waited.
        if let Some(c) = self
            .current
            .read()
            .expect("credentials poisoned by a panic")
            .clone()
        {
            if c.expires.is_none_or(|e| e > now + 10) {
                return Ok(Some(c));
            }
        }
        let fresh = self.fetch()?;
        *last = None;
        Ok(fresh)
    }

    /// Fetch from the source found and make them current.
    fn fetch(&self) -> Result<Option<Arc<Creds>>, CredError> {
        let found = self.found()?;
        let Found::Source(src) = &*found else {
            return Ok(None);
        };
        let creds = src.fetch(&self.http).map_err(|e| e.of(&src.describe()))?;
        let now = crate::time::now();
        if let Some(e) = creds.expires.filter(|e| *e <= now) {
            return Err(CredError::permanent(format!(
                "{}: the credentials it gave expired at {}",
                src.describe(),
                crate::time::display(e)
            )));
        }
        let creds = Arc::new(creds);
        *self
            .current
            .write()
            .expect("credentials poisoned by a panic") = Some(creds.clone());
        Ok(Some(creds))
    }

    /// Which source signs (walking the chain if no request did yet).
    pub(crate) fn describe(&self) -> String {
        match self.found().as_deref() {
            Ok(Found::Source(s)) => s.describe(),
            Ok(Found::Nothing(why)) => why.clone(),
            Err(e) => format!("none: {}", e.msg),
        }
    }

    /// What signs, for a message, once the chain was walked (never walks
    /// it: an error is being reported).
    pub(crate) fn known_source(&self) -> Option<String> {
        let f = self
            .found
            .lock()
            .expect("credential chain poisoned by a panic");
        f.as_deref().map(|found| match found {
            Found::Source(s) => format!("signed with credentials from {}", s.describe()),
            Found::Nothing(why) => why.clone(),
        })
    }
}

fn fixed(creds: Creds, what: &str) -> Found {
    Found::Source(Box::new(Fixed {
        creds,
        what: what.to_string(),
    }))
}

/// Expiry from what an endpoint said (`2026-12-07T16:00:00Z`, or with an
/// offset): None when it said nothing, an error when it said something
/// unreadable.
fn expiry(v: Option<&str>) -> Result<Option<u64>, String> {
    let Some(v) = v else { return Ok(None) };
    if let Ok(t) = v.parse::<jiff::Timestamp>() {
        return u64::try_from(t.as_second())
            .map(Some)
            .map_err(|_| "an expiration before 1970".to_string());
    }
    crate::time::parse_s3(v)
        .map(Some)
        .ok_or_else(|| "an unreadable expiration".to_string())
}

/// Credentials from the JSON that IMDS, container endpoints and
/// `credential_process` give (`AccessKeyId`, `SecretAccessKey`, `Token`
/// or `SessionToken`, `Expiration`).
fn from_json(body: &[u8]) -> Result<Creds, String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("not JSON (line {}, column {})", e.line(), e.column()))?;
    let field = |name: &str| v.get(name).and_then(|x| x.as_str());
    if let Some(code) = field("Code").filter(|c| *c != "Success") {
        return Err(format!(
            "it answered with code {}",
            crate::error::one_line(code.chars().take(64).collect())
        ));
    }
    let key = field("AccessKeyId").ok_or("no AccessKeyId")?;
    let secret = field("SecretAccessKey").ok_or("no SecretAccessKey")?;
    let token = field("SessionToken").or_else(|| field("Token"));
    let expires = expiry(field("Expiration"))?;
    Creds::checked(key, secret, token, expires)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_json_are_checked_and_never_shown() {
        let c = from_json(
            br#"{"Version":1,"AccessKeyId":"ASIAX","SecretAccessKey":"s3cr3t","SessionToken":"t0k","Expiration":"2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(
            (c.key(), c.secret(), c.token()),
            ("ASIAX", "s3cr3t", Some("t0k"))
        );
        assert_eq!(c.expires, crate::time::parse_s3("2030-01-01T00:00:00Z"));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("t0k"),
            "{shown}"
        );
        // IMDS's spelling, an offset.
        let c = from_json(
            br#"{"Code":"Success","AccessKeyId":"A","SecretAccessKey":"S","Token":"T","Expiration":"2030-01-01T02:00:00+02:00"}"#,
        )
        .unwrap();
        assert_eq!(c.expires, crate::time::parse_s3("2030-01-01T00:00:00Z"));
        for (bad, want) in [
            (&br#"{"AccessKeyId":"A"}"#[..], "no SecretAccessKey"),
            (
                br#"{"AccessKeyId":"A B","SecretAccessKey":"S"}"#,
                "cannot go into a header",
            ),
            (
                br#"{"AccessKeyId":"A","SecretAccessKey":"hunter2 "}"#,
                "secret access key",
            ),
            (
                br#"{"Code":"Failure","AccessKeyId":"A","SecretAccessKey":"S"}"#,
                "code Failure",
            ),
            (
                br#"{"AccessKeyId":"A","SecretAccessKey":"S","Expiration":"soon"}"#,
                "unreadable",
            ),
            (b"AccessKeyId=hunter2", "not JSON"),
        ] {
            let e = from_json(bad).unwrap_err();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
