//! The restore's entries, phase by phase, through `Target`: directories
//! (parents first), files (made empty and sized, so holes stay holes),
//! then — once the contents are in — failed files removed, hard links,
//! symlinks and special files, and owners, modes and times last,
//! directories deepest first.
//!
//! Every phase reads the plan in order and records each node it makes
//! (`plan.made`); a node whose parent was not made fails with it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use super::plan::{self, mpath, ppath, shown};
use super::target::{self, Attrs, FileId, NodeInfo, Target};
use super::{Summary, attrs_from_row, fan_out, node_info};
use crate::error::{DbContext, Result};
use crate::snapshot::Kind;

/// Entries whose attributes a thread sets at a time, and bytes of extended
/// attributes at most (a forged entry may hold 1 MiB of them).
const ATTR_BATCH: usize = 256;
const ATTR_BATCH_BYTES: usize = 1 << 20;

/// The entry phases' shared state.
pub struct Entries<'a> {
    pub conn: &'a Connection,
    pub target: Target,
    pub summary: Summary,
    /// One message per entry not restored.
    pub failures: super::Failures,
    /// `(device node, path)` warnings that are not failures.
    pub warn: &'a (dyn Fn(&str) + Sync),
    /// How extended attributes and flags are set, and what could not be.
    pub apply: &'a crate::xattrs::Apply<'a>,
    /// The snapshot has the `xattrs` and `flags` columns (format 3 on).
    pub attrs: bool,
}

