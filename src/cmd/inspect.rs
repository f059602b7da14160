//! `snapshot list`, `store info` and `snapshot verify` (whose checks are
//! `verify.rs`'s): reading the store. Only `verify --deep` needs the
//! private key.

use std::collections::HashSet;
use std::io::Write;

use serde_json::json;

use super::settings::{self, Settings};
use super::{json_report, open_existing_store, output, warn};
use crate::cli::{Global, VerifyArgs};
use crate::error::{Error, Result};
use crate::gc::{self, View};
use crate::human_bytes;
use crate::layout;
use crate::manifest::{self, Manifest};
use crate::time::now as unix_now;

pub fn list(settings: &Settings, json: bool) -> Result<()> {
    let store = open_existing_store(settings)?;
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
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&arr).expect("JSON values serialize")
        )
        .map_err(output)?;
    } else {
        let w = manifests
            .iter()
            .map(|m| m.id.len())
            .max()
            .unwrap_or(2)
            .max(2);
        writeln!(out, "{:<w$}  {:<23}  {:>10}", "ID", "TIME", "SIZE").map_err(output)?;
        for m in &manifests {
            let flag = if m.dated_ahead() {
                "  (dated ahead of the store: ignored by latest and retention)"
            } else {
                ""
            };
            writeln!(
                out,
                "{:<w$}  {:<23}  {:>10}{flag}",
                m.id,
                crate::time::display(m.time),
                human_bytes(m.total_size())
            )
            .map_err(output)?;
        }
        writeln!(out, "{}", store.stats().summary()).map_err(output)?;
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

pub fn info(settings: &Settings, json: bool) -> Result<()> {
    let store = open_existing_store(settings)?;
    let grace = settings.grace_period;
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
        writeln!(out, "{}", json_report(v, store.as_ref())).map_err(output)?;
    } else {
        let hosts: Vec<String> = hosts.into_iter().collect();
        writeln!(out, "store:        {}", store.describe()).map_err(output)?;
        writeln!(
            out,
            "snapshots:    {} (hosts: {})",
            view.manifests.len(),
            if hosts.is_empty() {
                "-".to_string()
            } else {
                hosts.join(", ")
            }
        )
        .map_err(output)?;
        writeln!(
            out,
            "blobs:        {}, {}",
            view.blobs.len(),
            human_bytes(blob_b)
        )
        .map_err(output)?;
        writeln!(out, "referenced:   {ref_n}, {}", human_bytes(ref_b)).map_err(output)?;
        writeln!(
            out,
            "unreferenced: {}, {} (deleted by `vaultik prune` once older than {})",
            unref.len(),
            human_bytes(unref_b),
            crate::human_duration(grace)
        )
        .map_err(output)?;
        writeln!(
            out,
            "metadata:     {} objects, {}",
            view.metadata.len(),
            human_bytes(meta_b)
        )
        .map_err(output)?;
        if !view.damaged.is_empty() {
            writeln!(out, "damaged:      {} manifest(s)", view.damaged.len()).map_err(output)?;
        }
        let ahead = view.dated_ahead().count();
        if ahead > 0 {
            writeln!(out, "dated ahead:  {ahead} snapshot(s)").map_err(output)?;
        }
        if view.foreign_count > 0 {
            writeln!(out, "foreign:      {} object(s)", view.foreign_count).map_err(output)?;
        }
        writeln!(out, "{}", store.stats().summary()).map_err(output)?;
    }
    if !view.damaged.is_empty() {
        return Err(Error::Damaged {
            count: view.damaged.len(),
            what: "store info",
        });
    }
    Ok(())
}

pub fn verify(g: &Global, a: &VerifyArgs) -> Result<()> {
    // Ask for the key before any network work, and only for --deep.
    let identities = if a.deep {
        Some(settings::identities(a.identity.as_deref())?)
    } else {
        None
    };
    let store = open_existing_store(&Settings::resolve(g, false)?)?;
    let id = manifest::resolve(store.as_ref(), &a.snapshot)?;
    let r = crate::verify::verify(store.as_ref(), id, identities.as_deref())?;
    let (id, manifest, chunks_checked, problems) =
        (&r.id, &r.manifest, r.chunks_checked, &r.problems);
    let (deep, json) = (a.deep, a.json);
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
        writeln!(out, "{}", json_report(v, store.as_ref())).map_err(output)?;
    } else {
        for p in problems {
            // Keys and messages may come from forged metadata: escaped.
            writeln!(
                out,
                "{}: {} {}",
                p.kind,
                crate::error::one_line(p.key.clone()),
                crate::error::one_line(p.message.clone())
            )
            .map_err(output)?;
            if !p.files.is_empty() {
                writeln!(out, "  affects {} file(s):", p.files.len()).map_err(output)?;
                for f in &p.files {
                    // Paths from the metadata: control characters escaped.
                    writeln!(out, "    {}", crate::error::one_line(f.clone())).map_err(output)?;
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
        writeln!(out, "snapshot {id}: {what} checked: {verdict}").map_err(output)?;
        writeln!(out, "{}", store.stats().summary()).map_err(output)?;
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
