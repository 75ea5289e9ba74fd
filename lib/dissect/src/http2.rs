//! TODO(owner): module http2
