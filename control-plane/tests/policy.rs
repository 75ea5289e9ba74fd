//! The policy service on both backends, with real parts: policy sets stored, versioned, diffed,
//! refused with line and column (the previous version staying active) and rolled back; events
//! ingested through the real HTTP path evaluated by the durable consumer, a violation stored,
//! explained, and turned into an alert read through the alert API, an audit-mode match stored
//! and never alerted; a dry-run of a draft over stored history reporting the changes per
//! identity and raising nothing; and the real binary's offline `policy check`.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{Backend, TestApp, enc, error_code, event, poll_items};
use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use serde_json::{Value, json};

const CHROME_JA4: &str = "t13d1516h2_8daaf6152771_02713d6af862";
const CURL_JA4: &str = "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6";

/// Payments workloads may only speak TLS with Chrome's client stack (section a); ssh to port
/// 2222 is audited; everything else is allowed.
const SET: &str = r#"@id("base")
permit(principal, action, resource);

@id("payments-client-stack")
@severity("critical")
forbid(principal in Namespace::"payments", action == Action::"tls", resource)
unless { context has ja4_a && context.ja4_a == "t13d1516h2" };

@id("odd-ssh") @mode("audit")
forbid(principal, action, resource) when { resource.port == 2222 };
"#;

/// A TLS flow of pod `pod` in namespace `ns` presenting `ja4`.
fn flow(ns: &str, pod: &str, ja4: &str, port: u16) -> FingerprintEvent {
    let mut e = event(
        "agent-1",
        "node-1",
        Some("ledger.bank.example"),
        &[(Method::Ja4, ja4)],
        -5,
    );
    e.flow.dst_port = port;
    e.workload.k8s_namespace = Some(ns.into());
    e.workload.k8s_pod_name = Some(pod.into());
    e.workload.direction = Some("outbound".into());
    e
}

async fn put(t: &TestApp, body: Value) -> (StatusCode, Value) {
    t.call("PUT", "/api/policy/policies", Some(&t.admin), Some(body))
        .await
}

