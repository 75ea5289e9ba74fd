//! Workload attribution end to end: `hais-agent run -i lo --with-workload` watches real
//! processes (curl, python3, and a bash loop running as `nobody` through `setpriv`) make TCP
//! connections to a server in this test, and each process's records must name its pid, its
//! executable (canonical path) and its uid (and user `nobody` for uid 65534).
//!
//! Every process here lives well over 50 ms (the server answers after 100 ms), for which the
//! issue asks 100% attribution. A second round of curls against an immediate answer (each
//! process lives a few milliseconds) only reports its rate: how many of those are caught
//! depends on how fast the capture hands packets over and how busy the machine is.
//!
//! The agent runs under `setpriv` with exactly the capabilities its systemd unit
//! (`packaging/systemd/hais-agent.service`) leaves it, so this also checks that they suffice.
//!
//! Needs root (capture on `lo`, reading other users' `/proc/<pid>/fd`, `setpriv`) and the
//! curl, python3, setpriv and bash commands; without them the test says so on stderr and passes
//! vacuously, like the other live tests.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::*;

/// The canonical path of a command found on PATH.
fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("needs root (capture, /proc of other users, setpriv)".into());
    }
    for cmd in ["curl", "python3", "setpriv", "bash"] {
        if which(cmd).is_none() {
            return Some(format!("needs the {cmd} command"));
        }
    }
    None
}

/// Client port → request path, for every connection the server answered.
type Seen = Arc<Mutex<HashMap<u16, String>>>;

/// An HTTP/1.0 server on 127.0.0.1 that notes each connection's client port and path, and
/// answers after 100 ms (paths starting `/short` at once), so each client process outlives
/// its first packet by at least that long.
fn start_server() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let s = Arc::clone(&s);
            std::thread::spawn(move || serve(conn, &s));
        }
    });
    (port, seen)
}

fn serve(mut conn: TcpStream, seen: &Seen) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let peer = conn.peer_addr().map(|a| a.port()).unwrap_or(0);
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    loop {
        let mut l = String::new();
        match reader.read_line(&mut l) {
            Ok(0) | Err(_) => break,
            Ok(_) if l.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
    seen.lock().unwrap().insert(peer, path.clone());
    if !path.starts_with("/short") {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
}

/// The capability bounding set of `packaging/systemd/hais-agent.service`, in `setpriv` form
/// (`-all,+net_raw,…`).
fn unit_capabilities() -> String {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/systemd/hais-agent.service"),
    )
    .unwrap();
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds the agent's capabilities");
    std::iter::once("-all".to_owned())
        .chain(
            caps.split_whitespace()
                .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase())),
        )
        .collect::<Vec<_>>()
        .join(",")
}

/// What a client process is: its pid, canonical executable and uid.
#[derive(Debug, Clone, PartialEq)]
struct Expect {
    pid: u64,
    exe: String,
    uid: u64,
    user: Option<&'static str>,
}

/// Runs `cmd`, which prints `PID EXE` (of the process that connects) on its first line.
fn run_reporting(cmd: &mut Command, uid: u64, user: Option<&'static str>) -> Expect {
    let out = cmd.stderr(Stdio::inherit()).output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let pid = parts.next().and_then(|p| p.parse().ok()).unwrap();
    let exe = std::fs::canonicalize(parts.next().unwrap())
        .unwrap()
        .display()
        .to_string();
    Expect {
        pid,
        exe,
        uid,
        user,
    }
}

