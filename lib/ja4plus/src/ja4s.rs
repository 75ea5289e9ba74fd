//! JA4S, the TLS server-response fingerprint, computed from a parsed ServerHello
//! (FoxIO License 1.1).
//!
//! `JA4S = a_b_c`: `a` = transport, version, extension count and ALPN characters; `b` = the
//! chosen cipher suite in hex; `c` = hash of the extension types in wire order. Nothing is
//! sorted (the server's order is part of its identity), so there is no `_o` variant.
//! GREASE is removed from the extensions as the written method says; servers do not normally
//! send it, and the FoxIO Rust tool keeps it.

use hais_dissect::tls::client_hello::is_grease;
use hais_dissect::tls::server_hello::ServerHello;
use hais_ja4::hash12;
use hais_ja4::ja4::{
    AlpnRule, Ja4Transport, alpn_chars, push_count, push_hex_list, push_hex_u16, version_code,
};

/// JA4S and its raw form, named as the FoxIO Rust tool names its output keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ja4s {
    /// The fingerprint, e.g. `t120400_c030_4e8089b08790`.
    pub ja4s: String,
    /// The pre-hash form, e.g. `t120400_c030_0005,0017,ff01,0000`.
    pub ja4s_r: String,
}

/// The version JA4S reports: the single supported_versions value when present (and not
/// GREASE), else the ServerHello legacy_version.
pub fn server_version(sh: &ServerHello) -> u16 {
    sh.supported_version
        .filter(|v| !is_grease(*v))
        .unwrap_or(sh.legacy_version)
}

/// Computes JA4S. `transport` is how the ServerHello travelled (TCP, QUIC or DTLS); `alpn`
/// picks the ALPN character rule, as for JA4.
pub fn ja4s(sh: &ServerHello, transport: Ja4Transport, alpn: AlpnRule) -> Ja4s {
    let exts = || {
        sh.extension_types
            .iter()
            .copied()
            .filter(|e| !is_grease(*e))
    };

    // a_b_ is shared by both outputs: 7 + 1 + 4 + 1 characters.
    let mut prefix = String::with_capacity(13);
    prefix.push(transport.as_char());
    prefix.push_str(version_code(server_version(sh)));
    push_count(&mut prefix, exts().count());
    let chars = alpn_chars(sh.alpn.as_deref().unwrap_or_default(), alpn);
    prefix.extend(chars.iter().map(|&b| char::from(b)));
    prefix.push('_');
    push_hex_u16(&mut prefix, sh.cipher_suite);
    prefix.push('_');

    let mut ja4s_r = String::with_capacity(prefix.len() + 5 * sh.extension_types.len());
    ja4s_r.push_str(&prefix);
    push_hex_list(&mut ja4s_r, exts());

    let mut ja4s = prefix;
    let ext_list = ja4s_r.get(ja4s.len()..).unwrap_or_default();
    ja4s.push_str(&hash12(ext_list));
    Ja4s { ja4s, ja4s_r }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(
        version: u16,
        cipher: u16,
        exts: &[u16],
        sv: Option<u16>,
        alpn: Option<&[u8]>,
    ) -> ServerHello {
        ServerHello {
            legacy_version: version,
            cipher_suite: cipher,
            extension_types: exts.to_vec(),
            supported_version: sv,
            alpn: alpn.map(<[u8]>::to_vec),
            ..ServerHello::default()
        }
    }

    #[test]
    fn spec_example() {
        let s = sh(
            0x0303,
            0xc030,
            &[0x0005, 0x0017, 0xff01, 0x0000],
            None,
            None,
        );
        let fp = ja4s(&s, Ja4Transport::Tcp, AlpnRule::Spec);
        assert_eq!(fp.ja4s, "t120400_c030_4e8089b08790");
        assert_eq!(fp.ja4s_r, "t120400_c030_0005,0017,ff01,0000");
    }

    /// `tls-alpn-h2.pcap`, raw string from the Python reference's output.
    #[test]
    fn alpn_h2_pcap() {
        let s = sh(
            0x0303,
            0xcca9,
            &[0x0000, 0xff01, 0x000b, 0x0010],
            None,
            Some(b"h2"),
        );
        let fp = ja4s(&s, Ja4Transport::Tcp, AlpnRule::Spec);
        assert_eq!(fp.ja4s, "t1204h2_cca9_1428ce7b4018");
        assert_eq!(fp.ja4s_r, "t1204h2_cca9_0000,ff01,000b,0010");
    }

    /// A HelloRetryRequest as the reference fingerprints it (`tls-handshake.pcapng`).
    #[test]
    fn hello_retry_request_and_grease() {
        let s = sh(0x0303, 0x1302, &[0x002b, 0x0033], Some(0x0304), None);
        let fp = ja4s(&s, Ja4Transport::Tcp, AlpnRule::Spec);
        assert_eq!(fp.ja4s, "t130200_1302_a56c5b993250");
        // GREASE in the extensions and in supported_versions is ignored.
        let g = sh(
            0x0303,
            0x1302,
            &[0x0a0a, 0x002b, 0x0033],
            Some(0x0304),
            None,
        );
        assert_eq!(ja4s(&g, Ja4Transport::Tcp, AlpnRule::Spec), fp);
        let g = sh(0x0303, 0x1302, &[0x002b, 0x0033], Some(0x1a1a), None);
        assert!(
            ja4s(&g, Ja4Transport::Tcp, AlpnRule::Spec)
                .ja4s
                .starts_with("t1202")
        );
    }

    #[test]
    fn empty_extensions_quic_and_dtls() {
        let s = sh(0x0301, 0x0005, &[], None, None);
        let fp = ja4s(&s, Ja4Transport::Quic, AlpnRule::Spec);
        assert_eq!(fp.ja4s, "q100000_0005_000000000000");
        assert_eq!(fp.ja4s_r, "q100000_0005_");
        // The DTLS 1.0 ServerHello of `dtls-udp.notest.cap`, computed from the spec.
        let s = sh(0xfeff, 0x0035, &[0xff01, 0x0023, 0x000f], None, None);
        let fp = ja4s(&s, Ja4Transport::Dtls, AlpnRule::Spec);
        assert_eq!(fp.ja4s, "dd10300_0035_cef8820c8f19");
    }

    #[test]
    fn count_cap_and_alpn_rules() {
        let exts: Vec<u16> = (1..=120).collect();
        let s = sh(0x0303, 0x1301, &exts, Some(0x0304), Some(b"a"));
        assert!(
            ja4s(&s, Ja4Transport::Tcp, AlpnRule::Spec)
                .ja4s
                .starts_with("t1399aa_1301_")
        );
        assert!(
            ja4s(&s, Ja4Transport::Tcp, AlpnRule::Reference)
                .ja4s
                .starts_with("t1399a0_1301_")
        );
    }
}
