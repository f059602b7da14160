//! `store check`: what a provider does, found by trying it once, before it
//! is trusted with backups. Probe objects under `check/<random>/` (their
//! own keys in the layout, never read as anything else) are written, read
//! whole and ranged, listed and deleted; the bucket's versioning and
//! Object Lock are asked, and the server's clock read. Probes an earlier check left behind are deleted first.

use std::io::{Read, Write};
use std::time::Instant;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::settings::Settings;
use super::{output, warn};
use crate::error::Result;
use crate::layout::{self, Key};
use crate::store::class::StorageClass;

/// The small probe, and the one that measures throughput.
const SMALL: usize = 4 << 10;
const LARGE: usize = 8 << 20;

/// One finding: what was tried, whether it worked, and what was seen.
struct Finding {
    what: &'static str,
    ok: Option<bool>,
    said: String,
}

impl Finding {
    fn new(what: &'static str, ok: Option<bool>, said: impl Into<String>) -> Finding {
        Finding {
            what,
            ok,
            said: crate::error::one_line(said.into()),
        }
    }
}

pub fn run(settings: &Settings, json: bool) -> Result<()> {
    let store = settings.open_store(false)?;
    let store = store.as_ref();
    // Probes of an earlier check that did not finish.
    let left: Vec<String> = store
        .list(layout::PROBES)?
        .objects
        .into_iter()
        .map(|o| o.key)
        .collect();
    if !left.is_empty() {
        store.delete_many(&left)?;
    }
    let run = crate::scratch::random::<16>("draw a random probe name")?;
    let small_key = Key::Probe { run, n: 0 }.to_key();
    let large_key = Key::Probe { run, n: 1 }.to_key();
    let small: Vec<u8> = crate::scratch::random::<SMALL>("draw probe bytes")?.to_vec();
    let mut large = vec![0u8; LARGE];
    for (i, b) in large.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let mut found = Vec::new();
    let mut figures = Vec::new();

    // Writes: a small one (latency), a large one from a file (throughput).
    let t = Instant::now();
    store.put_bytes(&small_key, &small)?;
    let put_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut dir = crate::scratch::PrivateDir::new(&std::env::temp_dir())?;
    let (path, mut file) = dir.file("probe")?;
    file.write_all(&large)
        .map_err(|e| crate::error::Error::Io {
            op: "write",
            path: path.clone(),
            source: e,
        })?;
    drop(file);
    let t = Instant::now();
    store.put_file(&large_key, &path, StorageClass::Standard)?;
    let up = LARGE as f64 / t.elapsed().as_secs_f64();
    found.push(Finding::new("write", Some(true), "PUT of 4 KiB and 8 MiB"));

    // Reads: whole (latency, throughput) and ranged.
    let t = Instant::now();
    let back = store.get(&small_key, SMALL as u64)?;
    let get_ms = t.elapsed().as_secs_f64() * 1000.0;
    found.push(Finding::new(
        "read",
        Some(back == small),
        if back == small {
            "the bytes written".to_string()
        } else {
            format!("{} other bytes", back.len())
        },
    ));
    let t = Instant::now();
    let whole = store.get(&large_key, LARGE as u64)?;
    let down = LARGE as f64 / t.elapsed().as_secs_f64();
    if whole != large {
        found.push(Finding::new("read", Some(false), "8 MiB: other bytes"));
    }
    let (start, len) = (1_000_003u64, 65_536u64);
    let ranged = store.open_range(&large_key, start, len).and_then(|mut r| {
        let mut out = Vec::new();
        r.read_to_end(&mut out)
            .map_err(|e| crate::error::Error::store("GET", &large_key, e))?;
        Ok(out)
    });
    found.push(match ranged {
        Ok(b) if b[..] == large[start as usize..(start + len) as usize] => {
            Finding::new("range reads", Some(true), "206 with the bytes asked for")
        }
        Ok(_) => Finding::new("range reads", Some(false), "other bytes"),
        Err(e) => Finding::new("range reads", Some(false), e.to_string()),
    });

    // Checksums kept: the SHA-256 sent with the PUT, given back by HEAD.
    let sha: [u8; 32] = Sha256::digest(&small).into();
    found.push(if !store.keeps_checksums() {
        Finding::new("checksums kept", None, "not asked (checksum is not sha256)")
    } else {
        match store.stat(&small_key, true) {
            Ok(Some(m)) => match m.sha256 {
                Some(s) if s == sha => Finding::new("checksums kept", Some(true), "SHA-256"),
                Some(_) => Finding::new("checksums kept", Some(false), "another SHA-256"),
                None => Finding::new(
                    "checksums kept",
                    Some(false),
                    "not given back: verify --checksums has nothing to compare",
                ),
            },
            Ok(None) => Finding::new("checksums kept", Some(false), "the probe is gone"),
            Err(e) => Finding::new("checksums kept", Some(false), e.to_string()),
        }
    });

    // Clock skew, from the HEADs' Date: S3 refuses a signature more than
    // 15 minutes off.
    found.push(match store.clock_skew() {
        Some(s) if s.abs() <= 60 => Finding::new("clock skew", Some(true), format!("{s:+} s")),
        Some(s) => Finding::new(
            "clock skew",
            Some(false),
            format!("{s:+} s: set this host's clock (S3 refuses 15 minutes off)"),
        ),
        None => Finding::new("clock skew", None, "the server gave no Date"),
    });

    // Listing.
    let t = Instant::now();
    let listed = store.list(&format!("{}{}/", layout::PROBES, crate::chunk::hex(&run)));
    let list_ms = t.elapsed().as_secs_f64() * 1000.0;
    found.push(match &listed {
        Ok(l) => {
            let sizes: Vec<(&str, u64)> =
                l.objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
            let want = [
                (small_key.as_str(), SMALL as u64),
                (large_key.as_str(), LARGE as u64),
            ];
            Finding::new(
                "list",
                Some(sizes == want),
                format!("{} of 2 probes, with their sizes", sizes.len()),
            )
        }
        Err(e) => Finding::new("list", Some(false), e.to_string()),
    });

    // The bucket's settings.
    let asked = |r: Result<bool>| match r {
        Ok(true) => (Some(true), "on".to_string()),
        Ok(false) => (Some(false), "off".to_string()),
        Err(e) => (None, format!("not known: {e}")),
    };
    let (ok, said) = asked(store.versioned());
    found.push(Finding::new("versioning", ok, said));
    let (ok, said) = asked(store.object_lock_enabled());
    found.push(Finding::new("Object Lock", ok, said));

    // Storage classes: a small probe written in each, then listed (the
    // class the provider says it holds). Never read back: a probe in
    // GLACIER or DEEP_ARCHIVE could not be.
    let mut keys = vec![small_key.clone(), large_key.clone()];
    if store.has_classes() {
        let (path, mut file) = dir.file("class-probe")?;
        file.write_all(&small)
            .map_err(|e| crate::error::Error::Io {
                op: "write",
                path: path.clone(),
                source: e,
            })?;
        drop(file);
        let mut taken = Vec::new();
        let mut refused: Vec<(String, Vec<&str>)> = Vec::new();
        let mut other = Vec::new();
        let mut written = Vec::new();
        for (n, class) in StorageClass::ALL.iter().enumerate().skip(1) {
            let key = Key::Probe {
                run,
                n: n as u8 + 1,
            }
            .to_key();
            match store.put_file(&key, &path, *class) {
                Ok(()) => {
                    keys.push(key.clone());
                    written.push((key, *class));
                }
                Err(e) => {
                    let why = short(&e.to_string());
                    match refused
                        .iter_mut()
                        .find(|(w, _): &&mut (String, Vec<&str>)| *w == why)
                    {
                        Some((_, names)) => names.push(class.name()),
                        None => refused.push((why, vec![class.name()])),
                    }
                }
            }
        }
        if !written.is_empty() {
            let listed = store.list(&format!("{}{}/", layout::PROBES, crate::chunk::hex(&run)))?;
            for (key, class) in &written {
                match listed.objects.iter().find(|o| &o.key == key) {
                    Some(o) if o.class == *class => taken.push(class.name().to_string()),
                    Some(o) => other.push(format!("{} listed as {}", class.name(), o.class.name())),
                    None => other.push(format!("{} not listed", class.name())),
                }
            }
        }
        let mut said = Vec::new();
        if !taken.is_empty() {
            said.push(format!("kept {}", taken.join(", ")));
        }
        if !other.is_empty() {
            said.push(other.join(", "));
        }
        for (why, names) in &refused {
            said.push(format!("refused {} ({why})", names.join(", ")));
        }
        found.push(Finding::new(
            "storage classes",
            Some(refused.is_empty() && other.is_empty()),
            said.join("; "),
        ));
    } else {
        found.push(Finding::new(
            "storage classes",
            None,
            "a directory store has none",
        ));
    }

    // DeleteObjects, and that the probes are gone.
    let batch = store.delete_many(&keys);
    let gone = store
        .list(&format!("{}{}/", layout::PROBES, crate::chunk::hex(&run)))
        .map(|l| l.objects.is_empty());
    found.push(match (&batch, &gone) {
        (Ok(()), Ok(true)) => Finding::new(
            "DeleteObjects",
            Some(true),
            format!("{} probes deleted in one request", keys.len()),
        ),
        (Ok(()), _) => Finding::new(
            "DeleteObjects",
            Some(false),
            "accepted, probes still listed",
        ),
        (Err(e), _) => Finding::new("DeleteObjects", Some(false), e.to_string()),
    });
    if batch.is_err() || !matches!(gone, Ok(true)) {
        for k in &keys {
            if let Err(e) = store.delete(k) {
                warn(&format!("{k} could not be deleted: {e}"));
            }
        }
    }

    figures.push(("PUT latency", format!("{put_ms:.0} ms (4 KiB)")));
    figures.push(("GET latency", format!("{get_ms:.0} ms (4 KiB)")));
    figures.push(("LIST latency", format!("{list_ms:.0} ms")));
    figures.push((
        "upload",
        format!("{}/s (8 MiB, one request)", crate::human_bytes(up as u64)),
    ));
    figures.push((
        "download",
        format!("{}/s (8 MiB, one request)", crate::human_bytes(down as u64)),
    ));

    let mut out = std::io::stdout().lock();
    if json {
        let v = json!({
            "store": store.describe(),
            "signed_by": store.signed_by(),
            "findings": found.iter().map(|f| json!({
                "what": f.what, "ok": f.ok, "said": f.said,
            })).collect::<Vec<Value>>(),
            "put_latency_ms": put_ms.round(),
            "get_latency_ms": get_ms.round(),
            "list_latency_ms": list_ms.round(),
            "upload_bytes_per_sec": up.round(),
            "download_bytes_per_sec": down.round(),
            "requests": store.stats().to_json(),
        });
        writeln!(out, "{v}").map_err(output)?;
    } else {
        writeln!(out, "store:           {}", store.describe()).map_err(output)?;
        if let Some(s) = store.signed_by() {
            writeln!(out, "signed by:       {s}").map_err(output)?;
        }
        for f in &found {
            let label = format!("{}:", f.what);
            // A bucket setting is neither good nor bad: said as it is.
            if matches!(f.what, "versioning" | "Object Lock") {
                writeln!(out, "{label:<16} {}", f.said).map_err(output)?;
                continue;
            }
            let mark = match f.ok {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "?",
            };
            writeln!(out, "{label:<16} {mark}: {}", f.said).map_err(output)?;
        }
        for (what, v) in &figures {
            writeln!(out, "{:<16} {v}", format!("{what}:")).map_err(output)?;
        }
        writeln!(out, "{}", store.stats().summary()).map_err(output)?;
    }
    Ok(())
}

/// An error's S3 code, or its first words: a refusal in a list of them.
fn short(e: &str) -> String {
    let words: Vec<&str> = e
        .rsplit(": ")
        .next()
        .unwrap_or(e)
        .split_whitespace()
        .collect();
    words.iter().take(4).copied().collect::<Vec<_>>().join(" ")
}
