//! Blobs: many chunks, each its own zstd frame, concatenated into one age
//! stream encrypted to every recipient. The writer streams ciphertext to an
//! encrypted temporary file (plaintext never touches the disk) and names the
//! blob by the SHA-256 of that ciphertext. The reader reads single frames
//! through ranged GETs, seeking inside the age stream.

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use age::x25519;
use sha2::{Digest, Sha256};

use crate::chunk::ChunkId;
use crate::error::{Error, IoContext, Result};
use crate::keys;
use crate::store::Store;

/// age's plaintext chunk, and its size on the wire with the 16-byte tag.
const AGE_CHUNK: u64 = 64 * 1024;
const AGE_CHUNK_ENC: u64 = AGE_CHUNK + 16;

/// Where one chunk lives inside a blob's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub offset: u64,
    /// Length of the compressed frame.
    pub length: u64,
    /// Length of the chunk's plaintext.
    pub size: u64,
}

/// The largest chunk FastCDC makes, and the largest frame it compresses
/// to (zstd's bound for incompressible data, with room).
pub const MAX_CHUNK: u64 = fastcdc::v2020::MAXIMUM_MAX as u64;
pub const MAX_FRAME: u64 = MAX_CHUNK + MAX_CHUNK / 64 + 4096;

impl Location {
    /// Whether a location read from a snapshot (anyone's word) can be a
    /// real chunk's in a blob of `blob_size` bytes: a frame and a chunk of
    /// sizes FastCDC and zstd make, lying within the blob.
    pub fn plausible_within(&self, blob_size: u64) -> bool {
        self.length > 0
            && self.length <= MAX_FRAME
            && self.size > 0
            && self.size <= MAX_CHUNK
            && self
                .offset
                .checked_add(self.length)
                .is_some_and(|end| end <= blob_size)
    }

    /// From the columns `offset, length, size` of `row`, starting at `at`.
    pub fn from_row(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Location> {
        Ok(Location {
            offset: row.get::<_, i64>(at)? as u64,
            length: row.get::<_, i64>(at + 1)? as u64,
            size: row.get::<_, i64>(at + 2)? as u64,
        })
    }

    /// Run `insert`, a statement taking `(id, blob, offset, length, size)`:
    /// a chunk row, the same in the index and in a snapshot's metadata.
    pub fn insert_row(
        &self,
        insert: &mut rusqlite::Statement<'_>,
        id: &ChunkId,
        blob: i64,
    ) -> rusqlite::Result<usize> {
        insert.execute(rusqlite::params![
            &id.0[..],
            blob,
            self.offset as i64,
            self.length as i64,
            self.size as i64
        ])
    }
}

/// Create `dir` (mode 0700, and its missing parents) if needed; an
/// existing one must be a directory of this user that no one else can
/// enter or write (it holds the index, kept metadata and temporary
/// files): anything looser is refused, not used as is.
pub fn private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .at("create directory", dir)?;
    let st = rustix::fs::stat(dir)
        .map_err(io::Error::from)
        .at("inspect", dir)?;
    let euid = rustix::process::geteuid().as_raw();
    let mode = st.st_mode & 0o7777;
    if st.st_uid != euid || mode & 0o077 != 0 {
        return Err(Error::NotPrivate {
            path: dir.to_path_buf(),
            mode,
            owner: st.st_uid,
            euid,
        });
    }
    Ok(())
}

/// Make sure `path` exists with mode 0600 before anything writes to it
/// (created so if missing, narrowed if it is older and looser).
pub fn private_file(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .at("create", path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).at("set mode of", path)
}

