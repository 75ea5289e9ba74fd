//! The correlation service's HTTP API: findings (list, one), and per-identity baselines (read,
//! accept a fingerprint, reset to learning).
//!
//! An identity is one path segment: SPIFFE IDs and workload keys contain `/`, so clients
//! percent-encode it (`spiffe%3A%2F%2Fexample.org%2Fweb`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use hais_correlation::baseline::{Entry, PathStats};
use hais_correlation::{Baseline, Detector, Finding};
use hais_shared::detection::Severity;
use hais_shared::event::{MAX_FINGERPRINT_LEN, MAX_IDENTITY_LEN};
use hais_shared::fingerprint::Method;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Correlation;
use crate::auth::{Caller, allow};
use crate::http::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::services::identity::routes::page_limit;
use crate::services::ja4::{parse_time, text_filter};
use crate::state::AppState;
use crate::store::correlation::FindingQuery;
use crate::store::{Page, now_us};

/// Attempts at writing a baseline an analyst changes while the consumer writes it too.
const WRITE_ATTEMPTS: usize = 5;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_findings))
        .routes(routes!(get_finding))
        .routes(routes!(get_baseline))
        .routes(routes!(accept))
        .routes(routes!(reset))
}

/// A finding as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FindingBody {
    /// UUIDv7; the same finding recurring keeps it.
    pub id: Uuid,
    /// The SPIFFE ID, else the workload key.
    pub identity: String,
    /// `new-fingerprint`, `shared-fingerprint`, `path-change` or `ssh-session`.
    pub detector: String,
    /// The JA4+ method (`ja4`, `ja4h`, …; `ja4ls` for path-change, `ja4ssh` for ssh-session).
    pub method: String,
    /// The fingerprint as baselines compare it (`hops:N` or `latency-gap` for path-change, the
    /// session type for ssh-session).
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// `info`, `low`, `medium`, `high` or `critical`.
    pub severity: String,
    pub summary: String,
    /// The most recent events that show it (at most 20), oldest first.
    pub event_ids: Vec<Uuid>,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub count: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

impl From<Finding> for FindingBody {
    fn from(f: Finding) -> Self {
        FindingBody {
            id: f.id,
            identity: f.key.identity,
            detector: f.key.detector.as_str().to_owned(),
            method: f.key.method.as_str().to_owned(),
            fingerprint: f.key.fingerprint,
            destination: f.key.destination,
            severity: f.severity.as_str().to_owned(),
            summary: f.summary,
            event_ids: f.event_ids,
            first_seen_us: f.first_seen_us,
            last_seen_us: f.last_seen_us,
            count: f.count,
            attributes: f.attributes,
        }
    }
}

/// One fingerprint of a baseline.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EntryBody {
    /// What is compared (the resumption-stable JA4, JA4H sections a and b, a JA4SSH session
    /// type, …).
    pub fingerprint: String,
    /// The plain values seen under it (at most 4).
    pub values: Vec<String>,
    /// The server, for JA4S/JA4X/JA4TS of outbound flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub count: u64,
    /// Part of the baseline (learnt while learning, or accepted); false for what was first seen
    /// once established (each such flow is a finding).
    pub accepted: bool,
}

impl From<&Entry> for EntryBody {
    fn from(e: &Entry) -> Self {
        EntryBody {
            fingerprint: e.key.clone(),
            values: e.values.clone(),
            destination: e.destination.clone(),
            first_seen_us: e.first_seen_us,
            last_seen_us: e.last_seen_us,
            count: e.count,
            accepted: e.accepted,
        }
    }
}

/// The learnt path to one destination.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PathBody {
    pub samples: u32,
    pub hops_min: u32,
    pub hops_max: u32,
    /// TCP/TLS handshake latency gap, when the agent measures it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_mean_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_sd_us: Option<f64>,
}

impl From<&PathStats> for PathBody {
    fn from(p: &PathStats) -> Self {
        let gap = p.gap_n > 0;
        PathBody {
            samples: p.samples,
            hops_min: p.hops_min,
            hops_max: p.hops_max,
            gap_mean_us: gap.then_some(p.gap_mean),
            gap_sd_us: gap.then(|| p.gap_sd()),
        }
    }
}

