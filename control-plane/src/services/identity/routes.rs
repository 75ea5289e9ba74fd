//! The identity service's HTTP API: registration entries (CRUD and SPIRE import) and the
//! identity inventory; discovered workloads and templates are in [`super::workloads`].

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hais_shared::registration::{RegistrationEntry, import_spire_json, validate};
use serde::{Deserialize, Serialize};

use super::Identity;
use crate::auth::{Caller, allow};
use crate::bus::topics::{EntriesAction, EntriesChange, IdentityEntries};
use crate::http::{ApiError, ErrorBody};
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::identity::{EntryRecord, IdentityDetail, IdentitySummary};
use crate::store::{Page, now_us};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Default and largest page of entries or identities.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 1000;
/// Longest entry description, in bytes.
const MAX_DESCRIPTION: usize = 256;

/// The routes with their OpenAPI paths. Handlers that change entries need the process's
/// [`Identity`] (an `Extension`, see [`super::IdentityService`]) to reload it at once.
pub fn routes() -> OpenApiRouter<AppState> {
    let r = OpenApiRouter::new()
        .routes(routes!(create_entry, list_entries))
        .routes(routes!(import_entries))
        .routes(routes!(get_entry, update_entry, delete_entry))
        .routes(routes!(list_identities))
        .merge(super::workloads::routes());
    // A SPIFFE ID spans path segments: axum's `{*spiffe_id}`, OpenAPI's `{spiffe_id}`.
    crate::http::routes_at(
        r,
        "/api/identity/identities/{*spiffe_id}",
        routes!(get_identity),
    )
}

/// A new registration entry.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEntryRequest {
    /// The workload's SPIFFE ID, e.g. `spiffe://prod.example/ns/payments/sa/api`.
    #[schema(
        min_length = 10,
        max_length = 2048,
        pattern = "^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*$"
    )]
    pub spiffe_id: String,
    /// 1 to 32 selectors, all of which a workload must present: `unix:uid:`, `unix:user:`,
    /// `unix:path:`, `unix:sha256:`, `docker:label:<k>:<v>`, `docker:id:`, `docker:image_id:`,
    /// `k8s:ns:`, `k8s:sa:`, `k8s:pod-uid:`, `k8s:pod-name:`, `hais:agent:`, `hais:host:`,
    /// `hais:workload:<workload key>`.
    #[schema(min_items = 1, max_items = 32)]
    pub selectors: Vec<String>,
    /// Free text (at most 256 bytes).
    #[schema(max_length = 256, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1, max_length = 4096)]
    pub cursor: Option<String>,
}

pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be from 1 to {MAX_PAGE}"
        )));
    }
    Ok(limit)
}

/// Checks an entry id from a path or cursor: a UUID in its canonical text form.
pub(super) fn entry_id(s: &str, what: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(s)
        .ok()
        .filter(|u| u.to_string() == s)
        .map(|_| s.to_owned())
        .ok_or_else(|| ApiError::bad_request(format!("{what} must be an entry id (a UUID)")))
}

/// One skipped entry of an import.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkippedEntry {
    /// The entry's id in SPIRE.
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportResponse {
    pub imported: Vec<EntryRecord>,
    pub skipped: Vec<SkippedEntry>,
}

/// Checks a create or update request into an entry with id `id`.
fn validated(id: String, req: CreateEntryRequest) -> Result<RegistrationEntry, ApiError> {
    let (spiffe_id, selectors) = validate(&req.spiffe_id, &req.selectors)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    check_description(&req.description)?;
    Ok(RegistrationEntry {
        id,
        spiffe_id,
        selectors,
        description: req.description,
    })
}

/// An entry's or template's description: at most [`MAX_DESCRIPTION`] bytes, no control
/// characters.
pub(super) fn check_description(d: &Option<String>) -> Result<(), ApiError> {
    match d {
        Some(d) if d.len() > MAX_DESCRIPTION || d.chars().any(char::is_control) => {
            Err(ApiError::bad_request(format!(
                "description: at most {MAX_DESCRIPTION} bytes, no control characters"
            )))
        }
        _ => Ok(()),
    }
}

/// Stores a validated entry; `Err` names the entry with the same SPIFFE ID and selectors.
pub(super) async fn insert(
    state: &AppState,
    e: &RegistrationEntry,
    by: &str,
) -> Result<Result<EntryRecord, String>, ApiError> {
    let rec = EntryRecord::new(e, by, now_us());
    Ok(state.store.insert_entry(&rec).await?.map(|()| rec))
}

