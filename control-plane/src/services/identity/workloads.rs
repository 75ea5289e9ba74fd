//! The identity service's API for discovered workloads and registration templates: what runs in
//! the fleet (with or without an identity), an entry made from what was seen, and templates that
//! assign identities automatically.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hais_shared::registration::{RegistrationEntry, validate};
use hais_shared::template::RegistrationTemplate;
use hais_shared::workload::WorkloadKind;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Identity;
use super::routes::{announce, check_description, entry_id, insert, page_limit};
use crate::auth::{Caller, allow};
use crate::bus::topics::EntriesAction;
use crate::http::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::state::AppState;
use crate::store::identity::EntryRecord;
use crate::store::templates::TemplateRecord;
use crate::store::workloads::{WorkloadDetail, WorkloadQuery, WorkloadSummary};
use crate::store::{Page, now_us};

/// Longest filter value accepted.
const MAX_FILTER: usize = 2048;

/// The routes with their OpenAPI paths.
pub fn routes() -> OpenApiRouter<AppState> {
    let r = OpenApiRouter::new()
        .routes(routes!(list_workloads))
        .routes(routes!(entry_from_workload))
        .routes(routes!(create_template, list_templates))
        .routes(routes!(get_template, delete_template));
    // A workload key holds slashes (executable paths, `deployment/web`): a wildcard segment.
    crate::http::routes_at(r, "/api/identity/workloads/{*key}", routes!(get_workload))
}

/// Filters of the workloads list; all given must hold.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WorkloadParams {
    /// Seen on this host.
    #[param(max_length = 2048)]
    pub host: Option<String>,
    /// Seen by this agent.
    #[param(max_length = 2048)]
    pub agent: Option<String>,
    /// Kubernetes namespace.
    #[param(max_length = 2048)]
    pub namespace: Option<String>,
    /// `k8s`, `container` or `host`.
    #[param(pattern = "^(k8s|container|host)$")]
    pub kind: Option<String>,
    /// `true`: only workloads an entry or template names now; `false`: only the others.
    pub resolved: Option<bool>,
    /// Part of the workload key (case-sensitive), e.g. an executable or image name.
    #[param(max_length = 2048)]
    pub q: Option<String>,
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1, max_length = 4096)]
    pub cursor: Option<String>,
}

/// A filter value: at most [`MAX_FILTER`] bytes, no control characters, not empty.
fn filter(name: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(v) if v.is_empty() || v.len() > MAX_FILTER || v.chars().any(char::is_control) => {
            Err(ApiError::bad_request(format!(
                "{name}: 1 to {MAX_FILTER} bytes, no control characters"
            )))
        }
        v => Ok(v),
    }
}

/// Discovered workloads, in key order: every workload seen in stored events, whether an entry
/// names it or not, with the facts and selectors of its newest event, its SPIFFE ID if an entry
/// or template gives it one now, first/last seen, flows, fingerprints by method and hosts.
#[utoipa::path(get, path = "/api/identity/workloads", tag = "identity", security(("bearer" = [])),
    params(WorkloadParams),
    responses((status = 200, body = Page<WorkloadSummary>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list_workloads(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<WorkloadParams>,
) -> Result<Json<Page<WorkloadSummary>>, ApiError> {
    c.require(allow::READ)?;
    let limit = page_limit(p.limit)?;
    if let Some(k) = &p.kind
        && !WorkloadKind::ALL.iter().any(|x| x.as_str() == k)
    {
        return Err(ApiError::bad_request("kind must be k8s, container or host"));
    }
    let after = p
        .cursor
        .as_deref()
        .map(|s| {
            URL_SAFE_NO_PAD
                .decode(s)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ApiError::bad_request("cursor is not a next_cursor value"))
        })
        .transpose()?;
    let q = WorkloadQuery {
        host: filter("host", p.host)?,
        agent: filter("agent", p.agent)?,
        namespace: filter("namespace", p.namespace)?,
        kind: p.kind,
        resolved: p.resolved,
        q: filter("q", p.q)?,
        after,
        limit,
    };
    let items = state.store.list_workloads(&q).await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|w| URL_SAFE_NO_PAD.encode(&w.key)))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// One discovered workload: its facts and selectors, SPIFFE ID, all its fingerprints by method,
