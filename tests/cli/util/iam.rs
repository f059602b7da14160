//! moto with IAM: a moto server that checks every request's SigV4
//! signature and the caller's IAM policy (started with
//! `INITIAL_NO_AUTH_ACTION_COUNT`: the first requests, unchecked, make an
//! admin user), and issues temporary credentials from its STS. The tests
//! act on it through boto3, run with the Python of moto's virtualenv,
//! signed with the admin's key.
//!
//! moto checks the signature in the `Authorization` header (a presigned
//! request makes it fail with a 500), the policy's actions and resources,
//! and session tokens (missing: InvalidAccessKeyId; wrong: InvalidToken).
//! It does not check condition keys such as `s3:prefix`, nor expiry: the
//! tests check those through a recording proxy and vaultik's own checks.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

pub struct Iam {
    pub endpoint: String,
    /// The admin's access key id and secret.
    pub admin: (String, String),
    python: PathBuf,
}

/// The shared server of this test binary.
pub fn iam() -> &'static Iam {
    static IAM: OnceLock<Iam> = OnceLock::new();
    IAM.get_or_init(Iam::start)
}

fn moto_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VAULTIK_MOTO_SERVER") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    PathBuf::from(home).join(".cache/vaultik/moto-5.2.5/bin/moto_server")
}

impl Iam {
    /// A server of its own (for a test that must be alone on it).
    pub fn start() -> Iam {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let bin = moto_bin();
        assert!(
            bin.is_file(),
            "moto's server is not installed: run `bash tests/run.sh`"
        );
        let python = bin.with_file_name("python");
        std::thread::spawn(move || {
            let mut cmd = Command::new(bin);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl in the child before exec; it dies with us.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().expect("start moto_server");
            let _ = child.wait();
            loop {
                std::thread::park();
            }
        });
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..150 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let mut iam = Iam {
            endpoint,
            admin: (String::new(), String::new()),
            python,
        };
        // The three unchecked requests: the admin, its policy, its key.
        let v = iam.run(
            "iam = boto3.client('iam', endpoint_url=EP, aws_access_key_id='x', \
             aws_secret_access_key='x', region_name='us-east-1')\n\
             iam.create_user(UserName='admin')\n\
             iam.put_user_policy(UserName='admin', PolicyName='all', PolicyDocument=json.dumps(\
             {'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': '*', 'Resource': '*'}]}))\n\
             k = iam.create_access_key(UserName='admin')['AccessKey']\n\
             out = {'key': k['AccessKeyId'], 'secret': k['SecretAccessKey']}\n",
        );
        iam.admin = (
            v["key"].as_str().unwrap().to_string(),
            v["secret"].as_str().unwrap().to_string(),
        );
        iam
    }

    /// Run `script` with boto3 clients `iam`, `s3` and `sts` signed as the
    /// admin (`EP` is the endpoint); it sets `out`, returned as JSON.
    pub fn py(&self, script: &str) -> Value {
        let prelude = "A = dict(endpoint_url=EP, aws_access_key_id=ADMIN[0], \
                       aws_secret_access_key=ADMIN[1], region_name='us-east-1')\n\
                       iam = boto3.client('iam', **A)\ns3 = boto3.client('s3', **A)\n\
                       sts = boto3.client('sts', **A)\n";
        self.run(&format!("{prelude}{script}"))
    }

    fn run(&self, script: &str) -> Value {
        let full = format!(
            "import boto3, json, sys, datetime\nEP = {:?}\nADMIN = ({:?}, {:?})\nout = None\n\
             {script}\nprint(json.dumps(out, default=str))\n",
            self.endpoint, self.admin.0, self.admin.1
        );
        let mut child = Command::new(&self.python)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run moto's python");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(full.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "boto3 script failed:\n{script}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8_lossy(&o.stdout);
        serde_json::from_str(text.lines().last().unwrap_or("null")).unwrap()
    }

    pub fn create_bucket(&self, bucket: &str, lock: bool) {
        self.py(&format!(
            "s3.create_bucket(Bucket={bucket:?}, ObjectLockEnabledForBucket={})",
            if lock { "True" } else { "False" }
        ));
    }

    /// A role anybody may assume, allowed everything in S3 (or `policy`).
    pub fn role(&self, name: &str, policy: Option<&str>) -> String {
        let policy = policy.map(str::to_string).unwrap_or_else(|| {
            r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}"#.into()
        });
        let v = self.py(&format!(
            "trust = {{'Version': '2012-10-17', 'Statement': [{{'Effect': 'Allow', \
             'Principal': {{'AWS': '*'}}, 'Action': ['sts:AssumeRole', \
             'sts:AssumeRoleWithWebIdentity']}}]}}\n\
             r = iam.create_role(RoleName={name:?}, AssumeRolePolicyDocument=json.dumps(trust))\n\
             iam.put_role_policy(RoleName={name:?}, PolicyName='p', PolicyDocument={policy:?})\n\
             out = r['Role']['Arn']\n"
        ));
        v.as_str().unwrap().to_string()
    }

    /// Temporary credentials of `role_arn`: (key, secret, token).
    pub fn assume(&self, role_arn: &str) -> (String, String, String) {
        let v = self.py(&format!(
            "c = sts.assume_role(RoleArn={role_arn:?}, RoleSessionName='test')['Credentials']\n\
             out = [c['AccessKeyId'], c['SecretAccessKey'], c['SessionToken']]\n"
        ));
        let s = |i: usize| v[i].as_str().unwrap().to_string();
        (s(0), s(1), s(2))
    }

    /// A user with `policy` and an access key: (key, secret).
    pub fn user(&self, name: &str, policy: &str) -> (String, String) {
        let v = self.py(&format!(
            "iam.create_user(UserName={name:?})\n\
             iam.put_user_policy(UserName={name:?}, PolicyName='p', PolicyDocument={policy:?})\n\
             k = iam.create_access_key(UserName={name:?})['AccessKey']\n\
             out = [k['AccessKeyId'], k['SecretAccessKey']]\n"
        ));
        (
            v[0].as_str().unwrap().to_string(),
            v[1].as_str().unwrap().to_string(),
        )
    }

    /// The keys under `prefix` in `bucket` (admin's listing).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let v = self.py(&format!(
            "r = s3.list_objects_v2(Bucket={bucket:?}, Prefix={prefix:?})\n\
             out = [o['Key'] for o in r.get('Contents', [])]\n"
        ));
        v.as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    }
}
