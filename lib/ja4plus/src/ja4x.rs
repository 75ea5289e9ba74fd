//! JA4X, the X.509 certificate fingerprint (FoxIO License 1.1).
//!
//! `JA4X = hash(issuer)_hash(subject)_hash(extensions)`, where each section lists *which*
//! attribute and extension OIDs appear, in DER order, never their values. Two certificates
//! minted by the same tool or CA template therefore share a JA4X even when every name
//! differs, which is what makes it useful for spotting malware infrastructure.
//!
//! Parsing uses `x509-parser`, the crate the FoxIO Rust tool uses: the same structural
//! acceptance rules and the same OID registry for the human-readable extra fields.

use hais_ja4::hash12;
use std::sync::LazyLock;
use x509_parser::certificate::X509Certificate;

use x509_parser::objects::oid2sn;
use x509_parser::oid_registry::OidRegistry;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// Short names for the `names` keys: the X.509 attribute set only (2.5.4.x, domainComponent,
/// the Microsoft jurisdiction attributes, ...). The answer key never shows PKCS#9
/// `emailAddress` keys although corpus certificates carry that attribute, so the wider
/// registry of `x509_parser::objects::oid_registry()` would print keys the reference does not.
static NAME_REGISTRY: LazyLock<OidRegistry<'static>> =
    LazyLock::new(|| OidRegistry::default().with_x509());

/// JA4X, its raw form, and the issuer/subject strings the FoxIO Rust tool prints beside it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ja4x {
    /// The fingerprint, three 12-character hashes joined by `_`.
    pub ja4x: String,
    /// The three raw OID lists joined by `_` (each comma-separated hex of OID content
    /// octets).
    pub ja4x_r: String,
    /// `(key, value)` pairs such as `("issuerCommonName", "R3")`: issuer attributes first,
    /// then subject ones, each key once (first position, last value), only for attributes
    /// whose OID has a short name in the X.509 attribute registry and whose value is a
    /// Printable, UTF8, IA5 or Numeric string.
    pub names: Vec<(String, String)>,
}

/// Why a certificate could not be fingerprinted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Ja4xError {
    /// The bytes are not a DER X.509 certificate that `x509-parser` accepts.
    #[error("not a parsable X.509 certificate: {reason}")]
    Parse {
        /// The parser's explanation.
        reason: String,
    },
}

/// Computes JA4X for one DER certificate. Bytes after the certificate are ignored.
pub fn ja4x(der: &[u8]) -> Result<Ja4x, Ja4xError> {
    let (_rest, cert) = X509Certificate::from_der(der).map_err(|e| Ja4xError::Parse {
        reason: e.to_string(),
    })?;
    let tbs = &cert.tbs_certificate;

    let mut ja4x_r = String::with_capacity(160);
    push_name_oids(&mut ja4x_r, &tbs.issuer);
    let issuer_end = ja4x_r.len();
    ja4x_r.push('_');
    push_name_oids(&mut ja4x_r, &tbs.subject);
    let subject_end = ja4x_r.len();
    ja4x_r.push('_');
    for (i, ext) in tbs.extensions().iter().enumerate() {
        if i > 0 {
            ja4x_r.push(',');
        }
        push_hex(&mut ja4x_r, ext.oid.as_bytes());
    }

    let section = |range: std::ops::Range<usize>| hash12(ja4x_r.get(range).unwrap_or_default());
    let mut ja4x = String::with_capacity(38);
    ja4x.push_str(&section(0..issuer_end));
    ja4x.push('_');
    ja4x.push_str(&section(issuer_end + 1..subject_end));
    ja4x.push('_');
    ja4x.push_str(&section(subject_end + 1..ja4x_r.len()));

    let mut names = Vec::new();
    collect_names(&mut names, "issuer", &tbs.issuer);
    collect_names(&mut names, "subject", &tbs.subject);
    Ok(Ja4x {
        ja4x,
        ja4x_r,
        names,
    })
}

