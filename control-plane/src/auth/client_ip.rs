//! The address a request comes from, for login throttling.
//!
//! It is the TCP peer, unless that peer is a configured trusted reverse proxy: then the
//! `X-Forwarded-For` chain is read from the right (the hop nearest to us), skipping trusted
//! proxies, and the first other address is the client. Addresses a client wrote into the header
//! itself sit left of what our proxies appended, so they are never reached while a trusted hop
//! vouches for the next one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use crate::state::AppState;

/// An address or network (`10.0.0.0/8`, `2001:db8::/32`, `192.0.2.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| format!("{s:?}: not an address"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0 to {max}"))?,
        };
        Ok(Cidr { net, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_ipv4() != self.net.is_ipv4() {
            return false;
        }
        // Both families as 128 bits, IPv4 in the top 32, so a prefix masks from the top.
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
                IpAddr::V6(v) => u128::from(v),
            }
        };
        let mask = match self.prefix {
            0 => 0,
            p => !0u128 << (128 - u32::from(p)),
        };
        bits(ip) & mask == bits(self.net) & mask
    }
}

/// Picks the client address from the peer and the `X-Forwarded-For` values.
pub fn client_ip(peer: IpAddr, forwarded_for: &[&str], trusted: &[Cidr]) -> IpAddr {
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for
        .iter()
        .rev()
        .flat_map(|v| v.rsplit(','))
        .map(str::trim)
    {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.iter().any(|c| c.contains(ip)) {
                    break;
                }
            }
            // Garbage in the chain: stop at the last address vouched for.
            Err(_) => break,
        }
    }
    client
}

/// The client address of a request (see the module documentation). Requests that did not come
/// through a socket (tests driving the router) are from `0.0.0.0`.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        let xff: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Ok(ClientIp(client_ip(peer, &xff, &state.trusted_proxies)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        assert!(c("10.0.0.0/8").contains(ip("10.200.1.2")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("192.0.2.1").contains(ip("192.0.2.1")));
        assert!(!c("192.0.2.1").contains(ip("192.0.2.2")));
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.1")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(c("10.0.0.0/8").contains(ip("::ffff:10.1.1.1")));
        assert!(!c("10.0.0.0/8").contains(ip("2001:db8::1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_for_is_read_only_through_trusted_proxies() {
        let trusted = [c("10.0.0.0/8")];
        // Not through a proxy: the header is the client's own words, ignored.
        assert_eq!(
            client_ip(ip("203.0.113.5"), &["198.51.100.1"], &trusted),
            ip("203.0.113.5")
        );
        // Through two trusted hops: the first untrusted address from the right.
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                &["1.2.3.4, 198.51.100.9, 10.0.0.7"],
                &trusted
            ),
            ip("198.51.100.9")
        );
        // Several header lines count as one list.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["1.2.3.4", "198.51.100.9"], &trusted),
            ip("198.51.100.9")
        );
        // Garbage stops the walk at the last vouched-for hop.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["198.51.100.9, junk"], &trusted),
            ip("10.0.0.1")
        );
    }
}
