//! `metrics_file = PATH`: a node_exporter textfile (Prometheus text
//! format 0.0.4) written after every run, from `snapshot create` and the
//! daemon alike.
//!
//! What a run knows is only its own snapshots; the last success of a name
//! that failed this time comes from earlier runs. So the figures of each
//! name live in a small state file beside the index (`metrics.json`, this
//! host's own, mode 0600), updated by every run, and the textfile is
//! rendered from it whole. Both are replaced atomically: written under a
//! random name in the same directory (never a name anyone could plant
//! there first: the textfile directory may be shared), then renamed over
//! the old one, so node_exporter never reads half a file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde_json::{Value, json};

use super::Outcome;
use crate::error::{Error, IoContext, Result};

/// How a per-name metric is read from a name's figures.
type Field = fn(&Value) -> Option<f64>;

/// The state file is ours, but read back: bounded all the same.
const STATE_MAX: u64 = 4 << 20;

/// What the last listing of the store saw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreSeen {
    pub snapshots: u64,
    pub blobs: u64,
    pub bytes: u64,
    /// When (Unix seconds).
    pub at: u64,
}

/// Each snapshot name's last figures, and the store's.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct State {
    /// By (host, name).
    pub snapshots: BTreeMap<(String, String), Value>,
    pub store: Option<StoreSeen>,
}

impl State {
    /// The state kept at `path`; empty when there is none (or it cannot be
    /// read: then a warning, and the history starts again).
    pub fn load(path: &Path, warn: &dyn Fn(&str)) -> State {
        match Self::read(path) {
            Ok(s) => s,
            Err(e) => {
                warn(&format!(
                    "{}: {e}; metrics history starts again",
                    path.display()
                ));
                State::default()
            }
        }
    }

