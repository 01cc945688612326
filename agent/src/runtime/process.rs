//! Process runtime (below).
