//! `snapshot create --daemon`: a foreground process (for systemd) that
//! backs up once, then watches with inotify and snapshots the names whose
//! paths changed, and only those; never when nothing changed.
//!
//! One poll loop reads inotify and signals; a backup runs on a worker thread
//! so events keep being read meanwhile. SIGTERM/SIGINT: let a running backup
//! finish (abandon it cleanly after `stop_timeout`), exit 0. SIGHUP: reload
//! the config. The run lock is taken per run, so a cron run and the daemon
//! never run at once; a busy lock just postpones the run.
//!
//! What it is doing is in `daemon-status.json` beside the index (each
//! name's last run and result, pending changes, the next run, what is
//! watched), rewritten atomically as that changes; SIGUSR1 also logs it.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::create::{Session, summary_line};
use super::settings::Settings;
use crate::backup::Scope;
use crate::cli::{CreateArgs, Global};
use crate::error::{Error, Result};
use crate::store::settings::StoreConfig;
use crate::watch::{Changes, Dirty, Watcher};

static STOP: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);
static STATUS: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGHUP {
        RELOAD.store(true, Ordering::SeqCst);
    } else if sig == libc::SIGUSR1 {
        STATUS.store(true, Ordering::SeqCst);
    } else {
        STOP.store(true, Ordering::SeqCst);
    }
}

fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
        // SAFETY: the handler only stores to atomics, which is async-signal-safe;
        // no SA_RESTART, so poll() returns early with EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// How long the daemon waits before it tries again to reach a store it
/// could not reach when it started (each try lasts up to `retry_for`):
/// `retry_for`, within 5 s and a minute.
fn start_retry(g: &Global) -> Duration {
    let retry_for = match Settings::resolve(g, true).map(|s| s.store) {
        Ok(StoreConfig::S3(s3)) => s3.retry_for,
        _ => None,
    };
    retry_for
        .unwrap_or(crate::store::settings::RETRY_FOR)
        .clamp(Duration::from_secs(5), Duration::from_secs(60))
}

fn log(msg: &str) {
    // Under systemd, each line's priority (`journalctl -p err`).
    let level = if msg.starts_with("error:") {
        3
    } else if msg.starts_with("warning:") {
        4
    } else {
        6
    };
    eprintln!(
        "{}vaultik daemon: {}",
        crate::error::priority(level),
        crate::error::one_line(msg.to_string())
    );
}

/// When to run, from the config's intervals. Times are `Instant`s so tests
/// can drive it without sleeping.
#[derive(Debug)]
pub struct Schedule {
    pub backup_interval: Duration,
    pub min_between: Duration,
    pub full_scan_interval: Duration,
    pub settle_delay: Duration,
    last_run_end: Option<Instant>,
    last_activity: Instant,
    last_full_scan: Instant,
    due: Option<Instant>,
}

impl Schedule {
    pub fn new(cfg: &crate::config::Config, now: Instant) -> Schedule {
        Schedule {
            backup_interval: cfg.backup_interval,
            min_between: cfg.min_time_between_run,
            full_scan_interval: cfg.full_scan_interval,
            settle_delay: cfg.settle_delay,
            last_run_end: None,
            last_activity: now,
            last_full_scan: now,
            // The first run, a full backup, starts at once.
            due: Some(now),
        }
    }

    /// Something changed at `now`.
    pub fn changed(&mut self, now: Instant) {
        if self.due.is_none() {
            let quiet = now.duration_since(self.last_activity) >= self.backup_interval;
            self.due = Some(match (quiet, self.last_run_end) {
                (true, _) | (_, None) => now + self.settle_delay,
                (false, Some(end)) => end + self.backup_interval,
            });
        }
        self.last_activity = now;
    }

    /// Run now, whatever the intervals say (bounded by `min_between`).
    pub fn asap(&mut self, now: Instant) {
        self.due = Some(now);
    }

    /// When the next run may start, if one is wanted.
    pub fn next(&self) -> Option<Instant> {
        let due = self.due?;
        Some(match self.last_run_end {
            Some(end) => due.max(end + self.min_between),
            None => due,
        })
    }

    pub fn full_scan_due(&self, now: Instant) -> bool {
        now.duration_since(self.last_full_scan) >= self.full_scan_interval
    }

    pub fn started(&mut self, full: bool, now: Instant) {
        self.due = None;
        if full {
            self.last_full_scan = now;
        }
    }

    pub fn finished(&mut self, now: Instant) {
        self.last_run_end = Some(now);
        self.last_activity = now;
    }
}

