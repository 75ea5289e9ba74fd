//! No loss, no duplicates: ≥ 100,000 events stream from a live agent while the control plane is
//! killed with SIGKILL and restarted, and while the network path is cut for 30 s. Afterwards the
//! control plane must hold every event the agent produced, each exactly once.
//!
//! And no stranded fleet: with SVIDs shortened to 20 s, the control plane stays down until
//! every agent's SVID has expired; when it is back, each agent renews its expired SVID by
//! itself (proving it holds the key) and delivers its spool, every event stored once.
//!
//! The events are real: 100,000 TCP connections on loopback, each fingerprinted (JA4T/JA4TS)
//! by `hais-agent run -i lo`. The uplink goes through a UDP relay the test cuts. Needs root or
//! CAP_NET_RAW (capture on `lo`); without it the test says so and passes vacuously.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hais_e2e::cluster::{Agent, ControlPlane, can_capture};
use hais_e2e::proc::wait_for;
use hais_e2e::relay::UdpRelay;
use serde_json::Value;

/// Events the agent must produce (one per connection that it captured).
const EVENTS: u64 = 100_000;
/// Connections per second per load thread (two threads).
const RATE_PER_THREAD: f64 = 1000.0;
/// Listening ports: the connections spread over several so that the client's ephemeral ports
/// (unique per destination) never run out, even with TIME_WAIT.
const PORTS: usize = 8;

/// Events the agent produced and the spool's losses, from `hais-agent status`.
fn produced(agent: &Agent) -> Option<(u64, u64, u64)> {
    let s = agent.status()?;
    let events: u64 = s["interfaces"]
        .as_array()?
        .iter()
        .filter_map(|i| i["events"].as_u64())
        .sum();
    let depth = s["spool"]["depth"].as_u64()?;
    let dropped = s["spool"]["dropped"].as_u64()?;
    Some((events, depth, dropped))
}

/// Events of `agent_id` in the control plane's SQLite database, read with Python's sqlite3
/// module (an independent reader of the file): `(rows, distinct ids)`.
fn stored(cp: &ControlPlane, agent_id: &str) -> (u64, u64) {
    let db = cp.dir.join("hais.db");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro', uri=True); \
             print(*c.execute('SELECT count(*), count(DISTINCT id) FROM events WHERE agent_id=?', \
             (sys.argv[2],)).fetchone())",
        ])
        .arg(&db)
        .arg(agent_id)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!(
            "reading {}: {}",
            db.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Sum of the roll-up counts of the JA4T fingerprints this agent reported, through the API: the
/// roll-ups must count each stored event once too.
fn ja4t_rollup(cp: &ControlPlane, token: &str, agent_id: &str) -> u64 {
    let mut total = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/ja4/fingerprints?method=ja4t&agent={agent_id}&limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (st, body) = cp.get(token, &path);
        assert_eq!(st, 200, "{body}");
        total += body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["count"].as_u64().unwrap())
            .sum::<u64>();
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return total,
        }
    }
}

