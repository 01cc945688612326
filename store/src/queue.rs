//! The state of one queue (endpoint, priority): which segments hold its entries, how far it is
//! read and acknowledged, and exact counts. Pure bookkeeping, no I/O.
//!
//! Memory is per *segment*, not per entry: a queue keeps one [`SegRef`] per segment holding
//! some of its entries, plus the entries read ahead of the checkpoint (the delivery window).
//!
//! Positions are store-wide sequence numbers:
//! - `checkpoint`: every entry with `seq <= checkpoint` is done (acknowledged, expired or
//!   dropped); this is what is persisted.
//! - `cursor`: every entry with `seq <= cursor` has been handed out or skipped by the reader.
//! - `passed`: the entries between the two, in order, so that an ack knows exactly what it
//!   settles (expired entries skipped by the reader are merged into runs).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::epoch::EpochToken;

/// The entries of one queue in one segment.
#[derive(Debug)]
pub(crate) struct SegRef {
    /// Keeps the epoch alive: an epoch is deleted once no `SegRef` points into it.
    pub epoch: Arc<EpochToken>,
    pub segno: u64,
    /// First and last sequence number of this queue's entries in the segment.
    pub first_seq: u64,
    pub last_seq: u64,
    pub enqueued_ms: u64,
    pub max_expiry_ms: u64,
    /// Entries of this queue in the segment not yet done, and their payload bytes.
    pub count: u32,
    pub bytes: u64,
    /// `count` and `bytes` also include entries done before the store was opened: the segment
    /// straddles its queue's checkpoint and its data could not be read at open to count only
    /// those after it (see `recovery::live_part`). Its entries are kept, not dropped.
    pub estimated: bool,
}

/// Entries that left a queue without being acknowledged (expired, evicted or removed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub count: u64,
    pub bytes: u64,
}

impl Dropped {
    fn add(&mut self, count: u64, bytes: u64) {
        self.count += count;
        self.bytes += bytes;
    }
}

impl std::ops::AddAssign for Dropped {
    fn add_assign(&mut self, other: Self) {
        self.add(other.count, other.bytes);
    }
}

/// An ack named an entry that this queue did not hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotDelivered;

/// An entry (or a run of expired entries of one segment) between checkpoint and cursor.
#[derive(Debug)]
struct Passed {
    /// The last sequence number of the run.
    seq: u64,
    /// `last_seq` of the segment it is in, to find that segment again.
    seg_last_seq: u64,
    count: u32,
    bytes: u64,
    delivered: bool,
    /// Entries of an unreadable segment (`skip_unreadable`), counted as lost when skipped:
    /// not counted again (as expired) when they settle.
    lost: bool,
}

/// One queue's bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    segs: VecDeque<SegRef>,
    checkpoint: u64,
    cursor: u64,
    passed: VecDeque<Passed>,
    count: u64,
    bytes: u64,
}

impl Queue {
    /// An empty queue whose entries up to `checkpoint` are done.
    pub fn with_checkpoint(checkpoint: u64) -> Self {
        Self {
            checkpoint,
            cursor: checkpoint,
            ..Self::default()
        }
    }

    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Entries not yet done, and their payload bytes.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Enqueue time of the oldest segment still holding an entry not done.
    pub fn oldest_enqueued_ms(&self) -> Option<u64> {
        self.segs.front().map(|s| s.enqueued_ms)
    }

    /// Appends a segment; its entries come after every entry already queued.
    pub fn push(&mut self, seg: SegRef) {
        debug_assert!(self.segs.back().is_none_or(|b| b.last_seq < seg.first_seq));
        self.count += u64::from(seg.count);
        self.bytes += seg.bytes;
        self.segs.push_back(seg);
    }

    /// The first segment with entries after the cursor.
    pub fn unread_seg(&self) -> Option<&SegRef> {
        let i = self.segs.partition_point(|s| s.last_seq <= self.cursor);
        self.segs.get(i)
    }

