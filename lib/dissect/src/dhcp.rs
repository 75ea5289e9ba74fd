//! DHCPv4 (RFC 2131/2132) and DHCPv6 (RFC 8415) messages, reduced to what JA4D/JA4D6 read:
//! the message type, the option codes in wire order, and a handful of option values.
//!
//! Both parsers take the UDP payload. They fail only when the fixed header is missing (or,
//! for v4, the magic cookie is wrong); a truncated option area keeps the options read so far
//! and sets `truncated`, since a partial list still identifies the client.
//!
//! DHCPv6 options can nest (IA_NA/IA_TA/IA_PD carry IA Address/IA Prefix options, which can
//! carry Status Code, and a Relay-Message option carries a whole message). The reference
//! JA4D6 (the Wireshark plugin) reads every option in the dissection tree, so the option list
//! here is a depth-first walk in wire order that includes nested options: an Advertise with
//! IA_PD(IA Prefix) lists `25-26`. For relay messages (Relay-Forward 12, Relay-Reply 13) we
//! take the same whole-packet view for the top-level fields, and additionally expose the
//! relayed message parsed on its own in [`Dhcpv6Message::relayed`], so a caller can
//! fingerprint the client behind the relay as well as the relay itself.

use crate::bytes::Reader;

/// Length of the fixed BOOTP header that precedes the magic cookie.
pub const BOOTP_FIXED_LEN: usize = 236;
/// The DHCP magic cookie 99.130.83.99 (RFC 2131 §3).
pub const MAGIC_COOKIE: [u8; 4] = [0x63, 0x82, 0x53, 0x63];

/// DHCPv4 option: Pad (single byte).
pub const OPT_PAD: u8 = 0;
/// DHCPv4 option: Requested IP Address.
pub const OPT_REQUESTED_IP: u8 = 50;
/// DHCPv4 option: Option Overload (options continue in `file` and/or `sname`).
pub const OPT_OVERLOAD: u8 = 52;
/// DHCPv4 option: DHCP Message Type.
pub const OPT_MESSAGE_TYPE: u8 = 53;
/// DHCPv4 option: Parameter Request List.
pub const OPT_PARAMETER_REQUEST_LIST: u8 = 55;
/// DHCPv4 option: Maximum DHCP Message Size.
pub const OPT_MAX_MESSAGE_SIZE: u8 = 57;
/// DHCPv4 option: Client FQDN (RFC 4702).
pub const OPT_CLIENT_FQDN: u8 = 81;
/// DHCPv4 option: End (single byte).
pub const OPT_END: u8 = 255;

/// DHCPv6 option: Client Identifier (a DUID).
pub const OPT6_CLIENT_ID: u16 = 1;
/// DHCPv6 option: IA_NA.
pub const OPT6_IA_NA: u16 = 3;
/// DHCPv6 option: IA_TA.
pub const OPT6_IA_TA: u16 = 4;
/// DHCPv6 option: IA Address.
pub const OPT6_IAADDR: u16 = 5;
/// DHCPv6 option: Option Request Option.
pub const OPT6_ORO: u16 = 6;
/// DHCPv6 option: Relay Message.
pub const OPT6_RELAY_MSG: u16 = 9;
/// DHCPv6 option: IA_PD.
pub const OPT6_IA_PD: u16 = 25;
/// DHCPv6 option: IA Prefix.
pub const OPT6_IAPREFIX: u16 = 26;
/// DHCPv6 option: Client FQDN (RFC 4704).
pub const OPT6_CLIENT_FQDN: u16 = 39;
/// DHCPv6 message type: Relay-Forward.
pub const MSG6_RELAY_FORW: u8 = 12;
/// DHCPv6 message type: Relay-Reply.
pub const MSG6_RELAY_REPL: u8 = 13;

/// How deep nested DHCPv6 options (and relay-in-relay messages) are followed. RFC 8415's
/// relay hop limit is 8 (two levels per hop), plus IA → address → status: 24 is ample, and
/// it bounds the recursion whatever the packet claims.
pub const MAX_V6_NESTING: usize = 24;

