//! The store's identity: a random id, written once, when a store is first
//! backed up to, in the name of a small clear object,
//! `store/<format>/<id>` (its content says the same, for people). The local
//! index is keyed by the id, not by how the store is reached, so
//! respelling the endpoint, or copying the bucket to another provider,
//! keeps the index; and an index pointed at a different store is noticed
//! (and started afresh).
//!
//! A backup learns the identity from a listing, never by reading an
//! object: a host's key may allow only PutObject and ListBucket (see
//! "Ransomware-proof setup" in README.md). Stores made before identities
//! were named kept theirs in `store.json`: it is read once, by the first
//! backup that finds no named identity, and named from then on. A store
//! made before identities at all gets one on its next backup, its index
//! kept.
//!
//! Anyone who can write the store can add identities: a backup keeps the
//! one its index was made with while it is listed, and a new index takes
//! the smallest; at worst hosts start their indexes afresh (they upload
//! again), which deleting blobs would do anyway.

use serde::{Deserialize, Serialize};

use super::Store;
use crate::error::{Error, Result};
use crate::layout;

/// The layout this build writes and reads.
pub const FORMAT: u64 = 1;

/// An identity is a few dozen bytes; more is not one.
const MAX: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// 32 hex digits, random.
    pub id: String,
    pub format: u64,
    /// Seconds since the epoch.
    pub created: u64,
}

#[derive(Serialize, Deserialize)]
struct Json {
    vaultik_store: u64,
    id: String,
    created: u64,
}

impl Identity {
    fn new() -> Result<Identity> {
        let bytes = crate::scratch::random::<16>("draw a random store id")?;
        Ok(Identity {
            id: crate::chunk::hex(&bytes),
            format: FORMAT,
            created: crate::time::now(),
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(&Json {
            vaultik_store: self.format,
            id: self.id.clone(),
            created: self.created,
        })
        .expect("an identity serializes");
        v.push(b'\n');
        v
    }

    fn from_bytes(data: &[u8]) -> Result<Identity> {
        let bad =
            |why: &str| Error::corrupt(layout::IDENTITY, format!("not a store identity: {why}"));
        let v: Json = serde_json::from_slice(data).map_err(|e| bad(&e.to_string()))?;
        if v.id.len() != 32 || !v.id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("the id is not 32 hex digits"));
        }
        if v.vaultik_store > FORMAT {
            return Err(Error::Setup(format!(
                "the store is of format {}, made by a newer vaultik (this one reads format {FORMAT}): \
                 upgrade vaultik",
                v.vaultik_store
            )));
        }
        Ok(Identity {
            id: v.id,
            format: v.vaultik_store,
            created: v.created,
        })
    }
}

/// The identities of this format a listing of the store names, and
/// whether it has a `store.json`. An identity of a newer format refuses the
/// store when it names none this build reads (a writer who adds one beside
/// a readable one cannot lock every host out).
fn listed(store: &dyn Store) -> Result<(Vec<String>, bool)> {
    let listing = store.list("store")?;
    let mut ids = Vec::new();
    let mut legacy = false;
    let mut newest = None;
    for o in &listing.objects {
        match layout::parse(&o.key) {
            Some(layout::Key::StoreId { format, id }) => {
                if u64::from(format) > FORMAT {
                    newest = newest.max(Some(u64::from(format)));
                } else {
                    ids.push(id.to_string());
                }
            }
            Some(layout::Key::Identity) => legacy = true,
            _ => {}
        }
    }
    if let (true, Some(format)) = (ids.is_empty(), newest) {
        return Err(newer(format));
    }
    ids.sort();
    Ok((ids, legacy))
}

fn newer(format: u64) -> Error {
    Error::Setup(format!(
        "the store is of format {format}, made by a newer vaultik (this one reads format \
         {FORMAT}): upgrade vaultik"
    ))
}

