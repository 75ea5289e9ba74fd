//! TLS record decryption with secrets from a key log (see [`crate::keylog`]).
//!
//! Why the agent decrypts at all: HTTP/2 over TLS (`h2`) hides the request headers JA4H
//! needs, and TLS 1.3 hides the server certificates JA4X needs. When the operator supplies a
//! key log (or a pcapng carries Decryption Secrets Blocks), [`RecordDecrypter`] turns protected
//! records back into plaintext. It is strictly a passive reader: one decrypter per direction
//! and key epoch, fed every protected record of that direction in order, because the
//! per-record nonce is derived from an implicit sequence number.
//!
//! Supported: the AEAD suites. TLS 1.3: `TLS_AES_128_GCM_SHA256` (0x1301),
//! `TLS_AES_256_GCM_SHA384` (0x1302), `TLS_CHACHA20_POLY1305_SHA256` (0x1303). TLS 1.2: the
//! AES-GCM suites of RFC 5288/5289/5487/8442 and the ChaCha20-Poly1305 suites of RFC 7905.
//! CBC and stream suites, CCM and anything else are refused with
//! [`DecryptError::UnsupportedSuite`]; the caller then simply does not decrypt.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use chacha20poly1305::ChaCha20Poly1305;
use hkdf::Hkdf;
use hmac::{EagerHash, Hmac, Mac};
use sha2::{Sha256, Sha384};
use thiserror::Error;

/// Largest TLS 1.3 protected record body (RFC 8446 §5.2: 2^14 + 256).
pub const MAX_TLS13_CIPHERTEXT: usize = (1 << 14) + 256;

/// Largest TLS 1.2 protected record body (RFC 5246 §6.2.3: 2^14 + 2048).
pub const MAX_TLS12_CIPHERTEXT: usize = (1 << 14) + 2048;

const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 12;
/// TLS 1.2 AES-GCM: 8-byte explicit nonce in front of each record (RFC 5288 §3).
const GCM_EXPLICIT_NONCE_LEN: usize = 8;

/// Why a decrypter could not be built or a record could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// The cipher suite is not an AEAD suite this module implements (or not valid for the
    /// TLS version asked for).
    #[error("cipher suite 0x{0:04x} is not supported for decryption")]
    UnsupportedSuite(u16),
    /// The secret does not have the length the suite's hash or PRF needs.
    #[error("secret is {actual} bytes, the suite needs {expected}")]
    SecretLength {
        /// Length the suite requires.
        expected: usize,
        /// Length supplied.
        actual: usize,
    },
    /// The record body is shorter than the AEAD overhead or longer than the protocol allows.
    #[error("protected record of {0} bytes has an impossible length")]
    RecordLength(usize),
    /// The length in the record header differs from the body passed in.
    #[error("record header length {header} differs from body length {body}")]
    LengthMismatch {
        /// Length field of the 5-byte header.
        header: usize,
        /// Bytes passed as the body.
        body: usize,
    },
    /// AEAD authentication failed: wrong key, wrong sequence number (a record was missed
    /// or replayed), or a corrupted record. The sequence number is not advanced.
    #[error("record authentication failed")]
    Authentication,
    /// A TLS 1.3 inner plaintext made only of zero bytes has no content type.
    #[error("TLS 1.3 record without an inner content type")]
    MissingContentType,
    /// 2^64 records: the sequence number cannot advance.
    #[error("record sequence number exhausted")]
    SequenceExhausted,
    /// Key update is a TLS 1.3 operation.
    #[error("key update applies to TLS 1.3 only")]
    NotTls13,
    /// An HKDF label or output length outside what HKDF-Expand-Label can encode.
    #[error("key derivation parameters out of range")]
    KeyDerivation,
}

/// Hash function of a suite: HKDF in TLS 1.3, the PRF in TLS 1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// SHA-256 (32-byte output).
    Sha256,
    /// SHA-384 (48-byte output).
    Sha384,
}

