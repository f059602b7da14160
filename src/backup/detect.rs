//! Stage 2, change detection (its own thread, between the walk and the
//! metadata): the chunk lists of files whose size, mtime, ctime, inode and
//! device the index knows unchanged are looked up, one read transaction
//! per batch, so that they are not read again. (The walk alone keeps a
//! core busy, the metadata writes most of the other.)

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use super::walk::Walked;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::snapshot::Kind;
use crate::xattrs::NODUMP;

/// Fill in the reusable chunk lists of every batch from `walked`, and hand
/// it on to `out`; with `nodump` (`exclude_nodump`), a file the index
/// knows unchanged with the nodump flag is left out. Files the index
/// knows by path with another stat are counted in `changed`.
pub fn detect(
    index: &Mutex<Index>,
    nodump: bool,
    changed: &AtomicU64,
    walked: Receiver<Vec<Walked>>,
    out: SyncSender<Vec<Walked>>,
) -> Result<()> {
    for mut batch in walked {
        look_up(index, &mut batch, changed)?;
        if nodump {
            for w in batch.iter_mut() {
                let flagged = matches!(w, Walked::Entry { known: Some(k), .. }
                    if k.attrs.as_ref().is_some_and(|a| a.flags & NODUMP != 0));
                if flagged {
                    *w = Walked::Nodump;
                }
            }
        }
        out.send(batch).map_err(|_| Error::Cancelled)?;
    }
    Ok(())
}

/// Find the chunk lists (and attributes) of the files in `batch` that the
/// index knows unchanged, in one read transaction. (Empty files too: their
/// list is empty, but their attributes are worth not asking for again.)
fn look_up(index: &Mutex<Index>, batch: &mut [Walked], changed: &AtomicU64) -> Result<()> {
    let index = index.lock().expect("index lock poisoned by a panic");
    index.read_batch(|index| {
        for w in batch.iter_mut() {
            if let Walked::Entry {
                entry, stat, known, ..
            } = w
            {
                // The index only keeps file rows whose chunks it holds
                // (forgetting a blob forgets the files), so this is safe.
                if entry.kind == Kind::File {
                    *known = index.unchanged_file(&entry.path, stat)?;
                    if known.is_none() && index.knows_file(&entry.path)? {
                        changed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(())
    })
}
