//! SSH transport, cleartext phase only (RFC 4253 §4.2, §6, §7.1): the identification
//! banner and the binary packets up to NEWKEYS, which is all JA4SSH's extras (HASSH, banners,
//! cipher choice) need.
//!
//! [`SshStream`] is fed one direction's reassembled TCP byte stream in arbitrary chunks and
//! reports the banner, each KEXINIT and NEWKEYS as they complete. After NEWKEYS the rest of
//! the stream is encrypted, so the stream stops buffering and ignores further input. SSH-1
//! (`SSH-1.x` other than `1.99`) uses a different binary format, so only its banner is
//! reported. Memory per stream is bounded by the larger of [`MAX_PREAMBLE_BYTES`] and
//! [`MAX_PACKET_LEN`] plus one input chunk of [`CHUNK`] bytes, whatever the peer sends.

use crate::bytes::Reader;

/// Longest identification line accepted, not counting its CR LF / LF terminator. RFC 4253
/// caps the line at 255 bytes *including* CR LF; applying the cap to the text alone keeps
/// LF-only senders at the limit, and still rejects anything absurd.
pub const MAX_BANNER_LEN: usize = 255;
/// Bytes of "other lines" a server may send before its banner (RFC 4253 §4.2) that we are
/// willing to skip; past this the stream is declared not-SSH instead of buffering more.
pub const MAX_PREAMBLE_BYTES: usize = 16 * 1024;
/// Largest `packet_length` accepted. RFC 4253 §6.1 requires support for 35000 bytes;
/// real KEXINITs are a few KiB. The cap bounds the reassembly buffer.
pub const MAX_PACKET_LEN: usize = 256 * 1024;
/// Input is appended to the internal buffer at most this many bytes at a time, so one huge
/// push never grows the buffer past its cap by more than this.
pub const CHUNK: usize = 16 * 1024;

/// SSH_MSG_KEXINIT.
pub const MSG_KEXINIT: u8 = 20;
/// SSH_MSG_NEWKEYS: everything after it in this direction is encrypted.
pub const MSG_NEWKEYS: u8 = 21;

/// Why a direction's stream could not be parsed. Once returned, the stream stays failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// The identification line exceeded [`MAX_BANNER_LEN`] before its line end.
    #[error("SSH identification line longer than {MAX_BANNER_LEN} bytes")]
    BannerTooLong,
    /// A line starting with `SSH-` did not have the `SSH-proto-software` shape.
    #[error("malformed SSH identification line")]
    InvalidBanner,
    /// More than [`MAX_PREAMBLE_BYTES`] arrived without an `SSH-` line.
    #[error("no SSH identification line within {MAX_PREAMBLE_BYTES} bytes")]
    PreambleTooLong,
    /// `packet_length` above [`MAX_PACKET_LEN`] (usually: not SSH-2, or already encrypted).
    #[error("SSH packet_length {0} exceeds the cap")]
    PacketTooLong(u32),
    /// `padding_length` leaves no room for a message type byte.
    #[error("malformed SSH binary packet")]
    MalformedPacket,
    /// A KEXINIT payload ended before its fixed fields and ten name-lists.
    #[error("truncated or malformed SSH_MSG_KEXINIT")]
    MalformedKexInit,
}

/// The identification string `SSH-protoversion-softwareversion [SP comments]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshBanner {
    /// The whole line without its CR LF / LF, as the references print it
    /// (`ssh_protocol_client` / `ssh_protocol_server`). Invalid UTF-8 is replaced by U+FFFD.
    pub line: String,
    /// `protoversion`, e.g. `2.0`, `1.99`, `1.5`.
    pub proto_version: String,
    /// `softwareversion`, e.g. `OpenSSH_8.9p1`.
    pub software_version: String,
    /// Text after the first space, e.g. `Ubuntu-3ubuntu0.1`.
    pub comments: Option<String>,
}

