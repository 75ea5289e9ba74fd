//! `hais-agent doctor`: checks what the agent needs and says what to fix.
//!
//! Checks, in the order an operator fixes things: capture privileges, interfaces, the state
//! directory, the identity (SVID present, valid, not near expiry), the server (a real QUIC
//! handshake with mutual TLS, as the uplink makes it), and the clock (skew against the control
//! plane, from the running agent's last heartbeat or from a heartbeat round trip). Exit 0 when
//! nothing failed (warnings allowed), 1 otherwise, 78 for a bad configuration.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use clap::Args;
use hais_shared::spiffe::SpiffeId;
use hais_shared::wire::{request, response};
use serde::Serialize;

use super::StateArgs;
use super::status::human_duration;
use crate::capture::live;
use crate::config::AgentConfig;
use crate::state::StateDir;
use crate::status::{AgentStatus, query};
use crate::uplink::client::{self, Transport};
use crate::uplink::events::hostname;
use crate::uplink::quic::clock_skew_ms;
use crate::uplink::spire::{SpireLink, SpireOptions};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// Control plane to test (default: as `run` would pick it).
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    /// Interface to check; repeat for several (default: as configured).
    #[arg(short = 'i', long = "interface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Warn,
    Fail,
    Skip,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    /// What to do about a warning or failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(check: &'static str, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check {
        check,
        outcome,
        detail: detail.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// Clock skew limits: beyond the first a warning (logs and latencies disagree); beyond the
/// second a failure (SVIDs are backdated by 60 s, so a fresh one would look not yet valid).
const SKEW_WARN_MS: i64 = 5_000;
const SKEW_FAIL_MS: i64 = 60_000;
/// CAP_NET_ADMIN (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

pub fn run(args: DoctorArgs) -> i32 {
    let mut cfg = match args.state.config() {
        Ok(c) => c,
        Err((code, msg)) => {
            eprintln!("hais-agent doctor: {msg}");
            return code;
        }
    };
    if !args.interfaces.is_empty() {
        cfg.capture.interfaces = args.interfaces.clone();
    }
    if let Some(s) = &args.server {
        cfg.uplink.server = s.clone();
    }
    let checks = run_checks(&cfg);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&checks).unwrap_or_default()
        );
    } else {
        for c in &checks {
            let tag = match c.outcome {
                Outcome::Ok => "ok  ",
                Outcome::Warn => "WARN",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "skip",
            };
            println!("[{tag}] {:<13} {}", c.check, c.detail);
            if let Some(f) = &c.fix {
                println!("       {:<13} fix: {f}", "");
            }
        }
    }
    i32::from(checks.iter().any(|c| c.outcome == Outcome::Fail))
}

