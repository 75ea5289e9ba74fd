//! Tunnel headers: GRE (RFC 2784/2890, with RFC 1701 routing), ERSPAN types I-III,
//! VXLAN (RFC 7348), VXLAN-GPE and Geneve (RFC 8926). Each returns the step for the
//! encapsulated frame; the caller's loop bounds the nesting.

use super::{
    DecodeError, Layer, State, Step, Transport, UdpConversation, UdpDatagram, be16, truncated,
};

const GRE_CHECKSUM: u16 = 0x8000;
const GRE_ROUTING: u16 = 0x4000;
const GRE_KEY: u16 = 0x2000;
const GRE_SEQUENCE: u16 = 0x1000;
const GRE_VERSION: u16 = 0x0007;
/// IP protocol number of GRE, reported for GRE versions we do not open (PPTP's v1).
const IPPROTO_GRE: u8 = 47;

/// ERSPAN type I/II (type I has no GRE sequence number and no ERSPAN header).
const ERSPAN_II: u16 = 0x88be;
const ERSPAN_III: u16 = 0x22eb;
const ERSPAN_II_LEN: usize = 8;
const ERSPAN_III_LEN: usize = 12;
const ERSPAN_III_PLATFORM_LEN: usize = 8;
/// ERSPAN III frame type "IP packet" (0 is Ethernet).
const ERSPAN_FT_IP: u8 = 2;

/// IANA ports. Tunnels are recognised by port like the reference does (lower port
/// first), then confirmed by the header.
const VXLAN_PORT: u16 = 4789;
const VXLAN_GPE_PORT: u16 = 4790;
const GENEVE_PORT: u16 = 6081;
const VXLAN_LEN: usize = 8;
const VXLAN_FLAG_I: u8 = 0x08;
const GPE_FLAG_P: u8 = 0x04;
const GENEVE_LEN: usize = 8;

/// A GRE header and what it carries.
pub(super) fn gre(b: &[u8]) -> Result<Step<'_>, DecodeError> {
    let (Some(flags), Some(protocol)) = (be16(b, 0), be16(b, 2)) else {
        return Err(truncated(Layer::Gre));
    };
    if flags & GRE_VERSION != 0 {
        // Enhanced GRE (PPTP) carries PPP: not followed.
        return Ok(Step::Done(Transport::Other(IPPROTO_GRE)));
    }
    let mut offset = 4;
    for (present, len) in [
        (flags & (GRE_CHECKSUM | GRE_ROUTING) != 0, 4),
        (flags & GRE_KEY != 0, 4),
        (flags & GRE_SEQUENCE != 0, 4),
    ] {
        if present {
            offset += len;
        }
    }
    if flags & GRE_ROUTING != 0 {
        // RFC 1701 source route entries: family, offset, length, data; ends with a NUL
        // entry. Each entry takes at least 4 bytes, so the walk ends with the data.
        loop {
            let (Some(family), Some(&len)) = (be16(b, offset), b.get(offset + 3)) else {
                return Err(truncated(Layer::Gre));
            };
            offset += 4 + usize::from(len);
            if family == 0 && len == 0 {
                break;
            }
        }
    }
    let Some(payload) = b.get(offset..) else {
        return Err(truncated(Layer::Gre));
    };
    Ok(match protocol {
        ERSPAN_II if flags & GRE_SEQUENCE == 0 => Step::Ethernet(payload),
        ERSPAN_II | ERSPAN_III => erspan(payload)?,
        _ => Step::EtherType(protocol, payload),
    })
}

