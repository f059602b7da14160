//! Awkward files (issue 6): hard links, a sparse file over 4 GiB, paths
//! near and past PATH_MAX, a directory of 200k entries. Each is backed up
//! and restored exactly.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::core::restored;
use crate::util::tree::assert_same_tree;
use crate::util::{Backend, Env};

#[test]
fn hard_links_are_restored_as_links() {
    let env = Env::new(Backend::S3);
    let src = env.src();
    fs::create_dir(src.join("sub")).unwrap();
    fs::write(
        src.join("a.bin"),
        crate::util::tree::random_bytes(300_000, 3),
    )
    .unwrap();
    fs::hard_link(src.join("a.bin"), src.join("b.bin")).unwrap();
    fs::hard_link(src.join("a.bin"), src.join("sub/c.bin")).unwrap();
    fs::write(src.join("x.txt"), b"small").unwrap();
    fs::hard_link(src.join("x.txt"), src.join("sub/y.txt")).unwrap();
    fs::write(src.join("alone.txt"), b"one link").unwrap();
    env.create();

    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    let dest = restored(&target, &src);
    assert_same_tree(&src, &dest);
    let ino = |p: &str| fs::metadata(dest.join(p)).unwrap().ino();
    let nlink = |p: &str| fs::metadata(dest.join(p)).unwrap().nlink();
    assert_eq!(ino("a.bin"), ino("b.bin"));
    assert_eq!(ino("a.bin"), ino("sub/c.bin"));
    assert_eq!(nlink("a.bin"), 3);
    assert_eq!(ino("x.txt"), ino("sub/y.txt"));
    assert_eq!(nlink("x.txt"), 2);
    assert_eq!(nlink("alone.txt"), 1);

    // A later link restored without its first path is a file of its own.
    let target2 = env.path().join("restore2");
    let c = src.join("sub/c.bin");
    env.restore_ok("latest", &target2, &[c.to_str().unwrap()]);
    let got = restored(&target2, &c);
    assert_eq!(fs::read(&got).unwrap(), fs::read(&c).unwrap());
    assert_eq!(fs::metadata(&got).unwrap().nlink(), 1);
}

#[test]
fn a_sparse_file_over_4_gib_keeps_its_data_and_holes() {
    let env = Env::new(Backend::Local);
    let f = env.src().join("big.sparse");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = fs::File::create(&f).unwrap();
        file.write_all(&[7u8; 5000]).unwrap();
        file.seek(SeekFrom::Start((4 << 30) + 12_345)).unwrap();
        file.write_all(&[9u8; 5000]).unwrap();
        file.set_len((4 << 30) + (1 << 20)).unwrap();
    }
    env.create();
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    let got = restored(&target, &f);
    let m = fs::metadata(&got).unwrap();
    assert_eq!(m.len(), (4 << 30) + (1 << 20));
    assert!(
        m.blocks() * 512 < 64 << 20,
        "holes stay holes: {} blocks",
        m.blocks()
    );
    let read_at = |off: u64, n: usize| {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = fs::File::open(&got).unwrap();
        file.seek(SeekFrom::Start(off)).unwrap();
        let mut buf = vec![0u8; n];
        file.read_exact(&mut buf).unwrap();
        buf
    };
    assert_eq!(read_at(0, 5000), vec![7u8; 5000]);
    assert_eq!(read_at(5000, 100), vec![0u8; 100]);
    assert_eq!(read_at((4 << 30) + 12_345, 5000), vec![9u8; 5000]);
    assert_eq!(read_at((4 << 30) + 17_345, 100), vec![0u8; 100]);
}

/// `depth` directories of 250-byte names under `root`, made relative to
/// each other (no single call sees the whole path).
fn deep_dirs(root: &std::path::Path, depth: usize) -> PathBuf {
    let name = "d".repeat(250);
    let mut p = root.to_path_buf();
    for _ in 0..depth {
        p.push(&name);
        fs::create_dir(&p).unwrap();
    }
    p
}

#[test]
fn paths_near_path_max() {
    let env = Env::new(Backend::Local);
    let src = env.src();
    // Close to PATH_MAX (4096 with its NUL): room left for a short
    // restore target of up to 24 bytes in front of it.
    let dir = deep_dirs(&src, 15);
    let room = 4095 - 24 - dir.as_os_str().len() - 1;
    assert!(room > 10, "{room}");
    let long = dir.join("f".repeat(room.min(255)));
    fs::write(&long, b"deep").unwrap();
    fs::write(src.join("short.txt"), b"short").unwrap();
    env.create();
    // Into a short target: the path fits and is restored exactly.
    let short_target = PathBuf::from(format!("/tmp/vk{}", std::process::id()));
    let _ = fs::remove_dir_all(&short_target);
    assert!(short_target.as_os_str().len() <= 24);
    env.restore_ok("latest", &short_target, &[]);
    assert_same_tree(&src, &restored(&short_target, &src));
    fs::remove_dir_all(&short_target).unwrap();
    // Into a target that makes it longer than PATH_MAX: restored exactly
    // too (the restore works from directory descriptors, never by path).
    let deep_target = deep_dirs(env.path(), 1).join("restore");
    env.restore_ok("latest", &deep_target, &[]);
    let deep_copy = restored(&deep_target, &long);
    assert!(deep_copy.as_os_str().len() > 4096);
    assert_eq!(
        fs::read(restored(&deep_target, &src.join("short.txt"))).unwrap(),
        b"short"
    );
    // (Read back through a descriptor: the path itself is too long.)
    let mut dir = fs::File::open(&deep_target).unwrap();
    for c in deep_copy.strip_prefix(&deep_target).unwrap().components() {
        let p = std::path::Path::new(c.as_os_str());
        let next = rustix::fs::openat(
            &dir,
            p,
            rustix::fs::OFlags::RDONLY,
            rustix::fs::Mode::empty(),
        );
        dir = fs::File::from(next.unwrap());
    }
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut dir, &mut got).unwrap();
    assert_eq!(got, b"deep");
}

#[test]
fn a_directory_of_200k_entries() {
    let env = Env::new(Backend::Local);
    let dir = env.src().join("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..200_000u32 {
        fs::write(
            dir.join(format!("{i:06}")),
            if i % 1000 == 0 { b"x" as &[u8] } else { b"" },
        )
        .unwrap();
    }
    let out = env.create();
    assert!(out.contains("200002 entries"), "{out}");
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    let dest = restored(&target, &dir);
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 200_000);
    assert_eq!(fs::read(dest.join("199000")).unwrap(), b"x");
    assert_eq!(fs::read(dest.join("199001")).unwrap(), b"");
}

#[test]
fn a_chunk_shared_by_thousands_of_files_restores_everywhere() {
    // 2500 copies of one small file and of one two-chunk file: more jobs
    // for one chunk than a read unit holds (1024), so the chunk is read
    // by several units. Every copy must come back whole.
    let env = Env::new(Backend::Local);
    let src = env.src();
    let small = crate::util::tree::random_bytes(3000, 5);
    let big = crate::util::tree::random_bytes(3_000_000, 6);
    for d in 0..5 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for i in 0..500 {
            fs::write(dir.join(format!("s{i}")), &small).unwrap();
        }
    }
    for i in 0..20 {
        fs::write(src.join(format!("big{i}")), &big).unwrap();
    }
    env.create();
    let target = env.path().join("restore");
    let out = env.restore_ok("latest", &target, &[]);
    let dest = restored(&target, &src);
    assert_same_tree(&src, &dest);
    assert!(out.contains("2520 files"), "{out}");
}
