//! Test support, shipped so the integration tests can share it: a seeded
//! generator ([`Rng`]) and the one test hook.
//!
//! The hook: lets the integration tests act at a chosen moment of
//! a run (swap an entry during a backup or a restore). With
//! `VAULTIK_TEST_PAUSE_AT=<path>` set, `pause_at(<path>)` creates
//! `<path>.paused` and waits until it is removed (checked every 10 ms, for
//! 30 s at most). Pause points: the walk just before it opens a directory
//! to list it, a reader just before it opens a file (both at that path), a
//! restore just before it writes contents (`<target>/.vaultik-pause`), and
//! each of a restore's reading threads after each read unit it has written
//! (`<target>/.vaultik-pause-unit`: to stop a restore midway), and a repack
//! rewriting a snapshot after its intermediate manifest
//! (`<state dir>/repack-pause-mid`) and after its new metadata
//! (`<state dir>/repack-pause-metadata`).
//! Unset, a call costs a look at a cached `None`.
//!
//! And one clock: with `VAULTIK_TEST_TIME=<unix seconds>`, a backup dates
//! its snapshot then ([`snapshot_time`]), so that tests of calendar
//! retention can make real snapshots at chosen times (a time before the
//! store's own, as any writer to the store may claim; see the threat
//! model).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn pause_at(path: &Path) {
    static AT: OnceLock<Option<PathBuf>> = OnceLock::new();
    let at = AT.get_or_init(|| std::env::var_os("VAULTIK_TEST_PAUSE_AT").map(PathBuf::from));
    let Some(at) = at else { return };
    if path != at {
        return;
    }
    let mut marker = at.clone().into_os_string();
    marker.push(".paused");
    let marker = PathBuf::from(marker);
    if std::fs::write(&marker, b"").is_err() {
        return;
    }
    let started = Instant::now();
    while marker.exists() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The time a new snapshot is dated: now, or `VAULTIK_TEST_TIME`.
pub fn snapshot_time() -> u64 {
    std::env::var("VAULTIK_TEST_TIME")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(crate::time::now)
}

/// A seeded xorshift64 generator: deterministic, fast, not for secrets. The
/// one source of pseudo-random test data (unit tests, fuzzing, the
/// integration tests' files and schedules).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // xorshift stays at zero forever from zero.
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    #[allow(clippy::should_implement_trait)] // not an Iterator: it never ends
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// `n` incompressible bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}
