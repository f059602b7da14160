//! `find PATTERN`: which snapshots hold a path matching a glob, newest
//! first.
//!
//! Patterns mean what excludes mean (`walk::Excludes`): without a `/` the
//! pattern matches an entry's name at any depth (`nginx.conf`, `*.key`);
//! with one, the whole absolute path (`/etc/nginx/*.conf`,
//! `/home/**/id_rsa`), `*` never matching a `/`. A path pattern's literal
//! directory (`/etc/nginx` of `/etc/nginx/*.conf`) limits the scan to
//! that range; a name pattern reads every entry. Names that are not UTF-8
//! are matched as shown (lossily).

use glob::{MatchOptions, Pattern};

use super::{Entry, Next, Scope, Snapshot};
use crate::error::{Error, Result};
use crate::layout;
use crate::manifest::{self, Listed, Narrow};

const OPTS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// A compiled `find` pattern.
pub struct Matcher {
    pattern: Pattern,
    whole_path: bool,
    /// Where every path it can match lies.
    pub scope: Scope,
}

impl Matcher {
    pub fn new(pattern: &str) -> Result<Matcher> {
        let compiled = Pattern::new(pattern)
            .map_err(|e| Error::Usage(format!("find: pattern `{pattern}`: {e}")))?;
        let whole_path = pattern.contains('/');
        Ok(Matcher {
            pattern: compiled,
            whole_path,
            scope: if whole_path {
                literal_dir(pattern)
            } else {
                Scope::root()
            },
        })
    }

    pub fn matches(&self, path: &[u8]) -> bool {
        let subject = if self.whole_path {
            path
        } else {
            let name = path.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
            &path[name..]
        };
        self.pattern
            .matches_with(&String::from_utf8_lossy(subject), OPTS)
    }
}

/// The directory below which every path a whole-path pattern can match
/// lies: its literal part, up to the last `/` before the first wildcard.
fn literal_dir(pattern: &str) -> Scope {
    let literal = &pattern[..pattern.find(['*', '?', '[']).unwrap_or(pattern.len())];
    match literal.rfind('/') {
        Some(i) if i > 0 && pattern.starts_with('/') => Scope::of(&literal.as_bytes()[..i]),
        _ => Scope::root(),
    }
}

/// Call `emit` with every entry of `snap` that `m` matches, in path order.
pub fn search(
    snap: &Snapshot,
    m: &Matcher,
    emit: &mut dyn FnMut(Entry) -> Result<()>,
) -> Result<()> {
    snap.scan(&m.scope.lo, &m.scope.hi, false, &mut |e| {
        if m.matches(&e.path) {
            emit(e)?;
        }
        Ok(Next::Go)
    })
}

/// A time given by `--newer` or `--older`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum When {
    /// A day (its midnight) or a time of day, UTC.
    At(u64),
    /// That many seconds before now (`7d`, `12h`).
    Ago(u64),
}

impl When {
    /// `2026-11-20`, `2026-11-20T08:00`, `2026-11-20T08:00:30` (UTC), or a
    /// duration (`7d`, `36h`, `1w`: that long ago).
    pub fn parse(s: &str) -> Option<When> {
        if let Some(t) = crate::time::parse_day_or_time(s) {
            return Some(When::At(t));
        }
        crate::config::parse_duration(s).map(|d| When::Ago(d.as_secs()))
    }

    pub fn at(self, now: u64) -> u64 {
        match self {
            When::At(t) => t,
            When::Ago(secs) => now.saturating_sub(secs),
        }
    }
}

/// Which snapshots a search looks at.
pub struct Selection<'a> {
    /// `--snapshot ID` (`latest` allowed): only these.
    pub ids: &'a [String],
    pub narrow: &'a Narrow,
    /// Made at or after this time.
    pub newer: Option<u64>,
    /// Made before this time.
    pub older: Option<u64>,
}

