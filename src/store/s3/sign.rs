//! Signing: AWS Signature Version 4 in the `Authorization` header, for S3
//! requests and for STS calls (`creds/sts.rs`), with the credentials of
//! the moment (`creds/`): each attempt of each request is signed anew, so
//! temporary credentials refreshed mid-run sign every request after.
//!
//! Header signing, not presigned URLs: S3 treats them alike, but servers
//! that check IAM policies (moto, which the tests use for them) read the
//! header only, and the body's SHA-256 (`x-amz-content-sha256`) is signed
//! with it, so that the server refuses a body changed on the way.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::creds::Creds;
use super::{Headers, S3Store};
use crate::chunk::hex;

/// The SHA-256 of no bytes: the payload of a GET, HEAD or DELETE.
pub(super) const EMPTY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A request's method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
}

impl Method {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// One S3 request, before it is signed.
pub(super) struct Req<'a> {
    pub(super) method: Method,
    /// The object's full key (prefix included); None for the bucket.
    pub(super) object: Option<&'a str>,
    /// Query parameters (an empty value is a name alone, as `?restore`).
    pub(super) query: Vec<(&'a str, &'a str)>,
    /// Headers sent and signed (lower-case names).
    pub(super) headers: Headers,
    /// Headers sent unsigned: `range`, which a proxy or a server that
    /// ignores it may drop (the answer is checked: a 206 of exactly the
    /// length asked for, whose chunks hash to their ids).
    pub(super) unsigned: Headers,
    /// The SHA-256 of the body, in hex.
    pub(super) payload: String,
}

impl<'a> Req<'a> {
    /// A request without a body.
    pub(super) fn new(method: Method, object: Option<&'a str>) -> Req<'a> {
        Req {
            method,
            object,
            query: Vec::new(),
            headers: Vec::new(),
            unsigned: Vec::new(),
            payload: EMPTY_SHA256.to_string(),
        }
    }

    pub(super) fn query(mut self, name: &'a str, value: &'a str) -> Req<'a> {
        self.query.push((name, value));
        self
    }

    pub(super) fn header(mut self, name: &'static str, value: String) -> Req<'a> {
        self.headers.push((name, value));
        self
    }

    /// The body's SHA-256.
    pub(super) fn payload(mut self, sha256: &[u8; 32]) -> Req<'a> {
        self.payload = hex(sha256);
        self
    }
}

/// A signed request: where to send it, and every header to send with it
/// (but `host`, which the HTTP client sets from the URL, as signed).
pub(super) struct Signed {
    pub(super) url: String,
    pub(super) headers: Vec<(String, String)>,
}

impl Signed {
    /// `rb` with the signed headers.
    pub(super) fn apply<B>(&self, mut rb: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        for (name, value) in &self.headers {
            if name != "host" {
                rb = rb.header(name.as_str(), value.as_str());
            }
        }
        rb
    }
}

impl S3Store {
    /// `req` signed with `creds` (sent unsigned when None) at `now`
    /// (seconds since the epoch).
    pub(super) fn sign_with(&self, req: &Req<'_>, creds: Option<&Creds>, now: u64) -> Signed {
        let mut url = match req.object {
            Some(key) => self.bucket.object_url(key),
            None => self.bucket.base_url().clone(),
        };
        let mut query: Vec<(String, String)> = req
            .query
            .iter()
            .map(|(k, v)| (uri_encode(k), uri_encode(v)))
            .collect();
        query.sort();
        let shown: Vec<String> = query
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        url.set_query((!shown.is_empty()).then(|| shown.join("&")).as_deref());
        let mut headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.trim().to_string()))
            .collect();
        if let Some(c) = creds {
            headers.push(("x-amz-content-sha256".into(), req.payload.clone()));
            let scope = Scope {
                region: self.bucket.region(),
                service: "s3",
                now,
            };
            sign(
                c,
                &scope,
                req.method.as_str(),
                &url,
                &query,
                &mut headers,
                &req.payload,
            );
        }
        headers.extend(req.unsigned.iter().map(|(k, v)| (k.to_string(), v.clone())));
        Signed {
            url: url.to_string(),
            headers,
        }
    }
}

