//! Threat benchmark: what judging one event costs with 1,000,000 indicators loaded, and what an
//! address lookup costs in the real geolocation files.
//!
//! Run: `cargo bench -p hais-control-plane --bench threat` (release build). Knobs:
//! * `HAIS_BENCH_INDICATORS` (default 1000000): 80 % exact JA4s, 5 % JA4 a+c section rules,
//!   5 % JA4 ∧ JA4S combinations, 10 % IPv4 networks (/16 to /32).
//! * `HAIS_BENCH_EVENTS` (default 200000): events judged, each timed alone; one in ten carries
//!   a fingerprint some indicator names.
//! * Geolocation: `target/geo` (fetched by `scripts/fetch-geo.sh` if missing).
//!
//! Measured per event, one thread: the matcher alone ([`Matcher::judge`]: every fingerprint of
//! the event, its remote address, its server name), and the whole enrichment the consumer does
//! per event (judging + country and ASN of the remote address + the batch's bookkeeping,
//! [`judge_batch`] on one event). Also the matcher's build time (what a feed swap costs before
//! the new index serves) and a lone IP lookup (country MMDB + ASN table).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use hais_control_plane::services::threat::geo::Geo;
use hais_control_plane::services::threat::indicator::{Indicator, Kind, Labels, Verdict};
use hais_control_plane::services::threat::judge_batch;
use hais_control_plane::services::threat::matcher::Matcher;
use hais_shared::event::{Fingerprint, FingerprintEvent, Flow, Transport};
use hais_shared::fingerprint::Method;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift), so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn hex12(&mut self) -> String {
        format!("{:012x}", self.next() & 0xffff_ffff_ffff)
    }
    fn ja4(&mut self) -> String {
        format!(
            "t13d{:02}{:02}h2_{}_{}",
            self.next() % 100,
            self.next() % 100,
            self.hex12(),
            self.hex12()
        )
    }
}

fn indicator(kind: Kind, method: Option<&str>, value: String, sections: Vec<String>) -> Indicator {
    Indicator {
        id: uuid::Uuid::now_v7(),
        feed: "bench".into(),
        kind,
        method: method.map(str::to_owned),
        value,
        sections,
        labels: Labels {
            application: Some("bench".into()),
            ..Labels::default()
        },
        verdict: Verdict::Malicious,
        confidence: 80,
        source: "bench".into(),
        licence: None,
        notes: None,
        first_seen_us: 0,
        last_seen_us: 0,
        expires_us: None,
    }
}

fn percentiles(mut ns: Vec<u64>) -> (f64, f64, f64, f64) {
    ns.sort_unstable();
    let at = |q: f64| ns[((ns.len() as f64 * q) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1000.0;
    (mean, at(0.5), at(0.99), at(0.999))
}

fn geo_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let dir = root.join("target/geo");
    if !dir.join("iptoasn-country.mmdb").exists() {
        let ok = std::process::Command::new(root.join("scripts/fetch-geo.sh"))
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "scripts/fetch-geo.sh failed (it needs npm)");
    }
    dir
}

