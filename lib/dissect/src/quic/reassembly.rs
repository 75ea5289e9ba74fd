//! Bounded reassembly of one direction's Initial CRYPTO stream, just far enough to cut out
//! its first TLS handshake message.
//!
//! Fragments arrive out of order, overlap and repeat (Chrome shuffles and splits its
//! ClientHello on purpose), so data is placed by offset into a buffer and the covered
//! ranges are tracked. Memory is capped twice: bytes beyond [`MAX_CRYPTO_BYTES`] are
//! dropped, and so is any fragment that would create more than [`MAX_FRAGMENTS`]
//! disjoint ranges.

/// Most CRYPTO bytes kept per direction. A ClientHello with a post-quantum key share is
/// a few KiB; 64 KiB leaves room for anything plausible while bounding hostile input.
pub(crate) const MAX_CRYPTO_BYTES: usize = 64 * 1024;
/// Most disjoint byte ranges tracked per direction before new islands are refused.
pub(crate) const MAX_FRAGMENTS: usize = 64;

/// What a fragment did to the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Insert {
    /// Stored (possibly clipped to the cap).
    Stored,
    /// Refused because of the byte or fragment cap.
    Dropped,
}

/// The state of the first handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FirstMessage {
    /// Not enough contiguous bytes yet.
    Pending,
    /// The complete message: 4-byte header plus body.
    Complete(Vec<u8>),
    /// The header announces a message larger than the cap: it can never complete.
    TooLarge,
}

/// Offset-addressed buffer for one direction's CRYPTO stream.
#[derive(Debug, Default)]
pub(crate) struct CryptoStream {
    buf: Vec<u8>,
    /// Sorted, disjoint, non-adjacent `[start, end)` ranges present in `buf`.
    ranges: Vec<(usize, usize)>,
}

impl CryptoStream {
    /// Forgets all data and releases the buffer (used after a Retry or a restart).
    pub(crate) fn reset(&mut self) {
        *self = CryptoStream::default();
    }

    /// Bytes currently buffered (for tests and memory accounting).
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The byte limit in force: the full cap until the first message's length is known,
    /// then just that message.
    fn limit(&self) -> usize {
        match self.message_len() {
            Some(n) if n <= MAX_CRYPTO_BYTES => n,
            _ => MAX_CRYPTO_BYTES,
        }
    }

    /// Places `data` at stream `offset`.
    pub(crate) fn insert(&mut self, offset: u64, data: &[u8]) -> Insert {
        if data.is_empty() {
            return Insert::Stored;
        }
        let limit = self.limit();
        let Ok(start) = usize::try_from(offset) else {
            return Insert::Dropped;
        };
        if start >= limit {
            return Insert::Dropped;
        }
        let end = start.saturating_add(data.len()).min(limit);
        let Some(data) = data.get(..end - start) else {
            return Insert::Dropped;
        };

        // Merge with every range that overlaps or touches [start, end).
        let (mut new_start, mut new_end) = (start, end);
        let mut touching = 0usize;
        for &(s, e) in &self.ranges {
            if s <= end && e >= start {
                touching += 1;
                new_start = new_start.min(s);
                new_end = new_end.max(e);
            }
        }
        if touching == 0 && self.ranges.len() >= MAX_FRAGMENTS {
            return Insert::Dropped;
        }
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        let Some(dst) = self.buf.get_mut(start..end) else {
            return Insert::Dropped;
        };
        dst.copy_from_slice(data);
        self.ranges.retain(|&(s, e)| !(s <= end && e >= start));
        let at = self.ranges.partition_point(|&(s, _)| s < new_start);
        self.ranges.insert(at, (new_start, new_end));
        Insert::Stored
    }

    /// Length of the contiguous data from offset 0.
    fn contiguous(&self) -> usize {
        match self.ranges.first() {
            Some(&(0, e)) => e,
            _ => 0,
        }
    }

