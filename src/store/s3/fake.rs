//! Test support: a fake S3 server on 127.0.0.1 answering scripted
//! answers in order, and the store that talks to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::S3Store;
use super::transport::Bounds;
use crate::error::{Error, Result};
use crate::store::Listing;
use crate::store::Store;
use crate::store::class::StorageClass;
use crate::store::settings::S3Config;

/// One scripted answer: raw status line + headers + body, then close.
pub(super) struct Answer {
    pub(super) status: &'static str,
    pub(super) headers: Vec<String>,
    pub(super) body: Vec<u8>,
    /// Claim this Content-Length (to send a truncated body).
    pub(super) claim: Option<usize>,
    /// Send no Content-Length: the body ends with the connection (or
    /// as `headers` say: chunked).
    pub(super) no_length: bool,
    /// After the body, hold the connection open without a word.
    pub(super) hold: bool,
    /// Read the request's head only, then hold the connection open
    /// without answering or reading its body.
    pub(super) silent: bool,
    /// Send the body a byte at a time, this far apart.
    pub(super) trickle: Option<Duration>,
    /// Send the body again and again, for as long as the client reads.
    pub(super) endless: bool,
}

pub(super) fn answer(status: &'static str, body: &[u8]) -> Answer {
    Answer {
        status,
        headers: Vec::new(),
        body: body.to_vec(),
        claim: None,
        no_length: false,
        hold: false,
        silent: false,
        trickle: None,
        endless: false,
    }
}

/// Keep `c` open, silent, for longer than any test runs.
pub(super) fn hold(c: std::net::TcpStream) {
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        drop(c);
    });
}

/// A fake S3 on 127.0.0.1 answering requests in order; records the
/// request heads it saw. Its store tries 3 times and gives up on a
/// stall of 5 s (tests of stalls shorten it).
pub(super) fn fake(answers: Vec<Answer>) -> (S3Store, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for a in answers {
            let (mut c, _) = l.accept().unwrap();
            let mut r = BufReader::new(c.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                head.push_str(&line);
            }
            seen2.lock().unwrap().push(head);
            if a.silent {
                hold(c);
                continue;
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let mut resp = format!("HTTP/1.1 {}\r\nConnection: close\r\n", a.status);
            if !a.no_length {
                let n = a.claim.unwrap_or(a.body.len());
                resp.push_str(&format!("Content-Length: {n}\r\n"));
            }
            for h in &a.headers {
                resp.push_str(h);
                resp.push_str("\r\n");
            }
            resp.push_str("\r\n");
            // Written apart, so that a slow answer does not hold up
            // the next request.
            std::thread::spawn(move || {
                let _ = c.write_all(resp.as_bytes());
                match a.trickle {
                    None if a.endless => while c.write_all(&a.body).is_ok() {},
                    None => {
                        let _ = c.write_all(&a.body);
                    }
                    Some(pause) => {
                        for b in &a.body {
                            if c.write_all(&[*b]).is_err() {
                                return;
                            }
                            std::thread::sleep(pause);
                        }
                    }
                }
                if a.hold {
                    hold(c);
                }
            });
        }
    });
    let mut store = S3Store::open(&S3Config {
        endpoint: format!("http://127.0.0.1:{port}"),
        bucket: "b".into(),
        prefix: "p/".into(),
        region: "us-east-1".into(),
        access_key_id: Some("k".into()),
        secret_access_key: Some("s".into()),
        ca_file: None,
        storage_class: StorageClass::Standard,
        ..Default::default()
    })
    .unwrap();
    store.attempts = 3;
    store.backoff_first = Duration::from_millis(50);
    store.bounds = Bounds {
        stall: Duration::from_secs(5),
        base: Duration::from_secs(30),
        rate: 1 << 20,
    };
    (store, seen)
}

/// A key of the layout (every store operation refuses others).
pub(super) const K: &str = "metadata/h_n_2026-11-23T083015Z/manifest.json.zst";

pub(super) const K2: &str = "metadata/h_n_2026-11-23T083016Z/manifest.json.zst";

pub(super) const K3: &str = "metadata/h_n_2026-11-23T083017Z/manifest.json.zst";

pub(super) const NO_SUCH_KEY: &[u8] =
    b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>";

pub(super) fn read_range(s: &S3Store, start: u64, len: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    s.open_range(K, start, len)?
        .read_to_end(&mut out)
        .map_err(|e| Error::store("GET", K, e.to_string()))?;
    Ok(out)
}

/// The fake's store with a short stall bound.
pub(super) fn impatient(answers: Vec<Answer>) -> S3Store {
    let (mut s, _) = fake(answers);
    s.bounds.stall = Duration::from_millis(300);
    s
}

pub(super) fn with_headers(headers: &[&str]) -> Answer {
    Answer {
        headers: headers.iter().map(|h| h.to_string()).collect(),
        ..answer("200 OK", b"12345")
    }
}

/// Run one store operation, by name.
pub(super) fn run_op(s: &S3Store, op: &str) -> Result<()> {
    match op {
        "GET" => s.get(K, 1 << 20).map(drop),
        "range" => read_range(s, 0, 10).map(drop),
        "PUT" => s.put_bytes(K, b"data!"),
        "HEAD" => s.head(K).map(drop),
        "LIST" => s.list("").map(drop),
        "DELETE" => s.delete(K),
        "DELETE many" => s.delete_many(&[K.to_string()]),
        _ => unreachable!("{op}"),
    }
}

/// A ListObjectsV2 page holding `keys` (URL-encoded, as vaultik asks).
pub(super) fn page(keys: &[&str], truncated: bool, token: Option<&str>) -> Answer {
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
         <Name>b</Name><Prefix>p/</Prefix><MaxKeys>1000</MaxKeys>\
         <EncodingType>url</EncodingType>",
    );
    x.push_str(&format!("<IsTruncated>{truncated}</IsTruncated>"));
    for k in keys {
        let enc: String = k
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'.' | b'-' | b'_' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        x.push_str(&format!(
            "<Contents><Key>{enc}</Key><LastModified>2026-11-23T08:30:15.000Z\
             </LastModified><Size>5</Size></Contents>"
        ));
    }
    if let Some(t) = token {
        x.push_str(&format!(
            "<NextContinuationToken>{t}</NextContinuationToken>"
        ));
    }
    x.push_str("</ListBucketResult>");
    answer("200 OK", x.as_bytes())
}

pub(super) fn keys(l: &Listing) -> Vec<&str> {
    l.objects.iter().map(|o| o.key.as_str()).collect()
}

/// A ListObjectVersions page: (key, version id, size) entries, and the
/// markers of the next page.
pub(super) fn versions_page(entries: &[(&str, &str, u64)], next: Option<(&str, &str)>) -> Answer {
    let mut x = format!(
        "<?xml version=\"1.0\"?><ListVersionsResult><IsTruncated>{}</IsTruncated>",
        next.is_some()
    );
    for (k, v, size) in entries {
        x.push_str(&format!(
            "<Version><Key>{k}</Key><VersionId>{v}</VersionId><IsLatest>true</IsLatest>\
             <LastModified>2026-11-23T08:30:15.000Z</LastModified><Size>{size}</Size></Version>"
        ));
    }
    if let Some((k, v)) = next {
        x.push_str(&format!(
            "<NextKeyMarker>{k}</NextKeyMarker><NextVersionIdMarker>{v}</NextVersionIdMarker>"
        ));
    }
    x.push_str("</ListVersionsResult>");
    answer("200 OK", x.as_bytes())
}
