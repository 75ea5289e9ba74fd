//! The fingerprint engine: decoded packets in, per-stream fingerprints out.
//!
//! The engine owns the flow table and, per flow, the protocol state that turns packets into
//! JA4+ fingerprints. It does no I/O: the `read` command feeds it frames from a capture file,
//! live capture feeds it frames from an interface, tests feed it hand-made frames. Streams
//! are reported when they end (a TCP close, idle eviction, table pressure, or the end of
//! input) through [`Engine::take_finished`], so memory stays bounded however long the input
//! is.

// In a JA4-only build (no `ja4plus` feature) the JA4+ state machines compile out, leaving
// some imports and fields of the shared plumbing unused; that is expected, not rot.
#![cfg_attr(
    not(feature = "ja4plus"),
    allow(
        unused_imports,
        dead_code,
        reason = "JA4+ code compiled out in a JA4-only build"
    )
)]

mod app;
pub mod fingerprints;
mod http;
mod ssh;
mod tcp;
mod tls;
mod udp;

use std::collections::BTreeMap;
use std::sync::Arc;

use hais_dissect::keylog::KeyLog;
use hais_ja4::ja4::AlpnRule;

use crate::decode::{self, LinkType, Transport};
use crate::flow::{Endpoint, FlowId, FlowMeta, FlowTable, Proto};
use crate::output::Map;

pub use fingerprints::Fingerprints;

/// Wireshark's default SOCKS port (stream numbering compatibility only; detection of SOCKS
/// itself is by content).
const SOCKS_PORT: u16 = 1080;

/// Engine settings; the defaults match the reference tool's defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Add the raw (`_r`) strings.
    pub with_raw: bool,
    /// Original (wire) order instead of sorted: keys become `ja4_o`, `ja4h_o`.
    pub original_order: bool,
    /// Add the packet numbers each fingerprint came from.
    pub with_packet_numbers: bool,
    /// JA4SSH window, in SSH packets.
    pub ssh_window: usize,
    /// How non-alphanumeric ALPN values are printed in JA4/JA4S.
    pub alpn_rule: AlpnRule,
    /// Most flows held at once; beyond it the least recently active are finished early.
    /// About 1 KiB each, so the default bounds flow state to roughly 70 MB.
    pub max_flows: usize,
    /// Flows idle this long (microseconds of capture time) are finished. 0 = never.
    pub idle_timeout_us: u64,
    /// TLS secrets for decrypting handshakes and HTTP inside TLS.
    pub keylog: Arc<KeyLog>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            with_raw: false,
            original_order: false,
            with_packet_numbers: false,
            ssh_window: 200,
            alpn_rule: AlpnRule::Spec,
            max_flows: 65_536,
            idle_timeout_us: 0,
            keylog: Arc::new(KeyLog::default()),
        }
    }
}

/// Counters the engine keeps; printed as the summary of a run and exported as metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub packets: u64,
    pub bytes: u64,
    pub tcp_packets: u64,
    pub udp_packets: u64,
    pub flows: u64,
    pub flows_evicted: u64,
    pub streams_reported: u64,
    /// Errors by kind: decode failures (`decode.truncated`, ...) and protocol parse
    /// failures (`tls.bad_client_hello`, ...). Bad input is counted, never fatal.
    pub errors: BTreeMap<String, u64>,
}

impl Stats {
    pub(crate) fn error(&mut self, kind: &str) {
        if let Some(n) = self.errors.get_mut(kind) {
            *n += 1;
        } else {
            self.errors.insert(kind.to_string(), 1);
        }
    }

    /// Total errors of every kind.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Per-packet context handed down to the protocol state machines.
pub(crate) struct Ctx<'a> {
    pub cfg: &'a EngineConfig,
    pub stats: &'a mut Stats,
    pub fp: &'a mut Fingerprints,
    /// 1-based packet number in the input.
    pub pkt: u64,
    /// Packet time, microseconds since the epoch.
    pub ts: u64,
    /// Set when a SOCKS request went by (see [`Engine::on_frame`] for why it matters).
    pub socks_request: bool,
}

/// Protocol state of one flow.
#[derive(Debug)]
pub(crate) enum Session {
    Tcp(Box<tcp::TcpSession>),
    Udp(Box<udp::UdpSession>),
    /// An outer tunnel conversation (VXLAN, Geneve): numbered, never printed.
    Tunnel,
}

/// Boxed in the engine's slab: the slab is sized by the flow table's slot count, and most
/// slots of a busy table hold closed flows (tombstones) with no state at all.
#[derive(Debug)]
struct FlowState {
    /// The endpoint that opened the conversation.
    client: Endpoint,
    session: Session,
    fp: Fingerprints,
}

/// A finished stream, ready to print.
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub proto: Proto,
    pub stream: u64,
    pub record: Map,
    /// The resumption-stable JA4 of the stream's ClientHello (`hais_ja4::ja4::ja4_stable_string`),
    /// for the uplink's events only: not part of the record, whose layout is the reference
    /// tools'.
    pub ja4_stable: Option<String>,
}

