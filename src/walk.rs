//! The directory walk: pre-order (a directory before its contents), sorted
//! by name, never following symlinks, applying glob excludes.
//!
//! Exclude patterns without a `/` match an entry's name at any depth
//! (`*.log`); patterns with a `/` match the whole absolute path
//! (`/var/cache/*`). An excluded directory is not descended into.
//!
//! What is listed and read is what was stat'ed: every directory is opened
//! without following a symlink or blocking, and the open directory must be
//! the one stat'ed at that path (device and inode); its entries are read
//! from it and stat'ed relative to it, not by path. The readers check each
//! file the same way ([`open_file`]). An entry replaced in between (by a
//! symlink, a FIFO, another file or directory) is reported, never followed.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use glob::{MatchOptions, Pattern};
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RawDir, Stat};
use rustix::io::Errno;

use crate::error::{Error, Result};

pub struct Excludes {
    names: Vec<Pattern>,
    paths: Vec<Pattern>,
}

const OPTS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Excludes {
    pub fn new<'a>(patterns: impl Iterator<Item = &'a String>) -> Result<Excludes> {
        let mut ex = Excludes {
            names: Vec::new(),
            paths: Vec::new(),
        };
        for p in patterns {
            let pat = Pattern::new(p).map_err(|e| Error::Setup(format!("exclude `{p}`: {e}")))?;
            if p.contains('/') {
                ex.paths.push(pat);
            } else {
                ex.names.push(pat);
            }
        }
        Ok(ex)
    }

    pub fn matches(&self, path: &Path) -> bool {
        let name_hit = !self.names.is_empty()
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| self.names.iter().any(|p| p.matches_with(n, OPTS)));
        name_hit
            || !self.paths.is_empty()
                && path
                    .to_str()
                    .is_some_and(|s| self.paths.iter().any(|p| p.matches_with(s, OPTS)))
    }
}

/// Something the walk could not read; the caller decides whether it is fatal.
pub struct WalkError {
    pub path: PathBuf,
    pub err: std::io::Error,
}

/// An entry that was something else by the time it was opened than what
/// its stat said: a warning, like a file deleted during the backup.
pub struct Replaced {
    pub path: PathBuf,
    /// What is there now, for the warning: "a symlink", "another file"...
    pub now: &'static str,
    /// A directory (already visited as stat'ed): its contents are not walked.
    pub dir: bool,
}

/// Directories are opened to be listed: never through a symlink (at the
/// last component; the device and inode check covers those above it) and
/// never blocking, whatever was put in their place.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::CLOEXEC);

