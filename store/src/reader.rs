//! The per-endpoint reader: batches in priority-then-FIFO order, acknowledgements, waiting.
//!
//! Reads run on the caller's thread: a batch costs a few sled reads of 16-64 KiB segments,
//! usually from the page cache (tens of microseconds), and holds the endpoint's mutex that long.
//! Opening a sealed epoch (a sled log replay, milliseconds) never happens on the caller's
//! thread: the store's opener thread does it and wakes the reader (see `epoch::EpochTable`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::endpoint::Endpoint;
use crate::entry::{Entry, EntryId, NEVER};
use crate::error::{AckError, BackendError, StoreError};
use crate::queue::Dropped;
use crate::segment::{FormatError, Segment};
use crate::state::StoreState;
use crate::stats::Counters;

/// The last segment decoded, kept because consecutive batches usually read the same one.
#[derive(Debug)]
struct Cached {
    epoch: u64,
    segno: u64,
    segment: Arc<Segment>,
}

/// A segment that a read could not load, and how often in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FailedLoad {
    epoch: u64,
    segno: u64,
    attempts: u32,
}

/// Why a segment could not be loaded.
#[derive(Debug)]
enum LoadFailure {
    /// Not in its epoch's database: published before its flush, which failed.
    Missing,
    /// There, but not a segment: damaged.
    Damaged(FormatError),
    /// The database failed to read (an I/O error, or a write error sled keeps for good: a
    /// read may write, to complete a node split). Says nothing about what is on disk.
    Backend(BackendError),
}

impl fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("segment missing"),
            Self::Damaged(e) => write!(f, "segment damaged: {e}"),
            Self::Backend(e) => write!(f, "{e}"),
        }
    }
}

/// Loads of a missing or damaged segment before its entries are dropped: the first may have
/// failed through a bad database handle, the second is through a fresh one opened from disk.
/// A failing database (`LoadFailure::Backend`) never drops entries: the segment is read
/// again through fresh handles until it can be (a full disk passes, and losing acknowledged
/// messages is worse than waiting).
const LOAD_ATTEMPTS: u32 = 2;

/// Reads and acknowledges the entries of one endpoint. Obtained from
/// [`Store::reader`](crate::Store::reader); one per endpoint at a time.
///
/// The expected loop: wait for work ([`ready`](Reader::ready) or
/// [`wait`](Reader::wait)), [`read`](Reader::read) a batch, deliver it, and
/// [`ack`](Reader::ack) delivered entries in order. Several batches may be read before acking
/// (a delivery window); [`rewind`](Reader::rewind) hands the unacknowledged ones out again.
#[derive(Debug)]
pub struct Reader {
    store: Arc<StoreState>,
    endpoint: Arc<Endpoint>,
    cached: Option<Cached>,
    failed: Option<FailedLoad>,
}

/// Future returned by [`Reader::ready`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Ready<'a> {
    endpoint: &'a Arc<Endpoint>,
    store: &'a StoreState,
}