#[test]
fn every_event_is_stored_exactly_once_across_a_crash_and_an_outage() {
    if !can_capture() {
        eprintln!("skipped: capturing on lo needs root or CAP_NET_RAW");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = std::env::temp_dir().join(format!("hais-faults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cp = ControlPlane::start(&dir.join("cp"), &[]);
    let relay = rt.block_on(UdpRelay::start(cp.uplink)).unwrap();

    let mut agent = Agent::new(&dir.join("agent"));
    // Attribution is not what this test is about; leave its CPU to capture.
    agent.env.push(("HAIS_ATTRIBUTION".into(), "0".into()));
    let (ok, out) = agent.enroll(cp.uplink, &cp.token());
    assert!(ok, "enroll: {out}");
    let agent_id = out
        .split("/hais/agent/")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the agent id in enroll's output")
        .to_owned();

    // Servers that accept and close at once (the server closing first keeps TIME_WAIT off the
    // client's ports).
    let listeners: Vec<TcpListener> = (0..PORTS)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    for l in listeners {
        std::thread::spawn(move || {
            for s in l.incoming() {
                drop(s);
            }
        });
    }
    let bpf = addrs
        .iter()
        .map(|a| format!("tcp port {}", a.port()))
        .collect::<Vec<_>>()
        .join(" or ");
    agent.run(
        relay.addr(),
        &["-i", "lo", "--bpf", &bpf, "--idle-timeout", "1"],
    );
    wait_for("the uplink to connect", Duration::from_secs(30), || {
        (agent.status()?["uplink"]["state"] == "connected").then_some(())
    });

    // Load: paced connections until the agent has produced EVENTS events. Pacing keeps the
    // capture within what a loaded 2-core machine can take; the test is about delivery.
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let (stop, made, addrs) = (stop.clone(), made.clone(), addrs.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1];
                let t0 = Instant::now();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = t0 + Duration::from_secs_f64(i as f64 / RATE_PER_THREAD);
                    if let Some(d) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    if let Ok(mut s) = TcpStream::connect(addrs[(i as usize + w) % PORTS]) {
                        let _ = s.read(&mut buf);
                    }
                    made.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();

    let t0 = Instant::now();
    let at = |n: u64| {
        wait_for("the agent's events", Duration::from_secs(900), || {
            std::thread::sleep(Duration::from_secs(1));
            (produced(&agent)?.0 >= n).then_some(())
        })
    };
    // 1. The control plane crashes and comes back on the same data.
    at(EVENTS / 5);
    cp.kill9();
    std::thread::sleep(Duration::from_secs(3));
    cp.restart();
    eprintln!("control plane killed and restarted at {:?}", t0.elapsed());
    // 2. The path is cut for 30 s while events keep coming.
    at(EVENTS / 2);
    relay.set_cut(true);
    std::thread::sleep(Duration::from_secs(30));
    relay.set_cut(false);
    eprintln!(
        "path cut for 30 s ({} datagrams dropped), restored at {:?}",
        relay.dropped(),
        t0.elapsed()
    );
    at(EVENTS);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    eprintln!(
        "{} connections made in {:?}",
        made.load(Ordering::Relaxed),
        t0.elapsed()
    );

    // The agent finishes the last flows (idle timeout) and drains its spool.
    let (events, dropped) = wait_for("the spool to drain", Duration::from_secs(300), || {
        let (a, depth, dropped) = produced(&agent)?;
        std::thread::sleep(Duration::from_secs(3));
        let (b, depth2, _) = produced(&agent)?;
        (a == b && depth == 0 && depth2 == 0).then_some((b, dropped))
    });
    assert_eq!(dropped, 0, "the spool never had to drop");
    assert!(events >= EVENTS, "{events} events:\n{}", agent.log());
    let (rows, distinct) = stored(&cp, &agent_id);
    let token = cp.login();
    let rollup = ja4t_rollup(&cp, &token, &agent_id);
    let st = agent.status().unwrap_or(Value::Null);
    eprintln!(
        "produced {events}, stored {rows} ({distinct} distinct ids), JA4T roll-ups {rollup}; \
         agent view: stored {} duplicates {} rejected {}",
        st["uplink"]["events_stored"],
        st["uplink"]["events_duplicate"],
        st["uplink"]["events_rejected"]
    );
    assert_eq!(rows, events, "every event stored");
    assert_eq!(distinct, rows, "none stored twice");
    // Each event carries at most one JA4T (a flow whose SYN was not captured has none).
    assert!(
        rollup <= rows && rollup >= rows * 99 / 100,
        "roll-ups {rollup} vs {rows}"
    );
    assert_eq!(st["uplink"]["events_rejected"], 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Makes `n` TCP connections to `addr` (the server closes each at once).
fn connections(addr: SocketAddr, n: usize) {
    let mut buf = [0u8; 1];
    for _ in 0..n {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let _ = s.read(&mut buf);
        }
    }
}

/// The agent's SVID expiry (s since the epoch) and its uplink's problem, from `status`.
fn identity_state(agent: &Agent) -> Option<(i64, Option<String>)> {
    let s = agent.status()?;
    let u = &s["uplink"];
    Some((
        u["svid_expiry_unix"].as_i64()?,
        u["problem"].as_str().map(str::to_owned),
    ))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn agents_recover_alone_after_an_outage_longer_than_their_svid_lifetime() {
    if !can_capture() {
        eprintln!("skipped: capturing on lo needs root or CAP_NET_RAW");
        return;
    }
    const AGENTS: usize = 2;
    let dir = std::env::temp_dir().join(format!("hais-faults-expiry-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cp = ControlPlane::start(&dir.join("cp"), &[("HAIS_SPIRE_SVID_TTL", "20s")]);

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let bpf = format!("tcp port {}", target.port());
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let mut agent = Agent::new(&dir.join(format!("agent{i}")));
        agent.env.push(("HAIS_ATTRIBUTION".into(), "0".into()));
        let (ok, out) = agent.enroll(cp.uplink, &cp.token());
        assert!(ok, "enroll: {out}");
        let agent_id = out
            .split("/hais/agent/")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("the agent id in enroll's output")
            .to_owned();
        agent.run(
            cp.uplink,
            &["-i", "lo", "--bpf", &bpf, "--idle-timeout", "1"],
        );
        agents.push((agent, agent_id));
    }
    for (agent, _) in &agents {
        wait_for("the uplink to connect", Duration::from_secs(60), || {
            (agent.status()?["uplink"]["state"] == "connected").then_some(())
        });
    }
    let produced_at_least = |n: u64| {
        for (agent, _) in &agents {
            wait_for("the agent's events", Duration::from_secs(120), || {
                (produced(agent)?.0 >= n).then_some(())
            });
        }
    };
    connections(target, 50);
    produced_at_least(50);

    // Down for longer than the SVIDs live: events keep coming and wait in the spools.
    cp.kill9();
    let down = Instant::now();
    connections(target, 100);
    produced_at_least(150);
    for (agent, _) in &agents {
        // Expired by the agent's own account, and it says so.
        let problem = wait_for(
            "the agent to report its expired SVID",
            Duration::from_secs(180),
            || match identity_state(agent)? {
                (exp, Some(p)) if exp < unix_now() && p.contains("expired") => Some(p),
                _ => None,
            },
        );
        assert!(
            problem.contains("by itself") || problem.contains("unreachable"),
            "{problem}"
        );
        assert!(produced(agent).unwrap().1 > 0, "events wait in the spool");
    }
    eprintln!(
        "control plane down for {:?}; every SVID expired",
        down.elapsed()
    );
    cp.restart();

    // Back: each agent renews its expired SVID and delivers, with nobody's help.
    for (agent, agent_id) in &agents {
        let (events, dropped) = wait_for(
            "the agent to reconnect and drain its spool",
            Duration::from_secs(180),
            || {
                let s = agent.status()?;
                let connected =
                    s["uplink"]["state"] == "connected" && s["uplink"]["problem"].is_null();
                let (a, depth, dropped) = produced(agent)?;
                std::thread::sleep(Duration::from_secs(2));
                let (b, depth2, _) = produced(agent)?;
                (connected && a == b && depth == 0 && depth2 == 0).then_some((b, dropped))
            },
        );
        assert_eq!(dropped, 0, "the spool never had to drop");
        let (exp, _) = identity_state(agent).unwrap();
        assert!(exp > unix_now(), "a fresh SVID");
        let (rows, distinct) = stored(&cp, agent_id);
        eprintln!("agent {agent_id}: produced {events}, stored {rows} ({distinct} distinct)");
        assert_eq!(rows, events, "every event stored:\n{}", agent.log());
        assert_eq!(distinct, rows, "none stored twice");
    }
    let token = cp.login();
    for (_, agent_id) in &agents {
        let (st, v) = cp.get(&token, &format!("/api/spire/agents/{agent_id}"));
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["revoked_us"], Value::Null, "{v}");
    }
    assert!(
        cp.log().contains("expired SVID renewed"),
        "renewed through the expired-SVID path"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
