//! Correlation: which fingerprints each workload identity normally presents, and findings, with
//! their evidence, when that changes.
//!
//! This crate is the domain logic only — no async, no SQL — so it can be replayed, property
//! tested and benchmarked on its own. The control plane's `correlation` service loads the state a
//! batch of events touches from its store, runs [`Engine::observe`] over the batch, and writes
//! back what changed ([`Engine::take_changes`]) with its bus checkpoint.
//!
//! * [`observation`]: what one fingerprint event says about one identity ([`identity_of`]: the
//!   SPIFFE ID when one was resolved, else the workload key), with the normalisations that keep
//!   changes that are not changes out of the baselines (documented there, one by one).
//! * [`baseline`]: per identity and method, the fingerprints it presents, with first/last seen and
//!   counts, and its learning state (`learning` until both the learning period has passed since
//!   its first event and the minimum number of flows was seen; then `established`).
//! * [`detect`]: the pure parts of the detectors (JA4 section comparison, JA4SSH session types,
//!   TTL → hop count).
//! * [`finding`]: what a detector concluded, one per identity × detector × fingerprint (and
//!   destination), its count and last-seen updated on recurrence.
//! * [`engine`]: the detectors run over events in order.
//!
//! Everything is a function of the events and their order per identity: no wall clock, no
//! randomness, no hash-map iteration order reaches a result, so a replay gives the same findings
//! (with the same ids) however the events were batched.

pub mod baseline;
pub mod config;
pub mod detect;
pub mod engine;
pub mod finding;
pub mod observation;

pub use baseline::{Baseline, BaselineState, Entry};
pub use config::Config;
pub use engine::{Adoption, Changes, Engine, Prevalence};
pub use finding::{Detector, Finding, FindingKey};
pub use observation::{Observation, identity_of};

/// Microseconds in a second, for times and durations (the store's unit).
pub const SECOND_US: i64 = 1_000_000;
