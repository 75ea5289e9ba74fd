//! Whole-run benchmark of workload attribution at a steady rate of new flows.
//!
//! ```text
//! cargo bench -p hais-attribute --bench attribution_load -- [--rate 1000] [--seconds 10]
//!     [--hold-ms 50] [--spawn-every 50] [--no-ebpf] [--json]
//! ```
//!
//! `--no-ebpf` resolves through `/proc` alone (the eBPF connect tracer off). With the tracer,
//! the kernel program's own run time is reported too (`kernel.bpf_stats_enabled` is switched on
//! for the run): that CPU is spent in the connecting processes, not in the agent.
//!
//! A loopback server asks the attributor about each accepted connection, as the agent does on a
//! SYN. Connections come from this process (a long-lived service making outbound calls, holding
//! each socket `--hold-ms`) and, every `--spawn-every` flows, from a new short-lived process
//! (bash, like a cron job or a curl). Reported: attribution rate, the worker's CPU per flow
//! (thread CPU time from /proc, and wall time spent resolving), how often the owner was found
//! among recent processes vs by scanning /proc, and the event-time cache hit rate.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hais_attribute::{Attribution, Attributor, AttributorConfig, FlowKey, Proto};

struct Args {
    rate: u64,
    seconds: u64,
    hold_ms: u64,
    spawn_every: u64,
    ebpf: bool,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        rate: 1000,
        seconds: 10,
        hold_ms: 50,
        spawn_every: 50,
        ebpf: true,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        let mut num = || it.next().and_then(|v| v.parse().ok()).expect("a number");
        match x.as_str() {
            "--rate" => a.rate = num(),
            "--seconds" => a.seconds = num(),
            "--hold-ms" => a.hold_ms = num(),
            "--spawn-every" => a.spawn_every = num(),
            "--json" => a.json = true,
            "--no-ebpf" => a.ebpf = false,
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// CPU seconds used so far by this process's thread named `name`.
fn thread_cpu(name: &str) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            // Fields 14 and 15 (utime, stime) are at 11 and 12 after the state field.
            Some((f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?) / ticks)
        })
        .sum()
}

