//! The run's clock: nanoseconds since an epoch every client of the process shares, so a
//! subscriber can subtract a publisher's send time from its own receive time.

use std::time::{Duration, Instant};

/// A monotonic clock whose epoch is the moment the run started.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    #[must_use]
    pub fn start() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// A clock whose epoch was `elapsed` ago (now, if that is before the machine's monotonic
    /// clock began): another process's clock, continued.
    #[must_use]
    pub fn started_ago(elapsed: Duration) -> Self {
        let now = Instant::now();
        Self {
            epoch: now.checked_sub(elapsed).unwrap_or(now),
        }
    }

    /// The epoch.
    #[must_use]
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Nanoseconds from the epoch to now.
    #[must_use]
    pub fn now_ns(&self) -> u64 {
        self.ns_at(Instant::now())
    }

    /// Nanoseconds from the epoch to `instant` (0 before the epoch; saturates after ~584 years).
    #[must_use]
    pub fn ns_at(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` nanoseconds after the epoch.
    #[must_use]
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_and_nanoseconds_convert_both_ways() {
        let clock = Clock::start();
        let later = clock.instant_at(1_500_000);
        assert_eq!(clock.ns_at(later), 1_500_000);
        assert_eq!(clock.ns_at(clock.epoch()), 0);
        assert!(clock.now_ns() < 60_000_000_000);
    }

    #[test]
    fn a_continued_clock_counts_from_the_earlier_epoch() {
        let clock = Clock::started_ago(Duration::from_secs(5));
        let ns = clock.now_ns();
        assert!((5_000_000_000..6_000_000_000).contains(&ns), "{ns}");
    }
}
