//! Every setting a command uses, resolved once, in one place: flags, then
//! the environment, then the config file, then defaults. Commands get a
//! `Settings` and their own arguments; nothing below reads the
//! environment.

use std::path::{Path, PathBuf};

use age::x25519;

use crate::cli::Global;
use crate::config::{self, Config, DEFAULT_GRACE_PERIOD};
use crate::error::{Error, Result};
use crate::keys;
use crate::store::settings::{AwsEnv, S3Config, StoreConfig};
use crate::store::{self, Store};

pub struct Settings {
    /// The config file, when there is one (backups require it).
    pub config: Option<Config>,
    /// Where the store is, with its credentials and CA.
    pub store: StoreConfig,
    pub index_path: PathBuf,
    pub hostname: String,
    /// Seconds an unreferenced blob is kept, and a mark waits.
    pub grace_period: u64,
    /// The zone retention's calendar periods are taken in.
    pub retention_timezone: Option<String>,
    /// The host keys whose snapshots are taken (`--signer`, the config's
    /// `trusted_signers`); none: any.
    pub trust: crate::signing::Trust,
}

impl Settings {
    /// The settings of a command; `config_required` for backups.
    pub fn resolve(g: &Global, config_required: bool) -> Result<Settings> {
        let config = load_config(g, config_required)?;
        let store = with_flags(g, with_env_credentials(store_config(g, config.as_ref())?));
        let c = config.as_ref();
        Ok(Settings {
            index_path: c
                .and_then(|c| c.index_path.clone())
                .unwrap_or_else(default_index_path),
            hostname: c
                .and_then(|c| c.hostname.clone())
                .unwrap_or_else(system_hostname),
            grace_period: c.map_or(DEFAULT_GRACE_PERIOD, |c| c.grace_period).as_secs(),
            retention_timezone: c.and_then(|c| c.retention_timezone.clone()),
            trust: crate::signing::Trust {
                signers: g
                    .signers
                    .iter()
                    .chain(c.map_or(&[][..], |c| &c.trusted_signers[..]))
                    .copied()
                    .collect(),
            },
            store,
            config,
        })
    }

    /// The config file a backup needs.
    pub fn config(&self) -> &Config {
        self.config
            .as_ref()
            .expect("resolved with the config required")
    }

    /// The snapshot a command names (`latest` or an id, narrowed), taken
    /// only on a trusted signature when `trust` is set (`signing::pick`).
    pub fn pick(
        &self,
        store: &dyn Store,
        id: &str,
        narrow: &crate::manifest::Narrow,
    ) -> Result<crate::signing::Picked> {
        let all = crate::manifest::list(store)?;
        self.pick_in(store, &all, id, narrow)
    }

    /// `pick`, over a listing already made.
    pub fn pick_in(
        &self,
        store: &dyn Store,
        all: &[crate::manifest::Listed],
        id: &str,
        narrow: &crate::manifest::Narrow,
    ) -> Result<crate::signing::Picked> {
        crate::signing::pick(store, all, id, narrow, &self.trust, &super::warn)
    }

    pub fn open_store(&self, create: bool) -> Result<Box<dyn Store>> {
        store::open(&self.store, create)
    }
}

/// Where a passphrase comes from: `--passphrase-fd N`, else the terminal.
pub fn passphrase_source(g: &Global) -> crate::passphrase::Source {
    g.passphrase_fd.map_or(
        crate::passphrase::Source::Terminal,
        crate::passphrase::Source::Fd,
    )
}

/// The private key: `--identity FILE` wins over `$VAULTIK_PRIVATE_KEY`.
pub fn identities(g: &Global, file: Option<&Path>) -> Result<Vec<x25519::Identity>> {
    if let Some(path) = file {
        return keys::identities_from_file(path, passphrase_source(g));
    }
    match std::env::var("VAULTIK_PRIVATE_KEY") {
        Ok(v) if !v.trim().is_empty() => keys::identity_from_env(v.trim()),
        _ => Err(Error::Key(
            "this command needs the private key: set VAULTIK_PRIVATE_KEY or pass --identity FILE"
                .into(),
        )),
    }
}

