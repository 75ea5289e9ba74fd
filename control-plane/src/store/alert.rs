//! Storage of the alert service (migration `0011_alert`): alerts deduplicated from detections,
//! their history, suppressions, notification channels and the notification outbox.
//!
//! Everything that must not be lost is written in one transaction: a batch of detections, the
//! alerts they open or update, the notifications those alerts owe to each channel (outbox rows)
//! and the consumer group's checkpoint. A deliverer claims outbox rows for a while, delivers
//! them and deletes them; a claim whose deliverer died expires and the rows are delivered again
//! (at least once). The SQL is shared by both backends.

use std::collections::BTreeMap;

use hais_shared::detection::{Detection, MAX_EVIDENCE_EVENTS, Severity};
use serde::{Deserialize, Serialize};

use super::StoreFuture;
use super::bus::Checkpoint;

/// Where an alert is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Open,
    Acknowledged,
    Resolved,
    /// Recorded under a `record` suppression: kept, never notified.
    Suppressed,
}

impl AlertStatus {
    pub const ALL: [AlertStatus; 4] = [
        AlertStatus::Open,
        AlertStatus::Acknowledged,
        AlertStatus::Resolved,
        AlertStatus::Suppressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Open => "open",
            AlertStatus::Acknowledged => "acknowledged",
            AlertStatus::Resolved => "resolved",
            AlertStatus::Suppressed => "suppressed",
        }
    }

    pub fn parse(s: &str) -> Option<AlertStatus> {
        AlertStatus::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether someone still has to act (Alertmanager keeps it firing).
    pub fn is_active(self) -> bool {
        matches!(self, AlertStatus::Open | AlertStatus::Acknowledged)
    }
}

/// A severity's stored rank (`0` info … `4` critical), so that "at least" is a comparison.
pub fn severity_rank(s: Severity) -> i64 {
    Severity::ALL.iter().position(|v| *v == s).unwrap_or(0) as i64
}

fn severity_of_rank(r: i64) -> Severity {
    Severity::ALL
        .get(r.clamp(0, 4) as usize)
        .copied()
        .unwrap_or(Severity::Info)
}

/// One alert: every detection with the same dedup key, folded together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertRecord {
    /// UUIDv7.
    pub id: String,
    /// `correlation`, `policy` or `threat`.
    pub source: String,
    /// The detector, policy or feed that concluded.
    pub rule: String,
    /// SPIFFE ID, else the workload key.
    pub identity: String,
    pub method: Option<String>,
    pub fingerprint: Option<String>,
    pub destination: Option<String>,
    /// `info`, `low`, `medium`, `high` or `critical`: the highest any of its detections had.
    #[schema(value_type = String, example = "high")]
    pub severity: Severity,
    pub status: AlertStatus,
    pub summary: String,
    /// Observations so far, summed over its detections.
    pub count: i64,
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    pub created_us: i64,
    pub updated_us: i64,
    /// The most recent events that show it (at most 20).
    pub event_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// One transition or comment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    pub seq: i64,
    pub at_us: i64,
    /// The user, or `alert` for what the service did itself (opening, reopening).
    pub actor: String,
    /// `opened`, `recorded-suppressed`, `acknowledged`, `resolved`, `reopened` or `comment`.
    pub action: String,
    /// The status after the action.
    pub status: AlertStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A finding, violation or match folded into an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LinkedDetection {
    /// Its id in the source service.
    pub detection_id: String,
    pub count: i64,
    pub last_seen_us: i64,
}

/// An alert with everything around it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertDetail {
    #[serde(flatten)]
    pub alert: AlertRecord,
    /// Oldest first.
    pub history: Vec<HistoryEntry>,
    /// The detections folded into it (at most [`DETAIL_LIMIT`]).
    pub detections: Vec<LinkedDetection>,
    /// Other alerts of the same identity, newest first (at most [`DETAIL_LIMIT`]).
    pub same_identity: Vec<AlertRecord>,
    /// Alerts of other identities with the same fingerprint, newest first (at most
    /// [`DETAIL_LIMIT`]).
    pub same_fingerprint: Vec<AlertRecord>,
}

/// How many history entries, detections and related alerts a detail lists at most.
pub const DETAIL_LIMIT: i64 = 100;

/// Filters of the alert list; newest alert first, `before` an id (the cursor).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertQuery {
    pub status: Option<AlertStatus>,
    /// At least this severity.
    pub min_severity: Option<Severity>,
    pub identity: Option<String>,
    /// Seen last at or after.
    pub since_us: Option<i64>,
    pub before: Option<String>,
    pub limit: u32,
}

/// What an analyst does to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertAction {
    Acknowledge,
    Resolve,
    Comment,
}

impl AlertAction {
    fn name(self) -> &'static str {
        match self {
            AlertAction::Acknowledge => "acknowledged",
            AlertAction::Resolve => "resolved",
            AlertAction::Comment => "comment",
        }
    }

    /// The status after the action from `from`; `None` when the action makes no sense there
    /// (acknowledging what is resolved, resolving twice).
    pub fn next(self, from: AlertStatus) -> Option<AlertStatus> {
        match (self, from) {
            (AlertAction::Comment, s) => Some(s),
            (AlertAction::Acknowledge, AlertStatus::Open) => Some(AlertStatus::Acknowledged),
            (AlertAction::Resolve, s) if s != AlertStatus::Resolved => Some(AlertStatus::Resolved),
            _ => None,
        }
    }
}

/// How an action went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionOutcome {
    Done(Box<AlertRecord>),
    NotFound,
    /// The action is not possible from this status.
    Refused(AlertStatus),
}

/// What a suppression does to the detections it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SuppressionAction {
    /// Not recorded at all.
    Drop,
    /// Recorded as a `suppressed` alert that notifies nobody.
    Record,
}

impl SuppressionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionAction::Drop => "drop",
            SuppressionAction::Record => "record",
        }
    }
}

/// An exclusion: detections matching every field set, until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Suppression {
    /// UUIDv7.
    pub id: String,
    pub identity: Option<String>,
    pub fingerprint: Option<String>,
    pub destination: Option<String>,
    /// The detector, policy or feed.
    pub rule: Option<String>,
    pub action: SuppressionAction,
    pub reason: String,
    pub created_by: String,
    pub created_us: i64,
    /// `None`: until deleted.
    pub expires_us: Option<i64>,
}

/// A match field: unset matches everything, else exactly the value it holds.
fn field(want: &Option<String>, have: Option<&str>) -> bool {
    want.as_deref().is_none_or(|w| Some(w) == have)
}

