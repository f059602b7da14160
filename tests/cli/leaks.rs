//! Secrets and leaks: local state is private while a run is going on and
//! after it, the keyless commands work without the key, and no secret (S3
//! secret key, private key) appears in any output, error or JSON report.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::{self, Backend, Env, stderr};

/// Every directory under `root` is 0700 and every file 0600 (nothing for
/// group or others); returns how many files were checked.
fn assert_private(root: &Path) -> usize {
    let mut files = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        let m = fs::symlink_metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o700, "{} is {m:o}", dir.display());
        for e in rd.flatten() {
            let Ok(meta) = fs::symlink_metadata(e.path()) else {
                continue; // gone meanwhile (a temporary file)
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                let m = meta.permissions().mode() & 0o777;
                assert_eq!(m, 0o600, "{} is {m:o}", e.path().display());
            }
        }
    }
    files
}

#[test]
fn local_state_is_private_during_and_after_a_run() {
    let mut env = Env::new(Backend::S3);
    // A slow store keeps the run (and SQLite's -wal and -shm files, the
    // encrypted blob and the metadata being written) around to look at.
    env.slow_store(Duration::from_millis(200));
    env.extra.push("blob_size_limit = 1MiB".into());
    env.random_files(8, 600_000, 70);
    env.write_config();
    let mut child = env.spawn_create();
    let state = env.index_path().parent().unwrap().to_path_buf();
    let mut seen = 0;
    let mut saw_wal = false;
    let end = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < end, "backup did not finish");
        if state.exists() {
            seen = seen.max(assert_private(&state));
            saw_wal |= state.join("index.sqlite-wal").exists();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(saw_wal, "the index's WAL file was checked while it existed");
    assert!(seen >= 4, "index, lock, WAL and temporary files: {seen}");
    assert!(assert_private(&state) >= 2);
}

#[test]
fn keyless_commands_work_and_no_secret_is_ever_printed() {
    let env = Env::new(Backend::S3);
    fs::write(env.src().join("a"), b"some data").unwrap();
    env.write_config();
    // No VAULTIK_PRIVATE_KEY in the environment of any of these (cmd() starts
    // from an empty environment) and no identity file anywhere.
    let mut outputs = Vec::new();
    let mut ok = |args: &[&str]| {
        let out = env.run(args);
        assert!(
            out.status.success(),
            "vaultik {args:?} without the key: {}",
            stderr(&out)
        );
        outputs.push(out);
    };
    ok(&["snapshot", "create"]);
    ok(&["snapshot", "create"]);
    ok(&["snapshot", "list"]);
    ok(&["snapshot", "list", "--json"]);
    ok(&["snapshot", "verify", "latest"]);
    ok(&["snapshot", "verify", "latest", "--json"]);
    ok(&["store", "info", "--json"]);
    ok(&[
        "snapshot",
        "purge",
        "--keep-latest",
        "1",
        "--force",
        "--json",
    ]);
    ok(&["prune", "--json"]);
    // Failures that involve the secrets: a wrong secret key, a bad private
    // key, a restore with the right key in the environment.
    let bad_secret = env
        .cmd()
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-0123456789")
        .args(["snapshot", "list"])
        .output()
        .unwrap();
    assert!(!bad_secret.status.success());
    let bad_key = env
        .cmd()
        .env(
            "VAULTIK_PRIVATE_KEY",
            "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQ",
        )
        .args(["restore", "latest", "--target"])
        .arg(env.path().join("r1"))
        .output()
        .unwrap();
    assert!(!bad_key.status.success());
    let restored = env.restore_to("latest", &env.path().join("r2"), &[]);
    assert!(restored.status.success(), "{}", stderr(&restored));
    let verbose_deep = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(["snapshot", "verify", "latest", "--deep", "--json"])
        .output()
        .unwrap();
    assert!(verbose_deep.status.success(), "{}", stderr(&verbose_deep));
    outputs.extend([bad_secret, bad_key, restored, verbose_deep]);
    let secret_key_body = env.identity.trim_start_matches("AGE-SECRET-KEY-1");
    for out in &outputs {
        for text in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(text);
            for secret in [util::SECRET, "wrong-secret-0123456789", secret_key_body] {
                assert!(!text.contains(secret), "a secret in the output:\n{text}");
            }
            assert!(
                !text.contains("QQQQQQQQQQQQ"),
                "the bad key echoed:\n{text}"
            );
        }
    }
}

/// The index's directory is made 0700, or refused when it exists looser or
/// owned by someone else: it holds the index (chunk hashes of the host's
/// data) and temporary files.
#[test]
fn a_loose_or_foreign_index_directory_is_refused() {
    let env = Env::new(Backend::Local);
    fs::write(env.src().join("f"), b"data").unwrap();
    let state = env.index_path().parent().unwrap().to_path_buf();
    fs::create_dir_all(&state).unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&state.display().to_string()) && err.contains("mode 0755"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!env.index_path().exists() && !env.store_dir().join("blobs").exists());
    if rustix::process::geteuid().is_root() {
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        rustix::fs::chown(&state, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
        let out = env.run(&["snapshot", "create"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr(&out).contains("owned by uid 65534"),
            "{}",
            stderr(&out)
        );
        rustix::fs::chown(&state, Some(rustix::fs::Uid::ROOT), None).unwrap();
    }
    fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
    env.create();
    // A missing one is made private.
    fs::remove_dir_all(&state).unwrap();
    env.create();
    let m = fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(m, 0o700);
}
