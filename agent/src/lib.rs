//! The HaIS agent as a library: capture, decode, flow tracking, the fingerprint engine, and
//! the uplink to the control plane (events, spool, QUIC, enrollment), and the glue to workload
//! attribution.
//!
//! Everything except [`capture`], [`cli`] and [`attribution`] is sans-I/O: the engine takes frames and
//! returns fingerprints, so it is tested, fuzzed and benchmarked without a network.

pub mod attribution;
pub mod capture;
pub mod cli;
pub mod config;
pub mod decode;
pub mod engine;
pub mod flow;
pub mod fuzzing;
pub mod metrics;
pub mod output;
pub mod state;
pub mod status;
pub mod uplink;
