//! Roll-up deltas: aggregated in memory per ingest transaction ([`BatchDeltas`]), stored as one
//! compact record, and folded into the roll-up tables later by the roll-up stage
//! ([`super::fold`]), which merges many records into one sorted [`Rollups`].
//!
//! Aggregating a batch first means each roll-up row is written once per fold instead of once
//! per event; merging many batches' deltas before writing (a fold covers every batch committed
//! since the previous one) shrinks the writes further. Merged keys come out sorted, so writers
//! lock roll-up rows in one order and cannot deadlock each other.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use hais_shared::event::FingerprintEvent;

use super::{StoreError, to_us};

/// The dimensions a fingerprint is rolled up by.
pub const DIM_HOST: &str = "host";
pub const DIM_AGENT: &str = "agent";
pub const DIM_SERVER_NAME: &str = "server_name";
pub const DIM_IDENTITY: &str = "identity";
/// Identity roll-ups (`identity_rollups`, see `store::identity`): the identity itself (dim and
/// value empty), and where it was seen: host, agent (the dims above) and destination.
pub const DIM_SELF: &str = "";
pub const DIM_DESTINATION: &str = "destination";

/// One hour, in microseconds: the bucket size of `fingerprint_hourly`.
pub const HOUR_US: i64 = 3_600_000_000;

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

/// Roll-up deltas, each sorted by key. Keys borrow from the events (or from decoded
/// [`Deltas`]), so folding allocates nothing per event.
#[derive(Debug, Default)]
pub struct Rollups<'a> {
    /// (method, value) → seen.
    pub fingerprints: BTreeMap<(&'a str, &'a str), Seen>,
    /// (dim, dim value, method, value) → seen.
    pub dims: BTreeMap<(&'a str, &'a str, &'a str, &'a str), Seen>,
    /// (hour start µs, method, value) → count.
    pub hourly: BTreeMap<(i64, &'a str, &'a str), i64>,
    /// (SPIFFE ID, dim, dim value) → seen: per-identity roll-ups (identity service). Only
    /// merged records fill it; [`Rollups::from_events`] leaves it empty.
    pub identities: BTreeMap<(&'a str, &'a str, &'a str), Seen>,
}

