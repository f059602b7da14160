//! Restores of forged snapshots: whoever holds the public key and write
//! access to the store can plant a snapshot, so a restore must never
//! create, remove, write, chmod or chown anything outside its target,
//! whatever the snapshot says, in whatever order, failing wherever.
//!
//! Every case runs against a target inside a scratch directory that holds
//! a sentinel tree beside it (a file, a directory, a symlink, a FIFO, a
//! file with a hard link); after each restore the whole scratch directory
//! outside the target must be identical: names, kinds, modes, owners, link
//! counts, contents. As root (CI), owners and device nodes are restored
//! too, which is where a write outside the target would hurt most.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::util::forge::{
    self, Base, Forged, blockdev, census, chardev, dir, fifo, file, hard_link, symlink,
};
use crate::util::{Backend, Env, setting, stderr};

/// The scratch directory of a hostile restore: a sentinel tree, and the
/// targets under `targets/`.
pub(crate) struct Scratch {
    pub(crate) root: PathBuf,
    before: Vec<String>,
    /// A real snapshot whose chunks forged files may use.
    pub(crate) base: Base,
    rounds: std::cell::Cell<usize>,
}

fn bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_encoded_bytes().to_vec()
}

impl Scratch {
    pub(crate) fn new(env: &Env) -> Scratch {
        // Real content for forged files: a snapshot of two small files and
        // one of several chunks.
        fs::write(env.src().join("small"), b"small file\n").unwrap();
        fs::write(
            env.src().join("big"),
            crate::util::tree::random_bytes(3 << 20, 9),
        )
        .unwrap();
        env.create();
        let real = env.snapshot_ids().pop().unwrap();
        let base = Base::of(env, &real);
        assert!(base.chunks.len() >= 3, "{}", base.chunks.len());
        let root = env.path().join("scratch");
        let s = root.join("sentinel");
        fs::create_dir_all(s.join("sub")).unwrap();
        fs::write(s.join("shadow"), b"precious").unwrap();
        fs::set_permissions(s.join("shadow"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(s.join("sub/inner"), b"inner").unwrap();
        fs::set_permissions(s.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("shadow", s.join("link")).unwrap();
        fs::hard_link(s.join("shadow"), s.join("shadow-link")).unwrap();
        let c = std::ffi::CString::new(bytes(&s.join("pipe"))).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
        fs::write(root.join("victim"), b"victim").unwrap();
        fs::create_dir_all(root.join("targets")).unwrap();
        let before = census(&root, &root.join("targets"));
        Scratch {
            root,
            before,
            base,
            rounds: std::cell::Cell::new(0),
        }
    }

    pub(crate) fn sentinel(&self) -> PathBuf {
        self.root.join("sentinel")
    }

    /// Forge `entries` as a snapshot, restore it into a fresh target (or
    /// `into`, prepared by the caller), check nothing outside changed.
    /// Returns the restore's exit code, stderr and target.
    fn next(&self) -> usize {
        self.rounds.set(self.rounds.get() + 1);
        self.rounds.get()
    }

    pub(crate) fn restore(
        &self,
        env: &Env,
        label: &str,
        entries: &[Forged],
    ) -> (i32, String, PathBuf) {
        let target = self.root.join("targets").join(format!("t{}", self.next()));
        self.restore_into(env, label, entries, &target, &[])
    }

    /// `restore` into `target`, with `flags` (`--delete`...).
    fn restore_into(
        &self,
        env: &Env,
        label: &str,
        entries: &[Forged],
        target: &Path,
        flags: &[&str],
    ) -> (i32, String, PathBuf) {
        let n = self.next();
        let id = format!(
            "evil_x_2026-01-01T{:02}{:02}{:02}Z",
            n / 3600,
            n / 60 % 60,
            n % 60
        );
        forge::forge(env, &id, entries, Some(&self.base));
        // Flags may come after the PATHs `restore_to` appends.
        let out = env.restore_to(&id, target, flags);
        let err = stderr(&out);
        let code = out.status.code().unwrap_or(-1);
        assert!(matches!(code, 0 | 2), "{label}: {:?}\n{err}", out.status);
        for line in err.lines() {
            assert!(line.starts_with("vaultik: "), "{label}: {line:?}");
        }
        assert_eq!(
            census(&self.root, &self.root.join("targets")),
            self.before,
            "{label}: something outside the target changed\n{err}"
        );
        (code, err, target.to_path_buf())
    }
}

/// Every one of `names` is in the restore's warnings.
pub(crate) fn assert_named(err: &str, names: &[&str]) {
    for named in names {
        assert!(err.contains(named), "{named}: {err}");
    }
}

pub(crate) fn root_or_skip(what: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED {what}: needs root (owners and device nodes are restored only as root)");
    false
}

/// The first reproduction of the issue, then every entry kind below a
/// parent that a later entry tries to turn into a symlink out of the target.
#[test]
fn a_parent_that_changes_kind_after_its_child_was_made() {
    let env = Env::new(Backend::Local);
    let sc = Scratch::new(&env);
    let as_root = root_or_skip("device nodes in a_parent_that_changes_kind (FIFOs still run)");
    let out = |p: &str| {
        bytes(&sc.sentinel())
            .into_iter()
            .chain(p.bytes())
            .collect::<Vec<u8>>()
    };
    let sentinel_abs = out("");
    let b = &sc.base;
    // The repro: a symlink /a/x with no target (makes the
    // directory /a, then fails), /a -> ../../sentinel (once replaced the
    // directory the cache already trusted), then /a/shadow as a FIFO: the
    // sentinel's shadow was unlinked and a 0666 FIFO put in its place.
    // As root, a character device there too.
    let repro = |last: Forged| {
        vec![
            Forged {
                target: None,
                ..symlink(b"/a/x", b"")
            },
            symlink(b"/a", b"../../sentinel"),
            last,
        ]
    };
    let (code, err, t) = sc.restore(&env, "the issue's repro", &repro(fifo(b"/a/shadow")));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/a: duplicate path"), "{err}");
    assert!(
        fs::symlink_metadata(t.join("a/shadow"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    if as_root {
        let (code, err, t) = sc.restore(&env, "the repro, a device", &repro(chardev(b"/a/shadow")));
        assert_eq!(code, 2, "{err}");
        assert!(
            fs::symlink_metadata(t.join("a/shadow"))
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }
    // Then with every kind below such a parent, and more ways to change it.
    let mut entries = vec![
        Forged {
            target: None,
            ..symlink(b"/a/x", b"")
        },
        symlink(b"/a", b"../../sentinel"),
        fifo(b"/a/shadow"),
        file(b"/a/f", 0o4755).with(b, &[0]).owned(0, 0),
        file(b"/a/multi", 0o644).with(b, &[1, 2]),
        dir(b"/a/sub"),
        // A real directory entry, a child, then the directory as a symlink.
        dir(b"/d"),
        file(b"/d/f", 0o644).with(b, &[0]),
        symlink(b"/d", &sentinel_abs),
        fifo(b"/d/pipe2"),
        // A file, then something below it, then the file as a directory.
        file(b"/e", 0o644),
        file(b"/e/f", 0o644),
        dir(b"/e"),
        // The target's own entry as something else.
        symlink(b"/", &sentinel_abs),
    ];
    if as_root {
        entries.extend([
            chardev(b"/a/disk"),
            blockdev(b"/a/loop"),
            chardev(b"/d/null"),
        ]);
    }
    let (code, err, t) = sc.restore(&env, "kind changes", &entries);
    assert_eq!(code, 2, "{err}");
    assert_named(
        &err,
        &[
            "/a: duplicate path",
            "/d: duplicate path",
            "/e/f: /e is not a directory",
            "/: duplicate",
        ],
    );
    assert!(fs::symlink_metadata(t.join("a")).unwrap().is_dir());
    assert!(
        fs::symlink_metadata(t.join("a/shadow"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(fs::metadata(t.join("a/f")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(
        fs::read(t.join("a/multi")).unwrap().len() as u64,
        b.chunks[1].1 + b.chunks[2].1
    );
    assert!(fs::symlink_metadata(t.join("d")).unwrap().is_dir());
    if as_root {
        assert!(
            fs::symlink_metadata(t.join("a/disk"))
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }
}

use std::os::unix::fs::FileTypeExt;

/// Duplicate and overlapping paths, symlink chains with relative and
/// absolute targets, FIFOs and device nodes below symlinks, hard links to
/// paths outside.
#[test]
fn duplicates_symlink_chains_and_links_outside() {
    let env = Env::new(Backend::Local);
    let sc = Scratch::new(&env);
    let as_root = rustix::process::geteuid().is_root();
    let sentinel = bytes(&sc.sentinel());
    let shadow = bytes(&sc.sentinel().join("shadow"));
    let victim = bytes(&sc.root.join("victim"));
    let b = &sc.base;
    let mut entries = vec![
        // The same path as every kind in turn.
        file(b"/x", 0o600).with(b, &[0]),
        dir(b"/x"),
        symlink(b"/x", &sentinel),
        fifo(b"/x"),
        hard_link(b"/x", &shadow),
        dir(b"/y"),
        file(b"/y", 0o644),
        // Chains: relative and absolute, and entries below them.
        symlink(b"/l1", b"l2"),
        symlink(b"/l2", b"../../sentinel"),
        symlink(b"/l3", &sentinel),
        symlink(b"/l4", b"../../../../../../../../.."),
        file(b"/l1/f", 0o644).with(b, &[0]),
        dir(b"/l2/sub"),
        fifo(b"/l3/pipe"),
        file(b"/l4/etc/passwd", 0o644).with(b, &[0]),
        hard_link(b"/l3/shadow", b"/x"),
        // Hard links to paths outside the snapshot or the target.
        hard_link(b"/h1", &shadow),
        hard_link(b"/h2", &victim),
        hard_link(b"/h3", b"/../victim"),
        hard_link(b"/h4", b"/l3/shadow"),
        hard_link(b"/h5", b"/l1"),
        hard_link(b"/h6", b"/y"),
        file(b"/real", 0o640).with(b, &[1, 2]),
        hard_link(b"/h7", b"/real"),
        file(b"/one", 0o640).with(b, &[0]),
        hard_link(b"/h8", b"/one"),
    ];
    if as_root {
        entries.extend([chardev(b"/l2/null"), blockdev(b"/l3/loop")]);
    }
    let (code, err, t) = sc.restore(&env, "duplicates and chains", &entries);
    assert_eq!(code, 2, "{err}");
    assert_named(
        &err,
        &[
            "/x: duplicate",
            "/y: duplicate",
            "/l1/f: /l1 is not a directory",
            "/l3/pipe: /l3 is not",
        ],
    );
    assert_eq!(fs::read(t.join("x")).unwrap().len() as u64, b.chunks[0].1);
    assert_eq!(
        fs::read_link(t.join("l4")).unwrap(),
        Path::new("../../../../../../../../..")
    );
    // Hard links: to paths of the snapshot only; links to the rest are
    // files of their own.
    let ino = |p: &str| fs::symlink_metadata(t.join(p)).unwrap().ino();
    assert_eq!(ino("h7"), ino("real"));
    assert_eq!(ino("h8"), ino("one"));
    assert_ne!(
        ino("h1"),
        fs::metadata(sc.sentinel().join("shadow")).unwrap().ino()
    );
    assert!(fs::symlink_metadata(t.join("h5")).unwrap().is_file());
}

/// Every entry kind failing at each step (made, written, linked), and
/// entries below and after the failures.
#[test]
fn entries_failing_at_every_step() {
    let env = Env::new(Backend::Local);
    let sc = Scratch::new(&env);
    let as_root = rustix::process::geteuid().is_root();
    let long = vec![b'n'; 300];
    let under_long = |rest: &[u8]| {
        let mut p = b"/".to_vec();
        p.extend_from_slice(&long);
        p.extend_from_slice(rest);
        p
    };
    let sentinel = bytes(&sc.sentinel());
    let mut sc = sc;
    let bad = sc.base.bad_chunk(0);
    let sc = sc;
    let b = &sc.base;
    let mut entries = vec![
        // Made: names too long for any file system.
        dir(&under_long(b"")),
        file(&under_long(b"/child"), 0o644).with(b, &[0]),
        symlink(&under_long(b"/link"), &sentinel),
        fifo(&under_long(b"/pipe")),
        file(&[b"/f-".as_slice(), &long].concat(), 0o644).with(b, &[0]),
        file(&[b"/m-".as_slice(), &long].concat(), 0o644).with(b, &[1, 2]),
        symlink(&[b"/s-".as_slice(), &long].concat(), &sentinel),
        fifo(&[b"/p-".as_slice(), &long].concat()),
        Forged {
            target: None,
            ..symlink(b"/no-target", b"")
        },
        // Written: a chunk that fails its check, in a file of one chunk and
        // in one of three; links to them; the same paths again after.
        file(b"/bad1", 0o644).with(b, &[bad]),
        file(b"/bad3", 0o644).with(b, &[0, bad, 1]),
        hard_link(b"/bad1-link", b"/bad1"),
        hard_link(b"/bad3-link", b"/bad3"),
        symlink(b"/bad1", &sentinel),
        dir(b"/bad3"),
        file(b"/bad3/below", 0o644),
        // A file whose size its chunks do not add up to.
        Forged {
            size: 1 << 50,
            ..file(b"/huge", 0o644).with(b, &[0])
        },
        // A file whose chunk list is not a list of ids.
        Forged {
            chunks: Some(vec![1, 2, 3]),
            ..file(b"/malformed", 0o644)
        },
        // Good ones after all that.
        file(b"/ok", 0o644).with(b, &[0]),
        dir(b"/okdir"),
        symlink(b"/okdir/l", b"../ok"),
    ];
    if as_root {
        entries.push(chardev(&[b"/c-".as_slice(), &long].concat()));
        entries.push(chardev(&under_long(b"/dev")));
    }
    let (code, err, t) = sc.restore(&env, "failures", &entries);
    assert_eq!(code, 2, "{err}");
    assert_named(
        &err,
        &[
            "/bad1: ",
            "/bad3: ",
            "fails its SHA-256 check",
            "/bad1-link: not restored: it is a hard link of /bad1",
            "/huge: size",
            "/malformed: malformed",
            "File name too long",
            "a parent directory was not restored",
            "/bad1: duplicate path",
        ],
    );
    // Nothing failed is left looking good.
    assert!(
        !t.join("bad1").exists() && !t.join("bad3").exists(),
        "{err}"
    );
    assert_eq!(fs::read(t.join("ok")).unwrap().len() as u64, b.chunks[0].1);
    assert_eq!(
        fs::read_link(t.join("okdir/l")).unwrap(),
        Path::new("../ok")
    );
}

/// A target that already holds symlinks at the names the snapshot uses,
/// pointing out of the target: each is replaced, never followed.
#[test]
fn an_existing_target_with_symlinks_planted_in_it() {
    let env = Env::new(Backend::Local);
    let sc = Scratch::new(&env);
    let as_root = rustix::process::geteuid().is_root();
    let t = sc.root.join("targets/existing");
    fs::create_dir_all(t.join("home/u")).unwrap();
    let up = |n: usize| "../".repeat(n) + "sentinel";
    for (name, to) in [
        ("etc", up(2)),
        ("home/u/file", up(4) + "/shadow"),
        ("home/u/multi", up(4) + "/shadow"),
        ("home/u/dir", up(4) + "/sub"),
        ("home/u/pipe", up(4) + "/pipe"),
        ("home/u/lnk", up(4) + "/link"),
        ("home/u/hard", up(4) + "/shadow"),
        ("home/u/dev", up(4) + "/shadow"),
    ] {
        std::os::unix::fs::symlink(to, t.join(name)).unwrap();
    }
    if as_root {
        // A local user's directory inside the target.
        rustix::fs::chown(
            t.join("home/u"),
            Some(rustix::fs::Uid::from_raw(65534)),
            None,
        )
        .unwrap();
    }
    let b = &sc.base;
    let mut entries = vec![
        dir(b"/etc"),
        file(b"/etc/passwd", 0o644).with(b, &[0]),
        dir(b"/home"),
        dir(b"/home/u").owned(65534, 65534),
        file(b"/home/u/file", 0o600)
            .with(b, &[0])
            .owned(65534, 65534),
        file(b"/home/u/multi", 0o600)
            .with(b, &[1, 2])
            .owned(65534, 65534),
        dir(b"/home/u/dir").owned(65534, 65534),
        fifo(b"/home/u/pipe"),
        symlink(b"/home/u/lnk", b"file"),
        hard_link(b"/home/u/hard", b"/home/u/file"),
    ];
    if as_root {
        entries.push(chardev(b"/home/u/dev"));
    }
    let (code, err, _) = sc.restore_into(&env, "planted symlinks", &entries, &t, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(fs::symlink_metadata(t.join("etc")).unwrap().is_dir());
    for f in ["home/u/file", "home/u/multi", "home/u/hard"] {
        assert!(fs::symlink_metadata(t.join(f)).unwrap().is_file(), "{f}");
    }
    if as_root {
        assert_eq!(fs::metadata(t.join("home/u/file")).unwrap().uid(), 65534);
    }
    // And again over its own result.
    let (code, err, _) = sc.restore_into(&env, "planted symlinks, again", &entries, &t, &[]);
    assert_eq!(code, 0, "{err}");
}

/// Seeded random forged metadata: paths from pieces like `..`, `.`, empty
/// names, names too long and odd bytes; symlinks pointing outside; hard
/// links to anything; every entry kind (and unknown ones); files with real
/// chunks, chunks that fail their check, and sizes that do not add up;
/// odd modes and owners. Many entries fail, at every step. Whatever a
/// restore makes of it, it never crashes, reports in one-line messages,
/// and changes nothing outside its target.
#[test]
fn fuzzed_metadata_never_reaches_outside_the_target() {
    let env = Env::new(Backend::Local);
    let mut sc = Scratch::new(&env);
    let bad = sc.base.bad_chunk(1);
    let sc = sc;
    let nchunks = sc.base.chunks.len();
    let sentinel = bytes(&sc.sentinel());
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
        b"\x1b[2J",
        b"\xff\xfe",
        b"-",
    ]
    .iter()
    .map(|p| p.to_vec())
    .chain([vec![b'z'; 300], "\u{e9}t\u{e9}".as_bytes().to_vec()])
    .collect();
    let targets: Vec<Vec<u8>> = vec![
        sentinel.clone(),
        [sentinel.as_slice(), b"/shadow"].concat(),
        bytes(&sc.root.join("victim")),
        b"..".to_vec(),
        b"../../sentinel".to_vec(),
        b"../../..".to_vec(),
        b"/".to_vec(),
        b"a".to_vec(),
        Vec::new(),
    ];
    // 40 rounds in the suite; tests/soak.sh sets more and a new seed.
    let rounds = setting("VAULTIK_HOSTILE_ROUNDS", 40);
    let mut rng = vaultik::testhook::Rng::new(0x5eed_4057 ^ setting("VAULTIK_HOSTILE_SEED", 0));
    let mut next = move |n: u64| rng.below(n as usize) as u64;
    let (mut clean, mut refused, mut restored_any, mut entries_total) = (0, 0, 0, 0);
    for round in 0..rounds {
        let mut entries: Vec<Forged> = Vec::new();
        for _ in 0..1 + next(16) {
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
                [1, 1, 2, 2, 2, 2, 3, 3, 4, 5, 6, 7][next(12) as usize]
            };
            let link = match next(4) {
                0 if !entries.is_empty() => {
                    Some(entries[next(entries.len() as u64) as usize].path.clone())
                }
                1 => Some(targets[next(targets.len() as u64) as usize].clone()),
                _ => None,
            };
            let mut e = Forged {
                path,
                kind,
                mode: (next(0o10000) as u32) | if next(4) == 0 { 0o4000 } else { 0 },
                uid: [0, 65534, u32::MAX][next(3) as usize],
                gid: [0, 65534][next(2) as usize],
                size: 0,
                mtime_ns: next(1 << 32) as i64 * 1_000_000_000,
                rdev: rustix::fs::makedev(1, 3),
                target: (kind == 3 || next(8) == 0)
                    .then(|| targets[next(targets.len() as u64) as usize].clone()),
                chunks: (kind == 2).then(Vec::new),
                link,
                xattrs: None,
                flags: None,
            };
            if kind == 2 && next(3) > 0 {
                let n = 1 + next(3) as usize;
                let picks: Vec<usize> = (0..n)
                    .map(|_| {
                        if next(5) == 0 {
                            bad
                        } else {
                            next(nchunks as u64 - 1) as usize
                        }
                    })
                    .collect();
                e = e.with(&sc.base, &picks);
            }
            if next(8) == 0 {
                e.size = [5, 1 << 50][next(2) as usize];
            }
            entries.push(e);
        }
        entries_total += entries.len();
        let (code, _, target) = sc.restore(&env, &format!("round {round}"), &entries);
        match code {
            0 => clean += 1,
            _ => refused += 1,
        }
        if fs::read_dir(&target).is_ok_and(|mut d| d.next().is_some()) {
            restored_any += 1;
        }
        // Nothing new beside the target either.
        for e in fs::read_dir(env.path()).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                [
                    "src",
                    "store",
                    "state",
                    "scratch",
                    "vaultik.conf",
                    "forged.sqlite"
                ]
                .contains(&name.as_str()),
                "round {round}: {name} appeared next to the scratch directory"
            );
        }
    }
    eprintln!(
        "hostile rounds: {rounds} ({entries_total} entries): {clean} clean, {refused} with problems reported, {restored_any} wrote something"
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

/// A local user who owns a directory inside an existing target swaps a
/// directory this restore made for a symlink out of the target, between
/// the restore's phases: what the restore still has to write there is
/// refused and named, never written through the symlink, nor into the
/// directory moved away.
#[test]
fn a_directory_swapped_for_a_symlink_mid_restore() {
    let env = Env::new(Backend::Local);
    let sc = Scratch::new(&env);
    let t = sc.root.join("targets/existing");
    fs::create_dir_all(t.join("home/u")).unwrap();
    if rustix::process::geteuid().is_root() {
        rustix::fs::chown(
            t.join("home/u"),
            Some(rustix::fs::Uid::from_raw(65534)),
            None,
        )
        .unwrap();
    }
    let b = &sc.base;
    let entries = vec![
        dir(b"/home"),
        dir(b"/home/u"),
        dir(b"/home/u/sub"),
        file(b"/home/u/sub/one", 0o600).with(b, &[0]),
        file(b"/home/u/sub/multi", 0o600).with(b, &[1, 2]),
        fifo(b"/home/u/sub/pipe"),
        symlink(b"/home/u/sub/l", b"one"),
        dir(b"/home/u/sub/deeper"),
        file(b"/home/u/sub/deeper/f", 0o600).with(b, &[0]),
        file(b"/home/u/kept", 0o600).with(b, &[0]),
    ];
    let id = "evil_x_2026-02-01T000000Z";
    forge::forge(&env, id, &entries, Some(b));
    let pause = t.join(".vaultik-pause");
    let marker = t.join(".vaultik-pause.paused");
    let child = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .env("VAULTIK_TEST_PAUSE_AT", &pause)
        .args(["restore", id, "--target", t.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !marker.exists() {
        assert!(started.elapsed().as_secs() < 30, "the restore never paused");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Directories and files of more than one chunk are made: move the
    // directory out of the target, put a symlink out of it in its place.
    let moved = sc.root.join("moved");
    fs::rename(t.join("home/u/sub"), &moved).unwrap();
    std::os::unix::fs::symlink(sc.sentinel(), t.join("home/u/sub")).unwrap();
    let moved_then = census(&moved, &moved.join("none"));
    fs::remove_file(&marker).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_named(
        &err,
        &[
            "/home/u/sub/one: ",
            "/home/u/sub/deeper/f: ",
            "/home/u/sub/l: ",
        ],
    );
    let mut now = census(&sc.root, &sc.root.join("targets"));
    now.retain(|l| !l.starts_with("moved"));
    assert_eq!(now, sc.before, "{err}");
    assert_eq!(census(&moved, &moved.join("none")), moved_then, "{err}");
    // The rest is restored.
    assert_eq!(
        fs::read(t.join("home/u/kept")).unwrap().len() as u64,
        b.chunks[0].1
    );
}

/// `--delete` beside symlinks planted in an existing target that point out
/// of it: named like entries the snapshot does not have (removed as
/// symlinks), named like a directory of the snapshot (replaced by the
/// directory), and one inside an extra directory (removed with it, never
/// followed). Nothing outside the target changes.
#[test]
fn delete_beside_symlinks_out_of_the_target() {
    let env = Env::new(Backend::Local);
    let sc = Scratch::new(&env);
    let t = sc.root.join("targets/delete");
    let data = t.join("srv/data");
    fs::create_dir_all(data.join("gone/deeper")).unwrap();
    let out = sc.sentinel();
    std::os::unix::fs::symlink(&out, data.join("extra")).unwrap();
    std::os::unix::fs::symlink(out.join("sub"), data.join("extra-sub")).unwrap();
    std::os::unix::fs::symlink(out.join("shadow"), data.join("extra-file")).unwrap();
    std::os::unix::fs::symlink(&out, data.join("sub")).unwrap();
    std::os::unix::fs::symlink(&out, data.join("gone/deeper/link")).unwrap();
    fs::write(data.join("gone/deeper/f"), b"f").unwrap();
    let b = &sc.base;
    let entries = vec![
        dir(b"/srv"),
        dir(b"/srv/data"),
        dir(b"/srv/data/sub"),
        file(b"/srv/data/sub/shadow", 0o600).with(b, &[0]),
        file(b"/srv/data/kept", 0o600).with(b, &[0]),
    ];
    let (code, err, _) = sc.restore_into(&env, "delete", &entries, &t, &["--delete"]);
    assert_eq!(code, 0, "{err}");
    let mut left: Vec<String> = fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["kept", "sub"]);
    assert!(fs::symlink_metadata(data.join("sub")).unwrap().is_dir());
    assert_eq!(
        fs::read(data.join("sub/shadow")).unwrap().len() as u64,
        b.chunks[0].1
    );
}
