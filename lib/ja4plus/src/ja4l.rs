//! JA4L / JA4LS ("light distance"): half round-trip times measured from handshake packet
//! timestamps, plus the initial-TTL evidence, as `<microseconds>_<ttl>`.
//!
//! `ja4l_c` is the client-side half RTT (observer to client and back) with the client's TTL;
//! `ja4l_s` the server-side one with the server's TTL. Both need every timestamp, so they
//! are produced together or not at all. Times are integer microseconds and halves are
//! truncated, like the references. TTLs must come from the innermost IP header (tunnels).
//!
//! Unlike the Rust reference, the TCP client ACK must come *from the client*: a server that
//! pushes data right after its SYN-ACK (`CVE-2018-6794.pcap`) must not shorten `ja4l_c`.

/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;

/// A complete JA4L measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ja4l {
    /// Half of the client-side round trip, microseconds.
    pub client_half_rtt_us: u64,
    /// IP TTL / hop limit of the client's first packet.
    pub client_ttl: u8,
    /// Half of the server-side round trip, microseconds.
    pub server_half_rtt_us: u64,
    /// IP TTL / hop limit of the server's first reply.
    pub server_ttl: u8,
}

impl Ja4l {
    /// `ja4l_c`, e.g. `2177_64`.
    pub fn ja4l_c(&self) -> String {
        format!("{}_{}", self.client_half_rtt_us, self.client_ttl)
    }

    /// `ja4l_s`, e.g. `781_238`.
    pub fn ja4l_s(&self) -> String {
        format!("{}_{}", self.server_half_rtt_us, self.server_ttl)
    }
}

/// Half of `later - earlier`, truncated; a capture whose clock steps back yields 0 rather
/// than a wrapped value.
fn half(later: u64, earlier: u64) -> u64 {
    later.saturating_sub(earlier) / 2
}

/// JA4L over a TCP handshake, fed every packet of one connection in capture order.
///
/// A = first client SYN (SYN set, ACK clear; ECN and other bits ignored); B = the first
/// server SYN-ACK after it; C = the first client packet after B with ACK set and SYN clear,
/// bare or carrying data. `ja4l_c = (C-B)/2_clientTTL`, `ja4l_s = (B-A)/2_serverTTL`, with
/// the TTLs of the SYN and the SYN-ACK.
#[derive(Debug, Clone, Default)]
pub struct Ja4lTcp {
    syn: Option<(u64, u8)>,
    syn_ack: Option<(u64, u8)>,
    ack: Option<u64>,
}

impl Ja4lTcp {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// One TCP packet: capture time in microseconds, direction (client = the side that sent
    /// the SYN), the TCP flags byte, and the innermost IP TTL / hop limit.
    pub fn on_packet(&mut self, ts_micros: u64, from_client: bool, flags: u8, ttl: u8) {
        let syn = flags & TCP_SYN != 0;
        let ack = flags & TCP_ACK != 0;
        match (self.syn, self.syn_ack, self.ack) {
            (None, _, _) => {
                if from_client && syn && !ack {
                    self.syn = Some((ts_micros, ttl));
                }
            }
            (Some(_), None, _) => {
                if !from_client && syn && ack {
                    self.syn_ack = Some((ts_micros, ttl));
                }
            }
            (Some(_), Some(_), None) => {
                if from_client && ack && !syn {
                    self.ack = Some(ts_micros);
                }
            }
            (Some(_), Some(_), Some(_)) => {}
        }
    }

    /// True once all three packets were seen; later packets change nothing.
    pub fn is_complete(&self) -> bool {
        self.ack.is_some()
    }

    /// The measurement, once complete.
    pub fn result(&self) -> Option<Ja4l> {
        let ((a, client_ttl), (b, server_ttl), c) = (self.syn?, self.syn_ack?, self.ack?);
        Some(Ja4l {
            client_half_rtt_us: half(c, b),
            client_ttl,
            server_half_rtt_us: half(b, a),
            server_ttl,
        })
    }
}

/// What kind of QUIC packet was seen, for [`Ja4lQuic`]. Coalesced packets in one datagram
/// are separate packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuicPacketKind {
    /// Long header, type Initial.
    Initial,
    /// Long header, type Handshake.
    Handshake,
    /// Anything else (0-RTT, Retry, short header, version negotiation).
    Other,
}

