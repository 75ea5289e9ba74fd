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

use crate::hash::{HEX_PAIRS, Hash12Writer};

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
pub fn client_version(ch: &ClientHello<'_>, transport: Ja4Transport) -> u16 {
    let versions = ch.supported_versions.iter().filter(|v| !is_grease(*v));
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

/// Values a list of a typical hello fits in without touching the heap (Chrome sends 16
/// ciphers and 18 extensions; the largest hello in the corpus has fewer than 100 values).
const STACK_VALUES: usize = 128;

/// A GREASE-free copy of one hello list, on the stack unless the hello is unusually large,
/// so sorting it costs no allocation.
struct Values {
    stack: [u16; STACK_VALUES],
    heap: Vec<u16>,
    len: usize,
}

impl Values {
    /// Collects the non-GREASE values; `max` bounds how many `values` yields.
    fn non_grease(values: impl Iterator<Item = u16>, max: usize) -> Values {
        let mut v = Values {
            stack: [0; STACK_VALUES],
            heap: Vec::new(),
            len: 0,
        };
        let values = values.filter(|x| !is_grease(*x));
        if max <= STACK_VALUES {
            for x in values {
                // `max` is a bound from the message layout, so this never overflows.
                if let Some(slot) = v.stack.get_mut(v.len) {
                    *slot = x;
                    v.len += 1;
                }
            }
        } else {
            v.heap.extend(values);
            v.len = v.heap.len();
        }
        v
    }

    fn as_slice(&self) -> &[u16] {
        if self.heap.is_empty() {
            &self.stack[..self.len]
        } else {
            &self.heap
        }
    }

    fn as_mut_slice(&mut self) -> &mut [u16] {
        if self.heap.is_empty() {
            &mut self.stack[..self.len]
        } else {
            &mut self.heap
        }
    }

    /// Keeps the values for which `keep` holds, in order.
    fn retain(&mut self, keep: impl Fn(u16) -> bool) {
        let s = self.as_mut_slice();
        let mut n = 0;
        for i in 0..s.len() {
            if keep(s[i]) {
                s[n] = s[i];
                n += 1;
            }
        }
        self.heap.truncate(n);
        self.len = n;
    }
}

/// Where list text goes: the raw string being built, or the hash of a section fed as the
/// text is produced (the hashed fingerprint never materialises its raw form).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Hash12Writer {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.write(bytes);
    }
}

/// Writes the values as comma-separated four-digit hex, the list format of every method.
#[inline]
fn put_hex_list(out: &mut impl Sink, values: impl IntoIterator<Item = u16>) {
    for (i, v) in values.into_iter().enumerate() {
        let [hi, lo] = v.to_be_bytes();
        let [a, b] = HEX_PAIRS[usize::from(hi)];
        let [c, d] = HEX_PAIRS[usize::from(lo)];
        if i == 0 {
            out.put(&[a, b, c, d]);
        } else {
            out.put(&[b',', a, b, c, d]);
        }
    }
}

/// One ordering of the hello's lists (sorted for `ja4`, wire order for `ja4_o`).
struct Sections<'v, 'h> {
    a: [u8; 10],
    ciphers: &'v [u16],
    exts: &'v [u16],
    hello: &'v ClientHello<'h>,
}

impl Sections<'_, '_> {
    /// The `b` section: the cipher list.
    fn write_b(&self, out: &mut impl Sink) {
        put_hex_list(out, self.ciphers.iter().copied());
    }

    /// The `c` section: the extension list, then `_` and the signature algorithms (wire
    /// order, GREASE removed) when there are any.
    fn write_c(&self, out: &mut impl Sink) {
        put_hex_list(out, self.exts.iter().copied());
        let mut sigs = self
            .hello
            .signature_algorithms
            .iter()
            .filter(|s| !is_grease(*s))
            .peekable();
        if sigs.peek().is_some() {
            out.put(b"_");
            put_hex_list(out, sigs);
        }
    }

    /// `a_hash(b)_hash(c)`, the lists formatted straight into the hashes.
    fn hashed(&self) -> String {
        let mut b = Hash12Writer::new();
        self.write_b(&mut b);
        let mut c = Hash12Writer::new();
        self.write_c(&mut c);
        self.join(b, c)
    }

    /// The raw form `a_b_c` with the lists in clear, and the hashed form computed from its
    /// sections (the text exists already; formatting it again for the hashes would double
    /// the work).
    fn raw_and_hashed(&self) -> (String, String) {
        let sigs = self.hello.signature_algorithms.len();
        let mut raw = Vec::with_capacity(13 + 5 * (self.ciphers.len() + self.exts.len() + sigs));
        raw.extend_from_slice(&self.a);
        raw.push(b'_');
        self.write_b(&mut raw);
        // `b` is five characters per cipher minus the last comma, or nothing.
        let b_end = raw.len();
        raw.push(b'_');
        self.write_c(&mut raw);
        let (mut b, mut c) = (Hash12Writer::new(), Hash12Writer::new());
        b.write(raw.get(11..b_end).unwrap_or_default());
        c.write(raw.get(b_end + 1..).unwrap_or_default());
        (ascii_string(raw), self.join(b, c))
    }

