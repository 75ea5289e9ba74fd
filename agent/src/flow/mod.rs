//! The flow table: which conversation a packet belongs to, which side opened it, and the
//! stream number users see.
//!
//! Stream numbers follow Wireshark's `tcp.stream` / `udp.stream` (what the JA4+ reference
//! tools print): TCP and UDP are numbered independently from 0 in order of each
//! conversation's first packet, and a TCP SYN with a new initial sequence number on a known
//! address/port pair starts a new stream (port reuse). Memory is bounded: the table holds at
//! most `max_flows` entries and evicts with a CLOCK (second-chance) sweep, so a flood of
//! half-open connections recycles its own slots instead of growing the table.

pub mod tcp;

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::net::IpAddr;

use std::collections::HashMap;

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One end of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

/// Direction-independent key: the two endpoints in a canonical order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: Proto,
    pub lo: Endpoint,
    pub hi: Endpoint,
}

impl FlowKey {
    /// Builds the key and tells whether `src` is the `lo` end.
    pub fn new(proto: Proto, src: Endpoint, dst: Endpoint) -> (FlowKey, bool) {
        if src <= dst {
            (
                FlowKey {
                    proto,
                    lo: src,
                    hi: dst,
                },
                true,
            )
        } else {
            (
                FlowKey {
                    proto,
                    lo: dst,
                    hi: src,
                },
                false,
            )
        }
    }
}

/// Index of a flow slot in the table.
pub type FlowId = usize;

/// What the table answers for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup {
    pub id: FlowId,
    /// The flow was created by this packet (a fresh stream number was assigned).
    pub created: bool,
}

/// Bookkeeping the table keeps per flow; the engine keeps its own per-flow state in a
/// parallel slab indexed by [`FlowId`].
#[derive(Debug, Clone)]
pub struct FlowMeta {
    pub key: FlowKey,
    pub stream: u64,
    /// Source and destination of the first packet (what the reference prints as src/dst).
    pub first_src: Endpoint,
    pub first_dst: Endpoint,
    /// Last packet time, microseconds.
    pub last_seen: u64,
    referenced: bool,
}

/// The flow table.
#[derive(Debug)]
pub struct FlowTable<S = foldhash::fast::RandomState> {
    map: HashMap<FlowKey, FlowId, S>,
    slots: Vec<Option<FlowMeta>>,
    free: Vec<FlowId>,
    clock: VecDeque<FlowId>,
    next_stream: [u64; 2],
    max_flows: usize,
    evicted: u64,
}

impl FlowTable {
    /// A table holding at most `max_flows` flows (at least 1).
    pub fn new(max_flows: usize) -> Self {
        FlowTable {
            map: HashMap::with_hasher(foldhash::fast::RandomState::default()),
            slots: Vec::new(),
            free: Vec::new(),
            clock: VecDeque::new(),
            next_stream: [0, 0],
            max_flows: max_flows.max(1),
            evicted: 0,
        }
    }
}

