//! JA4SSH: a repeating fingerprint of an SSH session's traffic shape, plus the `ssh_extras`
//! the Rust reference prints next to it (HASSH, banners, cipher).
//!
//! `c{mode_c}s{mode_s}_c{pkts_c}s{pkts_s}_c{acks_c}s{acks_s}` over windows of N SSH packets
//! (default 200): the most frequent TCP payload length per direction (tie → smallest, none →
//! 0), the number of payload-carrying packets per direction, and the number of bare ACKs per
//! direction. Interactive sessions, reverse shells and file transfers give distinct shapes
//! (`c36s36_c51s80_c69s0`, `c76s76_c71s59_c0s70`, `c112s1460_c0s179_c21s0`).
//!
//! Windowing follows the Rust reference, the answer key: a window closes when its N-th SSH
//! packet arrives (all six counters reset), and the last, partial window is emitted at the end
//! if it holds any SSH packet. Bare ACKs count wherever they fall, the handshake's final ACK
//! included (the reference counts it: `ssh-r.pcap` stream 0 has `c74` with it, `c73`
//! without).

use std::collections::BTreeMap;

use hais_dissect::ssh::{KexInit, SshBanner, names};
use md5::{Digest, Md5};

/// Window size used when none (or 0) is configured, as in the references.
pub const DEFAULT_WINDOW: usize = 200;
/// TCP flags byte of a bare ACK: exactly ACK, nothing else.
pub const TCP_ACK_ONLY: u8 = 0x10;

#[derive(Debug, Clone, Default)]
struct Direction {
    /// Payload length → number of packets. At most one entry per SSH packet in the window.
    lengths: BTreeMap<usize, u64>,
    packets: u64,
    bare_acks: u64,
}

impl Direction {
    /// Most frequent length; the BTreeMap iterates lengths in ascending order and only a
    /// strictly larger count replaces the best, so ties resolve to the smallest length.
    fn mode(&self) -> usize {
        let mut best: Option<(usize, u64)> = None;
        for (&len, &n) in &self.lengths {
            if best.is_none_or(|(_, b)| n > b) {
                best = Some((len, n));
            }
        }
        best.map_or(0, |(len, _)| len)
    }
}

/// JA4SSH state for one TCP connection.
///
/// Feed it every packet of the connection from the start (so the handshake's final ACK
/// counts, as in the reference), with retransmissions already removed, and emit each string
/// it returns; call [`Ja4Ssh::finish`] when the connection or capture ends. If the engine
/// learns the connection is SSH only at its first payload, the packets before that are all
/// payload-less, so replaying their flags (or starting from the SYN) gives the same counts.
#[derive(Debug, Clone)]
pub struct Ja4Ssh {
    window: usize,
    ssh_packets: usize,
    client: Direction,
    server: Direction,
}

impl Default for Ja4Ssh {
    fn default() -> Self {
        Self::new()
    }
}

impl Ja4Ssh {
    /// Windows of [`DEFAULT_WINDOW`] SSH packets.
    pub fn new() -> Self {
        Self::with_window(DEFAULT_WINDOW)
    }

    /// Windows of `window` SSH packets; 0 means the default, as in the reference config.
    pub fn with_window(window: usize) -> Self {
        Ja4Ssh {
            window: if window == 0 { DEFAULT_WINDOW } else { window },
            ssh_packets: 0,
            client: Direction::default(),
            server: Direction::default(),
        }
    }

    /// One TCP packet: direction (client = the side that opened the connection), TCP payload
    /// length, and the TCP flags byte. Returns a fingerprint when this packet completes a
    /// window.
    pub fn on_packet(
        &mut self,
        from_client: bool,
        tcp_payload_len: usize,
        flags: u8,
    ) -> Option<String> {
        let dir = if from_client {
            &mut self.client
        } else {
            &mut self.server
        };
        if tcp_payload_len > 0 {
            *dir.lengths.entry(tcp_payload_len).or_insert(0) += 1;
            dir.packets += 1;
            self.ssh_packets += 1;
            if self.ssh_packets >= self.window {
                return Some(self.take_window());
            }
        } else if flags == TCP_ACK_ONLY {
            dir.bare_acks += 1;
        }
        None
    }

