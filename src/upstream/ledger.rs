//! The forwarder's account of the entries it read from the `$upstream` queues and has not
//! acknowledged to the store yet.
//!
//! Senders complete out of order (each identity has its own link and window, and a refused
//! one waits while the others flow), but the store acknowledges in order per queue and
//! priority: `Reader::ack(id)` settles `id` and every entry before it. So the ledger keeps one
//! mark per entry read, in sequence order per queue and priority:
//!
//! - **held**: in memory with its sender (waiting to be sent, or in flight);
//! - **settled**: upstream acknowledged it (or it was dropped as unreadable): never sent again,
//!   and acknowledged to the store once every entry before it is settled too;
//! - **deferred**: its sender could not take it (refused or backing off, its share in memory
//!   full), so only the mark is kept; the message stays in the store and is read again after
//!   a rewind of the reader.
//!
//! A rewind makes the store hand out again every entry after its checkpoint. The ledger skips
//! what it holds or settled, acknowledges to the store only entries handed out since the rewind
//! (the store refuses the others), and learns that a deferred entry the store passed over had
//! expired meanwhile.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use super::lanes::Lane;
use crate::identity::ClientIdentity;

/// An entry of one of the `$upstream` queues. Sorts by queue, priority, then sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The queue it was read from.
    pub lane: Lane,
    /// Its id in that queue.
    pub id: store::EntryId,
}

/// What the forwarder did with an entry it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// In memory with its sender.
    Held,
    /// Done: upstream acknowledged it, or it was dropped.
    Settled,
    /// Left in the store for this sender, to be read again.
    Deferred(Arc<ClientIdentity>),
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    mark: Mark,
    /// Handed out by the store since its last rewind (only those can be acknowledged to it).
    handed: bool,
}

/// The marks of one queue priority, in sequence order.
#[derive(Debug, Default)]
struct Queue {
    slots: VecDeque<Slot>,
    /// The highest sequence number handed out since the last rewind.
    cursor: u64,
}

impl Queue {
    fn position(&self, seq: u64) -> Result<usize, usize> {
        let at = self.slots.partition_point(|slot| slot.seq < seq);
        match self.slots.get(at) {
            Some(slot) if slot.seq == seq => Ok(at),
            _ => Err(at),
        }
    }
}

/// The marks of every entry read and not yet acknowledged to the store.
#[derive(Debug, Default)]
pub struct Ledger {
    queues: BTreeMap<(Lane, u32), Queue>,
    marks: usize,
}

impl Ledger {
    /// Marks kept in all (bounded by the forwarder, which stops reading new entries).
    #[must_use]
    pub fn marks(&self) -> usize {
        self.marks
    }

    /// The store handed out `key` (for the first time, or again after a rewind): its mark, or
    /// `None` when it is new. Deferred entries that the store passed over to get there expired
    /// meanwhile: they are settled and added to `gone` with their sender.
    pub fn handed(&mut self, key: Key, gone: &mut Vec<(Arc<ClientIdentity>, Key)>) -> Option<Mark> {
        let seq = key.id.seq;
        if seq > 0 {
            self.passed(key.lane, key.id.priority, seq - 1, gone);
        }
        let queue = self.queues.entry((key.lane, key.id.priority)).or_default();
        queue.cursor = queue.cursor.max(seq);
        let at = queue.position(seq).ok()?;
        let slot = &mut queue.slots[at];
        slot.handed = true;
        Some(slot.mark.clone())
    }

    /// The store's reader of `lane` went up to `position` in the queue of `priority` (see
    /// `store::Reader::position`): deferred entries up to there that it did not hand out again
    /// expired meanwhile; they are settled and added to `gone` with their sender.
    pub fn passed(
        &mut self,
        lane: Lane,
        priority: u32,
        position: u64,
        gone: &mut Vec<(Arc<ClientIdentity>, Key)>,
    ) {
        let Some(queue) = self.queues.get_mut(&(lane, priority)) else {
            return;
        };
        let from = queue.slots.partition_point(|slot| slot.seq <= queue.cursor);
        let to = queue.slots.partition_point(|slot| slot.seq <= position);
        for slot in queue.slots.range_mut(from..to.max(from)) {
            if slot.handed {
                continue;
            }
            if let Mark::Deferred(sender) = &slot.mark {
                let id = store::EntryId {
                    priority,
                    seq: slot.seq,
                };
                gone.push((Arc::clone(sender), Key { lane, id }));
                slot.mark = Mark::Settled;
            }
        }
        queue.cursor = queue.cursor.max(position);
    }

