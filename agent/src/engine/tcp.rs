//! TCP connections: the handshake-derived fingerprints (JA4T, JA4TS, JA4L) and the
//! reassembled byte streams handed to the application-protocol state machine.

use crate::decode::TcpSegment;
use crate::flow::Endpoint;
use crate::flow::tcp::{SegmentFate, TcpReassembler};

use super::app::App;
use super::fingerprints::{Fingerprints, Print};
use super::{Ctx, EngineConfig, Session};

pub(crate) const FIN: u8 = 0x01;
pub(crate) const SYN: u8 = 0x02;
pub(crate) const RST: u8 = 0x04;
pub(crate) const ACK: u8 = 0x10;

/// Index of the client→server direction in per-direction arrays.
pub(crate) const C2S: usize = 0;
/// Index of the server→client direction.
pub(crate) const S2C: usize = 1;

/// Which end opened the connection: the SYN's sender, or the SYN-ACK's receiver, or failing
/// both (capture started mid-connection) the sender of the first packet seen.
pub(crate) fn initiator(seg: &TcpSegment<'_>, src: Endpoint, dst: Endpoint) -> Endpoint {
    if seg.flags & SYN != 0 && seg.flags & ACK != 0 {
        dst
    } else {
        src
    }
}

/// The client's initial sequence number of a TCP flow, when its SYN was seen.
pub(crate) fn client_isn(state: Option<&Session>) -> Option<u32> {
    match state {
        Some(Session::Tcp(s)) => s.client_isn,
        _ => None,
    }
}

/// A SYN with a different initial sequence number on a known address pair: the port was
/// reused for a new connection, which gets a new stream (as Wireshark numbers them).
pub(crate) fn is_new_syn(client_isn: Option<u32>, seg: &TcpSegment<'_>) -> bool {
    if seg.flags & SYN == 0 || seg.flags & ACK != 0 {
        return false;
    }
    client_isn.is_some_and(|isn| isn != seg.seq)
}

/// `a` is at or after `b` in sequence space.
fn seq_at_or_after(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) as i32 >= 0
}

/// State of one TCP connection.
#[derive(Debug)]
pub(crate) struct TcpSession {
    client_isn: Option<u32>,
    seen_synack: bool,
    rx: [TcpReassembler; 2],
    app: App,
    early_acks: [u32; 2],
    /// Per direction, the sequence number just past its FIN, once one was sent.
    fin_end: [Option<u32>; 2],
    /// Per direction, whether the other side acknowledged its FIN.
    fin_acked: [bool; 2],
    /// A RST went by, in either direction.
    reset: bool,
    #[cfg(feature = "ja4plus")]
    ja4l: hais_ja4plus::ja4l::Ja4lTcp,
    #[cfg(feature = "ja4plus")]
    ja4ts: hais_ja4plus::ja4t::Ja4tsTracker,
}

impl TcpSession {
    pub(crate) fn new() -> Self {
        TcpSession {
            client_isn: None,
            seen_synack: false,
            rx: [TcpReassembler::default(), TcpReassembler::default()],
            app: App::default(),
            early_acks: [0; 2],
            fin_end: [None; 2],
            fin_acked: [false; 2],
            reset: false,
            #[cfg(feature = "ja4plus")]
            ja4l: Default::default(),
            #[cfg(feature = "ja4plus")]
            ja4ts: Default::default(),
        }
    }

