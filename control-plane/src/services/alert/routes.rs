//! The alert service's HTTP API: alerts (list, detail, acknowledge, resolve, comment),
//! suppressions, severity rules and notification channels. Viewers read alerts, analysts work
//! them and manage suppressions and severity rules, admins manage channels (whose settings may hold credentials, such as a Slack
//! webhook URL).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use hais_shared::detection::Severity;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Alert;
use super::channels::{Delivered, check_settings, deliver};
use crate::auth::{Caller, allow};
use crate::http::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::services::identity::routes::{PageParams, page_limit};
use crate::services::ja4::parse_time;
use crate::state::AppState;
use crate::store::alert::{
    ActionOutcome, AlertAction, AlertDetail, AlertQuery, AlertRecord, AlertStatus, ChannelHealth,
    ChannelKind, ChannelRecord, Notification, NotificationKind, SeverityRule, Suppression,
    SuppressionAction,
};
use crate::store::{Page, now_us};

/// Longest comment, reason or pattern, in bytes.
const MAX_TEXT: usize = 1024;
/// Longest channel settings (JSON), in bytes.
const MAX_SETTINGS: usize = 16 * 1024;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_alerts))
        .routes(routes!(get_alert))
        .routes(routes!(acknowledge))
        .routes(routes!(resolve))
        .routes(routes!(comment))
        .routes(routes!(list_suppressions, create_suppression))
        .routes(routes!(delete_suppression))
        .routes(routes!(list_severity_rules, create_severity_rule))
        .routes(routes!(delete_severity_rule))
        .routes(routes!(list_channels, create_channel))
        .routes(routes!(get_channel, update_channel, delete_channel))
        .routes(routes!(test_channel))
}

/// A UUID in its canonical text form (alert, suppression and channel ids, cursors).
fn uuid_param(s: &str, what: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(s)
        .ok()
        .filter(|u| u.to_string() == s)
        .map(|_| s.to_owned())
        .ok_or_else(|| ApiError::bad_request(format!("{what} must be a UUID")))
}

/// Free text: at most [`MAX_TEXT`] bytes, no control characters but newlines.
fn check_text(what: &str, s: &str) -> Result<(), ApiError> {
    if s.len() > MAX_TEXT || s.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::bad_request(format!(
            "{what}: at most {MAX_TEXT} bytes, no control characters"
        )));
    }
    Ok(())
}

