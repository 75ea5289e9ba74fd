//! The events API: stored events, newest first, filtered by fingerprint, identity, workload and
//! flow (`GET /api/ja4/events`), and one event (`GET /api/ja4/events/{id}`). The store answers
//! from indexes (`crate::store::events`), never by scanning.

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use uuid::Uuid;

use super::{
    DEFAULT_PAGE_SIZE, MAX_FILTER_LEN, parse_limit, parse_method, parse_time, text_filter,
};
use crate::auth::{Caller, allow};
use crate::http::{ApiError, ApiPath, ApiQuery, ErrorBody};
use crate::state::AppState;
use crate::store::events::{EventCursor, EventQuery, EventRecord};
use crate::store::{MAX_PAGE_SIZE, Page};

/// Event search parameters. Every filter is optional; all given ones must match.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Carries a fingerprint of this method: ja4, ja4s, ja4h, ja4l, ja4ls, ja4x, ja4ssh, ja4t,
    /// ja4ts, ja4d, ja4d6.
    #[param(pattern = "^(ja4|ja4s|ja4h|ja4l|ja4ls|ja4x|ja4ssh|ja4t|ja4ts|ja4d|ja4d6)$")]
    pub method: Option<String>,
    /// Carries this fingerprint value (of `method`, if given; else of whichever method it is).
    #[param(min_length = 1, max_length = 512, pattern = "^[!-~]+$")]
    pub value: Option<String>,
    /// Stored with this SPIFFE ID (resolved by the identity service at ingest).
    #[param(min_length = 1, max_length = 2048, pattern = "^[!-~]+$")]
    pub identity: Option<String>,
    /// Of this workload key (see `GET /api/identity/workloads`).
    #[param(min_length = 1, max_length = 2048, pattern = "^[!-~]+$")]
    pub workload: Option<String>,
    #[param(min_length = 1, max_length = 256, pattern = "^[!-~]+$")]
    pub host: Option<String>,
    /// Agent id.
    #[param(min_length = 1, max_length = 256, pattern = "^[!-~]+$")]
    pub agent: Option<String>,
    /// IPv4 or IPv6 address.
    pub src_ip: Option<String>,
    /// IPv4 or IPv6 address.
    pub dst_ip: Option<String>,
    #[param(value_type = Option<u16>, minimum = 0, maximum = 65535)]
    pub dst_port: Option<String>,
    /// TLS server name (SNI).
    #[param(min_length = 1, max_length = 253, pattern = "^[!-~]+$")]
    pub server_name: Option<String>,
    /// Event time at or after (RFC 3339).
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// Event time at or before (RFC 3339).
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1, max_length = 64)]
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
}

fn parse_ip(name: &str, v: Option<String>) -> Result<Option<IpAddr>, ApiError> {
    v.map(|s| {
        s.parse::<IpAddr>().map_err(|_| {
            ApiError::bad_request(format!(
                "{name} must be an IPv4 or IPv6 address such as 10.0.0.1 or 2001:db8::1"
            ))
        })
    })
    .transpose()
}

impl EventParams {
    /// Validates and converts into a store query.
    pub fn into_query(self) -> Result<EventQuery, ApiError> {
        let from_us = parse_time("from", self.from)?;
        let to_us = parse_time("to", self.to)?;
        if let (Some(f), Some(t)) = (from_us, to_us)
            && f > t
        {
            return Err(ApiError::bad_request("from must not be after to"));
        }
        let before = self
            .cursor
            .map(|c| {
                EventCursor::decode(&c).ok_or_else(|| {
                    ApiError::bad_request(
                        "cursor is not one this API issued; start over without it",
                    )
                })
            })
            .transpose()?;
        let dst_port = self
            .dst_port
            .map(|p| {
                p.parse::<u16>().map_err(|_| {
                    ApiError::bad_request("dst_port must be an integer from 0 to 65535")
                })
            })
            .transpose()?;
        Ok(EventQuery {
            method: self.method.as_deref().map(parse_method).transpose()?,
            value: text_filter("value", self.value, MAX_FILTER_LEN)?,
            identity: text_filter("identity", self.identity, 2048)?,
            workload: text_filter("workload", self.workload, 2048)?,
            host: text_filter("host", self.host, 256)?,
            agent: text_filter("agent", self.agent, 256)?,
            src_ip: parse_ip("src_ip", self.src_ip)?,
            dst_ip: parse_ip("dst_ip", self.dst_ip)?,
            dst_port,
            server_name: text_filter("server_name", self.server_name, 253)?,
            from_us,
            to_us,
            before,
            limit: parse_limit(self.limit.as_deref(), DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)?,
        })
    }
}

/// Stored events, newest first, with keyset pagination: each with its flow, fingerprints,
/// workload facts and resolved identity.
#[utoipa::path(get, path = "/api/ja4/events", tag = "ja4", security(("bearer" = [])),
    params(EventParams),
    responses((status = 200, body = Page<EventRecord>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<EventParams>,
) -> Result<Json<Page<EventRecord>>, ApiError> {
    c.require(allow::READ)?;
    let q = p.into_query()?;
    Ok(Json(state.store.events(&q).await?))
}

/// Stored events as OCSF 1.3 Network Activity documents (class 4001) with their JA4+
/// fingerprints in `ja4_fingerprint_list`, for SIEMs: the same filters, order and cursors as
/// `GET /api/ja4/events`, so a collector pages through a time range and carries on later.
#[utoipa::path(get, path = "/api/ja4/export/ocsf", tag = "ja4", security(("bearer" = [])),
    params(EventParams),
    responses((status = 200, body = Page<serde_json::Value>,
               description = "`items`: OCSF Network Activity documents, newest first"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn export_ocsf(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<EventParams>,
) -> Result<Json<Page<serde_json::Value>>, ApiError> {
    c.require(allow::READ)?;
    let q = p.into_query()?;
    let page = state.store.events(&q).await?;
    Ok(Json(Page {
        items: page
            .items
            .iter()
            .map(crate::ocsf::network_activity)
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One stored event.
#[utoipa::path(get, path = "/api/ja4/events/{id}", tag = "ja4", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "The event id (UUIDv7)")),
    responses((status = 200, body = EventRecord), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn one(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EventRecord>, ApiError> {
    c.require(allow::READ)?;
    let id =
        Uuid::parse_str(&id).map_err(|_| ApiError::bad_request("the event id must be a UUID"))?;
    state
        .store
        .event(id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no event {id}")))
}