/// What a worker thread reports about one run.
enum Outcome {
    Done,
    /// Another vaultik run holds the lock: try again later.
    Busy,
    /// Some names failed; they stay dirty.
    Failed(Vec<usize>),
}

struct Job {
    names: Vec<(usize, Dirty)>,
}

/// A name's last run, for the status.
#[derive(Debug, Clone)]
struct Last {
    /// When it ended (Unix seconds).
    at: u64,
    status: &'static str,
    error: Option<String>,
    id: Option<String>,
}

type Lasts = std::sync::Mutex<HashMap<usize, Last>>;

/// Back up each name in `job`, publishing a snapshot only where something changed.
fn run_job(
    session: &Session,
    job: &Job,
    quiet: bool,
    abort: &AtomicBool,
    lasts: &Lasts,
) -> Outcome {
    let mut watch = match session.watch(quiet) {
        Ok(w) => w,
        Err(e) => {
            log(&format!("error: run not started: {e}"));
            return Outcome::Failed(job.names.iter().map(|(i, _)| *i).collect());
        }
    };
    let (_lock, index, dropped) = match session.prepare() {
        Ok(x) => x,
        Err(Error::Locked { .. }) => return Outcome::Busy,
        Err(e) => {
            log(&format!("error: run not started: {e}"));
            // Each name's hooks, pings and metrics say so.
            let snaps: Vec<_> = job
                .names
                .iter()
                .map(|(i, _)| &session.cfg.snapshots[*i])
                .collect();
            session.not_started(&mut watch, &snaps, &e);
            return Outcome::Failed(job.names.iter().map(|(i, _)| *i).collect());
        }
    };
    if dropped > 0 {
        log(&format!(
            "warning: {dropped} blob(s) known to the index are gone from the store, written over (another size), or marked for deletion"
        ));
    }
    let backup = session.backup(index, true, None, Some(abort));
    let mut failed = Vec::new();
    let mut published = false;
    for (i, dirty) in &job.names {
        let snap = &session.cfg.snapshots[*i];
        let paths: Vec<PathBuf>;
        let scope = match dirty {
            Dirty::Full => Scope::Full,
            Dirty::Paths(p) => {
                paths = p.iter().cloned().collect();
                Scope::Dirty(&paths)
            }
        };
        if !quiet {
            let what = match dirty {
                Dirty::Full => "full scan".to_string(),
                Dirty::Paths(p) => format!("{} changed subtree(s)", p.len()),
            };
            log(&format!("run started: {} ({what})", snap.name));
        }
        if snap.source() == crate::config::Source::Stdin {
            continue;
        }
        let (o, err) = session.watched(&mut watch, snap, || {
            session
                .run_one(&backup, snap, scope, true)
                .expect("not a --stdin section")
        });
        let unchanged = o.summary.as_ref().is_some_and(|s| s.unchanged);
        lasts.lock().expect("status lock").insert(
            *i,
            Last {
                at: crate::time::now(),
                status: if unchanged { "unchanged" } else { o.status() },
                error: o.error.clone(),
                id: o
                    .summary
                    .as_ref()
                    .filter(|_| !unchanged)
                    .map(|s| s.id.clone()),
            },
        );
        let result = match (err, o.summary) {
            (Some(e), _) => Err(e),
            (None, Some(s)) => Ok(s),
            (None, None) => Err(Error::Cancelled),
        };
        match result {
            Ok(s) if s.unchanged => {
                if !quiet {
                    log(&format!("{}: nothing changed, no snapshot", snap.name));
                }
            }
            Ok(s) => {
                published = true;
                if !quiet {
                    log(&format!("run finished: {}", summary_line(&s)));
                }
            }
            Err(Error::Cancelled) if abort.load(Ordering::Relaxed) => {
                log(&format!(
                    "{}: backup abandoned on shutdown; no snapshot recorded",
                    snap.name
                ));
                failed.push(*i);
                break;
            }
            Err(e) => {
                log(&format!("error: {}: {e}", snap.name));
                failed.push(*i);
            }
        }
    }
    let seen = if failed.is_empty() && watch.wants_store_figures() {
        session.store_seen()
    } else {
        None
    };
    watch.finish(seen);
    // The configured retention, as `snapshot create --prune` applies it.
    let retention = session.retention();
    if published && failed.is_empty() && retention.is_set() {
        let mut index = backup
            .index
            .into_inner()
            .expect("index lock poisoned by a panic");
        match session.apply_retention(&mut index) {
            Ok(r) if !quiet && (!r.removed.is_empty() || !r.deleted.is_empty()) => log(&format!(
                "retention: removed {} snapshot(s), deleted {} unreferenced object(s)",
                r.removed.len(),
                r.deleted.len()
            )),
            Ok(_) => {}
            Err(e) => log(&format!("error: retention purge: {e}")),
        }
    }
    if failed.is_empty() {
        Outcome::Done
    } else {
        Outcome::Failed(failed)
    }
}