impl Suppression {
    /// Whether it applies to `d` at `now_us`.
    pub fn matches(&self, d: &Detection, now_us: i64) -> bool {
        self.expires_us.is_none_or(|e| e > now_us)
            && field(&self.identity, Some(&d.identity))
            && field(&self.fingerprint, d.fingerprint.as_deref())
            && field(&self.destination, d.destination.as_deref())
            && field(&self.rule, Some(&d.rule))
    }
}

/// A severity rule: detections matching every field it sets get its severity before they are
/// folded into alerts, so that an alert is born with the severity a team wants (and routed by
/// the channels' `min_severity` accordingly). The oldest matching rule wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SeverityRule {
    /// UUIDv7.
    pub id: String,
    /// `correlation`, `policy` or `threat`.
    pub source: Option<String>,
    /// The detector, policy or feed.
    pub rule: Option<String>,
    /// Glob over identities (`*` any run of characters).
    pub identity_pattern: Option<String>,
    pub fingerprint: Option<String>,
    /// What matching detections become.
    #[schema(value_type = String, example = "low")]
    pub severity: Severity,
    pub reason: String,
    pub created_by: String,
    pub created_us: i64,
}

impl SeverityRule {
    /// Whether it applies to `d`.
    pub fn matches(&self, d: &Detection) -> bool {
        field(&self.source, Some(d.source.as_str()))
            && field(&self.rule, Some(&d.rule))
            && field(&self.fingerprint, d.fingerprint.as_deref())
            && self
                .identity_pattern
                .as_deref()
                .is_none_or(|p| glob_match(p, &d.identity))
    }
}

/// The severity `d` is recorded with: the oldest matching rule's (`rules` in id order), with
/// that rule, else its own.
pub fn adjusted_severity<'r>(
    rules: &'r [SeverityRule],
    d: &Detection,
) -> (Severity, Option<&'r SeverityRule>) {
    match rules.iter().find(|r| r.matches(d)) {
        Some(r) => (r.severity, Some(r)),
        None => (d.severity, None),
    }
}

/// The kinds of notification channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// JSON POST signed with HMAC-SHA256.
    Webhook,
    /// Slack-compatible incoming webhook.
    Slack,
    /// Prometheus Alertmanager API v2.
    Alertmanager,
    /// RFC 5424 syslog carrying OCSF Detection Finding JSON.
    Syslog,
    /// E-mail over SMTP (STARTTLS).
    Email,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 5] = [
        ChannelKind::Webhook,
        ChannelKind::Slack,
        ChannelKind::Alertmanager,
        ChannelKind::Syslog,
        ChannelKind::Email,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Alertmanager => "alertmanager",
            ChannelKind::Syslog => "syslog",
            ChannelKind::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<ChannelKind> {
        ChannelKind::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// How a channel has been doing, kept by the deliverers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelHealth {
    /// Consecutive failed deliveries (0: healthy).
    pub failures: i64,
    /// No delivery is tried before this (back-off); 0 when healthy.
    pub next_try_us: i64,
    pub last_error: Option<String>,
    pub last_ok_us: Option<i64>,
    pub delivered: i64,
    pub failed: i64,
    /// Notifications waiting in the outbox.
    pub pending: i64,
}

/// A notification channel, as the API shows it (never with its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelRecord {
    /// UUIDv7.
    pub id: String,
    pub name: String,
    pub kind: ChannelKind,
    pub enabled: bool,
    /// Alerts below this severity are not sent here.
    #[schema(value_type = String, example = "medium")]
    pub min_severity: Severity,
    /// Only alerts whose identity matches this glob (`*` any run of characters).
    pub identity_pattern: Option<String>,
    /// Kind-specific settings (URL, address, …); see the API documentation.
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    /// Whether a secret (HMAC key, SMTP password) is stored; the secret itself is never returned.
    pub has_secret: bool,
    pub created_by: String,
    pub created_us: i64,
    pub updated_us: i64,
    pub health: ChannelHealth,
}

impl ChannelRecord {
    /// Whether an alert of `severity` about `identity` goes to this channel.
    pub fn routes(&self, severity: Severity, identity: &str) -> bool {
        self.enabled
            && severity >= self.min_severity
            && self
                .identity_pattern
                .as_deref()
                .is_none_or(|p| glob_match(p, identity))
    }
}

/// `*` matches any run of characters, everything else itself.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// What a notification says about its alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationKind {
    Firing,
    Resolved,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Firing => "firing",
            NotificationKind::Resolved => "resolved",
        }
    }
}

/// A claimed outbox row with its alert as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: String,
    pub kind: NotificationKind,
    pub alert: AlertRecord,
    /// Deliveries tried, this one included.
    pub attempts: i64,
}

/// What recording a batch of detections did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordOutcome {
    pub opened: u64,
    pub updated: u64,
    pub reopened: u64,
    /// Replays: detections already folded in with this count.
    pub unchanged: u64,
    pub dropped: u64,
    /// Outbox rows written.
    pub notifications: u64,
}

