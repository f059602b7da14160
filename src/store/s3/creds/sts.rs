//! STS: AssumeRole (signed with SigV4, with the credentials of another
//! source) and AssumeRoleWithWebIdentity (unsigned: the token file is the
//! proof), over the same blocking HTTP stack, no SDK. The answer is XML,
//! read within a size limit and checked.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::http::Http;
use super::{CredError, Creds, Fetched, Source};
use crate::store::s3::sign::{Scope, sign, uri_encode};
use crate::store::settings::AwsEnv;

/// What a role session lasts (STS's default; the role may allow more).
const DURATION: u64 = 3600;
/// The largest web identity token read (JWTs are a few KiB).
const TOKEN_MAX: u64 = 64 << 10;

/// Where STS is asked, and in which region it signs.
pub(super) struct Sts {
    endpoint: String,
    region: String,
}

impl Sts {
    /// `AWS_ENDPOINT_URL_STS` (or `AWS_ENDPOINT_URL`) when set, else AWS's
    /// regional endpoint of `AWS_REGION`, the profile's `region`, or the
    /// store's region when it is one of AWS's.
    pub(super) fn new(aws: &AwsEnv, profile_region: Option<&str>, store_region: &str) -> Sts {
        let region = aws
            .region
            .clone()
            .or_else(|| profile_region.map(str::to_string))
            .filter(|r| is_region(r))
            .or_else(|| is_region(store_region).then(|| store_region.to_string()))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = aws
            .sts_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        Sts { endpoint, region }
    }

    /// Call `action` with `params`, signed with `creds` when given.
    fn call(&self, http: &Http, params: &[(&str, &str)], creds: Option<&Creds>) -> Fetched {
        let mut url: url::Url = self.endpoint.parse().map_err(|e| {
            CredError::permanent(format!(
                "STS endpoint `{}`: {e}",
                crate::error::one_line(self.endpoint.clone())
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CredError::permanent(format!(
                "STS endpoint `{}`: not an http or https URL",
                crate::error::one_line(self.endpoint.clone())
            )));
        }
        url.set_query(None);
        let mut form: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (uri_encode(k), uri_encode(v)))
            .collect();
        form.sort();
        let body: Vec<String> = form.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let body = body.join("&");
        let mut headers = vec![(
            "content-type".to_string(),
            "application/x-www-form-urlencoded; charset=utf-8".to_string(),
        )];
        if let Some(c) = creds {
            let payload = crate::chunk::hex(Sha256::digest(body.as_bytes()).as_slice());
            let scope = Scope {
                region: &self.region,
                service: "sts",
                now: crate::time::now(),
            };
            sign(c, &scope, "POST", &url, &[], &mut headers, &payload);
        }
        headers.retain(|(k, _)| k != "host");
        let a = http.call(false, "POST", url.as_str(), &headers, Some(body.as_bytes()))?;
        let text = String::from_utf8_lossy(&a.body);
        if a.status != 200 {
            let code = field(&text, "Code").unwrap_or_default();
            let message = field(&text, "Message").unwrap_or_default();
            return Err(CredError::permanent(format!(
                "STS at {} answered HTTP {} {}{}{}",
                url.as_str(),
                a.status,
                shown(code),
                if message.is_empty() { "" } else { ": " },
                shown(message)
            )));
        }
        let get = |name: &str| field(&text, name).map(str::trim);
        let key = get("AccessKeyId").ok_or_else(|| bad("no AccessKeyId"))?;
        let secret = get("SecretAccessKey").ok_or_else(|| bad("no SecretAccessKey"))?;
        let token = get("SessionToken").ok_or_else(|| bad("no SessionToken"))?;
        let expires = super::expiry(get("Expiration")).map_err(|m| bad(&m))?;
        Creds::checked(key, secret, Some(token), expires).map_err(|m| bad(&m))
    }
}

fn bad(what: &str) -> CredError {
    CredError::permanent(format!("STS's answer is unusable: {what}"))
}

/// What a server said, for a message: one line, at most 200 characters.
fn shown(s: &str) -> String {
    crate::error::one_line(s.chars().take(200).collect())
}

/// The text of the first `<name>` element.
fn field<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(&xml[start..end])
}

