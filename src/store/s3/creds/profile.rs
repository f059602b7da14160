//! The shared files: `~/.aws/credentials` (`[NAME]` sections) and
//! `~/.aws/config` (`[profile NAME]`, `[default]`), or the files
//! `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` name. A profile's
//! keys are those of both files, the credentials file's first. What a
//! profile gives, in the SDKs' order: `role_arn` (with `source_profile`,
//! `credential_source` or `web_identity_token_file`), then
//! `credential_process`, then `aws_access_key_id` and
//! `aws_secret_access_key` (and `aws_session_token`).
//!
//! Files are read to at most `FILE_MAX` bytes; a missing file is an empty
//! one (the default files need not exist).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::imds::{Container, Imds};
use super::process::Process;
use super::sts::{AssumeRole, Sts, WebIdentity};
use super::{CredError, Creds, Fixed, Source};
use crate::store::settings::AwsEnv;

const FILE_MAX: u64 = 1 << 20;
/// How many profiles a `source_profile` chain may go through.
const CHAIN_MAX: usize = 8;

type Section = HashMap<String, String>;

/// Both files, read.
pub(super) struct Files {
    config: HashMap<String, Section>,
    /// The config file's `[sso-session NAME]` sections.
    sessions: HashMap<String, Section>,
    credentials: HashMap<String, Section>,
    config_path: PathBuf,
    credentials_path: PathBuf,
}

impl Files {
    pub(super) fn read(aws: &AwsEnv) -> Result<Files, CredError> {
        let home = aws.home.clone().unwrap_or_default();
        let config_path = aws
            .config_file
            .clone()
            .unwrap_or_else(|| home.join(".aws/config"));
        let credentials_path = aws
            .shared_credentials_file
            .clone()
            .unwrap_or_else(|| home.join(".aws/credentials"));
        let (config, sessions) = sections(&config_path, true)?;
        let (credentials, _) = sections(&credentials_path, false)?;
        Ok(Files {
            config,
            sessions,
            credentials,
            config_path,
            credentials_path,
        })
    }

    /// Both paths, for a message.
    pub(super) fn describe(&self) -> String {
        format!(
            "{} or {}",
            self.credentials_path.display(),
            self.config_path.display()
        )
    }

    /// Profile `name`'s keys (the credentials file's over the config
    /// file's), or None when neither file has it.
    fn profile(&self, name: &str) -> Option<Section> {
        let c = self.config.get(name);
        let k = self.credentials.get(name);
        if c.is_none() && k.is_none() {
            return None;
        }
        let mut out = c.cloned().unwrap_or_default();
        out.extend(k.cloned().unwrap_or_default());
        Some(out)
    }

    /// What profile `name` gives, None when there is no such profile.
    pub(super) fn source(
        &self,
        name: &str,
        aws: &AwsEnv,
        store_region: &str,
    ) -> Result<Option<Box<dyn Source>>, CredError> {
        if self.profile(name).is_none() {
            return Ok(None);
        }
        self.resolve(name, aws, store_region, &mut Vec::new())
            .map(Some)
    }

