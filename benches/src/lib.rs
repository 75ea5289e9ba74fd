//! Shared code of the HaIS benchmarks.
//!
//! * [`corpus`]: loads the conformance captures, reassembles their TCP streams and cuts out
//!   real protocol material (TLS ClientHellos and server flights, HTTP/1 requests, SSH
//!   banners and key exchanges).
//! * [`synth`]: a deterministic generator of large, realistic captures built from that
//!   material (thousands of connections, mostly bulk payload).
//! * [`pcap`]: a minimal pcap writer and in-memory frame sink.
//! * [`rng`]: a small seeded PRNG, so generated files are reproducible byte for byte.

pub mod corpus;
pub mod pcap;
pub mod rng;
pub mod synth;
