//! `vaultik copy` (issue 33): snapshots copied to a second store without
//! any key: S3 to a directory to another S3 bucket, restored from the last
//! copy alone; an interrupted copy completed by a rerun that copies only
//! the rest, the snapshot never shown at the destination before it is all
//! there; Object Lock and storage classes at the destination; and a hostile
//! source (forged sizes, missing, symlinked or damaged blobs) refused by
//! name, with no snapshot written at the destination.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::core::restored;
use crate::util::faults::{self, Fault, rule};
use crate::util::moto;
use crate::util::tree::{assert_same_tree, copy_tree, files_under};
use crate::util::{ACCESS, Backend, Env, SECRET, figure, server, stderr};

/// A source store holding two snapshots of a few files in blobs of at
/// most 1 MiB, and the tree each one saw: a copy of the files for the
/// first, the source itself for the second.
fn source(b: Backend) -> (Env, Vec<(String, PathBuf)>) {
    let mut env = Env::new(b);
    env.extra.push("blob_size_limit = 1MiB".into());
    env.extra.push("chunk_size = 64KiB".into());
    env.random_files(8, 600_000, 33);
    fs::write(env.src().join("small.txt"), b"a small file").unwrap();
    env.write_config();
    env.settle();
    env.create();
    let mut kept = vec![];
    let first = env.snapshot_ids()[0].clone();
    let seen = env.path().join("seen-1");
    copy_tree(&env.src(), &seen);
    kept.push((first, seen));
    env.random_files(2, 500_000, 99);
    env.settle();
    env.create();
    let second = env.snapshot_ids()[1].clone();
    kept.push((second, env.src()));
    (env, kept)
}

/// `vaultik copy ARGS` with the source's config (temporary files in the
/// test's directory).
fn copy_cmd(env: &Env, args: &[&str]) -> Command {
    let tmp = env.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    let mut c = env.cmd();
    c.env("TMPDIR", &tmp).arg("copy").args(args);
    c
}

fn copy(env: &Env, args: &[&str]) -> Output {
    copy_cmd(env, args).output().unwrap()
}

