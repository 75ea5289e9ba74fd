//! Types both sides of HaIS agree on. Kept free of I/O and heavy dependencies so that the
//! agent stays small.

pub mod detection;
pub mod event;
pub mod fingerprint;
pub mod registration;
pub mod selector;
pub mod spiffe;
pub mod template;
pub mod wire;
pub mod workload;