impl HashAlgorithm {
    /// Output length in bytes, which is also the length of TLS 1.3 traffic secrets.
    pub fn output_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha384 => 48,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AeadAlgorithm {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl AeadAlgorithm {
    fn key_len(self) -> usize {
        match self {
            AeadAlgorithm::Aes128Gcm => 16,
            AeadAlgorithm::Aes256Gcm | AeadAlgorithm::ChaCha20Poly1305 => 32,
        }
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1): `HKDF-Expand(secret, HkdfLabel, out.len())` with
/// `HkdfLabel = u16 length || u8 len || "tls13 " label || u8 len || context`.
///
/// Public because QUIC (RFC 9001) derives its packet protection keys the same way, with
/// labels such as `quic key`.
pub fn hkdf_expand_label(
    hash: HashAlgorithm,
    secret: &[u8],
    label: &[u8],
    context: &[u8],
    out: &mut [u8],
) -> Result<(), DecryptError> {
    const PREFIX: &[u8] = b"tls13 ";
    let out_len = u16::try_from(out.len()).map_err(|_| DecryptError::KeyDerivation)?;
    let label_len =
        u8::try_from(PREFIX.len() + label.len()).map_err(|_| DecryptError::KeyDerivation)?;
    let context_len = u8::try_from(context.len()).map_err(|_| DecryptError::KeyDerivation)?;
    let mut info = Vec::with_capacity(4 + usize::from(label_len) + context.len());
    info.extend_from_slice(&out_len.to_be_bytes());
    info.push(label_len);
    info.extend_from_slice(PREFIX);
    info.extend_from_slice(label);
    info.push(context_len);
    info.extend_from_slice(context);
    let result = match hash {
        HashAlgorithm::Sha256 => Hkdf::<Sha256>::from_prk(secret)
            .map_err(|_| DecryptError::KeyDerivation)?
            .expand(&info, out),
        HashAlgorithm::Sha384 => Hkdf::<Sha384>::from_prk(secret)
            .map_err(|_| DecryptError::KeyDerivation)?
            .expand(&info, out),
    };
    result.map_err(|_| DecryptError::KeyDerivation)
}

fn hmac_with<D>(key: &[u8], parts: &[&[u8]]) -> Vec<u8>
where
    D: EagerHash,
    Hmac<D>: KeyInit + Mac,
{
    // HMAC takes keys of any length, so this never falls back in practice.
    let Ok(mut mac) = <Hmac<D> as KeyInit>::new_from_slice(key) else {
        return Vec::new();
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hmac(hash: HashAlgorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    match hash {
        HashAlgorithm::Sha256 => hmac_with::<Sha256>(key, parts),
        HashAlgorithm::Sha384 => hmac_with::<Sha384>(key, parts),
    }
}

/// The TLS 1.2 PRF (RFC 5246 §5): `P_hash(secret, label || seed)` truncated to `len`.
fn tls12_prf(hash: HashAlgorithm, secret: &[u8], label: &[u8], seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + hash.output_len());
    // A(1) = HMAC(secret, label || seed); A(i) = HMAC(secret, A(i-1)).
    let mut a = hmac(hash, secret, &[label, seed]);
    while out.len() < len {
        out.extend_from_slice(&hmac(hash, secret, &[&a, label, seed]));
        a = hmac(hash, secret, &[&a]);
    }
    out.truncate(len);
    out
}

/// The AEAD and hash of a TLS 1.3 suite.
fn tls13_suite(suite: u16) -> Option<(AeadAlgorithm, HashAlgorithm)> {
    match suite {
        0x1301 => Some((AeadAlgorithm::Aes128Gcm, HashAlgorithm::Sha256)),
        0x1302 => Some((AeadAlgorithm::Aes256Gcm, HashAlgorithm::Sha384)),
        0x1303 => Some((AeadAlgorithm::ChaCha20Poly1305, HashAlgorithm::Sha256)),
        _ => None,
    }
}

/// The AEAD and PRF hash of a TLS 1.2 AEAD suite.
fn tls12_suite(suite: u16) -> Option<(AeadAlgorithm, HashAlgorithm)> {
    use AeadAlgorithm::*;
    use HashAlgorithm::*;
    match suite {
        // RFC 5288 (RSA, DHE, DH, anon) and RFC 5487 (PSK): even = AES-128/SHA-256,
        // odd = AES-256/SHA-384.
        0x009c | 0x009e | 0x00a0 | 0x00a2 | 0x00a4 | 0x00a6 | 0x00a8 | 0x00aa | 0x00ac => {
            Some((Aes128Gcm, Sha256))
        }
        0x009d | 0x009f | 0x00a1 | 0x00a3 | 0x00a5 | 0x00a7 | 0x00a9 | 0x00ab | 0x00ad => {
            Some((Aes256Gcm, Sha384))
        }
        // RFC 5289 (ECDHE/ECDH): here odd = AES-128/SHA-256.
        0xc02b | 0xc02d | 0xc02f | 0xc031 => Some((Aes128Gcm, Sha256)),
        0xc02c | 0xc02e | 0xc030 | 0xc032 => Some((Aes256Gcm, Sha384)),
        // RFC 8442 ECDHE_PSK.
        0xd001 => Some((Aes128Gcm, Sha256)),
        0xd002 => Some((Aes256Gcm, Sha384)),
        // RFC 7905.
        0xcca8..=0xccae => Some((ChaCha20Poly1305, Sha256)),
        _ => None,
    }
}

/// True when [`RecordDecrypter`] can decrypt records of `suite` (TLS 1.2 or 1.3).
pub fn is_supported_suite(suite: u16) -> bool {
    tls13_suite(suite).is_some() || tls12_suite(suite).is_some()
}

/// A keyed AEAD. Boxed: the AES key schedules are a few hundred bytes and decrypters live in
/// per-connection state.
enum Cipher {
    Aes128Gcm(Box<Aes128Gcm>),
    Aes256Gcm(Box<Aes256Gcm>),
    ChaCha20Poly1305(Box<ChaCha20Poly1305>),
}

impl std::fmt::Debug for Cipher {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cipher::Aes128Gcm(_) => "Aes128Gcm",
            Cipher::Aes256Gcm(_) => "Aes256Gcm",
            Cipher::ChaCha20Poly1305(_) => "ChaCha20Poly1305",
        })
    }
}

impl Cipher {
    fn new(alg: AeadAlgorithm, key: &[u8]) -> Result<Self, DecryptError> {
        let bad_len = || DecryptError::SecretLength {
            expected: alg.key_len(),
            actual: key.len(),
        };
        Ok(match alg {
            AeadAlgorithm::Aes128Gcm => Cipher::Aes128Gcm(Box::new(
                Aes128Gcm::new_from_slice(key).map_err(|_| bad_len())?,
            )),
            AeadAlgorithm::Aes256Gcm => Cipher::Aes256Gcm(Box::new(
                Aes256Gcm::new_from_slice(key).map_err(|_| bad_len())?,
            )),
            AeadAlgorithm::ChaCha20Poly1305 => Cipher::ChaCha20Poly1305(Box::new(
                ChaCha20Poly1305::new_from_slice(key).map_err(|_| bad_len())?,
            )),
        })
    }

