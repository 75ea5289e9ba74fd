//! The on-disk spool: a bounded queue of encoded events between capture and the uplink.
//!
//! # Why on disk
//! The control plane may be unreachable for minutes (restarts, network cuts). Events keep
//! coming, and an agent must neither lose them nor grow its memory with them, so they go to
//! files in the state directory and survive an agent restart as well.
//!
//! # Layout
//! `<state>/spool/<20-digit id>.seg` files, oldest first. A segment is append-only; each record
//! is framed as `len: u32 LE | crc32: u32 LE | payload` (CRC-32/ISO-HDLC of the payload). A
//! segment is sealed when it reaches `segment_bytes` and a new one is started. `<state>/spool/head`
//! holds `<segment id> <byte offset>`: everything before it is acknowledged.
//!
//! # Durability (fsync policy)
//! Each [`Spool::append`] hands its records to the kernel with one `write`, so an agent crash
//! (or `kill -9`) loses nothing appended. The data is `fdatasync`ed at most every
//! `fsync_interval` (100 ms by default, checked on append and by [`Spool::sync`], which the
//! caller runs on a timer and at shutdown) and always when a segment is sealed: a power loss
//! loses at most that interval's events. A torn tail (a record cut by a crash, or garbage after
//! it) is detected by its length or CRC when the spool is opened, the segment is truncated at
//! the last good record, and the loss is counted in [`SpoolStats::torn_records`] (in records
//! when they can be told apart, otherwise one).
//!
//! # Bounds
//! When the files exceed `max_bytes`, whole segments are deleted oldest first, acknowledged or
//! not, and their unacknowledged records counted in [`SpoolStats::dropped`]. Appending never
//! waits for the network. Memory holds a few counters per segment, not events.
//!
//! # Reading and acknowledgements
//! [`Spool::next_batch`] hands out up to `max_events` consecutive records of one segment with
//! their position ([`BatchId`]); several batches can be in flight. Acks may come in any order:
//! each segment keeps the ranges acked ahead of its head and the head advances over them once
//! they are contiguous. A sealed segment whose head reaches its end is deleted. After a lost
//! connection, [`Spool::rewind`] re-reads everything unacknowledged, oldest first, skipping
//! ranges that were acked out of order. Only the head is persisted, so after a restart the
//! records acked out of order beyond it are sent again; event ids make that harmless.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Default bound of the spool's files.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// Largest record accepted (an encoded event is a few hundred bytes to a few KB).
pub const MAX_RECORD_BYTES: usize = 1 << 20;
const FRAME_HEADER: u64 = 8;
/// Bytes read from disk for one batch: enough for the largest record, and for a full batch of
/// typical events (a few hundred bytes each); a batch ends early at the window's end.
const BATCH_READ_WINDOW: u64 = MAX_RECORD_BYTES as u64 + FRAME_HEADER;
const HEAD_FILE: &str = "head";
const SEGMENT_EXT: &str = "seg";

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Why the spool failed. I/O errors name the file.
#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("record of {0} bytes exceeds the spool's limit of {MAX_RECORD_BYTES}")]
    RecordTooLarge(usize),
    #[error("spool.max_bytes {max} is too small (at least {min} bytes)")]
    TooSmall { max: u64, min: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// How the spool is bounded and synced.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// The spool directory (`<state>/spool`).
    pub dir: PathBuf,
    /// Upper bound of the segment files' total size.
    pub max_bytes: u64,
    /// Size at which a segment is sealed. Default: an eighth of `max_bytes`, between 64 KiB and
    /// 16 MiB, so dropping the oldest segment frees a useful but small share of the spool.
    pub segment_bytes: u64,
    /// Longest time appended records stay un-fsynced.
    pub fsync_interval: Duration,
}

impl SpoolOptions {
    /// Defaults for a spool in `dir` bounded by `max_bytes`.
    pub fn new(dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        SpoolOptions {
            dir: dir.into(),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(64 << 10, 16 << 20),
            fsync_interval: Duration::from_millis(100),
        }
    }
}

/// Where a batch lies: records `[start, end)` (byte offsets) of segment `segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchId {
    pub segment: u64,
    pub start: u64,
    pub end: u64,
    pub count: u32,
}

