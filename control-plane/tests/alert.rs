//! The alert service: detections published on the durable topic `detections` become
//! deduplicated alerts with a lifecycle, and notifications that reach real receivers on loopback
//! (a webhook server checking signatures, the Debian `prometheus-alertmanager`, syslog
//! listeners), through a channel that is down for a while too. Both backends.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use common::{Backend, TestApp, error_code};
use hais_control_plane::bus::log::{Detections, outbox};
use hais_control_plane::config::HumanDuration;
use hais_shared::detection::{Detection, Severity, Source};
use hais_shared::fingerprint::Method;
use hmac::{KeyInit, Mac};
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

/// The receiver's check: HMAC-SHA256 of `<timestamp>.<body>`, timestamp within 5 minutes.
fn signature_ok(h: &HeaderMap, body: &[u8]) -> bool {
    let (Some(ts), Some(sig)) = (h.get("x-hais-timestamp"), h.get("x-hais-signature")) else {
        return false;
    };
    let ts: i64 = ts.to_str().unwrap().parse().unwrap();
    if (OffsetDateTime::now_utc().unix_timestamp() - ts).abs() > 300 {
        return false;
    }
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    sig.to_str().unwrap() == want
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
    until("an empty outbox", || async {
        let (_, v) = t
            .call("GET", "/api/alert/channels", Some(&t.admin), None)
            .await;
        (v[0]["health"]["pending"] == 0).then_some(())
    })
    .await;
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

/// A real Alertmanager on a loopback port, killed when dropped.
struct Alertmanager {
    child: std::process::Child,
    url: String,
    _dir: PathBuf,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// Starts Debian's `prometheus-alertmanager`, or `None` when it is not installed.
async fn alertmanager(dir: &std::path::Path) -> Option<Alertmanager> {
    if !std::path::Path::new(ALERTMANAGER).exists() {
        eprintln!(
            "SKIPPED: {ALERTMANAGER} is not installed (apt-get install prometheus-alertmanager)"
        );
        return None;
    }
    let dir = dir.join("alertmanager");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n",
    )
    .unwrap();
    let port = common::free_port();
    let child = std::process::Command::new(ALERTMANAGER)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus-alertmanager starts");
    let am = Alertmanager {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let ready = format!("{}/-/ready", am.url);
    until("Alertmanager ready", || async {
        matches!(get(&ready).await, Some((200, _))).then_some(())
    })
    .await;
    Some(am)
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

/// Syslog over UDP and TCP: RFC 5424 headers around OCSF Detection Finding JSON.
async fn syslog_delivery(backend: Backend) {
    use tokio::io::AsyncReadExt;
    let t = start(backend, "alert_syslog").await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    channel(
        &t,
        json!({"name": "udp", "kind": "syslog",
        "settings": {"address": udp.local_addr().unwrap().to_string(), "transport": "udp"}}),
    )
    .await;
    channel(&t, json!({"name": "tcp", "kind": "syslog",
        "settings": {"address": tcp.local_addr().unwrap().to_string(), "transport": "tcp", "facility": 4}})).await;
    publish(
        &t,
        &[detection("spiffe://td/ns/a/sa/b", "new-fingerprint", 3)],
    )
    .await;
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(DEADLINE, udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let udp_msg = String::from_utf8(buf[..n].to_vec()).unwrap();
    let (mut conn, _) = tokio::time::timeout(DEADLINE, tcp.accept())
        .await
        .unwrap()
        .unwrap();
    let mut framed = String::new();
    tokio::time::timeout(DEADLINE, conn.read_to_string(&mut framed))
        .await
        .unwrap()
        .unwrap();
    // Octet counting: "<length> <message>".
    let (len, tcp_msg) = framed.split_once(' ').unwrap();
    assert_eq!(len.parse::<usize>().unwrap(), tcp_msg.len());
    for (msg, pri) in [(udp_msg.as_str(), "<83>1 "), (tcp_msg, "<35>1 ")] {
        // facility 10 (default) or 4, severity 3 (error) for a high alert.
        assert!(msg.starts_with(pri), "{msg}");
        let fields: Vec<&str> = msg.splitn(8, ' ').collect();
        assert_eq!(fields[3], "hais-alert");
        assert_eq!(fields[5], "firing");
        assert_eq!(fields[6], "-");
        let ocsf: Value = serde_json::from_str(fields[7]).unwrap();
        assert_eq!(ocsf["class_uid"], 2004);
        assert_eq!(ocsf["category_uid"], 2);
        assert_eq!(ocsf["type_uid"], 200401);
        assert_eq!(ocsf["severity_id"], 4);
        assert_eq!(ocsf["count"], 3);
        assert_eq!(ocsf["finding_info"]["analytic"]["name"], "new-fingerprint");
        assert_eq!(ocsf["resources"][0]["uid"], "spiffe://td/ns/a/sa/b");
        time::OffsetDateTime::parse(fields[1], &time::format_description::well_known::Rfc3339)
            .unwrap();
    }
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

/// Mails an SMTP sink received: the envelope's commands (MAIL, RCPT) and the data.
type Mails = Arc<Mutex<Vec<(Vec<String>, String)>>>;

/// A tiny SMTP sink on loopback (no TLS, no auth): records each message's envelope and data.
async fn smtp_sink() -> (SocketAddr, Mails) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mails: Mails = Arc::default();
    let out = mails.clone();
    tokio::spawn(async move {
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            let mails = mails.clone();
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut envelope = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                        "MAIL" | "RCPT" => {
                            envelope.push(line.clone());
                            b"250 OK\r\n"
                        }
                        "DATA" => {
                            w.write_all(b"354 go on\r\n").await.unwrap();
                            let mut data = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                data.push_str(&l);
                                data.push('\n');
                            }
                            mails
                                .lock()
                                .unwrap()
                                .push((std::mem::take(&mut envelope), data));
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 OK\r\n",
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (addr, out)
}

/// E-mail over SMTP to a sink in the test: one mail per notification, to every recipient.
async fn email_delivery(backend: Backend) {
    let t = start(backend, "alert_mail").await;
    let (addr, mails) = smtp_sink().await;
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

crate::backend_tests!(
    dedup_and_lifecycle,
    suppressions,
    api_validation,
    channel_down_then_back,
    alertmanager_delivery,
    syslog_delivery,
    email_delivery,
);
