//! The progress line of a backup on a terminal: files and bytes read so
//! far, of how many known, rate and time left.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// One line redrawn in place, four times a second (a terminal).
    Line,
    /// A JSON object per line, once a second, and one when done:
    /// `{"progress": {...}}` (`--json --progress`).
    Json,
}

/// Files and bytes read so far, for the progress line.
#[derive(Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// Known so far; final once `walk_done`.
    pub total_files: AtomicU64,
    pub total_bytes: AtomicU64,
    pub walk_done: AtomicBool,
    /// Files to read that the index knew by path (changed, not new).
    pub changed: AtomicU64,
}

/// Counts a file as done when dropped, whatever way reading it ended.
pub struct FileGuard<'a>(&'a AtomicU64);

impl Drop for FileGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Progress {
    pub fn file_guard(&self) -> FileGuard<'_> {
        FileGuard(&self.files)
    }

    /// Progress on stderr, in `style`, until `finished`.
    pub fn show(&self, style: Style, finished: &AtomicBool) {
        use std::io::Write as _;
        let start = Instant::now();
        let mut err = std::io::stderr();
        if style == Style::Json {
            loop {
                let done = finished.load(Ordering::Relaxed);
                let v = serde_json::json!({"progress": {
                    "files": self.files.load(Ordering::Relaxed),
                    "bytes": self.bytes.load(Ordering::Relaxed),
                    "total_files": self.total_files.load(Ordering::Relaxed),
                    "total_bytes": self.total_bytes.load(Ordering::Relaxed),
                    "scanning": !self.walk_done.load(Ordering::Relaxed),
                    "seconds": (start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                    "done": done,
                }});
                let _ = writeln!(err, "{v}");
                if done {
                    return;
                }
                // Every second, or at once when finished.
                for _ in 0..20 {
                    if finished.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
        loop {
            let files = self.files.load(Ordering::Relaxed);
            let bytes = self.bytes.load(Ordering::Relaxed);
            let total_files = self.total_files.load(Ordering::Relaxed);
            let total_bytes = self.total_bytes.load(Ordering::Relaxed);
            let walking = !self.walk_done.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64().max(0.001);
            let rate = bytes as f64 / secs;
            let eta = if walking {
                "(still scanning)".to_string()
            } else if rate > 0.0 && total_bytes > bytes {
                format!("{:.0}s", (total_bytes - bytes) as f64 / rate)
            } else {
                "-".into()
            };
            // A progress line that cannot be drawn is no error.
            let _ = write!(
                err,
                "\r\x1b[K{files}/{total_files} files, {} of {}, {}/s, ETA {eta}",
                crate::human_bytes(bytes),
                crate::human_bytes(total_bytes),
                crate::human_bytes(rate as u64),
            );
            let _ = err.flush();
            if finished.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let _ = write!(err, "\r\x1b[K");
        let _ = err.flush();
    }
}
