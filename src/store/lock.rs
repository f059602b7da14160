//! S3 Object Lock and object versions, as vaultik uses them (issue 20):
//! every object a run writes is locked until a date (`Lock`), reused blobs
//! have their lock extended, and on a versioned bucket the readers look
//! past what an attacker put over a key (`versions.rs`).
//!
//! What a server says of versions is as untrusted as anything else it
//! says: version ids are opaque strings that are only ever sent back as a
//! query value, never used as a name on the local file system, and bounded
//! in length; a listing is bounded like any other.

use crate::time;

/// `[s3] object_lock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    /// Objects are written without a lock.
    #[default]
    Off,
    /// Locked; an account with `s3:BypassGovernanceRetention` can still
    /// shorten or remove the lock (and delete).
    Governance,
    /// Locked; nobody, the root account included, can delete a version
    /// before its date.
    Compliance,
}

impl LockMode {
    pub fn parse(s: &str) -> Option<LockMode> {
        match s.to_ascii_lowercase().as_str() {
            "off" => Some(LockMode::Off),
            "governance" => Some(LockMode::Governance),
            "compliance" => Some(LockMode::Compliance),
            _ => None,
        }
    }

    /// As S3 spells it in `x-amz-object-lock-mode` and retention XML.
    pub fn header(self) -> &'static str {
        match self {
            LockMode::Off => "",
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }

    pub fn is_on(self) -> bool {
        self != LockMode::Off
    }
}

/// The lock every object written from now on gets: `mode`, until `until`
/// (seconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub mode: LockMode,
    pub until: u64,
}

impl Lock {
    /// The headers of a locked PUT (S3 requires a checksum header with
    /// them, which every PUT of vaultik's carries).
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            ("x-amz-object-lock-mode", self.mode.header().to_string()),
            ("x-amz-object-lock-retain-until-date", iso8601(self.until)),
        ]
    }

    /// The body of a PutObjectRetention.
    pub fn retention_xml(&self) -> String {
        format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            self.mode.header(),
            iso8601(self.until)
        )
    }
}

/// How a backup run locks what it writes: new objects until `until`; a
/// reused blob must be locked at least `lock_for` past the snapshot that
/// reuses it, and is then extended to that plus `step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPlan {
    pub mode: LockMode,
    /// Seconds.
    pub lock_for: u64,
    /// What objects written by the run are locked until.
    pub until: u64,
}

impl LockPlan {
    /// The plan of a run starting at `now`.
    pub fn new(mode: LockMode, lock_for: u64, now: u64) -> LockPlan {
        LockPlan {
            mode,
            lock_for,
            until: now.saturating_add(lock_for).saturating_add(step(lock_for)),
        }
    }

    /// The lock of what the run writes.
    pub fn lock(&self) -> Lock {
        Lock {
            mode: self.mode,
            until: self.until,
        }
    }

    /// Until when a blob a snapshot made at `now` reuses must stay locked.
    pub fn needed(&self, now: u64) -> u64 {
        now.saturating_add(self.lock_for)
    }

    /// The lock a reused blob is extended to at `now`.
    pub fn extended(&self, now: u64) -> Lock {
        Lock {
            mode: self.mode,
            until: self
                .needed(now)
                .saturating_add(step(self.lock_for))
                .max(self.until),
        }
    }
}

/// `2026-12-02T15:00:00Z`, as S3 takes a retain-until date.
pub fn iso8601(unix: u64) -> String {
    let c = time::compact(unix);
    // compact is `2026-12-02T150000Z`.
    format!("{}:{}:{}Z", &c[..13], &c[13..15], &c[15..17])
}

/// How far past what a snapshot needs a lock is set, so that a blob kept
/// by frequent runs is extended now and then, not by every run: a tenth of
/// `lock_for`, at least a day.
pub fn step(lock_for: u64) -> u64 {
    (lock_for / 10).max(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_bodies() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_796_000_000), "2026-11-30T00:53:20Z");
        let l = Lock {
            mode: LockMode::Compliance,
            until: 0,
        };
        assert!(l.retention_xml().contains("<Mode>COMPLIANCE</Mode>"));
        assert_eq!(l.headers()[1].1, "1970-01-01T00:00:00Z");
        assert_eq!(LockMode::parse("Governance"), Some(LockMode::Governance));
        assert_eq!(LockMode::parse("on"), None);
    }

    #[test]
    fn locks_are_set_a_step_past_what_is_needed() {
        let d = 86_400;
        assert_eq!(step(7 * d), d);
        assert_eq!(step(100 * d), 10 * d);
    }
}
