//! UDP conversations: QUIC (JA4/JA4S from the decrypted Initials, JA4L from packet
//! timing), DTLS (JA4/JA4S), DHCPv4/DHCPv6 (JA4D/JA4D6). Recognised by content, except
//! DHCPv6 which has no magic number and is recognised by its well-known ports.

use hais_dissect::quic::{PacketKind, QuicConnection, QuicEvent, looks_like_quic_initial};
use hais_dissect::tls::client_hello::ClientHello;
use hais_dissect::tls::dtls::{DtlsHandshakeReassembler, looks_like_dtls};
use hais_dissect::tls::handshake::{CLIENT_HELLO, SERVER_HELLO};
use hais_dissect::tls::server_hello::ServerHello;
use hais_ja4::ja4::Ja4Transport;

use super::fingerprints::Fingerprints;
#[cfg(feature = "ja4plus")]
use super::fingerprints::Print;
use super::tls::{record_client_hello, record_server_hello};
use super::{Ctx, EngineConfig};
use crate::flow::Endpoint;

#[derive(Debug)]
enum Kind {
    Unknown,
    Quic(Box<QuicState>),
    Dtls(Box<[DtlsHandshakeReassembler; 2]>),
    Dhcp,
    Dhcp6,
    Ignore,
}

#[derive(Debug)]
struct QuicState {
    conn: QuicConnection,
    events: Vec<QuicEvent>,
    #[cfg(feature = "ja4plus")]
    ja4l: hais_ja4plus::ja4l::Ja4lQuic,
}

/// State of one UDP conversation.
#[derive(Debug)]
pub(crate) struct UdpSession {
    kind: Kind,
    datagrams: u32,
}

/// Datagrams looked at before a conversation is declared uninteresting.
const DETECT_DATAGRAMS: u32 = 4;

impl UdpSession {
    pub(crate) fn new() -> Self {
        UdpSession {
            kind: Kind::Unknown,
            datagrams: 0,
        }
    }

