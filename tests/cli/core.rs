//! Backup and restore (issue 2): round trips, incremental runs, dedup,
//! partial and rescue restores, bad keys, damage, failures, leaks.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::tree::{assert_same_tree, populate_all_kinds, random_bytes};
use crate::util::{self, Backend, Env, figure, stderr};

/// Where the source tree lands under a restore target.
pub fn restored(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

both!(round_trip_all_kinds, |b| {
    let env = Env::new(b);
    let mut env = env;
    env.extra = vec!["blob_size_limit = 1MiB".into(), "chunk_size = 64KiB".into()];
    populate_all_kinds(&env.src());
    let out = env.create();
    assert!(figure(&out, "blobs (") >= 5, "{out}");
    assert_eq!(env.snapshot_ids().len(), 1);
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    let dest = restored(&target, &env.src());
    assert_same_tree(&env.src(), &dest);
    // Holes stay holes: 20 MiB with 4 KiB of data.
    let m = fs::metadata(dest.join("sparse.img")).unwrap();
    assert_eq!(m.len(), 20 << 20);
    assert!(
        m.blocks() * 512 < (1 << 20),
        "sparse file takes {} blocks",
        m.blocks()
    );
    // Nothing left in the temporary directory.
    let tmp = env.index_path().parent().unwrap().join("tmp");
    assert_eq!(fs::read_dir(tmp).unwrap().count(), 0);
});

both!(unchanged_second_run_uploads_nothing, |b| {
    let env = Env::new(b);
    populate_all_kinds(&env.src());
    env.settle();
    env.create();
    let blobs = env.blob_keys();
    let out = env.create();
    assert_eq!(figure(&out, "new chunks"), 0, "{out}");
    assert_eq!(figure(&out, "files (0 B) read"), 0, "{out}");
    assert_eq!(env.blob_keys(), blobs);
    assert_eq!(env.snapshot_ids().len(), 2);
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
});

#[test]
fn back_to_back_runs_get_distinct_ordered_ids() {
    let env = Env::new(Backend::Local);
    let f = env.src().join("f.txt");
    for i in 0..4 {
        fs::write(&f, format!("version {i}")).unwrap();
        env.create();
    }
    let ids = env.snapshot_ids();
    assert_eq!(ids.len(), 4, "{ids:?}");
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique, ids, "ids are distinct");
    // Runs within one second share the time and differ by a `.N` suffix.
    let base = |id: &str| id[..=id.rfind('Z').unwrap()].to_string();
    let mut same_second = 0;
    for w in ids.windows(2) {
        if base(&w[0]) == base(&w[1]) {
            same_second += 1;
            assert!(w[1] > w[0], "{ids:?}");
        }
    }
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_eq!(
        fs::read_to_string(restored(&target, &f)).unwrap(),
        "version 3",
        "latest is the last run ({same_second} runs shared a second): {ids:?}"
    );
}

#[test]
fn rewrites_right_after_a_run_are_never_missed() {
    // Same size, same inode, rewritten within milliseconds of the last run:
    // the stat may be identical (file times tick coarsely), so a file
    // changed that shortly before a run is read again by the next one.
    let env = Env::new(Backend::Local);
    let f = env.src().join("f.bin");
    let target = env.path().join("restore");
    for i in 0..8u64 {
        let data = random_bytes(50_000, 100 + i);
        fs::write(&f, &data).unwrap();
        let out = env.create();
        assert!(out.contains(" 1 files (48.8 KiB) read"), "run {i}: {out}");
        let _ = fs::remove_dir_all(&target);
        env.restore_ok("latest", &target, &[]);
        assert_eq!(fs::read(restored(&target, &f)).unwrap(), data, "run {i}");
    }
    // Once the change is old enough, the stat is trusted again.
    env.settle();
    env.create();
    let out = env.create();
    assert_eq!(figure(&out, "files (0 B) read"), 0, "{out}");
}

