//! `store check` (issue 30): probes written, read whole and ranged,
//! listed and deleted on a real server, the report on one screen and as
//! JSON, nothing left behind.

use crate::util::{Backend, Env, moto, stderr};

fn check(env: &Env, json: bool) -> String {
    let mut args = vec!["store", "check"];
    if json {
        args.push("--json");
    }
    let out = env.run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn store_check_reports_what_the_provider_does_and_leaves_nothing() {
    // s3s-fs: no versioning, no Object Lock.
    let env = Env::new(Backend::S3);
    env.write_config();
    let text = check(&env, false);
    for want in [
        "write:           yes: PUT of 4 KiB and 8 MiB",
        "clock skew:      yes: ",
        "read:            yes: the bytes written",
        "range reads:     yes: 206 with the bytes asked for",
        "list:            yes: 2 of 2 probes, with their sizes",
        "DeleteObjects:   yes: 2 probes deleted in one request",
        // s3s-fs takes no storage class but STANDARD.
        "storage classes: NO: refused STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR, GLACIER, DEEP_ARCHIVE (HTTP 400 InvalidStorageClass)",
        "versioning:      off",
        "Object Lock:     off",
        "upload:          ",
        "download:        ",
        "PUT latency:     ",
        "requests: ",
    ] {
        assert!(text.contains(want), "`{want}` not in:\n{text}");
    }
    assert!(text.lines().count() <= 20, "one screen:\n{text}");
    assert!(
        text.lines().all(|l| l.chars().count() <= 160),
        "lines a terminal shows:\n{text}"
    );
    assert!(env.objects().is_empty(), "{:?}", env.objects().len());
    // moto keeps the SHA-256 sent and gives it back.
    let env = Env::new(Backend::Moto);
    env.write_config();
    let v: serde_json::Value = serde_json::from_str(&check(&env, true)).unwrap();
    let finding = |what: &str| {
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["what"] == what)
            .unwrap_or_else(|| panic!("no {what} in {v}"))
            .clone()
    };
    assert_eq!(finding("checksums kept")["ok"], true, "{v}");
    assert_eq!(finding("range reads")["ok"], true, "{v}");
    assert_eq!(finding("DeleteObjects")["ok"], true, "{v}");
    assert_eq!(finding("clock skew")["ok"], true, "{v}");
    // moto keeps every class asked for, and lists it.
    assert_eq!(finding("storage classes")["ok"], true, "{v}");
    assert_eq!(
        finding("storage classes")["said"],
        "kept STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, GLACIER_IR, GLACIER, DEEP_ARCHIVE",
        "{v}"
    );
    assert_eq!(
        finding("DeleteObjects")["said"],
        "8 probes deleted in one request",
        "{v}"
    );
    assert!(v["upload_bytes_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(moto::keys(&env.bucket, "host1/").is_empty());
}

#[test]
fn store_check_of_a_directory_store() {
    let env = Env::new(Backend::Local);
    env.write_config();
    // A directory not made yet is named as no store; an empty one (a new
    // disk's mount point) is checked.
    let out = env.run(&["store", "check"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no vaultik store at"),
        "{}",
        stderr(&out)
    );
    std::fs::create_dir_all(env.store_dir()).unwrap();
    let text = check(&env, false);
    for want in [
        "write:           yes: PUT of 4 KiB and 8 MiB",
        "read:            yes: the bytes written",
        "range reads:     yes: ",
        "storage classes: ?: a directory store has none",
        "DeleteObjects:   yes: 2 probes deleted in one request",
    ] {
        assert!(text.contains(want), "`{want}` not in:\n{text}");
    }
    assert!(env.objects().is_empty(), "{:?}", env.objects());
}
