//! Blobs in cold storage (GLACIER, DEEP_ARCHIVE, INTELLIGENT_TIERING's
//! archive tiers): before a restore or `verify --deep` reads anything, the
//! plan says which of the blobs it needs are cold and where their thaw
//! stands, and what a thaw takes and costs per tier; then, as asked,
//! thaws are requested for exactly those blobs (never for one already
//! thawing or thawed), and the command waits or exits with code 3, to be
//! run again later.
//!
//! Backups never read blobs: nothing here concerns them. Metadata,
//! manifests and marks are always STANDARD, so the keyless commands never
//! need a thaw.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::human_bytes;
use crate::layout;
use crate::store::class::{self, StorageClass, Tier};
use crate::store::{ObjectMeta, Store, ThawState};

/// How to treat blobs in a cold storage class (restore, verify --deep).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThawArgs {
    /// `--thaw[=TIER]`: request thaws at this tier.
    pub tier: Option<Tier>,
    /// `--thaw-days N`
    pub days: u32,
    /// `--wait`
    pub wait: bool,
}

impl Default for ThawArgs {
    fn default() -> ThawArgs {
        ThawArgs {
            tier: None,
            days: 7,
            wait: false,
        }
    }
}

/// What a command calls with the blobs it needs (key, size) once it knows
/// them and before it reads any: `Thaw::ensure`, as a restore or a deep
/// verify is told to treat cold blobs.
pub type Gate<'a> = &'a dyn Fn(&[(String, u64)]) -> Result<()>;

/// Up to this many blobs are asked about one HEAD each; more, and one
/// listing of the blobs tells their classes first (a page of 1000 keys
/// costs what one HEAD does).
const HEAD_MAX: usize = 100;
/// The wait between polls starts here and grows by half each time, up to
/// `POLL_MAX` (thaws take minutes to days).
const POLL_FIRST: Duration = Duration::from_secs(60);
const POLL_MAX: Duration = Duration::from_secs(15 * 60);
/// `--wait` gives up after this long: twice the slowest tier (DEEP_ARCHIVE
/// Bulk, up to 48 hours), so that a store that says "under way" forever
/// cannot hold a command forever.
const WAIT_MAX: Duration = Duration::from_secs(96 * 3600);

/// One needed blob that is cold.
#[derive(Debug, Clone)]
pub struct Cold {
    pub key: String,
    pub size: u64,
    pub class: StorageClass,
    pub state: ThawState,
}

/// What the blobs a command needs require before they can be read.
#[derive(Debug, Default)]
pub struct Plan {
    pub needed: usize,
    pub needed_bytes: u64,
    /// The cold ones, in the order needed.
    pub cold: Vec<Cold>,
}

impl Plan {
    /// Cold blobs not readable yet.
    pub fn pending(&self) -> impl Iterator<Item = &Cold> {
        self.cold.iter().filter(|c| c.state != ThawState::Thawed)
    }

    fn count(&self, state: ThawState) -> (usize, u64) {
        self.cold
            .iter()
            .filter(|c| c.state == state)
            .fold((0, 0), |(n, b), c| (n + 1, b + c.size))
    }

    /// Estimated time and cost of thawing the blobs not yet asked for, at
    /// `tier`, keeping copies `days` days: None when the tier is not
    /// offered for one of their classes.
    pub fn estimate(&self, tier: Tier, days: u32) -> Option<Estimate> {
        let mut e = Estimate {
            tier,
            hours: (0.0, 0.0),
            dollars: 0.0,
        };
        for c in self.cold.iter().filter(|c| c.state == ThawState::Frozen) {
            let r = class::retrieval(c.class, tier)?;
            let gb = c.size as f64 / 1e9;
            e.hours.0 = f64::max(e.hours.0, r.hours.0);
            e.hours.1 = f64::max(e.hours.1, r.hours.1);
            e.dollars += gb * r.per_gb
                + r.per_1000 / 1000.0
                + gb * class::THAWED_COPY_PER_GB_MONTH * f64::from(days) / 30.0;
        }
        Some(e)
    }