/// A temporary file that is removed when dropped.
pub struct TempFile {
    path: PathBuf,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl TempFile {
    /// A new mode-0600 file in `dir`.
    pub fn create(dir: &Path, what: &str) -> Result<(TempFile, File)> {
        let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{what}-{}-{n}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .at("create temporary file", &path)?;
        Ok((TempFile { path }, file))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Counts and hashes what passes through to the inner writer.
struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Sealed = age::stream::StreamWriter<HashWriter<BufWriter<File>>>;

/// Encrypts a stream of bytes to a temporary file.
pub struct SealWriter {
    temp: TempFile,
    writer: Sealed,
    plain_len: u64,
}

/// A finished, encrypted temporary file and the name it will be stored under.
pub struct SealedFile {
    pub temp: TempFile,
    pub hash: [u8; 32],
    pub size: u64,
}

impl SealWriter {
    pub fn create(dir: &Path, what: &str, recipients: &[x25519::Recipient]) -> Result<SealWriter> {
        let (temp, file) = TempFile::create(dir, what)?;
        let inner = HashWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            len: 0,
        };
        let enc = age::Encryptor::with_recipients(keys::as_recipients(recipients))
            .map_err(|e| Error::Key(format!("cannot encrypt to the recipients: {e}")))?;
        let writer = enc.wrap_output(inner).at("write", temp.path())?;
        Ok(SealWriter {
            temp,
            writer,
            plain_len: 0,
        })
    }

    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.writer.write_all(data).at("write", self.temp.path())?;
        self.plain_len += data.len() as u64;
        Ok(())
    }

    /// Plaintext bytes written so far.
    pub fn written(&self) -> u64 {
        self.plain_len
    }

    pub fn finish(self) -> Result<SealedFile> {
        let SealWriter { temp, writer, .. } = self;
        let hw = writer.finish().at("write", temp.path())?;
        let HashWriter { inner, hash, len } = hw;
        let file = inner
            .into_inner()
            .map_err(|e| e.into_error())
            .at("write", temp.path())?;
        drop(file);
        Ok(SealedFile {
            temp,
            hash: hash.finalize().into(),
            size: len,
        })
    }
}

/// Packs compressed chunks into one blob.
pub struct BlobWriter {
    seal: SealWriter,
    pub entries: Vec<(ChunkId, Location)>,
}

pub struct FinishedBlob {
    pub key: String,
    pub file: SealedFile,
    pub entries: Vec<(ChunkId, Location)>,
}

impl BlobWriter {
    pub fn create(dir: &Path, recipients: &[x25519::Recipient]) -> Result<BlobWriter> {
        Ok(BlobWriter {
            seal: SealWriter::create(dir, "blob", recipients)?,
            entries: Vec::new(),
        })
    }

    /// Append one chunk, already compressed as a single zstd frame.
    pub fn add(&mut self, id: ChunkId, frame: &[u8], size: u64) -> Result<()> {
        let offset = self.seal.written();
        self.seal.write_all(frame)?;
        self.entries.push((
            id,
            Location {
                offset,
                length: frame.len() as u64,
                size,
            },
        ));
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.seal.written()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn finish(self) -> Result<FinishedBlob> {
        let file = self.seal.finish()?;
        Ok(FinishedBlob {
            key: crate::layout::blob(&file.hash),
            file,
            entries: self.entries,
        })
    }
}

/// `Read + Seek` over a stored object through streamed ranged GETs: one
/// request per planned range, read as it arrives (no range is buffered
/// whole), so that a seek into a large blob downloads only what is read.
pub struct RangedObject<'a> {
    store: &'a dyn Store,
    key: String,
    size: u64,
    pos: u64,
    body: Option<Body<'a>>,
    /// Shared with the `BlobReader` that owns this object through age.
    window: Rc<Cell<Window>>,
}

/// An open ranged GET: the answer's next byte is at `pos`, its last before
/// `end`.
struct Body<'a> {
    reader: Box<dyn Read + Send + 'a>,
    pos: u64,
    end: u64,
}

/// What the next GET asks for: up to `end` (the end of the range the reader
/// planned) when the read is before it, else `readahead` bytes; and where the
/// reader is.
#[derive(Debug, Clone, Copy)]
struct Window {
    readahead: u64,
    end: u64,
    pos: u64,
}

/// A forward seek inside an open answer reads and drops up to this much
/// rather than sending a new request.
const SKIP_MAX: u64 = 1 << 20;
/// Answers cut short are reopened where they stopped this many times in a
/// row (each reopen is itself retried by the store) before giving up.
const REOPENS: u32 = 3;

