//! Statistics: per endpoint (from the queues) and for the store (counters kept by the writer,
//! the readers and the cleaner).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Whether the store can take new messages, as [`Store::health`](crate::Store::health) and
/// [`StoreStats::health`] report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Health {
    /// Writes succeed.
    #[default]
    Writable,
    /// The file system holding the store is full (`ENOSPC` or a disk quota): enqueues are
    /// refused at once with [`EnqueueError::DiskFull`](crate::EnqueueError::DiskFull). Stored
    /// messages are still read and acknowledged. The store is writable again by itself soon
    /// after space returns (at least `StoreConfig::resume_free_bytes` free).
    DiskFull,
    /// Writing failed for another reason (an I/O error) and the store could not open a fresh
    /// database yet: enqueues are refused at once with
    /// [`EnqueueError::Unavailable`](crate::EnqueueError::Unavailable) while it retries.
    Failing,
}

impl Health {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Self::Writable => 0,
            Self::DiskFull => 1,
            Self::Failing => 2,
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Writable,
            1 => Self::DiskFull,
            _ => Self::Failing,
        }
    }
}

/// Backlog of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointStats {
    /// Entries not yet acknowledged, expired or dropped.
    pub count: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Age of the oldest such entry (to the precision of a group commit).
    pub oldest_age: Option<Duration>,
}

/// Totals for the whole store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Allocated size of the store's directory, as last measured by the cleaner.
    pub disk_bytes: u64,
    /// Epoch databases on disk.
    pub epochs: u64,
    /// Messages made durable since open.
    pub enqueued: u64,
    /// Entries dropped because their TTL ran out, since open.
    pub expired: u64,
    /// Enqueues refused by the quota (`reject` policy), since open.
    pub rejected: u64,
    /// Enqueues refused at once because the store could not write (a full disk or a storage
    /// failure, see [`health`](Self::health)), since open. Tickets that failed are not counted.
    pub refused: u64,
    /// Entries dropped by the quota (`drop_oldest` policy), since open.
    pub evicted: u64,
    /// Entries dropped because their segment could not be read, since open.
    pub lost: u64,
    /// Epochs compacted (their few live entries copied forward) since open.
    pub compacted: u64,
    /// Databases moved aside because they could not be opened (at this open).
    pub quarantined: u64,
    /// Writes or flushes of an epoch that failed since open. Each failure seals the epoch
    /// being written (it stays readable) and writing continues in a new one; the messages
    /// of the failed write were refused (their tickets failed).
    pub write_failures: u64,
    /// Checkpoint saves since open (each a write and a flush of the meta database).
    pub checkpoint_saves: u64,
    /// Whether the quota is exhausted right now.
    pub over_quota: bool,
    /// Whether the store can write right now.
    pub health: Health,
}

/// Monotonic counters shared by the store's threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub disk_bytes: AtomicU64,
    pub epochs: AtomicU64,
    pub enqueued: AtomicU64,
    pub expired: AtomicU64,
    pub rejected: AtomicU64,
    pub refused: AtomicU64,
    pub evicted: AtomicU64,
    pub quarantined: AtomicU64,
    pub lost: AtomicU64,
    pub compacted: AtomicU64,
    pub write_failures: AtomicU64,
    pub checkpoint_saves: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn snapshot_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self, over_quota: bool, health: Health) -> StoreStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StoreStats {
            disk_bytes: get(&self.disk_bytes),
            epochs: get(&self.epochs),
            enqueued: get(&self.enqueued),
            expired: get(&self.expired),
            rejected: get(&self.rejected),
            refused: get(&self.refused),
            evicted: get(&self.evicted),
            quarantined: get(&self.quarantined),
            lost: get(&self.lost),
            compacted: get(&self.compacted),
            write_failures: get(&self.write_failures),
            checkpoint_saves: get(&self.checkpoint_saves),
            over_quota,
            health,
        }
    }
}
