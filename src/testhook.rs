//! The one test hook: lets the integration tests act at a chosen moment of
//! a run (swap an entry during a backup or a restore). With
//! `VAULTIK_TEST_PAUSE_AT=<path>` set, `pause_at(<path>)` creates
//! `<path>.paused` and waits until it is removed (checked every 10 ms, for
//! 30 s at most). Pause points: the walk just before it opens a directory
//! to list it, a reader just before it opens a file (both at that path), a
//! restore just before it writes contents (`<target>/.vaultik-pause`).
//! Unset, a call costs a look at a cached `None`.

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
