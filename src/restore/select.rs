//! Which entries a restore keeps (`--include GLOB`, `--exclude GLOB`),
//! with the backup's glob syntax and matcher (`walk::Excludes`): a pattern
//! without `/` matches an entry's name at any depth, one with `/` the
//! whole absolute path; names that are not UTF-8 match no pattern, as in
//! the backup.
//!
//! An entry is included when it, or a directory above it, matches an
//! include pattern (every entry, when none is given); it is excluded when
//! it, or a directory above it, matches an exclude pattern. Exclusion wins.
//! The directories above an entry kept are made as parents by the plan,
//! as for PATH arguments.
//!
//! The plan reads entries in walk order (a directory, then what is in
//! it), so the state of the directories on the way to the last entry is
//! kept: an entry costs a match of its own name and path, not of every
//! ancestor's.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::walk::Excludes;

pub struct Select {
    include: Option<Excludes>,
    exclude: Option<Excludes>,
    /// The directories on the way to the last entry asked about: path,
    /// included, excluded.
    stack: Vec<(Vec<u8>, bool, bool)>,
}

impl Select {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Select> {
        let compile = |flag: &str, pats: &[String]| -> Result<Option<Excludes>> {
            if pats.is_empty() {
                return Ok(None);
            }
            Excludes::new(pats.iter())
                .map(Some)
                .map_err(|e| Error::Usage(format!("restore {flag}: {e}")))
        };
        Ok(Select {
            include: compile("--include", include)?,
            exclude: compile("--exclude", exclude)?,
            stack: Vec::new(),
        })
    }

    /// Whether nothing is left out.
    pub fn is_all(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }

    fn hits(set: &Option<Excludes>, path: &[u8]) -> bool {
        set.as_ref()
            .is_some_and(|s| s.matches(Path::new(OsStr::from_bytes(path))))
    }

    /// Whether the entry at `path` (absolute, as in a snapshot) is
    /// restored; `dir` when it is a directory (its state is kept for the
    /// entries below it).
    pub fn wants(&mut self, path: &[u8], dir: bool) -> bool {
        if self.is_all() {
            return true;
        }
        // The nearest directory kept that is above `path`.
        while let Some((p, _, _)) = self.stack.last() {
            if is_below(path, p) {
                break;
            }
            self.stack.pop();
        }
        let (mut inc, mut exc, from) = match self.stack.last() {
            Some((p, i, x)) => (*i, *x, p.len()),
            None => (self.include.is_none(), false, 0),
        };
        // Every directory between it and `path`, then `path` itself (in
        // walk order that is `path` alone).
        let mut at = from.max(1) + usize::from(from > 1);
        while at <= path.len() {
            let end = path[at..]
                .iter()
                .position(|b| *b == b'/')
                .map_or(path.len(), |i| at + i);
            let prefix = &path[..end];
            if !prefix.is_empty() && prefix != b"/" {
                inc = inc || Self::hits(&self.include, prefix);
                exc = exc || Self::hits(&self.exclude, prefix);
            }
            at = end + 1;
        }
        if dir {
            self.stack.push((path.to_vec(), inc, exc));
        }
        inc && !exc
    }

    /// Whether an entry at `path` that is not in the snapshot, in a
    /// directory the restore restores, is left alone by `--delete`: it
    /// matches an exclude pattern. (Its directory is included, so it is.)
    pub fn protects(&self, path: &[u8]) -> bool {
        Self::hits(&self.exclude, path)
    }
}

/// Whether `path` is strictly below directory `dir`.
fn is_below(path: &[u8], dir: &[u8]) -> bool {
    dir == b"/" && path.len() > 1
        || path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(inc: &[&str], exc: &[&str]) -> Select {
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        Select::new(&s(inc), &s(exc)).unwrap()
    }

    /// The entries of a small tree, in walk order, that `s` keeps.
    fn kept(mut s: Select) -> Vec<&'static str> {
        let tree: &[(&str, bool)] = &[
            ("/", true),
            ("/etc", true),
            ("/etc/hosts", false),
            ("/etc/nginx", true),
            ("/etc/nginx/nginx.conf", false),
            ("/etc/nginx/sites", true),
            ("/etc/nginx/sites/a.conf", false),
            ("/etc/nginx/sites/b.log", false),
            ("/var", true),
            ("/var/log", true),
            ("/var/log/x.log", false),
            ("/var/log/keep.txt", false),
        ];
        tree.iter()
            .filter(|(p, d)| s.wants(p.as_bytes(), *d))
            .map(|(p, _)| *p)
            .collect()
    }

    #[test]
    fn everything_without_patterns() {
        assert_eq!(kept(sel(&[], &[])).len(), 12);
    }

    #[test]
    fn an_included_directory_brings_what_is_in_it() {
        assert_eq!(
            kept(sel(&["/etc/nginx"], &[])),
            [
                "/etc/nginx",
                "/etc/nginx/nginx.conf",
                "/etc/nginx/sites",
                "/etc/nginx/sites/a.conf",
                "/etc/nginx/sites/b.log",
            ]
        );
        // A name pattern, at any depth; the directories above are not
        // entries of their own (the plan makes them as parents).
        assert_eq!(
            kept(sel(&["*.conf"], &[])),
            ["/etc/nginx/nginx.conf", "/etc/nginx/sites/a.conf"]
        );
    }

    #[test]
    fn an_excluded_directory_leaves_out_what_is_in_it() {
        assert_eq!(
            kept(sel(&[], &["/etc/nginx/sites", "*.log"])),
            [
                "/",
                "/etc",
                "/etc/hosts",
                "/etc/nginx",
                "/etc/nginx/nginx.conf",
                "/var",
                "/var/log",
                "/var/log/keep.txt",
            ]
        );
        // Exclusion wins over inclusion.
        assert_eq!(
            kept(sel(&["/etc/nginx"], &["sites"])),
            ["/etc/nginx", "/etc/nginx/nginx.conf"]
        );
        // `*` never matches a `/`.
        assert_eq!(
            kept(sel(&[], &["/etc/*"])),
            [
                "/",
                "/etc",
                "/var",
                "/var/log",
                "/var/log/x.log",
                "/var/log/keep.txt"
            ]
        );
    }

    #[test]
    fn out_of_order_entries_are_matched_whole() {
        // Forged or implied parents: no directory on the stack, so every
        // ancestor is matched.
        let mut s = sel(&[], &["/a/b"]);
        assert!(!s.wants(b"/a/b/c/d", false));
        assert!(s.wants(b"/a/x", false));
        let mut s = sel(&["b"], &[]);
        assert!(s.wants(b"/a/b/c/d", false));
        assert!(!s.wants(b"/a/c", false));
    }

    #[test]
    fn delete_protects_excluded_names_only() {
        let s = sel(&["/etc"], &["*.local", "/etc/keep"]);
        assert!(s.protects(b"/etc/x.local"));
        assert!(s.protects(b"/etc/keep"));
        assert!(!s.protects(b"/etc/other"));
    }

    #[test]
    fn a_bad_pattern_names_its_flag() {
        let e = Select::new(&["[".into()], &[]).err().unwrap().to_string();
        assert!(e.contains("--include"), "{e}");
    }
}
