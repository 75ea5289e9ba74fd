//! Glue between live capture and workload attribution ([`hais_attribute`]).
//!
//! The kernel knows which process owns a socket only while the socket exists, and a `curl`
//! that makes one request and exits takes that knowledge with it. So the capture thread asks
//! for attribution when it sees a flow's *first* packet ([`FirstPackets`]), the attributor
//! resolves it on its own thread, and the answer is taken when the flow's record or event is
//! built, usually many seconds later. Nothing here blocks the packet path: detection is a
//! decode of the frame's headers plus, for SYNs and UDP datagrams, one hash lookup;
//! [`Attributor::notify`] never waits.
//!
//! A connection that opens and closes within one capture block reaches its event before the
//! attributor has answered; [`Holdback`] keeps such reports back for a few milliseconds (a
//! bounded number, for a bounded time) instead of sending them unattributed.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use hais_attribute::{Attribution, Attributor, AttributorConfig, AttributorStats};
use hais_attribute::{FlowKey, Proto};
use hais_shared::event::{MAX_IDENTITY_LEN, MAX_LABELS, MAX_NAME_LEN, Workload};

use crate::config::AttributionConfig;
use crate::decode::{self, LinkType, Packet, Transport};
use crate::output::{Map, Value};

/// TCP flag bits (the low byte of the flags field).
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// Starts the attributor when the configuration asks for it. When netlink sock_diag can't be
/// opened (not Linux, a sandbox without netlink, a kernel without `inet_diag`) it logs one
/// warning and returns `None`: the agent runs on without attribution rather than not at all,
/// since fingerprints alone are still worth having.
pub fn start(cfg: &AttributionConfig) -> Option<Arc<Attributor>> {
    if !cfg.enabled {
        tracing::info!("workload attribution disabled by configuration");
        return None;
    }
    let acfg = AttributorConfig {
        queue: cfg.queue,
        cache: cfg.cache,
        batch_window: Duration::from_millis(cfg.batch_window_ms),
        ebpf: cfg.ebpf,
        ..AttributorConfig::default()
    };
    match Attributor::start(acfg) {
        Ok(a) => Some(Arc::new(a)),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "workload attribution unavailable (netlink sock_diag could not be opened); \
                 running without it"
            );
            None
        }
    }
}

/// A flow's endpoints in a fixed order (the smaller first), so both directions of a flow find
/// the same entry with one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Canon {
    proto: Proto,
    a: SocketAddr,
    b: SocketAddr,
}