impl<'a> RangedObject<'a> {
    pub fn new(store: &'a dyn Store, key: &str, size: u64) -> RangedObject<'a> {
        RangedObject {
            store,
            key: key.to_string(),
            size,
            pos: 0,
            body: None,
            window: Rc::new(Cell::new(Window {
                readahead: AGE_CHUNK_ENC,
                end: u64::MAX,
                pos: 0,
            })),
        }
    }

    fn note_pos(&self) {
        let mut w = self.window.get();
        w.pos = self.pos;
        self.window.set(w);
    }

    /// An answer positioned at `self.pos`: the open one (skipping forward a
    /// little if needed) or a new request.
    fn body_at_pos(&mut self) -> io::Result<&mut Body<'a>> {
        let reusable = self
            .body
            .as_ref()
            .is_some_and(|b| b.pos <= self.pos && self.pos < b.end && self.pos - b.pos <= SKIP_MAX);
        if !reusable {
            let w = self.window.get();
            let until = if self.pos < w.end && w.end != u64::MAX {
                w.end
            } else {
                self.pos.saturating_add(w.readahead)
            };
            let len = until.min(self.size).saturating_sub(self.pos);
            let reader = self
                .store
                .open_range(&self.key, self.pos, len)
                .map_err(io::Error::other)?;
            self.body = Some(Body {
                reader,
                pos: self.pos,
                end: self.pos + len,
            });
        }
        let body = self.body.as_mut().expect("opened above");
        let mut scratch = [0u8; 16 << 10];
        while body.pos < self.pos {
            let want = (self.pos - body.pos).min(scratch.len() as u64) as usize;
            let n = body.reader.read(&mut scratch[..want])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            body.pos += n as u64;
        }
        Ok(body)
    }
}

impl Read for RangedObject<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let mut failures = 0;
        loop {
            let r = self.body_at_pos().and_then(|b| {
                let want = out.len().min((b.end - b.pos) as usize);
                let n = b.reader.read(&mut out[..want])?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the answer ended {} bytes early", b.end - b.pos),
                    ));
                }
                b.pos += n as u64;
                Ok(n)
            });
            match r {
                Ok(n) => {
                    self.pos += n as u64;
                    self.note_pos();
                    return Ok(n);
                }
                // The request itself failed after the store's retries.
                Err(e) if self.body.is_none() => return Err(e),
                Err(e) => {
                    // Cut short or reset mid-answer: ask again from here.
                    self.body = None;
                    failures += 1;
                    if failures > REOPENS {
                        return Err(e);
                    }
                }
            }
        }
    }
}

impl Seek for RangedObject<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.size as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = new as u64;
        self.note_pos();
        Ok(self.pos)
    }
}

/// Reads chunk frames out of one stored blob.
pub struct BlobReader<'a> {
    key: String,
    stream: age::stream::StreamReader<Prefixed<RangedObject<'a>>>,
    window: Rc<Cell<Window>>,
    /// Ciphertext bytes before the first payload chunk (the age header
    /// and the payload's nonce).
    header_len: u64,
    frame: Vec<u8>,
    data: Vec<u8>,
}

