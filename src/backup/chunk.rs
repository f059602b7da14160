//! Stage 3, chunk and compress (rayon workers): each changed file is
//! opened as the walk saw it (`crate::walk::open_file`: never a FIFO, a
//! symlink's target or another file put in its place), its extended
//! attributes and inode flags read from the descriptor (for a file the
//! index knows unchanged but not those, that is all), read by its data
//! (holes are recorded, not read) to at most its size when opened, cut
//! with FastCDC and hashed; each chunk that is new (`Dedup::claim`) is
//! compressed into its own zstd frame and handed to the packer within the
//! byte budget. Chunk boundaries must be found in order, but compressing
//! need not wait for them: a big file's or a stream's new chunks are
//! compressed by every worker as it is cut (`compress.rs`: one file uses
//! every core).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};

use rayon::prelude::*;

use super::compress;
use super::dedup::Claim;
use super::pack::Budget;
use super::walk::stat_of;
use super::{Change, Event, Got, NewChunk, Shared, Todo};
use crate::chunk::{self, ChunkId, Cut};
use crate::error::{Error, IoContext, Result};
use crate::stream::Stream;
use crate::walk;

thread_local! {
    static CHUNK_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

impl Shared<'_, '_> {
    /// Read every file that arrives on `todo`, in parallel; new chunks go
    /// to `to_pack`, what each file gave (its chunk list, or why it has
    /// none) to `events`, a batch of files at a time.
    pub fn chunk_all(
        &self,
        todo: Receiver<Vec<Todo>>,
        to_pack: Sender<NewChunk>,
        events: Sender<Vec<Event>>,
        budget: &Budget,
    ) -> Result<()> {
        // A batch is spread over the threads too: one batch may hold all
        // the big files of a tree.
        todo.into_iter()
            .par_bridge()
            .try_for_each_with((to_pack, events), |(ctx, etx), files| {
                let done = files
                    .into_par_iter()
                    // One file per task: a few big files must not end up
                    // queued behind one thread.
                    .with_max_len(1)
                    .map_with(ctx.clone(), |ctx, t| self.read_file(t, ctx, budget))
                    .collect::<Result<Vec<Event>>>()?;
                etx.send(done).map_err(|_| Error::Cancelled)
            })
    }

    /// Chunk one file; send its new chunks to the packer, and return what
    /// to record.
    fn read_file(
        &self,
        mut t: Todo,
        to_pack: &mut Sender<NewChunk>,
        budget: &Budget,
    ) -> Result<Event> {
        self.cancel.check()?;
        // (A read of attributes alone is not a file read.)
        let _counted = t.reuse.is_none().then(|| self.progress.file_guard());
        if let Some(stream) = t.stream.take() {
            return self.read_stream(t, *stream, to_pack, budget);
        }
        let skip = |e: Error| -> Result<Event> {
            if self.backup.skip_errors {
                Ok(Event::FileSkipped {
                    entry: t.entry,
                    msg: e.to_string(),
                })
            } else {
                Err(Error::Unreadable(Box::new(e)))
            }
        };
        // Only the file the walk stat'ed is read (never a FIFO, a symlink's
        // target or another file put in its place).
        let file = match walk::open_file(&t.path, (t.stat.dev, t.stat.ino)) {
            Ok(walk::Opened::File(f)) => f,
            Ok(walk::Opened::Gone) => {
                return Ok(Event::FileVanished {
                    entry: t.entry,
                    path: t.path,
                });
            }
            Ok(walk::Opened::Replaced(now)) => {
                return Ok(Event::FileReplaced {
                    entry: t.entry,
                    path: t.path,
                    now,
                });
            }
            Err(e) => {
                return skip(Error::Io {
                    op: "open",
                    path: t.path.clone(),
                    source: e,
                });
            }
        };
        // Its extended attributes and flags, from the descriptor. With
        // `exclude_nodump`, one with the nodump flag is left out unread.
        let attrs = crate::xattrs::of_fd(std::os::fd::AsFd::as_fd(&file));
        if self.nodump && attrs.attrs.flags & crate::xattrs::NODUMP != 0 {
            return Ok(Event::FileNodump { entry: t.entry });
        }
        if let Some(chunks) = t.reuse.take() {
            return Ok(Event::AttrsDone {
                todo: t,
                chunks,
                attrs,
            });
        }
        // Read to at most its size now (a file that keeps growing would
        // otherwise be read for ever, holding the run lock).
        let (limit, allocated) = match rustix::fs::fstat(&file) {
            Ok(st) => (
                stat_of(&st).size,
                u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512),
            ),
            Err(e) => {
                return skip(Error::Io {
                    op: "stat",
                    path: t.path.clone(),
                    source: e.into(),
                });
            }
        };
        let source = Source::File {
            file: &file,
            limit,
            allocated,
        };
        let result = self.chunk_into(source, &t.path, to_pack, budget);
        let (got, list) = match result {
            Ok(r) => r,
            Err(e @ Error::Io { .. }) => return skip(e),
            Err(e) => return Err(e),
        };
        // A file that changed while we read it is stored as read, but not
        // remembered as unchanged, so the next run reads it again. (The
        // open file is asked, not the path: no lookup. A file renamed over
        // once it was open does not matter: what was read is the walked
        // file, and the next run notices the new inode.)
        let change = match rustix::fs::fstat(&file) {
            Ok(st) => {
                let now = stat_of(&st);
                if now.size > got.size {
                    Some(Change::Grew)
                } else if now.size != t.stat.size
                    || now.mtime_ns != t.stat.mtime_ns
                    || got.size != t.stat.size
                {
                    Some(Change::Modified)
                } else {
                    None
                }
            }
            Err(_) => Some(Change::Modified),
        };
        Ok(Event::FileDone {
            todo: t,
            got,
            chunks: list,
            change,
            attrs,
        })
    }
}