/// The alert service's storage. A supertrait of [`super::Store`].
pub trait AlertStore: Send + Sync {
    /// Folds `detections` into alerts, writes the notifications they owe and commits `cp` (the
    /// consumer's checkpoint), all in one transaction.
    fn record_detections<'a>(
        &'a self,
        detections: &'a [Detection],
        now_us: i64,
        cp: Option<&'a Checkpoint>,
    ) -> StoreFuture<'a, RecordOutcome>;
    fn list_alerts<'a>(&'a self, q: &'a AlertQuery) -> StoreFuture<'a, Vec<AlertRecord>>;
    fn get_alert<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<AlertDetail>>;
    /// Applies an analyst's action, with its history entry and the notifications a resolve
    /// owes, in one transaction.
    fn alert_action<'a>(
        &'a self,
        id: &'a str,
        action: AlertAction,
        actor: &'a str,
        comment: Option<&'a str>,
        now_us: i64,
    ) -> StoreFuture<'a, ActionOutcome>;
    /// Alerts someone still has to act on, in id order after `after` (Alertmanager re-sends).
    fn active_alerts<'a>(&'a self, after: &'a str, limit: i64)
    -> StoreFuture<'a, Vec<AlertRecord>>;

    fn insert_suppression<'a>(&'a self, s: &'a Suppression) -> StoreFuture<'a, ()>;
    /// Newest first, after cursor `before`.
    fn list_suppressions<'a>(
        &'a self,
        before: Option<&'a str>,
        limit: i64,
    ) -> StoreFuture<'a, Vec<Suppression>>;
    fn delete_suppression<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool>;

    fn insert_severity_rule<'a>(&'a self, r: &'a SeverityRule) -> StoreFuture<'a, ()>;
    /// Newest first, after cursor `before`.
    fn list_severity_rules<'a>(
        &'a self,
        before: Option<&'a str>,
        limit: i64,
    ) -> StoreFuture<'a, Vec<SeverityRule>>;
    fn delete_severity_rule<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool>;

    /// `false`: a channel has this name already. `secret` is stored as given (the service seals
    /// it first).
    fn insert_channel<'a>(
        &'a self,
        c: &'a ChannelRecord,
        secret: Option<&'a str>,
    ) -> StoreFuture<'a, bool>;
    /// Replaces what may be changed (name, routing, settings); `secret: None` keeps the stored
    /// one. `Ok(false)`: no such channel; conflict: the name is taken.
    fn update_channel<'a>(
        &'a self,
        c: &'a ChannelRecord,
        secret: Option<&'a str>,
    ) -> StoreFuture<'a, bool>;
    /// Every channel (few), in id order, with its health.
    fn list_channels(&self) -> StoreFuture<'_, Vec<ChannelRecord>>;
    /// A channel and its stored secret (sealed, see `services::alert::secrets`; for delivering,
    /// never for the API).
    fn get_channel<'a>(
        &'a self,
        id: &'a str,
    ) -> StoreFuture<'a, Option<(ChannelRecord, Option<String>)>>;
    /// Deletes the channel and its pending notifications.
    fn delete_channel<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool>;
    /// Every channel's stored secret, as (channel id, stored value), for sealing those an older
    /// release stored in clear.
    fn channel_secrets(&self) -> StoreFuture<'_, Vec<(String, String)>>;
    /// Replaces a channel's stored secret if it is still `old`; whether it was.
    fn replace_channel_secret<'a>(
        &'a self,
        id: &'a str,
        old: &'a str,
        new: &'a str,
    ) -> StoreFuture<'a, bool>;

    /// Claims up to `limit` of the channel's pending notifications (oldest first) until
    /// `until_us`, unless the channel is backing off.
    fn claim_notifications<'a>(
        &'a self,
        channel_id: &'a str,
        now_us: i64,
        until_us: i64,
        limit: i64,
    ) -> StoreFuture<'a, Vec<Notification>>;
    /// Deletes delivered notifications and marks the channel healthy.
    fn notifications_delivered<'a>(
        &'a self,
        channel_id: &'a str,
        ids: &'a [String],
        now_us: i64,
    ) -> StoreFuture<'a, ()>;
    /// Releases notifications that were not delivered and puts the channel in back-off until
    /// `next_try_us`.
    fn notifications_failed<'a>(
        &'a self,
        channel_id: &'a str,
        ids: &'a [String],
        error: &'a str,
        now_us: i64,
        next_try_us: i64,
    ) -> StoreFuture<'a, ()>;
}

#[derive(Debug, sqlx::FromRow)]
struct AlertRow {
    id: String,
    source: String,
    rule: String,
    identity: String,
    method: Option<String>,
    fingerprint: Option<String>,
    destination: Option<String>,
    severity: i64,
    status: String,
    summary: String,
    count: i64,
    first_seen_us: i64,
    last_seen_us: i64,
    created_us: i64,
    updated_us: i64,
    event_ids: String,
    attributes: String,
}

const ALERT_COLUMNS: &str = "id, source, rule, identity, method, fingerprint, destination, \
    severity, status, summary, count, first_seen_us, last_seen_us, created_us, updated_us, \
    event_ids, attributes";

/// The same columns of table alias `a`.
const ALERT_COLUMNS_A: &str = "a.id, a.source, a.rule, a.identity, a.method, a.fingerprint, \
    a.destination, a.severity, a.status, a.summary, a.count, a.first_seen_us, a.last_seen_us, \
    a.created_us, a.updated_us, a.event_ids, a.attributes";

fn alert_of(r: AlertRow) -> AlertRecord {
    AlertRecord {
        status: AlertStatus::parse(&r.status).unwrap_or(AlertStatus::Open),
        severity: severity_of_rank(r.severity),
        event_ids: serde_json::from_str(&r.event_ids).unwrap_or_default(),
        attributes: serde_json::from_str(&r.attributes).unwrap_or_default(),
        id: r.id,
        source: r.source,
        rule: r.rule,
        identity: r.identity,
        method: r.method,
        fingerprint: r.fingerprint,
        destination: r.destination,
        summary: r.summary,
        count: r.count,
        first_seen_us: r.first_seen_us,
        last_seen_us: r.last_seen_us,
        created_us: r.created_us,
        updated_us: r.updated_us,
    }
}

#[derive(Debug, sqlx::FromRow)]
struct ChannelRow {
    id: String,
    name: String,
    kind: String,
    enabled: i64,
    min_severity: i64,
    identity_pattern: Option<String>,
    settings: String,
    secret: Option<String>,
    created_by: String,
    created_us: i64,
    updated_us: i64,
    failures: i64,
    next_try_us: i64,
    last_error: Option<String>,
    last_ok_us: Option<i64>,
    delivered: i64,
    failed: i64,
    pending: i64,
}

const CHANNEL_SELECT: &str = "SELECT c.id, c.name, c.kind, c.enabled, c.min_severity, \
    c.identity_pattern, c.settings, c.secret, c.created_by, c.created_us, c.updated_us, \
    c.failures, c.next_try_us, c.last_error, c.last_ok_us, c.delivered, c.failed, \
    (SELECT count(*) FROM alert_outbox o WHERE o.channel_id = c.id) AS pending \
    FROM alert_channels c";

fn channel_of(r: ChannelRow) -> (ChannelRecord, Option<String>) {
    (
        ChannelRecord {
            kind: ChannelKind::parse(&r.kind).unwrap_or(ChannelKind::Webhook),
            enabled: r.enabled != 0,
            min_severity: severity_of_rank(r.min_severity),
            settings: serde_json::from_str(&r.settings).unwrap_or_default(),
            has_secret: r.secret.is_some(),
            id: r.id,
            name: r.name,
            identity_pattern: r.identity_pattern,
            created_by: r.created_by,
            created_us: r.created_us,
            updated_us: r.updated_us,
            health: ChannelHealth {
                failures: r.failures,
                next_try_us: r.next_try_us,
                last_error: r.last_error,
                last_ok_us: r.last_ok_us,
                delivered: r.delivered,
                failed: r.failed,
                pending: r.pending,
            },
        },
        r.secret,
    )
}

