//! Which application protocol a TCP connection carries, decided by content, never by port:
//! TLS, HTTP/1, HTTP/2 with prior knowledge, SSH, and TLS relayed after a SOCKS4/4a/5 or
//! HTTP CONNECT preamble.

use hais_dissect::http1;
use hais_dissect::http2::CLIENT_PREFACE;
use hais_dissect::ssh::looks_like_ssh;
use hais_dissect::tls::record::looks_like_tls_record;

use super::fingerprints::Fingerprints;
use super::http::{Http1Client, Http2Client, HttpEvent};
use super::ssh::SshSession;
use super::tcp::{C2S, S2C};
use super::tls::TlsSession;
use super::{Ctx, EngineConfig};

/// Bytes held per direction while the protocol is still unknown.
const MAX_PENDING: usize = 16 * 1024;
/// Proxy preambles that nest deeper than this are not followed.
const MAX_PREAMBLES: u8 = 3;

/// The application protocol state of a connection.
#[derive(Debug, Default)]
pub(crate) enum App {
    /// Not known yet: bytes are held until the client's first bytes decide.
    #[default]
    Detect,
    /// Some bytes seen, not enough to decide.
    Detecting(Box<Pending>),
    Tls(Box<TlsSession>),
    Http1(Box<Http1Client>),
    Http2(Box<Http2Client>),
    Ssh(Box<SshSession>),
    /// A proxy handshake to skip before the tunnelled protocol starts.
    Preamble(Box<Preamble>),
    /// Nothing to learn from this connection.
    Ignore,
}

/// Held bytes and the count of preambles crossed, carried through the transitions.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    bufs: [Vec<u8>; 2],
    preambles: u8,
}

/// State of a proxy preamble (SOCKS or HTTP CONNECT) being skipped.
#[derive(Debug)]
pub(crate) struct Preamble {
    kind: ProxyKind,
    /// Bytes of each direction not yet attributed to the preamble.
    bufs: [Vec<u8>; 2],
    /// Whether each direction's preamble is complete.
    done: [bool; 2],
    /// SOCKS5: client greeting consumed, waiting for the request.
    socks5_stage: [u8; 2],
    preambles: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyKind {
    Socks4,
    Socks5,
    /// The client's CONNECT request was already consumed by the HTTP parser.
    HttpConnect,
}

impl App {
    /// Whether the direction's bytes are still needed.
    pub(crate) fn wants_bytes(&self, dir: usize) -> bool {
        match self {
            App::Detect | App::Detecting(_) | App::Preamble(_) => true,
            App::Tls(t) => t.wants_bytes(dir),
            App::Http1(h) => dir == C2S && h.wants_bytes(),
            App::Http2(h) => dir == C2S && h.wants_bytes(),
            App::Ssh(s) => s.wants_bytes(dir),
            App::Ignore => false,
        }
    }

    /// The direction's bytes will no longer be delivered: frees what buffers them.
    pub(crate) fn release(&mut self, dir: usize) {
        if let App::Tls(t) = self {
            t.release(dir);
        }
    }

    /// True once the connection is known to be SSH.
    pub(crate) fn is_ssh(&self) -> bool {
        matches!(self, App::Ssh(_))
    }

    /// Whether sequence numbers must still be followed after bytes stop mattering.
    pub(crate) fn wants_seq_tracking(&self) -> bool {
        matches!(self, App::Ssh(_))
    }

    /// Per-packet accounting, for the protocols that fingerprint packet patterns.
    pub(crate) fn on_packet(
        &mut self,
        ctx: &mut Ctx<'_>,
        from_client: bool,
        flags: u8,
        len: usize,
        retrans: bool,
    ) {
        if let App::Ssh(s) = self {
            s.on_packet(ctx, from_client, flags, len, retrans);
        }
    }

    pub(crate) fn finish(&mut self, cfg: &EngineConfig, fp: &mut Fingerprints) {
        if let App::Ssh(s) = self {
            s.finish(cfg, fp);
        }
    }

