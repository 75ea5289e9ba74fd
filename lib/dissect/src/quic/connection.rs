//! Per-conversation QUIC state: walks coalesced packets, keeps the Initial keys, decrypts
//! Initial packets in both directions and reassembles their CRYPTO streams until the
//! ClientHello and ServerHello are out.

use super::frames::{Frame, parse_frames};
use super::keys::{InitialKeys, MAX_CID_LEN, initial_key_pair, verify_retry_integrity};
use super::packet::{FIXED_BIT, LONG_HEADER_BIT, LongHeader, decrypt_initial, parse_long_header};
use super::reassembly::{CryptoStream, FirstMessage, Insert};
use super::{PacketKind, QuicError};

/// TLS handshake type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// TLS handshake type of a ServerHello (and of a HelloRetryRequest).
const SERVER_HELLO: u8 = 2;
/// Versions whose keys are cached at once (v1 and v2 during compatible negotiation,
/// with headroom for a draft version).
const MAX_KEY_SETS: usize = 3;

/// Something the engine may want to know about a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuicEvent {
    /// One packet of the datagram, in wire order, whether or not it could be decrypted;
    /// JA4L takes its timestamps from these.
    Packet {
        /// Sent by the side that opened the UDP conversation (normally the client).
        from_initiator: bool,
        /// The long-header version; for short-header packets, the last version seen on
        /// this connection (0 if none yet). Version Negotiation carries 0.
        version: u32,
        /// Packet type.
        kind: PacketKind,
    },
    /// The client's first handshake message (type 1): 4-byte header plus body, emitted
    /// once, as soon as it is contiguous in the Initial CRYPTO stream.
    ClientHello(Vec<u8>),
    /// The server's first handshake message (type 2, a ServerHello or a
    /// HelloRetryRequest), emitted once.
    ServerHello(Vec<u8>),
    /// A CONNECTION_CLOSE frame inside a decrypted Initial: a handshake that failed
    /// before any key exchange, which is itself a useful signal.
    ConnectionClose {
        /// Sent by the side that opened the UDP conversation.
        from_initiator: bool,
        /// QUIC transport error code (or application code for frame type 0x1d).
        error_code: u64,
        /// Offending frame type; `None` for the application variant.
        frame_type: Option<u64>,
    },
}

/// Counters for what a connection could not use; cheap health signals for the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuicStats {
    /// Datagrams fed in.
    pub datagrams: u64,
    /// Packets recognised (each has produced a [`QuicEvent::Packet`]).
    pub packets: u64,
    /// Initial packets whose protection was removed.
    pub initials_decrypted: u64,
    /// Initial packets that could not be decrypted: no keys yet (capture started late,
    /// server packet first), bad tag, or too short.
    pub initials_undecryptable: u64,
    /// Packets whose header could not be parsed (the rest of the datagram is skipped).
    pub malformed_packets: u64,
    /// Long-header packets of a version we cannot interpret.
    pub unsupported_version: u64,
    /// Decrypted Initials whose frame list ended in an unknown or malformed frame.
    pub malformed_frames: u64,
    /// CRYPTO fragments refused by the byte or fragment caps, or hellos that could
    /// never fit them.
    pub crypto_dropped: u64,
    /// Retry packets accepted (keys re-derived from their SCID).
    pub retries_accepted: u64,
    /// Retry packets ignored: failed integrity check, second Retry, or from the client.
    pub retries_rejected: u64,
    /// CRYPTO streams whose first message was not the expected hello type.
    pub unexpected_handshake: u64,
}

/// A connection ID copied out of a packet; fixed size so the state holds no heap data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnId {
    len: u8,
    bytes: [u8; MAX_CID_LEN],
}

impl ConnId {
    fn new(cid: &[u8]) -> Option<Self> {
        let mut bytes = [0u8; MAX_CID_LEN];
        bytes.get_mut(..cid.len())?.copy_from_slice(cid);
        Some(ConnId {
            len: u8::try_from(cid.len()).ok()?,
            bytes,
        })
    }

