//! The truncated hash every JA4+ method uses for its hashed sections.

use sha2::{Digest, Sha256};

/// The hash of an empty section. The methods print this instead of the SHA-256 of the
/// empty string, so that "nothing there" is recognisable at a glance.
pub const EMPTY_HASH: &str = "000000000000";

/// Byte → two lowercase hex digits, so formatting a value is two table loads instead of
/// four shifts and lookups.
pub(crate) const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0x0f]];
        i += 1;
    }
    t
};

/// Computes [`hash12`] over text written piece by piece, without building the text.
///
/// JA4 hashes comma-separated hex lists; writing them straight into the hash (through a
/// small stack buffer, so SHA-256 sees few large updates rather than one per value) saves
/// building and freeing a string per section on the per-connection hot path.
pub struct Hash12Writer {
    sha: Sha256,
    buf: [u8; 256],
    len: usize,
    written: bool,
}

impl std::fmt::Debug for Hash12Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hash12Writer")
            .field("buffered", &self.len)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl Default for Hash12Writer {
    fn default() -> Self {
        Hash12Writer {
            sha: Sha256::new(),
            buf: [0; 256],
            len: 0,
            written: false,
        }
    }
}

impl Hash12Writer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes to the hashed text.
    #[inline]
    pub fn write(&mut self, bytes: &[u8]) {
        self.written |= !bytes.is_empty();
        if self.len + bytes.len() > self.buf.len() {
            self.flush();
            if bytes.len() > self.buf.len() {
                self.sha.update(bytes);
                return;
            }
        }
        self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn flush(&mut self) {
        self.sha.update(&self.buf[..self.len]);
        self.len = 0;
    }

    /// The 12 hex digits: the first six bytes of SHA-256, or [`EMPTY_HASH`] when nothing
    /// was written.
    pub fn finish(mut self) -> [u8; 12] {
        let mut out = [b'0'; 12];
        if !self.written {
            return out;
        }
        self.flush();
        let digest = self.sha.finalize();
        for (pair, b) in out.chunks_exact_mut(2).zip(&digest[..6]) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
        }
        out
    }
}

/// First 12 lowercase hex digits of SHA-256 over `input`, or [`EMPTY_HASH`] when the input
/// is empty.
pub fn hash12(input: &str) -> String {
    let mut h = Hash12Writer::new();
    h.write(input.as_bytes());
    h.finish().iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_zeroes() {
        assert_eq!(hash12(""), "000000000000");
        assert_eq!(Hash12Writer::new().finish(), *b"000000000000");
    }

    #[test]
    fn spec_cipher_vector() {
        assert_eq!(
            hash12("002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9"),
            "8daaf6152771"
        );
    }

    /// Piecewise writes of any size, across the staging buffer's edge, hash like one write.
    #[test]
    fn piecewise_equals_whole() {
        let text: String = (0..1000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        for piece in [1, 5, 255, 256, 257, 999] {
            let mut h = Hash12Writer::new();
            for chunk in text.as_bytes().chunks(piece) {
                h.write(chunk);
                h.write(b"");
            }
            assert_eq!(h.finish().as_slice(), hash12(&text).as_bytes(), "{piece}");
        }
        assert_eq!(HEX_PAIRS[0xa5], *b"a5");
    }
}
