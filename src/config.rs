//! The `vaultik.conf` file: `key = value` lines, `#` comments, `[section]`
//! headers, repeatable list keys. Errors name `PATH:LINE`; unknown keys are
//! errors. Also the size and duration syntaxes shared with the command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, IoContext, Result};
use crate::store::class::StorageClass;
use crate::store::lock::LockMode;
use crate::store::settings::{Checksum, S3Config, StoreConfig, UrlStyle};

pub const DEFAULT_CONFIG: &str = "/etc/vaultik/vaultik.conf";
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;
pub const DEFAULT_BLOB_SIZE_LIMIT: u64 = 64 << 20;
/// Single PUTs are limited to 5 GiB on S3; stay well below.
pub const MAX_BLOB_SIZE_LIMIT: u64 = 4 << 30;
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was read from (for messages).
    pub path: PathBuf,
    pub age_recipients: Vec<String>,
    /// `trusted_signers`: the hosts' public signing keys a reader takes
    /// snapshots from (`signing.rs`); empty: any.
    pub trusted_signers: Vec<[u8; 32]>,
    pub index_path: Option<PathBuf>,
    pub hostname: Option<String>,
    pub chunk_size: u64,
    pub blob_size_limit: u64,
    pub compression_level: i32,
    pub exclude: Vec<String>,
    /// Directories holding a file of one of these names keep only it.
    pub exclude_if_present: Vec<String>,
    /// Directories holding a valid CACHEDIR.TAG keep only it.
    pub exclude_caches: bool,
    /// No mount point below a configured path is crossed.
    pub one_file_system: bool,
    /// Entries with the nodump inode flag (`chattr +d`) are left out.
    pub exclude_nodump: bool,
    /// Unreadable files are warned about and left out (exit code 1), as
    /// with `--skip-errors`.
    pub skip_errors: bool,
    /// Retention for `snapshot create --prune`: keep this many newest per name.
    pub keep_latest: Option<usize>,
    /// Retention for `snapshot create --prune`: keep everything younger than this.
    pub keep_within: Option<Duration>,
    /// Retention by the calendar: the newest snapshot of each of the last N
    /// hours, days, ISO weeks, months, years that have snapshots.
    pub keep_hourly: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_yearly: Option<usize>,
    /// The zone those periods are taken in (UTC when unset).
    pub retention_timezone: Option<String>,
    /// Garbage collection never deletes blobs younger than this.
    pub grace_period: Duration,
    /// Daemon: back up dirty snapshots at this interval.
    pub backup_interval: Duration,
    /// Daemon: never start two runs closer than this.
    pub min_time_between_run: Duration,
    /// Daemon: a full stat() scan of everything this often.
    pub full_scan_interval: Duration,
    /// Daemon: after a quiet period, wait this long after a change.
    pub settle_delay: Duration,
    /// Daemon: on SIGTERM, let a running backup finish for this long.
    pub stop_timeout: Duration,
    /// `metrics_file`: the Prometheus textfile written after every run.
    pub metrics_file: Option<PathBuf>,
    /// `ping_url`: health pings (healthchecks.io convention).
    pub ping_url: Option<String>,
    /// `hook_before`, `hook_after`, `hook_on_error`: around every snapshot.
    pub hooks: Hooks,
    /// `hook_timeout`: a hook running longer is killed.
    pub hook_timeout: Duration,
    pub store: Option<StoreConfig>,
    pub snapshots: Vec<SnapshotConfig>,
}

/// The default of `hook_timeout` (see monitor/hooks.rs for how hooks run).
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Before,
    After,
    OnError,
}

impl When {
    pub fn key(self) -> &'static str {
        match self {
            When::Before => "hook_before",
            When::After => "hook_after",
            When::OnError => "hook_on_error",
        }
    }
}

/// The hooks of one scope (global, or one snapshot's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub before: Option<Vec<String>>,
    pub after: Option<Vec<String>>,
    pub on_error: Option<Vec<String>>,
}

