//! Upstream: messages routed to `$upstream` leave for IoT Hub or, in a nested deployment, for
//! a parent hub, under the identity of their sender, and ride out every outage.
//!
//! - [`settings`]: the `[upstream]` table: the `$edgeHub` connection string, TLS, credentials
//!   (on behalf of this hub toward a parent, spec 1.5; the identity's own key toward IoT Hub);
//! - [`forwarder`]: the pump of the `$upstream` queue: a window in flight per sender, in order
//!   per sender and priority, acknowledged to the store only once upstream acknowledged; a
//!   refused or failing sender waits and resends without holding up the others;
//! - [`outbox`]: one sender's messages in memory: pending, in flight, deferred to the store;
//! - [`ledger`]: what the forwarder read and how far the store can be acknowledged;
//! - [`lanes`]: live data first, an option: a sender's live messages leave before its backlog
//!   of the same priority;
//! - [`edge_hub_sync`]: this hub's `$edgeHub` twin upstream: deployments from upstream,
//!   reported properties sent up ([`report`]: as patches within upstream's limits);
//! - [`mirror`]: module and device twins and direct methods through the hierarchy: the
//!   subscriptions of clients here kept on their links, desired patches and method calls
//!   brought down, reported patches sent up ([`from_upstream`]: the topics it reads);
//! - [`links`]: the links by identity, shared by the forwarder and the mirror;
//! - [`link`]: one MQTT connection per identity (D8), opened when needed, closed when idle,
//!   renewed before its token expires, reconnected with jittered back-off ([`backoff`]);
//! - [`status`]: what `/metrics` and the `$edgeHub` twin report;
//! - [`scope`]: the device-scope sync: the identities of this hub's scope, learned from
//!   upstream and kept for offline restarts (spec 6.2).

pub mod backoff;
pub mod edge_hub_sync;
pub mod forwarder;
pub mod from_upstream;
pub mod lanes;
pub mod ledger;
pub mod link;
pub mod links;
pub mod mirror;
pub mod outbox;
pub mod report;
pub mod scope;
pub mod settings;
pub mod status;

pub use settings::{ConnectionString, UpstreamSettings};
pub use status::UpstreamStatus;
