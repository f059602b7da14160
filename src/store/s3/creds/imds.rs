//! Metadata endpoints: EC2 instance metadata (IMDSv2: a session token
//! from a PUT, then the instance role's name, then its credentials) and
//! container credentials (ECS, EKS Pod Identity: one GET, with an
//! authorization token when one is given).

use std::path::PathBuf;

use super::http::Http;
use super::{CredError, Fetched, Source};
use crate::store::settings::AwsEnv;

const IMDS: &str = "http://169.254.169.254";
/// The ECS agent's address, for `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`.
const ECS: &str = "http://169.254.170.2";
/// What an IMDS session token is asked to last, in seconds (the most).
const TOKEN_TTL: &str = "21600";

/// EC2 instance metadata, IMDSv2 only.
pub(super) struct Imds {
    endpoint: String,
}

impl Imds {
    pub(super) fn new(aws: &AwsEnv) -> Imds {
        let endpoint = aws
            .imds_endpoint
            .clone()
            .unwrap_or_else(|| IMDS.to_string());
        Imds {
            endpoint: endpoint.trim_end_matches('/').to_string(),
        }
    }

    fn token(&self, http: &Http) -> Result<String, CredError> {
        let a = http.call(
            true,
            "PUT",
            &format!("{}/latest/api/token", self.endpoint),
            &[(
                "x-aws-ec2-metadata-token-ttl-seconds".into(),
                TOKEN_TTL.into(),
            )],
            None,
        )?;
        if a.status != 200 {
            return Err(CredError::permanent(format!(
                "the session token (IMDSv2) was refused: HTTP {}",
                a.status
            )));
        }
        let t = String::from_utf8(a.body)
            .map_err(|_| CredError::permanent("the session token is not text"))?;
        let t = t.trim();
        if t.is_empty() || t.len() > 4096 || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CredError::permanent(
                "the session token is empty, too long or not printable",
            ));
        }
        Ok(t.to_string())
    }

    fn role(&self, http: &Http, token: &str) -> Result<String, CredError> {
        let a = http.call(
            true,
            "GET",
            &format!(
                "{}/latest/meta-data/iam/security-credentials/",
                self.endpoint
            ),
            &[("x-aws-ec2-metadata-token".into(), token.into())],
            None,
        )?;
        if a.status == 404 {
            return Err(CredError::permanent(
                "this instance has no instance role (instance profile)",
            ));
        }
        if a.status != 200 {
            return Err(CredError::permanent(format!(
                "the instance role's name: HTTP {}",
                a.status
            )));
        }
        let text = String::from_utf8_lossy(&a.body);
        let role = text.lines().next().unwrap_or_default().trim();
        // IAM role names: at most 64 of [\w+=,.@-].
        if role.is_empty()
            || role.len() > 64
            || !role
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
        {
            return Err(CredError::permanent(
                "the instance role's name is not one IAM allows",
            ));
        }
        Ok(role.to_string())
    }

    /// Whether this host has instance metadata with a role: a transient
    /// error when nothing answers (not on EC2).
    pub(super) fn probe(&self, http: &Http) -> Result<(), CredError> {
        let token = self.token(http)?;
        self.role(http, &token).map(drop)
    }
}

impl Source for Imds {
    fn fetch(&self, http: &Http) -> Fetched {
        let token = self.token(http)?;
        let role = self.role(http, &token)?;
        let a = http.call(
            true,
            "GET",
            &format!(
                "{}/latest/meta-data/iam/security-credentials/{role}",
                self.endpoint
            ),
            &[("x-aws-ec2-metadata-token".into(), token)],
            None,
        )?;
        if a.status != 200 {
            return Err(CredError::permanent(format!(
                "the credentials of role {role}: HTTP {}",
                a.status
            )));
        }
        super::from_json(&a.body).map_err(|m| CredError::permanent(format!("role {role}: {m}")))
    }

    fn describe(&self) -> String {
        format!("EC2 instance metadata (IMDSv2, {})", self.endpoint)
    }
}

