//! TODO(owner): ja4t