    fn read(path: &Path) -> std::result::Result<State, String> {
        let f = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(e.to_string()),
        };
        let mut text = Vec::new();
        f.take(STATE_MAX + 1)
            .read_to_end(&mut text)
            .map_err(|e| e.to_string())?;
        if text.len() as u64 > STATE_MAX {
            return Err("larger than 4 MiB".into());
        }
        let v: Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
        let mut s = State::default();
        for item in v["snapshots"].as_array().into_iter().flatten() {
            if let (Some(host), Some(name)) = (item["host"].as_str(), item["name"].as_str()) {
                s.snapshots
                    .insert((host.to_string(), name.to_string()), item.clone());
            }
        }
        let st = &v["store"];
        if let (Some(snapshots), Some(blobs), Some(bytes), Some(at)) = (
            st["snapshots"].as_u64(),
            st["blobs"].as_u64(),
            st["bytes"].as_u64(),
            st["at"].as_u64(),
        ) {
            s.store = Some(StoreSeen {
                snapshots,
                blobs,
                bytes,
                at,
            });
        }
        Ok(s)
    }

    /// Take in one snapshot's run: its last attempt always, its last
    /// success when it stored the snapshot (exit 0 or 1).
    pub fn record(&mut self, o: &Outcome) {
        let key = (o.host.clone(), o.name.clone());
        let last_success = match o.exit {
            0 | 1 => Some(o.started + o.seconds.round() as u64),
            _ => self
                .snapshots
                .get(&key)
                .and_then(|v| v["last_success"].as_u64()),
        };
        let f = o.files();
        let s = o.summary.clone().unwrap_or_default();
        let item = json!({
            "host": o.host,
            "name": o.name,
            "last_attempt": o.started + o.seconds.round() as u64,
            "last_success": last_success,
            "duration": o.seconds,
            "exit": o.exit,
            "files": {"new": f.new, "changed": f.changed, "unchanged": f.unchanged,
                      "skipped": f.skipped},
            "bytes": {"scanned": s.bytes_scanned, "read": s.bytes_read, "new": s.new_bytes,
                      "stored": s.blob_bytes},
            "uploaded_bytes": o.requests["bytes_sent"].as_u64().unwrap_or(0),
            "blobs": s.blobs,
            "warnings": s.warnings,
        });
        self.snapshots.insert(key, item);
    }

    pub fn to_json(&self) -> Value {
        json!({
            "snapshots": self.snapshots.values().collect::<Vec<_>>(),
            "store": self.store.map(|s| json!({
                "snapshots": s.snapshots, "blobs": s.blobs, "bytes": s.bytes, "at": s.at,
            })),
        })
    }

    /// The textfile: every metric with its HELP and TYPE, then one sample
    /// per name (and per state or kind).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let per_name: [(&str, &str, Field); 8] = [
            (
                "vaultik_last_success_timestamp_seconds",
                "When the snapshot was last stored (exit status 0 or 1), as a Unix time.",
                |v| v["last_success"].as_f64(),
            ),
            (
                "vaultik_last_attempt_timestamp_seconds",
                "When the last run of the snapshot ended, as a Unix time.",
                |v| v["last_attempt"].as_f64(),
            ),
            (
                "vaultik_last_duration_seconds",
                "How long the last run of the snapshot took.",
                |v| v["duration"].as_f64(),
            ),
            (
                "vaultik_last_exit_status",
                "The exit status of the last run of the snapshot: 0 stored, 1 stored with \
                 unreadable files skipped, 2 failed.",
                |v| v["exit"].as_f64(),
            ),
            (
                "vaultik_last_uploaded_bytes",
                "Bytes sent to the store by the last run of the snapshot.",
                |v| v["uploaded_bytes"].as_f64(),
            ),
            (
                "vaultik_last_blobs",
                "Blobs uploaded by the last run of the snapshot.",
                |v| v["blobs"].as_f64(),
            ),
            (
                "vaultik_last_warnings",
                "Warnings of the last run of the snapshot.",
                |v| v["warnings"].as_f64(),
            ),
            (
                "vaultik_last_success",
                "1 when the last run of the snapshot stored it, else 0.",
                |v| v["exit"].as_u64().map(|e| if e <= 1 { 1.0 } else { 0.0 }),
            ),
        ];
        for (metric, help, get) in per_name {
            header(&mut out, metric, help);
            for ((host, name), v) in &self.snapshots {
                if let Some(x) = get(v) {
                    sample(&mut out, metric, &[("host", host), ("snapshot", name)], x);
                }
            }
        }
        for (metric, help, field, label, keys) in [
            (
                "vaultik_last_files",
                "Files of the last run of the snapshot, by what was done with them.",
                "files",
                "state",
                &["new", "changed", "unchanged", "skipped"][..],
            ),
            (
                "vaultik_last_bytes",
                "Bytes of the last run of the snapshot: scanned (the files' sizes), read, new \
                 (new chunks, before compression), stored (new blobs, compressed and encrypted).",
                "bytes",
                "kind",
                &["scanned", "read", "new", "stored"][..],
            ),
        ] {
            header(&mut out, metric, help);
            for ((host, name), v) in &self.snapshots {
                for k in keys {
                    if let Some(x) = v[field][k].as_f64() {
                        sample(
                            &mut out,
                            metric,
                            &[("host", host), ("snapshot", name), (label, k)],
                            x,
                        );
                    }
                }
            }
        }
        if let Some(s) = self.store {
            for (metric, help, x) in [
                (
                    "vaultik_store_snapshots",
                    "Snapshots in the store at its last listing.",
                    s.snapshots,
                ),
                (
                    "vaultik_store_blobs",
                    "Blobs in the store at its last listing.",
                    s.blobs,
                ),
                (
                    "vaultik_store_bytes",
                    "Bytes of blobs in the store at its last listing.",
                    s.bytes,
                ),
                (
                    "vaultik_store_listing_timestamp_seconds",
                    "When the store was last listed, as a Unix time.",
                    s.at,
                ),
            ] {
                header(&mut out, metric, help);
                sample(&mut out, metric, &[], x as f64);
            }
        }
        out
    }

    /// Write the state to `state` and the textfile to `textfile`, each
    /// atomically.
    pub fn save(&self, state: &Path, textfile: &Path) -> Result<()> {
        replace(state, self.to_json().to_string().as_bytes(), 0o600)?;
        replace(textfile, self.render().as_bytes(), 0o644)
    }
}

