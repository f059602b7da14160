//! What the target already has where an entry goes, and what the restore
//! does about it (`--overwrite always|if-changed|if-newer|never`,
//! `--verify-existing`). Decided while the plan is built, before anything
//! is fetched: a file kept queues no chunk, so its blobs are neither
//! thawed nor read.
//!
//! The target is only looked at here, never written: directories are
//! opened read-only from the target, one component at a time with
//! `O_NOFOLLOW|O_DIRECTORY` (a symlink in the way is something the
//! restore replaces, never something it looks through), and the last
//! component is `statat`'d without following. A file whose contents are
//! compared is opened the same way and must be the very file stat'ed.
//!
//! What is decided:
//! - nothing there: the entry is written;
//! - `always` (the default): whatever is there is replaced;
//! - a regular file where the snapshot has one: `if-changed` keeps it
//!   when its size and mtime are the snapshot's (or, with
//!   `--verify-existing`, its size and every chunk's SHA-256, and zeros
//!   where the snapshot has holes), and then sets its owner, mode and
//!   times to the snapshot's; `if-newer` replaces it only when the
//!   snapshot's mtime is newer; `never` keeps it. A file kept by
//!   `if-newer` or `never` is left exactly as it is;
//! - anything else in the way of a file, symlink or special file: kept
//!   with `never`, replaced otherwise (as without `--overwrite`);
//! - a directory is always restored into; with `never`, one that exists
//!   keeps its own owner, mode and times. Something else in the way of a
//!   directory is replaced, whatever the mode (nothing below it could be
//!   restored otherwise).
//!
//! A file a restore was writing when it was stopped cannot look
//! unchanged: files are made empty with their size, and their mtime is
//! set only once every chunk is written (`contents.rs`), so until then it
//! is the time the restore made them.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use crate::blob::Location;
use crate::chunk::ChunkId;
use crate::error::{Error, Result};

/// `--overwrite`: what to do with a file that exists in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    #[default]
    Always,
    IfChanged,
    IfNewer,
    Never,
}

impl Overwrite {
    pub fn parse(s: &str) -> Option<Overwrite> {
        Some(match s {
            "always" => Overwrite::Always,
            "if-changed" => Overwrite::IfChanged,
            "if-newer" => Overwrite::IfNewer,
            "never" => Overwrite::Never,
            _ => return None,
        })
    }
}

/// How the plan treats an entry, given what is in the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is there: made.
    New,
    /// Something is there: replaced (why).
    Replace(String),
    /// Left in place (why); `attrs`: its owner, mode and times are still
    /// set to the snapshot's.
    Keep { attrs: bool, why: String },
}

/// An entry as the snapshot has it, to compare with the target.
pub struct Wanted<'a> {
    /// A regular file whose contents the restore writes (not a further
    /// hard link, a symlink or a special file).
    pub file: bool,
    pub size: u64,
    pub mtime_ns: i64,
    /// Where each chunk of a file goes (file offset, id, place in its
    /// blob), in file order; what lies between is a hole.
    pub chunks: &'a [(u64, ChunkId, usize, Location)],
}

/// What the target has at a path: its stat, and the directory it is in.
pub struct Found {
    pub st: Stat,
    parent: Arc<OwnedFd>,
    name: Vec<u8>,
}

impl Found {
    pub fn file_type(&self) -> FileType {
        FileType::from_raw_mode(self.st.st_mode)
    }

    pub fn id(&self) -> (u64, u64) {
        (self.st.st_dev, self.st.st_ino)
    }

    fn mtime_ns(&self) -> i64 {
        self.st
            .st_mtime
            .saturating_mul(1_000_000_000)
            .saturating_add(self.st.st_mtime_nsec as i64)
    }
}

/// Read-only looks into the target.
pub struct Existing {
    /// None: the target does not exist (yet), so nothing is in it.
    root: Option<Arc<OwnedFd>>,
    /// The directories opened on the way to the last path looked at.
    chain: Vec<(Vec<u8>, Arc<OwnedFd>)>,
}

/// At most this many directories are kept open on the way (deeper ones
/// are opened again each time: forged paths may be 4096 deep).
const CHAIN_MAX: usize = 64;

fn nofollow() -> OFlags {
    OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY
}

