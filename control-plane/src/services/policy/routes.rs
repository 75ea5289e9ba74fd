//! The policy service's HTTP API: the current set (read, replace), its versions (list, show,
//! roll back), validation, the explained evaluation of one event, the decisions found on the
//! stream, and dry-runs of a draft set over stored history.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use hais_policy::{Compiled, Decision, Enrichment, Facts, Problem, Source};
use hais_shared::event::FingerprintEvent;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{Active, Policy, violates};
use crate::auth::{Caller, allow};
use crate::http::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody};
use crate::services::identity::routes::page_limit;
use crate::services::ja4::parse_time;
use crate::state::AppState;
use crate::store::events::{EventCursor, EventQuery};
use crate::store::policy::{PolicyVersion, Violation, ViolationQuery};
use crate::store::{MAX_PAGE_SIZE, Page, now_us};

/// Most sources (files) in one set.
pub const MAX_SOURCES: usize = 1000;
/// Longest comment kept with a version.
pub const MAX_COMMENT: usize = 1000;
/// Most stored events one dry-run evaluates (the range is cut there, newest first).
pub const MAX_DRY_RUN_EVENTS: u64 = 2_000_000;
/// Examples kept per identity in a dry-run answer.
pub const DRY_RUN_EXAMPLES: usize = 5;
/// Identities listed in a dry-run answer (those with the most changes).
pub const DRY_RUN_IDENTITIES: usize = 1000;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_policies, put_policies))
        .routes(routes!(list_versions))
        .routes(routes!(get_version))
        .routes(routes!(rollback))
        .routes(routes!(validate))
        .routes(routes!(evaluate))
        .routes(routes!(decisions))
        .routes(routes!(dry_run))
}

fn started(p: Option<Extension<Arc<Policy>>>) -> Result<Arc<Policy>, ApiError> {
    p.map(|Extension(p)| p)
        .ok_or_else(|| ApiError::unavailable("the policy service is not started in this process"))
}

/// A policy set as sent: one Cedar text, or named files (as a `.cedar` directory holds them).
/// (Flattened into the bodies that carry a set, so unknown fields are not refused: serde cannot
/// deny them through a flatten.)
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct SetBody {
    /// The whole set as one Cedar text (source name `api`).
    pub policies: Option<String>,
    /// Or several named sources.
    #[schema(value_type = Option<Vec<Object>>)]
    pub files: Option<Vec<Source>>,
}

impl SetBody {
    fn sources(self) -> Result<Vec<Source>, ApiError> {
        let sources = match (self.policies, self.files) {
            (Some(text), None) => vec![Source {
                name: "api".into(),
                text,
            }],
            (None, Some(files)) => files,
            _ => {
                return Err(ApiError::bad_request(
                    "give the set as `policies` (one Cedar text) or `files` ([{name, text}]), not both",
                ));
            }
        };
        if sources.len() > MAX_SOURCES {
            return Err(ApiError::bad_request(format!(
                "at most {MAX_SOURCES} files in a set"
            )));
        }
        let mut names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) || names.iter().any(|n| n.is_empty()) {
            return Err(ApiError::bad_request(
                "file names must be present and unique",
            ));
        }
        Ok(sources)
    }
}

/// Compiles `sources` off the async runtime (a large set takes a while).
async fn compile(
    sources: Vec<Source>,
) -> Result<(Vec<Source>, Result<Compiled, Vec<Problem>>), ApiError> {
    tokio::task::spawn_blocking(move || {
        let c = hais_policy::compile(&sources);
        (sources, c)
    })
    .await
    .map_err(|e| ApiError::internal(&e))
}

/// The 400 answer for a refused set: every problem, with file, line and column, in the message.
fn refused(problems: &[Problem]) -> ApiError {
    let shown: Vec<String> = problems.iter().take(20).map(ToString::to_string).collect();
    let more = problems.len().saturating_sub(shown.len());
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_policy",
        format!(
            "policy set refused ({} problem{}){}: {}{}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            "; nothing was applied",
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ),
    )
}

