//! Scratch files in directories others may write to: the temporary
//! directory (`$TMPDIR`, usually a shared `/tmp`) and a restore target.
//! A name there that anyone can guess can be planted first (a file, its
//! `-journal`, a symlink); so every scratch file is made inside a private
//! directory of a random name (`.vaultik-<32 hex>`, mode 0700, made by
//! this process with `mkdir`, which fails on anything already there),
//! filled, opened, and unlinked with its directory as soon as it is open.
//! (Until then a kill leaves it behind: its name, never one anyone could
//! have planted.)

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// `N` random bytes from the kernel.
pub fn random<const N: usize>(what: &'static str) -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    let mut filled = 0;
    while filled < N {
        filled +=
            rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty())
                .map_err(|e| Error::System {
                    op: what,
                    source: Box::new(std::io::Error::from(e)),
                })?;
    }
    Ok(bytes)
}

/// A private directory made in `parent` (created first if missing), with
/// the files made in it; all removed when dropped.
pub struct PrivateDir {
    path: PathBuf,
    files: Vec<PathBuf>,
}

impl PrivateDir {
    pub fn new(parent: &Path) -> Result<PrivateDir> {
        fs::create_dir_all(parent).at("create directory", parent)?;
        // A name taken (by chance, or planted: it cannot be guessed) is
        // drawn again.
        for _ in 0..8 {
            let name = format!(
                ".vaultik-{}",
                crate::chunk::hex(&random::<16>("draw a scratch directory name")?)
            );
            let path = parent.join(name);
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    return Ok(PrivateDir {
                        path,
                        files: Vec::new(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).at("create directory", &path),
            }
        }
        Err(Error::Setup(format!(
            "cannot make a private directory in {}: every random name drawn was taken",
            parent.display()
        )))
    }

    /// A new empty file `name` in the directory (mode 0600, never an
    /// existing one, never through a symlink): its path, and the file open
    /// for writing.
    pub fn file(&mut self, name: &str) -> Result<(PathBuf, fs::File)> {
        let path = self.path.join(name);
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .at("create", &path)?;
        self.files.push(path.clone());
        Ok((path, file))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = fs::remove_file(f);
        }
        let _ = fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_gone_once_dropped() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let (a, b);
        {
            let mut d = PrivateDir::new(parent.path()).unwrap();
            let mut other = PrivateDir::new(parent.path()).unwrap();
            assert_ne!(d.path, other.path);
            let m = fs::metadata(&d.path).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o700);
            a = d.file("x").unwrap().0;
            b = other.file("x").unwrap().0;
            assert_eq!(
                fs::metadata(&a).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert!(d.file("x").is_err(), "an existing name is never reused");
        }
        assert!(!a.exists() && !b.exists());
        assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
