//! What a store is opened with: plain data, filled in from the config
//! file (`config.rs`) and then from flags and the environment
//! (`cmd/settings.rs`), never read from anywhere by the store itself.

use std::path::PathBuf;
use std::time::Duration;

use super::class::StorageClass;
use super::lock::LockMode;

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
}