/// Whether `r` looks like an AWS region (`eu-central-1`), not a provider's
/// own name (`auto`, `fsn1`).
fn is_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// A session name of the form STS takes (`[\w+=,.@-]`, 2 to 64).
fn session_name(given: Option<&str>) -> String {
    given
        .filter(|s| {
            (2..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| format!("vaultik-{}", crate::time::now()))
}

/// `role_arn` with `source_profile` or `credential_source`: the role,
/// assumed with the credentials of another source.
pub(super) struct AssumeRole {
    pub(super) sts: Sts,
    pub(super) role_arn: String,
    pub(super) source: Box<dyn Source>,
    pub(super) session_name: Option<String>,
    pub(super) external_id: Option<String>,
    pub(super) duration: Option<u64>,
    pub(super) what: String,
}

impl Source for AssumeRole {
    fn fetch(&self, http: &Http) -> Fetched {
        let base = self
            .source
            .fetch(http)
            .map_err(|e| e.of(&self.source.describe()))?;
        let name = session_name(self.session_name.as_deref());
        let duration = self.duration.unwrap_or(DURATION).to_string();
        let mut params = vec![
            ("Action", "AssumeRole"),
            ("Version", "2011-06-15"),
            ("RoleArn", self.role_arn.as_str()),
            ("RoleSessionName", name.as_str()),
            ("DurationSeconds", duration.as_str()),
        ];
        if let Some(x) = &self.external_id {
            params.push(("ExternalId", x));
        }
        self.sts.call(http, &params, Some(&base))
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// A web identity token file and a role (EKS IRSA): the token is sent to
/// STS as it is, read anew each time (the cluster rotates it).
pub(super) struct WebIdentity {
    pub(super) sts: Sts,
    pub(super) role_arn: String,
    pub(super) token_file: PathBuf,
    pub(super) session_name: Option<String>,
    pub(super) what: String,
}

impl Source for WebIdentity {
    fn fetch(&self, http: &Http) -> Fetched {
        let token = read_token(&self.token_file, "web identity token file")?;
        let name = session_name(self.session_name.as_deref());
        let params = [
            ("Action", "AssumeRoleWithWebIdentity"),
            ("Version", "2011-06-15"),
            ("RoleArn", self.role_arn.as_str()),
            ("RoleSessionName", name.as_str()),
            ("WebIdentityToken", token.as_str()),
        ];
        self.sts.call(http, &params, None)
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// A token from a file, at most `TOKEN_MAX` bytes, trimmed, of characters
/// that can be sent (a header, a form value).
pub(super) fn read_token(path: &std::path::Path, what: &str) -> Result<String, CredError> {
    let name = path.display();
    let f = std::fs::File::open(path)
        .map_err(|e| CredError::permanent(format!("{what} {name}: {e}")))?;
    let bytes = crate::store::read_bounded(f, TOKEN_MAX)
        .map_err(|e| CredError::permanent(format!("{what} {name}: {e}")))?
        .ok_or_else(|| {
            CredError::permanent(format!("{what} {name}: longer than {TOKEN_MAX} bytes"))
        })?;
    let token = String::from_utf8(bytes)
        .map_err(|_| CredError::permanent(format!("{what} {name}: not UTF-8")))?;
    let token = token.trim().to_string();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CredError::permanent(format!(
            "{what} {name}: empty, or with characters a token cannot hold"
        )));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sts_endpoint_and_region() {
        let aws = AwsEnv::default();
        let s = Sts::new(&aws, None, "eu-central-1");
        assert_eq!(s.endpoint, "https://sts.eu-central-1.amazonaws.com");
        // A provider's region name is no AWS region.
        let s = Sts::new(&aws, None, "auto");
        assert_eq!(
            (s.endpoint.as_str(), s.region.as_str()),
            ("https://sts.us-east-1.amazonaws.com", "us-east-1")
        );
        let aws = AwsEnv {
            region: Some("ap-south-1".into()),
            sts_endpoint: Some("http://127.0.0.1:9/".into()),
            ..Default::default()
        };
        let s = Sts::new(&aws, Some("eu-west-1"), "auto");
        assert_eq!(
            (s.endpoint.as_str(), s.region.as_str()),
            ("http://127.0.0.1:9/", "ap-south-1")
        );
        assert!(session_name(Some("x y")).starts_with("vaultik-"));
        assert_eq!(session_name(Some("backup@web1")), "backup@web1");
    }

    #[test]
    fn answers_are_read_for_their_fields() {
        let x = "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIA</AccessKeyId>\
                 </Credentials></AssumeRoleResult></AssumeRoleResponse>";
        assert_eq!(field(x, "AccessKeyId"), Some("ASIA"));
        assert_eq!(field(x, "SessionToken"), None);
        assert_eq!(field("<Code>x", "Code"), None);
    }
}