impl<'a> BlobReader<'a> {
    pub fn open(
        store: &'a dyn Store,
        key: &str,
        size: u64,
        identities: &[x25519::Identity],
    ) -> Result<BlobReader<'a>> {
        let mut obj = RangedObject::new(store, key, size);
        let window = obj.window.clone();
        // The header is a few hundred bytes per recipient.
        window.set(Window {
            readahead: 8 << 10,
            end: u64::MAX,
            pos: 0,
        });
        let (head, header_len) = read_header(&mut obj, key)?;
        let dec = age::Decryptor::new_buffered(Prefixed::new(head, obj))
            .map_err(|e| decrypt_error(key, e))?;
        let stream = dec
            .decrypt(keys::as_identities(identities))
            .map_err(|e| decrypt_error(key, e))?;
        // The payload starts after its 16-byte nonce.
        let header_len = header_len as u64 + 16;
        Ok(BlobReader {
            key: key.to_string(),
            stream,
            window,
            header_len,
            frame: Vec::new(),
            data: Vec::new(),
        })
    }

    /// Read the frame at `loc` and return the chunk's plaintext, checked
    /// against `id`. The buffers are the reader's own, reused from chunk to
    /// chunk (no fresh pages to fault in for every chunk).
    pub fn read_chunk(&mut self, id: &ChunkId, loc: &Location) -> Result<&[u8]> {
        // No chunk is bigger than FastCDC's largest (forged metadata could
        // claim anything: never allocate what it says before checking).
        if loc.size > MAX_CHUNK || loc.length > MAX_FRAME {
            return Err(self.corrupt(format!(
                "chunk {} at {}: implausible size {} ({} compressed)",
                id.hex(),
                loc.offset,
                loc.size,
                loc.length
            )));
        }
        let pos = self
            .stream
            .stream_position()
            .map_err(|e| self.read_failure(String::new(), e))?;
        if pos != loc.offset {
            self.stream
                .seek(SeekFrom::Start(loc.offset))
                .map_err(|e| self.read_failure(String::new(), e))?;
        }
        let mut frame = std::mem::take(&mut self.frame);
        frame.resize(loc.length as usize, 0);
        let read = self.stream.read_exact(&mut frame);
        let mut data = std::mem::take(&mut self.data);
        data.clear();
        data.reserve(loc.size as usize);
        let done = read
            .map_err(|e| self.read_failure(format!("chunk at {}: ", loc.offset), e))
            .and_then(|()| {
                DECOMPRESSOR
                    .with_borrow_mut(|d| {
                        let d = match d {
                            Some(d) => d,
                            None => d.insert(zstd::bulk::Decompressor::new()?),
                        };
                        d.decompress_to_buffer(&frame, &mut data)
                    })
                    .map_err(|e| self.corrupt(format!("chunk at {}: {e}", loc.offset)))
            });
        self.frame = frame;
        self.data = data;
        done?;
        if self.data.len() as u64 != loc.size || ChunkId::of(&self.data) != *id {
            return Err(self.corrupt(format!(
                "chunk {} at {} fails its SHA-256 check",
                id.hex(),
                loc.offset
            )));
        }
        Ok(&self.data)
    }

    /// The compressed frame of the chunk `read_chunk` returned last (as
    /// stored: `repack` moves it into a new blob as it is).
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// Prepare to read the plaintext range `[start, end)` with one GET.
    pub fn plan_range(&mut self, end: u64) {
        let last = end.div_ceil(AGE_CHUNK);
        let mut w = self.window.get();
        w.readahead = AGE_CHUNK_ENC;
        // Forged offsets may be anything: never overflow.
        w.end = self
            .header_len
            .saturating_add(last.saturating_mul(AGE_CHUNK_ENC));
        self.window.set(w);
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> Error {
        Error::corrupt(format!("blob {}", self.key), e)
    }

    /// A read that failed: the store's own failure (a request that failed
    /// after its retries, a key gone) or a connection lost for good is said
    /// as what it is; anything else (bytes that do not decrypt, an answer
    /// that keeps ending early) is damage.
    fn read_failure(&self, what: String, e: io::Error) -> Error {
        if e.get_ref().is_some_and(|x| x.is::<Error>()) {
            if let Some(Ok(inner)) = e.into_inner().map(|b| b.downcast::<Error>()) {
                return *inner;
            }
            return self.corrupt(format!("{what}a failed read"));
        }
        match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::TimedOut
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected => Error::store("GET", &self.key, format!("{what}{e}")),
            _ => self.corrupt(format!("{what}{e}")),
        }
    }
}

thread_local! {
    /// One zstd context per thread, reused for every chunk.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn decrypt_error(key: &str, e: age::DecryptError) -> Error {
    match e {
        age::DecryptError::NoMatchingKeys => Error::Key(format!(
            "the private key does not match the recipients of {key} (wrong key?)"
        )),
        e => Error::corrupt(format!("object {key}"), e),
    }
}

/// The age header of the object `key` read from `r`, bounded (see
/// `keys::HEADER_MAX`): what was read, and the header's length.
fn read_header(r: &mut dyn Read, key: &str) -> Result<(Vec<u8>, usize)> {
    keys::read_header(r).map_err(|e| Error::corrupt(format!("object {key}"), e))
}

