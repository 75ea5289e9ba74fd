//! TLS over TCP: records → handshake messages → JA4, JA4S, JA4X; with key-log secrets,
//! decryption of TLS 1.3 handshakes (certificates) and of application data (HTTP inside
//! TLS, for JA4H).

use std::borrow::Cow;

use hais_dissect::keylog::KeyLog;
use hais_dissect::tls::client_hello::ClientHello;
use hais_dissect::tls::decrypt::RecordDecrypter;
use hais_dissect::tls::handshake::{self, HandshakeAssembler};
use hais_dissect::tls::record::{
    CONTENT_APPLICATION_DATA, CONTENT_CHANGE_CIPHER_SPEC, CONTENT_HANDSHAKE, RecordReader,
};
use hais_dissect::tls::server_hello::ServerHello;
use hais_ja4::ja4::Ja4Transport;

use super::Ctx;
use super::fingerprints::Print;
use super::http::{Http1Client, Http2Client};
use super::tcp::{C2S, S2C};

/// The JA4 of a ClientHello, whatever carried it (TCP, QUIC, DTLS). Only the first
/// ClientHello of a stream counts (a second one after a HelloRetryRequest is the same
/// client and would only repeat it).
pub(crate) fn record_client_hello(
    ctx: &mut Ctx<'_>,
    ch: &ClientHello<'_>,
    transport: Ja4Transport,
) {
    if ctx.fp.ja4.is_some() {
        return;
    }
    let alpn = ctx.cfg.alpn_rule;
    let (hashed, raw) = if !ctx.cfg.with_raw && !ctx.cfg.original_order {
        // Only the sorted, hashed JA4 is printed: skip building and hashing the other
        // three variants (a third of the per-hello cost).
        (
            hais_ja4::ja4::ja4_string(ch, transport, alpn),
            String::new(),
        )
    } else {
        let j = hais_ja4::ja4::ja4(ch, transport, alpn);
        if ctx.cfg.original_order {
            (j.ja4_o, j.ja4_ro)
        } else {
            (j.ja4, j.ja4_r)
        }
    };
    ctx.fp.ja4 = Some(Print {
        hashed,
        raw,
        pkt: ctx.pkt,
    });
    if !ctx.cfg.original_order {
        ctx.fp.ja4_stable = Some(hais_ja4::ja4::ja4_stable_string(ch, transport, alpn));
    }
    if ctx.fp.tls_server_name.is_none() {
        ctx.fp.tls_server_name = ch.server_name_lossy().map(Cow::into_owned);
    }
}

/// The JA4S of the first ServerHello of a stream (a HelloRetryRequest counts: it is the
/// server's first answer, and the reference keeps it).
pub(crate) fn record_server_hello(ctx: &mut Ctx<'_>, sh: &ServerHello, transport: Ja4Transport) {
    #[cfg(feature = "ja4plus")]
    if ctx.fp.ja4s.is_none() {
        let s = hais_ja4plus::ja4s::ja4s(sh, transport, ctx.cfg.alpn_rule);
        ctx.fp.ja4s = Some(Print {
            hashed: s.ja4s,
            raw: s.ja4s_r,
            pkt: ctx.pkt,
        });
    }
    #[cfg(not(feature = "ja4plus"))]
    let _ = (ctx, sh, transport);
}

/// One JA4X per certificate of a Certificate message.
pub(crate) fn record_certificates(ctx: &mut Ctx<'_>, body: &[u8], tls13: bool) {
    #[cfg(feature = "ja4plus")]
    {
        let certs = match hais_dissect::tls::certificate::parse_certificate_list(body, tls13) {
            Ok(c) => c,
            Err(_) => {
                ctx.stats.error("tls.bad_certificate_message");
                return;
            }
        };
        let mut out = Vec::with_capacity(certs.len());
        for der in certs {
            match hais_ja4plus::ja4x::ja4x(der) {
                Ok(x) => out.push(super::fingerprints::CertPrint {
                    ja4x: x.ja4x,
                    ja4x_r: x.ja4x_r,
                    names: x.names,
                }),
                Err(_) => {
                    // The reference stops at the first certificate it cannot parse.
                    ctx.stats.error("x509.bad_certificate");
                    break;
                }
            }
        }
        if !out.is_empty() {
            ctx.fp.certs.push((ctx.pkt, out));
        }
    }
    #[cfg(not(feature = "ja4plus"))]
    let _ = (ctx, body, tls13);
}

