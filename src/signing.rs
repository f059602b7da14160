//! Signed snapshots. Anyone who can write to the store can add a snapshot
//! (the recipients are public): a host signs its manifests so that a
//! restore can tell its snapshots from forgeries.
//!
//! Each host has an Ed25519 key made on its first backup beside the index
//! (`signing.key`, mode 0600, PKCS#8), never in the store. A backup writes,
//! before the manifest, `metadata/<id>/manifest.sig`: the host's public key
//! and a signature over the manifest's key and the SHA-256 of its stored
//! bytes. The manifest carries the SHA-256 of the encrypted metadata, so
//! the signature covers that too, and a reader given the signature's word
//! checks the metadata it then reads against it.
//!
//! A reader sets which keys it trusts (`trusted_signers` in its config, or
//! `--signer KEY`). Without any, nothing changes but `snapshot list`
//! saying who signed. With some, `latest` is the newest snapshot validly
//! signed by one, a snapshot named by id must be, retention leaves the
//! others out, and metadata that is not the signed one is refused.
//!
//! A signature object is read within `SIG_MAX` bytes; `latest` looks at
//! no more than `CANDIDATES_MAX` snapshots for one it trusts.

use std::io::Write;
use std::path::Path;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::layout;
use crate::manifest::{self, Listed, Narrow};
use crate::store::Store;

/// A signature object is about 250 bytes.
pub const SIG_MAX: u64 = 4 << 10;
/// `latest` gives up after this many newer snapshots it does not trust (a
/// forger can add them without end; each costs two GETs).
pub const CANDIDATES_MAX: usize = 64;
/// How public keys are written: `ed25519:` and 64 hex digits.
const PREFIX: &str = "ed25519:";
const KEY_FILE: &str = "signing.key";
const KEY_FILE_MAX: u64 = 1024;
const DOMAIN: &[u8] = b"vaultik snapshot signature v1\n";

/// A host's signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// The key in `state` (the index's directory), made there on first use.
    pub fn load_or_create(state: &Path) -> Result<SigningKey> {
        let path = state.join(KEY_FILE);
        let bad = |m: String| Error::Setup(format!("{}: {m}", path.display()));
        let bytes = match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.file_type().is_file() => {
                return Err(bad("not a regular file (a symlink?): not used".into()));
            }
            Ok(m) => {
                use std::os::unix::fs::MetadataExt;
                if m.mode() & 0o077 != 0 {
                    return Err(bad(format!(
                        "mode {:o}: a signing key must be private (chmod 600)",
                        m.mode() & 0o777
                    )));
                }
                if m.len() > KEY_FILE_MAX {
                    return Err(bad("too large to be a signing key".into()));
                }
                std::fs::read(&path).at("read signing key", &path)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| bad("cannot make a key".into()))?;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                {
                    Ok(f) => f,
                    // Made meanwhile by another run: that one is the key.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return SigningKey::load_or_create(state);
                    }
                    Err(e) => return Err(e).at("create signing key", &path),
                };
                f.write_all(doc.as_ref()).at("write", &path)?;
                f.sync_all().at("sync", &path)?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(e).at("read signing key", &path),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&bytes)
            .map_err(|_| bad("not an Ed25519 key (PKCS#8)".into()))?;
        Ok(SigningKey { pair })
    }

    /// The key in `state`, if a backup made one there.
    pub fn load_existing(state: &Path) -> Result<Option<SigningKey>> {
        match std::fs::symlink_metadata(state.join(KEY_FILE)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            _ => SigningKey::load_or_create(state).map(Some),
        }
    }

    /// The public key, as `trusted_signers` names it.
    pub fn public(&self) -> String {
        format!(
            "{PREFIX}{}",
            crate::chunk::hex(self.pair.public_key().as_ref())
        )
    }

    /// The signature object for the manifest `manifest_bytes` (as stored)
    /// of snapshot `id`.
    pub fn sign(&self, id: &str, manifest_bytes: &[u8]) -> Vec<u8> {
        object(&[self.entry(id, manifest_bytes)])
    }

    /// One signature over the manifest `manifest_bytes` of snapshot `id`.
    pub fn entry(&self, id: &str, manifest_bytes: &[u8]) -> Entry {
        let sig = self.pair.sign(&message(id, manifest_bytes));
        Entry {
            signer: self.public(),
            signature: crate::chunk::hex(sig.as_ref()),
        }
    }
}

/// One signature in a signature object: the key, and the signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub signer: String,
    pub signature: String,
}

