//! `--delete`: each directory the restore restores is made to hold what
//! the snapshot has in it, and nothing else.
//!
//! Which directories: the snapshot's own directory entries that this
//! restore restores (after PATH arguments, `--include` and `--exclude`);
//! never a directory made only as a parent of what is restored, nor one
//! left out, nor anything above the target. In each, a name the snapshot
//! does not have in that directory is removed, unless it matches an
//! `--exclude` pattern (what is left out is also left alone). A name the
//! snapshot has is never removed here, whatever the restore does with it.
//!
//! How: from the directory's descriptor, as every write of a restore
//! (reopened from the target and checked against the identity recorded
//! when the restore made or found it). What is not a directory is
//! unlinked, a symlink as a symlink. A directory is removed depth first:
//! each level opened with `openat(O_DIRECTORY|O_NOFOLLOW)` from the one
//! above and checked to be what was `statat`'d, never through a symlink,
//! and never on another file system (a mount point, in the way or below,
//! is left with its contents and named in a warning).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{AtFlags, FileType, Stat};
use rustix::io::Errno;

use super::existing::{Existing, kind_of, open_dir};
use super::plan::{ppath, shown};
use super::select::Select;
use super::{Act, Action, Counts, Report};
use crate::error::{DbContext, Error, Result};

/// Every directory the snapshot has that the plan restores, parents
/// first: node, source path.
pub const Q_RESTORED_DIRS: &str = "SELECT n.id, e.path FROM plan.nodes n
     JOIN main.entries e ON e.rowid = n.entry WHERE n.kind = 1 ORDER BY n.depth";

/// Directory levels a removal goes down at most (as the plan's paths).
const DEPTH_MAX: usize = 4096;

/// An entry of a restored directory that the snapshot does not have.
pub struct Extra {
    pub name: Vec<u8>,
    /// Its path, as the snapshot's paths are written.
    pub path: Vec<u8>,
    pub st: Stat,
}

impl Extra {
    pub fn is_dir(&self) -> bool {
        FileType::from_raw_mode(self.st.st_mode) == FileType::Directory
    }

    pub fn kind(&self) -> &'static str {
        kind_of(FileType::from_raw_mode(self.st.st_mode))
    }
}

