//! The events API (`GET /api/ja4/events`, `GET /api/ja4/events/{id}`): every filter alone and
//! combined, newest-first keyset pagination, events stored before a registration entry existed
//! and after, and refusals. On SQLite and on PostgreSQL.

mod common;

use std::collections::BTreeSet;

use axum::http::StatusCode;
use common::{Backend, TestApp, enc, error_code, event};
use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use serde_json::{Value, json};
use sqlx::{Connection as _, Row as _};

const JA4_CURL: &str = "t13d1516h2_8daaf6152771_e5627efa2ab1";
const JA4_PY: &str = "t13d1812h1_85036bcba153_b26ce05bbdd6";
const JA4H: &str = "ge11nn05enus_974ebe531c03_000000000000_000000000000";
const JA4X_1: &str = "a373a9f83c6b_2bab15409345_7bf9a7bf7029";
const JA4X_2: &str = "a373a9f83c6b_7022c563de38_7bf9a7bf7029";

/// A flow of `exe` run by `uid` on `host`, `secs` seconds ago, to `dst`:443.
fn flow(
    host: &str,
    exe: &str,
    uid: u32,
    dst: &str,
    fps: &[(Method, &str)],
    secs: i64,
) -> FingerprintEvent {
    let mut e = event(
        &format!("agent-{host}"),
        host,
        Some("api.example"),
        fps,
        -secs,
    );
    e.flow.dst_ip = dst.parse().unwrap();
    e.workload.pid = Some(4000 + uid);
    e.workload.uid = Some(uid);
    e.workload.user = Some(format!("user{uid}"));
    e.workload.exe = Some(exe.into());
    e.workload.process = exe.rsplit('/').next().map(str::to_owned);
    e
}

/// The ids of one page, and its cursor.
async fn page(t: &TestApp, query: &str) -> (Vec<String>, Option<String>) {
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/ja4/events?{query}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{query}: {v}");
    let ids = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, v["next_cursor"].as_str().map(str::to_owned))
}

/// Every id the query returns, following cursors with pages of `limit`.
async fn all_ids(t: &TestApp, query: &str, limit: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("{query}&limit={limit}&cursor={c}"),
            None => format!("{query}&limit={limit}"),
        };
        let (ids, next) = page(t, &q).await;
        assert!(ids.len() <= limit as usize);
        out.extend(ids);
        match next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

/// The ids of `events` matching `keep`, newest first (what the API must answer).
fn expected(events: &[FingerprintEvent], keep: impl Fn(&FingerprintEvent) -> bool) -> Vec<String> {
    let mut ids: Vec<_> = events.iter().filter(|e| keep(e)).map(|e| e.id).collect();
    ids.sort();
    ids.reverse();
    ids.iter().map(ToString::to_string).collect()
}

fn has(e: &FingerprintEvent, m: Method, v: &str) -> bool {
    e.fingerprints.iter().any(|f| f.method == m && f.value == v)
}

