//! The restore pipeline: fetch and decrypt the snapshot's metadata -> plan
//! (`plan.rs`: every path checked, placed in a tree of nodes, its chunks
//! located and queued by blob and offset) -> directories and empty,
//! pre-sized files (`entries.rs`) -> contents, read in parallel by ranged
//! GETs, every chunk's SHA-256 checked (`contents.rs`) -> hard links,
//! symlinks and special files -> owners, modes and times last, directories
//! deepest first. Extended attributes go with owners and modes, inode flags
//! after everything else of an entry (`crate::xattrs`).
//!
//! Every write goes through `target.rs`, which works only from directory
//! descriptors of the target: nothing the snapshot names is ever resolved
//! as a path, and nothing lands outside the target.
//!
//! A file with a chunk that fails its check is removed, named in the error,
//! and the restore exits non-zero: nothing corrupt is left looking good.
//!
//! The controls: the plan keeps only what `select.rs` chooses (`--include`,
//! `--exclude`) and decides, for each entry, what to do with what the
//! target already has there (`existing.rs`: `--overwrite`), so that files
//! kept queue no chunk; once the directories are made, `prune.rs` removes
//! what the snapshot does not have from each one restored (`--delete`). A
//! dry run builds the same plan, reporting each decision, and stops there:
//! nothing is written and no blob is read.

mod contents;
mod entries;
mod existing;
mod plan;
mod prune;
mod select;
mod stdout;
mod target;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{self, SyncSender};
use std::time::Instant;

use age::x25519;
use rusqlite::{Connection, OptionalExtension};

use crate::error::{DbContext, Error, IoContext, Result};
use crate::metadata;
use crate::snapshot::Kind;
use crate::store::Store;
use existing::Existing;
use select::Select;
use target::{Attrs, NodeInfo, Target};

pub use existing::Overwrite;
pub use plan::components;

pub struct Restore<'a> {
    pub store: &'a dyn Store,
    pub identities: Vec<x25519::Identity>,
    pub target: PathBuf,
    /// Only these source paths (and what is below them), when not empty.
    pub paths: Vec<String>,
    pub controls: Controls,
    pub warn: &'a (dyn Fn(&str) + Sync),
    /// Called with the blobs the restore needs (key, size) once they are
    /// known and before anything is written: the thaw of cold blobs.
    pub gate: crate::thaw::Gate<'a>,
    /// A dry run's report of each action, as it is decided.
    pub report: Option<&'a Report<'a>>,
    /// Restore extended attributes, ACLs and inode flags (not
    /// `--no-xattrs`).
    pub xattrs: bool,
    /// The SHA-256 the snapshot's signed manifest gives its metadata, when
    /// it was taken on a trusted signature (`signing::pick`).
    pub expect_metadata: Vec<[u8; 32]>,
}

/// What to restore of a snapshot, and how to treat what the target has.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Controls {
    /// `--include GLOB`: only what matches (and what is below it).
    pub include: Vec<String>,
    /// `--exclude GLOB`: not what matches (nor what is below it).
    pub exclude: Vec<String>,
    /// `--overwrite`: what to do with an existing file.
    pub overwrite: Overwrite,
    /// `--verify-existing`: `if-changed` compares contents, not mtimes.
    pub verify_existing: bool,
    /// `--delete`: remove what the snapshot does not have from each
    /// directory restored.
    pub delete: bool,
    /// `--dry-run`: say what would be done, do nothing.
    pub dry_run: bool,
}

/// What a restore does with one entry (what a dry run reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// A directory made.
    Create,
    /// An entry made where nothing is.
    Write,
    /// An entry made in place of what is there.
    Replace,
    /// What is there is left (`--overwrite`).
    Keep,
    /// Removed (`--delete`).
    Delete,
    /// Not restored.
    Skip,
}

impl Act {
    pub fn name(self) -> &'static str {
        match self {
            Act::Create => "create",
            Act::Write => "write",
            Act::Replace => "replace",
            Act::Keep => "keep",
            Act::Delete => "delete",
            Act::Skip => "skip",
        }
    }
}

/// One action of a restore, as a dry run reports it.
pub struct Action<'a> {
    pub act: Act,
    /// The source path (as in the snapshot: `/etc/hosts` is
    /// `TARGET/etc/hosts`).
    pub path: &'a [u8],
    /// The snapshot's kind of entry (None: not known, or not in it).
    pub kind: Option<Kind>,
    /// A regular file's size; for an entry deleted, how many entries go
    /// (a directory and everything in it).
    pub size: Option<u64>,
    /// Why, when there is more to say than the action.
    pub why: &'a str,
}

/// Where a dry run's actions go (an error stops the run: standard output
/// closed).
pub type Report<'a> = dyn Fn(&Action<'_>) -> Result<()> + Sync + 'a;

