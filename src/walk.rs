//! The directory walk: pre-order (a directory before its contents), sorted
//! by name, never following symlinks, leaving out what [`Excludes`] says.
//!
//! Exclude patterns without a `/` match an entry's name at any depth
//! (`*.log`); patterns with a `/` match the whole absolute path
//! (`/var/cache/*`). An excluded directory is not descended into. A
//! directory holding a tag file (`exclude_if_present`, or a valid
//! `CACHEDIR.TAG` with `exclude_caches`) keeps only the tag file, as GNU
//! tar's `--exclude-tag` does. Mount points below a configured path are
//! recorded but not descended into when `one_file_system` is set, and
//! never when they hold a pseudo-filesystem (proc, sysfs, devtmpfs...),
//! whatever the setting; a configured path itself is always walked.
//!
//! What is listed and read is what was stat'ed: every directory is opened
//! without following a symlink or blocking, and the open directory must be
//! the one stat'ed at that path (device and inode); its entries are read
//! from it and stat'ed relative to it, not by path. The readers check each
//! file the same way ([`open_file`]). An entry replaced in between (by a
//! symlink, a FIFO, another file or directory) is reported, never followed.
//!
//! Each entry comes with what the walk read of its extended attributes
//! and inode flags (`crate::xattrs`): a directory's from its open
//! descriptor; a symlink's or special file's, never opened, through the
//! descriptor of the directory it was listed in (a configured path's by
//! its path). Regular files are left to their readers (the backup opens
//! them, or knows them unchanged). With `exclude_nodump`, a directory
//! with the nodump flag is left out, as dump and borg do (files are the
//! backup's to leave out, once their flags are known).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use std::os::fd::AsRawFd;

use glob::{MatchOptions, Pattern};
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, RawDir, Stat};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::xattrs::Read;

/// The global settings of what a walk leaves out; a snapshot's own add to
/// them (patterns, tag names) or override them (the switches).
#[derive(Debug, Clone, Default)]
pub struct WalkDefaults {
    pub exclude: Vec<String>,
    pub exclude_if_present: Vec<String>,
    pub exclude_caches: bool,
    pub one_file_system: bool,
    pub exclude_nodump: bool,
}

impl WalkDefaults {
    pub fn of(cfg: &crate::config::Config) -> WalkDefaults {
        WalkDefaults {
            exclude: cfg.exclude.clone(),
            exclude_if_present: cfg.exclude_if_present.clone(),
            exclude_caches: cfg.exclude_caches,
            one_file_system: cfg.one_file_system,
            exclude_nodump: cfg.exclude_nodump,
        }
    }

    /// What a walk of snapshot `snap` leaves out.
    pub fn excludes_for(&self, snap: &crate::config::SnapshotConfig) -> Result<Excludes> {
        let tags: Vec<String> = self
            .exclude_if_present
            .iter()
            .chain(&snap.exclude_if_present)
            .cloned()
            .collect();
        Ok(Excludes::new(self.exclude.iter().chain(&snap.exclude))?
            .with_rules(
                &tags,
                snap.exclude_caches.unwrap_or(self.exclude_caches),
                snap.one_file_system.unwrap_or(self.one_file_system),
            )
            .with_nodump(snap.exclude_nodump.unwrap_or(self.exclude_nodump)))
    }
}

/// What a walk leaves out.
pub struct Excludes {
    names: Vec<Pattern>,
    paths: Vec<Pattern>,
    /// `exclude_if_present`: names of tag files.
    tags: Vec<Vec<u8>>,
    /// `exclude_caches`: directories with a valid `CACHEDIR.TAG`.
    caches: bool,
    /// `one_file_system`: no mount point below a configured path is crossed.
    one_file_system: bool,
    /// `exclude_nodump`: entries with the nodump inode flag are left out.
    pub nodump: bool,
    /// Each mounted device's filesystem type.
    mounts: Mounts,
}

/// Why the walk did not descend into a directory (which it recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeftOut {
    /// Another filesystem, with `one_file_system`.
    OtherFilesystem,
    /// A pseudo-filesystem (its type), never walked.
    PseudoFilesystem(String),
    /// It holds this tag file (kept, the rest left out).
    Tagged(String),
}

