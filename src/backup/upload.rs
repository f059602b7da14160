//! Stage 5, upload (`UPLOADERS` threads): each finished blob is put into
//! the store under its content address; once the store confirms it, and
//! only then, the index records the blob's chunks (on this thread, in key
//! order: the metadata thread has enough to do), the dedup state settles
//! them, and the metadata thread is told (`Event::BlobStored`, for the
//! summary).

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender};

use super::{Event, Shared};
use crate::blob::FinishedBlob;
use crate::error::{Error, Result};

/// Uploads in flight at once; each holds one finished blob on disk.
pub const UPLOADERS: usize = 2;

/// Chunks recorded in the index per transaction.
const INDEX_PART: usize = 2048;

/// The uploaders' shared queue: the first uploader to fail takes it away,
/// so that a packer waiting to hand over a blob is released.
pub type BlobQueue = Mutex<Option<Receiver<FinishedBlob>>>;

impl Shared<'_, '_> {
    /// Upload the blobs from `queue` until it ends.
    pub fn upload(&self, queue: &BlobQueue, events: Sender<Vec<Event>>) -> Result<()> {
        loop {
            let next = match &*queue.lock().expect("blob queue lock poisoned by a panic") {
                Some(rx) => rx.recv(),
                // Another uploader failed: the run is over.
                None => return Err(Error::Cancelled),
            };
            let Ok(blob) = next else { return Ok(()) };
            self.cancel.check()?;
            self.backup
                .store
                .put_file(&blob.key, blob.file.temp.path(), self.class)?;
            let mut entries = blob.entries;
            // In key order, each B-tree page is visited once; in parts, each
            // a transaction of its own, so that a reader looking a chunk up
            // meanwhile waits for a part, not for the blob (parts of sorted
            // ids touch pages apart: it costs no more).
            entries.sort_unstable_by_key(|(id, _)| *id);
            for part in entries.chunks(INDEX_PART) {
                self.backup
                    .index()
                    .add_blob(&blob.key, blob.file.size, part)?;
            }
            if let Some(plan) = &self.backup.lock {
                // The version this run wrote: the one whose lock later runs
                // extend, whatever is put over it meanwhile.
                let version = self.backup.store.take_put_version(&blob.key);
                self.backup.index().set_locked_until(
                    std::slice::from_ref(&blob.key),
                    plan.until,
                    version.as_deref(),
                )?;
            }
            self.dedup.settle(entries.iter().map(|(id, _)| id));
            events
                .send(vec![Event::BlobStored {
                    size: blob.file.size,
                    chunks: entries.len() as u64,
                    bytes: entries.iter().map(|(_, l)| l.size).sum(),
                }])
                .map_err(|_| Error::Cancelled)?;
        }
    }

    /// Stop the run after an upload failed: nobody takes blobs any more.
    pub fn hang_up(&self, queue: &BlobQueue) {
        self.cancel.set();
        queue
            .lock()
            .expect("blob queue lock poisoned by a panic")
            .take();
    }
}
