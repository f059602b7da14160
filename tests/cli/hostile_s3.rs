//! A hostile S3 endpoint: a server that answers every request with a
//! redirect to the real store. vaultik refuses it in one clear line and
//! never contacts where it points.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use crate::util::{self, Backend, Env, stderr};

/// An HTTP server on 127.0.0.1 answering every request with `301 Moved
/// Permanently` to the same path on `target`; returns its endpoint.
fn redirector(target: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let target = target.to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let target = target.clone();
            std::thread::spawn(move || {
                let Ok(read_half) = conn.try_clone() else {
                    return;
                };
                let mut r = BufReader::new(read_half);
                // Every request on the connection, until the client closes it.
                loop {
                    let mut first = String::new();
                    if !matches!(r.read_line(&mut first), Ok(n) if n > 0) {
                        return;
                    }
                    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let mut len = 0u64;
                    loop {
                        let mut line = String::new();
                        if !matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                            return;
                        }
                        if line == "\r\n" || line == "\n" {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.trim().eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    // The body is read and dropped, so that an upload is
                    // answered rather than cut off.
                    if std::io::copy(&mut (&mut r).take(len), &mut std::io::sink()).is_err() {
                        return;
                    }
                    let answer = format!(
                        "HTTP/1.1 301 Moved Permanently\r\nLocation: {target}{path}\r\n\
                         Content-Length: 0\r\n\r\n"
                    );
                    if conn.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    endpoint
}

#[test]
fn a_redirecting_endpoint_is_refused_and_never_followed() {
    let mut env = Env::new(Backend::S3);
    // The redirects point at the real s3s-fs, through a proxy that records
    // anything that reaches it.
    let real = util::proxy::start(&env.endpoint);
    env.endpoint = redirector(&real.endpoint);
    env.write_config();
    std::fs::write(env.src().join("file"), b"some data to back up").unwrap();
    for args in [&["snapshot", "create"][..], &["snapshot", "list"]] {
        let out = env.run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {err}");
        let want = format!(
            "the endpoint {} answered with a redirect (HTTP 301 to {}/{}/",
            env.endpoint, real.endpoint, env.bucket
        );
        assert!(lines[0].contains(&want), "{args:?}: {err}");
        assert!(
            lines[0].contains(
                "vaultik never follows one: check `endpoint` and `region` (region is us-east-1"
            ),
            "{args:?}: {err}"
        );
    }
    assert!(
        real.requests.lock().unwrap().is_empty(),
        "the redirect target was contacted: {:?}",
        real.requests.lock().unwrap()
    );
    let in_bucket: Vec<_> = std::fs::read_dir(env.store_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(in_bucket.is_empty(), "{in_bucket:?}");
}
