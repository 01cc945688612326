//! What one sender has in memory on its way upstream: its share of the `$upstream` queues,
//! waiting to be sent or in flight on its link, and the entries it left in the store.
//!
//! Each sender (an identity, with its own link, D8) has a window of [`WINDOW`] publications in
//! flight and holds about its share ([`SHARE`] messages, [`SHARE_BYTES`]) in memory: the
//! forwarder reads nothing more while a sender holds its share. Its messages leave highest
//! priority first, then (with live data first) live before backlog, then in the order they
//! were read: order is kept per sender, queue and priority.
//!
//! A failed send (no link, a connection lost, no PUBACK in time) **releases** everything the
//! sender holds: it goes back to the store (the [`super::ledger`] marks it deferred) and the
//! sender waits, holding nothing, while the others go on; what is read for it meanwhile is
//! deferred too. Once its link is up again, a rewind of the reader hands the deferred entries
//! out again, in order, minus those whose time to live ran out meanwhile (the store drops and
//! counts them). A deferred entry holds back every later entry of its queue and priority until
//! it is read again: order is kept.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::lanes::Lane;
use super::ledger::Key;

/// Publications of one sender in flight on its link (the link's MQTT in-flight limit).
pub const WINDOW: usize = 64;
/// Messages a sender holds in memory before the forwarder stops reading.
pub const SHARE: usize = 4 * WINDOW;
/// Payload bytes a sender holds in memory before the forwarder stops reading.
pub const SHARE_BYTES: usize = 2 * 1024 * 1024;

/// A message read for upstream, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its store entry.
    pub key: Key,
    /// Its topic upstream (`devices/{d}[/modules/{m}]/messages/events/{bag}`).
    pub topic: String,
    /// Its body.
    pub payload: Bytes,
}

/// Whether a sender takes a message read for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Into memory, to be sent.
    Hold,
    /// Left in the store, to be read again later.
    Defer,
}

/// One sender's messages on their way upstream.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Waiting to be sent, by priority then lane, each in the order read.
    pending: BTreeMap<(u32, Lane), VecDeque<Message>>,
    /// Sent, by attempt, in the order sent.
    in_flight: VecDeque<(u64, Message)>,
    /// Left in the store, in order.
    deferred: BTreeSet<Key>,
    /// Messages pending and in flight.
    held: usize,
    /// Their payload bytes.
    bytes: usize,
    /// The last send failed: nothing is held or sent until [`Outbox::retry`].
    waiting: bool,
}

impl Outbox {
    /// Whether this sender takes `key`, just read (new, or deferred before and read again).
    #[must_use]
    pub fn admit(&self, key: Key) -> Admission {
        let behind = self
            .first_deferred(key.lane, key.id.priority)
            .is_some_and(|first| first < key);
        if self.waiting || behind {
            Admission::Defer
        } else {
            Admission::Hold
        }
    }

    /// Keeps a message admitted with [`Admission::Hold`], after those of its queue and
    /// priority.
    pub fn hold(&mut self, message: Message) {
        self.held += 1;
        self.bytes += message.payload.len();
        self.pending
            .entry((message.key.id.priority, message.key.lane))
            .or_default()
            .push_back(message);
    }

    /// Notes an entry left in the store (admitted with [`Admission::Defer`]).
    pub fn defer(&mut self, key: Key) {
        self.deferred.insert(key);
    }

    /// A deferred entry is no longer in the store's hands for this sender (read again and
    /// held, or expired).
    pub fn undefer(&mut self, key: Key) {
        self.deferred.remove(&key);
    }

    /// Whether entries of `lane` wait in the store for this sender and it can take them (it
    /// is not waiting, and at most half its share is used): a rewind of that queue's reader
    /// brings them back.
    #[must_use]
    pub fn wants_rewind(&self, lane: Lane) -> bool {
        let from = Key {
            lane,
            id: store::EntryId {
                priority: 0,
                seq: 0,
            },
        };
        !self.waiting
            && self.held <= SHARE / 2
            && self.bytes <= SHARE_BYTES / 2
            && self
                .deferred
                .range(from..)
                .next()
                .is_some_and(|key| key.lane == lane)
    }