fn severity_param(what: &str, s: &str) -> Result<Severity, ApiError> {
    Severity::parse(s).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{what} must be info, low, medium, high or critical"
        ))
    })
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AlertParams {
    /// `open`, `acknowledged`, `resolved` or `suppressed`.
    pub status: Option<String>,
    /// At least this severity: `info`, `low`, `medium`, `high`, `critical`.
    pub severity: Option<String>,
    /// Exact identity (SPIFFE ID or workload key).
    #[param(max_length = 2048)]
    pub identity: Option<String>,
    /// Seen last at or after this RFC 3339 time.
    pub since: Option<String>,
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Alerts, newest first.
#[utoipa::path(get, path = "/api/alert/alerts", tag = "alert", security(("bearer" = [])),
    params(AlertParams),
    responses((status = 200, body = Page<AlertRecord>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list_alerts(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<AlertParams>,
) -> Result<Json<Page<AlertRecord>>, ApiError> {
    c.require(allow::READ)?;
    let status = p
        .status
        .as_deref()
        .map(|s| {
            AlertStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request("status must be open, acknowledged, resolved or suppressed")
            })
        })
        .transpose()?;
    let min_severity = p
        .severity
        .as_deref()
        .map(|s| severity_param("severity", s))
        .transpose()?;
    if p.identity.as_ref().is_some_and(|i| i.len() > 2048) {
        return Err(ApiError::bad_request("identity: at most 2048 bytes"));
    }
    let q = AlertQuery {
        status,
        min_severity,
        identity: p.identity,
        since_us: parse_time("since", p.since)?,
        before: p
            .cursor
            .as_deref()
            .map(|s| uuid_param(s, "cursor"))
            .transpose()?,
        limit: page_limit(p.limit)?,
    };
    let items = state.store.list_alerts(&q).await?;
    Ok(Json(page(items, q.limit, |a| &a.id)))
}

/// One alert with its history, the detections folded into it (links to the findings and, in
/// `event_ids`, to the events) and related alerts (same identity, same fingerprint elsewhere).
#[utoipa::path(get, path = "/api/alert/alerts/{id}", tag = "alert", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "alert id")),
    responses((status = 200, body = AlertDetail), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_alert(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<AlertDetail>, ApiError> {
    c.require(allow::READ)?;
    let id = uuid_param(&id, "the alert id")?;
    state
        .store
        .get_alert(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no alert {id}")))
}

/// An analyst's note on an action.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// At most 1024 bytes.
    #[schema(max_length = 1024)]
    pub comment: Option<String>,
}

/// The comment of an optional [`ActionRequest`] body.
fn optional_comment(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice::<ActionRequest>(body)
        .map(|r| r.comment)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

async fn act(
    state: &AppState,
    alert: &Alert,
    c: &crate::auth::Claims,
    id: String,
    action: AlertAction,
    comment: Option<String>,
) -> Result<Json<AlertRecord>, ApiError> {
    c.require(allow::ANNOTATE)?;
    let id = uuid_param(&id, "the alert id")?;
    if let Some(t) = &comment {
        check_text("comment", t)?;
    }
    if action == AlertAction::Comment && comment.as_deref().is_none_or(str::is_empty) {
        return Err(ApiError::bad_request("comment is required"));
    }
    match state
        .store
        .alert_action(&id, action, &c.sub, comment.as_deref(), now_us())
        .await?
    {
        ActionOutcome::Done(a) => {
            alert.wake.notify_one();
            Ok(Json(*a))
        }
        ActionOutcome::NotFound => Err(ApiError::not_found(format!("no alert {id}"))),
        ActionOutcome::Refused(s) => Err(ApiError::conflict(format!(
            "alert {id} is {}: it cannot be {}",
            s.as_str(),
            match action {
                AlertAction::Acknowledge => "acknowledged",
                _ => "resolved",
            }
        ))),
    }
}

/// Acknowledge an open alert (analyst): someone is on it.
#[utoipa::path(post, path = "/api/alert/alerts/{id}/acknowledge", tag = "alert", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "alert id")),
    request_body(content = ActionRequest, description = "optional"),
    responses((status = 200, body = AlertRecord), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "not open", body = ErrorBody)))]
pub async fn acknowledge(
    State(state): State<AppState>,
    Extension(alert): Extension<Arc<Alert>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<AlertRecord>, ApiError> {
    let comment = optional_comment(&body)?;
    act(&state, &alert, &c, id, AlertAction::Acknowledge, comment).await
}

/// Resolve an alert (analyst). Channels that were told it fires are told it is over; if it
/// recurs, it is reopened.
#[utoipa::path(post, path = "/api/alert/alerts/{id}/resolve", tag = "alert", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "alert id")),
    request_body(content = ActionRequest, description = "optional"),
    responses((status = 200, body = AlertRecord), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "already resolved", body = ErrorBody)))]