    fn resolve(
        &self,
        name: &str,
        aws: &AwsEnv,
        store_region: &str,
        seen: &mut Vec<String>,
    ) -> Result<Box<dyn Source>, CredError> {
        let shown = crate::error::one_line(name.to_string());
        let err = |m: String| CredError::permanent(format!("profile `{shown}`: {m}"));
        if seen.iter().any(|s| s == name) || seen.len() >= CHAIN_MAX {
            return Err(err(format!(
                "source_profile goes round in circles ({})",
                seen.join(" -> ")
            )));
        }
        seen.push(name.to_string());
        let p = self
            .profile(name)
            .ok_or_else(|| err(format!("no such profile in {}", self.describe())))?;
        let get = |k: &str| p.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let sts = || Sts::new(aws, get("region"), store_region);
        if let Some(role) = get("role_arn") {
            let role = role.to_string();
            if let Some(file) = get("web_identity_token_file") {
                return Ok(Box::new(WebIdentity {
                    sts: sts(),
                    what: format!(
                        "profile `{shown}` (web identity, role {})",
                        crate::error::one_line(role.clone())
                    ),
                    role_arn: role,
                    token_file: PathBuf::from(file),
                    session_name: get("role_session_name").map(str::to_string),
                }));
            }
            let (source, from): (Box<dyn Source>, String) =
                match (get("source_profile"), get("credential_source")) {
                    (Some(src), None) => {
                        // A source profile's own role_arn is assumed first
                        // (role chaining); its keys when it has none.
                        let s = if src == name {
                            self.keys(name, &p)?
                        } else {
                            self.resolve(src, aws, store_region, seen)?
                        };
                        (
                            s,
                            format!("profile `{}`", crate::error::one_line(src.into())),
                        )
                    }
                    (None, Some(cs)) => (credential_source(cs, aws).map_err(err)?, cs.to_string()),
                    (Some(_), Some(_)) => {
                        return Err(err("has both source_profile and credential_source".into()));
                    }
                    (None, None) => {
                        return Err(err(
                            "has role_arn but no source_profile, credential_source \
                                        or web_identity_token_file"
                                .into(),
                        ));
                    }
                };
            return Ok(Box::new(AssumeRole {
                sts: sts(),
                what: format!(
                    "profile `{shown}` (role {}, assumed with {from})",
                    crate::error::one_line(role.clone())
                ),
                role_arn: role,
                source,
                session_name: get("role_session_name").map(str::to_string),
                external_id: get("external_id").map(str::to_string),
                duration: get("duration_seconds").and_then(|d| d.parse().ok()),
            }));
        }
        if (get("sso_session").is_some() || get("sso_start_url").is_some())
            && get("credential_process").is_none()
            && get("aws_access_key_id").is_none()
        {
            return self.sso(name, &p, aws).map_err(err);
        }
        if let Some(cmd) = get("credential_process") {
            let argv = crate::stream::split_command(cmd)
                .map_err(|m| err(format!("credential_process: {m}")))?;
            return Ok(Box::new(Process {
                argv,
                what: format!("profile `{shown}` (credential_process)"),
            }));
        }
        self.keys(name, &p)
    }

    /// An SSO profile: the session (or the legacy keys in the profile),
    /// the account and role, and where `aws sso login` left the token.
    fn sso(&self, name: &str, p: &Section, aws: &AwsEnv) -> Result<Box<dyn Source>, String> {
        let get = |s: &Section, k: &str| s.get(k).filter(|v| !v.is_empty()).cloned();
        let (key, region) = match get(p, "sso_session") {
            Some(session) => {
                let shown = crate::error::one_line(session.clone());
                let s = self.sessions.get(&session).ok_or_else(|| {
                    format!(
                        "sso_session `{shown}`: no [sso-session {shown}] in {}",
                        self.config_path.display()
                    )
                })?;
                let region = get(s, "sso_region")
                    .ok_or_else(|| format!("[sso-session {shown}] has no sso_region"))?;
                (session, region)
            }
            None => {
                let url = get(p, "sso_start_url").ok_or("has no sso_start_url")?;
                let region = get(p, "sso_region").ok_or("has sso_start_url but no sso_region")?;
                (url, region)
            }
        };
        let account_id =
            get(p, "sso_account_id").ok_or("is an SSO profile with no sso_account_id")?;
        let role_name = get(p, "sso_role_name").ok_or("is an SSO profile with no sso_role_name")?;
        if !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("sso_region: not a region name".into());
        }
        let home = aws.home.clone().unwrap_or_default();
        Ok(Box::new(super::sso::Sso {
            cache: home
                .join(".aws/sso/cache")
                .join(super::sso::cache_name(&key)),
            portal: aws
                .sso_endpoint
                .clone()
                .unwrap_or_else(|| format!("https://portal.sso.{region}.amazonaws.com")),
            account_id,
            role_name,
            profile: name.to_string(),
        }))
    }

    /// A profile's static keys.
    fn keys(&self, name: &str, p: &Section) -> Result<Box<dyn Source>, CredError> {
        let shown = crate::error::one_line(name.to_string());
        let get = |k: &str| p.get(k).map(String::as_str).filter(|v| !v.is_empty());
        match (get("aws_access_key_id"), get("aws_secret_access_key")) {
            (Some(k), Some(s)) => {
                let creds = Creds::checked(k, s, get("aws_session_token"), None)
                    .map_err(|m| CredError::permanent(format!("profile `{shown}`: {m}")))?;
                let file = if self.credentials.contains_key(name) {
                    &self.credentials_path
                } else {
                    &self.config_path
                };
                Ok(Box::new(Fixed {
                    creds,
                    what: format!("profile `{shown}` ({})", file.display()),
                }))
            }
            _ => Err(CredError::permanent(format!(
                "profile `{shown}` gives no credentials (no aws_access_key_id and \
                 aws_secret_access_key, credential_process or role_arn)"
            ))),
        }
    }
}

