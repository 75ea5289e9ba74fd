//! The eBPF connect tracer against the running kernel: real connections from real processes on
//! loopback. Needs root (CAP_BPF + CAP_PERFMON); set `HAIS_SKIP_EBPF_TESTS=1` on a host that
//! cannot load eBPF programs.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hais_attribute::ebpf::ConnectTracer;

fn tracer() -> Option<ConnectTracer> {
    if std::env::var_os("HAIS_SKIP_EBPF_TESTS").is_some() {
        eprintln!("HAIS_SKIP_EBPF_TESTS set: not testing the eBPF tracer");
        return None;
    }
    Some(
        ConnectTracer::start()
            .expect("eBPF connect tracer loads (set HAIS_SKIP_EBPF_TESTS=1 where it cannot)"),
    )
}

/// Drains until the connection `src → dst` is known, for up to two seconds.
fn wait_for(
    t: &mut ConnectTracer,
    src: SocketAddr,
    dst: SocketAddr,
) -> Option<hais_attribute::ebpf::Connector> {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        t.drain().unwrap();
        if let Some(c) = t.take(src, dst) {
            return Some(c);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn a_connection_is_attributed_to_the_thread_and_process_that_opened_it() {
    let Some(mut t) = tracer() else { return };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let dst = l.local_addr().unwrap();
    let me = std::thread::Builder::new()
        .name("hais-connecter".into())
        .spawn(move || {
            let s = TcpStream::connect(dst).unwrap();
            (s.local_addr().unwrap(), rustix_tid())
        })
        .unwrap()
        .join()
        .unwrap();
    let (src, tid) = me;
    let c = wait_for(&mut t, src, dst).expect("this process's connection recorded");
    assert_eq!(c.tgid, std::process::id());
    assert_eq!(c.tid, tid);
    assert_ne!(c.tid, c.tgid, "the connecting thread, not the main one");
    assert_eq!(c.name(), "hais-connecter");
    assert_eq!(c.uid, 0);
    let boot_ns = uptime_ns();
    assert!(
        c.boot_ns <= boot_ns && boot_ns - c.boot_ns < 10_000_000_000,
        "{} vs {boot_ns}",
        c.boot_ns
    );
    // Taken once; the reverse direction was never an outbound connection of anyone.
    assert!(t.take(src, dst).is_none());
    assert!(t.take(dst, src).is_none());
}

#[test]
fn a_process_that_exits_at_once_is_still_known_with_its_uid() {
    let Some(mut t) = tracer() else { return };
    for (addr, uid) in [("127.0.0.1:0", 0u32), ("[::1]:0", 65534)] {
        let l = TcpListener::bind(addr).unwrap();
        let dst = l.local_addr().unwrap();
        // python3 under another uid: connects, prints its end, exits.
        let code = format!(
            "import os,socket\nif {uid}: os.setuid({uid})\ns=socket.socket(socket.AF_INET{})\ns.connect(('{}',{}))\nprint(s.getsockname()[1], os.getpid(), flush=True)",
            if dst.is_ipv6() { "6" } else { "" },
            dst.ip(),
            dst.port()
        );
        let out = Command::new("python3")
            .args(["-c", &code])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut f = text.split_whitespace().map(|x| x.parse::<u32>().unwrap());
        let (port, pid) = (f.next().unwrap(), f.next().unwrap());
        let src = SocketAddr::new(dst.ip(), port as u16);
        let c = wait_for(&mut t, src, dst).expect("the exited process's connection recorded");
        assert_eq!((c.tgid, c.uid), (pid, uid), "{addr}");
        assert_eq!(c.name(), "python3");
        drop(l);
    }
}

#[test]
fn a_refused_connection_is_recorded_too() {
    // A port scan is a string of refused connections: who made them matters as much.
    let Some(mut t) = tracer() else { return };
    let dst = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let sock = std::net::TcpStream::connect(dst);
    assert!(sock.is_err(), "nothing listens on {dst}");
    // The source port of a refused connect is not reported by the socket API; look for any
    // record to dst from this process.
    let until = Instant::now() + Duration::from_secs(2);
    let mut found = false;
    while !found && Instant::now() < until {
        t.drain().unwrap();
        found = (1024..=65535u16).any(|p| {
            t.take(SocketAddr::new(dst.ip(), p), dst)
                .is_some_and(|c| c.tgid == std::process::id())
        });
    }
    assert!(found, "refused connect to {dst} recorded");
}

fn rustix_tid() -> u32 {
    std::fs::read_link("/proc/thread-self")
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn uptime_ns() -> u64 {
    // CLOCK_BOOTTIME, the tracer's clock, is what /proc/uptime reports.
    let text = std::fs::read_to_string("/proc/uptime").unwrap();
    let secs: f64 = text.split_whitespace().next().unwrap().parse().unwrap();
    (secs * 1e9) as u64 + 20_000_000
}

/// An idle attributor still empties the tracer's kernel queue (every 100 ms), so connections
/// nobody asks about never pile up in it.
#[test]
fn an_idle_attributor_drains_the_queue() {
    if std::env::var_os("HAIS_SKIP_EBPF_TESTS").is_some() {
        return;
    }
    let att =
        hais_attribute::Attributor::start(hais_attribute::AttributorConfig::default()).unwrap();
    assert!(att.stats().ebpf);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let dst = l.local_addr().unwrap();
    let before = att.stats().ebpf_records;
    let conns: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(dst).unwrap()).collect();
    let until = Instant::now() + Duration::from_secs(2);
    while att.stats().ebpf_records < before + 20 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Other tests' connections may be counted too: at least these 20.
    assert!(att.stats().ebpf_records >= before + 20, "{:?}", att.stats());
    assert_eq!(att.stats().requests, 0);
    drop(conns);
}

/// Where the tracer cannot load (here: CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN dropped), the
/// attributor starts anyway, says the tracer is off, and attributes through `/proc`. Runs
/// this test binary again under `setpriv` for the part without the capabilities.
#[test]
fn without_the_privilege_attribution_falls_back_to_proc() {
    use hais_attribute::{Attribution, Attributor, AttributorConfig, Direction, FlowKey, Proto};
    if std::env::var_os("HAIS_EBPF_FALLBACK_CHILD").is_some() {
        let att = Attributor::start(AttributorConfig::default()).unwrap();
        assert!(!att.stats().ebpf, "the tracer cannot load without CAP_BPF");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        let s = TcpStream::connect(dst).unwrap();
        let key = FlowKey {
            proto: Proto::Tcp,
            src: s.local_addr().unwrap(),
            dst,
        };
        att.notify(key);
        let until = Instant::now() + Duration::from_secs(5);
        while att.peek(&key) == Attribution::Unknown && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        match att.take(&key) {
            Attribution::Process { direction, process } => {
                assert_eq!(direction, Direction::Outbound);
                assert_eq!(process.pid, std::process::id());
            }
            other => panic!("not attributed: {other:?}"),
        }
        assert_eq!(att.stats().ebpf_hits, 0);
        return;
    }
    if std::env::var_os("HAIS_SKIP_EBPF_TESTS").is_some() {
        return;
    }
    let out = Command::new("setpriv")
        .args(["--bounding-set", "-bpf,-perfmon,-sys_admin", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "without_the_privilege_attribution_falls_back_to_proc",
            "--nocapture",
        ])
        .env("HAIS_EBPF_FALLBACK_CHILD", "1")
        .output()
        .expect("setpriv (util-linux)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the child ran the test: {text}");
}
