//! End-to-end decoder tests: hand-built frames for every link type and tunnel, truncation
//! at every length, garbage, a differential check against etherparse, and real captures.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice, VlanId};
use proptest::prelude::*;

use super::*;

// ---- frame builders (tests may allocate) ----

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = [MAC_B, MAC_A].concat();
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A VLAN tag (TPID already written by the caller's ethertype) and the inner type.
fn tag(vid: u16, inner: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vid.to_be_bytes().to_vec();
    f.extend_from_slice(&inner.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, payload: &[u8]) -> Vec<u8> {
    ipv4_frag(src, dst, proto, ttl, 0, payload)
}

fn ipv4_frag(src: [u8; 4], dst: [u8; 4], proto: u8, ttl: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).unwrap();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34]);
    p.extend_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(&[ttl, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    p.extend_from_slice(&[next, hop_limit]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(payload);
    p
}

fn tcp(sport: u16, dport: u16, seq: u32, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let mut t = sport.to_be_bytes().to_vec();
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&7u32.to_be_bytes());
    t.push(u8::try_from((20 + options.len()) / 4).unwrap() << 4);
    t.push(flags);
    t.extend_from_slice(&[0x72, 0x10, 0, 0, 0, 0]); // window 29200, checksum, urgent
    t.extend_from_slice(options);
    t.extend_from_slice(payload);
    t
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

const A4: [u8; 4] = [192, 0, 2, 1];
const B4: [u8; 4] = [198, 51, 100, 2];
const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// The inner packet every tunnel test carries: 10.0.0.1:40000 -> 10.0.0.2:443, SYN.
fn inner_v4() -> Vec<u8> {
    ipv4(
        [10, 0, 0, 1],
        [10, 0, 0, 2],
        6,
        42,
        &tcp(40000, 443, 1000, SYN, &[2, 4, 5, 0xb4], b"hi"),
    )
}

fn tcp_of<'a>(p: &'a Packet<'a>) -> &'a TcpSegment<'a> {
    match &p.transport {
        Transport::Tcp(t) => t,
        other => panic!("expected TCP, got {other:?}"),
    }
}

fn udp_of<'a>(p: &'a Packet<'a>) -> &'a UdpDatagram<'a> {
    match &p.transport {
        Transport::Udp(u) => u,
        other => panic!("expected UDP, got {other:?}"),
    }
}