impl SshBanner {
    /// True when the peer will speak the SSH-2 binary packet protocol: `2.x`, or `1.99`
    /// (a server that accepts both and talks SSH-2 to an SSH-2 client).
    pub fn speaks_ssh2(&self) -> bool {
        self.proto_version.starts_with("2.") || self.proto_version == "1.99"
    }

    /// Parses one line's text (terminator already removed). `None` unless it has the
    /// `SSH-proto-software` shape and fits [`MAX_BANNER_LEN`].
    fn from_line(text: &[u8]) -> Option<SshBanner> {
        if text.len() > MAX_BANNER_LEN {
            return None;
        }
        let rest = text.strip_prefix(b"SSH-")?;
        let dash = rest.iter().position(|&b| b == b'-')?;
        let (proto, rest) = (rest.get(..dash)?, rest.get(dash + 1..)?);
        if proto.is_empty() || proto.contains(&b' ') {
            return None;
        }
        let (software, comments) = match rest.iter().position(|&b| b == b' ') {
            Some(sp) => (rest.get(..sp)?, Some(rest.get(sp + 1..)?)),
            None => (rest, None),
        };
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Some(SshBanner {
            line: s(text),
            proto_version: s(proto),
            software_version: s(software),
            comments: comments.map(s),
        })
    }
}

/// Strips one trailing CR (lines end in CR LF, or in LF alone from older software).
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Finds the identification string in a line or in the first bytes a peer sent.
///
/// Lines before it that do not start with `SSH-` are skipped (servers may send such lines,
/// RFC 4253 §4.2), up to [`MAX_PREAMBLE_BYTES`]. Lines end in LF or CR LF; the last line
/// may also be unterminated, so a bare banner string is accepted. `None` if no valid
/// banner is found.
pub fn parse_banner(line_or_buf: &[u8]) -> Option<SshBanner> {
    let mut skipped = 0usize;
    let mut rest = line_or_buf;
    while !rest.is_empty() && skipped <= MAX_PREAMBLE_BYTES {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(lf) => (rest.get(..lf)?, rest.get(lf + 1..)?),
            None => (rest, &[][..]),
        };
        let line = strip_cr(line);
        if line.starts_with(b"SSH-") {
            return SshBanner::from_line(line);
        }
        skipped = skipped.saturating_add(rest.len() - next.len());
        rest = next;
    }
    None
}

/// Content test for "this TCP direction carries SSH": it begins with an SSH-1 or SSH-2
/// identification prefix. Used instead of port numbers so SSH on any port is recognised.
/// A client always sends its banner first; a server that sends preamble lines first is
/// only recognised from the client side (or with [`parse_banner`]).
pub fn looks_like_ssh(buf: &[u8]) -> bool {
    buf.starts_with(b"SSH-2.") || buf.starts_with(b"SSH-1.")
}

/// SSH_MSG_KEXINIT (RFC 4253 §7.1). Name-lists are kept as the comma-separated strings sent,
/// because HASSH hashes them verbatim; use [`names`] to iterate one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KexInit {
    /// 16 random bytes.
    pub cookie: [u8; 16],
    /// `kex_algorithms`.
    pub kex: String,
    /// `server_host_key_algorithms`.
    pub host_key: String,
    /// `encryption_algorithms_client_to_server`.
    pub enc_c2s: String,
    /// `encryption_algorithms_server_to_client`.
    pub enc_s2c: String,
    /// `mac_algorithms_client_to_server`.
    pub mac_c2s: String,
    /// `mac_algorithms_server_to_client`.
    pub mac_s2c: String,
    /// `compression_algorithms_client_to_server`.
    pub comp_c2s: String,
    /// `compression_algorithms_server_to_client`.
    pub comp_s2c: String,
    /// `languages_client_to_server`.
    pub lang_c2s: String,
    /// `languages_server_to_client`.
    pub lang_s2c: String,
    /// `first_kex_packet_follows`: a guessed key-exchange packet comes next.
    pub first_kex_packet_follows: bool,
    /// The reserved uint32 (0 in practice; kept because odd values are a fingerprint too).
    pub reserved: u32,
}

