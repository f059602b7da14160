//! The metadata thread: the one owner of the snapshot's metadata database
//! while a run goes on. It adds every walked entry (a file the index knows
//! unchanged keeps its chunk list; a changed one is queued for the readers)
//! and applies what the pipeline reports: each file's chunk list, files
//! skipped, deleted or replaced meanwhile, and stored blobs, which the
//! index then records (and `Dedup` settles).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;

use super::walk::Walked;
use super::{Change, Event, Shared, Summary, Todo};
use crate::error::{Error, Result};
use crate::index::FileStat;
use crate::snapshot::{Entry, Kind, MetaWriter};
use crate::walk::LeftOut;

pub struct Recorder<'m, 's, 'r, 'a> {
    shared: &'s Shared<'r, 'a>,
    meta: &'m MetaWriter,
    pub summary: Summary,
}

/// The warning for an entry replaced between its stat and its read.
fn replaced_warning(path: &Path, now: &str, dir: bool) -> String {
    let what = if dir {
        "its contents are not in this snapshot"
    } else {
        "not in this snapshot"
    };
    format!(
        "{}: replaced during the backup (now {now}); {what}",
        path.display()
    )
}

impl<'m, 's, 'r, 'a> Recorder<'m, 's, 'r, 'a> {
    pub fn new(
        shared: &'s Shared<'r, 'a>,
        meta: &'m MetaWriter,
        summary: Summary,
    ) -> Recorder<'m, 's, 'r, 'a> {
        Recorder {
            shared,
            meta,
            summary,
        }
    }

    fn warn(&self, msg: &str) {
        (self.shared.backup.warn)(msg)
    }

    /// Add a stream's one entry (`what` the stream is: standard input, a
    /// command); its chunks come with `StreamDone`.
    pub fn stream_entry(&mut self, e: &Entry, what: &str) -> Result<i64> {
        self.summary.entries += 1;
        self.summary.files += 1;
        self.meta.set_info("stream", what)?;
        self.meta.add(e, None)
    }

    /// Add one batch of walked entries; the changed files go to `todo`.
    pub fn walked(&mut self, batch: Vec<Walked>, todo: &SyncSender<Vec<Todo>>) -> Result<()> {
        let mut files = Vec::new();
        for w in batch {
            match w {
                Walked::Entry(e, stat, reuse) => self.entry(e, stat, reuse, &mut files)?,
                Walked::Failed(w) if self.shared.backup.skip_errors => {
                    self.summary.warnings += 1;
                    self.summary.skipped += 1;
                    self.warn(&format!("skipped {}: {}", w.path.display(), w.err));
                }
                Walked::Failed(w) => {
                    return Err(Error::Io {
                        op: "read",
                        path: w.path,
                        source: w.err,
                    });
                }
                Walked::Replaced(r) => {
                    self.summary.warnings += 1;
                    self.warn(&replaced_warning(&r.path, r.now, r.dir));
                }
                Walked::LeftOut(LeftOut::Tagged(_)) => self.summary.tagged += 1,
                Walked::LeftOut(_) => self.summary.mounts += 1,
                Walked::Excluded => self.summary.excluded += 1,
            }
        }
        if !files.is_empty() {
            todo.send(files).map_err(|_| Error::Cancelled)?;
        }
        Ok(())
    }

    /// Add one walked entry; a file the index does not know unchanged goes
    /// to `files`, for the readers.
    fn entry(
        &mut self,
        e: Entry,
        stat: FileStat,
        reuse: Option<Vec<u8>>,
        files: &mut Vec<Todo>,
    ) -> Result<()> {
        let meta = self.meta;
        let s = &mut self.summary;
        s.entries += 1;
        if e.kind != Kind::File {
            meta.add(&e, None)?;
            return Ok(());
        }
        s.files += 1;
        s.bytes_scanned += e.size;
        if stat.size == 0 {
            meta.add(&e, Some(&[]))?;
            return Ok(());
        }
        match reuse {
            Some(list) => {
                meta.add(&e, Some(&list))?;
            }
            None => {
                let entry = meta.add(&e, None)?;
                let p = self.shared.progress;
                p.total_files.fetch_add(1, Ordering::Relaxed);
                p.total_bytes.fetch_add(stat.size, Ordering::Relaxed);
                files.push(Todo {
                    entry,
                    path: PathBuf::from(
                        <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(e.path),
                    ),
                    stat,
                    stream: None,
                });
            }
        }
        Ok(())
    }

    /// Apply one pipeline event.
    pub fn event(&mut self, ev: Event) -> Result<()> {
        let (shared, meta) = (self.shared, self.meta);
        let warn = |msg: &str| (shared.backup.warn)(msg);
        let s = &mut self.summary;
        match ev {
            Event::BlobStored {
                size,
                chunks,
                bytes,
            } => {
                s.blobs += 1;
                s.blob_bytes += size;
                s.new_chunks += chunks;
                s.new_bytes += bytes;
            }
            Event::FileDone {
                todo: t,
                got,
                chunks,
                change,
            } => {
                s.files_read += 1;
                s.bytes_read += got.data;
                meta.set_chunks(t.entry, got.size, &chunks)?;
                match change {
                    Some(Change::Grew) => {
                        s.warnings += 1;
                        warn(&format!(
                            "{} grew while it was read; stored up to {} bytes (its size \
                             when opened), the next run reads the rest",
                            t.path.display(),
                            got.size
                        ));
                    }
                    Some(Change::Modified) => {
                        s.warnings += 1;
                        warn(&format!(
                            "{} changed while it was read; stored as read",
                            t.path.display()
                        ));
                    }
                    None => {
                        meta.note_file(t.path.as_os_str().as_bytes(), &t.stat, &chunks)?;
                    }
                }
            }
            Event::StreamDone {
                entry,
                what,
                read,
                chunks,
                said,
            } => {
                s.files_read += 1;
                s.bytes_read += read;
                s.bytes_scanned += read;
                meta.set_chunks(entry, read, &chunks)?;
                for line in said {
                    s.warnings += 1;
                    warn(&format!("{what} said: {line}"));
                }
                if read == 0 {
                    s.warnings += 1;
                    warn(&format!(
                        "{what} was empty: snapshot {} holds an empty file",
                        s.id
                    ));
                }
            }
            Event::FileSkipped { entry, msg } => {
                s.warnings += 1;
                s.skipped += 1;
                warn(&format!("skipped: {msg}"));
                meta.remove(entry)?;
            }
            Event::FileVanished { entry, path } => {
                s.warnings += 1;
                warn(&format!(
                    "{}: deleted during the backup; not in this snapshot",
                    path.display()
                ));
                meta.remove(entry)?;
            }
            Event::FileReplaced { entry, path, now } => {
                s.warnings += 1;
                warn(&replaced_warning(&path, now, false));
                meta.remove(entry)?;
            }
        }
        Ok(())
    }
}
