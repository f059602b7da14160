//! The store's layout: every object key vaultik writes is built here, and
//! every key read from a listing is parsed here. A key that does not parse
//! is a foreign object: never read, never deleted, only reported.
//!
//! ```text
//! blobs/aa/bb/<sha256 of the encrypted blob, 64 hex>    aa, bb: its first 4 hex digits
//! metadata/<id>/db.zst.age                              encrypted metadata database
//! metadata/<id>/manifest.json.zst                       clear manifest
//! gc/marked/<compact time>/<64 hex>                     a blob marked for deletion
//! gc/pending/<compact time>-<16 hex>.json               deletion mark (before 0.2)
//! store/<format>/<32 hex>                               the store's identity
//! store.json                                            the same, before 0.2
//! check/<32 hex>/<digit>                                `store check`'s probes
//! ```
//!
//! The identity is in its key's name so that a backup learns it from a
//! listing: a host may have no right to read objects at all.
//!
//! A snapshot id is `<host>_<name>_<compact UTC time>[.<1-9>]`: host and
//! name use `[A-Za-z0-9.-]` only (no `/`, no `_`), so an id is one path
//! segment and splits one way.

use std::cmp::Ordering;

use crate::chunk::hex;
use crate::time;

pub const BLOBS: &str = "blobs/";
pub const METADATA: &str = "metadata/";
pub const MARKS: &str = "gc/pending/";
/// Blobs marked for deletion, named (a backup learns them from a listing).
pub const MARKED: &str = "gc/marked/";
/// The store's identity as stores made before identities were named in
/// keys hold it (`store/identity.rs`).
pub const IDENTITY: &str = "store.json";
/// Where identities are named in keys.
pub const IDS: &str = "store/";
/// Where `store check` writes its probes (and deletes them).
pub const PROBES: &str = "check/";

const DB_FILE: &str = "db.zst.age";
const MANIFEST_FILE: &str = "manifest.json.zst";
const SIGNATURE_FILE: &str = "manifest.sig";

/// The longest host part of an id (Linux's HOST_NAME_MAX); longer host
/// names are cut.
const HOST_MAX: usize = 64;
/// The longest snapshot name (the config refuses longer ones).
pub const NAME_MAX: usize = 64;
/// The longest host name a manifest may carry, whole (the DNS limit is
/// 253, a Linux host name 64): every reader keeps it for every snapshot,
/// so a forged one must not be a megabyte. The config refuses longer ones.
pub const HOSTNAME_MAX: usize = 255;

