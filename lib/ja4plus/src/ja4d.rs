//! JA4D / JA4D6: DHCPv4 and DHCPv6 fingerprints, one per message, either direction.
//!
//! `a_b_c`: a = 5-character message type + 4-digit size + `i`/`n` + `d`/`n`, b = option
//! codes `-`-joined in wire order, c = requested option codes `-`-joined; an empty b or c is
//! `00`. The answer key is the Wireshark reference (the Rust tool has no JA4D):
//! `disco0000in_61-55_1-3-6-42`, `solct0014nn_1-6-8-25_23-24`.
//!
//! v4: type from option 53 (missing → `00000`), size = option 57 Maximum Message Size,
//! `i` = option 50 Requested IP present, `d` = option 81 Client FQDN present; b leaves out
//! 53, 50, 81 (already in a) and Pad/End. v6: type from msg-type, size = length of the Client
//! Identifier DUID, `i` = IA_TA present, `d` = Client FQDN with a domain name; b lists every
//! option (nested ones included, see `hais_dissect::dhcp`). Unknown types print as a
//! 5-digit decimal; sizes are capped at 9999.

use hais_dissect::dhcp::{
    Dhcpv4Message, Dhcpv6Message, OPT_CLIENT_FQDN, OPT_END, OPT_MESSAGE_TYPE, OPT_PAD,
    OPT_REQUESTED_IP,
};

/// DHCPv4 message types 1..=18 (RFC 2132, 3203, 4388, 6926, 7724).
const V4_TYPES: [&str; 18] = [
    "disco", "offer", "reqst", "decln", "dpack", "dpnak", "relse", "infor", "frenw", "lqery",
    "lunas", "lunkn", "lactv", "blklq", "lqdon", "actlq", "lqsta", "dhtls",
];

/// DHCPv6 message types 1..=37 (RFC 8415 and the later additions in the IANA registry).
const V6_TYPES: [&str; 37] = [
    "solct", "advrt", "reqst", "confm", "renew", "rebnd", "reply", "relse", "decln", "recon",
    "inreq", "rlayf", "rlayr", "query", "qrply", "qdone", "qdata", "rereq", "rrply", "v4qry",
    "v4res", "acqry", "sttls", "bdudp", "brply", "poreq", "pores", "urqst", "ureqa", "udone",
    "conne", "connr", "dconn", "state", "conta", "arinf", "arrep",
];

/// Type code from a 1-based table; unknown values (and 0) print as `%05d`.
fn type_code(table: &[&str], t: u8) -> String {
    usize::from(t)
        .checked_sub(1)
        .and_then(|i| table.get(i))
        .map_or_else(|| format!("{t:05}"), |s| (*s).to_owned())
}

fn size_field(n: usize) -> String {
    format!("{:04}", n.min(9999))
}

fn flag(present: bool, yes: char) -> char {
    if present { yes } else { 'n' }
}

/// `-`-joined list, or `00` when empty.
fn list<T: ToString>(items: impl Iterator<Item = T>) -> String {
    let v: Vec<String> = items.map(|x| x.to_string()).collect();
    if v.is_empty() {
        "00".to_owned()
    } else {
        v.join("-")
    }
}

/// JA4D of a DHCPv4 message.
pub fn ja4d(msg: &Dhcpv4Message) -> String {
    let kind = msg
        .message_type
        .map_or_else(|| "00000".to_owned(), |t| type_code(&V4_TYPES, t));
    let size = size_field(msg.max_message_size.map_or(0, usize::from));
    let i = flag(
        msg.requested_ip.is_some() || msg.option_codes.contains(&OPT_REQUESTED_IP),
        'i',
    );
    let d = flag(msg.client_fqdn.is_some(), 'd');
    let options = list(msg.option_codes.iter().filter(|c| {
        ![
            OPT_MESSAGE_TYPE,
            OPT_REQUESTED_IP,
            OPT_CLIENT_FQDN,
            OPT_END,
            OPT_PAD,
        ]
        .contains(c)
    }));
    let requested = list(msg.parameter_request_list.iter());
    format!("{kind}{size}{i}{d}_{options}_{requested}")
}

