//! The threat service: known-fingerprint and IP reputation feeds, geolocation and ASN, the
//! judging of every ingested event against them, and exports other tools read.
//!
//! * **Indicators** ([`indicator`], stored by [`crate::store::threat`]): one model for
//!   fingerprints (by method, exact or by section), combinations of fingerprints, IP networks and
//!   domains, with labels, a verdict, confidence, source, licence and expiry.
//! * **Feeds** ([`feeds`] parses, [`refresh`] fetches): files or URLs on a schedule, every row
//!   validated on its own, bad rows counted and reported, each refresh swapped in atomically.
//!   FoxIO's `ja4plus-mapping.csv` ships in the binary as the feed `foxio`.
//! * **Matching** ([`matcher`]): a durable consumer group `threat` of `fingerprint.events`
//!   judges each event against an in-memory index (no query per event), rebuilt when the stored
//!   indicators' generation moves. Suspicious and malicious matches are stored as threat matches
//!   and published as [`Detection`]s on `detections` with the consumer's checkpoint, in one
//!   transaction; the alert service turns them into alerts. Each event's remote country adds to
//!   the map's counts in the same transaction.
//! * **Geolocation and ASN** ([`geo`]) from MMDB/CSV files the operator provides
//!   (`scripts/fetch-geo.sh`).
//! * **Exports** ([`export`]): Suricata datasets, Zeek Intel files, MISP `ja4-plus` objects.

pub mod export;
pub mod feeds;
pub mod geo;
pub mod indicator;
pub mod matcher;
pub mod refresh;
pub mod routes;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use hais_shared::detection::{Detection, MAX_EVIDENCE_EVENTS, Severity, Source};
use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use super::{BoxFuture, Host, Service, ServiceError, ServiceStats};
use crate::bus::durable::{Ack, Batch, Handler, HandlerFuture};
use crate::bus::log::{Detections, DurableTopic, FingerprintEvents};
use crate::bus::topics::{Appended, BusAppended};
use crate::config::ThreatConfig;
use crate::state::AppState;
use crate::store::threat::{GeoCount, MatchDraft};
use crate::store::{Store, StoreError, now_us, to_us};
use geo::Geo;
use indicator::{Kind, Verdict};
use matcher::{Hit, Matcher};

/// The service's name (consumer group, API prefix).
pub const NAME: &str = "threat";

/// How often a process checks whether another one changed the indicators.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// One hour in µs (the map's granularity).
const HOUR_US: i64 = 3_600_000_000;

/// The service, as [`super::all`] lists it.
#[derive(Debug, Default)]
pub struct ThreatService {
    handle: OnceLock<Arc<Threat>>,
}

/// The started service's state, shared by its consumer, refresher and routes.
#[derive(Debug)]
pub struct Threat {
    pub store: Arc<dyn Store>,
    pub app: AppState,
    pub config: ThreatConfig,
    pub geo: Geo,
    matcher: RwLock<Arc<Matcher>>,
    /// The generation the matcher was built from (−1: not built yet).
    generation: AtomicI64,
    /// The earliest expiry among the indexed indicators (µs), after which it is rebuilt.
    next_expiry: AtomicI64,
    /// One rebuild at a time.
    reloading: tokio::sync::Mutex<()>,
    /// One refresh of a given feed at a time in this process.
    refreshing: tokio::sync::Mutex<()>,
    pub counts: Counts,
}

/// What the consumer did since the process started (`/metrics`).
#[derive(Debug, Default)]
pub struct Counts {
    pub events: AtomicU64,
    pub matched_events: AtomicU64,
    pub detections: AtomicU64,
    pub rebuilds: AtomicU64,
}