/// Iterates a name-list's names, skipping empty entries.
pub fn names(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').filter(|n| !n.is_empty())
}

impl KexInit {
    /// Parses a KEXINIT *payload* (starting with the message number 20, no packet framing).
    /// Bytes after the reserved field are ignored.
    pub fn parse(payload: &[u8]) -> Result<KexInit, SshError> {
        let bad = SshError::MalformedKexInit;
        let mut r = Reader::new(payload);
        if r.u8() != Some(MSG_KEXINIT) {
            return Err(bad);
        }
        let mut cookie = [0u8; 16];
        cookie.copy_from_slice(r.take(16).ok_or(bad.clone())?);
        let mut list = || -> Result<String, SshError> {
            let raw = r.vec32().ok_or(SshError::MalformedKexInit)?;
            Ok(String::from_utf8_lossy(raw).into_owned())
        };
        let kex = list()?;
        let host_key = list()?;
        let enc_c2s = list()?;
        let enc_s2c = list()?;
        let mac_c2s = list()?;
        let mac_s2c = list()?;
        let comp_c2s = list()?;
        let comp_s2c = list()?;
        let lang_c2s = list()?;
        let lang_s2c = list()?;
        let first_kex_packet_follows = r.u8().ok_or(bad.clone())? != 0;
        let reserved = r.u32().ok_or(bad)?;
        Ok(KexInit {
            cookie,
            kex,
            host_key,
            enc_c2s,
            enc_s2c,
            mac_c2s,
            mac_s2c,
            comp_c2s,
            comp_s2c,
            lang_c2s,
            lang_s2c,
            first_kex_packet_follows,
            reserved,
        })
    }
}

/// Something [`SshStream`] recognised in the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshEvent {
    /// The identification line. For an SSH-1 peer this is the last event.
    Banner(SshBanner),
    /// A key-exchange init (boxed: it is much larger than the other variants).
    KexInit(Box<KexInit>),
    /// NEWKEYS: the direction is encrypted from here on; the stream is finished.
    NewKeys,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for the identification line.
    Banner,
    /// SSH-2 binary packets, cleartext.
    Packets,
    /// NEWKEYS seen, SSH-1 banner seen, or stopped by the caller: input is ignored.
    Done,
    Failed(SshError),
}

/// Incremental parser for ONE direction of an SSH connection (see the module docs).
#[derive(Debug, Clone)]
pub struct SshStream {
    state: State,
    /// Unconsumed bytes; `buf[..start]` is already processed.
    buf: Vec<u8>,
    start: usize,
    /// Preamble bytes skipped so far (before the banner).
    skipped: usize,
    /// How much of the pending, unterminated line was already searched for LF, so that a
    /// line arriving byte by byte is scanned once, not once per byte.
    scanned: usize,
}

impl Default for SshStream {
    fn default() -> Self {
        Self::new()
    }
}

impl SshStream {
    /// A stream waiting for its banner.
    pub fn new() -> Self {
        SshStream {
            state: State::Banner,
            buf: Vec::new(),
            start: 0,
            skipped: 0,
            scanned: 0,
        }
    }