/// Files are opened to be read the same way, and not as a controlling
/// terminal. O_NONBLOCK is cleared again once the file is known to be a
/// regular file: local filesystems ignore it there, but some pass it on.
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// The kind of file a stat describes.
pub fn kind(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// A stat's device and inode, the identity checked when a walked entry is
/// opened.
pub fn dev_ino(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

fn kind_name(st: &Stat) -> &'static str {
    match kind(st) {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "something else",
    }
}

/// What is at `name` (relative to `dir`) now, for a warning only.
fn now_at<P: rustix::path::Arg>(dir: BorrowedFd<'_>, name: P) -> &'static str {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => kind_name(&st),
        Err(Errno::NOENT) => "gone",
        Err(_) => "unreachable",
    }
}

/// An entry looked up relative to an open directory.
enum Found {
    /// Its stat and, for a symlink, its target.
    Entry(Stat, Option<Vec<u8>>),
    /// Deleted since it was listed.
    Gone,
    /// A symlink when stat'ed, something else when its target was read.
    Replaced(&'static str),
    Failed(std::io::Error),
}

fn look_up<P: rustix::path::Arg + Copy>(dir: BorrowedFd<'_>, name: P) -> Found {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Found::Gone,
        Err(e) => return Found::Failed(e.into()),
    };
    if kind(&st) != FileType::Symlink {
        return Found::Entry(st, None);
    }
    match rustix::fs::readlinkat(dir, name, Vec::new()) {
        Ok(target) => Found::Entry(st, Some(target.into_bytes())),
        Err(Errno::NOENT) => Found::Gone,
        // Not a symlink (any more).
        Err(Errno::INVAL) => Found::Replaced(now_at(dir, name)),
        Err(e) => Found::Failed(e.into()),
    }
}

/// How a listed entry is known until it is visited.
enum Known {
    /// Stat'ed (and a symlink's target read) while its directory was listed.
    Stat(Stat, Option<Vec<u8>>),
    /// To look up when visited, relative to its directory, kept open until
    /// then (a stat that failed while listing, or past `PRESTAT_MAX`).
    Later(Rc<OwnedFd>),
}

struct Pending {
    path: PathBuf,
    known: Known,
    /// Device and inode of the directory it was listed in.
    parent: (u64, u64),
}

/// Called with each entry: its path, stat and (a symlink's) target.
pub type Visit<'a> = dyn FnMut(PathBuf, &Stat, Option<Vec<u8>>) -> Result<()> + 'a;

/// Walk `root`, calling `visit` for every entry not excluded (root
/// included; the path is handed over, to keep without a copy; a symlink
/// comes with its target), `failed` for entries that cannot be read and
/// `replaced` for entries found replaced since their stat. Any callback
/// may stop the walk by returning an error.
///
/// `base` is the configured path that holds `root` (`root` itself for a
/// full walk). A configured path is stat'ed by path: where it leads is the
/// admin's choice. A subtree below it (the daemon's dirty paths) is reached
/// from it one directory at a time, never through a symlink, and has no
/// entries when that way is gone.
pub fn walk(
    root: &Path,
    base: &Path,
    excludes: &Excludes,
    visit: &mut Visit<'_>,
    failed: &mut dyn FnMut(WalkError) -> Result<()>,
    replaced: &mut dyn FnMut(Replaced) -> Result<()>,
) -> Result<()> {
    let (found, parent) = root_entry(root, base);
    let (st, target) = match found {
        Found::Entry(st, target) => (st, target),
        Found::Gone => return Ok(()),
        Found::Replaced(now) => {
            return replaced(Replaced {
                path: root.to_path_buf(),
                now,
                dir: false,
            });
        }
        Found::Failed(err) => {
            return failed(WalkError {
                path: root.to_path_buf(),
                err,
            });
        }
    };
    if kind(&st) != FileType::Directory {
        return visit(root.to_path_buf(), &st, target);
    }
    visit(root.to_path_buf(), &st, target)?;
    let mut w = Walker {
        root,
        excludes,
        failed,
        replaced,
        buf: Vec::with_capacity(DIRENT_BUF),
    };
    let mut stack: Vec<Pending> = Vec::new();
    w.list(root, &st, parent, &mut stack)?;
    while let Some(Pending {
        path,
        known,
        parent,
    }) = stack.pop()
    {
        let (st, target) = match known {
            Known::Stat(st, target) => (st, target),
            Known::Later(dir) => {
                let name = path.file_name().expect("a listed entry has a name");
                match look_up(dir.as_fd(), name) {
                    Found::Entry(st, target) => (st, target),
                    // Listed by its directory, deleted since: nothing to back up.
                    Found::Gone => continue,
                    Found::Replaced(now) => {
                        (w.replaced)(Replaced {
                            path,
                            now,
                            dir: false,
                        })?;
                        continue;
                    }
                    Found::Failed(err) => {
                        (w.failed)(WalkError { path, err })?;
                        continue;
                    }
                }
            }
        };
        if kind(&st) != FileType::Directory {
            visit(path, &st, target)?;
        } else {
            visit(path.clone(), &st, target)?;
            w.list(&path, &st, Some(parent), &mut stack)?;
        }
    }
    Ok(())
}

/// The root's stat (see [`walk`]) and, for a subtree, the device and inode
/// of the directory it was found in.
fn root_entry(root: &Path, base: &Path) -> (Found, Option<(u64, u64)>) {
    let rel = match root.strip_prefix(base) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel,
        _ => {
            let found = match look_up(CWD, root) {
                // A configured path that is not there is an error.
                Found::Gone => Found::Failed(std::io::ErrorKind::NotFound.into()),
                found => found,
            };
            return (found, None);
        }
    };
    let mut names: Vec<&OsStr> = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n),
            _ => {
                let err =
                    std::io::Error::other(format!("not a plain path below {}", base.display()));
                return (Found::Failed(err), None);
            }
        }
    }
    let last = names
        .pop()
        .expect("a non-empty relative path has a component");
    let not_opened = |e: Errno| match e {
        // Deleted, or no longer a directory: this subtree is gone.
        Errno::NOENT | Errno::NOTDIR | Errno::LOOP => (Found::Gone, None),
        e => (Found::Failed(e.into()), None),
    };
    let mut dir = match rustix::fs::openat(CWD, base, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => return not_opened(e),
    };
    for name in names {
        dir = match rustix::fs::openat(dir.as_fd(), name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => return not_opened(e),
        };
    }
    let found = look_up(dir.as_fd(), last);
    let parent = match &found {
        Found::Entry(st, _) if kind(st) == FileType::Directory => match rustix::fs::fstat(&dir) {
            Ok(p) => Some(dev_ino(&p)),
            Err(e) => return (Found::Failed(e.into()), None),
        },
        _ => None,
    };
    (found, parent)
}

