//! Frame decoding: from a captured link-layer frame to the innermost IP packet and its
//! transport header, through VLAN tags and tunnels (GRE, ERSPAN, VXLAN, Geneve, IP-in-IP).
//!
//! The decoder runs once per captured frame, so it never allocates: every payload in the
//! result borrows the frame. Input is untrusted; every length is checked and a malformed
//! frame yields a [`DecodeError`] whose [`kind`](DecodeError::kind) the caller counts.
//!
//! Lengths follow the headers, clamped to the captured bytes: Ethernet padding is cut by
//! the IP length, and a snaplen-cut packet keeps what was captured, marked `truncated`.
//! Non-first IP fragments are reported as such and never reassembled.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use thiserror::Error;

mod ip;
mod link;
mod transport;
mod tunnel;

#[cfg(test)]
mod tests;

/// Most IP headers one frame may stack (tunnels nest IP in IP): a crafted frame of nested
/// tunnels must not cost more than a bounded amount of work.
pub const MAX_IP_LAYERS: usize = 8;

/// Most decoding steps (link headers, VLAN tags, tunnel headers, IP headers) per frame.
const MAX_STEPS: usize = 64;

/// Most UDP tunnel conversations (VXLAN, Geneve) recorded per packet.
pub const MAX_TUNNEL_UDP: usize = 4;

/// The capture's link-layer header type, from the pcap/pcapng `LINKTYPE_`/`DLT_` value;
/// it says how the frame starts, which nothing in the frame itself says reliably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// BSD loopback (DLT 0): a 4-byte address family in the capturing host's byte order.
    Null,
    /// Ethernet II / 802.3 (DLT 1).
    Ethernet,
    /// Raw IP, version from the first nibble (LINKTYPE 101, and DLT 12 / 14 in files
    /// written with the platform's DLT_RAW value).
    Raw,
    /// OpenBSD loopback (DLT 108): like [`LinkType::Null`] in network byte order.
    Loop,
    /// Linux cooked capture v1 (DLT 113), what `-i any` produces.
    LinuxSll,
    /// Raw IPv4 (DLT 228).
    Ipv4,
    /// Raw IPv6 (DLT 229).
    Ipv6,
    /// Linux cooked capture v2 (DLT 276).
    LinuxSll2,
    /// Any other link type: decoding it fails with [`DecodeError::UnsupportedLinkType`].
    Unsupported(i32),
}

impl LinkType {
    /// The link type for a pcap DLT/LINKTYPE value, or `None` when the decoder can't read
    /// it, so a capture source can refuse the file up front instead of per packet.
    pub const fn from_dlt(dlt: i32) -> Option<LinkType> {
        match LinkType::from_dlt_lossy(dlt) {
            LinkType::Unsupported(_) => None,
            link => Some(link),
        }
    }

    /// Like [`LinkType::from_dlt`] but total: unknown values become
    /// [`LinkType::Unsupported`], for callers that count per-packet errors instead.
    pub const fn from_dlt_lossy(dlt: i32) -> LinkType {
        match dlt {
            0 => LinkType::Null,
            1 => LinkType::Ethernet,
            12 | 14 | 101 => LinkType::Raw,
            108 => LinkType::Loop,
            113 => LinkType::LinuxSll,
            228 => LinkType::Ipv4,
            229 => LinkType::Ipv6,
            276 => LinkType::LinuxSll2,
            other => LinkType::Unsupported(other),
        }
    }

    /// The LINKTYPE value as written in pcap files (raw IP reports 101).
    pub const fn dlt(self) -> i32 {
        match self {
            LinkType::Null => 0,
            LinkType::Ethernet => 1,
            LinkType::Raw => 101,
            LinkType::Loop => 108,
            LinkType::LinuxSll => 113,
            LinkType::Ipv4 => 228,
            LinkType::Ipv6 => 229,
            LinkType::LinuxSll2 => 276,
            LinkType::Unsupported(dlt) => dlt,
        }
    }
}

impl From<pcap::Linktype> for LinkType {
    fn from(l: pcap::Linktype) -> Self {
        LinkType::from_dlt_lossy(l.0)
    }
}

/// A header the decoder read, named in [`DecodeError::Truncated`] and
/// [`DecodeError::BadTunnelHeader`] so logs say where a frame broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    Ethernet,
    Vlan,
    Null,
    LinuxSll,
    LinuxSll2,
    Ip,
    Ipv4,
    Ipv6,
    Ipv6Extension,
    IpAuth,
    Tcp,
    Udp,
    Gre,
    Erspan,
    Vxlan,
    VxlanGpe,
    Geneve,
}

