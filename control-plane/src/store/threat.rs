//! Storage of the threat service (migration `0014_threat`): feeds and their import status,
//! indicators (one JSON body per row beside the columns searches use), the threat matches the
//! consumer judged (published as [`Detection`]s on `detections` in the transaction that stores
//! them) and the per-country event counts of the map. One SQL text for both backends
//! ([`impl_threat_store!`]).
//!
//! * **Atomic swap per feed**: a refresh replaces the feed's indicators in one transaction
//!   ([`ThreatStore::threat_swap`]); readers see the old set or the new one. Indicators still in
//!   the feed keep their id and first-seen time.
//! * **Generation**: every change to indicators increases `threat_generation`, which processes
//!   poll to rebuild their in-memory matcher.

use hais_shared::detection::Detection;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StoreFuture;
use super::bus::Checkpoint;

/// What an indicator describes.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One fingerprint of one method (`method` says which).
    Fingerprint,
    /// Fingerprints of several methods, all seen on the same stream (JA4 ∧ JA4S ∧ JA4X…).
    Combination,
    /// An address or network (CIDR) the workload talked to.
    Ip,
    /// A server name, matched exactly or as a parent domain.
    Domain,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Fingerprint, Kind::Combination, Kind::Ip, Kind::Domain];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Fingerprint => "fingerprint",
            Kind::Combination => "combination",
            Kind::Ip => "ip",
            Kind::Domain => "domain",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What a match means. Ordered: `Benign < Suspicious < Malicious`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Benign,
    Suspicious,
    Malicious,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Benign, Verdict::Suspicious, Verdict::Malicious];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Benign => "benign",
            Verdict::Suspicious => "suspicious",
            Verdict::Malicious => "malicious",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Stored rank (ordered, so "at least" is a comparison).
    pub fn rank(self) -> i64 {
        self as i64
    }
}

/// What an indicator says the traffic is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Labels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub malware_family: Option<String>,
}

impl Labels {
    /// The labels' values, most specific first (for summaries).
    pub fn names(&self) -> Vec<&str> {
        [
            &self.malware_family,
            &self.application,
            &self.library,
            &self.device,
            &self.os,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect()
    }
}

/// One indicator, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Indicator {
    /// UUIDv7, kept across a feed's refreshes while the indicator stays in it.
    pub id: Uuid,
    /// The feed it came from (`manual` for analysts' own).
    pub feed: String,
    pub kind: Kind,
    /// The fingerprint method (`ja4`, `ja4s`, … `ja3`), for `fingerprint` indicators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The canonical value (see the module's documentation).
    pub value: String,
    /// For fingerprints: which sections (`a`, `b`, …) the value pins; every section when the
    /// match is exact.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<String>,
    #[serde(default)]
    pub labels: Labels,
    pub verdict: Verdict,
    /// 0 to 100.
    pub confidence: u8,
    /// Who says so (a feed's publisher, an analyst).
    pub source: String,
    /// The licence the source publishes it under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// µs since the Unix epoch.
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    /// After this the indicator no longer matches (µs since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_us: Option<i64>,
}

impl Indicator {
    /// What makes two indicators of one feed the same: kind, method and canonical value.
    pub fn key(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}",
            self.kind.as_str(),
            self.method.as_deref().unwrap_or_default(),
            self.value
        )
    }

    /// Whether it matches at `now_us`.
    pub fn live(&self, now_us: i64) -> bool {
        self.expires_us.is_none_or(|e| e > now_us)
    }
}

/// The formats a feed may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Format {
    #[serde(rename = "foxio-csv")]
    FoxioCsv,
    #[serde(rename = "ja4db-json")]
    Ja4dbJson,
    #[serde(rename = "ip-list")]
    IpList,
    #[serde(rename = "sslbl-ja3-csv")]
    SslblJa3Csv,
    #[serde(rename = "threatfox-json")]
    ThreatfoxJson,
    #[serde(rename = "misp-json")]
    MispJson,
}

impl Format {
    pub const ALL: [Format; 6] = [
        Format::FoxioCsv,
        Format::Ja4dbJson,
        Format::IpList,
        Format::SslblJa3Csv,
        Format::ThreatfoxJson,
        Format::MispJson,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::FoxioCsv => "foxio-csv",
            Format::Ja4dbJson => "ja4db-json",
            Format::IpList => "ip-list",
            Format::SslblJa3Csv => "sslbl-ja3-csv",
            Format::ThreatfoxJson => "threatfox-json",
            Format::MispJson => "misp-json",
        }
    }

    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

