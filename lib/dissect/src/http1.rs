//! HTTP/1.x message heads: just enough of RFC 9112 to fingerprint requests (JA4H) and to
//! follow a connection through pipelined requests, bodies and `CONNECT` tunnels.
//!
//! The parsers are incremental: they are handed whatever bytes of the stream have arrived and
//! answer "need more" (`Ok(None)`), "here is a head and how many bytes it used", or an error.
//! They never look past the head, so the caller skips bodies itself, guided by
//! [`request_body_len`] / [`HttpResponse::body_len`] and [`ChunkedSkipper`].
//!
//! [`HttpRequest`] is also what the HTTP/2 parser produces, so the JA4H code has one input type
//! for every HTTP version.

use thiserror::Error;

/// Largest request or response head accepted. Real browsers stay far below this (Chrome caps
/// its own at 256 KiB, servers commonly at 8-64 KiB); anything longer is not worth buffering.
pub const MAX_HEAD_LEN: usize = 64 * 1024;

/// Largest number of header fields kept from one head (shared with HTTP/2).
pub const MAX_HEADERS: usize = 1000;

/// The HTTP version a request was sent with; JA4H prints it as two digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    /// `HTTP/1.0`
    Http10,
    /// `HTTP/1.1`
    Http11,
    /// HTTP/2 (binary framing, HPACK)
    Http2,
    /// HTTP/3 (QUIC, QPACK); no parser yet, the value exists so callers can name it.
    Http3,
}

/// One client request head, whatever the HTTP version.
///
/// Header names are kept exactly as sent (case, order, duplicates) because JA4H hashes them
/// that way. For HTTP/2 the pseudo-header fields (`:method`, `:path`, ...) are kept in the list
/// in block order; consumers that do not want them skip names starting with `:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method token as sent (`GET`, `PROPFIND`, ...).
    pub method: String,
    /// Protocol version of the request.
    pub version: HttpVersion,
    /// Header fields as (name, raw value), in wire order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl HttpRequest {
    /// Values of every header whose name matches `name` case-insensitively, in wire order.
    pub fn header_values<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.header_values(name).next()
    }
}

/// A response head: the status code is what the engine needs (to see a `CONNECT` tunnel come
/// up, or to skip a response body), the headers for body framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Protocol version from the status line.
    pub version: HttpVersion,
    /// Three-digit status code.
    pub status: u16,
    /// Header fields as (name, raw value), in wire order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// How the message body that follows a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body follows the head.
    Empty,
    /// Exactly this many bytes follow (`Content-Length`).
    Fixed(u64),
    /// `Transfer-Encoding: chunked`; feed the bytes after the head to a [`ChunkedSkipper`].
    Chunked,
    /// The body runs until the connection closes (responses only).
    UntilClose,
}

/// Why a head could not be parsed. Any of these means the stream is not (or no longer) HTTP/1
/// the parser understands; the caller should stop parsing that direction.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HttpError {
    /// No end of head within [`MAX_HEAD_LEN`] bytes.
    #[error("HTTP head longer than {MAX_HEAD_LEN} bytes")]
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header lines.
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    /// The request line is not `METHOD SP target SP HTTP/x.y`.
    #[error("malformed request line")]
    BadRequestLine,
    /// The status line is not `HTTP/x.y SP 3DIGIT [SP reason]`.
    #[error("malformed status line")]
    BadStatusLine,
    /// A version other than HTTP/1.0 or HTTP/1.1.
    #[error("unsupported HTTP version")]
    BadVersion,
    /// The stream starts with the HTTP/2 connection preface (`PRI * HTTP/2.0`): hand it to the
    /// HTTP/2 parser instead.
    #[error("HTTP/2 connection preface, not an HTTP/1 request")]
    Http2Preface,
    /// A header line without a colon or with an empty name.
    #[error("malformed header line")]
    BadHeader,
    /// `Content-Length` is not a number, or two of them disagree.
    #[error("invalid Content-Length")]
    BadContentLength,
    /// A chunk-size line that is not hexadecimal or overflows.
    #[error("malformed chunked body")]
    BadChunk,
}

