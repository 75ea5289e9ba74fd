//! Response hardening shared by every route of a process: a panic in a handler becomes a 500
//! JSON answer (counted, logged once with its message) instead of a dropped connection, and every
//! answer carries the headers that stop browsers from sniffing, framing or caching API data.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Response, header};
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::http::ApiError;
use crate::state::AppState;

/// Turns a handler's panic into the API's error shape and counts it in
/// `hais_http_panics_total`. The panic message goes to the log, never to the client.
#[derive(Clone, Debug)]
pub struct PanicAnswer(Arc<AtomicU64>);

impl tower_http::catch_panic::ResponseForPanic for PanicAnswer {
    type ResponseBody = Body;

    fn response_for_panic(&mut self, err: Box<dyn Any + Send + 'static>) -> Response<Body> {
        self.0.fetch_add(1, Ordering::Relaxed);
        let what = err
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| err.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        ApiError::internal(&format!("handler panicked: {what}")).into_response()
    }
}

/// Headers every answer gets unless the handler set its own. API answers are JSON for programs:
/// nothing in them is to be rendered, framed, sniffed into another type or kept in a cache
/// (tokens and fingerprint data included).
const HEADERS: [(HeaderName, &str); 5] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (header::CACHE_CONTROL, "no-store"),
];

/// Wraps `router` in the panic catcher (innermost, so the request metrics see its 500) and the
/// security headers.
pub fn harden(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    harden_counting(router, state.metrics.http_panics.clone())
}

/// [`harden`], counting panics in `panics`.
pub fn harden_counting<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    panics: Arc<AtomicU64>,
) -> Router<S> {
    let mut r = router.layer(CatchPanicLayer::custom(PanicAnswer(panics)));
    for (name, value) in HEADERS {
        r = r.layer(SetResponseHeaderLayer::if_not_present(
            name,
            HeaderValue::from_static(value),
        ));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_json_and_is_counted() {
        async fn boom() -> &'static str {
            let s = String::from("\u{80}");
            // The bug of issue 11 item 8: slicing inside a character.
            let _ = &s[..1];
            "unreachable"
        }
        let panics = Arc::new(AtomicU64::new(0));
        let app = harden_counting(Router::new().route("/boom", get(boom)), panics.clone());
        let resp = app
            .oneshot(
                axum::http::Request::get("/boom")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "internal");
        assert_eq!(panics.load(Ordering::Relaxed), 1);
    }
}