#[test]
fn changed_file_uploads_only_new_chunks() {
    let mut env = Env::new(Backend::S3);
    env.extra = vec!["chunk_size = 64KiB".into()];
    let f = env.src().join("big.bin");
    let mut data = random_bytes(4_000_000, 7);
    fs::write(&f, &data).unwrap();
    fs::write(env.src().join("other.txt"), b"unchanged").unwrap();
    env.settle();
    env.create();
    data[2_000_000] ^= 0xff;
    fs::write(&f, &data).unwrap();
    util::tree::set_mtime(&f, 1_700_000_000, 0);
    let out = env.create();
    assert_eq!(figure(&out, "files ("), 2, "{out}");
    assert!(
        out.contains(" 1 files (3.8 MiB) read"),
        "only the changed file is read: {out}"
    );
    let new = figure(&out, "new chunks");
    assert!(
        (1..=3).contains(&new),
        "{new} new chunks for a one-byte change: {out}"
    );
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_eq!(fs::read(restored(&target, &f)).unwrap(), data);
}

#[test]
fn duplicated_file_adds_no_chunk() {
    let env = Env::new(Backend::Local);
    fs::write(env.src().join("a.bin"), random_bytes(1_500_000, 9)).unwrap();
    env.settle();
    env.create();
    fs::copy(env.src().join("a.bin"), env.src().join("copy-of-a.bin")).unwrap();
    let out = env.create();
    assert!(out.contains(" 1 files (1.4 MiB) read"), "{out}");
    assert_eq!(figure(&out, "new chunks"), 0, "{out}");
    assert_eq!(figure(&out, "blobs ("), 0, "{out}");
}

#[test]
fn restore_of_single_paths() {
    let env = Env::new(Backend::S3);
    populate_all_kinds(&env.src());
    env.create();
    let target = env.path().join("restore");
    let dir = env.src().join("dir");
    env.restore_ok("latest", &target, &[dir.to_str().unwrap()]);
    assert_same_tree(&dir, &restored(&target, &dir));
    assert!(!restored(&target, &env.src().join("large.bin")).exists());
    // A single file, named without the leading slash.
    let target2 = env.path().join("restore2");
    let f = env.src().join("hello.txt");
    let rel = f.to_str().unwrap().trim_start_matches('/').to_string();
    env.restore_ok("latest", &target2, &[&rel]);
    assert_eq!(fs::read(restored(&target2, &f)).unwrap(), b"hello, world\n");
    assert_eq!(
        util::tree::entries(&restored(&target2, &env.src())).len(),
        1
    );
    // A path that is not in the snapshot.
    let out = env.restore_to("latest", &env.path().join("r3"), &["/no/such/path"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/no/such/path"), "{}", stderr(&out));
}

/// A target that already holds things of the wrong kind at the restored
/// names: each is replaced (entries are created first and what is in the
/// way removed only when the name is taken), and nothing outside the target
/// is followed into. Then the same restore again, over its own result.
#[test]
fn restore_replaces_what_is_in_the_way_and_never_follows_it() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let env = Env::new(Backend::Local);
    populate_all_kinds(&env.src());
    fs::write(env.src().join("hard1"), b"linked").unwrap();
    fs::hard_link(env.src().join("hard1"), env.src().join("hard2")).unwrap();
    env.create();
    let outside = env.path().join("outside");
    fs::create_dir_all(outside.join("dir")).unwrap();
    let canary = outside.join("canary.txt");
    fs::write(&canary, b"untouched").unwrap();
    fs::set_permissions(&canary, fs::Permissions::from_mode(0o640)).unwrap();
    let target = env.path().join("restore");
    let dest = restored(&target, &env.src());
    fs::create_dir_all(&dest).unwrap();
    // One-chunk file, multi-chunk file, empty file, symlink, directory,
    // FIFO, hard link: each name taken by something else.
    symlink(&canary, dest.join("hello.txt")).unwrap();
    fs::create_dir(dest.join("large.bin")).unwrap();
    symlink(&canary, dest.join("empty")).unwrap();
    fs::write(dest.join("link-rel"), b"not a link").unwrap();
    symlink(outside.join("dir"), dest.join("dir")).unwrap();
    fs::write(dest.join("fifo"), b"not a fifo").unwrap();
    fs::write(dest.join("hard2"), b"not linked").unwrap();
    fs::write(dest.join("script.sh"), b"old").unwrap();
    fs::set_permissions(dest.join("script.sh"), fs::Permissions::from_mode(0o777)).unwrap();
    for round in 0..2 {
        env.restore_ok("latest", &target, &[]);
        assert_same_tree(&env.src(), &dest);
        assert_eq!(fs::read(&canary).unwrap(), b"untouched", "round {round}");
        let m = fs::metadata(&canary).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o640, "round {round}");
        assert_eq!(fs::read_dir(outside.join("dir")).unwrap().count(), 0);
        let (a, b) = (
            fs::metadata(dest.join("hard1")).unwrap(),
            fs::metadata(dest.join("hard2")).unwrap(),
        );
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()), "round {round}");
    }
}

