//! Backups you can watch (issue 32): `snapshot create --json` against
//! what was stored, the Prometheus textfile (checked by promtool), hooks
//! and health pings (received by a small local HTTP server).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::util::*;

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn write_files(dir: &Path, n: usize, tag: &str) {
    for i in 0..n {
        std::fs::write(
            dir.join(format!("f{i}")),
            format!("{tag} {i}\n").repeat(200),
        )
        .unwrap();
    }
}

both!(json_summary_matches_the_store, |backend| {
    let env = Env::new(backend);
    write_files(&env.src(), 20, "one");
    env.settle();
    let first = json_lines(&env.ok(&["snapshot", "create", "--json"]));
    assert_eq!(first.len(), 1, "{first:?}");
    let o = &first[0];
    let ids = env.snapshot_ids();
    assert_eq!(o["id"], ids[0].as_str());
    assert_eq!(o["name"], "data");
    assert_eq!(o["host"], "testhost");
    assert_eq!(
        (o["status"].as_str(), o["exit"].as_i64()),
        (Some("ok"), Some(0))
    );
    assert_eq!(o["files"]["total"], 20);
    assert_eq!(o["files"]["new"], 20);
    assert_eq!(o["files"]["changed"], 0);
    assert_eq!(o["files"]["unchanged"], 0);
    // The blobs it says it uploaded are the store's and the index's.
    let blobs = env.blob_keys().len() as u64;
    assert_eq!(o["blobs"].as_u64(), Some(blobs));
    assert_eq!(env.index_blob_keys().len() as u64, blobs);
    assert!(o["requests"]["put"].as_u64().unwrap() > blobs);
    assert!(
        o["bytes"]["uploaded"].as_u64().unwrap() >= o["bytes"]["stored"].as_u64().unwrap(),
        "{o}"
    );
    // RFC 3339.
    let started = o["started"].as_str().unwrap();
    assert!(started.len() == 20 && started.ends_with('Z') && &started[13..14] == ":");

    // One file changed, one new, the rest unchanged.
    std::fs::write(env.src().join("f3"), "changed\n").unwrap();
    std::fs::write(env.src().join("new"), "new\n").unwrap();
    env.settle();
    let second = json_lines(&env.ok(&["snapshot", "create", "--json", "--cron"]));
    let f = &second[0]["files"];
    assert_eq!(
        (
            f["total"].as_u64(),
            f["new"].as_u64(),
            f["changed"].as_u64(),
            f["unchanged"].as_u64()
        ),
        (Some(21), Some(1), Some(1), Some(19)),
        "{f}"
    );
    assert_eq!(
        second[0]["blobs"].as_u64(),
        Some(env.blob_keys().len() as u64 - blobs)
    );
});

