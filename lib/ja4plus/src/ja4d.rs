//! TODO(owner): ja4d
