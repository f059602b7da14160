//! A second real S3 server, moto's (`moto[server]`, installed by
//! `tests/run.sh`), for what s3s-fs ignores: storage classes, thaws
//! (RestoreObject, `x-amz-restore`) and stored checksums. One server per
//! test binary, a bucket per test; plus a raw HTTP client to act on the
//! bucket behind vaultik's back, and a proxy that makes thaws take time
//! (moto restores at once).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

pub struct Moto {
    pub endpoint: String,
}

/// The moto server shared by every test in this binary.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(start)
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VAULTIK_MOTO_SERVER") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = PathBuf::from(home).join(".cache/vaultik/moto-5.2.5/bin/moto_server");
    assert!(
        p.is_file(),
        "moto's S3 server is not installed: run `bash tests/run.sh`, which installs it"
    );
    p
}

fn start() -> Moto {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let bin = binary();
    // Started from a thread that lives as long as the test process, with
    // PR_SET_PDEATHSIG (which follows the thread that started it, not the
    // process), so it dies with us and not with the first test.
    std::thread::spawn(move || {
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start moto_server");
        let _ = child.wait();
        loop {
            std::thread::park();
        }
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..150 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Moto { endpoint };
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("moto_server did not start on port {port}");
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request to moto, unsigned (moto does not check signatures), on a
/// connection of its own.
pub fn http(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let addr = moto().endpoint.trim_start_matches("http://").to_string();
    let mut c = TcpStream::connect(&addr).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Length: {}\r\nContent-Type: application/octet-stream\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    parse_answer(&raw, method == "HEAD")
}

fn parse_answer(raw: &[u8], head_only: bool) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let text = String::from_utf8_lossy(&raw[..end]);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: if head_only {
            Vec::new()
        } else {
            raw[end + 4..].to_vec()
        },
    }
}

pub fn create_bucket(bucket: &str) {
    let a = http("PUT", &format!("/{bucket}"), &[], b"");
    assert_eq!(a.status, 200, "create bucket {bucket}: {a:?}");
}

/// A bucket created with Object Lock (and so versioning) enabled.
pub fn create_locked_bucket(bucket: &str) {
    let a = http(
        "PUT",
        &format!("/{bucket}"),
        &[("x-amz-bucket-object-lock-enabled", "true")],
        b"",
    );
    assert_eq!(a.status, 200, "create bucket {bucket}: {a:?}");
}

/// Every key in `bucket` under `prefix`, with its storage class.
pub fn keys(bucket: &str, prefix: &str) -> Vec<(String, String)> {
    let a = http(
        "GET",
        &format!("/{bucket}?list-type=2&prefix={prefix}&max-keys=1000"),
        &[],
        b"",
    );
    assert_eq!(a.status, 200, "{a:?}");
    let text = String::from_utf8_lossy(&a.body).into_owned();
    let mut out = Vec::new();
    for part in text.split("<Contents>").skip(1) {
        let field = |name: &str| {
            part.split(&format!("<{name}>"))
                .nth(1)
                .and_then(|r| r.split(&format!("</{name}>")).next())
                .unwrap_or("")
                .to_string()
        };
        out.push((field("Key"), field("StorageClass")));
    }
    out
}

/// Whether `target` asks for a thaw (`?restore`, among the signature's
/// query parameters).
pub fn is_restore(target: &str) -> bool {
    target
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|p| p == "restore" || p == "restore="))
}

/// A proxy before moto that makes thaws take time: the first `polls`
/// HEADs of each object after a thaw was requested for it answer that the
/// thaw is under way (`ongoing-request="true"`); and GETs of an object
/// whose thaw is still under way here are refused as S3 refuses a frozen
/// one (403 InvalidObjectState). Every request (method and target) is
/// recorded. One request per connection, answered with `Connection: close`.
pub struct Thawing {
    pub endpoint: String,
    pub requests: Arc<Mutex<Vec<(String, String)>>>,
}

pub fn thawing(polls: usize) -> Thawing {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    // Per object path: HEADs still to answer "ongoing".
    let pending: Arc<Mutex<HashMap<String, usize>>> = Arc::new(Mutex::new(HashMap::new()));
    let reqs = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let (reqs, pending) = (reqs.clone(), pending.clone());
            std::thread::spawn(move || serve(conn, polls, &reqs, &pending));
        }
    });
    Thawing { endpoint, requests }
}

fn serve(
    client: TcpStream,
    polls: usize,
    reqs: &Mutex<Vec<(String, String)>>,
    pending: &Mutex<HashMap<String, usize>>,
) {
    let mut r = BufReader::new(client.try_clone().unwrap());
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if !matches!(r.read_line(&mut line), Ok(n) if n > 0) {
            return;
        }
        if line == "\r\n" {
            break;
        }
        head.push(line);
    }
    let mut first = head[0].split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let path = target.split('?').next().unwrap_or("").to_string();
    let len: usize = head
        .iter()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    reqs.lock().unwrap().push((method.clone(), target.clone()));
    let is_thaw = method == "POST" && is_restore(&target);
    let still = pending.lock().unwrap().get(&path).copied().unwrap_or(0);
    if method == "GET" && still > 0 {
        let body = "<Error><Code>InvalidObjectState</Code><Message>frozen</Message></Error>";
        let mut c = client;
        let _ = write!(
            c,
            "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    // Forward, closing after one answer.
    let addr = moto().endpoint.trim_start_matches("http://").to_string();
    let mut up = TcpStream::connect(&addr).unwrap();
    let mut out = String::new();
    for l in &head {
        if !l.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(l);
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes()).unwrap();
    up.write_all(&body).unwrap();
    let mut raw = Vec::new();
    up.read_to_end(&mut raw).unwrap();
    let mut answer = parse_answer(&raw, method == "HEAD");
    if is_thaw && answer.status / 100 == 2 {
        pending.lock().unwrap().insert(path.clone(), polls);
    }
    if method == "HEAD" && still > 0 {
        *pending.lock().unwrap().get_mut(&path).unwrap() -= 1;
        for (k, v) in answer.headers.iter_mut() {
            if k.eq_ignore_ascii_case("x-amz-restore") {
                *v = "ongoing-request=\"true\"".into();
            }
        }
    }
    let mut c = client;
    let mut text = format!("HTTP/1.1 {} X\r\n", answer.status);
    for (k, v) in &answer.headers {
        if !k.eq_ignore_ascii_case("connection") {
            text.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    text.push_str("Connection: close\r\n\r\n");
    let _ = c.write_all(text.as_bytes());
    let _ = c.write_all(&answer.body);
}
