//! Getting events to the control plane: finished streams become events ([`events`]), wait in
//! a bounded on-disk queue ([`spool`]) and travel over QUIC with mutual TLS ([`quic`]), using the
//! request/response helpers of [`client`]; [`enroll`] obtains the agent's first identity, or
//! [`spire`] takes it from a SPIRE agent.
//!
//! Capture never waits on the network: capture threads only append to the spool (disk), and
//! the uplink runs on its own thread with its own tokio runtime.

pub mod client;
pub mod enroll;
pub mod events;
pub mod quic;
pub mod spire;
pub mod spool;

use std::sync::{Arc, Mutex};

/// The spool as shared between the thread that appends and the uplink that reads and acks.
pub type SharedSpool = Arc<Mutex<spool::Spool>>;
