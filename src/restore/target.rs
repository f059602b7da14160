//! The one owner of every write a restore makes. Everything happens through
//! directory file descriptors opened from the target: `mkdirat`, `openat`
//! with `O_NOFOLLOW`, `symlinkat`, `mknodat`, `linkat`, `unlinkat`, and
//! owners, extended attributes, modes, times and inode flags set through a
//! descriptor of the very object this restore made (`fchown`, `fsetxattr`,
//! `fchmod`, `futimens`, `FS_IOC_SETFLAGS`; a symlink's or special file's
//! through its `O_PATH` descriptor). No name from the snapshot
//! is ever resolved as a path, so no symlink, whoever planted it, is ever
//! followed, and nothing lands outside the target.
//!
//! Each directory this restore makes (or finds in place and opens) gets its
//! identity (device, inode) recorded in the plan; reopening it later (the
//! descriptor cache is small) walks down from the target one component at
//! a time with `O_NOFOLLOW|O_DIRECTORY` and checks every identity on the
//! way. A directory swapped for a symlink or another directory mid-restore
//! (by a local user who owns one inside an existing target) is then an
//! error naming the entry, never a redirected write. Files are checked the
//! same way before their data, owner, mode or times are touched.
//!
//! The target directory itself is the admin's choice and is trusted: it is
//! opened by path (following symlinks) and must not be writable by others.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid};
use rustix::io::Errno;

use crate::snapshot::Kind;
use crate::xattrs::{Apply, Obj};

/// A file system object's identity: device and inode.
pub type FileId = (u64, u64);

/// An operation on one entry that failed, and why.
#[derive(Debug)]
pub struct Fail {
    pub op: &'static str,
    pub err: io::Error,
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot {}: {}", self.op, self.err)
    }
}

pub type Made<T> = std::result::Result<T, Fail>;

trait At<T> {
    fn at(self, op: &'static str) -> Made<T>;
}

impl<T> At<T> for rustix::io::Result<T> {
    fn at(self, op: &'static str) -> Made<T> {
        self.map_err(|e| Fail { op, err: e.into() })
    }
}

fn fail(op: &'static str, msg: &str) -> Fail {
    Fail {
        op,
        err: io::Error::new(io::ErrorKind::InvalidData, msg),
    }
}

/// What a restored entry's attributes are.
#[derive(Debug, Clone)]
pub struct Attrs {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
    /// Extended attributes (checked when the plan was made) and inode
    /// flags.
    pub extra: crate::xattrs::Attrs,
}

impl Attrs {
    fn times(&self) -> Timestamps {
        let ts = Timespec {
            tv_sec: self.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: self.mtime_ns.rem_euclid(1_000_000_000) as _,
        };
        Timestamps {
            last_access: ts,
            last_modification: ts,
        }
    }

    fn mode(&self) -> Mode {
        Mode::from_raw_mode(self.mode & 0o7777)
    }

    /// Owner and group for chown (`-1` in forged metadata means "leave
    /// as is" to the kernel: say so explicitly).
    fn owner(&self) -> (Option<Uid>, Option<Gid>) {
        (
            (self.uid != u32::MAX).then(|| Uid::from_raw(self.uid)),
            (self.gid != u32::MAX).then(|| Gid::from_raw(self.gid)),
        )
    }
}

fn id_of(st: &rustix::fs::Stat) -> FileId {
    (st.st_dev, st.st_ino)
}

/// `O_NOFOLLOW|O_CLOEXEC|O_NOCTTY`: a name is never followed, and no
/// terminal planted in the target becomes ours.
fn nofollow() -> OFlags {
    OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY
}

fn open_dir(parent: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK | nofollow(),
        Mode::empty(),
    )
}

