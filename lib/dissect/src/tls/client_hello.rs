//! The ClientHello message (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2, DTLS: RFC 6347 §4.2.1) and
//! the handful of extensions the client fingerprints read.
//!
//! The parser keeps what JA4 needs, in wire order and with GREASE values still present:
//! whether and how to filter is the fingerprint's decision, not the parser's. A malformed
//! *extension body* does not fail the whole hello (its type is still recorded and the field
//! it would fill stays empty), because a fingerprint of a slightly broken client is more
//! useful than none; a malformed hello *structure* is an error.
//!
//! The parsed hello borrows the message: lists are views over the wire bytes, checked once
//! while parsing. A hello is parsed for every connection, and copying its lists into
//! vectors (eight or more allocations per hello) used to cost more than the parsing itself.

use std::borrow::Cow;
use std::fmt;

use super::record::TlsError;
use crate::bytes::Reader;

/// Extension `server_name` (RFC 6066).
pub const EXT_SERVER_NAME: u16 = 0x0000;
/// Extension `supported_groups` (RFC 8422 / RFC 8446).
pub const EXT_SUPPORTED_GROUPS: u16 = 0x000a;
/// Extension `signature_algorithms` (RFC 8446 §4.2.3).
pub const EXT_SIGNATURE_ALGORITHMS: u16 = 0x000d;
/// Extension `application_layer_protocol_negotiation` (RFC 7301).
pub const EXT_ALPN: u16 = 0x0010;
/// Extension `supported_versions` (RFC 8446 §4.2.1).
pub const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
/// Extension `key_share` (RFC 8446 §4.2.8).
pub const EXT_KEY_SHARE: u16 = 0x0033;
/// Extension `quic_transport_parameters` (RFC 9001 §8.2).
pub const EXT_QUIC_TRANSPORT_PARAMETERS: u16 = 0x0039;

/// True for the sixteen GREASE values of RFC 8701 (0x0a0a, 0x1a1a, ... 0xfafa): both bytes
/// equal with low nibble 0xa. They appear in cipher suites, extension types, versions,
/// groups and signature algorithms, and every JA4+ method drops them because clients pick
/// them at random per connection.
#[inline]
pub const fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && (v >> 8) == (v & 0xff)
}

/// A list of big-endian `u16` values borrowed from the message (cipher suites, signature
/// algorithms, versions). The length is even by construction.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct U16List<'a>(&'a [u8]);

impl<'a> U16List<'a> {
    /// A view of `bytes` as big-endian values; `None` on an odd length.
    pub fn new(bytes: &'a [u8]) -> Option<Self> {
        bytes.len().is_multiple_of(2).then_some(U16List(bytes))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values in wire order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = u16> + ExactSizeIterator + 'a {
        self.0
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
    }

    pub fn contains(&self, v: u16) -> bool {
        self.iter().any(|x| x == v)
    }

    pub fn to_vec(&self) -> Vec<u16> {
        self.iter().collect()
    }
}

impl fmt::Debug for U16List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|v| format!("{v:#06x}")))
            .finish()
    }
}

/// An ALPN ProtocolNameList body (u8-length names), checked to be well formed.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct AlpnList<'a>(&'a [u8]);

impl<'a> AlpnList<'a> {
    /// Parses the extension data (a u16-length ProtocolNameList); `None` when malformed.
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let list = Reader::new(data).vec16()?;
        let mut r = Reader::new(list);
        while !r.is_empty() {
            r.vec8()?;
        }
        Some(AlpnList(list))
    }

    /// The protocol names, client order.
    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut r = Reader::new(self.0);
        std::iter::from_fn(move || r.vec8())
    }

    /// The first (preferred) protocol name.
    pub fn first(&self) -> Option<&'a [u8]> {
        self.iter().next()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_vec(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }
}

impl fmt::Debug for AlpnList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(String::from_utf8_lossy))
            .finish()
    }
}

