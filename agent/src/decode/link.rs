//! Link layers: the pcap link-type headers, Ethernet, 802.3 LLC/SNAP, and VLAN tags.

use etherparse::{EtherType, Ethernet2HeaderSlice, SingleVlanHeaderSlice};

use super::{DecodeError, Layer, LinkType, Step, Transport, be16, truncated};

/// 802.1Q customer tag.
const ETH_VLAN: u16 = EtherType::VLAN_TAGGED_FRAME.0;
/// 802.1ad service tag (QinQ outer tag).
const ETH_QINQ: u16 = EtherType::PROVIDER_BRIDGING.0;
/// Pre-standard QinQ tags some switches still emit.
const ETH_QINQ_OLD1: u16 = EtherType::VLAN_DOUBLE_TAGGED_FRAME.0;
const ETH_QINQ_OLD2: u16 = 0x9200;
/// Transparent Ethernet Bridging: an Ethernet frame follows (GRE, Geneve).
pub(crate) const ETH_TEB: u16 = 0x6558;
const ETH_IPV4: u16 = EtherType::IPV4.0;
const ETH_IPV6: u16 = EtherType::IPV6.0;
/// Type/length values below this are 802.3 lengths, not ethertypes.
const ETHERTYPE_MIN: u16 = 0x0600;

/// Linux `ARPHRD_NETLINK`: the SLL protocol field is a netlink family, not an ethertype.
const ARPHRD_NETLINK: u16 = 824;

/// BSD address families seen in DLT_NULL / DLT_LOOP headers.
const AF_INET: u32 = 2;
const AF_INET6_BSD: u32 = 24;
const AF_INET6_FREEBSD: u32 = 28;
const AF_INET6_DARWIN: u32 = 30;

/// The first step for a frame of this link type.
pub(super) fn start(link: LinkType, frame: &[u8]) -> Result<Step<'_>, DecodeError> {
    match link {
        LinkType::Ethernet => Ok(Step::Ethernet(frame)),
        LinkType::Null | LinkType::Loop => null(frame),
        LinkType::Raw => Ok(Step::Ip(frame)),
        LinkType::Ipv4 => Ok(Step::Ipv4(frame)),
        LinkType::Ipv6 => Ok(Step::Ipv6(frame)),
        LinkType::LinuxSll => sll(frame),
        LinkType::LinuxSll2 => sll2(frame),
        LinkType::Unsupported(dlt) => Err(DecodeError::UnsupportedLinkType { dlt }),
    }
}

/// DLT_NULL / DLT_LOOP: the family is in the writer's byte order for NULL and network
/// order for LOOP, but files are moved between hosts, so both orders are accepted: family
/// values are small, so whichever reading fits in 16 bits is the right one.
fn null(frame: &[u8]) -> Result<Step<'_>, DecodeError> {
    let (Some(&head), Some(rest)) = (frame.first_chunk::<4>(), frame.get(4..)) else {
        return Err(truncated(Layer::Null));
    };
    let le = u32::from_le_bytes(head);
    let family = if le & 0xffff_0000 == 0 {
        le
    } else {
        u32::from_be_bytes(head)
    };
    Ok(match family {
        AF_INET => Step::Ipv4(rest),
        AF_INET6_BSD | AF_INET6_FREEBSD | AF_INET6_DARWIN => Step::Ipv6(rest),
        _ => Step::Done(Transport::NonIp),
    })
}

/// Linux cooked v1: packet type, ARPHRD, address length, 8 address bytes, protocol.
fn sll(frame: &[u8]) -> Result<Step<'_>, DecodeError> {
    let (Some(arphrd), Some(protocol), Some(rest)) =
        (be16(frame, 2), be16(frame, 14), frame.get(16..))
    else {
        return Err(truncated(Layer::LinuxSll));
    };
    cooked(arphrd, protocol, rest)
}

/// Linux cooked v2: protocol, reserved, interface index, ARPHRD, packet type, address
/// length, 8 address bytes.
fn sll2(frame: &[u8]) -> Result<Step<'_>, DecodeError> {
    let (Some(protocol), Some(arphrd), Some(rest)) =
        (be16(frame, 0), be16(frame, 8), frame.get(20..))
    else {
        return Err(truncated(Layer::LinuxSll2));
    };
    cooked(arphrd, protocol, rest)
}

/// The protocol field of a cooked header is an ethertype (or a small Linux `ETH_P_*`
/// value that is not IP) except on netlink captures.
fn cooked(arphrd: u16, protocol: u16, rest: &[u8]) -> Result<Step<'_>, DecodeError> {
    if arphrd == ARPHRD_NETLINK {
        return Ok(Step::Done(Transport::NonIp));
    }
    ethertype(protocol, rest)
}

