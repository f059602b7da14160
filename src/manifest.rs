//! The clear manifest of a snapshot (`metadata/<id>/manifest.json.zst`):
//! its id, host, name and time and the keys and sizes of the blobs it
//! needs, readable without the private key (listing, purge, garbage
//! collection). And which snapshots the store holds, in the one order
//! every command uses.
//!
//! Anyone who can write to the store can write a manifest, so reading one
//! is bounded and checked. Bounded: it decompresses to at most `RATIO`
//! times its stored size (at least `RATIO_FLOOR`, never past
//! `MANIFEST_MAX`), so a forged one costs what its size in the bucket
//! justifies; and it is parsed into a compact form (a blob is its 32-byte
//! hash and size, no string), of which commands that read every manifest
//! keep only what they need (`Summary`: no blob list). Checked: the id
//! must be the one it is stored under, its host, name and time those the
//! id spells (a host name at most `layout::HOSTNAME_MAX` bytes), every
//! blob a key of the layout and listed once. A snapshot's claimed time
//! comes from its id; one that claims to be later than the store's own
//! time for its manifest (`LastModified`, or the file's mtime in a
//! directory store) plus `MAX_SKEW` is *dated ahead*: shown flagged, never
//! `latest`, and left out of retention.

use std::cmp::Ordering;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::{self, HOSTNAME_MAX};
use crate::store::{ObjectInfo, Store};

/// The manifest's format (unchanged since the first).
pub const FORMAT_VERSION: u64 = 1;

/// A manifest is at most this big, compressed and decompressed: 32 MiB is
/// about 320,000 blobs (20 TB at the default blob size, 320 GB at the
/// smallest). A backup refuses to write a larger one.
pub const MANIFEST_MAX: u64 = 32 << 20;

/// A manifest decompresses to at most this many times its stored size
/// (and at least `RATIO_FLOOR`): a forged one cannot make a reader hold
/// more than its size in the bucket justifies. A real manifest is mostly
/// blob keys, 64 hex digits of a SHA-256 each, which no compressor packs
/// much below their 32 bytes of entropy. Measured (the test
/// `real_manifests_compress_about_2x`, level 3 as a backup writes):
/// 1.2x for one blob, 2.2-2.6x for 100, 2.4-2.7x for 10,000, 2.7-2.8x
/// for 300,000 (the most a manifest holds; the higher figure with every
/// blob of one size), so 16 leaves a margin of more than 5. A JSON bomb
/// (one key repeated, zeros) packs 1,000 times and more, and is cut
/// after `RATIO` times its size.
pub const RATIO: u64 = 16;

/// What any manifest may decompress to, however small: a real one of a
/// few blobs (or a long host name) never comes near it.
pub const RATIO_FLOOR: u64 = 64 << 10;

/// How far ahead of the store's clock a snapshot may date itself: S3
/// refuses requests signed with a clock more than 15 minutes off, so an
/// honest writer is never further ahead than that.
pub const MAX_SKEW: u64 = 15 * 60;

/// The most a manifest stored in `stored` bytes may decompress to.
pub fn read_limit(stored: usize) -> u64 {
    (stored as u64)
        .saturating_mul(RATIO)
        .clamp(RATIO_FLOOR, MANIFEST_MAX)
}

/// The clear manifest of one snapshot, whole: what a backup writes, and
/// what `snapshot verify` reads of the one snapshot it checks. Commands
/// that read every manifest keep a `Summary` (and gc a compact set of
/// references) instead.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub id: String,
    pub hostname: String,
    pub name: String,
    /// UTC, seconds since the epoch: the time the id spells.
    pub time: u64,
    pub blobs: Vec<(String, u64)>,
    pub metadata_size: u64,
    /// The SHA-256 of the encrypted metadata as stored (manifests written
    /// before it was recorded have none): a signature over the manifest
    /// covers the metadata through it.
    pub metadata_sha256: Option<[u8; 32]>,
    /// A second SHA-256 the metadata may have, only while `repack`
    /// replaces it (the one before and the one after: a reader who read
    /// the manifest just before the swap gets either, both whole).
    pub metadata_sha256_also: Option<[u8; 32]>,
}

/// The SHA-256s `first` and `also` a manifest vouches for, as a list (empty
/// for a manifest written before they were recorded).
pub fn sums(first: Option<[u8; 32]>, also: Option<[u8; 32]>) -> Vec<[u8; 32]> {
    first.into_iter().chain(also).collect()
}

/// A snapshot as listings, retention and reports need it: its manifest
/// without the blob list (a count and a sum instead). A few hundred bytes
/// whatever the manifest held.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub id: String,
    pub hostname: String,
    pub name: String,
    /// UTC, seconds since the epoch: the time the id spells.
    pub time: u64,
    pub metadata_size: u64,
    /// How many blobs the manifest lists, and their sizes summed
    /// (saturating: sizes come from the store).
    pub blobs: usize,
    pub blob_bytes: u64,
    /// When the store says the manifest was written (0 when not known).
    pub stored: u64,
    /// Not signed by a key the reader trusts, when it trusts some
    /// (`signing.rs`): never `latest`, left out of retention.
    pub untrusted: bool,
}