fn header(out: &mut String, metric: &str, help: &str) {
    let _ = writeln!(out, "# HELP {metric} {help}");
    let _ = writeln!(out, "# TYPE {metric} gauge");
}

fn sample(out: &mut String, metric: &str, labels: &[(&str, &str)], x: f64) {
    out.push_str(metric);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {x}");
}

/// A label value as the text format takes it.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Replace `path` with `data`: written to a new file of a random name in
/// the same directory (`O_EXCL`: nothing planted is followed or reused),
/// synced, given `mode`, renamed over `path`.
pub fn replace(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Setup(format!("{}: not a file name", path.display())))?;
    let rand: [u8; 16] = crate::scratch::random("name a temporary file")?;
    let hex: String = rand.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(
        ".{}.{hex}.tmp",
        name.to_string_lossy().trim_start_matches('.')
    ));
    let written = (|| -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .at("create", &tmp)?;
        f.write_all(data).at("write", &tmp)?;
        // The mode asked for, whatever the umask took off.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .at("set mode of", &tmp)?;
        f.sync_all().at("sync", &tmp)?;
        fs::rename(&tmp, path).at("rename into place", path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Summary;

    fn outcome(name: &str, exit: i32, started: u64) -> Outcome {
        let requests = json!({"bytes_sent": 1234});
        if exit == 2 {
            Outcome::failed(name, "h\"1", started, 2.0, "boom\nagain", requests)
        } else {
            let s = Summary {
                id: format!("h_{name}_x"),
                files: 10,
                files_read: 3,
                files_changed: 1,
                skipped: exit as u64,
                blobs: 2,
                seconds: 4.0,
                ..Default::default()
            };
            Outcome::done(name, "h\"1", started, s, requests)
        }
    }

    #[test]
    fn a_failure_keeps_the_last_success() {
        let mut st = State::default();
        st.record(&outcome("etc", 0, 1000));
        st.record(&outcome("etc", 2, 2000));
        let v = &st.snapshots[&("h\"1".to_string(), "etc".to_string())];
        assert_eq!(v["last_success"], 1004);
        assert_eq!(v["last_attempt"], 2002);
        assert_eq!(v["exit"], 2);
        let text = st.render();
        assert!(text.contains(
            "vaultik_last_success_timestamp_seconds{host=\"h\\\"1\",snapshot=\"etc\"} 1004\n"
        ));
        assert!(text.contains("vaultik_last_exit_status{host=\"h\\\"1\",snapshot=\"etc\"} 2\n"));
        assert!(text.contains("vaultik_last_success{host=\"h\\\"1\",snapshot=\"etc\"} 0\n"));
    }

    #[test]
    fn files_by_state_and_a_round_trip() {
        let mut st = State::default();
        st.record(&outcome("home", 1, 50));
        st.store = Some(StoreSeen {
            snapshots: 3,
            blobs: 7,
            bytes: 99,
            at: 60,
        });
        let text = st.render();
        for (state, n) in [("new", 2), ("changed", 1), ("unchanged", 6), ("skipped", 1)] {
            assert!(
                text.contains(&format!(
                    "vaultik_last_files{{host=\"h\\\"1\",snapshot=\"home\",state=\"{state}\"}} {n}\n"
                )),
                "{state}: {text}"
            );
        }
        assert!(text.contains("vaultik_store_blobs 7\n"));
        let dir = tempfile::tempdir().unwrap();
        let (sp, tp) = (dir.path().join("m.json"), dir.path().join("v.prom"));
        st.save(&sp, &tp).unwrap();
        assert_eq!(State::load(&sp, &|m| panic!("{m}")), st);
        assert_eq!(fs::read_to_string(&tp).unwrap(), text);
        // Only the two files: no temporary left.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_damaged_or_oversized_state_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.json");
        fs::write(&p, b"{not json").unwrap();
        let warned = std::cell::Cell::new(false);
        assert_eq!(State::load(&p, &|_| warned.set(true)), State::default());
        assert!(warned.get());
        fs::write(&p, vec![b' '; (STATE_MAX + 1) as usize]).unwrap();
        warned.set(false);
        assert_eq!(State::load(&p, &|_| warned.set(true)), State::default());
        assert!(warned.get());
    }
}
