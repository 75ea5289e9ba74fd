//! TODO(owner): module http1
