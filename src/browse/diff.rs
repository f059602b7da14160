//! `diff A B [PATH]`: what changed from snapshot A to snapshot B, by a
//! merge of both snapshots' entries in path order (two streams, memory
//! flat).
//!
//! An entry only in A is removed, only in B added. One in both is changed
//! when its type, content (its chunk list), size, mode, owner, symlink
//! target, device number, extended attributes, ACL or inode flags differ,
//! or, for anything but a directory, its mtime. A directory's mtime follows its entries (adding or removing one
//! changes it), which the added and removed lines already show: a
//! directory whose mtime alone changed is counted unchanged.

use std::cmp::Ordering;

use serde_json::{Value, json};

use super::{Entry, Scope, Snapshot, cursor, entry_json, kind_name, shown};
use crate::error::{Error, Result};
use crate::human_bytes;
use crate::snapshot::Kind;

/// One difference.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Added(Entry),
    Removed(Entry),
    Changed {
        old: Box<Entry>,
        new: Box<Entry>,
        /// `type`, `content`, `size`, `mode`, `owner`, `target`, `device`,
        /// `xattrs`, `acl`, `flags`, `mtime`: what differs.
        what: Vec<&'static str>,
    },
}

/// The counts of a diff.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub added: u64,
    /// Bytes of the regular files added.
    pub added_bytes: u64,
    pub removed: u64,
    pub removed_bytes: u64,
    pub changed: u64,
    pub unchanged: u64,
}

/// Compare `a` and `b` at `scope` and below, calling `emit` with each
/// difference in path order. Neither snapshot holding `scope` (an entry,
/// or entries below it) is an error naming it.
pub fn diff(
    a: &Snapshot,
    b: &Snapshot,
    scope: &Scope,
    emit: &mut dyn FnMut(Change) -> Result<()>,
) -> Result<Summary> {
    let mut sum = Summary::default();
    if !scope.is_root() {
        let (old, new) = (a.entry(&scope.path, true)?, b.entry(&scope.path, true)?);
        if old.is_none()
            && new.is_none()
            && !a.any_in(&scope.lo, &scope.hi)?
            && !b.any_in(&scope.lo, &scope.hi)?
        {
            return Err(Error::Usage(format!(
                "path {} is in neither {} nor {}",
                shown(&scope.path),
                a.id,
                b.id
            )));
        }
        sum.step(old, new, emit)?;
    }
    let (mut st_a, mut st_b) = (a.range_statement(true)?, b.range_statement(true)?);
    let mut ca = cursor(&mut st_a, &scope.lo, &scope.hi, true)?;
    let mut cb = cursor(&mut st_b, &scope.lo, &scope.hi, true)?;
    let (mut x, mut y) = (ca.next()?, cb.next()?);
    loop {
        let order = match (&x, &y) {
            (None, None) => return Ok(sum),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(p), Some(q)) => p.path.cmp(&q.path),
        };
        match order {
            Ordering::Less => {
                sum.step(x.take(), None, emit)?;
                x = ca.next()?;
            }
            Ordering::Greater => {
                sum.step(None, y.take(), emit)?;
                y = cb.next()?;
            }
            Ordering::Equal => {
                sum.step(x.take(), y.take(), emit)?;
                x = ca.next()?;
                y = cb.next()?;
            }
        }
    }
}

impl Summary {
    /// Count and report the entry at one path in A (`old`) and B (`new`).
    fn step(
        &mut self,
        old: Option<Entry>,
        new: Option<Entry>,
        emit: &mut dyn FnMut(Change) -> Result<()>,
    ) -> Result<()> {
        match (old, new) {
            (None, None) => Ok(()),
            (Some(o), None) => {
                self.removed += 1;
                self.removed_bytes = self.removed_bytes.saturating_add(o.file_bytes());
                emit(Change::Removed(o))
            }
            (None, Some(n)) => {
                self.added += 1;
                self.added_bytes = self.added_bytes.saturating_add(n.file_bytes());
                emit(Change::Added(n))
            }
            (Some(old), Some(new)) => {
                let what = changes(&old, &new);
                if what.is_empty() {
                    self.unchanged += 1;
                    Ok(())
                } else {
                    self.changed += 1;
                    emit(Change::Changed {
                        old: Box::new(old),
                        new: Box::new(new),
                        what,
                    })
                }
            }
        }
    }