    /// The plan as text, for people.
    pub fn write_text(&self, out: &mut dyn Write, what: &str, days: u32) -> std::io::Result<()> {
        let cold_bytes: u64 = self.cold.iter().map(|c| c.size).sum();
        writeln!(
            out,
            "{what} needs {} blob(s) ({}); {} ({}) are in cold storage:",
            self.needed,
            human_bytes(self.needed_bytes),
            self.cold.len(),
            human_bytes(cold_bytes)
        )?;
        let mut by_class: BTreeMap<StorageClass, [(usize, u64); 3]> = BTreeMap::new();
        for c in &self.cold {
            let slot = match c.state {
                ThawState::Frozen => 0,
                ThawState::Ongoing => 1,
                _ => 2,
            };
            let e = &mut by_class.entry(c.class).or_default()[slot];
            e.0 += 1;
            e.1 += c.size;
        }
        for (class, [frozen, ongoing, thawed]) in by_class {
            writeln!(
                out,
                "  {class}: {} to thaw ({}), {} thawing ({}), {} thawed ({})",
                frozen.0,
                human_bytes(frozen.1),
                ongoing.0,
                human_bytes(ongoing.1),
                thawed.0,
                human_bytes(thawed.1)
            )?;
        }
        if self.count(ThawState::Frozen).0 > 0 {
            writeln!(
                out,
                "  to thaw them (AWS us-east-1 list prices; thawed copies kept {days} days):"
            )?;
            for tier in [Tier::Expedited, Tier::Standard, Tier::Bulk] {
                match self.estimate(tier, days) {
                    Some(e) => writeln!(
                        out,
                        "    --thaw={:<9}  {}, {}",
                        tier.name(),
                        hours_text(e.hours),
                        dollars_text(e.dollars)
                    )?,
                    None => writeln!(
                        out,
                        "    --thaw={:<9}  not offered for DEEP_ARCHIVE",
                        tier.name()
                    )?,
                }
            }
        }
        Ok(())
    }

    /// The plan as JSON.
    pub fn to_json(&self, days: u32) -> serde_json::Value {
        let state = |s: ThawState| match s {
            ThawState::Frozen => "to thaw",
            ThawState::Ongoing => "thawing",
            _ => "thawed",
        };
        let tiers: Vec<serde_json::Value> = [Tier::Expedited, Tier::Standard, Tier::Bulk]
            .into_iter()
            .map(|t| match self.estimate(t, days) {
                Some(e) => serde_json::json!({
                    "tier": t.name(), "offered": true,
                    "hours_min": e.hours.0, "hours_max": e.hours.1,
                    "estimated_dollars": (e.dollars * 100.0).round() / 100.0,
                }),
                None => serde_json::json!({"tier": t.name(), "offered": false}),
            })
            .collect();
        let (frozen, frozen_bytes) = self.count(ThawState::Frozen);
        let (ongoing, ongoing_bytes) = self.count(ThawState::Ongoing);
        let (thawed, thawed_bytes) = self.count(ThawState::Thawed);
        serde_json::json!({
            "blobs_needed": self.needed,
            "bytes_needed": self.needed_bytes,
            "cold": self.cold.iter().map(|c| serde_json::json!({
                "key": c.key, "size": c.size, "class": c.class.name(), "state": state(c.state),
            })).collect::<Vec<_>>(),
            "to_thaw": {"blobs": frozen, "bytes": frozen_bytes},
            "thawing": {"blobs": ongoing, "bytes": ongoing_bytes},
            "thawed": {"blobs": thawed, "bytes": thawed_bytes},
            "thaw_days": days,
            "tiers": tiers,
            "prices": "AWS us-east-1 list prices, an estimate",
        })
    }
}

/// What a thaw at one tier takes and costs.
#[derive(Debug, Clone, Copy)]
pub struct Estimate {
    pub tier: Tier,
    pub hours: (f64, f64),
    pub dollars: f64,
}

fn dollars_text(d: f64) -> String {
    if d < 0.005 {
        "under $0.01".to_string()
    } else {
        format!("about ${d:.2}")
    }
}

fn hours_text((lo, hi): (f64, f64)) -> String {
    if hi < 1.0 {
        format!("{:.0}-{:.0} minutes", lo * 60.0, hi * 60.0)
    } else if lo == 0.0 {
        format!("within {hi:.0} hours")
    } else {
        format!("{lo:.0}-{hi:.0} hours")
    }
}

/// Where each of `keys` stands (one HEAD each); a blob that is gone is an
/// error naming it.
fn stat_all(store: &dyn Store, keys: &[(String, u64)]) -> Result<Vec<ObjectMeta>> {
    crate::store::parallel(keys, |(key, _)| {
        store
            .stat(key, false)?
            .ok_or_else(|| Error::NotFound { key: key.clone() })
    })
    .into_iter()
    .collect()
}

