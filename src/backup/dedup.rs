//! Which chunks the store has or is getting: the one owner of the backup's
//! deduplication state. A chunk is new when neither the index (confirmed
//! stored) nor this run (on its way) has it. Once a run has asked about
//! many chunks, a Bloom filter of the index's ids answers "certainly not
//! stored" without a lookup (a million random lookups into a million-row
//! table cost the readers 4 s, and held everyone else up meanwhile); only
//! ids it may hold are looked up. The invariant "a claimed chunk
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
use crate::index::{ChunkLookup, Index};

pub struct Dedup<'i> {
    index: &'i Mutex<Index>,
    /// Lookups, beside the index's writes (blobs being recorded).
    lookup: Mutex<ChunkLookup>,
    /// Handed over to the packer, not yet recorded in the index; and the
    /// filter of what the index holds, once built.
    pending: Mutex<State>,
}

/// What `Dedup` guards with one lock.
struct State {
    pending: HashSet<ChunkId>,
    /// Settles so far (a lookup made without the lock is trusted only if
    /// none came in between).
    settled: u64,
    /// Every id the index holds may be in it (built after `FILTER_AFTER`
    /// claims, then kept up to date as blobs are settled).
    filter: Option<Bloom>,
    asked: usize,
}

/// Claims asked with a lookup each before the filter is built (a run that
/// reads a few changed files never scans the index).
const FILTER_AFTER: usize = 4096;

/// A Bloom filter of chunk ids: the ids are SHA-256 digests, so their
/// bytes are the hash values (four probes, one per 8 bytes).
struct Bloom {
    bits: Vec<u64>,
    mask: u64,
}

impl Bloom {
    /// Room for `n` ids at about 2% false positives (8 bits an id, four
    /// probes), at most 32 MiB.
    fn with_room(n: u64) -> Bloom {
        let bits = (n.saturating_mul(8))
            .clamp(1 << 16, 1 << 28)
            .next_power_of_two();
        Bloom {
            bits: vec![0; (bits / 64) as usize],
            mask: bits - 1,
        }
    }

    fn probes(id: &ChunkId) -> [u64; 4] {
        let word = |i: usize| {
            u64::from_le_bytes(id.0[8 * i..8 * i + 8].try_into().expect("8 bytes of 32"))
        };
        [word(0), word(1), word(2), word(3)]
    }

    fn insert(&mut self, id: &ChunkId) {
        for p in Self::probes(id) {
            let b = p & self.mask;
            self.bits[(b / 64) as usize] |= 1 << (b % 64);
        }
    }

    fn may_contain(&self, id: &ChunkId) -> bool {
        Self::probes(id).iter().all(|p| {
            let b = p & self.mask;
            self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0
        })
    }
}

/// A chunk this caller is to send to the packer.
#[must_use = "a claim is handed over or released"]
pub struct Claim<'d> {
    pending: &'d Mutex<State>,
    id: ChunkId,
    handed: bool,
}

impl<'i> Dedup<'i> {
    pub fn new(index: &'i Mutex<Index>) -> Result<Dedup<'i>> {
        let lookup = Mutex::new(
            index
                .lock()
                .expect("index lock poisoned by a panic")
                .lookup()?,
        );
        Ok(Dedup {
            index,
            lookup,
            pending: Mutex::new(State {
                pending: HashSet::new(),
                settled: 0,
                filter: None,
                asked: 0,
            }),
        })
    }

    fn pending(&self) -> MutexGuard<'_, State> {
        self.pending
            .lock()
            .expect("pending lock poisoned by a panic")
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().expect("index lock poisoned by a panic")
    }

    fn has_chunk(&self, id: &ChunkId) -> Result<bool> {
        self.lookup
            .lock()
            .expect("lookup lock poisoned by a panic")
            .has_chunk(id)
    }

    /// The filter of every id the index holds, with room for as many more.
    fn build_filter(&self) -> Result<Bloom> {
        let index = self.index();
        let n = index.chunk_count()?;
        let mut f = Bloom::with_room(n.saturating_add(n.max(2 << 20)));
        index.each_chunk_id(&mut |id| f.insert(id))?;
        Ok(f)
    }

    /// A claim on `id` if the chunk is new: neither stored nor on its way.
    pub fn claim(&self, id: ChunkId) -> Result<Option<Claim<'_>>> {
        let mut p = self.pending();
        if p.pending.contains(&id) {
            return Ok(None);
        }
        p.asked += 1;
        if p.filter.is_none() && p.asked > FILTER_AFTER {
            p.filter = Some(self.build_filter()?);
        }
        if p.filter.as_ref().is_none_or(|f| f.may_contain(&id)) {
            // Maybe stored: looked up without holding the others up. A
            // blob recorded meanwhile is in the index before it is
            // settled: if one was settled in between, ask again.
            let epoch = p.settled;
            drop(p);
            let stored = self.has_chunk(&id)?;
            p = self.pending();
            let stored =
                stored || p.pending.contains(&id) || (p.settled != epoch && self.has_chunk(&id)?);
            if stored {
                return Ok(None);
            }
        }
        p.pending.insert(id);
        Ok(Some(Claim {
            pending: &self.pending,
            id,
            handed: false,
        }))
    }

    /// The blob holding `ids` is stored and recorded in the index.
    pub fn settle<'a>(&self, ids: impl IntoIterator<Item = &'a ChunkId>) {
        let mut p = self.pending();
        p.settled += 1;
        let State {
            pending, filter, ..
        } = &mut *p;
        for id in ids {
            pending.remove(id);
            if let Some(f) = filter {
                f.insert(id);
            }
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
                .pending
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
        let d = Dedup::new(&index).unwrap();
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
        assert!(d.pending().pending.is_empty());
        // Settling what was never claimed is harmless.
        d.settle([&b]);
        d.claim(b).unwrap().expect("b is new").handed_over();
        d.claim(c).unwrap().expect("c is new").handed_over();
        assert_eq!(d.pending().pending.len(), 2);
    }
}
