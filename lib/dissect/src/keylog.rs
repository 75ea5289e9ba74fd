//! TLS key logs in the NSS Key Log Format (`SSLKEYLOGFILE`), the text browsers write and
//! pcapng Decryption Secrets Blocks (secrets type `TLSK`) embed.
//!
//! Each useful line is `LABEL <client_random hex> <secret hex>`: the ClientHello random
//! (32 bytes) identifies the connection, the label says which secret it is. With these the
//! agent can decrypt TLS 1.3 handshakes (encrypted certificates) and application data (HTTP/2
//! requests inside TLS, for JA4H). Lines with other labels, comments and malformed lines are
//! skipped: a key log is often concatenated from several sources and one bad line must not
//! cost the rest.

use std::collections::HashMap;

/// The key log labels the agent uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyLogLabel {
    /// `CLIENT_RANDOM`: the TLS 1.2 (and earlier) 48-byte master secret.
    ClientRandom,
    /// `CLIENT_HANDSHAKE_TRAFFIC_SECRET` (TLS 1.3).
    ClientHandshakeTrafficSecret,
    /// `SERVER_HANDSHAKE_TRAFFIC_SECRET` (TLS 1.3).
    ServerHandshakeTrafficSecret,
    /// `CLIENT_TRAFFIC_SECRET_0` (TLS 1.3 application data, client to server).
    ClientTrafficSecret0,
    /// `SERVER_TRAFFIC_SECRET_0` (TLS 1.3 application data, server to client).
    ServerTrafficSecret0,
}

impl KeyLogLabel {
    /// The label as it appears in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyLogLabel::ClientRandom => "CLIENT_RANDOM",
            KeyLogLabel::ClientHandshakeTrafficSecret => "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
            KeyLogLabel::ServerHandshakeTrafficSecret => "SERVER_HANDSHAKE_TRAFFIC_SECRET",
            KeyLogLabel::ClientTrafficSecret0 => "CLIENT_TRAFFIC_SECRET_0",
            KeyLogLabel::ServerTrafficSecret0 => "SERVER_TRAFFIC_SECRET_0",
        }
    }

    /// The label for a file's label text, `None` for labels the agent ignores
    /// (`EXPORTER_SECRET`, `CLIENT_EARLY_TRAFFIC_SECRET`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "CLIENT_RANDOM" => KeyLogLabel::ClientRandom,
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET" => KeyLogLabel::ClientHandshakeTrafficSecret,
            "SERVER_HANDSHAKE_TRAFFIC_SECRET" => KeyLogLabel::ServerHandshakeTrafficSecret,
            "CLIENT_TRAFFIC_SECRET_0" => KeyLogLabel::ClientTrafficSecret0,
            "SERVER_TRAFFIC_SECRET_0" => KeyLogLabel::ServerTrafficSecret0,
            _ => return None,
        })
    }
}

impl TryFrom<&str> for KeyLogLabel {
    type Error = UnknownLabel;

    fn try_from(s: &str) -> Result<Self, UnknownLabel> {
        KeyLogLabel::parse(s).ok_or(UnknownLabel)
    }
}

/// A label text that is not one of the [`KeyLogLabel`]s; lookups with it find nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownLabel;

/// Longest secret accepted: SHA-384 traffic secrets and TLS 1.2 master secrets are 48 bytes;
/// 64 leaves room for a future SHA-512 suite without letting a line allocate freely.
pub const MAX_SECRET_LEN: usize = 64;

/// Most entries kept; further lines are ignored. A busy browser session logs a few hundred.
pub const MAX_ENTRIES: usize = 1_000_000;

/// Secrets indexed by (label, client random).
#[derive(Debug, Clone, Default)]
pub struct KeyLog {
    secrets: HashMap<(KeyLogLabel, [u8; 32]), Vec<u8>>,
}

impl KeyLog {
    /// An empty key log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses key log text into a new key log.
    pub fn parse(text: &str) -> Self {
        let mut log = Self::new();
        log.merge_text(text);
        log
    }

    /// Adds every usable line of `text` (a key log file, or the payload of a pcapng
    /// Decryption Secrets Block). A later line for the same label and client random replaces
    /// the earlier one. Returns how many lines were used.
    pub fn merge_text(&mut self, text: &str) -> usize {
        let mut used = 0;
        for line in text.lines() {
            if self.secrets.len() >= MAX_ENTRIES {
                break;
            }
            if let Some((label, random, secret)) = parse_line(line) {
                self.secrets.insert((label, random), secret);
                used += 1;
            }
        }
        used
    }

    /// The secret logged under `label` for the connection whose ClientHello carried
    /// `client_random`. `label` is a [`KeyLogLabel`] or its text (`"CLIENT_RANDOM"`, ...);
    /// text the agent does not keep finds nothing.
    pub fn secret<L: TryInto<KeyLogLabel>>(
        &self,
        label: L,
        client_random: &[u8; 32],
    ) -> Option<&[u8]> {
        let label = label.try_into().ok()?;
        self.secrets
            .get(&(label, *client_random))
            .map(Vec::as_slice)
    }

