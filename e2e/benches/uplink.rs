//! End-to-end uplink benchmark: events from the agent's spool to committed in the control plane.
//!
//! ```text
//! cargo bench -p hais-e2e --bench uplink -- [--store sqlite|postgres] [--events 300000]
//!     [--rate 1000] [--seconds 20] [--json]
//! ```
//!
//! Starts the real `hais-control-plane` (embedded SQLite, or PostgreSQL at
//! postgres://postgres@127.0.0.1:5432/test in a fresh schema), enrolls an agent identity with a
//! join token, and drives the agent's own spool and QUIC uplink (the library code `hais-agent run`
//! uses) over one connection:
//! * throughput: `--events` events already in the spool, timed until every one is acknowledged
//!   (an ack is sent only after the control plane committed the batch);
//! * latency: `--rate` events/s appended for `--seconds`; each event's latency is from its append
//!   to the spool (the moment a flow's event exists in the agent) to the ack that covers it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hais_agent::status::AgentStatus;
use hais_agent::uplink::events::encode;
use hais_agent::uplink::quic::{Uplink, UplinkOptions};
use hais_agent::uplink::spool::{Spool, SpoolOptions};
use hais_e2e::cluster::{Agent, ControlPlane};
use hais_shared::event::{Fingerprint, FingerprintEvent, Flow, Transport};
use hais_shared::fingerprint::Method;

struct Args {
    store: String,
    events: u64,
    rate: u64,
    seconds: u64,
    json: bool,
    in_flight: usize,
    batch: usize,
}

fn args() -> Args {
    let mut a = Args {
        store: "sqlite".into(),
        events: 300_000,
        rate: 1000,
        seconds: 20,
        json: false,
        in_flight: 8,
        batch: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--store" => a.store = it.next().expect("sqlite|postgres"),
            "--events" => a.events = it.next().and_then(|v| v.parse().ok()).expect("N"),
            "--rate" => a.rate = it.next().and_then(|v| v.parse().ok()).expect("N"),
            "--seconds" => a.seconds = it.next().and_then(|v| v.parse().ok()).expect("N"),
            "--json" => a.json = true,
            "--in-flight" => a.in_flight = it.next().and_then(|v| v.parse().ok()).expect("N"),
            "--batch" => a.batch = it.next().and_then(|v| v.parse().ok()).expect("N"),
            _ => {}
        }
    }
    a
}

