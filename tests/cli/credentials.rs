//! The AWS credential chain (issue 30) against moto checking signatures
//! and IAM policies (`util/iam.rs`): session tokens from moto's STS
//! (missing, wrong or expired: one clear line), profiles with assumed
//! roles and credential processes, web identity, EC2 instance metadata
//! and container endpoints (small local fakes serving moto-issued
//! credentials, refreshed before they expire, mid-run), and the README's
//! write-only host policy, which admits a backup and nothing else.

use std::fs;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::core::restored;
use crate::util::fake_http::{self, creds_json};
use crate::util::iam::{self, Iam};
use crate::util::tree::assert_same_tree;
use crate::util::{Backend, Env, stderr};
use crate::util::{proxy, tunnel};

/// A test's store on the IAM moto (no key in the config), with a few files.
fn env_iam() -> Env {
    let env = Env::new(Backend::Iam);
    env.random_files(3, 300_000, 31);
    fs::write(
        env.src().join("small.txt"),
        b"signed with what the chain found",
    )
    .unwrap();
    env.write_config();
    env.settle();
    env
}

/// vaultik with `vars` in its environment (and the private key).
fn run(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> Output {
    env.cmd()
        .env("VAULTIK_PRIVATE_KEY", &env.identity)
        .envs(vars.iter().copied())
        .args(args)
        .output()
        .unwrap()
}

fn ok(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> String {
    let out = run(env, vars, args);
    assert!(
        out.status.success(),
        "vaultik {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A backup, and a restore that gives the tree back.
fn round_trip(env: &Env, vars: &[(&str, &str)]) {
    ok(env, vars, &["snapshot", "create"]);
    let target = env.path().join(format!("r{}", unique()));
    ok(
        env,
        vars,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

/// What `store info` says signs.
fn signed_by(env: &Env, vars: &[(&str, &str)]) -> String {
    let out = ok(env, vars, &["store", "info"]);
    out.lines()
        .find_map(|l| l.strip_prefix("signed by:"))
        .unwrap_or_else(|| panic!("no `signed by` in {out}"))
        .trim()
        .to_string()
}

/// A failure: exit status 2, one line, naming `want`, showing no `secret`.
fn fails(env: &Env, vars: &[(&str, &str)], args: &[&str], want: &[&str], secret: &str) -> String {
    let out = run(env, vars, args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for w in want {
        assert!(err.contains(w), "`{w}` not in: {err}");
    }
    let all = format!("{err}{}", String::from_utf8_lossy(&out.stdout));
    assert!(!all.contains(secret), "a secret shown: {all}");
    err
}

fn unique() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A role of its own for a test.
fn role(iam: &Iam, env: &Env) -> String {
    iam.role(&format!("backup-{}-{}", env.bucket, unique()), None)
}

#[test]
fn session_tokens_from_sts_sign_and_bad_ones_fail_on_one_line() {
    let env = env_iam();
    let iam = iam::iam();
    let (k, s, t) = iam.assume(&role(iam, &env));
    let vars = [
        ("AWS_ACCESS_KEY_ID", k.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s.as_str()),
        ("AWS_SESSION_TOKEN", t.as_str()),
    ];
    round_trip(&env, &vars);
    assert_eq!(
        signed_by(&env, &vars),
        "the environment (AWS_ACCESS_KEY_ID, with AWS_SESSION_TOKEN)"
    );
    // No token, a wrong one.
    fails(
        &env,
        &vars[..2],
        &["snapshot", "list"],
        &["InvalidAccessKeyId", "the environment (AWS_ACCESS_KEY_ID)"],
        &s,
    );
    let wrong = [
        vars[0],
        vars[1],
        ("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEBadToken"),
    ];
    fails(&env, &wrong, &["snapshot", "list"], &["InvalidToken"], &s);
    // Expired: temporary credentials whose expiry has passed are never used.
    let script = env.path().join("expired.sh");
    fs::write(
        &script,
        format!(
            "echo '{{\"Version\": 1, \"AccessKeyId\": \"{k}\", \"SecretAccessKey\": \"{s}\", \
             \"SessionToken\": \"{t}\", \"Expiration\": \"2020-01-01T00:00:00Z\"}}'\n"
        ),
    )
    .unwrap();
    fs::create_dir_all(env.path().join(".aws")).unwrap();
    fs::write(
        env.path().join(".aws/config"),
        format!("[default]\ncredential_process = sh {}\n", script.display()),
    )
    .unwrap();
    fails(
        &env,
        &[],
        &["snapshot", "list"],
        &[
            "profile `default` (credential_process)",
            "expired at 2020-01-01 00:00:00 UTC",
        ],
        &s,
    );
}

#[test]
fn profiles_assume_roles_and_run_credential_processes() {
    let env = env_iam();
    let iam = iam::iam();
    let role = role(iam, &env);
    // A user who may only assume roles: the profile `dev` assumes one.
    let (bk, bs) = iam.user(
        &format!("base-{}", env.bucket),
        r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}"#,
    );
    let (k, s, t) = iam.assume(&role);
    let aws = env.path().join(".aws");
    fs::create_dir_all(&aws).unwrap();
    fs::write(
        aws.join("credentials"),
        format!("[base]\naws_access_key_id = {bk}\naws_secret_access_key = {bs}\n"),
    )
    .unwrap();
    fs::write(
        env.path().join("creds.sh"),
        format!(
            "echo '{{\"Version\": 1, \"AccessKeyId\": \"{k}\", \"SecretAccessKey\": \"{s}\", \
             \"SessionToken\": \"{t}\"}}'\n"
        ),
    )
    .unwrap();
    fs::write(
        env.path().join("broken.sh"),
        "echo '{\"Version\": 1, \"AccessKeyId\": \"AKIA\", \"SecretAccessKey\": \"hunter2-secret\"}'\n\
         echo 'the SSO session has expired: run aws sso login' >&2\nexit 1\n",
    )
    .unwrap();
    fs::write(
        aws.join("config"),
        format!(
            "[profile dev]\nrole_arn = {role}\nsource_profile = base\nregion = us-east-1\n\
             [profile tool]\ncredential_process = sh {home}/creds.sh\n\
             [profile broken]\ncredential_process = sh {home}/broken.sh\n",
            home = env.path().display()
        ),
    )
    .unwrap();
    let sts = ("AWS_ENDPOINT_URL_STS", iam.endpoint.as_str());
    let dev = [("AWS_PROFILE", "dev"), sts];
    round_trip(&env, &dev);
    assert_eq!(
        signed_by(&env, &dev),
        format!("profile `dev` (role {role}, assumed with profile `base`)")
    );
    // The user itself may not touch S3: the role did the backup.
    fails(
        &env,
        &[("AWS_PROFILE", "base")],
        &["snapshot", "list"],
        &["AccessDenied", "profile `base`"],
        &bs,
    );
    let tool = [("AWS_PROFILE", "tool")];
    round_trip(&env, &tool);
    assert_eq!(
        signed_by(&env, &tool),
        "profile `tool` (credential_process)"
    );
    // A process that fails: its status and last error line, never its output.
    fails(
        &env,
        &[("AWS_PROFILE", "broken")],
        &["snapshot", "list"],
        &[
            "profile `broken` (credential_process)",
            "exit status: 1",
            "run aws sso login",
        ],
        "hunter2-secret",
    );
    fails(
        &env,
        &[("AWS_PROFILE", "nope")],
        &["snapshot", "list"],
        &["AWS_PROFILE is `nope`", "has no such profile"],
        &bs,
    );
    // Files elsewhere, named by the environment.
    let elsewhere = env.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::rename(aws.join("credentials"), elsewhere.join("c")).unwrap();
    fs::rename(aws.join("config"), elsewhere.join("k")).unwrap();
    let (c, k) = (elsewhere.join("c"), elsewhere.join("k"));
    let files = [
        ("AWS_PROFILE", "dev"),
        sts,
        ("AWS_SHARED_CREDENTIALS_FILE", c.to_str().unwrap()),
        ("AWS_CONFIG_FILE", k.to_str().unwrap()),
    ];
    ok(&env, &files, &["snapshot", "list"]);
}

#[test]
fn web_identity_tokens_are_exchanged_at_sts_unsigned() {
    // A server of its own: moto checks every request once IAM is on, and
    // an unsigned AssumeRoleWithWebIdentity needs one unchecked request,
    // which the front below asks for just before passing it on.
    let own = Iam::start();
    let mut env = env_iam();
    env.endpoint = own.endpoint.clone();
    env.bucket = format!("{}-wi", env.bucket);
    own.create_bucket(&env.bucket, false);
    env.write_config();
    let role = own.role("irsa", None);
    let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2ln";
    let token_file = env.path().join("token");
    fs::write(&token_file, format!("{token}\n")).unwrap();
    let moto = own.endpoint.clone();
    let front = fake_http::start(Box::new(move |r| {
        let body = String::from_utf8_lossy(&r.body);
        if r.method != "POST"
            || !body.contains("Action=AssumeRoleWithWebIdentity")
            || !body.contains(&format!("WebIdentityToken={token}"))
            || r.header("authorization").is_some()
        {
            return (400, b"<Error><Code>Unexpected</Code></Error>".to_vec());
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        agent
            .post(format!("{moto}/moto-api/reset-auth"))
            .send(&b"1"[..])
            .unwrap();
        let mut a = agent
            .post(&moto)
            .header("content-type", "application/x-www-form-urlencoded")
            .send(&r.body[..])
            .unwrap();
        let status = a.status().as_u16();
        (status, a.body_mut().read_to_vec().unwrap())
    }));
    let vars = [
        ("AWS_ROLE_ARN", role.as_str()),
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AWS_ENDPOINT_URL_STS", front.endpoint.as_str()),
    ];
    round_trip(&env, &vars);
    assert_eq!(
        signed_by(&env, &vars),
        format!("web identity (AWS_WEB_IDENTITY_TOKEN_FILE, role {role})")
    );
    assert!(front.count("POST", "/") >= 2, "asked STS once per command");
}

/// An IMDSv2 fake serving `answers` in turn (the last one again and
/// again) for its role's credentials.
fn imds(answers: Vec<Vec<u8>>) -> fake_http::Fake {
    let answers = Arc::new(Mutex::new(answers));
    fake_http::start(Box::new(move |r| {
        match (r.method.as_str(), r.target.as_str()) {
            ("PUT", "/latest/api/token") => {
                if r.header("x-aws-ec2-metadata-token-ttl-seconds").is_none() {
                    return (400, Vec::new());
                }
                (200, b"AQAEAFakeImdsSessionToken==".to_vec())
            }
            (_, _)
                if r.header("x-aws-ec2-metadata-token") != Some("AQAEAFakeImdsSessionToken==") =>
            {
                (401, Vec::new())
            }
            ("GET", "/latest/meta-data/iam/security-credentials/") => {
                (200, b"vaultik-host".to_vec())
            }
            ("GET", "/latest/meta-data/iam/security-credentials/vaultik-host") => {
                let mut a = answers.lock().unwrap();
                let next = if a.len() > 1 {
                    a.remove(0)
                } else {
                    a[0].clone()
                };
                (200, next)
            }
            _ => (404, Vec::new()),
        }
    }))
}

#[test]
fn instance_metadata_credentials_are_refreshed_before_they_expire_mid_run() {
    let mut env = env_iam();
    let iam = iam::iam();
    let role = role(iam, &env);
    let first = iam.assume(&role);
    let second = iam.assume(&role);
    // The first expire 301 s from now: past the first second of the run
    // they are within the 5 minutes vaultik refreshes ahead.
    let fake = imds(vec![
        creds_json(&first.0, &first.1, &first.2, 301),
        creds_json(&second.0, &second.1, &second.2, 3600),
    ]);
    // Slow requests, so that the run outlasts that first second.
    let rec = proxy::start_with_delay(&env.endpoint, std::time::Duration::from_millis(150));
    env.endpoint = rec.endpoint.clone();
    env.extra.push("blob_size_limit = 1MiB".into());
    env.random_files(4, 700_000, 32);
    env.write_config();
    let vars = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.endpoint.as_str())];
    ok(&env, &vars, &["snapshot", "create"]);
    let served = fake.count("GET", "security-credentials/vaultik-host");
    assert_eq!(served, 2, "fetched, then refreshed once mid-run");
    let keys: Vec<String> = rec
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| r.header("authorization").map(str::to_string))
        .collect();
    for k in [&first.0, &second.0] {
        assert!(
            keys.iter().any(|a| a.contains(&format!("Credential={k}/"))),
            "no request signed with {k}"
        );
    }
    let target = env.path().join("r");
    ok(
        &env,
        &vars,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
    assert_eq!(
        signed_by(&env, &vars),
        format!("EC2 instance metadata (IMDSv2, {})", fake.endpoint)
    );
    // Disabled: the chain does not ask it, finds nothing and sends
    // unsigned requests, which S3 refuses (moto answers an unsigned request
    // with a 500, so a fake S3 answers as AWS does).
    let asked = fake.requests.lock().unwrap().len();
    let s3 = fake_http::start(Box::new(|r| {
        assert!(r.header("authorization").is_none(), "signed: {r:?}");
        (
            403,
            b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>".to_vec(),
        )
    }));
    let proxied = std::mem::replace(&mut env.endpoint, s3.endpoint.clone());
    env.write_config();
    let off = [vars[0], ("AWS_EC2_METADATA_DISABLED", "true")];
    fails(
        &env,
        &off,
        &["snapshot", "list"],
        &[
            "HTTP 403 AccessDenied",
            "no credentials found (looked at the environment, the config file, \
             profile `default`, web identity, container credentials, \
             EC2 instance metadata (disabled)): requests are unsigned",
        ],
        &first.1,
    );
    assert_eq!(fake.requests.lock().unwrap().len(), asked, "IMDS not asked");
    assert!(!s3.requests.lock().unwrap().is_empty());
    env.endpoint = proxied;
    env.write_config();
    // Behind an HTTP proxy (HTTPS_PROXY): the store is reached through
    // it, the metadata endpoint never (the proxy would see credentials).
    let port: u16 = env.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let tunnel = tunnel::start(port);
    let before = fake.requests.lock().unwrap().len();
    let via = [vars[0], ("HTTPS_PROXY", tunnel.url.as_str())];
    ok(&env, &via, &["snapshot", "list"]);
    assert!(fake.requests.lock().unwrap().len() > before, "IMDS asked");
    let targets = tunnel.targets.lock().unwrap().clone();
    let imds_host = fake.endpoint.trim_start_matches("http://").to_string();
    assert!(!targets.is_empty());
    assert!(
        targets
            .iter()
            .all(|t| *t != imds_host && t.ends_with(&format!(":{port}"))),
        "{targets:?}"
    );
    // Credentials that expired already: never used.
    let stale = imds(vec![creds_json(&first.0, &first.1, &first.2, -60)]);
    fails(
        &env,
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", stale.endpoint.as_str())],
        &["snapshot", "list"],
        &["EC2 instance metadata", "expired at"],
        &first.1,
    );
}

#[test]
fn container_credentials_are_asked_for_with_the_token_of_its_file() {
    let env = env_iam();
    let iam = iam::iam();
    let (k, s, t) = iam.assume(&role(iam, &env));
    let token = "eks-pod-identity-token-1234";
    let token_file = env.path().join("pod-token");
    fs::write(&token_file, token).unwrap();
    let answer = creds_json(&k, &s, &t, 3600);
    let fake = fake_http::start(Box::new(move |r| {
        if r.target != "/v1/credentials" || r.header("authorization") != Some(token) {
            return (403, Vec::new());
        }
        (200, answer.clone())
    }));
    let url = format!("{}/v1/credentials", fake.endpoint);
    let vars = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", url.as_str()),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token_file.to_str().unwrap(),
        ),
    ];
    round_trip(&env, &vars);
    assert_eq!(
        signed_by(&env, &vars),
        format!("container credentials ({url})")
    );
    // A full URI that would send the token elsewhere, in the clear.
    fails(
        &env,
        &[(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "http://192.0.2.1/creds",
        )],
        &["snapshot", "list"],
        &["AWS_CONTAINER_CREDENTIALS_FULL_URI must be https"],
        token,
    );
}

/// The README's host policy (Ransomware-proof setup, 3.), for `bucket` and
/// the prefix the tests use.
fn readme_policy(bucket: &str) -> String {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```json\n{\n  \"Version\": \"2012-10-17\"")
        .expect("the policy in README.md")
        + "```json\n".len();
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end]
        .replace("my-backups", bucket)
        .replace("web1/", "host1/")
}

#[test]
fn the_readmes_write_only_policy_admits_a_backup_and_nothing_else() {
    let mut env = env_iam();
    let iam = iam::iam();
    env.bucket = format!("{}-locked", env.bucket);
    iam.create_bucket(&env.bucket, true);
    let (k, s) = iam.user(&format!("host-{}", env.bucket), &readme_policy(&env.bucket));
    let rec = proxy::start(&env.endpoint);
    env.endpoint = rec.endpoint.clone();
    env.s3_extra = vec![
        format!("access_key_id = {k}"),
        format!("secret_access_key = {s}"),
        "object_lock = compliance".into(),
        "lock_for = 3d".into(),
    ];
    env.write_config();
    // A first backup and an incremental one.
    ok(&env, &[], &["snapshot", "create"]);
    fs::write(env.src().join("new.txt"), b"tomorrow's file").unwrap();
    env.settle();
    ok(&env, &[], &["snapshot", "create"]);
    let reqs = rec.requests.lock().unwrap().clone();
    crate::immutable::assert_write_only(&reqs, &env.bucket, "backups with the README's policy");
    // Nothing else: no read, no delete, no write outside its prefix.
    let target = env.path().join("r");
    let err = stderr(&run(
        &env,
        &[],
        &["restore", "latest", "--target", target.to_str().unwrap()],
    ));
    assert!(
        err.contains("AccessDenied") || err.contains("HTTP 403"),
        "{err}"
    );
    let id = iam.keys(&env.bucket, "host1/metadata/")[0]
        .split('/')
        .nth(2)
        .unwrap()
        .to_string();
    // The versioned listing is refused first (a warning), then the delete.
    let out = run(&env, &[], &["snapshot", "remove", &id]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last = err.trim_end().lines().last().unwrap_or("");
    assert!(
        last.starts_with("vaultik: store DELETE") && last.contains("AccessDenied"),
        "{err}"
    );
    assert!(!err.contains(&s), "a secret shown: {err}");
    assert!(
        iam.keys(&env.bucket, "host1/metadata/")
            .iter()
            .any(|k| k.contains(&id)),
        "the snapshot is still there"
    );
    let elsewhere = format!("s3://{}/host2/", env.bucket);
    let out = run(&env, &[], &["--store", &elsewhere, "snapshot", "create"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("AccessDenied"), "{}", stderr(&out));
    assert!(iam.keys(&env.bucket, "host2/").is_empty());
    // What the host wrote is whole: the admin restores it.
    let admin = [
        ("AWS_ACCESS_KEY_ID", iam.admin.0.as_str()),
        ("AWS_SECRET_ACCESS_KEY", iam.admin.1.as_str()),
    ];
    let target = env.path().join("admin-restore");
    ok(
        &env,
        &admin,
        &["restore", "latest", "--target", target.to_str().unwrap()],
    );
    assert_same_tree(&env.src(), &restored(&target, &env.src()));
}

#[test]
fn sso_profiles_exchange_the_token_aws_sso_login_left() {
    let env = env_iam();
    let iam = iam::iam();
    let (k, s, t) = iam.assume(&role(iam, &env));
    let access = "aoaAAAAAGQ-sso-access-token-5678";
    let answer = serde_json::json!({"roleCredentials": {
        "accessKeyId": k, "secretAccessKey": s, "sessionToken": t,
        "expiration": (vaultik::time::now() + 3600) * 1000,
    }})
    .to_string()
    .into_bytes();
    // The portal (GetRoleCredentials): the token in its header, the
    // account and role in the query.
    let portal = fake_http::start(Box::new(move |r| {
        let want = "/federation/credentials?account_id=123456789012&role_name=Backup%2BRestore";
        if r.target != want || r.header("x-amz-sso_bearer_token") != Some(access) {
            return (
                401,
                br#"{"message":"Session token not found or invalid"}"#.to_vec(),
            );
        }
        (200, answer.clone())
    }));
    let aws = env.path().join(".aws");
    fs::create_dir_all(aws.join("sso/cache")).unwrap();
    fs::write(
        aws.join("config"),
        "[profile corp]\nsso_session = my-sso\nsso_account_id = 123456789012\n\
         sso_role_name = Backup+Restore\nregion = us-east-1\n\
         [sso-session my-sso]\nsso_region = us-east-1\n\
         sso_start_url = https://my-sso-portal.awsapps.com/start\n\
         sso_registration_scopes = sso:account:access\n",
    )
    .unwrap();
    // The AWS CLI names the cache by the SHA-1 of the session name
    // (`echo -n my-sso | sha1sum`).
    let cache = aws
        .join("sso/cache")
        .join("0ad374308c5a4e22f723adf10145eafad7c4031c.json");
    let token_json = |expires: &str| {
        serde_json::json!({
            "startUrl": "https://my-sso-portal.awsapps.com/start",
            "region": "us-east-1", "accessToken": access, "expiresAt": expires,
            "clientId": "c", "clientSecret": "cs", "refreshToken": "r",
        })
        .to_string()
    };
    fs::write(
        &cache,
        token_json(&vaultik::store::lock::iso8601(vaultik::time::now() + 3600)),
    )
    .unwrap();
    let vars = [
        ("AWS_PROFILE", "corp"),
        ("AWS_ENDPOINT_URL_SSO", portal.endpoint.as_str()),
    ];
    round_trip(&env, &vars);
    assert_eq!(
        signed_by(&env, &vars),
        "profile `corp` (SSO, role Backup+Restore in account 123456789012)"
    );
    assert!(portal.count("GET", "/federation/credentials") >= 1);
    // A token that expired: sign in again, said on one line.
    fs::write(&cache, token_json("2020-01-01T00:00:00Z")).unwrap();
    fails(
        &env,
        &vars,
        &["snapshot", "list"],
        &["expired at 2020-01-01", "aws sso login --profile corp"],
        access,
    );
    // One the portal does not know.
    fs::write(
        &cache,
        token_json(&vaultik::store::lock::iso8601(vaultik::time::now() + 3600))
            .replace(access, "revoked-token"),
    )
    .unwrap();
    fails(
        &env,
        &vars,
        &["snapshot", "list"],
        &[
            "the SSO portal refused the token (HTTP 401)",
            "aws sso login",
        ],
        "revoked-token",
    );
    // No sign-in yet.
    fs::remove_file(&cache).unwrap();
    fails(
        &env,
        &vars,
        &["snapshot", "list"],
        &["no SSO token at", "aws sso login --profile corp"],
        access,
    );
}
