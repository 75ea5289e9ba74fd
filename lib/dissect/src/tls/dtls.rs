//! DTLS (RFC 6347, RFC 9147) record parsing and handshake-fragment reassembly.
//!
//! DTLS runs over UDP, so it cannot rely on the byte stream that TLS framing assumes: each
//! datagram holds whole records (13-byte header), and each handshake message may be cut into
//! fragments (12-byte header: message_seq, fragment_offset, fragment_length) that arrive out
//! of order, overlap, or are retransmitted. The reassembler below rebuilds whole handshake
//! messages from the plaintext (epoch 0) handshake records, within fixed memory limits, so
//! that the same ClientHello/ServerHello parsers serve TLS and DTLS.

use std::collections::VecDeque;

use super::handshake::MAX_HANDSHAKE_MESSAGE_LEN;
use super::record::{CONTENT_CHANGE_CIPHER_SPEC, CONTENT_HANDSHAKE, CONTENT_TLS12_CID, TlsError};
use crate::bytes::Reader;

/// DTLS record header: type (1), version (2), epoch (2), sequence number (6), length (2).
pub const DTLS_RECORD_HEADER_LEN: usize = 13;
/// DTLS handshake header: type (1), length (3), message_seq (2), fragment_offset (3),
/// fragment_length (3).
pub const DTLS_HANDSHAKE_HEADER_LEN: usize = 12;

/// DTLS 1.0 version code (0xfeff, i.e. "1.0" in ones' complement).
pub const DTLS_1_0: u16 = 0xfeff;
/// DTLS 1.2 version code.
pub const DTLS_1_2: u16 = 0xfefd;
/// DTLS 1.3 version code.
pub const DTLS_1_3: u16 = 0xfefc;

/// Most handshake messages reassembled at the same time.
pub const MAX_PENDING_MESSAGES: usize = 8;
/// Most bytes announced by all messages under reassembly together.
pub const MAX_PENDING_BYTES: usize = 512 * 1024;
/// Most disjoint byte ranges tracked for one message: a peer cutting a message into more
/// pieces than this is not a real DTLS stack.
pub const MAX_FRAGMENT_RANGES: usize = 64;
/// Most complete messages queued for [`DtlsHandshakeReassembler::pop`].
pub const MAX_READY_MESSAGES: usize = 16;
/// How many completed message_seq values are remembered to drop retransmissions.
const COMPLETED_MEMORY: usize = 32;

/// A DTLS record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtlsRecordHeader {
    /// Content type (the TLS `CONTENT_*` values).
    pub content_type: u8,
    /// Record-layer version (0xfeff, 0xfefd).
    pub version: u16,
    /// Epoch: 0 for the plaintext handshake, higher once keys are in use.
    pub epoch: u16,
    /// 48-bit record sequence number.
    pub sequence_number: u64,
    /// Fragment length.
    pub length: u16,
}

/// One record of a datagram, borrowing its fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtlsRecord<'a> {
    /// The record header.
    pub header: DtlsRecordHeader,
    /// The record payload.
    pub fragment: &'a [u8],
}

/// Reads a DTLS record header from the start of `buf`.
pub fn parse_dtls_record_header(buf: &[u8]) -> Option<DtlsRecordHeader> {
    let mut r = Reader::new(buf);
    let content_type = r.u8()?;
    let version = r.u16()?;
    let epoch = r.u16()?;
    let seq_hi = r.u16()?;
    let seq_lo = r.u32()?;
    let length = r.u16()?;
    Some(DtlsRecordHeader {
        content_type,
        version,
        epoch,
        sequence_number: (u64::from(seq_hi) << 32) | u64::from(seq_lo),
        length,
    })
}

/// Iterates over the records of one UDP datagram.
pub fn dtls_records(datagram: &[u8]) -> DtlsRecords<'_> {
    DtlsRecords {
        r: Reader::new(datagram),
        done: false,
    }
}

/// Iterator returned by [`dtls_records`]. Yields an error and stops on a record that is cut
/// short or has an unknown content type. It stops quietly at a DTLS 1.3 unified header
/// (first bits `001`): those records are always encrypted and not needed here.
#[derive(Debug, Clone)]
pub struct DtlsRecords<'a> {
    r: Reader<'a>,
    done: bool,
}