    /// `3 added (1.2 KiB), 1 removed (13 B), 2 changed, 40 unchanged`
    pub fn line(&self) -> String {
        format!(
            "{} added ({}), {} removed ({}), {} changed, {} unchanged",
            self.added,
            human_bytes(self.added_bytes),
            self.removed,
            human_bytes(self.removed_bytes),
            self.changed,
            self.unchanged
        )
    }

    pub fn to_json(&self, a: &str, b: &str) -> Value {
        json!({"summary": {
            "a": a, "b": b,
            "added": self.added, "added_bytes": self.added_bytes,
            "removed": self.removed, "removed_bytes": self.removed_bytes,
            "changed": self.changed, "unchanged": self.unchanged,
        }})
    }
}

/// What differs between two entries at one path (nothing but the type
/// when that differs).
pub fn changes(o: &Entry, n: &Entry) -> Vec<&'static str> {
    if o.kind_raw != n.kind_raw {
        return vec!["type"];
    }
    let device = matches!(o.kind, Some(Kind::CharDev | Kind::BlockDev));
    [
        ("content", o.content != n.content),
        ("size", o.size != n.size),
        ("mode", o.mode != n.mode),
        ("owner", (o.uid, o.gid) != (n.uid, n.gid)),
        ("target", o.target != n.target),
        ("device", device && o.rdev != n.rdev),
        ("xattrs", !xattrs_changed(o, n, false).is_empty()),
        ("acl", !xattrs_changed(o, n, true).is_empty()),
        ("flags", o.attrs.flags != n.attrs.flags),
        (
            "mtime",
            o.kind != Some(Kind::Dir) && o.mtime_ns != n.mtime_ns,
        ),
    ]
    .into_iter()
    .filter_map(|(what, differs)| differs.then_some(what))
    .collect()
}

/// The names of the extended attributes that differ between `o` and `n`
/// (added, removed or with another value): its ACLs (`acl`), or the
/// others.
fn xattrs_changed(o: &Entry, n: &Entry, acl: bool) -> Vec<String> {
    use crate::xattrs::{ACL_ACCESS, ACL_DEFAULT, decode};
    // (Both were checked when read.)
    let (a, b) = (
        decode(&o.attrs.xattrs).unwrap_or_default(),
        decode(&n.attrs.xattrs).unwrap_or_default(),
    );
    let is_acl = |name: &[u8]| name == ACL_ACCESS || name == ACL_DEFAULT;
    let mut names: Vec<&[u8]> = a.iter().chain(&b).map(|(n, _)| *n).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|name| is_acl(name) == acl)
        .filter(|name| {
            let value =
                |l: &[(&[u8], &[u8])]| l.iter().find(|(n, _)| n == name).map(|(_, v)| v.to_vec());
            value(&a) != value(&b)
        })
        .map(|name| match name {
            n if n == ACL_ACCESS => "access".to_string(),
            n if n == ACL_DEFAULT => "default".to_string(),
            n => shown(n),
        })
        .collect()
}

/// Inode flags as chattr letters, `-` for none.
fn flags_text(flags: u32) -> String {
    if flags == 0 {
        "-".into()
    } else {
        format!("+{}", crate::xattrs::flag_letters(flags))
    }
}

/// What an added or removed entry is: `file, 1.2 KiB`, `dir`,
/// `symlink -> TARGET`.
fn what_it_is(e: &Entry) -> String {
    match (e.kind, &e.target) {
        (Some(Kind::File), _) => format!("file, {}", human_bytes(e.file_bytes())),
        (Some(Kind::Symlink), Some(t)) => format!("symlink -> {}", shown(t)),
        (k, _) => kind_name(k).to_string(),
    }
}

