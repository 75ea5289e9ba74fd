//! Bodies of the `cargo fuzz` targets under `fuzz/`, one function per parser.
//!
//! They live here, not in the fuzz crate, so that the replay test
//! (`agent/tests/fuzz_corpus.rs`) runs every corpus and regression input through exactly the
//! code the fuzzer ran, as part of the ordinary `cargo test`.
//!
//! Every function takes arbitrary bytes. The properties checked are: no panic, bounded memory
//! (the parsers' own limits; libFuzzer's `-rss_limit_mb` catches the rest), and a few cheap
//! invariants that must hold for any input: fingerprint string shapes, hashes matching their
//! raw forms, incremental parsing agreeing with one-shot parsing, and a correctly sealed QUIC
//! Initial always decrypting. The first input byte(s) usually select a mode, so one target
//! reaches both the framing layers and the message parsers behind them.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes128Gcm, KeyInit};
use hais_dissect::dhcp::{Dhcpv6Message, MAX_V6_NESTING, parse_dhcpv4, parse_dhcpv6};
use hais_dissect::http1::{
    BodyLength, ChunkedSkipper, HttpRequest, HttpResponse, looks_like_http_request,
    parse_request_head, parse_response_head, request_body_len,
};
use hais_dissect::http2::{CLIENT_PREFACE, Http2RequestParser, hpack};
use hais_dissect::keylog::KeyLog;
use hais_dissect::quic::{
    Frame, InitialKeys, QuicConnection, QuicEvent, VERSION_1, VERSION_2, VERSION_DRAFT_29,
    decrypt_initial, initial_keys, looks_like_quic_initial, parse_frames, parse_long_header,
    verify_retry_integrity,
};
use hais_dissect::ssh::{KexInit, SshEvent, SshStream, looks_like_ssh, names, parse_banner};
use hais_dissect::tcp_options::TcpOptions;
use hais_dissect::tls::certificate::parse_certificate_list;
use hais_dissect::tls::client_hello::ClientHello;
use hais_dissect::tls::decrypt::RecordDecrypter;
use hais_dissect::tls::dtls::{DtlsHandshakeReassembler, dtls_records, looks_like_dtls};
use hais_dissect::tls::handshake::{
    CERTIFICATE, CLIENT_HELLO, HandshakeAssembler, MAX_HANDSHAKE_MESSAGE_LEN, SERVER_HELLO,
    parse_handshake_header,
};
use hais_dissect::tls::record::{
    CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, MAX_RECORD_READER_BUFFER, RecordReader,
    looks_like_tls_record, parse_record_header,
};
use hais_dissect::tls::server_hello::ServerHello;
use hais_ja4::ja4::{AlpnRule, Ja4, Ja4Transport, ja4, ja4_string};
use hais_ja4::{hash12, ja4::client_version};

use hais_shared::event::FingerprintEvent;
use hais_shared::registration::{MAX_SELECTORS_PER_ENTRY, import_spire_json};
use hais_shared::selector::Selector;
use hais_shared::spiffe::{SpiffeId, validate_trust_domain};
use hais_shared::wire;
use hais_svid::{Bundle, JoinToken, Svid, spiffe_id_of, split_credential};

use crate::decode::{self, LinkType, Transport};
use crate::engine::{Engine, EngineConfig};
use crate::output::{Value, write_json_line, write_yaml_list_item};
use crate::uplink::spool::{Batch, MAX_RECORD_BYTES, Spool, SpoolOptions};

/// Both ALPN rules: every fingerprint is computed under each.
const ALPN_RULES: [AlpnRule; 2] = [AlpnRule::Spec, AlpnRule::Reference];

/// Most certificates of one chain handed to JA4X per message (a chain is short; a hostile
/// message could list thousands of tiny entries).
const MAX_CERTS: usize = 8;

/// Most pieces an input is split into, so the work per input stays linear.
const MAX_PIECES: usize = 4096;

// ---------------------------------------------------------------------------------------
// Input helpers.