impl Hooks {
    pub fn get(&self, when: When) -> Option<&[String]> {
        match when {
            When::Before => self.before.as_deref(),
            When::After => self.after.as_deref(),
            When::OnError => self.on_error.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotConfig {
    pub name: String,
    /// The paths walked; none for a stream (`command`, or `--stdin`).
    pub paths: Vec<PathBuf>,
    pub exclude: Vec<String>,
    /// Over the global settings of the same names (the tag names add up).
    pub exclude_if_present: Vec<String>,
    pub exclude_caches: Option<bool>,
    pub one_file_system: Option<bool>,
    pub exclude_nodump: Option<bool>,
    /// `skip_errors`, over the global setting.
    pub skip_errors: Option<bool>,
    /// A command whose standard output is the snapshot's one file, split
    /// into words as a shell would (run without a shell).
    pub command: Option<Vec<String>>,
    /// The storage class of this snapshot's new blobs, over `[s3]`'s.
    pub storage_class: Option<StorageClass>,
    /// This snapshot's own hooks (run after the global `before`, before
    /// the global `after` and `on_error`).
    pub hooks: Hooks,
    /// This snapshot's own `ping_url`, over the global one.
    pub ping_url: Option<String>,
}

impl SnapshotConfig {
    /// A section for `snapshot create --stdin NAME` when the file has none.
    pub fn stream(name: &str) -> SnapshotConfig {
        SnapshotConfig {
            name: name.to_string(),
            paths: Vec::new(),
            exclude: Vec::new(),
            exclude_if_present: Vec::new(),
            exclude_caches: None,
            one_file_system: None,
            exclude_nodump: None,
            skip_errors: None,
            command: None,
            storage_class: None,
            hooks: Default::default(),
            ping_url: None,
        }
    }

    /// What backs this snapshot up.
    pub fn source(&self) -> Source<'_> {
        match &self.command {
            Some(argv) => Source::Command(argv),
            None if self.paths.is_empty() => Source::Stdin,
            None => Source::Paths(&self.paths),
        }
    }
}

/// Where a snapshot's content comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source<'c> {
    /// A walk of these paths.
    Paths(&'c [PathBuf]),
    /// A command's standard output, as one file.
    Command(&'c [String]),
    /// Standard input (`snapshot create --stdin NAME`), as one file.
    Stdin,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            path: PathBuf::new(),
            age_recipients: Vec::new(),
            trusted_signers: Vec::new(),
            index_path: None,
            hostname: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            blob_size_limit: DEFAULT_BLOB_SIZE_LIMIT,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            exclude: Vec::new(),
            exclude_if_present: Vec::new(),
            exclude_caches: false,
            one_file_system: false,
            exclude_nodump: false,
            skip_errors: false,
            keep_latest: None,
            keep_within: None,
            keep_hourly: None,
            keep_daily: None,
            keep_weekly: None,
            keep_monthly: None,
            keep_yearly: None,
            retention_timezone: None,
            grace_period: DEFAULT_GRACE_PERIOD,
            backup_interval: Duration::from_secs(3600),
            min_time_between_run: Duration::from_secs(15 * 60),
            full_scan_interval: Duration::from_secs(24 * 3600),
            settle_delay: Duration::from_secs(10 * 60),
            stop_timeout: Duration::from_secs(60),
            metrics_file: None,
            ping_url: None,
            hooks: Default::default(),
            hook_timeout: HOOK_TIMEOUT,
            store: None,
            snapshots: Vec::new(),
        }
    }
}

enum Section {
    Global,
    S3,
    Local,
    Snapshot(usize),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read(path).at("read config file", path)?;
        let text = String::from_utf8(text).map_err(|_| Error::Config {
            path: path.to_path_buf(),
            line: 0,
            msg: "the file is not valid UTF-8".into(),
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let mut p = Parsing {
            cfg: Config {
                path: path.to_path_buf(),
                ..Config::default()
            },
            section: Section::Global,
            s3: None,
            local: None,
        };
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = strip_comment(raw).trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                p.section = p.section_header(n, line, rest)?;
                continue;
            }
            let (key, value) = line
                .split_once('=')
                // The line itself is not echoed: it could hold a secret.
                .ok_or_else(|| p.err(n, "expected `key = value`".to_string()))?;
            let l = Line {
                path,
                n,
                key: key.trim(),
                value: unquote(value.trim()),
                raw: value.trim(),
            };
            if l.value.is_empty() {
                return Err(l.err(format!("`{}` has an empty value", l.key)));
            }
            match p.section {
                Section::Global => p.global_key(&l)?,
                Section::S3 => p.s3_key(&l)?,
                Section::Local => match l.key {
                    "path" => p.local.as_mut().expect("inside [local]").1 = Some(l.value.into()),
                    _ => return Err(l.err(format!("unknown key `{}` in [local]", l.key))),
                },
                Section::Snapshot(idx) => p.snapshot_key(idx, &l)?,
            }
        }
        p.finish(text)
    }
}

/// A config file being read.
struct Parsing {
    cfg: Config,
    section: Section,
    /// The [s3] section (where it starts) once seen.
    s3: Option<(usize, S3Config)>,
    /// The [local] section and its path once seen.
    local: Option<(usize, Option<PathBuf>)>,
}

/// One `key = value` line.
struct Line<'l> {
    path: &'l Path,
    n: usize,
    key: &'l str,
    /// The value, without quotes around the whole of it.
    value: &'l str,
    /// The value as written (a command keeps its quotes).
    raw: &'l str,
}