/// A blob a manifest lists: the SHA-256 its key names (the key is
/// `layout::blob(&hash)`), and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    pub hash: [u8; 32],
    pub size: u64,
}

/// A manifest as read and checked: its summary, and its blobs in the
/// order listed (40 bytes each), each once.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub summary: Summary,
    pub blobs: Vec<BlobRef>,
    /// See `Manifest::metadata_sha256` and `metadata_sha256_also`.
    pub metadata_sha256: Option<[u8; 32]>,
    pub metadata_sha256_also: Option<[u8; 32]>,
}

impl Parsed {
    /// The SHA-256s the metadata may have (see `sums`).
    pub fn metadata_sums(&self) -> Vec<[u8; 32]> {
        sums(self.metadata_sha256, self.metadata_sha256_also)
    }
}

/// The manifest as JSON, written.
#[derive(Serialize)]
struct JsonOut<'a> {
    format: u64,
    id: &'a str,
    hostname: &'a str,
    name: &'a str,
    time: u64,
    metadata_size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata_sha256_also: Option<String>,
    blobs: Vec<JsonBlobOut<'a>>,
}

#[derive(Serialize)]
struct JsonBlobOut<'a> {
    key: &'a str,
    size: u64,
}

/// The manifest as JSON, read: every blob straight into a `BlobRef`, its
/// key checked as it is parsed (no string kept per blob).
#[derive(Deserialize)]
struct JsonIn {
    format: u64,
    id: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    name: String,
    time: u64,
    #[serde(default)]
    metadata_size: u64,
    #[serde(default)]
    metadata_sha256: Option<String>,
    #[serde(default)]
    metadata_sha256_also: Option<String>,
    blobs: BlobList,
}

struct BlobList(Vec<BlobRef>);

#[derive(Deserialize)]
struct JsonBlobIn {
    key: BlobKey,
    size: u64,
}

/// A blob key of the layout, as the hash it names.
struct BlobKey([u8; 32]);

impl<'de> Deserialize<'de> for BlobKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = BlobKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a blob key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<BlobKey, E> {
                match layout::parse(s) {
                    Some(layout::Key::Blob(hash)) => Ok(BlobKey(hash)),
                    _ => Err(E::custom("a blob key outside the layout")),
                }
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de> Deserialize<'de> for BlobList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BlobList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of blobs")
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<BlobList, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<JsonBlobIn>()? {
                    out.push(BlobRef {
                        hash: b.key.0,
                        size: b.size,
                    });
                }
                Ok(BlobList(out))
            }
        }
        d.deserialize_seq(V)
    }
}

impl Manifest {
    /// The compressed manifest, or an error when it would be larger than a
    /// reader accepts (too many blobs, a host name too long).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        if self.hostname.len() > HOSTNAME_MAX {
            return Err(Error::Setup(format!(
                "snapshot {}: host name of {} bytes, longer than the {HOSTNAME_MAX} a manifest \
                 may carry; set a shorter `hostname`",
                self.id,
                self.hostname.len()
            )));
        }
        let v = JsonOut {
            format: FORMAT_VERSION,
            id: &self.id,
            hostname: &self.hostname,
            name: &self.name,
            time: self.time,
            metadata_size: self.metadata_size,
            metadata_sha256: self.metadata_sha256.map(|h| crate::chunk::hex(&h)),
            metadata_sha256_also: self.metadata_sha256_also.map(|h| crate::chunk::hex(&h)),
            blobs: self
                .blobs
                .iter()
                .map(|(k, s)| JsonBlobOut { key: k, size: *s })
                .collect(),
        };
        let text = serde_json::to_vec(&v).expect("a manifest serializes");
        if text.len() as u64 > MANIFEST_MAX {
            return Err(Error::Setup(format!(
                "snapshot {} needs {} blobs: its manifest would be {} bytes, more than the {} \
                 any reader accepts; raise blob_size_limit",
                self.id,
                self.blobs.len(),
                text.len(),
                crate::human_bytes(MANIFEST_MAX)
            )));
        }
        let packed = zstd::bulk::compress(&text, 3).expect("compressing a buffer in memory");
        // Never write what readers refuse (blob keys are hashes: a real
        // manifest is far from the bound).
        if text.len() as u64 > read_limit(packed.len()) {
            return Err(Error::Setup(format!(
                "snapshot {}: its manifest compresses {}:1, more than the {RATIO}:1 any reader \
                 accepts",
                self.id,
                text.len() / packed.len().max(1)
            )));
        }
        Ok(packed)
    }

    /// Read and check the manifest stored under `key`, whole.
    pub fn from_bytes(key: &str, data: &[u8]) -> Result<Manifest> {
        let p = parse(key, data)?;
        let s = p.summary;
        Ok(Manifest {
            id: s.id,
            hostname: s.hostname,
            name: s.name,
            time: s.time,
            blobs: p
                .blobs
                .iter()
                .map(|b| (layout::blob(&b.hash), b.size))
                .collect(),
            metadata_size: s.metadata_size,
            metadata_sha256: p.metadata_sha256,
            metadata_sha256_also: p.metadata_sha256_also,
        })
    }

    /// What a listing keeps of it, as stored at `stored` (tests).
    #[cfg(test)]
    pub fn summary(&self, stored: u64) -> Summary {
        Summary {
            id: self.id.clone(),
            hostname: self.hostname.clone(),
            name: self.name.clone(),
            time: self.time,
            metadata_size: self.metadata_size,
            blobs: self.blobs.len(),
            blob_bytes: self
                .blobs
                .iter()
                .fold(0u64, |t, (_, s)| t.saturating_add(*s)),
            stored,
            untrusted: false,
        }
    }
}