/// An object key of the layout, typed: built with [`Key::to_key`], read
/// back with [`parse`], the two written once, here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    /// A blob, named by the SHA-256 of its encrypted bytes.
    Blob([u8; 32]),
    /// A snapshot's encrypted metadata database.
    Metadata(&'a str),
    /// A snapshot's clear manifest.
    Manifest(&'a str),
    /// The signature of a snapshot's manifest by the host that wrote it.
    Signature(&'a str),
    /// A deletion mark: when it was made, and the first 8 bytes of the
    /// SHA-256 of its content.
    Mark { time: u64, tag: [u8; 8] },
    /// A blob marked for deletion by a purge at `time` (an empty object).
    Marked { time: u64, blob: [u8; 32] },
    /// The store's identity, in `store.json` (before 0.2).
    Identity,
    /// The store's identity, named: the layout's format and the id (32
    /// lower-case hex digits).
    StoreId { format: u32, id: &'a str },
    /// A probe object of one `store check` run (`run`), number `n` (0-9).
    Probe { run: [u8; 16], n: u8 },
}

impl Key<'_> {
    /// The key as stored. A snapshot id that is not one (`parse_id`) makes
    /// a key that does not parse, which every store operation refuses.
    pub fn to_key(&self) -> String {
        match self {
            Key::Blob(hash) => {
                let h = hex(hash);
                format!("{BLOBS}{}/{}/{h}", &h[0..2], &h[2..4])
            }
            Key::Metadata(id) => format!("{METADATA}{id}/{DB_FILE}"),
            Key::Manifest(id) => format!("{METADATA}{id}/{MANIFEST_FILE}"),
            Key::Signature(id) => format!("{METADATA}{id}/{SIGNATURE_FILE}"),
            Key::Mark { time, tag } => format!("{MARKS}{}-{}.json", time::compact(*time), hex(tag)),
            Key::Marked { time, blob } => format!("{MARKED}{}/{}", time::compact(*time), hex(blob)),
            Key::Identity => IDENTITY.to_string(),
            Key::StoreId { format, id } => format!("{IDS}{format}/{id}"),
            Key::Probe { run, n } => format!("{PROBES}{}/{}", hex(run), n % 10),
        }
    }
}

/// What `key` is, or None when it is not a key vaultik writes.
pub fn parse(key: &str) -> Option<Key<'_>> {
    if key == IDENTITY {
        return Some(Key::Identity);
    }
    if let Some(rest) = key.strip_prefix(IDS) {
        let (format, id) = rest.split_once('/')?;
        let digits = !format.is_empty()
            && format.len() <= 6
            && !format.starts_with('0')
            && format.bytes().all(|b| b.is_ascii_digit());
        let hex = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !(digits && hex) {
            return None;
        }
        return Some(Key::StoreId {
            format: format.parse().ok()?,
            id,
        });
    }
    if let Some(rest) = key.strip_prefix(BLOBS) {
        // `aa/bb/<64 hex>` with aa and bb the first four digits.
        let b = rest.as_bytes();
        let ok = b.len() == 2 + 1 + 2 + 1 + 64
            && b[2] == b'/'
            && b[5] == b'/'
            && b[0..2] == b[6..8]
            && b[3..5] == b[8..10];
        return if ok {
            unhex(&b[6..]).map(Key::Blob)
        } else {
            None
        };
    }
    if let Some(rest) = key.strip_prefix(METADATA) {
        let (id, file) = rest.split_once('/')?;
        parse_id(id)?;
        return match file {
            DB_FILE => Some(Key::Metadata(id)),
            MANIFEST_FILE => Some(Key::Manifest(id)),
            SIGNATURE_FILE => Some(Key::Signature(id)),
            _ => None,
        };
    }
    if let Some(rest) = key.strip_prefix(MARKED) {
        let (when, blob) = rest.split_once('/')?;
        return Some(Key::Marked {
            time: time::parse_compact(when)?,
            blob: unhex(blob.as_bytes())?,
        });
    }
    if let Some(rest) = key.strip_prefix(PROBES) {
        let (run, n) = rest.split_once('/')?;
        let n = match n.as_bytes() {
            [d @ b'0'..=b'9'] => d - b'0',
            _ => return None,
        };
        return Some(Key::Probe {
            run: unhex(run.as_bytes())?,
            n,
        });
    }
    if let Some(rest) = key.strip_prefix(MARKS) {
        // `<18-byte compact time>-<16 hex>.json`
        let stem = rest.strip_suffix(".json")?;
        if stem.len() != 18 + 1 + 16 || stem.as_bytes()[18] != b'-' {
            return None;
        }
        let time = time::parse_compact(&stem[..18])?;
        let tag = unhex(&stem.as_bytes()[19..])?;
        return Some(Key::Mark { time, tag });
    }
    None
}

/// `N` bytes from exactly `2N` lower-case hex digits.
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

pub fn is_blob(key: &str) -> bool {
    matches!(parse(key), Some(Key::Blob(_)))
}

/// The key of the blob whose encrypted bytes hash to `hash`.
pub fn blob(hash: &[u8; 32]) -> String {
    Key::Blob(*hash).to_key()
}

pub fn metadata(id: &str) -> String {
    Key::Metadata(id).to_key()
}

pub fn manifest(id: &str) -> String {
    Key::Manifest(id).to_key()
}

pub fn signature(id: &str) -> String {
    Key::Signature(id).to_key()
}

/// Bytes from lower-case hex digits (an even number of them).
pub fn unhex_bytes(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 || b.len() > 1024 {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| unhex::<1>(p).map(|[x]| x))
        .collect()
}

/// A mark made at `time` whose content hashes to `digest`.
pub fn mark(time: u64, digest: &[u8; 32]) -> String {
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&digest[..8]);
    Key::Mark { time, tag }.to_key()
}

/// The parts of a snapshot id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotId<'a> {
    pub host: &'a str,
    pub name: &'a str,
    /// The time the id claims (the writer's clock, not the store's).
    pub time: u64,
    /// The `.N` suffix of a second run within the same second (0: none).
    pub seq: u32,
}

fn is_part(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The parts of `id`, or None when it is not an id vaultik makes.
pub fn parse_id(id: &str) -> Option<SnapshotId<'_>> {
    let mut parts = id.split('_');
    let (host, name, when) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !is_part(host, HOST_MAX) || !is_part(name, NAME_MAX) {
        return None;
    }
    let (t, seq) = match when.split_once('.') {
        None => (when, 0),
        Some((t, n)) => match n.as_bytes() {
            [d @ b'1'..=b'9'] => (t, u32::from(d - b'0')),
            _ => return None,
        },
    };
    Some(SnapshotId {
        host,
        name,
        time: time::parse_compact(t)?,
        seq,
    })
}

/// The order of snapshots everywhere (`snapshot list`, `latest`,
/// retention): by claimed time, then `.N`, then id.
pub fn id_order(a: &str, b: &str) -> Ordering {
    let key = |id| parse_id(id).map(|p| (p.time, p.seq));
    key(a).cmp(&key(b)).then_with(|| a.cmp(b))
}

/// `<host>_<name>_<UTC time>`.
pub fn make_id(hostname: &str, name: &str, unix: u64) -> String {
    format!("{}_{name}_{}", sanitize_host(hostname), time::compact(unix))
}

/// `base` with the suffix of the `n`th further run within its second.
pub fn with_seq(base: &str, n: u32) -> String {
    if n == 0 {
        base.to_string()
    } else {
        format!("{base}.{n}")
    }
}

