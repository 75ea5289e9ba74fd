//! Receivers of the alert service's notifications on loopback, for tests: a webhook receiver
//! that verifies every signature, an SMTP sink, a syslog listener (octet-counted frames), an
//! RFC 5424 parser, and the Debian `prometheus-alertmanager` started on a free port.
//!
//! They are blocking (a thread per listener and connection) so that both the control plane's
//! async integration tests and the blocking end-to-end tests use the same receivers. They check
//! what they receive independently of the control plane's code (their own HMAC, their own
//! parsing), so a test through them can fail when the sender is wrong.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{KeyInit, Mac};
use serde_json::Value;

use crate::http::call;
use crate::proc::{Proc, free_tcp_port, wait_for};

/// How far a webhook's timestamp may be from now (replay protection on the receiver's side).
pub const MAX_SKEW_SECS: i64 = 300;

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `<timestamp>.<body>` under
/// `secret`, and `timestamp` (Unix seconds) within [`MAX_SKEW_SECS`] of now: what a receiver of
/// the alert service's webhooks checks.
pub fn signature_ok(secret: &str, timestamp: &str, signature: &str, body: &[u8]) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if (now - ts).abs() > MAX_SKEW_SECS {
        return false;
    }
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Runs `serve` on a thread for every connection accepted on a fresh loopback port.
fn listen(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let serve = serve.clone();
            std::thread::spawn(move || serve(conn));
        }
    });
    addr
}

/// What a [`webhook_sink`] received.
#[derive(Debug, Default)]
pub struct Webhooks {
    /// The bodies of the requests whose signature was right, with their lower-cased headers.
    pub accepted: Mutex<Vec<(BTreeMap<String, String>, Value)>>,
    /// Requests answered 400 (no, old or wrong signature; a body that is not JSON).
    pub rejected: AtomicU64,
}

impl Webhooks {
    /// The accepted bodies.
    pub fn bodies(&self) -> Vec<Value> {
        let got = self.accepted.lock().unwrap();
        got.iter().map(|(_, v)| v.clone()).collect()
    }
}

/// An HTTP/1.1 webhook receiver on loopback: any path, `POST` with `Content-Length`; answers
/// 204 and records the request when its `X-HaIS-Signature` verifies under `secret` with a
/// fresh `X-HaIS-Timestamp`, else 400.
pub fn webhook_sink(secret: &str) -> (SocketAddr, Arc<Webhooks>) {
    let got = Arc::new(Webhooks::default());
    let (state, secret) = (got.clone(), secret.to_owned());
    let addr = listen(move |conn| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let Ok(mut w) = conn.try_clone() else {
            return;
        };
        let mut r = BufReader::new(conn);
        let Some((headers, body)) = read_request(&mut r) else {
            return;
        };
        let h = |k: &str| headers.get(k).map(String::as_str).unwrap_or_default();
        let verified = signature_ok(&secret, h("x-hais-timestamp"), h("x-hais-signature"), &body);
        let status = match serde_json::from_slice::<Value>(&body) {
            Ok(v) if verified => {
                state.accepted.lock().unwrap().push((headers, v));
                "204 No Content"
            }
            _ => {
                state.rejected.fetch_add(1, Ordering::SeqCst);
                "400 Bad Request"
            }
        };
        let _ = write!(
            w,
            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    });
    (addr, got)
}

/// One HTTP/1.1 request: its lower-cased headers and its body (`Content-Length` bytes).
fn read_request(r: &mut impl BufRead) -> Option<(BTreeMap<String, String>, Vec<u8>)> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        r.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((headers, body))
}

/// Mails an [`smtp_sink`] received: the envelope's commands (MAIL, RCPT) and the data.
pub type Mails = Arc<Mutex<Vec<(Vec<String>, String)>>>;

/// A tiny SMTP server on loopback (no TLS, no auth): records each message's envelope and data.
pub fn smtp_sink() -> (SocketAddr, Mails) {
    let mails: Mails = Arc::default();
    let out = mails.clone();
    let addr = listen(move |conn| {
        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
        let Ok(mut w) = conn.try_clone() else {
            return;
        };
        let mut lines = BufReader::new(conn).lines();
        let _ = w.write_all(b"220 sink ESMTP\r\n");
        let mut envelope = Vec::new();
        while let Some(Ok(line)) = lines.next() {
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                "MAIL" | "RCPT" => {
                    envelope.push(line.clone());
                    b"250 OK\r\n"
                }
                "DATA" => {
                    let _ = w.write_all(b"354 go on\r\n");
                    let mut data = String::new();
                    for l in lines.by_ref() {
                        let Ok(l) = l else { return };
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
                    let _ = w.write_all(b"221 bye\r\n");
                    return;
                }
                _ => b"250 OK\r\n",
            };
            if w.write_all(reply).is_err() {
                return;
            }
        }
    });
    (addr, out)
}

