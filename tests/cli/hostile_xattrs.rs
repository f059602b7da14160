//! Forged extended attributes and inode flags (issue 29): every name and
//! value in a forged snapshot is the attacker's. A restore writes them
//! only to the objects it makes, inside the target (a capability or a
//! trusted.* attribute only as root), never sets the immutable or
//! append-only flag on anything outside it (nor on the target itself),
//! refuses an entry whose attributes a backup would not write (oversized,
//! duplicate or out-of-order names, unknown namespaces, cut short, unknown
//! flags, wrong types) with one line naming it, and stays within bounded
//! memory and time with the largest it accepts.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::hostile::{Scratch, assert_named, root_or_skip};
use crate::util::forge::{self, Forged, census, dir, fifo, file, symlink, xattr_record};
use crate::util::{Backend, Env, stderr};

/// A capability set: cap_net_raw, effective and permitted.
fn cap_net_raw() -> Vec<u8> {
    let mut v = 0x0200_0001u32.to_le_bytes().to_vec();
    v.extend_from_slice(&(1u32 << 13).to_le_bytes());
    v.extend_from_slice(&[0; 12]);
    v
}

/// Takes the immutable and append-only flags off everything under `dir`
/// when dropped (the test's directory must be removable).
struct Unflag(std::path::PathBuf);

impl Drop for Unflag {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .args(["-R", "-f", "-i", "-a"])
            .arg(&self.0)
            .output();
    }
}

fn xattrs_of(p: &Path) -> Vec<(String, Vec<u8>)> {
    forge::xattrs_of(p)
}

fn flags_of(p: &Path) -> u32 {
    forge::flags_of(p, &fs::symlink_metadata(p).unwrap()).unwrap_or(0)
}

/// Capabilities, trusted.* and security.* attributes, and immutable and
/// append-only flags on files, directories, symlinks and FIFOs, some below
/// a parent a later entry tries to turn into a symlink out of the target,
/// and on the snapshot's `/`: set on what the restore made, nothing
/// outside changes (the census covers attributes and flags), the target
/// itself gets no flags.
#[test]
fn forged_attributes_land_only_on_what_the_restore_made() {
    if !root_or_skip("forged_attributes_land_only_on_what_the_restore_made") {
        return;
    }
    let env = Env::new(Backend::Local);
    let _unflag = Unflag(env.path().to_path_buf());
    let sc = Scratch::new(&env);
    let b = &sc.base;
    let sentinel = sc.sentinel().as_os_str().as_encoded_bytes().to_vec();
    let cap = cap_net_raw();
    let evil = |e: Forged| {
        e.xattrs(&[
            ("security.capability", &cap),
            ("trusted.evil", b"1"),
            ("security.evil", b"2"),
        ])
    };
    let entries = vec![
        evil(dir(b"/")).flags(0x10),
        evil(file(b"/bin", 0o755).with(b, &[0])).flags(0x10),
        evil(file(b"/multi", 0o755).with(b, &[1, 2])).flags(0x20),
        dir(b"/d").xattrs(&[("user.d", b"d")]).flags(0x10),
        file(b"/d/f", 0o644).xattrs(&[("user.f", b"f")]).flags(0x20),
        // A symlink out of the target, with attributes of its own.
        symlink(b"/out", &sentinel).xattrs(&[("trusted.link", b"l")]),
        fifo(b"/pipe").xattrs(&[("trusted.pipe", b"p")]),
        // A parent that later tries to become a symlink to the sentinel.
        Forged {
            target: None,
            ..symlink(b"/a/x", b"")
        },
        symlink(b"/a", b"../../sentinel"),
        evil(file(b"/a/shadow", 0o600).with(b, &[0])).flags(0x30),
        evil(dir(b"/a/sub")).flags(0x10),
    ];
    let (code, err, t) = sc.restore(&env, "forged attributes", &entries);
    assert_eq!(code, 2, "{err}");
    assert_named(&err, &["/a: duplicate path"]);
    assert!(
        err.contains("inode flags of / not set on the target directory itself"),
        "{err}"
    );
    assert_eq!(flags_of(&t) & 0x30, 0, "the target itself is not flagged");
    // On the objects made, as recorded (as root).
    let names = |p: &Path| -> Vec<String> { xattrs_of(p).into_iter().map(|(n, _)| n).collect() };
    assert_eq!(
        names(&t.join("bin")),
        ["security.capability", "security.evil", "trusted.evil"]
    );
    assert_eq!(flags_of(&t.join("bin")) & 0x30, 0x10);
    assert_eq!(flags_of(&t.join("multi")) & 0x30, 0x20);
    assert_eq!(flags_of(&t.join("d")) & 0x30, 0x10);
    assert_eq!(names(&t.join("out")), ["trusted.link"]);
    assert_eq!(names(&t.join("pipe")), ["trusted.pipe"]);
    assert!(fs::symlink_metadata(t.join("a")).unwrap().is_dir());
    assert_eq!(flags_of(&t.join("a/shadow")) & 0x30, 0x30);
    assert_eq!(
        fs::read_link(t.join("out"))
            .unwrap()
            .as_os_str()
            .as_encoded_bytes(),
        sentinel.as_slice()
    );
    // The sentinel's own shadow file and directory kept theirs: none.
    assert!(xattrs_of(&sc.sentinel().join("shadow")).is_empty());
    assert_eq!(
        flags_of(&sc.sentinel().join("shadow")),
        flags_of(&sc.root.join("victim"))
    );
}