/// Every check, in order.
pub fn run_checks(cfg: &AgentConfig) -> Vec<Check> {
    let state = StateDir::new(&cfg.state_dir);
    let mut out = vec![
        capabilities(),
        interfaces(cfg),
        attribution(cfg),
        state_dir(&state),
    ];
    // (SVID, CAs the server must chain to, the server's expected ID)
    let identity = match SpireOptions::from_config(&cfg.spire) {
        Ok(Some(opts)) => {
            let (c, id) = spire_identity(opts);
            out.push(c);
            id
        }
        Err(e) => {
            out.push(check("identity", Outcome::Fail, e).fix("fix the [spire] settings"));
            None
        }
        Ok(None) => {
            let identity = state.load_identity();
            out.push(identity_check(&state, &identity));
            identity.ok().flatten().and_then(|(svid, bundle)| {
                let expected = SpiffeId::control_plane(svid.spiffe_id.trust_domain()).ok()?;
                Some((svid, bundle, expected))
            })
        }
    };
    let running = query(&state.socket_path()).ok();
    out.push(match &running {
        Some(r) if r.uplink.problem.is_some() => {
            let c = check(
                "agent",
                Outcome::Fail,
                format!(
                    "running (pid {}, up {}), uplink {:?}: {}",
                    r.pid,
                    human_duration(r.uptime_s),
                    r.uplink.state,
                    r.uplink.problem.as_deref().unwrap_or_default()
                ),
            );
            match &r.uplink.fix {
                Some(f) => c.fix(f.clone()),
                None => c,
            }
        }
        Some(r) => check(
            "agent",
            Outcome::Ok,
            format!(
                "running (pid {}, up {}), uplink {:?}",
                r.pid,
                human_duration(r.uptime_s),
                r.uplink.state
            ),
        ),
        None => check(
            "agent",
            Outcome::Warn,
            "no running agent answers on the status socket",
        )
        .fix("start it: `hais-agent run` (or `systemctl start hais-agent`)"),
    });
    let server = Some(cfg.uplink.server.clone())
        .filter(|s| !s.is_empty())
        .or_else(|| state.load_server());
    let (reach, skew) = match (identity, server) {
        (Some((svid, _, _)), Some(server)) if svid.not_after <= time::OffsetDateTime::now_utc() => {
            (
                check(
                    "server",
                    Outcome::Skip,
                    format!(
                        "{server}: not tested, the SVID has expired (the running agent asks the \
                     control plane to renew it, proving it holds the key)"
                    ),
                ),
                None,
            )
        }
        (Some((svid, bundle, expected)), Some(server)) => {
            server_checks(&server, &svid, &bundle, &expected)
        }
        (_, None) => (
            check("server", Outcome::Fail, "no control plane configured")
                .fix("enroll (`hais-agent enroll --server HOST:PORT --token T`) or pass --server"),
            None,
        ),
        (_, Some(server)) => (
            check(
                "server",
                Outcome::Skip,
                format!("{server}: not tested, no usable identity for mutual TLS"),
            ),
            None,
        ),
    };
    out.push(reach);
    // A running agent's own measurement is the one that matters; doctor's is the fallback.
    let skew = running
        .as_ref()
        .and_then(|r| r.uplink.clock_skew_ms)
        .or(skew);
    out.push(clock(skew));
    out
}

fn capabilities() -> Check {
    let Some(eff) = live::effective_capabilities() else {
        return check(
            "capabilities",
            Outcome::Skip,
            "cannot read CapEff from /proc/self/status",
        );
    };
    let missing = live::missing_capabilities(eff);
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "/usr/bin/hais-agent".into());
    if !missing.is_empty() {
        return check(
            "capabilities",
            Outcome::Fail,
            format!("missing {} (live capture is impossible)", missing.join(", ")),
        )
        .fix(format!(
            "setcap cap_net_raw,cap_net_admin=eip {exe}, or under systemd AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN"
        ));
    }
    if eff & (1 << CAP_NET_ADMIN) == 0 {
        return check(
            "capabilities",
            Outcome::Warn,
            "CAP_NET_RAW present, CAP_NET_ADMIN missing (needed for promiscuous mode on some drivers)",
        )
        .fix(format!("setcap cap_net_raw,cap_net_admin=eip {exe}"));
    }
    check("capabilities", Outcome::Ok, "CAP_NET_RAW and CAP_NET_ADMIN")
}

/// Whether workload attribution can run here, tried for real: the netlink sock_diag socket
/// opened, and the eBPF connect tracer loaded and attached (then detached at once).
fn attribution(cfg: &AgentConfig) -> Check {
    let a = &cfg.attribution;
    if !a.enabled {
        return check("attribution", Outcome::Skip, "disabled by configuration");
    }
    if let Err(e) = hais_attribute::sockdiag::SockDiag::open() {
        return check(
            "attribution",
            Outcome::Warn,
            format!("netlink sock_diag unavailable ({e}): the agent runs without attribution"),
        )
        .fix("run on Linux with the inet_diag module (modprobe inet_diag), outside a sandbox that forbids netlink");
    }
    if !a.ebpf {
        return check(
            "attribution",
            Outcome::Ok,
            "sock_diag and /proc (eBPF connect tracer off by configuration)",
        );
    }
    match hais_attribute::ebpf::ConnectTracer::start() {
        Ok(_) => check(
            "attribution",
            Outcome::Ok,
            "eBPF connect tracer loads; sock_diag and /proc for the rest",
        ),
        Err(e) => check(
            "attribution",
            Outcome::Warn,
            format!("eBPF connect tracer unavailable ({e}): /proc alone, costlier and blind to processes that exit at once"),
        )
        .fix("Linux 5.8+ with CAP_BPF and CAP_PERFMON (or root) and tracefs at /sys/kernel/tracing; or set attribution.ebpf = false"),
    }
}