impl Threat {
    /// The matcher now (cheap: an `Arc` clone).
    pub fn matcher(&self) -> Arc<Matcher> {
        self.matcher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuilds the matcher if the stored indicators changed (or one expired) since it was
    /// built. Cheap when nothing changed: one query.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _one = self.reloading.lock().await;
        let now = now_us();
        let stored = self.store.threat_generation().await?;
        if stored == self.generation.load(Ordering::Acquire)
            && now < self.next_expiry.load(Ordering::Acquire)
        {
            return Ok(());
        }
        let (generation, indicators) = self.store.threat_live_indicators(now).await?;
        let next_expiry = indicators
            .iter()
            .filter_map(|i| i.expires_us)
            .min()
            .unwrap_or(i64::MAX);
        let m = tokio::task::spawn_blocking(move || Matcher::build(indicators, now))
            .await
            .map_err(|e| StoreError::Corrupt(format!("building the matcher: {e}")))?;
        tracing::debug!(indicators = m.len(), generation, "threat matcher rebuilt");
        *self.matcher.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(m);
        self.generation.store(generation, Ordering::Release);
        self.next_expiry.store(next_expiry, Ordering::Release);
        self.counts.rebuilds.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl Service for ThreatService {
    fn name(&self) -> &'static str {
        NAME
    }
    fn seed_port(&self) -> u16 {
        3007
    }
    fn description(&self) -> &'static str {
        "Threat intelligence: known-fingerprint and IP reputation feeds (FoxIO JA4+ mapping, \
         JA4DB, IP lists, SSLBL, ThreatFox, MISP), matching of every event by exact, section \
         and combination rules, geolocation and ASN, threat matches published for the alert \
         service, and exports for Suricata, Zeek and MISP."
    }
    fn routes(&self) -> OpenApiRouter<AppState> {
        super::with_handle(routes::routes(), self.handle.get())
    }
    fn start<'a>(&'a self, host: &'a mut Host) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let config = host.app.config.threat.clone();
            let geo = Geo::open(config.country_db.as_deref(), &config.asn_db)?;
            let threat = Arc::new(Threat {
                store: host.app.store.clone(),
                app: host.app.clone(),
                config,
                geo,
                matcher: RwLock::new(Arc::new(Matcher::default())),
                generation: AtomicI64::new(-1),
                next_expiry: AtomicI64::new(i64::MAX),
                reloading: tokio::sync::Mutex::new(()),
                refreshing: tokio::sync::Mutex::new(()),
                counts: Counts::default(),
            });
            refresh::configure(&threat).await?;
            threat.reload().await?;
            let _ = self.handle.set(threat.clone());
            super::consume::<FingerprintEvents>(
                host,
                NAME,
                Arc::new(Judge {
                    threat: threat.clone(),
                    stats: host.stats.clone(),
                }),
            );
            host.tasks
                .push(refresh::spawn(threat.clone(), host.shutdown.clone()));
            // Rebuilds the matcher when another process changed the indicators, or one expired.
            host.tasks.push(super::spawn_every(
                RELOAD_EVERY,
                host.shutdown.clone(),
                "threat: reloading indicators",
                move || {
                    let threat = threat.clone();
                    async move { threat.reload().await }
                },
            ));
            host.expire_findings(&[
                crate::store::expiry::THREAT_MATCHES,
                crate::store::expiry::THREAT_GEO,
            ]);
            Ok(())
        })
    }
    fn metrics<'a>(&'a self, _state: &'a AppState, out: &'a mut String) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            use std::fmt::Write as _;
            let Some(t) = self.handle.get() else {
                return;
            };
            let c = &t.counts;
            crate::metrics::write_counters(
                out,
                &[
                    (
                        "hais_threat_events_total",
                        "Events judged by the threat service.",
                        &c.events,
                    ),
                    (
                        "hais_threat_matched_events_total",
                        "Events that matched a suspicious or malicious indicator.",
                        &c.matched_events,
                    ),
                    (
                        "hais_threat_detections_total",
                        "Threat matches published on detections (one per match and batch).",
                        &c.detections,
                    ),
                    (
                        "hais_threat_matcher_rebuilds_total",
                        "Rebuilds of the in-memory matcher.",
                        &c.rebuilds,
                    ),
                ],
            );
            let _ = writeln!(
                out,
                "# HELP hais_threat_indicators Indicators in the matcher.\n\
                 # TYPE hais_threat_indicators gauge\nhais_threat_indicators {}",
                t.matcher().len()
            );
        })
    }
}

