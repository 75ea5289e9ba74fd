//! The identity service: registration entries (CRUD, validation, SPIRE import), resolution of
//! workload identities on ingest (HTTP and the QUIC uplink), conflicts, and the inventory. Run on
//! SQLite with the in-process bus and on PostgreSQL with Redis, like `api.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use common::quic::{ack, batch_req, call, enroll, uplink};
use common::{Backend, TestApp, enc, error_code, event};
use hais_control_plane::bus::BusMessage;
use hais_control_plane::bus::topics::{
    EntriesAction, EntriesChange, FingerprintEvents, IdentityEntries, LiveTopic,
};
use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use hais_shared::wire;
use serde_json::{Value, json};

const JA4_A: &str = "t13d1516h2_8daaf6152771_e5627efa2ab1";
const JA4_B: &str = "t13d1517h2_8daaf6152771_b0da82dd1658";
const JA4H_A: &str = "ge11nn05enus_974ebe531c03_000000000000_000000000000";
const JA4T_A: &str = "64240_2-4-8-1-3_1460_7";

type BusRx = tokio::sync::broadcast::Receiver<Arc<BusMessage>>;

fn bus(t: &TestApp) -> BusRx {
    t.app.as_ref().unwrap().state.bus.subscribe()
}

/// The workloads of the next `fingerprint.events` messages, in order, until `n` events.
async fn stored_workloads(rx: &mut BusRx, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("fingerprint.events in time")
            .unwrap();
        if let Some(batch) = m.decode::<FingerprintEvents>() {
            for e in batch.unwrap().events {
                out.push(serde_json::to_value(&e.workload).unwrap());
            }
        }
    }
    out
}

