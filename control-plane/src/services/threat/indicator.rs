//! The one indicator model of the threat service, and the validation of every value a feed or an
//! analyst gives: a fingerprint by method (with `*` for sections it leaves open), a combination
//! of fingerprints that must all be seen on one stream, an IP address or CIDR, a domain.
//!
//! Values are stored canonical, so a feed's refresh recognises what it had and two feeds saying
//! the same thing say it with the same text: lowercase fingerprints; JA4H given with fewer than
//! its four sections padded with `*`; CIDRs with their host bits clear (a bare address is its
//! /32 or /128); combinations as `method=value` terms joined by `+`, in the specification's
//! method order.

use std::collections::BTreeMap;
use std::net::IpAddr;

pub use crate::store::threat::{Indicator, Kind, Labels, Verdict};

/// The methods an indicator may name: the JA4+ methods the agents report, and JA3/JA3S, which
/// feeds still publish (imported and exported, never matched: no agent computes them).
pub const METHODS: [&str; 13] = [
    "ja4", "ja4s", "ja4h", "ja4l", "ja4ls", "ja4x", "ja4ssh", "ja4t", "ja4ts", "ja4d", "ja4d6",
    "ja3", "ja3s",
];

fn hex_section(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn alnum(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// JA4 `a`: protocol, version, SNI d/i, cipher and extension counts, ALPN characters.
fn ja4_a(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && matches!(b[0], b't' | b'q' | b'd')
        && alnum(&s[1..3])
        && matches!(b[3], b'd' | b'i')
        && digits(&s[4..8])
        && b[8..].iter().all(|c| c.is_ascii_graphic() && *c != b'_')
}

/// JA4S `a`: protocol, version, extension count, ALPN characters.
fn ja4s_a(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 7
        && matches!(b[0], b't' | b'q' | b'd')
        && alnum(&s[1..3])
        && digits(&s[3..5])
        && b[5..].iter().all(|c| c.is_ascii_graphic() && *c != b'_')
}

/// JA4H `a`: method, version, cookie and referer flags, header count, language.
fn ja4h_a(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[..2].iter().all(u8::is_ascii_lowercase)
        && digits(&s[2..4])
        && matches!(b[4], b'c' | b'n')
        && matches!(b[5], b'r' | b'n')
        && digits(&s[6..8])
        && alnum(&s[8..])
}

fn tcp_section(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'-')
}

/// Why a value is not a fingerprint of its method.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(method: &str, value: &str, why: &str) -> Invalid {
    let shown: String = value.chars().take(80).collect();
    Invalid(format!("{method} {shown:?}: {why}"))
}

/// Checks `value` against the format of `method` and returns it canonical (lowercase, JA4H
/// padded to four sections), with the sections it pins. A section may be `*` (any), but not all
/// of them.
pub fn fingerprint(method: &str, value: &str) -> Result<(String, Vec<String>), Invalid> {
    let value = value.trim().to_ascii_lowercase();
    if value.is_empty() {
        return Err(invalid(method, &value, "empty"));
    }
    if value.len() > hais_shared::event::MAX_FINGERPRINT_LEN {
        return Err(invalid(method, &value, "too long"));
    }
    let mut parts: Vec<&str> = value.split('_').collect();
    if method == "ja4h" && (2..4).contains(&parts.len()) {
        parts.resize(4, "*");
    }
    let shape: &[fn(&str) -> bool] = match method {
        "ja4" => &[ja4_a, |s| hex_section(s, 12), |s| hex_section(s, 12)],
        "ja4s" => &[ja4s_a, |s| hex_section(s, 4), |s| hex_section(s, 12)],
        "ja4h" => &[
            ja4h_a,
            |s| hex_section(s, 12),
            |s| hex_section(s, 12),
            |s| hex_section(s, 12),
        ],
        "ja4x" => &[
            |s| hex_section(s, 12),
            |s| hex_section(s, 12),
            |s| hex_section(s, 12),
        ],
        "ja4l" | "ja4ls" => &[digits, digits, digits],
        "ja4ssh" => &[alnum, alnum, alnum],
        "ja4t" => &[digits, tcp_section, digits, digits],
        "ja4ts" if parts.len() == 5 => &[digits, tcp_section, digits, digits, tcp_section],
        "ja4ts" => &[digits, tcp_section, digits, digits],
        "ja4d" | "ja4d6" => {
            if !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.*".contains(&b))
            {
                return Err(invalid(method, &value, "unexpected character"));
            }
            let sections = section_names(parts.len(), &parts);
            return Ok((value, sections));
        }
        "ja3" | "ja3s" => &[|s| hex_section(s, 32)],
        _ => return Err(invalid(method, &value, "unknown method")),
    };
    if parts.len() != shape.len() {
        return Err(invalid(
            method,
            &value,
            &format!("{} sections, expected {}", parts.len(), shape.len()),
        ));
    }
    for (i, (p, ok)) in parts.iter().zip(shape).enumerate() {
        if *p != "*" && !ok(p) {
            return Err(invalid(
                method,
                &value,
                &format!("section {} is malformed", section_letter(i)),
            ));
        }
    }
    if parts.iter().all(|p| *p == "*") {
        return Err(invalid(method, &value, "every section is a wildcard"));
    }
    let sections = section_names(parts.len(), &parts);
    Ok((parts.join("_"), sections))
}

