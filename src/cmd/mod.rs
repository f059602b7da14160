//! The subcommands: each gets the settings (`settings.rs`: flags >
//! environment > config file > defaults, resolved once) and its own
//! arguments, runs the work of the module that owns it, and prints the
//! result. Glue only; one file per group of commands.

mod absent;
mod browse;
mod check;
mod copy;
mod create;
mod daemon;
mod index;
mod inspect;
mod purge;
mod repack;
mod restore;
mod settings;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::cli::{Command, Global};
use crate::error::{Error, IoContext, Result};
use crate::keys;
use crate::store::{self, Store};

use settings::Settings;

pub fn run(g: &Global, cmd: Command) -> Result<()> {
    match cmd {
        Command::Help(text) => {
            print!("{text}");
            Ok(())
        }
        Command::Missing => {
            eprint!("{}", crate::cli::USAGE);
            Err(Error::Usage("no command given".into()))
        }
        Command::Version => {
            println!("vaultik {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Keygen { output, passphrase } => keygen(g, output.as_deref(), passphrase),
        Command::SnapshotCreate(a) if a.daemon => daemon::run(g, &a),
        Command::SnapshotCreate(a) => create::run(&Settings::resolve(g, true)?, &a),
        Command::SnapshotList { json, versions } => {
            inspect::list(&Settings::resolve(g, false)?, json, versions)
        }
        Command::SnapshotVerify(a) => inspect::verify(g, &a),
        Command::StoreInfo { json } => inspect::info(&Settings::resolve(g, false)?, json),
        Command::StoreCheck { json } => check::run(&Settings::resolve(g, false)?, json),
        Command::SnapshotPurge(a) => purge::purge(&Settings::resolve(g, false)?, &a),
        Command::SnapshotRemove { snapshots } => {
            purge::remove(&Settings::resolve(g, false)?, &snapshots)
        }
        Command::Prune { dry_run, json } => {
            purge::prune(&Settings::resolve(g, false)?, dry_run, json)
        }
        Command::Restore(a) => restore::run(g, &a),
        Command::Ls(a) => browse::ls(g, &a),
        Command::Find(a) => browse::find(g, &a),
        Command::Diff(a) => browse::diff(g, &a),
        Command::Copy(a) => copy::run(g, &a),
        Command::IndexRebuild(a) => index::run(g, &a),
        Command::Repack(a) => repack::run(g, &a),
    }
}

/// The error for output that could not be written.
fn output(e: std::io::Error) -> Error {
    Error::Output(e)
}

/// A line of the log (standard error): what hooks print.
fn log(msg: &str) {
    eprintln!(
        "{}vaultik: {}",
        crate::error::priority(6),
        crate::error::one_line(msg.to_string())
    );
}

fn warn(msg: &str) {
    // One line each, whatever the file names hold.
    eprintln!(
        "{}vaultik: warning: {}",
        crate::error::priority(4),
        crate::error::one_line(msg.to_string())
    );
}

/// What a command expects of the store it opens, for a store that was
/// never written to (no identity, no snapshots: a mistyped path, bucket or
/// prefix looks just like that).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// It lists (`snapshot list`, `store info`): an empty store, with a
    /// warning; a directory not made yet is one too.
    Listing,
    /// It maintains (`snapshot purge`, `prune`, `snapshot remove`): a
    /// warning.
    Maintenance,
    /// It reads snapshots (`restore`, `snapshot verify`, `ls`, `find`,
    /// `diff`): an error naming the store.
    Snapshots,
}

/// The store for a command that only reads or maintains it (the config is
/// optional when the store is given by flag or environment). Its identity
/// is read: a store of a newer format is refused; a damaged identity only
/// warned about (it keys local indexes, nothing these commands need); a
/// store never written to is treated as `expect` says. On a versioned
/// bucket, snapshots are read as vaultik wrote them (`store/versions.rs`).
fn open_existing_store(settings: &Settings, expect: Expect) -> Result<Box<dyn Store>> {
    open_versioned_store(settings, false, expect)
}

/// `open_existing_store`; `with_deleted`, the snapshots whose current
/// objects were deleted while versions of them remain are listed too.
fn open_versioned_store(
    settings: &Settings,
    with_deleted: bool,
    expect: Expect,
) -> Result<Box<dyn Store>> {
    let store: Box<dyn Store> = match &settings.store {
        crate::store::settings::StoreConfig::Local { path }
            if expect == Expect::Listing && !path.exists() && path.symlink_metadata().is_err() =>
        {
            Box::new(absent::Absent {
                path: path.clone(),
                stats: Default::default(),
            })
        }
        _ => settings.open_store(false)?,
    };
    // A failure here came after requests: they are shown (see `ended`).
    let checked = never_written(store.as_ref(), expect);
    let checked = ended(store.as_ref(), checked);
    checked?;
    store::versions::Versioned::open(store, with_deleted, &warn)
}

/// A store that was never written to, treated as `expect` says.
fn never_written(store: &dyn Store, expect: Expect) -> Result<()> {
    match store::identity::read(store) {
        Ok(Some(_)) => {}
        // A store from before identities has snapshots: only one with
        // nothing under metadata/ was never written to; nor was one whose
        // current objects were all deleted while versions of them remain
        // (a versioned bucket after an attack: restore reads the versions).
        Ok(None) if !store.list(crate::layout::METADATA)?.objects.is_empty() => {}
        Ok(None)
            if store
                .list_versions(crate::layout::METADATA)
                .ok()
                .flatten()
                .is_some_and(|v| !v.is_empty()) => {}
        Ok(None) => {
            let what = format!(
                "no vaultik store at {}: nothing was ever backed up there",
                store.describe()
            );
            let check = "check --store, $VAULTIK_STORE or the config's [s3] or [local] section";
            if expect == Expect::Snapshots {
                return Err(Error::Setup(format!("{what} ({check})")));
            }
            warn(&format!("{what}; {check}"));
        }
        Err(e @ Error::Corrupt { .. }) => warn(&e.to_string()),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// How a command that reads blobs treats cold ones (`--thaw`, `--thaw-days`,
/// `--wait`), its plan written to `out`, progress on a terminal.
fn thaw<'t>(
    store: &'t dyn Store,
    args: crate::thaw::ThawArgs,
    what: String,
    json: bool,
    out: &'t std::sync::Mutex<Box<dyn Write + Send>>,
) -> crate::thaw::Thaw<'t> {
    crate::thaw::Thaw {
        store,
        args,
        what,
        json,
        out,
        // SAFETY: isatty has no preconditions.
        progress: unsafe { libc::isatty(2) } == 1,
    }
}

/// Where a command's `requests:` line goes, success or failure.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Requests {
    /// After the report, on standard output.
    Stdout,
    /// On standard error: standard output is data (`ls`, `find`, `diff`,
    /// `restore --stdout`).
    Stderr,
    /// Nowhere: `--json` (its report has a `requests` object), `--cron`.
    Nowhere,
}

