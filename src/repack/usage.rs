//! Stage 1 of a repack: which chunks of which blobs the snapshots use,
//! read from each snapshot's metadata (the key is needed), and which
//! snapshots a repack may not rewrite (their blobs are then left alone).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::blob::Location;
use crate::chunk::ChunkId;
use crate::error::{DbContext, Error, Result};
use crate::layout;
use crate::manifest::{self, Parsed};
use crate::metadata::{self, Metadata};
use crate::signing::{self, Entry, Signed};

use super::Repack;

/// age's header line, MAC line, payload nonce and the most a grease stanza
/// takes (about 200 bytes: a line of at most 66 characters and a body of
/// at most 99 bytes, in base64), with room.
const SLACK: u64 = 22 + 48 + 16 + 320;
/// An X25519 stanza: `-> X25519 <43>` and a body of 43 characters.
const STANZA: u64 = 98;

/// A blob of the store and the chunks of it that snapshots use.
#[derive(Debug, Default)]
pub struct Usage {
    /// Its size, as listed.
    pub size: u64,
    /// The chunks used, where the (first) snapshot naming each says.
    pub chunks: HashMap<ChunkId, Location>,
}

impl Usage {
    /// Bytes of its frames that some snapshot uses.
    pub fn used(&self) -> u64 {
        self.chunks
            .values()
            .fold(0u64, |t, l| t.saturating_add(l.length))
    }

    /// The share of the blob's payload no snapshot uses (0 to 1), for a
    /// blob sealed to `recipients` keys. What is not a frame is age's: its
    /// header (a line and a MAC, a stanza per recipient, and a grease
    /// stanza of random length), the payload's nonce, and a tag per 64 KiB.
    /// That is taken at its most (`SLACK`), so that a blob full of used
    /// chunks never looks partly unused; a few hundred bytes of unused
    /// frames in a blob can go unseen.
    pub fn unused_share(&self, recipients: usize) -> f64 {
        let slack = SLACK
            .saturating_add(STANZA.saturating_mul(recipients as u64))
            .saturating_add(16 * self.size.div_ceil(64 << 10));
        let payload = self.size.saturating_sub(slack);
        if payload == 0 {
            return 0.0;
        }
        payload.saturating_sub(self.used()) as f64 / payload as f64
    }
}

/// How a rewritten manifest is signed.
#[derive(Debug, Clone)]
pub enum Sign {
    /// It was not: nor is the new one.
    Unsigned,
    /// By a key the run trusts (this signature): the new one is signed
    /// with the run's own key.
    Resign(Entry),
}

/// A snapshot a repack may rewrite.
#[derive(Debug)]
pub struct Snap {
    pub id: String,
    /// Its manifest as stored, and read.
    pub raw: Vec<u8>,
    pub parsed: Parsed,
    pub sign: Sign,
    /// The blobs its chunks are in.
    pub blobs: HashSet<String>,
    /// The SHA-256 and size of its metadata object as read: the rewrite
    /// reads that very object again, or leaves the snapshot.
    pub meta_sha256: [u8; 32],
    pub meta_size: u64,
    /// Its manifest lists blobs of the store its metadata does not use
    /// (left by an interrupted repack): they are kept for it until it is
    /// rewritten.
    pub untidy: bool,
}

/// What the snapshots use.
#[derive(Debug, Default)]
pub struct Census {
    /// Every blob of the store some readable snapshot uses (not marked).
    pub blobs: HashMap<String, Usage>,
    pub snaps: Vec<Snap>,
    /// Snapshots left as they are, and why: their blobs are not repacked.
    pub blocked: Vec<(String, String)>,
    /// Blobs the blocked snapshots list or use.
    pub pinned: HashSet<String>,
}

/// Why a snapshot is left alone, or what failed the run.
pub enum Left {
    Snapshot(String),
    /// Its metadata does not open with the key given.
    Key(Error),
    Run(Error),
}

impl From<Error> for Left {
    fn from(e: Error) -> Left {
        Left::Run(e)
    }
}

