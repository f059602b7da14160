//! Every chunk id a snapshot references, sorted and without repeats, in
//! bounded memory (for the snapshot's chunk table, which the index fills
//! in key order): ids are gathered `RUN` at a time, each run sorted,
//! deduplicated and written to a file in the run's private temporary
//! directory, and the runs merged as they are read back. A snapshot of a
//! million single-chunk files held its 32 MB of ids in memory before.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::blob::TempFile;
use crate::chunk::ChunkId;
use crate::error::{Error, IoContext, Result};

/// Ids sorted in memory at a time: 8 MiB.
const RUN: usize = 256 * 1024;
/// Read buffer per run while merging.
const READ_BUF: usize = 64 << 10;

/// Gathers ids, then gives them back sorted and unique.
pub struct Sorter<'d> {
    dir: &'d Path,
    buf: Vec<ChunkId>,
    runs: Vec<TempFile>,
}

impl<'d> Sorter<'d> {
    pub fn new(dir: &'d Path) -> Sorter<'d> {
        Sorter {
            dir,
            buf: Vec::new(),
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, id: ChunkId) -> Result<()> {
        self.buf.push(id);
        if self.buf.len() >= RUN {
            self.spill()?;
        }
        Ok(())
    }

    /// Write the ids gathered so far as one sorted run.
    fn spill(&mut self) -> Result<()> {
        self.buf.sort_unstable();
        self.buf.dedup();
        let (tmp, file) = TempFile::create(self.dir, "ids")?;
        let mut w = BufWriter::new(file);
        for id in &self.buf {
            w.write_all(&id.0).at("write", tmp.path())?;
        }
        w.flush().at("write", tmp.path())?;
        self.runs.push(tmp);
        self.buf.clear();
        Ok(())
    }

    /// Every id pushed, sorted, each once.
    pub fn sorted(mut self) -> Result<Sorted> {
        if self.runs.is_empty() {
            self.buf.sort_unstable();
            self.buf.dedup();
            return Ok(Sorted::Memory(std::mem::take(&mut self.buf), 0));
        }
        if !self.buf.is_empty() {
            self.spill()?;
        }
        let mut sorted = Sorted::Merge {
            runs: std::mem::take(&mut self.runs),
            readers: Vec::new(),
            heap: BinaryHeap::new(),
            last: None,
        };
        sorted.rewind()?;
        Ok(sorted)
    }
}

/// Reads one 32-byte id; None at the end of the run.
fn next_id(r: &mut impl Read, path: &Path) -> Result<Option<ChunkId>> {
    let mut id = [0u8; 32];
    let mut got = 0;
    while got < 32 {
        match r.read(&mut id[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(Error::corrupt(
                    path.display().to_string(),
                    "a run of chunk ids ends within an id",
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).at("read", path),
        }
    }
    Ok(Some(ChunkId(id)))
}

/// The ids in order: from memory, or merged from the runs on disk (which
/// are removed when this is dropped).
pub enum Sorted {
    /// The ids, and how many were handed out.
    Memory(Vec<ChunkId>, usize),
    Merge {
        runs: Vec<TempFile>,
        readers: Vec<BufReader<File>>,
        heap: BinaryHeap<Reverse<(ChunkId, usize)>>,
        last: Option<ChunkId>,
    },
}

impl Sorted {
    /// Start again from the first id.
    pub fn rewind(&mut self) -> Result<()> {
        match self {
            Sorted::Memory(_, at) => *at = 0,
            Sorted::Merge {
                runs,
                readers,
                heap,
                last,
            } => {
                readers.clear();
                heap.clear();
                *last = None;
                for (i, run) in runs.iter().enumerate() {
                    let f = File::open(run.path()).at("open", run.path())?;
                    let mut r = BufReader::with_capacity(READ_BUF, f);
                    if let Some(id) = next_id(&mut r, run.path())? {
                        heap.push(Reverse((id, i)));
                    }
                    readers.push(r);
                }
            }
        }
        Ok(())
    }
}

impl Iterator for Sorted {
    type Item = Result<ChunkId>;

    fn next(&mut self) -> Option<Result<ChunkId>> {
        match self {
            Sorted::Memory(ids, at) => {
                let id = ids.get(*at).copied()?;
                *at += 1;
                Some(Ok(id))
            }
            Sorted::Merge {
                runs,
                readers,
                heap,
                last,
            } => loop {
                let Reverse((id, i)) = heap.pop()?;
                match next_id(&mut readers[i], runs[i].path()) {
                    Ok(Some(next)) => heap.push(Reverse((next, i))),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
                // Runs are unique each, but an id may be in several.
                if *last != Some(id) {
                    *last = Some(id);
                    return Some(Ok(id));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_back_sorted_and_once_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = crate::testhook::Rng::new(7);
        let mut all = Vec::new();
        let mut s = Sorter::new(dir.path());
        // Two and a half runs, a third of them repeats.
        for i in 0..(RUN * 5 / 2) {
            let id = if i % 3 == 0 && !all.is_empty() {
                all[(rng.next() as usize) % all.len()]
            } else {
                let mut b = [0u8; 32];
                b.copy_from_slice(&rng.bytes(32));
                ChunkId(b)
            };
            all.push(id);
            s.push(id).unwrap();
        }
        assert_eq!(s.runs.len(), 2);
        let mut sorted = s.sorted().unwrap();
        let got: Vec<ChunkId> = sorted.by_ref().map(Result::unwrap).collect();
        all.sort_unstable();
        all.dedup();
        assert!(got == all, "{} ids, {} wanted", got.len(), all.len());
        // Read again, from the start, after a partial read.
        sorted.rewind().unwrap();
        assert_eq!(sorted.next().unwrap().unwrap(), all[0]);
        sorted.rewind().unwrap();
        let again: Vec<ChunkId> = sorted.by_ref().map(Result::unwrap).collect();
        assert!(
            again == all,
            "{} ids again, {} wanted",
            again.len(),
            all.len()
        );
        drop(sorted);
        // The run files are gone with the iterator.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // And few ids stay in memory.
        let mut s = Sorter::new(dir.path());
        for b in [3u8, 1, 3, 2] {
            s.push(ChunkId([b; 32])).unwrap();
        }
        let mut sorted = s.sorted().unwrap();
        let got: Vec<u8> = sorted.by_ref().map(|r| r.unwrap().0[0]).collect();
        assert_eq!(got, [1, 2, 3]);
        sorted.rewind().unwrap();
        assert_eq!(sorted.count(), 3);
    }
}
