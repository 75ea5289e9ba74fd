//! The Certificate handshake message (RFC 5246 §7.4.2, RFC 8446 §4.4.2): the chain of DER
//! certificates that JA4X fingerprints one by one.

use super::record::TlsError;
use crate::bytes::Reader;

/// Splits a Certificate message body into the DER certificates it carries, leaf first.
///
/// `tls13` selects the TLS 1.3 layout: a certificate_request_context vector in front, and
/// an extensions block after every certificate (skipped here). The returned slices borrow
/// from `body`, so a whole chain costs one small Vec. Zero-length entries are returned as
/// they are; a certificate parser will reject them.
pub fn parse_certificate_list(body: &[u8], tls13: bool) -> Result<Vec<&[u8]>, TlsError> {
    let trunc = |what| TlsError::Truncated { what };
    let mut r = Reader::new(body);
    if tls13 {
        r.vec8().ok_or(trunc("certificate request context"))?;
    }
    let list = r.vec24().ok_or(trunc("certificate list"))?;
    if !r.is_empty() {
        return Err(TlsError::Malformed {
            what: "Certificate message (trailing bytes)",
        });
    }
    let mut lr = Reader::new(list);
    let mut out = Vec::new();
    while !lr.is_empty() {
        out.push(lr.vec24().ok_or(trunc("certificate entry"))?);
        if tls13 {
            lr.vec16().ok_or(trunc("certificate entry extensions"))?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u24(n: usize) -> [u8; 3] {
        let b = (n as u32).to_be_bytes();
        [b[1], b[2], b[3]]
    }

    fn build(certs: &[&[u8]], tls13: bool) -> Vec<u8> {
        let mut list = Vec::new();
        for c in certs {
            list.extend_from_slice(&u24(c.len()));
            list.extend_from_slice(c);
            if tls13 {
                list.extend_from_slice(&[0, 4, 0, 5, 0, 0]); // one empty status_request ext
            }
        }
        let mut b = Vec::new();
        if tls13 {
            b.extend_from_slice(&[2, 0xaa, 0xbb]);
        }
        b.extend_from_slice(&u24(list.len()));
        b.extend(list);
        b
    }

    #[test]
    fn tls12_chain() {
        let body = build(&[b"leaf-der", b"intermediate"], false);
        let certs = parse_certificate_list(&body, false).unwrap();
        assert_eq!(certs, vec![&b"leaf-der"[..], &b"intermediate"[..]]);
    }

    #[test]
    fn tls13_chain() {
        let body = build(&[b"leaf", b"ca"], true);
        let certs = parse_certificate_list(&body, true).unwrap();
        assert_eq!(certs, vec![&b"leaf"[..], &b"ca"[..]]);
        // Read with the wrong layout it must not yield the same chain.
        assert_ne!(parse_certificate_list(&body, false).ok(), Some(certs));
    }

    #[test]
    fn empty_list() {
        assert!(
            parse_certificate_list(&[0, 0, 0], false)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_certificate_list(&[0, 0, 0, 0], true)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn truncation_and_garbage_never_panic() {
        for tls13 in [false, true] {
            let body = build(&[b"0123456789", b"abc"], tls13);
            for end in 0..body.len() {
                assert!(parse_certificate_list(&body[..end], tls13).is_err());
            }
            let mut seed = 11u32;
            let mut buf = body.clone();
            for _ in 0..3000 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = (seed >> 8) as usize % buf.len();
                buf[i] = (seed >> 16) as u8;
                let _ = parse_certificate_list(&buf, tls13);
            }
        }
    }
}
