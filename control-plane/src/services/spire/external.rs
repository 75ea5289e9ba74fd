//! An external SPIRE deployment (`[spire.external]`): its trust bundle, kept current, so the
//! uplink accepts agents that take their SVID from a SPIRE agent instead of enrolling; and the
//! health of its server, for the fleet view.
//!
//! The bundle comes from a file (PEM or SPIFFE JWKS, e.g. a ConfigMap SPIRE's k8s bundle
//! notifier keeps current) or a SPIFFE bundle endpoint (`https_web` profile), reloaded every
//! `refresh`. A reload that fails keeps the last good bundle: an unreachable SPIRE server must
//! not lock its agents out. The uplink watches [`External::subscribe`] and swaps its TLS
//! configuration when the bundle changes (SPIRE rotates its CAs).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hais_svid::Bundle;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::SpireError;
use crate::config::ExternalSpireConfig;

/// Largest bundle document accepted from an endpoint.
const MAX_BUNDLE_BYTES: usize = 1 << 20;
/// A bundle fetch or health check must answer within this long.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the SPIRE server's health is checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(15);
/// Retry interval while no bundle was ever loaded (endpoint down at start).
const FIRST_LOAD_RETRY: Duration = Duration::from_secs(10);

/// One CA of the external bundle, as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AuthorityView {
    /// SHA-256 of the CA certificate (DER), hex.
    pub sha256: String,
    pub not_after_us: Option<i64>,
}

/// The SPIRE server's health, as last checked.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct HealthView {
    pub url: String,
    /// `None` until the first check.
    pub healthy: Option<bool>,
    pub status_code: Option<u16>,
    pub checked_us: Option<i64>,
    pub error: Option<String>,
}

/// What the spire service reports about the external SPIRE.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ExternalStatus {
    pub trust_domain: String,
    /// `file:<path>` or the endpoint URL.
    pub bundle_source: String,
    /// When the current bundle was loaded (or found unchanged).
    pub bundle_loaded_us: Option<i64>,
    /// The last reload's error; the previous bundle stays in use.
    pub bundle_error: Option<String>,
    pub authorities: Vec<AuthorityView>,
    pub health: Option<HealthView>,
}

/// The external SPIRE's live state.
#[derive(Debug)]
pub struct External {
    pub trust_domain: String,
    config: ExternalSpireConfig,
    bundle: watch::Sender<Option<Bundle>>,
    status: Mutex<ExternalStatus>,
}