/// Why a DHCP payload was rejected outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DhcpError {
    /// Shorter than the fixed header (BOOTP + cookie, or the v6 message header).
    #[error("DHCP message shorter than its fixed header")]
    Truncated,
    /// The four bytes after the BOOTP header are not the DHCP magic cookie (plain BOOTP or
    /// not DHCP at all).
    #[error("missing DHCP magic cookie")]
    BadMagicCookie,
}

/// A DHCPv4 message: the BOOTP header fields worth logging and the options JA4D reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcpv4Message {
    /// 1 = BOOTREQUEST (client), 2 = BOOTREPLY (server).
    pub op: u8,
    /// Hardware address type (1 = Ethernet).
    pub htype: u8,
    /// Hardware address length as sent (may exceed 16; `chaddr` is always the raw field).
    pub hlen: u8,
    /// Transaction id.
    pub xid: u32,
    /// Client IP address (`ciaddr`).
    pub ciaddr: [u8; 4],
    /// "Your" IP address offered/assigned by the server (`yiaddr`).
    pub yiaddr: [u8; 4],
    /// Next server (`siaddr`).
    pub siaddr: [u8; 4],
    /// Relay agent (`giaddr`).
    pub giaddr: [u8; 4],
    /// The 16-byte `chaddr` field (the MAC is the first `hlen` bytes).
    pub chaddr: [u8; 16],
    /// Option codes in wire order, one entry per occurrence, Pad and End excluded. When
    /// Option Overload (52) is present, codes from `file` then `sname` follow (RFC 2131 §4.1).
    pub option_codes: Vec<u8>,
    /// Option 53, first occurrence.
    pub message_type: Option<u8>,
    /// Option 57 (only when exactly 2 bytes).
    pub max_message_size: Option<u16>,
    /// Option 50 (only when exactly 4 bytes).
    pub requested_ip: Option<[u8; 4]>,
    /// Option 81's raw value (flags, rcodes, name); presence is JA4D's `d` flag.
    pub client_fqdn: Option<Vec<u8>>,
    /// Option 55's codes, concatenated over repeated occurrences (RFC 3396).
    pub parameter_request_list: Vec<u8>,
    /// An option ran past the end of its area, or there was no End option.
    pub truncated: bool,
}

/// Parses a DHCPv4 message from a UDP payload (ports 67/68).
pub fn parse_dhcpv4(payload: &[u8]) -> Result<Dhcpv4Message, DhcpError> {
    let mut r = Reader::new(payload);
    let hdr = r.take(BOOTP_FIXED_LEN).ok_or(DhcpError::Truncated)?;
    let cookie = r.take(4).ok_or(DhcpError::Truncated)?;
    if cookie != MAGIC_COOKIE {
        return Err(DhcpError::BadMagicCookie);
    }
    let mut h = Reader::new(hdr);
    let mut fixed = || -> Option<Dhcpv4Message> {
        let op = h.u8()?;
        let htype = h.u8()?;
        let hlen = h.u8()?;
        h.skip(1)?; // hops
        let xid = h.u32()?;
        h.skip(4)?; // secs, flags
        let ip = |h: &mut Reader<'_>| -> Option<[u8; 4]> { h.take(4)?.try_into().ok() };
        let ciaddr = ip(&mut h)?;
        let yiaddr = ip(&mut h)?;
        let siaddr = ip(&mut h)?;
        let giaddr = ip(&mut h)?;
        let chaddr: [u8; 16] = h.take(16)?.try_into().ok()?;
        Some(Dhcpv4Message {
            op,
            htype,
            hlen,
            xid,
            ciaddr,
            yiaddr,
            siaddr,
            giaddr,
            chaddr,
            option_codes: Vec::new(),
            message_type: None,
            max_message_size: None,
            requested_ip: None,
            client_fqdn: None,
            parameter_request_list: Vec::new(),
            truncated: false,
        })
    };
    let mut msg = fixed().ok_or(DhcpError::Truncated)?;

    let mut overload = 0u8;
    walk_v4_options(r.rest(), &mut msg, &mut overload);
    // sname is bytes 44..108 of the header, file is 108..236.
    if overload & 1 != 0 {
        walk_v4_options(hdr.get(108..236).unwrap_or(&[]), &mut msg, &mut 0);
    }
    if overload & 2 != 0 {
        walk_v4_options(hdr.get(44..108).unwrap_or(&[]), &mut msg, &mut 0);
    }
    Ok(msg)
}

