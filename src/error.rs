//! The one error type of vaultik. Each variant is a condition a caller can
//! branch on; every failure carries the path, key or operation it happened
//! on and keeps its cause (`source()`), and where the user can act the
//! message says how.
//!
//! An error's `Display` is the whole chain on one line (`cannot open
//! /x: Permission denied`): whatever prints an error (main, a warning, a
//! report) says everything, on one line, with control characters escaped.
//! `source()` gives the same causes as values, for code.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    /// Bad command line: exit code 2, message names the flag or argument.
    Usage(String),
    /// The same, for a command whose help says more (`vaultik COMMAND --help`).
    UsageIn { msg: String, command: &'static str },
    /// Bad configuration file, with the line it was found on.
    Config {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// Settings that are missing or inconsistent as a whole (the message
    /// names what to set).
    Setup(String),
    /// The system refused a resource the run needs (threads, inotify,
    /// randomness).
    System {
        op: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A local file system operation failed.
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A store request failed (after retries, for transient failures).
    Store {
        op: &'static str,
        key: String,
        cause: StoreCause,
        /// Tries made, when the failure was worth trying again.
        attempts: Option<Tried>,
    },
    /// An object is not in the store.
    NotFound { key: String },
    /// A local SQLite database failed (the index, or a snapshot's
    /// metadata being written or read).
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// Data that fails authentication, a checksum or a format check.
    Corrupt { what: String, msg: String },
    /// The private key is missing, malformed or does not match.
    Key(String),
    /// A snapshot id that is not in the store.
    UnknownSnapshot(String),
    /// Another run holds the run lock of this index.
    Locked { lock: PathBuf, pid: String },
    /// A directory of local state that others could read or change.
    NotPrivate {
        path: PathBuf,
        mode: u32,
        owner: u32,
        euid: u32,
    },
    /// A worker thread panicked (a bug: the run stops).
    Panicked(&'static str),
    /// Stopped because another part of the same run failed, or on request.
    Cancelled,
    /// The last snapshot kept locally names chunks the store no longer has.
    StaleBase,
    /// Blobs a new snapshot needs were deleted while it was made.
    BlobsVanished { id: String, missing: usize },
    /// A file a backup could not read, without `--skip-errors` or
    /// `skip_errors`: the message says how to go on without it.
    Unreadable(Box<Error>),
    /// A check found problems (verify).
    Problems { count: usize, what: String },
    /// The run finished, but some files were left out.
    Partial { failed: usize, kind: Partial },
    /// A listing finished without some damaged objects, which were named
    /// in warnings (exit code 1).
    Damaged { count: usize, what: &'static str },
    /// A search found nothing (`find`): exit code 1, as grep's.
    NoMatch(String),
    /// Snapshots skipped because their `hook_before` failed (each named
    /// in the log): exit code 2.
    HookFailed { skipped: Vec<String> },
    /// Standard output or error could not be written (a full disk; a
    /// closed pipe ends the command quietly, see `main`).
    Output(io::Error),
    /// A stream (standard input, a command's output) failed: no snapshot.
    Stream { what: String, msg: String },
    /// Blobs the command needs are in a cold storage class and not yet
    /// readable: a thaw was requested or is under way (exit code 3).
    ThawPending {
        blobs: usize,
        bytes: u64,
        /// Thaws this run requested (the rest were already under way).
        requested: usize,
    },
    /// Blobs the command needs are frozen in a cold storage class and no
    /// thaw was asked for (`--thaw`).
    ThawNeeded { blobs: usize, bytes: u64 },
    /// Nothing is deleted while a manifest cannot be read.
    Undeletable {
        what: &'static str,
        damaged: usize,
        key: String,
        why: String,
    },
}

/// What a partial run left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partial {
    /// Backup: unreadable files skipped, as asked (exit code 1).
    Skipped,
    /// Restore: files that could not be restored, named and removed.
    NotRestored,
}

/// How long a store request was tried before it was given up: attempts,
/// and seconds, out of the `retry_for` allowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tried {
    pub attempts: u32,
    pub secs: u32,
    pub retry_for: u32,
}

/// Why a store request failed.
#[derive(Debug)]
pub enum StoreCause {
    /// The server answered with this HTTP status (and S3's error code and
    /// message, when it gave them).
    Http {
        status: u16,
        code: String,
        message: String,
    },
    /// The TLS handshake failed: an untrusted certificate does not become
    /// trusted by asking again.
    Tls(String),
    /// The server redirected; vaultik never follows one.
    Redirect(String),
    /// No answer, or one cut short or stalled.
    Transport(String),
    /// An answer vaultik refuses: too long, a listing that loops or lies,
    /// a key outside the layout.
    Refused(String),
    /// No credentials to sign with: the source the chain found failed
    /// (`store/s3/creds/`).
    Credentials(String),
}

impl fmt::Display for StoreCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreCause::Http {
                status,
                code,
                message,
            } => match (code.as_str(), message.as_str()) {
                ("", _) => write!(f, "HTTP {status}"),
                (c, "") => write!(f, "HTTP {status} {c}"),
                (c, m) => write!(f, "HTTP {status} {c}: {m}"),
            },
            StoreCause::Tls(m)
            | StoreCause::Redirect(m)
            | StoreCause::Transport(m)
            | StoreCause::Refused(m) => f.write_str(m),
            StoreCause::Credentials(m) => write!(f, "no credentials to sign with: {m}"),
        }
    }
}