async fn event_search(backend: Backend) {
    let t = TestApp::start(backend, "events").await;
    // 40 flows over the last ~hour: curl and python on two hosts, to two destinations; some
    // with a JA4H, one server with two certificates (two JA4X of one method in one event).
    let mut events = Vec::new();
    for i in 0..40i64 {
        let host = if i % 2 == 0 { "web-01" } else { "web-02" };
        let dst = if i % 4 < 2 {
            "192.0.2.10"
        } else {
            "2001:db8::7"
        };
        let (exe, uid, ja4) = if i % 5 == 0 {
            ("/usr/bin/python3", 1000, JA4_PY)
        } else {
            ("/usr/bin/curl", 0, JA4_CURL)
        };
        let mut fps = vec![(Method::Ja4, ja4)];
        if i % 3 == 0 {
            fps.push((Method::Ja4h, JA4H));
        }
        if i == 7 {
            fps.push((Method::Ja4x, JA4X_1));
            fps.push((Method::Ja4x, JA4X_2));
        }
        let mut e = flow(host, exe, uid, dst, &fps, 3600 - i * 60);
        e.flow.dst_port = if i % 10 == 9 { 8443 } else { 443 };
        events.push(e);
    }
    t.ingest(&events).await;
    t.search_indexed().await;

    // No filter: everything, newest first, across pages.
    let everything = expected(&events, |_| true);
    assert_eq!(all_ids(&t, "", 7).await, everything);
    assert_eq!(all_ids(&t, "", 1000).await, everything);

    // Each filter alone.
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            format!("method=ja4&value={JA4_PY}"),
            expected(&events, |e| has(e, Method::Ja4, JA4_PY)),
        ),
        // A bare value: its method comes from the roll-up.
        (
            format!("value={JA4_CURL}"),
            expected(&events, |e| has(e, Method::Ja4, JA4_CURL)),
        ),
        (
            "method=ja4h".into(),
            expected(&events, |e| {
                e.fingerprints.iter().any(|f| f.method == Method::Ja4h)
            }),
        ),
        // Two JA4X in one event: listed once.
        (
            "method=ja4x".into(),
            expected(&events, |e| {
                e.fingerprints.iter().any(|f| f.method == Method::Ja4x)
            }),
        ),
        (
            "host=web-02".into(),
            expected(&events, |e| e.host == "web-02"),
        ),
        (
            "agent=agent-web-01".into(),
            expected(&events, |e| e.agent_id == "agent-web-01"),
        ),
        (
            "dst_ip=2001:0db8:0:0::7".into(),
            expected(&events, |e| e.flow.dst_ip.to_string() == "2001:db8::7"),
        ),
        ("src_ip=10.1.2.3".into(), expected(&events, |_| true)),
        (
            "dst_port=8443".into(),
            expected(&events, |e| e.flow.dst_port == 8443),
        ),
        (
            "server_name=api.example".into(),
            expected(&events, |_| true),
        ),
        (
            format!("workload={}", enc("host:web-01:python3:user1000")),
            expected(&events, |e| {
                e.host == "web-01" && e.workload.uid == Some(1000)
            }),
        ),
    ];
    for (q, want) in &cases {
        assert!(
            !want.is_empty(),
            "{q} must match something to test anything"
        );
        assert_eq!(&all_ids(&t, q, 4).await, want, "{q}");
    }
    assert_eq!(cases[3].1.len(), 1, "one event has the two certificates");

    // Combined, and with a time range (the 20 oldest minutes: events 0..=19 are older).
    let ts = |i: usize| {
        events[i]
            .timestamp
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let (from, to) = (ts(5), ts(19));
    let in_range = |e: &FingerprintEvent| {
        e.timestamp >= events[5].timestamp && e.timestamp <= events[19].timestamp
    };
    let combined = all_ids(
        &t,
        &format!(
            "method=ja4&value={JA4_CURL}&host=web-01&from={}&to={}",
            enc(&from),
            enc(&to)
        ),
        3,
    )
    .await;
    assert_eq!(
        combined,
        expected(&events, |e| has(e, Method::Ja4, JA4_CURL)
            && e.host == "web-01"
            && in_range(e))
    );
    assert_eq!(
        all_ids(&t, &format!("from={}&to={}", enc(&from), enc(&to)), 100).await,
        expected(&events, in_range)
    );
    // Nothing matches: an empty page, no cursor.
    assert_eq!(page(&t, "host=nowhere").await, (vec![], None));
    assert_eq!(
        page(&t, "value=t13d0000h2_000000000000_000000000000").await,
        (vec![], None)
    );

    // An entry names curl's workload: later events carry its SPIFFE ID, earlier ones keep none
    // (stored events are not rewritten).
    let (s, v) = t
        .call(
            "POST",
            "/api/identity/entries",
            Some(&t.admin),
            Some(json!({"spiffe_id": "spiffe://example.org/curl", "selectors": ["unix:uid:0"]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let later = flow(
        "web-01",
        "/usr/bin/curl",
        0,
        "192.0.2.10",
        &[(Method::Ja4, JA4_CURL)],
        0,
    );
    t.ingest(std::slice::from_ref(&later)).await;
    t.search_indexed().await;
    let (ids, _) = page(
        &t,
        &format!("identity={}", enc("spiffe://example.org/curl")),
    )
    .await;
    assert_eq!(ids, vec![later.id.to_string()]);

    // One event: flow, fingerprints, workload facts and identity.
    let (s, one) = t
        .call(
            "GET",
            &format!("/api/ja4/events/{}", later.id),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert_eq!(one["identity"], "spiffe://example.org/curl");
    assert_eq!(one["workload"]["spiffe_id"], "spiffe://example.org/curl");
    assert_eq!(one["workload_key"], "host:web-01:curl:user0");
    assert_eq!(one["workload"]["exe"], "/usr/bin/curl");
    assert_eq!(one["flow"]["dst_port"], 443);
    assert_eq!(one["fingerprints"][0]["value"], JA4_CURL);
    assert!(one["received_us"].as_i64().unwrap() > 0);
    // The same record in a page and alone.
    let (_, p) = t
        .call("GET", "/api/ja4/events?limit=1", Some(&t.admin), None)
        .await;
    assert_eq!(p["items"][0], one);
    let two_cert: Value = t
        .call(
            "GET",
            &format!("/api/ja4/events/{}", events[7].id),
            Some(&t.admin),
            None,
        )
        .await
        .1;
    assert_eq!(two_cert["fingerprints"].as_array().unwrap().len(), 3);
    assert!(two_cert["identity"].is_null());

    // Refusals: 4xx with a JSON error naming the problem.
    let bad = [
        ("method=ja5", StatusCode::BAD_REQUEST),
        ("dst_port=70000", StatusCode::BAD_REQUEST),
        ("dst_ip=not-an-ip", StatusCode::BAD_REQUEST),
        ("src_ip=10.0.0.300", StatusCode::BAD_REQUEST),
        ("limit=0", StatusCode::BAD_REQUEST),
        ("limit=1001", StatusCode::BAD_REQUEST),
        ("cursor=garbage", StatusCode::BAD_REQUEST),
        ("from=yesterday", StatusCode::BAD_REQUEST),
        ("host=a%20b", StatusCode::BAD_REQUEST),
        ("unknown=1", StatusCode::BAD_REQUEST),
    ];
    for (q, status) in bad {
        let (s, v) = t
            .call("GET", &format!("/api/ja4/events?{q}"), Some(&t.admin), None)
            .await;
        assert_eq!(s, status, "{q}: {v}");
        assert_eq!(error_code(&v), "invalid_request", "{q}: {v}");
    }
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/ja4/events?from={}&to={}", enc(&to), enc(&from)),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = t
        .call("GET", "/api/ja4/events/not-a-uuid", Some(&t.admin), None)
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/ja4/events/{}", uuid::Uuid::now_v7()),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _) = t.call("GET", "/api/ja4/events", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // The same page as OCSF Network Activity: same events, same cursor; fingerprints typed and
    // split into sections; the process as actor; the identity unmapped.
    let (ids, next) = page(&t, "host=web-02&limit=7").await;
    let (s, v) = t
        .call(
            "GET",
            "/api/ja4/export/ocsf?host=web-02&limit=7",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["next_cursor"].as_str(), next.as_deref());
    let docs = v["items"].as_array().unwrap();
    let uids: Vec<String> = docs
        .iter()
        .map(|d| d["metadata"]["uid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(uids, ids);
    for d in docs {
        let e = events
            .iter()
            .find(|e| e.id.to_string() == d["metadata"]["uid"])
            .unwrap();
        assert_eq!(
            (d["class_uid"].as_u64(), d["type_uid"].as_u64()),
            (Some(4001), Some(400106))
        );
        assert_eq!(d["metadata"]["version"], "1.3.0");
        assert_eq!(d["device"]["hostname"], "web-02");
        assert_eq!(d["dst_endpoint"]["ip"], e.flow.dst_ip.to_string());
        assert_eq!(d["dst_endpoint"]["port"], e.flow.dst_port);
        assert_eq!(d["dst_endpoint"]["hostname"], "api.example");
        assert_eq!(
            d["time"].as_i64().unwrap(),
            (e.timestamp.unix_timestamp_nanos() / 1_000_000) as i64
        );
        assert_eq!(
            d["actor"]["process"]["file"]["path"],
            e.workload.exe.clone().unwrap()
        );
        let list = d["ja4_fingerprint_list"].as_array().unwrap();
        assert_eq!(list.len(), e.fingerprints.len());
        for (f, o) in e.fingerprints.iter().zip(list) {
            assert_eq!(o["value"], f.value);
            let want = match f.method {
                Method::Ja4 => 1,
                Method::Ja4h => 3,
                Method::Ja4x => 5,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(o["type_id"], want);
            assert_eq!(o["section_a"].as_str(), f.value.split('_').next(), "{o}");
        }
        assert!(d["unmapped"]["workload_key"].is_string(), "{d}");
    }
    let (s, v) = t
        .call("GET", "/api/ja4/export/ocsf?limit=0", Some(&t.admin), None)
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (s, _) = t.call("GET", "/api/ja4/export/ocsf", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Replays are stored once, and so listed once.
    t.ingest(&events[..3]).await;
    t.search_indexed().await;
    let hosts: BTreeSet<_> = all_ids(&t, "", 1000).await.into_iter().collect();
    assert_eq!(hosts.len(), events.len() + 1);
    t.finish().await;
}

crate::backend_tests!(event_search);

/// Search rows already there are left alone and missing ones written, as after an upgrade whose
/// migration indexed the stored events while the new `search` group starts again at the start of
/// the bus log: PostgreSQL's `COPY` meets the existing keys and the indexer falls back to
/// `INSERT … ON CONFLICT DO NOTHING`. A backslash in a server name survives `COPY`'s escaping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_reindex_keeps_rows_there_and_fills_missing_ones() {
    let mut t = TestApp::start(Backend::Postgres, "reindex").await;
    let mut events = Vec::new();
    for i in 0..30i64 {
        let host = format!("node-{:02}", i % 6);
        let mut e = flow(
            &host,
            "/usr/bin/curl",
            0,
            "192.0.2.10",
            &[(Method::Ja4, JA4_CURL), (Method::Ja4h, JA4H)],
            600 - i,
        );
        if i == 4 {
            e.server_name = Some(r"odd\name.example".into());
        }
        events.push(e);
    }
    t.ingest(&events).await;
    t.search_indexed().await;
    let schema = t.iso.schema.clone().unwrap();
    let iso = t.iso.clone();
    t.app.take().unwrap().shutdown().await;

    // A third of the events lose their search rows; the group forgets its cursors.
    let mut conn = sqlx::PgConnection::connect(&common::pg_url())
        .await
        .unwrap();
    let run = |sql: String| sqlx::query(sqlx::AssertSqlSafe(sql));
    let gone: Vec<uuid::Uuid> = events.iter().step_by(3).map(|e| e.id).collect();
    for table in ["event_search", "event_fingerprints"] {
        run(format!("DELETE FROM {schema}.{table} WHERE id = ANY($1)"))
            .bind(&gone)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    run(format!(
        "DELETE FROM {schema}.bus_partitions WHERE grp = 'search'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();

    let t = TestApp::start_with(iso.clone(), iso.config()).await;
    t.search_indexed().await;
    let count = |table: &str| run(format!("SELECT count(*) FROM {schema}.{table}"));
    let n: i64 = count("event_search")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, events.len() as i64);
    let n: i64 = count("event_fingerprints")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2 * events.len() as i64);
    let want = expected(&events, |e| e.host == "node-04");
    assert_eq!(all_ids(&t, "host=node-04", 3).await, want);
    assert_eq!(
        all_ids(&t, &format!("method=ja4h&value={JA4H}"), 100).await,
        expected(&events, |_| true)
    );
    assert_eq!(
        all_ids(&t, &format!("server_name={}", enc(r"odd\name.example")), 10).await,
        vec![events[4].id.to_string()]
    );
    t.finish().await;
}
