//! Shipping: the static musl binary restoring in an empty root (the rescue
//! USB case), and TLS with no system certificates.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::core::restored;
use crate::util::tree::{assert_same_tree, populate_all_kinds};
use crate::util::{self, Backend, Env, stderr};

const MUSL: &str = "x86_64-unknown-linux-musl";

/// The static binary, built (or found up to date) by cargo.
fn static_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--locked", "--target", MUSL])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the static build failed (README: `rustup target add {MUSL}`, \
         `apt-get install musl-tools`):\n{}",
        stderr(&out)
    );
    root.join("target").join(MUSL).join("release/vaultik")
}

#[test]
fn the_static_binary_restores_in_an_empty_root() {
    let bin = static_binary();
    // Fully static: no interpreter, no shared libraries.
    let ldd = Command::new("ldd").arg(&bin).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        said.contains("not a dynamic executable") || said.contains("statically linked"),
        "ldd: {said}"
    );

    let env = Env::new(Backend::S3);
    populate_all_kinds(&env.src());
    env.create();

    // The empty root: the binary, /tmp and /dev/null, nothing else (no
    // /etc, no certificates, no resolver, no libc).
    let root = env.path().join("root");
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::copy(&bin, root.join("vaultik")).unwrap();
    let made = Command::new("mknod")
        .args(["-m", "666"])
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(made.success(), "mknod /dev/null (needs root)");
    // Found through the test's PATH, which may lack /usr/sbin.
    let chroot = ["/usr/sbin/chroot", "/sbin/chroot", "/usr/bin/chroot"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("chroot");
    let out = Command::new(chroot)
        .arg(&root)
        .args(["/vaultik", "--store", &env.store_spec(), "--endpoint"])
        .arg(&env.endpoint)
        .args(["restore", "latest", "--target", "/restored"])
        .env_clear()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .env("AWS_ACCESS_KEY_ID", util::ACCESS)
        .env("AWS_SECRET_ACCESS_KEY", util::SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chroot restore failed: {}",
        stderr(&out)
    );
    assert_same_tree(&env.src(), &restored(&root.join("restored"), &env.src()));
    let mut left: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["dev", "restored", "tmp", "vaultik"],
        "nothing else written"
    );
}

/// A TLS terminator (socat) in front of the test's s3s-fs, with a server
/// certificate for 127.0.0.1 signed by a CA made for this test.
struct Tls {
    child: Child,
    endpoint: String,
    ca: PathBuf,
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

fn tls_in_front(env: &Env) -> Tls {
    let dir = env.path().join("pki");
    fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=vaultik test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let upstream = env.endpoint.trim_start_matches("http://");
    let child = Command::new("socat")
        .arg(format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={},key={}",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ))
        .arg(format!("TCP:{upstream}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (tests/run.sh installs it)");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "socat did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Tls {
        child,
        endpoint: format!("https://127.0.0.1:{port}"),
        ca: dir.join("ca.pem"),
    }
}

#[test]
fn https_works_with_no_system_certificates() {
    let mut env = Env::new(Backend::S3);
    let tls = tls_in_front(&env);
    env.endpoint = tls.endpoint.clone();
    env.write_config();
    populate_all_kinds(&env.src());
    // No system store at all: only the CA given to vaultik.
    let run = |args: &[&str], ca: Option<&Path>| {
        let mut cmd = env.cmd();
        cmd.env("SSL_CERT_FILE", "/nonexistent/ca.pem")
            .env("SSL_CERT_DIR", "/nonexistent")
            .env("VAULTIK_PRIVATE_KEY", &env.identity);
        if let Some(ca) = ca {
            cmd.env("VAULTIK_CA_FILE", ca);
        }
        cmd.args(args).output().unwrap()
    };
    let out = run(&["snapshot", "create"], Some(&tls.ca));
    assert!(out.status.success(), "backup over https: {}", stderr(&out));
    let target = env.path().join("restored");
    let out = run(
        &["restore", "latest", "--target", target.to_str().unwrap()],
        Some(&tls.ca),
    );
    assert!(out.status.success(), "restore over https: {}", stderr(&out));
    assert_same_tree(&env.src(), &restored(&target, &env.src()));

    // Without the CA, the built-in web PKI roots do not trust the test CA:
    // certificates are checked, and the error says so on one line.
    let out = run(&["snapshot", "list"], None);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A CA file that is not PEM is named.
    let junk = env.path().join("junk.pem");
    fs::write(&junk, "not a certificate\n").unwrap();
    let out = run(&["snapshot", "list"], Some(&junk));
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("junk.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
}
