//! Store configuration: durability, sizes, intervals and quota.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::OpenError;

/// When an enqueue is acknowledged (its [`Ticket`](crate::Ticket) completes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged only after an fsync that covers the message (group commit).
    Sync,
    /// Acknowledged once written to the database (sled's in-process log buffer), which is
    /// flushed (fsync) at least every `interval` while there are unflushed writes.
    /// **A crash of the process (`kill -9`), of the kernel, or a power cut can lose the
    /// messages acknowledged in the last `interval` plus the duration of one flush.**
    Periodic {
        /// Maximum time between flushes.
        interval: Duration,
    },
}

/// What to do when the quota is exhausted (decision D10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuotaPolicy {
    /// Refuse new messages with [`EnqueueError::QuotaExceeded`](crate::EnqueueError::QuotaExceeded)
    /// until space comes back.
    #[default]
    Reject,
    /// Drop the oldest epoch of messages (all priorities) until under quota.
    DropOldest,
}

/// Limits on the store's disk use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// Maximum bytes the store's directory may occupy on disk (allocated size).
    pub max_store_bytes: Option<u64>,
    /// Minimum free bytes to leave on the file system that holds the store.
    pub min_free_disk_bytes: Option<u64>,
    /// What to do when a limit is reached.
    pub policy: QuotaPolicy,
}

/// Configuration of a [`Store`](crate::Store); build with [`StoreConfig::new`] and `with_*`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of the store (created if missing).
    pub dir: PathBuf,
    /// When enqueues are acknowledged.
    pub durability: Durability,
    /// A segment is closed when its data reaches this size (16-64 KiB keeps sled efficient).
    pub segment_bytes: usize,
    /// An epoch (one sled database) is closed once this many bytes were written to it.
    pub epoch_bytes: u64,
    /// sled page cache of each epoch database, in bytes.
    pub epoch_cache_bytes: u64,
    /// Capacity of the writer's inbox, in messages; producers wait (or `try_enqueue` fails)
    /// when it is full.
    pub inbox_capacity: usize,
    /// Most messages taken from the inbox for one group commit.
    pub max_commit_messages: usize,
    /// Checkpoints (acknowledgements) are written and flushed at the latest this long after
    /// an acknowledgement; a crash redelivers what was acknowledged since the last save
    /// (at-least-once).
    pub checkpoint_interval: Duration,
    /// ...and sooner, at the writer's next tick (every 20 ms at most), once this many
    /// acknowledgements were made since the last save: at a high rate a crash redelivers
    /// about this many entries, at a low rate the store does not flush its meta database
    /// 50 times a second for a few messages (CPU, and wear of the device's flash).
    pub checkpoint_acks: u64,
    /// How often the cleaner drops expired entries, deletes consumed epochs and checks the quota.
    pub cleanup_interval: Duration,
    /// Most segments the cleaner drops per run (bounded work per tick).
    pub cleanup_budget: usize,
    /// A sealed epoch whose live payload is under an eighth of an epoch and has not shrunk for
    /// this long is compacted (its live entries copied forward, the epoch deleted).
    pub compaction_delay: Duration,
    /// Disk quota.
    pub quota: Quota,
    /// After the disk was found full, the store tries to write again only once its file
    /// system has at least this many bytes free beyond `reserve_bytes` (then a probe write
    /// must succeed too).
    pub resume_free_bytes: u64,
    /// Size of the file `<dir>/reserve` the store keeps allocated while it can write and
    /// deletes when the disk is full, so that readers can still open sealed epochs (sled
    /// pads its log, up to 512 KiB, and writes a snapshot file the first time it opens a
    /// database after it was written) and deliver what is stored. Not counted in
    /// `StoreStats::disk_bytes` nor in the quota. 0: no reserve.
    pub reserve_bytes: u64,
    /// Source of time for enqueue stamps and expiry: the wall clock is read at open, the
    /// monotonic clock measures time while the store runs (see `max_downtime`).
    pub clock: Arc<dyn Clock>,
    /// At open, the most time between the previous run's last saved time and the wall clock
    /// that counts toward ages (TTL): a wall clock further ahead is not believed (a clock
    /// set forward must not expire the whole backlog). A wall clock behind the previous run
    /// counts as no time at all. One hour by default.
    pub max_downtime: Duration,
    /// Failures injected into the epochs the writer opens (unit tests only).
    #[cfg(test)]
    pub(crate) faults: Option<Arc<crate::backend::faults::Faults>>,
}

impl StoreConfig {
    /// Defaults: `sync` durability, 64 KiB segments, 8 MiB epochs, 4 MiB cache per epoch,
    /// checkpoints every second or every 1,000 acknowledgements, cleanup every second,
    /// compaction of stalled epochs after 2 s, no quota.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            durability: Durability::Sync,
            segment_bytes: 64 * 1024,
            epoch_bytes: 8 << 20,
            epoch_cache_bytes: 4 << 20,
            inbox_capacity: 16 * 1024,
            max_commit_messages: 4 * 1024,
            checkpoint_interval: Duration::from_secs(1),
            checkpoint_acks: 1000,
            cleanup_interval: Duration::from_secs(1),
            cleanup_budget: 1024,
            compaction_delay: Duration::from_secs(2),
            quota: Quota::default(),
            resume_free_bytes: 4 << 20,
            reserve_bytes: 2 << 20,
            clock: Arc::new(SystemClock),
            max_downtime: Duration::from_secs(3600),
            #[cfg(test)]
            faults: None,
        }
    }

    /// Sets the durability mode.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets the epoch size.
    pub fn with_epoch_bytes(mut self, bytes: u64) -> Self {
        self.epoch_bytes = bytes;
        self
    }

    /// Sets the segment size.
    pub fn with_segment_bytes(mut self, bytes: usize) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Sets the quota.
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    /// Sets the free space needed to write again after the disk was full.
    pub fn with_resume_free_bytes(mut self, bytes: u64) -> Self {
        self.resume_free_bytes = bytes;
        self
    }

    /// Sets the size of the reserve file deleted when the disk is full.
    pub fn with_reserve_bytes(mut self, bytes: u64) -> Self {
        self.reserve_bytes = bytes;
        self
    }

    /// Sets the cleanup interval.
    pub fn with_cleanup_interval(mut self, interval: Duration) -> Self {
        self.cleanup_interval = interval;
        self
    }

    /// Sets the clock (tests inject a [`ManualClock`](crate::ManualClock)).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), OpenError> {
        if self.segment_bytes == 0 || self.epoch_bytes == 0 {
            return Err(OpenError::Config(
                "segment_bytes and epoch_bytes must be positive",
            ));
        }
        if self.inbox_capacity == 0 || self.max_commit_messages == 0 {
            return Err(OpenError::Config(
                "inbox_capacity and max_commit_messages must be positive",
            ));
        }
        if let Durability::Periodic { interval } = self.durability
            && interval.is_zero()
        {
            return Err(OpenError::Config(
                "the periodic flush interval must be positive",
            ));
        }
        if self.checkpoint_interval.is_zero() || self.cleanup_interval.is_zero() {
            return Err(OpenError::Config("intervals must be positive"));
        }
        Ok(())
    }
}
