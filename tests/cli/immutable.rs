//! Immutable backups (issue 20) against moto's S3 server with a bucket
//! made with Object Lock: every object a backup writes carries the lock;
//! reuse extends old blobs' locks; a backup reads no object and deletes
//! nothing (a host's key may allow only PutObject and ListBucket); and an
//! attacker holding a host's key, who writes over and deletes everything it
//! can, destroys nothing: every snapshot still restores identical from the
//! versions vaultik wrote, and `verify --deep` names what was done.
//!
//! moto does not enforce everything AWS does (it lets a COMPLIANCE lock be
//! shortened, and a batch delete remove a locked version), so these tests
//! check what vaultik sends and refrains from sending.

use std::fs;

use crate::core::restored;
use crate::util::moto;
use crate::util::proxy::{self, Proxy, Request};
use crate::util::tree::{assert_same_tree, copy_tree, random_bytes};
use crate::util::{Backend, Env, stderr};

const DAY: u64 = 86_400;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A store on a locked moto bucket, seen through a recording proxy, with
/// `object_lock = compliance` and `lock_for`.
pub fn locked_env(lock_for: &str) -> (Env, Proxy) {
    let mut env = Env::new(Backend::Moto);
    env.bucket = format!("{}-locked", env.bucket);
    moto::create_locked_bucket(&env.bucket);
    let p = proxy::start(&env.endpoint);
    env.endpoint = p.endpoint.clone();
    env.extra.push("blob_size_limit = 1MiB".into());
    env.s3_extra.push("object_lock = compliance".into());
    env.s3_extra.push(format!("lock_for = {lock_for}"));
    env.random_files(3, 700_000, 7);
    fs::write(env.src().join("small.txt"), b"a small file").unwrap();
    env.write_config();
    env.settle();
    (env, p)
}

