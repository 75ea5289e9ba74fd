//! HTTP/2 (RFC 9113), client side only: enough framing to pull request header blocks out of
//! the client-to-server byte stream, and HPACK to decode them.
//!
//! The parser is fed the stream in whatever pieces it arrives (TCP segments, decrypted TLS
//! records), starting with the connection preface. It buffers at most one frame header and one
//! header block; DATA and every other frame type are skipped by counting bytes, so a large
//! upload costs nothing. Each header block is HPACK-decoded in order (trailers too, since
//! every block can change the dynamic table) and those carrying `:method` come out as
//! [`HttpRequest`]s with version [`HttpVersion::Http2`] and every field, pseudo-headers
//! included, in block order.

pub mod hpack;
mod huffman;

pub use huffman::HuffmanError;

use thiserror::Error;

use crate::bytes::Reader;
use crate::http1::{HttpRequest, HttpVersion};

/// The client connection preface (RFC 9113 §3.4). A cleartext stream that starts with it is
/// HTTP/2 with prior knowledge (`h2c`), whatever the port.
pub const CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest frame payload the format can express (24-bit length). Frames are never buffered
/// whole unless they carry a header block, which has its own, smaller cap.
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;

const FRAME_HEADER_LEN: usize = 9;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;

const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Why the client stream stopped being parsable. After any error the parser is finished
/// with this connection (HPACK state cannot be recovered).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Http2Error {
    /// The stream does not start with [`CLIENT_PREFACE`].
    #[error("missing HTTP/2 client connection preface")]
    BadPreface,
    /// A header block (HEADERS plus CONTINUATION frames) over [`hpack::MAX_BLOCK_LEN`].
    #[error("header block longer than {} bytes", hpack::MAX_BLOCK_LEN)]
    HeaderBlockTooLarge,
    /// A framing rule was broken; the text says which.
    #[error("HTTP/2 protocol error: {0}")]
    Protocol(&'static str),
    /// A header block failed to decode.
    #[error("HPACK: {0}")]
    Hpack(#[from] hpack::HpackError),
    /// An earlier call failed; the parser no longer accepts data.
    #[error("HTTP/2 parser stopped after an earlier error")]
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    len: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Matching the preface; `matched` bytes seen so far.
    Preface { matched: usize },
    /// Collecting the 9-byte frame header.
    FrameHeader,
    /// Buffering the payload of a HEADERS or CONTINUATION frame.
    Payload(FrameHeader),
    /// Skipping the payload of any other frame.
    Skip { left: usize },
    /// An error happened; nothing more is parsed.
    Stopped,
}

/// Incremental parser for the client-to-server half of one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct Http2RequestParser {
    state: State,
    header_buf: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload: Vec<u8>,
    /// Header block fragments of a block whose END_HEADERS has not been seen yet.
    block: Vec<u8>,
    /// Stream of the open header block, if any (CONTINUATION must follow on it).
    block_stream: Option<u32>,
    decoder: hpack::Decoder,
}

impl Default for Http2RequestParser {
    fn default() -> Self {
        Self::new()
    }
}

impl Http2RequestParser {
    /// A parser that expects the stream to begin with [`CLIENT_PREFACE`].
    pub fn new() -> Self {
        Http2RequestParser {
            state: State::Preface { matched: 0 },
            header_buf: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload: Vec::new(),
            block: Vec::new(),
            block_stream: None,
            decoder: hpack::Decoder::new(),
        }
    }