/// Walks one option area until End, recording into `msg`. `overload` receives option 52.
fn walk_v4_options(area: &[u8], msg: &mut Dhcpv4Message, overload: &mut u8) {
    let mut r = Reader::new(area);
    loop {
        let Some(code) = r.u8() else {
            msg.truncated = true; // no End option
            return;
        };
        match code {
            OPT_PAD => continue,
            OPT_END => return,
            _ => {}
        }
        let Some(value) = r.vec8() else {
            msg.truncated = true;
            return;
        };
        msg.option_codes.push(code);
        match code {
            OPT_MESSAGE_TYPE if msg.message_type.is_none() => {
                msg.message_type = value.first().copied();
            }
            OPT_MAX_MESSAGE_SIZE => {
                if let (None, &[hi, lo]) = (msg.max_message_size, value) {
                    msg.max_message_size = Some(u16::from_be_bytes([hi, lo]));
                }
            }
            OPT_REQUESTED_IP => {
                if let (None, Ok(ip)) = (msg.requested_ip, <[u8; 4]>::try_from(value)) {
                    msg.requested_ip = Some(ip);
                }
            }
            OPT_CLIENT_FQDN if msg.client_fqdn.is_none() => {
                msg.client_fqdn = Some(value.to_vec());
            }
            OPT_PARAMETER_REQUEST_LIST => msg.parameter_request_list.extend_from_slice(value),
            OPT_OVERLOAD => *overload = value.first().copied().unwrap_or(0),
            _ => {}
        }
    }
}

/// The relay header of a Relay-Forward / Relay-Reply message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcpv6Relay {
    /// Number of relays the message went through before this one.
    pub hop_count: u8,
    /// Link address (identifies the client's link).
    pub link_address: [u8; 16],
    /// Address of the client or previous relay.
    pub peer_address: [u8; 16],
}

/// A DHCPv6 message with the option data JA4D6 reads (see the module docs for nesting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcpv6Message {
    /// msg-type (1 Solicit, 2 Advertise, ..., 12 Relay-Forward, 13 Relay-Reply).
    pub msg_type: u8,
    /// The 24-bit transaction id; `None` for relay messages, which have none.
    pub transaction_id: Option<u32>,
    /// Relay header, for msg-types 12 and 13.
    pub relay: Option<Dhcpv6Relay>,
    /// Option codes, depth first in wire order, nested ones included.
    pub option_codes: Vec<u16>,
    /// Length of the first Client Identifier (option 1) value, i.e. of the client's DUID.
    pub client_id_len: Option<usize>,
    /// Codes of the first Option Request Option (6); an odd trailing byte is ignored.
    pub oro: Vec<u16>,
    /// An IA_TA option (4) is present.
    pub has_ia_ta: bool,
    /// A Client FQDN option (39) carrying a domain name (more than its flags byte).
    pub has_client_fqdn_domain: bool,
    /// For relay messages: the message inside the first Relay-Message option (9), parsed
    /// on its own (`None` if absent or unparsable).
    pub relayed: Option<Box<Dhcpv6Message>>,
    /// An option ran past the end of its enclosing area.
    pub truncated: bool,
}

/// Parses a DHCPv6 message from a UDP payload (ports 546/547).
pub fn parse_dhcpv6(payload: &[u8]) -> Result<Dhcpv6Message, DhcpError> {
    parse_v6_at_depth(payload, 0)
}

