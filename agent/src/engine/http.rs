//! HTTP requests from a client byte stream (cleartext or decrypted TLS): one JA4H per
//! request, HTTP/1 with pipelining/keep-alive and HTTP/2 with HPACK.

use hais_dissect::http1::{self, BodyLength, ChunkedSkipper, HttpRequest};
use hais_dissect::http2::Http2RequestParser;

use super::Ctx;
#[cfg(feature = "ja4plus")]
use super::fingerprints::Print;

/// Most bytes held while waiting for the end of a request head.
const MAX_BUFFER: usize = 64 * 1024;

/// Records the JA4H of one request.
pub(crate) fn record_request(ctx: &mut Ctx<'_>, req: &HttpRequest) {
    #[cfg(feature = "ja4plus")]
    {
        let h = hais_ja4plus::ja4h::ja4h(req);
        let (hashed, raw) = if ctx.cfg.original_order {
            (h.ja4h_o, h.ja4h_ro)
        } else {
            (h.ja4h, h.ja4h_r)
        };
        ctx.fp.http.push(Print {
            hashed,
            raw,
            pkt: ctx.pkt,
        });
    }
    #[cfg(not(feature = "ja4plus"))]
    let _ = (ctx, req);
}

/// What the HTTP/1 parser tells its owner.
#[derive(Debug)]
pub(crate) enum HttpEvent {
    Nothing,
    /// A CONNECT request went by; the bytes after it belong to the tunnel.
    Connect(Vec<u8>),
}

#[derive(Debug)]
enum Body {
    None,
    Fixed(u64),
    Chunked(ChunkedSkipper),
}

/// Client side of an HTTP/1 connection.
#[derive(Debug)]
pub(crate) struct Http1Client {
    buf: Vec<u8>,
    body: Body,
    done: bool,
    /// Proxy preambles already crossed on this connection (bounds CONNECT nesting).
    pub(crate) preambles: u8,
}

impl Http1Client {
    pub(crate) fn new(preambles: u8) -> Self {
        Http1Client {
            buf: Vec::new(),
            body: Body::None,
            done: false,
            preambles,
        }
    }

    pub(crate) fn wants_bytes(&self) -> bool {
        !self.done
    }

    pub(crate) fn on_bytes(&mut self, ctx: &mut Ctx<'_>, mut bytes: &[u8]) -> HttpEvent {
        if self.done {
            return HttpEvent::Nothing;
        }
        // Skip the body of the previous request without buffering it.
        loop {
            match &mut self.body {
                Body::None => break,
                Body::Fixed(n) => {
                    let take = (*n).min(bytes.len() as u64) as usize;
                    *n -= take as u64;
                    bytes = &bytes[take..];
                    if *n == 0 {
                        self.body = Body::None;
                    }
                    if bytes.is_empty() {
                        return HttpEvent::Nothing;
                    }
                }
                Body::Chunked(sk) => match sk.feed(bytes) {
                    Ok(used) => {
                        bytes = &bytes[used.min(bytes.len())..];
                        if sk.is_done() {
                            self.body = Body::None;
                        } else {
                            return HttpEvent::Nothing;
                        }
                    }
                    Err(_) => {
                        self.done = true;
                        return HttpEvent::Nothing;
                    }
                },
            }
        }
        if self.buf.len() + bytes.len() > MAX_BUFFER {
            self.done = true;
            ctx.stats.error("http.head_too_large");
            return HttpEvent::Nothing;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            if self.buf.is_empty() {
                return HttpEvent::Nothing;
            }
            match http1::parse_request_head(&self.buf) {
                Ok(None) => return HttpEvent::Nothing,
                Ok(Some((req, used))) => {
                    record_request(ctx, &req);
                    let rest = self.buf.split_off(used.min(self.buf.len()));
                    self.buf = rest;
                    if req.method == "CONNECT" {
                        self.done = true;
                        return HttpEvent::Connect(std::mem::take(&mut self.buf));
                    }
                    match http1::request_body_len(&req) {
                        Ok(BodyLength::Empty) => {}
                        Ok(BodyLength::Fixed(n)) => self.body = Body::Fixed(n),
                        Ok(BodyLength::Chunked) => self.body = Body::Chunked(ChunkedSkipper::new()),
                        Ok(BodyLength::UntilClose) | Err(_) => {
                            self.done = true;
                            return HttpEvent::Nothing;
                        }
                    }
                    if !matches!(self.body, Body::None) {
                        let rest = std::mem::take(&mut self.buf);
                        return self.on_bytes(ctx, &rest);
                    }
                }
                Err(_) => {
                    ctx.stats.error("http.bad_request");
                    self.done = true;
                    return HttpEvent::Nothing;
                }
            }
        }
    }
}

/// Client side of an HTTP/2 connection.
#[derive(Debug)]
pub(crate) struct Http2Client {
    parser: Http2RequestParser,
    done: bool,
}

impl Http2Client {
    pub(crate) fn new() -> Self {
        Http2Client {
            parser: Http2RequestParser::new(),
            done: false,
        }
    }

    pub(crate) fn wants_bytes(&self) -> bool {
        !self.done
    }

    pub(crate) fn on_bytes(&mut self, ctx: &mut Ctx<'_>, bytes: &[u8]) {
        if self.done {
            return;
        }
        match self.parser.push(bytes) {
            Ok(requests) => {
                for req in &requests {
                    record_request(ctx, req);
                }
            }
            Err(_) => {
                ctx.stats.error("http2.bad_frame");
                self.done = true;
            }
        }
    }
}
