//! Fingerprint search: the filter type, the opaque keyset cursor, and the SQL built from them.
//!
//! The SQL is built once, generically over the sqlx backend, with every user-supplied value passed
//! as a bind parameter; only fixed fragments are ever spliced into the text.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hais_shared::fingerprint::Method;
use serde::{Deserialize, Serialize};
use sqlx::{Database, Encode, QueryBuilder, Type};

use super::rollup::{DIM_AGENT, DIM_HOST, DIM_IDENTITY, DIM_SERVER_NAME};

/// The largest page a search may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Filters of a fingerprint search. All given filters must match (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FingerprintQuery {
    pub method: Option<Method>,
    /// Exact value.
    pub value: Option<String>,
    /// Value prefix (byte-wise).
    pub prefix: Option<String>,
    pub part_a: Option<String>,
    pub part_b: Option<String>,
    pub part_c: Option<String>,
    pub agent: Option<String>,
    pub host: Option<String>,
    pub server_name: Option<String>,
    pub identity: Option<String>,
    /// Seen at or after (µs). With a host/agent/server/identity filter, applies to that pairing.
    pub from_us: Option<i64>,
    /// Seen at or before (µs).
    pub to_us: Option<i64>,
    /// Continue after this position.
    pub after: Option<Cursor>,
    /// Page size, 1..=[`MAX_PAGE_SIZE`].
    pub limit: u32,
}

/// A position in (method, value) order. Opaque to clients: base64url of a small JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(rename = "m")]
    pub method: String,
    #[serde(rename = "v")]
    pub value: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Decodes a cursor received from a client; `None` if it is not one we issued.
    pub fn decode(s: &str) -> Option<Cursor> {
        if s.len() > 2048 {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(s).ok()?;
        let c: Cursor = serde_json::from_slice(&bytes).ok()?;
        (Method::ALL.iter().any(|m| m.as_str() == c.method) && c.value.len() <= 4096).then_some(c)
    }
}

/// The exclusive upper bound of all strings starting with `prefix` (byte-wise), or `None` when
/// every string ≥ prefix qualifies. Prefixes are printable ASCII, so incrementing the last byte
/// that is below 0x7f is always valid UTF-8.
pub(crate) fn prefix_upper(prefix: &str) -> Option<String> {
    let mut b = prefix.as_bytes().to_vec();
    while let Some(last) = b.pop() {
        if last < 0x7f {
            b.push(last + 1);
            return String::from_utf8(b).ok();
        }
    }
    None
}

/// Builds the search statement for backend `DB`. Returns it with `limit + 1` rows requested, so
/// the caller can tell whether another page follows.
pub(crate) fn build_search<DB>(q: &FingerprintQuery) -> QueryBuilder<DB>
where
    DB: Database,
    <DB as Database>::Arguments: Default,
    for<'t> String: Encode<'t, DB> + Type<DB>,
    for<'t> &'t str: Encode<'t, DB> + Type<DB>,
    for<'t> i64: Encode<'t, DB> + Type<DB>,
{
    let dims: Vec<(&'static str, &String)> = [
        (DIM_HOST, &q.host),
        (DIM_AGENT, &q.agent),
        (DIM_SERVER_NAME, &q.server_name),
        (DIM_IDENTITY, &q.identity),
    ]
    .into_iter()
    .filter_map(|(d, v)| v.as_ref().map(|v| (d, v)))
    .collect();

    let mut qb = QueryBuilder::<DB>::new(
        "SELECT f.method, f.value, f.part_a, f.part_b, f.part_c, \
         f.first_seen_us, f.last_seen_us, f.count FROM ",
    );
    // With a dimension filter, the dimension's primary key (dim, dim_value, method, value) drives
    // the scan in (method, value) order; otherwise the roll-up's own primary key does.
    let k = if let Some((dim, value)) = dims.first() {
        qb.push("fingerprint_dims k JOIN fingerprints f ON f.method = k.method AND f.value = k.value WHERE k.dim = ");
        qb.push_bind(*dim);
        qb.push(" AND k.dim_value = ");
        qb.push_bind((*value).clone());
        "k"
    } else {
        qb.push("fingerprints f WHERE 1 = 1");
        "f"
    };
    let time_filter = |qb: &mut QueryBuilder<DB>, alias: &str| {
        if let Some(from) = q.from_us {
            qb.push(format!(" AND {alias}.last_seen_us >= "));
            qb.push_bind(from);
        }
        if let Some(to) = q.to_us {
            qb.push(format!(" AND {alias}.first_seen_us <= "));
            qb.push_bind(to);
        }
    };
    time_filter(&mut qb, k);
    for (dim, value) in dims.iter().skip(1) {
        qb.push(
            " AND EXISTS (SELECT 1 FROM fingerprint_dims e WHERE e.method = f.method \
             AND e.value = f.value AND e.dim = ",
        );
        qb.push_bind(*dim);
        qb.push(" AND e.dim_value = ");
        qb.push_bind((*value).clone());
        time_filter(&mut qb, "e");
        qb.push(")");
    }
    if let Some(m) = q.method {
        qb.push(format!(" AND {k}.method = "));
        qb.push_bind(m.as_str());
    }
    if let Some(v) = &q.value {
        qb.push(format!(" AND {k}.value = "));
        qb.push_bind(v.clone());
    }
    if let Some(p) = &q.prefix {
        qb.push(format!(" AND {k}.value >= "));
        qb.push_bind(p.clone());
        if let Some(upper) = prefix_upper(p) {
            qb.push(format!(" AND {k}.value < "));
            qb.push_bind(upper);
        }
    }
    for (col, v) in [
        ("part_a", &q.part_a),
        ("part_b", &q.part_b),
        ("part_c", &q.part_c),
    ] {
        if let Some(v) = v {
            qb.push(format!(" AND f.{col} = "));
            qb.push_bind(v.clone());
        }
    }
    if let Some(c) = &q.after {
        qb.push(format!(" AND ({k}.method, {k}.value) > ("));
        qb.push_bind(c.method.clone());
        qb.push(", ");
        qb.push_bind(c.value.clone());
        qb.push(")");
    }
    qb.push(format!(" ORDER BY {k}.method, {k}.value LIMIT "));
    qb.push_bind(i64::from(q.limit.clamp(1, MAX_PAGE_SIZE)) + 1);
    qb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_rejects_garbage() {
        let c = Cursor {
            method: "ja4".into(),
            value: "t13d_a_b".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("not a cursor"), None);
        assert_eq!(Cursor::decode("' OR 1=1 --"), None);
        let bad = URL_SAFE_NO_PAD.encode(br#"{"m":"nope","v":"x"}"#);
        assert_eq!(Cursor::decode(&bad), None);
    }

    #[test]
    fn prefix_upper_bounds() {
        assert_eq!(prefix_upper("t13").as_deref(), Some("t14"));
        assert_eq!(prefix_upper("a\x7f").as_deref(), Some("b"));
        assert_eq!(prefix_upper(""), None);
    }

    #[test]
    fn values_are_bound_not_spliced() {
        let q = FingerprintQuery {
            host: Some("x' OR '1'='1".into()),
            prefix: Some("t13".into()),
            limit: 10,
            ..Default::default()
        };
        let sql = build_search::<sqlx::Sqlite>(&q).into_sql();
        assert!(!sql.as_str().contains("OR '1'"), "{}", sql.as_str());
    }
}
