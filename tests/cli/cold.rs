//! Cold storage (issue 17) against moto's S3 server, which enforces
//! storage classes: blobs put in DEEP_ARCHIVE, metadata left STANDARD; a
//! restore that plans, thaws exactly the blobs it needs, exits with 3 and
//! resumes; the waiting path through a proxy that makes thaws take time;
//! checksums compared without downloading a blob.

use std::collections::BTreeSet;

use crate::core::restored;
use crate::util::moto::{self, thawing};
use crate::util::proxy;
use crate::util::tree::{assert_same_tree, random_bytes};
use crate::util::{Backend, Env, stderr};

const MIB: usize = 1 << 20;

/// A store on moto with blobs in `class`, small blobs (1 MiB) so that a
/// tree makes several, and `files` random files of 1.5 MiB each.
fn cold_env(class: &str, files: u64) -> Env {
    let mut env = Env::new(Backend::Moto);
    env.extra.push("blob_size_limit = 1MiB".into());
    env.s3_extra.push(format!("storage_class = {class}"));
    env.random_files(files, 3 * MIB / 2, 40);
    std::fs::write(env.src().join("small.txt"), b"a small file").unwrap();
    env.write_config();
    env
}

fn keys_in(env: &Env, prefix: &str) -> Vec<(String, String)> {
    moto::keys(&env.bucket, &format!("host1/{prefix}"))
}

/// Blob keys (relative to the prefix) whose thaw a recorded request asked for.
fn thawed_keys(requests: &[(String, String)]) -> BTreeSet<String> {
    requests
        .iter()
        .filter(|(m, t)| m == "POST" && moto::is_restore(t))
        .map(|(_, t)| {
            let path = t.split('?').next().unwrap();
            path.split("/host1/").nth(1).unwrap().to_string()
        })
        .collect()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {text}"));
    serde_json::Deserializer::from_str(&text[start..])
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap()
        .unwrap()
}

#[test]
fn blobs_go_cold_and_everything_else_stays_standard() {
    let env = cold_env("DEEP_ARCHIVE", 3);
    env.create();
    let blobs = keys_in(&env, "blobs/");
    assert!(blobs.len() >= 3, "{blobs:?}");
    assert!(blobs.iter().all(|(_, c)| c == "DEEP_ARCHIVE"), "{blobs:?}");
    let rest: Vec<_> = keys_in(&env, "")
        .into_iter()
        .filter(|(k, _)| !k.starts_with("host1/blobs/"))
        .collect();
    assert!(
        rest.len() >= 4,
        "metadata, manifest, signature, store.json: {rest:?}"
    );
    assert!(rest.iter().all(|(_, c)| c == "STANDARD"), "{rest:?}");
    // The keyless commands need no thaw.
    env.ok(&["snapshot", "list"]);
    env.ok(&["snapshot", "verify", "latest"]);
    let info = env.ok(&["store", "info", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["classes"]["DEEP_ARCHIVE"]["objects"], blobs.len());
    // Its metadata, manifest and signature.
    assert_eq!(v["classes"]["STANDARD"]["objects"], 3);
    let text = env.ok(&["store", "info"]);
    assert!(text.contains("DEEP_ARCHIVE"), "{text}");
}

#[test]
fn a_cold_restore_plans_thaws_exits_3_and_resumes() {
    let mut env = cold_env("DEEP_ARCHIVE", 3);
    env.create();
    let blobs: BTreeSet<String> = keys_in(&env, "blobs/")
        .into_iter()
        .map(|(k, _)| k["host1/".len()..].to_string())
        .collect();
    // Through a recording proxy: what is asked of the store.
    let p = proxy::start(&env.endpoint);
    env.endpoint = p.endpoint.clone();
    env.write_config();
    let target = env.path().join("r");

    // 1. No --thaw: the plan, and an error saying what to add.
    let out = env.restore_to("latest", &target, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(plan.contains(&format!("{} to thaw", blobs.len())), "{plan}");
    assert!(plan.contains("--thaw=Bulk"), "{plan}");
    assert!(plan.contains("not offered for DEEP_ARCHIVE"), "{plan}");
    assert!(stderr(&out).contains("--thaw"), "{}", stderr(&out));
    assert!(!target.join("stdin").exists() && !restored(&target, &env.src()).exists());

    // 2. Expedited is not offered for DEEP_ARCHIVE: refused before asking.
    let out = env.run_with_key(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--thaw=Expedited",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not offered"), "{}", stderr(&out));

    // 3. --thaw: RestoreObject for exactly the blobs needed; exit 3.
    let before = p.requests.lock().unwrap().len();
    let out = env.run_with_key(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--thaw=Bulk",
        "--thaw-days",
        "2",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["to_thaw"]["blobs"], blobs.len());
    assert_eq!(v["thaw_days"], 2);
    assert!(
        stderr(&out).contains("run the same command again later"),
        "{}",
        stderr(&out)
    );
    let reqs: Vec<(String, String)> = p.requests.lock().unwrap()[before..]
        .iter()
        .map(|r| (r.method.clone(), r.target.clone()))
        .collect();
    assert_eq!(thawed_keys(&reqs), blobs);
    assert!(
        !reqs
            .iter()
            .any(|(m, t)| m == "GET" && t.contains("/blobs/")),
        "no blob was read: {reqs:?}"
    );
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        summary.contains(&format!("{} RESTORE", blobs.len())),
        "{summary}"
    );

    // 4. Run again: moto thawed at once, so it restores, asking nothing more.
    let before = p.requests.lock().unwrap().len();
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    let reqs: Vec<(String, String)> = p.requests.lock().unwrap()[before..]
        .iter()
        .map(|r| (r.method.clone(), r.target.clone()))
        .collect();
    assert!(thawed_keys(&reqs).is_empty(), "no second thaw: {reqs:?}");
}