/// `promtool check metrics` on `text`: its complaints, if any.
fn promtool(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; tests/run.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        String::new()
    } else {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

fn sample(text: &str, metric_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(metric_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {metric_and_labels} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn metrics_textfile_is_valid_atomic_and_remembers_failures() {
    let mut env = Env::new(Backend::Local);
    let prom = env.path().join("textfile/vaultik.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    env.extra.push(format!("metrics_file = {}", prom.display()));
    write_files(&env.src(), 5, "m");
    env.settle();
    env.create();
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(promtool(&text), "", "{text}");
    let labels = "{host=\"testhost\",snapshot=\"data\"}";
    let first_success = sample(
        &text,
        &format!("vaultik_last_success_timestamp_seconds{labels}"),
    );
    assert_eq!(
        sample(&text, &format!("vaultik_last_exit_status{labels}")),
        0.0
    );
    assert_eq!(
        sample(
            &text,
            "vaultik_last_files{host=\"testhost\",snapshot=\"data\",state=\"new\"}"
        ),
        5.0
    );
    assert_eq!(sample(&text, "vaultik_store_snapshots"), 1.0);
    assert_eq!(
        sample(&text, "vaultik_store_blobs"),
        env.blob_keys().len() as f64
    );

    // A reader never sees half a file while runs rewrite it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (prom, stop) = (prom.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = std::fs::read_to_string(&prom).unwrap();
                assert!(
                    t.ends_with('\n') && t.contains("vaultik_store_bytes "),
                    "{t}"
                );
                reads += 1;
            }
            reads
        })
    };
    std::thread::sleep(std::time::Duration::from_secs(1));
    for i in 0..3 {
        std::fs::write(env.src().join(format!("more{i}")), "x").unwrap();
        env.settle();
        env.create();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 10);
    // Nothing else is left in the directory.
    let names: Vec<_> = std::fs::read_dir(prom.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["vaultik.prom"]);

    // A failing run: recorded, the last success kept.
    env.raw = vec![
        format!("[snapshot data]\npath = {}", env.src().display()),
        "[snapshot gone]\npath = /nonexistent/vaultik-test".into(),
    ];
    env.write_config();
    let out = env.run(&["snapshot", "create", "--cron"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(promtool(&text), "", "{text}");
    let gone = "{host=\"testhost\",snapshot=\"gone\"}";
    assert_eq!(
        sample(&text, &format!("vaultik_last_exit_status{gone}")),
        2.0
    );
    assert_eq!(sample(&text, &format!("vaultik_last_success{gone}")), 0.0);
    assert!(!text.contains(&format!("vaultik_last_success_timestamp_seconds{gone}")));
    assert!(
        sample(
            &text,
            &format!("vaultik_last_success_timestamp_seconds{labels}")
        ) >= first_success
    );
    assert_eq!(
        sample(&text, &format!("vaultik_last_exit_status{labels}")),
        0.0
    );
}

#[test]
fn hooks_get_the_run_and_a_failing_before_skips_its_snapshot() {
    let mut env = Env::new(Backend::Local);
    let log = env.path().join("hooks.log");
    let script = |what: &str| {
        format!(
            "sh -c 'echo {what} name=$VAULTIK_SNAPSHOT_NAME id=$VAULTIK_SNAPSHOT_ID \
             exit=$VAULTIK_EXIT hook=$VAULTIK_HOOK >> {}; echo said-{what}'",
            log.display()
        )
    };
    env.extra
        .push(format!("hook_before = {}", script("gbefore")));
    env.extra.push(format!("hook_after = {}", script("gafter")));
    env.extra
        .push(format!("hook_on_error = {}", script("gerror")));
    let other = env.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    env.raw = vec![
        format!("[snapshot data]\npath = {}", env.src().display()),
        format!("hook_before = {}", script("before")),
        format!("hook_after = {}", script("after")),
        format!("[snapshot broken]\npath = {}", other.display()),
        "hook_before = sh -c 'echo cannot mount; exit 7'".into(),
        format!("hook_on_error = {}", script("error")),
    ];
    std::fs::write(env.src().join("a"), "a").unwrap();
    env.settle();
    let out = env.run(&["snapshot", "create"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    let ids = env.snapshot_ids();
    assert_eq!(ids.len(), 1, "only data is stored: {ids:?}");
    assert!(ids[0].contains("_data_"));
    // The hooks' output is in the log; the failing one named.
    assert!(err.contains("hook_before (global): said-gbefore"), "{err}");
    assert!(
        err.contains("hook_before [snapshot broken]: cannot mount"),
        "{err}"
    );
    assert!(
        err.contains("hook_before [snapshot broken] `sh` exited with status 7"),
        "{err}"
    );
    assert!(err.contains("snapshot(s) broken skipped"), "{err}");
    let lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let id = &ids[0];
    assert_eq!(
        lines,
        [
            "gbefore name=data id= exit= hook=before".to_string(),
            "before name=data id= exit= hook=before".to_string(),
            format!("after name=data id={id} exit=0 hook=after"),
            format!("gafter name=data id={id} exit=0 hook=after"),
            "gbefore name=broken id= exit= hook=before".to_string(),
            "error name=broken id= exit=2 hook=on_error".to_string(),
            "gerror name=broken id= exit=2 hook=on_error".to_string(),
        ]
    );

    // --cron: a hook's output only when it fails; a hook over its time
    // is killed and skips its snapshot.
    std::fs::remove_file(&log).unwrap();
    env.raw = vec![
        format!("[snapshot data]\npath = {}", env.src().display()),
        "hook_before = sleep 30".into(),
    ];
    env.extra.push("hook_timeout = 1s".into());
    env.write_config();
    let start = std::time::Instant::now();
    let out = env.run(&["snapshot", "create", "--cron"]);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(!err.contains("said-gbefore"), "{err}");
    assert!(
        err.contains("`sleep` took too long and was killed (hook_timeout 1s)"),
        "{err}"
    );
}

/// A local HTTP server answering `status` to every request; the requests
/// (method, path, body) as they came.
struct PingServer {
    url: String,
    got: Arc<Mutex<Vec<(String, String, String)>>>,
}

fn ping_server() -> PingServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            seen.lock()
                .unwrap()
                .push((method, path, String::from_utf8_lossy(&body).into_owned()));
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOK")
                .unwrap();
        }
    });
    PingServer { url, got }
}

