//! S3 faults (issue 6): a fault-injecting proxy between the real binary and
//! s3s-fs resets connections mid-upload and mid-download, answers 500, 503
//! and 429, holds requests, truncates answers and ignores Range. Transient
//! faults are retried and the result is complete; persistent ones fail with
//! one clear line and nothing half-done is recorded or referenced.

use std::time::Duration;

use crate::core::restored;
use crate::util::faults::{self, Fault, rule};
use crate::util::tree::assert_same_tree;
use crate::util::{Backend, Env, stderr};

fn env_with_blobs() -> Env {
    let mut env = Env::new(Backend::S3);
    env.extra = vec!["blob_size_limit = 1MiB".into(), "chunk_size = 64KiB".into()];
    env.random_files(6, 700_000, 40);
    env
}

#[test]
fn transient_s3_faults_are_retried() {
    let mut env = env_with_blobs();
    let proxy = faults::start(
        &env.endpoint,
        vec![
            rule("PUT", "blobs/", 2, Fault::ResetMidUpload),
            rule("PUT", "blobs/", 1, Fault::Status(500)),
            rule("PUT", "blobs/", 1, Fault::Slow(Duration::from_millis(1500))),
            rule("PUT", "/db.zst", 1, Fault::Status(503)),
            rule("PUT", "manifest.json", 1, Fault::ResetMidUpload),
            rule("GET", "list-type", 1, Fault::Status(429)),
        ],
    );
    env.endpoint = proxy.endpoint.clone();
    let out = env.create();
    assert!(
        out.contains("in 5 blobs") || out.contains("in 4 blobs"),
        "{out}"
    );
    assert_eq!(proxy.count(Fault::ResetMidUpload), 3);
    assert_eq!(proxy.count(Fault::Status(500)), 1);
    assert_eq!(proxy.count(Fault::Status(503)), 1);
    assert_eq!(proxy.count(Fault::Status(429)), 1);
    assert_eq!(proxy.count(Fault::Slow(Duration::from_millis(1500))), 1);
    // The retried requests are counted in the report like any other.
    assert!(out.contains("requests: "), "{out}");

    // Restore and a deep verify through truncated, reset and Range-ignoring
    // answers.
    proxy.set_rules(vec![
        rule("GET", "blobs/", 1, Fault::Truncate),
        rule("GET", "blobs/", 1, Fault::ResetMidDownload),
        rule("GET", "blobs/", 1, Fault::IgnoreRange),
        rule("GET", "/db.zst", 1, Fault::Status(503)),
        rule("GET", "list-type", 1, Fault::ResetMidDownload),
    ]);
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    assert_eq!(proxy.count(Fault::Truncate), 1);
    assert_eq!(proxy.count(Fault::ResetMidDownload), 2);
    assert_eq!(proxy.count(Fault::IgnoreRange), 1);
    assert_eq!(proxy.count(Fault::Status(503)), 2);

    proxy.set_rules(vec![
        rule("GET", "blobs/", 1, Fault::Truncate),
        rule("GET", "blobs/", 1, Fault::ResetMidDownload),
    ]);
    let out = env.run_with_key(&["snapshot", "verify", "latest", "--deep"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(proxy.count(Fault::Truncate), 2);
}

#[test]
fn persistent_s3_faults_fail_clearly_and_record_nothing() {
    let mut env = env_with_blobs();
    let proxy = faults::start(
        &env.endpoint,
        vec![rule("PUT", "blobs/", 1000, Fault::Status(500))],
    );
    env.endpoint = proxy.endpoint.clone();
    // Given up after retry_for (15 minutes unless set).
    env.s3_extra = vec!["retry_for = 3s".into()];
    let out = env.run(&["snapshot", "create"]);
    assert!(!out.status.success());
    let all = stderr(&out);
    // The outage said on one line, the error on another.
    let lines: Vec<&str> = all.trim_end().lines().collect();
    assert_eq!(lines.len(), 2, "{all}");
    assert!(
        lines[0].contains("the store is unreachable or failing"),
        "{all}"
    );
    let err = lines[1];
    assert!(
        err.contains("PUT") && err.contains("blobs/") && err.contains("HTTP 500"),
        "{err}"
    );
    assert!(err.contains("; retry_for is 3s)"), "{err}");
    // Nothing half-done: no snapshot, no metadata, no blob in the index.
    proxy.set_rules(Vec::new());
    assert!(env.snapshot_ids().is_empty());
    assert!(
        !env.objects()
            .iter()
            .any(|(k, _)| k.starts_with("metadata/")),
        "no metadata object"
    );
    assert!(
        env.index_blob_keys().is_empty(),
        "{:?}",
        env.index_blob_keys()
    );
    // The next run, with the store healthy again, is complete.
    let out = env.create();
    assert!(!out.contains(" 0 new chunks"), "{out}");
    let target = env.path().join("restore");
    env.restore_ok("latest", &target, &[]);
    assert_same_tree(&env.src(), &restored(&target, &env.src()));

    // A server that never honours Range: a clear error, not a wrong file.
    proxy.set_rules(vec![rule("GET", "blobs/", 1000, Fault::IgnoreRange)]);
    let target2 = env.path().join("restore2");
    let out = env.restore_to("latest", &target2, &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    // One line per file that could not be restored, naming it and why,
    // then the summary.
    let lines: Vec<&str> = err
        .trim_end()
        .lines()
        .filter(|l| !l.contains("the store is unreachable or failing"))
        .collect();
    let (last, warnings) = lines.split_last().unwrap();
    assert_eq!(warnings.len(), 6, "{err}");
    for w in warnings {
        assert!(w.contains("/src/f0") && w.contains("Range ignored"), "{w}");
    }
    assert!(last.contains('6'), "{last}");
    // Nothing wrong was written: a file is absent or identical.
    let dest = restored(&target2, &env.src());
    for i in 0..6 {
        let name = format!("f{i:02}");
        if let Ok(got) = std::fs::read(dest.join(&name)) {
            assert_eq!(got, std::fs::read(env.src().join(&name)).unwrap(), "{name}");
        }
    }
}

/// A provider that refuses the SHA-256 checksum headers, as Backblaze B2
/// does: the default fails on one line naming the setting; `checksum =
/// md5` and `checksum = none` back up and restore, and send none of them.
#[test]
fn a_refusal_of_checksum_headers_names_the_setting() {
    let mut env = env_with_blobs();
    let proxy = faults::start(
        &env.endpoint,
        vec![
            rule(
                "PUT",
                "/",
                100_000,
                Fault::RefuseHeader("x-amz-checksum-sha256"),
            ),
            rule(
                "PUT",
                "/",
                100_000,
                Fault::RefuseHeader("x-amz-sdk-checksum-algorithm"),
            ),
        ],
    );
    env.endpoint = proxy.endpoint.clone();
    env.write_config();
    let out = env.run(&["snapshot", "create"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("HTTP 400 InvalidArgument: Unsupported header 'x-amz-checksum-sha256'")
            && err.contains(
                "(the provider refuses the headers of `checksum = sha256`: set \
                 `checksum = md5` or `checksum = none` in [s3])"
            ),
        "{err}"
    );
    let refused = proxy.count(Fault::RefuseHeader("x-amz-checksum-sha256"));
    assert_eq!(refused, 1, "not retried");
    for (i, setting) in ["md5", "none"].into_iter().enumerate() {
        env.s3_extra = vec![format!("checksum = {setting}")];
        env.write_config();
        std::fs::write(env.src().join(format!("new{i}")), setting).unwrap();
        env.settle();
        env.create();
        let target = env.path().join(format!("r-{setting}"));
        env.restore_ok("latest", &target, &[]);
        assert_same_tree(&env.src(), &restored(&target, &env.src()));
        // verify --checksums says the store keeps none it can compare.
        let out = env.run(&["snapshot", "verify", "latest", "--checksums", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(
        proxy.count(Fault::RefuseHeader("x-amz-checksum-sha256")),
        refused,
        "md5 and none send no SHA-256 header"
    );
    assert_eq!(
        proxy.count(Fault::RefuseHeader("x-amz-sdk-checksum-algorithm")),
        0
    );
}