/// Whether directory `fd` (opened at `path`), stat'ed as `now`, is a
/// filesystem mounted since on the entry stat'ed as `st` in the
/// directory `parent` (`None` for a configured path: the one above it,
/// by path), over another one: an automount point (autofs, systemd)
/// that opening it mounted. The walk crosses mount points, so that is
/// where it goes, as it always did. Such a mount's `..` is the directory
/// the entry is in: only a mount on that entry can be that, not a
/// directory reached elsewhere through a replaced one above it.
fn automounted(
    path: &Path,
    st: &Stat,
    now: &Stat,
    fd: BorrowedFd<'_>,
    parent: Option<(u64, u64)>,
) -> bool {
    let parent = parent.or_else(|| {
        let up = rustix::fs::statat(CWD, path.parent()?, AtFlags::empty());
        up.ok().map(|p| dev_ino(&p))
    });
    let Some(parent) = parent else { return false };
    let (dev, _) = parent;
    st.st_dev != dev
        && now.st_dev != dev
        && now.st_dev != st.st_dev
        && rustix::fs::statat(fd, c"..", AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|up| dev_ino(&up) == parent)
}

/// What the walk keeps between directories.
struct Walker<'a> {
    root: &'a Path,
    excludes: &'a Excludes,
    failed: &'a mut dyn FnMut(WalkError) -> Result<()>,
    replaced: &'a mut dyn FnMut(Replaced) -> Result<()>,
    /// For getdents, reused from directory to directory.
    buf: Vec<u8>,
}

impl Walker<'_> {
    /// Push the entries of directory `path`, stat'ed as `st` in the
    /// directory `parent` (`None` for a configured path: the one above it,
    /// by path), onto `stack` (sorted by raw bytes, in reverse, so they pop
    /// in order), unless it was replaced since that stat.
    fn list(
        &mut self,
        path: &Path,
        st: &Stat,
        parent: Option<(u64, u64)>,
        stack: &mut Vec<Pending>,
    ) -> Result<()> {
        crate::testhook::pause_at(path);
        let fd = match rustix::fs::openat(CWD, path, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            // Deleted since its stat: recorded as it was, empty.
            Err(Errno::NOENT) if path != self.root => return Ok(()),
            // A symlink or something else now, in its place or above it.
            Err(Errno::NOTDIR | Errno::LOOP) => {
                return (self.replaced)(Replaced {
                    path: path.to_path_buf(),
                    now: now_at(CWD, path),
                    dir: true,
                });
            }
            Err(e) => {
                return (self.failed)(WalkError {
                    path: path.to_path_buf(),
                    err: e.into(),
                });
            }
        };
        let here = match rustix::fs::fstat(&fd) {
            Ok(now) if dev_ino(&now) == dev_ino(st) => dev_ino(&now),
            Ok(now) if automounted(path, st, &now, fd.as_fd(), parent) => dev_ino(&now),
            Ok(_) => {
                return (self.replaced)(Replaced {
                    path: path.to_path_buf(),
                    now: "another directory",
                    dir: true,
                });
            }
            Err(e) => {
                return (self.failed)(WalkError {
                    path: path.to_path_buf(),
                    err: e.into(),
                });
            }
        };
        let fd = Rc::new(fd);
        let first = stack.len();
        let mut prestat = 0;
        let mut targets = 0;
        let mut entries = RawDir::new(fd.as_fd(), self.buf.spare_capacity_mut());
        while let Some(entry) = entries.next() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    (self.failed)(WalkError {
                        path: path.to_path_buf(),
                        err: e.into(),
                    })?;
                    break;
                }
            };
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let child = path.join(OsStr::from_bytes(name.to_bytes()));
            if self.excludes.matches(&child) {
                continue;
            }
            let known = if prestat < PRESTAT_MAX && targets < PRESTAT_TARGETS {
                prestat += 1;
                match look_up(fd.as_fd(), name) {
                    Found::Entry(st, target) => {
                        targets += target.as_ref().map_or(0, Vec::len);
                        Known::Stat(st, target)
                    }
                    Found::Gone => continue,
                    // Looked up again when visited, which reports it.
                    Found::Replaced(_) | Found::Failed(_) => Known::Later(fd.clone()),
                }
            } else {
                Known::Later(fd.clone())
            };
            stack.push(Pending {
                path: child,
                known,
                parent: here,
            });
        }
        // Names are unique: an unstable sort, which moves these big items less.
        stack[first..].sort_unstable_by(|a, b| {
            b.path
                .as_os_str()
                .as_bytes()
                .cmp(a.path.as_os_str().as_bytes())
        });
        Ok(())
    }
}

