//! Restart policies and back-off (spec 5): the runtime status a module is reported with, and
//! when a module in back-off may be restarted.

use std::time::Duration;

use time::OffsetDateTime;

use crate::manifest::{DesiredStatus, RestartPolicy};
use crate::runtime::RawStatus;

/// The knobs of restarts; [`Default`] gives the reference values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartSettings {
    /// Restarts before a module is `failed` (reference 20).
    pub max_restart_count: u32,
    /// Base of the back-off (10 s).
    pub cool_off_unit: Duration,
    /// Cap of the back-off (300 s).
    pub max_cool_off: Duration,
    /// Running this long clears the restart count (10 min).
    pub intensive_care: Duration,
}

impl Default for RestartSettings {
    fn default() -> Self {
        Self {
            max_restart_count: 20,
            cool_off_unit: Duration::from_secs(10),
            max_cool_off: Duration::from_secs(300),
            intensive_care: Duration::from_secs(600),
        }
    }
}

impl RestartSettings {
    /// `min(unit × 2^count, max)`: how long after its exit a module that restarted `count`
    /// times waits before the next restart.
    #[must_use]
    pub fn cool_off(&self, count: u32) -> Duration {
        let factor = 1u32.checked_shl(count.min(31)).unwrap_or(u32::MAX);
        self.cool_off_unit
            .checked_mul(factor)
            .map_or(self.max_cool_off, |d| d.min(self.max_cool_off))
    }

    /// Whether a module in back-off that exited at `exited_at` after `count` restarts may be
    /// restarted at `now` (at once when the clock went backwards).
    #[must_use]
    pub fn cool_off_elapsed(
        &self,
        count: u32,
        exited_at: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> bool {
        let Some(exited_at) = exited_at else {
            return true;
        };
        let since = now - exited_at;
        if since <= time::Duration::ZERO {
            return true;
        }
        since > self.cool_off(count)
    }
}

/// What the agent reports a module as (`runtimeStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuntimeStatus {
    /// Not known.
    Unknown,
    /// Waiting for its next restart.
    Backoff,
    /// Running.
    Running,
    /// Running but unhealthy (never produced: there are no health probes).
    Unhealthy,
    /// Stopped.
    Stopped,
    /// Exited with an error and not restarted (policy, or restarts exhausted).
    Failed,
    /// Dead: removed and created again.
    Dead,
}

impl RuntimeStatus {
    /// The text reported.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Backoff => "backoff",
            Self::Running => "running",
            Self::Unhealthy => "unhealthy",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }
}

/// The runtime status after the restart policy (spec 5.2).
#[must_use]
pub fn runtime_status(
    raw: RawStatus,
    desired: DesiredStatus,
    policy: RestartPolicy,
    restart_count: u32,
    settings: &RestartSettings,
) -> RuntimeStatus {
    let raw_status = match raw {
        RawStatus::Running => RuntimeStatus::Running,
        RawStatus::Stopped => RuntimeStatus::Stopped,
        RawStatus::Failed => RuntimeStatus::Failed,
        RawStatus::Dead => RuntimeStatus::Dead,
        RawStatus::Unknown => RuntimeStatus::Unknown,
    };
    if desired != DesiredStatus::Running {
        return raw_status;
    }
    if raw == RawStatus::Dead {
        return RuntimeStatus::Dead;
    }
    if raw != RawStatus::Running
        && raw != RawStatus::Unknown
        && policy != RestartPolicy::Never
        && (policy == RestartPolicy::Always || raw == RawStatus::Failed)
    {
        if restart_count >= settings.max_restart_count {
            return RuntimeStatus::Failed;
        }
        return RuntimeStatus::Backoff;
    }
    raw_status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_from_ten_seconds_and_caps_at_300() {
        let s = RestartSettings::default();
        let waits: Vec<u64> = (0..8).map(|n| s.cool_off(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(s.cool_off(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn cool_off_is_counted_from_the_exit() {
        let s = RestartSettings::default();
        let exit = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1);
        assert!(!s.cool_off_elapsed(1, Some(exit), exit + time::Duration::seconds(20)));
        assert!(s.cool_off_elapsed(1, Some(exit), exit + time::Duration::seconds(21)));
        assert!(s.cool_off_elapsed(5, Some(exit), exit - time::Duration::seconds(3)));
    }

    #[test]
    fn policies_map_raw_states_as_the_reference_does() {
        use RawStatus as R;
        use RestartPolicy as P;
        use RuntimeStatus as S;
        let s = RestartSettings::default();
        let run = DesiredStatus::Running;
        assert_eq!(runtime_status(R::Failed, run, P::Always, 0, &s), S::Backoff);
        assert_eq!(
            runtime_status(R::Stopped, run, P::Always, 0, &s),
            S::Backoff
        );
        assert_eq!(
            runtime_status(R::Stopped, run, P::OnFailure, 0, &s),
            S::Stopped
        );
        assert_eq!(
            runtime_status(R::Failed, run, P::OnUnhealthy, 3, &s),
            S::Backoff
        );
        assert_eq!(runtime_status(R::Failed, run, P::Never, 0, &s), S::Failed);
        assert_eq!(runtime_status(R::Failed, run, P::Always, 20, &s), S::Failed);
        assert_eq!(runtime_status(R::Dead, run, P::Always, 0, &s), S::Dead);
        assert_eq!(
            runtime_status(R::Running, run, P::Always, 19, &s),
            S::Running
        );
        assert_eq!(
            runtime_status(R::Failed, DesiredStatus::Stopped, P::Always, 0, &s),
            S::Failed
        );
    }
}