impl<S: BuildHasher> FlowTable<S> {
    /// Number of live flows.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Flows evicted because the table was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn meta(&self, id: FlowId) -> Option<&FlowMeta> {
        self.slots.get(id).and_then(Option::as_ref)
    }

    /// Finds the flow of a packet, creating it if needed. When the table is full, the
    /// evicted flow's id is passed to `on_evict` before its slot is reused, so the caller
    /// can flush that flow's state.
    pub fn lookup(
        &mut self,
        proto: Proto,
        src: Endpoint,
        dst: Endpoint,
        ts: u64,
        on_evict: &mut impl FnMut(FlowId, &FlowMeta),
    ) -> Lookup {
        let (key, _) = FlowKey::new(proto, src, dst);
        if let Some(&id) = self.map.get(&key) {
            if let Some(Some(meta)) = self.slots.get_mut(id) {
                meta.last_seen = ts;
                meta.referenced = true;
            }
            return Lookup { id, created: false };
        }
        self.create(key, src, dst, ts, on_evict)
    }

    /// Ends a flow and starts a new one on the same key (TCP port reuse): the old flow is
    /// handed to `on_evict` first.
    pub fn restart(
        &mut self,
        id: FlowId,
        src: Endpoint,
        dst: Endpoint,
        ts: u64,
        on_evict: &mut impl FnMut(FlowId, &FlowMeta),
    ) -> Lookup {
        let Some(meta) = self.slots.get_mut(id).and_then(Option::take) else {
            return Lookup { id, created: false };
        };
        on_evict(id, &meta);
        self.map.remove(&meta.key);
        self.free.push(id);
        self.create(meta.key, src, dst, ts, on_evict)
    }

    fn create(
        &mut self,
        key: FlowKey,
        src: Endpoint,
        dst: Endpoint,
        ts: u64,
        on_evict: &mut impl FnMut(FlowId, &FlowMeta),
    ) -> Lookup {
        if self.map.len() >= self.max_flows {
            self.evict_one(on_evict);
        }
        let idx = match key.proto {
            Proto::Tcp => 0,
            Proto::Udp => 1,
        };
        let stream = self.next_stream[idx];
        self.next_stream[idx] += 1;
        let meta = FlowMeta {
            key,
            stream,
            first_src: src,
            first_dst: dst,
            last_seen: ts,
            referenced: false,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id] = Some(meta);
                id
            }
            None => {
                self.slots.push(Some(meta));
                self.slots.len() - 1
            }
        };
        self.map.insert(key, id);
        self.clock.push_back(id);
        Lookup { id, created: true }
    }

    /// CLOCK sweep: a flow seen since the hand last passed gets a second chance.
    fn evict_one(&mut self, on_evict: &mut impl FnMut(FlowId, &FlowMeta)) {
        // Bounded: every flow is passed over at most once with its bit set.
        let mut budget = self.clock.len() * 2 + 1;
        while let Some(id) = self.clock.pop_front() {
            budget = budget.saturating_sub(1);
            let Some(Some(meta)) = self.slots.get_mut(id) else {
                continue; // stale entry of a removed flow
            };
            if meta.referenced && budget > 0 {
                meta.referenced = false;
                self.clock.push_back(id);
                continue;
            }
            if let Some(meta) = self.slots[id].take() {
                on_evict(id, &meta);
                self.map.remove(&meta.key);
                self.free.push(id);
                self.evicted += 1;
            }
            return;
        }
    }

    /// Consumes a stream number without creating a flow (numbering compatibility with
    /// Wireshark, which opens extra conversations for some proxies).
    pub fn reserve_stream(&mut self, proto: Proto) {
        let idx = match proto {
            Proto::Tcp => 0,
            Proto::Udp => 1,
        };
        self.next_stream[idx] += 1;
    }

    /// Removes flows idle since before `cutoff` (microseconds), handing each to `on_evict`.
    pub fn expire(&mut self, cutoff: u64, on_evict: &mut impl FnMut(FlowId, &FlowMeta)) {
        let mut kept = VecDeque::with_capacity(self.clock.len());
        while let Some(id) = self.clock.pop_front() {
            match self.slots.get(id) {
                Some(Some(meta)) if meta.last_seen < cutoff => {
                    if let Some(meta) = self.slots[id].take() {
                        on_evict(id, &meta);
                        self.map.remove(&meta.key);
                        self.free.push(id);
                    }
                }
                Some(Some(_)) => kept.push_back(id),
                _ => {}
            }
        }
        self.clock = kept;
    }

    /// Removes every flow, in stream order per protocol, handing each to `on_evict`.
    pub fn drain(&mut self, on_evict: &mut impl FnMut(FlowId, &FlowMeta)) {
        let mut ids: Vec<FlowId> = (0..self.slots.len())
            .filter(|i| self.slots[*i].is_some())
            .collect();
        ids.sort_by_key(|i| self.slots[*i].as_ref().map(|m| (m.key.proto, m.stream)));
        for id in ids {
            if let Some(meta) = self.slots[id].take() {
                on_evict(id, &meta);
                self.map.remove(&meta.key);
                self.free.push(id);
            }
        }
        self.clock.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(last: u8, port: u16) -> Endpoint {
        Endpoint {
            ip: IpAddr::from([10, 0, 0, last]),
            port,
        }
    }

    #[test]
    fn numbering_per_protocol_and_direction_independent() {
        let mut t = FlowTable::new(16);
        let mut none = |_: FlowId, _: &FlowMeta| {};
        let a = t.lookup(Proto::Tcp, ep(1, 1000), ep(2, 443), 0, &mut none);
        let b = t.lookup(Proto::Tcp, ep(2, 443), ep(1, 1000), 1, &mut none);
        let c = t.lookup(Proto::Udp, ep(1, 1000), ep(2, 443), 2, &mut none);
        let d = t.lookup(Proto::Tcp, ep(1, 1001), ep(2, 443), 3, &mut none);
        assert!(a.created && !b.created && c.created && d.created);
        assert_eq!(a.id, b.id);
        assert_eq!(t.meta(a.id).unwrap().stream, 0);
        assert_eq!(t.meta(c.id).unwrap().stream, 0);
        assert_eq!(t.meta(d.id).unwrap().stream, 1);
        assert_eq!(t.meta(a.id).unwrap().first_src, ep(1, 1000));
    }

    #[test]
    fn flood_is_bounded_and_spares_active_flows() {
        let mut t = FlowTable::new(100);
        let mut evicted = Vec::new();
        let active = t
            .lookup(Proto::Tcp, ep(9, 9), ep(9, 10), 0, &mut |_, _| {})
            .id;
        for i in 0..10_000u32 {
            let src = Endpoint {
                ip: IpAddr::from(i.to_be_bytes()),
                port: 1,
            };
            t.lookup(
                Proto::Tcp,
                src,
                ep(1, 80),
                u64::from(i),
                &mut |id, m: &FlowMeta| evicted.push((id, m.stream)),
            );
            // the active flow keeps sending
            t.lookup(
                Proto::Tcp,
                ep(9, 9),
                ep(9, 10),
                u64::from(i),
                &mut |id, m: &FlowMeta| evicted.push((id, m.stream)),
            );
            assert!(t.len() <= 100);
        }
        assert!(t.evicted() > 9000);
        assert!(
            t.meta(active).is_some_and(|m| m.stream == 0),
            "active flow survived"
        );
    }

    #[test]
    fn restart_assigns_new_stream() {
        let mut t = FlowTable::new(4);
        let mut n = 0;
        let a = t.lookup(Proto::Tcp, ep(1, 1), ep(2, 2), 0, &mut |_, _| {});
        let b = t.restart(a.id, ep(1, 1), ep(2, 2), 5, &mut |_, _| n += 1);
        assert_eq!(n, 1);
        assert_eq!(t.meta(b.id).unwrap().stream, 1);
        assert_eq!(t.len(), 1);
    }
}
