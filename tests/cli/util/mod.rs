//! Shared helpers for the integration tests: one real s3s-fs server per test
//! binary (a bucket per test), a scratch directory per test with its own key,
//! config and index, and a way to run the real `vaultik` binary in it.

#![allow(dead_code)]

pub mod fake_http;
pub mod faults;
pub mod forge;
pub mod iam;
pub mod moto;
pub mod own_server;
pub mod proxy;
pub mod tree;
pub mod tunnel;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Run the same test body against both stores (`Backend::S3` and `Backend::Local`).
macro_rules! both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn s3() {
                ($body)(Backend::S3)
            }
            #[test]
            fn local() {
                ($body)(Backend::Local)
            }
        }
    };
}

pub const ACCESS: &str = "vaultik-test-access";
pub const SECRET: &str = "vaultik-test-secret";

pub struct Server {
    pub endpoint: String,
    pub root: PathBuf,
}

/// The s3s-fs server shared by every test in this binary.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(start_server)
}

fn s3s_fs_binary() -> PathBuf {
    let home_bin = std::env::var("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin/s3s-fs"))
        .ok();
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("s3s-fs");
            if p.is_file() {
                return p;
            }
        }
    }
    match home_bin {
        Some(p) if p.is_file() => p,
        _ => panic!("s3s-fs is not installed: run `bash tests/run.sh`, which installs it"),
    }
}

fn start_server() -> Server {
    let root = std::env::temp_dir().join(format!("vaultik-test-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let bin = s3s_fs_binary();
    let root2 = root.clone();
    // The server is started from a thread that lives as long as the test
    // process, with PR_SET_PDEATHSIG, so it dies with us.
    std::thread::spawn(move || {
        let mut cmd = Command::new(bin);
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--access-key",
            ACCESS,
            "--secret-key",
            SECRET,
        ])
        .arg(&root2)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start s3s-fs");
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || scan_for_port(BufReader::new(err), tx2));
        std::thread::spawn(move || scan_for_port(BufReader::new(out), tx));
        let _ = child.wait();
        loop {
            std::thread::park();
        }
    });
    let port: u16 = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("s3s-fs did not report its port");
    Server {
        endpoint: format!("http://127.0.0.1:{port}"),
        root,
    }
}

fn scan_for_port(r: impl BufRead, tx: std::sync::mpsc::Sender<u16>) {
    for line in r.lines() {
        let Ok(line) = line else { return };
        if let Some(i) = line.find("http://127.0.0.1:") {
            let rest = &line[i + "http://127.0.0.1:".len()..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if let Ok(p) = digits.parse() {
                let _ = tx.send(p);
            }
        }
    }
}

static BUCKETS: AtomicUsize = AtomicUsize::new(0);

/// Which store a test runs against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Backend {
    S3,
    Local,
    /// moto's S3 server (storage classes, thaws, checksums).
    Moto,
    /// moto checking signatures and IAM policies (`iam.rs`): the config
    /// holds no key, the test gives credentials its own way.
    Iam,
}

/// One test's world: scratch dir, key pair, source tree, store, index.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    pub bucket: String,
    pub identity: String,
    pub recipient: String,
    pub endpoint: String,
    /// Extra lines for the global section of the config.
    pub extra: Vec<String>,
    /// Extra lines for the `[s3]` section.
    pub s3_extra: Vec<String>,
    pub snapshots: Vec<(String, Vec<PathBuf>, Vec<String>)>,
    /// Lines for the end of the config (sections of their own).
    pub raw: Vec<String>,
}

/// The binary under test: this build's, or `VAULTIK_TEST_BIN` (to check
/// that a test fails on an older build).
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("VAULTIK_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_vaultik").into())
    })
}

