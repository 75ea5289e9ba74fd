//! The frames that may appear in an Initial packet (RFC 9000 §12.4, §19).
//!
//! Only the Initial-space subset is understood; anything else ends the walk with
//! [`QuicError::UnknownFrame`], because without knowing a frame's layout its length is
//! unknown and the rest of the payload cannot be located.

use super::QuicError;
use crate::bytes::Reader;

/// Largest value a QUIC varint can carry; stream offsets may not pass it.
const MAX_VARINT: u64 = (1 << 62) - 1;

/// One frame of a decrypted Initial payload, borrowing its data from the plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A run of PADDING bytes (0x00), folded into one item.
    Padding {
        /// Number of padding bytes in the run.
        len: usize,
    },
    /// PING (0x01).
    Ping,
    /// ACK (0x02) or ACK_ECN (0x03); the ranges are validated and skipped.
    Ack {
        /// Largest Acknowledged.
        largest: u64,
        /// ACK Range Count (additional ranges after the first).
        range_count: u64,
        /// ECT(0), ECT(1) and ECN-CE counts when the frame type is 0x03.
        ecn: Option<[u64; 3]>,
    },
    /// CRYPTO (0x06): a piece of the TLS handshake stream.
    Crypto {
        /// Stream offset of `data`.
        offset: u64,
        /// The handshake bytes.
        data: &'a [u8],
    },
    /// CONNECTION_CLOSE (0x1c transport, 0x1d application).
    ConnectionClose {
        /// Error code.
        error_code: u64,
        /// Frame type that triggered the error (0x1c only).
        frame_type: Option<u64>,
        /// Reason phrase, raw bytes.
        reason: &'a [u8],
    },
}

/// Iterator over the frames of a decrypted Initial payload. Stops after the first error.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    r: Reader<'a>,
    failed: bool,
}

/// Walks the frames of a decrypted Initial payload without allocating.
pub fn parse_frames(payload: &[u8]) -> Frames<'_> {
    Frames {
        r: Reader::new(payload),
        failed: false,
    }
}

impl<'a> Frames<'a> {
    fn next_frame(&mut self) -> Result<Frame<'a>, QuicError> {
        let r = &mut self.r;
        let ty = r.varint().ok_or(QuicError::Truncated)?;
        match ty {
            0x00 => {
                let mut len = 1;
                while r.peek_u8() == Some(0) {
                    r.skip(1);
                    len += 1;
                }
                Ok(Frame::Padding { len })
            }
            0x01 => Ok(Frame::Ping),
            0x02 | 0x03 => {
                let bad = QuicError::MalformedFrame("ACK");
                let largest = r.varint().ok_or(bad.clone())?;
                let _delay = r.varint().ok_or(bad.clone())?;
                let range_count = r.varint().ok_or(bad.clone())?;
                let first_range = r.varint().ok_or(bad.clone())?;
                if first_range > largest {
                    return Err(bad);
                }
                // Each further range takes at least two bytes; a count larger than the
                // remaining payload allows is malformed, checked before looping.
                if range_count > (r.remaining() / 2) as u64 {
                    return Err(bad);
                }
                for _ in 0..range_count {
                    r.varint().ok_or(bad.clone())?;
                    r.varint().ok_or(bad.clone())?;
                }
                let ecn = if ty == 0x03 {
                    Some([
                        r.varint().ok_or(bad.clone())?,
                        r.varint().ok_or(bad.clone())?,
                        r.varint().ok_or(bad)?,
                    ])
                } else {
                    None
                };
                Ok(Frame::Ack {
                    largest,
                    range_count,
                    ecn,
                })
            }
            0x06 => {
                let bad = QuicError::MalformedFrame("CRYPTO");
                let offset = r.varint().ok_or(bad.clone())?;
                let len = r.varint().ok_or(bad.clone())?;
                if offset.checked_add(len).is_none_or(|end| end > MAX_VARINT) {
                    return Err(bad);
                }
                let len = usize::try_from(len).map_err(|_| bad.clone())?;
                let data = r.take(len).ok_or(bad)?;
                Ok(Frame::Crypto { offset, data })
            }
            0x1c | 0x1d => {
                let bad = QuicError::MalformedFrame("CONNECTION_CLOSE");
                let error_code = r.varint().ok_or(bad.clone())?;
                let frame_type = if ty == 0x1c {
                    Some(r.varint().ok_or(bad.clone())?)
                } else {
                    None
                };
                let len = r.varint().ok_or(bad.clone())?;
                let len = usize::try_from(len).map_err(|_| bad.clone())?;
                let reason = r.take(len).ok_or(bad)?;
                Ok(Frame::ConnectionClose {
                    error_code,
                    frame_type,
                    reason,
                })
            }
            other => Err(QuicError::UnknownFrame(other)),
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, QuicError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.is_empty() {
            return None;
        }
        let item = self.next_frame();
        self.failed = item.is_err();
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(payload: &[u8]) -> Vec<Result<Frame<'_>, QuicError>> {
        parse_frames(payload).collect()
    }

    #[test]
    fn mixed_frames() {
        let payload = [
            0x01, // PING
            0x00, 0x00, 0x00, // PADDING x3
            0x03, 0x0a, 0x00, 0x01, 0x02, 0x01, 0x01, 0x05, 0x06, 0x07, // ACK_ECN
            0x06, 0x40, 0x05, 0x02, 0xaa, 0xbb, // CRYPTO offset 5, len 2
            0x1c, 0x0a, 0x06, 0x02, b'n', b'o', // CONNECTION_CLOSE
            0x1d, 0x01, 0x00, // application CONNECTION_CLOSE
            0x08, 0x00, // STREAM: unknown in Initial
            0x01,
        ];
        let got = all(&payload);
        assert_eq!(
            got,
            vec![
                Ok(Frame::Ping),
                Ok(Frame::Padding { len: 3 }),
                Ok(Frame::Ack {
                    largest: 10,
                    range_count: 1,
                    ecn: Some([5, 6, 7])
                }),
                Ok(Frame::Crypto {
                    offset: 5,
                    data: &[0xaa, 0xbb]
                }),
                Ok(Frame::ConnectionClose {
                    error_code: 10,
                    frame_type: Some(6),
                    reason: b"no"
                }),
                Ok(Frame::ConnectionClose {
                    error_code: 1,
                    frame_type: None,
                    reason: b""
                }),
                Err(QuicError::UnknownFrame(8)),
            ]
        );
    }

    #[test]
    fn malformed_frames() {
        // ACK with a huge range count.
        assert_eq!(
            all(&[0x02, 0x05, 0x00, 0x80, 0xff, 0xff, 0xff, 0x00]),
            vec![Err(QuicError::MalformedFrame("ACK"))]
        );
        // First range larger than Largest Acknowledged.
        assert_eq!(
            all(&[0x02, 0x01, 0x00, 0x00, 0x02]),
            vec![Err(QuicError::MalformedFrame("ACK"))]
        );
        // CRYPTO data past the payload.
        assert_eq!(
            all(&[0x06, 0x00, 0x05, 0x01]),
            vec![Err(QuicError::MalformedFrame("CRYPTO"))]
        );
        // CRYPTO offset + length overflowing 2^62.
        assert_eq!(
            all(&[
                0x06, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00
            ]),
            vec![Err(QuicError::MalformedFrame("CRYPTO"))]
        );
        assert!(all(&[]).is_empty());
    }
}
