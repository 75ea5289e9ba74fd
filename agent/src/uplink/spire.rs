//! The agent's identity from a SPIRE agent (`[spire] workload_api_socket`): SPIRE issues and
//! rotates the SVID; the uplink reconnects with each new one (see [`super::quic`]).
//!
//! Which control plane to trust is the one thing SPIRE cannot say on its own: the control plane
//! signs its uplink certificate with its built-in CA, in its own trust domain. The agent trusts
//! that domain's bundle from SPIRE when SPIRE federates with it, and/or the CA file given in
//! `control_plane_bundle`, and accepts only the control plane's SPIFFE ID.

use std::path::PathBuf;
use std::time::Duration;

use hais_shared::spiffe::SpiffeId;
use hais_svid::{Bundle, Svid};
use hais_workload_api::SpireSource;

/// How to reach SPIRE and recognise the control plane.
#[derive(Debug, Clone)]
pub struct SpireOptions {
    pub socket: PathBuf,
    /// `None`: `/hais/control-plane` in the trust domain of `control_plane_bundle` (else of
    /// the agent's own SVID).
    pub control_plane_id: Option<SpiffeId>,
    /// The control plane's CA, from a file.
    pub control_plane_bundle: Option<Bundle>,
    pub connect_timeout: Duration,
}

impl SpireOptions {
    /// From the agent's `[spire]` settings; `Ok(None)` when SPIRE is not configured.
    pub fn from_config(cfg: &crate::config::SpireConfig) -> Result<Option<SpireOptions>, String> {
        let Some(socket) = &cfg.workload_api_socket else {
            return Ok(None);
        };
        let control_plane_bundle = match &cfg.control_plane_bundle {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| e.to_string())
                    .and_then(|t| Bundle::from_file_text(&t).map_err(|e| e.to_string()))
                    .map_err(|e| format!("spire.control_plane_bundle {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let control_plane_id = Some(&cfg.control_plane_id)
            .filter(|s| !s.is_empty())
            .map(|s| SpiffeId::parse(s))
            .transpose()
            .map_err(|e| format!("spire.control_plane_id: {e}"))?;
        Ok(Some(SpireOptions {
            socket: socket.clone(),
            control_plane_id,
            control_plane_bundle,
            connect_timeout: cfg.connect_timeout(),
        }))
    }
}

/// What the uplink needs to connect: its SVID, the CAs the server must chain to, and the
/// server's expected ID.
#[derive(Debug, Clone)]
pub struct Identity {
    pub svid: Svid,
    pub server_trust: Bundle,
    pub expected_server: SpiffeId,
}

/// A live connection to the SPIRE agent.
#[derive(Debug)]
pub struct SpireLink {
    opts: SpireOptions,
    source: SpireSource,
}

impl SpireLink {
    /// Connects and waits for the first SVID (up to `connect_timeout`).
    pub async fn connect(opts: SpireOptions) -> Result<SpireLink, String> {
        let source = SpireSource::connect(&opts.socket, opts.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let link = SpireLink { opts, source };
        link.identity()?;
        Ok(link)
    }

    /// The current identity, checked: an agent SPIFFE ID, and some CA to check the server by.
    pub fn identity(&self) -> Result<Identity, String> {
        let (svid, _own_bundle) = self.source.current().map_err(|e| e.to_string())?;
        if svid.spiffe_id.agent_id().is_none() {
            return Err(format!(
                "SPIRE issued {} to this agent; the control plane accepts agents as \
                 spiffe://<td>/hais/agent/<name> (fix the registration entry)",
                svid.spiffe_id
            ));
        }
        let expected_server = match &self.opts.control_plane_id {
            Some(id) => id.clone(),
            None => {
                let td = self
                    .opts
                    .control_plane_bundle
                    .as_ref()
                    .and_then(Bundle::trust_domain)
                    .unwrap_or_else(|| svid.spiffe_id.trust_domain().to_owned());
                SpiffeId::control_plane(&td).map_err(|e| e.to_string())?
            }
        };
        let federated = self
            .source
            .bundle_for(expected_server.trust_domain())
            .map_err(|e| e.to_string())?;
        let server_trust = match (federated, &self.opts.control_plane_bundle) {
            (Some(f), Some(file)) => f.merged(file),
            (Some(f), None) => f,
            (None, Some(file)) => file.clone(),
            (None, None) => {
                return Err(format!(
                    "no CA to check the control plane ({expected_server}) with: SPIRE has no \
                     bundle for {} — set spire.control_plane_bundle to the control plane's CA \
                     (GET /api/spire/bundle)",
                    expected_server.trust_domain()
                ));
            }
        };
        Ok(Identity {
            svid,
            server_trust,
            expected_server,
        })
    }

    /// Waits for SPIRE's next rotation (SVID or bundles).
    pub async fn changed(&mut self) -> Result<(), String> {
        self.source.changed().await.map_err(|e| e.to_string())
    }
}
