//! IPv4 and IPv6 headers, IPv4 options, IPv6 extension headers and AH.
//!
//! The fixed headers are read with etherparse's header slices; the lengths, extension
//! header walk and fragment handling are ours, because a non-first fragment must stop the
//! walk (what follows its fragment header is payload, not a header) and because a
//! snaplen-cut packet is still decoded rather than rejected.

use std::net::IpAddr;

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice, err};

use super::{DecodeError, IpFacts, Layer, be16, truncated};

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTIONS: u8 = 60;

/// Most extension headers followed after one IP header; real packets carry a handful.
const MAX_EXTENSIONS: usize = 16;

/// Where a packet stands in IP fragmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frag {
    /// Not fragmented.
    Whole,
    /// Offset 0 with more fragments: the transport header is here, the payload is partial.
    First,
    /// Offset > 0: no transport header here.
    Later,
}

/// One decoded IP header and the payload it announces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpLayer<'a> {
    pub(crate) facts: IpFacts,
    /// Protocol of `payload` (after options and extension headers).
    pub(crate) proto: u8,
    /// The upper-layer bytes: cut to the header's length, clamped to the captured bytes.
    pub(crate) payload: &'a [u8],
    /// The upper-layer length the header states (`payload` may be shorter).
    pub(crate) claimed: usize,
    /// The header states more bytes than were captured.
    pub(crate) truncated: bool,
    pub(crate) frag: Frag,
}

/// An IPv4 header (with options) and what follows it.
pub(super) fn ipv4(b: &[u8]) -> Result<IpLayer<'_>, DecodeError> {
    use err::ipv4::{HeaderError, HeaderSliceError};
    let h = Ipv4HeaderSlice::from_slice(b).map_err(|e| match e {
        HeaderSliceError::Len(_) => truncated(Layer::Ipv4),
        HeaderSliceError::Content(HeaderError::UnexpectedVersion { .. }) => {
            DecodeError::BadIpHeader {
                reason: "version is not 4",
            }
        }
        HeaderSliceError::Content(_) => DecodeError::BadIpHeader {
            reason: "IPv4 header length below 20",
        },
    })?;
    let header_len = h.slice().len();
    let total = usize::from(h.total_len());
    // Total length 0 is what segmentation offload leaves in locally captured packets: the
    // real length is the captured one.
    let end = if total == 0 { b.len() } else { total };
    if end < header_len {
        return Err(DecodeError::BadIpHeader {
            reason: "IPv4 total length below header length",
        });
    }
    let payload = b.get(header_len..end.min(b.len())).unwrap_or_default();
    let offset = h.fragments_offset().value();
    let frag = if offset != 0 {
        Frag::Later
    } else if h.more_fragments() {
        Frag::First
    } else {
        Frag::Whole
    };
    let facts = IpFacts {
        src: IpAddr::V4(h.source_addr()),
        dst: IpAddr::V4(h.destination_addr()),
        ttl: h.ttl(),
        payload_len: end - header_len,
    };
    let layer = IpLayer {
        facts,
        proto: h.protocol().0,
        payload,
        claimed: end - header_len,
        truncated: end > b.len(),
        frag,
    };
    if frag == Frag::Later {
        return Ok(layer);
    }
    extensions(false, layer)
}

/// An IPv6 header, its extension headers, and what follows them.
pub(super) fn ipv6(b: &[u8]) -> Result<IpLayer<'_>, DecodeError> {
    use err::ipv6::HeaderSliceError;
    let h = Ipv6HeaderSlice::from_slice(b).map_err(|e| match e {
        HeaderSliceError::Len(_) => truncated(Layer::Ipv6),
        HeaderSliceError::Content(_) => DecodeError::BadIpHeader {
            reason: "version is not 6",
        },
    })?;
    let rest = b.get(h.slice().len()..).unwrap_or_default();
    let stated = usize::from(h.payload_length());
    // Payload length 0 is a jumbogram (the length is in a hop-by-hop option) or offload:
    // either way the captured length is the best there is.
    let claimed = if stated == 0 { rest.len() } else { stated };
    let facts = IpFacts {
        src: IpAddr::V6(h.source_addr()),
        dst: IpAddr::V6(h.destination_addr()),
        ttl: h.hop_limit(),
        payload_len: claimed,
    };
    let layer = IpLayer {
        facts,
        proto: h.next_header().0,
        payload: rest.get(..claimed).unwrap_or(rest),
        claimed,
        truncated: claimed > rest.len(),
        frag: Frag::Whole,
    };
    extensions(true, layer)
}

