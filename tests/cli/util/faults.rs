//! A fault-injecting HTTP proxy on 127.0.0.1 between vaultik and s3s-fs.
//!
//! Each request is matched against a list of rules (method and a part of
//! the target); the first rule that matches and still has uses left decides
//! what happens to it. Requests no rule takes are passed on unchanged. One
//! request per connection: every answer goes back with `Connection: close`,
//! so a fault never leaks into the next request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Read the head and part of the body, then reset the connection.
    ResetMidUpload,
    /// Answer with this status and an S3 error body; nothing is passed on.
    Status(u16),
    /// Hold the request this long, then pass it on.
    Slow(Duration),
    /// Pass it on; send back the answer's head and half of its body, then
    /// close (the body is shorter than its Content-Length).
    Truncate,
    /// Pass it on; send back the head and part of the body, then reset.
    ResetMidDownload,
    /// Pass it on without its Range header: a 200 with the whole object
    /// instead of a 206.
    IgnoreRange,
    /// Only a request carrying this header: refused as Backblaze B2 refuses
    /// the checksum headers (400 InvalidArgument "Unsupported header").
    RefuseHeader(&'static str),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub method: &'static str,
    /// A part of the request target (`blobs/`, `manifest`, `list-type`).
    pub target: &'static str,
    /// How many matching requests get the fault.
    pub times: usize,
    pub fault: Fault,
}

pub fn rule(method: &'static str, target: &'static str, times: usize, fault: Fault) -> Rule {
    Rule {
        method,
        target,
        times,
        fault,
    }
}

pub struct FaultProxy {
    pub endpoint: String,
    rules: Arc<Mutex<Vec<Rule>>>,
    /// Every fault applied: (method, target, fault).
    pub applied: Arc<Mutex<Vec<(String, String, Fault)>>>,
}

impl FaultProxy {
    /// Replace the rules (the next requests see the new ones).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        *self.rules.lock().unwrap() = rules;
    }

    /// How many times `fault` was applied.
    pub fn count(&self, fault: Fault) -> usize {
        self.applied
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.2 == fault)
            .count()
    }
}

pub fn start(upstream: &str, rules: Vec<Rule>) -> FaultProxy {
    let upstream = upstream.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let rules = Arc::new(Mutex::new(rules));
    let applied = Arc::new(Mutex::new(Vec::new()));
    let (r, a) = (rules.clone(), applied.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let (up, r, a) = (upstream.clone(), r.clone(), a.clone());
            std::thread::spawn(move || {
                let _ = serve(client, &up, &r, &a);
            });
        }
    });
    FaultProxy {
        endpoint,
        rules,
        applied,
    }
}

/// Close with a TCP reset instead of a FIN.
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}

fn serve(
    client: TcpStream,
    upstream: &str,
    rules: &Mutex<Vec<Rule>>,
    applied: &Mutex<Vec<(String, String, Fault)>>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(client.try_clone()?);
    let mut head: Vec<String> = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let end = line == "\r\n" || line == "\n";
        head.push(line);
        if end {
            break;
        }
    }
    let mut first = head[0].split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let header = |name: &str| -> Option<String> {
        head[1..].iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let body_len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let fault = {
        let mut rules = rules.lock().unwrap();
        rules
            .iter_mut()
            .find(|x| {
                x.times > 0
                    && x.method == method
                    && target.contains(x.target)
                    && match x.fault {
                        Fault::RefuseHeader(h) => header(h).is_some(),
                        _ => true,
                    }
            })
            .map(|x| {
                x.times -= 1;
                x.fault
            })
    };
    if let Some(f) = fault {
        applied
            .lock()
            .unwrap()
            .push((method.clone(), target.clone(), f));
    }
    if fault == Some(Fault::ResetMidUpload) {
        let mut part = vec![0u8; body_len / 2];
        r.read_exact(&mut part)?;
        reset(client);
        return Ok(());
    }
    let mut body = vec![0u8; body_len];
    r.read_exact(&mut body)?;
    let mut client = client;
    if let Some(Fault::Status(code)) = fault {
        let xml = format!(
            "<?xml version=\"1.0\"?><Error><Code>Injected</Code>\
             <Message>fault proxy answered {code}</Message></Error>"
        );
        write!(
            client,
            "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        )?;
        client.flush()?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    if let Some(Fault::RefuseHeader(h)) = fault {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Error>\
             <Code>InvalidArgument</Code><Message>Unsupported header '{h}' received for \
             this API call.</Message></Error>"
        );
        write!(
            client,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            xml.len()
        )?;
        client.flush()?;
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    if let Some(Fault::Slow(d)) = fault {
        std::thread::sleep(d);
    }
    // Pass it on, asking the server to close after answering, and read
    // the whole answer.
    let mut out = String::new();
    for (i, line) in head.iter().enumerate() {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if i > 0 && (name == "connection" || (name == "range" && fault == Some(Fault::IgnoreRange)))
        {
            continue;
        }
        if i > 0 && (line == "\r\n" || line == "\n") {
            out.push_str("Connection: close\r\n");
        }
        out.push_str(line);
    }
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(out.as_bytes())?;
    server.write_all(&body)?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer)?;
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |p| p + 4);
    match fault {
        Some(Fault::Truncate) => {
            let keep = head_end + (answer.len() - head_end) / 2;
            client.write_all(&answer[..keep])?;
            client.flush()?;
            let _ = client.shutdown(Shutdown::Both);
        }
        Some(Fault::ResetMidDownload) => {
            let keep = head_end + (answer.len() - head_end) / 3;
            client.write_all(&answer[..keep])?;
            client.flush()?;
            std::thread::sleep(Duration::from_millis(20));
            reset(client);
        }
        _ => {
            client.write_all(&answer)?;
            client.flush()?;
            let _ = client.shutdown(Shutdown::Both);
        }
    }
    Ok(())
}
