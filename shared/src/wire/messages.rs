//! The protocol's messages. Field numbers are part of the protocol: never renumber or reuse one.

use prost::{Enumeration, Message, Oneof};

/// Everything an agent sends opens with this envelope.
#[derive(Clone, PartialEq, Message)]
pub struct Request {
    /// The sender's [`crate::wire::PROTOCOL_VERSION`].
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(oneof = "request::Body", tags = "2, 3, 4, 5, 6")]
    pub body: Option<request::Body>,
}

/// The bodies a [`Request`] can carry.
pub mod request {
    use super::*;

    #[derive(Clone, PartialEq, Oneof)]
    pub enum Body {
        /// Events to store (uplink).
        #[prost(message, tag = "2")]
        Batch(EventBatch),
        /// Agent health (uplink).
        #[prost(message, tag = "3")]
        Heartbeat(Heartbeat),
        /// First contact with a join token (enroll ALPN only).
        #[prost(message, tag = "4")]
        Enroll(EnrollRequest),
        /// A fresh SVID before the current one expires (uplink).
        #[prost(message, tag = "5")]
        Renew(RenewRequest),
        /// Renewal of an SVID that expired while the control plane was unreachable (enroll
        /// ALPN only: the TLS layer refuses an expired client certificate).
        #[prost(message, tag = "6")]
        Recover(RecoverRequest),
    }
}

/// Everything the control plane answers opens with this envelope.
#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(oneof = "response::Body", tags = "2, 3, 4, 15")]
    pub body: Option<response::Body>,
}

/// The bodies a [`Response`] can carry.
pub mod response {
    use super::*;

    #[derive(Clone, PartialEq, Oneof)]
    pub enum Body {
        #[prost(message, tag = "2")]
        Ack(BatchAck),
        #[prost(message, tag = "3")]
        HeartbeatAck(HeartbeatAck),
        /// Answer to both enrollment and renewal.
        #[prost(message, tag = "4")]
        Svid(SvidResponse),
        #[prost(message, tag = "15")]
        Error(Error),
    }
}

/// A batch of events. `seq` is the agent's own counter, echoed in the ack so the agent can match
/// acks that arrive out of order.
#[derive(Clone, PartialEq, Message)]
pub struct EventBatch {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(message, repeated, tag = "2")]
    pub events: Vec<Event>,
}

/// One flow's fingerprints ([`crate::event::FingerprintEvent`] on the wire).
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    /// UUIDv7, 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub id: Vec<u8>,
    /// Observation time, nanoseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp_ns: i64,
    #[prost(string, tag = "3")]
    pub agent_id: String,
    #[prost(string, tag = "4")]
    pub host: String,
    #[prost(message, optional, tag = "5")]
    pub flow: Option<Flow>,
    #[prost(string, optional, tag = "6")]
    pub server_name: Option<String>,
    #[prost(message, repeated, tag = "7")]
    pub fingerprints: Vec<Fingerprint>,
    #[prost(message, optional, tag = "8")]
    pub workload: Option<Workload>,
    /// The resumption-stable JA4 ([`crate::event::FingerprintEvent::ja4_stable`]). Optional and
    /// new in tag 9: older receivers skip it, older senders leave it out.
    #[prost(string, optional, tag = "9")]
    pub ja4_stable: Option<String>,
}

/// A flow's endpoints. Addresses are 4 or 16 bytes.
#[derive(Clone, PartialEq, Message)]
pub struct Flow {
    #[prost(bytes = "vec", tag = "1")]
    pub src_ip: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub src_port: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub dst_ip: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub dst_port: u32,
    #[prost(enumeration = "Transport", tag = "5")]
    pub transport: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Enumeration)]
#[repr(i32)]
pub enum Transport {
    Unspecified = 0,
    Tcp = 1,
    Udp = 2,
}