/// The address on the far side of the workload: the server for its outbound flows, the client
/// for inbound ones.
pub fn remote_ip(e: &FingerprintEvent) -> IpAddr {
    if e.workload.direction.as_deref() == Some("inbound") {
        e.flow.src_ip
    } else {
        e.flow.dst_ip
    }
}

/// The severity of a verdict's detection.
fn severity(v: Verdict) -> Severity {
    match v {
        Verdict::Malicious => Severity::High,
        Verdict::Suspicious => Severity::Medium,
        Verdict::Benign => Severity::Info,
    }
}

fn method_of(name: &str) -> Option<Method> {
    Method::ALL.into_iter().find(|m| m.as_str() == name)
}

/// The detection one hit of one event gives (count 1), and its match key.
pub fn draft(e: &FingerprintEvent, identity: &str, hit: &Hit, place: &geo::Place) -> MatchDraft {
    let i = &hit.indicator;
    let destination = match i.kind {
        Kind::Ip => Some(format!(
            "{}",
            std::net::SocketAddr::new(remote_ip(e), e.flow.dst_port)
        )),
        Kind::Domain => e.server_name.clone(),
        _ => None,
    };
    let what = match i.kind {
        Kind::Fingerprint => format!(
            "presents {} {}",
            i.method.as_deref().unwrap_or_default().to_ascii_uppercase(),
            i.value
        ),
        Kind::Combination => format!(
            "presents {}",
            hit.fingerprints
                .iter()
                .map(|(m, v)| format!("{} {v}", m.to_ascii_uppercase()))
                .collect::<Vec<_>>()
                .join(" ∧ ")
        ),
        Kind::Ip => format!("talks to {} (listed as {})", remote_ip(e), i.value),
        Kind::Domain => format!(
            "talks to {} (listed as {})",
            e.server_name.as_deref().unwrap_or_default(),
            i.value
        ),
    };
    let names = i.labels.names();
    let of = if names.is_empty() {
        String::new()
    } else {
        format!(", known as {}", names.join(" / "))
    };
    let summary = format!(
        "{identity} {what}{of}: {} in feed {} (confidence {})",
        i.verdict.as_str(),
        i.feed,
        i.confidence
    );
    let mut attributes = std::collections::BTreeMap::new();
    attributes.insert("host".into(), e.host.clone());
    attributes.insert("verdict".into(), i.verdict.as_str().into());
    attributes.insert("indicator".into(), i.id.to_string());
    attributes.insert("kind".into(), i.kind.as_str().into());
    if let Some(f) = &i.labels.malware_family {
        attributes.insert("malware_family".into(), f.clone());
    }
    if let Some(c) = &place.country {
        attributes.insert("country".into(), c.clone());
    }
    if let Some(a) = place.asn {
        attributes.insert("asn".into(), a.to_string());
    }
    let key = [
        identity,
        &i.feed,
        &i.key(),
        destination.as_deref().unwrap_or_default(),
    ]
    .join("\u{1e}");
    MatchDraft {
        key,
        detection: Detection {
            id: Uuid::now_v7(),
            source: Source::Threat,
            rule: i.feed.clone(),
            severity: severity(i.verdict),
            identity: identity.to_owned(),
            method: match i.kind {
                Kind::Fingerprint => i.method.as_deref().and_then(method_of),
                _ => None,
            },
            fingerprint: matches!(i.kind, Kind::Fingerprint | Kind::Combination)
                .then(|| i.value.clone()),
            destination,
            summary,
            event_ids: vec![e.id],
            first_seen: e.timestamp,
            last_seen: e.timestamp,
            count: 1,
            attributes,
        },
    }
}

