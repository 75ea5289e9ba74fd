//! QUIC as far as a passive fingerprinting sensor can see it: long-header parsing,
//! Initial packet decryption (v1, v2, draft-29) and CRYPTO reassembly up to the TLS
//! ClientHello and ServerHello that JA4 and JA4S are computed from.
//!
//! Initial packets are encrypted, but with keys anyone can derive from the client's
//! first Destination Connection ID (RFC 9001 §5.2), so the hellos are recoverable without
//! secrets. Everything after the Initials needs real TLS secrets and is only reported as
//! packet events (which JA4L needs for its timings).
//!
//! Entry points: [`looks_like_quic_initial`] to classify a UDP flow by content, and
//! [`QuicConnection`] fed each datagram of the conversation. The lower layers
//! ([`parse_long_header`], [`initial_keys`], [`decrypt_initial`], [`parse_frames`]) are
//! public for tests and fuzzing.

mod connection;
mod frames;
mod keys;
mod packet;
mod reassembly;

pub use connection::{QuicConnection, QuicEvent, QuicStats};
pub use frames::{Frame, Frames, parse_frames};
pub use keys::{
    InitialKeys, VERSION_1, VERSION_2, VERSION_DRAFT_29, initial_keys, is_supported_version,
    verify_retry_integrity,
};
pub use packet::{LongHeader, decrypt_initial, looks_like_quic_initial, parse_long_header};

/// Packet types as the engine cares about them, independent of how each version encodes
/// them on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// Initial: carries the ClientHello / ServerHello; decryptable by anyone.
    Initial,
    /// 0-RTT early data from the client.
    ZeroRtt,
    /// Handshake: rest of the TLS handshake, under handshake keys.
    Handshake,
    /// Retry: server's address-validation challenge.
    Retry,
    /// Short header (1-RTT application data).
    OneRtt,
    /// Version Negotiation (version field 0).
    VersionNegotiation,
}

/// Why a QUIC packet or frame could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuicError {
    /// The input ended before a field did, or a Length ran past the datagram.
    #[error("truncated QUIC packet")]
    Truncated,
    /// The first byte has no long-header bit.
    #[error("not a long-header packet")]
    NotLongHeader,
    /// A long header with a version whose layout and keys are unknown.
    #[error("unsupported QUIC version {0:#010x}")]
    UnsupportedVersion(u32),
    /// A connection ID longer than the version allows.
    #[error("connection ID of {0} bytes exceeds 20")]
    ConnectionIdTooLong(usize),
    /// AEAD authentication failed: wrong keys or a corrupted packet.
    #[error("Initial packet failed to decrypt")]
    DecryptFailed,
    /// A frame type not allowed (or not understood) in Initial packets.
    #[error("unknown frame type {0:#x} in Initial packet")]
    UnknownFrame(u64),
    /// A known frame whose fields do not fit.
    #[error("malformed {0} frame")]
    MalformedFrame(&'static str),
}

#[cfg(test)]
mod tests;