/// Key epochs a direction goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Epoch {
    Plaintext,
    /// TLS 1.3 handshake traffic keys.
    Handshake,
    /// Application traffic keys (TLS 1.3 after Finished, TLS 1.2 after ChangeCipherSpec).
    Application,
    /// Encrypted and no keys: nothing more to read in this direction.
    Opaque,
}

#[derive(Debug)]
struct Direction {
    records: RecordReader,
    handshake: HandshakeAssembler,
    decrypter: Option<RecordDecrypter>,
    epoch: Epoch,
    failed: bool,
}

impl Direction {
    fn new() -> Self {
        Direction {
            records: RecordReader::new(),
            handshake: HandshakeAssembler::new(),
            decrypter: None,
            epoch: Epoch::Plaintext,
            failed: false,
        }
    }
}

/// Decrypted application data goes to one of these, chosen by ALPN and content.
#[derive(Debug)]
enum Inner {
    Undecided,
    Http1(Box<Http1Client>),
    Http2(Box<Http2Client>),
    Other,
}

/// TLS state of one TCP connection.
#[derive(Debug)]
pub(crate) struct TlsSession {
    dirs: [Direction; 2],
    client_random: Option<[u8; 32]>,
    server_random: Option<[u8; 32]>,
    suite: Option<u16>,
    tls13: bool,
    alpn_h2: bool,
    client_hello_seen: bool,
    server_hello_seen: bool,
    /// TLS 1.2: the server's cleartext flight is over (ServerHelloDone or CCS).
    server_flight_done: bool,
    inner: Inner,
}

impl TlsSession {
    pub(crate) fn new() -> Self {
        TlsSession {
            dirs: [Direction::new(), Direction::new()],
            client_random: None,
            server_random: None,
            suite: None,
            tls13: false,
            alpn_h2: false,
            client_hello_seen: false,
            server_hello_seen: false,
            server_flight_done: false,
            inner: Inner::Undecided,
        }
    }

    /// Whether bytes of `dir` can still teach us something.
    pub(crate) fn wants_bytes(&self, dir: usize) -> bool {
        let d = &self.dirs[dir];
        if d.failed || d.epoch == Epoch::Opaque {
            return false;
        }
        if d.decrypter.is_some() {
            return dir == S2C && self.tls13 && d.epoch == Epoch::Handshake
                || dir == C2S && self.inner_wants();
        }
        if dir == C2S {
            // Before the ServerHello we can't know whether secrets will apply.
            !self.client_hello_seen || !self.server_hello_seen
        } else {
            !self.server_hello_seen || (!self.tls13 && !self.server_flight_done)
        }
    }

    /// Frees the record and handshake buffers of a direction whose bytes are no longer
    /// delivered (the TCP layer stops a direction for good once [`Self::wants_bytes`] says
    /// no). Otherwise every finished handshake keeps its certificate-sized buffers until the
    /// stream ends.
    pub(crate) fn release(&mut self, dir: usize) {
        let d = &mut self.dirs[dir];
        d.records = RecordReader::new();
        d.handshake = HandshakeAssembler::new();
    }

    fn inner_wants(&self) -> bool {
        match &self.inner {
            Inner::Undecided => true,
            Inner::Http1(h) => h.wants_bytes(),
            Inner::Http2(h) => h.wants_bytes(),
            Inner::Other => false,
        }
    }