/// Every object under the host's prefix (current versions).
fn objects(env: &Env) -> Vec<String> {
    moto::keys(&env.bucket, "host1/")
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// What a HEAD of `key` says of its lock: mode and retain-until.
fn lock_of(env: &Env, key: &str) -> (String, u64) {
    let a = moto::http("HEAD", &format!("/{}/{key}", env.bucket), &[], b"");
    assert_eq!(a.status, 200, "HEAD {key}: {a:?}");
    let mode = a.header("x-amz-object-lock-mode").unwrap_or("").to_string();
    let until = a
        .header("x-amz-object-lock-retain-until-date")
        .and_then(|d| {
            // 2026-12-05T15:50:44Z (moto may add fractions).
            let c = format!("{}{}{}Z", &d[..13], &d[14..16], &d[17..19]);
            vaultik::time::parse_compact(&c)
        })
        .unwrap_or(0);
    (mode, until)
}

/// The requests recorded since `from`.
fn since(p: &Proxy, from: usize) -> Vec<Request> {
    p.requests.lock().unwrap()[from..].to_vec()
}

/// What a host with only PutObject, PutObjectRetention, ListBucket on its
/// prefix and the two bucket-configuration reads may send: nothing else.
pub fn assert_write_only(reqs: &[Request], bucket: &str, what: &str) {
    assert!(!reqs.is_empty(), "{what}: no request recorded");
    for r in reqs {
        let (path, query) = r.target.split_once('?').unwrap_or((&r.target, ""));
        let params: Vec<&str> = query.split('&').collect();
        let has = |p: &str| {
            params
                .iter()
                .any(|q| *q == p || q.starts_with(&format!("{p}=")))
        };
        let bucket_level = path == format!("/{bucket}") || path == format!("/{bucket}/");
        let ok = match r.method.as_str() {
            // Listings, of the host's prefix only.
            "GET" if bucket_level && (has("list-type") || has("versions")) => {
                has("prefix") && query.contains("prefix=host1")
            }
            // The bucket's configuration (not an object).
            "GET" if bucket_level => has("versioning") || has("object-lock"),
            "PUT" => path.starts_with(&format!("/{bucket}/host1/")),
            _ => false,
        };
        assert!(
            ok,
            "{what}: a write-only host may not send {} {}",
            r.method, r.target
        );
    }
}

#[test]
fn a_locked_bucket_gets_locked_objects_and_backups_read_and_delete_nothing() {
    let (mut env, p) = locked_env("3d");
    let t0 = now();
    // 1. A first run.
    let out = env.create();
    assert!(out.contains("0 GET") && out.contains("0 DELETE"), "{out}");
    assert_write_only(&since(&p, 0), &env.bucket, "first run");
    // Every PUT carries the lock, and the checksum S3 requires with it.
    let puts: Vec<Request> = since(&p, 0)
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert!(puts.len() >= 4, "{puts:?}");
    for r in &puts {
        assert_eq!(
            r.header("x-amz-object-lock-mode"),
            Some("COMPLIANCE"),
            "{r:?}"
        );
        assert!(
            r.header("x-amz-object-lock-retain-until-date").is_some(),
            "{r:?}"
        );
        assert!(r.header("x-amz-checksum-sha256").is_some(), "{r:?}");
    }
    // And the store says so of every object: locked at least lock_for.
    let all = objects(&env);
    assert!(
        all.iter().any(|k| k.starts_with("host1/store/1/")),
        "{all:?}"
    );
    for k in &all {
        let (mode, until) = lock_of(&env, k);
        assert_eq!(mode, "COMPLIANCE", "{k}");
        assert!(until >= t0 + 3 * DAY, "{k}: locked until {until}");
    }

    // 2. An incremental run.
    fs::write(env.src().join("new.bin"), random_bytes(300_000, 8)).unwrap();
    env.settle();
    let n = p.requests.lock().unwrap().len();
    let out = env.create();
    assert!(out.contains("0 GET") && out.contains("0 DELETE"), "{out}");
    assert_write_only(&since(&p, n), &env.bucket, "incremental run");

    // 3. A run killed mid-upload, and the rerun.
    fs::write(env.src().join("big.bin"), random_bytes(3_000_000, 9)).unwrap();
    env.settle();
    let slow = proxy::start_with_delay(&p.endpoint, std::time::Duration::from_millis(300));
    let fast = std::mem::replace(&mut env.endpoint, slow.endpoint.clone());
    env.write_config();
    let mut child = env.spawn_create();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    env.endpoint = fast;
    env.write_config();
    let n = p.requests.lock().unwrap().len();
    let out = env.create();
    assert!(out.contains("0 GET") && out.contains("0 DELETE"), "{out}");
    assert_write_only(&since(&p, n), &env.bucket, "rerun after a kill");

    // 4. The index lost: a fresh one, the store's identity learnt from a
    //    listing.
    fs::remove_file(env.index_path()).unwrap();
    let n = p.requests.lock().unwrap().len();
    let run = env.run(&["snapshot", "create"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(out.contains("0 GET") && out.contains("0 DELETE"), "{out}");
    assert!(!stderr(&run).contains("another store"), "{}", stderr(&run));
    assert_write_only(&since(&p, n), &env.bucket, "index reset");

    // Everything restores.
    let target = env.path().join("r");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn a_bucket_without_object_lock_is_refused_by_name() {
    let mut env = Env::new(Backend::Moto);
    env.s3_extra.push("object_lock = governance".into());
    env.s3_extra.push("lock_for = 7d".into());
    env.write_config();
    let out = env.run(&["snapshot", "create"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&env.bucket) && err.contains("versioning"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(objects(&env).is_empty(), "nothing written");
}

#[test]
fn reuse_extends_the_locks_of_old_blobs_never_shortening_them() {
    let (mut env, p) = locked_env("1d");
    env.create();
    let blobs: Vec<String> = objects(&env)
        .into_iter()
        .filter(|k| k.starts_with("host1/blobs/"))
        .collect();
    let before: Vec<u64> = blobs.iter().map(|k| lock_of(&env, k).1).collect();
    // One blob written over with junk of its size, which the index cannot
    // tell from a listing: the extension must still go to the version
    // vaultik wrote, not to the junk.
    let size = moto::http("HEAD", &format!("/{}/{}", env.bucket, blobs[0]), &[], b"")
        .header("content-length")
        .unwrap()
        .parse::<usize>()
        .unwrap();
    let a = moto::http(
        "PUT",
        &format!("/{}/{}", env.bucket, blobs[0]),
        &[],
        &vec![b'j'; size],
    );
    assert_eq!(a.status, 200, "{a:?}");
    // A longer lock: every reused blob must now be locked 20 days past the
    // new snapshot.
    env.s3_extra.retain(|l| !l.starts_with("lock_for"));
    env.s3_extra.push("lock_for = 20d".into());
    env.write_config();
    fs::write(env.src().join("new.txt"), b"new").unwrap();
    env.settle();
    let n = p.requests.lock().unwrap().len();
    let t1 = now();
    let out = env.create();
    let extensions: Vec<Request> = since(&p, n)
        .into_iter()
        .filter(|r| r.method == "PUT" && r.target.contains("retention"))
        .collect();
    assert_eq!(extensions.len(), blobs.len(), "{out}");
    // Each names the version this host uploaded.
    for r in &extensions {
        assert!(r.target.contains("versionId="), "{}", r.target);
    }
    let first = extensions
        .iter()
        .find(|r| r.target.contains(&blobs[0]))
        .unwrap();
    let version = first
        .target
        .split(['?', '&'])
        .find_map(|q| q.strip_prefix("versionId="))
        .unwrap();
    let a = moto::http(
        "HEAD",
        &format!("/{}/{}?versionId={version}", env.bucket, blobs[0]),
        &[],
        b"",
    );
    let until = a.header("x-amz-object-lock-retain-until-date").unwrap();
    assert!(until > "2026", "{a:?}");
    assert!(
        out.contains(&format!("locks of {} reused blobs extended", blobs.len())),
        "{out}"
    );
    assert!(out.contains(&format!("{} RETENTION", blobs.len())), "{out}");
    for (k, old) in blobs.iter().zip(&before).skip(1) {
        let (mode, until) = lock_of(&env, k);
        assert_eq!(mode, "COMPLIANCE");
        assert!(until >= t1 + 20 * DAY && until > *old, "{k}: {until}");
    }
    let parsed = {
        let c = format!("{}{}{}Z", &until[..13], &until[14..16], &until[17..19]);
        vaultik::time::parse_compact(&c).unwrap()
    };
    assert!(
        parsed >= t1 + 20 * DAY,
        "the version vaultik wrote: {until}"
    );
    // Locked long enough now: the next run extends nothing.
    fs::write(env.src().join("newer.txt"), b"newer").unwrap();
    env.settle();
    let out = env.create();
    assert!(
        !out.contains("extended") && !out.contains("RETENTION"),
        "{out}"
    );
    // A shorter lock_for never shortens a lock.
    env.s3_extra.retain(|l| !l.starts_with("lock_for"));
    env.s3_extra.push("lock_for = 1d".into());
    env.write_config();
    let n = p.requests.lock().unwrap().len();
    fs::write(env.src().join("newest.txt"), b"newest").unwrap();
    env.settle();
    env.create();
    assert!(
        !since(&p, n).iter().any(|r| r.target.contains("retention")),
        "no retention request"
    );
    for k in blobs.iter().skip(1) {
        assert!(lock_of(&env, k).1 >= t1 + 20 * DAY, "{k}");
    }
    // And the snapshots restore, the junk passed over.
    let target = env.path().join("r");
    let out = env.restore_to("latest", &target, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

/// The same files with the same contents (the copies kept of each state
/// have their own times).
fn same_files(a: &std::path::Path, b: &std::path::Path) {
    let names = |d: &std::path::Path| {
        let mut v: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(a), names(b), "{} and {}", a.display(), b.display());
    for n in names(a) {
        assert!(
            fs::read(a.join(&n)).unwrap() == fs::read(b.join(&n)).unwrap(),
            "content of {n:?}"
        );
    }
}

/// What an attacker with a host's key does: write over every object of
/// the prefix, then delete every one (a delete marker over each), and try
/// to delete the versions themselves (refused: they are locked).
fn attack(env: &Env) -> usize {
    let keys = objects(env);
    for k in &keys {
        let a = moto::http(
            "PUT",
            &format!("/{}/{k}", env.bucket),
            &[],
            b"ransomware was here",
        );
        assert_eq!(a.status, 200, "overwrite {k}: {a:?}");
    }
    for k in &keys {
        let a = moto::http("DELETE", &format!("/{}/{k}", env.bucket), &[], b"");
        assert!(a.status == 204 || a.status == 200, "delete {k}: {a:?}");
    }
    // The versions: each listed, each delete refused.
    let a = moto::http(
        "GET",
        &format!("/{}?versions&prefix=host1/blobs/", env.bucket),
        &[],
        b"",
    );
    let text = String::from_utf8_lossy(&a.body).into_owned();
    let mut refused = 0;
    for v in text.split("<Version>").skip(1) {
        let field = |n: &str| {
            v.split(&format!("<{n}>"))
                .nth(1)
                .and_then(|r| r.split(&format!("</{n}>")).next())
                .unwrap_or("")
                .to_string()
        };
        let size: u64 = field("Size").parse().unwrap_or(0);
        if size <= 19 {
            continue;
        }
        let a = moto::http(
            "DELETE",
            &format!(
                "/{}/{}?versionId={}",
                env.bucket,
                field("Key"),
                field("VersionId")
            ),
            &[],
            b"",
        );
        assert_eq!(a.status, 403, "a locked version was deleted: {a:?}");
        refused += 1;
    }
    assert!(objects(env).is_empty(), "every current object deleted");
    refused
}

#[test]
fn an_attacker_with_a_hosts_key_destroys_no_snapshot() {
    let (env, _p) = locked_env("3d");
    // Three snapshots of three states of the tree, each kept aside.
    let mut states = Vec::new();
    for i in 0..3u64 {
        if i > 0 {
            fs::write(
                env.src().join(format!("f{i}.bin")),
                random_bytes(400_000, 20 + i),
            )
            .unwrap();
            fs::write(env.src().join("small.txt"), format!("state {i}")).unwrap();
            env.settle();
        }
        env.create();
        let copy = env.path().join(format!("state{i}"));
        copy_tree(&env.src(), &copy);
        states.push(copy);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let ids = env.snapshot_ids();
    assert_eq!(ids.len(), 3);

    let refused = attack(&env);
    assert!(refused >= 3, "{refused} locked versions refused");
    // `latest` is never a deleted snapshot: only ids reach them.
    let out = env.restore_to("latest", &env.path().join("r-latest"), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no snapshots"), "{}", stderr(&out));

    // Nothing is current any more: a plain listing shows nothing, and
    // `--versions` shows every snapshot, deleted, restorable.
    let out = env.ok(&["snapshot", "list"]);
    assert!(!ids.iter().any(|id| out.contains(id.as_str())), "{out}");
    let out = env.ok(&["snapshot", "list", "--versions"]);
    for id in &ids {
        let line = out.lines().find(|l| l.starts_with(id.as_str())).unwrap();
        assert!(line.contains("deleted"), "{line}");
    }
    // Every snapshot restores identical, from the versions vaultik wrote.
    for (id, state) in ids.iter().zip(&states) {
        let target = env.path().join(format!("r-{id}"));
        let out = env.restore_to(id, &target, &[]);
        assert!(out.status.success(), "{id}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("was deleted") && err.contains("matches its key"),
            "{err}"
        );
        same_files(state, &restored(&target, &env.src()));
    }
    // verify --deep names what was done, and fails.
    let out = env.run_with_key(&["snapshot", "verify", "--deep", &ids[2]]);
    assert_ne!(out.status.code(), Some(0));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        said.contains("replaced") && said.contains("was deleted"),
        "{said}"
    );
    let err = stderr(&out);
    assert!(err.contains("later version(s) written over"), "{err}");
    // The host backs up again.
    fs::write(env.src().join("after.txt"), b"after the attack").unwrap();
    env.settle();
    let out = env.run(&["snapshot", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let target = env.path().join("r-after");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn purge_on_a_locked_bucket_deletes_no_version_and_says_what_lingers() {
    let (mut env, p) = locked_env("3d");
    env.extra.push("grace_period = 0s".into());
    env.write_config();
    env.create();
    let first = env.snapshot_ids();
    fs::write(
        env.src().join("small.txt"),
        b"changed, so the old blob goes",
    )
    .unwrap();
    env.settle();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.create();
    let t0 = now();
    // store info: every object locked, and until when.
    let info = env.ok(&["store", "info", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    let current = objects(&env)
        .iter()
        .filter(|k| k.starts_with("host1/blobs/") || k.starts_with("host1/metadata/"))
        .count();
    assert_eq!(v["locked"]["objects"], current, "{info}");
    let text = env.ok(&["store", "info"]);
    assert!(
        text.contains("locked:") && text.contains("locked until"),
        "{text}"
    );
    // The purge removes the old snapshot: delete markers only, and says
    // that the versions stay, locked.
    let n = p.requests.lock().unwrap().len();
    let out = env.ok(&["snapshot", "purge", "--keep-latest", "1", "--force"]);
    assert!(out.contains("removed 1 snapshot"), "{out}");
    assert!(
        out.contains("versioned bucket") && out.contains("stay as noncurrent versions"),
        "{out}"
    );
    assert!(out.contains("locked until"), "{out}");
    for r in since(&p, n) {
        assert!(
            !r.target.contains("versionId"),
            "a version was asked to go: {} {}",
            r.method,
            r.target
        );
    }
    // The purged snapshot is gone from the list, kept in its versions.
    assert_eq!(env.snapshot_ids().len(), 1);
    let out = env.ok(&["snapshot", "list", "--versions"]);
    assert!(out.contains(&first[0]) && out.contains("deleted"), "{out}");
    let target = env.path().join("r-purged");
    let out = env.restore_to(&first[0], &target, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = fs::read(restored(&target, &env.src()).join("small.txt")).unwrap();
    assert_eq!(got, b"a small file");
    // The locks are still there.
    for k in objects(&env)
        .iter()
        .filter(|k| k.starts_with("host1/blobs/"))
    {
        assert!(lock_of(&env, k).1 > t0, "{k}");
    }
}

#[test]
fn deletion_marks_are_locked_for_their_grace_period() {
    let (mut env, p) = locked_env("3d");
    env.extra.push("grace_period = 2s".into());
    env.write_config();
    env.create();
    // Everything replaced: every old blob falls out of use.
    fs::remove_dir_all(env.src()).unwrap();
    fs::create_dir(env.src()).unwrap();
    fs::write(env.src().join("only.txt"), b"all new").unwrap();
    env.settle();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.create();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let n = p.requests.lock().unwrap().len();
    let out = env.ok(&["snapshot", "purge", "--keep-latest", "1", "--force"]);
    assert!(out.contains("marked "), "{out}");
    let marks: Vec<Request> = since(&p, n)
        .into_iter()
        .filter(|r| r.method == "PUT" && r.target.contains("/gc/marked/"))
        .collect();
    assert!(!marks.is_empty(), "{out}");
    assert!(
        marks
            .iter()
            .all(|m| m.header("x-amz-object-lock-mode") == Some("COMPLIANCE"))
    );
    let key = objects(&env)
        .into_iter()
        .find(|k| k.starts_with("host1/gc/marked/"))
        .unwrap();
    let (_, until) = lock_of(&env, &key);
    let t = now();
    assert!(until > t && until <= t + DAY + 10, "{until}");
}

#[test]
fn turning_object_lock_on_uploads_unlocked_blobs_again_locked() {
    let (mut env, _p) = locked_env("3d");
    env.s3_extra.clear();
    env.write_config();
    env.create();
    let blobs: Vec<String> = objects(&env)
        .into_iter()
        .filter(|k| k.starts_with("host1/blobs/"))
        .collect();
    assert!(lock_of(&env, &blobs[0]).0.is_empty(), "not locked yet");
    env.s3_extra.push("object_lock = governance".into());
    env.s3_extra.push("lock_for = 3d".into());
    env.write_config();
    let out = env.run(&["snapshot", "create"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("will be uploaded again"),
        "{}",
        stderr(&out)
    );
    // Nothing unlocked is reused: the data went into new blobs, locked.
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!said.contains("extended"), "{said}");
    let new: Vec<String> = objects(&env)
        .into_iter()
        .filter(|k| k.starts_with("host1/blobs/") && !blobs.contains(k))
        .collect();
    assert!(!new.is_empty(), "{said}");
    for k in &new {
        assert_eq!(lock_of(&env, k).0, "GOVERNANCE", "{k}");
    }
    let target = env.path().join("r");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn blobs_deleted_during_a_locked_run_are_caught_before_publishing() {
    let (mut env, _p) = locked_env("3d");
    env.create();
    let old: Vec<String> = objects(&env)
        .into_iter()
        .filter(|k| k.starts_with("host1/blobs/"))
        .collect();
    fs::write(env.src().join("new.bin"), random_bytes(200_000, 31)).unwrap();
    env.settle();
    // A slow network: while the new blob goes up, a purge elsewhere (here:
    // deletes straight to the server) removes the blobs the run reuses.
    let slow = proxy::start_with_delay(&env.endpoint, std::time::Duration::from_millis(400));
    env.endpoint = slow.endpoint.clone();
    env.write_config();
    let child = env
        .cmd()
        .args(["snapshot", "create"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deleter = std::thread::spawn({
        let reqs = slow.requests.clone();
        let bucket = env.bucket.clone();
        move || {
            let start = std::time::Instant::now();
            while !reqs
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.method == "PUT" && r.target.contains("/blobs/"))
            {
                assert!(start.elapsed() < std::time::Duration::from_secs(60));
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            for k in &old {
                let a = moto::http("DELETE", &format!("/{bucket}/{k}"), &[], b"");
                assert!(a.status == 204 || a.status == 200, "{a:?}");
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    deleter.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("making it again"), "{}", stderr(&out));
    // Nothing was withdrawn, nothing deleted: it was caught before the
    // manifest went up.
    let reqs = slow.requests.lock().unwrap().clone();
    assert_write_only(&reqs, &env.bucket, "a run whose blobs vanished");
    assert_eq!(env.snapshot_ids().len(), 2);
    let target = env.path().join("r");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

/// `repack` on a locked bucket (issue 33): its new blobs and the objects
/// it rewrites are locked like a backup's; the old blob is marked and its
/// locked version stays (a purge deletes no version); the snapshot
/// restores identical from the rewritten objects.
#[test]
fn repack_on_a_locked_bucket_locks_what_it_writes() {
    let (mut env, _p) = locked_env("3d");
    env.extra.push("grace_period = 0s".into());
    env.extra.push("chunk_size = 64KiB".into());
    env.write_config();
    // f00..f02 share the 1 MiB blobs with the small file; f01 goes.
    env.create();
    fs::remove_file(env.src().join("f01")).unwrap();
    env.settle();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.create();
    let ids = env.snapshot_ids();
    env.ok(&["snapshot", "remove", &ids[0]]);
    env.ok(&["prune"]);
    let t0 = now();
    let before: Vec<String> = objects(&env);
    let out = env.run_with_key(&["repack", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert!(v["blobs"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["rewritten"], serde_json::json!([ids[1]]), "{v}");
    let after = objects(&env);
    let new: Vec<&String> = after
        .iter()
        .filter(|k| k.starts_with("host1/blobs/") && !before.contains(k))
        .collect();
    assert_eq!(new.len() as u64, v["new_blobs"].as_u64().unwrap(), "{v}");
    let rewritten = [
        format!("host1/metadata/{}/manifest.json.zst", ids[1]),
        format!("host1/metadata/{}/db.zst.age", ids[1]),
        format!("host1/metadata/{}/manifest.sig", ids[1]),
    ];
    for k in new
        .iter()
        .map(|k| k.as_str())
        .chain(rewritten.iter().map(String::as_str))
    {
        let (mode, until) = lock_of(&env, k);
        assert_eq!(mode, "COMPLIANCE", "{k}");
        assert!(until > t0 + 2 * 86_400, "{k} locked until {until}");
    }
    env.ok(&["prune"]);
    let target = env.path().join("restored");
    env.restore_ok(&ids[1], &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    let out = env.run_with_key(&["snapshot", "verify", "--deep", &ids[1]]);
    assert!(out.status.success(), "{}", stderr(&out));
}
