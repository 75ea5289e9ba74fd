//! The detectors' settings. Times are microseconds.

use serde::{Deserialize, Serialize};

use crate::SECOND_US;

/// How baselines learn and when detectors speak. The defaults are the documented ones
/// (`correlation.*` in the control plane's configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// An identity is `learning` until this long after its first event (default 7 days)…
    pub learning_period_us: i64,
    /// …and until it was seen in this many flows (default 100).
    pub learning_min_flows: u64,
    /// shared-fingerprint: how many established identities must start presenting one fingerprint
    /// within [`Config::shared_window_us`] (default 5)…
    pub shared_threshold: u32,
    /// …that at most this many identities presented before (default 1: "seen from only one").
    pub shared_max_prior: u32,
    /// The prevalence window (default one hour).
    pub shared_window_us: i64,
    /// path-change: samples of one identity × destination before its spread is trusted
    /// (default 10).
    pub path_min_samples: u32,
    /// path-change: hops beyond the learned range by more than this are a change (default 1:
    /// one hop of route flapping is normal).
    pub path_hop_tolerance: u32,
    /// path-change: a TCP/TLS latency gap above mean + this many standard deviations (and at
    /// least [`Config::path_gap_floor_us`] above the mean) is a change (default 4).
    pub path_gap_sigmas: f64,
    /// Default 2 ms.
    pub path_gap_floor_us: f64,
    /// ssh-session detector. Off by default: a US patent (US10135847B2) covers detecting reverse
    /// shells from SSH packet patterns; see NOTICE.
    pub ssh_session: bool,
    /// Most fingerprints kept per identity and method, and most destinations per identity:
    /// bounds a baseline's memory whatever an identity sends (default 64).
    pub max_per_method: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            learning_period_us: 7 * 24 * 3600 * SECOND_US,
            learning_min_flows: 100,
            shared_threshold: 5,
            shared_max_prior: 1,
            shared_window_us: 3600 * SECOND_US,
            path_min_samples: 10,
            path_hop_tolerance: 1,
            path_gap_sigmas: 4.0,
            path_gap_floor_us: 2000.0,
            ssh_session: false,
            max_per_method: 64,
        }
    }
}