#[test]
fn a_single_path_thaws_only_its_blobs() {
    let mut env = cold_env("GLACIER", 4);
    env.create();
    let all = keys_in(&env, "blobs/").len();
    let p = proxy::start(&env.endpoint);
    env.endpoint = p.endpoint.clone();
    env.write_config();
    let target = env.path().join("r");
    let one = env.src().join("f02");
    let out = env.run_with_key(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--thaw",
        one.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let reqs: Vec<(String, String)> = p
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| (r.method.clone(), r.target.clone()))
        .collect();
    let asked = thawed_keys(&reqs);
    // A 1.5 MiB file in 1 MiB blobs: one or two of them, not all.
    assert!(
        !asked.is_empty() && asked.len() <= 2 && asked.len() < all,
        "{asked:?} of {all}"
    );
    env.restore_ok("latest", &target, &[one.to_str().unwrap()]);
    let got = std::fs::read(restored(&target, &one)).unwrap();
    assert!(got == std::fs::read(&one).unwrap());
}

#[test]
fn waiting_for_a_thaw_then_restoring_a_stream() {
    let mut env = cold_env("DEEP_ARCHIVE", 0);
    let data = random_bytes(5 * MIB, 9);
    let mut child = env
        .cmd()
        .args(["snapshot", "create", "--stdin", "image"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Thaws take three polls each behind this proxy.
    let t = thawing(3);
    env.endpoint = t.endpoint.clone();
    env.write_config();
    let out = env
        .cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .env("VAULTIK_TEST_THAW_POLL_MS", "100")
        .args(["restore", "latest", "--stdout", "--thaw", "--wait"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout == data, "the stream came back whole");
    let err = stderr(&out);
    assert!(err.contains("to thaw"), "the plan goes to stderr: {err}");
    let reqs = t.requests.lock().unwrap().clone();
    let blobs = keys_in(&env, "blobs/").len();
    assert_eq!(thawed_keys(&reqs).len(), blobs);
    let heads = reqs
        .iter()
        .filter(|(m, t)| m == "HEAD" && t.contains("/blobs/"))
        .count();
    assert!(
        heads >= 4 * blobs,
        "polled until thawed: {heads} HEADs for {blobs} blobs"
    );
    // Thawed copies are readable: a deep verify now asks for nothing.
    let t = thawing(50);
    env.endpoint = t.endpoint.clone();
    env.write_config();
    let out = env.run_with_key(&["snapshot", "verify", "latest", "--deep", "--thaw"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(thawed_keys(&t.requests.lock().unwrap()).is_empty());
}

#[test]
fn verify_deep_thaws_like_a_restore() {
    let env = cold_env("GLACIER", 2);
    env.create();
    let out = env.run_with_key(&["snapshot", "verify", "latest", "--deep"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--thaw"), "{}", stderr(&out));
    let out = env.run_with_key(&["snapshot", "verify", "latest", "--deep", "--thaw=Expedited"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = env.run_with_key(&["snapshot", "verify", "latest", "--deep"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("checked: ok"));
}

#[test]
fn checksums_find_a_replaced_blob_without_reading_one() {
    let mut env = cold_env("DEEP_ARCHIVE", 2);
    env.create();
    let out = env.ok(&["snapshot", "verify", "latest", "--checksums", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let blobs = keys_in(&env, "blobs/");
    assert_eq!(v["checksums"]["matched"], blobs.len(), "{v}");
    assert_eq!(v["ok"], true);
    // Replaced behind vaultik's back, by someone who sends a correct
    // checksum of what they put there (and keeps the class).
    let (victim, _) = &blobs[0];
    let forged = random_bytes(1000, 99);
    let sum = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(&forged);
        vaultik_base64(&d)
    };
    let a = moto::http(
        "PUT",
        &format!("/{}/{victim}", env.bucket),
        &[
            ("x-amz-checksum-sha256", &sum),
            ("x-amz-sdk-checksum-algorithm", "SHA256"),
            ("x-amz-storage-class", "DEEP_ARCHIVE"),
        ],
        &forged,
    );
    assert_eq!(a.status, 200, "{a:?}");
    let p = proxy::start(&env.endpoint);
    env.endpoint = p.endpoint.clone();
    env.write_config();
    let out = env.run(&["snapshot", "verify", "latest", "--checksums"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // The size check catches a blob of another size first; same size is
    // what only the checksum sees: either way the victim is named.
    assert!(text.contains(&victim["host1/".len()..]), "{text}");
    let reqs = p.requests.lock().unwrap();
    assert!(
        !reqs
            .iter()
            .any(|r| r.method == "GET" && r.target.contains("/blobs/")),
        "no blob downloaded"
    );
}

#[test]
fn checksums_of_a_same_size_replacement() {
    let env = cold_env("STANDARD", 1);
    env.create();
    let blobs = keys_in(&env, "blobs/");
    let (victim, _) = &blobs[0];
    // Same size, other bytes: only the stored checksum tells.
    let size = moto::http("HEAD", &format!("/{}/{victim}", env.bucket), &[], b"")
        .header("content-length")
        .unwrap()
        .parse::<usize>()
        .unwrap();
    let forged = random_bytes(size, 5);
    let sum = {
        use sha2::Digest;
        vaultik_base64(&sha2::Sha256::digest(&forged))
    };
    let a = moto::http(
        "PUT",
        &format!("/{}/{victim}", env.bucket),
        &[
            ("x-amz-checksum-sha256", &sum),
            ("x-amz-sdk-checksum-algorithm", "SHA256"),
        ],
        &forged,
    );
    assert_eq!(a.status, 200);
    let out = env.run(&["snapshot", "verify", "latest"]);
    assert!(out.status.success(), "sizes alone do not see it");
    let out = env.run(&["snapshot", "verify", "latest", "--checksums"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("checksum"), "{text}");
    assert!(text.contains("replaced or damaged"), "{text}");
}

both!(checksums_elsewhere, |backend| {
    let env = Env::new(backend);
    env.random_files(2, 100_000, 3);
    env.create();
    let out = env.ok(&["snapshot", "verify", "latest", "--checksums"]);
    match backend {
        // s3s-fs keeps the SHA-256 vaultik sends.
        Backend::S3 => assert!(
            out.contains("without a stored checksum") && out.contains(" 0 without"),
            "{out}"
        ),
        _ => assert!(out.contains("keeps no checksums"), "{out}"),
    }
});

#[test]
fn purging_cold_blobs_early_is_warned_about() {
    let mut env = cold_env("DEEP_ARCHIVE", 1);
    env.extra.push("grace_period = 1s".into());
    std::fs::remove_file(env.src().join("small.txt")).unwrap();
    env.write_config();
    env.create();
    std::fs::remove_file(env.src().join("f00")).unwrap();
    std::fs::write(env.src().join("other"), b"other").unwrap();
    env.create();
    let ids = env.snapshot_ids();
    env.ok(&["snapshot", "remove", &ids[0]]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = env.ok(&["prune", "--dry-run"]);
    assert!(out.contains("DEEP_ARCHIVE object(s)"), "{out}");
    assert!(
        out.contains("minimum storage duration of 180 days"),
        "{out}"
    );
    let out = env.ok(&["prune", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["early_deletions"][0]["class"], "DEEP_ARCHIVE", "{v}");
}

/// Standard base64 (the checksum headers), as vaultik writes it.
fn vaultik_base64(d: &[u8]) -> String {
    vaultik::store::base64(d)
}