/// hosts, agents and destinations. The key goes in the path as is or percent-encoded
/// (`/api/identity/workloads/host:web-01:curl:root`).
#[utoipa::path(get, path = "/api/identity/workloads/{key}", tag = "identity", security(("bearer" = [])),
    params(("key" = String, Path, description = "the workload key")),
    responses((status = 200, body = WorkloadDetail), (status = 404, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn get_workload(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(key): ApiPath<String>,
) -> Result<Json<WorkloadDetail>, ApiError> {
    c.require(allow::READ)?;
    state
        .store
        .workload_detail(&key)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no workload {key}")))
}

/// An entry for a discovered workload.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EntryFromWorkload {
    /// The workload key.
    #[schema(min_length = 1, max_length = 2048)]
    pub workload: String,
    /// The SPIFFE ID to give it.
    #[schema(
        min_length = 10,
        max_length = 2048,
        pattern = "^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*$"
    )]
    pub spiffe_id: String,
    /// Selectors to match on, each one the workload presents (see its `selectors`). Default:
    /// `hais:workload:<key>` alone, which matches exactly this workload wherever it runs.
    #[schema(max_items = 32)]
    #[serde(default)]
    pub selectors: Vec<String>,
    #[schema(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub description: Option<String>,
}

/// Create a registration entry from a discovered workload (admin), with selectors picked among
/// those it presents. It applies at once: the inventory shows the SPIFFE ID, and the workload's
/// next events carry it (events already stored keep what they were stored with).
#[utoipa::path(post, path = "/api/identity/entries/from-workload", tag = "identity",
    security(("bearer" = [])), request_body = EntryFromWorkload,
    responses((status = 201, body = EntryRecord),
              (status = 400, description = "a selector the workload does not present, or a malformed one", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, description = "no such workload", body = ErrorBody),
              (status = 409, description = "an entry with this SPIFFE ID and these selectors exists", body = ErrorBody)))]
pub async fn entry_from_workload(
    State(state): State<AppState>,
    Extension(identity): Extension<Arc<Identity>>,
    Caller(c): Caller,
    ApiJson(req): ApiJson<EntryFromWorkload>,
) -> Result<(StatusCode, Json<EntryRecord>), ApiError> {
    c.require(allow::ADMIN)?;
    let w = state
        .store
        .workload_detail(&req.workload)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no workload {}", req.workload)))?;
    let selectors = if req.selectors.is_empty() {
        vec![format!("hais:workload:{}", w.summary.key)]
    } else {
        req.selectors
    };
    let (spiffe_id, selectors) =
        validate(&req.spiffe_id, &selectors).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let presented = &w.summary.selectors;
    if let Some(s) = selectors.iter().find(|s| {
        let text = s.to_string();
        !presented.contains(&text)
    }) {
        return Err(ApiError::bad_request(format!(
            "workload {} does not present selector {s}",
            w.summary.key
        )));
    }
    check_description(&req.description)?;
    let entry = RegistrationEntry {
        id: uuid::Uuid::now_v7().to_string(),
        spiffe_id,
        selectors,
        description: req.description,
    };
    let rec = insert(&state, &entry, &c.sub).await?.map_err(|existing| {
        ApiError::conflict(format!(
            "entry {existing} already maps these selectors to {}",
            entry.spiffe_id
        ))
    })?;
    announce(
        &state,
        &identity,
        EntriesAction::Created,
        vec![rec.id.clone()],
    )
    .await;
    Ok((StatusCode::CREATED, Json(rec)))
}