impl Canon {
    fn of(key: &FlowKey) -> Canon {
        let (a, b) = if key.src <= key.dst {
            (key.src, key.dst)
        } else {
            (key.dst, key.src)
        };
        Canon {
            proto: key.proto,
            a,
            b,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Capture time of the flow's latest packet we looked at (UDP) or of its SYN (TCP), µs.
    last_us: u64,
    /// The SYN's sequence number: a retransmitted SYN repeats it, a new connection on the
    /// same ports does not.
    isn: u32,
}

/// Decides which packets start a flow, remembering the flows already notified in a bounded
/// set.
///
/// * TCP: a SYN without ACK (the client's opening segment). A retransmitted SYN (same
///   sequence number) is not a new flow; a SYN with a new sequence number on the same ports is.
///   Other segments are not looked up at all.
/// * UDP: the first datagram of a 5-tuple in either direction; the flow stays known while
///   datagrams keep coming less than `idle_us` apart (the engine's idle timeout, after which
///   it too starts a new flow).
///
/// Memory is bounded by two generations of at most `capacity / 2` entries each: new entries
/// go into the young one, which becomes the old one when full (the previous old one is
/// dropped), and a hit in the old generation moves the entry back to the young one. That
/// approximates least-recently-used eviction with O(1) work and no per-entry list links. A
/// flow forgotten this way is at worst notified again, which costs the attributor one lookup.
#[derive(Debug)]
pub struct FirstPackets {
    young: HashMap<Canon, Seen, foldhash::fast::RandomState>,
    old: HashMap<Canon, Seen, foldhash::fast::RandomState>,
    half: usize,
    idle_us: u64,
}

impl FirstPackets {
    /// `capacity`: most flows remembered (at least 2); `idle_us`: how long a quiet UDP flow is
    /// remembered.
    pub fn new(capacity: usize, idle_us: u64) -> FirstPackets {
        let half = (capacity / 2).max(1);
        let hasher = foldhash::fast::RandomState::default();
        FirstPackets {
            young: HashMap::with_capacity_and_hasher(half.min(4096), hasher.clone()),
            old: HashMap::with_hasher(hasher),
            half,
            idle_us,
        }
    }

    /// Flows remembered now (never more than the capacity).
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flow `packet` (captured at `ts_us`) starts, oriented initiator → responder, or
    /// `None` when it starts none (or was already notified).
    pub fn observe(&mut self, ts_us: u64, packet: &Packet<'_>) -> Option<FlowKey> {
        if packet.has_icmp {
            return None;
        }
        let key = match packet.transport {
            Transport::Tcp(seg) => {
                if seg.flags & (SYN | ACK) != SYN {
                    return None;
                }
                let key = FlowKey {
                    proto: Proto::Tcp,
                    src: SocketAddr::new(packet.src, seg.src_port),
                    dst: SocketAddr::new(packet.dst, seg.dst_port),
                };
                let canon = Canon::of(&key);
                if self.with(&canon, |seen| seen.isn) == Some(seg.seq) {
                    return None;
                }
                self.insert(
                    canon,
                    Seen {
                        last_us: ts_us,
                        isn: seg.seq,
                    },
                );
                key
            }
            Transport::Udp(d) => {
                let key = FlowKey {
                    proto: Proto::Udp,
                    src: SocketAddr::new(packet.src, d.src_port),
                    dst: SocketAddr::new(packet.dst, d.dst_port),
                };
                let canon = Canon::of(&key);
                let idle_us = self.idle_us;
                let fresh = self.with(&canon, |seen| {
                    let fresh = ts_us.saturating_sub(seen.last_us) <= idle_us;
                    seen.last_us = ts_us;
                    fresh
                });
                match fresh {
                    Some(true) => return None,
                    Some(false) => return Some(key),
                    None => {}
                }
                self.insert(
                    canon,
                    Seen {
                        last_us: ts_us,
                        isn: 0,
                    },
                );
                key
            }
            _ => return None,
        };
        Some(key)
    }

    /// Applies `f` to the entry for `c`, promoting it to the young generation when found in
    /// the old one. (A closure rather than a returned reference: one hash lookup on the hot
    /// path, which the borrow checker does not allow with an early-returned `get_mut`.)
    fn with<R>(&mut self, c: &Canon, f: impl FnOnce(&mut Seen) -> R) -> Option<R> {
        if let Some(seen) = self.young.get_mut(c) {
            return Some(f(seen));
        }
        let mut seen = self.old.remove(c)?;
        let r = f(&mut seen);
        self.insert(*c, seen);
        Some(r)
    }

    fn insert(&mut self, c: Canon, seen: Seen) {
        if self.young.len() >= self.half && !self.young.contains_key(&c) {
            self.old = std::mem::replace(
                &mut self.young,
                HashMap::with_capacity_and_hasher(self.half.min(4096), self.old.hasher().clone()),
            );
        }
        self.young.insert(c, seen);
    }
}

/// One capture thread's side of attribution: the shared attributor and the thread's own set
/// of notified flows (threads never share it, so the packet path takes no lock).
#[derive(Debug)]
pub struct Notifier {
    attributor: Arc<Attributor>,
    first: FirstPackets,
}

impl Notifier {
    pub fn new(attributor: Arc<Attributor>, capacity: usize, idle_us: u64) -> Notifier {
        Notifier {
            attributor,
            first: FirstPackets::new(capacity, idle_us),
        }
    }

    /// Looks at one captured frame and notifies the attributor when it opens a flow. Frames
    /// that don't decode are the engine's business (it counts them); here they are ignored.
    #[inline]
    pub fn on_frame(&mut self, ts_us: u64, link: LinkType, frame: &[u8]) {
        if let Ok(p) = decode::decode(link, frame)
            && let Some(key) = self.first.observe(ts_us, &p)
        {
            self.attributor.notify(key);
        }
    }
}

/// Reports whose attribution is not in yet, held back briefly.
///
/// A short connection's SYN and FIN often arrive in the same capture block, so its report is
/// built microseconds after the attributor was notified, before it could answer. Sending it
/// at once would lose an attribution the attributor is about to find; waiting on the capture
/// thread would stall capture. So such reports wait here, in order, at most `max` of them, and
/// [`Holdback::poll`] releases each once its answer is in or its time is up: `wait` for a flow
/// the attributor is not working on (it began before the agent: its output is delayed, nothing
/// is lost), up to `wait_resolving` while the attributor is still resolving it (hashing a large
/// executable, a busy `/proc`: a fixed short wait lost those answers).
#[derive(Debug)]
pub struct Holdback<T> {
    /// When each report was offered, its flow, the report.
    queue: VecDeque<(Instant, FlowKey, T)>,
    max: usize,
    wait: Duration,
    wait_resolving: Duration,
}

impl<T> Holdback<T> {
    pub fn new(max: usize, wait: Duration, wait_resolving: Duration) -> Holdback<T> {
        Holdback {
            queue: VecDeque::new(),
            max,
            wait,
            wait_resolving: wait_resolving.max(wait),
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Passes `item` (the report of flow `key`) to `out` with its attribution when it is
    /// known, or holds it back. When the hold-back is full it goes out as it is.
    pub fn offer(
        &mut self,
        att: &Attributor,
        key: FlowKey,
        item: T,
        now: Instant,
        out: &mut Vec<(T, Attribution)>,
    ) {
        if !matches!(att.peek(&key), Attribution::Unknown) || self.queue.len() >= self.max {
            out.push((item, att.take(&key)));
        } else {
            self.queue.push_back((now, key, item));
        }
    }

    /// Releases to `out` every held report whose attribution is in, or whose time is up (all
    /// of them when `force`).
    pub fn poll(
        &mut self,
        att: &Attributor,
        now: Instant,
        force: bool,
        out: &mut Vec<(T, Attribution)>,
    ) {
        if self.queue.is_empty() {
            return;
        }
        let mut keep = VecDeque::with_capacity(self.queue.len());
        for (offered, key, item) in self.queue.drain(..) {
            let waited = now.saturating_duration_since(offered);
            let release = force
                || !matches!(att.peek(&key), Attribution::Unknown)
                || waited >= self.wait_resolving
                || (waited >= self.wait && !att.resolving(&key));
            if release {
                out.push((item, att.take(&key)));
            } else {
                keep.push_back((offered, key, item));
            }
        }
        self.queue = keep;
    }
}

/// A workload made to pass the event limits ([`hais_shared::event::FingerprintEvent::validate`]):
/// a process may have any bytes in its name or command line, and an event must not be refused
/// (losing its fingerprints) for that. Control characters (and, in the ASCII-only fields,
/// anything not printable ASCII) become `?`, over-long values are cut, empty ones dropped.
pub fn sanitize(mut w: Workload) -> Workload {
    fn text(v: &mut Option<String>, ascii: bool) {
        if let Some(s) = v.take() {
            let mut t: String = s
                .chars()
                .map(|c| {
                    let ok = if ascii {
                        c.is_ascii_graphic()
                    } else {
                        !c.is_control()
                    };
                    if ok { c } else { '?' }
                })
                .collect();
            truncate(&mut t, MAX_IDENTITY_LEN);
            if !t.is_empty() {
                *v = Some(t);
            }
        }
    }
    for (v, ascii) in [
        (&mut w.process, false),
        (&mut w.exe, false),
        (&mut w.cmdline, false),
        (&mut w.cgroup, false),
        (&mut w.user, true),
        (&mut w.container, true),
        (&mut w.container_runtime, true),
        (&mut w.pod, true),
        (&mut w.spiffe_id, true),
        (&mut w.exe_sha256, true),
        (&mut w.k8s_namespace, true),
        (&mut w.k8s_service_account, true),
        (&mut w.k8s_pod_name, true),
        (&mut w.container_image, true),
        (&mut w.container_name, true),
        (&mut w.direction, true),
        (&mut w.unattributed, true),
    ] {
        text(v, ascii);
    }
    if w.container_labels.len() > MAX_LABELS
        || w.container_labels.iter().any(|(k, v)| {
            k.is_empty()
                || k.len() > MAX_NAME_LEN
                || k.chars().any(char::is_control)
                || v.len() > MAX_IDENTITY_LEN
        })
    {
        w.container_labels = std::mem::take(&mut w.container_labels)
            .into_iter()
            .filter_map(|(k, mut v)| {
                let mut k: String = k.chars().filter(|c| !c.is_control()).collect();
                truncate(&mut k, MAX_NAME_LEN);
                truncate(&mut v, MAX_IDENTITY_LEN);
                (!k.is_empty()).then_some((k, v))
            })
            .take(MAX_LABELS)
            .collect();
    }
    w
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

/// The `workload` object of a printed record (`--with-workload`): the event's workload fields
/// in the event's names, or `unattributed: unknown` when attribution had no answer (or did not
/// run), so every record says what is known.
pub fn workload_record(w: Option<&Workload>) -> Value {
    let json = match w {
        Some(w) if !w.is_empty() => serde_json::to_value(w).unwrap_or(serde_json::Value::Null),
        _ => serde_json::json!({ "unattributed": "unknown" }),
    };
    from_json(json)
}

/// serde_json → the output's ordered value (keys keep serde's field order).
fn from_json(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Str(b.to_string()),
        serde_json::Value::Number(n) => match n.as_u64() {
            Some(u) => Value::Int(u),
            None => Value::Str(n.to_string()),
        },
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(a) => Value::List(a.into_iter().map(from_json).collect()),
        serde_json::Value::Object(o) => {
            let mut m = Map::new();
            for (k, v) in o {
                m.push(k, from_json(v));
            }
            Value::Map(m)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// An Ethernet + IPv4 + TCP frame with the given flags and sequence number.
    fn tcp_frame(
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        flags: u8,
        seq: u32,
    ) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total: u16 = 20 + 20;
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            6,
            0,
            0,
        ]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&0u32.to_be_bytes());
        f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    fn udp_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total: u16 = 20 + 8 + 4;
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&12u16.to_be_bytes());
        f.extend_from_slice(&[0, 0, 1, 2, 3, 4]);
        f
    }

    fn observe(fp: &mut FirstPackets, ts: u64, frame: &[u8]) -> Option<FlowKey> {
        let p = decode::decode(LinkType::Ethernet, frame).expect("test frame decodes");
        fp.observe(ts, &p)
    }

    fn sa(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::from(ip), port)
    }

    const C: [u8; 4] = [10, 0, 0, 2];
    const S: [u8; 4] = [10, 0, 0, 3];

    #[test]
    fn tcp_first_packet_is_the_clients_syn_once() {
        let mut fp = FirstPackets::new(64, 1_000_000);
        let syn = tcp_frame(C, 40000, S, 443, SYN, 1000);
        assert_eq!(
            observe(&mut fp, 1, &syn),
            Some(FlowKey {
                proto: Proto::Tcp,
                src: sa(C, 40000),
                dst: sa(S, 443)
            })
        );
        // A retransmitted SYN is the same flow.
        assert_eq!(observe(&mut fp, 2, &syn), None);
        // SYN-ACK, ACK, data, FIN: not first packets.
        for (flags, from_client) in [
            (SYN | ACK, false),
            (ACK, true),
            (ACK | 0x08, true),
            (ACK | 0x01, false),
        ] {
            let f = if from_client {
                tcp_frame(C, 40000, S, 443, flags, 1001)
            } else {
                tcp_frame(S, 443, C, 40000, flags, 5000)
            };
            assert_eq!(observe(&mut fp, 3, &f), None, "flags {flags:#x}");
        }
        // A new connection on the same ports (new ISN) is a new flow.
        let again = tcp_frame(C, 40000, S, 443, SYN, 777_777);
        assert!(observe(&mut fp, 4, &again).is_some());
    }

    #[test]
    fn udp_first_datagram_in_either_direction_once_until_idle() {
        let mut fp = FirstPackets::new(64, 1_000_000);
        let q = udp_frame(C, 50000, S, 53);
        let r = udp_frame(S, 53, C, 50000);
        let key = observe(&mut fp, 10, &q).unwrap();
        assert_eq!(
            (key.proto, key.src, key.dst),
            (Proto::Udp, sa(C, 50000), sa(S, 53))
        );
        assert_eq!(
            observe(&mut fp, 20, &r),
            None,
            "the answer is the same flow"
        );
        assert_eq!(observe(&mut fp, 900_000, &q), None);
        // Quiet for longer than the idle timeout: the engine starts a new flow, so do we.
        let again = observe(&mut fp, 3_000_000, &r).unwrap();
        assert_eq!(again.src, sa(S, 53), "oriented as its new first datagram");
        // A flow first seen from the other side is keyed that way.
        let mut fp = FirstPackets::new(64, 1_000_000);
        assert_eq!(observe(&mut fp, 1, &r).unwrap().src, sa(S, 53));
        assert_eq!(observe(&mut fp, 2, &q), None);
    }

    #[test]
    fn notified_set_is_bounded_and_keeps_recent_flows() {
        let cap = 100;
        let mut fp = FirstPackets::new(cap, u64::MAX);
        let hot = udp_frame(C, 1, S, 9);
        assert!(observe(&mut fp, 0, &hot).is_some());
        for i in 0..10_000u32 {
            let port = 1000 + (i % 60_000) as u16;
            let host = [10, 1, (i >> 8) as u8, i as u8];
            assert!(observe(&mut fp, 1, &udp_frame(host, port, S, 53)).is_some());
            assert!(fp.len() <= cap, "{} entries", fp.len());
            // A flow that keeps talking stays known however many others come and go.
            assert_eq!(observe(&mut fp, 1, &hot), None, "after {i} others");
        }
        assert!(fp.len() <= cap);
    }

    #[test]
    fn non_ip_and_icmp_start_nothing() {
        let mut fp = FirstPackets::new(8, 1);
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 28]);
        assert_eq!(observe(&mut fp, 0, &arp), None);
        assert!(fp.is_empty());
    }

    #[test]
    fn holdback_releases_answered_or_late_reports_in_bounds() {
        // Needs netlink sock_diag (Linux); elsewhere there is nothing to hold back for.
        let Ok(att) = Attributor::start(AttributorConfig::default()) else {
            eprintln!("skipped: no sock_diag");
            return;
        };
        let key = |port| FlowKey {
            proto: Proto::Tcp,
            src: sa([192, 0, 2, 1], port),
            dst: sa([192, 0, 2, 2], 443),
        };
        let mut hb = Holdback::new(2, Duration::from_millis(50), Duration::from_secs(3));
        let mut out = Vec::new();
        let t0 = Instant::now();
        // Never notified: held until its time is up.
        hb.offer(&att, key(1), "a", t0, &mut out);
        // Not answered yet: held (notified only below, so that no fast answer can release it
        // before "c" comes: that race made this test flaky).
        hb.offer(&att, key(2), "b", t0, &mut out);
        // Full: goes out at once, as it is.
        hb.offer(&att, key(3), "c", t0, &mut out);
        assert!(out.iter().any(|(i, _)| *i == "c"));
        // Now notified: released once the attributor answers (a TEST-NET flow is not local).
        att.notify(key(2));
        let start = Instant::now();
        while !out.iter().any(|(i, _)| *i == "b") && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
            hb.poll(&att, t0, false, &mut out);
        }
        let b = out.iter().find(|(i, _)| *i == "b").map(|(_, a)| a.clone());
        assert_eq!(b, Some(Attribution::NotLocal));
        assert_eq!(hb.len(), 1, "a still waits");
        hb.poll(&att, t0 + Duration::from_millis(60), false, &mut out);
        assert!(hb.is_empty());
        assert!(
            out.iter()
                .any(|(i, a)| *i == "a" && *a == Attribution::Unknown)
        );
    }

    #[test]
    fn sanitize_makes_any_process_facts_pass_the_event_limits() {
        let w = Workload {
            pid: Some(7),
            process: Some("bad\u{7}name".into()),
            cmdline: Some("x".repeat(MAX_IDENTITY_LEN + 10)),
            user: Some("user name".into()),
            cgroup: Some(String::new()),
            ..Workload::default()
        };
        let w = sanitize(w);
        assert_eq!(w.process.as_deref(), Some("bad?name"));
        assert_eq!(w.cmdline.as_ref().map(String::len), Some(MAX_IDENTITY_LEN));
        assert_eq!(w.user.as_deref(), Some("user?name"));
        assert_eq!(w.cgroup, None);
        assert_eq!(w.pid, Some(7));
    }

    #[test]
    fn printed_workload_keeps_event_names() {
        let w = Workload {
            pid: Some(42),
            uid: Some(65534),
            user: Some("nobody".into()),
            exe: Some("/usr/bin/curl".into()),
            direction: Some("outbound".into()),
            ..Workload::default()
        };
        let Value::Map(m) = workload_record(Some(&w)) else {
            panic!("not a map")
        };
        assert_eq!(m.get("pid"), Some(&Value::Int(42)));
        assert_eq!(m.get("user"), Some(&Value::Str("nobody".into())));
        assert_eq!(m.get("exe"), Some(&Value::Str("/usr/bin/curl".into())));
        let Value::Map(none) = workload_record(None) else {
            panic!("not a map")
        };
        assert_eq!(
            none.get("unattributed"),
            Some(&Value::Str("unknown".into()))
        );
    }
}
