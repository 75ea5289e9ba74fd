//! Workload selectors, SPIRE style: `type:key:value` facts about a workload (`unix:uid:1000`,
//! `k8s:ns:payments`) that registration entries match on to give it a SPIFFE ID.
//!
//! The agent observes facts; the control plane turns them into selectors ([`from_facts`]) and
//! matches entries against them, so a new entry applies at once without touching any agent.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest selector value accepted, in bytes (an executable path is the longest kind).
pub const MAX_SELECTOR_VALUE: usize = 1024;

/// The selector kinds HaIS understands. The text form is `<type>:<key>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `unix:uid:<number>` — the process's real uid.
    UnixUid,
    /// `unix:user:<name>` — the user name of that uid.
    UnixUser,
    /// `unix:path:<absolute path>` — the executable.
    UnixPath,
    /// `unix:sha256:<hex>` — SHA-256 of the executable file.
    UnixSha256,
    /// `docker:label:<key>:<value>` — a container label.
    DockerLabel,
    /// `docker:id:<container id>`.
    DockerId,
    /// `k8s:ns:<namespace>`.
    K8sNs,
    /// `k8s:sa:<service account>`.
    K8sSa,
    /// `k8s:pod-uid:<uid>`.
    K8sPodUid,
    /// `hais:agent:<agent id>` — the agent that saw the flow (scopes an entry to one node).
    HaisAgent,
    /// `hais:host:<host name>` — the host the agent runs on.
    HaisHost,
    /// `docker:image_id:<image reference>` — the image a Docker container was started from.
    DockerImageId,
    /// `k8s:pod-name:<name>`.
    K8sPodName,
    /// `hais:workload:<workload key>` — the discovered workload ([`crate::workload`]); an
    /// entry made from the inventory names a workload with this one selector.
    HaisWorkload,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::UnixUid,
        Kind::UnixUser,
        Kind::UnixPath,
        Kind::UnixSha256,
        Kind::DockerLabel,
        Kind::DockerId,
        Kind::K8sNs,
        Kind::K8sSa,
        Kind::K8sPodUid,
        Kind::HaisAgent,
        Kind::HaisHost,
        Kind::DockerImageId,
        Kind::K8sPodName,
        Kind::HaisWorkload,
    ];

    /// `(type, key)` as written in selectors.
    pub fn parts(self) -> (&'static str, &'static str) {
        match self {
            Kind::UnixUid => ("unix", "uid"),
            Kind::UnixUser => ("unix", "user"),
            Kind::UnixPath => ("unix", "path"),
            Kind::UnixSha256 => ("unix", "sha256"),
            Kind::DockerLabel => ("docker", "label"),
            Kind::DockerId => ("docker", "id"),
            Kind::K8sNs => ("k8s", "ns"),
            Kind::K8sSa => ("k8s", "sa"),
            Kind::K8sPodUid => ("k8s", "pod-uid"),
            Kind::HaisAgent => ("hais", "agent"),
            Kind::HaisHost => ("hais", "host"),
            Kind::DockerImageId => ("docker", "image_id"),
            Kind::K8sPodName => ("k8s", "pod-name"),
            Kind::HaisWorkload => ("hais", "workload"),
        }
    }

    fn from_parts(ty: &str, key: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.parts() == (ty, key))
    }
}

/// A validated selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Selector {
    pub kind: Kind,
    pub value: String,
}

/// Why a selector was refused; the message names the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    #[error("a selector is written type:key:value (e.g. unix:uid:1000)")]
    Shape,
    #[error("unknown selector {0}:{1} (known: {known})", known = known_kinds())]
    UnknownKind(String, String),
    #[error("{kind} needs a value")]
    Empty { kind: String },
    #[error("{kind} value is longer than {MAX_SELECTOR_VALUE} bytes")]
    TooLong { kind: String },
    #[error("{kind} value {value:?} is invalid: {why}")]
    Invalid {
        kind: String,
        value: String,
        why: &'static str,
    },
}