/// JA4L over a QUIC handshake, fed the packets of one connection in capture order.
///
/// A = client's first Initial, B = server's first Initial after it (TTLs from these two),
/// C = the last server Handshake packet before D, D = client's first Handshake packet.
/// `ja4l_c = (D-C)/2_clientTTL`, `ja4l_s = (B-A)/2_serverTTL`.
///
/// Feeding only the first packet of each datagram reproduces the Rust reference (which sees
/// one packet type per datagram); feeding every coalesced packet also measures connections
/// whose first client Handshake packet rides behind an Initial, as the Wireshark reference
/// does.
#[derive(Debug, Clone, Default)]
pub struct Ja4lQuic {
    client_initial: Option<(u64, u8)>,
    server_initial: Option<(u64, u8)>,
    last_server_handshake: Option<u64>,
    client_handshake: Option<u64>,
}

impl Ja4lQuic {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// One QUIC packet: capture time in microseconds, direction, kind, innermost IP TTL.
    pub fn on_packet(&mut self, ts_micros: u64, from_client: bool, kind: QuicPacketKind, ttl: u8) {
        if self.client_handshake.is_some() {
            return;
        }
        match (from_client, kind) {
            (true, QuicPacketKind::Initial) if self.client_initial.is_none() => {
                self.client_initial = Some((ts_micros, ttl));
            }
            (false, QuicPacketKind::Initial)
                if self.client_initial.is_some() && self.server_initial.is_none() =>
            {
                self.server_initial = Some((ts_micros, ttl));
            }
            (false, QuicPacketKind::Handshake) if self.server_initial.is_some() => {
                self.last_server_handshake = Some(ts_micros);
            }
            (true, QuicPacketKind::Handshake) if self.last_server_handshake.is_some() => {
                self.client_handshake = Some(ts_micros);
            }
            _ => {}
        }
    }

    /// True once the client's first Handshake packet was seen; later packets change nothing.
    pub fn is_complete(&self) -> bool {
        self.client_handshake.is_some()
    }

