//! Which chunks the store has or is getting: the one owner of the backup's
//! deduplication state. A chunk is new when neither the index (confirmed
//! stored) nor this run (on its way) has it. The invariant "a claimed chunk
//! id is either handed to the packer or released" lives here: a `Claim`
//! releases its id when dropped unless it was handed over, so an error
//! between the claim and the hand-over (compressing, waiting for room)
//! never leaves an id claimed that no blob will bring. Handed-over ids are
//! settled once their blob is recorded in the index. The state lives for
//! one run: a run that fails takes its claims with it.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use crate::chunk::ChunkId;
use crate::error::Result;
use crate::index::Index;

pub struct Dedup<'i> {
    index: &'i Mutex<Index>,
    /// Handed over to the packer, not yet recorded in the index.
    pending: Mutex<HashSet<ChunkId>>,
}

/// A chunk this caller is to send to the packer.
#[must_use = "a claim is handed over or released"]
pub struct Claim<'d> {
    pending: &'d Mutex<HashSet<ChunkId>>,
    id: ChunkId,
    handed: bool,
}

impl<'i> Dedup<'i> {
    pub fn new(index: &'i Mutex<Index>) -> Dedup<'i> {
        Dedup {
            index,
            pending: Mutex::new(HashSet::new()),
        }
    }

    fn pending(&self) -> MutexGuard<'_, HashSet<ChunkId>> {
        self.pending
            .lock()
            .expect("pending lock poisoned by a panic")
    }

    /// A claim on `id` if the chunk is new: neither stored nor on its way.
    pub fn claim(&self, id: ChunkId) -> Result<Option<Claim<'_>>> {
        let mut p = self.pending();
        let stored = {
            let index = self.index.lock().expect("index lock poisoned by a panic");
            p.contains(&id) || index.has_chunk(&id)?
        };
        if stored {
            return Ok(None);
        }
        p.insert(id);
        Ok(Some(Claim {
            pending: &self.pending,
            id,
            handed: false,
        }))
    }

    /// The blob holding `ids` is stored and recorded in the index.
    pub fn settle<'a>(&self, ids: impl IntoIterator<Item = &'a ChunkId>) {
        let mut p = self.pending();
        for id in ids {
            p.remove(id);
        }
    }
}

impl Claim<'_> {
    /// The chunk is in the packer's queue: it stays claimed until settled.
    pub fn handed_over(mut self) {
        self.handed = true;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.handed {
            self.pending
                .lock()
                .expect("pending lock poisoned by a panic")
                .remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::Location;

    fn index(dir: &tempfile::TempDir) -> Mutex<Index> {
        let path = dir.path().join("state/index.sqlite");
        Mutex::new(Index::open(&path, "s", "s").unwrap().0)
    }

    #[test]
    fn a_claim_is_handed_over_or_released() {
        let dir = tempfile::tempdir().unwrap();
        let index = index(&dir);
        let d = Dedup::new(&index);
        let (a, b, c) = (ChunkId::of(b"a"), ChunkId::of(b"b"), ChunkId::of(b"c"));
        // A claim dropped without being handed over (an error after the
        // claim): the id is free again.
        {
            let claim = d.claim(a).unwrap().expect("a is new");
            assert!(d.claim(a).unwrap().is_none(), "claimed: not new for others");
            drop(claim);
        }
        let claim = d.claim(a).unwrap().expect("released: new again");
        claim.handed_over();
        // Handed over: not new until settled, and not after either once
        // the index records it.
        assert!(d.claim(a).unwrap().is_none());
        let loc = Location {
            offset: 0,
            length: 1,
            size: 1,
        };
        index
            .lock()
            .unwrap()
            .add_blob("blobs/aa/bb/k", 1, &[(a, loc)])
            .unwrap();
        d.settle([&a]);
        assert!(d.claim(a).unwrap().is_none(), "stored");
        assert!(d.pending().is_empty());
        // Settling what was never claimed is harmless.
        d.settle([&b]);
        d.claim(b).unwrap().expect("b is new").handed_over();
        d.claim(c).unwrap().expect("c is new").handed_over();
        assert_eq!(d.pending().len(), 2);
    }
}
