//! SPIFFE IDs: the names HaIS gives to agents, to the control plane and to workloads.
//!
//! Parsing follows the SPIFFE ID standard strictly (lowercase trust domain of `[a-z0-9.-_]`, path
//! segments of `[A-Za-z0-9.-_]`, no empty, `.` or `..` segments, no query, fragment, port or user
//! info, at most 2048 bytes) because an ID is compared byte for byte when authorizing a peer: two
//! spellings of one identity must not both be accepted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest SPIFFE ID accepted, in bytes (the standard's limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name accepted, in bytes (the standard's limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "hais.local";

/// A validated SPIFFE ID, e.g. `spiffe://hais.local/hais/agent/4f1c…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SpiffeId {
    /// The whole ID as text; `td_end` splits it into trust domain and path.
    text: String,
    td_end: usize,
}

/// Why a string is not a SPIFFE ID. The message says which rule was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    #[error("a SPIFFE ID must start with \"spiffe://\"")]
    Scheme,
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    #[error("the trust domain may only hold lowercase letters, digits, '.', '-' and '_'")]
    TrustDomainChar,
    #[error("the trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("the path has an empty segment (\"//\" or a trailing '/')")]
    EmptySegment,
    #[error("the path has a \".\" or \"..\" segment")]
    DotSegment,
    #[error("path segments may only hold letters, digits, '.', '-' and '_'")]
    PathChar,
    #[error("the ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
}

impl SpiffeId {
    /// Parses and validates `s`.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix("spiffe://").ok_or(SpiffeIdError::Scheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        if !path.is_empty() {
            validate_path(path)?;
        }
        Ok(SpiffeId {
            text: s.to_owned(),
            td_end: "spiffe://".len() + td.len(),
        })
    }

    /// Builds `spiffe://<trust_domain><path>`; `path` is either empty or starts with `/`.
    pub fn new(trust_domain: &str, path: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("spiffe://{trust_domain}{path}"))
    }

    /// The ID an agent enrolled with the built-in CA carries.
    pub fn agent(trust_domain: &str, agent_id: &str) -> Result<Self, SpiffeIdError> {
        Self::new(trust_domain, &format!("{AGENT_PATH_PREFIX}{agent_id}"))
    }

    /// The ID the control plane's uplink presents to agents.
    pub fn control_plane(trust_domain: &str) -> Result<Self, SpiffeIdError> {
        Self::new(trust_domain, CONTROL_PLANE_PATH)
    }

    /// The trust domain, e.g. `hais.local`.
    pub fn trust_domain(&self) -> &str {
        &self.text["spiffe://".len()..self.td_end]
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.text[self.td_end..]
    }

    /// The agent id when this is an agent's ID (`/hais/agent/<id>`), else `None`.
    pub fn agent_id(&self) -> Option<&str> {
        let id = self.path().strip_prefix(AGENT_PATH_PREFIX)?;
        (!id.contains('/')).then_some(id)
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Path prefix of agent IDs: `spiffe://<td>/hais/agent/<agent-id>`.
pub const AGENT_PATH_PREFIX: &str = "/hais/agent/";
/// Path of the control plane's ID: `spiffe://<td>/hais/control-plane`.
pub const CONTROL_PLANE_PATH: &str = "/hais/control-plane";

/// Checks a trust domain name on its own (configuration values are checked with this).
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(SpiffeIdError::TrustDomainChar);
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    // `path` starts with '/', so the first split item is the empty string before it.
    for seg in path.split('/').skip(1) {
        match seg {
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(SpiffeIdError::PathChar);
        }
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_standard_ids_and_splits_them() {
        let id = SpiffeId::parse("spiffe://prod.example/ns/payments/sa/api").unwrap();
        assert_eq!(id.trust_domain(), "prod.example");
        assert_eq!(id.path(), "/ns/payments/sa/api");
        let td_only = SpiffeId::parse("spiffe://hais.local").unwrap();
        assert_eq!(td_only.path(), "");
        assert_eq!(td_only.agent_id(), None);
    }

    #[test]
    fn agent_and_control_plane_ids() {
        let a = SpiffeId::agent("hais.local", "0192f0c1-aa").unwrap();
        assert_eq!(a.as_str(), "spiffe://hais.local/hais/agent/0192f0c1-aa");
        assert_eq!(a.agent_id(), Some("0192f0c1-aa"));
        let cp = SpiffeId::control_plane("hais.local").unwrap();
        assert_eq!(cp.agent_id(), None);
        let nested = SpiffeId::parse("spiffe://t/hais/agent/a/b").unwrap();
        assert_eq!(nested.agent_id(), None, "agent ids are one segment");
    }

    #[test]
    fn refuses_every_malformed_shape() {
        use SpiffeIdError::*;
        let cases = [
            ("http://x/y", Scheme),
            ("spiffe:///a", EmptyTrustDomain),
            ("spiffe://Upper/a", TrustDomainChar),
            ("spiffe://a:8080/a", TrustDomainChar),
            ("spiffe://user@a/a", TrustDomainChar),
            ("spiffe://a/b//c", EmptySegment),
            ("spiffe://a/b/", EmptySegment),
            ("spiffe://a/./b", DotSegment),
            ("spiffe://a/../b", DotSegment),
            ("spiffe://a/b?c", PathChar),
            ("spiffe://a/b#c", PathChar),
            ("spiffe://a/b%20c", PathChar),
        ];
        for (s, want) in cases {
            assert_eq!(SpiffeId::parse(s), Err(want), "{s}");
        }
        let long = format!("spiffe://a/{}", "x".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(SpiffeId::parse(&long), Err(TooLong));
    }

    #[test]
    fn serde_validates() {
        let ok: SpiffeId = serde_json::from_str("\"spiffe://a/b\"").unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"spiffe://a/b\"");
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://a/b/\"").is_err());
    }
}