fn copy_ok(env: &Env, args: &[&str]) -> String {
    let out = copy(env, args);
    assert!(
        out.status.success(),
        "copy {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A config file naming only an S3 store (for `--to-config`, or to
/// restore from it alone).
fn s3_config(env: &Env, name: &str, endpoint: &str, bucket: &str, extra: &[&str]) -> PathBuf {
    let p = env.path().join(name);
    let mut c = format!(
        "[s3]\nendpoint = {endpoint}\nbucket = {bucket}\nprefix = copy/\nregion = us-east-1\n\
         access_key_id = {ACCESS}\nsecret_access_key = {SECRET}\n"
    );
    for l in extra {
        c.push_str(l);
        c.push('\n');
    }
    fs::write(&p, c).unwrap();
    p
}

/// A new bucket on the s3s-fs server; its directory.
fn s3s_bucket(env: &Env, suffix: &str) -> (String, PathBuf) {
    let bucket = format!("{}-{suffix}", env.bucket);
    let dir = server().root.join(&bucket);
    fs::create_dir_all(&dir).unwrap();
    (bucket, dir)
}

/// Object keys under a directory store (or a bucket's `copy/` prefix).
fn keys(root: &Path) -> Vec<String> {
    files_under(root)
        .into_iter()
        .map(|p| p.strip_prefix(root).unwrap().to_str().unwrap().to_string())
        .filter(|k| !k.contains(".s3s") && !k.contains(".tmp"))
        .collect()
}

fn manifests(root: &Path) -> Vec<String> {
    keys(root)
        .into_iter()
        .filter(|k| k.ends_with("manifest.json.zst"))
        .collect()
}

/// Restore every kept snapshot with nothing but the store that `config`
/// names and compare with what the backup saw.
fn restore_all(env: &Env, config: &Path, kept: &[(String, PathBuf)]) {
    for (id, seen) in kept {
        let target = env.path().join(format!("restore-{id}"));
        let out = env
            .cmd()
            .env("VAULTIK_CONFIG", config)
            .env("VAULTIK_PRIVATE_KEY", &env.identity)
            .args(["restore", id, "--target", target.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "restore {id}: {}", stderr(&out));
        let got = restored(&target, &env.src());
        if *seen == env.src() {
            assert_same_tree(seen, &got);
        } else {
            // A copy of the files: their contents, not their times.
            let rel = |root: &Path| -> Vec<PathBuf> {
                files_under(root)
                    .into_iter()
                    .map(|p| p.strip_prefix(root).unwrap().to_path_buf())
                    .collect()
            };
            assert_eq!(rel(seen), rel(&got), "{id}");
            for f in rel(seen) {
                assert_eq!(
                    fs::read(seen.join(&f)).unwrap(),
                    fs::read(got.join(&f)).unwrap()
                );
            }
        }
    }
}

#[test]
fn s3_to_directory_to_s3_restores_identical_from_the_last_copy_alone() {
    let (env, kept) = source(Backend::S3);
    let usb = env.path().join("usb");
    let out = copy_ok(&env, &["--all", "--to", usb.to_str().unwrap()]);
    assert!(out.contains("copied 2 snapshot(s) of 2"), "{out}");
    assert!(out.contains("requests to the destination:"), "{out}");
    let blobs = env.blob_keys().len();
    assert!(blobs >= 6, "{blobs}");
    let first = figure(out.lines().next().unwrap(), "blob(s) (");
    let second = figure(out.lines().nth(1).unwrap(), "blob(s) (");
    assert_eq!(first + second, blobs as u64, "each blob copied once: {out}");
    assert!(
        figure(out.lines().nth(1).unwrap(), "already there") > 0,
        "{out}"
    );
    // The same objects, byte for byte, and the source's identity (its
    // name: its content says when it was named).
    let src_objects = env.objects();
    for (k, data) in &src_objects {
        if k.starts_with("blobs/") || k.starts_with("metadata/") {
            assert_eq!(&fs::read(usb.join(k)).unwrap(), data, "{k}");
        }
        if k.starts_with("store/1/") {
            assert!(usb.join(k).is_file(), "{k}");
        }
    }

    // Again: nothing to do.
    let again = copy_ok(&env, &["--all", "--to", usb.to_str().unwrap()]);
    assert!(again.contains("already at the destination"), "{again}");
    assert!(again.contains("copied 0 snapshot(s) of 2"), "{again}");
    let dest_line = again
        .lines()
        .find(|l| l.starts_with("requests to the destination:"))
        .unwrap();
    assert!(dest_line.contains(" 0 PUT"), "{again}");

    // From the directory to a second bucket, named by a config file of
    // its own (the global --store names the source).
    let (bucket2, dir2) = s3s_bucket(&env, "second");
    let to = s3_config(&env, "second.conf", &server().endpoint, &bucket2, &[]);
    let out = copy_ok(
        &env,
        &[
            "latest",
            kept[0].0.as_str(),
            "--store",
            usb.to_str().unwrap(),
            "--to-config",
            to.to_str().unwrap(),
        ],
    );
    assert!(out.contains("copied 2 snapshot(s) of 2"), "{out}");
    assert_eq!(manifests(&dir2.join("copy")).len(), 2);

    // Nothing of the first two stores is left: the last copy alone.
    fs::remove_dir_all(env.store_dir()).unwrap();
    fs::remove_dir_all(&usb).unwrap();
    restore_all(&env, &to, &kept);
    let out = env
        .cmd()
        .env("VAULTIK_CONFIG", &to)
        .args(["snapshot", "verify", &kept[1].0, "--checksums"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_second_bucket_is_reached_as_the_source_is() {
    let (env, kept) = source(Backend::S3);
    let (bucket, dir) = s3s_bucket(&env, "same-provider");
    let spec = format!("s3://{bucket}/copy");
    let out = copy_ok(&env, &["latest", "--host", "testhost", "--to", &spec]);
    assert!(out.contains("copied 1 snapshot(s) of 1"), "{out}");
    assert_eq!(
        manifests(&dir.join("copy")),
        [format!("metadata/{}/manifest.json.zst", kept[1].0)]
    );
    let only = s3_config(&env, "only.conf", &server().endpoint, &bucket, &[]);
    restore_all(&env, &only, &kept[1..]);
}

#[test]
fn an_interrupted_copy_is_completed_by_a_rerun_and_never_shows_a_partial_snapshot() {
    let (env, kept) = source(Backend::S3);
    let total = env.blob_keys().len();
    let (bucket2, dir2) = s3s_bucket(&env, "killed");
    let dest = dir2.join("copy");
    // Slow blob PUTs at the destination, so that the copy can be killed
    // in the middle.
    let proxy = faults::start(
        &server().endpoint,
        vec![rule(
            "PUT",
            "blobs/",
            1000,
            Fault::Slow(Duration::from_millis(300)),
        )],
    );
    let to = s3_config(&env, "killed.conf", &proxy.endpoint, &bucket2, &[]);

    // Watch the destination: whenever a manifest is there, every blob of
    // its snapshot must be, with the metadata.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, dest) = (stop.clone(), dest.clone());
        let src = env.store_dir().join("host1");
        std::thread::spawn(move || {
            let mut checked = 0;
            while !stop.load(Ordering::Relaxed) {
                for m in manifests(&dest) {
                    let id = m.split('/').nth(1).unwrap().to_string();
                    let listed: serde_json::Value = serde_json::from_slice(
                        &zstd::decode_all(&fs::read(dest.join(&m)).unwrap()[..]).unwrap(),
                    )
                    .unwrap();
                    for b in listed["blobs"].as_array().unwrap() {
                        let k = b["key"].as_str().unwrap();
                        let there = fs::metadata(dest.join(k)).map(|m| m.len()).ok();
                        assert_eq!(there, b["size"].as_u64(), "{id} shown before {k} was there");
                    }
                    let db = format!("metadata/{id}/db.zst.age");
                    assert_eq!(
                        fs::metadata(dest.join(&db)).unwrap().len(),
                        fs::metadata(src.join(&db)).unwrap().len()
                    );
                    checked += 1;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            checked
        })
    };

    let mut child = copy_cmd(&env, &["--all", "--to-config", to.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let blobs_there = || {
        keys(&dest)
            .iter()
            .filter(|k| k.starts_with("blobs/"))
            .count()
    };
    let start = Instant::now();
    while blobs_there() < 4 {
        assert!(start.elapsed() < Duration::from_secs(60), "no blob copied");
        assert!(child.try_wait().unwrap().is_none(), "the copy ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = blobs_there();
    assert!(before < total, "{before} of {total}: killed too late");
    assert!(manifests(&dest).is_empty(), "{:?}", manifests(&dest));

    proxy.set_rules(vec![]);
    let out = copy_ok(&env, &["--all", "--to-config", to.to_str().unwrap()]);
    let copied: u64 = out
        .lines()
        .filter(|l| l.contains(": copied,"))
        .map(|l| figure(l, "blob(s) ("))
        .sum();
    assert!(
        copied > 0 && copied < total as u64,
        "{copied} of {total}\n{out}"
    );
    assert!(
        copied <= (total - before) as u64 + 4,
        "only the rest copied again (at most the 4 in flight when killed): {copied} of {total}, \
         {before} there before\n{out}"
    );
    assert_eq!(blobs_there(), total);
    assert_eq!(manifests(&dest).len(), 2);
    stop.store(true, Ordering::Relaxed);
    assert!(watcher.join().unwrap() > 0, "the watcher saw the manifests");
    restore_all(&env, &to, &kept);
}

#[test]
fn a_destination_with_object_lock_gets_locked_objects_in_its_storage_class() {
    let (env, kept) = source(Backend::S3);
    let bucket = format!("{}-locked", env.bucket);
    moto::create_locked_bucket(&bucket);
    let to = s3_config(
        &env,
        "locked.conf",
        &moto::moto().endpoint,
        &bucket,
        &[
            "object_lock = compliance",
            "lock_for = 3d",
            "storage_class = STANDARD_IA",
        ],
    );
    let out = copy_ok(&env, &["--all", "--to-config", to.to_str().unwrap()]);
    assert!(out.contains("copied 2 snapshot(s) of 2"), "{out}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let listed = moto::keys(&bucket, "copy/");
    assert!(listed.len() > env.blob_keys().len(), "{listed:?}");
    for (key, class) in &listed {
        let a = moto::http("HEAD", &format!("/{bucket}/{key}"), &[], b"");
        assert_eq!(
            a.header("x-amz-object-lock-mode"),
            Some("COMPLIANCE"),
            "{key}"
        );
        let d = a.header("x-amz-object-lock-retain-until-date").unwrap();
        let c = format!("{}{}{}Z", &d[..13], &d[14..16], &d[17..19]);
        let until = vaultik::time::parse_compact(&c).unwrap();
        assert!(until >= now + 3 * 86_400 - 60, "{key} locked until {d}");
        let want = if key.starts_with("copy/blobs/") {
            "STANDARD_IA"
        } else {
            "STANDARD"
        };
        assert!(
            class == want || (class.is_empty() && want == "STANDARD"),
            "{key}: {class}"
        );
    }
    // A rerun writes nothing; the copy restores.
    let again = copy_ok(&env, &["--all", "--to-config", to.to_str().unwrap()]);
    assert!(again.contains("copied 0 snapshot(s) of 2"), "{again}");
    restore_all(&env, &to, &kept);
}

/// A local source of one snapshot, damaged by `harm` (given the store's
/// directory and the manifest's blobs), copied to a directory: the error
/// names `what`, and no snapshot is at the destination.
fn refused(harm: impl Fn(&Path, &str, &[(String, u64)]) -> String, what: &str) {
    let mut env = Env::new(Backend::Local);
    env.extra.push("blob_size_limit = 1MiB".into());
    env.extra.push("chunk_size = 64KiB".into());
    env.random_files(4, 600_000, 5);
    env.write_config();
    env.create();
    let id = env.snapshot_ids()[0].clone();
    let store = env.store_dir();
    let m = store.join(format!("metadata/{id}/manifest.json.zst"));
    let v: serde_json::Value =
        serde_json::from_slice(&zstd::decode_all(&fs::read(&m).unwrap()[..]).unwrap()).unwrap();
    let blobs: Vec<(String, u64)> = v["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["key"].as_str().unwrap().into(),
                b["size"].as_u64().unwrap(),
            )
        })
        .collect();
    let key = harm(&store, &id, &blobs);
    let outside = env.path().join("outside");
    fs::write(&outside, b"not vaultik's").unwrap();
    let dest = env.path().join("dest");
    let out = copy(&env, &[&id, "--to", dest.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // One line naming the snapshot and why, one for the command.
    let lines: Vec<&str> = err.trim().lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].contains(&format!("snapshot {id} not copied")),
        "{err}"
    );
    assert!(lines[0].contains(what), "{what:?} not in {err}");
    assert!(lines[0].contains(&key), "{key} not in {err}");
    assert!(lines[1].contains("1 problem(s) found"), "{err}");
    assert!(manifests(&dest).is_empty(), "{:?}", keys(&dest));
    assert!(
        keys(&dest).iter().all(|k| !k.starts_with("metadata/")),
        "{:?}",
        keys(&dest)
    );
    assert_eq!(fs::read(&outside).unwrap(), b"not vaultik's");
}

#[test]
fn a_forged_manifest_size_is_refused() {
    refused(
        |store, id, blobs| {
            let m = store.join(format!("metadata/{id}/manifest.json.zst"));
            let mut v: serde_json::Value =
                serde_json::from_slice(&zstd::decode_all(&fs::read(&m).unwrap()[..]).unwrap())
                    .unwrap();
            v["blobs"][1]["size"] = (blobs[1].1 + 1).into();
            crate::util::forge::write_manifest(&m, &v);
            blobs[1].0.clone()
        },
        "bytes, but the manifest of snapshot",
    );
}

#[test]
fn a_missing_blob_is_refused() {
    refused(
        |store, _, blobs| {
            fs::remove_file(store.join(&blobs[2].0)).unwrap();
            blobs[2].0.clone()
        },
        "the source has no such object",
    );
}

#[test]
fn a_symlinked_blob_is_refused() {
    refused(
        |store, _, blobs| {
            let p = store.join(&blobs[0].0);
            let elsewhere = store.parent().unwrap().join("elsewhere");
            fs::rename(&p, &elsewhere).unwrap();
            std::os::unix::fs::symlink(&elsewhere, &p).unwrap();
            blobs[0].0.clone()
        },
        "not a regular file; refused",
    );
}

#[test]
fn a_blob_whose_bytes_are_not_its_name_is_refused() {
    refused(
        |store, _, blobs| {
            let p = store.join(&blobs[1].0);
            let mut data = fs::read(&p).unwrap();
            data[1000] ^= 1;
            fs::write(&p, data).unwrap();
            blobs[1].0.clone()
        },
        "not to",
    );
}

#[test]
fn a_damaged_snapshot_leaves_the_others_to_copy() {
    let (env, kept) = source(Backend::Local);
    let first = env
        .store_dir()
        .join(format!("metadata/{}/manifest.json.zst", kept[0].0));
    fs::write(&first, b"not a manifest").unwrap();
    let usb = env.path().join("usb");
    let out = copy(&env, &["--all", "--to", usb.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("snapshot {} not copied", kept[0].0)),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("copied 1 snapshot(s) of 2"), "{stdout}");
    assert_eq!(
        manifests(&usb),
        [format!("metadata/{}/manifest.json.zst", kept[1].0)]
    );
}

#[test]
fn the_source_is_not_its_own_destination() {
    let env = Env::new(Backend::Local);
    env.write_config();
    let out = copy(&env, &["--all", "--to", env.store_dir().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the destination is the store copied from"),
        "{}",
        stderr(&out)
    );
    let out = copy(&env, &["--all"]);
    assert!(
        stderr(&out).contains("--to STORE or --to-config FILE"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn blobs_a_purge_marked_at_the_destination_are_copied_again() {
    let (env, kept) = source(Backend::Local);
    let usb = env.path().join("usb");
    copy_ok(&env, &["--all", "--to", usb.to_str().unwrap()]);
    // A purge on the destination (after `snapshot remove` there) marked
    // every blob of the first snapshot for deletion.
    let id = &kept[0].0;
    let m = usb.join(format!("metadata/{id}/manifest.json.zst"));
    let v: serde_json::Value =
        serde_json::from_slice(&zstd::decode_all(&fs::read(&m).unwrap()[..]).unwrap()).unwrap();
    let blobs: Vec<String> = v["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["key"].as_str().unwrap().to_string())
        .collect();
    let out = env
        .cmd()
        .args(["--store", usb.to_str().unwrap(), "snapshot", "remove", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let when = vaultik::time::compact(vaultik::time::now() - 86_400);
    for b in &blobs {
        let hash = b.rsplit('/').next().unwrap();
        let mark = usb.join(format!("gc/marked/{when}/{hash}"));
        fs::create_dir_all(mark.parent().unwrap()).unwrap();
        fs::write(&mark, b"").unwrap();
    }
    // The copy does not count on them: it copies them again (fresh, so
    // younger than any grace period), as a backup uploads them again.
    let out = copy_ok(&env, &[id.as_str(), "--to", usb.to_str().unwrap()]);
    let line = out.lines().next().unwrap();
    assert_eq!(figure(line, "blob(s) ("), blobs.len() as u64, "{out}");
    assert_eq!(figure(line, "already there"), 0, "{out}");
    assert_eq!(manifests(&usb).len(), 2);
}

#[test]
fn cold_source_blobs_are_thawed_as_asked_then_copied() {
    let mut env = Env::new(Backend::Moto);
    env.extra.push("blob_size_limit = 1MiB".into());
    env.s3_extra.push("storage_class = GLACIER".into());
    env.random_files(3, 700_000, 12);
    env.write_config();
    env.settle();
    env.create();
    let usb = env.path().join("usb");
    let to = usb.to_str().unwrap();
    let out = copy(&env, &["latest", "--to", to]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("must be thawed"), "{}", stderr(&out));
    let out = copy(&env, &["latest", "--to", to, "--thaw=Expedited"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(manifests(&usb).is_empty());
    // Thawed (moto thaws at once): copied, and restored from the copy.
    copy_ok(&env, &["latest", "--to", to]);
    let target = env.path().join("restored");
    let out = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(["--store", to, "restore", "latest", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn an_oversized_blob_is_refused_unread() {
    refused(
        |store, id, blobs| {
            // A sparse file: 5 GiB listed, nothing stored.
            let huge = 5u64 << 30;
            let f = fs::OpenOptions::new()
                .write(true)
                .open(store.join(&blobs[0].0))
                .unwrap();
            f.set_len(huge).unwrap();
            let m = store.join(format!("metadata/{id}/manifest.json.zst"));
            let mut v: serde_json::Value =
                serde_json::from_slice(&zstd::decode_all(&fs::read(&m).unwrap()[..]).unwrap())
                    .unwrap();
            v["blobs"][0]["size"] = huge.into();
            crate::util::forge::write_manifest(&m, &v);
            blobs[0].0.clone()
        },
        "not read",
    );
}

#[test]
fn the_destination_keeps_its_own_identity_and_gets_no_foreign_object() {
    let (env, kept) = source(Backend::Local);
    // Objects that are not vaultik's in the source: never copied.
    let store = env.store_dir();
    fs::create_dir_all(store.join("other")).unwrap();
    fs::write(store.join("other/thing"), b"foreign").unwrap();
    let first_blob = env.blob_keys()[0].clone();
    fs::write(store.join(format!("{first_blob}.evil")), b"foreign").unwrap();
    // The destination is a store of its own, with its own identity.
    let mut other = Env::new(Backend::Local);
    other.snapshots = vec![("mine".into(), vec![other.src()], vec![])];
    other.write_config();
    fs::write(other.src().join("mine"), b"the other host's file").unwrap();
    other.create();
    let theirs: Vec<String> = keys(&other.store_dir())
        .into_iter()
        .filter(|k| k.starts_with("store/"))
        .collect();
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    let out = copy_ok(
        &env,
        &["--all", "--to", other.store_dir().to_str().unwrap()],
    );
    assert!(out.contains("copied 2 snapshot(s) of 2"), "{out}");
    let after = keys(&other.store_dir());
    let ids: Vec<&String> = after.iter().filter(|k| k.starts_with("store/")).collect();
    assert_eq!(ids, theirs.iter().collect::<Vec<_>>());
    assert!(
        after
            .iter()
            .all(|k| !k.starts_with("other/") && !k.ends_with(".evil")),
        "{after:?}"
    );
    // Its own backups go on with their index, beside the copied snapshots.
    let out = other.create();
    assert!(!out.contains("afresh"), "{out}");
    assert_eq!(other.snapshot_ids().len(), 4);
    restore_all(&env, &other.config_path(), &kept);
}

#[test]
fn another_manifest_under_the_same_id_at_the_destination_is_left_alone() {
    let (env, kept) = source(Backend::Local);
    let usb = env.path().join("usb");
    copy_ok(&env, &[kept[0].0.as_str(), "--to", usb.to_str().unwrap()]);
    // Another host's snapshot of the same id (same host name, name and
    // second), or a damaged one: never replaced.
    let m = usb.join(format!("metadata/{}/manifest.json.zst", kept[0].0));
    fs::write(&m, b"someone else's").unwrap();
    let out = copy(&env, &["--all", "--to", usb.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the destination has another manifest"),
        "{err}"
    );
    assert_eq!(fs::read(&m).unwrap(), b"someone else's");
    assert_eq!(manifests(&usb).len(), 2, "the other snapshot is copied");
}

#[test]
fn blobs_written_over_at_a_versioned_source_are_copied_as_vaultik_wrote_them() {
    let (env, _proxy) = crate::immutable::locked_env("3d");
    env.create();
    let id = env.snapshot_ids()[0].clone();
    // An attacker with the host's key writes over every blob.
    let blobs: Vec<String> = moto::keys(&env.bucket, "host1/blobs/")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(blobs.len() >= 2, "{blobs:?}");
    for k in &blobs {
        let a = moto::http("PUT", &format!("/{}/{k}", env.bucket), &[], b"junk");
        assert_eq!(a.status, 200, "{a:?}");
    }
    let usb = env.path().join("usb");
    let out = copy(&env, &[&id, "--to", usb.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("matches its key"), "{}", stderr(&out));
    let target = env.path().join("restored");
    let out = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(["--store", usb.to_str().unwrap(), "restore", &id, "--target"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}
