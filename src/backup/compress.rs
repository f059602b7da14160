//! Stage 3, for one big file or a stream: its new chunks compressed on
//! every worker while one thread cuts it, and handed to the packer in the
//! order they were cut (a blob holds a file's chunks in file order, which
//! a restore reads with one ranged GET).
//!
//! The cutting thread queues each new chunk (a copy: its buffer is the
//! cutter's) and spawns a job that compresses the oldest queued chunk,
//! whichever that is by then. When it must wait (too many chunks
//! outstanding, or the end of the file) it compresses the oldest queued
//! chunk itself, and only sleeps when none is queued (the one it waits
//! for is being compressed elsewhere). It never runs another job: a job
//! stolen here could be another file's read, re-entering the cutter's
//! buffer. Chunks outstanding are bounded per file and, across every file
//! cut so at once, by one process-wide count (`IN_FLIGHT`): a file may
//! always have one, so each cutter can make progress on its own.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::NewChunk;
use super::dedup::Claim;
use super::pack::Budget;
use crate::chunk::ChunkId;
use crate::error::{Error, IoContext, Result};

/// Chunk copies outstanding across every file being cut in parallel.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// A new chunk waiting to be compressed: its place, id, plaintext, claim.
type Queued<'d> = (u64, ChunkId, Vec<u8>, Claim<'d>);
/// A compressed chunk waiting for its turn, or why it could not be.
type Done<'d> = Result<(NewChunk, Claim<'d>)>;

#[derive(Default)]
struct State<'d> {
    queued: VecDeque<Queued<'d>>,
    done: BTreeMap<u64, Done<'d>>,
    /// Copies to use again (a fresh megabyte per chunk is a megabyte of
    /// page faults).
    spare: Vec<Vec<u8>>,
}

/// One file's chunks on their way to the packer.
pub struct Ordered<'d> {
    state: Mutex<State<'d>>,
    ready: Condvar,
    level: i32,
    /// Outstanding at most, for this file and for all (`IN_FLIGHT`).
    per_file: u64,
    all: usize,
    /// The next chunk's place, and the next to hand over (the cutter's
    /// alone: atomics only so that jobs may share `&self`).
    next_seq: AtomicU64,
    next_send: AtomicU64,
}

impl<'d> Ordered<'d> {
    pub fn new(level: i32) -> Ordered<'d> {
        let threads = rayon::current_num_threads().max(1);
        Ordered {
            state: Mutex::default(),
            ready: Condvar::new(),
            level,
            per_file: (2 * threads) as u64,
            all: 2 * threads,
            next_seq: AtomicU64::new(0),
            next_send: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<'d>> {
        self.state
            .lock()
            .expect("compress queue lock poisoned by a panic")
    }

    /// Queue the new chunk `data` (claimed): first hand over what is
    /// ready, and wait for room; then spawn a job on `scope` to compress
    /// the oldest queued chunk.
    pub fn push<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        id: ChunkId,
        data: &[u8],
        claim: Claim<'d>,
        out: &mut Sink<'_>,
    ) -> Result<()>
    where
        'd: 's,
    {
        loop {
            let mine = self.seq() - self.sent();
            let full = mine >= self.per_file
                || (mine > 0 && IN_FLIGHT.load(Ordering::Acquire) >= self.all);
            if !full {
                break;
            }
            // Wait for the oldest of this file's: one slot freed.
            self.send_until(self.sent() + 1, out)?;
        }
        self.send_until(self.sent(), out)?;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        {
            let mut s = self.lock();
            let mut copy = s.spare.pop().unwrap_or_default();
            copy.clear();
            copy.extend_from_slice(data);
            s.queued.push_back((seq, id, copy, claim));
        }
        scope.spawn(move |_| {
            let job = self.lock().queued.pop_front();
            if let Some(job) = job {
                self.compress(job);
            }
        });
        Ok(())
    }

    fn seq(&self) -> u64 {
        self.next_seq.load(Ordering::Relaxed)
    }

    fn sent(&self) -> u64 {
        self.next_send.load(Ordering::Relaxed)
    }

    /// Compress one queued chunk and put it in its place (a panic is an
    /// error there, so that the cutter does not wait for it for ever).
    fn compress(&self, (seq, id, data, claim): Queued<'d>) {
        let size = data.len() as u64;
        let frame = catch_unwind(AssertUnwindSafe(|| {
            super::chunk::compress(&data, self.level)
        }))
        .unwrap_or_else(|_| Err(std::io::Error::other("zstd panicked")));
        // An error drops the claim: released.
        let r = frame
            .at("compress", Path::new("a chunk"))
            .map(|frame| (NewChunk { id, frame, size }, claim));
        let mut s = self.lock();
        s.spare.push(data);
        s.done.insert(seq, r);
        drop(s);
        self.ready.notify_all();
    }

    /// Hand over, in order, what is ready and every chunk before `until`:
    /// compressing queued chunks here while waiting, sleeping only when
    /// the one waited for is being compressed elsewhere.
    fn send_until(&self, until: u64, out: &mut Sink<'_>) -> Result<()> {
        loop {
            let next = self.sent();
            let mut s = self.lock();
            if let Some(r) = s.done.remove(&next) {
                drop(s);
                IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
                self.next_send.fetch_add(1, Ordering::Relaxed);
                let (chunk, claim) = r?;
                out.send(chunk)?;
                claim.handed_over();
                continue;
            }
            if next >= until {
                return Ok(());
            }
            if let Some(job) = s.queued.pop_front() {
                drop(s);
                self.compress(job);
                continue;
            }
            (out.cancel)()?;
            let _ = self
                .ready
                .wait_timeout(s, Duration::from_millis(5))
                .expect("compress queue lock poisoned by a panic");
        }
    }

    /// Every chunk handed over (the end of the file).
    pub fn finish(&self, out: &mut Sink<'_>) -> Result<()> {
        self.send_until(self.seq(), out)
    }
}

impl Drop for Ordered<'_> {
    /// Chunks never handed over (an error) no longer count.
    fn drop(&mut self) {
        let left = self.seq() - self.sent();
        IN_FLIGHT.fetch_sub(left as usize, Ordering::AcqRel);
    }
}

/// Where the chunks go: the packer, within the budget.
pub struct Sink<'a> {
    pub to_pack: &'a Sender<NewChunk>,
    pub budget: &'a Budget,
    pub cancel: &'a dyn Fn() -> Result<()>,
}

impl Sink<'_> {
    fn send(&mut self, chunk: NewChunk) -> Result<()> {
        self.budget.take(chunk.frame.len() as u64)?;
        self.to_pack.send(chunk).map_err(|_| Error::Cancelled)
    }
}
