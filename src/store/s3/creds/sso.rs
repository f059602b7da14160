//! IAM Identity Center (SSO) profiles: `sso_session` (naming an
//! `[sso-session NAME]` section with `sso_start_url` and `sso_region`) or
//! the legacy `sso_start_url` and `sso_region` in the profile itself, with
//! `sso_account_id` and `sso_role_name`.
//!
//! vaultik does not sign in: `aws sso login` leaves an access token in
//! `~/.aws/sso/cache/<SHA-1 of the session name, or of the start URL for
//! a legacy profile>.json`. That file is read (bounded, checked) and the
//! token exchanged at the SSO portal (`GetRoleCredentials`) for temporary
//! credentials, fetched again before they expire for as long as the token
//! lasts. An expired token is not refreshed, which would rewrite the AWS
//! CLI's cache under it: the error says to sign in again.

use std::path::PathBuf;

use super::http::Http;
use super::{CredError, Creds, Fetched, Source};

/// The token cache is a few hundred bytes; anything bigger is not one.
const CACHE_MAX: u64 = 64 << 10;
/// An access token is about a kilobyte.
const TOKEN_MAX: usize = 16 << 10;

pub(super) struct Sso {
    /// The token cache file.
    pub(super) cache: PathBuf,
    /// `https://portal.sso.REGION.amazonaws.com`, or `AWS_ENDPOINT_URL_SSO`.
    pub(super) portal: String,
    pub(super) account_id: String,
    pub(super) role_name: String,
    /// The profile's name, for messages and the sign-in hint.
    pub(super) profile: String,
}

impl Sso {
    fn login(&self) -> String {
        format!(
            "sign in with `aws sso login --profile {}`",
            crate::error::one_line(self.profile.clone())
        )
    }

    /// The access token of the cache, if it has not expired.
    fn token(&self, now: u64) -> Result<String, CredError> {
        let name = self.cache.display();
        let f = match std::fs::File::open(&self.cache) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CredError::permanent(format!(
                    "no SSO token at {name}: {}",
                    self.login()
                )));
            }
            Err(e) => return Err(CredError::permanent(format!("SSO token {name}: {e}"))),
        };
        let bytes = crate::store::read_bounded(f, CACHE_MAX)
            .map_err(|e| CredError::permanent(format!("SSO token {name}: {e}")))?
            .ok_or_else(|| {
                CredError::permanent(format!(
                    "SSO token {name}: larger than {CACHE_MAX} bytes; not read"
                ))
            })?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
            CredError::permanent(format!(
                "SSO token {name}: not JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let token = v
            .get("accessToken")
            .and_then(|t| t.as_str())
            .ok_or_else(|| CredError::permanent(format!("SSO token {name}: no accessToken")))?;
        if token.is_empty()
            || token.len() > TOKEN_MAX
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(CredError::permanent(format!(
                "SSO token {name}: an accessToken that cannot be sent"
            )));
        }
        let expires = super::expiry(v.get("expiresAt").and_then(|t| t.as_str()))
            .map_err(|m| CredError::permanent(format!("SSO token {name}: {m}")))?
            .ok_or_else(|| CredError::permanent(format!("SSO token {name}: no expiresAt")))?;
        if expires <= now {
            return Err(CredError::permanent(format!(
                "the SSO token in {name} expired at {}: {}",
                crate::time::rfc3339(expires),
                self.login()
            )));
        }
        Ok(token.to_string())
    }
}

impl Source for Sso {
    fn fetch(&self, http: &Http) -> Fetched {
        let token = self.token(crate::time::now())?;
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let url = format!(
            "{}/federation/credentials?account_id={}&role_name={}",
            self.portal.trim_end_matches('/'),
            enc(&self.account_id),
            enc(&self.role_name)
        );
        let headers = [("x-amz-sso_bearer_token".to_string(), token)];
        let a = http
            .call(false, "GET", &url, &headers, None)
            .map_err(|e| e.of("the SSO portal"))?;
        match a.status {
            200 => role_credentials(&a.body)
                .map_err(|m| CredError::permanent(format!("the SSO portal: {m}"))),
            401 | 403 => Err(CredError::permanent(format!(
                "the SSO portal refused the token (HTTP {}): {}, or check sso_account_id and \
                 sso_role_name",
                a.status,
                self.login()
            ))),
            s => Err(CredError::permanent(format!(
                "the SSO portal answered HTTP {s}"
            ))),
        }
    }

    fn describe(&self) -> String {
        format!(
            "profile `{}` (SSO, role {} in account {})",
            crate::error::one_line(self.profile.clone()),
            crate::error::one_line(self.role_name.clone()),
            crate::error::one_line(self.account_id.clone())
        )
    }
}