pub fn open_dir(parent: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK | nofollow(),
        Mode::empty(),
    )
}

impl Existing {
    /// Look into `target` (trusted, as for the restore: followed if it is
    /// a symlink); a target that does not exist has nothing in it.
    pub fn open(target: &Path) -> Result<Existing> {
        let root = match rustix::fs::open(
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Some(Arc::new(fd)),
            Err(Errno::NOENT) => None,
            Err(e) => {
                return Err(Error::Io {
                    op: "open target directory",
                    path: target.to_path_buf(),
                    source: e.into(),
                });
            }
        };
        Ok(Existing {
            root,
            chain: Vec::new(),
        })
    }

    /// The directory whose path has components `parts`, if the target has
    /// one there (a symlink or anything else there is not one).
    pub fn dir(&mut self, parts: &[&[u8]]) -> io::Result<Option<Arc<OwnedFd>>> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let same = self
            .chain
            .iter()
            .zip(parts)
            .take_while(|((have, _), want)| have.as_slice() == **want)
            .count();
        self.chain.truncate(same);
        let mut fd = self
            .chain
            .last()
            .map_or_else(|| root.clone(), |(_, f)| f.clone());
        for (i, name) in parts.iter().enumerate().skip(same) {
            fd = match open_dir(fd.as_fd(), name) {
                Ok(next) => Arc::new(next),
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if i == self.chain.len() && i < CHAIN_MAX {
                self.chain.push((name.to_vec(), fd.clone()));
            }
        }
        Ok(Some(fd))
    }

    /// What is at the path with components `parts` (not followed), if
    /// anything.
    pub fn look(&mut self, parts: &[&[u8]]) -> io::Result<Option<Found>> {
        let Some((name, dirs)) = parts.split_last() else {
            // The target itself.
            return match &self.root {
                Some(root) => Ok(Some(Found {
                    st: rustix::fs::fstat(root)?,
                    parent: root.clone(),
                    name: b".".to_vec(),
                })),
                None => Ok(None),
            };
        };
        let Some(parent) = self.dir(dirs)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&*parent, *name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(Found {
                st,
                parent,
                name: name.to_vec(),
            })),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// What kind of thing `ft` is, for messages.
pub fn kind_of(ft: FileType) -> &'static str {
    match ft {
        FileType::Directory => "a directory",
        FileType::RegularFile => "a file",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::CharacterDevice | FileType::BlockDevice => "a device node",
        FileType::Socket => "a socket",
        FileType::Unknown => "something",
    }
}

/// What to do with entry `w` (not a directory: see `decide_dir`) given
/// what is at its path.
pub fn decide(mode: Overwrite, verify: bool, w: &Wanted<'_>, found: Option<&Found>) -> Decision {
    let Some(f) = found else {
        return Decision::New;
    };
    let ft = f.file_type();
    let keep = |attrs: bool, why: &str| Decision::Keep {
        attrs,
        why: why.to_string(),
    };
    let other = !w.file || ft != FileType::RegularFile;
    let there = || format!("{} is there", kind_of(ft));
    match mode {
        Overwrite::Always => Decision::Replace(there()),
        Overwrite::Never if other => keep(false, &there()),
        Overwrite::Never => keep(false, "exists"),
        _ if other => Decision::Replace(there()),
        Overwrite::IfNewer if w.mtime_ns > f.mtime_ns() => {
            Decision::Replace("the snapshot's is newer".into())
        }
        Overwrite::IfNewer => keep(false, "not older than the snapshot's"),
        Overwrite::IfChanged if f.st.st_size as u64 != w.size => {
            Decision::Replace("size differs".into())
        }
        Overwrite::IfChanged if verify => match same_content(f, w) {
            Ok(true) => keep(true, "same content"),
            Ok(false) => Decision::Replace("content differs".into()),
            Err(e) => Decision::Replace(format!("cannot be compared ({e})")),
        },
        Overwrite::IfChanged if f.mtime_ns() == w.mtime_ns => keep(true, "same size and mtime"),
        Overwrite::IfChanged => Decision::Replace("mtime differs".into()),
    }
}

