//! Which blobs of the store's listing a snapshot references, kept
//! compactly: garbage collection reads every manifest, and must not hold
//! every manifest's blob list (a forged manifest lists up to 320,000 keys).
//! A reference is an index into the sorted `blobs/` listing: 4 bytes, or
//! one bit of a bitmap over the listing when that is smaller, so a
//! snapshot costs at most an eighth of a byte per listed blob. A blob a
//! manifest lists that the listing does not hold is not kept: nothing can
//! delete it, and no report names it.

use crate::layout;
use crate::manifest::BlobRef;
use crate::store::ObjectInfo;

/// The listed blobs one snapshot references.
#[derive(Debug, Clone, PartialEq)]
pub enum Refs {
    /// Sorted indexes into the listing.
    Few(Box<[u32]>),
    /// A bitmap over the listing (when denser than one blob in 32).
    Many(Box<[u64]>),
}

impl Refs {
    /// The blobs of `listed` (a listing of `blobs/`, sorted by key) that
    /// `blobs` names.
    pub fn of(blobs: &[BlobRef], listed: &[ObjectInfo]) -> Refs {
        let mut at: Vec<u32> = blobs
            .iter()
            .filter_map(|b| {
                let key = layout::blob(&b.hash);
                listed
                    .binary_search_by(|o| o.key.as_str().cmp(&key))
                    .ok()
                    .map(index)
            })
            .collect();
        at.sort_unstable();
        at.dedup();
        let words = listed.len().div_ceil(64);
        if at.len() * 4 > words * 8 {
            let mut bits = BlobSet::new(listed.len());
            for i in &at {
                bits.insert(*i as usize);
            }
            Refs::Many(bits.words.into_boxed_slice())
        } else {
            Refs::Few(at.into_boxed_slice())
        }
    }

    /// Bytes it holds (for tests and measurements).
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        match self {
            Refs::Few(v) => v.len() * 4,
            Refs::Many(w) => w.len() * 8,
        }
    }
}

/// An index into a listing (`LIST_MAX` keeps it far below 2^32).
fn index(i: usize) -> u32 {
    u32::try_from(i).expect("a listing holds at most LIST_MAX objects")
}

/// A set of blobs of one listing, by index.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobSet {
    words: Vec<u64>,
}

impl BlobSet {
    /// The empty set over a listing of `len` blobs.
    pub fn new(len: usize) -> BlobSet {
        BlobSet {
            words: vec![0; len.div_ceil(64)],
        }
    }

    pub fn insert(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    pub fn contains(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Add every blob `refs` holds.
    pub fn add(&mut self, refs: &Refs) {
        match refs {
            Refs::Few(at) => {
                for i in at.iter() {
                    self.insert(*i as usize);
                }
            }
            Refs::Many(bits) => {
                for (w, b) in self.words.iter_mut().zip(bits.iter()) {
                    *w |= b;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(n: u8) -> (Vec<ObjectInfo>, Vec<BlobRef>) {
        let mut refs: Vec<BlobRef> = (0..n)
            .map(|i| BlobRef {
                hash: [i; 32],
                size: 1,
            })
            .collect();
        let listed = refs
            .iter()
            .map(|b| ObjectInfo {
                class: Default::default(),
                key: layout::blob(&b.hash),
                size: 1,
                modified: 1,
            })
            .collect();
        refs.reverse();
        (listed, refs)
    }

    #[test]
    fn few_and_many_hold_the_same_blobs() {
        let (listed, all) = listing(200);
        // Three of 200, one of them absent from the listing: indexes.
        let absent = BlobRef {
            hash: [0xee; 32],
            size: 1,
        };
        let few = Refs::of(&[all[0], all[5], absent], &listed);
        assert_eq!(few, Refs::Few(vec![194, 199].into_boxed_slice()));
        // All of them: a bitmap of 4 words instead of 800 bytes.
        let many = Refs::of(&all, &listed);
        assert!(matches!(many, Refs::Many(_)), "{many:?}");
        assert_eq!(many.bytes(), 32);
        let mut set = BlobSet::new(listed.len());
        set.add(&few);
        assert!(set.contains(194) && set.contains(199) && !set.contains(0));
        assert!(!set.contains(100_000));
        set.add(&many);
        assert!((0..200).all(|i| set.contains(i)));
        assert!(!set.contains(200));
    }
}