/// A signature object of `entries` (at least one; at most `ENTRIES_MAX`).
/// A snapshot's manifest has one signature; while `repack` replaces a
/// manifest, the object holds two, over the manifest before and after, so
/// that the snapshot is signed at every moment (the object and the
/// manifest cannot change at once).
pub fn object(entries: &[Entry]) -> Vec<u8> {
    let (first, more) = entries
        .split_first()
        .expect("a signature object holds a signature");
    serde_json::to_vec(&SigOut {
        format: 1,
        signer: &first.signer,
        signature: &first.signature,
        more,
    })
    .expect("a signature serializes")
}

/// What is signed: a domain, the manifest's key and the SHA-256 of its
/// stored bytes.
fn message(id: &str, manifest_bytes: &[u8]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(layout::manifest(id).as_bytes());
    m.push(b'\n');
    m.extend_from_slice(&Sha256::digest(manifest_bytes));
    m
}

/// The most signatures an object holds (a repack writes two).
pub const ENTRIES_MAX: usize = 4;

#[derive(Serialize)]
struct SigOut<'a> {
    format: u64,
    signer: &'a str,
    signature: &'a str,
    #[serde(skip_serializing_if = "<[Entry]>::is_empty")]
    more: &'a [Entry],
}

#[derive(Deserialize)]
struct SigIn {
    format: u64,
    signer: String,
    signature: String,
    #[serde(default)]
    more: Vec<Entry>,
}

/// A public key `ed25519:<64 hex>`.
pub fn parse_signer(s: &str) -> Option<[u8; 32]> {
    let hex = s.trim().strip_prefix(PREFIX)?;
    let b = layout::unhex_bytes(hex)?;
    b.try_into().ok()
}

pub fn show_signer(k: &[u8; 32]) -> String {
    format!("{PREFIX}{}", crate::chunk::hex(k))
}

/// What a snapshot's signature says.
#[derive(Debug, Clone, PartialEq)]
pub enum Signed {
    /// No signature object.
    Unsigned,
    /// A valid signature by this key over the manifest as stored.
    By([u8; 32]),
    /// A signature object that is not one, or does not verify: why.
    Invalid(String),
}

impl Signed {
    pub fn describe(&self) -> String {
        match self {
            Signed::Unsigned => "unsigned".into(),
            Signed::By(k) => format!("signed by {}", show_signer(k)),
            Signed::Invalid(why) => format!("signature invalid ({why})"),
        }
    }
}

/// Check the signature of snapshot `id` over its manifest `manifest_bytes`.
pub fn check(store: &dyn Store, id: &str, manifest_bytes: &[u8]) -> Result<Signed> {
    check_entry(store, id, manifest_bytes, &[]).map(|(s, _)| s)
}

/// `check`, and the signature that verified (for `repack` to carry over
/// while it replaces the manifest). Of several that verify, one by a key
/// of `prefer` (a reader's trusted keys): a writer to the store adding a
/// valid signature of its own before the host's cannot make a real
/// snapshot look untrusted.
pub fn check_entry(
    store: &dyn Store,
    id: &str,
    manifest_bytes: &[u8],
    prefer: &[[u8; 32]],
) -> Result<(Signed, Option<Entry>)> {
    let key = layout::signature(id);
    let raw = match store.get(&key, SIG_MAX) {
        Ok(r) => r,
        Err(Error::NotFound { .. }) => return Ok((Signed::Unsigned, None)),
        Err(e @ Error::Corrupt { .. }) => return Ok((Signed::Invalid(e.to_string()), None)),
        Err(e) => return Err(e),
    };
    let Ok(s) = serde_json::from_slice::<SigIn>(&raw) else {
        return Ok((Signed::Invalid("not a signature object".into()), None));
    };
    if s.format != 1 {
        return Ok((Signed::Invalid(format!("format {}", s.format)), None));
    }
    if s.more.len() >= ENTRIES_MAX {
        return Ok((
            Signed::Invalid(format!("more than {ENTRIES_MAX} signatures")),
            None,
        ));
    }
    let message = message(id, manifest_bytes);
    let mut why = String::new();
    let mut found: Option<([u8; 32], Entry)> = None;
    let first = Entry {
        signer: s.signer,
        signature: s.signature,
    };
    for e in std::iter::once(first).chain(s.more) {
        let Some(signer) = parse_signer(&e.signer) else {
            if why.is_empty() {
                why = "not an ed25519 key".into();
            }
            continue;
        };
        let Some(sig) = layout::unhex_bytes(&e.signature).filter(|b| b.len() == 64) else {
            if why.is_empty() {
                why = "not an ed25519 signature".into();
            }
            continue;
        };
        if UnparsedPublicKey::new(&ED25519, signer)
            .verify(&message, &sig)
            .is_ok()
        {
            if prefer.contains(&signer) {
                return Ok((Signed::By(signer), Some(e)));
            }
            found.get_or_insert((signer, e));
            continue;
        }
        if why.is_empty() {
            why = format!(
                "does not verify with {} over this manifest",
                show_signer(&signer)
            );
        }
    }
    Ok(match found {
        Some((signer, e)) => (Signed::By(signer), Some(e)),
        None => (Signed::Invalid(why), None),
    })
}

