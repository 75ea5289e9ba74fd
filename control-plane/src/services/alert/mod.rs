//! The alert service: turns what the judging services concluded (correlation findings, policy
//! violations, threat matches, all published as [`Detection`]s on the durable topic
//! `detections`) into alerts a person hears about once, works, and that the platform remembers.
//!
//! * **Alerts** ([`crate::store::alert`]): detections with the same dedup key
//!   ([`Detection::dedup_key`]) are one alert, with a count and first/last seen; a replayed
//!   detection changes nothing. Lifecycle open → acknowledged → resolved (and suppressed), each
//!   step in the alert's history with who, when and a comment; a resolved alert that recurs is
//!   reopened. Suppressions drop matching detections or record them without notifying.
//! * **Notifications never lost**: the consumer group `alert` folds each batch of detections and
//!   writes the notifications the alerts owe to each channel (outbox rows) in one transaction
//!   with its checkpoint; [`deliver`] claims, delivers and deletes them, at least once, with an
//!   exponential back-off per channel; a failing channel holds only its own rows.
//! * **Channels** ([`channels`]): signed JSON webhook, Slack-compatible webhook, Prometheus
//!   Alertmanager API v2 (active alerts re-sent every `alert.resend_interval`), syslog RFC 5424
//!   (UDP, TCP, TLS) carrying OCSF Detection Finding JSON, e-mail over SMTP. Their secrets are
//!   sealed at rest ([`secrets`]).
//! * **Severity rules** ([`crate::store::alert::SeverityRule`]) set the severity of the
//!   detections they match before these are folded into alerts.

pub mod channels;
pub mod deliver;
pub mod routes;
pub mod secrets;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use hais_shared::detection::Detection;
use tokio::sync::Notify;
use utoipa_axum::router::OpenApiRouter;

use super::{BoxFuture, Host, Service, ServiceError};
use crate::bus::durable::{Ack, Batch, Handler, HandlerFuture};
use crate::bus::log::Detections;
use crate::config::AlertConfig;
use crate::state::AppState;
use crate::store::alert::RecordOutcome;
use crate::store::{Store, now_us};
use secrets::SecretBox;

/// The service's name: `--service alert`, `/api/alert/…`, its consumer group.
pub const NAME: &str = "alert";

/// The service, as [`super::all`] lists it.
#[derive(Debug, Default)]
pub struct AlertService {
    alert: OnceLock<Arc<Alert>>,
}

/// The started service's state, shared by its consumer, deliverers and routes.
#[derive(Debug)]
pub struct Alert {
    pub store: Arc<dyn Store>,
    pub config: AlertConfig,
    /// Seals channel secrets before they are stored, opens them to deliver.
    pub secrets: SecretBox,
    /// Woken when notifications were written, so that they leave at once.
    pub wake: Notify,
    pub counts: Counts,
}

/// What the consumer did, since the process started (`/metrics`).
#[derive(Debug, Default)]
pub struct Counts {
    pub opened: AtomicU64,
    pub updated: AtomicU64,
    pub reopened: AtomicU64,
    pub unchanged: AtomicU64,
    pub dropped: AtomicU64,
}