    /// The reader handed out entry `seq` of the segment ending at `seg_last_seq`.
    pub fn pass_delivered(&mut self, seq: u64, seg_last_seq: u64, bytes: u64) {
        self.passed.push_back(Passed {
            seq,
            seg_last_seq,
            count: 1,
            bytes,
            delivered: true,
            lost: false,
        });
        self.cursor = seq;
    }

    /// The reader skipped entry `seq` because it expired; returns what that settled at once.
    pub fn pass_expired(&mut self, seq: u64, seg_last_seq: u64, bytes: u64) -> Dropped {
        self.cursor = seq;
        if self.passed.is_empty() {
            self.settle_entry(seg_last_seq, 1, bytes);
            self.checkpoint = seq;
            self.pop_done_segs();
            return Dropped { count: 1, bytes };
        }
        match self.passed.back_mut() {
            Some(run) if !run.delivered && !run.lost && run.seg_last_seq == seg_last_seq => {
                run.seq = seq;
                run.count += 1;
                run.bytes += bytes;
            }
            _ => self.passed.push_back(Passed {
                seq,
                seg_last_seq,
                count: 1,
                bytes,
                delivered: false,
                lost: false,
            }),
        }
        Dropped::default()
    }

    /// The reader went past the end of a segment's entries for this queue.
    pub fn pass_segment(&mut self, seg_last_seq: u64) {
        self.cursor = self.cursor.max(seg_last_seq);
        if self.passed.is_empty() {
            self.checkpoint = self.checkpoint.max(self.cursor);
            self.pop_done_segs();
        }
    }

    /// Acknowledges delivered entry `seq` and every entry before it; returns the expired
    /// entries this settled.
    ///
    /// # Errors
    ///
    /// [`NotDelivered`] if `seq` is after the checkpoint but was not handed out since the last
    /// rewind.
    pub fn ack(&mut self, seq: u64) -> Result<Dropped, NotDelivered> {
        if seq <= self.checkpoint {
            return Ok(Dropped::default());
        }
        let delivered =
            seq <= self.cursor && self.passed.iter().any(|p| p.delivered && p.seq == seq);
        if !delivered {
            return Err(NotDelivered);
        }
        let mut expired = Dropped::default();
        while let Some(p) = self.passed.front() {
            if p.seq > seq && p.delivered {
                break;
            }
            let p = self.passed.pop_front().expect("front exists");
            self.settle_entry(p.seg_last_seq, p.count, p.bytes);
            if !p.delivered && !p.lost {
                expired.add(u64::from(p.count), p.bytes);
            }
            self.checkpoint = p.seq;
        }
        if self.passed.is_empty() {
            self.checkpoint = self.cursor;
        }
        self.pop_done_segs();
        Ok(expired)
    }

    /// Forgets what was handed out but not acknowledged: it will be read again.
    pub fn rewind(&mut self) {
        self.cursor = self.checkpoint;
        self.passed.clear();
    }

    /// Drops every segment whose entries of this queue all expired by `now_ms`, oldest first,
    /// at most `budget` segments.
    pub fn expire(&mut self, now_ms: u64, budget: &mut usize) -> Dropped {
        let mut dropped = Dropped::default();
        while *budget > 0 {
            let Some(front) = self.segs.front() else {
                break;
            };
            if front.max_expiry_ms > now_ms {
                break;
            }
            *budget -= 1;
            dropped += self.drop_through(front.last_seq);
        }
        dropped
    }

    /// Drops the entries in epoch `epoch` and every older entry (with a lower sequence number:
    /// entries copied forward from older epochs may live in newer ones).
    pub fn evict_epoch(&mut self, epoch: u64) -> Dropped {
        let last = self.segs_in(epoch).map(|s| s.last_seq).max();
        last.map_or_else(Dropped::default, |seq| self.drop_through(seq))
    }

    /// This queue's segments in epoch `epoch`.
    pub fn segs_in(&self, epoch: u64) -> impl Iterator<Item = &SegRef> {
        self.segs.iter().filter(move |s| s.epoch.id == epoch)
    }

    /// Adds the payload bytes not yet done of each epoch this queue has entries in.
    pub fn add_live_bytes(&self, per_epoch: &mut HashMap<u64, u64>) {
        for s in &self.segs {
            *per_epoch.entry(s.epoch.id).or_default() += s.bytes;
        }
    }

