//! The flow table: which conversation a packet belongs to, which side opened it, and the
//! stream number users see.
//!
//! Stream numbers follow Wireshark's `tcp.stream` / `udp.stream` (what the JA4+ reference
//! tools print): TCP and UDP are numbered independently from 0 in order of each
//! conversation's first packet, and a TCP SYN with a new initial sequence number on a known
//! address/port pair starts a new stream (port reuse). A closed TCP connection leaves a
//! small tombstone so that its stragglers keep its number. Memory is bounded: the table
//! holds at most `max_flows` entries; when full it drops a tombstone, else a new flow that
//! never got a second packet (a probation FIFO, so a flood of half-open connections
//! recycles its own slots), else an established flow by CLOCK (second chance); see
//! [`Queue`].

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
    queue: Queue,
    /// Tells this flow's queue entries from stale ones left by an earlier flow in the slot.
    generation: u64,
    /// Set once the flow is closed (see [`FlowTable::close`]): the client's initial
    /// sequence number, to tell a new connection on the same addresses from stragglers.
    closed_isn: Option<u32>,
}

impl FlowMeta {
    /// `Some(client ISN)` when the flow is a tombstone: finished and reported, kept only so
    /// that late packets of the same connection keep its stream number.
    pub fn closed_isn(&self) -> Option<u32> {
        self.closed_isn
    }
}

/// The eviction queue a flow is in.
///
/// New flows start on probation; a flow that gets another packet is promoted to the main
/// CLOCK when the probation queue's hand reaches it. Evicting from probation first (once it
/// holds more than a quarter of the table) drops half-open floods without touching
/// established flows, while a new flow is never the first victim of a full table: it gets
/// at least a quarter of the table's worth of newer arrivals to see its second packet
/// (plain CLOCK inserted flows unreferenced, and once every older flow had its bit set, the
/// sweep evicted the newest flow, often right after its SYN). Closed flows (tombstones)
/// go first of all: dropping one loses nothing that has not been reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Probation = 0,
    Main = 1,
    Closed = 2,
}

/// The flow table.
#[derive(Debug)]
pub struct FlowTable<S = foldhash::fast::RandomState> {
    map: HashMap<FlowKey, FlowId, S>,
    slots: Vec<Option<FlowMeta>>,
    free: Vec<FlowId>,
    /// Eviction queues, indexed by [`Queue`], of `(slot, generation)`; entries whose flow
    /// left the queue are skipped lazily (and compacted away when they pile up).
    queues: [VecDeque<(FlowId, u64)>; 3],
    /// Flows currently in each queue.
    counts: [usize; 3],
    next_generation: u64,
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
            queues: Default::default(),
            counts: [0; 3],
            next_generation: 0,
            next_stream: [0, 0],
            max_flows: max_flows.max(1),
            evicted: 0,
        }
    }
}

impl<S: BuildHasher> FlowTable<S> {
    /// Number of flows in the table, closed ones (tombstones) included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Closed flows (tombstones) in the table.
    pub fn closed(&self) -> usize {
        self.counts[Queue::Closed as usize]
    }