/// `credential_source`: where the keys that assume the role come from.
fn credential_source(cs: &str, aws: &AwsEnv) -> Result<Box<dyn Source>, String> {
    match cs {
        "Environment" => match (&aws.access_key_id, &aws.secret_access_key) {
            (Some(k), Some(s)) => Ok(Box::new(Fixed {
                creds: Creds::checked(k, s, aws.session_token.as_deref(), None)?,
                what: "the environment".into(),
            })),
            _ => Err(
                "credential_source = Environment, but AWS_ACCESS_KEY_ID and \
                      AWS_SECRET_ACCESS_KEY are not set"
                    .into(),
            ),
        },
        "Ec2InstanceMetadata" => Ok(Box::new(Imds::new(aws))),
        "EcsContainer" => Container::from_env(aws)
            .map_err(|e| e.msg)?
            .map(|c| Box::new(c) as Box<dyn Source>)
            .ok_or_else(|| {
                "credential_source = EcsContainer, but no AWS_CONTAINER_CREDENTIALS_*_URI is set"
                    .into()
            }),
        other => Err(format!(
            "credential_source `{}`: expected Environment, Ec2InstanceMetadata or EcsContainer",
            crate::error::one_line(other.into())
        )),
    }
}

/// The sections of an INI file: `[default]`, `[profile NAME]` in the
/// config file (`profile_prefix`), `[NAME]` in the credentials file.
/// Indented lines continue a key's nested settings and are skipped;
/// `#` and `;` start comments.
/// The second map holds the config file's `[sso-session NAME]` sections.
type Sections = (HashMap<String, Section>, HashMap<String, Section>);

