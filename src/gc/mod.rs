//! Keyless store maintenance: what the store holds (from listings and the
//! clear manifests), which snapshots a retention rule removes, and garbage
//! collection of blobs no manifest references. Nothing here needs the
//! private key, and nothing ever writes a lock object to the bucket.
//!
//! Safety against backups running elsewhere (each with its own index, which
//! may deduplicate against any blob it knows) comes from:
//! - the grace period: blobs younger than it are never deleted (a run in
//!   progress has uploaded them but not yet published its manifest);
//! - two-phase deletion: an old unreferenced blob is first *marked* (a clear
//!   object under `gc/pending/` lists it), and only a purge at least a grace
//!   period later deletes it, if it is still unreferenced then. A backup
//!   never deduplicates against a marked blob (it uploads the data again),
//!   so once the mark is older than the longest run, no run in progress can
//!   still publish a reference to it that the purge would not see;
//! - re-reading the manifests just before deleting;
//! - `snapshot create` checking its blobs after it publishes a manifest.
//!
//! With `grace_period = 0s` blobs are deleted at once (single-host setups
//! and tests).

pub mod purge;
pub mod refs;
pub mod retention;

pub use refs::{BlobSet, Refs};
pub use retention::{Decision, Keep, Retention};

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::layout;
use crate::manifest::{self, Summary};
use crate::store::{ObjectInfo, Store};

/// Everything the store holds, from two listings and the manifests. Of a
/// manifest it keeps its summary and the listed blobs it references
/// (`Refs`): what the store holds bounds it, not what manifests claim.
pub struct View {
    /// Every manifest that could be read, oldest first (dated ahead ones
    /// included: their blobs are kept, but retention leaves them alone).
    pub manifests: Vec<Summary>,
    /// For each of `manifests`, the blobs of `blobs` it references.
    refs: Vec<Refs>,
    /// Manifests that could not be read: the key and why.
    pub damaged: Vec<(String, String)>,
    /// The blobs, sorted by key (as listings are).
    pub blobs: Vec<ObjectInfo>,
    pub metadata: Vec<ObjectInfo>,
    /// Objects under the store's areas that are not of the layout (the
    /// first ones named, all counted); never read or deleted.
    pub foreign: Vec<String>,
    pub foreign_count: u64,
}

impl View {
    pub fn load(store: &dyn Store) -> Result<View> {
        View::load_trusting(store, &crate::signing::Trust::default())
    }

    /// `load`, each manifest's signature checked when `trust` is set (one
    /// GET more each): those not signed by a trusted key are `untrusted`,
    /// their blobs kept all the same.
    pub fn load_trusting(store: &dyn Store, trust: &crate::signing::Trust) -> Result<View> {
        let meta = store.list(layout::METADATA)?;
        // Blobs are listed before the manifests are read, so that a
        // manifest's references become indexes into the listing as it is
        // read. No less safe than the other order: a blob uploaded after
        // this listing is no candidate for deletion, and a manifest
        // published after the metadata listing is read by `collect`
        // before anything is deleted.
        let mut blobs = store.list(layout::BLOBS)?;
        blobs.objects.sort_by(|a, b| a.key.cmp(&b.key));
        let mut manifests = Vec::new();
        let mut refs = Vec::new();
        let mut damaged = Vec::new();
        for listed in manifest::snapshots_in(&meta.objects) {
            let loaded = manifest::load_with_bytes(store, &listed).and_then(|(mut p, raw)| {
                if trust.is_set() {
                    let (s, _) =
                        crate::signing::check_entry(store, &listed.id, &raw, &trust.signers)?;
                    p.summary.untrusted = !trust.trusts(&s);
                }
                Ok(p)
            });
            match loaded {
                Ok(p) => {
                    refs.push(Refs::of(&p.blobs, &blobs.objects));
                    manifests.push(p.summary);
                }
                // Removed between the listing and now.
                Err(Error::NotFound { .. }) => continue,
                Err(e @ Error::Corrupt { .. }) => {
                    damaged.push((layout::manifest(&listed.id), e.to_string()))
                }
                Err(e) => return Err(e),
            }
        }
        let marks = store.list(layout::MARKS)?;
        let marked = store.list(layout::MARKED)?;
        let mut foreign = meta.foreign;
        foreign.extend(blobs.foreign);
        foreign.extend(marks.foreign);
        foreign.extend(marked.foreign);
        foreign.truncate(crate::store::FOREIGN_SHOWN);
        Ok(View {
            manifests,
            refs,
            damaged,
            blobs: blobs.objects,
            metadata: meta.objects,
            foreign,
            foreign_count: meta.foreign_count
                + blobs.foreign_count
                + marks.foreign_count
                + marked.foreign_count,
        })
    }

