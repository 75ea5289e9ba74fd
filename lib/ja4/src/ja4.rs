//! JA4, the TLS/DTLS/QUIC client fingerprint, computed from a parsed ClientHello.
//!
//! `JA4 = a_b_c`: `a` summarises the hello (transport, version, SNI, counts, ALPN), `b` hashes
//! the sorted cipher suites, `c` hashes the sorted extension types (without SNI and ALPN)
//! followed by the signature algorithms in wire order. GREASE values are removed everywhere,
//! signature algorithms included, as the written method says (the FoxIO Rust tool keeps them
//! in the signature list, which makes Chromium's JA4 change on every connection).
//!
//! Everything here is allocation-light and panic-free: the fingerprint is computed for every
//! observed connection, so it sits on the agent's hot path.

use hais_dissect::tls::client_hello::{ClientHello, EXT_ALPN, EXT_SERVER_NAME, is_grease};

use crate::hash::hash12;

/// How the ClientHello travelled; the first character of JA4 (and JA4S).
///
/// Decided by framing, not by the hello's content: the reference Rust tool infers `q` from
/// the quic_transport_parameters extension and never prints `d`; the written method (and
/// HaIS) use the transport the hello was found on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Ja4Transport {
    /// TLS over TCP: `t`.
    #[default]
    Tcp,
    /// TLS inside QUIC CRYPTO frames: `q`.
    Quic,
    /// DTLS over UDP: `d`.
    Dtls,
}

impl Ja4Transport {
    /// The fingerprint character for this transport.
    pub const fn as_char(self) -> char {
        match self {
            Ja4Transport::Tcp => 't',
            Ja4Transport::Quic => 'q',
            Ja4Transport::Dtls => 'd',
        }
    }
}

/// Which rule turns the first ALPN protocol into two characters.
///
/// The references disagree when the protocol does not start and end with an ASCII
/// alphanumeric (spec §2.7); the choice is exposed so that the agent can match either the
/// written method or the FoxIO Rust tool's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AlpnRule {
    /// The written method: first and last byte when both are ASCII alphanumeric (a single
    /// byte is doubled), otherwise the first and last hex digit of the whole value.
    #[default]
    Spec,
    /// What the FoxIO Rust tool prints: first and last character with every non-ASCII
    /// character replaced by `9`, and `0` as the second character of a one-character value.
    Reference,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The two ALPN characters of JA4/JA4S for the first (client) or selected (server) protocol;
/// `00` when it is empty.
pub fn alpn_chars(first_protocol: &[u8], rule: AlpnRule) -> [u8; 2] {
    let (Some(&first), Some(&last)) = (first_protocol.first(), first_protocol.last()) else {
        return *b"00";
    };
    match rule {
        AlpnRule::Spec => {
            if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
                [first, last]
            } else {
                [HEX[usize::from(first >> 4)], HEX[usize::from(last & 0x0f)]]
            }
        }
        AlpnRule::Reference => {
            let ascii_or_9 = |c: u8| if c.is_ascii() { c } else { b'9' };
            match std::str::from_utf8(first_protocol) {
                // The reference works on characters: a multi-byte character is one `9`.
                Ok(s) => {
                    let mut chars = s.chars();
                    let f = chars.next();
                    let l = chars.next_back();
                    let to_byte = |c: char| if c.is_ascii() { c as u8 } else { b'9' };
                    [f.map_or(b'0', to_byte), l.map_or(b'0', to_byte)]
                }
                Err(_) => {
                    let l = if first_protocol.len() >= 2 {
                        ascii_or_9(last)
                    } else {
                        b'0'
                    };
                    [ascii_or_9(first), l]
                }
            }
        }
    }
}

/// The two-character version code of JA4/JA4S (spec §2.4); `00` for anything unknown,
/// including TLS 1.3 drafts.
pub const fn version_code(v: u16) -> &'static str {
    match v {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0002 => "s2",
        0xfeff => "d1",
        0xfefd => "d2",
        0xfefc => "d3",
        _ => "00",
    }
}

