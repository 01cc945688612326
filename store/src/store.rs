//! The store handle: opening, enqueueing, endpoints, readers, statistics, closing.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::clock::StoreTime;
use crate::config::{QuotaPolicy, StoreConfig};
use crate::endpoint::EndpointHandle;
use crate::entry::Target;
use crate::epoch::{EpochTable, Layout};
use crate::error::{EnqueueError, OpenError, StoreError};
use crate::inbox;
use crate::reader::Reader;
use crate::recovery::{RecoveryReport, recover};
use crate::state::StoreState;
use crate::stats::{Counters, EndpointStats, Health, StoreStats};
use crate::ticket::{Ticket, ticket};
use crate::writer::{Command, Destination, Enqueue, Writer};

/// A durable store of per-endpoint message queues. See the [crate documentation](crate).
///
/// `Store` is `Send + Sync`: share it behind an `Arc`. Dropping it (or [`close`](Store::close))
/// flushes and stops the store's threads, blocking until they are done: from async code, drop
/// or close it in a blocking context (`spawn_blocking`).
#[derive(Debug)]
pub struct Store {
    state: Arc<StoreState>,
    inbox: Option<inbox::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    /// Opens sealed epochs for readers (see `EpochTable::run_opener`).
    opener: Option<JoinHandle<()>>,
    report: RecoveryReport,
}

impl Store {
    /// Opens (or creates) the store in `config.dir` and starts its writer thread.
    ///
    /// Databases that cannot be opened are moved aside under `quarantine/`, logged at ERROR and
    /// listed in [`recovery_report`](Store::recovery_report); the store then starts without them.
    ///
    /// # Errors
    ///
    /// [`OpenError`] if the configuration is invalid or the directories cannot be created.
    pub fn open(config: StoreConfig) -> Result<Self, OpenError> {
        config.validate()?;
        let layout = Layout::new(&config.dir);
        let epochs = EpochTable::new(layout.clone(), config.epoch_cache_bytes);
        let recovered = recover(
            &layout,
            config.epoch_cache_bytes,
            &epochs,
            config.clock.now_ms(),
        )?;
        let report = recovered.report.clone();
        let time = StoreTime::start(
            Arc::clone(&config.clock),
            recovered.last_time_ms,
            config.max_downtime,
        );
        let counters = Counters::default();
        Counters::add(&counters.quarantined, report.quarantined.len() as u64);
        let (inbox, commands) = inbox::bounded(config.inbox_capacity);
        let state = Arc::new(StoreState {
            config,
            endpoints: RwLock::default(),
            epochs,
            time,
            counters,
            over_quota: AtomicBool::new(false),
            health: AtomicU8::new(Health::Writable.to_u8()),
            acks_since_save: AtomicU64::new(0),
        });
        let writer = Writer::new(Arc::clone(&state), layout.clone(), commands, recovered)?;
        let opener = {
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name("store-opener".into())
                .spawn(move || state.epochs.run_opener())
                .map_err(|source| OpenError::Io {
                    path: layout.epoch_dir(0),
                    source,
                })?
        };
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(|source| OpenError::Io {
                path: state.config.dir.clone(),
                source,
            })?;
        tracing::info!(
            dir = %state.config.dir.display(),
            entries = report.entries,
            epochs = report.epochs,
            quarantined = report.quarantined.len(),
            "store opened"
        );
        Ok(Self {
            state,
            inbox: Some(inbox),
            writer: Some(handle),
            opener: Some(opener),
            report,
        })
    }