/// What to do with a directory entry given what is at its path: a
/// directory there is restored into (`Keep` without attributes with
/// `never`: it keeps its own), anything else is replaced.
pub fn decide_dir(mode: Overwrite, found: Option<&Found>) -> Decision {
    match found.map(Found::file_type) {
        None => Decision::New,
        Some(FileType::Directory) if mode == Overwrite::Never => Decision::Keep {
            attrs: false,
            why: "exists".into(),
        },
        Some(FileType::Directory) => Decision::Keep {
            attrs: true,
            why: "exists".into(),
        },
        Some(ft) => Decision::Replace(format!("{} is there", kind_of(ft))),
    }
}

/// Bytes read at a time when comparing contents.
const READ_BYTES: usize = 1 << 20;

/// Whether the regular file `f` holds what `w` says: every chunk's bytes
/// hash to its id, and zeros are everywhere else (holes, read as such
/// when the file has a hole there).
fn same_content(f: &Found, w: &Wanted<'_>) -> io::Result<bool> {
    let fd = rustix::fs::openat(
        &*f.parent,
        f.name.as_slice(),
        OFlags::RDONLY | OFlags::NONBLOCK | nofollow(),
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if (st.st_dev, st.st_ino) != f.id()
        || FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
    {
        return Err(io::Error::other("replaced while being compared"));
    }
    let file = File::from(fd);
    let mut buf = vec![0u8; READ_BYTES];
    let mut at = 0u64;
    for (offset, id, _, loc) in w.chunks {
        if *offset < at || !zeros(&file, at, *offset, &mut buf)? {
            return Ok(false);
        }
        let mut h = Sha256::new();
        let end = offset.saturating_add(loc.size);
        let mut pos = *offset;
        while pos < end {
            let n = (end - pos).min(READ_BYTES as u64) as usize;
            file.read_exact_at(&mut buf[..n], pos)?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
        if h.finalize().as_slice() != id.0.as_slice() {
            return Ok(false);
        }
        at = end;
    }
    zeros(&file, at, w.size, &mut buf)
}

/// Whether `file` holds only zeros from `from` to `to`: what is a hole is
/// skipped (`SEEK_DATA`), the rest read until a byte that is not zero.
fn zeros(file: &File, from: u64, to: u64, buf: &mut [u8]) -> io::Result<bool> {
    let mut pos = from;
    while pos < to {
        match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(pos)) {
            Ok(data) if data >= to => return Ok(true),
            Ok(data) => pos = pos.max(data),
            // No data after `pos`: a hole to the end.
            Err(Errno::NXIO) => return Ok(true),
            // A file system without SEEK_DATA: read it all.
            Err(_) => {}
        }
        let n = (to - pos).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos)?;
        if !super::contents::is_zero(&buf[..n]) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found_file(dir: &Path, name: &str, data: &[u8], mtime_ns: i64) -> Found {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        let f = File::options().write(true).open(&p).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns as u64);
        f.set_modified(t).unwrap();
        drop(f);
        let mut ex = Existing::open(dir).unwrap();
        ex.look(&[name.as_bytes()]).unwrap().unwrap()
    }

    fn loc(size: u64) -> Location {
        Location {
            offset: 0,
            length: size,
            size,
        }
    }

    #[test]
    fn modes_parse() {
        for (s, m) in [
            ("always", Overwrite::Always),
            ("if-changed", Overwrite::IfChanged),
            ("if-newer", Overwrite::IfNewer),
            ("never", Overwrite::Never),
        ] {
            assert_eq!(Overwrite::parse(s), Some(m));
        }
        assert_eq!(Overwrite::parse("sometimes"), None);
    }

    #[test]
    fn each_mode_decides_for_an_existing_file() {
        let d = tempfile::tempdir().unwrap();
        let f = found_file(d.path(), "f", b"abcd", 2_000_000_000_000_000_005);
        let w = |size, mtime_ns| Wanted {
            file: true,
            size,
            mtime_ns,
            chunks: &[],
        };
        let same = w(4, 2_000_000_000_000_000_005);
        let older = w(4, 1_000_000_000_000_000_000);
        let newer = w(4, 3_000_000_000_000_000_000);
        let keeps =
            |d: Decision, attrs: bool| matches!(d, Decision::Keep { attrs: a, .. } if a == attrs);
        assert!(matches!(
            decide(Overwrite::Always, false, &same, Some(&f)),
            Decision::Replace(_)
        ));
        assert!(keeps(
            decide(Overwrite::IfChanged, false, &same, Some(&f)),
            true
        ));
        assert_eq!(
            decide(Overwrite::IfChanged, false, &older, Some(&f)),
            Decision::Replace("mtime differs".into())
        );
        assert_eq!(
            decide(
                Overwrite::IfChanged,
                false,
                &w(5, 2_000_000_000_000_000_005),
                Some(&f)
            ),
            Decision::Replace("size differs".into())
        );
        assert!(keeps(
            decide(Overwrite::IfNewer, false, &older, Some(&f)),
            false
        ));
        assert!(keeps(
            decide(Overwrite::IfNewer, false, &same, Some(&f)),
            false
        ));
        assert!(matches!(
            decide(Overwrite::IfNewer, false, &newer, Some(&f)),
            Decision::Replace(_)
        ));
        assert!(keeps(
            decide(Overwrite::Never, false, &newer, Some(&f)),
            false
        ));
        for m in [
            Overwrite::Always,
            Overwrite::IfChanged,
            Overwrite::IfNewer,
            Overwrite::Never,
        ] {
            assert_eq!(decide(m, true, &same, None), Decision::New);
        }
    }

    #[test]
    fn another_kind_in_the_way_is_replaced_except_with_never() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("x")).unwrap();
        let f = Existing::open(d.path())
            .unwrap()
            .look(&[b"x"])
            .unwrap()
            .unwrap();
        let w = Wanted {
            file: true,
            size: 0,
            mtime_ns: 0,
            chunks: &[],
        };
        assert_eq!(
            decide(Overwrite::IfChanged, false, &w, Some(&f)),
            Decision::Replace("a directory is there".into())
        );
        assert!(matches!(
            decide(Overwrite::Never, false, &w, Some(&f)),
            Decision::Keep { attrs: false, .. }
        ));
        assert!(matches!(
            decide_dir(Overwrite::Never, Some(&f)),
            Decision::Keep { attrs: false, .. }
        ));
        assert!(matches!(
            decide_dir(Overwrite::IfNewer, Some(&f)),
            Decision::Keep { attrs: true, .. }
        ));
    }

    #[test]
    fn verify_existing_compares_chunks_and_holes() {
        let d = tempfile::tempdir().unwrap();
        // 3 bytes of data, a hole of 5 (zeros), 2 bytes of data.
        let data = b"abc\0\0\0\0\0de";
        let f = found_file(d.path(), "f", data, 7);
        let chunks = [
            (0, ChunkId::of(b"abc"), 0, loc(3)),
            (8, ChunkId::of(b"de"), 0, loc(2)),
        ];
        // The mtime differs: content decides.
        let w = Wanted {
            file: true,
            size: 10,
            mtime_ns: 8,
            chunks: &chunks,
        };
        assert!(matches!(
            decide(Overwrite::IfChanged, true, &w, Some(&f)),
            Decision::Keep { attrs: true, .. }
        ));
        let other = [
            (0, ChunkId::of(b"abc"), 0, loc(3)),
            (8, ChunkId::of(b"dX"), 0, loc(2)),
        ];
        let w2 = Wanted {
            chunks: &other,
            ..w
        };
        assert_eq!(
            decide(Overwrite::IfChanged, true, &w2, Some(&f)),
            Decision::Replace("content differs".into())
        );
        // Not zeros where the snapshot has a hole.
        let g = found_file(d.path(), "g", b"abc\0\0x\0\0de", 8);
        assert_eq!(
            decide(Overwrite::IfChanged, true, &w, Some(&g)),
            Decision::Replace("content differs".into())
        );
    }

    #[test]
    fn looks_never_follow_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("dir")).unwrap();
        let mut ex = Existing::open(d.path()).unwrap();
        assert!(ex.look(&[b"dir", b"f"]).unwrap().is_none());
        assert_eq!(
            ex.look(&[b"dir"]).unwrap().unwrap().file_type(),
            FileType::Symlink
        );
        assert!(
            Existing::open(&d.path().join("missing"))
                .unwrap()
                .look(&[b"a"])
                .unwrap()
                .is_none()
        );
    }
}