/// A new registration template.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplateRequest {
    /// SPIFFE ID pattern with placeholders: `{td}`, `{namespace}`, `{service_account}`,
    /// `{workload}`, `{workload_kind}`, `{pod}`, `{image}`, `{container}`, `{host}`, `{agent}`,
    /// `{executable}`, `{process}`, `{user}`, `{uid}`; e.g.
    /// `spiffe://{td}/ns/{namespace}/sa/{service_account}`.
    #[schema(min_length = 10, max_length = 2048)]
    pub pattern: String,
    /// Scope: the template applies to workloads presenting all of these (0 to 32).
    #[schema(max_items = 32)]
    #[serde(default)]
    pub selectors: Vec<String>,
    #[schema(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub description: Option<String>,
}

/// Create a registration template (admin). Every workload in its scope whose facts fill the
/// pattern gets the rendered SPIFFE ID, unless an entry names it: at once in the inventory, and
/// on its next events.
#[utoipa::path(post, path = "/api/identity/templates", tag = "identity", security(("bearer" = [])),
    request_body = CreateTemplateRequest,
    responses((status = 201, body = TemplateRecord),
              (status = 400, description = "malformed pattern or selector (the message says which)", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, description = "a template with this pattern and scope exists", body = ErrorBody)))]
pub async fn create_template(
    State(state): State<AppState>,
    Extension(identity): Extension<Arc<Identity>>,
    Caller(c): Caller,
    ApiJson(req): ApiJson<CreateTemplateRequest>,
) -> Result<(StatusCode, Json<TemplateRecord>), ApiError> {
    c.require(allow::ADMIN)?;
    let selectors = hais_shared::template::validate(&req.pattern, &req.selectors)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    check_description(&req.description)?;
    let t = RegistrationTemplate {
        id: uuid::Uuid::now_v7().to_string(),
        pattern: req.pattern,
        selectors,
        description: req.description,
    };
    let rec = TemplateRecord::new(&t, &c.sub, now_us());
    state.store.insert_template(&rec).await?.map_err(|twin| {
        ApiError::conflict(format!("template {twin} has this pattern and scope"))
    })?;
    announce(
        &state,
        &identity,
        EntriesAction::TemplateCreated,
        vec![rec.id.clone()],
    )
    .await;
    Ok((StatusCode::CREATED, Json(rec)))
}

/// Registration templates, oldest first.
#[utoipa::path(get, path = "/api/identity/templates", tag = "identity", security(("bearer" = [])),
    responses((status = 200, body = Page<TemplateRecord>), (status = 401, body = ErrorBody)))]
pub async fn list_templates(
    State(state): State<AppState>,
    Caller(c): Caller,
) -> Result<Json<Page<TemplateRecord>>, ApiError> {
    c.require(allow::READ)?;
    Ok(Json(Page {
        items: state.store.all_templates().await?,
        next_cursor: None,
    }))
}

/// One registration template.
#[utoipa::path(get, path = "/api/identity/templates/{id}", tag = "identity", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "template id (UUID)")),
    responses((status = 200, body = TemplateRecord), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn get_template(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TemplateRecord>, ApiError> {
    c.require(allow::READ)?;
    let id = entry_id(&id, "the template id")?;
    state
        .store
        .get_template(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no template {id}")))
}

/// Delete a registration template (admin). Workloads it named lose that SPIFFE ID at once in
/// the inventory and on their next events.
#[utoipa::path(delete, path = "/api/identity/templates/{id}", tag = "identity", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "template id (UUID)")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_template(
    State(state): State<AppState>,
    Extension(identity): Extension<Arc<Identity>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    c.require(allow::ADMIN)?;
    let id = entry_id(&id, "the template id")?;
    if !state.store.delete_template(&id).await? {
        return Err(ApiError::not_found(format!("no template {id}")));
    }
    announce(&state, &identity, EntriesAction::TemplateDeleted, vec![id]).await;
    Ok(StatusCode::NO_CONTENT)
}
