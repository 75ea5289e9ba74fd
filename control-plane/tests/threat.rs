//! The threat service on both backends, with real parts: feeds of every format served from files
//! and from an HTTP server on loopback (corrupted rows included), the shipped FoxIO mapping,
//! events judged by exact, section and combination rules, a threat match becoming an open alert
//! read through the alert API, country and ASN from a real MMDB and ASN CSV fetched from the npm
//! registry (`scripts/fetch-geo.sh`), and an exported Suricata dataset loaded by Suricata.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use common::{Backend, TestApp, enc, error_code, event, poll_items};
use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Go's TLS client (the library Sliver is written with): benign alone in FoxIO's mapping.
const GO_JA4: &str = "t13d190900_9dc949149365_97f8aa674fd9";
/// Sliver's server, which with the Go JA4 makes FoxIO's "Sliver Agent" row.
const SLIVER_JA4S: &str = "t130200_1301_a56c5b993250";
const CHROME_JA4: &str = "t13d1516h2_8daaf6152771_02713d6af862";

/// A minimal HTTP/1.1 server on loopback serving `files` (path → body; 404 otherwise), one
/// request per connection. The bodies can be changed while it runs.
struct Files {
    url: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Files {
    async fn start() -> Files {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let served = files.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let files = served.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    let body = files.lock().unwrap().get(&path).cloned();
                    let (status, body) = match body {
                        Some(b) => ("200 OK", b),
                        None => ("404 Not Found", b"no such file".to_vec()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Files { url, files, task }
    }

    fn put(&self, path: &str, body: &[u8]) -> String {
        self.files
            .lock()
            .unwrap()
            .insert(path.to_owned(), body.to_vec());
        format!("{}{path}", self.url)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn shipped_mapping() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/ja4plus-mapping.csv")).unwrap()
}

async fn create_feed(t: &TestApp, spec: Value) -> Value {
    let (s, v) = t
        .call("POST", "/api/threat/feeds", Some(&t.admin), Some(spec))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

/// A feed's last import: rows imported, rows refused.
fn rows(f: &Value) -> (Option<i64>, Option<i64>) {
    (f["rows_ok"].as_i64(), f["rows_bad"].as_i64())
}

async fn indicators(t: &TestApp, query: &str) -> Vec<Value> {
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/threat/indicators?limit=1000&{query}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["items"].as_array().unwrap().clone()
}

async fn feeds_import_every_format_with_bad_rows(backend: Backend) {
    let t = TestApp::start(backend, "threat_feeds").await;
    let files = Files::start().await;

    // The shipped FoxIO mapping is imported at start: one of its rows is malformed (a JA4H
    // whose third section is a character short).
    let (s, foxio) = t
        .call("GET", "/api/threat/feeds/foxio", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{foxio}");
    assert_eq!(foxio["rows_bad"], 1, "{foxio}");
    assert!(foxio["rows_ok"].as_i64().unwrap() >= 60, "{foxio}");
    assert_eq!(foxio["errors"][0]["row"], 31, "{foxio}");
    assert_eq!(foxio["licence"], "FoxIO License 1.1");

    // FoxIO CSV from a file, with a corrupted row appended.
    let mut csv = shipped_mapping();
    csv.extend_from_slice(b"Broken,,,,t13d1516h2_nothex_02713d6af862,,,,,,\n");
    let path = t.iso.dir.join("mapping.csv");
    std::fs::write(&path, &csv).unwrap();
    let f = create_feed(
        &t,
        json!({"name": "foxio-file", "format": "foxio-csv", "location": path, "verdict": "malicious"}),
    )
    .await;
    assert_eq!(
        (f["rows_ok"].clone(), f["rows_bad"].clone()),
        (foxio["rows_ok"].clone(), json!(2)),
        "{f}"
    );
    assert_eq!(f["indicators"], foxio["indicators"]);

    // A Spamhaus-DROP-style list over HTTP: 3 good lines, 2 bad.
    let url = files.put(
        "/drop.txt",
        b"; Spamhaus DROP List\n198.51.100.0/24 ; SBL1\n203.0.113.7\n10.0.0.1/8 ; host bits\n# comment\nnot-an-ip\n2001:db8:bad::/48\n",
    );
    let f = create_feed(
        &t,
        json!({"name": "drop", "format": "ip-list", "location": url, "interval_secs": 3600,
               "source": "test DROP", "licence": "test"}),
    )
    .await;
    assert_eq!(rows(&f), (Some(3), Some(2)), "{f}");
    assert_eq!(f["errors"].as_array().unwrap().len(), 2, "{f}");
    assert!(f["last_refresh_us"].as_i64().is_some());
    let drop_before = indicators(&t, "feed=drop").await;
    assert_eq!(drop_before.len(), 3);

    // JA4DB JSON: the raw JA4 is hashed again; a tampered hash is a bad row.
    let raw = "t13d1516h2_002f,0035,009c_0005,000a,000b_0403,0804";
    let (a, rest) = raw.split_once('_').unwrap();
    let (ciphers, ext) = rest.split_once('_').unwrap();
    let good = format!(
        "{a}_{}_{}",
        hais_ja4::hash12(ciphers),
        hais_ja4::hash12(ext)
    );
    let ja4db = json!([
        {"application": "Test App", "ja4_fingerprint": good, "ja4_fingerprint_string": raw},
        {"application": "Tampered", "ja4_fingerprint": CHROME_JA4, "ja4_fingerprint_string": raw},
        {"application": "Empty"},
        "not an object"
    ]);
    let path = t.iso.dir.join("ja4db.json");
    std::fs::write(&path, ja4db.to_string()).unwrap();
    let f = create_feed(
        &t,
        json!({"name": "ja4db", "format": "ja4db-json", "location": path}),
    )
    .await;
    assert_eq!(rows(&f), (Some(1), Some(3)), "{f}");
    let got = indicators(&t, "feed=ja4db").await;
    assert_eq!(got[0]["value"], good);

    // abuse.ch SSLBL JA3 CSV over HTTP.
    let url = files.put(
        "/ja3.csv",
        b"################\n# ja3_md5,Firstseen,Lastseen,Listingreason\nb386946a5a44d1ddcc843bc75336dfce,2017-07-14 18:08:15,2019-07-27 20:42:54,Dridex\n1aa7bf8b97e540ca5edd75f7b8384bfa,2017-07-14 18:08:15,2019-07-27 20:42:54,TrickBot\nzz,2017-07-14 18:08:15,2019-07-27 20:42:54,Bad\n",
    );
    let f = create_feed(
        &t,
        json!({"name": "sslbl", "format": "sslbl-ja3-csv", "location": url}),
    )
    .await;
    assert_eq!(rows(&f), (Some(2), Some(1)), "{f}");
    let got = indicators(&t, "feed=sslbl&method=ja3").await;
    assert_eq!(got.len(), 2);

    // ThreatFox export: ip:port and domain kept, a URL skipped, a bad address counted.
    let tf = json!({
        "1": [{"ioc_value": "192.0.2.66:8443", "ioc_type": "ip:port", "malware_printable": "Cobalt Strike", "confidence_level": 100}],
        "2": [{"ioc_value": "c2.bad.example", "ioc_type": "domain", "malware_printable": "Qakbot", "confidence_level": 75}],
        "3": [{"ioc_value": "https://bad.example/x", "ioc_type": "url"}],
        "4": [{"ioc_value": "300.1.1.1:80", "ioc_type": "ip:port"}]
    });
    let path = t.iso.dir.join("threatfox.json");
    std::fs::write(&path, tf.to_string()).unwrap();
    let f = create_feed(
        &t,
        json!({"name": "threatfox", "format": "threatfox-json", "location": path}),
    )
    .await;
    assert_eq!(
        (
            f["rows_ok"].as_i64(),
            f["rows_bad"].as_i64(),
            f["rows_skipped"].as_i64()
        ),
        (Some(2), Some(1), Some(1)),
        "{f}"
    );

    // MISP event with ja4-plus objects (one good combination, one bad fingerprint).
    let misp = json!({"response": [{"Event": {"info": "test", "Object": [
        {"name": "ja4-plus", "Attribute": [
            {"object_relation": "ja4", "value": GO_JA4},
            {"object_relation": "ja4s", "value": SLIVER_JA4S},
            {"object_relation": "description", "value": "Sliver"}]},
        {"name": "ja4-plus", "Attribute": [{"object_relation": "ja4x", "value": "0000_bad"}]}
    ]}}]});
    let url = files.put("/misp.json", misp.to_string().as_bytes());
    let f = create_feed(
        &t,
        json!({"name": "misp", "format": "misp-json", "location": url}),
    )
    .await;
    assert_eq!(rows(&f), (Some(1), Some(1)), "{f}");

    // Refresh: the list changed. Kept indicators keep their id; the dropped one is gone.
    files.put("/drop.txt", b"198.51.100.0/24\n192.0.2.0/25\n");
    let (s, f) = t
        .call(
            "POST",
            "/api/threat/feeds/drop/refresh",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{f}");
    assert_eq!(
        (
            f["rows_ok"].as_i64(),
            f["rows_bad"].as_i64(),
            f["indicators"].as_i64()
        ),
        (Some(2), Some(0), Some(2))
    );
    let after = indicators(&t, "feed=drop").await;
    let id_of = |list: &[Value], v: &str| {
        list.iter()
            .find(|i| i["value"] == v)
            .map(|i| i["id"].clone())
    };
    assert_eq!(
        id_of(&after, "198.51.100.0/24"),
        id_of(&drop_before, "198.51.100.0/24")
    );
    assert!(id_of(&after, "203.0.113.7/32").is_none());
    assert!(id_of(&after, "192.0.2.0/25").is_some());

    // A feed that cannot be fetched keeps its indicators and says why.
    files.files.lock().unwrap().remove("/drop.txt");
    let (s, v) = t
        .call(
            "POST",
            "/api/threat/feeds/drop/refresh",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(error_code(&v), "bad_gateway");
    let (_, f) = t
        .call("GET", "/api/threat/feeds/drop", Some(&t.admin), None)
        .await;
    assert!(f["last_error"].as_str().unwrap().contains("404"), "{f}");
    assert_eq!(indicators(&t, "feed=drop").await.len(), 2);

    // Lookups: the address is in a listed network; the fingerprint's labels and combinations.
    let (s, v) = t
        .call(
            "GET",
            "/api/threat/lookup?ip=198.51.100.20",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["verdict"], "malicious", "{v}");
    assert_eq!(v["indicators"][0]["value"], "198.51.100.0/24");
    let (s, v) = t
        .call(
            "GET",
            &format!("/api/threat/lookup?fingerprint={GO_JA4}"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["method"], "ja4");
    assert_eq!(
        v["verdict"], "benign",
        "a Go client alone is not Sliver: {v}"
    );
    assert!(
        v["combinations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["labels"]["application"] == "Sliver Agent"),
        "{v}"
    );

    // Search by prefix, filters, expiry.
    let hits = indicators(&t, "prefix=t13d190900&kind=fingerprint").await;
    assert!(
        hits.iter()
            .all(|i| i["value"].as_str().unwrap().starts_with("t13d190900"))
    );
    let id = hits[0]["id"].as_str().unwrap().to_owned();
    let (s, v) = t
        .call(
            "POST",
            &format!("/api/threat/indicators/{id}/expire"),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["expires_us"].as_i64().is_some());
    assert!(
        !indicators(&t, "prefix=t13d190900&kind=fingerprint")
            .await
            .iter()
            .any(|i| i["id"] == id.as_str())
    );
    assert!(
        indicators(
            &t,
            "prefix=t13d190900&kind=fingerprint&include_expired=true"
        )
        .await
        .iter()
        .any(|i| i["id"] == id.as_str())
    );

    // Errors are 4xx JSON.
    for (method, uri, body) in [
        (
            "POST",
            "/api/threat/feeds",
            json!({"name": "x y", "format": "ip-list", "location": "/tmp/x"}),
        ),
        (
            "POST",
            "/api/threat/feeds",
            json!({"name": "drop", "format": "ip-list", "location": "/tmp/x"}),
        ),
        (
            "POST",
            "/api/threat/feeds",
            json!({"name": "z", "format": "csv", "location": "/tmp/x"}),
        ),
        (
            "POST",
            "/api/threat/indicators",
            json!({"indicators": [{"kind": "fingerprint", "method": "ja4", "value": "t13d_bad", "verdict": "malicious"}]}),
        ),
        (
            "POST",
            "/api/threat/indicators",
            json!({"indicators": [{"kind": "ip", "value": "10.0.0.1/8", "verdict": "malicious"}]}),
        ),
        ("GET", "/api/threat/lookup?ip=999.1.1.1", Value::Null),
        ("GET", "/api/threat/lookup", Value::Null),
        ("GET", "/api/threat/indicators/not-a-uuid", Value::Null),
        ("GET", "/api/threat/feeds/nope", Value::Null),
        ("GET", "/api/threat/export?format=pdf", Value::Null),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = t.call(method, uri, Some(&t.admin), body).await;
        assert!(s.is_client_error(), "{method} {uri}: {s} {v}");
        assert!(v["error"]["code"].is_string(), "{method} {uri}: {v}");
    }
    let (s, _) = t.call("GET", "/api/threat/feeds", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Deleting a feed takes its indicators.
    let (s, _) = t
        .call("DELETE", "/api/threat/feeds/sslbl", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(indicators(&t, "feed=sslbl").await.is_empty());
    t.finish().await;
}

/// Polls `uri` until `pick` finds something in its `items` (the consumers are asynchronous).
fn flow(host: &str, fps: &[(Method, &str)], dst: &str) -> FingerprintEvent {
    let mut e = event("agent-1", host, Some("api.example"), fps, -5);
    e.flow.dst_ip = dst.parse().unwrap();
    e.workload.direction = Some("outbound".into());
    e
}

async fn matches_become_alerts(backend: Backend) {
    let t = TestApp::start(backend, "threat_match").await;
    // A section rule (JA4 a+c, any cipher list) and an address, added by an analyst.
    let (s, v) = t
        .call(
            "POST",
            "/api/threat/indicators",
            Some(&t.admin),
            Some(json!({"indicators": [
                {"kind": "fingerprint", "method": "ja4", "value": "t13d1516h2_*_e5627efa2ab1",
                 "verdict": "suspicious", "labels": {"application": "odd client"}},
                {"kind": "ip", "value": "203.0.113.0/24", "verdict": "malicious",
                 "labels": {"malware_family": "test botnet"}, "confidence": 90}
            ]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v[0]["sections"], json!(["a", "c"]), "{v}");

    // The Go library alone (benign in FoxIO's mapping), then with Sliver's JA4S; a section
    // match; a listed destination; and a Chrome flow that matches nothing.
    t.ingest(&[
        flow("go-01", &[(Method::Ja4, GO_JA4)], "192.0.2.10"),
        flow(
            "implant-01",
            &[(Method::Ja4, GO_JA4), (Method::Ja4s, SLIVER_JA4S)],
            "192.0.2.11",
        ),
        flow(
            "odd-01",
            &[(Method::Ja4, "t13d1516h2_123456789abc_e5627efa2ab1")],
            "192.0.2.12",
        ),
        flow("bot-01", &[(Method::Ja4, CHROME_JA4)], "203.0.113.9"),
        flow("chrome-01", &[(Method::Ja4, CHROME_JA4)], "192.0.2.13"),
    ])
    .await;

    // The combination became an open alert, read through the alert API.
    let alert = poll_items(&t, "/api/alert/alerts?limit=100", |a| {
        a["source"] == "threat" && a["summary"].as_str().unwrap_or_default().contains("Sliver")
    })
    .await;
    assert_eq!(
        (
            alert["status"].as_str(),
            alert["rule"].as_str(),
            alert["severity"].as_str()
        ),
        (Some("open"), Some("foxio"), Some("high")),
        "{alert}"
    );
    assert!(
        alert["identity"].as_str().unwrap().contains("implant-01"),
        "{alert}"
    );
    assert_eq!(
        alert["fingerprint"],
        format!("ja4={GO_JA4}+ja4s={SLIVER_JA4S}"),
        "{alert}"
    );
    let odd = poll_items(&t, "/api/alert/alerts?limit=100", |a| {
        a["source"] == "threat"
            && a["identity"]
                .as_str()
                .unwrap_or_default()
                .contains("odd-01")
    })
    .await;
    assert_eq!(odd["severity"], "medium", "{odd}");
    let bot = poll_items(&t, "/api/alert/alerts?limit=100", |a| {
        a["source"] == "threat"
            && a["identity"]
                .as_str()
                .unwrap_or_default()
                .contains("bot-01")
    })
    .await;
    assert_eq!(bot["destination"], "203.0.113.9:443", "{bot}");

    // Nothing for the Go client alone nor for Chrome, once every event was judged.
    let matches = poll_items(&t, "/api/threat/matches?limit=100", |m| {
        m["identity"]
            .as_str()
            .unwrap_or_default()
            .contains("bot-01")
    })
    .await;
    assert_eq!(matches["source"], "threat");
    let (_, all) = t
        .call("GET", "/api/threat/matches?limit=100", Some(&t.admin), None)
        .await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(!all.iter().any(|m| {
        let id = m["identity"].as_str().unwrap_or_default();
        id.contains("go-01") || id.contains("chrome-01")
    }));

    // The same flow again: the same match and alert, counted twice.
    t.ingest(&[flow(
        "implant-01",
        &[(Method::Ja4, GO_JA4), (Method::Ja4s, SLIVER_JA4S)],
        "192.0.2.11",
    )])
    .await;
    let again = poll_items(&t, "/api/alert/alerts?limit=100", |a| {
        a["id"] == alert["id"] && a["count"].as_u64() == Some(2)
    })
    .await;
    assert_eq!(again["status"], "open");

    // Every event counted on the map (no country database configured: country "").
    let (s, v) = t.call("GET", "/api/threat/map", Some(&t.admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["countries"][0]["country"], "", "{v}");
    assert_eq!(v["countries"][0]["events"], 6, "{v}");
    t.finish().await;
}

/// The geolocation files, fetched once per target directory by the project's script.
fn geo_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| if d.is_absolute() { d } else { root.join(d) })
        .unwrap_or_else(|| root.join("target"))
        .join("geo");
    static FETCH: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = FETCH.lock().unwrap();
    if !dir.join("iptoasn-country.mmdb").exists() {
        let out = std::process::Command::new(root.join("scripts/fetch-geo.sh"))
            .arg(&dir)
            .output()
            .expect("running scripts/fetch-geo.sh");
        assert!(
            out.status.success(),
            "scripts/fetch-geo.sh failed (it needs npm and the npm registry): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

async fn geolocation_from_a_real_mmdb(backend: Backend) {
    let dir = geo_dir();
    let iso = common::Isolation::new(backend, "threat_geo").await;
    let mut c = iso.config();
    c.threat.country_db = Some(dir.join("iptoasn-country.mmdb"));
    c.threat.asn_db = vec![dir.join("asn-ipv4.csv"), dir.join("asn-ipv6.csv")];
    c.threat.foxio_mapping = hais_control_plane::config::OnOff(false);
    let t = TestApp::start_with(iso.clone(), c).await;
    let (s, feeds) = t
        .call("GET", "/api/threat/feeds", Some(&t.admin), None)
        .await;
    assert_eq!(
        (s, feeds),
        (StatusCode::OK, json!([])),
        "foxio_mapping = off imports nothing"
    );

    // Quad9's resolver: US, AS19281; Cloudflare's over IPv6: AS13335.
    let (s, v) = t
        .call("GET", "/api/threat/lookup?ip=9.9.9.9", Some(&t.admin), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["place"]["country"], "US", "{v}");
    assert_eq!(v["place"]["asn"], 19281, "{v}");
    assert!(v.get("verdict").is_none(), "{v}");
    let (_, v) = t
        .call(
            "GET",
            &format!("/api/threat/lookup?ip={}", enc("2606:4700:4700::1111")),
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(v["place"]["asn"], 13335, "{v}");
    assert!(v["place"]["country"].is_string(), "{v}");
    let (_, v) = t
        .call(
            "GET",
            "/api/threat/lookup?ip=10.1.2.3",
            Some(&t.admin),
            None,
        )
        .await;
    assert!(
        v["place"].get("country").is_none(),
        "private addresses have no country: {v}"
    );

    // Events to 9.9.9.9 from two identities count for the US on the map.
    t.ingest(&[
        flow("a-01", &[(Method::Ja4, CHROME_JA4)], "9.9.9.9"),
        flow("b-01", &[(Method::Ja4, CHROME_JA4)], "9.9.9.9"),
        flow("b-01", &[(Method::Ja4, CHROME_JA4)], "9.9.9.10"),
        flow("b-01", &[(Method::Ja4, CHROME_JA4)], "10.9.9.9"),
    ])
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = t.call("GET", "/api/threat/map", Some(&t.admin), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let us = v["countries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["country"] == "US")
            .cloned();
        let unknown = v["countries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["country"] == "")
            .cloned();
        if let (Some(us), Some(unknown)) = (us, unknown) {
            assert_eq!(
                (us["events"].as_i64(), us["identities"].as_i64()),
                (Some(3), Some(2)),
                "{v}"
            );
            assert_eq!(unknown["events"], 1, "{v}");
            assert!(v["attribution"].as_str().unwrap().contains("CC BY 4.0"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "map never filled: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = t
        .call(
            "GET",
            "/api/threat/map?since=yesterday",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    t.finish().await;
}

/// Runs `suricata -T` on `rules`; its exit status and output.
fn suricata_test(rules: &Path, log: &Path) -> (bool, String) {
    let out = std::process::Command::new("suricata")
        .arg("-T")
        .arg("-S")
        .arg(rules)
        .arg("-l")
        .arg(log)
        .args(["--set", "app-layer.protocols.tls.ja4-fingerprints=yes"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "suricata is needed (bookworm-backports, JA4 support from 7.0.6; .ci/run \
                 installs it): {e}"
            )
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn suricata_loads_the_exported_dataset(backend: Backend) {
    let t = TestApp::start(backend, "threat_suricata").await;
    // An analyst's exact JA4 beside FoxIO's malicious rows.
    let (s, v) = t
        .call(
            "POST",
            "/api/threat/indicators",
            Some(&t.admin),
            Some(json!({"indicators": [{"kind": "fingerprint", "method": "ja4", "value": CHROME_JA4, "verdict": "suspicious"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, dataset) = t
        .get_text("/api/threat/export?format=suricata-dataset", Some(&t.admin))
        .await;
    assert_eq!(s, StatusCode::OK, "{dataset}");
    use base64::Engine as _;
    let values: Vec<String> = dataset
        .lines()
        .map(|l| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(l).unwrap()).unwrap()
        })
        .collect();
    assert!(values.contains(&CHROME_JA4.to_owned()), "{values:?}");
    // FoxIO's malicious rows are combinations: their Go JA4 alone would flag every Go client.
    assert!(!values.contains(&GO_JA4.to_owned()), "{values:?}");
    let (s, rules) = t
        .get_text(
            "/api/threat/export?format=suricata-rules&dataset_file=hais-ja4.lst",
            Some(&t.admin),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{rules}");

    let dir = t.iso.dir.join("suricata");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hais-ja4.lst"), &dataset).unwrap();
    std::fs::write(dir.join("hais.rules"), &rules).unwrap();
    let (ok, out) = suricata_test(&dir.join("hais.rules"), &dir);
    assert!(ok, "suricata refused the export: {out}");
    // The check has teeth: a corrupted dataset is refused.
    std::fs::write(dir.join("hais-ja4.lst"), format!("{dataset}not base64!\n")).unwrap();
    let (ok, out) = suricata_test(&dir.join("hais.rules"), &dir);
    assert!(!ok, "suricata accepted a corrupted dataset: {out}");

    // Zeek Intel and MISP exports of the same store.
    let (s, zeek) = t
        .get_text(
            "/api/threat/export?format=zeek-intel&feed=manual",
            Some(&t.admin),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        zeek.starts_with("#fields\tindicator\tindicator_type\tmeta.source\tmeta.desc\n"),
        "{zeek}"
    );
    let (s, misp) = t
        .call(
            "GET",
            "/api/threat/export?format=misp&feed=foxio&verdict=malicious",
            Some(&t.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{misp}");
    assert!(
        misp["Event"]["Object"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["name"] == "ja4-plus"),
        "{misp}"
    );
    t.finish().await;
}

async fn the_router_serves_the_documented_threat_api(backend: Backend) {
    let t = TestApp::start(backend, "threat_doc").await;
    assert!(common::assert_router_serves_document(&t, "/api/threat/").await >= 10);
    t.finish().await;
}

backend_tests!(
    feeds_import_every_format_with_bad_rows,
    matches_become_alerts,
    geolocation_from_a_real_mmdb,
    suricata_loads_the_exported_dataset,
    the_router_serves_the_documented_threat_api,
);