    fn join(&self, b: Hash12Writer, c: Hash12Writer) -> String {
        let mut out = Vec::with_capacity(36);
        out.extend_from_slice(&self.a);
        out.push(b'_');
        out.extend_from_slice(&b.finish());
        out.push(b'_');
        out.extend_from_slice(&c.finish());
        ascii_string(out)
    }
}

/// Only ASCII is ever written (the ALPN characters are ASCII under both rules), so this
/// never fails; the fallback keeps the function total anyway.
fn ascii_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_default()
}

/// The hello's lists without GREASE, and the `a` section, which counts them.
struct Lists {
    a: [u8; 10],
    ciphers: Values,
    exts: Values,
}

fn lists(ch: &ClientHello<'_>, transport: Ja4Transport, alpn: AlpnRule) -> Lists {
    let ciphers = Values::non_grease(ch.cipher_suites.iter(), ch.cipher_suites.len());
    let exts = Values::non_grease(ch.extensions.types(), ch.extensions.max_len());
    let mut a = [0u8; 10];
    a[0] = transport.as_char() as u8;
    a[1..3].copy_from_slice(version_code(client_version(ch, transport)).as_bytes());
    a[3] = if ch.extensions.contains(EXT_SERVER_NAME) {
        b'd'
    } else {
        b'i'
    };
    let c = ciphers.len.min(99) as u8;
    let e = exts.len.min(99) as u8;
    a[4..8].copy_from_slice(&[b'0' + c / 10, b'0' + c % 10, b'0' + e / 10, b'0' + e % 10]);
    a[8..10].copy_from_slice(&alpn_chars(ch.alpn.first().unwrap_or_default(), alpn));
    Lists { a, ciphers, exts }
}

impl Lists {
    /// Turns the wire-order lists into JA4's sorted ones: SNI and ALPN leave the
    /// extensions (they are already in `a`), both lists are sorted.
    fn sort(&mut self) {
        self.ciphers.as_mut_slice().sort_unstable();
        self.exts.retain(|e| e != EXT_SERVER_NAME && e != EXT_ALPN);
        self.exts.as_mut_slice().sort_unstable();
    }

    fn sections<'v, 'h>(&'v self, hello: &'v ClientHello<'h>) -> Sections<'v, 'h> {
        Sections {
            a: self.a,
            ciphers: self.ciphers.as_slice(),
            exts: self.exts.as_slice(),
            hello,
        }
    }
}

/// Computes JA4 and its raw and original-order variants.
pub fn ja4(ch: &ClientHello<'_>, transport: Ja4Transport, alpn: AlpnRule) -> Ja4 {
    let mut l = lists(ch, transport, alpn);
    let (ja4_ro, ja4_o) = l.sections(ch).raw_and_hashed();
    l.sort();
    let (ja4_r, ja4) = l.sections(ch).raw_and_hashed();
    Ja4 {
        ja4,
        ja4_r,
        ja4_o,
        ja4_ro,
    }
}

/// Computes only the default JA4 string, for callers that do not report the raw or
/// original-order variants: no raw string is built, and nothing but the result touches
/// the heap for a hello of ordinary size.
pub fn ja4_string(ch: &ClientHello<'_>, transport: Ja4Transport, alpn: AlpnRule) -> String {
    let mut l = lists(ch, transport, alpn);
    l.sort();
    l.sections(ch).hashed()
}

/// Extensions one client adds or drops between connections of one TLS session: `padding` (21,
/// present or not with the hello's size), `session_ticket` (35, empty or carrying a ticket, and
/// sent by some clients only when they hold one), `pre_shared_key` (41) and `early_data` (42),
/// sent only when resuming. Each changes JA4's extension count and hash.
pub const RESUMPTION_EXTENSIONS: [u16; 4] = [0x0015, 0x0023, 0x0029, 0x002a];