    /// In-order bytes of one direction.
    pub(crate) fn on_bytes(&mut self, ctx: &mut Ctx<'_>, dir: usize, bytes: &[u8]) {
        match self {
            App::Detect => {
                let mut pending = Pending::default();
                pending.bufs[dir].extend_from_slice(bytes);
                *self = App::Detecting(Box::new(pending));
                self.detect(ctx);
            }
            App::Detecting(p) => {
                if p.bufs[dir].len() + bytes.len() > MAX_PENDING {
                    *self = App::Ignore;
                    return;
                }
                p.bufs[dir].extend_from_slice(bytes);
                self.detect(ctx);
            }
            App::Tls(t) => t.on_bytes(ctx, dir, bytes),
            App::Http1(h) => {
                if dir == C2S {
                    let ev = h.on_bytes(ctx, bytes);
                    if let HttpEvent::Connect(rest) = ev {
                        let mut pre = Preamble::new(ProxyKind::HttpConnect, h.preambles);
                        pre.done[C2S] = true;
                        pre.bufs[C2S] = rest;
                        *self = App::Preamble(Box::new(pre));
                        self.advance_preamble(ctx);
                    }
                }
            }
            App::Http2(h) => {
                if dir == C2S {
                    h.on_bytes(ctx, bytes);
                }
            }
            App::Ssh(s) => s.on_bytes(ctx, dir, bytes),
            App::Preamble(p) => {
                if p.bufs[dir].len() + bytes.len() > MAX_PENDING {
                    *self = App::Ignore;
                    return;
                }
                p.bufs[dir].extend_from_slice(bytes);
                self.advance_preamble(ctx);
            }
            App::Ignore => {}
        }
    }

    /// Decides the protocol from the held bytes, or keeps waiting.
    fn detect(&mut self, ctx: &mut Ctx<'_>) {
        let App::Detecting(p) = self else { return };
        let client = &p.bufs[C2S];
        let server = &p.bufs[S2C];
        let decision = if looks_like_ssh(server) || looks_like_ssh(client) {
            Some(Kind::Ssh)
        } else if client.is_empty() {
            // Server-first protocols other than SSH: wait for the client (bounded above).
            None
        } else if looks_like_tls_record(client) {
            Some(Kind::Tls)
        } else if client.len() < CLIENT_PREFACE.len() && CLIENT_PREFACE.starts_with(client) {
            None
        } else if client.starts_with(CLIENT_PREFACE) {
            Some(Kind::Http2)
        } else if http1::looks_like_http_request(client) {
            Some(Kind::Http1)
        } else if client.len() >= 2 && client[0] == 4 && (client[1] == 1 || client[1] == 2) {
            Some(Kind::Socks4)
        } else if client.len() >= 2 && client[0] == 5 && client[1] >= 1 && client[1] <= 16 {
            Some(Kind::Socks5)
        } else if client.len() < 8 && maybe_prefix(client) {
            None
        } else {
            Some(Kind::Unknown)
        };
        let Some(kind) = decision else { return };
        let App::Detecting(p) = std::mem::replace(self, App::Ignore) else {
            return;
        };
        let Pending {
            bufs: [c, s],
            preambles,
        } = *p;
        *self = match kind {
            Kind::Ssh => App::Ssh(Box::new(SshSession::new(ctx.cfg))),
            Kind::Tls => App::Tls(Box::new(TlsSession::new())),
            Kind::Http1 => App::Http1(Box::new(Http1Client::new(preambles))),
            Kind::Http2 => App::Http2(Box::new(Http2Client::new())),
            Kind::Socks4 if preambles < MAX_PREAMBLES => {
                App::Preamble(Box::new(Preamble::new(ProxyKind::Socks4, preambles)))
            }
            Kind::Socks5 if preambles < MAX_PREAMBLES => {
                App::Preamble(Box::new(Preamble::new(ProxyKind::Socks5, preambles)))
            }
            _ => App::Ignore,
        };
        // Replay what was held: client first, so TLS sees the ClientHello before the
        // ServerHello (the client random keys the secrets).
        if !c.is_empty() {
            self.on_bytes(ctx, C2S, &c);
        }
        if !s.is_empty() {
            self.on_bytes(ctx, S2C, &s);
        }
    }