/// The extensions block of a hello, checked to be a well-formed sequence of
/// (type, u16-length data) entries.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions<'a>(&'a [u8]);

impl<'a> Extensions<'a> {
    /// The extension types, wire order, GREASE and duplicates included.
    pub fn types(&self) -> impl Iterator<Item = u16> + 'a {
        let mut r = Reader::new(self.0);
        std::iter::from_fn(move || {
            let ty = r.u16()?;
            r.vec16()?;
            Some(ty)
        })
    }

    /// An upper bound on the number of extensions (each takes at least four bytes), for
    /// sizing buffers without walking the block.
    pub fn max_len(&self) -> usize {
        self.0.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ty: u16) -> bool {
        self.types().any(|t| t == ty)
    }

    pub fn to_vec(&self) -> Vec<u16> {
        self.types().collect()
    }
}

impl fmt::Debug for Extensions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.types().map(|v| format!("{v:#06x}")))
            .finish()
    }
}

/// The ClientHello fields the fingerprints use, borrowed from the message body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientHello<'a> {
    /// `legacy_version` (`client_version` before TLS 1.3). JA4 falls back to it when there is
    /// no usable supported_versions extension.
    pub legacy_version: u16,
    /// Client random.
    pub random: [u8; 32],
    /// Legacy session id (up to 32 bytes per the RFCs; up to 255 accepted).
    pub session_id: &'a [u8],
    /// DTLS cookie (empty for TLS and for a first DTLS hello).
    pub cookie: &'a [u8],
    /// Cipher suites, wire order, GREASE included.
    pub cipher_suites: U16List<'a>,
    /// Extension types, wire order, GREASE and duplicates included.
    pub extensions: Extensions<'a>,
    /// First `host_name` entry of server_name, as sent (see [`Self::server_name_lossy`]).
    pub server_name: Option<&'a [u8]>,
    /// ALPN protocol names, client order (empty when absent or malformed).
    pub alpn: AlpnList<'a>,
    /// Contents of the first signature_algorithms (0x000d) extension, wire order. The
    /// lists in signature_algorithms_cert / delegated_credentials are deliberately not here.
    pub signature_algorithms: U16List<'a>,
    /// Contents of supported_versions, wire order, GREASE included.
    pub supported_versions: U16List<'a>,
    /// Whether quic_transport_parameters (0x0039) is present.
    pub has_quic_transport_parameters: bool,
}

impl<'a> ClientHello<'a> {
    /// Parses a TLS ClientHello body (the bytes after the 4-byte handshake header).
    pub fn parse(body: &'a [u8]) -> Result<ClientHello<'a>, TlsError> {
        parse(body, false)
    }

    /// Parses a DTLS ClientHello body (reassembled, after the 12-byte DTLS handshake
    /// header), which carries a cookie after the session id.
    pub fn parse_dtls(body: &'a [u8]) -> Result<ClientHello<'a>, TlsError> {
        parse(body, true)
    }

    /// The server name lossily decoded as UTF-8 (what is printed). Decoding is left to the
    /// caller that prints it, so fingerprinting alone never pays for it.
    pub fn server_name_lossy(&self) -> Option<Cow<'a, str>> {
        self.server_name.map(String::from_utf8_lossy)
    }
}

const fn trunc(what: &'static str) -> TlsError {
    TlsError::Truncated { what }
}

fn parse(body: &[u8], dtls: bool) -> Result<ClientHello<'_>, TlsError> {
    let mut r = Reader::new(body);
    let legacy_version = r.u16().ok_or(trunc("ClientHello version"))?;
    let mut random = [0u8; 32];
    random.copy_from_slice(r.take(32).ok_or(trunc("ClientHello random"))?);
    let session_id = r.vec8().ok_or(trunc("ClientHello session id"))?;
    let cookie = if dtls {
        r.vec8().ok_or(trunc("ClientHello cookie"))?
    } else {
        &[]
    };
    let suites = r.vec16().ok_or(trunc("ClientHello cipher suites"))?;
    let cipher_suites = U16List::new(suites).ok_or(TlsError::Malformed {
        what: "ClientHello cipher suites",
    })?;
    r.vec8().ok_or(trunc("ClientHello compression methods"))?;

