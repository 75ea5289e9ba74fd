//! What follows an IP header: TCP, UDP (and the UDP tunnels), GRE, IP-in-IP, ICMP.

use etherparse::{IpNumber, TcpHeaderSlice, UdpHeaderSlice};

use super::ip::{Frag, IpLayer};
use super::{
    DecodeError, Layer, State, Step, TcpSegment, Transport, UdpDatagram, truncated, tunnel,
};

const ICMP: u8 = IpNumber::ICMP.0;
const IPIP: u8 = IpNumber::IPV4.0;
pub(super) const TCP: u8 = IpNumber::TCP.0;
pub(super) const UDP: u8 = IpNumber::UDP.0;
const IPV6: u8 = IpNumber::IPV6.0;
const GRE: u8 = IpNumber::GRE.0;
const ICMPV6: u8 = IpNumber::IPV6_ICMP.0;

const TCP_MIN: usize = 20;
const UDP_LEN: usize = 8;

/// Records the IP layer as the innermost so far and decides what its payload is.
pub(super) fn dispatch<'a>(st: &mut State, l: IpLayer<'a>) -> Result<Step<'a>, DecodeError> {
    st.ip = Some(l.facts);
    if l.frag == Frag::Later {
        return Ok(Step::Done(Transport::Fragment));
    }
    Ok(match l.proto {
        TCP => Step::Done(tcp(&l)?),
        UDP => match udp(&l)? {
            Transport::Udp(d) => tunnel::over_udp(st, &d)?.unwrap_or(Step::Done(Transport::Udp(d))),
            other => Step::Done(other),
        },
        GRE => tunnel::gre(l.payload)?,
        IPIP => Step::Ipv4(l.payload),
        IPV6 => Step::Ipv6(l.payload),
        ICMP | ICMPV6 => {
            st.has_icmp = true;
            Step::Done(Transport::Other(l.proto))
        }
        other => Step::Done(Transport::Other(other)),
    })
}

/// A TCP header. A first fragment too short to hold it is reported as a fragment.
pub(super) fn tcp<'a>(l: &IpLayer<'a>) -> Result<Transport<'a>, DecodeError> {
    let b = l.payload;
    let header_len = match b.get(12) {
        Some(&v) => usize::from(v >> 4) * 4,
        None if l.claimed < TCP_MIN => {
            return short_transport(
                l,
                DecodeError::BadTcpHeader {
                    reason: "IP payload shorter than TCP header",
                },
            );
        }
        None => return Err(truncated(Layer::Tcp)),
    };
    if header_len < TCP_MIN {
        return Err(DecodeError::BadTcpHeader {
            reason: "data offset below 5",
        });
    }
    if header_len > l.claimed {
        return short_transport(
            l,
            DecodeError::BadTcpHeader {
                reason: "data offset beyond IP payload",
            },
        );
    }
    let h = TcpHeaderSlice::from_slice(b).map_err(|_| truncated(Layer::Tcp))?;
    let options = h.slice().get(TCP_MIN..).unwrap_or_default();
    let payload = b.get(header_len..).unwrap_or_default();
    let flags = b.get(13).copied().unwrap_or_default();
    Ok(Transport::Tcp(TcpSegment {
        src_port: h.source_port(),
        dst_port: h.destination_port(),
        seq: h.sequence_number(),
        ack: h.acknowledgment_number(),
        flags,
        ns: h.ns(),
        window: h.window_size(),
        options,
        payload,
        truncated: l.truncated || l.frag == Frag::First,
    }))
}

/// A UDP header.
pub(super) fn udp<'a>(l: &IpLayer<'a>) -> Result<Transport<'a>, DecodeError> {
    let b = l.payload;
    let Ok(h) = UdpHeaderSlice::from_slice(b) else {
        if l.claimed < UDP_LEN {
            return short_transport(
                l,
                DecodeError::BadUdpHeader {
                    reason: "IP payload shorter than UDP header",
                },
            );
        }
        return Err(truncated(Layer::Udp));
    };
    let stated = usize::from(h.length());
    // Length 0 is an IPv6 jumbogram (or offload): the IP length is the length.
    let len = match stated {
        0 => l.claimed,
        1..UDP_LEN => {
            return Err(DecodeError::BadUdpHeader {
                reason: "length below 8",
            });
        }
        n => n,
    };
    let end = len.min(l.claimed);
    let payload = b.get(UDP_LEN..end.min(b.len())).unwrap_or_default();
    let truncated = l.truncated || l.frag == Frag::First || len > l.claimed;
    Ok(Transport::Udp(UdpDatagram {
        src_port: h.source_port(),
        dst_port: h.destination_port(),
        payload,
        truncated,
    }))
}

/// A transport header that does not fit in the IP payload: normal for a first fragment
/// (the rest comes later), an error otherwise.
fn short_transport<'a>(l: &IpLayer<'_>, err: DecodeError) -> Result<Transport<'a>, DecodeError> {
    if l.frag == Frag::First {
        Ok(Transport::Fragment)
    } else {
        Err(err)
    }
}