/// A line-based unified diff of two sets' sources (per file), for the version history.
pub fn diff(old: &[Source], new: &[Source]) -> String {
    let mut names: Vec<&str> = old.iter().chain(new).map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let text = |set: &[Source], n: &str| set.iter().find(|s| s.name == n).map(|s| s.text.clone());
    let mut out = String::new();
    for n in names {
        let (a, b) = (text(old, n), text(new, n));
        if a == b {
            continue;
        }
        out.push_str(&format!(
            "--- {}\n+++ {}\n",
            if a.is_some() { n } else { "/dev/null" },
            if b.is_some() { n } else { "/dev/null" }
        ));
        let a: Vec<&str> = a
            .as_deref()
            .map(|t| t.lines().collect())
            .unwrap_or_default();
        let b: Vec<&str> = b
            .as_deref()
            .map(|t| t.lines().collect())
            .unwrap_or_default();
        for line in line_diff(&a, &b) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Lines of `a` and `b` as ` `, `-`, `+` lines (longest common subsequence; sets are small, and
/// past 4,000 lines a side the whole texts are shown as removed and added).
fn line_diff(a: &[&str], b: &[&str]) -> Vec<String> {
    if a.len() > 4000 || b.len() > 4000 {
        return a
            .iter()
            .map(|l| format!("-{l}"))
            .chain(b.iter().map(|l| format!("+{l}")))
            .collect();
    }
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(format!(" {}", a[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(format!("+{}", b[j]));
            j += 1;
        } else {
            out.push(format!("-{}", a[i]));
            i += 1;
        }
    }
    out
}

fn comment_of(c: Option<String>) -> Result<String, ApiError> {
    let c = c.unwrap_or_default();
    if c.len() > MAX_COMMENT {
        return Err(ApiError::bad_request(format!(
            "comment must be at most {MAX_COMMENT} bytes"
        )));
    }
    Ok(c)
}

/// The active policy set: its version, who made it and when, and its sources.
#[utoipa::path(get, path = "/api/policy/policies", tag = "policy", security(("bearer" = [])),
    responses((status = 200, body = PolicyVersion), (status = 401, body = ErrorBody)))]
pub async fn get_policies(
    Caller(c): Caller,
    p: Option<Extension<Arc<Policy>>>,
) -> Result<Json<PolicyVersion>, ApiError> {
    c.require(allow::READ)?;
    let p = started(p)?;
    let latest = p.store.policy_latest_version().await?;
    let v = match p.store.policy_version(latest).await? {
        Some(v) => v,
        None => PolicyVersion {
            version: 0,
            author: String::new(),
            comment: "no policy set stored yet: nothing is evaluated".into(),
            origin: String::new(),
            diff: String::new(),
            policies: 0,
            created_us: 0,
            sources: Vec::new(),
        },
    };
    Ok(Json(v))
}

/// A new policy set.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct PutBody {
    #[serde(flatten)]
    pub set: SetBody,
    /// Why (kept with the version).
    pub comment: Option<String>,
    /// The version this change was made over: refused with 409 if another was stored since.
    pub expected_version: Option<i64>,
}

/// Replaces the policy set: compiled and validated first, stored as a new version (with a diff)
/// and activated. An invalid set is refused with every problem's file, line and column, and the
/// previous version stays active.
#[utoipa::path(put, path = "/api/policy/policies", tag = "policy", security(("bearer" = [])),
    request_body = PutBody,
    responses((status = 200, body = PolicyVersion), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn put_policies(
    Caller(c): Caller,
    p: Option<Extension<Arc<Policy>>>,
    ApiJson(body): ApiJson<PutBody>,
) -> Result<Json<PolicyVersion>, ApiError> {
    c.require(allow::ADMIN)?;
    let p = started(p)?;
    let comment = comment_of(body.comment)?;
    let (sources, compiled) = compile(body.set.sources()?).await?;
    let compiled = compiled.map_err(|problems| refused(&problems))?;
    let v = p
        .store_version(
            &sources,
            compiled.len(),
            &c.sub,
            &comment,
            "api",
            body.expected_version,
        )
        .await?;
    tracing::info!(version = v.version, author = %c.sub, policies = v.policies, "policy set stored");
    Ok(Json(v))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VersionParams {
    /// Versions below this one (the previous page's last).
    pub before: Option<i64>,
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The set's versions, newest first (without their sources).
#[utoipa::path(get, path = "/api/policy/versions", tag = "policy", security(("bearer" = [])),
    params(VersionParams),
    responses((status = 200, body = Vec<PolicyVersion>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn list_versions(
    Caller(c): Caller,
    p: Option<Extension<Arc<Policy>>>,
    ApiQuery(q): ApiQuery<VersionParams>,
) -> Result<Json<Vec<PolicyVersion>>, ApiError> {
    c.require(allow::READ)?;
    let p = started(p)?;
    let limit = page_limit(q.limit)?;
    Ok(Json(p.store.policy_versions(q.before, limit).await?))
}

/// One version, with its sources.
#[utoipa::path(get, path = "/api/policy/versions/{version}", tag = "policy",
    security(("bearer" = [])), params(("version" = i64, Path)),
    responses((status = 200, body = PolicyVersion), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn get_version(
    Caller(c): Caller,
    p: Option<Extension<Arc<Policy>>>,
    ApiPath(version): ApiPath<i64>,
) -> Result<Json<PolicyVersion>, ApiError> {
    c.require(allow::READ)?;
    let p = started(p)?;
    p.store
        .policy_version(version)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no policy version {version}")))
}

/// A rollback.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    pub comment: Option<String>,
}

/// Makes an older version's sources the active set again, as a new version (history is never
/// rewritten). Refused if they no longer validate.
#[utoipa::path(post, path = "/api/policy/versions/{version}/rollback", tag = "policy",
    security(("bearer" = [])), params(("version" = i64, Path)), request_body = RollbackBody,
    responses((status = 200, body = PolicyVersion), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn rollback(
    Caller(c): Caller,
    p: Option<Extension<Arc<Policy>>>,
    ApiPath(version): ApiPath<i64>,
    ApiJson(body): ApiJson<RollbackBody>,
) -> Result<Json<PolicyVersion>, ApiError> {
    c.require(allow::ADMIN)?;
    let p = started(p)?;
    let comment = comment_of(body.comment)?;
    let old = p
        .store
        .policy_version(version)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no policy version {version}")))?;
    let (sources, compiled) = compile(old.sources).await?;
    let compiled = compiled.map_err(|problems| refused(&problems))?;
    let comment = if comment.is_empty() {
        format!("rollback to version {version}")
    } else {
        format!("rollback to version {version}: {comment}")
    };
    let v = p
        .store_version(&sources, compiled.len(), &c.sub, &comment, "rollback", None)
        .await?;
    Ok(Json(v))
}

/// The outcome of a validation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Validation {
    pub valid: bool,
    /// Policies in the set (0 when invalid).
    pub policies: usize,
    /// Every problem: `{file, line, column, policy?, message}`.
    #[schema(value_type = Vec<Object>)]
    pub problems: Vec<Problem>,
}

/// Validates a set against the schema without storing it.
#[utoipa::path(post, path = "/api/policy/validate", tag = "policy", security(("bearer" = [])),
    request_body = SetBody,
    responses((status = 200, body = Validation), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn validate(
    Caller(c): Caller,
    ApiJson(body): ApiJson<SetBody>,
) -> Result<Json<Validation>, ApiError> {
    c.require(allow::READ)?;
    let (_, compiled) = compile(body.sources()?).await?;
    Ok(Json(match compiled {
        Ok(c) => Validation {
            valid: true,
            policies: c.len(),
            problems: Vec::new(),
        },
        Err(problems) => Validation {
            valid: false,
            policies: 0,
            problems,
        },
    }))
}

/// One event to evaluate.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EvaluateBody {
    /// A fingerprint event as `GET /api/ja4/events` returns it (its `workload.spiffe_id` is the
    /// identity).
    #[schema(value_type = Object)]
    pub event: FingerprintEvent,
    /// What the threat service knows of it: `{labels, verdict, country, peer}`.
    #[schema(value_type = Option<Object>)]
    pub enrichment: Option<Enrichment>,
    /// A draft set to evaluate instead of the active one.
    #[serde(flatten)]
    pub draft: SetBody,
}

/// The explained decision on one event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Evaluation {
    /// The active version evaluated (`null` for a draft).
    pub version: Option<i64>,
    /// The request as the policies see it.
    #[schema(value_type = Object)]
    pub facts: Facts,
    /// Outcome, deciding policies with the fields they read, audit matches, errors.
    #[schema(value_type = Object)]
    pub decision: Decision,
}

/// Evaluates one event against the active set (or a draft) and explains the decision.
#[utoipa::path(post, path = "/api/policy/evaluate", tag = "policy", security(("bearer" = [])),
    request_body = EvaluateBody,
    responses((status = 200, body = Evaluation), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn evaluate(
    Caller(c): Caller,
    p: Option<Extension<Arc<Policy>>>,
    ApiJson(body): ApiJson<EvaluateBody>,
) -> Result<Json<Evaluation>, ApiError> {
    c.require(allow::READ)?;
    let facts = Facts::of_event(&body.event, body.enrichment.as_ref());
    let draft = body.draft.policies.is_some() || body.draft.files.is_some();
    let (version, decision) = if draft {
        let (_, compiled) = compile(body.draft.sources()?).await?;
        let compiled = compiled.map_err(|problems| refused(&problems))?;
        (None, compiled.evaluate(&facts))
    } else {
        let active = started(p)?.active();
        if active.version == 0 {
            return Err(ApiError::conflict(
                "no policy set is active: PUT /api/policy/policies first, or send a draft",
            ));
        }
        (Some(active.version), active.compiled.evaluate(&facts))
    };
    let decision = decision.map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok(Json(Evaluation {
        version,
        facts,
        decision,
    }))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DecisionParams {
    /// Only this identity's (SPIFFE ID or workload key).
    #[param(max_length = 2048)]
    pub identity: Option<String>,
    /// `alert`, `deny` or `audit`.
    pub effect: Option<String>,
    /// Seen last at or after (RFC 3339).
    pub since: Option<String>,
    /// 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(max_length = 64)]
    pub cursor: Option<String>,
}

/// The violations found on the stream (denials, alerts and audit matches; allows are counted
/// on `/metrics`, not stored), newest first, each with its latest explained decision.
#[utoipa::path(get, path = "/api/policy/decisions", tag = "policy", security(("bearer" = [])),
    params(DecisionParams),
    responses((status = 200, body = Page<Violation>), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn decisions(
    Caller(c): Caller,
    p: Option<Extension<Arc<Policy>>>,
    ApiQuery(q): ApiQuery<DecisionParams>,
) -> Result<Json<Page<Violation>>, ApiError> {
    c.require(allow::READ)?;
    let p = started(p)?;
    let limit = page_limit(q.limit)?;
    if let Some(e) = &q.effect
        && !["alert", "deny", "audit"].contains(&e.as_str())
    {
        return Err(ApiError::bad_request("effect must be alert, deny or audit"));
    }
    let before = q
        .cursor
        .map(|s| {
            Uuid::parse_str(&s)
                .ok()
                .filter(|u| u.to_string() == s)
                .map(|_| s)
                .ok_or_else(|| ApiError::bad_request("cursor must be a violation id"))
        })
        .transpose()?;
    let query = ViolationQuery {
        identity: q.identity,
        outcome: q.effect,
        since_us: parse_time("since", q.since)?,
        before,
        limit: limit + 1,
    };
    let mut items = p.store.policy_violations(&query).await?;
    let next_cursor = (items.len() > limit as usize).then(|| {
        items.truncate(limit as usize);
        items.last().map(|v| v.id.to_string()).unwrap_or_default()
    });
    Ok(Json(Page { items, next_cursor }))
}

/// A dry-run request: a draft set and a time range of stored events.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DryRunBody {
    #[serde(flatten)]
    pub set: SetBody,
    /// Events at or after (RFC 3339).
    pub from: String,
    /// Events at or before (RFC 3339; default now).
    pub to: Option<String>,
    /// At most this many events, newest first (default and maximum 2,000,000).
    pub max_events: Option<u64>,
}

/// One decision that would change.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Change {
    pub event_id: Uuid,
    pub destination: String,
    pub action: String,
    /// Outcome and rule with the active set (`allow` when none is active).
    pub before: String,
    /// Outcome and rule with the draft.
    pub after: String,
    /// The draft's deciding policies with the fields they read.
    #[schema(value_type = Object)]
    pub decision: Decision,
}

/// The changes for one identity.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct IdentityChanges {
    pub identity: String,
    pub events: u64,
    /// Violations the draft adds.
    pub new_violations: u64,
    /// Violations the draft removes.
    pub resolved_violations: u64,
    /// Violations under another rule or effect.
    pub changed: u64,
    /// The first few changes.
    pub examples: Vec<Change>,
}

/// What a dry-run found.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DryRun {
    /// The active version compared against (0: none).
    pub active_version: i64,
    pub events: u64,
    /// True when the range held more than `max_events` (the newest were evaluated).
    pub truncated: bool,
    pub new_violations: u64,
    pub resolved_violations: u64,
    pub changed: u64,
    /// Identities with a change, most changes first (at most 1,000).
    pub identities: Vec<IdentityChanges>,
    pub elapsed_ms: u64,
}

/// `outcome rule` of a decision (`allow` when allowed).
fn label(d: &Decision) -> String {
    if violates(d.outcome) {
        format!("{} {}", d.outcome.as_str(), d.rule())
    } else {
        "allow".into()
    }
}

/// Compares the draft with the active set on `events`, adding to `by_identity`.
fn compare(
    active: &Active,
    draft: &Compiled,
    events: &[FingerprintEvent],
    by_identity: &mut BTreeMap<String, IdentityChanges>,
) {
    for e in events {
        let facts = Facts::of_event(e, None);
        let Ok(after) = draft.evaluate(&facts) else {
            continue;
        };
        let before = if active.version == 0 {
            None
        } else {
            active.compiled.evaluate(&facts).ok()
        };
        let was = before.as_ref().map(label).unwrap_or_else(|| "allow".into());
        let now = label(&after);
        let entry = by_identity
            .entry(facts.principal.identity.clone())
            .or_insert_with(|| IdentityChanges {
                identity: facts.principal.identity.clone(),
                ..IdentityChanges::default()
            });
        entry.events += 1;
        if was == now {
            continue;
        }
        match (was == "allow", now == "allow") {
            (true, false) => entry.new_violations += 1,
            (false, true) => entry.resolved_violations += 1,
            _ => entry.changed += 1,
        }
        if entry.examples.len() < DRY_RUN_EXAMPLES {
            entry.examples.push(Change {
                event_id: e.id,
                destination: facts.resource.address(),
                action: facts.action.as_str().to_owned(),
                before: was,
                after: now,
                decision: after,
            });
        }
    }
}

/// Evaluates a draft set against the stored events of a time range and reports, per identity,
/// the decisions that would change (new violations, violations that disappear), with examples.
/// Nothing is stored, published or alerted.
#[utoipa::path(post, path = "/api/policy/dry-run", tag = "policy", security(("bearer" = [])),
    request_body = DryRunBody,
    responses((status = 200, body = DryRun), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody)))]
pub async fn dry_run(
    State(state): State<AppState>,
    Caller(c): Caller,
    p: Option<Extension<Arc<Policy>>>,
    ApiJson(body): ApiJson<DryRunBody>,
) -> Result<Json<DryRun>, ApiError> {
    c.require(allow::READ)?;
    let p = started(p)?;
    let started_at = std::time::Instant::now();
    let from_us = parse_time("from", Some(body.from))?.unwrap_or_default();
    let to_us = parse_time("to", body.to)?.unwrap_or_else(now_us);
    if to_us < from_us {
        return Err(ApiError::bad_request("to must not be before from"));
    }
    let max_events = body.max_events.unwrap_or(MAX_DRY_RUN_EVENTS);
    if !(1..=MAX_DRY_RUN_EVENTS).contains(&max_events) {
        return Err(ApiError::bad_request(format!(
            "max_events must be from 1 to {MAX_DRY_RUN_EVENTS}"
        )));
    }
    let (_, compiled) = compile(body.set.sources()?).await?;
    let draft = Arc::new(compiled.map_err(|problems| refused(&problems))?);
    let active = p.active();
    // Pages are read while the previous one is evaluated (on a blocking thread).
    let mut evaluating: tokio::task::JoinHandle<BTreeMap<String, IdentityChanges>> =
        tokio::task::spawn_blocking(BTreeMap::new);
    let mut seen = 0u64;
    let mut before: Option<EventCursor> = None;
    let mut truncated = false;
    loop {
        let q = EventQuery {
            from_us: Some(from_us),
            to_us: Some(to_us),
            before,
            limit: MAX_PAGE_SIZE,
            ..EventQuery::default()
        };
        let page = state.store.events(&q).await?;
        let mut events: Vec<FingerprintEvent> = page.items.into_iter().map(|r| r.event).collect();
        let room = (max_events - seen) as usize;
        if events.len() > room {
            events.truncate(room);
            truncated = true;
        }
        seen += events.len() as u64;
        before = events.last().map(|e| EventCursor(e.id));
        let mut by = evaluating.await.map_err(|e| ApiError::internal(&e))?;
        let (a, d) = (active.clone(), draft.clone());
        evaluating = tokio::task::spawn_blocking(move || {
            compare(&a, &d, &events, &mut by);
            by
        });
        if page.next_cursor.is_none() || truncated {
            break;
        }
        if seen >= max_events {
            truncated = true;
            break;
        }
    }
    let by_identity = evaluating.await.map_err(|e| ApiError::internal(&e))?;
    let mut identities: Vec<IdentityChanges> = by_identity
        .into_values()
        .filter(|i| i.new_violations + i.resolved_violations + i.changed > 0)
        .collect();
    let total = |f: fn(&IdentityChanges) -> u64| identities.iter().map(f).sum::<u64>();
    let (new_violations, resolved_violations, changed) = (
        total(|i| i.new_violations),
        total(|i| i.resolved_violations),
        total(|i| i.changed),
    );
    identities
        .sort_by_key(|i| std::cmp::Reverse(i.new_violations + i.resolved_violations + i.changed));
    identities.truncate(DRY_RUN_IDENTITIES);
    Ok(Json(DryRun {
        active_version: active.version,
        events: seen,
        truncated,
        new_violations,
        resolved_violations,
        changed,
        identities,
        elapsed_ms: started_at.elapsed().as_millis() as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(name: &str, text: &str) -> Source {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    #[test]
    fn diffs_show_changed_lines_per_file() {
        let old = [src("a", "one\ntwo\nthree"), src("b", "same")];
        let new = [src("a", "one\n2\nthree"), src("b", "same"), src("c", "new")];
        assert_eq!(
            diff(&old, &new),
            "--- a\n+++ a\n one\n+2\n-two\n three\n--- /dev/null\n+++ c\n+new\n"
        );
        assert_eq!(diff(&new, &new), "");
    }
}