/// Reads fuzzer input front to back; every read succeeds (short reads yield what is left,
/// or zeros), so a target never has to reject an input.
#[derive(Debug, Clone, Copy)]
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` bytes.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A 2-byte big-endian length, then that many bytes (fewer at the end of the input);
    /// `None` once the input is used up.
    fn chunk(&mut self) -> Option<&'a [u8]> {
        if self.is_empty() {
            return None;
        }
        let len = usize::from(self.u16());
        Some(self.take(len))
    }

    fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// `data` cut into pieces of `step` bytes (the whole slice when `step` is 0), to check that
/// incremental parsers do not depend on where a TCP segment or read ended.
fn pieces(data: &[u8], step: usize) -> impl Iterator<Item = &[u8]> {
    let step = if step == 0 {
        data.len().max(1)
    } else {
        step.max(data.len().div_ceil(MAX_PIECES))
    };
    data.chunks(step)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A 12-character section of a JA4+ string: lowercase hex (the all-zero empty hash is hex).
fn assert_hash12(s: &str) {
    assert_eq!(s.len(), 12, "hash section {s:?}");
    assert!(is_lower_hex(s), "hash section {s:?}");
}

// ---------------------------------------------------------------------------------------
// Fingerprint invariants shared by several targets.

/// Splits `a_hash_hash` at fixed positions: the `a` section may itself contain `_` (an
/// ALPN character under [`AlpnRule::Reference`], which copies any ASCII character as the
/// FoxIO tool does), so `split('_')` is not how a JA4+ string is read.
fn split_at_positions<'s>(s: &'s str, a_len: usize, name: &str) -> (&'s str, Vec<&'s str>) {
    assert!(s.is_ascii(), "{name} not ASCII: {s:?}");
    let (a, rest) = s.split_at(a_len.min(s.len()));
    let rest = rest
        .strip_prefix('_')
        .unwrap_or_else(|| panic!("{name} {s:?}"));
    (a, rest.split('_').collect())
}

fn check_ja4(j: &Ja4, transport: Ja4Transport, rule: AlpnRule) {
    for s in [&j.ja4, &j.ja4_o, &j.ja4_r, &j.ja4_ro] {
        assert!(s.is_ascii(), "JA4 not ASCII: {s:?}");
        assert!(s.starts_with(transport.as_char()), "{s:?}");
        assert_eq!(s.as_bytes().get(10), Some(&b'_'), "JA4 {s:?}");
    }
    for s in [&j.ja4, &j.ja4_o] {
        assert_eq!(s.len(), 36, "JA4 {s:?}");
        let (a, hashes) = split_at_positions(s, 10, "JA4");
        assert_eq!(hashes.len(), 2, "JA4 {s:?}");
        hashes.iter().for_each(|h| assert_hash12(h));
        // Everything but the two ALPN characters is alphanumeric; under the written
        // method's rule those are too.
        let alpn_free = if rule == AlpnRule::Spec { a } else { &a[..8] };
        assert!(
            alpn_free.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{s:?}"
        );
    }
    // The hashed forms are the raw forms hashed, section by section.
    for (hashed, raw) in [(&j.ja4, &j.ja4_r), (&j.ja4_o, &j.ja4_ro)] {
        let (a, rest) = raw.split_at(10);
        let rest = rest.get(1..).unwrap_or_default();
        let (ciphers, exts_sigs) = rest.split_once('_').unwrap_or((rest, ""));
        let expected = format!("{a}_{}_{}", hash12(ciphers), hash12(exts_sigs));
        assert_eq!(hashed, &expected, "raw {raw:?}");
    }
    assert_eq!(j.ja4.get(..10), j.ja4_o.get(..10));
}

fn check_client_hello(ch: &ClientHello<'_>, transport: Ja4Transport) {
    let _ = client_version(ch, transport);
    for rule in ALPN_RULES {
        let j = ja4(ch, transport, rule);
        check_ja4(&j, transport, rule);
        assert_eq!(ja4_string(ch, transport, rule), j.ja4);
    }
}

#[cfg(feature = "ja4plus")]
fn check_server_hello(sh: &ServerHello, transport: Ja4Transport) {
    use hais_ja4plus::ja4s::ja4s;
    let _ = sh.is_hello_retry_request();
    for rule in ALPN_RULES {
        let j = ja4s(sh, transport, rule);
        assert!(j.ja4s.is_ascii() && j.ja4s_r.is_ascii(), "{j:?}");
        assert_eq!(j.ja4s.len(), 25, "{j:?}");
        assert!(j.ja4s.starts_with(transport.as_char()), "{j:?}");
        let prefix = j.ja4s.get(..13).unwrap_or_default();
        assert!(j.ja4s_r.starts_with(prefix), "{j:?}");
        let exts = j.ja4s_r.get(13..).unwrap_or_default();
        assert_eq!(j.ja4s.get(13..), Some(hash12(exts).as_str()), "{j:?}");
    }
}

#[cfg(not(feature = "ja4plus"))]
fn check_server_hello(sh: &ServerHello, _transport: Ja4Transport) {
    let _ = sh.is_hello_retry_request();
}

/// JA4X of one DER certificate, with its invariants; true when it parsed.
#[cfg(feature = "ja4plus")]
fn check_certificate(der: &[u8]) -> bool {
    let Ok(x) = hais_ja4plus::ja4x::ja4x(der) else {
        return false;
    };
    assert_eq!(x.ja4x.len(), 38, "{x:?}");
    let hashed: Vec<&str> = x.ja4x.split('_').collect();
    let raw: Vec<&str> = x.ja4x_r.split('_').collect();
    assert_eq!(hashed.len(), 3, "{x:?}");
    assert_eq!(raw.len(), 3, "{x:?}");
    for (h, r) in hashed.iter().zip(&raw) {
        assert_hash12(h);
        assert!(
            r.bytes().all(|b| b == b',' || is_lower_hex_byte(b)),
            "{x:?}"
        );
        assert_eq!(*h, hash12(r), "{x:?}");
    }
    for (k, _) in &x.names {
        assert!(k.starts_with("issuer") || k.starts_with("subject"), "{k:?}");
    }
    true
}

#[cfg(not(feature = "ja4plus"))]
fn check_certificate(_der: &[u8]) -> bool {
    false
}

#[cfg(feature = "ja4plus")]
fn is_lower_hex_byte(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

#[cfg(feature = "ja4plus")]
fn check_request(req: &HttpRequest) {
    let j = hais_ja4plus::ja4h::ja4h(req);
    for s in [&j.ja4h, &j.ja4h_o] {
        // The language part of `a` copies any visible ASCII, `_` included.
        assert_eq!(s.len(), 51, "JA4H {s:?}");
        let (_, hashes) = split_at_positions(s, 12, "JA4H");
        assert_eq!(hashes.len(), 3, "JA4H {s:?}");
        hashes.iter().for_each(|h| assert_hash12(h));
    }
    for s in [&j.ja4h_r, &j.ja4h_ro] {
        assert_eq!(s.as_bytes().get(12), Some(&b'_'), "JA4H raw {s:?}");
    }
    assert_eq!(j.ja4h.get(..25), j.ja4h_o.get(..25));
    assert!(j.ja4h_r.starts_with(j.ja4h.get(..12).unwrap_or_default()));
    let _ = req.header("user-agent");
}

#[cfg(not(feature = "ja4plus"))]
fn check_request(req: &HttpRequest) {
    let _ = req.header("user-agent");
}

// ---------------------------------------------------------------------------------------
// TLS and DTLS.

/// What one direction's handshake said so far.
#[derive(Debug, Default)]
struct TlsState {
    tls13: bool,
    client_random: Option<[u8; 32]>,
    server_random: Option<[u8; 32]>,
    suite: Option<u16>,
}

fn on_handshake_message(msg_type: u8, body: &[u8], transport: Ja4Transport, st: &mut TlsState) {
    assert!(body.len() <= MAX_HANDSHAKE_MESSAGE_LEN);
    let dtls = transport == Ja4Transport::Dtls;
    match msg_type {
        CLIENT_HELLO => {
            let parsed = if dtls {
                ClientHello::parse_dtls(body)
            } else {
                ClientHello::parse(body)
            };
            if let Ok(ch) = parsed {
                st.client_random = Some(ch.random);
                check_client_hello(&ch, transport);
            }
        }
        SERVER_HELLO => {
            let parsed = if dtls {
                ServerHello::parse_dtls(body)
            } else {
                ServerHello::parse(body)
            };
            if let Ok(sh) = parsed {
                st.tls13 = sh.supported_version == Some(0x0304);
                st.server_random = Some(sh.random);
                st.suite = Some(sh.cipher_suite);
                check_server_hello(&sh, transport);
            }
        }
        CERTIFICATE => {
            // Both layouts: the version is not always known (capture started mid-way).
            for tls13 in [st.tls13, !st.tls13] {
                if let Ok(certs) = parse_certificate_list(body, tls13) {
                    for der in certs.into_iter().take(MAX_CERTS) {
                        check_certificate(der);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Pops every complete message; false once the assembler failed.
fn drain_handshake(hs: &mut HandshakeAssembler, st: &mut TlsState) -> bool {
    loop {
        match hs.next_message() {
            Ok(Some(m)) => {
                let (t, body) = (m.msg_type, m.body.to_vec());
                on_handshake_message(t, &body, Ja4Transport::Tcp, st);
            }
            Ok(None) => return true,
            Err(_) => {
                assert!(hs.error().is_some());
                return false;
            }
        }
    }
}

/// Record decryption with fixed, made-up secrets: the tag check fails for fuzzer input,
/// but every length and header check before it runs on hostile bytes.
fn try_decrypt(st: &TlsState, header: [u8; 5], body: &[u8]) {
    let suite = st.suite.unwrap_or(0x1301);
    let mut decrypters = Vec::new();
    if let Ok(d) = RecordDecrypter::tls13(suite, &[0x5a; 32]) {
        decrypters.push(d);
    }
    if let Ok(d) = RecordDecrypter::tls13(suite, &[0x5a; 48]) {
        decrypters.push(d);
    }
    let cr = st.client_random.unwrap_or([1; 32]);
    let sr = st.server_random.unwrap_or([2; 32]);
    if let Ok(d) = RecordDecrypter::tls12(suite, &[0x33; 48], &cr, &sr, true) {
        decrypters.push(d);
    }
    for mut d in decrypters {
        let before = d.sequence();
        if d.decrypt(&header, body).is_ok() {
            assert_eq!(d.sequence(), before + 1);
        }
        let _ = d.key_update();
        let _ = d.decrypt(&header, body);
    }
}

/// A TLS byte stream (one direction, or both concatenated) through the record layer.
fn tls_stream(data: &[u8], step: usize) {
    let mut rr = RecordReader::new();
    let mut hs = HandshakeAssembler::new();
    let mut st = TlsState::default();
    let mut decrypt_budget = 4;
    for piece in pieces(data, step) {
        if rr.push(piece).is_err() {
            assert!(rr.error().is_some());
            return;
        }
        assert!(rr.buffered() <= MAX_RECORD_READER_BUFFER);
        loop {
            let rec = match rr.next_record() {
                Ok(Some(rec)) => rec,
                Ok(None) => break,
                Err(_) => return,
            };
            assert_eq!(rec.fragment.len(), usize::from(rec.header.length));
            let len = rec.header.length.to_be_bytes();
            let v = rec.header.version.to_be_bytes();
            let header = [rec.header.content_type, v[0], v[1], len[0], len[1]];
            match rec.header.content_type {
                CONTENT_HANDSHAKE => {
                    let fragment = rec.fragment.to_vec();
                    if hs.push(&fragment).is_err() || !drain_handshake(&mut hs, &mut st) {
                        return;
                    }
                }
                CONTENT_APPLICATION_DATA if decrypt_budget > 0 => {
                    decrypt_budget -= 1;
                    let body = rec.fragment.to_vec();
                    try_decrypt(&st, header, &body);
                }
                _ => {}
            }
        }
    }
}

/// Handshake messages without record framing, straight into the assembler.
fn tls_messages(data: &[u8], step: usize) {
    let mut hs = HandshakeAssembler::new();
    let mut st = TlsState::default();
    for piece in pieces(data, step) {
        if hs.push(piece).is_err() || !drain_handshake(&mut hs, &mut st) {
            return;
        }
    }
}

/// DTLS datagrams (2-byte length prefixes) through the DTLS reassembler.
fn dtls_datagrams(data: &[u8]) {
    let mut input = Input::new(data);
    let mut asm = DtlsHandshakeReassembler::new();
    let mut st = TlsState::default();
    let mut n = 0;
    while let Some(datagram) = input.chunk() {
        n += 1;
        if n > 256 {
            break;
        }
        let _ = looks_like_dtls(datagram);
        for rec in dtls_records(datagram).take(64) {
            let Ok(rec) = rec else { break };
            assert_eq!(rec.fragment.len(), usize::from(rec.header.length));
        }
        // Errors leave the reassembler usable.
        let _ = asm.push_datagram(datagram);
        while let Some(msg) = asm.pop() {
            on_handshake_message(msg.msg_type, &msg.body, Ja4Transport::Dtls, &mut st);
        }
    }
}

/// The message parsers on the raw input, without any framing.
fn tls_bodies(data: &[u8]) {
    let mut st = TlsState::default();
    for t in [Ja4Transport::Tcp, Ja4Transport::Quic, Ja4Transport::Dtls] {
        on_handshake_message(CLIENT_HELLO, data, t, &mut st);
        on_handshake_message(SERVER_HELLO, data, t, &mut st);
    }
    on_handshake_message(CERTIFICATE, data, Ja4Transport::Tcp, &mut st);
    let _ = parse_handshake_header(data);
    let _ = parse_record_header(data);
    let _ = looks_like_tls_record(data);
    let (header, body) = data.split_at(data.len().min(5));
    let mut h = [0u8; 5];
    h.get_mut(..header.len())
        .unwrap_or_default()
        .copy_from_slice(header);
    try_decrypt(&st, h, body);
    let log = KeyLog::parse(&String::from_utf8_lossy(data));
    assert!(log.len() <= data.len());
    let _ = log.secret("CLIENT_RANDOM", &[0; 32]);
}

/// TLS/DTLS handshake: record layer, handshake reassembly, ClientHello, ServerHello and
/// Certificate parsing, JA4, JA4S and JA4X. Byte 0 picks the mode (`% 4`): 0 a TLS byte
/// stream, 1 bare handshake messages, 2 DTLS datagrams with 2-byte length prefixes, 3 the
/// message parsers directly. Byte 1 is the piece size for incremental feeding (0 = whole).
pub fn tls_handshake(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let step = usize::from(input.byte());
    let rest = input.rest();
    match mode % 4 {
        0 => tls_stream(rest, step),
        1 => tls_messages(rest, step),
        2 => dtls_datagrams(rest),
        _ => tls_bodies(rest),
    }
}

// ---------------------------------------------------------------------------------------
// QUIC.

fn quic_versions(sel: u8) -> u32 {
    match sel % 3 {
        0 => VERSION_1,
        1 => VERSION_2,
        _ => VERSION_DRAFT_29,
    }
}

fn quic_varint(v: u64, out: &mut Vec<u8>) {
    match v {
        0..=0x3f => out.push(v as u8),
        0x40..=0x3fff => out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes()),
        0x4000..=0x3fff_ffff => out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// Builds a protected Initial packet (RFC 9001 §5) carrying `payload`, with a 4-byte packet
/// number: the inverse of what the connection does, through the public key API.
fn seal_initial(
    version: u32,
    keys: &InitialKeys,
    dcid: &[u8],
    scid: &[u8],
    token: &[u8],
    pn: u32,
    payload: &[u8],
) -> Option<Vec<u8>> {
    let type_bits: u8 = if version == VERSION_2 { 1 } else { 0 };
    let mut p = vec![0xc3 | (type_bits << 4)];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(u8::try_from(dcid.len()).ok()?);
    p.extend_from_slice(dcid);
    p.push(u8::try_from(scid.len()).ok()?);
    p.extend_from_slice(scid);
    quic_varint(token.len() as u64, &mut p);
    p.extend_from_slice(token);
    let mut plain = payload.to_vec();
    // The header-protection sample needs 4 bytes of ciphertext after the packet number.
    plain.resize(plain.len().max(4), 0);
    quic_varint((4 + plain.len() + 16) as u64, &mut p);
    let pn_offset = p.len();
    p.extend_from_slice(&pn.to_be_bytes());
    let mut nonce = *keys.iv();
    for (n, b) in nonce.iter_mut().skip(4).zip(u64::from(pn).to_be_bytes()) {
        *n ^= b;
    }
    let aead = Aes128Gcm::new(&(*keys.key()).into());
    let tag = aead
        .encrypt_inout_detached(&nonce.into(), &p, plain.as_mut_slice().into())
        .ok()?;
    p.extend_from_slice(&plain);
    p.extend_from_slice(tag.as_slice());
    let sample: [u8; 16] = p.get(pn_offset + 4..pn_offset + 20)?.try_into().ok()?;
    let mask = keys.header_protection_mask(&sample);
    *p.first_mut()? ^= mask[0] & 0x0f;
    for (b, m) in p
        .get_mut(pn_offset..pn_offset + 4)?
        .iter_mut()
        .zip(&mask[1..])
    {
        *b ^= m;
    }
    Some(p)
}

fn on_quic_events(events: &[QuicEvent]) {
    for ev in events {
        match ev {
            QuicEvent::ClientHello(msg) => {
                assert_eq!(msg.first(), Some(&CLIENT_HELLO));
                if let Ok(ch) = ClientHello::parse(msg.get(4..).unwrap_or_default()) {
                    check_client_hello(&ch, Ja4Transport::Quic);
                }
            }
            QuicEvent::ServerHello(msg) => {
                assert_eq!(msg.first(), Some(&SERVER_HELLO));
                if let Ok(sh) = ServerHello::parse(msg.get(4..).unwrap_or_default()) {
                    check_server_hello(&sh, Ja4Transport::Quic);
                }
            }
            QuicEvent::Packet { .. } | QuicEvent::ConnectionClose { .. } => {}
        }
    }
}

fn walk_frames(plaintext: &[u8]) {
    let mut covered = 0usize;
    for frame in parse_frames(plaintext).take(MAX_PIECES) {
        match frame {
            Ok(Frame::Crypto { data, .. }) => covered += data.len(),
            Ok(Frame::Padding { len }) => covered += len,
            Ok(Frame::ConnectionClose { reason, .. }) => covered += reason.len(),
            Ok(Frame::Ping | Frame::Ack { .. }) => {}
            Err(_) => break,
        }
    }
    assert!(covered <= plaintext.len());
}

/// The lower layers on one datagram: header parse, trial decryption with the packet's own
/// DCID (both directions' keys), frames, Retry integrity.
fn quic_layers(datagram: &[u8], scratch: &mut Vec<u8>) {
    let _ = looks_like_quic_initial(datagram);
    let Ok(h) = parse_long_header(datagram) else {
        return;
    };
    let _ = verify_retry_integrity(h.version, h.dcid, datagram);
    let Some(packet) = datagram.get(..h.packet_len) else {
        return;
    };
    for is_server in [false, true] {
        if let Some(keys) = initial_keys(h.version, h.dcid, is_server)
            && decrypt_initial(&keys, packet, h.pn_offset, None, scratch).is_ok()
        {
            walk_frames(scratch);
        }
    }
}

/// Raw datagrams: a flags byte (bit 0: sent by the initiator) and a 2-byte length each.
fn quic_raw(data: &[u8]) {
    let mut input = Input::new(data);
    let mut conn = QuicConnection::new();
    let mut events = Vec::new();
    let mut scratch = Vec::new();
    let mut n = 0u64;
    while !input.is_empty() && n < 256 {
        let from_initiator = input.byte() & 1 == 0;
        let Some(datagram) = input.chunk() else { break };
        n += 1;
        if n <= 4 {
            quic_layers(datagram, &mut scratch);
        }
        events.clear();
        conn.on_datagram_into(from_initiator, datagram, &mut events);
        on_quic_events(&events);
    }
    let stats = *conn.stats();
    assert_eq!(stats.datagrams, n);
    assert!(stats.initials_decrypted + stats.initials_undecryptable <= stats.packets);
    let _ = (conn.version(), conn.initial_dcid(), conn.hellos_done());
}

/// Plaintext Initial payloads (frames chosen by the fuzzer) sealed into valid Initial
/// packets, so the fuzzer works on frames and CRYPTO reassembly instead of on AES-GCM.
///
/// Layout: version selector, DCID length (`% 21`), DCID, then per packet a control byte
/// and a 2-byte length-prefixed payload. Control bits: 0 server to client (a datagram's
/// first packet decides), 1 pad the datagram to 1200 bytes, 2 coalesce with the next
/// packet, 3 the bytes are a raw datagram rather than a payload to seal, 4 a later client
/// packet is addressed to the server's CID.
fn quic_sealed(data: &[u8]) {
    let mut input = Input::new(data);
    let version = quic_versions(input.byte());
    let dcid_len = usize::from(input.byte() % 21);
    let mut dcid = input.take(dcid_len).to_vec();
    dcid.resize(dcid_len, 0x83);
    let client_scid: &[u8] = &[0xc1, 0x1e, 0x47];
    let server_scid: &[u8] = &[0x5e, 0x77, 0xe4, 0x01, 0x02];
    let (Some(client_keys), Some(server_keys)) = (
        initial_keys(version, &dcid, false),
        initial_keys(version, &dcid, true),
    ) else {
        return;
    };
    let mut conn = QuicConnection::new();
    let mut events = Vec::new();
    let mut pns = [0u32; 2];
    let mut datagram = Vec::new();
    let mut sealed_in_datagram = 0u64;
    let mut client_seen = false;
    let mut only_sealed = true;
    let mut count = 0;
    let mut from_server = false;
    while !input.is_empty() && count < 64 {
        count += 1;
        let ctrl = input.byte();
        let Some(payload) = input.chunk() else { break };
        // A coalesced packet travels in the direction of the datagram's first packet.
        if datagram.is_empty() {
            from_server = ctrl & 1 != 0;
        }
        if ctrl & 8 != 0 {
            only_sealed = false;
            datagram.extend_from_slice(payload);
        } else {
            let dir = usize::from(from_server);
            let (keys, dst, src) = if from_server {
                (&server_keys, client_scid, server_scid)
            } else {
                (&client_keys, dcid.as_slice(), client_scid)
            };
            // Later client Initials carry the server's CID; keys stay those of the first.
            let dst = if !from_server && client_seen && ctrl & 16 != 0 {
                server_scid
            } else {
                dst
            };
            let Some(p) = seal_initial(version, keys, dst, src, &[], pns[dir], payload) else {
                return;
            };
            pns[dir] += 1;
            if from_server && !client_seen {
                // Undecryptable by design (no client DCID yet); not part of the property.
                only_sealed = false;
            }
            client_seen |= !from_server;
            sealed_in_datagram += 1;
            datagram.extend_from_slice(&p);
        }
        if ctrl & 4 != 0 && datagram.len() < 4096 {
            continue;
        }
        if ctrl & 2 != 0 && datagram.len() < 1200 {
            datagram.resize(1200, 0);
        }
        let before = conn.stats().initials_decrypted;
        events.clear();
        conn.on_datagram_into(!from_server, &datagram, &mut events);
        on_quic_events(&events);
        if only_sealed {
            assert_eq!(
                conn.stats().initials_decrypted - before,
                sealed_in_datagram,
                "a correctly sealed Initial did not decrypt"
            );
        }
        datagram.clear();
        sealed_in_datagram = 0;
    }
}

/// QUIC Initial: the connection state machine over datagrams, Initial decryption and frame
/// parsing. Byte 0 picks the mode (`% 3`): 0 raw datagrams, 1 payloads sealed into valid
/// Initial packets (see `quic_sealed`), 2 the frame parser on the rest of the input.
pub fn quic_initial(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let rest = input.rest();
    match mode % 3 {
        0 => quic_raw(rest),
        1 => quic_sealed(rest),
        _ => walk_frames(rest),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/1.

/// Skips a chunked body whole and piece by piece; both must agree. Returns the body length
/// when the body ended inside `buf`.
fn skip_chunked(buf: &[u8], step: usize) -> Option<usize> {
    let mut whole = ChunkedSkipper::new();
    let whole_result = whole.feed(buf);

    let mut split = ChunkedSkipper::new();
    let mut consumed = 0usize;
    let mut failed = false;
    for piece in pieces(buf, step.max(1)) {
        match split.feed(piece) {
            Ok(n) => {
                assert!(n <= piece.len());
                consumed += n;
                if split.is_done() {
                    break;
                }
                assert_eq!(n, piece.len(), "skipper stopped early without finishing");
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    match whole_result {
        Ok(n) => {
            assert!(!failed, "chunked: piecewise failed where whole succeeded");
            assert_eq!(n, consumed, "chunked: consumed differs piecewise");
            assert_eq!(whole.is_done(), split.is_done());
            whole.is_done().then_some(n)
        }
        Err(_) => {
            assert!(failed, "chunked: whole failed where piecewise succeeded");
            None
        }
    }
}

/// Skips a body as the framing says; `None` when the rest of the stream is not parsable.
fn skip_body(buf: &[u8], len: Result<BodyLength, impl Sized>, step: usize) -> Option<&[u8]> {
    match len.ok()? {
        BodyLength::Empty => Some(buf),
        BodyLength::Fixed(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
            buf.get(n..)
        }
        BodyLength::Chunked => buf.get(skip_chunked(buf, step)?..),
        BodyLength::UntilClose => None,
    }
}

fn check_response(resp: &HttpResponse) {
    let _ = resp.status;
    let _ = resp.headers.len();
}

/// HTTP/1: pipelined request heads (or response heads), body framing and chunked skipping,
/// JA4H. Byte 0 bit 0 picks responses; byte 1 is the piece size for the chunked-body check.
pub fn http1(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let step = usize::from(input.byte());
    let mut buf = input.rest();
    let _ = looks_like_http_request(buf);
    for _ in 0..64 {
        if mode & 1 == 0 {
            let Ok(Some((req, n))) = parse_request_head(buf) else {
                break;
            };
            assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
            // The head is complete within the bytes it consumed.
            let again = parse_request_head(buf.get(..n).unwrap_or_default());
            assert_eq!(
                again,
                Ok(Some((req.clone(), n))),
                "head depends on later bytes"
            );
            check_request(&req);
            let Some(next) = skip_body(
                buf.get(n..).unwrap_or_default(),
                request_body_len(&req),
                step,
            ) else {
                break;
            };
            buf = next;
        } else {
            let Ok(Some((resp, n))) = parse_response_head(buf) else {
                break;
            };
            assert!(n > 0 && n <= buf.len(), "consumed {n} of {}", buf.len());
            check_response(&resp);
            let Some(next) = skip_body(buf.get(n..).unwrap_or_default(), resp.body_len(), step)
            else {
                break;
            };
            buf = next;
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP/2.

/// HTTP/2: the client-stream parser fed whole and piece by piece (they must agree), JA4H on
/// every request, and the HPACK decoder directly. Byte 0: bit 0 keeps the input as is
/// (otherwise the connection preface is prepended), bit 1 selects the HPACK-only mode
/// (2-byte length-prefixed header blocks, byte 1 sets the table size limit). Byte 1 is the
/// piece size otherwise.
pub fn http2(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte();
    let param = input.byte();
    let rest = input.rest();
    if mode & 2 != 0 {
        hpack_blocks(rest, usize::from(param) * 256);
        return;
    }
    let stream: Vec<u8> = if mode & 1 != 0 || rest.starts_with(CLIENT_PREFACE) {
        rest.to_vec()
    } else {
        [CLIENT_PREFACE, rest].concat()
    };

    let mut whole = Http2RequestParser::new();
    let mut whole_reqs = Vec::new();
    let whole_result = whole.feed(&stream, &mut whole_reqs);
    assert_eq!(whole_result.is_err(), whole.has_stopped());

    let mut split = Http2RequestParser::new();
    let mut split_reqs = Vec::new();
    for piece in pieces(&stream, usize::from(param)) {
        if split.feed(piece, &mut split_reqs).is_err() {
            break;
        }
    }
    assert_eq!(
        whole_reqs, split_reqs,
        "HTTP/2 requests depend on segmentation"
    );
    assert_eq!(whole.has_stopped(), split.has_stopped());
    for req in &whole_reqs {
        assert!(req.headers.iter().any(|(n, _)| n == ":method"));
        check_request(req);
    }
    let mut again = Http2RequestParser::new();
    if let Ok(reqs) = again.push(&stream) {
        assert_eq!(reqs, whole_reqs);
    }
}

fn hpack_blocks(data: &[u8], limit: usize) {
    let mut input = Input::new(data);
    let mut dec = hpack::Decoder::new();
    dec.set_size_limit(limit);
    while let Some(block) = input.chunk() {
        match dec.decode(block) {
            Ok(fields) => {
                assert!(fields.len() <= hpack::MAX_FIELDS);
                let total: usize = fields.iter().map(|(n, v)| n.len() + v.len()).sum();
                assert!(total <= hpack::MAX_DECODED_LEN);
                assert!(dec.table_size() <= dec.max_table_size());
                assert!(dec.max_table_size() <= hpack::MAX_TABLE_SIZE);
                // Every entry costs at least 32 bytes (RFC 7541 §4.1).
                assert!(dec.table_len() * 32 <= dec.table_size());
            }
            Err(_) => break,
        }
    }
}

// ---------------------------------------------------------------------------------------
// SSH.

fn push_ssh(stream: &mut SshStream, data: &[u8], events: &mut Vec<SshEvent>) {
    let _ = stream.push(data, events);
}

/// SSH: both directions' banner and binary-packet parsing, KEXINIT, HASSH, JA4SSH, and
/// the stream fed whole versus per segment. Byte 0 is the JA4SSH window (`% 16 + 1`);
/// then segments of a direction byte (bit 0: server) and a 2-byte length.
pub fn ssh(data: &[u8]) {
    let mut input = Input::new(data);
    let window = usize::from(input.byte() % 16) + 1;
    let rest = input.rest();
    let _ = looks_like_ssh(rest);
    if let Some(b) = parse_banner(rest) {
        assert!(b.line.starts_with("SSH-"), "{b:?}");
        let _ = b.speaks_ssh2();
    }
    if let Ok(k) = KexInit::parse(rest) {
        check_kexinit(&k);
    }

    let mut streams = [SshStream::new(), SshStream::new()];
    let mut events: [Vec<SshEvent>; 2] = [Vec::new(), Vec::new()];
    let mut joined: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut segments = 0;
    #[cfg(feature = "ja4plus")]
    let mut ja4ssh = hais_ja4plus::ja4ssh::Ja4Ssh::with_window(window);
    #[cfg(not(feature = "ja4plus"))]
    let _ = window;
    let mut input = Input::new(rest);
    while !input.is_empty() && segments < 1024 {
        segments += 1;
        let dir = usize::from(input.byte() & 1);
        let Some(seg) = input.chunk() else { break };
        push_ssh(&mut streams[dir], seg, &mut events[dir]);
        joined[dir].extend_from_slice(seg);
        #[cfg(feature = "ja4plus")]
        if let Some(fp) = ja4ssh.on_packet(dir == 0, seg.len(), 0x18) {
            check_ja4ssh(&fp);
        }
    }
    #[cfg(feature = "ja4plus")]
    if let Some(fp) = ja4ssh.finish() {
        check_ja4ssh(&fp);
    }
    for dir in 0..2 {
        let mut whole = SshStream::new();
        let mut whole_events = Vec::new();
        push_ssh(&mut whole, &joined[dir], &mut whole_events);
        assert_eq!(
            whole_events, events[dir],
            "SSH events depend on segmentation"
        );
        assert_eq!(whole.is_finished(), streams[dir].is_finished());
    }
    let first_banner = |ev: &[SshEvent]| {
        ev.iter().find_map(|e| match e {
            SshEvent::Banner(b) => Some(b.clone()),
            _ => None,
        })
    };
    let first_kex = |ev: &[SshEvent]| {
        ev.iter().find_map(|e| match e {
            SshEvent::KexInit(k) => Some((**k).clone()),
            _ => None,
        })
    };
    let (cb, sb) = (first_banner(&events[0]), first_banner(&events[1]));
    let (ck, sk) = (first_kex(&events[0]), first_kex(&events[1]));
    for k in ck.iter().chain(&sk) {
        check_kexinit(k);
    }
    #[cfg(feature = "ja4plus")]
    {
        use hais_ja4plus::ja4ssh::{SshExtras, negotiated_encryption_c2s};
        let extras = SshExtras::new(cb.as_ref(), sb.as_ref(), ck.as_ref(), sk.as_ref());
        for h in extras.hassh.iter().chain(&extras.hassh_server) {
            assert_eq!(h.len(), 32, "HASSH {h:?}");
            assert!(is_lower_hex(h), "HASSH {h:?}");
        }
        if let (Some(c), Some(s)) = (&ck, &sk) {
            let _ = negotiated_encryption_c2s(c, s);
        }
    }
    #[cfg(not(feature = "ja4plus"))]
    let _ = (cb, sb);
}

fn check_kexinit(k: &KexInit) {
    for list in [&k.kex, &k.host_key, &k.enc_c2s, &k.mac_c2s] {
        assert!(names(list).all(|n| !n.is_empty() && !n.contains(',')));
    }
    #[cfg(feature = "ja4plus")]
    {
        let h = hais_ja4plus::ja4ssh::hassh(k);
        assert_eq!(h.len(), 32, "HASSH {h:?}");
        let _ = hais_ja4plus::ja4ssh::hassh_server(k);
        let _ = hais_ja4plus::ja4ssh::hassh_algorithms(k);
    }
}

#[cfg(feature = "ja4plus")]
fn check_ja4ssh(fp: &str) {
    let parts: Vec<&str> = fp.split('_').collect();
    assert_eq!(parts.len(), 3, "JA4SSH {fp:?}");
    for p in parts {
        assert!(p.starts_with('c') && p.contains('s'), "JA4SSH {fp:?}");
    }
}

// ---------------------------------------------------------------------------------------
// DHCP.

fn check_dhcpv6(msg: &Dhcpv6Message) {
    let mut cur = Some(msg);
    let mut depth = 0;
    while let Some(m) = cur {
        depth += 1;
        assert!(depth <= MAX_V6_NESTING + 1, "relay nesting not bounded");
        #[cfg(feature = "ja4plus")]
        {
            let fp = hais_ja4plus::ja4d::ja4d6(m);
            assert_eq!(fp.matches('_').count(), 2, "JA4D6 {fp:?}");
            assert!(fp.is_ascii());
        }
        cur = m.relayed.as_deref();
    }
}

/// DHCP: the same bytes as a DHCPv4 (BOOTP) and as a DHCPv6 payload, with JA4D/JA4D6.
pub fn dhcp(data: &[u8]) {
    if let Ok(m) = parse_dhcpv4(data) {
        assert!(m.option_codes.len() <= data.len());
        assert!(m.parameter_request_list.len() <= data.len());
        #[cfg(feature = "ja4plus")]
        {
            let fp = hais_ja4plus::ja4d::ja4d(&m);
            assert_eq!(fp.matches('_').count(), 2, "JA4D {fp:?}");
            assert!(fp.is_ascii());
        }
    }
    if let Ok(m) = parse_dhcpv6(data) {
        assert!(m.option_codes.len() <= data.len());
        check_dhcpv6(&m);
    }
}

// ---------------------------------------------------------------------------------------
// X.509.

/// X.509: JA4X of a DER certificate (the input as is).
pub fn x509(data: &[u8]) {
    check_certificate(data);
}

// ---------------------------------------------------------------------------------------
// The decode chain and the engine.

/// The TLS 1.3 secrets of the connection in `testdata/conformance/pcap/http2-with-cookies.pcapng`
/// (from its Decryption Secrets Block): with them the engine decrypts that connection's
/// records, so the `decode_chain` seed cut from that capture reaches HTTP/2 inside TLS.
const CORPUS_KEYLOG: &str = "\
CLIENT_HANDSHAKE_TRAFFIC_SECRET c106cecf9c7816cd12e83fd108c36cc8d0ccbedfa9e3742fc7cc43291f8fb0fe 8f07011361e729296ad39cf36b389b7309f5fdfd68c3d557e7b383de577da393
SERVER_HANDSHAKE_TRAFFIC_SECRET c106cecf9c7816cd12e83fd108c36cc8d0ccbedfa9e3742fc7cc43291f8fb0fe 420ceaf939354d695a0c7bbf22046c614c690479e7d6f3738c5e301f3f8a99b9
CLIENT_TRAFFIC_SECRET_0 c106cecf9c7816cd12e83fd108c36cc8d0ccbedfa9e3742fc7cc43291f8fb0fe e795df006ddbfd680b2556f744a477294c396d840335f8ffc1d596a34e654edf
SERVER_TRAFFIC_SECRET_0 c106cecf9c7816cd12e83fd108c36cc8d0ccbedfa9e3742fc7cc43291f8fb0fe ada9956a10c0d4129295b72db7c986152b9471092e515f223fa83fdf7d6ba70f
";

const LINK_TYPES: [LinkType; 8] = [
    LinkType::Ethernet,
    LinkType::Raw,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::Null,
    LinkType::Loop,
    LinkType::Ipv4,
    LinkType::Ipv6,
];

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    inner.is_empty() || (i >= o && i + inner.len() <= o + outer.len())
}

fn check_decode(link: LinkType, frame: &[u8]) {
    let Ok(p) = decode::decode(link, frame) else {
        return;
    };
    assert!(p.tunnel_udp.len() <= decode::MAX_TUNNEL_UDP);
    match p.transport {
        Transport::Tcp(seg) => {
            assert!(within(frame, seg.payload) && within(frame, seg.options));
            assert!(seg.options.len() <= 40);
            let opts = TcpOptions::parse(seg.options);
            assert!(opts.kinds.len() <= seg.options.len());
            #[cfg(feature = "ja4plus")]
            {
                let t = hais_ja4plus::ja4t::ja4t(seg.window, seg.options);
                assert_eq!(t.matches('_').count(), 3, "JA4T {t:?}");
            }
        }
        Transport::Udp(d) => assert!(within(frame, d.payload)),
        Transport::Fragment | Transport::Other(_) | Transport::NonIp => {}
    }
}

fn check_record(value: &Value) {
    let mut json = String::new();
    write_json_line(&mut json, value);
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&json) {
        panic!("engine wrote invalid JSON ({e}): {json}");
    }
    let mut yaml = String::new();
    write_yaml_list_item(&mut yaml, value);
}

/// The whole agent pipeline: link decoding, flow tracking, TCP reassembly and every
/// protocol state machine of the engine, then `finish()` and the output writers.
///
/// Byte 0: link type (low 3 bits), bit 3 a small flow table (eviction), bit 4 an idle
/// timeout, bit 5 raw/original-order output, bit 6 gives each frame its own link-type
/// byte, bit 7 loads `CORPUS_KEYLOG`. Then per frame: a link-type byte (bit 6 only), a
/// timestamp step in milliseconds, and the frame with a 2-byte length prefix.
pub fn decode_chain(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let cfg = EngineConfig {
        max_flows: if flags & 8 != 0 { 3 } else { 1024 },
        idle_timeout_us: if flags & 16 != 0 { 50_000 } else { 0 },
        with_raw: flags & 32 != 0,
        original_order: flags & 32 != 0,
        with_packet_numbers: flags & 32 != 0,
        ssh_window: 4,
        keylog: Arc::new(if flags & 128 != 0 {
            KeyLog::parse(CORPUS_KEYLOG)
        } else {
            KeyLog::default()
        }),
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(cfg);
    let mut ts = 1_700_000_000_000_000u64;
    let mut frames = 0u64;
    let mut reports = Vec::new();
    while !input.is_empty() && frames < 1024 {
        let link_sel = if flags & 64 != 0 { input.byte() } else { flags };
        let link = LINK_TYPES[usize::from(link_sel & 7)];
        ts += u64::from(input.byte()) * 1000;
        let Some(frame) = input.chunk() else { break };
        frames += 1;
        check_decode(link, frame);
        engine.on_frame(ts, link, frame);
        reports.extend(engine.take_finished());
    }
    engine.on_frame(ts, LinkType::Unsupported(147), &[0; 20]);
    assert_eq!(engine.stats().packets, frames + 1);
    reports.extend(engine.finish());
    let _ = engine.stats().error_total();
    for r in &reports {
        check_record(&Value::Map(r.record.clone()));
    }
    assert!(engine.finish().is_empty(), "second finish() reported again");
}

// ---------------------------------------------------------------------------------------
// Wire protocol (`hais_shared::wire`).

/// Most events of one decoded batch run through conversion and validation (a batch of tiny
/// events could hold hundreds of thousands).
const MAX_WIRE_EVENTS: usize = 1024;

/// Decodes the input both as a [`wire::Request`] and as a [`wire::Response`] (the whole input
/// is one message, as on a QUIC stream), and converts every event of a decoded batch with
/// `FingerprintEvent::try_from` and [`FingerprintEvent::validate`]. Checked: a decoded message
/// re-encodes to bytes that decode to the same message; a converted event survives the agent's
/// encoding (`wire::Event::from`) unchanged; a valid event survives the JSON form the control
/// plane stores and serves, and stays valid; a certificate of an SVID response that names a
/// SPIFFE ID names a valid one.
pub fn wire(data: &[u8]) {
    if let Ok(req) = wire::decode::<wire::Request>(data) {
        check_reencode(&req);
        if let Some(wire::request::Body::Batch(batch)) = &req.body {
            for ev in batch.events.iter().take(MAX_WIRE_EVENTS) {
                check_wire_event(ev);
            }
        }
    }
    if let Ok(resp) = wire::decode::<wire::Response>(data) {
        check_reencode(&resp);
        if let Some(wire::response::Body::Svid(s)) = &resp.body {
            for der in s.svid_chain_der.iter().chain(&s.bundle_der).take(MAX_CERTS) {
                check_spiffe_id_of(der);
            }
        }
    }
}

fn check_reencode<M: prost::Message + Default + PartialEq + std::fmt::Debug>(msg: &M) {
    let bytes = wire::encode(msg);
    let back: M = wire::decode(&bytes).expect("a re-encoded message decodes");
    assert_eq!(&back, msg, "message changed through encode/decode");
}

fn check_wire_event(ev: &wire::Event) {
    let Ok(event) = FingerprintEvent::try_from(ev.clone()) else {
        return;
    };
    let again = FingerprintEvent::try_from(wire::Event::from(&event))
        .expect("an event the agent encodes converts back");
    assert_eq!(again, event, "event changed through wire::Event::from");
    if event.validate().is_ok() {
        let json = serde_json::to_string(&event).expect("a valid event serialises");
        let back: FingerprintEvent =
            serde_json::from_str(&json).expect("a valid event's JSON parses");
        assert_eq!(back, event, "event changed through JSON: {json}");
        back.validate()
            .expect("a valid event stays valid through JSON");
    }
}

// ---------------------------------------------------------------------------------------
// Spool recovery (`uplink::spool`).

/// Spool record frame header: `len: u32 LE | crc32: u32 LE` (see `uplink::spool`).
const SPOOL_FRAME_HEADER: usize = 8;
const SPOOL_CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
const SPOOL_SEGMENT: &str = "00000000000000000001.seg";
const SPOOL_MAX_BYTES: u64 = 32 << 10;

static SPOOL_DIRS: AtomicU64 = AtomicU64::new(0);

/// A scratch directory under the system temp dir (`TMPDIR`; point it at a tmpfs when
/// fuzzing), removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        let n = SPOOL_DIRS.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("hais-fuzz-spool-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create scratch dir");
        ScratchDir(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn spool_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&SPOOL_CRC.checksum(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The valid prefix of a segment as the spool defines it: its payloads, and the offsets of
/// every record boundary (0 first, the end of the last valid record last).
fn spool_scan(data: &[u8]) -> (Vec<&[u8]>, Vec<u64>) {
    let mut payloads = Vec::new();
    let mut bounds = vec![0u64];
    let mut pos = 0;
    while let Some(header) = data.get(pos..pos + SPOOL_FRAME_HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let start = pos + SPOOL_FRAME_HEADER;
        let Some(payload) = data
            .get(start..start + len)
            .filter(|_| len <= MAX_RECORD_BYTES)
        else {
            break;
        };
        if SPOOL_CRC.checksum(payload) != crc {
            break;
        }
        payloads.push(payload);
        pos = start + len;
        bounds.push(pos as u64);
    }
    (payloads, bounds)
}

/// Hands out batches until the spool has nothing more, checking each batch's shape.
fn spool_hand_out(spool: &mut Spool, max_events: usize) -> Vec<Batch> {
    let mut out = Vec::new();
    while let Some(b) = spool.next_batch(max_events).expect("spool read") {
        assert!(!b.records.is_empty() && b.records.len() <= max_events);
        assert_eq!(b.id.count as usize, b.records.len());
        let bytes: u64 = b
            .records
            .iter()
            .map(|r| (SPOOL_FRAME_HEADER + r.len()) as u64)
            .sum();
        assert_eq!(b.id.end - b.id.start, bytes, "batch {:?}", b.id);
        out.push(b);
        assert!(out.len() <= MAX_PIECES, "spool hands out batches forever");
    }
    out
}

fn spool_records(batches: &[Batch]) -> Vec<Vec<u8>> {
    batches.iter().flat_map(|b| b.records.clone()).collect()
}

fn spool_options(dir: &Path, flags: u8) -> SpoolOptions {
    SpoolOptions {
        dir: dir.to_path_buf(),
        max_bytes: SPOOL_MAX_BYTES,
        segment_bytes: [64, 1024, 4096, SPOOL_MAX_BYTES / 2][usize::from(flags >> 6)],
        fsync_interval: std::time::Duration::from_secs(3600),
    }
}

/// Writes the input as the segment file of a spool directory (optionally with a head file),
/// opens the spool, hands out every batch and acknowledges them (in order, reversed, or half
/// of them, then the rest after a rewind). Checked: opening never fails or panics on any
/// segment bytes; a torn or invalid tail is counted in `torn_records` (and only then), and the
/// segment is truncated to its valid records; exactly the valid records after the head come
/// out, in order, in well-formed batches; after the acks nothing is left, an append after the
/// repair reads back, and reopening finds a clean, empty spool.
///
/// Layout: `flags`, `max_events - 1` (low 4 bits), `head: u16`, then the segment. `flags`
/// bit 0: the segment is built from records (`len: u8 | payload` each, framed with a correct
/// CRC, preceded by `cut: u16` truncating the result and `flip_at: u16, flip: u8` damaging one
/// byte) instead of taken raw; bits 1-2: head file (none, at the `head`-th record boundary,
/// `1 <head>`, or `len: u8 | text` taken as its contents); bit 3: ack in reverse order; bit 4:
/// rewind and read everything again before acking; bit 5: ack every other batch first, then
/// rewind and read the rest; bits 6-7: segment size.
pub fn spool(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let max_events = usize::from(input.byte() & 15) + 1;
    let head = input.u16();
    let head_mode = (flags >> 1) & 3;
    let head_text = if head_mode == 3 {
        let n = usize::from(input.byte());
        Some(input.take(n).to_vec())
    } else {
        None
    };
    let segment = if flags & 1 == 0 {
        input.rest().to_vec()
    } else {
        let cut = usize::from(input.u16());
        let flip_at = usize::from(input.u16());
        let flip = input.byte();
        let mut seg = Vec::new();
        while !input.is_empty() {
            let n = usize::from(input.byte());
            spool_frame(input.take(n), &mut seg);
        }
        if let Some(b) = seg.get_mut(flip_at) {
            *b ^= flip;
        }
        if cut != 0 && cut < seg.len() {
            seg.truncate(cut);
        }
        seg
    };
    let (payloads, bounds) = spool_scan(&segment);
    let valid_len = *bounds.last().expect("bounds start at 0");
    let torn_bytes = segment.len() as u64 - valid_len;

    let scratch = ScratchDir::new();
    let dir = scratch.0.join("spool");
    fs::create_dir_all(&dir).expect("create spool dir");
    let seg_path = dir.join(SPOOL_SEGMENT);
    fs::write(&seg_path, &segment).expect("write segment");
    // Records acknowledged before the "restart", when the head says so exactly.
    let skip = match head_mode {
        0 => Some(0),
        1 => {
            let i = usize::from(head) % bounds.len();
            fs::write(dir.join("head"), format!("1 {}\n", bounds[i])).expect("write head");
            Some(i)
        }
        2 => {
            fs::write(dir.join("head"), format!("1 {head}\n")).expect("write head");
            Some(
                bounds
                    .iter()
                    .position(|b| *b == u64::from(head))
                    .unwrap_or(0),
            )
        }
        _ => {
            fs::write(dir.join("head"), head_text.unwrap_or_default()).expect("write head");
            None
        }
    };

    let opts = spool_options(&dir, flags);
    let mut spool = Spool::open(opts.clone()).expect("a spool opens whatever its segment holds");
    let st = spool.stats();
    if skip.is_some() {
        assert_eq!(
            st.torn_records > 0,
            torn_bytes > 0,
            "torn records {st:?}, torn bytes {torn_bytes}"
        );
    }
    assert!(st.torn_records <= torn_bytes.div_ceil(SPOOL_FRAME_HEADER as u64) + 1);
    if let Ok(meta) = fs::metadata(&seg_path) {
        assert_eq!(
            meta.len(),
            valid_len,
            "segment not truncated to its valid records"
        );
    }
    let expected: Vec<Vec<u8>> = match skip {
        _ if st.dropped > 0 => Vec::new(),
        Some(skip) => payloads[skip..].iter().map(|p| p.to_vec()).collect(),
        None => {
            let n = st.depth as usize;
            assert!(n <= payloads.len());
            payloads[payloads.len() - n..]
                .iter()
                .map(|p| p.to_vec())
                .collect()
        }
    };
    if skip.is_some() || st.dropped > 0 {
        assert_eq!(
            st.depth + st.dropped,
            (payloads.len() - skip.unwrap_or(0)) as u64
        );
    }

    let batches = spool_hand_out(&mut spool, max_events);
    assert_eq!(spool_records(&batches), expected);
    let batches = if flags & 16 != 0 {
        spool.rewind();
        let again = spool_hand_out(&mut spool, max_events);
        assert_eq!(spool_records(&again), expected);
        again
    } else {
        batches
    };
    if flags & 32 != 0 {
        let mut want = Vec::new();
        for (i, b) in batches.iter().enumerate() {
            if i % 2 == 0 {
                spool.ack(&b.id);
            } else {
                want.extend(b.records.iter().cloned());
            }
        }
        spool.rewind();
        let again = spool_hand_out(&mut spool, max_events);
        assert_eq!(spool_records(&again), want, "rewind after partial acks");
        for b in &again {
            spool.ack(&b.id);
        }
    } else if flags & 8 != 0 {
        for b in batches.iter().rev() {
            spool.ack(&b.id);
        }
    } else {
        for b in &batches {
            spool.ack(&b.id);
        }
    }
    let st = spool.stats();
    assert_eq!(st.depth, 0, "{st:?}");
    assert_eq!(st.acked, expected.len() as u64, "{st:?}");
    assert!(spool.next_batch(max_events).expect("spool read").is_none());

    // The repaired spool takes new records, and they survive a restart before being acked.
    let fresh: Vec<Vec<u8>> = (0..max_events % 4 + 1)
        .map(|i| format!("after-recovery-{i}").into_bytes())
        .collect();
    spool.append(&fresh).expect("append after recovery");
    drop(spool);
    let mut spool = Spool::open(opts.clone()).expect("reopen");
    let st = spool.stats();
    assert_eq!(
        (st.torn_records, st.depth),
        (0, fresh.len() as u64),
        "{st:?}"
    );
    let after = spool_hand_out(&mut spool, max_events);
    assert_eq!(
        spool_records(&after),
        fresh,
        "records appended after recovery"
    );
    for b in &after {
        spool.ack(&b.id);
    }
    drop(spool);
    let mut spool = Spool::open(opts).expect("reopen");
    let st = spool.stats();
    assert_eq!((st.torn_records, st.depth), (0, 0), "{st:?}");
    assert!(spool.next_batch(max_events).expect("spool read").is_none());
}

// ---------------------------------------------------------------------------------------
// Identity text: SPIFFE IDs, selectors, SPIRE entry imports, join tokens, trust bundles.

/// The first byte picks the parser, the rest (lossily decoded as UTF-8) is its input:
/// 0 `SpiffeId::parse`, 1 `Selector::parse`, 2 `import_spire_json`, 3 `JoinToken::parse` (and
/// `split_credential`), 4 `Bundle::from_file_text` (PEM or SPIFFE JWKS). Checked: whatever
/// parses prints back as its input (IDs, selectors, tokens) and reparses to the same value;
/// imported entries hold 1 to `MAX_SELECTORS_PER_ENTRY` sorted, distinct selectors; a bundle
/// holds at least one certificate and survives its PEM form.
pub fn identity_text(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match sel % 5 {
        0 => check_spiffe_id(&text),
        1 => check_selector(&text),
        2 => check_spire_import(&text),
        3 => check_join_token(&text),
        _ => check_bundle_text(&text),
    }
}

fn check_spiffe_id(s: &str) {
    let Ok(id) = SpiffeId::parse(s) else {
        return;
    };
    assert_eq!(id.as_str(), s);
    assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), s);
    assert_eq!(
        SpiffeId::new(id.trust_domain(), id.path()).as_ref(),
        Ok(&id)
    );
    validate_trust_domain(id.trust_domain()).expect("the trust domain of a valid ID");
    if let Some(agent) = id.agent_id() {
        assert_eq!(SpiffeId::agent(id.trust_domain(), agent).as_ref(), Ok(&id));
    }
}

fn check_selector(s: &str) {
    if let Ok(sel) = Selector::parse(s) {
        assert_eq!(sel.to_string(), s);
        assert_eq!(
            Selector::new(sel.kind, sel.value.clone()).as_ref(),
            Ok(&sel)
        );
    }
}

fn check_spire_import(s: &str) {
    let Ok(report) = import_spire_json(s) else {
        return;
    };
    for e in &report.entries {
        let n = e.selectors.len();
        assert!((1..=MAX_SELECTORS_PER_ENTRY).contains(&n), "{n} selectors");
        assert!(e.selectors.windows(2).all(|w| w[0] < w[1]), "not sorted");
        assert_eq!(
            SpiffeId::parse(e.spiffe_id.as_str()).as_ref(),
            Ok(&e.spiffe_id)
        );
        for sel in &e.selectors {
            assert_eq!(Selector::parse(&sel.to_string()).as_ref(), Ok(sel));
        }
    }
}

fn check_join_token(s: &str) {
    if let Ok(t) = JoinToken::parse(s) {
        assert_eq!(t.to_string(), s.trim());
        assert_eq!(JoinToken::parse(&t.to_string()).ok().as_ref(), Some(&t));
        let cred = t.credential();
        assert_eq!(
            split_credential(&cred),
            Some((t.id.as_str(), t.secret.as_str()))
        );
    }
    if let Some((id, secret)) = split_credential(s) {
        assert_eq!(format!("{id}.{secret}"), s);
    }
}

fn check_bundle_text(s: &str) {
    let Ok(bundle) = Bundle::from_file_text(s) else {
        return;
    };
    assert!(!bundle.certs.is_empty());
    let again = Bundle::from_pem(&bundle.to_pem()).expect("a bundle's PEM form parses");
    assert_eq!(again, bundle);
    assert_eq!(bundle.merged(&bundle), bundle);
}

// ---------------------------------------------------------------------------------------
// SVID certificates (`hais_svid`).

/// Mode byte, then: (even) one DER certificate for `spiffe_id_of`; (odd) chunks
/// (`len: u16 | bytes`): a PKCS#8 key, then a chain for `Svid::from_der` and `Bundle::from_der`
/// (each certificate also through `spiffe_id_of`). Checked: an ID found is a valid SPIFFE ID;
/// an accepted SVID names its leaf's ID, keeps its key and chain, and renews within its
/// validity.
pub fn svid(data: &[u8]) {
    let mut input = Input::new(data);
    if input.byte() & 1 == 0 {
        check_spiffe_id_of(input.rest());
        return;
    }
    let key = input.chunk().unwrap_or_default().to_vec();
    let mut chain = Vec::new();
    while let Some(der) = input.chunk() {
        if chain.len() == MAX_CERTS {
            break;
        }
        check_spiffe_id_of(der);
        chain.push(der.to_vec());
    }
    if let Ok(b) = Bundle::from_der(chain.clone()) {
        assert_eq!(b.certs.len(), chain.len());
    }
    if let Ok(s) = Svid::from_der(chain.clone(), key.clone()) {
        assert_eq!(
            spiffe_id_of(&chain[0]).ok().as_ref(),
            Some(&s.spiffe_id),
            "SVID ID differs from its leaf's"
        );
        assert_eq!(s.key_pkcs8, key);
        assert_eq!(s.chain.len(), chain.len());
        if s.not_before <= s.not_after {
            let r = s.renew_at();
            assert!(s.not_before <= r && r <= s.not_after, "renew_at {r}");
        }
    }
}

fn check_spiffe_id_of(der: &[u8]) {
    if let Ok(id) = spiffe_id_of(der) {
        assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
    }
}

// ---------------------------------------------------------------------------------------
// sock_diag replies (`hais_attribute::sockdiag`): what the kernel sends the attributor.

/// One netlink datagram of sock_diag replies (socket records, errors, done markers, in any
/// mix and truncated anywhere).
pub fn sock_diag(data: &[u8]) {
    hais_attribute::sockdiag::fuzz_replies(data);
}