    /// The priorities of `lane` with marks.
    #[must_use]
    pub fn priorities(&self, lane: Lane) -> Vec<u32> {
        self.queues
            .range((lane, 0)..=(lane, u32::MAX))
            .filter(|(_, queue)| !queue.slots.is_empty())
            .map(|(&(_, priority), _)| priority)
            .collect()
    }

    /// Records a new entry (one [`Ledger::handed`] did not know) with what was done with it.
    pub fn record(&mut self, key: Key, mark: Mark) {
        let queue = self.queues.entry((key.lane, key.id.priority)).or_default();
        let slot = Slot {
            seq: key.id.seq,
            mark,
            handed: true,
        };
        match queue.position(key.id.seq) {
            Ok(at) => queue.slots[at] = slot,
            Err(at) => {
                queue.slots.insert(at, slot);
                self.marks += 1;
            }
        }
    }

    /// A deferred entry, read again, is now held by its sender.
    pub fn hold(&mut self, key: Key) {
        self.set(key, Mark::Held);
    }

    /// A held entry was released by its sender (a failed send): it is left in the store.
    pub fn defer(&mut self, key: Key, sender: Arc<ClientIdentity>) {
        self.set(key, Mark::Deferred(sender));
    }

    /// Upstream acknowledged `key` (or it was dropped): it is never sent again.
    pub fn settle(&mut self, key: Key) {
        self.set(key, Mark::Settled);
    }

    fn set(&mut self, key: Key, mark: Mark) {
        if let Some(queue) = self.queues.get_mut(&(key.lane, key.id.priority))
            && let Ok(at) = queue.position(key.id.seq)
        {
            queue.slots[at].mark = mark;
        }
    }

    /// The reader of `lane` was rewound: the store hands its entries out again from its
    /// checkpoint.
    pub fn rewind(&mut self, lane: Lane) {
        for ((_, _), queue) in self.queues.range_mut((lane, 0)..=(lane, u32::MAX)) {
            queue.cursor = 0;
            for slot in &mut queue.slots {
                slot.handed = false;
            }
        }
    }

    /// Whether the store handed out again, since the last rewind of `lane`, every entry the
    /// ledger knows in it.
    #[must_use]
    pub fn caught_up(&self, lane: Lane) -> bool {
        self.queues
            .range((lane, 0)..=(lane, u32::MAX))
            .all(|(_, queue)| {
                queue
                    .slots
                    .back()
                    .is_none_or(|slot| slot.seq <= queue.cursor)
            })
    }