    /// Open flows evicted because the table was full (dropped tombstones do not count:
    /// they had already been reported).
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
        let Some(meta) = self.remove(id) else {
            return Lookup { id, created: false };
        };
        on_evict(id, &meta);
        self.create(meta.key, src, dst, ts, on_evict)
    }

    /// Marks a finished flow as closed: the caller has reported it and freed its state. The
    /// entry stays as a small tombstone holding the stream number, so that stragglers of
    /// the connection (a last ACK, a retransmitted FIN) are recognised instead of opening a
    /// new stream, which would shift every later stream number against the reference.
    /// `client_isn` tells a real new connection on the same addresses (see
    /// [`FlowMeta::closed_isn`]). Tombstones are the first to go when the table is full.
    pub fn close(&mut self, id: FlowId, client_isn: u32) {
        let Some(Some(meta)) = self.slots.get_mut(id) else {
            return;
        };
        if meta.closed_isn.is_some() {
            return; // closed already
        }
        meta.closed_isn = Some(client_isn);
        let (old, generation) = (meta.queue, meta.generation);
        meta.queue = Queue::Closed;
        self.counts[old as usize] -= 1;
        self.push(Queue::Closed, id, generation);
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
        let generation = self.next_generation;
        self.next_generation += 1;
        let meta = FlowMeta {
            key,
            stream,
            first_src: src,
            first_dst: dst,
            last_seen: ts,
            referenced: false,
            queue: Queue::Probation,
            generation,
            closed_isn: None,
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
        self.push(Queue::Probation, id, generation);
        Lookup { id, created: true }
    }

    /// Appends a flow to a queue, first dropping stale entries if they have piled up (they
    /// do when flows close or restart while no eviction runs), so queues stay O(flows).
    fn push(&mut self, q: Queue, id: FlowId, generation: u64) {
        self.counts[q as usize] += 1;
        let slots = &self.slots;
        let queue = &mut self.queues[q as usize];
        if queue.len() >= 2 * self.counts[q as usize] + 64 {
            queue.retain(|&(id, g)| is_current(slots, id, g, q));
        }
        queue.push_back((id, generation));
    }

    /// Takes a flow out of the table (no callback, no counting).
    fn remove(&mut self, id: FlowId) -> Option<FlowMeta> {
        let meta = self.slots.get_mut(id).and_then(Option::take)?;
        self.map.remove(&meta.key);
        self.free.push(id);
        self.counts[meta.queue as usize] -= 1;
        Some(meta)
    }

    /// Frees one slot; see [`Queue`] for the order.
    fn evict_one(&mut self, on_evict: &mut impl FnMut(FlowId, &FlowMeta)) {
        if let Some(id) = self.pop_current(Queue::Closed) {
            // Already reported and freed by the caller: nothing to hand over.
            self.remove(id);
            return;
        }
        let victim = self
            .sweep_probation(self.max_flows / 4)
            .or_else(|| self.sweep_main())
            .or_else(|| self.sweep_probation(0))
            // Everything on probation was just promoted: the main CLOCK now holds it.
            .or_else(|| self.sweep_main());
        if let Some(meta) = victim.and_then(|id| self.remove(id).map(|m| (id, m))) {
            on_evict(meta.0, &meta.1);
            self.evicted += 1;
        }
    }

    /// Next flow still in queue `q`, removed from the queue (stale entries are dropped).
    fn pop_current(&mut self, q: Queue) -> Option<FlowId> {
        while let Some((id, g)) = self.queues[q as usize].pop_front() {
            if is_current(&self.slots, id, g, q) {
                return Some(id);
            }
        }
        None
    }

    /// FIFO over new flows, while more than `keep` are on probation: the oldest one without
    /// a packet since it arrived is the victim; one that had a packet moves to the main
    /// CLOCK. The bound is re-checked after each promotion, so a burst of promotions never
    /// leaves the newest arrivals at the head to be evicted.
    fn sweep_probation(&mut self, keep: usize) -> Option<FlowId> {
        while self.counts[Queue::Probation as usize] > keep {
            let id = self.pop_current(Queue::Probation)?;
            let Some(Some(meta)) = self.slots.get_mut(id) else {
                continue;
            };
            if !meta.referenced {
                return Some(id);
            }
            // The bit stays set: the packet that earned the promotion also earns the
            // flow its first pass of the main CLOCK.
            meta.queue = Queue::Main;
            let generation = meta.generation;
            self.counts[Queue::Probation as usize] -= 1;
            self.push(Queue::Main, id, generation);
        }
        None
    }

    /// CLOCK over established flows: a flow seen since the hand last passed gets a second
    /// chance.
    fn sweep_main(&mut self) -> Option<FlowId> {
        // Bounded: every flow is passed over at most once with its bit set.
        let mut budget = self.queues[Queue::Main as usize].len() * 2 + 1;
        while let Some(id) = self.pop_current(Queue::Main) {
            budget = budget.saturating_sub(1);
            let Some(Some(meta)) = self.slots.get_mut(id) else {
                continue;
            };
            if meta.referenced && budget > 0 {
                meta.referenced = false;
                let generation = meta.generation;
                self.queues[Queue::Main as usize].push_back((id, generation));
                continue;
            }
            return Some(id);
        }
        None
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

    /// Removes flows idle since before `cutoff` (microseconds), handing each to `on_evict`
    /// in stream order per protocol.
    pub fn expire(&mut self, cutoff: u64, on_evict: &mut impl FnMut(FlowId, &FlowMeta)) {
        self.remove_where(|m| m.last_seen < cutoff, on_evict);
    }

    /// Removes every flow, in stream order per protocol, handing each to `on_evict`.
    pub fn drain(&mut self, on_evict: &mut impl FnMut(FlowId, &FlowMeta)) {
        self.remove_where(|_| true, on_evict);
        for q in &mut self.queues {
            q.clear();
        }
    }

    fn remove_where(
        &mut self,
        pred: impl Fn(&FlowMeta) -> bool,
        on_evict: &mut impl FnMut(FlowId, &FlowMeta),
    ) {
        let mut ids: Vec<FlowId> = (0..self.slots.len())
            .filter(|&i| self.slots[i].as_ref().is_some_and(&pred))
            .collect();
        ids.sort_by_key(|&i| self.slots[i].as_ref().map(|m| (m.key.proto, m.stream)));
        for id in ids {
            if let Some(meta) = self.remove(id) {
                on_evict(id, &meta);
            }
        }
    }
}

/// Whether a queue entry still stands for the flow in its slot.
fn is_current(slots: &[Option<FlowMeta>], id: FlowId, generation: u64, q: Queue) -> bool {
    matches!(slots.get(id), Some(Some(m)) if m.generation == generation && m.queue == q)
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

    /// The case plain CLOCK got wrong: once every established flow had been seen since
    /// the hand last passed, the sweep cleared them all and evicted the newest flow, right
    /// after its SYN. Here the victim is an established flow that went quiet.
    #[test]
    fn a_new_flow_is_not_the_first_victim() {
        let mut t = FlowTable::new(4);
        let mut victims = Vec::new();
        let mut on_evict = |_: FlowId, m: &FlowMeta| victims.push(m.stream);
        for port in 1..=4 {
            t.lookup(Proto::Tcp, ep(1, port), ep(2, 80), 0, &mut on_evict);
            t.lookup(Proto::Tcp, ep(2, 80), ep(1, port), 1, &mut on_evict);
        }
        // E (stream 4) opens; then B, C, D (streams 1-3) keep talking; then F opens.
        t.lookup(Proto::Tcp, ep(1, 5), ep(2, 80), 2, &mut on_evict);
        for port in 2..=4 {
            t.lookup(Proto::Tcp, ep(1, port), ep(2, 80), 3, &mut on_evict);
        }
        t.lookup(Proto::Tcp, ep(1, 6), ep(2, 80), 4, &mut on_evict);
        assert_eq!(victims, [0, 1], "E survives F's arrival");
        assert_eq!(t.evicted(), 2);
        let e = t.lookup(Proto::Tcp, ep(2, 80), ep(1, 5), 5, &mut |_, _| {});
        assert!(!e.created);
        assert_eq!(t.meta(e.id).unwrap().stream, 4);
    }

    #[test]
    fn closed_flows_keep_their_stream_and_go_first() {
        let mut t = FlowTable::new(3);
        let mut victims = Vec::new();
        let a = t.lookup(Proto::Tcp, ep(1, 1), ep(2, 80), 0, &mut |_, _| {});
        t.lookup(Proto::Tcp, ep(1, 2), ep(2, 80), 0, &mut |_, _| {});
        t.lookup(Proto::Tcp, ep(1, 3), ep(2, 80), 0, &mut |_, _| {});
        t.close(a.id, 1234);
        t.close(a.id, 1234);
        assert_eq!((t.len(), t.closed()), (3, 1));
        // A straggler of the closed connection finds its tombstone, not a new stream.
        let late = t.lookup(Proto::Tcp, ep(2, 80), ep(1, 1), 1, &mut |_, _| {});
        assert_eq!((late.id, late.created), (a.id, false));
        assert_eq!(t.meta(a.id).unwrap().closed_isn(), Some(1234));
        assert_eq!(t.meta(a.id).unwrap().stream, 0);
        // A full table drops the tombstone silently, before any open flow.
        let d = t.lookup(
            Proto::Tcp,
            ep(1, 4),
            ep(2, 80),
            2,
            &mut |_, m: &FlowMeta| victims.push(m.stream),
        );
        assert!(d.created && victims.is_empty());
        assert_eq!((t.len(), t.closed(), t.evicted()), (3, 0, 0));
        assert_eq!(t.meta(d.id).unwrap().stream, 3);
    }

    /// Closing flows while the table never fills leaves stale queue entries behind; they
    /// are compacted away, so queues stay proportional to the flows in them.
    #[test]
    fn queues_stay_bounded_without_evictions() {
        let mut t = FlowTable::new(1 << 20);
        for i in 0..100_000u32 {
            let src = Endpoint {
                ip: IpAddr::from(i.to_be_bytes()),
                port: 1,
            };
            let id = t.lookup(Proto::Tcp, src, ep(1, 80), 0, &mut |_, _| {}).id;
            t.close(id, i);
        }
        assert_eq!(t.closed(), 100_000);
        assert!(t.queues[Queue::Probation as usize].len() <= 64 + 1);
        assert!(t.queues[Queue::Closed as usize].len() <= 100_000);
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