impl Line<'_> {
    fn err(&self, msg: String) -> Error {
        Error::Config {
            path: self.path.to_path_buf(),
            line: self.n,
            msg,
        }
    }

    /// The value is not what `key` takes.
    fn bad(&self, what: &str) -> Error {
        self.err(format!("`{}`: {what}, found `{}`", self.key, self.value))
    }

    fn size(
        &self,
        example: &str,
        range: std::ops::RangeInclusive<u64>,
        within: &str,
    ) -> Result<u64> {
        let v = parse_size(self.value)
            .ok_or_else(|| self.bad(&format!("expected a size like {example}")))?;
        if !range.contains(&v) {
            return Err(self.bad(within));
        }
        Ok(v)
    }

    /// A number of periods to keep, at least 1.
    fn count(&self) -> Result<usize> {
        self.value
            .parse()
            .ok()
            .filter(|v| *v >= 1)
            .ok_or_else(|| self.bad("expected a number, at least 1"))
    }

    /// Every boolean key: yes/no, true/false, on/off, 1/0, in any case.
    fn boolean(&self) -> Result<bool> {
        parse_bool(self.value)
            .ok_or_else(|| self.bad("expected yes or no (true/false, on/off, 1/0)"))
    }

    /// A file name (no `/`), as `exclude_if_present` takes.
    fn tag_name(&self) -> Result<String> {
        if self.value.contains('/') || self.value == "." || self.value == ".." {
            return Err(self.bad("expected a file name, without `/`"));
        }
        Ok(self.value.to_string())
    }

    /// The patterns of the file `exclude_from` names: one a line; empty
    /// lines and lines starting with `#` are skipped. Errors name that
    /// file and its line.
    fn exclude_file(&self) -> Result<Vec<String>> {
        let path = Path::new(self.value);
        let text = std::fs::read(path).map_err(|e| {
            self.err(format!(
                "`exclude_from`: cannot read {}: {e}",
                path.display()
            ))
        })?;
        let text = String::from_utf8(text).map_err(|_| Error::Config {
            path: path.to_path_buf(),
            line: 0,
            msg: "the file is not valid UTF-8".into(),
        })?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let p = line.trim();
            if p.is_empty() || p.starts_with('#') {
                continue;
            }
            check_glob(p).map_err(|msg| Error::Config {
                path: path.to_path_buf(),
                line: i + 1,
                msg,
            })?;
            out.push(p.to_string());
        }
        Ok(out)
    }

    fn storage_class(&self) -> Result<StorageClass> {
        StorageClass::parse(self.value).ok_or_else(|| {
            self.bad(&format!(
                "expected one of {}",
                StorageClass::NAMES.join(", ")
            ))
        })
    }

    /// `ping_url`: an http(s) URL.
    fn ping_url(&self) -> Result<String> {
        if !is_ping_url(self.value) {
            return Err(self.bad("expected an http:// or https:// URL (healthchecks.io style)"));
        }
        Ok(self.value.to_string())
    }

    /// `hook_before`, `hook_after` or `hook_on_error` into `hooks`: a
    /// command line split as a shell would (run without one); once each.
    fn hook(&self, hooks: &mut Hooks) -> Result<()> {
        let slot = match self.key {
            "hook_before" => &mut hooks.before,
            "hook_after" => &mut hooks.after,
            _ => &mut hooks.on_error,
        };
        if slot.is_some() {
            return Err(self.err(format!("`{}` given twice in one section", self.key)));
        }
        let argv = crate::stream::split_command(self.raw).map_err(|m| self.bad(&m))?;
        *slot = Some(argv);
        Ok(())
    }

    /// Bytes per second (`limit_upload`, `limit_download`).
    fn rate(&self) -> Result<u64> {
        parse_rate(self.value).ok_or_else(|| {
            self.bad(&format!(
                "expected bytes per second like 10MB or 5MiB/s, at least {RATE_MIN}"
            ))
        })
    }

    fn duration(&self, example: &str) -> Result<Duration> {
        parse_duration(self.value)
            .ok_or_else(|| self.bad(&format!("expected a duration like {example}")))
    }
}

impl Parsing {
    fn err(&self, line: usize, msg: String) -> Error {
        Error::Config {
            path: self.cfg.path.clone(),
            line,
            msg,
        }
    }

    /// `[s3]`, `[local]` or `[snapshot NAME]` (`rest` follows the `[`).
    fn section_header(&mut self, n: usize, line: &str, rest: &str) -> Result<Section> {
        let inner = rest
            .strip_suffix(']')
            .ok_or_else(|| self.err(n, format!("unterminated section header `{line}`")))?
            .trim();
        let mut words = inner.split_whitespace();
        Ok(match (words.next(), words.next(), words.next()) {
            (Some("s3"), None, _) => {
                if self.s3.is_some() {
                    return Err(self.err(n, "duplicate [s3] section".into()));
                }
                self.s3 = Some((n, S3Config::default()));
                Section::S3
            }
            (Some("local"), None, _) => {
                if self.local.is_some() {
                    return Err(self.err(n, "duplicate [local] section".into()));
                }
                self.local = Some((n, None));
                Section::Local
            }
            (Some("snapshot"), Some(name), None) => {
                check_snapshot_name(name).map_err(|m| self.err(n, m))?;
                if self.cfg.snapshots.iter().any(|s| s.name == name) {
                    return Err(self.err(n, format!("duplicate [snapshot {name}] section")));
                }
                self.cfg.snapshots.push(SnapshotConfig::stream(name));
                Section::Snapshot(self.cfg.snapshots.len() - 1)
            }
            (Some("snapshot"), None, _) => {
                return Err(self.err(n, "[snapshot] needs a name: [snapshot NAME]".into()));
            }
            _ => {
                return Err(self.err(
                    n,
                    format!(
                        "unknown section [{inner}] (expected [s3], [local] or [snapshot NAME])"
                    ),
                ));
            }
        })
    }

