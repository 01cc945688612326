//! edgehub: an IoT Edge hub. The route engine (`router`) and the store (`store`) are libraries;
//! this crate is the hub around them and its command line.
//!
//! Layout, roughly from the wiring down (no two files import each other, directly or around a
//! loop: `../shared/tools/import-loops` checks it):
//! - [`cli`]: the `edgehub` command line (`run`, `identity`, `route`, `twin`, `deploy`,
//!   `method`); [`run`]: from a configuration to a running hub, until SIGTERM;
//!   [`edge_environment`]: the configuration of a hub run as the `edgeHub` module of an agent
//!   (`IOTEDGE_*` variables and the workload API);
//! - [`admin`]: the operator's endpoint on `<data_dir>/admin.sock` (socket, server, manifest
//!   watcher, and the command line's client);
//! - [`hub`]: the wiring: creates the shared pieces, installs routes, binds the listeners;
//! - [`listener`]: the one accept loop of every listener (tracked tasks, drain deadline);
//!   [`stop`]: the stop signal of the hub's tasks;
//! - [`http`]: the HTTP endpoints, [`http::metrics`] and [`http::methods`] (direct methods);
//! - [`mqtt`]: a client connection ([`mqtt::connection`]), the sessions, topics both ways and
//!   property bags, authentication of a CONNECT;
//! - [`ingest`]: a message in, routed, encoded, enqueued, a ticket out;
//! - [`delivery`]: pumps from the store to module inputs; [`upstream`]: the `$upstream`
//!   queue forwarded to IoT Hub or a parent hub; [`in_flight`]: what delivery keeps in flight;
//! - [`record`]: the byte format of a message in the store;
//! - [`twin`]: module and device twins; [`edgehub_twin`]: the `$edgeHub` twin's reported
//!   properties; [`methods`]: direct method requests and their responses;
//! - [`metrics`]: counters; [`config`]: the configuration file and the embedded default;
//!   [`manifest`]: deployment manifests; [`certs`]: TLS configuration and generated
//!   certificates; [`identity`]: identities, their keys and registry, the CONNECT username;
//!   [`sas`]: SAS tokens; [`fs`]: atomic file writes.

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
pub mod in_flight;
pub mod ingest;
pub mod listener;
pub mod manifest;
pub mod methods;
pub mod metrics;
pub mod mqtt;
pub mod record;
pub mod run;
pub mod sas;
pub mod stop;
pub mod twin;
pub mod upstream;
