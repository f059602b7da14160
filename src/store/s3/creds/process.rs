//! `credential_process`: a command (split as a shell would, run without
//! one) that prints credentials as JSON (`Version` 1, `AccessKeyId`,
//! `SecretAccessKey`, `SessionToken`, `Expiration`). Its standard output
//! is read to a bound and never shown: it holds the secret, or, when the
//! command fails, may. What a failure shows is its exit status and the
//! last line of its standard error.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::http::Http;
use super::{CredError, Fetched, Source};

/// The longest output read (a few hundred bytes is usual).
const OUTPUT_MAX: u64 = 64 << 10;
/// What the command may take: an SSO or vault helper asks a server, it
/// does not wait for a person.
const TIME_MAX: Duration = Duration::from_secs(60);

pub(super) struct Process {
    pub(super) argv: Vec<String>,
    pub(super) what: String,
}

impl Source for Process {
    fn fetch(&self, _: &Http) -> Fetched {
        let Some((prog, args)) = self.argv.split_first() else {
            return Err(CredError::permanent("credential_process is empty"));
        };
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                CredError::permanent(format!(
                    "cannot run `{}`: {e}",
                    crate::error::one_line(prog.clone())
                ))
            })?;
        let mut out = child.stdout.take().expect("stdout is piped");
        let mut err = child.stderr.take().expect("stderr is piped");
        // Read on threads, so that a command that fills a pipe is not
        // stuck while its exit is waited for; each read is bounded (past
        // the bound the pipe is closed: the command gets SIGPIPE).
        let (out_tx, out_rx) = std::sync::mpsc::channel();
        let (err_tx, err_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let r = (&mut out).take(OUTPUT_MAX + 1).read_to_end(&mut buf);
            let _ = out_tx.send(r.map(|_| buf));
        });
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut err).take(16 << 10).read_to_end(&mut buf);
            let _ = err_tx.send(buf);
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Ok(s),
                Ok(None) if start.elapsed() > TIME_MAX => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!(
                        "`{}` did not finish within {}s; killed",
                        crate::error::one_line(prog.clone()),
                        TIME_MAX.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => break Err(format!("waiting for it: {e}")),
            }
        };
        // A process it started may hold the pipes open: its output is
        // waited for a little, not forever.
        let stderr = err_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        let stdout = out_rx.recv_timeout(Duration::from_secs(5));
        let status = status.map_err(CredError::permanent)?;
        // Past the bound, whatever the status (the command may have died
        // of the closed pipe).
        if matches!(&stdout, Ok(Ok(b)) if b.len() as u64 > OUTPUT_MAX) {
            return Err(CredError::permanent(format!(
                "its output is longer than {OUTPUT_MAX} bytes; refused"
            )));
        }
        let stdout = match stdout {
            Ok(Ok(b)) if status.success() => b,
            Ok(Ok(_)) => Vec::new(),
            Ok(Err(e)) if status.success() => {
                return Err(CredError::permanent(format!("reading its output: {e}")));
            }
            Err(_) if status.success() => {
                return Err(CredError::permanent(
                    "its output did not end (a process it started holds it open)",
                ));
            }
            _ => Vec::new(),
        };
        if !status.success() {
            return Err(CredError::permanent(format!(
                "`{}` failed ({status}){}",
                crate::error::one_line(prog.clone()),
                last_line(&stderr)
            )));
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&stdout) {
            if v.get("Version").and_then(|x| x.as_u64()) != Some(1) {
                return Err(CredError::permanent(
                    "its output is not of Version 1 (the only one there is)",
                ));
            }
        }
        super::from_json(&stdout).map_err(|m| CredError::permanent(format!("its output: {m}")))
    }

    fn describe(&self) -> String {
        self.what.clone()
    }
}

/// `: <the last line of standard error>` (escaped, at most 200
/// characters), or nothing.
fn last_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    match text.lines().rev().map(str::trim).find(|l| !l.is_empty()) {
        Some(l) => format!(
            ": {}",
            crate::error::one_line(l.chars().take(200).collect())
        ),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str) -> Fetched {
        Process {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            what: "test".into(),
        }
        .fetch(&Http::new(None))
    }

    #[test]
    fn a_process_gives_credentials_and_its_failures_never_show_its_output() {
        let c = run(
            r#"echo '{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK","SessionToken":"T","Expiration":"2099-01-01T00:00:00Z"}'"#,
        )
        .unwrap();
        assert_eq!((c.key(), c.token()), ("AK", Some("T")));
        let e = run(r#"echo '{"AccessKeyId":"AK","SecretAccessKey":"hunter2"}'; echo 'no SSO session' >&2; exit 3"#)
            .unwrap_err();
        assert!(
            e.msg.contains("exit status: 3") && e.msg.ends_with(": no SSO session"),
            "{e:?}"
        );
        assert!(!e.msg.contains("hunter2"), "{e:?}");
        let e = run(r#"echo 'AccessKeyId=AK SecretAccessKey=hunter2'"#).unwrap_err();
        assert!(
            e.msg.contains("not JSON") && !e.msg.contains("hunter2"),
            "{e:?}"
        );
        let e = run(r#"echo '{"Version":2,"AccessKeyId":"AK","SecretAccessKey":"hunter2"}'"#)
            .unwrap_err();
        assert!(
            e.msg.contains("Version 1") && !e.msg.contains("hunter2"),
            "{e:?}"
        );
        let e = run("head -c 200000 /dev/zero").unwrap_err();
        assert!(e.msg.contains("longer than"), "{e:?}");
    }
}
