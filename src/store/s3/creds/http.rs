//! The HTTP calls of the credential chain (STS, EC2 instance metadata,
//! container endpoints): over ureq like the store's, never following a
//! redirect, every call bounded in time and every answer in size.

use std::time::Duration;

use super::CredError;

/// The longest answer a credential endpoint may give (an STS answer is
/// about 2 KB; IMDS and container answers less).
pub(super) const ANSWER_MAX: u64 = 64 << 10;

/// Agents for credential endpoints: one for link-local and loopback
/// metadata services (they answer at once or not at all), one for STS.
#[derive(Clone)]
pub(crate) struct Http {
    local: ureq::Agent,
    remote: ureq::Agent,
}

/// An answer: its status and body.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
}

impl Http {
    /// `tls`: the roots to trust for https endpoints (the store's).
    pub(crate) fn new(tls: Option<ureq::tls::TlsConfig>) -> Http {
        let agent = |connect: u64, total: u64, local: bool| {
            let mut b = ureq::Agent::config_builder()
                // The metadata endpoints are link-local or loopback: never
                // through a proxy (`HTTPS_PROXY`), which would see the
                // credentials they hand out. STS goes the store's way.
                .proxy(if local {
                    None
                } else {
                    ureq::Proxy::try_from_env()
                })
                .http_status_as_error(false)
                .max_redirects(0)
                .timeout_connect(Some(Duration::from_secs(connect)))
                .timeout_global(Some(Duration::from_secs(total)));
            if let Some(t) = &tls {
                b = b.tls_config(t.clone());
            }
            let a: ureq::Agent = b.build().into();
            a
        };
        Http {
            // The SDKs give IMDS one second; a little more for a loaded host.
            local: agent(2, 5, true),
            remote: agent(15, 60, false),
        }
    }

    /// One call: `method` to `url` with `headers` and `body`, on the
    /// local (metadata) or the remote (STS) agent. A transport failure or
    /// a 5xx or 429 is transient; the body is read to `ANSWER_MAX` bytes.
    pub(super) fn call(
        &self,
        local: bool,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        body: Option<&[u8]>,
    ) -> Result<Answer, CredError> {
        let agent = if local { &self.local } else { &self.remote };
        let resp = match (method, body) {
            ("PUT", b) => {
                let mut r = agent.put(url);
                for (k, v) in headers {
                    r = r.header(k.as_str(), v.as_str());
                }
                r.send(b.unwrap_or_default())
            }
            ("POST", b) => {
                let mut r = agent.post(url);
                for (k, v) in headers {
                    r = r.header(k.as_str(), v.as_str());
                }
                r.send(b.unwrap_or_default())
            }
            _ => {
                let mut r = agent.get(url);
                for (k, v) in headers {
                    r = r.header(k.as_str(), v.as_str());
                }
                r.call()
            }
        };
        let resp = resp.map_err(|e| CredError::transient(format!("no answer: {e}")))?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            return Err(CredError::permanent(format!(
                "it answered with a redirect (HTTP {status}), never followed"
            )));
        }
        let body = crate::store::read_bounded(resp.into_body().into_reader(), ANSWER_MAX)
            .map_err(|e| CredError::transient(format!("reading its answer: {e}")))?
            .ok_or_else(|| {
                CredError::permanent(format!(
                    "its answer is longer than {ANSWER_MAX} bytes; refused"
                ))
            })?;
        if status == 429 || status >= 500 {
            return Err(CredError::transient(format!("it answered HTTP {status}")));
        }
        Ok(Answer { status, body })
    }
}
