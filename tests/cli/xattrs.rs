//! Issue 29: a restored server is the server that was backed up. A tree of
//! what a root file system holds (capability binaries, access and default
//! ACLs, user, trusted and security extended attributes, set-id files,
//! hard links, sparse files, device nodes, FIFOs, inode flags) is backed
//! up and restored, then compared with the tools an admin would use:
//! `rsync -aHAXc --itemize-changes` finds nothing to do, and `getcap`,
//! `getfacl`, `getfattr` and `lsattr` list the same. Then what `ls` and
//! `diff` say of them, `exclude_nodump`, `restore --no-xattrs`, a restore
//! as a user who is not root (warnings, counts, exit status 0), and
//! snapshots of format 2 (no attributes) still restored.
//!
//! As root only (as CI runs): each test says SKIPPED otherwise.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::forge::{self, Base};
use crate::util::{Backend, Env, figure, stderr};

/// The tools these tests use (tests/run.sh installs them).
const TOOLS: [&str; 9] = [
    "setcap", "getcap", "setfacl", "getfacl", "setfattr", "getfattr", "chattr", "lsattr", "rsync",
];

/// Root: else a SKIPPED line and false. As root, the tools must be there.
fn ready(what: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED {what}: needs root (capabilities, trusted.*, inode flags)");
        return false;
    }
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    // As root the test runs, or fails: a missing tool is a broken setup,
    // not a reason to pass.
    assert!(
        missing.is_empty(),
        "{what}: missing {missing:?} (tests/run.sh installs them)"
    );
    true
}

/// Run `script` with bash in `dir`; it must succeed. Its stdout.
fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Takes the immutable and append-only flags off everything under a
/// directory when dropped, so that it can be removed.
struct Unflag(PathBuf);

impl Drop for Unflag {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .args(["-R", "-f", "-i", "-a"])
            .arg(&self.0)
            .output();
    }
}

/// What a root file system holds, in `src`.
fn system_tree(src: &Path) {
    sh(
        src,
        r#"
        cp /bin/true capbin && setcap cap_net_raw+ep capbin
        cp /bin/true capbin2 && setcap cap_net_admin,cap_net_bind_service+eip capbin2
        echo acl > acl && setfacl -m u:nobody:r,g:nogroup:rw acl
        mkdir shared && setfacl -m u:nobody:rwx shared && setfacl -d -m u:nobody:rx,g:nogroup:r shared
        echo inherited > shared/inherited
        echo x > attrs
        setfattr -n user.color -v blue attrs
        setfattr -n user.binary -v 0sAAEC/w== attrs
        setfattr -n trusted.secret -v 42 attrs
        setfattr -n security.vaultik-test -v label attrs
        ln attrs attrs-link
        touch empty && setfattr -n user.empty -v "" empty
        mkdir dir && setfattr -n user.dir -v d dir && setfattr -n trusted.dir -v t dir
        echo s > suid && chmod 4755 suid
        echo g > sgid && chmod 2751 sgid && chown 65534:65534 sgid
        mkdir sticky && chmod 1777 sticky
        echo start > sparse && truncate -s 64M sparse && echo end >> sparse
        mknod null c 1 3 && mknod loop b 7 0 && mkfifo fifo
        setfattr -h -n trusted.fifo -v f fifo
        ln -s attrs sym && setfattr -h -n trusted.sym -v s sym
        echo nd > nodump && chattr +d nodump
        echo noatime > noatime && chattr +A noatime
        echo a > appendonly && chattr +a appendonly
        echo i > immutable && setfattr -n user.before -v flag immutable && chattr +i immutable
        mkdir frozen && echo in > frozen/in && chattr +i frozen
        mkdir tagged && echo in > tagged/in && chattr +d tagged
        "#,
    );
}

