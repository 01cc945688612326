//! An endpoint: its queues (one per priority) behind one mutex, and the means to wake its
//! reader. The endpoint's reader, the writer (publishing new segments) and the cleaner all go
//! through [`Endpoint::lock`]; each holds it briefly. Callers outside the store hold an
//! [`EndpointHandle`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use crate::epoch::{EpochTable, Waiter};
use crate::queue::{Dropped, Queue, SegRef};
use crate::stats::EndpointStats;

/// An endpoint of a [`Store`](crate::Store), to name it in a [`Target`](crate::Target).
///
/// Obtained from the store once, when routes are installed
/// ([`Store::add_endpoint`](crate::Store::add_endpoint) or
/// [`Store::endpoint`](crate::Store::endpoint)), and used for every enqueue: enqueueing does no
/// lookup by name. Cheap to clone (a reference count). A handle belongs to the store that gave
/// it; once its endpoint is removed, enqueueing to it fails with
/// [`EnqueueError::UnknownEndpoint`](crate::EnqueueError::UnknownEndpoint), also after the
/// endpoint is added again (which makes a new endpoint, with a new handle).
#[derive(Debug, Clone)]
pub struct EndpointHandle(Arc<Endpoint>);

impl EndpointHandle {
    pub(crate) fn new(endpoint: Arc<Endpoint>) -> Self {
        Self(endpoint)
    }

    /// The endpoint's id, e.g. `iothub` or `{device}/{module}/{input}`.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

/// Mutable state of an endpoint.
#[derive(Debug, Default)]
pub(crate) struct EndpointState {
    /// Queues by priority, lowest number (highest priority) first.
    pub queues: BTreeMap<u32, Queue>,
    /// Waker of an async reader waiting for work.
    pub waker: Option<Waker>,
    /// Threads blocked in [`Endpoint::wait_ready`]: a wake notifies the condition variable
    /// only when there is one (a notification costs a system call even when nobody waits,
    /// and the writer wakes an endpoint for every group commit).
    blocked_readers: usize,
    pub reader_attached: bool,
    pub closed: bool,
    /// Some checkpoint moved since the writer last saved them.
    pub checkpoints_dirty: bool,
}

/// One endpoint of the store.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub name: String,
    /// Number used in segments instead of the name; never reused.
    pub num: u32,
    /// Set once, with the state locked, when the endpoint is removed; read without the lock
    /// by enqueue (a check per target that does not contend with the reader).
    removed: AtomicBool,
    state: Mutex<EndpointState>,
    ready: Condvar,
}

impl Endpoint {
    pub fn new(name: String, num: u32, queues: BTreeMap<u32, Queue>) -> Self {
        Self {
            name,
            num,
            removed: AtomicBool::new(false),
            state: Mutex::new(EndpointState {
                queues,
                ..EndpointState::default()
            }),
            ready: Condvar::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, EndpointState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the endpoint was removed from the store.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Whether a waiting reader should return: work it can read now, or nothing more will
    /// ever come. Work in a closed epoch is not ready: the opener thread is asked to open it
    /// and wakes the reader when it is open.
    pub fn is_ready(self: &Arc<Self>, state: &EndpointState, epochs: &EpochTable) -> bool {
        if self.is_removed() || state.closed {
            return true;
        }
        // Like `Reader::read`: strict priority order, so the first queue with something
        // unread decides.
        state
            .queues
            .values()
            .find_map(Queue::unread_seg)
            .is_some_and(|seg| epochs.available(seg.epoch.id, self))
    }

    /// Marks the endpoint removed, drops its entries and wakes its reader; returns what was
    /// dropped.
    pub fn remove(&self) -> Dropped {
        let mut state = self.lock();
        // Set under the lock: whoever holds it sees a consistent "removed and empty".
        self.removed.store(true, Ordering::Release);
        let mut dropped = Dropped::default();
        for q in state.queues.values_mut() {
            dropped += q.clear();
        }
        state.queues.clear();
        self.wake(state);
        dropped
    }

    /// Adds newly committed segments and wakes the reader.
    pub fn publish(&self, segs: impl IntoIterator<Item = (u32, SegRef)>) {
        let mut state = self.lock();
        if self.is_removed() {
            return;
        }
        for (priority, seg) in segs {
            state.queues.entry(priority).or_default().push(seg);
        }
        self.wake(state);
    }

    /// Releases the lock and wakes whoever waits on this endpoint.
    pub fn wake(&self, mut state: MutexGuard<'_, EndpointState>) {
        let waker = state.waker.take();
        let blocked = state.blocked_readers > 0;
        drop(state);
        if blocked {
            self.ready.notify_all();
        }
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Waits until the endpoint is ready or `timeout` passes; returns whether it is ready.
    pub fn wait_ready(self: &Arc<Self>, epochs: &EpochTable, timeout: Duration) -> bool {
        let mut state = self.lock();
        state.blocked_readers += 1;
        let mut state = self
            .ready
            .wait_timeout_while(state, timeout, |s| !self.is_ready(s, epochs))
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        state.blocked_readers -= 1;
        self.is_ready(&state, epochs)
    }

    /// Entries waiting per priority, highest priority (lowest number) first.
    pub fn backlog_by_priority(&self) -> Vec<(u32, u64)> {
        self.lock()
            .queues
            .iter()
            .map(|(priority, q)| (*priority, q.count()))
            .filter(|(_, count)| *count > 0)
            .collect()
    }

    pub fn stats(&self, now_ms: u64) -> EndpointStats {
        let state = self.lock();
        let mut stats = EndpointStats::default();
        let mut oldest = None::<u64>;
        for q in state.queues.values() {
            stats.count += q.count();
            stats.bytes += q.bytes();
            if let Some(t) = q.oldest_enqueued_ms() {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        stats.oldest_age = oldest.map(|t| Duration::from_millis(now_ms.saturating_sub(t)));
        stats
    }
}

/// The opener thread wakes an endpoint's reader once the epoch it waits for is open.
impl Waiter for Endpoint {
    fn epoch_ready(&self) {
        self.wake(self.lock());
    }
}
