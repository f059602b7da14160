//! S3 storage classes: which ones a blob may be put in, which need a thaw
//! (RestoreObject) before a GET, their minimum storage durations, and the
//! retrieval tiers with a small price table for estimates.
//!
//! Prices are AWS list prices for us-east-1 (checked 2026-12; other
//! regions and providers differ): they make the plan's estimate, never a
//! decision.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum StorageClass {
    #[default]
    Standard,
    StandardIa,
    OnezoneIa,
    IntelligentTiering,
    GlacierIr,
    Glacier,
    DeepArchive,
}

impl StorageClass {
    pub const ALL: [StorageClass; 7] = [
        StorageClass::Standard,
        StorageClass::StandardIa,
        StorageClass::OnezoneIa,
        StorageClass::IntelligentTiering,
        StorageClass::GlacierIr,
        StorageClass::Glacier,
        StorageClass::DeepArchive,
    ];
    pub const NAMES: [&'static str; 7] = [
        "STANDARD",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER_IR",
        "GLACIER",
        "DEEP_ARCHIVE",
    ];

    /// The name S3 uses (`x-amz-storage-class`).
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// From S3's name (case-insensitive, as configs are written by hand).
    pub fn parse(s: &str) -> Option<StorageClass> {
        Self::NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s.trim()))
            .map(|i| Self::ALL[i])
    }

    /// From a listing or a HEAD: a class S3 reports that vaultik does not
    /// know (REDUCED_REDUNDANCY, a provider's own...) is read like
    /// STANDARD, since a GET works or says why.
    pub fn from_server(s: Option<&str>) -> StorageClass {
        s.and_then(StorageClass::parse)
            .unwrap_or(StorageClass::Standard)
    }

    /// Objects of this class must be restored (thawed) before a GET.
    /// (INTELLIGENT_TIERING objects do too once they are in an archive
    /// tier, which a HEAD tells: see `Thaw`.)
    pub fn is_cold(self) -> bool {
        matches!(self, StorageClass::Glacier | StorageClass::DeepArchive)
    }

    /// Days an object is billed for at least, deleted earlier or not.
    pub fn min_days(self) -> u64 {
        match self {
            StorageClass::StandardIa | StorageClass::OnezoneIa => 30,
            StorageClass::GlacierIr | StorageClass::Glacier => 90,
            StorageClass::DeepArchive => 180,
            StorageClass::Standard | StorageClass::IntelligentTiering => 0,
        }
    }
}

impl fmt::Display for StorageClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A retrieval tier of RestoreObject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tier {
    Expedited,
    #[default]
    Standard,
    Bulk,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Expedited => "Expedited",
            Tier::Standard => "Standard",
            Tier::Bulk => "Bulk",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        [Tier::Expedited, Tier::Standard, Tier::Bulk]
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

/// What a thaw of one class at one tier takes and costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retrieval {
    /// Typical time until the object is readable, in hours (low, high).
    pub hours: (f64, f64),
    /// Dollars per GB retrieved.
    pub per_gb: f64,
    /// Dollars per 1,000 restore requests.
    pub per_1000: f64,
}

/// Dollars per GB-month of the temporary copy a thaw makes (billed at
/// STANDARD for the days asked).
pub const THAWED_COPY_PER_GB_MONTH: f64 = 0.023;

/// The retrieval of `class` at `tier`, or None when the tier is not
/// offered for it (Expedited for DEEP_ARCHIVE).
pub fn retrieval(class: StorageClass, tier: Tier) -> Option<Retrieval> {
    let r = |lo, hi, per_gb, per_1000| Retrieval {
        hours: (lo, hi),
        per_gb,
        per_1000,
    };
    Some(match (class, tier) {
        // S3 Glacier Flexible Retrieval (and INTELLIGENT_TIERING's Archive
        // Access tier, priced the same).
        (StorageClass::DeepArchive, Tier::Expedited) => return None,
        (StorageClass::DeepArchive, Tier::Standard) => r(0.0, 12.0, 0.02, 0.10),
        (StorageClass::DeepArchive, Tier::Bulk) => r(0.0, 48.0, 0.0025, 0.025),
        (_, Tier::Expedited) => r(1.0 / 60.0, 5.0 / 60.0, 0.03, 10.0),
        (_, Tier::Standard) => r(3.0, 5.0, 0.01, 0.05),
        (_, Tier::Bulk) => r(5.0, 12.0, 0.0, 0.025),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in StorageClass::ALL {
            assert_eq!(StorageClass::parse(c.name()), Some(c));
        }
        assert_eq!(
            StorageClass::parse("deep_archive"),
            Some(StorageClass::DeepArchive)
        );
        assert_eq!(StorageClass::parse("GLACIER_DEEP"), None);
        assert_eq!(
            StorageClass::from_server(Some("REDUCED_REDUNDANCY")),
            StorageClass::Standard
        );
        assert!(StorageClass::Glacier.is_cold() && !StorageClass::GlacierIr.is_cold());
        assert_eq!(StorageClass::DeepArchive.min_days(), 180);
        assert_eq!(retrieval(StorageClass::DeepArchive, Tier::Expedited), None);
        assert_eq!(Tier::parse("bulk"), Some(Tier::Bulk));
    }
}