/// Entries of one directory stat'ed while it is listed (~220 bytes each,
/// and a symlink's target, held until visited, up to `PRESTAT_TARGETS`
/// bytes of targets); the rest of a larger directory is looked up when
/// visited, relative to the directory, which stays open until then.
const PRESTAT_MAX: usize = 4096;
const PRESTAT_TARGETS: usize = 256 << 10;

/// getdents buffer: room for a hundred entries or more per call.
const DIRENT_BUF: usize = 32 << 10;

/// A regular file the walk stat'ed, opened to be read.
pub enum Opened {
    File(std::fs::File),
    /// Deleted since the walk.
    Gone,
    /// Something else is at its path now: what, for the warning.
    Replaced(&'static str),
}

/// Open the regular file at `path` that the walk stat'ed as `(dev, ino)`,
/// never through a symlink and never blocking (on a FIFO put in its
/// place), and only if it still is that file. The whole path is looked up,
/// so a directory above the file may have been replaced since the walk:
/// the device and inode check covers that too, since the walk stat'ed the
/// file relative to its own directory, itself opened and checked.
pub fn open_file(path: &Path, (dev, ino): (u64, u64)) -> std::io::Result<Opened> {
    crate::testhook::pause_at(path);
    let mut waited = std::time::Duration::ZERO;
    let fd = loop {
        match rustix::fs::openat(CWD, path, FILE_FLAGS, Mode::empty()) {
            Ok(fd) => break fd,
            Err(Errno::NOENT) => return Ok(Opened::Gone),
            // ELOOP: a symlink (O_NOFOLLOW); ENXIO, ENODEV: a socket or a
            // device without a driver; ENOTDIR: a directory above it is no
            // longer one.
            Err(Errno::LOOP | Errno::NXIO | Errno::NODEV | Errno::NOTDIR) => {
                return Ok(Opened::Replaced(now_at(CWD, path)));
            }
            // A lease (a file server's oplock) is being broken: a blocking
            // open would wait for that, up to the kernel's lease-break-time
            // (45 s by default); so do we, asking again.
            Err(Errno::WOULDBLOCK) if waited < LEASE_WAIT => {
                std::thread::sleep(LEASE_POLL);
                waited += LEASE_POLL;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let st = rustix::fs::fstat(&fd)?;
    if kind(&st) != FileType::RegularFile {
        return Ok(Opened::Replaced(kind_name(&st)));
    }
    if dev_ino(&st) != (dev, ino) {
        return Ok(Opened::Replaced("another file"));
    }
    rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
    Ok(Opened::File(std::fs::File::from(fd)))
}

const LEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(50);
const LEASE_POLL: std::time::Duration = std::time::Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_by_name_and_path() {
        let pats = ["*.log".to_string(), "/var/cache/*".to_string()];
        let ex = Excludes::new(pats.iter()).unwrap();
        assert!(ex.matches(Path::new("/a/b/x.log")));
        assert!(!ex.matches(Path::new("/a/b/x.log.gz")));
        assert!(ex.matches(Path::new("/var/cache/apt")));
        assert!(!ex.matches(Path::new("/var/cache")));
        assert!(!ex.matches(Path::new("/var/cache/apt/archives")));
    }

    /// Every visit of a walk as (path, kind, symlink target); failures and
    /// replacements end the walk with a panic.
    fn visits(
        root: &Path,
        base: &Path,
        excludes: &[&str],
    ) -> Vec<(PathBuf, FileType, Option<Vec<u8>>)> {
        let pats: Vec<String> = excludes.iter().map(|s| s.to_string()).collect();
        let ex = Excludes::new(pats.iter()).unwrap();
        let mut out = Vec::new();
        walk(
            root,
            base,
            &ex,
            &mut |p, st, t| {
                out.push((p, kind(st), t));
                Ok(())
            },
            &mut |w| panic!("{}: {}", w.path.display(), w.err),
            &mut |r| panic!("{} replaced by {}", r.path.display(), r.now),
        )
        .unwrap();
        out
    }

    #[test]
    fn pre_order_sorted_by_bytes_with_targets_and_excludes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("r");
        std::fs::create_dir_all(root.join("b/inner")).unwrap();
        std::fs::create_dir_all(root.join("cache/x")).unwrap();
        std::fs::write(root.join("B"), b"").unwrap();
        std::fs::write(root.join("b/inner/f"), b"f").unwrap();
        std::fs::write(root.join("b/skip.log"), b"").unwrap();
        std::fs::write(root.join("cache/x/y"), b"").unwrap();
        std::os::unix::fs::symlink("../elsewhere", root.join("a-link")).unwrap();
        std::os::unix::fs::symlink(root.join("b"), root.join("c-link")).unwrap();
        let cache = format!("{}/cache", root.display());
        let got = visits(&root, &root, &["*.log", &cache]);
        let names: Vec<String> = got
            .iter()
            .map(|(p, _, _)| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["", "B", "a-link", "b", "b/inner", "b/inner/f", "c-link"]
        );
        assert_eq!(got[0].1, FileType::Directory);
        assert_eq!(got[2].1, FileType::Symlink);
        assert_eq!(got[2].2.as_deref(), Some(&b"../elsewhere"[..]));
        assert_eq!(got[5].1, FileType::RegularFile);
        assert_eq!(got[5].2, None);
        // Symlinks are recorded, never followed.
        assert_eq!(got[6].1, FileType::Symlink);
        assert_eq!(
            got[6].2.as_deref(),
            Some(root.join("b").as_os_str().as_bytes())
        );
    }

    #[test]
    fn a_directory_past_the_prestat_limit_is_walked_whole_and_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let n = PRESTAT_MAX + 300;
        for i in 0..n {
            let p = tmp.path().join(format!("e{i:05}"));
            if i % 7 == 0 {
                std::os::unix::fs::symlink(format!("t{i}"), &p).unwrap();
            } else if i % 11 == 0 {
                std::fs::create_dir(&p).unwrap();
                std::fs::write(p.join("in"), b"").unwrap();
            } else {
                std::fs::write(&p, b"").unwrap();
            }
        }
        let got = visits(tmp.path(), tmp.path(), &[]);
        let mut want = vec![(tmp.path().to_path_buf(), FileType::Directory, None)];
        for i in 0..n {
            let p = tmp.path().join(format!("e{i:05}"));
            if i % 7 == 0 {
                want.push((p, FileType::Symlink, Some(format!("t{i}").into_bytes())));
            } else if i % 11 == 0 {
                want.push((p.clone(), FileType::Directory, None));
                want.push((p.join("in"), FileType::RegularFile, None));
            } else {
                want.push((p, FileType::RegularFile, None));
            }
        }
        assert!(got == want, "{} visits, {} wanted", got.len(), want.len());
    }

    #[test]
    fn a_subtree_is_reached_from_its_configured_path_never_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base");
        std::fs::create_dir_all(base.join("x/y")).unwrap();
        std::fs::write(base.join("x/y/mine"), b"").unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(elsewhere.join("y")).unwrap();
        std::fs::write(elsewhere.join("y/theirs"), b"").unwrap();
        let sub = base.join("x/y");
        let got = visits(&sub, &base, &[]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0, sub.join("mine"));
        // `x` becomes a symlink to another directory with a `y` in it.
        std::fs::rename(base.join("x"), tmp.path().join("old-x")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, base.join("x")).unwrap();
        assert!(visits(&sub, &base, &[]).is_empty());
        // Gone altogether: nothing either, and no error.
        std::fs::remove_file(base.join("x")).unwrap();
        assert!(visits(&sub, &base, &[]).is_empty());
        // A configured path itself is the admin's: stat'ed by path.
        std::os::unix::fs::symlink(&elsewhere, base.join("x")).unwrap();
        let got = visits(&sub, &sub, &[]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0, sub.join("theirs"));
    }
}