    /// Consumes the proxy preamble; once both directions are through, detection restarts
    /// on what follows.
    fn advance_preamble(&mut self, ctx: &mut Ctx<'_>) {
        let App::Preamble(p) = self else { return };
        for dir in [C2S, S2C] {
            while !p.done[dir] {
                match p.step(dir) {
                    Step::Consumed(n) => {
                        p.bufs[dir].drain(..n.min(p.bufs[dir].len()));
                        if dir == C2S && p.done[C2S] && p.kind != ProxyKind::HttpConnect {
                            ctx.socks_request = true;
                        }
                    }
                    Step::NeedMore => break,
                    Step::Failed => {
                        *self = App::Ignore;
                        return;
                    }
                }
            }
        }
        if p.done[C2S] && p.done[S2C] {
            let App::Preamble(p) = std::mem::replace(self, App::Ignore) else {
                return;
            };
            let Preamble {
                bufs: [c, s],
                preambles,
                ..
            } = *p;
            *self = App::Detecting(Box::new(Pending {
                bufs: [Vec::new(), Vec::new()],
                preambles: preambles + 1,
            }));
            if !c.is_empty() {
                self.on_bytes(ctx, C2S, &c);
            }
            if !s.is_empty() {
                self.on_bytes(ctx, S2C, &s);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Ssh,
    Tls,
    Http1,
    Http2,
    Socks4,
    Socks5,
    Unknown,
}

/// Short client openings that could still become a known protocol.
fn maybe_prefix(client: &[u8]) -> bool {
    client.iter().all(|b| b.is_ascii_uppercase()) || client == [0x16] || client == [0x16, 0x03]
}

enum Step {
    Consumed(usize),
    NeedMore,
    Failed,
}

impl Preamble {
    fn new(kind: ProxyKind, preambles: u8) -> Self {
        Preamble {
            kind,
            bufs: [Vec::new(), Vec::new()],
            done: [false; 2],
            socks5_stage: [0; 2],
            preambles,
        }
    }

    /// Consumes one preamble message of `dir` if complete.
    fn step(&mut self, dir: usize) -> Step {
        let buf = &self.bufs[dir];
        let step = match (self.kind, dir) {
            (ProxyKind::Socks4, C2S) => socks4_request_len(buf),
            (ProxyKind::Socks4, _) => fixed(buf, 8, |b| b[0] == 0),
            (ProxyKind::Socks5, C2S) if self.socks5_stage[dir] == 0 => socks5_greeting_len(buf),
            (ProxyKind::Socks5, C2S) => socks5_address_message_len(buf),
            (ProxyKind::Socks5, _) if self.socks5_stage[dir] == 0 => {
                fixed(buf, 2, |b| b[0] == 5 && b[1] == 0)
            }
            (ProxyKind::Socks5, _) => socks5_address_message_len(buf),
            (ProxyKind::HttpConnect, C2S) => Step::Consumed(0),
            (ProxyKind::HttpConnect, _) => match http1::parse_response_head(buf) {
                Ok(Some((resp, len))) if (200..300).contains(&resp.status) => Step::Consumed(len),
                Ok(Some(_)) | Err(_) => Step::Failed,
                Ok(None) => Step::NeedMore,
            },
        };
        if let Step::Consumed(_) = step {
            match self.kind {
                ProxyKind::Socks5 if self.socks5_stage[dir] == 0 => self.socks5_stage[dir] = 1,
                _ => self.done[dir] = true,
            }
        }
        step
    }
}

fn fixed(buf: &[u8], n: usize, ok: impl Fn(&[u8]) -> bool) -> Step {
    match buf.get(..n) {
        None => Step::NeedMore,
        Some(b) if ok(b) => Step::Consumed(n),
        Some(_) => Step::Failed,
    }
}

/// SOCKS4: VN CD DSTPORT(2) DSTIP(4) USERID NUL, and for 4a (IP 0.0.0.x) a host name NUL.
fn socks4_request_len(buf: &[u8]) -> Step {
    if buf.len() < 9 {
        return Step::NeedMore;
    }
    let Some(user_end) = buf[8..].iter().position(|&b| b == 0).map(|p| 8 + p + 1) else {
        return if buf.len() > 1024 {
            Step::Failed
        } else {
            Step::NeedMore
        };
    };
    let is_4a = buf[4] == 0 && buf[5] == 0 && buf[6] == 0 && buf[7] != 0;
    if !is_4a {
        return Step::Consumed(user_end);
    }
    match buf[user_end..].iter().position(|&b| b == 0) {
        Some(p) => Step::Consumed(user_end + p + 1),
        None if buf.len() > 1024 => Step::Failed,
        None => Step::NeedMore,
    }
}

/// SOCKS5 greeting: VER NMETHODS METHODS...
fn socks5_greeting_len(buf: &[u8]) -> Step {
    match buf.get(1) {
        None => Step::NeedMore,
        Some(&n) => {
            let len = 2 + n as usize;
            if buf.len() >= len {
                Step::Consumed(len)
            } else {
                Step::NeedMore
            }
        }
    }
}

/// SOCKS5 request or reply: VER CMD/REP RSV ATYP ADDR PORT.
fn socks5_address_message_len(buf: &[u8]) -> Step {
    if buf.len() < 5 {
        return Step::NeedMore;
    }
    if buf[0] != 5 {
        return Step::Failed;
    }
    let addr_len = match buf[3] {
        1 => 4,
        4 => 16,
        3 => 1 + buf[4] as usize,
        _ => return Step::Failed,
    };
    let len = 4 + addr_len + 2;
    if buf.len() >= len {
        Step::Consumed(len)
    } else {
        Step::NeedMore
    }
}