#[test]
fn records_name_the_process_exe_and_user_of_each_client() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tmpdir("clients");
    let out = dir.join("records.jsonl");
    let err = dir.join("agent.err");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let (port, seen) = start_server();

    let metrics_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The agent runs with the capabilities its systemd unit leaves it, and no more: this test
    // is also the check that they suffice (capture, the eBPF tracer, other users' /proc).
    let mut agent = Guard(
        Command::new("setpriv")
            .args(["--bounding-set", &unit_capabilities(), "--"])
            .arg(bin())
            .args(["--log", "info", "run", "-i", "lo", "--bpf"])
            .arg(format!("tcp port {port}"))
            .args(["--with-workload", "--json", "--idle-timeout", "2", "-o"])
            .arg(&out)
            .arg("--state-dir")
            .arg(&state)
            .env_remove("HAIS_CONFIG")
            .env_remove("HAIS_ATTRIBUTION")
            .env_remove("HAIS_ATTRIBUTION_EBPF")
            .env("HAIS_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || read_text(&err)
            .contains("capturing on lo")),
        "agent did not start: {}",
        read_text(&err)
    );
    assert!(
        read_text(&err).contains("workload attribution on"),
        "attribution must run here: {}",
        read_text(&err)
    );

    // path → the process expected behind it.
    let mut expect: HashMap<String, Expect> = HashMap::new();
    let curl = which("curl").unwrap().display().to_string();
    for i in 0..3 {
        let path = format!("/curl-{i}");
        let child = Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .spawn()
            .unwrap();
        let pid = u64::from(child.id());
        let st = Guard(child).wait_exit(Duration::from_secs(10));
        assert!(st.success(), "curl failed");
        expect.insert(
            path,
            Expect {
                pid,
                exe: curl.clone(),
                uid: 0,
                user: Some("root"),
            },
        );
    }
    for i in 0..2 {
        let path = format!("/python-{i}");
        let script = format!(
            "import os, socket\n\
             s = socket.create_connection(('127.0.0.1', {port}))\n\
             print(os.getpid(), os.readlink('/proc/self/exe'), flush=True)\n\
             s.sendall(b'GET {path} HTTP/1.0\\r\\n\\r\\n')\n\
             while s.recv(4096): pass\n\
             s.close()\n"
        );
        let e = run_reporting(
            Command::new("python3").arg("-c").arg(script),
            0,
            Some("root"),
        );
        expect.insert(path, e);
    }
    // Builtins only, so no child process shares the socket: the bash process is its owner.
    let script = format!(
        "echo $$ $(readlink /proc/$$/exe)\n\
         for i in 0 1 2; do\n\
           exec 3<>/dev/tcp/127.0.0.1/{port}\n\
           printf 'GET /bash-%s HTTP/1.0\\r\\n\\r\\n' $i >&3\n\
           while IFS= read -r -u 3 line; do :; done\n\
           exec 3<&-\n\
         done\n"
    );
    let nobody = run_reporting(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "bash",
                "-c",
            ])
            .arg(script),
        65534,
        Some("nobody"),
    );
    for i in 0..3 {
        expect.insert(format!("/bash-{i}"), nobody.clone());
    }
    // Short-lived processes: the server answers at once.
    let short = 20;
    for i in 0..short {
        let st = Command::new("curl")
            .args(["-s", "-o", "/dev/null"])
            .arg(format!("http://127.0.0.1:{port}/short-{i}"))
            .status()
            .unwrap();
        assert!(st.success());
    }

    let total = expect.len() + short;
    assert!(
        wait_until(Duration::from_secs(20), || records(&out).len() >= total),
        "expected {total} records, got {}: {}\nagent: {}",
        records(&out).len(),
        read_text(&out),
        read_text(&err)
    );
    // The status socket reports the attributor's counters.
    let status = Command::new(bin())
        .args(["status", "--json", "--state-dir"])
        .arg(&state)
        .env_remove("HAIS_CONFIG")
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let requests = status["attribution"]["requests"].as_u64().unwrap_or(0);
    assert!(requests >= total as u64, "status: {status}");
    assert!(status["attribution"]["attributed"].as_u64().unwrap_or(0) >= expect.len() as u64);
    // Every client here opened its connection itself: with the eBPF tracer (on by default),
    // each was answered from the kernel's record of its connect().
    let ebpf = std::env::var_os("HAIS_SKIP_EBPF_TESTS").is_none();
    if ebpf {
        assert_eq!(status["attribution"]["ebpf"], true, "status: {status}");
        assert!(
            status["attribution"]["ebpf_hits"].as_u64().unwrap_or(0) >= expect.len() as u64,
            "status: {status}"
        );
    }

    // The same counters on the Prometheus endpoint.
    let metrics = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{metrics_port}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("hais_agent_capture_packets_total{interface=\"lo\"}"),
        "{metrics}"
    );
    let attributed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hais_agent_attribution_attributed_total "))
        .and_then(|v| v.parse::<u64>().ok());
    assert!(
        attributed.is_some_and(|n| n >= expect.len() as u64),
        "{metrics}"
    );
    if ebpf {
        assert!(
            metrics.contains("hais_agent_attribution_ebpf 1\n"),
            "{metrics}"
        );
    }

    let _ = Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status();
    let st = agent.wait_exit(Duration::from_secs(15));
    let err_text = read_text(&err);
    assert_eq!(st.code(), Some(0), "{err_text}");
    assert!(
        err_text.contains("hais-agent run: attribution:"),
        "summary names attribution: {err_text}"
    );
    assert!(
        !ebpf || err_text.contains("eBPF tracer on"),
        "summary names the tracer: {err_text}"
    );

    let seen = seen.lock().unwrap().clone();
    let recs = records(&out);
    let by_port: HashMap<u64, &serde_json::Value> = recs
        .iter()
        .filter(|r| r["transport"] == "tcp" && r["dst_port"] == port)
        .filter_map(|r| Some((r["src_port"].as_u64()?, r)))
        .collect();
    let (mut long_ok, mut short_ok) = (0, 0);
    for (client_port, path) in &seen {
        let r = by_port
            .get(&u64::from(*client_port))
            .unwrap_or_else(|| panic!("no record for {path} (port {client_port}): {recs:?}"));
        let w = &r["workload"];
        if path.starts_with("/short") {
            if w["exe"] == curl.as_str() && w["uid"] == 0 {
                short_ok += 1;
            }
            continue;
        }
        let e = &expect[path];
        assert_eq!(w["pid"], e.pid, "{path}: {r}");
        assert_eq!(w["exe"], e.exe.as_str(), "{path}: {r}");
        assert_eq!(w["uid"], e.uid, "{path}: {r}");
        if let Some(u) = e.user {
            assert_eq!(w["user"], u, "{path}: {r}");
        }
        assert_eq!(w["direction"], "outbound", "{path}: {r}");
        assert!(
            w["exe_sha256"].as_str().is_some_and(|h| h.len() == 64),
            "{r}"
        );
        long_ok += 1;
    }
    assert_eq!(long_ok, expect.len(), "every long-lived client was checked");
    eprintln!(
        "attribution rate: {long_ok}/{} processes living >= 100 ms ({:.0}%), \
         {short_ok}/{short} short-lived curls ({:.0}%)",
        expect.len(),
        100.0 * long_ok as f64 / expect.len() as f64,
        100.0 * short_ok as f64 / short as f64
    );
    eprintln!(
        "{}",
        err_text
            .lines()
            .find(|l| l.contains("attribution:"))
            .unwrap_or_default()
    );
}