fn main() {
    let a = args();
    const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let stats_were = std::fs::read_to_string(BPF_STATS).unwrap_or_default();
    if a.ebpf {
        let _ = std::fs::write(BPF_STATS, "1");
    }
    let att = Attributor::start(AttributorConfig {
        ebpf: a.ebpf,
        ..AttributorConfig::default()
    })
    .expect("sock_diag available");
    assert_eq!(att.stats().ebpf, a.ebpf, "eBPF tracer loaded");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let dst = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel::<FlowKey>();
    let att = std::sync::Arc::new(att);
    let att2 = att.clone();
    let hold = Duration::from_millis(a.hold_ms);
    std::thread::spawn(move || {
        let mut open: VecDeque<(Instant, TcpStream)> = VecDeque::new();
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let Ok(src) = s.peer_addr() else { continue };
            let key = FlowKey {
                proto: Proto::Tcp,
                src,
                dst,
            };
            att2.notify(key);
            let _ = tx.send(key);
            let now = Instant::now();
            open.push_back((now + hold, s));
            while open.front().is_some_and(|(t, _)| *t <= now) {
                open.pop_front();
            }
        }
    });

    let total = a.rate * a.seconds;
    let cpu0 = thread_cpu("hais-attribute");
    let t0 = Instant::now();
    let mut held: VecDeque<(Instant, TcpStream)> = VecDeque::new();
    let mut children = Vec::new();
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / a.rate as f64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        if a.spawn_every > 0 && i % a.spawn_every == a.spawn_every - 1 {
            children.push(spawn_client(dst, a.hold_ms));
        } else if let Ok(s) = TcpStream::connect(dst) {
            held.push_back((Instant::now() + hold, s));
        }
        let now = Instant::now();
        while held.front().is_some_and(|(t, _)| *t <= now) {
            held.pop_front();
        }
        if i % a.rate == 0 && !a.json {
            eprint!("\r{:>3}% ", i * 100 / total);
        }
    }
    let elapsed = t0.elapsed();
    // Long enough for the worker to read the kernel program's run time once more.
    std::thread::sleep(Duration::from_millis(1100));
    for mut c in children {
        let _ = c.wait();
    }
    let cpu = thread_cpu("hais-attribute") - cpu0;
    // A client port can come back within the run (the server closes first, so TIME_WAIT is on
    // its side); such a 5-tuple is one cache entry, so count each once.
    let keys: Vec<FlowKey> = rx
        .try_iter()
        .collect::<std::collections::HashSet<_>>()
        .into_iter()
        .collect();
    let mut kinds = std::collections::BTreeMap::new();
    let attributed = keys
        .iter()
        .filter(|k| {
            let a = att.take(k);
            *kinds.entry(a.reason()).or_insert(0u64) += 1;
            matches!(a, Attribution::Process { .. })
        })
        .count();
    if !a.json {
        eprintln!("outcomes: {kinds:?}");
    }
    let st = att.stats();
    let n = st.requests.max(1) as f64;
    let result = serde_json::json!({
        "flows": keys.len(),
        "rate_per_s": st.requests as f64 / elapsed.as_secs_f64(),
        "attributed_pct": 100.0 * attributed as f64 / keys.len().max(1) as f64,
        "worker_cpu_us_per_flow": cpu * 1e6 / n,
        "worker_cpu_pct_of_core": 100.0 * cpu / elapsed.as_secs_f64(),
        "resolve_wall_us_per_flow": st.busy_ns as f64 / n / 1e3,
        "hot_pid_hit_pct": 100.0 * st.hot_pid_hits as f64 / (st.hot_pid_hits + st.new_pid_hits + st.full_scans).max(1) as f64,
        "new_pid_hit_pct": 100.0 * st.new_pid_hits as f64 / (st.hot_pid_hits + st.new_pid_hits + st.full_scans).max(1) as f64,
        "event_cache_hit_pct": 100.0 * st.cache_hits as f64 / (st.cache_hits + st.cache_misses).max(1) as f64,
        "dropped": st.dropped,
        "full_scans": st.full_scans,
        "fd_probes_per_flow": st.fd_probes as f64 / n,
        "fd_dirs_read_per_batch": st.fd_dirs_read as f64 / st.batches.max(1) as f64,
        "flows_per_batch": n / st.batches.max(1) as f64,
        "requests": st.requests,
        "errors": st.errors,
        "process_gone": st.process_gone,
        "not_local": st.not_local,
        "ebpf": st.ebpf,
        "ebpf_hit_pct": 100.0 * st.ebpf_hits as f64 / n,
        "ebpf_exited": st.ebpf_exited,
        "ebpf_kernel_ns_per_flow": st.ebpf_prog_ns as f64 / n,
        "ebpf_kernel_runs_per_flow": st.ebpf_prog_runs as f64 / n,
        "hold_ms": a.hold_ms,
        "spawn_every": a.spawn_every,
    });
    if a.ebpf && !stats_were.is_empty() {
        let _ = std::fs::write(BPF_STATS, stats_were.trim());
    }
    if a.json {
        println!("{result}");
    } else {
        eprintln!("\r");
        println!("{}", serde_json::to_string_pretty(&result).unwrap());
    }
}

/// A short-lived process that opens one connection and exits after `hold_ms`.
fn spawn_client(dst: SocketAddr, hold_ms: u64) -> std::process::Child {
    Command::new("bash")
        .args([
            "-c",
            &format!(
                "exec 3<>/dev/tcp/{}/{}; sleep {}",
                dst.ip(),
                dst.port(),
                hold_ms as f64 / 1000.0
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bash")
}
