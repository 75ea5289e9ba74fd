//! Reassembly of one direction of a TCP connection into an in-order byte stream.
//!
//! Fingerprints only need the first bytes of each direction (handshakes, request heads), so
//! the reassembler delivers bytes to its consumer as soon as they are in order and keeps
//! only a small, bounded set of out-of-order segments. Retransmitted and overlapping bytes
//! are delivered once (first copy wins, as most stacks and Wireshark do). When a gap can't be
//! closed within the budget, the stream is declared broken and the consumer is told, so a
//! flood of out-of-order garbage costs at most [`MAX_OOO_BYTES`] per direction.

use std::collections::BTreeMap;

/// Out-of-order bytes kept per direction before the reassembler gives up on a gap.
pub const MAX_OOO_BYTES: usize = 256 * 1024;
/// Out-of-order segments kept per direction.
pub const MAX_OOO_SEGMENTS: usize = 256;

/// What happened to a segment handed to [`TcpReassembler::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentFate {
    /// New bytes (some or all) were accepted.
    New,
    /// Every byte had been seen before: a retransmission.
    Duplicate,
    /// The stream gave up earlier (gap never closed) or was closed by the consumer.
    Ignored,
}

/// One direction's reassembly state. Sequence numbers are compared with wrapping
/// arithmetic, so connections that cross 2^32 work.
#[derive(Debug, Default)]
pub struct TcpReassembler {
    /// Sequence number of the next byte to deliver; `None` until the first data segment
    /// (or SYN) fixes the origin.
    next_seq: Option<u32>,
    /// Segments that arrived ahead of `next_seq`, keyed by their starting sequence number.
    ooo: BTreeMap<u32, Vec<u8>>,
    ooo_bytes: usize,
    /// Total bytes delivered in order.
    delivered: u64,
    /// Set when a gap could not be closed or the consumer lost interest.
    stopped: bool,
    /// Whether the stream stopped because of an unrecoverable gap.
    gap: bool,
    /// Track sequence numbers only: nothing is buffered or delivered, but retransmissions
    /// are still recognised (JA4SSH counts packets long after the bytes stop mattering).
    discard: bool,
}

/// Signed distance from `b` to `a` in sequence space.
fn seq_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

impl TcpReassembler {
    /// Fixes the origin from a SYN: data starts at `isn + 1`.
    pub fn on_syn(&mut self, isn: u32) {
        if self.next_seq.is_none() {
            self.next_seq = Some(isn.wrapping_add(1));
        }
    }

    /// True once the consumer or a gap stopped the stream.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// True if the stream stopped because data was missing.
    pub fn had_gap(&self) -> bool {
        self.gap
    }

    /// Bytes delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Stops reassembly and frees the buffers: the consumer has what it needs.
    pub fn stop(&mut self) {
        self.stopped = true;
        self.ooo.clear();
        self.ooo_bytes = 0;
    }

    /// Switches to sequence tracking only: buffers are freed and no more bytes are
    /// delivered, but [`TcpReassembler::is_retransmission`] keeps working.
    pub fn discard(&mut self) {
        self.discard = true;
        self.ooo.clear();
        self.ooo_bytes = 0;
    }

    /// Classifies a segment without delivering it: used for connections whose payload is
    /// not reassembled but whose retransmissions must still be recognised (JA4SSH counts).
    pub fn is_retransmission(&self, seq: u32, len: usize) -> bool {
        match self.next_seq {
            Some(next) if len > 0 => seq_diff(seq.wrapping_add(len as u32), next) <= 0,
            _ => false,
        }
    }

    /// Feeds one segment; in-order bytes go to `deliver` immediately (possibly in several
    /// calls when buffered segments become contiguous).
    pub fn push(
        &mut self,
        seq: u32,
        payload: &[u8],
        mut deliver: impl FnMut(&[u8]),
    ) -> SegmentFate {
        if self.stopped {
            return SegmentFate::Ignored;
        }
        if payload.is_empty() {
            return SegmentFate::Duplicate;
        }
        let next = *self.next_seq.get_or_insert(seq);
        let end = seq.wrapping_add(payload.len() as u32);
        if seq_diff(end, next) <= 0 {
            return SegmentFate::Duplicate;
        }
        if self.discard {
            self.next_seq = Some(end);
            return SegmentFate::New;
        }
        if seq_diff(seq, next) <= 0 {
            // Overlaps or starts exactly at the delivery point: deliver the new tail.
            let skip = seq_diff(next, seq) as usize;
            let fresh = &payload[skip.min(payload.len())..];
            self.deliver(fresh, &mut deliver);
            self.drain(&mut deliver);
            return SegmentFate::New;
        }
        // Ahead of the delivery point: keep it if the budget allows.
        if self.ooo.contains_key(&seq) {
            let old_len = self.ooo.get(&seq).map_or(0, Vec::len);
            if old_len >= payload.len() {
                return SegmentFate::Duplicate;
            }
        }
        if self.ooo_bytes + payload.len() > MAX_OOO_BYTES || self.ooo.len() >= MAX_OOO_SEGMENTS {
            self.gap = true;
            self.stop();
            return SegmentFate::Ignored;
        }
        self.ooo_bytes += payload.len();
        if let Some(old) = self.ooo.insert(seq, payload.to_vec()) {
            self.ooo_bytes -= old.len();
        }
        SegmentFate::New
    }