impl<'a> Rollups<'a> {
    /// Folds the given events directly: the reference [`BatchDeltas`] is tested against.
    #[cfg(test)]
    pub fn from_events(events: impl IntoIterator<Item = &'a FingerprintEvent>) -> Rollups<'a> {
        let mut r = Rollups::default();
        let mut fps: Vec<(&'a str, &'a str)> = Vec::new();
        let mut dims: Vec<(&'a str, &'a str)> = Vec::with_capacity(4);
        for e in events {
            let ts = to_us(e.timestamp);
            let hour = ts.div_euclid(HOUR_US) * HOUR_US;
            fps.clear();
            fps.extend(
                e.fingerprints
                    .iter()
                    .map(|f| (f.method.as_str(), f.value.as_str())),
            );
            fps.sort_unstable();
            fps.dedup();
            dims.clear();
            dims.push((DIM_HOST, e.host.as_str()));
            dims.push((DIM_AGENT, e.agent_id.as_str()));
            if let Some(sni) = &e.server_name {
                dims.push((DIM_SERVER_NAME, sni.as_str()));
            }
            if let Some(id) = &e.workload.spiffe_id {
                dims.push((DIM_IDENTITY, id.as_str()));
            }
            for &(method, value) in &fps {
                r.fingerprints
                    .entry((method, value))
                    .and_modify(|s| s.add(ts))
                    .or_insert_with(|| Seen::new(ts));
                *r.hourly.entry((hour, method, value)).or_default() += 1;
                for &(dim, dv) in &dims {
                    r.dims
                        .entry((dim, dv, method, value))
                        .and_modify(|s| s.add(ts))
                        .or_insert_with(|| Seen::new(ts));
                }
            }
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    /// Adds decoded deltas (another batch's) to these.
    pub fn merge(&mut self, d: &'a Deltas) {
        let s = |i: u32| d.strings[i as usize].as_str();
        for &(m, v, seen) in &d.fingerprints {
            self.fingerprints
                .entry((s(m), s(v)))
                .and_modify(|x| x.merge(seen))
                .or_insert(seen);
        }
        for &([dim, dv, m, v], seen) in &d.dims {
            self.dims
                .entry((s(dim), s(dv), s(m), s(v)))
                .and_modify(|x| x.merge(seen))
                .or_insert(seen);
        }
        for &(hour, m, v, n) in &d.hourly {
            *self.hourly.entry((hour, s(m), s(v))).or_default() += n;
        }
        for &([id, dim, dv], seen) in &d.identities {
            self.identities
                .entry((s(id), s(dim), s(dv)))
                .and_modify(|x| x.merge(seen))
                .or_insert(seen);
        }
    }
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
    fn write_u32(&mut self, v: u32) {
        self.add(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

/// One ingest transaction's roll-up deltas, as the ingest path builds them: every string
/// interned once (ids in first-seen order, the record's string table), keys as small integer
/// tuples in hash maps. Unordered: the fold sorts when it merges.
#[derive(Debug, Default)]
pub struct BatchDeltas<'a> {
    /// Borrowed from the events, or built for the record (an identity's `ip:port` destination).
    strings: Vec<Cow<'a, str>>,
    ids: HashMap<&'a str, u32>,
    owned_ids: HashMap<String, u32>,
    fingerprints: FxMap<(u32, u32), Seen>,
    dims: FxMap<[u32; 4], Seen>,
    hourly: FxMap<(i64, u32, u32), i64>,
    /// [SPIFFE ID, dim, dim value] → seen.
    identities: FxMap<[u32; 3], Seen>,
}

impl<'a> BatchDeltas<'a> {
    fn intern(&mut self, s: &'a str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(Cow::Borrowed(s));
        self.ids.insert(s, i);
        i
    }

    /// [`Self::intern`] for a string the events do not hold.
    fn intern_owned(&mut self, s: String) -> u32 {
        if let Some(&i) = self.ids.get(s.as_str()).or_else(|| self.owned_ids.get(&s)) {
            return i;
        }
        let i = self.strings.len() as u32;
        self.strings.push(Cow::Owned(s.clone()));
        self.owned_ids.insert(s, i);
        i
    }

    /// Identity roll-ups of one event whose workload has a SPIFFE ID (interned as `id`): the
    /// identity itself, its host and agent (`dims[0]`, `dims[1]`), and its destination.
    fn add_identity(&mut self, e: &'a FingerprintEvent, id: u32, ts: i64, dims: &[(u32, u32)]) {
        let [this, dest_dim] = [DIM_SELF, DIM_DESTINATION].map(|d| self.intern(d));
        let dest = match &e.server_name {
            Some(sni) => self.intern(sni),
            None => self.intern_owned(
                std::net::SocketAddr::new(e.flow.dst_ip, e.flow.dst_port).to_string(),
            ),
        };
        for key in [
            [id, this, this],
            [id, dims[0].0, dims[0].1],
            [id, dims[1].0, dims[1].1],
            [id, dest_dim, dest],
        ] {
            self.identities
                .entry(key)
                .and_modify(|s| s.add(ts))
                .or_insert_with(|| Seen::new(ts));
        }
    }

    /// Aggregates the given (newly stored) events. A fingerprint repeated inside one event
    /// counts once.
    pub fn from_events(events: impl IntoIterator<Item = &'a FingerprintEvent>) -> Self {
        let mut r = BatchDeltas::default();
        let [host, agent, sni, identity] =
            [DIM_HOST, DIM_AGENT, DIM_SERVER_NAME, DIM_IDENTITY].map(|d| r.intern(d));
        let mut fps: Vec<(u32, u32)> = Vec::new();
        let mut dims: Vec<(u32, u32)> = Vec::with_capacity(4);
        // Batches come from one agent, mostly one host: skip the lookups when they repeat.
        let mut last_host: Option<(&str, u32)> = None;
        let mut last_agent: Option<(&str, u32)> = None;
        for e in events {
            let ts = to_us(e.timestamp);
            let hour = ts.div_euclid(HOUR_US) * HOUR_US;
            fps.clear();
            for f in &e.fingerprints {
                let m = r.intern(f.method.as_str());
                fps.push((m, r.intern(&f.value)));
            }
            fps.sort_unstable();
            fps.dedup();
            dims.clear();
            for (dim, v, last) in [
                (host, e.host.as_str(), &mut last_host),
                (agent, e.agent_id.as_str(), &mut last_agent),
            ] {
                let id = match *last {
                    Some((s, id)) if s == v => id,
                    _ => r.intern(v),
                };
                *last = Some((v, id));
                dims.push((dim, id));
            }
            if let Some(v) = &e.server_name {
                dims.push((sni, r.intern(v)));
            }
            if let Some(v) = &e.workload.spiffe_id {
                let id = r.intern(v);
                dims.push((identity, id));
                r.add_identity(e, id, ts, &dims);
            }
            for &(m, v) in &fps {
                r.fingerprints
                    .entry((m, v))
                    .and_modify(|s| s.add(ts))
                    .or_insert_with(|| Seen::new(ts));
                *r.hourly.entry((hour, m, v)).or_default() += 1;
                for &(dim, dv) in &dims {
                    r.dims
                        .entry([dim, dv, m, v])
                        .and_modify(|s| s.add(ts))
                        .or_insert_with(|| Seen::new(ts));
                }
            }
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    /// The compact record stored in `rollup_pending`: the string table, then the three maps with
    /// strings as table indexes, all integers as LEB128 varints (zigzag for signed values).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            8 + 16 * self.strings.len() + 24 * (self.dims.len() + self.fingerprints.len()),
        );
        out.push(FORMAT_VERSION);
        put(&mut out, self.strings.len() as u64);
        for s in &self.strings {
            put(&mut out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        put(&mut out, self.fingerprints.len() as u64);
        for (&(m, v), s) in &self.fingerprints {
            put(&mut out, u64::from(m));
            put(&mut out, u64::from(v));
            put_seen(&mut out, s);
        }
        put(&mut out, self.dims.len() as u64);
        for (k, s) in &self.dims {
            for &x in k {
                put(&mut out, u64::from(x));
            }
            put_seen(&mut out, s);
        }
        put(&mut out, self.hourly.len() as u64);
        for (&(hour, m, v), n) in &self.hourly {
            put(&mut out, zigzag(hour));
            put(&mut out, u64::from(m));
            put(&mut out, u64::from(v));
            put(&mut out, zigzag(*n));
        }
        put(&mut out, self.identities.len() as u64);
        for (k, s) in &self.identities {
            for &x in k {
                put(&mut out, u64::from(x));
            }
            put_seen(&mut out, s);
        }
        out
    }
}

/// Version 2 appends the identity roll-ups; version 1 records (pending across an upgrade)
/// have none.
const FORMAT_VERSION: u8 = 2;

/// One stored delta record, decoded: strings once, keys as indexes into them.
#[derive(Debug, Default)]
pub struct Deltas {
    strings: Vec<String>,
    fingerprints: Vec<(u32, u32, Seen)>,
    dims: Vec<([u32; 4], Seen)>,
    hourly: Vec<(i64, u32, u32, i64)>,
    identities: Vec<([u32; 3], Seen)>,
}

impl Deltas {
    pub fn decode(b: &[u8]) -> Result<Deltas, StoreError> {
        let corrupt = || StoreError::Corrupt("undecodable roll-up delta record".into());
        let mut r = Reader { b, at: 0 };
        let version = r.byte().ok_or_else(corrupt)?;
        if version != 1 && version != FORMAT_VERSION {
            return Err(corrupt());
        }
        let mut d = Deltas::default();
        let n = r.len()?;
        for _ in 0..n {
            let len = r.len()?;
            let bytes = r.bytes(len).ok_or_else(corrupt)?;
            d.strings
                .push(String::from_utf8(bytes.to_vec()).map_err(|_| corrupt())?);
        }
        let ns = d.strings.len() as u64;
        let ix = |r: &mut Reader<'_>| -> Result<u32, StoreError> {
            let i = r.var().ok_or_else(corrupt)?;
            if i < ns { Ok(i as u32) } else { Err(corrupt()) }
        };
        for _ in 0..r.len()? {
            let (m, v) = (ix(&mut r)?, ix(&mut r)?);
            d.fingerprints.push((m, v, r.seen()?));
        }
        for _ in 0..r.len()? {
            let k = [ix(&mut r)?, ix(&mut r)?, ix(&mut r)?, ix(&mut r)?];
            d.dims.push((k, r.seen()?));
        }
        for _ in 0..r.len()? {
            let hour = unzigzag(r.var().ok_or_else(corrupt)?);
            let (m, v) = (ix(&mut r)?, ix(&mut r)?);
            let n = unzigzag(r.var().ok_or_else(corrupt)?);
            d.hourly.push((hour, m, v, n));
        }
        if version >= 2 {
            for _ in 0..r.len()? {
                let k = [ix(&mut r)?, ix(&mut r)?, ix(&mut r)?];
                d.identities.push((k, r.seen()?));
            }
        }
        if r.at != b.len() {
            return Err(corrupt());
        }
        Ok(d)
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

/// The JA4 a/b/c parts of a value (first three `_`-separated sections).
pub fn parts(value: &str) -> [Option<String>; 3] {
    let mut it = value.split('_').map(str::to_owned);
    [it.next(), it.next(), it.next()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use hais_shared::event::{Fingerprint, Flow, Transport};
    use hais_shared::fingerprint::Method;

    fn ev(host: &str, fps: &[&str]) -> FingerprintEvent {
        let mut e = FingerprintEvent::new(
            "a1",
            host,
            Flow {
                src_ip: "10.0.0.1".parse().unwrap(),
                src_port: 1,
                dst_ip: "10.0.0.2".parse().unwrap(),
                dst_port: 443,
                transport: Transport::Tcp,
            },
        );
        e.fingerprints = fps
            .iter()
            .map(|v| Fingerprint {
                method: Method::Ja4,
                value: v.to_string(),
            })
            .collect();
        e
    }

    #[test]
    fn folds_counts_and_dims() {
        let a = ev("h1", &["x_y_z", "x_y_z"]);
        let b = ev("h2", &["x_y_z"]);
        let r = Rollups::from_events([&a, &b]);
        let s = r.fingerprints[&("ja4", "x_y_z")];
        assert_eq!(s.count, 2, "a repeated fingerprint counts once per event");
        assert_eq!(r.dims.len(), 3, "two hosts and one agent");
        assert_eq!(r.hourly.values().sum::<i64>(), 2);
    }

    #[test]
    fn deltas_round_trip_and_merge() {
        let mut a = ev("h1", &["x_y_z", "p_q_r"]);
        a.server_name = Some("s\u{e9}rver.example".into());
        a.timestamp -= time::Duration::days(20_000); // before 1970: negative µs
        let b = ev("h2", &["x_y_z"]);
        let one = BatchDeltas::from_events([&a]);
        let two = BatchDeltas::from_events([&b, &b]);
        let (d1, d2) = (
            Deltas::decode(&one.encode()).unwrap(),
            Deltas::decode(&two.encode()).unwrap(),
        );
        let mut merged = Rollups::default();
        merged.merge(&d1);
        merged.merge(&d2);
        let direct = Rollups::from_events([&a, &b, &b]);
        assert_eq!(merged.fingerprints, direct.fingerprints);
        assert_eq!(merged.dims, direct.dims);
        assert_eq!(merged.hourly, direct.hourly);
        let bytes = one.encode();
        for cut in 0..bytes.len() {
            assert!(Deltas::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        assert!(Deltas::decode(&[]).is_err());
    }
}
