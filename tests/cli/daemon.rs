//! Daemon mode (issue 4) with real inotify: intervals shortened through the
//! config, changes made on disk, snapshots counted in the store.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::restored;
use crate::util::tree::{assert_same_tree, random_bytes};
use crate::util::{Backend, Env};

/// Daemons start one at a time: the overflow test shrinks a system-wide
/// inotify limit while its daemon initialises.
static STARTING: Mutex<()> = Mutex::new(());

struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(env: &Env, extra_args: &[&str]) -> Daemon {
        let mut cmd = env.cmd();
        cmd.args(["snapshot", "create", "--daemon"])
            .args(extra_args);
        Daemon::spawn(cmd, true)
    }

    /// Start `cmd`; unless `quiet`, wait until it says it is watching.
    fn spawn(mut cmd: Command, wait_for_watching: bool) -> Daemon {
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push(line);
            }
        });
        let d = Daemon { child, log };
        if wait_for_watching {
            d.wait_log("watching", Duration::from_secs(20));
        }
        d
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, pat: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(pat)).count()
    }

    /// Wait until `pat` has appeared in the log `n` times.
    fn wait_count(&self, pat: &str, n: usize, timeout: Duration) {
        let end = Instant::now() + timeout;
        while self.count(pat) < n {
            assert!(
                Instant::now() < end,
                "waited {timeout:?} for {n}x `{pat}`; log:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_log(&self, pat: &str, timeout: Duration) {
        self.wait_count(pat, 1, timeout)
    }

    fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// SIGTERM, and the exit status (which must come within `timeout`).
    fn stop(mut self, timeout: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < end,
                "daemon did not stop; log:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Snapshot ids per name.
fn count_named(env: &Env, name: &str) -> usize {
    env.snapshot_ids()
        .iter()
        .filter(|id| id.starts_with(&format!("testhost_{name}_")))
        .count()
}

fn fast(env: &mut Env) {
    env.extra.extend(
        [
            "backup_interval = 2s",
            "settle_delay = 2s",
            "min_time_between_run = 1s",
            "full_scan_interval = 1h",
            "stop_timeout = 1s",
        ]
        .map(String::from),
    );
}

#[test]
fn a_change_makes_exactly_one_snapshot_after_the_settle_delay() {
    let mut env = Env::new(Backend::S3);
    fast(&mut env);
    fs::write(env.src().join("f.txt"), b"one").unwrap();
    env.write_config();
    let d = Daemon::start(&env, &[]);
    d.wait_log("run finished", Duration::from_secs(20));
    assert_eq!(count_named(&env, "data"), 1);
    // Quiet for longer than backup_interval: nothing changed, no snapshot.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count_named(&env, "data"), 1, "{}", d.lines().join("\n"));
    let changed_at = Instant::now();
    fs::write(env.src().join("f.txt"), b"two").unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(count_named(&env, "data"), 1, "ran before the settle delay");
    d.wait_count("run finished", 2, Duration::from_secs(10));
    assert!(changed_at.elapsed() >= Duration::from_secs(2));
    assert_eq!(count_named(&env, "data"), 2);
    // And nothing more while nothing changes.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(count_named(&env, "data"), 2, "{}", d.lines().join("\n"));
    assert!(d.stop(Duration::from_secs(10)).success());
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

/// Issue 20: on a locked bucket the daemon's runs, like `snapshot create`,
/// send only what a write-only host key allows (no GET, no DELETE).
#[test]
fn a_daemon_on_a_locked_bucket_reads_and_deletes_nothing() {
    let (mut env, p) = crate::immutable::locked_env("2d");
    fast(&mut env);
    env.write_config();
    let d = Daemon::start(&env, &[]);
    d.wait_log("run finished", Duration::from_secs(30));
    fs::write(env.src().join("small.txt"), b"changed").unwrap();
    d.wait_count("run finished", 2, Duration::from_secs(30));
    // Its mode set again, the same: a run that finds nothing changed
    // checks that the last snapshot is still there, from a listing (a HEAD
    // needs s3:GetObject), and publishes nothing.
    use std::os::unix::fs::PermissionsExt;
    let small = env.src().join("small.txt");
    let mode = fs::metadata(&small).unwrap().permissions().mode();
    fs::set_permissions(&small, fs::Permissions::from_mode(mode)).unwrap();
    d.wait_log("nothing changed, no snapshot", Duration::from_secs(30));
    assert!(d.stop(Duration::from_secs(10)).success());
    let reqs = p.requests.lock().unwrap().clone();
    crate::immutable::assert_write_only(&reqs, &env.bucket, "daemon");
    assert!(
        reqs.iter()
            .filter(|r| r.method == "PUT")
            .all(|r| r.header("x-amz-object-lock-mode") == Some("COMPLIANCE")),
        "every PUT locked"
    );
    assert_eq!(count_named(&env, "data"), 2);
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn the_daemon_sees_nothing_changed_since_a_snapshot_made_by_create() {
    // `snapshot create` does not record a digest (only the daemon compares):
    // the daemon's first scan computes the kept snapshot's, and finds it equal.
    let mut env = Env::new(Backend::Local);
    fast(&mut env);
    fs::write(env.src().join("f.txt"), b"one").unwrap();
    env.write_config();
    env.settle();
    env.create();
    assert_eq!(count_named(&env, "data"), 1);
    let d = Daemon::start(&env, &[]);
    d.wait_log("nothing changed, no snapshot", Duration::from_secs(20));
    assert_eq!(count_named(&env, "data"), 1, "{}", d.lines().join("\n"));
    // A change after that is still a new snapshot.
    fs::write(env.src().join("f.txt"), b"two").unwrap();
    d.wait_log("run finished", Duration::from_secs(20));
    assert_eq!(count_named(&env, "data"), 2, "{}", d.lines().join("\n"));
    assert!(d.stop(Duration::from_secs(10)).success());
}

#[test]
fn hard_links_outside_the_changed_subtree_stay_links() {
    // A change in b/ makes a run that walks only b/ and carries the rest
    // over from the last snapshot: a/'s hard links must come with it.
    let mut env = Env::new(Backend::Local);
    fast(&mut env);
    let (a, b) = (env.src().join("a"), env.src().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    fs::write(a.join("f"), b"linked").unwrap();
    fs::hard_link(a.join("f"), a.join("g")).unwrap();
    fs::write(b.join("x"), b"one").unwrap();
    env.write_config();
    let d = Daemon::start(&env, &[]);
    d.wait_log("run finished", Duration::from_secs(20));
    fs::write(b.join("x"), b"two").unwrap();
    d.wait_count("run finished", 2, Duration::from_secs(20));
    assert!(
        d.lines().iter().any(|l| l.contains("1 changed subtree(s)")),
        "the second run was not incremental:\n{}",
        d.lines().join("\n")
    );
    assert!(d.stop(Duration::from_secs(10)).success());
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    let dest = restored(&target, &env.src());
    assert_same_tree(&env.src(), &dest);
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| fs::metadata(dest.join(p)).unwrap().ino();
    assert_eq!(ino("a/f"), ino("a/g"), "a/g is no longer a link of a/f");
    assert_eq!(fs::read(dest.join("b/x")).unwrap(), b"two");
}

#[test]
fn an_incremental_run_whose_carried_chunks_were_purged_walks_everything() {
    // A change in b/ makes a run that carries a/ over from the last
    // snapshot; if a/'s blobs were deleted meanwhile (a purge elsewhere),
    // the index forgets them when the run starts, the carried chunks cannot
    // be located, and the run becomes a full one that stores a/ again.
    let mut env = Env::new(Backend::Local);
    fast(&mut env);
    env.extra.push("chunk_size = 64KiB".into());
    let (a, b) = (env.src().join("a"), env.src().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    fs::write(a.join("big"), random_bytes(600_000, 5)).unwrap();
    fs::write(b.join("x"), b"one").unwrap();
    env.write_config();
    let d = Daemon::start(&env, &[]);
    d.wait_log("run finished", Duration::from_secs(20));
    for key in env.blob_keys() {
        fs::remove_file(env.store_dir().join(&key)).unwrap();
    }
    fs::write(b.join("x"), b"two").unwrap();
    d.wait_count("run finished", 2, Duration::from_secs(30));
    let log = d.lines().join("\n");
    assert!(log.contains("1 changed subtree(s)"), "{log}");
    assert!(log.contains("gone from the store"), "{log}");
    assert!(!log.contains("error"), "{log}");
    assert!(d.stop(Duration::from_secs(10)).success());
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    let out = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(["snapshot", "verify", "latest", "--deep"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
}

#[test]
fn a_change_in_one_name_does_not_snapshot_another() {
    let mut env = Env::new(Backend::Local);
    fast(&mut env);
    let (a, b) = (env.path().join("a"), env.path().join("b"));
    for d in [&a, &b] {
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("sub/f"), b"x").unwrap();
    }
    env.snapshots = vec![
        ("alpha".into(), vec![a.clone()], vec![]),
        ("beta".into(), vec![b.clone()], vec![]),
    ];
    env.write_config();
    let d = Daemon::start(&env, &[]);
    d.wait_count("run finished", 2, Duration::from_secs(20));
    fs::write(b.join("sub/f"), b"changed").unwrap();
    d.wait_count("run finished", 3, Duration::from_secs(15));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(count_named(&env, "alpha"), 1);
    assert_eq!(count_named(&env, "beta"), 2);
    assert!(d.stop(Duration::from_secs(10)).success());
}

#[test]
fn files_in_new_subdirectories_are_picked_up() {
    let mut env = Env::new(Backend::S3);
    fast(&mut env);
    fs::write(env.src().join("top"), b"top").unwrap();
    env.write_config();
    let d = Daemon::start(&env, &[]);
    d.wait_log("run finished", Duration::from_secs(20));
    let deep = env.src().join("new/deeper");
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("a.txt"), b"first").unwrap();
    d.wait_count("run finished", 2, Duration::from_secs(15));
    // The new directory is watched: a change inside it alone is seen.
    std::thread::sleep(Duration::from_millis(1500));
    fs::write(deep.join("a.txt"), b"second version").unwrap();
    d.wait_count("run finished", 3, Duration::from_secs(15));
    assert!(d.stop(Duration::from_secs(10)).success());
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn quiet_with_cron_logs_nothing_routine() {
    let mut env = Env::new(Backend::Local);
    fast(&mut env);
    fs::write(env.src().join("f"), b"x").unwrap();
    env.write_config();
    let mut cmd = env.cmd();
    cmd.args(["snapshot", "create", "--daemon", "--cron"]);
    let d = Daemon::spawn(cmd, false);
    let end = Instant::now() + Duration::from_secs(20);
    while !env.store_dir().join("metadata").exists() || count_named(&env, "data") < 1 {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.lines().is_empty(), "{:?}", d.lines());
    assert!(d.stop(Duration::from_secs(10)).success());
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn running_out_of_watches_falls_back_to_full_scans() {
    assert!(
        is_root(),
        "this test sets inotify limits in a user namespace and needs root"
    );
    let mut env = Env::new(Backend::Local);
    fast(&mut env);
    let mut deep = env.src();
    for i in 0..6 {
        deep.push(format!("d{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("f"), b"before").unwrap();
    env.write_config();
    // A user namespace of our own, where only two watches may exist.
    let script = format!(
        "echo 2 > /proc/sys/user/max_inotify_watches && exec {} snapshot create --daemon",
        crate::util::bin()
    );
    let mut unshare = Command::new("unshare");
    unshare
        .args(["-Ur", "sh", "-c", &script])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", env.path())
        .env("VAULTIK_CONFIG", env.config_path())
        .current_dir(env.path())
        .stdin(Stdio::null());
    let d = Daemon::spawn(unshare, true);
    d.wait_log("out of inotify watches", Duration::from_secs(5));
    d.wait_log("run finished", Duration::from_secs(20));
    // A change where no watch reaches is still found, by the fallback scan.
    fs::write(deep.join("f"), b"after, found by a full scan").unwrap();
    d.wait_count("run finished", 2, Duration::from_secs(20));
    assert!(d.stop(Duration::from_secs(10)).success());
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn queue_overflow_falls_back_to_a_full_scan() {
    assert!(
        is_root(),
        "this test shrinks fs.inotify.max_queued_events and needs root"
    );
    let mut env = Env::new(Backend::Local);
    fast(&mut env);
    fs::write(env.src().join("seed"), b"seed").unwrap();
    env.write_config();
    let knob = PathBuf::from("/proc/sys/fs/inotify/max_queued_events");
    let d = {
        // Hold the start lock across the change so no other daemon starts
        // with the small queue; the limit is read when inotify is created.
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let old = fs::read_to_string(&knob).unwrap();
        fs::write(&knob, "8").unwrap();
        let mut cmd = env.cmd();
        cmd.args(["snapshot", "create", "--daemon"])
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                log2.lock().unwrap().push(line);
            }
        });
        let d = Daemon { child, log };
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            d.wait_log("watching", Duration::from_secs(20))
        }));
        fs::write(&knob, old.trim()).unwrap();
        waited.unwrap();
        d
    };
    d.wait_log("run finished", Duration::from_secs(20));
    // Freeze the daemon, make far more events than its queue holds, thaw it.
    d.signal(libc::SIGSTOP);
    for i in 0..100 {
        fs::write(env.src().join(format!("burst{i}")), random_bytes(100, i)).unwrap();
    }
    d.signal(libc::SIGCONT);
    d.wait_log("overflowed", Duration::from_secs(10));
    d.wait_count("run finished", 2, Duration::from_secs(20));
    assert!(d.lines().iter().any(|l| l.contains("full scan")));
    assert!(d.stop(Duration::from_secs(10)).success());
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn sigterm_during_a_backup_leaves_everything_consistent() {
    let mut env = Env::new(Backend::S3);
    fast(&mut env);
    env.extra.push("blob_size_limit = 1MiB".into());
    let real = env.endpoint.clone();
    let slow = crate::util::proxy::start_with_delay(&real, Duration::from_millis(300));
    env.endpoint = slow.endpoint.clone();
    for i in 0..20 {
        fs::write(
            env.src().join(format!("f{i:02}")),
            random_bytes(1_000_000, 300 + i),
        )
        .unwrap();
    }
    env.write_config();
    let d = Daemon::start(&env, &[]);
    let end = Instant::now() + Duration::from_secs(30);
    while env.blob_keys().is_empty() {
        assert!(
            Instant::now() < end,
            "no upload started: {}",
            d.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = d.stop(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(
        env.snapshot_ids().is_empty(),
        "a half-made snapshot was published"
    );
    // The index only names blobs that are in the bucket.
    let blobs = env.blob_keys();
    for k in env.index_blob_keys() {
        assert!(
            blobs.contains(&k),
            "index names {k}, which is not in the bucket"
        );
    }
    // The next start completes the backup.
    env.endpoint = real;
    env.write_config();
    let d = Daemon::start(&env, &[]);
    d.wait_log("run finished", Duration::from_secs(30));
    assert!(d.stop(Duration::from_secs(10)).success());
    assert_eq!(env.snapshot_ids().len(), 1);
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn command_snapshots_run_with_each_full_scan() {
    let mut env = Env::new(Backend::Local);
    fast(&mut env);
    env.extra.retain(|l| !l.starts_with("full_scan_interval"));
    env.extra.push("full_scan_interval = 3s".into());
    let dump = env.path().join("dump");
    fs::write(&dump, "one").unwrap();
    fs::write(env.src().join("f.txt"), b"files").unwrap();
    env.raw.extend([
        "[snapshot data]".to_string(),
        format!("path = {}", env.src().display()),
        "[snapshot db]".to_string(),
        format!("command = cat {}", dump.display()),
        // Fed by --stdin from elsewhere: never run by the daemon.
        "[snapshot fed]".to_string(),
    ]);
    env.write_config();
    let d = Daemon::start(&env, &[]);
    d.wait_count("run finished", 2, Duration::from_secs(20));
    assert_eq!(count_named(&env, "db"), 1);
    // The next full scan: the same output, no snapshot.
    d.wait_log("db: nothing changed, no snapshot", Duration::from_secs(20));
    assert_eq!(count_named(&env, "db"), 1);
    // Another output: a snapshot, with no inotify event to tell.
    fs::write(&dump, "two").unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while count_named(&env, "db") < 2 {
        assert!(Instant::now() < end, "{}", d.lines().join("\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count_named(&env, "fed"), 0);
    assert!(d.stop(Duration::from_secs(10)).success());
    let out = env.run_with_key(&["restore", "latest", "--stdout", "/stdin/db"]);
    assert!(out.status.success());
    let ids = env.snapshot_ids();
    let db = ids.iter().rfind(|i| i.starts_with("testhost_db_")).unwrap();
    let out = env.run_with_key(&["restore", db, "--stdout"]);
    assert_eq!(out.stdout, b"two");
}

/// Issue 32: the daemon tells what it is doing: a status file beside the
/// index after each run (last run, result, pending changes, next run,
/// watched directories), the same on SIGUSR1 in the log, the metrics
/// textfile and the journal's priorities.
#[test]
fn the_daemon_status_after_two_runs() {
    let mut env = Env::new(Backend::Local);
    fast(&mut env);
    let prom = env.path().join("vaultik.prom");
    env.extra.push(format!("metrics_file = {}", prom.display()));
    let other = env.path().join("other");
    fs::create_dir_all(other.join("sub")).unwrap();
    env.raw = vec![
        format!("[snapshot data]\npath = {}", env.src().display()),
        format!("[snapshot other]\npath = {}", other.display()),
    ];
    fs::write(env.src().join("f.txt"), b"one").unwrap();
    env.write_config();
    let mut cmd = env.cmd();
    cmd.args(["snapshot", "create", "--daemon"])
        .env("JOURNAL_STREAM", "8:1234");
    let d = Daemon::spawn(cmd, true);
    d.wait_count("run finished", 2, Duration::from_secs(20));
    fs::write(env.src().join("f.txt"), b"two").unwrap();
    d.wait_count("run finished", 3, Duration::from_secs(20));
    // A change in `other` not yet backed up: pending.
    std::thread::sleep(Duration::from_millis(300));
    fs::write(other.join("sub/new"), b"x").unwrap();
    let status_path = env
        .index_path()
        .parent()
        .unwrap()
        .join("daemon-status.json");
    let end = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(&status_path).unwrap()).unwrap();
        if v["snapshots"][1]["pending"].is_string() || Instant::now() > end {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status["watched_directories"], 3, "{status}");
    let data = &status["snapshots"][0];
    assert_eq!(data["name"], "data");
    assert_eq!(data["result"], "ok", "{status}");
    assert_eq!(
        data["last_snapshot"].as_str(),
        env.snapshot_ids()
            .iter()
            .rfind(|i| i.contains("_data_"))
            .map(String::as_str)
    );
    assert!(data["pending"].is_null(), "{status}");
    let other_s = &status["snapshots"][1];
    assert_eq!(other_s["result"], "ok");
    assert_eq!(other_s["pending"], "1 changed subtree(s)", "{status}");
    assert!(status["next_run"].as_str().unwrap().ends_with('Z'));
    // SIGUSR1: the same, in the log.
    d.signal(libc::SIGUSR1);
    d.wait_log("status: other: last run", Duration::from_secs(5));
    assert_eq!(d.count("status: data: last run"), 1);
    // Under systemd, lines carry their priority.
    let lines = d.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>vaultik daemon: run finished")),
        "{}",
        lines.join("\n")
    );
    // The textfile has both names.
    let text = fs::read_to_string(&prom).unwrap();
    for name in ["data", "other"] {
        assert!(
            text.contains(&format!(
                "vaultik_last_exit_status{{host=\"testhost\",snapshot=\"{name}\"}} 0"
            )),
            "{text}"
        );
    }
    assert!(d.stop(Duration::from_secs(10)).success());
}