/// A bad row: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RowError {
    /// 1-based line (CSV, lists) or element (JSON) number.
    pub row: u64,
    pub reason: String,
}

/// A feed as configured (API or `[[threat.feeds]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FeedSpec {
    /// One path segment: letters, digits, `-`, `_`, `.`.
    pub name: String,
    pub format: Format,
    /// `http://` or `https://` URL, or a file path on the control plane's host.
    pub location: String,
    /// Refresh period in seconds; 0: only on request.
    #[serde(default)]
    pub interval_secs: i64,
    /// The verdict of block-list formats (IP lists, SSLBL, ThreatFox, MISP).
    #[serde(default = "malicious")]
    pub verdict: Verdict,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Who publishes it (recorded on each indicator).
    #[serde(default)]
    pub source: String,
    /// The licence it is published under.
    #[serde(default)]
    pub licence: Option<String>,
}

fn malicious() -> Verdict {
    Verdict::Malicious
}

fn yes() -> bool {
    true
}

/// A feed with how its last refresh went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Feed {
    #[serde(flatten)]
    pub spec: FeedSpec,
    pub created_us: i64,
    pub last_attempt_us: Option<i64>,
    /// Last successful import (its indicators swapped in).
    pub last_refresh_us: Option<i64>,
    pub rows_ok: i64,
    pub rows_bad: i64,
    pub rows_skipped: i64,
    /// Indicators of the feed now.
    pub indicators: i64,
    /// The first bad rows of the last import.
    pub errors: Vec<RowError>,
    /// Why the last attempt failed (fetching, reading), if it did.
    pub last_error: Option<String>,
}

/// The counts of one import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportStatus {
    pub ok: i64,
    pub bad: i64,
    pub skipped: i64,
    pub errors: Vec<RowError>,
}

/// The indicator list's filters; all given must hold. Newest (highest id) first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndicatorQuery {
    pub feed: Option<String>,
    pub kind: Option<Kind>,
    pub method: Option<String>,
    /// At least this verdict.
    pub verdict: Option<Verdict>,
    /// The value starts with this.
    pub prefix: Option<String>,
    /// Exactly this value.
    pub value: Option<String>,
    /// Also indicators expired before `now_us`.
    pub include_expired: bool,
    pub now_us: i64,
    /// Ids below this one (the previous page's last).
    pub before: Option<String>,
    pub limit: u32,
}

/// A threat match to record: its key (identity × indicator × destination) and the detection
/// for this batch's events (`count` = events of the batch).
#[derive(Debug, Clone)]
pub struct MatchDraft {
    pub key: String,
    pub detection: Detection,
}

/// Events of one identity to one country in one hour.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GeoCount {
    pub hour_us: i64,
    pub country: String,
    pub identity: String,
    pub events: i64,
}

