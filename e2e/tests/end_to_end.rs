//! The product end to end on loopback: the real control plane (embedded SQLite), a real agent
//! enrolled with a join token and capturing on `lo`, real servers (openssl s_server, Python's
//! http.server, sshd) and real clients (curl, openssl s_client, ssh). Every fingerprint the agent
//! computed for those connections must be stored in the control plane and found through its API.
//!
//! Needs root (capture on `lo`, sshd) and openssl, curl, python3, openssh-server/client; without
//! capture rights the test says so and passes vacuously (CI runs it as root). The alert test
//! also needs the Debian `prometheus-alertmanager`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use hais_e2e::cluster::{Agent, ControlPlane, can_capture};
use hais_e2e::proc::{Proc, free_tcp_port, wait_for};
use hais_e2e::sinks;
use serde_json::{Value, json};

fn run_ok(dir: &Path, cmd: &mut Command) -> String {
    let out = cmd.current_dir(dir).output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_listening(port: u16) {
    wait_for(
        &format!("a listener on {port}"),
        Duration::from_secs(20),
        || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        },
    );
}

/// Starts openssl s_server (TLS 1.3), http.server and sshd; returns their ports and processes.
fn servers(dir: &Path) -> ([u16; 3], Vec<Proc>) {
    run_ok(
        dir,
        Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=hais.test",
            "-keyout",
            "tls.key",
            "-out",
            "tls.pem",
        ]),
    );
    run_ok(
        dir,
        Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f", "host_key"]),
    );
    std::fs::write(
        dir.join("sshd_config"),
        format!(
            "ListenAddress 127.0.0.1\nPidFile {}/sshd.pid\nStrictModes no\nUsePAM no\n",
            dir.display()
        ),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let (tls, http, ssh) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let mut procs = Vec::new();
    let mut c = Command::new("openssl");
    c.args(["s_server", "-www", "-accept", &format!("127.0.0.1:{tls}")])
        .args(["-cert", "tls.pem", "-key", "tls.key"])
        .current_dir(dir);
    procs.push(Proc::spawn("s_server", c, dir));
    let mut c = Command::new("python3");
    c.args([
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        &http.to_string(),
    ])
    .current_dir(dir);
    procs.push(Proc::spawn("http_server", c, dir));
    let mut c = Command::new("/usr/sbin/sshd");
    c.args(["-D", "-e", "-p", &ssh.to_string(), "-f"])
        .arg(dir.join("sshd_config"))
        .arg("-h")
        .arg(dir.join("host_key"));
    procs.push(Proc::spawn("sshd", c, dir));
    for p in [tls, http, ssh] {
        wait_listening(p);
    }
    ([tls, http, ssh], procs)
}

/// Real clients, one connection each (curl twice: TLS and plain HTTP).
fn clients(dir: &Path, [tls, http, ssh]: [u16; 3]) {
    let curl = |url: String| {
        Command::new("curl")
            .args(["-s", "-k", "-o", "/dev/null", "--max-time", "8", &url])
            .status()
            .unwrap()
    };
    assert!(curl(format!("https://127.0.0.1:{tls}/")).success());
    assert!(curl(format!("http://127.0.0.1:{http}/")).success());
    s_client(dir, tls);
    // No credentials: the key exchange happens, authentication fails.
    let _ = Command::new("ssh")
        .args(["-F", "/dev/null", "-p", &ssh.to_string()])
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .args(["nobody@127.0.0.1", "true"])
        .output()
        .unwrap();
}

/// One TLS handshake by `openssl s_client` (it exits when its input ends).
fn s_client(dir: &Path, tls: u16) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{tls}"),
            "-servername",
            "hais.test",
        ])
        .stdin(std::process::Stdio::null())
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "s_client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `(method, value)` of every fingerprint in the agent's printed records for streams to `ports`.
fn printed_fingerprints(records: &Path, ports: &[u16]) -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(records).unwrap_or_default();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let dst = v["dst_port"].as_u64().unwrap_or(0) as u16;
        if ports.contains(&dst) {
            collect(&v, &mut out);
        }
    }
    out
}