thread_local! {
    /// Where this command shows its request counts.
    static PLACE: std::cell::Cell<Requests> = const { std::cell::Cell::new(Requests::Nowhere) };
    /// Whether it has shown them.
    static SHOWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Where this command's `requests:` line goes: said before it opens the
/// store, so that a failure from then on shows the counts there too.
fn requests_to(place: Requests) {
    PLACE.with(|p| p.set(place));
}

/// The `requests:` line of a command's report.
fn requests_line(store: &dyn Store) -> String {
    SHOWN.with(|s| s.set(true));
    store.stats().summary()
}

/// A command that talked to the store (made a request) ends with its
/// request counts, success or failure, in the same place: a failure
/// before its report shows them there, and the error stays one line on
/// standard error.
fn ended<T>(store: &dyn Store, r: Result<T>) -> Result<T> {
    let s = store.stats();
    let talked = s.snapshot()[..5].iter().any(|n| *n > 0)
        || [&s.restore, &s.retention, &s.config]
            .iter()
            .any(|n| n.load(std::sync::atomic::Ordering::Relaxed) > 0);
    if talked && r.as_ref().is_err_and(|e| !e.is_broken_pipe()) && !SHOWN.with(std::cell::Cell::get)
    {
        SHOWN.with(|s| s.set(true));
        // Best effort: the command's own error is what matters.
        match PLACE.with(std::cell::Cell::get) {
            Requests::Stdout => {
                let _ = writeln!(std::io::stdout(), "{}", s.summary());
            }
            Requests::Stderr => {
                let _ = writeln!(std::io::stderr(), "{}", s.summary());
            }
            Requests::Nowhere => {}
        }
    }
    r
}

/// The `requests` object of every `--json` report.
fn json_report(mut v: serde_json::Value, store: &dyn Store) -> String {
    SHOWN.with(|s| s.set(true));
    v["requests"] = store.stats().to_json();
    serde_json::to_string_pretty(&v).expect("JSON values serialize")
}

fn keygen(g: &Global, output: Option<&Path>, passphrase: bool) -> Result<()> {
    let (mut file, public) = keys::generate();
    if passphrase {
        let what = output.map_or("the new identity".to_string(), |p| p.display().to_string());
        let pass = crate::passphrase::read(settings::passphrase_source(g), &what, true)?;
        file = keys::protect(&file, pass)?;
    }
    match output {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .at("create identity file", path)?;
            f.write_all(file.as_bytes()).at("write", path)?;
            println!("{public}");
        }
        None if passphrase => {
            // The armored identity alone on standard output (a file age
            // reads as it is); the public key beside it, as age-keygen does.
            eprintln!("public key: {public}");
            print!("{file}");
        }
        None => print!("{file}"),
    }
    Ok(())
}
