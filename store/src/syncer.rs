//! The syncer thread (`sync` durability): fsyncs written segments in groups, then completes
//! their tickets. Running it apart from the writer lets the writer encode and write the next
//! group while this one is being synced.
//!
//! Readers do not wait for it: the writer publishes segments the moment they are written (see
//! `Writer::acknowledge`), so a delivery costs no fsync; only the producers' tickets (the
//! publishers' PUBACKs) do. A checkpoint may therefore be saved above the durable end of the
//! log; recovery continues sequence numbers above every saved checkpoint (`recovery`), so a
//! crash never makes a new message fall under one.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::backend::EpochDb;
use crate::epoch::EpochToken;
use crate::error::{BackendError, EnqueueError};
use crate::ticket::Completer;

/// One group commit written (and already published to readers) by the writer, waiting for
/// its fsync.
#[derive(Debug)]
pub(crate) struct SyncJob {
    pub epoch: u64,
    /// The database to flush; `None` for a barrier (see `Writer::flush_all`).
    pub db: Option<Arc<EpochDb>>,
    /// Holds the epoch until its flush is done: the cleaner deletes only epochs nobody holds,
    /// and readers may consume a group before it is synced. Told which of its segments were
    /// synced.
    pub hold: Option<Arc<EpochToken>>,
    /// One past the highest segment number of the group.
    pub segnos_below: u64,
    pub completers: Vec<Completer>,
    /// Signalled once this job (and every job before it) is done.
    pub done: Option<Sender<()>>,
}

/// A flush of epoch `epoch` failed: the writer must not write to it again.
pub(crate) type FlushFailure = (u64, BackendError);

/// Flushes groups of sync jobs and completes their tickets; runs on its own thread
/// ([`run`]) or on the writer's (`Writer::acknowledge`).
///
/// A failed flush fails its whole group: its tickets fail, although its readers may already
/// have seen (and delivered) its entries, as after a crash before the fsync: the producers
/// send them again (at-least-once). The database remembers the failure and fails every
/// later flush (see `backend`), so later jobs of that epoch fail too; the first failure of
/// each epoch goes to the writer (`failures`), which seals the epoch and continues in a new
/// one. It is sent before the group's tickets complete, so the writer learns it before any
/// producer that saw its ticket fail can send again.
#[derive(Debug)]
pub(crate) struct Syncer {
    failures: Sender<FlushFailure>,
    /// Epochs whose failure was already reported.
    reported: HashSet<u64>,
}

impl Syncer {
    pub fn new(failures: Sender<FlushFailure>) -> Self {
        Self {
            failures,
            reported: HashSet::new(),
        }
    }

    /// Flushes the databases of `group` (each once), then completes its jobs in order.
    pub fn sync(&mut self, group: Vec<SyncJob>) {
        let mut results = HashMap::<u64, Result<(), BackendError>>::new();
        for job in &group {
            let Some(db) = &job.db else { continue };
            if results.contains_key(&job.epoch) {
                continue;
            }
            let result = db.flush();
            if let Err(e) = &result
                && self.reported.insert(job.epoch)
            {
                if e.is_disk_full() {
                    // The writer logs the episode once.
                    tracing::debug!(error = %e, epoch = job.epoch, "flush failed: disk full");
                } else {
                    tracing::error!(error = %e, epoch = job.epoch, "flush failed; this group is not acknowledged and its epoch is sealed");
                }
                // Blocks only if the writer left 64 failures unread, which needs 64 epochs
                // failing in a row while it waits on this thread: it reads them every turn.
                let _ = self.failures.send((job.epoch, e.clone()));
            }
            results.insert(job.epoch, result);
        }
        // Jobs come in epoch order: an epoch older than this group's will not be seen again.
        if let Some(oldest) = group
            .iter()
            .filter(|j| j.db.is_some())
            .map(|j| j.epoch)
            .min()
        {
            self.reported.retain(|&id| id >= oldest);
        }
        for job in group {
            let result = results
                .get(&job.epoch)
                .cloned()
                .unwrap_or(Ok(()))
                .map_err(EnqueueError::from_write);
            if let (Ok(()), Some(token)) = (&result, &job.hold) {
                token.note_synced(job.segnos_below);
            }
            for completer in job.completers {
                completer.complete(result.clone());
            }
            if let Some(done) = job.done {
                let _ = done.send(());
            }
        }
    }
}

/// Body of the syncer thread: syncs what the writer sent, in groups of what waits; returns
/// when the writer drops its sender.
pub(crate) fn run(jobs: &Receiver<SyncJob>, mut syncer: Syncer) {
    while let Some(first) = crate::park::recv(jobs) {
        let mut group = vec![first];
        group.extend(jobs.try_iter());
        syncer.sync(group);
    }
}