/// Each way an entry's attributes can be what no backup writes is refused,
/// naming the entry, on one line; the other entries are restored.
#[test]
fn malformed_oversized_and_duplicate_attributes_are_refused() {
    let env = Env::new(Backend::Local);
    let _unflag = Unflag(env.path().to_path_buf());
    let sc = Scratch::new(&env);
    let rec = |name: &str, value: &[u8]| xattr_record(name.as_bytes(), value);
    let ok = rec("user.a", b"1");
    let many: Vec<u8> = (0..=4096)
        .flat_map(|i| rec(&format!("user.{i:05}"), b""))
        .collect();
    let long_names: Vec<u8> = (0..300)
        .flat_map(|i| rec(&format!("user.{i:03}{}", "n".repeat(240)), b""))
        .collect();
    let total: Vec<u8> = (0..17)
        .flat_map(|i| rec(&format!("user.{i:02}"), &vec![0; 64 << 10]))
        .collect();
    let cases: Vec<(&str, Forged, &str)> = vec![
        (
            "/oversized-value",
            file(b"/oversized-value", 0o644).raw_xattrs(rec("user.v", &vec![7; (64 << 10) + 1])),
            "a value of 65537 bytes",
        ),
        (
            "/too-many",
            file(b"/too-many", 0o644).raw_xattrs(many),
            "more than 4096 attributes",
        ),
        (
            "/long-names",
            file(b"/long-names", 0o644).raw_xattrs(long_names),
            "bytes of names",
        ),
        (
            "/over-1-mib",
            file(b"/over-1-mib", 0o644).raw_xattrs(total),
            "more than 1048576",
        ),
        (
            "/duplicate",
            file(b"/duplicate", 0o644).raw_xattrs([ok.clone(), ok.clone()].concat()),
            "twice",
        ),
        (
            "/unordered",
            file(b"/unordered", 0o644)
                .raw_xattrs([rec("user.b", b""), rec("user.a", b"")].concat()),
            "out of order",
        ),
        (
            "/cut",
            file(b"/cut", 0o644).raw_xattrs(ok[..ok.len() - 1].to_vec()),
            "cut short",
        ),
        (
            "/namespace",
            file(b"/namespace", 0o644).raw_xattrs(rec("evil.x", b"")),
            "no kernel takes",
        ),
        (
            "/nul",
            dir(b"/nul").raw_xattrs(rec("user.a\0b", b"")),
            "no kernel takes",
        ),
        (
            "/flags",
            file(b"/flags", 0o644).flags(0x80000),
            "inode flags 0x80000",
        ),
        (
            "/negative-flags",
            file(b"/negative-flags", 0o644).flags(-1),
            "inode flags",
        ),
    ];
    let mut entries: Vec<Forged> = cases.iter().map(|(_, e, _)| e.clone()).collect();
    entries.push(file(b"/fine", 0o644).xattrs(&[("user.fine", b"1")]));
    let (code, err, t) = sc.restore(&env, "malformed attributes", &entries);
    assert_eq!(code, 2, "{err}");
    for (path, _, why) in &cases {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("{path}: ")))
            .unwrap_or_else(|| panic!("{path} not named: {err}"));
        assert!(line.contains(why), "{path}: {line}");
        assert!(line.contains("not restored"), "{line}");
        assert!(!t.join(&path[1..]).exists(), "{path} was restored");
    }
    assert_eq!(
        xattrs_of(&t.join("fine")),
        [("user.fine".to_string(), b"1".to_vec())]
    );
    // Columns of the wrong type.
    let db = forge::db_of_sql(
        &env,
        &format!(
            "{}INSERT INTO info VALUES ('format', '3');
             INSERT INTO entries(path, kind, mode, uid, gid, size, mtime_ns, chunks, xattrs, flags)
             VALUES (x'2f74', 2, 420, 0, 0, 0, 0, x'', 'text', NULL),
                    (x'2f69', 2, 420, 0, 0, 0, 0, x'', NULL, 1.5),
                    (x'2f6f6b', 2, 420, 0, 0, 0, 0, x'', NULL, 16);",
            {
                let s = vaultik::snapshot::META_SCHEMA;
                &s[..s.find("CREATE TABLE temp_files").unwrap()]
            }
        ),
    );
    forge::forge_db(&env, "evil_types_2026-01-02T000000Z", &db, None);
    let target = sc.root.join("targets").join("types");
    let out = env.restore_to("evil_types_2026-01-02T000000Z", &target, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_named(&err, &["/t: ", "/i: "]);
    assert!(!err.contains("/ok"), "{err}");
    assert_eq!(
        census(&sc.root, &sc.root.join("targets")).len(),
        census_len(&sc)
    );
    // `ls` names a malformed entry instead of listing it as if fine.
    let ls = env.run_with_key(&["ls", "evil_types_2026-01-02T000000Z"]);
    assert_eq!(ls.status.code(), Some(2));
    assert!(
        stderr(&ls).contains("/i: its inode flags is not what a backup writes"),
        "{}",
        stderr(&ls)
    );
}

