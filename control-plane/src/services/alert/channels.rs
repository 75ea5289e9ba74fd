//! The notification channels: what each kind's settings are, what it sends, and how.
//!
//! * `webhook`: `POST` of `{"version":1,"kind":"firing"|"resolved","notification":…,"alert":…}`
//!   with `X-HaIS-Timestamp` (Unix seconds) and `X-HaIS-Signature: sha256=<hex>`, the
//!   HMAC-SHA256 of `<timestamp>.<body>` under the channel's secret ([`sign`]); a receiver
//!   rejects old timestamps (replays) and deduplicates on `X-HaIS-Notification` (delivery is
//!   at least once).
//! * `slack`: `POST {"text": …}` to a Slack-compatible incoming webhook.
//! * `alertmanager`: `POST <url>/api/v2/alerts` with labels `alertname`, `spiffe_id`,
//!   `namespace`, `detector`, `severity`, `source`, `identity`, `alert_id`; `endsAt` once
//!   resolved. Alertmanager forgets a firing alert after its `resolve_timeout`, so active alerts
//!   are re-sent periodically ([`super::deliver::spawn_resender`]).
//! * `syslog`: RFC 5424 messages over UDP, TCP (octet counting, RFC 6587) or TLS (RFC 5425,
//!   the collector's certificate checked against the channel's CA and server name) whose message
//!   is an OCSF Detection Finding (class 2004) as JSON ([`ocsf`]), for SIEMs.
//! * `email`: one plain-text mail per notification over SMTP (`lettre`), STARTTLS required
//!   unless the settings say `"tls": "none"` (a local relay), with the secret as password.

use std::sync::Arc;
use std::time::Duration;

use hais_shared::detection::Severity;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::AsyncWriteExt;

use crate::http::client::{Outgoing, roots_from_pem, send, tls_client_config};
use crate::store::alert::{AlertRecord, ChannelKind, Notification, NotificationKind};

/// How long one delivery may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the HTTP channels (`webhook`, `slack`, `alertmanager`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// `http://` or `https://` (web PKI). For `alertmanager`, its base URL
    /// (`http://alertmanager:9093`).
    pub url: String,
}

/// How syslog messages travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    #[default]
    Udp,
    /// Octet counting (RFC 6587).
    Tcp,
    /// RFC 5425: octet counting over TLS (rustls, ring), the collector's certificate checked
    /// against `ca` (else the web PKI) for `server_name` (else the address's host).
    Tls,
}

/// Settings of a `syslog` channel.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyslogSettings {
    /// `host:port` of the collector.
    pub address: String,
    #[serde(default)]
    pub transport: SyslogTransport,
    /// Syslog facility, 0 to 23 (default 10, security/authorization).
    #[serde(default = "default_facility")]
    pub facility: u8,
    /// `tls` only: the CA certificate(s), PEM, the collector's certificate must chain to;
    /// none: the web PKI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// `tls` only: the DNS name or IP address the collector's certificate must carry; none:
    /// the host of `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl SyslogSettings {
    /// The TLS client configuration and the name to check, for `tls` (`None` otherwise).
    fn tls(
        &self,
    ) -> Result<
        Option<(
            Arc<rustls::ClientConfig>,
            rustls::pki_types::ServerName<'static>,
        )>,
        String,
    > {
        if self.transport != SyslogTransport::Tls {
            if self.ca.is_some() || self.server_name.is_some() {
                return Err("settings.ca and settings.server_name need transport tls".into());
            }
            return Ok(None);
        }
        let roots = self
            .ca
            .as_deref()
            .map(roots_from_pem)
            .transpose()
            .map_err(|e| format!("settings.ca: {e}"))?;
        let config = tls_client_config(roots).map_err(|e| format!("TLS: {e}"))?;
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let (host, _) = self.address.rsplit_once(':').unwrap_or_default();
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned()
            }
        };
        let name = rustls::pki_types::ServerName::try_from(name)
            .map_err(|e| format!("settings.server_name: {e}"))?;
        Ok(Some((config, name)))
    }
}

fn default_facility() -> u8 {
    10
}

/// Whether SMTP must be encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// STARTTLS (web PKI), refused if the server does not offer it.
    #[default]
    Starttls,
    /// Plain text: only for a relay on the same host or network.
    None,
}

/// Settings of an `email` channel.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// The SMTP server.
    pub host: String,
    /// Default 587 (submission).
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    #[serde(default)]
    pub tls: SmtpTls,
    /// The sender, `hais@example.org` or `HaIS <hais@example.org>`.
    pub from: String,
    /// 1 to 50 recipients.
    pub to: Vec<String>,
    /// Logs in with this user and the channel's secret as password.
    pub username: Option<String>,
}