fn parse_v6_at_depth(payload: &[u8], depth: usize) -> Result<Dhcpv6Message, DhcpError> {
    let mut r = Reader::new(payload);
    let msg_type = r.u8().ok_or(DhcpError::Truncated)?;
    let mut msg = Dhcpv6Message {
        msg_type,
        transaction_id: None,
        relay: None,
        option_codes: Vec::new(),
        client_id_len: None,
        oro: Vec::new(),
        has_ia_ta: false,
        has_client_fqdn_domain: false,
        relayed: None,
        truncated: false,
    };
    if is_relay(msg_type) {
        let hop_count = r.u8().ok_or(DhcpError::Truncated)?;
        let link = r.take(16).ok_or(DhcpError::Truncated)?;
        let peer = r.take(16).ok_or(DhcpError::Truncated)?;
        msg.relay = Some(Dhcpv6Relay {
            hop_count,
            link_address: link.try_into().map_err(|_| DhcpError::Truncated)?,
            peer_address: peer.try_into().map_err(|_| DhcpError::Truncated)?,
        });
    } else {
        msg.transaction_id = Some(r.u24().ok_or(DhcpError::Truncated)?);
    }
    walk_v6_options(r.rest(), depth, &mut msg);
    if msg.relay.is_some() && depth < MAX_V6_NESTING {
        let inner = first_relay_message(r.rest());
        msg.relayed = inner
            .and_then(|m| parse_v6_at_depth(m, depth + 1).ok())
            .map(Box::new);
    }
    Ok(msg)
}

fn is_relay(msg_type: u8) -> bool {
    msg_type == MSG6_RELAY_FORW || msg_type == MSG6_RELAY_REPL
}

/// The value of the first top-level Relay-Message option.
fn first_relay_message(area: &[u8]) -> Option<&[u8]> {
    let mut r = Reader::new(area);
    while let Some(code) = r.u16() {
        let value = r.vec16()?;
        if code == OPT6_RELAY_MSG {
            return Some(value);
        }
    }
    None
}

