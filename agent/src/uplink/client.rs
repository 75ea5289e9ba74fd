//! QUIC client plumbing shared by enrollment, the uplink and `doctor`: resolving the server,
//! connecting with a rustls configuration from `hais-svid`, and the protocol's one
//! request/response exchange per bidirectional stream (see `hais_shared::wire`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hais_shared::wire::{self, ErrorCode, Request, Response, close, response};
use hais_svid::SvidError;
use quinn::crypto::rustls::QuicClientConfig;
use thiserror::Error;

/// Why talking to the control plane failed.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("server address {0:?} is not HOST:PORT")]
    BadAddress(String),
    #[error("cannot resolve {server}: {why}")]
    Resolve { server: String, why: String },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("identity: {0}")]
    Svid(#[from] SvidError),
    #[error("local UDP socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("cannot connect to {server}: {why}")]
    Connect { server: String, why: String },
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream: {0}")]
    Stream(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unexpected answer: {0}")]
    Protocol(String),
    #[error("the control plane refused the request ({code:?}): {message}")]
    Refused { code: ErrorCode, message: String },
}

impl ClientError {
    /// Whether retrying later may help (as opposed to a configuration or identity problem).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Refused { code, .. } => *code == ErrorCode::Unavailable,
            // The control plane closes an uplink it will not serve with an application code;
            // not authorized and revoked are fixed by enrolling again, not by retrying.
            ClientError::Connection(quinn::ConnectionError::ApplicationClosed(c)) => {
                let code = u64::from(c.error_code);
                code != u64::from(close::UNAUTHORIZED) && code != u64::from(close::REVOKED)
            }
            ClientError::BadAddress(_) | ClientError::Tls(_) | ClientError::Svid(_) => false,
            _ => true,
        }
    }
}

/// Transport settings of every agent connection.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// Longest silence before a connection is declared dead. Keep-alives go out at a third of
    /// it, so a control plane that vanished (SIGKILL, cut path) is noticed within this time.
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            idle_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Resolves `HOST:PORT` (the first address returned).
pub async fn resolve(server: &str) -> Result<SocketAddr, ClientError> {
    if !server.contains(':') {
        return Err(ClientError::BadAddress(server.to_string()));
    }
    let mut addrs = tokio::net::lookup_host(server)
        .await
        .map_err(|e| ClientError::Resolve {
            server: server.to_string(),
            why: e.to_string(),
        })?;
    addrs.next().ok_or_else(|| ClientError::Resolve {
        server: server.to_string(),
        why: "no address".into(),
    })
}

/// One connection and the endpoint (UDP socket) it lives on. Dropping both closes the socket.
#[derive(Debug)]
pub struct Conn {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub addr: SocketAddr,
}

