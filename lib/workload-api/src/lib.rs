//! The agent's identity from SPIRE: when a SPIRE agent runs on the host, the HaIS agent takes
//! its own X.509-SVID from it over the SPIFFE Workload API (a Unix socket) instead of enrolling
//! with the control plane's built-in CA, and follows SPIRE's rotations.
//!
//! The `spiffe` crate speaks the protocol; this crate turns what it delivers into the
//! [`hais_svid::Svid`] and [`hais_svid::Bundle`] the uplink is configured with, so the rest of
//! the agent does not care where its identity came from.

use std::path::Path;

use hais_svid::{Bundle, Svid, SvidError};
use spiffe::{X509Source, X509SourceUpdates};

#[cfg(feature = "testing")]
pub mod testing;

/// Why the Workload API could not provide an identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadApiError {
    #[error("SPIFFE Workload API at {endpoint}: {source}")]
    Source {
        endpoint: String,
        #[source]
        source: spiffe::X509SourceError,
    },
    #[error(
        "SPIFFE Workload API at {0}: no SVID within {1:?} (is the SPIRE agent running, and is this workload registered?)"
    )]
    Timeout(String, std::time::Duration),
    #[error("the Workload API sent no bundle for trust domain {0}")]
    NoBundle(String),
    #[error("the Workload API sent an unusable SVID: {0}")]
    Svid(#[from] SvidError),
}

/// A live X.509 identity from a SPIRE agent.
#[derive(Debug)]
pub struct SpireSource {
    endpoint: String,
    source: X509Source,
    updates: X509SourceUpdates,
}

impl SpireSource {
    /// Connects to the Workload API at `socket` and waits up to `timeout` for the first SVID
    /// (the client keeps retrying an absent socket, so without a limit a misconfigured agent
    /// would wait forever instead of saying what is wrong).
    pub async fn connect(
        socket: &Path,
        timeout: std::time::Duration,
    ) -> Result<SpireSource, WorkloadApiError> {
        let endpoint = format!("unix://{}", socket.display());
        let build = X509Source::builder().endpoint(&endpoint).build();
        let source = tokio::time::timeout(timeout, build)
            .await
            .map_err(|_| WorkloadApiError::Timeout(endpoint.clone(), timeout))?
            .map_err(|source| WorkloadApiError::Source {
                endpoint: endpoint.clone(),
                source,
            })?;
        let updates = source.updated();
        Ok(SpireSource {
            endpoint,
            source,
            updates,
        })
    }

    /// The current SVID and the bundle of its trust domain.
    pub fn current(&self) -> Result<(Svid, Bundle), WorkloadApiError> {
        let err = |source| WorkloadApiError::Source {
            endpoint: self.endpoint.clone(),
            source,
        };
        let svid = self.source.svid().map_err(err)?;
        let chain = svid
            .cert_chain()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let ours = Svid::from_der(chain, svid.private_key().as_bytes().to_vec())?;
        let set = self.source.bundle_set().map_err(err)?;
        let td = svid.spiffe_id().trust_domain();
        let bundle = set
            .get(td)
            .ok_or_else(|| WorkloadApiError::NoBundle(td.to_string()))?;
        let bundle = Bundle::from_der(
            bundle
                .authorities()
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect(),
        )?;
        Ok((ours, bundle))
    }

    /// The bundle SPIRE holds for `trust_domain`: its own, or a federated one (how an agent
    /// can learn the control plane's CA when SPIRE federates with it). `None` when SPIRE has
    /// none for that domain.
    pub fn bundle_for(&self, trust_domain: &str) -> Result<Option<Bundle>, WorkloadApiError> {
        let set = self
            .source
            .bundle_set()
            .map_err(|source| WorkloadApiError::Source {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        let Some(bundle) = set
            .iter()
            .find_map(|(td, b)| (td.to_string() == trust_domain).then_some(b))
        else {
            return Ok(None);
        };
        Ok(Some(Bundle::from_der(
            bundle
                .authorities()
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect(),
        )?))
    }

    /// Waits until SPIRE delivers a new SVID or bundle (a rotation); then call
    /// [`current`](Self::current).
    pub async fn changed(&mut self) -> Result<(), WorkloadApiError> {
        self.updates
            .changed()
            .await
            .map(|_| ())
            .map_err(|source| WorkloadApiError::Source {
                endpoint: self.endpoint.clone(),
                source,
            })
    }
}
