//! `snapshot create [--cron] [--prune] [--skip-errors] [--daemon] [NAME...]`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use age::x25519;

use super::settings::Settings;
use super::{log, output, warn};
use crate::backup::progress::Style;
use crate::backup::{Backup, Scope};
use crate::chunk::Params;
use crate::cli::CreateArgs;
use crate::config::{Config, SnapshotConfig, Source};
use crate::error::{Error, Result};
use crate::gc::Retention;
use crate::index::{Index, Opened};
use crate::lock::RunLock;
use crate::monitor::metrics::StoreSeen;
use crate::monitor::{Outcome, Watch};
use crate::store::Store;
use crate::store::class::StorageClass;
use crate::store::lock::{LockMode, LockPlan};
use crate::stream::Stream;
use crate::{blob, human_bytes, keys, store};

/// Everything a backup run needs that does not change between runs.
pub struct Session {
    pub cfg: Config,
    pub store: Box<dyn Store>,
    pub index_path: PathBuf,
    pub tmp_dir: PathBuf,
    pub last_dir: PathBuf,
    pub hostname: String,
    pub recipients: Vec<x25519::Recipient>,
    /// The storage class of new blobs (`[s3] storage_class`).
    pub blob_class: StorageClass,
    /// `[s3] object_lock` and `lock_for`.
    pub lock_mode: LockMode,
    pub lock_for: Option<std::time::Duration>,
    /// The lock plan of the run being prepared (`prepare`).
    plan: Mutex<Option<LockPlan>>,
    /// What the blob listing of the last `prepare` saw, with the blobs
    /// uploaded since: count and bytes.
    blobs_seen: Mutex<(u64, u64)>,
    /// `[s3] ca_file`: the roots health pings trust too.
    store_ca: Option<PathBuf>,
    /// The host's key that signs its manifests (`signing.rs`).
    pub signer: crate::signing::SigningKey,
}

impl Session {
    pub fn open(settings: &Settings) -> Result<Session> {
        let cfg = settings.config().clone();
        let recipients = keys::parse_recipients(&cfg.age_recipients, &cfg.path)?;
        let store = settings.open_store(true)?;
        let index_path = settings.index_path.clone();
        let state_dir = index_path.parent().unwrap_or(Path::new(".")).to_path_buf();
        blob::private_dir(&state_dir)?;
        let signer = crate::signing::SigningKey::load_or_create(&state_dir)?;
        let (blob_class, lock_mode, lock_for) = match &settings.store {
            crate::store::settings::StoreConfig::S3(s3) => {
                (s3.storage_class, s3.object_lock, s3.lock_for)
            }
            crate::store::settings::StoreConfig::Local { .. } => {
                (StorageClass::Standard, LockMode::Off, None)
            }
        };
        let store_ca = match &settings.store {
            crate::store::settings::StoreConfig::S3(s3) => s3.ca_file.clone(),
            crate::store::settings::StoreConfig::Local { .. } => None,
        };
        if lock_mode.is_on() {
            store.check_lock_setup()?;
        }
        Ok(Session {
            blob_class,
            lock_mode,
            lock_for,
            plan: Mutex::new(None),
            blobs_seen: Mutex::new((0, 0)),
            store_ca,
            hostname: settings.hostname.clone(),
            tmp_dir: state_dir.join("tmp"),
            last_dir: state_dir.join("last"),
            cfg,
            store,
            index_path,
            recipients,
            signer,
        })
    }