    /// Refuse to delete anything while a manifest cannot be read: the
    /// blobs it names are unknown, and would look unreferenced.
    pub fn check_deletable(&self, what: &'static str) -> Result<()> {
        match self.damaged.first() {
            None => Ok(()),
            Some((key, why)) => Err(Error::Undeletable {
                what,
                damaged: self.damaged.len(),
                key: key.clone(),
                why: why.clone(),
            }),
        }
    }

    /// Snapshots that date themselves ahead of the store's clock.
    pub fn dated_ahead(&self) -> impl Iterator<Item = &Summary> {
        self.manifests.iter().filter(|m| m.dated_ahead())
    }

    /// The blobs of `blobs` that the snapshots not in `except` reference.
    pub fn referenced(&self, except: &HashSet<&str>) -> BlobSet {
        let mut set = BlobSet::new(self.blobs.len());
        for (m, r) in self.manifests.iter().zip(&self.refs) {
            if !except.contains(m.id.as_str()) {
                set.add(r);
            }
        }
        set
    }
}

/// What Object Lock holds among some objects (one HEAD each, eight at a
/// time): those whose current version is locked past `now`, their bytes,
/// and the earliest and latest retain-until dates.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Locks {
    pub objects: usize,
    pub bytes: u64,
    pub earliest: Option<u64>,
    pub latest: Option<u64>,
}

impl Locks {
    pub fn of(store: &dyn Store, objects: &[ObjectInfo], now: u64) -> Result<Locks> {
        let mut l = Locks::default();
        for (o, meta) in objects.iter().zip(crate::store::parallel(objects, |o| {
            store.stat(&o.key, false)
        })) {
            let Some(until) = meta?.and_then(|m| m.locked_until).filter(|u| *u > now) else {
                continue;
            };
            l.objects += 1;
            l.bytes = l.bytes.saturating_add(o.size);
            l.earliest = Some(l.earliest.map_or(until, |e| e.min(until)));
            l.latest = Some(l.latest.map_or(until, |e| e.max(until)));
        }
        Ok(l)
    }

    /// `N object(s), SIZE, until A .. B`.
    pub fn describe(&self) -> String {
        match (self.earliest, self.latest) {
            (Some(a), Some(b)) => format!(
                "{} object(s), {}, locked until {} .. {}",
                self.objects,
                crate::human_bytes(self.bytes),
                crate::time::display(a),
                crate::time::display(b)
            ),
            _ => "none".into(),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "objects": self.objects,
            "bytes": self.bytes,
            "earliest_until": self.earliest.map(crate::time::rfc3339),
            "latest_until": self.latest.map(crate::time::rfc3339),
        })
    }
}

/// The snapshots `rule` removes, oldest first. Only snapshots whose name is
/// `name` (when given) and whose host is `host` (when given) are considered
/// (see `retention`).
pub fn select<'a>(
    manifests: &'a [Summary],
    rule: &Retention,
    name: Option<&str>,
    host: Option<&str>,
    now: u64,
) -> Result<Vec<&'a Summary>> {
    let mut out: Vec<&Summary> = rule
        .decide(manifests, name, host, now)?
        .into_iter()
        .filter(|(_, d)| *d == Decision::Remove)
        .map(|(m, _)| m)
        .collect();
    out.sort_by(|a, b| manifest::order(a, b));
    Ok(out)
}

