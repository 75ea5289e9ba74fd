//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) and every crasher ever found
//! (`fuzz/regressions/<target>/`) through the same `hais_agent::fuzzing` functions the
//! `cargo fuzz` targets call, so a regression shows up in the ordinary `cargo test`, no
//! nightly toolchain or libFuzzer needed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use hais_agent::fuzzing;

type Target = fn(&[u8]);

const TARGETS: &[(&str, Target)] = &[
    ("tls_handshake", fuzzing::tls_handshake),
    ("quic_initial", fuzzing::quic_initial),
    ("http1", fuzzing::http1),
    ("http2", fuzzing::http2),
    ("ssh", fuzzing::ssh),
    ("dhcp", fuzzing::dhcp),
    ("x509", fuzzing::x509),
    ("decode_chain", fuzzing::decode_chain),
    ("wire", fuzzing::wire),
    ("spool", fuzzing::spool),
    ("identity_text", fuzzing::identity_text),
    ("svid", fuzzing::svid),
    ("sock_diag", fuzzing::sock_diag),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("read corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Runs every file under `<fuzz>/<kind>/<target>/`; returns (files run, failures).
fn replay(kind: &str) -> (usize, Vec<String>) {
    let root = fuzz_dir().join(kind);
    let mut run = 0;
    let mut failures = Vec::new();
    for dir in files_and_dirs(&root) {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(f) = target(name) else {
            failures.push(format!("{}: no fuzz target of that name", dir.display()));
            continue;
        };
        for file in files(&dir) {
            let data = std::fs::read(&file).expect("read corpus file");
            run += 1;
            if catch_unwind(AssertUnwindSafe(|| f(&data))).is_err() {
                failures.push(file.display().to_string());
            }
        }
    }
    (run, failures)
}

fn files_and_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("read fuzz directory").path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_a_corpus() {
    for (name, _) in TARGETS {
        let n = files(&fuzz_dir().join("corpus").join(name)).len();
        assert!(n > 0, "fuzz/corpus/{name}/ is empty");
    }
}

#[test]
fn corpus_replays_clean() {
    let (run, failures) = replay("corpus");
    eprintln!("replayed {run} corpus inputs");
    assert!(run > 0, "no corpus found under {}", fuzz_dir().display());
    assert!(
        failures.is_empty(),
        "corpus inputs failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn regressions_replay_clean() {
    let (_, failures) = replay("regressions");
    assert!(
        failures.is_empty(),
        "regression inputs failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn empty_and_tiny_inputs() {
    for (name, f) in TARGETS {
        for data in [&[][..], &[0], &[0xff; 3], &[1, 0, 0, 0]] {
            let ok = catch_unwind(AssertUnwindSafe(|| f(data))).is_ok();
            assert!(ok, "{name} panicked on {data:?}");
        }
    }
}

/// Writes seed inputs for the `wire`, `spool`, `identity_text` and `svid` targets into
/// `$HAIS_FUZZ_SEEDS/<target>/` (default: `<temp dir>/hais-fuzz-seeds`). The committed corpora
/// grew from these: `cargo test -p hais-agent --test fuzz_corpus write_seeds -- --ignored`.
#[test]
#[ignore = "generates fuzz seeds; run by hand"]
fn write_seeds() {
    let root = std::env::var_os("HAIS_FUZZ_SEEDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("hais-fuzz-seeds"));
    for (target, inputs) in seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, data) in inputs.iter().enumerate() {
            // Every seed must pass its own target.
            (target_fn(target))(data);
            std::fs::write(dir.join(format!("seed-{i:02}")), data).unwrap();
        }
        eprintln!("{target}: {} seeds in {}", inputs.len(), dir.display());
    }
}

fn target_fn(name: &str) -> Target {
    target(name).expect("a fuzz target")
}

mod seeds {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use hais_agent::uplink::spool::{Spool, SpoolOptions};
    use hais_shared::event::{Fingerprint, FingerprintEvent, Flow, Transport, Workload};
    use hais_shared::fingerprint::Method;
    use hais_shared::spiffe::SpiffeId;
    use hais_shared::wire::{self, request, response};
    use hais_svid::{CertificateAuthority, JoinToken};

    pub fn all() -> Vec<(&'static str, Vec<Vec<u8>>)> {
        let ca = CertificateAuthority::generate("hais.local").unwrap();
        let agent = ca
            .issue(
                &SpiffeId::agent("hais.local", "4f1c2a").unwrap(),
                &[],
                Duration::from_secs(3600),
            )
            .unwrap();
        let leaf = agent.chain[0].to_vec();
        let ca_der = ca.cert_der().to_vec();
        vec![
            ("wire", wire_seeds(&leaf, &ca_der)),
            ("spool", spool_seeds()),
            ("identity_text", identity_seeds(&ca)),
            ("svid", svid_seeds(&leaf, &agent.key_pkcs8, &ca_der)),
        ]
    }

    fn events() -> Vec<FingerprintEvent> {
        let mut a = FingerprintEvent::new(
            "agent-1",
            "web-01",
            Flow {
                src_ip: "10.0.0.2".parse().unwrap(),
                src_port: 51000,
                dst_ip: "93.184.216.34".parse().unwrap(),
                dst_port: 443,
                transport: Transport::Tcp,
            },
        );
        a.server_name = Some("example.com".into());
        a.fingerprints.push(Fingerprint {
            method: Method::Ja4,
            value: "t13d1516h2_8daaf6152771_e5627efa2ab1".into(),
        });
        a.fingerprints.push(Fingerprint {
            method: Method::Ja4t,
            value: "64240_2-1-3-1-1-4_1460_8".into(),
        });
        let mut b = FingerprintEvent::new(
            "agent-1",
            "web-01",
            Flow {
                src_ip: "2001:db8::1".parse().unwrap(),
                src_port: 40000,
                dst_ip: "2001:db8::2".parse().unwrap(),
                dst_port: 443,
                transport: Transport::Udp,
            },
        );
        b.fingerprints.push(Fingerprint {
            method: Method::Ja4,
            value: "q13d0310h3_55b375c5d22e_cd85d2d88918".into(),
        });
        b.workload = Workload {
            pid: Some(4242),
            process: Some("curl".into()),
            uid: Some(1000),
            exe: Some("/usr/bin/curl".into()),
            cmdline: Some("curl https://example.com".into()),
            user: Some("alice".into()),
            container: Some("3f2a9c".into()),
            container_runtime: Some("docker".into()),
            container_labels: BTreeMap::from([("app".into(), "web".into())]),
            k8s_namespace: Some("payments".into()),
            spiffe_id: Some("spiffe://hais.local/ns/payments".into()),
            direction: Some("outbound".into()),
            ..Workload::default()
        };
        vec![a, b]
    }

    fn batch(events: Vec<wire::Event>) -> Vec<u8> {
        wire::encode(&wire::Request::new(request::Body::Batch(
            wire::EventBatch { seq: 7, events },
        )))
    }

    fn wire_seeds(leaf: &[u8], ca: &[u8]) -> Vec<Vec<u8>> {
        let evs: Vec<wire::Event> = events().iter().map(wire::Event::from).collect();
        let mut bad_id = evs[0].clone();
        bad_id.id = uuid::Uuid::nil().as_bytes().to_vec();
        let mut no_flow = evs[0].clone();
        no_flow.flow = None;
        let mut bad_ip = evs[1].clone();
        bad_ip.flow.as_mut().unwrap().src_ip = vec![1, 2, 3];
        vec![
            batch(evs.clone()),
            batch(vec![evs[1].clone()]),
            batch(vec![bad_id, no_flow, bad_ip]),
            wire::encode(&wire::Request::new(request::Body::Heartbeat(
                wire::Heartbeat {
                    version: "0.1.0".into(),
                    uptime_s: 60,
                    interfaces: vec!["eth0".into()],
                    packets: 1000,
                    hostname: "web-01".into(),
                    attribution: Some(wire::AttributionCounters {
                        requests: 10,
                        attributed: 9,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ))),
            wire::encode(&wire::Request::new(request::Body::Enroll(
                wire::EnrollRequest {
                    token: "0123456789abcdef.0123456789abcdef0123456789abcdef".into(),
                    csr_der: vec![0x30, 0x03, 0x02, 0x01, 0x01],
                    hostname: "web-01".into(),
                    agent_version: "0.1.0".into(),
                },
            ))),
            wire::encode(&wire::Response::new(response::Body::Ack(wire::BatchAck {
                seq: 7,
                stored: 1,
                duplicates: 1,
                rejected: vec![wire::RejectedEvent {
                    index: 2,
                    reason: "id is invalid".into(),
                }],
            }))),
            wire::encode(&wire::Response::new(response::Body::Svid(
                wire::SvidResponse {
                    spiffe_id: "spiffe://hais.local/hais/agent/4f1c2a".into(),
                    svid_chain_der: vec![leaf.to_vec()],
                    bundle_der: vec![ca.to_vec()],
                    agent_id: "4f1c2a".into(),
                },
            ))),
            wire::encode(&wire::Response::error(
                wire::ErrorCode::UnsupportedVersion,
                "protocol 2",
            )),
        ]
    }

    /// A real spool segment holding `records`.
    fn segment(records: &[Vec<u8>]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool");
        {
            let mut s = Spool::open(SpoolOptions::new(&path, 1 << 20)).unwrap();
            s.append(records).unwrap();
        }
        std::fs::read(path.join("00000000000000000001.seg")).unwrap()
    }

    fn spool_seeds() -> Vec<Vec<u8>> {
        let records: Vec<Vec<u8>> = events()
            .iter()
            .map(|e| wire::encode(&wire::Event::from(e)))
            .chain((0..3).map(|i| format!("event-{i}").into_bytes()))
            .collect();
        let seg = segment(&records);
        let with = |flags: u8, cfg: u8, head: u16, tail: &[u8]| {
            let mut v = vec![flags, cfg];
            v.extend_from_slice(&head.to_be_bytes());
            v.extend_from_slice(tail);
            v
        };
        let mut torn = seg.clone();
        torn.extend_from_slice(&[100, 0, 0, 0, 1, 2, 3, 4, 5]);
        let mut crc = seg.clone();
        let n = crc.len();
        crc[n - 3] ^= 0x40;
        // Framed mode: cut, flip_at, flip, then `len: u8 | payload` records.
        let mut framed = vec![0, 0, 0, 0, 0];
        for r in ["a", "bb", "event-1", ""] {
            framed.push(r.len() as u8);
            framed.extend_from_slice(r.as_bytes());
        }
        let mut framed_cut = framed.clone();
        framed_cut[..2].copy_from_slice(&20u16.to_be_bytes());
        // One 16-byte record, all acknowledged: the restart deletes the segment, and the
        // records appended after it must not be taken as acknowledged by the stale head.
        let mut acked = vec![0, 0, 0, 0, 0, 16];
        acked.extend_from_slice(b"0123456789abcdef");
        let mut head_text = vec![4];
        head_text.extend_from_slice(b"1 0\n");
        head_text.extend_from_slice(&seg);
        vec![
            with(0, 3, 0, &seg),
            with(0b0000_0010, 0, 2, &seg),
            with(0b0000_0100, 1, 0, &torn),
            with(0b0001_1000, 15, 0, &crc),
            with(0b0010_0000, 1, 0, &seg),
            with(0b0100_0001, 2, 0, &framed),
            with(0b1000_0001, 0, 0, &framed_cut),
            with(0b0000_0110, 4, 0, &head_text),
            with(0b1100_0000, 7, 0, &seg[..seg.len() / 2]),
            with(0b0000_0011, 0, 1, &acked),
        ]
    }

    fn identity_seeds(ca: &CertificateAuthority) -> Vec<Vec<u8>> {
        let tagged = |sel: u8, s: &str| {
            let mut v = vec![sel];
            v.extend_from_slice(s.as_bytes());
            v
        };
        let token = JoinToken::generate(ca.hash());
        let x5c = base64(&ca.cert_der());
        let jwks = format!(
            r#"{{"keys":[{{"use":"x509-svid","kty":"EC","crv":"P-256","x":"x","y":"y","x5c":["{x5c}"]}},{{"use":"jwt-svid","kty":"EC","kid":"k"}}],"spiffe_refresh_hint":300}}"#
        );
        let spire = r#"{"entries": [
  {"id": "e1", "spiffe_id": {"trust_domain": "prod.example", "path": "/ns/payments/sa/api"},
   "parent_id": {"trust_domain": "prod.example", "path": "/spire/agent/k8s_psat/c1/n1"},
   "selectors": [{"type": "k8s", "value": "ns:payments"}, {"type": "k8s", "value": "sa:api"}]},
  {"id": "e2", "spiffe_id": {"trust_domain": "prod.example", "path": "/db"},
   "parent_id": {"trust_domain": "prod.example", "path": "/hais/agent/a7"},
   "selectors": [{"type": "unix", "value": "uid:999"}, {"type": "docker", "value": "label:app:db"}]},
  {"id": "e3", "spiffe_id": {"trust_domain": "prod.example", "path": "/web"},
   "selectors": [{"type": "k8s", "value": "container-name:nginx"}]},
  {"id": "e4", "spiffe_id": {"trust_domain": "Bad TD", "path": "/x"},
   "selectors": [{"type": "unix", "value": "uid:1"}]}
]}"#;
        vec![
            tagged(0, "spiffe://hais.local/hais/agent/4f1c2a"),
            tagged(0, "spiffe://example.org/ns/payments/sa/api"),
            tagged(0, "spiffe://td"),
            tagged(1, "unix:uid:1000"),
            tagged(1, "unix:path:/usr/bin/curl"),
            tagged(1, "docker:label:app:web"),
            tagged(1, "k8s:pod-uid:6f1c2a0e-9b1d-4c57-8a1e-3f2d5e6a7b8c"),
            tagged(1, "k8s:sa:api.payments"),
            tagged(
                1,
                "unix:sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            tagged(1, "hais:agent:4f1c2a"),
            tagged(2, spire),
            tagged(3, &token.to_string()),
            tagged(3, &format!(" {token}\n")),
            tagged(3, &token.credential()),
            tagged(4, &ca.bundle().to_pem()),
            tagged(4, &jwks),
        ]
    }

    /// Standard base64 with padding (the agent has no base64 dependency).
    fn base64(data: &[u8]) -> String {
        const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn svid_seeds(leaf: &[u8], key: &[u8], ca: &[u8]) -> Vec<Vec<u8>> {
        let chunked = |parts: &[&[u8]]| {
            let mut v = vec![1];
            for p in parts {
                v.extend_from_slice(&(p.len() as u16).to_be_bytes());
                v.extend_from_slice(p);
            }
            v
        };
        let plain = |der: &[u8]| {
            let mut v = vec![0];
            v.extend_from_slice(der);
            v
        };
        vec![
            plain(leaf),
            plain(ca),
            chunked(&[key, leaf, ca]),
            chunked(&[key, leaf]),
            chunked(&[key, ca]),
        ]
    }
}
