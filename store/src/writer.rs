//! The writer thread: the single owner of the write side of the store.
//!
//! Each turn it blocks for the first command, drains up to `max_commit_messages` more without
//! blocking, packs the messages into segments and writes them, each segment's summary last
//! (group commit). In `sync` mode the syncer thread then flushes (sled's flush and
//! `fdatasync`) and acknowledges; in `periodic` mode
//! the writer acknowledges at once and flushes on a timer. Between turns it saves checkpoints,
//! runs the cleaner (`cleaner`: expiry, epoch deletion, quota), rotates epochs and compacts
//! the ones slow entries would pin (`compaction`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::backend::{EpochDb, MetaDb, SegmentWrite};
use crate::config::Durability;
use crate::endpoint::Endpoint;
use crate::epoch::{EpochToken, Layout};
use crate::error::{BackendError, EnqueueError, OpenError, StoreError};
use crate::queue::SegRef;
use crate::recovery::Recovered;
use crate::segment::{RecordTarget, SegmentBuilder, Summary};
use crate::state::StoreState;
use crate::stats::Counters;
use crate::syncer::{self, Publication, SyncJob};
use crate::ticket::Completer;

mod cleaner;
mod compaction;

/// Sequence numbers reserved in the meta database at a time, so that a crash can never make
/// the store reuse a number that a persisted checkpoint already covers.
const SEQ_RESERVATION: u64 = 1 << 20;

/// A segment ready to be written: number in the current epoch, data, summary.
type Sealed = (u64, Vec<u8>, Summary);

/// A batch packed into segments, with what is needed to publish and acknowledge it.
#[derive(Debug)]
struct Packed {
    sealed: Vec<Sealed>,
    /// The endpoints the batch goes to, by number.
    endpoints: HashMap<u32, Arc<Endpoint>>,
    completers: Vec<Completer>,
}

/// A resolved destination of a message.
#[derive(Debug)]
pub(crate) struct Destination {
    pub endpoint: Arc<Endpoint>,
    pub priority: u32,
    pub expiry_ms: u64,
}

/// A message on its way to the writer.
#[derive(Debug)]
pub(crate) struct Enqueue {
    pub payload: Bytes,
    pub enqueued_ms: u64,
    pub destinations: Vec<Destination>,
    pub completer: Completer,
}

/// What the store handle asks of the writer.
#[derive(Debug)]
pub(crate) enum Command {
    Enqueue(Enqueue),
    AddEndpoint {
        name: String,
        reply: Sender<Result<Arc<Endpoint>, StoreError>>,
    },
    RemoveEndpoint {
        name: String,
        reply: Sender<Result<bool, StoreError>>,
    },
    /// Reply once everything before is durable and checkpoints are saved.
    Flush {
        reply: Sender<Result<(), StoreError>>,
    },
}

/// The epoch being written.
#[derive(Debug)]
struct Current {
    id: u64,
    db: Arc<EpochDb>,
    next_segno: u64,
    written: u64,
}

/// State owned by the writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    store: Arc<StoreState>,
    layout: Layout,
    inbox: Receiver<Command>,
    meta: MetaDb,
    /// Epochs on disk, oldest first; the last is `current`.
    epochs: VecDeque<Arc<EpochToken>>,
    current: Current,
    next_seq: u64,
    seq_reserved: u64,
    next_endpoint: u32,
    syncer: Option<(Sender<SyncJob>, JoinHandle<()>)>,
    /// Sealed epochs still to be closed (see `close_sealed`).
    to_close: Vec<u64>,
    /// Live bytes of small sealed epochs, and since when they have not shrunk (compaction).
    stalled: HashMap<u64, (u64, Instant)>,
    builder: SegmentBuilder,
    targets: Vec<RecordTarget>,
    unflushed: bool,
    last_flush: Instant,
    next_checkpoint: Instant,
    next_cleanup: Instant,
    /// Disk usage at the last measurement plus what was written since.
    disk_estimate: u64,
}

