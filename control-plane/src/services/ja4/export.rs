//! Exports of what HaIS observed, in formats other tools read (the threat service exports the
//! indicators it was given; these export what the fleet presented):
//!
//! * `GET /api/ja4/export/ocsf`: stored events as OCSF Network Activity documents
//!   ([`crate::ocsf`]), with the events API's filters and cursors, for SIEMs.
//! * `GET /api/ja4/export/suricata-dataset`: the JA4s seen (filtered like
//!   `GET /api/ja4/fingerprints`: by host, identity, time…) as a Suricata string dataset — e.g.
//!   the client stacks a namespace presented last week, to alert on any other (`dataset:isnotset`).
//! * `GET /api/ja4/export/misp`: the fingerprints seen as a MISP event of `ja4-plus` objects,
//!   each with its first/last seen and count, not flagged for detection (`to_ids: false`:
//!   sightings, not indicators).

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use hais_shared::fingerprint::Method;

use super::SearchParams;
use super::events::EventParams;
use crate::auth::{Caller, allow};
use crate::http::{ApiError, ApiQuery, ErrorBody};
use crate::services::threat::export as formats;
use crate::state::AppState;
use crate::store::{Cursor, FingerprintQuery, FingerprintSummary, MAX_PAGE_SIZE, Page};

/// Most fingerprints one export reads.
const MAX_OBSERVED: usize = 1_000_000;

/// Stored events as OCSF 1.3 Network Activity documents (class 4001) with their JA4+
/// fingerprints in `ja4_fingerprint_list`, for SIEMs: the same filters, order and cursors as
/// `GET /api/ja4/events`, so a collector pages through a time range and carries on later.
#[utoipa::path(get, path = "/api/ja4/export/ocsf", tag = "ja4", security(("bearer" = [])),
    params(EventParams),
    responses((status = 200, body = Page<serde_json::Value>,
               description = "`items`: OCSF Network Activity documents, newest first"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn ocsf(
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

/// Every fingerprint roll-up matching `q`, all pages (at most [`MAX_OBSERVED`]).
async fn observed(
    state: &AppState,
    mut q: FingerprintQuery,
) -> Result<Vec<FingerprintSummary>, ApiError> {
    q.limit = MAX_PAGE_SIZE;
    let mut out = Vec::new();
    loop {
        let page = state.store.search(&q).await?;
        let more = page.next_cursor.is_some();
        out.extend(page.items);
        if !more || out.len() >= MAX_OBSERVED {
            out.truncate(MAX_OBSERVED);
            return Ok(out);
        }
        let last = out.last().expect("a page with a next cursor has items");
        q.after = Some(Cursor {
            method: last.method.as_str().to_owned(),
            value: last.value.clone(),
        });
    }
}

/// The JA4s seen (the fingerprint search's filters; `method`, if given, must be `ja4`) as a
/// Suricata string dataset: base64 of each, one a line (Suricata computes no other JA4+ method).
#[utoipa::path(get, path = "/api/ja4/export/suricata-dataset", tag = "ja4",
    security(("bearer" = [])), params(SearchParams),
    responses((status = 200, description = "the dataset file", content_type = "text/plain"),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn suricata_dataset(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<SearchParams>,
) -> Result<Response, ApiError> {
    c.require(allow::READ)?;
    let mut q = p.into_query()?;
    if q.method.is_some_and(|m| m != Method::Ja4) {
        return Err(ApiError::bad_request(
            "a Suricata dataset holds JA4s only: leave method out or say ja4",
        ));
    }
    q.method = Some(Method::Ja4);
    let seen = observed(&state, q).await?;
    let body = formats::suricata_dataset_of(seen.iter().map(|f| f.value.as_str()));
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// The fingerprints seen (the fingerprint search's filters) as a MISP event: one `ja4-plus`
/// object each, with first/last seen and count, not flagged for detection.
#[utoipa::path(get, path = "/api/ja4/export/misp", tag = "ja4", security(("bearer" = [])),
    params(SearchParams),
    responses((status = 200, description = "a MISP event", body = serde_json::Value),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn misp(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<SearchParams>,
) -> Result<Json<serde_json::Value>, ApiError> {
    c.require(allow::READ)?;
    let seen = observed(&state, p.into_query()?).await?;
    let time = |us: i64| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    };
    let objects = seen
        .iter()
        .map(|f| {
            let description = format!(
                "observed by HaIS: {} events, first {}, last {}",
                f.count,
                time(f.first_seen_us),
                time(f.last_seen_us)
            );
            formats::misp_object(
                &uuid::Uuid::now_v7(),
                &[(f.method.as_str().to_owned(), f.value.clone())],
                &description,
                "HaIS observation",
                false,
            )
        })
        .collect();
    Ok(Json(formats::misp_event_of(
        objects,
        "HaIS: fingerprints observed",
    )))
}
