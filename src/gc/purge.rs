//! A purge: remove the snapshots a retention rule selects (or none: a
//! prune), then collect the garbage they leave, in two phases (see the
//! module above), keeping this host's index in step so that no later
//! backup deduplicates against a deleted blob.

use std::collections::{BTreeMap, HashSet};

use super::{Retention, View};
use crate::error::Result;
use crate::index::Index;
use crate::manifest::Summary;
use crate::store::class::StorageClass;
use crate::store::{ObjectInfo, Store};
use crate::time::now as unix_now;

/// What a purge or prune chose and did.
pub struct Report {
    pub dry_run: bool,
    pub removed: Vec<Summary>,
    /// Blobs (and orphaned metadata) deleted, or that would be.
    pub deleted: Vec<ObjectInfo>,
    /// Unreferenced objects kept because they are younger than the grace period.
    pub young: Vec<ObjectInfo>,
    /// Unreferenced blobs marked for deletion (now or by an earlier purge),
    /// deleted by a purge once the mark is older than the grace period.
    pub marked: Vec<ObjectInfo>,
    pub grace: u64,
    pub index_note: Option<String>,
    /// Snapshots dated ahead of the store's clock, which retention leaves alone.
    pub ahead: Vec<String>,
    /// Objects that are not vaultik's, left alone.
    pub foreign: u64,
    /// On a versioned bucket: what deleting leaves behind as noncurrent
    /// versions (objects, bytes), and which of them are locked.
    pub lingering: Option<(usize, u64, super::Locks)>,
}

/// Objects of one storage class deleted (or to be) before the class's
/// minimum storage duration: billed as if kept that long.
#[derive(Debug, Clone, PartialEq)]
pub struct Early {
    pub class: StorageClass,
    pub objects: usize,
    pub bytes: u64,
}

impl Report {
    /// Of what this purge deletes now or marks for deletion, the objects
    /// younger than their class's minimum storage duration, per class.
    pub fn early_deletions(&self, now: u64) -> Vec<Early> {
        let mut by: BTreeMap<StorageClass, Early> = BTreeMap::new();
        for o in self.deleted.iter().chain(&self.marked) {
            let min = o.class.min_days() * 86_400;
            // A time from the store may be anything: 0 (unknown) counts
            // as old, so that nothing is claimed without evidence.
            if min == 0 || o.modified == 0 || now.saturating_sub(o.modified) >= min {
                continue;
            }
            let e = by.entry(o.class).or_insert(Early {
                class: o.class,
                objects: 0,
                bytes: 0,
            });
            e.objects += 1;
            e.bytes = e.bytes.saturating_add(o.size);
        }
        by.into_values().collect()
    }
}

/// How a purge is to run.
pub struct Purge<'p> {
    pub store: &'p dyn Store,
    /// Seconds unreferenced objects and marks wait.
    pub grace: u64,
    /// Decide and report, but change nothing.
    pub dry_run: bool,
    /// This host's index, when no run holds it.
    pub index: Option<&'p mut Index>,
}

impl Purge<'_> {
    /// Remove the snapshots `rule` selects among those of `name` and
    /// `host` (when given), then collect garbage.
    /// Under `trust` (set), snapshots not signed by a trusted key are left
    /// out of the rules.
    pub fn by_rule(
        self,
        rule: &Retention,
        name: Option<&str>,
        host: Option<&str>,
        trust: &crate::signing::Trust,
    ) -> Result<Report> {
        let view = View::load_trusting(self.store, trust)?;
        let removed: Vec<Summary> = super::select(&view.manifests, rule, name, host, unix_now())?
            .into_iter()
            .cloned()
            .collect();
        self.snapshots(view, removed)
    }

    /// Remove `removed` (chosen from `view`), then collect garbage.
    pub fn snapshots(self, view: View, removed: Vec<Summary>) -> Result<Report> {
        let Purge {
            store,
            grace,
            dry_run,
            index,
        } = self;
        view.check_deletable(if removed.is_empty() { "prune" } else { "purge" })?;
        let ids: HashSet<&str> = removed.iter().map(|m| m.id.as_str()).collect();
        let now = unix_now();
        let plan = super::plan(&view, &ids, grace, now);
        let marks = super::load_marks(store)?;
        let staged = super::stage(plan.delete, &marks, grace, now);
        let mut marked = staged.mark.clone();
        marked.extend(staged.waiting.iter().cloned());
        let snapshot_objects: HashSet<String> = ids
            .iter()
            .flat_map(|id| {
                [
                    crate::layout::metadata(id),
                    crate::layout::manifest(id),
                    crate::layout::signature(id),
                ]
            })
            .collect();
        let mut report = Report {
            dry_run,
            removed,
            deleted: staged.delete.clone(),
            young: plan.young,
            marked,
            grace,
            index_note: None,
            ahead: view.dated_ahead().map(|m| m.id.clone()).collect(),
            foreign: view.foreign_count,
            lingering: None,
        };
        // A versioned bucket keeps what is deleted as noncurrent versions
        // (vaultik deletes only current objects: a locked version is never
        // asked to go): say what, and what is locked until when.
        // A key that may not read the bucket's versioning (or a server that
        // cannot say) is not stopped by it: the report just says nothing of
        // versions.
        let versioned = match store.versioned() {
            Ok(v) => v,
            Err(e) if crate::store::versions::denied(&e) => false,
            Err(e) => return Err(e),
        };
        if versioned {
            let mut going: Vec<ObjectInfo> = view
                .metadata
                .iter()
                .filter(|o| snapshot_objects.contains(&o.key))
                .cloned()
                .collect();
            going.extend(staged.delete.iter().cloned());
            let bytes = going.iter().fold(0u64, |a, o| a.saturating_add(o.size));
            let locks = super::Locks::of(store, &going, now)?;
            report.lingering = Some((going.len(), bytes, locks));
        }
        if dry_run {
            return Ok(report);
        }
        let id_list: Vec<&str> = report.removed.iter().map(|m| m.id.as_str()).collect();
        if !id_list.is_empty() {
            super::remove_snapshots(store, &id_list)?;
        }
        let mark = super::Mark::new(now, staged.mark.iter().map(|o| o.key.clone()).collect());
        for r in crate::store::parallel(&mark.keys, |k| store.put_bytes(k, b"")) {
            r?;
        }
        report.deleted = super::collect(store, &view, staged.delete)?;
        // Every blob a ripe mark names is now deleted, referenced again, or
        // gone: the mark has done its work.
        store.delete_many(&staged.done_marks)?;
        if let Some(index) = index {
            // What the store holds now, listed while this host's index is
            // held: a backup that finished after the view's listing (made
            // before the manifests were read, and before the index was
            // taken) has blobs the view does not know, which must not be
            // forgotten.
            let mut left: Vec<(String, u64)> = store
                .list(crate::layout::BLOBS)?
                .objects
                .into_iter()
                .map(|o| (o.key, o.size))
                .collect();
            left.sort();
            let n = index.forget_missing_blobs(&left)?;
            if n > 0 {
                report.index_note = Some(format!("local index: forgot {n} deleted blob(s)"));
            }
        }
        Ok(report)
    }
}