/// The plan for the blobs in `needed` (key, size).
pub fn plan(store: &dyn Store, needed: &[(String, u64)]) -> Result<Plan> {
    let mut plan = Plan {
        needed: needed.len(),
        needed_bytes: needed.iter().map(|(_, s)| s).sum(),
        cold: Vec::new(),
    };
    if !store.has_classes() || needed.is_empty() {
        return Ok(plan);
    }
    // Which may be cold: asked one by one, or told by a listing.
    let maybe: Vec<(String, u64)> = if needed.len() <= HEAD_MAX {
        needed.to_vec()
    } else {
        let classes: HashMap<String, StorageClass> = store
            .list(layout::BLOBS)?
            .objects
            .into_iter()
            .map(|o| (o.key, o.class))
            .collect();
        needed
            .iter()
            .filter(|(k, _)| {
                classes
                    .get(k)
                    .is_none_or(|c| c.is_cold() || *c == StorageClass::IntelligentTiering)
            })
            .cloned()
            .collect()
    };
    let metas = stat_all(store, &maybe)?;
    for ((key, size), m) in maybe.into_iter().zip(metas) {
        if m.thaw != ThawState::NotNeeded {
            plan.cold.push(Cold {
                key,
                size,
                class: m.class,
                state: m.thaw,
            });
        }
    }
    Ok(plan)
}

/// How a command treats cold blobs: what it was asked (`--thaw`,
/// `--thaw-days`, `--wait`), where the plan goes, and whether to show
/// progress while waiting.
pub struct Thaw<'t> {
    pub store: &'t dyn Store,
    pub args: ThawArgs,
    /// What needs the blobs, for the plan's first line (`restore of ID`).
    pub what: String,
    pub json: bool,
    pub out: &'t Mutex<Box<dyn Write + Send>>,
    /// Progress while waiting (a terminal on standard error).
    pub progress: bool,
}

impl Thaw<'_> {
    /// Return once every blob of `needed` is readable: at once when none
    /// is cold and frozen; else after printing the plan and, as asked,
    /// requesting thaws and waiting. Without `--wait`, a thaw under way
    /// is `ThawPending` (exit code 3); a thaw needed but not asked for
    /// (`--thaw`) is `ThawNeeded`.
    pub fn ensure(&self, needed: &[(String, u64)]) -> Result<()> {
        let mut plan = plan(self.store, needed)?;
        if plan.pending().next().is_none() {
            return Ok(());
        }
        self.show(&plan)?;
        let frozen: Vec<&Cold> = plan
            .cold
            .iter()
            .filter(|c| c.state == ThawState::Frozen)
            .collect();
        let mut requested = 0;
        if !frozen.is_empty() {
            let Some(tier) = self.args.tier else {
                let (blobs, bytes) = plan.count(ThawState::Frozen);
                return Err(Error::ThawNeeded { blobs, bytes });
            };
            if plan.estimate(tier, self.args.days).is_none() {
                return Err(Error::Usage(format!(
                    "--thaw={}: not offered for DEEP_ARCHIVE blobs; use --thaw=Standard or --thaw=Bulk",
                    tier.name()
                )));
            }
            requested = self.request(&frozen, tier)?;
            for c in plan.cold.iter_mut() {
                if c.state == ThawState::Frozen {
                    c.state = ThawState::Ongoing;
                }
            }
        }
        if !self.args.wait {
            let (blobs, bytes) = plan.pending().fold((0, 0), |(n, b), c| (n + 1, b + c.size));
            return Err(Error::ThawPending {
                blobs,
                bytes,
                requested,
            });
        }
        self.wait(plan)
    }

    fn show(&self, plan: &Plan) -> Result<()> {
        let mut out = self.out.lock().expect("output lock");
        let r = if self.json {
            let text = serde_json::to_string_pretty(&plan.to_json(self.args.days))
                .expect("JSON values serialize");
            writeln!(out, "{text}")
        } else {
            plan.write_text(&mut *out, &self.what, self.args.days)
        };
        r.and_then(|()| out.flush()).map_err(Error::Output)
    }

    /// Ask for the thaw of `blobs` at `tier`; how many requests were
    /// accepted as new.
    fn request(&self, blobs: &[&Cold], tier: Tier) -> Result<usize> {
        let results = crate::store::parallel(blobs, |c| {
            self.store.request_thaw(&c.key, self.args.days, tier)
        });
        let mut new = 0;
        for r in results {
            if r? {
                new += 1;
            }
        }
        Ok(new)
    }

    /// Poll the blobs still thawing until all are readable.
    fn wait(&self, mut plan: Plan) -> Result<()> {
        let (mut delay, max) = poll_delays();
        let started = Instant::now();
        loop {
            let pending: Vec<(String, u64)> =
                plan.pending().map(|c| (c.key.clone(), c.size)).collect();
            if pending.is_empty() {
                if self.progress {
                    eprint!("\r\x1b[K");
                }
                return Ok(());
            }
            if started.elapsed() >= WAIT_MAX {
                let bytes: u64 = pending.iter().map(|(_, s)| s).sum();
                if self.progress {
                    eprintln!();
                }
                return Err(Error::ThawPending {
                    blobs: pending.len(),
                    bytes,
                    requested: 0,
                });
            }
            if self.progress {
                let bytes: u64 = pending.iter().map(|(_, s)| s).sum();
                eprint!(
                    "\r\x1b[Kthawing: {} blob(s) ({}) still frozen after {}; next look in {}",
                    pending.len(),
                    human_bytes(bytes),
                    crate::human_duration(started.elapsed().as_secs()),
                    crate::human_duration(delay.as_secs().max(1))
                );
            }
            std::thread::sleep(delay);
            delay = (delay * 3 / 2).min(max);
            let metas = stat_all(self.store, &pending)?;
            let mut lost = Vec::new();
            for ((key, _), m) in pending.iter().zip(metas) {
                let c = plan
                    .cold
                    .iter_mut()
                    .find(|c| &c.key == key)
                    .expect("pending comes from the plan");
                c.state = m.thaw;
                if m.thaw == ThawState::Frozen {
                    lost.push(c.clone());
                }
                if m.thaw == ThawState::NotNeeded {
                    c.state = ThawState::Thawed;
                }
            }
            // A thaw that ended (its copy expired) or was never taken:
            // asked for again.
            if !lost.is_empty() {
                let tier = self.args.tier.unwrap_or_default();
                let lost: Vec<&Cold> = lost.iter().collect();
                self.request(&lost, tier)?;
                for c in plan.cold.iter_mut() {
                    if c.state == ThawState::Frozen {
                        c.state = ThawState::Ongoing;
                    }
                }
            }
        }
    }
}