    /// Take the run lock and open the index, ready for a run. Returns the
    /// number of blobs the index forgot because the store lost them.
    pub fn prepare(&self) -> Result<(RunLock, Index, usize)> {
        let lock = RunLock::acquire(&self.index_path)?;
        // Locked from the first object written (the identity included).
        let plan = self.lock_plan()?;
        self.store.set_lock(plan.map(|p| p.lock()));
        *self.plan.lock().expect("plan lock poisoned by a panic") = plan;
        let known = Index::store_of(&self.index_path);
        let identity = store::identity::ensure(self.store.as_ref(), known.as_deref())?;
        let (mut index, opened) =
            Index::open(&self.index_path, &identity.id, &self.store.describe())?;
        if let Opened::Fresh(Some(other)) = &opened {
            warn(&format!(
                "the index {} was made for another store ({other}): started afresh, \
                 everything is read and uploaded again",
                self.index_path.display()
            ));
        }
        let resealed = index.seal_to(&crate::keys::set_fingerprint(&self.recipients))?;
        if resealed {
            warn(&format!(
                "age_recipient changed: blobs sealed to the old recipients are not reused, so \
                 that this snapshot restores with the new keys alone; its data is uploaded \
                 again (the index {} forgot the old blobs)",
                self.index_path.display()
            ));
        }
        blob::private_dir(&self.tmp_dir)?;
        clean_dir(&self.tmp_dir);
        if matches!(opened, Opened::Fresh(_)) || resealed {
            // Kept metadata belongs to the index it was made with (and its
            // chunks to the blobs that index knew).
            clean_dir(&self.last_dir);
        }
        blob::private_dir(&self.last_dir)?;
        // Never deduplicate against a blob that is no longer in the store
        // (purged from another host, or lost), nor against one a purge has
        // marked for deletion (see gc.rs): its data is uploaded again.
        let marked = crate::gc::marked_blobs(self.store.as_ref())?;
        let listed = self.store.list(crate::layout::BLOBS)?.objects;
        *self.blobs_seen.lock().expect("seen lock") =
            (listed.len() as u64, listed.iter().map(|o| o.size).sum());
        let mut present: Vec<(String, u64)> = listed
            .into_iter()
            .filter(|o| !marked.contains(&o.key))
            .map(|o| (o.key, o.size))
            .collect();
        // Under Object Lock, nor against a blob this index never saw
        // locked (uploaded before object_lock was set): its lock would go
        // to whatever version is current, perhaps junk put over it. Its data
        // is uploaded again, locked, once.
        if plan.is_some() {
            let mut locked = Vec::with_capacity(present.len());
            for p in present {
                if index.locked_until(&p.0)?.0 > 0 {
                    locked.push(p);
                }
            }
            present = locked;
        }
        let dropped = index.forget_missing_blobs(&present)?;
        Ok((lock, index, dropped))
    }

    /// How this run locks what it writes (`store/lock.rs`): for `lock_for`,
    /// or for what the retention rules keep a snapshot (with `keep_latest`,
    /// from this host's snapshots in the store, of the name that keeps
    /// them longest).
    fn lock_plan(&self) -> Result<Option<LockPlan>> {
        if !self.lock_mode.is_on() {
            return Ok(None);
        }
        let now = crate::time::now();
        let lock_for = match self.lock_for {
            Some(d) => d.as_secs(),
            None => {
                let rule = self.retention();
                let latest_age = match rule.keep_latest {
                    Some(n) => {
                        let mut times: std::collections::HashMap<String, Vec<u64>> =
                            Default::default();
                        for l in crate::manifest::list(self.store.as_ref())? {
                            if let Some(p) = crate::layout::parse_id(&l.id)
                                .filter(|p| p.host == self.hostname && p.time <= now)
                            {
                                times.entry(p.name.to_string()).or_default().push(p.time);
                            }
                        }
                        // A name with fewer than two snapshots: as if daily.
                        let names = self.cfg.snapshots.iter().map(|s| {
                            let t = times.get_mut(&s.name).map(std::mem::take);
                            crate::gc::retention::latest_age(n, &mut t.unwrap_or_default(), now)
                                .unwrap_or((n as u64).saturating_mul(86_400))
                        });
                        names.max()
                    }
                    None => None,
                };
                crate::gc::retention::derived_lock_for(
                    &rule,
                    self.cfg.grace_period.as_secs(),
                    latest_age,
                )
                .ok_or_else(|| {
                    Error::Setup(format!(
                        "{}: object_lock is set but lock_for is not, and no retention rule \
                             (keep_within, keep_latest, keep_daily, ...) says how long \
                             snapshots are kept: set [s3] lock_for",
                        self.cfg.path.display()
                    ))
                })?
            }
        };
        Ok(Some(LockPlan::new(self.lock_mode, lock_for, now)))
    }