/// `GetRoleCredentials`' answer: `roleCredentials` with `accessKeyId`,
/// `secretAccessKey`, `sessionToken` and `expiration` (milliseconds since
/// the epoch).
fn role_credentials(body: &[u8]) -> Result<Creds, String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("not JSON (line {}, column {})", e.line(), e.column()))?;
    let rc = v.get("roleCredentials").ok_or("no roleCredentials")?;
    let field = |name: &str| rc.get(name).and_then(|x| x.as_str());
    let key = field("accessKeyId").ok_or("no accessKeyId")?;
    let secret = field("secretAccessKey").ok_or("no secretAccessKey")?;
    let token = field("sessionToken").ok_or("no sessionToken")?;
    let expires = rc
        .get("expiration")
        .and_then(|x| x.as_u64())
        .ok_or("no expiration")?
        / 1000;
    Creds::checked(key, secret, Some(token), Some(expires))
}

/// The name of the token cache file: the SHA-1 of the session name (or
/// the start URL), in hex, as the AWS CLI and SDKs name it.
pub(super) fn cache_name(key: &str) -> String {
    format!("{}.json", crate::chunk::hex(&sha1(key.as_bytes())))
}

/// SHA-1 (FIPS 180-4), for the cache file's name only: no crate in the
/// tree has it, and it names a file, it secures nothing.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(v);
        }
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_of_the_standard_vectors_and_the_clis_cache_names() {
        let hex = |d: &[u8]| crate::chunk::hex(&sha1(d));
        assert_eq!(hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
        );
        assert_eq!(
            hex(&vec![b'a'; 1_000_000]),
            "34aa973cd4c4daa4f61eeb2bdbad27316534016f"
        );
        // The AWS SDKs' documented example: session `my-sso`.
        assert_eq!(cache_name("my-sso"), format!("{}.json", hex(b"my-sso")));
    }

    #[test]
    fn role_credentials_are_read_and_checked() {
        let c = role_credentials(
            br#"{"roleCredentials":{"accessKeyId":"ASIA1","secretAccessKey":"s3cr3t","sessionToken":"t","expiration":1893456000000}}"#,
        )
        .unwrap();
        assert_eq!(c.key(), "ASIA1");
        assert_eq!(c.expires, Some(1_893_456_000));
        for bad in [
            &br#"{}"#[..],
            br#"{"roleCredentials":{"accessKeyId":"A","secretAccessKey":"hunter2","sessionToken":"T"}}"#,
            br#"{"roleCredentials":{"accessKeyId":"A B","secretAccessKey":"hunter2","sessionToken":"T","expiration":1}}"#,
            b"not json",
        ] {
            let e = role_credentials(bad).unwrap_err();
            assert!(!e.is_empty() && !e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn the_token_cache_is_read_within_bounds_and_an_expired_one_says_sign_in() {
        let d = tempfile::tempdir().unwrap();
        let sso = |cache: &str| Sso {
            cache: d.path().join(cache),
            portal: "http://127.0.0.1:1".into(),
            account_id: "123456789012".into(),
            role_name: "Backup".into(),
            profile: "corp".into(),
        };
        let now = 1_800_000_000;
        std::fs::write(
            d.path().join("ok.json"),
            r#"{"startUrl":"https://x.awsapps.com/start","region":"eu-west-1","accessToken":"tok","expiresAt":"2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(sso("ok.json").token(now).unwrap(), "tok");
        // The legacy spelling of the time.
        std::fs::write(
            d.path().join("old.json"),
            r#"{"accessToken":"tok","expiresAt":"2030-01-01T00:00:00UTC"}"#,
        )
        .unwrap();
        assert_eq!(sso("old.json").token(now).unwrap(), "tok");
        let e = sso("ok.json").token(1_900_000_000).unwrap_err().msg;
        assert!(
            e.contains("expired at") && e.contains("aws sso login --profile corp"),
            "{e}"
        );
        let e = sso("none.json").token(now).unwrap_err().msg;
        assert!(
            e.contains("no SSO token at") && e.contains("aws sso login"),
            "{e}"
        );
        std::fs::write(d.path().join("big.json"), vec![b' '; 70_000]).unwrap();
        let e = sso("big.json").token(now).unwrap_err().msg;
        assert!(e.contains("larger than"), "{e}");
        std::fs::write(
            d.path().join("bad.json"),
            r#"{"accessToken":"a b","expiresAt":"2030-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let e = sso("bad.json").token(now).unwrap_err().msg;
        assert!(e.contains("cannot be sent") && !e.contains("a b"), "{e}");
    }
}