    /// Total length (header + body) of the first handshake message, once its 4-byte
    /// header is contiguous.
    fn message_len(&self) -> Option<usize> {
        if self.contiguous() < 4 {
            return None;
        }
        let &[_, a, b, c] = self.buf.get(..4)? else {
            return None;
        };
        Some(4 + ((usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c)))
    }

    /// The handshake type byte of the first message, once known.
    pub(crate) fn message_type(&self) -> Option<u8> {
        if self.contiguous() == 0 {
            return None;
        }
        self.buf.first().copied()
    }

    /// Whether the first handshake message is complete, and if so a copy of it.
    pub(crate) fn first_message(&self) -> FirstMessage {
        let Some(len) = self.message_len() else {
            return FirstMessage::Pending;
        };
        if len > MAX_CRYPTO_BYTES {
            return FirstMessage::TooLarge;
        }
        if self.contiguous() < len {
            return FirstMessage::Pending;
        }
        match self.buf.get(..len) {
            Some(m) => FirstMessage::Complete(m.to_vec()),
            None => FirstMessage::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(body_len: usize) -> Vec<u8> {
        let mut m = vec![1u8, 0, (body_len >> 8) as u8, body_len as u8];
        m.extend((0..body_len).map(|i| i as u8));
        m
    }

    #[test]
    fn out_of_order_overlapping_duplicates() {
        let m = msg(100);
        let mut s = CryptoStream::default();
        assert_eq!(s.insert(50, &m[50..80]), Insert::Stored);
        assert_eq!(s.insert(60, &m[60..70]), Insert::Stored); // inside
        assert_eq!(s.insert(50, &m[50..80]), Insert::Stored); // duplicate
        assert_eq!(s.first_message(), FirstMessage::Pending);
        assert_eq!(s.insert(2, &m[2..55]), Insert::Stored); // overlaps left
        assert_eq!(s.insert(79, &m[79..104]), Insert::Stored); // overlaps right
        assert_eq!(s.first_message(), FirstMessage::Pending);
        assert_eq!(s.message_type(), None);
        assert_eq!(s.insert(0, &m[0..2]), Insert::Stored); // touches
        assert_eq!(s.ranges, vec![(0, 104)]);
        assert_eq!(s.message_type(), Some(1));
        assert_eq!(s.first_message(), FirstMessage::Complete(m));
    }

    #[test]
    fn trailing_data_is_clipped_once_length_known() {
        let m = msg(10);
        let mut s = CryptoStream::default();
        s.insert(0, &m[..4]);
        // Bytes after the first message are not needed and not kept.
        assert_eq!(s.insert(14, &[9; 100]), Insert::Dropped);
        let mut tail = m[4..].to_vec();
        tail.extend_from_slice(&[0xee; 50]);
        s.insert(4, &tail);
        assert_eq!(s.buffered(), 14);
        assert_eq!(s.first_message(), FirstMessage::Complete(m));
    }

    #[test]
    fn caps() {
        let mut s = CryptoStream::default();
        assert_eq!(s.insert(MAX_CRYPTO_BYTES as u64, &[1]), Insert::Dropped);
        assert_eq!(s.insert(u64::MAX, &[1]), Insert::Dropped);
        assert_eq!(
            s.insert(MAX_CRYPTO_BYTES as u64 - 1, &[1, 2, 3]),
            Insert::Stored
        );
        assert_eq!(s.buffered(), MAX_CRYPTO_BYTES);
        s.reset();
        for i in 0..MAX_FRAGMENTS {
            assert_eq!(s.insert(10 + 3 * i as u64, &[1]), Insert::Stored);
        }
        assert_eq!(
            s.insert(5, &[1]),
            Insert::Dropped,
            "new island past the cap"
        );
        assert_eq!(
            s.insert(11, &[1]),
            Insert::Stored,
            "touching an existing range"
        );
        assert_eq!(s.ranges.len(), MAX_FRAGMENTS);

        s.reset();
        s.insert(0, &[1, 0xff, 0xff, 0xff]);
        assert_eq!(s.first_message(), FirstMessage::TooLarge);
    }
}