/// The snapshots of `all` (a listing, oldest first) to search, newest
/// first: those of the host and name asked for, made in the time asked
/// for; only the ones named, when any are. A snapshot dated ahead of the
/// store is searched only when named.
pub fn select(all: &[Listed], sel: &Selection<'_>) -> Result<Vec<String>> {
    let named: Vec<String> = sel
        .ids
        .iter()
        .map(|id| manifest::pick(all, id, sel.narrow))
        .collect::<Result<_>>()?;
    let in_time = |id: &str| {
        let t = layout::parse_id(id).map_or(0, |p| p.time);
        sel.newer.is_none_or(|n| t >= n) && sel.older.is_none_or(|o| t < o)
    };
    Ok(all
        .iter()
        .rev()
        .filter(|l| {
            if named.is_empty() {
                !l.dated_ahead() && sel.narrow.admits(&l.id)
            } else {
                named.contains(&l.id)
            }
        })
        .filter(|l| in_time(&l.id))
        .map(|l| l.id.clone())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_mean_what_excludes_mean() {
        let m = Matcher::new("nginx.conf").unwrap();
        assert!(m.matches(b"/etc/nginx/nginx.conf"));
        assert!(m.matches(b"/nginx.conf"));
        assert!(!m.matches(b"/etc/nginx/nginx.conf.bak"));
        assert_eq!(m.scope, Scope::root());
        let m = Matcher::new("*.conf").unwrap();
        assert!(m.matches(b"/etc/a.conf") && m.matches(b"/a/b/c/.x.conf"));
        assert!(!m.matches(b"/etc/a.conf/x"));
        let m = Matcher::new("/etc/*.conf").unwrap();
        assert!(m.matches(b"/etc/a.conf"));
        assert!(!m.matches(b"/etc/nginx/a.conf"), "* does not match /");
        assert_eq!(m.scope, Scope::of(b"/etc"));
        let m = Matcher::new("/etc/**/*.conf").unwrap();
        assert!(m.matches(b"/etc/nginx/sites/a.conf"));
        assert_eq!(m.scope, Scope::of(b"/etc"));
        let m = Matcher::new("/etc/nginx/nginx.conf").unwrap();
        assert!(m.matches(b"/etc/nginx/nginx.conf"));
        assert_eq!(m.scope, Scope::of(b"/etc/nginx"));
        // Names that are not UTF-8 match as shown.
        assert!(
            Matcher::new("*.txt")
                .unwrap()
                .matches(b"/not-utf8-\xff\xfe.txt")
        );
        for (p, scope) in [
            ("/*.conf", "/"),
            ("etc/*.conf", "/"),
            ("/e?c/x", "/"),
            ("/a/b[c]/d", "/a"),
        ] {
            assert_eq!(
                Matcher::new(p).unwrap().scope,
                Scope::of(scope.as_bytes()),
                "{p}"
            );
        }
        let e = Matcher::new("[").err().unwrap().to_string();
        assert!(e.contains("pattern `[`"), "{e}");
    }

    #[test]
    fn times() {
        assert_eq!(When::parse("2026-11-20"), Some(When::At(1_795_132_800)));
        assert_eq!(
            When::parse("2026-11-20T08:00"),
            Some(When::At(1_795_161_600))
        );
        assert_eq!(When::parse("7d"), Some(When::Ago(7 * 86_400)));
        assert_eq!(When::parse("1h30m"), Some(When::Ago(5400)));
        assert_eq!(When::parse("yesterday"), None);
        assert_eq!(When::parse("2026-13-01"), None);
        assert_eq!(When::Ago(100).at(1000), 900);
        assert_eq!(When::Ago(2000).at(1000), 0);
    }

    #[test]
    fn which_snapshots_are_searched() {
        let l = |id: &str, stored| Listed {
            id: id.into(),
            stored,
            size: 1,
        };
        let t = 1_795_422_615; // 2026-11-23T083015Z
        let all = vec![
            l("web1_etc_2026-11-21T083015Z", t),
            l("web2_etc_2026-11-22T083015Z", t),
            l("web1_home_2026-11-23T083015Z", t),
            l("web1_etc_2099-01-01T000000Z", t),
        ];
        let none = Narrow::default();
        let web1 = Narrow {
            host: Some("web1".into()),
            name: None,
        };
        let sel = |ids: &[String], narrow, newer, older| {
            select(
                &all,
                &Selection {
                    ids,
                    narrow,
                    newer,
                    older,
                },
            )
        };
        assert_eq!(
            sel(&[], &none, None, None).unwrap(),
            [
                "web1_home_2026-11-23T083015Z",
                "web2_etc_2026-11-22T083015Z",
                "web1_etc_2026-11-21T083015Z"
            ],
            "newest first, never one dated ahead"
        );
        assert_eq!(
            sel(&[], &web1, None, None).unwrap(),
            [
                "web1_home_2026-11-23T083015Z",
                "web1_etc_2026-11-21T083015Z"
            ]
        );
        let day = |d: &str| crate::time::parse_day_or_time(d);
        assert_eq!(
            sel(&[], &none, day("2026-11-22"), day("2026-11-23")).unwrap(),
            ["web2_etc_2026-11-22T083015Z"]
        );
        let named = [
            "latest".to_string(),
            "web1_etc_2099-01-01T000000Z".to_string(),
        ];
        assert_eq!(
            sel(&named, &web1, None, None).unwrap(),
            [
                "web1_etc_2099-01-01T000000Z",
                "web1_home_2026-11-23T083015Z"
            ],
            "named: searched even when dated ahead; latest is of the host"
        );
        assert!(sel(&["nope".into()], &none, None, None).is_err());
    }
}
