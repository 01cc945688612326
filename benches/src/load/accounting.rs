//! Losses, duplicates and reorders of one stream: the messages of one sender as one receiver
//! saw them.
//!
//! - a **duplicate** is a sequence number received again;
//! - a **reorder** is a first receipt of a sequence number lower than one received before;
//! - a **loss** is a message the broker took (PUBACK at QoS 1, written at QoS 0) that the
//!   receiver never got. Messages still unacknowledged when the run stopped are not losses.

/// A set of sequence numbers below a bound fixed at creation: one bit each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSet {
    words: Vec<u64>,
    bound: u64,
    len: u64,
}

impl SeqSet {
    /// An empty set of sequence numbers in `0..bound`.
    #[must_use]
    pub fn new(bound: u64) -> Self {
        let words = usize::try_from(bound.div_ceil(64)).unwrap_or(usize::MAX);
        Self {
            words: vec![0; words],
            bound,
            len: 0,
        }
    }

    /// Adds `seq`: `Some(true)` if it was not in the set, `Some(false)` if it was, `None` if
    /// it is out of bounds.
    pub fn insert(&mut self, seq: u64) -> Option<bool> {
        if seq >= self.bound {
            return None;
        }
        let (word, bit) = Self::position(seq);
        let word = &mut self.words[word];
        let new = *word & bit == 0;
        *word |= bit;
        self.len += u64::from(new);
        Some(new)
    }

    /// Whether `seq` is in the set.
    #[must_use]
    pub fn contains(&self, seq: u64) -> bool {
        seq < self.bound && {
            let (word, bit) = Self::position(seq);
            self.words[word] & bit != 0
        }
    }

