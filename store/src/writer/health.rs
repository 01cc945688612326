//! Write failures and recovery from them: a full disk, a failed write or sync.
//!
//! sled remembers the first write error of a database for good, and after a failed `fdatasync`
//! no later sync of the file proves anything (see `backend`). So a database that failed is
//! never written again: the epoch being written is sealed (it stays readable), the meta
//! database is closed to be reopened. Until the store can write again, it is *degraded*:
//! [`Health`] is `DiskFull` or `Failing`, enqueues are refused at once (counted in
//! `StoreStats::refused`), checkpoints wait in memory, and the writer retries with capped
//! exponential backoff: (on a full disk, only once the file system has
//! `StoreConfig::resume_free_bytes` free) reopen the meta database, open a fresh epoch, and
//! write and sync a probe to both. When that succeeds the store is `Writable` again. One log
//! line when an episode starts (WARN for a full disk, ERROR otherwise), one when it ends.

use std::time::{Duration, Instant};

use super::Writer;
use crate::backend::{MetaDb, OpenFailure};
use crate::error::{BackendError, EnqueueError};
use crate::quota;
use crate::stats::{Counters, Health};

/// First delay before trying to write again, doubled after each failed attempt.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest delay between attempts: the store is writable again at most this long after the
/// disk has room.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The reserve file, in the store's directory (see `StoreConfig::reserve_bytes`).
const RESERVE_FILE: &str = "reserve";

/// An episode during which the store cannot write.
#[derive(Debug)]
pub(super) struct Degraded {
    health: Health,
    since: Instant,
    pub(super) next_try: Instant,
    backoff: Duration,
    /// `StoreStats::refused` when the episode began.
    refused_before: u64,
}

impl OpenFailure {
    /// The failure as a backend error (keeping the I/O error kind, so a full disk is told).
    pub(crate) fn into_backend(self) -> BackendError {
        match self {
            Self::Backend(e) => e,
            other => BackendError::from(std::io::Error::other(other.to_string())),
        }
    }
}

impl Writer {
    /// The error for a write refused while degraded (a full disk keeps its kind).
    pub(super) fn unwritable(&self) -> BackendError {
        let kind = match self.store.health() {
            Health::DiskFull => std::io::ErrorKind::StorageFull,
            _ => std::io::ErrorKind::Other,
        };
        BackendError::from(std::io::Error::new(
            kind,
            "the store cannot write at the moment",
        ))
    }

    /// What an enqueue that reaches the writer while it is degraded fails with.
    pub(super) fn refusal(&self) -> EnqueueError {
        match self.store.health() {
            Health::DiskFull => EnqueueError::DiskFull,
            _ => EnqueueError::Unavailable,
        }
    }

    /// The meta database, unless it was closed after a write error.
    pub(super) fn meta(&self) -> Result<&MetaDb, BackendError> {
        self.meta.as_ref().ok_or_else(|| self.unwritable())
    }

    /// A write or flush of the meta database failed: close it (sled would repeat the error
    /// forever) and reopen it when the store recovers. Checkpoints stay in memory meanwhile.
    pub(super) fn meta_failed(&mut self, error: &BackendError) {
        if self.meta.take().is_some() {
            tracing::debug!(%error, "meta database closed after a write error");
        }
        self.degrade(error);
    }

    /// Starts (or continues) an episode of not being able to write.
    pub(super) fn degrade(&mut self, error: &BackendError) {
        let health = if error.is_disk_full() {
            Health::DiskFull
        } else {
            Health::Failing
        };
        let now = Instant::now();
        match &mut self.degraded {
            Some(episode) => {
                // A full disk says more than a failure seen before it.
                if health == Health::DiskFull && episode.health != health {
                    episode.health = health;
                    release_reserve(&self.store.config.dir);
                }
            }
            None => {
                match health {
                    Health::DiskFull => tracing::warn!(
                        dir = %self.store.config.dir.display(),
                        %error,
                        "store disk full: new messages are refused until space returns; stored messages are still delivered"
                    ),
                    _ => tracing::error!(
                        dir = %self.store.config.dir.display(),
                        %error,
                        "store cannot write: new messages are refused while it retries; stored messages are still delivered"
                    ),
                }
                if health == Health::DiskFull {
                    release_reserve(&self.store.config.dir);
                }
                self.degraded = Some(Degraded {
                    health,
                    since: now,
                    next_try: now + BACKOFF_MIN,
                    backoff: BACKOFF_MIN,
                    refused_before: self.store.counters.snapshot_refused(),
                });
            }
        }
        let health = self.degraded.as_ref().map_or(health, |e| e.health);
        self.store.set_health(health);
    }

