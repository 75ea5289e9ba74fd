//! The agent's HTTP endpoint for monitoring (`[metrics] listen`): `/metrics` in the Prometheus
//! text format, `/health` (the process answers) and `/ready` (capturing, and streaming when a
//! control plane is configured). Everything comes from the same [`StatusReport`] the status
//! socket serves, so the two never disagree.
//!
//! A deliberately small HTTP/1.x responder on one thread: a request head is read with a size
//! limit and a timeout, answered, and the connection closed. Scrapers and probes need no
//! more, and the agent links no web framework (it must stay small on every host).

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::status::{AgentStatus, ConnectionState, StatusReport};

/// Longest request head read; anything longer is refused.
const MAX_HEAD: usize = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves until the process exits. Returns the bound address (the port may have been 0).
pub fn start(addr: SocketAddr, status: Arc<AgentStatus>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => {
                        let _ = serve(conn, &status);
                    }
                    // Out of descriptors, say: wait instead of spinning.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
    Ok(local)
}

fn serve(mut conn: TcpStream, status: &AgentStatus) -> io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let (code, kind, body) = match read_head(&mut conn) {
        Ok(head) => answer(&head, status),
        Err(_) => json(400, "bad request: no complete HTTP request head"),
    };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())
}

/// The request head, up to the blank line.
fn read_head(conn: &mut TcpStream) -> io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut chunk)?;
        if n == 0 || buf.len() + n > MAX_HEAD {
            return Err(io::ErrorKind::InvalidData.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).map_err(|_| io::ErrorKind::InvalidData.into())
}

fn json(code: u16, error: &str) -> (u16, &'static str, String) {
    (
        code,
        "application/json",
        serde_json::json!({ "error": error }).to_string(),
    )
}

/// Status code, content type and body for a request head.
fn answer(head: &str, status: &AgentStatus) -> (u16, &'static str, String) {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return json(400, "bad request line");
    };
    if !version.starts_with("HTTP/1.") {
        return json(400, "HTTP/1.x only");
    }
    let path = target.split('?').next().unwrap_or(target);
    if !matches!(path, "/metrics" | "/health" | "/ready") {
        return json(404, "not found: /metrics, /health and /ready are served");
    }
    if method != "GET" && method != "HEAD" {
        return json(405, "method not allowed: GET only");
    }
    let report = status.report();
    match path {
        "/metrics" => (200, "text/plain; version=0.0.4", render(&report)),
        "/health" => (
            200,
            "application/json",
            serde_json::json!({ "status": "ok", "version": report.version }).to_string(),
        ),
        _ => {
            // Ready: capturing (always, once this runs), and, when a control plane is
            // configured, connected to it.
            let up = report.uplink.state;
            let ready = matches!(up, ConnectionState::Connected | ConnectionState::Disabled);
            let body = serde_json::json!({ "ready": ready, "uplink": up }).to_string();
            (if ready { 200 } else { 503 }, "application/json", body)
        }
    }
}

/// One metric family: `# HELP`, `# TYPE`, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn new<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A single-sample family.
fn one(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    Family::new(out, name, kind, help).sample(name, &[], value);
}

