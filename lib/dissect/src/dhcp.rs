//! TODO(owner): module dhcp