/// `dir` + `/` + `name`, for a snapshot path.
pub fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + name.len() + 1);
    p.extend_from_slice(dir);
    if dir != b"/" {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The names the snapshot does not have in the directory `fd` (the
/// snapshot's directory at `dir`), but those `select` protects.
pub fn extras(
    conn: &rusqlite::Connection,
    fd: BorrowedFd<'_>,
    dir: &[u8],
    select: &Select,
) -> Result<std::result::Result<Vec<Extra>, std::io::Error>> {
    let mut in_snapshot = conn
        .prepare_cached("SELECT 1 FROM main.entries WHERE path = ?1")
        .db(super::plan::mpath())?;
    let names = match list(fd) {
        Ok(n) => n,
        Err(e) => return Ok(Err(e)),
    };
    let mut out = Vec::new();
    for name in names {
        let path = child(dir, &name);
        if in_snapshot.exists([&path]).db(super::plan::mpath())? || select.protects(&path) {
            continue;
        }
        match rustix::fs::statat(fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => out.push(Extra { name, path, st }),
            Err(Errno::NOENT) => {}
            Err(e) => return Ok(Err(e.into())),
        }
    }
    Ok(Ok(out))
}

/// The names in directory `fd`, `.` and `..` left out.
fn list(fd: BorrowedFd<'_>) -> std::io::Result<Vec<Vec<u8>>> {
    let mut d = rustix::fs::Dir::read_from(fd)?;
    let mut names = Vec::new();
    while let Some(e) = d.read() {
        let n = e?.file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            names.push(n);
        }
    }
    Ok(names)
}

/// What removing one extra did (or, with `remove` false, would do).
#[derive(Debug, Default)]
pub struct Removed {
    /// Entries removed (a directory and each entry in it count).
    pub entries: u64,
    /// Directories left because they are on another file system (their
    /// paths), and the directories above them, left with them.
    pub other_fs: Vec<Vec<u8>>,
}

/// Remove `x`, an entry of directory `parent` (on device `dev`): unlinked,
/// or a directory removed depth first (see the module). With `remove`
/// false, only count what would be.
pub fn remove(parent: &OwnedFd, x: &Extra, dev: u64, remove: bool) -> std::io::Result<Removed> {
    let mut done = Removed::default();
    if !x.is_dir() {
        if remove {
            rustix::fs::unlinkat(parent, x.name.as_slice(), AtFlags::empty())?;
        }
        done.entries = 1;
        return Ok(done);
    }
    if x.st.st_dev != dev {
        done.other_fs.push(x.path.clone());
        return Ok(done);
    }
    struct Level {
        fd: OwnedFd,
        name: Vec<u8>,
        path: Vec<u8>,
        names: Vec<Vec<u8>>,
        /// Something in it stays (another file system).
        stays: bool,
    }
    let open = |at: BorrowedFd<'_>, name: &[u8], st: &Stat| -> std::io::Result<OwnedFd> {
        let fd = open_dir(at, name)?;
        let now = rustix::fs::fstat(&fd)?;
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) {
            return Err(std::io::Error::other("replaced while being deleted"));
        }
        Ok(fd)
    };
    let fd = open(parent.as_fd(), &x.name, &x.st)?;
    let names = list(fd.as_fd())?;
    let mut levels = vec![Level {
        fd,
        name: x.name.clone(),
        path: x.path.clone(),
        names,
        stays: false,
    }];
    loop {
        let depth = levels.len();
        let Some(top) = levels.last_mut() else {
            break;
        };
        let Some(name) = top.names.pop() else {
            let level = levels.pop().expect("a level is there");
            let above = levels.last_mut();
            if level.stays {
                if let Some(a) = above {
                    a.stays = true;
                }
                continue;
            }
            let at = above.as_ref().map_or(parent.as_fd(), |a| a.fd.as_fd());
            if remove {
                rustix::fs::unlinkat(at, level.name.as_slice(), AtFlags::REMOVEDIR)?;
            }
            done.entries += 1;
            continue;
        };
        let st = match rustix::fs::statat(&top.fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            if remove {
                rustix::fs::unlinkat(&top.fd, name.as_slice(), AtFlags::empty())?;
            }
            done.entries += 1;
            continue;
        }
        let path = child(&top.path, &name);
        if st.st_dev != dev {
            done.other_fs.push(path);
            top.stays = true;
            continue;
        }
        if depth >= DEPTH_MAX {
            return Err(std::io::Error::other("directories nested too deep"));
        }
        let fd = open(top.fd.as_fd(), &name, &st)?;
        let names = list(fd.as_fd())?;
        levels.push(Level {
            fd,
            name,
            path,
            names,
            stays: false,
        });
    }
    Ok(done)
}

impl super::entries::Entries<'_> {
    /// `--delete`, once the directories are made: in each restored
    /// directory, remove what the snapshot does not have.
    pub fn delete_extras(&mut self, select: &Select) -> Result<()> {
        self.each(Q_RESTORED_DIRS, |this, r, info| {
            let node: i64 = r.get(0).db(ppath())?;
            let dir: Vec<u8> = r.get(1).db(ppath())?;
            // A directory not made is named already.
            let Ok(fd) = this.target.dir(node, info)? else {
                return Ok(());
            };
            let listed = match rustix::fs::fstat(&*fd) {
                Ok(st) => extras(this.conn, fd.as_fd(), &dir, select)?.map(|xs| (st.st_dev, xs)),
                Err(e) => Err(e.into()),
            };
            let (dev, xs) = match listed {
                Ok(l) => l,
                Err(e) => {
                    this.failures
                        .push(format!("{}: cannot list what to delete: {e}", shown(&dir)));
                    return Ok(());
                }
            };
            for x in xs {
                match remove(&fd, &x, dev, true) {
                    Ok(done) => {
                        this.summary.deleted += done.entries;
                        for p in done.other_fs {
                            (this.warn)(&format!(
                                "{}: on another file system, not deleted",
                                shown(&p)
                            ));
                        }
                    }
                    Err(e) => this
                        .failures
                        .push(format!("{}: cannot delete: {e}", shown(&x.path))),
                }
            }
            Ok(())
        })
    }
}

