//! Issue 11's attacks, each reproduced against the real control plane (SQLite and PostgreSQL):
//! login floods and password guessing, secrets on disk, forged telemetry through service tokens,
//! a handler panic on hostile input, accounts an admin must be able to shut out, and input
//! hygiene. Each test fails without the fix it guards.

mod common;

use std::os::unix::fs::PermissionsExt as _;

use axum::http::{StatusCode, header};
use common::{ADMIN_PASSWORD, Backend, TestApp, error_code, event};
use hais_shared::fingerprint::Method;
use serde_json::{Value, json};

const JA4: &str = "t13d1516h2_8daaf6152771_e5627efa2ab1";

async fn login_with_headers(
    t: &TestApp,
    ip: &str,
    user: &str,
    pw: &str,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    t.call_from(
        ip,
        "POST",
        "/api/auth/login",
        None,
        Some(json!({"username": user, "password": pw})),
    )
    .await
}

async fn login_from(t: &TestApp, ip: &str, user: &str, pw: &str) -> (StatusCode, Value) {
    let (s, v, _) = login_with_headers(t, ip, user, pw).await;
    (s, v)
}

async fn make_user(t: &TestApp, name: &str, pw: &str, role: &str) {
    let (s, v) = t
        .call(
            "POST",
            "/api/auth/users",
            Some(&t.admin),
            Some(json!({"username": name, "password": pw, "role": role})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Item 1: concurrent wrong logins cannot make the process hash without bound: beyond the
/// hashing slots and the queue, logins are refused at once with 503 + Retry-After, and the
/// process stays ready.
async fn login_flood_is_bounded(backend: Backend) {
    let iso = common::Isolation::new(backend, "flood").await;
    let mut config = iso.config();
    config.auth.max_concurrent_hashes = 1;
    config.auth.max_queued_hashes = 2;
    let t = std::sync::Arc::new(TestApp::start_with(iso, config).await);
    let long = "x".repeat(1024);
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let (t, pw) = (t.clone(), long.clone());
            tokio::spawn(async move {
                let ip = format!("10.9.{}.{}", i / 200, i % 200 + 1);
                let (s, v, h) = t
                    .call_from(
                        &ip,
                        "POST",
                        "/api/auth/login",
                        None,
                        Some(json!({"username": format!("nobody{i}"), "password": pw})),
                    )
                    .await;
                (s, v, h.get(header::RETRY_AFTER).cloned())
            })
        })
        .collect();
    let (mut refused, mut busy) = (0, 0);
    for task in tasks {
        let (s, v, retry) = task.await.unwrap();
        match s {
            StatusCode::UNAUTHORIZED => refused += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(error_code(&v), "unavailable");
                assert!(retry.is_some(), "503 carries Retry-After");
                busy += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(
        busy > 0,
        "logins beyond the slot and queue are refused at once"
    );
    assert!(refused >= 1, "admitted logins are answered");
    let (s, m) = t.get_text("/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(m.contains("hais_login_failures_total"), "{m}");
    assert!(
        m.contains(&format!("hais_login_busy_total {busy}")),
        "every refusal is counted: {m}"
    );
    let (s, _) = t.call("GET", "/ready", None, None).await;
    assert_eq!(s, StatusCode::OK);
    std::sync::Arc::into_inner(t).unwrap().finish().await;
}

/// Item 1: guessing backs off per source and per user; the right password still works from
/// where the user logged in before, other users are unaffected.
async fn password_guessing_backs_off(backend: Backend) {
    let t = TestApp::start(backend, "guess").await;
    make_user(&t, "alice", "alice-password", "viewer").await;
    let (s, _) = login_from(&t, "192.0.2.1", "alice", "alice-password").await;
    assert_eq!(s, StatusCode::OK, "alice's usual address");
    // An attacker at one address: five free failures, then 429 with Retry-After, before any
    // password check (even the right password is refused from there now).
    for _ in 0..5 {
        let (s, _) = login_from(&t, "198.51.100.7", "alice", "guess").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
    }
    let (s, v, h) = login_with_headers(&t, "198.51.100.7", "alice", "guess").await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    assert!(h.get(header::RETRY_AFTER).is_none());
    let (s, v, h) = login_with_headers(&t, "198.51.100.7", "alice", "alice-password").await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::TOO_MANY_REQUESTS, "too_many_requests")
    );
    assert!(h.get(header::RETRY_AFTER).is_some());
    // Alice, from her usual address, logs in at once; an unknown address is held back for
    // alice, but not for another user.
    let (s, v) = login_from(&t, "192.0.2.1", "alice", "alice-password").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = login_from(&t, "203.0.113.9", "alice", "alice-password").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let (s, _) = login_from(&t, "203.0.113.9", "admin", ADMIN_PASSWORD).await;
    assert_eq!(s, StatusCode::OK);
    let (_, m) = t.get_text("/metrics", None).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("hais_login_throttled_total ") && !l.ends_with(" 0")),
        "{m}"
    );
    t.finish().await;
}