/// A realistic event: a TLS client flow with JA4, JA4S and JA4T from a fleet-like spread of
/// values (a few hundred distinct fingerprints, many connections each).
fn event(agent_id: &str, i: u64) -> Vec<u8> {
    let mut e = FingerprintEvent::new(
        agent_id,
        "bench-host",
        Flow {
            src_ip: format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255)
                .parse()
                .unwrap(),
            src_port: 1024 + (i % 60000) as u16,
            dst_ip: "192.0.2.10".parse().unwrap(),
            dst_port: 443,
            transport: Transport::Tcp,
        },
    );
    e.server_name = Some(format!("svc{}.example.com", i % 50));
    for (m, v) in [
        (
            Method::Ja4,
            format!("t13d1516h2_8daaf6152771_{:012x}", i % 300),
        ),
        (Method::Ja4s, format!("t130200_1301_{:012x}", i % 40)),
        (Method::Ja4t, format!("64240_2-4-8-1-3_1460_{}", i % 7)),
    ] {
        e.fingerprints.push(Fingerprint {
            method: m,
            value: v,
        });
    }
    encode(&e)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let a = args();
    let dir = std::env::temp_dir().join(format!("hais-bench-uplink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let schema = format!("bench_uplink_{}", std::process::id());
    let pg_env = [
        (
            "HAIS_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        ),
        ("HAIS_DATABASE_SCHEMA", schema.as_str()),
    ];
    let env: &[(&str, &str)] = if a.store == "postgres" { &pg_env } else { &[] };
    let cp = ControlPlane::start(&dir.join("cp"), env);
    let agent = Agent::new(&dir.join("agent"));
    let (ok, out) = agent.enroll(cp.uplink, &cp.token());
    assert!(ok, "enroll: {out}");
    let (svid, bundle) = hais_svid::Svid::load(&agent.state_dir).unwrap();
    let agent_id = svid.spiffe_id.agent_id().unwrap().to_owned();

    let open = |name: &str| {
        let spool = Spool::open(SpoolOptions::new(dir.join(name), 8 << 30)).unwrap();
        Arc::new(Mutex::new(spool))
    };
    let start = |spool: &Arc<Mutex<Spool>>| {
        let status = Arc::new(AgentStatus::new(vec![], Some(spool.clone())));
        let mut opts = UplinkOptions::new(cp.uplink.to_string(), &agent.state_dir);
        opts.max_in_flight = a.in_flight;
        opts.batch_events = a.batch;
        Uplink::start(opts, svid.clone(), bundle.clone(), spool.clone(), status).unwrap()
    };
    let acked = |spool: &Arc<Mutex<Spool>>| spool.lock().unwrap().stats().acked;

    // Throughput: a full spool drained over one connection.
    let spool = open("spool-throughput");
    {
        let mut s = spool.lock().unwrap();
        let mut n = 0;
        while n < a.events {
            let chunk: Vec<Vec<u8>> = (n..(n + 1000).min(a.events))
                .map(|i| event(&agent_id, i))
                .collect();
            s.append(&chunk).unwrap();
            n += chunk.len() as u64;
        }
        s.sync().unwrap();
    }
    let t0 = Instant::now();
    let up = start(&spool);
    up.waker().notify_one();
    while acked(&spool) < a.events {
        assert!(t0.elapsed() < Duration::from_secs(1800), "stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    let drain = t0.elapsed();
    up.stop();
    let throughput = a.events as f64 / drain.as_secs_f64();

    // Latency at a steady rate.
    let spool = open("spool-latency");
    let up = start(&spool);
    let waker = up.waker();
    let total = a.rate * a.seconds;
    let mut appended_at = Vec::with_capacity(total as usize);
    let mut latencies = Vec::with_capacity(total as usize);
    let t0 = Instant::now();
    let mut seen = 0u64;
    let base = a.events; // distinct ids/addresses from the first phase
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / a.rate as f64);
        // Poll acks while waiting for the next event's time.
        loop {
            let now = Instant::now();
            let done = acked(&spool);
            while seen < done {
                latencies.push(now.duration_since(appended_at[seen as usize]).as_secs_f64());
                seen += 1;
            }
            if now >= due {
                break;
            }
            std::thread::sleep((due - now).min(Duration::from_micros(500)));
        }
        spool
            .lock()
            .unwrap()
            .append(&[event(&agent_id, base + i)])
            .unwrap();
        appended_at.push(Instant::now());
        waker.notify_one();
    }
    while seen < total {
        let now = Instant::now();
        let done = acked(&spool);
        while seen < done {
            latencies.push(now.duration_since(appended_at[seen as usize]).as_secs_f64());
            seen += 1;
        }
        assert!(
            now.duration_since(t0) < Duration::from_secs(a.seconds + 120),
            "stalled"
        );
        std::thread::sleep(Duration::from_micros(500));
    }
    up.stop();
    latencies.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let result = serde_json::json!({
        "store": a.store,
        "in_flight": a.in_flight,
        "batch": a.batch,
        "throughput_events": a.events,
        "throughput_events_per_s": throughput.round(),
        "drain_s": drain.as_secs_f64(),
        "latency_rate_per_s": a.rate,
        "latency_events": total,
        "latency_p50_ms": percentile(&latencies, 0.5) * 1e3,
        "latency_p99_ms": percentile(&latencies, 0.99) * 1e3,
        "latency_max_ms": latencies.last().copied().unwrap_or(0.0) * 1e3,
    });
    if a.json {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result).unwrap());
    }
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}
