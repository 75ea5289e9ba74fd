//! The OpenAPI document, generated from the handlers' annotations and the types' derives, so
//! it changes when the code does. Served at `GET /api/openapi.json` (no authentication: it
//! describes the API, it holds no data).

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::auth::routes as auth;
use crate::bus_routes as bus;
use crate::services::identity::routes as identity;
use crate::services::ja4;
use crate::services::spire::routes as spire;
use crate::{gateway, ops, services, store};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "HaIS control plane API",
        description = "Machine-identity security: JA4+ fingerprint ingest and search, agent enrollment and fleet, auth, service status. \
                       Errors are always `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        ops::health, ops::ready, ops::metrics,
        auth::login, auth::refresh, auth::logout, auth::me, auth::change_password,
        auth::create_user, auth::list_users, auth::get_user, auth::update_user, auth::delete_user,
        auth::set_password, auth::service_token, auth::list_service_tokens,
        auth::revoke_service_token,
        gateway::services_status,
        services::status,
        bus::consumers, bus::list_dead_letters, bus::get_dead_letter, bus::replay_dead_letter,
        bus::discard_dead_letter,
        ja4::ingest, ja4::search, ja4::detail, ja4::add_label, ja4::remove_label, ja4::top, ja4::retention,
        spire::create_token, spire::list_agents, spire::get_agent, spire::revoke_agent,
        spire::bundle, spire::external_status,
        identity::create_entry, identity::import_entries, identity::list_entries,
        identity::get_entry, identity::update_entry, identity::delete_entry,
        identity::list_identities,
        identity::get_identity,
    ),
    components(schemas(
        crate::error::ErrorBody, crate::error::ErrorDetail,
        bus::DeadLetterPage, bus::DeadLetterView, store::bus::DeadLetter,
        store::bus::GroupPosition, crate::bus::durable::ConsumerStatus,
        auth::UserView, auth::UserPage, auth::UserRole, auth::UpdateUserRequest,
        auth::SetPasswordRequest, auth::ChangePasswordRequest, auth::LogoutRequest,
        auth::ServiceTokenPage, store::accounts::ServiceTokenRecord,
        store::FingerprintSummary, store::FingerprintDetail, store::DimList, store::DimEntry,
        store::TopEntry, store::RetentionOutcome, store::Page<store::FingerprintSummary>,
        store::spire::AgentRecord, store::spire::HeartbeatRecord,
        crate::services::spire::AgentView, crate::services::spire::AgentStatus,
        crate::services::spire::external::ExternalStatus,
        crate::services::spire::external::AuthorityView,
        crate::services::spire::external::HealthView,
        store::Page<crate::services::spire::AgentView>,
        identity::CreateEntryRequest, identity::ImportResponse, identity::SkippedEntry,
        identity::IdentityView, store::identity::EntryRecord, store::identity::IdentitySummary,
        store::identity::IdentityDetail, store::identity::IdentityFingerprint,
        store::identity::MethodCount, store::Page<store::identity::EntryRecord>,
        store::Page<store::identity::IdentitySummary>,
    )),
    modifiers(&BearerAuth, &TruthfulErrors),
    tags(
        (name = "ops", description = "health, readiness, metrics"),
        (name = "auth", description = "users, tokens"),
        (name = "bus", description = "durable consumer groups and their dead letters"),
        (name = "gateway", description = "service overview"),
        (name = "services", description = "per-service status"),
        (name = "ja4", description = "fingerprints"),
        (name = "spire", description = "SPIFFE CA, join tokens, agent fleet"),
        (name = "identity", description = "registration entries, workload identity inventory"),
    )
)]
pub struct ApiDoc;

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

/// `GET /api/openapi.json`
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