    let mut ch = ClientHello {
        legacy_version,
        random,
        session_id,
        cookie,
        cipher_suites,
        ..ClientHello::default()
    };
    // Extensions are optional before TLS 1.3 (an SSL 3.0-style hello ends here).
    if r.is_empty() {
        return Ok(ch);
    }
    let exts = r.vec16().ok_or(trunc("ClientHello extensions"))?;
    // Bytes after the extensions block are ignored, as TLS stacks do for forward
    // compatibility.
    let mut er = Reader::new(exts);
    let mut seen_sig_algs = false;
    while !er.is_empty() {
        let ty = er.u16().ok_or(trunc("ClientHello extension"))?;
        let data = er.vec16().ok_or(trunc("ClientHello extension"))?;
        match ty {
            EXT_SERVER_NAME if ch.server_name.is_none() => ch.server_name = parse_sni(data),
            EXT_ALPN if ch.alpn.is_empty() => ch.alpn = AlpnList::parse(data).unwrap_or_default(),
            EXT_SIGNATURE_ALGORITHMS if !seen_sig_algs => {
                seen_sig_algs = true;
                ch.signature_algorithms = Reader::new(data)
                    .vec16()
                    .and_then(U16List::new)
                    .unwrap_or_default();
            }
            EXT_SUPPORTED_VERSIONS if ch.supported_versions.is_empty() => {
                ch.supported_versions = Reader::new(data)
                    .vec8()
                    .and_then(U16List::new)
                    .unwrap_or_default();
            }
            EXT_QUIC_TRANSPORT_PARAMETERS => ch.has_quic_transport_parameters = true,
            _ => {}
        }
    }
    // The whole block was walked above, so every entry in it is well formed.
    ch.extensions = Extensions(exts);
    Ok(ch)
}

