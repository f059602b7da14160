//! Stage 1 for a stream (`snapshot create --stdin NAME`, a `command`):
//! no walk and nothing to detect; one entry, `/stdin/NAME`, whose content
//! is the stream, handed straight to the readers (`chunk`), which cut it
//! like a file too big to hold, in bounded memory.

use std::path::PathBuf;
use std::sync::mpsc::SyncSender;

use super::Todo;
use super::record::Recorder;
use crate::error::{Error, Result};
use crate::index::FileStat;
use crate::snapshot::{Entry, Kind};
use crate::stream::{self, Stream};

/// Record the stream's entry (mode 0600, owned by whoever runs vaultik,
/// dated `time`, the snapshot's time) and queue the stream to be read.
pub fn feed(
    rec: &mut Recorder<'_, '_, '_, '_>,
    name: &str,
    time: u64,
    input: Box<Stream>,
    todo: &SyncSender<Vec<Todo>>,
) -> Result<()> {
    let path = stream::entry_path(name);
    let e = Entry {
        path: path.clone().into_bytes(),
        kind: Kind::File,
        mode: 0o600,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        size: 0,
        mtime_ns: (time as i64).saturating_mul(1_000_000_000),
        rdev: 0,
        target: None,
        link: None,
        attrs: Default::default(),
    };
    let entry = rec.stream_entry(&e, &input.what)?;
    let t = Todo {
        entry,
        path: PathBuf::from(path),
        // Never compared: a stream is always read.
        stat: FileStat {
            size: 0,
            mtime_ns: e.mtime_ns,
            ctime_ns: 0,
            ino: 0,
            dev: 0,
        },
        stream: Some(input),
        reuse: None,
    };
    todo.send(vec![t]).map_err(|_| Error::Cancelled)
}
