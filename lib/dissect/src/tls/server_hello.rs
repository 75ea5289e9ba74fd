//! The ServerHello message (RFC 8446 §4.1.3, RFC 5246 §7.4.1.3), which JA4S fingerprints,
//! including the HelloRetryRequest that TLS 1.3 disguises as a ServerHello.

use super::client_hello::{AlpnList, EXT_ALPN, EXT_SUPPORTED_VERSIONS};
use super::record::TlsError;
use crate::bytes::Reader;

/// The `random` value that marks a ServerHello as a HelloRetryRequest: SHA-256 of
/// "HelloRetryRequest" (RFC 8446 §4.1.3).
pub const HELLO_RETRY_REQUEST_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];

/// The ServerHello fields JA4S uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerHello {
    /// `legacy_version` (0x0303 for TLS 1.3; the real version is in supported_versions).
    pub legacy_version: u16,
    /// Server random (the HRR constant for a HelloRetryRequest).
    pub random: [u8; 32],
    /// Echoed legacy session id.
    pub session_id: Vec<u8>,
    /// The selected cipher suite.
    pub cipher_suite: u16,
    /// The selected compression method (always 0 in practice).
    pub compression_method: u8,
    /// Extension types, wire order, GREASE included.
    pub extension_types: Vec<u16>,
    /// The version selected in supported_versions (a single u16 in a ServerHello).
    pub supported_version: Option<u16>,
    /// The protocol selected by ALPN (the first and only name in the server's list).
    pub alpn: Option<Vec<u8>>,
}

impl ServerHello {
    /// Parses a TLS ServerHello body (after the 4-byte handshake header).
    pub fn parse(body: &[u8]) -> Result<ServerHello, TlsError> {
        let mut r = Reader::new(body);
        let trunc = |what| TlsError::Truncated { what };
        let legacy_version = r.u16().ok_or(trunc("ServerHello version"))?;
        let mut random = [0u8; 32];
        random.copy_from_slice(r.take(32).ok_or(trunc("ServerHello random"))?);
        let session_id = r.vec8().ok_or(trunc("ServerHello session id"))?.to_vec();
        let cipher_suite = r.u16().ok_or(trunc("ServerHello cipher suite"))?;
        let compression_method = r.u8().ok_or(trunc("ServerHello compression"))?;
        let mut sh = ServerHello {
            legacy_version,
            random,
            session_id,
            cipher_suite,
            compression_method,
            ..ServerHello::default()
        };
        if r.is_empty() {
            return Ok(sh);
        }
        let exts = r.vec16().ok_or(trunc("ServerHello extensions"))?;
        let mut er = Reader::new(exts);
        while !er.is_empty() {
            let ty = er.u16().ok_or(trunc("ServerHello extension"))?;
            let data = er.vec16().ok_or(trunc("ServerHello extension"))?;
            sh.extension_types.push(ty);
            match ty {
                EXT_SUPPORTED_VERSIONS if sh.supported_version.is_none() => {
                    let mut d = Reader::new(data);
                    sh.supported_version = d.u16().filter(|_| d.is_empty());
                }
                EXT_ALPN if sh.alpn.is_none() => {
                    sh.alpn = AlpnList::parse(data)
                        .and_then(|l| l.first())
                        .map(<[u8]>::to_vec);
                }
                _ => {}
            }
        }
        Ok(sh)
    }

    /// Parses a DTLS ServerHello body. DTLS 1.0, 1.2 and 1.3 ServerHellos have exactly the
    /// TLS layout (the cookie lives in HelloVerifyRequest), so this is [`Self::parse`]; it
    /// exists so that DTLS call sites say what they mean.
    pub fn parse_dtls(body: &[u8]) -> Result<ServerHello, TlsError> {
        Self::parse(body)
    }

    /// True when this "ServerHello" is a TLS 1.3 HelloRetryRequest. JA4S fingerprints it
    /// all the same (the reference keeps the first ServerHello-typed message), but callers
    /// may want to label it.
    pub fn is_hello_retry_request(&self) -> bool {
        self.random == HELLO_RETRY_REQUEST_RANDOM
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(random: [u8; 32], suite: u16, exts: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
        let mut b = vec![3, 3];
        b.extend_from_slice(&random);
        b.push(4);
        b.extend_from_slice(&[9; 4]);
        b.extend_from_slice(&suite.to_be_bytes());
        b.push(0);
        if let Some(exts) = exts {
            let mut e = Vec::new();
            for (t, d) in exts {
                e.extend_from_slice(&t.to_be_bytes());
                e.extend_from_slice(&(d.len() as u16).to_be_bytes());
                e.extend_from_slice(d);
            }
            b.extend_from_slice(&(e.len() as u16).to_be_bytes());
            b.extend(e);
        }
        b
    }

    #[test]
    fn tls13_server_hello() {
        let body = build(
            [7; 32],
            0x1301,
            Some(&[
                (0x0033, vec![0, 0x1d, 0, 1, 5]),
                (0x002b, vec![3, 4]),
                (0x0010, vec![0, 3, 2, b'h', b'2']),
            ]),
        );
        let sh = ServerHello::parse(&body).unwrap();
        assert_eq!(sh.legacy_version, 0x0303);
        assert_eq!(sh.session_id, [9; 4]);
        assert_eq!(sh.cipher_suite, 0x1301);
        assert_eq!(sh.extension_types, [0x0033, 0x002b, 0x0010]);
        assert_eq!(sh.supported_version, Some(0x0304));
        assert_eq!(sh.alpn.as_deref(), Some(&b"h2"[..]));
        assert!(!sh.is_hello_retry_request());
    }

    #[test]
    fn hello_retry_request() {
        let body = build(
            HELLO_RETRY_REQUEST_RANDOM,
            0x1302,
            Some(&[(0x002b, vec![3, 4]), (0x0033, vec![0, 0x1d])]),
        );
        let sh = ServerHello::parse(&body).unwrap();
        assert!(sh.is_hello_retry_request());
        assert_eq!(sh.extension_types, [0x002b, 0x0033]);
    }

    #[test]
    fn no_extensions_and_bad_supported_versions() {
        let sh = ServerHello::parse(&build([1; 32], 0x0035, None)).unwrap();
        assert!(sh.extension_types.is_empty());
        assert_eq!(sh.supported_version, None);
        let sh =
            ServerHello::parse_dtls(&build([1; 32], 0x0035, Some(&[(0x002b, vec![3])]))).unwrap();
        assert_eq!(sh.supported_version, None);
        assert_eq!(sh.extension_types, [0x002b]);
    }

    #[test]
    fn truncation_and_garbage_never_panic() {
        let body = build(
            [3; 32],
            0xc030,
            Some(&[(0x0010, vec![0, 3, 2, b'h', b'2']), (0xff01, vec![0])]),
        );
        for end in 0..body.len() {
            // Only the prefix that stops right before the extensions block is a valid hello.
            assert_eq!(
                ServerHello::parse(&body[..end]).is_ok(),
                end == 42,
                "prefix {end}"
            );
        }
        let mut seed = 3u32;
        let mut buf = body.clone();
        for _ in 0..5000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = (seed >> 8) as usize % buf.len();
            buf[i] = (seed >> 16) as u8;
            let _ = ServerHello::parse(&buf);
        }
    }
}
