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
        "write:          yes: PUT of 4 KiB and 8 MiB",
        "clock skew:     yes: ",
        "read:           yes: the bytes written",
        "range reads:    yes: 206 with the bytes asked for",
        "list:           yes: 2 of 2 probes, with their sizes",
        "DeleteObjects:  yes: both probes deleted",
        "versioning:     off",
        "Object Lock:    off",
        "upload:         ",
        "download:       ",
        "PUT latency:    ",
        "requests: ",
    ] {
        assert!(text.contains(want), "`{want}` not in:\n{text}");
    }
    assert!(text.lines().count() <= 20, "one screen:\n{text}");
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
    assert!(v["upload_bytes_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(moto::keys(&env.bucket, "host1/").is_empty());
}
