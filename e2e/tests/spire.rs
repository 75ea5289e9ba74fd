//! SPIRE integration end to end: the real agent takes its identity from a SPIFFE Workload API
//! (a server in this test speaking the protocol over a Unix socket, as a SPIRE agent does)
//! instead of enrolling; the real control plane trusts that SPIRE's bundle (a file, as
//! `[spire.external]` configures it); events flow; SPIRE rotates the SVID and the agent
//! reconnects with the new one without losing events; the fleet shows the agent and its SVID.
//!
//! Needs capture rights on `lo` (root); without them the test says so and passes vacuously.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use hais_e2e::cluster::{Agent, ControlPlane, can_capture};
use hais_e2e::proc::wait_for;
use hais_shared::spiffe::SpiffeId;
use hais_svid::{CertificateAuthority, Svid};
use hais_workload_api::testing::{Issued, WorkloadApiServer};
use serde_json::Value;

const SPIRE_TD: &str = "prod.example";
const AGENT_NAME: &str = "node-e2e";

fn issue(ca: &CertificateAuthority, id: &SpiffeId) -> Svid {
    let (key, csr) = hais_svid::generate_csr().unwrap();
    let chain = ca.sign_csr(&csr, id, Duration::from_secs(3600)).unwrap();
    Svid::from_der(chain.into_iter().map(|c| c.to_vec()).collect(), key).unwrap()
}

/// A loopback HTTP server answering every request, so each connection makes a full flow.
fn http_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    port
}

fn requests(port: u16, n: usize) {
    for i in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let req =
            format!("GET /spire/{i} HTTP/1.1\r\nHost: hais.test\r\nUser-Agent: hais-e2e\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
    }
}

fn uplink_field(agent: &Agent, field: &str) -> u64 {
    agent
        .status()
        .and_then(|s| s["uplink"][field].as_u64())
        .unwrap_or(0)
}