/// What `chunk_into` reads.
enum Source<'a> {
    /// A regular file, to at most `limit` (its size when opened), by its
    /// data: holes are recorded, not read (`allocated`: its blocks then).
    File {
        file: &'a std::fs::File,
        limit: u64,
        allocated: u64,
    },
    /// A stream, to its end.
    Stream(&'a mut Stream),
}

impl Shared<'_, '_> {
    /// Cut what `source` gives (the file at `path`) into chunks and holes;
    /// send the new chunks to the packer. Returns what was read and the
    /// chunk list.
    fn chunk_into(
        &self,
        source: Source<'_>,
        path: &Path,
        to_pack: &mut Sender<NewChunk>,
        budget: &Budget,
    ) -> Result<(Got, Vec<u8>)> {
        let params = self.backup.params;
        // (A stream's size is unknown: its list grows as it is read. A
        // sparse file's list is far shorter than its size says.)
        let expected = match &source {
            Source::Stream(_) => 1,
            Source::File { limit, .. } => {
                usize::try_from(limit / params.avg as u64 + 1).unwrap_or(1)
            }
        };
        let mut list: Vec<u8> = Vec::with_capacity(chunk::RECORD * expected.min(1 << 16));
        let mut data_read = 0u64;
        // A big file or a stream is cut on this thread, in order; its new
        // chunks are compressed on the others (`rayon` takes the jobs when
        // idle), at most `in_flight_max` at once: the cut runs on while
        // they compress. Past that, or for small files (the other threads
        // have files of their own), a chunk is compressed here.
        let parallel = match &source {
            Source::Stream(_) => true,
            Source::File { limit, .. } => *limit >= PARALLEL_MIN * params.avg as u64,
        };
        let ordered = compress::Ordered::new(self.backup.level);
        let cancel = || self.cancel.check();
        let size = rayon::in_place_scope(|scope| {
            let mut sink = compress::Sink {
                to_pack: &*to_pack,
                budget,
                cancel: &cancel,
            };
            let mut on_cut = |cut: Cut<'_>| -> Result<()> {
                self.cancel.check()?;
                let data = match cut {
                    Cut::Data(data) => data,
                    Cut::Hole(len) => {
                        self.progress.bytes.fetch_add(len, Ordering::Relaxed);
                        list.extend_from_slice(&chunk::hole_record(len));
                        return Ok(());
                    }
                };
                self.progress
                    .bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                data_read += data.len() as u64;
                let id = ChunkId::of(data);
                list.extend_from_slice(&id.0);
                let Some(claim) = self.dedup.claim(id)? else {
                    return Ok(());
                };
                if parallel {
                    ordered.push(scope, id, data, claim, &mut sink)
                } else {
                    self.hand_over(id, data, path, claim, sink.to_pack, budget)
                }
            };
            let size = CHUNK_BUF.with_borrow_mut(|buf| match source {
                Source::File {
                    file,
                    limit,
                    allocated,
                } => chunk::split_file(file, path, limit, allocated, params, buf, &mut on_cut),
                Source::Stream(stream) => chunk::split(stream, path, u64::MAX, params, buf, |d| {
                    on_cut(Cut::Data(d))
                }),
            })?;
            ordered.finish(&mut sink)?;
            Ok(size)
        });
        let size = size?;
        Ok((
            Got {
                size,
                data: data_read,
            },
            list,
        ))
    }

    /// Read a stream to its end as one file (cut as a file too big to hold
    /// whole: memory stays bounded whatever its length), then ask it how
    /// it ended. Any failure fails the run: a stream cannot be skipped,
    /// nor read again.
    fn read_stream(
        &self,
        t: Todo,
        mut stream: Stream,
        to_pack: &mut Sender<NewChunk>,
        budget: &Budget,
    ) -> Result<Event> {
        let result = self.chunk_into(Source::Stream(&mut stream), &t.path, to_pack, budget);
        let what = stream.what.clone();
        let (got, chunks) = result.map_err(|e| match e {
            Error::Io { source, .. } => Error::Stream {
                what: what.clone(),
                msg: format!("cannot read it: {source}; no snapshot was made"),
            },
            e => e,
        })?;
        let said = stream.finish()?;
        Ok(Event::StreamDone {
            entry: t.entry,
            what,
            read: got.size,
            chunks,
            said,
        })
    }
}

impl Shared<'_, '_> {
    /// Compress a new chunk and hand it to the packer, within the budget.
    fn hand_over(
        &self,
        id: ChunkId,
        data: &[u8],
        path: &Path,
        claim: Claim<'_>,
        to_pack: &Sender<NewChunk>,
        budget: &Budget,
    ) -> Result<()> {
        // An error from here on drops the claim: released.
        let frame = compress(data, self.backup.level).at("compress", path)?;
        budget.take(frame.len() as u64)?;
        to_pack
            .send(NewChunk {
                id,
                frame,
                size: data.len() as u64,
            })
            .map_err(|_| Error::Cancelled)?;
        claim.handed_over();
        Ok(())
    }
}

/// A file of at least this many average chunks is cut on one thread and
/// compressed on all (below, its chunks are compressed as it is cut).
const PARALLEL_MIN: u64 = 16;

/// One zstd frame per chunk, with a per-thread reusable context.
pub(super) fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|c| {
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, comp) = c.as_mut().expect("compressor just set");
        // The output is allocated at the worst-case bound: give back the rest.
        let mut frame = comp.compress(data)?;
        frame.shrink_to_fit();
        Ok(frame)
    })
}