    fn global_key(&mut self, l: &Line<'_>) -> Result<()> {
        let (cfg, value) = (&mut self.cfg, l.value);
        match l.key {
            "age_recipient" => {
                if <age::x25519::Recipient as std::str::FromStr>::from_str(value).is_err() {
                    return Err(l.bad("expected an age X25519 recipient (age1...)"));
                }
                cfg.age_recipients.push(value.to_string());
            }
            "trusted_signers" => {
                for k in value.split([',', ' ']).filter(|k| !k.is_empty()) {
                    let k = crate::signing::parse_signer(k).ok_or_else(|| {
                        l.bad("expected host signing keys (ed25519:<64 hex digits>)")
                    })?;
                    cfg.trusted_signers.push(k);
                }
            }
            "index_path" => cfg.index_path = Some(PathBuf::from(value)),
            "hostname" => {
                if value.len() > crate::layout::HOSTNAME_MAX {
                    return Err(l.err(format!(
                        "`hostname`: {} bytes, more than the {} a manifest may carry",
                        value.len(),
                        crate::layout::HOSTNAME_MAX
                    )));
                }
                cfg.hostname = Some(value.to_string());
            }
            "chunk_size" => {
                cfg.chunk_size =
                    l.size("1MiB", 4096..=(4 << 20), "must be between 4KiB and 4MiB")?;
            }
            "blob_size_limit" => {
                cfg.blob_size_limit = l.size(
                    "1GiB",
                    (1 << 20)..=MAX_BLOB_SIZE_LIMIT,
                    "must be between 1MiB and 4GiB",
                )?;
            }
            "compression_level" => {
                cfg.compression_level = value
                    .parse()
                    .ok()
                    .filter(|v| (1..=22).contains(v))
                    .ok_or_else(|| l.bad("expected a zstd level from 1 to 22"))?;
            }
            "exclude" => {
                check_glob(value).map_err(|m| l.err(m))?;
                cfg.exclude.push(value.to_string());
            }
            "exclude_from" => cfg.exclude.extend(l.exclude_file()?),
            "exclude_if_present" => cfg.exclude_if_present.push(l.tag_name()?),
            "exclude_caches" => cfg.exclude_caches = l.boolean()?,
            "exclude_nodump" => cfg.exclude_nodump = l.boolean()?,
            "one_file_system" => cfg.one_file_system = l.boolean()?,
            "skip_errors" => cfg.skip_errors = l.boolean()?,
            "keep_latest" => cfg.keep_latest = Some(l.count()?),
            "keep_within" => cfg.keep_within = Some(l.duration("30d")?),
            "keep_hourly" => cfg.keep_hourly = Some(l.count()?),
            "keep_daily" => cfg.keep_daily = Some(l.count()?),
            "keep_weekly" => cfg.keep_weekly = Some(l.count()?),
            "keep_monthly" => cfg.keep_monthly = Some(l.count()?),
            "keep_yearly" => cfg.keep_yearly = Some(l.count()?),
            "retention_timezone" => {
                crate::time::zone(Some(value)).map_err(|e| l.err(e.to_string()))?;
                cfg.retention_timezone = Some(value.to_string());
            }
            "grace_period" => cfg.grace_period = l.duration("24h")?,
            "backup_interval" => cfg.backup_interval = l.duration("15m")?,
            "min_time_between_run" => cfg.min_time_between_run = l.duration("15m")?,
            "full_scan_interval" => cfg.full_scan_interval = l.duration("15m")?,
            "settle_delay" => cfg.settle_delay = l.duration("15m")?,
            "stop_timeout" => cfg.stop_timeout = l.duration("15m")?,
            "metrics_file" => cfg.metrics_file = Some(PathBuf::from(value)),
            "ping_url" => cfg.ping_url = Some(l.ping_url()?),
            "hook_before" | "hook_after" | "hook_on_error" => l.hook(&mut cfg.hooks)?,
            "hook_timeout" => {
                cfg.hook_timeout = l.duration("5m")?;
                if cfg.hook_timeout.is_zero() {
                    return Err(l.bad("expected a duration longer than 0s"));
                }
            }
            key => return Err(l.err(format!("unknown key `{key}`"))),
        }
        Ok(())
    }

