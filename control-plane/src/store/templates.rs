//! Storage of registration templates (identity service, migration `0009_workloads`;
//! `hais_shared::template` says what they do). Same shape as the entries: the SQL is shared by
//! both backends, a twin (same pattern and scope) is a conflict.

use hais_shared::template::RegistrationTemplate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{StoreError, StoreFuture};

/// A stored template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TemplateRecord {
    /// UUIDv7.
    pub id: String,
    /// SPIFFE ID pattern, e.g. `spiffe://{td}/ns/{namespace}/sa/{service_account}`.
    pub pattern: String,
    /// Sorted, distinct scope selectors; empty applies to every workload with the facts the
    /// pattern names.
    pub selectors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_by: String,
    pub created_us: i64,
}

impl TemplateRecord {
    pub fn new(t: &RegistrationTemplate, created_by: &str, created_us: i64) -> TemplateRecord {
        TemplateRecord {
            id: t.id.clone(),
            pattern: t.pattern.clone(),
            selectors: t.selectors.iter().map(ToString::to_string).collect(),
            description: t.description.clone(),
            created_by: created_by.to_owned(),
            created_us,
        }
    }

    /// Back to a usable template; stored rows were validated on the way in.
    pub fn to_template(&self) -> Result<RegistrationTemplate, StoreError> {
        let selectors = hais_shared::template::validate(&self.pattern, &self.selectors)
            .map_err(|e| StoreError::Corrupt(format!("registration template {}: {e}", self.id)))?;
        Ok(RegistrationTemplate {
            id: self.id.clone(),
            pattern: self.pattern.clone(),
            selectors,
            description: self.description.clone(),
        })
    }

    /// The uniqueness key: hex SHA-256 of the pattern and the scope.
    fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.pattern.as_bytes());
        for s in &self.selectors {
            h.update(b"\n");
            h.update(s.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// Storage of templates. A supertrait of [`super::Store`].
pub trait TemplateStore: Send + Sync {
    /// `Ok(Err(id))`: template `id` has the same pattern and scope; nothing was written.
    fn insert_template<'a>(&'a self, t: &'a TemplateRecord) -> StoreFuture<'a, Result<(), String>>;
    /// Every template, in id order (the resolver's snapshot and the list).
    fn all_templates(&self) -> StoreFuture<'_, Vec<TemplateRecord>>;
    fn get_template<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<TemplateRecord>>;
    /// False when there was no such template.
    fn delete_template<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool>;
}

const COLUMNS: &str = "id, pattern, selectors, description, created_by, created_us";
type Row = (String, String, String, Option<String>, String, i64);

fn from_row(r: Row) -> TemplateRecord {
    let (id, pattern, selectors, description, created_by, created_us) = r;
    TemplateRecord {
        id,
        pattern,
        selectors: selectors.lines().map(str::to_owned).collect(),
        description,
        created_by,
        created_us,
    }
}

macro_rules! impl_template_store {
    ($ty:ty) => {
        impl TemplateStore for $ty {
            fn insert_template<'a>(
                &'a self,
                t: &'a TemplateRecord,
            ) -> StoreFuture<'a, Result<(), String>> {
                Box::pin(async move {
                    let key = t.key();
                    let inserted = sqlx::query(
                        "INSERT INTO registration_templates (id, pattern, selectors, description, \
                         created_by, created_us, key_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         ON CONFLICT (key_sha256) DO NOTHING",
                    )
                    .bind(&t.id)
                    .bind(&t.pattern)
                    .bind(t.selectors.join("\n"))
                    .bind(&t.description)
                    .bind(&t.created_by)
                    .bind(t.created_us)
                    .bind(&key)
                    .execute(self.writer())
                    .await?
                    .rows_affected()
                        == 1;
                    if inserted {
                        return Ok(Ok(()));
                    }
                    let twin: Option<String> = sqlx::query_scalar(
                        "SELECT id FROM registration_templates WHERE key_sha256 = $1",
                    )
                    .bind(&key)
                    .fetch_optional(self.writer())
                    .await?;
                    Ok(Err(twin.unwrap_or_default()))
                })
            }

            fn all_templates(&self) -> StoreFuture<'_, Vec<TemplateRecord>> {
                Box::pin(async move {
                    let sql = format!("SELECT {COLUMNS} FROM registration_templates ORDER BY id");
                    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .fetch_all(self.writer())
                        .await?;
                    Ok(rows.into_iter().map(from_row).collect())
                })
            }

            fn get_template<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<TemplateRecord>> {
                Box::pin(async move {
                    let sql = format!("SELECT {COLUMNS} FROM registration_templates WHERE id = $1");
                    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind(id)
                        .fetch_optional(self.writer())
                        .await?;
                    Ok(row.map(from_row))
                })
            }

            fn delete_template<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
                Box::pin(async move {
                    Ok(
                        sqlx::query("DELETE FROM registration_templates WHERE id = $1")
                            .bind(id)
                            .execute(self.writer())
                            .await?
                            .rows_affected()
                            == 1,
                    )
                })
            }
        }
    };
}

impl_template_store!(super::sqlite::SqliteStore);
impl_template_store!(super::postgres::PgStore);
