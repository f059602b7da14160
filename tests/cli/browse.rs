//! Finding without restoring (issue 18): `ls`, `find` and `diff` against
//! snapshots of real trees, their output checked against what the trees
//! hold; `latest` narrowed by `--host` and `--name`; `ls --recursive` of
//! 200k entries in bounded memory; forged metadata shown escaped; and the
//! newcomer's three commands (find, restore, compare).

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::core::restored;
use crate::util::forge::{self, Forged};
use crate::util::tree::{self, populate_all_kinds};
use crate::util::{Backend, Env, host_config, stderr};

/// Run with the key and insist on exit status `code`; stdout.
fn run_code(env: &Env, args: &[&str], code: i32) -> String {
    let o = env.run_with_key(args);
    checked(&o, args, code)
}

fn checked(o: &Output, args: &[&str], code: i32) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "vaultik {args:?}:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        stderr(o)
    );
    String::from_utf8(o.stdout.clone()).expect("output is UTF-8")
}

fn ok(env: &Env, args: &[&str]) -> String {
    run_code(env, args, 0)
}

fn json_lines(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

/// A path as vaultik shows it in text: lossy, control characters escaped.
fn shown(p: &[u8]) -> String {
    vaultik::error::one_line(String::from_utf8_lossy(p).into_owned())
}

/// The exact bytes of a JSON entry's `key` (`path`, `target`).
fn json_bytes(v: &Value, key: &str) -> Vec<u8> {
    match v.get(format!("{key}_hex")) {
        Some(h) => {
            let h = h.as_str().unwrap();
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        }
        None => v[key].as_str().unwrap().as_bytes().to_vec(),
    }
}

/// `drwxr-xr-x`, as `ls -l` shows a real file.
fn mode_string(m: &fs::Metadata) -> String {
    let ft = m.file_type();
    use std::os::unix::fs::FileTypeExt;
    let mut s = String::from(if ft.is_dir() {
        "d"
    } else if ft.is_symlink() {
        "l"
    } else if ft.is_fifo() {
        "p"
    } else {
        "-"
    });
    let mode = m.mode();
    for (shift, special, letter) in [(6, 0o4000, 's'), (3, 0o2000, 's'), (0, 0o1000, 't')] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => letter,
            (false, true) => letter.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

/// The fields of an `ls` line: mode, owner, size, day, time, and the rest
/// (the path, ` -> target`).
fn fields(line: &str) -> [&str; 6] {
    let mut out = [""; 6];
    let mut rest = line;
    for f in out.iter_mut().take(5) {
        rest = rest.trim_start();
        let end = rest
            .find(' ')
            .unwrap_or_else(|| panic!("short line {line:?}"));
        *f = &rest[..end];
        rest = &rest[end..];
    }
    out[5] = &rest[1..];
    out
}

fn type_name(m: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let ft = m.file_type();
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_fifo() {
        "fifo"
    } else {
        "file"
    }
}

/// Every entry at and below `root`, in byte order (the order of a listing).
fn tree_paths(root: &Path) -> Vec<PathBuf> {
    let mut all = vec![root.to_path_buf()];
    all.extend(tree::entries(root).into_iter().map(|r| root.join(r)));
    all.sort_by_key(|p| bytes(p));
    all
}

/// Sleep into the next second: snapshots made after it get a later time
/// in their ids (not only a `.N` suffix).
fn next_second() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()) + 1_000_000,
    ));
}

/// `2026-11-23T08:30:15`, the time snapshot `id` spells, as `--newer` takes it.
fn time_of(id: &str) -> String {
    let t = vaultik::layout::parse_id(id).unwrap().time;
    let c = vaultik::time::compact(t); // 2026-11-23T083015Z
    format!("{}:{}:{}", &c[..13], &c[13..15], &c[15..17])
}

fn newest_id(env: &Env) -> String {
    env.snapshot_ids().pop().unwrap()
}

