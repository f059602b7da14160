//! `snapshot list`, `store info` and `snapshot verify`: reading the store.
//! Only `verify --deep` needs the private key.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Mutex;

use rayon::prelude::*;
use serde_json::json;

use super::{json_report, open_existing_store};
use crate::blob::{BlobReader, Location};
use crate::chunk::ChunkId;
use crate::cli::Global;
use crate::config::DEFAULT_GRACE_PERIOD;
use crate::error::{DbContext, Error, Result};
use crate::gc::{self, View};
use crate::snapshot::{self, Manifest};
use crate::store::Store;
use crate::{human_bytes, keys, unix_now};

pub fn list(g: &Global, json: bool) -> Result<()> {
    let (_, store) = open_existing_store(g)?;
    let manifests = snapshot::list_manifests(store.as_ref())?;
    let mut out = std::io::stdout().lock();
    if json {
        // A plain array of snapshots (see the man page).
        let arr: Vec<serde_json::Value> = manifests
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "hostname": m.hostname,
                    "name": m.name,
                    "time": snapshot::compact_time(m.time),
                    "unix_time": m.time,
                    "size": m.total_size(),
                    "blobs": m.blobs.len(),
                })
            })
            .collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&arr).expect("JSON values serialize")
        );
    } else {
        let w = manifests
            .iter()
            .map(|m| m.id.len())
            .max()
            .unwrap_or(2)
            .max(2);
        let _ = writeln!(out, "{:<w$}  {:<23}  {:>10}", "ID", "TIME", "SIZE");
        for m in &manifests {
            let _ = writeln!(
                out,
                "{:<w$}  {:<23}  {:>10}",
                m.id,
                snapshot::display_time(m.time),
                human_bytes(m.total_size())
            );
        }
        let _ = writeln!(out, "{}", store.stats().summary());
    }
    Ok(())
}

pub fn info(g: &Global, json: bool) -> Result<()> {
    let (cfg, store) = open_existing_store(g)?;
    let grace = cfg
        .as_ref()
        .map_or(DEFAULT_GRACE_PERIOD, |c| c.grace_period)
        .as_secs();
    let view = View::load(store.as_ref())?;
    let referenced = view.referenced();
    let sum = |it: &mut dyn Iterator<Item = u64>| it.sum::<u64>();
    let (ref_n, ref_b) = view
        .blobs
        .iter()
        .filter(|o| referenced.contains(o.key.as_str()))
        .fold((0, 0), |(n, b), o| (n + 1, b + o.size));
    let plan = gc::plan(&view, &HashSet::new(), grace, unix_now());
    let unref: Vec<_> = plan
        .delete
        .iter()
        .chain(&plan.young)
        .filter(|o| o.key.starts_with("blobs/"))
        .collect();
    let unref_b: u64 = unref.iter().map(|o| o.size).sum();
    let hosts: std::collections::BTreeSet<&str> =
        view.manifests.iter().map(|m| m.hostname.as_str()).collect();
    let blob_b = sum(&mut view.blobs.iter().map(|o| o.size));
    let meta_b = sum(&mut view.metadata.iter().map(|o| o.size));
    let mut out = std::io::stdout().lock();
    if json {
        let v = json!({
            "store": store.describe(),
            "snapshots": view.manifests.len(),
            "hosts": hosts,
            "blobs": view.blobs.len(),
            "blob_bytes": blob_b,
            "referenced_blobs": ref_n,
            "referenced_bytes": ref_b,
            "unreferenced_blobs": unref.len(),
            "unreferenced_bytes": unref_b,
            "metadata_objects": view.metadata.len(),
            "metadata_bytes": meta_b,
        });
        let _ = writeln!(out, "{}", json_report(v, store.as_ref()));
    } else {
        let hosts: Vec<&str> = hosts.into_iter().collect();
        let _ = writeln!(out, "store:        {}", store.describe());
        let _ = writeln!(
            out,
            "snapshots:    {} (hosts: {})",
            view.manifests.len(),
            if hosts.is_empty() {
                "-".to_string()
            } else {
                hosts.join(", ")
            }
        );
        let _ = writeln!(
            out,
            "blobs:        {}, {}",
            view.blobs.len(),
            human_bytes(blob_b)
        );
        let _ = writeln!(out, "referenced:   {ref_n}, {}", human_bytes(ref_b));
        let _ = writeln!(
            out,
            "unreferenced: {}, {} (deleted by `vaultik prune` once older than {})",
            unref.len(),
            human_bytes(unref_b),
            crate::human_duration(grace)
        );
        let _ = writeln!(
            out,
            "metadata:     {} objects, {}",
            view.metadata.len(),
            human_bytes(meta_b)
        );
        let _ = writeln!(out, "{}", store.stats().summary());
    }
    Ok(())
}

/// A blob's key and size, and its chunks in offset order.
type BlobChunks = (String, u64, Vec<(ChunkId, Location)>);

/// One thing wrong with a snapshot.
struct Problem {
    kind: &'static str,
    key: String,
    message: String,
    files: Vec<String>,
}