/// Records handed out for sending.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: BatchId,
    /// Payloads, oldest first.
    pub records: Vec<Vec<u8>>,
}

/// Counters for status, heartbeats and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpoolStats {
    /// Records written and not yet acknowledged.
    pub depth: u64,
    /// Bytes of the segment files.
    pub bytes: u64,
    pub segments: u64,
    /// Records appended since the spool was opened.
    pub appended: u64,
    /// Records acknowledged since the spool was opened.
    pub acked: u64,
    /// Unacknowledged records deleted because the spool was full.
    pub dropped: u64,
    /// Records lost to torn writes found when the spool was opened.
    pub torn_records: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    /// Bytes of valid records.
    len: u64,
    records: u64,
    /// Records acknowledged (contiguous head plus ranges ahead of it).
    acked: u64,
    /// Byte offset up to which everything is acknowledged.
    head: u64,
    /// Acknowledged ranges ahead of `head`: start → (end, records).
    ahead: BTreeMap<u64, (u64, u64)>,
    sealed: bool,
}

impl Segment {
    fn unacked(&self) -> u64 {
        self.records.saturating_sub(self.acked)
    }

    fn fully_acked(&self) -> bool {
        self.head == self.len
    }
}

/// The spool. Not thread-safe by itself; share it as `Arc<Mutex<Spool>>` (every call is short:
/// one write, or one read of at most a batch).
#[derive(Debug)]
pub struct Spool {
    cfg: SpoolOptions,
    segments: VecDeque<Segment>,
    /// Append handle of the last segment.
    writer: Option<File>,
    /// Read handle, cached for the segment being read.
    reader: Option<(u64, File)>,
    /// Next record to hand out.
    cursor: (u64, u64),
    dirty_since: Option<Instant>,
    stats: SpoolStats,
    /// Head last written to the head file.
    saved_head: (u64, u64),
}

fn segment_name(id: u64) -> String {
    format!("{id:020}.{SEGMENT_EXT}")
}

/// A record frame.
fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&CRC.checksum(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parses the frame at the start of `buf`: `Some((payload, frame length))`, or `None` when the
/// bytes are not a whole valid frame (too short, over-long length, or CRC mismatch).
fn parse_frame(buf: &[u8]) -> Option<(&[u8], u64)> {
    let header = buf.get(..FRAME_HEADER as usize)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    if len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = buf.get(FRAME_HEADER as usize..FRAME_HEADER as usize + len)?;
    (CRC.checksum(payload) == crc).then_some((payload, FRAME_HEADER + len as u64))
}

/// What scanning a segment file found.
struct Scan {
    /// Bytes of valid records.
    len: u64,
    records: u64,
    /// Byte offset of every record boundary, for checking the persisted head (only kept when
    /// asked for).
    boundaries: Vec<u64>,
    torn_bytes: u64,
}

fn scan_segment(path: &Path, want_boundaries: bool) -> Result<Scan, SpoolError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path))?;
    let mut pos = 0usize;
    let mut records = 0;
    let mut boundaries = Vec::new();
    while pos < data.len() {
        match parse_frame(&data[pos..]) {
            Some((_, n)) => {
                if want_boundaries {
                    boundaries.push(pos as u64);
                }
                pos += n as usize;
                records += 1;
            }
            None => break,
        }
    }
    if want_boundaries {
        boundaries.push(pos as u64);
    }
    Ok(Scan {
        len: pos as u64,
        records,
        boundaries,
        torn_bytes: (data.len() - pos) as u64,
    })
}

/// Roughly how many records the torn bytes held: the frames that still parse after the tear
/// are counted; a tail that is only garbage counts as one lost record.
fn torn_record_estimate(path: &Path, from: u64) -> u64 {
    let Ok(data) = fs::read(path) else { return 1 };
    let mut n = 0;
    let mut pos = from as usize + 1;
    // Resynchronise byte by byte; cheap because tears are rare and small.
    while pos + FRAME_HEADER as usize <= data.len() {
        if let Some((_, len)) = parse_frame(&data[pos..]) {
            n += 1;
            pos += len as usize;
        } else {
            pos += 1;
        }
    }
    n + 1
}