impl Writer {
    /// Opens the first epoch of this run and reserves sequence numbers.
    pub fn new(
        store: Arc<StoreState>,
        layout: Layout,
        inbox: Receiver<Command>,
        recovered: Recovered,
    ) -> Result<Self, OpenError> {
        let Recovered {
            meta,
            endpoints,
            mut epochs,
            next_seq,
            next_endpoint,
            next_epoch,
            report: _,
        } = recovered;
        *store
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner) = endpoints;
        let config = &store.config;
        let dir = layout.epoch_dir(next_epoch);
        let db = EpochDb::open(&dir, config.epoch_cache_bytes).map_err(|e| OpenError::Create {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
        let db = store.epochs.insert(next_epoch, db);
        epochs.push_back(Arc::new(EpochToken { id: next_epoch }));
        let seq_reserved = next_seq + SEQ_RESERVATION;
        meta.reserve_seq(seq_reserved)
            .map_err(|e| OpenError::Create {
                path: layout.meta.clone(),
                reason: e.to_string(),
            })?;
        let syncer = match config.durability {
            Durability::Sync => {
                let (tx, rx) = crossbeam_channel::bounded(1024);
                let handle = std::thread::Builder::new()
                    .name("store-syncer".into())
                    .spawn(move || syncer::run(&rx))
                    .map_err(|source| OpenError::Io {
                        path: layout.epoch_dir(next_epoch),
                        source,
                    })?;
                Some((tx, handle))
            }
            Durability::Periodic { .. } => None,
        };
        let now = Instant::now();
        let mut writer = Self {
            store,
            layout,
            inbox,
            meta,
            epochs,
            current: Current {
                id: next_epoch,
                db,
                next_segno: 0,
                written: 0,
            },
            next_seq,
            seq_reserved,
            next_endpoint,
            syncer,
            to_close: Vec::new(),
            stalled: HashMap::new(),
            builder: SegmentBuilder::default(),
            targets: Vec::new(),
            unflushed: false,
            last_flush: now,
            next_checkpoint: now,
            next_cleanup: now,
            disk_estimate: 0,
        };
        writer.cleanup();
        Ok(writer)
    }

    /// The thread's body: runs until every store handle is gone.
    pub fn run(mut self) {
        let mut batch = Vec::new();
        loop {
            let timeout = self
                .next_deadline()
                .saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(timeout) {
                Ok(command) => {
                    self.handle(command, &mut batch);
                    while batch.len() < self.store.config.max_commit_messages {
                        let Ok(command) = self.inbox.try_recv() else {
                            break;
                        };
                        self.handle(command, &mut batch);
                    }
                    self.commit(&mut batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.timers();
        }
        self.shutdown();
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_checkpoint.min(self.next_cleanup);
        if let Durability::Periodic { interval } = self.store.config.durability
            && self.unflushed
        {
            deadline = deadline.min(self.last_flush + interval);
        }
        deadline
    }

    fn handle(&mut self, command: Command, batch: &mut Vec<Enqueue>) {
        match command {
            Command::Enqueue(e) => batch.push(e),
            Command::AddEndpoint { name, reply } => {
                self.commit(batch);
                let _ = reply.send(self.add_endpoint(name));
            }
            Command::RemoveEndpoint { name, reply } => {
                self.commit(batch);
                let _ = reply.send(self.remove_endpoint(&name));
            }
            Command::Flush { reply } => {
                self.commit(batch);
                let _ = reply.send(self.flush_all());
            }
        }
    }

    /// Writes the batch as segments (summaries last), then acknowledges per durability mode.
    fn commit(&mut self, batch: &mut Vec<Enqueue>) {
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.reserve_seqs(batch.len() as u64) {
            tracing::error!(error = %e, "cannot reserve sequence numbers; enqueues fail");
            for enqueue in batch.drain(..) {
                enqueue
                    .completer
                    .complete(Err(EnqueueError::Backend(e.clone())));
            }
            return;
        }
        let packed = self.pack(batch);
        if let Err(e) = self.write_segments(&packed.sealed) {
            tracing::error!(error = %e, "segment write failed; enqueues fail");
            for c in packed.completers {
                c.complete(Err(EnqueueError::Backend(e.clone())));
            }
            return;
        }
        self.unflushed = true;
        Counters::add(
            &self.store.counters.enqueued,
            packed.completers.len() as u64,
        );
        self.update_quota_flag();
        let publications = self.publications(&packed.sealed, &packed.endpoints);
        self.acknowledge(publications, packed.completers);
        if self.current.written >= self.store.config.epoch_bytes {
            self.rotate();
            // Epochs may be consumed faster than the cleaner runs: check at every rotation.
            self.maybe_compact();
            self.delete_consumed_epochs();
        }
    }

    /// Makes sure that `count` more sequence numbers are reserved (durably) in the meta
    /// database before they are used.
    fn reserve_seqs(&mut self, count: u64) -> Result<(), BackendError> {
        let needed = self.next_seq + count;
        if needed > self.seq_reserved {
            let upto = needed + SEQ_RESERVATION;
            self.meta.reserve_seq(upto)?;
            self.seq_reserved = upto;
        }
        Ok(())
    }

    /// Assigns sequence numbers to the batch and packs its records into sealed segments.
    fn pack(&mut self, batch: &mut Vec<Enqueue>) -> Packed {
        let segment_bytes = self.store.config.segment_bytes;
        let mut packed = Packed {
            sealed: Vec::new(),
            endpoints: HashMap::new(),
            completers: Vec::with_capacity(batch.len()),
        };
        for e in batch.drain(..) {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.targets.clear();
            for d in &e.destinations {
                self.targets.push(RecordTarget {
                    endpoint: d.endpoint.num,
                    priority: d.priority,
                    expiry_ms: d.expiry_ms,
                });
            }
            for d in e.destinations {
                packed.endpoints.entry(d.endpoint.num).or_insert(d.endpoint);
            }
            self.builder
                .push(seq, e.enqueued_ms, &self.targets, &e.payload);
            packed.completers.push(e.completer);
            if self.builder.len() >= segment_bytes {
                packed.sealed.push(self.seal());
            }
        }
        if !self.builder.is_empty() {
            packed.sealed.push(self.seal());
        }
        packed
    }

    /// Publishes written segments and completes their tickets: through the syncer after its
    /// flush (`sync`), or at once (`periodic`).
    fn acknowledge(&self, publications: Vec<Publication>, completers: Vec<Completer>) {
        match &self.syncer {
            Some((jobs, _)) => {
                let job = SyncJob {
                    epoch: self.current.id,
                    db: Arc::clone(&self.current.db),
                    publications,
                    completers,
                    done: None,
                };
                if jobs.send(job).is_err() {
                    // The job comes back in the error and is dropped here: its completers fail
                    // the tickets with `Closed`.
                    tracing::error!("syncer thread is gone; enqueues fail");
                }
            }
            None => {
                syncer::publish(publications);
                for c in completers {
                    c.complete(Ok(()));
                }
            }
        }
    }

    /// Writes sealed segments to the current epoch, summaries last (not flushed); returns
    /// their data bytes.
    fn write_segments(&mut self, sealed: &[Sealed]) -> Result<u64, BackendError> {
        let writes: Vec<SegmentWrite<'_>> = sealed
            .iter()
            .map(|(segno, data, summary)| SegmentWrite {
                segno: *segno,
                data,
                summary: summary.encode(),
            })
            .collect();
        self.current.db.write(&writes)?;
        let bytes: u64 = sealed.iter().map(|(_, data, _)| data.len() as u64).sum();
        self.current.written += bytes;
        self.disk_estimate += bytes;
        Ok(bytes)
    }

    /// The token of the epoch being written (always the last one).
    fn current_token(&self) -> Arc<EpochToken> {
        Arc::clone(
            self.epochs
                .back()
                .expect("the current epoch is always in the list"),
        )
    }

    fn seal(&mut self) -> Sealed {
        let segno = self.current.next_segno;
        self.current.next_segno += 1;
        let (data, summary) = self.builder.take();
        (segno, data, summary)
    }

    fn publications(
        &self,
        sealed: &[Sealed],
        endpoints: &HashMap<u32, Arc<Endpoint>>,
    ) -> Vec<Publication> {
        let token = self.current_token();
        let mut by_endpoint: HashMap<u32, Vec<(u32, SegRef)>> = HashMap::new();
        for (segno, _, summary) in sealed {
            for g in &summary.groups {
                by_endpoint.entry(g.endpoint).or_default().push((
                    g.priority,
                    SegRef {
                        epoch: Arc::clone(&token),
                        segno: *segno,
                        first_seq: g.first_seq,
                        last_seq: g.last_seq,
                        enqueued_ms: summary.enqueued_ms,
                        max_expiry_ms: g.max_expiry_ms,
                        count: g.count,
                        bytes: g.bytes,
                    },
                ));
            }
        }
        by_endpoint
            .into_iter()
            .filter_map(|(num, segs)| endpoints.get(&num).map(|e| (Arc::clone(e), segs)))
            .collect()
    }

    /// Closes the current epoch and starts the next one.
    fn rotate(&mut self) {
        if let Err(e) = self.current.db.flush() {
            tracing::error!(error = %e, epoch = self.current.id, "flush before rotation failed");
            return;
        }
        let id = self.current.id + 1;
        let dir = self.layout.epoch_dir(id);
        let db = match EpochDb::open(&dir, self.store.config.epoch_cache_bytes) {
            Ok(db) => db,
            Err(e) => {
                tracing::error!(error = %e, path = %dir.display(), "cannot open a new epoch; still writing the old one");
                return;
            }
        };
        tracing::debug!(epoch = id, "epoch rotated");
        let db = self.store.epochs.insert(id, db);
        self.epochs.push_back(Arc::new(EpochToken { id }));
        let sealed = std::mem::replace(
            &mut self.current,
            Current {
                id,
                db,
                next_segno: 0,
                written: 0,
            },
        );
        self.unflushed = false;
        self.to_close.push(sealed.id);
        drop(sealed);
        self.close_sealed();
    }

    /// Closes sealed epochs: sled keeps in memory much of what was written to a database until
    /// it is closed, so this is what keeps memory flat while epochs are written. Readers open
    /// them again when they get to them (`EpochTable::with`).
    fn close_sealed(&mut self) {
        let epochs = &self.store.epochs;
        // Still held (a sync job in flight, a read): the next checkpoint tick tries again.
        self.to_close.retain(|&id| !epochs.close(id));
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if let Durability::Periodic { interval } = self.store.config.durability
            && self.unflushed
            && now >= self.last_flush + interval
        {
            if let Err(e) = self.current.db.flush() {
                tracing::error!(error = %e, "periodic flush failed");
            }
            self.unflushed = false;
            self.last_flush = now;
        }
        if now >= self.next_checkpoint {
            self.close_sealed();
            self.save_checkpoints();
            // Cheap (a reference count per epoch), and frees disk and memory soon after the
            // readers are done with an epoch.
            self.delete_consumed_epochs();
            self.next_checkpoint = now + self.store.config.checkpoint_interval;
        }
        if now >= self.next_cleanup {
            self.cleanup();
            self.next_cleanup = now + self.store.config.cleanup_interval;
        }
    }

    fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.store.endpoints().values().cloned().collect()
    }

    fn save_checkpoints(&mut self) {
        let mut list = Vec::new();
        for endpoint in self.endpoints() {
            let mut state = endpoint.lock();
            if state.checkpoints_dirty && !endpoint.is_removed() {
                state.checkpoints_dirty = false;
                list.extend(
                    state
                        .queues
                        .iter()
                        .map(|(p, q)| (endpoint.num, *p, q.checkpoint())),
                );
            }
        }
        if list.is_empty() {
            return;
        }
        if let Err(e) = self
            .meta
            .save_checkpoints(&list)
            .and_then(|()| self.meta.flush())
        {
            tracing::error!(error = %e, "saving checkpoints failed; acknowledged entries may be delivered again after a restart");
        }
    }

    /// Adds the endpoint unless it exists; returns it either way.
    fn add_endpoint(&mut self, name: String) -> Result<Arc<Endpoint>, StoreError> {
        if let Some(endpoint) = self.store.endpoint(&name) {
            return Ok(endpoint);
        }
        let num = self.next_endpoint;
        self.meta.add_endpoint(&name, num)?;
        self.next_endpoint += 1;
        let endpoint = Arc::new(Endpoint::new(name.clone(), num, Default::default()));
        self.store
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, Arc::clone(&endpoint));
        Ok(endpoint)
    }

    fn remove_endpoint(&mut self, name: &str) -> Result<bool, StoreError> {
        let removed = self
            .store
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        let Some(endpoint) = removed else {
            return Ok(false);
        };
        let dropped = endpoint.remove();
        tracing::info!(
            endpoint = name,
            count = dropped.count,
            bytes = dropped.bytes,
            "endpoint removed with its entries"
        );
        self.meta.remove_endpoint(name, endpoint.num)?;
        Ok(true)
    }

    /// Makes everything written durable and saves checkpoints.
    fn flush_all(&mut self) -> Result<(), StoreError> {
        self.current.db.flush()?;
        self.unflushed = false;
        self.last_flush = Instant::now();
        if let Some((jobs, _)) = &self.syncer {
            // A barrier: the syncer handles jobs in order, so once this one is done, every
            // earlier group is published and acknowledged.
            let (done, wait) = crossbeam_channel::bounded(1);
            let barrier = SyncJob {
                epoch: self.current.id,
                db: Arc::clone(&self.current.db),
                publications: Vec::new(),
                completers: Vec::new(),
                done: Some(done),
            };
            if jobs.send(barrier).is_ok() {
                let _ = wait.recv();
            }
        }
        self.save_checkpoints();
        self.meta.flush()?;
        Ok(())
    }

    fn shutdown(mut self) {
        if let Err(e) = self.flush_all() {
            tracing::error!(error = %e, "final flush failed");
        }
        if let Some((jobs, handle)) = self.syncer.take() {
            drop(jobs);
            if handle.join().is_err() {
                tracing::error!("syncer thread panicked");
            }
        }
        for endpoint in self.endpoints() {
            let mut state = endpoint.lock();
            state.closed = true;
            endpoint.wake(state);
        }
        self.store.epochs.clear();
    }
}