    /// Whether it holds its share: the forwarder reads nothing more until it sent some.
    #[must_use]
    pub fn is_over(&self) -> bool {
        self.held >= SHARE || self.bytes >= SHARE_BYTES
    }

    /// The next message to send: `None` while waiting, with a full window, or with nothing
    /// pending.
    pub fn next_to_send(&mut self) -> Option<Message> {
        if self.waiting || self.in_flight.len() >= WINDOW {
            return None;
        }
        let mut queue = self.pending.first_entry()?;
        let message = queue.get_mut().pop_front();
        if queue.get().is_empty() {
            queue.remove();
        }
        message
    }

    /// Whether [`Outbox::next_to_send`] would give a message.
    #[must_use]
    pub fn can_send(&self) -> bool {
        !self.waiting && self.in_flight.len() < WINDOW && !self.pending.is_empty()
    }

    /// `message` (taken from [`Outbox::next_to_send`]) was sent as `attempt`.
    pub fn sent(&mut self, attempt: u64, message: Message) {
        self.in_flight.push_back((attempt, message));
    }

    /// Whether `attempt` is in flight (not one given up since).
    #[must_use]
    pub fn is_in_flight(&self, attempt: u64) -> bool {
        self.in_flight.iter().any(|(a, _)| *a == attempt)
    }

    /// Upstream acknowledged `attempt` of `key`: `true` if the message was not done yet (now
    /// it is), `false` if it was, or is in flight again as another attempt. A late
    /// acknowledgement of an attempt given up spares the message a resend.
    pub fn acknowledged(&mut self, attempt: u64, key: Key) -> bool {
        if let Some(at) = self.in_flight.iter().position(|(a, _)| *a == attempt) {
            let (_, message) = self.in_flight.remove(at).expect("found");
            self.held -= 1;
            self.bytes -= message.payload.len();
            return true;
        }
        if self.in_flight.iter().any(|(_, message)| message.key == key) {
            return false;
        }
        self.deferred.remove(&key)
    }

    /// A send failed (`unsent`: the message the link could not take, if any): everything held
    /// goes back to the store and the sender waits. Gives the keys released, in order.
    pub fn release(&mut self, unsent: Option<Message>) -> Vec<Key> {
        let mut keys: Vec<Key> = self.in_flight.drain(..).map(|(_, m)| m.key).collect();
        keys.extend(unsent.map(|m| m.key));
        keys.extend(
            std::mem::take(&mut self.pending)
                .into_values()
                .flatten()
                .map(|m| m.key),
        );
        self.deferred.extend(keys.iter().copied());
        self.held = 0;
        self.bytes = 0;
        self.waiting = true;
        keys
    }

    /// Whether the sender waits for its link.
    #[must_use]
    pub fn is_waiting(&self) -> bool {
        self.waiting
    }

    /// Its link is up: it may take and send messages again.
    pub fn retry(&mut self) {
        self.waiting = false;
    }

