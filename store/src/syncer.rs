//! The syncer thread (`sync` durability): fsyncs written segments in groups, then makes them
//! visible to readers and completes their tickets. Running it apart from the writer lets the
//! writer encode and write the next group while this one is being synced.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::backend::EpochDb;
use crate::endpoint::Endpoint;
use crate::error::{BackendError, EnqueueError};
use crate::queue::SegRef;
use crate::ticket::Completer;

/// Segments of one endpoint, by priority, to publish once durable.
pub(crate) type Publication = (Arc<Endpoint>, Vec<(u32, SegRef)>);

/// One group commit written by the writer, waiting for its fsync.
#[derive(Debug)]
pub(crate) struct SyncJob {
    pub epoch: u64,
    /// The database to flush; `None` for a barrier (see `Writer::flush_all`).
    pub db: Option<Arc<EpochDb>>,
    pub publications: Vec<Publication>,
    pub completers: Vec<Completer>,
    /// Signalled once this job (and every job before it) is done.
    pub done: Option<Sender<()>>,
}

/// Publishes segments to their endpoints and wakes the readers.
pub(crate) fn publish(publications: Vec<Publication>) {
    for (endpoint, segs) in publications {
        endpoint.publish(segs);
    }
}

/// A flush of epoch `epoch` failed: the writer must not write to it again.
pub(crate) type FlushFailure = (u64, BackendError);

/// Body of the syncer thread; returns when the writer drops its sender.
///
/// A failed flush fails its whole group. The database remembers the failure and fails every
/// later flush (see `backend`), so later jobs of that epoch fail too; the first failure of
/// each epoch goes to the writer (`failures`), which seals the epoch and continues in a new
/// one. It is sent before the group's tickets complete, so the writer learns it before any
/// producer that saw its ticket fail can send again.
pub(crate) fn run(jobs: &Receiver<SyncJob>, failures: &Sender<FlushFailure>) {
    let mut reported = HashSet::<u64>::new();
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        group.extend(jobs.try_iter());
        let mut results = HashMap::<u64, Result<(), BackendError>>::new();
        for job in &group {
            let Some(db) = &job.db else { continue };
            if results.contains_key(&job.epoch) {
                continue;
            }
            let result = db.flush();
            if let Err(e) = &result
                && reported.insert(job.epoch)
            {
                if e.is_disk_full() {
                    // The writer logs the episode once.
                    tracing::debug!(error = %e, epoch = job.epoch, "flush failed: disk full");
                } else {
                    tracing::error!(error = %e, epoch = job.epoch, "flush failed; this group is not acknowledged and its epoch is sealed");
                }
                // Blocks only if the writer left 64 failures unread, which needs 64 epochs
                // failing in a row while it waits on this thread: it reads them every turn.
                let _ = failures.send((job.epoch, e.clone()));
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
            reported.retain(|&id| id >= oldest);
        }
        for job in group {
            let result = results
                .get(&job.epoch)
                .cloned()
                .unwrap_or(Ok(()))
                .map_err(EnqueueError::from_write);
            if result.is_ok() {
                publish(job.publications);
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
