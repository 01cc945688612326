//! edgehub: an IoT Edge hub. The route engine (`router`) and the store (`store`) are libraries;
//! this crate is the hub around them and its command line.
//!
//! Layout:
//! - [`cli`]: the `edgehub` command line (`route check`, `route test`, ...);
//! - [`manifest`]: reading IoT Edge deployment manifests.

pub mod cli;
pub mod manifest;
