//! What a process runs (`--service NAME`): everything, the gateway, or one service of
//! [`crate::services::all`]. Names and seed ports come from that list; nothing here names a
//! service.

use serde::{Deserialize, Deserializer};

/// The gateway's port, and so the all-in-one process's (in that mode the one process is the
/// gateway). The services' seed ports are in [`crate::services::all`].
pub const GATEWAY_SEED_PORT: u16 = 3000;

/// Which service a process runs. `All` runs every service in one process (the embedded default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceName {
    All,
    Gateway,
    /// A service of [`crate::services::all`], by its name (only [`ServiceName::parse`] makes
    /// one, so the name is always one of the list's).
    Service(&'static str),
}

impl ServiceName {
    /// Services that can run alone with `--service`, in seed-port order: the gateway, then the
    /// list.
    pub fn split() -> Vec<ServiceName> {
        std::iter::once(ServiceName::Gateway)
            .chain(Self::backends())
            .collect()
    }

    /// Services that own an `/api/<name>/…` prefix (everything but the gateway), in list order.
    pub fn backends() -> Vec<ServiceName> {
        crate::services::all()
            .iter()
            .map(|s| ServiceName::Service(s.name()))
            .collect()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::All => "all",
            ServiceName::Gateway => "gateway",
            ServiceName::Service(name) => name,
        }
    }

    pub fn parse(s: &str) -> Option<ServiceName> {
        std::iter::once(ServiceName::All)
            .chain(Self::split())
            .find(|n| n.as_str() == s)
    }

    /// The port a service listens on unless told otherwise. `All` takes the gateway's port,
    /// because in that mode the one process is the gateway.
    pub fn seed_port(self) -> u16 {
        match self {
            ServiceName::All | ServiceName::Gateway => GATEWAY_SEED_PORT,
            ServiceName::Service(name) => crate::services::all()
                .iter()
                .find(|s| s.name() == name)
                .map_or(GATEWAY_SEED_PORT, |s| s.seed_port()),
        }
    }

    /// Whether this process serves `other`'s routes itself.
    pub fn runs(self, other: ServiceName) -> bool {
        self == ServiceName::All || self == other
    }

    /// Whether this process serves the routes of the service called `name`.
    pub fn runs_named(self, name: &str) -> bool {
        self == ServiceName::All || self.as_str() == name
    }

    /// The SPIFFE-style identity this service uses in service tokens.
    pub fn spiffe_id(self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/hais/control-plane/{}",
            self.as_str()
        )
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ServiceName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceName::parse(s).ok_or_else(|| {
            format!(
                "unknown service {s:?}; expected all, {}",
                ServiceName::split()
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_from_the_list_and_keep_their_seed_ports() {
        assert_eq!(ServiceName::parse("all"), Some(ServiceName::All));
        assert_eq!(ServiceName::parse("gateway"), Some(ServiceName::Gateway));
        let ja4 = ServiceName::parse("ja4").unwrap();
        assert_eq!((ja4.as_str(), ja4.seed_port()), ("ja4", 3001));
        assert_eq!(ServiceName::All.seed_port(), 3000);
        assert_eq!(ServiceName::parse("nope"), None);
        let err = "nope".parse::<ServiceName>().unwrap_err();
        assert!(
            err.ends_with(
                "expected all, gateway, ja4, spire, correlation, identity, policy, alert, threat"
            ),
            "{err}"
        );
        assert!(ServiceName::All.runs_named("threat"));
        assert!(!ja4.runs_named("spire"));
    }
}