/// Item 1 over real sockets: the back-off keys on the TCP peer the server accepted, so one
/// address's failures hold that address back, not another's.
async fn throttle_keys_on_the_socket_peer(backend: Backend) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let iso = common::Isolation::new(backend, "peer").await;
    let app = hais_control_plane::App::start(iso.config()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.serve(listener, async {
        let _ = stop_rx.await;
    }));
    let login = |from: &'static str, user: &'static str, pw: &'static str| async move {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut c = sock.connect(addr).await.unwrap();
        let body = json!({"username": user, "password": pw}).to_string();
        let req = format!(
            "POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out.split(' ').nth(1).unwrap_or("").to_owned()
    };
    for _ in 0..5 {
        assert_eq!(login("127.0.0.2", "ghost", "nope").await, "401");
    }
    assert_eq!(login("127.0.0.2", "ghost", "nope").await, "401");
    assert_eq!(
        login("127.0.0.2", "admin", ADMIN_PASSWORD).await,
        "429",
        "127.0.0.2 is held back"
    );
    assert_eq!(
        login("127.0.0.3", "admin", ADMIN_PASSWORD).await,
        "200",
        "127.0.0.3 is not"
    );
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
    iso.cleanup().await;
}

/// Item 3: the data directory is 0700 and the database files 0600, whatever the umask; a
/// generated admin password goes to a 0600 file, not to the log; a too-short configured one is
/// refused.
async fn secrets_are_private(backend: Backend) {
    let iso = common::Isolation::new(backend, "secrets").await;
    // What an older version or a 022 umask left behind.
    std::fs::set_permissions(&iso.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = iso.config();
    config.admin_password = None;
    if backend == Backend::Postgres {
        // The embedded database is not used; the directory still gets the password file.
        let _ = std::fs::remove_dir(&iso.dir);
    }
    let app = hais_control_plane::App::start(config.clone())
        .await
        .unwrap();
    let generated = app.generated_admin_password.clone().expect("generated");
    let file = iso.dir.join("admin-password");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), generated);
    assert_eq!(mode(&iso.dir), 0o700);
    if backend == Backend::Sqlite {
        for f in ["hais.db", "hais.db-wal", "hais.db-shm"] {
            let p = iso.dir.join(f);
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{f}");
            }
        }
        assert!(iso.dir.join("hais.db").exists());
    }
    let router = app.router();
    let t = TestApp {
        app: Some(app),
        router,
        iso: iso.clone(),
        admin: String::new(),
    };
    t.login("admin", &generated).await;
    t.finish().await;
    // HAIS_ADMIN_PASSWORD=a is refused (the API requires 8 characters).
    let mut short = config;
    short.admin_password = Some("a".into());
    assert!(short.check().is_err());
    iso.cleanup().await;
}