/// One difference of `what` between `o` and `n`, in words.
fn detail(what: &str, o: &Entry, n: &Entry) -> String {
    let opt = |t: &Option<Vec<u8>>| t.as_deref().map_or_else(|| "-".into(), shown);
    match what {
        "type" => format!("type {} -> {}", kind_name(o.kind), kind_name(n.kind)),
        "size" => format!(
            "size {} -> {}",
            human_bytes(o.file_bytes()),
            human_bytes(n.file_bytes())
        ),
        "mode" => format!("mode {:04o} -> {:04o}", o.mode, n.mode),
        "owner" => format!("owner {}/{} -> {}/{}", o.uid, o.gid, n.uid, n.gid),
        "target" => format!("target {} -> {}", opt(&o.target), opt(&n.target)),
        "device" => format!(
            "device {}, {} -> {}, {}",
            rustix::fs::major(o.rdev),
            rustix::fs::minor(o.rdev),
            rustix::fs::major(n.rdev),
            rustix::fs::minor(n.rdev)
        ),
        "xattrs" => format!("xattrs {}", xattrs_changed(o, n, false).join(", ")),
        "acl" => format!("acl {}", xattrs_changed(o, n, true).join(", ")),
        "flags" => format!(
            "flags {} -> {}",
            flags_text(o.attrs.flags),
            flags_text(n.attrs.flags)
        ),
        "mtime" => {
            // To the second, or the nanosecond when that is what differs.
            let precise = o.mtime() == n.mtime();
            format!(
                "mtime {} -> {}",
                crate::time::nanos(o.mtime_ns, precise),
                crate::time::nanos(n.mtime_ns, precise)
            )
        }
        other => other.to_string(),
    }
}

/// `+ /etc/new.conf  (file, 120 B)`, `- /old  (dir)`,
/// `M /etc/hosts  (content, size 13 B -> 20 B, mtime ...)`.
pub fn change_line(c: &Change) -> String {
    match c {
        Change::Added(e) => format!("+ {}  ({})", shown(&e.path), what_it_is(e)),
        Change::Removed(e) => format!("- {}  ({})", shown(&e.path), what_it_is(e)),
        Change::Changed { old, new, what } => {
            let details: Vec<String> = what.iter().map(|w| detail(w, old, new)).collect();
            format!("M {}  ({})", shown(&new.path), details.join(", "))
        }
    }
}

/// `{"change": "added"|"removed", "path", "entry"}` or
/// `{"change": "changed", "path", "what", "old", "new"}`.
pub fn change_json(c: &Change) -> Value {
    let (change, e) = match c {
        Change::Added(e) => ("added", e),
        Change::Removed(e) => ("removed", e),
        Change::Changed { old, new, what } => {
            let mut v = json!({
                "change": "changed", "what": what,
                "old": entry_json(old), "new": entry_json(new),
            });
            v["path"] = v["new"]["path"].clone();
            return v;
        }
    };
    let entry = entry_json(e);
    json!({"change": change, "path": entry["path"].clone(), "entry": entry})
}

#[cfg(test)]
mod tests {
    use super::super::tests::db;
    use super::*;

    fn snap(rows: &[(&[u8], i64, i64, &[u8])]) -> Snapshot {
        let conn = db(crate::snapshot::META_SCHEMA, &[]);
        for (path, kind, mode, chunks) in rows {
            conn.execute(
                "INSERT INTO entries(path, kind, mode, uid, gid, size, mtime_ns, chunks, target)
                 VALUES (?1, ?2, ?3, 0, 0, length(?4), 5, ?4, CASE WHEN ?2 = 3 THEN x'74' END)",
                rusqlite::params![path, kind, mode, chunks],
            )
            .unwrap();
        }
        Snapshot::from_conn("s", conn).unwrap()
    }

    fn run(a: &Snapshot, b: &Snapshot, path: &[u8]) -> (Vec<String>, Summary) {
        let mut lines = Vec::new();
        let sum = diff(a, b, &Scope::of(path), &mut |c| {
            lines.push(change_line(&c));
            Ok(())
        })
        .unwrap();
        (lines, sum)
    }

