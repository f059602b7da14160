//! Signing: every request is presigned (SigV4 in the query string) with
//! rusty-s3, for its actions and for those it has none for.

use std::time::Duration;

use rusty_s3::S3Action;

use super::{Headers, S3Store};

/// Presigned URLs are used at once; an hour covers the slowest upload.
pub(super) const SIGN_FOR: Duration = Duration::from_secs(3600);

impl S3Store {
    pub(super) fn sign<'b>(&self, action: &impl S3Action<'b>) -> String {
        action.sign(SIGN_FOR).to_string()
    }

    /// A presigned PUT of `full` with `headers` signed.
    pub(super) fn sign_put(&self, full: &str, headers: &Headers) -> String {
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
    pub(super) fn sign_url(
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
}

/// A query value, percent-encoded (unsigned requests only: signing
/// encodes its own).
pub(super) fn query_escape(v: &str) -> String {
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
