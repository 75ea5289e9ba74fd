//! The ClientHello message (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2, DTLS: RFC 6347 §4.2.1) and
//! the handful of extensions the client fingerprints read.
//!
//! The parser keeps what JA4 needs, in wire order and with GREASE values still present:
//! whether and how to filter is the fingerprint's decision, not the parser's. A malformed
//! *extension body* does not fail the whole hello (its type is still recorded and the field
//! it would fill stays empty), because a fingerprint of a slightly broken client is more
//! useful than none; a malformed hello *structure* is an error.

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

/// The ClientHello fields the fingerprints use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// `legacy_version` (`client_version` before TLS 1.3). JA4 falls back to it when there is
    /// no usable supported_versions extension.
    pub legacy_version: u16,
    /// Client random.
    pub random: [u8; 32],
    /// Legacy session id (up to 32 bytes per the RFCs; up to 255 accepted).
    pub session_id: Vec<u8>,
    /// DTLS cookie (empty for TLS and for a first DTLS hello).
    pub cookie: Vec<u8>,
    /// Cipher suites, wire order, GREASE included.
    pub cipher_suites: Vec<u16>,
    /// Extension types, wire order, GREASE and duplicates included.
    pub extension_types: Vec<u16>,
    /// First `host_name` entry of server_name, lossily decoded as UTF-8.
    pub server_name: Option<String>,
    /// ALPN protocol names, client order.
    pub alpn: Vec<Vec<u8>>,
    /// Contents of the first signature_algorithms (0x000d) extension, wire order. The
    /// lists in signature_algorithms_cert / delegated_credentials are deliberately not here.
    pub signature_algorithms: Vec<u16>,
    /// Contents of supported_versions, wire order, GREASE included.
    pub supported_versions: Vec<u16>,
    /// Whether quic_transport_parameters (0x0039) is present.
    pub has_quic_transport_parameters: bool,
}

impl ClientHello {
    /// Parses a TLS ClientHello body (the bytes after the 4-byte handshake header).
    pub fn parse(body: &[u8]) -> Result<ClientHello, TlsError> {
        parse(body, false)
    }

    /// Parses a DTLS ClientHello body (reassembled, after the 12-byte DTLS handshake
    /// header), which carries a cookie after the session id.
    pub fn parse_dtls(body: &[u8]) -> Result<ClientHello, TlsError> {
        parse(body, true)
    }
}

const fn trunc(what: &'static str) -> TlsError {
    TlsError::Truncated { what }
}

fn parse(body: &[u8], dtls: bool) -> Result<ClientHello, TlsError> {
    let mut r = Reader::new(body);
    let legacy_version = r.u16().ok_or(trunc("ClientHello version"))?;
    let mut random = [0u8; 32];
    random.copy_from_slice(r.take(32).ok_or(trunc("ClientHello random"))?);
    let session_id = r.vec8().ok_or(trunc("ClientHello session id"))?.to_vec();
    let cookie = if dtls {
        r.vec8().ok_or(trunc("ClientHello cookie"))?.to_vec()
    } else {
        Vec::new()
    };
    let suites = r.vec16().ok_or(trunc("ClientHello cipher suites"))?;
    let cipher_suites = u16_list(suites).ok_or(TlsError::Malformed {
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
    ch.extension_types.reserve(exts.len() / 4);
    let mut seen_sig_algs = false;
    while !er.is_empty() {
        let ty = er.u16().ok_or(trunc("ClientHello extension"))?;
        let data = er.vec16().ok_or(trunc("ClientHello extension"))?;
        ch.extension_types.push(ty);
        match ty {
            EXT_SERVER_NAME if ch.server_name.is_none() => ch.server_name = parse_sni(data),
            EXT_ALPN if ch.alpn.is_empty() => ch.alpn = parse_alpn_list(data).unwrap_or_default(),
            EXT_SIGNATURE_ALGORITHMS if !seen_sig_algs => {
                seen_sig_algs = true;
                ch.signature_algorithms = Reader::new(data)
                    .vec16()
                    .and_then(u16_list)
                    .unwrap_or_default();
            }
            EXT_SUPPORTED_VERSIONS if ch.supported_versions.is_empty() => {
                ch.supported_versions = Reader::new(data)
                    .vec8()
                    .and_then(u16_list)
                    .unwrap_or_default();
            }
            EXT_QUIC_TRANSPORT_PARAMETERS => ch.has_quic_transport_parameters = true,
            _ => {}
        }
    }
    Ok(ch)
}

/// Big-endian u16 list; `None` on odd length.
pub(crate) fn u16_list(b: &[u8]) -> Option<Vec<u16>> {
    if !b.len().is_multiple_of(2) {
        return None;
    }
    Some(
        b.chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
    )
}

/// First host_name (type 0) from a ServerNameList.
fn parse_sni(data: &[u8]) -> Option<String> {
    let list = Reader::new(data).vec16()?;
    let mut r = Reader::new(list);
    while !r.is_empty() {
        let name_type = r.u8()?;
        let name = r.vec16()?;
        if name_type == 0 {
            return Some(String::from_utf8_lossy(name).into_owned());
        }
    }
    None
}

/// ProtocolNameList: u16 length, then u8-length names. Shared with the ServerHello parser.
pub(crate) fn parse_alpn_list(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let list = Reader::new(data).vec16()?;
    let mut r = Reader::new(list);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(r.vec8()?.to_vec());
    }
    Some(out)
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
        let ch = ClientHello::parse(&sample()).unwrap();
        assert_eq!(ch.legacy_version, 0x0303);
        assert_eq!(ch.random, [0x11; 32]);
        assert_eq!(ch.session_id, vec![0x22; 32]);
        assert!(ch.cookie.is_empty());
        assert_eq!(ch.cipher_suites, [0x2a2a, 0x1301, 0x1302, 0xc02b]);
        assert_eq!(
            ch.extension_types,
            [
                0xdada, 0x0000, 0x0010, 0x000d, 0x0032, 0x002b, 0x0039, 0x0a0a
            ]
        );
        assert_eq!(ch.server_name.as_deref(), Some("example.com"));
        assert_eq!(ch.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(ch.signature_algorithms, [0x0403, 0x0804]);
        assert_eq!(ch.supported_versions, [0x7a7a, 0x0304, 0x0303]);
        assert!(ch.has_quic_transport_parameters);
    }

    #[test]
    fn dtls_cookie() {
        let body = build_hello(0xfefd, Some(&[5, 6, 7]), &[0xc02b], &[]);
        let ch = ClientHello::parse_dtls(&body).unwrap();
        assert_eq!(ch.legacy_version, 0xfefd);
        assert_eq!(ch.cookie, [5, 6, 7]);
        assert_eq!(ch.cipher_suites, [0xc02b]);
        // Read as TLS, the cookie shifts everything: must not be silently accepted as the
        // same hello.
        assert_ne!(ClientHello::parse(&body).ok(), Some(ch));
    }

    #[test]
    fn no_extensions_block() {
        let mut body = build_hello(0x0301, None, &[0x0035, 0x002f], &[]);
        body.truncate(body.len() - 2); // drop the (empty) extensions length
        let ch = ClientHello::parse(&body).unwrap();
        assert_eq!(ch.cipher_suites, [0x0035, 0x002f]);
        assert!(ch.extension_types.is_empty());
        assert_eq!(ch.server_name, None);
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
        assert_eq!(ch.extension_types, [0x0000, 0x000d]);
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
