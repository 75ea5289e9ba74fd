//! HTTPS for the listener: a rustls server configuration (ring, TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1`) whose certificate comes from [`ReloadingCert`], which re-reads the certificate
//! and key files every `tls.reload_interval` and swaps the pair in for the next handshakes.
//! A replacement that does not load (half-written, mismatched, unreadable, or a key others may
//! read) is logged and the last good pair kept, so a botched renewal never takes HTTPS down.

use std::fmt;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ConnMetrics;

/// Why a certificate/key pair could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error(
        "{path}: the private key may be read by other users (mode {mode:o}); run chmod 600 {path}"
    )]
    KeyReadableByOthers { path: PathBuf, mode: u32 },
    #[error("the private key in {key} does not fit the certificate in {cert}: {message}")]
    Key {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("building the TLS configuration failed: {0}")]
    Config(#[from] rustls::Error),
}

/// Checks who may read a private key file: others (the `o` bits) → refused, as no local user
/// should be able to impersonate the server; its group → a warning (the usual `0640
/// root:ssl-cert` layout of a certificate manager is legitimate).
pub fn check_key_permissions(path: &Path) -> Result<(), TlsError> {
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(TlsError::KeyReadableByOthers {
            path: path.to_owned(),
            mode,
        });
    }
    if mode & 0o070 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:o}"),
            "the TLS private key is readable by its group; chmod 600 unless that is intended"
        );
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key of `cert_pem`/`key_pem` (contents of `cert`/`key`), checked
/// to belong together.
fn parse_pair(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert.to_owned(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
        path: key.to_owned(),
        message: format!("no usable private key: {e}"),
    })?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| TlsError::Key {
        cert: cert.to_owned(),
        key: key.to_owned(),
        message: e.to_string(),
    })
}

/// The server's certificate, reloaded from its files when they change.
pub struct ReloadingCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// SHA-256 of the last certificate + key contents looked at (loaded or refused), so an
    /// unchanged pair is not parsed again and a broken one is reported once.
    seen: Mutex<[u8; 32]>,
    metrics: Arc<ConnMetrics>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

fn digest(cert_pem: &[u8], key_pem: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((cert_pem.len() as u64).to_be_bytes());
    h.update(cert_pem);
    h.update(key_pem);
    h.finalize().into()
}

impl ReloadingCert {
    /// Loads the pair; an error here stops the start-up.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        metrics: Arc<ConnMetrics>,
    ) -> Result<ReloadingCert, TlsError> {
        check_key_permissions(key_file)?;
        let (cert_pem, key_pem) = (read(cert_file)?, read(key_file)?);
        let pair = parse_pair(cert_file, &cert_pem, key_file, &key_pem)?;
        Ok(ReloadingCert {
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new(digest(&cert_pem, &key_pem)),
            metrics,
        })
    }

    /// Re-reads the files; swaps in the new pair when they changed and load. Returns whether
    /// a new pair is now served.
    pub fn reload(&self) -> bool {
        let files = read(&self.cert_file).and_then(|c| Ok((c, read(&self.key_file)?)));
        let (cert_pem, key_pem) = match files {
            Ok(f) => f,
            Err(e) => {
                // Mid-rename or removed for a moment: try again next time, quietly unless it
                // lasts (the digest is left alone, so a repeat is logged at debug only).
                tracing::debug!(error = %e, "TLS files not readable now; keeping the current certificate");
                return false;
            }
        };
        let d = digest(&cert_pem, &key_pem);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == d {
                return false;
            }
            *seen = d;
        }
        let loaded = check_key_permissions(&self.key_file)
            .and_then(|()| parse_pair(&self.cert_file, &cert_pem, &self.key_file, &key_pem));
        match loaded {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
                self.metrics.tls_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                self.metrics
                    .tls_reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "the new TLS certificate or key does not load; still serving the previous one");
                false
            }
        }
    }

    /// Checks the files every `every` until `stop` turns true.
    pub fn spawn_reloader(
        self: Arc<Self>,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let me = self.clone();
                // File reads and key parsing: off the async workers.
                let _ = tokio::task::spawn_blocking(move || me.reload()).await;
            }
        })
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The listener's rustls configuration: TLS 1.3 and 1.2 (ring), no client certificates,
/// ALPN `h2` preferred over `http/1.1`, certificate from `cert`.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
