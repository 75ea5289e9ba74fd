//! The integration suite, run twice: against embedded SQLite with the in-process bus, and
//! against PostgreSQL with Redis. Each test gets its own database (file or schema) and bus
//! namespace, and removes them at the end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::{Backend, JWT_SECRET, TestApp, error_code, event};
use hais_control_plane::bus::topics::FingerprintEvents;
use hais_control_plane::store::{self, RollupBacklog, Store, StoreOptions};
use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use serde_json::{Value, json};

const JA4_A: &str = "t13d1516h2_8daaf6152771_e5627efa2ab1";
const JA4_B: &str = "t13d1517h2_8daaf6152771_b0da82dd1658";
const JA4S_A: &str = "t130200_1301_234ea6891581";

async fn ingest_dedup_and_rollups(backend: Backend) {
    let t = TestApp::start(backend, "dedup").await;
    let mut rx = t.app.as_ref().unwrap().state.bus.subscribe();
    let batch: Vec<_> = (0..40)
        .map(|i| {
            let host = if i % 2 == 0 { "web-01" } else { "web-02" };
            event(
                "agent-1",
                host,
                Some("example.com"),
                &[(Method::Ja4, JA4_A), (Method::Ja4s, JA4S_A)],
                -(i as i64),
            )
        })
        .collect();
    let v = t.ingest(&batch).await;
    assert_eq!(v, json!({"stored": 40, "duplicates": 0}));
    // Replaying the batch (at-least-once delivery) stores nothing and counts nothing twice.
    let v = t.ingest(&batch).await;
    assert_eq!(v, json!({"stored": 0, "duplicates": 40}));
    // A batch mixing new and replayed events, and an id repeated inside the batch.
    let fresh = event("agent-2", "db-01", None, &[(Method::Ja4, JA4_A)], 0);
    let v = t
        .ingest(&[batch[0].clone(), fresh.clone(), fresh.clone()])
        .await;
    assert_eq!(v, json!({"stored": 1, "duplicates": 2}));
    assert_eq!(
        t.app
            .as_ref()
            .unwrap()
            .state
            .store
            .count_events()
            .await
            .unwrap(),
        41
    );

    let (s, d) = t
        .call(
            "GET",
            &format!("/api/ja4/fingerprints/ja4/{JA4_A}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["count"], 41);
    assert_eq!(d["part_a"], "t13d1516h2");
    assert_eq!(d["hosts"]["total"], 3);
    assert_eq!(d["agents"]["total"], 2);
    assert_eq!(d["server_names"]["top"][0]["value"], "example.com");
    assert_eq!(d["server_names"]["top"][0]["count"], 40);
    let first = d["first_seen_us"].as_i64().unwrap();
    let last = d["last_seen_us"].as_i64().unwrap();
    assert!(last - first >= 39_000_000, "first/last seen span the batch");
    let (_, d) = t
        .call(
            "GET",
            &format!("/api/ja4/fingerprints/ja4s/{JA4S_A}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(d["count"], 40);

    // The stored events were published on the bus (through Redis for the PostgreSQL suite).
    let mut published = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while published < 41 {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("bus message")
            .unwrap();
        if let Some(batch) = m.decode::<FingerprintEvents>() {
            published += batch.unwrap().events.len();
        }
    }
    assert_eq!(published, 41, "only newly stored events are published");

    // Labels.
    let (s, v) = t
        .call(
            "POST",
            &format!("/api/ja4/fingerprints/ja4/{JA4_A}/labels"),
            Some(&t.admin),
            Some(json!({"label": "browser:chrome"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["labels"], json!(["browser:chrome"]));
    let (s, v) = t
        .call(
            "POST",
            "/api/ja4/fingerprints/ja4/t00_unknown_x/labels",
            Some(&t.admin),
            Some(json!({"label": "x"})),
        )
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    t.finish().await;
}

async fn search_filters_and_pagination(backend: Backend) {
    let t = TestApp::start(backend, "search").await;
    let mut events = Vec::new();
    for i in 0..25 {
        let v = format!("t13d{:02}10h2_aaaaaaaaaaaa_{:012x}", i, i);
        let host = if i < 5 { "special-host" } else { "web-01" };
        let sni = if i % 5 == 0 {
            Some("api.example.com")
        } else {
            None
        };
        events.push(event(
            "agent-9",
            host,
            sni,
            &[(Method::Ja4, &v)],
            -(i * 3600),
        ));
    }
    events.push(event(
        "agent-7",
        "edge-1",
        None,
        &[(
            Method::Ja4h,
            "ge11cn20enus_60ca1bd65281_ac95b44401d9_8df6a44f726c",
        )],
        0,
    ));
    t.ingest(&events).await;

    // Pagination: 26 fingerprints in pages of 10, no repeats, nothing missed, stable order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/api/ja4/fingerprints?limit=10&cursor={c}"),
            None => "/api/ja4/fingerprints?limit=10".to_owned(),
        };
        let (s, v) = t.call("GET", &uri, Some(&t.admin), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        pages += 1;
        for it in v["items"].as_array().unwrap() {
            seen.push((
                it["method"].as_str().unwrap().to_owned(),
                it["value"].as_str().unwrap().to_owned(),
            ));
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 26);
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), 26);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "(method, value) order");

    let count = |v: &Value| v["items"].as_array().unwrap().len();
    let get = |q: &str| {
        let uri = format!("/api/ja4/fingerprints?{q}");
        let t = &t;
        async move {
            let (s, v) = t.call("GET", &uri, Some(&t.admin), None).await;
            assert_eq!(s, StatusCode::OK, "{uri}: {v}");
            v
        }
    };
    assert_eq!(count(&get("method=ja4h").await), 1);
    assert_eq!(count(&get("method=ja4&limit=1000").await), 25);
    assert_eq!(count(&get("prefix=t13d0").await), 10);
    assert_eq!(count(&get("prefix=t13d2").await), 5);
    assert_eq!(count(&get("part_a=t13d0310h2").await), 1);
    assert_eq!(count(&get("part_b=aaaaaaaaaaaa").await), 25);
    assert_eq!(count(&get("part_c=000000000003").await), 1);
    assert_eq!(
        count(&get("value=t13d0310h2_aaaaaaaaaaaa_000000000003").await),
        1
    );
    assert_eq!(count(&get("host=special-host").await), 5);
    assert_eq!(
        count(&get("host=special-host&method=ja4&prefix=t13d0").await),
        5
    );
    assert_eq!(count(&get("agent=agent-7").await), 1);
    assert_eq!(count(&get("server_name=api.example.com").await), 5);
    assert_eq!(
        count(&get("server_name=api.example.com&host=special-host").await),
        1
    );
    assert_eq!(count(&get("host=nobody").await), 0);
    // Time range: events are one hour apart, going back 24 hours.
    let from = (time::OffsetDateTime::now_utc() - time::Duration::minutes(150))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(count(&get(&format!("method=ja4&from={from}")).await), 3);
    assert_eq!(
        count(&get(&format!("host=special-host&from={from}")).await),
        3
    );
    // Paging with a filter keeps the filter's order.
    let v = get("host=web-01&limit=7").await;
    assert_eq!(count(&v), 7);
    let c = v["next_cursor"].as_str().unwrap();
    let v2 = get(&format!("host=web-01&limit=7&cursor={c}")).await;
    assert_eq!(count(&v2), 7);
    assert!(v2["items"][0]["value"].as_str().unwrap() > v["items"][6]["value"].as_str().unwrap());

    // Top-N over a window.
    let (s, v) = t
        .call(
            "GET",
            "/api/ja4/stats/top?window=2h&limit=5",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let n = v["items"].as_array().unwrap().len();
    assert!((2..=4).contains(&n), "hour buckets: {v}");
    let (_, v) = t
        .call(
            "GET",
            "/api/ja4/stats/top?window=7d&limit=100&method=ja4",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 25);
    assert_eq!(v["window_secs"], 7 * 86400);
    t.finish().await;
}

async fn top_counts_events(backend: Backend) {
    let t = TestApp::start(backend, "top").await;
    let mut evs = Vec::new();
    for i in 0..6 {
        evs.push(event("a", "h", None, &[(Method::Ja4, JA4_A)], -i));
    }
    for i in 0..3 {
        evs.push(event("a", "h", None, &[(Method::Ja4, JA4_B)], -i));
    }
    t.ingest(&evs).await;
    let (_, v) = t
        .call("GET", "/api/ja4/stats/top?window=1h", Some(&t.admin), None)
        .await;
    assert_eq!(
        v["items"][0],
        json!({"method": "ja4", "value": JA4_A, "count": 6})
    );
    assert_eq!(
        v["items"][1],
        json!({"method": "ja4", "value": JA4_B, "count": 3})
    );
    t.finish().await;
}

async fn retention_deletes_old_data(backend: Backend) {
    let t = TestApp::start(backend, "retention").await;
    let day = 86_400;
    let old: Vec<_> = (0..10)
        .map(|i| {
            event(
                "a",
                "old-host",
                None,
                &[(Method::Ja4, "t12d0000h1_000000000000_000000000000")],
                -(40 * day + i),
            )
        })
        .collect();
    // One old event shares a fingerprint with fresh ones: the roll-up must survive.
    let mut mixed = old.clone();
    mixed.push(event(
        "a",
        "old-host",
        None,
        &[(Method::Ja4, JA4_A)],
        -40 * day,
    ));
    // Far enough back that, in PostgreSQL, its whole daily partition is dropped.
    mixed.push(event(
        "a",
        "old-host",
        None,
        &[(Method::Ja4, "t12d0000h1_000000000000_000000000000")],
        -100 * day,
    ));
    let fresh: Vec<_> = (0..5)
        .map(|i| event("a", "new-host", None, &[(Method::Ja4, JA4_A)], -i))
        .collect();
    t.ingest(&mixed).await;
    t.ingest(&fresh).await;
    let store = &t.app.as_ref().unwrap().state.store;
    assert_eq!(store.count_events().await.unwrap(), 17);

    let (s, v) = t
        .call(
            "POST",
            "/api/ja4/retention",
            Some(&t.admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["events_deleted"], 12, "{v}");
    assert_eq!(v["fingerprints_deleted"], 1, "{v}");
    if backend == Backend::Postgres {
        assert!(v["partitions_dropped"].as_u64().unwrap() >= 1, "{v}");
    }
    assert_eq!(store.count_events().await.unwrap(), 5);
    let (s, _) = t
        .call(
            "GET",
            "/api/ja4/fingerprints/ja4/t12d0000h1_000000000000_000000000000",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, d) = t
        .call(
            "GET",
            &format!("/api/ja4/fingerprints/ja4/{JA4_A}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(d["hosts"]["total"], 1, "the old host pairing expired: {d}");
    // Running it again finds nothing more.
    let (_, v) = t
        .call(
            "POST",
            "/api/ja4/retention",
            Some(&t.admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(v["events_deleted"], 0);
    // Only admins may run it.
    let (s, v) = t
        .call(
            "POST",
            "/api/ja4/retention",
            Some(&viewer(&t).await),
            Some(json!({})),
        )
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    t.finish().await;
}

async fn viewer(t: &TestApp) -> String {
    let (s, v) = t
        .call(
            "POST",
            "/api/auth/users",
            Some(&t.admin),
            Some(json!({"username": "vic", "password": "viewer-pass", "role": "viewer"})),
        )
        .await;
    assert!(s == StatusCode::CREATED || s == StatusCode::CONFLICT, "{v}");
    t.login("vic", "viewer-pass").await
}

fn forge(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn auth_failures(backend: Backend) {
    let t = TestApp::start(backend, "auth").await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // No token, malformed header, garbage token.
    let (s, v) = t.call("GET", "/api/ja4/fingerprints", None, None).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let req = Request::get("/api/ja4/fingerprints")
        .header(header::AUTHORIZATION, "Basic abc")
        .body(Body::empty())
        .unwrap();
    let (s, v) = t.send(req).await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (s, _) = t
        .call("GET", "/api/ja4/fingerprints", Some("not.a.jwt"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Expired token.
    let expired = forge(
        json!({"sub": "admin", "role": "admin", "iss": "hais-control-plane", "iat": now - 100, "exp": now - 10}),
        JWT_SECRET,
    );
    let (s, v) = t
        .call("GET", "/api/ja4/fingerprints", Some(&expired), None)
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "token_expired")
    );
    // Signed with another key.
    let foreign = forge(
        json!({"sub": "admin", "role": "admin", "iss": "hais-control-plane", "iat": now, "exp": now + 100}),
        "some-other-secret-some-other-secret-xxxx",
    );
    let (s, _) = t
        .call("GET", "/api/ja4/fingerprints", Some(&foreign), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Wrong password, unknown user.
    let (s, v) = t
        .call(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"username": "admin", "password": "nope"})),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"username": "ghost", "password": "nope"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Wrong role: a viewer may read but not ingest, create users or label.
    let vt = viewer(&t).await;
    let (s, _) = t
        .call("GET", "/api/ja4/fingerprints", Some(&vt), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&vt),
            Some(json!({"events": [event("a", "h", None, &[(Method::Ja4, JA4_A)], 0)]})),
        )
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::FORBIDDEN, "forbidden"));
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/users",
            Some(&vt),
            Some(json!({"username": "x", "password": "12345678", "role": "admin"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // An analyst may label but not ingest.
    t.call(
        "POST",
        "/api/auth/users",
        Some(&t.admin),
        Some(json!({"username": "ana", "password": "analyst-pass", "role": "analyst"})),
    )
    .await;
    let at = t.login("ana", "analyst-pass").await;
    let (s, _) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&at),
            Some(json!({"events": []})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Duplicate user, bad role.
    let (s, v) = t
        .call(
            "POST",
            "/api/auth/users",
            Some(&t.admin),
            Some(json!({"username": "ana", "password": "analyst-pass", "role": "analyst"})),
        )
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::CONFLICT, "conflict"));
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/users",
            Some(&t.admin),
            Some(json!({"username": "z", "password": "12345678", "role": "root"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Refresh: works once, then the old refresh token is dead.
    let (_, pair) = t
        .call(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"username": "admin", "password": common::ADMIN_PASSWORD})),
        )
        .await;
    let rt = pair["refresh_token"].as_str().unwrap();
    let (s, v) = t
        .call(
            "POST",
            "/api/auth/refresh",
            None,
            Some(json!({"refresh_token": rt})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, me) = t
        .call(
            "GET",
            "/api/auth/me",
            Some(v["access_token"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!((s, me["subject"].as_str()), (StatusCode::OK, Some("admin")));
    let (s, v) = t
        .call(
            "POST",
            "/api/auth/refresh",
            None,
            Some(json!({"refresh_token": rt})),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );

    // Service tokens: admin mints one; it may ingest but not manage users.
    let (s, v) = t
        .call(
            "POST",
            "/api/auth/service-tokens",
            Some(&t.admin),
            Some(json!({"subject": "agent-42", "ttl_secs": 600})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["subject"], "spiffe://hais.local/hais/agent/agent-42");
    let st = v["token"].as_str().unwrap();
    let (s, v) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(st),
            Some(json!({"events": [event("agent-42", "h", None, &[(Method::Ja4, JA4_A)], 0)]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/users",
            Some(st),
            Some(json!({"username": "x", "password": "12345678", "role": "admin"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/service-tokens",
            Some(&t.admin),
            Some(json!({"subject": "a b", "ttl_secs": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/service-tokens",
            Some(&t.admin),
            Some(json!({"subject": "ok", "ttl_secs": 999999999})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    t.finish().await;
}

async fn bad_input_is_4xx_json(backend: Backend) {
    let t = TestApp::start(backend, "badinput").await;
    t.ingest(&[event("a", "h", None, &[(Method::Ja4, JA4_A)], 0)])
        .await;
    let raw = |method: &str, uri: &str, ct: Option<&str>, body: Vec<u8>| {
        let mut b = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", t.admin));
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        b.body(Body::from(body)).unwrap()
    };
    let json_ct = Some("application/json");
    // Malformed JSON.
    let (s, v) = t
        .send(raw(
            "POST",
            "/api/ja4/ingest",
            json_ct,
            b"{\"events\": [".to_vec(),
        ))
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    let (s, v) = t
        .send(raw(
            "POST",
            "/api/auth/login",
            json_ct,
            b"not json".to_vec(),
        ))
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "malformed_json")
    );
    // Wrong types.
    let (s, v) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&t.admin),
            Some(json!({"events": "lots"})),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let mut e = serde_json::to_value(event("a", "h", None, &[(Method::Ja4, JA4_A)], 0)).unwrap();
    e["flow"]["src_port"] = json!(70000);
    let (s, _) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&t.admin),
            Some(json!({"events": [e]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let mut e = serde_json::to_value(event("a", "h", None, &[(Method::Ja4, JA4_A)], 0)).unwrap();
    e["fingerprints"][0]["method"] = json!("ja5");
    let (s, _) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&t.admin),
            Some(json!({"events": [e]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"username": 1, "password": true})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&t.admin),
            Some(json!({"events": [], "extra": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Semantically invalid events: nothing of the batch is stored.
    let mut bad = event("a", "h", None, &[(Method::Ja4, JA4_B)], 0);
    bad.id = uuid::Builder::from_random_bytes([7u8; 16]).into_uuid();
    let good = event("a", "h", None, &[(Method::Ja4, JA4_B)], 0);
    let (s, v) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&t.admin),
            Some(json!({"events": [good, bad]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("events[1]"),
        "{v}"
    );
    let (s, _) = t
        .call(
            "GET",
            &format!("/api/ja4/fingerprints/ja4/{JA4_B}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let future = event("a", "h", None, &[(Method::Ja4, JA4_B)], 10 * 86_400);
    let (s, _) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&t.admin),
            Some(json!({"events": [future]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&t.admin),
            Some(json!({"events": []})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let too_many: Vec<_> = (0..2001)
        .map(|_| event("a", "h", None, &[(Method::Ja4, JA4_A)], 0))
        .collect();
    let (s, v) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&t.admin),
            Some(json!({"events": too_many})),
        )
        .await;
    assert!(
        s == StatusCode::BAD_REQUEST || s == StatusCode::PAYLOAD_TOO_LARGE,
        "{s} {v}"
    );
    // Oversized body (limit is 1 MiB in tests).
    let big = format!("{{\"events\": [], \"pad\": \"{}\"}}", "x".repeat(2 << 20));
    let (s, v) = t
        .send(raw("POST", "/api/ja4/ingest", json_ct, big.into_bytes()))
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    // Missing content type.
    let (s, v) = t
        .send(raw("POST", "/api/ja4/ingest", None, b"{}".to_vec()))
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    // SQL-injection strings: refused or harmlessly bound, never a 500, and the data survives.
    for q in [
        "host=x%27%20OR%20%271%27%3D%271",
        "host=x'OR'1'='1",
        "prefix=%27%3B%20DROP%20TABLE%20events%3B%20--",
        "value=t13');DROP%20TABLE%20fingerprints;--",
        "agent=%22%3B--",
        "server_name=a%27%20UNION%20SELECT%20*%20FROM%20users--",
        "cursor=%27%20OR%201%3D1",
        "method=ja4%27%20OR%201%3D1",
    ] {
        let (s, v) = t
            .call(
                "GET",
                &format!("/api/ja4/fingerprints?{q}"),
                Some(&t.admin),
                None,
            )
            .await;
        assert!(
            s == StatusCode::BAD_REQUEST
                || (s == StatusCode::OK && v["items"].as_array().unwrap().is_empty()),
            "{q}: {s} {v}"
        );
        if s == StatusCode::BAD_REQUEST {
            error_code(&v);
        }
    }
    let (s, v) = t
        .call(
            "GET",
            "/api/ja4/fingerprints/ja4/x'%20OR%20'1'='1",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = t
        .call(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"username": "admin' --", "password": "' OR '1'='1"})),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (_, v) = t
        .call("GET", "/api/ja4/fingerprints", Some(&t.admin), None)
        .await;
    assert_eq!(
        v["items"].as_array().unwrap().len(),
        1,
        "data intact after injection attempts"
    );
    // Absurd page sizes and other bad parameters.
    for q in [
        "limit=100000",
        "limit=0",
        "limit=-1",
        "limit=abc",
        "limit=1e9",
        "limit=18446744073709551616",
        "bogus=1",
        "method=ja5",
        "from=yesterday",
        "from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "cursor=AAAA",
    ] {
        let (s, v) = t
            .call(
                "GET",
                &format!("/api/ja4/fingerprints?{q}"),
                Some(&t.admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        error_code(&v);
    }
    for q in [
        "window=0h",
        "window=1000d",
        "window=abc",
        "limit=101",
        "limit=0",
    ] {
        let (s, v) = t
            .call(
                "GET",
                &format!("/api/ja4/stats/top?{q}"),
                Some(&t.admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
    }
    let long = "a".repeat(600);
    let (s, _) = t
        .call(
            "GET",
            &format!("/api/ja4/fingerprints?prefix={long}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Unknown route and wrong method are JSON too.
    let (s, v) = t.call("GET", "/api/nowhere", Some(&t.admin), None).await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, v) = t
        .call("DELETE", "/api/ja4/ingest", Some(&t.admin), None)
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    t.finish().await;
}

async fn ops_endpoints(backend: Backend) {
    let t = TestApp::start(backend, "ops").await;
    let (s, v) = t.call("GET", "/health", None, None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, v) = t.call("GET", "/ready", None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let expect = if backend == Backend::Sqlite {
        ("sqlite", "memory")
    } else {
        ("postgres", "redis")
    };
    assert_eq!(
        (
            v["store"]["backend"].as_str().unwrap(),
            v["bus"]["backend"].as_str().unwrap()
        ),
        expect
    );
    t.ingest(&[event("a", "h", None, &[(Method::Ja4, JA4_A)], 0)])
        .await;
    let resp = tower::ServiceExt::oneshot(
        t.router.clone(),
        Request::get("/metrics").body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("hais_ingest_events_stored_total 1"), "{text}");
    assert!(text.contains("hais_http_request_duration_seconds_bucket{le=\"+Inf\"}"));
    // The roll-up backlog: the one event at most, and nothing once a read has folded it.
    assert!(backlog(&text) <= 1, "{text}");
    let (s, _) = t
        .call("GET", "/api/ja4/fingerprints", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, text) = t.get_text("/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(backlog(&text), 0, "{text}");
    // The router and the OpenAPI document agree, path by path (taken from the document).
    assert!(common::assert_router_serves_document(&t, "/").await > 30);
    // Every service reports its status: all are implemented.
    for svc in [
        "ja4",
        "spire",
        "correlation",
        "identity",
        "policy",
        "alert",
        "threat",
    ] {
        let (s, v) = t
            .call("GET", &format!("/api/{svc}/status"), Some(&t.admin), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{svc}: {v}");
        assert_eq!(v["status"], "ok", "{svc}: {v}");
    }
    let (s, v) = t
        .call("GET", "/api/gateway/services", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 7);
    t.finish().await;
}

/// A second process's worth of state on the same store: the JWT secret and users are shared,
/// so a token from one instance is accepted by the other.
async fn instances_share_secret_and_users(backend: Backend) {
    let iso = common::Isolation::new(backend, "shared").await;
    let mut cfg = iso.config();
    cfg.jwt_secret = None;
    let a = TestApp::start_with(iso.clone(), cfg.clone()).await;
    let b_app = hais_control_plane::App::start(cfg).await.unwrap();
    let b_router = b_app.router();
    let resp = tower::ServiceExt::oneshot(
        b_router,
        Request::get("/api/auth/me")
            .header(header::AUTHORIZATION, format!("Bearer {}", a.admin))
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    b_app.shutdown().await;
    a.finish().await;
}

/// Text that needs escaping on the way into the database (backslashes, quotes, `%`/`_` that
/// LIKE would treat specially, non-ASCII process names) is stored and found verbatim.
async fn odd_but_valid_text_round_trips(backend: Backend) {
    let t = TestApp::start(backend, "oddtext").await;
    let host = r#"we\ird"host'%_"#;
    let mut e = event(
        "agent\\x",
        host,
        Some("a_b%c.example"),
        &[(Method::Ja4, "t13d\\x_%_'")],
        0,
    );
    e.workload.process = Some("naïve proc ✓ \\n".into());
    // Identities come from registration entries (a claimed one is dropped on ingest).
    let (s, v) = t
        .call(
            "POST",
            "/api/identity/entries",
            Some(&t.admin),
            Some(json!({"spiffe_id": "spiffe://hais.local/ns/a_b/sa/c", "selectors": ["hais:agent:agent\\x"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    t.ingest(&[e]).await;
    let q = |k: &str, v: &str| format!("/api/ja4/fingerprints?{k}={}", urlencode(v));
    for (k, v) in [
        ("host", host),
        ("agent", "agent\\x"),
        ("server_name", "a_b%c.example"),
        ("identity", "spiffe://hais.local/ns/a_b/sa/c"),
        ("value", "t13d\\x_%_'"),
    ] {
        let (s, v2) = t.call("GET", &q(k, v), Some(&t.admin), None).await;
        assert_eq!(s, StatusCode::OK, "{k}: {v2}");
        assert_eq!(v2["items"].as_array().unwrap().len(), 1, "{k}={v}: {v2}");
        assert_eq!(v2["items"][0]["value"], "t13d\\x_%_'");
    }
    // `_` and `%` are literal in prefixes, not wildcards.
    let (_, v) = t
        .call("GET", &q("prefix", "t13d\\x_%"), Some(&t.admin), None)
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let (_, v) = t
        .call("GET", &q("prefix", "t13d_"), Some(&t.admin), None)
        .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
    t.finish().await;
}

/// Opens the store of an isolated test database directly, with or without the roll-up worker.
async fn open_store(
    iso: &common::Isolation,
    interval: Option<Duration>,
) -> std::sync::Arc<dyn Store> {
    store::open_with(
        &iso.config().database_url(),
        iso.schema.as_deref(),
        4,
        StoreOptions {
            rollup_interval: interval,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap()
}

/// Batches whose fingerprints, hosts and hours overlap, each event at its own time.
fn overlapping_batches(
    tag: &str,
    n_batches: usize,
    per_batch: usize,
) -> Vec<Vec<FingerprintEvent>> {
    let values = [JA4_A, JA4_B, "t12d0102h1_aaaaaaaaaaaa_bbbbbbbbbbbb"];
    (0..n_batches)
        .map(|b| {
            (0..per_batch)
                .map(|i| {
                    let k = b * per_batch + i;
                    let host = format!("{tag}-host-{}", k % 4);
                    let sni = (!k.is_multiple_of(3)).then(|| format!("svc-{}.example", k % 5));
                    let mut fps = vec![(Method::Ja4, values[k % 3])];
                    if k.is_multiple_of(2) {
                        fps.push((Method::Ja4s, JA4S_A));
                    }
                    // Spread over about three days, so several hours and first/last seen move.
                    event(
                        "agent-x",
                        &host,
                        sni.as_deref(),
                        &fps,
                        -((k as i64 * 997) % 250_000) - 1,
                    )
                })
                .collect()
        })
        .collect()
}

/// What the roll-ups must say about `events`, computed independently of the store:
/// (method, value) → (count, first µs, last µs, host → count).
type Expected = BTreeMap<(Method, String), (i64, i64, i64, BTreeMap<String, i64>)>;

fn expected(events: &[&FingerprintEvent]) -> Expected {
    let mut out = Expected::new();
    for e in events {
        let ts = store::to_us(e.timestamp);
        let fps: BTreeSet<_> = e
            .fingerprints
            .iter()
            .map(|f| (f.method, f.value.clone()))
            .collect();
        for k in fps {
            let x = out
                .entry(k)
                .or_insert((0, i64::MAX, i64::MIN, BTreeMap::new()));
            x.0 += 1;
            x.1 = x.1.min(ts);
            x.2 = x.2.max(ts);
            *x.3.entry(e.host.clone()).or_default() += 1;
        }
    }
    out
}

async fn assert_rollups(store: &dyn Store, want: &Expected) {
    for ((method, value), (count, first, last, hosts)) in want {
        let d = store
            .detail(*method, value)
            .await
            .unwrap()
            .expect("known fingerprint");
        let s = &d.summary;
        assert_eq!(
            (s.count, s.first_seen_us, s.last_seen_us),
            (*count, *first, *last),
            "{value}"
        );
        let got: BTreeMap<String, i64> = d
            .hosts
            .top
            .iter()
            .map(|h| (h.value.clone(), h.count))
            .collect();
        assert_eq!(&got, hosts, "{value}");
        assert_eq!(d.hosts.total, hosts.len() as i64);
    }
    // The hourly roll-up agrees with the totals.
    let top = store.top(0, None, 100).await.unwrap();
    let got: BTreeMap<(Method, String), i64> = top
        .into_iter()
        .map(|t| ((t.method, t.value), t.count))
        .collect();
    let want: BTreeMap<(Method, String), i64> =
        want.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    assert_eq!(got, want);
}

/// `hais_rollup_backlog_events` of a metrics page (which must report it).
fn backlog(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("hais_rollup_backlog_events "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no roll-up backlog in {metrics}"))
}

/// The roll-up stage: deltas pending across a crash (a store closed without folding), a partial
/// fold, replays before and after it; every event counted exactly once.
async fn rollup_stage_replay_after_partial_fold(backend: Backend) {
    let iso = common::Isolation::new(backend, "fold").await;
    let batches = overlapping_batches("p", 4, 30);
    let s = open_store(&iso, None).await;
    for b in &batches {
        assert_eq!(s.ingest(b).await.unwrap().stored.len(), b.len());
    }
    assert_eq!(
        s.pending_rollups().await.unwrap(),
        RollupBacklog {
            groups: 4,
            events: 120
        }
    );
    // Fold the oldest record only, then replay everything: nothing new, nothing pending added.
    assert_eq!(
        s.fold_rollups(1).await.unwrap(),
        RollupBacklog {
            groups: 1,
            events: 30
        }
    );
    for b in &batches {
        assert_eq!(s.ingest(b).await.unwrap().duplicates, b.len());
    }
    assert_eq!(s.pending_rollups().await.unwrap().groups, 3);
    // "Crash" between ingest and fold: no worker, so closing folds nothing.
    s.close().await.unwrap();

    let s = open_store(&iso, None).await;
    assert_eq!(
        s.pending_rollups().await.unwrap().groups,
        3,
        "pending survives a restart"
    );
    // A replay mixing stored and new events after the restart.
    let mut mixed = batches[2].clone();
    let fresh = overlapping_batches("q", 1, 10).remove(0);
    mixed.extend(fresh.iter().cloned());
    let out = s.ingest(&mixed).await.unwrap();
    assert_eq!((out.stored.len(), out.duplicates), (10, 30));
    // A read folds what is pending first.
    let all: Vec<&FingerprintEvent> = batches.iter().flatten().chain(fresh.iter()).collect();
    assert_rollups(&*s, &expected(&all)).await;
    assert_eq!(s.pending_rollups().await.unwrap(), RollupBacklog::default());
    assert_eq!(s.fold_rollups(10).await.unwrap(), RollupBacklog::default());
    // Replaying after the fold counts nothing again.
    for b in &batches {
        assert_eq!(s.ingest(b).await.unwrap().duplicates, b.len());
    }
    assert_rollups(&*s, &expected(&all)).await;
    s.close().await.unwrap();
    iso.cleanup().await;
}

/// Concurrent ingest calls (new batches and replays of each other's), a fast background fold
/// and concurrent reads: roll-ups end up exact, and reads see acknowledged events.
async fn rollup_stage_concurrent_batches(backend: Backend) {
    let iso = common::Isolation::new(backend, "foldconc").await;
    let s = open_store(&iso, Some(Duration::from_millis(5))).await;
    let batches = std::sync::Arc::new(overlapping_batches("c", 24, 40));
    let mut tasks = Vec::new();
    for w in 0..6 {
        let (s, batches) = (s.clone(), batches.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..batches.len()).step_by(6) {
                let out = s.ingest(&batches[i]).await.unwrap();
                assert_eq!(out.stored.len() + out.duplicates, batches[i].len());
                // Replay a batch another task may be writing right now.
                let j = (i + 7) % batches.len();
                s.ingest(&batches[j]).await.unwrap();
                // Read-your-writes: this batch's first event is counted already.
                let e = &batches[i][0];
                let f = &e.fingerprints[0];
                let d = s
                    .detail(f.method, &f.value)
                    .await
                    .unwrap()
                    .expect("visible");
                assert!(d.summary.first_seen_us <= store::to_us(e.timestamp));
                assert!(d.hosts.top.iter().any(|h| h.value == e.host));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s.count_events().await.unwrap(), 24 * 40);
    let all: Vec<&FingerprintEvent> = batches.iter().flatten().collect();
    assert_rollups(&*s, &expected(&all)).await;
    s.close().await.unwrap();
    // The worker folded everything at close.
    let s = open_store(&iso, None).await;
    assert_eq!(s.pending_rollups().await.unwrap(), RollupBacklog::default());
    s.close().await.unwrap();
    iso.cleanup().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'.' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

crate::backend_tests!(
    ingest_dedup_and_rollups,
    search_filters_and_pagination,
    top_counts_events,
    retention_deletes_old_data,
    auth_failures,
    bad_input_is_4xx_json,
    ops_endpoints,
    odd_but_valid_text_round_trips,
    instances_share_secret_and_users,
    rollup_stage_replay_after_partial_fold,
    rollup_stage_concurrent_batches,
);
