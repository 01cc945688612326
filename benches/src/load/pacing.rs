//! Fixed-rate pacing: when each message of each publisher is due.
//!
//! A total rate `R` msgs/s is shared by `P` publishers as one interleaved stream: message `seq`
//! of publisher `i` is the stream's message `g = seq * P + i`, due `g / R` seconds after the
//! start (rounded up to the nanosecond). Every publisher then sends at `R / P` msgs/s, the publishers staggered by `1 / R`.
//! Due times are computed from the start, never accumulated, so they do not drift.

use std::num::NonZeroU64;

/// The schedule of one publisher at a fixed total rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    total_per_s: NonZeroU64,
    publishers: u64,
    index: u64,
}

const NS_PER_S: u128 = 1_000_000_000;

impl Schedule {
    /// Publisher `index` of `publishers` (at least 1), the publishers together sending
    /// `total_per_s` msgs/s.
    #[must_use]
    pub fn new(total_per_s: NonZeroU64, publishers: u32, index: u32) -> Self {
        Self {
            total_per_s,
            publishers: u64::from(publishers.max(1)),
            index: u64::from(index),
        }
    }

    /// Nanoseconds after the start when message `seq` is due.
    #[must_use]
    pub fn due_ns(&self, seq: u64) -> u64 {
        let global = u128::from(seq) * u128::from(self.publishers) + u128::from(self.index);
        // Rounded up, so that `due_by(due_ns(seq))` counts `seq` and `due_by(due_ns(seq) - 1)`
        // does not.
        let ns = (global * NS_PER_S).div_ceil(u128::from(self.total_per_s.get()));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// How many of this publisher's messages are due `elapsed_ns` after the start.
    #[must_use]
    pub fn due_by(&self, elapsed_ns: u64) -> u64 {
        // The stream's messages g with g / R <= elapsed, i.e. g <= floor(elapsed * R / 1e9);
        // ours are those with g ≡ index (mod P).
        let last_global = u128::from(elapsed_ns) * u128::from(self.total_per_s.get()) / NS_PER_S;
        let index = u128::from(self.index);
        if last_global < index {
            return 0;
        }
        let count = (last_global - index) / u128::from(self.publishers) + 1;
        u64::try_from(count).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_s: u64) -> NonZeroU64 {
        NonZeroU64::new(per_s).expect("a test rate is not zero")
    }

    #[test]
    fn one_publisher_at_two_thousand_per_second_sends_every_500_us() {
        let schedule = Schedule::new(rate(2_000), 1, 0);
        assert_eq!(schedule.due_ns(0), 0);
        assert_eq!(schedule.due_ns(1), 500_000);
        assert_eq!(schedule.due_ns(2_000), 1_000_000_000);
    }

    #[test]
    fn four_publishers_share_the_rate_staggered() {
        let schedules: Vec<_> = (0..4).map(|i| Schedule::new(rate(20_000), 4, i)).collect();
        // The stream is one message every 50 us; each publisher every 200 us.
        let firsts: Vec<_> = schedules.iter().map(|s| s.due_ns(0)).collect();
        assert_eq!(firsts, [0, 50_000, 100_000, 150_000]);
        assert_eq!(schedules[1].due_ns(1), 250_000);
        // Over one second the four together send exactly the rate.
        let total: u64 = schedules.iter().map(|s| s.due_by(999_999_999)).sum();
        assert_eq!(total, 20_000);
    }

    #[test]
    fn due_times_do_not_drift_at_rates_that_do_not_divide_a_second() {
        let schedule = Schedule::new(rate(3), 1, 0);
        assert_eq!(schedule.due_ns(1), 333_333_334);
        assert_eq!(schedule.due_ns(3), 1_000_000_000);
        assert_eq!(schedule.due_ns(3_000_000), 1_000_000_000_000_000);
    }

    #[test]
    fn due_by_counts_exactly_the_messages_whose_due_time_has_passed() {
        for (total, publishers) in [(7, 3), (50_000, 4), (2_000, 1), (1, 2)] {
            for index in 0..publishers {
                let schedule = Schedule::new(rate(total), publishers, index);
                for seq in 0..50 {
                    let due = schedule.due_ns(seq);
                    assert_eq!(
                        schedule.due_by(due),
                        seq + 1,
                        "{total}/{publishers}/{index}"
                    );
                    if due > 0 {
                        assert_eq!(
                            schedule.due_by(due - 1),
                            seq,
                            "{total}/{publishers}/{index}"
                        );
                    }
                }
            }
        }
    }
}