impl StoreCause {
    /// What the user can do about it, when there is something.
    fn hint(&self) -> Option<&'static str> {
        match self {
            StoreCause::Http { status: 403, .. } => {
                Some("check the access key, the secret and the bucket's policy")
            }
            StoreCause::Http { code, .. } if code == "NoSuchBucket" => {
                Some("check the bucket name and the endpoint")
            }
            StoreCause::Tls(_) => {
                Some("check the endpoint, or give the server's CA with ca_file or VAULTIK_CA_FILE")
            }
            StoreCause::Credentials(_) => {
                Some("see \"Credentials\" in README.md for where vaultik looks, in which order")
            }
            _ => None,
        }
    }
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Partial {
                kind: Partial::Skipped,
                ..
            }
            | Error::Damaged { .. }
            | Error::NoMatch(_) => 1,
            Error::ThawPending { .. } => 3,
            _ => 2,
        }
    }

    /// Output whose reader went away (`| head`): not worth a message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    /// A usage error of `command`: it points to that command's help.
    pub fn usage_in(self, command: &'static str) -> Error {
        match self {
            Error::Usage(msg) => Error::UsageIn { msg, command },
            e => e,
        }
    }

    /// A PATH argument (`restore`, `ls`), as typed, that names nothing in
    /// the snapshot; a relative one (taken from `/`) is told that snapshot
    /// paths are absolute, with the path it may have meant.
    pub fn not_in_snapshot(path: &str, id: &str) -> Error {
        let mut msg = format!(
            "path {} is not in snapshot {id}",
            one_line(path.to_string())
        );
        if !path.starts_with('/') {
            let rel = path.trim_start_matches("./");
            msg.push_str(&format!(
                "; paths in a snapshot are absolute, as backed up: {rel} was taken as /{rel}"
            ));
            if let Ok(cwd) = std::env::current_dir() {
                msg.push_str(&format!(" (did you mean {}?)", cwd.join(rel).display()));
            }
        }
        Error::Usage(one_line(msg))
    }

    pub fn corrupt(what: impl Into<String>, msg: impl fmt::Display) -> Error {
        Error::Corrupt {
            what: what.into(),
            msg: msg.to_string(),
        }
    }

    /// A store request refused by vaultik itself (a key outside the
    /// layout, an answer it will not take).
    pub fn store(op: &'static str, key: &str, msg: impl fmt::Display) -> Error {
        Error::Store {
            op,
            key: key.to_string(),
            cause: StoreCause::Refused(msg.to_string()),
            attempts: None,
        }
    }
}

