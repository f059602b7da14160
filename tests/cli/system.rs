//! Whole-system backups (issue 18): `one_file_system` with a tmpfs mounted
//! inside the tree, pseudo-filesystems (a proc mounted inside it) skipped
//! whatever the setting, tag files (`exclude_if_present`, `exclude_caches`
//! with a valid and an invalid CACHEDIR.TAG) and `exclude_from`; what was
//! left out is counted in the summary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::core::restored;
use crate::util::{Backend, Env, figure};

/// A filesystem mounted for a test, unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    /// `mount -t KIND KIND DIR`, or None (with the reason printed) when this
    /// process may not mount (not root, or no CAP_SYS_ADMIN).
    fn new(kind: &str, dir: &Path) -> Option<Mounted> {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", kind, kind])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount {kind} on {} (needs root): {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Mounted(dir.to_path_buf()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Paths restored, relative to the source tree, sorted.
fn restored_tree(env: &Env, target: &Path) -> Vec<String> {
    let root = restored(target, &env.src());
    crate::util::tree::entries(&root)
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

#[test]
fn one_file_system_and_pseudo_filesystems() {
    let mut env = Env::new(Backend::Local);
    let src = env.src();
    fs::write(src.join("root-file"), b"on the root filesystem").unwrap();
    let Some(_tmp) = Mounted::new("tmpfs", &src.join("mnt")) else {
        return;
    };
    fs::write(src.join("mnt/on-tmpfs"), b"another filesystem").unwrap();
    let Some(_proc) = Mounted::new("proc", &src.join("proc")) else {
        return;
    };
    // Off (the default): the tmpfs is crossed, the proc never.
    env.write_config();
    let out = env.create();
    assert_eq!(figure(&out, "mount points not crossed"), 1, "{out}");
    let target = env.path().join("r1");
    env.restore_ok("latest", &target, &[]);
    assert_eq!(
        restored_tree(&env, &target),
        ["mnt", "mnt/on-tmpfs", "proc", "root-file"]
    );

    // On: the tmpfs is recorded, empty, like the proc.
    env.extra.push("one_file_system = true".into());
    env.write_config();
    let out = env.create();
    assert_eq!(figure(&out, "mount points not crossed"), 2, "{out}");
    let target = env.path().join("r2");
    env.restore_ok("latest", &target, &[]);
    assert_eq!(restored_tree(&env, &target), ["mnt", "proc", "root-file"]);

    // A configured path that is itself a mount point is backed up.
    env.extra.clear();
    env.snapshots = vec![("mnt".into(), vec![src.join("mnt")], vec![])];
    env.write_config();
    // The last section is [snapshot mnt]: the setting is that snapshot's.
    let text = fs::read_to_string(env.config_path()).unwrap() + "one_file_system = true\n";
    fs::write(env.config_path(), text).unwrap();
    env.ok(&["snapshot", "create", "mnt"]);
    let target = env.path().join("r3");
    let id = env
        .snapshot_ids()
        .into_iter()
        .rfind(|i| i.contains("_mnt_"))
        .unwrap();
    env.restore_ok(&id, &target, &[]);
    let got = fs::read(restored(&target, &src.join("mnt/on-tmpfs"))).unwrap();
    assert_eq!(got, b"another filesystem");
}

#[test]
fn tags_caches_and_exclude_files() {
    let mut env = Env::new(Backend::S3);
    let src = env.src();
    for d in ["build", "cache", "fake-cache", "keep", "node_modules/pkg"] {
        fs::create_dir_all(src.join(d)).unwrap();
        fs::write(src.join(d).join("data"), d.as_bytes()).unwrap();
    }
    fs::write(src.join("build/.nobackup"), b"").unwrap();
    fs::write(
        src.join("cache/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache directory tag\n",
    )
    .unwrap();
    fs::write(
        src.join("fake-cache/CACHEDIR.TAG"),
        b"Signature: not the one\n",
    )
    .unwrap();
    fs::write(src.join("keep/x.swp"), b"").unwrap();
    let list = env.path().join("excludes.txt");
    fs::write(&list, "# editor files\n*.swp\n\nnode_modules\n").unwrap();
    env.extra.extend([
        "exclude_if_present = .nobackup".to_string(),
        "exclude_caches = true".to_string(),
        format!("exclude_from = {}", list.display()),
    ]);
    env.write_config();
    let out = env.create();
    assert_eq!(figure(&out, "tagged directories"), 2, "{out}");
    assert_eq!(figure(&out, "excluded by pattern"), 2, "{out}");
    let target = env.path().join("r");
    env.restore_ok("latest", &target, &[]);
    assert_eq!(
        restored_tree(&env, &target),
        [
            "build",
            "build/.nobackup",
            "cache",
            "cache/CACHEDIR.TAG",
            "fake-cache",
            "fake-cache/CACHEDIR.TAG",
            "fake-cache/data",
            "keep",
            "keep/data"
        ]
    );
    // An exclude file with a bad pattern names itself and the line.
    fs::write(&list, "ok\n[unclosed\n").unwrap();
    let out = env.run(&["snapshot", "create"]);
    assert_eq!(out.status.code(), Some(2));
    let err = crate::util::stderr(&out);
    assert!(err.contains(&format!("{}:2:", list.display())), "{err}");
}