/// The outcome of judging a batch: matches merged by key, and the map's counts.
#[derive(Debug, Default)]
pub struct Judged {
    pub matches: Vec<MatchDraft>,
    pub geo: Vec<GeoCount>,
    pub matched_events: u64,
}

/// Judges `events` (no I/O): every event's hits and place; suspicious and malicious hits
/// become match drafts, merged per key (counts added, evidence kept to the latest events).
pub fn judge_batch<'a>(
    matcher: &Matcher,
    geo: &Geo,
    events: impl Iterator<Item = &'a FingerprintEvent>,
) -> Judged {
    let mut out = Judged::default();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut geo_counts: HashMap<(i64, String, String), i64> = HashMap::new();
    for e in events {
        let identity = hais_correlation::identity_of(e);
        let remote = remote_ip(e);
        let place = geo.lookup(remote);
        let hour = to_us(e.timestamp).div_euclid(HOUR_US) * HOUR_US;
        *geo_counts
            .entry((
                hour,
                place.country.clone().unwrap_or_default(),
                identity.to_string(),
            ))
            .or_default() += 1;
        let j = matcher.judge(e, remote);
        let mut matched = false;
        for hit in j
            .hits
            .iter()
            .filter(|h| h.indicator.verdict >= Verdict::Suspicious)
        {
            matched = true;
            let d = draft(e, &identity, hit, &place);
            match by_key.get(&d.key) {
                Some(&i) => {
                    let m = &mut out.matches[i].detection;
                    m.count += 1;
                    m.first_seen = m.first_seen.min(d.detection.first_seen);
                    if d.detection.last_seen >= m.last_seen {
                        m.last_seen = d.detection.last_seen;
                        m.summary = d.detection.summary;
                    }
                    m.event_ids.push(e.id);
                    if m.event_ids.len() > MAX_EVIDENCE_EVENTS {
                        m.event_ids.remove(0);
                    }
                }
                None => {
                    by_key.insert(d.key.clone(), out.matches.len());
                    out.matches.push(d);
                }
            }
        }
        out.matched_events += u64::from(matched);
    }
    out.geo = geo_counts
        .into_iter()
        .map(|((hour_us, country, identity), events)| GeoCount {
            hour_us,
            country,
            identity,
            events,
        })
        .collect();
    out.geo.sort();
    out
}

/// The consumer of `fingerprint.events` (group `threat`).
struct Judge {
    threat: Arc<Threat>,
    stats: Arc<ServiceStats>,
}

impl Handler<FingerprintEvents> for Judge {
    fn handle<'a>(&'a self, batch: &'a Batch<FingerprintEvents>) -> HandlerFuture<'a> {
        Box::pin(async move {
            let t = &self.threat;
            let matcher = t.matcher();
            let judged = judge_batch(&matcher, &t.geo, batch.items());
            let n = batch.items().count() as u64;
            t.store
                .threat_commit(&judged.matches, &judged.geo, &batch.checkpoint, now_us())
                .await?;
            t.counts.events.fetch_add(n, Ordering::Relaxed);
            t.counts
                .matched_events
                .fetch_add(judged.matched_events, Ordering::Relaxed);
            self.stats.work_events.fetch_add(n, Ordering::Relaxed);
            if !judged.matches.is_empty() {
                t.counts
                    .detections
                    .fetch_add(judged.matches.len() as u64, Ordering::Relaxed);
                tracing::info!(matches = judged.matches.len(), "threat matches raised");
                // The alert group's replicas in other processes would otherwise find the rows
                // at their next poll.
                t.app
                    .publish::<BusAppended>(&Appended {
                        topic: Detections::NAME.to_owned(),
                        items: judged.matches.len() as u64,
                    })
                    .await;
            }
            Ok(Ack::Committed)
        })
    }
}