impl Env {
    pub fn new(backend: Backend) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("vaultik-t")
            .tempdir()
            .unwrap();
        let n = BUCKETS.fetch_add(1, Ordering::Relaxed);
        let bucket = format!("b{}-{n}", std::process::id());
        let endpoint = match backend {
            Backend::S3 => {
                let s = server();
                std::fs::create_dir_all(s.root.join(&bucket)).unwrap();
                s.endpoint.clone()
            }
            Backend::Moto => {
                moto::create_bucket(&bucket);
                moto::moto().endpoint.clone()
            }
            Backend::Iam => {
                iam::iam().create_bucket(&bucket, false);
                iam::iam().endpoint.clone()
            }
            Backend::Local => String::new(),
        };
        let out = Command::new(bin()).arg("keygen").output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let identity = text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap()
            .to_string();
        let recipient = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .unwrap()
            .to_string();
        let env = Env {
            dir,
            backend,
            bucket,
            identity,
            recipient,
            endpoint,
            extra: Vec::new(),
            s3_extra: Vec::new(),
            snapshots: Vec::new(),
            raw: Vec::new(),
        };
        std::fs::create_dir_all(env.src()).unwrap();
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The default source tree, backed up by snapshot `data`.
    pub fn src(&self) -> PathBuf {
        self.path().join("src")
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("vaultik.conf")
    }

    pub fn index_path(&self) -> PathBuf {
        self.path().join("state/index.sqlite")
    }

    /// Where the store keeps its objects on disk (for inspection and damage).
    pub fn store_dir(&self) -> PathBuf {
        match self.backend {
            Backend::S3 => server().root.join(&self.bucket),
            Backend::Local => self.path().join("store"),
            Backend::Moto | Backend::Iam => {
                panic!("moto keeps its objects in memory: use util::moto::keys")
            }
        }
    }

    /// `--store` value that reaches this test's store without a config.
    pub fn store_spec(&self) -> String {
        match self.backend {
            Backend::S3 | Backend::Moto | Backend::Iam => format!("s3://{}/host1/", self.bucket),
            Backend::Local => self.store_dir().display().to_string(),
        }
    }

    pub fn write_config(&self) {
        let mut c = format!(
            "age_recipient = {}\nindex_path = {}\nhostname = testhost\n",
            self.recipient,
            self.index_path().display()
        );
        for l in &self.extra {
            c.push_str(l);
            c.push('\n');
        }
        match self.backend {
            Backend::S3 | Backend::Moto => {
                c.push_str(&format!(
                    "[s3]\nendpoint = {}\nbucket = {}\nprefix = host1/\nregion = us-east-1\n\
                     access_key_id = {ACCESS}\nsecret_access_key = {SECRET}\n",
                    self.endpoint, self.bucket
                ));
                for l in &self.s3_extra {
                    c.push_str(l);
                    c.push('\n');
                }
            }
            Backend::Iam => {
                c.push_str(&format!(
                    "[s3]\nendpoint = {}\nbucket = {}\nprefix = host1/\nregion = us-east-1\n",
                    self.endpoint, self.bucket
                ));
                for l in &self.s3_extra {
                    c.push_str(l);
                    c.push('\n');
                }
            }
            Backend::Local => {
                c.push_str(&format!("[local]\npath = {}\n", self.store_dir().display()))
            }
        }
        if self.snapshots.is_empty() && self.raw.is_empty() {
            c.push_str(&format!(
                "[snapshot data]\npath = {}\n",
                self.src().display()
            ));
        }
        for (name, paths, excludes) in &self.snapshots {
            c.push_str(&format!("[snapshot {name}]\n"));
            for p in paths {
                c.push_str(&format!("path = {}\n", p.display()));
            }
            for e in excludes {
                c.push_str(&format!("exclude = {e}\n"));
            }
        }
        for l in &self.raw {
            c.push_str(l);
            c.push('\n');
        }
        std::fs::write(self.config_path(), c).unwrap();
    }

