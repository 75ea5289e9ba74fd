//! TLS record framing (RFC 8446 §5.1, RFC 5246 §6.2) for a reassembled TCP byte stream.
//!
//! The fingerprints only need the plaintext handshake records at the start of a connection,
//! but the framing layer must survive whatever else flows on the stream (encrypted records,
//! alerts, a peer that is not speaking TLS at all) without growing without bound. It also
//! hosts [`TlsError`], the one error type shared by every TLS/DTLS parser in this module, so
//! that callers handle a single enum whichever layer rejected the input.

use crate::bytes::Reader;

/// Size of the TLS record header: content type (1), legacy version (2), length (2).
pub const RECORD_HEADER_LEN: usize = 5;

/// Largest record fragment accepted: 2^14 plus the 2048-byte expansion RFC 5246 §6.2.3
/// allows for protected records. Anything longer is a protocol violation (or not TLS), and
/// refusing it bounds the reader's buffer.
pub const MAX_RECORD_FRAGMENT_LEN: usize = (1 << 14) + 2048;

/// Largest plaintext fragment (RFC 8446 §5.1). Used by [`looks_like_tls_record`], since the
/// first record of a connection is always plaintext.
pub const MAX_PLAINTEXT_FRAGMENT_LEN: usize = 1 << 14;

/// Most bytes a [`RecordReader`] holds before refusing more input. A caller that pops every
/// complete record after each push never gets close: at most one partial record plus one
/// push stay buffered.
pub const MAX_RECORD_READER_BUFFER: usize = 1 << 20;

/// Record content type `change_cipher_spec`.
pub const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
/// Record content type `alert`.
pub const CONTENT_ALERT: u8 = 21;
/// Record content type `handshake`: the only one the fingerprints read.
pub const CONTENT_HANDSHAKE: u8 = 22;
/// Record content type `application_data` (also carries every TLS 1.3 protected record).
pub const CONTENT_APPLICATION_DATA: u8 = 23;
/// Record content type `heartbeat` (RFC 6520).
pub const CONTENT_HEARTBEAT: u8 = 24;
/// Record content type `tls12_cid` (RFC 9146), DTLS only.
pub const CONTENT_TLS12_CID: u8 = 25;

/// Why a TLS or DTLS parser rejected its input. Shared by every parser in
/// [`crate::tls`] so that the stream layer above can treat "not TLS" and "broken TLS" alike.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The input ended inside the named structure.
    #[error("truncated TLS {what}")]
    Truncated {
        /// The structure that was cut short.
        what: &'static str,
    },
    /// A structure is internally inconsistent (odd-length u16 list, bytes left over inside a
    /// length-delimited block, ...).
    #[error("malformed TLS {what}")]
    Malformed {
        /// The structure at fault.
        what: &'static str,
    },
    /// A record header announces more than [`MAX_RECORD_FRAGMENT_LEN`] bytes.
    #[error("TLS record of {len} bytes exceeds the limit of {max}")]
    RecordTooLong {
        /// Announced fragment length.
        len: usize,
        /// The limit that was exceeded.
        max: usize,
    },
    /// A handshake message announces more bytes than the reassembly limit.
    #[error("TLS handshake message of {len} bytes exceeds the limit of {max}")]
    MessageTooLong {
        /// Announced message length.
        len: usize,
        /// The limit that was exceeded.
        max: usize,
    },
    /// A record header that no TLS/DTLS peer would send: the stream is not TLS, or the reader
    /// lost record alignment.
    #[error("not a TLS record (content type {content_type}, version {version:#06x})")]
    NotTls {
        /// Content type byte found.
        content_type: u8,
        /// Version field found.
        version: u16,
    },
    /// The reader's buffer limit was reached because records were pushed but not popped.
    #[error("TLS reader buffer full ({buffered} bytes buffered, limit {max})")]
    BufferFull {
        /// Bytes held when the limit was hit.
        buffered: usize,
        /// The limit.
        max: usize,
    },
    /// DTLS fragments of one handshake message disagree about its type or length.
    #[error("inconsistent DTLS fragments for handshake message {message_seq}")]
    InconsistentFragment {
        /// The DTLS message sequence number at fault.
        message_seq: u16,
    },
    /// A DTLS reassembly resource limit (messages in flight, fragment ranges, queued
    /// messages) was reached.
    #[error("DTLS reassembly limit reached: {what}")]
    ReassemblyLimit {
        /// Which limit.
        what: &'static str,
    },
}

/// The five-byte header in front of every TLS record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Content type (see the `CONTENT_*` constants).
    pub content_type: u8,
    /// Record-layer version. Ignored by JA4 (only the hello's own version fields count).
    pub version: u16,
    /// Length of the fragment that follows the header.
    pub length: u16,
}

/// Reads a record header from the start of `buf`, or `None` if fewer than
/// [`RECORD_HEADER_LEN`] bytes are available. No plausibility check is made; see
/// [`looks_like_tls_record`] for that.
pub fn parse_record_header(buf: &[u8]) -> Option<RecordHeader> {
    let mut r = Reader::new(buf);
    Some(RecordHeader {
        content_type: r.u8()?,
        version: r.u16()?,
        length: r.u16()?,
    })
}

