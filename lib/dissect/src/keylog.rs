//! TODO(owner): module keylog