pub fn run(g: &Global, a: &CreateArgs) -> Result<()> {
    let quiet = a.cron;
    install_signal_handlers();
    let open = || {
        let session = Session::open(&Settings::resolve(g, true)?)?;
        session.require_snapshots()?;
        Ok::<_, Error>(session)
    };
    crate::set_notice_prefix("vaultik daemon: warning:");
    // An outage when the daemon starts is waited out: it never exits for
    // one (a store that refuses it, or a config that is wrong, ends it).
    let mut session = loop {
        match open() {
            Ok(s) => break s,
            Err(
                e @ Error::Store {
                    attempts: Some(_), ..
                },
            ) => {
                let wait = start_retry(g);
                log(&format!(
                    "error: cannot reach the store: {e}; trying again in {}",
                    crate::span(wait.as_secs())
                ));
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    if STOP.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Err(e) => return Err(e),
        }
    };
    loop {
        match serve(&session, quiet)? {
            Exit::Stop => {
                if !quiet {
                    log(&session.store.stats().summary());
                }
                return Ok(());
            }
            Exit::Reload => match open() {
                Ok(s) => {
                    log("configuration reloaded");
                    session = s;
                }
                Err(e) => log(&format!(
                    "error: reload failed, keeping the old configuration: {e}"
                )),
            },
        }
    }
}

enum Exit {
    Stop,
    Reload,
}

/// Watch and back up until a signal says stop or reload.
fn serve(session: &Session, quiet: bool) -> Result<Exit> {
    let cfg = &session.cfg;
    let mut watcher = Watcher::new(&cfg.snapshots, cfg, log)?;
    if !quiet {
        log(&format!(
            "watching {} director{} for {} snapshot name(s)",
            watcher.watch_count(),
            if watcher.watch_count() == 1 {
                "y"
            } else {
                "ies"
            },
            cfg.snapshots.len()
        ));
    }
    let mut st = State {
        cfg,
        quiet,
        dirty: runnable(cfg).map(|i| (i, Dirty::Full)).collect(),
        sched: Schedule::new(cfg, Instant::now()),
    };
    let abort = AtomicBool::new(false);
    let lasts = Lasts::default();
    let status_path = session
        .index_path
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("daemon-status.json");
    let mut said = serde_json::Value::Null;

    std::thread::scope(|scope| {
        let mut running: Option<std::thread::ScopedJoinHandle<'_, Outcome>> = None;
        // The names the running job took out of `dirty`, to put back if it
        // does not complete.
        let mut in_job: Vec<usize> = Vec::new();
        let mut stop_asked: Option<Instant> = None;
        loop {
            // 1. Wait for events, a signal, or the next deadline; 2. events
            // become dirty subtrees.
            st.wait(&watcher, running.is_some());
            st.take_events(&mut watcher);

            // 3. A finished run.
            if running.as_ref().is_some_and(|h| h.is_finished()) {
                let outcome = running
                    .take()
                    .expect("checked above")
                    .join()
                    .unwrap_or_else(|_| Outcome::Failed(in_job.clone()));
                st.finished(outcome, &in_job);
            }

            // The status, when it changed (or asked for).
            let now = st.status(&watcher, running.as_ref().map(|_| &in_job[..]), &lasts);
            let asked = STATUS.swap(false, Ordering::SeqCst);
            if now != said || asked {
                if let Err(e) = crate::monitor::metrics::replace(
                    &status_path,
                    now.to_string().as_bytes(),
                    0o600,
                ) {
                    log(&format!("warning: status file: {e}"));
                }
                if asked {
                    for line in status_lines(&now) {
                        log(&line);
                    }
                }
                said = now;
            }

            // 4. Signals.
            if STOP.load(Ordering::SeqCst) {
                let asked = *stop_asked.get_or_insert_with(|| {
                    if !quiet || running.is_some() {
                        log(if running.is_some() {
                            "stopping: waiting for the running backup to finish"
                        } else {
                            "stopping"
                        });
                    }
                    Instant::now()
                });
                if running.is_none() {
                    return Ok(Exit::Stop);
                }
                if asked.elapsed() >= cfg.stop_timeout && !abort.load(Ordering::Relaxed) {
                    log("stop timeout reached: abandoning the running backup");
                    abort.store(true, Ordering::SeqCst);
                }
                continue;
            }
            if RELOAD.load(Ordering::SeqCst) && running.is_none() {
                RELOAD.store(false, Ordering::SeqCst);
                return Ok(Exit::Reload);
            }

            // 5. Start a run when one is due.
            if running.is_none() && !RELOAD.load(Ordering::SeqCst) {
                if let Some(job) = st.due_job() {
                    in_job = job.names.iter().map(|(i, _)| *i).collect();
                    let (abort, lasts) = (&abort, &lasts);
                    running =
                        Some(scope.spawn(move || run_job(session, &job, quiet, abort, lasts)));
                }
            }
        }
    })
}

/// The snapshots the daemon backs up: walks and commands (a command has
/// nothing to watch: it runs with each full scan, at start and every
/// full_scan_interval), not those fed by `--stdin`.
fn runnable(cfg: &crate::config::Config) -> impl Iterator<Item = usize> + '_ {
    cfg.snapshots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.source() != crate::config::Source::Stdin)
        .map(|(i, _)| i)
}

