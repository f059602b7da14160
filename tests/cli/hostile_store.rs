//! A hostile store, for the keyless commands: a zstd bomb for a manifest,
//! a snapshot dated far in the future, ids and host names made to break
//! out of keys or paint the terminal, a directory store whose `blobs` is a
//! symlink to someone else's files, objects that are FIFOs or symlinks.
//! Nothing in the store may make vaultik allocate without bound, hang,
//! delete outside the store, pick a forged snapshot over a real one, or
//! print what the store chose raw.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::forge::{self, write_manifest};
use crate::util::{Backend, Env, stderr};

/// Run `cmd` to the end under GNU time (installed by tests/run.sh); its
/// exit code, stdout, stderr and peak RSS (KiB). (The rusage of a child of
/// the test process itself would count the test process's memory: a fork
/// carries its resident set, and exec keeps the high-water mark.)
pub(crate) fn measured(cmd: Command, scratch: &Path) -> (i32, String, String, u64) {
    let (out, err, rss) = (
        scratch.join("m.out"),
        scratch.join("m.err"),
        scratch.join("m.rss"),
    );
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    timed.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            timed.env(k, v);
        }
    }
    if let Some(d) = cmd.get_current_dir() {
        timed.current_dir(d);
    }
    let mut child = timed
        .stdout(fs::File::create(&out).unwrap())
        .stderr(fs::File::create(&err).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("GNU time at /usr/bin/time (tests/run.sh installs it)");
    // A hang is a failure, not a stuck suite.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("killed after 60 s: it hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let rss = fs::read_to_string(rss).unwrap();
    let rss = rss.lines().last().unwrap().trim().parse().unwrap();
    (
        status.code().unwrap_or(-1),
        fs::read_to_string(out).unwrap(),
        fs::read_to_string(err).unwrap(),
        rss,
    )
}

/// A zstd stream of `n` zero bytes, written in pieces (a bomb).
fn zeros_compressed(n: u64) -> Vec<u8> {
    let mut enc = zstd::Encoder::new(Vec::new(), 19).unwrap();
    let piece = vec![0u8; 1 << 20];
    for _ in 0..n / piece.len() as u64 {
        enc.write_all(&piece).unwrap();
    }
    enc.finish().unwrap()
}

fn one_snapshot(env: &Env) -> String {
    fs::write(env.src().join("f"), b"real data\n").unwrap();
    env.create();
    env.snapshot_ids().pop().unwrap()
}

/// The issue's third reproduction: a small manifest that decompresses to
/// gigabytes of zeros. The keyless commands read at most 16 times its
/// stored size of it, name it, and go on with the rest of the store.
#[test]
fn a_zstd_bomb_for_a_manifest() {
    let mut env = Env::new(Backend::Local);
    env.extra.push("grace_period = 0s".into());
    let real = one_snapshot(&env);
    let bomb = zeros_compressed(2 << 30);
    assert!(bomb.len() < 200_000, "{}", bomb.len());
    let id = "evil_x_2026-01-01T000000Z";
    let dir = env.store_dir().join("metadata").join(id);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("manifest.json.zst"), &bomb).unwrap();
    let mut cmd = env.cmd();
    cmd.args(["snapshot", "list"]);
    let (code, out, err, rss) = measured(cmd, env.path());
    eprintln!(
        "snapshot list with a {}-byte bomb: {rss} KiB peak",
        bomb.len()
    );
    assert_eq!(code, 1, "{err}");
    assert!(rss < 100 * 1024, "peak RSS {rss} KiB");
    assert!(out.contains(&real), "the rest is listed: {out}");
    // Cut at 16 times its stored size (issue 28), not at 32 MiB.
    assert!(
        err.contains(id)
            && err.contains("decompressed; not read")
            && err.contains("16 times its stored size"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 2, "{err}");
    // store info: the same; prune and purge delete nothing, and say why.
    let out = env.run(&["store", "info"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let blobs = env.blob_keys();
    for args in [
        &["prune"][..],
        &["snapshot", "purge", "--keep-latest", "1", "--force"],
    ] {
        let out = env.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("deletes nothing") && err.contains(id), "{err}");
    }
    assert_eq!(env.blob_keys(), blobs);
    // Removing the damaged snapshot by id makes the store whole again.
    env.ok(&["snapshot", "remove", id]);
    env.ok(&["prune"]);
    assert_eq!(env.snapshot_ids(), vec![real]);
    assert_eq!(env.blob_keys(), blobs);
}

/// A snapshot whose id and manifest claim 2099 for this host and name:
/// shown flagged, never `latest`, and left out of retention, so it cannot
/// push the real snapshots out.
#[test]
fn a_snapshot_dated_far_in_the_future() {
    let mut env = Env::new(Backend::Local);
    env.extra.push("grace_period = 0s".into());
    fs::write(env.src().join("f"), b"first\n").unwrap();
    env.create();
    std::thread::sleep(Duration::from_millis(1100));
    fs::write(env.src().join("f"), b"second\n").unwrap();
    env.create();
    let real = env.snapshot_ids();
    assert_eq!(real.len(), 2);
    let future = "testhost_data_2099-01-01T000000Z";
    forge::forge(&env, future, &[forge::file(b"/f", 0o644)], None);
    let out = env.ok(&["snapshot", "list"]);
    let line = out.lines().find(|l| l.contains(future)).unwrap();
    assert!(line.contains("dated ahead"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["snapshot", "list", "--json"])).unwrap();
    let flagged: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["dated_ahead"] == true)
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(flagged, vec![future]);
    // latest is the real newest.
    let target = env.path().join("r");
    env.restore_ok("latest", &target, &[]);
    let f = crate::core::restored(&target, &env.src()).join("f");
    assert_eq!(fs::read(f).unwrap(), b"second\n");
    // Retention: keep the latest one; the future one takes no rank and
    // is left alone (and said so).
    let out = env.ok(&["snapshot", "purge", "--keep-latest", "1", "--force"]);
    assert!(
        out.contains("left alone 1 snapshot(s) dated ahead"),
        "{out}"
    );
    let left = env.snapshot_ids();
    assert!(
        left.contains(&real[1]) && left.contains(&future.to_string()),
        "{left:?}"
    );
    assert!(!left.contains(&real[0]), "{left:?}");
    // So does a backup with --prune.
    env.extra.push("keep_latest = 1".into());
    env.write_config();
    std::thread::sleep(Duration::from_millis(1100));
    env.ok(&["snapshot", "create", "--prune"]);
    let left = env.snapshot_ids();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&future.to_string()), "{left:?}");
}