fn default_smtp_port() -> u16 {
    587
}

/// Checks a channel's settings (and secret) for its kind; returns them normalized.
pub fn check_settings(
    kind: ChannelKind,
    settings: &Value,
    secret: Option<&str>,
) -> Result<Value, String> {
    let bad = |e: serde_json::Error| format!("settings of a {} channel: {e}", kind.as_str());
    let normalized = match kind {
        ChannelKind::Webhook | ChannelKind::Slack | ChannelKind::Alertmanager => {
            let s: HttpSettings = serde_json::from_value(settings.clone()).map_err(bad)?;
            let uri: hyper::Uri = s.url.parse().map_err(|e| format!("settings.url: {e}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err("settings.url must be an http:// or https:// URL".into());
            }
            if s.url.len() > 2048 {
                return Err("settings.url: at most 2048 bytes".into());
            }
            serde_json::to_value(s).map_err(bad)?
        }
        ChannelKind::Syslog => {
            let s: SyslogSettings = serde_json::from_value(settings.clone()).map_err(bad)?;
            let ok = s
                .address
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok || s.address.len() > 255 {
                return Err("settings.address must be host:port".into());
            }
            if s.facility > 23 {
                return Err("settings.facility must be 0 to 23".into());
            }
            s.tls()?;
            serde_json::to_value(s).map_err(bad)?
        }
        ChannelKind::Email => {
            let s: EmailSettings = serde_json::from_value(settings.clone()).map_err(bad)?;
            if s.host.is_empty() || s.host.len() > 255 || s.port == 0 {
                return Err("settings.host and settings.port must name an SMTP server".into());
            }
            s.from
                .parse::<lettre::message::Mailbox>()
                .map_err(|e| format!("settings.from: {e}"))?;
            if s.to.is_empty() || s.to.len() > 50 {
                return Err("settings.to: 1 to 50 recipients".into());
            }
            for to in &s.to {
                to.parse::<lettre::message::Mailbox>()
                    .map_err(|e| format!("settings.to {to:?}: {e}"))?;
            }
            if secret.is_some() && s.username.is_none() {
                return Err("a secret (the SMTP password) needs settings.username".into());
            }
            serde_json::to_value(s).map_err(bad)?
        }
    };
    match (kind, secret) {
        (ChannelKind::Webhook, Some(s)) if s.len() < 16 || s.len() > 1024 => {
            Err("secret: 16 to 1024 bytes".into())
        }
        (ChannelKind::Webhook | ChannelKind::Email, _) => Ok(normalized),
        (_, Some(_)) => Err(format!("a {} channel takes no secret", kind.as_str())),
        (_, None) => Ok(normalized),
    }
}

/// `sha256=<hex>`: the HMAC-SHA256 of `<timestamp>.<body>` under `secret`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// How a delivery of several notifications ended: the first `delivered` went through; then,
/// if any, the error that stopped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub delivered: usize,
    pub error: Option<String>,
}

/// Delivers `batch`, in order, through a channel of `kind`; stops at the first failure.
pub async fn deliver(
    kind: ChannelKind,
    settings: &Value,
    secret: Option<&str>,
    batch: &[Notification],
) -> Delivered {
    match kind {
        ChannelKind::Alertmanager => {
            let Ok(s) = serde_json::from_value::<HttpSettings>(settings.clone()) else {
                return failed(0, "stored settings do not decode");
            };
            let alerts: Vec<Value> = batch
                .iter()
                .map(|n| alertmanager_alert(&n.alert, n.kind))
                .collect();
            match post_alertmanager(&s.url, &alerts).await {
                Ok(()) => Delivered {
                    delivered: batch.len(),
                    error: None,
                },
                Err(e) => failed(0, &e),
            }
        }
        ChannelKind::Syslog => {
            let Ok(s) = serde_json::from_value::<SyslogSettings>(settings.clone()) else {
                return failed(0, "stored settings do not decode");
            };
            let messages: Vec<String> = batch
                .iter()
                .map(|n| syslog_message(&s, &n.alert, n.kind, &n.id))
                .collect();
            match tokio::time::timeout(DELIVERY_TIMEOUT, send_syslog(&s, &messages)).await {
                Ok(Ok(())) => Delivered {
                    delivered: batch.len(),
                    error: None,
                },
                Ok(Err(e)) => failed(0, &format!("syslog {}: {e}", s.address)),
                Err(_) => failed(0, &format!("syslog {}: timed out", s.address)),
            }
        }
        ChannelKind::Email => {
            let Ok(s) = serde_json::from_value::<EmailSettings>(settings.clone()) else {
                return failed(0, "stored settings do not decode");
            };
            send_mails(&s, secret, batch).await
        }
        ChannelKind::Webhook | ChannelKind::Slack => {
            let Ok(s) = serde_json::from_value::<HttpSettings>(settings.clone()) else {
                return failed(0, "stored settings do not decode");
            };
            for (i, n) in batch.iter().enumerate() {
                let result = if kind == ChannelKind::Webhook {
                    post_webhook(&s.url, secret, n).await
                } else {
                    post_json(&s.url, &slack_message(&n.alert, n.kind), Vec::new()).await
                };
                if let Err(e) = result {
                    return failed(i, &e);
                }
            }
            Delivered {
                delivered: batch.len(),
                error: None,
            }
        }
    }
}