/// A dry run's actions, counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub create: u64,
    pub write: u64,
    pub replace: u64,
    pub keep: u64,
    /// Entries removed: a directory and each entry in it count.
    pub delete: u64,
    pub skip: u64,
    /// The size of the files written or replaced.
    pub bytes: u64,
}

impl Counts {
    fn add(&mut self, act: Act, size: Option<u64>) {
        let n = match act {
            Act::Create => &mut self.create,
            Act::Write => &mut self.write,
            Act::Replace => &mut self.replace,
            Act::Keep => &mut self.keep,
            Act::Delete => &mut self.delete,
            Act::Skip => &mut self.skip,
        };
        *n += 1;
        if matches!(act, Act::Write | Act::Replace) {
            self.bytes += size.unwrap_or(0);
        }
    }
}

#[derive(Debug, Default)]
pub struct Summary {
    pub id: String,
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub other: u64,
    pub bytes: u64,
    pub chunks: u64,
    /// Entries left as the target had them (`--overwrite`).
    pub kept: u64,
    /// Entries removed (`--delete`: a directory and each entry in it).
    pub deleted: u64,
    /// A dry run: what it would do, and the blobs and stored bytes it
    /// would read (`chunks`: how many chunks).
    pub dry: Option<Counts>,
    pub blobs: u64,
    pub fetch_bytes: u64,
    /// Entries whose extended attributes or inode flags were not all
    /// restored (by kind: one warning each).
    pub attrs_lost: u64,
    pub seconds: f64,
}

impl Restore<'_> {
    pub fn run(&self, id: &str) -> Result<Summary> {
        let started = Instant::now();
        // A dry run writes nothing into the target, not even its scratch
        // files: they go to the temporary directory, as for `ls`.
        let scratch = if self.controls.dry_run {
            std::env::temp_dir()
        } else {
            self.target.clone()
        };
        let conn = metadata::open(
            self.store,
            id,
            &self.identities,
            &scratch,
            &self.expect_metadata,
        )?;
        metadata::attach_scratch(&conn, "plan", &scratch)?;
        let done = if self.controls.dry_run {
            self.dry_run(id, &conn, started)
        } else {
            self.restore(id, &conn, started)
        };
        done.map_err(|e| conn.explain_scratch(e, "plan", "restore plan", &scratch))
    }

    fn select(&self) -> Result<Select> {
        Select::new(&self.controls.include, &self.controls.exclude)
    }

    fn restore(&self, id: &str, conn: &Connection, started: Instant) -> Result<Summary> {
        conn.execute_batch(plan::SCHEMA).db(plan::ppath())?;
        let c = &self.controls;
        let mut select = self.select()?;
        // The target is looked at only where a decision needs it.
        let mut existing = match c.overwrite {
            Overwrite::Always => None,
            _ => Some(Existing::open(&self.target)?),
        };
        let built = plan::build(
            conn,
            plan::Options {
                paths: &self.paths,
                select: &mut select,
                existing: existing.as_mut(),
                overwrite: c.overwrite,
                verify: c.verify_existing,
                as_root: rustix::process::geteuid().is_root(),
                report: None,
            },
            id,
        )?;
        drop(existing);
        // Blobs only files kept would have needed are not thawed.
        let needed = if built.kept > 0 {
            let mut read = vec![false; built.blobs.len()];
            plan::each_read(conn, |b, _| read[b] = true)?;
            built
                .blobs
                .iter()
                .zip(read)
                .filter(|(_, r)| *r)
                .map(|(b, _)| b.clone())
                .collect()
        } else {
            built.blobs.clone()
        };
        (self.gate)(&needed)?;
        let target = Target::open(&self.target).at("open target directory", &self.target)?;
        let losses = crate::xattrs::Losses::default();
        let apply = crate::xattrs::Apply {
            on: self.xattrs,
            as_root: target.as_root,
            losses: &losses,
        };
        let mut run = entries::Entries {
            conn,
            target,
            summary: Summary {
                id: id.to_string(),
                kept: built.kept,
                ..Summary::default()
            },
            failures: built.failures,
            warn: self.warn,
            apply: &apply,
            attrs: crate::snapshot::has_attrs(conn, "main"),
        };
        run.dirs()?;
        if c.delete {
            run.target.forget();
            run.delete_extras(&select)?;
        }
        run.files()?;
        crate::testhook::pause_at(&self.target.join(".vaultik-pause"));
        // Each phase reopens (and checks again) the directories it needs.
        run.target.forget();
        let read = contents::read_all(
            conn,
            &mut run.target,
            self.store,
            &self.identities,
            &built.blobs,
            &self.target.join(".vaultik-pause-unit"),
            (&apply, run.attrs),
        )?;
        run.summary.chunks = read.chunks;
        run.target.forget();
        run.drop_failed(read.failed)?;
        run.links()?;
        run.others()?;
        run.target.forget();
        run.attrs()?;
        run.target.forget();
        run.dir_attrs()?;

        let mut s = run.summary;
        s.seconds = started.elapsed().as_secs_f64();
        for line in losses.lines() {
            (self.warn)(&line);
        }
        s.attrs_lost = losses.count();
        if !run.failures.is_empty() {
            for f in run.failures.lines() {
                (self.warn)(&f);
            }
            return Err(Error::Partial {
                failed: run.failures.len(),
                kind: crate::error::Partial::NotRestored,
            });
        }
        Ok(s)
    }

    /// `--dry-run`: the plan, with every decision reported as it is made
    /// (the target looked at, never written), then what `--delete` would
    /// remove, and what would be fetched. Entries the restore would
    /// refuse are reported as skipped.
    fn dry_run(&self, id: &str, conn: &Connection, started: Instant) -> Result<Summary> {
        conn.execute_batch(plan::SCHEMA).db(plan::ppath())?;
        let c = &self.controls;
        let mut select = self.select()?;
        let mut existing = Existing::open(&self.target)?;
        let quiet = |_: &Action<'_>| Ok(());
        let report: &Report<'_> = self.report.unwrap_or(&quiet);
        let built = plan::build(
            conn,
            plan::Options {
                paths: &self.paths,
                select: &mut select,
                existing: Some(&mut existing),
                overwrite: c.overwrite,
                verify: c.verify_existing,
                as_root: rustix::process::geteuid().is_root(),
                report: Some(report),
            },
            id,
        )?;
        let mut counts = built.counts;
        if c.delete {
            prune::dry_run(conn, &mut existing, &select, report, &mut counts)?;
        }
        let mut s = Summary {
            id: id.to_string(),
            kept: built.kept,
            ..Summary::default()
        };
        let mut read = vec![false; built.blobs.len()];
        plan::each_read(conn, |b, len| {
            read[b] = true;
            s.chunks += 1;
            s.fetch_bytes += len;
        })?;
        s.blobs = read.iter().filter(|r| **r).count() as u64;
        s.dry = Some(counts);
        s.seconds = started.elapsed().as_secs_f64();
        Ok(s)
    }
}

