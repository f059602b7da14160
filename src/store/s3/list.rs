//! Listings: ListObjectsV2 pages followed by continuation token, and
//! ListObjectVersions pages followed by key and version id markers; a
//! listing that loops, goes back or strays outside its prefix is refused.

use std::collections::HashSet;

use rusty_s3::actions::ListObjectsV2;
use sha2::{Digest, Sha256};

use super::S3Store;
use super::sign::{Method, Req};
use super::transport::{Failure, between, shown};
use crate::error::{Error, Result, StoreCause};
use crate::store::class::StorageClass;
use crate::store::versions::{self, Version};
use crate::store::{Listing, Op};

/// A ListObjectsV2 page (1000 keys) is about 300 KB of XML; a larger
/// answer is refused, whatever the server says.
pub(super) const LIST_PAGE_MAX: u64 = 8 << 20;
/// Pages a listing follows at most: ten times what `LIST_MAX` objects take
/// at S3's 1000 keys a page (a page may hold fewer, even none), so that a
/// server answering empty pages with ever new tokens cannot keep a listing
/// going forever.
pub(super) const LIST_PAGES_MAX: usize = crate::store::LIST_MAX / 100;

pub(super) fn list_error(prefix: &str, msg: String) -> Error {
    Error::store("LIST", prefix, msg)
}

impl S3Store {
    /// Pages are followed while the server says there are more. A page
    /// that repeats a token, a key at or before the last one (S3 lists in
    /// key order, without repeats), or a key outside the prefix is a server
    /// that lies or loops: the listing is refused rather than patched up.
    pub(super) fn list_objects(&self, prefix: &str) -> Result<Listing> {
        let full_prefix = self.full_key(prefix);
        let mut out = Listing::default();
        let mut token: Option<String> = None;
        // Digests of the tokens followed (a token may be megabytes).
        let mut tokens: HashSet<[u8; 32]> = HashSet::new();
        let mut last: Option<String> = None;
        for page_no in 1.. {
            if page_no > LIST_PAGES_MAX {
                return Err(list_error(
                    &full_prefix,
                    format!(
                        "more than {LIST_PAGES_MAX} pages; refusing a listing that does not end"
                    ),
                ));
            }
            let page = self.retry("LIST", &full_prefix, || {
                // As rusty-s3's ListObjectsV2 asks, whose parser reads it.
                let mut req = Req::new(Method::Get, None)
                    .query("list-type", "2")
                    .query("encoding-type", "url")
                    .query("prefix", &full_prefix);
                if let Some(t) = &token {
                    req = req.query("continuation-token", t);
                }
                let body = self.get_bounded(&req, Op::List, LIST_PAGE_MAX)?;
                let text = String::from_utf8_lossy(&body);
                // Said before parsing, which would only report a missing field.
                let token = between(&text, "<NextContinuationToken>", "</NextContinuationToken>");
                if text.contains("<IsTruncated>true</IsTruncated>")
                    && token.is_none_or(|t| t.trim().is_empty())
                {
                    return Err(Failure::permanent(format!(
                        "page {page_no} says the listing goes on (IsTruncated) but gives \
                         no NextContinuationToken (a server without ListObjectsV2?); \
                         refusing an incomplete listing"
                    )));
                }
                ListObjectsV2::parse_response(&text).map_err(|e| {
                    Failure::permanent(format!("unreadable listing: {}", shown(&e.to_string())))
                })
            })?;
            for obj in page.contents {
                if let Some(l) = last.as_deref().filter(|l| obj.key.as_str() <= *l) {
                    return Err(list_error(
                        &full_prefix,
                        format!(
                            "page {page_no} lists {} after {}: keys out of order or repeated; \
                             refusing the listing",
                            shown(&obj.key),
                            shown(l)
                        ),
                    ));
                }
                if !obj.key.starts_with(&full_prefix) {
                    return Err(list_error(
                        &full_prefix,
                        format!(
                            "page {page_no} lists {}, which is not under the prefix asked for; \
                             refusing the listing",
                            shown(&obj.key)
                        ),
                    ));
                }
                let key = obj.key[self.prefix.len()..].to_string();
                last = Some(obj.key);
                out.add(
                    key,
                    obj.size.unwrap_or(0),
                    obj.last_modified
                        .as_deref()
                        .and_then(crate::time::parse_s3)
                        .unwrap_or(0),
                    StorageClass::from_server(obj.storage_class.as_deref()),
                );
                if out.objects.len() > crate::store::LIST_MAX {
                    return Err(crate::store::too_many(&full_prefix));
                }
            }
            // rusty-s3 gives a token only for a truncated page, never empty.
            let Some(t) = page.next_continuation_token else {
                break;
            };
            if !tokens.insert(Sha256::digest(t.as_bytes()).into()) {
                return Err(list_error(
                    &full_prefix,
                    format!(
                        "page {page_no} gives a continuation token an earlier page gave; \
                         refusing a listing that loops"
                    ),
                ));
            }
            token = Some(t);
        }
        Ok(out.sorted())
    }

