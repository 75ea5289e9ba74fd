//! Feed refresh: fetch (file, `http(s)://` URL, or the FoxIO mapping built into the binary),
//! parse off the async threads, swap the feed's indicators in one transaction, rebuild the
//! matcher. A feed whose fetch fails keeps its indicators and records the error; bad rows never
//! stop an import.
//!
//! The scheduler looks every [`CHECK_EVERY`] for enabled feeds whose interval has passed since
//! their last attempt. Replicas may both refresh a feed at about the same time: each swap is
//! whole, so the outcome is one of them.

use std::sync::Arc;
use std::time::Duration;

use super::Threat;
use super::feeds::{self, FeedMeta, Format};
use super::indicator::Verdict;
use crate::http::client::{Outgoing, send};
use crate::store::threat::{Feed, FeedSpec, ImportStatus};
use crate::store::{StoreError, now_us};

/// How often the scheduler looks for feeds due.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);

/// The location of the FoxIO mapping compiled into the binary.
pub const BUILTIN_FOXIO: &str = "builtin:ja4plus-mapping.csv";

/// FoxIO's `ja4plus-mapping.csv`, shipped (FoxIO License 1.1, see NOTICE).
pub const FOXIO_MAPPING: &[u8] = include_bytes!("../../../data/ja4plus-mapping.csv");

/// Largest feed fetched over HTTP.
pub const MAX_FEED_BYTES: usize = 512 << 20;

/// Why a refresh did not swap anything in.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("no feed {0}")]
    NoFeed(String),
    #[error("{0}")]
    Fetch(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A feed name: one path segment of letters, digits, `-`, `_`, `.`, 1 to 64 bytes.
pub fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && n != "."
        && n != ".."
}

/// Creates or updates the feeds of the configuration (and the built-in FoxIO mapping, when on).
pub async fn configure(t: &Threat) -> Result<(), StoreError> {
    let interval = t.config.refresh_interval.0.as_secs() as i64;
    let mut specs = Vec::new();
    if t.config.foxio_mapping.0 {
        specs.push(FeedSpec {
            name: "foxio".into(),
            format: Format::FoxioCsv,
            location: BUILTIN_FOXIO.into(),
            interval_secs: interval,
            verdict: Verdict::Malicious,
            enabled: true,
            source: "FoxIO JA4+ mapping".into(),
            licence: Some("FoxIO License 1.1".into()),
        });
    }
    for f in &t.config.feeds {
        specs.push(FeedSpec {
            name: f.name.clone(),
            format: Format::parse(&f.format).unwrap_or(Format::IpList),
            location: f.location.clone(),
            interval_secs: f.interval.map(|d| d.0.as_secs() as i64).unwrap_or(interval),
            verdict: f
                .verdict
                .as_deref()
                .and_then(Verdict::parse)
                .unwrap_or(Verdict::Malicious),
            enabled: true,
            source: f.source.clone().unwrap_or_else(|| f.name.clone()),
            licence: f.licence.clone(),
        });
    }
    for s in specs {
        if !valid_name(&s.name) {
            tracing::warn!(feed = %s.name, "threat.feeds: invalid feed name, skipped");
            continue;
        }
        let stored = t.store.threat_feed(&s.name).await?;
        if stored.as_ref().map(|f| &f.spec) != Some(&s) {
            t.store.threat_put_feed(&s, now_us()).await?;
        }
        // A feed never imported is imported now, so a fresh process matches from the start.
        if stored.is_none_or(|f| f.last_refresh_us.is_none())
            && let Err(e) = refresh(t, &s.name).await
        {
            tracing::warn!(feed = %s.name, error = %e, "threat: first import failed");
        }
    }
    Ok(())
}

/// Reads the feed's bytes.
async fn fetch(spec: &FeedSpec) -> Result<Vec<u8>, String> {
    let loc = spec.location.as_str();
    if loc == BUILTIN_FOXIO {
        return Ok(FOXIO_MAPPING.to_vec());
    }
    if loc.starts_with("http://") || loc.starts_with("https://") {
        let (status, body) = send(Outgoing {
            timeout: Duration::from_secs(120),
            max_response: MAX_FEED_BYTES,
            ..Outgoing::get(loc)
        })
        .await?;
        if !(200..300).contains(&status) {
            return Err(format!("{loc}: HTTP status {status}"));
        }
        return Ok(body);
    }
    tokio::fs::read(loc)
        .await
        .map_err(|e| format!("{loc}: {e}"))
}

/// Fetches, parses and swaps in one feed now; the feed as stored afterwards.
pub async fn refresh(t: &Threat, name: &str) -> Result<Feed, RefreshError> {
    let _one = t.refreshing.lock().await;
    let feed = t
        .store
        .threat_feed(name)
        .await?
        .ok_or_else(|| RefreshError::NoFeed(name.to_owned()))?;
    let spec = feed.spec;
    let data = match fetch(&spec).await {
        Ok(d) => d,
        Err(e) => {
            t.store.threat_feed_failed(name, &e, now_us()).await?;
            return Err(RefreshError::Fetch(e));
        }
    };
    let meta = FeedMeta {
        name: spec.name.clone(),
        source: if spec.source.is_empty() {
            spec.name.clone()
        } else {
            spec.source.clone()
        },
        licence: spec.licence.clone(),
        verdict: spec.verdict,
        now_us: now_us(),
    };
    let format = spec.format;
    let parsed = tokio::task::spawn_blocking(move || feeds::parse(format, &data, &meta))
        .await
        .map_err(|e| RefreshError::Fetch(format!("parsing: {e}")))?;
    let status = ImportStatus {
        ok: parsed.ok as i64,
        bad: parsed.bad as i64,
        skipped: parsed.skipped as i64,
        errors: parsed.errors,
    };
    if parsed.bad > 0 {
        tracing::warn!(feed = %name, ok = parsed.ok, bad = parsed.bad, "threat feed has bad rows");
    }
    if !t
        .store
        .threat_swap(name, &parsed.indicators, &status, now_us())
        .await?
    {
        return Err(RefreshError::NoFeed(name.to_owned()));
    }
    t.reload().await?;
    t.store
        .threat_feed(name)
        .await?
        .ok_or_else(|| RefreshError::NoFeed(name.to_owned()))
}

/// Refreshes feeds as they fall due, until shutdown.
pub fn spawn(
    t: Arc<Threat>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = super::super::stopped(&mut shutdown) => return,
            }
            let feeds = match t.store.threat_feeds().await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "threat: listing feeds failed");
                    continue;
                }
            };
            let now = now_us();
            for f in feeds {
                let due = f.spec.enabled
                    && f.spec.interval_secs > 0
                    && f.last_attempt_us.is_none_or(|at| {
                        now.saturating_sub(at) >= f.spec.interval_secs.saturating_mul(1_000_000)
                    });
                if due && let Err(e) = refresh(&t, &f.spec.name).await {
                    tracing::warn!(feed = %f.spec.name, error = %e, "threat: feed refresh failed");
                }
            }
        }
    })
}