both!(ls_shows_what_the_tree_holds, |b| {
    let env = Env::new(b);
    let src = env.src();
    populate_all_kinds(&src);
    env.create();
    ls_recursive_json_is_the_tree(&env, &src);
    ls_of_a_directory_is_its_children(&env, &src);
    ls_of_files_paths_and_nothing(&env, &src);
});

/// Recursive, as JSON: every entry, in byte order, with its kind, mode,
/// owner, size, mtime and target as the tree has them.
fn ls_recursive_json_is_the_tree(env: &Env, src: &Path) {
    let s = src.to_str().unwrap();
    let listed = json_lines(&ok(env, &["ls", "latest", s, "--recursive", "--json"]));
    let want = tree_paths(src);
    let got: Vec<Vec<u8>> = listed.iter().map(|v| json_bytes(v, "path")).collect();
    assert_eq!(got, want.iter().map(|p| bytes(p)).collect::<Vec<_>>());
    for (v, p) in listed.iter().zip(&want) {
        let m = fs::symlink_metadata(p).unwrap();
        let what = p.display();
        assert_eq!(v["type"], type_name(&m), "{what}");
        assert_eq!(v["mode"], m.mode() & 0o7777, "{what}");
        assert_eq!(
            (v["uid"].clone(), v["gid"].clone()),
            (m.uid().into(), m.gid().into())
        );
        let size = if m.is_file() { m.len() } else { 0 };
        assert_eq!(v["size"], size, "{what}");
        assert_eq!(v["mtime"], m.mtime(), "{what}");
        assert_eq!(
            v["mtime_ns"],
            m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            "{what}"
        );
        if m.file_type().is_symlink() {
            assert_eq!(json_bytes(v, "target"), bytes(&fs::read_link(p).unwrap()));
        } else {
            assert!(v.get("target").is_none(), "{what}");
        }
    }
    let odd = listed.iter().find(|v| v.get("path_hex").is_some()).unwrap();
    assert!(
        odd["path"]
            .as_str()
            .unwrap()
            .ends_with("not-utf8-\u{fffd}\u{fffd}.txt")
    );
}

/// A directory, as text: its direct children, like ls -l.
fn ls_of_a_directory_is_its_children(env: &Env, src: &Path) {
    let s = src.to_str().unwrap();
    let want = tree_paths(src);
    let text = ok(env, &["ls", "latest", s]);
    let children: Vec<&PathBuf> = want.iter().filter(|p| p.parent() == Some(src)).collect();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), children.len(), "{text}");
    for (line, p) in lines.iter().zip(&children) {
        let m = fs::symlink_metadata(p).unwrap();
        let [mode, owner, size, day, _, rest] = fields(line);
        assert_eq!(mode, mode_string(&m), "{line}");
        assert_eq!(owner, format!("{}/{}", m.uid(), m.gid()), "{line}");
        assert_eq!(
            size,
            if m.is_file() { m.len() } else { 0 }.to_string(),
            "{line}"
        );
        assert_eq!(day.len(), 10, "{line}");
        let mut path = shown(&bytes(p));
        if m.file_type().is_symlink() {
            path.push_str(&format!(
                " -> {}",
                shown(&bytes(&fs::read_link(p).unwrap()))
            ));
        }
        assert_eq!(rest, path, "{line}");
    }
    let hello = src.join("hello.txt");
    let line = ok(env, &["ls", "latest", hello.to_str().unwrap()]);
    assert_eq!(
        fields(line.trim_end())[3..5],
        ["2020-09-13", "12:26"],
        "{line}"
    );
    assert!(
        text.contains(&format!("{s}/link-rel -> hello.txt\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{s}/name with spaces and\\nnewline\n")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("prw-r-----") && l.ends_with("/fifo")),
        "{text}"
    );
    let dir = ok(env, &["ls", "latest", &format!("{s}/dir/")]);
    assert!(
        dir.lines()
            .any(|l| l.starts_with("drwxr-x---") && l.ends_with("/dir/sub")),
        "{dir}"
    );
}