    pub fn backup<'a>(
        &'a self,
        index: Index,
        skip_errors: bool,
        progress: Option<crate::backup::progress::Style>,
        abort: Option<&'a AtomicBool>,
    ) -> Backup<'a> {
        Backup {
            store: self.store.as_ref(),
            index: Mutex::new(index),
            recipients: self.recipients.clone(),
            hostname: self.hostname.clone(),
            tmp_dir: self.tmp_dir.clone(),
            params: Params::new(self.cfg.chunk_size),
            level: self.cfg.compression_level,
            blob_limit: self.cfg.blob_size_limit,
            blob_class: self.blob_class,
            walk: crate::walk::WalkDefaults::of(&self.cfg),
            skip_errors,
            warn: &warn,
            progress,
            last_dir: self.last_dir.clone(),
            abort,
            lock: *self.plan.lock().expect("plan lock poisoned by a panic"),
            signer: &self.signer,
        }
    }

    /// Purge this host's snapshots by the configured retention, then
    /// collect garbage, keeping `index` in step.
    pub fn apply_retention(&self, index: &mut Index) -> Result<crate::gc::purge::Report> {
        crate::gc::purge::Purge {
            store: self.store.as_ref(),
            grace: self.cfg.grace_period.as_secs(),
            dry_run: false,
            index: Some(index),
        }
        .by_rule(&self.retention(), None, Some(&self.hostname), &self.trust())
    }

    /// The config's `trusted_signers`, and this host's own key with them
    /// (its snapshots are its own): none when the config names none.
    fn trust(&self) -> crate::signing::Trust {
        let mut signers = self.cfg.trusted_signers.clone();
        if !signers.is_empty() {
            signers.extend(crate::signing::parse_signer(&self.signer.public()));
        }
        crate::signing::Trust { signers }
    }

    /// A configured snapshot is needed (the daemon, and `snapshot create`
    /// without `--stdin`).
    pub fn require_snapshots(&self) -> Result<()> {
        if self.cfg.snapshots.is_empty() {
            return Err(Error::Setup(format!(
                "{}: no [snapshot NAME] section configured",
                self.cfg.path.display()
            )));
        }
        Ok(())
    }

    /// Back up one configured snapshot (a walk, or its command's output);
    /// None for a section fed by `--stdin` only, which has nothing to run.
    pub fn run_one(
        &self,
        backup: &Backup<'_>,
        snap: &SnapshotConfig,
        scope: Scope<'_>,
        skip_unchanged: bool,
    ) -> Option<Result<crate::backup::Summary>> {
        Some(match snap.source() {
            Source::Paths(_) => backup.run(snap, scope, skip_unchanged),
            Source::Command(argv) => Stream::spawn(argv)
                .and_then(|stream| backup.run_stream(snap, stream, skip_unchanged)),
            Source::Stdin => return None,
        })
    }

    /// Hooks, pings and metrics for a run (`quiet`: hook output only when
    /// a hook fails).
    pub fn watch<'w>(&'w self, quiet: bool) -> Result<Watch<'w>> {
        let roots = match &self.store_ca {
            Some(ca) => Some(store::load_roots(ca)?),
            None => None,
        };
        Ok(Watch::new(
            &self.cfg,
            &self.hostname,
            self.index_path.parent().unwrap_or(Path::new(".")),
            roots,
            quiet,
            &log,
            &warn,
        ))
    }

    /// What the store holds, for the metrics: the blobs the last
    /// `prepare` listed with those uploaded since, and the snapshots
    /// listed now (one LIST). A listing that fails is a warning.
    pub fn store_seen(&self) -> Option<StoreSeen> {
        let (blobs, bytes) = *self.blobs_seen.lock().expect("seen lock");
        match crate::manifest::list(self.store.as_ref()) {
            Ok(l) => Some(StoreSeen {
                snapshots: l.len() as u64,
                blobs,
                bytes,
                at: crate::time::now(),
            }),
            Err(e) => {
                warn(&format!("metrics: cannot list the snapshots: {e}"));
                None
            }
        }
    }

    /// The run could not start (`e`): each of `snaps` failed, as its
    /// hooks, pings and metrics say (the metrics are written).
    pub fn not_started(
        &self,
        watch: &mut Watch<'_>,
        snaps: &[&SnapshotConfig],
        e: &Error,
    ) -> Vec<Outcome> {
        let outcomes = snaps
            .iter()
            .map(|snap| {
                let o = Outcome::failed(
                    &snap.name,
                    &self.hostname,
                    crate::time::now(),
                    0.0,
                    &e.to_string(),
                    serde_json::json!({}),
                );
                watch.after(snap, &o);
                o
            })
            .collect();
        watch.finish(None);
        outcomes
    }

    /// Back up `snap` with the hooks, pings and metrics of `watch` around
    /// it: its outcome, and the error that failed it.
    pub fn watched(
        &self,
        watch: &mut Watch<'_>,
        snap: &SnapshotConfig,
        run: impl FnOnce() -> Result<crate::backup::Summary>,
    ) -> (Outcome, Option<Error>) {
        let started = crate::time::now();
        let clock = std::time::Instant::now();
        let before = self.store.stats().to_json();
        let requests = || crate::monitor::delta(&before, &self.store.stats().to_json());
        let (outcome, err) = match watch.before(snap) {
            Err(why) => {
                let o = Outcome::failed(
                    &snap.name,
                    &self.hostname,
                    started,
                    clock.elapsed().as_secs_f64(),
                    &why,
                    requests(),
                );
                warn(&format!("snapshot {} skipped: {why}", snap.name));
                (
                    o,
                    Some(Error::HookFailed {
                        skipped: vec![snap.name.clone()],
                    }),
                )
            }
            Ok(()) => match run() {
                Ok(s) => {
                    let mut seen = self.blobs_seen.lock().expect("seen lock");
                    seen.0 += s.blobs;
                    seen.1 += s.blob_bytes;
                    drop(seen);
                    (
                        Outcome::done(&snap.name, &self.hostname, started, s, requests()),
                        None,
                    )
                }
                Err(e) => (
                    Outcome::failed(
                        &snap.name,
                        &self.hostname,
                        started,
                        clock.elapsed().as_secs_f64(),
                        &e.to_string(),
                        requests(),
                    ),
                    Some(e),
                ),
            },
        };
        watch.after(snap, &outcome);
        (outcome, err)
    }

    pub fn retention(&self) -> Retention {
        Retention::of_config(&self.cfg)
    }
}