/// An Ethernet header: Ethernet II, or 802.3 with an LLC/SNAP header.
pub(super) fn ethernet(b: &[u8]) -> Result<Step<'_>, DecodeError> {
    let header = Ethernet2HeaderSlice::from_slice(b).map_err(|_| truncated(Layer::Ethernet))?;
    let rest = b.get(header.slice().len()..).unwrap_or_default();
    let type_or_len = header.ether_type().0;
    if type_or_len < ETHERTYPE_MIN {
        return Ok(llc(rest));
    }
    Ok(Step::EtherType(type_or_len, rest))
}

/// 802.2 LLC: only SNAP with an ethertype (OUI 0) leads anywhere.
fn llc(b: &[u8]) -> Step<'_> {
    match (b.get(..6), be16(b, 6), b.get(8..)) {
        (Some([0xaa, 0xaa, 0x03, 0, 0, 0]), Some(ethertype), Some(rest))
            if ethertype >= ETHERTYPE_MIN =>
        {
            Step::EtherType(ethertype, rest)
        }
        _ => Step::Done(Transport::NonIp),
    }
}

/// What follows a type field holding `ethertype`. A VLAN tag is one step, so QinQ stacks
/// of any depth are bounded by the decoder's step limit.
pub(super) fn ethertype(ethertype: u16, b: &[u8]) -> Result<Step<'_>, DecodeError> {
    Ok(match ethertype {
        ETH_IPV4 => Step::Ipv4(b),
        ETH_IPV6 => Step::Ipv6(b),
        ETH_VLAN | ETH_QINQ | ETH_QINQ_OLD1 | ETH_QINQ_OLD2 => {
            let tag = SingleVlanHeaderSlice::from_slice(b).map_err(|_| truncated(Layer::Vlan))?;
            let rest = b.get(tag.slice().len()..).unwrap_or_default();
            let inner = tag.ether_type().0;
            if inner < ETHERTYPE_MIN {
                llc(rest)
            } else {
                Step::EtherType(inner, rest)
            }
        }
        ETH_TEB => Step::Ethernet(b),
        _ => Step::Done(Transport::NonIp),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_family_in_either_byte_order() {
        let v4 = [2u8, 0, 0, 0, 0x45];
        assert!(matches!(null(&v4), Ok(Step::Ipv4([0x45]))));
        let v4_be = [0u8, 0, 0, 2, 0x45];
        assert!(matches!(null(&v4_be), Ok(Step::Ipv4([0x45]))));
        for fam in [24u32, 28, 30] {
            let mut b = fam.to_le_bytes().to_vec();
            b.push(0x60);
            assert!(matches!(null(&b), Ok(Step::Ipv6([0x60]))), "family {fam}");
            let mut b = fam.to_be_bytes().to_vec();
            b.push(0x60);
            assert!(
                matches!(null(&b), Ok(Step::Ipv6([0x60]))),
                "family {fam} BE"
            );
        }
        assert!(matches!(
            null(&[7, 0, 0, 0]),
            Ok(Step::Done(Transport::NonIp))
        ));
        assert_eq!(null(&[2, 0, 0]).err(), Some(truncated(Layer::Null)));
    }

    #[test]
    fn snap_with_ethertype_is_followed() {
        let b = [0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0x00, 0x45];
        assert!(matches!(llc(&b), Step::EtherType(0x0800, [0x45])));
        // Plain LLC (spanning tree) is not IP.
        assert!(matches!(
            llc(&[0x42, 0x42, 0x03, 0, 0]),
            Step::Done(Transport::NonIp)
        ));
    }

    #[test]
    fn netlink_cooked_capture_is_not_ip() {
        let mut f = [0u8; 20];
        f[2..4].copy_from_slice(&ARPHRD_NETLINK.to_be_bytes());
        f[14..16].copy_from_slice(&0x0800u16.to_be_bytes());
        assert!(matches!(sll(&f), Ok(Step::Done(Transport::NonIp))));
        f[2..4].copy_from_slice(&1u16.to_be_bytes());
        assert!(matches!(sll(&f), Ok(Step::Ipv4(_))));
    }

    #[test]
    fn vlan_tag_needs_four_bytes() {
        assert_eq!(
            ethertype(ETH_VLAN, &[0, 1, 8]).err(),
            Some(truncated(Layer::Vlan))
        );
        assert!(matches!(
            ethertype(ETH_QINQ, &[0, 1, 0x81, 0]),
            Ok(Step::EtherType(ETH_VLAN, []))
        ));
    }
}