/// True when `buf` plausibly starts a TLS handshake: a handshake record with an SSL 3.0 to
/// TLS 1.3 version and a plaintext-sized, non-zero length, followed (when the sixth byte is
/// available) by a ClientHello or ServerHello. Used to find TLS by content rather than by
/// port, e.g. after a SOCKS or HTTP CONNECT preamble. Needs at least [`RECORD_HEADER_LEN`]
/// bytes; with fewer it answers `false`, so callers should wait for more data.
pub fn looks_like_tls_record(buf: &[u8]) -> bool {
    let Some(h) = parse_record_header(buf) else {
        return false;
    };
    if h.content_type != CONTENT_HANDSHAKE
        || !(0x0300..=0x0304).contains(&h.version)
        || h.length == 0
        || usize::from(h.length) > MAX_PLAINTEXT_FRAGMENT_LEN
    {
        return false;
    }
    match buf.get(RECORD_HEADER_LEN) {
        Some(&t) => t == 1 || t == 2,
        None => true,
    }
}

/// A complete record with an owned fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record header.
    pub header: RecordHeader,
    /// The record payload (plaintext or ciphertext, as found on the wire).
    pub fragment: Vec<u8>,
}

/// A complete record borrowed from a [`RecordReader`]'s buffer; valid until the next call on
/// the reader. Lets the hot path inspect records without copying them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The record header.
    pub header: RecordHeader,
    /// The record payload.
    pub fragment: &'a [u8],
}

/// Incremental record splitter for one direction of a TCP stream.
///
/// Push contiguous stream bytes in order; pop complete records. Memory stays bounded: a
/// record header announcing more than [`MAX_RECORD_FRAGMENT_LEN`] bytes, or a header no TLS
/// peer would send, puts the reader into a permanent error state (every later call returns
/// the same error), because a byte stream that lost record alignment cannot be resynchronised
/// reliably.
#[derive(Debug, Default)]
pub struct RecordReader {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    error: Option<TlsError>,
}

impl RecordReader {
    /// An empty reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends stream bytes. Fails (permanently) when the reader is already in error, or
    /// when more than [`MAX_RECORD_READER_BUFFER`] bytes would be held.
    pub fn push(&mut self, data: &[u8]) -> Result<(), TlsError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let total = self.buf.len().saturating_add(data.len());
        if total > MAX_RECORD_READER_BUFFER {
            let e = TlsError::BufferFull {
                buffered: total,
                max: MAX_RECORD_READER_BUFFER,
            };
            self.fail(e.clone());
            return Err(e);
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// The next complete record, borrowed; `Ok(None)` when more bytes are needed.
    pub fn next_record(&mut self) -> Result<Option<RecordRef<'_>>, TlsError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let pending = self.buf.get(self.start..).unwrap_or_default();
        let Some(header) = parse_record_header(pending) else {
            return Ok(None);
        };
        if let Err(e) = check_header(&header) {
            self.fail(e.clone());
            return Err(e);
        }
        let end = RECORD_HEADER_LEN + usize::from(header.length);
        if pending.len() < end {
            return Ok(None);
        }
        let begin = self.start + RECORD_HEADER_LEN;
        self.start += end;
        let fragment = self
            .buf
            .get(begin..self.start)
            .ok_or(TlsError::Truncated { what: "record" })?;
        Ok(Some(RecordRef { header, fragment }))
    }

    /// The next complete record, copied out; `Ok(None)` when more bytes are needed.
    pub fn pop(&mut self) -> Result<Option<Record>, TlsError> {
        Ok(self.next_record()?.map(|r| Record {
            header: r.header,
            fragment: r.fragment.to_vec(),
        }))
    }

    /// Bytes received but not yet returned as part of a record.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// The error that stopped the reader, if any.
    pub fn error(&self) -> Option<&TlsError> {
        self.error.as_ref()
    }

    fn fail(&mut self, e: TlsError) {
        self.error = Some(e);
        self.buf = Vec::new();
        self.start = 0;
    }
}

