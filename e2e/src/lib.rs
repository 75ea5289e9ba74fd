//! Support for the end-to-end tests: finding the workspace's binaries, cutting the network
//! path between agent and control plane, and receivers of alert notifications (also used by
//! the control plane's own alert tests).
//!
//! The tests run the real binaries (not library calls) because what they check is the product
//! as deployed: processes that crash, restart and lose their network.

pub mod cluster;
pub mod http;
pub mod proc;
pub mod relay;
pub mod sinks;

use std::path::PathBuf;

/// Path of a binary built by this workspace (`cargo test --workspace` builds every binary before
/// running any test). Panics with a hint when it is missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    // The test executable lives in target/<profile>/deps/; binaries one level up.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        p.display()
    );
    p
}
