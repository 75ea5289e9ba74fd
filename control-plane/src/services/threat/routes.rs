//! The threat service's HTTP API: indicators (list and search, add, expire), feeds (CRUD,
//! status, refresh now), lookups of an address or a fingerprint, the map, the threat matches,
//! and exports.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use hais_shared::detection::Detection;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::Threat;
use super::export;
use super::geo::Place;
use super::indicator::{self, Indicator, Kind, Labels, Verdict};
use super::refresh::{self, RefreshError};
use crate::auth::{Caller, allow};
use crate::http::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::services::identity::routes::page_limit;
use crate::services::ja4::parse_time;
use crate::state::AppState;
use crate::store::threat::{CountryCount, Feed, FeedSpec, IndicatorQuery};
use crate::store::{Page, now_us};

/// The feed analysts' own indicators belong to.
pub const MANUAL_FEED: &str = "manual";

/// Most indicators one add request carries.
pub const MAX_ADD: usize = 1000;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_indicators, add_indicators))
        .routes(routes!(get_indicator))
        .routes(routes!(expire_indicator))
        .routes(routes!(list_feeds, create_feed))
        .routes(routes!(get_feed, put_feed, delete_feed))
        .routes(routes!(refresh_feed))
        .routes(routes!(lookup))
        .routes(routes!(map))
        .routes(routes!(list_matches))
        .routes(routes!(export_indicators))
}

fn started(t: Option<Extension<Arc<Threat>>>) -> Result<Arc<Threat>, ApiError> {
    t.map(|Extension(t)| t)
        .ok_or_else(|| ApiError::unavailable("the threat service is not started in this process"))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct IndicatorParams {
    /// Only this feed's (`manual` for analysts' own).
    #[param(max_length = 64)]
    pub feed: Option<String>,
    /// `fingerprint`, `combination`, `ip` or `domain`.
    pub kind: Option<String>,
    /// Fingerprint method (`ja4`, `ja4s`, … `ja3`).
    pub method: Option<String>,
    /// At least this verdict: `benign`, `suspicious` or `malicious`.
    pub verdict: Option<String>,
    /// The canonical value starts with this (e.g. a JA4's `a` section).
    #[param(max_length = 512)]
    pub prefix: Option<String>,
    /// Exactly this canonical value.
    #[param(max_length = 2048)]
    pub value: Option<String>,
    /// Also expired indicators (default false).
    pub include_expired: Option<bool>,
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(max_length = 64)]
    pub cursor: Option<String>,
}

fn uuid_text(s: &str, what: &str) -> Result<String, ApiError> {
    Uuid::parse_str(s)
        .ok()
        .filter(|u| u.to_string() == s)
        .map(|_| s.to_owned())
        .ok_or_else(|| ApiError::bad_request(format!("{what} must be an indicator id (a UUID)")))
}

fn parse_kind(s: &str) -> Result<Kind, ApiError> {
    Kind::parse(s)
        .ok_or_else(|| ApiError::bad_request("kind must be fingerprint, combination, ip or domain"))
}

fn parse_verdict(s: &str) -> Result<Verdict, ApiError> {
    Verdict::parse(s)
        .ok_or_else(|| ApiError::bad_request("verdict must be benign, suspicious or malicious"))
}

fn parse_method(s: &str) -> Result<String, ApiError> {
    indicator::METHODS
        .iter()
        .find(|m| **m == s)
        .map(|m| (*m).to_owned())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "method must be one of {}",
                indicator::METHODS.join(", ")
            ))
        })
}

