//! Content-defined chunking (FastCDC 2020), chunk ids (SHA-256 of the
//! plaintext) and chunk lists. Small files are read whole; large ones are
//! streamed so memory stays bounded by the maximum chunk size. A regular
//! file is read by its data (`SEEK_DATA`/`SEEK_HOLE`): its holes become hole
//! records in its chunk list, so what a file costs follows its allocated
//! blocks, not its size.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use fastcdc::v2020::FastCDC;
use rustix::fs::SeekFrom;
use rustix::io::Errno;
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

/// One record of a chunk list. A file's chunk list (`entries.chunks` in a
/// snapshot's metadata, the index's per-file cache) is a concatenation of
/// 32-byte records, each a chunk id or a hole: 24 zero bytes, then the
/// hole's length (u64, little-endian). No SHA-256 starts with 192 zero
/// bits. Forged lists may hold any hole length: never add them up without
/// `checked_add`, never allocate by them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    Chunk(ChunkId),
    /// This many bytes of zeros, stored as nothing.
    Hole(u64),
}

/// The length of a chunk list record.
pub const RECORD: usize = 32;

/// What starts a hole record.
const HOLE_MARK: [u8; 24] = [0; 24];

/// The record of a hole of `len` bytes (more than 0).
pub fn hole_record(len: u64) -> [u8; RECORD] {
    debug_assert!(len > 0, "an empty hole is no record");
    let mut r = [0u8; RECORD];
    r[24..].copy_from_slice(&len.to_le_bytes());
    r
}

/// The records of chunk list `list`, in order. Its length must be a
/// multiple of `RECORD` (callers check: a list of another length is
/// malformed); a partial record at the end is left out.
pub fn pieces(list: &[u8]) -> impl Iterator<Item = Piece> + '_ {
    list.chunks_exact(RECORD).map(|r| {
        let (mark, len) = r.split_at(24);
        if mark == HOLE_MARK {
            Piece::Hole(u64::from_le_bytes(
                len.try_into().expect("8 bytes after 24 of 32"),
            ))
        } else {
            Piece::Chunk(ChunkId::from_slice(r).expect("chunks_exact(32)"))
        }
    })
}

/// The chunk ids of `list`, in order, holes left out.
pub fn chunk_ids(list: &[u8]) -> impl Iterator<Item = ChunkId> + '_ {
    pieces(list).filter_map(|p| match p {
        Piece::Chunk(id) => Some(id),
        Piece::Hole(_) => None,
    })
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

/// Holes shorter than this are read as data (zeros), so that ordinary
/// files (a few sparse blocks here and there) chunk as they always did and
/// lists do not fill with tiny holes; longer ones become hole records.
pub const HOLE_MIN: u64 = 64 << 10;

/// What a regular file is cut into, in order.
#[derive(Debug)]
pub enum Cut<'a> {
    /// A chunk of data.
    Data(&'a [u8]),
    /// A hole of this many bytes (at least `HOLE_MIN`), read as nothing.
    Hole(u64),
}

