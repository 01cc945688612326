//! The writer thread: the single owner of the write side of the store.
//!
//! Each turn it blocks for the first command, drains up to `max_commit_messages` more without
//! blocking, packs the messages into segments and writes them, each segment's summary last
//! (group commit), and publishes them to the readers at once. In `sync` mode the syncer thread
//! then flushes (sled's flush and `fdatasync`) and acknowledges; in `periodic` mode
//! the writer acknowledges at once and flushes on a timer. Between turns it saves checkpoints,
//! runs the cleaner (`cleaner`: expiry, epoch deletion, quota), rotates epochs and compacts
//! the ones slow entries would pin (`compaction`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use crate::backend::{EpochDb, MetaDb, OpenFailure, SegmentWrite};
use crate::config::Durability;
use crate::endpoint::Endpoint;
use crate::epoch::{EpochToken, Layout};
use crate::error::{BackendError, EnqueueError, OpenError, StoreError};
use crate::inbox;
use crate::queue::SegRef;
use crate::recovery::Recovered;
use crate::segment::{RecordTarget, SegmentBuilder, Summary};
use crate::state::StoreState;
use crate::stats::Counters;
use crate::syncer::{self, FlushFailure, SyncJob, Syncer};
use crate::ticket::Completer;

mod cleaner;
mod compaction;
mod health;

/// Sequence numbers reserved in the meta database at a time, so that a crash can never make
/// the store reuse a number that a persisted checkpoint already covers.
const SEQ_RESERVATION: u64 = 1 << 20;

/// How often the store's time is saved when no checkpoint save carries it: a restart after a
/// crash loses at most this much of the time that passed (see `StoreTime`).
const TIME_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// How often, at most, the writer looks whether checkpoints are due, closes sealed epochs and
/// deletes consumed ones.
const CHECKPOINT_TICK: std::time::Duration = std::time::Duration::from_millis(20);

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

/// Segments of one endpoint, by priority, to publish.
type Publication = (Arc<Endpoint>, Vec<(u32, SegRef)>);