/// What the daemon keeps between turns of its loop.
struct State<'c> {
    cfg: &'c crate::config::Config,
    quiet: bool,
    /// What changed, by snapshot name, since it was last backed up.
    dirty: HashMap<usize, Dirty>,
    sched: Schedule,
}

impl State<'_> {
    /// Wait for events, a signal, or the next deadline (at most 500 ms).
    fn wait(&self, watcher: &Watcher, running: bool) {
        let now = Instant::now();
        let mut wait = Duration::from_millis(500);
        if !running {
            if let Some(next) = self.sched.next() {
                wait = wait.min(next.saturating_duration_since(now));
            }
        }
        let mut pfd = libc::pollfd {
            fd: watcher.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, wait.as_millis().min(500) as libc::c_int) };
    }

    fn all_dirty(&mut self) {
        for i in runnable(self.cfg) {
            self.dirty.insert(i, Dirty::Full);
        }
    }

    /// Turn the events read into dirty subtrees; schedule full scans.
    fn take_events(&mut self, watcher: &mut Watcher) {
        let mut ch = Changes::default();
        if let Err(e) = watcher.read(&mut ch) {
            log(&format!(
                "error: reading inotify: {e}; falling back to a full scan"
            ));
            ch.overflow = true;
        }
        let now = Instant::now();
        if ch.overflow {
            log(
                "warning: inotify queue overflowed (events were lost): the next run scans everything",
            );
            self.all_dirty();
            self.sched.changed(now);
        }
        for (i, p) in ch.dirty {
            self.dirty
                .entry(i)
                .or_insert_with(|| Dirty::Paths(BTreeSet::new()))
                .add(&p);
            self.sched.changed(now);
        }
        // Full scans: on schedule, and always when watches ran out.
        let degraded_due = watcher.exhausted
            && now.duration_since(self.sched.last_full_scan) >= self.sched.backup_interval;
        if self.sched.full_scan_due(now) || degraded_due {
            self.all_dirty();
            if self.sched.next().is_none() {
                self.sched.asap(now);
            }
            self.sched.last_full_scan = now;
            self.sched.last_activity = now;
        }
    }

    /// A run ended: what it did not back up is dirty again.
    fn finished(&mut self, outcome: Outcome, in_job: &[usize]) {
        let now = Instant::now();
        self.sched.finished(now);
        match outcome {
            Outcome::Done => {}
            Outcome::Busy => {
                if !self.quiet {
                    log("another vaultik run holds the lock; trying again shortly");
                }
                for &i in in_job {
                    self.dirty.insert(i, Dirty::Full);
                }
                self.sched.asap(now);
            }
            Outcome::Failed(names) => {
                for i in names {
                    self.dirty.insert(i, Dirty::Full);
                }
                self.sched.changed(now);
            }
        }
    }

    /// What the daemon is doing, for the status file: `running`, the names
    /// of the run under way.
    fn status(
        &self,
        watcher: &Watcher,
        running: Option<&[usize]>,
        lasts: &Lasts,
    ) -> serde_json::Value {
        let lasts = lasts.lock().expect("status lock").clone();
        let now = Instant::now();
        let next = self.sched.next().map(|t| {
            crate::time::rfc3339(crate::time::now() + t.saturating_duration_since(now).as_secs())
        });
        let names: Vec<serde_json::Value> = runnable(self.cfg)
            .map(|i| {
                let last = lasts.get(&i);
                let pending = match self.dirty.get(&i) {
                    None => serde_json::Value::Null,
                    Some(Dirty::Full) => "full scan".into(),
                    Some(Dirty::Paths(p)) => format!("{} changed subtree(s)", p.len()).into(),
                };
                serde_json::json!({
                    "name": self.cfg.snapshots[i].name,
                    "running": running.is_some_and(|r| r.contains(&i)),
                    "last_run": last.map(|l| crate::time::rfc3339(l.at)),
                    "result": last.map(|l| l.status),
                    "error": last.and_then(|l| l.error.clone()),
                    "last_snapshot": last.and_then(|l| l.id.clone()),
                    "pending": pending,
                })
            })
            .collect();
        serde_json::json!({
            "pid": std::process::id(),
            "watched_directories": watcher.watch_count(),
            "watches_exhausted": watcher.exhausted,
            "next_run": if running.is_some() { None } else { next },
            "snapshots": names,
        })
    }

    /// The job to run now, if one is due and something changed.
    fn due_job(&mut self) -> Option<Job> {
        let next = self.sched.next()?;
        if Instant::now() < next {
            return None;
        }
        let names: Vec<(usize, Dirty)> = self.dirty.drain().collect();
        let full = names.iter().all(|(_, d)| *d == Dirty::Full)
            && names.len() == runnable(self.cfg).count();
        self.sched.started(full, Instant::now());
        // Nothing changed, however long it has been: no job.
        (!names.is_empty()).then_some(Job { names })
    }
}