/// The map's row: a country's events and distinct identities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CountryCount {
    /// ISO 3166-1 alpha-2; empty when the address is not in the database.
    pub country: String,
    pub events: i64,
    pub identities: i64,
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    json: &str,
) -> Result<T, super::StoreError> {
    serde_json::from_str(json).map_err(|e| super::StoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<String, super::StoreError> {
    serde_json::to_string(v).map_err(|e| super::StoreError::Corrupt(format!("encoding: {e}")))
}

/// A feed row, as selected by [`feed_columns!`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct FeedRow {
    name: String,
    format: String,
    location: String,
    interval_secs: i64,
    verdict: String,
    enabled: i64,
    source: String,
    licence: Option<String>,
    created_us: i64,
    last_attempt_us: Option<i64>,
    last_refresh_us: Option<i64>,
    rows_ok: i64,
    rows_bad: i64,
    rows_skipped: i64,
    indicators: i64,
    errors: String,
    last_error: Option<String>,
}

/// The columns of a [`FeedRow`].
macro_rules! feed_columns {
    () => {
        "name, format, location, interval_secs, verdict, enabled, source, licence, created_us, \
         last_attempt_us, last_refresh_us, rows_ok, rows_bad, rows_skipped, indicators, errors, \
         last_error"
    };
}
pub(crate) use feed_columns;

pub(crate) fn feed_of(r: FeedRow) -> Result<Feed, super::StoreError> {
    let corrupt =
        |what: &str, v: &str| super::StoreError::Corrupt(format!("feed {}: {what} {v:?}", r.name));
    let format = Format::parse(&r.format).ok_or_else(|| corrupt("format", &r.format))?;
    let verdict = Verdict::parse(&r.verdict).ok_or_else(|| corrupt("verdict", &r.verdict))?;
    Ok(Feed {
        errors: decode("feed errors", &r.errors)?,
        spec: FeedSpec {
            name: r.name,
            format,
            location: r.location,
            interval_secs: r.interval_secs,
            verdict,
            enabled: r.enabled != 0,
            source: r.source,
            licence: r.licence,
        },
        created_us: r.created_us,
        last_attempt_us: r.last_attempt_us,
        last_refresh_us: r.last_refresh_us,
        rows_ok: r.rows_ok,
        rows_bad: r.rows_bad,
        rows_skipped: r.rows_skipped,
        indicators: r.indicators,
        last_error: r.last_error,
    })
}

/// Storage of the threat service. A supertrait of [`super::Store`].
pub trait ThreatStore: Send + Sync {
    fn threat_feeds(&self) -> StoreFuture<'_, Vec<Feed>>;

    fn threat_feed<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<Feed>>;

    /// Creates the feed or updates its specification (status kept); true when created.
    fn threat_put_feed<'a>(&'a self, spec: &'a FeedSpec, now_us: i64) -> StoreFuture<'a, bool>;

    /// Deletes the feed and its indicators; false when there was none.
    fn threat_delete_feed<'a>(&'a self, name: &'a str) -> StoreFuture<'a, bool>;

    /// Replaces the feed's indicators by `indicators` and records the import, in one
    /// transaction. False when the feed does not exist (deleted meanwhile).
    fn threat_swap<'a>(
        &'a self,
        feed: &'a str,
        indicators: &'a [Indicator],
        status: &'a ImportStatus,
        now_us: i64,
    ) -> StoreFuture<'a, bool>;

    /// Records a failed attempt (the indicators stay as they were).
    fn threat_feed_failed<'a>(
        &'a self,
        feed: &'a str,
        error: &'a str,
        now_us: i64,
    ) -> StoreFuture<'a, ()>;

    /// Adds indicators, or updates those of the same feed and key (keeping id and first seen).
    fn threat_upsert_indicators<'a>(&'a self, indicators: &'a [Indicator]) -> StoreFuture<'a, ()>;

    /// Expires an indicator at `now_us`; false when there is none with this id.
    fn threat_expire<'a>(&'a self, id: &'a str, now_us: i64) -> StoreFuture<'a, bool>;

    fn threat_indicators<'a>(&'a self, q: &'a IndicatorQuery) -> StoreFuture<'a, Vec<Indicator>>;

    fn threat_indicator<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<Indicator>>;

    /// Every indicator not expired at `now_us` (the matcher's build), with the generation read
    /// in the same snapshot.
    fn threat_live_indicators(&self, now_us: i64) -> StoreFuture<'_, (i64, Vec<Indicator>)>;

    /// The number every change of indicators increases.
    fn threat_generation(&self) -> StoreFuture<'_, i64>;

    /// Writes a batch's matches (merged into the stored ones: same id, counts added, first seen
    /// kept) and publishes them on `detections`, adds the geo counts, and commits the checkpoint
    /// `cp`, in one transaction.
    fn threat_commit<'a>(
        &'a self,
        matches: &'a [MatchDraft],
        geo: &'a [GeoCount],
        cp: &'a Checkpoint,
        now_us: i64,
    ) -> StoreFuture<'a, ()>;

    /// Matches of `identity` (all when `None`), newest first.
    fn threat_matches<'a>(
        &'a self,
        identity: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<Detection>>;

    /// Events and identities per country since `since_us`.
    fn threat_map(&self, since_us: i64) -> StoreFuture<'_, Vec<CountryCount>>;
}

/// Upper bound of every UTF-8 string starting with a prefix (bytewise comparison: SQLite's
/// BINARY collation, PostgreSQL's "C").
pub(crate) fn prefix_end(p: &str) -> String {
    format!("{p}\u{10ffff}")
}

