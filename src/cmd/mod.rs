//! The subcommands: resolve flags against the environment and the config
//! file (flags > environment > file > defaults), run the work, print the
//! summary. Glue only; one file per group of commands.

mod create;
mod daemon;
mod inspect;
mod purge;
mod restore;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::cli::{Command, Global};
use crate::config::{self, Config, S3Config, StoreConfig};
use crate::error::{Error, IoContext, Result};
use crate::keys;
use crate::store::{self, Store};

pub fn run(g: &Global, cmd: Command) -> Result<()> {
    match cmd {
        Command::Help(text) => {
            print!("{text}");
            Ok(())
        }
        Command::Version => {
            println!("vaultik {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Keygen { output } => keygen(output.as_deref()),
        Command::SnapshotCreate {
            daemon: true, cron, ..
        } => daemon::run(g, cron),
        Command::SnapshotCreate {
            names,
            skip_errors,
            cron,
            prune,
            ..
        } => create::run(g, &names, skip_errors, cron, prune),
        Command::SnapshotList { json } => inspect::list(g, json),
        Command::SnapshotVerify {
            snapshot,
            deep,
            identity,
            json,
        } => inspect::verify(g, &snapshot, deep, identity.as_deref(), json),
        Command::StoreInfo { json } => inspect::info(g, json),
        Command::SnapshotPurge {
            keep_latest,
            older_than,
            name,
            dry_run,
            force,
            json,
        } => purge::purge(
            g,
            keep_latest,
            older_than,
            name.as_deref(),
            dry_run,
            force,
            json,
        ),
        Command::SnapshotRemove { snapshots } => purge::remove(g, &snapshots),
        Command::Prune { dry_run, json } => purge::prune(g, dry_run, json),
        Command::Restore {
            snapshot,
            target,
            paths,
            identity,
        } => restore::run(g, &snapshot, &target, paths, identity.as_deref()),
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
            "config file {} does not exist (give --config PATH or set VAULTIK_CONFIG)",
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
    if let Some(rest) = spec.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Usage(format!("--store {spec}: missing bucket name")));
        }
        let mut prefix = prefix.to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        config::check_prefix(&prefix).map_err(|m| Error::Usage(format!("--store: {m}")))?;
        let from_cfg = match cfg.and_then(|c| c.store.as_ref()) {
            Some(StoreConfig::S3(s)) => Some(s.clone()),
            _ => None,
        };
        let region = g
            .region
            .clone()
            .or_else(|| env("VAULTIK_S3_REGION"))
            .or_else(|| from_cfg.as_ref().map(|s| s.region.clone()))
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = g
            .endpoint
            .clone()
            .or_else(|| env("VAULTIK_S3_ENDPOINT"))
            .or_else(|| from_cfg.as_ref().map(|s| s.endpoint.clone()))
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        Ok(StoreConfig::S3(S3Config {
            endpoint,
            bucket: bucket.to_string(),
            prefix,
            region,
            access_key_id: from_cfg.as_ref().and_then(|s| s.access_key_id.clone()),
            secret_access_key: from_cfg.as_ref().and_then(|s| s.secret_access_key.clone()),
            ca_file: from_cfg.and_then(|s| s.ca_file),
        }))
    } else {
        let path = spec.strip_prefix("file://").unwrap_or(&spec);
        Ok(StoreConfig::Local {
            path: PathBuf::from(path),
        })
    }
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

fn warn(msg: &str) {
    // One line each, whatever the file names hold.
    eprintln!(
        "vaultik: warning: {}",
        crate::error::one_line(msg.to_string())
    );
}

/// The store for a command that only reads or maintains it (the config is
/// optional when the store is given by flag or environment). Its identity
/// is read: a store of a newer format is refused; a damaged identity only
/// warned about (it keys local indexes, nothing these commands need).
fn open_existing_store(g: &Global) -> Result<(Option<Config>, Box<dyn Store>)> {
    let cfg = load_config(g, false)?;
    let store = store::open(&store_config(g, cfg.as_ref())?, false)?;
    match store::identity::read(store.as_ref()) {
        Ok(_) => {}
        Err(e @ Error::Corrupt { .. }) => warn(&e.to_string()),
        Err(e) => return Err(e),
    }
    Ok((cfg, store))
}

/// The `requests` object of every `--json` report.
fn json_report(mut v: serde_json::Value, store: &dyn Store) -> String {
    v["requests"] = store.stats().to_json();
    serde_json::to_string_pretty(&v).expect("JSON values serialize")
}

fn keygen(output: Option<&Path>) -> Result<()> {
    let (file, public) = keys::generate();
    match output {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .at("create identity file", path)?;
            f.write_all(file.as_bytes()).at("write", path)?;
            println!("{public}");
        }
        None => print!("{file}"),
    }
    Ok(())
}