/// The status as log lines (SIGUSR1).
fn status_lines(v: &serde_json::Value) -> Vec<String> {
    let mut out = vec![format!(
        "status: {} watched directories{}; next run {}",
        v["watched_directories"],
        if v["watches_exhausted"] == true {
            " (watches exhausted: full scans)"
        } else {
            ""
        },
        v["next_run"].as_str().unwrap_or("not scheduled")
    )];
    for s in v["snapshots"].as_array().into_iter().flatten() {
        out.push(format!(
            "status: {}: {}last run {} ({}){}; pending: {}",
            s["name"].as_str().unwrap_or(""),
            if s["running"] == true {
                "running; "
            } else {
                ""
            },
            s["last_run"].as_str().unwrap_or("never"),
            s["result"].as_str().unwrap_or("-"),
            s["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            s["pending"].as_str().unwrap_or("nothing"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched() -> (Schedule, Instant) {
        let cfg = crate::config::Config {
            backup_interval: Duration::from_secs(3600),
            min_time_between_run: Duration::from_secs(900),
            settle_delay: Duration::from_secs(600),
            full_scan_interval: Duration::from_secs(86400),
            ..Default::default()
        };
        let t0 = Instant::now();
        (Schedule::new(&cfg, t0), t0)
    }

    #[test]
    fn first_run_is_immediate_then_nothing_without_changes() {
        let (mut s, t0) = sched();
        assert_eq!(s.next(), Some(t0));
        s.started(true, t0);
        s.finished(t0 + Duration::from_secs(10));
        assert_eq!(s.next(), None);
        assert!(!s.full_scan_due(t0 + Duration::from_secs(3600 * 5)));
        assert!(s.full_scan_due(t0 + Duration::from_secs(86400)));
    }

    #[test]
    fn a_change_after_a_quiet_hour_waits_for_the_settle_delay() {
        let (mut s, t0) = sched();
        s.started(true, t0);
        s.finished(t0);
        let t = t0 + Duration::from_secs(2 * 3600);
        s.changed(t);
        assert_eq!(s.next(), Some(t + Duration::from_secs(600)));
        // More changes do not push it back.
        s.changed(t + Duration::from_secs(60));
        assert_eq!(s.next(), Some(t + Duration::from_secs(600)));
    }

    #[test]
    fn busy_periods_run_at_each_backup_interval_and_never_too_close() {
        let (mut s, t0) = sched();
        s.started(true, t0);
        s.finished(t0);
        s.changed(t0 + Duration::from_secs(60));
        assert_eq!(s.next(), Some(t0 + Duration::from_secs(3600)));
        s.started(false, t0 + Duration::from_secs(3600));
        s.finished(t0 + Duration::from_secs(3600));
        // Asking for an immediate run still respects min_time_between_run.
        s.asap(t0 + Duration::from_secs(3601));
        assert_eq!(s.next(), Some(t0 + Duration::from_secs(3600 + 900)));
    }
}