/// Rejects headers that no TLS peer sends, so garbage is noticed at the first record rather
/// than after buffering up to the length limit.
fn check_header(h: &RecordHeader) -> Result<(), TlsError> {
    if !(CONTENT_CHANGE_CIPHER_SPEC..=CONTENT_HEARTBEAT).contains(&h.content_type)
        || h.version >> 8 != 3
    {
        return Err(TlsError::NotTls {
            content_type: h.content_type,
            version: h.version,
        });
    }
    let len = usize::from(h.length);
    if len > MAX_RECORD_FRAGMENT_LEN {
        return Err(TlsError::RecordTooLong {
            len,
            max: MAX_RECORD_FRAGMENT_LEN,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ct: u8, version: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![ct];
        v.extend_from_slice(&version.to_be_bytes());
        v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn header_parse() {
        let h = parse_record_header(&[22, 3, 1, 0x02, 0x00, 1]).unwrap();
        assert_eq!(
            h,
            RecordHeader {
                content_type: 22,
                version: 0x0301,
                length: 512
            }
        );
        assert_eq!(parse_record_header(&[22, 3, 1, 0]), None);
    }

    #[test]
    fn detection() {
        assert!(looks_like_tls_record(&[22, 3, 1, 0, 200, 1, 0, 0, 196]));
        assert!(looks_like_tls_record(&[22, 3, 3, 0, 90, 2]));
        assert!(
            looks_like_tls_record(&[22, 3, 4, 0, 90]),
            "type byte not yet available"
        );
        assert!(!looks_like_tls_record(&[22, 3, 1, 0]), "too short to judge");
        assert!(
            !looks_like_tls_record(&[23, 3, 3, 0, 90, 1]),
            "not handshake"
        );
        assert!(
            !looks_like_tls_record(&[22, 3, 5, 0, 90, 1]),
            "unknown version"
        );
        assert!(
            !looks_like_tls_record(&[22, 2, 0, 0, 90, 1]),
            "SSLv2-ish version"
        );
        assert!(!looks_like_tls_record(&[22, 3, 1, 0, 0, 1]), "empty record");
        assert!(!looks_like_tls_record(&[22, 3, 1, 0x40, 1, 1]), "over 2^14");
        assert!(
            !looks_like_tls_record(&[22, 3, 1, 0, 90, 11]),
            "not a hello"
        );
        assert!(!looks_like_tls_record(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn reader_splits_and_joins() {
        let mut stream = record(22, 0x0301, b"hello");
        stream.extend(record(20, 0x0303, &[1]));
        stream.extend(record(23, 0x0303, &[9; 300]));
        // Feed one byte at a time: records must come out whole and in order.
        let mut r = RecordReader::new();
        let mut out = Vec::new();
        for b in &stream {
            r.push(std::slice::from_ref(b)).unwrap();
            while let Some(rec) = r.pop().unwrap() {
                out.push(rec);
            }
        }
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].header.content_type, 22);
        assert_eq!(out[0].fragment, b"hello");
        assert_eq!(out[1].fragment, [1]);
        assert_eq!(out[2].fragment.len(), 300);
        assert_eq!(r.buffered(), 0);

        // All at once.
        let mut r = RecordReader::new();
        r.push(&stream).unwrap();
        let mut n = 0;
        while let Some(rec) = r.next_record().unwrap() {
            n += 1;
            assert!(!rec.fragment.is_empty());
        }
        assert_eq!(n, 3);
    }

    #[test]
    fn reader_rejects_oversized_and_stays_failed() {
        let mut r = RecordReader::new();
        r.push(&[23, 3, 3, 0x48, 0x01]).unwrap(); // 18433 > 2^14 + 2048
        assert!(matches!(
            r.pop(),
            Err(TlsError::RecordTooLong { len: 18433, .. })
        ));
        assert!(r.push(&record(22, 0x0301, b"x")).is_err());
        assert!(r.pop().is_err());

        // The largest allowed record passes.
        let mut r = RecordReader::new();
        r.push(&record(23, 0x0303, &vec![0; MAX_RECORD_FRAGMENT_LEN]))
            .unwrap();
        assert_eq!(
            r.pop().unwrap().unwrap().fragment.len(),
            MAX_RECORD_FRAGMENT_LEN
        );
    }

    #[test]
    fn reader_rejects_non_tls() {
        let mut r = RecordReader::new();
        r.push(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(matches!(r.pop(), Err(TlsError::NotTls { .. })));
        assert!(matches!(r.next_record(), Err(TlsError::NotTls { .. })));
    }

    #[test]
    fn reader_bounds_buffer() {
        let mut r = RecordReader::new();
        let chunk = vec![0u8; 600 * 1024];
        r.push(&chunk).unwrap();
        assert!(matches!(r.push(&chunk), Err(TlsError::BufferFull { .. })));
        assert!(r.push(&[1]).is_err());
    }

    #[test]
    fn truncation_and_garbage_never_panic() {
        let mut stream = record(22, 0x0301, &[1, 0, 0, 1, 0xaa]);
        stream.extend(record(23, 0x0303, &[7; 40]));
        for end in 0..=stream.len() {
            let prefix = &stream[..end];
            let _ = parse_record_header(prefix);
            let _ = looks_like_tls_record(prefix);
            let mut r = RecordReader::new();
            let _ = r.push(prefix);
            while let Ok(Some(_)) = r.pop() {}
        }
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut buf = vec![0u8; (seed % 64) as usize];
            for b in &mut buf {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *b = (seed >> 16) as u8;
            }
            let _ = looks_like_tls_record(&buf);
            let mut r = RecordReader::new();
            let _ = r.push(&buf);
            while let Ok(Some(_)) = r.pop() {}
        }
    }
}
