//! `ls SNAPSHOT [PATH...]`: the entries below a path, in path order.
//!
//! Without `--recursive`: the entry itself for anything but a directory;
//! for a directory, its direct children. A child with entries below it
//! but no entry of its own (the parents of a backed-up path, `/home` of
//! `/home/alice`) is shown as an implied directory. Children are found
//! by one scan of the directory's range that jumps over each child's own
//! subtree (`Next::SeekTo`), so a directory of a million files streams,
//! and `/` of a snapshot of a million entries costs a few lookups.
//!
//! With `--recursive`: the path's entry, then every entry below it.

use super::{Entry, Next, Scope, Snapshot, shown};
use crate::error::{Error, Result};
use crate::snapshot::Kind;

/// What a listing shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Entry(Entry),
    /// A directory the snapshot only implies.
    Implied(Vec<u8>),
}

/// Each of `scopes` is in the snapshot: an entry, or entries below it
/// (`/` always is, even in an empty snapshot).
pub fn check(snap: &Snapshot, scopes: &[Scope]) -> Result<()> {
    for s in scopes {
        if !s.is_root() && snap.entry(&s.path, false)?.is_none() && !snap.any_in(&s.lo, &s.hi)? {
            let typed = shown(&s.path);
            let typed = match s.relative {
                true => &typed[1..],
                false => &typed[..],
            };
            return Err(Error::not_in_snapshot(typed, &snap.id));
        }
    }
    Ok(())
}

/// Call `emit` with what `ls` shows of `scope`, in path order.
pub fn list(
    snap: &Snapshot,
    scope: &Scope,
    recursive: bool,
    emit: &mut dyn FnMut(Item) -> Result<()>,
) -> Result<()> {
    // The root's own entry (a backup of `/`) is the first of its range.
    let top = if scope.is_root() {
        None
    } else {
        snap.entry(&scope.path, false)?
    };
    if recursive {
        if let Some(t) = top {
            emit(Item::Entry(t))?;
        }
        return snap.scan(&scope.lo, &scope.hi, false, &mut |e| {
            emit(Item::Entry(e))?;
            Ok(Next::Go)
        });
    }
    match top {
        Some(t) if t.kind != Some(Kind::Dir) => emit(Item::Entry(t)),
        _ => children(snap, scope, emit),
    }
}

/// The direct children of directory `scope`.
fn children(
    snap: &Snapshot,
    scope: &Scope,
    emit: &mut dyn FnMut(Item) -> Result<()>,
) -> Result<()> {
    snap.scan(&scope.lo, &scope.hi, false, &mut |e| {
        let rest = scope.rest(&e.path);
        if rest.is_empty() {
            // `/` itself.
            return Ok(Next::Go);
        }
        let Some(slash) = rest.iter().position(|b| *b == b'/') else {
            emit(Item::Entry(e))?;
            return Ok(Next::Go);
        };
        // Below a child: the child itself, when recorded, came first
        // (a path sorts before everything below it), else it is implied.
        let mut child = scope.lo.clone();
        child.extend_from_slice(&rest[..slash]);
        if snap.entry(&child, false)?.is_none() {
            emit(Item::Implied(child.clone()))?;
        }
        // Past everything below the child: `child/...` < `child0`.
        child.push(b'0');
        Ok(Next::SeekTo(child))
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::db;
    use super::*;

    fn listed(s: &Snapshot, path: &[u8], recursive: bool) -> Vec<String> {
        let mut out = Vec::new();
        list(s, &Scope::of(path), recursive, &mut |i| {
            out.push(match i {
                Item::Entry(e) => String::from_utf8_lossy(&e.path).into_owned(),
                Item::Implied(p) => format!("({})", String::from_utf8_lossy(&p)),
            });
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn children_subtrees_and_implied_parents() {
        let conn = db(
            crate::snapshot::META_SCHEMA,
            &[
                b"/home/alice/a.txt",
                b"/home/alice/sub/deep/x",
                b"/home/alice/sub/y",
                b"/home/alice/sub.txt",
                b"/home/alice-old/z",
                b"/etc/hosts",
            ],
        );
        for dir in [
            &b"/home/alice"[..],
            b"/home/alice/sub",
            b"/home/alice/sub/deep",
        ] {
            conn.execute(
                "INSERT INTO entries(path, kind, mode, uid, gid, size, mtime_ns)
                 VALUES (?1, 1, 493, 0, 0, 0, 0)",
                [dir],
            )
            .unwrap();
        }
        let s = Snapshot::from_conn("t", conn).unwrap();
        assert_eq!(listed(&s, b"/", false), ["(/etc)", "(/home)"]);
        assert_eq!(
            listed(&s, b"/home", false),
            ["/home/alice", "(/home/alice-old)"]
        );
        assert_eq!(
            listed(&s, b"/home/alice/", false),
            [
                "/home/alice/a.txt",
                "/home/alice/sub",
                "/home/alice/sub.txt"
            ]
        );
        assert_eq!(listed(&s, b"/etc/hosts", false), ["/etc/hosts"]);
        assert_eq!(
            listed(&s, b"home/alice", true),
            [
                "/home/alice",
                "/home/alice/a.txt",
                "/home/alice/sub",
                "/home/alice/sub.txt",
                "/home/alice/sub/deep",
                "/home/alice/sub/deep/x",
                "/home/alice/sub/y"
            ]
        );
        assert_eq!(listed(&s, b"/", true).len(), 9);
        // Not there: an error naming it; there, implied or recorded: fine.
        let e = check(&s, &[Scope::of(b"/home/bob")]).unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
        assert!(
            e.to_string().contains("/home/bob is not in snapshot t"),
            "{e}"
        );
        check(
            &s,
            &[Scope::of(b"/home"), Scope::of(b"/etc/hosts"), Scope::root()],
        )
        .unwrap();
        // A path that merely starts like another is not below it.
        assert!(check(&s, &[Scope::of(b"/home/ali")]).is_err());
    }
}