/// Indicators, newest first.
#[utoipa::path(get, path = "/api/threat/indicators", tag = "threat", security(("bearer" = [])),
    params(IndicatorParams),
    responses((status = 200, body = Page<Indicator>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list_indicators(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<IndicatorParams>,
) -> Result<Json<Page<Indicator>>, ApiError> {
    c.require(allow::READ)?;
    let limit = page_limit(p.limit)?;
    let q = IndicatorQuery {
        feed: p.feed,
        kind: p.kind.as_deref().map(parse_kind).transpose()?,
        method: p.method.as_deref().map(parse_method).transpose()?,
        verdict: p.verdict.as_deref().map(parse_verdict).transpose()?,
        prefix: p.prefix.map(|s| s.to_ascii_lowercase()),
        value: p.value,
        include_expired: p.include_expired.unwrap_or(false),
        now_us: now_us(),
        before: p
            .cursor
            .as_deref()
            .map(|s| uuid_text(s, "cursor"))
            .transpose()?,
        limit,
    };
    let items = state.store.threat_indicators(&q).await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|i| i.id.to_string()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// An indicator an analyst adds.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIndicator {
    /// `fingerprint`, `combination`, `ip` or `domain`.
    pub kind: String,
    /// For `fingerprint`: `ja4`, `ja4s`, `ja4h`, `ja4x`, … (`ja3` too).
    #[serde(default)]
    pub method: Option<String>,
    /// A fingerprint (sections may be `*`), a combination (`ja4=…+ja4s=…`), an address or
    /// CIDR, a domain.
    pub value: String,
    #[serde(default)]
    pub labels: Labels,
    /// `benign`, `suspicious` or `malicious`.
    pub verdict: String,
    /// 0 to 100 (default 50).
    #[serde(default)]
    pub confidence: Option<u8>,
    #[serde(default)]
    pub notes: Option<String>,
    /// RFC 3339; after it the indicator no longer matches.
    #[serde(default)]
    pub expires: Option<String>,
}

/// Indicators to add.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIndicators {
    /// 1 to 1000.
    pub indicators: Vec<NewIndicator>,
}

/// Adds indicators to the feed `manual` (an indicator already there with the same kind, method
/// and value is updated). All are checked before any is stored.
#[utoipa::path(post, path = "/api/threat/indicators", tag = "threat", security(("bearer" = [])),
    request_body = NewIndicators,
    responses((status = 201, body = Vec<Indicator>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn add_indicators(
    State(state): State<AppState>,
    t: Option<Extension<Arc<Threat>>>,
    Caller(c): Caller,
    ApiJson(NewIndicators { indicators: body }): ApiJson<NewIndicators>,
) -> Result<(axum::http::StatusCode, Json<Vec<Indicator>>), ApiError> {
    c.require(allow::ANNOTATE)?;
    let t = started(t)?;
    if body.is_empty() || body.len() > MAX_ADD {
        return Err(ApiError::bad_request(format!(
            "give 1 to {MAX_ADD} indicators"
        )));
    }
    let now = now_us();
    let mut out = Vec::with_capacity(body.len());
    for (n, b) in body.into_iter().enumerate() {
        let at = |m: String| ApiError::bad_request(format!("indicator {n}: {m}"));
        let kind = parse_kind(&b.kind)?;
        let method = match (kind, b.method) {
            (Kind::Fingerprint, Some(m)) => Some(parse_method(&m)?),
            (Kind::Fingerprint, None) => return Err(at("a fingerprint needs its method".into())),
            (_, Some(_)) => return Err(at("only fingerprints have a method".into())),
            (_, None) => None,
        };
        let (value, sections) =
            indicator::canonical(kind, method.as_deref(), &b.value).map_err(|e| at(e.0))?;
        let confidence = b.confidence.unwrap_or(50);
        if confidence > 100 {
            return Err(at("confidence must be 0 to 100".into()));
        }
        out.push(Indicator {
            id: Uuid::now_v7(),
            feed: MANUAL_FEED.into(),
            kind,
            method,
            value,
            sections,
            labels: b.labels,
            verdict: parse_verdict(&b.verdict)?,
            confidence,
            source: format!("analyst {}", c.sub),
            licence: None,
            notes: b.notes,
            first_seen_us: now,
            last_seen_us: now,
            expires_us: parse_time("expires", b.expires)?,
        });
    }
    state.store.threat_upsert_indicators(&out).await?;
    t.reload().await?;
    let mut stored = Vec::with_capacity(out.len());
    for i in &out {
        let q = IndicatorQuery {
            feed: Some(MANUAL_FEED.into()),
            value: Some(i.value.clone()),
            kind: Some(i.kind),
            method: i.method.clone(),
            include_expired: true,
            limit: 1,
            ..IndicatorQuery::default()
        };
        stored.extend(state.store.threat_indicators(&q).await?);
    }
    Ok((axum::http::StatusCode::CREATED, Json(stored)))
}

/// One indicator.
#[utoipa::path(get, path = "/api/threat/indicators/{id}", tag = "threat", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "indicator id (UUID)")),
    responses((status = 200, body = Indicator), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_indicator(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Indicator>, ApiError> {
    c.require(allow::READ)?;
    let id = uuid_text(&id, "the indicator id")?;
    state
        .store
        .threat_indicator(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no indicator {id}")))
}

/// Expires an indicator now: it stops matching (a feed's next refresh brings it back if the
/// feed still lists it).
#[utoipa::path(post, path = "/api/threat/indicators/{id}/expire", tag = "threat", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "indicator id (UUID)")),
    responses((status = 200, body = Indicator), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn expire_indicator(
    State(state): State<AppState>,
    t: Option<Extension<Arc<Threat>>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Indicator>, ApiError> {
    c.require(allow::ANNOTATE)?;
    let t = started(t)?;
    let id = uuid_text(&id, "the indicator id")?;
    if !state.store.threat_expire(&id, now_us()).await? {
        return Err(ApiError::not_found(format!("no indicator {id}")));
    }
    t.reload().await?;
    state
        .store
        .threat_indicator(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no indicator {id}")))
}

/// Feeds with their last refresh: when, rows ok and bad, the first bad rows, the last error.
#[utoipa::path(get, path = "/api/threat/feeds", tag = "threat", security(("bearer" = [])),
    responses((status = 200, body = Vec<Feed>), (status = 401, body = ErrorBody)))]
pub async fn list_feeds(
    State(state): State<AppState>,
    Caller(c): Caller,
) -> Result<Json<Vec<Feed>>, ApiError> {
    c.require(allow::READ)?;
    Ok(Json(state.store.threat_feeds().await?))
}

fn check_spec(s: &FeedSpec) -> Result<(), ApiError> {
    if !refresh::valid_name(&s.name) || s.name == MANUAL_FEED {
        return Err(ApiError::bad_request(
            "name must be 1 to 64 letters, digits, '-', '_' or '.', and not 'manual'",
        ));
    }
    let loc = s.location.as_str();
    if loc.is_empty() || loc.len() > 2048 || loc.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "location must be an http(s):// URL or a file path (at most 2048 bytes)",
        ));
    }
    if !(0..=30 * 86400).contains(&s.interval_secs) || (1..60).contains(&s.interval_secs) {
        return Err(ApiError::bad_request(
            "interval_secs must be 0 (on request only) or 60 to 2592000",
        ));
    }
    Ok(())
}

/// The feed after a refresh attempt, or the refresh's error as the API gives it.
async fn refreshed(t: &Threat, name: &str) -> Result<Feed, ApiError> {
    match refresh::refresh(t, name).await {
        Ok(f) => Ok(f),
        Err(RefreshError::NoFeed(n)) => Err(ApiError::not_found(format!("no feed {n}"))),
        Err(RefreshError::Fetch(e)) => Err(ApiError::bad_gateway(format!(
            "feed {name} could not be fetched: {e}"
        ))),
        Err(RefreshError::Store(e)) => Err(e.into()),
    }
}

/// Creates a feed and imports it at once (a feed that cannot be fetched is still created, with
/// the error in its status).
#[utoipa::path(post, path = "/api/threat/feeds", tag = "threat", security(("bearer" = [])),
    request_body = FeedSpec,
    responses((status = 201, body = Feed), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn create_feed(
    State(state): State<AppState>,
    t: Option<Extension<Arc<Threat>>>,
    Caller(c): Caller,
    ApiJson(spec): ApiJson<FeedSpec>,
) -> Result<(axum::http::StatusCode, Json<Feed>), ApiError> {
    c.require(allow::ADMIN)?;
    let t = started(t)?;
    check_spec(&spec)?;
    if state.store.threat_feed(&spec.name).await?.is_some() {
        return Err(ApiError::conflict(format!("feed {} exists", spec.name)));
    }
    state.store.threat_put_feed(&spec, now_us()).await?;
    let feed = match refreshed(&t, &spec.name).await {
        Ok(f) => f,
        Err(_) => stored_feed(&state, &spec.name).await?,
    };
    Ok((axum::http::StatusCode::CREATED, Json(feed)))
}

fn feed_name(n: String) -> Result<String, ApiError> {
    if refresh::valid_name(&n) {
        Ok(n)
    } else {
        Err(ApiError::bad_request(
            "a feed name is 1 to 64 letters, digits, '-', '_' or '.'",
        ))
    }
}

/// The stored feed `name`, or 404.
async fn stored_feed(state: &AppState, name: &str) -> Result<Feed, ApiError> {
    state
        .store
        .threat_feed(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no feed {name}")))
}

/// One feed and its status.
#[utoipa::path(get, path = "/api/threat/feeds/{name}", tag = "threat", security(("bearer" = [])),
    params(("name" = String, Path, description = "feed name")),
    responses((status = 200, body = Feed), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_feed(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Feed>, ApiError> {
    c.require(allow::READ)?;
    let name = feed_name(name)?;
    stored_feed(&state, &name).await.map(Json)
}

/// Changes a feed's specification (the name in the body must be the path's); its indicators
/// stay until the next refresh.
#[utoipa::path(put, path = "/api/threat/feeds/{name}", tag = "threat", security(("bearer" = [])),
    params(("name" = String, Path, description = "feed name")),
    request_body = FeedSpec,
    responses((status = 200, body = Feed), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn put_feed(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(spec): ApiJson<FeedSpec>,
) -> Result<Json<Feed>, ApiError> {
    c.require(allow::ADMIN)?;
    let name = feed_name(name)?;
    if spec.name != name {
        return Err(ApiError::bad_request("the body's name must be the path's"));
    }
    check_spec(&spec)?;
    if state.store.threat_feed(&name).await?.is_none() {
        return Err(ApiError::not_found(format!("no feed {name}")));
    }
    state.store.threat_put_feed(&spec, now_us()).await?;
    stored_feed(&state, &name).await.map(Json)
}

/// Deletes a feed and its indicators.
#[utoipa::path(delete, path = "/api/threat/feeds/{name}", tag = "threat", security(("bearer" = [])),
    params(("name" = String, Path, description = "feed name")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_feed(
    State(state): State<AppState>,
    t: Option<Extension<Arc<Threat>>>,
    Caller(c): Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    c.require(allow::ADMIN)?;
    let t = started(t)?;
    let name = feed_name(name)?;
    if !state.store.threat_delete_feed(&name).await? {
        return Err(ApiError::not_found(format!("no feed {name}")));
    }
    t.reload().await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Fetches and imports the feed now; answers with its status after the import.
#[utoipa::path(post, path = "/api/threat/feeds/{name}/refresh", tag = "threat", security(("bearer" = [])),
    params(("name" = String, Path, description = "feed name")),
    responses((status = 200, body = Feed), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn refresh_feed(
    t: Option<Extension<Arc<Threat>>>,
    Caller(c): Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Feed>, ApiError> {
    c.require(allow::ADMIN)?;
    let t = started(t)?;
    let name = feed_name(name)?;
    Ok(Json(refreshed(&t, &name).await?))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LookupParams {
    /// An IPv4 or IPv6 address.
    pub ip: Option<String>,
    /// A fingerprint (with `method`, else the method its shape says).
    #[param(max_length = 512)]
    pub fingerprint: Option<String>,
    /// `ja4`, `ja4s`, `ja4h`, … (default: guessed from the fingerprint's shape).
    pub method: Option<String>,
}

/// What is known of an address or a fingerprint.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LookupAnswer {
    /// For an address: country and ASN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<Place>,
    /// For a fingerprint: its method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The worst verdict of `indicators` (none: nothing known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Indicators that match it on their own (IP networks containing the address; exact and
    /// section fingerprints).
    pub indicators: Vec<Indicator>,
    /// Combinations it is one term of: they match only with the other terms on one stream.
    pub combinations: Vec<Indicator>,
}

/// The method a fingerprint's shape says (first that validates).
fn guess_method(v: &str) -> Option<&'static str> {
    [
        "ja4", "ja4s", "ja4h", "ja4x", "ja4t", "ja4ts", "ja4ssh", "ja4l", "ja3",
    ]
    .into_iter()
    .find(|m| indicator::fingerprint(m, v).is_ok_and(|(_, s)| !s.is_empty()))
}

/// Reputation, country and ASN of an address (`?ip=`), or labels, verdicts and sources of a
/// fingerprint (`?fingerprint=`, optionally `&method=`).
#[utoipa::path(get, path = "/api/threat/lookup", tag = "threat", security(("bearer" = [])),
    params(LookupParams),
    responses((status = 200, body = LookupAnswer), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn lookup(
    t: Option<Extension<Arc<Threat>>>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<LookupParams>,
) -> Result<Json<LookupAnswer>, ApiError> {
    c.require(allow::READ)?;
    let t = started(t)?;
    let m = t.matcher();
    let deref = |v: Vec<Arc<Indicator>>| v.into_iter().map(|i| (*i).clone()).collect::<Vec<_>>();
    let answer = match (p.ip, p.fingerprint) {
        (Some(ip), None) => {
            let ip: IpAddr = ip
                .trim()
                .parse()
                .map_err(|_| ApiError::bad_request("ip must be an IPv4 or IPv6 address"))?;
            let indicators = deref(m.ip(ip));
            LookupAnswer {
                place: Some(t.geo.lookup(ip)),
                method: None,
                verdict: indicators.iter().map(|i| i.verdict).max(),
                indicators,
                combinations: Vec::new(),
            }
        }
        (None, Some(fp)) => {
            let fp = fp.trim().to_ascii_lowercase();
            let method = match p.method {
                Some(m) => parse_method(&m)?,
                None => guess_method(&fp)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "the fingerprint's method cannot be told from its shape: give method=",
                        )
                    })?
                    .to_owned(),
            };
            indicator::fingerprint(&method, &fp).map_err(|e| ApiError::bad_request(e.0))?;
            let (alone, partial) = m.fingerprint(&method, &fp);
            let indicators = deref(alone);
            LookupAnswer {
                place: None,
                verdict: indicators.iter().map(|i| i.verdict).max(),
                method: Some(method),
                indicators,
                combinations: deref(partial),
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of ip= and fingerprint=",
            ));
        }
    };
    Ok(Json(answer))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MapParams {
    /// RFC 3339; counts from the hour containing it (default: the last 24 hours).
    pub since: Option<String>,
}

/// Events and distinct identities per remote country (the dashboard's map).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MapAnswer {
    pub since_us: i64,
    pub countries: Vec<CountryCount>,
    /// Attribution the geolocation data's licence asks for.
    pub attribution: String,
}

/// The attribution of the data `scripts/fetch-geo.sh` fetches.
pub const GEO_ATTRIBUTION: &str = "IP to country: IPtoASN (PDDL-1.0) via ip-location-db; \
     ASN: RouteViews and DB-IP (CC BY 4.0, https://db-ip.com) via ip-location-db";

/// Events and identities per country since `since`.
#[utoipa::path(get, path = "/api/threat/map", tag = "threat", security(("bearer" = [])),
    params(MapParams),
    responses((status = 200, body = MapAnswer), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn map(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<MapParams>,
) -> Result<Json<MapAnswer>, ApiError> {
    c.require(allow::READ)?;
    let since = parse_time("since", p.since)?.unwrap_or_else(|| now_us() - 24 * super::HOUR_US);
    let since = since.div_euclid(super::HOUR_US) * super::HOUR_US;
    Ok(Json(MapAnswer {
        since_us: since,
        countries: state.store.threat_map(since).await?,
        attribution: GEO_ATTRIBUTION.into(),
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MatchParams {
    /// Only this identity's (SPIFFE ID or workload key).
    #[param(max_length = 2048)]
    pub identity: Option<String>,
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// Threat matches (as published to the alert service), most recently seen first.
#[utoipa::path(get, path = "/api/threat/matches", tag = "threat", security(("bearer" = [])),
    params(MatchParams),
    responses((status = 200, body = Vec<Object>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list_matches(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<MatchParams>,
) -> Result<Json<Vec<Detection>>, ApiError> {
    c.require(allow::READ)?;
    let limit = page_limit(p.limit)?;
    Ok(Json(
        state
            .store
            .threat_matches(p.identity.as_deref(), limit)
            .await?,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `suricata-dataset`, `suricata-rules`, `zeek-intel` or `misp`.
    pub format: String,
    /// Only this feed's indicators.
    #[param(max_length = 64)]
    pub feed: Option<String>,
    /// At least this verdict (default `suspicious`).
    pub verdict: Option<String>,
    /// For `suricata-rules`: the dataset file the rules load (default `hais-ja4.lst`).
    #[param(max_length = 256)]
    pub dataset_file: Option<String>,
}

/// Most indicators one export reads.
const EXPORT_LIMIT: u32 = 5_000_000;

/// The live indicators (at least `verdict`, default suspicious) in a format another tool reads.
#[utoipa::path(get, path = "/api/threat/export", tag = "threat", security(("bearer" = [])),
    params(ExportParams),
    responses((status = 200, description = "the export (text or JSON)", content_type = "text/plain"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn export_indicators(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<ExportParams>,
) -> Result<Response, ApiError> {
    c.require(allow::READ)?;
    let verdict = p
        .verdict
        .as_deref()
        .map(parse_verdict)
        .transpose()?
        .unwrap_or(Verdict::Suspicious);
    let dataset_file = p.dataset_file.unwrap_or_else(|| "hais-ja4.lst".into());
    if dataset_file.is_empty()
        || !dataset_file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    {
        return Err(ApiError::bad_request(
            "dataset_file must be a path of letters, digits, '-', '_', '.' and '/'",
        ));
    }
    let read = async {
        state
            .store
            .threat_indicators(&IndicatorQuery {
                feed: p.feed.clone(),
                verdict: Some(verdict),
                now_us: now_us(),
                limit: EXPORT_LIMIT,
                ..IndicatorQuery::default()
            })
            .await
    };
    let text = |body: String| ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body);
    Ok(match p.format.as_str() {
        "suricata-dataset" => text(export::suricata_dataset(&read.await?)).into_response(),
        "suricata-rules" => text(export::suricata_rules(&dataset_file)).into_response(),
        "zeek-intel" => text(export::zeek_intel(&read.await?)).into_response(),
        "misp" => Json(export::misp_event(&read.await?, "HaIS threat indicators")).into_response(),
        _ => {
            return Err(ApiError::bad_request(
                "format must be suricata-dataset, suricata-rules, zeek-intel or misp",
            ));
        }
    })
}
