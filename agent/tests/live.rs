//! `hais-agent run` against real libpcap on `lo`: a real TLS 1.3 handshake between
//! `openssl s_server` and `openssl s_client` is fingerprinted live, records are written as
//! flows go idle and on shutdown, and the start-up failures (unknown interface, missing
//! capability, bad configuration) exit with their documented codes and one clear line.
//!
//! Capturing needs CAP_NET_RAW (CI runs as root); without it, or without `openssl`, the
//! capture tests say so on stderr and pass vacuously rather than fail on a developer's
//! unprivileged machine. Every test uses its own port, so they run in parallel with each
//! other and with other tests capturing on `lo`.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::*;

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why a capture test can't run here, if it can't.
fn capture_unavailable() -> Option<&'static str> {
    if !has_cap_net_raw() {
        Some("needs CAP_NET_RAW")
    } else if !have("openssl", "version") {
        Some("needs the openssl command")
    } else {
        None
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The live.test record, parsed and as written.
fn tls_record(path: &Path) -> Option<(serde_json::Value, String)> {
    read_text(path)
        .lines()
        .find(|l| l.contains("\"tls_server_name\":\"live.test\""))
        .map(|l| (serde_json::from_str(l).unwrap(), l.to_string()))
}

/// An agent capturing on `lo` for `tcp port {port}`, its stderr in `dir/agent.err`, started
/// and ready (it prints its start-up line after the capture is open).
fn start_agent(dir: &Path, port: u16, idle_timeout: u32, out: &Path) -> Guard {
    let err = dir.join("agent.err");
    let child = Command::new(bin())
        .args(["--log", "info", "run", "--interface", "lo", "--bpf"])
        .arg(format!("tcp port {port}"))
        .args(["--json", "--stats-interval", "1", "--idle-timeout"])
        .arg(idle_timeout.to_string())
        .arg("--output")
        .arg(out)
        .env_remove("HAIS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let agent = Guard(child);
    assert!(
        wait_until(Duration::from_secs(20), || read_text(&err)
            .contains("capturing on lo")),
        "agent did not start: {}",
        read_text(&err)
    );
    agent
}

/// `openssl s_server` on 127.0.0.1:`port` with a fresh self-signed certificate, accepting.
fn start_tls_server(dir: &Path, port: u16) -> Guard {
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=live.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req failed");
    let server = Guard(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "s_server did not start listening on {port}"
    );
    server
}

/// One TLS 1.3 handshake with SNI `live.test`; s_client closes when its stdin ends.
/// A TLS 1.3 handshake with the server, the connection then left open (s_client waits on
/// its stdin, a pipe held by the returned guard): a closed connection would be reported at
/// its FIN, and these tests are about flows that only idleness or shutdown can end.
fn tls_client(port: u16) -> Guard {
    Guard(
        Command::new("openssl")
            .args([
                "s_client",
                "-tls1_3",
                "-servername",
                "live.test",
                "-connect",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn assert_tls_record((r, line): &(serde_json::Value, String)) {
    assert_eq!(r["transport"], "tcp", "{r}");
    assert_eq!(r["interface"], "lo", "{r}");
    let ja4 = r["ja4"].as_str().unwrap_or_default();
    assert!(ja4.starts_with("t13"), "TLS 1.3 over TCP: {r}");
    assert!(
        r["ja4s"].as_str().is_some_and(|s| s.starts_with("t13")),
        "{r}"
    );
    let ts = r["ts"].as_str().unwrap_or_default();
    assert!(
        ts.len() == 27 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "ISO-8601 UTC ts: {r}"
    );
    // The record is `read`'s, with `interface` and `ts` appended.
    assert!(line.starts_with("{\"stream\":"), "{line}");
    assert!(
        line.ends_with(&format!(",\"interface\":\"lo\",\"ts\":\"{ts}\"}}")),
        "{line}"
    );
}

#[test]
fn tls_handshake_on_lo_is_fingerprinted_live_and_reported_when_idle() {
    if let Some(why) = capture_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tmpdir("idle");
    let out = dir.join("records.jsonl");
    let port = free_port();
    let mut agent = start_agent(&dir, port, 1, &out);
    let _server = start_tls_server(&dir, port);
    let _client = tls_client(port);

    // No packet arrives after the handshake: only the periodic sweep can report the flow.
    assert!(
        wait_until(Duration::from_secs(15), || tls_record(&out).is_some()),
        "no live.test record before shutdown; output: {}\nagent: {}",
        read_text(&out),
        read_text(&dir.join("agent.err"))
    );
    assert_tls_record(&tls_record(&out).unwrap());

    agent.signal("TERM");
    let st = agent.wait_exit(Duration::from_secs(15));
    let err = read_text(&dir.join("agent.err"));
    assert_eq!(st.code(), Some(0), "SIGTERM is a clean stop: {err}");
    let summary = err
        .lines()
        .find(|l| l.starts_with("hais-agent run:") && l.contains("packets"))
        .unwrap_or_else(|| panic!("no summary: {err}"));
    assert!(summary.contains("streams with fingerprints"), "{summary}");
    assert!(summary.contains("dropped by the kernel"), "{summary}");
    assert!(
        err.contains("capture statistics"),
        "drop counters logged: {err}"
    );
    assert_eq!(
        records(&out)
            .iter()
            .filter(|r| r["tls_server_name"] == "live.test")
            .count(),
        1,
        "one record per stream"
    );
}

#[test]
fn shutdown_flushes_flows_that_are_still_open() {
    if let Some(why) = capture_unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tmpdir("flush");
    let out = dir.join("records.jsonl");
    let port = free_port();
    let mut agent = start_agent(&dir, port, 600, &out);
    let _server = start_tls_server(&dir, port);
    let _client = tls_client(port);
    // Give the kernel time to hand the packets over (it does so in blocks, within 100 ms).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        tls_record(&out).is_none(),
        "a 600 s idle timeout holds the flow until shutdown"
    );
    agent.signal("INT");
    let st = agent.wait_exit(Duration::from_secs(15));
    let err = read_text(&dir.join("agent.err"));
    assert_eq!(st.code(), Some(0), "{err}");
    let rec = tls_record(&out).unwrap_or_else(|| {
        panic!(
            "SIGINT must flush every flow; output: {}\n{err}",
            read_text(&out)
        )
    });
    assert_tls_record(&rec);
}

#[test]
fn unknown_interface_is_exit_69_with_the_available_ones() {
    let o = Command::new(bin())
        .args([
            "run",
            "--interface",
            "hais-nosuch0",
            "--output",
            "/dev/null",
        ])
        .env_remove("HAIS_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(69), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown interface \"hais-nosuch0\""), "{err}");
    assert!(err.contains("available:") && err.contains("lo"), "{err}");
}

#[test]
fn without_cap_net_raw_exit_77_says_what_is_missing_and_how_to_grant_it() {
    let o = if is_root() {
        if !have("setpriv", "--version") {
            eprintln!("skipped: needs setpriv to drop root");
            return;
        }
        // A copy nobody can execute wherever the build tree lives.
        let dir = tmpdir("nocap");
        let copy = dir.join("hais-agent");
        std::fs::copy(bin(), &copy).unwrap();
        let chmod = |p: &Path, mode: &str| {
            assert!(
                Command::new("chmod")
                    .arg(mode)
                    .arg(p)
                    .status()
                    .unwrap()
                    .success()
            )
        };
        chmod(&dir, "0755");
        chmod(&copy, "0755");
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&copy)
            .args(["run", "--interface", "lo", "--output", "/dev/null"])
            .env_remove("HAIS_CONFIG")
            .current_dir(&dir)
            .output()
            .unwrap()
    } else if !has_cap_net_raw() {
        Command::new(bin())
            .args(["run", "--interface", "lo", "--output", "/dev/null"])
            .env_remove("HAIS_CONFIG")
            .output()
            .unwrap()
    } else {
        eprintln!("skipped: not root, yet holding CAP_NET_RAW");
        return;
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(77), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("CAP_NET_RAW"), "{err}");
    assert!(
        err.contains("setcap cap_net_raw,cap_net_admin=eip"),
        "{err}"
    );
    assert!(err.contains("AmbientCapabilities="), "{err}");
}

#[test]
fn bad_filter_is_exit_2() {
    if !has_cap_net_raw() {
        eprintln!("skipped: needs CAP_NET_RAW");
        return;
    }
    let o = Command::new(bin())
        .args(["run", "-i", "lo", "--bpf", "tcp port", "-o", "/dev/null"])
        .env_remove("HAIS_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("bad capture filter"), "{err}");
}

#[test]
fn configuration_errors_are_exit_78_and_a_missing_file_66() {
    let dir = tmpdir("config");
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, "[capture]\ninterfacez = [\"lo\"]\n").unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(bin());
        c.arg("run").args(args).env_remove("HAIS_CONFIG");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let o = run(&["--config", cfg.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(
        err.contains("agent.toml") && err.contains("interfacez"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let o = run(&[], &[("HAIS_CONFIG", "/nonexistent/agent.toml")]);
    assert_eq!(o.status.code(), Some(66));

    let o = run(&["-i", "lo"], &[("HAIS_IDLE_TIMEOUT", "soon")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(err.contains("HAIS_IDLE_TIMEOUT"), "{err}");

    // The file's interface is used (and found unknown) when no flag overrides it.
    std::fs::write(
        &cfg,
        "[capture]\ninterfaces = [\"hais-nosuch1\"]\n[flows]\nidle_timeout_secs = 5\n",
    )
    .unwrap();
    let o = run(&["--config", cfg.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(69), "{err}");
    assert!(err.contains("hais-nosuch1"), "{err}");
}

/// The clock tick live capture relies on, without a network: `expire_idle` finishes a flow
/// that no later packet would ever expire, and only once it is idle past the timeout.
#[test]
fn expire_idle_reports_flows_without_further_packets() {
    use hais_agent::decode::LinkType;
    use hais_agent::engine::{Engine, EngineConfig};

    let b = etherparse::PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1])
        .ipv4([192, 168, 7, 1], [10, 0, 0, 1], 64)
        .tcp(40000, 443, 1, 64240)
        .syn()
        .options(&[etherparse::TcpOptionElement::MaximumSegmentSize(1460)])
        .unwrap();
    let mut frame = Vec::with_capacity(b.size(0));
    b.write(&mut frame, &[]).unwrap();

    let t0 = 1_700_000_000_000_000u64;
    let mut engine = Engine::new(EngineConfig {
        idle_timeout_us: 1_000_000,
        ..EngineConfig::default()
    });
    engine.on_frame(t0, LinkType::Ethernet, &frame);
    engine.expire_idle(t0 + 500_000);
    assert!(engine.take_finished().is_empty(), "not idle long enough");
    assert_eq!(engine.live_flows(), 1);
    engine.expire_idle(t0 + 1_500_000);
    let done = engine.take_finished();
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].record.get("src_port").cloned(),
        Some(40000u16.into())
    );
    assert_eq!(engine.live_flows(), 0);

    // A zero timeout means "never": the tick must not finish anything.
    let mut engine = Engine::new(EngineConfig::default());
    engine.on_frame(t0, LinkType::Ethernet, &frame);
    engine.expire_idle(u64::MAX);
    assert!(engine.take_finished().is_empty());
    assert_eq!(engine.finish().len(), 1);
}
