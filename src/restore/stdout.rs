//! `restore SNAPSHOT --stdout [PATH]`: one file's content to standard
//! output, in order, every chunk checked, in bounded memory (made for
//! `vaultik restore latest --stdout | zfs receive -F pool/fs`).
//!
//! The file's chunks are cut into segments (neighbouring chunks of one
//! blob, read with one ranged GET, at most `SEGMENT_BYTES`); `THREADS`
//! threads fetch, decrypt and check segments, at most `WINDOW` ahead of
//! the one being written; this thread writes them in order. A chunk that
//! fails its check stops the stream once everything before it is written:
//! the reader has a truncated stream, and the error names the offset.
//! A hole is a segment of its own: skipped by seeking when standard output
//! is a regular file (which is then sparse too: a hole of any length
//! costs nothing), else written as zeros from a small buffer (a pipe gets
//! as many bytes as the file's size says).

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, channel, sync_channel};

use age::x25519;
use rusqlite::{Connection, OptionalExtension};

use super::plan::{Locator, META, mpath, shown};
use crate::blob::{BlobReader, Location};
use crate::chunk::{self, ChunkId};
use crate::error::{DbContext, Error, Result};
use crate::snapshot::Kind;
use crate::store::Store;

/// Threads fetching segments.
const THREADS: usize = 4;
/// Plaintext a segment holds at most (one chunk may take it past this).
const SEGMENT_BYTES: u64 = 4 << 20;
/// Segments in flight (fetched, being fetched, or waiting to be written):
/// memory stays under `WINDOW * (SEGMENT_BYTES + the largest chunk)`.
const WINDOW: usize = 2 * THREADS;
/// What a hole is written from, as often as it takes.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Where the file goes: standard output, and whether a hole can be
/// skipped there by seeking (a regular file not opened for appending).
pub struct Out<'o> {
    file: &'o mut std::fs::File,
    seekable: bool,
}

impl<'o> Out<'o> {
    pub fn new(file: &'o mut std::fs::File) -> Out<'o> {
        let regular = rustix::fs::fstat(&*file)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file());
        let appending = rustix::fs::fcntl_getfl(&*file)
            .map_or(true, |f| f.contains(rustix::fs::OFlags::APPEND));
        Out {
            seekable: regular && !appending,
            file,
        }
    }
}

/// The file to write.
pub struct File {
    pub path: Vec<u8>,
    pub size: u64,
    chunks: Vec<u8>,
}

/// An entry's path, kind, size and chunk list.
type EntryRow = (Vec<u8>, i64, i64, Option<Vec<u8>>);

/// Which file of the snapshot: `path`, or its only regular file.
pub fn find(conn: &Connection, path: Option<&str>, id: &str) -> Result<File> {
    let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<EntryRow> {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    };
    let (path, kind, size, chunks) = match path {
        Some(p) => {
            let mut wanted = p.as_bytes().to_vec();
            while wanted.len() > 1 && wanted.ends_with(b"/") {
                wanted.pop();
            }
            conn.query_row(
                "SELECT path, kind, size, chunks FROM entries WHERE path = ?1",
                [&wanted],
                row,
            )
            .optional()
            .db(mpath())?
            .ok_or_else(|| Error::not_in_snapshot(p, id))?
        }
        None => {
            let mut st = conn
                .prepare("SELECT path, kind, size, chunks FROM entries WHERE kind = 2 LIMIT 2")
                .db(mpath())?;
            let files: Vec<_> = st
                .query_map([], row)
                .db(mpath())?
                .collect::<rusqlite::Result<_>>()
                .db(mpath())?;
            match files.len() {
                1 => files.into_iter().next().expect("one"),
                0 => {
                    return Err(Error::Usage(format!(
                        "snapshot {id} holds no file to write to standard output"
                    )));
                }
                _ => {
                    return Err(Error::Usage(format!(
                        "snapshot {id} holds more than one file: name the one to write \
                         (restore {id} --stdout PATH)"
                    )));
                }
            }
        }
    };
    if Kind::from_i64(kind) != Some(Kind::File) {
        return Err(Error::Usage(format!(
            "{} in snapshot {id} is not a regular file; --stdout writes one file's content",
            shown(&path)
        )));
    }
    let chunks = chunks.unwrap_or_default();
    if size < 0 || chunks.len() % chunk::RECORD != 0 {
        return Err(Error::corrupt(
            META,
            format!("{}: malformed entry", shown(&path)),
        ));
    }
    Ok(File {
        path,
        size: size as u64,
        chunks,
    })
}

/// One chunk of the file, located.
#[derive(Clone, Copy)]
struct Piece {
    id: ChunkId,
    blob: usize,
    loc: Location,
    /// Where it goes in the file.
    at: u64,
}

/// Neighbouring chunks of one blob, read with one request; or a hole.
struct Segment {
    seq: usize,
    pieces: Vec<Piece>,
    /// A hole of this many bytes (then `pieces` is empty).
    hole: u64,
}

