//! Which snapshots to keep, per host and snapshot name: the newest always;
//! the `keep_latest` newest; those younger than `keep_within`; and, by the
//! calendar, the newest snapshot of each of the last N hours, days, ISO
//! weeks, months and years that have snapshots (restic's semantics: each
//! rule counts only the periods that hold a snapshot). A snapshot is kept
//! when any rule keeps it. Periods are taken in UTC, or in
//! `retention_timezone` (an IANA zone such as `Europe/Berlin`, read from
//! the system's zoneinfo): a day then runs from local midnight to local
//! midnight, whatever daylight saving time does to its length.
//!
//! Snapshots dated ahead of the store's clock are neither kept nor
//! removed: they take no rank (so a forged one from the future cannot
//! push real ones out) and stay until removed by hand.

use std::collections::HashMap;

use crate::error::Result;
use crate::manifest::{self, Summary};

/// The rules; `Default` keeps everything but says nothing (no rule).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retention {
    pub keep_latest: Option<usize>,
    /// Seconds.
    pub keep_within: Option<u64>,
    pub keep_hourly: Option<usize>,
    pub keep_daily: Option<usize>,
    pub keep_weekly: Option<usize>,
    pub keep_monthly: Option<usize>,
    pub keep_yearly: Option<usize>,
    /// The zone calendar periods are taken in (UTC when None).
    pub timezone: Option<String>,
}

/// Why a snapshot is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The newest of its host and name.
    Newest,
    Latest,
    Within,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Keep {
    pub fn name(self) -> &'static str {
        match self {
            Keep::Newest => "newest",
            Keep::Latest => "keep_latest",
            Keep::Within => "keep_within",
            Keep::Hourly => "hourly",
            Keep::Daily => "daily",
            Keep::Weekly => "weekly",
            Keep::Monthly => "monthly",
            Keep::Yearly => "yearly",
        }
    }
}

/// What the rules decided for one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Kept, by these rules.
    Keep(Vec<Keep>),
    Remove,
    /// Dated ahead of the store's clock: left alone.
    Ahead,
    /// Not signed by a trusted key (`trusted_signers` is set): left alone.
    Untrusted,
}

/// A calendar period, as the numbers that name it in the zone.
type Period = (i32, i32, i32, i32);

impl Retention {
    /// The rules a config file sets (`keep_*`, `retention_timezone`).
    pub fn of_config(c: &crate::config::Config) -> Retention {
        Retention {
            keep_latest: c.keep_latest,
            keep_within: c.keep_within.map(|d| d.as_secs()),
            keep_hourly: c.keep_hourly,
            keep_daily: c.keep_daily,
            keep_weekly: c.keep_weekly,
            keep_monthly: c.keep_monthly,
            keep_yearly: c.keep_yearly,
            timezone: c.retention_timezone.clone(),
        }
    }

    /// Whether any rule is set (a purge without one would remove all but
    /// the newest).
    pub fn is_set(&self) -> bool {
        self.keep_latest.is_some()
            || self.keep_within.is_some()
            || self.calendar().iter().any(|(_, n)| n.is_some())
    }

    fn calendar(&self) -> [(Keep, Option<usize>); 5] {
        [
            (Keep::Hourly, self.keep_hourly),
            (Keep::Daily, self.keep_daily),
            (Keep::Weekly, self.keep_weekly),
            (Keep::Monthly, self.keep_monthly),
            (Keep::Yearly, self.keep_yearly),
        ]
    }

    /// The zone periods are taken in.
    pub fn zone(&self) -> Result<jiff::tz::TimeZone> {
        crate::time::zone(self.timezone.as_deref())
    }

