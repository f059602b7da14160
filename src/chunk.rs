//! Content-defined chunking (FastCDC 2020) and chunk ids (SHA-256 of the
//! plaintext). Small files are read whole; large ones are streamed so memory
//! stays bounded by the maximum chunk size.

use std::fmt;
use std::io::Read;
use std::path::Path;

use fastcdc::v2020::FastCDC;
use sha2::{Digest, Sha256};

use crate::error::{IoContext, Result};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(Sha256::digest(data).into())
    }

    pub fn from_slice(b: &[u8]) -> Option<ChunkId> {
        b.try_into().ok().map(ChunkId)
    }

    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Chunk size limits derived from the configured average: a quarter of it
/// as the minimum (so small edits re-sync quickly) and four times it as the
/// maximum (so a run of identical bytes still gets cut), within FastCDC's
/// bounds.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

impl Params {
    pub fn new(avg: u64) -> Params {
        let avg = (avg as usize).clamp(fastcdc::v2020::AVERAGE_MIN, fastcdc::v2020::AVERAGE_MAX);
        Params {
            min: (avg / 4).clamp(fastcdc::v2020::MINIMUM_MIN, fastcdc::v2020::MINIMUM_MAX),
            avg,
            max: (avg * 4).clamp(fastcdc::v2020::MAXIMUM_MIN, fastcdc::v2020::MAXIMUM_MAX),
        }
    }

    /// Files up to this size are read into memory whole and cut there.
    pub fn whole_file_limit(&self) -> u64 {
        self.max as u64
    }
}

/// Split `reader` (the file at `path`) into chunks, calling `sink` with each
/// one in order; returns the number of bytes read. `size_hint` is the size
/// from stat and only chooses the strategy.
pub fn split<R: Read>(
    mut reader: R,
    path: &Path,
    size_hint: u64,
    p: Params,
    buf: &mut Vec<u8>,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    if size_hint <= p.whole_file_limit() {
        buf.clear();
        // Room for what stat said (no doubling past the limit); read one
        // byte more than the limit to notice a file that grew.
        buf.reserve(size_hint as usize + 1);
        reader
            .by_ref()
            .take(p.whole_file_limit() + 1)
            .read_to_end(buf)
            .at("read", path)?;
        if buf.len() as u64 <= p.whole_file_limit() {
            let data = &buf[..];
            if data.len() <= p.min {
                if !data.is_empty() {
                    sink(data)?;
                }
                return Ok(data.len() as u64);
            }
            for c in FastCDC::new(data, p.min, p.avg, p.max) {
                sink(&data[c.offset..c.offset + c.length])?;
            }
            return Ok(data.len() as u64);
        }
        // The file grew past the in-memory limit while we read it: stream
        // the rest, starting with what is already in the buffer.
        let filled = buf.len();
        return stream(reader, path, p, buf, filled, sink);
    }
    buf.clear();
    stream(reader, path, p, buf, 0, sink)
}

/// Cut a file too big to hold whole, through `buf` (the caller's, reused
/// from file to file: `max` bytes, the most FastCDC looks ahead), of which
/// the first `filled` bytes are already read. A chunk is passed on once
/// its end is certain: a cut before the end of the buffered data, a cut at
/// `max`, or the end of the file; the tail is moved to the front and the
/// buffer filled again. The cuts are those of FastCDC over the whole file.
fn stream<R: Read>(
    mut reader: R,
    path: &Path,
    p: Params,
    buf: &mut Vec<u8>,
    mut filled: usize,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let cap = p.max.max(filled);
    buf.resize(cap, 0);
    let mut total = 0u64;
    let mut eof = false;
    loop {
        while !eof && filled < cap {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => eof = true,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).at("read", path),
            }
        }
        let data = &buf[..filled];
        let mut used = 0;
        if eof && filled <= p.min {
            if filled > 0 {
                sink(data)?;
            }
            used = filled;
        } else {
            for c in FastCDC::new(data, p.min, p.avg, p.max) {
                let end = c.offset + c.length;
                // Cut only because the buffered data ends here: wait for more.
                if !eof && end == filled && c.length < p.max {
                    break;
                }
                sink(&data[c.offset..end])?;
                used = end;
            }
        }
        total += used as u64;
        if eof && used == filled {
            return Ok(total);
        }
        buf.copy_within(used..filled, 0);
        filled -= used;
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Deterministic incompressible bytes, for tests.
    pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        crate::testhook::Rng::new(seed).bytes(n)
    }

    fn chunks_of(data: &[u8], p: Params) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        split(data, Path::new("t"), data.len() as u64, p, &mut buf, |c| {
            out.push(c.to_vec());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn concatenated_chunks_are_the_input() {
        let p = Params::new(16 * 1024);
        for (n, seed) in [(0, 1), (10, 2), (5000, 3), (100_000, 4), (1_000_000, 5)] {
            let data = pseudo_random(n, seed);
            let chunks = chunks_of(&data, p);
            assert_eq!(chunks.concat(), data, "size {n}");
            assert!(chunks.iter().all(|c| c.len() <= p.max));
        }
    }

    #[test]
    fn whole_and_streamed_paths_cut_identically() {
        let p = Params::new(4096);
        let data = pseudo_random(200_000, 9);
        let whole = chunks_of(&data, p);
        let mut streamed = Vec::new();
        // A large size hint forces the streaming path.
        let mut buf = Vec::new();
        split(&data[..], Path::new("t"), u64::MAX, p, &mut buf, |c| {
            streamed.push(c.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(whole, streamed);
    }

    /// Hands out at most `step` bytes per read (and sometimes none with
    /// `Interrupted`), like a pipe or a slow disk.
    struct Trickle<'a>(&'a [u8], usize, u32);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.2 += 1;
            if self.2 % 7 == 0 {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn streaming_in_small_reads_and_growing_files_cut_identically() {
        let p = Params::new(4096);
        for (n, seed) in [(0, 1), (100, 2), (p.max, 3), (p.max + 1, 4), (300_000, 5)] {
            let mut data = pseudo_random(n, seed);
            // Runs of zeros force cuts at the maximum size.
            if n > 100_000 {
                data[50_000..120_000].fill(0);
            }
            let whole = chunks_of(&data, p);
            for step in [1000, 4093, 70_000] {
                for hint in [u64::MAX, 0] {
                    // hint 0: read whole, then found to have grown.
                    let mut got = Vec::new();
                    let mut buf = Vec::new();
                    let read = split(
                        Trickle(&data, step, 0),
                        Path::new("t"),
                        hint,
                        p,
                        &mut buf,
                        |c| {
                            got.push(c.to_vec());
                            Ok(())
                        },
                    )
                    .unwrap();
                    assert_eq!(read, n as u64);
                    assert_eq!(whole, got, "size {n}, reads of {step}, hint {hint}");
                }
            }
        }
    }

    #[test]
    fn an_edit_changes_few_chunks() {
        let p = Params::new(8192);
        let mut data = pseudo_random(500_000, 7);
        let before: std::collections::HashSet<_> =
            chunks_of(&data, p).iter().map(|c| ChunkId::of(c)).collect();
        data[250_000] ^= 0xff;
        let after: Vec<_> = chunks_of(&data, p).iter().map(|c| ChunkId::of(c)).collect();
        let new = after.iter().filter(|c| !before.contains(c)).count();
        assert!(new <= 2, "{new} new chunks after a one-byte edit");
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