impl Layer {
    /// Stable lowercase name, for logs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Layer::Ethernet => "ethernet",
            Layer::Vlan => "vlan",
            Layer::Null => "null",
            Layer::LinuxSll => "linux_sll",
            Layer::LinuxSll2 => "linux_sll2",
            Layer::Ip => "ip",
            Layer::Ipv4 => "ipv4",
            Layer::Ipv6 => "ipv6",
            Layer::Ipv6Extension => "ipv6_extension",
            Layer::IpAuth => "ip_auth",
            Layer::Tcp => "tcp",
            Layer::Udp => "udp",
            Layer::Gre => "gre",
            Layer::Erspan => "erspan",
            Layer::Vxlan => "vxlan",
            Layer::VxlanGpe => "vxlan_gpe",
            Layer::Geneve => "geneve",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a frame could not be decoded. One variant per failure kind, so the caller can
/// count failures by [`kind`](DecodeError::kind) without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A header is cut short by the end of the captured bytes (snaplen or a short frame).
    #[error("truncated {layer} header")]
    Truncated { layer: Layer },
    /// The capture's link type is not one the decoder reads.
    #[error("unsupported link type {dlt}")]
    UnsupportedLinkType { dlt: i32 },
    /// An IPv4/IPv6 header (or extension header) contradicts itself.
    #[error("bad IP header: {reason}")]
    BadIpHeader { reason: &'static str },
    /// A TCP header contradicts itself or the IP length.
    #[error("bad TCP header: {reason}")]
    BadTcpHeader { reason: &'static str },
    /// A UDP header contradicts itself.
    #[error("bad UDP header: {reason}")]
    BadUdpHeader { reason: &'static str },
    /// A tunnel header (GRE, ERSPAN, ...) is malformed.
    #[error("bad {layer} header: {reason}")]
    BadTunnelHeader { layer: Layer, reason: &'static str },
    /// More nested layers than the decoder follows (see [`MAX_IP_LAYERS`]).
    #[error("too many nested layers")]
    TooManyLayers,
}

impl DecodeError {
    /// Stable short name of the failure kind, for counters ("truncated", "bad_ip", ...).
    pub const fn kind(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::UnsupportedLinkType { .. } => "unsupported_link_type",
            DecodeError::BadIpHeader { .. } => "bad_ip",
            DecodeError::BadTcpHeader { .. } => "bad_tcp",
            DecodeError::BadUdpHeader { .. } => "bad_udp",
            DecodeError::BadTunnelHeader { .. } => "bad_tunnel",
            DecodeError::TooManyLayers => "too_many_layers",
        }
    }
}

/// Shorthand for the truncation error of one layer.
pub(crate) const fn truncated(layer: Layer) -> DecodeError {
    DecodeError::Truncated { layer }
}

/// One decoded frame: the innermost IP header's facts and transport, plus what the engine
/// needs to know about the layers around it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Innermost IP source; unspecified (0.0.0.0) when no IP layer was found.
    pub src: IpAddr,
    /// Innermost IP destination; unspecified (0.0.0.0) when no IP layer was found.
    pub dst: IpAddr,
    /// Innermost IPv4 TTL or IPv6 hop limit: JA4L estimates hop distance from it.
    pub ttl: u8,
    /// Innermost IP payload length as the header states it, after IPv4 options and IPv6
    /// extension headers (the captured bytes may be fewer). For IPv4 total length 0
    /// (segmentation offload) and IPv6 payload length 0 (jumbogram) it is what was captured.
    pub ip_payload_len: usize,
    /// The innermost transport layer.
    pub transport: Transport<'a>,
    /// The innermost layer is ICMP/ICMPv6. ICMP errors quote other flows' headers, so the
    /// engine skips such packets rather than misattribute them.
    pub has_icmp: bool,
    /// The UDP tunnel conversations (VXLAN, Geneve) that carried this packet, outer to
    /// inner: the reference numbers UDP streams including them.
    pub tunnel_udp: TunnelUdp,
}

/// The innermost transport layer of a [`Packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    Tcp(TcpSegment<'a>),
    Udp(UdpDatagram<'a>),
    /// A non-first IP fragment (or a first fragment too short for its transport header):
    /// the transport header is elsewhere, and fragments are not reassembled.
    Fragment,
    /// Another IP protocol (ICMP, ESP, SCTP, ...), by IP protocol number.
    Other(u8),
    /// No IP at the innermost layer (ARP, LLDP, an unknown ethertype or tunnel payload).
    NonIp,
}

/// A TCP segment, borrowing the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// The flag byte: CWR ECE URG ACK PSH RST SYN FIN (bit 7 to bit 0).
    pub flags: u8,
    /// The bit before CWR (NS in RFC 3540, AE in AccECN), kept apart so `flags` stays a
    /// byte.
    pub ns: bool,
    pub window: u16,
    /// Raw option bytes: JA4T fingerprints them in wire order.
    pub options: &'a [u8],
    /// Segment payload, trimmed to the IP length and clamped to the captured bytes.
    pub payload: &'a [u8],
    /// `payload` is shorter than the IP header says: snaplen cut it, or the packet is the
    /// first fragment of a fragmented datagram.
    pub truncated: bool,
}

/// A UDP datagram, borrowing the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    /// Datagram payload, trimmed to the UDP/IP lengths and clamped to the captured bytes.
    pub payload: &'a [u8],
    /// `payload` is shorter than the UDP header says (snaplen, a first fragment, or a UDP
    /// length beyond the IP length).
    pub truncated: bool,
}