/// Content detection: does `buf` start like an HTTP/1 request line?
///
/// True when the data begins with an upper-case method token of 3 to 16 characters (`A`-`Z`,
/// `-`, `_`, so `M-SEARCH` and `CONNECT host:port HTTP/1.1` qualify) followed by a space. The
/// HTTP/2 preface (`PRI * HTTP/2.0`) is excluded: it is not an HTTP/1 request, see
/// [`crate::http2::CLIENT_PREFACE`]. Ports are never consulted, so HTTP on any port is found.
pub fn looks_like_http_request(buf: &[u8]) -> bool {
    if buf.starts_with(b"PRI * HTTP/2") {
        return false;
    }
    let token_len = buf
        .iter()
        .take(17)
        .take_while(|b| b.is_ascii_uppercase() || **b == b'-' || **b == b'_')
        .count();
    (3..=16).contains(&token_len)
        && buf.first().is_some_and(u8::is_ascii_uppercase)
        && buf.get(token_len) == Some(&b' ')
}

/// Parses a request head at the start of `buf`.
///
/// Returns `Ok(None)` while the blank line that ends the head has not arrived, and
/// `Ok(Some((request, consumed)))` once it has, `consumed` counting everything up to and
/// including that blank line (plus any empty lines before the request line, which RFC 9112
/// tells servers to ignore). Bare LF line endings are accepted, as tshark does. The request
/// line's version is its last space-separated token, so targets containing spaces
/// (`GET /Hello Arkime HTTP/1.0`) still parse.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(HttpRequest, usize)>, HttpError> {
    let start = skip_leading_newlines(buf);
    let rest = buf.get(start..).unwrap_or_default();
    if rest.starts_with(crate::http2::CLIENT_PREFACE)
        || (rest.len() < crate::http2::CLIENT_PREFACE.len()
            && crate::http2::CLIENT_PREFACE.starts_with(rest)
            && rest.len() >= 4)
    {
        return Err(HttpError::Http2Preface);
    }
    let Some(head_len) = find_head_end(rest)? else {
        return Ok(None);
    };
    let head = rest.get(..head_len).unwrap_or_default();
    let mut lines = Lines::new(head);
    let request_line = lines.next().ok_or(HttpError::BadRequestLine)?;
    let (method, version) = parse_request_line(request_line)?;
    let headers = parse_header_lines(lines)?;
    Ok(Some((
        HttpRequest {
            method,
            version,
            headers,
        },
        start + head_len,
    )))
}

/// Parses a response head at the start of `buf`; same contract as [`parse_request_head`].
///
/// Interim `1xx` responses are returned like any other; the caller decides to keep reading.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(HttpResponse, usize)>, HttpError> {
    let start = skip_leading_newlines(buf);
    let rest = buf.get(start..).unwrap_or_default();
    let Some(head_len) = find_head_end(rest)? else {
        return Ok(None);
    };
    let head = rest.get(..head_len).unwrap_or_default();
    let mut lines = Lines::new(head);
    let status_line = lines.next().ok_or(HttpError::BadStatusLine)?;
    let (version, status) = parse_status_line(status_line)?;
    let headers = parse_header_lines(lines)?;
    Ok(Some((
        HttpResponse {
            version,
            status,
            headers,
        },
        start + head_len,
    )))
}

/// How the body after `req`'s head is framed (RFC 9112 §6.3 for requests): chunked when the
/// last transfer coding is `chunked`, else `Content-Length`, else no body.
pub fn request_body_len(req: &HttpRequest) -> Result<BodyLength, HttpError> {
    body_len_from_headers(&req.headers, BodyLength::Empty)
}

impl HttpResponse {
    /// How the body after this head is framed (RFC 9112 §6.3). Responses to `HEAD` and `2xx`
    /// responses to `CONNECT` have no body whatever the headers say; only the caller knows the
    /// request method, so it must handle those two cases itself.
    pub fn body_len(&self) -> Result<BodyLength, HttpError> {
        if (100..200).contains(&self.status) || self.status == 204 || self.status == 304 {
            return Ok(BodyLength::Empty);
        }
        body_len_from_headers(&self.headers, BodyLength::UntilClose)
    }
}

