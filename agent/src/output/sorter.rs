//! Puts finished streams back in the reference tool's order (TCP streams first, then UDP,
//! each by stream number) with bounded memory.
//!
//! Streams finish in any order (idle eviction, table pressure, end of input), but users diff
//! HaIS's output against the reference, which prints in stream order. Records are serialized
//! as soon as they finish and kept in memory up to a budget; beyond it, sorted runs spill to
//! temporary files that are merged at the end. A capture with millions of fingerprinted
//! streams therefore costs disk, not memory.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;

/// Sort key of a record: protocol rank (0 = TCP, 1 = UDP) and stream number.
pub type SortKey = (u8, u64);

/// The sorter. Dropping it removes its temporary files.
#[derive(Debug)]
pub struct RecordSorter {
    mem: Vec<(SortKey, String)>,
    mem_bytes: usize,
    budget: usize,
    runs: Vec<PathBuf>,
    dir: PathBuf,
}

impl RecordSorter {
    /// A sorter keeping at most `budget` bytes of records in memory.
    pub fn new(budget: usize) -> Self {
        RecordSorter {
            mem: Vec::new(),
            mem_bytes: 0,
            budget: budget.max(1),
            runs: Vec::new(),
            dir: std::env::temp_dir(),
        }
    }

    /// Adds one serialized record (it must end with a newline if the format needs one).
    pub fn push(&mut self, key: SortKey, text: String) -> std::io::Result<()> {
        self.mem_bytes += text.len() + 32;
        self.mem.push((key, text));
        if self.mem_bytes > self.budget {
            self.spill()?;
        }
        Ok(())
    }

    /// Number of spilled runs so far (for tests and diagnostics).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    fn spill(&mut self) -> std::io::Result<()> {
        self.mem.sort_by_key(|(k, _)| *k);
        let path = self.dir.join(format!(
            "hais-sort-{}-{}-{}.run",
            std::process::id(),
            self as *const _ as usize,
            self.runs.len()
        ));
        let mut w = BufWriter::new(File::create(&path)?);
        for ((proto, stream), text) in self.mem.drain(..) {
            // One line per record: key, then the record with newlines escaped as \x1e, so a
            // multi-line YAML item survives the round trip.
            writeln!(w, "{proto} {stream} {}", text.replace('\n', "\u{1e}"))?;
        }
        w.flush()?;
        self.runs.push(path);
        self.mem_bytes = 0;
        Ok(())
    }

    /// Writes every record in order to `out`.
    pub fn finish(mut self, out: &mut impl Write) -> std::io::Result<()> {
        self.mem.sort_by_key(|(k, _)| *k);
        if self.runs.is_empty() {
            for (_, text) in self.mem.drain(..) {
                out.write_all(text.as_bytes())?;
            }
            return Ok(());
        }
        let mut readers = Vec::with_capacity(self.runs.len());
        for p in &self.runs {
            readers.push(BufReader::new(File::open(p)?).lines());
        }
        // Source usize::MAX is the in-memory run.
        let mut heap: BinaryHeap<Reverse<(SortKey, usize, String)>> = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(item) = next_line(r)? {
                heap.push(Reverse((item.0, i, item.1)));
            }
        }
        let mut mem = self
            .mem
            .drain(..)
            .collect::<std::collections::VecDeque<_>>();
        if let Some((k, t)) = mem.pop_front() {
            heap.push(Reverse((k, usize::MAX, t)));
        }
        while let Some(Reverse((_, src, text))) = heap.pop() {
            out.write_all(text.as_bytes())?;
            let next = if src == usize::MAX {
                mem.pop_front()
            } else {
                next_line(&mut readers[src])?
            };
            if let Some((k, t)) = next {
                heap.push(Reverse((k, src, t)));
            }
        }
        Ok(())
    }
}

fn next_line(
    r: &mut std::io::Lines<BufReader<File>>,
) -> std::io::Result<Option<(SortKey, String)>> {
    let Some(line) = r.next().transpose()? else {
        return Ok(None);
    };
    let mut it = line.splitn(3, ' ');
    let proto = it.next().and_then(|s| s.parse().ok()).unwrap_or(u8::MAX);
    let stream = it.next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    let text = it.next().unwrap_or("").replace('\u{1e}', "\n");
    Ok(Some(((proto, stream), text)))
}

impl Drop for RecordSorter {
    fn drop(&mut self) {
        for p in &self.runs {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_and_merges_in_order() {
        let mut s = RecordSorter::new(200);
        let mut keys: Vec<SortKey> = (0..300u64)
            .map(|i| (u8::from(i % 3 == 0), (i * 7919) % 1000))
            .collect();
        for k in &keys {
            s.push(*k, format!("- {} {}\n  x: y\n", k.0, k.1)).unwrap();
        }
        assert!(s.runs() > 3, "budget forces spills");
        let mut out = Vec::new();
        s.finish(&mut out).unwrap();
        keys.sort();
        let want: String = keys
            .iter()
            .map(|k| format!("- {} {}\n  x: y\n", k.0, k.1))
            .collect();
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}
