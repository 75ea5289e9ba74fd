//! Roll-up deltas, and the one interface through which services contribute roll-ups:
//! [`RollupContributor`].
//!
//! A contributor owns *delta kinds* ([`DeltaKind`]): a roll-up table, its key columns and what it
//! accumulates per key (first/last seen and a count, or a count). At ingest it extracts the
//! deltas of the newly stored events into the transaction's [`BatchDeltas`] (aggregated in
//! memory, keys as interned string ids); the record is stored in `rollup_pending` with the events.
//! At fold time the stage ([`super::fold`]) decodes many records, merges them into one sorted
//! [`Rollups`] and upserts every kind into its table the same way, so a contributor never writes
//! SQL for its roll-ups and the stage never names a service. The contributors are listed once, in
//! [`CONTRIBUTORS`]; their kinds, in that order, are the sections of the record.
//!
//! Aggregating a batch first means each roll-up row is written once per fold instead of once
//! per event; merging many batches' deltas before writing shrinks the writes further. Merged keys
//! come out sorted, so writers lock roll-up rows in one order and cannot deadlock each other.
//!
//! The record's encoding is that of the earlier fixed-layout format (version 2: fingerprints,
//! dims, hourly, identities), so records pending across an upgrade or a downgrade fold as before.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use hais_shared::event::FingerprintEvent;

use super::StoreError;

/// The dimensions a fingerprint is rolled up by.
pub const DIM_HOST: &str = "host";
pub const DIM_AGENT: &str = "agent";
pub const DIM_SERVER_NAME: &str = "server_name";
pub const DIM_IDENTITY: &str = "identity";
/// A fingerprint's workloads (`fingerprint_dims`): the workload key of the events carrying it.
pub const DIM_WORKLOAD: &str = "workload";
/// Identity roll-ups (`identity_rollups`, see `store::identity`): the identity itself (dim and
/// value empty), and where it was seen: host, agent (the dims above) and destination.
pub const DIM_SELF: &str = "";
pub const DIM_DESTINATION: &str = "destination";

/// One hour, in microseconds: the bucket size of `fingerprint_hourly`.
pub const HOUR_US: i64 = 3_600_000_000;

/// Most key columns a delta kind may have.
pub const MAX_KEY: usize = 4;

/// First/last seen and count of one key within a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub first_us: i64,
    pub last_us: i64,
    pub count: i64,
}

impl Seen {
    pub(crate) fn add(&mut self, ts: i64) {
        self.first_us = self.first_us.min(ts);
        self.last_us = self.last_us.max(ts);
        self.count += 1;
    }
    fn merge(&mut self, o: Seen) {
        self.first_us = self.first_us.min(o.first_us);
        self.last_us = self.last_us.max(o.last_us);
        self.count += o.count;
    }
    pub(crate) fn new(ts: i64) -> Self {
        Seen {
            first_us: ts,
            last_us: ts,
            count: 1,
        }
    }
}

/// How one key column is held: a string (interned in the record) or a 64-bit integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Str,
    Int,
}

/// What a delta kind accumulates per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// `first_seen_us`, `last_seen_us` (kept as min / max) and `count` (added).
    Seen,
    /// `count` only (added).
    Count,
}

/// Columns a table gets on insert, computed from the key (never updated afterwards).
#[derive(Debug, Clone, Copy)]
pub struct Derived {
    pub columns: &'static [&'static str],
    pub values: for<'a> fn(&[KeyVal<'a>]) -> Vec<Option<&'a str>>,
}

/// One kind of roll-up delta and the table it is folded into.
#[derive(Debug, Clone, Copy)]
pub struct DeltaKind {
    pub table: &'static str,
    /// Key columns (the table's primary key), in key order.
    pub key: &'static [(&'static str, Part)],
    pub measure: Measure,
    pub derived: Option<Derived>,
}

/// What retention deletes from one table: rows whose `column` is before the cutoff, floored to
/// `bucket_us` (so an hourly bucket is kept while any of its hour is).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub table: &'static str,
    pub column: &'static str,
    pub bucket_us: i64,
    /// Counted as `fingerprints_deleted` in the retention outcome.
    pub reported: bool,
}

/// A service's share of the roll-ups. Implementations are stateless; they are listed in
/// [`CONTRIBUTORS`].
pub trait RollupContributor: Sync + std::fmt::Debug {
    /// Its delta kinds. Their order (after the kinds of earlier contributors) is their section
    /// order in the stored record, so kinds are only ever appended.
    fn kinds(&self) -> &'static [DeltaKind];

    /// Adds the deltas of newly stored events (replays never reach it). `out` addresses this
    /// contributor's kinds by their index in [`Self::kinds`].
    fn extract<'a>(&self, events: &[&'a FingerprintEvent], out: &mut Extract<'_, 'a>);

    /// Tables retention trims, its delta tables and any other it keeps (e.g. tied matches).
    fn retention(&self) -> &'static [Retention];
}