type SuppressionRow = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
    String,
    String,
    i64,
    Option<i64>,
);

const SUPPRESSION_COLUMNS: &str = "id, identity, fingerprint, destination, rule, action, reason, \
    created_by, created_us, expires_us";

fn suppression_of(r: SuppressionRow) -> Suppression {
    let (
        id,
        identity,
        fingerprint,
        destination,
        rule,
        action,
        reason,
        created_by,
        created_us,
        expires_us,
    ) = r;
    Suppression {
        id,
        identity,
        fingerprint,
        destination,
        rule,
        action: if action == "drop" {
            SuppressionAction::Drop
        } else {
            SuppressionAction::Record
        },
        reason,
        created_by,
        created_us,
        expires_us,
    }
}

#[derive(Debug, sqlx::FromRow)]
struct SeverityRuleRow {
    id: String,
    source: Option<String>,
    rule: Option<String>,
    identity_pattern: Option<String>,
    fingerprint: Option<String>,
    severity: i64,
    reason: String,
    created_by: String,
    created_us: i64,
}

const SEVERITY_RULE_COLUMNS: &str = "id, source, rule, identity_pattern, fingerprint, severity, \
    reason, created_by, created_us";

impl From<SeverityRuleRow> for SeverityRule {
    fn from(r: SeverityRuleRow) -> SeverityRule {
        SeverityRule {
            id: r.id,
            source: r.source,
            rule: r.rule,
            identity_pattern: r.identity_pattern,
            fingerprint: r.fingerprint,
            severity: severity_of_rank(r.severity),
            reason: r.reason,
            created_by: r.created_by,
            created_us: r.created_us,
        }
    }
}

/// What folding a batch of detections looks at, read once per batch in its transaction.
struct Judging {
    channels: Vec<ChannelRecord>,
    suppressions: Vec<Suppression>,
    /// In id order (oldest first).
    rules: Vec<SeverityRule>,
}

/// The evidence of an alert after `d`: its events then `d`'s, without repeats, the most recent
/// [`MAX_EVIDENCE_EVENTS`].
fn merge_events(stored: &str, d: &Detection) -> String {
    let mut ids: Vec<String> = serde_json::from_str(stored).unwrap_or_default();
    for e in &d.event_ids {
        let e = e.to_string();
        if !ids.contains(&e) {
            ids.push(e);
        }
    }
    let skip = ids.len().saturating_sub(MAX_EVIDENCE_EVENTS);
    serde_json::to_string(&ids[skip..]).unwrap_or_else(|_| "[]".into())
}

/// The actor of what the service does by itself.
pub const SYSTEM_ACTOR: &str = "alert";

