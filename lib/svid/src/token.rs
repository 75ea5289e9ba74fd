//! Join tokens: one-time enrollment credentials that also pin the control plane's CA.
//!
//! Format: `hais1.<id>.<secret>.<ca-sha256-hex>` — `id` 16 hex characters (stored in clear, to
//! find the token), `secret` 32 hex characters (stored hashed), and the SHA-256 of the CA
//! certificate. The agent sends only `<id>.<secret>`; it keeps the hash to check the server it
//! talks to, so a man in the middle at first contact cannot hand it a different CA.

use std::fmt;

use crate::SvidError;

const PREFIX: &str = "hais1";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 32;

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub secret: String,
    pub ca_hash: [u8; 32],
}

// The secret must never reach a log line.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("ca_hash", &hex::encode(self.ca_hash))
            .finish_non_exhaustive()
    }
}

fn random_hex(n_bytes: usize) -> String {
    let mut b = vec![0u8; n_bytes];
    rand::fill(&mut b[..]);
    hex::encode(b)
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl JoinToken {
    /// A fresh token (64-bit id, 128-bit secret) pinning the CA with hash `ca_hash`.
    pub fn generate(ca_hash: [u8; 32]) -> JoinToken {
        JoinToken {
            id: random_hex(ID_HEX / 2),
            secret: random_hex(SECRET_HEX / 2),
            ca_hash,
        }
    }

    pub fn parse(s: &str) -> Result<JoinToken, SvidError> {
        let mut it = s.trim().split('.');
        let (Some(p), Some(id), Some(secret), Some(hash), None) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return Err(SvidError::BadToken(
                "expected hais1.<id>.<secret>.<ca-hash>",
            ));
        };
        if p != PREFIX {
            return Err(SvidError::BadToken("unknown token version (want hais1)"));
        }
        if !is_lower_hex(id, ID_HEX) || !is_lower_hex(secret, SECRET_HEX) {
            return Err(SvidError::BadToken("id or secret has the wrong shape"));
        }
        let mut ca_hash = [0u8; 32];
        if !is_lower_hex(hash, 64) || hex::decode_to_slice(hash, &mut ca_hash).is_err() {
            return Err(SvidError::BadToken("CA hash is not 64 hex characters"));
        }
        Ok(JoinToken {
            id: id.to_owned(),
            secret: secret.to_owned(),
            ca_hash,
        })
    }

    /// What the agent sends in its enrollment request: `<id>.<secret>`.
    pub fn credential(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}.{}",
            self.id,
            self.secret,
            hex::encode(self.ca_hash)
        )
    }
}

/// Splits a received credential into `(id, secret)`, or `None` when it has the wrong shape.
pub fn split_credential(s: &str) -> Option<(&str, &str)> {
    let (id, secret) = s.split_once('.')?;
    (is_lower_hex(id, ID_HEX) && is_lower_hex(secret, SECRET_HEX)).then_some((id, secret))
}