/// One identity's baseline.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BaselineBody {
    pub identity: String,
    /// `learning` or `established`.
    pub state: String,
    /// The first event since learning (re)started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_us: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub established_us: Option<i64>,
    /// Flows since learning (re)started.
    pub flows: u64,
    /// Fingerprints by method.
    pub fingerprints: BTreeMap<String, Vec<EntryBody>>,
    /// Paths by destination.
    pub paths: BTreeMap<String, PathBody>,
    /// Fingerprints and paths beyond the bounds (64 per method), counted but not kept.
    pub overflow: u64,
}

impl From<&Baseline> for BaselineBody {
    fn from(b: &Baseline) -> Self {
        BaselineBody {
            identity: b.identity.clone(),
            state: b.state().as_str().to_owned(),
            since_us: b.since_us,
            established_us: b.established_us,
            flows: b.flows,
            fingerprints: b
                .methods
                .iter()
                .map(|(m, es)| {
                    (
                        m.as_str().to_owned(),
                        es.iter().map(EntryBody::from).collect(),
                    )
                })
                .collect(),
            paths: b
                .paths
                .iter()
                .map(|(d, p)| (d.clone(), PathBody::from(p)))
                .collect(),
            overflow: b.overflow,
        }
    }
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FindingParams {
    /// Only this identity's (SPIFFE ID or workload key).
    #[param(max_length = 2048)]
    pub identity: Option<String>,
    /// `new-fingerprint`, `shared-fingerprint`, `path-change` or `ssh-session`.
    pub detector: Option<String>,
    /// At least this severity: `info`, `low`, `medium`, `high` or `critical`.
    pub severity: Option<String>,
    /// Seen last at or after this RFC 3339 time.
    pub since: Option<String>,
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(max_length = 64)]
    pub cursor: Option<String>,
}

/// A finding id from a path or cursor: a UUID in its canonical text form.
fn finding_id(s: &str, what: &str) -> Result<String, ApiError> {
    Uuid::parse_str(s)
        .ok()
        .filter(|u| u.to_string() == s)
        .map(|_| s.to_owned())
        .ok_or_else(|| ApiError::bad_request(format!("{what} must be a finding id (a UUID)")))
}

/// An identity from a path: a SPIFFE ID or workload key, without control characters.
fn identity(s: String) -> Result<String, ApiError> {
    if s.is_empty() || s.len() > MAX_IDENTITY_LEN || s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "the identity must be a SPIFFE ID or workload key of 1 to {MAX_IDENTITY_LEN} bytes \
             without control characters (percent-encoded as one path segment)"
        )));
    }
    Ok(s)
}

