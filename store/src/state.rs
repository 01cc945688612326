//! The state shared by the store handle, its readers and its threads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use crate::clock::StoreTime;
use crate::config::StoreConfig;
use crate::endpoint::Endpoint;
use crate::epoch::EpochTable;
use crate::stats::{Counters, Health};

/// What every part of an open store sees: the configuration, the endpoints by id, the epoch
/// table, the counters and the quota flag.
///
/// Shared behind an `Arc` by the [`Store`](crate::Store) handle, every
/// [`Reader`](crate::Reader), the writer thread (which alone adds and removes endpoints and
/// sets the quota flag) and its cleaner.
#[derive(Debug)]
pub(crate) struct StoreState {
    pub config: StoreConfig,
    /// Endpoints by id. Enqueue does not look here: callers hold
    /// [`EndpointHandle`](crate::EndpointHandle)s.
    pub endpoints: RwLock<HashMap<String, Arc<Endpoint>>>,
    pub epochs: EpochTable,
    /// The store's time: enqueue stamps, expiry, ages.
    pub time: StoreTime,
    pub counters: Counters,
    /// Set by the writer when the quota is exhausted.
    pub over_quota: AtomicBool,
    /// Set by the writer: whether it can write (a [`Health`]).
    pub health: AtomicU8,
    /// Acknowledgements made by readers since the writer last saved checkpoints.
    pub acks_since_save: AtomicU64,
}

impl StoreState {
    /// The endpoint table, for reading.
    pub fn endpoints(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Endpoint>>> {
        self.endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the store can write.
    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    /// Sets the health (the writer only).
    pub fn set_health(&self, health: Health) {
        self.health.store(health.to_u8(), Ordering::Release);
    }

    /// The endpoint named `id`, if any.
    pub fn endpoint(&self, id: &str) -> Option<Arc<Endpoint>> {
        self.endpoints().get(id).cloned()
    }
}