/// The keys a reader trusts; none: every snapshot is taken as before.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trust {
    pub signers: Vec<[u8; 32]>,
}

impl Trust {
    pub fn is_set(&self) -> bool {
        !self.signers.is_empty()
    }

    pub fn trusts(&self, s: &Signed) -> bool {
        matches!(s, Signed::By(k) if self.signers.contains(k))
    }

    /// Whether snapshot `id` is signed by a trusted key: its status, and
    /// the SHA-256 its manifest gives its metadata.
    pub fn verdict(&self, store: &dyn Store, id: &str) -> Result<(Signed, Vec<[u8; 32]>)> {
        let key = layout::manifest(id);
        let raw = store.get(&key, manifest::MANIFEST_MAX)?;
        let parsed = manifest::parse(&key, &raw)?;
        let (signed, _) = check_entry(store, id, &raw, &self.signers)?;
        Ok((signed, parsed.metadata_sums()))
    }

    fn refusal(&self, id: &str, s: &Signed) -> Error {
        let why = match s {
            Signed::By(_) => format!("{}, which trusted_signers does not name", s.describe()),
            _ => s.describe(),
        };
        Error::Key(format!(
            "snapshot {} is {why}: refused (trusted_signers or --signer is set)",
            crate::error::one_line(id.to_string())
        ))
    }
}

/// A snapshot chosen by `pick`: its id, and, when it was taken on a
/// trusted signature, the SHA-256s its metadata may have (one, or two
/// while a repack replaces it; none: not checked).
#[derive(Debug, Clone, PartialEq)]
pub struct Picked {
    pub id: String,
    pub metadata_sums: Vec<[u8; 32]>,
}

