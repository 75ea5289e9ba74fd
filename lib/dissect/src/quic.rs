//! TODO(owner): module quic
