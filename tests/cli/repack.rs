//! Issue 33: `repack` gives back the space of partly used blobs (a purged
//! file's bytes are gone after repack and the next prune), keeps every
//! snapshot whole and signed at each step (an interrupted repack leaves
//! snapshots that restore), and races safely with a backup on another
//! host.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::core::restored;
use crate::util::tree::{assert_same_tree, random_bytes};
use crate::util::*;

fn out_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The bytes the store's blobs take.
fn blob_bytes(env: &Env) -> u64 {
    env.objects()
        .iter()
        .filter(|(k, _)| k.starts_with("blobs/"))
        .map(|(_, b)| b.len() as u64)
        .sum()
}

/// The key this host signs with, as `store info` says.
fn host_key(env: &Env, conf: &Path) -> String {
    let o = env
        .cmd()
        .env("VAULTIK_CONFIG", conf)
        .args(["store", "info", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["host_signing_key"].as_str().unwrap().to_string()
}

/// Restore `id` into `target` trusting only the signing key `key`.
fn restore_trusting(env: &Env, key: &str, id: &str, target: &Path) -> Output {
    env.cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(["--signer", key, "restore", id, "--target"])
        .arg(target)
        .output()
        .unwrap()
}

fn json_of(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    let text = out_text(o);
    let line = text.lines().find(|l| l.starts_with('{')).unwrap_or("");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// A big file and small ones backed up; the big file deleted and backed up
/// again; the first snapshot removed and pruned: the big file's bytes stay,
/// in the blob the small files' chunks share. Returns the kept snapshot.
fn purged_file_stays(env: &Env) -> String {
    fs::write(env.src().join("big.bin"), random_bytes(5 << 20, 33)).unwrap();
    for i in 0..40u64 {
        fs::write(
            env.src().join(format!("small{i:02}")),
            random_bytes(10_000 + i as usize * 100, 500 + i),
        )
        .unwrap();
    }
    env.create();
    env.settle();
    fs::remove_file(env.src().join("big.bin")).unwrap();
    env.create();
    let ids = env.snapshot_ids();
    assert_eq!(ids.len(), 2);
    env.ok(&["snapshot", "remove", &ids[0]]);
    env.ok(&["prune"]);
    assert!(
        blob_bytes(env) > 5 << 20,
        "the purged file's bytes stay after prune: {}",
        blob_bytes(env)
    );
    ids[1].clone()
}

both!(a_purged_files_bytes_are_gone_after_repack_and_prune, |b| {
    let mut env = Env::new(b);
    env.extra = vec!["chunk_size = 64KiB".into(), "grace_period = 0s".into()];
    env.write_config();
    let kept = purged_file_stays(&env);
    let before = env.objects();

    // A dry run says what it would do and writes nothing.
    let v = json_of(&env.run_with_key(&["repack", "--dry-run", "--json"]));
    assert_eq!(v["dry_run"], true, "{v}");
    assert_eq!(v["blobs"], 1, "{v}");
    assert_eq!(v["rewritten"], serde_json::json!([kept]), "{v}");
    assert!(v["freed_bytes"].as_u64().unwrap() > 5_000_000, "{v}");
    assert_eq!(env.objects(), before, "a dry run writes nothing");
    // A threshold above the unused share: nothing.
    let o = env.run_with_key(&["repack", "--max-unused", "95%"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out_text(&o).contains("nothing to repack"),
        "{}",
        out_text(&o)
    );
    assert_eq!(env.objects(), before);
    // Without the key, or with a bad threshold: refused, nothing written.
    let o = env.run(&["repack"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("private key"), "{}", stderr(&o));
    // Another key: not one snapshot opens, an error naming the key.
    let other = std::process::Command::new(bin())
        .arg("keygen")
        .output()
        .unwrap();
    let other = String::from_utf8(other.stdout).unwrap();
    let other = other
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let o = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", other)
        .arg("repack")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", out_text(&o));
    assert!(stderr(&o).to_lowercase().contains("key"), "{}", stderr(&o));
    assert_eq!(env.objects(), before);
    let o = env.run_with_key(&["repack", "--max-unused", "150%"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--max-unused"), "{}", stderr(&o));
    assert_eq!(env.objects(), before);

    let o = env.run_with_key(&["repack"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = out_text(&o);
    assert!(text.contains("repacked 1 blob(s)"), "{text}");
    assert!(text.contains("rewrote 1 snapshot(s)"), "{text}");
    assert!(text.contains("signed again with this host's key"), "{text}");
    assert!(
        text.contains("local index: learned the 1 new blob(s)"),
        "{text}"
    );
    env.ok(&["prune"]);
    let after = blob_bytes(&env);
    assert!(
        after < 1 << 20,
        "the purged file's 5 MiB are gone after repack and prune: {after} bytes of blobs left"
    );
    // The snapshot restores identical, verifies deep, and is still signed
    // by this host (the repack ran here, with this host's key).
    let key = host_key(&env, &env.config_path());
    let target = env.path().join("restored");
    let o = restore_trusting(&env, &key, &kept, &target);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    let o = env.run_with_key(&["snapshot", "verify", "--deep", &kept]);
    assert!(o.status.success(), "{}", stderr(&o));
    // This host's index learned the new blob: the next backup of the same
    // files uploads no chunk again.
    fs::write(env.src().join("small00"), b"changed").unwrap();
    let o = env.run(&["snapshot", "create"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(figure(&out_text(&o), "new chunks") <= 1, "{}", out_text(&o));
    let o = env.run_with_key(&["snapshot", "verify", "--deep", "latest"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Nothing left to do.
    let o = env.run_with_key(&["repack"]);
    assert!(
        out_text(&o).contains("nothing to repack"),
        "{}",
        out_text(&o)
    );
});

/// Start a repack held at `point` (`repack-pause-mid` or
/// `repack-pause-metadata`, in the state directory of `conf`'s index):
/// the running child, once it is held.
fn held_repack(env: &Env, state: &Path, point: &str, extra: &[&str]) -> (Child, PathBuf) {
    let at = state.join(point);
    let child = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .env("VAULTIK_TEST_PAUSE_AT", &at)
        .args(extra)
        .arg("repack")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let marker = PathBuf::from(format!("{}.paused", at.display()));
    let started = Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the repack never reached {point}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, marker)
}

#[test]
fn a_repack_killed_midway_leaves_snapshots_that_restore_and_the_next_one_finishes() {
    for point in ["repack-pause-mid", "repack-pause-metadata"] {
        let mut env = Env::new(Backend::S3);
        env.extra = vec!["chunk_size = 64KiB".into(), "grace_period = 0s".into()];
        env.write_config();
        let kept = purged_file_stays(&env);
        let key = host_key(&env, &env.config_path());
        let state = env.index_path().parent().unwrap().to_path_buf();
        let (mut child, _marker) = held_repack(&env, &state, point, &[]);
        // Killed where it was held: no step after it happens.
        child.kill().unwrap();
        child.wait().unwrap();
        // Trusting this host's key only, the snapshot restores (the
        // manifest vouches for the metadata before and after, and is
        // signed), verifies deep, and a prune deletes nothing it needs.
        env.ok(&["prune"]);
        let target = env.path().join("restored");
        let o = restore_trusting(&env, &key, &kept, &target);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        assert_same_tree(&env.src(), &restored(&target, &env.src()));
        let o = env.run_with_key(&["--signer", &key, "snapshot", "verify", "--deep", &kept]);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        // The next repack finishes the work: the purged bytes go.
        let o = env.run_with_key(&["repack"]);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        env.ok(&["prune"]);
        assert!(blob_bytes(&env) < 1 << 20, "{point}: {}", blob_bytes(&env));
        let o = env.run_with_key(&["--signer", &key, "snapshot", "verify", "--deep", &kept]);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
    }
}

#[test]
fn a_repack_racing_a_backup_on_another_host_loses_no_chunk() {
    let mut env = Env::new(Backend::S3);
    env.extra = vec!["chunk_size = 64KiB".into(), "grace_period = 2s".into()];
    env.write_config();
    let kept = purged_file_stays(&env);
    let host = host_key(&env, &env.config_path());
    // The admin repacks from another machine: its own index (none) and
    // signing key, trusting the host's.
    let admin = host_config(&env, "admin", &env.path().join("nothing"));

    // Untrusted, the host's snapshot is left alone with its blob.
    let o = run_as(&env, &admin, &["repack"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = out_text(&o);
    assert!(text.contains("left alone: snapshot"), "{text}");
    assert!(text.contains("does not trust"), "{text}");
    assert!(text.contains("nothing to repack"), "{text}");

    // A backup of the host, held before it reads a new file: its index
    // knows the blob the repack replaces, and it will name it.
    let new_file = env.src().join("zz-new");
    fs::write(&new_file, b"written during the repack").unwrap();
    let mut marker = new_file.clone().into_os_string();
    marker.push(".paused");
    let marker = PathBuf::from(marker);
    let backup = env
        .cmd()
        .env("VAULTIK_TEST_PAUSE_AT", &new_file)
        .args(["snapshot", "create"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "never held");
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = run_as(&env, &admin, &["--signer", &host, "repack", "--json"]);
    let v = json_of(&o);
    assert_eq!(v["rewritten"], serde_json::json!([kept]), "{v}");
    assert_eq!(v["resigned"], 1, "{v}");
    assert_eq!(v["marked"], 1, "{v}");
    let admin_key = v["signer"].as_str().unwrap().to_string();
    assert_ne!(admin_key, host);
    fs::remove_file(&marker).unwrap();
    let done = backup.wait_with_output().unwrap();
    assert!(done.status.success(), "{}", stderr(&done));
    let ids = env.snapshot_ids();
    assert_eq!(ids.len(), 2);
    // Past the grace period, a prune: the old blob is named by the
    // backup's snapshot (published after the mark), so it stays.
    std::thread::sleep(Duration::from_millis(2100));
    let o = run_as(&env, &admin, &["prune"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for id in &ids {
        let o = env.run_with_key(&["snapshot", "verify", "--deep", id]);
        assert!(o.status.success(), "{id}: {}", stderr(&o));
    }
    // The repacked snapshot is now signed by the admin's key: trusted by
    // it, it restores; trusting the host's key alone, it is refused by
    // name.
    let target = env.path().join("restored");
    let o = restore_trusting(&env, &admin_key, &kept, &target);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = restore_trusting(&env, &host, &kept, &env.path().join("refused"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&kept), "{}", stderr(&o));
    // The host backs up on; every snapshot still verifies deep.
    fs::write(env.src().join("zz-later"), b"later").unwrap();
    env.create();
    for id in env.snapshot_ids() {
        let o = env.run_with_key(&["snapshot", "verify", "--deep", &id]);
        assert!(o.status.success(), "{id}: {}", stderr(&o));
    }
}

/// Forged snapshots (sealed to the public key, unsigned) beside a real
/// one whose blob is partly used: one claims a chunk that fails its
/// check where a real one is, one a chunk past its blob's end, one has
/// metadata cut short, one metadata that claims far more than its size,
/// one a metadata object that is a symlink out of the store. Each is
/// left alone, named, with the blob it lists (a forger can keep a blob
/// from being repacked, as it can keep it from GC, never more); the run
/// succeeds, nothing outside the store changes, and the real snapshot
/// still restores and verifies.
#[test]
fn forged_snapshots_are_left_alone_with_their_blobs() {
    use crate::util::forge::{self, Base};
    for variant in ["bad chunk", "past the end", "cut short", "huge", "symlink"] {
        let mut env = Env::new(Backend::Local);
        env.extra = vec!["chunk_size = 64KiB".into(), "grace_period = 0s".into()];
        env.write_config();
        let kept = purged_file_stays(&env);
        let t = vaultik::layout::parse_id(&kept).unwrap().time;
        let forged = vaultik::layout::make_id("testhost", "forged", t + 1);
        let mut base = Base::of(&env, &kept);
        let outside = env.path().join("outside-secret");
        fs::write(&outside, b"not the store's").unwrap();
        match variant {
            "bad chunk" => {
                let bad = base.bad_chunk(0);
                let f = forge::file(b"/x", 0o644).with(&base, &[bad]);
                forge::forge(&env, &forged, &[f], Some(&base));
            }
            "past the end" => {
                base.misplace(0, 1 << 40);
                let f = forge::file(b"/x", 0o644).with(&base, &[0]);
                forge::forge(&env, &forged, &[f], Some(&base));
            }
            "cut short" => {
                let sealed =
                    fs::read(env.store_dir().join(format!("metadata/{kept}/db.zst.age"))).unwrap();
                forge::forge_sealed(&env, &forged, &sealed[..sealed.len() / 2], Some(&base));
            }
            "huge" => {
                let mut plain = (1u64 << 40).to_le_bytes().to_vec();
                plain.extend_from_slice(&[0u8; 64]);
                forge::forge_sealed(&env, &forged, &forge::seal(&env, &plain), Some(&base));
            }
            _ => {
                let f = forge::file(b"/x", 0o644).with(&base, &[0]);
                forge::forge(&env, &forged, &[f], Some(&base));
                let db = env
                    .store_dir()
                    .join(format!("metadata/{forged}/db.zst.age"));
                fs::copy(&db, &outside).unwrap();
                fs::remove_file(&db).unwrap();
                std::os::unix::fs::symlink(&outside, &db).unwrap();
            }
        }
        let outside_before = forge::census(env.path(), &env.store_dir());
        let o = env.run_with_key(&["repack"]);
        assert!(o.status.success(), "{variant}: {}", stderr(&o));
        let text = out_text(&o);
        let err = stderr(&o);
        if variant == "bad chunk" {
            // Read, then refused by its check: the blob is left out.
            assert!(err.contains("not repacked"), "{variant}: {err}");
            assert!(err.contains("SHA-256"), "{variant}: {err}");
        } else {
            assert!(
                text.contains(&format!("left alone: snapshot {forged}")),
                "{variant}: {text}"
            );
        }
        assert!(
            text.contains("marked") || text.contains("nothing to repack"),
            "{text}"
        );
        assert!(!text.contains("1 old blob(s) marked"), "{variant}: {text}");
        env.ok(&["prune"]);
        assert!(blob_bytes(&env) > 5 << 20, "{variant}: the blob stays");
        let mut after = forge::census(env.path(), &env.store_dir());
        // The state directory's own files (its temporary directory, the
        // index) are vaultik's, and may change.
        let state = env.index_path().parent().unwrap().to_path_buf();
        let strip = |v: &mut Vec<String>| {
            let prefix = state
                .strip_prefix(env.path())
                .unwrap()
                .display()
                .to_string();
            v.retain(|l| !l.starts_with(&prefix))
        };
        let mut before = outside_before;
        strip(&mut before);
        strip(&mut after);
        assert_eq!(
            before, after,
            "{variant}: something outside the store changed"
        );
        let o = env.run_with_key(&["snapshot", "verify", "--deep", &kept]);
        assert!(o.status.success(), "{variant}: {}", stderr(&o));
        let target = env.path().join("restored");
        env.restore_ok(&kept, &target, &[]);
        assert_same_tree(&env.src(), &restored(&target, &env.src()));
    }
}