#[test]
fn agent_identity_from_spire_with_rotation() {
    if !can_capture() {
        eprintln!("skipped: capturing on lo needs root or CAP_NET_RAW");
        return;
    }
    let dir = std::env::temp_dir().join(format!("hais-e2e-spire-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // SPIRE: a CA for prod.example, its bundle in a file the control plane reads.
    let spire_ca = CertificateAuthority::generate(SPIRE_TD).unwrap();
    let bundle_file = dir.join("spire-bundle.pem");
    std::fs::write(&bundle_file, spire_ca.cert_pem()).unwrap();
    let bundle_path = bundle_file.to_string_lossy().into_owned();
    let cp = ControlPlane::start(
        &dir.join("cp"),
        &[
            ("HAIS_SPIRE_EXTERNAL_TRUST_DOMAIN", SPIRE_TD),
            ("HAIS_SPIRE_EXTERNAL_BUNDLE_FILE", &bundle_path),
            ("HAIS_SPIRE_EXTERNAL_REFRESH", "2s"),
        ],
    );
    let token = cp.login();
    // The agent checks the control plane by its CA, given as a file.
    let cp_bundle_file = dir.join("cp-bundle.pem");
    std::fs::write(&cp_bundle_file, cp.bundle_pem(&token)).unwrap();

    let id = SpiffeId::agent(SPIRE_TD, AGENT_NAME).unwrap();
    let first = issue(&spire_ca, &id);
    let issued = |svid: Svid| Issued {
        svid,
        bundle: spire_ca.bundle(),
        federated: vec![],
    };
    let server = {
        let _guard = rt.enter();
        WorkloadApiServer::start(&dir.join("spire-agent.sock"), &issued(first.clone())).unwrap()
    };

    let port = http_server();
    let mut agent = Agent::new(&dir.join("agent"));
    agent.env = vec![
        (
            "HAIS_SPIRE_WORKLOAD_API_SOCKET".into(),
            server.socket.to_string_lossy().into_owned(),
        ),
        (
            "HAIS_SPIRE_CONTROL_PLANE_BUNDLE".into(),
            cp_bundle_file.to_string_lossy().into_owned(),
        ),
        ("HAIS_ATTRIBUTION".into(), "0".into()),
    ];
    let bpf = format!("tcp port {port}");
    agent.run(cp.uplink, &["-i", "lo", "--bpf", &bpf]);
    wait_for(
        "agent connected with its SPIRE SVID",
        Duration::from_secs(30),
        || {
            let s = agent.status()?;
            (s["uplink"]["state"] == "connected").then_some(s)
        },
    );
    assert!(server.calls() >= 1, "the agent asked the Workload API");

    // `doctor` takes the same identity from SPIRE and completes a real handshake with it.
    let out = agent
        .command()
        .args([
            "doctor",
            "--json",
            "--server",
            &cp.uplink.to_string(),
            "--state-dir",
        ])
        .arg(&agent.state_dir)
        .envs(agent.env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    let checks: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let outcome = |name: &str| {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .map(|c| (c["outcome"].clone(), c["detail"].clone()))
    };
    let (o, detail) = outcome("identity").expect("an identity check");
    assert_eq!(o, "ok", "{checks:?}");
    assert!(detail.as_str().unwrap().contains("from SPIRE"), "{detail}");
    assert_eq!(outcome("server").unwrap().0, "ok", "{checks:?}");

    // Events flow under the SPIRE identity, and the fleet knows the agent.
    requests(port, 20);
    wait_for("events stored", Duration::from_secs(30), || {
        (uplink_field(&agent, "events_stored") >= 20).then_some(())
    });
    let (st, fleet) = cp.get(&token, &format!("/api/spire/agents/{AGENT_NAME}"));
    assert_eq!(st, 200, "{fleet}\n{}", agent.log());
    assert_eq!(fleet["spiffe_id"], id.as_str());
    let (st, found) = cp.get(
        &token,
        &format!("/api/ja4/fingerprints?agent={AGENT_NAME}&method=ja4h"),
    );
    assert_eq!(st, 200, "{found}");
    assert!(
        !found["items"].as_array().is_none_or(Vec::is_empty),
        "no JA4H from {AGENT_NAME}: {found}"
    );

    // SPIRE rotates the SVID (new key): the agent reconnects with it, nothing is lost.
    let connects = uplink_field(&agent, "connects");
    let second = issue(&spire_ca, &id);
    server.rotate(&issued(second.clone()));
    wait_for(
        "reconnected with the rotated SVID",
        Duration::from_secs(30),
        || {
            let s = agent.status()?;
            let rotated = s["uplink"]["svid_expiry_unix"].as_i64()
                == Some(second.not_after.unix_timestamp())
                && s["uplink"]["renewals"].as_u64() >= Some(1);
            (rotated
                && s["uplink"]["connects"].as_u64() > Some(connects)
                && s["uplink"]["state"] == "connected")
                .then_some(())
        },
    );
    let before = uplink_field(&agent, "events_stored");
    requests(port, 20);
    wait_for(
        "events after the rotation stored",
        Duration::from_secs(30),
        || (uplink_field(&agent, "events_stored") >= before + 20).then_some(()),
    );
    // The fleet records the SVID the agent connects with now.
    wait_for(
        "fleet shows the rotated SVID",
        Duration::from_secs(10),
        || {
            let (_, a) = cp.get(&token, &format!("/api/spire/agents/{AGENT_NAME}"));
            let expires = a["svid_expires_us"].as_i64()? / 1_000_000;
            (expires == second.not_after.unix_timestamp()).then_some(())
        },
    );
    let status: Value = agent.status().unwrap();
    assert_eq!(status["uplink"]["spiffe_id"], id.as_str());
    assert_eq!(status["uplink"]["events_rejected"], 0, "{status}");

    drop(agent);
    drop(server);
    drop(cp);
    let _ = std::fs::remove_dir_all(&dir);
}
