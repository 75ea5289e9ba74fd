//! The JA4 service: fingerprint ingest, search, detail, labels, top-N statistics, retention,
//! and the events API ([`events`]).
//!
//! Every input is checked here before it reaches the store, and every refusal says which field
//! was wrong and what is accepted: page sizes, windows and batch sizes are bounded, text filters
//! must be printable ASCII of bounded length (what stored values can be, see
//! `FingerprintEvent::validate`), times are RFC 3339.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::{Extension, Json};
use hais_shared::event::FingerprintEvent;
use hais_shared::fingerprint::Method;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::identity::Identity;
use super::spire::Spire;
use super::{BoxFuture, Host, Service, ServiceError};
use crate::auth::{Caller, allow};
use crate::bus::log::DurableTopic;
use crate::bus::topics::{
    FingerprintBatchRef, FingerprintEvents, FingerprintLabeled, LabelChange, RetentionRan,
};
use crate::http::{ApiError, ErrorBody};
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::labels::MAX_LABELS;
use crate::store::{
    Cursor, FingerprintDetail, FingerprintQuery, FingerprintSummary, IngestOutcome, LabelOutcome,
    MAX_PAGE_SIZE, Page, RetentionOutcome, TopEntry, now_us, to_us, uuid_ms,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub mod events;
pub mod export;
pub mod search;
pub mod uplink;

/// The ja4 service's seed port: its HTTP API alone, and the agents' QUIC uplink (UDP) in every
/// mode.
pub const SEED_PORT: u16 = 3001;

/// The service, as [`super::all`] lists it. Once started it holds the handles of the services
/// it calls: identity (every ingested event is resolved) and spire (the uplink enrolls and
/// authenticates agents).
#[derive(Debug, Default)]
pub struct Ja4 {
    identity: OnceLock<Arc<Identity>>,
    /// The spire handle, and whether this process's spire service reports its metrics already.
    spire: OnceLock<(Arc<Spire>, bool)>,
    uplink_addr: OnceLock<SocketAddr>,
}

impl Service for Ja4 {
    fn name(&self) -> &'static str {
        "ja4"
    }
    fn seed_port(&self) -> u16 {
        SEED_PORT
    }
    fn description(&self) -> &'static str {
        "JA4+ fingerprint ingest (HTTP and the agents' QUIC uplink), storage, search and statistics."
    }
    fn routes(&self) -> OpenApiRouter<AppState> {
        let r = OpenApiRouter::new()
            .routes(routes!(ingest))
            .routes(routes!(search))
            .routes(routes!(detail))
            .routes(routes!(add_label))
            .routes(routes!(remove_label))
            .routes(routes!(top))
            .routes(routes!(events::list))
            .routes(routes!(events::one))
            .routes(routes!(export::ocsf))
            .routes(routes!(export::suricata_dataset))
            .routes(routes!(export::misp))
            .routes(routes!(retention));
        super::with_handle(r, self.identity.get())
    }

    /// Loads the identity and spire handles, and starts the search indexer, retention, the
    /// agents' uplink and the uplink's revocation watch.
    fn start<'a>(&'a self, host: &'a mut Host) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let identity = super::identity::handle(host).await?;
            let spire = super::spire::handle(host).await?;
            let app = host.app.clone();
            // Registered before anything is ingested, so the log keeps every event's row until
            // the indexer has passed it.
            app.store
                .bus_register(search::GROUP, <FingerprintEvents as DurableTopic>::NAME)
                .await?;
            super::consume::<FingerprintEvents>(
                host,
                search::GROUP,
                Arc::new(search::SearchIndexer::new(app.store.clone())),
            );
            if app.config.retention_days > 0 {
                let age = Duration::from_secs(u64::from(app.config.retention_days) * 86_400);
                host.every_retention("retention of events", move |state| async move {
                    run_retention(&state, age).await.map(drop)
                });
            }
            host.tasks.push(super::spire::watch_revocations(
                app.clone(),
                spire.clone(),
                host.shutdown.clone(),
            ));
            if let Some(bind) = app.config.ja4.uplink_bind {
                let uplink = uplink::start(
                    app,
                    spire.clone(),
                    identity.clone(),
                    bind,
                    host.shutdown.clone(),
                )?;
                let _ = self.uplink_addr.set(uplink.local_addr);
                host.tasks.push(uplink.task);
            }
            let _ = self.identity.set(identity);
            let _ = self.spire.set((spire, host.hosts(super::spire::NAME)));
            Ok(())
        })
    }

    /// The roll-up stage's backlog (see `store::fold`): at sustained high ingest the fold can
    /// trail, and this is where an operator sees it. A store too slow to answer leaves the lines
    /// out rather than delay the scrape. Also the external SPIRE's gauges, which the uplink
    /// follows, where no spire service reports them.
    fn metrics<'a>(&'a self, state: &'a AppState, out: &'a mut String) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Ok(Ok(b)) =
                tokio::time::timeout(Duration::from_secs(1), state.store.pending_rollups()).await
            {
                let _ = writeln!(
                    out,
                    "# HELP hais_rollup_backlog_events Stored events whose roll-up deltas are not folded into the roll-up tables yet.
             # TYPE hais_rollup_backlog_events gauge
hais_rollup_backlog_events {}
             # HELP hais_rollup_backlog_records Roll-up delta records (one per ingest transaction) waiting to be folded.
             # TYPE hais_rollup_backlog_records gauge
hais_rollup_backlog_records {}",
                    b.events, b.groups
                );
            }
            if let Some((spire, false)) = self.spire.get() {
                spire.render_metrics(out);
            }
        })
    }

    fn udp_addr(&self) -> Option<SocketAddr> {
        self.uplink_addr.get().copied()
    }
}