/// The SHA-256 and count of every stored (encrypted) byte a reader of
/// `open_sealed_stream` took: what the object was, once it is read to its
/// end.
pub type Tap = std::sync::Arc<std::sync::Mutex<(Sha256, u64)>>;

struct Tapped<R> {
    inner: R,
    tap: Tap,
}

impl<R: Read> Read for Tapped<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(out)?;
        let mut t = self.tap.lock().expect("a tap is only locked here");
        t.0.update(&out[..n]);
        t.1 += n as u64;
        Ok(n)
    }
}

/// A reader of the plaintext of a stored encrypted object of `size` bytes,
/// streamed with one ranged GET (reopened where it stopped if cut short):
/// nothing of it is held whole in memory.
pub fn open_sealed_stream<'a>(
    store: &'a dyn Store,
    key: &str,
    size: u64,
    identities: &[x25519::Identity],
    tap: Tap,
) -> Result<impl Read + 'a> {
    let obj = RangedObject::new(store, key, size);
    let mut w = obj.window.get();
    w.end = size;
    obj.window.set(w);
    let mut obj = Tapped { inner: obj, tap };
    let (head, _) = read_header(&mut obj, key)?;
    let rest = io::BufReader::with_capacity(AGE_CHUNK_ENC as usize, obj);
    let dec = age::Decryptor::new_buffered(io::Cursor::new(head).chain(rest))
        .map_err(|e| decrypt_error(key, e))?;
    dec.decrypt(keys::as_identities(identities))
        .map_err(|e| decrypt_error(key, e))
}

/// The bytes already read from the start of an object (`head`, the age
/// header and perhaps more), then the object itself: `Read + Seek`, and
/// `BufRead` for age's header parser, which reads it line by line (it
/// never reads past the header that way: the rest is read as `Read`).
struct Prefixed<R> {
    head: Vec<u8>,
    pos: u64,
    rest: R,
    /// Where `rest` is.
    rest_pos: u64,
    /// `BufRead` past `head` (never used by age; there for the contract).
    buf: Vec<u8>,
}

impl<R: Read + Seek> Prefixed<R> {
    /// `rest` is positioned just after `head`.
    fn new(head: Vec<u8>, rest: R) -> Prefixed<R> {
        let at = head.len() as u64;
        Prefixed {
            head,
            pos: 0,
            rest,
            rest_pos: at,
            buf: Vec::new(),
        }
    }

    fn rest_at_pos(&mut self) -> io::Result<&mut R> {
        if self.rest_pos != self.pos {
            self.rest.seek(SeekFrom::Start(self.pos))?;
            self.rest_pos = self.pos;
        }
        Ok(&mut self.rest)
    }
}

impl<R: Read + Seek> Read for Prefixed<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = if let Some(h) = self.head.get(self.pos as usize..).filter(|h| !h.is_empty()) {
            let n = h.len().min(out.len());
            out[..n].copy_from_slice(&h[..n]);
            n
        } else if !self.buf.is_empty() {
            let n = self.buf.len().min(out.len());
            out[..n].copy_from_slice(&self.buf[..n]);
            self.buf.drain(..n);
            n
        } else {
            let n = self.rest_at_pos()?.read(out)?;
            self.rest_pos += n as u64;
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> io::BufRead for Prefixed<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let at = self.pos as usize;
        if at < self.head.len() {
            return Ok(&self.head[at..]);
        }
        if self.buf.is_empty() {
            let mut b = vec![0u8; 8 << 10];
            let n = self.rest_at_pos()?.read(&mut b)?;
            self.rest_pos += n as u64;
            b.truncate(n);
            self.buf = b;
        }
        Ok(&self.buf)
    }

    fn consume(&mut self, n: usize) {
        if (self.pos as usize) < self.head.len() {
            self.pos += n as u64;
        } else {
            self.buf.drain(..n.min(self.buf.len()));
            self.pos += n as u64;
        }
    }
}

