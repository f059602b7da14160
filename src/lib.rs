//! vaultik: encrypted, deduplicating, incremental backups to S3-compatible
//! storage with age public-key encryption. The binary (`main.rs`) is a thin
//! shell over these modules; the library exists so that the fuzz targets
//! (`tests/fuzz`) and the integration tests can reach them.
//!
//! # Module map
//!
//! The rooms, one module per concept, named for what it owns:
//!
//! | room | modules |
//! |------|---------|
//! | the command line | `main.rs`, `cli` (arguments into structs), `cmd/` (glue: one file per group of commands), `cmd/settings` (flags > environment > config > defaults, resolved once), `config` (the file) |
//! | the backup | `backup/` (one file per stage), `walk` (the directory walk), `stream` (standard input or a command's output as one file), `chunk` (FastCDC, chunk ids), `blob` (chunks into encrypted blobs and back) |
//! | what a snapshot is | `snapshot` (the encrypted metadata database, written), `metadata` (the same, read back from the store: checked and bounded), `manifest` (the clear manifest, and the order of snapshots), `xattrs` (an entry's extended attributes and inode flags: read, encoded, bounded, applied) |
//! | the store | `store/` (the object-store contract; `settings`: what a store is opened with; `s3/` (signing, credentials, transport and retries, limits, listings, Object Lock), `local`; `identity`: `store.json`), `layout` (every object key) |
//! | local state | `index` (SQLite cache of what the store has, and of file stats), `lock` (one run per index), `rebuild` (the index made again from the store's snapshots) |
//! | the restore | `restore/` (plan, entries, contents, target; the controls: select (`--include`/`--exclude`), existing (`--overwrite`), prune (`--delete`)) |
//! | looking without restoring | `browse/` (`ls`, `find`, `diff`: a snapshot's entries read in path order; `show`: lines and JSON, escaped), `cmd/browse` |
//! | keyless maintenance | `gc/` (listing view, retention, garbage collection; `purge`), `verify` |
//! | the daemon | `cmd/daemon` (the poll loop), `watch` (raw inotify) |
//! | shared | `error` (the one error type), `keys` (age; the bound on age headers), `scratch` (private scratch files in shared directories), `time`, `testhook` |
//!
//! # A chunk's path, walk to bucket (`snapshot create`)
//!
//! `cmd/create` -> `backup/mod.rs` (the run: lock, index, pipeline) ->
//! `backup/walk.rs` (entries with their stat, and a directory's, symlink's
//! or special file's attributes; `walk.rs` opens nothing but what it
//! stat'ed) -> `backup/detect.rs` (unchanged files keep their chunk lists
//! and attributes, from `index`) -> `backup/record.rs` (every entry into the
//! snapshot's metadata, `snapshot::MetaWriter`; changed files queued) ->
//! `backup/chunk.rs` (read, attributes from the descriptor, cut by
//! `chunk`, hashed; new chunks claimed
//! from `backup/dedup.rs` and compressed) -> `backup/pack.rs` (frames
//! into a `blob::BlobWriter`, encrypted as written) -> `backup/upload.rs`
//! (the blob put under `layout`'s key by a `store`) -> `backup/record.rs`
//! again (once stored, the index records its chunks) ->
//! `backup/publish.rs` (metadata sealed and uploaded, then the manifest:
//! the snapshot now exists).
//!
//! # And back (`restore`)
//!
//! `cmd/restore` -> `restore/mod.rs` (which snapshot: `manifest`; its
//! metadata fetched, decrypted and checked: `metadata`) -> `restore/plan.rs` (every
//! path checked and placed in a tree; chunks located, ordered by blob and
//! offset) -> `restore/entries.rs` (directories, empty files) ->
//! `restore/contents.rs` (ranged reads through `blob`, every chunk's
//! SHA-256 checked) -> `restore/entries.rs` (links, special files, owners,
//! extended attributes, modes, times, inode flags: `xattrs`) — every write
//! through `restore/target.rs`.
//!
//! # Where each invariant lives
//!
//! - Nothing a restore writes lands outside the target; no name from a
//!   snapshot is resolved as a path: `restore/target.rs`.
//! - An entry's attributes are set owner first, extended attributes, mode,
//!   times, flags last, through the object's own descriptor, and what
//!   cannot be read or set is counted, never silently lost: `xattrs`
//!   (the order), `restore/target.rs` (the descriptor).
//! - File contents never touch the disk in the clear outside a restore
//!   target: a blob is encrypted as it is written to its temporary file
//!   (`blob`).
//! - A chunk is in the index only once the blob holding it is confirmed
//!   stored: `backup/upload.rs` reports, `backup/record.rs` records.
//! - A claimed chunk id is either handed to the packer or released:
//!   `backup/dedup.rs` (`Claim`).
//! - A snapshot exists only once its manifest does, and its manifest is
//!   uploaded last: `backup/publish.rs`.
//! - Every key vaultik reads or writes is one of the layout's; any other
//!   object is foreign, never read or deleted: `layout`, enforced by
//!   `store`.
//! - Everything read from the store is bounded and checked: `store`
//!   (sizes, time bounds, listings), `manifest`, `store/identity`, `gc`
//!   (marks), `metadata` (a snapshot's database: its schema, size and the
//!   work done with it), `keys` (age headers), `blob` (chunk hashes),
//!   `xattrs` (an entry's attributes: bounds, names, order, flags).
//! - No scratch file has a name others can guess or plant: `scratch`.
//! - The index belongs to one store (its identity, not its address):
//!   `index`, `store/identity`.
//! - Nothing is deleted younger than the grace period, or while a manifest
//!   cannot be read; deletion is marked, then done a grace period later:
//!   `gc`.
//! - Reading a snapshot's entries never sorts them in memory: every query
//!   of `ls`, `find` and `diff` follows the `path` index, checked at run
//!   time: `browse`.
//! - One run per index at a time: `lock`.
//! - One way to stop a backup early: `backup/cancel.rs`.
//! - Errors carry what they happened on and keep their cause; exit codes
//!   come from the variant, never from the text: `error`.
//! - Dependencies point down: `cmd` uses everything; `config` (the file)
//!   fills in `store/settings` (plain data the store is opened with);
//!   `gc` decides retention (and the lock it implies) over `store`;
//!   `store` knows nothing of `config`, `gc` or `cmd`.

pub mod backup;
pub mod blob;
pub mod browse;
pub mod chunk;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod copy;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod gc;
pub mod index;
pub mod keys;
pub mod layout;
pub mod lock;
pub mod manifest;
pub mod metadata;
pub mod monitor;
pub mod passphrase;
pub mod rebuild;
pub mod repack;
pub mod restore;
pub mod scratch;
pub mod signing;
pub mod snapshot;
pub mod store;
pub mod stream;
pub mod testhook;
pub mod thaw;
pub mod time;
pub mod verify;
pub mod walk;
pub mod watch;
pub mod xattrs;

/// Where notices that library code gives on its own (a store outage, its
/// end) are printed: after `vaultik: warning:`, or the daemon's prefix.
static NOTICE_PREFIX: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Notices go after `prefix` from now on (set once, by the daemon).
pub fn set_notice_prefix(prefix: &'static str) {
    let _ = NOTICE_PREFIX.set(prefix);
}

/// A notice on standard error, on one line.
pub fn notice(msg: &str) {
    eprintln!(
        "{} {}",
        NOTICE_PREFIX.get().copied().unwrap_or("vaultik: warning:"),
        error::one_line(msg.to_string())
    );
}

/// `42s`, `1m32s`, `15m`, `2h5m`: a span as it passed.
pub fn span(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

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
