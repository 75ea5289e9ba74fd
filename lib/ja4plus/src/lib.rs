//! The JA4+ methods (FoxIO License 1.1, see NOTICE): everything except the JA4 client
//! fingerprint, which lives in the BSD-licensed `hais-ja4` crate.
//!
//! Stateless methods are functions from parsed messages to strings; the methods that watch a
//! whole connection (JA4L, JA4SSH, JA4TS) are small state machines fed one packet summary at
//! a time. None of them does I/O.

pub mod ja4d;
pub mod ja4h;
pub mod ja4l;
pub mod ja4s;
pub mod ja4ssh;
pub mod ja4t;
pub mod ja4x;