impl Repack<'_> {
    /// Read every snapshot the view lists.
    pub(super) fn census(
        &self,
        view: &crate::gc::View,
        present: &HashMap<String, u64>,
        own: Option<[u8; 32]>,
    ) -> Result<Census> {
        let mut c = Census::default();
        let mut key_error = None;
        for m in &view.manifests {
            let key = layout::manifest(&m.id);
            let raw = match self.store.get(&key, manifest::MANIFEST_MAX) {
                Ok(r) => r,
                // Removed since the listing (a purge elsewhere).
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let parsed = manifest::parse(&key, &raw)?;
            let listed: Vec<String> = parsed.blobs.iter().map(|b| layout::blob(&b.hash)).collect();
            let read = if m.dated_ahead() {
                Err(Left::Snapshot(
                    "dated ahead of the store's clock (forged?)".into(),
                ))
            } else {
                self.read_snapshot(&m.id, raw, parsed, present, own, &mut c.blobs)
            };
            match read {
                Ok(s) => c.snaps.push(s),
                Err(Left::Run(e)) => return Err(e),
                Err(Left::Snapshot(why)) => {
                    c.pinned.extend(listed);
                    c.blocked.push((m.id.clone(), why));
                }
                Err(Left::Key(e)) => {
                    c.pinned.extend(listed);
                    c.blocked.push((m.id.clone(), e.to_string()));
                    key_error.get_or_insert(e);
                }
            }
        }
        // Not one snapshot opens with the key: the wrong key, not a store
        // of other keys' snapshots.
        if let (true, Some(e)) = (c.snaps.is_empty(), key_error) {
            return Err(e);
        }
        Ok(c)
    }

    fn read_snapshot(
        &self,
        id: &str,
        raw: Vec<u8>,
        parsed: Parsed,
        present: &HashMap<String, u64>,
        own: Option<[u8; 32]>,
        blobs: &mut HashMap<String, Usage>,
    ) -> std::result::Result<Snap, Left> {
        let mut prefer = self.trust.signers.clone();
        prefer.extend(own);
        let (signed, entry) = signing::check_entry(self.store, id, &raw, &prefer)?;
        let sign = match (signed, entry) {
            (Signed::Unsigned, _) => Sign::Unsigned,
            // A signature that never covered the metadata (no SHA-256 in
            // the manifest) is not one to vouch for a rewrite of it.
            (Signed::By(_), _) if parsed.metadata_sha256.is_none() => {
                return Err(Left::Snapshot(
                    "signed, but its manifest names no SHA-256 of its metadata".into(),
                ));
            }
            (Signed::By(k), Some(e)) if prefer.contains(&k) => Sign::Resign(e),
            (s @ Signed::By(_), _) => {
                return Err(Left::Snapshot(format!(
                    "{}, a key this run does not trust (its config's trusted_signers, or \
                     --signer): it is not signed again with this host's key",
                    s.describe()
                )));
            }
            (s, _) => return Err(Left::Snapshot(s.describe())),
        };
        let m = match metadata::open_hashed(
            self.store,
            id,
            self.identities,
            self.tmp_dir,
            &parsed.metadata_sums(),
        ) {
            Ok(m) => m,
            Err(e @ (Error::Store { .. } | Error::Io { .. })) => return Err(Left::Run(e)),
            // Another key's (or a forgery sealed to nobody we know): left
            // alone; `census` fails the run if no snapshot could be read.
            Err(e @ Error::Key(_)) => return Err(Left::Key(e)),
            Err(e) => return Err(Left::Snapshot(e.to_string())),
        };
        let (Some(meta_sha256), meta_size) = (m.sha256, m.stored) else {
            return Err(Left::Snapshot("its metadata was not read whole".into()));
        };
        let said: Option<String> = m
            .query_row(
                "SELECT value FROM info WHERE key = 'sealed_to' AND length(value) = 64",
                [],
                |r| r.get(0),
            )
            .ok();
        if said.is_some_and(|s| s != self.sealed_to) {
            return Err(Left::Snapshot(
                "sealed to other recipients than the config's age_recipient".into(),
            ));
        }
        let used = chunks_of(&m, present).map_err(|e| Left::Snapshot(m.explain(e).to_string()))?;
        let mut mine = HashSet::new();
        for (key, id, loc) in used {
            let u = blobs.entry(key.clone()).or_insert_with(|| Usage {
                size: present[&key],
                chunks: HashMap::new(),
            });
            u.chunks.entry(id).or_insert(loc);
            mine.insert(key);
        }
        let untidy = parsed.blobs.iter().any(|b| {
            let k = layout::blob(&b.hash);
            present.contains_key(&k) && !mine.contains(&k)
        });
        Ok(Snap {
            id: id.to_string(),
            raw,
            parsed,
            sign,
            blobs: mine,
            meta_sha256,
            meta_size,
            untidy,
        })
    }
}

/// Every chunk row of `m`: its blob's key, its id, where it is. A row
/// naming a blob the store does not hold as listed, or lying outside it,
/// is an error (such a snapshot is not rewritten).
pub fn chunks_of(
    m: &Metadata,
    present: &HashMap<String, u64>,
) -> Result<Vec<(String, ChunkId, Location)>> {
    let mpath = Path::new("snapshot metadata");
    let mut keys: HashMap<i64, (String, u64)> = HashMap::new();
    {
        let mut st = m
            .prepare("SELECT id, key, size FROM main.blobs")
            .db(mpath)?;
        let mut rows = st.query([]).db(mpath)?;
        while let Some(r) = rows.next().db(mpath)? {
            let id: i64 = r.get(0).db(mpath)?;
            let key: String = r.get(1).db(mpath)?;
            let size = u64::try_from(r.get::<_, i64>(2).db(mpath)?).unwrap_or(u64::MAX);
            if !layout::is_blob(&key) || present.get(&key) != Some(&size) {
                return Err(Error::corrupt(
                    "snapshot metadata",
                    format!(
                        "names blob {} of {size} bytes, which the store does not hold so",
                        crate::error::one_line(key)
                    ),
                ));
            }
            keys.insert(id, (key, size));
        }
    }
    let mut out = Vec::new();
    let mut st = m
        .prepare("SELECT id, blob, offset, length, size FROM main.chunks")
        .db(mpath)?;
    let mut rows = st.query([]).db(mpath)?;
    while let Some(r) = rows.next().db(mpath)? {
        let bad = || Error::corrupt("snapshot metadata", "a chunk row that is not one");
        let id = ChunkId::from_slice(r.get_ref(0).db(mpath)?.as_blob().map_err(|_| bad())?)
            .ok_or_else(bad)?;
        let n = |i: usize| -> Result<u64> {
            u64::try_from(r.get::<_, i64>(i).db(mpath)?).map_err(|_| bad())
        };
        let blob: i64 = r.get(1).db(mpath)?;
        let loc = Location {
            offset: n(2)?,
            length: n(3)?,
            size: n(4)?,
        };
        let Some((key, blob_size)) = keys.get(&blob) else {
            return Err(Error::corrupt(
                "snapshot metadata",
                "a chunk in a blob it does not name",
            ));
        };
        if !loc.plausible_within(*blob_size) {
            return Err(Error::corrupt(
                "snapshot metadata",
                format!("chunk {} does not lie within its blob", id.hex()),
            ));
        }
        out.push((key.clone(), id, loc));
    }
    Ok(out)
}
