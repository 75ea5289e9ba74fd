//! TODO(owner): module tcp_options