fn interfaces(cfg: &AgentConfig) -> Check {
    let wanted = cfg.interfaces();
    match live::check_interfaces(&wanted) {
        Ok(()) => check("interfaces", Outcome::Ok, wanted.join(", ")),
        Err(e) => check("interfaces", Outcome::Fail, e.to_string())
            .fix("set capture.interfaces (or -i) to interfaces that exist"),
    }
}

fn state_dir(state: &StateDir) -> Check {
    let p = state.path().display().to_string();
    let meta = match std::fs::metadata(state.path()) {
        Ok(m) => m,
        Err(e) => {
            return check("state dir", Outcome::Fail, format!("{p}: {e}"))
                .fix("enroll, which creates it, or set state_dir / --state-dir");
        }
    };
    if !meta.is_dir() {
        return check(
            "state dir",
            Outcome::Fail,
            format!("{p} is not a directory"),
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return check(
            "state dir",
            Outcome::Fail,
            format!("{p} has mode {mode:o}: others can read the agent's key"),
        )
        .fix(format!("chmod 700 {p}"));
    }
    let probe = state.path().join(".doctor");
    if let Err(e) = std::fs::write(&probe, b"") {
        return check(
            "state dir",
            Outcome::Fail,
            format!("{p} is not writable: {e}"),
        )
        .fix("run as the agent's user, or fix the directory's owner");
    }
    let _ = std::fs::remove_file(&probe);
    check(
        "state dir",
        Outcome::Ok,
        format!("{p} (mode {mode:o}, owner uid {})", meta.uid()),
    )
}

type Identity = Result<Option<(hais_svid::Svid, hais_svid::Bundle)>, crate::state::StateError>;

fn identity_check(state: &StateDir, identity: &Identity) -> Check {
    let svid = match identity {
        Ok(Some((svid, _))) => svid,
        Ok(None) => {
            return check(
                "identity",
                Outcome::Fail,
                format!("not enrolled (no SVID in {})", state.path().display()),
            )
            .fix("hais-agent enroll --server HOST:PORT --token TOKEN");
        }
        Err(e) => {
            return check("identity", Outcome::Fail, e.to_string()).fix(
                "an unreadable or corrupted identity cannot be renewed, not even by the control \
                 plane: create a join token (`hais-control-plane token create`) and run \
                 `hais-agent enroll --force`, then restart the agent",
            );
        }
    };
    svid_validity(
        svid,
        "nothing, if the agent runs: it asks the control plane to renew an expired SVID by itself \
         (within the control plane's spire.expired_renewal_grace, 7 days by default) and `hais-agent \
         status` says if that is refused; then create a new join token and run `hais-agent enroll --force`",
        "the running agent renews at half-life: check that it runs and is connected",
    )
}

/// The SVID a SPIRE agent hands out now, and whether the control plane can be checked.
fn spire_identity(
    opts: SpireOptions,
) -> (
    Check,
    Option<(hais_svid::Svid, hais_svid::Bundle, SpiffeId)>,
) {
    let socket = opts.socket.display().to_string();
    let got = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async { SpireLink::connect(opts).await.and_then(|l| l.identity()) })
        });
    match got {
        Ok(id) => {
            let c = svid_validity(
                &id.svid,
                "SPIRE did not rotate it: check the SPIRE agent (`spire-agent healthcheck`)",
                "SPIRE rotates at half-life: check the SPIRE agent",
            );
            let c = Check {
                detail: format!(
                    "{} (from SPIRE at {socket}); control plane must be {}",
                    c.detail, id.expected_server
                ),
                ..c
            };
            (c, Some((id.svid, id.server_trust, id.expected_server)))
        }
        Err(e) => (
            check("identity", Outcome::Fail, format!("SPIRE at {socket}: {e}")).fix(
                "check that the SPIRE agent runs and that this process is registered \
                 (spire-server entry create -spiffeID spiffe://<td>/hais/agent/<name> -selector …)",
            ),
            None,
        ),
    }
}