pub fn verify(
    g: &Global,
    id: &str,
    deep: bool,
    identity: Option<&std::path::Path>,
    json: bool,
) -> Result<()> {
    // Ask for the key before any network work, and only for --deep.
    let identities = if deep {
        Some(keys::load_identities(identity)?)
    } else {
        None
    };
    let (_, store) = open_existing_store(g)?;
    let id = snapshot::resolve(store.as_ref(), id)?;
    let mkey = snapshot::manifest_key(&id);
    let manifest = Manifest::from_bytes(&mkey, &store.get(&mkey)?)?;
    let mut problems: Vec<Problem> = Vec::new();

    // Shallow: one listing answers for every blob.
    let present: HashMap<String, u64> = store
        .list("blobs/")?
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
    let dkey = snapshot::db_key(&id);
    if store.head(&dkey)?.is_none() {
        problems.push(Problem {
            kind: "missing",
            key: dkey.clone(),
            message: "snapshot metadata is missing from the store".into(),
            files: Vec::new(),
        });
    }

    let mut chunks_checked = 0u64;
    if let Some(identities) = identities.filter(|_| !problems.iter().any(|p| p.key == dkey)) {
        let conn = snapshot::open_metadata(store.as_ref(), &id, &identities)?;
        let mpath = std::path::Path::new("snapshot metadata");
        // Every chunk, grouped by blob, in offset order.
        let mut blobs: Vec<BlobChunks> = Vec::new();
        {
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
        }
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
        // Read every blob that is present, in parallel.
        let failed: Mutex<Vec<(String, String, HashSet<ChunkId>)>> = Mutex::new(Vec::new());
        let checked = std::sync::atomic::AtomicU64::new(0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .map_err(|e| Error::Setup(format!("cannot start threads: {e}")))?;
        pool.install(|| {
            blobs
                .par_iter()
                .filter(|(k, _, _)| !bad_blobs.contains(k))
                .for_each(|(key, size, chunks)| {
                    let mut bad = HashSet::new();
                    let mut first_err = None;
                    match check_blob(store.as_ref(), key, *size, chunks, &identities, &checked) {
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
        chunks_checked = checked.into_inner();
        let mut failed = failed.into_inner().expect("lock");
        failed.sort_by(|a, b| a.0.cmp(&b.0));
        // Which files each failing blob affects.
        if !failed.is_empty() {
            let mut st = conn
                .prepare("SELECT path, chunks FROM entries WHERE chunks IS NOT NULL")
                .db(mpath)?;
            let mut rows = st.query([]).db(mpath)?;
            let mut affected: Vec<Vec<String>> = vec![Vec::new(); failed.len()];
            while let Some(r) = rows.next().db(mpath)? {
                let path: Vec<u8> = r.get(0).db(mpath)?;
                let list: Vec<u8> = r.get(1).db(mpath)?;
                for (i, (_, _, bad)) in failed.iter().enumerate() {
                    if list
                        .chunks_exact(32)
                        .any(|c| ChunkId::from_slice(c).is_some_and(|c| bad.contains(&c)))
                    {
                        affected[i].push(String::from_utf8_lossy(&path).into_owned());
                    }
                }
            }
            for ((key, msg, _), files) in failed.into_iter().zip(affected) {
                problems.push(Problem {
                    kind: "corrupt",
                    key,
                    message: msg,
                    files,
                });
            }
        }
    }

    let blob_bytes: u64 = manifest.blobs.iter().map(|(_, s)| s).sum();
    let mut out = std::io::stdout().lock();
    if json {
        let v = json!({
            "snapshot": id,
            "deep": deep,
            "blobs": manifest.blobs.len(),
            "blob_bytes": blob_bytes,
            "chunks_checked": chunks_checked,
            "ok": problems.is_empty(),
            "problems": problems.iter().map(|p| json!({
                "kind": p.kind, "key": p.key, "message": p.message, "files": p.files,
            })).collect::<Vec<_>>(),
        });
        let _ = writeln!(out, "{}", json_report(v, store.as_ref()));
    } else {
        for p in &problems {
            let _ = writeln!(out, "{}: {} {}", p.kind, p.key, p.message);
            if !p.files.is_empty() {
                let _ = writeln!(out, "  affects {} file(s):", p.files.len());
                for f in &p.files {
                    let _ = writeln!(out, "    {f}");
                }
            }
        }
        let what = if deep {
            format!(
                "{} blobs ({}), {chunks_checked} chunks",
                manifest.blobs.len(),
                human_bytes(blob_bytes)
            )
        } else {
            format!(
                "{} blobs ({})",
                manifest.blobs.len(),
                human_bytes(blob_bytes)
            )
        };
        let verdict = if problems.is_empty() { "ok" } else { "FAILED" };
        let _ = writeln!(out, "snapshot {id}: {what} checked: {verdict}");
        let _ = writeln!(out, "{}", store.stats().summary());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Problems {
            count: problems.len(),
            what: format!("snapshot verify {id}"),
        })
    }
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
    let end = chunks.iter().map(|(_, l)| l.offset + l.length).max();
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
