//! The live agent's footprint at a steady rate of new flows.
//!
//! ```text
//! cargo bench -p hais-e2e --bench footprint -- [--rate 1000] [--seconds 30] [--json]
//! ```
//!
//! Starts the real control plane and a real `hais-agent run -i lo` (enrolled, streaming, with
//! workload attribution on, as deployed), then opens `--rate` TCP connections per second on
//! loopback for `--seconds`, each a new flow the agent fingerprints, attributes and ships.
//! Reports the agent's CPU (user + system, from /proc/<pid>/stat, as a share of one core),
//! its peak RSS (VmHWM), and how many events the control plane acknowledged.
//! Needs root (capture on `lo`).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use hais_e2e::cluster::{Agent, ControlPlane, can_capture};
use hais_e2e::proc::wait_for;

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn rss_peak_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap()
        / 1024.0
}

fn main() {
    let mut rate = 1000u64;
    let mut seconds = 30u64;
    let mut json = false;
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--rate" => rate = it.next().and_then(|v| v.parse().ok()).expect("N"),
            "--seconds" => seconds = it.next().and_then(|v| v.parse().ok()).expect("N"),
            "--json" => json = true,
            _ => {}
        }
    }
    assert!(can_capture(), "needs root or CAP_NET_RAW to capture on lo");
    let dir = std::env::temp_dir().join(format!("hais-bench-footprint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cp = ControlPlane::start(&dir.join("cp"), &[]);
    let mut agent = Agent::new(&dir.join("agent"));
    let (ok, out) = agent.enroll(cp.uplink, &cp.token());
    assert!(ok, "enroll: {out}");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    agent.run(
        cp.uplink,
        &["-i", "lo", "--bpf", &format!("tcp port {port}"), "--quiet"],
    );
    wait_for("the uplink", Duration::from_secs(30), || {
        (agent.status()?["uplink"]["state"] == "connected").then_some(())
    });
    let pid = agent.proc.as_ref().unwrap().pid();
    std::thread::sleep(Duration::from_secs(1));

    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    let total = rate * seconds;
    let mut buf = [0u8; 1];
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.read(&mut buf);
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let rss = rss_peak_mb(pid);
    let acked = wait_for(
        "events to be acknowledged",
        Duration::from_secs(120),
        || {
            let s = agent.status()?;
            let stored = s["uplink"]["events_stored"].as_u64()?;
            (stored >= total * 9 / 10 && s["spool"]["depth"] == 0).then_some(stored)
        },
    );
    let st = agent.status().unwrap_or_default();
    let result = serde_json::json!({
        "rate_offered": rate,
        "rate_achieved": total as f64 / elapsed,
        "seconds": elapsed,
        "agent_cpu_pct_of_core": 100.0 * cpu / elapsed,
        "agent_peak_rss_mb": rss,
        "events_acked": acked,
        "attribution": st["attribution"],
    });
    if json {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result).unwrap());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