/// A segment, fetched.
enum Fetched {
    Data(Vec<u8>),
    Zeros(u64),
}

/// One record of the file's list, located.
#[derive(Clone, Copy)]
enum Part {
    /// A chunk's blob (an index into `blobs`) and place in it.
    Chunk(usize, Location),
    Hole(u64),
}

/// Where the chunks of `file` are: the blobs they need (key, size), and
/// each chunk's blob and place in it, checked (every chunk inside its
/// blob, chunks and holes adding up to the file's size).
pub struct Located {
    pub blobs: Vec<(String, u64)>,
    parts: Vec<Part>,
}

pub fn locate(conn: &Connection, file: &File) -> Result<Located> {
    let mut locator = Locator::new(conn)?;
    let mut parts = Vec::with_capacity(file.chunks.len() / chunk::RECORD);
    let mut total = 0u64;
    for piece in chunk::pieces(&file.chunks) {
        let part = match piece {
            chunk::Piece::Chunk(id) => {
                let (bi, loc) = locator.locate(&id)?;
                if !locator.inside(bi, &loc) {
                    return Err(Error::corrupt(
                        META,
                        format!("chunk {} lies outside its blob", id.hex()),
                    ));
                }
                total = total.saturating_add(loc.size);
                Part::Chunk(bi, loc)
            }
            chunk::Piece::Hole(len) => {
                total = total.saturating_add(len);
                Part::Hole(len)
            }
        };
        parts.push(part);
    }
    if total != file.size {
        return Err(Error::corrupt(
            META,
            format!(
                "{}: size {} does not match its chunks ({total})",
                shown(&file.path),
                file.size
            ),
        ));
    }
    Ok(Located {
        blobs: locator.blobs,
        parts,
    })
}

/// What writing the file did.
pub struct Written {
    pub bytes: u64,
    pub chunks: u64,
}

