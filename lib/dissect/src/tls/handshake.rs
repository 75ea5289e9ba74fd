//! TLS handshake-message reassembly (RFC 8446 §4, RFC 5246 §7.4) on top of record framing.
//!
//! Handshake messages are independent of record boundaries: one record may carry several
//! messages (ServerHello + Certificate + ServerHelloDone) and one message may span many
//! records (a certificate chain of 7 KiB). The assembler turns the concatenated payloads of
//! plaintext handshake records back into whole messages.

use super::record::TlsError;
use crate::bytes::Reader;

/// Handshake header: type (1) and 24-bit length (3).
pub const HANDSHAKE_HEADER_LEN: usize = 4;

/// Largest handshake message reassembled. Real ClientHellos with post-quantum key shares
/// are a few KiB and certificate chains rarely exceed 32 KiB; the cap keeps a hostile 16 MiB
/// length from being buffered.
pub const MAX_HANDSHAKE_MESSAGE_LEN: usize = 256 * 1024;

/// `hello_request` (TLS 1.2 and earlier).
pub const HELLO_REQUEST: u8 = 0;
/// `client_hello`.
pub const CLIENT_HELLO: u8 = 1;
/// `server_hello` (also carries a TLS 1.3 HelloRetryRequest).
pub const SERVER_HELLO: u8 = 2;
/// `hello_verify_request` (DTLS 1.0/1.2 cookie exchange).
pub const HELLO_VERIFY_REQUEST: u8 = 3;
/// `new_session_ticket`.
pub const NEW_SESSION_TICKET: u8 = 4;
/// `end_of_early_data` (TLS 1.3).
pub const END_OF_EARLY_DATA: u8 = 5;
/// `encrypted_extensions` (TLS 1.3).
pub const ENCRYPTED_EXTENSIONS: u8 = 8;
/// `certificate`.
pub const CERTIFICATE: u8 = 11;
/// `server_key_exchange` (TLS 1.2 and earlier).
pub const SERVER_KEY_EXCHANGE: u8 = 12;
/// `certificate_request`.
pub const CERTIFICATE_REQUEST: u8 = 13;
/// `server_hello_done` (TLS 1.2 and earlier).
pub const SERVER_HELLO_DONE: u8 = 14;
/// `certificate_verify`.
pub const CERTIFICATE_VERIFY: u8 = 15;
/// `client_key_exchange` (TLS 1.2 and earlier).
pub const CLIENT_KEY_EXCHANGE: u8 = 16;
/// `finished`.
pub const FINISHED: u8 = 20;
/// `certificate_status` (OCSP stapling, RFC 6066).
pub const CERTIFICATE_STATUS: u8 = 22;
/// `key_update` (TLS 1.3).
pub const KEY_UPDATE: u8 = 24;
/// `compressed_certificate` (RFC 8879).
pub const COMPRESSED_CERTIFICATE: u8 = 25;
/// `message_hash` (TLS 1.3 transcript placeholder; never on the wire).
pub const MESSAGE_HASH: u8 = 254;

/// Reads a handshake header: message type and announced body length.
pub fn parse_handshake_header(buf: &[u8]) -> Option<(u8, u32)> {
    let mut r = Reader::new(buf);
    Some((r.u8()?, r.u24()?))
}

/// A complete handshake message with an owned body (the bytes after the 4-byte header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeMessage {
    /// Handshake type (see the constants in this module).
    pub msg_type: u8,
    /// Message body, without the handshake header.
    pub body: Vec<u8>,
}

/// A complete handshake message borrowed from the assembler; valid until the next call on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeMessageRef<'a> {
    /// Handshake type.
    pub msg_type: u8,
    /// Message body, without the handshake header.
    pub body: &'a [u8],
}

/// Reassembles handshake messages from the payloads of consecutive plaintext handshake
/// records of one direction.
///
/// Only plaintext may be fed: stop at the direction's ChangeCipherSpec (TLS 1.2 and earlier
/// encrypt the Finished that follows it, still as content type 22), and in TLS 1.3 everything
/// after the ServerHello arrives as application_data anyway.
///
/// A message announcing more than [`MAX_HANDSHAKE_MESSAGE_LEN`] bytes puts the assembler in
/// a permanent error state: after that the message boundaries are unknown.
#[derive(Debug, Default)]
pub struct HandshakeAssembler {
    buf: Vec<u8>,
    start: usize,
    error: Option<TlsError>,
}

/// Most bytes held: one maximal message plus one maximal record's worth of the next.
const MAX_BUFFER: usize =
    HANDSHAKE_HEADER_LEN + MAX_HANDSHAKE_MESSAGE_LEN + super::record::MAX_RECORD_FRAGMENT_LEN;