    /// What the rules decide for each of `manifests` (those of `name` and
    /// `host` when given; the others are not in the result), in the
    /// order of `manifests`.
    pub fn decide<'a>(
        &self,
        manifests: &'a [Summary],
        name: Option<&str>,
        host: Option<&str>,
        now: u64,
    ) -> Result<Vec<(&'a Summary, Decision)>> {
        let zone = self.zone()?;
        let mut groups: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        let mut out: Vec<(&Summary, Decision)> = Vec::new();
        for m in manifests {
            if name.is_some_and(|n| n != m.name) || host.is_some_and(|h| h != m.hostname) {
                continue;
            }
            if m.dated_ahead() {
                out.push((m, Decision::Ahead));
                continue;
            }
            if m.untrusted {
                out.push((m, Decision::Untrusted));
                continue;
            }
            groups
                .entry((&m.hostname, &m.name))
                .or_default()
                .push(out.len());
            out.push((m, Decision::Keep(Vec::new())));
        }
        for (_, mut group) in groups {
            // Newest first.
            group.sort_by(|a, b| manifest::order(out[*b].0, out[*a].0));
            let reasons = self.reasons(
                &group.iter().map(|i| out[*i].0).collect::<Vec<_>>(),
                &zone,
                now,
            );
            for (i, why) in group.into_iter().zip(reasons) {
                out[i].1 = if why.is_empty() {
                    Decision::Remove
                } else {
                    Decision::Keep(why)
                };
            }
        }
        Ok(out)
    }

    /// Why each of `group` (one host and name, newest first) is kept.
    fn reasons(&self, group: &[&Summary], zone: &jiff::tz::TimeZone, now: u64) -> Vec<Vec<Keep>> {
        let mut why: Vec<Vec<Keep>> = vec![Vec::new(); group.len()];
        for (rank, m) in group.iter().enumerate() {
            if rank == 0 {
                why[rank].push(Keep::Newest);
            }
            if self.keep_latest.is_some_and(|n| rank < n.max(1)) {
                why[rank].push(Keep::Latest);
            }
            if self
                .keep_within
                .is_some_and(|w| now.saturating_sub(m.time) < w)
            {
                why[rank].push(Keep::Within);
            }
        }
        for (rule, n) in self.calendar() {
            let Some(n) = n else { continue };
            let mut last: Option<Period> = None;
            let mut kept = 0;
            for (rank, m) in group.iter().enumerate() {
                if kept >= n {
                    break;
                }
                let p = period(rule, m.time, zone);
                if last != Some(p) {
                    why[rank].push(rule);
                    last = Some(p);
                    kept += 1;
                }
            }
        }
        why
    }
}

/// The period of `rule` that `unix` falls in, in `zone`.
fn period(rule: Keep, unix: u64, zone: &jiff::tz::TimeZone) -> Period {
    let z = jiff::Timestamp::from_second(i64::try_from(unix).unwrap_or(i64::MAX))
        .unwrap_or(jiff::Timestamp::MAX)
        .to_zoned(zone.clone());
    let (y, mo, d, h) = (
        i32::from(z.year()),
        i32::from(z.month()),
        i32::from(z.day()),
        i32::from(z.hour()),
    );
    match rule {
        Keep::Hourly => (y, mo, d, h),
        Keep::Daily => (y, mo, d, 0),
        Keep::Weekly => {
            let w = z.date().iso_week_date();
            (i32::from(w.year()), i32::from(w.week()), 0, 0)
        }
        Keep::Monthly => (y, mo, 0, 0),
        Keep::Yearly => (y, 0, 0, 0),
        _ => (0, 0, 0, 0),
    }
}

/// How long a run's objects are locked when `lock_for` is not set: what
/// the retention rules keep a snapshot for, plus the grace period. Each
/// rule counts for the longest it can keep a snapshot:
/// `keep_within` for itself; `keep_hourly`/`daily`/`weekly`/`monthly`/
/// `yearly = N` for N hours, days, 7-day weeks, 31-day months, 366-day
/// years; `keep_latest = N` for the age of the N-th newest snapshot of the
/// name when the store holds N (`latest_age`, the oldest that rule keeps
/// today), else for N times the mean gap between the ones it holds (none
/// while it holds fewer than two). None when no rule gives a span.
pub fn derived_lock_for(r: &Retention, grace: u64, latest_age: Option<u64>) -> Option<u64> {
    const H: u64 = 3600;
    const D: u64 = 86_400;
    let n = |v: Option<usize>, unit: u64| v.map(|n| (n as u64).saturating_mul(unit));
    let spans = [
        r.keep_within,
        n(r.keep_hourly, H),
        n(r.keep_daily, D),
        n(r.keep_weekly, 7 * D),
        n(r.keep_monthly, 31 * D),
        n(r.keep_yearly, 366 * D),
        latest_age,
    ];
    spans
        .into_iter()
        .flatten()
        .max()
        .filter(|s| *s > 0)
        .map(|s| s.saturating_add(grace))
}