    pub(crate) fn on_bytes(&mut self, ctx: &mut Ctx<'_>, dir: usize, bytes: &[u8]) {
        if self.dirs[dir].failed {
            return;
        }
        if self.dirs[dir].records.push(bytes).is_err() {
            self.dirs[dir].failed = true;
            ctx.stats.error("tls.bad_record");
            return;
        }
        loop {
            let rec = match self.dirs[dir].records.pop() {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(_) => {
                    self.dirs[dir].failed = true;
                    ctx.stats.error("tls.bad_record");
                    break;
                }
            };
            self.on_record(
                ctx,
                dir,
                rec.header.content_type,
                rec.header.version,
                rec.header.length,
                &rec.fragment,
            );
            if self.dirs[dir].failed {
                break;
            }
        }
    }

    fn on_record(
        &mut self,
        ctx: &mut Ctx<'_>,
        dir: usize,
        ctype: u8,
        version: u16,
        len: u16,
        fragment: &[u8],
    ) {
        let epoch = self.dirs[dir].epoch;
        if ctype == CONTENT_CHANGE_CIPHER_SPEC {
            if !self.tls13 {
                if dir == S2C {
                    self.server_flight_done = true;
                }
                self.start_tls12_protection(dir, &ctx.cfg.keylog);
            }
            return;
        }
        let encrypted = match epoch {
            Epoch::Plaintext => false,
            Epoch::Opaque => return,
            Epoch::Handshake | Epoch::Application => true,
        };
        if !encrypted {
            if ctype == CONTENT_HANDSHAKE {
                self.push_handshake(ctx, dir, fragment);
            }
            return;
        }
        // Protected records: application data, and in TLS 1.2 the encrypted Finished.
        let tls12_finished = ctype == CONTENT_HANDSHAKE && !self.tls13;
        if ctype != CONTENT_APPLICATION_DATA && !tls12_finished {
            return;
        }
        let Some(dec) = self.dirs[dir].decrypter.as_mut() else {
            return;
        };
        let [v0, v1] = version.to_be_bytes();
        let [l0, l1] = len.to_be_bytes();
        let header = [ctype, v0, v1, l0, l1];
        let (inner_type, plain) = match dec.decrypt(&header, fragment) {
            Ok(x) => x,
            Err(_) => {
                ctx.stats.error("tls.decrypt_failed");
                self.dirs[dir].decrypter = None;
                self.dirs[dir].epoch = Epoch::Opaque;
                return;
            }
        };
        match inner_type {
            CONTENT_HANDSHAKE => self.push_handshake(ctx, dir, &plain),
            CONTENT_APPLICATION_DATA if dir == C2S => self.on_app_data(ctx, &plain),
            _ => {}
        }
    }