impl Summary {
    /// Its blobs and its metadata, in bytes.
    pub fn total_size(&self) -> u64 {
        self.metadata_size.saturating_add(self.blob_bytes)
    }

    /// Whether it claims a time later than the store's (see the module doc).
    pub fn dated_ahead(&self) -> bool {
        dated_ahead(self.time, self.stored)
    }
}

/// Read and check the manifest stored under `key` (`data`, as stored):
/// decompressed to at most `read_limit(data.len())`, parsed into its
/// compact form, checked.
pub fn parse(key: &str, data: &[u8]) -> Result<Parsed> {
    let bad = |msg: &str| Error::corrupt(format!("manifest {key}"), msg);
    let limit = read_limit(data.len());
    let text = decompress_bounded(data, limit).map_err(|e| {
        if limit < MANIFEST_MAX && e.starts_with("more than") {
            bad(&format!(
                "{e} (a manifest may hold {RATIO} times its stored size, here {}, \
                 and at least {})",
                crate::human_bytes(data.len() as u64),
                crate::human_bytes(RATIO_FLOOR)
            ))
        } else {
            bad(&e)
        }
    })?;
    let v: JsonIn =
        serde_json::from_slice(&text).map_err(|e| bad(&format!("not a manifest: {e}")))?;
    drop(text);
    if v.format > FORMAT_VERSION {
        return Err(bad(&format!(
            "format {}, newer than this vaultik reads ({FORMAT_VERSION}): \
             upgrade vaultik if a newer one made it",
            v.format
        )));
    }
    if v.format != FORMAT_VERSION {
        return Err(bad(&format!("unsupported format {}", v.format)));
    }
    // The id names objects to read and delete: it must be the one the
    // manifest is stored under, and spell its host, name and time.
    let Some(layout::Key::Manifest(from_key)) = layout::parse(key) else {
        return Err(bad("not a manifest key"));
    };
    if from_key != v.id {
        return Err(bad("id does not match its key"));
    }
    let parts = layout::parse_id(&v.id).ok_or_else(|| bad("not a snapshot id"))?;
    if v.hostname.len() > HOSTNAME_MAX {
        return Err(bad(&format!(
            "a host name of {} bytes (at most {HOSTNAME_MAX})",
            v.hostname.len()
        )));
    }
    if parts.time != v.time
        || parts.name != v.name
        || parts.host != layout::sanitize_host(&v.hostname)
    {
        return Err(bad("host, name or time does not match its id"));
    }
    let sha256 = |field: &str, v: Option<&str>| match v {
        None => Ok(None),
        Some(h) => layout::unhex_bytes(h)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .map(Some)
            .ok_or_else(|| bad(&format!("{field} is not a SHA-256"))),
    };
    let metadata_sha256 = sha256("metadata_sha256", v.metadata_sha256.as_deref())?;
    let metadata_sha256_also = sha256("metadata_sha256_also", v.metadata_sha256_also.as_deref())?;
    if metadata_sha256_also.is_some() && metadata_sha256.is_none() {
        return Err(bad("metadata_sha256_also without metadata_sha256"));
    }
    let blobs = v.blobs.0;
    // A backup lists each blob once (its table's keys are unique): a
    // blob listed twice is a forgery or damage, refused by every reader
    // alike.
    if let Some(twice) = duplicate(&blobs) {
        return Err(bad(&format!("lists blob {} twice", layout::blob(&twice))));
    }
    let blob_bytes = blobs.iter().fold(0u64, |t, b| t.saturating_add(b.size));
    let mut hostname = v.hostname;
    hostname.shrink_to_fit();
    Ok(Parsed {
        summary: Summary {
            id: v.id,
            hostname,
            name: v.name,
            time: v.time,
            metadata_size: v.metadata_size,
            blobs: blobs.len(),
            blob_bytes,
            stored: 0,
            untrusted: false,
        },
        blobs,
        metadata_sha256,
        metadata_sha256_also,
    })
}