    /// The measurement, once complete.
    pub fn result(&self) -> Option<Ja4l> {
        let (a, client_ttl) = self.client_initial?;
        let (b, server_ttl) = self.server_initial?;
        let (c, d) = (self.last_server_handshake?, self.client_handshake?);
        Some(Ja4l {
            client_half_rtt_us: half(d, c),
            client_ttl,
            server_half_rtt_us: half(b, a),
            server_ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use QuicPacketKind::*;

    const SYN: u8 = TCP_SYN;
    const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
    const ACK: u8 = TCP_ACK;
    const PSH_ACK: u8 = 0x18;
    const FIN_PSH_ACK: u8 = 0x19;

    #[test]
    fn badcurveball_values() {
        // Timestamps chosen so that (B-A)/2 = 781 and (C-B)/2 = 2177, truncating the odd µs.
        let mut j = Ja4lTcp::new();
        j.on_packet(1_000_000, true, SYN, 64);
        assert_eq!(j.result(), None);
        j.on_packet(1_001_563, false, SYN_ACK, 238);
        assert_eq!(j.result(), None, "both or neither");
        j.on_packet(1_005_918, true, ACK, 64);
        let r = j.result().expect("complete");
        assert_eq!(
            (r.ja4l_c(), r.ja4l_s()),
            ("2177_64".into(), "781_238".into())
        );
    }

    #[test]
    fn server_data_before_client_ack_is_not_c() {
        // CVE-2018-6794.pcap: the server pushes data+FIN 1 µs after its SYN-ACK.
        let mut j = Ja4lTcp::new();
        j.on_packet(0, true, SYN, 128);
        j.on_packet(4438, false, SYN_ACK, 255);
        j.on_packet(4439, false, FIN_PSH_ACK, 255);
        j.on_packet(4874, true, ACK, 128);
        let r = j.result().expect("complete");
        assert_eq!(
            (r.ja4l_c(), r.ja4l_s()),
            ("218_128".into(), "2219_255".into())
        );
    }

    #[test]
    fn ecn_bits_retransmissions_and_data_ack() {
        let mut j = Ja4lTcp::new();
        j.on_packet(5, false, ACK, 60); // mid-stream junk before the SYN
        j.on_packet(10, true, SYN | 0xc0, 64); // ECE+CWR SYN (macOS)
        j.on_packet(1_000_010, true, SYN, 63); // retransmitted SYN: A stays the first
        j.on_packet(1_000_110, true, ACK, 64); // client ACK before any SYN-ACK: ignored
        j.on_packet(1_000_210, false, SYN_ACK | 0x40, 50); // ECE SYN-ACK
        j.on_packet(1_000_300, false, SYN_ACK, 51); // retransmitted SYN-ACK: ignored
        j.on_packet(1_000_411, true, PSH_ACK, 64); // data-bearing ACK counts as C
        j.on_packet(1_000_500, true, ACK, 64);
        assert!(j.is_complete());
        let r = j.result().expect("complete");
        assert_eq!(r.ja4l_c(), "100_64");
        assert_eq!(r.ja4l_s(), "500100_50");
    }

    #[test]
    fn incomplete_handshakes_give_nothing() {
        let mut j = Ja4lTcp::new();
        j.on_packet(0, true, SYN, 64);
        j.on_packet(10, true, SYN_ACK, 64); // SYN-ACK from the client side: not B
        j.on_packet(20, true, ACK, 64);
        assert_eq!(j.result(), None);
        let mut j = Ja4lTcp::new();
        j.on_packet(0, false, SYN, 64); // the "client" flag is the caller's call; no client SYN
        j.on_packet(10, false, SYN_ACK, 64);
        assert_eq!(j.result(), None);
        // Clock stepping backwards saturates to 0.
        let mut j = Ja4lTcp::new();
        j.on_packet(100, true, SYN, 1);
        j.on_packet(50, false, SYN_ACK, 2);
        j.on_packet(40, true, ACK, 1);
        assert_eq!(j.result().map(|r| r.ja4l_s()), Some("0_2".into()));
    }

    #[test]
    fn quic_chrome_cloudflare() {
        // Shape of chrome-cloudflare-quic-with-secrets.pcapng's UDP stream: expected
        // `ja4l_c: 113_64`, `ja4l_s: 9285_56`.
        let mut q = Ja4lQuic::new();
        let t0 = 1_000_000;
        q.on_packet(t0, true, Initial, 64);
        q.on_packet(t0 + 100, true, Initial, 64); // second client Initial: A unchanged
        q.on_packet(t0 + 18_570, false, Initial, 56); // B: (18570)/2 = 9285
        q.on_packet(t0 + 18_600, false, Handshake, 56);
        q.on_packet(t0 + 19_000, false, Handshake, 56);
        q.on_packet(t0 + 19_100, false, Other, 56);
        q.on_packet(t0 + 19_500, false, Handshake, 56); // C = last server Handshake
        assert_eq!(q.result(), None);
        q.on_packet(t0 + 19_727, true, Handshake, 64); // D: 227/2 = 113
        q.on_packet(t0 + 20_000, false, Handshake, 56); // after D: ignored
        let r = q.result().expect("complete");
        assert_eq!(
            (r.ja4l_c(), r.ja4l_s()),
            ("113_64".into(), "9285_56".into())
        );
    }

    #[test]
    fn quic_order_requirements() {
        let mut q = Ja4lQuic::new();
        q.on_packet(0, false, Initial, 50); // server Initial before any client Initial
        q.on_packet(1, true, Handshake, 64); // client Handshake before anything
        q.on_packet(2, true, Initial, 64);
        q.on_packet(3, false, Handshake, 50); // no server Initial yet: not C
        assert!(!q.is_complete());
        q.on_packet(12, false, Initial, 50);
        q.on_packet(13, true, Handshake, 64); // no server Handshake yet: not D
        assert!(!q.is_complete());
        q.on_packet(20, false, Handshake, 50);
        q.on_packet(31, true, Handshake, 64);
        let r = q.result().expect("complete");
        assert_eq!((r.ja4l_c(), r.ja4l_s()), ("5_64".into(), "5_50".into()));
    }
}
