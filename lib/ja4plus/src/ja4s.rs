//! TODO(owner): ja4s