fn body_len_from_headers(
    headers: &[(String, Vec<u8>)],
    otherwise: BodyLength,
) -> Result<BodyLength, HttpError> {
    let mut te_seen = false;
    let mut last_coding_chunked = false;
    for (_, v) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
    {
        te_seen = true;
        // The last coding of the last Transfer-Encoding field decides.
        if let Some(last) = v.split(|b| *b == b',').map(trim).rfind(|c| !c.is_empty()) {
            last_coding_chunked = last.eq_ignore_ascii_case(b"chunked");
        }
    }
    if te_seen {
        // A request whose final coding is not chunked cannot be delimited (RFC 9112 §6.3);
        // a response then runs until close.
        return Ok(if last_coding_chunked {
            BodyLength::Chunked
        } else {
            BodyLength::UntilClose
        });
    }
    let mut length: Option<u64> = None;
    for (_, v) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        // "Content-Length: 5, 5" (a merged duplicate) is allowed when the values agree.
        for part in v.split(|b| *b == b',') {
            let n = parse_decimal(trim(part)).ok_or(HttpError::BadContentLength)?;
            match length {
                Some(prev) if prev != n => return Err(HttpError::BadContentLength),
                _ => length = Some(n),
            }
        }
    }
    Ok(match length {
        Some(0) => BodyLength::Empty,
        Some(n) => BodyLength::Fixed(n),
        None => otherwise,
    })
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, b| {
        let d = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        acc.checked_mul(10)?.checked_add(d)
    })
}

/// Skips a `Transfer-Encoding: chunked` body without buffering it (RFC 9112 §7.1), so the
/// caller can find the next pipelined request after it.
#[derive(Debug, Clone, Default)]
pub struct ChunkedSkipper {
    state: ChunkState,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex chunk size.
    #[default]
    SizeStart,
    /// Inside the size digits; `value` so far.
    Size { value: u64 },
    /// After the size: extensions or whitespace until the line feed.
    SizeRest { value: u64 },
    /// Chunk data still to skip.
    Data { left: u64 },
    /// The line ending after chunk data.
    DataEnd,
    /// At the start of a trailer line (after the last, zero-size chunk).
    TrailerStart,
    /// Inside a non-empty trailer line.
    TrailerLine,
    /// Saw CR at the start of a trailer line; the next LF ends the body.
    TrailerEndCr,
    /// The body is over.
    Done,
}

impl ChunkedSkipper {
    /// A skipper positioned at the first chunk-size line.
    pub fn new() -> Self {
        Self::default()
    }

    /// True once the terminating zero-size chunk and the trailer section have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes body bytes from the start of `buf` and returns how many belonged to the body.
    /// When fewer than `buf.len()` are consumed, the body ended and the rest is the next
    /// message ([`Self::is_done`] is then true).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, HttpError> {
        let mut i = 0usize;
        loop {
            let rest = buf.get(i..).unwrap_or_default();
            let Some(&b) = rest.first() else { break };
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data { left } => {
                    // Skip as much chunk data as is here without looking at it.
                    let take = usize::try_from(left).map_or(rest.len(), |l| l.min(rest.len()));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data { left }
                    };
                }
                state => {
                    self.state = state.step(b)?;
                    i += 1;
                }
            }
        }
        Ok(i)
    }
}

impl ChunkState {
    /// The state after one byte of the framing (everything except chunk data).
    fn step(self, b: u8) -> Result<ChunkState, HttpError> {
        Ok(match self {
            ChunkState::SizeStart => match hex_digit(b) {
                Some(d) => ChunkState::Size {
                    value: u64::from(d),
                },
                None => return Err(HttpError::BadChunk),
            },
            ChunkState::Size { value } => match hex_digit(b) {
                Some(d) => ChunkState::Size {
                    value: value
                        .checked_mul(16)
                        .and_then(|v| v.checked_add(u64::from(d)))
                        .ok_or(HttpError::BadChunk)?,
                },
                None => Self::after_size(value, b),
            },
            ChunkState::SizeRest { value } => Self::after_size(value, b),
            ChunkState::DataEnd => match b {
                b'\r' => ChunkState::DataEnd,
                b'\n' => ChunkState::SizeStart,
                _ => return Err(HttpError::BadChunk),
            },
            ChunkState::TrailerStart => match b {
                b'\r' => ChunkState::TrailerEndCr,
                b'\n' => ChunkState::Done,
                _ => ChunkState::TrailerLine,
            },
            ChunkState::TrailerEndCr => match b {
                b'\n' => ChunkState::Done,
                _ => ChunkState::TrailerLine,
            },
            ChunkState::TrailerLine => match b {
                b'\n' => ChunkState::TrailerStart,
                _ => ChunkState::TrailerLine,
            },
            // Handled by the caller; a byte never moves these states.
            ChunkState::Data { .. } | ChunkState::Done => self,
        })
    }

