//! What the upstream side reports: the state of each link, reconnects, messages in flight.
//! Written by the links and the forwarder, read by `/metrics` and the `$edgeHub` twin.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use serde_json::{Value, json};

/// The state of one identity's link.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LinkState {
    Connected,
    Down(String),
}

/// Upstream's state as the hub reports it.
#[derive(Debug, Default)]
pub struct UpstreamStatus {
    links: Mutex<BTreeMap<String, LinkState>>,
    /// Connections made after a failure or a renewal (the first of each link not counted).
    reconnects: AtomicU64,
    /// Connections made in all.
    connections: AtomicU64,
    /// Messages sent and not acknowledged yet.
    in_flight: AtomicUsize,
    /// Messages acknowledged by upstream.
    forwarded: AtomicU64,
    /// When the state last changed between connected and not, and why.
    last_change: Mutex<Option<(SystemTime, String)>>,
}

/// The summary of the links' states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No link is open (nothing was sent yet, or every link closed when idle).
    Idle,
    /// Every open link is connected.
    Connected,
    /// At least one link cannot connect.
    Disconnected,
}

impl State {
    /// The name reported: `idle`, `connected` or `disconnected`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
        }
    }
}

impl UpstreamStatus {
    /// `client_id`'s link connected.
    pub fn link_connected(&self, client_id: &str) {
        let previous = self
            .lock()
            .insert(client_id.to_owned(), LinkState::Connected);
        if previous.is_some() {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.changed(format!("{client_id} connected"));
    }

    /// `client_id`'s link failed to connect or lost its connection.
    pub fn link_failed(&self, client_id: &str, reason: &str) {
        self.lock()
            .insert(client_id.to_owned(), LinkState::Down(reason.to_owned()));
        self.changed(format!("{client_id}: {reason}"));
    }

    /// `client_id`'s link closed (idle, or the hub stops).
    pub fn link_closed(&self, client_id: &str) {
        self.lock().remove(client_id);
    }

    /// Messages in flight upstream now.
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    /// A message was acknowledged by upstream.
    pub fn forwarded(&self) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
    }

    /// The links' state summed up.
    pub fn state(&self) -> State {
        let links = self.lock();
        if links.is_empty() {
            State::Idle
        } else if links.values().all(|l| *l == LinkState::Connected) {
            State::Connected
        } else {
            State::Disconnected
        }
    }

    /// `(connected, down)` links.
    pub fn link_counts(&self) -> (usize, usize) {
        let links = self.lock();
        let connected = links
            .values()
            .filter(|l| **l == LinkState::Connected)
            .count();
        (connected, links.len() - connected)
    }

    /// Reconnects since the hub started.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Messages in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Messages acknowledged by upstream since the hub started.
    pub fn forwarded_total(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// The `upstream` object of the `$edgeHub` reported properties.
    pub fn reported(&self) -> Value {
        let (connected, down) = self.link_counts();
        let last = self
            .last_change
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        json!({
            "state": self.state().name(),
            "connectedLinks": connected,
            "failingLinks": down,
            "reconnects": self.reconnects(),
            "lastChange": last.map(|(at, what)| json!({
                "timeUtc": crate::edgehub_twin::timestamp(at),
                "what": what,
            })),
        })
    }

    fn changed(&self, what: String) {
        *self
            .last_change
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((SystemTime::now(), what));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LinkState>> {
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_follows_the_links() {
        let status = UpstreamStatus::default();
        assert_eq!(status.state(), State::Idle);
        status.link_connected("d/a");
        assert_eq!(status.state(), State::Connected);
        status.link_failed("d/b", "refused");
        assert_eq!(status.state(), State::Disconnected);
        assert_eq!(status.link_counts(), (1, 1));
        status.link_connected("d/b");
        assert_eq!(status.state(), State::Connected);
        assert_eq!(status.reconnects(), 1, "d/b came back");
        status.link_closed("d/a");
        status.link_closed("d/b");
        assert_eq!(status.state(), State::Idle);
        assert_eq!(status.reported()["state"], "idle");
    }
}