fn known_kinds() -> String {
    Kind::ALL
        .iter()
        .map(|k| {
            let (t, key) = k.parts();
            format!("{t}:{key}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Whether `s` is a UUID in its canonical 8-4-4-4-12 hex form (Kubernetes pod UIDs).
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

impl Selector {
    /// Builds and validates a selector of `kind`.
    pub fn new(kind: Kind, value: impl Into<String>) -> Result<Selector, SelectorError> {
        let value = value.into();
        let name = || {
            let (t, k) = kind.parts();
            format!("{t}:{k}")
        };
        if value.is_empty() {
            return Err(SelectorError::Empty { kind: name() });
        }
        if value.len() > MAX_SELECTOR_VALUE {
            return Err(SelectorError::TooLong { kind: name() });
        }
        if value.chars().any(char::is_control) {
            return Err(SelectorError::Invalid {
                kind: name(),
                value,
                why: "control characters are not allowed",
            });
        }
        let why = match kind {
            Kind::UnixUid if value.parse::<u32>().is_err() => Some("not a number"),
            Kind::UnixUser if value.contains(':') || value.contains(char::is_whitespace) => {
                Some("a user name has no ':' or spaces")
            }
            Kind::UnixPath if !value.starts_with('/') => Some("must be an absolute path"),
            Kind::UnixSha256
                if value.len() != 64
                    || !value
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Some("must be 64 lowercase hex characters")
            }
            Kind::DockerLabel if value.split_once(':').is_none_or(|(k, _)| k.is_empty()) => {
                Some("must be <label key>:<label value>")
            }
            Kind::DockerId
                if !(value.len() == 64
                    && value
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))) =>
            {
                Some("must be a 64-character container id")
            }
            Kind::K8sNs if !is_dns_label(&value) => Some("must be a DNS label (RFC 1123)"),
            Kind::K8sSa if !is_dns_subdomain(&value) => Some("must be a DNS subdomain (RFC 1123)"),
            Kind::K8sPodUid if !is_uuid(&value) => Some("must be a UUID"),
            Kind::K8sPodName if !is_dns_subdomain(&value) => {
                Some("must be a DNS subdomain (RFC 1123)")
            }
            Kind::HaisWorkload if crate::workload::WorkloadKind::of_key(&value).is_none() => {
                Some("must be a workload key (k8s:…, container:… or host:…)")
            }
            Kind::HaisAgent | Kind::HaisHost
                if value.contains(char::is_whitespace) || value.contains('/') =>
            {
                Some("no spaces or '/'")
            }
            _ => None,
        };
        match why {
            Some(why) => Err(SelectorError::Invalid {
                kind: name(),
                value,
                why,
            }),
            None => Ok(Selector { kind, value }),
        }
    }

    /// Parses `type:key:value`.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let mut it = s.splitn(3, ':');
        let (Some(ty), Some(key), Some(value)) = (it.next(), it.next(), it.next()) else {
            return Err(SelectorError::Shape);
        };
        let kind = Kind::from_parts(ty, key)
            .ok_or_else(|| SelectorError::UnknownKind(ty.into(), key.into()))?;
        Selector::new(kind, value)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, k) = self.kind.parts();
        write!(f, "{t}:{k}:{}", self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl TryFrom<String> for Selector {
    type Error = SelectorError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Selector::parse(&s)
    }
}

impl From<Selector> for String {
    fn from(s: Selector) -> String {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_parses_and_prints_back() {
        let pod = "8d3e5c2a-1b4f-4e6a-9c7d-0e1f2a3b4c5d";
        let hash = "a".repeat(64);
        let samples = [
            "unix:uid:1000".to_string(),
            "unix:user:www-data".into(),
            "unix:path:/usr/bin/curl".into(),
            format!("unix:sha256:{hash}"),
            "docker:label:com.example.app:payments:v2".into(),
            format!("docker:id:{hash}"),
            "k8s:ns:payments".into(),
            "k8s:sa:api.backend".into(),
            format!("k8s:pod-uid:{pod}"),
            "hais:agent:0192f0c1-aa".into(),
            "hais:host:web-01".into(),
            "docker:image_id:registry.local:5000/shop/web:1.2".into(),
            "k8s:pod-name:web-7d4b9c8f6d-x2x9q".into(),
            "hais:workload:host:web-01:curl:root".into(),
        ];
        for (s, kind) in samples.iter().zip(Kind::ALL) {
            let sel = Selector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(sel.kind, kind);
            assert_eq!(sel.to_string(), *s);
        }
        let label = Selector::parse("docker:label:com.example.app:payments:v2").unwrap();
        assert_eq!(label.value, "com.example.app:payments:v2");
    }

    #[test]
    fn malformed_selectors_say_why() {
        let bad = [
            ("unix", "type:key:value"),
            ("unix:uid", "type:key:value"),
            ("unix:pid:1", "unknown selector unix:pid"),
            ("unix:uid:", "needs a value"),
            ("unix:uid:-1", "not a number"),
            ("unix:uid:root", "not a number"),
            ("unix:user:a b", "no ':' or spaces"),
            ("unix:path:bin/curl", "absolute path"),
            ("unix:sha256:ABC", "64 lowercase hex"),
            ("docker:label::v", "<label key>:<label value>"),
            ("docker:label:novalue", "<label key>:<label value>"),
            ("docker:id:abc", "64-character container id"),
            ("k8s:ns:Payments", "DNS label"),
            ("k8s:ns:-x", "DNS label"),
            ("k8s:sa:a..b", "DNS subdomain"),
            ("k8s:pod-uid:123", "UUID"),
            ("hais:host:a/b", "no spaces"),
            ("unix:path:/a\nb", "control characters"),
        ];
        for (s, want) in bad {
            let e = Selector::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
        let long = format!("unix:path:/{}", "a".repeat(MAX_SELECTOR_VALUE));
        assert!(matches!(
            Selector::parse(&long),
            Err(SelectorError::TooLong { .. })
        ));
    }

    #[test]
    fn serde_uses_the_text_form() {
        let s: Selector = serde_json::from_str("\"k8s:ns:payments\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"k8s:ns:payments\"");
        assert!(serde_json::from_str::<Selector>("\"k8s:ns:\"").is_err());
    }
}
