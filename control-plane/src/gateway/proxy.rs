//! Split-mode reverse proxy and inter-service HTTP calls.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::http::ApiError;
use crate::service::ServiceName;
use crate::state::AppState;

/// Upstream answer deadline for proxied requests.
const PROXY_TIMEOUT: Duration = Duration::from_secs(30);

/// Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Sends `/api/<service>/…` to the service's upstream and streams the answer back.
pub async fn forward(State(state): State<AppState>, req: Request) -> Response {
    match forward_inner(&state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn forward_inner(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let path = req.uri().path();
    let svc = path
        .strip_prefix("/api/")
        .and_then(|rest| rest.split('/').next())
        .and_then(ServiceName::parse)
        .ok_or_else(|| ApiError::not_found("no such service"))?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > state.config.max_body_bytes) {
        return Err(ApiError::payload_too_large(
            "request body exceeds max_body_bytes",
        ));
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| path.to_owned());
    let base = state.config.upstream(svc);
    let uri: Uri = format!("{base}{pq}")
        .parse()
        .map_err(|_| ApiError::internal(&format!("bad upstream URL for {svc}: {base}")))?;
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    parts.headers.remove(header::HOST);
    // Cap streamed bodies too (chunked requests carry no Content-Length).
    let limited = http_body_util::Limited::new(body, state.config.max_body_bytes);
    let upstream_req = axum::http::Request::from_parts(parts, Body::new(limited));
    let resp = tokio::time::timeout(PROXY_TIMEOUT, state.http.request(upstream_req))
        .await
        .map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("service {svc} did not answer in time"),
            )
        })?
        .map_err(|e| {
            tracing::warn!(%svc, upstream = %base, error = %e, "proxy failed");
            ApiError::bad_gateway(format!("service {svc} is unreachable"))
        })?;
    let (mut parts, body) = resp.into_parts();
    for h in HOP_BY_HOP {
        parts.headers.remove(h);
    }
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// GETs JSON from another service with this process's service token.
pub async fn get_json(state: &AppState, url: &str) -> Result<serde_json::Value, String> {
    let token = state
        .auth
        .issue_service(
            &state.service.spiffe_id(&state.config.spire.trust_domain),
            Some(Duration::from_secs(60)),
            None,
        )
        .map_err(|e| e.to_string())?;
    let req = axum::http::Request::get(url)
        .header(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?,
        )
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let resp = state.http.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = http_body_util::Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}
