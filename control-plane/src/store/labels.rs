//! Analyst labels on fingerprints (`fingerprint_labels`, migration 0001): one SQL text for both
//! backends, expanded by [`impl_label_store!`] like [`super::spire`].
//!
//! Labels per fingerprint are bounded ([`MAX_LABELS`]): a label is free text an analyst (or a
//! stolen analyst token) adds, so without a bound one fingerprint's detail could grow without
//! limit.

use hais_shared::fingerprint::Method;

use super::StoreFuture;

/// Most labels one fingerprint can carry.
pub const MAX_LABELS: i64 = 64;

/// What adding a label did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelOutcome {
    /// Added, or it was there already.
    Added,
    UnknownFingerprint,
    /// The fingerprint already has [`MAX_LABELS`] labels.
    Full,
}

/// Storage of labels. A supertrait of [`super::Store`].
pub trait LabelStore: Send + Sync {
    /// Attaches `label` to a known fingerprint, within [`MAX_LABELS`].
    fn add_label<'a>(
        &'a self,
        method: Method,
        value: &'a str,
        label: &'a str,
    ) -> StoreFuture<'a, LabelOutcome>;

    /// Removes a label; false when the fingerprint did not carry it.
    fn remove_label<'a>(
        &'a self,
        method: Method,
        value: &'a str,
        label: &'a str,
    ) -> StoreFuture<'a, bool>;
}

macro_rules! impl_label_store {
    ($ty:ty, write = |$w:ident| $wexpr:expr, read = |$r:ident| $rexpr:expr) => {
        impl $crate::store::labels::LabelStore for $ty {
            fn add_label<'a>(
                &'a self,
                method: hais_shared::fingerprint::Method,
                value: &'a str,
                label: &'a str,
            ) -> $crate::store::StoreFuture<'a, $crate::store::labels::LabelOutcome> {
                use $crate::store::labels::{LabelOutcome, MAX_LABELS};
                let $w = self;
                Box::pin(async move {
                    // The fingerprint may still be a pending roll-up delta.
                    $crate::store::Store::settle_rollups(self).await?;
                    let r = sqlx::query(
                        "INSERT INTO fingerprint_labels (method, value, label, created_us) \
                         SELECT f.method, f.value, $1, $2 FROM fingerprints f \
                         WHERE f.method = $3 AND f.value = $4 AND \
                         (SELECT count(*) FROM fingerprint_labels l \
                          WHERE l.method = $3 AND l.value = $4) < $5 \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(label)
                    .bind($crate::store::now_us())
                    .bind(method.as_str())
                    .bind(value)
                    .bind(MAX_LABELS)
                    .execute($wexpr)
                    .await?;
                    if r.rows_affected() == 1 {
                        return Ok(LabelOutcome::Added);
                    }
                    let $r = self;
                    let (known, has, count): (i64, i64, i64) = sqlx::query_as(
                        "SELECT (SELECT count(*) FROM fingerprints WHERE method = $1 AND value = $2), \
                         (SELECT count(*) FROM fingerprint_labels \
                          WHERE method = $1 AND value = $2 AND label = $3), \
                         (SELECT count(*) FROM fingerprint_labels WHERE method = $1 AND value = $2)",
                    )
                    .bind(method.as_str())
                    .bind(value)
                    .bind(label)
                    .fetch_one($rexpr)
                    .await?;
                    Ok(if known == 0 {
                        LabelOutcome::UnknownFingerprint
                    } else if has > 0 || count < MAX_LABELS {
                        LabelOutcome::Added
                    } else {
                        LabelOutcome::Full
                    })
                })
            }

            fn remove_label<'a>(
                &'a self,
                method: hais_shared::fingerprint::Method,
                value: &'a str,
                label: &'a str,
            ) -> $crate::store::StoreFuture<'a, bool> {
                let $w = self;
                Box::pin(async move {
                    let r = sqlx::query(
                        "DELETE FROM fingerprint_labels WHERE method = $1 AND value = $2 \
                         AND label = $3",
                    )
                    .bind(method.as_str())
                    .bind(value)
                    .bind(label)
                    .execute($wexpr)
                    .await?;
                    Ok(r.rows_affected() > 0)
                })
            }
        }
    };
}

impl_label_store!(
    super::sqlite::SqliteStore,
    write = |s| s.writer(),
    read = |s| s.reader()
);
impl_label_store!(
    super::postgres::PgStore,
    write = |s| s.writer(),
    read = |s| s.reader()
);