/// What `store.json` says (a store from before identities were named).
fn read_legacy(store: &dyn Store) -> Result<Option<Identity>> {
    match store.get(layout::IDENTITY, MAX) {
        Ok(data) => Identity::from_bytes(&data).map(Some),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `s` is an id as vaultik makes them (an index may hold a store
/// description instead, from before identities).
fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Name `identity` in the store (`store/<format>/<id>`).
fn name(store: &dyn Store, identity: &Identity) -> Result<()> {
    let key = layout::Key::StoreId {
        format: FORMAT as u32,
        id: &identity.id,
    }
    .to_key();
    store.put_bytes(&key, &identity.to_bytes())
}

/// Every identity the store names (smallest first), for commands that
/// look for the local index made for it; `store.json`'s when it names
/// none. Read commands only: this may read an object.
pub fn all(store: &dyn Store) -> Result<Vec<String>> {
    let (ids, legacy) = listed(store)?;
    if !ids.is_empty() || !legacy {
        return Ok(ids);
    }
    Ok(read_legacy(store)?.map(|i| vec![i.id]).unwrap_or_default())
}

/// The store's identity, or None for a store that has none yet (for
/// commands that only read: a store of a newer format is refused).
pub fn read(store: &dyn Store) -> Result<Option<Identity>> {
    let (ids, legacy) = listed(store)?;
    match ids.into_iter().next() {
        Some(id) => Ok(Some(Identity {
            id,
            format: FORMAT,
            created: 0,
        })),
        None if legacy => read_legacy(store),
        None => Ok(None),
    }
}

/// The store's identity for a backup whose index was made for `known`:
/// that one while the store names it, else the smallest it names; for a
/// store that names none, `store.json`'s (read once, then named), or a new
/// one. Nothing is read but listings, except that once.
pub fn ensure(store: &dyn Store, known: Option<&str>) -> Result<Identity> {
    let (ids, legacy) = listed(store)?;
    let chosen = match known {
        Some(k) if ids.iter().any(|i| i == k) => Some(k.to_string()),
        _ => ids.into_iter().next(),
    };
    if let Some(id) = chosen {
        return Ok(Identity {
            id,
            format: FORMAT,
            created: 0,
        });
    }
    if legacy {
        match read_legacy(store) {
            Ok(Some(old)) => {
                name(store, &old)?;
                return Ok(old);
            }
            Ok(None) => {}
            // A write-only host may not read it: the index's own id is
            // named instead (an index made for another store only
            // deduplicates against blobs this store lists).
            Err(e) if super::versions::denied(&e) && known.is_some_and(is_id) => {
                let kept = Identity {
                    id: known.unwrap_or_default().to_string(),
                    format: FORMAT,
                    created: crate::time::now(),
                };
                name(store, &kept)?;
                return Ok(kept);
            }
            Err(e) => return Err(e),
        }
    }
    let mine = Identity::new()?;
    name(store, &mine)?;
    Ok(mine)
}

/// The identity of a store `copy` writes to: its own while it names one
/// (or has a `store.json`), else `source`'s, named there (a copy of a
/// store is that store, as a bucket copied by other means is: an index made
/// for one is good for the other, checked against its listing at every
/// run), else a new one.
pub fn ensure_copy(store: &dyn Store, source: Option<&Identity>) -> Result<Identity> {
    let (ids, legacy) = listed(store)?;
    if ids.is_empty() && !legacy {
        if let Some(src) = source {
            let kept = Identity {
                id: src.id.clone(),
                format: FORMAT,
                created: crate::time::now(),
            };
            name(store, &kept)?;
            return Ok(kept);
        }
    }
    ensure(store, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_are_checked() {
        let a = Identity::new().unwrap();
        let b = Identity::new().unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(Identity::from_bytes(&a.to_bytes()).unwrap(), a);
        for bad in [
            &br#"{"vaultik_store": 1, "id": "../x", "created": 1}"#[..],
            br#"{"vaultik_store": 1, "id": "0123456789ABCDEF0123456789abcdef", "created": 1}"#,
            br#"{"id": "0123456789abcdef0123456789abcdef", "created": 1}"#,
            b"garbage",
        ] {
            assert!(Identity::from_bytes(bad).is_err());
        }
        let newer =
            br#"{"vaultik_store": 9, "id": "0123456789abcdef0123456789abcdef", "created": 1}"#;
        let e = Identity::from_bytes(newer).unwrap_err().to_string();
        assert!(e.contains("newer vaultik"), "{e}");
    }

    #[test]
    fn identities_are_named_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::LocalStore::open(&dir.path().join("s"), true).unwrap();
        assert_eq!(read(&store).unwrap(), None);
        let first = ensure(&store, None).unwrap();
        assert_eq!(ensure(&store, None).unwrap().id, first.id);
        assert_eq!(read(&store).unwrap().unwrap().id, first.id);
        // Another host's (or an attacker's) identity beside it: an index
        // keeps its own while it is listed.
        let other = Identity::new().unwrap();
        name(&store, &other).unwrap();
        assert_eq!(ensure(&store, Some(&first.id)).unwrap().id, first.id);
        assert_eq!(ensure(&store, Some(&other.id)).unwrap().id, other.id);
        let smallest = first.id.clone().min(other.id.clone());
        assert_eq!(ensure(&store, Some("gone")).unwrap().id, smallest);
        assert_eq!(all(&store).unwrap().len(), 2);
        // A named identity of a newer format: ignored beside one this build
        // reads; alone, it refuses the store.
        let key = layout::Key::StoreId {
            format: 9,
            id: &first.id,
        }
        .to_key();
        store.put_bytes(&key, b"{}").unwrap();
        assert_eq!(ensure(&store, Some(&first.id)).unwrap().id, first.id);
        for id in [&first.id, &other.id] {
            let k = layout::Key::StoreId { format: 1, id }.to_key();
            store.delete(&k).unwrap();
        }
        let e = ensure(&store, None).unwrap_err().to_string();
        assert!(e.contains("newer vaultik"), "{e}");
    }

    #[test]
    fn a_store_json_is_read_once_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::LocalStore::open(&dir.path().join("s"), true).unwrap();
        let old = Identity::new().unwrap();
        store.put_bytes(layout::IDENTITY, &old.to_bytes()).unwrap();
        assert_eq!(read(&store).unwrap().unwrap().id, old.id);
        let gets = || store.stats().get.load(std::sync::atomic::Ordering::Relaxed);
        let before = gets();
        assert_eq!(ensure(&store, None).unwrap().id, old.id);
        assert_eq!(gets(), before + 1);
        assert_eq!(ensure(&store, None).unwrap().id, old.id);
        assert_eq!(gets(), before + 1, "named now: not read again");
    }
}
