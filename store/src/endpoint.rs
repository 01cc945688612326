//! An endpoint: its queues (one per priority) behind one mutex, and the means to wake its
//! reader. The endpoint's reader, the writer (publishing new segments) and the cleaner all go
//! through [`Endpoint::lock`]; each holds it briefly.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

use crate::queue::{Queue, SegRef};
use crate::stats::EndpointStats;

/// Mutable state of an endpoint.
#[derive(Debug, Default)]
pub(crate) struct EndpointState {
    /// Queues by priority, lowest number (highest priority) first.
    pub queues: BTreeMap<u32, Queue>,
    /// Waker of an async reader waiting for work.
    pub waker: Option<Waker>,
    pub reader_attached: bool,
    pub removed: bool,
    pub closed: bool,
    /// Some checkpoint moved since the writer last saved them.
    pub checkpoints_dirty: bool,
}

impl EndpointState {
    pub fn has_unread(&self) -> bool {
        self.queues.values().any(Queue::has_unread)
    }

    /// Whether a waiting reader should return: work, or nothing more will ever come.
    pub fn ready(&self) -> bool {
        self.removed || self.closed || self.has_unread()
    }
}

/// One endpoint of the store.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub name: String,
    /// Number used in segments instead of the name; never reused.
    pub num: u32,
    state: Mutex<EndpointState>,
    ready: Condvar,
}

impl Endpoint {
    pub fn new(name: String, num: u32, queues: BTreeMap<u32, Queue>) -> Self {
        Self {
            name,
            num,
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

    /// Adds newly committed segments and wakes the reader.
    pub fn publish(&self, segs: impl IntoIterator<Item = (u32, SegRef)>) {
        let mut state = self.lock();
        if state.removed {
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
        drop(state);
        self.ready.notify_all();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Waits until the endpoint is ready or `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> MutexGuard<'_, EndpointState> {
        let state = self.lock();
        self.ready
            .wait_timeout_while(state, timeout, |s| !s.ready())
            .unwrap_or_else(PoisonError::into_inner)
            .0
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