async fn create(t: &TestApp, spiffe_id: &str, selectors: &[&str]) -> Value {
    let (s, v) = t
        .call(
            "POST",
            "/api/identity/entries",
            Some(&t.admin),
            Some(json!({"spiffe_id": spiffe_id, "selectors": selectors})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

/// An event from a process with `uid` (and user, exe) on `host`.
fn process_event(host: &str, uid: u32, exe: &str, fps: &[(Method, &str)]) -> FingerprintEvent {
    let mut e = event("agent-1", host, Some("api.example"), fps, 0);
    e.workload.pid = Some(4242);
    e.workload.uid = Some(uid);
    e.workload.user = Some(format!("user{uid}"));
    e.workload.exe = Some(exe.into());
    e.workload.process = exe.rsplit('/').next().map(str::to_owned);
    e
}

async fn metric(t: &TestApp, name: &str) -> u64 {
    let req = axum::http::Request::builder()
        .uri("/metrics")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = tower::ServiceExt::oneshot(t.router.clone(), req)
        .await
        .unwrap();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
        .parse()
        .unwrap()
}

// ---------------------------------------------------------------- scenarios

/// Create, validate, list (paginated), get, delete; the service reports itself implemented.
async fn entries_crud_and_validation(backend: Backend) {
    let t = TestApp::start(backend, "idcrud").await;
    let mut rx = bus(&t);
    let (s, v) = t
        .call("GET", "/api/identity/status", Some(&t.admin), None)
        .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::OK, Some("ok")),
        "{v}"
    );

    let a = create(
        &t,
        "spiffe://prod.example/ns/payments/sa/api",
        &["k8s:sa:api", "k8s:ns:payments", "k8s:sa:api"],
    )
    .await;
    let id = a["id"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(a["selectors"], json!(["k8s:ns:payments", "k8s:sa:api"]));
    assert_eq!(a["created_by"], "admin");
    // Entry changes are announced on the bus, for split processes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let Some(change) = m.decode::<IdentityEntries>() {
            assert_eq!(
                change.unwrap(),
                EntriesChange {
                    action: EntriesAction::Created,
                    ids: vec![id.to_owned()],
                }
            );
            break;
        }
    }

    // Validation: the message names the bad part.
    for (body, want) in [
        (
            json!({"spiffe_id": "spiffe://prod/x", "selectors": ["unix:uid:1", "unix:uid:root"]}),
            "selectors[1]: unix:uid value \"root\" is invalid: not a number",
        ),
        (
            json!({"spiffe_id": "spiffe://prod/x", "selectors": ["unix:pid:1"]}),
            "selectors[0]: unknown selector unix:pid",
        ),
        (
            json!({"spiffe_id": "https://prod/x", "selectors": ["unix:uid:1"]}),
            "spiffe_id: a SPIFFE ID must start with",
        ),
        (
            json!({"spiffe_id": "spiffe://prod/x", "selectors": []}),
            "between 1 and 32 selectors",
        ),
    ] {
        let (s, v) = t
            .call("POST", "/api/identity/entries", Some(&t.admin), Some(body))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(error_code(&v), "invalid_request");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
    }
    let (s, v) = t
        .call(
            "POST",
            "/api/identity/entries",
            Some(&t.admin),
            Some(json!({"spiffe_id": "spiffe://prod/x", "selectors": ["unix:uid:1"], "x": 1})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "unknown fields are refused: {v}"
    );
    // The same SPIFFE ID and selector set (in any order) again: 409 naming the entry.
    let (s, v) = t
        .call(
            "POST",
            "/api/identity/entries",
            Some(&t.admin),
            Some(
                json!({"spiffe_id": "spiffe://prod.example/ns/payments/sa/api",
                        "selectors": ["k8s:sa:api", "k8s:ns:payments"]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(id), "{v}");
    // Same selectors, another ID: a separate entry.
    let b = create(
        &t,
        "spiffe://prod.example/other",
        &["k8s:ns:payments", "k8s:sa:api"],
    )
    .await;
    let c = create(&t, "spiffe://prod.example/db", &["unix:uid:999"]).await;

    // Listing pages in creation order.
    let (s, p1) = t
        .call("GET", "/api/identity/entries?limit=2", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{p1}");
    let ids = |p: &Value| -> Vec<String> {
        p["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&p1), [id, b["id"].as_str().unwrap()]);
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = t
        .call(
            "GET",
            &format!("/api/identity/entries?limit=2&cursor={cursor}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(ids(&p2), [c["id"].as_str().unwrap()]);
    assert_eq!(p2["next_cursor"], Value::Null);
    let (s, _) = t
        .call("GET", "/api/identity/entries?limit=0", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Get, delete, gone.
    let uri = format!("/api/identity/entries/{id}");
    let (s, v) = t.call("GET", &uri, Some(&t.admin), None).await;
    assert_eq!((s, &v), (StatusCode::OK, &a));
    let (s, _) = t
        .call("GET", "/api/identity/entries/nope", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = t.call("DELETE", &uri, Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = t.call("GET", &uri, Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = t.call("DELETE", &uri, Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Only admins change entries.
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/users",
            Some(&t.admin),
            Some(json!({"username": "ana", "password": "a-long-password-1", "role": "analyst"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let ana = t.login("ana", "a-long-password-1").await;
    let (s, _) = t
        .call(
            "POST",
            "/api/identity/entries",
            Some(&ana),
            Some(json!({"spiffe_id": "spiffe://prod/x", "selectors": ["unix:uid:1"]})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = t
        .call(
            "PUT",
            "/api/identity/entries/0192f6f0-0000-7000-8000-000000000000",
            Some(&ana),
            Some(json!({"spiffe_id": "spiffe://prod/x", "selectors": ["unix:uid:1"]})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = t
        .call("GET", "/api/identity/entries", Some(&ana), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    t.finish().await;
}

/// `spire-server entry show -output json`: importable entries become entries, the others are
/// skipped with their reason; importing again skips duplicates.
async fn spire_import(backend: Backend) {
    let t = TestApp::start(backend, "idimport").await;
    let doc = json!({"entries": [
      {"id": "e1", "spiffe_id": {"trust_domain": "prod.example", "path": "/ns/payments/sa/api"},
       "parent_id": {"trust_domain": "prod.example", "path": "/spire/agent/k8s_psat/c1/n1"},
       "selectors": [{"type": "k8s", "value": "ns:payments"}, {"type": "k8s", "value": "sa:api"}],
       "x509_svid_ttl": 3600, "federates_with": [], "admin": false, "downstream": false,
       "expires_at": "0", "dns_names": [], "revision_number": "0", "store_svid": false},
      {"id": "e2", "spiffe_id": {"trust_domain": "prod.example", "path": "/db"},
       "parent_id": {"trust_domain": "prod.example", "path": "/hais/agent/a7"},
       "selectors": [{"type": "unix", "value": "uid:999"}]},
      {"id": "e3", "spiffe_id": {"trust_domain": "prod.example", "path": "/web"},
       "selectors": [{"type": "k8s", "value": "container-name:nginx"}]},
      {"id": "e4", "spiffe_id": {"trust_domain": "Bad TD", "path": "/x"},
       "selectors": [{"type": "unix", "value": "uid:1"}]}
    ]});
    let (s, v) = t
        .call(
            "POST",
            "/api/identity/entries/import",
            Some(&t.admin),
            Some(doc.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let imported = v["imported"].as_array().unwrap();
    assert_eq!(imported.len(), 2, "{v}");
    assert_eq!(
        imported[0]["spiffe_id"],
        "spiffe://prod.example/ns/payments/sa/api"
    );
    assert_eq!(imported[0]["description"], "SPIRE entry e1");
    assert_eq!(imported[0]["created_by"], "spire-import:admin");
    assert_eq!(
        imported[1]["selectors"],
        json!(["unix:uid:999", "hais:agent:a7"])
    );
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2, "{v}");
    assert_eq!(skipped[0]["id"], "e3");
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown selector k8s:container-name"),
        "{v}"
    );
    assert_eq!(skipped[1]["id"], "e4");
    let (_, list) = t
        .call("GET", "/api/identity/entries", Some(&t.admin), None)
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);

    // Again: the two importable ones are duplicates now.
    let (s, v) = t
        .call(
            "POST",
            "/api/identity/entries/import",
            Some(&t.admin),
            Some(doc),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["imported"], json!([]));
    let reasons: Vec<&str> = v["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 4);
    assert!(reasons[2].starts_with("duplicate of entry "), "{reasons:?}");
    let (s, v) = t
        .call(
            "POST",
            "/api/identity/entries/import",
            Some(&t.admin),
            Some(json!({"entries": "nope"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("not SPIRE entry JSON")
    );
    t.finish().await;
}

/// Events are resolved on ingest: the most specific entry wins, a tie goes to the oldest entry
/// and is flagged (metric, inventory), a new entry applies to the next event at once, and the
/// JA4 detail lists the identities that presented a fingerprint.
async fn resolution_on_ingest(backend: Backend) {
    let t = TestApp::start(backend, "idresolve").await;
    let mut rx = bus(&t);
    create(&t, "spiffe://prod/uid1000", &["unix:uid:1000"]).await;
    create(
        &t,
        "spiffe://prod/curl",
        &["unix:uid:1000", "unix:path:/usr/bin/curl"],
    )
    .await;
    // Two equally specific entries that both match uid 2000 on web-01: the older one wins.
    create(
        &t,
        "spiffe://prod/svc-a",
        &["unix:user:user2000", "hais:host:web-01"],
    )
    .await;
    create(
        &t,
        "spiffe://prod/svc-b",
        &["unix:uid:2000", "hais:host:web-01"],
    )
    .await;

    let events = vec![
        process_event("web-01", 1000, "/usr/bin/curl", &[(Method::Ja4, JA4_A)]),
        process_event("web-01", 1000, "/usr/bin/python3", &[(Method::Ja4, JA4_B)]),
        process_event("web-01", 2000, "/usr/bin/svc", &[(Method::Ja4, JA4_A)]),
        process_event("web-02", 2000, "/usr/bin/svc", &[(Method::Ja4, JA4_A)]),
        process_event("web-01", 3000, "/usr/bin/other", &[(Method::Ja4, JA4_A)]),
    ];
    assert_eq!(
        t.ingest(&events).await,
        json!({"stored": 5, "duplicates": 0})
    );
    let w = stored_workloads(&mut rx, 5).await;
    assert_eq!(w[0]["spiffe_id"], "spiffe://prod/curl");
    assert_eq!(
        w[0]["selectors"],
        json!(["unix:uid:1000", "unix:path:/usr/bin/curl"])
    );
    assert_eq!(w[0]["exe"], "/usr/bin/curl", "facts are kept");
    assert_eq!(w[1]["spiffe_id"], "spiffe://prod/uid1000");
    assert_eq!(w[1]["selectors"], json!(["unix:uid:1000"]));
    assert_eq!(w[2]["spiffe_id"], "spiffe://prod/svc-a");
    assert_eq!(
        w[2]["selectors"],
        json!(["unix:user:user2000", "hais:host:web-01"])
    );
    assert_eq!(w[3].get("spiffe_id"), None, "web-02 matches nothing");
    assert_eq!(w[4].get("spiffe_id"), None);
    assert_eq!(w[4].get("selectors"), None);
    assert_eq!(metric(&t, "hais_identity_conflicts_total").await, 1);
    assert_eq!(metric(&t, "hais_identity_events_resolved_total").await, 3);
    assert_eq!(metric(&t, "hais_identity_events_unmatched_total").await, 2);
    // A replay is not counted again.
    t.ingest(&events[..1]).await;
    assert_eq!(metric(&t, "hais_identity_events_resolved_total").await, 3);

    // The stored events carry it: roll-ups are built from what was stored.
    let (s, d) = t
        .call(
            "GET",
            &format!("/api/ja4/fingerprints/ja4/{JA4_A}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let ids: Vec<&str> = d["identities"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["value"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["spiffe://prod/curl", "spiffe://prod/svc-a"]);

    // The conflict is visible in the inventory.
    let (s, v) = t
        .call(
            "GET",
            "/api/identity/identities/spiffe://prod/svc-a",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["conflicts"], 1);
    assert_eq!(
        v["conflicts_with"]["top"][0]["value"],
        "spiffe://prod/svc-b"
    );
    assert_eq!(v["conflicts_with"]["top"][0]["count"], 1);
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);

    // A new entry applies to the next event at once, with no agent involved; events stored
    // before keep what they got.
    create(&t, "spiffe://prod/other", &["unix:uid:3000"]).await;
    let later = process_event("web-01", 3000, "/usr/bin/other", &[(Method::Ja4, JA4_B)]);
    t.ingest(std::slice::from_ref(&later)).await;
    let w = stored_workloads(&mut rx, 1).await;
    assert_eq!(w[0]["spiffe_id"], "spiffe://prod/other");
    // Deleting it stops it at once too.
    let (_, list) = t
        .call(
            "GET",
            "/api/identity/entries?limit=1000",
            Some(&t.admin),
            None,
        )
        .await;
    let other = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["spiffe_id"] == "spiffe://prod/other")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Updating it (PUT, same body as creation) also applies at once; it keeps id and age.
    let uri = format!("/api/identity/entries/{other}");
    let put = |spiffe_id: &str, selectors: &[&str]| json!({"spiffe_id": spiffe_id, "selectors": selectors, "description": "renamed"});
    let (s, v) = t
        .call(
            "PUT",
            &uri,
            Some(&t.admin),
            Some(put("spiffe://prod/other-v2", &["unix:uid:3000"])),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["id"].as_str(), v["description"].as_str()),
        (Some(other.as_str()), Some("renamed"))
    );
    let updated = process_event("web-01", 3000, "/usr/bin/other", &[(Method::Ja4, JA4_A)]);
    t.ingest(&[updated]).await;
    let w = stored_workloads(&mut rx, 1).await;
    assert_eq!(w[0]["spiffe_id"], "spiffe://prod/other-v2");
    // Refused: a twin of another entry (409), a bad selector (400), an unknown id (404).
    let (s, v) = t
        .call(
            "PUT",
            &uri,
            Some(&t.admin),
            Some(put("spiffe://prod/uid1000", &["unix:uid:1000"])),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = t
        .call(
            "PUT",
            &uri,
            Some(&t.admin),
            Some(put("spiffe://prod/x", &["unix:uid:not-a-number"])),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("unix:uid"),
        "{v}"
    );
    let (s, _) = t
        .call(
            "PUT",
            "/api/identity/entries/0192f6f0-0000-7000-8000-000000000000",
            Some(&t.admin),
            Some(put("spiffe://prod/x", &["unix:uid:1"])),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t.call("DELETE", &uri, Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let again = process_event("web-01", 3000, "/usr/bin/other", &[(Method::Ja4, JA4_B)]);
    t.ingest(&[again]).await;
    let w = stored_workloads(&mut rx, 1).await;
    assert_eq!(w[0].get("spiffe_id"), None);
    t.finish().await;
}

/// The QUIC uplink resolves too (the same ingest path), including node-scoped entries
/// (`hais:agent:<id>`, what a SPIRE import of an entry parented to a HaIS agent gives).
async fn uplink_events_are_resolved(backend: Backend) {
    let t = TestApp::start(backend, "iduplink").await;
    let mut rx = bus(&t);
    let addr = t.app.as_ref().unwrap().uplink_addr.expect("uplink running");
    let a = enroll(addr, &t.join_token().await).await;
    create(
        &t,
        "spiffe://prod/node-db",
        &["unix:uid:999", &format!("hais:agent:{}", a.agent_id)],
    )
    .await;
    let conn = uplink(addr, &a).await.expect("uplink handshake");
    let mut e = process_event(
        "test-host",
        999,
        "/usr/bin/postgres",
        &[(Method::Ja4, JA4_A)],
    );
    e.agent_id = a.agent_id.clone();
    let mut other_uid = e.clone();
    other_uid.id = uuid::Uuid::now_v7();
    other_uid.workload.uid = Some(998);
    let got = ack(call(
        &conn,
        &batch_req(
            1,
            vec![wire::Event::from(&e), wire::Event::from(&other_uid)],
        ),
    )
    .await
    .unwrap());
    assert_eq!((got.stored, got.rejected.len()), (2, 0));
    let w = stored_workloads(&mut rx, 2).await;
    assert_eq!(w[0]["spiffe_id"], "spiffe://prod/node-db");
    assert_eq!(
        w[0]["selectors"],
        json!(["unix:uid:999", format!("hais:agent:{}", a.agent_id)])
    );
    assert_eq!(w[1].get("spiffe_id"), None);
    conn.close(0u32.into(), b"done");
    t.finish().await;
}

/// The inventory: per identity, fingerprints by method, first/last seen, counts, hosts,
/// destinations (server name, else ip:port); pagination; detail.
async fn inventory(backend: Backend) {
    let t = TestApp::start(backend, "idinventory").await;
    create(&t, "spiffe://prod/api", &["unix:uid:1000"]).await;
    create(&t, "spiffe://prod/web", &["unix:uid:33"]).await;
    let mut events = vec![
        process_event(
            "web-01",
            1000,
            "/usr/bin/api",
            &[(Method::Ja4, JA4_A), (Method::Ja4t, JA4T_A)],
        ),
        process_event("web-02", 1000, "/usr/bin/api", &[(Method::Ja4h, JA4H_A)]),
        process_event("web-01", 1000, "/usr/bin/api", &[(Method::Ja4, JA4_A)]),
        process_event("web-01", 33, "/usr/sbin/nginx", &[(Method::Ja4, JA4_B)]),
    ];
    events[1].server_name = None;
    events[1].flow.dst_ip = "2001:db8::7".parse().unwrap();
    events[1].flow.dst_port = 8443;
    events[0].timestamp -= time::Duration::seconds(30);
    t.ingest(&events).await;

    let (s, p1) = t
        .call(
            "GET",
            "/api/identity/identities?limit=1",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p1}");
    let api = &p1["items"][0];
    assert_eq!(api["spiffe_id"], "spiffe://prod/api");
    assert_eq!(api["count"], 3);
    assert_eq!(
        api["first_seen_us"],
        hais_control_plane::store::to_us(events[0].timestamp)
    );
    assert_eq!(
        api["last_seen_us"],
        hais_control_plane::store::to_us(events[2].timestamp)
    );
    assert_eq!(
        api["methods"],
        json!({"ja4": {"fingerprints": 1, "events": 2},
               "ja4h": {"fingerprints": 1, "events": 1},
               "ja4t": {"fingerprints": 1, "events": 1}})
    );
    assert_eq!(api["hosts"]["total"], 2);
    assert_eq!(api["hosts"]["top"][0]["value"], "web-01");
    assert_eq!(api["hosts"]["top"][0]["count"], 2);
    let dests: Vec<(&str, i64)> = api["destinations"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["value"].as_str().unwrap(), d["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(dests, [("api.example", 2), ("[2001:db8::7]:8443", 1)]);
    assert_eq!(api["conflicts"], 0);
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = t
        .call(
            "GET",
            &format!("/api/identity/identities?limit=1&cursor={cursor}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(p2["items"][0]["spiffe_id"], "spiffe://prod/web");
    let (_, p3) = t
        .call(
            "GET",
            &format!(
                "/api/identity/identities?limit=1&cursor={}",
                p2["next_cursor"].as_str().unwrap()
            ),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(p3, json!({"items": [], "next_cursor": null}));

    // Detail (percent-encoded or not), fingerprints by method.
    let (s, d) = t
        .call(
            "GET",
            &format!("/api/identity/identities/{}", enc("spiffe://prod/api")),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["fingerprints_total"], 3);
    assert_eq!(d["fingerprints"]["ja4"][0]["value"], JA4_A);
    assert_eq!(d["fingerprints"]["ja4"][0]["count"], 2);
    assert_eq!(d["fingerprints"]["ja4h"][0]["value"], JA4H_A);
    assert_eq!(d["fingerprints"]["ja4t"][0]["value"], JA4T_A);
    assert_eq!(d["agents"]["top"][0]["value"], "agent-1");
    assert_eq!(d["conflicts_with"]["total"], 0);
    let (s, d2) = t
        .call(
            "GET",
            "/api/identity/identities/spiffe://prod/api",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!((s, &d2), (StatusCode::OK, &d));
    let (s, v) = t
        .call(
            "GET",
            "/api/identity/identities/spiffe://prod/nobody",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = t
        .call(
            "GET",
            "/api/identity/identities?cursor=%%%",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // The OpenAPI document describes the routes (paths taken from the document).
    assert_eq!(
        common::assert_router_serves_document(&t, "/api/identity/").await,
        11
    );
    t.finish().await;
}

/// GET `path` until `done` holds for the answer (the inventory is written by a consumer of the
/// durable bus, shortly after ingest); the last answer.
async fn until(t: &TestApp, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (s, v) = t.call("GET", path, Some(&t.admin), None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        if done(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never satisfied: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ingests `e` again (a new flow of the same workload) and checks that it is stored under
/// `spiffe_id` (the identity's inventory counts exactly it).
async fn assert_next_event_named(t: &TestApp, e: &FingerprintEvent, spiffe_id: &str) {
    let mut again = e.clone();
    again.id = uuid::Uuid::now_v7();
    t.ingest(&[again]).await;
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/identity/identities/{spiffe_id}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["count"], 1);
}

/// An admin's POST of `body` to `path`.
async fn post(t: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    t.call("POST", path, Some(&t.admin), Some(body)).await
}

fn keys(page: &Value) -> Vec<&str> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["key"].as_str().unwrap())
        .collect()
}

/// Discovered workloads with no registration entry: host processes and a Kubernetes deployment
/// appear with their facts, selectors and fingerprints; filters and pagination; an entry made
/// from a workload and a template name them at once and name their next events.
async fn discovered_workloads(backend: Backend) {
    let t = TestApp::start(backend, "idworkloads").await;
    let curl = process_event("web-01", 0, "/usr/bin/curl", &[(Method::Ja4, JA4_A)]);
    let nginx = process_event("web-01", 33, "/usr/sbin/nginx", &[(Method::Ja4, JA4_B)]);
    let pod = |node: &str, name: &str| {
        let mut e = process_event(node, 1000, "/app/server", &[(Method::Ja4h, JA4H_A)]);
        e.workload.k8s_namespace = Some("shop".into());
        e.workload.k8s_service_account = Some("api".into());
        e.workload.k8s_pod_name = Some(name.into());
        e
    };
    t.ingest(&[
        curl.clone(),
        nginx.clone(),
        pod("node-1", "api-7d4b9c8f6d-x2x9q"),
        pod("node-2", "api-7d4b9c8f6d-q8z4m"),
    ])
    .await;
    const CURL: &str = "host:web-01:curl:user0";
    const NGINX: &str = "host:web-01:nginx:user33";
    const API: &str = "k8s:shop:deployment/api";
    let all = until(&t, "/api/identity/workloads", |v| {
        v["items"].as_array().unwrap().len() == 3
    })
    .await;
    let mut sorted = vec![CURL, NGINX, API];
    sorted.sort();
    assert_eq!(keys(&all), sorted);
    let c = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["key"] == CURL)
        .unwrap();
    assert_eq!(c["kind"], "host");
    assert_eq!(c["facts"]["host"], "web-01");
    assert_eq!(c["facts"]["workload"]["exe"], "/usr/bin/curl");
    assert_eq!(c["facts"]["workload"].get("pid"), None);
    assert_eq!(c["count"], 1);
    assert_eq!(
        c["methods"],
        json!({"ja4": {"fingerprints": 1, "events": 1}})
    );
    assert_eq!(c["hosts"]["top"][0]["value"], "web-01");
    assert_eq!(c.get("spiffe_id"), None);
    let sels: Vec<&str> = c["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for want in [
        "unix:path:/usr/bin/curl",
        "unix:uid:0",
        "hais:host:web-01",
        "hais:workload:host:web-01:curl:user0",
    ] {
        assert!(sels.contains(&want), "{want} not in {sels:?}");
    }
    let api = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["key"] == API)
        .unwrap();
    assert_eq!(api["namespace"], "shop");
    assert_eq!(api["count"], 2);
    assert_eq!(api["hosts"]["total"], 2);

    // Filters, alone and combined; pagination.
    for (query, want) in [
        ("host=node-2", vec![API]),
        ("agent=agent-1", vec![CURL, NGINX, API]),
        ("namespace=shop", vec![API]),
        ("kind=host", vec![CURL, NGINX]),
        ("resolved=false", vec![CURL, NGINX, API]),
        ("resolved=true", vec![]),
        ("q=curl", vec![CURL]),
        ("q=%25", vec![]),
        ("kind=host&host=web-01&q=nginx", vec![NGINX]),
    ] {
        let (s, v) = t
            .call(
                "GET",
                &format!("/api/identity/workloads?{query}"),
                Some(&t.admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{query}: {v}");
        let mut want = want;
        want.sort();
        assert_eq!(keys(&v), want, "{query}");
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/identity/workloads?limit=2&cursor={c}"),
            None => "/api/identity/workloads?limit=2".into(),
        };
        let (_, v) = t.call("GET", &path, Some(&t.admin), None).await;
        seen.extend(keys(&v).into_iter().map(str::to_owned));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, keys(&all));
    for bad in [
        "kind=vm",
        "limit=0",
        "resolved=maybe",
        "cursor=%25%25",
        "nope=1",
        "host=",
    ] {
        let (s, v) = t
            .call(
                "GET",
                &format!("/api/identity/workloads?{bad}"),
                Some(&t.admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }

    // Detail, the key raw or percent-encoded; a fingerprint lists its workloads.
    let (s, d) = t
        .call(
            "GET",
            &format!("/api/identity/workloads/{CURL}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["fingerprints"]["ja4"][0]["value"], JA4_A);
    assert_eq!(d["fingerprints_total"], 1);
    assert_eq!(d["destinations"]["top"][0]["value"], "api.example");
    assert_eq!(d["agents"]["top"][0]["value"], "agent-1");
    let (s, d2) = t
        .call(
            "GET",
            &format!("/api/identity/workloads/{}", enc(CURL)),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!((s, &d2), (StatusCode::OK, &d));
    let (s, _) = t
        .call(
            "GET",
            "/api/identity/workloads/host:nowhere:/x:y",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, fp) = t
        .call(
            "GET",
            &format!("/api/ja4/fingerprints/ja4/{JA4_A}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{fp}");
    assert_eq!(fp["workloads"]["total"], 1);
    assert_eq!(fp["workloads"]["top"][0]["value"], CURL);

    // An entry from what was seen: selectors must be among the workload's.
    let (s, v) = post(
        &t,
        "/api/identity/entries/from-workload",
        json!({"workload": CURL, "spiffe_id": "spiffe://prod/curl",
                              "selectors": ["unix:uid:1"]}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not present"),
        "{v}"
    );
    let (s, _) = post(
        &t,
        "/api/identity/entries/from-workload",
        json!({"workload": "host:x:/y:z", "spiffe_id": "spiffe://prod/x"}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = post(
        &t,
        "/api/identity/entries/from-workload",
        json!({"workload": CURL, "spiffe_id": "not-spiffe"}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, entry) = post(
        &t,
        "/api/identity/entries/from-workload",
        json!({"workload": CURL, "spiffe_id": "spiffe://prod/curl"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{entry}");
    assert_eq!(entry["selectors"], json!([format!("hais:workload:{CURL}")]));
    let (s, _) = post(
        &t,
        "/api/identity/entries/from-workload",
        json!({"workload": CURL, "spiffe_id": "spiffe://prod/curl"}),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    // The inventory shows it at once (no new event needed) ...
    let resolved = until(&t, "/api/identity/workloads?resolved=true", |v| {
        keys(v) == [CURL]
    })
    .await;
    assert_eq!(resolved["items"][0]["spiffe_id"], "spiffe://prod/curl");
    assert_eq!(
        resolved["items"][0]["resolved_by"],
        format!("entry:{}", entry["id"].as_str().unwrap())
    );
    // ... and the workload's next events carry it.
    assert_next_event_named(&t, &curl, "spiffe://prod/curl").await;

    // A template names every host process without an entry; the entry still wins for curl.
    for bad in [
        json!({"pattern": "spiffe://{td}/{nope}"}),
        json!({"pattern": "http://x"}),
        json!({"pattern": "spiffe://{td}/h/{host}", "selectors": ["bad"]}),
        json!({"pattern": "spiffe://{td}/h/{host}", "extra": 1}),
    ] {
        let (s, v) = post(&t, "/api/identity/templates", bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let body = json!({"pattern": "spiffe://{td}/host/{host}/{executable}",
                      "selectors": ["hais:host:web-01"]});
    let (s, template) = post(&t, "/api/identity/templates", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{template}");
    let (s, _) = post(&t, "/api/identity/templates", body).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let tid = template["id"].as_str().unwrap().to_owned();
    let resolved = until(&t, "/api/identity/workloads?resolved=true", |v| {
        keys(v) == [CURL, NGINX]
    })
    .await;
    assert_eq!(resolved["items"][0]["spiffe_id"], "spiffe://prod/curl");
    assert_eq!(
        resolved["items"][1]["spiffe_id"],
        "spiffe://hais.local/host/web-01/usr/sbin/nginx"
    );
    assert_eq!(
        resolved["items"][1]["resolved_by"],
        format!("template:{tid}")
    );
    assert_next_event_named(&t, &nginx, "spiffe://hais.local/host/web-01/usr/sbin/nginx").await;
    let (s, list) = t
        .call("GET", "/api/identity/templates", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["items"][0]["id"], tid.as_str());
    let (s, one) = t
        .call(
            "GET",
            &format!("/api/identity/templates/{tid}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!((s, &one), (StatusCode::OK, &template));
    let (s, _) = t
        .call("GET", "/api/identity/templates/nope", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Deleting it takes the ID away again.
    let (s, _) = t
        .call(
            "DELETE",
            &format!("/api/identity/templates/{tid}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = t
        .call(
            "DELETE",
            &format!("/api/identity/templates/{tid}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    until(&t, "/api/identity/workloads?resolved=true", |v| {
        keys(v) == [CURL]
    })
    .await;
    t.finish().await;
}

crate::backend_tests!(
    discovered_workloads,
    entries_crud_and_validation,
    spire_import,
    resolution_on_ingest,
    uplink_events_are_resolved,
    inventory,
);

/// Two processes on one PostgreSQL and one Redis: an entry created through one resolves the
/// events the other ingests at once, because `identity.entries` reaches the other's resolver
/// over Redis (its periodic reload is 30 s away). A message of that topic with a payload of
/// another shape (a process of another version) is counted and skipped on the way, and the
/// listener goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_reach_other_processes_through_the_bus() {
    let iso = common::Isolation::new(Backend::Postgres, "idsplit").await;
    let a = TestApp::start_with(iso.clone(), iso.config()).await;
    let mut b = TestApp::start_with(iso.clone(), iso.config()).await;
    let started = tokio::time::Instant::now();
    let mut rx_b = bus(&b);

    let bad = Arc::new(BusMessage {
        id: uuid::Uuid::now_v7(),
        topic: IdentityEntries::NAME.into(),
        origin: "identity/older-version".into(),
        payload: serde_json::value::RawValue::from_string(
            r#"{"action": "renamed", "ids": "e1"}"#.into(),
        )
        .unwrap(),
    });
    a.app
        .as_ref()
        .unwrap()
        .state
        .bus
        .publish(&bad)
        .await
        .unwrap();
    create(&a, "spiffe://prod/split", &["unix:uid:4242"]).await;

    // B resolves with the new entry as soon as the announcement reached it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = process_event("web-09", 4242, "/usr/bin/svc", &[(Method::Ja4, JA4_A)]);
        assert_eq!(b.ingest(&[e]).await["stored"], 1);
        let w = stored_workloads(&mut rx_b, 1).await;
        if w[0]["spiffe_id"] == "spiffe://prod/split" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "process B never resolved with the entry created in A"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        started.elapsed() < hais_control_plane::services::identity::REFRESH_INTERVAL,
        "too slow to tell the bus from the periodic reload"
    );
    // The malformed message was skipped by B's resolver listener, not fatal to it.
    assert_eq!(metric(&b, "hais_bus_undecodable_total").await, 1);

    b.app.take().unwrap().shutdown().await;
    a.finish().await;
}