pub async fn resolve(
    State(state): State<AppState>,
    Extension(alert): Extension<Arc<Alert>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<AlertRecord>, ApiError> {
    let comment = optional_comment(&body)?;
    act(&state, &alert, &c, id, AlertAction::Resolve, comment).await
}

/// Comment on an alert (analyst), whatever its status.
#[utoipa::path(post, path = "/api/alert/alerts/{id}/comment", tag = "alert", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "alert id")),
    request_body = ActionRequest,
    responses((status = 200, body = AlertRecord), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn comment(
    State(state): State<AppState>,
    Extension(alert): Extension<Arc<Alert>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ActionRequest>,
) -> Result<Json<AlertRecord>, ApiError> {
    act(&state, &alert, &c, id, AlertAction::Comment, body.comment).await
}

/// Suppressions, newest first (expired ones included until deleted).
#[utoipa::path(get, path = "/api/alert/suppressions", tag = "alert", security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, body = Page<Suppression>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list_suppressions(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<Suppression>>, ApiError> {
    c.require(allow::READ)?;
    let (limit, before) = page_params(&p)?;
    let items = state
        .store
        .list_suppressions(before.as_deref(), i64::from(limit))
        .await?;
    Ok(Json(page(items, limit, |s| &s.id)))
}

/// The limit and the cursor (an id) of a page request.
fn page_params(p: &PageParams) -> Result<(u32, Option<String>), ApiError> {
    let limit = page_limit(p.limit)?;
    let before = p
        .cursor
        .as_deref()
        .map(|s| uuid_param(s, "cursor"))
        .transpose()?;
    Ok((limit, before))
}

/// A page of `items` (at most `limit`, newest first): its cursor is the last id when full.
fn page<T>(items: Vec<T>, limit: u32, id: impl Fn(&T) -> &String) -> Page<T> {
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|x| id(x).clone()))
        .flatten();
    Page { items, next_cursor }
}

/// Checks the match fields of a suppression or a severity rule: at least one set, none empty,
/// each short text.
fn check_match_fields(what: &str, fields: &[(&str, &Option<String>)]) -> Result<(), ApiError> {
    if fields.iter().all(|(_, v)| v.is_none()) {
        let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
        return Err(ApiError::bad_request(format!(
            "{what} needs at least one of {}",
            names.join(", ")
        )));
    }
    for (name, v) in fields {
        if let Some(v) = v {
            if v.is_empty() {
                return Err(ApiError::bad_request(format!("{name} must not be empty")));
            }
            check_text(name, v)?;
        }
    }
    Ok(())
}

/// The answer to a DELETE: 204, or 404 when there was no `what` with this id.
fn deleted(found: bool, what: &str, id: &str) -> Result<StatusCode, ApiError> {
    if found {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no {what} {id}")))
    }
}

/// A required reason: not blank, short text.
fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() {
        return Err(ApiError::bad_request("reason is required"));
    }
    check_text("reason", reason)
}

/// A new suppression: at least one of identity, fingerprint, destination, rule.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSuppression {
    pub identity: Option<String>,
    pub fingerprint: Option<String>,
    pub destination: Option<String>,
    /// The detector, policy or feed.
    pub rule: Option<String>,
    /// `drop` (not recorded) or `record` (recorded as suppressed, nobody notified).
    pub action: SuppressionAction,
    /// Why (required, at most 1024 bytes).
    pub reason: String,
    /// RFC 3339; none: until deleted.
    pub expires: Option<String>,
}

/// Create a suppression (analyst). It applies to detections handled from now on; alerts
/// already open stay as they are.
#[utoipa::path(post, path = "/api/alert/suppressions", tag = "alert", security(("bearer" = [])),
    request_body = CreateSuppression,
    responses((status = 201, body = Suppression), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_suppression(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiJson(req): ApiJson<CreateSuppression>,
) -> Result<(StatusCode, Json<Suppression>), ApiError> {
    c.require(allow::ANNOTATE)?;
    check_match_fields(
        "a suppression",
        &[
            ("identity", &req.identity),
            ("fingerprint", &req.fingerprint),
            ("destination", &req.destination),
            ("rule", &req.rule),
        ],
    )?;
    check_reason(&req.reason)?;
    let now = now_us();
    let expires_us = parse_time("expires", req.expires)?;
    if expires_us.is_some_and(|e| e <= now) {
        return Err(ApiError::bad_request("expires must be in the future"));
    }
    let s = Suppression {
        id: uuid::Uuid::now_v7().to_string(),
        identity: req.identity,
        fingerprint: req.fingerprint,
        destination: req.destination,
        rule: req.rule,
        action: req.action,
        reason: req.reason,
        created_by: c.sub.clone(),
        created_us: now,
        expires_us,
    };
    state.store.insert_suppression(&s).await?;
    Ok((StatusCode::CREATED, Json(s)))
}

/// Delete a suppression (analyst).
#[utoipa::path(delete, path = "/api/alert/suppressions/{id}", tag = "alert", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "suppression id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn delete_suppression(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    c.require(allow::ANNOTATE)?;
    let id = uuid_param(&id, "the suppression id")?;
    deleted(
        state.store.delete_suppression(&id).await?,
        "suppression",
        &id,
    )
}