    /// A `vaultik` command with a clean environment and this test's config.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(bin());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.path())
            .env("VAULTIK_CONFIG", self.config_path())
            .current_dir(self.path())
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        if !self.config_path().exists() {
            self.write_config();
        }
        self.cmd().args(args).output().unwrap()
    }

    /// Run with this test's private key in the environment.
    pub fn run_with_key(&self, args: &[&str]) -> Output {
        if !self.config_path().exists() {
            self.write_config();
        }
        self.cmd()
            .env("VAULTIK_PRIVATE_KEY", &self.identity)
            .args(args)
            .output()
            .unwrap()
    }

    /// Run and insist on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vaultik {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Send this test's S3 requests through a proxy that holds each one for
    /// `delay`: a slow network, so a test can act while a backup runs.
    pub fn slow_store(&mut self, delay: std::time::Duration) {
        self.endpoint = proxy::start_with_delay(&self.endpoint, delay).endpoint;
    }

    /// `n` files `f00`, `f01`... of `size` seeded random bytes in the source.
    pub fn random_files(&self, n: u64, size: usize, seed: u64) {
        for i in 0..n {
            std::fs::write(
                self.src().join(format!("f{i:02}")),
                tree::random_bytes(size, seed + i),
            )
            .unwrap();
        }
    }

    /// `snapshot create` in the background; its stderr is kept for the test.
    pub fn spawn_create(&self) -> Child {
        if !self.config_path().exists() {
            self.write_config();
        }
        self.cmd()
            .args(["snapshot", "create"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Wait until files just written are old enough for a run to trust
    /// their stat next time: vaultik reads again, on the next run, files
    /// whose ctime is within 100 ms of a run's start (file times tick
    /// coarsely, so a later write could leave the same stat).
    pub fn settle(&self) {
        std::thread::sleep(std::time::Duration::from_millis(150));
    }

    pub fn create(&self) -> String {
        self.ok(&["snapshot", "create"])
    }

    pub fn restore_to(&self, snapshot: &str, target: &Path, paths: &[&str]) -> Output {
        let mut args = vec!["restore", snapshot, "--target", target.to_str().unwrap()];
        args.extend_from_slice(paths);
        if !self.config_path().exists() {
            self.write_config();
        }
        self.cmd()
            .env("VAULTIK_PRIVATE_KEY", &self.identity)
            .args(&args)
            .output()
            .unwrap()
    }

    pub fn restore_ok(&self, snapshot: &str, target: &Path, paths: &[&str]) -> String {
        let out = self.restore_to(snapshot, target, paths);
        assert!(
            out.status.success(),
            "restore failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Ids from `snapshot list --json`.
    pub fn snapshot_ids(&self) -> Vec<String> {
        let out = self.ok(&["snapshot", "list", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }

    /// Every object in the store: (key relative to the prefix, bytes).
    pub fn objects(&self) -> Vec<(String, Vec<u8>)> {
        let base = match self.backend {
            Backend::S3 | Backend::Moto | Backend::Iam => self.store_dir().join("host1"),
            Backend::Local => self.store_dir(),
        };
        let mut out = Vec::new();
        for p in tree::files_under(&base) {
            let key = p.strip_prefix(&base).unwrap().to_str().unwrap().to_string();
            out.push((key, std::fs::read(&p).unwrap()));
        }
        out
    }

    /// Blob keys the local index records (the connection is closed again
    /// before returning: runs open the index exclusively).
    pub fn index_blob_keys(&self) -> Vec<String> {
        let conn = rusqlite::Connection::open(self.index_path()).unwrap();
        let mut st = conn.prepare("SELECT key FROM blobs").unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    pub fn blob_keys(&self) -> Vec<String> {
        self.objects()
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("blobs/"))
            .collect()
    }
}

/// A number from the environment for longer runs (`tests/soak.sh`), or
/// `default` in the test suite.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A figure from a `snapshot create` summary line, e.g. `new chunks`.
pub fn figure(summary: &str, label: &str) -> u64 {
    let i = summary
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in {summary}"));
    let before = summary[..i].trim_end();
    let num: String = before
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("no number before `{label}` in {summary}"))
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The same rendering as vaultik's summaries (`1.5 MiB`).
pub fn human(n: u64) -> String {
    vaultik::human_bytes(n)
}

/// A config for another host backing up `src` into the same bucket and
/// prefix as `env`, with its own index.
pub fn host_config(env: &Env, host: &str, src: &std::path::Path) -> std::path::PathBuf {
    if !env.config_path().exists() {
        env.write_config();
    }
    let text = std::fs::read_to_string(env.config_path())
        .unwrap()
        .replace(
            env.index_path().to_str().unwrap(),
            env.path().join(host).join("index.sqlite").to_str().unwrap(),
        )
        .replace("hostname = testhost", &format!("hostname = {host}"))
        .replace(
            &format!("path = {}\n", env.src().display()),
            &format!("path = {}\n", src.display()),
        );
    let path = env.path().join(format!("{host}.conf"));
    std::fs::write(&path, text).unwrap();
    path
}

pub fn run_as(env: &Env, conf: &std::path::Path, args: &[&str]) -> std::process::Output {
    env.cmd()
        .env("VAULTIK_CONFIG", conf)
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(args)
        .output()
        .unwrap()
}
