//! Property and fuzz-style tests: no policy text and no event crashes compilation or
//! evaluation; facts always conform to the schema; the partitioned evaluation decides exactly
//! as Cedar does over the whole set.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use cedar_policy::{Authorizer, Decision as CedarDecision, PolicySet};
use hais_policy::{Facts, Outcome, Source, compile};
use hais_shared::event::{Fingerprint, FingerprintEvent, Flow, Transport, Workload};
use hais_shared::fingerprint::Method;
use proptest::prelude::*;

fn src(text: &str) -> Vec<Source> {
    vec![Source {
        name: "p.cedar".into(),
        text: text.into(),
    }]
}

/// Pieces valid policies are made of, so random sequences reach the validator, not only the
/// parser.
const PIECES: &[&str] = &[
    "permit",
    "forbid",
    "(",
    ")",
    "principal",
    "action",
    "resource",
    ",",
    ";",
    " in ",
    " == ",
    " != ",
    " like ",
    " has ",
    " when ",
    " unless ",
    "{",
    "}",
    "[",
    "]",
    "Namespace::\"payments\"",
    "Workload::\"spiffe://td/ns/a/sa/b\"",
    "Action::\"tls\"",
    "context.ja4",
    "context.ja4_a",
    "context.ja4x",
    "context.threat_labels",
    "resource.ip",
    "resource.port",
    "principal.namespace",
    ".isInRange(ip(\"10.0.0.0/8\"))",
    ".contains(\"x\")",
    "\"t13d*\"",
    "443",
    "-9223372036854775808",
    "true",
    " && ",
    " || ",
    "!",
    "@id(\"a\")",
    "@effect(\"alert\")",
    "@severity(\"low\")",
    "@mode(\"audit\")",
    "if ",
    " then ",
    " else ",
    "?principal",
    "//",
    "\n",
    "é",
    "\"",
];

fn event_strategy() -> impl Strategy<Value = FingerprintEvent> {
    let methods = prop::sample::select(Method::ALL.to_vec());
    let fp = (methods, ".{0,40}").prop_map(|(method, value)| Fingerprint { method, value });
    (
        prop::collection::vec(fp, 0..8),
        any::<[u8; 4]>(),
        any::<u16>(),
        prop::option::of(".{0,30}"),
        prop::option::of(".{0,60}"),
        prop::option::of(".{0,20}"),
        prop::option::of(".{0,20}"),
        prop::option::of(prop::sample::select(vec!["inbound", "outbound", "??"])),
        ".{0,20}",
        any::<bool>(),
    )
        .prop_map(
            |(fingerprints, ip, port, sni, spiffe, ns, sa, direction, host, udp)| {
                FingerprintEvent {
                    id: uuid::Uuid::now_v7(),
                    timestamp: time::OffsetDateTime::UNIX_EPOCH,
                    agent_id: "agent".into(),
                    host,
                    flow: Flow {
                        src_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                        src_port: 40000,
                        dst_ip: IpAddr::V4(Ipv4Addr::from(ip)),
                        dst_port: port,
                        transport: if udp { Transport::Udp } else { Transport::Tcp },
                    },
                    server_name: sni,
                    fingerprints,
                    ja4_stable: None,
                    workload: Workload {
                        spiffe_id: spiffe,
                        k8s_namespace: ns,
                        k8s_service_account: sa,
                        direction: direction.map(str::to_owned),
                        ..Workload::default()
                    },
                }
            },
        )
}

