//! HPACK header-block decoding (RFC 7541), decoder side only.
//!
//! One [`Decoder`] per direction of a connection: the encoder at the other end numbers its
//! dynamic-table entries from the first header block it ever sent, so a decoder that missed a
//! block (capture started mid-connection, a lost segment) will read wrong names from then on.
//! Any error therefore leaves the decoder unusable for that connection; callers drop it.
//!
//! Resource limits, because header blocks come from untrusted peers: the dynamic table never
//! exceeds [`MAX_TABLE_SIZE`] (64 KiB, well above the 4 KiB default that browsers use), a block
//! is at most [`MAX_BLOCK_LEN`], a decoded list at most [`MAX_FIELDS`] fields and
//! [`MAX_DECODED_LEN`] bytes (indexed fields can repeat a large table entry cheaply, so the
//! output needs its own cap).

use std::collections::VecDeque;

use thiserror::Error;

use super::huffman::{self, HuffmanError};
use crate::bytes::Reader;

/// Dynamic table size an encoder starts with (`SETTINGS_HEADER_TABLE_SIZE` default).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Largest dynamic table size this decoder accepts in a size update.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;

/// Largest header block (HEADERS + CONTINUATION fragments) accepted.
pub const MAX_BLOCK_LEN: usize = 256 * 1024;

/// Largest number of fields in one decoded block.
pub const MAX_FIELDS: usize = 1000;

/// Largest total of name and value bytes in one decoded block.
pub const MAX_DECODED_LEN: usize = 1024 * 1024;

/// Per-entry overhead counted in the table size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// A decoded header field: (name, value), both raw bytes.
pub type HeaderField = (Vec<u8>, Vec<u8>);

/// Why a header block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HpackError {
    /// The block ends inside a field representation.
    #[error("header block truncated")]
    Truncated,
    /// A prefix integer longer than this decoder accepts.
    #[error("HPACK integer overflow")]
    IntegerOverflow,
    /// Index 0, or an index past the end of the static and dynamic tables.
    #[error("invalid HPACK table index {0}")]
    InvalidIndex(u64),
    /// A dynamic table size update above the allowed maximum.
    #[error("dynamic table size {0} exceeds the allowed maximum")]
    TableSizeTooLarge(u64),
    /// A dynamic table size update after the first field of a block (RFC 7541 §4.2).
    #[error("dynamic table size update after a header field")]
    LateTableSizeUpdate,
    /// A bad Huffman-coded string.
    #[error("Huffman: {0}")]
    Huffman(#[from] HuffmanError),
    /// The block is longer than [`MAX_BLOCK_LEN`].
    #[error("header block longer than {MAX_BLOCK_LEN} bytes")]
    BlockTooLarge,
    /// More than [`MAX_FIELDS`] fields.
    #[error("more than {MAX_FIELDS} header fields")]
    TooManyFields,
    /// The decoded fields add up to more than [`MAX_DECODED_LEN`] bytes.
    #[error("decoded header list larger than {MAX_DECODED_LEN} bytes")]
    DecodedTooLarge,
}