/// Appends the attribute-type OIDs of a Name (multi-valued RDNs flattened, DER order).
fn push_name_oids(out: &mut String, name: &X509Name<'_>) {
    for (i, attr) in name.iter_attributes().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_hex(out, attr.attr_type().as_bytes());
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

/// Adds `prefix + ShortName` keys for string-valued attributes with a known short name.
fn collect_names(out: &mut Vec<(String, String)>, prefix: &str, name: &X509Name<'_>) {
    let registry = &*NAME_REGISTRY;
    for attr in name.iter_attributes() {
        let Ok(short) = oid2sn(attr.attr_type(), registry) else {
            continue;
        };
        let Ok(value) = attr.as_str() else {
            continue;
        };
        let mut key = String::with_capacity(prefix.len() + short.len());
        key.push_str(prefix);
        let mut chars = short.chars();
        if let Some(first) = chars.next() {
            key.extend(first.to_uppercase());
            key.push_str(chars.as_str());
        }
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value.to_string(),
            None => out.push((key, value.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leaf signed by a throw-away CA, made with `openssl req`/`openssl x509` for this test:
    /// issuer `C=HR, ST=Zagreb, O=HaIS Test CA, OU=Unit A, OU=Unit B, CN=HaIS Root`,
    /// subject `C=US, L=Redmond, O=Leaf Org, CN=leaf.example + emailAddress=a@leaf.example`
    /// (a multi-valued RDN), extensions keyUsage, extKeyUsage, subjectAltName,
    /// subjectKeyIdentifier, authorityKeyIdentifier.
    const LEAF_HEX: &[&str] = &[
        "30820243308201e8a00302010202021234300a06082a8648ce3d040302306b310b3009060355040613024852310f300d",
        "06035504080c065a616772656231153013060355040a0c0c486149532054657374204341310f300d060355040b0c0655",
        "6e69742041310f300d060355040b0c06556e697420423112301006035504030c094861495320526f6f74301e170d3236",
        "313132383131323434315a170d3336313132353131323434315a3066310b30090603550406130255533110300e060355",
        "04070c075265646d6f6e643111300f060355040a0c084c656166204f72673132301306035504030c0c6c6561662e6578",
        "616d706c65301b06092a864886f70d010901160e61406c6561662e6578616d706c653059301306072a8648ce3d020106",
        "082a8648ce3d0301070342000443101775da147715178d2f03c32a21a7c67bee2c58ed1ec6f28769751763c4fffe5f54",
        "a4d715814baa0da9d45aadf997c6672080db74e6a26647edc1ebd91d8ba38180307e300e0603551d0f0101ff04040302",
        "078030130603551d25040c300a06082b0601050507030130170603551d110410300e820c6c6561662e6578616d706c65",
        "301d0603551d0e041604147f5244bc89245fde6a81a18ab9a79a1dadfa8927301f0603551d230418301680146a20f518",
        "c7ca8bcd319ff78e90cdc19b6ca33d5f300a06082a8648ce3d0403020349003046022100df63e1689f75e81ca1600f47",
        "1489b584d641d6fb8dbb4ddc22565b028cbbdd19022100c2663e416d794e4cbe4a6922ca6dd33dd9621ec3bc48d0713e",
        "63f55782447c5a",
    ];

    fn leaf() -> Vec<u8> {
        hex::decode(LEAF_HEX.concat()).unwrap()
    }

    #[test]
    fn raw_oid_lists() {
        let fp = ja4x(&leaf()).unwrap();
        assert_eq!(
            fp.ja4x_r,
            "550406,550408,55040a,55040b,55040b,550403_\
             550406,550407,55040a,550403,2a864886f70d010901_\
             551d0f,551d25,551d11,551d0e,551d23"
        );
        let mut parts = fp.ja4x_r.split('_').map(hash12);
        let expect = format!(
            "{}_{}_{}",
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap()
        );
        assert_eq!(fp.ja4x, expect);
    }

    #[test]
    fn name_fields() {
        let fp = ja4x(&leaf()).unwrap();
        let names: Vec<(&str, &str)> = fp
            .names
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("issuerCountryName", "HR"),
                ("issuerStateOrProvinceName", "Zagreb"),
                ("issuerOrganizationName", "HaIS Test CA"),
                ("issuerOrganizationalUnit", "Unit B"),
                ("issuerCommonName", "HaIS Root"),
                ("subjectCountryName", "US"),
                ("subjectLocalityName", "Redmond"),
                ("subjectOrganizationName", "Leaf Org"),
                ("subjectCommonName", "leaf.example"),
                // emailAddress (PKCS#9) gets no key, as in the reference's output.
            ]
        );
    }

    /// The spec's worked section hashes.
    #[test]
    fn spec_section_hashes() {
        assert_eq!(hash12("550403,550406,550408,55040a"), "96a6439c8f5c");
        assert_eq!(hash12("551d0f,551d25,551d11"), "aae71e8db6d7");
    }

    #[test]
    fn errors_truncation_and_garbage() {
        let der = leaf();
        for end in 0..der.len() {
            assert!(ja4x(&der[..end]).is_err(), "prefix {end} accepted");
        }
        let mut trailing = der.clone();
        trailing.extend_from_slice(&[0, 1, 2]);
        assert_eq!(ja4x(&trailing).unwrap(), ja4x(&der).unwrap());
        let mut seed = 17u32;
        let mut buf = der.clone();
        for _ in 0..3000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = (seed >> 8) as usize % buf.len();
            buf[i] = (seed >> 16) as u8;
            let _ = ja4x(&buf);
        }
        assert!(ja4x(b"").is_err());
        assert!(ja4x(b"not a certificate").is_err());
    }
}