/// Records the options of one area (a message body or a container option's tail), recursing
/// into containers up to [`MAX_V6_NESTING`].
fn walk_v6_options(area: &[u8], depth: usize, msg: &mut Dhcpv6Message) {
    let mut r = Reader::new(area);
    while !r.is_empty() {
        let (Some(code), Some(value)) = (r.u16(), r.vec16()) else {
            msg.truncated = true;
            return;
        };
        msg.option_codes.push(code);
        match code {
            OPT6_CLIENT_ID if msg.client_id_len.is_none() => msg.client_id_len = Some(value.len()),
            OPT6_ORO if msg.oro.is_empty() => {
                msg.oro = value
                    .chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect();
            }
            OPT6_IA_TA => msg.has_ia_ta = true,
            OPT6_CLIENT_FQDN if value.len() > 1 => msg.has_client_fqdn_domain = true,
            _ => {}
        }
        if depth >= MAX_V6_NESTING {
            continue;
        }
        // Fixed part before the nested options of each container option.
        let nested = match code {
            OPT6_IA_NA | OPT6_IA_PD => value.get(12..),
            OPT6_IA_TA => value.get(4..),
            OPT6_IAADDR => value.get(24..),
            OPT6_IAPREFIX => value.get(25..),
            OPT6_RELAY_MSG => {
                // A whole message: skip its header, then its options.
                match value.first() {
                    Some(&t) if is_relay(t) => value.get(34..),
                    Some(_) => value.get(4..),
                    None => None,
                }
            }
            _ => None,
        };
        if let Some(nested) = nested {
            walk_v6_options(nested, depth + 1, msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test hex")
    }

    /// BOOTP header with the given op/xid/yiaddr/chaddr, then cookie and options.
    fn v4(op: u8, yiaddr: [u8; 4], options: &str) -> Vec<u8> {
        let mut b = vec![0u8; BOOTP_FIXED_LEN];
        b[0] = op;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0x3d1d_u32.to_be_bytes());
        b[16..20].copy_from_slice(&yiaddr);
        b[28..34].copy_from_slice(&h("000b8201fc42"));
        b.extend_from_slice(&MAGIC_COOKIE);
        b.extend(h(options));
        b
    }

    #[test]
    fn dhcpv4_discover_from_corpus() {
        // dhcp.pcapng frame 1 (options area as captured, trailing padding included).
        let m = parse_dhcpv4(&v4(
            1,
            [0; 4],
            "3501013d0701000b8201fc4232040000000037040103062aff00000000000000",
        ))
        .expect("dhcp");
        assert_eq!((m.op, m.xid, m.hlen), (1, 0x3d1d, 6));
        assert_eq!(&m.chaddr[..6], &h("000b8201fc42")[..]);
        assert_eq!(m.option_codes, vec![53, 61, 50, 55]);
        assert_eq!(m.message_type, Some(1));
        assert_eq!(m.requested_ip, Some([0, 0, 0, 0]));
        assert_eq!(m.parameter_request_list, vec![1, 3, 6, 42]);
        assert_eq!(m.max_message_size, None);
        assert_eq!(m.client_fqdn, None);
        assert!(!m.truncated);
    }

    #[test]
    fn dhcpv4_ack_and_values() {
        // dhcp.pcapng frame 4 (ACK).
        let m = parse_dhcpv4(&v4(
            2,
            [192, 168, 0, 10],
            "3501053a04000007083b0400000c4e330400000e103604c0a800010104ffffff00ff00",
        ))
        .expect("dhcp");
        assert_eq!(m.option_codes, vec![53, 58, 59, 51, 54, 1]);
        assert_eq!(m.message_type, Some(5));
        assert_eq!(m.yiaddr, [192, 168, 0, 10]);
        // Max size, FQDN, PAD between options.
        let m = parse_dhcpv4(&v4(1, [0; 4], "350103390205dc0000510301000037020103ff")).expect("ok");
        assert_eq!(m.option_codes, vec![53, 57, 81, 55]);
        assert_eq!(m.max_message_size, Some(1500));
        assert_eq!(m.client_fqdn, Some(vec![1, 0, 0]));
        // A 57 of the wrong size gives no value but is still listed.
        let m = parse_dhcpv4(&v4(1, [0; 4], "390105ff")).expect("ok");
        assert_eq!(
            (m.option_codes.as_slice(), m.max_message_size),
            (&[57u8][..], None)
        );
    }

    #[test]
    fn dhcpv4_overload_and_truncation() {
        let mut b = v4(1, [0; 4], "3501013401013702010337010cff");
        // `file` field (header bytes 108..236) carries option 12 then End.
        b[108..114].copy_from_slice(&h("0c0161ff0000"));
        let m = parse_dhcpv4(&b).expect("ok");
        assert_eq!(m.option_codes, vec![53, 52, 55, 55, 12]);
        assert_eq!(m.parameter_request_list, vec![1, 3, 12]);

        let m = parse_dhcpv4(&v4(1, [0; 4], "3501013704010306")).expect("ok");
        assert!(m.truncated);
        assert_eq!(m.option_codes, vec![53]);

        let mut b = v4(1, [0; 4], "ff");
        b[BOOTP_FIXED_LEN] = 0;
        assert_eq!(parse_dhcpv4(&b), Err(DhcpError::BadMagicCookie));
        assert_eq!(parse_dhcpv4(&b[..239]), Err(DhcpError::Truncated));
    }

    // dhcpv6.pcap frames 2 (Solicit) and 5 (Advertise).
    const SOLICIT: &str = "011008740001000e000100011c39cf88080027fe8f9500060004001700180008000200000019000c27fe8f9500000e1000001518";
    const ADVERTISE: &str = concat!(
        "021008740019002927fe8f950000000000000000001a00190000119400001c2040200100000000fe00000000",
        "00000000000001000e000100011c39cf88080027fe8f950002000e000100011c3825e8080027d410bb"
    );

    #[test]
    fn dhcpv6_from_corpus() {
        let m = parse_dhcpv6(&h(SOLICIT)).expect("v6");
        assert_eq!(m.msg_type, 1);
        assert_eq!(m.transaction_id, Some(0x100874));
        assert_eq!(m.option_codes, vec![1, 6, 8, 25]);
        assert_eq!(m.client_id_len, Some(14));
        assert_eq!(m.oro, vec![23, 24]);
        assert!(!m.has_ia_ta && !m.has_client_fqdn_domain && !m.truncated);

        // IA_PD carries an IA Prefix: nested codes are listed where they occur.
        let m = parse_dhcpv6(&h(ADVERTISE)).expect("v6");
        assert_eq!(m.option_codes, vec![25, 26, 1, 2]);
        assert_eq!(m.client_id_len, Some(14));
        assert!(m.oro.is_empty());
    }

    #[test]
    fn dhcpv6_flags_and_relay() {
        // Solicit with IA_TA(IAADDR(status 13)), FQDN with a name, odd-length ORO.
        let inner = h(concat!(
            "01abcdef",
            "00040028",
            "00000001",
            "00050020",
            "20010db8000000000000000000000001",
            "0000000000000000",
            "000d000400000000",
            "00270005",
            "0103666f6f",
            "00060003",
            "001700",
        ));
        let m = parse_dhcpv6(&inner).expect("v6");
        assert_eq!(m.option_codes, vec![4, 5, 13, 39, 6]);
        assert!(m.has_ia_ta && m.has_client_fqdn_domain);
        assert_eq!(m.oro, vec![23]);

        let mut relay = vec![MSG6_RELAY_FORW, 0];
        relay.extend([0x20; 16]);
        relay.extend([0xfe; 16]);
        relay.extend(h("00120002abcd")); // Interface-Id
        relay.extend(h("0009"));
        relay.extend((inner.len() as u16).to_be_bytes());
        relay.extend(&inner);
        let r = parse_dhcpv6(&relay).expect("relay");
        assert_eq!(r.msg_type, 12);
        assert_eq!(r.transaction_id, None);
        assert_eq!(r.relay.as_ref().map(|x| x.link_address), Some([0x20; 16]));
        assert_eq!(r.option_codes, vec![18, 9, 4, 5, 13, 39, 6]);
        assert!(r.has_ia_ta);
        let inner_msg = r.relayed.as_deref().expect("relayed message");
        assert_eq!(inner_msg, &m);

        // FQDN with only its flags byte carries no domain.
        let m = parse_dhcpv6(&h("01000001002700010100")).expect("v6");
        assert!(!m.has_client_fqdn_domain);
        assert!(m.truncated, "trailing byte is a cut option header");
        assert_eq!(parse_dhcpv6(&h("0100")), Err(DhcpError::Truncated));
    }

    #[test]
    fn dhcpv6_nesting_is_bounded() {
        // Relay-forward wrapping itself far deeper than the limit.
        let mut msg = h("01000001");
        for _ in 0..200 {
            let mut outer = vec![MSG6_RELAY_FORW, 0];
            outer.extend([0u8; 32]);
            outer.extend(h("0009"));
            outer.extend((msg.len() as u16).to_be_bytes());
            outer.extend(&msg);
            if outer.len() > 60_000 {
                break;
            }
            msg = outer;
        }
        let m = parse_dhcpv6(&msg).expect("parses");
        let mut depth = 0;
        let mut cur = &m;
        while let Some(next) = cur.relayed.as_deref() {
            depth += 1;
            cur = next;
        }
        assert!(depth <= MAX_V6_NESTING);
    }

    #[test]
    fn no_panic_on_truncations_and_garbage() {
        let v4full = v4(
            1,
            [0; 4],
            "3501013d0701000b8201fc4232040000000037040103062aff",
        );
        for n in 0..=v4full.len() {
            let _ = parse_dhcpv4(&v4full[..n]);
        }
        let v6full = h(ADVERTISE);
        for n in 0..=v6full.len() {
            let _ = parse_dhcpv6(&v6full[..n]);
        }
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..1000 {
            let len = (next() % 400) as usize;
            let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = parse_dhcpv6(&garbage);
            let mut b = v4(1, [0; 4], "");
            b.extend(&garbage);
            if let Ok(m) = parse_dhcpv4(&b) {
                assert!(m.option_codes.len() <= garbage.len() + BOOTP_FIXED_LEN);
            }
            let mut b = garbage.clone();
            b.resize(BOOTP_FIXED_LEN, 0);
            b.extend(MAGIC_COOKIE);
            b.extend(&garbage);
            let _ = parse_dhcpv4(&b);
        }
    }
}