/// Skips extension headers (all of them for IPv6, AH only for IPv4), stopping at a
/// non-first fragment whose following bytes are payload, not headers.
fn extensions(v6: bool, mut l: IpLayer<'_>) -> Result<IpLayer<'_>, DecodeError> {
    for index in 0..MAX_EXTENSIONS {
        let layer = match l.proto {
            HOP_BY_HOP if v6 && index != 0 => {
                return Err(DecodeError::BadIpHeader {
                    reason: "hop-by-hop header not first",
                });
            }
            HOP_BY_HOP | ROUTING | DEST_OPTIONS | FRAGMENT if v6 => Layer::Ipv6Extension,
            AUTH => Layer::IpAuth,
            _ => break,
        };
        let len = match l.proto {
            FRAGMENT => 8,
            // AH counts 4-byte words minus 2, the others 8-byte words minus 1.
            AUTH => (usize::from(byte_at(&l, 1, layer)?) + 2) * 4,
            _ => (usize::from(byte_at(&l, 1, layer)?) + 1) * 8,
        };
        if len > l.claimed {
            return Err(DecodeError::BadIpHeader {
                reason: "extension header beyond IP payload",
            });
        }
        let (Some(header), Some(rest)) = (l.payload.get(..len), l.payload.get(len..)) else {
            return Err(truncated(layer));
        };
        let next = byte_at(&l, 0, layer)?;
        let this = l.proto;
        l.proto = next;
        l.payload = rest;
        l.claimed -= len;
        l.facts.payload_len = l.claimed;
        if this == FRAGMENT {
            let offset_flags = be16(header, 2).unwrap_or_default();
            if offset_flags >> 3 != 0 {
                l.frag = Frag::Later;
                return Ok(l);
            }
            if offset_flags & 1 != 0 {
                l.frag = Frag::First;
            }
        }
    }
    if matches!(l.proto, HOP_BY_HOP | ROUTING | DEST_OPTIONS | FRAGMENT if v6) || l.proto == AUTH {
        return Err(DecodeError::TooManyLayers);
    }
    Ok(l)
}

/// Byte `at` of the header starting `l.payload`: beyond the stated length the header is
/// bad, beyond the captured bytes it is truncated.
fn byte_at(l: &IpLayer<'_>, at: usize, layer: Layer) -> Result<u8, DecodeError> {
    match l.payload.get(at) {
        Some(&v) => Ok(v),
        None if at >= l.claimed => Err(DecodeError::BadIpHeader {
            reason: "extension header beyond IP payload",
        }),
        None => Err(truncated(layer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_header(total_len: u16, frag: u16, proto: u8) -> Vec<u8> {
        let mut h = vec![
            0x45, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        h[2..4].copy_from_slice(&total_len.to_be_bytes());
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h
    }

    #[test]
    fn ipv4_total_length_trims_padding_and_flags_truncation() {
        let mut p = v4_header(24, 0, 6);
        p.extend_from_slice(&[1, 2, 3, 4, 0, 0, 0]); // 3 bytes of padding
        let l = ipv4(&p).unwrap();
        assert_eq!(l.payload, &[1, 2, 3, 4]);
        assert!(!l.truncated);
        let mut p = v4_header(100, 0, 6);
        p.extend_from_slice(&[1, 2]);
        let l = ipv4(&p).unwrap();
        assert_eq!(
            (l.payload, l.claimed, l.truncated),
            (&[1u8, 2][..], 80, true)
        );
    }

    #[test]
    fn ipv4_zero_total_length_uses_captured_length() {
        let mut p = v4_header(0, 0, 17);
        p.extend_from_slice(&[9; 10]);
        let l = ipv4(&p).unwrap();
        assert_eq!((l.payload.len(), l.claimed, l.truncated), (10, 10, false));
    }

    #[test]
    fn ipv4_rejects_total_length_below_header() {
        let p = v4_header(19, 0, 6);
        assert_eq!(ipv4(&p).unwrap_err().kind(), "bad_ip");
    }

    #[test]
    fn ipv4_fragments() {
        let mut p = v4_header(28, 0x2000, 6);
        p.extend_from_slice(&[0; 8]);
        assert_eq!(ipv4(&p).unwrap().frag, Frag::First);
        let mut p = v4_header(28, 0x0001, 51); // offset 8 bytes: AH not parsed
        p.extend_from_slice(&[0; 8]);
        let l = ipv4(&p).unwrap();
        assert_eq!((l.frag, l.proto), (Frag::Later, 51));
    }

    #[test]
    fn ipv4_ah_is_skipped() {
        let mut p = v4_header(20 + 12 + 4, 0, AUTH);
        p.extend_from_slice(&[17, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend_from_slice(&[7, 7, 7, 7]);
        let l = ipv4(&p).unwrap();
        assert_eq!(
            (l.proto, l.payload, l.claimed),
            (17, &[7u8, 7, 7, 7][..], 4)
        );
    }

    fn v6_header(payload_len: u16, next: u8) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0, 0, 0, next, 33];
        h[4..6].copy_from_slice(&payload_len.to_be_bytes());
        h.extend_from_slice(&[0xfe; 16]);
        h.extend_from_slice(&[0xfd; 16]);
        h
    }

    #[test]
    fn ipv6_walks_hop_by_hop_routing_dest_and_fragment() {
        let mut p = v6_header(8 + 16 + 8 + 8 + 2, HOP_BY_HOP);
        p.extend_from_slice(&[ROUTING, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop, PadN
        p.extend_from_slice(&[DEST_OPTIONS, 1, 0, 0, 0, 0, 0, 0]); // routing, 16 bytes
        p.extend_from_slice(&[0; 8]);
        p.extend_from_slice(&[FRAGMENT, 0, 1, 4, 0, 0, 0, 0]); // destination options
        p.extend_from_slice(&[6, 0, 0, 1, 0, 0, 0, 9]); // fragment: offset 0, M set
        p.extend_from_slice(&[0xab, 0xcd]);
        let l = ipv6(&p).unwrap();
        assert_eq!(
            (l.proto, l.payload, l.claimed, l.frag),
            (6, &[0xab, 0xcd][..], 2, Frag::First)
        );
        assert_eq!(l.facts.ttl, 33);
    }

    #[test]
    fn ipv6_later_fragment_stops_the_walk() {
        let mut p = v6_header(8 + 8, FRAGMENT);
        // Offset 1 (8 bytes), next header "destination options": the bytes after are
        // payload and must not be read as a header.
        p.extend_from_slice(&[DEST_OPTIONS, 0, 0, 8, 0, 0, 0, 9]);
        p.extend_from_slice(&[0xff; 8]);
        let l = ipv6(&p).unwrap();
        assert_eq!(
            (l.frag, l.proto, l.payload.len()),
            (Frag::Later, DEST_OPTIONS, 8)
        );
    }

    #[test]
    fn ipv6_hop_by_hop_must_be_first() {
        let mut p = v6_header(16, DEST_OPTIONS);
        p.extend_from_slice(&[HOP_BY_HOP, 0, 1, 4, 0, 0, 0, 0]);
        p.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        assert_eq!(
            ipv6(&p).unwrap_err(),
            DecodeError::BadIpHeader {
                reason: "hop-by-hop header not first"
            }
        );
    }

    #[test]
    fn ipv6_extension_beyond_length_vs_beyond_capture() {
        let mut p = v6_header(8, DEST_OPTIONS);
        p.extend_from_slice(&[6, 1, 0, 0, 0, 0, 0, 0]); // claims 16 bytes, 8 stated
        assert_eq!(ipv6(&p).unwrap_err().kind(), "bad_ip");
        let mut p = v6_header(40, DEST_OPTIONS);
        p.extend_from_slice(&[6, 1, 0, 0, 0, 0, 0, 0]); // claims 16, 40 stated, 8 captured
        assert_eq!(ipv6(&p).unwrap_err(), truncated(Layer::Ipv6Extension));
    }

    #[test]
    fn endless_extension_chain_is_bounded() {
        let mut p = v6_header(8 * 40, DEST_OPTIONS);
        for _ in 0..40 {
            p.extend_from_slice(&[DEST_OPTIONS, 0, 1, 4, 0, 0, 0, 0]);
        }
        assert_eq!(ipv6(&p).unwrap_err(), DecodeError::TooManyLayers);
    }
}
