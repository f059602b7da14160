//! The store's identity: a small clear object (`store.json`) written once,
//! when a store is first backed up to: a random id, the store's format
//! version and when it was made. The local index is keyed by the id, not by
//! how the store is reached, so respelling the endpoint, or copying the
//! bucket to another provider, keeps the index; and an index pointed at a
//! different store is noticed (and started afresh). A store made before
//! identities gets one on its next backup, its index kept.
//!
//! Anyone who can write the store can change it: that makes hosts start
//! their indexes afresh (they upload again), which deleting blobs would do
//! anyway; it is read bounded and checked like everything else.

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
        let mut bytes = [0u8; 16];
        let mut filled = 0;
        while filled < bytes.len() {
            filled += rustix::rand::getrandom(
                &mut bytes[filled..],
                rustix::rand::GetRandomFlags::empty(),
            )
            .map_err(|e| Error::System {
                op: "draw a random store id",
                source: Box::new(std::io::Error::from(e)),
            })?;
        }
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

/// The store's identity, or None for a store that has none yet.
pub fn read(store: &dyn Store) -> Result<Option<Identity>> {
    match store.get(layout::IDENTITY, MAX) {
        Ok(data) => Identity::from_bytes(&data).map(Some),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The store's identity, written now if it has none (by one host only,
/// when several start at once: the first write wins, the others read it).
pub fn ensure(store: &dyn Store) -> Result<Identity> {
    if let Some(id) = read(store)? {
        return Ok(id);
    }
    let mine = Identity::new()?;
    if store.put_new(layout::IDENTITY, &mine.to_bytes())? {
        return Ok(mine);
    }
    read(store)?.ok_or_else(|| Error::NotFound {
        key: layout::IDENTITY.into(),
    })
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
    fn only_the_first_write_makes_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::LocalStore::open(&dir.path().join("s"), true).unwrap();
        assert_eq!(read(&store).unwrap(), None);
        let first = ensure(&store).unwrap();
        assert_eq!(ensure(&store).unwrap(), first);
        let other = Identity::new().unwrap();
        assert!(!store.put_new(layout::IDENTITY, &other.to_bytes()).unwrap());
        assert_eq!(read(&store).unwrap(), Some(first));
    }
}