/// Expiry and renewal time of an SVID, whoever issued it.
fn svid_validity(svid: &hais_svid::Svid, expired_fix: &str, late_fix: &str) -> Check {
    let now = time::OffsetDateTime::now_utc();
    let left = (svid.not_after - now).whole_seconds();
    if left <= 0 {
        return check(
            "identity",
            Outcome::Fail,
            format!("{} expired at {}", svid.spiffe_id, svid.not_after),
        )
        .fix(expired_fix);
    }
    if svid.not_before > now {
        return check(
            "identity",
            Outcome::Fail,
            format!(
                "{} is not valid before {} (clock behind?)",
                svid.spiffe_id, svid.not_before
            ),
        )
        .fix("synchronise the clock (NTP)");
    }
    let detail = format!(
        "{}, SVID expires in {} ({})",
        svid.spiffe_id,
        human_duration(left as u64),
        svid.not_after
    );
    if now > svid.renew_at() + time::Duration::minutes(1) {
        return check(
            "identity",
            Outcome::Warn,
            format!("{detail}; past its renewal time"),
        )
        .fix(late_fix);
    }
    check("identity", Outcome::Ok, detail)
}

/// A QUIC handshake with the agent's SVID, then one heartbeat for the clock.
fn server_checks(
    server: &str,
    svid: &hais_svid::Svid,
    bundle: &hais_svid::Bundle,
    expected: &SpiffeId,
) -> (Check, Option<i64>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return (check("server", Outcome::Fail, format!("tokio: {e}")), None),
    };
    let res = rt.block_on(async {
        let tls = hais_svid::uplink_client_config(svid, bundle, expected)?;
        let t = Transport {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            ..Transport::default()
        };
        let started = Instant::now();
        let conn = client::connect(server, tls, &t).await?;
        let handshake = started.elapsed();
        let status = AgentStatus::new(Vec::new(), None);
        status.update_uplink(|u| u.svid_expiry_unix = Some(svid.not_after.unix_timestamp()));
        let hb = status.heartbeat(&hostname());
        let sent_at = hb.sent_at_unix_ms;
        let started = Instant::now();
        let answer =
            client::exchange(&conn.conn, request::Body::Heartbeat(hb), t.request_timeout).await;
        let rtt = started.elapsed();
        let addr = conn.addr;
        conn.close("doctor").await;
        let skew = match answer {
            Ok(response::Body::HeartbeatAck(a)) => {
                Some(clock_skew_ms(sent_at, rtt, a.server_time_unix_ms))
            }
            _ => None,
        };
        Ok::<_, client::ClientError>((addr, handshake, skew))
    });
    match res {
        Ok((addr, handshake, skew)) => (
            check(
                "server",
                Outcome::Ok,
                format!(
                    "{server} ({addr}): QUIC handshake with mutual TLS in {} ms",
                    handshake.as_millis()
                ),
            ),
            skew,
        ),
        Err(e) => (
            check("server", Outcome::Fail, format!("{server}: {e}")).fix(
                "check that the control plane runs, that UDP to its port (3001) is open, and that this agent is not revoked",
            ),
            None,
        ),
    }
}