fn census_len(sc: &Scratch) -> usize {
    census(&sc.root, &sc.root.join("targets")).len()
}

/// The largest attributes a snapshot may carry (1 MiB an entry), on many
/// entries: a restore holds a bounded batch of them at a time, takes
/// seconds, and the target's refusals (ext4 keeps 4 KiB an inode) are one
/// warning, counted, not a failure.
#[test]
fn the_largest_attributes_cost_bounded_memory_and_time() {
    let env = Env::new(Backend::Local);
    let sc = Scratch::new(&env);
    let n = crate::util::setting("VAULTIK_HOSTILE_XATTR_ENTRIES", 96);
    let values: Vec<(String, Vec<u8>)> = (0..15)
        .map(|i| (format!("user.big{i:02}"), vec![i as u8; 64 << 10]))
        .collect();
    let pairs: Vec<(&str, &[u8])> = values
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    let entries: Vec<Forged> = (0..n)
        .map(|i| {
            let e = if i % 2 == 0 {
                file(format!("/f{i:04}").as_bytes(), 0o644).with(&sc.base, &[0])
            } else {
                file(format!("/e{i:04}").as_bytes(), 0o644)
            };
            e.xattrs(&pairs)
        })
        .collect();
    let id = "evil_big_2026-01-03T000000Z";
    forge::forge(&env, id, &entries, Some(&sc.base));
    let target = sc.root.join("targets").join("big");
    let mut cmd = env.cmd();
    cmd.env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(["restore", id, "--target"])
        .arg(&target);
    let started = std::time::Instant::now();
    let (code, _out, err, rss) = crate::hostile_store::measured(cmd, env.path());
    let took = started.elapsed();
    assert_eq!(code, 0, "{err}");
    // (A file system that holds them, ext4 with ea_inode, XFS: none.)
    assert!(err.lines().count() <= 1, "{err}");
    if let Some(line) = err.lines().next() {
        assert!(
            line.contains(&format!("of {n} entries refused by the target")),
            "{err}"
        );
    }
    assert!(rss < 150 << 10, "peak RSS {rss} KiB");
    assert!(took.as_secs() < 60, "{took:?}");
    eprintln!(
        "{n} entries of ~1 MiB of extended attributes: {:.1} s, peak RSS {} MiB",
        took.as_secs_f64(),
        rss >> 10
    );
}