fn assert_inner(p: &Packet<'_>) {
    assert_eq!(p.src, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(p.dst, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
    assert_eq!(p.ttl, 42);
    let t = tcp_of(p);
    assert_eq!(
        (t.src_port, t.dst_port, t.seq, t.flags),
        (40000, 443, 1000, SYN)
    );
    assert_eq!(t.options, &[2, 4, 5, 0xb4]);
    assert_eq!(t.payload, b"hi");
    assert!(!t.truncated);
}

// ---- link types ----

#[test]
fn ethernet_tcp_via_packet_builder() {
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(A4, B4, 61)
        .tcp(1234, 443, 0xdead_beef, 64240)
        .syn()
        .ack(5)
        .ns()
        .options_raw(&[2, 4, 5, 0xb4, 1, 3, 3, 7])
        .unwrap();
    let mut f = Vec::new();
    builder.write(&mut f, b"payload").unwrap();
    let p = decode(LinkType::Ethernet, &f).unwrap();
    assert_eq!(
        (p.src, p.dst, p.ttl),
        (IpAddr::from(A4), IpAddr::from(B4), 61)
    );
    assert_eq!(p.ip_payload_len, 28 + 7);
    let t = tcp_of(&p);
    assert_eq!(
        (t.src_port, t.dst_port, t.seq, t.ack, t.window),
        (1234, 443, 0xdead_beef, 5, 64240)
    );
    assert_eq!(t.flags, SYN | ACK);
    assert!(t.ns);
    assert_eq!(t.options, &[2, 4, 5, 0xb4, 1, 3, 3, 7]);
    assert_eq!(t.payload, b"payload");
    assert!(!p.has_icmp && p.tunnel_udp.is_empty());
}

#[test]
fn every_link_type() {
    let v4 = inner_v4();
    let v6 = ipv6(A6, B6, 17, 9, &udp(5353, 53, b"q"));
    let check_v4 = |p: Packet<'_>| assert_inner(&p);
    let check_v6 = |p: Packet<'_>| {
        assert_eq!(
            (p.src, p.dst, p.ttl),
            (IpAddr::from(A6), IpAddr::from(B6), 9)
        );
        assert_eq!(udp_of(&p).payload, b"q");
    };

    check_v4(decode(LinkType::Ethernet, &eth(0x0800, &v4)).unwrap());
    check_v6(decode(LinkType::Ethernet, &eth(0x86dd, &v6)).unwrap());
    // NULL: host order (little-endian writer and big-endian writer), LOOP: network order.
    check_v4(decode(LinkType::Null, &[&2u32.to_le_bytes()[..], &v4].concat()).unwrap());
    check_v4(decode(LinkType::Null, &[&2u32.to_be_bytes()[..], &v4].concat()).unwrap());
    for af in [24u32, 28, 30] {
        check_v6(decode(LinkType::Null, &[&af.to_le_bytes()[..], &v6].concat()).unwrap());
        check_v6(decode(LinkType::Loop, &[&af.to_be_bytes()[..], &v6].concat()).unwrap());
    }
    check_v4(decode(LinkType::Loop, &[&2u32.to_be_bytes()[..], &v4].concat()).unwrap());
    for dlt in [101, 12, 14] {
        let link = LinkType::from_dlt(dlt).unwrap();
        assert_eq!(link, LinkType::Raw);
        check_v4(decode(link, &v4).unwrap());
        check_v6(decode(link, &v6).unwrap());
    }
    check_v4(decode(LinkType::from_dlt(228).unwrap(), &v4).unwrap());
    check_v6(decode(LinkType::from_dlt(229).unwrap(), &v6).unwrap());
    // Raw IPv4 link type holding IPv6 is a bad header, not a guess.
    assert_eq!(decode(LinkType::Ipv4, &v6).unwrap_err().kind(), "bad_ip");

    // SLL: packet type, ARPHRD_ETHER, address length 6, address, protocol.
    let mut sll = vec![0, 0, 0, 1, 0, 6];
    sll.extend_from_slice(&[MAC_A.as_slice(), &[0, 0]].concat());
    sll.extend_from_slice(&0x0800u16.to_be_bytes());
    check_v4(decode(LinkType::from_dlt(113).unwrap(), &[&sll[..], &v4].concat()).unwrap());
    // SLL with a VLAN tag put back by libpcap.
    let mut sll_vlan = sll.clone();
    sll_vlan[14..16].copy_from_slice(&0x8100u16.to_be_bytes());
    check_v4(
        decode(
            LinkType::LinuxSll,
            &[&sll_vlan[..], &tag(7, 0x0800, &v4)].concat(),
        )
        .unwrap(),
    );

    // SLL2: protocol, reserved, ifindex, ARPHRD_ETHER, packet type, address length, address.
    let mut sll2 = 0x86ddu16.to_be_bytes().to_vec();
    sll2.extend_from_slice(&[0, 0, 0, 0, 0, 3, 0, 1, 0, 6]);
    sll2.extend_from_slice(&[MAC_A.as_slice(), &[0, 0]].concat());
    assert_eq!(sll2.len(), 20);
    check_v6(decode(LinkType::from_dlt(276).unwrap(), &[&sll2[..], &v6].concat()).unwrap());

    // Unknown link types are refused, and round-trip their number.
    assert_eq!(LinkType::from_dlt(127), None);
    let radiotap = LinkType::from_dlt_lossy(127);
    assert_eq!(radiotap.dlt(), 127);
    let e = decode(radiotap, &v4).unwrap_err();
    assert_eq!(e, DecodeError::UnsupportedLinkType { dlt: 127 });
    assert_eq!(e.kind(), "unsupported_link_type");
    assert_eq!(LinkType::from(pcap::Linktype(276)), LinkType::LinuxSll2);
}

#[test]
fn arp_and_unknown_ethertypes_are_non_ip() {
    let frame = eth(0x0806, &[0; 28]);
    let p = decode(LinkType::Ethernet, &frame).unwrap();
    assert_eq!(p.transport, Transport::NonIp);
    assert_eq!(p.src, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let frame = eth(0x88cc, &[0; 28]);
    let p = decode(LinkType::Ethernet, &frame).unwrap(); // LLDP
    assert_eq!(p.transport, Transport::NonIp);
    // 802.3 length + LLC/SNAP carrying IPv4.
    let v4 = inner_v4();
    let mut snap = vec![0xaa, 0xaa, 0x03, 0, 0, 0, 0x08, 0x00];
    snap.extend_from_slice(&v4);
    let frame = eth(u16::try_from(snap.len()).unwrap(), &snap);
    let p = decode(LinkType::Ethernet, &frame).unwrap();
    assert_inner(&p);
}

#[test]
fn other_ip_protocols_and_icmp() {
    let frame = ipv4(A4, B4, 132, 64, &[0; 12]);
    let p = decode_ip(&frame).unwrap(); // SCTP
    assert_eq!((p.transport, p.has_icmp), (Transport::Other(132), false));
    let frame = ipv4(A4, B4, 1, 64, &[8, 0, 0, 0, 0, 1, 0, 1]);
    let p = decode_ip(&frame).unwrap();
    assert_eq!((p.transport, p.has_icmp), (Transport::Other(1), true));
    let frame = ipv6(A6, B6, 58, 64, &[128, 0, 0, 0, 0, 1, 0, 1]);
    let p = decode_ip(&frame).unwrap();
    assert_eq!((p.transport, p.has_icmp), (Transport::Other(58), true));
    // ICMP inside a tunnel still counts.
    let gre = [
        &[0u8, 0, 0x08, 0x00][..],
        &ipv4([10, 0, 0, 1], [10, 0, 0, 2], 1, 5, &[0; 8]),
    ]
    .concat();
    let frame = ipv4(A4, B4, 47, 64, &gre);
    let p = decode_ip(&frame).unwrap();
    assert!(p.has_icmp);
    assert_eq!(p.src, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
}

// ---- VLAN ----

#[test]
fn vlan_qinq_and_deep_stacks() {
    let v4 = inner_v4();
    assert_inner(&decode(LinkType::Ethernet, &eth(0x8100, &tag(100, 0x0800, &v4))).unwrap());
    let qinq = eth(0x88a8, &tag(10, 0x8100, &tag(20, 0x0800, &v4)));
    assert_inner(&decode(LinkType::Ethernet, &qinq).unwrap());
    let old = eth(
        0x9100,
        &tag(10, 0x9200, &tag(20, 0x8100, &tag(30, 0x0800, &v4))),
    );
    assert_inner(&decode(LinkType::Ethernet, &old).unwrap());

    // The builder's QinQ, as a cross-check of the tag layout.
    let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(VlanId::try_new(1).unwrap(), VlanId::try_new(2).unwrap())
        .ipv6(A6, B6, 3)
        .udp(1, 2);
    let mut f = Vec::new();
    builder.write(&mut f, b"x").unwrap();
    let p = decode(LinkType::Ethernet, &f).unwrap();
    assert_eq!((p.ttl, udp_of(&p).payload), (3, &b"x"[..]));

    // 20 tags decode; a thousand are refused instead of looping.
    let mut deep = v4.clone();
    let mut ty = 0x0800;
    for _ in 0..20 {
        deep = tag(1, ty, &deep);
        ty = 0x8100;
    }
    assert_inner(&decode(LinkType::Ethernet, &eth(0x8100, &deep)).unwrap());
    let mut f = eth(0x8100, &[]);
    for _ in 0..1000 {
        f.extend_from_slice(&[0, 1, 0x81, 0]);
    }
    assert_eq!(
        decode(LinkType::Ethernet, &f).unwrap_err(),
        DecodeError::TooManyLayers
    );

    // Around the step limit, behind an IPv4 header the fast path reads: both paths agree
    // on where the limit falls.
    let mut outcomes = std::collections::HashSet::new();
    for tags in 50..64 {
        let mut stack = inner_v4();
        let mut ty = 0x0800;
        for _ in 0..tags {
            stack = tag(1, ty, &stack);
            ty = 0x8100;
        }
        let gre = [&[0u8, 0, 0x65, 0x58][..], &eth(0x8100, &stack)].concat();
        let frame = eth(0x0800, &ipv4(A4, B4, 47, 64, &gre));
        assert_paths_agree(LinkType::Ethernet, &frame);
        let tagged = eth(0x8100, &tag(1, 0x0800, &ipv4(A4, B4, 47, 64, &gre)));
        assert_paths_agree(LinkType::Ethernet, &tagged);
        outcomes.insert(decode(LinkType::Ethernet, &frame).is_ok());
        outcomes.insert(decode(LinkType::Ethernet, &tagged).is_ok());
    }
    assert_eq!(outcomes.len(), 2, "the limit falls inside the range tried");
}

// ---- IP details ----

#[test]
fn ipv6_hop_by_hop_and_fragment_headers() {
    let segment = tcp(443, 50000, 77, ACK, &[], b"data");
    let mut exts = vec![44, 0, 1, 4, 0, 0, 0, 0]; // hop-by-hop -> fragment
    exts.extend_from_slice(&[6, 0, 0, 1, 0xca, 0xfe, 0, 1]); // fragment: offset 0, M
    let frame = ipv6(A6, B6, 0, 64, &[&exts[..], &segment].concat());
    let p = decode_ip(&frame).unwrap();
    let t = tcp_of(&p);
    assert_eq!((t.src_port, t.seq, t.payload), (443, 77, &b"data"[..]));
    assert!(t.truncated, "a first fragment holds part of the payload");
    assert_eq!(p.ip_payload_len, segment.len());

    // Same without the M flag: a whole packet.
    exts[11] = 0;
    let frame = ipv6(A6, B6, 0, 64, &[&exts[..], &segment].concat());
    let p = decode_ip(&frame).unwrap();
    assert!(!tcp_of(&p).truncated);

    // A later fragment: offset 185 (1480 bytes).
    let later = [
        &[44u8, 0, 1, 4, 0, 0, 0, 0][..],
        &[6, 0, 0x05, 0xc8, 0xca, 0xfe, 0, 1],
        b"more bytes",
    ]
    .concat();
    let frame = ipv6(A6, B6, 0, 64, &later);
    let p = decode_ip(&frame).unwrap();
    assert_eq!(p.transport, Transport::Fragment);
    assert_eq!(p.ip_payload_len, 10);

    // Routing, destination options and AH in between.
    let mut chain = vec![43, 0, 1, 4, 0, 0, 0, 0]; // hop-by-hop -> routing
    chain.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]); // routing -> dest opts
    chain.extend_from_slice(&[51, 0, 1, 4, 0, 0, 0, 0]); // dest opts -> AH
    chain.extend_from_slice(&[17, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]); // AH (16 bytes) -> UDP
    let frame = ipv6(A6, B6, 0, 64, &[&chain[..], &udp(1, 2, b"ah")].concat());
    let p = decode_ip(&frame).unwrap();
    assert_eq!(udp_of(&p).payload, b"ah");
}

#[test]
fn ipv4_options_and_fragments() {
    // IHL 6: one 4-byte option word (NOP NOP NOP EOL).
    let segment = tcp(80, 1024, 5, SYN, &[], &[]);
    let mut p = ipv4(A4, B4, 6, 64, &[[1, 1, 1, 0].as_slice(), &segment].concat());
    p[0] = 0x46;
    let d = decode_ip(&p).unwrap();
    assert_eq!((tcp_of(&d).src_port, d.ip_payload_len), (80, 20));

    let frag = ipv4_frag(A4, B4, 6, 64, 0x00b9, b"middle of something");
    assert_eq!(decode_ip(&frag).unwrap().transport, Transport::Fragment);
    // First fragment too short for the TCP header (8 bytes): a fragment, not an error.
    let tiny = ipv4_frag(A4, B4, 6, 64, 0x2000, &segment[..8]);
    assert_eq!(decode_ip(&tiny).unwrap().transport, Transport::Fragment);
    // The same 8 bytes unfragmented are a bad TCP header.
    let bad = ipv4(A4, B4, 6, 64, &segment[..8]);
    assert_eq!(decode_ip(&bad).unwrap_err().kind(), "bad_tcp");
    // UDP first fragment: payload partial and marked.
    let dgram = udp(5000, 5001, &[7; 100]);
    let mut first = ipv4_frag(A4, B4, 17, 64, 0x2000, &dgram[..48]);
    first[2..4].copy_from_slice(&68u16.to_be_bytes());
    let d = decode_ip(&first).unwrap();
    let u = udp_of(&d);
    assert_eq!((u.payload.len(), u.truncated), (40, true));
}

#[test]
fn malformed_transport_headers() {
    let mut segment = tcp(1, 2, 3, SYN, &[], &[]);
    segment[12] = 0x40; // data offset 4
    assert_eq!(
        decode_ip(&ipv4(A4, B4, 6, 64, &segment))
            .unwrap_err()
            .kind(),
        "bad_tcp"
    );
    segment[12] = 0xf0; // 60 bytes of header in a 20-byte payload
    assert_eq!(
        decode_ip(&ipv4(A4, B4, 6, 64, &segment))
            .unwrap_err()
            .kind(),
        "bad_tcp"
    );
    let mut dgram = udp(1, 2, b"abc");
    dgram[4..6].copy_from_slice(&4u16.to_be_bytes());
    let e = decode_ip(&ipv4(A4, B4, 17, 64, &dgram)).unwrap_err();
    assert_eq!(
        (e.kind(), e),
        (
            "bad_udp",
            DecodeError::BadUdpHeader {
                reason: "length below 8"
            }
        )
    );
    // UDP length shorter than the IP payload: the UDP length wins (trailer cut off).
    let mut dgram = udp(1, 2, b"abcdef");
    dgram[4..6].copy_from_slice(&10u16.to_be_bytes());
    let frame = ipv4(A4, B4, 17, 64, &dgram);
    let p = decode_ip(&frame).unwrap();
    assert_eq!(udp_of(&p).payload, b"ab");
}

#[test]
fn ethernet_padding_is_removed() {
    // A bare SYN is 54 bytes; Ethernet pads it to 60.
    let mut f = eth(0x0800, &ipv4(A4, B4, 6, 64, &tcp(1, 2, 3, SYN, &[], &[])));
    f.extend_from_slice(&[0; 6]);
    let p = decode(LinkType::Ethernet, &f).unwrap();
    let t = tcp_of(&p);
    assert!(t.payload.is_empty() && !t.truncated);
    let mut f = eth(0x86dd, &ipv6(A6, B6, 17, 64, &udp(1, 2, b"x")));
    f.extend_from_slice(&[0xee; 9]);
    let p = decode(LinkType::Ethernet, &f).unwrap();
    assert_eq!(udp_of(&p).payload, b"x");
    // Padding after a tunnelled packet too.
    let mut f = eth(
        0x0800,
        &ipv4(
            A4,
            B4,
            4,
            64,
            &ipv4([10, 0, 0, 1], [10, 0, 0, 2], 17, 1, &udp(1, 2, b"")),
        ),
    );
    f.extend_from_slice(&[0xee; 4]);
    assert!(
        udp_of(&decode(LinkType::Ethernet, &f).unwrap())
            .payload
            .is_empty()
    );
}

#[test]
fn snaplen_truncated_tcp_payload() {
    let payload = [0x16u8; 1200];
    let f = eth(
        0x0800,
        &ipv4(A4, B4, 6, 64, &tcp(50000, 443, 9, ACK, &[], &payload)),
    );
    let cut = f.get(..96).unwrap();
    let p = decode(LinkType::Ethernet, cut).unwrap();
    let t = tcp_of(&p);
    assert_eq!(t.payload.len(), 96 - 14 - 20 - 20);
    assert!(t.truncated);
    assert_eq!(p.ip_payload_len, 20 + 1200);
    // Cut inside the TCP options: the header itself is truncated.
    let f = eth(
        0x0800,
        &ipv4(
            A4,
            B4,
            6,
            64,
            &tcp(1, 2, 3, SYN, &[2, 4, 5, 0xb4, 1, 1, 4, 2], &[]),
        ),
    );
    assert_eq!(
        decode(LinkType::Ethernet, &f[..14 + 20 + 24]).unwrap_err(),
        truncated(Layer::Tcp)
    );
}

// ---- tunnels ----

#[test]
fn gre_carrying_ip_and_ethernet() {
    let inner = inner_v4();
    // Checksum, key and sequence present.
    let gre = [
        &[0xb0u8, 0, 0x08, 0x00, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1][..],
        &inner,
    ]
    .concat();
    let frame = eth(0x0800, &ipv4(A4, B4, 47, 64, &gre));
    let p = decode(LinkType::Ethernet, &frame).unwrap();
    assert_inner(&p);
    assert!(p.tunnel_udp.is_empty());
    // IPv6 over GRE over IPv6.
    let inner6 = ipv6(B6, A6, 6, 1, &tcp(22, 60000, 1, ACK, &[], b"ssh"));
    let gre = [&[0u8, 0, 0x86, 0xdd][..], &inner6].concat();
    let frame = eth(0x86dd, &ipv6(A6, B6, 47, 64, &gre));
    let p = decode(LinkType::Ethernet, &frame).unwrap();
    assert_eq!(
        (p.src, p.ttl, tcp_of(&p).payload),
        (IpAddr::from(B6), 1, &b"ssh"[..])
    );
    // Transparent Ethernet Bridging, with a VLAN inside.
    let gre = [
        &[0x20u8, 0, 0x65, 0x58, 0, 0, 0, 1][..],
        &eth(0x8100, &tag(5, 0x0800, &inner)),
    ]
    .concat();
    assert_inner(
        &decode(
            LinkType::Ethernet,
            &eth(0x0800, &ipv4(A4, B4, 47, 64, &gre)),
        )
        .unwrap(),
    );
}

#[test]
fn erspan_type_ii_and_iii() {
    let mirrored = eth(0x0800, &inner_v4());
    // Type II: GRE with sequence number, 8-byte ERSPAN header (version 1).
    let gre = [
        &[0x10u8, 0, 0x88, 0xbe, 0, 0, 0, 5][..],
        &[0x10, 0x64, 0, 0x14, 0, 0, 0, 1],
        &mirrored,
    ]
    .concat();
    assert_inner(
        &decode(
            LinkType::Ethernet,
            &eth(0x0800, &ipv4(A4, B4, 47, 64, &gre)),
        )
        .unwrap(),
    );
    // Type III with the platform subheader (O bit).
    let erspan3 = [0x20u8, 0, 0, 0x14, 1, 2, 3, 4, 0, 0, 0, 0x01];
    let gre = [
        &[0x10u8, 0, 0x22, 0xeb, 0, 0, 0, 5][..],
        &erspan3,
        &[0xaa; 8],
        &mirrored,
    ]
    .concat();
    assert_inner(
        &decode(
            LinkType::Ethernet,
            &eth(0x0800, &ipv4(A4, B4, 47, 64, &gre)),
        )
        .unwrap(),
    );
    // Type III without it.
    let gre = [
        &[0x10u8, 0, 0x22, 0xeb, 0, 0, 0, 5][..],
        &[0x20u8, 0, 0, 0x14, 1, 2, 3, 4, 0, 0, 0, 0],
        &mirrored,
    ]
    .concat();
    assert_inner(
        &decode(
            LinkType::Ethernet,
            &eth(0x0800, &ipv4(A4, B4, 47, 64, &gre)),
        )
        .unwrap(),
    );
}

#[test]
fn vxlan_records_the_outer_conversation() {
    let vx = [
        &[0x08u8, 0, 0, 0, 0, 0x12, 0x34, 0][..],
        &eth(0x0800, &inner_v4()),
    ]
    .concat();
    let outer = eth(0x0800, &ipv4(A4, B4, 17, 64, &udp(49152, 4789, &vx)));
    let p = decode(LinkType::Ethernet, &outer).unwrap();
    assert_inner(&p);
    let conv = UdpConversation {
        src: A4.into(),
        dst: B4.into(),
        src_port: 49152,
        dst_port: 4789,
    };
    assert_eq!(p.tunnel_udp.as_slice(), &[conv]);
    assert_eq!(p.tunnel_udp.iter().count(), 1);

    // VXLAN in VXLAN (over IPv6): both conversations, outer first.
    let outer6 = ipv6(
        A6,
        B6,
        17,
        64,
        &udp(
            1111,
            4789,
            &[&[0x08u8, 0, 0, 0, 0, 0, 1, 0][..], &outer].concat(),
        ),
    );
    let frame = eth(0x86dd, &outer6);
    let p = decode(LinkType::Ethernet, &frame).unwrap();
    assert_inner(&p);
    let first = UdpConversation {
        src: A6.into(),
        dst: B6.into(),
        src_port: 1111,
        dst_port: 4789,
    };
    assert_eq!(p.tunnel_udp.as_slice(), &[first, conv]);
}

#[test]
fn geneve_with_options() {
    // Version 0, 3 words of options, C flag, protocol 0x6558 (Ethernet).
    let mut gnv = vec![0x03, 0x40, 0x65, 0x58, 0, 0, 0x0a, 0];
    gnv.extend_from_slice(&[0x01, 0x02, 0x80, 0x02, 1, 2, 3, 4, 5, 6, 7, 8]); // one option, 8 data bytes
    gnv.extend_from_slice(&eth(0x0800, &inner_v4()));
    let frame = eth(0x0800, &ipv4(A4, B4, 17, 64, &udp(12618, 6081, &gnv)));
    let p = decode(LinkType::Ethernet, &frame).unwrap();
    assert_inner(&p);
    assert_eq!(p.tunnel_udp.len(), 1);
    // Protocol IPv4 directly, no options.
    let gnv = [&[0u8, 0, 0x08, 0x00, 0, 0, 0x0b, 0][..], &inner_v4()].concat();
    let frame = eth(0x0800, &ipv4(A4, B4, 17, 64, &udp(50525, 6081, &gnv)));
    let p = decode(LinkType::Ethernet, &frame).unwrap();
    assert_inner(&p);
}

#[test]
fn ip_in_ip() {
    assert_inner(&decode_ip(&ipv4(A4, B4, 4, 64, &inner_v4())).unwrap());
    // 6in4 (protocol 41) and 4in6 (protocol 4).
    let inner6 = ipv6(A6, B6, 17, 2, &udp(3, 4, b"6in4"));
    let frame = ipv4(A4, B4, 41, 64, &inner6);
    let p = decode_ip(&frame).unwrap();
    assert_eq!(
        (p.src, p.ttl, udp_of(&p).payload),
        (IpAddr::from(A6), 2, &b"6in4"[..])
    );
    assert_inner(&decode_ip(&ipv6(A6, B6, 4, 64, &inner_v4())).unwrap());
    // A tunnel that is a later fragment is not opened.
    let frame = ipv4_frag(A4, B4, 4, 64, 0x0010, &inner_v4());
    let p = decode_ip(&frame).unwrap();
    assert_eq!(
        (p.transport, p.src),
        (Transport::Fragment, IpAddr::from(A4))
    );
    // A non-IP payload inside a tunnel: the outer IP with no transport.
    let gre = [&[0u8, 0, 0x65, 0x58][..], &eth(0x0806, &[0; 28])].concat();
    let frame = ipv4(A4, B4, 47, 64, &gre);
    let p = decode_ip(&frame).unwrap();
    assert_eq!((p.transport, p.src), (Transport::NonIp, IpAddr::from(A4)));
}

#[test]
fn nesting_is_bounded() {
    let mut p = inner_v4();
    for _ in 0..MAX_IP_LAYERS - 1 {
        p = ipv4(A4, B4, 4, 64, &p);
    }
    assert_inner(&decode_ip(&p).unwrap());
    let p = ipv4(A4, B4, 4, 64, &p);
    assert_eq!(decode_ip(&p).unwrap_err(), DecodeError::TooManyLayers);
    assert_eq!(DecodeError::TooManyLayers.kind(), "too_many_layers");

    // More UDP tunnels than the inline array holds.
    let mut f = inner_v4();
    for _ in 0..MAX_TUNNEL_UDP + 1 {
        let vx = [&[0x08u8, 0, 0, 0, 0, 0, 1, 0][..], &eth(0x0800, &f)].concat();
        f = ipv4(A4, B4, 17, 64, &udp(1, 4789, &vx));
    }
    assert_eq!(decode_ip(&f).unwrap_err(), DecodeError::TooManyLayers);
}

// ---- truncation and garbage ----

/// Frames covering every layer the decoder reads.
fn corpus() -> Vec<(LinkType, Vec<u8>)> {
    let inner = inner_v4();
    let mirrored = eth(0x0800, &inner);
    let vx = [&[0x08u8, 0, 0, 0, 0, 0x12, 0x34, 0][..], &mirrored].concat();
    let gnv = [
        &[0x01u8, 0, 0x65, 0x58, 0, 0, 0x0a, 0, 1, 2, 3, 4][..],
        &mirrored,
    ]
    .concat();
    let erspan2 = [
        &[0x10u8, 0, 0x88, 0xbe, 0, 0, 0, 5, 0x10, 0, 0, 1, 0, 0, 0, 1][..],
        &mirrored,
    ]
    .concat();
    let erspan3 = [
        &[0x10u8, 0, 0x22, 0xeb, 0, 0, 0, 5][..],
        &[0x20, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
        &[0; 8],
        &mirrored,
    ]
    .concat();
    let ext6 = [
        &[44u8, 0, 1, 4, 0, 0, 0, 0][..],
        &[6, 0, 0, 0, 0, 0, 0, 1],
        &tcp(1, 2, 3, SYN, &[], b"x"),
    ]
    .concat();
    vec![
        (LinkType::Ethernet, eth(0x0800, &inner)),
        (
            LinkType::Ethernet,
            eth(
                0x88a8,
                &tag(1, 0x8100, &tag(2, 0x86dd, &ipv6(A6, B6, 0, 1, &ext6))),
            ),
        ),
        (
            LinkType::Ethernet,
            eth(0x0800, &ipv4(A4, B4, 17, 64, &udp(9, 4789, &vx))),
        ),
        (
            LinkType::Ethernet,
            eth(0x0800, &ipv4(A4, B4, 17, 64, &udp(9, 6081, &gnv))),
        ),
        (
            LinkType::Ethernet,
            eth(0x0800, &ipv4(A4, B4, 47, 64, &erspan2)),
        ),
        (
            LinkType::Ethernet,
            eth(0x0800, &ipv4(A4, B4, 47, 64, &erspan3)),
        ),
        (
            LinkType::Null,
            [
                &2u32.to_le_bytes()[..],
                &ipv4(A4, B4, 41, 64, &ipv6(A6, B6, 4, 1, &inner)),
            ]
            .concat(),
        ),
        (
            LinkType::LinuxSll,
            [
                &[0u8, 0, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0, 0x08, 0x00][..],
                &inner,
            ]
            .concat(),
        ),
        (
            LinkType::LinuxSll2,
            [
                &[
                    0x08u8, 0x00, 0, 0, 0, 0, 0, 1, 0, 1, 0, 6, 1, 2, 3, 4, 5, 6, 0, 0,
                ][..],
                &inner,
            ]
            .concat(),
        ),
        (
            LinkType::Raw,
            ipv4(A4, B4, 17, 64, &udp(53, 5353, b"answer")),
        ),
        (
            LinkType::Ethernet,
            eth(
                0x8100,
                &tag(3, 0x0800, &ipv4(A4, B4, 17, 64, &udp(53, 5353, b"answer"))),
            ),
        ),
    ]
}

/// Cutting a frame anywhere never panics; a cut inside the headers is a truncation, a
/// cut in the payload keeps what is left and says so.
#[test]
fn truncated_frames_at_every_length() {
    for (link, frame) in corpus() {
        let full = decode(link, &frame).unwrap();
        assert!(
            matches!(full.transport, Transport::Tcp(_) | Transport::Udp(_)),
            "{link:?}"
        );
        let (full_payload, full_truncated) = match full.transport {
            Transport::Tcp(t) => (t.payload.len(), t.truncated),
            Transport::Udp(u) => (u.payload.len(), u.truncated),
            _ => unreachable!(),
        };
        assert!(!full_truncated);
        let headers_end = frame.len() - full_payload;
        for len in 0..frame.len() {
            assert_paths_agree(link, &frame[..len]);
            match decode(link, &frame[..len]) {
                Ok(p) => {
                    assert!(len >= headers_end, "{link:?} cut at {len} decoded as {p:?}");
                    let (payload, truncated) = match p.transport {
                        Transport::Tcp(t) => (t.payload.len(), t.truncated),
                        Transport::Udp(u) => (u.payload.len(), u.truncated),
                        other => panic!("{link:?} cut at {len}: {other:?}"),
                    };
                    assert_eq!(payload, len - headers_end);
                    assert!(truncated, "{link:?} cut at {len}");
                }
                Err(e) => {
                    assert!(
                        len < headers_end,
                        "{link:?} cut at {len} in the payload failed: {e}"
                    );
                    assert_eq!(e.kind(), "truncated", "{link:?} cut at {len}: {e}");
                }
            }
        }
    }
}

const ALL_LINKS: [LinkType; 8] = [
    LinkType::Null,
    LinkType::Ethernet,
    LinkType::Raw,
    LinkType::Loop,
    LinkType::LinuxSll,
    LinkType::Ipv4,
    LinkType::Ipv6,
    LinkType::LinuxSll2,
];

/// The Ethernet/IPv4 fast path and the general loop give the same answer, errors included.
fn assert_paths_agree(link: LinkType, frame: &[u8]) {
    let general = link::start(link, frame).and_then(run);
    assert_eq!(decode(link, frame), general, "{link:?} {frame:02x?}");
}

/// Checks the invariants of any decode result: payloads lie within the frame.
fn check_no_panic(link: LinkType, frame: &[u8]) {
    assert_paths_agree(link, frame);
    if let Ok(p) = decode(link, frame) {
        let range = frame.as_ptr_range();
        let inside =
            |s: &[u8]| s.is_empty() || (range.contains(&s.as_ptr()) && s.len() <= frame.len());
        match p.transport {
            Transport::Tcp(t) => assert!(inside(t.payload) && inside(t.options)),
            Transport::Udp(u) => assert!(inside(u.payload)),
            _ => {}
        }
        assert!(p.tunnel_udp.len() <= MAX_TUNNEL_UDP);
    }
}

proptest! {
    #[test]
    fn garbage_never_panics(link in 0usize..8, bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_no_panic(ALL_LINKS[link], &bytes);
    }

    /// Valid frames with a few bytes overwritten reach deep into the decoder.
    #[test]
    fn mutated_frames_never_panic(
        which in 0usize..11,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let corpus = corpus();
        let (link, mut frame) = corpus[which % corpus.len()].clone();
        for (at, v) in edits {
            let i = at % frame.len();
            frame[i] = v;
        }
        let cut = cut % (frame.len() + 1);
        check_no_panic(link, &frame[..cut]);
        check_no_panic(link, &frame);
    }

    /// Plain Ethernet/VLAN/IP/TCP/UDP frames agree with etherparse's own slicer.
    #[test]
    fn agrees_with_etherparse(
        vlans in 0usize..3,
        v6 in any::<bool>(),
        is_tcp in any::<bool>(),
        ports in (any::<u16>(), any::<u16>()),
        seq in any::<u32>(),
        ttl in any::<u8>(),
        payload in proptest::collection::vec(any::<u8>(), 0..80),
        padding in 0usize..20,
    ) {
        let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
        let vid = |v| VlanId::try_new(v).unwrap();
        let mut f = Vec::new();
        macro_rules! finish {
            ($ip:expr) => {{
                // Tunnel ports would be opened by us and not by etherparse.
                let (sp, dp) = (ports.0 % 4000, ports.1 % 4000);
                if is_tcp {
                    $ip.tcp(sp, dp, seq, 1000).psh().write(&mut f, &payload).unwrap()
                } else {
                    $ip.udp(sp, dp).write(&mut f, &payload).unwrap()
                }
            }};
        }
        macro_rules! ip {
            ($l2:expr) => {{
                if v6 { finish!($l2.ipv6(A6, B6, ttl)) } else { finish!($l2.ipv4(A4, B4, ttl)) }
            }};
        }
        match vlans {
            0 => ip!(eth),
            1 => ip!(eth.single_vlan(vid(7))),
            _ => ip!(eth.double_vlan(vid(7), vid(8))),
        }
        f.extend(std::iter::repeat_n(0xa5, padding));
        let theirs = SlicedPacket::from_ethernet(&f).unwrap();
        assert_paths_agree(LinkType::Ethernet, &f);
        let ours = decode(LinkType::Ethernet, &f).unwrap();
        match theirs.net.unwrap() {
            NetSlice::Ipv4(ip) => {
                prop_assert_eq!(ours.src, IpAddr::V4(ip.header().source_addr()));
                prop_assert_eq!(ours.dst, IpAddr::V4(ip.header().destination_addr()));
                prop_assert_eq!(ours.ttl, ip.header().ttl());
            }
            NetSlice::Ipv6(ip) => {
                prop_assert_eq!(ours.src, IpAddr::V6(ip.header().source_addr()));
                prop_assert_eq!(ours.dst, IpAddr::V6(ip.header().destination_addr()));
                prop_assert_eq!(ours.ttl, ip.header().hop_limit());
            }
            NetSlice::Arp(_) => prop_assert!(false),
        }
        match (theirs.transport.unwrap(), ours.transport) {
            (TransportSlice::Tcp(t), Transport::Tcp(o)) => {
                prop_assert_eq!((o.src_port, o.dst_port, o.seq), (t.source_port(), t.destination_port(), t.sequence_number()));
                prop_assert_eq!(o.payload, t.payload());
                prop_assert_eq!(o.options, t.options());
            }
            (TransportSlice::Udp(t), Transport::Udp(o)) => {
                prop_assert_eq!((o.src_port, o.dst_port), (t.source_port(), t.destination_port()));
                prop_assert_eq!(o.payload, t.payload());
            }
            (t, o) => prop_assert!(false, "etherparse {:?} vs ours {:?}", t, o),
        }
    }
}

// ---- real captures ----

fn for_each_packet(name: &str, mut f: impl FnMut(usize, Packet<'_>)) -> usize {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/conformance/pcap")
        .join(name);
    let mut cap =
        pcap::Capture::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let link = LinkType::from(cap.get_datalink());
    let mut n = 0;
    while let Ok(pkt) = cap.next_packet() {
        n += 1;
        let p = decode(link, pkt.data).unwrap_or_else(|e| panic!("{name} packet {n}: {e}"));
        f(n, p);
    }
    n
}

#[test]
fn capture_gre_erspan_vxlan() {
    let client = IpAddr::V4(Ipv4Addr::new(10, 16, 27, 12));
    let server = IpAddr::V4(Ipv4Addr::new(10, 16, 27, 131));
    let mut payloads = Vec::new();
    let n = for_each_packet("gre-erspan-vxlan.pcap", |i, p| {
        let t = *tcp_of(&p);
        let (c, s) = if p.src == client {
            (t.src_port, t.dst_port)
        } else {
            (t.dst_port, t.src_port)
        };
        assert!(
            p.src == client && p.dst == server || p.src == server && p.dst == client,
            "packet {i}"
        );
        assert_eq!((c, s), (65174, 80), "packet {i}");
        let vxlan = UdpConversation {
            src: Ipv4Addr::new(172, 16, 27, 131).into(),
            dst: Ipv4Addr::new(172, 16, 27, 121).into(),
            src_port: 4789,
            dst_port: 4790,
        };
        assert_eq!(p.tunnel_udp.as_slice(), &[vxlan]);
        payloads.push(t.payload.to_vec());
    });
    assert_eq!(n, 7);
    assert!(
        payloads
            .iter()
            .any(|p| p.starts_with(b"GET /Hello Arkime HTTP/1.0"))
    );
    assert!(payloads.iter().any(|p| p.starts_with(b"HTTP/1.1 200 OK")));
}

#[test]
fn capture_geneve() {
    let (mut tcp_packets, mut icmp_packets) = (0, 0);
    let n = for_each_packet("tcpdump-geneve.pcap", |i, p| {
        assert_eq!(p.tunnel_udp.len(), 1, "packet {i}");
        let conv = p.tunnel_udp.as_slice()[0];
        assert!(
            conv.dst_port == 6081 && conv.src.to_string().starts_with("20.0.0."),
            "packet {i}"
        );
        assert!(p.src.to_string().starts_with("30.0.0."), "packet {i}");
        match p.transport {
            Transport::Tcp(t) => {
                tcp_packets += 1;
                assert!(
                    (t.src_port, t.dst_port) == (51225, 22)
                        || (t.src_port, t.dst_port) == (22, 51225),
                    "packet {i}"
                );
            }
            Transport::Other(1) if p.has_icmp => icmp_packets += 1,
            other => panic!("packet {i}: {other:?}"),
        }
    });
    assert_eq!((n, tcp_packets, icmp_packets), (39, 33, 6));
}

#[test]
fn capture_gre_sample() {
    let (mut ssh, mut icmp, mut udp_packets) = (0, 0, 0);
    let n = for_each_packet("gre-sample.pcap", |i, p| {
        assert!(p.tunnel_udp.is_empty());
        match p.transport {
            Transport::Tcp(t) => {
                ssh += 1;
                assert!(t.src_port == 22 || t.dst_port == 22, "packet {i}");
                assert!(
                    [p.src, p.dst].contains(&IpAddr::V4(Ipv4Addr::new(172, 28, 2, 3))),
                    "packet {i}"
                );
            }
            Transport::Udp(u) => {
                udp_packets += 1;
                assert!(
                    [53, 123].contains(&u.src_port.min(u.dst_port)),
                    "packet {i}"
                );
            }
            Transport::Other(1) => {
                assert!(p.has_icmp);
                icmp += 1;
            }
            other => panic!("packet {i}: {other:?}"),
        }
    });
    assert_eq!(n, 40);
    assert_eq!(ssh, 22);
    assert_eq!(ssh + icmp + udp_packets, 40);
    assert_eq!(icmp, 10);
}

#[test]
fn error_kinds_are_distinct() {
    let all = [
        truncated(Layer::Ipv4),
        DecodeError::UnsupportedLinkType { dlt: 9 },
        DecodeError::BadIpHeader { reason: "" },
        DecodeError::BadTcpHeader { reason: "" },
        DecodeError::BadUdpHeader { reason: "" },
        DecodeError::BadTunnelHeader {
            layer: Layer::Gre,
            reason: "",
        },
        DecodeError::TooManyLayers,
    ];
    let kinds: std::collections::HashSet<_> = all.iter().map(DecodeError::kind).collect();
    assert_eq!(kinds.len(), all.len());
    assert_eq!(
        truncated(Layer::Vxlan).to_string(),
        "truncated vxlan header"
    );
}

#[test]
fn packet_is_small() {
    // Returned by value per packet: keep it a few cache lines.
    assert!(
        std::mem::size_of::<Packet<'_>>() <= 256,
        "{}",
        std::mem::size_of::<Packet<'_>>()
    );
}