/// `manifest::pick`, and with `trust` set: `latest` is the newest snapshot
/// signed by a trusted key (those passed over are named in warnings), a
/// snapshot named by id must be signed by one.
pub fn pick(
    store: &dyn Store,
    all: &[Listed],
    id: &str,
    narrow: &Narrow,
    trust: &Trust,
    warn: &dyn Fn(&str),
) -> Result<Picked> {
    if !trust.is_set() {
        return manifest::pick(all, id, narrow).map(|id| Picked {
            id,
            metadata_sums: Vec::new(),
        });
    }
    if id != "latest" {
        let id = manifest::pick(all, id, narrow)?;
        let (s, meta) = trust.verdict(store, &id)?;
        if !trust.trusts(&s) {
            return Err(trust.refusal(&id, &s));
        }
        return Ok(Picked {
            id,
            metadata_sums: meta,
        });
    }
    let candidates = all
        .iter()
        .rev()
        .filter(|l| !l.dated_ahead() && narrow.admits(&l.id))
        .take(CANDIDATES_MAX);
    let mut looked = 0;
    for l in candidates {
        looked += 1;
        let (s, meta) = match trust.verdict(store, &l.id) {
            Ok(v) => v,
            Err(e @ (Error::Corrupt { .. } | Error::NotFound { .. })) => {
                warn(&format!("snapshot {} passed over for latest: {e}", l.id));
                continue;
            }
            Err(e) => return Err(e),
        };
        if trust.trusts(&s) {
            return Ok(Picked {
                id: l.id.clone(),
                metadata_sums: meta,
            });
        }
        warn(&format!(
            "snapshot {} passed over for latest: {}",
            l.id,
            trust.refusal(&l.id, &s)
        ));
    }
    Err(Error::UnknownSnapshot(format!(
        "latest signed by a trusted key (none among the {looked} newest{})",
        if looked == CANDIDATES_MAX {
            "; name the snapshot by id"
        } else {
            ""
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[test]
    fn an_object_of_two_signatures_holds_for_either_manifest_and_no_other() {
        let d = tempfile::tempdir().unwrap();
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = SigningKey::load_or_create(da.path()).unwrap();
        let b = SigningKey::load_or_create(db.path()).unwrap();
        let store = LocalStore::open(&d.path().join("store"), true).unwrap();
        let id = "h_n_1970-01-01T000005Z";
        let key = layout::signature(id);
        // Host a's signature of the old manifest, b's of the new (a repack
        // on host b, between its two puts).
        let both = object(&[a.entry(id, b"old"), b.entry(id, b"new")]);
        store.put_bytes(&key, &both).unwrap();
        let (pa, pb) = (
            parse_signer(&a.public()).unwrap(),
            parse_signer(&b.public()).unwrap(),
        );
        assert_eq!(check(&store, id, b"old").unwrap(), Signed::By(pa));
        let (s, e) = check_entry(&store, id, b"new", &[]).unwrap();
        assert_eq!(s, Signed::By(pb));
        assert_eq!(e, Some(b.entry(id, b"new")));
        assert!(matches!(
            check(&store, id, b"third").unwrap(),
            Signed::Invalid(_)
        ));
        // A writer to the store puts a valid signature of its own first: a
        // reader trusting a's key still finds a's.
        store
            .put_bytes(&key, &object(&[b.entry(id, b"old"), a.entry(id, b"old")]))
            .unwrap();
        assert_eq!(check(&store, id, b"old").unwrap(), Signed::By(pb));
        let (s, e) = check_entry(&store, id, b"old", &[pa]).unwrap();
        assert_eq!((s, e), (Signed::By(pa), Some(a.entry(id, b"old"))));
        store.put_bytes(&key, &both).unwrap();
        // Forged: a junk entry beside a valid one is skipped; too many
        // entries, or entries that are not signatures, are invalid.
        let mut v: serde_json::Value = serde_json::from_slice(&both).unwrap();
        v["more"] = serde_json::json!([{"signer": "ed25519:zz", "signature": "00"}, v["more"][0]]);
        store.put_bytes(&key, v.to_string().as_bytes()).unwrap();
        assert_eq!(check(&store, id, b"new").unwrap(), Signed::By(pb));
        let many: Vec<Entry> = (0..ENTRIES_MAX + 1).map(|_| b.entry(id, b"new")).collect();
        store.put_bytes(&key, &object(&many)).unwrap();
        assert!(
            matches!(check(&store, id, b"new").unwrap(), Signed::Invalid(w) if w.contains("more than"))
        );
        v["more"] = serde_json::json!("not a list");
        store.put_bytes(&key, v.to_string().as_bytes()).unwrap();
        assert!(matches!(
            check(&store, id, b"old").unwrap(),
            Signed::Invalid(_)
        ));
    }

    #[test]
    fn a_key_is_made_once_private_and_signs_what_check_verifies() {
        let d = tempfile::tempdir().unwrap();
        let k = SigningKey::load_or_create(d.path()).unwrap();
        let again = SigningKey::load_or_create(d.path()).unwrap();
        assert_eq!(k.public(), again.public());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            parse_signer(&k.public()).map(|p| show_signer(&p)),
            Some(k.public())
        );

        let store = LocalStore::open(&d.path().join("store"), true).unwrap();
        let id = "h_n_1970-01-01T000005Z";
        let manifest = b"the manifest, as stored";
        assert_eq!(check(&store, id, manifest).unwrap(), Signed::Unsigned);
        store
            .put_bytes(&layout::signature(id), &k.sign(id, manifest))
            .unwrap();
        let by = parse_signer(&k.public()).unwrap();
        assert_eq!(check(&store, id, manifest).unwrap(), Signed::By(by));
        // Another manifest, another id, junk, oversized: not this key's word.
        assert!(matches!(
            check(&store, id, b"another").unwrap(),
            Signed::Invalid(_)
        ));
        let other = "h_n_1970-01-01T000006Z";
        store
            .put_bytes(&layout::signature(other), &k.sign(id, manifest))
            .unwrap();
        assert!(matches!(
            check(&store, other, manifest).unwrap(),
            Signed::Invalid(_)
        ));
        store
            .put_bytes(&layout::signature(id), b"{\"format\":1}")
            .unwrap();
        assert!(matches!(
            check(&store, id, manifest).unwrap(),
            Signed::Invalid(_)
        ));
        store
            .put_bytes(&layout::signature(id), &vec![b' '; 10_000])
            .unwrap();
        assert!(matches!(
            check(&store, id, manifest).unwrap(),
            Signed::Invalid(_)
        ));
        // A key file others can read, or a symlink: refused.
        std::fs::set_permissions(
            d.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(SigningKey::load_or_create(d.path()).is_err());
        let e = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(d.path().join(KEY_FILE), e.path().join(KEY_FILE)).unwrap();
        assert!(SigningKey::load_or_create(e.path()).is_err());
    }
}
