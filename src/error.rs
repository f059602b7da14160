//! The one error type of vaultik: every failure carries the path, key or
//! operation it happened on, and keeps its cause for the `caused by:` lines.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    /// Bad command line: exit code 2, message names the flag or argument.
    Usage(String),
    /// Bad configuration file, with the line it was found on.
    Config {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// Configuration that is missing or inconsistent as a whole.
    Setup(String),
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
        msg: String,
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
    /// Stopped because another part of the same run failed, or on request.
    Cancelled,
    /// The last snapshot kept locally names chunks the store no longer has.
    StaleBase,
    /// Blobs a new snapshot needs were deleted while it was made.
    BlobsVanished { id: String, missing: usize },
    /// A check found problems (verify).
    Problems { count: usize, what: String },
    /// The run finished but some files were skipped or failed (exit code 1 or 2).
    Partial { failed: usize, what: &'static str },
    /// A listing finished without some damaged objects, which were named
    /// in warnings (exit code 1).
    Damaged { count: usize, what: &'static str },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Partial {
                what: "skipped", ..
            } => 1,
            Error::Damaged { .. } => 1,
            _ => 2,
        }
    }

    pub fn corrupt(what: impl Into<String>, msg: impl fmt::Display) -> Error {
        Error::Corrupt {
            what: what.into(),
            msg: msg.to_string(),
        }
    }

    pub fn store(op: &'static str, key: &str, msg: impl fmt::Display) -> Error {
        Error::Store {
            op,
            key: key.to_string(),
            msg: msg.to_string(),
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
            Error::Config { path, line, msg } => write!(f, "{}:{line}: {msg}", path.display()),
            Error::Setup(msg) => f.write_str(msg),
            Error::Io { op, path, source } => {
                write!(f, "cannot {op} {}: {source}", shown(path))
            }
            Error::Store { op, key, msg } => write!(f, "store {op} {key}: {msg}"),
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
            Error::Cancelled => f.write_str("cancelled"),
            Error::StaleBase => f.write_str("the last snapshot kept locally is out of date"),
            Error::BlobsVanished { id, missing } => write!(
                f,
                "{missing} blob(s) that snapshot {id} needs were deleted from the store while it was made; run it again"
            ),
            Error::Problems { count, what } => write!(f, "{what}: {count} problem(s) found"),
            Error::Partial { failed, what } => write!(f, "{failed} file(s) {what}"),
            Error::Damaged { count, what } => write!(
                f,
                "{what}: {count} damaged object(s) left out (named above; run `vaultik store info`)"
            ),
        }
    }
}

// The io and sqlite causes are printed as part of the message, so the default
// `source()` of None keeps `caused by:` lines from repeating them.
impl std::error::Error for Error {}

/// A path for a one-line message: control characters (a newline in a file
/// name) are escaped.
pub fn shown(path: &Path) -> String {
    one_line(path.display().to_string())
}

/// `s` with control characters escaped (`\n`, `\r`, `\u{1b}`).
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
    fn db(self, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Database {
            path: path.to_path_buf(),
            source,
        })
    }
}