/// A dry run of `--delete`: each restored directory that the target has
/// (looked at read-only), and what would be removed from it.
pub fn dry_run(
    conn: &rusqlite::Connection,
    existing: &mut Existing,
    select: &Select,
    report: &Report<'_>,
    counts: &mut Counts,
) -> Result<()> {
    let mut st = conn.prepare(Q_RESTORED_DIRS).db(ppath())?;
    let mut rows = st.query([]).db(ppath())?;
    while let Some(r) = rows.next().db(ppath())? {
        let dir: Vec<u8> = r.get(1).db(ppath())?;
        let Some(parts) = super::plan::components(&dir) else {
            continue;
        };
        let look = |e: std::io::Error| Error::Io {
            op: "look into",
            path: PathBuf::from(OsStr::from_bytes(&dir)),
            source: e,
        };
        let Some(fd) = existing.dir(&parts).map_err(look)? else {
            continue;
        };
        let dev = rustix::fs::fstat(&*fd).map_err(|e| look(e.into()))?.st_dev;
        let xs = extras(conn, fd.as_fd(), &dir, select)?.map_err(look)?;
        for x in xs {
            let done = remove(&fd, &x, dev, false).map_err(look)?;
            let mut act = |act: Act, path: &[u8], size: Option<u64>, why: &str| {
                counts.add(act, None);
                if let (Act::Delete, Some(n)) = (act, size) {
                    // Each entry counts, as when it is done.
                    counts.delete += n - 1;
                }
                report(&Action {
                    act,
                    path,
                    kind: None,
                    size,
                    why,
                })
            };
            if done.entries > 0 {
                let why = if x.is_dir() {
                    format!(
                        "a directory: {} entries with it and what is in it",
                        done.entries
                    )
                } else {
                    x.kind().to_string()
                };
                let size = Some(done.entries);
                act(Act::Delete, &x.path, size, &why)?;
            }
            for p in done.other_fs {
                act(Act::Skip, &p, None, "on another file system, not deleted")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn extra_of(dir: &std::path::Path, name: &str) -> (OwnedFd, Extra) {
        let fd = rustix::fs::open(
            dir,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let st = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
        let x = Extra {
            name: name.as_bytes().to_vec(),
            path: child(b"/d", name.as_bytes()),
            st,
        };
        (fd, x)
    }

    #[test]
    fn a_tree_is_removed_without_following_its_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("precious"), b"p").unwrap();
        let x = t.path().join("x");
        fs::create_dir_all(x.join("a/b")).unwrap();
        fs::write(x.join("a/b/f"), b"f").unwrap();
        fs::write(x.join("g"), b"g").unwrap();
        std::os::unix::fs::symlink(outside.path(), x.join("a/out")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("precious"), x.join("p")).unwrap();
        let (fd, e) = extra_of(t.path(), "x");
        let dev = rustix::fs::fstat(&fd).unwrap().st_dev;
        let counted = remove(&fd, &e, dev, false).unwrap();
        assert_eq!(counted.entries, 7);
        assert!(x.join("a/b/f").exists());
        let done = remove(&fd, &e, dev, true).unwrap();
        assert_eq!(done.entries, 7);
        assert!(done.other_fs.is_empty());
        assert!(!x.exists());
        assert_eq!(fs::read(outside.path().join("precious")).unwrap(), b"p");
        // A symlink to a directory is removed as a symlink.
        std::os::unix::fs::symlink(outside.path(), t.path().join("l")).unwrap();
        let (fd, e) = extra_of(t.path(), "l");
        assert!(!e.is_dir());
        assert_eq!(remove(&fd, &e, dev, true).unwrap().entries, 1);
        assert!(outside.path().join("precious").exists());
    }

    #[test]
    fn another_file_system_is_left() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("m/inner")).unwrap();
        let (fd, e) = extra_of(t.path(), "m");
        // As if `m` were a mount point.
        let done = remove(&fd, &e, e.st.st_dev + 1, true).unwrap();
        assert_eq!(done.entries, 0);
        assert_eq!(done.other_fs, vec![b"/d/m".to_vec()]);
        assert!(t.path().join("m/inner").exists());
    }

    #[test]
    fn children_of_the_root_and_below() {
        assert_eq!(child(b"/", b"etc"), b"/etc");
        assert_eq!(child(b"/etc", b"hosts"), b"/etc/hosts");
    }
}