    /// The final, partial window, if it holds at least one SSH packet. Resets the state, so
    /// a second call returns `None`.
    pub fn finish(&mut self) -> Option<String> {
        (self.ssh_packets > 0).then(|| self.take_window())
    }

    fn take_window(&mut self) -> String {
        let c = std::mem::take(&mut self.client);
        let s = std::mem::take(&mut self.server);
        self.ssh_packets = 0;
        format!(
            "c{}s{}_c{}s{}_c{}s{}",
            c.mode(),
            s.mode(),
            c.packets,
            s.packets,
            c.bare_acks,
            s.bare_acks
        )
    }
}

/// The per-connection SSH details the Rust reference prints as `ssh_extras`. Every field is
/// `None` when its input was not seen (SSH-1 has no KEXINIT, so no HASSH or cipher).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshExtras {
    /// HASSH of the client's KEXINIT.
    pub hassh: Option<String>,
    /// HASSH-Server of the server's KEXINIT.
    pub hassh_server: Option<String>,
    /// The client's identification line, without CR LF.
    pub ssh_protocol_client: Option<String>,
    /// The server's identification line, without CR LF.
    pub ssh_protocol_server: Option<String>,
    /// See [`reference_encryption_algorithm`].
    pub encryption_algorithm: Option<String>,
}

impl SshExtras {
    /// Gathers the extras from whatever the two directions' [`hais_dissect::ssh::SshStream`]s
    /// reported (the first banner and first KEXINIT of each side).
    pub fn new(
        client_banner: Option<&SshBanner>,
        server_banner: Option<&SshBanner>,
        client_kex: Option<&KexInit>,
        server_kex: Option<&KexInit>,
    ) -> Self {
        SshExtras {
            hassh: client_kex.map(hassh),
            hassh_server: server_kex.map(hassh_server),
            ssh_protocol_client: client_banner.map(|b| b.line.clone()),
            ssh_protocol_server: server_banner.map(|b| b.line.clone()),
            encryption_algorithm: match (client_kex, server_kex) {
                (Some(c), Some(s)) => reference_encryption_algorithm(c, s),
                _ => None,
            },
        }
    }
}

/// The string HASSH hashes: `kex;enc_c2s;mac_c2s;comp_c2s` of the client's KEXINIT.
pub fn hassh_algorithms(client_kex: &KexInit) -> String {
    format!(
        "{};{};{};{}",
        client_kex.kex, client_kex.enc_c2s, client_kex.mac_c2s, client_kex.comp_c2s
    )
}

/// The string HASSH-Server hashes: `kex;enc_s2c;mac_s2c;comp_s2c` of the server's KEXINIT.
pub fn hassh_server_algorithms(server_kex: &KexInit) -> String {
    format!(
        "{};{};{};{}",
        server_kex.kex, server_kex.enc_s2c, server_kex.mac_s2c, server_kex.comp_s2c
    )
}

/// HASSH: lowercase hex MD5 of [`hassh_algorithms`].
pub fn hassh(client_kex: &KexInit) -> String {
    md5_hex(&hassh_algorithms(client_kex))
}

/// HASSH-Server: lowercase hex MD5 of [`hassh_server_algorithms`].
pub fn hassh_server(server_kex: &KexInit) -> String {
    md5_hex(&hassh_server_algorithms(server_kex))
}

/// The cipher the Rust reference reports: the first name in the SERVER's client-to-server
/// list that the client also offers. (RFC 4253 §7.1 negotiates the other way round, the
/// client's first choice that the server supports; the reference's rule is kept so outputs
/// compare, and [`negotiated_encryption_c2s`] gives the RFC answer.)
pub fn reference_encryption_algorithm(
    client_kex: &KexInit,
    server_kex: &KexInit,
) -> Option<String> {
    first_common(&server_kex.enc_c2s, &client_kex.enc_c2s)
}

