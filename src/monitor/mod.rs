//! What a backup run tells the world beyond its exit status: the JSON
//! summary of each snapshot (`snapshot create --json`), the Prometheus
//! textfile (`metrics.rs`), the hooks run around each snapshot
//! (`hooks.rs`) and the health pings (`ping.rs`). One `Outcome` per
//! snapshot run feeds all of them, so they never disagree.

pub mod hooks;
pub mod metrics;
pub mod ping;

use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::backup::Summary;
use crate::config::{Config, SnapshotConfig, When};
use hooks::Hooks;
use metrics::{State, StoreSeen};
use ping::{Ping, Pinger};

/// How one snapshot's run ended, as every report shows it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The snapshot's name (its config section).
    pub name: String,
    pub host: String,
    /// When the run started (Unix seconds).
    pub started: u64,
    pub seconds: f64,
    /// 0: stored; 1: stored, but unreadable files were skipped; 2: failed,
    /// nothing recorded.
    pub exit: i32,
    /// Why it failed (one line), when it did.
    pub error: Option<String>,
    /// What the backup did (None when it failed before it could say).
    pub summary: Option<Summary>,
    /// The requests this snapshot's run made (`Stats::to_json` figures).
    pub requests: Value,
}

impl Outcome {
    /// A snapshot backed up (exit 1 when files were skipped).
    pub fn done(name: &str, host: &str, started: u64, s: Summary, requests: Value) -> Outcome {
        Outcome {
            name: name.to_string(),
            host: host.to_string(),
            started,
            seconds: s.seconds,
            exit: if s.skipped > 0 { 1 } else { 0 },
            error: None,
            summary: Some(s),
            requests,
        }
    }

    /// A snapshot whose run failed with `error`.
    pub fn failed(
        name: &str,
        host: &str,
        started: u64,
        seconds: f64,
        error: &str,
        requests: Value,
    ) -> Outcome {
        Outcome {
            name: name.to_string(),
            host: host.to_string(),
            started,
            seconds,
            exit: 2,
            error: Some(crate::error::one_line(error.to_string())),
            summary: None,
            requests,
        }
    }

    pub fn status(&self) -> &'static str {
        match self.exit {
            0 => "ok",
            1 => "partial",
            _ => "failed",
        }
    }

    /// Files by what the run did with them: new, changed, unchanged (the
    /// index knew them), skipped (unreadable).
    pub fn files(&self) -> Files {
        let Some(s) = &self.summary else {
            return Files::default();
        };
        let changed = s.files_changed.min(s.files_read);
        Files {
            total: s.files,
            new: s.files_read - changed,
            changed,
            unchanged: s.files.saturating_sub(s.files_read + s.skipped),
            skipped: s.skipped,
        }
    }

    /// The JSON object `snapshot create --json` prints for this run.
    pub fn to_json(&self) -> Value {
        let f = self.files();
        let s = self.summary.clone().unwrap_or_default();
        json!({
            "id": self.summary.as_ref().map(|s| s.id.clone()),
            "name": self.name,
            "host": self.host,
            "started": crate::time::rfc3339(self.started),
            "status": self.status(),
            "exit": self.exit,
            "error": self.error,
            "unchanged_snapshot": s.unchanged,
            "entries": s.entries,
            "files": {
                "total": f.total, "new": f.new, "changed": f.changed,
                "unchanged": f.unchanged, "skipped": f.skipped,
            },
            "bytes": {
                "scanned": s.bytes_scanned,
                "read": s.bytes_read,
                "new": s.new_bytes,
                "stored": s.blob_bytes,
                "uploaded": self.requests.get("bytes_sent").cloned().unwrap_or(json!(0)),
            },
            "new_chunks": s.new_chunks,
            "blobs": s.blobs,
            "warnings": s.warnings,
            "requests": self.requests,
            "duration_seconds": (self.seconds * 1000.0).round() / 1000.0,
        })
    }

    /// The environment a hook gets about this run.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("VAULTIK_SNAPSHOT_NAME", self.name.clone()),
            (
                "VAULTIK_SNAPSHOT_ID",
                self.summary
                    .as_ref()
                    .map(|s| s.id.clone())
                    .unwrap_or_default(),
            ),
            ("VAULTIK_EXIT", self.exit.to_string()),
            ("VAULTIK_SUMMARY", self.to_json().to_string()),
        ];
        if let Some(e) = &self.error {
            env.push(("VAULTIK_ERROR", e.clone()));
        }
        env
    }
}

/// Files of one run, by what was done with them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Files {
    pub total: u64,
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub skipped: u64,
}

/// The requests made between two `Stats::to_json` figures.
pub fn delta(before: &Value, after: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if let Some(after) = after.as_object() {
        for (k, v) in after {
            let (a, b) = (v.as_u64().unwrap_or(0), before[k].as_u64().unwrap_or(0));
            out.insert(k.clone(), json!(a.saturating_sub(b)));
        }
    }
    Value::Object(out)
}

/// Hooks, pings and metrics around the snapshots of one run (of
/// `snapshot create`, or of the daemon).
pub struct Watch<'a> {
    cfg: &'a Config,
    host: String,
    /// Hook output and warnings go here (standard error).
    log: &'a (dyn Fn(&str) + Sync),
    warn: &'a (dyn Fn(&str) + Sync),
    /// Hook output is logged only when a hook fails (`--cron`: silent
    /// unless something is wrong).
    quiet: bool,
    roots: Option<ureq::tls::RootCerts>,
    pingers: Mutex<Vec<(String, Pinger)>>,
    /// The state file and the textfile, with the figures so far.
    metrics: Option<(PathBuf, PathBuf, State)>,
}

