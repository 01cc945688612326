//! The stop signal of the hub's tasks: listeners, connections, delivery pumps, the manifest
//! watcher. One [`StopSignal`] fires; every [`Stop`] cloned from it sees it.

use tokio::sync::watch;

/// The signal that stops the tasks of a hub (or of its admin endpoint). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

/// The side that fires a [`Stop`].
#[derive(Debug)]
pub struct StopSignal(watch::Sender<bool>);

impl StopSignal {
    /// A signal not fired yet.
    #[must_use]
    pub fn new() -> Self {
        Self(watch::channel(false).0)
    }

    /// A [`Stop`] that fires with this signal.
    #[must_use]
    pub fn subscribe(&self) -> Stop {
        Stop(self.0.subscribe())
    }

    /// Fires: every [`Stop::stopped`] returns.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Default for StopSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    /// Returns once the signal fired (at once if it already did, or if its sender is gone).
    pub async fn stopped(&mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }

    /// Whether the signal fired.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }
}