/// A hash `blobs` lists more than once.
fn duplicate(blobs: &[BlobRef]) -> Option<[u8; 32]> {
    let mut order: Vec<u32> = (0..blobs.len())
        .map(|i| {
            u32::try_from(i).expect("a manifest of at most 32 MiB lists fewer than 2^32 blobs")
        })
        .collect();
    order.sort_unstable_by(|a, b| blobs[*a as usize].hash.cmp(&blobs[*b as usize].hash));
    order
        .windows(2)
        .map(|w| (blobs[w[0] as usize].hash, blobs[w[1] as usize].hash))
        .find(|(a, b)| a == b)
        .map(|(a, _)| a)
}

/// A claimed time later than the store's time plus `MAX_SKEW`. An unknown
/// store time (0) gives no allowance: such a snapshot is never trusted to
/// be the newest.
pub fn dated_ahead(claimed: u64, stored: u64) -> bool {
    claimed > stored.saturating_add(MAX_SKEW)
}

/// Decompress zstd `data` into at most `limit` bytes; more is an error
/// (after `limit` bytes, not after the whole bomb).
pub fn decompress_bounded(data: &[u8], limit: u64) -> std::result::Result<Vec<u8>, String> {
    let dec = zstd::Decoder::new(data).map_err(|e| format!("not zstd-compressed: {e}"))?;
    crate::store::read_bounded(dec, limit)
        .map_err(|e| format!("not zstd-compressed: {e}"))?
        .ok_or_else(|| {
            format!(
                "more than {} decompressed; not read",
                crate::human_bytes(limit)
            )
        })
}

/// One snapshot as a listing shows it: its id and when its manifest was
/// stored, by the store's clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: String,
    pub stored: u64,
    /// Its manifest's size.
    pub size: u64,
}

impl Listed {
    pub fn dated_ahead(&self) -> bool {
        let claimed = layout::parse_id(&self.id).map_or(u64::MAX, |p| p.time);
        dated_ahead(claimed, self.stored)
    }
}

/// The snapshots with a manifest in `manifests` (a listing of
/// `metadata/`), in the order of `layout::id_order`.
pub fn snapshots_in(metadata: &[ObjectInfo]) -> Vec<Listed> {
    let mut out: Vec<Listed> = metadata
        .iter()
        .filter_map(|o| match layout::parse(&o.key) {
            Some(layout::Key::Manifest(id)) => Some(Listed {
                id: id.to_string(),
                stored: o.modified,
                size: o.size,
            }),
            _ => None,
        })
        .collect();
    out.sort_by(|a, b| layout::id_order(&a.id, &b.id));
    out
}

/// Every complete snapshot (one that has a manifest), oldest first.
pub fn list(store: &dyn Store) -> Result<Vec<Listed>> {
    Ok(snapshots_in(&store.list(layout::METADATA)?.objects))
}

/// Read the manifest of `listed`, in its compact form.
pub fn load(store: &dyn Store, listed: &Listed) -> Result<Parsed> {
    load_with_bytes(store, listed).map(|(p, _)| p)
}

/// `load`, and the manifest as stored (what its signature is over).
pub fn load_with_bytes(store: &dyn Store, listed: &Listed) -> Result<(Parsed, Vec<u8>)> {
    let key = layout::manifest(&listed.id);
    let raw = store.get(&key, MANIFEST_MAX)?;
    let mut p = parse(&key, &raw)?;
    p.summary.stored = listed.stored;
    Ok((p, raw))
}

/// What a listing shows of the snapshot `listed`: its manifest, read,
/// checked, and all but the blob list kept.
pub fn load_summary(store: &dyn Store, listed: &Listed) -> Result<Summary> {
    load(store, listed).map(|p| p.summary)
}

/// The order of snapshots everywhere.
pub fn order(a: &Summary, b: &Summary) -> Ordering {
    layout::id_order(&a.id, &b.id)
}

/// Which snapshots `latest` may be (and a search looks at): those of one
/// host and one snapshot name, when given. Empty: any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Narrow {
    /// `--host HOST`: compared with the id's host part, which is the host
    /// name as ids spell it (`layout::sanitize_host`).
    pub host: Option<String>,
    /// `--name NAME`
    pub name: Option<String>,
}

impl Narrow {
    /// Whether snapshot `id` is of this host and name.
    pub fn admits(&self, id: &str) -> bool {
        let Some(p) = layout::parse_id(id) else {
            return self.host.is_none() && self.name.is_none();
        };
        self.host
            .as_deref()
            .is_none_or(|h| layout::sanitize_host(h) == p.host)
            && self.name.as_deref().is_none_or(|n| n == p.name)
    }

    /// `latest of host H, name N`, for messages.
    fn describe(&self, what: &str) -> String {
        let mut s = what.to_string();
        let mut sep = " of ";
        if let Some(h) = &self.host {
            s.push_str(&format!("{sep}host {h}"));
            sep = ", ";
        }
        if let Some(n) = &self.name {
            s.push_str(&format!("{sep}name {n}"));
        }
        crate::error::one_line(s)
    }
}