    /// True once nothing more will be reported (NEWKEYS, SSH-1 banner, [`Self::stop`], or
    /// an error); the caller can stop feeding it.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done | State::Failed(_))
    }

    /// Stops parsing and frees the buffer. Needed when the *peer's* banner shows that this
    /// direction will use SSH-1 framing (e.g. a `1.99` server answering a `1.5` client).
    pub fn stop(&mut self) {
        self.state = State::Done;
        self.buf = Vec::new();
        self.start = 0;
    }

    /// Feeds the next bytes of this direction, appending what completed to `events`.
    ///
    /// Events found before an error are still appended. After an error the stream is
    /// failed: later calls return the same error and parse nothing.
    pub fn push(&mut self, data: &[u8], events: &mut Vec<SshEvent>) -> Result<(), SshError> {
        for chunk in data.chunks(CHUNK) {
            match &self.state {
                State::Done => return Ok(()),
                State::Failed(e) => return Err(e.clone()),
                State::Banner | State::Packets => {}
            }
            self.compact();
            self.buf.extend_from_slice(chunk);
            if let Err(e) = self.process(events) {
                self.state = State::Failed(e.clone());
                self.buf = Vec::new();
                self.start = 0;
                return Err(e);
            }
        }
        match &self.state {
            State::Failed(e) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// Drops the consumed prefix so the buffer holds only pending bytes.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start.min(self.buf.len()));
            self.start = 0;
        }
    }

    fn pending(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or(&[])
    }

    fn process(&mut self, events: &mut Vec<SshEvent>) -> Result<(), SshError> {
        loop {
            match self.state {
                State::Banner => {
                    if !self.step_banner(events)? {
                        return Ok(());
                    }
                }
                State::Packets => {
                    if !self.step_packet(events)? {
                        return Ok(());
                    }
                }
                State::Done | State::Failed(_) => {
                    self.buf = Vec::new();
                    self.start = 0;
                    return Ok(());
                }
            }
        }
    }

    /// Consumes one line if complete. Returns whether progress was made.
    fn step_banner(&mut self, events: &mut Vec<SshEvent>) -> Result<bool, SshError> {
        // Borrow the field, not `self`, so the scan offset can be updated alongside.
        let pending = self.buf.get(self.start..).unwrap_or(&[]);
        let from = self.scanned.min(pending.len());
        let found = pending
            .get(from..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'));
        let Some(lf) = found.map(|i| from + i) else {
            self.scanned = pending.len();
            // Incomplete line: bound what we are willing to hold.
            if pending.starts_with(b"SSH-") {
                // The text may be MAX_BANNER_LEN long plus a CR still waiting for its LF.
                if pending.len() > MAX_BANNER_LEN + 1 {
                    return Err(SshError::BannerTooLong);
                }
            } else if self.skipped.saturating_add(pending.len()) > MAX_PREAMBLE_BYTES {
                return Err(SshError::PreambleTooLong);
            }
            return Ok(false);
        };
        let line = strip_cr(pending.get(..lf).unwrap_or(&[]));
        if line.starts_with(b"SSH-") {
            if line.len() > MAX_BANNER_LEN {
                return Err(SshError::BannerTooLong);
            }
            let banner = SshBanner::from_line(line).ok_or(SshError::InvalidBanner)?;
            self.state = if banner.speaks_ssh2() {
                State::Packets
            } else {
                State::Done
            };
            events.push(SshEvent::Banner(banner));
        } else {
            self.skipped = self.skipped.saturating_add(lf + 1);
            if self.skipped > MAX_PREAMBLE_BYTES {
                return Err(SshError::PreambleTooLong);
            }
        }
        self.start += lf + 1;
        self.scanned = 0;
        Ok(true)
    }

    /// Consumes one binary packet if complete. Returns whether progress was made.
    fn step_packet(&mut self, events: &mut Vec<SshEvent>) -> Result<bool, SshError> {
        let mut r = Reader::new(self.pending());
        let Some(packet_length) = r.u32() else {
            return Ok(false);
        };
        let len = usize::try_from(packet_length).unwrap_or(usize::MAX);
        if len > MAX_PACKET_LEN {
            return Err(SshError::PacketTooLong(packet_length));
        }
        let Some(body) = r.take(len) else {
            return Ok(false);
        };
        let mut p = Reader::new(body);
        let padding = usize::from(p.u8().ok_or(SshError::MalformedPacket)?);
        let payload_len = p
            .remaining()
            .checked_sub(padding)
            .filter(|&n| n > 0)
            .ok_or(SshError::MalformedPacket)?;
        let payload = p.take(payload_len).ok_or(SshError::MalformedPacket)?;
        match payload.first() {
            Some(&MSG_KEXINIT) => {
                events.push(SshEvent::KexInit(Box::new(KexInit::parse(payload)?)));
            }
            Some(&MSG_NEWKEYS) => {
                events.push(SshEvent::NewKeys);
                self.state = State::Done;
            }
            _ => {}
        }
        self.start += 4 + len;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// First 512 bytes the client sent in `gre-sample.pcap` (OpenSSH 3.6.1p1): an LF-only
    /// banner and a complete 488-byte KEXINIT packet.
    const GRE_CLIENT: &str = concat!(
        "5353482d322e302d4f70656e5353485f332e362e3170310a000001e40914e7b79ed039574a4fbae14e254f56",
        "0de10000003d6469666669652d68656c6c6d616e2d67726f75702d65786368616e67652d736861312c646966",
        "6669652d68656c6c6d616e2d67726f7570312d736861310000000f7373682d7273612c7373682d6473730000",
        "004a626c6f77666973682d6362632c6165733132382d6362632c336465732d6362632c636173743132382d63",
        "62632c617263666f75722c6165733139322d6362632c6165733235362d6362630000004a626c6f7766697368",
        "2d6362632c6165733132382d6362632c336465732d6362632c636173743132382d6362632c617263666f7572",
        "2c6165733139322d6362632c6165733235362d63626300000055686d61632d6d64352c686d61632d73686131",
        "2c686d61632d726970656d643136302c686d61632d726970656d64313630406f70656e7373682e636f6d2c68",
        "6d61632d736861312d39362c686d61632d6d64352d393600000055686d61632d6d64352c686d61632d736861",
        "312c686d61632d726970656d643136302c686d61632d726970656d64313630406f70656e7373682e636f6d2c",
        "686d61632d736861312d39362c686d61632d6d64352d3936000000097a6c69622c6e6f6e65000000097a6c69",
        "622c6e6f6e6500000000000000000000000000000000000000000000",
    );

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test hex")
    }

    /// Frames a payload as an SSH-2 binary packet with `pad` padding bytes.
    fn packet(payload: &[u8], pad: u8) -> Vec<u8> {
        let len = (1 + payload.len() + usize::from(pad)) as u32;
        let mut out = len.to_be_bytes().to_vec();
        out.push(pad);
        out.extend_from_slice(payload);
        out.extend(std::iter::repeat_n(0xaa, usize::from(pad)));
        out
    }

    fn kexinit_payload(lists: [&str; 10]) -> Vec<u8> {
        let mut p = vec![MSG_KEXINIT];
        p.extend_from_slice(&[7u8; 16]);
        for l in lists {
            p.extend_from_slice(&(l.len() as u32).to_be_bytes());
            p.extend_from_slice(l.as_bytes());
        }
        p.push(1);
        p.extend_from_slice(&0u32.to_be_bytes());
        p
    }

    #[test]
    fn banner_shapes() {
        let b = parse_banner(b"SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.1\r\n").expect("banner");
        assert_eq!(b.line, "SSH-2.0-OpenSSH_8.9p1 Ubuntu-3ubuntu0.1");
        assert_eq!(b.proto_version, "2.0");
        assert_eq!(b.software_version, "OpenSSH_8.9p1");
        assert_eq!(b.comments.as_deref(), Some("Ubuntu-3ubuntu0.1"));
        assert!(b.speaks_ssh2());

        let b = parse_banner(b"SSH-1.99-OpenSSH_3.1p1\n").expect("banner");
        assert_eq!(
            (b.proto_version.as_str(), b.comments.as_deref()),
            ("1.99", None)
        );
        assert!(b.speaks_ssh2());
        let b = parse_banner(b"SSH-1.5-1.2.26").expect("bare line");
        assert_eq!(b.software_version, "1.2.26");
        assert!(!b.speaks_ssh2());

        // Lines before the banner are skipped; binary data after it is ignored.
        let b = parse_banner(b"Welcome\r\nload 0.3\nSSH-2.0-x\r\n\0\0\0\x0c").expect("banner");
        assert_eq!(b.line, "SSH-2.0-x");

        assert_eq!(
            parse_banner(b"SSH-2.0\r\n"),
            None,
            "no software version dash"
        );
        assert_eq!(parse_banner(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(parse_banner(b""), None);
        let long = [b"SSH-2.0-".as_slice(), &[b'a'; 300]].concat();
        assert_eq!(parse_banner(&long), None, "over the 255-byte cap");
    }

    #[test]
    fn content_detection() {
        assert!(looks_like_ssh(b"SSH-2.0-PuTTY_Release_0.74\r\n"));
        assert!(looks_like_ssh(b"SSH-1.5-1.2.26\n"));
        assert!(looks_like_ssh(b"SSH-1.99-OpenSSH_3.1p1\n"));
        assert!(!looks_like_ssh(b"SSH-3.0-x"));
        assert!(!looks_like_ssh(b"SSH-"));
        assert!(!looks_like_ssh(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn real_client_banner_and_kexinit_in_any_chunking() {
        let bytes = h(GRE_CLIENT);
        for step in [1usize, 3, 24, 25, 100, 512] {
            let mut s = SshStream::new();
            let mut ev = Vec::new();
            for c in bytes.chunks(step) {
                s.push(c, &mut ev).expect("valid stream");
            }
            assert_eq!(ev.len(), 2, "step {step}");
            let SshEvent::Banner(b) = &ev[0] else {
                panic!("banner first")
            };
            assert_eq!(b.line, "SSH-2.0-OpenSSH_3.6.1p1");
            let SshEvent::KexInit(k) = &ev[1] else {
                panic!("kexinit second")
            };
            assert_eq!(
                k.kex,
                "diffie-hellman-group-exchange-sha1,diffie-hellman-group1-sha1"
            );
            assert_eq!(k.host_key, "ssh-rsa,ssh-dss");
            assert_eq!(names(&k.enc_c2s).next(), Some("blowfish-cbc"));
            assert_eq!(k.comp_c2s, "zlib,none");
            assert_eq!(k.lang_c2s, "");
            assert!(!k.first_kex_packet_follows);
            assert!(!s.is_finished());
        }
    }

    #[test]
    fn stops_at_newkeys_and_ignores_ciphertext() {
        let mut bytes = b"SSH-2.0-a b\r\n".to_vec();
        let kex = kexinit_payload([
            "curve25519-sha256",
            "ssh-ed25519",
            "aes128-ctr",
            "aes128-ctr",
            "hmac-sha2-256",
            "hmac-sha2-256",
            "none",
            "none",
            "",
            "",
        ]);
        bytes.extend(packet(&[2, 0, 0, 0, 0], 4)); // SSH_MSG_IGNORE before KEXINIT
        bytes.extend(packet(&kex, 6));
        bytes.extend(packet(&[MSG_NEWKEYS], 10));
        bytes.extend([0xff; 64]); // encrypted: would be an absurd packet_length
        let mut s = SshStream::new();
        let mut ev = Vec::new();
        s.push(&bytes, &mut ev).expect("ok");
        assert_eq!(ev.len(), 3);
        let SshEvent::KexInit(k) = &ev[1] else {
            panic!("kexinit")
        };
        assert!(k.first_kex_packet_follows);
        assert_eq!(k.cookie, [7u8; 16]);
        assert_eq!(ev[2], SshEvent::NewKeys);
        assert!(s.is_finished());
        s.push(&[0xff; 100], &mut ev)
            .expect("ignored after NEWKEYS");
        assert_eq!(ev.len(), 3);
    }

    #[test]
    fn stream_skips_preamble_lines_fed_bytewise() {
        let bytes = b"Authorized users only\r\n\r\nSSH-2.0-srv\r\n\0\0\0\x0c\x0a\x15";
        let mut s = SshStream::new();
        let mut ev = Vec::new();
        for b in bytes.chunks(1) {
            s.push(b, &mut ev).expect("ok");
        }
        assert_eq!(ev.len(), 1, "NEWKEYS packet still incomplete");
        assert!(matches!(&ev[0], SshEvent::Banner(b) if b.line == "SSH-2.0-srv"));
        s.push(&[0u8; 10], &mut ev).expect("ok");
        assert_eq!(ev.get(1), Some(&SshEvent::NewKeys));
        assert!(s.is_finished());
    }

    #[test]
    fn ssh1_is_banner_only() {
        let mut s = SshStream::new();
        let mut ev = Vec::new();
        s.push(b"SSH-1.5-1.2.26\n\0\0\x01\x04\0\0\0\0\0\0\0\0\x02", &mut ev)
            .expect("ok");
        assert_eq!(ev.len(), 1);
        assert!(s.is_finished());
    }

    #[test]
    fn errors_are_sticky_and_bounded() {
        let mut s = SshStream::new();
        let mut ev = Vec::new();
        let mut bad = b"SSH-2.0-x\r\n".to_vec();
        bad.extend(((MAX_PACKET_LEN + 1) as u32).to_be_bytes());
        assert!(matches!(
            s.push(&bad, &mut ev),
            Err(SshError::PacketTooLong(_))
        ));
        assert_eq!(ev.len(), 1, "banner still reported");
        assert!(s.is_finished());
        assert!(s.push(b"more", &mut ev).is_err());

        let mut s = SshStream::new();
        let r = s.push(&[b'x'; MAX_PREAMBLE_BYTES + 10], &mut ev);
        assert_eq!(r, Err(SshError::PreambleTooLong));

        let mut s = SshStream::new();
        let r = s.push(&[b"SSH-2.0-".as_slice(), &[b'a'; 400]].concat(), &mut ev);
        assert_eq!(r, Err(SshError::BannerTooLong));

        let mut s = SshStream::new();
        let r = s.push(b"SSH-2.0\r\n", &mut ev);
        assert_eq!(r, Err(SshError::InvalidBanner));

        // padding_length consumes the whole packet.
        let mut s = SshStream::new();
        let r = s.push(b"SSH-2.0-x\n\0\0\0\x05\x04abcd", &mut ev);
        assert_eq!(r, Err(SshError::MalformedPacket));

        // A KEXINIT cut short inside its name-lists.
        let mut s = SshStream::new();
        let kex = kexinit_payload(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]);
        let mut bytes = b"SSH-2.0-x\n".to_vec();
        bytes.extend(packet(&kex[..40], 4));
        assert_eq!(s.push(&bytes, &mut ev), Err(SshError::MalformedKexInit));
    }

    #[test]
    fn kexinit_parse_rejects_truncations() {
        let full = kexinit_payload(["k", "h", "e", "e", "m", "m", "c", "c", "", ""]);
        assert!(KexInit::parse(&full).is_ok());
        for n in 0..full.len() {
            assert_eq!(KexInit::parse(&full[..n]), Err(SshError::MalformedKexInit));
        }
    }

    #[test]
    fn no_panic_on_truncations_and_garbage() {
        let real = h(GRE_CLIENT);
        for n in 0..=real.len() {
            let mut s = SshStream::new();
            let mut ev = Vec::new();
            let _ = s.push(&real[..n], &mut ev);
            assert!(ev.len() <= 2);
            let _ = parse_banner(&real[..n]);
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..500 {
            let len = (next() % 600) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if i % 2 == 0 {
                // Valid banner followed by garbage exercises the packet parser.
                buf.splice(0..0, b"SSH-2.0-fuzz\r\n".iter().copied());
            }
            let mut s = SshStream::new();
            let mut ev = Vec::new();
            for c in buf.chunks(1 + (next() % 64) as usize) {
                let _ = s.push(c, &mut ev);
            }
            assert!(s.buf.len() <= MAX_PACKET_LEN + CHUNK + 4);
            let _ = parse_banner(&buf);
            let _ = KexInit::parse(&buf);
        }
    }
}
