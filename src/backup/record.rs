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
use crate::index::{FileStat, Known};
use crate::snapshot::{Entry, Kind, MetaWriter};
use crate::walk::LeftOut;
use crate::xattrs::{Attrs, Losses, Read};

pub struct Recorder<'m, 's, 'r, 'a> {
    shared: &'s Shared<'r, 'a>,
    meta: &'m MetaWriter,
    pub summary: Summary,
    /// Attributes that could not be read: one warning per kind, at the end.
    losses: Losses,
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
            losses: Losses::default(),
        }
    }

    /// A walk not run as root: the kernel lists `trusted.*` extended
    /// attributes to root only, so they are missing without a trace: said
    /// once.
    pub fn not_root(&mut self) {
        self.summary.warnings += 1;
        self.warn(
            "not running as root: the kernel shows trusted.* extended attributes to root \
             only, so this snapshot has none",
        );
    }

    /// The run's summary, once the attributes that could not be read are
    /// warned about (one line per kind) and counted.
    pub fn finish(self) -> Summary {
        let mut s = self.summary;
        for line in self.losses.lines() {
            (self.shared.backup.warn)(&line);
        }
        s.warnings += self.losses.count();
        s
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
                Walked::Entry {
                    entry,
                    stat,
                    problem,
                    known,
                } => {
                    if let Some(p) = problem {
                        self.losses.note(p, &entry.path);
                    }
                    self.entry(entry, stat, known, &mut files)?
                }
                Walked::Failed(w) if self.shared.backup.skip_errors => {
                    self.summary.warnings += 1;
                    self.summary.skipped += 1;
                    self.warn(&format!("skipped {}: {}", w.path.display(), w.err));
                }
                Walked::Failed(w) => {
                    return Err(Error::Unreadable(Box::new(Error::Io {
                        op: "read",
                        path: w.path,
                        source: w.err,
                    })));
                }
                Walked::Replaced(r) => {
                    self.summary.warnings += 1;
                    self.warn(&replaced_warning(&r.path, r.now, r.dir));
                }
                Walked::LeftOut(LeftOut::Tagged(_)) => self.summary.tagged += 1,
                Walked::LeftOut(_) => self.summary.mounts += 1,
                Walked::Excluded => self.summary.excluded += 1,
                Walked::Nodump => self.summary.nodump += 1,
            }
        }
        if !files.is_empty() {
            todo.send(files).map_err(|_| Error::Cancelled)?;
        }
        Ok(())
    }

    /// Add one walked entry; a file the index does not know unchanged goes
    /// to `files`, for the readers, and so does one whose attributes it
    /// does not know (to read those only).
    fn entry(
        &mut self,
        mut e: Entry,
        stat: FileStat,
        known: Option<Known>,
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
        let reuse = match known {
            Some(Known {
                chunks,
                attrs: Some(attrs),
            }) => {
                e.attrs = attrs;
                meta.add(&e, Some(&chunks))?;
                return Ok(());
            }
            Some(Known {
                chunks,
                attrs: None,
            }) => {
                meta.add(&e, Some(&chunks))?;
                Some(chunks)
            }
            // Nothing to read but its attributes.
            None if stat.size == 0 => {
                meta.add(&e, Some(&[]))?;
                Some(Vec::new())
            }
            None => {
                meta.add(&e, None)?;
                let p = self.shared.progress;
                p.total_files.fetch_add(1, Ordering::Relaxed);
                p.total_bytes.fetch_add(stat.size, Ordering::Relaxed);
                None
            }
        };
        files.push(Todo {
            entry: meta.conn.last_insert_rowid(),
            path: PathBuf::from(
                <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(e.path),
            ),
            stat,
            stream: None,
            reuse,
        });
        Ok(())
    }

    /// The attributes read of file entry `entry` (at `path`): recorded,
    /// what could not be read counted; Some when read whole (the index may
    /// then keep them).
    fn file_attrs(&self, entry: i64, path: &Path, read: Read) -> Result<Option<Attrs>> {
        if !read.attrs.is_empty() {
            self.meta.set_attrs(entry, &read.attrs)?;
        }
        match read.problem {
            Some(p) => {
                self.losses.note(p, path.as_os_str().as_bytes());
                Ok(None)
            }
            None => Ok(Some(read.attrs)),
        }
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
                attrs,
            } => {
                s.files_read += 1;
                s.bytes_read += got.data;
                meta.set_chunks(t.entry, got.size, &chunks)?;
                let attrs = self.file_attrs(t.entry, &t.path, attrs)?;
                let s = &mut self.summary;
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
                        let path = t.path.as_os_str().as_bytes();
                        meta.note_file(path, &t.stat, &chunks, attrs.as_ref())?;
                    }
                }
            }
            Event::AttrsDone {
                todo: t,
                chunks,
                attrs,
            } => {
                let attrs = self.file_attrs(t.entry, &t.path, attrs)?;
                let path = t.path.as_os_str().as_bytes();
                meta.note_file(path, &t.stat, &chunks, attrs.as_ref())?;
            }
            Event::FileNodump { entry } => {
                s.nodump += 1;
                meta.remove(entry)?;
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
