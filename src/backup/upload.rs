//! Stage 5, upload (`UPLOADERS` threads): each finished blob is put into
//! the store under its content address; once the store confirms it, the
//! metadata thread is told (`Event::BlobStored`), and only then does the
//! index record the blob's chunks.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender};

use super::{Event, Shared};
use crate::blob::FinishedBlob;
use crate::error::{Error, Result};

/// Uploads in flight at once; each holds one finished blob on disk.
pub const UPLOADERS: usize = 2;

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
            events
                .send(vec![Event::BlobStored {
                    key: blob.key,
                    size: blob.file.size,
                    entries: blob.entries,
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