/// `cmd` run in `dir` (relative names), its records sorted: blocks
/// separated by blank lines (`getfacl`, `getfattr`), or lines. Errors of
/// the tool (a device `lsattr` cannot read) are left out: both trees have
/// them alike.
fn listing(dir: &Path, cmd: &str, blocks: bool) -> Vec<String> {
    let out = Command::new("bash")
        .args(["-c", cmd])
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut records: Vec<String> = if blocks {
        text.split("\n\n").map(|b| b.trim().to_string()).collect()
    } else {
        text.lines()
            .filter(|l| !l.is_empty() && !l.ends_with(':'))
            .map(str::to_string)
            .collect()
    };
    records.retain(|r| !r.is_empty());
    records.sort();
    records
}

/// Everything the admin's tools say of the attributes under `dir`.
fn attributes(dir: &Path) -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("getcap", listing(dir, "getcap -r .", false)),
        ("getfacl", listing(dir, "getfacl -R -p . 2>/dev/null", true)),
        (
            "getfattr",
            listing(dir, "getfattr -R -h -d -m - -e hex . 2>/dev/null", true),
        ),
        ("lsattr", listing(dir, "lsattr -R -a . 2>/dev/null", false)),
    ]
}

/// `src` and its copy `restored` are indistinguishable: rsync finds
/// nothing to do, and the tools list the same attributes.
fn assert_same(src: &Path, restored: &Path) {
    let out = Command::new("rsync")
        .args(["-aHAXc", "--dry-run", "--itemize-changes"])
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", restored.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "rsync: {}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "rsync -aHAXc differs"
    );
    let (a, b) = (attributes(src), attributes(restored));
    for ((tool, x), (_, y)) in a.iter().zip(&b) {
        assert!(!x.is_empty(), "{tool} listed nothing");
        assert_eq!(x, y, "{tool} differs");
    }
}

