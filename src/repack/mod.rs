//! `vaultik repack`: space held by partly used blobs given back. GC
//! deletes whole blobs only, so a purged file whose chunks share a blob
//! with chunks kept snapshots use stays in the store. A repack (an admin
//! command: the chunk locations are in the snapshots' encrypted metadata)
//! moves the chunks still used out of every blob whose unused share is
//! above a threshold into new blobs, rewrites the snapshots that used them
//! (`rewrite.rs`), and marks the old blobs for deletion, as a purge would:
//! the next `prune` once the grace period has passed deletes them (at
//! once with `grace_period = 0s`). It deletes nothing itself.
//!
//! Safety for backups running elsewhere is the two-phase GC's: a blob is
//! marked, never deleted, by a repack; a backup never deduplicates against
//! a marked blob; and a purge deletes a marked blob only if no manifest
//! names it then (a backup that deduplicated against it before the mark
//! and published since keeps it). Each host's next backup uploads again
//! what it still has of the marked blobs (its index cannot learn where the
//! chunks went without the key), unless `index rebuild --force` is run
//! there with the key.
//!
//! Run one repack at a time, and not beside a `snapshot remove` or purge
//! of the snapshots it rewrites: each snapshot's manifest is checked
//! unchanged just before it is rewritten, but the store offers no atomic
//! compare-and-swap, so a removal in the moment between could be undone.
//!
//! What a repack leaves alone, with the blobs it names: snapshots whose
//! metadata cannot be read or names chunks the store does not hold as
//! said, snapshots sealed to another recipient set than the config's,
//! snapshots dated ahead of the store's clock, and snapshots signed by a
//! key the run does not trust (`trusted_signers`, `--signer`) or whose
//! signature does not verify: a repack signs what it rewrites with this
//! host's key (`signing.rs`), and must never turn a forgery into a signed
//! snapshot. An unsigned snapshot stays unsigned. With a manifest that
//! cannot be read at all, nothing is done (its blobs are unknown).

mod rewrite;
mod usage;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Instant;

use age::x25519;

use crate::error::Result;
use crate::gc::{self, Mark, View};
use crate::layout;
use crate::signing::{SigningKey, Trust};
use crate::store::Store;
use crate::store::class::StorageClass;

/// `--max-unused` unless given: the 10%.
pub const DEFAULT_MAX_UNUSED: f64 = 0.10;

pub struct Repack<'a> {
    pub store: &'a dyn Store,
    pub identities: &'a [x25519::Identity],
    /// The config's recipients: new blobs and rewritten metadata are
    /// sealed to them; only snapshots sealed to them are rewritten.
    pub recipients: &'a [x25519::Recipient],
    /// `keys::set_fingerprint(recipients)`.
    pub sealed_to: String,
    /// Blobs whose unused share is above this (0 to 1) are repacked.
    pub max_unused: f64,
    /// New blobs are cut at about this size (the config's blob_size_limit).
    pub blob_size: u64,
    pub class: StorageClass,
    pub trust: &'a Trust,
    /// Where this host's signing key is (beside its index).
    pub state: &'a Path,
    pub tmp_dir: &'a Path,
    pub dry_run: bool,
    pub warn: &'a dyn Fn(&str),
}

/// A blob a repack wrote: its key, size, and where each chunk is in it.
pub type NewBlob = (
    String,
    u64,
    Vec<(crate::chunk::ChunkId, crate::blob::Location)>,
);

/// What a repack did, or would do.
#[derive(Debug, Default)]
pub struct Report {
    pub dry_run: bool,
    pub threshold: f64,
    /// Snapshots read.
    pub snapshots: usize,
    /// Snapshots left alone, and why.
    pub blocked: Vec<(String, String)>,
    /// Blobs above the threshold that a blocked snapshot uses: left.
    pub pinned: usize,
    /// Blobs repacked (or to be): how many, their bytes, the bytes of
    /// their chunks still used.
    pub blobs: usize,
    pub blob_bytes: u64,
    pub used_bytes: u64,
    /// New blobs written.
    pub new_blobs: usize,
    pub new_bytes: u64,
    /// Snapshots rewritten (or to be).
    pub rewritten: Vec<String>,
    /// Of them, signed again with this host's key (its public key).
    pub resigned: usize,
    pub signer: Option<String>,
    /// Old blobs marked for deletion.
    pub marked: usize,
    /// The new blobs: key, size, and where each chunk is in it (for this
    /// host's index).
    pub new: Vec<NewBlob>,
    pub seconds: f64,
}

impl Report {
    /// Bytes the next prune frees (once the grace period has passed).
    pub fn freed(&self) -> u64 {
        self.blob_bytes.saturating_sub(self.new_bytes)
    }
}

