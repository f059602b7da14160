//! The clear manifest of a snapshot (`metadata/<id>/manifest.json.zst`):
//! its id, host, name and time and the keys and sizes of the blobs it
//! needs, readable without the private key (listing, purge, garbage
//! collection). And which snapshots the store holds, in the one order
//! every command uses.
//!
//! Anyone who can write to the store can write a manifest, so reading one
//! is bounded (`MANIFEST_MAX`, decompressed) and checked: the id must be
//! the one it is stored under, its host, name and time those the id
//! spells, every blob a key of the layout. A snapshot's claimed time comes
//! from its id; one that claims to be later than the store's own time for
//! its manifest (`LastModified`, or the file's mtime in a directory store)
//! plus `MAX_SKEW` is *dated ahead*: shown flagged, never `latest`, and
//! left out of retention.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout;
use crate::store::{ObjectInfo, Store};

/// The manifest's format (unchanged since the first).
pub const FORMAT_VERSION: u64 = 1;

/// A manifest is at most this big, compressed and decompressed: 32 MiB is
/// about 320,000 blobs (20 TB at the default blob size, 320 GB at the
/// smallest), and a bomb of zeros costs at most that much memory, once.
/// A backup refuses to write a larger one.
pub const MANIFEST_MAX: u64 = 32 << 20;

/// How far ahead of the store's clock a snapshot may date itself: S3
/// refuses requests signed with a clock more than 15 minutes off, so an
/// honest writer is never further ahead than that.
pub const MAX_SKEW: u64 = 15 * 60;

/// The clear manifest of one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub id: String,
    pub hostname: String,
    pub name: String,
    /// UTC, seconds since the epoch: the time the id spells.
    pub time: u64,
    pub blobs: Vec<(String, u64)>,
    pub metadata_size: u64,
    /// When the store says the manifest was written (0 when not known, or
    /// for a manifest not read from a listing).
    pub stored: u64,
}

/// The manifest as JSON.
#[derive(Serialize, Deserialize)]
struct Json {
    format: u64,
    id: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    name: String,
    time: u64,
    #[serde(default)]
    metadata_size: u64,
    blobs: Vec<JsonBlob>,
}

#[derive(Serialize, Deserialize)]
struct JsonBlob {
    key: String,
    size: u64,
}

impl Manifest {
    /// The compressed manifest, or an error when it would be larger than a
    /// reader accepts (too many blobs).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let v = Json {
            format: FORMAT_VERSION,
            id: self.id.clone(),
            hostname: self.hostname.clone(),
            name: self.name.clone(),
            time: self.time,
            metadata_size: self.metadata_size,
            blobs: self
                .blobs
                .iter()
                .map(|(k, s)| JsonBlob {
                    key: k.clone(),
                    size: *s,
                })
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
        Ok(zstd::bulk::compress(&text, 3).expect("compressing a buffer in memory"))
    }

    /// Read and check the manifest stored under `key`.
    pub fn from_bytes(key: &str, data: &[u8]) -> Result<Manifest> {
        let bad = |msg: &str| Error::corrupt(format!("manifest {key}"), msg);
        let text = decompress_bounded(data, MANIFEST_MAX).map_err(|e| bad(&e))?;
        let v: Json =
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
        if parts.time != v.time
            || parts.name != v.name
            || parts.host != layout::sanitize_host(&v.hostname)
        {
            return Err(bad("host, name or time does not match its id"));
        }
        let mut blobs = Vec::with_capacity(v.blobs.len());
        for b in v.blobs {
            if !layout::is_blob(&b.key) {
                return Err(bad("a blob key outside the layout"));
            }
            blobs.push((b.key, b.size));
        }
        Ok(Manifest {
            id: v.id,
            hostname: v.hostname,
            name: v.name,
            time: v.time,
            blobs,
            metadata_size: v.metadata_size,
            stored: 0,
        })
    }

    pub fn total_size(&self) -> u64 {
        self.blobs
            .iter()
            .fold(self.metadata_size, |t, (_, s)| t.saturating_add(*s))
    }

    /// Whether it claims a time later than the store's (see the module doc).
    pub fn dated_ahead(&self) -> bool {
        dated_ahead(self.time, self.stored)
    }
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

/// Read the manifest of `listed`.
pub fn load(store: &dyn Store, listed: &Listed) -> Result<Manifest> {
    let key = layout::manifest(&listed.id);
    let mut m = Manifest::from_bytes(&key, &store.get(&key, MANIFEST_MAX)?)?;
    m.stored = listed.stored;
    Ok(m)
}

/// The order of snapshots everywhere.
pub fn order(a: &Manifest, b: &Manifest) -> Ordering {
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

    fn sample() -> Manifest {
        Manifest {
            id: "h_n_1970-01-01T000005Z".into(),
            hostname: "h".into(),
            name: "n".into(),
            time: 5,
            blobs: vec![(layout::blob(&[0xab; 32]), 10)],
            metadata_size: 3,
            stored: 0,
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
        assert_eq!(m.total_size(), 13);
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
        assert!(e.contains("more than 32.0 MiB"), "{e}");
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