fn failed(delivered: usize, e: &str) -> Delivered {
    Delivered {
        delivered,
        error: Some(e.to_owned()),
    }
}

/// POSTs JSON; any 2xx answer is a delivery.
async fn post_json(
    url: &str,
    body: &Value,
    headers: Vec<(&'static str, String)>,
) -> Result<(), String> {
    post_bytes(url, serde_json::to_vec(body).unwrap_or_default(), headers).await
}

async fn post_bytes(
    url: &str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
) -> Result<(), String> {
    let mut req = Outgoing::post(url, "application/json", body);
    req.headers.extend(headers);
    req.timeout = DELIVERY_TIMEOUT;
    req.max_response = 64 * 1024;
    let (status, answer) = send(req).await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        let answer = String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
        Err(format!("{url}: HTTP {status} {answer}"))
    }
}

/// The body of a webhook notification.
pub fn webhook_body(n: &Notification) -> Value {
    json!({
        "version": 1,
        "kind": n.kind.as_str(),
        "notification": n.id,
        "alert": n.alert,
    })
}

async fn post_webhook(url: &str, secret: Option<&str>, n: &Notification) -> Result<(), String> {
    let body = serde_json::to_vec(&webhook_body(n)).unwrap_or_default();
    let ts = OffsetDateTime::now_utc().unix_timestamp();
    let mut headers = vec![
        ("x-hais-timestamp", ts.to_string()),
        ("x-hais-notification", n.id.clone()),
    ];
    if let Some(secret) = secret {
        headers.push(("x-hais-signature", sign(secret, ts, &body)));
    }
    post_bytes(url, body, headers).await
}

fn slack_message(a: &AlertRecord, kind: NotificationKind) -> Value {
    let head = match kind {
        NotificationKind::Firing => {
            format!("[{}] {}", a.severity.as_str().to_uppercase(), a.summary)
        }
        NotificationKind::Resolved => format!("[RESOLVED] {}", a.summary),
    };
    json!({
        "text": format!(
            "{head}\nidentity: {}\ndetector: {} ({})\nalert: {} (seen {} times)",
            a.identity, a.rule, a.source, a.id, a.count
        )
    })
}