/// First host_name (type 0) from a ServerNameList.
fn parse_sni(data: &[u8]) -> Option<&[u8]> {
    let list = Reader::new(data).vec16()?;
    let mut r = Reader::new(list);
    while !r.is_empty() {
        let name_type = r.u8()?;
        let name = r.vec16()?;
        if name_type == 0 {
            return Some(name);
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a ClientHello body from parts, for tests across the crate.
    pub(crate) fn build_hello(
        version: u16,
        dtls_cookie: Option<&[u8]>,
        ciphers: &[u16],
        exts: &[(u16, Vec<u8>)],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&version.to_be_bytes());
        b.extend_from_slice(&[0x11; 32]);
        b.push(32);
        b.extend_from_slice(&[0x22; 32]);
        if let Some(c) = dtls_cookie {
            b.push(c.len() as u8);
            b.extend_from_slice(c);
        }
        b.extend_from_slice(&((ciphers.len() * 2) as u16).to_be_bytes());
        for c in ciphers {
            b.extend_from_slice(&c.to_be_bytes());
        }
        b.extend_from_slice(&[1, 0]);
        let mut e = Vec::new();
        for (t, d) in exts {
            e.extend_from_slice(&t.to_be_bytes());
            e.extend_from_slice(&(d.len() as u16).to_be_bytes());
            e.extend_from_slice(d);
        }
        b.extend_from_slice(&(e.len() as u16).to_be_bytes());
        b.extend_from_slice(&e);
        b
    }

    pub(crate) fn sni_ext(name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
        v.push(0);
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v
    }

    pub(crate) fn alpn_ext(names: &[&[u8]]) -> Vec<u8> {
        let mut l = Vec::new();
        for n in names {
            l.push(n.len() as u8);
            l.extend_from_slice(n);
        }
        let mut v = (l.len() as u16).to_be_bytes().to_vec();
        v.extend(l);
        v
    }

    pub(crate) fn u16_vec16(vals: &[u16]) -> Vec<u8> {
        let mut v = ((vals.len() * 2) as u16).to_be_bytes().to_vec();
        for x in vals {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    }

    pub(crate) fn u16_vec8(vals: &[u16]) -> Vec<u8> {
        let mut v = vec![(vals.len() * 2) as u8];
        for x in vals {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v
    }

    fn sample() -> Vec<u8> {
        build_hello(
            0x0303,
            None,
            &[0x2a2a, 0x1301, 0x1302, 0xc02b],
            &[
                (0xdada, vec![]),
                (EXT_SERVER_NAME, sni_ext("example.com")),
                (EXT_ALPN, alpn_ext(&[b"h2", b"http/1.1"])),
                (EXT_SIGNATURE_ALGORITHMS, u16_vec16(&[0x0403, 0x0804])),
                (0x0032, u16_vec16(&[0x0601])),
                (EXT_SUPPORTED_VERSIONS, u16_vec8(&[0x7a7a, 0x0304, 0x0303])),
                (EXT_QUIC_TRANSPORT_PARAMETERS, vec![1, 2]),
                (0x0a0a, vec![0]),
            ],
        )
    }

    #[test]
    fn grease_values() {
        let all: Vec<u16> = (0..=0xffffu16).filter(|v| is_grease(*v)).collect();
        assert_eq!(all.len(), 16);
        assert_eq!(all[0], 0x0a0a);
        assert_eq!(all[15], 0xfafa);
        assert!(all.iter().all(|v| v & 0xff == 0x0a || v & 0xff == (v >> 8)));
        assert!(!is_grease(0x0a1a));
        assert!(!is_grease(0x1301));
    }

    #[test]
    fn parses_fields() {
        let body = sample();
        let ch = ClientHello::parse(&body).unwrap();
        assert_eq!(ch.legacy_version, 0x0303);
        assert_eq!(ch.random, [0x11; 32]);
        assert_eq!(ch.session_id, [0x22; 32]);
        assert!(ch.cookie.is_empty());
        assert_eq!(ch.cipher_suites.to_vec(), [0x2a2a, 0x1301, 0x1302, 0xc02b]);
        assert_eq!(
            ch.extensions.to_vec(),
            [
                0xdada, 0x0000, 0x0010, 0x000d, 0x0032, 0x002b, 0x0039, 0x0a0a
            ]
        );
        assert_eq!(ch.server_name, Some(&b"example.com"[..]));
        assert_eq!(ch.server_name_lossy().as_deref(), Some("example.com"));
        assert_eq!(ch.alpn.to_vec(), vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(ch.signature_algorithms.to_vec(), [0x0403, 0x0804]);
        assert_eq!(ch.supported_versions.to_vec(), [0x7a7a, 0x0304, 0x0303]);
        assert!(ch.has_quic_transport_parameters);
    }

    #[test]
    fn dtls_cookie() {
        let body = build_hello(0xfefd, Some(&[5, 6, 7]), &[0xc02b], &[]);
        let ch = ClientHello::parse_dtls(&body).unwrap();
        assert_eq!(ch.legacy_version, 0xfefd);
        assert_eq!(ch.cookie, [5, 6, 7]);
        assert_eq!(ch.cipher_suites.to_vec(), [0xc02b]);
        // Read as TLS, the cookie shifts everything: must not be silently accepted as the
        // same hello.
        assert_ne!(ClientHello::parse(&body).ok(), Some(ch));
    }

    #[test]
    fn no_extensions_block() {
        let mut body = build_hello(0x0301, None, &[0x0035, 0x002f], &[]);
        body.truncate(body.len() - 2); // drop the (empty) extensions length
        let ch = ClientHello::parse(&body).unwrap();
        assert_eq!(ch.cipher_suites.to_vec(), [0x0035, 0x002f]);
        assert!(ch.extensions.is_empty());
        assert_eq!(ch.server_name, None);
    }

    #[test]
    fn views_borrow_and_check() {
        assert_eq!(U16List::new(&[1, 2, 3]), None, "odd length");
        let l = U16List::new(&[0x13, 0x01, 0xfa, 0xfa]).unwrap();
        assert_eq!((l.len(), l.to_vec()), (2, vec![0x1301, 0xfafa]));
        assert!(l.contains(0xfafa) && !l.contains(0x1302));
        assert_eq!(format!("{l:?}"), "[\"0x1301\", \"0xfafa\"]");
        // A name running past the list makes the whole ALPN list malformed.
        assert_eq!(AlpnList::parse(&[0, 3, 3, b'h', b'2']), None);
        let a = AlpnList::parse(&[0, 6, 2, b'h', b'2', 2, b'h', b'3']).unwrap();
        assert_eq!(a.first(), Some(&b"h2"[..]));
        assert_eq!(a.to_vec(), vec![b"h2".to_vec(), b"h3".to_vec()]);
        let body = sample();
        let ch = ClientHello::parse(&body).unwrap();
        assert!(ch.extensions.max_len() >= ch.extensions.types().count());
        assert!(ch.extensions.contains(EXT_ALPN) && !ch.extensions.contains(0x0015));
        // The lists point into the message itself: nothing was copied.
        let within = |s: &[u8]| body.as_ptr_range().contains(&s.as_ptr());
        assert!(within(ch.session_id) && within(ch.server_name.unwrap()));
    }

    #[test]
    fn server_name_is_decoded_only_when_asked() {
        let mut name = sni_ext("x");
        *name.last_mut().unwrap() = 0xff;
        let body = build_hello(0x0303, None, &[0x1301], &[(EXT_SERVER_NAME, name)]);
        let ch = ClientHello::parse(&body).unwrap();
        assert_eq!(ch.server_name, Some(&[0xff][..]));
        assert_eq!(ch.server_name_lossy().as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn malformed_extension_body_is_tolerated() {
        let body = build_hello(
            0x0303,
            None,
            &[0x1301],
            &[
                (EXT_SERVER_NAME, vec![0, 9, 0]),
                (EXT_SIGNATURE_ALGORITHMS, vec![0, 3, 4, 3, 8]),
            ],
        );
        let ch = ClientHello::parse(&body).unwrap();
        assert_eq!(ch.extensions.to_vec(), [0x0000, 0x000d]);
        assert_eq!(ch.server_name, None);
        assert!(ch.signature_algorithms.is_empty());
    }

    #[test]
    fn structural_errors() {
        let mut body = build_hello(0x0303, None, &[0x1301], &[]);
        body[2 + 32 + 1 + 32 + 1] = 3; // odd cipher-suite length
        assert!(ClientHello::parse(&body).is_err());
        let mut body = build_hello(0x0303, None, &[0x1301], &[(1, vec![1, 2])]);
        body.pop();
        assert!(matches!(
            ClientHello::parse(&body),
            Err(TlsError::Truncated { .. })
        ));
    }

    #[test]
    fn truncation_and_garbage_never_panic() {
        let body = sample();
        for end in 0..body.len() {
            let _ = ClientHello::parse(&body[..end]);
            let _ = ClientHello::parse_dtls(&body[..end]);
        }
        let mut seed = 7u32;
        let mut buf = body.clone();
        for _ in 0..5000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = (seed >> 8) as usize % buf.len();
            buf[i] = (seed >> 16) as u8;
            let _ = ClientHello::parse(&buf);
            let _ = ClientHello::parse_dtls(&buf);
            let len = (seed >> 4) as usize % 200;
            let garbage: Vec<u8> = (0..len).map(|k| (seed >> (k % 24)) as u8).collect();
            let _ = ClientHello::parse(&garbage);
        }
    }
}