/// Fingerprint fields anywhere in a record (JA4H sits in `http[]`, JA4SSH in `ssh[]`, ...).
fn collect(v: &Value, out: &mut BTreeSet<(String, String)>) {
    const METHODS: [&str; 8] = [
        "ja4", "ja4s", "ja4h", "ja4ssh", "ja4t", "ja4ts", "ja4l", "ja4ls",
    ];
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                match x {
                    Value::String(s) if METHODS.contains(&k.as_str()) => {
                        out.insert((k.clone(), s.clone()));
                    }
                    Value::Array(a) if METHODS.contains(&k.as_str()) => {
                        for s in a.iter().filter_map(Value::as_str) {
                            out.insert((k.clone(), s.to_owned()));
                        }
                    }
                    _ => collect(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        _ => {}
    }
}

#[test]
fn real_clients_fingerprints_reach_the_control_plane() {
    if !can_capture() {
        eprintln!("skipped: capturing on lo needs root or CAP_NET_RAW");
        return;
    }
    let dir = std::env::temp_dir().join(format!("hais-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let cp = ControlPlane::start(&dir.join("cp"), &[]);
    let mut agent = Agent::new(&dir.join("agent"));
    let (ok, out) = agent.enroll(cp.uplink, &cp.token());
    assert!(ok, "enroll: {out}");
    assert!(out.contains("spiffe://hais.local/hais/agent/"), "{out}");

    let (ports, _servers) = servers(&dir);
    let bpf = ports
        .iter()
        .map(|p| format!("tcp port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let records = dir.join("records.jsonl");
    agent.run(
        cp.uplink,
        &[
            "-i",
            "lo",
            "--bpf",
            &bpf,
            "--idle-timeout",
            "2",
            "--json",
            "-o",
            records.to_str().unwrap(),
        ],
    );
    wait_for(
        "the agent's uplink to connect",
        Duration::from_secs(30),
        || {
            let s = agent.status()?;
            (s["uplink"]["state"] == "connected").then_some(())
        },
    );

    clients(&dir, ports);

    // The agent prints each stream when it ends (idle timeout 2 s).
    let expected = wait_for("the agent's records", Duration::from_secs(30), || {
        let fps = printed_fingerprints(&records, &ports);
        let methods: BTreeSet<&str> = fps.iter().map(|(m, _)| m.as_str()).collect();
        ["ja4", "ja4s", "ja4h", "ja4ssh", "ja4t"]
            .iter()
            .all(|m| methods.contains(m))
            .then_some(fps)
    });
    // Sanity of what the clients presented.
    let ja4: Vec<&String> = expected
        .iter()
        .filter(|(m, _)| m == "ja4")
        .map(|(_, v)| v)
        .collect();
    assert!(
        ja4.iter().all(|v| v.starts_with("t13")),
        "TLS 1.3 clients: {ja4:?}"
    );
    assert!(
        expected
            .iter()
            .any(|(m, v)| m == "ja4h" && v.starts_with("ge11")),
        "curl's plain GET: {expected:?}"
    );

    // Every one of them is stored and searchable.
    let token = cp.login();
    for (method, value) in &expected {
        let path = format!("/api/ja4/fingerprints/{method}/{value}");
        let detail = wait_for(
            &format!("{method} {value} in the control plane"),
            Duration::from_secs(30),
            || {
                let (st, body) = cp.get(&token, &path);
                (st == 200).then_some(body)
            },
        );
        assert!(detail.to_string().contains(&agent_host()), "{detail}");
    }
    let st = agent.status().unwrap();
    assert_eq!(st["uplink"]["events_rejected"], 0, "{st}");
    assert!(st["uplink"]["events_stored"].as_u64().unwrap() >= 4, "{st}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every workload of the inventory (all pages are one: the test host runs a handful).
fn workloads(cp: &ControlPlane, token: &str, query: &str) -> Vec<Value> {
    let (st, v) = cp.get(
        token,
        &format!("/api/identity/workloads?limit=1000&{query}"),
    );
    assert_eq!(st, 200, "{v}");
    v["items"].as_array().unwrap().clone()
}

/// With no registration entry, curl's workload is discovered with its executable and JA4, and
/// its events are found by that JA4; an entry made from the workload names it and its next
/// events; a template names every other host process without any entry.
#[test]
fn workloads_are_discovered_then_named_by_an_entry_and_a_template() {
    if !can_capture() {
        eprintln!("skipped: capturing on lo needs root or CAP_NET_RAW");
        return;
    }
    let dir = std::env::temp_dir().join(format!("hais-e2e-wl-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cp = ControlPlane::start(&dir.join("cp"), &[]);
    let ([tls, http, _], _servers) = servers(&dir);
    let _agent = agent_on_lo(&dir, &cp, &format!("tcp port {tls} or tcp port {http}"));
    // Two transfers half a second apart: curl lives long enough for the agent to read its
    // executable from /proc (a process gone by then is named by the kernel tracer alone).
    let curl = |url: String| {
        let ok = Command::new("curl")
            .args(["-s", "-k", "--max-time", "8", "--rate", "2/s"])
            .args(["-o", "/dev/null", &url, "-o", "/dev/null", &url])
            .status()
            .unwrap()
            .success();
        assert!(ok, "curl {url}");
    };
    curl(format!("https://127.0.0.1:{tls}/"));
    let token = cp.login();

    // Discovered: the executable path and the JA4, before any entry exists.
    let w = wait_for("curl's workload", Duration::from_secs(30), || {
        workloads(&cp, &token, "q=curl").into_iter().find(|w| {
            w["facts"]["workload"]["exe"]
                .as_str()
                .is_some_and(|e| e.ends_with("/curl"))
                && w["methods"].get("ja4").is_some()
        })
    });
    let key = w["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("host:{}:", agent_host())), "{key}");
    assert_eq!(w.get("spiffe_id"), None, "{w}");
    let (st, detail) = cp.get(&token, &format!("/api/identity/workloads/{key}"));
    assert_eq!(st, 200, "{detail}");
    let ja4 = detail["fingerprints"]["ja4"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ja4.starts_with("t13"), "{ja4}");
    let (st, fp) = cp.get(&token, &format!("/api/ja4/fingerprints/ja4/{ja4}"));
    assert_eq!(st, 200, "{fp}");
    assert!(fp["workloads"].to_string().contains(&key), "{fp}");
    // The events API finds curl's events by that JA4, with their workload and no identity
    // (once the `search` group has indexed them: filtered search trails ingest a little).
    let first = wait_for("curl's events by its JA4", Duration::from_secs(30), || {
        let (st, found) = cp.get(&token, &format!("/api/ja4/events?method=ja4&value={ja4}"));
        assert_eq!(st, 200, "{found}");
        found["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["workload_key"] == key.as_str())
            .cloned()
    });
    assert!(first["identity"].is_null(), "{first}");
    assert_eq!(first["flow"]["dst_port"], tls, "{first}");
    let (st, one) = cp.get(
        &token,
        &format!("/api/ja4/events/{}", first["id"].as_str().unwrap()),
    );
    assert_eq!((st, &one), (200, &first));

    // An entry from the workload: the inventory shows it, and curl's next events carry it.
    let spiffe = "spiffe://hais.local/e2e/curl";
    let (st, entry) = cp.post(
        &token,
        "/api/identity/entries/from-workload",
        &serde_json::json!({"workload": key, "spiffe_id": spiffe}),
    );
    assert_eq!(st, 201, "{entry}");
    wait_for(
        "the entry in the inventory",
        Duration::from_secs(20),
        || {
            workloads(&cp, &token, "resolved=true")
                .iter()
                .any(|w| w["key"] == key.as_str() && w["spiffe_id"] == spiffe)
                .then_some(())
        },
    );
    curl(format!("https://127.0.0.1:{tls}/"));
    wait_for("curl's next event named", Duration::from_secs(30), || {
        let (st, v) = cp.get(&token, &format!("/api/identity/identities/{spiffe}"));
        (st == 200 && v["count"].as_i64() >= Some(1)).then_some(())
    });
    // …and the events API finds them by that identity, with the same workload key.
    let named = wait_for("curl's events by identity", Duration::from_secs(30), || {
        let (st, named) = cp.get(
            &token,
            &format!("/api/ja4/events?identity={spiffe}&limit=5"),
        );
        assert_eq!(st, 200, "{named}");
        let named = named["items"].as_array().unwrap().clone();
        (!named.is_empty()).then_some(named)
    });
    assert!(
        named
            .iter()
            .all(|e| e["workload_key"] == key.as_str() && e["identity"] == spiffe)
    );

    // A template names every other host process (openssl's s_client here) without any entry,
    // at once in the inventory and on its next events; the entry still names curl.
    s_client(&dir, tls);
    wait_for("openssl's workload", Duration::from_secs(30), || {
        workloads(&cp, &token, "q=openssl")
            .into_iter()
            .next()
            .map(|_| ())
    });
    let (st, t) = cp.post(
        &token,
        "/api/identity/templates",
        &serde_json::json!({"pattern": "spiffe://{td}/host/{host}/{process}"}),
    );
    assert_eq!(st, 201, "{t}");
    let all = wait_for("every workload named", Duration::from_secs(30), || {
        let all = workloads(&cp, &token, "");
        all.iter()
            .all(|w| w.get("spiffe_id").is_some())
            .then_some(all)
    });
    let prefix = format!("spiffe://hais.local/host/{}/", agent_host());
    for w in &all {
        let id = w["spiffe_id"].as_str().unwrap();
        if w["key"] == key.as_str() {
            assert_eq!(id, spiffe, "the entry wins over the template");
        } else {
            assert!(id.starts_with(&prefix), "{w}");
            assert!(
                w["resolved_by"].as_str().unwrap().starts_with("template:"),
                "{w}"
            );
        }
    }
    let openssl = all
        .iter()
        .find(|w| w["key"].as_str().unwrap().contains("openssl"))
        .unwrap()["spiffe_id"]
        .as_str()
        .unwrap()
        .to_owned();
    s_client(&dir, tls);
    wait_for(
        "openssl's next event named",
        Duration::from_secs(30),
        || {
            let (st, v) = cp.get(&token, &format!("/api/identity/identities/{openssl}"));
            (st == 200 && v["count"].as_i64() >= Some(1)).then_some(())
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An agent enrolled at `cp` with a join token, capturing on `lo` what `bpf` lets through
/// (flows end after 1 s idle), once its uplink is connected.
fn agent_on_lo(dir: &Path, cp: &ControlPlane, bpf: &str) -> Agent {
    let mut agent = Agent::new(&dir.join("agent"));
    let (ok, out) = agent.enroll(cp.uplink, &cp.token());
    assert!(ok, "enroll: {out}");
    agent.run(
        cp.uplink,
        &["-i", "lo", "--bpf", bpf, "--idle-timeout", "1"],
    );
    wait_for("the agent's uplink", Duration::from_secs(30), || {
        (agent.status()?["uplink"]["state"] == "connected").then_some(())
    });
    agent
}

/// `prog` run as user and group nobody (65534), so a registration entry on that uid names
/// every client of the test and nothing else (the servers run as root).
fn as_nobody(prog: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", prog]);
    c
}

/// One curl process making `n` TLS connections to `url`: the first a full handshake, the next
/// ones resuming its TLS 1.3 session from curl's session cache (s_server -www closes each
/// connection after its answer).
fn curl_as_nobody(url: &str, n: usize) {
    let mut c = as_nobody("/usr/bin/curl");
    c.args(["-s", "-k", "--max-time", "8"]);
    for _ in 0..n {
        c.args(["-o", "/dev/null", url]);
    }
    assert!(c.status().unwrap().success(), "curl {url}");
}

/// The scenario for the correlation service, first half: curl connections under one
/// identity during a short learning period, then curl connections resuming their TLS 1.3
/// session (another plain JA4 and JA4S, the same resumption-stable keys): no finding.
#[test]
fn correlation_raises_nothing_for_resumed_sessions() {
    correlation_scenario(false);
}

/// Second half: a Python client under the same identity afterwards gives exactly one
/// new-fingerprint finding, naming Python's JA4.
#[test]
fn correlation_finds_a_python_client() {
    correlation_scenario(true);
}

/// The identity every client of the correlation tests runs under (uid 65534): in namespace
/// `e2e`, so that Alertmanager gets a `namespace` label too.
const CLIENTS: &str = "spiffe://hais.local/ns/e2e/sa/clients";

/// A control plane (learning: 3 s and 3 flows), an agent on `lo`, s_server, and an entry naming
/// every process of uid 65534, whose baseline curl has established.
struct Learnt {
    dir: std::path::PathBuf,
    cp: ControlPlane,
    _agent: Agent,
    _servers: Vec<Proc>,
    token: String,
    tls: u16,
    url: String,
}

impl Learnt {
    /// Sets it all up under a fresh directory named after `tag`; `None` (saying so) without
    /// capture rights.
    fn start(tag: &str) -> Option<Learnt> {
        if !can_capture() {
            eprintln!("skipped: capturing on lo needs root or CAP_NET_RAW");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("hais-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cp = ControlPlane::start(
            &dir.join("cp"),
            &[
                ("HAIS_CORRELATION_LEARNING_PERIOD", "3s"),
                ("HAIS_CORRELATION_LEARNING_MIN_FLOWS", "3"),
            ],
        );
        let ([tls, _, _], servers) = servers(&dir);
        let agent = agent_on_lo(&dir, &cp, &format!("tcp port {tls}"));
        let token = cp.login();
        let (st, entry) = cp.post(
            &token,
            "/api/identity/entries",
            &serde_json::json!({"spiffe_id": CLIENTS, "selectors": ["unix:uid:65534"]}),
        );
        assert_eq!(st, 201, "{entry}");
        let l = Learnt {
            dir,
            cp,
            _agent: agent,
            _servers: servers,
            token,
            tls,
            url: format!("https://127.0.0.1:{tls}/"),
        };
        // Learning: three curl processes, three full handshakes.
        for _ in 0..3 {
            curl_as_nobody(&l.url, 1);
        }
        let b = l.baseline("three flows learnt", &|b| b["flows"].as_u64() >= Some(3));
        assert_eq!(b["state"], "learning", "{b}");
        // The learning period (3 s of the flows' own time) passes; the next flow establishes it.
        let since_us = b["since_us"].as_i64().unwrap();
        wait_for("the learning period", Duration::from_secs(30), || {
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as i64;
            (now_us > since_us + 3_500_000).then_some(())
        });
        curl_as_nobody(&l.url, 1);
        l.baseline("established", &|b| b["state"] == "established");
        Some(l)
    }

    /// The clients' baseline once `done` holds (polled for up to 60 s).
    fn baseline(&self, what: &str, done: &dyn Fn(&Value) -> bool) -> Value {
        let path = format!(
            "/api/correlation/baselines/{}",
            CLIENTS.replace(':', "%3A").replace('/', "%2F")
        );
        wait_for(what, Duration::from_secs(60), || {
            let (st, b) = self.cp.get(&self.token, &path);
            (st == 200 && done(&b)).then_some(b)
        })
    }

    /// The correlation findings, once `done` holds (polled for up to 60 s).
    fn findings(&self, what: &str, done: &dyn Fn(&[Value]) -> bool) -> Vec<Value> {
        wait_for(what, Duration::from_secs(60), || {
            let (st, v) = self.cp.get(&self.token, "/api/correlation/findings");
            assert_eq!(st, 200, "{v}");
            let items = v["items"].as_array().unwrap().clone();
            done(&items).then_some(items)
        })
    }
}

impl Drop for Learnt {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs the scenario (see the two tests).
fn correlation_scenario(with_python: bool) {
    let Some(l) = Learnt::start(&format!("corr-{with_python}")) else {
        return;
    };
    let (cp, token, url, dir) = (&l.cp, &l.token, &l.url, &l.dir);

    // Resumption: one curl process, three connections, two of them resumed.
    curl_as_nobody(url, 3);
    // Every flow judged (seven), none a finding; curl's resumed sessions presented another
    // plain JA4 under the one stable key.
    let b = l.baseline("every curl flow judged", &|b| {
        b["flows"].as_u64() >= Some(7)
    });
    let ja4 = b["fingerprints"]["ja4"].as_array().unwrap();
    assert_eq!(ja4.len(), 1, "curl's one stable JA4: {b}");
    assert!(
        ja4[0]["values"].as_array().unwrap().len() >= 2,
        "curl's resumed sessions presented another plain JA4 under the same stable one: {b}"
    );
    let (st, v) = cp.get(token, "/api/correlation/findings");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["items"], serde_json::json!([]), "no finding: {b}");
    if !with_python {
        return;
    }

    // Python's client.
    // A script file, not `-c`: its command line stays one printable line. It lingers after its
    // request, so the agent reads its executable and user from /proc.
    let script = dir.join("client.py");
    std::fs::write(
        &script,
        "import ssl, sys, time, urllib.request\n\
         c = ssl.create_default_context()\n\
         c.check_hostname = False\n\
         c.verify_mode = ssl.CERT_NONE\n\
         urllib.request.urlopen(sys.argv[1], context=c, timeout=8).read()\n\
         time.sleep(1.5)\n",
    )
    .unwrap();
    let ok = as_nobody("/usr/bin/python3")
        .arg(&script)
        .arg(url)
        .status()
        .unwrap()
        .success();
    assert!(ok, "python client");

    // The identity's events are judged in order: once Python's flow is, curl's were.
    let findings = l.findings("Python's finding", &|f| {
        f.iter().any(|f| f["method"] == "ja4")
    });
    let b = l.baseline("Python's JA4 in the baseline", &|_| true);
    let ja4 = b["fingerprints"]["ja4"].as_array().unwrap();
    let learnt: Vec<&Value> = ja4.iter().filter(|e| e["accepted"] == true).collect();
    let new: Vec<&Value> = ja4.iter().filter(|e| e["accepted"] == false).collect();
    assert_eq!(learnt.len(), 1, "curl's one stable JA4: {b}");
    assert_eq!(new.len(), 1, "Python's JA4: {b}");
    assert_eq!(findings.len(), 1, "exactly one finding: {findings:?} {b}");
    let f = &findings[0];
    assert_eq!(f["detector"], "new-fingerprint", "{f}");
    assert_eq!(f["identity"], CLIENTS, "{f}");
    assert_eq!(f["method"], "ja4", "{f}");
    assert_eq!(f["fingerprint"], new[0]["fingerprint"], "{f}");
    let python_ja4 = new[0]["values"][0].as_str().unwrap();
    assert!(f["summary"].as_str().unwrap().contains(python_ja4), "{f}");
    // And that JA4 is the Python process's, as the inventory shows it.
    let w = wait_for("Python's workload", Duration::from_secs(30), || {
        workloads(cp, token, "q=python").into_iter().next()
    });
    let (st, detail) = cp.get(
        token,
        &format!("/api/identity/workloads/{}", w["key"].as_str().unwrap()),
    );
    assert_eq!(st, 200, "{detail}");
    assert_eq!(
        detail["fingerprints"]["ja4"][0]["value"], python_ja4,
        "{detail}"
    );
}

/// The webhook channel's HMAC key.
const HOOK_SECRET: &str = "e2e-webhook-secret-0123456789";

/// The "done when" for the alert service: after curl established the clients'
/// baseline, `openssl s_client` under the same identity (no ALPN, an SNI: a JA4 curl never
/// presented) gives one new-fingerprint finding, which becomes ONE alert, delivered once to
/// each of: a webhook receiver verifying its HMAC signature, a real Alertmanager (Debian
/// `prometheus-alertmanager`, the alert in its `GET /api/v2/alerts` with the labels the issue
/// names), a syslog collector (RFC 5424 over TCP, OCSF Detection Finding JSON) and an SMTP
/// server.
#[test]
fn correlation_finding_is_one_alert_on_every_channel() {
    let Some(l) = Learnt::start("alert") else {
        return;
    };
    let am = sinks::Alertmanager::start(&l.dir)
        .expect("prometheus-alertmanager is installed (.ci/run installs it)");
    let (hook, hooks) = sinks::webhook_sink(HOOK_SECRET);
    let (syslog, lines) = sinks::syslog_tcp_sink();
    let (smtp, mails) = sinks::smtp_sink();
    for channel in [
        json!({"name": "hook", "kind": "webhook", "secret": HOOK_SECRET,
               "settings": {"url": format!("http://{hook}/hais")}}),
        json!({"name": "am", "kind": "alertmanager", "settings": {"url": am.url}}),
        json!({"name": "siem", "kind": "syslog",
               "settings": {"address": syslog.to_string(), "transport": "tcp"}}),
        json!({"name": "mail", "kind": "email", "settings": {
            "host": "127.0.0.1", "port": smtp.port(), "tls": "none",
            "from": "HaIS <hais@example.org>", "to": ["soc@example.org"]}}),
    ] {
        let (st, v) = l.cp.post(&l.token, "/api/alert/channels", &channel);
        assert_eq!(st, 201, "{v}");
    }

    // Another client program under the same identity. It stays connected (`-ign_eof`: the
    // end of its input does not end it) until the finding is there, so the agent attributes
    // its flow from /proc while it runs.
    let mut c = as_nobody("/usr/bin/openssl");
    c.args(["s_client", "-connect", &format!("127.0.0.1:{}", l.tls)])
        .args(["-servername", "hais.test", "-ign_eof"]);
    let client = Proc::spawn("s_client_nobody", c, &l.dir);
    let findings = l.findings("s_client's finding", &|f| {
        f.iter().any(|f| f["method"] == "ja4")
    });
    drop(client);
    assert_eq!(findings.len(), 1, "exactly one finding: {findings:?}");
    let f = &findings[0];
    assert_eq!(f["detector"], "new-fingerprint", "{f}");
    assert_eq!(f["identity"], CLIENTS, "{f}");

    // One alert for it.
    let alert = wait_for("the alert", Duration::from_secs(60), || {
        let (st, v) = l.cp.get(&l.token, "/api/alert/alerts");
        assert_eq!(st, 200, "{v}");
        v["items"].as_array().unwrap().first().cloned()
    });
    let (_, v) = l.cp.get(&l.token, "/api/alert/alerts");
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "one alert: {v}");
    let id = alert["id"].as_str().unwrap().to_owned();
    assert_eq!(alert["source"], "correlation", "{alert}");
    assert_eq!(alert["rule"], "new-fingerprint", "{alert}");
    assert_eq!(alert["identity"], CLIENTS, "{alert}");
    assert_eq!(alert["status"], "open", "{alert}");
    assert_eq!(alert["fingerprint"], f["fingerprint"], "{alert}");
    let severity = alert["severity"].as_str().unwrap().to_owned();

    // Every channel delivered (nothing pending, no failure).
    wait_for("every channel delivered", Duration::from_secs(60), || {
        let (st, v) = l.cp.get(&l.token, "/api/alert/channels");
        assert_eq!(st, 200, "{v}");
        v.as_array()?
            .iter()
            .all(|c| c["health"]["pending"] == 0 && c["health"]["delivered"] == 1)
            .then_some(())
    });

    // (a) The webhook: one signed notification (the receiver verified the HMAC and the
    // timestamp, and refused nothing).
    let bodies = hooks.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(hooks.rejected.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(bodies[0]["kind"], "firing");
    assert_eq!(bodies[0]["alert"]["id"], id.as_str());
    assert_eq!(bodies[0]["alert"]["fingerprint"], f["fingerprint"]);

    // (b) Alertmanager shows it, with the labels the issue names.
    let in_am = wait_for("the alert in Alertmanager", Duration::from_secs(60), || {
        am.alerts()
            .into_iter()
            .find(|a| a["labels"]["alert_id"] == id.as_str())
    });
    let labels = &in_am["labels"];
    assert_eq!(labels["spiffe_id"], CLIENTS, "{in_am}");
    assert_eq!(labels["namespace"], "e2e", "{in_am}");
    assert_eq!(labels["detector"], "new-fingerprint", "{in_am}");
    assert_eq!(labels["severity"], severity.as_str(), "{in_am}");
    assert_eq!(in_am["status"]["state"], "active", "{in_am}");
    assert_eq!(am.alerts().len(), 1);

    // (c) The syslog collector: one RFC 5424 message carrying an OCSF Detection Finding.
    let got = lines.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let m = sinks::parse_rfc5424(&got[0]).unwrap_or_else(|| panic!("RFC 5424: {}", got[0]));
    assert_eq!(
        (m.app_name.as_str(), m.msgid.as_str()),
        ("hais-alert", "firing")
    );
    let ocsf: Value = serde_json::from_str(&m.msg).unwrap();
    assert_eq!(ocsf["class_uid"], 2004, "{ocsf}");
    assert_eq!(ocsf["finding_info"]["uid"], id.as_str(), "{ocsf}");
    assert_eq!(ocsf["resources"][0]["uid"], CLIENTS, "{ocsf}");

    // (d) The SMTP server: one mail to the recipient, naming the identity.
    let got = mails.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let (envelope, data) = &got[0];
    assert!(
        envelope.iter().any(|l| l.contains("soc@example.org")),
        "{envelope:?}"
    );
    assert!(data.contains(&format!("identity: {CLIENTS}")), "{data}");
    assert!(data.contains(&format!("alert: {id}")), "{data}");
}

fn agent_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// The policy service's scenario with the real agent: a policy forbidding one identity TLS
/// client stacks whose JA4 section a starts `t13` fires on a live curl flow (the violation
/// stored with its explanation, published, an open alert); a malformed set is refused with its
/// line and column and the active version stays; a dry-run of a draft over the stored flows
/// reports what would change and raises nothing.
#[test]
fn a_policy_fires_on_a_live_curl_flow() {
    if !can_capture() {
        eprintln!("skipped: capturing on lo needs root or CAP_NET_RAW");
        return;
    }
    let dir = std::env::temp_dir().join(format!("hais-e2e-policy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cp = ControlPlane::start(&dir.join("cp"), &[]);
    let ([tls, _, _], _servers) = servers(&dir);
    let _agent = agent_on_lo(&dir, &cp, &format!("tcp port {tls}"));
    let token = cp.login();
    let spiffe = "spiffe://hais.local/e2e/policy-clients";
    let (st, entry) = cp.post(
        &token,
        "/api/identity/entries",
        &json!({"spiffe_id": spiffe, "selectors": ["unix:uid:65534"]}),
    );
    assert_eq!(st, 201, "{entry}");
    let put = |text: &str| {
        hais_e2e::http::call(
            cp.api,
            "PUT",
            "/api/policy/policies",
            Some(&token),
            Some(&json!({"policies": text})),
        )
    };
    let set = format!(
        "@id(\"base\") permit(principal, action, resource);\n\
         @id(\"no-t13-stacks\") @severity(\"high\")\n\
         forbid(principal == Workload::\"{spiffe}\", action == Action::\"tls\", resource)\n\
         when {{ context has ja4_a && context.ja4_a like \"t13*\" }};\n"
    );
    let (st, v) = put(&set);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"], 1, "{v}");

    curl_as_nobody(&format!("https://127.0.0.1:{tls}/"), 1);
    let path = format!(
        "/api/policy/decisions?identity={}",
        spiffe.replace(':', "%3A").replace('/', "%2F")
    );
    let d = wait_for("curl's violation", Duration::from_secs(60), || {
        let (st, v) = cp.get(&token, &path);
        assert_eq!(st, 200, "{v}");
        v["items"].as_array()?.first().cloned()
    });
    assert_eq!(
        (
            d["rule"].as_str(),
            d["outcome"].as_str(),
            d["severity"].as_str()
        ),
        (Some("no-t13-stacks"), Some("deny"), Some("high")),
        "{d}"
    );
    assert_eq!(d["destination"], format!("127.0.0.1:{tls}"), "{d}");
    let ja4_a = d["decision"]["policies"][0]["fields"]["context.ja4_a"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        ja4_a.starts_with("t13"),
        "explained by the section it read: {d}"
    );
    let alerts = |cp: &ControlPlane| {
        let (st, v) = cp.get(&token, "/api/alert/alerts?limit=100");
        assert_eq!(st, 200, "{v}");
        v["items"].as_array().cloned().unwrap_or_default()
    };
    let alert = wait_for("the violation's alert", Duration::from_secs(60), || {
        alerts(&cp)
            .into_iter()
            .find(|a| a["rule"] == "no-t13-stacks")
    });
    assert_eq!(
        (alert["source"].as_str(), alert["status"].as_str()),
        (Some("policy"), Some("open")),
        "{alert}"
    );

    // A malformed set: refused with its line and column, version 1 stays active.
    let (st, v) = put("permit(principal, action, resource);\nforbid(principal action, resource);");
    assert_eq!(st, 400, "{v}");
    assert!(v.to_string().contains(":2:"), "line 2 named: {v}");
    let (st, v) = cp.get(&token, "/api/policy/policies");
    assert_eq!((st, v["version"].as_i64()), (200, Some(1)), "{v}");

    // A draft without the rule, over the stored flows: curl's violation would go away;
    // nothing is stored or alerted.
    let draft = "@id(\"base\") permit(principal, action, resource);";
    let before = alerts(&cp).len();
    let (st, v) = cp.post(
        &token,
        "/api/policy/dry-run",
        &json!({"policies": draft, "from": "2000-01-01T00:00:00Z"}),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["events"].as_u64() >= Some(1), "{v}");
    assert!(v["resolved_violations"].as_u64() >= Some(1), "{v}");
    assert_eq!(v["identities"][0]["identity"], spiffe, "{v}");
    let (st, decisions) = cp.get(&token, "/api/policy/decisions");
    assert_eq!(st, 200);
    assert_eq!(
        decisions["items"].as_array().map(Vec::len),
        Some(1),
        "{decisions}"
    );
    assert_eq!(alerts(&cp).len(), before);
    let _ = std::fs::remove_dir_all(&dir);
}
