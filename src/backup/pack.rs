//! Stage 4, pack (one thread): new chunks, each already its own zstd
//! frame, are appended to the current blob (one age stream, encrypted to
//! an encrypted temporary file as it is written); a blob that reaches
//! `blob_size_limit`, or holds `BLOB_CHUNKS` chunks, is finished and handed
//! to the uploaders. Chunks wait
//! for the packer within a byte budget, not a count: many small chunks
//! queue without stalling the workers, and a few big ones cannot pile up.

use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Condvar, Mutex};

use super::{NewChunk, Shared};
use crate::blob::{BlobWriter, FinishedBlob};
use crate::error::{Error, Result};

/// Compressed chunks queued for the packer, at most.
pub const CHUNK_QUEUE_BYTES: u64 = 16 << 20;

/// Chunks a blob holds at most. A blob's chunk ids stay in memory until it
/// is stored and recorded (its entries, and the dedup state's claims):
/// without a cap, a 64 MiB blob of small, well-compressed files held a
/// million of them (1M files of text: 100 MB of peak memory). 32768 keep
/// that to about 3 MB a blob in flight, at one more PUT per 32768 files.
pub const BLOB_CHUNKS: usize = 32768;

/// A count of bytes in flight, shared by the workers (who take) and the
/// packer (who gives back); closed when the packer stops, whatever the
/// reason, so that no worker waits for room that will never come.
pub struct Budget {
    /// Bytes taken, closed, workers waiting.
    state: Mutex<(u64, bool, usize)>,
    changed: Condvar,
    limit: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget {
            state: Mutex::new((0, false, 0)),
            changed: Condvar::new(),
            limit,
        }
    }

    /// Wait until `n` more bytes fit (one item always fits when nothing is
    /// queued); `Cancelled` once the packer has stopped.
    pub fn take(&self, n: u64) -> Result<()> {
        let mut s = self.state.lock().expect("budget lock poisoned by a panic");
        while !s.1 && s.0 > 0 && s.0 + n > self.limit {
            s.2 += 1;
            s = self
                .changed
                .wait(s)
                .expect("budget lock poisoned by a panic");
            s.2 -= 1;
        }
        if s.1 {
            return Err(Error::Cancelled);
        }
        s.0 += n;
        Ok(())
    }

    fn give_back(&self, n: u64) {
        let mut s = self.state.lock().expect("budget lock poisoned by a panic");
        s.0 = s.0.saturating_sub(n);
        // A wake-up only for someone waiting (a million small chunks made
        // a million futex calls for nobody).
        if s.2 > 0 {
            self.changed.notify_all();
        }
    }

    pub fn close(&self) {
        let mut s = self.state.lock().expect("budget lock poisoned by a panic");
        s.1 = true;
        self.changed.notify_all();
    }
}

impl Shared<'_, '_> {
    /// Pack what arrives on `chunks` into blobs, sent to `blobs` as each
    /// is finished (the last one, however small, at the end).
    pub fn pack(
        &self,
        chunks: Receiver<NewChunk>,
        budget: &Budget,
        blobs: SyncSender<FinishedBlob>,
    ) -> Result<()> {
        let b = self.backup;
        let mut current: Option<BlobWriter> = None;
        for c in chunks {
            let w = match &mut current {
                Some(w) => w,
                None => current.insert(BlobWriter::create(&b.tmp_dir, &b.recipients)?),
            };
            w.add(c.id, &c.frame, c.size)?;
            budget.give_back(c.frame.len() as u64);
            if w.len() >= b.blob_limit || w.entries.len() >= BLOB_CHUNKS {
                let done = current.take().expect("current blob").finish()?;
                blobs.send(done).map_err(|_| Error::Cancelled)?;
            }
        }
        if let Some(w) = current {
            if !w.is_empty() {
                blobs.send(w.finish()?).map_err(|_| Error::Cancelled)?;
            }
        }
        Ok(())
    }
}