    /// True once an error has stopped the parser.
    pub fn has_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Feeds the next bytes of the client-to-server stream and appends every request whose
    /// header block completed to `out`. Requests completed before an error are still
    /// appended; after an error every call returns [`Http2Error::Stopped`].
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<HttpRequest>) -> Result<(), Http2Error> {
        if self.state == State::Stopped {
            return Err(Http2Error::Stopped);
        }
        let result = self.feed_inner(data, out);
        if result.is_err() {
            self.state = State::Stopped;
            self.payload = Vec::new();
            self.block = Vec::new();
        }
        result
    }

    /// Like [`Self::feed`], returning the completed requests. If an error stops the parser
    /// after some requests completed in the same call, those requests are returned and the
    /// error shows up as [`Http2Error::Stopped`] on the next call.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<HttpRequest>, Http2Error> {
        let mut out = Vec::new();
        match self.feed(data, &mut out) {
            Err(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }

    fn feed_inner(&mut self, data: &[u8], out: &mut Vec<HttpRequest>) -> Result<(), Http2Error> {
        let mut r = Reader::new(data);
        while !r.is_empty() {
            match self.state {
                State::Stopped => return Err(Http2Error::Stopped),
                State::Preface { matched } => {
                    let want = CLIENT_PREFACE.get(matched..).unwrap_or_default();
                    let n = want.len().min(r.remaining());
                    let got = r.take(n).unwrap_or_default();
                    if want.get(..n) != Some(got) {
                        return Err(Http2Error::BadPreface);
                    }
                    self.state = if matched + n == CLIENT_PREFACE.len() {
                        State::FrameHeader
                    } else {
                        State::Preface {
                            matched: matched + n,
                        }
                    };
                }
                State::FrameHeader => {
                    let n = (FRAME_HEADER_LEN - self.header_len).min(r.remaining());
                    let got = r.take(n).unwrap_or_default();
                    if let Some(dst) = self
                        .header_buf
                        .get_mut(self.header_len..self.header_len + n)
                    {
                        dst.copy_from_slice(got);
                    }
                    self.header_len += n;
                    if self.header_len == FRAME_HEADER_LEN {
                        self.header_len = 0;
                        let header = parse_frame_header(&self.header_buf);
                        self.start_frame(header, out)?;
                    }
                }
                State::Payload(header) => {
                    let n = (header.len - self.payload.len()).min(r.remaining());
                    self.payload
                        .extend_from_slice(r.take(n).unwrap_or_default());
                    if self.payload.len() == header.len {
                        self.state = State::FrameHeader;
                        let payload = std::mem::take(&mut self.payload);
                        self.header_frame(header, &payload, out)?;
                    }
                }
                State::Skip { left } => {
                    let n = left.min(r.remaining());
                    r.skip(n);
                    self.state = if left == n {
                        State::FrameHeader
                    } else {
                        State::Skip { left: left - n }
                    };
                }
            }
        }
        Ok(())
    }

    /// Decides what to do with a frame once its header is known.
    fn start_frame(
        &mut self,
        header: FrameHeader,
        out: &mut Vec<HttpRequest>,
    ) -> Result<(), Http2Error> {
        if let Some(open) = self.block_stream {
            // RFC 9113 §6.10: nothing may interleave with an open header block.
            if header.kind != TYPE_CONTINUATION || header.stream_id != open {
                return Err(Http2Error::Protocol("header block interrupted"));
            }
        }
        match header.kind {
            TYPE_HEADERS | TYPE_CONTINUATION => {
                if header.len > hpack::MAX_BLOCK_LEN.saturating_sub(self.block.len()) {
                    return Err(Http2Error::HeaderBlockTooLarge);
                }
                if header.len == 0 {
                    self.state = State::FrameHeader;
                    self.header_frame(header, &[], out)
                } else {
                    self.state = State::Payload(header);
                    Ok(())
                }
            }
            TYPE_PUSH_PROMISE => Err(Http2Error::Protocol("PUSH_PROMISE sent by a client")),
            _ => {
                self.state = if header.len == 0 {
                    State::FrameHeader
                } else {
                    State::Skip { left: header.len }
                };
                Ok(())
            }
        }
    }

    /// Handles a complete HEADERS or CONTINUATION payload.
    fn header_frame(
        &mut self,
        header: FrameHeader,
        payload: &[u8],
        out: &mut Vec<HttpRequest>,
    ) -> Result<(), Http2Error> {
        if header.stream_id == 0 {
            return Err(Http2Error::Protocol("header block on stream 0"));
        }
        let fragment = if header.kind == TYPE_HEADERS {
            headers_fragment(header.flags, payload)?
        } else {
            if self.block_stream.is_none() {
                return Err(Http2Error::Protocol("CONTINUATION without HEADERS"));
            }
            payload
        };
        self.block.extend_from_slice(fragment);
        if header.flags & FLAG_END_HEADERS == 0 {
            self.block_stream = Some(header.stream_id);
            return Ok(());
        }
        self.block_stream = None;
        let block = std::mem::take(&mut self.block);
        let fields = self.decoder.decode(&block)?;
        if let Some(request) = request_from_fields(fields) {
            out.push(request);
        }
        Ok(())
    }
}

fn parse_frame_header(b: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
    let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *b;
    FrameHeader {
        len: usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2),
        kind,
        flags,
        stream_id: u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff,
    }
}

