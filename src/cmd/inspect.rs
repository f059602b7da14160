//! `snapshot list`, `store info` and `snapshot verify`: reading the store.
//! Only `verify --deep` needs the private key.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Mutex;

use rayon::prelude::*;
use serde_json::json;

use super::{json_report, open_existing_store, warn};
use crate::blob::{BlobReader, Location};
use crate::chunk::ChunkId;
use crate::cli::Global;
use crate::config::DEFAULT_GRACE_PERIOD;
use crate::error::{DbContext, Error, Result};
use crate::gc::{self, View};
use crate::layout;
use crate::manifest::{self, Manifest};
use crate::snapshot;
use crate::store::Store;
use crate::time::now as unix_now;
use crate::{human_bytes, keys};

pub fn list(g: &Global, json: bool) -> Result<()> {
    let (_, store) = open_existing_store(g)?;
    let mut manifests = Vec::new();
    let mut damaged = 0;
    for listed in manifest::list(store.as_ref())? {
        match manifest::load(store.as_ref(), &listed) {
            Ok(m) => manifests.push(m),
            // Removed between the listing and now.
            Err(Error::NotFound { .. }) => {}
            // One bad manifest never hides the others.
            Err(e @ Error::Corrupt { .. }) => {
                damaged += 1;
                warn(&e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    for m in manifests.iter().filter(|m| m.dated_ahead()) {
        warn(&format!(
            "snapshot {} claims a time after the store received it ({}); \
             ignored by `latest` and retention",
            m.id,
            ahead_note(m)
        ));
    }
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
                    "time": crate::time::compact(m.time),
                    "unix_time": m.time,
                    "size": m.total_size(),
                    "blobs": m.blobs.len(),
                    "dated_ahead": m.dated_ahead(),
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
            let flag = if m.dated_ahead() {
                "  (dated ahead of the store: ignored by latest and retention)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:<w$}  {:<23}  {:>10}{flag}",
                m.id,
                crate::time::display(m.time),
                human_bytes(m.total_size())
            );
        }
        let _ = writeln!(out, "{}", store.stats().summary());
    }
    if damaged > 0 {
        return Err(Error::Damaged {
            count: damaged,
            what: "snapshot list",
        });
    }
    Ok(())
}

/// When the store received a manifest dated ahead of it.
fn ahead_note(m: &Manifest) -> String {
    if m.stored == 0 {
        "the store gives no time for it".into()
    } else {
        format!("stored {}", crate::time::display(m.stored))
    }
}

pub fn info(g: &Global, json: bool) -> Result<()> {
    let (cfg, store) = open_existing_store(g)?;
    let grace = cfg
        .as_ref()
        .map_or(DEFAULT_GRACE_PERIOD, |c| c.grace_period)
        .as_secs();
    let view = View::load(store.as_ref())?;
    for (_, why) in &view.damaged {
        warn(why);
    }
    for m in view.dated_ahead() {
        warn(&format!(
            "snapshot {} claims a time after the store received it ({}); \
             ignored by `latest` and retention",
            m.id,
            ahead_note(m)
        ));
    }
    if view.foreign_count > 0 {
        warn(&format!(
            "{} object(s) in the store are not vaultik's (left alone): {}{}",
            view.foreign_count,
            view.foreign.join(", "),
            if view.foreign_count > view.foreign.len() as u64 {
                ", ..."
            } else {
                ""
            }
        ));
    }
    let referenced = view.referenced();
    // Sizes come from the store: saturating, never overflowing.
    let sum = |it: &mut dyn Iterator<Item = u64>| it.fold(0u64, u64::saturating_add);
    let (ref_n, ref_b) = view
        .blobs
        .iter()
        .filter(|o| referenced.contains(o.key.as_str()))
        .fold((0, 0u64), |(n, b), o| (n + 1, b.saturating_add(o.size)));
    let plan = gc::plan(&view, &HashSet::new(), grace, unix_now());
    let unref: Vec<_> = plan
        .delete
        .iter()
        .chain(&plan.young)
        .filter(|o| layout::is_blob(&o.key))
        .collect();
    let unref_b: u64 = unref.iter().fold(0u64, |t, o| t.saturating_add(o.size));
    // Host names come from the store: control characters are escaped.
    let hosts: std::collections::BTreeSet<String> = view
        .manifests
        .iter()
        .map(|m| crate::error::one_line(m.hostname.clone()))
        .collect();
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
            "damaged_manifests": view.damaged.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            "dated_ahead": view.dated_ahead().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            "foreign_objects": view.foreign_count,
        });
        let _ = writeln!(out, "{}", json_report(v, store.as_ref()));
    } else {
        let hosts: Vec<String> = hosts.into_iter().collect();
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
        if !view.damaged.is_empty() {
            let _ = writeln!(out, "damaged:      {} manifest(s)", view.damaged.len());
        }
        let ahead = view.dated_ahead().count();
        if ahead > 0 {
            let _ = writeln!(out, "dated ahead:  {ahead} snapshot(s)");
        }
        if view.foreign_count > 0 {
            let _ = writeln!(out, "foreign:      {} object(s)", view.foreign_count);
        }
        let _ = writeln!(out, "{}", store.stats().summary());
    }
    if !view.damaged.is_empty() {
        return Err(Error::Damaged {
            count: view.damaged.len(),
            what: "store info",
        });
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
    let id = manifest::resolve(store.as_ref(), id)?;
    let mkey = layout::manifest(&id);
    let manifest = Manifest::from_bytes(&mkey, &store.get(&mkey, manifest::MANIFEST_MAX)?)?;
    let mut problems: Vec<Problem> = Vec::new();

    // Shallow: one listing answers for every blob.
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
    let dkey = layout::metadata(&id);
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

    let blob_bytes: u64 = manifest
        .blobs
        .iter()
        .fold(0u64, |t, (_, s)| t.saturating_add(*s));
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
            // Keys and messages may come from forged metadata: escaped.
            let _ = writeln!(
                out,
                "{}: {} {}",
                p.kind,
                crate::error::one_line(p.key.clone()),
                crate::error::one_line(p.message.clone())
            );
            if !p.files.is_empty() {
                let _ = writeln!(out, "  affects {} file(s):", p.files.len());
                for f in &p.files {
                    // Paths from the metadata: control characters escaped.
                    let _ = writeln!(out, "    {}", crate::error::one_line(f.clone()));
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
