//! Passphrase-protected identities (issue 33): `keygen --passphrase`
//! writes the identity as an armored age file encrypted with a
//! passphrase; `--identity FILE` asks for it at the terminal (a real pty
//! here, echo off) or reads it from `--passphrase-fd N`. Never from argv or
//! the environment.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::core::restored;
use crate::util::tree::assert_same_tree;
use crate::util::{Backend, Env, bin, stderr};

const PASS: &str = "correct horse battery staple";

/// `cmd` with `text` readable on its file descriptor 3.
fn with_fd3(cmd: &mut Command, text: &str) {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two descriptors we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are ours.
    let (r, mut w) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    w.write_all(text.as_bytes()).unwrap();
    drop(w);
    let fd = r.as_raw_fd();
    // SAFETY: dup2 in the child before exec; `r` lives until spawn.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec: cleared then.
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Kept open in the parent until the command has been spawned.
    std::mem::forget(r);
}

/// A key pair made with `keygen --passphrase`, the identity in `path`;
/// the public key.
fn protected_key(path: &Path) -> String {
    let mut cmd = Command::new(bin());
    cmd.args(["keygen", "--passphrase", "--passphrase-fd", "3", "--output"])
        .arg(path)
        .env_clear()
        .stdin(Stdio::null());
    with_fd3(&mut cmd, &format!("{PASS}\n"));
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(public.starts_with("age1"), "{public}");
    let file = std::fs::read_to_string(path).unwrap();
    assert!(
        file.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"),
        "{file}"
    );
    assert!(!file.contains("AGE-SECRET-KEY"), "the secret in the clear");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    public
}

/// A store backed up to the protected key's public key.
fn env_for(b: Backend) -> Env {
    let mut env = Env::new(b);
    let key = env.path().join("key.age");
    env.recipient = protected_key(&key);
    env.random_files(3, 200_000, 9);
    std::fs::write(env.src().join("note"), b"kept under a passphrase").unwrap();
    env.write_config();
    env.create();
    env
}

fn restore(env: &Env, target: &Path, fd3: Option<&str>) -> Output {
    let key = env.path().join("key.age");
    let mut cmd = env.cmd();
    cmd.args(["restore", "latest", "--target"])
        .arg(target)
        .arg("--identity")
        .arg(&key);
    if let Some(text) = fd3 {
        cmd.args(["--passphrase-fd", "3"]);
        with_fd3(&mut cmd, text);
    }
    cmd.output().unwrap()
}

both!(a_protected_identity_through_a_file_descriptor, |b| {
    let env = env_for(b);
    let target = env.path().join("r");
    let out = restore(&env, &target, Some(&format!("{PASS}\n")));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    // A wrong passphrase: one line naming the file, exit 2, nothing
    // restored.
    let wrong = env.path().join("wrong");
    let out = restore(&env, &wrong, Some("Tr0ub4dor&3\n"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("key.age: wrong passphrase"), "{err}");
    assert!(!wrong.exists());
    // No terminal and no descriptor: told how to give it.
    let out = restore(&env, &wrong, None);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("protected by a passphrase") && err.contains("--passphrase-fd N"),
        "{err}"
    );
    // Not a descriptor that is open.
    let out = env
        .cmd()
        .args(["restore", "latest", "--target"])
        .arg(&wrong)
        .arg("--identity")
        .arg(env.path().join("key.age"))
        .args(["--passphrase-fd", "987"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--passphrase-fd 987"),
        "{}",
        stderr(&out)
    );
    assert!(!wrong.exists());
});

/// A pseudo-terminal: the master's end, and a command set up to have the
/// other end as its controlling terminal (and nothing else: its standard
/// streams are pipes).
fn pty(cmd: &mut Command) -> (std::fs::File, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors we then own.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: in the child before exec: a new session whose controlling
    // terminal is the pty.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::ioctl(slave, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Read without blocking: a prompt that never comes fails the test
    // instead of hanging it.
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(master, libc::F_GETFL);
        libc::fcntl(master, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    // SAFETY: both are ours; the slave is dropped by the caller once the
    // child has it.
    unsafe {
        (
            std::fs::File::from(OwnedFd::from_raw_fd(master)),
            OwnedFd::from_raw_fd(slave),
        )
    }
}

/// Read the master until `want` shows, at most 20 s; what was read.
fn until(master: &mut std::fs::File, seen: &mut String, want: &str) {
    let t = Instant::now();
    let mut buf = [0u8; 256];
    while !seen.contains(want) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no `{want}` in {seen:?}"
        );
        match master.read(&mut buf) {
            Ok(0) | Err(_) => std::thread::sleep(Duration::from_millis(20)),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
}

#[test]
fn a_protected_identity_through_a_terminal() {
    // keygen at a terminal: asked twice, nothing echoed.
    let env = Env::new(Backend::Local);
    let key = env.path().join("key.age");
    let mut cmd = Command::new(bin());
    cmd.args(["keygen", "--passphrase", "--output"])
        .arg(&key)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut master, slave) = pty(&mut cmd);
    let child = cmd.spawn().unwrap();
    drop(slave);
    let mut seen = String::new();
    until(&mut master, &mut seen, "passphrase for ");
    master.write_all(format!("{PASS}\n").as_bytes()).unwrap();
    until(&mut master, &mut seen, "the same passphrase again: ");
    master.write_all(format!("{PASS}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!seen.contains(PASS), "echoed: {seen:?}");
    let mut env = env;
    env.recipient = String::from_utf8(out.stdout).unwrap().trim().to_string();
    env.random_files(2, 100_000, 4);
    env.write_config();
    env.create();
    // Two that differ: nothing written.
    let other = env.path().join("other.age");
    let mut cmd = Command::new(bin());
    cmd.args(["keygen", "--passphrase", "--output"])
        .arg(&other)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut master2, slave) = pty(&mut cmd);
    let child = cmd.spawn().unwrap();
    drop(slave);
    let mut seen = String::new();
    until(&mut master2, &mut seen, "passphrase for ");
    master2.write_all(b"one\n").unwrap();
    until(&mut master2, &mut seen, "again: ");
    master2.write_all(b"two\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the two passphrases differ"),
        "{}",
        stderr(&out)
    );
    assert!(!other.exists());
    // A restore asks at the terminal, whatever its standard input is.
    let target = env.path().join("r");
    let mut cmd = env.cmd();
    cmd.args(["restore", "latest", "--target"])
        .arg(&target)
        .arg("--identity")
        .arg(&key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut master3, slave) = pty(&mut cmd);
    let child = cmd.spawn().unwrap();
    drop(slave);
    let mut seen = String::new();
    until(
        &mut master3,
        &mut seen,
        &format!("passphrase for {}: ", key.display()),
    );
    master3.write_all(format!("{PASS}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!seen.contains(PASS), "echoed: {seen:?}");
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}
