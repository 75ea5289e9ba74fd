//! Deterministic generator of large, realistic captures.
//!
//! Every connection is a complete TCP conversation (three-way handshake with OS-like SYN
//! options, data with timestamps, delayed ACKs, FIN close) over IPv4 or IPv6 in Ethernet,
//! with correct IP and TCP checksums. Its opening is real traffic cut from the corpus
//! (TLS 1.2/1.3 ClientHello, ServerHello and certificates; HTTP/1 requests; SSH banners and
//! key exchange) with new addresses, ports and sequence numbers; after it comes bulk
//! payload framed as the protocol frames it (TLS application_data records, SSH packets,
//! HTTP bodies), so most bytes of the file are bulk data, as on a real link. A few dozen
//! connections are in flight at once and their packets interleave.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::corpus::Templates;
use crate::pcap::FrameSink;
use crate::rng::Rng;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    /// Stop opening connections once about this many bytes (pcap file size) are planned.
    pub target_bytes: u64,
    pub seed: u64,
    /// Mean bulk payload per connection, bytes. 0 = handshakes only (every connection
    /// opens, exchanges its handshake and a small request/response, and closes).
    pub mean_bulk: u64,
    /// Connections in flight at once.
    pub concurrency: usize,
    /// Timestamp of the first packet, microseconds since the epoch.
    pub start_us: u64,
    /// Simulated link rate (bits/s): timestamps advance by each frame's wire time.
    pub link_bps: u64,
    /// Share of IPv6 connections.
    pub ipv6_share: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            target_bytes: 1 << 30,
            seed: 1,
            mean_bulk: 256 * 1024,
            concurrency: 48,
            start_us: 1_764_000_000_000_000,
            link_bps: 1_000_000_000,
            ipv6_share: 0.15,
        }
    }
}

/// What was generated.
#[derive(Debug, Clone, Default)]
pub struct SynthStats {
    pub connections: u64,
    pub tls_connections: u64,
    pub http_connections: u64,
    pub ssh_connections: u64,
    pub ipv6_connections: u64,
    /// One per TLS connection.
    pub client_hellos: u64,
    pub http_requests: u64,
    pub packets: u64,
    /// Sum of frame lengths.
    pub frame_bytes: u64,
    /// Sum of TCP payload lengths.
    pub payload_bytes: u64,
    /// Bytes of bulk payload (after the handshakes).
    pub bulk_bytes: u64,
}

impl SynthStats {
    /// Size of a classic pcap file holding these frames.
    pub fn pcap_bytes(&self) -> u64 {
        24 + 16 * self.packets + self.frame_bytes
    }

    /// The stats as one JSON object.
    pub fn to_json(&self, cfg: &SynthConfig) -> String {
        format!(
            concat!(
                "{{\"seed\":{},\"target_bytes\":{},\"mean_bulk\":{},\"concurrency\":{},",
                "\"pcap_bytes\":{},\"packets\":{},\"frame_bytes\":{},\"payload_bytes\":{},",
                "\"bulk_bytes\":{},\"connections\":{},\"tls_connections\":{},",
                "\"http_connections\":{},\"ssh_connections\":{},\"ipv6_connections\":{},",
                "\"client_hellos\":{},\"http_requests\":{}}}"
            ),
            cfg.seed,
            cfg.target_bytes,
            cfg.mean_bulk,
            cfg.concurrency,
            self.pcap_bytes(),
            self.packets,
            self.frame_bytes,
            self.payload_bytes,
            self.bulk_bytes,
            self.connections,
            self.tls_connections,
            self.http_connections,
            self.ssh_connections,
            self.ipv6_connections,
            self.client_hellos,
            self.http_requests,
        )
    }
}

// TCP flags.
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// A client operating system's SYN: options (timestamp value filled in later), window,
/// initial TTL.
#[derive(Debug)]
struct Profile {
    syn_options: &'static [u8],
    /// Offset of the 4-byte TSval inside `syn_options`, when timestamps are used.
    ts_at: Option<usize>,
    window: u16,
    ttl: u8,
}