/// Item 7: a service token speaks for one agent; workload identities are never taken from the
/// sender.
async fn service_tokens_cannot_forge_telemetry(backend: Backend) {
    let t = TestApp::start(backend, "forge").await;
    let (s, v) = t
        .call(
            "POST",
            "/api/auth/service-tokens",
            Some(&t.admin),
            Some(json!({"subject": "agent-x", "ttl_secs": 600})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    let victim = event(
        "victim-agent-1",
        "other-host",
        None,
        &[(Method::Ja4, JA4)],
        0,
    );
    let (s, v) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&token),
            Some(json!({ "events": [victim] })),
        )
        .await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{v}"
    );
    let mut own = event("agent-x", "host-x", None, &[(Method::Ja4, JA4)], 0);
    own.workload.spiffe_id = Some("spiffe://hais.local/payments/api".into());
    own.workload.selectors = vec!["unix:uid:0".into()];
    let (s, v) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&token),
            Some(json!({ "events": [own] })),
        )
        .await;
    assert_eq!((s, v["stored"].as_u64()), (StatusCode::OK, Some(1)), "{v}");
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/ja4/fingerprints/ja4/{JA4}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["identities"]["total"], 0,
        "the claimed SPIFFE ID was dropped: {v}"
    );
    assert_eq!(v["agents"]["top"][0]["value"], "agent-x");
    t.finish().await;
}