    /// Points this queue's segments of epoch `from` at their copies (`moves`: old segment
    /// number -> new one) in epoch `to`. Sequence numbers, counts and the read position do not
    /// change: the copies hold the same records.
    pub fn relocate(&mut self, from: u64, moves: &HashMap<u64, u64>, to: &Arc<EpochToken>) {
        for s in self.segs.iter_mut().filter(|s| s.epoch.id == from) {
            if let Some(&segno) = moves.get(&s.segno) {
                s.epoch = Arc::clone(to);
                s.segno = segno;
            }
        }
    }

    /// Skips the entries of the unread segment ending at `seg_last_seq`, which cannot be read:
    /// damaged, or missing because it was published before its flush and the flush failed (its
    /// producers' tickets failed; they send again). Only that segment's entries after the
    /// cursor are dropped: entries handed out before it stay in flight, to be acknowledged or
    /// rewound like any other. Like expired entries, the skipped ones settle at once when
    /// nothing is in flight, else with the next acknowledgement after them. Returns what they
    /// were.
    pub fn skip_unreadable(&mut self, seg_last_seq: u64) -> Dropped {
        let Some(seg) = self.segs.iter().find(|s| s.last_seq == seg_last_seq) else {
            return Dropped::default();
        };
        // Entries of this segment already handed out stay counted where they are.
        let (in_flight, in_flight_bytes) = self
            .passed
            .iter()
            .filter(|p| p.seg_last_seq == seg_last_seq)
            .fold((0u32, 0u64), |(c, b), p| (c + p.count, b + p.bytes));
        let count = seg.count.saturating_sub(in_flight);
        let bytes = seg.bytes.saturating_sub(in_flight_bytes);
        self.cursor = self.cursor.max(seg_last_seq);
        if self.passed.is_empty() {
            self.settle_entry(seg_last_seq, count, bytes);
            self.checkpoint = self.checkpoint.max(seg_last_seq);
            self.pop_done_segs();
        } else if count > 0 {
            self.passed.push_back(Passed {
                seq: seg_last_seq,
                seg_last_seq,
                count,
                bytes,
                delivered: false,
                lost: true,
            });
        }
        Dropped {
            count: u64::from(count),
            bytes,
        }
    }

    /// Drops every entry (the endpoint is being removed).
    pub fn clear(&mut self) -> Dropped {
        let last = self.segs.back().map(|s| s.last_seq);
        last.map_or_else(Dropped::default, |seq| self.drop_through(seq))
    }

    /// Drops every entry with `seq <= through`; `through` is the end of a segment.
    fn drop_through(&mut self, through: u64) -> Dropped {
        let mut dropped = Dropped::default();
        while self.segs.front().is_some_and(|s| s.last_seq <= through) {
            let seg = self.segs.pop_front().expect("front exists");
            dropped.add(u64::from(seg.count), seg.bytes);
        }
        self.count -= dropped.count;
        self.bytes -= dropped.bytes;
        self.checkpoint = self.checkpoint.max(through);
        self.cursor = self.cursor.max(through);
        while self.passed.front().is_some_and(|p| p.seq <= through) {
            self.passed.pop_front();
        }
        dropped
    }

    fn settle_entry(&mut self, seg_last_seq: u64, count: u32, bytes: u64) {
        let i = self.segs.partition_point(|s| s.last_seq < seg_last_seq);
        let Some(seg) = self.segs.get_mut(i).filter(|s| s.last_seq == seg_last_seq) else {
            // The segment was dropped (expired or evicted) and its entries counted then.
            return;
        };
        seg.count -= count;
        seg.bytes -= bytes;
        self.count -= u64::from(count);
        self.bytes -= bytes;
    }

