//! What a newcomer trips over (issue 31): store mistakes that look like
//! empty stores, flags that differ from the config keys, messages that do
//! not say what to do next. (The docs are checked against the usage texts
//! by `cli::man_page` in the unit tests.)

use std::fs;
use std::process::Output;

use crate::core::unreadable_file;
use crate::util::tree::random_bytes;
use crate::util::{Backend, Env, stderr};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn args<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    [a, b].concat()
}

/// The lines of `text` that contain `what`.
fn lines_with(text: &str, what: &str) -> usize {
    text.lines().filter(|l| l.contains(what)).count()
}

// Items 1 and 7: a store that was never written to (a mistyped path,
// bucket prefix) is not an empty store that silently exits 0.
both!(a_store_never_written_to_is_named, |backend| {
    let env = Env::new(backend);
    env.write_config();
    let wrong = match backend {
        Backend::Local => {
            let d = env.path().join("empty");
            fs::create_dir_all(&d).unwrap();
            d.display().to_string()
        }
        _ => format!("s3://{}/typo/", env.bucket),
    };
    let shown = match backend {
        Backend::Local => wrong.clone(),
        _ => format!("s3://{}/typo/", env.bucket),
    };
    for cmd in [&["snapshot", "list"][..], &["store", "info"]] {
        let out = env.run(&args(&["--store", &wrong], cmd));
        let err = stderr(&out);
        assert!(out.status.success(), "{cmd:?}: {err}");
        assert_eq!(lines_with(&err, "no vaultik store at"), 1, "{cmd:?}: {err}");
        assert!(
            err.starts_with("vaultik: warning: no vaultik store at") && err.contains(&shown),
            "{cmd:?}: {err}"
        );
    }
    let target = env.path().join("t");
    let t = target.to_str().unwrap();
    for cmd in [
        &["restore", "latest", "--target", t][..],
        &["snapshot", "verify", "latest"],
        &["ls", "latest"],
    ] {
        let out = env.run_with_key(&args(&["--store", &wrong], cmd));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(
            err.contains(&format!(
                "no vaultik store at {}",
                if backend == Backend::Local {
                    "directory "
                } else {
                    ""
                }
            )) && err.contains(&shown)
                && err.contains("nothing was ever backed up there"),
            "{cmd:?}: {err}"
        );
    }
    // The real store, once backed up to, is not warned about.
    env.create();
    let out = env.run(&["snapshot", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("no vaultik store"),
        "{}",
        stderr(&out)
    );
});

#[test]
fn a_store_directory_not_made_yet_lists_as_empty() {
    let env = Env::new(Backend::Local);
    env.write_config();
    let dir = env.store_dir();
    assert!(!dir.exists());
    let out = env.run(&["snapshot", "list"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(stdout(&out).starts_with("ID "), "{}", stdout(&out));
    assert_eq!(lines_with(&stdout(&out), "requests:"), 1);
    assert_eq!(lines_with(&err, "no vaultik store at"), 1, "{err}");
    assert!(err.contains(dir.to_str().unwrap()), "{err}");
    let out = env.run(&["snapshot", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "[]");
    let out = env.run(&["store", "info"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("snapshots:    0"), "{}", stdout(&out));
    // Where a store is clearly meant: an error that names it.
    let out = env.run_with_key(&["ls", "latest"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!(
            "no vaultik store at {}: No such file or directory",
            dir.display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(!dir.exists(), "reading never makes the store");
}

// Item 2: a store path that is a regular file says so.
#[test]
fn a_store_path_that_is_a_file_is_named_as_one() {
    let env = Env::new(Backend::Local);
    env.write_config();
    let file = env.path().join("store-file");
    fs::write(&file, b"not a store").unwrap();
    let f = file.to_str().unwrap();
    let target = env.path().join("t");
    for cmd in [
        &["snapshot", "list"][..],
        &["store", "info"],
        &["prune"],
        &["restore", "latest", "--target", target.to_str().unwrap()],
        &["snapshot", "create"],
    ] {
        let out = env.run_with_key(&args(&["--store", f], cmd));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(
            err.contains(&format!("store {f} is a regular file, not a directory")),
            "{cmd:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{cmd:?}: {err}");
    }
}

// Item 3: `skip_errors` in the config (global, per snapshot), and the hint.
#[test]
fn skip_errors_is_a_config_key_and_the_error_names_it() {
    let mut env = Env::new(Backend::Local);
    fs::write(env.src().join("good.txt"), b"good").unwrap();
    let bad = unreadable_file(&env);
    let src = env.src();
    let section = |skip: Option<&str>| {
        let mut s = vec![
            "[snapshot data]".to_string(),
            format!("path = {}", src.display()),
            format!("path = {}", bad.display()),
        ];
        if let Some(v) = skip {
            s.push(format!("skip_errors = {v}"));
        }
        s
    };
    env.raw = section(None);
    env.write_config();
    let out = env.run(&["snapshot", "create"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(bad.to_str().unwrap()), "{err}");
    assert!(
        err.contains("pass --skip-errors or set skip_errors = yes"),
        "{err}"
    );
    // Global.
    env.extra = vec!["skip_errors = yes".into()];
    env.write_config();
    let out = env.run(&["snapshot", "create"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));
    // Per snapshot, over the global one.
    env.raw = section(Some("0"));
    env.write_config();
    let out = env.run(&["snapshot", "create"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // ... and the flag over both.
    let out = env.run(&["snapshot", "create", "--skip-errors"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    env.extra.clear();
    env.raw = section(Some("On"));
    env.write_config();
    let out = env.run(&["snapshot", "create"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(env.snapshot_ids().len(), 3);
}

// Items 4 and 8: `--keep-latest N` as `keep_latest = N`; the dry run
// names the flags given.
#[test]
fn purge_flags_mean_what_the_config_keys_mean() {
    let env = Env::new(Backend::Local);
    env.write_config();
    for i in 0..3 {
        fs::write(env.src().join("f"), format!("version {i}")).unwrap();
        env.create();
    }
    let ids = env.snapshot_ids();
    assert_eq!(ids.len(), 3);
    let out = env.run(&["snapshot", "purge", "--keep-latest", "--force"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--keep-latest `--force`: expected a number, at least 1"),
        "{}",
        stderr(&out)
    );
    let text = env.ok(&["snapshot", "purge", "--older-than", "1d", "--dry-run"]);
    assert!(!text.contains("keep_within"), "{text}");
    assert_eq!(lines_with(&text, "--older-than"), 3, "{text}");
    let text = env.ok(&["snapshot", "purge", "--keep-latest", "2", "--dry-run"]);
    assert_eq!(lines_with(&text, "--keep-latest"), 2, "{text}");
    assert!(!text.contains("keep_latest"), "{text}");
    env.ok(&["snapshot", "purge", "--keep-latest", "2", "--force"]);
    assert_eq!(env.snapshot_ids(), ids[1..]);
}

// Item 5: snapshot paths are absolute; a relative one is told so.
#[test]
fn a_relative_path_is_told_that_snapshot_paths_are_absolute() {
    let env = Env::new(Backend::Local);
    fs::create_dir_all(env.src().join("x")).unwrap();
    fs::write(env.src().join("x/f"), b"f").unwrap();
    env.write_config();
    env.create();
    let id = env.snapshot_ids().pop().unwrap();
    // Typed in the test's directory, which holds `src`.
    let target = env.path().join("t");
    for cmd in [
        &["ls", "latest", "src/x"][..],
        &[
            "restore",
            "latest",
            "--target",
            target.to_str().unwrap(),
            "src/x",
        ],
    ] {
        let out = env.run_with_key(cmd);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(
            err.contains(&format!(
                "path src/x is not in snapshot {id}; paths in a snapshot are absolute, as \
                 backed up: src/x was taken as /src/x (did you mean {}?)",
                env.src().join("x").display()
            )),
            "{cmd:?}: {err}"
        );
    }
    // The absolute one works.
    let abs = env.src().join("x");
    let out = env.run_with_key(&["ls", "latest", abs.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

// Items 6 and 10: usage errors say what is wrong and point to the
// command's own help.
#[test]
fn usage_errors_point_to_the_commands_help() {
    let env = Env::new(Backend::Local);
    env.write_config();
    for (cmd, want) in [
        (
            &["snapshot", "list", "--identity", "k"][..],
            "snapshot list needs no private key: --identity is for restore, ls, find, diff, `index rebuild`, repack and `snapshot verify --deep` (see `vaultik snapshot list --help`)",
        ),
        (
            &["store", "info", "--identity", "k"],
            "store info needs no private key",
        ),
        (
            &["snapshot", "purge", "--bogus"],
            "(see `vaultik snapshot purge --help`)",
        ),
        (&["restore", "latest"], "(see `vaultik restore --help`)"),
        (
            &["ls"],
            "ls: missing SNAPSHOT argument (see `vaultik ls --help`)",
        ),
        // Found when the command runs, not when it is parsed.
        (
            &["snapshot", "create", "nosuch"],
            "(see `vaultik snapshot create --help`)",
        ),
        (
            &["frobnicate"],
            "unknown command `frobnicate` (see `vaultik --help`)",
        ),
    ] {
        let out = env.run(cmd);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert!(err.contains(want), "{cmd:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{cmd:?}: {err}");
    }
}

// Item 9: booleans, spelled the usual ways, or a one-line error naming the
// file, line and key.
#[test]
fn config_booleans_take_the_usual_spellings() {
    let mut env = Env::new(Backend::Local);
    env.extra = [
        "exclude_caches = 1",
        "one_file_system = Off",
        "exclude_nodump = TRUE",
    ]
    .map(String::from)
    .to_vec();
    env.write_config();
    env.create();
    env.extra = vec!["exclude_caches = maybe".into()];
    env.write_config();
    let out = env.run(&["snapshot", "create"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "vaultik: {}:4: `exclude_caches`: expected yes or no (true/false, on/off, 1/0), found `maybe`",
            env.config_path().display()
        )
    );
}

// Item 11: a missing path is "No such file or directory", with the path.
#[test]
fn a_missing_path_is_worded_as_the_system_words_it() {
    let mut env = Env::new(Backend::Local);
    let gone = env.path().join("gone");
    env.snapshots = vec![("data".into(), vec![env.src(), gone.clone()], vec![])];
    env.write_config();
    let out = env.run(&["snapshot", "create"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("{}: No such file or directory", gone.display())),
        "{err}"
    );
    assert!(!err.contains("entity not found"), "{err}");
    let out = env.run(&["--config", gone.to_str().unwrap(), "snapshot", "create"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("{}: No such file or directory", gone.display())),
        "{}",
        stderr(&out)
    );
}

/// `2026-12-07T11:45:29Z`
fn is_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

// Items 13 and 14: JSON times in RFC 3339 (ids unchanged); SIZE is each
// snapshot's whole size, explained in the help.
#[test]
fn json_times_are_rfc3339_and_size_is_explained() {
    let env = Env::new(Backend::Local);
    fs::write(env.src().join("f"), random_bytes(1_000_000, 31)).unwrap();
    env.write_config();
    env.create();
    env.create();
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["snapshot", "list", "--json"])).unwrap();
    let snaps = v.as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    for s in snaps {
        let t = s["time"].as_str().unwrap();
        assert!(is_rfc3339(t), "{t}");
        let id = s["id"].as_str().unwrap();
        let compact = vaultik::time::compact(s["unix_time"].as_u64().unwrap());
        assert!(id.starts_with(&format!("testhost_data_{compact}")), "{id}");
        assert_eq!(vaultik::time::rfc3339(s["unix_time"].as_u64().unwrap()), t);
    }
    // An unchanged second snapshot: about the same SIZE (its whole size:
    // the blobs it shares, its own metadata), though it added little.
    let sizes: Vec<u64> = snaps.iter().map(|s| s["size"].as_u64().unwrap()).collect();
    assert!(sizes.iter().all(|s| *s > 1_000_000), "{sizes:?}");
    assert!(sizes[0].abs_diff(sizes[1]) < 50_000, "{sizes:?}");
    let info: serde_json::Value =
        serde_json::from_str(&env.ok(&["store", "info", "--json"])).unwrap();
    let held = info["blob_bytes"].as_u64().unwrap() + info["metadata_bytes"].as_u64().unwrap();
    assert!(held < sizes[0] + sizes[1] - 900_000, "{held} {sizes:?}");
    let v: serde_json::Value = serde_json::from_str(&env.ok(&[
        "snapshot",
        "purge",
        "--keep-latest",
        "1",
        "--dry-run",
        "--json",
    ]))
    .unwrap();
    for s in v["snapshots"].as_array().unwrap() {
        assert!(is_rfc3339(s["time"].as_str().unwrap()), "{s}");
    }
    for s in v["removed_snapshots"].as_array().unwrap() {
        assert!(is_rfc3339(s["time"].as_str().unwrap()), "{s}");
    }
    let help = env.ok(&["snapshot", "list", "--help"]);
    assert!(
        help.contains("SIZE is what restoring the snapshot would")
            && help.contains("unchanged second snapshot shows")
            && help.contains("--versions"),
        "{help}"
    );
}

// Item 15: `vaultik` alone: the usage on stderr, exit code 2.
#[test]
fn no_command_is_a_usage_error() {
    let env = Env::new(Backend::Local);
    let out = env.cmd().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.starts_with("vaultik - encrypted"), "{err}");
    assert!(err.contains("Usage:"), "{err}");
    assert!(
        err.trim_end()
            .ends_with("vaultik: no command given (see `vaultik --help`)"),
        "{err}"
    );
    // Asked for, help is output, exit code 0.
    let out = env.cmd().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(stdout(&out).contains("Usage:"));
}

// Item 16: the `requests:` line ends every command that talked to the
// store, success or failure (here: the wrong key).
#[test]
fn requests_are_shown_on_failure_too() {
    let env = Env::new(Backend::Local);
    fs::write(env.src().join("f"), b"f").unwrap();
    env.write_config();
    env.create();
    env.create();
    let keygen = env.cmd().arg("keygen").output().unwrap();
    let other = String::from_utf8(keygen.stdout)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    let target = env.path().join("t");
    for (cmd, on_stderr) in [
        (
            &["restore", "latest", "--target", target.to_str().unwrap()][..],
            false,
        ),
        (&["restore", "latest", "--stdout", "/x"], true),
        (&["ls", "latest"], true),
        (&["diff", "latest", "latest"], true),
        (&["snapshot", "verify", "latest", "--deep"], false),
    ] {
        let out = env
            .cmd()
            .env("VAULTIK_PRIVATE_KEY", &other)
            .args(cmd)
            .output()
            .unwrap();
        let (o, e) = (stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {e}");
        assert_eq!(
            lines_with(&o, "requests:") + lines_with(&e, "requests:"),
            1,
            "{cmd:?}: {o}{e}"
        );
        if on_stderr {
            assert_eq!(lines_with(&e, "requests:"), 1, "{cmd:?}: {e}");
        }
        // The error is the last line.
        assert!(
            e.lines().last().unwrap().starts_with("vaultik: "),
            "{cmd:?}: {e}"
        );
    }
    // A failure before anything was asked of the store: no line.
    let out = env.run(&["ls", "latest"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        lines_with(&stderr(&out), "requests:"),
        0,
        "{}",
        stderr(&out)
    );
}
