//! The alert service: detections published on the durable topic `detections` become
//! deduplicated alerts with a lifecycle, and notifications that reach real receivers on loopback
//! (a webhook server checking signatures, the Debian `prometheus-alertmanager`, syslog
//! listeners), through a channel that is down for a while too. Both backends.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use common::{Backend, TestApp, error_code};
use hais_control_plane::bus::log::{Detections, outbox};
use hais_control_plane::config::HumanDuration;
use hais_e2e::sinks;
use hais_shared::detection::{Detection, Severity, Source};
use hais_shared::fingerprint::Method;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

const SECRET: &str = "webhook-secret-0123456789";
const JA4: &str = "t13d1516h2_8daaf6152771_b186095e22b6";
const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `f` until it returns `Some`, for at most [`DEADLINE`].
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn detection(identity: &str, rule: &str, count: u64) -> Detection {
    let now = OffsetDateTime::now_utc();
    Detection {
        id: Uuid::now_v7(),
        source: Source::Correlation,
        rule: rule.into(),
        severity: Severity::High,
        identity: identity.into(),
        method: Some(Method::Ja4),
        fingerprint: Some(JA4.into()),
        destination: Some("10.0.0.9:443".into()),
        summary: format!("{identity} presents a JA4 outside its baseline"),
        event_ids: vec![Uuid::now_v7()],
        first_seen: now,
        last_seen: now,
        count,
        attributes: BTreeMap::from([("host".to_owned(), "node-1".to_owned())]),
    }
}

async fn publish(t: &TestApp, ds: &[Detection]) {
    let store = &t.app.as_ref().unwrap().state.store;
    store
        .bus_publish(
            &outbox::<Detections>(ds),
            hais_control_plane::store::now_us(),
        )
        .await
        .unwrap();
}

/// What a test webhook receiver got: (headers, body) of each accepted request.
#[derive(Debug, Default)]
struct Received {
    up: AtomicBool,
    /// Requests are held unanswered (a receiver that never replies) while set.
    hang: AtomicBool,
    held: std::sync::atomic::AtomicU64,
    accepted: Mutex<Vec<(HeaderMap, Value)>>,
    refused: std::sync::atomic::AtomicU64,
}