/// One UDP conversation that carried a tunnel (the outer addresses and ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpConversation {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
}

impl Default for UdpConversation {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        UdpConversation {
            src: any,
            dst: any,
            src_port: 0,
            dst_port: 0,
        }
    }
}

/// Up to [`MAX_TUNNEL_UDP`] tunnel conversations, outer to inner, stored inline so a
/// decoded packet never touches the heap.
#[derive(Clone, Copy, Default)]
pub struct TunnelUdp {
    convs: [UdpConversation; MAX_TUNNEL_UDP],
    len: u8,
}

impl TunnelUdp {
    /// The conversations, outer to inner.
    pub fn as_slice(&self) -> &[UdpConversation] {
        self.convs.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// Iterates outer to inner.
    pub fn iter(&self) -> std::slice::Iter<'_, UdpConversation> {
        self.as_slice().iter()
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends; more tunnels than fit is a frame built to exhaust the decoder.
    fn push(&mut self, conv: UdpConversation) -> Result<(), DecodeError> {
        let slot = self
            .convs
            .get_mut(usize::from(self.len))
            .ok_or(DecodeError::TooManyLayers)?;
        *slot = conv;
        self.len += 1;
        Ok(())
    }
}

impl PartialEq for TunnelUdp {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for TunnelUdp {}

impl fmt::Debug for TunnelUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<'t> IntoIterator for &'t TunnelUdp {
    type Item = &'t UdpConversation;
    type IntoIter = std::slice::Iter<'t, UdpConversation>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Decodes one captured frame down to its innermost IP packet.
///
/// `frame` is the captured bytes (possibly fewer than were on the wire). The result
/// borrows `frame`; nothing is allocated.
pub fn decode(link_type: LinkType, frame: &[u8]) -> Result<Packet<'_>, DecodeError> {
    if link_type == LinkType::Ethernet {
        return ethernet_fast(frame);
    }
    run(link::start(link_type, frame)?)
}

/// Ethernet with the common case (at most one 802.1Q tag, unfragmented IPv4, TCP or
/// non-tunnel UDP) decoded without the general loop's bookkeeping. It calls the same
/// header functions as [`run`]; any other frame continues in the general machinery from
/// where the fast path stopped, and any error is left for [`run`] to report, so the two
/// paths cannot disagree (the tests check it).
#[inline]
fn ethernet_fast(frame: &[u8]) -> Result<Packet<'_>, DecodeError> {
    const VLAN: u16 = 0x8100;
    const IPV4: u16 = 0x0800;
    // Where IPv4 starts, and how many steps the general loop would have taken to decode
    // through it (Ethernet, each type field, IPv4), so the step limit is the same.
    let (ip_start, steps) = match (be16(frame, 12), be16(frame, 16)) {
        (Some(IPV4), _) => (14, 3),
        (Some(VLAN), Some(IPV4)) => (18, 4),
        _ => return run(Step::Ethernet(frame)),
    };
    let Some(Ok(l)) = frame.get(ip_start..).map(ip::ipv4) else {
        return run(Step::Ethernet(frame));
    };
    if l.frag == ip::Frag::Whole {
        let done = match l.proto {
            transport::TCP => transport::tcp(&l).ok(),
            transport::UDP => match transport::udp(&l) {
                Ok(Transport::Udp(d))
                    if !tunnel::is_tunnel_port(d.src_port)
                        && !tunnel::is_tunnel_port(d.dst_port) =>
                {
                    Some(Transport::Udp(d))
                }
                _ => None,
            },
            _ => None,
        };
        if let Some(transport) = done {
            return Ok(Packet {
                src: l.facts.src,
                dst: l.facts.dst,
                ttl: l.facts.ttl,
                ip_payload_len: l.facts.payload_len,
                transport,
                has_icmp: false,
                tunnel_udp: TunnelUdp::default(),
            });
        }
    }
    // What the general loop would do after this IPv4 header.
    let mut st = State::default();
    st.enter_ip()?;
    let next = transport::dispatch(&mut st, l)?;
    run_from(st, next, steps)
}

/// Decodes a bare IP packet (version from the first nibble), for callers that hold one
/// without a link-layer header (TUN devices, raw sockets, ICMP quotes).
pub fn decode_ip(bytes: &[u8]) -> Result<Packet<'_>, DecodeError> {
    run(Step::Ip(bytes))
}