#[test]
fn pings_in_order_and_a_dead_endpoint_does_not_fail_the_backup() {
    let server = ping_server();
    let mut env = Env::new(Backend::Local);
    env.extra
        .push(format!("ping_url = {}/0b8a1f2e-secret", server.url));
    std::fs::write(env.src().join("a"), "a").unwrap();
    env.settle();
    env.create();
    let got = server.got.lock().unwrap().clone();
    let paths: Vec<(&str, &str)> = got
        .iter()
        .map(|(m, p, _)| (m.as_str(), p.as_str()))
        .collect();
    assert_eq!(
        paths,
        [
            ("POST", "/0b8a1f2e-secret/start"),
            ("POST", "/0b8a1f2e-secret")
        ]
    );
    let summary: Value = serde_json::from_str(&got[1].2).unwrap();
    assert_eq!(summary["status"], "ok");

    // A failure: start, then fail with the error.
    server.got.lock().unwrap().clear();
    env.raw = vec!["[snapshot gone]\npath = /nonexistent/vaultik-test".into()];
    env.write_config();
    let out = env.run(&["snapshot", "create", "--cron"]);
    assert_eq!(out.status.code(), Some(2));
    let got = server.got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].1, "/0b8a1f2e-secret/start");
    assert_eq!(got[1].1, "/0b8a1f2e-secret/fail");
    assert!(got[1].2.contains("exit status 2"), "{}", got[1].2);
    assert!(
        got[1].2.contains("/nonexistent/vaultik-test"),
        "{}",
        got[1].2
    );

    // A run that cannot start (another run holds the lock): a failure ping.
    server.got.lock().unwrap().clear();
    env.raw.clear();
    env.write_config();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(env.path().join("state/index.sqlite.lock"))
        .unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let out = env.run(&["snapshot", "create", "--cron", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let o: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (o["name"].as_str(), o["status"].as_str()),
        (Some("data"), Some("failed"))
    );
    let got = server.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1, "/0b8a1f2e-secret/fail");
    drop(lock);

    // Nobody listening: a warning (without the URL's secret), exit 0.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/dead-secret", dead.local_addr().unwrap());
    drop(dead);
    let mut env = Env::new(Backend::Local);
    env.extra.push(format!("ping_url = {dead_url}"));
    std::fs::write(env.src().join("a"), "a").unwrap();
    let out = env.run(&["snapshot", "create", "--cron"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("health ping (start)"), "{err}");
    assert!(err.contains("health ping (success)"), "{err}");
    assert!(!err.contains("dead-secret"), "{err}");
    assert_eq!(env.snapshot_ids().len(), 1);
}