/// The header block fragment inside a HEADERS payload, without padding and priority fields
/// (RFC 9113 §6.2).
fn headers_fragment(flags: u8, payload: &[u8]) -> Result<&[u8], Http2Error> {
    let mut r = Reader::new(payload);
    let pad_len = if flags & FLAG_PADDED != 0 {
        usize::from(r.u8().ok_or(Http2Error::Protocol("HEADERS too short"))?)
    } else {
        0
    };
    if flags & FLAG_PRIORITY != 0 {
        r.skip(5).ok_or(Http2Error::Protocol("HEADERS too short"))?;
    }
    let rest = r.rest();
    let keep = rest
        .len()
        .checked_sub(pad_len)
        .ok_or(Http2Error::Protocol("padding longer than HEADERS payload"))?;
    Ok(rest.get(..keep).unwrap_or_default())
}

/// A request from a decoded block if it has `:method`; trailers and anything else give
/// `None`.
fn request_from_fields(fields: Vec<hpack::HeaderField>) -> Option<HttpRequest> {
    let method = fields
        .iter()
        .find(|(n, _)| n.as_slice() == b":method")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())?;
    let headers = fields
        .into_iter()
        .map(|(n, v)| (String::from_utf8_lossy(&n).into_owned(), v))
        .collect();
    Some(HttpRequest {
        method,
        version: HttpVersion::Http2,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// A literal field without indexing, new name, plain strings.
    fn lit(name: &str, value: &str) -> Vec<u8> {
        let mut b = vec![0x00, name.len() as u8];
        b.extend_from_slice(name.as_bytes());
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
        b
    }

    /// A client stream: preface, SETTINGS, WINDOW_UPDATE, then the given frames.
    fn stream(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut s = CLIENT_PREFACE.to_vec();
        s.extend(frame(0x4, 0, 0, &[0, 1, 0, 0, 0x10, 0]));
        s.extend(frame(0x8, 0, 0, &[0, 0x0f, 0, 1]));
        for f in frames {
            s.extend_from_slice(f);
        }
        s
    }

    fn names(r: &HttpRequest) -> Vec<&str> {
        r.headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn parse_all(data: &[u8]) -> (Vec<HttpRequest>, Result<(), Http2Error>) {
        let mut p = Http2RequestParser::new();
        let mut out = Vec::new();
        let res = p.feed(data, &mut out);
        (out, res)
    }

    #[test]
    fn rfc7541_requests_across_frames_and_byte_feeding() {
        // The RFC 7541 C.4 request blocks, sent as three HEADERS frames on streams 1, 3, 5;
        // the third split into HEADERS (padded, with priority) + CONTINUATION.
        let b1 = unhex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
        let b2 = unhex("8286 84be 5886 a8eb 1064 9cbf");
        let b3 = unhex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf");
        let mut h3 = vec![3u8]; // pad length
        h3.extend_from_slice(&[0x80, 0, 0, 1, 200]); // exclusive dependency on 1, weight
        h3.extend_from_slice(&b3[..5]);
        h3.extend_from_slice(&[0, 0, 0]);
        let data = stream(&[
            frame(0x1, FLAG_END_HEADERS | 0x1, 1, &b1),
            frame(0x0, 0x1, 1, b"ignored body"),
            frame(0x1, FLAG_END_HEADERS, 3, &b2),
            frame(0x1, FLAG_PADDED | FLAG_PRIORITY, 5, &h3),
            frame(0x9, FLAG_END_HEADERS, 5, &b3[5..]),
        ]);
        let (all_at_once, res) = parse_all(&data);
        res.unwrap();
        assert_eq!(all_at_once.len(), 3);
        assert_eq!(all_at_once[0].method, "GET");
        assert_eq!(all_at_once[0].version, HttpVersion::Http2);
        assert_eq!(
            names(&all_at_once[1]),
            [":method", ":scheme", ":path", ":authority", "cache-control"]
        );
        assert_eq!(
            all_at_once[2].headers[4],
            ("custom-key".to_string(), b"custom-value".to_vec())
        );
        assert_eq!(all_at_once[2].header(":path"), Some(&b"/index.html"[..]));

        let mut p = Http2RequestParser::new();
        let mut byte_by_byte = Vec::new();
        for b in &data {
            p.feed(std::slice::from_ref(b), &mut byte_by_byte).unwrap();
        }
        assert_eq!(byte_by_byte, all_at_once);
    }

    #[test]
    fn trailers_are_not_requests() {
        let mut req = vec![0x83, 0x84, 0x86]; // POST, /, http
        req.extend(lit("content-type", "text/plain"));
        let trailer = lit("x-checksum", "abc");
        let data = stream(&[
            frame(0x1, FLAG_END_HEADERS, 1, &req),
            frame(0x0, 0, 1, &[0u8; 100]),
            frame(0x1, FLAG_END_HEADERS | 0x1, 1, &trailer),
        ]);
        let (out, res) = parse_all(&data);
        res.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].method, "POST");
        assert_eq!(
            names(&out[0]),
            [":method", ":path", ":scheme", "content-type"]
        );
    }

    #[test]
    fn large_data_frames_are_skipped_not_buffered() {
        let mut data = stream(&[]);
        // A 16 MiB - 1 DATA frame header, fed without its payload: nothing is held.
        data.extend(&frame(0x0, 0, 1, &[])[..]);
        data[CLIENT_PREFACE.len() + 9 + 6 + 9 + 4..][..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        let mut p = Http2RequestParser::new();
        let mut out = Vec::new();
        p.feed(&data, &mut out).unwrap();
        assert_eq!(
            p.state,
            State::Skip {
                left: MAX_FRAME_LEN
            }
        );
        p.feed(&vec![0u8; 1 << 20], &mut out).unwrap();
        assert!(p.payload.capacity() == 0 && p.block.capacity() == 0);
        assert_eq!(
            p.state,
            State::Skip {
                left: MAX_FRAME_LEN - (1 << 20)
            }
        );
    }

    #[test]
    fn protocol_errors_stop_the_parser() {
        let (_, res) = parse_all(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(res, Err(Http2Error::BadPreface));

        // HEADERS without END_HEADERS, then a DATA frame.
        let data = stream(&[frame(0x1, 0, 1, &[0x82]), frame(0x0, 0, 1, b"x")]);
        let mut p = Http2RequestParser::new();
        let mut out = Vec::new();
        assert_eq!(
            p.feed(&data, &mut out),
            Err(Http2Error::Protocol("header block interrupted"))
        );
        assert!(p.has_stopped());
        assert_eq!(p.feed(b"more", &mut out), Err(Http2Error::Stopped));

        let (_, res) = parse_all(&stream(&[frame(0x9, FLAG_END_HEADERS, 1, &[0x82])]));
        assert_eq!(
            res,
            Err(Http2Error::Protocol("CONTINUATION without HEADERS"))
        );

        let (_, res) = parse_all(&stream(&[frame(0x1, FLAG_END_HEADERS, 0, &[0x82])]));
        assert_eq!(res, Err(Http2Error::Protocol("header block on stream 0")));

        let (_, res) = parse_all(&stream(&[frame(
            0x1,
            FLAG_PADDED | FLAG_END_HEADERS,
            1,
            &[9, 0x82],
        )]));
        assert_eq!(
            res,
            Err(Http2Error::Protocol("padding longer than HEADERS payload"))
        );

        let big = vec![0u8; hpack::MAX_BLOCK_LEN + 1];
        let (_, res) = parse_all(&stream(&[frame(0x1, FLAG_END_HEADERS, 1, &big)]));
        assert_eq!(res, Err(Http2Error::HeaderBlockTooLarge));

        // A request completed before the error is still delivered.
        let data = stream(&[
            frame(0x1, FLAG_END_HEADERS, 1, &[0x82, 0x84, 0x86]),
            frame(0x1, FLAG_END_HEADERS, 3, &[0x80]),
        ]);
        let (out, res) = parse_all(&data);
        assert_eq!(out.len(), 1);
        assert_eq!(
            res,
            Err(Http2Error::Hpack(hpack::HpackError::InvalidIndex(0)))
        );
    }

    #[test]
    fn truncations_and_garbage_never_panic() {
        let mut h = vec![0x82, 0x84, 0x86, 0x41, 0x8c];
        h.extend(unhex("f1e3 c2e5 f23a 6ba0 ab90 f4ff"));
        h.extend(lit("cookie", "a=b"));
        let data = stream(&[
            frame(
                0x1,
                FLAG_PADDED | FLAG_PRIORITY,
                1,
                &[2, 0, 0, 0, 0, 16, 0x82, 0x84, 0, 0],
            ),
            frame(0x9, FLAG_END_HEADERS, 1, &h),
            frame(0x0, 0x1, 1, b"body"),
        ]);
        for cut in 0..=data.len() {
            let (_, res) = parse_all(&data[..cut]);
            res.unwrap();
            let (_, _) = parse_all(&data[cut..]);
        }
        let mut x = 0x0bad_f00du32;
        for _ in 0..500 {
            let mut buf = stream(&[]);
            let len = (x % 300) as usize;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Small lengths and the interesting frame types show up often.
                buf.push(match x % 5 {
                    0 => 0,
                    1 => (x >> 8) as u8 % 10,
                    _ => (x >> 16) as u8,
                });
            }
            let mut p = Http2RequestParser::new();
            let mut out = Vec::new();
            for chunk in buf.chunks(7) {
                if p.feed(chunk, &mut out).is_err() {
                    break;
                }
            }
        }
    }
}