/// A file (by a name that is not UTF-8), a subtree, `/`, a path not there.
fn ls_of_files_paths_and_nothing(env: &Env, src: &Path) {
    let s = src.to_str().unwrap();
    let odd = src.join(OsStr::from_bytes(b"not-utf8-\xff\xfe.txt"));
    let o = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .arg("ls")
        .arg("latest")
        .arg(&odd)
        .output()
        .unwrap();
    let line = checked(&o, &["ls", "latest", "(odd)"], 0);
    assert_eq!(line.lines().count(), 1);
    assert!(
        line.contains(" 8 ") && line.ends_with("not-utf8-\u{fffd}\u{fffd}.txt\n"),
        "{line}"
    );

    // Recursive below a directory: it and all 41 below it.
    let deep = ok(env, &["ls", "latest", &format!("{s}/deep"), "-R"]);
    assert_eq!(deep.lines().count(), 42, "{deep}");
    assert!(
        deep.lines()
            .last()
            .unwrap()
            .ends_with("/level39/bottom.txt")
    );

    // Without a PATH: `/`, whose child leading to the tree is implied.
    let top = src
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    let root = ok(env, &["ls", "latest"]);
    assert_eq!(root.lines().count(), 1, "{root}");
    assert!(
        root.starts_with("d?????????") && root.ends_with(&format!(" /{top}\n")),
        "{root}"
    );
    let v = json_lines(&ok(env, &["ls", "latest", "--json"]));
    assert_eq!(v[0]["implied"], true);

    // A path the snapshot does not hold.
    let o = env.run_with_key(&["ls", "latest", &format!("{s}/nowhere")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/nowhere is not in snapshot"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty());
    // No key, no listing.
    let o = env.run(&["ls", "latest"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("needs the private key"),
        "{}",
        stderr(&o)
    );
}

both!(find_which_snapshots_hold_a_file, |b| {
    let mut env = Env::new(b);
    let nginx = env.src().join("etc/nginx");
    fs::create_dir_all(&nginx).unwrap();
    let other = env.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("nginx.conf"), "elsewhere\n").unwrap();
    env.snapshots = vec![
        ("data".into(), vec![env.src()], vec![]),
        ("other".into(), vec![other.clone()], vec![]),
    ];
    let conf = nginx.join("nginx.conf");
    let versions = ["v1\n", "version 2\n", "the third version\n"];
    let mut ids = Vec::new();
    for v in versions {
        fs::write(&conf, v).unwrap();
        next_second();
        env.ok(&["snapshot", "create", "data"]);
        ids.push(newest_id(&env));
    }
    next_second();
    env.ok(&["snapshot", "create", "other"]);
    let other_id = newest_id(&env);
    let c = conf.to_str().unwrap();

    // By name: every snapshot, newest first, each hit with its size.
    let text = ok(&env, &["find", "nginx.conf"]);
    let headers: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(headers, [&other_id, &ids[2], &ids[1], &ids[0]], "{text}");
    let hits: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(hits.len(), 4, "{text}");
    for (hit, v) in hits[1..].iter().zip(versions.iter().rev()) {
        let f = fields(hit.trim_start());
        assert_eq!((f[2], f[5]), (v.len().to_string().as_str(), c), "{hit}");
    }
    assert!(hits[0].ends_with("/other/nginx.conf"), "{text}");

    // As JSON, by path glob, of one name.
    let pattern = format!("{}/etc/*/nginx.conf", env.src().display());
    let found = json_lines(&ok(&env, &["find", &pattern, "--json", "--name", "data"]));
    let snaps: Vec<&str> = found
        .iter()
        .map(|v| v["snapshot"].as_str().unwrap())
        .collect();
    assert_eq!(snaps, [&ids[2], &ids[1], &ids[0]]);
    for (v, want) in found.iter().zip(versions.iter().rev()) {
        assert_eq!(v["path"], c);
        assert_eq!(v["type"], "file");
        assert_eq!(v["size"], want.len());
        // RFC 3339; the id keeps its compact spelling.
        let compact = v["snapshot"].as_str().unwrap().rsplit('_').next().unwrap();
        let t = vaultik::time::parse_compact(compact).unwrap();
        assert_eq!(v["time"], vaultik::time::rfc3339(t));
        assert_eq!(v["unix_time"], t);
    }
    let ids_of = |args: &[&str]| -> Vec<String> {
        json_lines(&ok(
            &env,
            &[&["find", "nginx.conf", "--json"][..], args].concat(),
        ))
        .iter()
        .map(|v| v["snapshot"].as_str().unwrap().to_string())
        .collect()
    };
    assert_eq!(ids_of(&["--snapshot", ids[0].as_str()]), [ids[0].clone()]);
    assert_eq!(
        ids_of(&["--snapshot", "latest", "--name", "data"]),
        [ids[2].clone()]
    );
    assert_eq!(
        ids_of(&["--snapshot", ids[0].as_str(), "--snapshot", ids[2].as_str()]),
        [ids[2].clone(), ids[0].clone()]
    );
    let t1 = time_of(&ids[1]);
    assert_eq!(
        ids_of(&["--newer", &t1, "--name", "data"]),
        [ids[2].clone(), ids[1].clone()]
    );
    assert_eq!(ids_of(&["--older", &t1]), [ids[0].clone()]);
    assert_eq!(ids_of(&["--newer", "1h"]).len(), 4);
    assert_eq!(ids_of(&["--host", "testhost"]).len(), 4);
    assert_eq!(ids_of(&["--name", "other"]), [other_id]);

    // Nothing matched: exit 1, nothing on standard output (as grep).
    for args in [
        &["find", "nope.conf"][..],
        &["find", &format!("{}/*.conf", env.src().display())],
        &["find", "nginx.conf", "--older", "1h"],
        &["find", "nginx.conf", "--host", "elsewhere"],
    ] {
        let o = env.run_with_key(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty(), "{args:?}");
        assert!(stderr(&o).contains("nothing matches"), "{}", stderr(&o));
    }
    let o = env.run_with_key(&["find", "nginx.conf", "--snapshot", "nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
});

both!(diff_shows_added_removed_and_changed, |b| {
    let env = Env::new(b);
    let src = env.src();
    fs::create_dir(src.join("dir")).unwrap();
    fs::write(src.join("dir/inner.txt"), "inner").unwrap();
    fs::write(src.join("keep.txt"), "same").unwrap();
    fs::write(src.join("gone.txt"), "to be removed").unwrap();
    fs::write(src.join("edit.txt"), "short").unwrap();
    fs::write(src.join("mode.sh"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(src.join("mode.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(src.join("kind"), "a file").unwrap();
    next_second();
    env.create();
    let a = newest_id(&env);
    fs::remove_file(src.join("gone.txt")).unwrap();
    fs::write(src.join("edit.txt"), "much longer now").unwrap();
    fs::set_permissions(src.join("mode.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(src.join("kind")).unwrap();
    std::os::unix::fs::symlink("keep.txt", src.join("kind")).unwrap();
    fs::write(src.join("new.txt"), "new!").unwrap();
    fs::create_dir(src.join("newdir")).unwrap();
    fs::write(src.join("newdir/x"), "xx").unwrap();
    next_second();
    env.create();
    let b = newest_id(&env);
    let s = src.display();

    let text = ok(&env, &["diff", &a, &b]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}");
    assert!(
        lines[0].starts_with(&format!(
            "M {s}/edit.txt  (content, size 5 B -> 15 B, mtime "
        )),
        "{text}"
    );
    assert_eq!(
        lines[1..7],
        [
            format!("- {s}/gone.txt  (file, 13 B)"),
            format!("M {s}/kind  (type file -> symlink)"),
            format!("M {s}/mode.sh  (mode 0644 -> 0755)"),
            format!("+ {s}/new.txt  (file, 4 B)"),
            format!("+ {s}/newdir  (dir)"),
            format!("+ {s}/newdir/x  (file, 2 B)"),
        ]
    );
    // (The tree's root and dir/ are unchanged but for mtimes: not changes.)
    assert_eq!(
        lines[7],
        format!("{a} -> {b}: 3 added (6 B), 1 removed (13 B), 3 changed, 4 unchanged")
    );

    diff_json_says_the_same(&env, &a, &b);

    // Below a path; a snapshot against itself; a path in neither.
    let one = ok(&env, &["diff", &a, &b, &format!("{s}/newdir")]);
    assert_eq!(one.lines().count(), 3, "{one}");
    assert!(
        one.ends_with("2 added (2 B), 0 removed (0 B), 0 changed, 0 unchanged\n"),
        "{one}"
    );
    let same = ok(&env, &["diff", &a, &a]);
    assert_eq!(
        same,
        format!("{a} -> {a}: 0 added (0 B), 0 removed (0 B), 0 changed, 8 unchanged\n")
    );
    let o = env.run_with_key(&["diff", &a, &b, "/nowhere"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("is in neither"), "{}", stderr(&o));
});

/// `diff --json` of the same two snapshots as
/// `diff_shows_added_removed_and_changed`: one object per difference,
/// then the summary.
fn diff_json_says_the_same(env: &Env, a: &str, b: &str) {
    let v = json_lines(&ok(env, &["diff", a, b, "--json"]));
    assert_eq!(v.len(), 8);
    let kinds: Vec<(&str, String)> = v[..7]
        .iter()
        .map(|c| {
            let p = c["path"].as_str().unwrap();
            (
                c["change"].as_str().unwrap(),
                p.rsplit('/').next().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("changed", "edit.txt".into()),
            ("removed", "gone.txt".into()),
            ("changed", "kind".into()),
            ("changed", "mode.sh".into()),
            ("added", "new.txt".into()),
            ("added", "newdir".into()),
            ("added", "x".into()),
        ]
    );
    assert_eq!(
        v[0]["what"],
        serde_json::json!(["content", "size", "mtime"])
    );
    assert_eq!(
        (v[0]["old"]["size"].clone(), v[0]["new"]["size"].clone()),
        (5.into(), 15.into())
    );
    assert_eq!(v[2]["new"]["type"], "symlink");
    assert_eq!(v[2]["new"]["target"], "keep.txt");
    assert_eq!(v[1]["entry"]["size"], 13);
    let sum = &v[7]["summary"];
    assert_eq!((sum["a"].as_str(), sum["b"].as_str()), (Some(a), Some(b)));
    for (k, n) in [
        ("added", 3),
        ("added_bytes", 6),
        ("removed", 1),
        ("removed_bytes", 13),
        ("changed", 3),
        ("unchanged", 4),
    ] {
        assert_eq!(sum[k], n, "{k}: {sum}");
    }
}

both!(latest_narrowed_by_host_and_name, |b| {
    let env = Env::new(b);
    fs::write(env.src().join("f.txt"), "testhost's").unwrap();
    env.create();
    let mine = newest_id(&env);
    // Another host sharing the store backs up later: latest is its.
    let theirs_src = env.path().join("theirs");
    fs::create_dir(&theirs_src).unwrap();
    fs::write(theirs_src.join("g.txt"), "web2's").unwrap();
    let conf = host_config(&env, "web2", &theirs_src);
    next_second();
    let run_as = |args: &[&str]| {
        env.cmd()
            .env("VAULTIK_CONFIG", &conf)
            .env("VAULTIK_PRIVATE_KEY", &env.identity)
            .args(args)
            .output()
            .unwrap()
    };
    checked(&run_as(&["snapshot", "create"]), &["create as web2"], 0);
    let theirs = newest_id(&env);
    assert!(theirs.starts_with("web2_data_"), "{theirs}");

    // restore
    let t = env.path().join("r1");
    env.restore_ok("latest", &t, &[]);
    assert_eq!(
        fs::read(restored(&t, &theirs_src).join("g.txt")).unwrap(),
        b"web2's"
    );
    let t = env.path().join("r2");
    let out = ok(
        &env,
        &[
            "restore",
            "latest",
            "--host",
            "testhost",
            "--name",
            "data",
            "--target",
            t.to_str().unwrap(),
        ],
    );
    assert!(out.contains(&mine), "{out}");
    assert_eq!(
        fs::read(restored(&t, &env.src()).join("f.txt")).unwrap(),
        b"testhost's"
    );
    // snapshot verify
    let out = ok(
        &env,
        &["snapshot", "verify", "latest", "--host", "testhost"],
    );
    assert!(out.contains(&format!("snapshot {mine}:")), "{out}");
    let out = ok(&env, &["snapshot", "verify", "latest"]);
    assert!(out.contains(&format!("snapshot {theirs}:")), "{out}");
    // ls
    let f = env.src().join("f.txt");
    let out = ok(
        &env,
        &["ls", "latest", "--host", "testhost", f.to_str().unwrap()],
    );
    assert!(out.ends_with("/f.txt\n"), "{out}");
    let o = env.run_with_key(&["ls", "latest", f.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "latest alone is web2's: {}",
        stderr(&o)
    );
    // diff: both sides narrowed
    let v = json_lines(&ok(
        &env,
        &["diff", "latest", "latest", "--host", "web2", "--json"],
    ));
    assert_eq!(v.len(), 1);
    assert_eq!(
        (v[0]["summary"]["a"].as_str(), v[0]["summary"]["b"].as_str()),
        (Some(theirs.as_str()), Some(theirs.as_str()))
    );
    let out = ok(&env, &["diff", &mine, "latest", "--host", "testhost"]);
    assert!(
        out.starts_with(&format!("{mine} -> {mine}: 0 added")),
        "{out}"
    );
    // Nothing of that host and name; a full id of another host.
    for args in [
        &[
            "restore",
            "latest",
            "--host",
            "nobody",
            "--target",
            "/nonexistent",
        ][..],
        &["snapshot", "verify", "latest", "--name", "nothing"],
        &["ls", "latest", "--host", "testhost", "--name", "other"],
    ] {
        let o = env.run_with_key(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&o).contains("latest of "),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let o = env.run_with_key(&["ls", &mine, "--host", "web2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("is not one of host web2"),
        "{}",
        stderr(&o)
    );
});

/// The memory bound: `ls --recursive` of a 200k-entry snapshot
/// stays under 40 MB, its output drained through a pipe into a file.
/// (`find` and `diff` of it are measured too.)
#[test]
fn ls_recursive_of_200k_entries_in_bounded_memory() {
    let env = Env::new(Backend::Local);
    let dir = env.src().join("many");
    fs::create_dir(&dir).unwrap();
    for i in 0..200_000u32 {
        fs::write(
            dir.join(format!("{i:06}")),
            if i % 1000 == 0 { &b"x"[..] } else { b"" },
        )
        .unwrap();
    }
    let out = env.create();
    assert!(out.contains("200002 entries"), "{out}");
    let id = newest_id(&env);
    let measure = |args: &[&str]| {
        let mut cmd = env.cmd();
        cmd.env("VAULTIK_PRIVATE_KEY", &env.identity).args(args);
        crate::hostile_store::measured(cmd, env.path())
    };
    let (code, listing, err, rss) = measure(&["ls", &id, "--recursive"]);
    assert_eq!(code, 0, "{err}");
    eprintln!("ls --recursive of 200002 entries: {rss} KiB peak");
    assert_eq!(listing.lines().count(), 200_002);
    assert!(listing.lines().last().unwrap().ends_with("/many/199999"));
    assert!(rss < 40 * 1024, "ls --recursive peaked at {rss} KiB");
    let (code, found, err, rss) = measure(&["find", "*999"]);
    assert_eq!(code, 0, "{err}");
    eprintln!("find over 200002 entries: {rss} KiB peak");
    assert_eq!(found.lines().count(), 1 + 200);
    assert!(rss < 40 * 1024, "find peaked at {rss} KiB");
    let (code, diffed, err, rss) = measure(&["diff", &id, &id]);
    assert_eq!(code, 0, "{err}");
    eprintln!("diff of 200002 entries with themselves: {rss} KiB peak");
    assert!(
        diffed.ends_with("0 changed, 200002 unchanged\n"),
        "{diffed}"
    );
    assert!(rss < 48 * 1024, "diff peaked at {rss} KiB");
}

/// Run `args` with the key and `tmp` as TMPDIR; insist that nothing is
/// left there, nothing under `env` changed, and nothing raw was printed.
fn run_in(env: &Env, tmp: &Path, args: &[&str]) -> Output {
    let before = forge::census(env.path(), tmp);
    let o = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .env("TMPDIR", tmp)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(
        fs::read_dir(tmp).unwrap().count(),
        0,
        "nothing left in TMPDIR"
    );
    assert_eq!(
        forge::census(env.path(), tmp),
        before,
        "nothing outside TMPDIR changed"
    );
    for (what, text) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        let text = String::from_utf8_lossy(text);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?}: raw control characters on {what}: {text:?}"
        );
    }
    o
}

/// Forge snapshot `id` of odd names (nine entries below `/`, and one
/// relative path no listing of `/` reaches), every file's chunk list
/// garbage, and no index on `path` (forge makes none).
fn forge_odd_names(env: &Env, id: &str) {
    let file = |path: &[u8]| Forged {
        chunks: Some(b"not a chunk list".to_vec()),
        size: 16,
        ..forge::file(path, 0o644)
    };
    forge::forge(
        env,
        id,
        &[
            forge::dir(b"/etc"),
            file(b"/etc/../../outside"),
            file(b"/etc/\x1b[2J\x1b]0;owned\x07title"),
            file(b"/etc/not-utf8-\xff\xfe"),
            file(b"/etc/new\nline"),
            file(b"/etc/c1-\xc2\x9b2J\x7f"),
            forge::symlink(b"/etc/link", b"/target\nwith newline\x1b[31m"),
            forge::hard_link(b"/etc/hard", b"/etc/\x1b[1mfirst"),
            forge::chardev(b"/etc/null"),
            file(b"relative/path"),
        ],
        None,
    );
}

/// Forged metadata (anyone with the public key can write it): paths with
/// `..`, escape sequences, DEL and C1 controls, bytes that are not UTF-8,
/// a symlink target with a newline, chunk lists that are garbage, no
/// index on `path`. `ls`, `find` and `diff` print it escaped, never
/// crash, and leave nothing in TMPDIR or anywhere else.
#[test]
fn forged_metadata_is_shown_escaped() {
    let env = Env::new(Backend::Local);
    fs::write(env.src().join("real.txt"), "real").unwrap();
    env.create();
    let real = newest_id(&env);
    let tmp = env.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let forged = vaultik::layout::make_id("forger", "x", 1_700_000_000);
    forge_odd_names(&env, &forged);
    let run = |args: &[&str]| run_in(&env, &tmp, args);
    let text = checked(&run(&["ls", &forged, "-R"]), &["ls forged"], 0);
    assert_eq!(text.lines().count(), 9, "{text}");
    for want in [
        "/etc/../../outside",
        "/etc/\\u{1b}[2J\\u{1b}]0;owned\\u{7}title",
        "/etc/not-utf8-\u{fffd}\u{fffd}",
        "/etc/new\\nline",
        "/etc/c1-\\u{9b}2J\\u{7f}",
        "/etc/link -> /target\\nwith newline\\u{1b}[31m",
        "/etc/hard (hard link of /etc/\\u{1b}[1mfirst)",
        "1, 3 ",
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    let v = json_lines(&checked(
        &run(&["ls", &forged, "-R", "--json"]),
        &["ls forged --json"],
        0,
    ));
    assert_eq!(v.len(), 9);
    assert!(v.iter().any(|e| e["path"] == "/etc/c1-\u{9b}2J\u{7f}"));
    assert!(
        v.iter()
            .any(|e| e["target"] == "/target\nwith newline\u{1b}[31m")
    );
    assert!(
        v.iter()
            .any(|e| e["path_hex"] == "2f6574632f6e6f742d757466382dfffe")
    );
    let text = checked(&run(&["ls", &forged, "/etc/link"]), &["ls forged link"], 0);
    assert_eq!(text.lines().count(), 1, "{text}");
    let found = checked(
        &run(&["find", "*", "--snapshot", &forged]),
        &["find forged"],
        0,
    );
    assert_eq!(found.lines().count(), 10, "{found}");
    // Garbage chunk lists are compared as they are, never parsed.
    let diffed = checked(&run(&["diff", &real, &forged]), &["diff forged"], 0);
    assert!(diffed.contains("+ /etc/\\u{1b}[2J"), "{diffed}");
    assert!(
        diffed.ends_with("9 added (80 B), 2 removed (4 B), 0 changed, 0 unchanged\n"),
        "{diffed}"
    );
}

/// A kind this build does not know is shown as `?` (columns of the wrong
/// type are an error naming the entry: see the unit tests); metadata that
/// cannot be read is an error for `ls`, and for `find` a warning naming
/// the snapshot, the others searched, exit status 1.
#[test]
fn unreadable_snapshots_are_named_and_the_rest_searched() {
    let env = Env::new(Backend::Local);
    fs::write(env.src().join("real.txt"), "real").unwrap();
    env.create();
    let real = newest_id(&env);
    let tmp = env.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let run = |args: &[&str]| run_in(&env, &tmp, args);
    let broken = vaultik::layout::make_id("forger", "y", 1_700_000_001);
    let mut odd = forge::file(b"/\x1b[5mbad", 0o644);
    odd.kind = 0;
    forge::forge(&env, &broken, &[odd], None);
    let db = env.store_dir().join("metadata").join(&broken);
    assert!(db.is_dir());
    let o = run(&["ls", &broken, "-R"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "an unknown kind is shown as such: {}",
        stderr(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).starts_with("?"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // A metadata object that is not one: find names it and goes on.
    fs::write(db.join("db.zst.age"), b"garbage").unwrap();
    let o = run(&["find", "real.txt"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&real));
    assert!(
        stderr(&o).contains(&format!("snapshot {broken} not searched")),
        "{}",
        stderr(&o)
    );
    let o = run(&["ls", &broken]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

// The newcomer's three commands: which snapshot has yesterday's
// nginx.conf, restore just that file from it, and compare.
both!(find_and_restore_yesterdays_version, |b| {
    let env = Env::new(b);
    let nginx = env.src().join("etc/nginx");
    fs::create_dir_all(&nginx).unwrap();
    let conf = nginx.join("nginx.conf");
    fs::write(&conf, "worker_processes 2;\n").unwrap();
    env.create();
    next_second();
    fs::write(&conf, "worker_processes 16; # after the upgrade\n").unwrap();
    env.create();
    // 1. find: the newest first; the one before the upgrade is second.
    let text = ok(&env, &["find", "nginx.conf"]);
    let headers: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(' '))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(headers.len(), 2, "{text}");
    let before = headers[1];
    // 2. restore that file alone.
    let target = env.path().join("yesterday");
    env.restore_ok(before, &target, &[conf.to_str().unwrap()]);
    let got = restored(&target, &conf);
    assert_eq!(fs::read_to_string(&got).unwrap(), "worker_processes 2;\n");
    assert_eq!(tree::files_under(&target), vec![got.clone()]);
    // 3. compare with today's (here, with diff).
    let d = ok(&env, &["diff", before, "latest", conf.to_str().unwrap()]);
    assert!(
        d.starts_with(&format!(
            "M {}  (content, size 20 B -> 41 B",
            conf.display()
        )),
        "{d}"
    );
});