/// The client-to-server cipher as RFC 4253 §7.1 negotiates it.
pub fn negotiated_encryption_c2s(client_kex: &KexInit, server_kex: &KexInit) -> Option<String> {
    first_common(&client_kex.enc_c2s, &server_kex.enc_c2s)
}

/// First name of `preferred` that also appears in `other`.
fn first_common(preferred: &str, other: &str) -> Option<String> {
    names(preferred)
        .find(|p| names(other).any(|o| o == *p))
        .map(str::to_owned)
}

fn md5_hex(s: &str) -> String {
    use std::fmt::Write;
    let digest = Md5::digest(s.as_bytes());
    let mut out = String::with_capacity(32);
    for b in digest.iter() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hais_dissect::ssh::{SshEvent, SshStream, parse_banner};

    /// First bytes each side sent in `gre-sample.pcap` (banner + KEXINIT, LF-only banners).
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
    const GRE_SERVER: &str = concat!(
        "5353482d312e39392d4f70656e5353485f332e3170310a000001e4091443f1a2288a006a75978ac66d3503af",
        "8c0000003d6469666669652d68656c6c6d616e2d67726f75702d65786368616e67652d736861312c64696666",
        "69652d68656c6c6d616e2d67726f7570312d736861310000000f7373682d7273612c7373682d647373000000",
        "4a6165733132382d6362632c336465732d6362632c626c6f77666973682d6362632c636173743132382d6362",
        "632c617263666f75722c6165733139322d6362632c6165733235362d6362630000004a6165733132382d6362",
        "632c336465732d6362632c626c6f77666973682d6362632c636173743132382d6362632c617263666f75722c",
        "6165733139322d6362632c6165733235362d63626300000055686d61632d6d64352c686d61632d736861312c",
        "686d61632d726970656d643136302c686d61632d726970656d64313630406f70656e7373682e636f6d2c686d",
        "61632d736861312d39362c686d61632d6d64352d393600000055686d61632d6d64352c686d61632d73686131",
        "2c686d61632d726970656d643136302c686d61632d726970656d64313630406f70656e7373682e636f6d2c68",
        "6d61632d736861312d39362c686d61632d6d64352d3936000000096e6f6e652c7a6c6962000000096e6f6e65",
        "2c7a6c696200000000000000000000000000000000000000000000",
    );

    fn side(hexstr: &str) -> (SshBanner, KexInit) {
        let mut s = SshStream::new();
        let mut ev = Vec::new();
        s.push(&hex::decode(hexstr).expect("hex"), &mut ev)
            .expect("parses");
        match ev.as_slice() {
            [SshEvent::Banner(b), SshEvent::KexInit(k)] => (b.clone(), (**k).clone()),
            other => panic!("unexpected events {other:?}"),
        }
    }

    fn kex_with(kex: &str, enc: &str, mac: &str, comp: &str) -> KexInit {
        KexInit {
            cookie: [0; 16],
            kex: kex.into(),
            host_key: "ssh-ed25519".into(),
            enc_c2s: enc.into(),
            enc_s2c: enc.into(),
            mac_c2s: mac.into(),
            mac_s2c: mac.into(),
            comp_c2s: comp.into(),
            comp_s2c: comp.into(),
            lang_c2s: String::new(),
            lang_s2c: String::new(),
            first_kex_packet_follows: false,
            reserved: 0,
        }
    }

    /// Feeds `n` packets of `len` bytes in one direction.
    fn feed(j: &mut Ja4Ssh, out: &mut Vec<String>, from_client: bool, len: usize, n: usize) {
        for _ in 0..n {
            out.extend(j.on_packet(from_client, len, if len == 0 { TCP_ACK_ONLY } else { 0x18 }));
        }
    }

    #[test]
    fn spec_interactive_example() {
        // `c36s36_c51s80_c69s0`: a partial window (131 SSH packets) emitted at the end.
        let mut j = Ja4Ssh::new();
        let mut out = Vec::new();
        feed(&mut j, &mut out, true, 36, 40);
        feed(&mut j, &mut out, true, 52, 11);
        feed(&mut j, &mut out, false, 36, 60);
        feed(&mut j, &mut out, false, 100, 20);
        feed(&mut j, &mut out, true, 0, 69);
        assert!(out.is_empty());
        assert_eq!(j.finish().as_deref(), Some("c36s36_c51s80_c69s0"));
        assert_eq!(j.finish(), None, "state was reset");
    }

    #[test]
    fn spec_reverse_shell_and_scp_examples() {
        let mut j = Ja4Ssh::new();
        let mut out = Vec::new();
        feed(&mut j, &mut out, true, 76, 71);
        feed(&mut j, &mut out, false, 76, 59);
        feed(&mut j, &mut out, false, 0, 70);
        assert_eq!(j.finish().as_deref(), Some("c76s76_c71s59_c0s70"));

        // SCP download: 179 server packets of 1460, 21 client packets (200 = full window).
        let mut j = Ja4Ssh::new();
        let mut out = Vec::new();
        feed(&mut j, &mut out, true, 112, 21);
        feed(&mut j, &mut out, true, 0, 21);
        feed(&mut j, &mut out, false, 1460, 178);
        assert!(out.is_empty());
        feed(&mut j, &mut out, false, 1460, 1);
        assert_eq!(out, vec!["c112s1460_c21s179_c21s0".to_owned()]);
        assert_eq!(j.finish(), None, "nothing after the full window");
    }

    #[test]
    fn windows_reset_and_acks_go_to_the_open_window() {
        let mut j = Ja4Ssh::with_window(4);
        let mut out = Vec::new();
        feed(&mut j, &mut out, true, 10, 2);
        feed(&mut j, &mut out, false, 0, 3);
        feed(&mut j, &mut out, false, 20, 2); // 4th SSH packet closes the window
        feed(&mut j, &mut out, false, 0, 1); // belongs to the next window
        feed(&mut j, &mut out, false, 30, 1);
        assert_eq!(out, vec!["c10s20_c2s2_c0s3".to_owned()]);
        assert_eq!(j.finish().as_deref(), Some("c0s30_c0s1_c0s1"));
        // Only ACKs in the last window: nothing to emit.
        let mut j = Ja4Ssh::with_window(1);
        assert_eq!(
            j.on_packet(true, 5, 0x18).as_deref(),
            Some("c5s0_c1s0_c0s0")
        );
        j.on_packet(true, 0, TCP_ACK_ONLY);
        assert_eq!(j.finish(), None);
        assert_eq!(Ja4Ssh::with_window(0).window, DEFAULT_WINDOW);
    }

    #[test]
    fn mode_ties_go_to_the_smallest_and_only_exact_acks_count() {
        let mut j = Ja4Ssh::new();
        for len in [48, 48, 36, 36, 100] {
            j.on_packet(false, len, 0x18);
        }
        j.on_packet(true, 0, 0x11); // FIN-ACK
        j.on_packet(true, 0, 0x14); // RST-ACK
        j.on_packet(true, 0, 0x12); // SYN-ACK
        j.on_packet(true, 0, 0x50); // ECE+ACK
        j.on_packet(true, 0, TCP_ACK_ONLY);
        assert_eq!(j.finish().as_deref(), Some("c0s36_c0s5_c1s0"));
    }

    #[test]
    fn hassh_of_gre_sample() {
        // expected/rust/gre-sample.pcap.yaml ssh_extras.
        let (cb, ck) = side(GRE_CLIENT);
        let (sb, sk) = side(GRE_SERVER);
        let e = SshExtras::new(Some(&cb), Some(&sb), Some(&ck), Some(&sk));
        assert_eq!(
            e,
            SshExtras {
                hassh: Some("5ef6678a6b060094834599ca16581b05".into()),
                hassh_server: Some("6e3242d64766f4154c11858bbd654415".into()),
                ssh_protocol_client: Some("SSH-2.0-OpenSSH_3.6.1p1".into()),
                ssh_protocol_server: Some("SSH-1.99-OpenSSH_3.1p1".into()),
                encryption_algorithm: Some("aes128-cbc".into()),
            }
        );
        // The RFC's negotiation picks the client's first choice instead.
        assert_eq!(
            negotiated_encryption_c2s(&ck, &sk).as_deref(),
            Some("blowfish-cbc")
        );
    }

    #[test]
    fn hassh_of_ssh_r_stream_1() {
        // expected/rust/ssh-r.pcap.yaml stream 1 (OpenSSH 7.4 client, 8.7 server).
        let client = kex_with(
            "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group-exchange-sha256,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group-exchange-sha1,diffie-hellman-group14-sha256,diffie-hellman-group14-sha1,diffie-hellman-group1-sha1,ext-info-c",
            "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com,aes128-cbc,aes192-cbc,aes256-cbc",
            "umac-64-etm@openssh.com,umac-128-etm@openssh.com,hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,hmac-sha1-etm@openssh.com,umac-64@openssh.com,umac-128@openssh.com,hmac-sha2-256,hmac-sha2-512,hmac-sha1",
            "none,zlib@openssh.com,zlib",
        );
        let server = kex_with(
            "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group-exchange-sha256,diffie-hellman-group14-sha256,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512",
            "aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-ctr,aes128-gcm@openssh.com,aes128-ctr",
            "hmac-sha2-256-etm@openssh.com,hmac-sha1-etm@openssh.com,umac-128-etm@openssh.com,hmac-sha2-512-etm@openssh.com,hmac-sha2-256,hmac-sha1,umac-128@openssh.com,hmac-sha2-512",
            "none,zlib@openssh.com",
        );
        assert_eq!(hassh(&client), "ec9ea89c70f5fc71cf61061bff5e4740");
        assert_eq!(hassh_server(&server), "2307c390c7c9aba5b4c9519e72347f34");
        assert_eq!(
            reference_encryption_algorithm(&client, &server).as_deref(),
            Some("aes256-gcm@openssh.com")
        );
        assert_eq!(
            negotiated_encryption_c2s(&client, &server).as_deref(),
            Some("chacha20-poly1305@openssh.com")
        );
    }

    #[test]
    fn ssh1_extras_have_banners_only() {
        // sshv1.pcap: both sides SSH-1.5, so no KEXINIT.
        let b = parse_banner(b"SSH-1.5-1.2.26\n").expect("banner");
        let e = SshExtras::new(Some(&b), Some(&b), None, None);
        assert_eq!(e.ssh_protocol_client.as_deref(), Some("SSH-1.5-1.2.26"));
        assert_eq!(
            (e.hassh, e.hassh_server, e.encryption_algorithm),
            (None, None, None)
        );
        // No common cipher at all.
        let a = kex_with("k", "aes128-ctr", "m", "none");
        let z = kex_with("k", "3des-cbc,", "m", "none");
        assert_eq!(reference_encryption_algorithm(&a, &z), None);
    }

    #[test]
    fn no_panic_on_odd_inputs() {
        let mut j = Ja4Ssh::with_window(3);
        let mut x: u32 = 7;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = if x & 1 == 0 { 0 } else { x as usize % 70_000 };
            if let Some(f) = j.on_packet(x & 2 == 0, len, (x >> 8) as u8) {
                assert_eq!(f.split('_').count(), 3);
            }
        }
        let _ = j.finish();
        let _ = j.on_packet(true, usize::MAX, 0x18);
        assert!(j.finish().is_some());
    }
}
