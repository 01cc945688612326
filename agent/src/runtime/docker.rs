//! Docker runtime (below).