/// The HPACK static table (RFC 7541 Appendix A); entry `i` is index `i + 1`.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// HPACK decoder state for one direction of one connection: the dynamic table.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Newest entry first (dynamic index 62 is `entries[0]`).
    entries: VecDeque<HeaderField>,
    /// Sum of entry sizes (name + value + 32 each).
    size: usize,
    /// Current maximum set by the encoder's size updates.
    max_size: usize,
    /// Ceiling for size updates (the peer's SETTINGS_HEADER_TABLE_SIZE, capped).
    limit: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with the default 4096-byte table, accepting size updates up to
    /// [`MAX_TABLE_SIZE`] (the capture usually does not tell us the peer's setting).
    pub fn new() -> Self {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE,
            limit: MAX_TABLE_SIZE,
        }
    }

    /// Lowers or raises the ceiling for size updates, e.g. from the
    /// `SETTINGS_HEADER_TABLE_SIZE` the decoding side announced; capped at
    /// [`MAX_TABLE_SIZE`].
    pub fn set_size_limit(&mut self, limit: usize) {
        self.limit = limit.min(MAX_TABLE_SIZE);
    }

    /// Bytes currently held by the dynamic table, as RFC 7541 counts them.
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// Number of entries in the dynamic table.
    pub fn table_len(&self) -> usize {
        self.entries.len()
    }

    /// The dynamic table's current maximum size.
    pub fn max_table_size(&self) -> usize {
        self.max_size
    }

    /// Decodes one complete header block, updating the dynamic table.
    ///
    /// Field order and duplicates are preserved. On error the table may be half-updated:
    /// stop using this decoder.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<HeaderField>, HpackError> {
        if block.len() > MAX_BLOCK_LEN {
            return Err(HpackError::BlockTooLarge);
        }
        let mut r = Reader::new(block);
        let mut fields: Vec<HeaderField> = Vec::new();
        let mut decoded_len = 0usize;
        while let Some(first) = r.u8() {
            let field = if first & 0x80 != 0 {
                // Indexed header field (§6.1).
                let index = read_int(&mut r, first, 7)?;
                let (name, value) = self.lookup(index)?;
                (name.to_vec(), value.to_vec())
            } else if first & 0xc0 == 0x40 {
                // Literal with incremental indexing (§6.2.1).
                let field = self.read_literal(&mut r, first, 6)?;
                self.insert(field.clone());
                field
            } else if first & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the first field.
                if !fields.is_empty() {
                    return Err(HpackError::LateTableSizeUpdate);
                }
                let size = read_int(&mut r, first, 5)?;
                let size_usize = usize::try_from(size)
                    .ok()
                    .filter(|s| *s <= self.limit)
                    .ok_or(HpackError::TableSizeTooLarge(size))?;
                self.max_size = size_usize;
                self.evict();
                continue;
            } else {
                // Literal without indexing (0000) or never indexed (0001) (§6.2.2, §6.2.3).
                self.read_literal(&mut r, first, 4)?
            };
            if fields.len() >= MAX_FIELDS {
                return Err(HpackError::TooManyFields);
            }
            decoded_len = decoded_len
                .saturating_add(field.0.len())
                .saturating_add(field.1.len());
            if decoded_len > MAX_DECODED_LEN {
                return Err(HpackError::DecodedTooLarge);
            }
            fields.push(field);
        }
        Ok(fields)
    }

    /// Name and value at a combined static/dynamic index.
    fn lookup(&self, index: u64) -> Result<(&[u8], &[u8]), HpackError> {
        let invalid = HpackError::InvalidIndex(index);
        let i = usize::try_from(index).map_err(|_| invalid.clone())?;
        if i == 0 {
            return Err(invalid);
        }
        if let Some((n, v)) = STATIC_TABLE.get(i - 1) {
            return Ok((n.as_bytes(), v.as_bytes()));
        }
        self.entries
            .get(i - 1 - STATIC_TABLE.len())
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .ok_or(invalid)
    }

    /// A literal field whose name is either indexed (non-zero prefix) or follows as a string.
    fn read_literal(
        &self,
        r: &mut Reader<'_>,
        first: u8,
        prefix_bits: u8,
    ) -> Result<HeaderField, HpackError> {
        let name_index = read_int(r, first, prefix_bits)?;
        let name = if name_index == 0 {
            read_string(r)?
        } else {
            self.lookup(name_index)?.0.to_vec()
        };
        let value = read_string(r)?;
        Ok((name, value))
    }

    /// Adds an entry at the front, evicting from the back (RFC 7541 §4.4). An entry larger
    /// than the whole table empties it and is not stored.
    fn insert(&mut self, field: HeaderField) {
        let entry_size = field.0.len() + field.1.len() + ENTRY_OVERHEAD;
        if entry_size > self.max_size {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.size += entry_size;
        self.entries.push_front(field);
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max_size {
            match self.entries.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + ENTRY_OVERHEAD,
                None => {
                    self.size = 0;
                    break;
                }
            }
        }
    }
}