/// A host name in the characters an id allows (`_` and the rest become
/// `-`; a leading `.` too), at most `HOST_MAX` bytes.
pub fn sanitize_host(h: &str) -> String {
    let mut s: String = h
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(HOST_MAX)
        .collect();
    if s.starts_with('.') {
        s.replace_range(0..1, "-");
    }
    if s.is_empty() { "host".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn keys_round_trip() {
        let mut hash = [0u8; 32];
        hash[0] = 0x01;
        hash[1] = 0x23;
        hash[31] = 0xfe;
        let b = blob(&hash);
        assert!(b.starts_with("blobs/01/23/0123"));
        assert_eq!(parse(&b), Some(Key::Blob(hash)));
        let id = make_id("web_1", "etc", 0);
        assert_eq!(id, "web-1_etc_1970-01-01T000000Z");
        let m = mark(1_795_422_615, &[0xab; 32]);
        assert_eq!(m, "gc/pending/2026-11-23T083015Z-abababababababab.json");
        for key in [
            Key::Blob(hash),
            Key::Metadata(&id),
            Key::Manifest(&id),
            Key::Mark {
                time: 1_795_422_615,
                tag: [0xab, 0, 1, 2, 3, 4, 5, 0xff],
            },
            Key::Identity,
            Key::Probe {
                run: [0x5a; 16],
                n: 7,
            },
            Key::Marked {
                time: 1_795_422_615,
                blob: hash,
            },
            Key::StoreId {
                format: 12,
                id: "0123456789abcdef0123456789abcdef",
            },
        ] {
            let k = key.to_key();
            assert_eq!(parse(&k), Some(key), "{k}");
        }
    }

    #[test]
    fn foreign_keys_are_refused() {
        let good = format!("blobs/01/23/0123{}", &H[4..]);
        assert!(is_blob(&good));
        for bad in [
            format!("blobs/01/24/0123{}", &H[4..]),
            format!("blobs/01/23/0123{}", &H[3..]),
            format!("blobs/01/23/0123{}/x", &H[4..]),
            format!("blobs/01/23/0123{}", H[4..].to_uppercase()),
            format!("blobs/01/23/../23/0123{}", &H[4..]),
            "blobs/".into(),
            "metadata/../x/db.zst.age".into(),
            "metadata/a_b_1970-01-01T000000Z/other".into(),
            "metadata/a_b_1970-01-01T000000Z/db.zst.age/x".into(),
            "metadata/a/b_c_1970-01-01T000000Z/db.zst.age".into(),
            "metadata/a_b_c_1970-01-01T000000Z/db.zst.age".into(),
            "metadata/.a_b_1970-01-01T000000Z/db.zst.age".into(),
            "metadata/a_b_1970-01-01T000000Z.0/db.zst.age".into(),
            "metadata/a_b_1970-01-01T000000Z.10/db.zst.age".into(),
            "metadata/a_b_1970-01-01T000000Z\u{1b}[2J/db.zst.age".into(),
            "gc/pending/x.json".into(),
            "gc/pending/2026-11-23T083015Z-abababababababab.json.tmp".into(),
            "gc/pending/2026-11-23T083015Z-ababababababab.json".into(),
            "gc/pending/../../blobs/x".into(),
            format!("gc/marked/2026-11-23T083015Z/{}/x", &H),
            format!("gc/marked/2026-11-23T083015/{}", &H),
            format!("gc/marked/2026-11-23T083015Z/{}", &H[1..]),
            "store/1/0123456789abcdef0123456789abcde".into(),
            "store/1/0123456789abcdef0123456789abcdeF".into(),
            "store/01/0123456789abcdef0123456789abcdef".into(),
            "store/1/0123456789abcdef0123456789abcdef/x".into(),
            "store//0123456789abcdef0123456789abcdef".into(),
            "store/1/../../0123456789abcdef0123456789ab".into(),
            "other/thing".into(),
            "".into(),
        ] {
            assert_eq!(parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ids_parse_and_order() {
        let p = parse_id("web1_etc_2026-11-23T083015Z.3").unwrap();
        assert_eq!(
            (p.host, p.name, p.time, p.seq),
            ("web1", "etc", 1_795_422_615, 3)
        );
        let mut ids = vec![
            "b_x_2026-11-23T083015Z.1",
            "a_x_2026-11-23T083016Z",
            "b_x_2026-11-23T083015Z",
            "a_x_2026-11-23T083015Z",
        ];
        ids.sort_by(|a, b| id_order(a, b));
        assert_eq!(
            ids,
            [
                "a_x_2026-11-23T083015Z",
                "b_x_2026-11-23T083015Z",
                "b_x_2026-11-23T083015Z.1",
                "a_x_2026-11-23T083016Z"
            ]
        );
        assert_eq!(sanitize_host(".evil/../x"), "-evil-..-x");
        assert_eq!(sanitize_host(&"h".repeat(300)).len(), HOST_MAX);
        assert!(parse_id(&make_id(&"h".repeat(300), "n", 5)).is_some());
    }
}
