//! vaultik: encrypted, deduplicating, incremental backups to S3-compatible
//! storage with age public-key encryption. The binary (`main.rs`) is a thin
//! shell over these modules; the library exists so that the fuzz targets
//! (`tests/fuzz`) can reach the parsers.

pub mod backup;
pub mod blob;
pub mod chunk;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod gc;
pub mod index;
pub mod keys;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod restore;
pub mod snapshot;
pub mod store;
pub mod testhook;
pub mod time;
pub mod verify;
pub mod walk;
pub mod watch;

/// `90s`, `15m`, `24h`, `2d`
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 && s > 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `1.5 MiB`
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
