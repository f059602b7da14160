//! Streams (issue 17): standard input and a configured command's output
//! backed up as one file, deduplicated like any file; restored to standard
//! output in order, every chunk checked. A stream that fails never looks
//! like a good backup.

use std::io::{Read, Write};
use std::process::{Child, Stdio};

use sha2::{Digest, Sha256};

use crate::util::tree::random_bytes;
use crate::util::{Backend, Env, figure, setting, stderr};

const MIB: usize = 1 << 20;

/// `snapshot create --stdin NAME` in the background, reading what the
/// test writes to its standard input.
fn spawn_stdin(env: &Env, name: &str) -> Child {
    if !env.config_path().exists() {
        env.write_config();
    }
    env.cmd()
        .args(["snapshot", "create", "--stdin", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Back up `data` as snapshot `name`; the summary line.
fn back_up(env: &Env, name: &str, data: &[u8]) -> String {
    let mut child = spawn_stdin(env, name);
    let mut input = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// `restore SNAPSHOT --stdout [PATH]`: what came out, and how it ended.
fn restore_stdout(env: &Env, snapshot: &str, path: Option<&str>) -> std::process::Output {
    let mut args = vec!["restore", snapshot, "--stdout"];
    args.extend(path);
    env.run_with_key(&args)
}

fn id_of(env: &Env, name: &str) -> String {
    env.snapshot_ids()
        .into_iter()
        .rfind(|id| id.starts_with(&format!("testhost_{name}_")))
        .unwrap_or_else(|| panic!("no snapshot named {name}"))
}

/// Mostly zeros, with seeded random islands (a sparse-ish disk image or
/// `zfs send` of a part-full dataset): block `i` of 1 MiB is random when
/// `i % 16 == 3`, half random when `i % 16 == 9`, zeros otherwise.
fn sparse_block(i: usize, buf: &mut [u8]) {
    buf.fill(0);
    match i % 16 {
        3 => buf.copy_from_slice(&random_bytes(MIB, i as u64)),
        9 => buf[..MIB / 2].copy_from_slice(&random_bytes(MIB / 2, i as u64)),
        _ => {}
    }
}

/// Peak memory of a finished child, from GNU time's `-f %M` on stderr.
fn peak_kib(err: &str) -> u64 {
    err.lines()
        .filter_map(|l| l.trim().strip_prefix("PEAK_KIB="))
        .find_map(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak in {err}"))
}

#[test]
fn a_multi_gib_stream_round_trips_in_bounded_memory() {
    let env = Env::new(Backend::S3);
    env.write_config();
    let gib = setting("VAULTIK_TEST_STREAM_GIB", 2) as usize;
    let blocks = gib * 1024;
    let gnu_time = std::path::Path::new("/usr/bin/time").is_file();
    // In: generated block by block while vaultik reads it, hashed on the way.
    let mut cmd = env.cmd();
    if gnu_time {
        cmd = std::process::Command::new("/usr/bin/time");
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", env.path())
            .env("VAULTIK_CONFIG", env.config_path())
            .current_dir(env.path())
            .args(["-f", "PEAK_KIB=%M", crate::util::bin()]);
    }
    let mut child = cmd
        .args(["snapshot", "create", "--stdin", "image"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; MIB];
        for i in 0..blocks {
            sparse_block(i, &mut buf);
            h.update(&buf);
            input.write_all(&buf).unwrap();
        }
        h.finalize()
    });
    let out = child.wait_with_output().unwrap();
    let sum_in = writer.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        summary.contains(&format!("({gib}.0 GiB) scanned")),
        "{summary}"
    );
    // Zeros are one chunk: what is stored is about the random part (3/32).
    let stored = figure(&summary, "blobs (");
    assert!(stored >= 1, "{summary}");
    if gnu_time {
        let peak = peak_kib(&stderr(&out));
        assert!(
            peak < 200 * 1024,
            "backup of a {gib} GiB stream peaked at {peak} KiB"
        );
    }

    // Out: streamed to a pipe, hashed as it comes.
    let id = id_of(&env, "image");
    let mut cmd = if gnu_time {
        let mut c = std::process::Command::new("/usr/bin/time");
        c.args(["-f", "PEAK_KIB=%M", crate::util::bin()]);
        c
    } else {
        std::process::Command::new(crate::util::bin())
    };
    let mut child = cmd
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", env.path())
        .env("VAULTIK_CONFIG", env.config_path())
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .env("TMPDIR", env.path())
        .args(["restore", &id, "--stdout"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut output = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; MIB];
        let mut n = 0u64;
        loop {
            let k = output.read(&mut buf).unwrap();
            if k == 0 {
                return (h.finalize(), n);
            }
            h.update(&buf[..k]);
            n += k as u64;
        }
    });
    let out = child.wait_with_output().unwrap();
    let (sum_out, n) = reader.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(n, (blocks * MIB) as u64);
    assert_eq!(sum_in, sum_out, "what came out is what went in");
    let err = stderr(&out);
    assert!(err.contains("to standard output"), "{err}");
    if gnu_time {
        let peak = peak_kib(&err);
        assert!(
            peak < 200 * 1024,
            "restore of a {gib} GiB stream peaked at {peak} KiB"
        );
    }
}

both!(a_changed_stream_uploads_only_its_new_chunks, |backend| {
    let env = Env::new(backend);
    env.write_config();
    let first = random_bytes(48 * MIB, 7);
    // Tomorrow's dump: a few bytes changed, a few hundred inserted.
    let mut second = first.clone();
    second[20 * MIB..20 * MIB + 10].copy_from_slice(b"0123456789");
    let at = 33 * MIB;
    let tail = second.split_off(at);
    second.extend_from_slice(&random_bytes(700, 8));
    second.extend_from_slice(&tail);

    let s1 = back_up(&env, "dump", &first);
    let s2 = back_up(&env, "dump", &second);
    let new1 = figure(&s1, "new chunks");
    let new2 = figure(&s2, "new chunks");
    assert!(new1 >= 20, "{s1}");
    // Only the chunks around the two edits are new.
    assert!(new2 <= 6, "second stream: {s2}");
    assert!(new2 * 8 < new1, "{s1}\n{s2}");
    let ids: Vec<String> = env.snapshot_ids();
    assert_eq!(ids.len(), 2);
    for (id, want) in ids.iter().zip([&first, &second]) {
        let out = restore_stdout(&env, id, None);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(out.stdout == *want, "{id} restored different bytes");
    }
    // And the stream is a file like any other: restorable into a target.
    let target = env.path().join("r");
    env.restore_ok(&ids[1], &target, &["/stdin/dump"]);
    assert!(std::fs::read(target.join("stdin/dump")).unwrap() == second);
});

#[test]
fn a_command_that_fails_or_is_killed_publishes_nothing() {
    let mut env = Env::new(Backend::S3);
    env.raw.extend([
        "[snapshot db]".to_string(),
        "command = sh -c 'head -c 3000000 /dev/urandom; echo \"pg_dumpall: error: could not connect\" >&2; exit 4'".to_string(),
        "[snapshot killed]".to_string(),
        "command = sh -c 'head -c 2000000 /dev/urandom; kill -KILL $$'".to_string(),
        "[snapshot ok]".to_string(),
        "command = printf 'a dump\\n'".to_string(),
    ]);
    env.write_config();
    let out = env.run(&["snapshot", "create", "db"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("exited with status 4"), "{err}");
    assert!(
        err.contains("pg_dumpall: error: could not connect"),
        "{err}"
    );
    assert!(err.contains("no snapshot was made"), "{err}");
    let out = env.run(&["snapshot", "create", "killed"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("killed by signal 9"),
        "{}",
        stderr(&out)
    );
    assert!(env.snapshot_ids().is_empty(), "nothing published");
    // What was uploaded is in the store, and the index knows nothing more.
    let stored = env.blob_keys();
    for k in env.index_blob_keys() {
        assert!(stored.contains(&k), "index has {k}, the store does not");
    }
    // A command that succeeds: its output is the snapshot's one file.
    env.ok(&["snapshot", "create", "ok"]);
    let out = restore_stdout(&env, "latest", None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, b"a dump\n");
    // Every section at once: the failure stops the run with status 2.
    let out = env.run(&["snapshot", "create"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn a_killed_stream_publishes_nothing() {
    let env = Env::new(Backend::S3);
    env.write_config();
    for sig in [libc::SIGKILL, libc::SIGTERM] {
        let mut child = spawn_stdin(&env, "image");
        let mut input = child.stdin.take().unwrap();
        input.write_all(&random_bytes(12 * MIB, 3)).unwrap();
        unsafe { libc::kill(child.id() as i32, sig) };
        drop(input);
        let st = child.wait().unwrap();
        assert!(!st.success());
        assert!(env.snapshot_ids().is_empty(), "signal {sig}: published");
    }
    // The next run is a good one.
    let data = random_bytes(12 * MIB, 3);
    back_up(&env, "image", &data);
    let out = restore_stdout(&env, "latest", None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data);
}

#[test]
fn an_empty_stream_is_a_warning() {
    let env = Env::new(Backend::Local);
    env.write_config();
    let out = env
        .cmd()
        .args(["snapshot", "create", "--stdin", "nothing", "--cron"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("standard input was empty"), "{err}");
    assert!(out.stdout.is_empty(), "--cron prints nothing else");
    let out = restore_stdout(&env, "latest", None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn stdin_sections_and_names_are_checked() {
    let mut env = Env::new(Backend::Local);
    env.raw.extend(
        [
            "[snapshot fed]",
            "storage_class = STANDARD_IA",
            "[snapshot cmd]",
            "command = true",
        ]
        .map(String::from),
    );
    env.write_config();
    // A section without path or command is for --stdin: not run by name
    // alone, left out of a run of every section.
    let out = env.run(&["snapshot", "create", "fed"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--stdin fed"), "{}", stderr(&out));
    env.ok(&["snapshot", "create"]);
    assert_eq!(env.snapshot_ids().len(), 1, "only cmd ran");
    // --stdin into a section with a command, or a name that is not one.
    let out = env.run(&["snapshot", "create", "--stdin", "cmd"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("has `command`"), "{}", stderr(&out));
    let out = env.run(&["snapshot", "create", "--stdin", "a/b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--stdin"), "{}", stderr(&out));
    back_up(&env, "fed", b"fed data");
    back_up(&env, "adhoc", b"no section needed");
    let out = restore_stdout(&env, &id_of(&env, "adhoc"), Some("/stdin/adhoc"));
    assert_eq!(out.stdout, b"no section needed");
}

#[test]
fn restore_to_stdout_picks_one_file() {
    let env = Env::new(Backend::S3);
    std::fs::write(env.src().join("a"), b"alpha").unwrap();
    std::fs::write(env.src().join("b"), random_bytes(3 * MIB, 1)).unwrap();
    std::fs::create_dir(env.src().join("d")).unwrap();
    env.create();
    let out = restore_stdout(&env, "latest", None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("more than one file"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    let b = env.src().join("b");
    let out = restore_stdout(&env, "latest", Some(b.to_str().unwrap()));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == std::fs::read(&b).unwrap());
    let d = env.src().join("d");
    let out = restore_stdout(&env, "latest", Some(d.to_str().unwrap()));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    let out = restore_stdout(&env, "latest", Some("/no/such/file"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not in snapshot"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn restore_to_stdout_stops_at_a_bad_chunk() {
    let env = Env::new(Backend::S3);
    env.write_config();
    let data = random_bytes(6 * MIB, 11);
    back_up(&env, "img", &data);
    // Damage the end of the one blob: the last chunk fails its check.
    let blob = env.store_dir().join("host1").join(&env.blob_keys()[0]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n - 100] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let out = restore_stdout(&env, "latest", None);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let offset: usize = err
        .split("/stdin/img at offset ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no offset in {err}"));
    assert!(err.contains("truncated stream"), "{err}");
    assert!(offset > 0 && offset < data.len(), "{err}");
    assert_eq!(out.stdout.len(), offset, "everything before the bad chunk");
    assert!(out.stdout == data[..offset]);
}

#[test]
fn a_reader_that_goes_away_is_an_error() {
    let env = Env::new(Backend::Local);
    env.write_config();
    back_up(&env, "img", &random_bytes(20 * MIB, 5));
    let mut child = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(["restore", "latest", "--stdout"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = vec![0u8; 1000];
    out.read_exact(&mut first).unwrap();
    drop(out);
    let done = child.wait_with_output().unwrap();
    // Unlike `snapshot list | head`, a restore cut short did not complete.
    assert_eq!(done.status.code(), Some(2));
    let err = stderr(&done);
    assert!(err.contains("the restore did not complete"), "{err}");
}