/// The version JA4 reports: the newest non-GREASE entry of supported_versions, else
/// legacy_version (also when the list holds only GREASE, where the references emit nothing).
/// For DTLS the newest version has the lowest code (0xfefc = 1.3 < 0xfefd = 1.2).
pub fn client_version(ch: &ClientHello, transport: Ja4Transport) -> u16 {
    let versions = ch
        .supported_versions
        .iter()
        .copied()
        .filter(|v| !is_grease(*v));
    let newest = if transport == Ja4Transport::Dtls {
        versions.min()
    } else {
        versions.max()
    };
    newest.unwrap_or(ch.legacy_version)
}

/// Appends `v` as four lowercase hex digits.
#[inline]
pub fn push_hex_u16(out: &mut String, v: u16) {
    let [hi, lo] = v.to_be_bytes();
    for b in [hi >> 4, hi & 0x0f, lo >> 4, lo & 0x0f] {
        out.push(char::from(HEX[usize::from(b)]));
    }
}

/// Appends the values as comma-separated four-digit hex, the list format of every JA4+
/// method.
pub fn push_hex_list(out: &mut String, values: impl IntoIterator<Item = u16>) {
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_hex_u16(out, v);
    }
}

/// Appends a count as two decimal digits, capped at 99.
#[inline]
pub fn push_count(out: &mut String, n: usize) {
    let n = n.min(99) as u8;
    out.push(char::from(b'0' + n / 10));
    out.push(char::from(b'0' + n % 10));
}

/// The four JA4 outputs, named as the FoxIO Rust tool names its output keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ja4 {
    /// The fingerprint: `a_b_c` with sorted, hashed lists.
    pub ja4: String,
    /// The raw (pre-hash) form of [`Self::ja4`]: sorted lists, SNI and ALPN left out of the
    /// extensions.
    pub ja4_r: String,
    /// The original-order fingerprint: wire-order lists, SNI and ALPN kept.
    pub ja4_o: String,
    /// The raw form of [`Self::ja4_o`].
    pub ja4_ro: String,
}

/// GREASE-free views of the hello, shared by both orderings.
struct Lists {
    a: [u8; 10],
    ciphers: Vec<u16>,
    exts: Vec<u16>,
}

fn lists(ch: &ClientHello, transport: Ja4Transport, alpn: AlpnRule) -> Lists {
    // Sized up front: `filter().collect()` would grow the vectors step by step.
    let mut ciphers = Vec::with_capacity(ch.cipher_suites.len());
    ciphers.extend(ch.cipher_suites.iter().copied().filter(|c| !is_grease(*c)));
    let mut exts = Vec::with_capacity(ch.extension_types.len());
    exts.extend(
        ch.extension_types
            .iter()
            .copied()
            .filter(|e| !is_grease(*e)),
    );
    let mut a = [0u8; 10];
    a[0] = transport.as_char() as u8;
    a[1..3].copy_from_slice(version_code(client_version(ch, transport)).as_bytes());
    a[3] = if ch.extension_types.contains(&EXT_SERVER_NAME) {
        b'd'
    } else {
        b'i'
    };
    let c = ciphers.len().min(99) as u8;
    let e = exts.len().min(99) as u8;
    a[4..8].copy_from_slice(&[b'0' + c / 10, b'0' + c % 10, b'0' + e / 10, b'0' + e % 10]);
    let first = ch.alpn.first().map(Vec::as_slice).unwrap_or_default();
    a[8..10].copy_from_slice(&alpn_chars(first, alpn));
    Lists { a, ciphers, exts }
}

/// Appends `v` as four lowercase hex digits to a byte buffer.
#[inline]
fn put_hex_u16(out: &mut Vec<u8>, v: u16) {
    let [hi, lo] = v.to_be_bytes();
    out.extend_from_slice(&[
        HEX[usize::from(hi >> 4)],
        HEX[usize::from(hi & 0x0f)],
        HEX[usize::from(lo >> 4)],
        HEX[usize::from(lo & 0x0f)],
    ]);
}

fn put_hex_list(out: &mut Vec<u8>, values: impl IntoIterator<Item = u16>) {
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        put_hex_u16(out, v);
    }
}

