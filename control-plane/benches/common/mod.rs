//! Synthetic events shared by the control plane's benchmarks (`store.rs`, `bus.rs`,
//! `retention.rs`), so that their figures are of the same data.
//!
//! The data is deterministic and shaped like a fleet: 200 agents each sending its own batches
//! of 1,000; per event a JA4 and a JA4S drawn from skewed distributions (a few values are very
//! common, most are rare; 20,000 JA4, 2,000 JA4S, 5,000 server names fleet-wide), a server name
//! on 80% of events, timestamps spread over the last 7 days; each event is attributed to one of
//! 20 executables of its host (the workload key the durable bus partitions by).

// Each benchmark is its own crate and uses part of this module.
#![allow(dead_code)]

use hais_shared::event::{Fingerprint, FingerprintEvent, Flow, Transport};
use hais_shared::fingerprint::Method;

pub const BATCH: usize = 1000;
pub const AGENTS: u64 = 200;
pub const JA4_VALUES: u64 = 20_000;
pub const JA4S_VALUES: u64 = 2_000;
pub const SNIS: u64 = 5_000;

/// xorshift64*: deterministic and dependency-free.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Skewed pick in 0..n: small indexes are much more frequent.
    pub fn skewed(&mut self, n: u64) -> u64 {
        ((self.unit().powi(3)) * n as f64) as u64
    }
}

pub fn ja4(i: u64) -> String {
    format!(
        "t13d{:02}{:02}h2_{:012x}_{:012x}",
        10 + i % 9,
        5 + i % 11,
        i.wrapping_mul(0x9e37_79b9),
        i
    )
}

pub fn ja4s(i: u64) -> String {
    format!("t1302{:02}_1301_{:012x}", i % 7, i)
}

/// How diverse each agent's traffic is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Each host has its own small repertoire (40 JA4, 20 JA4S, 100 server names) drawn from the
    /// fleet-wide skewed distributions: a host runs a few TLS stacks talking to a few services.
    Fleet,
    /// Every event draws from the fleet-wide distributions: a worst case for roll-up volume.
    Wide,
}

/// One agent's repertoire (Fleet profile).
struct Repertoire {
    ja4: Vec<u64>,
    ja4s: Vec<u64>,
    sni: Vec<u64>,
}

fn repertoire(agent: u64) -> Repertoire {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ (agent + 1).wrapping_mul(0x1000_0000_01b3));
    Repertoire {
        ja4: (0..40).map(|_| r.skewed(JA4_VALUES)).collect(),
        ja4s: (0..20).map(|_| r.skewed(JA4S_VALUES)).collect(),
        sni: (0..100).map(|_| r.skewed(SNIS)).collect(),
    }
}

/// An event of agent `agent` at `ts` (its id a UUIDv7 of that time), without fingerprints.
pub fn event(agent: u64, src_port: u16, ts: time::OffsetDateTime) -> FingerprintEvent {
    let mut e = FingerprintEvent::new(
        format!("agent-{agent:03}"),
        format!("host-{agent:03}.prod"),
        Flow {
            src_ip: "10.0.0.1".parse().unwrap(),
            src_port,
            dst_ip: "192.0.2.1".parse().unwrap(),
            dst_port: 443,
            transport: Transport::Tcp,
        },
    );
    e.timestamp = ts;
    e.id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        ts.unix_timestamp() as u64,
        ts.nanosecond(),
    ));
    e
}

/// `total` events in batches of [`BATCH`], each batch one agent's.
pub fn make_batches(total: usize, seed: u64, profile: Profile) -> Vec<Vec<FingerprintEvent>> {
    let mut rng = Rng(seed | 1);
    let reps: Vec<Repertoire> = (0..AGENTS).map(repertoire).collect();
    let now = time::OffsetDateTime::now_utc();
    let span_secs = 7 * 86_400u64;
    let mut out = Vec::with_capacity(total / BATCH + 1);
    let mut made = 0;
    while made < total {
        let n = BATCH.min(total - made);
        let agent = rng.next() % AGENTS;
        let rep = &reps[agent as usize];
        let mut batch = Vec::with_capacity(n);
        // Each batch covers a short stretch of time, like a real agent flushing its spool.
        let base = rng.next() % span_secs;
        for k in 0..n {
            let ts = now - time::Duration::seconds((base + (k as u64 % 60)) as i64);
            let mut e = event(agent, 40000 + (k as u16 % 20000), ts);
            let (j, js, sni) = match profile {
                Profile::Fleet => (
                    rep.ja4[rng.skewed(rep.ja4.len() as u64) as usize],
                    rep.ja4s[rng.skewed(rep.ja4s.len() as u64) as usize],
                    rep.sni[rng.skewed(rep.sni.len() as u64) as usize],
                ),
                Profile::Wide => (
                    rng.skewed(JA4_VALUES),
                    rng.skewed(JA4S_VALUES),
                    rng.skewed(SNIS),
                ),
            };
            if rng.unit() < 0.8 {
                e.server_name = Some(format!("svc-{sni}.example.com"));
            }
            e.workload.exe = Some(format!("/usr/bin/app{}", k % 20));
            e.workload.user = Some("svc".into());
            e.fingerprints = vec![
                Fingerprint {
                    method: Method::Ja4,
                    value: ja4(j),
                },
                Fingerprint {
                    method: Method::Ja4s,
                    value: ja4s(js),
                },
            ];
            batch.push(e);
        }
        made += n;
        out.push(batch);
    }
    out
}