pub fn summary_line(s: &crate::backup::Summary) -> String {
    // What the walk left out, where it left something out.
    let mut left = Vec::new();
    for (n, what) in [
        (s.excluded, "excluded by pattern"),
        (s.nodump, "with the nodump flag"),
        (s.tagged, "tagged directories (contents)"),
        (s.mounts, "mount points not crossed"),
    ] {
        if n > 0 {
            left.push(format!("{n} {what}"));
        }
    }
    let left = if left.is_empty() {
        String::new()
    } else {
        format!("left out: {}; ", left.join(", "))
    };
    let left = if s.locks_extended > 0 {
        format!(
            "{left}locks of {} reused blobs extended; ",
            s.locks_extended
        )
    } else {
        left
    };
    format!(
        "snapshot {}: {} entries, {} files ({}) scanned; {} files ({}) read; \
         {} new chunks ({}) in {} blobs ({} uploaded); {} warnings; {left}{:.1}s",
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
    )
}

pub fn select<'a>(cfg: &'a Config, names: &[String]) -> Result<Vec<&'a SnapshotConfig>> {
    if names.is_empty() {
        return Ok(cfg.snapshots.iter().collect());
    }
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
        .collect()
}

pub fn run(settings: &Settings, a: &CreateArgs) -> Result<()> {
    // The request counts after the report, a failure's too (never with
    // --cron or --json: their output is theirs).
    super::requests_to(if a.cron || a.json {
        super::Requests::Nowhere
    } else {
        super::Requests::Stdout
    });
    let session = Session::open(settings)?;
    let r = run_with(&session, a);
    super::ended(session.store.as_ref(), r)
}