/// Default page size of a search.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest top-N.
pub const MAX_TOP: u32 = 100;
/// Longest top-N window (90 days).
pub const MAX_WINDOW: Duration = Duration::from_secs(90 * 24 * 3600);
/// Earliest accepted event time (2020-01-01): older ids or timestamps are bugs, not history.
const MIN_EVENT_MS: i64 = 1_577_836_800_000;
/// How far in the future an event may be stamped (clock skew allowance).
const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;
/// Longest accepted text filter.
pub(crate) const MAX_FILTER_LEN: usize = 512;

/// A batch of events from an agent or service.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestRequest {
    /// `FingerprintEvent`s (see `hais_shared::event`): `id` (UUIDv7), `timestamp` (RFC 3339),
    /// `agent_id`, `host`, `flow` {src_ip, src_port, dst_ip, dst_port, transport}, optional
    /// `server_name`, `fingerprints` [{method, value}], optional `workload`.
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 5000)]
    pub events: Vec<FingerprintEvent>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngestResponse {
    /// Events stored now.
    pub stored: usize,
    /// Events already stored before (replays), ignored.
    pub duplicates: usize,
}

pub(crate) fn parse_method(s: &str) -> Result<Method, ApiError> {
    Method::ALL
        .into_iter()
        .find(|m| m.as_str() == s)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown method {:?}; expected one of: {}",
                truncate(s),
                Method::ALL.map(|m| m.as_str()).join(", ")
            ))
        })
}

/// Shortens client input quoted back in error messages.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A text filter: printable ASCII without spaces, bounded.
pub(crate) fn text_filter(
    name: &str,
    v: Option<String>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(v)
            if v.is_empty() || v.len() > max || v.bytes().any(|b| !(0x21..=0x7e).contains(&b)) =>
        {
            Err(ApiError::bad_request(format!(
                "{name} must be 1-{max} printable ASCII characters without spaces"
            )))
        }
        Some(v) => Ok(Some(v)),
    }
}