    fn s3_key(&mut self, l: &Line<'_>) -> Result<()> {
        let s = &mut self.s3.as_mut().expect("inside [s3]").1;
        let value = l.value;
        match l.key {
            "endpoint" => {
                if !(value.starts_with("http://") || value.starts_with("https://")) {
                    return Err(l.bad("expected an http:// or https:// URL"));
                }
                s.endpoint = value.to_string();
            }
            "bucket" => s.bucket = value.to_string(),
            "prefix" => {
                // Keys are `<prefix>blobs/...`: the prefix is a folder.
                let mut p = value.to_string();
                if !p.ends_with('/') {
                    p.push('/');
                }
                check_prefix(&p).map_err(|m| l.err(m))?;
                s.prefix = p;
            }
            "region" => s.region = value.to_string(),
            "access_key_id" => s.access_key_id = Some(value.to_string()),
            "secret_access_key" => s.secret_access_key = Some(value.to_string()),
            "ca_file" => s.ca_file = Some(PathBuf::from(value)),
            "storage_class" => s.storage_class = l.storage_class()?,
            "object_lock" => {
                s.object_lock = LockMode::parse(value)
                    .ok_or_else(|| l.bad("expected off, governance or compliance"))?
            }
            "lock_for" => {
                let d = l.duration("90d")?;
                if d.is_zero() {
                    return Err(l.bad("expected a duration longer than 0s"));
                }
                s.lock_for = Some(d);
            }
            "retry_for" => s.retry_for = Some(l.duration("15m")?),
            "limit_upload" => s.limit_upload = Some(l.rate()?),
            "limit_download" => s.limit_download = Some(l.rate()?),
            "connections" => {
                s.connections = Some(
                    l.value
                        .parse()
                        .ok()
                        .filter(|n| (1..=CONNECTIONS_MAX).contains(n))
                        .ok_or_else(|| {
                            l.bad(&format!("expected a number from 1 to {CONNECTIONS_MAX}"))
                        })?,
                )
            }
            "checksum" => {
                s.checksum = Checksum::parse(value).ok_or_else(|| {
                    l.bad(&format!("expected one of {}", Checksum::NAMES.join(", ")))
                })?
            }
            "url_style" => {
                s.url_style = UrlStyle::parse(value).ok_or_else(|| {
                    l.bad(&format!("expected one of {}", UrlStyle::NAMES.join(", ")))
                })?
            }
            key => return Err(l.err(format!("unknown key `{key}` in [s3]"))),
        }
        Ok(())
    }

    fn snapshot_key(&mut self, idx: usize, l: &Line<'_>) -> Result<()> {
        let snap = &mut self.cfg.snapshots[idx];
        match l.key {
            "path" => {
                if !l.value.starts_with('/') {
                    return Err(l.bad("expected an absolute path"));
                }
                snap.paths.push(PathBuf::from(l.value));
            }
            "exclude" => {
                check_glob(l.value).map_err(|m| l.err(m))?;
                snap.exclude.push(l.value.to_string());
            }
            "exclude_from" => snap.exclude.extend(l.exclude_file()?),
            "exclude_if_present" => snap.exclude_if_present.push(l.tag_name()?),
            "exclude_caches" => snap.exclude_caches = Some(l.boolean()?),
            "exclude_nodump" => snap.exclude_nodump = Some(l.boolean()?),
            "one_file_system" => snap.one_file_system = Some(l.boolean()?),
            "skip_errors" => snap.skip_errors = Some(l.boolean()?),
            "command" => {
                if snap.command.is_some() {
                    return Err(l.err(format!("[snapshot {}] has two `command`s", snap.name)));
                }
                let argv = crate::stream::split_command(l.raw).map_err(|m| l.bad(&m))?;
                snap.command = Some(argv);
            }
            "storage_class" => snap.storage_class = Some(l.storage_class()?),
            "ping_url" => snap.ping_url = Some(l.ping_url()?),
            "hook_before" | "hook_after" | "hook_on_error" => l.hook(&mut snap.hooks)?,
            key => {
                return Err(l.err(format!("unknown key `{key}` in [snapshot {}]", snap.name)));
            }
        }
        Ok(())
    }

