//! A directory used as an object store (USB disk, NAS mount, the embedded
//! default): one file per key, written to a temporary name and renamed into
//! place so that an object is either absent or complete.
//!
//! Whoever else writes to the directory may be hostile: below the root,
//! nothing is ever followed through a symlink. Every operation starts from
//! the root's descriptor and opens one component at a time with
//! `O_NOFOLLOW|O_DIRECTORY`; objects are opened with `O_NOFOLLOW|O_NONBLOCK`
//! and must be regular files; temporary files are created with
//! `O_EXCL|O_NOFOLLOW`; a listing descends only into real directories, no
//! deeper than the layout goes, and reports everything else as foreign.
//! (The root itself is the admin's choice and may be a symlink.)

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::class::StorageClass;
use super::{Listing, Op, Stats, Store, check_key, too_large};
use crate::error::{Error, IoContext, Result};

const TMP_MARK: &str = ".vaultik-tmp-";

/// Keys have at most this many `/`-separated parts (`blobs/aa/bb/<hash>`):
/// a listing never descends deeper.
const KEY_DEPTH: usize = 4;

pub struct LocalStore {
    root_path: PathBuf,
    root: OwnedFd,
    stats: Stats,
    seq: AtomicU64,
}

/// `O_NOFOLLOW|O_CLOEXEC`, and for reads `O_NONBLOCK|O_NOCTTY` too: a FIFO
/// or device planted in the store is refused, never waited on.
fn nofollow() -> OFlags {
    OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY
}

fn open_dir(parent: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK | nofollow(),
        Mode::empty(),
    )?)
}

/// ELOOP (a symlink) and ENOTDIR (a file) where a directory should be.
fn not_a_dir(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::LOOP) | Some(Errno::NOTDIR)
    )
}

fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// A key whose object is a symlink, a FIFO or in a directory that is not
/// one: a damaged store, as a corrupt object is.
fn not_object(key: &str, e: io::Error) -> Error {
    Error::corrupt(format!("object {key}"), e)
}

/// A store path that names something other than a directory.
fn not_a_directory(root: &Path, t: std::fs::FileType) -> Error {
    use std::os::unix::fs::FileTypeExt;
    let what = if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "something else"
    };
    Error::Setup(format!(
        "store {} is {what}, not a directory (check --store, $VAULTIK_STORE or the \
         config's [local] path)",
        crate::error::shown(root)
    ))
}