    /// Number of secrets held.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// True when no secret is held.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

fn parse_line(line: &str) -> Option<(KeyLogLabel, [u8; 32], Vec<u8>)> {
    let line = line.trim();
    if line.starts_with('#') {
        return None;
    }
    let mut parts = line.split_ascii_whitespace();
    let label = KeyLogLabel::parse(parts.next()?)?;
    let random_hex = parts.next()?;
    let secret_hex = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let mut random = [0u8; 32];
    if random_hex.len() != 64 || !decode_hex_into(random_hex, &mut random) {
        return None;
    }
    if secret_hex.is_empty()
        || !secret_hex.len().is_multiple_of(2)
        || secret_hex.len() > 2 * MAX_SECRET_LEN
    {
        return None;
    }
    let mut secret = vec![0u8; secret_hex.len() / 2];
    if !decode_hex_into(secret_hex, &mut secret) {
        return None;
    }
    Some((label, random, secret))
}

/// Decodes `hex` (exactly twice `out.len()` digits, either case) into `out`.
fn decode_hex_into(hex: &str, out: &mut [u8]) -> bool {
    let digits = hex.as_bytes();
    if digits.len() != out.len() * 2 {
        return false;
    }
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (
            pair.first().and_then(|c| (*c as char).to_digit(16)),
            pair.get(1).and_then(|c| (*c as char).to_digit(16)),
        ) else {
            return false;
        };
        *o = (hi * 16 + lo) as u8;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const CR: &str = "0b8ac7ed5a4fdd3c12d24ab9e4bd06be1f0f54b1afd8de9a4e3ce79347ad7fb1";

    fn random() -> [u8; 32] {
        hex::decode(CR).unwrap().try_into().unwrap()
    }

    #[test]
    fn parses_labels_and_skips_the_rest() {
        let text = format!(
            "# SSL/TLS secrets log file, generated by NSS\r\n\
             CLIENT_HANDSHAKE_TRAFFIC_SECRET {CR} {s1}\r\n\
             SERVER_HANDSHAKE_TRAFFIC_SECRET {CR} {s2}\n\
             EXPORTER_SECRET {CR} {s1}\n\
             CLIENT_TRAFFIC_SECRET_0 {CR} {s3}\n\
             SERVER_TRAFFIC_SECRET_0 {CR} zz{s4}\n\
             CLIENT_RANDOM {CR} {ms}\n\
             CLIENT_RANDOM abcd {ms}\n\
             CLIENT_RANDOM {CR}\n\
             \n",
            s1 = "11".repeat(32),
            s2 = "22".repeat(32),
            s3 = "33".repeat(48),
            s4 = "44".repeat(31),
            ms = "AB".repeat(48),
        );
        let log = KeyLog::parse(&text);
        let cr = random();
        assert_eq!(log.len(), 4);
        assert_eq!(
            log.secret(KeyLogLabel::ClientHandshakeTrafficSecret, &cr),
            Some(&[0x11u8; 32][..])
        );
        assert_eq!(
            log.secret(KeyLogLabel::ServerHandshakeTrafficSecret, &cr),
            Some(&[0x22u8; 32][..])
        );
        assert_eq!(
            log.secret(KeyLogLabel::ClientTrafficSecret0, &cr),
            Some(&[0x33u8; 48][..])
        );
        assert_eq!(log.secret(KeyLogLabel::ServerTrafficSecret0, &cr), None);
        assert_eq!(
            log.secret(KeyLogLabel::ClientRandom, &cr),
            Some(&[0xabu8; 48][..])
        );
        assert_eq!(log.secret(KeyLogLabel::ClientRandom, &[0u8; 32]), None);
        // The label may also be given as text.
        assert_eq!(log.secret("CLIENT_RANDOM", &cr), Some(&[0xabu8; 48][..]));
        assert_eq!(log.secret("EXPORTER_SECRET", &cr), None);
    }

    #[test]
    fn merge_adds_and_replaces() {
        let mut log = KeyLog::new();
        assert!(log.is_empty());
        assert_eq!(
            log.merge_text(&format!("CLIENT_RANDOM {CR} {}", "01".repeat(48))),
            1
        );
        log.merge_text(&format!(
            "SERVER_TRAFFIC_SECRET_0 {CR} {}\nCLIENT_RANDOM {CR} {}",
            "02".repeat(32),
            "03".repeat(48)
        ));
        assert_eq!(log.len(), 2);
        assert_eq!(
            log.secret(KeyLogLabel::ClientRandom, &random()),
            Some(&[3u8; 48][..])
        );
        for label in [
            KeyLogLabel::ClientRandom,
            KeyLogLabel::ServerTrafficSecret0,
            KeyLogLabel::ClientHandshakeTrafficSecret,
        ] {
            assert_eq!(KeyLogLabel::parse(label.as_str()), Some(label));
        }
    }

    #[test]
    fn oversized_and_odd_secrets_are_rejected() {
        let log = KeyLog::parse(&format!(
            "CLIENT_RANDOM {CR} {}\nCLIENT_RANDOM {CR} abc\nCLIENT_RANDOM {CR} {} extra",
            "00".repeat(MAX_SECRET_LEN + 1),
            "00".repeat(48)
        ));
        assert!(log.is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        let sample = format!("CLIENT_RANDOM {CR} {}\n", "ab".repeat(48));
        for cut in 0..=sample.len() {
            let _ = KeyLog::parse(&sample[..cut]);
        }
        let mut x = 0x2545_f491u32;
        let mut text = String::new();
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            text.push(match x % 7 {
                0 => ' ',
                1 => '\n',
                2 => 'é',
                _ => char::from(b"0123456789abcdefCLIENT_RANDOM#"[(x >> 8) as usize % 30]),
            });
        }
        let _ = KeyLog::parse(&text);
    }
}
