//! Bandwidth limits (issue 30): `limit_upload` and `limit_download` hold
//! across every thread of a run: 50 MB backed up and restored under a
//! limit move within 15% of it.

use std::time::Instant;

use crate::core::restored;
use crate::util::proxy;
use crate::util::tree::assert_same_tree;
use crate::util::{Backend, Env};

const LIMIT: f64 = 4_000_000.0;

#[test]
fn fifty_megabytes_under_a_limit_move_within_fifteen_percent_of_it() {
    let mut env = Env::new(Backend::S3);
    let rec = proxy::start(&env.endpoint);
    env.endpoint = rec.endpoint.clone();
    // Blobs of 8 MiB: the two uploaders and the restore's threads move
    // several at once, under one limit.
    env.extra = vec!["blob_size_limit = 8MiB".into()];
    env.s3_extra = vec!["limit_upload = 4MB".into(), "limit_download = 4MB/s".into()];
    env.random_files(10, 5_000_000, 300);
    env.write_config();
    env.create();
    // Upload: from the first blob PUT to the last byte of the last one.
    let blobs: Vec<proxy::Body> = rec
        .bodies
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b.method == "PUT" && b.target.contains("/blobs/"))
        .cloned()
        .collect();
    assert!(blobs.len() >= 6, "{} blobs", blobs.len());
    let bytes: u64 = blobs.iter().map(|b| b.len).sum();
    assert!(bytes >= 50_000_000, "{bytes}");
    let start = blobs.iter().map(|b| b.started).min().unwrap();
    let end = blobs.iter().map(|b| b.ended).max().unwrap();
    let up = bytes as f64 / (end - start).as_secs_f64();
    eprintln!(
        "upload: {bytes} B at {:.0} B/s under a limit of {LIMIT}",
        up
    );
    assert!(
        (up - LIMIT).abs() <= 0.15 * LIMIT,
        "upload at {up:.0} B/s, limit {LIMIT}"
    );
    // Download: the whole restore.
    let target = env.path().join("r");
    let t = Instant::now();
    env.restore_ok("latest", &target, &[]);
    let took = t.elapsed().as_secs_f64();
    let down = bytes as f64 / took;
    eprintln!("download: {bytes} B in {took:.2} s: {down:.0} B/s under a limit of {LIMIT}");
    assert!(
        (down - LIMIT).abs() <= 0.15 * LIMIT,
        "download at {down:.0} B/s, limit {LIMIT}"
    );
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}