/// Builds `a_ciphers_exts[_sigs]`. Bytes rather than `String::push` per character: this
/// string is built twice per hello, and every byte is ASCII.
fn build_raw(a: &[u8; 10], ciphers: &[u16], exts: &[u16], ch: &ClientHello, cap: usize) -> String {
    let mut raw = Vec::with_capacity(cap);
    raw.extend_from_slice(a);
    raw.push(b'_');
    put_hex_list(&mut raw, ciphers.iter().copied());
    raw.push(b'_');
    put_hex_list(&mut raw, exts.iter().copied());
    let mut sigs = ch
        .signature_algorithms
        .iter()
        .copied()
        .filter(|s| !is_grease(*s))
        .peekable();
    if sigs.peek().is_some() {
        raw.push(b'_');
        put_hex_list(&mut raw, sigs);
    }
    // Only ASCII was written (the ALPN characters are ASCII under both rules), so this
    // never fails; the fallback keeps the function total anyway.
    String::from_utf8(raw).unwrap_or_default()
}

/// Hashes the `b` and `c` sections of a raw string produced by [`build_raw`].
fn hashed_from_raw(raw: &str, n_ciphers: usize) -> String {
    // Layout: 10 chars of `a`, '_', 5 chars per cipher minus one (or nothing), '_', rest.
    let b_start = 11;
    let b_end = b_start + (5 * n_ciphers).saturating_sub(1);
    let b = raw.get(b_start..b_end).unwrap_or_default();
    let c = raw.get(b_end + 1..).unwrap_or_default();
    let mut out = String::with_capacity(36);
    out.push_str(raw.get(..10).unwrap_or_default());
    out.push('_');
    out.push_str(&hash12(b));
    out.push('_');
    out.push_str(&hash12(c));
    out
}

fn raw_capacity(l: &Lists, ch: &ClientHello) -> usize {
    13 + 5 * (l.ciphers.len() + l.exts.len() + ch.signature_algorithms.len())
}

/// Computes JA4 and its raw and original-order variants.
pub fn ja4(ch: &ClientHello, transport: Ja4Transport, alpn: AlpnRule) -> Ja4 {
    let mut l = lists(ch, transport, alpn);
    let cap = raw_capacity(&l, ch);

    let ja4_ro = build_raw(&l.a, &l.ciphers, &l.exts, ch, cap);
    let ja4_o = hashed_from_raw(&ja4_ro, l.ciphers.len());

    l.ciphers.sort_unstable();
    l.exts.retain(|&e| e != EXT_SERVER_NAME && e != EXT_ALPN);
    l.exts.sort_unstable();
    let ja4_r = build_raw(&l.a, &l.ciphers, &l.exts, ch, cap);
    let ja4 = hashed_from_raw(&ja4_r, l.ciphers.len());

    Ja4 {
        ja4,
        ja4_r,
        ja4_o,
        ja4_ro,
    }
}

