//! Hooks: `hook_before`, `hook_after` and `hook_on_error`, in the global
//! part of the config and in a `[snapshot NAME]` section, run around each
//! snapshot of `snapshot create` and the daemon: the global `before`,
//! then the snapshot's; after a stored snapshot, the snapshot's `after`
//! then the global one; after a failure (a `before` that failed included),
//! the snapshot's `on_error` then the global one.
//!
//! A hook line is split into words as a shell would and run without a
//! shell (`sh -c '...'` when a line wants one), standard input closed,
//! in its own process group, with the run's figures in its environment
//! (`Outcome::env`). Its output goes to the log (standard error), one
//! line at a time, prefixed with the hook's name; a hook that outlives
//! `hook_timeout` is killed with its process group. A `before` that fails
//! skips the snapshot (exit status 2); an `after` or `on_error` that
//! fails is a warning.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use crate::config::{Hooks, When};

/// Lines of a hook's output logged (the rest counted), and bytes of each.
const LINES_MAX: usize = 1000;
const LINE_MAX: usize = 4096;

/// Run hook `argv` (what `name` says it is, for the log) with `env` added,
/// for at most `timeout`; each line of its output goes to `log`. Err: one
/// line saying why it failed.
pub fn run(
    name: &str,
    argv: &[String],
    env: &[(&str, String)],
    timeout: Duration,
    log: &(dyn Fn(&str) + Sync),
) -> Result<(), String> {
    let Some((prog, args)) = argv.split_first() else {
        return Err(format!("{name}: empty command"));
    };
    let mut child = Command::new(prog)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("{name}: cannot run `{prog}`: {e}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<Box<dyn Read + Send>> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for r in readers {
        let tx = tx.clone();
        // Detached: a grandchild that keeps the pipe open must not hold
        // the run; the thread ends when the pipe closes.
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut r).take(LINE_MAX as u64).read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        let text = text.trim_end_matches(['\n', '\r']);
                        if tx.send(text.to_string()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(tx);
    let deadline = Instant::now() + timeout;
    let mut logged = 0usize;
    let mut dropped = 0usize;
    let mut say = |line: String| {
        if logged < LINES_MAX {
            log(&format!("{name}: {line}"));
            logged += 1;
        } else {
            dropped += 1;
        }
    };
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            say(line);
        }
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => break Err(kill(&mut child)),
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("cannot wait for it: {e}")),
        }
    };
    // What it wrote last, for a moment (not for ever: see above).
    let until = Instant::now() + Duration::from_millis(500);
    while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        say(line);
    }
    if dropped > 0 {
        log(&format!("{name}: ... {dropped} more lines not logged"));
    }
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(match s.code() {
            Some(c) => format!("{name} `{prog}` exited with status {c}"),
            None => format!("{name} `{prog}` was killed by a signal"),
        }),
        Err(why) => Err(format!(
            "{name} `{prog}` {why} (hook_timeout {}s)",
            timeout.as_secs()
        )),
    }
}

/// Kill the hook's process group; what to say of it.
fn kill(child: &mut Child) -> String {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.wait();
    "took too long and was killed".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    const TIMEOUT: Duration = crate::config::HOOK_TIMEOUT;

    fn logged(argv: &[String], timeout: Duration) -> (Result<(), String>, Vec<String>) {
        let lines = Mutex::new(Vec::new());
        let r = run(
            "hook_before",
            argv,
            &[("VAULTIK_SNAPSHOT_NAME", "etc".into())],
            timeout,
            &|l: &str| lines.lock().unwrap().push(l.to_string()),
        );
        (r, lines.into_inner().unwrap())
    }

    #[test]
    fn output_and_environment_reach_the_log() {
        let (r, lines) = logged(
            &sh("echo out $VAULTIK_SNAPSHOT_NAME; echo err >&2"),
            TIMEOUT,
        );
        assert_eq!(r, Ok(()));
        let mut lines = lines;
        lines.sort();
        assert_eq!(lines, ["hook_before: err", "hook_before: out etc"]);
    }

    #[test]
    fn failures_say_why() {
        let (r, _) = logged(&sh("exit 3"), TIMEOUT);
        assert_eq!(r, Err("hook_before `sh` exited with status 3".into()));
        let (r, _) = logged(&["/nonexistent/hook".into()], TIMEOUT);
        assert!(
            r.unwrap_err()
                .starts_with("hook_before: cannot run `/nonexistent/hook`")
        );
    }

    #[test]
    fn a_hook_over_its_time_is_killed_with_its_children() {
        let start = Instant::now();
        // A grandchild holding the pipe open does not hold the run.
        let (r, _) = logged(&sh("sleep 30 & sleep 30"), Duration::from_millis(300));
        assert!(
            r.as_ref()
                .unwrap_err()
                .contains("took too long and was killed"),
            "{r:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn long_output_is_bounded() {
        let (r, lines) = logged(&sh("yes | head -n 1500"), TIMEOUT);
        assert_eq!(r, Ok(()));
        assert_eq!(lines.len(), LINES_MAX + 1);
        assert_eq!(
            lines.last().unwrap(),
            "hook_before: ... 500 more lines not logged"
        );
    }
}
