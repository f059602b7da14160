//! Restores of forged snapshot metadata: whoever holds the public key and
//! write access to the bucket can plant a snapshot, so restore must never
//! write, chmod or chown anything outside its target, whatever it says.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::str::FromStr;

use crate::util::{Backend, Env, setting, stderr};

struct Entry {
    path: Vec<u8>,
    kind: i64,
    mode: u32,
    size: u64,
    target: Option<Vec<u8>>,
    /// The first path of a hard link.
    link: Option<Vec<u8>>,
}

fn file(path: &[u8], mode: u32) -> Entry {
    Entry {
        path: path.to_vec(),
        kind: 2,
        mode,
        size: 0,
        target: None,
        link: None,
    }
}

/// Write a snapshot with these entries (no data) into `env`'s local store,
/// encrypted to its recipient like a real one.
fn forge(env: &Env, id: &str, entries: &[Entry]) {
    let db_path = env.path().join("forged.sqlite");
    let _ = fs::remove_file(&db_path);
    {
        let conn = rusqlite::Connection::open(&db_path).unwrap();
        conn.execute_batch(
            "CREATE TABLE info(key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE entries(id INTEGER PRIMARY KEY, path BLOB NOT NULL, kind INTEGER NOT NULL,
               mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, size INTEGER NOT NULL,
               mtime_ns INTEGER NOT NULL, rdev INTEGER NOT NULL DEFAULT 0, target BLOB, chunks BLOB,
               link BLOB);
             CREATE TABLE blobs(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, size INTEGER NOT NULL);
             CREATE TABLE chunks(id BLOB PRIMARY KEY, blob INTEGER NOT NULL, offset INTEGER NOT NULL,
               length INTEGER NOT NULL, size INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO info VALUES ('format', '1');",
        )
        .unwrap();
        for e in entries {
            conn.execute(
                "INSERT INTO entries(path, kind, mode, uid, gid, size, mtime_ns, target, chunks, link)
                 VALUES (?1, ?2, ?3, 0, 0, ?4, 0, ?5, ?6, ?7)",
                rusqlite::params![
                    e.path,
                    e.kind,
                    e.mode,
                    e.size as i64,
                    e.target,
                    if e.kind == 2 {
                        Some(Vec::<u8>::new())
                    } else {
                        None
                    },
                    e.link
                ],
            )
            .unwrap();
        }
    }
    let db = fs::read(&db_path).unwrap();
    let mut plain = (db.len() as u64).to_le_bytes().to_vec();
    plain.extend_from_slice(&db);
    let compressed = zstd::bulk::compress(&plain, 3).unwrap();
    let recipient = age::x25519::Recipient::from_str(&env.recipient).unwrap();
    let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .unwrap();
    let mut sealed = Vec::new();
    let mut w = enc.wrap_output(&mut sealed).unwrap();
    w.write_all(&compressed).unwrap();
    w.finish().unwrap();
    let dir = env.store_dir().join("metadata").join(id);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("db.zst.age"), &sealed).unwrap();
    let manifest = serde_json::json!({
        "format": 1, "id": id, "hostname": "evil", "name": "x", "time": 1,
        "metadata_size": sealed.len(), "blobs": [],
    });
    fs::write(
        dir.join("manifest.json.zst"),
        zstd::bulk::compress(manifest.to_string().as_bytes(), 3).unwrap(),
    )
    .unwrap();
}