fn run_with(session: &Session, a: &CreateArgs) -> Result<()> {
    let CreateArgs {
        names,
        skip_errors,
        cron,
        prune,
        ..
    } = a;
    let (skip_errors, cron, prune) = (*skip_errors, *cron, *prune);
    let retention = session.retention();
    if prune && !retention.is_set() {
        return Err(Error::Setup(format!(
            "{}: --prune needs a retention policy: set keep_latest, keep_within or \
             keep_hourly/daily/weekly/monthly/yearly",
            session.cfg.path.display()
        )));
    }
    // What to back up: standard input as one snapshot (checked before
    // anything is locked or listed), or configured snapshots.
    let stdin = match &a.stdin {
        Some(name) => Some((stdin_snapshot(&session.cfg, name)?, Stream::stdin()?)),
        None => None,
    };
    let selected = match &stdin {
        Some(_) => Vec::new(),
        None => {
            session.require_snapshots()?;
            let selected = select(&session.cfg, names)?;
            if let Some(s) = selected.iter().find(|s| s.source() == Source::Stdin) {
                if !names.is_empty() {
                    return Err(Error::Usage(format!(
                        "[snapshot {}] in {} has no `path` or `command`: feed it with \
                         `snapshot create --stdin {}`",
                        s.name,
                        session.cfg.path.display(),
                        s.name
                    )));
                }
            }
            selected
        }
    };
    let json = a.json;
    let mut watch = session.watch(cron)?;
    let (_lock, index, dropped) = match session.prepare() {
        Ok(p) => p,
        Err(e) => {
            // The run could not start (the store unreachable, another run
            // holding the lock...): every snapshot it was to make failed,
            // as the hooks, pings and metrics say.
            let names: Vec<&SnapshotConfig> = match &stdin {
                Some((snap, _)) => vec![snap],
                None => selected
                    .iter()
                    .copied()
                    .filter(|s| s.source() != Source::Stdin)
                    .collect(),
            };
            for o in session.not_started(&mut watch, &names, &e) {
                if json {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{}", o.to_json()).map_err(output)?;
                }
            }
            return Err(e);
        }
    };
    if dropped > 0 {
        warn(&format!(
            "{dropped} blob(s) known to the index are gone from the store, written over (another size), or marked for deletion; their data will be uploaded again"
        ));
    }
    // SAFETY: isatty has no preconditions.
    let terminal = unsafe { libc::isatty(2) } == 1;
    let progress = match (a.progress, json) {
        (true, true) => Some(Style::Json),
        (true, false) => Some(Style::Line),
        (false, _) if terminal && !cron && !json => Some(Style::Line),
        (false, _) => None,
    };
    let mut backup = session.backup(index, skip_errors, progress, None);
    let mut skipped = 0;
    let mut hook_failed = Vec::new();
    let mut out = std::io::stdout().lock();
    // Each snapshot's outcome is reported (JSON, hooks, pings, metrics)
    // before an error stops the run; a failed `hook_before` only skips
    // its snapshot.
    let mut ran = |snap: &SnapshotConfig,
                   run: &mut dyn FnMut() -> Result<crate::backup::Summary>|
     -> Result<()> {
        let (o, err) = session.watched(&mut watch, snap, run);
        if json {
            writeln!(out, "{}", o.to_json()).map_err(output)?;
        }
        match (err, o.summary) {
            (Some(Error::HookFailed { skipped }), _) => hook_failed.extend(skipped),
            (Some(e), _) => return Err(e),
            (None, Some(s)) => {
                skipped += s.skipped;
                if !cron && !json {
                    writeln!(out, "{}", summary_line(&s)).map_err(output)?;
                }
            }
            (None, None) => {}
        }
        Ok(())
    };
    let result = (|| -> Result<()> {
        if let Some((snap, stream)) = stdin {
            let mut stream = Some(stream);
            ran(&snap, &mut || {
                let stream = stream.take().expect("the stream is read once");
                backup.run_stream(&snap, stream, false)
            })?;
        }
        for snap in selected {
            // Sections fed by --stdin are left to the command lines that feed them.
            if snap.source() == Source::Stdin {
                continue;
            }
            // `--skip-errors`, else the snapshot's `skip_errors`, else the global one.
            backup.skip_errors = skip_errors || snap.skip_errors.unwrap_or(session.cfg.skip_errors);
            ran(snap, &mut || {
                session
                    .run_one(&backup, snap, Scope::Full, false)
                    .expect("not a --stdin section")
            })?;
        }
        Ok(())
    })();
    let seen = match &result {
        Ok(()) if watch.wants_store_figures() => session.store_seen(),
        _ => None,
    };
    watch.finish(seen);
    result?;
    if prune {
        let mut index = backup
            .index
            .into_inner()
            .expect("index lock poisoned by a panic");
        let report = session.apply_retention(&mut index)?;
        if json {
            let mut v = report.to_json();
            v["prune"] = serde_json::Value::Bool(true);
            writeln!(out, "{v}").map_err(output)?;
        } else if !cron {
            report.print_text(&mut out, true).map_err(output)?;
        }
    }
    if !cron && !json {
        writeln!(out, "{}", super::requests_line(session.store.as_ref())).map_err(output)?;
    }
    if !hook_failed.is_empty() {
        return Err(Error::HookFailed {
            skipped: hook_failed,
        });
    }
    if skipped > 0 {
        return Err(Error::Partial {
            failed: skipped as usize,
            kind: crate::error::Partial::Skipped,
        });
    }
    Ok(())
}

/// The snapshot `snapshot create --stdin NAME` makes: the config's
/// section, which must then have neither `path` nor `command`, or one made
/// for it.
fn stdin_snapshot(cfg: &Config, name: &str) -> Result<SnapshotConfig> {
    match cfg.snapshots.iter().find(|s| s.name == name) {
        None => Ok(SnapshotConfig::stream(name)),
        Some(s) if s.source() == Source::Stdin => Ok(s.clone()),
        Some(s) => Err(Error::Usage(format!(
            "--stdin {name}: [snapshot {name}] in {} has `{}`; a snapshot fed by --stdin \
             is configured without `path` or `command` (or not at all)",
            cfg.path.display(),
            if s.command.is_some() {
                "command"
            } else {
                "path"
            }
        ))),
    }
}

/// Remove files left in `dir` by a killed run (we hold the run lock).
fn clean_dir(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
