//! The agent ↔ control-plane wire protocol, version 1.
//!
//! # Transport
//! One QUIC endpoint on the ja4 service's UDP port (3001) speaks two application protocols,
//! told apart by ALPN:
//!
//! * [`ALPN_ENROLL`] — first contact. The agent has no certificate yet; it pins the control
//!   plane's CA by the hash carried in its join token, sends one [`Request`] holding an
//!   [`EnrollRequest`] (join token + CSR) and receives its X.509-SVID and the trust bundle.
//! * [`ALPN_UPLINK`] — everything else, over mutual TLS with X.509-SVIDs: event batches,
//!   heartbeats and SVID renewal.
//!
//! An agent whose SVID expired while the control plane was unreachable cannot use the uplink
//! (the TLS layer refuses an expired certificate); it sends one [`RecoverRequest`] over
//! [`ALPN_ENROLL`] instead, trusting the server by its bundle, and gets a new SVID if the
//! control plane's checks pass (see [`RecoverRequest`]).
//!
//! # Framing
//! Every exchange is one bidirectional QUIC stream: the agent writes one encoded [`Request`] and
//! finishes its side; the control plane answers with one encoded [`Response`] and finishes. The
//! stream end delimits the message, so there is no length prefix; a reader refuses messages
//! larger than [`MAX_MESSAGE_LEN`]. Streams are independent, so an agent keeps several batches in
//! flight on one connection and acknowledgements may arrive in any order.
//!
//! # Encoding and evolution
//! Messages are Protocol Buffers (proto3 rules, written as `prost` derives so no code generator
//! is needed). Every field has a stable number; new fields get new numbers and old readers skip
//! them, so an old agent keeps working against a newer control plane and the reverse. A field
//! number is never reused. [`Request::version`] carries the sender's [`PROTOCOL_VERSION`]; a
//! control plane answers a request from a *newer major* version with
//! [`ErrorCode::UnsupportedVersion`] instead of guessing. A breaking change would get a new ALPN
//! (`hais-uplink/2`) served side by side with the old one.
//!
//! # Delivery
//! A [`BatchAck`] is sent only after the control plane has committed the batch. Event ids are
//! UUIDv7 and storage is idempotent by id, so an agent that never saw an ack simply sends the
//! batch again.

mod convert;
mod messages;

pub use convert::WireError;
pub use messages::*;

/// ALPN of the mutual-TLS uplink (events, heartbeats, renewal).
pub const ALPN_UPLINK: &[u8] = b"hais-uplink/1";
/// ALPN of first-contact enrollment (server-authenticated only, pinned by the join token).
pub const ALPN_ENROLL: &[u8] = b"hais-enroll/1";
/// Application error codes the control plane closes an uplink connection with (QUIC
/// `CONNECTION_CLOSE`); part of the protocol, so both sides read them the same way.
pub mod close {
    /// The control plane is shutting down; reconnect later.
    pub const SHUTDOWN: u32 = 0;
    /// The uplink needs an agent SVID of a trust domain the control plane trusts, and (for the
    /// built-in CA) an enrollment there. Enrolling again fixes it; retrying does not.
    pub const UNAUTHORIZED: u32 = 1;
    /// The agent is revoked; it must enroll again with a new token.
    pub const REVOKED: u32 = 2;
    /// Unknown ALPN, or an enrollment connection that outlived its single exchange.
    pub const PROTOCOL: u32 = 3;
    /// The control plane could not check the agent (store down); reconnect later.
    pub const UNAVAILABLE: u32 = 4;
    /// Too many enrollment connections at once (`ja4.enroll_max_connections`); retry later.
    pub const BUSY: u32 = 5;
}

/// TLS exporter label (RFC 8446 §7.5) of the value a [`RecoverRequest`]'s signature is bound to.
pub const RECOVER_EXPORTER_LABEL: &[u8] = b"EXPORTER-hais-recover/1";
/// Length of that exporter value.
pub const RECOVER_BINDING_LEN: usize = 32;

/// The bytes an agent signs with its expired SVID's key to recover: a context string, the TLS
/// exporter value of the connection (so the signature is worthless on any other connection),
/// and the CSR (so it vouches for exactly this new key).
pub fn recover_signed_message(binding: &[u8], csr_der: &[u8]) -> Vec<u8> {
    const CONTEXT: &[u8] = b"hais-recover/1 possession of the expired SVID's key\0";
    let mut m = Vec::with_capacity(CONTEXT.len() + binding.len() + csr_der.len() + 8);
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(&(binding.len() as u32).to_be_bytes());
    m.extend_from_slice(binding);
    m.extend_from_slice(&(csr_der.len() as u32).to_be_bytes());
    m.extend_from_slice(csr_der);
    m
}

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest encoded message either side accepts (a batch of 1,000 events is about 150 KB).
pub const MAX_MESSAGE_LEN: usize = 16 * 1024 * 1024;
/// Most events one batch may carry.
pub const MAX_EVENTS_PER_BATCH: usize = 10_000;

/// Encodes a message to bytes (infallible: the buffer grows as needed).
pub fn encode<M: prost::Message>(msg: &M) -> Vec<u8> {
    msg.encode_to_vec()
}

/// Decodes a message, refusing oversized input before parsing it.
pub fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, WireError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(WireError::TooLarge(bytes.len()));
    }
    M::decode(bytes).map_err(|e| WireError::Decode(e.to_string()))
}

impl Request {
    /// A request carrying `body`, stamped with this build's protocol version.
    pub fn new(body: request::Body) -> Self {
        Request {
            version: PROTOCOL_VERSION,
            body: Some(body),
        }
    }
}

impl Response {
    /// A response carrying `body`, stamped with this build's protocol version.
    pub fn new(body: response::Body) -> Self {
        Response {
            version: PROTOCOL_VERSION,
            body: Some(body),
        }
    }

    /// An error response.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::new(response::Body::Error(Error {
            code: code as i32,
            message: message.into(),
        }))
    }
}

#[cfg(test)]
mod tests;
