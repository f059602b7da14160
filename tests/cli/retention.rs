//! Calendar retention (issue 18) on real snapshots dated at chosen times
//! (`VAULTIK_TEST_TIME`): across a month end and a year end, what
//! `snapshot purge --dry-run` says of each snapshot, what a purge leaves,
//! and `snapshot create --prune` with the rules in the config.

use std::collections::BTreeMap;
use std::fs;

use crate::util::{Backend, Env, stderr};

/// `2026-03-02T12:00` as seconds since the epoch (UTC).
fn unix(s: &str) -> u64 {
    let (date, time) = s.split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let t: Vec<i64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant).
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    (days * 86_400 + t[0] * 3600 + t[1] * 60) as u64
}

/// A snapshot of the tree dated `at`.
fn snapshot_at(env: &Env, at: &str) {
    fs::write(env.src().join("f"), at).unwrap();
    let out = env
        .cmd()
        .env("VAULTIK_TEST_TIME", unix(at).to_string())
        .args(["snapshot", "create"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

const TIMES: [&str; 12] = [
    "2025-12-31T12:00",
    "2026-01-15T12:00",
    "2026-02-26T00:00",
    "2026-02-26T12:00",
    "2026-02-27T00:00",
    "2026-02-27T12:00",
    "2026-02-28T00:00",
    "2026-02-28T12:00",
    "2026-03-01T00:00",
    "2026-03-01T12:00",
    "2026-03-02T00:00",
    "2026-03-02T12:00",
];

/// What the rules below keep, and why (newest first), by the flags given.
const KEPT: [(&str, &str); 5] = [
    (
        "2026-03-02T12",
        "newest, --keep-daily, --keep-monthly, --keep-yearly",
    ),
    ("2026-03-01T12", "--keep-daily"),
    ("2026-02-28T12", "--keep-daily, --keep-monthly"),
    ("2026-01-15T12", "--keep-monthly"),
    ("2025-12-31T12", "--keep-yearly"),
];

fn rfc3339(t: &str) -> String {
    // `2026-03-02T12:00` -> `2026-03-02T12:00:00Z`, as JSON `time`s are.
    format!("{t}:00Z")
}

#[test]
fn calendar_rules_on_real_snapshots() {
    let env = Env::new(Backend::S3);
    env.write_config();
    for t in TIMES {
        snapshot_at(&env, t);
    }
    assert_eq!(env.snapshot_ids().len(), TIMES.len());
    let rules = [
        "--keep-daily",
        "3",
        "--keep-monthly",
        "3",
        "--keep-yearly",
        "2",
    ];
    // The dry run says, for every snapshot, whether it stays and why.
    let mut args = vec!["snapshot", "purge", "--dry-run"];
    args.extend(rules);
    let text = env.ok(&args);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("keep") || l.starts_with("remove"))
        .collect();
    assert_eq!(lines.len(), TIMES.len(), "{text}");
    assert!(lines[0].starts_with("keep"), "newest first: {text}");
    for (t, why) in KEPT {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("testhost_data_{t}")))
            .unwrap_or_else(|| panic!("{t} not listed: {text}"));
        assert!(line.starts_with("keep") && line.ends_with(why), "{line}");
    }
    assert_eq!(lines.iter().filter(|l| l.starts_with("remove")).count(), 7);
    args.push("--json");
    let v: serde_json::Value = serde_json::from_str(&env.ok(&args)).unwrap();
    let decided: BTreeMap<String, bool> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["time"].as_str().unwrap().to_string(),
                s["keep"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(decided.values().filter(|k| **k).count(), KEPT.len(), "{v}");
    assert!(decided[&rfc3339("2026-02-28T12:00")]);
    assert!(!decided[&rfc3339("2026-02-28T00:00")]);
    // The purge itself leaves exactly those.
    let mut args = vec!["snapshot", "purge", "--force"];
    args.extend(rules);
    env.ok(&args);
    let left: Vec<String> = env.snapshot_ids();
    let want: Vec<String> = KEPT
        .iter()
        .rev()
        .map(|(t, _)| format!("testhost_data_{t}0000Z"))
        .collect();
    assert_eq!(left, want);
}

#[test]
fn create_prune_applies_the_configured_calendar() {
    let mut env = Env::new(Backend::Local);
    env.extra
        .extend(["keep_daily = 2", "retention_timezone = UTC"].map(String::from));
    env.write_config();
    for t in [
        "2026-05-01T08:00",
        "2026-05-01T20:00",
        "2026-05-02T08:00",
        "2026-05-03T08:00",
    ] {
        snapshot_at(&env, t);
    }
    fs::write(env.src().join("f"), "last").unwrap();
    let out = env
        .cmd()
        .env("VAULTIK_TEST_TIME", unix("2026-05-03T20:00").to_string())
        .args(["snapshot", "create", "--prune"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let ids = env.snapshot_ids();
    assert_eq!(
        ids,
        [
            "testhost_data_2026-05-02T080000Z",
            "testhost_data_2026-05-03T200000Z"
        ]
    );
    // A zone that does not exist is refused, naming the key and the line.
    env.extra = vec!["retention_timezone = Mars/Olympus".into()];
    env.write_config();
    let out = env.run(&["snapshot", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(":4: retention_timezone `Mars/Olympus`"),
        "{}",
        stderr(&out)
    );
}