macro_rules! impl_alert_store {
    ($ty:ty, $db:ty) => {
        impl $ty {
            /// A page of `table` (keyed by a UUIDv7 `id`), newest first, after cursor `before`.
            async fn alert_page<R>(
                &self,
                table: &str,
                columns: &str,
                before: Option<&str>,
                limit: i64,
            ) -> Result<Vec<R>, $crate::store::StoreError>
            where
                R: for<'r> sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
            {
                Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {columns} FROM {table} WHERE ($1 IS NULL OR id < $2) \
                     ORDER BY id DESC LIMIT $3"
                )))
                .bind(before)
                .bind(before)
                .bind(limit)
                .fetch_all(self.reader())
                .await?)
            }

            /// Deletes row `id` of `table`; whether there was one.
            async fn alert_delete(
                &self,
                table: &str,
                id: &str,
            ) -> Result<bool, $crate::store::StoreError> {
                Ok(sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE id = $1")))
                    .bind(id)
                    .execute(self.writer())
                    .await?
                    .rows_affected()
                    == 1)
            }

            /// Appends a history entry inside `conn`'s transaction.
            async fn alert_history_add(
                conn: &mut <$db as sqlx::Database>::Connection,
                alert_id: &str,
                at_us: i64,
                actor: &str,
                action: &str,
                status: AlertStatus,
                comment: Option<&str>,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query(
                    "INSERT INTO alert_history (alert_id, seq, at_us, actor, action, status, \
                     comment) SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5, $6 \
                     FROM alert_history WHERE alert_id = $7",
                )
                .bind(alert_id)
                .bind(at_us)
                .bind(actor)
                .bind(action)
                .bind(status.as_str())
                .bind(comment)
                .bind(alert_id)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            /// Runs `head` (a DELETE or UPDATE of `alert_outbox`) on the rows `ids`; returns
            /// how many it touched.
            async fn alert_outbox_rows(
                conn: &mut <$db as sqlx::Database>::Connection,
                head: &str,
                ids: &[String],
            ) -> Result<i64, $crate::store::StoreError> {
                let mut n = 0;
                for chunk in ids.chunks(500) {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(head);
                    qb.push(" WHERE id IN (");
                    let mut sep = qb.separated(", ");
                    for id in chunk {
                        sep.push_bind(id.clone());
                    }
                    qb.push(")");
                    n += qb.build().execute(&mut *conn).await?.rows_affected() as i64;
                }
                Ok(n)
            }

            /// Writes one `kind` notification of `alert` for every channel that routes it.
            async fn alert_enqueue(
                conn: &mut <$db as sqlx::Database>::Connection,
                channels: &[ChannelRecord],
                alert_id: &str,
                severity: Severity,
                identity: &str,
                kind: NotificationKind,
                now_us: i64,
            ) -> Result<u64, $crate::store::StoreError> {
                let mut n = 0;
                for c in channels.iter().filter(|c| c.routes(severity, identity)) {
                    sqlx::query(
                        "INSERT INTO alert_outbox (id, channel_id, alert_id, kind, created_us) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(&c.id)
                    .bind(alert_id)
                    .bind(kind.as_str())
                    .bind(now_us)
                    .execute(&mut *conn)
                    .await?;
                    n += 1;
                }
                Ok(n)
            }

            async fn alert_channels_in(
                conn: &mut <$db as sqlx::Database>::Connection,
            ) -> Result<Vec<ChannelRecord>, $crate::store::StoreError> {
                let rows: Vec<ChannelRow> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!("{CHANNEL_SELECT} ORDER BY c.id")))
                        .fetch_all(&mut *conn)
                        .await?;
                Ok(rows.into_iter().map(|r| channel_of(r).0).collect())
            }

            async fn alert_by(
                conn: &mut <$db as sqlx::Database>::Connection,
                column: &str,
                value: &str,
            ) -> Result<Option<AlertRecord>, $crate::store::StoreError> {
                let row: Option<AlertRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts WHERE {column} = $1"
                )))
                .bind(value)
                .fetch_optional(&mut *conn)
                .await?;
                Ok(row.map(alert_of))
            }

            /// Folds one detection in; adds what it did to `out`.
            async fn alert_fold(
                conn: &mut <$db as sqlx::Database>::Connection,
                d: &Detection,
                judging: &Judging,
                now_us: i64,
                out: &mut RecordOutcome,
            ) -> Result<(), $crate::store::StoreError> {
                let channels = &judging.channels;
                let (d_severity, by_rule) = adjusted_severity(&judging.rules, d);
                let det_id = d.id.to_string();
                let count = i64::try_from(d.count).unwrap_or(i64::MAX);
                let prev: Option<(String, i64)> = sqlx::query_as(
                    "SELECT alert_id, count FROM alert_detections WHERE detection_id = $1",
                )
                .bind(&det_id)
                .fetch_optional(&mut *conn)
                .await?;
                if prev.as_ref().is_some_and(|(_, c)| *c >= count) {
                    out.unchanged += 1;
                    return Ok(());
                }
                let first_us = $crate::store::to_us(d.first_seen);
                let last_us = $crate::store::to_us(d.last_seen);
                let key = d.dedup_key();
                let existing = Self::alert_by(&mut *conn, "dedup_key", &key).await?;
                let suppression = judging.suppressions.iter().find(|s| s.matches(d, now_us));
                let alert_id = match existing {
                    None => {
                        let status = match suppression.map(|s| s.action) {
                            Some(SuppressionAction::Drop) => {
                                out.dropped += 1;
                                return Ok(());
                            }
                            Some(SuppressionAction::Record) => AlertStatus::Suppressed,
                            None => AlertStatus::Open,
                        };
                        let id = uuid::Uuid::now_v7().to_string();
                        let attributes = serde_json::to_string(&d.attributes)
                            .unwrap_or_else(|_| "{}".into());
                        sqlx::query(sqlx::AssertSqlSafe(format!(
                            "INSERT INTO alerts ({ALERT_COLUMNS}, dedup_key) VALUES ($1, $2, $3, \
                             $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
                        )))
                        .bind(&id)
                        .bind(d.source.as_str())
                        .bind(&d.rule)
                        .bind(&d.identity)
                        .bind(d.method.map(|m| m.as_str()))
                        .bind(&d.fingerprint)
                        .bind(&d.destination)
                        .bind(severity_rank(d_severity))
                        .bind(status.as_str())
                        .bind(&d.summary)
                        .bind(count)
                        .bind(first_us)
                        .bind(last_us)
                        .bind(now_us)
                        .bind(now_us)
                        .bind(merge_events("[]", d))
                        .bind(attributes)
                        .bind(&key)
                        .execute(&mut *conn)
                        .await?;
                        let (action, comment) = match (suppression, by_rule) {
                            (Some(s), _) => ("recorded-suppressed", Some(format!("suppression {}: {}", s.id, s.reason))),
                            (None, Some(r)) => ("opened", Some(format!(
                                "severity {} (detected as {}) by severity rule {}: {}",
                                r.severity.as_str(), d.severity.as_str(), r.id, r.reason
                            ))),
                            (None, None) => ("opened", None),
                        };
                        Self::alert_history_add(
                            &mut *conn, &id, now_us, SYSTEM_ACTOR, action, status,
                            comment.as_deref(),
                        )
                        .await?;
                        if status == AlertStatus::Open {
                            out.notifications += Self::alert_enqueue(
                                &mut *conn, channels, &id, d_severity, &d.identity,
                                NotificationKind::Firing, now_us,
                            )
                            .await?;
                        }
                        out.opened += 1;
                        id
                    }
                    Some(a) => {
                        let added = count - prev.as_ref().map_or(0, |(_, c)| *c);
                        let severity = a.severity.max(d_severity);
                        // A resolved alert that recurs is open again, unless a suppression
                        // matches the recurrence (then it stays resolved: nobody is told).
                        let reopen = a.status == AlertStatus::Resolved && suppression.is_none();
                        let status = if reopen { AlertStatus::Open } else { a.status };
                        let stored_events: Option<String> = sqlx::query_scalar(
                            "SELECT event_ids FROM alerts WHERE id = $1",
                        )
                        .bind(&a.id)
                        .fetch_optional(&mut *conn)
                        .await?;
                        sqlx::query(
                            "UPDATE alerts SET count = count + $1, \
                             first_seen_us = CASE WHEN first_seen_us < $2 THEN first_seen_us ELSE $3 END, \
                             last_seen_us = CASE WHEN last_seen_us > $4 THEN last_seen_us ELSE $5 END, \
                             severity = $6, status = $7, summary = $8, event_ids = $9, \
                             updated_us = $10 WHERE id = $11",
                        )
                        .bind(added)
                        .bind(first_us)
                        .bind(first_us)
                        .bind(last_us)
                        .bind(last_us)
                        .bind(severity_rank(severity))
                        .bind(status.as_str())
                        .bind(&d.summary)
                        .bind(merge_events(stored_events.as_deref().unwrap_or("[]"), d))
                        .bind(now_us)
                        .bind(&a.id)
                        .execute(&mut *conn)
                        .await?;
                        if reopen {
                            Self::alert_history_add(
                                &mut *conn, &a.id, now_us, SYSTEM_ACTOR, "reopened", status,
                                Some(&format!("recurred: {}", d.summary)),
                            )
                            .await?;
                            out.notifications += Self::alert_enqueue(
                                &mut *conn, channels, &a.id, severity, &a.identity,
                                NotificationKind::Firing, now_us,
                            )
                            .await?;
                            out.reopened += 1;
                        } else {
                            out.updated += 1;
                        }
                        a.id
                    }
                };
                sqlx::query(
                    "INSERT INTO alert_detections (detection_id, alert_id, count, last_seen_us) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (detection_id) DO UPDATE SET \
                     count = excluded.count, last_seen_us = excluded.last_seen_us",
                )
                .bind(&det_id)
                .bind(&alert_id)
                .bind(count)
                .bind(last_us)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }
        }

        impl AlertStore for $ty {
            fn record_detections<'a>(
                &'a self,
                detections: &'a [Detection],
                now_us: i64,
                cp: Option<&'a Checkpoint>,
            ) -> StoreFuture<'a, RecordOutcome> {
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    let channels = Self::alert_channels_in(&mut *tx).await?;
                    let rows: Vec<SuppressionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT {SUPPRESSION_COLUMNS} FROM alert_suppressions \
                         WHERE expires_us IS NULL OR expires_us > $1 ORDER BY id"
                    )))
                    .bind(now_us)
                    .fetch_all(&mut *tx)
                    .await?;
                    let rules: Vec<SeverityRuleRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT {SEVERITY_RULE_COLUMNS} FROM alert_severity_rules ORDER BY id"
                    )))
                    .fetch_all(&mut *tx)
                    .await?;
                    let judging = Judging {
                        channels,
                        suppressions: rows.into_iter().map(suppression_of).collect(),
                        rules: rules.into_iter().map(SeverityRule::from).collect(),
                    };
                    let mut out = RecordOutcome::default();
                    for d in detections {
                        Self::alert_fold(&mut *tx, d, &judging, now_us, &mut out).await?;
                    }
                    if let Some(cp) = cp {
                        $crate::store::bus::commit_checkpoint::<$db>(&mut *tx, cp).await?;
                    }
                    tx.commit().await?;
                    Ok(out)
                })
            }

            fn list_alerts<'a>(&'a self, q: &'a AlertQuery) -> StoreFuture<'a, Vec<AlertRecord>> {
                Box::pin(async move {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT {ALERT_COLUMNS} FROM alerts WHERE 1 = 1"
                    ));
                    if let Some(s) = q.status {
                        qb.push(" AND status = ").push_bind(s.as_str());
                    }
                    if let Some(s) = q.min_severity {
                        qb.push(" AND severity >= ").push_bind(severity_rank(s));
                    }
                    if let Some(i) = &q.identity {
                        qb.push(" AND identity = ").push_bind(i.clone());
                    }
                    if let Some(t) = q.since_us {
                        qb.push(" AND last_seen_us >= ").push_bind(t);
                    }
                    if let Some(b) = &q.before {
                        qb.push(" AND id < ").push_bind(b.clone());
                    }
                    qb.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(q.limit));
                    let rows: Vec<AlertRow> = qb.build_query_as().fetch_all(self.reader()).await?;
                    Ok(rows.into_iter().map(alert_of).collect())
                })
            }

            fn get_alert<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<AlertDetail>> {
                Box::pin(async move {
                    let mut conn = self.reader().acquire().await?;
                    let Some(alert) = Self::alert_by(&mut *conn, "id", id).await? else {
                        return Ok(None);
                    };
                    let history: Vec<(i64, i64, String, String, String, Option<String>)> =
                        sqlx::query_as(
                            "SELECT seq, at_us, actor, action, status, comment FROM alert_history \
                             WHERE alert_id = $1 ORDER BY seq LIMIT $2",
                        )
                        .bind(id)
                        .bind(DETAIL_LIMIT)
                        .fetch_all(&mut *conn)
                        .await?;
                    let detections: Vec<(String, i64, i64)> = sqlx::query_as(
                        "SELECT detection_id, count, last_seen_us FROM alert_detections \
                         WHERE alert_id = $1 ORDER BY detection_id DESC LIMIT $2",
                    )
                    .bind(id)
                    .bind(DETAIL_LIMIT)
                    .fetch_all(&mut *conn)
                    .await?;
                    let same_identity: Vec<AlertRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT {ALERT_COLUMNS} FROM alerts WHERE identity = $1 AND id <> $2 \
                         ORDER BY id DESC LIMIT $3"
                    )))
                    .bind(&alert.identity)
                    .bind(id)
                    .bind(DETAIL_LIMIT)
                    .fetch_all(&mut *conn)
                    .await?;
                    let same_fingerprint: Vec<AlertRow> = match &alert.fingerprint {
                        Some(fp) => {
                            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                                "SELECT {ALERT_COLUMNS_A} FROM alerts a WHERE a.fingerprint = $1 \
                                 AND a.identity <> $2 ORDER BY a.id DESC LIMIT $3"
                            )))
                            .bind(fp)
                            .bind(&alert.identity)
                            .bind(DETAIL_LIMIT)
                            .fetch_all(&mut *conn)
                            .await?
                        }
                        None => Vec::new(),
                    };
                    Ok(Some(AlertDetail {
                        alert,
                        history: history
                            .into_iter()
                            .map(|(seq, at_us, actor, action, status, comment)| HistoryEntry {
                                seq,
                                at_us,
                                actor,
                                action,
                                status: AlertStatus::parse(&status).unwrap_or(AlertStatus::Open),
                                comment,
                            })
                            .collect(),
                        detections: detections
                            .into_iter()
                            .map(|(detection_id, count, last_seen_us)| LinkedDetection {
                                detection_id,
                                count,
                                last_seen_us,
                            })
                            .collect(),
                        same_identity: same_identity.into_iter().map(alert_of).collect(),
                        same_fingerprint: same_fingerprint.into_iter().map(alert_of).collect(),
                    }))
                })
            }

            fn alert_action<'a>(
                &'a self,
                id: &'a str,
                action: AlertAction,
                actor: &'a str,
                comment: Option<&'a str>,
                now_us: i64,
            ) -> StoreFuture<'a, ActionOutcome> {
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    // Locks the row (PostgreSQL) so that two analysts' actions apply in turn.
                    let status: Option<String> =
                        sqlx::query_scalar("UPDATE alerts SET updated_us = updated_us WHERE id = $1 RETURNING status")
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let Some(from) = status.as_deref().and_then(AlertStatus::parse) else {
                        return Ok(ActionOutcome::NotFound);
                    };
                    let Some(to) = action.next(from) else {
                        return Ok(ActionOutcome::Refused(from));
                    };
                    sqlx::query("UPDATE alerts SET status = $1, updated_us = $2 WHERE id = $3")
                        .bind(to.as_str())
                        .bind(now_us)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    Self::alert_history_add(&mut *tx, id, now_us, actor, action.name(), to, comment)
                        .await?;
                    let alert = Self::alert_by(&mut *tx, "id", id)
                        .await?
                        .ok_or_else(|| $crate::store::StoreError::Corrupt(format!("alert {id} vanished")))?;
                    // Whoever was told it fires is told it is over (a suppressed alert told
                    // nobody).
                    if to == AlertStatus::Resolved && from.is_active() {
                        let channels = Self::alert_channels_in(&mut *tx).await?;
                        Self::alert_enqueue(
                            &mut *tx, &channels, id, alert.severity, &alert.identity,
                            NotificationKind::Resolved, now_us,
                        )
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(ActionOutcome::Done(Box::new(alert)))
                })
            }

            fn active_alerts<'a>(
                &'a self,
                after: &'a str,
                limit: i64,
            ) -> StoreFuture<'a, Vec<AlertRecord>> {
                Box::pin(async move {
                    let rows: Vec<AlertRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT {ALERT_COLUMNS} FROM alerts WHERE status IN ('open', 'acknowledged') \
                         AND id > $1 ORDER BY id LIMIT $2"
                    )))
                    .bind(after)
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?;
                    Ok(rows.into_iter().map(alert_of).collect())
                })
            }

            fn insert_suppression<'a>(&'a self, s: &'a Suppression) -> StoreFuture<'a, ()> {
                Box::pin(async move {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "INSERT INTO alert_suppressions ({SUPPRESSION_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                    )))
                    .bind(&s.id)
                    .bind(&s.identity)
                    .bind(&s.fingerprint)
                    .bind(&s.destination)
                    .bind(&s.rule)
                    .bind(s.action.as_str())
                    .bind(&s.reason)
                    .bind(&s.created_by)
                    .bind(s.created_us)
                    .bind(s.expires_us)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                })
            }

            fn list_suppressions<'a>(
                &'a self,
                before: Option<&'a str>,
                limit: i64,
            ) -> StoreFuture<'a, Vec<Suppression>> {
                Box::pin(async move {
                    let rows: Vec<SuppressionRow> = self
                        .alert_page("alert_suppressions", SUPPRESSION_COLUMNS, before, limit)
                        .await?;
                    Ok(rows.into_iter().map(suppression_of).collect())
                })
            }

            fn delete_suppression<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
                Box::pin(self.alert_delete("alert_suppressions", id))
            }

            fn insert_severity_rule<'a>(&'a self, r: &'a SeverityRule) -> StoreFuture<'a, ()> {
                Box::pin(async move {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "INSERT INTO alert_severity_rules ({SEVERITY_RULE_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                    )))
                    .bind(&r.id)
                    .bind(&r.source)
                    .bind(&r.rule)
                    .bind(&r.identity_pattern)
                    .bind(&r.fingerprint)
                    .bind(severity_rank(r.severity))
                    .bind(&r.reason)
                    .bind(&r.created_by)
                    .bind(r.created_us)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                })
            }

            fn list_severity_rules<'a>(
                &'a self,
                before: Option<&'a str>,
                limit: i64,
            ) -> StoreFuture<'a, Vec<SeverityRule>> {
                Box::pin(async move {
                    let rows: Vec<SeverityRuleRow> = self
                        .alert_page("alert_severity_rules", SEVERITY_RULE_COLUMNS, before, limit)
                        .await?;
                    Ok(rows.into_iter().map(SeverityRule::from).collect())
                })
            }

            fn delete_severity_rule<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
                Box::pin(self.alert_delete("alert_severity_rules", id))
            }

            fn insert_channel<'a>(
                &'a self,
                c: &'a ChannelRecord,
                secret: Option<&'a str>,
            ) -> StoreFuture<'a, bool> {
                Box::pin(async move {
                    Ok(sqlx::query(
                        "INSERT INTO alert_channels (id, name, kind, enabled, min_severity, \
                         identity_pattern, settings, secret, created_by, created_us, updated_us) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                         ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(&c.id)
                    .bind(&c.name)
                    .bind(c.kind.as_str())
                    .bind(i64::from(c.enabled))
                    .bind(severity_rank(c.min_severity))
                    .bind(&c.identity_pattern)
                    .bind(c.settings.to_string())
                    .bind(secret)
                    .bind(&c.created_by)
                    .bind(c.created_us)
                    .bind(c.updated_us)
                    .execute(self.writer())
                    .await?
                    .rows_affected()
                        == 1)
                })
            }

            fn update_channel<'a>(
                &'a self,
                c: &'a ChannelRecord,
                secret: Option<&'a str>,
            ) -> StoreFuture<'a, bool> {
                Box::pin(async move {
                    let taken: Option<String> = sqlx::query_scalar(
                        "SELECT id FROM alert_channels WHERE name = $1 AND id <> $2",
                    )
                    .bind(&c.name)
                    .bind(&c.id)
                    .fetch_optional(self.writer())
                    .await?;
                    if taken.is_some() {
                        return Err($crate::store::StoreError::Conflict(format!(
                            "a channel is named {:?} already",
                            c.name
                        )));
                    }
                    Ok(sqlx::query(
                        "UPDATE alert_channels SET name = $1, kind = $2, enabled = $3, \
                         min_severity = $4, identity_pattern = $5, settings = $6, \
                         secret = coalesce($7, secret), updated_us = $8, failures = 0, \
                         next_try_us = 0 WHERE id = $9",
                    )
                    .bind(&c.name)
                    .bind(c.kind.as_str())
                    .bind(i64::from(c.enabled))
                    .bind(severity_rank(c.min_severity))
                    .bind(&c.identity_pattern)
                    .bind(c.settings.to_string())
                    .bind(secret)
                    .bind(c.updated_us)
                    .bind(&c.id)
                    .execute(self.writer())
                    .await?
                    .rows_affected()
                        == 1)
                })
            }

            fn list_channels(&self) -> StoreFuture<'_, Vec<ChannelRecord>> {
                Box::pin(async move {
                    let mut conn = self.reader().acquire().await?;
                    Self::alert_channels_in(&mut *conn).await
                })
            }

            fn get_channel<'a>(
                &'a self,
                id: &'a str,
            ) -> StoreFuture<'a, Option<(ChannelRecord, Option<String>)>> {
                Box::pin(async move {
                    let row: Option<ChannelRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "{CHANNEL_SELECT} WHERE c.id = $1"
                    )))
                    .bind(id)
                    .fetch_optional(self.writer())
                    .await?;
                    Ok(row.map(channel_of))
                })
            }

            fn delete_channel<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    sqlx::query("DELETE FROM alert_outbox WHERE channel_id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    let gone = sqlx::query("DELETE FROM alert_channels WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                        == 1;
                    tx.commit().await?;
                    Ok(gone)
                })
            }

            fn channel_secrets(&self) -> StoreFuture<'_, Vec<(String, String)>> {
                Box::pin(async move {
                    Ok(sqlx::query_as(
                        "SELECT id, secret FROM alert_channels WHERE secret IS NOT NULL ORDER BY id",
                    )
                    .fetch_all(self.writer())
                    .await?)
                })
            }

            fn replace_channel_secret<'a>(
                &'a self,
                id: &'a str,
                old: &'a str,
                new: &'a str,
            ) -> StoreFuture<'a, bool> {
                Box::pin(async move {
                    Ok(sqlx::query(
                        "UPDATE alert_channels SET secret = $1 WHERE id = $2 AND secret = $3",
                    )
                    .bind(new)
                    .bind(id)
                    .bind(old)
                    .execute(self.writer())
                    .await?
                    .rows_affected()
                        == 1)
                })
            }

            fn claim_notifications<'a>(
                &'a self,
                channel_id: &'a str,
                now_us: i64,
                until_us: i64,
                limit: i64,
            ) -> StoreFuture<'a, Vec<Notification>> {
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    // The claim re-checks `claimed_until_us`, so that of two deliverers racing
                    // for a row (PostgreSQL replicas) only one gets it.
                    let claimed: Vec<(String, String, String, i64)> = sqlx::query_as(
                        "UPDATE alert_outbox SET claimed_until_us = $1, attempts = attempts + 1 \
                         WHERE claimed_until_us < $2 AND id IN (SELECT o.id FROM alert_outbox o \
                         JOIN alert_channels c ON c.id = o.channel_id \
                         WHERE o.channel_id = $3 AND o.claimed_until_us < $4 \
                         AND c.next_try_us <= $5 AND c.enabled = 1 ORDER BY o.id LIMIT $6) \
                         RETURNING id, alert_id, kind, attempts",
                    )
                    .bind(until_us)
                    .bind(now_us)
                    .bind(channel_id)
                    .bind(now_us)
                    .bind(now_us)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut out = Vec::with_capacity(claimed.len());
                    for (id, alert_id, kind, attempts) in claimed {
                        // An alert is never deleted while notifications are owed for it.
                        let Some(alert) = Self::alert_by(&mut *tx, "id", &alert_id).await? else {
                            continue;
                        };
                        let kind = if kind == "resolved" {
                            NotificationKind::Resolved
                        } else {
                            NotificationKind::Firing
                        };
                        out.push(Notification {
                            id,
                            kind,
                            alert,
                            attempts,
                        });
                    }
                    out.sort_by(|a, b| a.id.cmp(&b.id));
                    tx.commit().await?;
                    Ok(out)
                })
            }

            fn notifications_delivered<'a>(
                &'a self,
                channel_id: &'a str,
                ids: &'a [String],
                now_us: i64,
            ) -> StoreFuture<'a, ()> {
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    let n = Self::alert_outbox_rows(&mut *tx, "DELETE FROM alert_outbox", ids)
                        .await?;
                    sqlx::query(
                        "UPDATE alert_channels SET failures = 0, next_try_us = 0, \
                         last_ok_us = $1, delivered = delivered + $2 WHERE id = $3",
                    )
                    .bind(now_us)
                    .bind(n)
                    .bind(channel_id)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn notifications_failed<'a>(
                &'a self,
                channel_id: &'a str,
                ids: &'a [String],
                error: &'a str,
                now_us: i64,
                next_try_us: i64,
            ) -> StoreFuture<'a, ()> {
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    Self::alert_outbox_rows(
                        &mut *tx,
                        "UPDATE alert_outbox SET claimed_until_us = 0",
                        ids,
                    )
                    .await?;
                    let error: String = error.chars().take(1000).collect();
                    sqlx::query(
                        "UPDATE alert_channels SET failures = failures + 1, next_try_us = $1, \
                         last_error = $2, failed = failed + 1 WHERE id = $3",
                    )
                    .bind(next_try_us.max(now_us))
                    .bind(error)
                    .bind(channel_id)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                })
            }
        }
    };
}