impl Future for Ready<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.endpoint.lock();
        if self.endpoint.is_ready(&state, &self.store.epochs) {
            Poll::Ready(())
        } else {
            state.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

impl Reader {
    pub(crate) fn attach(
        store: Arc<StoreState>,
        endpoint: Arc<Endpoint>,
    ) -> Result<Self, StoreError> {
        {
            let mut state = endpoint.lock();
            if endpoint.is_removed() {
                return Err(StoreError::EndpointRemoved(endpoint.name.clone()));
            }
            if state.reader_attached {
                return Err(StoreError::ReaderBusy(endpoint.name.clone()));
            }
            state.reader_attached = true;
        }
        Ok(Self {
            store,
            endpoint,
            cached: None,
            failed: None,
        })
    }

    /// The endpoint's id.
    pub fn endpoint(&self) -> &str {
        &self.endpoint.name
    }

    /// Completes when there is something to read, or the endpoint was removed, or the store
    /// closed (then [`read`](Reader::read) says so). Runtime-agnostic.
    pub fn ready(&self) -> Ready<'_> {
        Ready {
            endpoint: &self.endpoint,
            store: &self.store,
        }
    }

    /// Blocks until there is something to read (or removal or close), at most `timeout`;
    /// returns whether it is ready.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.endpoint.wait_ready(&self.store.epochs, timeout)
    }

    /// The next entries, at most `max_entries` and about `max_bytes` of payload (at least one
    /// entry if any is waiting), highest priority first and in enqueue order within a
    /// priority. Expired entries are skipped, never returned. Empty if nothing is waiting, and
    /// possibly also right after [`ready`](Reader::ready) when what is waiting had expired or
    /// sits in a sealed epoch that is not open at this moment: never blocks to open one (the
    /// store's opener thread does, and [`ready`](Reader::ready) completes once it is open).
    /// Wait again, then read.
    ///
    /// # Errors
    ///
    /// `EndpointRemoved`, `Closed`, or a storage failure.
    pub fn read(&mut self, max_entries: usize, max_bytes: usize) -> Result<Vec<Entry>, StoreError> {
        let now_ms = self.store.time.now_ms();
        let endpoint = Arc::clone(&self.endpoint);
        let mut state = endpoint.lock();
        if endpoint.is_removed() {
            return Err(StoreError::EndpointRemoved(endpoint.name.clone()));
        }
        if state.closed {
            return Err(StoreError::Closed);
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut expired = Dropped::default();
        let mut moved = false;
        'queues: for (&priority, q) in &mut state.queues {
            loop {
                if out.len() >= max_entries || (bytes >= max_bytes && !out.is_empty()) {
                    break 'queues;
                }
                let Some(seg) = q.unread_seg() else { break };
                let (epoch, segno, seg_last) = (seg.epoch.id, seg.segno, seg.last_seq);
                moved = true;
                let segment = match self.load(epoch, segno) {
                    Ok(Some(segment)) => {
                        self.failed = None;
                        segment
                    }
                    // The epoch is not open: the opener thread opens it and wakes this reader.
                    // Lower priorities wait too (strict priority order).
                    Ok(None) => break 'queues,
                    Err(reason) => {
                        let attempts = self.note_failed_load(epoch, segno);
                        if attempts < LOAD_ATTEMPTS || matches!(reason, LoadFailure::Backend(_)) {
                            if attempts == LOAD_ATTEMPTS {
                                tracing::error!(endpoint = %endpoint.name, epoch, segno, %reason, "a segment cannot be read; its queue waits, reading it again from disk until it can");
                            } else {
                                tracing::debug!(endpoint = %endpoint.name, epoch, segno, %reason, "segment unreadable through its open handle; reading it again from disk");
                            }
                            self.store.epochs.reopen(epoch, &endpoint);
                            break 'queues;
                        }
                        let seg_first = seg.first_seq;
                        if seg.epoch.was_synced(segno) {
                            tracing::error!(endpoint = %endpoint.name, epoch, segno, first_seq = seg_first, last_seq = seg_last, %reason, "a segment whose flush had succeeded is unreadable: acknowledged messages are lost (a storage fault); its entries are dropped");
                        } else {
                            tracing::error!(endpoint = %endpoint.name, epoch, segno, first_seq = seg_first, last_seq = seg_last, %reason, "segment unreadable; its entries are dropped (if its flush failed, their producers were not acknowledged)");
                        }
                        let lost = q.skip_unreadable(seg_last);
                        Counters::add(&self.store.counters.lost, lost.count);
                        continue;
                    }
                };
                let mut finished = true;
                for record in segment.records_after(q.cursor()) {
                    if record.seq > seg_last {
                        break;
                    }
                    let Some(target) = segment.target(record, endpoint.num, priority) else {
                        continue;
                    };
                    if out.len() >= max_entries || (bytes >= max_bytes && !out.is_empty()) {
                        finished = false;
                        break;
                    }
                    let payload = segment.payload(record);
                    let len = payload.len() as u64;
                    if target.expiry_ms <= now_ms {
                        expired += q.pass_expired(record.seq, seg_last, len);
                        continue;
                    }
                    q.pass_delivered(record.seq, seg_last, len);
                    bytes += payload.len();
                    out.push(Entry {
                        id: EntryId {
                            priority,
                            seq: record.seq,
                        },
                        payload,
                        enqueued_at_ms: record.enqueued_ms,
                        expires_at_ms: (target.expiry_ms != NEVER).then_some(target.expiry_ms),
                    });
                }
                if finished {
                    q.pass_segment(seg_last);
                }
            }
        }
        if moved {
            state.checkpoints_dirty = true;
        }
        drop(state);
        Counters::add(&self.store.counters.expired, expired.count);
        Ok(out)
    }

    /// Waits up to `timeout` for entries, then reads as [`read`](Reader::read) does.
    ///
    /// # Errors
    ///
    /// As [`read`](Reader::read).
    pub fn read_timeout(
        &mut self,
        max_entries: usize,
        max_bytes: usize,
        timeout: Duration,
    ) -> Result<Vec<Entry>, StoreError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let batch = self.read(max_entries, max_bytes)?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            // A batch can come back empty when everything waiting had expired: wait again.
            if !batch.is_empty() || left.is_zero() {
                return Ok(batch);
            }
            self.wait(left);
        }
    }

    /// Acknowledges a delivered entry **and every entry before it in the same priority
    /// queue**: they will not be handed out again. Acknowledging an entry twice, or one that
    /// was dropped meanwhile (expired while in flight), is a no-op. The checkpoint reaches the
    /// disk within `checkpoint_interval`; a crash before that redelivers (at-least-once).
    ///
    /// # Errors
    ///
    /// [`AckError::NotDelivered`] if this reader did not hand the entry out (since the last
    /// rewind).
    pub fn ack(&mut self, id: EntryId) -> Result<(), AckError> {
        let not_delivered = AckError::NotDelivered {
            priority: id.priority,
            seq: id.seq,
        };
        let mut state = self.endpoint.lock();
        if self.endpoint.is_removed() {
            return Ok(());
        }
        let q = state
            .queues
            .get_mut(&id.priority)
            .ok_or(not_delivered.clone())?;
        let expired = q.ack(id.seq).map_err(|_| not_delivered)?;
        state.checkpoints_dirty = true;
        drop(state);
        self.store.acks_since_save.fetch_add(1, Ordering::Relaxed);
        Counters::add(&self.store.counters.expired, expired.count);
        Ok(())
    }

    /// How far reading went in the queue of `priority` since the last rewind: every entry of
    /// that queue up to this sequence number was handed out, passed over because it expired,
    /// or acknowledged (0 when the endpoint has no such queue). A caller that keeps entries
    /// aside learns from it which of them the store will not hand out again.
    pub fn position(&self, priority: u32) -> u64 {
        self.endpoint
            .lock()
            .queues
            .get(&priority)
            .map_or(0, crate::queue::Queue::cursor)
    }

    /// Hands out again, from the oldest, every entry read but not acknowledged (e.g. after a
    /// failed delivery that must be retried in order).
    pub fn rewind(&mut self) {
        let mut state = self.endpoint.lock();
        for q in state.queues.values_mut() {
            q.rewind();
        }
    }

    /// Counts a failed load of segment `segno` of `epoch`; returns the failures in a row.
    fn note_failed_load(&mut self, epoch: u64, segno: u64) -> u32 {
        let attempts = match self.failed {
            Some(f) if f.epoch == epoch && f.segno == segno => f.attempts.saturating_add(1),
            _ => 1,
        };
        self.failed = Some(FailedLoad {
            epoch,
            segno,
            attempts,
        });
        attempts
    }

    /// The decoded segment, or `None` while its epoch cannot be opened.
    fn load(&mut self, epoch: u64, segno: u64) -> Result<Option<Arc<Segment>>, LoadFailure> {
        if let Some(c) = &self.cached
            && c.epoch == epoch
            && c.segno == segno
        {
            return Ok(Some(Arc::clone(&c.segment)));
        }
        let Some(data) = self
            .store
            .epochs
            .with(epoch, &self.endpoint, |db| db.read(segno))
        else {
            return Ok(None);
        };
        let data = data
            .map_err(LoadFailure::Backend)?
            .ok_or(LoadFailure::Missing)?;
        let segment = Arc::new(Segment::decode(data).map_err(LoadFailure::Damaged)?);
        self.cached = Some(Cached {
            epoch,
            segno,
            segment: Arc::clone(&segment),
        });
        Ok(Some(segment))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut state = self.endpoint.lock();
        state.reader_attached = false;
        state.waker = None;
        for q in state.queues.values_mut() {
            q.rewind();
        }
    }
}