/// Severity rules, newest first. The oldest rule matching a detection sets its severity.
#[utoipa::path(get, path = "/api/alert/severity-rules", tag = "alert", security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, body = Page<SeverityRule>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list_severity_rules(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<Page<SeverityRule>>, ApiError> {
    c.require(allow::READ)?;
    let (limit, before) = page_params(&p)?;
    let items = state
        .store
        .list_severity_rules(before.as_deref(), i64::from(limit))
        .await?;
    Ok(Json(page(items, limit, |r| &r.id)))
}

/// A new severity rule: at least one of source, rule, identity_pattern, fingerprint.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSeverityRule {
    /// `correlation`, `policy` or `threat`.
    pub source: Option<String>,
    /// The detector, policy or feed.
    pub rule: Option<String>,
    /// Glob over identities (`*` any run of characters).
    pub identity_pattern: Option<String>,
    pub fingerprint: Option<String>,
    /// `info`, `low`, `medium`, `high` or `critical`.
    pub severity: String,
    /// Why (required, at most 1024 bytes).
    pub reason: String,
}

/// Create a severity rule (analyst). Detections handled from now on that match it get its
/// severity (the oldest matching rule wins) before they are folded into alerts; alerts already
/// open keep theirs until a matching detection recurs.
#[utoipa::path(post, path = "/api/alert/severity-rules", tag = "alert", security(("bearer" = [])),
    request_body = CreateSeverityRule,
    responses((status = 201, body = SeverityRule), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_severity_rule(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiJson(req): ApiJson<CreateSeverityRule>,
) -> Result<(StatusCode, Json<SeverityRule>), ApiError> {
    c.require(allow::ANNOTATE)?;
    check_match_fields(
        "a severity rule",
        &[
            ("source", &req.source),
            ("rule", &req.rule),
            ("identity_pattern", &req.identity_pattern),
            ("fingerprint", &req.fingerprint),
        ],
    )?;
    if let Some(s) = &req.source
        && !["correlation", "policy", "threat"].contains(&s.as_str())
    {
        return Err(ApiError::bad_request(
            "source must be correlation, policy or threat",
        ));
    }
    check_reason(&req.reason)?;
    let r = SeverityRule {
        id: uuid::Uuid::now_v7().to_string(),
        severity: severity_param("severity", &req.severity)?,
        source: req.source,
        rule: req.rule,
        identity_pattern: req.identity_pattern,
        fingerprint: req.fingerprint,
        reason: req.reason,
        created_by: c.sub.clone(),
        created_us: now_us(),
    };
    state.store.insert_severity_rule(&r).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// Delete a severity rule (analyst).
#[utoipa::path(delete, path = "/api/alert/severity-rules/{id}", tag = "alert", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "severity rule id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn delete_severity_rule(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    c.require(allow::ANNOTATE)?;
    let id = uuid_param(&id, "the severity rule id")?;
    deleted(
        state.store.delete_severity_rule(&id).await?,
        "severity rule",
        &id,
    )
}

/// A channel to create or replace.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelRequest {
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`; unique.
    pub name: String,
    pub kind: ChannelKind,
    /// Default true.
    pub enabled: Option<bool>,
    /// Default `info` (everything).
    pub min_severity: Option<String>,
    /// Glob over identities (`*` any run of characters); none: every identity.
    pub identity_pattern: Option<String>,
    /// `webhook`, `slack`: `{"url"}`; `alertmanager`: `{"url"}` (base URL);
    /// `syslog`: `{"address": "host:port", "transport": "udp"|"tcp"|"tls", "facility": 0-23,
    /// "ca"?: PEM (tls), "server_name"?: name (tls)}`;
    /// `email`: `{"host", "port"?: 587, "tls"?: "starttls"|"none", "from", "to": [...],
    /// "username"?}`.
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    /// `webhook`: the HMAC-SHA256 key (16 to 1024 bytes); `email`: the SMTP password. Never
    /// returned; on replace, leaving it out keeps the stored one.
    pub secret: Option<String>,
}

fn channel_record(
    id: String,
    req: &ChannelRequest,
    by: &str,
    now: i64,
) -> Result<ChannelRecord, ApiError> {
    let name_ok = (1..=64).contains(&req.name.len())
        && req
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !name_ok {
        return Err(ApiError::bad_request("name: 1 to 64 of A-Z a-z 0-9 . _ -"));
    }
    if let Some(p) = &req.identity_pattern {
        check_text("identity_pattern", p)?;
    }
    // Room for a syslog collector's CA certificates (PEM).
    if req.settings.to_string().len() > MAX_SETTINGS {
        return Err(ApiError::bad_request(format!(
            "settings: at most {MAX_SETTINGS} bytes"
        )));
    }
    let settings = check_settings(req.kind, &req.settings, req.secret.as_deref())
        .map_err(ApiError::bad_request)?;
    Ok(ChannelRecord {
        id,
        name: req.name.clone(),
        kind: req.kind,
        enabled: req.enabled.unwrap_or(true),
        min_severity: req
            .min_severity
            .as_deref()
            .map(|s| severity_param("min_severity", s))
            .transpose()?
            .unwrap_or(Severity::Info),
        identity_pattern: req.identity_pattern.clone(),
        settings,
        has_secret: req.secret.is_some(),
        created_by: by.to_owned(),
        created_us: now,
        updated_us: now,
        health: ChannelHealth::default(),
    })
}

/// Notification channels with their health (admin).
#[utoipa::path(get, path = "/api/alert/channels", tag = "alert", security(("bearer" = [])),
    responses((status = 200, body = Vec<ChannelRecord>), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn list_channels(
    State(state): State<AppState>,
    Caller(c): Caller,
) -> Result<Json<Vec<ChannelRecord>>, ApiError> {
    c.require(allow::ADMIN)?;
    Ok(Json(state.store.list_channels().await?))
}

/// Create a notification channel (admin). Alerts opened from now on are sent to it.
#[utoipa::path(post, path = "/api/alert/channels", tag = "alert", security(("bearer" = [])),
    request_body = ChannelRequest,
    responses((status = 201, body = ChannelRecord), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, description = "the name is taken", body = ErrorBody)))]