/// An `O_PATH` descriptor of the object at `name` itself (a symlink is not
/// followed), and its identity.
fn open_path(
    parent: BorrowedFd<'_>,
    name: &[u8],
) -> rustix::io::Result<(OwnedFd, FileId, FileType)> {
    let fd = rustix::fs::openat(parent, name, OFlags::PATH | nofollow(), Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    Ok((fd, id_of(&st), FileType::from_raw_mode(st.st_mode)))
}

/// The directory descriptors a restore has open, by plan node.
const CACHE_MAX: usize = 128;

pub struct Target {
    root: Arc<OwnedFd>,
    root_id: FileId,
    cache: HashMap<i64, Arc<OwnedFd>>,
    pub as_root: bool,
    euid: u32,
}

/// Where to find a directory node when it is not cached: its parent node,
/// its name, and the identity recorded when this restore made it (None if
/// it was not made).
pub type NodeInfo = (i64, Vec<u8>, Option<FileId>);

impl Target {
    /// Open (creating it if needed) the target directory.
    pub fn open(path: &Path) -> io::Result<Target> {
        std::fs::create_dir_all(path)?;
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let euid = rustix::process::geteuid().as_raw();
        Ok(Target {
            root: Arc::new(fd),
            root_id: id_of(&st),
            cache: HashMap::new(),
            as_root: euid == 0,
            euid,
        })
    }

    pub fn root_id(&self) -> FileId {
        self.root_id
    }

    /// The open directory of plan node `node` (0: the target itself),
    /// from the cache or reopened from the nearest cached ancestor, every
    /// step checked against the identity recorded for it. `info` tells
    /// where a node is.
    pub fn dir(
        &mut self,
        node: i64,
        info: &mut dyn FnMut(i64) -> crate::error::Result<NodeInfo>,
    ) -> crate::error::Result<Made<Arc<OwnedFd>>> {
        if node == 0 {
            return Ok(Ok(self.root.clone()));
        }
        if let Some(fd) = self.cache.get(&node) {
            return Ok(Ok(fd.clone()));
        }
        // Up to the nearest ancestor that is open, then down again.
        let mut chain: Vec<(i64, Vec<u8>, FileId)> = Vec::new();
        let mut at = node;
        let mut base = loop {
            let (parent, name, id) = info(at)?;
            let Some(id) = id else {
                return Ok(Err(fail(
                    "open its directory",
                    "a parent directory was not restored",
                )));
            };
            chain.push((at, name, id));
            if parent == 0 {
                break self.root.clone();
            }
            if let Some(fd) = self.cache.get(&parent) {
                break fd.clone();
            }
            if chain.len() > 4096 {
                return Ok(Err(fail(
                    "open its directory",
                    "directories nested too deep",
                )));
            }
            at = parent;
        };
        while let Some((n, name, id)) = chain.pop() {
            let fd = match open_dir(base.as_fd(), &name).at("open its directory") {
                Ok(fd) => fd,
                Err(e) => return Ok(Err(e)),
            };
            match rustix::fs::fstat(&fd).at("inspect its directory") {
                Ok(st) if id_of(&st) == id => {}
                Ok(_) => {
                    return Ok(Err(fail(
                        "open its directory",
                        "a parent directory was replaced while being restored",
                    )));
                }
                Err(e) => return Ok(Err(e)),
            }
            base = Arc::new(fd);
            self.remember(n, base.clone());
        }
        Ok(Ok(base))
    }

    /// Close the cached directories: each phase reopens what it needs,
    /// checking every step again, so a directory moved away during a
    /// phase is not written through in the next.
    pub fn forget(&mut self) {
        self.cache.clear();
    }

    fn remember(&mut self, node: i64, fd: Arc<OwnedFd>) {
        if self.cache.len() >= CACHE_MAX {
            // Entries come in walk order: a small cache that starts over
            // when full keeps nearly every parent at hand.
            self.cache.clear();
        }
        self.cache.insert(node, fd);
    }

    /// Make directory `name` in `parent` (or take the real directory that
    /// is there; replace anything else), open it and cache it as `node`.
    pub fn make_dir(&mut self, node: i64, parent: &OwnedFd, name: &[u8]) -> Made<FileId> {
        let fresh = match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(Errno::EXIST) => match open_dir(parent.as_fd(), name) {
                // A real directory in place: restored into, as found.
                Ok(fd) => {
                    let st = rustix::fs::fstat(&fd).at("inspect")?;
                    self.remember(node, Arc::new(fd));
                    return Ok(id_of(&st));
                }
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    remove_existing(parent, name)?;
                    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
                        .at("create directory")?;
                    true
                }
                Err(e) => return Err(e).at("open directory"),
            },
            Err(e) => return Err(e).at("create directory"),
        };
        let fd = open_dir(parent.as_fd(), name).at("open directory")?;
        let st = rustix::fs::fstat(&fd).at("inspect")?;
        // Made just now by us: anything else there was swapped in.
        if fresh && st.st_uid != self.euid {
            return Err(fail(
                "create directory",
                "replaced by another directory while being restored",
            ));
        }
        self.remember(node, Arc::new(fd));
        Ok(id_of(&st))
    }

    /// Replace the attributes of the directory `node` (already open), the
    /// entry `src`. The target itself (node 0) is the admin's: it gets no
    /// inode flags (an immutable target would refuse the next restore).
    pub fn dir_attrs(
        &self,
        node: i64,
        fd: &OwnedFd,
        a: &Attrs,
        apply: &Apply<'_>,
        src: &[u8],
    ) -> Made<()> {
        if node == 0 && a.extra.flags != 0 {
            if apply.on {
                apply.losses.note(crate::xattrs::Problem::TargetFlags, src);
            }
            let mut a = a.clone();
            a.extra.flags = 0;
            return set_fd_attrs(fd, &a, apply, src);
        }
        set_fd_attrs(fd, a, apply, src)
    }
}