impl Entries<'_> {
    fn made(&self, node: i64, id: FileId) -> Result<()> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO plan.made(node, dev, ino) VALUES (?1, ?2, ?3)")
            .db(ppath())?
            .execute(params![node, id.0 as i64, id.1 as i64])
            .db(ppath())?;
        Ok(())
    }

    fn unmade(&self, node: i64) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM plan.made WHERE node = ?1")
            .db(ppath())?
            .execute([node])
            .db(ppath())?;
        Ok(())
    }

    /// Call `f` with every row of plan query `q`, and a way to find the
    /// plan's directory nodes (for `Target::dir`).
    pub(super) fn each(
        &mut self,
        q: &str,
        mut f: impl FnMut(
            &mut Self,
            &rusqlite::Row<'_>,
            &mut dyn FnMut(i64) -> Result<NodeInfo>,
        ) -> Result<()>,
    ) -> Result<()> {
        let conn = self.conn;
        let mut st = conn.prepare(&plan::q(q, self.attrs)).db(ppath())?;
        let mut node_q = conn.prepare(plan::Q_NODE).db(ppath())?;
        let mut info = |n: i64| node_info(&mut node_q, n);
        let mut rows = st.query([]).db(ppath())?;
        while let Some(r) = rows.next().db(ppath())? {
            f(self, r, &mut info)?;
        }
        Ok(())
    }

    /// The directory of node `parent`, or the reason it cannot be had.
    fn dir(
        &mut self,
        parent: i64,
        info: &mut dyn FnMut(i64) -> Result<NodeInfo>,
    ) -> Result<target::Made<Arc<OwnedFd>>> {
        self.target.dir(parent, info)
    }

    /// Directories, parents first (the target is node 0, made already).
    pub fn dirs(&mut self) -> Result<()> {
        self.made(0, self.target.root_id())?;
        self.each(plan::Q_DIRS_UP, |this, r, info| {
            let node: i64 = r.get(0).db(ppath())?;
            let parent: i64 = r.get(1).db(ppath())?;
            let name: Vec<u8> = r.get(2).db(ppath())?;
            let is_entry: bool = r.get(3).db(ppath())?;
            let made = this
                .dir(parent, info)?
                .and_then(|p| this.target.make_dir(node, &p, &name));
            match made {
                Ok(id) => {
                    this.made(node, id)?;
                    if is_entry {
                        this.summary.dirs += 1;
                    }
                }
                Err(err) => {
                    let src: Vec<u8> = r.get(4).db(ppath())?;
                    this.failures.push(format!("{}: {err}", shown(&src)));
                }
            }
            Ok(())
        })
    }

    /// Files of more than one chunk (or none, or the first path of hard
    /// links), made empty and sized; files of one chunk are counted here
    /// and made with their chunk.
    pub fn files(&mut self) -> Result<()> {
        self.each(plan::Q_FILES, |this, r, info| {
            let node: i64 = r.get(0).db(ppath())?;
            let parent: i64 = r.get(1).db(ppath())?;
            let name: Vec<u8> = r.get(2).db(ppath())?;
            let size = r.get::<_, i64>(3).db(ppath())? as u64;
            let single: bool = r.get(4).db(ppath())?;
            let made = if single {
                Ok(None)
            } else {
                this.dir(parent, info)?.and_then(|p| {
                    let (f, id) = target::create_file(&p, &name)?;
                    f.set_len(size)
                        .map_err(|err| target::Fail { op: "size", err })?;
                    Ok(Some(id))
                })
            };
            match made {
                Ok(id) => {
                    if let Some(id) = id {
                        this.made(node, id)?;
                    }
                    this.summary.files += 1;
                    this.summary.bytes += size;
                }
                Err(err) => {
                    let src: Vec<u8> = r.get(5).db(ppath())?;
                    this.failures.push(format!("{}: {err}", shown(&src)));
                }
            }
            Ok(())
        })
    }

    /// Remove the files whose contents failed (nothing corrupt is left
    /// looking good), naming each.
    pub fn drop_failed(&mut self, failed: HashMap<i64, String>) -> Result<()> {
        let conn = self.conn;
        let mut bad: Vec<_> = failed.into_iter().collect();
        bad.sort();
        let mut node_q = conn.prepare(plan::Q_NODE).db(ppath())?;
        let mut info = |n: i64| node_info(&mut node_q, n);
        for (node, msg) in bad {
            let src: Vec<u8> = conn
                .query_row(
                    "SELECT e.path FROM plan.nodes n JOIN main.entries e ON e.rowid = n.entry
                     WHERE n.id = ?1",
                    [node],
                    |r| r.get(0),
                )
                .db(mpath())?;
            // One-chunk files were removed (or never made) by their thread.
            let (parent, name, id) = info(node)?;
            if let Some(id) = id {
                if let Ok(p) = self.dir(parent, &mut info)? {
                    let _ = target::remove_file(&p, &name, id);
                }
                self.unmade(node)?;
            }
            self.summary.files -= 1;
            self.failures
                .push(format!("{}: {msg}; the file was not restored", shown(&src)));
        }
        Ok(())
    }

    /// Hard links to files now complete.
    pub fn links(&mut self) -> Result<()> {
        self.each(plan::Q_LINKS, |this, r, info| {
            let parent: i64 = r.get(1).db(ppath())?;
            let name: Vec<u8> = r.get(2).db(ppath())?;
            let size = r.get::<_, i64>(3).db(ppath())? as u64;
            let src: Vec<u8> = r.get(4).db(ppath())?;
            let first_parent: i64 = r.get(5).db(ppath())?;
            let first_name: Vec<u8> = r.get(6).db(ppath())?;
            let first_id = match (
                r.get::<_, Option<i64>>(7).db(ppath())?,
                r.get::<_, Option<i64>>(8).db(ppath())?,
            ) {
                (Some(d), Some(i)) => (d as u64, i as u64),
                _ => {
                    let first: Vec<u8> = r.get(9).db(ppath())?;
                    this.failures.push(format!(
                        "{}: not restored: it is a hard link of {}, which was not restored",
                        shown(&src),
                        shown(&first)
                    ));
                    return Ok(());
                }
            };
            let as_root = this.target.as_root;
            let first_dir = this.dir(first_parent, info)?;
            let dir = this.dir(parent, info)?;
            let made = first_dir.and_then(|fp| {
                dir.and_then(|p| target::hard_link(&fp, &first_name, first_id, &p, &name, as_root))
            });
            match made {
                Ok(()) => {
                    this.summary.files += 1;
                    this.summary.bytes += size;
                }
                Err(err) => this.failures.push(format!("{}: {err}", shown(&src))),
            }
            Ok(())
        })
    }

    /// Symlinks and special files. (Single-threaded: special files are
    /// made with the process umask at 0 for the call.)
    pub fn others(&mut self) -> Result<()> {
        self.each(plan::Q_OTHER, |this, r, info| {
            let node: i64 = r.get(0).db(ppath())?;
            let parent: i64 = r.get(1).db(ppath())?;
            let name: Vec<u8> = r.get(2).db(ppath())?;
            let src: Vec<u8> = r.get(3).db(ppath())?;
            let a = attrs_from_row(r, 4).db(ppath())?;
            let to: Option<Vec<u8>> = r.get(11).db(ppath())?;
            let rdev = r.get::<_, i64>(12).db(ppath())? as u64;
            let made = match a.kind {
                Kind::Symlink => this.dir(parent, info)?.and_then(|p| {
                    let id = target::symlink(&p, &name, to.as_deref().unwrap_or_default())?;
                    Ok(Some(id))
                }),
                Kind::Fifo | Kind::CharDev | Kind::BlockDev => {
                    if a.kind != Kind::Fifo && !this.target.as_root {
                        (this.warn)(&format!(
                            "{}: device node not restored (needs root)",
                            shown(&src)
                        ));
                        return Ok(());
                    }
                    this.dir(parent, info)?
                        .and_then(|p| target::special(&p, &name, &a, rdev).map(Some))
                }
                // Sockets belong to the process that listens on them.
                _ => Ok(None),
            };
            match made {
                Ok(Some(id)) => {
                    this.made(node, id)?;
                    if a.kind == Kind::Symlink {
                        this.summary.symlinks += 1;
                    } else {
                        this.summary.other += 1;
                    }
                }
                Ok(None) => {}
                Err(err) => this.failures.push(format!("{}: {err}", shown(&src))),
            }
            Ok(())
        })
    }

    /// Owners, extended attributes, modes, times and flags of everything
    /// but directories: batches go to threads as they are read (a few
    /// system calls per entry), with the directory each is in opened for
    /// them.
    pub fn attrs(&mut self) -> Result<()> {
        type Batch = Vec<(Arc<OwnedFd>, Vec<u8>, FileId, Vec<u8>, Attrs)>;
        let conn = self.conn;
        let errs = Mutex::new(super::Failures::default());
        let apply = self.apply;
        let q = plan::q(plan::Q_ATTRS, self.attrs);
        let target = &mut self.target;
        let failures = &mut self.failures;
        let read = fan_out(
            |tx| {
                let mut st = conn.prepare(&q).db(ppath())?;
                let mut node_q = conn.prepare(plan::Q_NODE).db(ppath())?;
                let mut info = |n: i64| node_info(&mut node_q, n);
                let mut rows = st.query([]).db(ppath())?;
                let mut batch: Batch = Vec::with_capacity(ATTR_BATCH);
                let mut bytes = 0;
                while let Some(r) = rows.next().db(ppath())? {
                    let parent: i64 = r.get(0).db(ppath())?;
                    let name: Vec<u8> = r.get(1).db(ppath())?;
                    let id = (
                        r.get::<_, i64>(2).db(ppath())? as u64,
                        r.get::<_, i64>(3).db(ppath())? as u64,
                    );
                    let src: Vec<u8> = r.get(4).db(ppath())?;
                    let a = attrs_from_row(r, 5).db(ppath())?;
                    match target.dir(parent, &mut info)? {
                        Ok(p) => {
                            bytes += a.extra.xattrs.len();
                            batch.push((p, name, id, src, a));
                        }
                        Err(err) => failures.push(format!("{}: {err}", shown(&src))),
                    }
                    if batch.len() == ATTR_BATCH || bytes >= ATTR_BATCH_BYTES {
                        bytes = 0;
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(ATTR_BATCH));
                        if tx.send(full).is_err() {
                            return Ok(());
                        }
                    }
                }
                if !batch.is_empty() {
                    let _ = tx.send(batch);
                }
                Ok(())
            },
            |batch: Batch| {
                for (parent, name, id, src, a) in batch {
                    if let Err(err) = target::set_attrs(&parent, &name, id, &a, apply, &src) {
                        let msg = format!("{}: {err}", shown(&src));
                        errs.lock().expect("lock").push(msg);
                    }
                }
            },
        );
        read?;
        self.failures.extend(errs.into_inner().expect("lock"));
        Ok(())
    }

    /// Owners, extended attributes, modes, times and flags of
    /// directories, deepest first (the target itself last, from the
    /// snapshot's `/`), each through its own descriptor, reopened and
    /// checked if not at hand.
    pub fn dir_attrs(&mut self) -> Result<()> {
        let apply = self.apply;
        self.each(plan::Q_DIRS_DOWN, |this, r, info| {
            let node: i64 = r.get(0).db(ppath())?;
            let src: Vec<u8> = r.get(1).db(ppath())?;
            let a = attrs_from_row(r, 2).db(ppath())?;
            let set = this
                .target
                .dir(node, info)?
                .and_then(|fd| this.target.dir_attrs(node, &fd, &a, apply, &src));
            if let Err(err) = set {
                this.failures.push(format!("{}: {err}", shown(&src)));
            }
            Ok(())
        })
    }
}