/// An ERSPAN II/III header, told apart by its version field.
fn erspan(b: &[u8]) -> Result<Step<'_>, DecodeError> {
    let Some(&first) = b.first() else {
        return Err(truncated(Layer::Erspan));
    };
    match first >> 4 {
        1 => b
            .get(ERSPAN_II_LEN..)
            .map(Step::Ethernet)
            .ok_or(truncated(Layer::Erspan)),
        2 => {
            let Some(&[.., ft_byte, last]) = b.first_chunk::<ERSPAN_III_LEN>() else {
                return Err(truncated(Layer::Erspan));
            };
            let platform = if last & 0x01 != 0 {
                ERSPAN_III_PLATFORM_LEN
            } else {
                0
            };
            let rest = b
                .get(ERSPAN_III_LEN + platform..)
                .ok_or(truncated(Layer::Erspan))?;
            let frame_type = (ft_byte >> 2) & 0x1f;
            Ok(if frame_type == ERSPAN_FT_IP {
                Step::Ip(rest)
            } else {
                Step::Ethernet(rest)
            })
        }
        _ => Err(DecodeError::BadTunnelHeader {
            layer: Layer::Erspan,
            reason: "unknown version",
        }),
    }
}

/// A UDP datagram that may carry VXLAN, VXLAN-GPE or Geneve. `None`: plain UDP (no tunnel
/// port, or a header that does not fit the port's protocol). A tunnel records its
/// conversation in `st`.
pub(super) fn over_udp<'a>(
    st: &mut State,
    d: &UdpDatagram<'a>,
) -> Result<Option<Step<'a>>, DecodeError> {
    let (low, high) = if d.src_port <= d.dst_port {
        (d.src_port, d.dst_port)
    } else {
        (d.dst_port, d.src_port)
    };
    for port in [low, high] {
        let step = match port {
            VXLAN_PORT => vxlan(d)?,
            VXLAN_GPE_PORT => vxlan_gpe(d)?,
            GENEVE_PORT => geneve(d)?,
            _ => None,
        };
        if let Some(step) = step {
            if let Some(ip) = st.ip {
                st.tunnel_udp.push(UdpConversation {
                    src: ip.src,
                    dst: ip.dst,
                    src_port: d.src_port,
                    dst_port: d.dst_port,
                })?;
            }
            return Ok(Some(step));
        }
    }
    Ok(None)
}

/// Whether datagrams on this port may carry a tunnel, so need [`over_udp`].
pub(super) fn is_tunnel_port(port: u16) -> bool {
    matches!(port, VXLAN_PORT | VXLAN_GPE_PORT | GENEVE_PORT)
}

/// The fixed tunnel header is missing: snaplen cut it (an error), or the datagram is
/// just short and so not this tunnel.
fn too_short<'a>(d: &UdpDatagram<'_>, layer: Layer) -> Result<Option<Step<'a>>, DecodeError> {
    if d.truncated {
        Err(truncated(layer))
    } else {
        Ok(None)
    }
}

/// VXLAN: flags (I must be set), 24 reserved bits, VNI, 8 reserved bits; then Ethernet.
fn vxlan<'a>(d: &UdpDatagram<'a>) -> Result<Option<Step<'a>>, DecodeError> {
    let (Some(&flags), Some(rest)) = (d.payload.first(), d.payload.get(VXLAN_LEN..)) else {
        return too_short(d, Layer::Vxlan);
    };
    Ok((flags & VXLAN_FLAG_I != 0).then_some(Step::Ethernet(rest)))
}

/// VXLAN-GPE: like VXLAN, with a version field and a next-protocol byte when P is set.
fn vxlan_gpe<'a>(d: &UdpDatagram<'a>) -> Result<Option<Step<'a>>, DecodeError> {
    let (Some(&flags), Some(&next), Some(rest)) = (
        d.payload.first(),
        d.payload.get(3),
        d.payload.get(VXLAN_LEN..),
    ) else {
        return too_short(d, Layer::VxlanGpe);
    };
    if (flags >> 4) & 0x03 != 0 {
        return Ok(None);
    }
    if flags & GPE_FLAG_P == 0 {
        return Ok(Some(Step::Ethernet(rest)));
    }
    Ok(Some(match next {
        1 => Step::Ipv4(rest),
        2 => Step::Ipv6(rest),
        3 => Step::Ethernet(rest),
        _ => Step::Done(Transport::NonIp),
    }))
}