/// Remove what is at `name` in `parent`, never following it: an empty
/// directory, or anything that is not a directory.
pub fn remove_existing(parent: &OwnedFd, name: &[u8]) -> Made<()> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e).at("inspect what is in the way"),
    };
    let flags = if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    match rustix::fs::unlinkat(parent, name, flags) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e).at("replace what is in the way"),
    }
}

/// Make `name` in `parent` with `make`, which fails with EEXIST if the
/// name is taken (symlinks included, never followed); if it is, remove
/// what is there and make it again. Into an empty target that is one
/// system call per entry.
fn replacing<T>(
    parent: &OwnedFd,
    name: &[u8],
    op: &'static str,
    make: impl Fn() -> rustix::io::Result<T>,
) -> Made<T> {
    match make() {
        Err(Errno::EXIST) => {
            remove_existing(parent, name)?;
            make().at(op)
        }
        made => made.at(op),
    }
}

/// A new, empty regular file `name` in `parent` (whatever was there is
/// replaced), mode 0600 until its attributes are set.
pub fn create_new(parent: &OwnedFd, name: &[u8]) -> Made<File> {
    let fd = replacing(parent, name, "create", || {
        rustix::fs::openat(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | nofollow(),
            Mode::from_raw_mode(0o600),
        )
    })?;
    Ok(File::from(fd))
}

/// `create_new`, and the file's identity.
pub fn create_file(parent: &OwnedFd, name: &[u8]) -> Made<(File, FileId)> {
    let f = create_new(parent, name)?;
    let st = rustix::fs::fstat(&f).at("inspect")?;
    Ok((f, id_of(&st)))
}

/// The regular file `name` in `parent` that this restore made as `id`,
/// open for writing.
pub fn open_file(parent: &OwnedFd, name: &[u8], id: FileId) -> Made<File> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::WRONLY | OFlags::NONBLOCK | nofollow(),
        Mode::empty(),
    )
    .at("open")?;
    let st = rustix::fs::fstat(&fd).at("inspect")?;
    if id_of(&st) != id {
        return Err(fail("open", "replaced while being restored"));
    }
    Ok(File::from(fd))
}

/// Remove the file `name` that this restore made as `id` (a failed one).
pub fn remove_file(parent: &OwnedFd, name: &[u8], id: FileId) -> Made<()> {
    match open_path(parent.as_fd(), name) {
        Ok((_, got, _)) if got == id => {}
        Ok(_) => return Err(fail("remove", "replaced while being restored")),
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e).at("remove"),
    }
    rustix::fs::unlinkat(parent, name, AtFlags::empty()).at("remove")
}

/// A hard link `name` in `parent` to the file `first_name` in
/// `first_parent`, which this restore made as `first`.
pub fn hard_link(
    first_parent: &OwnedFd,
    first_name: &[u8],
    first: FileId,
    parent: &OwnedFd,
    name: &[u8],
    as_root: bool,
) -> Made<()> {
    let (fd, got, _) = open_path(first_parent.as_fd(), first_name).at("create hard link")?;
    if got != first {
        return Err(fail(
            "create hard link",
            "its first path was replaced while being restored",
        ));
    }
    replacing(parent, name, "create hard link", || {
        if as_root {
            // Linking the descriptor itself: nothing can be swapped in
            // between (AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH).
            rustix::fs::linkat(&fd, "", parent, name, AtFlags::EMPTY_PATH)
        } else {
            rustix::fs::linkat(first_parent, first_name, parent, name, AtFlags::empty())
        }
    })?;
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if id_of(&st) == first => Ok(()),
        Ok(_) => {
            let _ = rustix::fs::unlinkat(parent, name, AtFlags::empty());
            Err(fail(
                "create hard link",
                "its first path was replaced while being restored",
            ))
        }
        Err(e) => Err(e).at("create hard link"),
    }
}