    pub(crate) fn on_segment(
        &mut self,
        ctx: &mut Ctx<'_>,
        from_client: bool,
        seg: &TcpSegment<'_>,
        ttl: u8,
    ) {
        let dir = if from_client { C2S } else { S2C };
        let flags = seg.flags;
        let syn = flags & SYN != 0;
        let ack = flags & ACK != 0;
        #[cfg(feature = "ja4plus")]
        self.ja4l.on_packet(ctx.ts, from_client, flags, ttl);
        #[cfg(not(feature = "ja4plus"))]
        let _ = ttl;
        if syn && !ack && from_client {
            if self.client_isn.is_none() {
                self.client_isn = Some(seg.seq);
                #[cfg(feature = "ja4plus")]
                {
                    ctx.fp.ja4t = Some(Print {
                        hashed: hais_ja4plus::ja4t::ja4t(seg.window, seg.options),
                        raw: String::new(),
                        pkt: ctx.pkt,
                    });
                }
            }
            self.rx[C2S].on_syn(seg.seq);
        }
        if syn && ack && !from_client {
            if !self.seen_synack {
                self.seen_synack = true;
                #[cfg(feature = "ja4plus")]
                {
                    ctx.fp.ja4ts = Some(Print {
                        hashed: String::new(),
                        raw: String::new(),
                        pkt: ctx.pkt,
                    });
                }
            }
            self.rx[S2C].on_syn(seg.seq);
        }
        #[cfg(feature = "ja4plus")]
        if !from_client {
            if syn && ack {
                self.ja4ts.on_syn_ack(ctx.ts, seg.window, seg.options);
            } else if flags & RST != 0 {
                self.ja4ts.on_server_rst(ctx.ts);
            } else if !seg.payload.is_empty() {
                // After the server speaks, a RST is an ordinary abort, not handshake behaviour.
                self.ja4ts.close();
            }
        }
        if !syn && flags & ACK != 0 && seg.payload.is_empty() && matches!(self.app, App::Detect) {
            // Bare ACKs before the protocol is known (the handshake's last ACK): JA4SSH
            // counts them once the connection turns out to be SSH.
            self.early_acks[dir] = self.early_acks[dir].saturating_add(1);
        }
        let payload = seg.payload;
        let retransmission = self.rx[dir].is_retransmission(seg.seq, payload.len());
        let TcpSession {
            rx,
            app,
            early_acks,
            ..
        } = self;
        if !payload.is_empty() && !rx[dir].is_stopped() {
            let fate = rx[dir].push(seg.seq, payload, |bytes| app.on_bytes(ctx, dir, bytes));
            if fate == SegmentFate::Ignored && rx[dir].had_gap() {
                ctx.stats.error("tcp.unrecoverable_gap");
            }
        }
        // Packet-level accounting (JA4SSH) runs after the bytes, so the packet that reveals
        // the protocol is counted too.
        if *early_acks != [0, 0] && app.is_ssh() {
            let acks = std::mem::take(early_acks);
            for (d, n) in acks.iter().enumerate() {
                for _ in 0..*n {
                    app.on_packet(ctx, d == C2S, ACK, 0, false);
                }
            }
        }
        app.on_packet(ctx, from_client, flags, payload.len(), retransmission);
        // Stop paying for directions the protocol no longer needs.
        for d in [C2S, S2C] {
            if !rx[d].is_stopped() && !app.wants_bytes(d) {
                if app.wants_seq_tracking() {
                    rx[d].discard();
                } else {
                    rx[d].stop();
                }
                app.release(d);
            }
        }
        self.track_teardown(dir, seg);
    }

    fn track_teardown(&mut self, dir: usize, seg: &TcpSegment<'_>) {
        if seg.flags & FIN != 0 && self.fin_end[dir].is_none() {
            let end = seg
                .seq
                .wrapping_add(seg.payload.len() as u32)
                .wrapping_add(1);
            self.fin_end[dir] = Some(end);
        }
        let other = 1 - dir;
        if seg.flags & ACK != 0
            && let Some(end) = self.fin_end[other]
            && seq_at_or_after(seg.ack, end)
        {
            self.fin_acked[other] = true;
        }
        self.reset |= seg.flags & RST != 0;
    }

    /// `Some(client ISN)` once the connection is over and its report can be made now
    /// rather than at the end of the input, which is what keeps memory flat on files with
    /// many connections. Over means: both FINs acknowledged, or a RST when nothing the
    /// connection could still send would change its fingerprints (no direction still
    /// reassembled, JA4TS settled; the peer of a RST may still have packets in flight).
    /// SSH connections are never over early: JA4SSH counts every packet to the very last
    /// (in sshv1.pcap both ends send their FIN twice and two more ACKs follow once both
    /// FINs are acknowledged; the reference counts them). Only flows whose SYN was seen qualify: the ISN is what tells a later
    /// connection on the same addresses from stragglers of this one.
    pub(crate) fn finished_isn(&self) -> Option<u32> {
        let isn = self.client_isn?;
        if self.app.is_ssh() {
            return None;
        }
        #[cfg(feature = "ja4plus")]
        let ja4ts_settled = self.ja4ts.is_closed();
        #[cfg(not(feature = "ja4plus"))]
        let ja4ts_settled = true;
        let fins = self.fin_acked == [true, true];
        let reset = self.reset && self.rx.iter().all(TcpReassembler::is_stopped) && ja4ts_settled;
        (fins || reset).then_some(isn)
    }

    pub(crate) fn finish(&mut self, cfg: &EngineConfig, fp: &mut Fingerprints) {
        self.app.finish(cfg, fp);
        #[cfg(feature = "ja4plus")]
        {
            if let Some(l) = self.ja4l.result() {
                fp.ja4l_c = Some(l.ja4l_c());
                fp.ja4l_s = Some(l.ja4l_s());
            }
            match (fp.ja4ts.as_mut(), self.ja4ts.fingerprint()) {
                (Some(ts), Some(s)) => ts.hashed = s,
                (Some(_), None) => fp.ja4ts = None,
                _ => {}
            }
        }
    }
}
