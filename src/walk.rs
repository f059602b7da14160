//! The directory walk: pre-order (a directory before its contents), sorted
//! by name, never following symlinks, applying glob excludes.
//!
//! Exclude patterns without a `/` match an entry's name at any depth
//! (`*.log`); patterns with a `/` match the whole absolute path
//! (`/var/cache/*`). An excluded directory is not descended into.

use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use glob::{MatchOptions, Pattern};

use crate::error::{Error, Result};

pub struct Excludes {
    names: Vec<Pattern>,
    paths: Vec<Pattern>,
}

const OPTS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Excludes {
    pub fn new<'a>(patterns: impl Iterator<Item = &'a String>) -> Result<Excludes> {
        let mut ex = Excludes {
            names: Vec::new(),
            paths: Vec::new(),
        };
        for p in patterns {
            let pat = Pattern::new(p).map_err(|e| Error::Setup(format!("exclude `{p}`: {e}")))?;
            if p.contains('/') {
                ex.paths.push(pat);
            } else {
                ex.names.push(pat);
            }
        }
        Ok(ex)
    }

    pub fn matches(&self, path: &Path) -> bool {
        let name_hit = !self.names.is_empty()
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| self.names.iter().any(|p| p.matches_with(n, OPTS)));
        name_hit
            || !self.paths.is_empty()
                && path
                    .to_str()
                    .is_some_and(|s| self.paths.iter().any(|p| p.matches_with(s, OPTS)))
    }
}

/// Something the walk could not read; the caller decides whether it is fatal.
pub struct WalkError {
    pub path: PathBuf,
    pub err: std::io::Error,
}

/// Walk `root`, calling `visit` for every entry not excluded (root
/// included; the path is handed over, to keep without a copy) and `failed`
/// for entries that cannot be read. Either callback may stop the walk by
/// returning an error.
pub fn walk(
    root: &Path,
    excludes: &Excludes,
    visit: &mut dyn FnMut(PathBuf, &Metadata) -> Result<()>,
    failed: &mut dyn FnMut(WalkError) -> Result<()>,
) -> Result<()> {
    // Entries are stat'ed when their directory is listed, relative to the
    // open directory (no path lookup per entry); a stat that failed there,
    // or one skipped in a very large directory to bound memory, is redone
    // by path when the entry is visited.
    let mut stack: Vec<(PathBuf, Option<Metadata>)> = vec![(root.to_path_buf(), None)];
    while let Some((path, pre)) = stack.pop() {
        if excludes.matches(&path) && path != root {
            continue;
        }
        let meta = match pre.map_or_else(|| fs::symlink_metadata(&path), Ok) {
            Ok(m) => m,
            // Listed by its directory, deleted since: nothing to back up.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && path != root => continue,
            Err(err) => {
                failed(WalkError { path, err })?;
                continue;
            }
        };
        if !meta.is_dir() {
            visit(path, &meta)?;
        } else {
            visit(path.clone(), &meta)?;
            let rd = match fs::read_dir(&path) {
                Ok(rd) => rd,
                // Deleted since its stat: recorded as it was, empty.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && path != root => continue,
                Err(err) => {
                    failed(WalkError { path, err })?;
                    continue;
                }
            };
            let mut children = Vec::new();
            for entry in rd {
                match entry {
                    Ok(e) => {
                        let m = if children.len() < PRESTAT_MAX {
                            e.metadata().ok()
                        } else {
                            None
                        };
                        children.push((e.path(), m));
                    }
                    Err(err) => {
                        failed(WalkError {
                            path: path.clone(),
                            err,
                        })?;
                    }
                }
            }
            // Sorted by raw bytes, pushed in reverse so they pop in order (names
            // are unique: an unstable sort, which moves these big items less).
            children.sort_unstable_by(|a, b| {
                b.0.as_os_str().as_bytes().cmp(a.0.as_os_str().as_bytes())
            });
            stack.extend(children);
        }
    }
    Ok(())
}

/// Entries of one directory stat'ed while it is listed (~200 bytes each
/// held until visited); the rest of a larger directory is stat'ed by path.
const PRESTAT_MAX: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_by_name_and_path() {
        let pats = ["*.log".to_string(), "/var/cache/*".to_string()];
        let ex = Excludes::new(pats.iter()).unwrap();
        assert!(ex.matches(Path::new("/a/b/x.log")));
        assert!(!ex.matches(Path::new("/a/b/x.log.gz")));
        assert!(ex.matches(Path::new("/var/cache/apt")));
        assert!(!ex.matches(Path::new("/var/cache")));
        assert!(!ex.matches(Path::new("/var/cache/apt/archives")));
    }
}
