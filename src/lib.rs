//! edgehub: an IoT Edge hub. The route engine (`router`) and the store (`store`) are libraries;
//! this crate is the hub around them and its command line.
//!
//! Layout:
//! - [`certs`]: the TLS server configuration, generated certificates;
//! - [`cli`]: the `edgehub` command line (`route check`, `route test`, ...);
//! - [`config`]: the configuration file and the embedded default;
//! - [`manifest`]: reading IoT Edge deployment manifests;
//! - [`hub`]: the running hub (route table, store, sessions, listeners);
//! - [`mqtt`]: connections, sessions, topics and property bags;
//! - [`delivery`]: pumps from the store to module inputs;
//! - [`stored`]: the stored form of a message; [`metrics`]: counters.
//! - [`identity`]: identities, their keys and store, the CONNECT username;
//! - [`sas`]: SAS tokens and the authentication of a CONNECT.

pub mod admin;
pub mod certs;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod edge_environment;
pub mod edgehub_twin;
pub mod fs;
pub mod http;
pub mod hub;
pub mod identity;
pub mod manifest;
pub mod methods;
pub mod metrics;
pub mod mqtt;
pub mod run;
pub mod sas;
pub mod stored;
pub mod twin;