/// Remove snapshots: the manifest first (the snapshot disappears at once),
/// then the encrypted metadata and the signature.
pub fn remove_snapshots(store: &dyn Store, ids: &[&str]) -> Result<()> {
    let manifests: Vec<String> = ids.iter().map(|id| layout::manifest(id)).collect();
    store.delete_many(&manifests)?;
    let rest: Vec<String> = ids
        .iter()
        .flat_map(|id| [layout::metadata(id), layout::signature(id)])
        .collect();
    store.delete_many(&rest)
}

/// What a garbage collection deletes, and what it leaves for later.
#[derive(Debug, Default)]
pub struct Collect {
    pub delete: Vec<ObjectInfo>,
    pub young: Vec<ObjectInfo>,
}

impl Collect {
    /// (Sizes come from listings: a forged one cannot overflow the sum.)
    pub fn bytes(list: &[ObjectInfo]) -> u64 {
        list.iter().fold(0u64, |t, o| t.saturating_add(o.size))
    }
}

/// Unreferenced blobs, and metadata objects of snapshots that have no
/// manifest (a run killed between its two uploads), split by the grace period.
pub fn plan(view: &View, removed: &HashSet<&str>, grace: u64, now: u64) -> Collect {
    let keep = view.referenced(removed);
    let live_ids: HashSet<&str> = view
        .manifests
        .iter()
        .filter(|m| !removed.contains(m.id.as_str()))
        .map(|m| m.id.as_str())
        .collect();
    let mut c = Collect::default();
    let orphans = view
        .metadata
        .iter()
        .filter(|o| match layout::parse(&o.key) {
            Some(layout::Key::Metadata(id) | layout::Key::Signature(id)) => {
                !live_ids.contains(id) && !removed.contains(id)
            }
            _ => false,
        });
    for o in view
        .blobs
        .iter()
        .enumerate()
        .filter(|(i, _)| !keep.contains(*i))
        .map(|(_, o)| o)
        .chain(orphans)
    {
        // An unknown age (0) is treated as young: never delete on a guess.
        if o.modified > 0 && now.saturating_sub(o.modified) >= grace {
            c.delete.push(o.clone());
        } else {
            c.young.push(o.clone());
        }
    }
    c
}

/// A mark of a purge before 0.2 is at most this big (about 300,000 blob
/// keys).
pub const MARK_MAX: u64 = 32 << 20;

/// One mark: blobs found unreferenced (and older than the grace period) by
/// a purge at `time`. Written as one empty object per blob,
/// `gc/marked/<time>/<blob hash>`, so that a backup learns the marked blobs
/// from a listing without reading an object; purges before 0.2 wrote one
/// JSON object (`gc/pending/`), still read and honoured.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// The objects that make the mark (removed with it).
    pub keys: Vec<String>,
    pub time: u64,
    pub blobs: Vec<String>,
}

impl Mark {
    pub fn new(time: u64, mut blobs: Vec<String>) -> Mark {
        blobs.sort();
        let keys = blobs
            .iter()
            .filter_map(|b| match layout::parse(b) {
                Some(layout::Key::Blob(blob)) => Some(layout::Key::Marked { time, blob }.to_key()),
                _ => None,
            })
            .collect();
        Mark { keys, time, blobs }
    }

    /// The named marks of a listing of `gc/marked/`, one per time.
    pub fn from_listing(objects: &[ObjectInfo]) -> Vec<Mark> {
        let mut by_time: std::collections::BTreeMap<u64, Mark> = Default::default();
        for o in objects {
            if let Some(layout::Key::Marked { time, blob }) = layout::parse(&o.key) {
                let m = by_time.entry(time).or_insert_with(|| Mark {
                    keys: Vec::new(),
                    time,
                    blobs: Vec::new(),
                });
                m.keys.push(o.key.clone());
                m.blobs.push(layout::blob(&blob));
            }
        }
        by_time.into_values().collect()
    }

    /// A mark's content as purges before 0.2 wrote it (`gc/pending/`).
    #[cfg(test)]
    fn legacy(time: u64, mut blobs: Vec<String>) -> Mark {
        use sha2::{Digest, Sha256};
        blobs.sort();
        let mut m = Mark {
            keys: Vec::new(),
            time,
            blobs,
        };
        let h = Sha256::digest(m.to_bytes());
        m.keys = vec![layout::mark(time, &h.into())];
        m
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let v = json!({"time": self.time, "blobs": self.blobs});
        let mut out = serde_json::to_vec_pretty(&v).expect("JSON values serialize");
        out.push(b'\n');
        out
    }