/// One fingerprint.
#[derive(Clone, PartialEq, Message)]
pub struct Fingerprint {
    #[prost(enumeration = "Method", tag = "1")]
    pub method: i32,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// The JA4+ methods. A method unknown to the receiver is refused per event, not per batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Enumeration)]
#[repr(i32)]
pub enum Method {
    Unspecified = 0,
    Ja4 = 1,
    Ja4s = 2,
    Ja4h = 3,
    Ja4l = 4,
    Ja4ls = 5,
    Ja4x = 6,
    Ja4ssh = 7,
    Ja4t = 8,
    Ja4ts = 9,
    Ja4d = 10,
    Ja4d6 = 11,
}

/// What attribution found about the local workload behind a flow.
#[derive(Clone, PartialEq, Message)]
pub struct Workload {
    #[prost(uint32, optional, tag = "1")]
    pub pid: Option<u32>,
    #[prost(string, optional, tag = "2")]
    pub process: Option<String>,
    #[prost(uint32, optional, tag = "3")]
    pub uid: Option<u32>,
    #[prost(string, optional, tag = "4")]
    pub container: Option<String>,
    #[prost(string, optional, tag = "5")]
    pub pod: Option<String>,
    #[prost(string, optional, tag = "6")]
    pub spiffe_id: Option<String>,
    #[prost(string, optional, tag = "7")]
    pub exe: Option<String>,
    #[prost(string, optional, tag = "8")]
    pub exe_sha256: Option<String>,
    #[prost(string, optional, tag = "9")]
    pub cmdline: Option<String>,
    #[prost(string, optional, tag = "10")]
    pub user: Option<String>,
    #[prost(string, optional, tag = "11")]
    pub cgroup: Option<String>,
    #[prost(string, optional, tag = "12")]
    pub container_runtime: Option<String>,
    #[prost(btree_map = "string, string", tag = "13")]
    pub container_labels: std::collections::BTreeMap<String, String>,
    #[prost(string, optional, tag = "14")]
    pub k8s_namespace: Option<String>,
    #[prost(string, optional, tag = "15")]
    pub k8s_service_account: Option<String>,
    #[prost(string, optional, tag = "16")]
    pub direction: Option<String>,
    #[prost(string, optional, tag = "17")]
    pub unattributed: Option<String>,
    #[prost(string, optional, tag = "18")]
    pub container_image: Option<String>,
    #[prost(string, optional, tag = "19")]
    pub container_name: Option<String>,
    #[prost(string, optional, tag = "20")]
    pub k8s_pod_name: Option<String>,
}

/// Sent once the batch is committed. `stored + duplicates + rejected.len()` equals the batch size.
#[derive(Clone, PartialEq, Message)]
pub struct BatchAck {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Events stored for the first time.
    #[prost(uint32, tag = "2")]
    pub stored: u32,
    /// Events already stored (a redelivery); harmless.
    #[prost(uint32, tag = "3")]
    pub duplicates: u32,
    /// Events refused as invalid; the agent must not resend them.
    #[prost(message, repeated, tag = "4")]
    pub rejected: Vec<RejectedEvent>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RejectedEvent {
    /// Position in the batch.
    #[prost(uint32, tag = "1")]
    pub index: u32,
    #[prost(string, tag = "2")]
    pub reason: String,
}

/// The agent's health, every heartbeat interval.
#[derive(Clone, PartialEq, Message)]
pub struct Heartbeat {
    /// Agent build version.
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(uint64, tag = "2")]
    pub uptime_s: u64,
    #[prost(string, repeated, tag = "3")]
    pub interfaces: Vec<String>,
    #[prost(uint64, tag = "4")]
    pub packets: u64,
    #[prost(uint64, tag = "5")]
    pub bytes: u64,
    /// Packets dropped by the kernel or the interface.
    #[prost(uint64, tag = "6")]
    pub drops: u64,
    #[prost(uint64, tag = "7")]
    pub parse_errors: u64,
    /// Events waiting in the spool.
    #[prost(uint64, tag = "8")]
    pub spool_depth: u64,
    /// Events dropped because the spool was full.
    #[prost(uint64, tag = "9")]
    pub spool_dropped: u64,
    /// When the agent's current SVID expires, seconds since the Unix epoch.
    #[prost(int64, tag = "10")]
    pub svid_expiry_unix: i64,
    /// Agent clock when sent, milliseconds since the Unix epoch (for skew detection).
    #[prost(int64, tag = "11")]
    pub sent_at_unix_ms: i64,
    #[prost(string, tag = "12")]
    pub hostname: String,
    /// Workload attribution counters since the agent started; absent when attribution is
    /// off (or from agents that predate it).
    #[prost(message, optional, tag = "13")]
    pub attribution: Option<AttributionCounters>,
}

/// How well the agent attributes flows to processes (see `hais-attribute`).
#[derive(Clone, PartialEq, Message)]
pub struct AttributionCounters {
    /// Flows the agent asked about (first packet seen).
    #[prost(uint64, tag = "1")]
    pub requests: u64,
    /// Resolved to a process.
    #[prost(uint64, tag = "2")]
    pub attributed: u64,
    /// Socket found, its process already gone.
    #[prost(uint64, tag = "3")]
    pub process_gone: u64,
    /// No local socket behind the flow.
    #[prost(uint64, tag = "4")]
    pub not_local: u64,
    /// Skipped because the agent's attribution queue was full.
    #[prost(uint64, tag = "5")]
    pub dropped: u64,
    /// Time spent resolving, microseconds (cost per flow = busy_us / requests).
    #[prost(uint64, tag = "6")]
    pub busy_us: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct HeartbeatAck {
    /// Control-plane clock, milliseconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub server_time_unix_ms: i64,
}

/// First contact: the join token and a CSR for a key the agent generated and keeps.
#[derive(Clone, PartialEq, Message)]
pub struct EnrollRequest {
    /// The token's id and secret (`<id>.<secret>`); the CA hash part stays with the agent.
    #[prost(string, tag = "1")]
    pub token: String,
    /// PKCS#10 CSR, DER.
    #[prost(bytes = "vec", tag = "2")]
    pub csr_der: Vec<u8>,
    #[prost(string, tag = "3")]
    pub hostname: String,
    #[prost(string, tag = "4")]
    pub agent_version: String,
}

/// Renewal over the mutual-TLS uplink; the agent's identity comes from its current SVID.
#[derive(Clone, PartialEq, Message)]
pub struct RenewRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub csr_der: Vec<u8>,
}

/// Renewal of a recently expired SVID, sent over `hais-enroll/1` by an agent that was cut off
/// from the control plane for longer than its SVID's lifetime. The old SVID is the credential:
/// it must chain to the CA, be the agent's current one (by serial), have expired no longer ago
/// than the control plane's grace, and the agent must prove it holds its key by signing
/// [`crate::wire::recover_signed_message`] — bound to this TLS connection (an exporter value
/// both ends derive) and to the CSR, so a captured request cannot be replayed.
#[derive(Clone, PartialEq, Message)]
pub struct RecoverRequest {
    /// The expired SVID, leaf first, DER.
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub svid_chain_der: Vec<Vec<u8>>,
    /// PKCS#10 CSR for the new key, DER.
    #[prost(bytes = "vec", tag = "2")]
    pub csr_der: Vec<u8>,
    /// Signature by the expired SVID's key over [`crate::wire::recover_signed_message`]
    /// (ECDSA P-256 with SHA-256, ASN.1 DER).
    #[prost(bytes = "vec", tag = "3")]
    pub signature: Vec<u8>,
}

/// A new X.509-SVID with the trust bundle to verify peers with.
#[derive(Clone, PartialEq, Message)]
pub struct SvidResponse {
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    /// Leaf first, then any intermediates, DER.
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub svid_chain_der: Vec<Vec<u8>>,
    /// Trusted CA certificates, DER.
    #[prost(bytes = "vec", repeated, tag = "3")]
    pub bundle_der: Vec<Vec<u8>>,
    #[prost(string, tag = "4")]
    pub agent_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Error {
    #[prost(enumeration = "ErrorCode", tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// What went wrong, so the agent knows whether to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Enumeration)]
#[repr(i32)]
pub enum ErrorCode {
    Unspecified = 0,
    /// The request's protocol version is newer than the control plane understands.
    UnsupportedVersion = 1,
    /// Malformed request; do not retry it unchanged.
    BadRequest = 2,
    /// Join token unknown, used, or expired; or the peer may not make this request.
    Unauthorized = 3,
    /// The agent was revoked.
    Revoked = 4,
    /// Temporary failure (store or bus down); retry later.
    Unavailable = 5,
}
