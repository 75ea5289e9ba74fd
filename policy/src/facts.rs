//! What one event says, in the schema's terms ([`crate::schema`]): the [`Facts`] a decision is
//! taken on, built from a [`FingerprintEvent`] (after identity resolution) and, when the threat
//! service knows them, its [`Enrichment`], and turned into a Cedar request.
//!
//! Facts are also what a decision is explained with: the fields a deciding policy reads are
//! looked up here by their path (`context.ja4_a`, `resource.port`, …).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;

use cedar_policy::{
    Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, Request, RestrictedExpression,
};
use hais_shared::event::{FingerprintEvent, Transport};
use hais_shared::fingerprint::Method;
use serde::{Deserialize, Serialize};

/// The connection kind, the request's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tls,
    Http,
    Ssh,
    Tcp,
    Udp,
    Quic,
    Dhcp,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Tls,
        Kind::Http,
        Kind::Ssh,
        Kind::Tcp,
        Kind::Udp,
        Kind::Quic,
        Kind::Dhcp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tls => "tls",
            Kind::Http => "http",
            Kind::Ssh => "ssh",
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
            Kind::Quic => "quic",
            Kind::Dhcp => "dhcp",
        }
    }

    /// The kind of a flow, from what was fingerprinted on it: SSH, then QUIC (a JA4 starting
    /// with `q`), TLS (any other JA4, JA4S or JA4X), plain HTTP (JA4H), DHCP; else the transport.
    pub fn of(e: &FingerprintEvent) -> Kind {
        let has = |m: Method| e.fingerprints.iter().any(|f| f.method == m);
        let ja4 = e.fingerprints.iter().find(|f| f.method == Method::Ja4);
        if has(Method::Ja4ssh) {
            Kind::Ssh
        } else if ja4.is_some_and(|f| f.value.starts_with('q')) {
            Kind::Quic
        } else if ja4.is_some() || has(Method::Ja4s) || has(Method::Ja4x) {
            Kind::Tls
        } else if has(Method::Ja4h) {
            Kind::Http
        } else if has(Method::Ja4d) || has(Method::Ja4d6) {
            Kind::Dhcp
        } else {
            match e.flow.transport {
                Transport::Tcp => Kind::Tcp,
                Transport::Udp => Kind::Udp,
            }
        }
    }
}

/// What the threat service concluded about the event, when it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrichment {
    /// Labels of the indicators the event matched (application, malware family, …).
    #[serde(default)]
    pub labels: Vec<String>,
    /// The worst verdict among them (`benign`, `suspicious`, `malicious`).
    #[serde(default)]
    pub verdict: Option<String>,
    /// ISO country code of the remote address.
    #[serde(default)]
    pub country: Option<String>,
    /// The peer's SPIFFE ID, when the far side is a known workload.
    #[serde(default)]
    pub peer: Option<String>,
}

/// The principal: the workload behind the flow and the groups it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The identity (SPIFFE ID, else workload key): the id of `Workload::"…"`.
    pub identity: String,
    pub spiffe_id: Option<String>,
    pub trust_domain: Option<String>,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub host: String,
    pub agent: String,
    pub process: Option<String>,
    pub exe: Option<String>,
    pub container_image: Option<String>,
    pub workload_key: Option<String>,
}

/// The resource: the far side of the flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    pub ip: IpAddr,
    pub port: u16,
    pub sni: Option<String>,
    pub peer: Option<String>,
}

impl Destination {
    /// `ip:port` (IPv6 in brackets), the id of `Destination::"…"`.
    pub fn address(&self) -> String {
        std::net::SocketAddr::new(self.ip, self.port).to_string()
    }
}

/// Everything a policy can read about one flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub principal: Principal,
    pub action: Kind,
    pub resource: Destination,
    /// The context record: string attributes by name (absent ones are left out).
    pub context: BTreeMap<String, String>,
    /// JA4X values (one per certificate).
    pub ja4x: Vec<String>,
    pub threat_labels: Vec<String>,
}

/// The context's optional string attributes taken from a fingerprint method of the event.
const FINGERPRINT_ATTRS: [(Method, &str); 8] = [
    (Method::Ja4, "ja4"),
    (Method::Ja4s, "ja4s"),
    (Method::Ja4h, "ja4h"),
    (Method::Ja4t, "ja4t"),
    (Method::Ja4ts, "ja4ts"),
    (Method::Ja4l, "ja4l"),
    (Method::Ja4ls, "ja4ls"),
    (Method::Ja4ssh, "ja4ssh"),
];

