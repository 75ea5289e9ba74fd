//! The services of the control plane, their names and seed ports.

use serde::{Deserialize, Deserializer};

/// Which service a process runs. `All` runs every service in one process (the embedded default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServiceName {
    All,
    Gateway,
    Ja4,
    Spire,
    Correlation,
    Identity,
    Policy,
    Alert,
    Threat,
}

impl ServiceName {
    /// Services that can run alone with `--service`, in seed-port order.
    pub const SPLIT: [ServiceName; 8] = [
        ServiceName::Gateway,
        ServiceName::Ja4,
        ServiceName::Spire,
        ServiceName::Correlation,
        ServiceName::Identity,
        ServiceName::Policy,
        ServiceName::Alert,
        ServiceName::Threat,
    ];

    /// Services that own an `/api/<name>/…` prefix (everything but the gateway).
    pub const BACKENDS: [ServiceName; 7] = [
        ServiceName::Ja4,
        ServiceName::Spire,
        ServiceName::Correlation,
        ServiceName::Identity,
        ServiceName::Policy,
        ServiceName::Alert,
        ServiceName::Threat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::All => "all",
            ServiceName::Gateway => "gateway",
            ServiceName::Ja4 => "ja4",
            ServiceName::Spire => "spire",
            ServiceName::Correlation => "correlation",
            ServiceName::Identity => "identity",
            ServiceName::Policy => "policy",
            ServiceName::Alert => "alert",
            ServiceName::Threat => "threat",
        }
    }

    pub fn parse(s: &str) -> Option<ServiceName> {
        std::iter::once(ServiceName::All)
            .chain(ServiceName::SPLIT)
            .find(|n| n.as_str() == s)
    }

    /// The port a service listens on unless told otherwise. `All` takes the gateway's port,
    /// because in that mode the one process is the gateway.
    pub fn seed_port(self) -> u16 {
        match self {
            ServiceName::All | ServiceName::Gateway => 3000,
            ServiceName::Ja4 => 3001,
            ServiceName::Spire => 3002,
            ServiceName::Correlation => 3003,
            ServiceName::Identity => 3004,
            ServiceName::Policy => 3005,
            ServiceName::Alert => 3006,
            ServiceName::Threat => 3007,
        }
    }

    /// Whether this process serves `other`'s routes itself.
    pub fn runs(self, other: ServiceName) -> bool {
        self == ServiceName::All || self == other
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
                ServiceName::SPLIT.map(|s| s.as_str()).join(", ")
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
