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

use crate::chunk::{ChunkId, hex};
use crate::error::{Error, IoContext, Result};
use crate::keys;
use crate::store::Store;

/// age's plaintext chunk, and its size on the wire with the 16-byte tag.
const AGE_CHUNK: u64 = 64 * 1024;
const AGE_CHUNK_ENC: u64 = AGE_CHUNK + 16;
/// The most one ranged GET asks for (and one reader buffers).
const MAX_READAHEAD: u64 = 2 << 20;

/// Where one chunk lives inside a blob's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub offset: u64,
    /// Length of the compressed frame.
    pub length: u64,
    /// Length of the chunk's plaintext.
    pub size: u64,
}

pub fn blob_key(hash: &[u8; 32]) -> String {
    let h = hex(hash);
    format!("blobs/{}/{}/{h}", &h[0..2], &h[2..4])
}

/// Create `dir` (mode 0700) if needed.
pub fn private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .at("create directory", dir)
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
            .map_err(|e| Error::Setup(format!("cannot encrypt: {e}")))?;
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
    pub fn len(&self) -> u64 {
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
        let offset = self.seal.len();
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
        self.seal.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn finish(self) -> Result<FinishedBlob> {
        let file = self.seal.finish()?;
        Ok(FinishedBlob {
            key: blob_key(&file.hash),
            file,
            entries: self.entries,
        })
    }
}

/// `Read + Seek` over a stored object, fetching `readahead` bytes per ranged
/// GET so that a seek into a large blob downloads only what is read.
pub struct RangedObject<'a> {
    store: &'a dyn Store,
    key: String,
    size: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
    /// Shared with the `BlobReader` that owns this object through age.
    window: Rc<Cell<Window>>,
}

/// How much one ranged GET fetches: `readahead` bytes, but never past
/// `end` (the end of the range the reader planned), and where the reader is.
#[derive(Debug, Clone, Copy)]
struct Window {
    readahead: u64,
    end: u64,
    pos: u64,
}

impl<'a> RangedObject<'a> {
    pub fn new(store: &'a dyn Store, key: &str, size: u64) -> RangedObject<'a> {
        RangedObject {
            store,
            key: key.to_string(),
            size,
            pos: 0,
            buf: Vec::new(),
            buf_start: 0,
            window: Rc::new(Cell::new(Window {
                readahead: AGE_CHUNK_ENC,
                end: u64::MAX,
                pos: 0,
            })),
        }
    }
}

impl RangedObject<'_> {
    fn note_pos(&self) {
        let mut w = self.window.get();
        w.pos = self.pos;
        self.window.set(w);
    }
}

impl Read for RangedObject<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let buf_end = self.buf_start + self.buf.len() as u64;
        if self.pos < self.buf_start || self.pos >= buf_end {
            let w = self.window.get();
            let until = w.end.max(self.pos + AGE_CHUNK_ENC).min(self.size);
            let len = w.readahead.min(until - self.pos).max(1);
            self.buf = self
                .store
                .get_range(&self.key, self.pos, len)
                .map_err(io::Error::other)?;
            self.buf_start = self.pos;
        }
        let at = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf.len() - at);
        out[..n].copy_from_slice(&self.buf[at..at + n]);
        self.pos += n as u64;
        self.note_pos();
        Ok(n)
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
    stream: age::stream::StreamReader<RangedObject<'a>>,
    window: Rc<Cell<Window>>,
    /// Ciphertext bytes before the first payload chunk (the age header).
    header_len: u64,
}

impl<'a> BlobReader<'a> {
    pub fn open(
        store: &'a dyn Store,
        key: &str,
        size: u64,
        identities: &[x25519::Identity],
    ) -> Result<BlobReader<'a>> {
        let obj = RangedObject::new(store, key, size);
        let window = obj.window.clone();
        // The header is a few hundred bytes per recipient.
        window.set(Window {
            readahead: 8 << 10,
            end: u64::MAX,
            pos: 0,
        });
        let dec = age::Decryptor::new(obj).map_err(|e| decrypt_error(key, e))?;
        let stream = dec
            .decrypt(keys::as_identities(identities))
            .map_err(|e| decrypt_error(key, e))?;
        // The header parser never reads ahead: where it stopped is where
        // the payload starts.
        let header_len = window.get().pos;
        Ok(BlobReader {
            key: key.to_string(),
            stream,
            window,
            header_len,
        })
    }

    /// Read the frame at `loc` and return the chunk's plaintext, checked
    /// against `id`.
    pub fn read_chunk(&mut self, id: &ChunkId, loc: &Location) -> Result<Vec<u8>> {
        let pos = self.stream.stream_position().map_err(|e| self.corrupt(e))?;
        if pos != loc.offset {
            self.stream
                .seek(SeekFrom::Start(loc.offset))
                .map_err(|e| self.corrupt(e))?;
        }
        let mut frame = vec![0; loc.length as usize];
        self.stream
            .read_exact(&mut frame)
            .map_err(|e| self.corrupt(format!("chunk at {}: {e}", loc.offset)))?;
        let data = DECOMPRESSOR
            .with_borrow_mut(|d| {
                let d = match d {
                    Some(d) => d,
                    None => d.insert(zstd::bulk::Decompressor::new()?),
                };
                d.decompress(&frame, loc.size as usize)
            })
            .map_err(|e| self.corrupt(format!("chunk at {}: {e}", loc.offset)))?;
        if data.len() as u64 != loc.size || ChunkId::of(&data) != *id {
            return Err(self.corrupt(format!(
                "chunk {} at {} fails its SHA-256 check",
                id.hex(),
                loc.offset
            )));
        }
        Ok(data)
    }

    /// Prepare to read the plaintext range `[start, end)` with as few GETs as
    /// memory allows.
    pub fn plan_range(&mut self, start: u64, end: u64) {
        let first = start / AGE_CHUNK;
        let last = end.div_ceil(AGE_CHUNK);
        let bytes = (last - first + 1) * AGE_CHUNK_ENC;
        let mut w = self.window.get();
        w.readahead = bytes.clamp(AGE_CHUNK_ENC, MAX_READAHEAD);
        w.end = self.header_len + last * AGE_CHUNK_ENC;
        self.window.set(w);
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> Error {
        Error::corrupt(format!("blob {}", self.key), e)
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

/// A reader of the plaintext of an encrypted object held in memory.
pub fn open_sealed_reader<'a>(
    key: &str,
    data: &'a [u8],
    identities: &[x25519::Identity],
) -> Result<impl Read + 'a> {
    let dec = age::Decryptor::new_buffered(data).map_err(|e| decrypt_error(key, e))?;
    dec.decrypt(keys::as_identities(identities))
        .map_err(|e| decrypt_error(key, e))
}