    /// Tries to make the store writable again, if an attempt is due.
    pub(super) fn maybe_recover(&mut self, now: Instant) {
        let Some(episode) = &self.degraded else {
            return;
        };
        if now < episode.next_try {
            return;
        }
        match self.recover() {
            Ok(()) => {
                let Some(episode) = self.degraded.take() else {
                    return;
                };
                let refused = self
                    .store
                    .counters
                    .snapshot_refused()
                    .saturating_sub(episode.refused_before);
                tracing::info!(
                    refused,
                    lasted_ms =
                        u64::try_from(episode.since.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "store writable again"
                );
                self.store.set_health(Health::Writable);
                self.save_checkpoints();
            }
            Err(e) => {
                tracing::debug!(error = %e, "store still cannot write");
                if let Some(episode) = &mut self.degraded {
                    if e.is_disk_full() && episode.health != Health::DiskFull {
                        episode.health = Health::DiskFull;
                        self.store.set_health(Health::DiskFull);
                        release_reserve(&self.store.config.dir);
                    }
                    episode.backoff = (episode.backoff * 2).min(BACKOFF_MAX);
                    episode.next_try = Instant::now() + episode.backoff;
                }
            }
        }
    }

    /// One attempt: room on the disk, the meta database, a fresh epoch, a synced probe in both.
    fn recover(&mut self) -> Result<(), BackendError> {
        if self.degraded.as_ref().map(|e| e.health) == Some(Health::DiskFull) {
            let config = &self.store.config;
            let free = quota::free_space(&config.dir)?;
            if free
                < config
                    .resume_free_bytes
                    .saturating_add(config.reserve_bytes)
            {
                return Err(BackendError::from(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("{free} bytes free"),
                )));
            }
        }
        self.make_reserve()?;
        if self.meta.is_none() {
            self.meta =
                Some(MetaDb::try_open(&self.layout.meta).map_err(OpenFailure::into_backend)?);
        }
        if let Err(e) = self.meta().and_then(MetaDb::probe) {
            self.meta = None;
            return Err(e);
        }
        if self.current.is_none() {
            self.start_epoch().map_err(OpenFailure::into_backend)?;
        }
        if let Some(current) = &self.current
            && let Err(e) = current.db.probe()
        {
            Counters::add(&self.store.counters.write_failures, 1);
            self.seal_current();
            return Err(e);
        }
        // Checkpoints saved in the closed meta database may be lost: save them all again.
        for endpoint in self.endpoints() {
            endpoint.lock().checkpoints_dirty = true;
        }
        Ok(())
    }

    /// Where the reserve file is.
    pub(super) fn reserve_path(&self) -> std::path::PathBuf {
        self.store.config.dir.join(RESERVE_FILE)
    }

    /// Allocates the reserve file unless it is there.
    pub(super) fn make_reserve(&self) -> std::io::Result<()> {
        let bytes = self.store.config.reserve_bytes;
        let path = self.reserve_path();
        if bytes == 0 || std::fs::metadata(&path).is_ok_and(|m| m.len() == bytes) {
            return Ok(());
        }
        let written = (|| {
            let mut file = std::fs::File::create(&path)?;
            let chunk = vec![0u8; 64 * 1024];
            let mut left = bytes;
            while left > 0 {
                let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
                std::io::Write::write_all(&mut file, &chunk[..n])?;
                left -= n as u64;
            }
            file.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        written
    }

    /// Whether the store is degraded (refusing writes).
    pub(super) fn is_degraded(&self) -> bool {
        self.degraded.is_some()
    }

    /// When the next attempt to recover is due, if degraded.
    pub(super) fn recovery_deadline(&self) -> Option<Instant> {
        self.degraded.as_ref().map(|e| e.next_try)
    }
}

/// Deletes the reserve file: the disk is full, and readers need a little room to open
/// sealed epochs.
fn release_reserve(dir: &std::path::Path) {
    let path = dir.join(RESERVE_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::debug!("disk full: reserve released for readers"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete the reserve file");
        }
    }
}
