//! Long-header parsing (RFC 9000 §17.2, RFC 8999) and Initial packet decryption
//! (RFC 9001 §5.4-5.5).

use super::keys::{self, InitialKeys, MAX_CID_LEN, SAMPLE_LEN, TAG_LEN};
use super::{PacketKind, QuicError};
use crate::bytes::Reader;

/// First-byte bit that marks a long header.
pub(crate) const LONG_HEADER_BIT: u8 = 0x80;
/// First-byte "fixed bit"; always 1 unless greased by RFC 9287 after negotiation.
pub(crate) const FIXED_BIT: u8 = 0x40;

/// The cleartext part of one long-header packet at the start of a datagram slice.
///
/// Borrowed from the datagram so that walking coalesced packets costs no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader<'a> {
    /// First byte as received: its low bits are still header-protected.
    pub first_byte: u8,
    /// Version field; 0 for Version Negotiation.
    pub version: u32,
    /// Destination Connection ID.
    pub dcid: &'a [u8],
    /// Source Connection ID.
    pub scid: &'a [u8],
    /// What the type bits mean for this version.
    pub kind: PacketKind,
    /// Initial: the address-validation token. Retry: the new token (integrity tag
    /// excluded). Empty otherwise.
    pub token: &'a [u8],
    /// Offset of the protected packet number; meaningful for Initial, 0-RTT and
    /// Handshake packets, which carry a Length field.
    pub pn_offset: usize,
    /// Bytes of the datagram this packet occupies, so the next coalesced packet starts
    /// there. Retry and Version Negotiation packets have no Length and take the rest.
    pub packet_len: usize,
}

/// Parses the long header at the start of `buf` (which may hold further coalesced
/// packets after this one).
///
/// The fixed bit is not checked here so that greased packets (RFC 9287) still parse;
/// detection heuristics check it separately.
pub fn parse_long_header(buf: &[u8]) -> Result<LongHeader<'_>, QuicError> {
    let mut r = Reader::new(buf);
    let first_byte = r.u8().ok_or(QuicError::Truncated)?;
    if first_byte & LONG_HEADER_BIT == 0 {
        return Err(QuicError::NotLongHeader);
    }
    let version = r.u32().ok_or(QuicError::Truncated)?;
    // RFC 8999 lets other versions use connection IDs up to 255 bytes; only the versions
    // we can decode are held to 20.
    let limit_cid = version != 0;
    let dcid = r.vec8().ok_or(QuicError::Truncated)?;
    let scid = r.vec8().ok_or(QuicError::Truncated)?;
    if version == 0 {
        return Ok(LongHeader {
            first_byte,
            version,
            dcid,
            scid,
            kind: PacketKind::VersionNegotiation,
            token: &[],
            pn_offset: r.position(),
            packet_len: buf.len(),
        });
    }
    let kind = keys::long_packet_kind(version, first_byte)
        .ok_or(QuicError::UnsupportedVersion(version))?;
    for cid in [dcid, scid] {
        if limit_cid && cid.len() > MAX_CID_LEN {
            return Err(QuicError::ConnectionIdTooLong(cid.len()));
        }
    }
    let mut token: &[u8] = &[];
    match kind {
        PacketKind::Retry => {
            let rest = r.rest();
            let token_len = rest
                .len()
                .checked_sub(TAG_LEN)
                .ok_or(QuicError::Truncated)?;
            token = rest.get(..token_len).ok_or(QuicError::Truncated)?;
            return Ok(LongHeader {
                first_byte,
                version,
                dcid,
                scid,
                kind,
                token,
                pn_offset: r.position(),
                packet_len: buf.len(),
            });
        }
        PacketKind::Initial => {
            let token_len = r.varint().ok_or(QuicError::Truncated)?;
            let token_len = usize::try_from(token_len).map_err(|_| QuicError::Truncated)?;
            token = r.take(token_len).ok_or(QuicError::Truncated)?;
        }
        _ => {}
    }
    let length = r.varint().ok_or(QuicError::Truncated)?;
    let pn_offset = r.position();
    let packet_len = usize::try_from(length)
        .ok()
        .and_then(|l| pn_offset.checked_add(l))
        .filter(|&end| end <= buf.len())
        .ok_or(QuicError::Truncated)?;
    Ok(LongHeader {
        first_byte,
        version,
        dcid,
        scid,
        kind,
        token,
        pn_offset,
        packet_len,
    })
}