/// The report in the Prometheus text exposition format (version 0.0.4).
pub fn render(r: &StatusReport) -> String {
    let mut out = String::with_capacity(4096);
    one(
        &mut out,
        "hais_agent_up",
        "gauge",
        "1 while the agent runs.",
        1,
    );
    one(
        &mut out,
        "hais_agent_uptime_seconds",
        "gauge",
        "Seconds since the agent started.",
        r.uptime_s,
    );
    type Field = fn(&crate::status::InterfaceReport) -> u64;
    let per_interface: [(&str, &str, &str, Field); 8] = [
        ("packets_total", "counter", "Packets captured.", |i| {
            i.packets
        }),
        ("bytes_total", "counter", "Bytes captured.", |i| i.bytes),
        (
            "parse_errors_total",
            "counter",
            "Packets that failed to decode.",
            |i| i.parse_errors,
        ),
        (
            "kernel_dropped_total",
            "counter",
            "Packets the kernel dropped (ring full).",
            |i| i.kernel_dropped,
        ),
        (
            "interface_dropped_total",
            "counter",
            "Packets the interface dropped.",
            |i| i.interface_dropped,
        ),
        ("live_flows", "gauge", "Flows tracked now.", |i| {
            i.live_flows
        }),
        ("streams_total", "counter", "Streams finished.", |i| {
            i.streams
        }),
        (
            "events_total",
            "counter",
            "Streams turned into events and spooled.",
            |i| i.events,
        ),
    ];
    for (suffix, kind, help, get) in per_interface {
        let name = format!("hais_agent_capture_{suffix}");
        let mut f = Family::new(&mut out, &name, kind, help);
        for i in &r.interfaces {
            f.sample(&name, &[("interface", &i.name)], get(i));
        }
    }
    one(
        &mut out,
        "hais_agent_events_skipped_total",
        "counter",
        "Streams that produced no event (no fingerprint, or invalid).",
        r.events_skipped,
    );
    if let Some(s) = &r.spool {
        one(
            &mut out,
            "hais_agent_spool_depth",
            "gauge",
            "Events spooled, not yet acknowledged.",
            s.depth,
        );
        one(
            &mut out,
            "hais_agent_spool_bytes",
            "gauge",
            "Bytes of spool segment files.",
            s.bytes,
        );
        one(
            &mut out,
            "hais_agent_spool_dropped_total",
            "counter",
            "Unacknowledged events deleted because the spool was full.",
            s.dropped,
        );
    }
    one(
        &mut out,
        "hais_agent_spool_errors_total",
        "counter",
        "Spool write failures.",
        r.spool_errors,
    );
    let u = &r.uplink;
    let mut f = Family::new(
        &mut out,
        "hais_agent_uplink_state",
        "gauge",
        "1 for the uplink's current state.",
    );
    for (label, state) in [
        ("disabled", ConnectionState::Disabled),
        ("connecting", ConnectionState::Connecting),
        ("connected", ConnectionState::Connected),
        ("backoff", ConnectionState::Backoff),
        ("stopped", ConnectionState::Stopped),
    ] {
        f.sample(
            "hais_agent_uplink_state",
            &[("state", label)],
            u8::from(u.state == state),
        );
    }
    for (name, help, v) in [
        (
            "events_stored_total",
            "Events the control plane stored.",
            u.events_stored,
        ),
        (
            "events_duplicate_total",
            "Events the control plane already had.",
            u.events_duplicate,
        ),
        (
            "events_rejected_total",
            "Events the control plane refused as invalid.",
            u.events_rejected,
        ),
        (
            "batches_acked_total",
            "Batches acknowledged.",
            u.batches_acked,
        ),
        (
            "connects_total",
            "Connections made to the control plane.",
            u.connects,
        ),
        ("svid_renewals_total", "SVID renewals.", u.renewals),
    ] {
        one(
            &mut out,
            &format!("hais_agent_uplink_{name}"),
            "counter",
            help,
            v,
        );
    }
    if let Some(skew) = u.clock_skew_ms {
        one(
            &mut out,
            "hais_agent_clock_skew_seconds",
            "gauge",
            "Control-plane clock minus the agent's, at the last heartbeat.",
            skew as f64 / 1000.0,
        );
    }
    if let Some(exp) = u.svid_expiry_unix {
        one(
            &mut out,
            "hais_agent_svid_expiry_timestamp_seconds",
            "gauge",
            "When the agent's X.509-SVID expires (Unix time).",
            exp,
        );
    }
    if let Some(a) = &r.attribution {
        for (name, help, v) in [
            ("requests_total", "Flows asked about.", a.requests),
            (
                "attributed_total",
                "Flows attributed to a process.",
                a.attributed,
            ),
            (
                "process_gone_total",
                "Flows whose process had exited (uid only).",
                a.process_gone,
            ),
            (
                "not_local_total",
                "Flows with no local socket.",
                a.not_local,
            ),
            (
                "dropped_total",
                "Flows not attempted (queue full).",
                a.dropped,
            ),
            ("errors_total", "Lookups that failed.", a.errors),
            (
                "cache_hits_total",
                "Events that found their flow's answer.",
                a.cache_hits,
            ),
            (
                "cache_misses_total",
                "Events that found none.",
                a.cache_misses,
            ),
            (
                "ebpf_hits_total",
                "Flows answered from the eBPF connect tracer's records.",
                a.ebpf_hits,
            ),
        ] {
            one(
                &mut out,
                &format!("hais_agent_attribution_{name}"),
                "counter",
                help,
                v,
            );
        }
        one(
            &mut out,
            "hais_agent_attribution_busy_seconds_total",
            "counter",
            "Time the attribution thread spent resolving.",
            a.busy_us as f64 / 1e6,
        );
        one(
            &mut out,
            "hais_agent_attribution_ebpf",
            "gauge",
            "1 when the eBPF connect tracer runs.",
            u8::from(a.ebpf),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{AgentStatus, InterfaceCounters};
    use std::sync::atomic::Ordering;

    fn status() -> Arc<AgentStatus> {
        let eth = Arc::new(InterfaceCounters::new("eth\"0"));
        eth.packets.store(42, Ordering::Relaxed);
        Arc::new(AgentStatus::new(vec![eth], None))
    }

    #[test]
    fn every_family_is_announced_once_and_samples_parse() {
        let text = render(&status().report());
        let mut types = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(
                    types.insert(rest.split(' ').next().unwrap().to_owned()),
                    "{line}"
                );
            } else if !line.starts_with('#') {
                let (name, value) = line.rsplit_once(' ').unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
                let base = name.split('{').next().unwrap();
                assert!(types.contains(base), "sample before its TYPE: {line}");
            }
        }
        assert!(text.contains("hais_agent_capture_packets_total{interface=\"eth\\\"0\"} 42\n"));
        assert!(text.contains("hais_agent_uplink_state{state=\"disabled\"} 1\n"));
        assert!(text.contains("hais_agent_uplink_state{state=\"connected\"} 0\n"));
    }

    fn get(addr: SocketAddr, request: &[u8]) -> (u16, String) {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(request).unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        let code = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = resp.split_once("\r\n\r\n").unwrap().1.to_owned();
        (code, body)
    }

    #[test]
    fn endpoints_answer_and_bad_requests_get_json_errors() {
        let addr = start("127.0.0.1:0".parse().unwrap(), status()).unwrap();
        let (code, body) = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(code, 200);
        assert!(body.contains("hais_agent_up 1"), "{body}");
        let (code, body) = get(addr, b"GET /health HTTP/1.0\r\n\r\n");
        assert_eq!((code, body.contains("\"ok\"")), (200, true), "{body}");
        // No control plane configured: capturing is all readiness asks.
        let (code, body) = get(addr, b"GET /ready?verbose=1 HTTP/1.1\r\n\r\n");
        assert_eq!(code, 200, "{body}");
        for (req, want) in [
            (&b"GET /nope HTTP/1.1\r\n\r\n"[..], 404),
            (b"POST /metrics HTTP/1.1\r\n\r\n", 405),
            (b"GET /metrics SPDY/3\r\n\r\n", 400),
            (b"garbage\r\n\r\n", 400),
            (b"\xff\xfe\r\n\r\n", 400),
        ] {
            let (code, body) = get(addr, req);
            assert_eq!(code, want, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v["error"].is_string(), "{body}");
        }
        // An endless head is cut off, and the server keeps serving.
        let mut c = TcpStream::connect(addr).unwrap();
        let _ = c.write_all(&vec![b'a'; MAX_HEAD + 1024]);
        let mut resp = String::new();
        let _ = c.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        assert_eq!(get(addr, b"GET /health HTTP/1.1\r\n\r\n").0, 200);
    }
}