impl Repack<'_> {
    pub fn run(&self) -> Result<Report> {
        let started = Instant::now();
        let view = View::load(self.store)?;
        view.check_deletable("repack")?;
        let marked = gc::marked_blobs(self.store)?;
        let present: HashMap<String, u64> = view
            .blobs
            .iter()
            .filter(|o| !marked.contains(&o.key))
            .map(|o| (o.key.clone(), o.size))
            .collect();
        let own = SigningKey::load_existing(self.state)?;
        let own_key = own
            .as_ref()
            .and_then(|k| crate::signing::parse_signer(&k.public()));
        let census = self.census(&view, &present, own_key)?;
        let mut report = Report {
            dry_run: self.dry_run,
            threshold: self.max_unused,
            snapshots: census.snaps.len(),
            blocked: census.blocked.clone(),
            ..Report::default()
        };
        let mut chosen: Vec<String> = census
            .blobs
            .iter()
            .filter(|(_, u)| u.unused_share(self.recipients.len()) > self.max_unused)
            .map(|(k, _)| k.clone())
            .collect();
        chosen.sort();
        let before = chosen.len();
        chosen.retain(|k| !census.pinned.contains(k));
        report.pinned = before - chosen.len();
        let plan = |chosen: &[String], report: &mut Report| {
            let set: HashSet<&str> = chosen.iter().map(String::as_str).collect();
            report.blobs = chosen.len();
            report.blob_bytes = chosen.iter().map(|k| census.blobs[k].size).sum();
            report.used_bytes = chosen.iter().map(|k| census.blobs[k].used()).sum();
            report.rewritten = census
                .snaps
                .iter()
                .filter(|s| s.untidy || s.blobs.iter().any(|b| set.contains(b.as_str())))
                .map(|s| s.id.clone())
                .collect();
        };
        plan(&chosen, &mut report);
        if self.dry_run || report.rewritten.is_empty() {
            // What the new blobs would take: the chunks still used.
            report.new_bytes = report.used_bytes;
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        let moved = self.move_chunks(&census, &mut chosen, &mut report)?;
        plan(&chosen, &mut report);
        let set: HashSet<&str> = chosen.iter().map(String::as_str).collect();
        let needs_key = census
            .snaps
            .iter()
            .any(|s| matches!(s.sign, usage::Sign::Resign(_)) && report.rewritten.contains(&s.id));
        let signer = match (needs_key, own) {
            (false, _) => None,
            (true, Some(k)) => Some(k),
            (true, None) => Some(SigningKey::load_or_create(self.state)?),
        };
        report.signer = signer.as_ref().map(|k| k.public());
        // What every manifest lists once the rewrites are done: the old
        // blobs none lists are marked.
        let mut still: HashSet<String> = HashSet::new();
        let mut done = Vec::new();
        for s in &census.snaps {
            let listed = || s.parsed.blobs.iter().map(|b| layout::blob(&b.hash));
            if !report.rewritten.contains(&s.id) {
                still.extend(listed());
                continue;
            }
            match self.rewrite(s, &set, &moved, signer.as_ref())? {
                Some(after) => {
                    still.extend(after.into_iter().map(|(k, _)| k));
                    if matches!(s.sign, usage::Sign::Resign(_)) {
                        report.resigned += 1;
                    }
                    done.push(s.id.clone());
                }
                None => still.extend(listed()),
            }
        }
        report.rewritten = done;
        // The new blobs must still be there, and not marked by a purge
        // elsewhere (a repack longer than the grace period): else the old
        // ones are kept (not marked), and a later repack or `verify` finds
        // what to do.
        let now_marked = gc::marked_blobs(self.store)?;
        let listed: HashSet<String> = self
            .store
            .list(layout::BLOBS)?
            .objects
            .into_iter()
            .map(|o| o.key)
            .collect();
        let lost = report
            .new
            .iter()
            .filter(|(k, _, _)| !listed.contains(k) || now_marked.contains(k))
            .count();
        if lost > 0 {
            (self.warn)(&format!(
                "{lost} new blob(s) were deleted or marked meanwhile (a purge elsewhere, past the \
                 grace period): the old blobs are not marked; run `snapshot verify --deep` on the \
                 rewritten snapshots"
            ));
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        let gone: Vec<String> = chosen.into_iter().filter(|k| !still.contains(k)).collect();
        let mark = Mark::new(crate::time::now(), gone);
        for r in crate::store::parallel(&mark.keys, |k| self.store.put_bytes(k, b"")) {
            r?;
        }
        report.marked = mark.blobs.len();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }
}

/// A percentage from 0 to 100, with or without `%` (`10%`), as a share
/// (0 to 1).
pub fn parse_share(s: &str) -> std::result::Result<f64, String> {
    let n = s.trim().trim_end_matches('%').trim();
    match n.parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v / 100.0),
        _ => Err(format!(
            "`{s}` is not a percentage from 0% to 100% (like 10%)"
        )),
    }
}