/// What `keep_latest = n` keeps a snapshot for, from the times of the
/// name's snapshots in the store (any order): the age of the n-th newest
/// when there are n, else n times the mean gap between them.
pub fn latest_age(n: usize, times: &mut [u64], now: u64) -> Option<u64> {
    if n == 0 || times.is_empty() {
        return None;
    }
    times.sort_unstable_by(|a, b| b.cmp(a));
    if times.len() >= n {
        return Some(now.saturating_sub(times[n - 1]));
    }
    if times.len() < 2 {
        return None;
    }
    let span = times[0].saturating_sub(times[times.len() - 1]);
    let gap = span / (times.len() as u64 - 1);
    Some(gap.saturating_mul(n as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `2026-03-29 01:30` in UTC, as seconds.
    fn at(s: &str) -> u64 {
        let dt: jiff::civil::DateTime = s.parse().unwrap();
        dt.to_zoned(jiff::tz::TimeZone::UTC)
            .unwrap()
            .timestamp()
            .as_second() as u64
    }

    fn snaps(times: &[&str]) -> Vec<Summary> {
        times
            .iter()
            .map(|t| {
                let time = at(t);
                Summary {
                    id: crate::layout::make_id("h", "n", time),
                    hostname: "h".into(),
                    name: "n".into(),
                    time,
                    metadata_size: 0,
                    blobs: 0,
                    blob_bytes: 0,
                    stored: time,
                    untrusted: false,
                }
            })
            .collect()
    }

    /// The times kept, newest first, with their reasons.
    fn kept(r: &Retention, times: &[&str]) -> Vec<(String, Vec<&'static str>)> {
        let ms = snaps(times);
        let now = ms.iter().map(|m| m.time).max().unwrap_or(0) + 60;
        let mut out: Vec<(u64, String, Vec<&'static str>)> = r
            .decide(&ms, None, None, now)
            .unwrap()
            .into_iter()
            .filter_map(|(m, d)| match d {
                Decision::Keep(why) => Some((
                    m.time,
                    crate::time::display(m.time),
                    why.iter().map(|k| k.name()).collect(),
                )),
                _ => None,
            })
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse(e.0));
        out.into_iter().map(|(_, t, w)| (t, w)).collect()
    }

    fn times_of<'k>(k: &'k [(String, Vec<&'static str>)]) -> Vec<&'k str> {
        k.iter().map(|(t, _)| &t[..16]).collect()
    }

    #[test]
    fn daily_keeps_the_newest_of_each_of_the_last_days_with_snapshots() {
        let r = Retention {
            keep_daily: Some(3),
            ..Retention::default()
        };
        // Two a day, and a gap: the gap is not a day that counts.
        let k = kept(
            &r,
            &[
                "2026-01-01T08:00",
                "2026-01-01T20:00",
                "2026-01-02T08:00",
                "2026-01-02T20:00",
                "2026-01-05T08:00",
                "2026-01-05T20:00",
                "2026-01-06T08:00",
            ],
        );
        assert_eq!(
            times_of(&k),
            ["2026-01-06 08:00", "2026-01-05 20:00", "2026-01-02 20:00"]
        );
        assert_eq!(k[0].1, ["newest", "daily"]);
    }

    #[test]
    fn across_month_and_year_ends_and_a_leap_day() {
        let times = [
            "2023-12-31T23:00",
            "2024-01-01T01:00",
            "2024-01-31T23:59",
            "2024-02-01T00:01",
            "2024-02-28T12:00",
            "2024-02-29T12:00",
            "2024-03-01T00:00",
            "2024-12-31T23:59",
            "2025-01-01T00:00",
        ];
        let monthly = Retention {
            keep_monthly: Some(4),
            ..Retention::default()
        };
        assert_eq!(
            times_of(&kept(&monthly, &times)),
            [
                "2025-01-01 00:00",
                "2024-12-31 23:59",
                "2024-03-01 00:00",
                "2024-02-29 12:00"
            ]
        );
        let yearly = Retention {
            keep_yearly: Some(5),
            ..Retention::default()
        };
        assert_eq!(
            times_of(&kept(&yearly, &times)),
            ["2025-01-01 00:00", "2024-12-31 23:59", "2023-12-31 23:00"]
        );
        let daily = Retention {
            keep_daily: Some(3),
            ..Retention::default()
        };
        assert_eq!(
            times_of(&kept(
                &daily,
                &[
                    "2024-02-28T12:00",
                    "2024-02-29T01:00",
                    "2024-02-29T23:00",
                    "2024-03-01T00:00"
                ]
            )),
            ["2024-03-01 00:00", "2024-02-29 23:00", "2024-02-28 12:00"]
        );
    }

    #[test]
    fn weeks_are_iso_weeks() {
        // 2020-12-31 (Thursday) and 2021-01-03 (Sunday) are both in ISO
        // week 2020-W53; 2021-01-04 (Monday) starts 2021-W01.
        let r = Retention {
            keep_weekly: Some(5),
            ..Retention::default()
        };
        assert_eq!(
            times_of(&kept(
                &r,
                &[
                    "2020-12-27T10:00",
                    "2020-12-31T10:00",
                    "2021-01-03T10:00",
                    "2021-01-04T10:00"
                ]
            )),
            ["2021-01-04 10:00", "2021-01-03 10:00", "2020-12-27 10:00"]
        );
    }

    #[test]
    fn days_follow_the_zone_through_daylight_saving_time() {
        let Ok(_) = jiff::tz::TimeZone::get("Europe/Berlin") else {
            eprintln!("SKIPPED: no zoneinfo for Europe/Berlin on this machine");
            return;
        };
        // 2026-03-28T23:30Z is 00:30 on the 29th in Berlin (CET, +1);
        // 2026-03-29T22:30Z is 00:30 on the 30th (CEST, +2, the clocks
        // having gone forward that night).
        let times = [
            "2026-03-28T22:30",
            "2026-03-28T23:30",
            "2026-03-29T21:30",
            "2026-03-29T22:30",
        ];
        let utc = Retention {
            keep_daily: Some(10),
            ..Retention::default()
        };
        assert_eq!(
            times_of(&kept(&utc, &times)),
            ["2026-03-29 22:30", "2026-03-28 23:30"]
        );
        let berlin = Retention {
            timezone: Some("Europe/Berlin".into()),
            ..utc.clone()
        };
        assert_eq!(
            times_of(&kept(&berlin, &times)),
            ["2026-03-29 22:30", "2026-03-29 21:30", "2026-03-28 22:30"]
        );
        // The short day's hours: 02:00 does not exist; 01:59 and 03:00
        // local are different hours.
        let hourly = Retention {
            keep_hourly: Some(10),
            timezone: Some("Europe/Berlin".into()),
            ..Retention::default()
        };
        assert_eq!(
            kept(&hourly, &["2026-03-29T00:59", "2026-03-29T01:00"]).len(),
            2
        );
        let bad = Retention {
            timezone: Some("Mars/Olympus".into()),
            ..utc
        };
        let e = bad
            .decide(&snaps(&["2026-01-01T00:00"]), None, None, 0)
            .unwrap_err();
        assert!(
            e.to_string().contains("retention_timezone `Mars/Olympus`"),
            "{e}"
        );
    }

    #[test]
    fn rules_add_up_and_the_newest_is_always_kept() {
        let r = Retention {
            keep_latest: Some(2),
            keep_monthly: Some(2),
            ..Retention::default()
        };
        let k = kept(
            &r,
            &[
                "2026-01-10T00:00",
                "2026-02-10T00:00",
                "2026-02-20T00:00",
                "2026-03-01T00:00",
                "2026-03-05T00:00",
            ],
        );
        assert_eq!(
            k.iter()
                .map(|(t, w)| (&t[..10], w.clone()))
                .collect::<Vec<_>>(),
            [
                ("2026-03-05", vec!["newest", "keep_latest", "monthly"]),
                ("2026-03-01", vec!["keep_latest"]),
                ("2026-02-20", vec!["monthly"]),
            ]
        );
        // No rule at all: only the newest.
        assert_eq!(
            kept(
                &Retention::default(),
                &["2026-01-01T00:00", "2026-01-02T00:00"]
            )
            .len(),
            1
        );
        assert!(!Retention::default().is_set());
        assert!(r.is_set());
    }

    #[test]
    fn the_default_lock_follows_the_retention_rules() {
        let d = 86_400;
        let r = Retention {
            keep_within: Some(30 * d),
            keep_daily: Some(7),
            ..Default::default()
        };
        assert_eq!(derived_lock_for(&r, d, None), Some(31 * d));
        let r = Retention {
            keep_monthly: Some(2),
            ..Default::default()
        };
        assert_eq!(derived_lock_for(&r, 0, Some(5 * d)), Some(62 * d));
        assert_eq!(derived_lock_for(&Retention::default(), d, None), None);
        let r = Retention {
            keep_latest: Some(3),
            ..Default::default()
        };
        assert_eq!(derived_lock_for(&r, 0, Some(4 * d)), Some(4 * d));
        // keep_latest: the age of the n-th newest, or n mean gaps.
        let now = 100 * d;
        assert_eq!(
            latest_age(2, &mut [now - d, now - 3 * d, now], now),
            Some(d)
        );
        assert_eq!(latest_age(5, &mut [now - 2 * d, now], now), Some(10 * d));
        assert_eq!(latest_age(5, &mut [now], now), None);
    }
}