impl<'a> Watch<'a> {
    /// `state_dir`: where the metrics history is kept (the index's
    /// directory).
    pub fn new(
        cfg: &'a Config,
        host: &str,
        state_dir: &std::path::Path,
        roots: Option<ureq::tls::RootCerts>,
        quiet: bool,
        log: &'a (dyn Fn(&str) + Sync),
        warn: &'a (dyn Fn(&str) + Sync),
    ) -> Watch<'a> {
        let metrics = cfg.metrics_file.as_ref().map(|textfile| {
            let state = state_dir.join("metrics.json");
            let st = State::load(&state, warn);
            (state, textfile.clone(), st)
        });
        Watch {
            cfg,
            host: host.to_string(),
            log,
            warn,
            quiet,
            roots,
            pingers: Mutex::new(Vec::new()),
            metrics,
        }
    }

    /// Whether metrics are written (the caller then says what the store
    /// holds, to `finish`).
    pub fn wants_store_figures(&self) -> bool {
        self.metrics.is_some()
    }

    fn hook_lists<'h>(
        &'h self,
        snap: &'h SnapshotConfig,
        when: When,
    ) -> Vec<(String, &'h [String])> {
        // The global `before` first; the snapshot's `after` and `on_error`
        // first.
        let global = (format!("{} (global)", when.key()), &self.cfg.hooks);
        let own = (
            format!("{} [snapshot {}]", when.key(), snap.name),
            &snap.hooks,
        );
        let order: [(String, &Hooks); 2] = match when {
            When::Before => [global, own],
            _ => [own, global],
        };
        order
            .into_iter()
            .filter_map(|(name, h)| h.get(when).map(|argv| (name, argv)))
            .collect()
    }

    /// Run the hooks of `when`; the first failure stops them (Err: why).
    fn hooks(
        &self,
        snap: &SnapshotConfig,
        when: When,
        env: &[(&str, String)],
    ) -> Result<(), String> {
        for (name, argv) in self.hook_lists(snap, when) {
            let lines = Mutex::new(Vec::new());
            let keep = |l: &str| lines.lock().expect("hook log lock").push(l.to_string());
            let r = hooks::run(&name, argv, env, self.cfg.hook_timeout, &keep);
            if !self.quiet || r.is_err() {
                for l in lines.into_inner().expect("hook log lock") {
                    (self.log)(&l);
                }
            }
            r?;
        }
        Ok(())
    }

    fn ping(&self, snap: &SnapshotConfig, ping: Ping, body: &str) {
        let Some(url) = snap.ping_url.as_ref().or(self.cfg.ping_url.as_ref()) else {
            return;
        };
        let mut pingers = self.pingers.lock().expect("pinger lock");
        if !pingers.iter().any(|(u, _)| u == url) {
            match Pinger::new(url, self.roots.clone()) {
                Ok(p) => pingers.push((url.clone(), p)),
                Err(e) => return (self.warn)(&e.to_string()),
            }
        }
        let (_, p) = pingers.iter().find(|(u, _)| u == url).expect("just added");
        if let Err(w) = p.send(ping, body) {
            (self.warn)(&w);
        }
    }

    /// Before `snap` runs: the start ping, then the `before` hooks. Err:
    /// the snapshot is skipped (why, one line).
    pub fn before(&self, snap: &SnapshotConfig) -> Result<(), String> {
        self.ping(snap, Ping::Start, "");
        let env = [
            ("VAULTIK_SNAPSHOT_NAME", snap.name.clone()),
            ("VAULTIK_HOOK", "before".to_string()),
        ];
        self.hooks(snap, When::Before, &env)
    }

    /// After `snap` ran (or was skipped): the `after` or `on_error` hooks,
    /// the success or failure ping, the metrics history.
    pub fn after(&mut self, snap: &SnapshotConfig, o: &Outcome) {
        let failed = o.exit >= 2;
        let when = if failed { When::OnError } else { When::After };
        let mut env = o.env();
        env.push((
            "VAULTIK_HOOK",
            if failed { "on_error" } else { "after" }.to_string(),
        ));
        if let Err(why) = self.hooks(snap, when, &env) {
            (self.warn)(&why);
        }
        if failed {
            let body = format!(
                "vaultik: snapshot {} failed (exit status {}): {}",
                o.name,
                o.exit,
                o.error.as_deref().unwrap_or("")
            );
            self.ping(snap, Ping::Fail, &body);
        } else {
            self.ping(snap, Ping::Success, &o.to_json().to_string());
        }
        if let Some((_, _, st)) = &mut self.metrics {
            st.record(o);
        }
    }

    /// The end of a run: what the store holds (when asked for), and the
    /// textfile written. A textfile that cannot be written is a warning.
    pub fn finish(&mut self, seen: Option<StoreSeen>) {
        if let Some((state, textfile, st)) = &mut self.metrics {
            if seen.is_some() {
                st.store = seen;
            }
            if let Err(e) = st.save(state, textfile) {
                (self.warn)(&format!("metrics_file: {e}"));
            }
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }
}
