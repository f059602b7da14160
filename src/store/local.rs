//! A directory used as an object store (USB disk, NAS mount, the embedded
//! default): one file per key, written to a temporary name and renamed into
//! place so that an object is either absent or complete.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ObjectInfo, Op, Stats, Store};
use crate::error::{Error, IoContext, Result};

const TMP_MARK: &str = ".vaultik-tmp-";

pub struct LocalStore {
    root: PathBuf,
    stats: Stats,
    seq: AtomicU64,
}

impl LocalStore {
    pub fn open(root: &Path, create: bool) -> Result<LocalStore> {
        if create {
            fs::create_dir_all(root).at("create store directory", root)?;
        } else if !root.is_dir() {
            return Err(Error::Setup(format!(
                "store directory {} does not exist",
                root.display()
            )));
        }
        Ok(LocalStore {
            root: root.to_path_buf(),
            stats: Stats::default(),
            seq: AtomicU64::new(0),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn write_atomically(
        &self,
        key: &str,
        fill: impl FnOnce(&mut File) -> io::Result<u64>,
    ) -> Result<u64> {
        let dest = self.path(key);
        let dir = dest.parent().expect("object keys have a parent directory");
        fs::create_dir_all(dir).at("create directory", dir)?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{TMP_MARK}{}-{n}", std::process::id()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            let len = fill(&mut f)?;
            f.sync_all()?;
            fs::rename(&tmp, &dest)?;
            Ok(len)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.at("write object", &dest)
    }
}

impl Store for LocalStore {
    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    fn put_file(&self, key: &str, path: &Path) -> Result<()> {
        // Same file system: link the finished file in instead of copying it.
        let dest = self.path(key);
        let dir = dest.parent().expect("object keys have a parent directory");
        fs::create_dir_all(dir).at("create directory", dir)?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{TMP_MARK}{}-{n}", std::process::id()));
        if fs::hard_link(path, &tmp).is_ok() {
            let done = File::open(&tmp)
                .and_then(|f| {
                    f.sync_all()?;
                    f.metadata().map(|m| m.len())
                })
                .and_then(|len| fs::rename(&tmp, &dest).map(|_| len));
            match done {
                Ok(len) => {
                    self.stats.count(Op::Put, len, 0);
                    return Ok(());
                }
                Err(_) => {
                    let _ = fs::remove_file(&tmp);
                }
            }
        }
        let mut src = File::open(path).at("open", path)?;
        let len = self.write_atomically(key, |f| io::copy(&mut src, f))?;
        self.stats.count(Op::Put, len, 0);
        Ok(())
    }

    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<()> {
        self.write_atomically(key, |f| f.write_all(data).map(|_| data.len() as u64))?;
        self.stats.count(Op::Put, data.len() as u64, 0);
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key);
        let data = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.stats.count(Op::Get, 0, 0);
                return Err(Error::NotFound { key: key.into() });
            }
            r => r.at("read object", &path)?,
        };
        self.stats.count(Op::Get, 0, data.len() as u64);
        Ok(data)
    }

    fn open_range(&self, key: &str, start: u64, len: u64) -> Result<Box<dyn Read + Send + '_>> {
        let path = self.path(key);
        let mut f = match File::open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.stats.count(Op::Get, 0, 0);
                return Err(Error::NotFound { key: key.into() });
            }
            r => r.at("open object", &path)?,
        };
        f.seek(SeekFrom::Start(start)).at("seek in object", &path)?;
        self.stats.count(Op::Get, 0, 0);
        Ok(Box::new(super::Exact {
            inner: f,
            remaining: len,
            received: &self.stats.bytes_received,
        }))
    }

    fn head(&self, key: &str) -> Result<Option<u64>> {
        self.stats.count(Op::Head, 0, 0);
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at("stat object", &path),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.stats.count(Op::List, 0, 0);
        // Walk from the deepest directory that the prefix names.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let mut out = Vec::new();
        let mut stack = vec![(self.root.join(dir_part), dir_part.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).at("list", &dir),
            };
            for entry in rd {
                let entry = entry.at("list", &dir)?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with(TMP_MARK) {
                    continue;
                }
                let key = if rel.is_empty() {
                    name.to_string()
                } else {
                    format!("{rel}/{name}")
                };
                let ft = entry.file_type().at("list", &dir)?;
                if ft.is_dir() {
                    stack.push((entry.path(), key));
                } else if ft.is_file() && key.starts_with(prefix) {
                    let m = entry.metadata().at("stat", &entry.path())?;
                    let modified = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_secs());
                    out.push(ObjectInfo {
                        key,
                        size: m.len(),
                        modified,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.stats.count(Op::Delete, 0, 0);
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at("delete object", &path),
        }
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }
}