    /// The store, and the checks of the file as a whole.
    fn finish(mut self, text: &str) -> Result<Config> {
        match (self.s3.take(), self.local.take()) {
            (Some(_), Some((n, _))) => {
                return Err(self.err(n, "[local] and [s3] cannot both be configured".into()));
            }
            (Some((n, s)), None) => {
                if s.bucket.is_empty() {
                    return Err(self.err(n, "[s3] needs `bucket`".into()));
                }
                if s.endpoint.is_empty() {
                    return Err(self.err(n, "[s3] needs `endpoint`".into()));
                }
                if s.object_lock.is_on() && s.checksum == Checksum::None {
                    return Err(self.err(
                        n,
                        "[s3] has `object_lock` with `checksum = none`: S3 wants a checksum \
                         with every locked PUT (set `checksum = md5` or `sha256`)"
                            .into(),
                    ));
                }
                if s.lock_for.is_some() && !s.object_lock.is_on() {
                    return Err(self.err(
                        n,
                        "[s3] has `lock_for` but not `object_lock = governance` or `compliance`"
                            .into(),
                    ));
                }
                let region = if s.region.is_empty() {
                    "us-east-1".to_string()
                } else {
                    s.region.clone()
                };
                self.cfg.store = Some(StoreConfig::S3(S3Config { region, ..s }));
            }
            (None, Some((n, path))) => {
                let path = path.ok_or_else(|| self.err(n, "[local] needs `path`".into()))?;
                self.cfg.store = Some(StoreConfig::Local { path });
            }
            (None, None) => {}
        }
        for s in &self.cfg.snapshots {
            let line = || section_line(text, &s.name);
            if s.command.is_some() && !s.paths.is_empty() {
                return Err(self.err(
                    line(),
                    format!(
                        "[snapshot {}] has both `path` and `command`: a snapshot is a walk of paths or one command's output",
                        s.name
                    ),
                ));
            }
            if s.paths.is_empty()
                && (!s.exclude.is_empty()
                    || !s.exclude_if_present.is_empty()
                    || s.exclude_caches.is_some()
                    || s.exclude_nodump.is_some()
                    || s.one_file_system.is_some())
            {
                return Err(self.err(
                    line(),
                    format!(
                        "[snapshot {}] has no `path` (a stream's section, for `command` or --stdin, takes no `exclude` or other walk settings)",
                        s.name
                    ),
                ));
            }
        }
        Ok(self.cfg)
    }
}

/// The line of `[snapshot NAME]` in `text` (0 when not found).
fn section_line(text: &str, name: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = strip_comment(l).trim();
            l.strip_prefix("[snapshot")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::trim)
                == Some(name)
        })
        .map_or(0, |i| i + 1)
}

fn strip_comment(line: &str) -> &str {
    // A `#` starts a comment at the start of a line or after whitespace, so
    // values such as `*.tmp#1` keep their `#`.
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn unquote(v: &str) -> &str {
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        &v[1..v.len() - 1]
    } else {
        v
    }
}

pub fn check_snapshot_name(name: &str) -> std::result::Result<(), String> {
    if !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with('.')
    {
        Ok(())
    } else {
        Err(format!(
            "snapshot name `{name}`: use letters, digits, `-` and `.` only (at most 64)"
        ))
    }
}

/// Store prefixes become part of object keys: keep them to safe characters.
pub fn check_prefix(prefix: &str) -> std::result::Result<(), String> {
    let ok = prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        && !prefix.starts_with('/')
        && !prefix.contains("//")
        && !prefix.split('/').any(|s| s == ".." || s == ".");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "prefix `{prefix}`: use letters, digits and `/._-` only, no leading `/`, `//` or `..`"
        ))
    }
}

fn check_glob(pattern: &str) -> std::result::Result<(), String> {
    glob::Pattern::new(pattern)
        .map(|_| ())
        .map_err(|e| format!("exclude `{pattern}`: {e}"))
}

/// `512`, `512B`, `64KB`, `1MiB`, `10GB`, `1.5GiB` (decimal KB/MB/GB, binary KiB/MiB/GiB).
/// A boolean as config files spell it: yes/no, true/false, on/off, 1/0,
/// in any case.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Some(true),
        "no" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    if num.is_empty() {
        return None;
    }
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult);
    }
    let f: f64 = num.parse().ok()?;
    let v = f * mult as f64;
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

/// The most requests in flight `connections` may allow.
pub const CONNECTIONS_MAX: usize = 64;
/// The smallest bandwidth limit taken, in bytes per second.
pub const RATE_MIN: u64 = 1024;

/// A bandwidth limit: a size per second (`10MB`, `5MiB/s`, `800KB/s`), at
/// least `RATE_MIN`.
pub fn parse_rate(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_suffix("/s").unwrap_or(s);
    parse_size(s).filter(|n| *n >= RATE_MIN)
}

/// `30s`, `15m`, `1h`, `7d`, `2w`, `6mo`, `1y`; several may be combined (`1h30m`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 7 * 86_400,
            "mo" => 30 * 86_400,
            "y" => 365 * 86_400,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(n.checked_mul(secs)?)?;
    }
    Some(Duration::from_secs(total))
}