    fn push_handshake(&mut self, ctx: &mut Ctx<'_>, dir: usize, fragment: &[u8]) {
        if self.dirs[dir].handshake.push(fragment).is_err() {
            self.dirs[dir].failed = true;
            ctx.stats.error("tls.bad_handshake");
            return;
        }
        loop {
            let msg = match self.dirs[dir].handshake.pop() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    self.dirs[dir].failed = true;
                    ctx.stats.error("tls.bad_handshake");
                    break;
                }
            };
            self.on_handshake(ctx, dir, msg.msg_type, &msg.body);
        }
    }

    fn on_handshake(&mut self, ctx: &mut Ctx<'_>, dir: usize, msg_type: u8, body: &[u8]) {
        match (dir, msg_type) {
            (C2S, handshake::CLIENT_HELLO) => match ClientHello::parse(body) {
                Ok(ch) => {
                    if !self.client_hello_seen {
                        self.client_random = Some(ch.random);
                    }
                    self.client_hello_seen = true;
                    record_client_hello(ctx, &ch, Ja4Transport::Tcp);
                }
                Err(_) => ctx.stats.error("tls.bad_client_hello"),
            },
            (S2C, handshake::SERVER_HELLO) => match ServerHello::parse(body) {
                Ok(sh) => {
                    self.server_hello_seen = true;
                    record_server_hello(ctx, &sh, Ja4Transport::Tcp);
                    if sh.is_hello_retry_request() {
                        return;
                    }
                    self.server_random = Some(sh.random);
                    self.suite = Some(sh.cipher_suite);
                    self.tls13 = sh.supported_version == Some(0x0304);
                    self.alpn_h2 = sh.alpn.as_deref() == Some(b"h2");
                    if self.tls13 {
                        self.start_tls13_handshake_protection(&ctx.cfg.keylog);
                    }
                }
                Err(_) => ctx.stats.error("tls.bad_server_hello"),
            },
            (S2C, handshake::CERTIFICATE) => record_certificates(ctx, body, self.tls13),
            (S2C, handshake::SERVER_HELLO_DONE) => self.server_flight_done = true,
            (_, handshake::FINISHED) if self.tls13 && self.dirs[dir].epoch == Epoch::Handshake => {
                self.start_tls13_application_protection(dir, &ctx.cfg.keylog);
            }
            _ => {}
        }
    }

    fn secret(&self, ctx_label: &str, keylog: &KeyLog) -> Option<Vec<u8>> {
        let cr = self.client_random.as_ref()?;
        keylog.secret(ctx_label, cr).map(<[u8]>::to_vec)
    }

    fn start_tls13_handshake_protection(&mut self, keylog: &KeyLog) {
        for dir in [C2S, S2C] {
            self.dirs[dir].epoch = Epoch::Opaque;
        }
        let Some(suite) = self.suite else { return };
        for (dir, label) in [
            (C2S, "CLIENT_HANDSHAKE_TRAFFIC_SECRET"),
            (S2C, "SERVER_HANDSHAKE_TRAFFIC_SECRET"),
        ] {
            if let Some(secret) = self.secret(label, keylog)
                && let Ok(dec) = RecordDecrypter::tls13(suite, &secret)
            {
                self.dirs[dir].decrypter = Some(dec);
                self.dirs[dir].epoch = Epoch::Handshake;
            }
        }
    }

    fn start_tls13_application_protection(&mut self, dir: usize, keylog: &KeyLog) {
        self.dirs[dir].decrypter = None;
        self.dirs[dir].epoch = Epoch::Opaque;
        let Some(suite) = self.suite else { return };
        let label = if dir == C2S {
            "CLIENT_TRAFFIC_SECRET_0"
        } else {
            "SERVER_TRAFFIC_SECRET_0"
        };
        if let Some(secret) = self.secret(label, keylog)
            && let Ok(dec) = RecordDecrypter::tls13(suite, &secret)
        {
            self.dirs[dir].decrypter = Some(dec);
            self.dirs[dir].epoch = Epoch::Application;
        }
    }

    fn start_tls12_protection(&mut self, dir: usize, keylog: &KeyLog) {
        self.dirs[dir].epoch = Epoch::Opaque;
        self.dirs[dir].decrypter = None;
        let (Some(suite), Some(cr), Some(sr)) =
            (self.suite, self.client_random, self.server_random)
        else {
            return;
        };
        let Some(master) = keylog.secret("CLIENT_RANDOM", &cr) else {
            return;
        };
        if let Ok(dec) = RecordDecrypter::tls12(suite, master, &cr, &sr, dir == C2S) {
            self.dirs[dir].decrypter = Some(dec);
            self.dirs[dir].epoch = Epoch::Application;
        }
    }

    fn on_app_data(&mut self, ctx: &mut Ctx<'_>, plain: &[u8]) {
        if let Inner::Undecided = self.inner {
            self.inner = if self.alpn_h2 || plain.starts_with(hais_dissect::http2::CLIENT_PREFACE) {
                Inner::Http2(Box::new(Http2Client::new()))
            } else if hais_dissect::http1::looks_like_http_request(plain) {
                Inner::Http1(Box::new(Http1Client::new(0)))
            } else {
                Inner::Other
            };
        }
        match &mut self.inner {
            Inner::Http1(h) => {
                let _ = h.on_bytes(ctx, plain);
            }
            Inner::Http2(h) => h.on_bytes(ctx, plain),
            _ => {}
        }
    }
}
