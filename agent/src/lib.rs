//! The HaIS agent as a library: capture, decode, flow tracking and the fingerprint engine.
