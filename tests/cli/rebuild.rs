//! Issue 33: the local index, lost, rebuilt from the store (`index
//! rebuild`, `restore --rebuild-index`), so that the next backup uploads
//! only what changed; and what a forged snapshot can (not) put into it.

use std::fs;
use std::path::Path;

use crate::util::forge::{self, Base};
use crate::util::tree::{assert_same_tree, random_bytes};
use crate::util::*;

/// A tree of a few large files (several chunks each) and many small ones.
fn populate(src: &Path) {
    for i in 0..4u64 {
        fs::write(src.join(format!("big{i}")), random_bytes(3 << 20, 100 + i)).unwrap();
    }
    fs::create_dir_all(src.join("small")).unwrap();
    for i in 0..200u64 {
        fs::write(
            src.join(format!("small/f{i:03}")),
            random_bytes(1000 + i as usize * 37, 1000 + i),
        )
        .unwrap();
    }
}

/// The index and its side files, gone (a new disk).
fn lose_index(env: &Env) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = env.index_path().into_os_string();
        p.push(suffix);
        let _ = fs::remove_file(p);
    }
    assert!(!env.index_path().exists());
}

/// `snapshot create --json`, its one object.
fn create_json(env: &Env) -> serde_json::Value {
    let out = env.ok(&["snapshot", "create", "--json"]);
    let line = out.lines().find(|l| l.starts_with('{')).unwrap();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn uploaded(o: &serde_json::Value) -> (u64, u64) {
    (
        o["blobs"].as_u64().unwrap(),
        o["bytes"]["uploaded"].as_u64().unwrap(),
    )
}

/// The chunk ids the index at `env`'s index path records.
fn index_chunks(env: &Env) -> Vec<Vec<u8>> {
    let conn = rusqlite::Connection::open(env.index_path()).unwrap();
    let mut st = conn.prepare("SELECT id FROM chunks").unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Snapshot `id` restores as the source is now.
fn restored_same(env: &Env, id: &str) {
    let target = env.path().join(format!(
        "restored-{}",
        fs::read_dir(env.path()).unwrap().count()
    ));
    env.restore_ok(id, &target, &[]);
    assert_same_tree(
        &env.src(),
        &target.join(env.src().strip_prefix("/").unwrap()),
    );
}

both!(
    a_lost_index_is_rebuilt_and_nothing_is_uploaded_again,
    |backend| {
        let env = Env::new(backend);
        populate(&env.src());
        env.settle();
        let first = create_json(&env);
        let (blobs, bytes) = uploaded(&first);
        assert!(blobs >= 1 && bytes > 12 << 20, "{first}");
        // A new disk: the whole state directory is gone.
        fs::remove_dir_all(env.index_path().parent().unwrap()).unwrap();

        let out = env.run_with_key(&["index", "rebuild"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("rebuilt the index") && text.contains("from 1 snapshot(s)"),
            "{text}"
        );
        assert_eq!(env.index_blob_keys().len(), env.blob_keys().len());

        // The next run reads every file again (no stat is known) but uploads
        // only its metadata and manifest: no blob.
        env.settle();
        let second = create_json(&env);
        let (blobs2, bytes2) = uploaded(&second);
        assert_eq!(blobs2, 0, "{second}");
        assert!(bytes2 < bytes / 100, "{bytes2} of {bytes}: {second}");
        assert_eq!(second["files"]["changed"], 0);
        // ...and the run after that reads nothing.
        env.settle();
        let third = create_json(&env);
        assert_eq!(third["bytes"]["read"], 0, "{third}");

        // A changed file is backed up and restored as it is now.
        let big = env.src().join("big1");
        let mut data = fs::read(&big).unwrap();
        data[1_000_000..1_000_100].fill(7);
        fs::write(&big, &data).unwrap();
        fs::write(env.src().join("small/new"), b"new since the rebuild").unwrap();
        env.settle();
        let fourth = create_json(&env);
        assert!(uploaded(&fourth).0 >= 1, "{fourth}");
        assert!(uploaded(&fourth).1 < bytes / 4, "{fourth}");
        restored_same(&env, fourth["id"].as_str().unwrap());
    }
);

both!(restore_rebuilds_the_index_it_is_asked_to, |backend| {
    let env = Env::new(backend);
    populate(&env.src());
    env.settle();
    create_json(&env);
    lose_index(&env);
    let target = env.path().join("restored");
    let out = env.run_with_key(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--rebuild-index",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("restored ") && text.contains("rebuilt the index"),
        "{text}"
    );
    assert_same_tree(
        &env.src(),
        &target.join(env.src().strip_prefix("/").unwrap()),
    );
    env.settle();
    let next = create_json(&env);
    assert_eq!(uploaded(&next).0, 0, "{next}");

    // An index that knows the store is left alone, with a warning; the
    // restore still succeeds.
    let before = fs::read(env.index_path()).unwrap();
    let again = env.path().join("again");
    let out = env.run_with_key(&[
        "restore",
        "latest",
        "--target",
        again.to_str().unwrap(),
        "--rebuild-index",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already knows this store"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(env.index_path()).unwrap(), before);
});

/// An index that knows the store is replaced only with --force; a run
/// holding the lock keeps a rebuild out; the key is needed.
#[test]
fn an_index_is_replaced_only_when_asked_and_never_beside_a_run() {
    let env = Env::new(Backend::Local);
    populate(&env.src());
    env.settle();
    create_json(&env);
    let out = env.run(&["index", "rebuild"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("VAULTIK_PRIVATE_KEY"),
        "{}",
        stderr(&out)
    );
    let out = env.run_with_key(&["index", "rebuild"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("already knows this store") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    // A backup holding the run lock: refused, naming it.
    let mut lock = env.index_path().into_os_string();
    lock.push(".lock");
    let held = fs::OpenOptions::new().write(true).open(&lock).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let out = env.run_with_key(&["index", "rebuild", "--force"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("index.sqlite.lock"),
        "{}",
        stderr(&out)
    );
    drop(held);
    let out = env.run_with_key(&["index", "rebuild", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Nothing left beside it but the index, its lock, and what runs keep
    // (the host's signing key among them).
    let mut names: Vec<String> = fs::read_dir(env.index_path().parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("index.sqlite"))
        .collect();
    names.sort();
    assert_eq!(names, ["last", "signing.key", "tmp"]);
    // Another host's snapshots: none, said so.
    let out = env.run_with_key(&["index", "rebuild", "--force", "--host", "elsewhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no snapshot of host elsewhere"),
        "{}",
        stderr(&out)
    );
}

/// The id of a snapshot of `env`'s host named `data`, `after` seconds past
/// the real snapshot `id`.
fn later_id(id: &str, after: u64) -> String {
    let t = vaultik::layout::parse_id(id).unwrap().time;
    vaultik::layout::make_id("testhost", "data", t + after)
}

/// A forged newest snapshot (sealed to the public key) that claims chunks
/// in blobs the store does not have, beyond the end of one it has, with
/// values of every wrong type and size: none of them is recorded, and the
/// files whose chunks it claimed are uploaded by the next backup.
#[test]
fn forged_chunk_locations_are_not_recorded() {
    let env = Env::new(Backend::Local);
    populate(&env.src());
    env.settle();
    create_json(&env);
    let real = env.snapshot_ids().pop().unwrap();
    let base = Base::of(&env, &real);
    let (key, size) = {
        let conn = rusqlite::Connection::open(env.index_path()).unwrap();
        conn.query_row("SELECT key, size FROM blobs LIMIT 1", [], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .unwrap()
    };
    // Contents the next backup will find, and the ids of their one chunk.
    let contents: Vec<Vec<u8>> = (0..6).map(|i| random_bytes(5000, 777 + i)).collect();
    let id = |i: usize| vaultik::chunk::ChunkId::of(&contents[i]).0.to_vec();
    let missing = "blobs/ab/cd/abcd".to_string() + &"0".repeat(60);
    let ours = vaultik::snapshot::META_SCHEMA;
    let schema = &ours[..ours.find("CREATE TABLE temp_files").unwrap()];
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let sql = format!(
        "{schema};
         INSERT INTO info VALUES ('format', '{fmt}');
         INSERT INTO blobs VALUES (1, '{missing}', 4096), (2, '{key}', {size}),
                                  (3, '{key}x', {size}), (4, '../../etc/passwd', 10);
         INSERT INTO chunks VALUES
           (x'{c0}', 1, 0, 100, 100),
           (x'{c1}', 2, {past}, 100, 100),
           (x'{c2}', 2, 9223372036854775807, 9223372036854775807, 100),
           (x'{c3}', 2, -1, 100, 100),
           (x'{c4}', 9, 0, 100, 100),
           (x'{c5}', 2, 0, 100, 1000000000),
           (x'00', 2, 0, 100, 100),
           ('text', 2, 0, 100, 100);",
        fmt = vaultik::snapshot::FORMAT_VERSION,
        c0 = hex(&id(0)),
        c1 = hex(&id(1)),
        c2 = hex(&id(2)),
        c3 = hex(&id(3)),
        c4 = hex(&id(4)),
        c5 = hex(&id(5)),
        past = size - 50,
    );
    let forged = later_id(&real, 1);
    forge::forge_db(&env, &forged, &forge::db_of_sql(&env, &sql), Some(&base));
    assert_eq!(env.snapshot_ids().last(), Some(&forged));
    lose_index(&env);
    let out = env.run_with_key(&["index", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    // Read, then the real one before it (the forged one names chunks the
    // store does not have).
    assert!(
        text.contains(&format!("from 2 snapshot(s) ({forged}, {real})"))
            && text.contains("8 chunks left out"),
        "{text}"
    );
    let known = index_chunks(&env);
    assert!(
        (0..6).all(|i| !known.contains(&id(i))),
        "a forged chunk is in the index"
    );
    // Only the store's blobs: not the missing one, nor the bad names.
    let mut recorded = env.index_blob_keys();
    recorded.sort();
    assert_eq!(recorded, env.blob_keys());
    // The next backup uploads those contents, and restores them.
    for (i, c) in contents.iter().enumerate() {
        fs::write(env.src().join(format!("claimed{i}")), c).unwrap();
    }
    env.settle();
    let next = create_json(&env);
    assert!(uploaded(&next).0 >= 1, "{next}");
    // (By id: the forged one, a second ahead, may be `latest`.)
    restored_same(&env, next["id"].as_str().unwrap());
}

/// Metadata that is cut short, or claims more than its size allows: a
/// warning naming its key, the snapshot before it read instead (exit code
/// 1); alone, an error, and no index written.
#[test]
fn damaged_metadata_is_named_and_left_out() {
    let env = Env::new(Backend::Local);
    populate(&env.src());
    env.settle();
    create_json(&env);
    let real = env.snapshot_ids().pop().unwrap();
    let real_key = format!("metadata/{real}/db.zst.age");
    let sealed = fs::read(env.store_dir().join(&real_key)).unwrap();
    // Cut short: a real one's first half.
    let cut = later_id(&real, 1);
    forge::forge_sealed(&env, &cut, &sealed[..sealed.len() / 2], None);
    // Claiming a database far larger than its sealed size allows.
    let huge = later_id(&real, 2);
    let mut plain = (1u64 << 40).to_le_bytes().to_vec();
    plain.extend_from_slice(&[0u8; 64]);
    forge::forge_sealed(&env, &huge, &forge::seal(&env, &plain), None);
    lose_index(&env);
    let out = env.run_with_key(&["index", "rebuild"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for id in [&cut, &huge] {
        assert!(
            err.contains(&format!("metadata/{id}/db.zst.age")),
            "{id} not named: {err}"
        );
    }
    assert!(err.contains("more than 1024 times"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&real));
    assert_eq!(env.index_blob_keys().len(), env.blob_keys().len());

    // With only damaged snapshots of the name: an error, and no index.
    fs::remove_dir_all(env.store_dir().join("metadata").join(&real)).unwrap();
    lose_index(&env);
    let out = env.run_with_key(&["index", "rebuild"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("could be read"), "{}", stderr(&out));
    assert!(!env.index_path().exists());
}

/// A symlink planted where the index (or its write-ahead log) goes: the
/// index is never written through one; the log's is removed, not followed.
#[test]
fn the_index_is_never_written_through_a_symlink() {
    let env = Env::new(Backend::Local);
    populate(&env.src());
    env.settle();
    create_json(&env);
    let victim = env.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    lose_index(&env);
    std::os::unix::fs::symlink(&victim, env.index_path()).unwrap();
    let out = env.run_with_key(&["index", "rebuild", "--force"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is a symlink"), "{}", stderr(&out));
    assert_eq!(fs::read(&victim).unwrap(), b"precious");

    fs::remove_file(env.index_path()).unwrap();
    let mut wal = env.index_path().into_os_string();
    wal.push("-wal");
    std::os::unix::fs::symlink(&victim, &wal).unwrap();
    let out = env.run_with_key(&["index", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(fs::symlink_metadata(&wal).is_err());
    assert!(
        fs::symlink_metadata(env.index_path())
            .unwrap()
            .file_type()
            .is_file()
    );
    env.settle();
    assert_eq!(uploaded(&create_json(&env)).0, 0);
}

/// Under Object Lock (moto), a blob is recorded locked, with the version
/// the store holds, when the store says it is and its SHA-256 is its
/// key's: the next backup then reuses it instead of uploading its data
/// again.
#[test]
fn locked_blobs_are_known_locked_after_a_rebuild() {
    let (env, _proxy) = crate::immutable::locked_env("30d");
    let first = create_json(&env);
    assert!(uploaded(&first).0 >= 2, "{first}");
    lose_index(&env);
    let out = env.run_with_key(&["index", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let blobs = env.index_blob_keys().len();
    assert!(
        text.contains(&format!("; {blobs} blobs known locked")),
        "{text}"
    );
    let conn = rusqlite::Connection::open(env.index_path()).unwrap();
    let (locked, versions): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(version) FROM blob_locks WHERE until > ?1",
            [std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
                + 29 * 86_400],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(conn);
    assert_eq!((locked as usize, versions as usize), (blobs, blobs));
    env.settle();
    let next = create_json(&env);
    assert_eq!(uploaded(&next).0, 0, "{next}");
}

/// By default the latest snapshot of each name is read; `--all` reads
/// every one (a file deleted since comes back without an upload); another
/// key is refused before anything is written.
#[test]
fn all_snapshots_or_the_latest_and_the_right_key() {
    let env = Env::new(Backend::Local);
    populate(&env.src());
    let gone = random_bytes(300_000, 4242);
    fs::write(env.src().join("gone"), &gone).unwrap();
    env.settle();
    create_json(&env);
    fs::remove_file(env.src().join("gone")).unwrap();
    env.settle();
    create_json(&env);
    let gone_id = vaultik::chunk::ChunkId::of(&gone).0.to_vec();

    lose_index(&env);
    let other = env.path().join("other-key.txt");
    let out = env.run(&["keygen", "--output", other.to_str().unwrap()]);
    assert!(out.status.success());
    let out = env.run(&["index", "rebuild", "--identity", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));
    assert!(!env.index_path().exists());

    let out = env.run_with_key(&["index", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("from 1 snapshot(s)"));
    assert!(!index_chunks(&env).contains(&gone_id));
    let out = env.run_with_key(&["index", "rebuild", "--all", "--force", "--name", "data"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("from 2 snapshot(s)"));
    assert!(index_chunks(&env).contains(&gone_id));
    // The file comes back: nothing to upload.
    fs::write(env.src().join("gone"), &gone).unwrap();
    env.settle();
    let next = create_json(&env);
    assert_eq!(uploaded(&next).0, 0, "{next}");
    let out = env.run_with_key(&["index", "rebuild", "--force", "--name", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("named nosuch"), "{}", stderr(&out));
}

/// A forged snapshot of many chunk rows (200,000, in a blob the store does
/// not have): all left out, quickly, and the real snapshot before it read.
#[test]
fn many_forged_rows_cost_little_and_leave_nothing() {
    let env = Env::new(Backend::Local);
    populate(&env.src());
    env.settle();
    create_json(&env);
    let real = env.snapshot_ids().pop().unwrap();
    let real_chunks = {
        lose_index(&env);
        assert!(env.run_with_key(&["index", "rebuild"]).status.success());
        index_chunks(&env).len()
    };
    let ours = vaultik::snapshot::META_SCHEMA;
    let schema = &ours[..ours.find("CREATE TABLE temp_files").unwrap()];
    let sql = format!(
        "{schema};
         INSERT INTO info VALUES ('format', '{}');
         INSERT INTO blobs VALUES (1, 'blobs/ab/cd/abcd{}', 1000000000);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
         INSERT INTO chunks SELECT randomblob(32), 1, i * 100, 100, 100 FROM n;",
        vaultik::snapshot::FORMAT_VERSION,
        "0".repeat(60),
    );
    let forged = later_id(&real, 1);
    forge::forge_db(&env, &forged, &forge::db_of_sql(&env, &sql), None);
    lose_index(&env);
    let started = std::time::Instant::now();
    let out = env.run_with_key(&["index", "rebuild"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed().as_secs() < 30);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("200000 chunks left out") && text.contains(&real),
        "{text}"
    );
    assert_eq!(index_chunks(&env).len(), real_chunks);
}