/// A symlink `name` in `parent` pointing at `to` (a string: never
/// resolved by the restore), and its identity.
pub fn symlink(parent: &OwnedFd, name: &[u8], to: &[u8]) -> Made<FileId> {
    replacing(parent, name, "create symlink", || {
        rustix::fs::symlinkat(to, parent, name)
    })?;
    let (_, id, ft) = open_path(parent.as_fd(), name).at("create symlink")?;
    if ft != FileType::Symlink {
        return Err(fail("create symlink", "replaced while being restored"));
    }
    Ok(id)
}

/// A FIFO or device node `name` in `parent`, born with its final mode,
/// and its identity. Called only while no other thread of the restore
/// runs: the process umask is 0 for the call.
pub fn special(parent: &OwnedFd, name: &[u8], a: &Attrs, rdev: u64) -> Made<FileId> {
    let ft = match a.kind {
        Kind::Fifo => FileType::Fifo,
        Kind::CharDev => FileType::CharacterDevice,
        _ => FileType::BlockDevice,
    };
    let made = replacing(parent, name, "create special file", || {
        let old = rustix::process::umask(Mode::empty());
        let r = rustix::fs::mknodat(parent, name, ft, a.mode(), rdev);
        rustix::process::umask(old);
        r
    });
    made?;
    let (_, id, got) = open_path(parent.as_fd(), name).at("create special file")?;
    if got != ft {
        return Err(fail("create special file", "replaced while being restored"));
    }
    Ok(id)
}

/// Owner, extended attributes, mode, times and inode flags of a regular
/// file or directory (the entry `src`), through `fd`, in that order: a
/// chown clears file capabilities and set-user-ID bits, and an immutable
/// or append-only file refuses any change after its flags. What the
/// target refuses of the extended attributes and flags is counted in
/// `apply.losses`, not a failure.
pub fn set_fd_attrs(fd: &impl AsFd, a: &Attrs, apply: &Apply<'_>, src: &[u8]) -> Made<()> {
    if apply.as_root {
        let (u, g) = a.owner();
        rustix::fs::fchown(fd, u, g).at("set owner of")?;
    }
    apply.skipped(&a.extra, src);
    apply.xattrs(Obj::Fd(fd.as_fd()), &a.extra.xattrs, src);
    rustix::fs::fchmod(fd, a.mode()).at("set mode of")?;
    rustix::fs::futimens(fd, &a.times()).at("set times of")?;
    apply.flags(fd.as_fd(), a.extra.flags, src);
    Ok(())
}

/// Owner, extended attributes, mode, times and inode flags of what this
/// restore made at `name` in `parent` as `id` (the entry `src`): regular
/// files and directories through a descriptor of the object itself;
/// symlinks and special files through an `O_PATH` descriptor for the
/// owner and extended attributes (their mode is set when made, a symlink
/// has none; they have no flags), and by name, never followed, for the
/// times.
pub fn set_attrs(
    parent: &OwnedFd,
    name: &[u8],
    id: FileId,
    a: &Attrs,
    apply: &Apply<'_>,
    src: &[u8],
) -> Made<()> {
    match a.kind {
        Kind::File | Kind::Dir => {
            // Opening cannot block (O_NONBLOCK) nor follow a symlink; a
            // device node swapped in would be opened, but making one
            // needs privileges no attacker here has.
            let dir = if a.kind == Kind::Dir {
                OFlags::DIRECTORY
            } else {
                OFlags::empty()
            };
            let fd = rustix::fs::openat(
                parent,
                name,
                OFlags::RDONLY | OFlags::NONBLOCK | dir | nofollow(),
                Mode::empty(),
            )
            .at("open")?;
            let st = rustix::fs::fstat(&fd).at("inspect")?;
            if id_of(&st) != id {
                return Err(fail("set attributes of", "replaced while being restored"));
            }
            set_fd_attrs(&fd, a, apply, src)
        }
        _ => {
            let (fd, got, _) = open_path(parent.as_fd(), name).at("open")?;
            if got != id {
                return Err(fail("set attributes of", "replaced while being restored"));
            }
            if apply.as_root {
                let (u, g) = a.owner();
                rustix::fs::chownat(&fd, "", u, g, AtFlags::EMPTY_PATH).at("set owner of")?;
            }
            apply.skipped(&a.extra, src);
            apply.xattrs(Obj::Path(fd.as_fd()), &a.extra.xattrs, src);
            rustix::fs::utimensat(parent, name, &a.times(), AtFlags::SYMLINK_NOFOLLOW)
                .at("set times of")
        }
    }
}
