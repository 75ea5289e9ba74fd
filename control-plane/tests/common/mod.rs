//! Test harness: a control plane on a fresh SQLite file, or on a fresh PostgreSQL schema with a
//! fresh Redis key prefix, driven in-process through its router.
//!
//! PostgreSQL and Redis come from `HAIS_TEST_DATABASE_URL` / `HAIS_TEST_REDIS_URL` (defaults:
//! the local servers CI starts). When they are unreachable the tests fail: they never skip.

#![allow(dead_code)] // reason: each test binary uses a different subset of the helpers.

pub mod cluster;
pub mod quic;

use std::path::PathBuf;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hais_control_plane::{App, Config};
use hais_shared::event::{Fingerprint, FingerprintEvent, Flow, Transport};
use hais_shared::fingerprint::Method;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::Connection;
use tower::ServiceExt;

pub const ADMIN_PASSWORD: &str = "test-admin-password";
/// Known secret, so tests can forge expired and foreign tokens.
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// Declares the test file's `async fn name(backend: Backend)` scenarios as tests against both
/// backends, in modules `sqlite` and `postgres` (so `cargo test sqlite::` runs one backend).
/// Attributes written before a name (`#[ignore = "…"]`) apply to both of its tests.
#[macro_export]
macro_rules! backend_tests {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                $(#[$attr])*
                async fn $name() {
                    super::$name(super::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                $(#[$attr])*
                async fn $name() {
                    super::$name(super::common::Backend::Postgres).await
                }
            )*
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A TCP port nothing listens on now on loopback (the kernel's pick, so tests running side by
/// side get different ones).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn pg_url() -> String {
    std::env::var("HAIS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn redis_url() -> String {
    std::env::var("HAIS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique(tag: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let rnd = uuid::Uuid::now_v7().simple().to_string();
    format!("hais_test_{tag}_{secs}_{}", &rnd[20..])
}

/// Drops test schemas left behind by crashed runs more than an hour ago.
async fn sweep_old_schemas(conn: &mut sqlx::PgConnection) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'hais_test_%'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    for n in names {
        let secs = n
            .split('_')
            .rev()
            .nth(1)
            .and_then(|s| s.parse::<u64>().ok());
        if secs.is_some_and(|s| s + 3600 < now) {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {n} CASCADE"
            )))
            .execute(&mut *conn)
            .await;
        }
    }
}

/// Resources of one test that must be cleaned up afterwards.
#[derive(Debug, Clone)]
pub struct Isolation {
    pub backend: Backend,
    pub dir: PathBuf,
    pub schema: Option<String>,
    pub redis_prefix: Option<String>,
}

impl Isolation {
    pub async fn new(backend: Backend, tag: &str) -> Isolation {
        let dir = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&dir).unwrap();
        let (schema, redis_prefix) = match backend {
            Backend::Sqlite => (None, None),
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&pg_url())
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "PostgreSQL at {} is unreachable ({e}); start it (.ci/run does)",
                            pg_url()
                        )
                    });
                sweep_old_schemas(&mut conn).await;
                (Some(unique(tag)), Some(unique(tag)))
            }
        };
        Isolation {
            backend,
            dir,
            schema,
            redis_prefix,
        }
    }

    pub fn config(&self) -> Config {
        let mut c = Config {
            data_dir: self.dir.clone(),
            admin_password: Some(ADMIN_PASSWORD.into()),
            jwt_secret: Some(JWT_SECRET.into()),
            max_body_bytes: 1 << 20,
            max_batch_events: 2000,
            ..Config::default()
        };
        // Tests run side by side: the agents' UDP uplink takes any free loopback port.
        c.ja4.uplink_bind = Some("127.0.0.1:0".parse().unwrap());
        if self.backend == Backend::Postgres {
            c.database_url = Some(pg_url());
            c.database_schema = self.schema.clone();
            c.redis_url = Some(redis_url());
            c.redis_prefix = self.redis_prefix.clone().unwrap();
        }
        c
    }

    pub async fn cleanup(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(schema) = &self.schema {
            let mut conn = sqlx::PgConnection::connect(&pg_url()).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
        }
        if let Some(prefix) = &self.redis_prefix {
            let client = redis::Client::open(redis_url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: () = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
    }
}

/// A running control plane and an admin token.
#[derive(Debug)]
pub struct TestApp {
    pub app: Option<App>,
    pub router: Router,
    pub iso: Isolation,
    pub admin: String,
}

impl TestApp {
    /// A fresh join token (admin API), for enrolling an agent over the uplink.
    pub async fn join_token(&self) -> String {
        let (s, v) = self
            .call(
                "POST",
                "/api/spire/tokens",
                Some(&self.admin),
                Some(json!({"description": "test"})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    pub async fn start(backend: Backend, tag: &str) -> TestApp {
        let iso = Isolation::new(backend, tag).await;
        Self::start_with(iso.clone(), iso.config()).await
    }

    pub async fn start_with(iso: Isolation, config: Config) -> TestApp {
        let app = App::start(config)
            .await
            .unwrap_or_else(|e| panic!("control plane failed to start on {:?}: {e}", iso.backend));
        let router = app.router();
        let mut t = TestApp {
            app: Some(app),
            router,
            iso,
            admin: String::new(),
        };
        t.admin = t.login("admin", ADMIN_PASSWORD).await;
        t
    }

    pub async fn login(&self, user: &str, password: &str) -> String {
        let (s, v) = self
            .call(
                "POST",
                "/api/auth/login",
                None,
                Some(json!({"username": user, "password": password})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "login {user}: {v}");
        v["access_token"].as_str().unwrap().to_owned()
    }

    /// Sends a request; returns the status and the JSON body (Null when the body is not JSON).
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        self.send(req).await
    }

    /// [`TestApp::call`] as if from `ip` (the address the server would see on the socket).
    pub async fn call_from(
        &self,
        ip: &str,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, axum::http::HeaderMap) {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&v).unwrap()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let peer: std::net::SocketAddr = (ip.parse::<std::net::IpAddr>().unwrap(), 40000).into();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            headers,
        )
    }

    /// GET returning the raw text body (the bundle is PEM, metrics are Prometheus text).
    pub async fn get_text(&self, uri: &str, token: Option<&str>) -> (StatusCode, String) {
        let mut b = Request::builder().uri(uri);
        if let Some(token) = token {
            b = b.header("authorization", format!("Bearer {token}"));
        }
        let resp = self
            .router
            .clone()
            .oneshot(b.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn ingest(&self, events: &[FingerprintEvent]) -> Value {
        let (s, v) = self
            .call(
                "POST",
                "/api/ja4/ingest",
                Some(&self.admin),
                Some(json!({"events": events})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "ingest: {v}");
        v
    }

    /// Waits until the `search` consumer group has indexed every event stored so far: filtered
    /// event search trails ingest by that group's lag.
    pub async fn search_indexed(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (s, v) = self
                .call("GET", "/api/bus/consumers", Some(&self.admin), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{v}");
            let caught_up = v.as_array().unwrap().iter().any(|g| {
                g["group"] == "search" && g["topic"] == "fingerprint.events" && g["lag_items"] == 0
            });
            if caught_up {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the search group did not catch up in 60 s: {v}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn finish(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
        self.iso.cleanup().await;
    }
}

/// An event at `ts_offset_secs` from now (negative = past), with the given JA4 values.
pub fn event(
    agent: &str,
    host: &str,
    sni: Option<&str>,
    fps: &[(Method, &str)],
    ts_offset_secs: i64,
) -> FingerprintEvent {
    let mut e = FingerprintEvent::new(
        agent,
        host,
        Flow {
            src_ip: "10.1.2.3".parse().unwrap(),
            src_port: 50000,
            dst_ip: "192.0.2.10".parse().unwrap(),
            dst_port: 443,
            transport: Transport::Tcp,
        },
    );
    if ts_offset_secs != 0 {
        let ts = e.timestamp + time::Duration::seconds(ts_offset_secs);
        e.timestamp = ts;
        let secs = ts.unix_timestamp() as u64;
        e.id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            secs,
            ts.nanosecond(),
        ));
    }
    e.server_name = sni.map(str::to_owned);
    e.fingerprints = fps
        .iter()
        .map(|(m, v)| Fingerprint {
            method: *m,
            value: (*v).to_owned(),
        })
        .collect();
    e
}

/// Percent-encodes `s` for a query string or path segment (everything but unreserved bytes:
/// SPIFFE IDs and workload keys contain `/` and `:`).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `uri` (a list, or a page with `items`) until an item satisfies `pick` (30 s at most).
pub async fn poll_items(t: &TestApp, uri: &str, pick: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (s, v) = t.call("GET", uri, Some(&t.admin), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let items = v.get("items").unwrap_or(&v).as_array().unwrap().clone();
        if let Some(a) = items.into_iter().find(|a| pick(a)) {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never found in {uri}: {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub fn error_code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {v}"))
}

/// The operations of `/api/openapi.json` as (method, path).
pub async fn documented_operations(t: &TestApp) -> Vec<(String, String)> {
    let (s, doc) = t.call("GET", "/api/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.contains(&method.as_str()) {
                ops.push((method.clone(), path.clone()));
            }
        }
    }
    ops
}

/// The methods the API uses.
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// Checks the router against the OpenAPI document, paths taken from the document: every
/// documented operation reaches a handler (unauthenticated, so nothing changes: a 401, 415 or
/// 200, never the router's "no such route" 404 or its 405), and every other method on a
/// documented path is the router's 405. Returns how many operations were checked.
pub async fn assert_router_serves_document(t: &TestApp, prefix: &str) -> usize {
    let ops = documented_operations(t).await;
    let paths: std::collections::BTreeSet<&String> = ops
        .iter()
        .map(|(_, p)| p)
        .filter(|p| p.starts_with(prefix))
        .collect();
    assert!(!paths.is_empty(), "no documented path starts with {prefix}");
    for path in &paths {
        // Any value does for a path parameter: authentication is checked first.
        let uri = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x1" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in METHODS {
            let documented = ops.iter().any(|(m, p)| m == method && p == *path);
            let (s, v) = t.call(&method.to_ascii_uppercase(), &uri, None, None).await;
            let routed = !(s == StatusCode::METHOD_NOT_ALLOWED
                || (s == StatusCode::NOT_FOUND && v["error"]["message"] == "no such route"));
            assert_eq!(
                routed, documented,
                "{method} {path} (as {uri}): {s} {v}; documented: {documented}"
            );
        }
    }
    paths.len()
}