/// Ids and host names chosen to break out of keys or paint the terminal:
/// keys that are not of the layout are foreign (never read or deleted,
/// counted by store info); host names are printed escaped.
#[test]
fn ids_and_host_names_from_the_store_are_checked_and_escaped() {
    let mut env = Env::new(Backend::Local);
    env.extra.push("grace_period = 0s".into());
    let real = one_snapshot(&env);
    let store = env.store_dir();
    let m = |id: &str| {
        serde_json::json!({"format": 1, "id": id, "hostname": "h", "name": "n",
                           "time": 1, "blobs": []})
    };
    let mut planted = 0;
    for dir in [
        "metadata/a/b_c_2026-01-01T000000Z",
        "metadata/.._x_2026-01-01T000000Z",
        "metadata/evil_x_2026-01-01T000000Z\x1b[2J",
        "metadata/evil_x_2026-01-01T000000Z\n",
        "metadata/evil_x_2026-13-01T000000Z",
    ] {
        let d = store.join(dir);
        fs::create_dir_all(&d).unwrap();
        write_manifest(
            &d.join("manifest.json.zst"),
            &m(dir.rsplit('/').next().unwrap()),
        );
        planted += 1;
    }
    // A valid id whose host name paints the terminal.
    let painted = "evil--2J--0-pwned-_x_2026-01-01T000000Z";
    let d = store.join("metadata").join(painted);
    fs::create_dir_all(&d).unwrap();
    write_manifest(
        &d.join("manifest.json.zst"),
        &serde_json::json!({"format": 1, "id": painted, "hostname": "evil\x1b[2J\x1b]0;pwned\x07",
                            "name": "x", "time": 1_767_225_600u64, "blobs": []}),
    );
    // Other objects a hostile writer left: files beside the layout.
    fs::write(store.join("blobs/README"), b"x").unwrap();
    fs::write(store.join("metadata/stray"), b"x").unwrap();
    planted += 2;
    let out = env.run(&["store", "info"]);
    let (so, se) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "{se}");
    assert!(!so.contains('\x1b') && !se.contains('\x1b'), "{so}\n{se}");
    assert!(so.contains("evil\\u{1b}[2J"), "{so}");
    assert!(
        so.contains(&format!("foreign:      {planted} object(s)")),
        "{so}\n{se}"
    );
    assert!(se.contains("not vaultik's"), "{se}");
    let out = env.ok(&["snapshot", "list"]);
    assert!(!out.contains('\x1b'), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.contains("_20")).count(),
        2,
        "{out}"
    );
    // Foreign objects are never deleted, whatever the command.
    env.ok(&["prune"]);
    env.ok(&["snapshot", "purge", "--keep-latest", "1", "--force"]);
    assert!(store.join("blobs/README").exists() && store.join("metadata/stray").exists());
    assert!(
        store
            .join("metadata/a/b_c_2026-01-01T000000Z/manifest.json.zst")
            .exists()
    );
    // A restore of such an id is refused, naming it escaped.
    let out = env.restore_to(
        "evil_x_2026-01-01T000000Z\x1b[2J",
        &env.path().join("t"),
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains('\x1b'), "{}", stderr(&out));
    assert!(env.snapshot_ids().contains(&real));
}

