//! The replay benchmark (`cargo bench -p hais-correlation --bench replay [-- --identities N
//! --events N --days N --seed N]`): the correlation detectors (crate `hais-correlation`) over a synthetic
//! fleet, measuring what the issue asks: the share of injected anomalies found, false findings
//! per 1,000 identity-days, events per second through the detector stage on one core, and the
//! memory a baseline takes.
//!
//! The fleet (seeded, reproducible): `--identities` workloads (default 10,000) sending
//! `--events` flows (default 1,000,000) spread evenly over `--days` simulated days (14). Each
//! identity runs one of 40 client stacks (JA4 + JA4T) against two destinations (JA4LS with its
//! hop count and a TCP/TLS latency gap); half of its TLS connections resume a session (another
//! plain JA4, the same resumption-stable key), hops flap by one now and then, the gap is noisy;
//! one in ten identities opens SSH sessions (file transfers, or interactive ones while
//! learning). From day 8, 1% of the identities per detector kind get an anomaly: another client
//! stack (new-fingerprint), a new tool spreading over groups of five identities within the hour
//! (shared-fingerprint), four more hops to a destination (path-change), a reverse shell from an
//! identity that never had an interactive session (ssh-session).
//!
//! Prints one JSON object; figures go to benches/README.md.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use hais_correlation::observation::{Presented, Side};
use hais_correlation::{Config, Detector, Engine, Observation, SECOND_US};
use hais_shared::fingerprint::Method;
use uuid::Uuid;

const DAY_US: i64 = 86_400 * SECOND_US;

/// SplitMix64: enough randomness for a reproducible synthetic fleet.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}
const STACKS: u64 = 40;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    NewFingerprint,
    Shared,
    Path,
    Ssh,
}