impl Restore<'_> {
    /// Write one file's content to `out` (`restore --stdout [PATH]`): the
    /// file at `path`, or the snapshot's only one. The metadata is spilled
    /// to the temporary directory (unlinked, in a private directory: names,
    /// never file contents), as there is no target.
    pub fn to_stdout(
        &self,
        id: &str,
        path: Option<&str>,
        out: &mut std::fs::File,
    ) -> Result<Summary> {
        let started = Instant::now();
        let conn = metadata::open(
            self.store,
            id,
            &self.identities,
            &std::env::temp_dir(),
            &self.expect_metadata,
        )?;
        let file = stdout::find(&conn, path, id).map_err(|e| conn.explain(e))?;
        let located = stdout::locate(&conn, &file).map_err(|e| conn.explain(e))?;
        (self.gate)(&located.blobs)?;
        let written = stdout::write(
            self.store,
            &self.identities,
            &file,
            &located,
            stdout::Out::new(out),
        )?;
        Ok(Summary {
            id: id.to_string(),
            files: 1,
            bytes: written.bytes,
            chunks: written.chunks,
            seconds: started.elapsed().as_secs_f64(),
            ..Summary::default()
        })
    }
}

/// What a restore could not restore, each named in a warning at its end:
/// the first `FAILURES_SHOWN` kept, the rest counted (a forged snapshot
/// may have a million entries refused, each with a path of any length).
#[derive(Debug, Default)]
pub struct Failures {
    shown: Vec<String>,
    more: usize,
}

const FAILURES_SHOWN: usize = 1000;

impl Failures {
    pub fn push(&mut self, why: String) {
        if self.shown.len() < FAILURES_SHOWN {
            self.shown.push(why);
        } else {
            self.more += 1;
        }
    }

    pub fn extend(&mut self, other: Failures) {
        for why in other.shown {
            self.push(why);
        }
        self.more += other.more;
    }

    pub fn len(&self) -> usize {
        self.shown.len() + self.more
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The warnings: one a failure kept, and one for the rest.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        let rest = (self.more > 0).then(|| format!("and {} more not restored", self.more));
        self.shown.iter().cloned().chain(rest)
    }
}

/// Where a source path lands under `target`, or None when it could
/// escape it. For messages and tests: the restore never uses it to reach
/// anything.
pub fn dest_path(target: &Path, src: &[u8]) -> Option<PathBuf> {
    let parts = components(src)?;
    let mut p = target.to_path_buf();
    for c in parts {
        p.push(std::ffi::OsStr::from_bytes(c));
    }
    Some(p)
}

