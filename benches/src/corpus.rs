//! Real protocol material from the conformance captures (`testdata/conformance/pcap`).
//!
//! Captures are read with the agent's own capture and decode layers; each TCP connection's
//! two byte streams are reassembled (by sequence number, up to the first gap) and cut into
//! templates the generator replays with new addresses, ports and sequence numbers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hais_agent::capture::file::CaptureFile;
use hais_agent::decode::{self, LinkType, Transport};
use hais_dissect::tls::client_hello::ClientHello;

/// Most bytes kept per direction of a corpus connection.
const MAX_STREAM: usize = 1 << 20;

/// The conformance capture directory of this workspace.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/conformance/pcap")
}

/// Capture files in `dir`, sorted by name. Files named `*.notest.*` and the deliberately
/// malformed ones (`*malformed*`, `*crash*`, `CVE-*`) are left out: the benches want
/// ordinary traffic.
pub fn capture_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.ends_with(".pcap") || name.ends_with(".pcapng"))
                && !name.contains(".notest.")
                && !name.contains("malformed")
                && !name.contains("crash")
                && !name.starts_with("CVE-")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A capture held in memory.
#[derive(Debug, Clone)]
pub struct Capture {
    pub name: String,
    pub link: LinkType,
    /// `(timestamp in microseconds, frame)`.
    pub frames: Vec<(u64, Vec<u8>)>,
}

impl Capture {
    /// Total frame bytes.
    pub fn bytes(&self) -> u64 {
        self.frames.iter().map(|(_, f)| f.len() as u64).sum()
    }
}