impl fmt::Display for Error {
    /// Always one line: control characters that came from outside (a
    /// newline in a file name, a carriage return in a config file) are
    /// escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        self.write_raw(&mut s)?;
        f.write_str(&one_line(s))
    }
}

impl Error {
    fn write_raw(&self, f: &mut String) -> fmt::Result {
        use std::fmt::Write;
        match self {
            Error::Usage(msg) => write!(f, "{msg} (see `vaultik --help`)"),
            Error::UsageIn { msg, command } => write!(f, "{msg} (see `vaultik {command} --help`)"),
            Error::Config { path, line, msg } => write!(f, "{}:{line}: {msg}", path.display()),
            Error::Setup(msg) => f.write_str(msg),
            Error::System { op, source } => write!(f, "cannot {op}: {source}"),
            Error::Io { op, path, source } => {
                write!(f, "cannot {op} {}: {source}", shown(path))
            }
            Error::Store {
                op,
                key,
                cause,
                attempts,
            } => {
                write!(f, "store {op} {key}: {cause}")?;
                if let Some(t) = attempts {
                    write!(
                        f,
                        " (after {} attempts in {}; retry_for is {})",
                        t.attempts,
                        crate::span(t.secs.into()),
                        crate::span(t.retry_for.into())
                    )?;
                }
                if let Some(hint) = cause.hint() {
                    write!(f, "; {hint}")?;
                }
                Ok(())
            }
            Error::NotFound { key } => write!(f, "object {key} is not in the store"),
            Error::Database { path, source } => {
                write!(f, "database {}: {source}", path.display())
            }
            Error::Corrupt { what, msg } => write!(
                f,
                "{what}: {msg} (the backup data is damaged; run `vaultik snapshot verify --deep`)"
            ),
            Error::Key(msg) => f.write_str(msg),
            Error::UnknownSnapshot(id) => write!(
                f,
                "snapshot {id} is not in the store (see `vaultik snapshot list`)"
            ),
            Error::Locked { lock, pid } => write!(
                f,
                "another vaultik run (pid {pid}) holds {}; try again when it has finished",
                lock.display()
            ),
            Error::NotPrivate {
                path,
                mode,
                owner,
                euid,
            } => {
                let shown = shown(path);
                write!(
                    f,
                    "{shown} is mode {mode:04o}, owned by uid {owner}: vaultik keeps its index and \
                     temporary files there and needs it private (owned by uid {euid}, no access \
                     for group or others); fix it with `chown {euid} {shown}; chmod 700 {shown}` \
                     or set index_path"
                )
            }
            Error::Panicked(what) => write!(f, "{what} panicked (a bug: please report it)"),
            Error::Cancelled => f.write_str("cancelled"),
            Error::StaleBase => f.write_str("the last snapshot kept locally is out of date"),
            Error::BlobsVanished { id, missing } => write!(
                f,
                "{missing} blob(s) that snapshot {id} needs were deleted from the store while it was made; run it again"
            ),
            Error::Unreadable(e) => {
                e.write_raw(f)?;
                f.write_str(
                    " (to back up the rest and exit with code 1, pass --skip-errors or set \
                     skip_errors = yes in the config)",
                )
            }
            Error::Problems { count, what } => write!(f, "{what}: {count} problem(s) found"),
            Error::HookFailed { skipped } => write!(
                f,
                "snapshot(s) {} skipped: hook_before failed (see above)",
                skipped.join(", ")
            ),
            Error::Partial { failed, kind } => match kind {
                Partial::Skipped => write!(f, "{failed} file(s) skipped"),
                Partial::NotRestored => write!(f, "{failed} file(s) could not be restored"),
            },
            Error::Damaged { count, what } => write!(
                f,
                "{what}: {count} damaged object(s) left out (named above; run `vaultik store info`)"
            ),
            Error::NoMatch(msg) => f.write_str(msg),
            Error::Output(e) => write!(f, "cannot write the output: {e}"),
            Error::Stream { what, msg } => write!(f, "{what}: {msg}"),
            Error::ThawNeeded { blobs, bytes } => write!(
                f,
                "{blobs} blob(s) ({}) must be thawed before they can be read: run the same \
                 command with --thaw[=Expedited|Standard|Bulk] (and --wait to wait for it)",
                crate::human_bytes(*bytes)
            ),
            Error::ThawPending {
                blobs,
                bytes,
                requested,
            } => write!(
                f,
                "{blobs} blob(s) ({}) are being thawed ({requested} thaw request(s) sent now); \
                 run the same command again later (or with --wait) to go on",
                crate::human_bytes(*bytes)
            ),
            Error::Undeletable {
                what,
                damaged,
                key,
                why,
            } => write!(
                f,
                "{what} deletes nothing while a manifest cannot be read ({damaged} damaged): \
                 {key}: {why}; remove that snapshot with `vaultik snapshot remove ID` \
                 (its blobs are collected later) or repair the object"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::System { source, .. } => Some(source.as_ref()),
            Error::Database { source, .. } => Some(source),
            Error::Output(source) => Some(source),
            Error::Unreadable(e) => std::error::Error::source(e.as_ref()),
            _ => None,
        }
    }
}

/// A path for a one-line message: control characters (a newline in a file
/// name) are escaped.
pub fn shown(path: &Path) -> String {
    one_line(path.display().to_string())
}

/// `s` with control characters escaped (`\n`, `\r`, `\u{1b}`).
/// The syslog priority prefix of a log line at `level` (3 error, 4
/// warning, 6 info) when standard error goes to the systemd journal
/// (`JOURNAL_STREAM` set): `journalctl -p err` then finds failures. Empty
/// elsewhere.
pub fn priority(level: u8) -> String {
    static JOURNAL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some()) {
        format!("<{level}>")
    } else {
        String::new()
    }
}

