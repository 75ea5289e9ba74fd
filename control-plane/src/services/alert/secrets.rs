//! Channel secrets (webhook HMAC keys, SMTP passwords) encrypted at rest.
//!
//! A copy of the database (a backup, a replica, a dump handed to support) must not hand out the
//! credentials of the teams' webhooks and mail relays. So the `secret` column holds
//! `sealed:v1:<base64 of nonce ‖ ciphertext ‖ tag>`: ChaCha20-Poly1305 (RustCrypto
//! `chacha20poly1305`, already in the workspace) under a 256-bit key that is not in the
//! database, with a random 96-bit nonce per secret and the channel's id as associated data (a
//! sealed secret copied onto another channel's row does not open).
//!
//! The key comes from `alert.secrets_key` (`HAIS_ALERT_SECRETS_KEY`, 64 hex digits), which every
//! process running the alert service or the gateway must share; else from the file
//! `<data_dir>/alert-secrets.key`, created with a random key (mode 0600) on first start. Rows
//! written in clear by an older release still work (a value without the prefix is the secret
//! itself) and are sealed when the service starts ([`seal_clear_rows`]).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};

use crate::store::Store;

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "alert-secrets.key";
/// What a sealed value starts with.
const PREFIX: &str = "sealed:v1:";
const NONCE_LEN: usize = 12;

/// Why secrets cannot be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("alert secrets key: {0}")]
    Key(String),
    #[error("a channel secret does not open with this key (another alert.secrets_key?)")]
    Open,
}

/// Seals and opens channel secrets with one key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> SecretBox {
        SecretBox {
            cipher: ChaCha20Poly1305::new(&(*key).into()),
        }
    }

    /// The key from `configured` (64 hex digits), else from `<data_dir>/alert-secrets.key`,
    /// created with a random key (0600) if missing, tightened to 0600 if wider.
    pub fn load(configured: Option<&str>, data_dir: &Path) -> Result<SecretBox, SecretError> {
        if let Some(hex_key) = configured {
            return parse_key(hex_key).map(|k| SecretBox::new(&k));
        }
        let path = data_dir.join(KEY_FILE);
        let bad = |e: &dyn std::fmt::Display| SecretError::Key(format!("{}: {e}", path.display()));
        if !path.exists() {
            let mut key = [0u8; 32];
            rand::fill(&mut key[..]);
            crate::secure_fs::write_secret(&path, format!("{}\n", hex::encode(key)).as_bytes())
                .map_err(|e| bad(&e))?;
            tracing::info!(path = %path.display(), "alert: created the channel secrets key");
            return Ok(SecretBox::new(&key));
        }
        crate::secure_fs::private_file(&path).map_err(|e| bad(&e))?;
        let text = std::fs::read_to_string(&path).map_err(|e| bad(&e))?;
        parse_key(text.trim()).map(|k| SecretBox::new(&k))
    }

    /// `secret` sealed for channel `channel_id`.
    pub fn seal(&self, channel_id: &str, secret: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce[..]);
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: channel_id.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 seals messages of any size a channel secret has");
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD_NO_PAD.encode(raw))
    }

    /// The secret a stored value holds: opened if sealed, as it is if stored in clear by an
    /// older release.
    pub fn open(&self, channel_id: &str, stored: &str) -> Result<String, SecretError> {
        let Some(b64) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_owned());
        };
        let raw = STANDARD_NO_PAD.decode(b64).map_err(|_| SecretError::Open)?;
        if raw.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretError::Open)?;
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: channel_id.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(plain).map_err(|_| SecretError::Open)
    }
}

/// Whether a stored value is sealed (rather than an older release's clear text).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

fn parse_key(hex_key: &str) -> Result<[u8; 32], SecretError> {
    hex::decode(hex_key)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| SecretError::Key("must be 64 hex digits (32 bytes)".into()))
}

/// Seals every channel secret still stored in clear (written by a release before sealing);
/// returns how many. Idempotent, and safe beside other processes doing the same (each row is
/// replaced only if it still holds the clear value).
pub async fn seal_clear_rows(
    store: &dyn Store,
    secrets: &SecretBox,
) -> Result<usize, crate::store::StoreError> {
    let mut n = 0;
    for (id, stored) in store.channel_secrets().await? {
        if !is_sealed(&stored)
            && store
                .replace_channel_secret(&id, &stored, &secrets.seal(&id, &stored))
                .await?
        {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_only_with_the_key_and_the_channel() {
        let b = SecretBox::new(&[7; 32]);
        let s = b.seal("chan-1", "hmac-key-0123456789");
        assert!(is_sealed(&s));
        assert!(!s.contains("hmac-key"));
        assert_ne!(
            s,
            b.seal("chan-1", "hmac-key-0123456789"),
            "a fresh nonce each time"
        );
        assert_eq!(b.open("chan-1", &s).unwrap(), "hmac-key-0123456789");
        assert!(b.open("chan-2", &s).is_err(), "bound to its channel");
        assert!(SecretBox::new(&[8; 32]).open("chan-1", &s).is_err());
        let mut tampered = s.clone();
        tampered.pop();
        assert!(b.open("chan-1", &tampered).is_err());
        // A clear value from an older release is the secret itself.
        assert_eq!(b.open("chan-1", "clear-secret").unwrap(), "clear-secret");
        assert!(parse_key("00").is_err());
        assert!(parse_key(&"ab".repeat(32)).is_ok());
    }

    #[test]
    fn the_key_file_is_made_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("hais-alert-key-{}", uuid::Uuid::now_v7()));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let first = SecretBox::load(None, &dir).unwrap();
        let file = dir.join(KEY_FILE);
        assert_eq!(mode(&file), 0o600);
        let sealed = first.seal("c", "s3cret");
        // Made wider by hand: tightened, and the same key is read back.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let again = SecretBox::load(None, &dir).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(again.open("c", &sealed).unwrap(), "s3cret");
        // A configured key wins over the file.
        let configured = SecretBox::load(Some(&"11".repeat(32)), &dir).unwrap();
        assert!(configured.open("c", &sealed).is_err());
        std::fs::write(&file, "not hex\n").unwrap();
        assert!(SecretBox::load(None, &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