/// Run `produce` on this thread, handing items through a bounded channel to
/// `THREADS` threads that each `work` on them as they come; returns what
/// `produce` returned, once every item is done.
fn fan_out<T: Send>(
    produce: impl FnOnce(&SyncSender<T>) -> Result<()>,
    work: impl Fn(T) + Sync,
) -> Result<()> {
    let (tx, rx) = mpsc::sync_channel::<T>(contents::THREADS);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| {
        for _ in 0..contents::THREADS {
            scope.spawn(|| {
                loop {
                    let next = rx.lock().expect("lock").recv();
                    let Ok(item) = next else { break };
                    work(item);
                }
            });
        }
        let r = produce(&tx);
        // Closing the channel lets the threads finish.
        drop(tx);
        r
    })
}

/// From the columns `kind, mode, uid, gid, mtime_ns, xattrs, flags` of
/// `r`, from `at` (the last two checked when the plan was made).
fn attrs_from_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Attrs> {
    Ok(Attrs {
        kind: Kind::from_i64(r.get(at)?).unwrap_or(Kind::Socket),
        mode: r.get::<_, i64>(at + 1)? as u32 & 0o7777,
        uid: r.get::<_, i64>(at + 2)? as u32,
        gid: r.get::<_, i64>(at + 3)? as u32,
        mtime_ns: r.get(at + 4)?,
        extra: crate::xattrs::Attrs {
            xattrs: r.get::<_, Option<Vec<u8>>>(at + 5)?.unwrap_or_default(),
            flags: r
                .get::<_, Option<i64>>(at + 6)?
                .and_then(|f| u32::try_from(f).ok())
                .unwrap_or(0),
        },
    })
}

/// Where directory node `node` is (`plan::Q_NODE` prepared as `q`).
fn node_info(q: &mut rusqlite::Statement<'_>, node: i64) -> Result<NodeInfo> {
    let row = q
        .query_row([node], |r| {
            let id = match (r.get::<_, Option<i64>>(2)?, r.get::<_, Option<i64>>(3)?) {
                (Some(d), Some(i)) => Some((d as u64, i as u64)),
                _ => None,
            };
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?, id))
        })
        .optional()
        .db(plan::ppath())?;
    row.ok_or_else(|| Error::corrupt(plan::PLAN, format!("node {node} is not in the plan")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        let t = Path::new("/restore");
        assert_eq!(
            dest_path(t, b"/etc/passwd"),
            Some(PathBuf::from("/restore/etc/passwd"))
        );
        assert_eq!(
            dest_path(t, b"etc"),
            None,
            "relative paths are never recorded"
        );
        assert_eq!(dest_path(t, b"/"), Some(PathBuf::from("/restore")));
        for bad in [
            &b"/../x"[..],
            b"/a/../../x",
            b"/a//b",
            b"/a/./b",
            b"/a/",
            b"//etc",
            b"/a\0b",
        ] {
            assert_eq!(dest_path(t, bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let deep = b"/a".repeat(5000);
        assert_eq!(components(&deep), None, "too deep");
    }

    #[test]
    fn the_plan_is_read_back_without_sorting() {
        // A sort would build a temporary b-tree in memory (temp_store is
        // MEMORY): memory would grow with the snapshot again.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::snapshot::META_SCHEMA).unwrap();
        conn.execute_batch("ATTACH DATABASE ':memory:' AS plan")
            .unwrap();
        conn.execute_batch(plan::SCHEMA).unwrap();
        for q in [
            plan::Q_DIRS_UP,
            plan::Q_FILES,
            plan::Q_JOBS,
            plan::Q_JOB_AT,
            plan::Q_LINKS,
            plan::Q_OTHER,
            plan::Q_ATTRS,
            plan::Q_DIRS_DOWN,
            plan::Q_NODE,
            plan::Q_READS,
            prune::Q_RESTORED_DIRS,
        ]
        .into_iter()
        .flat_map(|q| [plan::q(q, true), plan::q(q, false)])
        {
            let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {q}")).unwrap();
            let plan: Vec<String> = st
                .query_map(
                    rusqlite::params_from_iter(std::iter::repeat_n(
                        rusqlite::types::Null,
                        st.parameter_count(),
                    )),
                    |r| r.get::<_, String>(3),
                )
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            assert!(
                !plan.iter().any(|l| l.contains("TEMP B-TREE")),
                "{q}\n{plan:#?}"
            );
            assert!(
                !plan.iter().any(|l| l.starts_with("SCAN e")),
                "entries are looked up by rowid, never scanned: {q}\n{plan:#?}"
            );
        }
    }
}