/// A prefix-coded integer (RFC 7541 §5.1) whose first byte has already been read.
fn read_int(r: &mut Reader<'_>, first: u8, prefix_bits: u8) -> Result<u64, HpackError> {
    let max_prefix = (1u16 << prefix_bits) - 1;
    let mut value = u64::from(u16::from(first) & max_prefix);
    if value < u64::from(max_prefix) {
        return Ok(value);
    }
    // Up to five continuation bytes: enough for any length or index that fits our caps, and
    // small enough that the value cannot overflow.
    for shift in (0..35).step_by(7) {
        let b = r.u8().ok_or(HpackError::Truncated)?;
        value += u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(HpackError::IntegerOverflow)
}

/// A string literal (RFC 7541 §5.2), Huffman-decoded when its H bit is set. The length is
/// checked against the bytes present before anything is allocated.
fn read_string(r: &mut Reader<'_>) -> Result<Vec<u8>, HpackError> {
    let first = r.u8().ok_or(HpackError::Truncated)?;
    let len = read_int(r, first, 7)?;
    let len = usize::try_from(len).map_err(|_| HpackError::Truncated)?;
    let raw = r.take(len).ok_or(HpackError::Truncated)?;
    if first & 0x80 != 0 {
        let mut out = Vec::with_capacity(raw.len() + raw.len() / 2);
        huffman::decode(raw, &mut out)?;
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace([' ', '\n'], "")).unwrap()
    }

    fn fields(list: &[(&str, &str)]) -> Vec<HeaderField> {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn table(d: &Decoder) -> Vec<(String, String)> {
        d.entries
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .collect()
    }

    /// RFC 7541 C.3 (plain) and C.4 (Huffman) encode the same three requests; both must give
    /// the same fields and the same dynamic table after each block.
    #[test]
    fn rfc7541_c3_c4_requests() {
        let c3 = [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ];
        let c4 = [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ];
        for blocks in [c3, c4] {
            let mut d = Decoder::new();
            assert_eq!(
                d.decode(&unhex(blocks[0])).unwrap(),
                fields(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com"),
                ])
            );
            assert_eq!(d.table_size(), 57);
            assert_eq!(
                d.decode(&unhex(blocks[1])).unwrap(),
                fields(&[
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", "/"),
                    (":authority", "www.example.com"),
                    ("cache-control", "no-cache"),
                ])
            );
            assert_eq!(d.table_size(), 110);
            assert_eq!(
                d.decode(&unhex(blocks[2])).unwrap(),
                fields(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value"),
                ])
            );
            assert_eq!(d.table_size(), 164);
            assert_eq!(
                table(&d),
                [
                    ("custom-key".to_string(), "custom-value".to_string()),
                    ("cache-control".to_string(), "no-cache".to_string()),
                    (":authority".to_string(), "www.example.com".to_string()),
                ]
            );
        }
    }

    /// RFC 7541 C.5 (plain) and C.6 (Huffman): responses with a 256-byte table, so entries
    /// are evicted along the way.
    #[test]
    fn rfc7541_c5_c6_responses_with_eviction() {
        let c5 = [
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 \
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 \
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d \
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 \
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e \
             3d31",
        ];
        let c6 = [
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ];
        let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
        let date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
        let loc = "https://www.example.com";
        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        for blocks in [c5, c6] {
            let mut d = Decoder::new();
            // The example's encoder uses a 256-byte table.
            d.max_size = 256;
            assert_eq!(
                d.decode(&unhex(blocks[0])).unwrap(),
                fields(&[
                    (":status", "302"),
                    ("cache-control", "private"),
                    ("date", date1),
                    ("location", loc),
                ])
            );
            assert_eq!(d.table_size(), 222);
            assert_eq!(
                d.decode(&unhex(blocks[1])).unwrap(),
                fields(&[
                    (":status", "307"),
                    ("cache-control", "private"),
                    ("date", date1),
                    ("location", loc),
                ])
            );
            assert_eq!(d.table_size(), 222);
            assert_eq!(table(&d)[0], (":status".to_string(), "307".to_string()));
            assert_eq!(
                d.decode(&unhex(blocks[2])).unwrap(),
                fields(&[
                    (":status", "200"),
                    ("cache-control", "private"),
                    ("date", date2),
                    ("location", loc),
                    ("content-encoding", "gzip"),
                    ("set-cookie", cookie),
                ])
            );
            assert_eq!(d.table_size(), 215);
            assert_eq!(
                table(&d),
                [
                    ("set-cookie".to_string(), cookie.to_string()),
                    ("content-encoding".to_string(), "gzip".to_string()),
                    ("date".to_string(), date2.to_string()),
                ]
            );
        }
    }

    #[test]
    fn rfc7541_c1_integers() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix; C.1.3: 42, 8-bit.
        let mut r = Reader::new(&[]);
        assert_eq!(read_int(&mut r, 0x0a, 5), Ok(10));
        let mut r = Reader::new(&[0x9a, 0x0a]);
        assert_eq!(read_int(&mut r, 0x1f, 5), Ok(1337));
        assert!(r.is_empty());
        let mut r = Reader::new(&[]);
        assert_eq!(read_int(&mut r, 0x2a, 8), Ok(42));
        // Never-ending continuation bytes are rejected, not looped on.
        let mut r = Reader::new(&[0xff; 16]);
        assert_eq!(read_int(&mut r, 0x1f, 5), Err(HpackError::IntegerOverflow));
        let mut r = Reader::new(&[0x80]);
        assert_eq!(read_int(&mut r, 0x1f, 5), Err(HpackError::Truncated));
    }

    #[test]
    fn c2_literal_forms() {
        // C.2.2 literal without indexing, C.2.3 never indexed: neither touches the table.
        let mut d = Decoder::new();
        assert_eq!(
            d.decode(&unhex("040c 2f73 616d 706c 652f 7061 7468"))
                .unwrap(),
            fields(&[(":path", "/sample/path")])
        );
        assert_eq!(
            d.decode(&unhex("1006 7365 6372 6574 0673 6563 7265 74"))
                .unwrap(),
            fields(&[("secret", "secret")])
        );
        assert_eq!(d.table_len(), 0);
    }

    #[test]
    fn table_size_updates() {
        let mut d = Decoder::new();
        d.decode(&unhex(
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
        ))
        .unwrap();
        assert_eq!(d.table_len(), 1);
        // Size update to 0 at the start of a block empties the table.
        assert_eq!(d.decode(&[0x20]).unwrap(), Vec::<HeaderField>::new());
        assert_eq!(d.table_len(), 0);
        assert_eq!(d.max_table_size(), 0);
        assert_eq!(d.decode(&[0xbe]), Err(HpackError::InvalidIndex(62)));
        // Back up to 4096 (0x3f e1 1f), then a field.
        let mut d = Decoder::new();
        assert_eq!(d.decode(&[0x3f, 0xe1, 0x1f, 0x82]).unwrap().len(), 1);
        assert_eq!(d.max_table_size(), 4096);
        // After a field it is an error.
        assert_eq!(
            d.decode(&[0x82, 0x20]),
            Err(HpackError::LateTableSizeUpdate)
        );
        // Above the 64 KiB cap.
        let mut d = Decoder::new();
        assert_eq!(
            d.decode(&[0x3f, 0xe2, 0xff, 0x03]),
            Err(HpackError::TableSizeTooLarge(65_537))
        );
        let mut d = Decoder::new();
        d.set_size_limit(100);
        assert!(matches!(
            d.decode(&[0x3f, 0x66]),
            Err(HpackError::TableSizeTooLarge(133))
        ));
    }

    #[test]
    fn oversized_entry_empties_table() {
        let mut d = Decoder::new();
        d.max_size = 40;
        // "a: b" is 34 bytes and fits.
        d.decode(&unhex("4001 6101 62")).unwrap();
        assert_eq!(d.table_size(), 34);
        // "abc: def..." of 41 bytes does not: table emptied, field still emitted.
        let out = d.decode(&unhex("4003 6162 6306 6465 6667 6869")).unwrap();
        assert_eq!(out, fields(&[("abc", "defghi")]));
        assert_eq!(d.table_len(), 0);
        assert_eq!(d.table_size(), 0);
    }

    #[test]
    fn errors_not_panics() {
        let mut d = Decoder::new();
        assert_eq!(d.decode(&[0x80]), Err(HpackError::InvalidIndex(0)));
        assert_eq!(d.decode(&[0xc0]), Err(HpackError::InvalidIndex(64)));
        assert_eq!(d.decode(&[0x40, 0x05, b'a']), Err(HpackError::Truncated));
        assert_eq!(
            d.decode(&[0x40, 0x81, 0x00, 0x00]),
            Err(HuffmanError::Padding.into())
        );
        let big = vec![0u8; MAX_BLOCK_LEN + 1];
        assert_eq!(d.decode(&big), Err(HpackError::BlockTooLarge));
        let many = vec![0x82u8; MAX_FIELDS + 1];
        assert_eq!(Decoder::new().decode(&many), Err(HpackError::TooManyFields));
    }

    #[test]
    fn decoded_size_is_capped() {
        // One ~16 KiB entry referenced over and over would expand 1 byte into 16 KiB.
        let mut d = Decoder::new();
        d.max_size = MAX_TABLE_SIZE;
        let mut block = vec![0x40, 0x01, b'x', 0x7f];
        let value_len = 16_000usize;
        let mut n = value_len - 127;
        while n >= 128 {
            block.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        block.push(n as u8);
        block.extend(std::iter::repeat_n(b'v', value_len));
        block.extend(std::iter::repeat_n(0xbe, 200));
        assert_eq!(d.decode(&block), Err(HpackError::DecodedTooLarge));
    }

    #[test]
    fn truncations_and_garbage_never_panic() {
        let mut all = Vec::new();
        for s in [
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            "3fe1 1f82 1006 7365 6372 6574 0673 6563 7265 74",
        ] {
            all.extend(unhex(s));
        }
        for cut in 0..=all.len() {
            let _ = Decoder::new().decode(&all[..cut]);
            let _ = Decoder::new().decode(&all[cut..]);
        }
        let mut x = 0xdead_beefu32;
        let mut d = Decoder::new();
        for round in 0..3000 {
            let len = (x % 64) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            if d.decode(&buf).is_err() || round % 50 == 0 {
                d = Decoder::new();
            }
            assert!(d.table_size() <= d.max_table_size());
        }
    }
}