/// Every contributor, in record section order: fingerprints (3 kinds), identities (1), then
/// workloads (1).
pub static CONTRIBUTORS: &[&dyn RollupContributor] = &[
    &super::fingerprints::FingerprintRollups,
    &super::identity::IdentityRollups,
    &super::workloads::WorkloadRollups,
];

/// The roll-ups of a *subject* (an identity, a workload): for each event whose `subject` is
/// known, the subject itself (dim and value empty) and where it was seen: host, agent and
/// destination (the TLS server name, or `ip:port` when the client sent none). Into kind `kind`
/// of `out`, keyed (subject, dim, dim value).
pub fn extract_subject<'a>(
    events: &[&'a FingerprintEvent],
    out: &mut Extract<'_, 'a>,
    kind: usize,
    subject: impl Fn(&'a FingerprintEvent) -> Option<&'a str>,
) {
    let [this, host, agent, dest_dim] =
        [DIM_SELF, DIM_HOST, DIM_AGENT, DIM_DESTINATION].map(|d| out.intern(d));
    for &e in events {
        let Some(id) = subject(e) else {
            continue;
        };
        let ts = super::to_us(e.timestamp);
        let id = out.intern(id);
        let dest = match &e.server_name {
            Some(sni) => out.intern(sni),
            None => out.intern_owned(
                std::net::SocketAddr::new(e.flow.dst_ip, e.flow.dst_port).to_string(),
            ),
        };
        for key in [
            [id, this, this, 0],
            [id, host, out.intern(&e.host), 0],
            [id, agent, out.intern(&e.agent_id), 0],
            [id, dest_dim, dest, 0],
        ] {
            out.seen(kind, key, ts);
        }
    }
}

/// Every kind of every contributor, in section order.
pub fn all_kinds() -> impl Iterator<Item = &'static DeltaKind> {
    CONTRIBUTORS.iter().flat_map(|c| c.kinds().iter())
}

/// Every retention rule of every contributor.
pub fn all_retention() -> impl Iterator<Item = &'static Retention> {
    CONTRIBUTORS.iter().flat_map(|c| c.retention().iter())
}

/// FxHash: a fast hasher for the small integer keys of [`BatchDeltas`] (interned string ids
/// and hours, not client-chosen strings, so hash flooding is not a concern).
#[derive(Default, Clone, Copy)]
struct Fx(u64);

impl Fx {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_i64(&mut self, v: i64) {
        self.add(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// A key in a batch: string ids (as `i64`) or integers, unused columns 0.
pub type RawKey = [i64; MAX_KEY];

/// One ingest transaction's roll-up deltas, as the ingest path builds them: every string
/// interned once (ids in first-seen order, the record's string table), keys as small integer
/// arrays in hash maps, one map per delta kind. Unordered: the fold sorts when it merges.
#[derive(Debug, Default)]
pub struct BatchDeltas<'a> {
    /// Borrowed from the events, or built for the record (an identity's `ip:port` destination).
    strings: Vec<Cow<'a, str>>,
    ids: HashMap<&'a str, u32>,
    owned_ids: HashMap<String, u32>,
    sections: Vec<FxMap<RawKey, Seen>>,
}

/// A contributor's view of a [`BatchDeltas`]: its own kinds, and the shared string table.
#[derive(Debug)]
pub struct Extract<'b, 'a> {
    batch: &'b mut BatchDeltas<'a>,
    first: usize,
}

impl<'a> Extract<'_, 'a> {
    /// The record's id of a string the events hold.
    pub fn intern(&mut self, s: &'a str) -> i64 {
        let b = &mut *self.batch;
        if let Some(&i) = b.ids.get(s) {
            return i64::from(i);
        }
        let i = b.strings.len() as u32;
        b.strings.push(Cow::Borrowed(s));
        b.ids.insert(s, i);
        i64::from(i)
    }

    /// [`Self::intern`] for a string the events do not hold.
    pub fn intern_owned(&mut self, s: String) -> i64 {
        let b = &mut *self.batch;
        if let Some(&i) = b.ids.get(s.as_str()).or_else(|| b.owned_ids.get(&s)) {
            return i64::from(i);
        }
        let i = b.strings.len() as u32;
        b.strings.push(Cow::Owned(s.clone()));
        b.owned_ids.insert(s, i);
        i64::from(i)
    }

    /// One event at `ts` for `key` of this contributor's kind `kind` ([`Measure::Seen`]).
    pub fn seen(&mut self, kind: usize, key: RawKey, ts: i64) {
        self.batch.sections[self.first + kind]
            .entry(key)
            .and_modify(|s| s.add(ts))
            .or_insert_with(|| Seen::new(ts));
    }

