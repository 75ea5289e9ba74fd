//! The HTTP layer every route shares: the API's error shape ([`ApiError`], [`ErrorBody`]) and
//! the extractors that turn bad input into 4xx JSON ([`ApiJson`], [`ApiQuery`], [`ApiPath`],
//! [`int`]).
//!
//! It sits below the services and the gateway and imports neither, so a service can depend on
//! it without depending on the router that mounts the service (which depends on every service).

pub mod client;
mod error;
mod extract;

pub use error::{ApiError, ErrorBody, ErrorDetail};
pub use extract::{ApiJson, ApiPath, ApiQuery, int};

use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

/// Registers `routes` (from `utoipa_axum::routes!`) at `axum_path` while documenting them at
/// their OpenAPI path: for a parameter that spans path segments, which axum writes `{*name}` and
/// OpenAPI `{name}`. Every other route goes through `OpenApiRouter::routes` directly.
pub fn routes_at<S: Clone + Send + Sync + 'static>(
    router: OpenApiRouter<S>,
    axum_path: &str,
    (schemas, paths, method_router): UtoipaMethodRouter<S>,
) -> OpenApiRouter<S> {
    let mut router = router.route(axum_path, method_router);
    let doc = router.get_openapi_mut();
    for (path, item) in paths.paths {
        match doc.paths.paths.get_mut(&path) {
            Some(existing) => existing.merge_operations(item),
            None => {
                doc.paths.paths.insert(path, item);
            }
        }
    }
    doc.components
        .get_or_insert_with(Default::default)
        .schemas
        .extend(schemas);
    router
}
