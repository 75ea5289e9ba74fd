//! TODO(owner): module ssh