const PROFILES: [Profile; 3] = [
    // Linux: MSS, SACK_PERM, TS, NOP, WS 7
    Profile {
        syn_options: &[
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 3, 7,
        ],
        ts_at: Some(8),
        window: 64_240,
        ttl: 64,
    },
    // Windows: MSS, NOP, WS 8, NOP, NOP, SACK_PERM
    Profile {
        syn_options: &[2, 4, 0x05, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2],
        ts_at: None,
        window: 64_240,
        ttl: 128,
    },
    // macOS: MSS, NOP, WS 6, NOP, NOP, TS, SACK_PERM, EOL, EOL
    Profile {
        syn_options: &[
            2, 4, 0x05, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 4, 2, 0, 0,
        ],
        ts_at: Some(12),
        window: 65_535,
        ttl: 64,
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// Plain bytes (HTTP bodies).
    Raw,
    /// TLS application_data records.
    Tls,
    /// SSH binary packets (4-byte length, encrypted body, 16-byte tag).
    Ssh,
}

#[derive(Debug)]
enum Step {
    /// Protocol bytes one side sends (PSH on the last segment), then waits for the peer.
    Data { from_client: bool, bytes: Vec<u8> },
    /// Bulk payload.
    Bulk {
        from_client: bool,
        left: u64,
        framing: Framing,
    },
    /// FIN from the client, FIN from the server, last ACK.
    Close,
}

#[derive(Debug)]
struct Side {
    ip: IpAddr,
    port: u16,
    /// Next sequence number to send.
    seq: u32,
    ip_id: u16,
    ttl: u8,
    ts_base: u32,
    /// The last TSval this side sent: the peer echoes it as TSecr.
    ts_sent: u32,
    /// Full segments received and not yet acknowledged.
    unacked: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Syn,
    SynAck,
    Ack,
    Steps,
    Done,
}

#[derive(Debug)]
struct Conn {
    c: Side,
    s: Side,
    profile: &'static Profile,
    mss: usize,
    phase: Phase,
    steps: VecDeque<Step>,
    /// Offset into the current `Data` step.
    off: usize,
    /// Framing state of the current bulk step: record bytes still to come, and header
    /// bytes not yet sent.
    rec_left: u64,
    hdr: [u8; 5],
    hdr_at: usize,
    hdr_len: usize,
}

/// Packet builder and clock shared by all connections.
struct Wire<'a> {
    sink: &'a mut dyn FrameSink,
    rng: Rng,
    buf: Vec<u8>,
    payload: Vec<u8>,
    now_ns: u128,
    ns_per_byte: f64,
    start_us: u64,
    stats: SynthStats,
}

fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ones-complement sum of `data` as big-endian 16-bit words (odd tail padded).
fn sum_words(data: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        sum += (v >> 48) + ((v >> 32) & 0xffff) + ((v >> 16) & 0xffff) + (v & 0xffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for w in &mut rest {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = rest.remainder() {
        sum += u64::from(*b) << 8;
    }
    sum
}

fn ip_words(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => sum_words(&a.octets()),
        IpAddr::V6(a) => sum_words(&a.octets()),
    }
}

impl Wire<'_> {
    fn ts_ms(&self) -> u32 {
        (self.now_ns / 1_000_000) as u32
    }

    /// Builds and emits one segment from `from` to `to`. The payload is in `self.payload`.
    fn segment(
        &mut self,
        from: &mut Side,
        to: &Side,
        flags: u8,
        window: u16,
        options: &[u8],
    ) -> io::Result<()> {
        let plen = self.payload.len();
        let opt_len = options.len().div_ceil(4) * 4;
        let tcp_len = 20 + opt_len + plen;
        let b = &mut self.buf;
        b.clear();
        b.extend_from_slice(&[0x02, 0x42, 0xac, 0x11, 0x00, 0x02]); // dst MAC
        b.extend_from_slice(&[0x02, 0x42, 0x0a, 0x00, 0x00, 0x01]); // src MAC
        let ip_start = 14;
        match (from.ip, to.ip) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                b.extend_from_slice(&[0x08, 0x00]);
                let total = (20 + tcp_len) as u16;
                b.extend_from_slice(&[0x45, 0]);
                b.extend_from_slice(&total.to_be_bytes());
                b.extend_from_slice(&from.ip_id.to_be_bytes());
                b.extend_from_slice(&[0x40, 0, from.ttl, 6, 0, 0]);
                b.extend_from_slice(&s.octets());
                b.extend_from_slice(&d.octets());
                let ck = fold(sum_words(&b[ip_start..ip_start + 20]));
                b[ip_start + 10..ip_start + 12].copy_from_slice(&ck.to_be_bytes());
                from.ip_id = from.ip_id.wrapping_add(1);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                b.extend_from_slice(&[0x86, 0xdd]);
                b.extend_from_slice(&[0x60, 0, 0, 0]);
                b.extend_from_slice(&(tcp_len as u16).to_be_bytes());
                b.extend_from_slice(&[6, from.ttl]);
                b.extend_from_slice(&s.octets());
                b.extend_from_slice(&d.octets());
            }
            _ => unreachable!("both ends of a connection share an address family"),
        }
        let tcp_start = b.len();
        b.extend_from_slice(&from.port.to_be_bytes());
        b.extend_from_slice(&to.port.to_be_bytes());
        b.extend_from_slice(&from.seq.to_be_bytes());
        let ack = if flags & ACK != 0 { to.seq } else { 0 };
        b.extend_from_slice(&ack.to_be_bytes());
        b.push(((5 + opt_len / 4) as u8) << 4);
        b.push(flags);
        b.extend_from_slice(&window.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        b.extend_from_slice(options);
        b.resize(tcp_start + 20 + opt_len, 1); // pad options with NOPs
        b.extend_from_slice(&self.payload);
        let pseudo = ip_words(from.ip) + ip_words(to.ip) + 6 + tcp_len as u64;
        let ck = fold(pseudo + sum_words(&b[tcp_start..]));
        b[tcp_start + 16..tcp_start + 18].copy_from_slice(&ck.to_be_bytes());

        from.seq = from
            .seq
            .wrapping_add(plen as u32)
            .wrapping_add(u32::from(flags & (SYN | FIN) != 0));
        let frame_len = b.len();
        let ts_us = self.start_us + (self.now_ns / 1000) as u64;
        self.sink.frame(ts_us, &self.buf)?;
        // Wire time plus preamble and inter-frame gap.
        self.now_ns += ((frame_len + 24) as f64 * self.ns_per_byte) as u128;
        self.stats.packets += 1;
        self.stats.frame_bytes += frame_len as u64;
        self.stats.payload_bytes += plen as u64;
        Ok(())
    }
}

impl Conn {
    fn uses_ts(&self) -> bool {
        self.profile.ts_at.is_some()
    }

    /// Timestamp option for a data segment from one side.
    fn ts_option(&mut self, w: &Wire, from_client: bool) -> Option<[u8; 12]> {
        if !self.uses_ts() {
            return None;
        }
        let (a, b) = if from_client {
            (&mut self.c, &self.s)
        } else {
            (&mut self.s, &self.c)
        };
        a.ts_sent = a.ts_base.wrapping_add(w.ts_ms());
        let mut o = [1, 1, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0];
        o[4..8].copy_from_slice(&a.ts_sent.to_be_bytes());
        o[8..12].copy_from_slice(&b.ts_sent.to_be_bytes());
        Some(o)
    }