/// Item 8: a multi-byte character where the window's unit goes used to panic the handler.
async fn hostile_window_is_a_400(backend: Backend) {
    let t = TestApp::start(backend, "window").await;
    for w in ["%C2%80", "1%C2%80", "7%F0%9F%98%80"] {
        let (s, v) = t
            .call(
                "GET",
                &format!("/api/ja4/stats/top?window={w}"),
                Some(&t.admin),
                None,
            )
            .await;
        assert_eq!(
            (s, error_code(&v)),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
    }
    let (_, m) = t.get_text("/metrics", None).await;
    assert!(m.contains("hais_http_panics_total 0"), "{m}");
    t.finish().await;
}

fn dead(s: StatusCode, v: &Value) -> bool {
    s == StatusCode::UNAUTHORIZED && error_code(v) == "token_revoked"
}

/// Item 9: disable, re-enable, role change, password change (own and by an admin), logout (one
/// session, everywhere), delete, service-token revocation: each ends the affected tokens on the
/// very next request. The last enabled admin cannot be removed.
async fn accounts_can_be_shut_out(backend: Backend) {
    let t = TestApp::start(backend, "accounts").await;
    make_user(&t, "mallory", "mallory-password", "analyst").await;
    let login = |pw: &'static str| {
        let t = &t;
        async move {
            let (s, v) = t
                .call(
                    "POST",
                    "/api/auth/login",
                    None,
                    Some(json!({"username": "Mallory", "password": pw})),
                )
                .await;
            (s, v)
        }
    };
    let me = |tok: String| {
        let t = &t;
        async move { t.call("GET", "/api/auth/me", Some(&tok), None).await }
    };
    let (s, pair) = login("mallory-password").await;
    assert_eq!(s, StatusCode::OK, "user names are case-insensitive: {pair}");
    let tok = pair["access_token"].as_str().unwrap().to_owned();
    assert_eq!(me(tok.clone()).await.0, StatusCode::OK);

    // Disable: the token dies at once, the refresh token too, and login says why.
    let (s, v) = t
        .call(
            "PATCH",
            "/api/auth/users/mallory",
            Some(&t.admin),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["disabled_us"].is_i64());
    let (s, v) = me(tok.clone()).await;
    assert!(dead(s, &v), "{s} {v}");
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/refresh",
            None,
            Some(json!({"refresh_token": pair["refresh_token"]})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = login("mallory-password").await;
    assert_eq!(
        (s, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "account_disabled")
    );
    // Enable again; then a role change ends the session too.
    let (s, _) = t
        .call(
            "PATCH",
            "/api/auth/users/mallory",
            Some(&t.admin),
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, pair) = login("mallory-password").await;
    let tok = pair["access_token"].as_str().unwrap().to_owned();
    t.call(
        "PATCH",
        "/api/auth/users/mallory",
        Some(&t.admin),
        Some(json!({"role": "viewer"})),
    )
    .await;
    let (s, v) = me(tok).await;
    assert!(dead(s, &v), "{v}");

    // Own password change: needs the current one; ends every session.
    let (_, pair) = login("mallory-password").await;
    let tok = pair["access_token"].as_str().unwrap().to_owned();
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/password",
            Some(&tok),
            Some(json!({"current_password": "wrong-one", "new_password": "another-password"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = t
        .call(
            "POST",
            "/api/auth/password",
            Some(&tok),
            Some(json!({"current_password": "mallory-password", "new_password": "short"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/password",
            Some(&tok),
            Some(
                json!({"current_password": "mallory-password", "new_password": "another-password"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = me(tok).await;
    assert!(dead(s, &v), "{v}");
    assert_eq!(login("mallory-password").await.0, StatusCode::UNAUTHORIZED);
    // An admin resets it (e.g. after a compromise).
    let (_, pair) = login("another-password").await;
    let tok = pair["access_token"].as_str().unwrap().to_owned();
    let (s, _) = t
        .call(
            "PUT",
            "/api/auth/users/mallory/password",
            Some(&t.admin),
            Some(json!({"password": "reset-by-admin"})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(dead(me(tok).await.0, &me_body(&t, &pair).await));

    // Logout: this session only, then everywhere.
    let (_, a) = login("reset-by-admin").await;
    let (_, b) = login("reset-by-admin").await;
    let ta = a["access_token"].as_str().unwrap().to_owned();
    let tb = b["access_token"].as_str().unwrap().to_owned();
    let (s, _) = t.call("POST", "/api/auth/logout", Some(&ta), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(dead(me(ta.clone()).await.0, &me(ta).await.1));
    assert_eq!(
        me(tb.clone()).await.0,
        StatusCode::OK,
        "the other session lives"
    );
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/refresh",
            None,
            Some(json!({"refresh_token": a["refresh_token"]})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the logged-out refresh token is dead"
    );
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/logout",
            Some(&tb),
            Some(json!({"everywhere": true})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(dead(me(tb.clone()).await.0, &me(tb).await.1));

    // Delete: tokens die, the name is free again.
    let (_, pair) = login("reset-by-admin").await;
    let tok = pair["access_token"].as_str().unwrap().to_owned();
    let (s, _) = t
        .call("DELETE", "/api/auth/users/MALLORY", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = me(tok).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = t
        .call("GET", "/api/auth/users/mallory", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The last enabled admin can be neither disabled, demoted nor deleted.
    for (m, body) in [
        ("PATCH", Some(json!({"disabled": true}))),
        ("PATCH", Some(json!({"role": "viewer"}))),
        ("DELETE", None),
    ] {
        let (s, v) = t
            .call(m, "/api/auth/users/admin", Some(&t.admin), body)
            .await;
        assert_eq!(
            (s, error_code(&v)),
            (StatusCode::CONFLICT, "conflict"),
            "{m}"
        );
    }
    // `Admin` is the same name as `admin`.
    let (s, _) = t
        .call(
            "POST",
            "/api/auth/users",
            Some(&t.admin),
            Some(json!({"username": "Admin", "password": "12345678", "role": "viewer"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = t.call("GET", "/api/auth/users", Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u.get("password_hash").is_none())
    );

    // Service tokens: listed, revoked, dead at once.
    let (_, st) = t
        .call(
            "POST",
            "/api/auth/service-tokens",
            Some(&t.admin),
            Some(json!({"subject": "agent-7"})),
        )
        .await;
    let token = st["token"].as_str().unwrap().to_owned();
    let ingest = json!({"events": [event("agent-7", "h", None, &[(Method::Ja4, JA4)], 0)]});
    let (s, v) = t
        .call(
            "POST",
            "/api/ja4/ingest",
            Some(&token),
            Some(ingest.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = t
        .call("GET", "/api/auth/service-tokens", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["items"][0]["id"], st["id"]);
    assert!(
        v["items"][0].get("token").is_none(),
        "the secret is never shown again"
    );
    let (s, v) = t
        .call(
            "DELETE",
            &format!("/api/auth/service-tokens/{}", st["id"].as_str().unwrap()),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["revoked_us"].is_i64());
    let (s, v) = t
        .call("POST", "/api/ja4/ingest", Some(&token), Some(ingest))
        .await;
    assert!(dead(s, &v), "{v}");
    t.finish().await;
}

async fn me_body(t: &TestApp, pair: &Value) -> Value {
    t.call(
        "GET",
        "/api/auth/me",
        Some(pair["access_token"].as_str().unwrap()),
        None,
    )
    .await
    .1
}

/// Item 10: security headers on every answer; no control characters stored; labels bounded
/// and deletable.
async fn headers_and_input_hygiene(backend: Backend) {
    let t = TestApp::start(backend, "hygiene").await;
    let (_, _, h) = login_with_headers(&t, "192.0.2.50", "admin", ADMIN_PASSWORD).await;
    assert_eq!(
        h[header::CACHE_CONTROL],
        "no-store",
        "tokens are never cached"
    );
    assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    assert!(h.contains_key(header::CONTENT_SECURITY_POLICY));

    // Bodies are JSON objects: serde would read an array as a struct's fields in order.
    for (m, uri) in [
        ("PATCH", "/api/auth/users/admin"),
        ("POST", "/api/identity/entries/import"),
    ] {
        let (s, v) = t
            .call(m, uri, Some(&t.admin), Some(json!([null, null])))
            .await;
        assert_eq!(
            (s, error_code(&v)),
            (StatusCode::BAD_REQUEST, "malformed_json"),
            "{m} {uri}"
        );
    }
    let (s, _) = t
        .call(
            "POST",
            "/api/identity/entries/import",
            Some(&t.admin),
            Some(json!([])),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Integers written with a zero fraction (JSON has one number type) are integers.
    let (s, v) = t
        .call(
            "POST",
            "/api/auth/service-tokens",
            Some(&t.admin),
            Some(json!({"subject": "agent-f", "ttl_secs": 300.0})),
        )
        .await;
    assert_eq!(
        (s, v["expires_in"].as_u64()),
        (StatusCode::OK, Some(300)),
        "{v}"
    );
    // The OpenAPI document names the errors every secured operation can give.
    let (_, doc) = t.call("GET", "/api/openapi.json", None, None).await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("security").is_some() {
                for code in ["401", "403"] {
                    assert!(
                        op["responses"].get(code).is_some(),
                        "{method} {path} lacks {code}"
                    );
                }
            }
        }
    }

    // A container label value with NUL or an escape sequence is refused.
    for bad in ["a\u{0}b", "\u{1b}[31mred"] {
        let mut e = event("a1", "h1", None, &[(Method::Ja4, JA4)], 0);
        e.workload
            .container_labels
            .insert("team".into(), bad.into());
        let (s, v) = t
            .call(
                "POST",
                "/api/ja4/ingest",
                Some(&t.admin),
                Some(json!({"events": [e]})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
    // Descriptions and labels refuse them too.
    let (s, _) = t
        .call(
            "POST",
            "/api/spire/tokens",
            Some(&t.admin),
            Some(json!({"description": "host\u{1b}]0;pwned\u{7}"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    t.ingest(&[event("a1", "h1", None, &[(Method::Ja4, JA4)], 0)])
        .await;
    let labels = format!("/api/ja4/fingerprints/ja4/{JA4}/labels");
    let (s, _) = t
        .call(
            "POST",
            &labels,
            Some(&t.admin),
            Some(json!({"label": "bad\u{0}"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    for i in 0..64 {
        let (s, v) = t
            .call(
                "POST",
                &labels,
                Some(&t.admin),
                Some(json!({"label": format!("l{i}")})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, v) = t
        .call(
            "POST",
            &labels,
            Some(&t.admin),
            Some(json!({"label": "one-too-many"})),
        )
        .await;
    assert_eq!((s, error_code(&v)), (StatusCode::CONFLICT, "conflict"));
    let (s, v) = t
        .call(
            "POST",
            &labels,
            Some(&t.admin),
            Some(json!({"label": "l5"})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "adding an existing label is no change: {v}"
    );
    let (s, v) = t
        .call("DELETE", &format!("{labels}/l5"), Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["labels"].as_array().unwrap().len(), 63);
    let (s, _) = t
        .call("DELETE", &format!("{labels}/l5"), Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = t
        .call(
            "POST",
            &labels,
            Some(&t.admin),
            Some(json!({"label": "one-too-many"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "room again after a delete");
    t.finish().await;
}

crate::backend_tests!(
    login_flood_is_bounded,
    password_guessing_backs_off,
    throttle_keys_on_the_socket_peer,
    secrets_are_private,
    service_tokens_cannot_forge_telemetry,
    hostile_window_is_a_400,
    accounts_can_be_shut_out,
    headers_and_input_hygiene,
);
