//! The HPACK Huffman code (RFC 7541 §5.2, Appendix B).
//!
//! The code in Appendix B is canonical: within one code length the codes are consecutive in
//! symbol order, and each length starts where the previous one ended, shifted left. So the
//! 257 code lengths alone determine every code; the tables below are built from them at
//! compile time and the decoder walks them one bit at a time (header strings are short, so
//! this is fast enough and needs no 4 KiB lookup table).

use thiserror::Error;

/// A Huffman-coded string that RFC 7541 §5.2 says a decoder must reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HuffmanError {
    /// The EOS symbol appeared inside the string.
    #[error("EOS symbol inside a Huffman-coded string")]
    Eos,
    /// The string ends with more than 7 bits of padding, or padding that is not all ones.
    #[error("invalid Huffman padding")]
    Padding,
}

/// Code length in bits of each symbol 0..=255 and EOS (256), from RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0..
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16..
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // 32..
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // 48..
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // 64..
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 80..
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // 96..
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 112..
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128..
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144..
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160..
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176..
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192..
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208..
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224..
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240..
    30, // 256..
];

/// Longest code (EOS and a few control bytes).
const MAX_LEN: usize = 30;

/// The canonical-code view of [`CODE_LENGTHS`].
struct Canonical {
    /// Symbols ordered by (code length, symbol value): the order codes are handed out in.
    symbols: [u16; 257],
    /// Number of codes of each length.
    count: [u32; MAX_LEN + 1],
    /// Numerically smallest code of each length.
    first: [u32; MAX_LEN + 1],
    /// Index in `symbols` of the first symbol of each length.
    offset: [u16; MAX_LEN + 1],
}

const CANONICAL: Canonical = build();

const fn build() -> Canonical {
    let mut count = [0u32; MAX_LEN + 1];
    let mut i = 0;
    while i < CODE_LENGTHS.len() {
        count[CODE_LENGTHS[i] as usize] += 1;
        i += 1;
    }
    let mut offset = [0u16; MAX_LEN + 1];
    let mut first = [0u32; MAX_LEN + 1];
    let mut next_offset = 0u16;
    let mut code = 0u32;
    let mut len = 1;
    while len <= MAX_LEN {
        offset[len] = next_offset;
        next_offset += count[len] as u16;
        first[len] = code;
        code = (code + count[len]) << 1;
        len += 1;
    }
    let mut symbols = [0u16; 257];
    let mut fill = offset;
    let mut sym = 0;
    while sym < CODE_LENGTHS.len() {
        let len = CODE_LENGTHS[sym] as usize;
        symbols[fill[len] as usize] = sym as u16;
        fill[len] += 1;
        sym += 1;
    }
    Canonical {
        symbols,
        count,
        first,
        offset,
    }
}

/// The EOS symbol, which only ever appears (truncated) as padding.
const EOS: u16 = 256;

/// Decodes a Huffman-coded string, appending the bytes to `out`.
///
/// Output is at most 8/5 of the input length (the shortest code has 5 bits), so the caller's
/// bound on the input bounds the allocation.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    let c = &CANONICAL;
    let mut code = 0u32;
    let mut len = 0usize;
    for byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let (Some(&first), Some(&count), Some(&offset)) =
                (c.first.get(len), c.count.get(len), c.offset.get(len))
            else {
                // Longer than any code: impossible for a complete code, kept as a guard.
                return Err(HuffmanError::Padding);
            };
            let delta = code.wrapping_sub(first);
            if code >= first && delta < count {
                let sym = c
                    .symbols
                    .get(usize::from(offset) + delta as usize)
                    .copied()
                    .ok_or(HuffmanError::Padding)?;
                if sym == EOS {
                    return Err(HuffmanError::Eos);
                }
                out.push(sym as u8);
                code = 0;
                len = 0;
            }
        }
    }
    // Leftover bits must be a proper prefix of EOS (all ones) and shorter than a byte.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HuffmanError::Padding);
    }
    Ok(())
}

/// The code of `sym` as (bits, length); test helper for building inputs.
#[cfg(test)]
pub(crate) fn code_of(sym: u16) -> (u32, u8) {
    let c = &CANONICAL;
    let len = CODE_LENGTHS[usize::from(sym)];
    let start = usize::from(c.offset[usize::from(len)]);
    let rank = c.symbols[start..]
        .iter()
        .position(|s| *s == sym)
        .expect("every symbol has a code") as u32;
    (c.first[usize::from(len)] + rank, len)
}

/// Huffman-encodes `input` (test helper: the agent only decodes).
#[cfg(test)]
pub(crate) fn encode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u64;
    let mut bits = 0u32;
    for b in input {
        let (code, len) = code_of(u16::from(*b));
        acc = (acc << len) | u64::from(code);
        bits += u32::from(len);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        let pad = 8 - bits;
        out.push(((acc << pad) as u8) | ((1u8 << pad) - 1));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    fn dec(input: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        decode(input, &mut out).map(|()| out)
    }

    #[test]
    fn codes_match_appendix_b() {
        // (symbol, code, length) rows spot-checked against RFC 7541 Appendix B.
        for (sym, code, len) in [
            (0u16, 0x1ff8u32, 13u8),
            (10, 0x3fff_fffc, 30),
            (32, 0x14, 6),
            (48, 0x0, 5),
            (88, 0xfc, 8),
            (92, 0x7fff0, 19),
            (126, 0x1ffd, 13),
            (127, 0xfff_fffc, 28),
            (128, 0xfffe6, 20),
            (199, 0x1ff_ffec, 25),
            (255, 0x3ff_ffee, 26),
            (256, 0x3fff_ffff, 30),
        ] {
            assert_eq!(code_of(sym), (code, len), "symbol {sym}");
        }
        // Kraft equality: the code is complete, so every bit string decodes or is a prefix.
        let kraft: u64 = CODE_LENGTHS.iter().map(|l| 1u64 << (30 - l)).sum();
        assert_eq!(kraft, 1 << 30);
    }

    #[test]
    fn rfc7541_appendix_c_strings() {
        for (hex, text) in [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
            (
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
                "https://www.example.com",
            ),
            ("9bd9 ab", "gzip"),
            (
                "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
                 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
                "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            ),
        ] {
            assert_eq!(dec(&unhex(hex)).unwrap(), text.as_bytes(), "{text}");
            assert_eq!(encode(text.as_bytes()), unhex(hex), "{text}");
        }
    }

    #[test]
    fn every_byte_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(dec(&encode(&all)).unwrap(), all);
        for b in 0..=255u8 {
            assert_eq!(dec(&encode(&[b])).unwrap(), [b]);
        }
    }

    #[test]
    fn rejects_bad_padding_and_eos() {
        // Eight one-bits of padding after "0" (00000): more than 7 bits.
        assert_eq!(dec(&[0x07, 0xff]), Err(HuffmanError::Padding));
        // Padding with a zero bit: "0" then 000.
        assert_eq!(dec(&[0x00]), Err(HuffmanError::Padding));
        // The EOS code itself (30 ones) followed by padding.
        assert_eq!(dec(&[0xff, 0xff, 0xff, 0xff]), Err(HuffmanError::Eos));
        // Empty input is the empty string.
        assert_eq!(dec(&[]), Ok(Vec::new()));
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 0x9e37_79b9u32;
        for len in 0..300 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let mut out = Vec::new();
            let _ = decode(&buf, &mut out);
            assert!(out.len() <= buf.len() * 8 / 5);
        }
    }
}