pub(crate) fn parse_time(name: &str, v: Option<String>) -> Result<Option<i64>, ApiError> {
    v.map(|s| {
        OffsetDateTime::parse(&s, &Rfc3339).map(to_us).map_err(|_| {
            ApiError::bad_request(format!(
                "{name} must be an RFC 3339 time such as 2026-11-28T12:00:00Z"
            ))
        })
    })
    .transpose()
}

fn check_event_times(e: &FingerprintEvent) -> Result<(), String> {
    let now_ms = now_us() / 1000;
    let id_ms = uuid_ms(&e.id);
    let ts_ms = to_us(e.timestamp) / 1000;
    for (what, ms) in [("id's embedded time", id_ms), ("timestamp", ts_ms)] {
        if ms < MIN_EVENT_MS || ms > now_ms + MAX_FUTURE_MS {
            return Err(format!(
                "{what} is outside the accepted range (2020-01-01 to one day from now)"
            ));
        }
    }
    Ok(())
}

/// Store a batch of fingerprint events (service or admin token). Replayed ids are ignored.
#[utoipa::path(post, path = "/api/ja4/ingest", tag = "ja4", security(("bearer" = [])),
    request_body = IngestRequest,
    responses((status = 200, body = IngestResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 413, body = ErrorBody)))]
pub async fn ingest(
    State(state): State<AppState>,
    Extension(identity): Extension<Arc<Identity>>,
    Caller(c): Caller,
    ApiJson(mut req): ApiJson<IngestRequest>,
) -> Result<Json<IngestResponse>, ApiError> {
    c.require(allow::INGEST)?;
    // A service token speaks for one agent: it may not store another agent's telemetry.
    let bound_agent = match c.role {
        crate::auth::Role::Service => Some(
            hais_shared::spiffe::SpiffeId::parse(&c.sub)
                .ok()
                .and_then(|id| id.agent_id().map(str::to_owned))
                .ok_or_else(|| {
                    ApiError::forbidden("only an agent's service token may ingest events")
                })?,
        ),
        _ => None,
    };
    let max = state.config.max_batch_events;
    if req.events.is_empty() || req.events.len() > max {
        state
            .metrics
            .ingest_rejected
            .fetch_add(req.events.len() as u64, Ordering::Relaxed);
        return Err(ApiError::bad_request(format!(
            "a batch holds 1 to {max} events, got {}",
            req.events.len()
        )));
    }
    if let Some(agent) = &bound_agent
        && let Some(i) = req.events.iter().position(|e| e.agent_id != *agent)
    {
        state
            .metrics
            .ingest_rejected
            .fetch_add(req.events.len() as u64, Ordering::Relaxed);
        return Err(ApiError::forbidden(format!(
            "events[{i}]: this token may only ingest events of agent {agent}; nothing from this batch was stored"
        )));
    }
    for (i, e) in req.events.iter_mut().enumerate() {
        if let Err(msg) = admit_event(e, None) {
            state
                .metrics
                .ingest_rejected
                .fetch_add(req.events.len() as u64, Ordering::Relaxed);
            return Err(ApiError::bad_request(format!(
                "events[{i}]: {msg}; nothing from this batch was stored"
            )));
        }
    }
    let out = store_events(&state, &identity, &mut req.events).await?;
    Ok(Json(IngestResponse {
        stored: out.stored.len(),
        duplicates: out.duplicates,
    }))
}

/// Admits one event as every ingest path must (HTTP and uplink alike): from `agent` when the
/// sender speaks for one agent, within the shared content limits of `FingerprintEvent::validate`,
/// at a plausible time. Workload identities are the control plane's to decide (from
/// registration entries, on ingest): whatever a sender claims is dropped, so a compromised agent
/// or token cannot name its flows after another workload.
pub fn admit_event(e: &mut FingerprintEvent, agent: Option<&str>) -> Result<(), String> {
    if let Some(agent) = agent
        && e.agent_id != agent
    {
        return Err(format!(
            "agent_id {:?} is not this connection's agent {agent}",
            e.agent_id.chars().take(64).collect::<String>()
        ));
    }
    e.validate().map_err(|err| err.to_string())?;
    check_event_times(e)?;
    e.workload.spiffe_id = None;
    e.workload.selectors.clear();
    Ok(())
}