    /// Forgets the settled entries at the front of each queue priority (every entry before
    /// them is settled too) and gives, per queue priority, the last of them that the store
    /// handed out since its last rewind: what to acknowledge to the store.
    pub fn take_settled(&mut self) -> Vec<Key> {
        let mut acks = Vec::new();
        for (&(lane, priority), queue) in &mut self.queues {
            let mut last = None;
            while let Some(front) = queue.slots.front()
                && front.mark == Mark::Settled
                && front.seq <= queue.cursor
            {
                if front.handed {
                    last = Some(front.seq);
                }
                queue.slots.pop_front();
                self.marks -= 1;
            }
            if let Some(seq) = last {
                acks.push(Key {
                    lane,
                    id: store::EntryId { priority, seq },
                });
            }
        }
        acks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(priority: u32, seq: u64) -> Key {
        Key {
            lane: Lane::Backlog,
            id: store::EntryId { priority, seq },
        }
    }

    fn live(seq: u64) -> Key {
        Key {
            lane: Lane::Live,
            id: store::EntryId { priority: 0, seq },
        }
    }

    fn sender(device: &str) -> Arc<ClientIdentity> {
        Arc::new(ClientIdentity {
            device_id: device.into(),
            module_id: None,
        })
    }

    fn read(ledger: &mut Ledger, key: Key) -> Option<Mark> {
        let mut gone = Vec::new();
        let mark = ledger.handed(key, &mut gone);
        assert!(gone.is_empty(), "{gone:?}");
        mark
    }

    #[test]
    fn a_settled_entry_waits_for_every_entry_before_it_to_settle() {
        let mut ledger = Ledger::default();
        for seq in 1..=3 {
            assert_eq!(read(&mut ledger, key(0, seq)), None, "new");
            ledger.record(key(0, seq), Mark::Held);
        }
        ledger.settle(key(0, 2));
        ledger.settle(key(0, 3));
        assert_eq!(
            ledger.take_settled(),
            [],
            "1 is not settled: nothing to acknowledge"
        );
        assert_eq!(ledger.marks(), 3);
        ledger.settle(key(0, 1));
        assert_eq!(
            ledger.take_settled(),
            [key(0, 3)],
            "one acknowledgement settles all three"
        );
        assert_eq!(ledger.marks(), 0);
    }

    #[test]
    fn priorities_and_lanes_are_acknowledged_apart() {
        let mut ledger = Ledger::default();
        let live = live(4);
        for k in [key(0, 1), key(1, 2), live] {
            read(&mut ledger, k);
            ledger.record(k, Mark::Held);
        }
        ledger.settle(key(1, 2));
        ledger.settle(live);
        let mut acks = ledger.take_settled();
        acks.sort();
        assert_eq!(acks, [live, key(1, 2)]);
    }

    #[test]
    fn after_a_rewind_only_entries_handed_out_again_are_acknowledged() {
        let mut ledger = Ledger::default();
        let a = sender("a");
        read(&mut ledger, key(0, 1));
        ledger.record(key(0, 1), Mark::Deferred(Arc::clone(&a)));
        for seq in 2..=4 {
            read(&mut ledger, key(0, seq));
            ledger.record(key(0, seq), Mark::Settled);
        }
        ledger.rewind(Lane::Backlog);
        assert!(!ledger.caught_up(Lane::Backlog));
        // The deferred entry is read again and held; the settled ones are skipped.
        assert_eq!(read(&mut ledger, key(0, 1)), Some(Mark::Deferred(a)));
        ledger.hold(key(0, 1));
        assert_eq!(read(&mut ledger, key(0, 2)), Some(Mark::Settled));
        ledger.settle(key(0, 1));
        assert_eq!(
            ledger.take_settled(),
            [key(0, 2)],
            "3 and 4 were not handed out again yet: the store would refuse them"
        );
        read(&mut ledger, key(0, 3));
        read(&mut ledger, key(0, 4));
        assert!(ledger.caught_up(Lane::Backlog));
        assert_eq!(ledger.take_settled(), [key(0, 4)]);
        assert_eq!(read(&mut ledger, key(0, 5)), None, "past the ledger: new");
    }

    #[test]
    fn a_deferred_entry_the_store_passed_over_after_a_rewind_expired() {
        let mut ledger = Ledger::default();
        let a = sender("a");
        for seq in 1..=2 {
            read(&mut ledger, key(0, seq));
            ledger.record(key(0, seq), Mark::Deferred(Arc::clone(&a)));
        }
        ledger.rewind(Lane::Backlog);
        let mut gone = Vec::new();
        assert_eq!(
            ledger.handed(key(0, 2), &mut gone),
            Some(Mark::Deferred(Arc::clone(&a)))
        );
        assert_eq!(gone, [(a, key(0, 1))], "1 expired in the store");
        ledger.settle(key(0, 2));
        assert_eq!(ledger.take_settled(), [key(0, 2)]);
        assert_eq!(ledger.marks(), 0);
    }

    #[test]
    fn deferred_entries_the_store_went_past_without_handing_them_out_expired() {
        let mut ledger = Ledger::default();
        let a = sender("a");
        read(&mut ledger, key(0, 1));
        ledger.record(key(0, 1), Mark::Held);
        ledger.defer(key(0, 1), Arc::clone(&a));
        read(&mut ledger, key(0, 2));
        ledger.record(key(0, 2), Mark::Deferred(Arc::clone(&a)));
        assert_eq!(ledger.priorities(Lane::Backlog), [0]);
        assert!(ledger.priorities(Lane::Live).is_empty());
        ledger.rewind(Lane::Backlog);
        // The store read on and handed out nothing: both had expired.
        let mut gone = Vec::new();
        ledger.passed(Lane::Backlog, 0, 2, &mut gone);
        assert_eq!(gone, [(Arc::clone(&a), key(0, 1)), (a, key(0, 2))]);
        assert!(ledger.caught_up(Lane::Backlog));
        assert_eq!(
            ledger.take_settled(),
            [],
            "forgotten, and nothing to acknowledge: the store settled them"
        );
        assert_eq!(ledger.marks(), 0);
    }

    #[test]
    fn a_rewind_of_one_lane_leaves_the_other_as_it_is() {
        let mut ledger = Ledger::default();
        let live = live(7);
        read(&mut ledger, live);
        ledger.record(live, Mark::Held);
        ledger.rewind(Lane::Backlog);
        ledger.settle(live);
        assert!(ledger.caught_up(Lane::Live));
        assert_eq!(ledger.take_settled(), [live]);
    }
}