/// A valid set exercising every kind of scope, used against random events.
const SET: &str = r#"
@id("base") permit(principal, action, resource);
@id("payments-tls-only")
forbid(principal in Namespace::"payments", action, resource)
unless { action == Action::"tls" && context has ja4_a && context.ja4_a == "t13d1516h2" };
@id("no-ssh-out") @effect("alert") @severity("low")
forbid(principal, action == Action::"ssh", resource) when { resource.port != 22 };
@id("lan") @mode("audit")
forbid(principal, action, resource) when { resource.ip.isInRange(ip("10.0.0.0/8")) };
@id("sa") forbid(principal in ServiceAccount::"payments/api", action, resource)
when { context.ja4x.contains("bad") || context.threat_labels.contains("x") };
@id("sni") forbid(principal, action in [Action::"tls", Action::"quic"], resource)
when { resource has sni && resource.sni like "*.evil.example" };
"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary text: refused or compiled, never a panic; problems point inside the text.
    #[test]
    fn arbitrary_text_never_crashes(text in ".{0,400}") {
        if let Err(problems) = compile(&src(&text)) {
            prop_assert!(!problems.is_empty());
            for p in problems {
                prop_assert!(p.line >= 1 && p.column >= 1);
                prop_assert!(p.line as usize <= text.lines().count().max(1) + 1, "{p:?}");
            }
        }
    }

    /// Sequences of policy-shaped pieces (reaching the validator and our annotation checks).
    #[test]
    fn policy_shaped_text_never_crashes(pieces in prop::collection::vec(prop::sample::select(PIECES.to_vec()), 0..60)) {
        let text: String = pieces.concat();
        let _ = compile(&src(&text));
    }

    /// Any event evaluates against a set using every feature, and its facts conform to the
    /// schema; the partitioned evaluation agrees with Cedar over the whole set.
    #[test]
    fn any_event_evaluates_and_agrees_with_cedar(e in event_strategy()) {
        let compiled = compile(&src(SET)).unwrap();
        let facts = Facts::of_event(&e, None);
        let d = compiled.evaluate(&facts).unwrap();
        prop_assert!(d.errors.is_empty(), "{:?}", d.errors);
        // The same request, the schema checking it this time, against the whole set at once
        // (audit policy removed: it is never part of the enforced decision).
        let (request, entities) = facts.to_cedar().unwrap();
        let schema = hais_policy::schema::schema();
        let checked = cedar_policy::Request::new(
            request.principal().unwrap().clone(),
            request.action().unwrap().clone(),
            request.resource().unwrap().clone(),
            request.context().unwrap().clone(),
            Some(schema),
        );
        prop_assert!(checked.is_ok(), "{:?}", checked.err());
        let validated = cedar_policy::Entities::from_entities(entities.iter().cloned(), Some(schema));
        prop_assert!(validated.is_ok(), "{:?}", validated.err());
        let enforced: String = SET.split("@id(\"lan\")").next().unwrap().to_owned()
            + SET.split_once("isInRange(ip(\"10.0.0.0/8\")) };").unwrap().1;
        let whole = PolicySet::from_str(&enforced).unwrap();
        let r = Authorizer::new().is_authorized(&request, &whole, &entities);
        let allowed = r.decision() == CedarDecision::Allow;
        prop_assert_eq!(allowed, d.outcome == Outcome::Allow, "{:?}", d);
    }
}

#[test]
fn a_payments_workload_with_another_ja4_is_denied_and_explained() {
    let compiled = compile(&src(SET)).unwrap();
    let mut e = FingerprintEvent {
        id: uuid::Uuid::now_v7(),
        timestamp: time::OffsetDateTime::UNIX_EPOCH,
        agent_id: "a1".into(),
        host: "node-1".into(),
        flow: Flow {
            src_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 5)),
            src_port: 40000,
            dst_ip: IpAddr::V4(Ipv4Addr::new(10, 2, 0, 9)),
            dst_port: 443,
            transport: Transport::Tcp,
        },
        server_name: Some("api.bank.example".into()),
        fingerprints: vec![Fingerprint {
            method: Method::Ja4,
            value: "t13d1715h2_5b57614c22b0_3d5424432f57".into(),
        }],
        ja4_stable: None,
        workload: Workload {
            spiffe_id: Some("spiffe://prod.example/ns/payments/sa/api".into()),
            ..Workload::default()
        },
    };
    let d = compiled.evaluate(&Facts::of_event(&e, None)).unwrap();
    assert_eq!(d.outcome, Outcome::Deny, "{d:?}");
    assert_eq!(d.rule(), "payments-tls-only");
    let p = &d.policies[0];
    assert_eq!(p.fields["context.ja4_a"], "t13d1715h2");
    assert_eq!(p.fields["action"], "tls");
    assert_eq!(p.line, 3);
    // The audit policy matched (10.2.0.9 is in 10/8) but did not decide.
    assert_eq!(d.audit.len(), 1);
    assert_eq!(d.audit[0].id, "lan");
    // The allowed client stack passes; the namespace came from the SPIFFE path.
    e.fingerprints[0].value = "t13d1516h2_8daaf6152771_02713d6af862".into();
    let d = compiled.evaluate(&Facts::of_event(&e, None)).unwrap();
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    assert_eq!(d.rule(), "base");
    // No permit at all: Cedar's default deny.
    let only_forbid = compile(&src(
        "forbid(principal, action == Action::\"ssh\", resource);",
    ))
    .unwrap();
    let d = only_forbid.evaluate(&Facts::of_event(&e, None)).unwrap();
    assert!(d.default_deny && d.is_violation());
    assert_eq!(d.rule(), hais_policy::DEFAULT_DENY);
}
