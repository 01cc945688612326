//! Live data first (`[upstream] live_first = true`): `$upstream` messages wait in one of two
//! store queues, and the forwarder sends a sender's live messages before its backlog of the
//! same priority, so an hour of data stored during an outage does not delay the alarms of now.
//!
//! A message joins the **live** queue when upstream is keeping up (the last send was
//! acknowledged and no send failed since), the **backlog** queue otherwise (offline, or a link
//! failing). After an outage, what was stored meanwhile is in the backlog; what arrives once
//! the link is back goes live. The forwarder reads both queues every turn and keeps what it
//! read per sender ([`super::outbox`]), ordered by [`Lane`] within a priority: priority first
//! (a high-priority backlog leaves before low-priority live data), then live before backlog,
//! then the order of arrival. Order is kept per sender and priority within each queue, not
//! across them: that is the point of the option. Messages still in the store are not compared:
//! each queue is read in priority order, a share per sender at a time. Without the option
//! every message joins the backlog queue, the one queue of `$upstream`, and leaves in order.

use std::sync::atomic::{AtomicBool, Ordering};

/// The store queue of live `$upstream` messages (the backlog is the endpoint's own queue,
/// `iothub`).
pub const LIVE_QUEUE: &str = "iothub.live";

/// Which of the two `$upstream` queues a message was read from. `Live` sorts first: within a
/// priority, a sender's live messages leave before its backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// The live queue ([`LIVE_QUEUE`]), with live data first.
    Live,
    /// The `$upstream` endpoint's own queue: every message, or the backlog with live data first.
    Backlog,
}

/// Which queue new `$upstream` messages join. Opened and closed by the forwarder, read by the
/// ingest path for every message routed upstream.
#[derive(Debug, Default)]
pub struct LiveLane {
    open: AtomicBool,
}

impl LiveLane {
    /// Whether new messages join the live queue (upstream keeps up) rather than the backlog.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Upstream acknowledged a send: new messages go live.
    pub fn open(&self) {
        if !self.open.swap(true, Ordering::Relaxed) {
            tracing::debug!("upstream keeps up: new messages go live");
        }
    }

    /// A send failed: new messages join the backlog until upstream acknowledges again.
    pub fn close(&self) {
        if self.open.swap(false, Ordering::Relaxed) {
            tracing::debug!("upstream away: new messages join the backlog");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lane_starts_closed_and_follows_the_forwarder() {
        let lane = LiveLane::default();
        assert!(!lane.is_open(), "offline until upstream acknowledges");
        lane.open();
        assert!(lane.is_open());
        lane.close();
        assert!(!lane.is_open());
    }
}