    fn send(&mut self, w: &mut Wire, from_client: bool, flags: u8) -> io::Result<()> {
        let opt = self.ts_option(w, from_client);
        let opts: &[u8] = opt.as_ref().map_or(&[], |o| &o[..]);
        let window = if from_client {
            self.profile.window >> 2
        } else {
            501
        };
        if from_client {
            w.segment(&mut self.c, &self.s, flags, window, opts)
        } else {
            w.segment(&mut self.s, &self.c, flags, window, opts)
        }
    }

    /// A pure ACK from the receiver of `from_client`'s data.
    fn ack_from_peer(&mut self, w: &mut Wire, from_client: bool) -> io::Result<()> {
        w.payload.clear();
        self.send(w, !from_client, ACK)?;
        if from_client {
            self.s.unacked = 0;
        } else {
            self.c.unacked = 0;
        }
        Ok(())
    }

    fn payload_room(&self) -> usize {
        self.mss - if self.uses_ts() { 12 } else { 0 }
    }

    /// Fills `w.payload` with up to `n` bytes of framed bulk; returns how many.
    fn fill_bulk(&mut self, w: &mut Wire, n: usize, left: u64, framing: Framing) -> usize {
        let n = n.min(left as usize);
        w.payload.clear();
        w.payload.resize(n, 0);
        let mut i = 0;
        let mut left = left;
        while i < n {
            if self.hdr_at < self.hdr_len {
                let k = (self.hdr_len - self.hdr_at).min(n - i);
                w.payload[i..i + k].copy_from_slice(&self.hdr[self.hdr_at..self.hdr_at + k]);
                self.hdr_at += k;
                i += k;
                left -= k as u64;
                continue;
            }
            if self.rec_left == 0 && framing != Framing::Raw {
                self.start_record(&mut w.rng, left, framing);
                continue;
            }
            let k = if framing == Framing::Raw {
                n - i
            } else {
                (self.rec_left as usize).min(n - i)
            };
            w.rng.fill(&mut w.payload[i..i + k]);
            i += k;
            left -= k as u64;
            self.rec_left = self.rec_left.saturating_sub(k as u64);
        }
        n
    }

    /// Starts the next record of a bulk stream with `left` bytes to go.
    fn start_record(&mut self, rng: &mut Rng, left: u64, framing: Framing) {
        let hdr = if framing == Framing::Tls { 5u64 } else { 4 };
        if left <= hdr + 16 {
            // Too short for a record: the stream ends with a few stray bytes.
            self.rec_left = left;
            self.hdr_len = 0;
            self.hdr_at = 0;
            return;
        }
        let want = match framing {
            // Full records (16 KiB + AEAD overhead) mostly, some short ones.
            Framing::Tls if rng.chance(0.85) => 16_401,
            Framing::Tls => rng.range(64, 4000),
            // SSH: full channel-data packets, some interactive-sized ones.
            _ if rng.chance(0.7) => 32_784,
            _ => rng.range(2, 40) * 16 + 16,
        };
        let mut body = want.min(left.saturating_sub(hdr));
        // Never leave a tail too short for a header.
        if left - hdr - body <= hdr + 16 {
            body = left - hdr;
        }
        match framing {
            Framing::Tls => {
                let body16 = body.min(u64::from(u16::MAX)) as u16;
                self.hdr[..3].copy_from_slice(&[0x17, 3, 3]);
                self.hdr[3..5].copy_from_slice(&body16.to_be_bytes());
                self.hdr_len = 5;
                self.rec_left = u64::from(body16);
            }
            _ => {
                // packet_length excludes itself and the 16-byte MAC/tag.
                let pl = body.saturating_sub(16) as u32;
                self.hdr[..4].copy_from_slice(&pl.to_be_bytes());
                self.hdr_len = 4;
                self.rec_left = body;
            }
        }
        self.hdr_at = 0;
    }

