//! TODO(owner): ja4x
