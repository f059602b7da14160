//! Operating it (issue 3): verify, purge, prune, remove, store info, cron
//! mode, the run lock, progress and request accounting.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use crate::core::restored;
use crate::util::tree::{assert_same_tree, populate_all_kinds, random_bytes};
use crate::util::{self, Backend, Env, figure, host_config, run_as, stderr};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(o), stderr(o)))
}

/// The file holding a stored object.
fn object_path(env: &Env, key: &str) -> PathBuf {
    match env.backend {
        Backend::S3 | Backend::Moto | Backend::Iam => env.store_dir().join("host1").join(key),
        Backend::Local => env.store_dir().join(key),
    }
}

/// Blob keys a snapshot's manifest lists.
fn manifest_blobs(env: &Env, id: &str) -> Vec<String> {
    let out = env.run(&["snapshot", "verify", id, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key = format!("metadata/{id}/manifest.json.zst");
    let data = fs::read(object_path(env, &key)).unwrap();
    let text = zstd::stream::decode_all(&data[..]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
    v["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["key"].as_str().unwrap().to_string())
        .collect()
}

both!(verify_finds_missing_and_corrupt_blobs, |b| {
    let mut env = Env::new(b);
    env.extra = vec!["blob_size_limit = 1MiB".into()];
    populate_all_kinds(&env.src());
    env.create();
    let out = env.run(&["snapshot", "verify", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(": ok"), "{}", stdout(&out));
    // Deep, with the key: every chunk checks out.
    let out = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(["snapshot", "verify", "latest", "--deep", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert!(v["chunks_checked"].as_u64().unwrap() > 10);
    assert!(v["requests"]["get"].as_u64().unwrap() > 0);

    let id = env.snapshot_ids().pop().unwrap();
    let blobs = manifest_blobs(&env, &id);
    assert!(blobs.len() >= 3);
    // Flip one byte in the middle of one blob: same size, so only --deep sees it.
    let victim = object_path(&env, &blobs[0]);
    let mut bytes = fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(&victim, &bytes).unwrap();
    let out = env.run(&["snapshot", "verify", &id]);
    assert!(
        out.status.success(),
        "shallow verify cannot see a flipped bit"
    );
    let out = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(["snapshot", "verify", &id, "--deep"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    assert!(text.contains(&format!("corrupt: {}", blobs[0])), "{text}");
    assert!(text.contains("affects"), "{text}");
    assert!(
        text.contains(env.src().to_str().unwrap()),
        "names the affected files: {text}"
    );
    // --deep without a key asks for one, and does nothing else.
    let out = env.run(&["snapshot", "verify", &id, "--deep"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("VAULTIK_PRIVATE_KEY"),
        "{}",
        stderr(&out)
    );

    // Delete another blob: the keyless check names it.
    fs::remove_file(object_path(&env, &blobs[1])).unwrap();
    let out = env.run(&["snapshot", "verify", &id, "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let v = json(&out);
    assert_eq!(v["ok"], false);
    let problems = v["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0]["kind"], "missing");
    assert_eq!(problems[0]["key"], blobs[1].as_str());
});

#[test]
fn purge_keeps_latest_and_collects_garbage_after_grace() {
    let mut env = Env::new(Backend::S3);
    env.extra = vec!["grace_period = 0s".into()];
    for i in 0..3u64 {
        fs::write(
            env.src().join(format!("gen{i}.bin")),
            random_bytes(400_000, 50 + i),
        )
        .unwrap();
        if i > 0 {
            fs::remove_file(env.src().join(format!("gen{}.bin", i - 1))).unwrap();
        }
        env.create();
    }
    let ids = env.snapshot_ids();
    assert_eq!(ids.len(), 3);
    let before = env.blob_keys();
    // Without a terminal and without --force, purge refuses and removes nothing.
    let out = env.run(&["snapshot", "purge", "--keep-latest", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    // A dry run shows the plan and removes nothing.
    let out = env.run(&[
        "snapshot",
        "purge",
        "--keep-latest",
        "1",
        "--dry-run",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["removed_snapshots"].as_array().unwrap().len(), 2);
    assert!(v["deleted_objects"].as_u64().unwrap() >= 2);
    assert_eq!(env.snapshot_ids().len(), 3);
    assert_eq!(env.blob_keys(), before);

    let out = env.run(&["snapshot", "purge", "--keep-latest", "1", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("removed 2 snapshot(s)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(env.snapshot_ids(), vec![ids[2].clone()]);
    // Only the kept snapshot's blobs remain, and it restores and verifies.
    let kept = manifest_blobs(&env, &ids[2]);
    let mut now = env.blob_keys();
    now.sort();
    let mut kept_sorted = kept.clone();
    kept_sorted.sort();
    assert_eq!(now, kept_sorted);
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    // The index forgot the deleted blobs: bringing gen0 back uploads it again.
    fs::write(env.src().join("gen0.bin"), random_bytes(400_000, 50)).unwrap();
    let out = env.create();
    assert!(figure(&out, "new chunks") >= 1, "{out}");
    let out = env.run_with_key(&["snapshot", "verify", "latest", "--deep"]);
    assert!(out.status.success(), "{}", stdout(&out));
}

#[test]
fn purge_never_deletes_young_blobs() {
    let env = Env::new(Backend::S3);
    fs::write(env.src().join("a.bin"), random_bytes(200_000, 1)).unwrap();
    env.create();
    fs::remove_file(env.src().join("a.bin")).unwrap();
    fs::write(env.src().join("b.bin"), random_bytes(200_000, 2)).unwrap();
    env.create();
    let before = env.blob_keys();
    // --older-than 0s removes every snapshot but the newest of its name.
    let out = env.run(&[
        "snapshot",
        "purge",
        "--older-than",
        "0s",
        "--force",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["removed_snapshots"].as_array().unwrap().len(), 1);
    assert_eq!(v["deleted_objects"], 0, "{v}");
    assert!(v["young_objects"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(env.snapshot_ids().len(), 1);
    assert_eq!(
        env.blob_keys(),
        before,
        "the default 24h grace period keeps new blobs"
    );
}

#[test]
fn backup_after_a_purge_from_another_host_reuploads_what_it_must() {
    let mut env = Env::new(Backend::S3);
    env.extra = vec!["chunk_size = 64KiB".into()];
    let a = env.src().join("a.bin");
    let data = random_bytes(600_000, 77);
    fs::write(&a, &data).unwrap();
    env.create();
    fs::remove_file(&a).unwrap();
    fs::write(env.src().join("other.txt"), b"other").unwrap();
    env.create();
    // "Host 2": its own index, grace 0, purges from the same bucket.
    let conf2 = env.path().join("host2.conf");
    let text = fs::read_to_string(env.config_path())
        .unwrap()
        .replace(
            env.index_path().to_str().unwrap(),
            env.path().join("host2/index.sqlite").to_str().unwrap(),
        )
        .replace(
            "hostname = testhost",
            "hostname = testhost\ngrace_period = 0s",
        );
    fs::write(&conf2, text).unwrap();
    let out = env
        .cmd()
        .env("VAULTIK_CONFIG", &conf2)
        .args(["snapshot", "purge", "--keep-latest", "1", "--force"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("removed 1 snapshot(s)"),
        "{}",
        stdout(&out)
    );
    // Host 1's index still believes a.bin's chunks are stored. Bring the file
    // back: the backup must notice the purge and upload them again.
    fs::write(&a, &data).unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("gone from the store"),
        "{}",
        stderr(&out)
    );
    assert!(figure(&stdout(&out), "new chunks") >= 5, "{}", stdout(&out));
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

// A run where nothing changed copies the last snapshot's chunk table
// instead of locating every chunk again, but only while the index still
// knows every blob it names: after the blobs are deleted behind its back,
// the same chunks are stored again in new blobs, and the table must point
// at those. Every snapshot restores whole and verifies deep.
both!(
    the_last_chunk_table_is_reused_and_patched_only_while_its_blobs_are_known,
    |b| {
        let mut env = Env::new(b);
        env.extra = vec!["chunk_size = 64KiB".into()];
        populate_all_kinds(&env.src());
        fs::write(env.src().join("big.bin"), random_bytes(700_000, 91)).unwrap();
        env.write_config();
        let deep_ok = |env: &Env, id: &str| {
            let out = env
                .cmd()
                .env("VAULTIK_PRIVATE_KEY", &env.identity)
                .args(["snapshot", "verify", id, "--deep"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{id}: {}", stderr(&out));
            let target = env.path().join(format!("restore-{id}"));
            env.restore_ok(id, &target, &[]);
            assert_same_tree(&env.src(), &restored(&target, &env.src()));
        };
        env.create();
        let first = env.snapshot_ids().pop().unwrap();
        let first_blobs = manifest_blobs(&env, &first);
        // Nothing changed: the table is the last one's.
        env.create();
        let second = env.snapshot_ids().pop().unwrap();
        assert_ne!(first, second);
        assert_eq!(manifest_blobs(&env, &second), first_blobs);
        deep_ok(&env, &second);
        // Every blob deleted behind the index's back (a purge elsewhere, a
        // hand at the bucket): the next run, with nothing changed, reads
        // everything again into new blobs, and its table names those.
        for key in env.blob_keys() {
            fs::remove_file(object_path(&env, &key)).unwrap();
        }
        let out = env.run(&["snapshot", "create"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            figure(&stdout(&out), "new chunks") >= 10,
            "{}",
            stdout(&out)
        );
        let third = env.snapshot_ids().pop().unwrap();
        let third_blobs = manifest_blobs(&env, &third);
        assert!(
            third_blobs.iter().all(|k| !first_blobs.contains(k)),
            "{third_blobs:?} names a deleted blob of {first_blobs:?}"
        );
        deep_ok(&env, &third);
        // And the run after that reuses the new table.
        env.create();
        let fourth = env.snapshot_ids().pop().unwrap();
        assert_eq!(manifest_blobs(&env, &fourth), third_blobs);
        deep_ok(&env, &fourth);
        // A file added: the table is patched with its chunks and their blob.
        let added = env.src().join("added.bin");
        fs::write(&added, random_bytes(300_000, 92)).unwrap();
        env.create();
        let fifth = env.snapshot_ids().pop().unwrap();
        let fifth_blobs = manifest_blobs(&env, &fifth);
        assert_eq!(fifth_blobs.len(), third_blobs.len() + 1, "{fifth_blobs:?}");
        assert!(third_blobs.iter().all(|k| fifth_blobs.contains(k)));
        deep_ok(&env, &fifth);
        // Removed again: its chunks leave the table, and its blob the manifest.
        fs::remove_file(&added).unwrap();
        env.create();
        let sixth = env.snapshot_ids().pop().unwrap();
        assert_eq!(manifest_blobs(&env, &sixth), third_blobs);
        deep_ok(&env, &sixth);
    }
);

both!(remove_then_prune, |b| {
    let mut env = Env::new(b);
    env.extra = vec!["grace_period = 0s".into()];
    fs::write(env.src().join("one.bin"), random_bytes(300_000, 3)).unwrap();
    env.create();
    let first = env.snapshot_ids().pop().unwrap();
    fs::write(env.src().join("one.bin"), random_bytes(300_000, 4)).unwrap();
    env.create();
    assert_eq!(env.snapshot_ids().len(), 2);
    let out = env.run(&["snapshot", "remove", &first]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.snapshot_ids().len(), 1);
    let blobs = env.blob_keys().len();
    let out = env.run(&["prune", "--dry-run"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("would delete 1 unreferenced object(s)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(env.blob_keys().len(), blobs);
    let out = env.run(&["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["deleted_objects"], 1);
    assert_eq!(env.blob_keys().len(), blobs - 1);
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    // Removing an unknown snapshot is a clear error.
    let out = env.run(&["snapshot", "remove", "nope_x_2000-01-01T000000Z"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nope_x_2000-01-01T000000Z"));
});

#[test]
fn store_info_counts() {
    let env = Env::new(Backend::S3);
    fs::write(env.src().join("x.bin"), random_bytes(100_000, 5)).unwrap();
    env.create();
    fs::write(env.src().join("x.bin"), random_bytes(100_000, 6)).unwrap();
    env.create();
    let first = env.snapshot_ids()[0].clone();
    env.ok(&["snapshot", "remove", &first]);
    let out = env.run(&["store", "info", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["snapshots"], 1);
    assert_eq!(v["blobs"], 2);
    assert_eq!(v["referenced_blobs"], 1);
    assert_eq!(v["unreferenced_blobs"], 1);
    assert_eq!(v["hosts"][0], "testhost");
    assert!(v["store"].as_str().unwrap().contains(&env.bucket));
    let out = env.run(&["store", "info"]);
    assert!(stdout(&out).contains("unreferenced: 1"), "{}", stdout(&out));
    assert!(stdout(&out).contains("requests:"), "{}", stdout(&out));
}

#[test]
fn cron_mode_is_silent_unless_something_is_wrong() {
    let mut env = Env::new(Backend::S3);
    fs::write(env.src().join("f.txt"), b"data").unwrap();
    let out = env.run(&["snapshot", "create", "--cron"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    // A skipped file: a warning on stderr and exit code 1.
    let bad = PathBuf::from("/sys/bus/pci/rescan");
    if unsafe { libc::geteuid() } == 0 && fs::File::open(&bad).is_err() {
        env.snapshots = vec![("data".into(), vec![env.src(), bad.clone()], vec![])];
        env.write_config();
        let out = env.run(&["snapshot", "create", "--cron", "--skip-errors"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty(), "{}", stdout(&out));
        assert!(
            stderr(&out).contains(bad.to_str().unwrap()),
            "{}",
            stderr(&out)
        );
    }
    // Errors are printed: a store that refuses us.
    let out = env
        .cmd()
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .args(["snapshot", "create", "--cron"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!out.stderr.is_empty());
}

#[test]
fn create_with_prune_applies_retention() {
    let mut env = Env::new(Backend::Local);
    env.extra = vec!["keep_latest = 2".into(), "grace_period = 0s".into()];
    for i in 0..4u64 {
        fs::write(env.src().join("f.bin"), random_bytes(100_000, 10 + i)).unwrap();
        let out = env.run(&["snapshot", "create", "--cron", "--prune"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    assert_eq!(env.snapshot_ids().len(), 2);
    assert_eq!(
        env.blob_keys().len(),
        2,
        "the purged snapshots' blobs were collected"
    );
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    // --prune without a retention policy is a configuration error.
    let env2 = Env::new(Backend::Local);
    let out = env2.run(&["snapshot", "create", "--prune"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("keep_latest"), "{}", stderr(&out));
}

#[test]
fn a_second_concurrent_run_is_refused_and_a_stale_lock_is_taken_over() {
    let env = Env::new(Backend::Local);
    fs::write(env.src().join("f"), b"x").unwrap();
    env.create();
    let lock_path = PathBuf::from(format!("{}.lock", env.index_path().display()));
    // Hold the lock as a live run would.
    let held = fs::OpenOptions::new().write(true).open(&lock_path).unwrap();
    assert_eq!(
        unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    fs::write(&lock_path, format!("{}\n", std::process::id())).unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("another vaultik run"), "{err}");
    assert!(err.contains(&std::process::id().to_string()), "{err}");
    drop(held);
    // A lock file left by a dead process (pid in it, nobody holding it).
    fs::write(&lock_path, "999999\n").unwrap();
    env.create();
    // A real concurrent run: start one on a large tree and race a second.
    for i in 0..30 {
        fs::write(
            env.src().join(format!("big{i}")),
            random_bytes(1_000_000, i),
        )
        .unwrap();
    }
    // Its output is captured, not let through into the test runner's.
    let first = env
        .cmd()
        .args(["snapshot", "create"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let second = env.run(&["snapshot", "create"]);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("requests:"),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    if second.status.success() {
        // The first finished before the second started: nothing to race.
        return;
    }
    assert!(
        stderr(&second).contains("another vaultik run"),
        "{}",
        stderr(&second)
    );
}

#[test]
fn progress_on_a_terminal_only() {
    let env = Env::new(Backend::Local);
    for i in 0..20 {
        fs::write(env.src().join(format!("f{i}")), random_bytes(200_000, i)).unwrap();
    }
    env.write_config();
    // `script` gives the command a terminal.
    let cmdline = format!(
        "VAULTIK_CONFIG={} HOME={} {} snapshot create",
        env.config_path().display(),
        env.path().display(),
        util::bin()
    );
    let out = Command::new("script")
        .args(["-qec", &cmdline, "/dev/null"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("20 files") || text.contains("/20 files"),
        "{text}"
    );
    assert!(text.contains("ETA"), "{text}");
    assert!(
        text.contains('\r'),
        "the line is redrawn in place: {text:?}"
    );
    // Not a terminal: no progress at all.
    fs::write(env.src().join("new"), random_bytes(100_000, 99)).unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

/// The summary line's request counts, in order PUT GET HEAD LIST DELETE.
fn counts(summary: &str) -> [u64; 5] {
    let line = summary
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap();
    let mut out = [0; 5];
    for (i, kind) in ["PUT", "GET", "HEAD", "LIST", "DELETE"].iter().enumerate() {
        out[i] = figure(line, kind);
    }
    out
}

#[test]
fn request_counts_match_what_the_server_saw() {
    let mut env = Env::new(Backend::S3);
    let proxy = util::proxy::start(&env.endpoint);
    env.endpoint = proxy.endpoint.clone();
    env.extra = vec!["blob_size_limit = 1MiB".into(), "grace_period = 0s".into()];
    fs::write(env.src().join("a.bin"), random_bytes(2_500_000, 1)).unwrap();
    env.create();
    fs::write(env.src().join("a.bin"), random_bytes(2_500_000, 2)).unwrap();
    let mut seen = proxy.requests.lock().unwrap().len();
    let steps: Vec<Vec<&str>> = vec![
        vec!["snapshot", "create"],
        vec!["snapshot", "list"],
        vec!["store", "info"],
        vec!["snapshot", "verify", "latest"],
        vec!["snapshot", "purge", "--keep-latest", "1", "--force"],
        vec!["prune"],
    ];
    for args in steps {
        let out = env.run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let reported = counts(&stdout(&out));
        let reqs = proxy.requests.lock().unwrap().clone();
        let new = &reqs[seen..];
        seen = reqs.len();
        let mut server = [0u64; 5];
        let mut sent = 0u64;
        for r in new {
            let query = r.target.split_once('?').map_or("", |(_, q)| q);
            let has = |p: &str| {
                query
                    .split('&')
                    .any(|q| q == p || q.starts_with(&format!("{p}=")))
            };
            let i = match r.method.as_str() {
                "PUT" => 0,
                "GET" if has("list-type") || has("versions") => 3,
                // The bucket's configuration: counted as CONFIG.
                "GET" if has("versioning") || has("object-lock") => continue,
                "GET" => 1,
                "HEAD" => 2,
                "DELETE" => 4,
                "POST" if r.target.contains("delete") => 4,
                other => panic!("unexpected {other} {}", r.target),
            };
            server[i] += 1;
            sent += r
                .header("content-length")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        assert_eq!(
            reported, server,
            "{args:?}: reported {reported:?}, server saw {server:?}"
        );
        let line = stdout(&out);
        let line = line.lines().find(|l| l.starts_with("requests:")).unwrap();
        let sent_reported = line
            .split("sent ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap();
        assert_eq!(sent_reported, util::human(sent), "{args:?}: {line}");
    }
}

/// How many blobs are marked (`gc/marked/<time>/<blob hash>` objects).
fn marked(env: &Env) -> usize {
    env.objects()
        .iter()
        .filter(|(k, _)| k.starts_with("gc/marked/"))
        .count()
}

#[test]
fn purge_marks_old_blobs_first_and_backups_never_reuse_marked_ones() {
    let mut env = Env::new(Backend::S3);
    env.extra = vec!["chunk_size = 64KiB".into(), "grace_period = 2s".into()];
    let a = env.src().join("a.bin");
    let data = random_bytes(600_000, 78);
    fs::write(&a, &data).unwrap();
    env.create();
    fs::remove_file(&a).unwrap();
    fs::write(env.src().join("other.txt"), b"other").unwrap();
    env.create();
    // Old enough to be collected.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let purger = host_config(&env, "purger", &env.path().join("nothing"));
    let out = run_as(
        &env,
        &purger,
        &["snapshot", "purge", "--keep-latest", "1", "--force"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("removed 1 snapshot(s)"), "{text}");
    assert!(text.contains("deleted 0 unreferenced"), "{text}");
    assert!(text.contains("marked 1 unreferenced blob(s)"), "{text}");
    let blobs_before = env.blob_keys();
    assert_eq!(marked(&env), 1, "one blob marked, named in a key");

    // This host's index knows the marked blob: it must not reuse it.
    fs::write(&a, &data).unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("marked for deletion"),
        "{}",
        stderr(&out)
    );
    assert!(figure(&stdout(&out), "new chunks") >= 5, "{}", stdout(&out));
    let latest = env.snapshot_ids().pop().unwrap();
    let reused: Vec<String> = manifest_blobs(&env, &latest)
        .into_iter()
        .filter(|k| blobs_before.contains(k))
        .collect();

    // Too early: the mark waits. Then it is ripe: the blob goes, the mark too.
    let out = run_as(&env, &purger, &["prune"]);
    assert!(
        stdout(&out).contains("deleted 0 unreferenced"),
        "{}",
        stdout(&out)
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = run_as(&env, &purger, &["prune", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["deleted_objects"], 1, "{v}");
    assert_eq!(v["marked_objects"], 0, "{v}");
    let gone: Vec<&str> = v["deleted_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(gone.iter().all(|k| !reused.iter().any(|r| r == k)));
    assert_eq!(marked(&env), 0);
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    let out = env.run_with_key(&["snapshot", "verify", "--deep", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn two_hosts_back_up_while_a_third_purges() {
    // Host a and host b each flip their files between two versions and back
    // up in a loop, so every run reuses blobs that the purger (keep-latest,
    // in a loop, from its own host) has just made unreferenced. No run may
    // fail, and every snapshot left must pass a deep verify.
    let secs = util::setting("VAULTIK_RACE_SECONDS", 12);
    let mut env = Env::new(Backend::S3);
    env.extra = vec!["chunk_size = 64KiB".into(), "grace_period = 3s".into()];
    let hosts: Vec<(String, PathBuf, PathBuf)> = ["hosta", "hostb"]
        .iter()
        .map(|h| {
            let src = env.path().join(format!("src-{h}"));
            fs::create_dir_all(&src).unwrap();
            let conf = host_config(&env, h, &src);
            (h.to_string(), src, conf)
        })
        .collect();
    let purger = host_config(&env, "purger", &env.path().join("nothing"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let (marked, deleted) = std::thread::scope(|s| {
        for (i, (_, src, conf)) in hosts.iter().enumerate() {
            let env = &env;
            s.spawn(move || {
                let mut round = 0u64;
                while std::time::Instant::now() < deadline {
                    let v = round % 2;
                    fs::write(
                        src.join("big.bin"),
                        random_bytes(400_000, 10 * i as u64 + v),
                    )
                    .unwrap();
                    // One small file per round, replacing the last one,
                    // so blobs fall out of use.
                    if round > 0 {
                        fs::remove_file(src.join(format!("r{}.txt", round - 1))).unwrap();
                    }
                    fs::write(src.join(format!("r{round}.txt")), format!("{round}")).unwrap();
                    let out = run_as(env, conf, &["snapshot", "create"]);
                    assert!(out.status.success(), "{}", stderr(&out));
                    round += 1;
                }
            });
        }
        let (mut marked, mut deleted) = (0u64, 0u64);
        while std::time::Instant::now() < deadline {
            let out = run_as(
                &env,
                &purger,
                &[
                    "snapshot",
                    "purge",
                    "--keep-latest",
                    "1",
                    "--force",
                    "--json",
                ],
            );
            assert!(out.status.success(), "{}", stderr(&out));
            let v = json(&out);
            marked += v["marked_objects"].as_u64().unwrap();
            deleted += v["deleted_objects"].as_u64().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        (marked, deleted)
    });
    assert!(
        marked > 0 && deleted > 0,
        "marked {marked}, deleted {deleted}"
    );
    for (h, src, conf) in &hosts {
        let out = run_as(&env, conf, &["snapshot", "list", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let ids: Vec<String> = json(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .filter(|id| id.starts_with(&format!("{h}_")))
            .collect();
        assert!(!ids.is_empty());
        for id in &ids {
            let out = run_as(&env, conf, &["snapshot", "verify", "--deep", id]);
            assert!(out.status.success(), "{id}: {}", stderr(&out));
        }
        let target = env.path().join(format!("restore-{h}"));
        let out = run_as(
            &env,
            conf,
            &[
                "restore",
                ids.last().unwrap(),
                "--target",
                target.to_str().unwrap(),
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_tree(src, &restored(&target, src));
    }
}

/// Output that cannot be written is an error (a full disk: exit 2, said on
/// stderr), except a reader that went away (`| head`), which ends the
/// command quietly.
#[test]
fn output_errors_are_errors_and_a_closed_pipe_is_quiet() {
    let env = Env::new(Backend::Local);
    fs::write(env.src().join("f"), b"x").unwrap();
    env.create();
    for args in [
        &["snapshot", "list", "--json"][..],
        &["store", "info"],
        &["snapshot", "list"],
    ] {
        let out = env
            .cmd()
            .args(args)
            .stdout(fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains("cannot write the output"), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A pipe whose reader is gone before anything is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = env
        .cmd()
        .args(["snapshot", "list"])
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}