impl LocalStore {
    pub fn open(root: &Path, create: bool) -> Result<LocalStore> {
        match std::fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => return Err(not_a_directory(root, m.file_type())),
            Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir_all(root).at("create store directory", root)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::Setup(format!(
                    "no vaultik store at {}: No such file or directory (check --store, \
                     $VAULTIK_STORE or the config's [local] path)",
                    crate::error::shown(root)
                )));
            }
            Err(e) => return Err(e).at("open store directory", root),
        }
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
        .at("open store directory", root)?;
        Ok(LocalStore {
            root_path: root.to_path_buf(),
            root: fd,
            stats: Stats::default(),
            seq: AtomicU64::new(0),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root_path.join(key)
    }

    /// The directory that holds `key`, opened one component at a time
    /// without following symlinks (created when `create`), and the key's
    /// last component.
    fn parent<'k>(&self, key: &'k str, create: bool) -> io::Result<(OwnedFd, &'k str)> {
        let mut cur = open_dir(self.root.as_fd(), ".")?;
        let Some((dir, name)) = key.rsplit_once('/') else {
            // At the root (the store's identity).
            return Ok((cur, key));
        };
        let mut walked = String::new();
        for part in dir.split('/') {
            walked.push_str(part);
            let next = match open_dir(cur.as_fd(), part) {
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    match rustix::fs::mkdirat(cur.as_fd(), part, Mode::from_raw_mode(0o777)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    open_dir(cur.as_fd(), part)
                }
                r => r,
            };
            cur = next.map_err(|e| {
                if not_a_dir(&e) {
                    refused(format!(
                        "{walked} is not a directory (a symlink or file is in its place; \
                         the store never follows one)"
                    ))
                } else {
                    e
                }
            })?;
            walked.push('/');
        }
        Ok((cur, name))
    }

    /// Open the object `key` for reading: a regular file, never through a
    /// symlink, never blocking on a FIFO. Its size too.
    fn open_object(&self, key: &str) -> io::Result<(File, u64)> {
        let (dir, name) = self.parent(key, false)?;
        let fd = rustix::fs::openat(
            dir.as_fd(),
            name,
            OFlags::RDONLY | OFlags::NONBLOCK | nofollow(),
            Mode::empty(),
        )
        .map_err(|e| match e {
            Errno::LOOP => refused("a symlink, not an object; the store never follows one".into()),
            e => e.into(),
        })?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(refused("not a regular file; refused".into()));
        }
        Ok((File::from(fd), st.st_size as u64))
    }

    /// Write an object under a temporary name (created exclusively, never
    /// through a symlink) with `fill`, then rename it into place; or, with
    /// `new_only`, link it into place, which fails if the name is taken
    /// (then the length is None).
    fn write_atomically(
        &self,
        key: &str,
        new_only: bool,
        fill: impl FnOnce(&Path, &mut File) -> io::Result<u64>,
    ) -> Result<Option<u64>> {
        let dest = self.path(key);
        let (dir, name) = self.parent(key, true).at("write object", &dest)?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = format!("{TMP_MARK}{}-{n}", std::process::id());
        let result = (|| {
            let fd = rustix::fs::openat(
                dir.as_fd(),
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | nofollow(),
                Mode::from_raw_mode(0o666),
            )?;
            let mut f = File::from(fd);
            let len = fill(&dest, &mut f)?;
            f.sync_all()?;
            if !new_only {
                rustix::fs::renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name)?;
                return Ok(Some(len));
            }
            let linked = rustix::fs::linkat(
                dir.as_fd(),
                tmp.as_str(),
                dir.as_fd(),
                name,
                AtFlags::empty(),
            );
            let _ = rustix::fs::unlinkat(dir.as_fd(), tmp.as_str(), AtFlags::empty());
            match linked {
                Ok(()) => Ok(Some(len)),
                Err(Errno::EXIST) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(dir.as_fd(), tmp.as_str(), AtFlags::empty());
        }
        result.at("write object", &dest)
    }
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("directory {}", self.root_path.display())
    }

    fn put_file(&self, key: &str, path: &Path, _class: StorageClass) -> Result<()> {
        check_key("PUT", key)?;
        // Same file system: link the finished file in instead of copying it.
        let dest = self.path(key);
        let (dir, name) = self.parent(key, true).at("write object", &dest)?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = format!("{TMP_MARK}{}-{n}", std::process::id());
        // `path` is this run's own temporary file, not a name from the store.
        if rustix::fs::linkat(
            rustix::fs::CWD,
            path,
            dir.as_fd(),
            tmp.as_str(),
            AtFlags::empty(),
        )
        .is_ok()
        {
            let done = File::open(path)
                .and_then(|f| {
                    f.sync_all()?;
                    f.metadata().map(|m| m.len())
                })
                .and_then(|len| {
                    rustix::fs::renameat(dir.as_fd(), tmp.as_str(), dir.as_fd(), name)?;
                    Ok(len)
                });
            match done {
                Ok(len) => {
                    self.stats.count(Op::Put, len, 0);
                    return Ok(());
                }
                Err(_) => {
                    let _ = rustix::fs::unlinkat(dir.as_fd(), tmp.as_str(), AtFlags::empty());
                }
            }
        }
        let mut src = File::open(path).at("open", path)?;
        let len = self.write_atomically(key, false, |_, f| io::copy(&mut src, f))?;
        self.stats.count(Op::Put, len.unwrap_or(0), 0);
        Ok(())
    }

    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<()> {
        check_key("PUT", key)?;
        self.write_atomically(key, false, |_, f| {
            f.write_all(data).map(|_| data.len() as u64)
        })?;
        self.stats.count(Op::Put, data.len() as u64, 0);
        Ok(())
    }

    fn put_new(&self, key: &str, data: &[u8]) -> Result<bool> {
        check_key("PUT", key)?;
        let made = self.write_atomically(key, true, |_, f| {
            f.write_all(data).map(|_| data.len() as u64)
        })?;
        self.stats.count(Op::Put, data.len() as u64, 0);
        Ok(made.is_some())
    }

    fn get(&self, key: &str, limit: u64) -> Result<Vec<u8>> {
        check_key("GET", key)?;
        let path = self.path(key);
        let (f, size) = match self.open_object(key) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.stats.count(Op::Get, 0, 0);
                return Err(Error::NotFound { key: key.into() });
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(not_object(key, e)),
            r => r.at("read object", &path)?,
        };
        if size > limit {
            self.stats.count(Op::Get, 0, 0);
            return Err(too_large(key, size, limit));
        }
        // Never more than the limit, even if the file grows meanwhile.
        let data = super::read_bounded(f, limit).at("read object", &path)?;
        let Some(data) = data else {
            self.stats.count(Op::Get, 0, limit);
            return Err(too_large(key, limit + 1, limit));
        };
        self.stats.count(Op::Get, 0, data.len() as u64);
        Ok(data)
    }

    fn open_range(&self, key: &str, start: u64, len: u64) -> Result<Box<dyn Read + Send + '_>> {
        check_key("GET", key)?;
        let path = self.path(key);
        let mut f = match self.open_object(key) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.stats.count(Op::Get, 0, 0);
                return Err(Error::NotFound { key: key.into() });
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(not_object(key, e)),
            r => r.at("open object", &path)?.0,
        };
        f.seek(SeekFrom::Start(start)).at("seek in object", &path)?;
        self.stats.count(Op::Get, 0, 0);
        Ok(Box::new(super::Exact {
            inner: f,
            remaining: len,
            received: &self.stats.bytes_received,
        }))
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        check_key("HEAD", key)?;
        self.stats.count(Op::Head, 0, 0);
        let path = self.path(key);
        let stat = self.parent(key, false).and_then(|(dir, name)| {
            Ok(rustix::fs::statat(
                dir.as_fd(),
                name,
                AtFlags::SYMLINK_NOFOLLOW,
            )?)
        });
        match stat {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile => {
                Ok(Some(st.st_size as u64))
            }
            Ok(_) => Err(not_object(
                key,
                refused("not a regular file; refused".into()),
            )),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(not_object(key, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at("stat object", &path),
        }
    }

    fn list(&self, prefix: &str) -> Result<Listing> {
        self.stats.count(Op::List, 0, 0);
        let mut out = Listing::default();
        // Walk from the deepest directory that the prefix names.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            open_dir(self.root.as_fd(), ".")
        } else {
            // A placeholder key below the directory, for `parent`.
            let probe = format!("{dir_part}/x");
            self.parent(&probe, false).map(|(fd, _)| fd)
        };
        let start = match start {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                // A symlink or file where a directory of the layout should be.
                out.add_foreign(dir_part.to_string());
                return Ok(out);
            }
            Err(e) => return Err(e).at("list", &self.path(dir_part)),
        };
        // Each pending directory holds its parent's descriptor (shared):
        // open descriptors stay at most as many as the layout is deep.
        let depth0 = if dir_part.is_empty() {
            0
        } else {
            dir_part.split('/').count()
        };
        let mut stack: Vec<(Rc<OwnedFd>, Option<String>, String, usize)> =
            vec![(Rc::new(start), None, dir_part.to_string(), depth0)];
        while let Some((parent, name, rel, depth)) = stack.pop() {
            let fd = match &name {
                None => rustix::io::dup(&*parent).map_err(io::Error::from),
                Some(n) => open_dir(parent.as_fd(), n),
            };
            let fd = match fd {
                Ok(fd) => Rc::new(fd),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if not_a_dir(&e) => {
                    out.add_foreign(rel);
                    continue;
                }
                Err(e) => return Err(e).at("list", &self.path(&rel)),
            };
            let mut entries = rustix::fs::Dir::read_from(&*fd)
                .map_err(io::Error::from)
                .at("list", &self.path(&rel))?;
            while let Some(entry) = entries.read() {
                let entry = entry
                    .map_err(io::Error::from)
                    .at("list", &self.path(&rel))?;
                let raw = entry.file_name().to_bytes();
                if raw == b"." || raw == b".." {
                    continue;
                }
                let key_of = |n: &str| {
                    if rel.is_empty() {
                        n.to_string()
                    } else {
                        format!("{rel}/{n}")
                    }
                };
                let Ok(name) = std::str::from_utf8(raw) else {
                    out.add_foreign(key_of(&String::from_utf8_lossy(raw)));
                    continue;
                };
                if name.starts_with(TMP_MARK) {
                    continue;
                }
                let key = key_of(name);
                if !key.starts_with(prefix) && !prefix.starts_with(&format!("{key}/")) {
                    continue;
                }
                let st = match rustix::fs::statat(&*fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => st,
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(io::Error::from(e)).at("stat", &self.path(&key)),
                };
                let ft = FileType::from_raw_mode(st.st_mode);
                if ft == FileType::Directory && depth + 1 < KEY_DEPTH {
                    stack.push((fd.clone(), Some(name.to_string()), key, depth + 1));
                } else if !key.starts_with(prefix) {
                    // Beside the prefix, not under it.
                } else if ft == FileType::RegularFile {
                    let modified = u64::try_from(st.st_mtime).unwrap_or(0);
                    out.add(key, st.st_size as u64, modified, StorageClass::Standard);
                    if out.objects.len() > super::LIST_MAX {
                        return Err(super::too_many(prefix));
                    }
                } else {
                    // Symlinks, FIFOs, devices, directories deeper than any key.
                    out.add_foreign(key);
                }
            }
        }
        Ok(out.sorted())
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key("DELETE", key)?;
        self.stats.count(Op::Delete, 0, 0);
        let path = self.path(key);
        let r = self.parent(key, false).and_then(|(dir, name)| {
            // unlinkat removes the name itself: a symlink there is removed,
            // never followed.
            Ok(rustix::fs::unlinkat(dir.as_fd(), name, AtFlags::empty())?)
        });
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at("delete object", &path),
        }
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    const KEY: &str = "metadata/h_n_2026-11-23T083015Z/manifest.json.zst";

    fn store() -> (tempfile::TempDir, LocalStore, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let s = LocalStore::open(&root, true).unwrap();
        (dir, s, root)
    }

    #[test]
    fn a_temporary_name_taken_by_a_symlink_is_never_written_through() {
        let (dir, s, root) = store();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let d = root.join("metadata/h_n_2026-11-23T083015Z");
        std::fs::create_dir_all(&d).unwrap();
        // The name the next write will use.
        let tmp = format!("{TMP_MARK}{}-0", std::process::id());
        symlink(&victim, d.join(&tmp)).unwrap();
        assert!(s.put_bytes(KEY, b"data").is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // The next name is free: the write goes where it belongs.
        s.put_bytes(KEY, b"data").unwrap();
        assert_eq!(s.get(KEY, 100).unwrap(), b"data");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn symlinked_directories_are_never_followed() {
        let (dir, s, root) = store();
        let victim = dir.path().join("victim");
        let hash = "ab".repeat(32);
        let key = format!("blobs/ab/ab/{hash}");
        std::fs::create_dir_all(victim.join("ab")).unwrap();
        std::fs::write(victim.join("ab").join(&hash), b"not ours").unwrap();
        symlink(&victim, root.join("blobs")).unwrap();
        let l = s.list("blobs/").unwrap();
        assert!(l.objects.is_empty());
        assert_eq!(l.foreign, vec!["blobs"]);
        assert!(s.get(&key, 100).is_err());
        assert!(s.head(&key).is_err());
        s.delete(&key).unwrap_err();
        assert!(victim.join("ab").join(&hash).exists());
        let e = s.put_bytes(&key, b"x").unwrap_err().to_string();
        assert!(e.contains("blobs is not a directory"), "{e}");
        // Deeper down, the same.
        std::fs::remove_file(root.join("blobs")).unwrap();
        std::fs::create_dir_all(root.join("blobs")).unwrap();
        symlink(&victim, root.join("blobs/ab")).unwrap();
        let l = s.list("blobs/").unwrap();
        assert!(l.objects.is_empty());
        assert_eq!(l.foreign, vec!["blobs/ab"]);
        assert!(s.get(&key, 100).is_err());
        assert!(victim.join("ab").join(&hash).exists());
    }

    #[test]
    fn objects_must_be_regular_files_and_fit_their_limit() {
        let (dir, s, root) = store();
        s.put_bytes(KEY, b"0123456789").unwrap();
        let e = s.get(KEY, 5).unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
        assert_eq!(s.get(KEY, 10).unwrap(), b"0123456789");
        // A FIFO in place of the object: refused at once, not waited on.
        let path = root.join(KEY);
        std::fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = s.get(KEY, 100).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        assert!(s.head(KEY).is_err());
        let l = s.list("metadata/").unwrap();
        assert!(l.objects.is_empty() && l.foreign_count == 1, "{l:?}");
        // A symlink in place of the object.
        std::fs::remove_file(&path).unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"outside").unwrap();
        symlink(&outside, &path).unwrap();
        assert!(s.get(KEY, 100).is_err());
        s.delete(KEY).unwrap();
        assert!(outside.exists(), "only the link is removed");
        // Keys outside the layout are refused by every operation.
        for bad in ["../x", "blobs/../../x", "metadata/x/../../y/db.zst.age"] {
            assert!(s.get(bad, 100).is_err());
            assert!(s.put_bytes(bad, b"x").is_err());
            assert!(s.delete(bad).is_err());
        }
        assert!(!dir.path().join("x").exists());
    }

    #[test]
    fn listings_stay_within_the_layout() {
        let (_dir, s, root) = store();
        s.put_bytes(KEY, b"m").unwrap();
        // Too deep, wrong names, not UTF-8.
        let deep = root.join("blobs/ab/cd/ef/gh");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("x"), b"x").unwrap();
        std::fs::write(root.join("blobs/ab/cd/notahash"), b"x").unwrap();
        std::fs::write(
            root.join(std::ffi::OsStr::from_bytes(b"metadata/\xff")),
            b"x",
        )
        .unwrap();
        let l = s.list("blobs/").unwrap();
        assert!(l.objects.is_empty());
        assert_eq!(l.foreign, vec!["blobs/ab/cd/ef", "blobs/ab/cd/notahash"]);
        let l = s.list("metadata/").unwrap();
        assert_eq!(l.objects.len(), 1);
        assert_eq!(l.foreign, vec!["metadata/\u{fffd}"]);
    }
}