/// What a walk reports besides the entries it visits.
pub enum Note {
    /// Something the walk could not read; the caller decides whether it
    /// is fatal.
    Failed(WalkError),
    /// An entry replaced since its stat.
    Replaced(Replaced),
    /// A directory recorded but not descended into, and why.
    LeftOut(PathBuf, LeftOut),
    /// An entry matching an exclude pattern (not recorded).
    Excluded(PathBuf),
    /// A directory with the nodump flag, with `exclude_nodump` (not
    /// recorded, nor anything below it).
    Nodump(PathBuf),
}

/// Filesystems that hold no data of their own, by the name the kernel
/// gives their type, and the `f_type` of `statfs` (when the mount table
/// cannot be read: no /proc in a rescue chroot).
const PSEUDO: &[(&str, i64)] = &[
    ("proc", 0x9fa0),
    ("sysfs", 0x6265_6572),
    ("devtmpfs", -1),
    ("devpts", 0x1cd1),
    ("cgroup", 0x0027_e0eb),
    ("cgroup2", 0x6367_7270),
    ("tracefs", 0x7472_6163),
    ("debugfs", 0x6462_6720),
    ("securityfs", 0x7363_6673),
    ("pstore", 0x6165_676c),
    ("bpf", 0xcafe_4a11),
    ("configfs", 0x6265_6570),
    ("fusectl", 0x6573_5543),
    ("mqueue", 0x1980_0202),
    ("hugetlbfs", 0x9584_58f6),
    ("efivarfs", 0xde5e_81e4),
    ("binfmt_misc", 0x4249_4e4d),
    ("nsfs", 0x6e73_6673),
    ("selinuxfs", 0xf97c_ff8c),
    ("rpc_pipefs", 0x6765_6173),
];

/// The first bytes of a valid `CACHEDIR.TAG` (the Cache Directory Tagging
/// Specification, https://bford.info/cachedir/).
const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// The filesystem type of each mounted device, from /proc/self/mountinfo
/// (empty when it cannot be read).
#[derive(Default)]
pub struct Mounts(std::collections::HashMap<u64, String>);

impl Mounts {
    pub fn load() -> Mounts {
        std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| Mounts::parse(&t))
            .unwrap_or_default()
    }

    /// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw`:
    /// the device is the third field, the type the first after ` - `.
    fn parse(text: &str) -> Mounts {
        let mut m = std::collections::HashMap::new();
        for line in text.lines() {
            let dev = line.split(' ').nth(2).and_then(|d| {
                let (a, b) = d.split_once(':')?;
                Some(rustix::fs::makedev(a.parse().ok()?, b.parse().ok()?))
            });
            let fstype = line
                .split_once(" - ")
                .and_then(|(_, r)| r.split(' ').next());
            if let (Some(dev), Some(t)) = (dev, fstype) {
                m.insert(dev, t.to_string());
            }
        }
        Mounts(m)
    }

    /// The pseudo-filesystem on `dev`, if it is one.
    fn pseudo(&self, dev: u64) -> Option<&'static str> {
        let t = self.0.get(&dev)?;
        PSEUDO.iter().find(|(n, _)| n == t).map(|(n, _)| *n)
    }
}