/// Reads octet-counted syslog frames (`<length> <message>`, RFC 6587 over TCP, RFC 5425 over
/// TLS) until the stream ends; a malformed frame ends the reading.
pub fn read_frames(r: impl Read) -> Vec<String> {
    let mut r = BufReader::new(r);
    let mut out = Vec::new();
    loop {
        let mut len = Vec::new();
        match r.read_until(b' ', &mut len) {
            Ok(0) | Err(_) => return out,
            Ok(_) => {}
        }
        let Some(n) = std::str::from_utf8(&len[..len.len() - 1])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return out;
        };
        let mut msg = vec![0; n];
        if r.read_exact(&mut msg).is_err() {
            return out;
        }
        out.push(String::from_utf8_lossy(&msg).into_owned());
    }
}

/// Syslog messages a listener received, in order.
pub type Lines = Arc<Mutex<Vec<String>>>;

/// A syslog listener over TCP on loopback: octet-counted frames from every connection.
pub fn syslog_tcp_sink() -> (SocketAddr, Lines) {
    let lines: Lines = Arc::default();
    let out = lines.clone();
    let addr = listen(move |conn| {
        let frames = read_frames(conn);
        lines.lock().unwrap().extend(frames);
    });
    (addr, out)
}

/// An RFC 5424 message, split into its header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rfc5424 {
    pub pri: u32,
    pub timestamp: String,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
    pub msgid: String,
    pub structured_data: String,
    pub msg: String,
}

/// Parses `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG` (structured data `-`);
/// `None` if it is not such a message.
pub fn parse_rfc5424(s: &str) -> Option<Rfc5424> {
    let rest = s.strip_prefix('<')?;
    let (pri, rest) = rest.split_once('>')?;
    let pri: u32 = pri.parse().ok().filter(|p| *p <= 191)?;
    let f: Vec<&str> = rest.splitn(8, ' ').collect();
    if f.len() != 8 || f[0] != "1" || f[6] != "-" {
        return None;
    }
    Some(Rfc5424 {
        pri,
        timestamp: f[1].into(),
        hostname: f[2].into(),
        app_name: f[3].into(),
        procid: f[4].into(),
        msgid: f[5].into(),
        structured_data: f[6].into(),
        msg: f[7].into(),
    })
}

/// Where Debian's package puts Alertmanager.
pub const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// A real Alertmanager (Debian `prometheus-alertmanager`) on a free loopback port, with its
/// configuration and storage under a directory of the test; killed when dropped.
#[derive(Debug)]
pub struct Alertmanager {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    _proc: Proc,
}

impl Alertmanager {
    /// Starts it under `<dir>/alertmanager` and waits until it is ready; `None` (saying so)
    /// when the package is not installed.
    pub fn start(dir: &Path) -> Option<Alertmanager> {
        if !Path::new(ALERTMANAGER).exists() {
            eprintln!(
                "SKIPPED: {ALERTMANAGER} is not installed (apt-get install prometheus-alertmanager)"
            );
            return None;
        }
        let dir = dir.join("alertmanager");
        std::fs::create_dir_all(&dir).expect("Alertmanager's directory");
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n",
        )
        .expect("Alertmanager's configuration");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let mut cmd = std::process::Command::new(ALERTMANAGER);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=");
        let proc = Proc::spawn("alertmanager", cmd, &dir);
        wait_for("Alertmanager ready", Duration::from_secs(60), || {
            (call(addr, "GET", "/-/ready", None, None).0 == 200).then_some(())
        });
        Some(Alertmanager {
            addr,
            url: format!("http://{addr}"),
            _proc: proc,
        })
    }

    /// Its `GET /api/v2/alerts` (active alerts), empty if it does not answer.
    pub fn alerts(&self) -> Vec<Value> {
        match call(self.addr, "GET", "/api/v2/alerts", None, None) {
            (200, Value::Array(a)) => a,
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(b"k").unwrap();
        mac.update(format!("{now}.body").as_bytes());
        let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert!(signature_ok("k", &now, &sig, b"body"));
        assert!(!signature_ok("other", &now, &sig, b"body"));
        assert!(!signature_ok("k", &now, &sig, b"bodx"));
        assert!(!signature_ok("k", "100", &sig, b"body"));
        assert!(!signature_ok("k", &now, "sha256=zz", b"body"));
    }

    #[test]
    fn frames_and_headers_parse() {
        let m = "<83>1 2026-12-08T01:00:00Z h hais-alert - firing - {\"a\": 1}";
        let framed = format!("{} {m}{} {m}", m.len(), m.len());
        let frames = read_frames(framed.as_bytes());
        assert_eq!(frames, [m, m]);
        let p = parse_rfc5424(m).unwrap();
        assert_eq!((p.pri, p.app_name.as_str()), (83, "hais-alert"));
        assert_eq!(p.msg, "{\"a\": 1}");
        assert!(parse_rfc5424("<83>2 x").is_none());
        assert!(read_frames("12 short".as_bytes()).is_empty());
    }
}