/// Resolves the events' workload identities (registration entries, see
/// [`crate::services::identity::resolve`]), stores them, counts them, and publishes the new ones
/// on `fingerprint.events`. Returns after the store committed them, so the caller may
/// acknowledge. Both ingest paths (HTTP and the QUIC uplink) come through here.
pub async fn store_events(
    state: &AppState,
    identity: &Identity,
    events: &mut [FingerprintEvent],
) -> Result<IngestOutcome, crate::store::StoreError> {
    let identities = crate::services::identity::resolve(&identity.snapshot(), events);
    let out = state.store.ingest(events).await?;
    crate::services::identity::record(state, events, &identities, &out).await;
    let m = &state.metrics;
    m.ingest_batches.fetch_add(1, Ordering::Relaxed);
    m.ingest_stored
        .fetch_add(out.stored.len() as u64, Ordering::Relaxed);
    m.ingest_duplicates
        .fetch_add(out.duplicates as u64, Ordering::Relaxed);
    if !out.stored.is_empty() {
        let events = out.stored.iter().map(|&i| &events[i]).collect();
        state
            .publish::<FingerprintEvents>(&FingerprintBatchRef { events })
            .await;
    }
    Ok(out)
}

/// Search parameters. Every filter is optional; all given ones must match.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// ja4, ja4s, ja4h, ja4l, ja4ls, ja4x, ja4ssh, ja4t, ja4ts, ja4d, ja4d6
    #[param(pattern = "^(ja4|ja4s|ja4h|ja4l|ja4ls|ja4x|ja4ssh|ja4t|ja4ts|ja4d|ja4d6)$")]
    pub method: Option<String>,
    /// Exact fingerprint value.
    #[param(min_length = 1, max_length = 512, pattern = "^[!-~]+$")]
    pub value: Option<String>,
    /// Fingerprint value prefix.
    #[param(min_length = 1, max_length = 512, pattern = "^[!-~]+$")]
    pub prefix: Option<String>,
    /// JA4 part a (first `_` section), e.g. t13d1516h2.
    #[param(min_length = 1, max_length = 512, pattern = "^[!-~]+$")]
    pub part_a: Option<String>,
    #[param(min_length = 1, max_length = 512, pattern = "^[!-~]+$")]
    pub part_b: Option<String>,
    #[param(min_length = 1, max_length = 512, pattern = "^[!-~]+$")]
    pub part_c: Option<String>,
    /// Seen from this agent.
    #[param(min_length = 1, max_length = 256, pattern = "^[!-~]+$")]
    pub agent: Option<String>,
    /// Seen on this host.
    #[param(min_length = 1, max_length = 256, pattern = "^[!-~]+$")]
    pub host: Option<String>,
    /// Seen with this TLS server name.
    #[param(min_length = 1, max_length = 253, pattern = "^[!-~]+$")]
    pub server_name: Option<String>,
    /// Seen with this workload SPIFFE ID.
    #[param(min_length = 1, max_length = 2048, pattern = "^[!-~]+$")]
    pub identity: Option<String>,
    /// Seen at or after (RFC 3339).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Seen at or before (RFC 3339).
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1, max_length = 4096)]
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

pub(crate) fn parse_limit(v: Option<&str>, default: u32, max: u32) -> Result<u32, ApiError> {
    match v {
        None => Ok(default),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be an integer from 1 to {max}"
            ))),
        },
    }
}