fn clock(skew: Option<i64>) -> Check {
    match skew {
        None => check(
            "clock",
            Outcome::Skip,
            "skew unknown (no heartbeat round trip)",
        ),
        Some(s) if s.abs() > SKEW_FAIL_MS => check(
            "clock",
            Outcome::Fail,
            format!("{s:+} ms against the control plane"),
        )
        .fix("synchronise the clock (NTP): certificates are refused beyond about a minute"),
        Some(s) if s.abs() > SKEW_WARN_MS => check(
            "clock",
            Outcome::Warn,
            format!("{s:+} ms against the control plane"),
        )
        .fix("synchronise the clock (NTP)"),
        Some(s) => check(
            "clock",
            Outcome::Ok,
            format!("{s:+} ms against the control plane"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_thresholds() {
        assert_eq!(clock(None).outcome, Outcome::Skip);
        assert_eq!(clock(Some(120)).outcome, Outcome::Ok);
        assert_eq!(clock(Some(-6_000)).outcome, Outcome::Warn);
        assert_eq!(clock(Some(90_000)).outcome, Outcome::Fail);
    }

    #[test]
    fn a_corrupted_or_expired_identity_says_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        let state = StateDir::new(d.path());
        let ca = hais_svid::CertificateAuthority::generate("hais.local").unwrap();
        let id = SpiffeId::agent("hais.local", "a1").unwrap();
        let (key, csr) = hais_svid::generate_csr().unwrap();
        let chain = ca.sign_csr(&csr, &id, Duration::from_secs(1)).unwrap();
        let svid =
            hais_svid::Svid::from_der(chain.iter().map(|c| c.to_vec()).collect(), key).unwrap();
        svid.save(&ca.bundle(), d.path()).unwrap();
        std::thread::sleep(Duration::from_millis(2100));
        let c = identity_check(&state, &state.load_identity());
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.detail.contains("expired at"), "{c:?}");
        assert!(
            c.fix
                .as_deref()
                .unwrap()
                .contains("renew an expired SVID by itself"),
            "{c:?}"
        );
        std::fs::write(
            d.path().join("svid.pem"),
            "-----BEGIN CERTIFICATE-----\ngarbage\n",
        )
        .unwrap();
        let c = identity_check(&state, &state.load_identity());
        assert_eq!(c.outcome, Outcome::Fail);
        assert!(c.detail.contains("svid.pem"), "{c:?}");
        assert!(
            c.fix.as_deref().unwrap().contains("cannot be renewed"),
            "{c:?}"
        );
    }

    #[test]
    fn unenrolled_state_dir_fails_with_fixes() {
        let d = tempfile::tempdir().unwrap();
        let cfg = AgentConfig {
            state_dir: d.path().join("missing"),
            ..AgentConfig::default()
        };
        let checks = run_checks(&cfg);
        let by = |name: &str| checks.iter().find(|c| c.check == name).unwrap().clone();
        assert_eq!(by("state dir").outcome, Outcome::Fail);
        assert_eq!(by("identity").outcome, Outcome::Fail);
        assert!(by("identity").fix.unwrap().contains("hais-agent enroll"));
        assert_eq!(by("server").outcome, Outcome::Fail);
        assert_eq!(by("clock").outcome, Outcome::Skip);
        // Attribution is tried for real: as root with the tracer, or disabled.
        let root = live::effective_capabilities().is_some_and(|c| c & (1 << 39) != 0);
        if root && std::env::var_os("HAIS_SKIP_EBPF_TESTS").is_none() {
            let a = by("attribution");
            assert_eq!(a.outcome, Outcome::Ok, "{a:?}");
            assert!(a.detail.contains("eBPF connect tracer loads"), "{a:?}");
        }
        let mut off = cfg.clone();
        off.attribution.enabled = false;
        let checks = run_checks(&off);
        let a = checks.iter().find(|c| c.check == "attribution").unwrap();
        assert_eq!(a.outcome, Outcome::Skip);
    }
}
