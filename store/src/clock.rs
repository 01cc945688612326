//! Time: the wall clock and a monotonic clock, injectable for tests, and the store's own
//! time built from them.
//!
//! Enqueue times and expiry deadlines are stored as milliseconds since the Unix epoch, so they
//! survive restarts. But the wall clock jumps (an NTP correction on a device without a
//! battery-backed clock, a clock set by hand): following it would expire the whole backlog at
//! once, or keep it for as long as the clock was set back. So the store keeps its own
//! [`StoreTime`]: the wall clock read **once, at open** (within bounds, see there), advanced by
//! the **monotonic** clock while the store runs.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A source of time: the wall clock, and a monotonic clock for durations.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch (the wall clock; it may jump).
    fn now_ms(&self) -> u64;

    /// Milliseconds since an arbitrary start, never going back and not affected by changes
    /// of the wall clock. The default counts from the first call in this process.
    fn monotonic_ms(&self) -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        let start = START.get_or_init(Instant::now);
        u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    wall: Arc<AtomicU64>,
    monotonic: Arc<AtomicU64>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ManualClock {
    /// A clock whose wall clock shows `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            wall: Arc::new(AtomicU64::new(now_ms)),
            monotonic: Arc::default(),
        }
    }

    /// Lets `by` pass: both the wall clock and the monotonic clock move forward.
    pub fn advance(&self, by: Duration) {
        let ms = millis(by);
        self.wall.fetch_add(ms, Ordering::SeqCst);
        self.monotonic.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the wall clock to `now_ms` (as when the system clock is set); no time passes.
    pub fn set(&self, now_ms: u64) {
        self.wall.store(now_ms, Ordering::SeqCst);
    }

    /// Sets the wall clock `by` ahead; no time passes.
    pub fn jump_forward(&self, by: Duration) {
        self.wall.fetch_add(millis(by), Ordering::SeqCst);
    }

    /// Sets the wall clock `by` back; no time passes.
    pub fn jump_back(&self, by: Duration) {
        let ms = millis(by);
        let _ = self
            .wall
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                Some(w.saturating_sub(ms))
            });
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.wall.load(Ordering::SeqCst)
    }

    fn monotonic_ms(&self) -> u64 {
        self.monotonic.load(Ordering::SeqCst)
    }
}

/// The store's time, in milliseconds since the Unix epoch: what enqueue stamps, expiry and
/// ages use.
///
/// Within a run it is the start value advanced by the monotonic clock, so a jump of the wall
/// clock changes no age and expires nothing. The start value comes from the wall clock at
/// open, bounded by the store's own past (`floor`: the latest store time saved by the previous
/// run, or the latest enqueue stamp found on disk):
///
/// - a wall clock **behind** the floor (set back, or a device that boots at 1970 until NTP
///   answers) is not believed: time continues from the floor. Ages never go negative, and
///   the downtime counts as zero (messages live at most that much longer than their TTL);
/// - a wall clock **more than `max_downtime` ahead** of the floor (set forward, or a long
///   genuine outage, which cannot be told apart) counts as `max_downtime` (default one
///   hour): a restart expires at most the entries with less than that left to live, never
///   the whole backlog at once.
#[derive(Debug)]
pub(crate) struct StoreTime {
    clock: Arc<dyn Clock>,
    start_ms: u64,
    monotonic_start: u64,
}

impl StoreTime {
    /// Starts the store's time from `clock`, bounded by `floor_ms` (0: no past) and
    /// `max_downtime`.
    pub fn start(clock: Arc<dyn Clock>, floor_ms: u64, max_downtime: Duration) -> Self {
        let wall = clock.now_ms();
        let start_ms = if floor_ms == 0 {
            wall
        } else {
            let ceiling = floor_ms.saturating_add(millis(max_downtime));
            if wall < floor_ms {
                tracing::warn!(
                    wall_ms = wall,
                    last_ms = floor_ms,
                    "the wall clock is behind the store's last time; continuing from that"
                );
            } else if wall > ceiling {
                tracing::warn!(
                    wall_ms = wall,
                    last_ms = floor_ms,
                    counted_ms = millis(max_downtime),
                    "the wall clock is far ahead of the store's last time; only part of the gap counts toward ages"
                );
            }
            wall.clamp(floor_ms, ceiling)
        };
        let monotonic_start = clock.monotonic_ms();
        Self {
            clock,
            start_ms,
            monotonic_start,
        }
    }

    /// The store's time now.
    pub fn now_ms(&self) -> u64 {
        let elapsed = self
            .clock
            .monotonic_ms()
            .saturating_sub(self.monotonic_start);
        self.start_ms.saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time() {
        let clock = ManualClock::new(1_000);
        let other = clock.clone();
        clock.advance(Duration::from_secs(2));
        assert_eq!(other.now_ms(), 3_000);
    }

    #[test]
    fn store_time_follows_the_monotonic_clock_not_the_wall() {
        let clock = ManualClock::new(1_000_000);
        let time = StoreTime::start(Arc::new(clock.clone()), 0, Duration::from_secs(3600));
        clock.jump_forward(Duration::from_secs(86_400));
        assert_eq!(time.now_ms(), 1_000_000);
        clock.jump_back(Duration::from_secs(2 * 86_400));
        clock.advance(Duration::from_secs(5));
        assert_eq!(time.now_ms(), 1_005_000);
    }

    #[test]
    fn store_time_at_open_is_bounded_by_the_past_run() {
        let hour = Duration::from_secs(3600);
        let start = |wall: u64, floor: u64| {
            StoreTime::start(Arc::new(ManualClock::new(wall)), floor, hour).now_ms()
        };
        assert_eq!(start(10_000, 0), 10_000, "no past: the wall clock");
        assert_eq!(start(10_000, 9_000), 10_000, "a sane gap counts");
        assert_eq!(
            start(5_000, 9_000),
            9_000,
            "set back: continue from the past"
        );
        assert_eq!(
            start(9_000 + 86_400_000, 9_000),
            9_000 + 3_600_000,
            "far ahead: capped"
        );
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
