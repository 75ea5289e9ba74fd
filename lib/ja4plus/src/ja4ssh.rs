//! TODO(owner): ja4ssh
