//! An s3s-fs of a test's own (outages, virtual-hosted requests), over the
//! shared server's directory so that the test's bucket reads as any other.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{ACCESS, SECRET, server};

/// An s3s-fs of a test's own over the shared server's directory (so the
/// test's bucket reads as any other), on a port that stays the same when
/// it is stopped and started again.
pub struct OwnServer {
    pub port: u16,
    /// Extra arguments (`--domain`).
    args: Vec<String>,
    child: Option<Child>,
}

impl OwnServer {
    pub fn start() -> OwnServer {
        OwnServer::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> OwnServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = OwnServer {
            port,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
        };
        s.up();
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn up(&mut self) {
        let t = Instant::now();
        loop {
            let mut cmd = Command::new(s3s_fs());
            cmd.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
                .args(["--access-key", ACCESS, "--secret-key", SECRET])
                .args(&self.args)
                .arg(&server().root)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl in the child before exec; it dies with us.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().expect("start s3s-fs");
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(5) {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if child.try_wait().unwrap().is_some() {
                    break; // the port is not free yet: try again
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "s3s-fs did not start"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stopped at once (SIGKILL): connections reset, then refused.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.down();
    }
}

fn s3s_fs() -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    let p = Path::new(&home).join(".cargo/bin/s3s-fs");
    if p.is_file() {
        p.display().to_string()
    } else {
        "s3s-fs".into()
    }
}