/// The engine. Feed it with [`Engine::on_frame`], collect with [`Engine::take_finished`]
/// and [`Engine::finish`].
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    flows: FlowTable,
    states: Vec<Option<Box<FlowState>>>,
    finished: Vec<StreamReport>,
    stats: Stats,
    last_expiry: u64,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        Engine {
            flows: FlowTable::new(cfg.max_flows),
            cfg,
            states: Vec::new(),
            finished: Vec::new(),
            stats: Stats::default(),
            last_expiry: 0,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Open flows currently tracked (bounded by `max_flows`; closed TCP flows kept only
    /// for their stream numbers do not count).
    pub fn live_flows(&self) -> usize {
        self.flows.len() - self.flows.closed()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Streams finished so far (idle or evicted); drains the internal list.
    pub fn take_finished(&mut self) -> Vec<StreamReport> {
        std::mem::take(&mut self.finished)
    }

    /// Ends every flow and returns the remaining reports, TCP streams first, each protocol
    /// in stream order (the reference tool's order).
    pub fn finish(&mut self) -> Vec<StreamReport> {
        let mut out = Vec::new();
        self.finish_each(|r| out.push(r));
        out.sort_by_key(|r| (r.proto, r.stream));
        out
    }

    /// Ends every flow, handing the remaining reports to `emit` one at a time (reports not
    /// yet taken first, then the open flows in stream order per protocol). Each flow's state
    /// is freed as its report goes out, so the end of a file with many open flows never
    /// holds every report at once.
    pub fn finish_each(&mut self, mut emit: impl FnMut(StreamReport)) {
        self.finished.drain(..).for_each(&mut emit);
        let Engine {
            flows,
            states,
            stats,
            cfg,
            ..
        } = self;
        flows.drain(&mut |id, meta| {
            if let Some(r) = finish_flow(cfg, states, stats, id, meta) {
                emit(r);
            }
        });
    }

    /// Processes one captured frame. `ts` is the capture time in microseconds.
    pub fn on_frame(&mut self, ts: u64, link: LinkType, frame: &[u8]) {
        self.stats.packets += 1;
        self.stats.bytes += frame.len() as u64;
        let pkt_no = self.stats.packets;
        let packet = match decode::decode(link, frame) {
            Ok(p) => p,
            Err(e) => {
                let kind = format!("decode.{}", e.kind());
                self.stats.error(&kind);
                return;
            }
        };
        self.maybe_expire(ts);
        // Tunnel conversations take UDP stream numbers, as in the reference's numbering.
        for t in packet.tunnel_udp.iter() {
            let src = Endpoint {
                ip: t.src,
                port: t.src_port,
            };
            let dst = Endpoint {
                ip: t.dst,
                port: t.dst_port,
            };
            let look = self.lookup(Proto::Udp, src, dst, ts);
            self.ensure_state(look.0, look.1, src, || Session::Tunnel);
        }
        if packet.has_icmp {
            // ICMP errors quote the headers of other flows; they say nothing about them.
            return;
        }
        match &packet.transport {
            Transport::Tcp(seg) => {
                self.stats.tcp_packets += 1;
                let src = Endpoint {
                    ip: packet.src,
                    port: seg.src_port,
                };
                let dst = Endpoint {
                    ip: packet.dst,
                    port: seg.dst_port,
                };
                let (mut id, mut created) = self.lookup(Proto::Tcp, src, dst, ts);
                let closed_isn = self.flows.meta(id).and_then(FlowMeta::closed_isn);
                let client_isn = closed_isn.or_else(|| tcp::client_isn(self.state(id)));
                if !created && tcp::is_new_syn(client_isn, seg) {
                    let Engine {
                        flows,
                        states,
                        finished,
                        stats,
                        cfg,
                        ..
                    } = self;
                    let look = flows.restart(id, src, dst, ts, &mut |fid, meta| {
                        finished.extend(finish_flow(cfg, states, stats, fid, meta));
                    });
                    id = look.id;
                    created = true;
                } else if closed_isn.is_some() {
                    // A straggler of a connection already closed and reported: it keeps
                    // the stream number it had, and there is nothing left to learn.
                    return;
                }
                let client = tcp::initiator(seg, src, dst);
                self.ensure_state(id, created, client, || {
                    Session::Tcp(Box::new(tcp::TcpSession::new()))
                });
                let Some(state) = self.states.get_mut(id).and_then(Option::as_mut) else {
                    return;
                };
                let from_client = src == state.client;
                if let Session::Tcp(sess) = &mut state.session {
                    let mut ctx = Ctx {
                        cfg: &self.cfg,
                        stats: &mut self.stats,
                        fp: &mut state.fp,
                        pkt: pkt_no,
                        ts,
                        socks_request: false,
                    };
                    sess.on_segment(&mut ctx, from_client, seg, packet.ttl);
                    // Wireshark's SOCKS dissector (on its port, 1080) opens a conversation
                    // for the proxied connection, which takes a TCP stream number; the
                    // reference's numbering, and so ours, skips one.
                    if ctx.socks_request && (src.port == SOCKS_PORT || dst.port == SOCKS_PORT) {
                        self.flows.reserve_stream(Proto::Tcp);
                    }
                    if let Some(isn) = sess.finished_isn() {
                        self.close_tcp(id, isn);
                    }
                }
            }
            Transport::Udp(dgram) => {
                self.stats.udp_packets += 1;
                let src = Endpoint {
                    ip: packet.src,
                    port: dgram.src_port,
                };
                let dst = Endpoint {
                    ip: packet.dst,
                    port: dgram.dst_port,
                };
                let (id, created) = self.lookup(Proto::Udp, src, dst, ts);
                self.ensure_state(id, created, src, || {
                    Session::Udp(Box::new(udp::UdpSession::new()))
                });
                let Some(state) = self.states.get_mut(id).and_then(Option::as_mut) else {
                    return;
                };
                let from_client = src == state.client;
                if let Session::Udp(sess) = &mut state.session {
                    let mut ctx = Ctx {
                        cfg: &self.cfg,
                        stats: &mut self.stats,
                        fp: &mut state.fp,
                        pkt: pkt_no,
                        ts,
                        socks_request: false,
                    };
                    sess.on_datagram(&mut ctx, from_client, src, dst, dgram.payload, packet.ttl);
                }
            }
            _ => {}
        }
    }

    /// Reports a TCP flow whose connection is over and frees its state, leaving a
    /// tombstone in the flow table (see [`FlowTable::close`]).
    fn close_tcp(&mut self, id: FlowId, client_isn: u32) {
        let Engine {
            flows,
            states,
            finished,
            stats,
            cfg,
            ..
        } = self;
        if let Some(meta) = flows.meta(id) {
            finished.extend(finish_flow(cfg, states, stats, id, meta));
        }
        flows.close(id, client_isn);
    }

    fn state(&self, id: FlowId) -> Option<&Session> {
        self.states
            .get(id)
            .and_then(Option::as_ref)
            .map(|s| &s.session)
    }

    fn lookup(&mut self, proto: Proto, src: Endpoint, dst: Endpoint, ts: u64) -> (FlowId, bool) {
        let Engine {
            flows,
            states,
            finished,
            stats,
            cfg,
            ..
        } = self;
        let look = flows.lookup(proto, src, dst, ts, &mut |id, meta| {
            finished.extend(finish_flow(cfg, states, stats, id, meta));
        });
        if look.created {
            self.stats.flows += 1;
            self.stats.flows_evicted = self.flows.evicted();
        }
        (look.id, look.created)
    }

    fn ensure_state(
        &mut self,
        id: FlowId,
        created: bool,
        client: Endpoint,
        make: impl FnOnce() -> Session,
    ) {
        if self.states.len() <= id {
            self.states.resize_with(id + 1, || None);
        }
        if created || self.states[id].is_none() {
            self.states[id] = Some(Box::new(FlowState {
                client,
                session: make(),
                fp: Fingerprints::default(),
            }));
        }
    }

    fn maybe_expire(&mut self, ts: u64) {
        if self.cfg.idle_timeout_us == 0 || ts < self.last_expiry + 1_000_000 {
            return;
        }
        self.expire_idle(ts);
    }

    /// Finishes every flow idle for `idle_timeout_us` as of `now_us` (same clock as packet
    /// times) and queues its report for [`Engine::take_finished`]. Packets drive expiry by
    /// themselves; live capture also calls this on a timer, because a quiet interface brings
    /// no packet to notice that its last flows went idle. No-op when the timeout is 0.
    pub fn expire_idle(&mut self, now_us: u64) {
        let timeout = self.cfg.idle_timeout_us;
        if timeout == 0 {
            return;
        }
        self.last_expiry = now_us;
        let cutoff = now_us.saturating_sub(timeout);
        let Engine {
            flows,
            states,
            finished,
            stats,
            cfg,
            ..
        } = self;
        flows.expire(cutoff, &mut |id, meta| {
            finished.extend(finish_flow(cfg, states, stats, id, meta));
        });
    }
}

/// Ends a flow: flushes partial state (JA4SSH windows, JA4L, JA4TS), frees it and returns
/// its report, if it has one. A flow without state (a tombstone, already reported) has
/// none.
fn finish_flow(
    cfg: &EngineConfig,
    states: &mut [Option<Box<FlowState>>],
    stats: &mut Stats,
    id: FlowId,
    meta: &FlowMeta,
) -> Option<StreamReport> {
    let mut state = states.get_mut(id).and_then(Option::take)?;
    match &mut state.session {
        Session::Tcp(sess) => sess.finish(cfg, &mut state.fp),
        Session::Udp(sess) => sess.finish(cfg, &mut state.fp),
        Session::Tunnel => {}
    }
    if state.fp.is_empty() {
        return None;
    }
    stats.streams_reported += 1;
    Some(StreamReport {
        proto: meta.key.proto,
        stream: meta.stream,
        record: state.fp.to_record(meta, cfg),
        ja4_stable: state.fp.ja4_stable.take(),
    })
}
