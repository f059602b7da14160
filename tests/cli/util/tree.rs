//! Building source trees with every kind of entry, and comparing a restored
//! tree with its source byte for byte and by metadata.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Deterministic pseudo-random bytes (incompressible).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    vaultik::testhook::Rng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).bytes(n)
}

pub fn set_mtime(p: &Path, secs: i64, nsec: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let ts = libc::timespec {
        tv_sec: secs,
        tv_nsec: nsec,
    };
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [ts, ts].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", p.display());
}

/// A tree with directories, regular files of several sizes, an empty file,
/// symlinks (relative, absolute, dangling), a non-UTF-8 name, a deep path,
/// a sparse file, a file larger than several 1 MiB blobs, a FIFO, odd modes
/// and exact mtimes.
pub fn populate_all_kinds(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("hello.txt"), b"hello, world\n").unwrap();
    fs::write(root.join("dir/text.txt"), "line of text\n".repeat(5000)).unwrap();
    fs::write(root.join("dir/sub/random.bin"), random_bytes(300_000, 1)).unwrap();
    fs::write(root.join("large.bin"), random_bytes(5_500_000, 2)).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    std::os::unix::fs::symlink("hello.txt", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("link-abs")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dir/dangling")).unwrap();
    let odd = root.join(OsStr::from_bytes(b"not-utf8-\xff\xfe.txt"));
    fs::write(&odd, b"odd name").unwrap();
    fs::write(root.join("name with spaces and\nnewline"), b"newline").unwrap();
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep.push(format!("level{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("bottom.txt"), b"deep down").unwrap();
    // Sparse: 20 MiB with data only at 8 MiB.
    let sparse = fs::File::create(root.join("sparse.img")).unwrap();
    sparse.set_len(20 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, &random_bytes(4096, 3), 8 << 20).unwrap();
    drop(sparse);
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    fs::write(root.join("private.key"), b"secret-ish").unwrap();
    fs::set_permissions(root.join("private.key"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(root.join("script.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("script.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root.join("dir/sub"), fs::Permissions::from_mode(0o750)).unwrap();
    set_mtime(&root.join("hello.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("link-rel"), 1_500_000_000, 5);
    set_mtime(&root.join("dir"), 1_400_000_000, 0);
}

/// Every regular file under `root`, sorted.
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Every entry under `root` (root excluded), as relative paths, sorted.
pub fn entries(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Assert that `b` is an exact copy of `a`: same entries, kinds, contents,
/// symlink targets, modes and mtimes (to the nanosecond).
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ea = entries(a);
    let eb = entries(b);
    assert_eq!(
        ea,
        eb,
        "entry lists differ between {} and {}",
        a.display(),
        b.display()
    );
    for rel in std::iter::once(PathBuf::new()).chain(ea) {
        let pa = a.join(&rel);
        let pb = b.join(&rel);
        let ma = fs::symlink_metadata(&pa).unwrap();
        let mb = fs::symlink_metadata(&pb).unwrap();
        let what = rel.display();
        assert_eq!(ma.file_type(), mb.file_type(), "kind of {what}");
        if ma.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&pa).unwrap(),
                fs::read_link(&pb).unwrap(),
                "target of {what}"
            );
        } else {
            assert_eq!(ma.mode(), mb.mode(), "mode of {what}");
        }
        if ma.is_file() {
            assert_eq!(ma.len(), mb.len(), "size of {what}");
            assert!(
                fs::read(&pa).unwrap() == fs::read(&pb).unwrap(),
                "content of {what}"
            );
        }
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "mtime of {what}"
        );
        assert_eq!(
            (ma.uid(), ma.gid()),
            (mb.uid(), mb.gid()),
            "owner of {what}"
        );
    }
}

/// Copy the regular files and directories under `from` to `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), &dest).unwrap();
        }
    }
}