/// Cut the regular file `file` (at `path`) by its data, calling `sink`
/// with each chunk and each hole in order; returns the bytes it covers
/// (data and holes). It is read to at most `limit` bytes, its size when
/// opened: a file that grows while it is read is cut there (the caller
/// notices, and the next run reads the rest). A file that shrinks ends
/// where its data ends.
///
/// The data segments are found with `SEEK_DATA`/`SEEK_HOLE`; each is cut
/// by FastCDC on its own (the chunker starts again after a hole), so a
/// 16 TiB file of a few data blocks costs a few reads. A file system that
/// cannot tell (`EINVAL`, `EOPNOTSUPP`) has its files read whole, as
/// data. So is a file whose `allocated` bytes (its stat's blocks) leave
/// no room for a hole of `HOLE_MIN`: nearly every file, whose map is then
/// not asked for (two system calls a file saved).
pub fn split_file(
    file: &File,
    path: &Path,
    limit: u64,
    allocated: u64,
    p: Params,
    buf: &mut Vec<u8>,
    mut sink: impl FnMut(Cut<'_>) -> Result<()>,
) -> Result<u64> {
    let may_have_holes = allocated.saturating_add(HOLE_MIN) <= limit;
    split_by_map(file, path, limit, p, buf, may_have_holes, &mut sink)
}

/// `split_file`, with `seekable` false as on a file system that cannot
/// find holes.
fn split_by_map(
    file: &File,
    path: &Path,
    limit: u64,
    p: Params,
    buf: &mut Vec<u8>,
    seekable: bool,
    mut sink: impl FnMut(Cut<'_>) -> Result<()>,
) -> Result<u64> {
    let mut map = DataMap {
        file,
        path,
        seekable,
    };
    // Data in [start, pos) is not cut yet: it is read once a long hole (or
    // the end) follows it, short holes in it included.
    let (mut start, mut pos, mut end) = (0u64, 0u64, limit);
    while pos < end {
        // [pos, data) is a hole.
        let data = match map.data_from(pos)? {
            Some(d) => d.min(end),
            // No data from here on: a hole to the end, or the file shrank
            // (to no less than what was already found).
            None => {
                end = map.size_now()?.clamp(pos, end);
                end
            }
        };
        if data - pos >= HOLE_MIN {
            if let Some(short) = read_segment(file, path, start, pos, p, buf, &mut sink)? {
                return Ok(short);
            }
            sink(Cut::Hole(data - pos))?;
            start = data;
        }
        if data >= end {
            break;
        }
        pos = map.hole_from(data, end)?;
    }
    match read_segment(file, path, start, end, p, buf, &mut sink)? {
        Some(short) => Ok(short),
        None => Ok(end),
    }
}

/// Cut the data in `[from, to)` of `file`; None when it was all there,
/// else where the file ended (it shrank).
fn read_segment(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
    p: Params,
    buf: &mut Vec<u8>,
    sink: &mut impl FnMut(Cut<'_>) -> Result<()>,
) -> Result<Option<u64>> {
    if from >= to {
        return Ok(None);
    }
    let reader = Segment {
        file,
        at: from,
        end: to,
    };
    let got = split(reader, path, to - from, p, buf, |d| sink(Cut::Data(d)))?;
    Ok((got < to - from).then_some(from + got))
}

/// Reads `[at, end)` of a file with `pread` (the file offset is the
/// data map's).
struct Segment<'f> {
    file: &'f File,
    at: u64,
    end: u64,
}

impl Read for Segment<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let room = usize::try_from(self.end - self.at).unwrap_or(usize::MAX);
        let n = out.len().min(room);
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut out[..n], self.at)?;
        self.at += got as u64;
        Ok(got)
    }
}

/// Where a file's data is, by `lseek(SEEK_DATA/SEEK_HOLE)`; all of it is
/// data where the file system cannot tell.
struct DataMap<'f> {
    file: &'f File,
    path: &'f Path,
    seekable: bool,
}