fn sections(path: &Path, profile_prefix: bool) -> Result<Sections, CredError> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((HashMap::new(), HashMap::new()));
        }
        Err(e) => {
            return Err(CredError::permanent(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
    };
    let bytes = crate::store::read_bounded(f, FILE_MAX)
        .map_err(|e| CredError::permanent(format!("cannot read {}: {e}", path.display())))?
        .ok_or_else(|| {
            CredError::permanent(format!(
                "{}: larger than {FILE_MAX} bytes; not read",
                path.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&bytes);
    let mut out: HashMap<String, Section> = HashMap::new();
    let mut sessions: HashMap<String, Section> = HashMap::new();
    // The section the lines are in: a profile (false) or an SSO session.
    let mut current: Option<(bool, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        if raw.starts_with([' ', '\t']) {
            continue;
        }
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(inner) = line.strip_prefix('[') {
            let inner = inner
                .split_once(']')
                .map(|(n, _)| n.trim())
                .ok_or_else(|| {
                    CredError::permanent(format!(
                        "{}:{}: unterminated section header",
                        path.display(),
                        i + 1
                    ))
                })?;
            current = if profile_prefix {
                if let Some(n) = inner.strip_prefix("profile ") {
                    Some((false, n.trim().to_string()))
                } else if let Some(n) = inner.strip_prefix("sso-session ") {
                    Some((true, n.trim().to_string()))
                } else if inner == "default" {
                    Some((false, inner.to_string()))
                } else {
                    // [services ...]: neither.
                    None
                }
            } else {
                Some((false, inner.to_string()))
            };
            if let Some((session, n)) = &current {
                let map = if *session { &mut sessions } else { &mut out };
                map.entry(n.clone()).or_default();
            }
            continue;
        }
        let Some((session, name)) = &current else {
            continue;
        };
        // The line itself is never shown: it may hold a secret.
        let (k, v) = line.split_once('=').ok_or_else(|| {
            CredError::permanent(format!(
                "{}:{}: expected `key = value`",
                path.display(),
                i + 1
            ))
        })?;
        let v = v.trim();
        // An inline comment needs a space before it (values may hold `#`).
        let v = v
            .split_once(" #")
            .or_else(|| v.split_once(" ;"))
            .map_or(v, |(a, _)| a.trim_end());
        let map = if *session { &mut sessions } else { &mut out };
        map.entry(name.clone())
            .or_default()
            .insert(k.trim().to_ascii_lowercase(), v.to_string());
    }
    Ok((out, sessions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(config: &str, credentials: &str) -> (tempfile::TempDir, AwsEnv) {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config"), config).unwrap();
        std::fs::write(d.path().join("credentials"), credentials).unwrap();
        let aws = AwsEnv {
            config_file: Some(d.path().join("config")),
            shared_credentials_file: Some(d.path().join("credentials")),
            ..Default::default()
        };
        (d, aws)
    }

    fn describe(aws: &AwsEnv, name: &str) -> Result<Option<String>, String> {
        let f = Files::read(aws).map_err(|e| e.msg)?;
        f.source(name, aws, "eu-west-1")
            .map(|s| s.map(|s| s.describe()))
            .map_err(|e| e.msg)
    }

    #[test]
    fn profiles_resolve_in_the_sdks_order() {
        let (_d, aws) = files(
            "[default]\nregion = eu-west-1\n\
             [profile dev]\nrole_arn = arn:aws:iam::1:role/backup\nsource_profile = base\n\
             s3 =\n  addressing_style = path\n\
             [profile base]\nregion = eu-central-1 # a comment\n\
             [profile tool]\ncredential_process = /usr/bin/get-creds --profile 'a b'\n\
             [profile sso]\nsso_session = corp\nsso_account_id = 1\nsso_role_name = Backup\n\
             [sso-session corp]\nsso_region = eu-west-1\nsso_start_url = https://x.awsapps.com/start\n\
             [profile sso-old]\nsso_start_url = https://x.awsapps.com/start\nsso_region = eu-west-1\n\
             sso_account_id = 2\nsso_role_name = Backup\n\
             [profile sso-lost]\nsso_session = gone\nsso_account_id = 1\nsso_role_name = R\n\
             [profile sso-half]\nsso_session = corp\nsso_account_id = 1\n\
             [profile loop1]\nrole_arn = r\nsource_profile = loop2\n\
             [profile loop2]\nrole_arn = r\nsource_profile = loop1\n\
             [profile ec2]\nrole_arn = r\ncredential_source = Ec2InstanceMetadata\n",
            "[base]\naws_access_key_id = AKIABASE\naws_secret_access_key = hunter2\n\
             ; comment\n[default]\naws_access_key_id = AKIADEF\naws_secret_access_key = s\n",
        );
        assert!(
            describe(&aws, "default")
                .unwrap()
                .unwrap()
                .contains("profile `default` (")
        );
        assert_eq!(
            describe(&aws, "dev").unwrap().unwrap(),
            "profile `dev` (role arn:aws:iam::1:role/backup, assumed with profile `base`)"
        );
        assert_eq!(
            describe(&aws, "tool").unwrap().unwrap(),
            "profile `tool` (credential_process)"
        );
        assert_eq!(describe(&aws, "nope").unwrap(), None);
        assert_eq!(
            describe(&aws, "sso").unwrap().unwrap(),
            "profile `sso` (SSO, role Backup in account 1)"
        );
        assert_eq!(
            describe(&aws, "sso-old").unwrap().unwrap(),
            "profile `sso-old` (SSO, role Backup in account 2)"
        );
        let e = describe(&aws, "sso-lost").unwrap_err();
        assert!(e.contains("no [sso-session gone] in"), "{e}");
        let e = describe(&aws, "sso-half").unwrap_err();
        assert!(e.contains("no sso_role_name"), "{e}");
        let e = describe(&aws, "loop1").unwrap_err();
        assert!(e.contains("circles"), "{e}");
        assert!(
            describe(&aws, "ec2")
                .unwrap()
                .unwrap()
                .contains("Ec2InstanceMetadata")
        );
        let f = Files::read(&aws).unwrap();
        assert_eq!(f.profile("base").unwrap()["region"], "eu-central-1");
        // Secrets never in messages.
        let (_d, aws) = files(
            "",
            "[x]\naws_access_key_id = A\naws_secret_access_key hunter2\n",
        );
        let e = describe(&aws, "x").unwrap_err();
        assert!(e.contains(":3: expected") && !e.contains("hunter2"), "{e}");
    }
}