    /// Pages are followed by key and version id markers; a page that
    /// repeats a marker, or an entry outside the prefix, refuses the
    /// listing, as `list` does. A server without ListObjectVersions (HTTP
    /// 501, s3s-fs) keeps no versions: None.
    pub(super) fn list_object_versions(&self, prefix: &str) -> Result<Option<Vec<Version>>> {
        let full_prefix = self.full_key(prefix);
        let mut out: Vec<Version> = Vec::new();
        let mut marker: Option<(String, String)> = None;
        let mut seen: HashSet<[u8; 32]> = HashSet::new();
        for page_no in 1.. {
            if page_no > LIST_PAGES_MAX {
                return Err(list_error(
                    &full_prefix,
                    format!(
                        "more than {LIST_PAGES_MAX} pages of versions; refusing a listing that \
                         does not end"
                    ),
                ));
            }
            let page = self.retry("LIST", &full_prefix, || {
                let mut req = Req::new(Method::Get, None)
                    .query("versions", "")
                    .query("prefix", &full_prefix);
                if let Some((k, v)) = &marker {
                    req = req.query("key-marker", k);
                    if !v.is_empty() {
                        req = req.query("version-id-marker", v);
                    }
                }
                let body = self.get_bounded(&req, Op::List, LIST_PAGE_MAX)?;
                versions::parse_page(&String::from_utf8_lossy(&body)).map_err(|e| {
                    Failure::permanent(format!("unreadable version listing: {}", shown(&e)))
                })
            });
            let page = match page {
                Ok(p) => p,
                Err(Error::Store {
                    cause: StoreCause::Http { status: 501, .. },
                    ..
                }) if page_no == 1 => return Ok(None),
                Err(e) => return Err(e),
            };
            for mut v in page.versions {
                if !v.key.starts_with(&full_prefix) {
                    return Err(list_error(
                        &full_prefix,
                        format!(
                            "page {page_no} lists a version of {}, which is not under the prefix \
                             asked for; refusing the listing",
                            shown(&v.key)
                        ),
                    ));
                }
                v.key = v.key[self.prefix.len()..].to_string();
                if crate::layout::parse(&v.key).is_some() {
                    out.push(v);
                }
                if out.len() > crate::store::LIST_MAX {
                    return Err(crate::store::too_many(&full_prefix));
                }
            }
            let Some(next) = page.next else { break };
            let digest: [u8; 32] = Sha256::digest(format!("{}\0{}", next.0, next.1)).into();
            if !seen.insert(digest) {
                return Err(list_error(
                    &full_prefix,
                    format!(
                        "page {page_no} gives markers an earlier page gave; refusing a listing \
                         that loops"
                    ),
                ));
            }
            marker = Some(next);
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::s3::fake::*;

    #[test]
    fn listings_follow_tokens_in_order() {
        let (s, seen) = fake(vec![
            page(&[&format!("p/{K}")], true, Some("t1")),
            page(&[&format!("p/{K2}")], true, Some("t2")),
            page(&[], true, Some("t3")),
            page(&[&format!("p/{K3}")], false, None),
        ]);
        let l = s.list("").unwrap();
        assert_eq!(keys(&l), [K, K2, K3]);
        assert_eq!(l.foreign_count, 0);
        let heads = seen.lock().unwrap();
        assert!(heads[1].contains("continuation-token=t1"), "{}", heads[1]);
        assert!(heads[3].contains("continuation-token=t3"), "{}", heads[3]);
    }

    #[test]
    fn a_listing_that_repeats_a_token_is_refused() {
        // Every page new keys, the same token: a server that would keep
        // vaultik listing forever.
        let (s, seen) = fake(vec![
            page(&[&format!("p/{K}")], true, Some("again")),
            page(&[&format!("p/{K2}")], true, Some("again")),
            page(&[&format!("p/{K3}")], true, Some("again")),
        ]);
        let e = s.list("").unwrap_err().to_string();
        assert!(
            e.contains("store LIST p/: page 2 gives a continuation token an earlier page gave"),
            "{e}"
        );
        assert_eq!(seen.lock().unwrap().len(), 2);
        // Empty pages going round two tokens.
        let (s, _) = fake(vec![
            page(&[], true, Some("a")),
            page(&[], true, Some("b")),
            page(&[], true, Some("a")),
            page(&[], true, Some("b")),
        ]);
        let e = s.list("").unwrap_err().to_string();
        assert!(e.contains("page 3 gives a continuation token"), "{e}");
    }

    #[test]
    fn listed_keys_that_repeat_or_go_back_are_refused() {
        let cases: Vec<Vec<Answer>> = vec![
            // Backwards within a page.
            vec![page(&[&format!("p/{K2}"), &format!("p/{K}")], false, None)],
            // Repeated within a page.
            vec![page(&[&format!("p/{K}"), &format!("p/{K}")], false, None)],
            // The same page again, under a new token.
            vec![
                page(&[&format!("p/{K}")], true, Some("t1")),
                page(&[&format!("p/{K}")], false, None),
            ],
            // Backwards across pages.
            vec![
                page(&[&format!("p/{K2}")], true, Some("t1")),
                page(&[&format!("p/{K}")], false, None),
            ],
        ];
        for (i, answers) in cases.into_iter().enumerate() {
            let (s, _) = fake(answers);
            let e = s.list("").unwrap_err().to_string();
            assert!(
                e.starts_with("store LIST p/: page ")
                    && e.contains(&format!("lists p/{K} after p/"))
                    && e.contains("keys out of order or repeated"),
                "case {i}: {e}"
            );
        }
    }

    #[test]
    fn a_truncated_page_without_a_token_is_refused() {
        for answers in [
            vec![page(&[&format!("p/{K}")], true, None)],
            vec![page(&[&format!("p/{K}")], true, Some(""))],
            vec![
                page(&[&format!("p/{K}")], true, Some("t1")),
                page(&[&format!("p/{K2}")], true, None),
            ],
        ] {
            let pages = answers.len();
            let (s, _) = fake(answers);
            let e = s.list("").unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "store LIST p/: page {pages} says the listing goes on (IsTruncated) but \
                     gives no NextContinuationToken"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn listed_keys_outside_the_prefix_are_refused() {
        let (s, _) = fake(vec![page(&[K2, &format!("p/{K}")], false, None)]);
        let e = s.list("").unwrap_err().to_string();
        assert!(
            e.contains(&format!("lists {K2}, which is not under the prefix")),
            "{e}"
        );
        // Under the store's prefix but not under the one listed.
        let (s, _) = fake(vec![page(&[&format!("p/{K}")], false, None)]);
        let e = s.list("blobs/").unwrap_err().to_string();
        assert!(
            e.contains("store LIST p/blobs/: page 1 lists p/metadata/"),
            "{e}"
        );
    }

    #[test]
    fn foreign_keys_are_listed_apart() {
        // A key the URL library would turn into K if it were ever used in a
        // request: `..` segments are resolved.
        let dotted = "blobs/../metadata/h_n_2026-11-23T083015Z/manifest.json.zst";
        let (s, seen) = fake(vec![page(
            &{
                let mut v = vec![
                    format!("p/{K}"),
                    format!("p/{dotted}"),
                    "p/host1/../x".into(),
                    "p/blobs/../../etc/passwd".into(),
                    "p/metadata/h_n_2026-11-23T083015Z\u{1b}[2J/db.zst.age".into(),
                    "p/gc/pending/x\n.json".into(),
                ];
                v.sort();
                v
            }
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
            false,
            None,
        )]);
        let url = s.bucket.object_url(&format!("p/{dotted}"));
        assert_eq!(url.path(), format!("/b/p/{K}"), "normalised");
        let l = s.list("").unwrap();
        assert_eq!(keys(&l), [K]);
        assert_eq!(l.foreign_count, 5);
        let mut want = vec![
            dotted.to_string(),
            "host1/../x".into(),
            "blobs/../../etc/passwd".into(),
            "metadata/h_n_2026-11-23T083015Z\\u{1b}[2J/db.zst.age".into(),
            "gc/pending/x\\n.json".into(),
        ];
        want.sort();
        assert_eq!(l.foreign, want);
        // And none is ever asked for.
        for k in [dotted, "host1/../x", "blobs/../../etc/passwd"] {
            assert!(s.get(k, 100).is_err());
            assert!(s.head(k).is_err());
            assert!(s.delete(k).is_err());
        }
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "no request for a foreign key"
        );
    }

    #[test]
    fn version_listings_follow_markers_and_refuse_what_loops_or_strays() {
        let (k1, k2) = (format!("p/{K}"), format!("p/{K2}"));
        // Two pages, markers followed; keys outside the layout dropped.
        let (s, seen) = fake(vec![
            versions_page(
                &[(&k1, "v1", 5), ("p/metadata/junk", "v9", 1)],
                Some((&k1, "v1")),
            ),
            versions_page(&[(&k2, "v2", 7)], None),
        ]);
        let v = s.list_versions("metadata/").unwrap().unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].key.as_str(), v[1].size), (K, 7));
        let heads = seen.lock().unwrap();
        assert!(heads[0].contains("versions"), "{}", heads[0]);
        assert!(heads[1].contains("key-marker="), "{}", heads[1]);
        drop(heads);
        // Markers that repeat: refused, not followed forever.
        let (s, _) = fake(vec![
            versions_page(&[(&k1, "v1", 5)], Some((&k1, "v1"))),
            versions_page(&[], Some((&k1, "v1"))),
        ]);
        let e = s.list_versions("metadata/").unwrap_err().to_string();
        assert!(e.contains("loops"), "{e}");
        // A key outside the prefix asked for.
        let (s, _) = fake(vec![versions_page(&[("q/other", "v1", 5)], None)]);
        let e = s.list_versions("metadata/").unwrap_err().to_string();
        assert!(e.contains("not under the prefix"), "{e}");
        // Truncated XML, an oversized page: refused.
        let (s, _) = fake(vec![answer(
            "200 OK",
            b"<ListVersionsResult><Version><Key>p/x</Key><VersionId>v",
        )]);
        let e = s.list_versions("metadata/").unwrap_err().to_string();
        assert!(e.contains("unreadable version listing"), "{e}");
        let big = vec![b' '; LIST_PAGE_MAX as usize + 10];
        let (s, _) = fake(vec![answer("200 OK", &big)]);
        assert!(s.list_versions("metadata/").is_err());
        // A server without versions: None, asked once.
        let (s, seen) = fake(vec![answer(
            "501 Not Implemented",
            b"<Error><Code>NotImplemented</Code></Error>",
        )]);
        assert_eq!(s.list_versions("metadata/").unwrap(), None);
        assert_eq!(seen.lock().unwrap().len(), 1, "501 is not asked again");
    }
}