/// `ns` and `sa` of a Kubernetes-style SPIFFE path (`/ns/<ns>/sa/<sa>`).
fn k8s_of_spiffe_path(path: &str) -> (Option<&str>, Option<&str>) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let after = |key: &str| {
        parts
            .windows(2)
            .find(|w| w[0] == key && !w[1].is_empty())
            .map(|w| w[1])
    };
    (after("ns"), after("sa"))
}

impl Facts {
    /// The facts of `e` (identity resolution done), with what the threat service knows.
    pub fn of_event(e: &FingerprintEvent, enrichment: Option<&Enrichment>) -> Facts {
        let w = &e.workload;
        let identity = hais_correlation::identity_of(e).into_owned();
        let spiffe = w
            .spiffe_id
            .as_deref()
            .and_then(|s| hais_shared::spiffe::SpiffeId::parse(s).ok());
        let (spiffe_ns, spiffe_sa) = spiffe
            .as_ref()
            .map(|s| k8s_of_spiffe_path(s.path()))
            .unwrap_or_default();
        let namespace = w
            .k8s_namespace
            .clone()
            .or_else(|| spiffe_ns.map(str::to_owned));
        let service_account = w
            .k8s_service_account
            .clone()
            .or_else(|| spiffe_sa.map(str::to_owned));
        let principal = Principal {
            identity,
            spiffe_id: w.spiffe_id.clone(),
            trust_domain: spiffe.as_ref().map(|s| s.trust_domain().to_owned()),
            namespace,
            service_account,
            host: e.host.clone(),
            agent: e.agent_id.clone(),
            process: w.process.clone(),
            exe: w.exe.clone(),
            container_image: w.container_image.clone(),
            workload_key: w.key.clone(),
        };
        let inbound = w.direction.as_deref() == Some("inbound");
        let enrichment = enrichment.cloned().unwrap_or_default();
        let resource = Destination {
            ip: if inbound {
                e.flow.src_ip
            } else {
                e.flow.dst_ip
            },
            port: if inbound {
                e.flow.src_port
            } else {
                e.flow.dst_port
            },
            sni: e.server_name.clone(),
            peer: enrichment.peer.clone(),
        };
        let mut context = BTreeMap::new();
        context.insert("transport".to_owned(), e.flow.transport.as_str().to_owned());
        if let Some(d) = &w.direction {
            context.insert("direction".to_owned(), d.clone());
        }
        for (method, attr) in FINGERPRINT_ATTRS {
            if let Some(f) = e.fingerprints.iter().find(|f| f.method == method) {
                context.insert(attr.to_owned(), f.value.clone());
                if method == Method::Ja4 {
                    for (name, part) in ["ja4_a", "ja4_b", "ja4_c"].into_iter().zip(f.parts()) {
                        if let Some(p) = part {
                            context.insert(name.to_owned(), p.to_owned());
                        }
                    }
                }
                // Reverse shells are not told apart (they count as interactive): that
                // classification is off by default for patent reasons (see NOTICE).
                if method == Method::Ja4ssh
                    && let Some(t) = hais_correlation::detect::ssh_session(&f.value, false)
                {
                    context.insert("ja4ssh_type".to_owned(), t.as_str().to_owned());
                }
            }
        }
        if let Some(v) = &enrichment.verdict {
            context.insert("threat_verdict".to_owned(), v.clone());
        }
        if let Some(c) = &enrichment.country {
            context.insert("country".to_owned(), c.clone());
        }
        let ja4x = e
            .fingerprints
            .iter()
            .filter(|f| f.method == Method::Ja4x)
            .map(|f| f.value.clone())
            .collect();
        Facts {
            principal,
            action: Kind::of(e),
            resource,
            context,
            ja4x,
            threat_labels: enrichment.labels,
        }
    }

    /// The value at `path` (`principal`, `action`, `resource`, `principal.namespace`,
    /// `context.ja4_a`, …) as text, for explanations; `None` when absent.
    pub fn field(&self, path: &str) -> Option<String> {
        let p = &self.principal;
        let r = &self.resource;
        let set = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
        match path {
            "principal" => Some(p.identity.clone()),
            "action" => Some(self.action.as_str().to_owned()),
            "resource" => Some(r.address()),
            "principal.identity" => Some(p.identity.clone()),
            "principal.spiffe_id" => p.spiffe_id.clone(),
            "principal.trust_domain" => p.trust_domain.clone(),
            "principal.namespace" => p.namespace.clone(),
            "principal.service_account" => p.service_account.clone(),
            "principal.host" => Some(p.host.clone()),
            "principal.agent" => Some(p.agent.clone()),
            "principal.process" => p.process.clone(),
            "principal.exe" => p.exe.clone(),
            "principal.container_image" => p.container_image.clone(),
            "principal.workload_key" => p.workload_key.clone(),
            "resource.ip" => Some(r.ip.to_string()),
            "resource.port" => Some(r.port.to_string()),
            "resource.sni" => r.sni.clone(),
            "resource.peer" => r.peer.clone(),
            "context.ja4x" => Some(set(&self.ja4x)),
            "context.threat_labels" => Some(set(&self.threat_labels)),
            other => other
                .strip_prefix("context.")
                .and_then(|k| self.context.get(k).cloned()),
        }
    }