/// Cheap content test for "this UDP datagram starts with a QUIC Initial": long header with
/// the fixed bit, a version we can decrypt, the Initial type for that version, connection
/// IDs of at most 20 bytes, and a Length that fits the datagram and leaves room for the
/// header-protection sample. No cryptography, so it can run on every new UDP flow
/// whatever its ports.
pub fn looks_like_quic_initial(datagram: &[u8]) -> bool {
    let Some(&first) = datagram.first() else {
        return false;
    };
    if first & (LONG_HEADER_BIT | FIXED_BIT) != LONG_HEADER_BIT | FIXED_BIT {
        return false;
    }
    match parse_long_header(datagram) {
        Ok(h) => {
            h.kind == PacketKind::Initial
                && h.packet_len.saturating_sub(h.pn_offset) >= 4 + SAMPLE_LEN
        }
        Err(_) => false,
    }
}

/// Reconstructs a full packet number from its truncated encoding (RFC 9000 §A.3).
pub(crate) fn decode_packet_number(largest: Option<u64>, truncated: u64, pn_len: usize) -> u64 {
    const MAX_PN: u64 = (1 << 62) - 1;
    let bits = (pn_len.clamp(1, 4) * 8) as u32;
    let expected = largest.map_or(0, |l| l.saturating_add(1));
    let win = 1u64 << bits;
    let hwin = win / 2;
    let mask = win - 1;
    let candidate = (expected & !mask) | truncated;
    if candidate.saturating_add(hwin) <= expected && candidate < MAX_PN.saturating_sub(win) {
        candidate + win
    } else if candidate > expected.saturating_add(hwin) && candidate >= win {
        candidate - win
    } else {
        candidate
    }
}