/// Where and when a signature is valid.
pub(super) struct Scope<'a> {
    pub(super) region: &'a str,
    pub(super) service: &'a str,
    /// Seconds since the epoch.
    pub(super) now: u64,
}

/// Sign a request to `url` whose query parameters are `query` (encoded,
/// sorted): adds `host`, `x-amz-date`, the session token when there is
/// one, and `authorization` to `headers` (lower-case names, every one of
/// them signed). `payload` is the body's SHA-256 in hex.
pub(super) fn sign(
    creds: &Creds,
    scope: &Scope<'_>,
    method: &str,
    url: &url::Url,
    query: &[(String, String)],
    headers: &mut Vec<(String, String)>,
    payload: &str,
) {
    let date = crate::time::amz_date(scope.now);
    headers.retain(|(k, _)| !matches!(k.as_str(), "host" | "x-amz-date" | "authorization"));
    headers.push(("host".into(), host_header(url)));
    headers.push(("x-amz-date".into(), date.clone()));
    if let Some(t) = creds.token() {
        headers.push(("x-amz-security-token".into(), t.to_string()));
    }
    headers.sort();
    let mut canonical = format!("{method}\n{}\n", canonical_path(url));
    let q: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    canonical.push_str(&q.join("&"));
    canonical.push('\n');
    for (k, v) in headers.iter() {
        canonical.push_str(&format!("{k}:{v}\n"));
    }
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    canonical.push_str(&format!("\n{signed}\n{payload}"));
    let day = &date[..8];
    let credential_scope = format!("{day}/{}/{}/aws4_request", scope.region, scope.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{credential_scope}\n{}",
        hex(Sha256::digest(canonical.as_bytes()).as_slice())
    );
    let mut key = hmac(format!("AWS4{}", creds.secret()).as_bytes(), day.as_bytes());
    for part in [scope.region, scope.service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    headers.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed}, \
             Signature={signature}",
            creds.key()
        ),
    ));
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The `Host` header the HTTP client sends for `url`: the port only when
/// it is not the scheme's default.
fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}

/// The path as sent: S3 signs it as it is (already encoded), once.
fn canonical_path(url: &url::Url) -> &str {
    match url.path() {
        "" => "/",
        p => p,
    }
}

/// RFC 3986 encoding as SigV4 wants it: everything but `A-Za-z0-9-_.~`.
pub(super) fn uri_encode(v: &str) -> String {
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

    /// AWS's own example of a signed GET with a Range header (the S3
    /// documentation's "Signature Calculations for the Authorization
    /// Header", GET Object).
    #[test]
    fn the_aws_example_signs_as_documented() {
        let creds = Creds::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
        );
        let url: url::Url = "https://examplebucket.s3.amazonaws.com/test.txt"
            .parse()
            .unwrap();
        let mut headers = vec![
            ("range".to_string(), "bytes=0-9".to_string()),
            ("x-amz-content-sha256".to_string(), EMPTY_SHA256.to_string()),
        ];
        let scope = Scope {
            region: "us-east-1",
            service: "s3",
            now: 1_369_353_600,
        };
        sign(&creds, &scope, "GET", &url, &[], &mut headers, EMPTY_SHA256);
        let auth = &headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        // A session token is signed and sent.
        let creds = Creds::new("AKIAIOSFODNN7EXAMPLE", "s", Some("tok".into()));
        let mut headers = Vec::new();
        sign(&creds, &scope, "GET", &url, &[], &mut headers, EMPTY_SHA256);
        assert!(headers.contains(&("x-amz-security-token".into(), "tok".into())));
        let auth = &headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert!(auth.contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"));
    }

    #[test]
    fn query_values_are_encoded_as_sigv4_wants() {
        assert_eq!(uri_encode("a b/c+d~e"), "a%20b%2Fc%2Bd~e");
        assert_eq!(uri_encode("AZaz09-_.~"), "AZaz09-_.~");
    }
}