/// Computes only the default JA4 string, for callers that do not report the raw or
/// original-order variants (half the hashing of [`ja4`]).
pub fn ja4_string(ch: &ClientHello, transport: Ja4Transport, alpn: AlpnRule) -> String {
    let mut l = lists(ch, transport, alpn);
    l.ciphers.sort_unstable();
    l.exts.retain(|&e| e != EXT_SERVER_NAME && e != EXT_ALPN);
    l.exts.sort_unstable();
    let raw = build_raw(&l.a, &l.ciphers, &l.exts, ch, raw_capacity(&l, ch));
    hashed_from_raw(&raw, l.ciphers.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- hand-built ClientHello bodies -------------------------------------------------

    fn u16s(vals: &[u16]) -> Vec<u8> {
        vals.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    fn vec16(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    fn vec8(b: &[u8]) -> Vec<u8> {
        let mut v = vec![b.len() as u8];
        v.extend_from_slice(b);
        v
    }

    /// Body of a ClientHello with the given lists. Extension contents are generated for the
    /// extensions JA4 reads; every other extension gets a small dummy body.
    fn hello_body(
        legacy: u16,
        ciphers: &[u16],
        exts: &[u16],
        sni: Option<&str>,
        alpn: &[&[u8]],
        sigs: &[u16],
        versions: &[u16],
    ) -> Vec<u8> {
        let mut b = legacy.to_be_bytes().to_vec();
        b.extend_from_slice(&[0x5a; 32]);
        b.extend(vec8(&[0x33; 32]));
        b.extend(vec16(&u16s(ciphers)));
        b.extend(vec8(&[0]));
        let mut e = Vec::new();
        for &t in exts {
            let data = match t {
                0x0000 => {
                    let name = sni.unwrap_or("").as_bytes();
                    let mut entry = vec![0];
                    entry.extend(vec16(name));
                    vec16(&entry)
                }
                0x0010 => vec16(&alpn.iter().flat_map(|p| vec8(p)).collect::<Vec<_>>()),
                0x000d => vec16(&u16s(sigs)),
                0x002b => vec8(&u16s(versions)),
                0x0015 => vec![0; 7],
                _ => vec![0, 1],
            };
            e.extend_from_slice(&t.to_be_bytes());
            e.extend(vec16(&data));
        }
        b.extend(vec16(&e));
        b
    }

    /// The spec's Chrome example, with GREASE added in every list JA4 reads.
    fn chrome_body() -> Vec<u8> {
        hello_body(
            0x0303,
            &[
                0x3a3a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8,
                0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
            ],
            &[
                0x8a8a, 0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005,
                0x0023, 0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015, 0x1a1a,
            ],
            Some("example.com"),
            &[b"h2", b"http/1.1"],
            &[
                0x0a0a, 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
            ],
            &[0xbaba, 0x0304, 0x0303],
        )
    }

    #[test]
    fn spec_chrome_example_end_to_end() {
        let ch = ClientHello::parse(&chrome_body()).unwrap();
        let fp = ja4(&ch, Ja4Transport::Tcp, AlpnRule::Spec);
        assert_eq!(fp.ja4, "t13d1516h2_8daaf6152771_e5627efa2ab1");
        assert_eq!(fp.ja4_o, "t13d1516h2_acb858a92679_18f69afefd3d");
        assert_eq!(
            fp.ja4_r,
            "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,\
             cca9_0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_0403,\
             0804,0401,0503,0805,0501,0806,0601"
        );
        assert_eq!(
            fp.ja4_ro,
            "t13d1516h2_1301,1302,1303,c02b,c02f,c02c,c030,cca9,cca8,c013,c014,009c,009d,002f,\
             0035_001b,0000,0033,0010,4469,0017,002d,000d,0005,0023,0012,002b,ff01,000b,000a,\
             0015_0403,0804,0401,0503,0805,0501,0806,0601"
        );
        assert_eq!(ja4_string(&ch, Ja4Transport::Tcp, AlpnRule::Spec), fp.ja4);
        // Spec: without signature algorithms the c hash is over the extensions alone.
        let mut no_sigs = ch.clone();
        no_sigs.signature_algorithms.clear();
        let fp = ja4(&no_sigs, Ja4Transport::Tcp, AlpnRule::Spec);
        assert_eq!(fp.ja4, "t13d1516h2_8daaf6152771_6d807ffa2a79");
        assert!(fp.ja4_r.ends_with("4469,ff01"), "no trailing underscore");
    }

    #[test]
    fn spec_quic_example() {
        let body = hello_body(
            0x0303,
            &[0x1301, 0x1302, 0x1303],
            &[
                0x0033, 0x0000, 0x002d, 0x000a, 0x0039, 0x0010, 0x4469, 0x002b, 0x001b, 0x000d,
            ],
            Some("www.google.com"),
            &[b"h3"],
            &[
                0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601, 0x0201,
            ],
            &[0x0304],
        );
        let ch = ClientHello::parse(&body).unwrap();
        assert!(ch.has_quic_transport_parameters);
        let fp = ja4(&ch, Ja4Transport::Quic, AlpnRule::Spec);
        assert_eq!(fp.ja4, "q13d0310h3_55b375c5d22e_cd85d2d88918");
        assert_eq!(
            fp.ja4_r,
            "q13d0310h3_1301,1302,1303_000a,000d,001b,002b,002d,0033,0039,4469_0403,0804,0401,\
             0503,0805,0501,0806,0601,0201"
        );
    }

    /// Firefox in `tls12.pcap`: raw strings from the Python reference's output.
    #[test]
    fn firefox_tls12_pcap() {
        let body = hello_body(
            0x0303,
            &[
                0x1301, 0x1303, 0x1302, 0xc02b, 0xc02f, 0xcca9, 0xcca8, 0xc02c, 0xc030, 0xc00a,
                0xc009, 0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
            ],
            &[
                0x0000, 0x0017, 0xff01, 0x000a, 0x000b, 0x0023, 0x0010, 0x0005, 0x0022, 0x0033,
                0x002b, 0x000d, 0x002d, 0x001c, 0x0015,
            ],
            Some("contile.services.mozilla.com"),
            &[b"h2", b"http/1.1"],
            &[
                0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0401, 0x0501, 0x0601, 0x0203,
                0x0201,
            ],
            &[0x0304, 0x0303],
        );
        let ch = ClientHello::parse(&body).unwrap();
        assert_eq!(
            ch.server_name.as_deref(),
            Some("contile.services.mozilla.com")
        );
        let fp = ja4(&ch, Ja4Transport::Tcp, AlpnRule::Spec);
        assert_eq!(fp.ja4, "t13d1715h2_5b57614c22b0_3d5424432f57");
        assert_eq!(
            fp.ja4_r,
            "t13d1715h2_002f,0035,009c,009d,1301,1302,1303,c009,c00a,c013,c014,c02b,c02c,c02f,\
             c030,cca8,cca9_0005,000a,000b,000d,0015,0017,001c,0022,0023,002b,002d,0033,ff01_\
             0403,0503,0603,0804,0805,0806,0401,0501,0601,0203,0201"
        );
        assert_eq!(fp.ja4_o, "t13d1715h2_5b234860e130_014157ec0da2");
        assert_eq!(
            fp.ja4_ro,
            "t13d1715h2_1301,1303,1302,c02b,c02f,cca9,cca8,c02c,c030,c00a,c009,c013,c014,009c,\
             009d,002f,0035_0000,0017,ff01,000a,000b,0023,0010,0005,0022,0033,002b,000d,002d,\
             001c,0015_0403,0503,0603,0804,0805,0806,0401,0501,0601,0203,0201"
        );
    }

    /// TLS 1.0 hello whose only extension is SNI (`https3-301-get.pcap`): empty c section.
    #[test]
    fn empty_extension_hash() {
        let body = hello_body(
            0x0301,
            &[
                0x0039, 0x0038, 0x0035, 0x0016, 0x0013, 0x000a, 0x0033, 0x0032, 0x002f, 0x009a,
                0x0099, 0x0096, 0x0005, 0x0004, 0x0015, 0x0012, 0x0009, 0x0014, 0x0011, 0x0008,
                0x0006, 0x0003, 0x00ff,
            ],
            &[0x0000],
            Some("example.org"),
            &[],
            &[],
            &[],
        );
        let ch = ClientHello::parse(&body).unwrap();
        let fp = ja4(&ch, Ja4Transport::Tcp, AlpnRule::Spec);
        assert_eq!(fp.ja4, "t10d230100_6a57a6f57151_000000000000");
        assert!(fp.ja4_r.ends_with("0099,009a,00ff_"));
        assert!(fp.ja4_ro.ends_with("_0000"));
    }

    #[test]
    fn empty_hello_and_caps() {
        let body = hello_body(0x0303, &[], &[], None, &[], &[], &[]);
        let ch = ClientHello::parse(&body).unwrap();
        let fp = ja4(&ch, Ja4Transport::Tcp, AlpnRule::Spec);
        assert_eq!(fp.ja4, "t12i000000_000000000000_000000000000");
        assert_eq!(fp.ja4_r, "t12i000000__");

        let ciphers: Vec<u16> = (1..=150).collect();
        let exts: Vec<u16> = (0x0100..0x0100 + 120).collect();
        let body = hello_body(0x0303, &ciphers, &exts, None, &[], &[], &[]);
        let ch = ClientHello::parse(&body).unwrap();
        let fp = ja4(&ch, Ja4Transport::Dtls, AlpnRule::Spec);
        assert!(fp.ja4.starts_with("d12i999900_"), "{}", fp.ja4);
    }

    #[test]
    fn version_selection() {
        let mut ch = ClientHello {
            legacy_version: 0x0303,
            ..ClientHello::default()
        };
        assert_eq!(client_version(&ch, Ja4Transport::Tcp), 0x0303);
        ch.supported_versions = vec![0x2a2a];
        assert_eq!(
            client_version(&ch, Ja4Transport::Tcp),
            0x0303,
            "GREASE only"
        );
        ch.supported_versions = vec![0x0a0a, 0x0303, 0x0304, 0x0302];
        assert_eq!(client_version(&ch, Ja4Transport::Tcp), 0x0304);
        ch.supported_versions = vec![0x0301];
        assert_eq!(client_version(&ch, Ja4Transport::Tcp), 0x0301);
        ch.legacy_version = 0xfefd;
        ch.supported_versions = vec![0xfefd, 0xfefc];
        assert_eq!(client_version(&ch, Ja4Transport::Dtls), 0xfefc);
        for (v, code) in [
            (0x0304, "13"),
            (0x0303, "12"),
            (0x0302, "11"),
            (0x0301, "10"),
            (0x0300, "s3"),
            (0x0002, "s2"),
            (0xfeff, "d1"),
            (0xfefd, "d2"),
            (0xfefc, "d3"),
            (0x7f1c, "00"),
            (0x0305, "00"),
        ] {
            assert_eq!(version_code(v), code, "{v:#06x}");
        }
    }

    #[test]
    fn alpn_spec_table() {
        let s = |p: &[u8]| String::from_utf8(alpn_chars(p, AlpnRule::Spec).to_vec()).unwrap();
        assert_eq!(s(&[0xab]), "ab");
        assert_eq!(s(&[0x20]), "20");
        assert_eq!(s(&[0xab, 0xcd]), "ad");
        assert_eq!(s(&[0x20, 0x61]), "21");
        assert_eq!(s(&[0x30, 0xab]), "3b");
        assert_eq!(s(&[0x61, 0x20]), "60");
        assert_eq!(s(&[0x30, 0x31, 0xab, 0xcd]), "3d");
        assert_eq!(s(&[0x30, 0xab, 0xcd, 0x31]), "01");
        assert_eq!(s(b"h2"), "h2");
        assert_eq!(s(b"http/1.1"), "h1");
        assert_eq!(s(b"a"), "aa");
        assert_eq!(s(b"H2"), "H2", "case preserved");
        assert_eq!(s(&[0xba, 0xad]), "bd", "tls-non-ascii-alpn.pcapng");
        assert_eq!(s(b""), "00");
    }

    #[test]
    fn alpn_reference_table() {
        let r = |p: &[u8]| String::from_utf8(alpn_chars(p, AlpnRule::Reference).to_vec()).unwrap();
        assert_eq!(r(b"h2"), "h2");
        assert_eq!(r(b"http/1.1"), "h1");
        assert_eq!(r(b"a"), "a0");
        assert_eq!(r(&[0xba, 0xad]), "99");
        assert_eq!(r(" x".as_bytes()), " x");
        assert_eq!(r("é".as_bytes()), "90", "one character");
        assert_eq!(r("éa".as_bytes()), "9a");
        assert_eq!(r(b""), "00");
    }

    #[test]
    fn non_ascii_alpn_end_to_end() {
        let body = hello_body(
            0x0303,
            &[0x1301],
            &[0x0010],
            None,
            &[&[0xba, 0xad], b"http/1.1"],
            &[],
            &[],
        );
        let ch = ClientHello::parse(&body).unwrap();
        assert!(
            ja4(&ch, Ja4Transport::Tcp, AlpnRule::Spec)
                .ja4
                .starts_with("t12i0101bd_")
        );
        assert!(
            ja4(&ch, Ja4Transport::Tcp, AlpnRule::Reference)
                .ja4
                .starts_with("t12i010199_")
        );
    }

    #[test]
    fn hex_helpers() {
        let mut s = String::new();
        push_hex_list(&mut s, [0x0000, 0xabcd, 0x0102]);
        assert_eq!(s, "0000,abcd,0102");
        s.clear();
        push_count(&mut s, 7);
        push_count(&mut s, 123);
        assert_eq!(s, "0799");
    }
}