/// Geneve: version (must be 0) and option length in 4-byte words, flags, protocol type
/// (an ethertype; 0x6558 is Ethernet), VNI; then the options.
fn geneve<'a>(d: &UdpDatagram<'a>) -> Result<Option<Step<'a>>, DecodeError> {
    let (Some(&first), Some(protocol)) = (d.payload.first(), be16(d.payload, 2)) else {
        return too_short(d, Layer::Geneve);
    };
    if d.payload.len() < GENEVE_LEN {
        return too_short(d, Layer::Geneve);
    }
    if first >> 6 != 0 {
        return Ok(None);
    }
    let header_len = GENEVE_LEN + usize::from(first & 0x3f) * 4;
    match d.payload.get(header_len..) {
        Some(rest) => Ok(Some(Step::EtherType(protocol, rest))),
        None if d.truncated => Err(truncated(Layer::Geneve)),
        None => Err(DecodeError::BadTunnelHeader {
            layer: Layer::Geneve,
            reason: "options beyond datagram",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gre_optional_fields_are_skipped() {
        // C, K and S set: checksum+reserved, key, sequence.
        let b = [
            0xb0, 0, 0x08, 0x00, 1, 1, 0, 0, 2, 2, 2, 2, 3, 3, 3, 3, 0x45,
        ];
        assert!(matches!(gre(&b), Ok(Step::EtherType(0x0800, [0x45]))));
        // Only K: key, 4 bytes.
        let b = [0x20, 0, 0x86, 0xdd, 2, 2, 2, 2, 0x60];
        assert!(matches!(gre(&b), Ok(Step::EtherType(0x86dd, [0x60]))));
        assert_eq!(
            gre(&[0x30, 0, 0x08, 0x00, 0, 0, 0]).unwrap_err(),
            truncated(Layer::Gre)
        );
    }

    #[test]
    fn gre_source_routes_are_skipped() {
        // R set: checksum/offset word, one 4-byte SRE with 2 bytes of data, the NUL SRE.
        let b = [
            0x40, 0, 0x08, 0x00, 0, 0, 0, 0, 0x08, 0x00, 0, 2, 9, 9, 0, 0, 0, 0, 0x45,
        ];
        assert!(matches!(gre(&b), Ok(Step::EtherType(0x0800, [0x45]))));
        // No terminating SRE.
        let b = [0x40, 0, 0x08, 0x00, 0, 0, 0, 0, 0x08, 0x00, 0, 2, 9, 9];
        assert_eq!(gre(&b).unwrap_err(), truncated(Layer::Gre));
    }

    #[test]
    fn gre_v1_is_not_opened() {
        let b = [0x30, 0x81, 0x88, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(gre(&b), Ok(Step::Done(Transport::Other(47)))));
    }

    #[test]
    fn erspan_versions() {
        // Type I: no sequence number, Ethernet right after GRE.
        assert!(matches!(
            gre(&[0, 0, 0x88, 0xbe, 0xee]),
            Ok(Step::Ethernet([0xee]))
        ));
        let ii = [0x10, 0, 0, 0, 0, 0, 0, 0, 0xee];
        assert!(matches!(erspan(&ii), Ok(Step::Ethernet([0xee]))));
        let mut iii = [0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xee].to_vec();
        assert!(matches!(erspan(&iii), Ok(Step::Ethernet([0xee]))));
        iii[11] = 0x01; // platform subheader present
        iii.splice(12..12, [0u8; 8]);
        assert!(matches!(erspan(&iii), Ok(Step::Ethernet([0xee]))));
        iii[10] = ERSPAN_FT_IP << 2;
        assert!(matches!(erspan(&iii), Ok(Step::Ip([0xee]))));
        assert_eq!(erspan(&iii[..15]).unwrap_err(), truncated(Layer::Erspan));
        assert_eq!(erspan(&[0x30; 12]).unwrap_err().kind(), "bad_tunnel");
    }

    fn dgram(src_port: u16, dst_port: u16, payload: &[u8], truncated: bool) -> UdpDatagram<'_> {
        UdpDatagram {
            src_port,
            dst_port,
            payload,
            truncated,
        }
    }

    #[test]
    fn vxlan_needs_the_i_flag() {
        let mut st = State::default();
        let p = [0x08, 0, 0, 0, 0, 0, 1, 0, 0xee];
        assert!(matches!(
            over_udp(&mut st, &dgram(1234, 4789, &p, false)),
            Ok(Some(Step::Ethernet([0xee])))
        ));
        let p = [0x00, 0, 0, 0, 0, 0, 1, 0, 0xee];
        assert!(matches!(
            over_udp(&mut st, &dgram(1234, 4789, &p, false)),
            Ok(None)
        ));
        // Short: plain UDP, unless snaplen cut it.
        assert!(matches!(
            over_udp(&mut st, &dgram(1234, 4789, &p[..4], false)),
            Ok(None)
        ));
        assert_eq!(
            over_udp(&mut st, &dgram(1234, 4789, &p[..4], true)).unwrap_err(),
            truncated(Layer::Vxlan)
        );
    }

    #[test]
    fn vxlan_gpe_next_protocol() {
        let mut st = State::default();
        let p = [0x0c, 0, 0, 1, 0, 0, 0, 0, 0x45];
        assert!(matches!(
            over_udp(&mut st, &dgram(1, 4790, &p, false)),
            Ok(Some(Step::Ipv4([0x45])))
        ));
        let p = [0x0c, 0, 0, 4, 0, 0, 0, 0, 0x45];
        assert!(matches!(
            over_udp(&mut st, &dgram(1, 4790, &p, false)),
            Ok(Some(Step::Done(Transport::NonIp)))
        ));
    }

    #[test]
    fn geneve_options_are_skipped() {
        let mut st = State::default();
        // 2 words of options, protocol IPv4.
        let p = [
            0x02, 0, 0x08, 0x00, 0, 0, 7, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x45,
        ];
        assert!(matches!(
            over_udp(&mut st, &dgram(1, 6081, &p, false)),
            Ok(Some(Step::EtherType(0x0800, [0x45])))
        ));
        assert_eq!(
            over_udp(&mut st, &dgram(1, 6081, &p[..12], true)).unwrap_err(),
            truncated(Layer::Geneve)
        );
        assert_eq!(
            over_udp(&mut st, &dgram(1, 6081, &p[..12], false))
                .unwrap_err()
                .kind(),
            "bad_tunnel"
        );
        // Version 1: not Geneve as we know it.
        let p = [0x40, 0, 0x65, 0x58, 0, 0, 7, 0];
        assert!(matches!(
            over_udp(&mut st, &dgram(1, 6081, &p, false)),
            Ok(None)
        ));
    }

    #[test]
    fn lower_tunnel_port_is_tried_first() {
        let mut st = State::default();
        // 4789 -> 4790 with a GPE header whose I flag is set: VXLAN (lower port) wins and
        // reads Ethernet, as the GPE reading would too.
        let p = [0x0c, 0, 0, 3, 0, 0, 0, 0, 0xee];
        assert!(matches!(
            over_udp(&mut st, &dgram(4789, 4790, &p, false)),
            Ok(Some(Step::Ethernet([0xee])))
        ));
        // VXLAN refuses (no I flag), GPE accepts.
        let p = [0x04, 0, 0, 1, 0, 0, 0, 0, 0x45];
        assert!(matches!(
            over_udp(&mut st, &dgram(4790, 4789, &p, false)),
            Ok(Some(Step::Ipv4([0x45])))
        ));
        assert!(matches!(
            over_udp(&mut st, &dgram(53, 1053, &p, false)),
            Ok(None)
        ));
    }
}
