//! The message store.