/// The issue's second reproduction: a directory store whose `blobs` was
/// replaced by a symlink to someone else's directory. prune with no grace
/// once deleted that directory's files; now they are foreign, never
/// listed through, and the next backup fails clearly, writing nothing
/// there.
#[test]
fn a_directory_store_whose_blobs_is_a_symlink() {
    let mut env = Env::new(Backend::Local);
    env.extra.push("grace_period = 0s".into());
    one_snapshot(&env);
    let store = env.store_dir();
    let victim = env.path().join("victim");
    fs::create_dir_all(victim.join("aa/bb")).unwrap();
    let hash = "aa".repeat(32);
    fs::write(victim.join("aa/bb").join(&hash), b"someone else's").unwrap();
    fs::write(victim.join("precious"), b"precious").unwrap();
    fs::rename(store.join("blobs"), env.path().join("blobs-moved")).unwrap();
    std::os::unix::fs::symlink(&victim, store.join("blobs")).unwrap();
    let before = forge::census(&victim, &victim.join("none"));
    let out = env.run(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("deleted 0 unreferenced"), "{said}");
    assert!(
        said.contains("left alone 1 object(s) that are not vaultik's"),
        "{said}"
    );
    let out = env.run(&["store", "info"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("foreign:      1 object(s)"));
    fs::write(env.src().join("g"), b"more data\n").unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("blobs is not a directory"),
        "{}",
        stderr(&out)
    );
    assert_eq!(forge::census(&victim, &victim.join("none")), before);
}

