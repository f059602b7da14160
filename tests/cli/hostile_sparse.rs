//! A local user's files made to cost without bound (issue 28): a 15 TiB
//! sparse file (no disk used) and a file that keeps growing while it is
//! read, in a backed-up directory. A backup reads a file by its data and
//! to at most its size when opened, so each costs what it holds; the
//! snapshot restores the sparse file sparse. And forged hole records: a
//! hole in a snapshot may say anything, and never costs more than a real
//! one.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::hostile_store::measured;
use crate::util::forge;
use crate::util::tree::random_bytes;
use crate::util::{Backend, Env, stderr};

const MIB: u64 = 1 << 20;

/// Peak memory allowed to any one command here (KiB).
const RSS_MAX: u64 = 200 * 1024;

/// Where `f` has data, by SEEK_DATA/SEEK_HOLE: (start, end) pairs.
fn data_extents(f: &File) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    let size = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let start = match seek(f, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => panic!("SEEK_DATA: {e}"),
        };
        let end = seek(f, SeekFrom::Hole(start)).unwrap();
        out.push((start, end));
        pos = end;
    }
    out
}

/// A sparse file of the largest of `sizes` the file system takes.
fn sparse_file(path: &Path, sizes: &[u64]) -> (File, u64) {
    let f = File::create(path).unwrap();
    for &size in sizes {
        match f.set_len(size) {
            Ok(()) => return (f, size),
            Err(e) => eprintln!("{}: set_len({size}): {e}", path.display()),
        }
    }
    panic!("the file system takes none of the sizes {sizes:?}");
}

/// The file at `path` is `size` bytes long, holds `parts` (offset, bytes)
/// where they were, and has little allocated: a sparse copy. It, open.
fn sparse_copy_of(path: &Path, size: u64, parts: &[(u64, Vec<u8>)], why: &str) -> File {
    let f = File::open(path).unwrap();
    let m = f.metadata().unwrap();
    assert_eq!(m.len(), size, "{why}");
    let allocated = m.blocks() * 512;
    assert!(allocated < 4 * MIB, "{why}: {allocated} bytes allocated");
    for (at, data) in parts {
        let mut got = vec![0u8; data.len()];
        f.read_exact_at(&mut got, *at).unwrap();
        assert!(got == *data, "{why}: the data at {at}");
    }
    f
}

