//! Raw inotify for the daemon: one watch per directory under every
//! configured path (excluded directories are not watched), added for
//! directories created later and dropped for removed ones. Events become
//! dirty subtrees per snapshot name. Queue overflow and running out of
//! watches are reported, never ignored: the daemon then scans everything.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use crate::config::SnapshotConfig;
use crate::error::Result;
use crate::walk::Excludes;

/// What a snapshot name needs rescanned.
#[derive(Debug, Clone, PartialEq)]
pub enum Dirty {
    /// Everything (overflow, a reload, a full scan).
    Full,
    /// These subtrees (no one inside another).
    Paths(BTreeSet<PathBuf>),
}

impl Dirty {
    pub fn add(&mut self, p: &Path) {
        let Dirty::Paths(set) = self else { return };
        if set.iter().any(|q| p.starts_with(q)) {
            return;
        }
        set.retain(|q| !q.starts_with(p));
        set.insert(p.to_path_buf());
    }
}

struct Watched {
    roots: Vec<PathBuf>,
    excludes: Excludes,
}

/// What one read of the inotify queue found.
#[derive(Debug, Default)]
pub struct Changes {
    /// (snapshot index, subtree) pairs.
    pub dirty: Vec<(usize, PathBuf)>,
    pub overflow: bool,
}

pub struct Watcher {
    inotify: Inotify,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    snaps: Vec<Watched>,
    /// Out of watches (fs.inotify.max_user_watches): some directories are
    /// not watched, so changes must be found by scanning.
    pub exhausted: bool,
    exhausted_logged: bool,
    log: fn(&str),
}

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::DONT_FOLLOW
        | WatchMask::EXCL_UNLINK
}

impl Watcher {
    pub fn new(
        snapshots: &[SnapshotConfig],
        cfg: &crate::config::Config,
        log: fn(&str),
    ) -> Result<Watcher> {
        let inotify = Inotify::init().map_err(|e| crate::error::Error::System {
            op: "start inotify",
            source: Box::new(e),
        })?;
        let mut w = Watcher {
            inotify,
            dirs: HashMap::new(),
            snaps: Vec::new(),
            exhausted: false,
            exhausted_logged: false,
            log,
        };
        let defaults = crate::walk::WalkDefaults::of(cfg);
        for s in snapshots {
            w.snaps.push(Watched {
                roots: s.paths.clone(),
                excludes: defaults.excludes_for(s)?,
            });
        }
        let roots: Vec<PathBuf> = w.snaps.iter().flat_map(|s| s.roots.clone()).collect();
        for r in roots {
            w.add_tree(&r);
        }
        Ok(w)
    }

    pub fn fd(&self) -> RawFd {
        self.inotify.as_raw_fd()
    }

    pub fn watch_count(&self) -> usize {
        self.dirs.len()
    }

    /// Is `p` inside snapshot `s` and not excluded by it?
    fn covers(&self, s: usize, p: &Path) -> bool {
        let snap = &self.snaps[s];
        snap.roots.iter().any(|r| {
            p.starts_with(r) && {
                // No directory between the root and `p` may be excluded.
                let mut cur = p.to_path_buf();
                loop {
                    if cur == *r {
                        break true;
                    }
                    if snap.excludes.matches(&cur) {
                        break false;
                    }
                    if !cur.pop() {
                        break false;
                    }
                }
            }
        })
    }

    fn covered_by_any(&self, p: &Path) -> bool {
        (0..self.snaps.len()).any(|s| self.covers(s, p))
    }

    /// Watch `root` and every directory below it that some snapshot covers.
    fn add_tree(&mut self, root: &Path) {
        use std::os::unix::fs::MetadataExt;
        let dev_of = |p: &Path| std::fs::symlink_metadata(p).ok().map(|m| m.dev());
        let mut stack = vec![(root.to_path_buf(), None::<u64>)];
        while let Some((dir, parent_dev)) = stack.pop() {
            if !self.covered_by_any(&dir) {
                continue;
            }
            // What the walk does not descend into is not watched either (the
            // mount point itself is, through its parent).
            let dev = dev_of(&dir);
            if let (Some(dev), Some(parent)) = (dev, parent_dev) {
                if self.snaps.iter().any(|s| {
                    s.roots.iter().any(|r| dir.starts_with(r))
                        && s.excludes.mount_left_out_dev(dev, parent).is_some()
                }) {
                    continue;
                }
            }
            match self.inotify.watches().add(&dir, mask()) {
                Ok(wd) => {
                    self.dirs.insert(wd, dir.clone());
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    self.exhausted = true;
                    if !self.exhausted_logged {
                        self.exhausted_logged = true;
                        (self.log)(&format!(
                            "warning: out of inotify watches at {} ({} watched; raise \
                             fs.inotify.max_user_watches): falling back to full scans",
                            dir.display(),
                            self.dirs.len()
                        ));
                    }
                    return;
                }
                // Gone already, or not a directory we may read: nothing to watch.
                Err(_) => continue,
            }
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((e.path(), dev));
                    }
                }
            }
        }
    }

    fn mark(&self, p: &Path, out: &mut Changes) {
        for s in 0..self.snaps.len() {
            if self.covers(s, p) {
                out.dirty.push((s, p.to_path_buf()));
            }
        }
    }

    /// Read every queued event without blocking.
    pub fn read(&mut self, out: &mut Changes) -> io::Result<()> {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let events = match self.inotify.read_events(&mut buf) {
                Ok(ev) => ev,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut new_dirs = Vec::new();
            for ev in events {
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    out.overflow = true;
                    continue;
                }
                let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
                    continue;
                };
                if ev.mask.contains(EventMask::IGNORED) {
                    self.dirs.remove(&ev.wd);
                    continue;
                }
                if ev
                    .mask
                    .intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF)
                {
                    // The parent's own event covers it; a moved root is rescanned.
                    if let Some(parent) = dir.parent() {
                        self.mark(parent, out);
                    }
                    self.mark(&dir, out);
                    continue;
                }
                let is_new_dir = ev.mask.contains(EventMask::ISDIR)
                    && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO);
                if is_new_dir {
                    if let Some(name) = ev.name {
                        new_dirs.push(dir.join(name));
                    }
                }
                self.mark(&dir, out);
            }
            for d in new_dirs {
                if !self.exhausted {
                    self.add_tree(&d);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_paths_nest() {
        let mut d = Dirty::Paths(BTreeSet::new());
        d.add(Path::new("/a/b/c"));
        d.add(Path::new("/a/b/c/d"));
        d.add(Path::new("/x"));
        d.add(Path::new("/a/b"));
        assert_eq!(
            d,
            Dirty::Paths(
                [PathBuf::from("/a/b"), PathBuf::from("/x")]
                    .into_iter()
                    .collect()
            )
        );
        let mut f = Dirty::Full;
        f.add(Path::new("/y"));
        assert_eq!(f, Dirty::Full);
    }
}
