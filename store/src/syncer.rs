//! The syncer thread (`sync` durability): fsyncs written segments in groups, then makes them
//! visible to readers and completes their tickets. Running it apart from the writer lets the
//! writer encode and write the next group while this one is being synced.

use std::sync::Arc;

use crossbeam_channel::Receiver;

use crate::backend::EpochDb;
use crate::endpoint::Endpoint;
use crate::error::EnqueueError;
use crate::queue::SegRef;
use crate::ticket::Completer;

/// Segments of one endpoint, by priority, to publish once durable.
pub(crate) type Publication = (Arc<Endpoint>, Vec<(u32, SegRef)>);

/// One group commit written by the writer, waiting for its fsync.
#[derive(Debug)]
pub(crate) struct SyncJob {
    pub epoch: u64,
    pub db: Arc<EpochDb>,
    pub publications: Vec<Publication>,
    pub completers: Vec<Completer>,
    /// Signalled once this job (and every job before it) is done.
    pub done: Option<crossbeam_channel::Sender<()>>,
}

/// Publishes segments to their endpoints and wakes the readers.
pub(crate) fn publish(publications: Vec<Publication>) {
    for (endpoint, segs) in publications {
        endpoint.publish(segs);
    }
}

/// Body of the syncer thread; returns when the writer drops its sender.
pub(crate) fn run(jobs: &Receiver<SyncJob>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        group.extend(jobs.try_iter());
        let mut result = Ok(());
        let mut synced = Vec::<u64>::new();
        for job in &group {
            if !synced.contains(&job.epoch) {
                synced.push(job.epoch);
                if let Err(e) = job.db.flush() {
                    tracing::error!(error = %e, epoch = job.epoch, "flush failed; enqueues of this group are not acknowledged");
                    result = Err(EnqueueError::Backend(e));
                }
            }
        }
        for job in group {
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