impl<'a> Iterator for DtlsRecords<'a> {
    type Item = Result<DtlsRecord<'a>, TlsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.r.is_empty() {
            return None;
        }
        let first = self.r.peek_u8()?;
        if first & 0xe0 == 0x20 {
            self.done = true;
            return None;
        }
        let Some(header) = parse_dtls_record_header(self.r.rest()) else {
            self.done = true;
            return Some(Err(TlsError::Truncated {
                what: "DTLS record header",
            }));
        };
        if !(CONTENT_CHANGE_CIPHER_SPEC..=CONTENT_TLS12_CID).contains(&header.content_type)
            || header.version >> 8 != 0xfe
        {
            self.done = true;
            return Some(Err(TlsError::NotTls {
                content_type: header.content_type,
                version: header.version,
            }));
        }
        let total = DTLS_RECORD_HEADER_LEN + usize::from(header.length);
        match self.r.take(total) {
            Some(rec) => Some(Ok(DtlsRecord {
                header,
                fragment: rec.get(DTLS_RECORD_HEADER_LEN..).unwrap_or_default(),
            })),
            None => {
                self.done = true;
                Some(Err(TlsError::Truncated {
                    what: "DTLS record",
                }))
            }
        }
    }
}

/// The 12-byte header in front of every DTLS handshake fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtlsHandshakeHeader {
    /// Handshake type (the values in [`super::handshake`]).
    pub msg_type: u8,
    /// Length of the whole message body.
    pub length: u32,
    /// Message sequence number (increments per message, retransmissions repeat it).
    pub message_seq: u16,
    /// Where this fragment's bytes start in the message body.
    pub fragment_offset: u32,
    /// Bytes in this fragment.
    pub fragment_length: u32,
}

/// Reads a DTLS handshake header from the start of `buf`.
pub fn parse_dtls_handshake_header(buf: &[u8]) -> Option<DtlsHandshakeHeader> {
    let mut r = Reader::new(buf);
    Some(DtlsHandshakeHeader {
        msg_type: r.u8()?,
        length: r.u24()?,
        message_seq: r.u16()?,
        fragment_offset: r.u24()?,
        fragment_length: r.u24()?,
    })
}

/// True when the datagram plausibly starts with a plaintext DTLS handshake record carrying a
/// ClientHello, ServerHello or HelloVerifyRequest fragment that fits inside it. Detects DTLS
/// by content, whatever the UDP port.
pub fn looks_like_dtls(datagram: &[u8]) -> bool {
    let Some(h) = parse_dtls_record_header(datagram) else {
        return false;
    };
    if h.content_type != CONTENT_HANDSHAKE
        || !matches!(h.version, DTLS_1_0 | DTLS_1_2 | DTLS_1_3)
        || h.epoch != 0
    {
        return false;
    }
    let len = usize::from(h.length);
    let Some(fragment) = datagram.get(DTLS_RECORD_HEADER_LEN..DTLS_RECORD_HEADER_LEN + len) else {
        return false;
    };
    let Some(hs) = parse_dtls_handshake_header(fragment) else {
        return false;
    };
    matches!(hs.msg_type, 1..=3)
        && u64::from(hs.fragment_offset) + u64::from(hs.fragment_length) <= u64::from(hs.length)
        && hs.fragment_length as usize <= len - DTLS_HANDSHAKE_HEADER_LEN
}

/// A reassembled DTLS handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtlsHandshakeMessage {
    /// Handshake type.
    pub msg_type: u8,
    /// DTLS message sequence number (a ClientHello repeated with a cookie has seq 1).
    pub message_seq: u16,
    /// Message body, without the handshake header; parse a ClientHello with
    /// [`super::client_hello::ClientHello::parse_dtls`].
    pub body: Vec<u8>,
}

#[derive(Debug)]
struct Pending {
    msg_type: u8,
    message_seq: u16,
    length: usize,
    /// Grows to the furthest byte received, never beyond `length`.
    body: Vec<u8>,
    /// Received byte ranges, sorted, disjoint and non-adjacent.
    ranges: Vec<(usize, usize)>,
}

