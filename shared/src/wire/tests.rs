use prost::Message;

use super::*;
use crate::event::{self, FingerprintEvent, Workload};
use crate::fingerprint::Method as DomainMethod;

fn sample(v6: bool) -> FingerprintEvent {
    let (src, dst) = if v6 {
        ("fd00::2", "fd00::1")
    } else {
        ("10.0.0.2", "10.0.0.1")
    };
    let mut e = FingerprintEvent::new(
        "agent-1",
        "web-01",
        event::Flow {
            src_ip: src.parse().unwrap(),
            src_port: 51000,
            dst_ip: dst.parse().unwrap(),
            dst_port: 443,
            transport: event::Transport::Tcp,
        },
    );
    e.server_name = Some("example.com".into());
    e.ja4_stable = Some("t13d1514h2_8daaf6152771_0f2d6ba15cd1".into());
    for m in DomainMethod::ALL {
        e.fingerprints.push(event::Fingerprint {
            method: m,
            value: format!("{m}_value"),
        });
    }
    e
}

#[test]
fn events_round_trip_through_the_wire_form() {
    for v6 in [false, true] {
        let mut e = sample(v6);
        if v6 {
            e.workload = Workload {
                pid: Some(42),
                process: Some("curl".into()),
                uid: Some(1000),
                pod: Some("pod-1".into()),
                spiffe_id: Some("spiffe://hais.local/w".into()),
                exe: Some("/usr/bin/curl".into()),
                exe_sha256: Some("ab".repeat(32)),
                cmdline: Some("curl -s https://x/".into()),
                user: Some("svc".into()),
                cgroup: Some("/system.slice/x.service".into()),
                container_runtime: Some("docker".into()),
                container_labels: [("app".to_string(), "payments".to_string())].into(),
                k8s_namespace: Some("payments".into()),
                k8s_service_account: Some("api".into()),
                k8s_pod_name: Some("api-7d4b9c8f6d-x2x9q".into()),
                container_image: Some("registry.local/payments/api:1.2".into()),
                container_name: Some("api".into()),
                direction: Some("outbound".into()),
                ..Workload::default()
            };
        }
        let batch = Request::new(request::Body::Batch(EventBatch {
            seq: 7,
            events: vec![(&e).into()],
        }));
        let bytes = encode(&batch);
        let back: Request = decode(&bytes).unwrap();
        assert_eq!(back.version, PROTOCOL_VERSION);
        let Some(request::Body::Batch(b)) = back.body else {
            panic!("not a batch")
        };
        assert_eq!(b.seq, 7);
        let got = FingerprintEvent::try_from(b.events[0].clone()).unwrap();
        assert_eq!(got, e);
    }
}

#[test]
fn a_batch_of_1000_events_stays_small() {
    let events: Vec<Event> = (0..1000).map(|_| (&sample(false)).into()).collect();
    let n = encode(&EventBatch { seq: 1, events }).len();
    // Eleven fingerprints per event is the worst case; typical events carry two to four.
    assert!(n < MAX_MESSAGE_LEN / 16, "{n} bytes");
}

/// A newer peer's message with a field this build does not know: the field is skipped, the rest
/// decodes. This is what lets an old agent and a newer control plane talk.
#[test]
fn unknown_fields_from_a_newer_peer_are_skipped() {
    #[derive(Clone, PartialEq, Message)]
    struct FutureHeartbeat {
        #[prost(string, tag = "1")]
        version: String,
        #[prost(uint64, tag = "2")]
        uptime_s: u64,
        #[prost(string, tag = "99")]
        something_new: String,
    }
    let future = FutureHeartbeat {
        version: "9.0.0".into(),
        uptime_s: 12,
        something_new: "ignored".into(),
    };
    let hb: Heartbeat = decode(&future.encode_to_vec()).unwrap();
    assert_eq!(hb.version, "9.0.0");
    assert_eq!(hb.uptime_s, 12);
    // And an older peer's message (fewer fields) decodes with defaults.
    let old = Heartbeat {
        version: "0.1.0".into(),
        ..Default::default()
    };
    let back: Heartbeat = decode(&old.encode_to_vec()).unwrap();
    assert_eq!(back.packets, 0);
}