impl<R: Read + Seek> Seek for Prefixed<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        // Buffered bytes past `head` are where `rest` was: drop them.
        if !self.buf.is_empty() {
            self.rest_pos = u64::MAX;
            self.buf.clear();
        }
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "seek before the start")
            })?,
            SeekFrom::End(d) => {
                let p = self.rest.seek(SeekFrom::End(d))?;
                self.rest_pos = p;
                p
            }
        };
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{LocalStore, Stats};
    use std::sync::Mutex;

    /// A local store whose first `cut` range answers end halfway.
    struct Cutting {
        inner: LocalStore,
        cut: Mutex<u32>,
        /// Cut answers keep half their bytes, or none.
        keep_none: bool,
        opened: Mutex<Vec<(u64, u64)>>,
    }

    impl Store for Cutting {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn put_file(
            &self,
            key: &str,
            path: &Path,
            class: crate::store::class::StorageClass,
        ) -> Result<()> {
            self.inner.put_file(key, path, class)
        }
        fn put_bytes(&self, key: &str, data: &[u8]) -> Result<()> {
            self.inner.put_bytes(key, data)
        }
        fn put_new(&self, key: &str, data: &[u8]) -> Result<bool> {
            self.inner.put_new(key, data)
        }
        fn get(&self, key: &str, limit: u64) -> Result<Vec<u8>> {
            self.inner.get(key, limit)
        }
        fn open_range(&self, key: &str, start: u64, len: u64) -> Result<Box<dyn Read + Send + '_>> {
            self.opened.lock().unwrap().push((start, len));
            let r = self.inner.open_range(key, start, len)?;
            let mut cut = self.cut.lock().unwrap();
            if *cut > 0 && len > 2 {
                *cut -= 1;
                // Ends cleanly after half: the reader must notice and ask again.
                let keep = if self.keep_none { 0 } else { len / 2 };
                return Ok(Box::new(r.take(keep)));
            }
            Ok(r)
        }
        fn head(&self, key: &str) -> Result<Option<u64>> {
            self.inner.head(key)
        }
        fn list(&self, prefix: &str) -> Result<crate::store::Listing> {
            self.inner.list(prefix)
        }
        fn delete(&self, key: &str) -> Result<()> {
            self.inner.delete(key)
        }
        fn stats(&self) -> &Stats {
            self.inner.stats()
        }
    }

    type Blob = (String, u64, Vec<(ChunkId, Location)>);

    fn blob_of(dir: &Path, store: &dyn Store, id: &x25519::Identity, chunks: &[Vec<u8>]) -> Blob {
        let mut w = BlobWriter::create(dir, &[id.to_public()]).unwrap();
        for c in chunks {
            let frame = zstd::bulk::compress(c, 1).unwrap();
            w.add(ChunkId::of(c), &frame, c.len() as u64).unwrap();
        }
        let done = w.finish().unwrap();
        store
            .put_file(&done.key, done.file.temp.path(), Default::default())
            .unwrap();
        (done.key, done.file.size, done.entries)
    }

    fn setup(
        cut: u32,
        keep_none: bool,
    ) -> (
        tempfile::TempDir,
        Cutting,
        x25519::Identity,
        Vec<Vec<u8>>,
        Blob,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Cutting {
            inner: LocalStore::open(&dir.path().join("store"), true).unwrap(),
            cut: Mutex::new(0),
            keep_none,
            opened: Mutex::new(Vec::new()),
        };
        let id = x25519::Identity::generate();
        let chunks: Vec<Vec<u8>> = (0..4)
            .map(|i| crate::chunk::tests::pseudo_random(300_000, i + 7))
            .collect();
        let blob = blob_of(dir.path(), &store, &id, &chunks);
        *store.cut.lock().unwrap() = cut;
        (dir, store, id, chunks, blob)
    }

    /// Read every chunk of `blob` through one planned range, checking each.
    fn read_all(store: &Cutting, id: &x25519::Identity, chunks: &[Vec<u8>], blob: &Blob) {
        let (key, size, entries) = blob;
        let mut r = BlobReader::open(store, key, *size, std::slice::from_ref(id)).unwrap();
        let last = entries.last().unwrap().1;
        r.plan_range(last.offset + last.length);
        for ((cid, loc), data) in entries.iter().zip(chunks) {
            assert_eq!(r.read_chunk(cid, loc).unwrap(), &data[..]);
        }
    }

    #[test]
    fn one_streamed_get_per_planned_range() {
        let (_dir, store, id, chunks, blob) = setup(0, false);
        let size = blob.1;
        read_all(&store, &id, &chunks, &blob);
        // The header, then the whole payload in one request.
        let opened = store.opened.lock().unwrap().clone();
        assert_eq!(opened.len(), 2, "{opened:?}");
        assert_eq!(opened[1].0 + opened[1].1, size);
    }

    /// A range in the middle of a blob is one request after the header's:
    /// the planned range ends where the chunk's encrypted bytes do.
    #[test]
    fn a_middle_range_is_one_request() {
        let (_dir, store, id, chunks, (key, size, entries)) = setup(0, false);
        let mut r = BlobReader::open(&store, &key, size, std::slice::from_ref(&id)).unwrap();
        for i in [1, 2] {
            let (cid, loc) = entries[i];
            store.opened.lock().unwrap().clear();
            r.plan_range(loc.offset + loc.length);
            assert_eq!(r.read_chunk(&cid, &loc).unwrap(), &chunks[i][..]);
            let opened = store.opened.lock().unwrap().clone();
            assert_eq!(opened.len(), 1, "chunk {i}: {opened:?}");
            assert!(opened[0].0 + opened[0].1 < size, "{opened:?}");
        }
    }

    #[test]
    fn answers_cut_short_are_asked_again_from_where_they_stopped() {
        let (_dir, store, id, chunks, blob) = setup(2, false);
        read_all(&store, &id, &chunks, &blob);
        let opened = store.opened.lock().unwrap().clone();
        // Each reopen starts past the previous start and ends at the same end.
        assert!(opened.len() >= 3, "{opened:?}");
        for w in opened.windows(2).skip(1) {
            assert!(
                w[1].0 > w[0].0 && w[1].0 + w[1].1 == w[0].0 + w[0].1,
                "{opened:?}"
            );
        }
    }

    #[test]
    fn answers_always_cut_short_fail_after_a_few_reopens() {
        let (_dir, store, id, _chunks, (key, size, entries)) = setup(0, true);
        let mut r = BlobReader::open(&store, &key, size, std::slice::from_ref(&id)).unwrap();
        *store.cut.lock().unwrap() = 100;
        let (cid, loc) = entries[3];
        r.plan_range(loc.offset + loc.length);
        let Err(e) = r.read_chunk(&cid, &loc) else {
            panic!("a read that never gets its bytes must fail")
        };
        let e = e.to_string();
        assert!(e.contains(&key) && e.contains("early"), "{e}");
        assert!(store.opened.lock().unwrap().len() < 10);
    }

    #[test]
    fn a_seek_downloads_from_the_chunk_not_the_start() {
        let (_dir, store, id, chunks, (key, size, entries)) = setup(0, false);
        let mut r = BlobReader::open(&store, &key, size, std::slice::from_ref(&id)).unwrap();
        let (cid, loc) = entries[3];
        r.plan_range(loc.offset + loc.length);
        assert_eq!(r.read_chunk(&cid, &loc).unwrap(), &chunks[3][..]);
        let opened = store.opened.lock().unwrap().clone();
        let fetched: u64 = opened.iter().map(|o| o.1).sum();
        assert!(
            fetched < loc.length + 2 * AGE_CHUNK_ENC + 8192,
            "{opened:?}"
        );
    }

    /// A blob gone from the store in the middle of a restore is said to be
    /// missing, as the store said it, not "damaged".
    #[test]
    fn a_store_failure_mid_read_is_not_called_damage() {
        let (dir, store, id, _chunks, (key, size, entries)) = setup(0, false);
        let mut r = BlobReader::open(&store, &key, size, std::slice::from_ref(&id)).unwrap();
        let path = dir.path().join("store").join(&key);
        assert!(path.is_file(), "{}", path.display());
        std::fs::remove_file(&path).unwrap();
        let (cid, loc) = entries[3];
        r.plan_range(loc.offset + loc.length);
        let Err(e) = r.read_chunk(&cid, &loc) else {
            panic!("a blob that is gone cannot be read")
        };
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        assert!(!e.to_string().contains("damaged"), "{e}");
    }
}
