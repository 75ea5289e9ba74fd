//! The optional plain-HTTP listener of a TLS deployment (`tls.redirect_http_listen`): every
//! request is answered `308 Permanent Redirect` to the same path on the HTTPS listener, so
//! clients keep their method and body and learn the https:// URL.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::http::ApiError;

/// The redirecting router; `https_port` is the HTTPS listener's port.
pub fn router(https_port: u16) -> Router {
    Router::new().fallback(to_https).with_state(https_port)
}

async fn to_https(State(port): State<u16>, req: Request) -> Response {
    // HTTP/1 names the host in `Host`, HTTP/2 in the `:authority` the URI carries.
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    let Some(host) = host.as_deref().and_then(host_of) else {
        return ApiError::bad_request("a Host header naming this server is required")
            .into_response();
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, location)],
    )
        .into_response()
}

/// The host part of a `Host` value (a DNS name or an IP literal, IPv6 in brackets), without
/// its port; `None` when it is anything else (no user info, no path, no odd characters end up
/// in the Location header).
fn host_of(value: &str) -> Option<&str> {
    let authority: Authority = value.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    let bracketed = host.starts_with('[') && host.ends_with(']');
    let ok = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || b == b'.'
                || b == b'-'
                || (bracketed && b"[]:".contains(&b))
        });
    // `authority` borrows a copy; find the same bytes in the caller's string.
    ok.then(|| &value[..host.len()])
        .filter(|h| h.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_are_stripped_of_ports_and_checked() {
        assert_eq!(host_of("example.com:8080"), Some("example.com"));
        assert_eq!(host_of("localhost"), Some("localhost"));
        assert_eq!(host_of("127.0.0.1:80"), Some("127.0.0.1"));
        assert_eq!(host_of("[::1]:8080"), Some("[::1]"));
        assert_eq!(host_of("evil.com/x"), None);
        assert_eq!(host_of("user@evil.com"), None);
        assert_eq!(host_of(""), None);
        assert_eq!(host_of("a b"), None);
    }
}
