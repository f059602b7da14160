//! A CONNECT proxy on 127.0.0.1 (what `HTTPS_PROXY` names on a host behind
//! one): it keeps each `CONNECT host:port` target, sends every one to one
//! server on 127.0.0.1 (the test's own names need no DNS, and the server's
//! port need not be in them) and passes bytes both ways.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

pub struct Tunnel {
    pub url: String,
    /// Every `CONNECT` target, in order.
    pub targets: Arc<Mutex<Vec<String>>>,
}

/// A proxy whose every tunnel ends at 127.0.0.1:`port`.
pub fn start(port: u16) -> Tunnel {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let targets = Arc::new(Mutex::new(Vec::new()));
    let seen = targets.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || serve(client, port, seen));
        }
    });
    Tunnel { url, targets }
}

fn serve(client: TcpStream, port: u16, seen: Arc<Mutex<Vec<String>>>) {
    let Ok(mut client_w) = client.try_clone() else {
        return;
    };
    let mut r = BufReader::new(client);
    let mut first = String::new();
    if r.read_line(&mut first).is_err() {
        return;
    }
    // The rest of the head (Host, User-Agent...).
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {}
        }
    }
    let mut words = first.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        let _ = client_w.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    seen.lock().unwrap().push(target.to_string());
    let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
        let _ = client_w.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        return;
    };
    if client_w
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let (Ok(mut server_w), Ok(mut server_r)) = (server.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut server_r, &mut client_w);
        let _ = client_w.shutdown(std::net::Shutdown::Both);
    });
    // Whatever the reader buffered past the head is the tunnel's first bytes.
    let _ = std::io::copy(&mut r, &mut server_w);
    let _ = server_w.shutdown(std::net::Shutdown::Write);
}