/// Reads a whole capture file into memory.
pub fn load(path: &Path) -> Result<Capture, String> {
    let name = path.display().to_string();
    let mut cap = CaptureFile::open(&name).map_err(|e| e.to_string())?;
    let link = cap.link_type();
    let mut frames = Vec::new();
    while let Some(p) = cap.next_packet().map_err(|e| e.to_string())? {
        frames.push((p.ts_us, p.data.to_vec()));
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(&name)
        .to_string();
    Ok(Capture { name, link, frames })
}

/// Loads every capture of [`capture_files`].
pub fn load_dir(dir: &Path) -> Result<Vec<Capture>, String> {
    capture_files(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .iter()
        .map(|p| load(p))
        .collect()
}

/// Both reassembled byte streams of one TCP connection.
#[derive(Debug, Clone, Default)]
pub struct TcpStreams {
    pub client: Vec<u8>,
    pub server: Vec<u8>,
}

#[derive(Default)]
struct Dir {
    isn: Option<u32>,
    segs: Vec<(u32, Vec<u8>)>,
}

impl Dir {
    fn assemble(mut self) -> Vec<u8> {
        let Some(base) = self.isn.or_else(|| self.segs.first().map(|s| s.0)) else {
            return Vec::new();
        };
        let rel = |seq: u32| i64::from(seq.wrapping_sub(base) as i32);
        self.segs.sort_by_key(|s| rel(s.0));
        let mut out: Vec<u8> = Vec::new();
        for (seq, data) in self.segs {
            let off = rel(seq);
            if off < 0 {
                continue;
            }
            let off = off as usize;
            if off > out.len() {
                break; // a gap: keep what is contiguous
            }
            let end = off + data.len();
            if end > out.len() {
                out.extend_from_slice(&data[out.len() - off..]);
            }
            if out.len() >= MAX_STREAM {
                out.truncate(MAX_STREAM);
                break;
            }
        }
        out
    }
}

struct Conn {
    client: (IpAddr, u16),
    c: Dir,
    s: Dir,
}

/// Reassembles the TCP connections of a capture, in order of first appearance.
pub fn tcp_streams(cap: &Capture) -> Vec<TcpStreams> {
    type Key = (IpAddr, u16, IpAddr, u16);
    let mut index: HashMap<Key, usize> = HashMap::new();
    let mut conns: Vec<Conn> = Vec::new();
    for (_, frame) in &cap.frames {
        let Ok(p) = decode::decode(cap.link, frame) else {
            continue;
        };
        let Transport::Tcp(seg) = p.transport else {
            continue;
        };
        let a = (p.src, seg.src_port);
        let b = (p.dst, seg.dst_port);
        let key = if a <= b {
            (a.0, a.1, b.0, b.1)
        } else {
            (b.0, b.1, a.0, a.1)
        };
        let syn = seg.flags & 0x02 != 0;
        let ack = seg.flags & 0x10 != 0;
        let i = *index.entry(key).or_insert_with(|| {
            // The initiator: the SYN sender, the SYN-ACK receiver, else the first sender.
            let client = if syn && ack { b } else { a };
            conns.push(Conn {
                client,
                c: Dir::default(),
                s: Dir::default(),
            });
            conns.len() - 1
        });
        let conn = &mut conns[i];
        let dir = if a == conn.client {
            &mut conn.c
        } else {
            &mut conn.s
        };
        if syn {
            dir.isn = Some(seg.seq.wrapping_add(1));
        }
        if !seg.payload.is_empty() && !seg.truncated {
            dir.segs.push((seg.seq, seg.payload.to_vec()));
        }
    }
    conns
        .into_iter()
        .map(|c| TcpStreams {
            client: c.c.assemble(),
            server: c.s.assemble(),
        })
        .collect()
}

/// Splits a byte stream into complete TLS records (`type`, whole record with header).
pub fn tls_records(buf: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    while buf.len() >= i + 5 {
        let typ = buf[i];
        if !(0x14..=0x18).contains(&typ) || buf[i + 1] != 3 {
            break;
        }
        let len = usize::from(u16::from_be_bytes([buf[i + 3], buf[i + 4]]));
        if buf.len() < i + 5 + len {
            break;
        }
        out.push((typ, &buf[i..i + 5 + len]));
        i += 5 + len;
    }
    out
}

/// A TLS connection's opening, as the client and server sent it.
#[derive(Debug, Clone)]
pub struct TlsTemplate {
    /// The record(s) carrying the ClientHello.
    pub client_hello: Vec<u8>,
    /// The ClientHello body (after the 4-byte handshake header), as `ClientHello::parse`
    /// takes it.
    pub client_hello_body: Vec<u8>,
    /// The server's first flight: ServerHello, Certificate, ... (TLS 1.2) or ServerHello,
    /// ChangeCipherSpec and the encrypted handshake records (TLS 1.3).
    pub server_flight: Vec<u8>,
    /// The client's second flight (key exchange, ChangeCipherSpec, Finished); may be empty.
    pub client_finish: Vec<u8>,
}

/// An HTTP/1 client's requests (header blocks).
#[derive(Debug, Clone)]
pub struct HttpTemplate {
    pub requests: Vec<Vec<u8>>,
}

/// An SSH connection's cleartext opening, cut into the units each side sent (banner line,
/// then binary packets up to and including NEWKEYS).
#[derive(Debug, Clone)]
pub struct SshTemplate {
    pub client: Vec<Vec<u8>>,
    pub server: Vec<Vec<u8>>,
}

/// Everything the generator replays.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    pub tls: Vec<TlsTemplate>,
    pub http: Vec<HttpTemplate>,
    pub ssh: Vec<SshTemplate>,
}

/// The body of the handshake message at the start of the concatenated handshake records.
fn handshake_body(records: &[(u8, &[u8])], msg_type: u8) -> Option<Vec<u8>> {
    let mut hs = Vec::new();
    for (_, r) in records {
        hs.extend_from_slice(&r[5..]);
    }
    if hs.len() < 4 || hs[0] != msg_type {
        return None;
    }
    let len = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
    hs.get(4..4 + len).map(<[u8]>::to_vec)
}

fn tls_template(s: &TcpStreams) -> Option<TlsTemplate> {
    let crec = tls_records(&s.client);
    let n_hello = crec.iter().take_while(|(t, _)| *t == 0x16).count();
    if n_hello == 0 {
        return None;
    }
    // The hello may share its last record with nothing else in TLS; take exactly the
    // records that hold the ClientHello message.
    let body = handshake_body(&crec[..n_hello], 1)?;
    ClientHello::parse(&body).ok()?;
    let mut need = body.len() + 4;
    let mut hello_records = 0;
    for (_, r) in &crec[..n_hello] {
        hello_records += 1;
        need = need.saturating_sub(r.len() - 5);
        if need == 0 {
            break;
        }
    }
    let client_hello: Vec<u8> = crec[..hello_records]
        .iter()
        .flat_map(|(_, r)| r.iter().copied())
        .collect();

    let srec = tls_records(&s.server);
    let mut server_flight = Vec::new();
    let mut i = 0;
    while i < srec.len() && matches!(srec[i].0, 0x14 | 0x16) && server_flight.len() < 32_768 {
        server_flight.extend_from_slice(srec[i].1);
        i += 1;
    }
    // TLS 1.3: the encrypted handshake follows as application_data records.
    let mut extra = 0;
    while i < srec.len() && srec[i].0 == 0x17 && extra < 3 && server_flight.len() < 32_768 {
        server_flight.extend_from_slice(srec[i].1);
        i += 1;
        extra += 1;
    }
    if server_flight.is_empty() {
        return None;
    }

    let mut client_finish = Vec::new();
    let mut j = hello_records;
    while j < crec.len() && matches!(crec[j].0, 0x14 | 0x16) {
        client_finish.extend_from_slice(crec[j].1);
        j += 1;
    }
    if j < crec.len() && crec[j].0 == 0x17 && crec[j].1.len() < 512 {
        client_finish.extend_from_slice(crec[j].1);
    }
    Some(TlsTemplate {
        client_hello,
        client_hello_body: body,
        server_flight,
        client_finish,
    })
}

const METHODS: [&[u8]; 6] = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"OPTIONS ",
    b"DELETE ",
];

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn http_template(s: &TcpStreams) -> Option<HttpTemplate> {
    let mut requests = Vec::new();
    let mut rest = &s.client[..];
    while requests.len() < 8 && METHODS.iter().any(|m| rest.starts_with(m)) {
        let end = find(rest, b"\r\n\r\n")? + 4;
        let head = &rest[..end];
        let text = String::from_utf8_lossy(head).to_ascii_lowercase();
        let body_len = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let total = (end + body_len).min(rest.len());
        requests.push(rest[..total].to_vec());
        rest = &rest[total..];
    }
    (!requests.is_empty()).then_some(HttpTemplate { requests })
}

