//! Entries swapped during a backup ("backup reads what it walked"): a file
//! replaced by a FIFO, by a symlink or by another file, a directory
//! replaced by a symlink or by another directory, between the walk's stat
//! and the moment it is opened. The swap is made while the run is held at
//! that moment by the binary's test hook (`VAULTIK_TEST_PAUSE_AT`,
//! see `walk::test_pause`), not left to a race. Each is reported as a
//! warning naming the path and left out of the snapshot; nothing else is
//! read in its place, and the run neither hangs nor fails.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::core::restored;
use crate::util::tree::{files_under, random_bytes, set_mtime};
use crate::util::{Backend, Env, stderr};

const SECRET: &[u8] = b"TOP-SECRET: content of a file outside the backed-up tree";

/// A `snapshot create` held just before it opens `at` (a file to read or a
/// directory to list).
struct Held {
    child: Child,
    marker: PathBuf,
}

impl Held {
    /// Start the run and wait until it is held at `at`.
    fn start(env: &Env, at: &Path) -> Held {
        if !env.config_path().exists() {
            env.write_config();
        }
        let child = env
            .cmd()
            .env("VAULTIK_TEST_PAUSE_AT", at)
            .args(["snapshot", "create"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut marker = at.as_os_str().to_owned();
        marker.push(".paused");
        let mut held = Held {
            child,
            marker: PathBuf::from(marker),
        };
        let started = Instant::now();
        while !held.marker.exists() {
            if let Some(status) = held.child.try_wait().unwrap() {
                let out = held.child.wait_with_output().unwrap();
                panic!(
                    "the run ended ({status}) without stopping before it opened {}:\n{}",
                    at.display(),
                    stderr(&out)
                );
            }
            if started.elapsed() > Duration::from_secs(30) {
                held.child.kill().unwrap();
                panic!("the run never stopped before it opened {}", at.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        held
    }

    /// Let the run go on; it must end within 30 s (it is killed, and the
    /// test fails, if it hangs).
    fn finish(mut self) -> Output {
        fs::remove_file(&self.marker).unwrap();
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                self.child.kill().unwrap();
                let out = self.child.wait_with_output().unwrap();
                panic!("the backup hung after the swap (killed):\n{}", stderr(&out));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.wait_with_output().unwrap()
    }
}

/// The run succeeded (exit code 0: a swap is a warning, not a skip) and
/// warned once, naming `path`, with `what`.
fn assert_warned(out: &Output, path: &Path, what: &str) {
    let err = stderr(out);
    assert!(
        out.status.success(),
        "exit {}:\nstdout: {}\nstderr: {err}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(&format!("{}: replaced", path.display())))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one warning naming {}: {err}",
        path.display()
    );
    assert!(lines[0].contains(what), "{what} in: {err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 warnings"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A source tree with files on either side of the one to swap.
fn tree(env: &Env) {
    let src = env.src();
    fs::write(src.join("a.txt"), b"alpha").unwrap();
    fs::create_dir(src.join("z")).unwrap();
    fs::write(src.join("z/zz.bin"), random_bytes(200_000, 4)).unwrap();
}

/// Restore the latest snapshot; assert the rest of the tree is there and
/// no file holds `SECRET`. Returns where the source tree was restored.
fn restore_checked(env: &Env) -> PathBuf {
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    let dest = restored(&target, &env.src());
    assert_eq!(fs::read(dest.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(
        fs::read(dest.join("z/zz.bin")).unwrap(),
        random_bytes(200_000, 4)
    );
    for f in files_under(&target) {
        let data = fs::read(&f).unwrap();
        assert!(
            !data.windows(SECRET.len()).any(|w| w == SECRET),
            "{} holds the outside file's content",
            f.display()
        );
    }
    dest
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

/// A directory outside the source tree holding secret files.
fn outside(env: &Env) -> PathBuf {
    let dir = env.path().join("outside");
    fs::create_dir_all(dir.join("deeper")).unwrap();
    fs::write(dir.join("secret-a.txt"), SECRET).unwrap();
    fs::write(dir.join("deeper/secret-b.txt"), SECRET).unwrap();
    dir
}

#[test]
fn a_file_swapped_for_a_fifo_is_not_waited_for() {
    let env = Env::new(Backend::Local);
    tree(&env);
    let victim = env.src().join("victim.bin");
    fs::write(&victim, random_bytes(50_000, 1)).unwrap();
    let held = Held::start(&env, &victim);
    fs::remove_file(&victim).unwrap();
    mkfifo(&victim);
    let out = held.finish();
    assert_warned(&out, &victim, "(now a FIFO); not in this snapshot");
    let dest = restore_checked(&env);
    assert!(
        fs::symlink_metadata(dest.join("victim.bin")).is_err(),
        "the swapped file is not in the snapshot"
    );
}

#[test]
fn a_file_swapped_for_a_symlink_is_not_followed() {
    let env = Env::new(Backend::Local);
    tree(&env);
    let secret = outside(&env).join("secret-a.txt");
    let victim = env.src().join("victim.txt");
    fs::write(&victim, b"harmless content").unwrap();
    let held = Held::start(&env, &victim);
    fs::remove_file(&victim).unwrap();
    symlink(&secret, &victim).unwrap();
    let out = held.finish();
    assert_warned(&out, &victim, "(now a symlink); not in this snapshot");
    let dest = restore_checked(&env);
    assert!(fs::symlink_metadata(dest.join("victim.txt")).is_err());
    // The next run records what is there now: a symlink, not its target.
    env.create();
    let target = env.path().join("restore2");
    env.restore_ok("latest", &target, &[]);
    let link = restored(&target, &victim);
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_link(&link).unwrap(), secret);
}

#[test]
fn a_file_replaced_by_another_file_is_left_out() {
    // Another regular file renamed over it, of the same size and mtime (so
    // nothing but its inode tells it apart), owned by someone else: it is
    // not stored under the walked file's stat and owner.
    let env = Env::new(Backend::Local);
    tree(&env);
    let victim = env.src().join("victim.bin");
    fs::write(&victim, random_bytes(30_000, 1)).unwrap();
    set_mtime(&victim, 1_600_000_000, 0);
    let held = Held::start(&env, &victim);
    let other = env.src().join("other.tmp");
    fs::write(&other, random_bytes(30_000, 2)).unwrap();
    set_mtime(&other, 1_600_000_000, 0);
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&other, Some(4321), Some(4321)).unwrap();
    }
    fs::rename(&other, &victim).unwrap();
    let out = held.finish();
    assert_warned(&out, &victim, "(now another file); not in this snapshot");
    let dest = restore_checked(&env);
    assert!(fs::symlink_metadata(dest.join("victim.bin")).is_err());
    // The next run reads the new file, with its own stat.
    env.create();
    let target = env.path().join("restore2");
    env.restore_ok("latest", &target, &[]);
    let got = restored(&target, &victim);
    assert_eq!(fs::read(&got).unwrap(), random_bytes(30_000, 2));
    assert_eq!(
        fs::metadata(&got).unwrap().uid(),
        fs::metadata(&victim).unwrap().uid()
    );
}

#[test]
fn a_directory_swapped_for_a_symlink_is_not_listed() {
    let env = Env::new(Backend::Local);
    tree(&env);
    let out_dir = outside(&env);
    let sub = env.src().join("sub");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("own.txt"), b"own").unwrap();
    let held = Held::start(&env, &sub);
    fs::rename(&sub, env.path().join("moved-away")).unwrap();
    symlink(&out_dir, &sub).unwrap();
    let out = held.finish();
    assert_warned(
        &out,
        &sub,
        "(now a symlink); its contents are not in this snapshot",
    );
    let dest = restore_checked(&env);
    // Recorded as it was stat'ed, a directory, with nothing in it.
    assert!(dest.join("sub").is_dir());
    assert_eq!(fs::read_dir(dest.join("sub")).unwrap().count(), 0);
}

#[test]
fn a_directory_replaced_by_another_directory_is_not_listed() {
    let env = Env::new(Backend::Local);
    tree(&env);
    let out_dir = outside(&env);
    let sub = env.src().join("sub");
    fs::create_dir(&sub).unwrap();
    fs::write(sub.join("own.txt"), b"own").unwrap();
    let held = Held::start(&env, &sub);
    fs::rename(&sub, env.path().join("moved-away")).unwrap();
    fs::rename(&out_dir, &sub).unwrap();
    let out = held.finish();
    assert_warned(
        &out,
        &sub,
        "(now another directory); its contents are not in this snapshot",
    );
    let dest = restore_checked(&env);
    assert!(dest.join("sub").is_dir());
    assert_eq!(fs::read_dir(dest.join("sub")).unwrap().count(), 0);
}

/// Unmounts what it mounted, even when the test fails.
struct Mounts(Vec<PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn mount_tmpfs(at: &Path) -> bool {
    let src = c"tmpfs";
    let c = std::ffi::CString::new(at.as_os_str().as_bytes()).unwrap();
    unsafe { libc::mount(src.as_ptr(), c.as_ptr(), src.as_ptr(), 0, std::ptr::null()) == 0 }
}

#[test]
fn an_automount_point_mounted_by_the_walk_is_walked() {
    // Not a swap: a directory stat'ed as the root of one filesystem (the
    // autofs trigger) that is another once opened (what the open mounted).
    // The walk crosses mount points, so it is listed, with no warning.
    // Stood in for by two tmpfs mounts, the second made while the run is
    // held before it opens the directory (needs CAP_SYS_ADMIN).
    let env = Env::new(Backend::Local);
    tree(&env);
    let auto = env.src().join("auto");
    fs::create_dir(&auto).unwrap();
    let mut mounts = Mounts(Vec::new());
    if !mount_tmpfs(&auto) {
        eprintln!("cannot mount here (not privileged): automount case not checked");
        return;
    }
    mounts.0.push(auto.clone());
    let held = Held::start(&env, &auto);
    assert!(mount_tmpfs(&auto));
    mounts.0.push(auto.clone());
    fs::write(auto.join("mounted.txt"), b"on the mounted filesystem").unwrap();
    let out = held.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 warnings"),
        "{}",
        stderr(&out)
    );
    let dest = restore_checked(&env);
    assert_eq!(
        fs::read(dest.join("auto/mounted.txt")).unwrap(),
        b"on the mounted filesystem"
    );
    drop(mounts);
}
