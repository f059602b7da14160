//! The subcommands: resolve flags against the environment and the config
//! file (flags > environment > file > defaults), then run the pipeline and
//! print the summary. Glue only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::backup::Backup;
use crate::chunk::Params;
use crate::cli::{Command, Global};
use crate::config::{self, Config, S3Config, StoreConfig};
use crate::error::{Error, IoContext, Result};
use crate::index::Index;
use crate::lock::RunLock;
use crate::restore::Restore;
use crate::snapshot;
use crate::store::{self, Store};
use crate::{blob, human_bytes, keys};

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
        Command::SnapshotCreate { names, skip_errors } => create(g, &names, skip_errors),
        Command::SnapshotList { json } => list(g, json),
        Command::Restore {
            snapshot,
            target,
            paths,
            identity,
        } => restore(g, &snapshot, &target, paths, identity.as_deref()),
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

/// The store from `--store`/`$VAULTIK_STORE`, else from the config.
fn store_config(g: &Global, cfg: Option<&Config>) -> Result<StoreConfig> {
    let spec = g.store.clone().or_else(|| env("VAULTIK_STORE"));
    let Some(spec) = spec else {
        return cfg.and_then(|c| c.store.clone()).ok_or_else(|| {
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
            secret_access_key: from_cfg.and_then(|s| s.secret_access_key),
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
    eprintln!("vaultik: warning: {msg}");
}

fn create(g: &Global, names: &[String], skip_errors: bool) -> Result<()> {
    let cfg = load_config(g, true)?.expect("a required config is loaded or an error");
    let recipients = keys::parse_recipients(&cfg.age_recipients, &cfg.path)?;
    if cfg.snapshots.is_empty() {
        return Err(Error::Setup(format!(
            "{}: no [snapshot NAME] section configured",
            cfg.path.display()
        )));
    }
    let selected: Vec<_> = if names.is_empty() {
        cfg.snapshots.iter().collect()
    } else {
        names
            .iter()
            .map(|n| {
                cfg.snapshots.iter().find(|s| &s.name == n).ok_or_else(|| {
                    Error::Usage(format!(
                        "no [snapshot {n}] in {} (configured: {})",
                        cfg.path.display(),
                        cfg.snapshots
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect::<Result<_>>()?
    };
    let store_cfg = store_config(g, Some(&cfg))?;
    let store = store::open(&store_cfg)?;
    let index_path = cfg.index_path.clone().unwrap_or_else(default_index_path);
    if let Some(dir) = index_path.parent() {
        blob::private_dir(dir)?;
    }
    let _lock = RunLock::acquire(&index_path)?;
    let (mut index, _fresh) = Index::open(&index_path, &store.describe())?;
    let tmp_dir = index_path.parent().unwrap_or(Path::new(".")).join("tmp");
    blob::private_dir(&tmp_dir)?;
    clean_tmp(&tmp_dir);

    // Never deduplicate against a blob that is no longer in the store.
    let present: Vec<String> = store.list("blobs/")?.into_iter().map(|o| o.key).collect();
    let dropped = index.forget_missing_blobs(&present)?;
    if dropped > 0 {
        warn(&format!(
            "{dropped} blob(s) known to the index are gone from the store; their data will be uploaded again"
        ));
    }

    let backup = Backup {
        store: store.as_ref(),
        index: Mutex::new(index),
        recipients,
        hostname: cfg.hostname.clone().unwrap_or_else(system_hostname),
        tmp_dir,
        params: Params::new(cfg.chunk_size),
        level: cfg.compression_level,
        blob_limit: cfg.blob_size_limit,
        global_excludes: cfg.exclude.clone(),
        skip_errors,
        warn: &warn,
    };
    let mut warnings = 0;
    let mut out = std::io::stdout().lock();
    for snap in selected {
        let s = backup.run(snap)?;
        warnings += s.warnings;
        let _ = writeln!(
            out,
            "snapshot {}: {} entries, {} files ({}) scanned; {} files ({}) read; \
             {} new chunks ({}) in {} blobs ({} uploaded); {} warnings; {:.1}s",
            s.id,
            s.entries,
            s.files,
            human_bytes(s.bytes_scanned),
            s.files_read,
            human_bytes(s.bytes_read),
            s.new_chunks,
            human_bytes(s.new_bytes),
            s.blobs,
            human_bytes(s.blob_bytes),
            s.warnings,
            s.seconds
        );
    }
    let _ = writeln!(out, "{}", store.stats().summary());
    if warnings > 0 {
        return Err(Error::Partial {
            failed: warnings as usize,
            what: "skipped",
        });
    }
    Ok(())
}

/// Remove temporary files left by a killed run (we hold the run lock).
fn clean_tmp(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn open_store(g: &Global) -> Result<Box<dyn Store>> {
    let cfg = load_config(g, false)?;
    store::open(&store_config(g, cfg.as_ref())?)
}

fn list(g: &Global, json: bool) -> Result<()> {
    let store = open_store(g)?;
    let manifests = snapshot::list_manifests(store.as_ref())?;
    let mut out = std::io::stdout().lock();
    if json {
        let arr: Vec<serde_json::Value> = manifests
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id,
                    "hostname": m.hostname,
                    "name": m.name,
                    "time": snapshot::compact_time(m.time),
                    "unix_time": m.time,
                    "size": m.total_size(),
                    "blobs": m.blobs.len(),
                })
            })
            .collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&arr).expect("JSON values serialize")
        );
    } else {
        let w = manifests
            .iter()
            .map(|m| m.id.len())
            .max()
            .unwrap_or(2)
            .max(2);
        let _ = writeln!(out, "{:<w$}  {:<23}  {:>10}", "ID", "TIME", "SIZE");
        for m in &manifests {
            let _ = writeln!(
                out,
                "{:<w$}  {:<23}  {:>10}",
                m.id,
                snapshot::display_time(m.time),
                human_bytes(m.total_size())
            );
        }
    }
    Ok(())
}

fn restore(
    g: &Global,
    id: &str,
    target: &Path,
    paths: Vec<String>,
    identity: Option<&Path>,
) -> Result<()> {
    let identities = keys::load_identities(identity)?;
    let store = open_store(g)?;
    let id = snapshot::resolve(store.as_ref(), id)?;
    let r = Restore {
        store: store.as_ref(),
        identities,
        target: target.to_path_buf(),
        paths,
        warn: &warn,
    };
    let result = r.run(&id);
    let mut out = std::io::stdout().lock();
    if let Ok(s) = &result {
        let _ = writeln!(
            out,
            "restored {} into {}: {} files ({}), {} directories, {} symlinks, {} other; {} chunks; {:.1}s",
            s.id,
            target.display(),
            s.files,
            human_bytes(s.bytes),
            s.dirs,
            s.symlinks,
            s.other,
            s.chunks,
            s.seconds
        );
    }
    let _ = writeln!(out, "{}", store.stats().summary());
    result.map(|_| ())
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

use std::os::unix::fs::OpenOptionsExt;