/// Reloads this process's entries and templates at once (so the next ingest uses them, and the
/// inventory is resolved again), and tells the others.
pub(super) async fn announce(
    state: &AppState,
    identity: &Identity,
    action: EntriesAction,
    ids: Vec<String>,
) {
    super::refresh(state, identity).await;
    state
        .publish::<IdentityEntries>(&EntriesChange { action, ids })
        .await;
}

/// Create a registration entry (admin). It applies to every event ingested from now on.
#[utoipa::path(post, path = "/api/identity/entries", tag = "identity", security(("bearer" = [])),
    request_body = CreateEntryRequest,
    responses((status = 201, body = EntryRecord),
              (status = 400, description = "malformed SPIFFE ID or selector (the message names it)", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, description = "an entry with this SPIFFE ID and these selectors exists", body = ErrorBody)))]
pub async fn create_entry(
    State(state): State<AppState>,
    Extension(identity): Extension<Arc<Identity>>,
    Caller(c): Caller,
    ApiJson(req): ApiJson<CreateEntryRequest>,
) -> Result<(StatusCode, Json<EntryRecord>), ApiError> {
    c.require(allow::ADMIN)?;
    let entry = validated(uuid::Uuid::now_v7().to_string(), req)?;
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

/// Import entries from SPIRE (admin): the body is what `spire-server entry show -output json`
/// prints. Entries HaIS cannot represent exactly (selector kinds it does not observe, invalid
/// IDs) and duplicates of existing entries are skipped, each with its reason.
#[utoipa::path(post, path = "/api/identity/entries/import", tag = "identity", security(("bearer" = [])),
    request_body(content = Object, description = "`spire-server entry show -output json` output: {\"entries\": [...]}"),
    responses((status = 200, body = ImportResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn import_entries(
    State(state): State<AppState>,
    Extension(identity): Extension<Arc<Identity>>,
    Caller(c): Caller,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<ImportResponse>, ApiError> {
    c.require(allow::ADMIN)?;
    let report = import_spire_json(&body.to_string())
        .map_err(|e| ApiError::bad_request(format!("not SPIRE entry JSON: {e}")))?;
    let mut skipped: Vec<SkippedEntry> = report
        .skipped
        .into_iter()
        .map(|(id, reason)| SkippedEntry { id, reason })
        .collect();
    let mut imported = Vec::new();
    let by = format!("spire-import:{}", c.sub);
    for e in report.entries {
        let entry = RegistrationEntry {
            id: uuid::Uuid::now_v7().to_string(),
            spiffe_id: e.spiffe_id,
            selectors: e.selectors,
            description: Some(format!("SPIRE entry {}", e.spire_id))
                .filter(|_| !e.spire_id.is_empty()),
        };
        match insert(&state, &entry, &by).await? {
            Ok(rec) => imported.push(rec),
            Err(existing) => skipped.push(SkippedEntry {
                id: e.spire_id,
                reason: format!("duplicate of entry {existing}"),
            }),
        }
    }
    if !imported.is_empty() {
        let ids = imported.iter().map(|r| r.id.clone()).collect();
        announce(&state, &identity, EntriesAction::Imported, ids).await;
    }
    Ok(Json(ImportResponse { imported, skipped }))
}

/// Registration entries, oldest first.
#[utoipa::path(get, path = "/api/identity/entries", tag = "identity", security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, body = Page<EntryRecord>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list_entries(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<EntryRecord>>, ApiError> {
    c.require(allow::READ)?;
    let limit = page_limit(p.limit)?;
    let after = p
        .cursor
        .as_deref()
        .map(|s| entry_id(s, "cursor"))
        .transpose()?;
    let items = state.store.list_entries(after.as_deref(), limit).await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|e| e.id.clone()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// One registration entry.
#[utoipa::path(get, path = "/api/identity/entries/{id}", tag = "identity", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "entry id (UUID)")),
    responses((status = 200, body = EntryRecord), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn get_entry(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<EntryRecord>, ApiError> {
    c.require(allow::READ)?;
    let id = entry_id(&id, "the entry id")?;
    state
        .store
        .get_entry(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no entry {id}")))
}

/// Replace a registration entry's SPIFFE ID, selectors and description (admin); the body is
/// the same as for creation. It applies to every event ingested from now on; events stored
/// before keep the SPIFFE ID they got. The entry keeps its id and age (the tie-breaker).
#[utoipa::path(put, path = "/api/identity/entries/{id}", tag = "identity", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "entry id (UUID)")),
    request_body = CreateEntryRequest,
    responses((status = 200, body = EntryRecord),
              (status = 400, description = "malformed SPIFFE ID or selector (the message names it)", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "another entry has this SPIFFE ID and these selectors", body = ErrorBody)))]
pub async fn update_entry(
    State(state): State<AppState>,
    Extension(identity): Extension<Arc<Identity>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CreateEntryRequest>,
) -> Result<Json<EntryRecord>, ApiError> {
    c.require(allow::ADMIN)?;
    let id = entry_id(&id, "the entry id")?;
    let entry = validated(id.clone(), req)?;
    let old = state
        .store
        .get_entry(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no entry {id}")))?;
    let rec = EntryRecord::new(&entry, &old.created_by, old.created_us);
    match state.store.update_entry(&rec).await? {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::not_found(format!("no entry {id}"))),
        Err(twin) => {
            return Err(ApiError::conflict(format!(
                "entry {twin} already maps these selectors to {}",
                entry.spiffe_id
            )));
        }
    }
    tracing::info!(by = %c.sub, %id, spiffe_id = %rec.spiffe_id, "registration entry updated");
    announce(&state, &identity, EntriesAction::Updated, vec![id]).await;
    Ok(Json(rec))
}

/// Delete a registration entry (admin). Events stored before keep the SPIFFE ID they got.
#[utoipa::path(delete, path = "/api/identity/entries/{id}", tag = "identity", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "entry id (UUID)")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn delete_entry(
    State(state): State<AppState>,
    Extension(identity): Extension<Arc<Identity>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    c.require(allow::ADMIN)?;
    let id = entry_id(&id, "the entry id")?;
    if !state.store.delete_entry(&id).await? {
        return Err(ApiError::not_found(format!("no entry {id}")));
    }
    announce(&state, &identity, EntriesAction::Deleted, vec![id]).await;
    Ok(StatusCode::NO_CONTENT)
}

/// The identity inventory: every workload SPIFFE ID seen in stored events, in byte order, with
/// its fingerprints by method, first/last seen, counts, hosts, destinations and conflicts.
#[utoipa::path(get, path = "/api/identity/identities", tag = "identity", security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, body = Page<IdentitySummary>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list_identities(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<IdentitySummary>>, ApiError> {
    c.require(allow::READ)?;
    let limit = page_limit(p.limit)?;
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
    let items = state.store.list_identities(after.as_deref(), limit).await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|i| URL_SAFE_NO_PAD.encode(&i.spiffe_id)))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

/// One identity of the inventory, with the registration entries that name it now.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IdentityView {
    #[serde(flatten)]
    pub detail: IdentityDetail,
    /// Ids of the entries naming this SPIFFE ID.
    pub entries: Vec<String>,
}

/// One identity: all its fingerprints by method, hosts, agents, destinations, and the other
/// identities its matches tied with. The SPIFFE ID goes in the path as is or percent-encoded
/// (`/api/identity/identities/spiffe://prod/ns/payments/sa/api`).
#[utoipa::path(get, path = "/api/identity/identities/{spiffe_id}", tag = "identity", security(("bearer" = [])),
    params(("spiffe_id" = String, Path, description = "the SPIFFE ID")),
    responses((status = 200, body = IdentityView), (status = 404, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn get_identity(
    State(state): State<AppState>,
    Extension(identity): Extension<Arc<Identity>>,
    Caller(c): Caller,
    ApiPath(spiffe_id): ApiPath<String>,
) -> Result<Json<IdentityView>, ApiError> {
    c.require(allow::READ)?;
    // A path segment cannot start with '/', so `spiffe://x` arrives as `spiffe:/x` when not
    // encoded: put the second slash back.
    let spiffe_id = match spiffe_id.strip_prefix("spiffe:/") {
        Some(rest) if !rest.starts_with('/') => format!("spiffe://{rest}"),
        _ => spiffe_id,
    };
    let detail = state
        .store
        .identity_detail(&spiffe_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no events of identity {spiffe_id}")))?;
    let entries = identity
        .snapshot()
        .entries()
        .iter()
        .filter(|e| e.spiffe_id.as_str() == spiffe_id)
        .map(|e| e.id.clone())
        .collect();
    Ok(Json(IdentityView { detail, entries }))
}