    fn after_size(value: u64, b: u8) -> ChunkState {
        if b == b'\n' {
            if value == 0 {
                ChunkState::TrailerStart
            } else {
                ChunkState::Data { left: value }
            }
        } else {
            // Chunk extensions, whitespace and the CR are skipped without interpretation.
            ChunkState::SizeRest { value }
        }
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn skip_leading_newlines(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count()
}

/// Length of the head (through the empty line), `None` if it is not complete yet.
fn find_head_end(buf: &[u8]) -> Result<Option<usize>, HttpError> {
    let window = buf.get(..buf.len().min(MAX_HEAD_LEN)).unwrap_or_default();
    let mut line_start = 0usize;
    for (i, b) in window.iter().enumerate() {
        if *b != b'\n' {
            continue;
        }
        let line = window.get(line_start..i).unwrap_or_default();
        // An empty line (or a lone CR) ends the head, unless it is the very first line.
        if (line.is_empty() || line == b"\r") && line_start > 0 {
            return Ok(Some(i + 1));
        }
        line_start = i + 1;
    }
    if buf.len() >= MAX_HEAD_LEN {
        Err(HttpError::HeadTooLarge)
    } else {
        Ok(None)
    }
}

/// Iterator over the lines of a complete head, without their CR/LF, stopping at the empty
/// line.
struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Lines<'a> {
    fn new(head: &'a [u8]) -> Self {
        Lines { rest: head }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let nl = self.rest.iter().position(|b| *b == b'\n')?;
        let line = self.rest.get(..nl)?;
        self.rest = self.rest.get(nl + 1..).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() { None } else { Some(line) }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_version(v: &[u8]) -> Result<HttpVersion, HttpError> {
    match v {
        b"HTTP/1.1" => Ok(HttpVersion::Http11),
        b"HTTP/1.0" => Ok(HttpVersion::Http10),
        _ => Err(HttpError::BadVersion),
    }
}

fn parse_request_line(line: &[u8]) -> Result<(String, HttpVersion), HttpError> {
    let sp = line
        .iter()
        .position(|b| *b == b' ')
        .ok_or(HttpError::BadRequestLine)?;
    let method = line.get(..sp).unwrap_or_default();
    if method.is_empty() || method.len() > 32 || !method.iter().all(|b| is_tchar(*b)) {
        return Err(HttpError::BadRequestLine);
    }
    let after = line.get(sp + 1..).unwrap_or_default();
    let after = trim_end(after);
    let last_sp = after
        .iter()
        .rposition(|b| *b == b' ')
        .ok_or(HttpError::BadRequestLine)?;
    let target = trim(after.get(..last_sp).unwrap_or_default());
    if target.is_empty() {
        return Err(HttpError::BadRequestLine);
    }
    let version_token = after.get(last_sp + 1..).unwrap_or_default();
    if !version_token.starts_with(b"HTTP/") {
        return Err(HttpError::BadRequestLine);
    }
    if method == b"PRI" && version_token == b"HTTP/2.0" {
        return Err(HttpError::Http2Preface);
    }
    let version = parse_version(version_token)?;
    Ok((String::from_utf8_lossy(method).into_owned(), version))
}

fn parse_status_line(line: &[u8]) -> Result<(HttpVersion, u16), HttpError> {
    let sp = line
        .iter()
        .position(|b| *b == b' ')
        .ok_or(HttpError::BadStatusLine)?;
    let version_token = line.get(..sp).unwrap_or_default();
    if !version_token.starts_with(b"HTTP/") {
        return Err(HttpError::BadStatusLine);
    }
    let version = parse_version(version_token)?;
    let code = line.get(sp + 1..sp + 4).ok_or(HttpError::BadStatusLine)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadStatusLine);
    }
    match line.get(sp + 4) {
        None | Some(b' ') => {}
        Some(_) => return Err(HttpError::BadStatusLine),
    }
    let status = code
        .iter()
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
    Ok((version, status))
}

fn parse_header_lines<'a>(
    lines: impl Iterator<Item = &'a [u8]>,
) -> Result<Vec<(String, Vec<u8>)>, HttpError> {
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    for line in lines {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            // Obsolete line folding (RFC 9112 §5.2): the line continues the previous value.
            let (_, value) = headers.last_mut().ok_or(HttpError::BadHeader)?;
            value.push(b' ');
            value.extend_from_slice(trim(line));
            continue;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        let colon = line
            .iter()
            .position(|b| *b == b':')
            .ok_or(HttpError::BadHeader)?;
        let name = line.get(..colon).unwrap_or_default();
        if name.is_empty() {
            return Err(HttpError::BadHeader);
        }
        let value = trim(line.get(colon + 1..).unwrap_or_default());
        headers.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    Ok(headers)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(s.len());
    trim_end(s.get(start..).unwrap_or_default())
}

fn trim_end(s: &[u8]) -> &[u8] {
    let end = s
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t' && *b != b'\r')
        .map_or(0, |p| p + 1);
    s.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(req: &HttpRequest) -> Vec<&str> {
        req.headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn crlf_request_with_duplicates_and_case() {
        let buf = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\naccept: */*\r\nX-A:1\r\nX-A:  2 \r\n\r\nNEXT";
        let (req, used) = parse_request_head(buf).unwrap().unwrap();
        assert_eq!(req.method, "GET");
        assert_eq!(req.version, HttpVersion::Http11);
        assert_eq!(names(&req), ["Host", "accept", "X-A", "X-A"]);
        assert_eq!(req.headers[3].1, b"2");
        assert_eq!(&buf[used..], b"NEXT");
        assert_eq!(req.header("ACCEPT"), Some(&b"*/*"[..]));
        assert_eq!(req.header_values("x-a").count(), 2);
    }

    #[test]
    fn bare_lf_and_empty_value() {
        // pcap/http-empty-useragent.pcap sends exactly this.
        let buf = b"GET / HTTP/1.0\nUser-Agent:\n\n";
        let (req, used) = parse_request_head(buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(req.version, HttpVersion::Http10);
        assert_eq!(req.headers, vec![("User-Agent".to_string(), Vec::new())]);
    }

    #[test]
    fn no_headers_and_space_in_target() {
        let buf = b"GET /Hello Arkime HTTP/1.0\r\n\r\n";
        let (req, used) = parse_request_head(buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(req.method, "GET");
        assert_eq!(req.version, HttpVersion::Http10);
        assert!(req.headers.is_empty());
    }

    #[test]
    fn incremental_needs_more_then_completes() {
        let full = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        for cut in 0..full.len() - 3 {
            assert_eq!(parse_request_head(&full[..cut]), Ok(None), "cut {cut}");
        }
        let (req, used) = parse_request_head(full).unwrap().unwrap();
        assert_eq!(used, full.len() - 3);
        assert_eq!(request_body_len(&req), Ok(BodyLength::Fixed(3)));
    }

    #[test]
    fn leading_empty_lines_are_consumed() {
        let buf = b"\r\n\r\nHEAD / HTTP/1.1\r\nHost: a\r\n\r\n";
        let (req, used) = parse_request_head(buf).unwrap().unwrap();
        assert_eq!(req.method, "HEAD");
        assert_eq!(used, buf.len());
    }

    #[test]
    fn rejects_non_http1() {
        assert_eq!(
            parse_request_head(b"GET /\r\n\r\n"),
            Err(HttpError::BadRequestLine)
        );
        assert_eq!(
            parse_request_head(b"GET / HTTP/1.2\r\n\r\n"),
            Err(HttpError::BadVersion)
        );
        assert_eq!(
            parse_request_head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Err(HttpError::Http2Preface)
        );
        assert_eq!(
            parse_request_head(b"PRI * HT"),
            Err(HttpError::Http2Preface)
        );
        assert_eq!(
            parse_request_head(b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"),
            Err(HttpError::BadHeader)
        );
        assert_eq!(
            parse_request_head(b"G(T / HTTP/1.1\r\n\r\n"),
            Err(HttpError::BadRequestLine)
        );
    }

    #[test]
    fn head_size_cap() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        while buf.len() < MAX_HEAD_LEN {
            buf.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(parse_request_head(&buf), Err(HttpError::HeadTooLarge));
    }

    #[test]
    fn header_count_cap() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            buf.extend_from_slice(b"A:b\r\n");
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(parse_request_head(&buf), Err(HttpError::TooManyHeaders));
    }

    #[test]
    fn obs_fold_joins_previous_value() {
        let (req, _) = parse_request_head(b"GET / HTTP/1.1\r\nX: a\r\n  b\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.headers, vec![("X".to_string(), b"a b".to_vec())]);
    }

    #[test]
    fn detection() {
        assert!(looks_like_http_request(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http_request(
            b"CONNECT example.com:443 HTTP/1.1\r\n"
        ));
        assert!(looks_like_http_request(b"M-SEARCH * HTTP/1.1\r\n"));
        assert!(!looks_like_http_request(
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        ));
        assert!(!looks_like_http_request(b"get / HTTP/1.1\r\n"));
        assert!(!looks_like_http_request(b"GE / HTTP/1.1\r\n"));
        assert!(!looks_like_http_request(b"SSH-2.0-OpenSSH_9.6\r\n"));
        assert!(!looks_like_http_request(b"\x16\x03\x01\x02\x00"));
        assert!(!looks_like_http_request(b"ABCDEFGHIJKLMNOPQ / HTTP/1.1"));
        assert!(!looks_like_http_request(b"GET"));
    }

    #[test]
    fn response_after_connect() {
        let buf = b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03";
        let (resp, used) = parse_response_head(buf).unwrap().unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.version, HttpVersion::Http11);
        assert_eq!(&buf[used..], b"\x16\x03\x03");
        let (resp, _) = parse_response_head(b"HTTP/1.0 404\r\nContent-Length: 9\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(resp.status, 404);
        assert_eq!(resp.body_len(), Ok(BodyLength::Fixed(9)));
        let (resp, _) = parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(resp.body_len(), Ok(BodyLength::UntilClose));
        assert_eq!(
            parse_response_head(b"HTTP/1.1 2000 OK\r\n\r\n"),
            Err(HttpError::BadStatusLine)
        );
    }

    #[test]
    fn body_framing() {
        let req = |h: &[u8]| {
            let mut buf = b"POST / HTTP/1.1\r\n".to_vec();
            buf.extend_from_slice(h);
            buf.extend_from_slice(b"\r\n");
            parse_request_head(&buf).unwrap().unwrap().0
        };
        assert_eq!(request_body_len(&req(b"")), Ok(BodyLength::Empty));
        assert_eq!(
            request_body_len(&req(
                b"Transfer-Encoding: gzip, chunked\r\nContent-Length: 4\r\n"
            )),
            Ok(BodyLength::Chunked)
        );
        assert_eq!(
            request_body_len(&req(b"content-length: 7, 7\r\n")),
            Ok(BodyLength::Fixed(7))
        );
        assert_eq!(
            request_body_len(&req(b"Content-Length: 7\r\nContent-Length: 8\r\n")),
            Err(HttpError::BadContentLength)
        );
        assert_eq!(
            request_body_len(&req(b"Content-Length: -1\r\n")),
            Err(HttpError::BadContentLength)
        );
        assert_eq!(
            request_body_len(&req(b"Content-Length: 99999999999999999999999\r\n")),
            Err(HttpError::BadContentLength)
        );
    }

    #[test]
    fn chunked_skipper_finds_next_request() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nGET / HTTP/1.1\r\n";
        let mut s = ChunkedSkipper::new();
        let used = s.feed(body).unwrap();
        assert!(s.is_done());
        assert_eq!(&body[used..], b"GET / HTTP/1.1\r\n");
        // Byte at a time gives the same answer.
        let mut s = ChunkedSkipper::new();
        let mut total = 0;
        for b in body.iter() {
            if s.is_done() {
                break;
            }
            total += s.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(total, used);
        let mut s = ChunkedSkipper::new();
        assert_eq!(s.feed(b"zz\r\n"), Err(HttpError::BadChunk));
        let mut s = ChunkedSkipper::new();
        assert_eq!(s.feed(b"fffffffffffffffffff\r\n"), Err(HttpError::BadChunk));
    }

    #[test]
    fn no_panic_on_prefixes_and_garbage() {
        let sample = b"GET /a HTTP/1.1\r\nHost: h\r\nCookie: a=b\r\n x\r\n\r\n";
        for cut in 0..=sample.len() {
            let _ = parse_request_head(&sample[..cut]);
            let _ = parse_response_head(&sample[..cut]);
            let _ = looks_like_http_request(&sample[..cut]);
            let _ = ChunkedSkipper::new().feed(&sample[..cut]);
        }
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let len = (x % 200) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Bias towards the bytes the parser cares about.
                let b = match x % 8 {
                    0 => b'\n',
                    1 => b'\r',
                    2 => b':',
                    3 => b' ',
                    _ => (x >> 8) as u8,
                };
                buf.push(b);
            }
            let _ = parse_request_head(&buf);
            let _ = parse_response_head(&buf);
            let _ = looks_like_http_request(&buf);
            let _ = ChunkedSkipper::new().feed(&buf);
            x = x.wrapping_add(1);
        }
    }
}