impl Spool {
    /// Opens (creating when needed) the spool in `cfg.dir`, checking every segment and
    /// truncating torn tails.
    pub fn open(cfg: SpoolOptions) -> Result<Spool, SpoolError> {
        let min = 4 * FRAME_HEADER.max(4096);
        if cfg.max_bytes < min || cfg.segment_bytes * 2 > cfg.max_bytes {
            return Err(SpoolError::TooSmall {
                max: cfg.max_bytes,
                min: min.max(cfg.segment_bytes * 2),
            });
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.dir)
            .map_err(io_err(&cfg.dir))?;
        let mut ids = Vec::new();
        for entry in fs::read_dir(&cfg.dir).map_err(io_err(&cfg.dir))? {
            let entry = entry.map_err(io_err(&cfg.dir))?;
            let name = entry.file_name();
            let Some(stem) = name
                .to_str()
                .and_then(|n| n.strip_suffix(&format!(".{SEGMENT_EXT}")))
            else {
                continue;
            };
            if let Ok(id) = stem.parse::<u64>() {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let head = read_head(&cfg.dir.join(HEAD_FILE));

        let mut spool = Spool {
            segments: VecDeque::new(),
            writer: None,
            reader: None,
            cursor: (0, 0),
            dirty_since: None,
            stats: SpoolStats::default(),
            saved_head: (0, 0),
            cfg,
        };
        for id in ids {
            let path = spool.cfg.dir.join(segment_name(id));
            if let Some((hid, _)) = head
                && id < hid
            {
                // Fully acknowledged before the restart; its deletion did not happen.
                let _ = fs::remove_file(&path);
                continue;
            }
            let is_head = head.is_some_and(|(hid, _)| hid == id);
            let scan = scan_segment(&path, is_head)?;
            if scan.torn_bytes > 0 {
                let lost = torn_record_estimate(&path, scan.len);
                tracing::warn!(
                    segment = %path.display(),
                    torn_bytes = scan.torn_bytes,
                    lost_records = lost,
                    "spool segment has a torn tail (crash during a write); truncating it"
                );
                spool.stats.torn_records += lost;
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(scan.len).and_then(|()| f.sync_all()))
                    .map_err(io_err(&path))?;
            }
            let mut seg = Segment {
                id,
                path,
                len: scan.len,
                records: scan.records,
                acked: 0,
                head: 0,
                ahead: BTreeMap::new(),
                sealed: true,
            };
            if let Some((_, off)) = head.filter(|_| is_head)
                && let Some(i) = scan.boundaries.iter().position(|b| *b == off)
            {
                seg.head = off;
                seg.acked = i as u64;
            }
            spool.segments.push_back(seg);
        }
        // A segment fully acked before the restart (e.g. the last one) carries nothing.
        spool.delete_acked_segments();
        if spool.segments.is_empty()
            && let Some((hid, _)) = head
        {
            // The head file names a segment just deleted (fully acknowledged). Reusing its id
            // would make that stale head mark the new segment's first records as acknowledged
            // at the next restart.
            spool.new_segment(hid.saturating_add(1))?;
        } else {
            spool.start_writer()?;
        }
        spool.rewind();
        spool.saved_head = spool.head();
        spool.enforce_bound();
        Ok(spool)
    }

    /// Reopens the last segment for appending, or starts a new one.
    fn start_writer(&mut self) -> Result<(), SpoolError> {
        let reuse = self
            .segments
            .back()
            .is_some_and(|s| s.len < self.cfg.segment_bytes);
        if reuse {
            let seg = self.segments.back_mut().expect("checked");
            let f = OpenOptions::new()
                .append(true)
                .open(&seg.path)
                .map_err(io_err(&seg.path))?;
            seg.sealed = false;
            self.writer = Some(f);
            Ok(())
        } else {
            let next = self.segments.back().map_or(1, |s| s.id + 1);
            self.new_segment(next)
        }
    }

    fn new_segment(&mut self, id: u64) -> Result<(), SpoolError> {
        let path = self.cfg.dir.join(segment_name(id));
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.segments.push_back(Segment {
            id,
            path,
            len: 0,
            records: 0,
            acked: 0,
            head: 0,
            ahead: BTreeMap::new(),
            sealed: false,
        });
        self.writer = Some(f);
        Ok(())
    }

    /// Appends records (encoded events) in one write. When the spool is over its bound
    /// afterwards, the oldest segments are dropped.
    pub fn append<R: AsRef<[u8]>>(&mut self, records: &[R]) -> Result<(), SpoolError> {
        if records.is_empty() {
            return Ok(());
        }
        if let Some(r) = records.iter().find(|r| r.as_ref().len() > MAX_RECORD_BYTES) {
            return Err(SpoolError::RecordTooLarge(r.as_ref().len()));
        }
        let mut buf = Vec::new();
        let mut i = 0;
        while i < records.len() {
            // Fill the current segment up to its size, then seal it and start the next one.
            let room = self
                .cfg
                .segment_bytes
                .saturating_sub(self.segments.back().map_or(0, |s| s.len));
            buf.clear();
            let first = i;
            while i < records.len() {
                let n = FRAME_HEADER + records[i].as_ref().len() as u64;
                if !buf.is_empty() && buf.len() as u64 + n > room {
                    break;
                }
                frame(records[i].as_ref(), &mut buf);
                i += 1;
            }
            self.write_frames(&buf, (i - first) as u64)?;
            if self
                .segments
                .back()
                .is_some_and(|s| s.len >= self.cfg.segment_bytes)
            {
                self.roll()?;
            }
        }
        self.enforce_bound();
        if self
            .dirty_since
            .is_some_and(|t| t.elapsed() >= self.cfg.fsync_interval)
        {
            self.sync()?;
        }
        Ok(())
    }

    fn write_frames(&mut self, buf: &[u8], count: u64) -> Result<(), SpoolError> {
        let seg = self.segments.back_mut().expect("a writer segment exists");
        let f = self.writer.as_mut().expect("a writer exists");
        if let Err(e) = f.write_all(buf) {
            // Cut whatever part went in, so the segment holds only whole records.
            let _ = f.set_len(seg.len);
            return Err(io_err(&seg.path)(e));
        }
        seg.len += buf.len() as u64;
        seg.records += count;
        self.stats.appended += count;
        self.dirty_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Seals the current segment (synced) and starts the next.
    fn roll(&mut self) -> Result<(), SpoolError> {
        self.sync()?;
        let seg = self.segments.back_mut().expect("a writer segment exists");
        seg.sealed = true;
        let next = seg.id + 1;
        self.writer = None;
        self.delete_acked_segments();
        self.new_segment(next)
    }

    /// Makes appended records durable (`fdatasync`) and persists the head if it moved.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.dirty_since.take().is_some()
            && let (Some(f), Some(seg)) = (&self.writer, self.segments.back())
        {
            f.sync_data().map_err(io_err(&seg.path))?;
        }
        self.save_head();
        Ok(())
    }

    /// True when [`Spool::sync`] has something to do.
    pub fn needs_sync(&self) -> bool {
        self.dirty_since.is_some() || self.saved_head != self.head()
    }

    /// Drops the oldest segments while the files exceed the bound.
    fn enforce_bound(&mut self) {
        while self.total_bytes() > self.cfg.max_bytes && self.segments.len() > 1 {
            let seg = self.segments.pop_front().expect("len > 1");
            self.stats.dropped += seg.unacked();
            tracing::warn!(
                segment = seg.id,
                dropped = seg.unacked(),
                dropped_total = self.stats.dropped,
                "spool full: dropped the oldest unsent events"
            );
            let _ = fs::remove_file(&seg.path);
            if self.reader.as_ref().is_some_and(|(id, _)| *id == seg.id) {
                self.reader = None;
            }
        }
        let front = self.segments.front().map_or((0, 0), |s| (s.id, s.head));
        if self.cursor.0 < front.0 {
            self.cursor = front;
        }
    }

    fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    fn head(&self) -> (u64, u64) {
        self.segments.front().map_or((0, 0), |s| (s.id, s.head))
    }

    /// Writes the head file (atomically, without fsync: losing it only means resending).
    fn save_head(&mut self) {
        let head = self.head();
        if head == self.saved_head {
            return;
        }
        let tmp = self.cfg.dir.join(".head.tmp");
        let dst = self.cfg.dir.join(HEAD_FILE);
        let res = fs::write(&tmp, format!("{} {}\n", head.0, head.1))
            .and_then(|()| fs::rename(&tmp, &dst));
        match res {
            Ok(()) => self.saved_head = head,
            Err(e) => tracing::warn!(error = %e, path = %dst.display(), "writing the spool head"),
        }
    }

    /// Deletes sealed segments whose records are all acknowledged.
    fn delete_acked_segments(&mut self) {
        let before = self.segments.len();
        self.segments.retain(|s| {
            let done = s.sealed && s.fully_acked();
            if done {
                let _ = fs::remove_file(&s.path);
            }
            !done
        });
        if self.segments.len() != before {
            let live: Vec<u64> = self.segments.iter().map(|s| s.id).collect();
            if self
                .reader
                .as_ref()
                .is_some_and(|(id, _)| !live.contains(id))
            {
                self.reader = None;
            }
        }
    }

    /// Hands out the next unacknowledged records (at most `max_events`, all from one segment),
    /// or `None` when everything written has been handed out.
    pub fn next_batch(&mut self, max_events: usize) -> Result<Option<Batch>, SpoolError> {
        let max_events = max_events.max(1);
        loop {
            let Some(idx) = self.segments.iter().position(|s| s.id >= self.cursor.0) else {
                return Ok(None);
            };
            let seg = &self.segments[idx];
            let mut start = if seg.id == self.cursor.0 {
                self.cursor.1.max(seg.head)
            } else {
                seg.head
            };
            // Skip ranges already acknowledged out of order.
            while let Some((&s, &(e, _))) = seg.ahead.range(..=start).next_back() {
                if e > start && s <= start {
                    start = e;
                } else {
                    break;
                }
            }
            if start >= seg.len {
                if seg.sealed {
                    self.cursor = self
                        .segments
                        .get(idx + 1)
                        .map_or((seg.id + 1, 0), |n| (n.id, 0));
                    continue;
                }
                self.cursor = (seg.id, start);
                return Ok(None);
            }
            // Stop before the next range acked out of order, so ranges never overlap.
            let limit = seg.ahead.range(start..).next().map_or(seg.len, |(&s, _)| s);
            let (seg_id, path) = (seg.id, seg.path.clone());
            let want = (limit - start).min(BATCH_READ_WINDOW);
            let data = self.read_at(seg_id, &path, start, want)?;
            let mut records = Vec::new();
            let mut pos = 0usize;
            while records.len() < max_events {
                match parse_frame(&data[pos..]) {
                    Some((payload, n)) => {
                        records.push(payload.to_vec());
                        pos += n as usize;
                    }
                    None => break,
                }
            }
            if records.is_empty() {
                // The segment was verified on open and written by us, and the window holds the
                // largest record: a frame that does not parse here means outside damage.
                // Skip the rest of the segment rather than stall the uplink forever.
                tracing::error!(
                    segment = seg_id,
                    offset = start,
                    "unreadable spool record; skipping the rest of the segment"
                );
                let seg = &mut self.segments[idx];
                self.stats.dropped += seg.unacked();
                seg.acked = seg.records;
                seg.ahead.retain(|s, _| *s < start);
                seg.ahead.insert(start, (seg.len, 0));
                self.cursor = (seg_id, seg.len);
                continue;
            }
            let end = start + pos as u64;
            self.cursor = (seg_id, end);
            return Ok(Some(Batch {
                id: BatchId {
                    segment: seg_id,
                    start,
                    end,
                    count: records.len() as u32,
                },
                records,
            }));
        }
    }

    fn read_at(&mut self, id: u64, path: &Path, off: u64, len: u64) -> Result<Vec<u8>, SpoolError> {
        if self.reader.as_ref().is_none_or(|(rid, _)| *rid != id) {
            let f = File::open(path).map_err(io_err(path))?;
            self.reader = Some((id, f));
        }
        let (_, f) = self.reader.as_mut().expect("just set");
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, off).map_err(io_err(path))?;
        Ok(buf)
    }