fn section_letter(i: usize) -> char {
    char::from(b'a' + i as u8)
}

fn section_names(n: usize, parts: &[&str]) -> Vec<String> {
    (0..n)
        .filter(|i| parts.get(*i).is_some_and(|p| *p != "*"))
        .map(|i| section_letter(i).to_string())
        .collect()
}

/// Checks every term of a combination and returns its canonical text: `method=value` joined by
/// `+` in [`METHODS`] order. At least two methods, each at most once.
pub fn combination(terms: &[(String, String)]) -> Result<String, Invalid> {
    let mut by_method = BTreeMap::new();
    for (m, v) in terms {
        let pos = METHODS
            .iter()
            .position(|x| x == m)
            .ok_or_else(|| Invalid(format!("unknown method {m:?}")))?;
        let (v, _) = fingerprint(m, v)?;
        if by_method.insert(pos, v).is_some() {
            return Err(Invalid(format!("method {m} given twice")));
        }
    }
    if by_method.len() < 2 {
        return Err(Invalid(
            "a combination needs fingerprints of at least two methods".into(),
        ));
    }
    Ok(by_method
        .into_iter()
        .map(|(pos, v)| format!("{}={v}", METHODS[pos]))
        .collect::<Vec<_>>()
        .join("+"))
}

/// The terms of a canonical combination.
pub fn combination_terms(value: &str) -> Vec<(&str, &str)> {
    value.split('+').filter_map(|t| t.split_once('=')).collect()
}

/// A network: its first address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => mask_v4(u32::from(a), self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => mask_v6(u128::from(a), self.prefix) == u128::from(n),
            _ => false,
        }
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

pub fn mask_v4(a: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        a & (u32::MAX << (32 - u32::from(prefix)))
    }
}

pub fn mask_v6(a: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        a & (u128::MAX << (128 - u32::from(prefix)))
    }
}

/// Parses an address or CIDR; host bits set is an error (a list that says `10.0.0.1/8` has a
/// typo, and guessing which half is meant would be wrong one time in two).
pub fn net(s: &str) -> Result<Net, Invalid> {
    let s = s.trim();
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| Invalid(format!("{s:?}: not an IP address or CIDR")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| Invalid(format!("{s:?}: prefix length must be 0 to {max}")))?,
        None => max,
    };
    let masked = match addr {
        IpAddr::V4(a) => IpAddr::V4(mask_v4(u32::from(a), prefix).into()),
        IpAddr::V6(a) => IpAddr::V6(mask_v6(u128::from(a), prefix).into()),
    };
    if masked != addr {
        return Err(Invalid(format!("{s:?}: host bits set after the prefix")));
    }
    Ok(Net { addr, prefix })
}

/// Checks a domain name (letters, digits, hyphens, dots; labels of 1 to 63) and lowercases it.
pub fn domain(s: &str) -> Result<String, Invalid> {
    let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(d)
    } else {
        Err(Invalid(format!("{s:?}: not a domain name")))
    }
}