impl External {
    /// Loads the bundle once. A missing or unreadable bundle *file* stops the start (it is a
    /// configuration mistake); an unreachable endpoint does not (the refresher retries).
    pub async fn load(config: &ExternalSpireConfig) -> Result<Option<Arc<External>>, SpireError> {
        let Some(td) = config.trust_domain.clone() else {
            return Ok(None);
        };
        let source = match (&config.bundle_file, &config.bundle_endpoint) {
            (Some(f), _) => format!("file:{}", f.display()),
            (None, Some(u)) => u.clone(),
            (None, None) => String::new(),
        };
        let ext = Arc::new(External {
            status: Mutex::new(ExternalStatus {
                trust_domain: td.clone(),
                bundle_source: source,
                health: config.health_url.as_ref().map(|url| HealthView {
                    url: url.clone(),
                    ..HealthView::default()
                }),
                ..ExternalStatus::default()
            }),
            trust_domain: td,
            config: config.clone(),
            bundle: watch::channel(None).0,
        });
        match ext.reload().await {
            Ok(_) => {}
            Err(e) if config.bundle_file.is_some() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "SPIRE bundle endpoint not reachable yet; retrying")
            }
        }
        Ok(Some(ext))
    }

    /// The current bundle, if one was ever loaded.
    pub fn bundle(&self) -> Option<Bundle> {
        self.bundle.borrow().clone()
    }

    /// Notified on every bundle change.
    pub fn subscribe(&self) -> watch::Receiver<Option<Bundle>> {
        self.bundle.subscribe()
    }

    pub fn status(&self) -> ExternalStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut ExternalStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Reads the bundle again; true when it changed.
    pub async fn reload(&self) -> Result<bool, SpireError> {
        let res = self.fetch().await;
        let now = crate::store::now_us();
        match res {
            Ok(bundle) => {
                let views = bundle.certs.iter().map(|c| authority_view(c)).collect();
                let changed = self.bundle.send_if_modified(|cur| {
                    if cur.as_ref() == Some(&bundle) {
                        false
                    } else {
                        *cur = Some(bundle);
                        true
                    }
                });
                if changed {
                    tracing::info!(trust_domain = %self.trust_domain, "SPIRE trust bundle loaded");
                }
                self.update(|s| {
                    s.bundle_loaded_us = Some(now);
                    s.bundle_error = None;
                    s.authorities = views;
                });
                Ok(changed)
            }
            Err(e) => {
                let msg = e.to_string();
                self.update(|s| s.bundle_error = Some(msg));
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<Bundle, SpireError> {
        let bad = |why: String| SpireError::ExternalBundle(why);
        let text = if let Some(path) = &self.config.bundle_file {
            tokio::fs::read_to_string(path)
                .await
                .map_err(|e| bad(format!("{}: {e}", path.display())))?
        } else if let Some(url) = &self.config.bundle_endpoint {
            let roots = match &self.config.bundle_endpoint_ca {
                Some(p) => Some(load_roots(p).map_err(bad)?),
                None => None,
            };
            let (status, body) = http_get(url, roots).await.map_err(bad)?;
            if status != 200 {
                return Err(bad(format!("{url} answered HTTP {status}")));
            }
            String::from_utf8(body).map_err(|_| bad(format!("{url}: not UTF-8")))?
        } else {
            return Err(bad("no bundle source configured".into()));
        };
        let bundle = Bundle::from_file_text(&text).map_err(|e| bad(e.to_string()))?;
        // A bundle for another trust domain is a mix-up worth refusing loudly.
        if let Some(td) = bundle.trust_domain()
            && td != self.trust_domain
        {
            return Err(bad(format!(
                "the bundle's CAs are for trust domain {td:?}, not spire.external.trust_domain {:?}",
                self.trust_domain
            )));
        }
        Ok(bundle)
    }

    /// Checks the SPIRE server's health endpoint once.
    pub async fn check_health(&self) {
        let Some(url) = self.config.health_url.clone() else {
            return;
        };
        let res = http_get(&url, None).await;
        let now = crate::store::now_us();
        self.update(|s| {
            let h = s.health.get_or_insert_with(HealthView::default);
            h.url = url;
            h.checked_us = Some(now);
            match res {
                Ok((code, _)) => {
                    h.healthy = Some((200..300).contains(&code));
                    h.status_code = Some(code);
                    h.error = None;
                }
                Err(e) => {
                    h.healthy = Some(false);
                    h.status_code = None;
                    h.error = Some(e);
                }
            }
        });
    }

    /// 1 healthy, 0 not, -1 unknown or not configured (for `/metrics`).
    pub fn health_gauge(&self) -> i64 {
        match self.status().health.and_then(|h| h.healthy) {
            Some(true) => 1,
            Some(false) => 0,
            None => -1,
        }
    }
}

fn authority_view(der: &[u8]) -> AuthorityView {
    let not_after_us = x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp() * 1_000_000);
    AuthorityView {
        sha256: hex::encode(Sha256::digest(der)),
        not_after_us,
    }
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    crate::http::client::roots_from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Keeps the bundle fresh (and, where `health` is set, the server's health) until shutdown.
pub fn spawn_refresher(
    ext: Arc<External>,
    health: bool,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let refresh = ext.config.refresh();
        let mut next_reload = tokio::time::Instant::now()
            + if ext.bundle().is_some() {
                refresh
            } else {
                FIRST_LOAD_RETRY
            };
        // A short refresh (tests, impatient operators) checks health as often.
        let mut health_tick = tokio::time::interval(HEALTH_INTERVAL.min(refresh));
        health_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = crate::services::stopped(&mut shutdown) => return,
                _ = tokio::time::sleep_until(next_reload) => {
                    let ok = match ext.reload().await {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "reloading the SPIRE trust bundle failed; keeping the previous one");
                            false
                        }
                    };
                    let wait = if ok || ext.bundle().is_some() { refresh } else { FIRST_LOAD_RETRY };
                    next_reload = tokio::time::Instant::now() + wait;
                }
                _ = health_tick.tick(), if health && ext.config.health_url.is_some() => {
                    ext.check_health().await;
                }
            }
        }
    })
}

/// A GET over HTTP/1.1, plain or TLS (`roots`, else the web PKI), with a timeout and a body
/// limit. Returns the status and the body. A bundle and a health answer are all this service
/// fetches ([`crate::http::client`]).
pub async fn http_get(
    url: &str,
    roots: Option<rustls::RootCertStore>,
) -> Result<(u16, Vec<u8>), String> {
    crate::http::client::send(crate::http::client::Outgoing {
        roots,
        timeout: HTTP_TIMEOUT,
        max_response: MAX_BUNDLE_BYTES,
        ..crate::http::client::Outgoing::get(url)
    })
    .await
}