/// One identity of the fleet.
struct Workload {
    stack: u64,
    hops: [u32; 2],
    ssh: bool,
    /// The anomaly injected, and from when.
    anomaly: Option<(Kind, i64)>,
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ja4(stack: u64, resumed: bool) -> (String, String) {
    let stable = format!(
        "t13d{:02}12h2_{stack:012x}_{:012x}",
        10 + stack % 20,
        stack * 7
    );
    let plain = if resumed {
        format!(
            "t13d{:02}13h2_{stack:012x}_{:012x}",
            10 + stack % 20,
            stack * 7 + 1
        )
    } else {
        stable.clone()
    };
    (stable, plain)
}

fn presented(method: Method, key: String, value: String) -> Presented {
    Presented {
        method,
        key,
        value,
        side: Side::Own,
    }
}

fn main() {
    let n_ids = arg("--identities", 10_000) as usize;
    let n_events = arg("--events", 1_000_000);
    let days = arg("--days", 14) as i64;
    let mut rng = Rng::new(arg("--seed", 1));
    let config = Config {
        learning_period_us: 3 * DAY_US,
        learning_min_flows: 20,
        ssh_session: true,
        ..Config::default()
    };
    let per_kind = (n_ids / 100).max(5);
    let start = 1_800_000_000 * SECOND_US;
    let mut fleet: Vec<Workload> = (0..n_ids)
        .map(|i| Workload {
            stack: rng.below(STACKS),
            hops: [rng.range(2, 12) as u32, rng.range(2, 12) as u32],
            ssh: i % 10 == 0,
            anomaly: None,
        })
        .collect();
    // Injections: identities in blocks per kind, at random times of days 8 to days-1.
    let inject_at =
        |rng: &mut Rng| start + 7 * DAY_US + rng.below((days as u64 - 8) * DAY_US as u64) as i64;
    let mut k = 1;
    for kind in [Kind::NewFingerprint, Kind::Shared, Kind::Path, Kind::Ssh] {
        let mut group_at = 0;
        for j in 0..per_kind {
            // ssh-session needs an identity with SSH sessions and no interactive one: the
            // fleet's SSH users are every tenth; take those for that kind.
            let i = if kind == Kind::Ssh {
                (k * 10) % n_ids
            } else {
                k * 10 + 1 + j % 9
            };
            k += 1;
            let at = match kind {
                // Groups of five start within the same hour.
                Kind::Shared if j % 5 == 0 => {
                    group_at = inject_at(&mut rng);
                    group_at
                }
                Kind::Shared => group_at + rng.below(3000) as i64 * SECOND_US,
                _ => inject_at(&mut rng),
            };
            fleet[i % n_ids].anomaly = Some((kind, at));
        }
    }
    // The spreading tool of shared-fingerprint group `g`: a client stack no one else runs.
    let shared_tool = |g: usize| 1_000 + g as u64;
    let injected: BTreeSet<(usize, Kind)> = fleet
        .iter()
        .enumerate()
        .filter_map(|(i, w)| w.anomaly.map(|(k, _)| (i, k)))
        .collect();
    // Which group each shared-fingerprint identity is in.
    let mut shared_group: BTreeMap<usize, usize> = BTreeMap::new();
    for (n, (i, _)) in injected
        .iter()
        .filter(|(_, k)| *k == Kind::Shared)
        .enumerate()
    {
        shared_group.insert(*i, n / 5);
    }

    let mut engine = Engine::new(config);
    let mut findings: BTreeMap<(String, Detector), u64> = BTreeMap::new();
    let mut busy = std::time::Duration::ZERO;
    let mut judged = 0u64;
    let per_day = n_events / days as u64;
    let mut n = 0u128;
    for day in 0..days {
        // The day's flows: random identities at random times, plus one flow of each
        // injected identity at the moment its anomaly starts (a spreading tool must really be
        // presented within the hour).
        let day_start = start + day * DAY_US;
        let mut picks: Vec<(usize, i64)> = (0..per_day)
            .map(|_| {
                (
                    rng.below(n_ids as u64) as usize,
                    day_start + rng.below(DAY_US as u64) as i64,
                )
            })
            .collect();
        for (i, w) in fleet.iter().enumerate() {
            if let Some((_, at)) = w.anomaly
                && (day_start..day_start + DAY_US).contains(&at)
            {
                picks.push((i, at));
            }
        }
        let mut batch: Vec<Observation> = picks
            .into_iter()
            .map(|(i, ts)| {
                n += 1;
                let w = &fleet[i];
                let active = w.anomaly.filter(|(_, at)| ts >= *at).map(|(k, _)| k);
                let dest = rng.below(2) as usize;
                let stack = match (active, shared_group.get(&i)) {
                    (Some(Kind::NewFingerprint), _) => (w.stack + 1) % STACKS,
                    (Some(Kind::Shared), Some(g)) => shared_tool(*g),
                    _ => w.stack,
                };
                let (stable, plain) = ja4(stack, rng.chance(0.5));
                let mut o = Observation {
                    event_id: Uuid::from_u128(n),
                    ts_us: ts,
                    identity: format!("spiffe://bench.example/w/{i}"),
                    destination: format!("api-{i}-{dest}.example:443"),
                    presented: vec![
                        presented(Method::Ja4, stable, plain),
                        presented(
                            Method::Ja4t,
                            format!("64240_2-4-8-1-3_1460_{}", w.stack % 3),
                            format!("64240_2-4-8-1-3_1460_{}", w.stack % 3),
                        ),
                    ],
                    ssh: Vec::new(),
                    ja4ls: None,
                    attributes: BTreeMap::new(),
                };
                let flap = u32::from(rng.chance(0.05));
                let extra = if active == Some(Kind::Path) && dest == 0 {
                    4
                } else {
                    0
                };
                let gap = 3000 + (rng.unit() * 600.0) as u64;
                o.ja4ls = Some(format!(
                    "1000_{}_{}",
                    64 - w.hops[dest] - flap - extra,
                    1000 + gap
                ));
                if w.ssh && (rng.chance(0.3) || active == Some(Kind::Ssh)) {
                    o.presented.clear();
                    o.ja4ls = None;
                    o.ssh.push(match active {
                        Some(Kind::Ssh) => "c76s76_c71s59_c0s70".into(),
                        _ => "c112s1460_c0s179_c21s0".into(),
                    });
                }
                o
            })
            .collect();
        batch.sort_by_key(|o| o.ts_us);
        let t = Instant::now();
        for o in &batch {
            engine.observe(o);
        }
        let changes = engine.take_changes();
        busy += t.elapsed();
        judged += batch.len() as u64;
        for f in changes.findings {
            *findings
                .entry((f.key.identity.clone(), f.key.detector))
                .or_default() += f.count;
        }
    }

    // Found: an injected (identity, kind) with a finding of its detector.
    let detector_of = |k: Kind| match k {
        Kind::NewFingerprint => Detector::NewFingerprint,
        Kind::Shared => Detector::SharedFingerprint,
        Kind::Path => Detector::PathChange,
        Kind::Ssh => Detector::SshSession,
    };
    let id = |i: usize| format!("spiffe://bench.example/w/{i}");
    let found = injected
        .iter()
        .filter(|(i, k)| findings.contains_key(&(id(*i), detector_of(*k))))
        .count();
    // False: a finding of an identity that got no injection, or of another detector than the
    // injection's (new-fingerprint also fires, rightly, for a spreading tool).
    let false_findings = findings
        .keys()
        .filter(|(identity, d)| {
            let i: usize = identity.rsplit('/').next().unwrap().parse().unwrap();
            match fleet[i].anomaly {
                None => true,
                Some((Kind::Shared, _)) => {
                    !matches!(d, Detector::SharedFingerprint | Detector::NewFingerprint)
                }
                Some((k, _)) => *d != detector_of(k),
            }
        })
        .count();
    let mut found_by_kind = serde_json::Map::new();
    for (kind, name) in [
        (Kind::NewFingerprint, "new-fingerprint"),
        (Kind::Shared, "shared-fingerprint"),
        (Kind::Path, "path-change"),
        (Kind::Ssh, "ssh-session"),
    ] {
        let of: Vec<_> = injected.iter().filter(|(_, k)| *k == kind).collect();
        let hit = of
            .iter()
            .filter(|(i, k)| findings.contains_key(&(id(*i), detector_of(*k))))
            .count();
        found_by_kind.insert(name.into(), serde_json::json!([hit, of.len()]));
    }
    let mut bytes = 0usize;
    for i in 0..n_ids {
        if let Some(b) = engine.baseline(&id(i)) {
            bytes += serde_json::to_vec(b).unwrap().len();
        }
    }
    let identity_days = n_ids as f64 * days as f64;
    let out = serde_json::json!({
        "identities": n_ids,
        "events": judged,
        "days": days,
        "injected": injected.len(),
        "found": found,
        "found_share": found as f64 / injected.len() as f64,
        "found_by_detector": found_by_kind,
        "false_findings": false_findings,
        "false_per_1000_identity_days": false_findings as f64 * 1000.0 / identity_days,
        "detector_seconds": busy.as_secs_f64(),
        "events_per_second": judged as f64 / busy.as_secs_f64(),
        "baseline_json_bytes_mean": bytes / n_ids.max(1),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
}
