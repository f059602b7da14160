//! Crash consistency: `snapshot create` killed with SIGKILL at seeded random
//! moments, again and again, with new data each time; and files that change
//! under a running backup.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::core::restored;
use crate::util::tree::{assert_same_tree, random_bytes};
use crate::util::{Backend, Env, setting, stderr};

#[test]
fn twenty_seeded_kills_lose_nothing() {
    // 32 rounds from a fixed seed here; tests/soak.sh sets more.
    let (rounds, seed) = (
        setting("VAULTIK_CRASH_ROUNDS", 32),
        setting("VAULTIK_CRASH_SEED", 0x5eed_0006),
    );
    let mut env = Env::new(Backend::S3);
    // Small blobs and chunks: every run has walk, packing, several uploads
    // and the metadata to go through, so the kills land in all of them.
    env.extra = vec!["blob_size_limit = 1MiB".into(), "chunk_size = 64KiB".into()];
    env.write_config();
    let mut rng = vaultik::testhook::Rng::new(seed);
    let mut next = move || rng.next();
    // How long one run takes here, on the same amount of new data: the kills
    // land anywhere from the start to past the end of a run (some runs finish
    // first; their snapshots are checked like the rest).
    let add = |round: &str, next: &mut dyn FnMut() -> u64| {
        let dir = env.src().join(round);
        fs::create_dir_all(&dir).unwrap();
        for j in 0..4 {
            fs::write(
                dir.join(format!("big{j}")),
                random_bytes(300_000 + (next() % 200_000) as usize, next()),
            )
            .unwrap();
        }
        for j in 0..40 {
            fs::write(dir.join(format!("small{j}")), format!("{round}/{j}\n")).unwrap();
        }
    };
    // The median of three runs: a busy machine slows any one of them, and
    // a slow estimate lets most runs finish before the kill.
    let mut times = Vec::new();
    for w in 0..3 {
        add(&format!("warmup{w}"), &mut next);
        let started = std::time::Instant::now();
        env.create();
        times.push(started.elapsed().as_millis() as u64);
    }
    times.sort();
    let run_ms = times[1].max(20);
    // (snapshot id, copy of the source as that run saw it)
    let mut published: Vec<(String, PathBuf)> = Vec::new();
    let (mut killed, mut finished, mut killed_after_upload) = (0, 0, 0);
    for round in 0..rounds {
        add(&format!("round{round:02}"), &mut next);
        let copy = env.path().join(format!("copy{round:02}"));
        let cp = Command::new("cp")
            .arg("-a")
            .arg(env.src())
            .arg(&copy)
            .status()
            .unwrap();
        assert!(cp.success());
        let before = env.snapshot_ids();
        let blobs_before = env.blob_keys().len();
        let delay = Duration::from_millis(next() % (run_ms * 3 / 2));
        let mut child = env.spawn_create();
        std::thread::sleep(delay);
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        if status.signal() == Some(libc::SIGKILL) {
            killed += 1;
            if env.blob_keys().len() > blobs_before {
                killed_after_upload += 1;
            }
        } else {
            assert!(status.success(), "round {round}: {status}");
            finished += 1;
        }
        // The index never names a blob the bucket does not hold.
        let blobs = env.blob_keys();
        for k in env.index_blob_keys() {
            assert!(blobs.contains(&k), "round {round}: index names missing {k}");
        }
        // At most one new snapshot, and only a complete one is listed.
        let after = env.snapshot_ids();
        let new: Vec<_> = after.iter().filter(|id| !before.contains(id)).collect();
        assert!(new.len() <= 1, "round {round}: {new:?}");
        if let Some(id) = new.first() {
            published.push(((*id).clone(), copy));
        }
    }
    // A clean run completes whatever was interrupted.
    env.create();
    // Listed oldest first: the newest is the final run's.
    let last = env.snapshot_ids().pop().expect("snapshots");
    assert!(
        !published.iter().any(|(p, _)| *p == last),
        "the final run published"
    );
    published.push((last, env.src()));
    eprintln!(
        "crash rounds: {rounds} (seed {seed:#x}, a run takes {run_ms} ms): {killed} killed \
         ({killed_after_upload} after a blob was uploaded), {finished} finished first; \
         {} snapshots checked",
        published.len()
    );
    assert!(
        killed >= rounds / 2,
        "too few runs were interrupted: {killed}"
    );
    // Every published snapshot is intact and restores exactly what it saw.
    for (i, (id, seen)) in published.iter().enumerate() {
        let deep = env
            .cmd()
            .env("VAULTIK_PRIVATE_KEY", &env.identity)
            .args(["snapshot", "verify", id, "--deep"])
            .output()
            .unwrap();
        assert!(
            deep.status.success(),
            "verify --deep {id}: {}",
            stderr(&deep)
        );
        let target = env.path().join(format!("restore{i:02}"));
        env.restore_ok(id, &target, &[]);
        assert_same_tree(seen, &restored(&target, &env.src()));
    }
}

