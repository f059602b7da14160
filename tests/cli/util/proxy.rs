//! A recording HTTP proxy on 127.0.0.1 between vaultik and s3s-fs: it parses
//! each request's head (method, target, headers), forwards everything
//! unchanged, and keeps the heads for the test to inspect.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// When its head came to the proxy.
    pub at: std::time::Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Proxy {
    pub endpoint: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
    /// Every request body passed on: method, target, when its head came,
    /// when its last byte was passed on, its length.
    pub bodies: Arc<Mutex<Vec<Body>>>,
}

#[derive(Debug, Clone)]
pub struct Body {
    pub method: String,
    pub target: String,
    pub started: std::time::Instant,
    pub ended: std::time::Instant,
    pub len: u64,
}

pub fn start(upstream: &str) -> Proxy {
    start_with_delay(upstream, std::time::Duration::ZERO)
}

/// A proxy that holds every request for `delay` before passing it on: a
/// slow network, so a test can act while a backup is uploading.
pub fn start_with_delay(upstream: &str, delay: std::time::Duration) -> Proxy {
    let upstream = upstream.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (reqs, bods) = (requests.clone(), bodies.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let up = upstream.clone();
            let (reqs, bods) = (reqs.clone(), bods.clone());
            std::thread::spawn(move || serve(client, &up, reqs, bods, delay));
        }
    });
    Proxy {
        endpoint,
        requests,
        bodies,
    }
}

fn serve(
    client: TcpStream,
    upstream: &str,
    reqs: Arc<Mutex<Vec<Request>>>,
    bodies: Arc<Mutex<Vec<Body>>>,
    delay: std::time::Duration,
) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut server_w), Ok(mut client_w)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    // Answers flow back untouched.
    let mut server_r = server;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_r, &mut client_w);
        let _ = client_w.shutdown(std::net::Shutdown::Both);
    });
    let mut r = BufReader::new(client);
    loop {
        let mut head = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.push(line.clone());
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let started = std::time::Instant::now();
        let mut first = head[0].split_whitespace();
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = head[1..]
            .iter()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let req = Request {
            method,
            target,
            headers,
            at: started,
        };
        let len: Option<u64> = req.header("content-length").and_then(|v| v.parse().ok());
        let chunked = req
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let (method, target) = (req.method.clone(), req.target.clone());
        reqs.lock().unwrap().push(req);
        std::thread::sleep(delay);
        if server_w.write_all(head.concat().as_bytes()).is_err() {
            return;
        }
        if chunked {
            // Not parsed further: forward the rest of the connection raw.
            let _ = std::io::copy(&mut r, &mut server_w);
            return;
        }
        if let Some(n) = len {
            if std::io::copy(&mut (&mut r).take(n), &mut server_w).is_err() {
                return;
            }
            bodies.lock().unwrap().push(Body {
                method,
                target,
                started,
                ended: std::time::Instant::now(),
                len: n,
            });
        }
    }
}