impl Conn {
    /// Closes the connection politely and waits (briefly) for the close to be sent.
    pub async fn close(self, reason: &str) {
        self.conn.close(0u32.into(), reason.as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Connects to `server` with `tls` (one of `hais_svid`'s client configurations).
pub async fn connect(
    server: &str,
    tls: Arc<rustls::ClientConfig>,
    t: &Transport,
) -> Result<Conn, ClientError> {
    let addr = resolve(server).await?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| ClientError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(t.idle_timeout)
        .map_err(|e| ClientError::Tls(format!("idle timeout: {e}")))?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(t.idle_timeout / 3));
    cfg.transport_config(Arc::new(transport));
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(ClientError::Socket)?;
    let connect_err = |why: String| ClientError::Connect {
        server: server.to_string(),
        why,
    };
    let connecting = endpoint
        .connect_with(cfg, addr, hais_svid::SERVER_NAME)
        .map_err(|e| connect_err(e.to_string()))?;
    let conn = match tokio::time::timeout(t.connect_timeout, connecting).await {
        Ok(Ok(c)) => c,
        // The server closed the connection during the handshake: it refused us (a TLS alert
        // about our certificate, or an application code). Kept typed, so the uplink can say so.
        Ok(Err(
            e @ (quinn::ConnectionError::ConnectionClosed(_)
            | quinn::ConnectionError::ApplicationClosed(_)),
        )) => return Err(ClientError::Connection(e)),
        Ok(Err(e)) => return Err(connect_err(e.to_string())),
        Err(_) => {
            return Err(connect_err(format!(
                "no handshake within {:?} (is UDP {addr} open and the control plane running?)",
                t.connect_timeout
            )));
        }
    };
    Ok(Conn {
        endpoint,
        conn,
        addr,
    })
}

/// Sends one request on a new bidirectional stream and returns the answer's body. An
/// [`wire::Error`] answer becomes [`ClientError::Refused`].
pub async fn exchange(
    conn: &quinn::Connection,
    body: wire::request::Body,
    timeout: Duration,
) -> Result<response::Body, ClientError> {
    exchange_encoded(conn, wire::encode(&Request::new(body)), timeout).await
}

/// The encoded [`Request`] carrying an [`wire::EventBatch`] of already encoded events (the
/// spool's records), byte for byte what `prost` would produce, without decoding and
/// re-encoding every event: a repeated message field is just its elements, each behind its
/// tag and length.
pub fn encode_batch_request<R: AsRef<[u8]>>(seq: u64, events: &[R]) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    let field_len = |n: usize| 1 + encoded_len_varint(n as u64) + n;
    let seq_len = if seq == 0 {
        0
    } else {
        1 + encoded_len_varint(seq)
    };
    let batch_len = seq_len
        + events
            .iter()
            .map(|e| field_len(e.as_ref().len()))
            .sum::<usize>();
    let mut out = Vec::with_capacity(2 + field_len(batch_len));
    encode_key(1, WireType::Varint, &mut out);
    encode_varint(u64::from(wire::PROTOCOL_VERSION), &mut out);
    encode_key(2, WireType::LengthDelimited, &mut out);
    encode_varint(batch_len as u64, &mut out);
    if seq != 0 {
        encode_key(1, WireType::Varint, &mut out);
        encode_varint(seq, &mut out);
    }
    for e in events {
        let e = e.as_ref();
        encode_key(2, WireType::LengthDelimited, &mut out);
        encode_varint(e.len() as u64, &mut out);
        out.extend_from_slice(e);
    }
    out
}

/// [`exchange`] for a request encoded by the caller.
pub async fn exchange_encoded(
    conn: &quinn::Connection,
    bytes: Vec<u8>,
    timeout: Duration,
) -> Result<response::Body, ClientError> {
    let round_trip = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&bytes)
            .await
            .map_err(|e| ClientError::Stream(e.to_string()))?;
        send.finish()
            .map_err(|e| ClientError::Stream(e.to_string()))?;
        recv.read_to_end(wire::MAX_MESSAGE_LEN)
            .await
            .map_err(|e| ClientError::Stream(e.to_string()))
    };
    let answer = tokio::time::timeout(timeout, round_trip)
        .await
        .map_err(|_| ClientError::Timeout(timeout))??;
    let resp: Response = wire::decode(&answer).map_err(|e| ClientError::Protocol(e.to_string()))?;
    match resp.body {
        Some(response::Body::Error(e)) => Err(ClientError::Refused {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            message: e.message,
        }),
        Some(b) => Ok(b),
        None => Err(ClientError::Protocol("empty response".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hais_shared::wire::{Event, EventBatch, Fingerprint, request};

    #[test]
    fn batch_requests_encode_exactly_like_prost() {
        let events: Vec<Event> = (0..3)
            .map(|i| Event {
                id: vec![i; 16],
                timestamp_ns: 1_700_000_000_000_000_000 + i64::from(i),
                agent_id: "a1".into(),
                host: "h".repeat(usize::from(i) * 100),
                fingerprints: vec![Fingerprint {
                    method: 1,
                    value: "t13d1516h2_8daaf6152771_02713d6af862".into(),
                }],
                ..Event::default()
            })
            .collect();
        let raw: Vec<Vec<u8>> = events.iter().map(wire::encode).collect();
        for seq in [0, 1, 300, u64::MAX] {
            let want = wire::encode(&Request::new(request::Body::Batch(EventBatch {
                seq,
                events: events.clone(),
            })));
            assert_eq!(encode_batch_request(seq, &raw), want, "seq {seq}");
        }
        let empty: [Vec<u8>; 0] = [];
        let want = wire::encode(&Request::new(request::Body::Batch(EventBatch {
            seq: 7,
            events: Vec::new(),
        })));
        assert_eq!(encode_batch_request(7, &empty), want);
    }
}
