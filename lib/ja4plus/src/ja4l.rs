//! TODO(owner): ja4l