/// JA4D6 of a DHCPv6 message. For a relay message this fingerprints the relay as the
/// reference does (whole-packet option list); fingerprint the client behind it with
/// `ja4d6(msg.relayed)`.
pub fn ja4d6(msg: &Dhcpv6Message) -> String {
    let kind = type_code(&V6_TYPES, msg.msg_type);
    let size = size_field(msg.client_id_len.unwrap_or(0));
    let i = flag(msg.has_ia_ta, 'i');
    let d = flag(msg.has_client_fqdn_domain, 'd');
    let options = list(msg.option_codes.iter());
    let requested = list(msg.oro.iter());
    format!("{kind}{size}{i}{d}_{options}_{requested}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hais_dissect::dhcp::{parse_dhcpv4, parse_dhcpv6};

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test hex")
    }

    /// A BOOTP header as in `dhcp.pcapng` (xid 0x3d1d/0x3d1e, MAC 00:0b:82:01:fc:42), then
    /// the magic cookie and the captured options area.
    fn v4(op: u8, xid: u32, ciaddr: [u8; 4], yiaddr: [u8; 4], options: &str) -> Dhcpv4Message {
        let mut b = vec![0u8; 236];
        b[0] = op;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&xid.to_be_bytes());
        b[12..16].copy_from_slice(&ciaddr);
        b[16..20].copy_from_slice(&yiaddr);
        b[28..34].copy_from_slice(&h("000b8201fc42"));
        b.extend(h("63825363"));
        b.extend(h(options));
        parse_dhcpv4(&b).expect("valid DHCPv4")
    }

    #[test]
    fn dhcp_pcapng_wireshark_values() {
        let disco = v4(
            1,
            0x3d1d,
            [0; 4],
            [0; 4],
            "3501013d0701000b8201fc4232040000000037040103062aff00000000000000",
        );
        assert_eq!(ja4d(&disco), "disco0000in_61-55_1-3-6-42");
        let offer = v4(
            2,
            0x3d1d,
            [0; 4],
            [192, 168, 0, 10],
            "3501020104ffffff003a04000007083b0400000c4e330400000e103604c0a80001ff0000000000000000000000000000000000000000000000000000",
        );
        assert_eq!(ja4d(&offer), "offer0000nn_1-58-59-51-54_00");
        let reqst = v4(
            1,
            0x3d1e,
            [0; 4],
            [0; 4],
            "3501033d0701000b8201fc423204c0a8000a3604c0a8000137040103062aff00",
        );
        assert_eq!(ja4d(&reqst), "reqst0000in_61-54-55_1-3-6-42");
        let dpack = v4(
            2,
            0x3d1e,
            [0; 4],
            [192, 168, 0, 10],
            "3501053a04000007083b0400000c4e330400000e103604c0a800010104ffffff00ff0000000000000000000000000000000000000000000000000000",
        );
        assert_eq!(ja4d(&dpack), "dpack0000nn_58-59-51-54-1_00");
    }

    #[test]
    fn spec_iphone_example() {
        // `reqst1500in_55-57-61-51-12_1-121-3-6-15-108-114-119-252`, rebuilt as options
        // 53, 55, 57, 61, 50 (requested IP: `i`), 51, 12 (host name), no 81 (`n`).
        let m = v4(
            1,
            1,
            [0; 4],
            [0; 4],
            concat!(
                "350103",
                "3709017903060f6c7277fc",
                "390205dc",
                "3d0701aabbccddeeff",
                "3204c0a80102",
                "330400093a80",
                "0c066950686f6e65",
                "ff"
            ),
        );
        assert_eq!(
            ja4d(&m),
            "reqst1500in_55-57-61-51-12_1-121-3-6-15-108-114-119-252"
        );
    }

    #[test]
    fn v4_edge_cases() {
        // No option 53, FQDN present, huge size capped, Pad ignored.
        let m = v4(1, 1, [0; 4], [0; 4], "000039022710510400000000ff");
        assert_eq!(ja4d(&m), "000009999nd_57_00");
        // Unknown message type prints as 5 digits; empty option list prints 00.
        let m = v4(1, 1, [0; 4], [0; 4], "3501c8ff");
        assert_eq!(ja4d(&m), "002000000nn_00_00");
        let m = v4(1, 1, [0; 4], [0; 4], "350112ff");
        assert_eq!(ja4d(&m), "dhtls0000nn_00_00");
    }

    #[test]
    fn dhcpv6_pcap_wireshark_values() {
        for (hexstr, want) in [
            (
                "011008740001000e000100011c39cf88080027fe8f9500060004001700180008000200000019000c27fe8f9500000e1000001518",
                "solct0014nn_1-6-8-25_23-24",
            ),
            (
                "021008740019002927fe8f950000000000000000001a00190000119400001c2040200100000000fe0000000000000000000001000e000100011c39cf88080027fe8f950002000e000100011c3825e8080027d410bb",
                "advrt0014nn_25-26-1-2_00",
            ),
            (
                "0349174e0001000e000100011c39cf88080027fe8f950002000e000100011c3825e8080027d410bb00060004001700180008000200000019002927fe8f9500000e1000001518001a001900001c2000001d4c40200100000000fe000000000000000000",
                "reqst0014nn_1-2-6-8-25-26_23-24",
            ),
            (
                "0749174e0019002927fe8f950000000000000000001a00190000119400001c2040200100000000fe0000000000000000000001000e000100011c39cf88080027fe8f950002000e000100011c3825e8080027d410bb",
                "reply0014nn_25-26-1-2_00",
            ),
            (
                "08c789b00001000e000100011c39cf88080027fe8f950002000e000100011c3825e8080027d410bb00060004001700180008000200000019002927fe8f950000000000000000001a0019000000000000000040200100000000fe000000000000000000",
                "relse0014nn_1-2-6-8-25-26_23-24",
            ),
            (
                "07c789b00001000e000100011c39cf88080027fe8f950002000e000100011c3825e8080027d410bb000d0013000052656c656173652072656365697665642e",
                "reply0014nn_1-2-13_00",
            ),
        ] {
            let m = parse_dhcpv6(&h(hexstr)).expect("valid DHCPv6");
            assert_eq!(ja4d6(&m), want);
        }
    }

    #[test]
    fn v6_flags_relay_and_unknown_type() {
        // Solicit, DUID-LL (10 bytes), IA_TA, FQDN with a name, ORO 23.
        let inner = h(concat!(
            "01abcdef",
            "0001000a00030001aabbccddeeff",
            "000400040000000a",
            "00270005",
            "0103666f6f",
            "000600020017",
        ));
        let m = parse_dhcpv6(&inner).expect("v6");
        assert_eq!(ja4d6(&m), "solct0010id_1-4-39-6_23");

        let mut relay = vec![12u8, 0];
        relay.extend([0u8; 32]);
        relay.extend(h("0009"));
        relay.extend((inner.len() as u16).to_be_bytes());
        relay.extend(&inner);
        let r = parse_dhcpv6(&relay).expect("relay");
        assert_eq!(ja4d6(&r), "rlayf0010id_9-1-4-39-6_23");
        let client = r.relayed.as_deref().expect("inner");
        assert_eq!(ja4d6(client), "solct0010id_1-4-39-6_23");

        let m = parse_dhcpv6(&h("2a000001")).expect("v6");
        assert_eq!(ja4d6(&m), "000420000nn_00_00");
        let m = parse_dhcpv6(&h("25000001")).expect("v6");
        assert_eq!(ja4d6(&m), "arrep0000nn_00_00");
    }

    #[test]
    fn no_panic_on_garbage() {
        let mut x: u64 = 99;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..1000 {
            let len = (next() % 300) as usize;
            let g: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Ok(m) = parse_dhcpv6(&g) {
                assert_eq!(ja4d6(&m).split('_').count(), 3);
            }
            let mut b = vec![0u8; 236];
            b.extend(h("63825363"));
            b.extend(&g);
            if let Ok(m) = parse_dhcpv4(&b) {
                assert_eq!(ja4d(&m).split('_').count(), 3);
            }
        }
    }
}
