//! The OpenAPI document, generated from the handlers' annotations and the types' derives, so
//! it changes when the code does. Served at `GET /api/openapi.json` (no authentication: it
//! describes the API, it holds no data).

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::{Modify, OpenApi};

use crate::{gateway, services};

/// What the document says of itself; its paths and their schemas come from the routers.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "HaIS control plane API",
        description = "Machine-identity security: JA4+ fingerprint ingest and search, agent enrollment and fleet, auth, service status. \
                       Errors are always `{\"error\": {\"code\", \"message\"}}`."
    ),
    tags(
        (name = "ops", description = "health, readiness, metrics"),
        (name = "auth", description = "users, tokens"),
        (name = "bus", description = "durable consumer groups and their dead letters"),
        (name = "gateway", description = "service overview"),
        (name = "services", description = "per-service status"),
    )
)]
pub struct ApiDoc;

/// The API document: [`ApiDoc`] with every route of [`gateway::api`] (each registered with its
/// OpenAPI path), a tag per service of [`services::all`], and the errors every operation can
/// give ([`TruthfulErrors`]). Built from code alone, so it is the same in every process.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(gateway::api().into_openapi());
    let tags = doc.tags.get_or_insert_with(Vec::new);
    for svc in services::all() {
        tags.push(
            TagBuilder::new()
                .name(svc.name())
                .description(Some(svc.description()))
                .build(),
        );
    }
    BearerAuth.modify(&mut doc);
    TruthfulErrors.modify(&mut doc);
    doc
}

/// Adds the `bearer` (JWT) security scheme the paths refer to.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Documents the error answers every operation can give by construction, so no handler can
/// forget one: 401 and 403 where a token is required (missing/expired/revoked token, role),
/// 400/413/415 where a body is read (malformed JSON, too large, not JSON), 400 where
/// parameters are parsed, 404 where a path names something (unknown id or service), 503 where
/// the database is read (unreachable). Answers a handler documents itself are left as written.
struct TruthfulErrors;

impl Modify for TruthfulErrors {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{RefOr, ResponseBuilder};
        let error = |why: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(why)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                "ErrorBody",
                            ))))
                            .build(),
                    )
                    .build(),
            )
        };
        for (path, item) in api.paths.paths.iter_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let params = op.parameters.as_deref().unwrap_or_default();
                let has_path = params
                    .iter()
                    .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Path));
                let mut add = |code: &str, why: &str| {
                    op.responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| error(why));
                };
                if secured {
                    add("401", "no, malformed, expired or revoked token");
                    add("403", "the token's role may not do this");
                }
                if op.request_body.is_some() {
                    add("400", "malformed or invalid body");
                    add("413", "body larger than max_body_bytes");
                    add("415", "body is not application/json");
                }
                if !params.is_empty() {
                    add("400", "invalid parameter");
                }
                if has_path {
                    add("404", "nothing by that name");
                }
                if path.starts_with("/api/") {
                    add(
                        "503",
                        "the database or event bus is unreachable; retry later",
                    );
                }
            }
        }
    }
}

/// Where the document is served.
pub const PATH: &str = "/api/openapi.json";

/// The document, built once per process (it depends on the code only).
static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(document);

/// `GET /api/openapi.json`: the one route the document leaves out (it describes the API, not
/// itself).
pub async fn serve() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(&DOCUMENT)
}