pub fn one_line(s: String) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect()
    } else {
        s
    }
}

/// Attach a path and an operation to an `io::Error` where it happens.
pub trait IoContext<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Attach the database path to a SQLite error.
pub trait DbContext<T> {
    fn db(self, path: &Path) -> Result<T>;
}

impl<T> DbContext<T> for rusqlite::Result<T> {
    /// vaultik interrupts SQLite for one reason only: a database from the
    /// store needing more work than its size allows (`metadata`).
    fn db(self, path: &Path) -> Result<T> {
        self.map_err(|source| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::OperationInterrupted) => Error::Corrupt {
                what: path.display().to_string(),
                msg: OVER_BUDGET.to_string(),
            },
            _ => Error::Database {
                path: path.to_path_buf(),
                source,
            },
        })
    }
}

/// Why reading a database from the store was stopped.
pub const OVER_BUDGET: &str = "reading it needed more work than a snapshot database of its \
     size can (forged or damaged); stopped";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_cause_and_say_it_on_one_line() {
        let e = Error::Io {
            op: "open",
            path: PathBuf::from("/x\ny"),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        let s = e.to_string();
        assert_eq!(s, "cannot open /x\\ny: permission denied");
        let cause = std::error::Error::source(&e).expect("an io error keeps its cause");
        assert_eq!(cause.to_string(), "permission denied");
        let e = Error::Store {
            op: "GET",
            key: "k".into(),
            cause: StoreCause::Http {
                status: 403,
                code: "AccessDenied".into(),
                message: "no".into(),
            },
            attempts: None,
        };
        assert_eq!(
            e.to_string(),
            "store GET k: HTTP 403 AccessDenied: no; check the access key, the secret and the bucket's policy"
        );
        assert_eq!(
            Error::Partial {
                failed: 2,
                kind: Partial::Skipped
            }
            .exit_code(),
            1
        );
        assert_eq!(
            Error::Partial {
                failed: 2,
                kind: Partial::NotRestored
            }
            .exit_code(),
            2
        );
    }
}