/// Adds written segments to their endpoints' queues and wakes the readers.
fn publish(publications: Vec<Publication>) {
    for (endpoint, segs) in publications {
        endpoint.publish(segs);
    }
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

/// Where the tickets of a written group complete.
#[derive(Debug)]
enum Acknowledgement {
    /// `sync`: after the flush that covers them, on the syncer thread.
    SyncerThread {
        jobs: Sender<SyncJob>,
        handle: JoinHandle<()>,
    },
    /// `periodic`: at once.
    AtOnce,
}

/// State owned by the writer thread.
#[derive(Debug)]
pub(crate) struct Writer {
    store: Arc<StoreState>,
    layout: Layout,
    inbox: inbox::Receiver<Command>,
    /// The meta database; `None` after a write error until the store recovers.
    meta: Option<MetaDb>,
    /// Set while the store cannot write (see `health`).
    degraded: Option<health::Degraded>,
    /// Epochs on disk, oldest first; the last is `current` when there is one.
    epochs: VecDeque<Arc<EpochToken>>,
    /// The epoch being written; `None` after writing failed until a new one could be opened.
    current: Option<Current>,
    /// Id of the next epoch to create (ids are never reused).
    next_epoch: u64,
    /// Flushes the syncer saw fail: each seals its epoch.
    failures: Receiver<FlushFailure>,
    next_seq: u64,
    seq_reserved: u64,
    next_endpoint: u32,
    acknowledgement: Acknowledgement,
    /// Sealed epochs still to be closed (see `close_sealed`).
    to_close: Vec<u64>,
    /// Live bytes of small sealed epochs, and since when they have not shrunk (compaction).
    stalled: HashMap<u64, (u64, Instant)>,
    builder: SegmentBuilder,
    targets: Vec<RecordTarget>,
    unflushed: bool,
    last_flush: Instant,
    next_checkpoint: Instant,
    /// When checkpoints were last saved.
    checkpoints_saved: Instant,
    next_cleanup: Instant,
    /// When the store's time was last saved in the meta database.
    time_saved: Instant,
    /// Disk usage at the last measurement plus what was written since.
    disk_estimate: u64,
}

impl Writer {
    /// Opens the first epoch of this run and reserves sequence numbers.
    pub fn new(
        store: Arc<StoreState>,
        layout: Layout,
        inbox: inbox::Receiver<Command>,
        recovered: Recovered,
    ) -> Result<Self, OpenError> {
        let Recovered {
            meta,
            endpoints,
            epochs,
            next_seq,
            next_endpoint,
            next_epoch,
            last_time_ms: _,
            report: _,
        } = recovered;
        *store
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner) = endpoints;
        let config = &store.config;
        let (failed, failures) = crossbeam_channel::bounded(64);
        let acknowledgement = match config.durability {
            Durability::Sync => {
                let (jobs, rx) = crossbeam_channel::bounded(1024);
                let syncer = Syncer::new(failed);
                let handle = std::thread::Builder::new()
                    .name("store-syncer".into())
                    .spawn(move || syncer::run(&rx, syncer))
                    .map_err(|source| OpenError::Io {
                        path: layout.epoch_dir(next_epoch),
                        source,
                    })?;
                Acknowledgement::SyncerThread { jobs, handle }
            }
            Durability::Periodic { .. } => Acknowledgement::AtOnce,
        };
        let now = Instant::now();
        let mut writer = Self {
            store,
            layout,
            inbox,
            meta: Some(meta),
            degraded: None,
            epochs,
            current: None,
            next_epoch,
            failures,
            next_seq,
            // Reserved below, before any use.
            seq_reserved: 0,
            next_endpoint,
            acknowledgement,
            to_close: Vec::new(),
            stalled: HashMap::new(),
            builder: SegmentBuilder::default(),
            targets: Vec::new(),
            unflushed: false,
            last_flush: now,
            next_checkpoint: now,
            checkpoints_saved: now,
            next_cleanup: now,
            time_saved: now,
            disk_estimate: 0,
        };
        if let Err(e) = writer.make_reserve() {
            tracing::warn!(error = %e, "cannot allocate the store's reserve file");
        }
        // On a full disk the store opens degraded (refusing enqueues, serving what it holds)
        // and recovers by itself once there is room; any other failure fails the open.
        if let Err(e) = writer.reserve_seqs(SEQ_RESERVATION)
            && !e.is_disk_full()
        {
            return Err(OpenError::Create {
                path: writer.layout.meta.clone(),
                reason: e.to_string(),
            });
        }
        if writer.degraded.is_none()
            && let Err(e) = writer.start_epoch()
        {
            let e = e.into_backend();
            if !e.is_disk_full() {
                return Err(OpenError::Create {
                    path: writer.layout.epoch_dir(next_epoch),
                    reason: e.to_string(),
                });
            }
            writer.degrade(&e);
        }
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
            // The inbox only, not the syncer's failures too: they are taken before every
            // commit and at every tick (`timers`).
            match self.inbox.recv_timeout(timeout) {
                Ok(command) => {
                    self.handle(command, &mut batch);
                    while batch.len() < self.store.config.max_commit_messages {
                        let Some(command) = self.inbox.try_recv() else {
                            break;
                        };
                        self.handle(command, &mut batch);
                    }
                    self.commit(&mut batch);
                }
                Err(inbox::RecvError::Timeout) => {}
                Err(inbox::RecvError::Disconnected) => break,
            }
            self.timers();
        }
        self.shutdown();
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_checkpoint.min(self.next_cleanup);
        if let Some(recovery) = self.recovery_deadline() {
            deadline = deadline.min(recovery);
        }
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
        // A flush that failed meanwhile seals its epoch before anything more goes into it.
        self.take_failures();
        if self.current.is_none()
            && !self.is_degraded()
            && let Err(e) = self.start_epoch()
        {
            self.degrade(&e.into_backend());
        }
        let reserved = if self.is_degraded() {
            Err(self.unwritable())
        } else {
            self.reserve_seqs(batch.len() as u64)
        };
        if reserved.is_err() {
            // Sent before the store found it could not write; those sent later are refused
            // by `Store::enqueue` itself.
            let refusal = self.refusal();
            for enqueue in batch.drain(..) {
                enqueue.completer.complete(Err(refusal.clone()));
            }
            return;
        }
        let packed = self.pack(batch);
        if let Err(e) = self.write_segments(&packed.sealed) {
            tracing::debug!(error = %e, "segment write failed; enqueues fail");
            for c in packed.completers {
                c.complete(Err(EnqueueError::from_write(e.clone())));
            }
            if let Some(epoch) = self.current_id() {
                self.write_failed(epoch, &e);
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
        let segnos_below = packed.sealed.iter().map(|(segno, ..)| segno + 1).max();
        self.acknowledge(publications, packed.completers, segnos_below.unwrap_or(0));
        if self
            .current
            .as_ref()
            .is_some_and(|c| c.written >= self.store.config.epoch_bytes)
        {
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
            if let Err(e) = self.meta().and_then(|meta| meta.reserve_seq(upto)) {
                self.meta_failed(&e);
                return Err(e);
            }
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

    /// Publishes written segments to their endpoints at once (readers see them from now on:
    /// they are in the epoch's sled database, in memory), then completes their tickets:
    /// through the syncer after its flush (`sync`), or at once (`periodic`).
    ///
    /// Delivering before the fsync is what at-least-once allows: a crash before it only makes
    /// the producers, whose tickets had not completed, send again. A reader may acknowledge
    /// such an entry and its checkpoint be saved before the entry is durable; recovery then
    /// continues sequence numbers above that checkpoint (`recovery::Known`), so no new entry
    /// can fall under it.
    fn acknowledge(
        &self,
        publications: Vec<Publication>,
        completers: Vec<Completer>,
        segnos_below: u64,
    ) {
        publish(publications);
        match &self.acknowledgement {
            Acknowledgement::AtOnce => {
                for c in completers {
                    c.complete(Ok(()));
                }
            }
            Acknowledgement::SyncerThread { jobs, .. } => {
                let current = self
                    .current
                    .as_ref()
                    .expect("acknowledged segments were just written to the current epoch");
                let job = SyncJob {
                    epoch: current.id,
                    db: Some(Arc::clone(&current.db)),
                    hold: Some(self.current_token()),
                    segnos_below,
                    completers,
                    done: None,
                };
                if jobs.send(job).is_err() {
                    // The job comes back in the error and is dropped here: its completers fail
                    // the tickets with `Closed`.
                    tracing::error!("syncer thread is gone; enqueues fail");
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
        let current = self.current.as_mut().ok_or_else(not_writable)?;
        current.db.write(&writes)?;
        let bytes: u64 = sealed.iter().map(|(_, data, _)| data.len() as u64).sum();
        current.written += bytes;
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
        let current = self
            .current
            .as_mut()
            .expect("segments are packed only with a current epoch");
        let segno = current.next_segno;
        current.next_segno += 1;
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
                        estimated: false,
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
        if let Some(current) = &self.current
            && let Err(e) = current.db.flush()
        {
            let epoch = current.id;
            self.write_failed(epoch, &e);
            return;
        }
        self.seal_current();
        if !self.is_degraded()
            && let Err(e) = self.start_epoch()
        {
            self.degrade(&e.into_backend());
        }
    }

    /// The id of the epoch being written, if any.
    fn current_id(&self) -> Option<u64> {
        self.current.as_ref().map(|c| c.id)
    }

    /// Opens epoch `id` to write it.
    fn open_epoch(&self, id: u64) -> Result<EpochDb, OpenFailure> {
        #[cfg_attr(not(test), expect(unused_mut, reason = "faults are injected in tests"))]
        let mut db = EpochDb::open(
            &self.layout.epoch_dir(id),
            self.store.config.epoch_cache_bytes,
        )?;
        #[cfg(test)]
        db.inject(self.store.config.faults.clone());
        Ok(db)
    }

    /// Creates the next epoch and makes it the current one (there must be none).
    fn start_epoch(&mut self) -> Result<(), OpenFailure> {
        debug_assert!(self.current.is_none(), "one epoch is written at a time");
        let id = self.next_epoch;
        let db = match self.open_epoch(id) {
            Ok(db) => db,
            Err(e) => {
                // Nothing is in it: leave no half-created directory behind.
                let dir = self.layout.epoch_dir(id);
                if let Err(e) = std::fs::remove_dir_all(&dir)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(path = %dir.display(), error = %e, "cannot remove a half-created epoch");
                }
                return Err(e);
            }
        };
        self.next_epoch += 1;
        tracing::debug!(epoch = id, "epoch started");
        let db = self.store.epochs.insert(id, db);
        self.epochs.push_back(Arc::new(EpochToken::new(id)));
        self.current = Some(Current {
            id,
            db,
            next_segno: 0,
            written: 0,
        });
        self.unflushed = false;
        Ok(())
    }

    /// Stops writing the current epoch; it stays readable and is closed once idle.
    fn seal_current(&mut self) {
        if let Some(sealed) = self.current.take() {
            self.to_close.push(sealed.id);
            drop(sealed);
            self.close_sealed();
        }
    }

    /// Takes the flush failures the syncer reported.
    fn take_failures(&mut self) {
        while let Ok((epoch, error)) = self.failures.try_recv() {
            self.write_failed(epoch, &error);
        }
    }

    /// A write or flush of `epoch` failed. If it is the current epoch, it is sealed for
    /// writing and a new one is started: after a failed `fdatasync` the kernel may have
    /// dropped the failed pages (and report the next sync as a success), and sled remembers
    /// the first write error of a database for good, so nothing acknowledged may depend on
    /// that database again. What it holds that was acknowledged before stays readable.
    ///
    /// A full disk (or a failure to start the new epoch) makes the store degraded: it
    /// refuses enqueues and recovers by itself (see `health`).
    fn write_failed(&mut self, epoch: u64, error: &BackendError) {
        Counters::add(&self.store.counters.write_failures, 1);
        if self.current_id() != Some(epoch) {
            return;
        }
        self.seal_current();
        if error.is_disk_full() || self.is_degraded() {
            self.degrade(error);
            return;
        }
        tracing::error!(epoch, %error, "writing the current epoch failed; it is sealed and writing continues in a new one");
        if let Err(e) = self.start_epoch() {
            self.degrade(&e.into_backend());
        }
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
        self.take_failures();
        let now = Instant::now();
        self.maybe_recover(now);
        if let Durability::Periodic { interval } = self.store.config.durability
            && self.unflushed
            && now >= self.last_flush + interval
        {
            if let Some(current) = &self.current
                && let Err(e) = current.db.flush()
            {
                tracing::error!(error = %e, "periodic flush failed");
                let epoch = current.id;
                self.write_failed(epoch, &e);
            }
            self.unflushed = false;
            self.last_flush = now;
        }
        if now >= self.next_checkpoint {
            // A read of the epoch being written failed through its handle: it is read again
            // only through a fresh one, which needs this one closed. Seal it (writing goes on
            // in a new epoch) rather than wait for a write of its own to fail.
            if let Some(id) = self.current_id()
                && self.store.epochs.is_stale(id)
            {
                self.rotate();
            }
            self.close_sealed();
            let interval = self.store.config.checkpoint_interval;
            let acks = self.store.acks_since_save.load(Ordering::Relaxed);
            if now >= self.checkpoints_saved + interval || acks >= self.store.config.checkpoint_acks
            {
                self.save_checkpoints();
            }
            // Cheap (a reference count per epoch), and frees disk and memory soon after the
            // readers are done with an epoch (it saves the checkpoints that release one).
            self.delete_consumed_epochs();
            self.next_checkpoint = now + CHECKPOINT_TICK.min(interval);
        }
        if now >= self.time_saved + TIME_SAVE_INTERVAL {
            self.save_time();
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
        self.checkpoints_saved = Instant::now();
        self.store.acks_since_save.store(0, Ordering::Relaxed);
        if self.meta.is_none() {
            // Closed after a write error: they stay dirty, saved once it is reopened.
            return;
        }
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
        let now_ms = self.store.time.now_ms();
        let saved = self.meta().and_then(|meta| {
            meta.save_checkpoints(&list)?;
            meta.save_time(now_ms)?;
            meta.flush()
        });
        if saved.is_ok() {
            Counters::add(&self.store.counters.checkpoint_saves, 1);
        }
        if let Err(e) = saved {
            // Saved again once the meta database is reopened (a crash before that delivers
            // those entries again: at-least-once).
            for endpoint in self.endpoints() {
                endpoint.lock().checkpoints_dirty = true;
            }
            self.meta_failed(&e);
        }
    }

    /// Saves the store's time (see `StoreTime`): a restart starts from it at the earliest.
    fn save_time(&mut self) {
        self.time_saved = Instant::now();
        if self.meta.is_none() {
            return;
        }
        let now_ms = self.store.time.now_ms();
        if let Err(e) = self
            .meta()
            .and_then(|meta| meta.save_time(now_ms).and_then(|()| meta.flush()))
        {
            self.meta_failed(&e);
        }
    }

    /// Adds the endpoint unless it exists; returns it either way.
    fn add_endpoint(&mut self, name: String) -> Result<Arc<Endpoint>, StoreError> {
        if let Some(endpoint) = self.store.endpoint(&name) {
            return Ok(endpoint);
        }
        let num = self.next_endpoint;
        // Used up even if recording fails: the record may have reached the disk anyway, and
        // two names must never share a number.
        self.next_endpoint += 1;
        if let Err(e) = self.meta().and_then(|meta| meta.add_endpoint(&name, num)) {
            self.meta_failed(&e);
            return Err(e.into());
        }
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
        if let Err(e) = self
            .meta()
            .and_then(|meta| meta.remove_endpoint(name, endpoint.num))
        {
            self.meta_failed(&e);
            return Err(e.into());
        }
        Ok(true)
    }

    /// Makes everything written durable and saves checkpoints.
    fn flush_all(&mut self) -> Result<(), StoreError> {
        self.take_failures();
        if let Some(current) = &self.current
            && let Err(e) = current.db.flush()
        {
            let epoch = current.id;
            self.write_failed(epoch, &e);
            return Err(e.into());
        }
        self.unflushed = false;
        self.last_flush = Instant::now();
        if let Acknowledgement::SyncerThread { jobs, .. } = &self.acknowledgement {
            // A barrier: the syncer handles jobs in order, so once this one is done, every
            // earlier group is synced and acknowledged.
            let (done, wait) = crossbeam_channel::bounded(1);
            let barrier = SyncJob {
                epoch: self.current_id().unwrap_or(self.next_epoch),
                db: None,
                hold: None,
                segnos_below: 0,
                completers: Vec::new(),
                done: Some(done),
            };
            if jobs.send(barrier).is_ok() {
                let _ = wait.recv();
            }
        }
        self.save_checkpoints();
        let now_ms = self.store.time.now_ms();
        if let Err(e) = self
            .meta()
            .and_then(|meta| meta.save_time(now_ms).and_then(|()| meta.flush()))
        {
            self.meta_failed(&e);
            return Err(e.into());
        }
        Ok(())
    }

    fn shutdown(mut self) {
        if let Err(e) = self.flush_all() {
            tracing::error!(error = %e, "final flush failed");
        }
        if let Acknowledgement::SyncerThread { jobs, handle } =
            std::mem::replace(&mut self.acknowledgement, Acknowledgement::AtOnce)
        {
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

/// The error of a write attempted while no epoch is open for writing.
fn not_writable() -> BackendError {
    BackendError::from(std::io::Error::other("no epoch is open for writing"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::CHECKPOINT_TICK;
    use crate::backend::faults::Faults;
    use crate::{Durability, EnqueueError, Store, StoreConfig, Target, Ttl};

    fn payloads(entries: &[crate::Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
            .collect()
    }

    fn faulty(dir: &std::path::Path, faults: &Arc<Faults>) -> StoreConfig {
        let mut config = StoreConfig::new(dir);
        config.faults = Some(Arc::clone(faults));
        config
    }

    /// A store whose epochs fail as the returned faults say, with one endpoint `e`.
    fn faulty_store(dir: &std::path::Path) -> (Store, Arc<Faults>) {
        let faults = Arc::new(Faults::default());
        let store = Store::open(faulty(dir, &faults)).expect("open");
        store.add_endpoint("e").expect("add");
        (store, faults)
    }

    /// Enqueues `p` for endpoint `e` and waits until it is durable.
    fn put(store: &Store, p: &'static str) -> Result<(), EnqueueError> {
        let e = store.endpoint("e").expect("endpoint e");
        store.enqueue_durable(
            Bytes::from_static(p.as_bytes()),
            &[Target::new(&e, 0, Ttl::Never)],
        )
    }

    #[test]
    fn checkpoints_are_saved_after_enough_acknowledgements_or_once_the_interval_passed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = StoreConfig::new(dir.path());
        config.checkpoint_interval = Duration::from_secs(3600);
        config.checkpoint_acks = 3;
        let store = Store::open(config).expect("open");
        let e = store.add_endpoint("e").expect("add");
        for p in ["a", "b", "c"] {
            store
                .enqueue_durable(
                    Bytes::from_static(p.as_bytes()),
                    &[Target::new(&e, 0, Ttl::Never)],
                )
                .expect("enqueue");
        }
        let mut reader = store.reader("e").expect("reader");
        let mut entries = Vec::new();
        while entries.len() < 3 && reader.wait(Duration::from_secs(10)) {
            entries.extend(reader.read(10, usize::MAX).expect("read"));
        }
        let saves = |store: &Store| store.stats().checkpoint_saves;
        // The count once it moved past `before`, or `before` after 10 s.
        let saves_after = |store: &Store, before: u64| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while saves(store) == before && std::time::Instant::now() < deadline {
                std::thread::sleep(CHECKPOINT_TICK);
            }
            saves(store)
        };
        let before = saves(&store);
        reader.ack(entries[0].id).expect("ack");
        reader.ack(entries[1].id).expect("ack");
        std::thread::sleep(CHECKPOINT_TICK * 5);
        assert_eq!(
            saves(&store),
            before,
            "two acknowledgements wait for the interval"
        );
        reader.ack(entries[2].id).expect("ack");
        assert_eq!(
            saves_after(&store, before),
            before + 1,
            "the third one is saved at the next tick"
        );
        drop(reader);
        store.close().expect("close");

        let mut config = StoreConfig::new(dir.path());
        config.checkpoint_interval = Duration::from_millis(50);
        config.checkpoint_acks = u64::MAX;
        let store = Store::open(config).expect("reopen");
        let e = store.endpoint("e").expect("the endpoint is kept");
        store
            .enqueue_durable(Bytes::from_static(b"d"), &[Target::new(&e, 0, Ttl::Never)])
            .expect("enqueue");
        let mut reader = store.reader("e").expect("reader");
        let mut entries = Vec::new();
        while entries.is_empty() && reader.wait(Duration::from_secs(10)) {
            entries.extend(reader.read(10, usize::MAX).expect("read"));
        }
        assert_eq!(
            payloads(&entries),
            ["d"],
            "the first three were acknowledged"
        );
        let before = saves(&store);
        reader.ack(entries[0].id).expect("ack");
        assert_eq!(
            saves_after(&store, before),
            before + 1,
            "one acknowledgement is saved once the interval passed"
        );
    }

    #[test]
    fn a_read_that_fails_through_its_handle_is_read_again_from_disk_not_dropped() {
        // The entry is acknowledged (synced); then a read of it fails through the handle of
        // the epoch being written (as a read may on a full disk).
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, faults) = faulty_store(dir.path());
        put(&store, "a").expect("acknowledged");
        faults.fail_next_reads(1);
        let mut reader = store.reader("e").expect("reader");
        assert!(reader.wait(Duration::from_secs(10)));
        assert!(
            reader.read(10, usize::MAX).expect("read").is_empty(),
            "a failed read hands out nothing"
        );
        // No other message comes, no sync fails: the writer seals the epoch by itself, the
        // opener opens it afresh from disk, and the entry is read.
        let mut read = Vec::new();
        while read.is_empty() && reader.wait(Duration::from_secs(10)) {
            read.extend(reader.read(10, usize::MAX).expect("read"));
        }
        assert_eq!(payloads(&read), ["a"]);
        assert_eq!(store.stats().lost, 0, "nothing was dropped");
        put(&store, "b").expect("writing goes on in a new epoch");
    }

    #[test]
    fn after_a_failed_sync_the_epoch_is_sealed_and_writing_continues_in_a_new_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, faults) = faulty_store(dir.path());
        let put = |p: &'static str| put(&store, p);
        put("a").expect("before the failure");
        faults.fail_next_syncs(1);
        assert!(
            matches!(put("b"), Err(EnqueueError::Backend(_))),
            "the group whose fsync failed is not acknowledged"
        );
        put("c").expect("after the failure, in a new epoch");
        put("d").expect("after the failure, in a new epoch");
        assert_eq!(
            faults.writes_after_failed_flush(),
            0,
            "nothing is written to an epoch after its fsync failed"
        );
        assert_eq!(store.stats().write_failures, 1);
        let mut reader = store.reader("e").expect("reader");
        let mut served = Vec::new();
        while !served.ends_with(&["d".to_owned()]) && reader.wait(Duration::from_secs(10)) {
            served.extend(payloads(&reader.read(10, usize::MAX).expect("read")));
        }
        // Readers see a group before its fsync, so the refused message was served too: its
        // publisher sends it again (at-least-once, as after a crash before the fsync).
        assert_eq!(served, ["a", "b", "c", "d"]);
        drop(reader);
        store.close().expect("close");

        // Everything acknowledged is there after a restart; the refused message may be too
        // (at-least-once: its publisher sends it again).
        let store = Store::open(StoreConfig::new(dir.path())).expect("reopen");
        let mut reader = store.reader("e").expect("reader");
        let mut got = Vec::new();
        while got.len() < 4 && reader.wait(Duration::from_secs(10)) {
            let batch = reader.read(10, usize::MAX).expect("read");
            if batch.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
            got.extend(payloads(&batch));
            if let Some(last) = batch.last() {
                reader.ack(last.id).expect("ack");
            }
            if got.ends_with(&["d".to_owned()]) {
                break;
            }
        }
        got.retain(|p| p != "b");
        assert_eq!(got, ["a", "c", "d"]);
    }

    #[test]
    fn a_failed_periodic_flush_seals_the_epoch_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let faults = Arc::new(Faults::default());
        let config = faulty(dir.path(), &faults).with_durability(Durability::Periodic {
            interval: Duration::from_millis(5),
        });
        let store = Store::open(config).expect("open");
        let e = store.add_endpoint("e").expect("add");
        faults.fail_next_syncs(1);
        store
            .enqueue_durable(Bytes::from_static(b"x"), &[Target::new(&e, 0, Ttl::Never)])
            .expect("periodic: acknowledged before the flush");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.stats().write_failures == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the flush never failed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        for _ in 0..3 {
            store
                .enqueue_durable(Bytes::from_static(b"y"), &[Target::new(&e, 0, Ttl::Never)])
                .expect("enqueue");
        }
        store.flush().expect("flush of the new epoch");
        assert_eq!(faults.writes_after_failed_flush(), 0);
    }
}