    /// Publications in flight.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Payload bytes held.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing of this sender is held or deferred.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.held == 0 && self.deferred.is_empty()
    }

    fn first_deferred(&self, lane: Lane, priority: u32) -> Option<Key> {
        let at = |seq| Key {
            lane,
            id: store::EntryId { priority, seq },
        };
        self.deferred.range(at(0)..=at(u64::MAX)).next().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(lane: Lane, priority: u32, seq: u64) -> Key {
        Key {
            lane,
            id: store::EntryId { priority, seq },
        }
    }

    fn message(key: Key) -> Message {
        Message {
            key,
            topic: format!("devices/d/messages/events/seq={}", key.id.seq),
            payload: Bytes::from_static(b"x"),
        }
    }

    fn seqs(outbox: &mut Outbox) -> Vec<u64> {
        std::iter::from_fn(|| outbox.next_to_send().map(|m| m.key.id.seq)).collect()
    }

    #[test]
    fn higher_priority_leaves_first_then_live_before_backlog_then_in_order() {
        let mut outbox = Outbox::default();
        for k in [
            key(Lane::Backlog, 2, 1),
            key(Lane::Backlog, 2, 2),
            key(Lane::Live, 2, 3),
            key(Lane::Backlog, 1, 4),
            key(Lane::Live, 3, 5),
            key(Lane::Live, 2, 6),
        ] {
            assert_eq!(outbox.admit(k), Admission::Hold);
            outbox.hold(message(k));
        }
        assert_eq!(
            seqs(&mut outbox),
            [4, 3, 6, 1, 2, 5],
            "priority 1's backlog, priority 2 live then backlog, priority 3 live"
        );
    }

    #[test]
    fn a_window_in_flight_at_most_and_a_share_in_memory() {
        let mut outbox = Outbox::default();
        for seq in 0..SHARE as u64 {
            outbox.hold(message(key(Lane::Backlog, 0, seq)));
        }
        assert!(outbox.is_over(), "its share: the forwarder stops reading");
        for attempt in 0..WINDOW as u64 {
            let next = outbox.next_to_send().expect("room in the window");
            outbox.sent(attempt, next);
        }
        assert!(!outbox.can_send());
        assert_eq!(outbox.next_to_send(), None, "the window is full");
        assert!(outbox.acknowledged(0, key(Lane::Backlog, 0, 0)));
        assert!(!outbox.is_over());
        assert_eq!(
            outbox.next_to_send().map(|m| m.key.id.seq),
            Some(WINDOW as u64)
        );
    }

    #[test]
    fn a_failed_send_releases_everything_in_order_and_the_sender_waits() {
        let mut outbox = Outbox::default();
        for seq in 1..=5 {
            outbox.hold(message(key(Lane::Backlog, 0, seq)));
        }
        for attempt in 1..=3 {
            let next = outbox.next_to_send().unwrap();
            outbox.sent(attempt, next);
        }
        assert!(outbox.acknowledged(1, key(Lane::Backlog, 0, 1)));
        let unsent = outbox.next_to_send();
        let released = outbox.release(unsent);
        let released: Vec<u64> = released.iter().map(|k| k.id.seq).collect();
        assert_eq!(
            released,
            [2, 3, 4, 5],
            "in flight, the unsent one, then pending"
        );
        assert!(outbox.is_waiting());
        assert!(!outbox.is_in_flight(2), "attempt 2 was given up");
        assert_eq!(outbox.next_to_send(), None, "nothing held");
        assert_eq!(
            outbox.admit(key(Lane::Backlog, 1, 9)),
            Admission::Defer,
            "what is read for a waiting sender stays in the store"
        );
        assert!(!outbox.wants_rewind(Lane::Backlog), "not while waiting");
        outbox.retry();
        assert!(outbox.wants_rewind(Lane::Backlog));
        assert!(!outbox.wants_rewind(Lane::Live));
    }

    #[test]
    fn a_late_acknowledgement_of_a_released_message_spares_the_resend() {
        let mut outbox = Outbox::default();
        let k = key(Lane::Backlog, 0, 1);
        outbox.hold(message(k));
        let next = outbox.next_to_send().unwrap();
        outbox.sent(7, next);
        outbox.release(None);
        assert!(outbox.acknowledged(7, k), "done after all");
        assert!(!outbox.acknowledged(7, k), "and only once");
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_deferred_entry_holds_back_the_later_ones_of_its_queue_and_priority_only() {
        let mut outbox = Outbox::default();
        let first = key(Lane::Backlog, 0, 10);
        outbox.defer(first);
        outbox.defer(key(Lane::Backlog, 0, 11));
        assert_eq!(outbox.admit(key(Lane::Backlog, 0, 12)), Admission::Defer);
        assert_eq!(outbox.admit(key(Lane::Backlog, 1, 13)), Admission::Hold);
        assert_eq!(outbox.admit(key(Lane::Live, 0, 14)), Admission::Hold);
        assert_eq!(
            outbox.admit(key(Lane::Backlog, 0, 11)),
            Admission::Defer,
            "read again, but 10 is older"
        );
        assert_eq!(
            outbox.admit(first),
            Admission::Hold,
            "the oldest, read again"
        );
        outbox.undefer(first);
        outbox.hold(message(first));
        assert_eq!(outbox.admit(key(Lane::Backlog, 0, 11)), Admission::Hold);
    }
}