/// A 15 TiB sparse file (or the largest this file system takes) with a
/// few KiB of data at its start, at 7 TiB and at its end, next to
/// ordinary files: the backup reads those few KiB (in seconds and little
/// memory), the restore makes a sparse file of the same size with the
/// same data where it was, and `verify --deep` passes.
fn a_15_tib_sparse_file_costs_its_data(backend: Backend) {
    let env = Env::new(backend);
    let src = env.src();
    fs::write(src.join("small"), b"an ordinary file\n").unwrap();
    fs::write(src.join("ordinary"), random_bytes(300_000, 1)).unwrap();
    let sparse = src.join("sparse");
    let sizes = [15 << 40, 8 << 40, 4 << 40, 1 << 40];
    let (f, size) = sparse_file(&sparse, &sizes);
    let why = if size == sizes[0] {
        "15 TiB".to_string()
    } else {
        format!("{size} bytes: this file system takes no 15 TiB file")
    };
    let parts: [(u64, Vec<u8>); 3] = [
        (0, random_bytes(8 << 10, 2)),
        ((size / 15 * 7) + 12_345, random_bytes(12 << 10, 3)),
        (size - (8 << 10), random_bytes(8 << 10, 4)),
    ];
    for (at, data) in &parts {
        f.write_all_at(data, *at).unwrap();
    }
    drop(f);
    env.write_config();
    // (So that the second run below may trust the files' stat.)
    env.settle();

    let mut cmd = env.cmd();
    cmd.args(["snapshot", "create"]);
    let started = Instant::now();
    let (code, out, err, rss) = measured(cmd, env.path());
    let took = started.elapsed();
    eprintln!("create with a sparse file of {why}: {took:?}, {rss} KiB peak\n{out}");
    assert_eq!(code, 0, "{err}");
    assert!(took < Duration::from_secs(10), "{why}: took {took:?}");
    assert!(rss < RSS_MAX, "{why}: peak RSS {rss} KiB");
    assert!(err.is_empty(), "no warning: {err}");
    // What was read is the data: a few hundred KiB, never the size.
    assert!(
        out.contains(" 3 files (") && out.contains(" KiB) read"),
        "{out}"
    );

    let target = env.path().join("restored");
    let mut cmd = env.cmd();
    cmd.env("VAULTIK_PRIVATE_KEY", &env.identity).args([
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
    ]);
    let started = Instant::now();
    let (code, _, err, rss) = measured(cmd, env.path());
    let took = started.elapsed();
    eprintln!("restore: {took:?}, {rss} KiB peak");
    assert_eq!(code, 0, "{err}");
    assert!(took < Duration::from_secs(10), "{why}: took {took:?}");
    assert!(rss < RSS_MAX, "{why}: peak RSS {rss} KiB");
    let restored = target.join(sparse.strip_prefix("/").unwrap());
    let f = sparse_copy_of(&restored, size, &parts, &why);
    // Data only where there was data (to the block, or a short hole read
    // as zeros), never 15 TiB of zeros written.
    let extents = data_extents(&f);
    assert!(!extents.is_empty());
    for (start, end) in &extents {
        assert!(
            parts.iter().any(|(at, data)| {
                *start + (64 << 10) >= *at && *end <= at + data.len() as u64 + (64 << 10)
            }),
            "{why}: data at {start}..{end}, none written there; {extents:?}"
        );
    }
    for name in ["small", "ordinary"] {
        let rel = src.join(name);
        assert!(
            fs::read(target.join(rel.strip_prefix("/").unwrap())).unwrap()
                == fs::read(&rel).unwrap(),
            "{name}"
        );
    }

    // `restore --stdout` into a regular file skips the holes too: the
    // output is as sparse as the file, at once.
    let piped = env.path().join("piped");
    let started = Instant::now();
    let out = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(["restore", "latest", "--stdout", sparse.to_str().unwrap()])
        .stdout(File::create(&piped).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(10), "{why}");
    sparse_copy_of(&piped, size, &parts, &format!("{why}, to standard output"));

    let started = Instant::now();
    let out = env.run_with_key(&["snapshot", "verify", "--deep", "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(10));
    // A second run reads nothing again: the index knows the file.
    let out = env.create();
    assert!(out.contains(" 0 files (0 B) read"), "{out}");
}

both!(
    a_15_tib_sparse_file_backs_up_in_seconds,
    a_15_tib_sparse_file_costs_its_data
);

/// A file appended to all along a backup: the run ends, having read the
/// file to its size when opened, warns naming it, and the snapshot holds
/// exactly that prefix; the next run (the file no longer growing) reads
/// it again and takes the rest.
#[test]
fn a_growing_file_is_cut_at_its_size_when_opened() {
    let env = Env::new(Backend::Local);
    let growing = env.src().join("growing");
    let base: u64 = crate::util::setting("VAULTIK_TEST_GROWING_MIB", 200) * MIB;
    // Distinct pieces cut from one random buffer (each starts with its
    // number), appended about 64 MiB/s at most, 4 GiB at the very most.
    let pool = random_bytes(4 << 20, 5);
    const PIECE: usize = 256 << 10;
    let piece = |i: u64| {
        let from = (i as usize * 4099) % (pool.len() - PIECE);
        let mut p = pool[from..from + PIECE].to_vec();
        p[..8].copy_from_slice(&i.to_le_bytes());
        p
    };
    {
        use std::io::Write;
        let mut f = fs::File::create(&growing).unwrap();
        for i in 0..base / PIECE as u64 {
            f.write_all(&piece(i)).unwrap();
        }
    }
    fs::write(env.src().join("still"), b"a file that does not change\n").unwrap();
    env.write_config();
    // (So that the second run may trust the stat of `still`: only the
    // growing file is read again.)
    env.settle();
    let stop = AtomicBool::new(false);
    let appended = AtomicU64::new(0);
    let (code, out, err) = std::thread::scope(|s| {
        s.spawn(|| {
            use std::io::Write;
            let mut f = fs::OpenOptions::new().append(true).open(&growing).unwrap();
            let mut i = base / PIECE as u64;
            while !stop.load(Ordering::Relaxed) && appended.load(Ordering::Relaxed) < 4 << 30 {
                f.write_all(&piece(i)).unwrap();
                appended.fetch_add(PIECE as u64, Ordering::Relaxed);
                i += 1;
                std::thread::sleep(Duration::from_millis(4));
            }
        });
        // Some growth before the run starts too.
        while appended.load(Ordering::Relaxed) < 4 * MIB {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut cmd = env.cmd();
        cmd.args(["snapshot", "create"]);
        let started = Instant::now();
        let (code, out, err, rss) = measured(cmd, env.path());
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        eprintln!(
            "create of a growing file: {took:?}, {rss} KiB peak, {} MiB appended\n{out}{err}",
            appended.load(Ordering::Relaxed) >> 20
        );
        assert!(took < Duration::from_secs(30), "took {took:?}");
        assert!(rss < RSS_MAX, "peak RSS {rss} KiB");
        (code, out, err)
    });
    assert_eq!(code, 0, "{err}");
    let warned: Vec<&str> = err.lines().collect();
    assert_eq!(warned.len(), 1, "one warning: {err}");
    let line = warned[0];
    assert!(
        line.contains(&growing.display().to_string()) && line.contains("grew while it was read"),
        "{line}"
    );
    let stored: u64 = line
        .split("stored up to ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {line}"));
    let now = fs::read(&growing).unwrap();
    assert!(
        stored >= base && stored < now.len() as u64,
        "stored {stored} of {} (from {base})",
        now.len()
    );
    assert!(out.contains(" 1 warnings"), "{out}");

    let rel = growing.strip_prefix("/").unwrap();
    let target = env.path().join("r1");
    env.restore_ok("latest", &target, &[]);
    let first = fs::read(target.join(rel)).unwrap();
    assert_eq!(first.len() as u64, stored);
    assert!(first[..] == now[..first.len()], "a prefix of the file");

    // The next run reads it again (it was not remembered as unchanged),
    // now whole, without a warning.
    env.settle();
    let out = env.run(&["snapshot", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(" 1 files ("), "read again: {summary}");
    let target = env.path().join("r2");
    env.restore_ok("latest", &target, &[]);
    let second = fs::read(target.join(rel)).unwrap();
    assert!(second.len() > first.len(), "the next run takes the rest");
    assert!(second == now, "the whole file");
}

/// Forged hole records: a hole that overflows the size, one claiming more
/// than any file system holds, a file that is one hole, and chunks with a
/// hole between them. Refused or restored as a real one would be, within
/// bounded time and memory, by `restore` and `restore --stdout`; the real
/// snapshot beside them still restores identical.
#[test]
fn forged_holes() {
    let env = Env::new(Backend::Local);
    fs::write(env.src().join("big"), random_bytes(3 << 20, 6)).unwrap();
    env.create();
    let real = env.snapshot_ids().pop().unwrap();
    let base = forge::Base::of(&env, &real);
    assert!(base.chunks.len() >= 2, "{}", base.chunks.len());
    let hole = |n: u64| {
        let mut r = [0u8; 32];
        r[24..].copy_from_slice(&n.to_le_bytes());
        r.to_vec()
    };
    let (c0, c1) = (base.chunks[0], base.chunks[1]);
    let list = |parts: &[Vec<u8>]| Some(parts.concat());
    let file = |path: &[u8], chunks: Option<Vec<u8>>, size: u64| forge::Forged {
        chunks,
        size,
        ..forge::file(path, 0o640)
    };
    let mixed_size = c0.1 + MIB + c1.1;
    let entries = [
        forge::dir(b"/f"),
        file(
            b"/f/mixed",
            list(&[c0.0.to_vec(), hole(MIB), c1.0.to_vec()]),
            mixed_size,
        ),
        file(b"/f/hole", list(&[hole(5 * MIB)]), 5 * MIB),
        // u64::MAX past a chunk: the sum overflows.
        file(b"/f/overflow", list(&[c0.0.to_vec(), hole(u64::MAX)]), c0.1),
        // Adds up (as an i64), but no file system holds it.
        file(b"/f/giant", list(&[hole(1 << 62)]), 1 << 62),
    ];
    let id = vaultik::layout::make_id("forger", "holes", 1_700_000_000);
    forge::forge(&env, &id, &entries, Some(&base));

    let target = env.path().join("t");
    let mut cmd = env.cmd();
    cmd.env("VAULTIK_PRIVATE_KEY", &env.identity).args([
        "restore",
        &id,
        "--target",
        target.to_str().unwrap(),
    ]);
    let started = Instant::now();
    let (code, _, err, rss) = measured(cmd, env.path());
    let took = started.elapsed();
    eprintln!("restore of forged holes: {took:?}, {rss} KiB peak\n{err}");
    assert_ne!(code, 0, "two entries are refused");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(rss < RSS_MAX, "peak RSS {rss} KiB");
    assert!(
        err.contains("/f/overflow: size") && err.contains("does not match its chunks"),
        "{err}"
    );
    assert!(err.contains("/f/giant"), "{err}");
    assert!(!target.join("f/overflow").exists());
    assert!(
        fs::metadata(target.join("f/giant")).map_or(true, |m| m.len() == 0),
        "never sized"
    );
    let m = fs::metadata(target.join("f/hole")).unwrap();
    assert_eq!(
        (m.len(), m.blocks(), m.mode() & 0o7777),
        (5 * MIB, 0, 0o640)
    );
    let f = File::open(target.join("f/mixed")).unwrap();
    let m = f.metadata().unwrap();
    assert_eq!((m.len(), m.mode() & 0o7777), (mixed_size, 0o640));
    assert!(
        m.blocks() * 512 < mixed_size - MIB / 2,
        "the hole is a hole"
    );
    let mixed = fs::read(target.join("f/mixed")).unwrap();
    use sha2::Digest;
    let (a, rest) = mixed.split_at(c0.1 as usize);
    let (zeros, b) = rest.split_at(MIB as usize);
    assert_eq!(<[u8; 32]>::from(sha2::Sha256::digest(a)), c0.0);
    assert!(zeros.iter().all(|z| *z == 0));
    assert_eq!(<[u8; 32]>::from(sha2::Sha256::digest(b)), c1.0);

    // To standard output: the hole as zeros; the others refused.
    let stdout = |path: &str| {
        env.cmd()
            .env("VAULTIK_PRIVATE_KEY", &env.identity)
            .args(["restore", &id, "--stdout", path])
            .output()
            .unwrap()
    };
    let out = stdout("/f/mixed");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == mixed);
    let out = stdout("/f/hole");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.len() as u64 == 5 * MIB && out.stdout.iter().all(|z| *z == 0));
    let out = stdout("/f/overflow");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("does not match its chunks"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());

    // The real snapshot beside it restores identical.
    let target = env.path().join("real");
    env.restore_ok(&real, &target, &[]);
    let rel = env.src().join("big");
    assert!(
        fs::read(target.join(rel.strip_prefix("/").unwrap())).unwrap() == fs::read(&rel).unwrap()
    );
}