#[test]
fn an_unknown_body_decodes_as_none() {
    // Tag 14 is not a body this build knows: a newer agent's new request kind.
    #[derive(Clone, PartialEq, Message)]
    struct FutureRequest {
        #[prost(uint32, tag = "1")]
        version: u32,
        #[prost(string, tag = "14")]
        new_kind: String,
    }
    let r: Request = decode(
        &FutureRequest {
            version: 1,
            new_kind: "x".into(),
        }
        .encode_to_vec(),
    )
    .unwrap();
    assert_eq!(r.version, 1);
    assert!(r.body.is_none());
}

#[test]
fn hostile_bytes_are_errors_not_panics() {
    let good = encode(&Request::new(request::Body::Batch(EventBatch {
        seq: 1,
        events: vec![(&sample(false)).into()],
    })));
    for cut in 0..good.len() {
        let _ = decode::<Request>(&good[..cut]);
    }
    assert!(decode::<Request>(&[0xff; 64]).is_err());
    assert!(matches!(
        decode::<Request>(&vec![0u8; MAX_MESSAGE_LEN + 1]),
        Err(WireError::TooLarge(_))
    ));
}

#[test]
fn shape_errors_name_the_field() {
    let mut e: Event = (&sample(false)).into();
    e.id.truncate(3);
    assert_eq!(
        FingerprintEvent::try_from(e).unwrap_err().to_string(),
        "id is invalid: not 16 bytes"
    );
    let mut e: Event = (&sample(false)).into();
    e.flow.as_mut().unwrap().src_ip = vec![1, 2, 3];
    assert!(
        FingerprintEvent::try_from(e)
            .unwrap_err()
            .to_string()
            .starts_with("flow.src_ip")
    );
    let mut e: Event = (&sample(false)).into();
    e.flow.as_mut().unwrap().dst_port = 70000;
    assert!(FingerprintEvent::try_from(e).is_err());
    let mut e: Event = (&sample(false)).into();
    e.fingerprints[0].method = 77;
    assert!(
        FingerprintEvent::try_from(e)
            .unwrap_err()
            .to_string()
            .contains("unknown value 77")
    );
    let mut e: Event = (&sample(false)).into();
    e.flow = None;
    assert_eq!(
        FingerprintEvent::try_from(e).unwrap_err(),
        WireError::Missing("flow")
    );
}

#[test]
fn error_responses_carry_code_and_message() {
    let r: Response = decode(&encode(&Response::error(
        ErrorCode::Revoked,
        "agent revoked",
    )))
    .unwrap();
    let Some(response::Body::Error(e)) = r.body else {
        panic!()
    };
    assert_eq!(ErrorCode::try_from(e.code), Ok(ErrorCode::Revoked));
    assert_eq!(e.message, "agent revoked");
}

#[test]
fn recover_requests_round_trip_and_the_signed_message_binds_connection_and_csr() {
    let req = Request::new(request::Body::Recover(RecoverRequest {
        svid_chain_der: vec![vec![1, 2, 3], vec![4]],
        csr_der: vec![5; 10],
        signature: vec![6; 70],
    }));
    let back: Request = decode(&encode(&req)).unwrap();
    assert_eq!(back, req);
    let m = recover_signed_message(&[1; RECOVER_BINDING_LEN], b"csr");
    assert_ne!(m, recover_signed_message(&[2; RECOVER_BINDING_LEN], b"csr"));
    assert_ne!(
        m,
        recover_signed_message(&[1; RECOVER_BINDING_LEN], b"csr2")
    );
    // Length-prefixed: moving bytes from the binding to the CSR changes the message.
    assert_ne!(
        recover_signed_message(b"ab", b"c"),
        recover_signed_message(b"a", b"bc")
    );
}
