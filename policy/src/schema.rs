//! The Cedar schema every policy set is validated against: what a policy may say about a flow.
//!
//! * **principal** — the `Workload` behind the flow, its id the identity the other services use
//!   (SPIFFE ID when one was resolved, else the workload key). Its parents are the
//!   `TrustDomain`, Kubernetes `Namespace`, `ServiceAccount` and `Host` it belongs to, so
//!   `principal in Namespace::"payments"` works.
//! * **action** — the connection kind: `tls`, `http`, `ssh`, `tcp`, `udp`, `quic`, `dhcp`.
//! * **resource** — the `Destination` (the far side of the flow): `ip` (an `ipaddr`, so
//!   `resource.ip.isInRange(ip("10.0.0.0/8"))`), `port`, `sni`, and `peer` (the peer's SPIFFE ID
//!   when the peer is a known workload).
//! * **context** — the fingerprints (JA4 and its sections `ja4_a`/`ja4_b`/`ja4_c`, JA4S, JA4X,
//!   JA4H, JA4T, JA4TS, JA4L, JA4LS, JA4SSH and its session type: `interactive`,
//!   `file-transfer` or `other`), the transport and direction,
//!   and the threat service's labels, verdict and country when they are known.
//!
//! Optional attributes (`?`) are absent when the flow did not yield them; strict validation makes
//! a policy test them with `has` first, so a policy cannot fail at evaluation on a missing one.

use std::sync::OnceLock;

use cedar_policy::Schema;

/// The schema's text (Cedar's human-readable schema format).
pub const SCHEMA: &str = r#"
entity TrustDomain;
entity Namespace in [TrustDomain];
entity ServiceAccount in [Namespace, TrustDomain];
entity Host;

entity Workload in [TrustDomain, Namespace, ServiceAccount, Host] {
  identity: String,
  spiffe_id?: String,
  trust_domain?: String,
  namespace?: String,
  service_account?: String,
  host: String,
  agent: String,
  process?: String,
  exe?: String,
  container_image?: String,
  workload_key?: String,
};

entity Destination {
  ip: ipaddr,
  port: Long,
  sni?: String,
  peer?: String,
};

type Flow = {
  transport: String,
  direction?: String,
  ja4?: String,
  ja4_a?: String,
  ja4_b?: String,
  ja4_c?: String,
  ja4s?: String,
  ja4x: Set<String>,
  ja4h?: String,
  ja4t?: String,
  ja4ts?: String,
  ja4l?: String,
  ja4ls?: String,
  ja4ssh?: String,
  ja4ssh_type?: String,
  threat_labels: Set<String>,
  threat_verdict?: String,
  country?: String,
};

action tls, http, ssh, tcp, udp, quic, dhcp appliesTo {
  principal: [Workload],
  resource: [Destination],
  context: Flow,
};
"#;

/// The parsed schema (parsed once; it is a constant of the program).
pub fn schema() -> &'static Schema {
    static SCHEMA_PARSED: OnceLock<Schema> = OnceLock::new();
    SCHEMA_PARSED.get_or_init(|| {
        // A constant of the program, parsed by the unit test below: it cannot fail at run time.
        let (schema, _warnings) =
            Schema::from_cedarschema_str(SCHEMA).expect("the built-in policy schema parses");
        schema
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_schema_parses_and_declares_every_connection_kind() {
        let s = super::schema();
        let actions: Vec<String> = s.actions().map(|a| a.id().escaped().to_string()).collect();
        for kind in crate::facts::Kind::ALL {
            assert!(
                actions.iter().any(|a| a == kind.as_str()),
                "{kind:?} missing from {actions:?}"
            );
        }
    }
}
