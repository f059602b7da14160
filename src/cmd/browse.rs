//! `ls`, `find` and `diff`: a snapshot's entries without restoring them
//! (the reading is `browse/`'s). They need the private key. The listing
//! goes to standard output, one line (or JSON object) per entry as it is
//! read; the request counts to standard error, so the output can be piped.

use std::io::{BufWriter, Write};

use super::settings::{self, Settings};
use super::{Expect, Requests, open_existing_store, output, warn};
use crate::browse::diff::{self, Change};
use crate::browse::find::{self, Matcher, Selection};
use crate::browse::ls::{self, Item};
use crate::browse::{
    Scope, Snapshot, entry_json, entry_line, implied_json, implied_line, json_line,
};
use crate::cli::{DiffArgs, FindArgs, Global, LsArgs};
use crate::error::{Error, Result};
use crate::manifest;
use crate::store::Store;

/// Standard output, buffered (a listing can be millions of lines).
fn stdout() -> BufWriter<std::io::StdoutLock<'static>> {
    BufWriter::with_capacity(64 << 10, std::io::stdout().lock())
}

/// The request counts, on standard error (standard output is the listing).
fn requests(store: &dyn Store) {
    let _ = writeln!(std::io::stderr(), "{}", super::requests_line(store));
}

pub fn ls(g: &Global, a: &LsArgs) -> Result<()> {
    // The key first: no network work without it.
    let identities = settings::identities(g, a.identity.as_deref())?;
    super::requests_to(Requests::Stderr);
    let settings = Settings::resolve(g, false)?;
    let store = open_existing_store(&settings, Expect::Snapshots)?;
    let r = (|| -> Result<()> {
        let picked = settings.pick(store.as_ref(), &a.snapshot, &a.narrow)?;
        let id = picked.id;
        let snap = Snapshot::open(store.as_ref(), &id, &identities, &picked.metadata_sums)?;
        let scopes: Vec<Scope> = if a.paths.is_empty() {
            vec![Scope::root()]
        } else {
            a.paths.iter().map(|p| Scope::of(p)).collect()
        };
        ls::check(&snap, &scopes).map_err(|e| snap.explain(e))?;
        let mut out = stdout();
        for scope in &scopes {
            ls::list(&snap, scope, a.recursive, &mut |item| {
                let text = match (&item, a.json) {
                    (Item::Entry(e), false) => entry_line(e),
                    (Item::Entry(e), true) => json_line(&entry_json(e)),
                    (Item::Implied(p), false) => implied_line(p),
                    (Item::Implied(p), true) => json_line(&implied_json(p)),
                };
                writeln!(out, "{text}").map_err(output)
            })
            .map_err(|e| snap.explain(e))?;
        }
        out.flush().map_err(output)?;
        requests(store.as_ref());
        Ok(())
    })();
    super::ended(store.as_ref(), r)
}

/// Errors that make one snapshot unreadable to `find`, which then goes
/// on with the others: damaged or forged metadata, another key's
/// snapshot, one removed meanwhile. (The store, the disk and the output
/// failing stop it.)
fn unreadable(e: &Error) -> bool {
    matches!(
        e,
        Error::Corrupt { .. }
            | Error::Key(_)
            | Error::Database { .. }
            | Error::UnknownSnapshot(_)
            | Error::NotFound { .. }
    )
}

