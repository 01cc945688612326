//! Durable per-endpoint message queues for the edge hub, on sled, with TTL expiry, a disk quota
//! and crash safety.
//!
//! A message is enqueued once for a set of [`Target`]s (endpoint, priority, [`Ttl`]); its bytes
//! are stored once. Targets name endpoints by [`EndpointHandle`], obtained once from
//! [`Store::add_endpoint`], so that enqueueing does no lookup by name. Each endpoint has one FIFO queue per priority and one [`Reader`] that hands
//! out batches, highest priority (lowest number) first, and takes acknowledgements. The
//! [`Ticket`] returned by [`Store::enqueue`] completes when the message is durable as the
//! [`Durability`] mode says; it is a runtime-agnostic future and has a blocking `wait`.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use store::{Store, StoreConfig, Target, Ttl};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = Store::open(StoreConfig::new(dir.path()))?;
//! // When routes are installed: one handle per endpoint, kept for every enqueue.
//! let iothub = store.add_endpoint("iothub")?;
//!
//! // Producer: returns once the message is fsynced (the default `Sync` durability).
//! let ttl = Ttl::from_secs(7200);
//! store.enqueue_durable(Bytes::from_static(b"hello"), &[Target::new(&iothub, 0, ttl)])?;
//!
//! // Delivery task: read a batch, deliver it, acknowledge in order.
//! let mut reader = store.reader("iothub")?;
//! let batch = reader.read(16, 256 * 1024)?;
//! assert_eq!(batch[0].payload, Bytes::from_static(b"hello"));
//! reader.ack(batch[0].id)?;
//! assert_eq!(store.endpoint_stats("iothub").map(|s| s.count), Some(0));
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`store`](Store): the handle; enqueue, endpoints, readers, statistics.
//! - `state`: what the handle, the readers and the threads share (endpoint table, epochs,
//!   counters).
//! - `writer`: the writer thread, sole owner of the write side; group commit, epoch rotation,
//!   compaction, the cleaner (expiry, deletion of consumed epochs, quota) and checkpoint saving.
//! - `syncer`: in `sync` mode, fsyncs groups, then acknowledges them (readers saw them
//!   when they were written).
//! - `inbox`: the writer's inbox (one wake-up per hand-off, none while the writer is busy).
//! - `park`: a blocking receive that parks the syncer's thread at once.
//! - `writer::health`: write failures (full disk, failed sync), the degraded state and
//!   recovery from it.
//! - `reader`: per-endpoint batches, acks, waiting.
//! - `queue`: per-queue bookkeeping (segments, checkpoint, cursor, exact counts), no I/O.
//! - `endpoint`: an endpoint's queues behind one mutex, its wake-ups, and the
//!   [`EndpointHandle`] callers name it by.
//! - `segment`: the on-disk format of segments and their summaries.
//! - `epoch`: directory layout, epoch liveness, quarantine of unreadable databases, and the
//!   table of open epochs with the opener thread that opens sealed ones for readers.
//! - `backend`: everything sled-specific (the seam to change engine).
//! - `recovery`: rebuilding the queues at open.
//! - `quota`, `clock`, `ticket`, `stats`, `config`, `error`, `entry`: what their names say.
//!
//! See `README.md` for the design and the exact durability statement.

#![warn(missing_docs)]

mod backend;
mod clock;
mod config;
mod endpoint;
mod entry;
mod epoch;
mod error;
mod inbox;
mod park;
mod queue;
mod quota;
mod reader;
mod recovery;
mod segment;
mod state;
mod stats;
mod store;
mod syncer;
mod ticket;
mod writer;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Durability, Quota, QuotaPolicy, StoreConfig};
pub use endpoint::EndpointHandle;
pub use entry::{Entry, EntryId, Target, Ttl};
pub use epoch::Quarantined;
pub use error::{AckError, BackendError, EnqueueError, OpenError, StoreError};
pub use reader::{Reader, Ready};
pub use recovery::RecoveryReport;
pub use stats::{EndpointStats, Health, StoreStats};
pub use store::Store;
pub use ticket::Ticket;
