//! A directory store that does not exist yet, for the commands that only
//! list (`snapshot list`, `store info`): an empty store, not an error (a
//! warning says nothing was ever backed up there). It holds nothing and
//! takes nothing.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::store::class::StorageClass;
use crate::store::{Listing, Stats, Store};

pub struct Absent {
    pub path: PathBuf,
    pub stats: Stats,
}

impl Absent {
    fn refused(&self) -> Error {
        Error::Setup(format!(
            "no vaultik store at {}: No such file or directory",
            crate::error::shown(&self.path)
        ))
    }
}

impl Store for Absent {
    fn describe(&self) -> String {
        format!("directory {}", self.path.display())
    }

    fn put_file(&self, _key: &str, _path: &Path, _class: StorageClass) -> Result<()> {
        Err(self.refused())
    }

    fn put_bytes(&self, _key: &str, _data: &[u8]) -> Result<()> {
        Err(self.refused())
    }

    fn put_new(&self, _key: &str, _data: &[u8]) -> Result<bool> {
        Err(self.refused())
    }

    fn get(&self, key: &str, _limit: u64) -> Result<Vec<u8>> {
        Err(Error::NotFound { key: key.into() })
    }

    fn open_range(&self, key: &str, _start: u64, _len: u64) -> Result<Box<dyn Read + Send + '_>> {
        Err(Error::NotFound { key: key.into() })
    }

    fn head(&self, _key: &str) -> Result<Option<u64>> {
        Ok(None)
    }

    fn list(&self, _prefix: &str) -> Result<Listing> {
        Ok(Listing::default())
    }

    fn delete(&self, _key: &str) -> Result<()> {
        Err(self.refused())
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }
}