/// The resumption-stable JA4: JA4 of the hello as if it carried none of
/// [`RESUMPTION_EXTENSIONS`] (left out of section a's count and section c's list), so a fresh
/// and a resumed connection of the same client give the same value. Not a FoxIO method: a key
/// for comparing, reported next to the JA4, which stays as the specification defines it.
pub fn ja4_stable_string(ch: &ClientHello<'_>, transport: Ja4Transport, alpn: AlpnRule) -> String {
    let mut l = lists(ch, transport, alpn);
    l.exts.retain(|e| !RESUMPTION_EXTENSIONS.contains(&e));
    let e = l.exts.len.min(99) as u8;
    l.a[6..8].copy_from_slice(&[b'0' + e / 10, b'0' + e % 10]);
    l.sort();
    l.sections(ch).hashed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash12;
    use hais_dissect::tls::client_hello::U16List;

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
        let body = chrome_body();
        let ch = ClientHello::parse(&body).unwrap();
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
        let mut no_sigs = ch;
        no_sigs.signature_algorithms = Default::default();
        let fp = ja4(&no_sigs, Ja4Transport::Tcp, AlpnRule::Spec);
        assert_eq!(fp.ja4, "t13d1516h2_8daaf6152771_6d807ffa2a79");
        assert!(fp.ja4_r.ends_with("4469,ff01"), "no trailing underscore");
    }

    #[test]
    fn resumption_stable_ja4_ignores_what_resumption_changes() {
        let fresh = chrome_body();
        let fresh = ClientHello::parse(&fresh).unwrap();
        let stable = ja4_stable_string(&fresh, Ja4Transport::Tcp, AlpnRule::Spec);
        // Padding and the session ticket are out: two extensions fewer, another c hash.
        assert!(stable.starts_with("t13d1514h2_8daaf6152771_"), "{stable}");
        assert_ne!(
            stable,
            ja4_string(&fresh, Ja4Transport::Tcp, AlpnRule::Spec)
        );
        // The same client resuming: early_data and pre_shared_key (last), no padding.
        let resumed = hello_body(
            0x0303,
            &[
                0x3a3a, 0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8,
                0xc013, 0xc014, 0x009c, 0x009d, 0x002f, 0x0035,
            ],
            &[
                0x8a8a, 0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005,
                0x0023, 0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x002a, 0x1a1a, 0x0029,
            ],
            Some("example.com"),
            &[b"h2", b"http/1.1"],
            &[
                0x0a0a, 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
            ],
            &[0xbaba, 0x0304, 0x0303],
        );
        let resumed = ClientHello::parse(&resumed).unwrap();
        let plain = ja4_string(&resumed, Ja4Transport::Tcp, AlpnRule::Spec);
        assert_ne!(plain, ja4_string(&fresh, Ja4Transport::Tcp, AlpnRule::Spec));
        assert_eq!(
            ja4_stable_string(&resumed, Ja4Transport::Tcp, AlpnRule::Spec),
            stable
        );
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
            ch.server_name_lossy().as_deref(),
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

    fn versions(wire: &'static [u8]) -> U16List<'static> {
        U16List::new(wire).unwrap()
    }

    /// Lists on the stack (up to 128 values) and on the heap (beyond) give the same
    /// strings as a plain formatting of the sorted lists, and each hash is the hash of its
    /// raw section.
    #[test]
    fn stack_and_heap_lists_agree_with_plain_formatting() {
        let hex = |v: &[u16]| {
            v.iter()
                .map(|x| format!("{x:04x}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        for n in [1usize, 2, 127, 128, 129, 130, 300] {
            let ciphers: Vec<u16> = (0..n as u16)
                .map(|i| {
                    if i % 9 == 4 {
                        0x1a1a
                    } else {
                        i.wrapping_mul(7919)
                    }
                })
                .collect();
            let mut exts: Vec<u16> = (0..n as u16).map(|i| 0x0100 + (n as u16 - i)).collect();
            exts.push(0x000d);
            let body = hello_body(0x0303, &ciphers, &exts, None, &[], &[0x0403], &[]);
            let ch = ClientHello::parse(&body).unwrap();
            let fp = ja4(&ch, Ja4Transport::Tcp, AlpnRule::Spec);
            let mut sorted: Vec<u16> = ciphers.iter().copied().filter(|c| !is_grease(*c)).collect();
            sorted.sort_unstable();
            let mut sorted_exts = exts.clone();
            sorted_exts.sort_unstable();
            let b = hex(&sorted);
            let c = format!("{}_0403", hex(&sorted_exts));
            assert_eq!(fp.ja4_r, format!("{}_{b}_{c}", &fp.ja4[..10]), "{n}");
            assert_eq!(
                fp.ja4,
                format!("{}_{}_{}", &fp.ja4[..10], hash12(&b), hash12(&c)),
                "{n}"
            );
            let wire: Vec<u16> = ciphers.iter().copied().filter(|c| !is_grease(*c)).collect();
            assert_eq!(
                fp.ja4_ro,
                format!("{}_{}_{}_0403", &fp.ja4[..10], hex(&wire), hex(&exts))
            );
            assert_eq!(ja4_string(&ch, Ja4Transport::Tcp, AlpnRule::Spec), fp.ja4);
        }
    }

    #[test]
    fn version_selection() {
        let mut ch = ClientHello {
            legacy_version: 0x0303,
            ..ClientHello::default()
        };
        assert_eq!(client_version(&ch, Ja4Transport::Tcp), 0x0303);
        ch.supported_versions = versions(&[0x2a, 0x2a]);
        assert_eq!(
            client_version(&ch, Ja4Transport::Tcp),
            0x0303,
            "GREASE only"
        );
        ch.supported_versions = versions(&[0x0a, 0x0a, 3, 3, 3, 4, 3, 2]);
        assert_eq!(client_version(&ch, Ja4Transport::Tcp), 0x0304);
        ch.supported_versions = versions(&[3, 1]);
        assert_eq!(client_version(&ch, Ja4Transport::Tcp), 0x0301);
        ch.legacy_version = 0xfefd;
        ch.supported_versions = versions(&[0xfe, 0xfd, 0xfe, 0xfc]);
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
