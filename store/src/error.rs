//! Error types: start-up errors ([`OpenError`]) apart from run-time ones.
//!
//! Expected outcomes of the data path ("over quota", "not delivered yet") are variants of their
//! own so that the hub can act on them; storage failures carry the backend's error.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// A failure inside the storage engine (sled), kept opaque so that the engine can be replaced.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct BackendError(#[from] sled::Error);

impl From<io::Error> for BackendError {
    /// A file operation of the store's own beside sled's (syncing its log or a directory).
    fn from(e: io::Error) -> Self {
        Self(sled::Error::Io(e))
    }
}

/// Why [`Store::open`](crate::Store::open) failed.
///
/// A database that exists but cannot be opened is *not* an error: it is moved aside and reported
/// in [`RecoveryReport`](crate::RecoveryReport). These errors mean the store cannot run at all.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A directory of the store could not be created, listed or renamed.
    #[error("store directory {path}: {source}")]
    Io {
        /// The directory or file concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A fresh database could not be created (after any broken one was moved aside).
    #[error("cannot create database in {path}: {reason}")]
    Create {
        /// The database directory.
        path: PathBuf,
        /// What the backend said.
        reason: String,
    },
    /// A database of the store is locked: another process (or another `Store` in this
    /// process) has the store open.
    #[error("store database {path} is in use by another process")]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// The configuration is inconsistent.
    #[error("invalid store configuration: {0}")]
    Config(&'static str),
}

/// Why an enqueue was refused or could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnqueueError {
    /// The quota is exhausted and the policy is `reject`: the publisher should keep the message
    /// and retry later (the hub withholds the PUBACK).
    #[error("store quota exceeded")]
    QuotaExceeded,
    /// A target names an endpoint that was removed.
    #[error("unknown endpoint {0:?}")]
    UnknownEndpoint(String),
    /// Two targets name the same endpoint: a bug of the caller, which must merge them (one
    /// copy per endpoint, decision D6) before it enqueues.
    #[error("endpoint {0:?} is named by more than one target")]
    DuplicateTarget(String),
    /// The target list is empty.
    #[error("message has no target")]
    NoTargets,
    /// `try_enqueue` only: the writer's inbox is full.
    #[error("store writer inbox is full")]
    Busy,
    /// The store was closed before the message was durable.
    #[error("store closed")]
    Closed,
    /// The file system holding the store is full: the message was not stored. Refused at once
    /// while [`Store::health`](crate::Store::health) is [`Health::DiskFull`](crate::Health::DiskFull)
    /// (counted in [`StoreStats::refused`](crate::StoreStats::refused)), or the ticket of a
    /// message whose write hit the full disk. The store recovers by itself when space
    /// returns; the publisher should keep the message and retry later (no PUBACK).
    #[error("the store's disk is full")]
    DiskFull,
    /// The store cannot write at the moment (a storage failure other than a full disk) and is
    /// retrying on a fresh database; the message was not stored. Refused at once while
    /// [`Store::health`](crate::Store::health) is [`Health::Failing`](crate::Health::Failing).
    #[error("the store cannot write at the moment")]
    Unavailable,
    /// The write or the flush failed; the message must be considered not stored.
    #[error("storage failure: {0}")]
    Backend(#[from] BackendError),
}

/// A run-time failure of a store operation other than enqueue.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store was closed.
    #[error("store closed")]
    Closed,
    /// No endpoint with this id.
    #[error("unknown endpoint {0:?}")]
    UnknownEndpoint(String),
    /// The endpoint was removed while a reader was attached.
    #[error("endpoint {0:?} was removed")]
    EndpointRemoved(String),
    /// Another reader is attached to this endpoint (one reader per endpoint).
    #[error("endpoint {0:?} already has a reader")]
    ReaderBusy(String),
    /// The storage engine failed.
    #[error("storage failure: {0}")]
    Backend(#[from] BackendError),
    /// A file-system operation failed.
    #[error("i/o failure on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: Arc<io::Error>,
    },
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The entry was not handed out by this reader (or the reader was rewound since).
    #[error("entry {seq} of priority {priority} was not delivered by this reader")]
    NotDelivered {
        /// Priority of the queue named by the ack.
        priority: u32,
        /// Sequence number named by the ack.
        seq: u64,
    },
}

impl BackendError {
    /// Whether the storage said it is full: `ENOSPC` or an exhausted disk quota (`EDQUOT`).
    /// sled remembers the first write error of a database and repeats it (with the same
    /// kind) for every later write, so this also holds for those repetitions.
    pub fn is_disk_full(&self) -> bool {
        match &self.0 {
            sled::Error::Io(e) => {
                matches!(
                    e.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                ) || matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT))
            }
            _ => false,
        }
    }
}

/// `ENOSPC` and `EDQUOT` on Linux (the store's platform; no libc dependency for two numbers).
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

impl EnqueueError {
    /// The error a ticket fails with when the write or flush of its message failed.
    pub(crate) fn from_write(e: BackendError) -> Self {
        if e.is_disk_full() {
            Self::DiskFull
        } else {
            Self::Backend(e)
        }
    }
}