#[test]
fn forged_metadata_never_reaches_outside_the_target() {
    let env = Env::new(Backend::Local);
    fs::create_dir_all(env.store_dir()).unwrap();
    let outside = env.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), b"precious").unwrap();
    fs::set_permissions(outside.join("victim"), fs::Permissions::from_mode(0o600)).unwrap();
    let outside_bytes = outside.as_os_str().as_encoded_bytes().to_vec();
    let victim_bytes = outside
        .join("victim")
        .as_os_str()
        .as_encoded_bytes()
        .to_vec();
    let link = |path: &[u8], to: &[u8]| Entry {
        path: path.to_vec(),
        kind: 3,
        mode: 0o777,
        size: 0,
        target: Some(to.to_vec()),
        link: None,
    };
    let entries = vec![
        file(b"/ok.txt", 0o644),
        file(b"/../escape.txt", 0o644),
        file(b"/a/../../escape2.txt", 0o644),
        file(b"relative.txt", 0o644),
        // A symlink, then the same path as a file: chmod must not follow it.
        link(b"/m", &victim_bytes),
        file(b"/m", 0o666),
        // A symlinked parent planted before a file below it.
        link(b"/p", &outside_bytes),
        file(b"/p/planted.txt", 0o644),
        // A directory whose parent becomes a symlink later.
        Entry {
            path: b"/d/sub".to_vec(),
            kind: 1,
            mode: 0o777,
            size: 0,
            target: None,
            link: None,
        },
        link(b"/d", &outside_bytes),
        // Enormous sizes that the chunks do not add up to.
        Entry {
            path: b"/huge".to_vec(),
            kind: 2,
            mode: 0o644,
            size: 1 << 50,
            target: None,
            link: None,
        },
    ];
    let id = "evil_x_2026-01-01T000000Z";
    forge(&env, id, &entries);
    env.write_config();
    let target = env.path().join("restore");
    let out = env.restore_to(id, &target, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    for named in ["/../escape.txt", "relative.txt", "/huge"] {
        assert!(err.contains(named), "{named} not reported: {err}");
    }
    // Nothing outside changed: no new files, the victim's mode and content.
    let names: Vec<_> = fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("victim")]);
    let m = fs::metadata(outside.join("victim")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"precious");
    assert!(!env.path().join("escape.txt").exists());
    assert!(!env.path().join("escape2.txt").exists());
    // What was safe was restored.
    assert!(target.join("ok.txt").is_file());
    assert!(!target.join("huge").exists());
}

/// Seeded random forged metadata: paths from pieces like `..`, `.`, empty
/// names and odd bytes, symlinks pointing outside, hard links to anything,
/// every entry kind (and unknown ones), odd modes and sizes. Whatever a
/// restore makes of it, it never crashes, reports in one-line messages, and
/// changes nothing outside its target.
#[test]
fn fuzzed_metadata_never_reaches_outside_the_target() {
    let env = Env::new(Backend::Local);
    fs::create_dir_all(env.store_dir()).unwrap();
    env.write_config();
    let outside = env.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("victim"), b"precious").unwrap();
    fs::set_permissions(outside.join("victim"), fs::Permissions::from_mode(0o600)).unwrap();
    let outside_bytes = outside.as_os_str().as_encoded_bytes().to_vec();
    let mut victim_bytes = outside_bytes.clone();
    victim_bytes.extend_from_slice(b"/victim");
    let pieces: Vec<Vec<u8>> = [
        &b"a"[..],
        b"b",
        b"m",
        b"p",
        b"..",
        b".",
        b"",
        b"x y",
        b"\n",
        b"\xff\xfe",
        b"-",
    ]
    .iter()
    .map(|p| p.to_vec())
    .chain([vec![b'z'; 300], "\u{e9}t\u{e9}".as_bytes().to_vec()])
    .collect();
    let targets: Vec<Vec<u8>> = vec![
        outside_bytes.clone(),
        victim_bytes,
        b"..".to_vec(),
        b"../../..".to_vec(),
        b"/".to_vec(),
        b"a".to_vec(),
    ];
    // 40 rounds in the suite; tests/soak.sh sets more and a new seed.
    let rounds = setting("VAULTIK_HOSTILE_ROUNDS", 40);
    let mut rng: u64 = 0x5eed_4057 ^ setting("VAULTIK_HOSTILE_SEED", 0);
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n.max(1)
    };
    let (mut clean, mut refused, mut restored_any) = (0, 0, 0);
    for round in 0..rounds {
        let mut entries: Vec<Entry> = Vec::new();
        for _ in 0..1 + next(14) {
            let mut path = if next(10) == 0 {
                Vec::new()
            } else {
                b"/".to_vec()
            };
            for k in 0..1 + next(4) {
                if k > 0 {
                    path.push(b'/');
                }
                path.extend_from_slice(&pieces[next(pieces.len() as u64) as usize]);
            }
            // Unknown kinds (the whole restore refuses the metadata) are rare.
            let kind = if next(40) == 0 {
                9
            } else {
                [1, 1, 2, 2, 2, 3, 3, 4, 5, 6, 7][next(11) as usize]
            };
            let link = match next(4) {
                0 if !entries.is_empty() => {
                    Some(entries[next(entries.len() as u64) as usize].path.clone())
                }
                1 => Some(targets[next(targets.len() as u64) as usize].clone()),
                _ => None,
            };
            entries.push(Entry {
                path,
                kind,
                mode: (next(0o10000) as u32) | if next(4) == 0 { 0o4000 } else { 0 },
                size: [0, 0, 0, 5, 1 << 50][next(5) as usize],
                target: (kind == 3 || next(8) == 0)
                    .then(|| targets[next(targets.len() as u64) as usize].clone()),
                link,
            });
        }
        let id = format!("evil_x_2026-01-01T0000{round:02}Z");
        forge(&env, &id, &entries);
        let target = env.path().join(format!("restore{round}"));
        let out = env.restore_to(&id, &target, &[]);
        let err = stderr(&out);
        assert!(
            matches!(out.status.code(), Some(0..=2)),
            "round {round}: {:?}\n{err}",
            out.status
        );
        for line in err.lines() {
            assert!(line.starts_with("vaultik: "), "round {round}: {line:?}");
        }
        match out.status.code() {
            Some(0) => clean += 1,
            _ => refused += 1,
        }
        if fs::read_dir(&target).is_ok_and(|mut d| d.next().is_some()) {
            restored_any += 1;
        }
        let names: Vec<_> = fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("victim")],
            "round {round}"
        );
        let m = fs::metadata(outside.join("victim")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600, "round {round}");
        assert_eq!(fs::read(outside.join("victim")).unwrap(), b"precious");
        // Nothing new beside the target either.
        for e in fs::read_dir(env.path()).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                [
                    "src",
                    "store",
                    "state",
                    "outside",
                    "vaultik.conf",
                    "forged.sqlite"
                ]
                .contains(&name.as_str())
                    || name.starts_with("restore"),
                "round {round}: {name} appeared next to the target"
            );
        }
    }
    eprintln!(
        "hostile rounds: {rounds}: {clean} clean, {refused} with problems reported, {restored_any} wrote something"
    );
    // The inputs reach both outcomes, and restores that do write.
    assert!(
        refused > 0 && restored_any > rounds / 2,
        "{clean} {refused} {restored_any}"
    );
}