impl DataMap<'_> {
    /// Whether `e` means the file system cannot find holes (then the whole
    /// file is read as data).
    fn unsupported(e: Errno) -> bool {
        matches!(e, Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS)
    }

    /// Where the first data at or after `pos` is; None if there is none
    /// (ENXIO: the rest of the file is a hole, or `pos` is past its end).
    fn data_from(&mut self, pos: u64) -> Result<Option<u64>> {
        if !self.seekable {
            return Ok(Some(pos));
        }
        match rustix::fs::seek(self.file, SeekFrom::Data(pos)) {
            Ok(d) => Ok(Some(d.max(pos))),
            Err(Errno::NXIO) => Ok(None),
            Err(e) if Self::unsupported(e) => {
                self.seekable = false;
                Ok(Some(pos))
            }
            Err(e) => Err(std::io::Error::from(e)).at("find the data of", self.path),
        }
    }

    /// Where the first hole after data at `data` (below `end`) is, at most
    /// `end` (every file ends in an implicit hole; ENXIO: it shrank below
    /// `data`, which reading finds).
    fn hole_from(&mut self, data: u64, end: u64) -> Result<u64> {
        if !self.seekable {
            return Ok(end);
        }
        match rustix::fs::seek(self.file, SeekFrom::Hole(data)) {
            // The hole is after the data found (a file rewritten meanwhile
            // may say otherwise: never go back).
            Ok(h) => Ok(h.clamp(data + 1, end)),
            Err(Errno::NXIO) => Ok(end),
            Err(e) if Self::unsupported(e) => {
                self.seekable = false;
                Ok(end)
            }
            Err(e) => Err(std::io::Error::from(e)).at("find the holes of", self.path),
        }
    }

    /// The file's size now.
    fn size_now(&self) -> Result<u64> {
        let st = rustix::fs::fstat(self.file)
            .map_err(std::io::Error::from)
            .at("stat", self.path)?;
        Ok(u64::try_from(st.st_size).unwrap_or(0))
    }
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

    /// What `split_file` made of a file: data chunks at their offsets and
    /// holes, and the bytes covered.
    fn cuts_of(f: &File, limit: u64, p: Params, seekable: bool) -> (Vec<(u64, Cut2)>, u64) {
        let mut out = Vec::new();
        let mut at = 0u64;
        let mut buf = Vec::new();
        let total = split_by_map(f, Path::new("t"), limit, p, &mut buf, seekable, |c| {
            let len = match &c {
                Cut::Data(d) => d.len() as u64,
                Cut::Hole(n) => *n,
            };
            out.push((at, Cut2::from(c)));
            at += len;
            Ok(())
        })
        .unwrap();
        assert_eq!(at, total, "the cuts add up to what was covered");
        (out, total)
    }

    /// An owned `Cut`.
    #[derive(Debug, PartialEq)]
    enum Cut2 {
        Data(Vec<u8>),
        Hole(u64),
    }

    impl From<Cut<'_>> for Cut2 {
        fn from(c: Cut<'_>) -> Cut2 {
            match c {
                Cut::Data(d) => Cut2::Data(d.to_vec()),
                Cut::Hole(n) => Cut2::Hole(n),
            }
        }
    }

    /// A file of `size` bytes with `parts` (offset, bytes) written into it,
    /// holes elsewhere.
    fn sparse_file(size: u64, parts: &[(u64, &[u8])]) -> File {
        let f = tempfile::tempfile().unwrap();
        f.set_len(size).unwrap();
        for (at, data) in parts {
            f.write_all_at(data, *at).unwrap();
        }
        f
    }

    /// Only a file whose blocks leave room for a hole has its map asked
    /// for: a file as allocated as it is long is read as plain data.
    #[test]
    fn the_map_is_asked_for_only_when_blocks_are_missing() {
        use std::os::unix::fs::MetadataExt;
        let p = Params::new(16 * 1024);
        let size = 8 << 20;
        let f = sparse_file(size, &[(0, &pseudo_random(4096, 1))]);
        let count_holes = |allocated: u64| {
            let mut holes = 0;
            let mut buf = Vec::new();
            let total = split_file(&f, Path::new("t"), size, allocated, p, &mut buf, |c| {
                holes += matches!(c, Cut::Hole(_)) as usize;
                Ok(())
            })
            .unwrap();
            assert_eq!(total, size);
            holes
        };
        let allocated = f.metadata().unwrap().blocks() * 512;
        assert_eq!(count_holes(allocated), 1);
        assert_eq!(count_holes(size), 0, "taken as fully allocated: no map");
        assert_eq!(count_holes(size - HOLE_MIN + 1), 0);
        assert_eq!(count_holes(size - HOLE_MIN), 1);
    }

    #[test]
    fn sparse_files_are_read_by_their_data() {
        let p = Params::new(16 * 1024);
        let (a, b, c) = (
            pseudo_random(100 << 10, 1),
            pseudo_random(300 << 10, 2),
            pseudo_random(52 << 10, 3),
        );
        let size = 64 << 20;
        let at_c = size - c.len() as u64;
        let f = sparse_file(size, &[(0, &a), (10 << 20, &b), (at_c, &c)]);
        let (cuts, total) = cuts_of(&f, size, p, true);
        assert_eq!(total, size);
        // Each data segment is cut as the same bytes alone would be (the
        // chunker starts again after a hole), and the holes lie between.
        let mut want: Vec<(u64, Cut2)> = Vec::new();
        let data = |at: u64, bytes: &[u8], want: &mut Vec<(u64, Cut2)>| {
            let mut off = at;
            for ch in chunks_of(bytes, p) {
                let n = ch.len() as u64;
                want.push((off, Cut2::Data(ch)));
                off += n;
            }
        };
        data(0, &a, &mut want);
        want.push((a.len() as u64, Cut2::Hole((10 << 20) - a.len() as u64)));
        data(10 << 20, &b, &mut want);
        let after_b = (10 << 20) + b.len() as u64;
        want.push((after_b, Cut2::Hole(at_c - after_b)));
        data(at_c, &c, &mut want);
        assert!(cuts == want, "{:?}", summary(&cuts));
        // A file system that cannot find holes: all of it is data, cut as
        // before.
        let (cuts, total) = cuts_of(&f, size, p, false);
        assert_eq!(total, size);
        let mut whole = vec![0u8; size as usize];
        whole[..a.len()].copy_from_slice(&a);
        whole[10 << 20..after_b as usize].copy_from_slice(&b);
        whole[at_c as usize..].copy_from_slice(&c);
        let got: Vec<Vec<u8>> = cuts
            .into_iter()
            .map(|(_, c)| match c {
                Cut2::Data(d) => d,
                Cut2::Hole(n) => panic!("a hole of {n} without SEEK_HOLE"),
            })
            .collect();
        assert!(got == chunks_of(&whole, p));
    }

    /// Offsets and lengths of cuts, for messages.
    fn summary(cuts: &[(u64, Cut2)]) -> Vec<String> {
        cuts.iter()
            .map(|(at, c)| match c {
                Cut2::Data(d) => format!("{at}: data {}", d.len()),
                Cut2::Hole(n) => format!("{at}: hole {n}"),
            })
            .collect()
    }

    #[test]
    fn holes_at_the_ends_and_a_file_of_holes() {
        let p = Params::new(16 * 1024);
        let d = pseudo_random(40 << 10, 4);
        let f = sparse_file(4 << 20, &[(1 << 20, &d)]);
        let (cuts, total) = cuts_of(&f, 4 << 20, p, true);
        assert_eq!(total, 4 << 20);
        assert_eq!(cuts.first().unwrap(), &(0, Cut2::Hole(1 << 20)));
        assert_eq!(
            cuts.last().unwrap(),
            &(
                (1 << 20) + d.len() as u64,
                Cut2::Hole((3 << 20) - d.len() as u64)
            )
        );
        // Nothing but a hole, and the empty file.
        let f = sparse_file(1 << 40, &[]);
        let (cuts, total) = cuts_of(&f, 1 << 40, p, true);
        assert_eq!((cuts, total), (vec![(0, Cut2::Hole(1 << 40))], 1 << 40));
        let f = sparse_file(0, &[]);
        assert_eq!(cuts_of(&f, 0, p, true), (vec![], 0));
    }

    #[test]
    fn short_holes_are_read_as_zeros() {
        let p = Params::new(4096);
        let (a, b) = (pseudo_random(8 << 10, 5), pseudo_random(200 << 10, 6));
        // A hole of 32 KiB between them and one of 60 KiB at the end: both
        // shorter than HOLE_MIN.
        let size = (40 << 10) + b.len() as u64 + (60 << 10);
        let f = sparse_file(size, &[(0, &a), (40 << 10, &b)]);
        let (cuts, total) = cuts_of(&f, size, p, true);
        assert_eq!(total, size);
        let mut whole = vec![0u8; size as usize];
        whole[..a.len()].copy_from_slice(&a);
        whole[40 << 10..(40 << 10) + b.len()].copy_from_slice(&b);
        let got: Vec<Vec<u8>> = cuts
            .into_iter()
            .map(|(_, c)| match c {
                Cut2::Data(d) => d,
                Cut2::Hole(n) => panic!("a hole of {n}, shorter than HOLE_MIN"),
            })
            .collect();
        assert!(
            got == chunks_of(&whole, p),
            "cut as the same bytes without holes"
        );
    }

    #[test]
    fn a_file_is_read_to_its_size_when_opened() {
        let p = Params::new(4096);
        let before = pseudo_random(300 << 10, 7);
        let f = sparse_file(0, &[(0, &before)]);
        // It grows after it was opened (and its size taken): what was
        // there is read, the rest left for the next run.
        f.write_all_at(&pseudo_random(100 << 10, 8), before.len() as u64)
            .unwrap();
        f.set_len(1 << 30).unwrap();
        let (cuts, total) = cuts_of(&f, before.len() as u64, p, true);
        assert_eq!(total, before.len() as u64);
        let got: Vec<Vec<u8>> = cuts
            .into_iter()
            .map(|(_, c)| match c {
                Cut2::Data(d) => d,
                Cut2::Hole(n) => panic!("a hole of {n}"),
            })
            .collect();
        assert!(got == chunks_of(&before, p));
        // Small files too, without holes found.
        let (_, total) = cuts_of(&f, 1000, p, false);
        assert_eq!(total, 1000);
        // One that shrank ends where its data ends, holes or not.
        let f = sparse_file(0, &[(0, &before)]);
        for seekable in [true, false] {
            let (_, total) = cuts_of(&f, 10 << 20, p, seekable);
            assert_eq!(total, before.len() as u64, "seekable: {seekable}");
        }
        let f = sparse_file(200 << 10, &[(0, &before[..1000])]);
        let (cuts, total) = cuts_of(&f, 10 << 20, p, true);
        assert_eq!(total, 200 << 10, "{:?}", summary(&cuts));
    }

    #[test]
    fn chunk_lists_hold_ids_and_holes() {
        let (a, b) = (ChunkId::of(b"a"), ChunkId::of(b"b"));
        let mut list = a.0.to_vec();
        list.extend_from_slice(&hole_record(1));
        list.extend_from_slice(&b.0);
        list.extend_from_slice(&hole_record(u64::MAX));
        let got: Vec<Piece> = pieces(&list).collect();
        assert_eq!(
            got,
            [
                Piece::Chunk(a),
                Piece::Hole(1),
                Piece::Chunk(b),
                Piece::Hole(u64::MAX)
            ]
        );
        assert_eq!(chunk_ids(&list).collect::<Vec<_>>(), [a, b]);
        // An id is never read as a hole: only 24 zero bytes make one.
        let mut id = [0u8; 32];
        id[23] = 1;
        assert_eq!(pieces(&id).collect::<Vec<_>>(), [Piece::Chunk(ChunkId(id))]);
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