    pub fn from_bytes(key: &str, data: &[u8]) -> Result<Mark> {
        let bad = |why: &str| Error::corrupt(key, format!("not a deletion mark: {why}"));
        let v: Value = serde_json::from_slice(data).map_err(|e| bad(&e.to_string()))?;
        let time = v["time"].as_u64().ok_or_else(|| bad("no time"))?;
        let blobs = v["blobs"]
            .as_array()
            .ok_or_else(|| bad("no blobs"))?
            .iter()
            .map(|b| {
                b.as_str()
                    .filter(|k| layout::is_blob(k))
                    .map(str::to_string)
                    .ok_or_else(|| bad("a blob that is not a blob key"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Mark {
            keys: vec![key.to_string()],
            time,
            blobs,
        })
    }
}

/// Every mark in the store: the named ones, from a listing, and those of
/// purges before 0.2, read; one of those that cannot be read goes to
/// `bad`, which decides whether that is an error.
fn read_marks(store: &dyn Store, bad: &dyn Fn(Error) -> Result<()>) -> Result<Vec<Mark>> {
    let mut out = Mark::from_listing(&store.list(layout::MARKED)?.objects);
    for o in store.list(layout::MARKS)?.objects {
        match store
            .get(&o.key, MARK_MAX)
            .and_then(|d| Mark::from_bytes(&o.key, &d))
        {
            Ok(m) => out.push(m),
            Err(Error::NotFound { .. }) => continue,
            Err(e @ Error::Corrupt { .. }) => bad(e)?,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Every mark a backup can learn from listings alone (the named ones).
/// Marks of purges before 0.2 are not read: a backup reads no object (its
/// host may have no right to); the worst they cause is a backup that
/// deduplicates against a blob such a mark names and is withdrawn if a
/// purge deletes the blob before it publishes (`BlobsVanished`).
pub fn listed_marks(store: &dyn Store) -> Result<Vec<Mark>> {
    Ok(Mark::from_listing(&store.list(layout::MARKED)?.objects))
}

/// Every mark in the store. A mark that cannot be read is an error: purge
/// then deletes nothing rather than guess.
pub fn load_marks(store: &dyn Store) -> Result<Vec<Mark>> {
    read_marks(store, &Err)
}

/// The blobs a backup must not deduplicate against: every blob a named
/// mark names (`listed_marks`).
pub fn marked_blobs(store: &dyn Store) -> Result<HashSet<String>> {
    Ok(listed_marks(store)?
        .into_iter()
        .flat_map(|m| m.blobs)
        .collect())
}

/// What to do with the objects `plan` chose, given the marks: delete what a
/// mark at least `grace` old names (and orphaned metadata, which no run
/// reuses), mark the blobs no mark names yet, leave the rest waiting. With
/// `grace` 0 everything is deleted at once.
#[derive(Debug, Default)]
pub struct Staged {
    pub delete: Vec<ObjectInfo>,
    pub mark: Vec<ObjectInfo>,
    pub waiting: Vec<ObjectInfo>,
    /// Marks that are ripe: removed once the deletions are done.
    pub done_marks: Vec<String>,
}

pub fn stage(candidates: Vec<ObjectInfo>, marks: &[Mark], grace: u64, now: u64) -> Staged {
    let ripe = |m: &&Mark| now.saturating_sub(m.time) >= grace;
    let ripe_blobs: HashSet<&str> = marks
        .iter()
        .filter(ripe)
        .flat_map(|m| m.blobs.iter().map(String::as_str))
        .collect();
    let marked: HashSet<&str> = marks
        .iter()
        .flat_map(|m| m.blobs.iter().map(String::as_str))
        .collect();
    let mut st = Staged {
        done_marks: marks
            .iter()
            .filter(ripe)
            .flat_map(|m| m.keys.iter().cloned())
            .collect(),
        ..Staged::default()
    };
    for o in candidates {
        if grace == 0 || !layout::is_blob(&o.key) || ripe_blobs.contains(o.key.as_str()) {
            st.delete.push(o);
        } else if marked.contains(o.key.as_str()) {
            st.waiting.push(o);
        } else {
            st.mark.push(o);
        }
    }
    st
}

/// Delete what `plan` chose, after reading the manifests once more: a
/// snapshot published since the plan was made keeps every blob it names
/// (of those about to be deleted: all that is kept of it). Returns the
/// objects actually deleted.
pub fn collect(
    store: &dyn Store,
    view: &View,
    mut delete: Vec<ObjectInfo>,
) -> Result<Vec<ObjectInfo>> {
    let known: HashSet<&str> = view.manifests.iter().map(|m| m.id.as_str()).collect();
    let blob_of = |o: &ObjectInfo| match layout::parse(&o.key) {
        Some(layout::Key::Blob(hash)) => Some(hash),
        _ => None,
    };
    let deleting: HashSet<[u8; 32]> = delete.iter().filter_map(blob_of).collect();
    let mut late_blobs: HashSet<[u8; 32]> = HashSet::new();
    let mut late_metadata: HashSet<String> = HashSet::new();
    for listed in manifest::list(store)? {
        if known.contains(listed.id.as_str()) {
            continue;
        }
        // A manifest that cannot be read now stops the deletion.
        match manifest::load(store, &listed) {
            Ok(p) => {
                late_blobs.extend(
                    p.blobs
                        .iter()
                        .map(|b| b.hash)
                        .filter(|h| deleting.contains(h)),
                );
                late_metadata.insert(layout::metadata(&listed.id));
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    delete.retain(|o| match blob_of(o) {
        Some(hash) => !late_blobs.contains(&hash),
        None => !late_metadata.contains(&o.key),
    });
    let keys: Vec<String> = delete.iter().map(|o| o.key.clone()).collect();
    store.delete_many(&keys)?;
    Ok(delete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{BlobRef, Manifest};
    use sha2::{Digest, Sha256};

    /// A snapshot called `short` of host `host` and name `name`, dated
    /// `time` (its real id spells all of that).
    fn m(short: &str, host: &str, name: &str, time: u64, blobs: &[&str]) -> Manifest {
        Manifest {
            id: layout::make_id(host, &format!("{name}-{short}"), time),
            hostname: host.into(),
            name: name.into(),
            time,
            blobs: blobs.iter().map(|b| (k(b), 10)).collect(),
            metadata_size: 1,
            metadata_sha256: None,
            metadata_sha256_also: None,
        }
    }

    /// A summary as listed, by a store whose clock is far ahead.
    fn listed(m: &Manifest) -> Summary {
        m.summary(1 << 40)
    }

    /// The short name of a snapshot made by `m`.
    fn short(m: &Summary) -> String {
        let p = layout::parse_id(&m.id).unwrap();
        p.name.split_once('-').unwrap().1.to_string()
    }

    /// A blob key for a short name.
    fn k(name: &str) -> String {
        layout::blob(&Sha256::digest(name.as_bytes()).into())
    }

    fn meta(short: &str) -> String {
        layout::metadata(&layout::make_id("h", &format!("a-{short}"), 1))
    }

    fn obj(key: &str, modified: u64) -> ObjectInfo {
        ObjectInfo {
            class: Default::default(),
            key: key.into(),
            size: 10,
            modified,
        }
    }

    /// What `View::load` would make of these manifests and listings.
    fn view(manifests: &[Manifest], mut blobs: Vec<ObjectInfo>, metadata: Vec<ObjectInfo>) -> View {
        blobs.sort_by(|a, b| a.key.cmp(&b.key));
        let refs = manifests
            .iter()
            .map(|m| {
                let named: Vec<BlobRef> = m
                    .blobs
                    .iter()
                    .map(|(key, size)| match layout::parse(key) {
                        Some(layout::Key::Blob(hash)) => BlobRef { hash, size: *size },
                        _ => panic!("{key}"),
                    })
                    .collect();
                Refs::of(&named, &blobs)
            })
            .collect();
        View {
            manifests: manifests.iter().map(listed).collect(),
            refs,
            damaged: Vec::new(),
            blobs,
            metadata,
            foreign: Vec::new(),
            foreign_count: 0,
        }
    }

    /// A snapshot published after the view was loaded keeps what it
    /// names of what was about to be deleted (a blob, its own metadata);
    /// the rest goes.
    #[test]
    fn collect_spares_what_a_late_snapshot_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::LocalStore::open(&dir.path().join("s"), true).unwrap();
        for b in ["kept", "late", "dead"] {
            store.put_bytes(&k(b), b"0123456789").unwrap();
        }
        let put_manifest = |m: &Manifest| {
            store
                .put_bytes(&layout::manifest(&m.id), &m.to_bytes().unwrap())
                .unwrap();
            store.put_bytes(&layout::metadata(&m.id), b"x").unwrap();
        };
        // As a backup writes them (`m` gives names its ids do not spell).
        let real = |short: &str, time: u64, blob: &str| Manifest {
            name: format!("a-{short}"),
            ..m(short, "h", "a", time, &[blob])
        };
        put_manifest(&real("s1", 100, "kept"));
        let view = View::load(&store).unwrap();
        assert_eq!(view.manifests.len(), 1, "{:?}", view.damaged);
        let late = real("s2", 200, "late");
        let delete: Vec<ObjectInfo> = ["late", "dead"]
            .iter()
            .map(|b| obj(&k(b), 1))
            .chain(std::iter::once(obj(&layout::metadata(&late.id), 1)))
            .collect();
        put_manifest(&late);
        let deleted = collect(&store, &view, delete).unwrap();
        assert_eq!(
            deleted.iter().map(|o| o.key.clone()).collect::<Vec<_>>(),
            vec![k("dead")]
        );
        let left: Vec<String> = store
            .list(layout::BLOBS)
            .unwrap()
            .objects
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert!(left.contains(&k("late")) && left.contains(&k("kept")));
        assert!(!left.contains(&k("dead")));
        assert!(store.head(&layout::metadata(&late.id)).unwrap().is_some());
    }

    #[test]
    fn retention_rules() {
        let mut ms: Vec<Summary> = [
            m("a1", "h", "a", 100, &[]),
            m("a2", "h", "a", 200, &[]),
            m("a3", "h", "a", 300, &[]),
            m("b1", "h", "b", 100, &[]),
            m("x1", "other", "a", 50, &[]),
        ]
        .iter()
        .map(listed)
        .collect();
        let ids = |v: Vec<&Summary>| v.iter().map(|m| short(m)).collect::<Vec<_>>();
        let latest = &Retention {
            keep_latest: Some(1),
            keep_within: None,
            ..Retention::default()
        };
        assert_eq!(
            ids(select(&ms, latest, None, None, 1000).unwrap()),
            vec!["a1", "a2"]
        );
        assert_eq!(
            ids(select(&ms, latest, Some("b"), None, 1000).unwrap()),
            Vec::<String>::new()
        );
        let older = &Retention {
            keep_latest: None,
            keep_within: Some(150),
            ..Retention::default()
        };
        // a3 (age 700) is the newest of its group: always kept.
        assert_eq!(
            ids(select(&ms, older, None, None, 1000).unwrap()),
            vec!["a1", "a2"]
        );
        assert_eq!(
            ids(select(&ms, older, None, None, 320).unwrap()),
            vec!["a1"]
        );
        let both = &Retention {
            keep_latest: Some(2),
            keep_within: Some(950),
            ..Retention::default()
        };
        assert_eq!(
            ids(select(&ms, both, None, Some("h"), 1000).unwrap()),
            Vec::<String>::new()
        );
        let two = &Retention {
            keep_latest: Some(2),
            keep_within: None,
            ..Retention::default()
        };
        assert_eq!(ids(select(&ms, two, None, None, 1000).unwrap()), vec!["a1"]);
        // One dated far ahead of the store's clock takes no rank: the real
        // newest stays the newest, and it is not removed either.
        let ahead = m("evil", "h", "a", 4_000_000_000, &[]).summary(1000);
        ms.push(ahead);
        assert_eq!(
            ids(select(&ms, latest, None, None, 1000).unwrap()),
            vec!["a1", "a2"]
        );
        assert_eq!(ids(select(&ms, two, None, None, 1000).unwrap()), vec!["a1"]);
    }

    #[test]
    fn deletion_waits_for_a_ripe_mark() {
        let cands = vec![
            obj(&k("new-candidate"), 1),
            obj(&k("marked-recently"), 1),
            obj(&k("marked-long-ago"), 1),
            obj(&meta("orphan"), 1),
        ];
        let marks = vec![
            Mark::new(950, vec![k("marked-recently")]),
            Mark::legacy(800, vec![k("marked-long-ago"), k("since-reused")]),
        ];
        let keys = |v: &[ObjectInfo]| v.iter().map(|o| o.key.clone()).collect::<Vec<_>>();
        let st = stage(cands.clone(), &marks, 100, 1000);
        assert_eq!(keys(&st.delete), vec![k("marked-long-ago"), meta("orphan")]);
        assert_eq!(keys(&st.mark), vec![k("new-candidate")]);
        assert_eq!(keys(&st.waiting), vec![k("marked-recently")]);
        assert_eq!(st.done_marks, marks[1].keys);
        // No grace: everything at once, every mark done.
        let st = stage(cands, &marks, 0, 1000);
        assert_eq!(st.delete.len(), 4);
        assert!(st.mark.is_empty() && st.waiting.is_empty());
        assert_eq!(st.done_marks.len(), 2);
        // Marks round-trip and are checked.
        let m = &marks[1];
        assert_eq!(&Mark::from_bytes(&m.keys[0], &m.to_bytes()).unwrap(), m);
        assert!(matches!(
            layout::parse(&m.keys[0]),
            Some(layout::Key::Mark { .. })
        ));
        // Named marks come back from a listing, one per time.
        let named = Mark::new(700, vec![k("b"), k("a")]);
        let listed: Vec<ObjectInfo> = named.keys.iter().map(|key| obj(key, 700)).collect();
        assert_eq!(Mark::from_listing(&listed), vec![named]);
        let blob = k("x");
        for bad in [
            "{}".to_string(),
            r#"{"time": 1, "blobs": ["metadata/x"]}"#.to_string(),
            r#"{"time": 1, "blobs": ["blobs/../x"]}"#.to_string(),
            format!(
                r#"{{"time": 1, "blobs": ["{}"]}}"#,
                blob.replace("blobs/", "blobs/../")
            ),
            "garbage".to_string(),
        ] {
            assert!(
                Mark::from_bytes(&m.keys[0], bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn gc_keeps_referenced_and_young() {
        let s1 = m("s1", "h", "a", 1, &["k"]);
        let s2 = m("s2", "h", "a", 2, &["r"]);
        let view = view(
            &[s1.clone(), s2.clone()],
            vec![
                obj(&k("k"), 1),
                obj(&k("r"), 1),
                obj(&k("old"), 1),
                obj(&k("new"), 990),
                obj(&k("unknown-age"), 0),
            ],
            vec![
                obj(&layout::metadata(&s1.id), 1),
                obj(&layout::manifest(&s1.id), 1),
                obj(&layout::metadata(&s2.id), 1),
                obj(&meta("orphan"), 1),
            ],
        );
        let removed: HashSet<&str> = [s2.id.as_str()].into_iter().collect();
        let c = plan(&view, &removed, 100, 1000);
        // Blobs in the listing's order (by key), then orphaned metadata.
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let keys: Vec<_> = c.delete.iter().map(|o| o.key.clone()).collect();
        let mut want = sorted(vec![k("r"), k("old")]);
        want.push(meta("orphan"));
        assert_eq!(keys, want);
        let young: Vec<_> = c.young.iter().map(|o| o.key.clone()).collect();
        assert_eq!(young, sorted(vec![k("new"), k("unknown-age")]));
        // Everything referenced, or all but the removed snapshot's.
        let all = view.referenced(&HashSet::new());
        let kept: Vec<&str> = (0..view.blobs.len())
            .filter(|i| all.contains(*i))
            .map(|i| view.blobs[i].key.as_str())
            .collect();
        assert_eq!(kept, sorted(vec![k("k"), k("r")]));
        let some = view.referenced(&removed);
        assert_eq!((0..5).filter(|i| some.contains(*i)).count(), 1);
    }
}