/// Removes header protection from and decrypts one Initial packet.
///
/// `packet` must be exactly the packet (`&datagram[..header.packet_len]`); `pn_offset`
/// comes from [`LongHeader::pn_offset`]. `largest_pn` is the largest packet number
/// already decrypted in this direction, used to expand the truncated number. On success
/// `out` holds the plaintext frames and the full packet number is returned; `out` is a
/// caller-owned buffer so a connection can reuse one allocation for every packet.
pub fn decrypt_initial(
    keys: &InitialKeys,
    packet: &[u8],
    pn_offset: usize,
    largest_pn: Option<u64>,
    out: &mut Vec<u8>,
) -> Result<u64, QuicError> {
    out.clear();
    let sample_start = pn_offset.checked_add(4).ok_or(QuicError::Truncated)?;
    let sample: [u8; SAMPLE_LEN] = packet
        .get(sample_start..)
        .and_then(|s| s.get(..SAMPLE_LEN))
        .and_then(|s| s.try_into().ok())
        .ok_or(QuicError::Truncated)?;
    let mask = keys.header_protection_mask(&sample);
    let first = packet.first().ok_or(QuicError::Truncated)? ^ (mask[0] & 0x0f);
    let pn_len = usize::from(first & 0x03) + 1;
    let header_len = pn_offset + pn_len;
    let body_len = packet
        .len()
        .checked_sub(header_len + TAG_LEN)
        .ok_or(QuicError::Truncated)?;

    out.extend_from_slice(packet);
    let (header, rest) = out
        .split_at_mut_checked(header_len)
        .ok_or(QuicError::Truncated)?;
    if let Some(b) = header.first_mut() {
        *b = first;
    }
    let mut truncated = 0u64;
    let pn_bytes = header.get_mut(pn_offset..).ok_or(QuicError::Truncated)?;
    for (b, m) in pn_bytes.iter_mut().zip(mask.iter().skip(1)) {
        *b ^= m;
        truncated = (truncated << 8) | u64::from(*b);
    }
    let pn = decode_packet_number(largest_pn, truncated, pn_len);
    let (ciphertext, tag) = rest
        .split_at_mut_checked(body_len)
        .ok_or(QuicError::Truncated)?;
    let tag: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| QuicError::Truncated)?;
    if !keys.open(pn, header, ciphertext, &tag) {
        out.clear();
        return Err(QuicError::DecryptFailed);
    }
    out.truncate(header_len + body_len);
    out.copy_within(header_len.., 0);
    out.truncate(body_len);
    Ok(pn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quic::keys::{VERSION_1, VERSION_2, initial_keys};

    #[test]
    fn packet_number_decoding_rfc9000_a3() {
        assert_eq!(
            decode_packet_number(Some(0xa82f30ea), 0x9b32, 2),
            0xa82f9b32
        );
        assert_eq!(decode_packet_number(None, 2, 4), 2);
        assert_eq!(decode_packet_number(None, 0xff, 1), 0xff);
        assert_eq!(decode_packet_number(Some(0xff), 0x01, 1), 0x101);
        // Hostile "largest" values saturate instead of overflowing.
        assert_eq!(decode_packet_number(Some(u64::MAX), 0x01, 1), !0xfe);
    }

    #[test]
    fn long_header_fields() {
        let pkt = hex::decode(
            "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a5816b6394100f37a\
             1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3dbcba3f6ea46c5b7684df3548e7ddeb9\
             c3bf9c73cc3f3bded74b562bfb19fb84022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d\
             20398c276456cbc42158407dd074ee",
        )
        .expect("hex");
        let h = parse_long_header(&pkt).expect("header");
        assert_eq!(h.version, VERSION_1);
        assert_eq!(h.kind, PacketKind::Initial);
        assert!(h.dcid.is_empty());
        assert_eq!(
            h.scid,
            &[0xf0, 0x67, 0xa5, 0x50, 0x2a, 0x42, 0x62, 0xb5][..]
        );
        assert_eq!(h.pn_offset, 18);
        assert_eq!(h.packet_len, pkt.len());
        assert!(looks_like_quic_initial(&pkt));

        let keys = initial_keys(
            VERSION_1,
            &hex::decode("8394c8f03e515708").expect("hex"),
            true,
        )
        .expect("keys");
        let mut out = Vec::new();
        let pn = decrypt_initial(&keys, &pkt, h.pn_offset, None, &mut out).expect("decrypt");
        assert_eq!(pn, 1);
        assert_eq!(
            hex::encode(&out),
            "02000000000600405a020000560303eefce7f7b37ba1d1632e96677825ddf73988cfc79825df566d\
             c5430b9a045a1200130100002e00330024001d00209d3c940d89690b84d08a60993c144eca684d10\
             81287c834d5311bcf32bb9da1a002b00020304"
        );
        // The client's keys do not open a server packet.
        let wrong = initial_keys(
            VERSION_1,
            &hex::decode("8394c8f03e515708").expect("hex"),
            false,
        )
        .expect("keys");
        assert_eq!(
            decrypt_initial(&wrong, &pkt, h.pn_offset, None, &mut out),
            Err(QuicError::DecryptFailed)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn retry_and_version_negotiation_headers() {
        let retry =
            hex::decode("cf6b3343cf0008f067a5502a4262b5746f6b656ec8646ce8bfe33952d955543665dcc7b6")
                .expect("hex");
        let h = parse_long_header(&retry).expect("retry");
        assert_eq!(h.version, VERSION_2);
        assert_eq!(h.kind, PacketKind::Retry);
        assert_eq!(h.token, b"token");
        assert_eq!(h.packet_len, retry.len());
        assert!(!looks_like_quic_initial(&retry));

        let vn = hex::decode("80000000000408090a0b0400000001000000016b3343cf").expect("hex");
        let h = parse_long_header(&vn).expect("vn");
        assert_eq!(h.kind, PacketKind::VersionNegotiation);
        assert_eq!(h.dcid, &[8, 9, 10, 11][..]);
        assert!(!looks_like_quic_initial(&vn));
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(parse_long_header(&[]), Err(QuicError::Truncated));
        assert_eq!(
            parse_long_header(&[0x40, 1, 2]),
            Err(QuicError::NotLongHeader)
        );
        assert_eq!(
            parse_long_header(&[0xc0, 0x1a, 0x2a, 0x3a, 0x4a, 0, 0]),
            Err(QuicError::UnsupportedVersion(0x1a2a_3a4a))
        );
        let mut long_cid = vec![0xc0, 0, 0, 0, 1, 21];
        long_cid.extend_from_slice(&[0u8; 21]);
        long_cid.extend_from_slice(&[0, 0, 0x40, 0x10]);
        assert_eq!(
            parse_long_header(&long_cid),
            Err(QuicError::ConnectionIdTooLong(21))
        );
        // Length runs past the datagram.
        let short = [0xc0, 0, 0, 0, 1, 0, 0, 0, 0x40, 0x30, 0, 0];
        assert_eq!(parse_long_header(&short), Err(QuicError::Truncated));
        assert!(!looks_like_quic_initial(&short));
    }
}