/// Files deleted, grown and replaced while a backup runs: the backup
/// succeeds with warnings that name them, and the snapshot restores to a
/// consistent tree (deleted files absent, and a file replaced by another
/// before it was read, since only the file walked is read; the others
/// whole).
#[test]
fn files_changing_during_a_backup() {
    let mut env = Env::new(crate::util::Backend::S3);
    // A slow store holds the readers back (the packer queue fills, then
    // the uploads wait), so the walk is long done when files are read.
    // (Slow enough that a test thread delayed by a loaded machine still
    // acts before the readers reach the last files.)
    env.slow_store(Duration::from_millis(250));
    env.extra.push("blob_size_limit = 1MiB".into());
    env.random_files(48, 1_000_000, 900);
    env.write_config();
    let child = env.spawn_create();
    // Once the first blob is stored, the walk is done and the readers are
    // held back by the slow uploads, far from the last files.
    let start = std::time::Instant::now();
    while env.blob_keys().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no blob uploaded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The last files in walk order are read last: delete some, grow one,
    // replace one.
    for i in 40..44 {
        fs::remove_file(env.src().join(format!("f{i:02}"))).unwrap();
    }
    let grown = env.src().join("f46");
    let mut data = fs::read(&grown).unwrap();
    data.extend_from_slice(b"appended while the backup ran\n");
    fs::write(&grown, &data).unwrap();
    let replaced = env.src().join("f47");
    fs::write(env.path().join("new47"), random_bytes(500_000, 4747)).unwrap();
    fs::rename(env.path().join("new47"), &replaced).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // The readers are far from the last files, but on a busy machine they
    // may reach the first of them before it is deleted: a file read whole
    // before its deletion is in the snapshot, whole. Most are deleted
    // first, and each of those is named.
    let deleted_first: Vec<bool> = (40..44)
        .map(|i| err.contains(&format!("f{i:02}: deleted during the backup")))
        .collect();
    assert!(
        deleted_first.iter().filter(|d| **d).count() >= 2,
        "deleted files are named: {err}"
    );
    // What the snapshot holds is a tree that existed: the deleted files are
    // absent, every other file is whole (as it was when read).
    let target = env.path().join("restored");
    env.restore_ok("latest", &target, &[]);
    let back = restored(&target, &env.src());
    for i in 0..48 {
        let name = format!("f{i:02}");
        let r = back.join(&name);
        if (40..44).contains(&i) && deleted_first[i as usize - 40] {
            assert!(!r.exists(), "{name} was deleted before it was read");
            continue;
        }
        if i == 47 && err.contains("f47: replaced during the backup (now another file)") {
            assert!(!r.exists(), "{name} was replaced before it was read");
            continue;
        }
        let got = fs::read(&r).unwrap();
        if i < 46 {
            assert_eq!(got, random_bytes(1_000_000, 900 + i), "{name}");
        } else if i == 47 {
            // Opened before it was replaced: the file walked, whole.
            assert_eq!(got, random_bytes(1_000_000, 947), "{name}");
        } else {
            // Read before or after the change: one version or the other.
            assert!(got.len() == 1_000_000 || got == fs::read(env.src().join(&name)).unwrap());
        }
    }
    // The next run stores the current state.
    env.create();
    let target2 = env.path().join("restored2");
    env.restore_ok("latest", &target2, &[]);
    assert_same_tree(&env.src(), &restored(&target2, &env.src()));
}