    /// How many sequence numbers the set holds.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many of `self`'s sequence numbers `other` lacks.
    #[must_use]
    pub fn count_missing_from(&self, other: &Self) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, word)| {
                let theirs = other.words.get(i).copied().unwrap_or(0);
                u64::from((word & !theirs).count_ones())
            })
            .sum()
    }

    /// The sequence numbers in the set as sorted, disjoint, non-adjacent half-open ranges
    /// `(start, end)`: a compact form to save between the phases of a run.
    #[must_use]
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut open: Option<u64> = None;
        for (i, &word) in self.words.iter().enumerate() {
            let base = i as u64 * 64;
            match word {
                0 => {
                    if let Some(start) = open.take() {
                        ranges.push((start, base));
                    }
                }
                u64::MAX => {
                    open.get_or_insert(base);
                }
                _ => {
                    for bit in 0..64 {
                        match (word >> bit & 1 == 1, open) {
                            (true, None) => open = Some(base + bit),
                            (false, Some(start)) => {
                                ranges.push((start, base + bit));
                                open = None;
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        if let Some(start) = open {
            ranges.push((start, self.bound));
        }
        ranges
    }

    /// The set of `0..bound` holding `ranges` (half-open; clipped to the bound).
    #[must_use]
    pub fn from_ranges(bound: u64, ranges: &[(u64, u64)]) -> Self {
        let mut set = Self::new(bound);
        for &(start, end) in ranges {
            for seq in start..end.min(bound) {
                set.insert(seq);
            }
        }
        set
    }

    fn position(seq: u64) -> (usize, u64) {
        // `seq < bound`, and `words` was allocated for `bound`: the index fits.
        let word = usize::try_from(seq / 64).unwrap_or(usize::MAX);
        (word, 1 << (seq % 64))
    }
}

/// What a receipt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// The first receipt of this sequence number, in order.
    First,
    /// The first receipt of this sequence number, after a higher one.
    Reordered,
    /// A sequence number received before.
    Duplicate,
    /// A sequence number the sender never sends (beyond its message count).
    OutOfRange,
}

/// One receiver's view of one sender's messages.
#[derive(Debug, Clone)]
pub struct StreamReceipts {
    seen: SeqSet,
    highest: Option<u64>,
    duplicates: u64,
    reordered: u64,
    out_of_range: u64,
}

impl StreamReceipts {
    /// No receipts yet, of a sender that sends `messages` messages (sequence numbers
    /// `0..messages`).
    #[must_use]
    pub fn new(messages: u64) -> Self {
        Self {
            seen: SeqSet::new(messages),
            highest: None,
            duplicates: 0,
            reordered: 0,
            out_of_range: 0,
        }
    }

    /// Records the receipt of `seq`.
    pub fn record(&mut self, seq: u64) -> Receipt {
        let receipt = match self.seen.insert(seq) {
            None => Receipt::OutOfRange,
            Some(false) => Receipt::Duplicate,
            Some(true) if self.highest.is_some_and(|highest| seq < highest) => Receipt::Reordered,
            Some(true) => Receipt::First,
        };
        match receipt {
            Receipt::OutOfRange => self.out_of_range += 1,
            Receipt::Duplicate => self.duplicates += 1,
            Receipt::Reordered => self.reordered += 1,
            Receipt::First => {}
        }
        if receipt != Receipt::OutOfRange {
            self.highest = self.highest.max(Some(seq));
        }
        receipt
    }

    /// The distinct sequence numbers received.
    #[must_use]
    pub fn seen(&self) -> &SeqSet {
        &self.seen
    }

    /// How many receipts repeated a sequence number.
    #[must_use]
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// How many first receipts came after a higher sequence number.
    #[must_use]
    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    /// How many receipts carried a sequence number the sender never sends.
    #[must_use]
    pub fn out_of_range(&self) -> u64 {
        self.out_of_range
    }

    /// How many of the messages the broker took (`taken`) this receiver never got.
    #[must_use]
    pub fn lost(&self, taken: &SeqSet) -> u64 {
        taken.count_missing_from(&self.seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(bound: u64, seqs: impl IntoIterator<Item = u64>) -> SeqSet {
        let mut set = SeqSet::new(bound);
        for seq in seqs {
            set.insert(seq);
        }
        set
    }

    #[test]
    fn an_in_order_stream_has_no_loss_duplicate_or_reorder() {
        let mut stream = StreamReceipts::new(200);
        for seq in 0..200 {
            assert_eq!(stream.record(seq), Receipt::First);
        }
        assert_eq!(stream.lost(&taken(200, 0..200)), 0);
        assert_eq!((stream.duplicates(), stream.reordered()), (0, 0));
        assert_eq!(stream.seen().len(), 200);
    }

    #[test]
    fn duplicates_are_counted_and_not_delivered_twice() {
        let mut stream = StreamReceipts::new(10);
        for seq in [0, 1, 1, 2, 0, 2] {
            stream.record(seq);
        }
        assert_eq!(stream.duplicates(), 3);
        assert_eq!(stream.seen().len(), 3);
        assert_eq!(stream.reordered(), 0);
    }

    #[test]
    fn a_late_first_receipt_is_a_reorder_and_its_successors_are_not() {
        let mut stream = StreamReceipts::new(10);
        let receipts: Vec<_> = [0, 2, 1, 3, 4]
            .into_iter()
            .map(|s| stream.record(s))
            .collect();
        assert_eq!(
            receipts,
            [
                Receipt::First,
                Receipt::First,
                Receipt::Reordered,
                Receipt::First,
                Receipt::First
            ]
        );
        assert_eq!(stream.reordered(), 1);
    }

    #[test]
    fn losses_count_only_messages_the_broker_took() {
        let mut stream = StreamReceipts::new(130);
        for seq in (0..130).filter(|s| s % 10 != 3) {
            stream.record(seq);
        }
        // 13 gaps (3, 13, ..., 123); the broker acknowledged 0..100 only, so 10 are lost.
        assert_eq!(stream.lost(&taken(130, 0..100)), 10);
        assert_eq!(stream.lost(&taken(130, 0..130)), 13);
        // A message received but never acknowledged (in flight at the stop) is no loss.
        assert_eq!(stream.lost(&taken(130, [0, 1, 2])), 0);
    }

    #[test]
    fn sequence_numbers_beyond_the_message_count_are_out_of_range() {
        let mut stream = StreamReceipts::new(5);
        assert_eq!(stream.record(5), Receipt::OutOfRange);
        assert_eq!(stream.record(4), Receipt::First);
        assert_eq!(stream.out_of_range(), 1);
        assert_eq!(stream.seen().len(), 1);
    }

    #[test]
    fn a_seq_set_round_trips_through_its_ranges() {
        assert_eq!(taken(1_000, 0..1_000).ranges(), [(0, 1_000)]);
        assert_eq!(taken(10, []).ranges(), []);
        let seqs: Vec<u64> = (0..300)
            .filter(|s| s % 7 != 0 && !(100..200).contains(s))
            .collect();
        let set = taken(300, seqs.iter().copied());
        let ranges = set.ranges();
        assert_eq!(ranges[0], (1, 7));
        assert!(ranges.windows(2).all(|w| w[0].1 < w[1].0));
        assert_eq!(SeqSet::from_ranges(300, &ranges), set);
        assert_eq!(taken(128, 60..128).ranges(), [(60, 128)]);
        assert_eq!(SeqSet::from_ranges(5, &[(3, 9)]).ranges(), [(3, 5)]);
    }

    #[test]
    fn a_seq_set_holds_bits_across_word_boundaries() {
        let mut set = SeqSet::new(129);
        assert_eq!(set.insert(63), Some(true));
        assert_eq!(set.insert(64), Some(true));
        assert_eq!(set.insert(128), Some(true));
        assert_eq!(set.insert(64), Some(false));
        assert_eq!(set.insert(129), None);
        assert!(set.contains(128) && !set.contains(127) && !set.contains(129));
        assert_eq!(set.len(), 3);
        assert!(!set.is_empty());
    }
}