impl Pending {
    /// Records [start, end); returns false when the range limit would be exceeded.
    fn add_range(&mut self, start: usize, end: usize) -> bool {
        if start == end {
            return true;
        }
        let (mut s, mut e) = (start, end);
        // Keep ranges that neither overlap nor touch [s, e); absorb the others.
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for &(a, b) in &self.ranges {
            if b < s || a > e {
                kept.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        if kept.len() >= MAX_FRAGMENT_RANGES {
            return false;
        }
        let at = kept.partition_point(|&(a, _)| a < s);
        kept.insert(at, (s, e));
        self.ranges = kept;
        true
    }

    fn is_complete(&self) -> bool {
        self.length == 0 || self.ranges.as_slice() == [(0, self.length)]
    }
}

/// Rebuilds DTLS handshake messages from the plaintext handshake records of one direction
/// of a DTLS association.
///
/// Messages are released in the order they complete (a passive observer cannot wait for a
/// lost datagram). A message_seq that was already delivered is ignored when retransmitted.
/// Every resource is bounded (see the `MAX_*` constants); when a limit is hit the offending
/// fragment is rejected with an error and the state stays usable.
#[derive(Debug, Default)]
pub struct DtlsHandshakeReassembler {
    pending: Vec<Pending>,
    completed: VecDeque<u16>,
    ready: VecDeque<DtlsHandshakeMessage>,
}

impl DtlsHandshakeReassembler {
    /// An empty reassembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one UDP datagram: every epoch-0 handshake record in it is reassembled, other
    /// records are skipped. Records before a malformed one are still used.
    pub fn push_datagram(&mut self, datagram: &[u8]) -> Result<(), TlsError> {
        for rec in dtls_records(datagram) {
            let rec = rec?;
            if rec.header.content_type == CONTENT_HANDSHAKE && rec.header.epoch == 0 {
                self.push_handshake_record(rec.fragment)?;
            }
        }
        Ok(())
    }

    /// Feeds the payload of one plaintext handshake record (one or more fragments).
    pub fn push_handshake_record(&mut self, fragment: &[u8]) -> Result<(), TlsError> {
        let mut r = Reader::new(fragment);
        while !r.is_empty() {
            let h = r
                .take(DTLS_HANDSHAKE_HEADER_LEN)
                .and_then(parse_dtls_handshake_header)
                .ok_or(TlsError::Truncated {
                    what: "DTLS handshake header",
                })?;
            let data = r
                .take(h.fragment_length as usize)
                .ok_or(TlsError::Truncated {
                    what: "DTLS handshake fragment",
                })?;
            self.add_fragment(&h, data)?;
        }
        Ok(())
    }

    /// The next complete handshake message, if any.
    pub fn pop(&mut self) -> Option<DtlsHandshakeMessage> {
        self.ready.pop_front()
    }

    fn add_fragment(&mut self, h: &DtlsHandshakeHeader, data: &[u8]) -> Result<(), TlsError> {
        let length = h.length as usize;
        if length > MAX_HANDSHAKE_MESSAGE_LEN {
            return Err(TlsError::MessageTooLong {
                len: length,
                max: MAX_HANDSHAKE_MESSAGE_LEN,
            });
        }
        let start = h.fragment_offset as usize;
        let end = start + data.len();
        if end > length {
            return Err(TlsError::Malformed {
                what: "DTLS fragment beyond message end",
            });
        }
        if self.completed.contains(&h.message_seq) {
            return Ok(()); // retransmission of a delivered message
        }
        if self.ready.len() >= MAX_READY_MESSAGES {
            return Err(TlsError::ReassemblyLimit {
                what: "too many messages waiting to be popped",
            });
        }
        let idx = match self
            .pending
            .iter()
            .position(|p| p.message_seq == h.message_seq)
        {
            Some(i) => {
                let p = &self.pending[i];
                if p.msg_type != h.msg_type || p.length != length {
                    return Err(TlsError::InconsistentFragment {
                        message_seq: h.message_seq,
                    });
                }
                i
            }
            None => {
                if start == 0 && end == length {
                    // Unfragmented message: the common case, no bookkeeping.
                    self.deliver(h.msg_type, h.message_seq, data.to_vec());
                    return Ok(());
                }
                let announced: usize = self.pending.iter().map(|p| p.length).sum();
                if self.pending.len() >= MAX_PENDING_MESSAGES
                    || announced + length > MAX_PENDING_BYTES
                {
                    return Err(TlsError::ReassemblyLimit {
                        what: "too many handshake messages in flight",
                    });
                }
                self.pending.push(Pending {
                    msg_type: h.msg_type,
                    message_seq: h.message_seq,
                    length,
                    body: Vec::new(),
                    ranges: Vec::new(),
                });
                self.pending.len() - 1
            }
        };
        let p = &mut self.pending[idx];
        if !p.add_range(start, end) {
            return Err(TlsError::ReassemblyLimit {
                what: "too many fragments for one message",
            });
        }
        if p.body.len() < end {
            p.body.resize(end, 0);
        }
        if let Some(dst) = p.body.get_mut(start..end) {
            dst.copy_from_slice(data);
        }
        if p.is_complete() {
            let p = self.pending.swap_remove(idx);
            let mut body = p.body;
            body.resize(p.length, 0);
            self.deliver(p.msg_type, p.message_seq, body);
        }
        Ok(())
    }

    fn deliver(&mut self, msg_type: u8, message_seq: u16, body: Vec<u8>) {
        if self.completed.len() >= COMPLETED_MEMORY {
            self.completed.pop_front();
        }
        self.completed.push_back(message_seq);
        self.ready.push_back(DtlsHandshakeMessage {
            msg_type,
            message_seq,
            body,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::client_hello::ClientHello;
    use crate::tls::client_hello::tests::build_hello;

    fn hs_fragment(msg_type: u8, seq: u16, full: &[u8], off: usize, len: usize) -> Vec<u8> {
        let mut v = vec![msg_type];
        v.extend_from_slice(&(full.len() as u32).to_be_bytes()[1..]);
        v.extend_from_slice(&seq.to_be_bytes());
        v.extend_from_slice(&(off as u32).to_be_bytes()[1..]);
        v.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        v.extend_from_slice(&full[off..off + len]);
        v
    }

    fn record(ct: u8, epoch: u16, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![ct, 0xfe, 0xfd];
        v.extend_from_slice(&epoch.to_be_bytes());
        v.extend_from_slice(&seq.to_be_bytes()[2..]);
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn record_header_fields() {
        let rec = record(22, 1, 0x0102_0304_0506, &[1, 2, 3]);
        let h = parse_dtls_record_header(&rec).unwrap();
        assert_eq!(h.content_type, 22);
        assert_eq!(h.version, DTLS_1_2);
        assert_eq!(h.epoch, 1);
        assert_eq!(h.sequence_number, 0x0102_0304_0506);
        assert_eq!(h.length, 3);
    }

    #[test]
    fn several_records_per_datagram() {
        let mut dg = record(22, 0, 0, &[1, 2]);
        dg.extend(record(20, 0, 1, &[1]));
        dg.extend(record(23, 1, 0, &[9; 5]));
        let recs: Vec<_> = dtls_records(&dg).collect::<Result<_, _>>().unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].fragment, [1]);
        assert_eq!(recs[2].header.epoch, 1);
        // A DTLS 1.3 unified header ends the walk without error.
        dg.extend_from_slice(&[0x2c, 0, 0, 0, 5, 1, 2, 3, 4, 5]);
        assert_eq!(dtls_records(&dg).filter(|r| r.is_ok()).count(), 3);
        assert!(dtls_records(&dg).all(|r| r.is_ok()));
        // A cut record is an error.
        assert!(dtls_records(&dg[..dg.len() - 12]).any(|r| r.is_err()));
    }

    #[test]
    fn unfragmented_client_hello_and_detection() {
        let body = build_hello(0xfefd, Some(&[]), &[0xc02b, 0x0035], &[(0x0023, vec![])]);
        let dg = record(22, 0, 0, &hs_fragment(1, 0, &body, 0, body.len()));
        assert!(looks_like_dtls(&dg));
        assert!(!looks_like_dtls(&dg[..dg.len() - 1]));
        assert!(!looks_like_dtls(&record(23, 0, 0, &[0; 20])));
        assert!(!looks_like_dtls(&[
            22, 3, 1, 0, 5, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0
        ]));
        let mut re = DtlsHandshakeReassembler::new();
        re.push_datagram(&dg).unwrap();
        let m = re.pop().unwrap();
        assert_eq!((m.msg_type, m.message_seq), (1, 0));
        let ch = ClientHello::parse_dtls(&m.body).unwrap();
        assert_eq!(ch.cipher_suites.to_vec(), [0xc02b, 0x0035]);
        assert_eq!(ch.extensions.to_vec(), [0x0023]);
        // Retransmission is dropped.
        re.push_datagram(&dg).unwrap();
        assert_eq!(re.pop(), None);
    }

    #[test]
    fn out_of_order_overlapping_fragments() {
        let body: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let frags = [(600, 400), (0, 300), (250, 100), (300, 350)];
        let mut re = DtlsHandshakeReassembler::new();
        for (i, &(off, len)) in frags.iter().enumerate() {
            assert_eq!(re.pop(), None, "complete too early at {i}");
            let dg = record(22, 0, i as u64, &hs_fragment(11, 3, &body, off, len));
            re.push_datagram(&dg).unwrap();
        }
        let m = re.pop().unwrap();
        assert_eq!(m.message_seq, 3);
        assert_eq!(m.body, body);
        assert_eq!(re.pop(), None);
    }

    #[test]
    fn several_fragments_per_record_and_gap() {
        let body = vec![5u8; 100];
        let mut payload = hs_fragment(2, 1, &body, 0, 40);
        payload.extend(hs_fragment(2, 1, &body, 60, 40));
        let mut re = DtlsHandshakeReassembler::new();
        re.push_handshake_record(&payload).unwrap();
        assert_eq!(re.pop(), None, "gap 40..60 still missing");
        re.push_handshake_record(&hs_fragment(2, 1, &body, 39, 22))
            .unwrap();
        assert_eq!(re.pop().unwrap().body, body);
    }

    #[test]
    fn inconsistent_and_limits() {
        let body = vec![1u8; 100];
        let mut re = DtlsHandshakeReassembler::new();
        re.push_handshake_record(&hs_fragment(1, 0, &body, 0, 10))
            .unwrap();
        let other = vec![1u8; 99];
        assert!(matches!(
            re.push_handshake_record(&hs_fragment(1, 0, &other, 10, 10)),
            Err(TlsError::InconsistentFragment { message_seq: 0 })
        ));
        // Fragment beyond the end.
        let mut bad = hs_fragment(1, 5, &body, 0, 10);
        bad[6..9].copy_from_slice(&[0, 0, 95]);
        assert!(re.push_handshake_record(&bad).is_err());
        // Too many disjoint ranges.
        let big = vec![0u8; 1000];
        let mut re = DtlsHandshakeReassembler::new();
        let mut err = None;
        for k in 0..200 {
            if let Err(e) = re.push_handshake_record(&hs_fragment(11, 0, &big, k * 4, 1)) {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(TlsError::ReassemblyLimit { .. })));
        // Oversized announced length.
        let mut huge = hs_fragment(11, 0, &big, 0, 1);
        huge[1..4].copy_from_slice(&[0x10, 0, 0]);
        assert!(matches!(
            DtlsHandshakeReassembler::new().push_handshake_record(&huge),
            Err(TlsError::MessageTooLong { .. })
        ));
    }

    #[test]
    fn truncation_and_garbage_never_panic() {
        let body = build_hello(0xfefd, Some(&[1, 2]), &[0xc02b], &[(0x000f, vec![1])]);
        let mut dg = record(22, 0, 0, &hs_fragment(1, 0, &body, 0, 30));
        dg.extend(record(
            22,
            0,
            1,
            &hs_fragment(1, 0, &body, 30, body.len() - 30),
        ));
        for end in 0..=dg.len() {
            let _ = looks_like_dtls(&dg[..end]);
            let mut re = DtlsHandshakeReassembler::new();
            let _ = re.push_datagram(&dg[..end]);
            while let Some(m) = re.pop() {
                assert_eq!(end, dg.len());
                assert_eq!(m.body, body);
            }
        }
        let mut seed = 5u32;
        let mut re = DtlsHandshakeReassembler::new();
        let mut buf = dg.clone();
        for _ in 0..5000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = (seed >> 8) as usize % buf.len();
            buf[i] = (seed >> 16) as u8;
            let _ = looks_like_dtls(&buf);
            let _ = re.push_datagram(&buf);
            while re.pop().is_some() {}
            let _ = re.push_handshake_record(&buf);
            while re.pop().is_some() {}
        }
    }
}