/// The first and the longest wait between polls (`VAULTIK_TEST_THAW_POLL_MS`
/// shortens both, for tests).
fn poll_delays() -> (Duration, Duration) {
    match std::env::var("VAULTIK_TEST_THAW_POLL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(ms) => (
            Duration::from_millis(ms),
            Duration::from_millis(ms.saturating_mul(4)),
        ),
        None => (POLL_FIRST, POLL_MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cold(size: u64, class: StorageClass, state: ThawState) -> Cold {
        Cold {
            key: format!("blobs/{size}"),
            size,
            class,
            state,
        }
    }

    #[test]
    fn estimates_follow_the_price_table() {
        let plan = Plan {
            needed: 3,
            needed_bytes: 3_000_000_000,
            cold: vec![
                cold(1_000_000_000, StorageClass::DeepArchive, ThawState::Frozen),
                cold(1_000_000_000, StorageClass::Glacier, ThawState::Frozen),
                cold(1_000_000_000, StorageClass::Glacier, ThawState::Ongoing),
            ],
        };
        assert!(plan.estimate(Tier::Expedited, 7).is_none());
        let e = plan.estimate(Tier::Standard, 30).unwrap();
        assert_eq!(e.hours, (3.0, 12.0));
        // 1 GB at $0.02 + $0.0001 + 1 GB at $0.01 + $0.00005, plus two
        // GB-months of copies at $0.023.
        let want = 0.02 + 0.0001 + 0.01 + 0.00005 + 2.0 * 0.023;
        assert!((e.dollars - want).abs() < 1e-9, "{}", e.dollars);
        let mut text = Vec::new();
        plan.write_text(&mut text, "restore of x", 7).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("DEEP_ARCHIVE: 1 to thaw"), "{text}");
        assert!(
            text.contains("GLACIER: 1 to thaw (953.7 MiB), 1 thawing"),
            "{text}"
        );
        assert!(text.contains("--thaw=Expedited  not offered"), "{text}");
        let j = plan.to_json(7);
        assert_eq!(j["to_thaw"]["blobs"], 2);
        assert_eq!(j["thawing"]["bytes"], 1_000_000_000u64);
    }
}
