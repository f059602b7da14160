//! What a store is opened with: plain data, filled in from the config
//! file (`config.rs`) and then from flags and the environment
//! (`cmd/settings.rs`), never read from anywhere by the store itself.

use std::path::PathBuf;
use std::time::Duration;

use super::class::StorageClass;
use super::lock::LockMode;

/// How long a request is tried through an outage when nothing says
/// (`retry_for`): restic's 15 minutes.
pub const RETRY_FOR: Duration = Duration::from_secs(15 * 60);

// Made once per command: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    S3(S3Config),
    Local { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct S3Config {
    pub endpoint: String,
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// PEM roots to trust instead of the built-in web PKI roots (a private CA).
    pub ca_file: Option<PathBuf>,
    /// The storage class of blobs (metadata, manifests and marks are
    /// always STANDARD).
    pub storage_class: StorageClass,
    /// Lock every object written (`store/lock.rs`).
    pub object_lock: LockMode,
    /// How long; derived from the retention rules when None.
    pub lock_for: Option<Duration>,
    /// How long a request is tried through an outage (`retry_for`; 15
    /// minutes when None).
    pub retry_for: Option<Duration>,
    /// The checksum every PUT carries (`checksum`).
    pub checksum: Checksum,
    /// How a request names the bucket (`url_style`).
    pub url_style: UrlStyle,
    /// Bytes per second, across every thread (`limit_upload`,
    /// `limit_download`); None: no limit.
    pub limit_upload: Option<u64>,
    pub limit_download: Option<u64>,
    /// Requests in flight at most, across every thread (`connections`).
    pub connections: Option<usize>,
    /// What the AWS credential chain reads from the environment.
    pub aws: AwsEnv,
}

/// The environment variables of the AWS credential chain (`s3/creds/`),
/// gathered by `cmd/settings.rs` (nothing below it reads the environment).
/// Empty variables count as unset, as the AWS SDKs take them.
#[derive(Clone, Default, PartialEq)]
pub struct AwsEnv {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// `AWS_PROFILE` (else `AWS_DEFAULT_PROFILE`); `default` when unset.
    pub profile: Option<String>,
    /// `AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`: else
    /// `~/.aws/credentials` and `~/.aws/config`.
    pub shared_credentials_file: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
    /// `HOME`, for `~/.aws`.
    pub home: Option<PathBuf>,
    /// `AWS_REGION` (else `AWS_DEFAULT_REGION`): where STS is asked.
    pub region: Option<String>,
    /// `AWS_ROLE_ARN`, `AWS_WEB_IDENTITY_TOKEN_FILE`,
    /// `AWS_ROLE_SESSION_NAME`: web identity (EKS IRSA).
    pub role_arn: Option<String>,
    pub web_identity_token_file: Option<PathBuf>,
    pub role_session_name: Option<String>,
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI`, `_RELATIVE_URI`,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`, `_TOKEN_FILE` (ECS, EKS Pod
    /// Identity).
    pub container_full_uri: Option<String>,
    pub container_relative_uri: Option<String>,
    pub container_token: Option<String>,
    pub container_token_file: Option<PathBuf>,
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`, `AWS_EC2_METADATA_DISABLED`.
    pub imds_endpoint: Option<String>,
    pub imds_disabled: bool,
    /// `AWS_ENDPOINT_URL_STS` (else `AWS_ENDPOINT_URL`): another STS
    /// endpoint than AWS's.
    pub sts_endpoint: Option<String>,
    /// `AWS_ENDPOINT_URL_SSO` (else `AWS_ENDPOINT_URL`): another SSO
    /// portal than AWS's.
    pub sso_endpoint: Option<String>,
}

/// Which variables are set, never their values (a secret, a token).
impl std::fmt::Debug for AwsEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: bool| if v { "set" } else { "unset" };
        f.debug_struct("AwsEnv")
            .field("access_key_id", &set(self.access_key_id.is_some()))
            .field("secret_access_key", &set(self.secret_access_key.is_some()))
            .field("session_token", &set(self.session_token.is_some()))
            .field("profile", &self.profile)
            .field("container_token", &set(self.container_token.is_some()))
            .finish_non_exhaustive()
    }
}

/// The checksum a PUT carries, which the server checks against the body
/// (`checksum` in `[s3]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checksum {
    /// `x-amz-checksum-sha256` (with `x-amz-sdk-checksum-algorithm`): the
    /// server keeps it, and `verify --checksums` compares it with the
    /// blob's name. AWS, MinIO, Ceph, Garage.
    #[default]
    Sha256,
    /// `Content-MD5`: checked by the server, not kept in a form vaultik
    /// reads back (B2, GCS, providers that refuse the SHA-256 headers).
    Md5,
    /// None but the signature's own payload hash (`x-amz-content-sha256`,
    /// which SigV4 requires). Not with Object Lock, which needs one.
    None,
}

impl Checksum {
    pub const NAMES: [&'static str; 3] = ["sha256", "md5", "none"];

    pub fn parse(s: &str) -> Option<Checksum> {
        match s.to_ascii_lowercase().as_str() {
            "sha256" => Some(Checksum::Sha256),
            "md5" => Some(Checksum::Md5),
            "none" => Some(Checksum::None),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Checksum::Sha256 => "sha256",
            Checksum::Md5 => "md5",
            Checksum::None => "none",
        }
    }
}

/// How requests name the bucket (`url_style` in `[s3]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UrlStyle {
    /// Virtual-hosted for AWS endpoints (`*.amazonaws.com`) and a bucket
    /// name without dots, path-style otherwise.
    #[default]
    Auto,
    /// `https://ENDPOINT/BUCKET/KEY`.
    Path,
    /// `https://BUCKET.ENDPOINT/KEY` (Alibaba OSS takes no other).
    Virtual,
}

impl UrlStyle {
    pub const NAMES: [&'static str; 3] = ["auto", "path", "virtual"];

    pub fn parse(s: &str) -> Option<UrlStyle> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Some(UrlStyle::Auto),
            "path" => Some(UrlStyle::Path),
            "virtual" => Some(UrlStyle::Virtual),
            _ => None,
        }
    }

    /// Whether `bucket` at `endpoint` is named in the host.
    pub fn virtual_host(self, endpoint: &str, bucket: &str) -> bool {
        match self {
            UrlStyle::Path => false,
            UrlStyle::Virtual => true,
            UrlStyle::Auto => {
                let host = endpoint
                    .split_once("://")
                    .map_or(endpoint, |(_, rest)| rest)
                    .split(['/', ':'])
                    .next()
                    .unwrap_or("")
                    .to_ascii_lowercase();
                (host == "amazonaws.com" || host.ends_with(".amazonaws.com"))
                    && !bucket.contains('.')
            }
        }
    }
}