#[test]
fn restore_with_no_config_file() {
    let env = Env::new(Backend::S3);
    populate_all_kinds(&env.src());
    env.create();
    let id = env.snapshot_ids().pop().unwrap();
    let target = env.path().join("rescue");
    let key_file = env.path().join("identity.txt");
    fs::write(&key_file, format!("# a key\n{}\n", env.identity)).unwrap();
    // The rescue system: store and credentials from the environment, the key
    // from a file, no config, no index, an empty HOME.
    let out = Command::new(util::bin())
        .env_clear()
        .env("HOME", "/nonexistent")
        .env("VAULTIK_STORE", env.store_spec())
        .env("VAULTIK_S3_ENDPOINT", &env.endpoint)
        .env("AWS_ACCESS_KEY_ID", util::ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", util::SECRET)
        .args([
            "restore",
            &id,
            "--target",
            target.to_str().unwrap(),
            "--identity",
        ])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    // The same with flags and VAULTIK_PRIVATE_KEY, listing first.
    let list = Command::new(util::bin())
        .env_clear()
        .env("AWS_ACCESS_KEY_ID", util::ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", util::SECRET)
        .args([
            "--store",
            &env.store_spec(),
            "--endpoint",
            &env.endpoint,
            "snapshot",
            "list",
        ])
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(String::from_utf8_lossy(&list.stdout).contains(&id));
    let target2 = env.path().join("rescue2");
    let out = Command::new(util::bin())
        .env_clear()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .env("AWS_ACCESS_KEY_ID", util::ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", util::SECRET)
        .args(["restore", "latest", "--target", target2.to_str().unwrap()])
        .args(["--store", &env.store_spec(), "--endpoint", &env.endpoint])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&env.src(), &restored(&target2, &env.src()));
}

#[test]
fn wrong_key_is_a_clear_error() {
    let env = Env::new(Backend::S3);
    fs::write(env.src().join("f.txt"), b"data").unwrap();
    env.create();
    let other = Env::new(Backend::Local);
    let target = env.path().join("restore");
    let out = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &other.identity)
        .args(["restore", "latest", "--target", target.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("does not match"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!target.join(env.src().strip_prefix("/").unwrap()).exists());
    // A malformed key is named as such.
    let out = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", "AGE-SECRET-KEY-1NOTAKEY")
        .args(["restore", "latest", "--target", target.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("VAULTIK_PRIVATE_KEY"),
        "{}",
        stderr(&out)
    );
    // No key at all.
    let out = env.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("VAULTIK_PRIVATE_KEY"),
        "{}",
        stderr(&out)
    );
}

both!(corrupted_blob_is_named_and_not_restored, |b| {
    let env = Env::new(b);
    fs::write(env.src().join("victim.bin"), random_bytes(3_000_000, 11)).unwrap();
    fs::write(env.src().join("bystander.txt"), b"fine").unwrap();
    env.create();
    let blob = env.blob_keys();
    assert_eq!(blob.len(), 1);
    let path = env
        .store_dir()
        .join(if b == Backend::S3 { "host1/" } else { "" })
        .join(&blob[0]);
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let target = env.path().join("restore");
    let out = env.restore_to("latest", &target, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("victim.bin"), "{err}");
    assert!(!restored(&target, &env.src()).join("victim.bin").exists());
});

#[test]
fn failed_upload_then_rerun_completes() {
    let env = Env::new(Backend::S3);
    populate_all_kinds(&env.src());
    env.write_config();
    let out = env
        .cmd()
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        .args(["snapshot", "create"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("403") || err.contains("Signature"), "{err}");
    assert!(env.snapshot_ids().is_empty());
    let out = env.create();
    assert!(figure(&out, "new chunks") > 0);
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn killed_run_then_rerun_completes() {
    let mut env = Env::new(Backend::S3);
    env.extra = vec![
        "blob_size_limit = 1MiB".into(),
        "chunk_size = 256KiB".into(),
    ];
    for i in 0..40 {
        fs::write(
            env.src().join(format!("f{i:02}.bin")),
            random_bytes(1_000_000, 100 + i),
        )
        .unwrap();
    }
    env.write_config();
    let mut child = env
        .cmd()
        .args(["snapshot", "create"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while env.blob_keys().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "no blob appeared");
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the run finished before it was killed"
    );
    assert!(
        env.snapshot_ids().is_empty(),
        "a killed run left a snapshot"
    );
    // The index never points at a blob that is not in the bucket.
    let blobs = env.blob_keys();
    for k in &env.index_blob_keys() {
        assert!(
            blobs.contains(k),
            "index names {k}, which is not in the bucket"
        );
    }
    env.create();
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

both!(store_holds_no_plaintext, |b| {
    let env = Env::new(b);
    let canary_content = "CANARY-CONTENT-4d1f9a-".repeat(2000);
    fs::create_dir_all(env.src().join("secret-dir-7c2e")).unwrap();
    fs::write(
        env.src().join("secret-dir-7c2e/canary-name-91b2.txt"),
        &canary_content,
    )
    .unwrap();
    fs::write(env.src().join("small-canary-5e8d"), b"SMALL-CANARY-5e8d").unwrap();
    env.create();
    let scratch = env.path().file_name().unwrap().as_encoded_bytes().to_vec();
    let needles: [&[u8]; 6] = [
        b"CANARY-CONTENT-4d1f9a",
        b"canary-name-91b2",
        b"secret-dir-7c2e",
        b"small-canary-5e8d",
        b"SMALL-CANARY-5e8d",
        &scratch,
    ];
    let objects = env.objects();
    assert!(objects.len() >= 3);
    for (key, data) in &objects {
        for n in needles {
            assert!(
                !data.windows(n.len()).any(|w| w == n),
                "{} found in object {key}",
                String::from_utf8_lossy(n)
            );
            assert!(!key.contains(std::str::from_utf8(n).unwrap()), "{key}");
        }
    }
});

#[test]
fn put_requests_carry_content_length() {
    let mut env = Env::new(Backend::S3);
    let proxy = util::proxy::start(&env.endpoint);
    env.endpoint = proxy.endpoint.clone();
    env.extra = vec!["blob_size_limit = 1MiB".into()];
    fs::write(env.src().join("a.bin"), random_bytes(3_000_000, 5)).unwrap();
    fs::write(env.src().join("b.txt"), b"small").unwrap();
    env.create();
    let reqs = proxy.requests.lock().unwrap().clone();
    let puts: Vec<_> = reqs.iter().filter(|r| r.method == "PUT").collect();
    assert!(puts.len() >= 4, "{} PUTs", puts.len());
    for p in &puts {
        assert!(
            p.header("content-length").is_some(),
            "PUT {} without Content-Length",
            p.target
        );
        assert!(
            p.header("transfer-encoding").is_none(),
            "PUT {} is chunked",
            p.target
        );
    }
}

/// A file this process cannot read: as root, a write-only sysfs attribute
/// (root bypasses permission bits); otherwise a mode-000 file.
pub fn unreadable_file(env: &Env) -> PathBuf {
    if unsafe { libc::geteuid() } == 0 {
        let p = PathBuf::from("/sys/bus/pci/rescan");
        assert!(
            fs::File::open(&p).is_err(),
            "{} is readable here; the test needs an unreadable file",
            p.display()
        );
        p
    } else {
        let p = env.path().join("unreadable");
        fs::write(&p, b"x").unwrap();
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
        p
    }
}

#[test]
fn unreadable_files_fail_unless_skipped() {
    let mut env = Env::new(Backend::S3);
    fs::write(env.src().join("good.txt"), b"good").unwrap();
    let bad = unreadable_file(&env);
    env.snapshots = vec![("data".into(), vec![env.src(), bad.clone()], vec![])];
    env.write_config();
    let out = env.run(&["snapshot", "create"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(bad.to_str().unwrap()),
        "{}",
        stderr(&out)
    );
    assert!(env.snapshot_ids().is_empty());
    let out = env.run(&["snapshot", "create", "--skip-errors"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(bad.to_str().unwrap()),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.snapshot_ids().len(), 1);
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn excludes_and_named_snapshots() {
    let mut env = Env::new(Backend::Local);
    let a = env.path().join("a");
    let b = env.path().join("b");
    for d in [&a, &b] {
        fs::create_dir_all(d.join("cache")).unwrap();
        fs::write(d.join("keep.txt"), b"keep").unwrap();
        fs::write(d.join("junk.tmp"), b"junk").unwrap();
        fs::write(d.join("app.log"), b"log").unwrap();
        fs::write(d.join("cache/x"), b"cached").unwrap();
    }
    env.extra = vec!["exclude = *.tmp".into()];
    let cache = format!("{}/cache", a.display());
    env.snapshots = vec![
        ("alpha".into(), vec![a.clone()], vec!["*.log".into(), cache]),
        ("beta".into(), vec![b.clone()], vec![]),
    ];
    env.write_config();
    env.ok(&["snapshot", "create", "alpha"]);
    let ids = env.snapshot_ids();
    assert_eq!(ids.len(), 1);
    assert!(ids[0].starts_with("testhost_alpha_"), "{ids:?}");
    let target = env.path().join("restore");
    env.restore_ok(&ids[0], &target, &[]);
    let got = util::tree::entries(&restored(&target, &a));
    assert_eq!(got, vec![PathBuf::from("keep.txt")]);
    env.ok(&["snapshot", "create"]);
    assert_eq!(env.snapshot_ids().len(), 3);
    let out = env.run(&["snapshot", "create", "gamma"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("gamma"), "{}", stderr(&out));
}

#[test]
fn help_version_and_usage_errors() {
    let env = Env::new(Backend::Local);
    for args in [
        &["--help"][..],
        &["help", "restore"],
        &["snapshot", "create", "--help"],
        &["--version"],
    ] {
        // No config exists: help must not need one.
        let out = env
            .cmd()
            .env("VAULTIK_CONFIG", "/nonexistent")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
    let out = env.run(&["snapshot", "create", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--frobnicate"));
    assert_eq!(stderr(&out).lines().count(), 1);
    let out = env.run(&["dance"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("dance"));
    fs::write(
        env.config_path(),
        "# a config with a bad size\nchunk_size = huge\n",
    )
    .unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert_eq!(out.status.code(), Some(2));
    let expected = format!("{}:2: `chunk_size`", env.config_path().display());
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
    let out = env.run(&["restore", "nonexistent-id", "--target", "/tmp/x"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unknown_snapshot_is_a_clear_error() {
    let env = Env::new(Backend::S3);
    fs::write(env.src().join("f"), b"x").unwrap();
    env.create();
    let out = env.restore_to(
        "testhost_data_1999-01-01T000000Z",
        &env.path().join("r"),
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not in the store"),
        "{}",
        stderr(&out)
    );
}

/// `tests/bench.sh --quick ARGS` with this build: what it printed, once it
/// succeeded.
fn quick_bench(args: &[&str]) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("tests/bench.sh"))
        .arg("--quick")
        .args(args)
        .env("VAULTIK_BIN", util::bin())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    text
}

/// The quick version of tests/bench.sh: both tools back up, change,
/// restore (checked with diff -r) and fetch one file, and the table prints.
#[test]
fn benchmark_smoke() {
    let text = quick_bench(&["--datasets", "share"]);
    assert!(text.contains("| share | vaultik |"), "{text}");
    assert!(text.contains("| share | restic |"), "{text}");
    assert!(text.contains("ratios peer/vaultik"), "{text}");
    assert!(text.contains("of the pipeline limit"), "{text}");
}

/// The quick version of the many-files benchmark: two generated trees, both
/// tools, the growth from one size to the next, and the file system's floor.
#[test]
fn benchmark_files_smoke() {
    let text = quick_bench(&["--files", "300 600"]);
    assert!(text.contains("| 600 | vaultik |"), "{text}");
    assert!(text.contains("| 600 | restic |"), "{text}");
    assert!(text.contains("growth from 300 to 600 files"), "{text}");
    for n in ["300", "600"] {
        let line = text
            .lines()
            .find(|l| {
                l.trim_start()
                    .starts_with(&format!("{n} files: read every file"))
            })
            .unwrap_or_else(|| panic!("no floor for {n} files in\n{text}"));
        assert!(line.contains("create and write every file"), "{line}");
        assert!(line.contains("restic's restore / 3"), "{line}");
    }
}

// Big files are cut on one thread and compressed on all (issue 34), while
// the other workers read small files of the same batch: everything comes
// back, a big file's chunks lie in its blobs in file order (one chunk
// after the other), and a deep verify reads them all.
both!(big_files_among_many_small_ones_round_trip, |b| {
    let mut env = Env::new(b);
    env.extra = vec!["chunk_size = 64KiB".into(), "blob_size_limit = 4MiB".into()];
    for i in 0..3u64 {
        fs::write(
            env.src().join(format!("big{i}")),
            random_bytes((6 << 20) + i as usize * 12345, 900 + i),
        )
        .unwrap();
    }
    fs::create_dir_all(env.src().join("small")).unwrap();
    for i in 0..400u64 {
        fs::write(
            env.src().join(format!("small/{i:03}")),
            random_bytes(500 + (i as usize * 97) % 9000, 2000 + i),
        )
        .unwrap();
    }
    env.write_config();
    let out = env.run(&["snapshot", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let target = env.path().join("restored");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    let out = env.run_with_key(&["snapshot", "verify", "--deep", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // In file order: each big file's chunks, located in the metadata, at
    // rising offsets within each blob.
    let store = vaultik::store::LocalStore::open(
        &match b {
            Backend::Local => env.store_dir(),
            _ => env.store_dir().join("host1"),
        },
        false,
    )
    .unwrap();
    let identity = <age::x25519::Identity as std::str::FromStr>::from_str(&env.identity).unwrap();
    let id = env.snapshot_ids().pop().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let conn = vaultik::metadata::open(&store, &id, &[identity], scratch.path(), &[]).unwrap();
    for i in 0..3 {
        let path = env.src().join(format!("big{i}"));
        let list: Vec<u8> = conn
            .query_row(
                "SELECT chunks FROM entries WHERE path = ?1",
                [path.to_str().unwrap().as_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        let mut last: Option<(i64, i64)> = None;
        for c in list.chunks(32) {
            let (blob, offset): (i64, i64) = conn
                .query_row("SELECT blob, offset FROM chunks WHERE id = ?1", [c], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap();
            if let Some((b0, o0)) = last {
                assert!(
                    b0 != blob || offset > o0,
                    "big{i}: chunks out of file order"
                );
            }
            last = Some((blob, offset));
        }
    }
});
