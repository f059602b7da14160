//! How a host reaches its store (issue 30): through an HTTP proxy
//! (`HTTPS_PROXY`), with the bucket in the host name (`url_style =
//! virtual`), and with at most `connections` requests in flight.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::core::restored;
use crate::util::own_server::OwnServer;
use crate::util::tree::assert_same_tree;
use crate::util::{Backend, Env, proxy, stderr, tunnel};

/// `args` through the proxy at `proxy_url`, with the private key.
fn via(env: &Env, proxy_url: &str, args: &[&str]) -> Output {
    let out = env
        .cmd()
        .env("HTTPS_PROXY", proxy_url)
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

#[test]
fn virtual_hosted_requests_through_a_proxy_back_up_and_restore() {
    // s3s-fs takes the bucket from the Host under `--domain` (a Host with
    // no port: it takes no other). The name `s3.test` resolves nowhere, so
    // every request must go through the proxy, which sees the host each
    // one is for and sends it to the server's port.
    let mut env = Env::new(Backend::S3);
    let own = OwnServer::start_with(&["--domain", "s3.test"]);
    let tunnel = tunnel::start(own.port);
    env.endpoint = "http://s3.test".into();
    env.s3_extra = vec!["url_style = virtual".into()];
    env.extra = vec!["blob_size_limit = 1MiB".into(), "chunk_size = 64KiB".into()];
    env.random_files(6, 500_000, 31);
    env.write_config();
    via(&env, &tunnel.url, &["snapshot", "create"]);
    let target = env.path().join("restore");
    via(
        &env,
        &tunnel.url,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    let targets = tunnel.targets.lock().unwrap().clone();
    let want = format!("{}.s3.test:80", env.bucket);
    assert!(!targets.is_empty());
    assert!(
        targets.iter().all(|t| *t == want),
        "{want} only: {targets:?}"
    );
    // The same store path-style: the bucket in the path, the endpoint's
    // own host.
    env.s3_extra = vec!["url_style = path".into()];
    env.write_config();
    let before = tunnel.targets.lock().unwrap().len();
    let out = via(&env, &tunnel.url, &["snapshot", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("testhost_data_"), "{listed}");
    let targets = tunnel.targets.lock().unwrap()[before..].to_vec();
    let want = "s3.test:80".to_string();
    assert!(!targets.is_empty());
    assert!(
        targets.iter().all(|t| *t == want),
        "{want} only: {targets:?}"
    );
}

/// The most requests in flight at once, counting each from when its head
/// came to the proxy until the proxy passed it on (`delay` later): a lower
/// bound of the time vaultik held it, so never above the real figure.
fn most_in_flight(heads: &[Instant], delay: Duration) -> usize {
    let mut heads = heads.to_vec();
    heads.sort();
    (0..heads.len())
        .map(|i| {
            heads[i..]
                .iter()
                .take_while(|h| h.duration_since(heads[i]) < delay)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn connections_bound_the_requests_in_flight() {
    let mut env = Env::new(Backend::S3);
    let delay = Duration::from_millis(150);
    let rec = proxy::start_with_delay(&env.endpoint, delay);
    env.endpoint = rec.endpoint.clone();
    env.extra = vec!["blob_size_limit = 1MiB".into(), "chunk_size = 64KiB".into()];
    env.s3_extra = vec!["connections = 1".into()];
    env.random_files(16, 400_000, 41);
    env.write_config();
    let heads = |rec: &proxy::Proxy| -> Vec<Instant> {
        rec.requests.lock().unwrap().iter().map(|r| r.at).collect()
    };
    env.create();
    let backup = heads(&rec);
    assert!(backup.len() > 10, "{}", backup.len());
    assert_eq!(most_in_flight(&backup, delay), 1, "backup, connections = 1");
    // The restore's six readers: bounded by the flag, over the config.
    let restore = |env: &Env, extra: &[&str], n: usize| {
        rec.requests.lock().unwrap().clear();
        let target = env.path().join(format!("restore{n}"));
        let mut args = vec!["restore", "latest", "--target", target.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = env
            .cmd()
            .env("VAULTIK_PRIVATE_KEY", &env.identity)
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert_same_tree(&env.src(), &restored(&target, &env.src()));
        most_in_flight(&heads(&rec), delay)
    };
    assert!(restore(&env, &["--connections", "3"], 1) <= 3);
    // Unbounded, the same restore has more in flight than that: the bound
    // above is what held it.
    env.s3_extra = Vec::new();
    env.write_config();
    let free = restore(&env, &[], 2);
    assert!(free > 3, "{free} in flight with no bound");
}