/// Write `file` to `out`, in order.
pub fn write(
    store: &dyn Store,
    identities: &[x25519::Identity],
    file: &File,
    located: &Located,
    out: Out<'_>,
) -> Result<Written> {
    let (work_tx, work_rx) = sync_channel::<Segment>(WINDOW);
    let work: Mutex<Receiver<Segment>> = Mutex::new(work_rx);
    let (done_tx, done_rx) = channel::<(usize, Result<Fetched>)>();
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            let done_tx = done_tx.clone();
            let work = &work;
            scope.spawn(move || {
                loop {
                    let next = work.lock().expect("a fetching thread panicked").recv();
                    let Ok(seg) = next else { break };
                    let r = fetch(store, identities, file, located, &seg);
                    if done_tx.send((seg.seq, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        let r = Writer {
            out,
            file,
            written: Written {
                bytes: 0,
                chunks: 0,
            },
            ready: BTreeMap::new(),
            next: 0,
        }
        .run(segments(file, located), &work_tx, &done_rx);
        // Closing the queue lets the threads finish.
        drop(work_tx);
        r
    })
}

/// The file's chunks cut into segments, in file order.
fn segments<'a>(file: &'a File, located: &'a Located) -> impl Iterator<Item = Segment> + 'a {
    // (A chunk's offset in the file is only for messages: the sum was
    // checked against the size, saturating.)
    let mut pieces = chunk::pieces(&file.chunks)
        .zip(&located.parts)
        .scan(0u64, |at, (piece, part)| {
            let p = match (piece, *part) {
                (chunk::Piece::Chunk(id), Part::Chunk(blob, loc)) => {
                    let p = Piece {
                        id,
                        blob,
                        loc,
                        at: *at,
                    };
                    *at = at.saturating_add(loc.size);
                    Ok(p)
                }
                // (The parts were located from this same list.)
                (chunk::Piece::Hole(len), _) | (_, Part::Hole(len)) => {
                    *at = at.saturating_add(len);
                    Err(len)
                }
            };
            Some(p)
        })
        .peekable();
    let mut seq = 0;
    std::iter::from_fn(move || {
        let first = match pieces.next()? {
            Ok(p) => p,
            Err(hole) => {
                seq += 1;
                return Some(Segment {
                    seq: seq - 1,
                    pieces: Vec::new(),
                    hole,
                });
            }
        };
        let mut seg = Segment {
            seq,
            pieces: vec![first],
            hole: 0,
        };
        seq += 1;
        let mut bytes = first.loc.size;
        let mut end = first.loc.offset + first.loc.length;
        while let Some(Ok(p)) = pieces.peek() {
            // The same blob, further on, and not too much at once.
            if p.blob != first.blob || p.loc.offset < end || bytes >= SEGMENT_BYTES {
                break;
            }
            bytes += p.loc.size;
            end = p.loc.offset + p.loc.length;
            seg.pieces.push(*p);
            pieces.next();
        }
        Some(seg)
    })
}

/// Fetch, decrypt and check one segment: its plaintext, or the error
/// naming the chunk's offset in the file.
fn fetch(
    store: &dyn Store,
    identities: &[x25519::Identity],
    file: &File,
    located: &Located,
    seg: &Segment,
) -> Result<Fetched> {
    let Some(&first) = seg.pieces.first() else {
        return Ok(Fetched::Zeros(seg.hole));
    };
    let (key, size) = &located.blobs[first.blob];
    // The error names the file and the offset; the cause keeps its words
    // (once: a damaged object's advice is added by the outer error).
    let at_fault = |p: &Piece, e: Error| {
        let cause = match e {
            Error::Corrupt { what, msg } => format!("{what}: {msg}"),
            e => e.to_string(),
        };
        Error::Corrupt {
            what: format!("{} at offset {}", shown(&file.path), p.at),
            msg: format!(
                "{cause}; the output stops there: whoever reads it got a truncated stream"
            ),
        }
    };
    let mut reader =
        BlobReader::open(store, key, *size, identities).map_err(|e| at_fault(&first, e))?;
    let last = seg.pieces[seg.pieces.len() - 1];
    reader.plan_range(last.loc.offset + last.loc.length);
    let total: u64 = seg.pieces.iter().map(|p| p.loc.size).sum();
    let mut data = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for p in &seg.pieces {
        let chunk = reader
            .read_chunk(&p.id, &p.loc)
            .map_err(|e| at_fault(p, e))?;
        data.extend_from_slice(chunk);
    }
    Ok(Fetched::Data(data))
}

/// Writes the segments in order as they arrive.
struct Writer<'w> {
    out: Out<'w>,
    file: &'w File,
    written: Written,
    /// Segments fetched ahead of the one to write next.
    ready: BTreeMap<usize, Result<Fetched>>,
    next: usize,
}

impl Writer<'_> {
    fn run(
        mut self,
        mut segments: impl Iterator<Item = Segment>,
        work: &std::sync::mpsc::SyncSender<Segment>,
        done: &Receiver<(usize, Result<Fetched>)>,
    ) -> Result<Written> {
        let mut sent = 0;
        let mut exhausted = false;
        loop {
            // Keep `WINDOW` segments in flight past the one to write.
            while !exhausted && sent < self.next + WINDOW {
                match segments.next() {
                    Some(seg) => {
                        work.send(seg)
                            .map_err(|_| Error::Panicked("a fetching thread"))?;
                        sent += 1;
                    }
                    None => exhausted = true,
                }
            }
            if self.next == sent && exhausted {
                break;
            }
            let (seq, r) = done
                .recv()
                .map_err(|_| Error::Panicked("a fetching thread"))?;
            self.ready.insert(seq, r);
            while let Some(r) = self.ready.remove(&self.next) {
                match r? {
                    Fetched::Data(data) => self.put(&data)?,
                    Fetched::Zeros(left) => self.hole(left)?,
                }
                self.next += 1;
            }
        }
        if self.out.seekable {
            // A hole at the end: the file is as long as it should be.
            let end = self.out.file.stream_position();
            let len = self.out.file.metadata().map(|m| m.len());
            match (end, len) {
                (Ok(end), Ok(len)) if len < end => self.out.file.set_len(end),
                (Err(e), _) | (_, Err(e)) => Err(e),
                _ => Ok(()),
            }
            .map_err(|e| self.cannot_write(e))?;
        }
        self.out.file.flush().map_err(|e| self.cannot_write(e))?;
        self.written.chunks = chunk::chunk_ids(&self.file.chunks).count() as u64;
        Ok(self.written)
    }

    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.out
            .file
            .write_all(data)
            .map_err(|e| self.cannot_write(e))?;
        self.written.bytes += data.len() as u64;
        Ok(())
    }

    /// `len` bytes of zeros: skipped over in a regular file, written
    /// otherwise.
    fn hole(&mut self, mut left: u64) -> Result<()> {
        while left > 0 {
            if self.out.seekable {
                let n = left.min(i64::MAX as u64);
                self.out
                    .file
                    .seek(SeekFrom::Current(n as i64))
                    .map_err(|e| self.cannot_write(e))?;
                self.written.bytes += n;
                left -= n;
            } else {
                let n = left.min(ZEROS.len() as u64) as usize;
                self.put(&ZEROS[..n])?;
                left -= n as u64;
            }
        }
        Ok(())
    }

    /// The reader went away (`zfs receive` failed) or the disk is full: an
    /// error, never a quiet end, since the restore did not complete.
    fn cannot_write(&self, e: std::io::Error) -> Error {
        Error::Stream {
            what: "standard output".into(),
            msg: format!(
                "cannot write {} after {} of its {} bytes: {e}; the restore did not complete",
                shown(&self.file.path),
                self.written.bytes,
                self.file.size
            ),
        }
    }
}