/// Objects that are symlinks or FIFOs in a directory store: never
/// followed, never waited on.
#[test]
fn objects_that_are_symlinks_or_fifos() {
    let env = Env::new(Backend::Local);
    let id = one_snapshot(&env);
    let store = env.store_dir();
    let dir = store.join("metadata").join(&id);
    // The metadata database replaced by a symlink to a readable file, the
    // manifest by a FIFO nobody writes to.
    let outside = env.path().join("outside.db");
    fs::copy(dir.join("db.zst.age"), &outside).unwrap();
    fs::remove_file(dir.join("db.zst.age")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("db.zst.age")).unwrap();
    let out = env.restore_to(&id, &env.path().join("t"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    fs::remove_file(dir.join("manifest.json.zst")).unwrap();
    let c = std::ffi::CString::new(dir.join("manifest.json.zst").as_os_str().as_encoded_bytes())
        .unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let mut cmd = env.cmd();
    cmd.args(["store", "info"]);
    let (code, out, err, _) = measured(cmd, env.path());
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("foreign:      2 object(s)"), "{out}\n{err}");
}

/// Every command refuses a store of a newer format, saying why.
fn refused_as_newer(env: &Env) {
    for args in [
        &["snapshot", "list"][..],
        &["snapshot", "create"],
        &["prune"],
    ] {
        let out = env.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("newer vaultik"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// The store's identity. Named (`store/<format>/<id>`, learnt from a
/// listing): names that are not one, a symlink or a FIFO named like one,
/// are foreign and ignored; one of a newer format is ignored beside a
/// readable one, and alone stops every command.
/// Kept in a `store.json` (a store from before names), forged, truncated or
/// oversized: read bounded and checked; the keyless commands warn and go
/// on, a backup (which keys its index by it) stops, naming it; a symlink is
/// not an object of the store, never followed. Nothing is written anywhere
/// else.
#[test]
fn a_forged_store_identity() {
    let env = Env::new(Backend::Local);
    let real = one_snapshot(&env);
    let ids = env.store_dir().join("store");
    let named: Vec<_> = fs::read_dir(ids.join("1"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(named.len(), 1, "{named:?}");
    let good = fs::read(ids.join("1").join(&named[0])).unwrap();
    let outside = env.path().join("outside.json");
    fs::write(&outside, &good).unwrap();

    // Named: junk beside the real one changes nothing.
    let other = "0123456789abcdef0123456789abcdef";
    std::os::unix::fs::symlink(&outside, ids.join("1").join(other)).unwrap();
    let fifo = std::ffi::CString::new(
        ids.join("1")
            .join("fedcba9876543210fedcba9876543210")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    fs::write(ids.join("1").join("NOT-HEX"), b"x").unwrap();
    fs::write(ids.join("README"), b"x").unwrap();
    let out = env.run(&["snapshot", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&real));
    fs::write(env.src().join("more"), b"named").unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("another store"), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(" 1 new chunks"), "the index was kept: {said}");
    // A newer format beside the readable one: ignored (a writer cannot lock
    // every host out by adding one); alone: refused by every command,
    // saying why.
    fs::create_dir_all(ids.join("7")).unwrap();
    fs::write(ids.join("7").join(other), b"{}").unwrap();
    fs::write(env.src().join("more"), b"newer beside").unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    fs::remove_file(ids.join("1").join(&named[0])).unwrap();
    refused_as_newer(&env);

    // store.json, as stores from before names kept it.
    fs::remove_dir_all(&ids).unwrap();
    let path = env.store_dir().join("store.json");
    type Damage<'a> = Box<dyn Fn() + 'a>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "forged",
            Box::new(|| {
                fs::write(
                    &path,
                    br#"{"vaultik_store": 1, "id": "../../x", "created": 1}"#,
                )
                .unwrap()
            }),
        ),
        (
            "truncated",
            Box::new(|| fs::write(&path, &good[..good.len() / 2]).unwrap()),
        ),
        (
            "oversized",
            Box::new(|| fs::write(&path, vec![b' '; 5000]).unwrap()),
        ),
    ];
    for (what, make) in cases {
        let _ = fs::remove_file(&path);
        make();
        let out = env.run(&["snapshot", "list"]);
        let err = stderr(&out);
        assert!(out.status.success(), "{what}: {err}");
        assert!(err.contains("store.json"), "{what}: {err}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&real),
            "{what}"
        );
        fs::write(env.src().join("more"), what).unwrap();
        let out = env.run(&["snapshot", "create"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(
            err.contains("store.json") && err.lines().count() == 1,
            "{what}: {err}"
        );
        assert!(!ids.exists(), "{what}: no identity named from a bad one");
    }
    // A symlink is not an object of the store: never followed; the backup
    // names an identity of its own (the index starts afresh, saying so).
    fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&outside, &path).unwrap();
    fs::write(env.src().join("more"), b"a symlink").unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("another store"), "{}", stderr(&out));
    assert!(ids.join("1").is_dir());
    fs::remove_dir_all(&ids).unwrap();
    assert_eq!(
        fs::read(&outside).unwrap(),
        good,
        "the symlink's target is untouched"
    );
    // A newer format: refused by every command, saying why.
    fs::remove_file(&path).unwrap();
    fs::write(
        &path,
        br#"{"vaultik_store": 7, "id": "0123456789abcdef0123456789abcdef", "created": 1}"#,
    )
    .unwrap();
    refused_as_newer(&env);
    // Restored, everything works again, and the identity is named.
    fs::write(&path, &good).unwrap();
    env.create();
    assert!(ids.join("1").join(&named[0]).is_file());
}

/// Deletion marks are named in keys (`gc/marked/<time>/<blob hash>`) and
/// learnt from listings. Forged ones: names that are not marks, a symlink
/// and a FIFO named like one, are foreign (never followed, never waited
/// on); a well-formed mark of a blob a snapshot still uses never gets it
/// deleted; a backup only uploads the marked blob's data again.
#[test]
fn forged_deletion_marks() {
    let mut env = Env::new(Backend::Local);
    env.extra.push("grace_period = 1s".into());
    env.write_config();
    let id = one_snapshot(&env);
    let blobs = env.blob_keys();
    assert_eq!(blobs.len(), 1);
    let hash = blobs[0].rsplit('/').next().unwrap().to_string();
    let marked = env.store_dir().join("gc/marked");
    let old = marked.join("2020-01-01T000000Z");
    fs::create_dir_all(&old).unwrap();
    // A mark from long ago of the blob the snapshot uses.
    fs::write(old.join(&hash), b"").unwrap();
    // Junk: not a hash, a hash with something after it, a symlink, a FIFO.
    let outside = env.path().join("outside");
    fs::write(&outside, b"outside").unwrap();
    fs::write(old.join("not-a-hash"), b"").unwrap();
    fs::write(marked.join("README"), b"").unwrap();
    std::os::unix::fs::symlink(&outside, old.join("a".repeat(64))).unwrap();
    let c = std::ffi::CString::new(
        old.join("b".repeat(64))
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    // A backup does not deduplicate against the marked blob: it uploads
    // its data again (under the same key).
    fs::write(env.src().join("g"), b"more\n").unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("marked for deletion"),
        "{}",
        stderr(&out)
    );
    // prune: the marked blob is referenced, so it stays; the junk is
    // counted as foreign and left alone.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = env.run(&["prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("deleted 0 unreferenced"), "{said}");
    assert!(said.contains("left alone 4 object(s)"), "{said}");
    assert!(env.blob_keys().contains(&blobs[0]));
    let target = env.path().join("r");
    env.restore_ok(&id, &target, &[]);
    env.restore_ok("latest", &env.path().join("r2"), &[]);
    assert_eq!(fs::read(&outside).unwrap(), b"outside");
}

/// `restore --stdout` of forged snapshots: a malformed chunk list, a size
/// that does not add up (a terabyte claimed), a chunk placed past its
/// blob, a path that is not a file; then a truncated blob and a blob that
/// is a symlink to someone else's copy. Each is refused with status 2,
/// naming what is wrong; nothing is written but the verified bytes before
/// a bad chunk; the spilled metadata leaves nothing in TMPDIR; nothing
/// outside changes.
#[test]
fn forged_streams_for_restore_to_stdout() {
    let env = Env::new(Backend::Local);
    env.write_config();
    let data = crate::util::tree::random_bytes(3 << 20, 21);
    let mut child = env
        .cmd()
        .args(["snapshot", "create", "--stdin", "img"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    assert!(child.wait().unwrap().success());
    let real = env.snapshot_ids().pop().unwrap();
    let base = forge::Base::of(&env, &real);
    let all: Vec<usize> = (0..base.chunks.len()).collect();
    let tmp = env.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let outside = env.path().join("outside");
    fs::write(&outside, b"someone else's").unwrap();
    let run = |id: &str, path: Option<&str>| {
        let mut args = vec!["restore", id, "--stdout"];
        args.extend(path);
        let out = env
            .cmd()
            .env("VAULTIK_PRIVATE_KEY", &env.identity)
            .env("TMPDIR", &tmp)
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(
            fs::read_dir(&tmp).unwrap().count(),
            0,
            "nothing left in TMPDIR"
        );
        assert_eq!(fs::read(&outside).unwrap(), b"someone else's");
        out
    };
    let t = 1_700_000_000u64;
    let mut n = 0;
    let mut next_id = || {
        n += 1;
        vaultik::layout::make_id("forger", "img", t + n)
    };
    let file = |chunks: Option<Vec<u8>>, size: u64| forge::Forged {
        chunks,
        size,
        ..forge::file(b"/stdin/img", 0o600)
    };
    let refused = |id: &str, path: Option<&str>, why: &str| {
        let out = run(id, path);
        assert_eq!(out.status.code(), Some(2), "{id}: {}", stderr(&out));
        assert!(stderr(&out).contains(why), "{id}: {}", stderr(&out));
        assert!(
            out.stdout.is_empty(),
            "{id}: wrote {} bytes",
            out.stdout.len()
        );
    };

    // A chunk list that is not whole ids.
    let id = next_id();
    let good = file(None, 0).with(&base, &all);
    let mut list = good.chunks.clone().unwrap();
    list.pop();
    forge::forge(&env, &id, &[file(Some(list), good.size)], Some(&base));
    refused(&id, None, "malformed entry");
    // A terabyte claimed for one chunk.
    let id = next_id();
    let one = file(None, 0).with(&base, &[0]);
    forge::forge(&env, &id, &[file(one.chunks.clone(), 1 << 40)], Some(&base));
    refused(&id, None, "does not match its chunks");
    // A chunk past the end of its blob.
    let id = next_id();
    let mut moved = forge::Base::of(&env, &real);
    moved.misplace(0, 1 << 40);
    forge::forge(&env, &id, &[file(None, 0).with(&moved, &all)], Some(&moved));
    refused(&id, None, "lies outside its blob");
    // Paths that are not one regular file.
    let id = next_id();
    forge::forge(
        &env,
        &id,
        &[
            forge::dir(b"/stdin"),
            forge::symlink(b"/stdin/img", b"/etc/shadow"),
        ],
        None,
    );
    refused(&id, None, "no file");
    refused(&id, Some("/stdin/img"), "not a regular file");
    refused(&id, Some("/stdin"), "not a regular file");
    // The real one still restores whole.
    let out = run(&real, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data);

    // Its blob truncated: what comes out is a checked prefix, then status 2.
    let key = env.blob_keys().pop().unwrap();
    let blob = env.store_dir().join(&key);
    let whole = fs::read(&blob).unwrap();
    fs::write(&blob, &whole[..whole.len() / 2]).unwrap();
    let out = run(&real, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("truncated stream"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.len() < data.len() && out.stdout == data[..out.stdout.len()]);
    // Its blob a symlink to a good copy elsewhere: never followed.
    let copy = env.path().join("copy");
    fs::write(&copy, &whole).unwrap();
    fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink(&copy, &blob).unwrap();
    refused(&real, None, "a symlink, not an object");
    assert_eq!(fs::read(&copy).unwrap(), whole);
    // And an oversized object where the blob was: read only as far as asked.
    fs::remove_file(&blob).unwrap();
    let mut big = whole.clone();
    big.resize(whole.len() + (64 << 20), 0);
    fs::write(&blob, &big).unwrap();
    let out = run(&real, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data);
}

/// Where forged manifests go, and the time their ids spell.
const FORGED_TIME: u64 = 1_767_225_600; // 2026-01-01T000000Z

/// A forged manifest for snapshot `<host>_x_2026-01-01T000000Z`: the head
/// of its JSON in one zstd frame, then `body` (the rest of the JSON,
/// compressed once and shared by many forgeries: a reader decompresses the
/// frames as one text), then a skippable frame padding it to `len` bytes.
fn forged(host: &str, body: &[u8], len: Option<usize>) -> (String, Vec<u8>) {
    let id = format!("{host}_x_2026-01-01T000000Z");
    let head = format!(
        r#"{{"format":1,"id":"{id}","hostname":"{host}","name":"x","time":{FORGED_TIME},"metadata_size":1,"blobs":["#
    );
    let mut data = zstd::bulk::compress(head.as_bytes(), 3).unwrap();
    data.extend_from_slice(body);
    if let Some(len) = len {
        let pad = len.checked_sub(data.len() + 8).expect("room to pad");
        data.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        data.extend_from_slice(&(pad as u32).to_le_bytes());
        data.resize(len, 0);
    }
    (id, data)
}

/// The JSON of `n` blob entries, from `keys`, closing the manifest.
fn blob_list(n: usize, keys: impl Fn(usize) -> String) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        write!(out, r#"{{"key":"{}","size":1}}"#, keys(i)).unwrap();
    }
    out.extend_from_slice(b"]}");
    out
}

/// A blob key of the layout made of a counter (distinct, and packs well).
fn counter_key(i: usize) -> String {
    let h = format!("{i:064x}");
    format!("blobs/{}/{}/{h}", &h[..2], &h[2..4])
}

fn put_manifest(env: &Env, id: &str, data: &[u8]) {
    let dir = env.store_dir().join("metadata").join(id);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("manifest.json.zst"), data).unwrap();
}

/// Issue 28: manifest bounds are per command, not only per object. Beside
/// two real snapshots, 420 forged manifests: 120 JSON bombs of one real
/// blob key repeated (32 MiB each, 3 KB stored), 120 of distinct keys
/// (4 MiB each), 120 valid ones that decompress to exactly the most their
/// size allows (16 times), and 60 of junk. Every keyless command and the
/// nightly `snapshot create --prune` ends in seconds under 200 MB, names
/// each refused manifest on one line, lists and keeps the real snapshots,
/// and changes nothing it should not; the real snapshots restore
/// identical. Once the refused ones are removed, a purge honours what the
/// valid forgeries reference and removes what retention says.
#[test]
fn many_forged_manifests_cost_what_their_size_justifies() {
    let mut env = Env::new(Backend::Local);
    env.extra.push("grace_period = 0s".into());
    env.extra.push("keep_latest = 2".into());
    // Two real snapshots that share no blob: the first one's blob is
    // referenced only by it (and the valid forgeries). Each is restored
    // at once, in a clean store: what later restores must match.
    let clean = env.path().join("clean");
    let restore_clean = |id: &str, n: usize| {
        let target = clean.join(n.to_string());
        env.restore_ok(id, &target, &[]);
        crate::util::tree::assert_same_tree(
            &env.src(),
            &crate::core::restored(&target, &env.src()),
        );
    };
    fs::write(
        env.src().join("first"),
        crate::util::tree::random_bytes(300_000, 1),
    )
    .unwrap();
    env.create();
    let first_blobs = env.blob_keys();
    assert_eq!(first_blobs.len(), 1, "{first_blobs:?}");
    restore_clean(&env.snapshot_ids()[0], 0);
    std::thread::sleep(Duration::from_millis(1100));
    fs::remove_file(env.src().join("first")).unwrap();
    fs::write(
        env.src().join("second"),
        crate::util::tree::random_bytes(200_000, 2),
    )
    .unwrap();
    env.create();
    let real = env.snapshot_ids();
    assert_eq!(real.len(), 2, "{real:?}");
    restore_clean(&real[1], 1);
    let blob = &first_blobs[0];

    let mut refused: Vec<String> = Vec::new();
    let mut valid: Vec<String> = Vec::new();
    // One real key repeated to 32 MiB: packs 10,000 times.
    let entry = format!(r#"{{"key":"{blob}","size":1}}"#);
    let one_key = zstd::bulk::compress(
        &blob_list((32 << 20) / (entry.len() + 1), |_| blob.clone()),
        3,
    )
    .unwrap();
    for i in 0..120 {
        let (id, data) = forged(&format!("bomb{i}"), &one_key, None);
        assert!(data.len() < 4096, "{}", data.len());
        put_manifest(&env, &id, &data);
        refused.push(id);
    }
    // Distinct keys to 4 MiB: packs about 100 times.
    let distinct = zstd::bulk::compress(&blob_list(40_000, counter_key), 3).unwrap();
    for i in 0..120 {
        let (id, data) = forged(&format!("many{i}"), &distinct, None);
        put_manifest(&env, &id, &data);
        refused.push(id);
    }
    // Valid, at the most allowed: 16 times their stored size. Each names
    // the first snapshot's blob, and 2,500 absent ones.
    let list = blob_list(
        2_501,
        |i| {
            if i == 0 { blob.clone() } else { counter_key(i) }
        },
    );
    let packed = zstd::bulk::compress(&list, 19).unwrap();
    for i in 0..120 {
        let host = format!("ratio{i}");
        let head_len = forged(&host, b"", None).1.len();
        let text = zstd::stream::decode_all(&forged(&host, &packed, None).1[..]).unwrap();
        let least = text.len().div_ceil(16);
        assert!(head_len + packed.len() + 8 <= least);
        let (id, data) = forged(&host, &packed, Some(least));
        put_manifest(&env, &id, &data);
        valid.push(id);
    }
    // Junk: not zstd, not JSON, empty, cut short, a blob listed twice,
    // an id other than the one it is stored under.
    let bomb = forged("x", &one_key, None).1;
    let twice = zstd::bulk::compress(&blob_list(2, |_| blob.clone()), 3).unwrap();
    let one = zstd::bulk::compress(&blob_list(1, counter_key), 3).unwrap();
    for i in 0..10 {
        let id = |kind: &str| format!("{kind}{i}_x_2026-01-01T000000Z");
        for (id, data) in [
            (id("random"), crate::util::tree::random_bytes(2000, i)),
            (
                id("text"),
                zstd::bulk::compress(b"hello, not JSON", 3).unwrap(),
            ),
            (id("empty"), Vec::new()),
            (id("cut"), bomb[..bomb.len() / 2].to_vec()),
            forged(&format!("twice{i}"), &twice, None),
            (id("wrongid"), forged(&format!("other{i}"), &one, None).1),
        ] {
            put_manifest(&env, &id, &data);
            refused.push(id);
        }
    }
    let stored: u64 = walk_sizes(&env.store_dir().join("metadata"));
    eprintln!(
        "{} forged manifests, {stored} bytes of metadata in the store",
        refused.len() + valid.len()
    );

    // The real snapshots restore identical beside the forgeries.
    for (i, id) in real.iter().enumerate() {
        let target = env.path().join(format!("r{i}"));
        env.restore_ok(id, &target, &[]);
        crate::util::tree::assert_same_tree(
            &crate::core::restored(&clean.join(i.to_string()), &env.src()),
            &crate::core::restored(&target, &env.src()),
        );
        fs::remove_dir_all(&target).unwrap();
    }

    // Measured from outside the test's directory, which must not change.
    let scratch = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = env.cmd();
        cmd.args(args);
        let started = std::time::Instant::now();
        let (code, out, err, rss) = measured(cmd, scratch.path());
        let took = started.elapsed();
        eprintln!("{args:?}: exit {code}, {took:?}, {rss} KiB peak");
        assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
        assert!(rss < 200 * 1024, "{args:?}: peak RSS {rss} KiB");
        (code, out, err)
    };
    // Each refused manifest is named on one line of its own.
    let named_once = |err: &str| {
        for id in &refused {
            let lines: Vec<&str> = err.lines().filter(|l| l.contains(id.as_str())).collect();
            assert_eq!(lines.len(), 1, "{id}: {lines:?}");
            assert!(
                lines[0].starts_with("vaultik: warning: manifest "),
                "{}",
                lines[0]
            );
        }
        assert_eq!(err.lines().count(), refused.len() + 1, "{err}");
    };
    let before = env.objects();
    let outside = forge::census(env.path(), &env.store_dir());

    let (code, out, err) = run(&["snapshot", "list"]);
    assert_eq!(code, 1, "{err}");
    named_once(&err);
    assert!(err.contains("16 times its stored size"), "{err}");
    assert!(err.contains("lists blob") && err.contains("twice"), "{err}");
    for id in real.iter().chain(&valid) {
        assert!(out.contains(id.as_str()), "{id}: {out}");
    }
    let (code, out, err) = run(&["snapshot", "list", "--json"]);
    assert_eq!(code, 1, "{err}");
    named_once(&err);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), real.len() + valid.len());
    let ratio0 = listed
        .iter()
        .find(|s| s["id"] == valid[0].as_str())
        .unwrap();
    assert_eq!(ratio0["blobs"], 2_501);
    assert_eq!(ratio0["size"], 2_502);
    let (code, out, err) = run(&["store", "info"]);
    assert_eq!(code, 1, "{err}");
    named_once(&err);
    assert!(
        out.contains(&format!("damaged:      {} manifest(s)", refused.len())),
        "{out}"
    );
    assert!(
        out.contains(&format!("snapshots:    {} ", real.len() + valid.len())),
        "{out}"
    );
    assert!(out.contains("referenced:   2, "), "{out}");
    let (code, _, err) = run(&["prune", "--dry-run"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("prune deletes nothing")
            && err.contains(&format!("({} damaged)", refused.len()))
            && refused.iter().any(|id| err.contains(id.as_str())),
        "{err}"
    );
    // Read-only: nothing changed, in the store or outside it.
    assert!(env.objects() == before);
    same_census(&forge::census(env.path(), &env.store_dir()), &outside);

    // The nightly job: the backup is made, the purge deletes nothing and
    // says why on one line.
    fs::write(env.src().join("third"), b"third\n").unwrap();
    let src_before = forge::census(&env.src(), &env.src().join("none"));
    let (code, out, err) = run(&["snapshot", "create", "--prune"]);
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("snapshot testhost_data_"), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("purge deletes nothing"), "{err}");
    same_census(
        &forge::census(&env.src(), &env.src().join("none")),
        &src_before,
    );
    let now_real = ids_of(&env, "testhost");
    assert_eq!(now_real.len(), 3, "{now_real:?}");
    assert_eq!(&now_real[..2], &real[..]);
    restore_clean(&now_real[2], 2);

    // Without the refused ones, the purge runs: the oldest real snapshot
    // goes, its blob stays (the valid forgeries name it), the forgeries of
    // other hosts stay.
    let mut args = vec!["snapshot", "remove"];
    args.extend(refused.iter().map(String::as_str));
    env.ok(&args);
    fs::write(env.src().join("fourth"), b"fourth\n").unwrap();
    let (code, out, err) = run(&["snapshot", "create", "--prune"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("removed 2 snapshot(s)"), "{out}");
    assert!(env.blob_keys().contains(blob), "{out}");
    let left = ids_of(&env, "testhost");
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[0], now_real[2]);
    assert_eq!(env.snapshot_ids().len(), 2 + valid.len());
    let target = env.path().join("r2");
    env.restore_ok(&left[0], &target, &[]);
    crate::util::tree::assert_same_tree(
        &crate::core::restored(&clean.join("2"), &env.src()),
        &crate::core::restored(&target, &env.src()),
    );
}

/// The snapshots of `host`, oldest first, from `snapshot list --json`
/// (which lists them also when it names damaged manifests).
fn ids_of(env: &Env, host: &str) -> Vec<String> {
    let out = env.run(&["snapshot", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["hostname"] == host)
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// Two censuses (`forge::census`) agree; else the entries that differ,
/// shortened.
fn same_census(now: &[String], before: &[String]) {
    let short = |v: &[String], other: &[String]| -> Vec<String> {
        v.iter()
            .filter(|l| !other.contains(l))
            .map(|l| l.chars().take(120).collect())
            .collect()
    };
    assert!(
        now == before,
        "new or changed: {:?}\ngone or changed: {:?}",
        short(now, before),
        short(before, now)
    );
}

/// Bytes of every file under `dir`.
fn walk_sizes(dir: &Path) -> u64 {
    crate::util::tree::files_under(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}