/// What to decode next, or the end of decoding.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step<'a> {
    /// An Ethernet header starts here.
    Ethernet(&'a [u8]),
    /// The payload of a header whose type field holds this ethertype.
    EtherType(u16, &'a [u8]),
    /// An IP packet of either version.
    Ip(&'a [u8]),
    Ipv4(&'a [u8]),
    Ipv6(&'a [u8]),
    /// Decoding ended at this transport.
    Done(Transport<'a>),
}

/// Facts of the innermost IP header decoded so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpFacts {
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    pub(crate) ttl: u8,
    pub(crate) payload_len: usize,
}

/// What the decoder has learned about the outer layers so far.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) ip: Option<IpFacts>,
    pub(crate) ip_layers: usize,
    pub(crate) has_icmp: bool,
    pub(crate) tunnel_udp: TunnelUdp,
}

impl State {
    /// Counts one more IP header, refusing past [`MAX_IP_LAYERS`].
    pub(crate) fn enter_ip(&mut self) -> Result<(), DecodeError> {
        self.ip_layers += 1;
        if self.ip_layers > MAX_IP_LAYERS {
            return Err(DecodeError::TooManyLayers);
        }
        Ok(())
    }

    fn finish(self, transport: Transport<'_>) -> Packet<'_> {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let ip = self.ip.unwrap_or(IpFacts {
            src: any,
            dst: any,
            ttl: 0,
            payload_len: 0,
        });
        Packet {
            src: ip.src,
            dst: ip.dst,
            ttl: ip.ttl,
            ip_payload_len: ip.payload_len,
            transport,
            has_icmp: self.has_icmp,
            tunnel_udp: self.tunnel_udp,
        }
    }
}

/// The decoding loop: each step consumes one header and says what follows it.
fn run(step: Step<'_>) -> Result<Packet<'_>, DecodeError> {
    run_from(State::default(), step, 0)
}

/// The decoding loop from a given state, `steps_done` steps in (the fast path hands over
/// mid-frame).
fn run_from(
    mut st: State,
    mut step: Step<'_>,
    steps_done: usize,
) -> Result<Packet<'_>, DecodeError> {
    for _ in steps_done..MAX_STEPS {
        step = match step {
            Step::Ethernet(b) => link::ethernet(b)?,
            Step::EtherType(ethertype, b) => link::ethertype(ethertype, b)?,
            Step::Ip(b) => match b.first().map(|v| v >> 4) {
                Some(4) => Step::Ipv4(b),
                Some(6) => Step::Ipv6(b),
                Some(_) => {
                    return Err(DecodeError::BadIpHeader {
                        reason: "unknown IP version",
                    });
                }
                None => return Err(truncated(Layer::Ip)),
            },
            Step::Ipv4(b) => {
                st.enter_ip()?;
                let layer = ip::ipv4(b)?;
                transport::dispatch(&mut st, layer)?
            }
            Step::Ipv6(b) => {
                st.enter_ip()?;
                let layer = ip::ipv6(b)?;
                transport::dispatch(&mut st, layer)?
            }
            Step::Done(t) => return Ok(st.finish(t)),
        };
    }
    Err(DecodeError::TooManyLayers)
}

/// Reads a big-endian u16 at `at`, `None` past the end.
#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> Option<u16> {
    match b.get(at..at.checked_add(2)?) {
        Some(&[hi, lo]) => Some(u16::from_be_bytes([hi, lo])),
        _ => None,
    }
}