/// Resolve `latest` (the newest snapshot not dated ahead) or check that a
/// full id is in the store.
pub fn resolve(store: &dyn Store, id: &str) -> Result<String> {
    resolve_narrowed(store, id, &Narrow::default())
}

/// Like `resolve`, with `latest` the newest snapshot of `narrow`'s host
/// and name; a full id must be of them too.
pub fn resolve_narrowed(store: &dyn Store, id: &str, narrow: &Narrow) -> Result<String> {
    pick(&list(store)?, id, narrow)
}

/// `resolve_narrowed` over a listing already made (`all`, oldest first).
pub fn pick(all: &[Listed], id: &str, narrow: &Narrow) -> Result<String> {
    if id == "latest" {
        return all
            .iter()
            .rev()
            .find(|l| !l.dated_ahead() && narrow.admits(&l.id))
            .map(|l| l.id.clone())
            .ok_or_else(|| {
                Error::UnknownSnapshot(if *narrow == Narrow::default() {
                    "latest (the store has no snapshots)".into()
                } else {
                    narrow.describe("latest")
                })
            });
    }
    if !all.iter().any(|l| l.id == id) {
        return Err(Error::UnknownSnapshot(crate::error::one_line(
            id.to_string(),
        )));
    }
    if !narrow.admits(id) {
        return Err(Error::Usage(format!(
            "snapshot {} is not {}",
            crate::error::one_line(id.to_string()),
            narrow.describe("one")
        )));
    }
    Ok(id.to_string())
}