impl SearchParams {
    /// Validates and converts into a store query.
    pub fn into_query(self) -> Result<FingerprintQuery, ApiError> {
        let limit = parse_limit(self.limit.as_deref(), DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?;
        let after = self
            .cursor
            .map(|c| {
                Cursor::decode(&c).ok_or_else(|| {
                    ApiError::bad_request(
                        "cursor is not one this API issued; start over without it",
                    )
                })
            })
            .transpose()?;
        let from_us = parse_time("from", self.from)?;
        let to_us = parse_time("to", self.to)?;
        if let (Some(f), Some(t)) = (from_us, to_us)
            && f > t
        {
            return Err(ApiError::bad_request("from must not be after to"));
        }
        Ok(FingerprintQuery {
            method: self.method.as_deref().map(parse_method).transpose()?,
            value: text_filter("value", self.value, MAX_FILTER_LEN)?,
            prefix: text_filter("prefix", self.prefix, MAX_FILTER_LEN)?,
            part_a: text_filter("part_a", self.part_a, MAX_FILTER_LEN)?,
            part_b: text_filter("part_b", self.part_b, MAX_FILTER_LEN)?,
            part_c: text_filter("part_c", self.part_c, MAX_FILTER_LEN)?,
            agent: text_filter("agent", self.agent, 256)?,
            host: text_filter("host", self.host, 256)?,
            server_name: text_filter("server_name", self.server_name, 253)?,
            identity: text_filter("identity", self.identity, 2048)?,
            from_us,
            to_us,
            after,
            limit,
        })
    }
}

/// Search fingerprint roll-ups, in (method, value) order, with keyset pagination.
#[utoipa::path(get, path = "/api/ja4/fingerprints", tag = "ja4", security(("bearer" = [])),
    params(SearchParams),
    responses((status = 200, body = Page<FingerprintSummary>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn search(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<SearchParams>,
) -> Result<Json<Page<FingerprintSummary>>, ApiError> {
    c.require(allow::READ)?;
    let q = p.into_query()?;
    Ok(Json(state.store.search(&q).await?))
}

fn fp_path(method: &str, value: String) -> Result<(Method, String), ApiError> {
    let m = parse_method(method)?;
    let v = text_filter("value", Some(value), MAX_FILTER_LEN)?.unwrap_or_default();
    Ok((m, v))
}

/// Everything known about one fingerprint.
#[utoipa::path(get, path = "/api/ja4/fingerprints/{method}/{value}", tag = "ja4",
    security(("bearer" = [])),
    params(("method" = String, Path, pattern = "^(ja4|ja4s|ja4h|ja4l|ja4ls|ja4x|ja4ssh|ja4t|ja4ts|ja4d|ja4d6)$"), ("value" = String, Path, max_length = 512, pattern = "^[!-~]+$")),
    responses((status = 200, body = FingerprintDetail), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn detail(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath((method, value)): ApiPath<(String, String)>,
) -> Result<Json<FingerprintDetail>, ApiError> {
    c.require(allow::READ)?;
    let (m, v) = fp_path(&method, value)?;
    state
        .store
        .detail(m, &v)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no {m} fingerprint {v}")))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    /// 1-64 characters of a-z 0-9 : . _ -
    #[schema(pattern = "^[a-z0-9:._-]{1,64}$")]
    pub label: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LabelResponse {
    pub labels: Vec<String>,
}

/// Attach a label to a fingerprint (analyst or admin).
#[utoipa::path(post, path = "/api/ja4/fingerprints/{method}/{value}/labels", tag = "ja4",
    security(("bearer" = [])), request_body = LabelRequest,
    params(("method" = String, Path, pattern = "^(ja4|ja4s|ja4h|ja4l|ja4ls|ja4x|ja4ssh|ja4t|ja4ts|ja4d|ja4d6)$"), ("value" = String, Path, max_length = 512, pattern = "^[!-~]+$")),
    responses((status = 200, body = LabelResponse), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn add_label(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath((method, value)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<LabelRequest>,
) -> Result<Json<LabelResponse>, ApiError> {
    c.require(allow::ANNOTATE)?;
    let (m, v) = fp_path(&method, value)?;
    let l = check_label(&req.label)?;
    match state.store.add_label(m, &v, l).await? {
        LabelOutcome::Added => {}
        LabelOutcome::UnknownFingerprint => {
            return Err(ApiError::not_found(format!("no {m} fingerprint {v}")));
        }
        LabelOutcome::Full => {
            return Err(ApiError::conflict(format!(
                "this fingerprint already has {MAX_LABELS} labels; remove one first"
            )));
        }
    }
    state
        .publish::<FingerprintLabeled>(&LabelChange {
            method: m,
            value: v.clone(),
            label: l.to_owned(),
            by: c.sub.clone(),
            removed: false,
        })
        .await;
    Ok(Json(LabelResponse {
        labels: labels_of(&state, m, &v).await?,
    }))
}

/// A label: 1-64 characters of a-z 0-9 : . _ - (no spaces, no control characters, nothing a
/// terminal or a log would interpret).
fn check_label(l: &str) -> Result<&str, ApiError> {
    let ok = !l.is_empty()
        && l.len() <= 64
        && l.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b':' | b'.' | b'_' | b'-')
        });
    if ok {
        Ok(l)
    } else {
        Err(ApiError::bad_request(
            "label must be 1-64 characters of a-z 0-9 : . _ -",
        ))
    }
}

async fn labels_of(state: &AppState, m: Method, v: &str) -> Result<Vec<String>, ApiError> {
    Ok(state
        .store
        .detail(m, v)
        .await?
        .map(|d| d.labels)
        .unwrap_or_default())
}

/// Remove a label from a fingerprint (analyst or admin).
#[utoipa::path(delete, path = "/api/ja4/fingerprints/{method}/{value}/labels/{label}", tag = "ja4",
    security(("bearer" = [])),
    params(("method" = String, Path, pattern = "^(ja4|ja4s|ja4h|ja4l|ja4ls|ja4x|ja4ssh|ja4t|ja4ts|ja4d|ja4d6)$"), ("value" = String, Path, max_length = 512, pattern = "^[!-~]+$"),
           ("label" = String, Path, pattern = "^[a-z0-9:._-]{1,64}$")),
    responses((status = 200, body = LabelResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn remove_label(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath((method, value, label)): ApiPath<(String, String, String)>,
) -> Result<Json<LabelResponse>, ApiError> {
    c.require(allow::ANNOTATE)?;
    let (m, v) = fp_path(&method, value)?;
    let l = check_label(&label)?;
    if !state.store.remove_label(m, &v, l).await? {
        return Err(ApiError::not_found(format!(
            "{m} fingerprint {v} has no label {l}"
        )));
    }
    state
        .publish::<FingerprintLabeled>(&LabelChange {
            method: m,
            value: v.clone(),
            label: l.to_owned(),
            by: c.sub.clone(),
            removed: true,
        })
        .await;
    Ok(Json(LabelResponse {
        labels: labels_of(&state, m, &v).await?,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopParams {
    /// Window ending now: a number and m, h or d (e.g. 15m, 24h, 7d); at most 90d; default 24h.
    #[param(pattern = "^([1-9][0-9]{0,4}m|[1-9][0-9]{0,2}h|[1-9]d|[1-8][0-9]d|90d)$")]
    pub window: Option<String>,
    #[param(pattern = "^(ja4|ja4s|ja4h|ja4l|ja4ls|ja4x|ja4ssh|ja4t|ja4ts|ja4d|ja4d6)$")]
    pub method: Option<String>,
    /// 1 to 100 (default 10).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TopResponse {
    pub window_secs: u64,
    pub items: Vec<TopEntry>,
}

/// Parses `15m`, `24h`, `7d`.
pub fn parse_window(s: &str) -> Option<Duration> {
    if s.len() < 2 || s.len() > 8 {
        return None;
    }
    // By character, not byte: the last character of client input may be multi-byte.
    let unit = s.chars().next_back()?;
    let num = &s[..s.len() - unit.len_utf8()];
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3600)?,
        'd' => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// The fingerprints carried by the most events in a window (hour granularity).
#[utoipa::path(get, path = "/api/ja4/stats/top", tag = "ja4", security(("bearer" = [])),
    params(TopParams),
    responses((status = 200, body = TopResponse), (status = 400, body = ErrorBody)))]
pub async fn top(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<TopParams>,
) -> Result<Json<TopResponse>, ApiError> {
    c.require(allow::READ)?;
    let window = match p.window.as_deref() {
        None => Duration::from_secs(86_400),
        Some(w) => parse_window(w)
            .filter(|d| *d <= MAX_WINDOW)
            .ok_or_else(|| {
                ApiError::bad_request("window must be like 15m, 24h or 7d, at most 90d")
            })?,
    };
    let limit = parse_limit(p.limit.as_deref(), 10, MAX_TOP)?;
    let method = p.method.as_deref().map(parse_method).transpose()?;
    let since = now_us() - window.as_micros() as i64;
    let items = state.store.top(since, method, limit).await?;
    Ok(Json(TopResponse {
        window_secs: window.as_secs(),
        items,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionRequest {
    /// Delete events older than this many seconds (default: `retention_days`).
    #[schema(minimum = 1, maximum = 3153600000u64)]
    #[serde(default, deserialize_with = "crate::http::int::opt_u64")]
    pub older_than_secs: Option<u64>,
}

/// Run retention now (admin). The same pass also runs periodically.
#[utoipa::path(post, path = "/api/ja4/retention", tag = "ja4", security(("bearer" = [])),
    request_body = RetentionRequest,
    responses((status = 200, body = RetentionOutcome), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn retention(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiJson(req): ApiJson<RetentionRequest>,
) -> Result<Json<RetentionOutcome>, ApiError> {
    c.require(allow::ADMIN)?;
    let secs = match req.older_than_secs {
        Some(s) if s > 0 && s <= 100 * 365 * 86_400 => s,
        Some(_) => {
            return Err(ApiError::bad_request(
                "older_than_secs must be from 1 to 100 years",
            ));
        }
        None if state.config.retention_days == 0 => {
            return Err(ApiError::bad_request(
                "retention is disabled (retention_days = 0); pass older_than_secs",
            ));
        }
        None => u64::from(state.config.retention_days) * 86_400,
    };
    Ok(Json(
        run_retention(&state, Duration::from_secs(secs)).await?,
    ))
}

/// One retention pass: deletes what is older than `age`, counts it and announces it.
pub async fn run_retention(
    state: &AppState,
    age: Duration,
) -> Result<RetentionOutcome, crate::store::StoreError> {
    let cutoff = now_us() - age.as_micros() as i64;
    let out = state.store.retain(cutoff).await?;
    state
        .metrics
        .retention_events_deleted
        .fetch_add(out.events_deleted, Ordering::Relaxed);
    tracing::info!(
        events = out.events_deleted,
        fingerprints = out.fingerprints_deleted,
        partitions = out.partitions_dropped,
        "retention pass"
    );
    state.publish::<RetentionRan>(&out).await;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(parse_window("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_window("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_window("0h"), None);
        assert_eq!(parse_window("h"), None);
        assert_eq!(parse_window("99999999999d"), None);
        assert_eq!(parse_window("1w"), None);
        // Issue 11: a multi-byte last character used to panic the handler (split inside it).
        assert_eq!(parse_window("\u{80}"), None);
        assert_eq!(parse_window("1\u{80}"), None);
        assert_eq!(parse_window("7\u{1F600}"), None);
    }

    #[test]
    fn absurd_limits_are_refused() {
        assert!(parse_limit(Some("0"), 50, 1000).is_err());
        assert!(parse_limit(Some("1001"), 50, 1000).is_err());
        assert!(parse_limit(Some("-1"), 50, 1000).is_err());
        assert!(parse_limit(Some("99999999999999999999"), 50, 1000).is_err());
        assert_eq!(parse_limit(None, 50, 1000).unwrap(), 50);
    }
}