/// The pseudo-filesystem an open directory is on, by `statfs` (for when
/// the mount table says nothing of its device).
fn pseudo_by_statfs(fd: BorrowedFd<'_>) -> Option<&'static str> {
    let f_type = rustix::fs::fstatfs(fd).ok()?.f_type as i64;
    PSEUDO
        .iter()
        .find(|(_, magic)| *magic == f_type)
        .map(|(n, _)| *n)
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
            tags: Vec::new(),
            caches: false,
            one_file_system: false,
            nodump: false,
            mounts: Mounts::default(),
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

    /// Also leave out the contents of directories holding one of `tags`
    /// (or a valid `CACHEDIR.TAG`, with `caches`), and, with
    /// `one_file_system`, the mount points below a configured path.
    pub fn with_rules(mut self, tags: &[String], caches: bool, one_file_system: bool) -> Excludes {
        self.tags = tags.iter().map(|t| t.as_bytes().to_vec()).collect();
        self.caches = caches;
        self.one_file_system = one_file_system;
        self.mounts = Mounts::load();
        self
    }

    /// Also leave out entries with the nodump inode flag (a directory's
    /// contents with it).
    pub fn with_nodump(mut self, on: bool) -> Excludes {
        self.nodump = on;
        self
    }

    /// Why the directory stat'ed as `st`, listed in a directory on device
    /// `parent_dev`, is not to be descended into (a mount point: another
    /// filesystem with `one_file_system`, or a pseudo-filesystem); None
    /// when it is to be walked.
    fn mount_left_out(&self, st: &Stat, parent_dev: u64) -> Option<LeftOut> {
        self.mount_left_out_dev(st.st_dev, parent_dev)
    }

    /// The same for a directory on device `dev` (the daemon's watches).
    pub fn mount_left_out_dev(&self, dev: u64, parent_dev: u64) -> Option<LeftOut> {
        if dev == parent_dev {
            return None;
        }
        if self.one_file_system {
            return Some(LeftOut::OtherFilesystem);
        }
        self.mounts
            .pseudo(dev)
            .map(|t| LeftOut::PseudoFilesystem(t.to_string()))
    }

    /// The tag file in directory `dir` that leaves its other contents out.
    fn tag_in(&self, dir: BorrowedFd<'_>) -> Option<Vec<u8>> {
        for tag in &self.tags {
            if rustix::fs::statat(dir, tag.as_slice(), AtFlags::SYMLINK_NOFOLLOW).is_ok() {
                return Some(tag.clone());
            }
        }
        (self.caches && valid_cachedir_tag(dir)).then(|| b"CACHEDIR.TAG".to_vec())
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

/// Whether `dir` holds a `CACHEDIR.TAG` that is a regular file starting
/// with the specification's signature (opened without following a symlink
/// or blocking).
fn valid_cachedir_tag(dir: BorrowedFd<'_>) -> bool {
    let Ok(fd) = rustix::fs::openat(dir, "CACHEDIR.TAG", FILE_FLAGS, Mode::empty()) else {
        return false;
    };
    if !rustix::fs::fstat(&fd).is_ok_and(|st| kind(&st) == FileType::RegularFile) {
        return false;
    }
    let mut head = [0u8; CACHEDIR_SIGNATURE.len()];
    let mut got = 0;
    while got < head.len() {
        match rustix::io::read(&fd, &mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    head[..got] == *CACHEDIR_SIGNATURE
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
    /// Its stat, a symlink's target, and what was read of a symlink's or
    /// special file's attributes.
    Entry(Stat, Option<Vec<u8>>, Option<Read>),
    /// Deleted since it was listed.
    Gone,
    /// A symlink when stat'ed, something else when its target was read.
    Replaced(&'static str),
    Failed(std::io::Error),
}

/// `name` in `dir` (`CWD` for a configured path, given whole), at `path`.
fn look_up<P: rustix::path::Arg + Copy>(dir: BorrowedFd<'_>, name: P, path: &Path) -> Found {
    let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Found::Gone,
        Err(e) => return Found::Failed(e.into()),
    };
    let target = match kind(&st) {
        FileType::RegularFile | FileType::Directory => return Found::Entry(st, None, None),
        FileType::Symlink => match rustix::fs::readlinkat(dir, name, Vec::new()) {
            Ok(target) => Some(target.into_bytes()),
            Err(Errno::NOENT) => return Found::Gone,
            // Not a symlink (any more).
            Err(Errno::INVAL) => return Found::Replaced(now_at(dir, name)),
            Err(e) => return Found::Failed(e.into()),
        },
        _ => None,
    };
    Found::Entry(st, target, Some(attrs_at(dir, name, path)))
}

/// The attributes of the symlink or special file `name` in `dir`, at
/// `path`: through the directory's descriptor (`xattrs::beneath`), or by
/// `path` for a configured path (and without /proc).
fn attrs_at<P: rustix::path::Arg>(dir: BorrowedFd<'_>, name: P, path: &Path) -> Read {
    let through_dir = if dir.as_raw_fd() == CWD.as_raw_fd() {
        None
    } else {
        name.as_cow_c_str()
            .ok()
            .and_then(|n| crate::xattrs::beneath(dir, n.to_bytes()))
    };
    match through_dir.or_else(|| std::ffi::CString::new(path.as_os_str().as_bytes()).ok()) {
        Some(p) => crate::xattrs::of_path(&p),
        None => Read::default(),
    }
}

/// How a listed entry is known until it is visited.
enum Known {
    /// Stat'ed (and a symlink's target and a symlink's or special file's
    /// attributes read) while its directory was listed. Boxed: every entry
    /// of a directory waits on the stack, most of them `Later` (backing up
    /// a 1M-entry directory: 282 -> 133 MB peak).
    Stat(Box<(Stat, Option<Vec<u8>>, Option<Read>)>),
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

/// Called with each entry: its path, stat, (a symlink's) target, and what
/// was read of its attributes (None for a regular file, left to its
/// reader, and for a directory that could not be opened or was not
/// descended into).
pub type Visit<'a> = dyn FnMut(PathBuf, &Stat, Option<Vec<u8>>, Option<Read>) -> Result<()> + 'a;

/// Called with what the walk has to say besides entries.
pub type Notes<'a> = dyn FnMut(Note) -> Result<()> + 'a;

/// Walk `root`, calling `visit` for every entry not excluded (root
/// included; the path is handed over, to keep without a copy; a symlink
/// comes with its target, attributes as `Visit` says), and `note` for
/// entries that cannot be read,
/// entries found replaced since their stat, directories not descended
/// into and entries excluded. Either callback may stop the walk by
/// returning an error.
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
    note: &mut Notes<'_>,
) -> Result<()> {
    let (found, parent) = root_entry(root, base);
    let (st, target, attrs) = match found {
        Found::Entry(st, target, attrs) => (st, target, attrs),
        Found::Gone => return Ok(()),
        Found::Replaced(now) => {
            return note(Note::Replaced(Replaced {
                path: root.to_path_buf(),
                now,
                dir: false,
            }));
        }
        Found::Failed(err) => {
            return note(Note::Failed(WalkError {
                path: root.to_path_buf(),
                err,
            }));
        }
    };
    if kind(&st) != FileType::Directory {
        return visit(root.to_path_buf(), &st, target, attrs);
    }
    // A subtree (the daemon's) that is itself a mount point below its
    // configured path is left out as the full walk leaves it out.
    if let Some(why) = parent.and_then(|(dev, _)| excludes.mount_left_out(&st, dev)) {
        visit(root.to_path_buf(), &st, target, None)?;
        return note(Note::LeftOut(root.to_path_buf(), why));
    }
    let mut w = Walker {
        root,
        excludes,
        note,
        visit,
        buf: Vec::with_capacity(DIRENT_BUF),
    };
    let mut stack: Vec<Pending> = Vec::new();
    w.enter(root.to_path_buf(), &st, target, parent, &mut stack)?;
    while let Some(Pending {
        path,
        known,
        parent,
    }) = stack.pop()
    {
        let (st, target, attrs) = match known {
            Known::Stat(known) => *known,
            Known::Later(dir) => {
                let name = path.file_name().expect("a listed entry has a name");
                match look_up(dir.as_fd(), name, &path) {
                    Found::Entry(st, target, attrs) => (st, target, attrs),
                    // Listed by its directory, deleted since: nothing to back up.
                    Found::Gone => continue,
                    Found::Replaced(now) => {
                        (w.note)(Note::Replaced(Replaced {
                            path,
                            now,
                            dir: false,
                        }))?;
                        continue;
                    }
                    Found::Failed(err) => {
                        (w.note)(Note::Failed(WalkError { path, err }))?;
                        continue;
                    }
                }
            }
        };
        if kind(&st) != FileType::Directory {
            (w.visit)(path, &st, target, attrs)?;
        } else if let Some(why) = excludes.mount_left_out(&st, parent.0) {
            (w.visit)(path.clone(), &st, target, None)?;
            (w.note)(Note::LeftOut(path, why))?;
        } else {
            w.enter(path, &st, target, Some(parent), &mut stack)?;
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
            let found = match look_up(CWD, root, root) {
                // A configured path that is not there is an error, worded
                // as the system words it ("No such file or directory").
                Found::Gone => Found::Failed(std::io::Error::from_raw_os_error(libc::ENOENT)),
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
    let found = look_up(dir.as_fd(), last, root);
    let parent = match &found {
        Found::Entry(st, _, _) if kind(st) == FileType::Directory => {
            match rustix::fs::fstat(&dir) {
                Ok(p) => Some(dev_ino(&p)),
                Err(e) => return (Found::Failed(e.into()), None),
            }
        }
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
struct Walker<'a, 'v> {
    root: &'a Path,
    excludes: &'a Excludes,
    note: &'a mut Notes<'a>,
    visit: &'v mut Visit<'v>,
    /// For getdents, reused from directory to directory.
    buf: Vec<u8>,
}

impl Walker<'_, '_> {
    /// Visit directory `path`, stat'ed as `st` in the directory `parent`
    /// (`None` for a configured path: the one above it, by path), with the
    /// attributes read from it once open, and push its entries onto
    /// `stack` (`list`); unless it was replaced since that stat (then it is
    /// visited as stat'ed, and its contents left out), or has the nodump
    /// flag with `exclude_nodump` (then it is left out whole).
    fn enter(
        &mut self,
        path: PathBuf,
        st: &Stat,
        target: Option<Vec<u8>>,
        parent: Option<(u64, u64)>,
        stack: &mut Vec<Pending>,
    ) -> Result<()> {
        crate::testhook::pause_at(&path);
        let fd = match rustix::fs::openat(CWD, &path, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => fd,
            // Deleted since its stat: recorded as it was, empty.
            Err(Errno::NOENT) if path != self.root => return (self.visit)(path, st, target, None),
            // A symlink or something else now, in its place or above it.
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let now = now_at(CWD, &path);
                (self.visit)(path.clone(), st, target, None)?;
                return (self.note)(Note::Replaced(Replaced {
                    path,
                    now,
                    dir: true,
                }));
            }
            Err(e) => {
                (self.visit)(path.clone(), st, target, None)?;
                return (self.note)(Note::Failed(WalkError {
                    path,
                    err: e.into(),
                }));
            }
        };
        let here = match rustix::fs::fstat(&fd) {
            Ok(now) if dev_ino(&now) == dev_ino(st) => dev_ino(&now),
            Ok(now) if automounted(&path, st, &now, fd.as_fd(), parent) => dev_ino(&now),
            Ok(_) => {
                (self.visit)(path.clone(), st, target, None)?;
                return (self.note)(Note::Replaced(Replaced {
                    path,
                    now: "another directory",
                    dir: true,
                }));
            }
            Err(e) => {
                (self.visit)(path.clone(), st, target, None)?;
                return (self.note)(Note::Failed(WalkError {
                    path,
                    err: e.into(),
                }));
            }
        };
        let attrs = crate::xattrs::of_fd(fd.as_fd());
        // (A configured path is walked whatever its flags, as it is
        // whatever the exclude patterns say.)
        if self.excludes.nodump
            && attrs.attrs.flags & crate::xattrs::NODUMP != 0
            && path != self.root
        {
            return (self.note)(Note::Nodump(path));
        }
        (self.visit)(path.clone(), st, target, Some(attrs))?;
        self.list(&path, fd, here, parent, stack)
    }

    /// Push the entries of directory `path`, open as `fd`, whose device
    /// and inode are `here`, listed in the directory `parent`, onto
    /// `stack` (sorted by raw bytes, in reverse, so they pop in order).
    fn list(
        &mut self,
        path: &Path,
        fd: OwnedFd,
        here: (u64, u64),
        parent: Option<(u64, u64)>,
        stack: &mut Vec<Pending>,
    ) -> Result<()> {
        // A pseudo-filesystem the mount table did not name (no /proc), or
        // mounted on opening (an automount point): left out now.
        if parent.is_some_and(|(dev, _)| dev != here.0) {
            if let Some(t) = pseudo_by_statfs(fd.as_fd()) {
                return (self.note)(Note::LeftOut(
                    path.to_path_buf(),
                    LeftOut::PseudoFilesystem(t.to_string()),
                ));
            }
        }
        // A tagged directory keeps its tag file only.
        let tag = self.excludes.tag_in(fd.as_fd());
        if let Some(tag) = &tag {
            (self.note)(Note::LeftOut(
                path.to_path_buf(),
                LeftOut::Tagged(String::from_utf8_lossy(tag).into_owned()),
            ))?;
        }
        let fd = Rc::new(fd);
        let first = stack.len();
        let mut prestat = 0;
        let mut targets = 0;
        let mut entries = RawDir::new(fd.as_fd(), self.buf.spare_capacity_mut());
        while let Some(entry) = entries.next() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    (self.note)(Note::Failed(WalkError {
                        path: path.to_path_buf(),
                        err: e.into(),
                    }))?;
                    break;
                }
            };
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            if tag
                .as_ref()
                .is_some_and(|t| t.as_slice() != name.to_bytes())
            {
                continue;
            }
            let child = child_path(path, name.to_bytes());
            if self.excludes.matches(&child) {
                (self.note)(Note::Excluded(child))?;
                continue;
            }
            let known = if prestat < PRESTAT_MAX && targets < PRESTAT_TARGETS {
                prestat += 1;
                match look_up(fd.as_fd(), name, &child) {
                    Found::Entry(st, target, attrs) => {
                        targets += target.as_ref().map_or(0, Vec::len)
                            + attrs.as_ref().map_or(0, |a| a.attrs.xattrs.len());
                        Known::Stat(Box::new((st, target, attrs)))
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

/// `dir/name`, allocated once at its final size (`Path::join` grows the
/// copy of `dir` to fit `name`: two allocations per entry walked, freed on
/// another thread).
fn child_path(dir: &Path, name: &[u8]) -> PathBuf {
    let dir = dir.as_os_str().as_bytes();
    let mut b = Vec::with_capacity(dir.len() + 1 + name.len());
    b.extend_from_slice(dir);
    if !dir.ends_with(b"/") {
        b.push(b'/');
    }
    b.extend_from_slice(name);
    PathBuf::from(std::ffi::OsString::from_vec(b))
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
    fn child_paths_are_joined_like_path_join() {
        for (dir, name) in [("/", "a"), ("/x", "b"), ("/x/", "c"), ("rel/y", "d.e")] {
            assert_eq!(
                child_path(Path::new(dir), name.as_bytes()),
                Path::new(dir).join(name)
            );
        }
    }

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
            &mut |p, st, t, _| {
                out.push((p, kind(st), t));
                Ok(())
            },
            &mut |n| match n {
                Note::Failed(w) => panic!("{}: {}", w.path.display(), w.err),
                Note::Replaced(r) => panic!("{} replaced by {}", r.path.display(), r.now),
                Note::LeftOut(..) | Note::Excluded(_) | Note::Nodump(_) => Ok(()),
            },
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

    fn walk_with(root: &Path, ex: &Excludes) -> (Vec<PathBuf>, Vec<(PathBuf, LeftOut)>, usize) {
        let (mut seen, mut left, mut excluded) = (Vec::new(), Vec::new(), 0);
        walk(
            root,
            root,
            ex,
            &mut |p, _, _, _| {
                seen.push(p.strip_prefix(root).unwrap().to_path_buf());
                Ok(())
            },
            &mut |n| {
                match n {
                    Note::LeftOut(p, why) => {
                        left.push((p.strip_prefix(root).unwrap().to_path_buf(), why))
                    }
                    Note::Excluded(_) | Note::Nodump(_) => excluded += 1,
                    Note::Failed(w) => panic!("{}: {}", w.path.display(), w.err),
                    Note::Replaced(r) => panic!("{}", r.path.display()),
                }
                Ok(())
            },
        )
        .unwrap();
        (seen, left, excluded)
    }

    #[test]
    fn tagged_directories_keep_only_their_tag() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for d in ["build", "cache", "fake-cache", "linked", "plain"] {
            std::fs::create_dir(root.join(d)).unwrap();
            std::fs::write(root.join(d).join("data"), b"x").unwrap();
        }
        std::fs::write(root.join("build/.nobackup"), b"").unwrap();
        let mut tag = CACHEDIR_SIGNATURE.to_vec();
        tag.extend_from_slice(b"\n# This file is a cache directory tag.\n");
        std::fs::write(root.join("cache/CACHEDIR.TAG"), &tag).unwrap();
        // An invalid signature, and a symlink to a valid tag: not caches.
        std::fs::write(root.join("fake-cache/CACHEDIR.TAG"), b"Signature: 0000").unwrap();
        std::os::unix::fs::symlink(
            root.join("cache/CACHEDIR.TAG"),
            root.join("linked/CACHEDIR.TAG"),
        )
        .unwrap();
        let pats: Vec<String> = vec!["*.tmp".into()];
        std::fs::write(root.join("plain/x.tmp"), b"").unwrap();
        let ex = Excludes::new(pats.iter())
            .unwrap()
            .with_rules(&[".nobackup".into()], true, false);
        let (seen, left, excluded) = walk_with(root, &ex);
        let seen: Vec<String> = seen.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            seen,
            [
                "",
                "build",
                "build/.nobackup",
                "cache",
                "cache/CACHEDIR.TAG",
                "fake-cache",
                "fake-cache/CACHEDIR.TAG",
                "fake-cache/data",
                "linked",
                "linked/CACHEDIR.TAG",
                "linked/data",
                "plain",
                "plain/data"
            ]
        );
        assert_eq!(
            left,
            [
                (PathBuf::from("build"), LeftOut::Tagged(".nobackup".into())),
                (
                    PathBuf::from("cache"),
                    LeftOut::Tagged("CACHEDIR.TAG".into())
                ),
            ]
        );
        assert_eq!(excluded, 1);
        // Without the rules, everything.
        let ex = Excludes::new(std::iter::empty()).unwrap();
        assert_eq!(walk_with(root, &ex).0.len(), 16);
    }

    #[test]
    fn the_mount_table_names_pseudo_filesystems() {
        let m = Mounts::parse(
            "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
             23 1 0:22 / /sys rw - sysfs sysfs rw\n\
             24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
             25 1 0:5 / /dev rw - devtmpfs udev rw\n\
             26 1 0:40 / /tmp rw - tmpfs tmpfs rw\n\
             garbage line\n",
        );
        let dev = |a, b| rustix::fs::makedev(a, b);
        assert_eq!(m.pseudo(dev(0, 21)), Some("proc"));
        assert_eq!(m.pseudo(dev(0, 22)), Some("sysfs"));
        assert_eq!(m.pseudo(dev(0, 5)), Some("devtmpfs"));
        assert_eq!(m.pseudo(dev(8, 1)), None);
        assert_eq!(m.pseudo(dev(0, 40)), None, "tmpfs holds data");
        assert_eq!(m.pseudo(dev(9, 9)), None);
        let ex = Excludes {
            mounts: m,
            ..Excludes::new(std::iter::empty()).unwrap()
        };
        assert_eq!(
            ex.mount_left_out_dev(dev(0, 21), dev(8, 1)),
            Some(LeftOut::PseudoFilesystem("proc".into()))
        );
        assert_eq!(ex.mount_left_out_dev(dev(0, 40), dev(8, 1)), None);
        assert_eq!(ex.mount_left_out_dev(dev(8, 1), dev(8, 1)), None);
        let ex = Excludes {
            one_file_system: true,
            ..ex
        };
        assert_eq!(
            ex.mount_left_out_dev(dev(0, 40), dev(8, 1)),
            Some(LeftOut::OtherFilesystem)
        );
        // This machine's own: /proc is proc.
        if let Ok(st) = rustix::fs::stat("/proc") {
            if let Ok(root) = rustix::fs::stat("/") {
                if st.st_dev != root.st_dev {
                    let ex =
                        Excludes::new(std::iter::empty())
                            .unwrap()
                            .with_rules(&[], false, false);
                    assert_eq!(
                        ex.mount_left_out(&st, root.st_dev),
                        Some(LeftOut::PseudoFilesystem("proc".into()))
                    );
                }
            }
        }
    }
}