pub async fn create_channel(
    State(state): State<AppState>,
    Extension(alert): Extension<Arc<Alert>>,
    Caller(c): Caller,
    ApiJson(req): ApiJson<ChannelRequest>,
) -> Result<(StatusCode, Json<ChannelRecord>), ApiError> {
    c.require(allow::ADMIN)?;
    let rec = channel_record(uuid::Uuid::now_v7().to_string(), &req, &c.sub, now_us())?;
    let sealed = req
        .secret
        .as_deref()
        .map(|s| alert.secrets.seal(&rec.id, s));
    if !state.store.insert_channel(&rec, sealed.as_deref()).await? {
        return Err(ApiError::conflict(format!(
            "a channel is named {:?} already",
            rec.name
        )));
    }
    Ok((StatusCode::CREATED, Json(rec)))
}

async fn stored_channel(state: &AppState, id: &str) -> Result<ChannelRecord, ApiError> {
    let id = uuid_param(id, "the channel id")?;
    state
        .store
        .get_channel(&id)
        .await?
        .map(|(c, _)| c)
        .ok_or_else(|| ApiError::not_found(format!("no channel {id}")))
}

/// One notification channel with its health (admin).
#[utoipa::path(get, path = "/api/alert/channels/{id}", tag = "alert", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "channel id")),
    responses((status = 200, body = ChannelRecord), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_channel(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ChannelRecord>, ApiError> {
    c.require(allow::ADMIN)?;
    Ok(Json(stored_channel(&state, &id).await?))
}

/// Replace a channel's name, routing and settings (admin); its pending notifications stay and
/// its back-off is reset (it is tried again at once).
#[utoipa::path(put, path = "/api/alert/channels/{id}", tag = "alert", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "channel id")),
    request_body = ChannelRequest,
    responses((status = 200, body = ChannelRecord), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, description = "the name is taken", body = ErrorBody)))]
