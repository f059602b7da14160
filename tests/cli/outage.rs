//! Outages (issue 30): the S3 server (a real s3s-fs of the test's own, on a
//! fixed port) is stopped in the middle of a backup and of a restore, and
//! started again. Requests are retried for `retry_for`, with backoff: both
//! runs complete, the restore is identical, and the outage is said on one
//! line (and its end on another). A run that gives up exits 2, and the next
//! run puts none of the blobs the first one uploaded again.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::core::restored;
use crate::util::own_server::OwnServer;
use crate::util::proxy::{self, Proxy};
use crate::util::tree::assert_same_tree;
use crate::util::{Backend, Env, stderr};

/// A test's store on its own server, reached through a proxy that holds
/// each request for `delay` (so that a run lasts long enough to be cut),
/// with `retry_for`.
fn env_on_own_server(retry_for: &str, delay: Duration) -> (Env, OwnServer, Proxy) {
    let mut env = Env::new(Backend::S3);
    let own = OwnServer::start();
    let rec = proxy::start_with_delay(&own.endpoint(), delay);
    env.endpoint = rec.endpoint.clone();
    env.extra = vec!["blob_size_limit = 1MiB".into(), "chunk_size = 64KiB".into()];
    env.s3_extra = vec![format!("retry_for = {retry_for}")];
    env.random_files(16, 700_000, 77);
    env.write_config();
    (env, own, rec)
}

/// Wait until `cond`, at most `limit`.
fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn requests(rec: &Proxy, method: &str, part: &str) -> usize {
    rec.requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.method == method && r.target.contains(part))
        .count()
}

/// `args` run in the background with the private key; stderr kept.
fn spawn(env: &Env, args: &[&str]) -> Child {
    env.cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stop the server once the run has sent `started` requests that match,
/// for `outage`, then start it again; the run must still be going when it
/// stops. Returns the run's output.
fn cut(
    child: Child,
    own: &mut OwnServer,
    rec: &Proxy,
    started: (&str, &str, usize),
    outage: Duration,
) -> std::process::Output {
    let mut child = child;
    let (method, part, n) = started;
    wait_until(Duration::from_secs(60), "the run to start", || {
        requests(rec, method, part) >= n
    });
    own.down();
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before the outage"
    );
    std::thread::sleep(outage);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended during the outage"
    );
    own.up();
    child.wait_with_output().unwrap()
}

/// A backup and a restore, each cut by an outage of `outage`.
fn outage_mid_backup_and_restore(outage: Duration, retry_for: &str) {
    let (env, mut own, rec) = env_on_own_server(retry_for, Duration::from_millis(250));
    let t = Instant::now();
    let backup = spawn(&env, &["snapshot", "create"]);
    let out = cut(backup, &mut own, &rec, ("PUT", "blobs/", 2), outage);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(t.elapsed() >= outage);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "the outage and its end: {err}");
    assert!(
        lines[0].starts_with("vaultik: warning: the store is unreachable or failing (")
            && lines[0].contains(&format!(
                "vaultik keeps trying each request for up to {retry_for} (retry_for), until "
            )),
        "{err}"
    );
    assert!(
        lines[1].starts_with("vaultik: warning: the store answers again, after "),
        "{err}"
    );
    assert_eq!(env.snapshot_ids().len(), 1);

    let target = env.path().join("r");
    let restore = spawn(
        &env,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    let gets = requests(&rec, "GET", "blobs/");
    let out = cut(restore, &mut own, &rec, ("GET", "blobs/", gets + 2), outage);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("the store answers again"), "{err}");
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn a_store_outage_mid_backup_and_mid_restore_costs_a_delay() {
    outage_mid_backup_and_restore(Duration::from_secs(6), "2m");
}

#[test]
fn a_run_that_gives_up_exits_2_and_the_next_reuses_its_blobs() {
    let (env, mut own, rec) = env_on_own_server("3s", Duration::from_millis(250));
    let backup = spawn(&env, &["snapshot", "create"]);
    wait_until(Duration::from_secs(60), "two blobs stored", || {
        env.blob_keys().len() >= 2
    });
    own.down();
    let t = Instant::now();
    let out = backup.wait_with_output().unwrap();
    let took = t.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(took < Duration::from_secs(20), "gave up in {took:?}");
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(
        last.starts_with("vaultik: store ") && last.contains("; retry_for is 3s)"),
        "{err}"
    );
    own.up();
    let uploaded = env.blob_keys();
    assert!(uploaded.len() >= 2);
    let puts_before: Vec<String> = put_targets(&rec);
    env.create();
    let again: Vec<String> = put_targets(&rec)[puts_before.len()..].to_vec();
    for key in &uploaded {
        assert!(
            !again.iter().any(|t| t.contains(key.as_str())),
            "{key} uploaded again"
        );
    }
    // Distinct keys: a PUT tried again (the server just back) appears
    // twice, and two uploaders interleave theirs.
    let mut again_blobs: Vec<&String> = again.iter().filter(|t| t.contains("blobs/")).collect();
    again_blobs.sort();
    again_blobs.dedup();
    assert!(!again_blobs.is_empty(), "the rest is put");
    assert!(
        again_blobs.len() + 2 <= env.index_blob_keys().len(),
        "{} blobs put again of {}",
        again_blobs.len(),
        env.index_blob_keys().len()
    );
    let target = env.path().join("r");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

fn put_targets(rec: &Proxy) -> Vec<String> {
    rec.requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.target.clone())
        .collect()
}