/// Container credentials: a GET of a local agent's URL.
pub(super) struct Container {
    url: String,
    token: Option<Token>,
}

enum Token {
    Value(String),
    /// Read anew each time (EKS Pod Identity rotates it).
    File(PathBuf),
}

impl Container {
    /// From `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`, when
    /// set. A full URI must be https, or reach this host (loopback) or
    /// the ECS and EKS agents' addresses: the token is sent to it.
    pub(super) fn from_env(aws: &AwsEnv) -> Result<Option<Container>, CredError> {
        let url = match (&aws.container_relative_uri, &aws.container_full_uri) {
            (Some(rel), _) => {
                if !rel.starts_with('/') {
                    return Err(CredError::permanent(
                        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI must start with /",
                    ));
                }
                format!("{ECS}{rel}")
            }
            (None, Some(full)) => {
                let u: url::Url = full.parse().map_err(|e| {
                    CredError::permanent(format!("AWS_CONTAINER_CREDENTIALS_FULL_URI: {e}"))
                })?;
                if !allowed(&u) {
                    return Err(CredError::permanent(
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI must be https, or reach this host \
                         (loopback) or the ECS or EKS agent (169.254.170.2, 169.254.170.23, \
                         fd00:ec2::23)",
                    ));
                }
                full.clone()
            }
            (None, None) => return Ok(None),
        };
        let token = match (&aws.container_token_file, &aws.container_token) {
            (Some(f), _) => Some(Token::File(f.clone())),
            (None, Some(t)) => Some(Token::Value(t.clone())),
            (None, None) => None,
        };
        Ok(Some(Container { url, token }))
    }
}

fn allowed(u: &url::Url) -> bool {
    if u.scheme() == "https" {
        return true;
    }
    if u.scheme() != "http" {
        return false;
    }
    match u.host() {
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback()
                || ip.octets() == [169, 254, 170, 2]
                || ip.octets() == [169, 254, 170, 23]
        }
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23]
        }
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

impl Source for Container {
    fn fetch(&self, http: &Http) -> Fetched {
        let mut headers = Vec::new();
        match &self.token {
            Some(Token::Value(t)) => {
                if !t.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
                    return Err(CredError::permanent(
                        "AWS_CONTAINER_AUTHORIZATION_TOKEN holds characters a header cannot",
                    ));
                }
                headers.push(("authorization".to_string(), t.clone()));
            }
            Some(Token::File(f)) => {
                let t = super::sts::read_token(f, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")?;
                headers.push(("authorization".to_string(), t));
            }
            None => {}
        }
        let a = http.call(true, "GET", &self.url, &headers, None)?;
        if a.status != 200 {
            return Err(CredError::permanent(format!("HTTP {}", a.status)));
        }
        super::from_json(&a.body).map_err(CredError::permanent)
    }

    fn describe(&self) -> String {
        // The URL may carry an id, never a secret; the token is not shown.
        format!(
            "container credentials ({})",
            crate::error::one_line(self.url.chars().take(200).collect())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_uri_must_stay_on_this_host_or_use_tls() {
        for (u, ok) in [
            ("http://127.0.0.1:8080/creds", true),
            ("http://localhost/creds", true),
            ("http://[::1]/x", true),
            ("http://169.254.170.23/v1/credentials", true),
            ("http://[fd00:ec2::23]/v1/credentials", true),
            ("https://example.com/creds", true),
            ("http://example.com/creds", false),
            ("http://10.0.0.1/creds", false),
            ("ftp://127.0.0.1/x", false),
        ] {
            let aws = AwsEnv {
                container_full_uri: Some(u.into()),
                ..Default::default()
            };
            assert_eq!(Container::from_env(&aws).is_ok(), ok, "{u}");
        }
        let aws = AwsEnv {
            container_relative_uri: Some("/v2/credentials/x".into()),
            ..Default::default()
        };
        let c = Container::from_env(&aws).unwrap().unwrap();
        assert_eq!(c.url, "http://169.254.170.2/v2/credentials/x");
    }
}