pub fn find(g: &Global, a: &FindArgs) -> Result<()> {
    let identities = settings::identities(g, a.identity.as_deref())?;
    let matcher = Matcher::new(&a.pattern)?;
    super::requests_to(Requests::Stderr);
    let settings = Settings::resolve(g, false)?;
    let store = open_existing_store(&settings, Expect::Snapshots)?;
    let r = (|| -> Result<()> {
        let now = crate::time::now();
        let all = manifest::list(store.as_ref())?;
        let ids = find::select(
            &all,
            &Selection {
                ids: &a.snapshots,
                narrow: &a.narrow,
                newer: a.newer.map(|w| w.at(now)),
                older: a.older.map(|w| w.at(now)),
            },
        )?;
        let mut out = stdout();
        let (mut hits, mut damaged) = (0u64, 0usize);
        for id in &ids {
            let mut found = 0u64;
            // Under trusted_signers, only snapshots signed by one.
            let expect = if settings.trust.is_set() {
                match settings.pick_in(store.as_ref(), &all, id, &Default::default()) {
                    Ok(p) => p.metadata_sums,
                    Err(e) => {
                        warn(&format!("snapshot {id} not searched: {e}"));
                        continue;
                    }
                }
            } else {
                Vec::new()
            };
            let searched =
                Snapshot::open(store.as_ref(), id, &identities, &expect).and_then(|snap| {
                    find::search(&snap, &matcher, &mut |e| {
                        found += 1;
                        let time = crate::layout::parse_id(id).map_or(0, |p| p.time);
                        if a.json {
                            let mut v = entry_json(&e);
                            v["snapshot"] = id.as_str().into();
                            v["time"] = crate::time::rfc3339(time).into();
                            v["unix_time"] = time.into();
                            writeln!(out, "{}", json_line(&v)).map_err(output)
                        } else {
                            if found == 1 {
                                writeln!(out, "{id}  {}", crate::time::display(time))
                                    .map_err(output)?;
                            }
                            writeln!(out, "  {}", entry_line(&e)).map_err(output)
                        }
                    })
                    .map_err(|e| snap.explain(e))
                });
            hits += found;
            match searched {
                Ok(()) => {}
                Err(e) if unreadable(&e) => {
                    damaged += 1;
                    warn(&format!("snapshot {id} not searched: {e}"));
                }
                Err(e) => return Err(e),
            }
            // Each snapshot's hits as soon as it is searched.
            out.flush().map_err(output)?;
        }
        requests(store.as_ref());
        if damaged > 0 {
            return Err(Error::Damaged {
                count: damaged,
                what: "find",
            });
        }
        if hits == 0 {
            return Err(Error::NoMatch(format!(
                "find: nothing matches `{}` in {} snapshot(s)",
                crate::error::one_line(a.pattern.clone()),
                ids.len()
            )));
        }
        Ok(())
    })();
    super::ended(store.as_ref(), r)
}

pub fn diff(g: &Global, a: &DiffArgs) -> Result<()> {
    let identities = settings::identities(g, a.identity.as_deref())?;
    super::requests_to(Requests::Stderr);
    let settings = Settings::resolve(g, false)?;
    let store = open_existing_store(&settings, Expect::Snapshots)?;
    let r = (|| -> Result<()> {
        let all = manifest::list(store.as_ref())?;
        let a_ = settings.pick_in(store.as_ref(), &all, &a.a, &a.narrow)?;
        let b_ = settings.pick_in(store.as_ref(), &all, &a.b, &a.narrow)?;
        let old = Snapshot::open(store.as_ref(), &a_.id, &identities, &a_.metadata_sums)?;
        let new = Snapshot::open(store.as_ref(), &b_.id, &identities, &b_.metadata_sums)?;
        let (id_a, id_b) = (a_.id, b_.id);
        let scope = a.path.as_deref().map_or_else(Scope::root, Scope::of);
        let mut out = stdout();
        let sum = diff::diff(&old, &new, &scope, &mut |c: Change| {
            let text = if a.json {
                json_line(&diff::change_json(&c))
            } else {
                diff::change_line(&c)
            };
            writeln!(out, "{text}").map_err(output)
        })
        .map_err(|e| new.explain(old.explain(e)))?;
        if a.json {
            writeln!(out, "{}", json_line(&sum.to_json(&id_a, &id_b))).map_err(output)?;
        } else {
            writeln!(out, "{id_a} -> {id_b}: {}", sum.line()).map_err(output)?;
        }
        out.flush().map_err(output)?;
        requests(store.as_ref());
        Ok(())
    })();
    super::ended(store.as_ref(), r)
}
