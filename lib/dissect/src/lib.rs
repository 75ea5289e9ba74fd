//! Protocol dissectors with no I/O: bytes in, structured messages out.
//!
//! Every parser here takes untrusted bytes straight off the wire, so each one returns a
//! [`Result`] (or `None`) on truncated, malformed or hostile input and never panics; each
//! has a `cargo fuzz` target under `fuzz/`. The fingerprint crates (`hais-ja4`,
//! `hais-ja4plus`) consume the structures defined here and never look at raw bytes
//! themselves, which keeps the licence split between JA4 and JA4+ a matter of which crate
//! computes the string, not of who parses the packet.

pub mod bytes;
pub mod dhcp;
pub mod http1;
pub mod http2;
pub mod keylog;
pub mod quic;
pub mod ssh;
pub mod tcp_options;
pub mod tls;
