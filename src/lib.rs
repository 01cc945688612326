//! edgehub: an IoT Edge hub. The route engine (`router`) and the store (`store`) are libraries;
//! this crate is the hub around them and its command line.
//!
//! Layout:
//! - [`cli`]: the `edgehub` command line (`route check`, `route test`, ...);
//! - [`manifest`]: reading IoT Edge deployment manifests;
//! - [`identity`]: identities, their keys and store, the CONNECT username;
//! - [`sas`]: SAS tokens and the authentication of a CONNECT.

pub mod cli;
pub mod manifest;
pub mod identity;
pub mod sas;
