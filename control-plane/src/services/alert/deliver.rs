//! Delivery of the notification outbox, and Alertmanager's periodic re-sends.
//!
//! One task watches the channels; each channel with pending notifications and no back-off gets
//! a delivery task of its own, so a slow or failing channel delays nobody else. A delivery task
//! claims the channel's oldest notifications for [`CLAIM_TTL`], delivers them in order and
//! deletes those that went through; on a failure it releases the rest and puts the channel in
//! back-off (1 s, doubling up to `alert.max_backoff`). A process killed mid-delivery leaves
//! claims that expire: the rows are delivered again by whichever process runs the service
//! (at least once; receivers deduplicate on the notification id).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Alert;
use super::channels::{alertmanager_alert, deliver, post_alertmanager};
use crate::store::alert::{ChannelKind, NotificationKind};
use crate::store::now_us;

/// How long a delivery task owns the notifications it claimed.
pub const CLAIM_TTL: Duration = Duration::from_secs(60);
/// Notifications claimed at once per channel.
const CLAIM_BATCH: i64 = 100;
/// How often the channels are looked at when nothing wakes the deliverer.
const POLL: Duration = Duration::from_millis(500);
/// First back-off after a failure; doubles with each further one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The back-off after `failures` consecutive failures (this one included), capped at `max`.
pub fn backoff(failures: i64, max: Duration) -> Duration {
    let shift = failures.clamp(1, 32) as u32 - 1;
    FIRST_BACKOFF
        .checked_mul(1u32 << shift.min(31))
        .unwrap_or(max)
        .min(max)
}

/// Starts the deliverer (see the module documentation).
pub fn spawn(alert: Arc<Alert>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut running: HashMap<String, JoinHandle<()>> = HashMap::new();
        loop {
            running.retain(|_, t| !t.is_finished());
            match alert.store.list_channels().await {
                Ok(channels) => {
                    let now = now_us();
                    for c in channels {
                        let due = c.enabled && c.health.pending > 0 && c.health.next_try_us <= now;
                        if due && !running.contains_key(&c.id) {
                            let task = tokio::spawn(deliver_channel(alert.clone(), c.id.clone()));
                            running.insert(c.id, task);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "alert: listing channels failed"),
            }
            tokio::select! {
                _ = alert.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = super::super::stopped(&mut shutdown) => break,
            }
        }
        // In-flight deliveries are abandoned: their claims expire and the rows go again.
        for (_, t) in running {
            t.abort();
        }
    })
}

/// Delivers a channel's pending notifications until none is left or one fails.
async fn deliver_channel(alert: Arc<Alert>, channel_id: String) {
    let store = &alert.store;
    let Ok(Some((channel, stored))) = store.get_channel(&channel_id).await else {
        return;
    };
    let secret = match stored
        .map(|s| alert.secrets.open(&channel_id, &s))
        .transpose()
    {
        Ok(s) => s,
        Err(e) => {
            // Nothing can be delivered without it: the channel backs off like a failing one.
            let now = now_us();
            let wait = backoff(channel.health.failures + 1, alert.config.max_backoff.0);
            tracing::warn!(channel = %channel.name, error = %e, "alert: channel secret");
            let _ = store
                .notifications_failed(
                    &channel_id,
                    &[],
                    &e.to_string(),
                    now,
                    now + wait.as_micros() as i64,
                )
                .await;
            return;
        }
    };
    loop {
        let now = now_us();
        let claim_until = now + CLAIM_TTL.as_micros() as i64;
        let batch = match store
            .claim_notifications(&channel_id, now, claim_until, CLAIM_BATCH)
            .await
        {
            Ok(b) if b.is_empty() => return,
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(channel = %channel.name, error = %e, "alert: claiming failed");
                return;
            }
        };
        let result = deliver(channel.kind, &channel.settings, secret.as_deref(), &batch).await;
        let ids: Vec<String> = batch.iter().map(|n| n.id.clone()).collect();
        let (done, rest) = ids.split_at(result.delivered.min(ids.len()));
        let now = now_us();
        if !done.is_empty()
            && let Err(e) = store.notifications_delivered(&channel_id, done, now).await
        {
            // Delivered but not recorded: they will be delivered again (at least once).
            tracing::warn!(channel = %channel.name, error = %e, "alert: recording deliveries failed");
            return;
        }
        if let Some(error) = result.error {
            // The channel's failures as stored before this one.
            let failures = store
                .get_channel(&channel_id)
                .await
                .ok()
                .flatten()
                .map_or(0, |(c, _)| c.health.failures)
                + 1;
            let wait = backoff(failures, alert.config.max_backoff.0);
            tracing::warn!(channel = %channel.name, kind = channel.kind.as_str(), %error,
                failures, retry_in_ms = wait.as_millis() as u64, "alert: delivery failed");
            let next = now + wait.as_micros() as i64;
            if let Err(e) = store
                .notifications_failed(&channel_id, rest, &error, now, next)
                .await
            {
                tracing::warn!(channel = %channel.name, error = %e, "alert: recording a failure failed");
            }
            return;
        }
        if (batch.len() as i64) < CLAIM_BATCH {
            return;
        }
    }
}

/// Re-sends every active alert to each healthy Alertmanager channel every
/// `alert.resend_interval`, so that Alertmanager keeps them firing (it ends an alert that is
/// not re-sent within its `resolve_timeout`). Best effort: what must not be lost (the first
/// firing, the resolve) goes through the outbox.
pub fn spawn_resender(alert: Arc<Alert>, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = alert.config.resend_interval.0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = super::super::stopped(&mut shutdown) => break,
            }
            if let Err(e) = resend(&alert).await {
                tracing::warn!(error = %e, "alert: re-sending to Alertmanager failed");
            }
        }
    })
}

/// Alerts sent per Alertmanager request.
const RESEND_PAGE: i64 = 500;

async fn resend(alert: &Alert) -> Result<(), String> {
    let channels: Vec<_> = alert
        .store
        .list_channels()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| c.enabled && c.kind == ChannelKind::Alertmanager && c.health.failures == 0)
        .collect();
    if channels.is_empty() {
        return Ok(());
    }
    let mut after = String::new();
    loop {
        let page = alert
            .store
            .active_alerts(&after, RESEND_PAGE)
            .await
            .map_err(|e| e.to_string())?;
        for c in &channels {
            let Some(url) = c.settings.get("url").and_then(|u| u.as_str()) else {
                continue;
            };
            let alerts: Vec<_> = page
                .iter()
                .filter(|a| c.routes(a.severity, &a.identity))
                .map(|a| alertmanager_alert(a, NotificationKind::Firing))
                .collect();
            if !alerts.is_empty() {
                post_alertmanager(url, &alerts).await?;
            }
        }
        match page.last() {
            Some(last) if page.len() as i64 == RESEND_PAGE => after = last.id.clone(),
            _ => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(300);
        assert_eq!(backoff(1, max), Duration::from_secs(1));
        assert_eq!(backoff(2, max), Duration::from_secs(2));
        assert_eq!(backoff(5, max), Duration::from_secs(16));
        assert_eq!(backoff(20, max), max);
        assert_eq!(backoff(10_000, max), max);
    }
}