    /// Decrypts `buf` (ciphertext || tag) in place, leaving the plaintext.
    fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<(), DecryptError> {
        let result = match self {
            Cipher::Aes128Gcm(c) => c.decrypt_in_place(&(*nonce).into(), aad, buf),
            Cipher::Aes256Gcm(c) => c.decrypt_in_place(&(*nonce).into(), aad, buf),
            Cipher::ChaCha20Poly1305(c) => c.decrypt_in_place(&(*nonce).into(), aad, buf),
        };
        result.map_err(|_| DecryptError::Authentication)
    }
}

/// How the nonce and additional data of each record are built.
#[derive(Debug)]
enum Mode {
    /// RFC 8446 §5.2-5.3; the secret is kept for key updates.
    Tls13 {
        alg: AeadAlgorithm,
        hash: HashAlgorithm,
        secret: Vec<u8>,
    },
    /// RFC 5288: 4-byte implicit salt (in `iv[..4]`) plus an 8-byte explicit nonce per record.
    Tls12Gcm,
    /// RFC 7905: TLS 1.3-style nonce, TLS 1.2 additional data.
    Tls12ChaCha,
}

/// Decrypts the protected records of one direction of one connection, for one key epoch.
pub struct RecordDecrypter {
    cipher: Cipher,
    iv: [u8; NONCE_LEN],
    seq: u64,
    mode: Mode,
}

impl std::fmt::Debug for RecordDecrypter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.mode {
            Mode::Tls13 { .. } => "tls13",
            Mode::Tls12Gcm => "tls12-gcm",
            Mode::Tls12ChaCha => "tls12-chacha20",
        };
        f.debug_struct("RecordDecrypter")
            .field("cipher", &self.cipher)
            .field("mode", &mode)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl RecordDecrypter {
    /// A TLS 1.3 decrypter from a traffic secret (`*_HANDSHAKE_TRAFFIC_SECRET` for the
    /// handshake epoch, `*_TRAFFIC_SECRET_0` for application data) and the negotiated suite.
    /// The sequence number starts at 0, as it does at every TLS 1.3 key change.
    pub fn tls13(suite: u16, traffic_secret: &[u8]) -> Result<Self, DecryptError> {
        let (alg, hash) = tls13_suite(suite).ok_or(DecryptError::UnsupportedSuite(suite))?;
        Self::tls13_from_secret(alg, hash, traffic_secret.to_vec())
    }

    fn tls13_from_secret(
        alg: AeadAlgorithm,
        hash: HashAlgorithm,
        secret: Vec<u8>,
    ) -> Result<Self, DecryptError> {
        if secret.len() != hash.output_len() {
            return Err(DecryptError::SecretLength {
                expected: hash.output_len(),
                actual: secret.len(),
            });
        }
        let mut key = vec![0u8; alg.key_len()];
        hkdf_expand_label(hash, &secret, b"key", &[], &mut key)?;
        let mut iv = [0u8; NONCE_LEN];
        hkdf_expand_label(hash, &secret, b"iv", &[], &mut iv)?;
        Ok(RecordDecrypter {
            cipher: Cipher::new(alg, &key)?,
            iv,
            seq: 0,
            mode: Mode::Tls13 { alg, hash, secret },
        })
    }

    /// A TLS 1.2 decrypter from the 48-byte master secret (key log `CLIENT_RANDOM` line) and
    /// both hello randoms; `is_client` picks the client-to-server keys, else the
    /// server-to-client ones. Use it for the records after that side's ChangeCipherSpec; the
    /// sequence number starts at 0 there.
    pub fn tls12(
        suite: u16,
        master_secret: &[u8],
        client_random: &[u8; 32],
        server_random: &[u8; 32],
        is_client: bool,
    ) -> Result<Self, DecryptError> {
        let (alg, hash) = tls12_suite(suite).ok_or(DecryptError::UnsupportedSuite(suite))?;
        if master_secret.len() != 48 {
            return Err(DecryptError::SecretLength {
                expected: 48,
                actual: master_secret.len(),
            });
        }
        let (key, iv) = tls12_keys(
            alg,
            hash,
            master_secret,
            client_random,
            server_random,
            is_client,
        );
        Self::tls12_from_keys(alg, &key, &iv)
    }

    /// From the write key and write IV (4-byte salt for GCM, 12 bytes for ChaCha20).
    fn tls12_from_keys(
        alg: AeadAlgorithm,
        key: &[u8],
        write_iv: &[u8],
    ) -> Result<Self, DecryptError> {
        let mut iv = [0u8; NONCE_LEN];
        let mode = if alg == AeadAlgorithm::ChaCha20Poly1305 {
            Mode::Tls12ChaCha
        } else {
            Mode::Tls12Gcm
        };
        let dst = iv
            .get_mut(..write_iv.len())
            .ok_or(DecryptError::KeyDerivation)?;
        dst.copy_from_slice(write_iv);
        Ok(RecordDecrypter {
            cipher: Cipher::new(alg, key)?,
            iv,
            seq: 0,
            mode,
        })
    }

    /// Sequence number the next record will be decrypted with.
    pub fn sequence(&self) -> u64 {
        self.seq
    }

    /// Moves to the next TLS 1.3 application traffic secret after a KeyUpdate handshake
    /// message from this direction's sender (RFC 8446 §7.2); the sequence number restarts.
    pub fn key_update(&mut self) -> Result<(), DecryptError> {
        let Mode::Tls13 { alg, hash, secret } = &self.mode else {
            return Err(DecryptError::NotTls13);
        };
        let (alg, hash) = (*alg, *hash);
        let mut next = vec![0u8; hash.output_len()];
        hkdf_expand_label(hash, secret, b"traffic upd", &[], &mut next)?;
        *self = Self::tls13_from_secret(alg, hash, next)?;
        Ok(())
    }

    /// Decrypts one protected record: `header` is its 5-byte record header (type, version,
    /// length), `ciphertext` the body that followed it.
    ///
    /// Returns the content type and the plaintext. For TLS 1.3 that is the inner content
    /// type, with the zero padding removed; for TLS 1.2 it is the header's type. The sequence
    /// number advances only when the record authenticates, so a record from another
    /// epoch (or garbage) does not desynchronise the decrypter.
    pub fn decrypt(
        &mut self,
        header: &[u8; 5],
        ciphertext: &[u8],
    ) -> Result<(u8, Vec<u8>), DecryptError> {
        let [content_type, v0, v1, l0, l1] = *header;
        let header_len = usize::from(u16::from_be_bytes([l0, l1]));
        if header_len != ciphertext.len() {
            return Err(DecryptError::LengthMismatch {
                header: header_len,
                body: ciphertext.len(),
            });
        }
        let next_seq = self
            .seq
            .checked_add(1)
            .ok_or(DecryptError::SequenceExhausted)?;
        let seq_bytes = self.seq.to_be_bytes();
        let result = match self.mode {
            Mode::Tls13 { .. } => {
                if ciphertext.len() <= TAG_LEN || ciphertext.len() > MAX_TLS13_CIPHERTEXT {
                    return Err(DecryptError::RecordLength(ciphertext.len()));
                }
                let nonce = xor_seq(&self.iv, seq_bytes);
                let mut buf = ciphertext.to_vec();
                self.cipher.open(&nonce, header, &mut buf)?;
                // TLSInnerPlaintext = content || type || zeros.
                let end = buf
                    .iter()
                    .rposition(|b| *b != 0)
                    .ok_or(DecryptError::MissingContentType)?;
                let inner_type = buf
                    .get(end)
                    .copied()
                    .ok_or(DecryptError::MissingContentType)?;
                buf.truncate(end);
                (inner_type, buf)
            }
            Mode::Tls12Gcm => {
                let overhead = GCM_EXPLICIT_NONCE_LEN + TAG_LEN;
                if ciphertext.len() < overhead || ciphertext.len() > MAX_TLS12_CIPHERTEXT {
                    return Err(DecryptError::RecordLength(ciphertext.len()));
                }
                let (explicit, sealed) = ciphertext.split_at(GCM_EXPLICIT_NONCE_LEN);
                let mut nonce = self.iv;
                if let Some(dst) = nonce.get_mut(4..) {
                    dst.copy_from_slice(explicit);
                }
                let aad = tls12_aad(seq_bytes, content_type, [v0, v1], sealed.len() - TAG_LEN);
                let mut buf = sealed.to_vec();
                self.cipher.open(&nonce, &aad, &mut buf)?;
                (content_type, buf)
            }
            Mode::Tls12ChaCha => {
                if ciphertext.len() < TAG_LEN || ciphertext.len() > MAX_TLS12_CIPHERTEXT {
                    return Err(DecryptError::RecordLength(ciphertext.len()));
                }
                let nonce = xor_seq(&self.iv, seq_bytes);
                let aad = tls12_aad(
                    seq_bytes,
                    content_type,
                    [v0, v1],
                    ciphertext.len() - TAG_LEN,
                );
                let mut buf = ciphertext.to_vec();
                self.cipher.open(&nonce, &aad, &mut buf)?;
                (content_type, buf)
            }
        };
        self.seq = next_seq;
        Ok(result)
    }
}

/// TLS 1.2 key block slicing (RFC 5246 §6.3) for AEAD suites: no MAC keys, then the two
/// write keys, then the two write IVs. Returns the chosen side's (key, IV).
fn tls12_keys(
    alg: AeadAlgorithm,
    hash: HashAlgorithm,
    master_secret: &[u8],
    client_random: &[u8; 32],
    server_random: &[u8; 32],
    is_client: bool,
) -> (Vec<u8>, Vec<u8>) {
    let key_len = alg.key_len();
    let iv_len = if alg == AeadAlgorithm::ChaCha20Poly1305 {
        NONCE_LEN
    } else {
        4
    };
    let mut seed = [0u8; 64];
    seed[..32].copy_from_slice(server_random);
    seed[32..].copy_from_slice(client_random);
    let block = tls12_prf(
        hash,
        master_secret,
        b"key expansion",
        &seed,
        2 * (key_len + iv_len),
    );
    let (keys, ivs) = block.split_at(2 * key_len);
    let (client_key, server_key) = keys.split_at(key_len);
    let (client_iv, server_iv) = ivs.split_at(iv_len);
    if is_client {
        (client_key.to_vec(), client_iv.to_vec())
    } else {
        (server_key.to_vec(), server_iv.to_vec())
    }
}

/// `seq_num || type || version || length` (RFC 5246 §6.2.3.3).
fn tls12_aad(seq: [u8; 8], content_type: u8, version: [u8; 2], plaintext_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq);
    aad[8] = content_type;
    aad[9..11].copy_from_slice(&version);
    // Bounded by MAX_TLS12_CIPHERTEXT, so it fits in 16 bits.
    aad[11..].copy_from_slice(&(plaintext_len as u16).to_be_bytes());
    aad
}