/// The id to use for a snapshot whose plain id for this second is `base`:
/// `base` if no object uses it, else `base.N` one past the highest suffix
/// stored (a purged id is never reused: ids only grow). `None` past `.9`:
/// wait for the next second.
pub fn next_free_id(store: &dyn Store, base: &str) -> Result<Option<String>> {
    let mut next = 0u32;
    let listing = store.list(&format!("{}{base}", layout::METADATA))?;
    for o in &listing.objects {
        let id = match layout::parse(&o.key) {
            Some(layout::Key::Manifest(id) | layout::Key::Metadata(id)) => id,
            _ => continue,
        };
        let n = match id.strip_prefix(base) {
            Some("") => 1,
            Some(rest) => match rest.strip_prefix('.').and_then(|n| n.parse::<u32>().ok()) {
                Some(n) => n + 1,
                None => continue,
            },
            None => continue,
        };
        next = next.max(n);
    }
    Ok(match next {
        0..=9 => Some(layout::with_seq(base, next)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_metadata_sum_is_read_only_beside_a_first() {
        let key = layout::manifest("h_n_1970-01-01T000005Z");
        let mut m = sample();
        m.metadata_sha256 = Some([1; 32]);
        m.metadata_sha256_also = Some([2; 32]);
        let p = parse(&key, &m.to_bytes().unwrap()).unwrap();
        assert_eq!(p.metadata_sums(), vec![[1; 32], [2; 32]]);
        assert_eq!(
            Manifest::from_bytes(&key, &m.to_bytes().unwrap()).unwrap(),
            m
        );
        // Forged: a second without a first, or not a SHA-256.
        m.metadata_sha256 = None;
        let e = parse(&key, &m.to_bytes().unwrap()).unwrap_err().to_string();
        assert!(e.contains("metadata_sha256_also without"), "{e}");
        let text = String::from_utf8(zstd::decode_all(&sample().to_bytes().unwrap()[..]).unwrap())
            .unwrap()
            .replace(
                "\"metadata_size\":3",
                "\"metadata_size\":3,\"metadata_sha256\":\"00\",\"metadata_sha256_also\":\"zz\"",
            );
        let packed = zstd::bulk::compress(text.as_bytes(), 3).unwrap();
        let e = parse(&key, &packed).unwrap_err().to_string();
        assert!(e.contains("is not a SHA-256"), "{e}");
    }

    fn sample() -> Manifest {
        Manifest {
            id: "h_n_1970-01-01T000005Z".into(),
            hostname: "h".into(),
            name: "n".into(),
            time: 5,
            blobs: vec![(layout::blob(&[0xab; 32]), 10)],
            metadata_size: 3,
            metadata_sha256: None,
            metadata_sha256_also: None,
        }
    }

    const KEY: &str = "metadata/h_n_1970-01-01T000005Z/manifest.json.zst";

    fn packed(json: &str) -> Vec<u8> {
        zstd::bulk::compress(json.as_bytes(), 3).unwrap()
    }

    #[test]
    fn round_trip_and_garbage() {
        let m = sample();
        assert_eq!(
            Manifest::from_bytes(KEY, &m.to_bytes().unwrap()).unwrap(),
            m
        );
        assert_eq!(m.summary(0).total_size(), 13);
        assert!(Manifest::from_bytes(KEY, b"garbage").is_err());
        for evil in [
            r#"{"format":1,"id":"h_n_1970-01-01T000005Z","hostname":"h","name":"n","time":5,"blobs":[{"key":"../x","size":1}]}"#,
            r#"{"format":1,"id":"h_n_1970-01-01T000005Z","hostname":"h","name":"n","time":6,"blobs":[]}"#,
            r#"{"format":1,"id":"h_n_1970-01-01T000005Z","hostname":"other","name":"n","time":5,"blobs":[]}"#,
            r#"{"format":1,"id":"h_n_1970-01-01T000005Z","hostname":"h","name":"m","time":5,"blobs":[]}"#,
            r#"{"format":1,"id":"x_n_1970-01-01T000005Z","hostname":"x","name":"n","time":5,"blobs":[]}"#,
            r#"{"format":2,"id":"h_n_1970-01-01T000005Z","hostname":"h","name":"n","time":5,"blobs":[]}"#,
            r#"{"format":1,"id":"h_n_1970-01-01T000005Z","hostname":"h","name":"n","time":5}"#,
        ] {
            let e = Manifest::from_bytes(KEY, &packed(evil))
                .unwrap_err()
                .to_string();
            assert!(e.contains(KEY), "{e}");
        }
        // A newer format says so (and is damaged here: nothing is deleted
        // while it cannot be read).
        let newer = r#"{"format":2,"id":"h_n_1970-01-01T000005Z","hostname":"h","name":"n","time":5,"blobs":[]}"#;
        let e = Manifest::from_bytes(KEY, &packed(newer)).unwrap_err();
        assert!(matches!(e, Error::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("upgrade vaultik"), "{e}");
        // A host name is checked through what an id makes of it.
        let ok = r#"{"format":1,"id":"h-x_n_1970-01-01T000005Z","hostname":"h x","name":"n","time":5,"blobs":[]}"#;
        let k = "metadata/h-x_n_1970-01-01T000005Z/manifest.json.zst";
        assert_eq!(
            Manifest::from_bytes(k, &packed(ok)).unwrap().hostname,
            "h x"
        );
    }

    #[test]
    fn bombs_are_cut_at_the_limit() {
        let zeros = vec![0u8; (MANIFEST_MAX + 1) as usize];
        let bomb = zstd::bulk::compress(&zeros, 19).unwrap();
        assert!(bomb.len() < 100_000, "{}", bomb.len());
        let e = Manifest::from_bytes(KEY, &bomb).unwrap_err().to_string();
        // 32 MiB of zeros pack into 1 KiB: cut after 64 KiB.
        assert!(e.contains("more than 64.0 KiB decompressed"), "{e}");
        assert!(e.contains("16 times its stored size"), "{e}");
        // What the bound is: relative, with a floor and a ceiling.
        assert_eq!(read_limit(0), RATIO_FLOOR);
        assert_eq!(read_limit(4096), RATIO_FLOOR);
        assert_eq!(read_limit(1 << 20), 16 << 20);
        assert_eq!(read_limit(3 << 20), MANIFEST_MAX);
        assert_eq!(read_limit(usize::MAX), MANIFEST_MAX);
    }

    /// `n` blobs with random keys (SHA-256 of their number, as real keys
    /// are hashes), sorted as a backup writes them, with sizes of a few
    /// MiB, or all the same (which packs best).
    fn real(n: u32, same_size: bool) -> Manifest {
        use sha2::{Digest, Sha256};
        let mut m = sample();
        m.blobs = (0..n)
            .map(|i| {
                let h: [u8; 32] = Sha256::digest(i.to_le_bytes()).into();
                let size = if same_size {
                    64 << 20
                } else {
                    1 + u64::from(h[0]) * 262_139 + u64::from(h[1])
                };
                (layout::blob(&h), size)
            })
            .collect();
        m.blobs.sort();
        m
    }

    /// The measurement behind `RATIO`, and real manifests of every size,
    /// the largest a backup writes included, read back.
    #[test]
    fn real_manifests_compress_about_2x() {
        for (n, same_size) in [
            (0, false),
            (1, false),
            (10, false),
            (100, false),
            (100, true),
            (10_000, false),
            (10_000, true),
            (300_000, false),
            (300_000, true),
        ] {
            let m = real(n, same_size);
            let packed = m.to_bytes().unwrap();
            let text = zstd::stream::decode_all(&packed[..]).unwrap();
            let ratio = text.len() as f64 / packed.len() as f64;
            eprintln!(
                "{n} blobs (same size: {same_size}): {} bytes of JSON, {} compressed: {ratio:.2}x",
                text.len(),
                packed.len()
            );
            assert!(ratio < (RATIO / 4) as f64, "{n} blobs: {ratio:.2}x");
            if n == 300_000 {
                // Near the ceiling: the largest manifest a backup writes.
                assert!(text.len() as u64 > MANIFEST_MAX * 9 / 10, "{}", text.len());
            }
            let back = Manifest::from_bytes(KEY, &packed).unwrap();
            assert!(back == m, "{n} blobs read back");
            let p = parse(KEY, &packed).unwrap();
            assert_eq!(p.summary, m.summary(0));
            assert_eq!(p.blobs.len(), n as usize);
        }
    }

    /// `text` compressed and padded (a skippable zstd frame) to exactly
    /// `len` bytes.
    fn padded(text: &[u8], len: usize) -> Vec<u8> {
        let mut data = zstd::bulk::compress(text, 19).unwrap();
        assert!(
            data.len() + 8 <= len,
            "{} compressed, {len} wanted",
            data.len()
        );
        let pad = len - data.len() - 8;
        data.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        data.extend_from_slice(&(pad as u32).to_le_bytes());
        data.resize(len, 0);
        data
    }

    /// A forged manifest that packs better than any real one is read when
    /// stored in at least 1/RATIO of its size, refused by one byte less,
    /// after reading no more than the bound.
    #[test]
    fn a_manifest_is_read_up_to_the_ratio() {
        // Distinct keys of little entropy: valid, and packs about 20x.
        let mut m = sample();
        m.blobs = (0..20_000u32)
            .map(|i| {
                let mut h = [0u8; 32];
                h[28..].copy_from_slice(&i.to_be_bytes());
                (layout::blob(&h), 1)
            })
            .collect();
        let text = serde_json::to_vec(&JsonOut {
            format: 1,
            id: &m.id,
            hostname: &m.hostname,
            name: &m.name,
            time: m.time,
            metadata_size: m.metadata_size,
            metadata_sha256: None,
            metadata_sha256_also: None,
            blobs: m
                .blobs
                .iter()
                .map(|(k, s)| JsonBlobOut { key: k, size: *s })
                .collect(),
        })
        .unwrap();
        let least = text.len().div_ceil(RATIO as usize);
        assert!(text.len() as u64 > RATIO_FLOOR);
        let p = parse(KEY, &padded(&text, least)).unwrap();
        assert_eq!(p.summary.blobs, 20_000);
        let e = parse(KEY, &padded(&text, least - 1))
            .unwrap_err()
            .to_string();
        let limit = crate::human_bytes((least as u64 - 1) * RATIO);
        assert!(
            e.contains(&format!("more than {limit} decompressed")),
            "{e}"
        );
        // A backup would refuse to write it in the first place.
        let e = m.to_bytes().unwrap_err().to_string();
        assert!(e.contains("more than the 16:1 any reader accepts"), "{e}");
        // Below the floor, any ratio is read.
        m.blobs.truncate(100);
        assert!(Manifest::from_bytes(KEY, &m.to_bytes().unwrap()).is_ok());
    }

    #[test]
    fn the_compact_form_and_its_checks() {
        let m = real(50, false);
        let p = parse(KEY, &m.to_bytes().unwrap()).unwrap();
        // Each blob its hash and size, in the order listed.
        for (b, (key, size)) in p.blobs.iter().zip(&m.blobs) {
            assert_eq!(&layout::blob(&b.hash), key);
            assert_eq!(b.size, *size);
        }
        assert_eq!(p.summary.blobs, 50);
        assert_eq!(p.summary.total_size(), m.summary(0).total_size());
        let head = r#"{"format":1,"id":"h_n_1970-01-01T000005Z","hostname":"h","name":"n","time":5,"blobs":"#;
        let key = |h: &[u8; 32]| layout::blob(h);
        let a = key(&[0xab; 32]);
        let b = key(&[0xcd; 32]);
        let with = |blobs: &str| packed(&format!("{head}{blobs}}}"));
        // Listed twice: refused, naming the blob.
        let e = parse(
            KEY,
            &with(&format!(
                r#"[{{"key":"{a}","size":1}},{{"key":"{b}","size":1}},{{"key":"{a}","size":2}}]"#
            )),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(KEY) && e.contains(&format!("lists blob {a} twice")),
            "{e}"
        );
        assert!(
            Manifest::from_bytes(
                KEY,
                &with(&format!(
                    r#"[{{"key":"{a}","size":1}},{{"key":"{a}","size":1}}]"#
                ))
            )
            .is_err()
        );
        // Keys that are not blob keys of the layout.
        for bad in [
            a.to_uppercase(),
            a.replacen("blobs/ab/ab", "blobs/ab/cd", 1),
            format!("{a}0"),
            a.replace("blobs/", "blobs/../"),
            "metadata/h_n_1970-01-01T000005Z/db.zst.age".into(),
            String::new(),
        ] {
            let e = parse(KEY, &with(&format!(r#"[{{"key":"{bad}","size":1}}]"#)))
                .unwrap_err()
                .to_string();
            assert!(e.contains("a blob key outside the layout"), "{bad}: {e}");
        }
        for bad in [
            r#"[{"key":1,"size":1}]"#,
            r#"[{"key":null,"size":1}]"#,
            r#"[{"size":1}]"#,
            r#"[{"key":"KEY","size":-1}]"#,
            r#"{"key":"KEY","size":1}"#,
        ] {
            let e = parse(KEY, &with(&bad.replace("KEY", &a))).unwrap_err();
            assert!(matches!(e, Error::Corrupt { .. }), "{bad}: {e}");
        }
        // A host name past HOSTNAME_MAX is refused by readers and writers.
        let long = "h".repeat(HOSTNAME_MAX + 1);
        let json = format!(
            r#"{{"format":1,"id":"h_n_1970-01-01T000005Z","hostname":"{long}","name":"n","time":5,"blobs":[]}}"#
        );
        let e = parse(KEY, &packed(&json)).unwrap_err().to_string();
        assert!(e.contains("a host name of 256 bytes"), "{e}");
        let mut m = sample();
        m.hostname = long;
        assert!(
            m.to_bytes()
                .unwrap_err()
                .to_string()
                .contains("set a shorter")
        );
    }

    #[test]
    fn a_manifest_too_big_to_read_is_never_written() {
        let mut m = sample();
        m.blobs = (0..400_000u32)
            .map(|i| {
                let mut h = [0u8; 32];
                h[..4].copy_from_slice(&i.to_le_bytes());
                (layout::blob(&h), 1 << 26)
            })
            .collect();
        let e = m.to_bytes().unwrap_err().to_string();
        assert!(e.contains("raise blob_size_limit"), "{e}");
    }

    #[test]
    fn latest_narrowed_to_a_host_and_a_name() {
        let t = 1_795_422_615;
        let l = |id: &str| Listed {
            id: id.into(),
            stored: t + 3600,
            size: 1,
        };
        let all = vec![
            l("web1_etc_2026-11-23T083015Z"),
            l("web2_etc_2026-11-23T083016Z"),
            l("web1_home_2026-11-23T083017Z"),
            l("web2_home_2026-11-23T083018Z"),
            // Dated ahead: never latest, even of its own host.
            l("web1_etc_2099-01-01T000000Z"),
        ];
        let n = |host: Option<&str>, name: Option<&str>| Narrow {
            host: host.map(Into::into),
            name: name.map(Into::into),
        };
        let latest = |narrow: &Narrow| pick(&all, "latest", narrow);
        assert_eq!(
            latest(&Narrow::default()).unwrap(),
            "web2_home_2026-11-23T083018Z"
        );
        assert_eq!(
            latest(&n(Some("web1"), None)).unwrap(),
            "web1_home_2026-11-23T083017Z"
        );
        assert_eq!(
            latest(&n(None, Some("etc"))).unwrap(),
            "web2_etc_2026-11-23T083016Z"
        );
        assert_eq!(
            latest(&n(Some("web1"), Some("etc"))).unwrap(),
            "web1_etc_2026-11-23T083015Z"
        );
        let e = latest(&n(Some("db1"), Some("etc"))).unwrap_err();
        assert!(matches!(e, Error::UnknownSnapshot(_)), "{e}");
        assert!(
            e.to_string().contains("latest of host db1, name etc"),
            "{e}"
        );
        // A full id must be of the host and name asked for.
        assert!(pick(&all, "web1_etc_2026-11-23T083015Z", &n(Some("web1"), None)).is_ok());
        let e = pick(&all, "web1_etc_2026-11-23T083015Z", &n(Some("web2"), None)).unwrap_err();
        assert!(e.to_string().contains("is not one of host web2"), "{e}");
        assert!(matches!(
            pick(&all, "web9_etc_2026-11-23T083015Z", &Narrow::default()),
            Err(Error::UnknownSnapshot(_))
        ));
        // An empty store says so.
        let e = pick(&[], "latest", &Narrow::default()).unwrap_err();
        assert!(e.to_string().contains("has no snapshots"), "{e}");
        // A host name as the config spells it is compared as ids spell it.
        assert!(n(Some("a b"), None).admits("a-b_etc_2026-11-23T083015Z"));
    }

    #[test]
    fn snapshots_dated_ahead_of_the_store() {
        let l = |id: &str, stored| Listed {
            id: id.into(),
            stored,
            size: 1,
        };
        let t = 1_795_422_615; // 2026-11-23T083015Z
        assert!(!l("h_n_2026-11-23T083015Z", t).dated_ahead());
        assert!(!l("h_n_2026-11-23T083015Z", t - MAX_SKEW).dated_ahead());
        assert!(l("h_n_2026-11-23T083015Z", t - MAX_SKEW - 1).dated_ahead());
        assert!(l("h_n_2099-01-01T000000Z", t).dated_ahead());
        // Earlier than the store's time: a slow upload or a copied bucket.
        assert!(!l("h_n_2001-01-01T000000Z", t).dated_ahead());
        assert!(l("h_n_2026-11-23T083015Z", 0).dated_ahead());
    }
}
