//! TCP option list (RFC 9293 §3.1) as seen by the TCP fingerprints (JA4T/JA4TS).
//!
//! The fingerprints need the option *kinds* in wire order plus two values (MSS and window
//! scale), so that is all this parser extracts. It never fails: a malformed option ends the
//! walk and sets [`TcpOptions::malformed`], keeping whatever was read before it, because a
//! partial option list is still a useful fingerprint and the bytes come from the wire.
//!
//! Bytes after End-of-Option-List (kind 0) are *not* skipped. RFC 9293 says they are
//! padding, but the JA4T references (and their known-fingerprint lists) list each padding
//! zero as another kind 0: a macOS SYN ends in `...-4-0-0`. Walking on after EOL reproduces
//! that, and a non-zero byte there is parsed as an option like any other.

use crate::bytes::Reader;

/// Option kind: End of Option List (single byte, no length).
pub const KIND_EOL: u8 = 0;
/// Option kind: No-Operation (single byte, no length).
pub const KIND_NOP: u8 = 1;
/// Option kind: Maximum Segment Size (length 4).
pub const KIND_MSS: u8 = 2;
/// Option kind: Window Scale (length 3).
pub const KIND_WINDOW_SCALE: u8 = 3;

/// What the TCP fingerprints need from a segment's option bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// Every option kind in wire order, NOP and EOL (and the padding zeros after EOL)
    /// included, because JA4T prints them all. Bounded by the input length.
    pub kinds: Vec<u8>,
    /// Value of the first well-formed MSS option (kind 2, length 4).
    pub mss: Option<u16>,
    /// Shift count of the first well-formed Window Scale option (kind 3, length 3), as
    /// sent: values above 14 are not clamped, so the fingerprint shows what the stack sent.
    pub window_scale: Option<u8>,
    /// An option's length byte was missing, below 2, or ran past the end; the walk stopped
    /// there and that option's kind is not in [`TcpOptions::kinds`].
    pub malformed: bool,
}

impl TcpOptions {
    /// Walks the option bytes of a TCP header (the bytes between the fixed 20-byte header
    /// and the data offset). Never panics, never fails; see the module docs for EOL.
    pub fn parse(options: &[u8]) -> TcpOptions {
        let mut out = TcpOptions::default();
        let mut r = Reader::new(options);
        while let Some(kind) = r.u8() {
            if kind == KIND_EOL || kind == KIND_NOP {
                out.kinds.push(kind);
                continue;
            }
            // Every other kind carries a length byte that counts the kind and itself.
            let Some(len) = r.u8() else {
                out.malformed = true;
                break;
            };
            let Some(body_len) = usize::from(len).checked_sub(2) else {
                out.malformed = true;
                break;
            };
            let Some(body) = r.take(body_len) else {
                out.malformed = true;
                break;
            };
            out.kinds.push(kind);
            match (kind, body) {
                (KIND_MSS, &[hi, lo]) if out.mss.is_none() => {
                    out.mss = Some(u16::from_be_bytes([hi, lo]));
                }
                (KIND_WINDOW_SCALE, &[shift]) if out.window_scale.is_none() => {
                    out.window_scale = Some(shift);
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test hex")
    }

    #[test]
    fn macos_syn_lists_padding_after_eol() {
        // MSS 1460, NOP, WS 6, NOP, NOP, TS, SACK-permitted, EOL, one padding zero.
        let o = TcpOptions::parse(&h("020405b4010303060101080a112233440000000004020000"));
        assert_eq!(o.kinds, vec![2, 1, 3, 1, 1, 8, 4, 0, 0]);
        assert_eq!(o.mss, Some(1460));
        assert_eq!(o.window_scale, Some(6));
        assert!(!o.malformed);
    }

    #[test]
    fn linux_and_windows_syns() {
        // Linux: MSS, SACK-permitted, TS, NOP, WS 7.
        let o = TcpOptions::parse(&h("020405b40402080a000000010000000001030307"));
        assert_eq!(o.kinds, vec![2, 4, 8, 1, 3]);
        assert_eq!((o.mss, o.window_scale), (Some(1460), Some(7)));
        // Windows 10: MSS, NOP, WS 8, NOP, NOP, SACK-permitted.
        let o = TcpOptions::parse(&h("020405b40103030801010402"));
        assert_eq!(o.kinds, vec![2, 1, 3, 1, 1, 4]);
        assert_eq!((o.mss, o.window_scale), (Some(1460), Some(8)));
    }

    #[test]
    fn empty_and_zero_shift() {
        assert_eq!(TcpOptions::parse(&[]), TcpOptions::default());
        let o = TcpOptions::parse(&h("0303000101"));
        assert_eq!(o.kinds, vec![3, 1, 1]);
        assert_eq!(o.window_scale, Some(0));
        assert_eq!(o.mss, None);
    }

    #[test]
    fn first_mss_wins_and_wrong_length_ignored() {
        // MSS with length 3 (bad body size) is listed but gives no value; next MSS is used.
        let o = TcpOptions::parse(&h("020305020405dc020405b4"));
        assert_eq!(o.kinds, vec![2, 2, 2]);
        assert_eq!(o.mss, Some(1500));
    }

    #[test]
    fn malformed_lengths_stop_the_walk() {
        // Length 1 is below the minimum of 2.
        let o = TcpOptions::parse(&h("0101080100"));
        assert_eq!(o.kinds, vec![1, 1]);
        assert!(o.malformed);
        // Length runs past the end.
        let o = TcpOptions::parse(&h("020405b4080a0000"));
        assert_eq!(o.kinds, vec![2]);
        assert_eq!(o.mss, Some(1460));
        assert!(o.malformed);
        // Kind with no length byte at all.
        let o = TcpOptions::parse(&h("0103"));
        assert_eq!(o.kinds, vec![1]);
        assert!(o.malformed);
    }

    #[test]
    fn no_panic_on_truncations_and_garbage() {
        let full = h("020405b4010303060101080a112233440000000004020000");
        for n in 0..=full.len() {
            let o = TcpOptions::parse(&full[..n]);
            assert!(o.kinds.len() <= n);
        }
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut buf = [0u8; 40];
            for b in buf.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            let len = (x as usize) % 41;
            let o = TcpOptions::parse(&buf[..len]);
            assert!(o.kinds.len() <= len);
        }
    }
}