    pub(crate) fn on_datagram(
        &mut self,
        ctx: &mut Ctx<'_>,
        from_client: bool,
        src: Endpoint,
        dst: Endpoint,
        payload: &[u8],
        ttl: u8,
    ) {
        self.datagrams = self.datagrams.saturating_add(1);
        if let Kind::Unknown = self.kind {
            self.kind = if looks_like_quic_initial(payload) {
                Kind::Quic(Box::new(QuicState {
                    conn: QuicConnection::new(),
                    events: Vec::new(),
                    #[cfg(feature = "ja4plus")]
                    ja4l: Default::default(),
                }))
            } else if looks_like_dtls(payload) {
                Kind::Dtls(Box::new([
                    DtlsHandshakeReassembler::new(),
                    DtlsHandshakeReassembler::new(),
                ]))
            } else if looks_like_dhcpv4(payload) {
                Kind::Dhcp
            } else if is_dhcpv6_port(src.port, dst.port) {
                Kind::Dhcp6
            } else if self.datagrams >= DETECT_DATAGRAMS {
                Kind::Ignore
            } else {
                return;
            };
        }
        match &mut self.kind {
            Kind::Quic(q) => {
                q.events.clear();
                q.conn.on_datagram_into(from_client, payload, &mut q.events);
                let mut first_packet = true;
                for ev in q.events.drain(..) {
                    match ev {
                        QuicEvent::Packet {
                            from_initiator,
                            kind,
                            ..
                        } => {
                            // JA4L times datagrams: only the first packet of a coalesced
                            // datagram stands for it (as the reference does).
                            let first = std::mem::replace(&mut first_packet, false);
                            #[cfg(feature = "ja4plus")]
                            if first {
                                use hais_ja4plus::ja4l::QuicPacketKind as K;
                                let k = match kind {
                                    PacketKind::Initial => K::Initial,
                                    PacketKind::Handshake => K::Handshake,
                                    _ => K::Other,
                                };
                                q.ja4l.on_packet(ctx.ts, from_initiator, k, ttl);
                            }
                            #[cfg(not(feature = "ja4plus"))]
                            let _ = (from_initiator, kind, ttl, first);
                        }
                        QuicEvent::ClientHello(msg) => {
                            match ClientHello::parse(msg.get(4..).unwrap_or(&[])) {
                                Ok(ch) => record_client_hello(ctx, &ch, Ja4Transport::Quic),
                                Err(_) => ctx.stats.error("quic.bad_client_hello"),
                            }
                        }
                        QuicEvent::ServerHello(msg) => {
                            match ServerHello::parse(msg.get(4..).unwrap_or(&[])) {
                                Ok(sh) => record_server_hello(ctx, &sh, Ja4Transport::Quic),
                                Err(_) => ctx.stats.error("quic.bad_server_hello"),
                            }
                        }
                        QuicEvent::ConnectionClose { .. } => {}
                    }
                }
            }
            Kind::Dtls(asm) => {
                let dir = usize::from(!from_client);
                if asm[dir].push_datagram(payload).is_err() {
                    ctx.stats.error("dtls.bad_record");
                    return;
                }
                while let Some(msg) = asm[dir].pop() {
                    match msg.msg_type {
                        CLIENT_HELLO if from_client => match ClientHello::parse_dtls(&msg.body) {
                            Ok(ch) => record_client_hello(ctx, &ch, Ja4Transport::Dtls),
                            Err(_) => ctx.stats.error("dtls.bad_client_hello"),
                        },
                        SERVER_HELLO if !from_client => match ServerHello::parse_dtls(&msg.body) {
                            Ok(sh) => record_server_hello(ctx, &sh, Ja4Transport::Dtls),
                            Err(_) => ctx.stats.error("dtls.bad_server_hello"),
                        },
                        _ => {}
                    }
                }
            }
            Kind::Dhcp =>
            {
                #[cfg(feature = "ja4plus")]
                match hais_dissect::dhcp::parse_dhcpv4(payload) {
                    Ok(m) => ctx.fp.ja4d.push(Print {
                        hashed: hais_ja4plus::ja4d::ja4d(&m),
                        raw: String::new(),
                        pkt: ctx.pkt,
                    }),
                    Err(_) => ctx.stats.error("dhcp.bad_message"),
                }
            }
            Kind::Dhcp6 =>
            {
                #[cfg(feature = "ja4plus")]
                match hais_dissect::dhcp::parse_dhcpv6(payload) {
                    Ok(m) => ctx.fp.ja4d.push(Print {
                        hashed: hais_ja4plus::ja4d::ja4d6(&m),
                        raw: String::new(),
                        pkt: ctx.pkt,
                    }),
                    Err(_) => ctx.stats.error("dhcp6.bad_message"),
                }
            }
            Kind::Unknown | Kind::Ignore => {}
        }
    }

    pub(crate) fn finish(&mut self, cfg: &EngineConfig, fp: &mut Fingerprints) {
        let _ = cfg;
        #[cfg(feature = "ja4plus")]
        if let Kind::Quic(q) = &self.kind
            && let Some(l) = q.ja4l.result()
        {
            fp.ja4l_c = Some(l.ja4l_c());
            fp.ja4l_s = Some(l.ja4l_s());
        }
        #[cfg(not(feature = "ja4plus"))]
        let _ = fp;
    }
}

fn is_dhcpv6_port(a: u16, b: u16) -> bool {
    matches!((a, b), (546, 547) | (547, 546) | (547, 547))
}

/// DHCPv4 (BOOTP) by content: op 1/2, hardware address length ≤ 16, and the magic cookie.
fn looks_like_dhcpv4(p: &[u8]) -> bool {
    p.len() >= 240 && matches!(p[0], 1 | 2) && p[2] <= 16 && p[236..240] == [0x63, 0x82, 0x53, 0x63]
}
