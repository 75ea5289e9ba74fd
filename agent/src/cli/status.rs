//! `hais-agent status`: the running agent's state, read over its Unix socket.
//!
//! Exit codes: 0 shown; 69 no agent is running on this state directory; 77 the socket is not
//! readable by this user; 78 bad configuration.

use std::io::ErrorKind;

use clap::Args;

use super::StateArgs;
use crate::state::StateDir;
use crate::status::{StatusReport, query, unix_ms};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StatusArgs) -> i32 {
    let cfg = match args.state.config() {
        Ok(c) => c,
        Err((code, msg)) => {
            eprintln!("hais-agent status: {msg}");
            return code;
        }
    };
    let path = StateDir::new(&cfg.state_dir).socket_path();
    let report = match query(&path) {
        Ok(r) => r,
        Err(e) => {
            let code = match e.kind() {
                ErrorKind::PermissionDenied => 77,
                _ => 69,
            };
            eprintln!(
                "hais-agent status: no running agent answers on {}: {e}",
                path.display()
            );
            return code;
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", render(&report, unix_ms()));
    }
    0
}

fn ago(now_ms: i64, then_ms: i64) -> String {
    human_duration(((now_ms - then_ms).max(0) / 1000) as u64) + " ago"
}

/// `1h02m`, `3m05s`, `42s`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// The human-readable report.
pub fn render(r: &StatusReport, now_ms: i64) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "hais-agent {} (pid {}), up {}",
        r.version,
        r.pid,
        human_duration(r.uptime_s)
    );
    let u = &r.uplink;
    let state = serde_json::to_value(u.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "uplink:    {state}{} for {} ({} connections, {} renewals)",
        u.server
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default(),
        human_duration(((now_ms - u.since_unix_ms).max(0) / 1000) as u64),
        u.connects,
        u.renewals
    );
    if let Some(e) = &u.last_error {
        let _ = writeln!(o, "           last error: {e}");
    }
    if let Some(p) = &u.problem {
        let _ = writeln!(o, "problem:   {p}");
        if let Some(f) = &u.fix {
            let _ = writeln!(o, "fix:       {f}");
        }
    }
    let _ = writeln!(
        o,
        "events:    {} stored, {} duplicates, {} rejected; last ack {}; {} streams without fingerprints",
        u.events_stored,
        u.events_duplicate,
        u.events_rejected,
        u.last_ack_unix_ms
            .map_or_else(|| "never".to_string(), |t| ago(now_ms, t)),
        r.events_skipped
    );
    if let Some(s) = &r.spool {
        let _ = writeln!(
            o,
            "spool:     {} events waiting ({} bytes in {} segments), {} dropped (full), {} torn, {} write errors",
            s.depth, s.bytes, s.segments, s.dropped, s.torn_records, r.spool_errors
        );
    }
    if let Some(id) = &u.spiffe_id {
        let exp = u.svid_expiry_unix.unwrap_or(0);
        let left = exp - now_ms / 1000;
        let when = if left >= 0 {
            format!("expires in {}", human_duration(left as u64))
        } else {
            format!("EXPIRED {}", ago(now_ms, exp * 1000))
        };
        let _ = writeln!(o, "identity:  {id}, SVID {when}");
    }
    if let Some(skew) = u.clock_skew_ms {
        let _ = writeln!(o, "clock:     {skew:+} ms against the control plane");
    }
    if let Some(a) = &r.attribution {
        let pct = |n: u64| 100.0 * n as f64 / a.requests.max(1) as f64;
        let _ = writeln!(
            o,
            "workloads: {} flows, {} attributed ({:.1}%), {} process gone, {} not local, {} dropped; \
             eBPF tracer {}",
            a.requests,
            a.attributed,
            pct(a.attributed),
            a.process_gone,
            a.not_local,
            a.dropped,
            if a.ebpf {
                format!("on ({} from its records)", a.ebpf_hits)
            } else {
                "off".to_owned()
            }
        );
    }
    let _ = writeln!(
        o,
        "{:<12} {:>12} {:>14} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10}",
        "interface",
        "packets",
        "bytes",
        "k-drops",
        "if-drops",
        "errors",
        "flows",
        "streams",
        "events"
    );
    for i in &r.interfaces {
        let _ = writeln!(
            o,
            "{:<12} {:>12} {:>14} {:>10} {:>10} {:>8} {:>8} {:>10} {:>10}",
            i.name,
            i.packets,
            i.bytes,
            i.kernel_dropped,
            i.interface_dropped,
            i.parse_errors,
            i.live_flows,
            i.streams,
            i.events
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{AgentStatus, ConnectionState, InterfaceCounters};
    use std::sync::Arc;

    #[test]
    fn durations_and_report_render() {
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(185), "3m05s");
        assert_eq!(human_duration(3720), "1h02m");
        let st = AgentStatus::new(vec![Arc::new(InterfaceCounters::new("eth0"))], None);
        st.update_uplink(|u| {
            u.state = ConnectionState::Connected;
            u.server = Some("cp:3001".into());
            u.spiffe_id = Some("spiffe://hais.local/hais/agent/a1".into());
            u.svid_expiry_unix = Some(2_000);
            u.since_unix_ms = 1_000_000;
        });
        let text = render(&st.report(), 1_060_000);
        assert!(
            text.contains("uplink:    connected (cp:3001) for 1m00s"),
            "{text}"
        );
        assert!(text.contains("SVID expires in 15m40s"), "{text}");
        assert!(text.contains("\neth0 "), "{text}");
        assert!(
            !text.contains("workloads:"),
            "no attributor, no line: {text}"
        );
        let mut r = st.report();
        r.attribution = Some(crate::status::AttributionReport {
            requests: 8,
            attributed: 6,
            process_gone: 1,
            not_local: 1,
            ebpf: true,
            ebpf_hits: 5,
            ..Default::default()
        });
        let text = render(&r, 1_060_000);
        assert!(
            text.contains(
                "workloads: 8 flows, 6 attributed (75.0%), 1 process gone, 1 not local, 0 dropped; \
                 eBPF tracer on (5 from its records)"
            ),
            "{text}"
        );
    }
}
