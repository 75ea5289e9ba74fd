//! JA4: the TLS client fingerprint (BSD-3-Clause method, see NOTICE).
//!
//! Input is a ClientHello already parsed by `hais-dissect`; output is the JA4 string and
//! its raw (`_r`), original-order (`_o`) and raw-original (`_ro`) variants. Nothing here
//! does I/O, so it can be fuzzed and benchmarked alone.

pub mod hash;
pub mod ja4;

pub use hash::hash12;
pub use ja4::{
    AlpnRule, Ja4, Ja4Transport, alpn_chars, client_version, ja4, ja4_string, version_code,
};