    /// Emits up to about `budget` packets. Returns true when the connection is over.
    fn burst(&mut self, w: &mut Wire, budget: u32) -> io::Result<bool> {
        match self.phase {
            Phase::Syn => {
                let mut opts = self.profile.syn_options.to_vec();
                if let Some(at) = self.profile.ts_at {
                    self.c.ts_sent = self.c.ts_base.wrapping_add(w.ts_ms());
                    opts[at..at + 4].copy_from_slice(&self.c.ts_sent.to_be_bytes());
                }
                if self.c.ip.is_ipv6() {
                    opts[2..4].copy_from_slice(&1440u16.to_be_bytes());
                }
                w.payload.clear();
                w.segment(&mut self.c, &self.s, SYN, self.profile.window, &opts)?;
                self.phase = Phase::SynAck;
                return Ok(false);
            }
            Phase::SynAck => {
                let mss: u16 = if self.c.ip.is_ipv6() { 1440 } else { 1460 };
                let [m0, m1] = mss.to_be_bytes();
                let opts: Vec<u8> = if self.uses_ts() {
                    self.s.ts_sent = self.s.ts_base.wrapping_add(w.ts_ms());
                    let mut o = vec![2, 4, m0, m1, 4, 2, 8, 10];
                    o.extend_from_slice(&self.s.ts_sent.to_be_bytes());
                    o.extend_from_slice(&self.c.ts_sent.to_be_bytes());
                    o.extend_from_slice(&[1, 3, 3, 7]);
                    o
                } else {
                    vec![2, 4, m0, m1, 1, 1, 4, 2, 1, 3, 3, 7]
                };
                w.payload.clear();
                w.segment(&mut self.s, &self.c, SYN | ACK, 65_160, &opts)?;
                self.phase = Phase::Ack;
                return Ok(false);
            }
            Phase::Ack => {
                w.payload.clear();
                self.send(w, true, ACK)?;
                self.phase = Phase::Steps;
                // The client speaks right away: fall through to its first data.
            }
            Phase::Steps => {}
            Phase::Done => return Ok(true),
        }
        let mut sent = 0u32;
        let room = self.payload_room();
        while sent < budget {
            let Some(step) = self.steps.front_mut() else {
                self.phase = Phase::Done;
                return Ok(true);
            };
            match step {
                Step::Data { from_client, bytes } => {
                    let from_client = *from_client;
                    let end = (self.off + room).min(bytes.len());
                    w.payload.clear();
                    w.payload.extend_from_slice(&bytes[self.off..end]);
                    let last = end == bytes.len();
                    self.off = end;
                    let flags = if last { ACK | PSH } else { ACK };
                    self.send(w, from_client, flags)?;
                    sent += 1;
                    self.bump_unacked(w, from_client)?;
                    if last {
                        self.steps.pop_front();
                        self.off = 0;
                        // The peer acknowledges now unless it answers with data.
                        let peer_answers = matches!(
                            self.steps.front(),
                            Some(Step::Data { from_client: f, .. } | Step::Bulk { from_client: f, .. })
                                if *f != from_client
                        );
                        if !peer_answers && self.receiver_unacked(from_client) > 0 {
                            self.ack_from_peer(w, from_client)?;
                        }
                        // A round trip passes before the next step.
                        return Ok(false);
                    }
                }
                Step::Bulk {
                    from_client,
                    left,
                    framing,
                } => {
                    let (from_client, framing) = (*from_client, *framing);
                    let l = *left;
                    let n = self.fill_bulk(w, room, l, framing) as u64;
                    let last = n == l;
                    if let Some(Step::Bulk { left, .. }) = self.steps.front_mut() {
                        *left -= n;
                    }
                    w.stats.bulk_bytes += n;
                    let flags = if last { ACK | PSH } else { ACK };
                    self.send(w, from_client, flags)?;
                    sent += 1;
                    self.bump_unacked(w, from_client)?;
                    if last {
                        self.steps.pop_front();
                        self.rec_left = 0;
                        self.hdr_len = 0;
                        self.hdr_at = 0;
                        let peer_answers = matches!(
                            self.steps.front(),
                            Some(Step::Data { from_client: f, .. } | Step::Bulk { from_client: f, .. })
                                if *f != from_client
                        );
                        if !peer_answers && self.receiver_unacked(from_client) > 0 {
                            self.ack_from_peer(w, from_client)?;
                        }
                        return Ok(false);
                    }
                }
                Step::Close => {
                    w.payload.clear();
                    self.send(w, true, FIN | ACK)?;
                    self.send(w, false, FIN | ACK)?;
                    self.send(w, true, ACK)?;
                    self.steps.pop_front();
                    self.phase = Phase::Done;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn receiver_unacked(&self, from_client: bool) -> u32 {
        if from_client {
            self.s.unacked
        } else {
            self.c.unacked
        }
    }

    /// Counts a full segment at the receiver; every second one is acknowledged.
    fn bump_unacked(&mut self, w: &mut Wire, from_client: bool) -> io::Result<()> {
        let r = if from_client {
            &mut self.s
        } else {
            &mut self.c
        };
        r.unacked += 1;
        if r.unacked >= 2 {
            self.ack_from_peer(w, from_client)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tls,
    Http,
    Ssh,
}

/// Bulk bytes for one connection: a quarter are short, the rest exponential, so that the
/// mean is `mean`.
fn bulk_size(rng: &mut Rng, mean: u64) -> u64 {
    if mean == 0 {
        return 0;
    }
    let short = 8 * 1024;
    if rng.chance(0.25) {
        return rng.range(256, 2 * short);
    }
    let m = (mean as f64 - 0.25 * short as f64).max(1024.0) / 0.75;
    (rng.exp(m) as u64).clamp(512, mean.saturating_mul(64))
}

fn tls_app_record(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut r = vec![0x17, 3, 3];
    r.extend_from_slice(&(len as u16).to_be_bytes());
    let at = r.len();
    r.resize(at + len, 0);
    rng.fill(&mut r[at..]);
    r
}

fn ssh_packet(rng: &mut Rng, blocks: u32) -> Vec<u8> {
    let pl = blocks * 16 + 4;
    let mut p = pl.to_be_bytes().to_vec();
    let at = p.len();
    p.resize(at + pl as usize + 16, 0);
    rng.fill(&mut p[at..]);
    p
}

struct Planner<'t> {
    t: &'t Templates,
    mean_bulk: u64,
    ipv6_share: f64,
    servers_v4: Vec<Ipv4Addr>,
    servers_v6: Vec<Ipv6Addr>,
}

impl Planner<'_> {
    /// A new connection and an estimate of the bytes it will put in the file.
    fn open(&self, rng: &mut Rng, stats: &mut SynthStats) -> (Conn, u64) {
        let kinds = [
            (Kind::Tls, 0.78, !self.t.tls.is_empty()),
            (Kind::Http, 0.14, !self.t.http.is_empty()),
            (Kind::Ssh, 0.08, !self.t.ssh.is_empty()),
        ];
        let total: f64 = kinds.iter().filter(|k| k.2).map(|k| k.1).sum();
        let mut x = rng.unit() * total;
        let mut kind = Kind::Tls;
        for (k, p, ok) in kinds {
            if ok {
                kind = k;
                if x < p {
                    break;
                }
                x -= p;
            }
        }
        let v6 = rng.chance(self.ipv6_share);
        let (cip, sip) = if v6 {
            let mut c = [0u8; 16];
            c[0] = 0xfd;
            rng.fill(&mut c[1..]);
            let s = self.servers_v6[rng.below(self.servers_v6.len() as u64) as usize];
            (IpAddr::V6(Ipv6Addr::from(c)), IpAddr::V6(s))
        } else {
            let r = rng.next_u32().to_be_bytes();
            let c = Ipv4Addr::new(10, r[0], r[1], r[2].max(1));
            let s = self.servers_v4[rng.below(self.servers_v4.len() as u64) as usize];
            (IpAddr::V4(c), IpAddr::V4(s))
        };
        let profile = &PROFILES[rng.below(PROFILES.len() as u64) as usize];
        let sport = match kind {
            Kind::Tls if rng.chance(0.9) => 443,
            Kind::Tls => 8443,
            Kind::Http if rng.chance(0.8) => 80,
            Kind::Http => 8080,
            Kind::Ssh if rng.chance(0.8) => 22,
            Kind::Ssh => 2222,
        };
        let hops = rng.range(4, 20) as u8;
        let c = Side {
            ip: cip,
            port: rng.range(32_768, 60_999) as u16,
            seq: rng.next_u32(),
            ip_id: rng.next_u32() as u16,
            ttl: profile.ttl,
            ts_base: rng.next_u32(),
            ts_sent: 0,
            unacked: 0,
        };
        let s = Side {
            ip: sip,
            port: sport,
            seq: rng.next_u32(),
            ip_id: rng.next_u32() as u16,
            ttl: 64 - hops,
            ts_base: rng.next_u32(),
            ts_sent: 0,
            unacked: 0,
        };
        let mss = if v6 { 1440 } else { 1460 };
        let mut steps = VecDeque::new();
        let bulk = bulk_size(rng, self.mean_bulk);
        let upload = rng.chance(0.15);
        stats.connections += 1;
        if v6 {
            stats.ipv6_connections += 1;
        }
        match kind {
            Kind::Tls => {
                stats.tls_connections += 1;
                stats.client_hellos += 1;
                let t = &self.t.tls[rng.below(self.t.tls.len() as u64) as usize];
                steps.push_back(Step::Data {
                    from_client: true,
                    bytes: t.client_hello.clone(),
                });
                steps.push_back(Step::Data {
                    from_client: false,
                    bytes: t.server_flight.clone(),
                });
                if !t.client_finish.is_empty() {
                    steps.push_back(Step::Data {
                        from_client: true,
                        bytes: t.client_finish.clone(),
                    });
                }
                let req = rng.range(80, 700) as usize;
                steps.push_back(Step::Data {
                    from_client: true,
                    bytes: tls_app_record(rng, req),
                });
                if bulk > 0 {
                    steps.push_back(Step::Bulk {
                        from_client: upload,
                        left: bulk,
                        framing: Framing::Tls,
                    });
                    if upload {
                        let n = rng.range(40, 300) as usize;
                        steps.push_back(Step::Data {
                            from_client: false,
                            bytes: tls_app_record(rng, n),
                        });
                    }
                } else {
                    let n = rng.range(40, 300) as usize;
                    steps.push_back(Step::Data {
                        from_client: false,
                        bytes: tls_app_record(rng, n),
                    });
                }
            }
            Kind::Http => {
                stats.http_connections += 1;
                let t = &self.t.http[rng.below(self.t.http.len() as u64) as usize];
                let n = t.requests.len() as u64;
                for req in &t.requests {
                    stats.http_requests += 1;
                    steps.push_back(Step::Data {
                        from_client: true,
                        bytes: req.clone(),
                    });
                    let body = bulk / n;
                    let (status, ctype) = if body == 0 {
                        ("204 No Content", "text/plain")
                    } else {
                        ("200 OK", "application/octet-stream")
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nServer: nginx/1.24.0\r\nDate: Mon, 24 Nov 2025 16:00:00 GMT\r\nContent-Type: {ctype}\r\nContent-Length: {body}\r\nConnection: keep-alive\r\n\r\n"
                    );
                    steps.push_back(Step::Data {
                        from_client: false,
                        bytes: head.into_bytes(),
                    });
                    if body > 0 {
                        steps.push_back(Step::Bulk {
                            from_client: false,
                            left: body,
                            framing: Framing::Raw,
                        });
                    }
                }
            }
            Kind::Ssh => {
                stats.ssh_connections += 1;
                let t = &self.t.ssh[rng.below(self.t.ssh.len() as u64) as usize];
                let n = t.client.len().max(t.server.len());
                for i in 0..n {
                    if let Some(u) = t.client.get(i) {
                        steps.push_back(Step::Data {
                            from_client: true,
                            bytes: u.clone(),
                        });
                    }
                    if let Some(u) = t.server.get(i) {
                        steps.push_back(Step::Data {
                            from_client: false,
                            bytes: u.clone(),
                        });
                    }
                }
                // Authentication and a few interactive exchanges, then the transfer.
                for _ in 0..rng.range(3, 8) {
                    let b = rng.range(2, 6) as u32;
                    steps.push_back(Step::Data {
                        from_client: true,
                        bytes: ssh_packet(rng, b),
                    });
                    let b = rng.range(2, 10) as u32;
                    steps.push_back(Step::Data {
                        from_client: false,
                        bytes: ssh_packet(rng, b),
                    });
                }
                if bulk > 0 {
                    steps.push_back(Step::Bulk {
                        from_client: upload,
                        left: bulk,
                        framing: Framing::Ssh,
                    });
                }
            }
        }
        steps.push_back(Step::Close);
        let payload: u64 = steps
            .iter()
            .map(|s| match s {
                Step::Data { bytes, .. } => bytes.len() as u64,
                Step::Bulk { left, .. } => *left,
                Step::Close => 0,
            })
            .sum();
        // Per full segment: 16 pcap + 14 Ethernet + 20/40 IP + 32 TCP, plus half an ACK.
        let per_seg = if v6 { 102 + 50 } else { 82 + 40 };
        let estimate = payload + payload / 1400 * per_seg + 16 * 120;
        let conn = Conn {
            c,
            s,
            profile,
            mss,
            phase: Phase::Syn,
            steps,
            off: 0,
            rec_left: 0,
            hdr: [0; 5],
            hdr_at: 0,
            hdr_len: 0,
        };
        (conn, estimate)
    }
}

/// Generates a capture from `templates` into `sink`.
pub fn generate(
    templates: &Templates,
    cfg: &SynthConfig,
    sink: &mut dyn FrameSink,
) -> io::Result<SynthStats> {
    if templates.tls.is_empty() && templates.http.is_empty() && templates.ssh.is_empty() {
        return Err(io::Error::other(
            "no templates: is the corpus directory right?",
        ));
    }
    let mut rng = Rng::new(cfg.seed);
    let servers_v4 = (0..512)
        .map(|_| {
            let r = rng.next_u32().to_be_bytes();
            Ipv4Addr::new(198, 18 + (r[0] & 1), r[1], r[2].max(1))
        })
        .collect();
    let servers_v6 = (0..256)
        .map(|_| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            rng.fill(&mut a[4..]);
            Ipv6Addr::from(a)
        })
        .collect();
    let planner = Planner {
        t: templates,
        mean_bulk: cfg.mean_bulk,
        ipv6_share: cfg.ipv6_share,
        servers_v4,
        servers_v6,
    };
    let mut w = Wire {
        sink,
        rng: Rng::new(cfg.seed ^ 0x0005_eed0_fb0c_4000),
        buf: Vec::with_capacity(2048),
        payload: Vec::with_capacity(2048),
        now_ns: 0,
        ns_per_byte: 8e9 / cfg.link_bps.max(1) as f64,
        start_us: cfg.start_us,
        stats: SynthStats::default(),
    };
    let mut active: Vec<Conn> = Vec::with_capacity(cfg.concurrency);
    let mut planned = 24u64;
    loop {
        while active.len() < cfg.concurrency.max(1) && planned < cfg.target_bytes {
            let (conn, est) = planner.open(&mut rng, &mut w.stats);
            planned += est;
            active.push(conn);
        }
        if active.is_empty() {
            break;
        }
        let i = rng.below(active.len() as u64) as usize;
        let budget = rng.range(1, 16) as u32;
        if active[i].burst(&mut w, budget)? {
            active.swap_remove(i);
        }
    }
    Ok(w.stats)
}