    fn deliver(&mut self, bytes: &[u8], deliver: &mut impl FnMut(&[u8])) {
        if bytes.is_empty() {
            return;
        }
        if let Some(next) = self.next_seq.as_mut() {
            *next = next.wrapping_add(bytes.len() as u32);
        }
        self.delivered += bytes.len() as u64;
        deliver(bytes);
    }

    /// Delivers buffered segments that have become contiguous.
    fn drain(&mut self, deliver: &mut impl FnMut(&[u8])) {
        while !self.stopped {
            let Some(next) = self.next_seq else { return };
            // The first buffered segment in sequence order relative to `next`.
            let Some((&seq, _)) = self.ooo.iter().min_by_key(|(s, _)| seq_diff(**s, next)) else {
                return;
            };
            if seq_diff(seq, next) > 0 {
                return;
            }
            let Some(seg) = self.ooo.remove(&seq) else {
                return;
            };
            self.ooo_bytes -= seg.len();
            let end = seq.wrapping_add(seg.len() as u32);
            if seq_diff(end, next) <= 0 {
                continue;
            }
            let skip = seq_diff(next, seq) as usize;
            self.deliver(&seg[skip.min(seg.len())..], deliver);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(r: &mut TcpReassembler, seq: u32, data: &[u8], out: &mut Vec<u8>) -> SegmentFate {
        r.push(seq, data, |b| out.extend_from_slice(b))
    }

    #[test]
    fn in_order_out_of_order_and_overlap() {
        let mut r = TcpReassembler::default();
        r.on_syn(999);
        let mut out = Vec::new();
        assert_eq!(run(&mut r, 1006, b"world", &mut out), SegmentFate::New);
        assert!(out.is_empty(), "gap before 1006 must hold the segment back");
        assert_eq!(run(&mut r, 1000, b"hello ", &mut out), SegmentFate::New);
        assert_eq!(out, b"hello world");
        assert_eq!(
            run(&mut r, 1000, b"hello", &mut out),
            SegmentFate::Duplicate
        );
        // Overlap: "rld!!" starts inside delivered data; only "!!" is new.
        assert_eq!(run(&mut r, 1008, b"rld!!", &mut out), SegmentFate::New);
        assert_eq!(out, b"hello world!!");
        assert_eq!(r.delivered(), 13);
    }

    #[test]
    fn wraps_around_sequence_space() {
        let mut r = TcpReassembler::default();
        r.on_syn(u32::MAX - 2);
        let mut out = Vec::new();
        run(&mut r, u32::MAX - 1, b"ab", &mut out);
        run(&mut r, 0, b"cd", &mut out);
        assert_eq!(out, b"abcd");
    }

    #[test]
    fn unclosable_gap_stops_within_budget() {
        let mut r = TcpReassembler::default();
        r.on_syn(0);
        let mut out = Vec::new();
        let chunk = vec![0u8; 1400];
        let mut seq = 10_000u32;
        let mut fate = SegmentFate::New;
        for _ in 0..1000 {
            fate = run(&mut r, seq, &chunk, &mut out);
            seq = seq.wrapping_add(1400);
            if fate == SegmentFate::Ignored {
                break;
            }
        }
        assert_eq!(fate, SegmentFate::Ignored);
        assert!(r.had_gap());
        assert!(out.is_empty());
    }

    #[test]
    fn retransmission_detection() {
        let mut r = TcpReassembler::default();
        r.on_syn(0);
        let mut out = Vec::new();
        run(&mut r, 1, b"abc", &mut out);
        assert!(r.is_retransmission(1, 3));
        assert!(!r.is_retransmission(4, 3));
    }
}