impl HandshakeAssembler {
    /// An empty assembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the payload of one plaintext handshake record. Pop every complete message
    /// after each push; a caller that does not is stopped with [`TlsError::BufferFull`].
    pub fn push(&mut self, fragment: &[u8]) -> Result<(), TlsError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let total = self.buf.len().saturating_add(fragment.len());
        if total > MAX_BUFFER {
            return Err(self.fail(TlsError::BufferFull {
                buffered: total,
                max: MAX_BUFFER,
            }));
        }
        self.buf.extend_from_slice(fragment);
        Ok(())
    }

    /// The next complete message, borrowed; `Ok(None)` when more record data is needed.
    pub fn next_message(&mut self) -> Result<Option<HandshakeMessageRef<'_>>, TlsError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        let pending = self.buf.get(self.start..).unwrap_or_default();
        let Some((msg_type, len)) = parse_handshake_header(pending) else {
            return Ok(None);
        };
        let len = len as usize;
        if len > MAX_HANDSHAKE_MESSAGE_LEN {
            return Err(self.fail(TlsError::MessageTooLong {
                len,
                max: MAX_HANDSHAKE_MESSAGE_LEN,
            }));
        }
        if pending.len() < HANDSHAKE_HEADER_LEN + len {
            return Ok(None);
        }
        let begin = self.start + HANDSHAKE_HEADER_LEN;
        self.start = begin + len;
        let body = self.buf.get(begin..self.start).ok_or(TlsError::Truncated {
            what: "handshake message",
        })?;
        Ok(Some(HandshakeMessageRef { msg_type, body }))
    }

    /// The next complete message, copied out; `Ok(None)` when more record data is needed.
    pub fn pop(&mut self) -> Result<Option<HandshakeMessage>, TlsError> {
        Ok(self.next_message()?.map(|m| HandshakeMessage {
            msg_type: m.msg_type,
            body: m.body.to_vec(),
        }))
    }

    /// Bytes of an incomplete message held back. Non-zero at a point where the peer should
    /// have finished a flight suggests the rest of the handshake went encrypted.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// The error that stopped the assembler, if any.
    pub fn error(&self) -> Option<&TlsError> {
        self.error.as_ref()
    }

    fn fail(&mut self, e: TlsError) -> TlsError {
        self.error = Some(e.clone());
        self.buf = Vec::new();
        self.start = 0;
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn several_messages_in_one_record() {
        let mut rec = msg(SERVER_HELLO, &[1, 2, 3]);
        rec.extend(msg(CERTIFICATE, &[4; 10]));
        rec.extend(msg(SERVER_HELLO_DONE, &[]));
        let mut a = HandshakeAssembler::new();
        a.push(&rec).unwrap();
        let m1 = a.pop().unwrap().unwrap();
        assert_eq!((m1.msg_type, m1.body), (SERVER_HELLO, vec![1, 2, 3]));
        let m2 = a.pop().unwrap().unwrap();
        assert_eq!((m2.msg_type, m2.body.len()), (CERTIFICATE, 10));
        let m3 = a.next_message().unwrap().unwrap();
        assert_eq!((m3.msg_type, m3.body.len()), (SERVER_HELLO_DONE, 0));
        assert_eq!(a.pop().unwrap(), None);
        assert_eq!(a.buffered(), 0);
    }

    #[test]
    fn message_spanning_records() {
        let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let m = msg(CERTIFICATE, &body);
        let mut a = HandshakeAssembler::new();
        // Split inside the header too.
        for chunk in [&m[..2], &m[2..1000], &m[1000..]] {
            assert_eq!(a.pop().unwrap(), None);
            a.push(chunk).unwrap();
        }
        let got = a.pop().unwrap().unwrap();
        assert_eq!(got.body, body);
    }

    #[test]
    fn oversized_message_is_refused_permanently() {
        let mut a = HandshakeAssembler::new();
        a.push(&[CERTIFICATE, 0x04, 0x00, 0x01]).unwrap(); // 256 KiB + 1
        assert!(matches!(
            a.pop(),
            Err(TlsError::MessageTooLong { len: 262_145, .. })
        ));
        assert!(a.push(&[1]).is_err());
        assert!(a.pop().is_err());
        // Exactly the limit is fine.
        let mut a = HandshakeAssembler::new();
        a.push(&msg(CERTIFICATE, &vec![0; MAX_HANDSHAKE_MESSAGE_LEN]))
            .unwrap();
        assert_eq!(
            a.pop().unwrap().unwrap().body.len(),
            MAX_HANDSHAKE_MESSAGE_LEN
        );
    }

    #[test]
    fn truncation_and_garbage_never_panic() {
        let mut stream = msg(CLIENT_HELLO, &[3, 3, 0, 0]);
        stream.extend(msg(FINISHED, &[9; 12]));
        for end in 0..=stream.len() {
            let mut a = HandshakeAssembler::new();
            let _ = a.push(&stream[..end]);
            while let Ok(Some(_)) = a.pop() {}
        }
        let mut seed = 99u32;
        for _ in 0..2000 {
            let mut a = HandshakeAssembler::new();
            for _ in 0..4 {
                let mut buf = vec![0u8; (seed % 40) as usize];
                for b in &mut buf {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    *b = (seed >> 16) as u8;
                }
                let _ = a.push(&buf);
                while let Ok(Some(_)) = a.pop() {}
            }
        }
    }
}