fn rfc3339_us(us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// The Kubernetes namespace of an alert: its `namespace` attribute, else the `/ns/<name>/`
/// segment of its SPIFFE ID.
fn namespace_of(a: &AlertRecord) -> Option<String> {
    if let Some(ns) = a.attributes.get("namespace") {
        return Some(ns.clone());
    }
    let path = a.identity.strip_prefix("spiffe://")?;
    let mut parts = path.split('/').skip(1);
    while let Some(p) = parts.next() {
        if p == "ns" {
            return parts.next().map(str::to_owned);
        }
    }
    None
}

/// One alert in Alertmanager's API v2 shape.
pub fn alertmanager_alert(a: &AlertRecord, kind: NotificationKind) -> Value {
    let mut labels = serde_json::Map::new();
    let mut label = |k: &str, v: &str| {
        if !v.is_empty() {
            labels.insert(k.into(), Value::String(v.into()));
        }
    };
    label("alertname", &format!("hais_{}", a.rule.replace('-', "_")));
    label("detector", &a.rule);
    label("source", &a.source);
    label("severity", a.severity.as_str());
    label("identity", &a.identity);
    label("alert_id", &a.id);
    if a.identity.starts_with("spiffe://") {
        label("spiffe_id", &a.identity);
    }
    if let Some(ns) = namespace_of(a) {
        label("namespace", &ns);
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert("summary".into(), Value::String(a.summary.clone()));
    if let Some(fp) = &a.fingerprint {
        annotations.insert("fingerprint".into(), Value::String(fp.clone()));
    }
    if let Some(d) = &a.destination {
        annotations.insert("destination".into(), Value::String(d.clone()));
    }
    annotations.insert("count".into(), Value::String(a.count.to_string()));
    let mut v = json!({
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339_us(a.first_seen_us),
    });
    if kind == NotificationKind::Resolved || !a.status.is_active() {
        v["endsAt"] = Value::String(rfc3339_us(a.updated_us.max(a.first_seen_us)));
    }
    v
}

/// POSTs alerts to Alertmanager's API v2.
pub async fn post_alertmanager(base: &str, alerts: &[Value]) -> Result<(), String> {
    let url = format!("{}/api/v2/alerts", base.trim_end_matches('/'));
    post_json(&url, &Value::Array(alerts.to_vec()), Vec::new()).await
}

/// OCSF severity id: 1 informational … 5 critical.
fn ocsf_severity(s: Severity) -> (i64, &'static str) {
    match s {
        Severity::Info => (1, "Informational"),
        Severity::Low => (2, "Low"),
        Severity::Medium => (3, "Medium"),
        Severity::High => (4, "High"),
        Severity::Critical => (5, "Critical"),
    }
}

/// The alert as an OCSF Detection Finding (class 2004, OCSF 1.3): activity Create when it
/// fires, Close when it is resolved.
pub fn ocsf(a: &AlertRecord, kind: NotificationKind, notification_id: &str) -> Value {
    let (activity_id, activity, status_id, status) = match kind {
        NotificationKind::Firing => (1, "Create", 1, "New"),
        NotificationKind::Resolved => (3, "Close", 4, "Resolved"),
    };
    let (severity_id, severity) = ocsf_severity(a.severity);
    let ms = |us: i64| us / 1000;
    json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 2004 * 100 + activity_id,
        "severity_id": severity_id,
        "severity": severity,
        "status_id": status_id,
        "status": status,
        "time": ms(a.updated_us),
        "message": a.summary,
        "count": a.count,
        "metadata": crate::ocsf::metadata(notification_id),
        "finding_info": {
            "uid": a.id,
            "title": a.summary,
            "types": [a.source],
            "analytic": {"name": a.rule, "type_id": 1, "type": "Rule"},
            "first_seen_time": ms(a.first_seen_us),
            "last_seen_time": ms(a.last_seen_us),
            "related_events": a.event_ids.iter().map(|e| json!({"uid": e})).collect::<Vec<_>>(),
        },
        "resources": [{"uid": a.identity, "name": a.identity, "type": "workload"}],
        "unmapped": {
            "method": a.method,
            "fingerprint": a.fingerprint,
            "destination": a.destination,
            "attributes": a.attributes,
        },
    })
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOST hais-alert - MSGID - <OCSF JSON>`.
fn syslog_message(
    s: &SyslogSettings,
    a: &AlertRecord,
    kind: NotificationKind,
    notification_id: &str,
) -> String {
    let severity = match (kind, a.severity) {
        (NotificationKind::Resolved, _) | (_, Severity::Info) => 6,
        (_, Severity::Low) => 5,
        (_, Severity::Medium) => 4,
        (_, Severity::High) => 3,
        (_, Severity::Critical) => 2,
    };
    let pri = u32::from(s.facility) * 8 + severity;
    let host = hostname();
    let ts = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "-".into());
    format!(
        "<{pri}>1 {ts} {host} hais-alert - {} - {}",
        kind.as_str(),
        ocsf(a, kind, notification_id)
    )
}

/// This machine's name for the syslog header (printable ASCII, at most 255 bytes), or `-`.
fn hostname() -> String {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let ok = !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| (33..=126).contains(&b));
    if ok { h } else { "-".into() }
}

/// Sends one mail per notification, in order, over one SMTP transport.
async fn send_mails(
    s: &EmailSettings,
    password: Option<&str>,
    batch: &[Notification],
) -> Delivered {
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
    let builder = match s.tls {
        SmtpTls::Starttls => match AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host) {
            Ok(b) => b,
            Err(e) => return failed(0, &format!("smtp {}: {e}", s.host)),
        },
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host),
    };
    let mut builder = builder.port(s.port).timeout(Some(DELIVERY_TIMEOUT));
    if let (Some(user), Some(password)) = (&s.username, password) {
        builder = builder.credentials(lettre::transport::smtp::authentication::Credentials::new(
            user.clone(),
            password.to_owned(),
        ));
    }
    let transport = builder.build();
    for (i, n) in batch.iter().enumerate() {
        let a = &n.alert;
        let subject = match n.kind {
            NotificationKind::Firing => {
                format!(
                    "[HaIS {}] {}",
                    a.severity.as_str().to_uppercase(),
                    a.summary
                )
            }
            NotificationKind::Resolved => format!("[HaIS RESOLVED] {}", a.summary),
        };
        let text = format!(
            "{subject}\n\nidentity: {}\ndetector: {} ({})\nfingerprint: {}\ndestination: {}\n\
             seen {} times, first {}, last {}\nstatus: {}\nalert: {}\nnotification: {}\n",
            a.identity,
            a.rule,
            a.source,
            a.fingerprint.as_deref().unwrap_or("-"),
            a.destination.as_deref().unwrap_or("-"),
            a.count,
            rfc3339_us(a.first_seen_us),
            rfc3339_us(a.last_seen_us),
            a.status.as_str(),
            a.id,
            n.id,
        );
        let mut m = Message::builder().subject(subject.chars().take(200).collect::<String>());
        match s.from.parse() {
            Ok(from) => m = m.from(from),
            Err(e) => return failed(i, &format!("settings.from: {e}")),
        }
        for to in &s.to {
            match to.parse() {
                Ok(to) => m = m.to(to),
                Err(e) => return failed(i, &format!("settings.to: {e}")),
            }
        }
        let message = match m.body(text) {
            Ok(m) => m,
            Err(e) => return failed(i, &format!("mail: {e}")),
        };
        if let Err(e) = transport.send(message).await {
            return failed(i, &format!("smtp {}:{}: {e}", s.host, s.port));
        }
    }
    Delivered {
        delivered: batch.len(),
        error: None,
    }
}

async fn send_syslog(s: &SyslogSettings, messages: &[String]) -> std::io::Result<()> {
    if s.transport == SyslogTransport::Udp {
        let target = tokio::net::lookup_host(&s.address)
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let bind: std::net::SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = tokio::net::UdpSocket::bind(bind).await?;
        for m in messages {
            sock.send_to(m.as_bytes(), target).await?;
        }
        return Ok(());
    }
    // TCP and TLS: octet counting (RFC 6587 section 3.4.1, RFC 5425 section 4.3).
    let mut framed = Vec::new();
    for m in messages {
        framed.extend_from_slice(format!("{} ", m.len()).as_bytes());
        framed.extend_from_slice(m.as_bytes());
    }
    let tls = s.tls().map_err(std::io::Error::other)?;
    let tcp = tokio::net::TcpStream::connect(&s.address).await?;
    match tls {
        None => write_all_and_close(tcp, &framed).await,
        Some((config, name)) => {
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            write_all_and_close(stream, &framed).await
        }
    }
}

/// Writes `bytes`, then closes the stream (over TLS, with a `close_notify`).
async fn write_all_and_close(
    mut w: impl tokio::io::AsyncWrite + Unpin,
    bytes: &[u8],
) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await?;
    w.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let w = ChannelKind::Webhook;
        assert!(
            check_settings(
                w,
                &json!({"url": "http://127.0.0.1:1/x"}),
                Some("0123456789abcdef")
            )
            .is_ok()
        );
        assert!(check_settings(w, &json!({"url": "ftp://x/"}), None).is_err());
        assert!(check_settings(w, &json!({"url": "http://x/", "extra": 1}), None).is_err());
        assert!(check_settings(w, &json!({"url": "http://x/"}), Some("short")).is_err());
        let s = ChannelKind::Syslog;
        let v = check_settings(s, &json!({"address": "127.0.0.1:514"}), None).unwrap();
        assert_eq!(v["transport"], "udp");
        assert!(check_settings(s, &json!({"address": "nope"}), None).is_err());
        assert!(check_settings(s, &json!({"address": "h:514"}), Some("x")).is_err());
        let tls = json!({"address": "collector.example:6514", "transport": "tls"});
        assert_eq!(check_settings(s, &tls, None).unwrap()["transport"], "tls");
        let bad_ca = json!({"address": "h:6514", "transport": "tls", "ca": "x"});
        assert!(
            check_settings(s, &bad_ca, None)
                .unwrap_err()
                .contains("settings.ca")
        );
        let udp_name = json!({"address": "h:514", "server_name": "h"});
        assert!(check_settings(s, &udp_name, None).is_err());
    }

    #[test]
    fn signatures_are_stable() {
        let sig = sign("key", 1, b"body");
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), 7 + 64);
        assert_ne!(sig, sign("key", 2, b"body"));
    }
}