    #[test]
    fn added_removed_and_changed_in_path_order() {
        let a = snap(&[
            (b"/d", 1, 0o755, b""),
            (b"/d/same", 2, 0o644, b"aaaa"),
            (b"/d/gone", 2, 0o644, b"bb"),
            (b"/d/edit", 2, 0o644, b"cc"),
            (b"/d/chmod", 2, 0o644, b""),
            (b"/d/kind", 2, 0o644, b""),
        ]);
        let b = snap(&[
            (b"/d", 1, 0o755, b""),
            (b"/d/same", 2, 0o644, b"aaaa"),
            (b"/d/edit", 2, 0o644, b"ccc"),
            (b"/d/chmod", 2, 0o600, b""),
            (b"/d/kind", 3, 0o777, b""),
            (b"/d/new", 2, 0o644, b"n"),
        ]);
        let (lines, sum) = run(&a, &b, b"/");
        assert_eq!(
            lines,
            [
                "M /d/chmod  (mode 0644 -> 0600)",
                "M /d/edit  (content, size 2 B -> 3 B)",
                "- /d/gone  (file, 2 B)",
                "M /d/kind  (type file -> symlink)",
                "+ /d/new  (file, 1 B)",
            ]
        );
        assert_eq!(
            sum,
            Summary {
                added: 1,
                added_bytes: 1,
                removed: 1,
                removed_bytes: 2,
                changed: 3,
                unchanged: 2,
            }
        );
        assert_eq!(
            sum.line(),
            "1 added (1 B), 1 removed (2 B), 3 changed, 2 unchanged"
        );
        // Under a path; its own entry compared too.
        let (lines, _) = run(&a, &b, b"/d/edit");
        assert_eq!(lines, ["M /d/edit  (content, size 2 B -> 3 B)"]);
        let (lines, sum) = run(&b, &a, b"/d/new");
        assert_eq!(lines, ["- /d/new  (file, 1 B)"]);
        assert_eq!(sum.removed, 1);
        let e = diff(&a, &b, &Scope::of(b"/nowhere"), &mut |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nowhere is in neither"), "{e}");
    }

    #[test]
    fn mtimes_of_directories_follow_their_entries() {
        let mut o = Entry {
            path: b"/x".to_vec(),
            kind: Some(Kind::Dir),
            kind_raw: 1,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_ns: 1,
            rdev: 0,
            target: None,
            link: None,
            content: None,
            attrs: Default::default(),
        };
        let mut n = Entry {
            mtime_ns: 3_600_000_000_000,
            ..o.clone()
        };
        assert!(changes(&o, &n).is_empty());
        o.kind = Some(Kind::File);
        n.kind = Some(Kind::File);
        assert_eq!(changes(&o, &n), ["mtime"]);
        n.uid = 5;
        assert_eq!(changes(&o, &n), ["owner", "mtime"]);
        let c = Change::Changed {
            old: Box::new(o.clone()),
            new: Box::new(n.clone()),
            what: changes(&o, &n),
        };
        assert_eq!(
            change_line(&c),
            "M /x  (owner 0/0 -> 5/0, mtime 1970-01-01 00:00:00 -> 1970-01-01 01:00:00)"
        );
        let v = change_json(&c);
        assert_eq!(v["change"], "changed");
        assert_eq!(v["path"], "/x");
        assert_eq!(v["what"], json!(["owner", "mtime"]));
        assert_eq!(v["new"]["uid"], 5);
        // Extended attributes, ACLs and flags are metadata changes.
        let pair = |n: &str, v: &[u8]| (n.as_bytes().to_vec(), v.to_vec());
        let mut m = o.clone();
        m.attrs.xattrs = crate::xattrs::encode(vec![
            pair("user.a", b"1"),
            pair("system.posix_acl_default", b"x"),
        ])
        .unwrap();
        m.attrs.flags = crate::xattrs::IMMUTABLE;
        assert_eq!(changes(&o, &m), ["xattrs", "acl", "flags"]);
        let c = Change::Changed {
            old: Box::new(o.clone()),
            new: Box::new(m.clone()),
            what: changes(&o, &m),
        };
        assert_eq!(
            change_line(&c),
            "M /x  (xattrs user.a, acl default, flags - -> +i)"
        );
        let mut m2 = m.clone();
        m2.attrs.xattrs = crate::xattrs::encode(vec![
            pair("user.a", b"2"),
            pair("system.posix_acl_default", b"x"),
        ])
        .unwrap();
        assert_eq!(changes(&m, &m2), ["xattrs"]);
        let v = change_json(&Change::Added(n));
        assert_eq!(
            (v["change"].clone(), v["path"].clone()),
            ("added".into(), "/x".into())
        );
    }
}