/// Indicator rows written per statement (10 parameters each: under SQLite's 32,766).
pub(crate) const INSERT_CHUNK: usize = 1000;

/// Implements [`ThreatStore`] for a store type; the SQL is shared.
macro_rules! impl_threat_store {
    ($ty:ty, db = $db:ty) => {
        impl $crate::store::threat::ThreatStore for $ty {
            fn threat_feeds(
                &self,
            ) -> $crate::store::StoreFuture<'_, Vec<$crate::store::threat::Feed>> {
                use $crate::store::threat::{FeedRow, feed_of};
                Box::pin(async move {
                    let rows: Vec<FeedRow> = sqlx::query_as(concat!(
                        "SELECT ",
                        $crate::store::threat::feed_columns!(),
                        " FROM threat_feeds ORDER BY name"
                    ))
                    .fetch_all(self.writer())
                    .await?;
                    rows.into_iter().map(feed_of).collect()
                })
            }

            fn threat_feed<'a>(
                &'a self,
                name: &'a str,
            ) -> $crate::store::StoreFuture<'a, Option<$crate::store::threat::Feed>> {
                use $crate::store::threat::{FeedRow, feed_of};
                Box::pin(async move {
                    let row: Option<FeedRow> = sqlx::query_as(concat!(
                        "SELECT ",
                        $crate::store::threat::feed_columns!(),
                        " FROM threat_feeds WHERE name = $1"
                    ))
                    .bind(name)
                    .fetch_optional(self.writer())
                    .await?;
                    row.map(feed_of).transpose()
                })
            }

            fn threat_put_feed<'a>(
                &'a self,
                s: &'a $crate::store::threat::FeedSpec,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, bool> {
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    let exists: Option<i64> =
                        sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM threat_feeds WHERE name = $1")
                            .bind(&s.name)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if exists.is_some() {
                        sqlx::query(
                            "UPDATE threat_feeds SET format = $2, location = $3, \
                             interval_secs = $4, verdict = $5, enabled = $6, source = $7, \
                             licence = $8 WHERE name = $1",
                        )
                        .bind(&s.name)
                        .bind(s.format.as_str())
                        .bind(&s.location)
                        .bind(s.interval_secs)
                        .bind(s.verdict.as_str())
                        .bind(i64::from(s.enabled))
                        .bind(&s.source)
                        .bind(&s.licence)
                        .execute(&mut *tx)
                        .await?;
                    } else {
                        sqlx::query(
                            "INSERT INTO threat_feeds (name, format, location, interval_secs, \
                             verdict, enabled, source, licence, created_us) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        )
                        .bind(&s.name)
                        .bind(s.format.as_str())
                        .bind(&s.location)
                        .bind(s.interval_secs)
                        .bind(s.verdict.as_str())
                        .bind(i64::from(s.enabled))
                        .bind(&s.source)
                        .bind(&s.licence)
                        .bind(now_us)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(exists.is_none())
                })
            }

            fn threat_delete_feed<'a>(
                &'a self,
                name: &'a str,
            ) -> $crate::store::StoreFuture<'a, bool> {
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    sqlx::query("DELETE FROM threat_indicators WHERE feed = $1")
                        .bind(name)
                        .execute(&mut *tx)
                        .await?;
                    let gone = sqlx::query("DELETE FROM threat_feeds WHERE name = $1")
                        .bind(name)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    Self::threat_bump(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(gone == 1)
                })
            }

            fn threat_swap<'a>(
                &'a self,
                feed: &'a str,
                indicators: &'a [$crate::store::threat::Indicator],
                status: &'a $crate::store::threat::ImportStatus,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, bool> {
                use $crate::store::threat::encode;
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    let exists: Option<i64> =
                        sqlx::query_scalar("SELECT CAST(1 AS BIGINT) FROM threat_feeds WHERE name = $1")
                            .bind(feed)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if exists.is_none() {
                        return Ok(false);
                    }
                    let old: Vec<(String, String, i64)> = sqlx::query_as(
                        "SELECT ikey, id, first_seen_us FROM threat_indicators WHERE feed = $1",
                    )
                    .bind(feed)
                    .fetch_all(&mut *tx)
                    .await?;
                    let old: std::collections::HashMap<String, (String, i64)> = old
                        .into_iter()
                        .map(|(k, id, first)| (k, (id, first)))
                        .collect();
                    sqlx::query("DELETE FROM threat_indicators WHERE feed = $1")
                        .bind(feed)
                        .execute(&mut *tx)
                        .await?;
                    for chunk in indicators.chunks($crate::store::threat::INSERT_CHUNK) {
                        let mut rows = Vec::with_capacity(chunk.len());
                        for i in chunk {
                            let mut i = i.clone();
                            i.feed = feed.to_owned();
                            let key = i.key();
                            if let Some((id, first)) = old.get(&key) {
                                i.id = id.parse().unwrap_or(i.id);
                                i.first_seen_us = *first;
                            }
                            let body = encode(&i)?;
                            rows.push((key, i, body));
                        }
                        Self::threat_insert(&mut *tx, &rows).await?;
                    }
                    sqlx::query(
                        "UPDATE threat_feeds SET last_attempt_us = $2, last_refresh_us = $2, \
                         rows_ok = $3, rows_bad = $4, rows_skipped = $5, indicators = $6, \
                         errors = $7, last_error = NULL WHERE name = $1",
                    )
                    .bind(feed)
                    .bind(now_us)
                    .bind(status.ok)
                    .bind(status.bad)
                    .bind(status.skipped)
                    .bind(indicators.len() as i64)
                    .bind(encode(&status.errors)?)
                    .execute(&mut *tx)
                    .await?;
                    Self::threat_bump(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(true)
                })
            }

            fn threat_feed_failed<'a>(
                &'a self,
                feed: &'a str,
                error: &'a str,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, ()> {
                Box::pin(async move {
                    sqlx::query(
                        "UPDATE threat_feeds SET last_attempt_us = $2, last_error = $3 \
                         WHERE name = $1",
                    )
                    .bind(feed)
                    .bind(now_us)
                    .bind(error)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                })
            }

            fn threat_upsert_indicators<'a>(
                &'a self,
                indicators: &'a [$crate::store::threat::Indicator],
            ) -> $crate::store::StoreFuture<'a, ()> {
                use $crate::store::threat::encode;
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    for i in indicators {
                        let mut i = i.clone();
                        let key = i.key();
                        let old: Option<(String, i64)> = sqlx::query_as(
                            "SELECT id, first_seen_us FROM threat_indicators \
                             WHERE feed = $1 AND ikey = $2",
                        )
                        .bind(&i.feed)
                        .bind(&key)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if let Some((id, first)) = old {
                            i.id = id.parse().unwrap_or(i.id);
                            i.first_seen_us = first;
                            sqlx::query("DELETE FROM threat_indicators WHERE id = $1")
                                .bind(id)
                                .execute(&mut *tx)
                                .await?;
                        }
                        let body = encode(&i)?;
                        Self::threat_insert(&mut *tx, &[(key, i, body)]).await?;
                    }
                    Self::threat_bump(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn threat_expire<'a>(
                &'a self,
                id: &'a str,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, bool> {
                use $crate::store::threat::{Indicator, decode, encode};
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    let body: Option<String> =
                        sqlx::query_scalar("SELECT body FROM threat_indicators WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    let Some(body) = body else {
                        return Ok(false);
                    };
                    let mut i: Indicator = decode("indicator", &body)?;
                    i.expires_us = Some(now_us);
                    sqlx::query(
                        "UPDATE threat_indicators SET expires_us = $2, body = $3 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(now_us)
                    .bind(encode(&i)?)
                    .execute(&mut *tx)
                    .await?;
                    Self::threat_bump(&mut *tx).await?;
                    tx.commit().await?;
                    Ok(true)
                })
            }

            fn threat_indicators<'a>(
                &'a self,
                q: &'a $crate::store::threat::IndicatorQuery,
            ) -> $crate::store::StoreFuture<'a, Vec<$crate::store::threat::Indicator>> {
                Box::pin(async move {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "SELECT body FROM threat_indicators WHERE 1 = 1",
                    );
                    if let Some(v) = &q.feed {
                        qb.push(" AND feed = ").push_bind(v.clone());
                    }
                    if let Some(v) = q.kind {
                        qb.push(" AND kind = ").push_bind(v.as_str());
                    }
                    if let Some(v) = &q.method {
                        qb.push(" AND method = ").push_bind(v.clone());
                    }
                    if let Some(v) = q.verdict {
                        qb.push(" AND verdict >= ").push_bind(v.rank());
                    }
                    if let Some(v) = &q.value {
                        qb.push(" AND value = ").push_bind(v.clone());
                    }
                    if let Some(p) = &q.prefix {
                        qb.push(" AND value >= ")
                            .push_bind(p.clone())
                            .push(" AND value < ")
                            .push_bind($crate::store::threat::prefix_end(p));
                    }
                    if !q.include_expired {
                        qb.push(" AND (expires_us IS NULL OR expires_us > ")
                            .push_bind(q.now_us)
                            .push(")");
                    }
                    if let Some(v) = &q.before {
                        qb.push(" AND id < ").push_bind(v.clone());
                    }
                    qb.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(q.limit));
                    let rows: Vec<String> =
                        qb.build_query_scalar().fetch_all(self.writer()).await?;
                    rows.iter()
                        .map(|j| $crate::store::threat::decode("indicator", j))
                        .collect()
                })
            }

            fn threat_indicator<'a>(
                &'a self,
                id: &'a str,
            ) -> $crate::store::StoreFuture<'a, Option<$crate::store::threat::Indicator>> {
                Box::pin(async move {
                    let row: Option<String> =
                        sqlx::query_scalar("SELECT body FROM threat_indicators WHERE id = $1")
                            .bind(id)
                            .fetch_optional(self.writer())
                            .await?;
                    row.map(|j| $crate::store::threat::decode("indicator", &j))
                        .transpose()
                })
            }

            fn threat_live_indicators(
                &self,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'_, (i64, Vec<$crate::store::threat::Indicator>)>
            {
                Box::pin(async move {
                    let generation = self.threat_generation().await?;
                    let rows: Vec<String> = sqlx::query_scalar(
                        "SELECT body FROM threat_indicators \
                         WHERE expires_us IS NULL OR expires_us > $1",
                    )
                    .bind(now_us)
                    .fetch_all(self.writer())
                    .await?;
                    let list = rows
                        .iter()
                        .map(|j| $crate::store::threat::decode("indicator", j))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((generation, list))
                })
            }

            fn threat_generation(&self) -> $crate::store::StoreFuture<'_, i64> {
                Box::pin(async move {
                    Ok(sqlx::query_scalar(
                        "SELECT generation FROM threat_generation WHERE one = 1",
                    )
                    .fetch_one(self.writer())
                    .await?)
                })
            }

            fn threat_commit<'a>(
                &'a self,
                matches: &'a [$crate::store::threat::MatchDraft],
                geo: &'a [$crate::store::threat::GeoCount],
                cp: &'a $crate::store::bus::Checkpoint,
                now_us: i64,
            ) -> $crate::store::StoreFuture<'a, ()> {
                use $crate::store::threat::encode;
                Box::pin(async move {
                    let mut tx = self.writer().begin().await?;
                    let keys: Vec<&str> = matches.iter().map(|m| m.key.as_str()).collect();
                    let stored = $crate::store::bus::recurrences::<$db>(
                        &mut *tx,
                        "threat_matches",
                        "mkey",
                        &keys,
                    )
                    .await?;
                    let mut detections = Vec::with_capacity(matches.len());
                    for m in matches {
                        let mut d = m.detection.clone();
                        if let Some((id, count, first)) = stored.get(&m.key) {
                            d.id = id.parse().unwrap_or(d.id);
                            d.count = (*count as u64).saturating_add(d.count);
                            let first = time::OffsetDateTime::from_unix_timestamp_nanos(
                                i128::from(*first) * 1000,
                            )
                            .unwrap_or(d.first_seen);
                            d.first_seen = d.first_seen.min(first);
                        }
                        sqlx::query(
                            "INSERT INTO threat_matches (mkey, id, identity, count, \
                             first_seen_us, last_seen_us, detection) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (mkey) DO UPDATE \
                             SET count = excluded.count, last_seen_us = excluded.last_seen_us, \
                             detection = excluded.detection",
                        )
                        .bind(&m.key)
                        .bind(d.id.to_string())
                        .bind(&d.identity)
                        .bind(d.count as i64)
                        .bind($crate::store::to_us(d.first_seen))
                        .bind($crate::store::to_us(d.last_seen))
                        .bind(encode(&d)?)
                        .execute(&mut *tx)
                        .await?;
                        detections.push(d);
                    }
                    if !detections.is_empty() {
                        $crate::store::bus::append_detections::<$db>(&mut *tx, &detections, now_us)
                            .await?;
                    }
                    for g in geo {
                        sqlx::query(
                            "INSERT INTO threat_geo (hour_us, country, identity, events) \
                             VALUES ($1, $2, $3, $4) ON CONFLICT (hour_us, country, identity) \
                             DO UPDATE SET events = threat_geo.events + excluded.events",
                        )
                        .bind(g.hour_us)
                        .bind(&g.country)
                        .bind(&g.identity)
                        .bind(g.events)
                        .execute(&mut *tx)
                        .await?;
                    }
                    $crate::store::bus::commit_checkpoint::<$db>(&mut *tx, cp).await?;
                    tx.commit().await?;
                    Ok(())
                })
            }

            fn threat_matches<'a>(
                &'a self,
                identity: Option<&'a str>,
                limit: u32,
            ) -> $crate::store::StoreFuture<'a, Vec<hais_shared::detection::Detection>> {
                Box::pin(async move {
                    let mut qb = sqlx::QueryBuilder::<$db>::new(
                        "SELECT detection FROM threat_matches WHERE 1 = 1",
                    );
                    if let Some(i) = identity {
                        qb.push(" AND identity = ").push_bind(i.to_owned());
                    }
                    qb.push(" ORDER BY last_seen_us DESC, id DESC LIMIT ")
                        .push_bind(i64::from(limit));
                    let rows: Vec<String> =
                        qb.build_query_scalar().fetch_all(self.writer()).await?;
                    rows.iter()
                        .map(|j| $crate::store::threat::decode("threat match", j))
                        .collect()
                })
            }

            fn threat_map(
                &self,
                since_us: i64,
            ) -> $crate::store::StoreFuture<'_, Vec<$crate::store::threat::CountryCount>> {
                Box::pin(async move {
                    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                        "SELECT country, CAST(sum(events) AS BIGINT), \
                         CAST(count(DISTINCT identity) AS BIGINT) FROM threat_geo \
                         WHERE hour_us >= $1 GROUP BY country ORDER BY 2 DESC, country",
                    )
                    .bind(since_us)
                    .fetch_all(self.writer())
                    .await?;
                    Ok(rows
                        .into_iter()
                        .map(|(country, events, identities)| {
                            $crate::store::threat::CountryCount {
                                country,
                                events,
                                identities,
                            }
                        })
                        .collect())
                })
            }
        }

        impl $ty {
            /// Increases the indicators' generation in `conn`'s transaction.
            async fn threat_bump(
                conn: &mut <$db as sqlx::Database>::Connection,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query("UPDATE threat_generation SET generation = generation + 1 WHERE one = 1")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            /// Inserts indicator rows `(key, indicator, body)` in `conn`'s transaction.
            async fn threat_insert(
                conn: &mut <$db as sqlx::Database>::Connection,
                rows: &[(String, $crate::store::threat::Indicator, String)],
            ) -> Result<(), $crate::store::StoreError> {
                if rows.is_empty() {
                    return Ok(());
                }
                let mut qb = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO threat_indicators (id, feed, ikey, kind, method, value, \
                     verdict, expires_us, first_seen_us, body) ",
                );
                qb.push_values(rows, |mut b, (key, i, body)| {
                    b.push_bind(i.id.to_string())
                        .push_bind(i.feed.clone())
                        .push_bind(key.clone())
                        .push_bind(i.kind.as_str())
                        .push_bind(i.method.clone().unwrap_or_default())
                        .push_bind(i.value.clone())
                        .push_bind(i.verdict.rank())
                        .push_bind(i.expires_us)
                        .push_bind(i.first_seen_us)
                        .push_bind(body.clone());
                });
                qb.build().execute(&mut *conn).await?;
                Ok(())
            }
        }
    };
}

impl_threat_store!(super::sqlite::SqliteStore, db = sqlx::Sqlite);
impl_threat_store!(super::postgres::PgStore, db = sqlx::Postgres);