    /// Adds `n` to the count of `key` of kind `kind` ([`Measure::Count`]).
    pub fn count(&mut self, kind: usize, key: RawKey, n: i64) {
        self.batch.sections[self.first + kind]
            .entry(key)
            .or_insert(Seen {
                first_us: 0,
                last_us: 0,
                count: 0,
            })
            .count += n;
    }
}

impl<'a> BatchDeltas<'a> {
    /// Aggregates the given (newly stored) events: every contributor adds its deltas.
    pub fn from_events(events: impl IntoIterator<Item = &'a FingerprintEvent>) -> Self {
        let events: Vec<&'a FingerprintEvent> = events.into_iter().collect();
        let mut r = BatchDeltas {
            sections: all_kinds().map(|_| FxMap::default()).collect(),
            ..BatchDeltas::default()
        };
        let mut first = 0;
        for c in CONTRIBUTORS {
            c.extract(
                &events,
                &mut Extract {
                    batch: &mut r,
                    first,
                },
            );
            first += c.kinds().len();
        }
        r
    }

    /// True when no event was new (nothing to record).
    pub fn is_empty(&self) -> bool {
        self.sections.iter().all(HashMap::is_empty)
    }

    /// The compact record stored in `rollup_pending`: the string table, then each kind's entries
    /// (keys: string ids as varints, integers zigzagged; then the measure), all integers as
    /// LEB128 varints.
    pub fn encode(&self) -> Vec<u8> {
        let entries: usize = self.sections.iter().map(HashMap::len).sum();
        let mut out = Vec::with_capacity(8 + 16 * self.strings.len() + 24 * entries);
        out.push(FORMAT_VERSION);
        put(&mut out, self.strings.len() as u64);
        for s in &self.strings {
            put(&mut out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        for (kind, section) in all_kinds().zip(&self.sections) {
            put(&mut out, section.len() as u64);
            for (key, s) in section {
                for (&(_, part), &x) in kind.key.iter().zip(key) {
                    put(
                        &mut out,
                        match part {
                            Part::Str => x as u64,
                            Part::Int => zigzag(x),
                        },
                    );
                }
                match kind.measure {
                    Measure::Seen => put_seen(&mut out, s),
                    Measure::Count => put(&mut out, zigzag(s.count)),
                }
            }
        }
        out
    }
}

/// The record format. Each version has a fixed number of sections ([`SECTIONS`]): version 1 had
/// the three fingerprint kinds, version 2 appended the identity roll-ups, version 3 the workload
/// roll-ups. A new kind appends a section and bumps the version; older records decode with the
/// later sections empty.
const FORMAT_VERSION: u8 = 3;
/// Sections per format version (index = version).
const SECTIONS: [usize; 4] = [0, 3, 4, 5];

/// One key column's value after decoding: a string of the record, or an integer. Unused
/// trailing columns are `None`. Ordered so merged keys sort as their columns do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyVal<'a> {
    None,
    Int(i64),
    Str(&'a str),
}

impl<'a> KeyVal<'a> {
    /// The string, for a [`Part::Str`] column.
    pub fn str(&self) -> Option<&'a str> {
        match *self {
            KeyVal::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One stored delta record, decoded: strings once, keys as indexes into them.
#[derive(Debug, Default)]
pub struct Deltas {
    strings: Vec<String>,
    sections: Vec<Vec<(RawKey, Seen)>>,
}

impl Deltas {
    pub fn decode(b: &[u8]) -> Result<Deltas, StoreError> {
        let corrupt = || StoreError::Corrupt("undecodable roll-up delta record".into());
        let mut r = Reader { b, at: 0 };
        let version = r.byte().ok_or_else(corrupt)?;
        let sections = *SECTIONS
            .get(usize::from(version))
            .filter(|&&n| n > 0)
            .ok_or_else(corrupt)?;
        let mut d = Deltas::default();
        let n = r.len()?;
        for _ in 0..n {
            let len = r.len()?;
            let bytes = r.bytes(len).ok_or_else(corrupt)?;
            d.strings
                .push(String::from_utf8(bytes.to_vec()).map_err(|_| corrupt())?);
        }
        let ns = d.strings.len() as u64;
        for kind in all_kinds().take(sections) {
            let n = r.len()?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                let mut key = [0i64; MAX_KEY];
                for (&(_, part), slot) in kind.key.iter().zip(&mut key) {
                    let v = r.var().ok_or_else(corrupt)?;
                    *slot = match part {
                        Part::Str if v < ns => v as i64,
                        Part::Str => return Err(corrupt()),
                        Part::Int => unzigzag(v),
                    };
                }
                let seen = match kind.measure {
                    Measure::Seen => r.seen()?,
                    Measure::Count => Seen {
                        first_us: 0,
                        last_us: 0,
                        count: unzigzag(r.var().ok_or_else(corrupt)?),
                    },
                };
                entries.push((key, seen));
            }
            d.sections.push(entries);
        }
        if r.at != b.len() {
            return Err(corrupt());
        }
        Ok(d)
    }
}

/// A merged key: its columns' values.
pub type Key<'a> = [KeyVal<'a>; MAX_KEY];

/// Roll-up deltas merged from many records, one sorted map per kind (in [`all_kinds`] order).
/// Keys borrow from the decoded [`Deltas`], so folding allocates nothing per event.
#[derive(Debug)]
pub struct Rollups<'a> {
    pub sections: Vec<BTreeMap<Key<'a>, Seen>>,
}

impl Default for Rollups<'_> {
    fn default() -> Self {
        Rollups {
            sections: all_kinds().map(|_| BTreeMap::new()).collect(),
        }
    }
}

impl<'a> Rollups<'a> {
    /// Adds decoded deltas (another batch's) to these.
    pub fn merge(&mut self, d: &'a Deltas) {
        for ((kind, entries), merged) in all_kinds().zip(&d.sections).zip(&mut self.sections) {
            for (raw, seen) in entries {
                let mut key = [KeyVal::None; MAX_KEY];
                for ((&(_, part), &x), k) in kind.key.iter().zip(raw).zip(&mut key) {
                    *k = match part {
                        Part::Str => KeyVal::Str(d.strings[x as usize].as_str()),
                        Part::Int => KeyVal::Int(x),
                    };
                }
                merged
                    .entry(key)
                    .and_modify(|x| x.merge(*seen))
                    .or_insert(*seen);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sections.iter().all(BTreeMap::is_empty)
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_seen(out: &mut Vec<u8>, s: &Seen) {
    put(out, zigzag(s.first_us));
    put(out, zigzag(s.last_us - s.first_us));
    put(out, zigzag(s.count));
}

struct Reader<'b> {
    b: &'b [u8],
    at: usize,
}

impl<'b> Reader<'b> {
    fn byte(&mut self) -> Option<u8> {
        let x = *self.b.get(self.at)?;
        self.at += 1;
        Some(x)
    }
    fn var(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let x = self.byte()?;
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                return Some(v);
            }
        }
        None
    }
    /// A count or length: never more than the bytes left (each item takes at least one).
    fn len(&mut self) -> Result<usize, StoreError> {
        match self.var() {
            Some(n) if n <= (self.b.len() - self.at) as u64 => Ok(n as usize),
            _ => Err(StoreError::Corrupt(
                "undecodable roll-up delta record".into(),
            )),
        }
    }
    fn bytes(&mut self, n: usize) -> Option<&'b [u8]> {
        let x = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(x)
    }
    fn seen(&mut self) -> Result<Seen, StoreError> {
        let mut f = || {
            let first_us = unzigzag(self.var()?);
            let last_us = first_us.checked_add(unzigzag(self.var()?))?;
            let count = unzigzag(self.var()?);
            Some(Seen {
                first_us,
                last_us,
                count,
            })
        };
        f().ok_or_else(|| StoreError::Corrupt("undecodable roll-up delta record".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_matches_the_record_format() {
        assert_eq!(SECTIONS[usize::from(FORMAT_VERSION)], all_kinds().count());
        assert!(all_kinds().all(|k| !k.key.is_empty() && k.key.len() <= MAX_KEY));
    }

    /// A record written by the fixed-layout encoder (format 1: no identity section) still
    /// decodes, with the identity section empty.
    #[test]
    fn decodes_format_1_records() {
        // strings ["ja4", "v"], one fingerprint (0,1) seen at 5 once, no dims, one hourly row.
        let mut b = vec![1u8];
        put(&mut b, 2);
        for s in ["ja4", "v"] {
            put(&mut b, s.len() as u64);
            b.extend_from_slice(s.as_bytes());
        }
        put(&mut b, 1);
        put(&mut b, 0);
        put(&mut b, 1);
        put_seen(
            &mut b,
            &Seen {
                first_us: 5,
                last_us: 5,
                count: 1,
            },
        );
        put(&mut b, 0);
        put(&mut b, 1);
        put(&mut b, zigzag(0));
        put(&mut b, 0);
        put(&mut b, 1);
        put(&mut b, zigzag(1));
        let d = Deltas::decode(&b).unwrap();
        let mut r = Rollups::default();
        r.merge(&d);
        assert_eq!(r.sections[0].len(), 1);
        assert_eq!(r.sections[2].len(), 1);
        assert!(r.sections[3].is_empty());
        assert!(Deltas::decode(&[4]).is_err(), "unknown version");
    }
}
