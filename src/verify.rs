//! Checking a snapshot. Shallow (no key): every blob its manifest lists
//! is in the store with the size it records, and its metadata exists.
//! Checksums (no key, nothing downloaded, cold blobs too): also the SHA-256
//! the server stored with each blob is the one its key names. Deep (the
//! private key): every chunk of every blob is read back through age and
//! zstd and checked against its SHA-256; failing blobs are named with the
//! files they affect.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use age::x25519;
use rayon::prelude::*;

use crate::blob::{BlobReader, Location};
use crate::chunk::ChunkId;
use crate::error::{DbContext, Error, Result};
use crate::layout;
use crate::manifest::{self, Manifest};
use crate::store::Store;

/// A blob's key and size, and its chunks in offset order.
type BlobChunks = (String, u64, Vec<(ChunkId, Location)>);

/// One thing wrong with a snapshot.
pub struct Problem {
    /// `missing`, `size`, `manifest`, `corrupt`, or `replaced` (a blob
    /// written over or deleted on a versioned bucket: the message says
    /// whether the version vaultik wrote was found).
    pub kind: &'static str,
    pub key: String,
    pub message: String,
    /// The files a corrupt blob affects (deep checks).
    pub files: Vec<String>,
}

/// What a check found.
pub struct Report {
    pub id: String,
    pub manifest: Manifest,
    pub chunks_checked: u64,
    pub problems: Vec<Problem>,
    /// With checksums: blobs whose stored SHA-256 matched their key, and
    /// blobs the server kept none for.
    pub checksums: Option<Checksums>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Checksums {
    pub matched: usize,
    pub missing: usize,
    /// Whether the store keeps checksums at all.
    pub kept: bool,
}

/// How deep a check goes.
pub enum Depth<'a> {
    /// Sizes, from one listing.
    Shallow,
    /// Sizes, and the SHA-256 the server stored with each blob.
    Checksums,
    /// Every chunk, read with the key; `gate` first sees the blobs to
    /// read (the thaw of cold ones).
    Deep {
        identities: &'a [x25519::Identity],
        gate: crate::thaw::Gate<'a>,
    },
}

/// Check snapshot `id` (a full id) as deep as `depth` says.
pub fn verify(store: &dyn Store, id: String, depth: Depth<'_>) -> Result<Report> {
    let mkey = layout::manifest(&id);
    let manifest = Manifest::from_bytes(&mkey, &store.get(&mkey, manifest::MANIFEST_MAX)?)?;
    // On a versioned bucket, a deep check first finds, for each blob written
    // over or deleted, the version vaultik wrote (then checked like any
    // other), and names what was done to it.
    let mut replaced = Vec::new();
    if let Depth::Deep { .. } = depth {
        let found = Mutex::new(Vec::new());
        store.choose_versions(&manifest.blobs, &|m: &str| {
            found.lock().expect("lock").push(m.to_string())
        })?;
        for message in found.into_inner().expect("lock") {
            let (key, rest) = message.split_once(' ').unwrap_or((&message, ""));
            replaced.push(Problem {
                kind: "replaced",
                key: key.to_string(),
                message: rest.to_string(),
                files: Vec::new(),
            });
        }
    }
    let (mut problems, bad_blobs) = shallow(store, &id, &manifest)?;
    problems.extend(replaced);
    let mut chunks_checked = 0u64;
    let mut checksums = None;
    let dkey = layout::metadata(&id);
    if let Depth::Checksums = depth {
        let (sums, found) = check_sums(store, &manifest, &bad_blobs)?;
        checksums = Some(sums);
        problems.extend(found);
    }
    if let Depth::Deep { identities, gate } = depth {
        if problems.iter().any(|p| p.key == dkey) {
            return Ok(Report {
                id,
                manifest,
                chunks_checked,
                problems,
                checksums,
            });
        }
        // The metadata the manifest names (when it names one), always.
        let conn = crate::metadata::open(
            store,
            &id,
            identities,
            &std::env::temp_dir(),
            &crate::manifest::sums(manifest.metadata_sha256, manifest.metadata_sha256_also),
        )?;
        let blobs = blob_chunks(&conn).map_err(|e| conn.explain(e))?;
        let listed: HashSet<&str> = manifest.blobs.iter().map(|(k, _)| k.as_str()).collect();
        for (key, _, _) in &blobs {
            if !listed.contains(key.as_str()) {
                problems.push(Problem {
                    kind: "manifest",
                    key: key.clone(),
                    message: "blob is needed by the metadata but not listed in the manifest".into(),
                    files: Vec::new(),
                });
            }
        }
        let present: Vec<&BlobChunks> =
            blobs.iter().filter(|b| !bad_blobs.contains(&b.0)).collect();
        let needed: Vec<(String, u64)> = present.iter().map(|b| (b.0.clone(), b.1)).collect();
        gate(&needed)?;
        let (checked, failed) = read_blobs(store, &present, identities)?;
        chunks_checked = checked;
        problems.extend(affected(&conn, failed).map_err(|e| conn.explain(e))?);
    }
    Ok(Report {
        id,
        manifest,
        chunks_checked,
        problems,
        checksums,
    })
}

