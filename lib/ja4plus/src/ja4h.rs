//! TODO(owner): ja4h