fn main() {
    let n = env("HAIS_BENCH_INDICATORS", 1_000_000);
    let events = env("HAIS_BENCH_EVENTS", 200_000);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut list = Vec::with_capacity(n);
    let mut known = Vec::new();
    for i in 0..n {
        let ind = match i % 20 {
            0..=15 => {
                let v = rng.ja4();
                if i % 1000 == 0 {
                    known.push(v.clone());
                }
                indicator(
                    Kind::Fingerprint,
                    Some("ja4"),
                    v,
                    vec!["a".into(), "b".into(), "c".into()],
                )
            }
            16 => {
                let v = rng.ja4();
                let mut p: Vec<&str> = v.split('_').collect();
                p[1] = "*";
                indicator(
                    Kind::Fingerprint,
                    Some("ja4"),
                    p.join("_"),
                    vec!["a".into(), "c".into()],
                )
            }
            17 => indicator(
                Kind::Combination,
                None,
                format!("ja4={}+ja4s=t130200_1301_{}", rng.ja4(), rng.hex12()),
                Vec::new(),
            ),
            _ => {
                let prefix = 16 + (rng.next() % 17) as u32;
                let a = (rng.next() as u32) & (u32::MAX << (32 - prefix));
                indicator(
                    Kind::Ip,
                    None,
                    format!("{}/{prefix}", Ipv4Addr::from(a)),
                    Vec::new(),
                )
            }
        };
        list.push(ind);
    }
    let t0 = Instant::now();
    let matcher = Matcher::build(list, 0);
    let build = t0.elapsed();
    println!(
        "matcher: {} indicators indexed in {:.2} s",
        matcher.len(),
        build.as_secs_f64()
    );

    let dir = geo_dir();
    let t0 = Instant::now();
    let geo = Geo::open(
        Some(&dir.join("iptoasn-country.mmdb")),
        &[dir.join("asn-ipv4.csv"), dir.join("asn-ipv6.csv")],
    )
    .expect("geolocation files");
    println!("geo: loaded in {:.2} s", t0.elapsed().as_secs_f64());

    let evs: Vec<FingerprintEvent> = (0..events)
        .map(|i| {
            let ip = Ipv4Addr::from(rng.next() as u32);
            let mut e = FingerprintEvent::new(
                "agent",
                "host",
                Flow {
                    src_ip: "10.0.0.1".parse().unwrap(),
                    src_port: 40000,
                    dst_ip: IpAddr::V4(ip),
                    dst_port: 443,
                    transport: Transport::Tcp,
                },
            );
            let ja4 = if i % 10 == 0 && !known.is_empty() {
                known[i % known.len()].clone()
            } else {
                rng.ja4()
            };
            e.server_name = Some("api.example.com".into());
            e.fingerprints = vec![
                Fingerprint {
                    method: Method::Ja4,
                    value: ja4,
                },
                Fingerprint {
                    method: Method::Ja4s,
                    value: format!("t130200_1301_{}", rng.hex12()),
                },
                Fingerprint {
                    method: Method::Ja4t,
                    value: "64240_2-4-8-1-3_1460_7".into(),
                },
            ];
            e.workload.key = Some(format!("host/w{}", i % 100));
            e
        })
        .collect();

    let mut judge_ns = Vec::with_capacity(events);
    let mut hits = 0usize;
    for e in &evs {
        let t = Instant::now();
        let j = matcher.judge(e, e.flow.dst_ip);
        judge_ns.push(t.elapsed().as_nanos() as u64);
        hits += j.hits.len();
    }
    let (mean, p50, p99, p999) = percentiles(judge_ns);
    println!(
        "judge (matcher only): mean {mean:.2} µs, p50 {p50:.2} µs, p99 {p99:.2} µs, p99.9 {p999:.2} µs ({hits} hits over {events} events)"
    );

    // Events with a suspicious or malicious hit also build a threat match (summary, evidence,
    // attributes): timed apart, since in a fleet they are the rare ones.
    let mut enrich_ns = Vec::with_capacity(events);
    let (mut plain_ns, mut matched_ns) = (Vec::new(), Vec::new());
    for e in &evs {
        let t = Instant::now();
        let j = judge_batch(&matcher, &geo, std::iter::once(e));
        let ns = t.elapsed().as_nanos() as u64;
        enrich_ns.push(ns);
        if j.matched_events > 0 {
            matched_ns.push(ns);
        } else {
            plain_ns.push(ns);
        }
        std::hint::black_box(j);
    }
    for (what, ns) in [
        ("all events", enrich_ns),
        ("events without a match", plain_ns),
        ("events with a match", matched_ns),
    ] {
        let n = ns.len();
        let (mean, p50, p99, p999) = percentiles(ns);
        println!(
            "enrichment per event (judge + country + ASN + bookkeeping), {what} ({n}): mean {mean:.2} µs, p50 {p50:.2} µs, p99 {p99:.2} µs, p99.9 {p999:.2} µs"
        );
    }

    let mut ip_ns = Vec::with_capacity(events);
    for e in &evs {
        let t = Instant::now();
        let p = geo.lookup(e.flow.dst_ip);
        ip_ns.push(t.elapsed().as_nanos() as u64);
        std::hint::black_box(p);
    }
    let (mean, p50, p99, p999) = percentiles(ip_ns);
    println!(
        "IP lookup (country + ASN): mean {mean:.2} µs, p50 {p50:.2} µs, p99 {p99:.2} µs, p99.9 {p999:.2} µs"
    );
}