impl Counts {
    fn add(&self, o: &RecordOutcome) {
        for (c, n) in [
            (&self.opened, o.opened),
            (&self.updated, o.updated),
            (&self.reopened, o.reopened),
            (&self.unchanged, o.unchanged),
            (&self.dropped, o.dropped),
        ] {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl Service for AlertService {
    fn name(&self) -> &'static str {
        NAME
    }
    fn seed_port(&self) -> u16 {
        3006
    }
    fn description(&self) -> &'static str {
        "Alert: detections (correlation, policy, threat) deduplicated into alerts with a \
         lifecycle and history, suppressions, and notifications through an outbox to webhook, \
         Slack, Alertmanager, syslog and e-mail channels."
    }
    fn routes(&self) -> OpenApiRouter<AppState> {
        super::with_handle(routes::routes(), self.alert.get())
    }
    fn start<'a>(&'a self, host: &'a mut Host) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let config = &host.app.config;
            let secrets = SecretBox::load(config.alert.secrets_key.as_deref(), &config.data_dir)?;
            let sealed = secrets::seal_clear_rows(host.app.store.as_ref(), &secrets).await?;
            if sealed > 0 {
                tracing::info!(
                    channels = sealed,
                    "alert: sealed channel secrets stored in clear"
                );
            }
            let alert = Arc::new(Alert {
                store: host.app.store.clone(),
                config: host.app.config.alert.clone(),
                secrets,
                wake: Notify::new(),
                counts: Counts::default(),
            });
            let _ = self.alert.set(alert.clone());
            super::consume::<Detections>(
                host,
                NAME,
                Arc::new(Record {
                    alert: alert.clone(),
                }),
            );
            host.tasks
                .push(deliver::spawn(alert.clone(), host.shutdown.clone()));
            host.tasks
                .push(deliver::spawn_resender(alert, host.shutdown.clone()));
            Ok(())
        })
    }
    fn metrics<'a>(&'a self, _state: &'a AppState, out: &'a mut String) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(a) = self.alert.get() {
                render_metrics(a, out).await;
            }
        })
    }
}

/// The consumer of `detections` (group `alert`).
struct Record {
    alert: Arc<Alert>,
}

impl Handler<Detections> for Record {
    fn handle<'a>(&'a self, batch: &'a Batch<Detections>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let detections: Vec<Detection> = batch.items().cloned().collect();
            let out = self
                .alert
                .store
                .record_detections(&detections, now_us(), Some(&batch.checkpoint))
                .await?;
            self.alert.counts.add(&out);
            if out.notifications > 0 {
                self.alert.wake.notify_one();
            }
            Ok(Ack::Committed)
        })
    }
}

/// The service's lines of `/metrics`: what the consumer did and each channel's health.
async fn render_metrics(a: &Alert, out: &mut String) {
    use std::fmt::Write as _;
    let c = &a.counts;
    let _ = writeln!(
        out,
        "# HELP hais_alert_detections_total Detections handled by the alert service, by outcome.\n\
         # TYPE hais_alert_detections_total counter"
    );
    for (outcome, n) in [
        ("opened", &c.opened),
        ("updated", &c.updated),
        ("reopened", &c.reopened),
        ("unchanged", &c.unchanged),
        ("dropped", &c.dropped),
    ] {
        let _ = writeln!(
            out,
            "hais_alert_detections_total{{outcome=\"{outcome}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    let Ok(channels) = a.store.list_channels().await else {
        return;
    };
    let families: [(&str, &str, &str); 5] = [
        (
            "hais_alert_channel_up",
            "gauge",
            "1 when the channel's last delivery succeeded (or none failed yet), 0 while it fails.",
        ),
        (
            "hais_alert_channel_consecutive_failures",
            "gauge",
            "Failed deliveries since the channel's last success.",
        ),
        (
            "hais_alert_notifications_pending",
            "gauge",
            "Notifications waiting in the outbox for the channel.",
        ),
        (
            "hais_alert_notifications_delivered_total",
            "counter",
            "Notifications delivered through the channel.",
        ),
        (
            "hais_alert_delivery_failures_total",
            "counter",
            "Failed delivery attempts to the channel.",
        ),
    ];
    for (i, (name, kind, help)) in families.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for ch in &channels {
            let h = &ch.health;
            let v = match i {
                0 => i64::from(h.failures == 0),
                1 => h.failures,
                2 => h.pending,
                3 => h.delivered,
                _ => h.failed,
            };
            let _ = writeln!(
                out,
                "{name}{{channel=\"{}\",kind=\"{}\"}} {v}",
                ch.name,
                ch.kind.as_str()
            );
        }
    }
}
