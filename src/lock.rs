//! One run at a time per index: an `flock`ed file next to the index holding
//! the pid of the holder. The kernel drops the lock when its holder dies, so
//! a stale lock from a killed run is simply taken over.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

pub struct RunLock {
    _file: File,
}

impl RunLock {
    pub fn acquire(index_path: &Path) -> Result<RunLock> {
        let mut path: PathBuf = index_path.as_os_str().to_owned().into();
        path.as_mut_os_string().push(".lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .at("open lock file", &path)?;
        // SAFETY: flock on a file descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(Error::Locked {
                    lock: path,
                    pid: pid.trim().to_string(),
                });
            }
            return Err(err).at("lock", &path);
        }
        file.set_len(0).at("write lock file", &path)?;
        file.seek(SeekFrom::Start(0)).at("write lock file", &path)?;
        writeln!(file, "{}", std::process::id()).at("write lock file", &path)?;
        Ok(RunLock { _file: file })
    }
}