impl_alert_store!(super::sqlite::SqliteStore, sqlx::Sqlite);
impl_alert_store!(super::postgres::PgStore, sqlx::Postgres);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(
            "spiffe://td/ns/prod/*",
            "spiffe://td/ns/prod/sa/api"
        ));
        assert!(!glob_match(
            "spiffe://td/ns/prod/*",
            "spiffe://td/ns/dev/sa/api"
        ));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXcYb"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("exact", "exact"));
    }

    #[test]
    fn transitions() {
        use AlertAction::*;
        use AlertStatus::*;
        assert_eq!(Acknowledge.next(Open), Some(Acknowledged));
        assert_eq!(Acknowledge.next(Resolved), None);
        assert_eq!(Resolve.next(Acknowledged), Some(Resolved));
        assert_eq!(Resolve.next(Suppressed), Some(Resolved));
        assert_eq!(Resolve.next(Resolved), None);
        assert_eq!(Comment.next(Resolved), Some(Resolved));
    }

    #[test]
    fn the_oldest_matching_severity_rule_wins() {
        let d = Detection {
            id: uuid::Uuid::now_v7(),
            source: hais_shared::detection::Source::Correlation,
            rule: "new-fingerprint".into(),
            severity: Severity::High,
            identity: "spiffe://td/ns/lab/sa/x".into(),
            method: None,
            fingerprint: Some("fp".into()),
            destination: None,
            summary: String::new(),
            event_ids: Vec::new(),
            first_seen: time::OffsetDateTime::UNIX_EPOCH,
            last_seen: time::OffsetDateTime::UNIX_EPOCH,
            count: 1,
            attributes: BTreeMap::new(),
        };
        let rule = |id: &str, source: Option<&str>, pattern: Option<&str>, severity| SeverityRule {
            id: id.into(),
            source: source.map(Into::into),
            rule: None,
            identity_pattern: pattern.map(Into::into),
            fingerprint: None,
            severity,
            reason: "r".into(),
            created_by: "a".into(),
            created_us: 0,
        };
        let rules = [
            rule("1", Some("threat"), None, Severity::Critical),
            rule("2", None, Some("spiffe://td/ns/lab/*"), Severity::Low),
            rule("3", Some("correlation"), None, Severity::Info),
        ];
        let (s, r) = adjusted_severity(&rules, &d);
        assert_eq!((s, r.map(|r| r.id.as_str())), (Severity::Low, Some("2")));
        let (s, r) = adjusted_severity(&rules[2..], &d);
        assert_eq!((s, r.map(|r| r.id.as_str())), (Severity::Info, Some("3")));
        assert_eq!(adjusted_severity(&rules[..1], &d), (Severity::High, None));
    }

    #[test]
    fn severity_ranks_round_trip() {
        for s in Severity::ALL {
            assert_eq!(severity_of_rank(severity_rank(s)), s);
        }
    }
}