/// The per-record nonce: the IV with the sequence number XORed into its last 8 bytes.
fn xor_seq(iv: &[u8; NONCE_LEN], seq: [u8; 8]) -> [u8; NONCE_LEN] {
    let mut nonce = *iv;
    for (n, s) in nonce.iter_mut().skip(NONCE_LEN - 8).zip(seq) {
        *n ^= s;
    }
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.split_whitespace().collect::<String>()).unwrap()
    }

    // RFC 8448 §3 (Simple 1-RTT Handshake): the server handshake traffic secret, the keys
    // derived from it, and the server's first protected record (EncryptedExtensions,
    // Certificate, CertificateVerify, Finished).
    const RFC8448_S_HS_SECRET: &str = "b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4
        e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38";
    const RFC8448_S_HS_KEY: &str = "3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc";
    const RFC8448_S_HS_IV: &str = "5d 31 3e b2 67 12 76 ee 13 00 0b 30";
    const RFC8448_RECORD: &str = "17 03 03 02 a2 d1 ff 33 4a 56 f5 bf
        f6 59 4a 07 cc 87 b5 80 23 3f 50 0f 45 e4 89 e7 f3 3a f3 5e df
        78 69 fc f4 0a a4 0a a2 b8 ea 73 f8 48 a7 ca 07 61 2e f9 f9 45
        cb 96 0b 40 68 90 51 23 ea 78 b1 11 b4 29 ba 91 91 cd 05 d2 a3
        89 28 0f 52 61 34 aa dc 7f c7 8c 4b 72 9d f8 28 b5 ec f7 b1 3b
        d9 ae fb 0e 57 f2 71 58 5b 8e a9 bb 35 5c 7c 79 02 07 16 cf b9
        b1 18 3e f3 ab 20 e3 7d 57 a6 b9 d7 47 76 09 ae e6 e1 22 a4 cf
        51 42 73 25 25 0c 7d 0e 50 92 89 44 4c 9b 3a 64 8f 1d 71 03 5d
        2e d6 5b 0e 3c dd 0c ba e8 bf 2d 0b 22 78 12 cb b3 60 98 72 55
        cc 74 41 10 c4 53 ba a4 fc d6 10 92 8d 80 98 10 e4 b7 ed 1a 8f
        d9 91 f0 6a a6 24 82 04 79 7e 36 a6 a7 3b 70 a2 55 9c 09 ea d6
        86 94 5b a2 46 ab 66 e5 ed d8 04 4b 4c 6d e3 fc f2 a8 94 41 ac
        66 27 2f d8 fb 33 0e f8 19 05 79 b3 68 45 96 c9 60 bd 59 6e ea
        52 0a 56 a8 d6 50 f5 63 aa d2 74 09 96 0d ca 63 d3 e6 88 61 1e
        a5 e2 2f 44 15 cf 95 38 d5 1a 20 0c 27 03 42 72 96 8a 26 4e d6
        54 0c 84 83 8d 89 f7 2c 24 46 1a ad 6d 26 f5 9e ca ba 9a cb bb
        31 7b 66 d9 02 f4 f2 92 a3 6a c1 b6 39 c6 37 ce 34 31 17 b6 59
        62 22 45 31 7b 49 ee da 0c 62 58 f1 00 d7 d9 61 ff b1 38 64 7e
        92 ea 33 0f ae ea 6d fa 31 c7 a8 4d c3 bd 7e 1b 7a 6c 71 78 af
        36 87 90 18 e3 f2 52 10 7f 24 3d 24 3d c7 33 9d 56 84 c8 b0 37
        8b f3 02 44 da 8c 87 c8 43 f5 e5 6e b4 c5 e8 28 0a 2b 48 05 2c
        f9 3b 16 49 9a 66 db 7c ca 71 e4 59 94 26 f7 d4 61 e6 6f 99 88
        2b d8 9f c5 08 00 be cc a6 2d 6c 74 11 6d bd 29 72 fd a1 fa 80
        f8 5d f8 81 ed be 5a 37 66 89 36 b3 35 58 3b 59 91 86 dc 5c 69
        18 a3 96 fa 48 a1 81 d6 b6 fa 4f 9d 62 d5 13 af bb 99 2f 2b 99
        2f 67 f8 af e6 7f 76 91 3f a3 88 cb 56 30 c8 ca 01 e0 c6 5d 11
        c6 6a 1e 2a c4 c8 59 77 b7 c7 a6 99 9b bf 10 dc 35 ae 69 f5 51
        56 14 63 6c 0b 9b 68 c1 9e d2 e3 1c 0b 3b 66 76 30 38 eb ba 42
        f3 b3 8e dc 03 99 f3 a9 f2 3f aa 63 97 8c 31 7f c9 fa 66 a7 3f
        60 f0 50 4d e9 3b 5b 84 5e 27 55 92 c1 23 35 ee 34 0b bc 4f dd
        d5 02 78 40 16 e4 b3 be 7e f0 4d da 49 f4 b4 40 a3 0c b5 d2 af
        93 98 28 fd 4a e3 79 4e 44 f9 4d f5 a6 31 ed e4 2c 17 19 bf da
        bf 02 53 fe 51 75 be 89 8e 75 0e dc 53 37 0d 2b";
    /// The start and end of the record's plaintext (EncryptedExtensions ... Finished).
    const RFC8448_PLAIN_HEAD: &str = "08 00 00 24 00 22 00 0a 00 14 00 12 00 1d 00 17
        00 18 00 19 01 00 01 01 01 02 01 03 01 04 00 1c 00 02 40 01 00 00 00 00 0b 00 01 b9";
    const RFC8448_PLAIN_TAIL: &str = "14 00 00 20 9b 9b 14 1d 90 63 37 fb d2 cb dc e7 1d
        f4 de da 4a b4 2c 30 95 72 cb 7f ff ee 54 54 b7 8f 07 18";

    fn split_record(record: &[u8]) -> ([u8; 5], &[u8]) {
        (record[..5].try_into().unwrap(), &record[5..])
    }

    #[test]
    fn rfc8448_handshake_keys() {
        let secret = unhex(RFC8448_S_HS_SECRET);
        let mut key = [0u8; 16];
        hkdf_expand_label(HashAlgorithm::Sha256, &secret, b"key", &[], &mut key).unwrap();
        assert_eq!(key.to_vec(), unhex(RFC8448_S_HS_KEY));
        let d = RecordDecrypter::tls13(0x1301, &secret).unwrap();
        assert_eq!(d.iv.to_vec(), unhex(RFC8448_S_HS_IV));
    }

    #[test]
    fn rfc8448_server_handshake_record() {
        let record = unhex(RFC8448_RECORD);
        let (header, body) = split_record(&record);
        let mut d = RecordDecrypter::tls13(0x1301, &unhex(RFC8448_S_HS_SECRET)).unwrap();
        let (inner_type, plain) = d.decrypt(&header, body).unwrap();
        assert_eq!(inner_type, 22, "handshake");
        assert_eq!(plain.len(), 657);
        assert!(plain.starts_with(&unhex(RFC8448_PLAIN_HEAD)));
        assert!(plain.ends_with(&unhex(RFC8448_PLAIN_TAIL)));
        assert_eq!(d.sequence(), 1);
        // The same record again is now at the wrong sequence number.
        assert_eq!(d.decrypt(&header, body), Err(DecryptError::Authentication));
        assert_eq!(d.sequence(), 1, "failures do not advance the sequence");
    }

    #[test]
    fn tampering_and_bad_lengths_are_errors() {
        let record = unhex(RFC8448_RECORD);
        let (header, body) = split_record(&record);
        let secret = unhex(RFC8448_S_HS_SECRET);
        let mut d = RecordDecrypter::tls13(0x1301, &secret).unwrap();
        let mut bad = body.to_vec();
        bad[100] ^= 1;
        assert_eq!(d.decrypt(&header, &bad), Err(DecryptError::Authentication));
        let mut bad_header = header;
        bad_header[2] = 0x01; // the header is authenticated as AAD
        assert_eq!(
            d.decrypt(&bad_header, body),
            Err(DecryptError::Authentication)
        );
        assert_eq!(
            d.decrypt(&header, &body[1..]),
            Err(DecryptError::LengthMismatch {
                header: 674,
                body: 673
            })
        );
        assert_eq!(
            d.decrypt(&[23, 3, 3, 0, 16], &[0u8; 16]),
            Err(DecryptError::RecordLength(16))
        );
        // Still in sync after all that.
        assert!(d.decrypt(&header, body).is_ok());
        // Wrong suite for the secret length, unknown suites.
        assert_eq!(
            RecordDecrypter::tls13(0x1302, &secret).unwrap_err(),
            DecryptError::SecretLength {
                expected: 48,
                actual: 32
            }
        );
        assert_eq!(
            RecordDecrypter::tls13(0x1304, &secret).unwrap_err(),
            DecryptError::UnsupportedSuite(0x1304)
        );
        assert_eq!(
            RecordDecrypter::tls12(0x002f, &[0; 48], &[0; 32], &[0; 32], true).unwrap_err(),
            DecryptError::UnsupportedSuite(0x002f)
        );
        assert_eq!(
            RecordDecrypter::tls12(0xc02f, &[0; 47], &[0; 32], &[0; 32], true).unwrap_err(),
            DecryptError::SecretLength {
                expected: 48,
                actual: 47
            }
        );
        assert!(is_supported_suite(0x1303) && is_supported_suite(0xcca9));
        assert!(!is_supported_suite(0xc013));
    }

    /// RFC 9001 Appendix A.5: a QUIC short-header packet protected with
    /// ChaCha20-Poly1305. It checks HKDF-Expand-Label with QUIC labels and the ChaCha20
    /// AEAD with a sequence-derived nonce, the same building blocks as TLS 1.3 suite 0x1303.
    #[test]
    fn rfc9001_chacha20_vector() {
        let secret = unhex("9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b");
        let mut key = [0u8; 32];
        hkdf_expand_label(HashAlgorithm::Sha256, &secret, b"quic key", &[], &mut key).unwrap();
        assert_eq!(
            key.to_vec(),
            unhex("c6d98ff3441c3fe1b2182094f69caa2ed4b716b65488960a7a984979fb23e1c8")
        );
        let mut iv = [0u8; 12];
        hkdf_expand_label(HashAlgorithm::Sha256, &secret, b"quic iv", &[], &mut iv).unwrap();
        assert_eq!(iv.to_vec(), unhex("e0459b3474bdd0e44a41c144"));
        let cipher = Cipher::new(AeadAlgorithm::ChaCha20Poly1305, &key).unwrap();
        let nonce = xor_seq(&iv, 654_360_564u64.to_be_bytes());
        let mut buf = unhex("655e5cd55c41f69080575d7999c25a5bfb");
        cipher.open(&nonce, &unhex("4200bff4"), &mut buf).unwrap();
        assert_eq!(buf, [0x01], "a PING frame");
    }

    /// TLS 1.2 PRF (SHA-256) test vector published on the IETF TLS WG list.
    #[test]
    fn tls12_prf_sha256_vector() {
        let out = tls12_prf(
            HashAlgorithm::Sha256,
            &unhex("9b be 43 6b a9 40 f0 17 b1 76 52 84 9a 71 db 35"),
            b"test label",
            &unhex("a0 ba 9f 93 6c da 31 18 27 a6 f7 96 ff d5 19 8c"),
            100,
        );
        assert_eq!(
            out,
            unhex(
                "e3 f2 29 ba 72 7b e1 7b 8d 12 26 20 55 7c d4 53 c2 aa b2 1d 07 c3 d4 95
                 32 9b 52 d4 e6 1e db 5a 6b 30 17 91 e9 0d 35 c9 c9 a4 6b 4e 14 ba f9 af
                 0f a0 22 f7 07 7d ef 17 ab fd 37 97 c0 56 4b ab 4f bc 91 66 6e 9d ef 9b
                 97 fc e3 4f 79 67 89 ba a4 80 82 d1 22 ee 42 c5 a7 2e 5a 51 10 ff f7 01
                 87 34 7b 66"
            )
        );
    }

    /// TLS 1.2 key expansion with the SHA-384 PRF for TLS_RSA_WITH_AES_256_GCM_SHA384
    /// (0x009d), from a GnuTLS 3.2.17 debug trace of a real handshake.
    #[test]
    fn tls12_key_expansion_sha384_gcm() {
        let master = unhex(
            "0d61d858f9884fecfdee5ade734cf1d07c53da040e313a0ef326399b958618954069802cedbddaf44dceaa5c4d91828e",
        );
        let cr: [u8; 32] =
            unhex("545577b82818bc849e2ac782524ac1a9922dd01af3e1102be44431ad6c6987f7")
                .try_into()
                .unwrap();
        let sr: [u8; 32] =
            unhex("4daebccb63d4e4c67c631aaa69a0284e6b3c14a221cff80128ba84689997dc4d")
                .try_into()
                .unwrap();
        let (alg, hash) = tls12_suite(0x009d).unwrap();
        let (client_key, client_iv) = tls12_keys(alg, hash, &master, &cr, &sr, true);
        let (server_key, server_iv) = tls12_keys(alg, hash, &master, &cr, &sr, false);
        assert_eq!(
            client_key,
            unhex("b6a4cbc905258ce097a393f19fa0fb2d651b57a678b99a76cf34d64ffe8ba1ab")
        );
        assert_eq!(
            server_key,
            unhex("332d8eacd96f5b672cd8492c600f454402c2995da541d2e5d6734b669a0a3f06")
        );
        assert_eq!((client_iv.len(), server_iv.len()), (4, 4));
        assert_ne!(client_iv, server_iv);
        assert!(RecordDecrypter::tls12(0x009d, &master, &cr, &sr, true).is_ok());
    }

    /// A TLS 1.2 AES-128-GCM application-data record from the miTLS test suite: write key,
    /// 4-byte salt, an all-zero explicit nonce, and "GET / HTTP/1.1\r\nHost: undefined\r\n\r\n"
    /// sealed at sequence number 0. Checks the RFC 5288 nonce and the RFC 5246 AAD layout.
    #[test]
    fn tls12_gcm_record() {
        let key = unhex("152300c2dc44c8f695d4fb1471791659");
        let body = unhex(
            "0000000000000000ed3ca96c8bd2fbb376c2dc417f3ec249e8ab550dab1c421293f0e642a0c152b4\
             3a546aa26bbe62e8651214d28ab90e70217b3d",
        );
        let header = [23, 3, 3, 0, body.len() as u8];
        let mut d =
            RecordDecrypter::tls12_from_keys(AeadAlgorithm::Aes128Gcm, &key, &unhex("b56bf932"))
                .unwrap();
        let (ct, plain) = d.decrypt(&header, &body).unwrap();
        assert_eq!(ct, 23);
        assert_eq!(plain, b"GET / HTTP/1.1\r\nHost: undefined\r\n\r\n");
        assert_eq!(d.sequence(), 1);
    }

    #[test]
    fn tls13_key_update_changes_keys() {
        let secret = unhex(RFC8448_S_HS_SECRET);
        let mut d = RecordDecrypter::tls13(0x1301, &secret).unwrap();
        let before = d.iv;
        let record = unhex(RFC8448_RECORD);
        let (header, body) = split_record(&record);
        d.decrypt(&header, body).unwrap();
        d.key_update().unwrap();
        assert_eq!(d.sequence(), 0);
        assert_ne!(d.iv, before);
        let mut next = [0u8; 32];
        hkdf_expand_label(
            HashAlgorithm::Sha256,
            &secret,
            b"traffic upd",
            &[],
            &mut next,
        )
        .unwrap();
        let expected = RecordDecrypter::tls13(0x1301, &next).unwrap();
        assert_eq!(d.iv, expected.iv);
        let mut d12 =
            RecordDecrypter::tls12_from_keys(AeadAlgorithm::Aes128Gcm, &[0; 16], &[0; 4]).unwrap();
        assert_eq!(d12.key_update(), Err(DecryptError::NotTls13));
    }

    #[test]
    fn garbage_records_never_panic() {
        let mut decrypters = vec![
            RecordDecrypter::tls13(0x1301, &[7; 32]).unwrap(),
            RecordDecrypter::tls13(0x1302, &[7; 48]).unwrap(),
            RecordDecrypter::tls13(0x1303, &[7; 32]).unwrap(),
            RecordDecrypter::tls12(0xc02f, &[7; 48], &[1; 32], &[2; 32], true).unwrap(),
            RecordDecrypter::tls12(0xc030, &[7; 48], &[1; 32], &[2; 32], false).unwrap(),
            RecordDecrypter::tls12(0xcca8, &[7; 48], &[1; 32], &[2; 32], true).unwrap(),
        ];
        let record = unhex(RFC8448_RECORD);
        let mut x = 0x1357_9bdfu32;
        for d in &mut decrypters {
            for cut in 0..record.len().min(64) {
                let body = &record[5..5 + cut];
                let header = [23, 3, 3, 0, cut as u8];
                assert!(d.decrypt(&header, body).is_err());
            }
            for _ in 0..200 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let len = (x % 300) as usize;
                let body: Vec<u8> = (0..len).map(|i| (x >> (i % 24)) as u8).collect();
                let header = [(x >> 8) as u8, 3, 3, (len >> 8) as u8, len as u8];
                assert!(d.decrypt(&header, &body).is_err());
            }
            assert_eq!(d.sequence(), 0);
        }
    }
}