/// Where a source path lands in a restore target.
fn landed(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

both!(a_system_tree_restores_indistinguishably, |backend| {
    if !ready("a_system_tree_restores_indistinguishably") {
        return;
    }
    let env = Env::new(backend);
    let _unflag = Unflag(env.path().to_path_buf());
    let src = env.src();
    system_tree(&src);
    env.settle();
    let summary = env.create();
    assert_eq!(figure(&summary, "warnings"), 0, "{summary}");
    let target = env.path().join("restored");
    let out = env.restore_ok("latest", &target, &[]);
    assert!(!out.contains("not all restored"), "{out}");
    let restored = landed(&target, &src);
    assert_same(&src, &restored);
    // The capability, the ACL and the flags are there, as getcap, getfacl
    // and lsattr show them (not only alike).
    let caps = sh(&restored, "getcap capbin");
    assert!(caps.contains("cap_net_raw=ep"), "{caps}");
    assert!(sh(&restored, "getfacl -p shared").contains("default:user:nobody:r-x"));
    assert!(sh(&restored, "lsattr -d frozen").starts_with("----i"));
    assert!(fs::write(restored.join("immutable"), b"no").is_err());

    // A run with nothing changed reads nothing, not even attributes: the
    // index knows them.
    let again = env.create();
    assert_eq!(figure(&again, "files ("), 16, "{again}");
    assert!(again.contains(" 0 files (0 B) read"), "{again}");

    // `ls` marks them, and says them in JSON.
    let ls = env.run_with_key(&["ls", "latest", src.to_str().unwrap()]);
    let ls = String::from_utf8(ls.stdout).unwrap();
    let line = |name: &str| {
        ls.lines()
            .find(|l| l.ends_with(&format!("/{name}")) || l.contains(&format!("/{name} ")))
            .unwrap_or_else(|| panic!("{name}: {ls}"))
            .to_string()
    };
    assert!(line("acl").starts_with("-rw-rw-r--+ "), "{}", line("acl"));
    assert!(
        line("shared").starts_with("drwxrwxr-x+ "),
        "{}",
        line("shared")
    );
    assert!(
        line("attrs").starts_with("-rw-r--r--@ "),
        "{}",
        line("attrs")
    );
    assert!(
        line("capbin").ends_with("[cap_net_raw=ep]"),
        "{}",
        line("capbin")
    );
    assert!(
        line("immutable").ends_with("[chattr +i]"),
        "{}",
        line("immutable")
    );
    assert!(
        line("nodump").ends_with("[chattr +d]"),
        "{}",
        line("nodump")
    );
    assert!(line("suid").starts_with("-rwsr-xr-x  "), "{}", line("suid"));
    let json = env.run_with_key(&["ls", "latest", src.to_str().unwrap(), "--json"]);
    let objects: Vec<serde_json::Value> = String::from_utf8(json.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let obj = |name: &str| {
        objects
            .iter()
            .find(|o| o["path"].as_str().unwrap().ends_with(&format!("/{name}")))
            .unwrap()
            .clone()
    };
    assert_eq!(
        obj("attrs")["xattrs"],
        serde_json::json!([
            "security.vaultik-test",
            "trusted.secret",
            "user.binary",
            "user.color"
        ])
    );
    assert_eq!(obj("acl")["acl"], true);
    assert_eq!(obj("capbin")["capabilities"], "cap_net_raw=ep");
    assert_eq!(
        obj("appendonly")["flags"],
        serde_json::json!(["append_only"])
    );

    // `diff` reports changes of each as metadata changes.
    let before = env.snapshot_ids().pop().unwrap();
    sh(
        &src,
        "setfattr -n user.color -v red attrs; setfacl -m u:nobody:rw acl; chattr +d noatime",
    );
    env.settle();
    let third = env.create();
    assert_eq!(figure(&third, "files ("), 16, "{third}");
    let after = env.snapshot_ids().pop().unwrap();
    let diff = env.run_with_key(&["diff", &before, &after, src.to_str().unwrap()]);
    let diff = String::from_utf8(diff.stdout).unwrap();
    assert!(diff.contains("/attrs  (xattrs user.color)"), "{diff}");
    assert!(diff.contains("/attrs-link  (xattrs user.color)"), "{diff}");
    assert!(diff.contains("/acl  (acl access)"), "{diff}");
    assert!(diff.contains("/noatime  (flags +A -> +dA)"), "{diff}");
    assert!(diff.contains("4 changed"), "{diff}");
});

/// `exclude_nodump = yes` leaves out what has the nodump flag, as dump and
/// borg do: files (known to the index or read for the first time) and
/// directories with all below them; a snapshot may say otherwise.
#[test]
fn exclude_nodump_leaves_out_flagged_entries() {
    if !ready("exclude_nodump_leaves_out_flagged_entries") {
        return;
    }
    let mut env = Env::new(Backend::Local);
    let src = env.src();
    sh(
        &src,
        "echo k > keep; echo s > skip; chattr +d skip; touch empty-skip; chattr +d empty-skip
         mkdir skipdir; echo in > skipdir/in; chattr +d skipdir
         mkdir keepdir; echo k > keepdir/k; echo s > keepdir/s; chattr +d keepdir/s",
    );
    env.settle();
    // Without the setting, everything (and the index learns the flags).
    let all = env.create();
    assert_eq!(figure(&all, "files ("), 6, "{all}");
    env.settle();
    env.extra.push("exclude_nodump = yes".into());
    env.write_config();
    // Left out as the index knows them, then as read again.
    for run in 0..2 {
        let summary = env.create();
        assert!(
            summary.contains("4 with the nodump flag"),
            "run {run}: {summary}"
        );
        let ls = env.run_with_key(&["ls", "latest", src.to_str().unwrap(), "-R"]);
        let ls = String::from_utf8(ls.stdout).unwrap();
        for gone in ["skip", "empty-skip", "skipdir", "keepdir/s"] {
            assert!(
                !ls.contains(&format!("/{gone}\n")),
                "run {run}: {gone}: {ls}"
            );
        }
        for kept in ["keep", "keepdir", "keepdir/k"] {
            assert!(
                ls.contains(&format!("/{kept}\n")),
                "run {run}: {kept}: {ls}"
            );
        }
        env.settle();
        sh(&src, "touch skip keepdir/s empty-skip");
        env.settle();
    }
    // A snapshot's own setting wins.
    env.extra.clear();
    env.raw.push(format!(
        "[snapshot data]\npath = {}\nexclude_nodump = no",
        src.display()
    ));
    env.extra.push("exclude_nodump = yes".into());
    env.write_config();
    let summary = env.create();
    assert!(!summary.contains("nodump"), "{summary}");
    assert_eq!(figure(&summary, "files ("), 6, "{summary}");
}

/// `restore --no-xattrs` restores everything else, and says how many
/// entries had attributes it did not restore.
#[test]
fn no_xattrs_restores_without_them_and_says_so() {
    if !ready("no_xattrs_restores_without_them_and_says_so") {
        return;
    }
    let env = Env::new(Backend::Local);
    let _unflag = Unflag(env.path().to_path_buf());
    sh(
        &env.src(),
        "echo x > a; setfattr -n user.a -v 1 a; echo i > i; chattr +i i;
         echo acl > acl; setfacl -m u:nobody:r acl; echo plain > plain",
    );
    env.create();
    let target = env.path().join("t");
    let out = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(["restore", "latest", "--no-xattrs", "--target"])
        .arg(&target)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("--no-xattrs: the extended attributes, ACLs and inode flags of 3 entries"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("attributes of 3 entries not all restored")
    );
    let r = landed(&target, &env.src());
    assert_eq!(fs::read(r.join("a")).unwrap(), b"x\n");
    assert!(sh(&r, "getfattr -d -m - a").is_empty());
    assert!(!sh(&r, "getfacl -p acl").contains("user:nobody"));
    assert!(sh(&r, "lsattr i").starts_with("----------"));
}

/// A restore by a user who is not root, into a directory of theirs: what
/// only root may set (trusted.*, capabilities, the immutable and
/// append-only flags) is a warning per kind with a count, the rest is
/// restored, and the exit status is 0. A backup by such a user says that
/// trusted.* attributes are out of its sight.
#[test]
fn as_another_user_warnings_and_counts() {
    if !ready("as_another_user_warnings_and_counts") {
        return;
    }
    let env = Env::new(Backend::S3);
    let _unflag = Unflag(env.path().to_path_buf());
    sh(
        &env.src(),
        "echo x > attrs; setfattr -n user.color -v blue attrs; setfattr -n trusted.t -v 1 attrs
         cp /bin/true capbin; setcap cap_net_raw+ep capbin
         echo acl > acl; setfacl -m u:nobody:r acl
         echo i > immutable; chattr +i immutable; echo a > appendonly; chattr +a appendonly
         echo d > nodump; chattr +d nodump",
    );
    env.create();
    // A world-readable home for the other user, with the config.
    let home = tempfile::Builder::new()
        .prefix("vaultik-nobody")
        .tempdir()
        .unwrap();
    let _unflag_home = Unflag(home.path().to_path_buf());
    let config = home.path().join("vaultik.conf");
    fs::copy(env.config_path(), &config).unwrap();
    sh(
        home.path(),
        "chmod 755 . && chmod 644 vaultik.conf && mkdir t && chown -R 65534:65534 t",
    );
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(crate::util::bin())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("VAULTIK_CONFIG", &config)
            .env("VAULTIK_PRIVATE_KEY", &env.identity)
            .current_dir(home.path())
            .output()
            .unwrap()
    };
    let target = home.path().join("t");
    let out = as_nobody(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("extended attributes of 2 entries not restored")
            && err.contains("trusted.* and security.capability can only be set by root"),
        "{err}"
    );
    assert!(
        err.contains("inode flags of 2 entries not restored")
            && err.contains("the immutable and append-only flags can only be set by root"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("attributes of 4 entries not all restored")
    );
    let r = landed(&target, &env.src());
    let attrs = sh(&r, "getfattr -d -m - attrs");
    assert!(
        attrs.contains("user.color=\"blue\"") && !attrs.contains("trusted"),
        "{attrs}"
    );
    assert!(sh(&r, "getfacl -p acl").contains("user:nobody:r--"));
    assert!(sh(&r, "getcap capbin").is_empty());
    assert!(sh(&r, "lsattr nodump").starts_with("------d"));
    assert!(sh(&r, "lsattr immutable").starts_with("----------"));

    // A backup as that user: trusted.* are hidden from it, and it says so.
    let mine = home.path().join("mine");
    fs::create_dir(&mine).unwrap();
    sh(
        home.path(),
        "echo m > mine/f; setfattr -n user.u -v 1 mine/f; setfattr -n trusted.t -v 1 mine/f;
         chown -R 65534:65534 mine; mkdir state; chown 65534:65534 state; chmod 700 state",
    );
    let text = fs::read_to_string(&config).unwrap();
    let text = text
        .replace(
            &env.index_path().display().to_string(),
            &home.path().join("state/index.sqlite").display().to_string(),
        )
        .replace(
            &format!("path = {}", env.src().display()),
            &format!("path = {}", mine.display()),
        );
    fs::write(&config, text).unwrap();
    let out = as_nobody(&["snapshot", "create"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(
            "not running as root: the kernel shows trusted.* extended attributes to root only"
        ),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 warnings"));
}

/// An index made before attributes were kept (its rows' are NULL): the
/// next run reads the attributes of the files it knows unchanged, and
/// only those (no content), and the one after reads nothing.
#[test]
fn an_index_without_attributes_reads_them_not_the_files() {
    if !ready("an_index_without_attributes_reads_them_not_the_files") {
        return;
    }
    let env = Env::new(Backend::Local);
    sh(
        &env.src(),
        "echo x > a; setfattr -n user.a -v 1 a; echo y > b; chattr +d b; touch e; setfattr -n user.e -v 2 e",
    );
    env.settle();
    env.create();
    let conn = rusqlite::Connection::open(env.index_path()).unwrap();
    let n = conn
        .execute("UPDATE files SET xattrs = NULL, flags = NULL", [])
        .unwrap();
    assert_eq!(n, 3);
    drop(conn);
    for run in 0..2 {
        let summary = env.create();
        assert!(
            summary.contains(" 0 files (0 B) read"),
            "run {run}: {summary}"
        );
        let ls = env.run_with_key(&["ls", "latest", env.src().to_str().unwrap()]);
        let ls = String::from_utf8(ls.stdout).unwrap();
        assert!(
            ls.lines()
                .any(|l| l.starts_with("-rw-r--r--@") && l.ends_with("/a")),
            "{ls}"
        );
        assert!(ls.lines().any(|l| l.ends_with("/b [chattr +d]")), "{ls}");
        assert!(
            ls.lines()
                .any(|l| l.starts_with("-rw-r--r--@") && l.ends_with("/e")),
            "{ls}"
        );
    }
    let conn = rusqlite::Connection::open(env.index_path()).unwrap();
    let unknown: i64 = conn
        .query_row("SELECT count(*) FROM files WHERE xattrs IS NULL", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(unknown, 0);
}

/// Snapshots of format 2 (before attributes were recorded) still list and
/// restore, with none.
#[test]
fn format_2_snapshots_still_list_and_restore() {
    let env = Env::new(Backend::Local);
    fs::write(env.src().join("f"), b"content").unwrap();
    env.create();
    let real = env.snapshot_ids().pop().unwrap();
    let base = Base::of(&env, &real);
    let id = "old_v2_2025-01-01T000000Z";
    forge::forge_format_2(
        &env,
        id,
        &[
            forge::dir(b"/d"),
            forge::file(b"/d/f", 0o640).with(&base, &[0]),
            forge::symlink(b"/d/l", b"f"),
        ],
        Some(&base),
    );
    let ls = env.run_with_key(&["ls", id, "/d"]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    let ls = String::from_utf8(ls.stdout).unwrap();
    assert!(
        ls.lines()
            .any(|l| l.starts_with("-rw-r-----  ") && l.ends_with("/d/f")),
        "{ls}"
    );
    let target = env.path().join("t");
    env.restore_ok(id, &target, &[]);
    assert_eq!(fs::read(target.join("d/f")).unwrap(), b"content");
    let diff = env.run_with_key(&["diff", id, id]);
    assert!(diff.status.success(), "{}", stderr(&diff));
}
