//! A small HTTP server on 127.0.0.1 for endpoints no real server exists
//! for here: EC2 instance metadata (IMDSv2), container credential agents,
//! a front for STS. Each connection serves one request (`Connection:
//! close`) with what the handler answers; every request is recorded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the handler answers: status, body.
pub type Handler = dyn Fn(&Request) -> (u16, Vec<u8>) + Send + Sync;

pub struct Fake {
    pub endpoint: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    pub fn count(&self, method: &str, target_part: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == method && r.target.contains(target_part))
            .count()
    }
}

pub fn start(handler: Box<Handler>) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let reqs = requests.clone();
    let handler: Arc<Handler> = Arc::from(handler);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(c) = conn else { continue };
            let (reqs, handler) = (reqs.clone(), handler.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                    head.push(line.trim_end().to_string());
                }
                let mut first = head[0].split_whitespace();
                let method = first.next().unwrap_or("").to_string();
                let target = first.next().unwrap_or("").to_string();
                let headers: Vec<(String, String)> = head[1..]
                    .iter()
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let req = Request {
                    method,
                    target,
                    headers,
                    body,
                };
                let (status, answer) = handler(&req);
                reqs.lock().unwrap().push(req);
                let mut c = c;
                let _ = write!(
                    c,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    answer.len()
                );
                let _ = c.write_all(&answer);
            });
        }
    });
    Fake { endpoint, requests }
}

/// The JSON of credentials, as IMDS and container agents give them.
pub fn creds_json(key: &str, secret: &str, token: &str, expires_in: i64) -> Vec<u8> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + expires_in;
    serde_json::json!({
        "Code": "Success",
        "Type": "AWS-HMAC",
        "AccessKeyId": key,
        "SecretAccessKey": secret,
        "Token": token,
        "Expiration": vaultik::store::lock::iso8601(exp.max(0) as u64),
    })
    .to_string()
    .into_bytes()
}
