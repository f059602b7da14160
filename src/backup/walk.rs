//! Stage 1, the walk (its own thread): the roots of a run walked in order
//! (`crate::walk`), each entry with its stat, hard links noted by the path
//! first seen, handed on in batches of `WALK_BATCH`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::SyncSender;

use rustix::fs::{FileType, Stat};

use super::cancel::Cancel;
use crate::error::{Error, Result};
use crate::index::{FileStat, Known};
use crate::snapshot::{Entry, Kind};
use crate::walk::{self, Excludes};
use crate::xattrs::{Attrs, Problem, Read};

/// Entries handed on at a time.
const WALK_BATCH: usize = 256;

/// What the walk found; `detect` fills in the chunk lists it can reuse.
pub enum Walked {
    /// An entry with its stat and the attributes the walk read of it (a
    /// directory's, a symlink's, a special file's; what could not be read:
    /// `problem`); for a file the index knows unchanged, its chunk list and
    /// what the index knows of its attributes (`known`, filled in by
    /// `detect`).
    Entry {
        entry: Entry,
        stat: FileStat,
        problem: Option<Problem>,
        known: Option<Known>,
    },
    Failed(walk::WalkError),
    Replaced(walk::Replaced),
    /// A directory recorded, its contents left out, and why.
    LeftOut(walk::LeftOut),
    /// An entry an exclude pattern left out.
    Excluded,
    /// An entry with the nodump flag, left out with `exclude_nodump`.
    Nodump,
}

/// What a run walks.
pub struct Roots<'s> {
    /// The configured paths, or the subtrees of them a daemon run walks.
    pub roots: &'s [PathBuf],
    /// The configured paths (the walk reaches a subtree from its own).
    pub paths: &'s [PathBuf],
    /// Subtrees: one that is gone has no entries (a configured path that
    /// is gone is an error).
    pub scoped: bool,
    pub excludes: &'s Excludes,
}

pub fn stat_of(st: &Stat) -> FileStat {
    let (dev, ino) = walk::dev_ino(st);
    FileStat {
        size: st.st_size as u64,
        mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
        ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec as i64,
        ino,
        dev,
    }
}

/// The entry for a walked path, its stat, (a symlink's) target and
/// attributes.
fn entry_of(path: PathBuf, st: &Stat, target: Option<Vec<u8>>, attrs: Attrs) -> Option<Entry> {
    let kind = match walk::kind(st) {
        FileType::Directory => Kind::Dir,
        FileType::RegularFile => Kind::File,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::CharacterDevice => Kind::CharDev,
        FileType::BlockDevice => Kind::BlockDev,
        FileType::Socket => Kind::Socket,
        FileType::Unknown => return None,
    };
    let stat = stat_of(st);
    Some(Entry {
        path: std::os::unix::ffi::OsStringExt::into_vec(path.into_os_string()),
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: if kind == Kind::File { stat.size } else { 0 },
        mtime_ns: stat.mtime_ns,
        rdev: st.st_rdev,
        target: if kind == Kind::Symlink { target } else { None },
        link: None,
        attrs,
    })
}

/// Walk `r`, sending what is found to `out` in batches.
pub fn walk(r: &Roots<'_>, cancel: &Cancel<'_>, out: SyncSender<Vec<Walked>>) -> Result<()> {
    // A root inside another root is walked with it, not twice.
    let mut kept: Vec<&PathBuf> = Vec::new();
    let mut sorted: Vec<&PathBuf> = r.roots.iter().collect();
    sorted.sort_by_key(|p| p.as_os_str().len());
    for root in sorted {
        if !kept.iter().any(|k| root.starts_with(k)) {
            kept.push(root);
        }
    }
    let batch = std::cell::RefCell::new(Vec::with_capacity(WALK_BATCH));
    let push = |w: Walked| -> Result<()> {
        let mut b = batch.borrow_mut();
        b.push(w);
        if b.len() >= WALK_BATCH {
            let full = std::mem::replace(&mut *b, Vec::with_capacity(WALK_BATCH));
            out.send(full).map_err(|_| Error::Cancelled)?;
        }
        Ok(())
    };
    // Files with more than one link: (device, inode) -> the path first
    // seen, which later links point at.
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for root in r.roots.iter().filter(|root| kept.contains(root)) {
        // A dirty subtree that is gone now simply has no entries.
        if r.scoped && std::fs::symlink_metadata(root).is_err() {
            continue;
        }
        // Reached from the configured path that holds it, the one a full
        // walk goes through (the shortest).
        let base = r
            .paths
            .iter()
            .filter(|p| root.starts_with(p))
            .min_by_key(|p| p.as_os_str().len())
            .unwrap_or(root);
        let mut visit =
            |path: PathBuf, st: &Stat, target: Option<Vec<u8>>, read: Option<Read>| -> Result<()> {
                cancel.check()?;
                let read = read.unwrap_or_default();
                match entry_of(path, st, target, read.attrs) {
                    Some(mut e) => {
                        if e.kind == Kind::File && st.st_nlink > 1 {
                            let inode = walk::dev_ino(st);
                            match links.get(&inode) {
                                Some(first) => e.link = Some(first.clone()),
                                None => {
                                    links.insert(inode, e.path.clone());
                                }
                            }
                        }
                        push(Walked::Entry {
                            entry: e,
                            stat: stat_of(st),
                            problem: read.problem,
                            known: None,
                        })
                    }
                    None => Ok(()),
                }
            };
        let mut note = |n: walk::Note| {
            push(match n {
                walk::Note::Failed(w) => Walked::Failed(w),
                walk::Note::Replaced(w) => Walked::Replaced(w),
                walk::Note::LeftOut(_, why) => Walked::LeftOut(why),
                walk::Note::Excluded(_) => Walked::Excluded,
                walk::Note::Nodump(_) => Walked::Nodump,
            })
        };
        walk::walk(root, base, r.excludes, &mut visit, &mut note)?;
    }
    let rest = batch.into_inner();
    if !rest.is_empty() {
        out.send(rest).map_err(|_| Error::Cancelled)?;
    }
    Ok(())
}