/// `ping_url` must be an http(s) URL with a host.
pub fn is_ping_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) => !r.is_empty() && !r.starts_with('/') && !url.contains(char::is_whitespace),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(Path::new("/t/vaultik.conf"), text)
    }

    #[test]
    fn booleans_are_spelled_one_way_everywhere() {
        for (v, want) in [
            ("yes", true),
            ("True", true),
            ("ON", true),
            ("1", true),
            ("no", false),
            ("FALSE", false),
            ("off", false),
            ("0", false),
        ] {
            let cfg = parse(&format!(
                "exclude_caches = {v}\nskip_errors = {v}\n[snapshot a]\npath = /a\n\
                 one_file_system = {v}\nskip_errors = {v}\n"
            ))
            .unwrap();
            assert_eq!(cfg.exclude_caches, want, "{v}");
            assert_eq!(cfg.skip_errors, want, "{v}");
            assert_eq!(cfg.snapshots[0].one_file_system, Some(want), "{v}");
            assert_eq!(cfg.snapshots[0].skip_errors, Some(want), "{v}");
        }
        let e = parse("# c\n\nexclude_nodump = maybe\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/t/vaultik.conf:3: `exclude_nodump`: expected yes or no (true/false, on/off, 1/0), found `maybe`"
        );
    }

    #[test]
    fn full_example_parses() {
        let cfg = parse(
            "# comment\nage_recipient = age1rswgjjpraurgu7v92eqp2jc4em8l486e9tn2dxgp89ejcpyqlc9qpcrmse\nage_recipient = age1kdjtqk23hdjf69z5kj23mvaylzd79xmg3ztz6jfdl28l7t0tp5fsjc5wlr # two\n\
             chunk_size = 512KiB\nblob_size_limit = 10MB\ncompression_level = 5\nexclude = *.tmp\n\
             keep_latest = 7\nkeep_within = 30d\ngrace_period = 2h\nbackup_interval = 5s\nsettle_delay = 1m\n\
             [s3]\nendpoint = http://127.0.0.1:9000\nbucket = b\nprefix = host1\n\
             [snapshot etc]\npath = /etc\nexclude = *.log\n[snapshot home]\npath = /home\npath = /root\n",
        )
        .unwrap();
        assert_eq!(
            cfg.age_recipients,
            vec![
                "age1rswgjjpraurgu7v92eqp2jc4em8l486e9tn2dxgp89ejcpyqlc9qpcrmse",
                "age1kdjtqk23hdjf69z5kj23mvaylzd79xmg3ztz6jfdl28l7t0tp5fsjc5wlr"
            ]
        );
        assert_eq!(cfg.chunk_size, 512 * 1024);
        assert_eq!(cfg.blob_size_limit, 10_000_000);
        assert_eq!(cfg.compression_level, 5);
        assert_eq!(cfg.exclude, vec!["*.tmp"]);
        assert_eq!(cfg.keep_latest, Some(7));
        assert_eq!(cfg.keep_within, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(cfg.grace_period, Duration::from_secs(7200));
        assert_eq!(cfg.backup_interval, Duration::from_secs(5));
        assert_eq!(cfg.settle_delay, Duration::from_secs(60));
        assert_eq!(cfg.full_scan_interval, Duration::from_secs(86400));
        match cfg.store.unwrap() {
            StoreConfig::S3(s) => {
                assert_eq!(s.bucket, "b");
                assert_eq!(s.prefix, "host1/");
                assert_eq!(s.region, "us-east-1");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cfg.snapshots.len(), 2);
        assert_eq!(cfg.snapshots[1].paths.len(), 2);
        assert_eq!(cfg.snapshots[0].exclude, vec!["*.log"]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse("age_recipient = age1rswgjjpraurgu7v92eqp2jc4em8l486e9tn2dxgp89ejcpyqlc9qpcrmse\n\nbogus = 1\n").unwrap_err();
        assert_eq!(e.to_string(), "/t/vaultik.conf:3: unknown key `bogus`");
        let e = parse("[s3]\nbucket = b\nendpoint = ftp://x\n").unwrap_err();
        assert!(
            e.to_string().starts_with("/t/vaultik.conf:3: `endpoint`"),
            "{e}"
        );
        let e = parse("chunk_size = lots\n").unwrap_err();
        assert!(
            e.to_string().starts_with("/t/vaultik.conf:1: `chunk_size`"),
            "{e}"
        );
        let e = parse("[snapshot a_b]\n").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/t/vaultik.conf:1: snapshot name"),
            "{e}"
        );
        let e = parse("[weird]\n").unwrap_err();
        assert!(e.to_string().contains(":1: unknown section"), "{e}");
        let e = parse("just words\n").unwrap_err();
        assert!(e.to_string().contains(":1: expected `key = value`"), "{e}");
        let e = parse("[local]\npath = /x\n[s3]\nbucket = b\nendpoint = http://x\n").unwrap_err();
        assert!(e.to_string().contains("cannot both"), "{e}");
        let e = parse("# x\n[snapshot a]\nexclude = *.x\n").unwrap_err();
        assert!(
            e.to_string().contains(":2: [snapshot a] has no `path`"),
            "{e}"
        );
        let e = parse("age_recipient = age1notakey\n").unwrap_err();
        assert!(e.to_string().contains(":1: `age_recipient`"), "{e}");
        let e = parse("secret_access_key hunter2\n").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // A host name manifests could not carry (readers refuse it).
        let long = "h".repeat(crate::layout::HOSTNAME_MAX + 1);
        let e = parse(&format!("hostname = {long}\n")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/t/vaultik.conf:1: `hostname`: 256 bytes"),
            "{e}"
        );
        let long = "h".repeat(crate::layout::HOSTNAME_MAX);
        assert!(parse(&format!("hostname = {long}\n")).is_ok());
    }

    #[test]
    fn the_example_config_parses() {
        let cfg = parse(include_str!("../vaultik.example.conf")).unwrap();
        assert!(cfg.snapshots.iter().any(|s| s.name == "etc"));
        let pg = cfg.snapshots.iter().find(|s| s.name == "pg").unwrap();
        assert_eq!(pg.source(), Source::Stdin, "commented out");
    }

    #[test]
    fn streams_and_classes() {
        let cfg = parse(
            "[s3]\nendpoint = http://x\nbucket = b\nstorage_class = glacier\n\
             [snapshot db]\ncommand = sh -c 'pg_dumpall | gzip'  # nightly\n\
             storage_class = DEEP_ARCHIVE\n[snapshot fed]\n",
        )
        .unwrap();
        match cfg.store.as_ref().unwrap() {
            StoreConfig::S3(s) => assert_eq!(s.storage_class, StorageClass::Glacier),
            other => panic!("{other:?}"),
        }
        let db = &cfg.snapshots[0];
        assert_eq!(
            db.source(),
            Source::Command(&["sh".into(), "-c".into(), "pg_dumpall | gzip".into()])
        );
        assert_eq!(db.storage_class, Some(StorageClass::DeepArchive));
        assert_eq!(cfg.snapshots[1].source(), Source::Stdin);
        for (text, want) in [
            (
                "[snapshot a]\npath = /x\ncommand = true\n",
                ":1: [snapshot a] has both",
            ),
            (
                "[snapshot a]\ncommand = 'open\n",
                ":2: `command`: unterminated",
            ),
            (
                "[snapshot a]\ncommand = x\ncommand = y\n",
                ":3: [snapshot a] has two",
            ),
            (
                "[s3]\nstorage_class = COLD\n",
                ":2: `storage_class`: expected one of STANDARD",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn s3_transport_settings() {
        let cfg = parse("[s3]\nendpoint = http://x\nbucket = b\nretry_for = 1h30m\n").unwrap();
        match cfg.store.as_ref().unwrap() {
            StoreConfig::S3(s) => assert_eq!(s.retry_for, Some(Duration::from_secs(5400))),
            other => panic!("{other:?}"),
        }
        let cfg =
            parse("[s3]\nendpoint = http://x\nbucket = b\nchecksum = MD5\nurl_style = virtual\n")
                .unwrap();
        match cfg.store.as_ref().unwrap() {
            StoreConfig::S3(s) => {
                assert_eq!(
                    (s.checksum, s.url_style),
                    (Checksum::Md5, UrlStyle::Virtual)
                )
            }
            other => panic!("{other:?}"),
        }
        for (text, want) in [
            (
                "[s3]\nchecksum = crc32\n",
                ":2: `checksum`: expected one of sha256, md5, none, found `crc32`",
            ),
            (
                "[s3]\nurl_style = dns\n",
                ":2: `url_style`: expected one of auto, path, virtual, found `dns`",
            ),
            (
                "[s3]\nendpoint = http://x\nbucket = b\nobject_lock = compliance\n\
                 lock_for = 1d\nchecksum = none\n",
                ":1: [s3] has `object_lock` with `checksum = none`",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let cfg = parse(
            "[s3]\nendpoint = http://x\nbucket = b\nlimit_upload = 10MB\n\
             limit_download = 5MiB/s\nconnections = 4\n",
        )
        .unwrap();
        match cfg.store.as_ref().unwrap() {
            StoreConfig::S3(s) => assert_eq!(
                (s.limit_upload, s.limit_download, s.connections),
                (Some(10_000_000), Some(5 << 20), Some(4))
            ),
            other => panic!("{other:?}"),
        }
        for (text, want) in [
            (
                "[s3]\nlimit_upload = fast\n",
                ":2: `limit_upload`: expected bytes per second like 10MB or 5MiB/s, at least 1024",
            ),
            (
                "[s3]\nlimit_download = 10\n",
                ":2: `limit_download`: expected",
            ),
            (
                "[s3]\nconnections = 0\n",
                ":2: `connections`: expected a number from 1 to 64, found `0`",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let e = parse("[s3]\nretry_for = soon\n").unwrap_err().to_string();
        assert!(
            e.contains(":2: `retry_for`: expected a duration like 15m, found `soon`"),
            "{e}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("1.5KiB"), Some(1536));
        assert_eq!(parse_size("5KB"), Some(5000));
        assert_eq!(parse_size("MB"), None);
        assert_eq!(parse_size("5XB"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(
            parse_duration("6mo"),
            Some(Duration::from_secs(180 * 86400))
        );
        assert_eq!(parse_duration("1y"), Some(Duration::from_secs(365 * 86400)));
        assert_eq!(parse_duration("2w"), Some(Duration::from_secs(14 * 86400)));
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
    }
}