/// The daemon's log, line by line, as it comes.
fn log_of(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::BufRead;
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let err = child.stderr.take().unwrap();
    let log2 = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            log2.lock().unwrap().push(line);
        }
    });
    log
}

/// A daemon, stopped when the test ends, whatever happens.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_daemon_waits_out_outages_at_start_and_mid_run() {
    let (mut env, mut own, _rec) = env_on_own_server("2s", Duration::ZERO);
    env.extra.extend(
        [
            "backup_interval = 2s",
            "settle_delay = 1s",
            "min_time_between_run = 1s",
            "full_scan_interval = 1h",
            "stop_timeout = 1s",
        ]
        .map(String::from),
    );
    env.write_config();
    own.down();
    let mut d = Daemon(
        env.cmd()
            .args(["snapshot", "create", "--daemon"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log = log_of(&mut d.0);
    let seen = |pat: &str| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(pat))
            .count()
    };
    let dump = || log.lock().unwrap().join("\n");
    // Down from the start: each run gives up after retry_for, the daemon
    // stays and tries again.
    wait_until(Duration::from_secs(30), "two failed runs", || {
        seen("vaultik daemon: error: run not started: store ") >= 2
    });
    assert!(
        seen("vaultik daemon: warning: the store is unreachable or failing (") >= 1,
        "{}",
        dump()
    );
    assert!(d.0.try_wait().unwrap().is_none(), "{}", dump());
    own.up();
    wait_until(Duration::from_secs(60), "the first run", || {
        seen("run finished") >= 1
    });
    assert!(seen("the store answers again") >= 1, "{}", dump());
    // Down again: a change cannot be backed up until it is back.
    own.down();
    let failed = seen("vaultik daemon: error: ");
    std::fs::write(env.src().join("new"), b"written during the outage").unwrap();
    wait_until(Duration::from_secs(60), "a failed run", || {
        seen("vaultik daemon: error: ") > failed
    });
    assert!(d.0.try_wait().unwrap().is_none(), "{}", dump());
    own.up();
    wait_until(Duration::from_secs(60), "the run again", || {
        seen("run finished") >= 2
    });
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    let status = d.0.wait().unwrap();
    assert!(status.success(), "{status}: {}", dump());
    assert_eq!(env.snapshot_ids().len(), 2, "{}", dump());
}

/// The issue's figure: the server stopped for 90 s while a backup and a
/// restore both run (at once, so the suite waits out one outage, not
/// two). Both complete, and what they moved is whole.
#[test]
fn a_90_second_outage_mid_backup_and_mid_restore_costs_a_delay() {
    let (mut env, mut own, rec) = env_on_own_server("15m", Duration::from_millis(300));
    let more = env.path().join("more");
    std::fs::create_dir_all(&more).unwrap();
    env.snapshots = vec![
        ("data".into(), vec![env.src()], Vec::new()),
        ("more".into(), vec![more.clone()], Vec::new()),
    ];
    env.write_config();
    env.ok(&["snapshot", "create", "data"]);
    let data = env.snapshot_ids()[0].clone();
    for i in 0..24u64 {
        std::fs::write(
            more.join(format!("m{i:02}")),
            crate::util::tree::random_bytes(700_000, 900 + i),
        )
        .unwrap();
    }
    env.settle();
    let puts = requests(&rec, "PUT", "blobs/");
    let mut backup = spawn(&env, &["snapshot", "create", "more"]);
    wait_until(Duration::from_secs(60), "the backup's first blob", || {
        requests(&rec, "PUT", "blobs/") > puts
    });
    let target = env.path().join("r");
    let gets = requests(&rec, "GET", "blobs/");
    let mut restore = spawn(
        &env,
        &["restore", &data, "--target", target.to_str().unwrap()],
    );
    wait_until(Duration::from_secs(60), "the restore's first blobs", || {
        requests(&rec, "GET", "blobs/") >= gets + 2
    });
    own.down();
    let t = Instant::now();
    for (what, child) in [("backup", &mut backup), ("restore", &mut restore)] {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the {what} ended first"
        );
    }
    std::thread::sleep(Duration::from_secs(90));
    for (what, child) in [("backup", &mut backup), ("restore", &mut restore)] {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the {what} ended during the outage"
        );
    }
    own.up();
    for (what, child) in [("backup", backup), ("restore", restore)] {
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(out.status.success(), "{what}: {err}");
        // Announced a second or two into the outage; back once the
        // server is, within one backoff step (a minute at most).
        let back = outage_secs(&err).unwrap_or_else(|| panic!("{what}: {err}"));
        assert!((85..=160).contains(&back), "{what}: {back} s: {err}");
    }
    eprintln!("both done {:?} after the outage began", t.elapsed());
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    let ids = env.snapshot_ids();
    let more_id = ids.iter().find(|id| id.contains("_more_")).unwrap();
    let target2 = env.path().join("r2");
    env.restore_ok(more_id, &target2, &[]);
    assert_same_tree(&more, &restored(&target2, &more));
}

/// The length of the outage a run reported (`the store answers again,
/// after 1m32s`), in seconds.
fn outage_secs(err: &str) -> Option<u64> {
    let span = err
        .split("the store answers again, after ")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let mut secs = 0;
    let mut n = 0;
    for c in span.chars() {
        match c {
            '0'..='9' => n = n * 10 + u64::from(c.to_digit(10)?),
            'h' => (secs, n) = (secs + n * 3600, 0),
            'm' => (secs, n) = (secs + n * 60, 0),
            's' => (secs, n) = (secs + n, 0),
            _ => return None,
        }
    }
    Some(secs)
}