    /// The principal's uid and the uids of every group it is in (its ancestors).
    pub fn principal_uids(&self) -> (EntityUid, Vec<EntityUid>) {
        let p = &self.principal;
        let mut parents = vec![uid("Host", &p.host)];
        if let Some(td) = &p.trust_domain {
            parents.push(uid("TrustDomain", td));
        }
        if let Some(ns) = &p.namespace {
            parents.push(uid("Namespace", ns));
            if let Some(sa) = &p.service_account {
                parents.push(uid("ServiceAccount", &format!("{ns}/{sa}")));
            }
        }
        (uid("Workload", &p.identity), parents)
    }

    /// The Cedar request and the entities it refers to. Built without the schema (the shapes
    /// are this function's, checked against the schema by the tests), so evaluation does not
    /// re-validate them per event.
    pub fn to_cedar(&self) -> Result<(Request, Entities), FactsError> {
        let p = &self.principal;
        let r = &self.resource;
        let s = |v: &str| RestrictedExpression::new_string(v.to_owned());
        let mut attrs: HashMap<String, RestrictedExpression> = HashMap::new();
        attrs.insert("identity".into(), s(&p.identity));
        attrs.insert("host".into(), s(&p.host));
        attrs.insert("agent".into(), s(&p.agent));
        for (name, v) in [
            ("spiffe_id", &p.spiffe_id),
            ("trust_domain", &p.trust_domain),
            ("namespace", &p.namespace),
            ("service_account", &p.service_account),
            ("process", &p.process),
            ("exe", &p.exe),
            ("container_image", &p.container_image),
            ("workload_key", &p.workload_key),
        ] {
            if let Some(v) = v {
                attrs.insert(name.into(), s(v));
            }
        }
        let (principal, parents) = self.principal_uids();
        let principal_entity = Entity::new(
            principal.clone(),
            attrs,
            parents.into_iter().collect::<HashSet<_>>(),
        )
        .map_err(|e| FactsError(e.to_string()))?;
        let mut rattrs: HashMap<String, RestrictedExpression> = HashMap::new();
        rattrs.insert("ip".into(), RestrictedExpression::new_ip(r.ip.to_string()));
        rattrs.insert(
            "port".into(),
            RestrictedExpression::new_long(i64::from(r.port)),
        );
        if let Some(v) = &r.sni {
            rattrs.insert("sni".into(), s(v));
        }
        if let Some(v) = &r.peer {
            rattrs.insert("peer".into(), s(v));
        }
        let resource = uid("Destination", &r.address());
        let resource_entity = Entity::new(resource.clone(), rattrs, HashSet::new())
            .map_err(|e| FactsError(e.to_string()))?;
        let set = |v: &[String]| RestrictedExpression::new_set(v.iter().map(|x| s(x)));
        let pairs = self.context.iter().map(|(k, v)| (k.clone(), s(v))).chain([
            ("ja4x".to_owned(), set(&self.ja4x)),
            ("threat_labels".to_owned(), set(&self.threat_labels)),
        ]);
        let context = Context::from_pairs(pairs).map_err(|e| FactsError(e.to_string()))?;
        let action = uid("Action", self.action.as_str());
        let request = Request::new(principal, action, resource, context, None)
            .map_err(|e| FactsError(e.to_string()))?;
        let entities = Entities::from_entities([principal_entity, resource_entity], None)
            .map_err(|e| FactsError(e.to_string()))?;
        Ok((request, entities))
    }
}

/// The facts could not be expressed as a Cedar request (never expected: every value is a
/// string, a long in range or an address the event already parsed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("building the policy request: {0}")]
pub struct FactsError(pub String);

/// `Type::"id"`. `ty` is one of the schema's entity types (a constant of this crate).
pub fn uid(ty: &'static str, id: &str) -> EntityUid {
    let ty = EntityTypeName::from_str(ty).expect("the schema's entity type names are identifiers");
    EntityUid::from_type_name_and_id(ty, EntityId::new(id))
}