    fn pop_done_segs(&mut self) {
        while self
            .segs
            .front()
            .is_some_and(|s| s.last_seq <= self.checkpoint)
        {
            let seg = self.segs.pop_front().expect("front exists");
            debug_assert!(
                seg.count == 0 || seg.estimated,
                "a segment behind the checkpoint has no live entries"
            );
            self.count -= u64::from(seg.count);
            self.bytes -= seg.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(epoch: &Arc<EpochToken>, first: u64, last: u64, count: u32, expiry: u64) -> SegRef {
        SegRef {
            epoch: Arc::clone(epoch),
            segno: first,
            first_seq: first,
            last_seq: last,
            enqueued_ms: first * 10,
            max_expiry_ms: expiry,
            count,
            bytes: u64::from(count) * 100,
            estimated: false,
        }
    }

    #[test]
    fn an_unreadable_segment_drops_only_its_own_entries() {
        let epoch = Arc::new(EpochToken::new(1));
        let mut q = Queue::default();
        q.push(seg(&epoch, 1, 2, 2, u64::MAX));
        q.push(seg(&epoch, 3, 4, 2, u64::MAX));
        q.push(seg(&epoch, 5, 5, 1, u64::MAX));
        // Entries 1 and 2 are in flight when the segment after them turns out unreadable.
        q.pass_delivered(1, 2, 100);
        q.pass_delivered(2, 2, 100);
        q.pass_segment(2);
        let lost = q.skip_unreadable(4);
        assert_eq!(
            lost,
            Dropped {
                count: 2,
                bytes: 200
            }
        );
        assert_eq!(
            q.checkpoint(),
            0,
            "entries in flight are not settled by the skip"
        );
        assert_eq!(q.unread_seg().map(|s| s.first_seq), Some(5));
        // A rewind hands the delivered entries out again; the skip comes back too.
        q.rewind();
        assert_eq!(q.unread_seg().map(|s| s.first_seq), Some(1));
        q.pass_delivered(1, 2, 100);
        q.pass_delivered(2, 2, 100);
        q.pass_segment(2);
        assert_eq!(
            q.skip_unreadable(4),
            Dropped {
                count: 2,
                bytes: 200
            }
        );
        // Acknowledged, they settle, and so does the skipped run, not counted as expired.
        assert_eq!(q.ack(2), Ok(Dropped::default()));
        assert_eq!((q.checkpoint(), q.count(), q.bytes()), (4, 1, 100));
        // With nothing in flight a skip settles at once.
        assert_eq!(
            q.skip_unreadable(5),
            Dropped {
                count: 1,
                bytes: 100
            }
        );
        assert_eq!((q.checkpoint(), q.count()), (5, 0));
        assert_eq!(Arc::strong_count(&epoch), 1, "every segment released");
    }

    #[test]
    fn ack_settles_delivered_entries_and_releases_segments() {
        let epoch = Arc::new(EpochToken::new(1));
        let mut q = Queue::default();
        q.push(seg(&epoch, 1, 2, 2, u64::MAX));
        q.push(seg(&epoch, 5, 5, 1, u64::MAX));
        assert_eq!(
            (q.count(), q.bytes(), q.oldest_enqueued_ms()),
            (3, 300, Some(10))
        );

        q.pass_delivered(1, 2, 100);
        q.pass_delivered(2, 2, 100);
        q.pass_segment(2);
        assert_eq!(q.unread_seg().map(|s| s.first_seq), Some(5));
        assert_eq!(q.ack(1), Ok(Dropped::default()));
        assert_eq!((q.count(), q.checkpoint()), (2, 1));
        assert_eq!(Arc::strong_count(&epoch), 3);
        q.ack(2).expect("delivered");
        assert_eq!((q.count(), q.checkpoint()), (1, 2));
        assert_eq!(Arc::strong_count(&epoch), 2, "first segment released");
        assert!(q.unread_seg().is_some());
    }

    #[test]
    fn ack_of_an_entry_never_delivered_is_refused() {
        let epoch = Arc::new(EpochToken::new(1));
        let mut q = Queue::default();
        q.push(seg(&epoch, 1, 2, 2, u64::MAX));
        assert_eq!(q.ack(2), Err(NotDelivered));
        q.pass_delivered(1, 2, 100);
        assert_eq!(q.ack(2), Err(NotDelivered));
        q.rewind();
        assert_eq!(q.ack(1), Err(NotDelivered), "rewound");
    }

    #[test]
    fn expired_entries_are_settled_once_even_after_rewind() {
        let epoch = Arc::new(EpochToken::new(1));
        let mut q = Queue::default();
        q.push(seg(&epoch, 1, 3, 3, u64::MAX));
        q.pass_delivered(1, 3, 100);
        assert_eq!(
            q.pass_expired(2, 3, 100),
            Dropped::default(),
            "pending behind 1"
        );
        q.pass_delivered(3, 3, 100);
        q.rewind();
        q.pass_delivered(1, 3, 100);
        q.pass_expired(2, 3, 100);
        q.pass_delivered(3, 3, 100);
        let expired = q.ack(3).expect("delivered");
        assert_eq!(
            expired,
            Dropped {
                count: 1,
                bytes: 100
            }
        );
        assert_eq!((q.count(), q.bytes(), q.checkpoint()), (0, 0, 3));
        assert_eq!(Arc::strong_count(&epoch), 1);
    }

    #[test]
    fn expired_entry_with_nothing_pending_moves_the_checkpoint() {
        let epoch = Arc::new(EpochToken::new(1));
        let mut q = Queue::default();
        q.push(seg(&epoch, 1, 2, 2, u64::MAX));
        assert_eq!(
            q.pass_expired(1, 2, 100),
            Dropped {
                count: 1,
                bytes: 100
            }
        );
        assert_eq!((q.checkpoint(), q.count()), (1, 1));
    }

    #[test]
    fn cleaner_drops_expired_head_segments_within_budget() {
        let epoch = Arc::new(EpochToken::new(1));
        let mut q = Queue::default();
        q.push(seg(&epoch, 1, 1, 1, 50));
        q.push(seg(&epoch, 2, 2, 1, 60));
        q.push(seg(&epoch, 3, 3, 1, 500));
        q.pass_delivered(1, 1, 100);
        let mut budget = 1;
        assert_eq!(q.expire(100, &mut budget).count, 1);
        assert_eq!(budget, 0);
        let mut budget = 10;
        assert_eq!(q.expire(100, &mut budget).count, 1);
        assert_eq!((q.count(), q.checkpoint(), q.cursor()), (1, 2, 2));
        assert_eq!(
            q.ack(1),
            Ok(Dropped::default()),
            "ack after drop is a no-op"
        );
    }

    #[test]
    fn relocated_segments_keep_their_entries_and_release_the_old_epoch() {
        let old = Arc::new(EpochToken::new(1));
        let new = Arc::new(EpochToken::new(2));
        let mut q = Queue::default();
        q.push(seg(&old, 1, 2, 2, u64::MAX));
        q.push(seg(&new, 3, 3, 1, u64::MAX));
        q.pass_delivered(1, 2, 100);
        let mut live = HashMap::new();
        q.add_live_bytes(&mut live);
        assert_eq!(live, HashMap::from([(1, 200), (2, 100)]));
        q.relocate(1, &HashMap::from([(1, 7)]), &new);
        assert_eq!(Arc::strong_count(&old), 1, "old epoch released");
        assert_eq!(q.unread_seg().map(|s| (s.epoch.id, s.segno)), Some((2, 7)));
        q.ack(1).expect("delivered");
        assert_eq!(
            (q.count(), q.bytes()),
            (2, 200),
            "accounting follows the move"
        );
    }

    #[test]
    fn eviction_drops_only_the_oldest_epoch() {
        let old = Arc::new(EpochToken::new(1));
        let new = Arc::new(EpochToken::new(2));
        let mut q = Queue::default();
        q.push(seg(&old, 1, 2, 2, u64::MAX));
        q.push(seg(&old, 3, 3, 1, u64::MAX));
        q.push(seg(&new, 4, 4, 1, u64::MAX));
        assert_eq!(q.evict_epoch(1).count, 3);
        assert_eq!(Arc::strong_count(&old), 1);
        assert_eq!((q.count(), q.checkpoint()), (1, 3));
        assert_eq!(q.clear().count, 1);
        assert_eq!(q.count(), 0);
    }
}