/// Checks and canonicalises `kind`/`method`/`value` as one indicator would carry them: the
/// canonical value and its sections.
pub fn canonical(
    kind: Kind,
    method: Option<&str>,
    value: &str,
) -> Result<(String, Vec<String>), Invalid> {
    match kind {
        Kind::Fingerprint => {
            let m =
                method.ok_or_else(|| Invalid("a fingerprint indicator needs a method".into()))?;
            fingerprint(m, value)
        }
        Kind::Combination => {
            let terms: Vec<(String, String)> = combination_terms(value)
                .into_iter()
                .map(|(m, v)| (m.to_owned(), v.to_owned()))
                .collect();
            Ok((combination(&terms)?, Vec::new()))
        }
        Kind::Ip => Ok((net(value)?.to_string(), Vec::new())),
        Kind::Domain => Ok((domain(value)?, Vec::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_checked_per_method() {
        let (v, s) = fingerprint("ja4", "T13D1516H2_8daaf6152771_02713d6af862").unwrap();
        assert_eq!(v, "t13d1516h2_8daaf6152771_02713d6af862");
        assert_eq!(s, ["a", "b", "c"]);
        let (v, s) = fingerprint("ja4", "t13d1516h2_*_02713d6af862").unwrap();
        assert_eq!(v, "t13d1516h2_*_02713d6af862");
        assert_eq!(s, ["a", "c"]);
        assert!(fingerprint("ja4", "t13d1516h2_8daaf615277_02713d6af862").is_err());
        assert!(fingerprint("ja4", "*_*_*").is_err());
        // FoxIO's mapping gives some JA4H with two sections: a+b.
        let (v, s) = fingerprint("ja4h", "po10nn060000_cdb958d032b0").unwrap();
        assert_eq!(v, "po10nn060000_cdb958d032b0_*_*");
        assert_eq!(s, ["a", "b"]);
        // … and one whose third section is a character short.
        assert!(fingerprint("ja4h", "ge11cn060000_4e59edc1297a_4da5efaf0cb").is_err());
        assert!(fingerprint("ja4s", "t130200_1301_a56c5b993250").is_ok());
        assert!(fingerprint("ja4x", "000000000000_4f24da86fad6_bf0f0589fc03").is_ok());
        assert!(fingerprint("ja4t", "64240_2-1-3-1-1-4_1460_8").is_ok());
        assert!(fingerprint("ja4ts", "28960_2-4-8-1-3_1460_3_1-4-8-16").is_ok());
        assert!(fingerprint("ja3", "e7d705a3286e19ea42f587b344ee6865").is_ok());
        assert!(fingerprint("ja3", "e7d705a3286e19ea42f587b344ee686").is_err());
        assert!(fingerprint("ja5", "x").is_err());
    }

    #[test]
    fn combinations_are_canonical() {
        let c = combination(&[
            ("ja4s".into(), "t130200_1301_a56c5b993250".into()),
            ("ja4".into(), "t13d190900_9dc949149365_97f8aa674fd9".into()),
        ])
        .unwrap();
        assert_eq!(
            c,
            "ja4=t13d190900_9dc949149365_97f8aa674fd9+ja4s=t130200_1301_a56c5b993250"
        );
        assert_eq!(canonical(Kind::Combination, None, &c).unwrap().0, c);
        assert!(
            combination(&[("ja4".into(), "t13d190900_9dc949149365_97f8aa674fd9".into())]).is_err()
        );
    }

    #[test]
    fn networks_and_domains() {
        assert_eq!(net("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(net("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(net("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
        assert!(net("10.0.0.1/8").is_err());
        assert!(net("10.0.0.0/33").is_err());
        assert!(net("ten").is_err());
        let n = net("198.51.100.0/24").unwrap();
        assert!(n.contains("198.51.100.77".parse().unwrap()));
        assert!(!n.contains("198.51.101.1".parse().unwrap()));
        assert_eq!(domain("Evil.Example.").unwrap(), "evil.example");
        assert!(domain("localhost").is_err());
        assert!(domain("bad..example").is_err());
    }
}