    fn as_slice(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

/// Keys of both directions for one version.
#[derive(Debug)]
struct KeySet {
    version: u32,
    client: InitialKeys,
    server: InitialKeys,
}

/// One direction's Initial-space state.
#[derive(Debug, Default)]
struct Direction {
    crypto: CryptoStream,
    largest_pn: Option<u64>,
    /// The first handshake message was emitted (or given up on); stop buffering.
    hello_done: bool,
}

impl Direction {
    /// Forgets stream data and packet numbers, e.g. when a Retry restarts the handshake.
    fn restart(&mut self) {
        self.crypto.reset();
        self.largest_pn = None;
    }
}

/// State of one UDP conversation carrying QUIC, fed datagrams in capture order.
///
/// Keys come from the DCID of the first client Initial that decrypts, are derived once
/// per version and reused; a verified Retry (or a client restarting with a fresh DCID)
/// re-keys. Only Initial packets are decrypted: Handshake, 0-RTT and 1-RTT packets are
/// reported but their keys never leave the endpoints.
#[derive(Debug, Default)]
pub struct QuicConnection {
    key_dcid: Option<ConnId>,
    keys: Vec<KeySet>,
    retry_seen: bool,
    version: Option<u32>,
    client: Direction,
    server: Direction,
    /// Plaintext buffer reused for every packet.
    scratch: Vec<u8>,
    stats: QuicStats,
}

impl QuicConnection {
    /// A connection that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Processes one UDP datagram and returns its events; see
    /// [`on_datagram_into`](Self::on_datagram_into) for the allocation-free form.
    pub fn on_datagram(&mut self, from_initiator: bool, datagram: &[u8]) -> Vec<QuicEvent> {
        let mut events = Vec::new();
        self.on_datagram_into(from_initiator, datagram, &mut events);
        events
    }

    /// Processes one UDP datagram, appending events to `events` so the caller can reuse
    /// one vector. `from_initiator` is true for datagrams sent by the side that opened
    /// the UDP conversation, which QUIC treats as the client.
    pub fn on_datagram_into(
        &mut self,
        from_initiator: bool,
        datagram: &[u8],
        events: &mut Vec<QuicEvent>,
    ) {
        self.stats.datagrams += 1;
        let mut rest = datagram;
        let mut first_packet = true;
        while let Some(&first) = rest.first() {
            if first & LONG_HEADER_BIT == 0 {
                if first & FIXED_BIT != 0 {
                    self.stats.packets += 1;
                    events.push(QuicEvent::Packet {
                        from_initiator,
                        version: self.version.unwrap_or(0),
                        kind: PacketKind::OneRtt,
                    });
                } else if first_packet {
                    self.stats.malformed_packets += 1;
                }
                // A short header runs to the end of the datagram; zero bytes after
                // coalesced long packets are padding.
                break;
            }
            let header = match parse_long_header(rest) {
                Ok(h) => h,
                Err(QuicError::UnsupportedVersion(_)) => {
                    self.stats.unsupported_version += 1;
                    break;
                }
                Err(_) => {
                    self.stats.malformed_packets += 1;
                    break;
                }
            };
            let Some((packet, tail)) = rest.split_at_checked(header.packet_len) else {
                self.stats.malformed_packets += 1;
                break;
            };
            self.stats.packets += 1;
            if header.kind != PacketKind::VersionNegotiation {
                self.version = Some(header.version);
            }
            events.push(QuicEvent::Packet {
                from_initiator,
                version: header.version,
                kind: header.kind,
            });
            match header.kind {
                PacketKind::Initial => self.on_initial(from_initiator, &header, packet, events),
                PacketKind::Retry => self.on_retry(from_initiator, &header, packet),
                _ => {}
            }
            rest = tail;
            first_packet = false;
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &QuicStats {
        &self.stats
    }

    /// The last long-header version seen (other than Version Negotiation).
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// The connection ID the Initial keys are derived from: the client's first DCID, or
    /// the SCID of an accepted Retry.
    pub fn initial_dcid(&self) -> Option<&[u8]> {
        self.key_dcid.as_ref().map(ConnId::as_slice)
    }

    /// Whether both hellos have been emitted (or given up on): later datagrams can only
    /// add packet events.
    pub fn hellos_done(&self) -> bool {
        self.client.hello_done && self.server.hello_done
    }

    fn on_initial(
        &mut self,
        from_initiator: bool,
        header: &LongHeader<'_>,
        packet: &[u8],
        events: &mut Vec<QuicEvent>,
    ) {
        let mut plaintext = std::mem::take(&mut self.scratch);
        match self.decrypt(from_initiator, header, packet, &mut plaintext) {
            Ok(pn) => {
                self.stats.initials_decrypted += 1;
                let dir = self.direction(from_initiator);
                dir.largest_pn = Some(dir.largest_pn.map_or(pn, |l| l.max(pn)));
                self.on_frames(from_initiator, &plaintext, events);
            }
            Err(_) => self.stats.initials_undecryptable += 1,
        }
        plaintext.clear();
        self.scratch = plaintext;
    }

    fn direction(&mut self, from_initiator: bool) -> &mut Direction {
        if from_initiator {
            &mut self.client
        } else {
            &mut self.server
        }
    }

    /// Index of the cached key set for `version`, deriving it from the key DCID on first
    /// use.
    fn key_set(&mut self, version: u32) -> Option<usize> {
        if let Some(i) = self.keys.iter().position(|k| k.version == version) {
            return Some(i);
        }
        let dcid = self.key_dcid?;
        let (client, server) = initial_key_pair(version, dcid.as_slice())?;
        if self.keys.len() >= MAX_KEY_SETS {
            self.keys.remove(0);
        }
        self.keys.push(KeySet {
            version,
            client,
            server,
        });
        Some(self.keys.len() - 1)
    }

    fn decrypt(
        &mut self,
        from_initiator: bool,
        header: &LongHeader<'_>,
        packet: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u64, QuicError> {
        let largest = self.direction(from_initiator).largest_pn;
        if let Some(dcid) = self.key_dcid {
            if let Some(i) = self.key_set(header.version)
                && let Some(set) = self.keys.get(i)
            {
                let keys = if from_initiator {
                    &set.client
                } else {
                    &set.server
                };
                if let Ok(pn) = decrypt_initial(keys, packet, header.pn_offset, largest, out) {
                    return Ok(pn);
                }
            }
            // Later client Initials legitimately carry the server's CID; only a DCID
            // that differs AND fails with the current keys can be a fresh connection.
            if !from_initiator || header.dcid == dcid.as_slice() {
                return Err(QuicError::DecryptFailed);
            }
        } else if !from_initiator {
            return Err(QuicError::DecryptFailed);
        }

        // Trial with the packet's own DCID: the first client Initial we see, or a client
        // that started over (new connection on the same 5-tuple, missed Retry).
        let cid = ConnId::new(header.dcid).ok_or(QuicError::DecryptFailed)?;
        let (client, server) =
            initial_key_pair(header.version, header.dcid).ok_or(QuicError::DecryptFailed)?;
        let pn = decrypt_initial(&client, packet, header.pn_offset, None, out)?;
        if self.key_dcid.is_some() {
            self.client.restart();
            self.server.restart();
            self.retry_seen = false;
        }
        self.key_dcid = Some(cid);
        self.keys.clear();
        self.keys.push(KeySet {
            version: header.version,
            client,
            server,
        });
        Ok(pn)
    }

    /// A Retry re-keys the connection on its SCID (RFC 9001 §5.2), but only the first
    /// one from the server whose integrity tag matches the DCID we derived keys from.
    fn on_retry(&mut self, from_initiator: bool, header: &LongHeader<'_>, packet: &[u8]) {
        let Some(odcid) = self.key_dcid else {
            // Without the client's first Initial the tag cannot be checked; the client's
            // next Initial (DCID = Retry SCID) will be keyed by trial instead.
            self.stats.retries_rejected += 1;
            return;
        };
        if from_initiator
            || self.retry_seen
            || !verify_retry_integrity(header.version, odcid.as_slice(), packet)
        {
            self.stats.retries_rejected += 1;
            return;
        }
        let Some(new_cid) = ConnId::new(header.scid) else {
            self.stats.retries_rejected += 1;
            return;
        };
        self.stats.retries_accepted += 1;
        self.retry_seen = true;
        self.key_dcid = Some(new_cid);
        self.keys.clear();
        self.client.restart();
        self.server.restart();
    }

    fn on_frames(&mut self, from_initiator: bool, payload: &[u8], events: &mut Vec<QuicEvent>) {
        let stats = &mut self.stats;
        let dir = if from_initiator {
            &mut self.client
        } else {
            &mut self.server
        };
        for frame in parse_frames(payload) {
            match frame {
                Ok(Frame::Crypto { offset, data }) => {
                    if !dir.hello_done && dir.crypto.insert(offset, data) == Insert::Dropped {
                        stats.crypto_dropped += 1;
                    }
                }
                Ok(Frame::ConnectionClose {
                    error_code,
                    frame_type,
                    ..
                }) => events.push(QuicEvent::ConnectionClose {
                    from_initiator,
                    error_code,
                    frame_type,
                }),
                Ok(_) => {}
                Err(_) => {
                    stats.malformed_frames += 1;
                    break;
                }
            }
        }
        if dir.hello_done {
            return;
        }
        let want = if from_initiator {
            CLIENT_HELLO
        } else {
            SERVER_HELLO
        };
        if dir.crypto.message_type().is_some_and(|t| t != want) {
            stats.unexpected_handshake += 1;
            dir.hello_done = true;
            dir.crypto.reset();
            return;
        }
        match dir.crypto.first_message() {
            FirstMessage::Pending => {}
            FirstMessage::TooLarge => {
                stats.crypto_dropped += 1;
                dir.hello_done = true;
                dir.crypto.reset();
            }
            FirstMessage::Complete(msg) => {
                dir.hello_done = true;
                dir.crypto.reset();
                events.push(if from_initiator {
                    QuicEvent::ClientHello(msg)
                } else {
                    QuicEvent::ServerHello(msg)
                });
            }
        }
    }
}
