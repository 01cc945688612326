//! The MQTT head of the hub: connections, sessions, topics.
//!
//! - [`topic`]: topics both ways (inbound parsed, outbound built), subscription kinds, property
//!   bags (pure functions);
//! - [`auth`]: the authentication seam the connection calls on CONNECT;
//! - [`session`]: the registry of sessions (subscriptions, the live connection of each client);
//! - [`connection`]: one client connection, from CONNECT to close.

pub mod auth;
pub mod connection;
pub mod limits;
pub mod session;
pub mod session_file;
pub mod topic;