/// Banner line, then SSH binary packets until NEWKEYS (message 21), inclusive.
fn ssh_units(stream: &[u8]) -> Option<Vec<Vec<u8>>> {
    if !stream.starts_with(b"SSH-2.0-") && !stream.starts_with(b"SSH-1.99-") {
        return None;
    }
    let nl = stream.iter().position(|&b| b == b'\n')? + 1;
    let mut units = vec![stream[..nl].to_vec()];
    let mut i = nl;
    while stream.len() >= i + 6 {
        let len = u32::from_be_bytes([stream[i], stream[i + 1], stream[i + 2], stream[i + 3]]);
        let len = len as usize;
        if !(8..=35_000).contains(&len) || stream.len() < i + 4 + len {
            break;
        }
        let msg = stream[i + 5];
        units.push(stream[i..i + 4 + len].to_vec());
        i += 4 + len;
        if msg == 21 {
            return Some(units);
        }
    }
    // The capture stopped early: close the key exchange with a NEWKEYS of our own so
    // that what follows reads as encrypted.
    units.push(vec![0, 0, 0, 12, 10, 21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    Some(units)
}

fn ssh_template(s: &TcpStreams) -> Option<SshTemplate> {
    Some(SshTemplate {
        client: ssh_units(&s.client)?,
        server: ssh_units(&s.server)?,
    })
}

/// Cuts templates out of every TCP connection of the captures. Identical openings are
/// kept once.
pub fn templates(caps: &[Capture]) -> Templates {
    let mut t = Templates::default();
    let mut seen_hello = std::collections::HashSet::new();
    for cap in caps {
        for s in tcp_streams(cap) {
            if let Some(tls) = tls_template(&s) {
                if seen_hello.insert(tls.client_hello.clone()) {
                    t.tls.push(tls);
                }
            } else if let Some(http) = http_template(&s) {
                t.http.push(http);
            } else if let Some(ssh) = ssh_template(&s) {
                t.ssh.push(ssh);
            }
        }
    }
    t
}

/// ClientHello bodies of every TLS-over-TCP connection in the captures (deduplicated).
pub fn client_hello_bodies(caps: &[Capture]) -> Vec<Vec<u8>> {
    templates(caps)
        .tls
        .into_iter()
        .map(|t| t.client_hello_body)
        .collect()
}