/// Ask the server for the SHA-256 it stored with each blob of the
/// manifest (one HEAD each, nothing downloaded) and compare it with the
/// blob's key; blobs already found missing or of the wrong size are left
/// out.
fn check_sums(
    store: &dyn Store,
    manifest: &Manifest,
    bad: &HashSet<String>,
) -> Result<(Checksums, Vec<Problem>)> {
    let mut sums = Checksums {
        kept: store.keeps_checksums(),
        ..Checksums::default()
    };
    let blobs: Vec<&(String, u64)> = manifest
        .blobs
        .iter()
        .filter(|(k, _)| !bad.contains(k))
        .collect();
    if !sums.kept {
        sums.missing = blobs.len();
        return Ok((sums, Vec::new()));
    }
    let metas = crate::store::parallel(&blobs, |(key, _)| store.stat(key, true));
    let mut problems = Vec::new();
    for ((key, _), meta) in blobs.into_iter().zip(metas) {
        let Some(layout::Key::Blob(hash)) = layout::parse(key) else {
            continue;
        };
        match meta?.and_then(|m| m.sha256) {
            Some(sum) if sum == hash => sums.matched += 1,
            Some(sum) => problems.push(Problem {
                kind: "checksum",
                key: key.clone(),
                message: format!(
                    "the server's SHA-256 of this blob is {}, not the one its name records: \
                     it was replaced or damaged",
                    crate::chunk::hex(&sum)
                ),
                files: Vec::new(),
            }),
            None => sums.missing += 1,
        }
    }
    Ok((sums, problems))
}

/// Without the key: every blob the manifest lists is in the store with the
/// size it records (one listing answers for all), and the metadata is
/// there. The problems, and the blobs not to read.
fn shallow(
    store: &dyn Store,
    id: &str,
    manifest: &Manifest,
) -> Result<(Vec<Problem>, HashSet<String>)> {
    let mut problems = Vec::new();
    let present: HashMap<String, u64> = store
        .list(layout::BLOBS)?
        .objects
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let mut bad_blobs: HashSet<String> = HashSet::new();
    for (key, size) in &manifest.blobs {
        match present.get(key) {
            None => problems.push(Problem {
                kind: "missing",
                key: key.clone(),
                message: "blob is missing from the store".into(),
                files: Vec::new(),
            }),
            Some(s) if s != size => problems.push(Problem {
                kind: "size",
                key: key.clone(),
                message: format!("blob has {s} bytes, the manifest records {size}"),
                files: Vec::new(),
            }),
            Some(_) => continue,
        }
        bad_blobs.insert(key.clone());
    }
    let dkey = layout::metadata(id);
    if store.head(&dkey)?.is_none() {
        problems.push(Problem {
            kind: "missing",
            key: dkey,
            message: "snapshot metadata is missing from the store".into(),
            files: Vec::new(),
        });
    }
    Ok((problems, bad_blobs))
}