async fn active_version(t: &TestApp) -> i64 {
    let (s, v) = t
        .call("GET", "/api/policy/policies", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["version"].as_i64().unwrap()
}

/// Waits until the `policy` consumer group has handled every event stored so far.
async fn evaluated(t: &TestApp) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = t
            .call("GET", "/api/bus/consumers", Some(&t.admin), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if v.as_array().unwrap().iter().any(|g| {
            g["group"] == "policy" && g["topic"] == "fingerprint.events" && g["lag_items"] == 0
        }) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the policy group did not catch up in 60 s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn policy_sets_are_versioned_validated_and_rolled_back(backend: Backend) {
    let t = TestApp::start(backend, "policy_sets").await;
    // The router serves exactly what the document lists for the service.
    assert!(common::assert_router_serves_document(&t, "/api/policy").await >= 7);
    assert_eq!(active_version(&t).await, 0);

    // Validation names the file, line and column; nothing is stored.
    let broken = "permit(principal, action, resource);\nforbid(principal, action resource);";
    let (s, v) = t
        .call(
            "POST",
            "/api/policy/validate",
            Some(&t.admin),
            Some(json!({"policies": broken})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["file"], "api");
    assert_eq!(v["problems"][0]["line"], 2, "{v}");
    assert!(v["problems"][0]["column"].as_u64().unwrap() > 1, "{v}");

    let (s, v) = put(&t, json!({"policies": SET, "comment": "first"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["version"].as_i64(), v["policies"].as_i64()),
        (Some(1), Some(3))
    );
    assert_eq!(v["author"], "admin");

    // A malformed set is refused with line and column; version 1 stays active.
    let (s, v) = put(&t, json!({"policies": broken})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(error_code(&v), "invalid_policy");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("api:2:"), "{msg}");
    // A type error against the schema (an attribute that does not exist), in a second file.
    let (s, v) = put(
        &t,
        json!({"files": [
            {"name": "base.cedar", "text": "permit(principal, action, resource);"},
            {"name": "bad.cedar", "text": "\n\nforbid(principal, action, resource)\n  when { context.ja5 == \"x\" };"},
        ]}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("bad.cedar:4:") && msg.contains("ja5"), "{msg}");
    assert_eq!(active_version(&t).await, 1);

    // A valid change: version 2 with its diff; a stale expected version is refused.
    let changed = SET.replace("critical", "high");
    let (s, v) = put(
        &t,
        json!({"policies": changed, "comment": "lower", "expected_version": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 2);
    let diff = v["diff"].as_str().unwrap();
    assert!(
        diff.contains("-@severity(\"critical\")") && diff.contains("+@severity(\"high\")"),
        "{diff}"
    );
    let (s, v) = put(&t, json!({"policies": SET, "expected_version": 1})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");

    // Roll back to 1: a new version with version 1's sources.
    let (s, v) = t
        .call(
            "POST",
            "/api/policy/versions/1/rollback",
            Some(&t.admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["version"].as_i64(), v["origin"].as_str()),
        (Some(3), Some("rollback"))
    );
    assert_eq!(v["sources"][0]["text"], SET);
    let (s, v) = t
        .call("GET", "/api/policy/versions", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let versions: Vec<i64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    assert_eq!(v[0]["comment"], "rollback to version 1");
    let (s, _) = t
        .call("GET", "/api/policy/versions/9", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Bad input is a 4xx JSON error.
    for (method, uri, body) in [
        (
            "PUT",
            "/api/policy/policies",
            json!({"policies": "x", "files": []}),
        ),
        ("PUT", "/api/policy/policies", json!({"nope": 1})),
        (
            "POST",
            "/api/policy/dry-run",
            json!({"policies": SET, "from": "yesterday"}),
        ),
        ("POST", "/api/policy/evaluate", json!({"event": {"id": 1}})),
    ] {
        let (s, v) = t.call(method, uri, Some(&t.admin), Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let (s, v) = t
        .call(
            "GET",
            "/api/policy/decisions?effect=maybe",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    t.finish().await;
}

async fn violations_are_explained_and_alerted(backend: Backend) {
    let t = TestApp::start(backend, "policy_live").await;
    let (s, v) = put(&t, json!({"policies": SET})).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // One explained evaluation before any traffic.
    let curl = flow("payments", "ledger-7d9f8b6c5-x2x4z", CURL_JA4, 443);
    let (s, v) = t
        .call(
            "POST",
            "/api/policy/evaluate",
            Some(&t.admin),
            Some(json!({"event": curl})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["decision"]["outcome"], "deny", "{v}");
    assert_eq!(v["decision"]["policies"][0]["id"], "payments-client-stack");
    assert_eq!(
        v["decision"]["policies"][0]["fields"]["context.ja4_a"],
        "t13d3112h2"
    );
    assert_eq!(v["facts"]["principal"]["namespace"], "payments");

    // Live: a violating flow twice, an allowed one, another namespace, and an audited port.
    let again = flow("payments", "ledger-7d9f8b6c5-x2x4z", CURL_JA4, 443);
    let chrome = flow("payments", "ledger-7d9f8b6c5-x2x4z", CHROME_JA4, 443);
    let other_ns = flow("web", "front-5c9d7f6b8-abcde", CURL_JA4, 443);
    let audited = flow("web", "front-5c9d7f6b8-abcde", CHROME_JA4, 2222);
    t.ingest(&[
        curl.clone(),
        again.clone(),
        chrome,
        other_ns,
        audited.clone(),
    ])
    .await;
    evaluated(&t).await;

    let identity = "k8s:payments:deployment/ledger";
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/policy/decisions?identity={}", enc(identity)),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{v}");
    let d = &items[0];
    assert_eq!(
        (
            d["rule"].as_str(),
            d["outcome"].as_str(),
            d["severity"].as_str()
        ),
        (
            Some("payments-client-stack"),
            Some("deny"),
            Some("critical")
        ),
        "{d}"
    );
    assert_eq!(d["count"], 2, "{d}");
    assert_eq!(d["version"], 1);
    assert_eq!(d["destination"], "192.0.2.10:443");
    assert_eq!(
        d["event_ids"],
        json!([curl.id.to_string(), again.id.to_string()])
    );
    assert_eq!(
        d["decision"]["policies"][0]["fields"]["context.ja4_a"],
        "t13d3112h2"
    );

    // The audit-mode match is stored as such, and only it is.
    let (s, v) = t
        .call(
            "GET",
            "/api/policy/decisions?effect=audit",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let audit = v["items"].as_array().unwrap();
    assert_eq!(audit.len(), 1, "{v}");
    assert_eq!(audit[0]["rule"], "odd-ssh");
    assert_eq!(audit[0]["event_ids"], json!([audited.id.to_string()]));
    let (_, v) = t
        .call(
            "GET",
            "/api/policy/decisions?effect=deny",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");

    // The violation became one open alert, read through the alert API; the audit match none.
    let alert = poll_items(&t, "/api/alert/alerts?limit=100", |a| {
        a["source"] == "policy"
    })
    .await;
    assert_eq!(
        (
            alert["status"].as_str(),
            alert["rule"].as_str(),
            alert["severity"].as_str(),
            alert["identity"].as_str()
        ),
        (
            Some("open"),
            Some("payments-client-stack"),
            Some("critical"),
            Some(identity)
        ),
        "{alert}"
    );
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .contains("context.ja4_a=t13d3112h2"),
        "{alert}"
    );
    let (_, v) = t
        .call("GET", "/api/alert/alerts?limit=100", Some(&t.admin), None)
        .await;
    let policy_alerts = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["source"] == "policy")
        .count();
    assert_eq!(policy_alerts, 1, "{v}");

    // Metrics count what the consumer decided.
    let (_, text) = t.get_text("/metrics", None).await;
    assert!(text.contains("hais_policy_violations_total 2"), "{text}");
    assert!(text.contains("hais_policy_allowed_total 3"), "{text}");
    assert!(text.contains("hais_policy_version 1"), "{text}");

    // Findings retention: violations not seen since the cutoff go (both, the audit one too).
    let store = &t.app.as_ref().unwrap().state.store;
    let gone = store
        .expire(
            &hais_control_plane::store::expiry::POLICY_VIOLATIONS,
            hais_control_plane::store::now_us() + 1,
        )
        .await
        .unwrap();
    assert_eq!(gone, 2);
    let (_, v) = t
        .call("GET", "/api/policy/decisions", Some(&t.admin), None)
        .await;
    assert_eq!(v["items"], json!([]), "{v}");
    t.finish().await;
}

async fn dry_run_reports_changes_and_raises_nothing(backend: Backend) {
    let t = TestApp::start(backend, "policy_dry").await;
    let (s, v) = put(
        &t,
        json!({"policies": "@id(\"base\") permit(principal, action, resource);"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // History: the ledger speaks with curl's stack three times, Chrome's twice; the web
    // front end with curl's once.
    let mut events = Vec::new();
    for ja4 in [CURL_JA4, CURL_JA4, CURL_JA4, CHROME_JA4, CHROME_JA4] {
        events.push(flow("payments", "ledger-7d9f8b6c5-x2x4z", ja4, 443));
    }
    events.push(flow("web", "front-5c9d7f6b8-abcde", CURL_JA4, 443));
    t.ingest(&events).await;
    evaluated(&t).await;

    let from = (time::OffsetDateTime::now_utc() - time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (s, v) = t
        .call(
            "POST",
            "/api/policy/dry-run",
            Some(&t.admin),
            Some(json!({"policies": SET, "from": from})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["events"], 6, "{v}");
    assert_eq!(v["active_version"], 1);
    assert_eq!(
        (
            v["new_violations"].as_u64(),
            v["resolved_violations"].as_u64()
        ),
        (Some(3), Some(0)),
        "{v}"
    );
    let ids = v["identities"].as_array().unwrap();
    assert_eq!(ids.len(), 1, "{v}");
    assert_eq!(ids[0]["identity"], "k8s:payments:deployment/ledger");
    assert_eq!(ids[0]["events"], 5);
    let ex = &ids[0]["examples"][0];
    assert_eq!(
        (ex["before"].as_str(), ex["after"].as_str()),
        (Some("allow"), Some("deny payments-client-stack"))
    );
    assert_eq!(
        ex["decision"]["policies"][0]["fields"]["context.ja4_a"],
        "t13d3112h2"
    );

    // Nothing was stored or alerted, and the active set did not change.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, v) = t
        .call("GET", "/api/policy/decisions", Some(&t.admin), None)
        .await;
    assert_eq!(v["items"], json!([]), "{v}");
    let (_, v) = t
        .call("GET", "/api/alert/alerts?limit=100", Some(&t.admin), None)
        .await;
    assert_eq!(v["items"], json!([]), "{v}");
    assert_eq!(active_version(&t).await, 1);
    t.finish().await;
}

/// Polls the active version until `pick` holds (60 s at most).
async fn active_when(t: &TestApp, pick: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, v) = t
            .call("GET", "/api/policy/policies", Some(&t.admin), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if pick(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "never reached: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The counter `name` on `/metrics`.
async fn counter(t: &TestApp, name: &str) -> u64 {
    let (_, text) = t.get_text("/metrics", None).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn a_policy_directory_is_hot_reloaded(backend: Backend) {
    let iso = common::Isolation::new(backend, "policy_dir").await;
    let dir = iso.dir.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("base.cedar"), SET).unwrap();
    let mut config = iso.config();
    config.policy.directory = Some(dir.clone());
    let t = TestApp::start_with(iso.clone(), config).await;

    // Loaded as version 1, by the directory.
    let v = active_when(&t, |v| v["version"] == 1).await;
    assert_eq!(v["origin"], "directory");
    assert!(
        v["author"].as_str().unwrap().starts_with("directory:"),
        "{v}"
    );
    assert_eq!(
        v["sources"][0]["name"],
        dir.join("base.cedar").display().to_string()
    );

    // A broken file is refused (counted) and version 1 stays active.
    std::fs::write(
        dir.join("extra.cedar"),
        "forbid(principal, action, resource) when {",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while counter(&t, "hais_policy_directory_errors_total").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken file was never read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(active_version(&t).await, 1);

    // Fixed: version 2, with both files and a diff adding the second.
    std::fs::write(
        dir.join("extra.cedar"),
        "@id(\"no-telnet\") forbid(principal, action, resource) when { resource.port == 23 };",
    )
    .unwrap();
    let v = active_when(&t, |v| v["version"] == 2).await;
    assert_eq!(v["policies"], 4, "{v}");
    assert!(
        v["diff"].as_str().unwrap().contains("+@id(\"no-telnet\")"),
        "{v}"
    );
    t.finish().await;
}

backend_tests!(
    a_policy_directory_is_hot_reloaded,
    policy_sets_are_versioned_validated_and_rolled_back,
    violations_are_explained_and_alerted,
    dry_run_reports_changes_and_raises_nothing,
);

/// The issue's dry-run figure: a draft over 1,000,000 stored events (SQLite, written straight
/// into the store in batches of 5,000), printed, not asserted (`cargo test -p
/// hais-control-plane --test policy -- --ignored --nocapture`; `HAIS_DRY_RUN_EVENTS` to change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: minutes of CPU"]
async fn dry_run_throughput() {
    let total: usize = std::env::var("HAIS_DRY_RUN_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let t = TestApp::start(Backend::Sqlite, "policy_dry_bench").await;
    let store = t.app.as_ref().unwrap().state.store.clone();
    let started = std::time::Instant::now();
    let mut batch = Vec::with_capacity(5000);
    for i in 0..total {
        let pod = format!("svc{}-7d9f8b6c5-x2x4z", i % 200);
        let ns = if i % 200 < 20 { "payments" } else { "web" };
        let ja4 = if i % 7 == 0 { CURL_JA4 } else { CHROME_JA4 };
        let mut e = flow(ns, &pod, ja4, 443);
        e.flow.src_port = (i % 60000) as u16;
        batch.push(e);
        if batch.len() == 5000 || i + 1 == total {
            store.ingest(&batch).await.unwrap();
            batch.clear();
        }
    }
    let ingest = started.elapsed();
    let from = (time::OffsetDateTime::now_utc() - time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let started = std::time::Instant::now();
    let (s, v) = t
        .call(
            "POST",
            "/api/policy/dry-run",
            Some(&t.admin),
            Some(json!({"policies": SET, "from": from})),
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["events"], total as u64, "{}", v["events"]);
    println!(
        "{{\"events\":{total},\"ingest_s\":{:.1},\"dry_run_s\":{:.1},\"events_per_s\":{:.0},\"new_violations\":{}}}",
        ingest.as_secs_f64(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        v["new_violations"]
    );
    t.finish().await;
}

/// `hais-control-plane policy check`: the real binary, offline, with its exit statuses.
#[test]
fn policy_check_validates_files_offline() {
    let dir = std::env::temp_dir().join(format!("hais_policy_check_{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(dir.join("set")).unwrap();
    std::fs::write(dir.join("set/a.cedar"), SET).unwrap();
    std::fs::write(
        dir.join("set/b.cedar"),
        "@id(\"b\") forbid(principal, action == Action::\"ssh\", resource);",
    )
    .unwrap();
    std::fs::write(dir.join("set/notes.txt"), "not a policy").unwrap();
    std::fs::write(
        dir.join("bad.cedar"),
        "permit(principal, action, resource);\n\nforbid(principal, action, resource) when { context.port == 1 };",
    )
    .unwrap();
    let run = |args: &[&std::path::Path]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hais-control-plane"))
            .arg("policy")
            .arg("check")
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&[&dir.join("set")]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("4 policies in 2 files"), "{out}");
    let bad = dir.join("bad.cedar");
    let (code, out) = run(&[&dir.join("set"), &bad]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("{}:3:", bad.display())) && out.contains("port"),
        "{out}"
    );
    let (code, _) = run(&[&dir.join("missing.cedar")]);
    assert_eq!(code, Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}