pub async fn update_channel(
    State(state): State<AppState>,
    Extension(alert): Extension<Arc<Alert>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ChannelRequest>,
) -> Result<Json<ChannelRecord>, ApiError> {
    c.require(allow::ADMIN)?;
    let old = stored_channel(&state, &id).await?;
    let mut rec = channel_record(old.id.clone(), &req, &old.created_by, now_us())?;
    rec.created_us = old.created_us;
    let sealed = req
        .secret
        .as_deref()
        .map(|s| alert.secrets.seal(&rec.id, s));
    if !state.store.update_channel(&rec, sealed.as_deref()).await? {
        return Err(ApiError::not_found(format!("no channel {}", old.id)));
    }
    alert.wake.notify_one();
    Ok(Json(stored_channel(&state, &rec.id).await?))
}

/// Delete a channel and the notifications still pending for it (admin).
#[utoipa::path(delete, path = "/api/alert/channels/{id}", tag = "alert", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "channel id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn delete_channel(
    State(state): State<AppState>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    c.require(allow::ADMIN)?;
    let id = uuid_param(&id, "the channel id")?;
    deleted(state.store.delete_channel(&id).await?, "channel", &id)
}

/// What a test delivery did.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TestResult {
    pub delivered: bool,
    pub error: Option<String>,
}

/// Send a test alert through a channel now (admin), outside the outbox; the answer says
/// whether it was delivered.
#[utoipa::path(post, path = "/api/alert/channels/{id}/test", tag = "alert", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "channel id")),
    responses((status = 200, body = TestResult), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn test_channel(
    State(state): State<AppState>,
    Extension(alert): Extension<Arc<Alert>>,
    Caller(c): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TestResult>, ApiError> {
    c.require(allow::ADMIN)?;
    let id = uuid_param(&id, "the channel id")?;
    let (channel, stored) = state
        .store
        .get_channel(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no channel {id}")))?;
    let secret = match stored.map(|s| alert.secrets.open(&id, &s)).transpose() {
        Ok(s) => s,
        Err(e) => {
            return Ok(Json(TestResult {
                delivered: false,
                error: Some(e.to_string()),
            }));
        }
    };
    let now = now_us();
    let test = Notification {
        id: uuid::Uuid::now_v7().to_string(),
        kind: NotificationKind::Firing,
        attempts: 1,
        alert: AlertRecord {
            id: uuid::Uuid::now_v7().to_string(),
            source: "test".into(),
            rule: "channel-test".into(),
            identity: "spiffe://hais.test/channel-test".into(),
            method: None,
            fingerprint: None,
            destination: None,
            severity: Severity::Info,
            status: AlertStatus::Open,
            summary: format!(
                "Test notification of channel {} sent by {}",
                channel.name, c.sub
            ),
            count: 1,
            first_seen_us: now,
            last_seen_us: now,
            created_us: now,
            updated_us: now,
            event_ids: Vec::new(),
            attributes: Default::default(),
        },
    };
    let Delivered { delivered, error } =
        deliver(channel.kind, &channel.settings, secret.as_deref(), &[test]).await;
    Ok(Json(TestResult {
        delivered: delivered == 1,
        error,
    }))
}