/// `VAULTIK_CA_FILE` wins over the config; the AWS credential chain's
/// variables are gathered for the store (`store/s3/creds/`: the
/// environment's keys win over the config's there).
fn with_env_credentials(cfg: StoreConfig) -> StoreConfig {
    let StoreConfig::S3(mut s3) = cfg else {
        return cfg;
    };
    if let Some(v) = std::env::var_os("VAULTIK_CA_FILE").filter(|v| !v.is_empty()) {
        s3.ca_file = Some(v.into());
    }
    s3.aws = aws_env();
    StoreConfig::S3(s3)
}

/// The store's flags, over the config's keys.
fn with_flags(g: &Global, cfg: StoreConfig) -> StoreConfig {
    let StoreConfig::S3(mut s3) = cfg else {
        return cfg;
    };
    if let Some(d) = g.retry_for {
        s3.retry_for = Some(d);
    }
    if let Some(l) = g.limit_upload {
        s3.limit_upload = Some(l);
    }
    if let Some(l) = g.limit_download {
        s3.limit_download = Some(l);
    }
    if let Some(n) = g.connections {
        s3.connections = Some(n);
    }
    StoreConfig::S3(s3)
}

/// The AWS SDKs' variables (empty ones count as unset).
fn aws_env() -> AwsEnv {
    let path = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    AwsEnv {
        access_key_id: env("AWS_ACCESS_KEY_ID"),
        secret_access_key: env("AWS_SECRET_ACCESS_KEY"),
        session_token: env("AWS_SESSION_TOKEN"),
        profile: env("AWS_PROFILE").or_else(|| env("AWS_DEFAULT_PROFILE")),
        shared_credentials_file: path("AWS_SHARED_CREDENTIALS_FILE"),
        config_file: path("AWS_CONFIG_FILE"),
        home: path("HOME"),
        region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
        role_arn: env("AWS_ROLE_ARN"),
        web_identity_token_file: path("AWS_WEB_IDENTITY_TOKEN_FILE"),
        role_session_name: env("AWS_ROLE_SESSION_NAME"),
        container_full_uri: env("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        container_relative_uri: env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        container_token: env("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        container_token_file: path("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
        imds_endpoint: env("AWS_EC2_METADATA_SERVICE_ENDPOINT"),
        imds_disabled: env("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        sts_endpoint: env("AWS_ENDPOINT_URL_STS").or_else(|| env("AWS_ENDPOINT_URL")),
        sso_endpoint: env("AWS_ENDPOINT_URL_SSO").or_else(|| env("AWS_ENDPOINT_URL")),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Load the config: `--config`, else `$VAULTIK_CONFIG`, else the default
/// path. A missing default file is only an error when `required`.
fn load_config(g: &Global, required: bool) -> Result<Option<Config>> {
    let (path, explicit) = match (&g.config, env("VAULTIK_CONFIG")) {
        (Some(p), _) => (p.clone(), true),
        (None, Some(p)) => (PathBuf::from(p), true),
        (None, None) => (PathBuf::from(config::DEFAULT_CONFIG), false),
    };
    if !explicit && !required && !path.exists() {
        return Ok(None);
    }
    if !path.exists() {
        return Err(Error::Setup(format!(
            "config file {}: No such file or directory (give --config PATH or set VAULTIK_CONFIG)",
            path.display()
        )));
    }
    Config::load(&path).map(Some)
}

/// The store from `--store`/`$VAULTIK_STORE`, else from the config;
/// `--endpoint`/`--region` (and their variables) override either.
fn store_config(g: &Global, cfg: Option<&Config>) -> Result<StoreConfig> {
    let spec = g.store.clone().or_else(|| env("VAULTIK_STORE"));
    let Some(spec) = spec else {
        let from_cfg = cfg.and_then(|c| c.store.clone()).ok_or_else(|| {
            Error::Setup(match cfg {
                Some(c) => format!(
                    "{}: no store configured (add an [s3] or [local] section, or give --store)",
                    c.path.display()
                ),
                None => format!(
                    "no config file at {} and no --store given (or set VAULTIK_STORE)",
                    config::DEFAULT_CONFIG
                ),
            })
        })?;
        return Ok(match from_cfg {
            StoreConfig::S3(mut s) => {
                if let Some(e) = g.endpoint.clone().or_else(|| env("VAULTIK_S3_ENDPOINT")) {
                    s.endpoint = e;
                }
                if let Some(r) = g.region.clone().or_else(|| env("VAULTIK_S3_REGION")) {
                    s.region = r;
                }
                StoreConfig::S3(s)
            }
            local => local,
        });
    };
    let from_cfg = match cfg.and_then(|c| c.store.as_ref()) {
        Some(StoreConfig::S3(s)) => Some(s.clone()),
        _ => None,
    };
    let region = g
        .region
        .clone()
        .or_else(|| env("VAULTIK_S3_REGION"))
        .or_else(|| from_cfg.as_ref().map(|s| s.region.clone()));
    let endpoint = g
        .endpoint
        .clone()
        .or_else(|| env("VAULTIK_S3_ENDPOINT"))
        .or_else(|| from_cfg.as_ref().map(|s| s.endpoint.clone()));
    parse_spec(&spec, "--store", endpoint, region, from_cfg)
}

/// The store `spec` names (`s3://BUCKET/PREFIX`, else a directory), the
/// rest of an S3 store's settings taken from `from_cfg`; `flag` names it
/// in errors.
fn parse_spec(
    spec: &str,
    flag: &str,
    endpoint: Option<String>,
    region: Option<String>,
    from_cfg: Option<S3Config>,
) -> Result<StoreConfig> {
    if let Some(rest) = spec.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Usage(format!("{flag} {spec}: missing bucket name")));
        }
        let mut prefix = prefix.to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        config::check_prefix(&prefix).map_err(|m| Error::Usage(format!("{flag}: {m}")))?;
        let region = region.unwrap_or_else(|| "us-east-1".into());
        let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let base = from_cfg.unwrap_or_default();
        Ok(StoreConfig::S3(S3Config {
            endpoint,
            bucket: bucket.to_string(),
            prefix,
            region,
            aws: AwsEnv::default(),
            ..base
        }))
    } else {
        let path = spec.strip_prefix("file://").unwrap_or(spec);
        Ok(StoreConfig::Local {
            path: PathBuf::from(path),
        })
    }
}

/// The destination of `copy`: `--to STORE` and/or `--to-config FILE` (see
/// `vaultik help copy`), and that config file. An `s3://` destination
/// without a config of its own is reached as the source is (its endpoint,
/// region, credentials, CA), in STANDARD and without Object Lock. The
/// global flags and `VAULTIK_*` variables are the source's; the AWS
/// credential chain's variables apply to both stores.
pub fn destination(
    to: Option<&str>,
    to_config: Option<&Path>,
    source: &StoreConfig,
) -> Result<(StoreConfig, Option<Config>)> {
    let cfg = match to_config {
        Some(p) if !p.exists() => {
            return Err(Error::Usage(format!(
                "--to-config {}: No such file or directory",
                p.display()
            )));
        }
        Some(p) => Some(Config::load(p)?),
        None => None,
    };
    let from_cfg = cfg.as_ref().and_then(|c| c.store.clone());
    let store = match (to, from_cfg) {
        (None, Some(s)) => s,
        (None, None) => {
            return Err(Error::Setup(format!(
                "{}: no store configured for the copy (add an [s3] or [local] section, or give --to)",
                to_config
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )));
        }
        (Some(spec), Some(StoreConfig::S3(s))) => {
            let (e, r) = (s.endpoint.clone(), s.region.clone());
            parse_spec(spec, "--to", Some(e), Some(r), Some(s))?
        }
        (Some(spec), _) => match source {
            StoreConfig::S3(s) if cfg.is_none() => {
                let inherited = S3Config {
                    storage_class: Default::default(),
                    object_lock: Default::default(),
                    lock_for: None,
                    ..s.clone()
                };
                let (e, r) = (s.endpoint.clone(), s.region.clone());
                parse_spec(spec, "--to", Some(e), Some(r), Some(inherited))?
            }
            _ => parse_spec(spec, "--to", None, None, None)?,
        },
    };
    let mut store = with_env_credentials(store);
    if let StoreConfig::S3(s) = &mut store {
        if let StoreConfig::S3(src) = source {
            // The source's throttles hold for the copy as a whole.
            s.limit_upload = s.limit_upload.or(src.limit_upload);
            s.retry_for = s.retry_for.or(src.retry_for);
        }
    }
    Ok((store, cfg))
}

fn default_index_path() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/vaultik/index.sqlite");
    }
    let state = env("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    state.join("vaultik/index.sqlite")
}

fn system_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its whole length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "localhost".into()
}