    /// What was found (and moved aside) when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    fn inbox(&self) -> Result<&inbox::Sender<Command>, StoreError> {
        self.inbox.as_ref().ok_or(StoreError::Closed)
    }

    fn request<T>(
        &self,
        make: impl FnOnce(crossbeam_channel::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.inbox()?
            .send(make(reply))
            .map_err(|_| StoreError::Closed)?;
        answer.recv().map_err(|_| StoreError::Closed)?
    }

    /// Adds an endpoint unless it exists, and returns its handle, to name it in the
    /// [`Target`]s of every enqueue. Blocks for a small synchronous write: call it from a
    /// blocking context (e.g. `spawn_blocking`) in async code.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] if the endpoint could not be recorded; `Closed` after close.
    pub fn add_endpoint(&self, id: &str) -> Result<EndpointHandle, StoreError> {
        let name = id.to_owned();
        self.request(|reply| Command::AddEndpoint { name, reply })
            .map(EndpointHandle::new)
    }

    /// The handle of endpoint `id` (added in this run or recovered at open), or `None` if
    /// there is no such endpoint. Does not block on the writer.
    pub fn endpoint(&self, id: &str) -> Option<EndpointHandle> {
        self.state.endpoint(id).map(EndpointHandle::new)
    }

    /// Removes an endpoint, drops its entries and lets their space be reclaimed; returns
    /// whether it existed. An attached reader gets [`StoreError::EndpointRemoved`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] if the removal could not be recorded; `Closed` after close.
    pub fn remove_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        let name = id.to_owned();
        self.request(|reply| Command::RemoveEndpoint { name, reply })
    }

    /// Ids of the endpoints.
    pub fn endpoints(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.state.endpoints().keys().cloned().collect();
        ids.sort_unstable();
        ids
    }

    /// Checks an enqueue (targets, quota) and turns it into the writer's command and the
    /// caller's ticket.
    fn prepare(
        &self,
        payload: Bytes,
        targets: &[Target<'_>],
    ) -> Result<(Enqueue, Ticket), EnqueueError> {
        if targets.is_empty() {
            return Err(EnqueueError::NoTargets);
        }
        self.check_health()?;
        self.check_quota()?;
        check_targets(targets)?;
        let now_ms = self.state.time.now_ms();
        let destinations = targets
            .iter()
            .map(|t| Destination {
                endpoint: Arc::clone(t.endpoint.endpoint()),
                priority: t.priority,
                expiry_ms: t.ttl.deadline(now_ms),
            })
            .collect();
        let (ticket, completer) = ticket();
        let enqueue = Enqueue {
            payload,
            enqueued_ms: now_ms,
            destinations,
            completer,
        };
        Ok((enqueue, ticket))
    }

    /// Refuses the enqueue at once while the store cannot write (full disk, storage failure).
    fn check_health(&self) -> Result<(), EnqueueError> {
        let refusal = match self.state.health() {
            Health::Writable => return Ok(()),
            Health::DiskFull => EnqueueError::DiskFull,
            Health::Failing => EnqueueError::Unavailable,
        };
        Counters::add(&self.state.counters.refused, 1);
        Err(refusal)
    }

    /// Whether the store can take new messages right now: [`Health::Writable`], or why not.
    /// Cheap (an atomic load): the hub may poll it for a metric and its reported properties.
    /// Entering and leaving a degraded state is logged once each by the store.
    pub fn health(&self) -> Health {
        self.state.health()
    }

    /// Refuses the enqueue at once when the quota is exhausted under the `reject` policy.
    fn check_quota(&self) -> Result<(), EnqueueError> {
        if self.state.over_quota.load(Ordering::Relaxed)
            && self.state.config.quota.policy == QuotaPolicy::Reject
        {
            Counters::add(&self.state.counters.rejected, 1);
            return Err(EnqueueError::QuotaExceeded);
        }
        Ok(())
    }

    /// Hands a message to the writer for every target; the returned [`Ticket`] completes when
    /// the message is durable (see [`Durability`](crate::Durability)). The message's bytes are
    /// stored once, whatever the number of targets. Targets must name distinct endpoints: the
    /// caller (the router) has already chosen one priority and TTL per endpoint. Blocks only
    /// while the writer's inbox is full.
    ///
    /// # Errors
    ///
    /// Refusals known at once: [`EnqueueError::DiskFull`] and [`EnqueueError::Unavailable`]
    /// while [`health`](Store::health) says the store cannot write,
    /// [`EnqueueError::QuotaExceeded`] (`reject` policy),
    /// `UnknownEndpoint` (a removed endpoint's handle), `DuplicateTarget`, `NoTargets`,
    /// `Closed`. Failures to store come through the ticket.
    pub fn enqueue(&self, payload: Bytes, targets: &[Target<'_>]) -> Result<Ticket, EnqueueError> {
        let (enqueue, ticket) = self.prepare(payload, targets)?;
        let inbox = self.inbox.as_ref().ok_or(EnqueueError::Closed)?;
        inbox
            .send(Command::Enqueue(enqueue))
            .map_err(|_| EnqueueError::Closed)?;
        Ok(ticket)
    }

    /// Like [`enqueue`](Store::enqueue) but never blocks: fails with [`EnqueueError::Busy`]
    /// when the writer's inbox is full (for async callers that prefer to back off).
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Store::enqueue), plus `Busy`.
    pub fn try_enqueue(
        &self,
        payload: Bytes,
        targets: &[Target<'_>],
    ) -> Result<Ticket, EnqueueError> {
        let (enqueue, ticket) = self.prepare(payload, targets)?;
        let inbox = self.inbox.as_ref().ok_or(EnqueueError::Closed)?;
        match inbox.try_send(Command::Enqueue(enqueue)) {
            Ok(()) => Ok(ticket),
            Err(inbox::TrySendError::Full(_)) => Err(EnqueueError::Busy),
            Err(inbox::TrySendError::Disconnected(_)) => Err(EnqueueError::Closed),
        }
    }

    /// Enqueues and blocks until the message is durable.
    ///
    /// # Errors
    ///
    /// As [`enqueue`](Store::enqueue), plus storage failures.
    pub fn enqueue_durable(
        &self,
        payload: Bytes,
        targets: &[Target<'_>],
    ) -> Result<(), EnqueueError> {
        self.enqueue(payload, targets)?.wait()
    }

    /// The reader of endpoint `id`. One reader per endpoint at a time; when it is dropped,
    /// entries it handed out but that were not acknowledged are handed out again.
    ///
    /// # Errors
    ///
    /// `UnknownEndpoint`, `ReaderBusy`, or `Closed`.
    pub fn reader(&self, id: &str) -> Result<Reader, StoreError> {
        if self.inbox.is_none() {
            return Err(StoreError::Closed);
        }
        let endpoint = self
            .state
            .endpoint(id)
            .ok_or_else(|| StoreError::UnknownEndpoint(id.to_owned()))?;
        Reader::attach(Arc::clone(&self.state), endpoint)
    }

    /// Backlog of endpoint `id`, or `None` if there is no such endpoint.
    pub fn endpoint_stats(&self, id: &str) -> Option<EndpointStats> {
        let endpoint = self.state.endpoint(id)?;
        Some(endpoint.stats(self.state.time.now_ms()))
    }

    /// Entries waiting in endpoint `id`, per priority (highest first, empty queues left out);
    /// `None` if there is no such endpoint.
    pub fn backlog_by_priority(&self, id: &str) -> Option<Vec<(u32, u64)>> {
        Some(self.state.endpoint(id)?.backlog_by_priority())
    }

    /// Totals for the store; `disk_bytes` is as of the last cleaner run.
    pub fn stats(&self) -> StoreStats {
        self.state.counters.snapshot(
            self.state.over_quota.load(Ordering::Relaxed),
            self.state.health(),
        )
    }

    /// Blocks until everything enqueued before is durable and acknowledged entries are
    /// checkpointed on disk.
    ///
    /// # Errors
    ///
    /// Storage failures, or `Closed`.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.request(|reply| Command::Flush { reply })
    }

    /// Flushes and stops the store. Readers still attached get [`StoreError::Closed`].
    ///
    /// # Errors
    ///
    /// If the writer thread panicked.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), StoreError> {
        self.inbox = None;
        let writer = match self.writer.take() {
            Some(handle) => handle.join().map_err(|_| StoreError::Closed),
            None => Ok(()),
        };
        self.state.epochs.shutdown();
        if let Some(opener) = self.opener.take()
            && opener.join().is_err()
        {
            tracing::error!("store opener thread panicked");
        }
        writer
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.stop().is_err() {
            tracing::error!("store writer thread panicked");
        }
    }
}

/// Refuses a removed endpoint's handle and two targets naming the same endpoint (the caller
/// merges duplicates: decision D6 is the router's). Lists are short (one target per endpoint a
/// message is routed to), so the pairwise check costs less than a set would.
fn check_targets(targets: &[Target<'_>]) -> Result<(), EnqueueError> {
    for (i, target) in targets.iter().enumerate() {
        let endpoint = target.endpoint.endpoint();
        if endpoint.is_removed() {
            return Err(EnqueueError::UnknownEndpoint(endpoint.name.clone()));
        }
        if targets[..i]
            .iter()
            .any(|earlier| Arc::ptr_eq(earlier.endpoint.endpoint(), endpoint))
        {
            return Err(EnqueueError::DuplicateTarget(endpoint.name.clone()));
        }
    }
    Ok(())
}