/// Damage in the store is a clear one-line error naming the object, and a
/// restore that cannot read its metadata writes nothing.
#[test]
fn damaged_metadata_and_missing_blobs_are_named() {
    let env = Env::new(Backend::Local);
    fs::write(env.src().join("a"), b"alpha\n").unwrap();
    fs::write(
        env.src().join("b"),
        crate::util::tree::random_bytes(300_000, 5),
    )
    .unwrap();
    env.create();
    let id = env.snapshot_ids().pop().unwrap();
    let store = env.store_dir();
    let db = store.join(format!("metadata/{id}/db.zst.age"));
    let manifest = store.join(format!("metadata/{id}/manifest.json.zst"));
    let good_db = fs::read(&db).unwrap();
    let one_line = |out: &std::process::Output, names: &str| {
        assert!(!out.status.success());
        let err = stderr(out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(names), "names {names}: {err}");
    };

    // Truncated, then bit-flipped metadata: nothing is written.
    for damaged in [good_db[..good_db.len() / 2].to_vec(), {
        let mut d = good_db.clone();
        let at = d.len() - 40;
        d[at] ^= 0x10;
        d
    }] {
        fs::write(&db, &damaged).unwrap();
        let target = env.path().join("t-meta");
        let out = env.restore_to(&id, &target, &[]);
        one_line(&out, "db.zst.age");
        assert!(!target.exists(), "a failed restore created its target");
    }
    fs::write(&db, &good_db).unwrap();

    // A missing blob: the files that need it are named and not left behind.
    let blob = env.blob_keys().pop().unwrap();
    let blob_path = store.join(&blob);
    let saved = fs::read(&blob_path).unwrap();
    fs::remove_file(&blob_path).unwrap();
    let target = env.path().join("t-blob");
    let out = env.restore_to(&id, &target, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("/b") && err.contains("not restored"), "{err}");
    assert!(
        !crate::core::restored(&target, &env.src())
            .join("b")
            .exists()
    );
    fs::write(&blob_path, saved).unwrap();

    // A manifest full of garbage: named by list, which shows the rest and
    // exits 1; an unknown id is refused.
    fs::write(&manifest, b"\x28\xb5\x2f\xfdgarbage").unwrap();
    let out = env.run(&["snapshot", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("manifest metadata/{id}/manifest.json.zst")),
        "{err}"
    );
    assert!(err.lines().all(|l| l.starts_with("vaultik: ")), "{err}");
    let out = env.restore_to(
        "testhost_data_2001-01-01T000000Z",
        &env.path().join("t-x"),
        &[],
    );
    one_line(&out, "testhost_data_2001-01-01T000000Z");
}