/// Every chunk of the snapshot, grouped by blob, in offset order.
fn blob_chunks(conn: &rusqlite::Connection) -> Result<Vec<BlobChunks>> {
    let mpath = std::path::Path::new("snapshot metadata");
    let mut blobs: Vec<BlobChunks> = Vec::new();
    let mut st = conn
        .prepare(
            "SELECT b.key, b.size, c.id, c.offset, c.length, c.size
             FROM chunks c JOIN blobs b ON b.id = c.blob ORDER BY b.key, c.offset",
        )
        .db(mpath)?;
    let mut rows = st.query([]).db(mpath)?;
    while let Some(r) = rows.next().db(mpath)? {
        let key: String = r.get(0).db(mpath)?;
        let id_bytes: Vec<u8> = r.get(2).db(mpath)?;
        let cid = ChunkId::from_slice(&id_bytes)
            .ok_or_else(|| Error::corrupt("snapshot metadata", "malformed chunk id"))?;
        let loc = Location::from_row(r, 3).db(mpath)?;
        if blobs.last().is_none_or(|b| b.0 != key) {
            blobs.push((key, r.get::<_, i64>(1).db(mpath)? as u64, Vec::new()));
        }
        blobs.last_mut().expect("just pushed").2.push((cid, loc));
    }
    Ok(blobs)
}

/// A blob that failed: its key, the first error, and its failing chunks.
type Failed = (String, String, HashSet<ChunkId>);

/// Read `blobs` (four at a time) and check every chunk: how many passed,
/// and the blobs that failed, in key order.
fn read_blobs(
    store: &dyn Store,
    blobs: &[&BlobChunks],
    identities: &[x25519::Identity],
) -> Result<(u64, Vec<Failed>)> {
    let failed: Mutex<Vec<Failed>> = Mutex::new(Vec::new());
    let checked = std::sync::atomic::AtomicU64::new(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .map_err(|e| Error::System {
            op: "start threads",
            source: Box::new(e),
        })?;
    pool.install(|| {
        blobs.par_iter().for_each(|(key, size, chunks)| {
            let mut bad = HashSet::new();
            let mut first_err = None;
            match check_blob(store, key, *size, chunks, identities, &checked) {
                Ok(list) => {
                    for (cid, e) in list {
                        first_err.get_or_insert(e);
                        bad.insert(cid);
                    }
                }
                Err(e) => {
                    first_err = Some(e.to_string());
                    bad.extend(chunks.iter().map(|(c, _)| *c));
                }
            }
            if let Some(e) = first_err {
                failed.lock().expect("lock").push((key.clone(), e, bad));
            }
        })
    });
    let mut failed = failed.into_inner().expect("lock");
    failed.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((checked.into_inner(), failed))
}

/// The problems of the failed blobs, with the files each affects.
fn affected(conn: &rusqlite::Connection, failed: Vec<Failed>) -> Result<Vec<Problem>> {
    if failed.is_empty() {
        return Ok(Vec::new());
    }
    let mpath = std::path::Path::new("snapshot metadata");
    let mut st = conn
        .prepare("SELECT path, chunks FROM entries WHERE chunks IS NOT NULL")
        .db(mpath)?;
    let mut rows = st.query([]).db(mpath)?;
    let mut files: Vec<Vec<String>> = vec![Vec::new(); failed.len()];
    while let Some(r) = rows.next().db(mpath)? {
        let path: Vec<u8> = r.get(0).db(mpath)?;
        let list: Vec<u8> = r.get(1).db(mpath)?;
        for (i, (_, _, bad)) in failed.iter().enumerate() {
            if crate::chunk::chunk_ids(&list).any(|c| bad.contains(&c)) {
                files[i].push(String::from_utf8_lossy(&path).into_owned());
            }
        }
    }
    Ok(failed
        .into_iter()
        .zip(files)
        .map(|((key, message, _), files)| Problem {
            kind: "corrupt",
            key,
            message,
            files,
        })
        .collect())
}

/// Read every chunk of one blob; the chunks that fail, with why.
fn check_blob(
    store: &dyn Store,
    key: &str,
    size: u64,
    chunks: &[(ChunkId, Location)],
    identities: &[age::x25519::Identity],
    checked: &std::sync::atomic::AtomicU64,
) -> Result<Vec<(ChunkId, String)>> {
    let mut reader = BlobReader::open(store, key, size, identities)?;
    let mut bad = Vec::new();
    // One streamed GET for the whole blob (chunks come in offset order).
    let end = chunks
        .iter()
        .map(|(_, l)| l.offset.saturating_add(l.length))
        .max();
    reader.plan_range(end.unwrap_or(0));
    for (cid, loc) in chunks {
        match reader.read_chunk(cid, loc) {
            Ok(_) => {
                checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e @ Error::Key(_)) => return Err(e),
            Err(e) => bad.push((*cid, e.to_string())),
        }
    }
    Ok(bad)
}