/// A webhook receiver on loopback: answers 503 while down, else checks the signature and
/// timestamp (400 when wrong) and records the notification.
async fn receiver() -> (SocketAddr, Arc<Received>) {
    let got = Arc::new(Received::default());
    got.up.store(true, Ordering::SeqCst);
    let state = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let got = state.clone();
            async move {
                if got.hang.load(Ordering::SeqCst) {
                    got.held.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                if !got.up.load(Ordering::SeqCst) {
                    got.refused.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                if !signature_ok(&headers, &body) {
                    return StatusCode::BAD_REQUEST;
                }
                let v: Value = serde_json::from_slice(&body).unwrap();
                got.accepted.lock().unwrap().push((headers, v));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, got)
}

/// The receiver's check (the shared one: HMAC-SHA256 of `<timestamp>.<body>`, timestamp within
/// 5 minutes).
fn signature_ok(h: &HeaderMap, body: &[u8]) -> bool {
    let header = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default();
    sinks::signature_ok(
        SECRET,
        header("x-hais-timestamp"),
        header("x-hais-signature"),
        body,
    )
}

/// Waits until `done` holds for the health of the (first) channel.
async fn until_health(t: &TestApp, what: &str, done: impl Fn(&Value) -> bool) {
    until(what, || async {
        let (_, v) = t
            .call("GET", "/api/alert/channels", Some(&t.admin), None)
            .await;
        done(&v[0]["health"]).then_some(())
    })
    .await
}

async fn channel(t: &TestApp, body: Value) -> Value {
    let (s, v) = t
        .call("POST", "/api/alert/channels", Some(&t.admin), Some(body))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

async fn webhook(t: &TestApp, name: &str, addr: SocketAddr) -> Value {
    channel(
        t,
        json!({"name": name, "kind": "webhook", "settings": {"url": format!("http://{addr}/hook")},
               "secret": SECRET}),
    )
    .await
}

async fn alerts(t: &TestApp, query: &str) -> Vec<Value> {
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/alert/alerts{query}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["items"].as_array().unwrap().clone()
}

/// The notifications the receiver accepted for `alert_id`, as (kind, notification id).
fn notified(got: &Received, alert_id: &str) -> Vec<(String, String)> {
    got.accepted
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["alert"]["id"] == alert_id)
        .map(|(_, v)| {
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["notification"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn start(backend: Backend, tag: &str) -> TestApp {
    let iso = common::Isolation::new(backend, tag).await;
    let mut config = iso.config();
    config.alert.max_backoff = HumanDuration::from_secs(1);
    config.alert.resend_interval = HumanDuration::from_secs(10);
    TestApp::start_with(iso, config).await
}

/// Replays change nothing; a recurrence counts; the lifecycle with history; a resolved alert
/// that recurs reopens and notifies again; every notification signed and delivered once.
async fn dedup_and_lifecycle(backend: Backend) {
    let t = start(backend, "alert_life").await;
    let (addr, got) = receiver().await;
    webhook(&t, "hook", addr).await;
    let id = "spiffe://prod.example/ns/payments/sa/api";
    let d = detection(id, "new-fingerprint", 1);
    for _ in 0..10 {
        publish(&t, std::slice::from_ref(&d)).await;
    }
    let alert = until("one alert", || async {
        let a = alerts(&t, "").await;
        (a.len() == 1).then(|| a[0].clone())
    })
    .await;
    let aid = alert["id"].as_str().unwrap().to_owned();
    assert_eq!(alert["status"], "open");
    assert_eq!(alert["severity"], "high");
    assert_eq!(alert["identity"], id);
    // All ten were handled: the consumer group has no lag, and still one alert of count 1.
    until("the ten replays handled", || async {
        let (_, m) = t.get_text("/metrics", Some(&t.admin)).await;
        m.contains("hais_alert_detections_total{outcome=\"unchanged\"} 9")
            .then_some(())
    })
    .await;
    let a = alerts(&t, "?status=open").await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["count"], 1);
    until("the firing notification", || async {
        (notified(&got, &aid).len() == 1).then_some(())
    })
    .await;
    // A recurrence of the same detection (same id, higher count) and a second detection with
    // the same key fold into the alert.
    let mut again = d.clone();
    again.count = 5;
    let mut other = detection(id, "new-fingerprint", 2);
    other.severity = Severity::Critical;
    publish(&t, &[again, other]).await;
    let a = until("count 7", || async {
        let a = alerts(&t, "").await;
        (a.len() == 1 && a[0]["count"] == 7).then(|| a[0].clone())
    })
    .await;
    assert_eq!(a["severity"], "critical");
    assert_eq!(alerts(&t, "?severity=critical").await.len(), 1);
    assert_eq!(alerts(&t, "?status=resolved").await.len(), 0);
    assert_eq!(alerts(&t, "?identity=spiffe://other").await.len(), 0);
    assert_eq!(alerts(&t, "?since=2999-01-01T00:00:00Z").await.len(), 0);

    // Lifecycle.
    let url = format!("/api/alert/alerts/{aid}");
    let (s, v) = t
        .call(
            "POST",
            &format!("{url}/acknowledge"),
            Some(&t.admin),
            Some(json!({"comment": "looking"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "acknowledged");
    let (s, v) = t
        .call("POST", &format!("{url}/acknowledge"), Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = t
        .call(
            "POST",
            &format!("{url}/comment"),
            Some(&t.admin),
            Some(json!({"comment": "a deploy"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t
        .call("POST", &format!("{url}/resolve"), Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "resolved");
    until("the resolved notification", || async {
        let n = notified(&got, &aid);
        (n.len() == 2 && n[1].0 == "resolved").then_some(())
    })
    .await;
    // It recurs: reopened, notified again.
    let mut recur = d.clone();
    recur.count = 6;
    publish(&t, &[recur]).await;
    until("the reopened alert", || async {
        let a = alerts(&t, "?status=open").await;
        (a.len() == 1 && a[0]["count"] == 8).then_some(())
    })
    .await;
    until("the second firing notification", || async {
        (notified(&got, &aid).len() == 3).then_some(())
    })
    .await;
    let (s, detail) = t.call("GET", &url, Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::OK, "{detail}");
    let actions: Vec<(&str, &str)> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["action"].as_str().unwrap(), h["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("opened", "alert"),
            ("acknowledged", "admin"),
            ("comment", "admin"),
            ("resolved", "admin"),
            ("reopened", "alert"),
        ]
    );
    assert_eq!(detail["history"][1]["comment"], "looking");
    assert_eq!(detail["detections"].as_array().unwrap().len(), 2);
    assert!(
        detail["detections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["detection_id"] == d.id.to_string())
    );
    assert!(!detail["event_ids"].as_array().unwrap().is_empty());
    // Every notification was delivered once: distinct ids, and kinds in order.
    let n = notified(&got, &aid);
    let kinds: Vec<&str> = n.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["firing", "resolved", "firing"]);
    let mut ids: Vec<&str> = n.iter().map(|(_, i)| i.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);

    // Grouping: the same fingerprint on another identity.
    publish(
        &t,
        &[detection(
            "spiffe://prod.example/ns/web/sa/front",
            "new-fingerprint",
            1,
        )],
    )
    .await;
    until("the related alert", || async {
        let (_, v) = t.call("GET", &url, Some(&t.admin), None).await;
        (v["same_fingerprint"].as_array().unwrap().len() == 1).then_some(())
    })
    .await;
    t.finish().await;
}

/// Suppressions: `drop` records nothing, `record` keeps a suppressed alert and notifies nobody;
/// an expired one does nothing.
async fn suppressions(backend: Backend) {
    let t = start(backend, "alert_supp").await;
    let (addr, got) = receiver().await;
    webhook(&t, "hook", addr).await;
    let post = |body: Value| {
        let t = &t;
        async move {
            let (s, v) = t
                .call(
                    "POST",
                    "/api/alert/suppressions",
                    Some(&t.admin),
                    Some(body),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
            v
        }
    };
    post(json!({"identity": "spiffe://td/dropped", "action": "drop", "reason": "lab"})).await;
    post(
        json!({"rule": "quiet-rule", "action": "record", "reason": "known noisy",
                "expires": "2999-01-01T00:00:00Z"}),
    )
    .await;
    publish(
        &t,
        &[detection("spiffe://td/dropped", "new-fingerprint", 1)],
    )
    .await;
    publish(&t, &[detection("spiffe://td/x", "quiet-rule", 1)]).await;
    publish(&t, &[detection("spiffe://td/y", "loud-rule", 1)]).await;
    until("two alerts", || async {
        let a = alerts(&t, "").await;
        (a.len() == 2).then_some(())
    })
    .await;
    let suppressed = alerts(&t, "?status=suppressed").await;
    assert_eq!(suppressed.len(), 1);
    assert_eq!(suppressed[0]["rule"], "quiet-rule");
    let open = alerts(&t, "?status=open").await;
    let oid = open[0]["id"].as_str().unwrap().to_owned();
    until("the open alert's notification", || async {
        (notified(&got, &oid).len() == 1).then_some(())
    })
    .await;
    // Only the open one was notified (the outbox is empty, the receiver saw one).
    until_health(&t, "an empty outbox", |h| h["pending"] == 0).await;
    assert_eq!(got.accepted.lock().unwrap().len(), 1);
    // List and delete.
    let (s, v) = t
        .call("GET", "/api/alert/suppressions", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|s| s["created_by"] == "admin"));
    let sid = items[0]["id"].as_str().unwrap();
    let (s, _) = t
        .call(
            "DELETE",
            &format!("/api/alert/suppressions/{sid}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = t
        .call(
            "DELETE",
            &format!("/api/alert/suppressions/{sid}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    t.finish().await;
}

/// Bad requests are 4xx JSON; secrets never come back; roles are enforced.
async fn api_validation(backend: Backend) {
    let t = start(backend, "alert_api").await;
    for (method, uri, body, status) in [
        (
            "GET",
            "/api/alert/alerts?status=nope",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/alert/alerts?severity=urgent",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/alert/alerts?since=yesterday",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/alert/alerts?limit=0",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/alert/alerts?cursor=x",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/alert/alerts/not-a-uuid",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/api/alert/alerts/0190b4a4-6f6b-7c6e-8f5e-000000000000",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/api/alert/alerts/0190b4a4-6f6b-7c6e-8f5e-000000000000/resolve",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/api/alert/alerts/0190b4a4-6f6b-7c6e-8f5e-000000000000/comment",
            Some(json!({})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/alert/suppressions",
            Some(json!({"action": "drop", "reason": "x"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/alert/suppressions",
            Some(json!({"rule": "r", "action": "mute", "reason": "x"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/alert/suppressions",
            Some(json!({"rule": "r", "action": "drop", "reason": ""})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/alert/suppressions",
            Some(
                json!({"rule": "r", "action": "drop", "reason": "x", "expires": "2000-01-01T00:00:00Z"}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/alert/channels",
            Some(json!({"name": "a b", "kind": "webhook", "settings": {"url": "http://x/"}})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/alert/channels",
            Some(json!({"name": "a", "kind": "pager", "settings": {}})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/alert/channels",
            Some(json!({"name": "a", "kind": "webhook", "settings": {"url": "gopher://x/"}})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/alert/channels",
            Some(json!({"name": "a", "kind": "syslog", "settings": {"address": "x"}})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/alert/channels",
            Some(
                json!({"name": "a", "kind": "slack", "settings": {"url": "http://x/"}, "secret": "0123456789abcdef"}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "DELETE",
            "/api/alert/channels/0190b4a4-6f6b-7c6e-8f5e-000000000000",
            None,
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (s, v) = t.call(method, uri, Some(&t.admin), body).await;
        assert_eq!(s, status, "{method} {uri}: {v}");
        assert!(!error_code(&v).is_empty(), "{method} {uri}: {v}");
    }
    let c = channel(
        &t,
        json!({"name": "hook", "kind": "webhook", "settings": {"url": "http://127.0.0.1:9/x"},
               "secret": SECRET, "min_severity": "high", "identity_pattern": "spiffe://td/*"}),
    )
    .await;
    assert_eq!(c["has_secret"], true);
    assert!(!c.to_string().contains(SECRET));
    let (s, v) = t
        .call(
            "POST",
            "/api/alert/channels",
            Some(&t.admin),
            Some(json!({"name": "hook", "kind": "slack", "settings": {"url": "http://x/"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let cid = c["id"].as_str().unwrap();
    let (s, v) = t
        .call("GET", "/api/alert/channels", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!v.to_string().contains(SECRET));
    // Replace without a secret: the stored one stays.
    let (s, v) = t
        .call("PUT", &format!("/api/alert/channels/{cid}"), Some(&t.admin),
              Some(json!({"name": "hook2", "kind": "webhook", "settings": {"url": "http://127.0.0.1:9/y"}})))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["has_secret"], true);
    assert_eq!(v["name"], "hook2");
    // Nothing listens on port 9 (discard is not run on CI machines): the test says so.
    let (s, v) = t
        .call(
            "POST",
            &format!("/api/alert/channels/{cid}/test"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["delivered"], false);
    assert!(v["error"].as_str().unwrap().contains("127.0.0.1:9"), "{v}");
    // Roles: a viewer reads alerts but works nothing and sees no channel; an analyst works.
    for (user, role) in [("vera", "viewer"), ("anna", "analyst")] {
        let (s, v) = t
            .call(
                "POST",
                "/api/auth/users",
                Some(&t.admin),
                Some(json!({"username": user, "password": "password-123456", "role": role})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let viewer = t.login("vera", "password-123456").await;
    let analyst = t.login("anna", "password-123456").await;
    let (s, _) = t
        .call("GET", "/api/alert/alerts", Some(&viewer), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = t
        .call("GET", "/api/alert/channels", Some(&viewer), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = t
        .call("GET", "/api/alert/channels", Some(&analyst), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let supp = json!({"rule": "r", "action": "drop", "reason": "x"});
    let (s, _) = t
        .call(
            "POST",
            "/api/alert/suppressions",
            Some(&viewer),
            Some(supp.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = t
        .call(
            "POST",
            "/api/alert/suppressions",
            Some(&analyst),
            Some(supp),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = t
        .call(
            "POST",
            "/api/alert/alerts/0190b4a4-6f6b-7c6e-8f5e-000000000000/resolve",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Every route of the service is in the OpenAPI document.
    common::assert_router_serves_document(&t, "/api/alert/").await;
    t.finish().await;
}

/// A channel down for a while then back: every pending notification is delivered once, and
/// another channel was never held up meanwhile.
async fn channel_down_then_back(backend: Backend) {
    let t = start(backend, "alert_down").await;
    let (down_addr, down) = receiver().await;
    let (ok_addr, ok) = receiver().await;
    down.up.store(false, Ordering::SeqCst);
    webhook(&t, "flaky", down_addr).await;
    webhook(&t, "steady", ok_addr).await;
    let ds: Vec<Detection> = (0..20)
        .map(|i| detection(&format!("spiffe://td/w{i}"), "new-fingerprint", 1))
        .collect();
    publish(&t, &ds).await;
    until("the steady channel got all 20", || async {
        (ok.accepted.lock().unwrap().len() == 20).then_some(())
    })
    .await;
    until("the flaky channel refused several times", || async {
        (down.refused.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    let (_, m) = t.get_text("/metrics", Some(&t.admin)).await;
    assert!(
        m.contains("hais_alert_channel_up{channel=\"flaky\",kind=\"webhook\"} 0"),
        "{m}"
    );
    assert!(m.contains("hais_alert_channel_up{channel=\"steady\",kind=\"webhook\"} 1"));
    assert!(m.contains("hais_alert_notifications_pending{channel=\"flaky\",kind=\"webhook\"} 20"));
    down.up.store(true, Ordering::SeqCst);
    until("the flaky channel got all 20", || async {
        (down.accepted.lock().unwrap().len() == 20).then_some(())
    })
    .await;
    until("an empty outbox", || async {
        let (_, m) = t.get_text("/metrics", Some(&t.admin)).await;
        m.contains("hais_alert_notifications_pending{channel=\"flaky\",kind=\"webhook\"} 0")
            .then_some(())
    })
    .await;
    // Once each: 20 distinct alerts, no repeat.
    let mut alerts: Vec<String> = down
        .accepted
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v["alert"]["id"].as_str().unwrap().to_owned())
        .collect();
    alerts.sort();
    alerts.dedup();
    assert_eq!(alerts.len(), 20);
    assert_eq!(down.accepted.lock().unwrap().len(), 20);
    t.finish().await;
}

/// Debian's `prometheus-alertmanager` on a free loopback port (the shared launcher), or `None`
/// when it is not installed.
async fn alertmanager(dir: &std::path::Path) -> Option<sinks::Alertmanager> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || sinks::Alertmanager::start(&dir))
        .await
        .unwrap()
}

/// A GET on loopback: the status and JSON body, `None` when nothing answers.
async fn get(url: &str) -> Option<(u16, Value)> {
    let (status, body) = hais_control_plane::http::client::send(
        hais_control_plane::http::client::Outgoing::get(url),
    )
    .await
    .ok()?;
    Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// The alert reaches a real Alertmanager with its labels, and leaves it once resolved.
async fn alertmanager_delivery(backend: Backend) {
    let t = start(backend, "alert_am").await;
    let Some(am) = alertmanager(&t.iso.dir).await else {
        t.finish().await;
        return;
    };
    channel(
        &t,
        json!({"name": "am", "kind": "alertmanager", "settings": {"url": am.url}}),
    )
    .await;
    let id = "spiffe://prod.example/ns/payments/sa/api";
    publish(&t, &[detection(id, "new-fingerprint", 1)]).await;
    let alerts_url = format!("{}/api/v2/alerts", am.url);
    let found = until("the alert in Alertmanager", || async {
        let (_, v) = get(&alerts_url).await?;
        v.as_array()?
            .iter()
            .find(|a| a["labels"]["spiffe_id"] == id)
            .cloned()
    })
    .await;
    assert_eq!(found["labels"]["namespace"], "payments");
    assert_eq!(found["labels"]["detector"], "new-fingerprint");
    assert_eq!(found["labels"]["severity"], "high");
    assert_eq!(found["status"]["state"], "active");
    let aid = found["labels"]["alert_id"].as_str().unwrap().to_owned();
    let (s, v) = t
        .call(
            "POST",
            &format!("/api/alert/alerts/{aid}/resolve"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    until(
        "the alert gone from Alertmanager's active alerts",
        || async {
            let (_, v) = get(&alerts_url).await?;
            (!v.as_array()?
                .iter()
                .any(|a| a["labels"]["alert_id"] == aid.as_str()))
            .then_some(())
        },
    )
    .await;
    t.finish().await;
}

/// Waits for `n` syslog messages in `lines`.
async fn syslog_lines(what: &str, lines: &sinks::Lines, n: usize) -> Vec<String> {
    until(what, || async {
        let got = lines.lock().unwrap().clone();
        (got.len() >= n).then_some(got)
    })
    .await
}

/// Checks a syslog message carrying the firing of the test's `new-fingerprint` alert on
/// `identity` (high: syslog severity 3) with priority `pri`.
fn assert_ocsf_firing(msg: &str, pri: u32, identity: &str, count: u64) {
    let m = sinks::parse_rfc5424(msg).unwrap_or_else(|| panic!("not RFC 5424: {msg}"));
    assert_eq!(m.pri, pri, "{msg}");
    assert_eq!(m.app_name, "hais-alert");
    assert_eq!(m.msgid, "firing");
    time::OffsetDateTime::parse(&m.timestamp, &time::format_description::well_known::Rfc3339)
        .unwrap();
    let ocsf: Value = serde_json::from_str(&m.msg).unwrap();
    assert_eq!(ocsf["class_uid"], 2004);
    assert_eq!(ocsf["category_uid"], 2);
    assert_eq!(ocsf["type_uid"], 200401);
    assert_eq!(ocsf["severity_id"], 4);
    assert_eq!(ocsf["count"], count);
    assert_eq!(ocsf["finding_info"]["analytic"]["name"], "new-fingerprint");
    assert_eq!(ocsf["resources"][0]["uid"], identity);
}

/// Syslog over UDP and TCP: RFC 5424 headers around OCSF Detection Finding JSON.
async fn syslog_delivery(backend: Backend) {
    let t = start(backend, "alert_syslog").await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (tcp, tcp_lines) = sinks::syslog_tcp_sink();
    channel(
        &t,
        json!({"name": "udp", "kind": "syslog",
        "settings": {"address": udp.local_addr().unwrap().to_string(), "transport": "udp"}}),
    )
    .await;
    channel(
        &t,
        json!({"name": "tcp", "kind": "syslog",
        "settings": {"address": tcp.to_string(), "transport": "tcp", "facility": 4}}),
    )
    .await;
    let identity = "spiffe://td/ns/a/sa/b";
    publish(&t, &[detection(identity, "new-fingerprint", 3)]).await;
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(DEADLINE, udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // Facility 10 (default) or 4, severity 3 (error) for a high alert.
    assert_ocsf_firing(std::str::from_utf8(&buf[..n]).unwrap(), 83, identity, 3);
    let tcp_msgs = syslog_lines("the TCP frame", &tcp_lines, 1).await;
    assert_ocsf_firing(&tcp_msgs[0], 35, identity, 3);
    t.finish().await;
}

/// A collector's certificate and key, issued by `ca` for the DNS name `localhost`.
fn collector_leaf(ca: &hais_svid::CertificateAuthority) -> hais_svid::Svid {
    ca.issue(
        &hais_shared::spiffe::SpiffeId::new(ca.trust_domain(), "/syslog").unwrap(),
        &["localhost".into()],
        Duration::from_secs(3600),
    )
    .unwrap()
}

/// A syslog collector over TLS on loopback (RFC 5425), its certificate issued for `localhost`
/// by `ca`: the octet-counted frames of every connection whose handshake succeeded.
fn syslog_tls_sink(ca: &hais_svid::CertificateAuthority) -> (SocketAddr, sinks::Lines) {
    let leaf = collector_leaf(ca);
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            leaf.chain.clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf.key_pkcs8.clone().into()),
        )
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let lines: sinks::Lines = Arc::default();
    let out = lines.clone();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let (config, lines) = (config.clone(), lines.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let frames = sinks::read_frames(rustls::StreamOwned::new(conn, tcp));
                lines.lock().unwrap().extend(frames);
            });
        }
    });
    (addr, out)
}

/// Syslog over TLS (RFC 5425): delivered to a collector whose certificate chains to the
/// channel's CA and carries its server name; a collector of another CA, or a name the
/// certificate does not carry, fails the channel (nothing sent in clear) without holding up
/// the good one.
async fn syslog_tls_delivery(backend: Backend) {
    let t = start(backend, "alert_syslog_tls").await;
    let ca = hais_svid::CertificateAuthority::generate("syslog.test").unwrap();
    let (good, good_lines) = syslog_tls_sink(&ca);
    let other = hais_svid::CertificateAuthority::generate("other.test").unwrap();
    let (bad, bad_lines) = syslog_tls_sink(&other);
    let tls = |name: &str, addr: SocketAddr, server_name: &str| {
        json!({"name": name, "kind": "syslog", "settings": {
            "address": addr.to_string(), "transport": "tls", "ca": ca.cert_pem(),
            "server_name": server_name}})
    };
    let c = channel(&t, tls("tls", good, "localhost")).await;
    assert_eq!(c["settings"]["transport"], "tls");
    channel(&t, tls("wrong-ca", bad, "localhost")).await;
    channel(&t, tls("wrong-name", good, "collector.example")).await;
    // Bad settings are refused.
    for (settings, why) in [
        (
            json!({"address": good.to_string(), "transport": "tls", "ca": "not PEM"}),
            "ca",
        ),
        (
            json!({"address": good.to_string(), "transport": "tls", "server_name": "a b"}),
            "server_name",
        ),
        (
            json!({"address": good.to_string(), "transport": "tcp", "ca": ca.cert_pem()}),
            "tls",
        ),
    ] {
        let (s, v) = t
            .call(
                "POST",
                "/api/alert/channels",
                Some(&t.admin),
                Some(json!({"name": "bad", "kind": "syslog", "settings": settings})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v.to_string().contains(why), "{why}: {v}");
    }
    let identity = "spiffe://td/ns/a/sa/tls";
    publish(&t, &[detection(identity, "new-fingerprint", 2)]).await;
    let msgs = syslog_lines("the TLS frame", &good_lines, 1).await;
    assert_ocsf_firing(&msgs[0], 83, identity, 2);
    // The two bad channels fail with the TLS error and keep their notification.
    until("both bad channels failing", || async {
        let (_, v) = t
            .call("GET", "/api/alert/channels", Some(&t.admin), None)
            .await;
        let failing: Vec<String> = v
            .as_array()?
            .iter()
            .filter(|c| c["health"]["failures"].as_i64() > Some(0) && c["health"]["pending"] == 1)
            .map(|c| format!("{} {}", c["name"], c["health"]["last_error"]))
            .collect();
        (failing.len() == 2).then_some(failing)
    })
    .await;
    assert!(bad_lines.lock().unwrap().is_empty());
    assert_eq!(good_lines.lock().unwrap().len(), 1);
    t.finish().await;
}

/// PEM text of one DER block.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// `openssl s_server`, killed when dropped.
struct SServer(std::process::Child);

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Syslog over TLS to `openssl s_server` (OpenSSL, not the test's rustls collector): the
/// octet-counted frame it printed is the RFC 5424 message with the OCSF finding. The transport
/// does not depend on the backend: SQLite only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tls_to_openssl_s_server() {
    let t = start(Backend::Sqlite, "alert_s_server").await;
    let ca = hais_svid::CertificateAuthority::generate("syslog.test").unwrap();
    let leaf = collector_leaf(&ca);
    let dir = t.iso.dir.join("s_server");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), pem("CERTIFICATE", &leaf.chain[0])).unwrap();
    std::fs::write(dir.join("key.pem"), pem("PRIVATE KEY", &leaf.key_pkcs8)).unwrap();
    let port = common::free_port();
    // One connection (`-naccept 1`, then it exits and its output is complete); no probe of
    // the port (that would be the one connection): until s_server listens, deliveries fail
    // and are retried. Its input stays open (at the end of its input it drops the
    // connection). `-quiet`: it prints only what it receives.
    let mut server = SServer(
        std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-naccept", "1"])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .args(["-cert", "cert.pem", "-key", "key.pem"])
            .current_dir(&dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::fs::File::create(dir.join("out")).unwrap())
            .stderr(std::fs::File::create(dir.join("err")).unwrap())
            .spawn()
            .expect("openssl runs"),
    );
    channel(
        &t,
        json!({"name": "openssl", "kind": "syslog", "settings": {
        "address": format!("127.0.0.1:{port}"), "transport": "tls", "ca": ca.cert_pem(),
        "server_name": "localhost"}}),
    )
    .await;
    let identity = "spiffe://td/ns/a/sa/openssl";
    publish(&t, &[detection(identity, "new-fingerprint", 1)]).await;
    until_health(&t, "delivered to s_server", |h| h["delivered"] == 1).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while server.0.try_wait().unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "s_server did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = std::fs::read(dir.join("out")).unwrap();
    let frames = sinks::read_frames(&out[..]);
    assert_eq!(frames.len(), 1, "{}", String::from_utf8_lossy(&out));
    assert_ocsf_firing(&frames[0], 83, identity, 1);
    t.finish().await;
}

/// The real binary, killed with SIGKILL while a delivery is in flight, then started again on the
/// same database: every notification is delivered after the restart (PostgreSQL: two processes
/// share the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_delivery_then_restart() {
    use hais_control_plane::http::client::{Outgoing, send};
    let iso = common::Isolation::new(Backend::Postgres, "alert_kill").await;
    let (addr, got) = receiver().await;
    got.hang.store(true, Ordering::SeqCst);
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let spawn = |n: u32| {
        let log = std::fs::File::create(iso.dir.join(format!("cp{n}.log"))).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_hais-control-plane"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--database-url", &common::pg_url()])
            .env("HAIS_DATABASE_SCHEMA", iso.schema.as_ref().unwrap())
            .env("HAIS_DATA_DIR", &iso.dir)
            .env("HAIS_ADMIN_PASSWORD", common::ADMIN_PASSWORD)
            .env("HAIS_JWT_SECRET", common::JWT_SECRET)
            .env("HAIS_JA4_UPLINK_BIND", "off")
            .env("HAIS_ALERT_MAX_BACKOFF", "1s")
            .env_remove("HAIS_REDIS_URL")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    };
    let call = |method: hyper::Method, path: String, token: Option<String>, body: Option<Value>| {
        let base = base.clone();
        async move {
            let url = format!("{base}{path}");
            let mut req = Outgoing::post(
                &url,
                "application/json",
                body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            );
            req.method = method;
            if let Some(t) = token {
                req.headers.push(("authorization", format!("Bearer {t}")));
            }
            send(req).await.ok().map(|(s, b)| {
                (
                    s,
                    serde_json::from_slice::<Value>(&b).unwrap_or(Value::Null),
                )
            })
        }
    };
    let mut first = spawn(1);
    until("the control plane up", || {
        call(hyper::Method::GET, "/health".into(), None, None)
    })
    .await;
    let (_, v) = call(
        hyper::Method::POST,
        "/api/auth/login".into(),
        None,
        Some(json!({"username": "admin", "password": common::ADMIN_PASSWORD})),
    )
    .await
    .unwrap();
    let token = v["access_token"].as_str().unwrap().to_owned();
    let (s, v) = call(hyper::Method::POST, "/api/alert/channels".into(), Some(token.clone()),
        Some(json!({"name": "hook", "kind": "webhook", "settings": {"url": format!("http://{addr}/hook")}, "secret": SECRET}))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    // Detections published by another process (as the correlation service would).
    let store = hais_control_plane::store::open(&common::pg_url(), None, iso.schema.as_deref(), 2)
        .await
        .unwrap();
    let ds: Vec<Detection> = (0..5)
        .map(|i| detection(&format!("spiffe://td/k{i}"), "new-fingerprint", 1))
        .collect();
    store
        .bus_publish(
            &outbox::<Detections>(&ds),
            hais_control_plane::store::now_us(),
        )
        .await
        .unwrap();
    until("a delivery in flight", || async {
        (got.held.load(Ordering::SeqCst) >= 1).then_some(())
    })
    .await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    got.hang.store(false, Ordering::SeqCst);
    assert!(got.accepted.lock().unwrap().is_empty());
    let mut second = spawn(2);
    // The dead process's claims expire (60 s), then the rows are delivered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    loop {
        let mut ids: Vec<String> = got
            .accepted
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v["alert"]["identity"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        if ids.len() == 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivered after the restart: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = second.kill();
    let _ = second.wait();
    store.close().await.unwrap();
    iso.cleanup().await;
}

/// E-mail over SMTP to a sink in the test: one mail per notification, to every recipient.
async fn email_delivery(backend: Backend) {
    let t = start(backend, "alert_mail").await;
    let (addr, mails) = sinks::smtp_sink();
    channel(
        &t,
        json!({"name": "mail", "kind": "email", "settings": {
        "host": "127.0.0.1", "port": addr.port(), "tls": "none",
        "from": "HaIS <hais@example.org>", "to": ["oncall@example.org", "soc@example.org"]}}),
    )
    .await;
    let (s, v) = t
        .call(
            "POST",
            "/api/alert/channels",
            Some(&t.admin),
            Some(json!({"name": "bad", "kind": "email",
            "settings": {"host": "h", "from": "not an address", "to": ["a@b.c"]}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    publish(
        &t,
        &[detection("spiffe://td/ns/a/sa/mail", "new-fingerprint", 1)],
    )
    .await;
    let (envelope, data) = until("the mail", || async {
        mails.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(envelope.len(), 3, "{envelope:?}");
    assert!(envelope[0].contains("hais@example.org"));
    assert!(envelope.iter().any(|l| l.contains("soc@example.org")));
    assert!(
        data.contains("Subject: [HaIS HIGH] spiffe://td/ns/a/sa/mail presents"),
        "{data}"
    );
    assert!(
        data.contains("identity: spiffe://td/ns/a/sa/mail"),
        "{data}"
    );
    t.finish().await;
}

/// Severity rules: the oldest matching rule sets a detection's severity before it is folded, so
/// an alert is born with it (and routed by it); the history says which rule; bad rules are 400;
/// a deleted rule no longer applies.
async fn severity_rules(backend: Backend) {
    let t = start(backend, "alert_sev").await;
    let (addr, got) = receiver().await;
    channel(
        &t,
        json!({"name": "hook", "kind": "webhook", "settings": {"url": format!("http://{addr}/hook")},
               "secret": SECRET, "min_severity": "medium"}),
    )
    .await;
    let post = |body: Value| {
        let t = &t;
        async move {
            t.call(
                "POST",
                "/api/alert/severity-rules",
                Some(&t.admin),
                Some(body),
            )
            .await
        }
    };
    for (body, why) in [
        (json!({"severity": "low", "reason": "x"}), "at least one"),
        (
            json!({"rule": "r", "severity": "urgent", "reason": "x"}),
            "severity",
        ),
        (
            json!({"source": "nope", "severity": "low", "reason": "x"}),
            "source",
        ),
        (
            json!({"rule": "r", "severity": "low", "reason": " "}),
            "reason",
        ),
        (
            json!({"rule": "", "severity": "low", "reason": "x"}),
            "empty",
        ),
    ] {
        let (s, v) = post(body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert!(v.to_string().contains(why), "{why}: {v}");
    }
    let (s, lab) = post(
        json!({"identity_pattern": "spiffe://td/ns/lab/*", "severity": "low",
                               "reason": "lab noise"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{lab}");
    let (s, v) = post(json!({"source": "correlation", "rule": "escalate-me",
                             "severity": "critical", "reason": "crown jewels"}))
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A later rule matching the lab identity too: the older one wins.
    let (s, v) = post(
        json!({"identity_pattern": "spiffe://td/ns/lab/sa/*", "severity": "critical",
                             "reason": "shadowed"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = t
        .call("GET", "/api/alert/severity-rules", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 3);
    publish(
        &t,
        &[
            detection("spiffe://td/ns/lab/sa/a", "new-fingerprint", 1),
            detection("spiffe://td/ns/prod/sa/b", "escalate-me", 1),
            detection("spiffe://td/ns/prod/sa/c", "new-fingerprint", 1),
        ],
    )
    .await;
    let all = until("three alerts", || async {
        let a = alerts(&t, "").await;
        (a.len() == 3).then_some(a)
    })
    .await;
    let by_identity = |id: &str| all.iter().find(|a| a["identity"] == id).unwrap().clone();
    let lab_alert = by_identity("spiffe://td/ns/lab/sa/a");
    assert_eq!(lab_alert["severity"], "low");
    assert_eq!(
        by_identity("spiffe://td/ns/prod/sa/b")["severity"],
        "critical"
    );
    assert_eq!(by_identity("spiffe://td/ns/prod/sa/c")["severity"], "high");
    let (_, detail) = t
        .call(
            "GET",
            &format!("/api/alert/alerts/{}", lab_alert["id"].as_str().unwrap()),
            Some(&t.admin),
            None,
        )
        .await;
    let opened = detail["history"][0]["comment"].as_str().unwrap();
    assert!(
        opened.contains(lab["id"].as_str().unwrap()) && opened.contains("lab noise"),
        "{opened}"
    );
    // Routed by the adjusted severity: the channel (medium and up) heard of two, not the lab's.
    until_health(&t, "an empty outbox", |h| {
        h["pending"] == 0 && h["delivered"] == 2
    })
    .await;
    assert!(notified(&got, lab_alert["id"].as_str().unwrap()).is_empty());
    // Deleted: the lab rule no longer applies (the shadowed one does now).
    let url = format!("/api/alert/severity-rules/{}", lab["id"].as_str().unwrap());
    let (s, _) = t.call("DELETE", &url, Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = t.call("DELETE", &url, Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    publish(
        &t,
        &[detection("spiffe://td/ns/lab/sa/d", "new-fingerprint", 1)],
    )
    .await;
    let d = until("the fourth alert", || async {
        alerts(&t, "?identity=spiffe://td/ns/lab/sa/d")
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(d["severity"], "critical");
    // A viewer reads rules but cannot write them.
    let (s, v) = t
        .call(
            "POST",
            "/api/auth/users",
            Some(&t.admin),
            Some(json!({"username": "vic", "password": "password-123456", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let viewer = t.login("vic", "password-123456").await;
    let (s, _) = t
        .call("GET", "/api/alert/severity-rules", Some(&viewer), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = t
        .call(
            "POST",
            "/api/alert/severity-rules",
            Some(&viewer),
            Some(json!({"rule": "r", "severity": "low", "reason": "x"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    t.finish().await;
}

/// Channel secrets are sealed in the store (never the clear key in its column) under a key file
/// of mode 0600 in the data directory; a row an older release stored in clear still delivers
/// and is sealed by the start-up pass; a secret that does not open (another key) fails the
/// channel instead of sending unsigned.
async fn secrets_at_rest(backend: Backend) {
    use hais_control_plane::services::alert::secrets::{self, SecretBox};
    use std::os::unix::fs::PermissionsExt as _;
    let t = start(backend, "alert_secrets").await;
    let (addr, got) = receiver().await;
    let c = webhook(&t, "hook", addr).await;
    let cid = c["id"].as_str().unwrap();
    let state = &t.app.as_ref().unwrap().state;
    let store = state.store.clone();
    let stored = store.channel_secrets().await.unwrap();
    assert_eq!(stored.len(), 1);
    let (_, sealed) = &stored[0];
    assert!(
        secrets::is_sealed(sealed) && !sealed.contains(SECRET),
        "{sealed}"
    );
    let key_file = state.config.data_dir.join(secrets::KEY_FILE);
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Delivered with the sealed secret: the receiver verified the signature.
    let first = detection("spiffe://td/s/1", "new-fingerprint", 1);
    publish(&t, std::slice::from_ref(&first)).await;
    until("signed with the sealed secret", || async {
        (got.accepted.lock().unwrap().len() == 1).then_some(())
    })
    .await;
    // An older release's clear row: still delivered (signature verified).
    assert!(
        store
            .replace_channel_secret(cid, sealed, SECRET)
            .await
            .unwrap()
    );
    publish(&t, &[detection("spiffe://td/s/2", "new-fingerprint", 1)]).await;
    until("signed with the clear secret", || async {
        (got.accepted.lock().unwrap().len() == 2).then_some(())
    })
    .await;
    // The start-up pass seals it, with the key in the data directory.
    let key = SecretBox::load(None, &state.config.data_dir).unwrap();
    assert_eq!(
        secrets::seal_clear_rows(store.as_ref(), &key)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        secrets::seal_clear_rows(store.as_ref(), &key)
            .await
            .unwrap(),
        0
    );
    let resealed = store.channel_secrets().await.unwrap().remove(0).1;
    assert!(secrets::is_sealed(&resealed) && resealed != *sealed);
    assert_eq!(key.open(cid, &resealed).unwrap(), SECRET);
    publish(&t, &[detection("spiffe://td/s/3", "new-fingerprint", 1)]).await;
    until("signed after sealing", || async {
        (got.accepted.lock().unwrap().len() == 3).then_some(())
    })
    .await;
    // Sealed under another key: the channel fails, saying why; nothing unsigned is sent.
    let other = SecretBox::new(&[9; 32]).seal(cid, SECRET);
    assert!(
        store
            .replace_channel_secret(cid, &resealed, &other)
            .await
            .unwrap()
    );
    publish(&t, &[detection("spiffe://td/s/4", "new-fingerprint", 1)]).await;
    let error = until("the channel failing", || async {
        let (_, v) = t
            .call("GET", "/api/alert/channels", Some(&t.admin), None)
            .await;
        v[0]["health"]["last_error"].as_str().map(str::to_owned)
    })
    .await;
    assert!(error.contains("does not open"), "{error}");
    assert_eq!(got.accepted.lock().unwrap().len(), 3);
    t.finish().await;
}

crate::backend_tests!(
    dedup_and_lifecycle,
    suppressions,
    api_validation,
    channel_down_then_back,
    alertmanager_delivery,
    syslog_delivery,
    syslog_tls_delivery,
    email_delivery,
    severity_rules,
    secrets_at_rest,
);
