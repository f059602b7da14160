//! Disk faults (issue 6): a full disk (a file-size limit, RLIMIT_FSIZE, so
//! every write past it fails as it would on a full filesystem) and a
//! read-only index directory. Each gives one clear line and a non-zero exit;
//! the index stays intact and only ever names blobs that are in the store;
//! the next run completes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

use crate::core::restored;
use crate::util::tree::{assert_same_tree, random_bytes};
use crate::util::{Backend, Env, bin, stderr};

fn integrity(env: &Env) -> String {
    let conn = rusqlite::Connection::open(env.index_path()).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// The index may only name blobs that the store holds.
fn index_within_store(env: &Env) {
    let stored = env.blob_keys();
    for k in env.index_blob_keys() {
        assert!(stored.contains(&k), "index names {k}, not in the store");
    }
}

fn create_with_file_limit(env: &Env, bytes: u64) -> Output {
    let mut cmd = env.cmd();
    cmd.args(["snapshot", "create"]);
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &r);
            // A write past the limit fails with EFBIG instead of a signal.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    cmd.output().unwrap()
}

#[test]
fn a_full_disk_fails_cleanly_and_the_next_run_completes() {
    let mut env = Env::new(Backend::S3);
    env.extra = vec!["blob_size_limit = 1MiB".into(), "chunk_size = 16KiB".into()];
    env.random_files(2, 20_000, 1);
    env.create();
    let many = env.src().join("many");
    fs::create_dir(&many).unwrap();
    for i in 0..400u64 {
        fs::write(
            many.join(format!("file-{i:04}")),
            random_bytes(3000, 1000 + i),
        )
        .unwrap();
    }
    let index_len = fs::metadata(env.index_path()).unwrap().len();
    let mut failures = Vec::new();
    // From "nothing can be written" to "the index cannot grow much".
    for limit in [0, 16 << 10, index_len + 4096, index_len + (32 << 10)] {
        let out = create_with_file_limit(&env, limit);
        let err = stderr(&out);
        if out.status.success() {
            continue;
        }
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        // EFBIG from a plain write; SQLite says "disk I/O error" (and
        // "database or disk is full" for ENOSPC).
        assert!(
            err.contains("File too large") || err.contains("full") || err.contains("disk I/O"),
            "limit {limit}: {err}"
        );
        assert!(err.contains('/'), "names the file: {err}");
        assert_eq!(integrity(&env), "ok");
        index_within_store(&env);
        assert_eq!(env.snapshot_ids().len(), 1, "no snapshot recorded");
        failures.push(err);
    }
    assert!(failures.len() >= 3, "{failures:?}");
    assert!(
        failures
            .iter()
            .any(|e| e.contains(env.index_path().to_str().unwrap())),
        "one of the failures is the index's own write: {failures:?}"
    );
    // Room again: the next run completes and restores.
    env.create();
    assert_eq!(integrity(&env), "ok");
    index_within_store(&env);
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn a_read_only_index_fails_cleanly() {
    let env = Env::new(Backend::Local);
    env.random_files(3, 10_000, 5);
    env.create();
    fs::write(env.src().join("new.txt"), b"new").unwrap();
    let state = env.index_path().parent().unwrap().to_path_buf();
    let root = unsafe { libc::geteuid() } == 0;
    let out = if root {
        // Permissions do not stop root: a read-only bind mount in a
        // private mount namespace does.
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--", "sh", "-c"])
            .arg("mount --bind -o ro \"$1\" \"$1\" && shift && exec \"$@\"")
            .arg("sh")
            .arg(&state)
            .arg(bin())
            .args(["snapshot", "create"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", env.path())
            .env("VAULTIK_CONFIG", env.config_path());
        cmd.output().unwrap()
    } else {
        let mode = |p: &std::path::Path, m: u32| {
            fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap()
        };
        mode(&env.index_path(), 0o400);
        mode(&state, 0o500);
        let out = env.run(&["snapshot", "create"]);
        mode(&state, 0o700);
        mode(&env.index_path(), 0o600);
        out
    };
    assert!(!out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(state.to_str().unwrap()),
        "names the file: {err}"
    );
    assert!(
        err.contains("Read-only") || err.contains("readonly") || err.contains("denied"),
        "{err}"
    );
    assert_eq!(integrity(&env), "ok");
    assert_eq!(env.snapshot_ids().len(), 1);
    env.create();
    assert_eq!(env.snapshot_ids().len(), 2);
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}