    /// Records a batch as delivered. Unknown batches (their segment was dropped while they were
    /// in flight) and repeated acks are ignored.
    pub fn ack(&mut self, id: &BatchId) {
        let Some(seg) = self.segments.iter_mut().find(|s| s.id == id.segment) else {
            return;
        };
        // Ignore what is already covered: behind the head, or overlapping a range acked ahead.
        let overlaps = seg
            .ahead
            .range(..id.end)
            .next_back()
            .is_some_and(|(_, &(end, _))| end > id.start);
        if id.start < seg.head || id.end > seg.len || id.start >= id.end || overlaps {
            return;
        }
        seg.ahead.insert(id.start, (id.end, u64::from(id.count)));
        seg.acked += u64::from(id.count);
        self.stats.acked += u64::from(id.count);
        while let Some((end, _)) = seg.ahead.remove(&seg.head) {
            seg.head = end;
        }
        if seg.sealed && seg.fully_acked() {
            self.delete_acked_segments();
        }
    }

    /// Forgets what was handed out and not acknowledged, so the next batches start again at the
    /// oldest unacknowledged record (after a lost connection).
    pub fn rewind(&mut self) {
        self.cursor = self.head();
    }

    /// Counters.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            depth: self.segments.iter().map(Segment::unacked).sum(),
            bytes: self.total_bytes(),
            segments: self.segments.len() as u64,
            ..self.stats
        }
    }

    /// Events waiting to be acknowledged.
    pub fn depth(&self) -> u64 {
        self.segments.iter().map(Segment::unacked).sum()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

fn read_head(path: &Path) -> Option<(u64, u64)> {
    let text = fs::read_to_string(path).ok()?;
    let mut it = text.split_whitespace();
    let seg = it.next()?.parse().ok()?;
    let off = it.next()?.parse().ok()?;
    Some((seg, off))
}

/// Used by tests to simulate damage; kept here so the frame layout stays private.
#[cfg(test)]
fn append_garbage(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, max: u64, seg: u64) -> SpoolOptions {
        SpoolOptions {
            dir: dir.join("spool"),
            max_bytes: max,
            segment_bytes: seg,
            fsync_interval: Duration::from_millis(100),
        }
    }

    fn rec(i: u32) -> Vec<u8> {
        format!("event-{i:06}").into_bytes()
    }

    /// Drains the spool in batches of `n`, acking each, and returns the payloads.
    fn drain(s: &mut Spool, n: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(b) = s.next_batch(n).unwrap() {
            s.ack(&b.id);
            out.extend(b.records);
        }
        out
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir.join("spool"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == SEGMENT_EXT))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn appends_and_reads_in_order_across_segments() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path(), 1 << 20, 4096)).unwrap();
        let recs: Vec<Vec<u8>> = (0..2000).map(rec).collect();
        for chunk in recs.chunks(7) {
            s.append(chunk).unwrap();
        }
        assert!(s.stats().segments > 5, "{:?}", s.stats());
        assert_eq!(s.depth(), 2000);
        let got = drain(&mut s, 100);
        assert_eq!(got, recs);
        assert_eq!(s.depth(), 0);
        assert_eq!(s.stats().acked, 2000);
        // Sealed segments went away once acked; only the open one remains.
        assert_eq!(segment_files(d.path()).len(), 1);
    }

    #[test]
    fn batches_stay_within_one_segment_and_respect_max_events() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path(), 1 << 20, 4096)).unwrap();
        let recs: Vec<Vec<u8>> = (0..1000).map(rec).collect();
        s.append(&recs).unwrap();
        while let Some(b) = s.next_batch(50).unwrap() {
            assert!(b.records.len() <= 50);
            assert_eq!(b.id.count as usize, b.records.len());
            s.ack(&b.id);
        }
        assert_eq!(s.depth(), 0);
    }

    #[test]
    fn out_of_order_acks_advance_the_head_only_when_contiguous() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path(), 1 << 20, 64 << 10)).unwrap();
        let recs: Vec<Vec<u8>> = (0..40).map(rec).collect();
        s.append(&recs).unwrap();
        let b: Vec<Batch> = (0..4).map(|_| s.next_batch(10).unwrap().unwrap()).collect();
        assert!(s.next_batch(10).unwrap().is_none());
        // Acks 3, 1 arrive first: nothing contiguous from the head yet.
        s.ack(&b[3].id);
        s.ack(&b[1].id);
        assert_eq!(s.depth(), 20);
        assert_eq!(s.head(), (b[0].id.segment, 0));
        // After a lost connection only batches 0 and 2 come again.
        s.rewind();
        let again: Vec<Batch> = std::iter::from_fn(|| s.next_batch(100).unwrap()).collect();
        let again_recs: Vec<Vec<u8>> = again.iter().flat_map(|b| b.records.clone()).collect();
        assert_eq!(again_recs, [&recs[0..10], &recs[20..30]].concat());
        s.ack(&again[1].id);
        s.ack(&again[0].id);
        assert_eq!(s.depth(), 0);
        assert_eq!(s.head(), (b[0].id.segment, b[3].id.end));
        // A repeated or stale ack changes nothing.
        s.ack(&b[0].id);
        assert_eq!(s.stats().acked, 40);
    }

    #[test]
    fn restart_resumes_after_the_acknowledged_head() {
        let d = tempfile::tempdir().unwrap();
        let recs: Vec<Vec<u8>> = (0..300).map(rec).collect();
        {
            let mut s = Spool::open(cfg(d.path(), 1 << 20, 2048)).unwrap();
            s.append(&recs).unwrap();
            for _ in 0..5 {
                let b = s.next_batch(20).unwrap().unwrap();
                s.ack(&b.id);
            }
            // Handed out but never acked: must come again after the restart.
            s.next_batch(20).unwrap().unwrap();
        }
        let mut s = Spool::open(cfg(d.path(), 1 << 20, 2048)).unwrap();
        assert_eq!(s.depth(), 200);
        let got = drain(&mut s, 1000);
        assert_eq!(got, recs[100..].to_vec());
        // And new appends go on after the old ones.
        s.append(&[rec(999)]).unwrap();
        assert_eq!(drain(&mut s, 10), vec![rec(999)]);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_counted() {
        let d = tempfile::tempdir().unwrap();
        let recs: Vec<Vec<u8>> = (0..10).map(rec).collect();
        {
            let mut s = Spool::open(cfg(d.path(), 1 << 20, 64 << 10)).unwrap();
            s.append(&recs).unwrap();
        }
        let seg = segment_files(d.path()).pop().unwrap();
        // A record whose write was cut short: a header promising 100 bytes, then 5 bytes.
        let mut torn = Vec::new();
        frame(&[7u8; 100], &mut torn);
        torn.truncate(13);
        append_garbage(&seg, &torn);
        let good_len = fs::metadata(&seg).unwrap().len() - 13;

        let mut s = Spool::open(cfg(d.path(), 1 << 20, 64 << 10)).unwrap();
        assert_eq!(s.stats().torn_records, 1);
        assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
        // Appending after the repair produces a readable stream.
        s.append(&[rec(10)]).unwrap();
        let mut want = recs.clone();
        want.push(rec(10));
        assert_eq!(drain(&mut s, 100), want);
    }

    #[test]
    fn a_bad_crc_cuts_the_segment_at_the_damaged_record() {
        let d = tempfile::tempdir().unwrap();
        let recs: Vec<Vec<u8>> = (0..10).map(rec).collect();
        {
            let mut s = Spool::open(cfg(d.path(), 1 << 20, 64 << 10)).unwrap();
            s.append(&recs).unwrap();
        }
        let seg = segment_files(d.path()).pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        let rec_len = FRAME_HEADER as usize + recs[0].len();
        bytes[rec_len * 7 + 9] ^= 0xff; // payload byte of record 7
        fs::write(&seg, &bytes).unwrap();
        let mut s = Spool::open(cfg(d.path(), 1 << 20, 64 << 10)).unwrap();
        // Records 7, 8, 9 are lost: the damaged one and the two after it.
        assert_eq!(s.stats().torn_records, 3);
        assert_eq!(drain(&mut s, 100), recs[..7].to_vec());
    }

    #[test]
    fn a_full_spool_drops_the_oldest_segments_and_counts_them() {
        let d = tempfile::tempdir().unwrap();
        let max = 16 << 10;
        let mut s = Spool::open(cfg(d.path(), max, 4096)).unwrap();
        let recs: Vec<Vec<u8>> = (0..5000).map(rec).collect();
        for chunk in recs.chunks(10) {
            s.append(chunk).unwrap();
            assert!(s.stats().bytes <= max, "{:?}", s.stats());
        }
        let st = s.stats();
        assert!(st.dropped > 0);
        assert_eq!(st.dropped + st.depth, 5000, "{st:?}");
        // What is left is the newest events, in order, ending with the last one.
        let got = drain(&mut s, 1000);
        assert_eq!(got.len() as u64, st.depth);
        assert_eq!(got.last(), recs.last());
        assert_eq!(got, recs[recs.len() - got.len()..].to_vec());
    }

    #[test]
    fn batches_in_flight_when_their_segment_is_dropped_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path(), 16 << 10, 4096)).unwrap();
        s.append(&(0..50).map(rec).collect::<Vec<_>>()).unwrap();
        let b = s.next_batch(10).unwrap().unwrap();
        s.append(&(50..5000).map(rec).collect::<Vec<_>>()).unwrap();
        let before = s.stats();
        s.ack(&b.id);
        assert_eq!(s.stats().acked, before.acked);
        // The reader moved on to the oldest segment still there.
        let next = s.next_batch(10).unwrap().unwrap();
        assert!(next.id.segment > b.id.segment);
    }

    #[test]
    fn fully_acked_spool_restarts_empty() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(cfg(d.path(), 1 << 20, 2048)).unwrap();
            s.append(&(0..500).map(rec).collect::<Vec<_>>()).unwrap();
            drain(&mut s, 64);
        }
        let mut s = Spool::open(cfg(d.path(), 1 << 20, 2048)).unwrap();
        assert_eq!(s.depth(), 0);
        assert!(s.next_batch(10).unwrap().is_none());
    }

    #[test]
    fn records_appended_after_a_fully_acked_restart_survive_the_next_one() {
        // Found while writing the `spool` fuzz target's restart check. Everything acked: the
        // head file names the end of segment 1. The restart deletes that segment; the new one
        // must not reuse id 1, or the stale head would mark its first records as acknowledged
        // on the next restart.
        let d = tempfile::tempdir().unwrap();
        let recs: Vec<Vec<u8>> = (0..4).map(rec).collect();
        {
            let mut s = Spool::open(cfg(d.path(), 1 << 20, 64 << 10)).unwrap();
            s.append(&recs[..2]).unwrap();
            drain(&mut s, 100);
        }
        {
            let mut s = Spool::open(cfg(d.path(), 1 << 20, 64 << 10)).unwrap();
            assert_eq!(s.depth(), 0);
            s.append(&recs).unwrap();
        }
        let mut s = Spool::open(cfg(d.path(), 1 << 20, 64 << 10)).unwrap();
        assert_eq!(s.depth(), 4);
        assert_eq!(drain(&mut s, 100), recs);
    }

    /// `cargo test -p hais-agent --release --lib append_throughput -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn append_throughput() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(SpoolOptions::new(d.path().join("spool"), 256 << 20)).unwrap();
        let rec = vec![0x5au8; 200];
        let chunk: Vec<Vec<u8>> = (0..100).map(|_| rec.clone()).collect();
        let n = 1_000_000;
        let t = Instant::now();
        for _ in 0..n / 100 {
            s.append(&chunk).unwrap();
        }
        s.sync().unwrap();
        let append = t.elapsed();
        let t = Instant::now();
        let got = drain(&mut s, 1000).len();
        let read = t.elapsed();
        assert_eq!(got + s.stats().dropped as usize, n);
        eprintln!(
            "append: {:.0} events/s ({:.0} MB/s); read+ack: {:.0} events/s",
            n as f64 / append.as_secs_f64(),
            (n * 208) as f64 / append.as_secs_f64() / 1e6,
            got as f64 / read.as_secs_f64()
        );
    }

    #[test]
    fn oversized_records_and_tiny_bounds_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(cfg(d.path(), 1 << 20, 64 << 10)).unwrap();
        let big = vec![0u8; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            s.append(&[big]),
            Err(SpoolError::RecordTooLarge(_))
        ));
        assert!(matches!(
            Spool::open(cfg(d.path(), 1000, 64)),
            Err(SpoolError::TooSmall { .. })
        ));
    }
}
