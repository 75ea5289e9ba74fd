//! Policy evaluation benchmark (`cargo bench -p hais-policy --bench eval [-- --policies N
//! --events N --global N]`): what deciding one flow costs against a set of 1,000 policies, on one
//! core.
//!
//! The set (seeded, reproducible): `--global` policies (default 10) scoped to every principal
//! (`forbid(principal, action == …, resource) when { … }` on ports, SNI suffixes, JA4 sections),
//! a tenth of the rest scoped to one of 30 namespaces (`principal in Namespace::"nsK"`, the
//! issue's "payments may only speak TLS with these client stacks to these destinations"), and the
//! remainder scoped to one workload each (`principal == Workload::"…"`), plus one base permit.
//! Events: 1,000 workloads over the 30 namespaces, TLS flows with one of 40 client stacks to one
//! of 200 destinations; about one in eight is a violation.
//!
//! Measured per event, one thread: building the facts and the Cedar request from the event and
//! evaluating them ([`Facts::of_event`] + [`hais_policy::Compiled::evaluate`]), each event timed
//! alone. A second pass (`--global` = all policies) shows the cost without the principal index.
//! Prints one JSON object per pass; figures go to benches/README.md.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use hais_policy::{Facts, Source, compile};
use hais_shared::event::{Fingerprint, FingerprintEvent, Flow, Transport, Workload};
use hais_shared::fingerprint::Method;

/// A 64-bit LCG (Knuth's MMIX constants), high bits out: reproducible and enough for a
/// synthetic fleet.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

const NAMESPACES: u64 = 30;
const WORKLOADS: u64 = 1000;
const STACKS: u64 = 40;

fn workload(i: u64) -> String {
    format!("spiffe://prod.example/ns/ns{}/sa/app{i}", i % NAMESPACES)
}

fn stack_a(s: u64) -> String {
    format!("t13d{:02}{:02}h2", 10 + s % 20, 5 + s % 13)
}

/// The policy set: one base permit, `global` policies for every principal, the rest by
/// namespace (a tenth) and by workload.
fn policies(total: usize, global: usize, rng: &mut Rng) -> String {
    let mut out = String::from("@id(\"base\") permit(principal, action, resource);\n");
    for i in 0..total {
        let port = 1000 + rng.below(60000);
        let text = if i < global {
            match i % 3 {
                0 => format!(
                    "@id(\"g{i}\") forbid(principal, action == Action::\"tls\", resource) when {{ resource.port == {port} }};\n"
                ),
                1 => format!(
                    "@id(\"g{i}\") @effect(\"alert\") forbid(principal, action, resource) when {{ resource has sni && resource.sni like \"*.bad{i}.example\" }};\n"
                ),
                _ => format!(
                    "@id(\"g{i}\") forbid(principal, action, resource) when {{ context has ja4_a && context.ja4_a == \"{}\" && principal has namespace && principal.namespace == \"ns{}\" }};\n",
                    stack_a(rng.below(STACKS) + STACKS),
                    rng.below(NAMESPACES)
                ),
            }
        } else if i % 10 == 0 {
            let ns = rng.below(NAMESPACES);
            format!(
                "@id(\"n{i}\") forbid(principal in Namespace::\"ns{ns}\", action, resource) unless {{ action == Action::\"tls\" && context has ja4_a && [\"{}\", \"{}\", \"{}\"].contains(context.ja4_a) && resource.ip.isInRange(ip(\"10.0.0.0/8\")) }};\n",
                stack_a(ns % STACKS),
                stack_a((ns + 1) % STACKS),
                stack_a((ns + 2) % STACKS)
            )
        } else {
            let w = rng.below(WORKLOADS);
            format!(
                "@id(\"w{i}\") @severity(\"low\") forbid(principal == Workload::\"{}\", action, resource) when {{ resource.port == {port} || (resource has sni && resource.sni == \"svc{}.internal\") }};\n",
                workload(w),
                rng.below(200)
            )
        };
        out.push_str(&text);
    }
    out
}

fn event(rng: &mut Rng) -> FingerprintEvent {
    let w = rng.below(WORKLOADS);
    let ns = w % NAMESPACES;
    // Mostly the namespace's allowed stacks; one in eight another one.
    let stack = if rng.below(8) == 0 {
        rng.below(STACKS)
    } else {
        (ns + rng.below(3)) % STACKS
    };
    let dst = rng.below(200);
    FingerprintEvent {
        id: uuid::Uuid::now_v7(),
        timestamp: time::OffsetDateTime::UNIX_EPOCH,
        agent_id: format!("agent{}", w % 50),
        host: format!("node{}", w % 50),
        flow: Flow {
            src_ip: IpAddr::V4(Ipv4Addr::new(10, 1, (w >> 8) as u8, w as u8)),
            src_port: 40000,
            dst_ip: IpAddr::V4(Ipv4Addr::new(10, 2, 0, dst as u8)),
            dst_port: 443,
            transport: Transport::Tcp,
        },
        server_name: Some(format!("svc{dst}.internal")),
        fingerprints: vec![
            Fingerprint {
                method: Method::Ja4,
                value: format!("{}_8daaf6152771_02713d6af862", stack_a(stack)),
            },
            Fingerprint {
                method: Method::Ja4t,
                value: "64240_2-4-8-1-3_1460_7".into(),
            },
        ],
        ja4_stable: None,
        workload: Workload {
            spiffe_id: Some(workload(w)),
            direction: Some("outbound".into()),
            ..Workload::default()
        },
    }
}

fn pass(total: usize, global: usize, events: usize) {
    let mut rng = Rng(7);
    let text = policies(total, global, &mut rng);
    let t = Instant::now();
    let compiled = compile(&[Source {
        name: "bench.cedar".into(),
        text,
    }])
    .unwrap_or_else(|e| panic!("bench set invalid: {:?}", &e[..e.len().min(3)]));
    let compile_ms = t.elapsed().as_secs_f64() * 1e3;
    let evs: Vec<FingerprintEvent> = (0..events).map(|_| event(&mut rng)).collect();
    let mut times = Vec::with_capacity(events);
    let mut violations = 0usize;
    let start = Instant::now();
    for e in &evs {
        let t = Instant::now();
        let d = compiled
            .evaluate(&Facts::of_event(e, None))
            .expect("bench facts are valid");
        times.push(t.elapsed().as_nanos() as u64);
        violations += usize::from(d.is_violation());
    }
    let wall = start.elapsed().as_secs_f64();
    times.sort_unstable();
    let q = |p: f64| times[((times.len() as f64 - 1.0) * p) as usize] as f64 / 1e3;
    let mean = times.iter().sum::<u64>() as f64 / times.len() as f64 / 1e3;
    println!(
        "{{\"policies\":{},\"global\":{global},\"events\":{events},\"violations\":{violations},\
         \"compile_ms\":{compile_ms:.1},\"events_per_s\":{:.0},\"mean_us\":{mean:.2},\
         \"p50_us\":{:.2},\"p99_us\":{:.2},\"max_us\":{:.2}}}",
        compiled.len(),
        events as f64 / wall,
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: usize| {
        (args.windows(2).find(|w| w[0] == name))
            .and_then(|w| w[1].parse().ok())
            .unwrap_or(default)
    };
    let total = arg("--policies", 1000);
    let events = arg("--events", 200_000);
    let global = arg("--global", 10);
    pass(total, global, events);
    pass(total, total, events / 10);
}
