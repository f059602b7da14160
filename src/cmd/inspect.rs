//! `snapshot list`, `store info` and `snapshot verify` (whose checks are
//! `verify.rs`'s): reading the store. Only `verify --deep` needs the
//! private key.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Mutex;

use serde_json::json;

use super::settings::{self, Settings};
use super::{Expect, Requests, json_report, open_existing_store, output, warn};
use crate::cli::{Global, VerifyArgs};
use crate::error::{Error, Result};
use crate::gc::{self, View};
use crate::human_bytes;
use crate::layout;
use crate::manifest::{self, Summary};
use crate::signing::Signed;
use crate::time::now as unix_now;
use crate::verify::Depth;

pub fn list(settings: &Settings, json: bool, versions: bool) -> Result<()> {
    super::requests_to(if json {
        Requests::Nowhere
    } else {
        Requests::Stdout
    });
    let store = super::open_versioned_store(settings, versions, Expect::Listing)?;
    let r = (|| -> Result<()> {
        let deleted: HashSet<String> = store.deleted_snapshots().into_iter().collect();
        let mut manifests = Vec::new();
        let mut signed = Vec::new();
        let mut damaged = 0;
        for listed in manifest::list(store.as_ref())? {
            let loaded = manifest::load_with_bytes(store.as_ref(), &listed).and_then(|(p, raw)| {
                let (s, _) = crate::signing::check_entry(
                    store.as_ref(),
                    &listed.id,
                    &raw,
                    &settings.trust.signers,
                )?;
                Ok((p.summary, s))
            });
            match loaded {
                Ok((m, s)) => {
                    manifests.push(m);
                    signed.push(s);
                }
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
                .zip(&signed)
                .map(|(m, s)| {
                    json!({
                        "id": m.id,
                        "hostname": m.hostname,
                        "name": m.name,
                        "time": crate::time::rfc3339(m.time),
                        "unix_time": m.time,
                        "size": m.total_size(),
                        "blobs": m.blobs,
                        "dated_ahead": m.dated_ahead(),
                        "deleted": deleted.contains(&m.id),
                        "signed": match s {
                            Signed::Unsigned => "no",
                            Signed::By(_) => "yes",
                            Signed::Invalid(_) => "invalid",
                        },
                        "signer": match s {
                            Signed::By(k) => Some(crate::signing::show_signer(k)),
                            _ => None,
                        },
                        "trusted": settings.trust.trusts(s),
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
            writeln!(
                out,
                "{:<w$}  {:<23}  {:>10}  {:<17}",
                "ID", "TIME", "SIZE", "SIGNED BY"
            )
            .map_err(output)?;
            for (m, s) in manifests.iter().zip(&signed) {
                let by = match s {
                    Signed::Unsigned => "-".to_string(),
                    // The first 8 digits: enough to tell hosts apart on a
                    // screen; --json gives the whole key.
                    Signed::By(k) => format!("ed25519:{}", &crate::chunk::hex(k)[..8]),
                    Signed::Invalid(_) => "INVALID".to_string(),
                };
                let trust = match s {
                    _ if !settings.trust.is_set() => "",
                    s if settings.trust.trusts(s) => "",
                    _ => "  (not signed by a trusted key: ignored by latest and retention)",
                };
                let flag = if deleted.contains(&m.id) {
                    "  (deleted; its versions remain: restore it by id)"
                } else if m.dated_ahead() {
                    "  (dated ahead of the store: ignored by latest and retention)"
                } else {
                    ""
                };
                writeln!(
                    out,
                    "{:<w$}  {:<23}  {:>10}  {by:<17}{flag}{trust}",
                    m.id,
                    crate::time::display(m.time),
                    human_bytes(m.total_size())
                )
                .map_err(output)?;
            }
            writeln!(out, "{}", super::requests_line(store.as_ref())).map_err(output)?;
        }
        if damaged > 0 {
            return Err(Error::Damaged {
                count: damaged,
                what: "snapshot list",
            });
        }
        Ok(())
    })();
    super::ended(store.as_ref(), r)
}

/// When the store received a manifest dated ahead of it.
fn ahead_note(m: &Summary) -> String {
    if m.stored == 0 {
        "the store gives no time for it".into()
    } else {
        format!("stored {}", crate::time::display(m.stored))
    }
}

pub fn info(settings: &Settings, json: bool) -> Result<()> {
    super::requests_to(if json {
        Requests::Nowhere
    } else {
        Requests::Stdout
    });
    let store = open_existing_store(settings, Expect::Listing)?;
    let r = (|| -> Result<()> {
        let view = View::load(store.as_ref())?;
        warn_about(&view);
        let totals = Totals::of(&view, settings.grace_period);
        // On a bucket with Object Lock, what is locked (a HEAD per object).
        let lock_on = match store.object_lock_enabled() {
            Ok(on) => on,
            Err(e) if crate::store::versions::denied(&e) => {
                warn(&format!("{e}; locked objects not shown"));
                false
            }
            Err(e) => return Err(e),
        };
        let locks = if lock_on {
            let mut all = view.blobs.clone();
            all.extend(view.metadata.iter().cloned());
            Some(gc::Locks::of(store.as_ref(), &all, unix_now())?)
        } else {
            None
        };
        // This host's signing key, for the trusted_signers of the machines
        // that restore (from the host, never from the store).
        let host_key = match settings.index_path.parent() {
            Some(state) if settings.config.is_some() => {
                crate::signing::SigningKey::load_existing(state)?.map(|k| k.public())
            }
            _ => None,
        };
        let mut out = std::io::stdout().lock();
        if json {
            let mut v = totals.to_json(&view, store.describe());
            if let Some(l) = &locks {
                v["locked"] = l.to_json();
            }
            if let Some(s) = store.signed_by() {
                v["signed_by"] = s.into();
            }
            if let Some(k) = &host_key {
                v["host_signing_key"] = k.as_str().into();
            }
            writeln!(out, "{}", json_report(v, store.as_ref())).map_err(output)?;
        } else {
            totals
                .write_text(&mut out, &view, store.describe(), settings.grace_period)
                .map_err(output)?;
            if let Some(l) = &locks {
                writeln!(out, "locked:       {}", l.describe()).map_err(output)?;
            }
            if let Some(s) = store.signed_by() {
                writeln!(out, "signed by:    {s}").map_err(output)?;
            }
            if let Some(k) = &host_key {
                writeln!(
                    out,
                    "host key:     {k} (this host signs its snapshots with it)"
                )
                .map_err(output)?;
            }
            writeln!(out, "{}", super::requests_line(store.as_ref())).map_err(output)?;
        }
        if !view.damaged.is_empty() {
            return Err(Error::Damaged {
                count: view.damaged.len(),
                what: "store info",
            });
        }
        Ok(())
    })();
    super::ended(store.as_ref(), r)
}

/// Warnings about what the listing found: damaged manifests, snapshots
/// dated after the store received them, objects that are not vaultik's.
fn warn_about(view: &View) {
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
}

/// What `store info` reports, summed from a listing. Sizes come from the
/// store: every sum saturates, never overflows.
struct Totals {
    hosts: std::collections::BTreeSet<String>,
    blob_bytes: u64,
    referenced: (u64, u64),
    unreferenced: (usize, u64),
    metadata_bytes: u64,
    /// Objects and bytes per storage class.
    classes: std::collections::BTreeMap<crate::store::class::StorageClass, (u64, u64)>,
}

impl Totals {
    fn of(view: &View, grace: u64) -> Totals {
        let sum = |it: &mut dyn Iterator<Item = u64>| it.fold(0u64, u64::saturating_add);
        let referenced = view.referenced(&HashSet::new());
        let mut in_use = view
            .blobs
            .iter()
            .enumerate()
            .filter(|(i, _)| referenced.contains(*i))
            .map(|(_, o)| o);
        let ref_n = in_use.clone().count() as u64;
        let ref_b = sum(&mut in_use.by_ref().map(|o| o.size));
        let plan = gc::plan(view, &HashSet::new(), grace, unix_now());
        let unref: Vec<_> = plan
            .delete
            .iter()
            .chain(&plan.young)
            .filter(|o| layout::is_blob(&o.key))
            .collect();
        Totals {
            // Host names come from the store: control characters are escaped.
            hosts: view
                .manifests
                .iter()
                .map(|m| crate::error::one_line(m.hostname.clone()))
                .collect(),
            blob_bytes: sum(&mut view.blobs.iter().map(|o| o.size)),
            referenced: (ref_n, ref_b),
            unreferenced: (unref.len(), sum(&mut unref.iter().map(|o| o.size))),
            metadata_bytes: sum(&mut view.metadata.iter().map(|o| o.size)),
            classes: view.blobs.iter().chain(&view.metadata).fold(
                Default::default(),
                |mut m, o| {
                    let e: &mut (u64, u64) = m.entry(o.class).or_default();
                    e.0 += 1;
                    e.1 = e.1.saturating_add(o.size);
                    m
                },
            ),
        }
    }

    fn to_json(&self, view: &View, store: String) -> serde_json::Value {
        json!({
            "store": store,
            "snapshots": view.manifests.len(),
            "hosts": self.hosts,
            "blobs": view.blobs.len(),
            "blob_bytes": self.blob_bytes,
            "referenced_blobs": self.referenced.0,
            "referenced_bytes": self.referenced.1,
            "unreferenced_blobs": self.unreferenced.0,
            "unreferenced_bytes": self.unreferenced.1,
            "metadata_objects": view.metadata.len(),
            "metadata_bytes": self.metadata_bytes,
            "classes": self.classes.iter().map(|(c, (n, b))| {
                (c.name().to_string(), json!({"objects": n, "bytes": b}))
            }).collect::<serde_json::Map<String, serde_json::Value>>(),
            "damaged_manifests": view.damaged.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            "dated_ahead": view.dated_ahead().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            "foreign_objects": view.foreign_count,
        })
    }

    fn write_text(
        &self,
        out: &mut dyn Write,
        view: &View,
        store: String,
        grace: u64,
    ) -> std::io::Result<()> {
        let hosts: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        writeln!(out, "store:        {store}")?;
        writeln!(
            out,
            "snapshots:    {} (hosts: {})",
            view.manifests.len(),
            if hosts.is_empty() {
                "-".to_string()
            } else {
                hosts.join(", ")
            }
        )?;
        writeln!(
            out,
            "blobs:        {}, {}",
            view.blobs.len(),
            human_bytes(self.blob_bytes)
        )?;
        let (ref_n, ref_b) = self.referenced;
        writeln!(out, "referenced:   {ref_n}, {}", human_bytes(ref_b))?;
        writeln!(
            out,
            "unreferenced: {}, {} (deleted by `vaultik prune` once older than {})",
            self.unreferenced.0,
            human_bytes(self.unreferenced.1),
            crate::human_duration(grace)
        )?;
        writeln!(
            out,
            "metadata:     {} objects, {}",
            view.metadata.len(),
            human_bytes(self.metadata_bytes)
        )?;
        // Only where something is not STANDARD: most stores are.
        if self.classes.keys().any(|c| *c != Default::default()) {
            let per: Vec<String> = self
                .classes
                .iter()
                .map(|(c, (n, b))| format!("{c} {n} objects, {}", human_bytes(*b)))
                .collect();
            writeln!(out, "classes:      {}", per.join("; "))?;
        }
        if !view.damaged.is_empty() {
            writeln!(out, "damaged:      {} manifest(s)", view.damaged.len())?;
        }
        let ahead = view.dated_ahead().count();
        if ahead > 0 {
            writeln!(out, "dated ahead:  {ahead} snapshot(s)")?;
        }
        if view.foreign_count > 0 {
            writeln!(out, "foreign:      {} object(s)", view.foreign_count)?;
        }
        Ok(())
    }
}

pub fn verify(g: &Global, a: &VerifyArgs) -> Result<()> {
    // Ask for the key before any network work, and only for --deep.
    let identities = if a.deep {
        Some(settings::identities(g, a.identity.as_deref())?)
    } else {
        None
    };
    let by_id = a.snapshot != "latest";
    super::requests_to(if a.json {
        Requests::Nowhere
    } else {
        Requests::Stdout
    });
    let settings = Settings::resolve(g, false)?;
    let store = super::open_versioned_store(&settings, by_id, Expect::Snapshots)?;
    let r = (|| -> Result<()> {
        let id = settings.pick(store.as_ref(), &a.snapshot, &a.narrow)?.id;
        let report: Mutex<Box<dyn Write + Send>> = Mutex::new(Box::new(std::io::stdout()));
        let what = format!("snapshot verify --deep {id}");
        let thaw = super::thaw(store.as_ref(), a.thaw, what, a.json, &report);
        let gate = |blobs: &[(String, u64)]| thaw.ensure(blobs);
        let depth = match &identities {
            Some(identities) => Depth::Deep {
                identities,
                gate: &gate,
            },
            None if a.checksums => Depth::Checksums,
            None => Depth::Shallow,
        };
        let r = crate::verify::verify(store.as_ref(), id, depth)?;
        let mut out = std::io::stdout().lock();
        if a.json {
            let v = verify_json(&r, a.deep);
            writeln!(out, "{}", json_report(v, store.as_ref())).map_err(output)?;
        } else {
            write_verify_text(&mut out, &r, a.deep).map_err(output)?;
            writeln!(out, "{}", super::requests_line(store.as_ref())).map_err(output)?;
        }
        if r.problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Problems {
                count: r.problems.len(),
                what: format!("snapshot verify {}", r.id),
            })
        }
    })();
    super::ended(store.as_ref(), r)
}

fn blob_bytes(r: &crate::verify::Report) -> u64 {
    r.manifest
        .blobs
        .iter()
        .fold(0u64, |t, (_, s)| t.saturating_add(*s))
}

fn verify_json(r: &crate::verify::Report, deep: bool) -> serde_json::Value {
    json!({
        "snapshot": r.id,
        "deep": deep,
        "blobs": r.manifest.blobs.len(),
        "blob_bytes": blob_bytes(r),
        "chunks_checked": r.chunks_checked,
        "checksums": r.checksums.map(|c| json!({
            "matched": c.matched, "missing": c.missing, "kept_by_store": c.kept,
        })),
        "ok": r.problems.is_empty(),
        "problems": r.problems.iter().map(|p| json!({
            "kind": p.kind, "key": p.key, "message": p.message, "files": p.files,
        })).collect::<Vec<_>>(),
    })
}

fn write_verify_text(
    out: &mut dyn Write,
    r: &crate::verify::Report,
    deep: bool,
) -> std::io::Result<()> {
    for p in &r.problems {
        // Keys and messages may come from forged metadata: escaped.
        writeln!(
            out,
            "{}: {} {}",
            p.kind,
            crate::error::one_line(p.key.clone()),
            crate::error::one_line(p.message.clone())
        )?;
        if !p.files.is_empty() {
            writeln!(out, "  affects {} file(s):", p.files.len())?;
            for f in &p.files {
                // Paths from the metadata: control characters escaped.
                writeln!(out, "    {}", crate::error::one_line(f.clone()))?;
            }
        }
    }
    let mut what = format!(
        "{} blobs ({})",
        r.manifest.blobs.len(),
        human_bytes(blob_bytes(r))
    );
    if deep {
        what.push_str(&format!(", {} chunks", r.chunks_checked));
    }
    if let Some(c) = r.checksums {
        let note = if !c.kept {
            " (this store keeps no checksums: sizes checked only; --deep reads everything)"
        } else if c.missing > 0 && c.matched == 0 {
            " (the server gave no SHA-256 for any blob: a server without checksum \
             support, or blobs uploaded before vaultik sent them; sizes checked only)"
        } else if c.missing > 0 {
            " (blobs uploaded before vaultik sent checksums have none)"
        } else {
            ""
        };
        writeln!(
            out,
            "checksums: {} blob(s) match their names, {} without a stored checksum{note}",
            c.matched, c.missing
        )?;
    }
    let verdict = if r.problems.is_empty() {
        "ok"
    } else {
        "FAILED"
    };
    writeln!(out, "snapshot {}: {what} checked: {verdict}", r.id)
}