/// Findings, newest first.
#[utoipa::path(get, path = "/api/correlation/findings", tag = "correlation", security(("bearer" = [])),
    params(FindingParams),
    responses((status = 200, body = Page<FindingBody>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list_findings(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<FindingParams>,
) -> Result<Json<Page<FindingBody>>, ApiError> {
    c.require(allow::READ)?;
    let limit = page_limit(p.limit)?;
    let detector = match p.detector {
        None => None,
        Some(d) => Some(
            Detector::parse(&d)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "detector must be new-fingerprint, shared-fingerprint, path-change or \
                         ssh-session",
                    )
                })?
                .as_str()
                .to_owned(),
        ),
    };
    let severity = p
        .severity
        .map(|s| {
            Severity::parse(&s).ok_or_else(|| {
                ApiError::bad_request("severity must be info, low, medium, high or critical")
            })
        })
        .transpose()?;
    let q = FindingQuery {
        identity: p.identity.map(identity).transpose()?,
        detector,
        severity,
        since_us: parse_time("since", p.since)?,
        before: p
            .cursor
            .as_deref()
            .map(|s| finding_id(s, "cursor"))
            .transpose()?,
        limit,
    };
    let items: Vec<FindingBody> = state
        .store
        .correlation_findings(&q)
        .await?
        .into_iter()
        .map(FindingBody::from)
        .collect();
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|f| f.id.to_string()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// One finding.
#[utoipa::path(get, path = "/api/correlation/findings/{id}", tag = "correlation", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "finding id (UUID)")),
    responses((status = 200, body = FindingBody), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_finding(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FindingBody>, ApiError> {
    c.require(allow::READ)?;
    let id = finding_id(&id, "the finding id")?;
    state
        .store
        .correlation_finding(&id)
        .await?
        .map(|f| Json(f.into()))
        .ok_or_else(|| ApiError::not_found(format!("no finding {id}")))
}

/// An identity's baseline: its state, since when, and its fingerprints by method.
#[utoipa::path(get, path = "/api/correlation/baselines/{identity}", tag = "correlation", security(("bearer" = [])),
    params(("identity" = String, Path, description = "SPIFFE ID or workload key, percent-encoded")),
    responses((status = 200, body = BaselineBody), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_baseline(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BaselineBody>, ApiError> {
    c.require(allow::READ)?;
    let id = identity(id)?;
    let stored = state
        .store
        .correlation_baselines(std::slice::from_ref(&id))
        .await?;
    stored
        .get(&id)
        .map(|s| Json(BaselineBody::from(&s.baseline)))
        .ok_or_else(|| ApiError::not_found(format!("no baseline for {id}")))
}

/// A fingerprint to accept into a baseline.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptRequest {
    /// `ja4`, `ja4h`, `ja4t`, `ja4s`, `ja4x`, …
    pub method: String,
    /// The fingerprint (a plain value or the key baselines compare).
    #[schema(min_length = 1, max_length = 512)]
    pub fingerprint: String,
}

/// Changes `identity`'s stored baseline with `change`, over the version read, trying again when
/// the consumer wrote it meanwhile.
async fn update(
    state: &AppState,
    id: &str,
    change: impl Fn(&mut Baseline),
) -> Result<Baseline, ApiError> {
    let ids = [id.to_owned()];
    for _ in 0..WRITE_ATTEMPTS {
        let stored = state.store.correlation_baselines(&ids).await?;
        let Some(s) = stored.get(id) else {
            return Err(ApiError::not_found(format!("no baseline for {id}")));
        };
        let mut b = s.baseline.clone();
        change(&mut b);
        if state
            .store
            .correlation_put_baseline(&b, Some(s.version), now_us())
            .await?
        {
            return Ok(b);
        }
    }
    Err(ApiError::conflict(format!(
        "the baseline of {id} kept changing; try again"
    )))
}

/// Accept a fingerprint into an identity's baseline (analyst): it stops being a finding.
#[utoipa::path(post, path = "/api/correlation/baselines/{identity}/accept", tag = "correlation", security(("bearer" = [])),
    params(("identity" = String, Path, description = "SPIFFE ID or workload key, percent-encoded")),
    request_body = AcceptRequest,
    responses((status = 200, body = BaselineBody), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn accept(
    State(state): State<AppState>,
    Extension(_svc): Extension<Arc<Correlation>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<AcceptRequest>,
) -> Result<Json<BaselineBody>, ApiError> {
    c.require(allow::ANNOTATE)?;
    let id = identity(id)?;
    let method = Method::ALL
        .into_iter()
        .find(|m| m.as_str() == req.method)
        .ok_or_else(|| ApiError::bad_request(format!("unknown method {:?}", req.method)))?;
    let fp =
        text_filter("fingerprint", Some(req.fingerprint), MAX_FINGERPRINT_LEN)?.unwrap_or_default();
    let now = now_us();
    let b = update(&state, &id, |b| {
        b.accept(method, &fp, now);
    })
    .await?;
    tracing::info!(by = %c.sub, identity = %id, %method, fingerprint = %fp, "fingerprint accepted into a baseline");
    Ok(Json(BaselineBody::from(&b)))
}

/// Reset an identity to learning (analyst): learning restarts with its next event.
#[utoipa::path(post, path = "/api/correlation/baselines/{identity}/reset", tag = "correlation", security(("bearer" = [])),
    params(("identity" = String, Path, description = "SPIFFE ID or workload key, percent-encoded")),
    responses((status = 200, body = BaselineBody), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn reset(
    State(state): State<AppState>,
    Extension(_svc): Extension<Arc<Correlation>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<BaselineBody>, ApiError> {
    c.require(allow::ANNOTATE)?;
    let id = identity(id)?;
    let b = update(&state, &id, Baseline::reset).await?;
    tracing::info!(by = %c.sub, identity = %id, "baseline reset to learning");
    Ok(Json(BaselineBody::from(&b)))
}
