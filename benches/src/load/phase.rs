//! A run in two processes (`--phase publish`, then `--phase drain`): the publishers fill the
//! broker's queues while no subscriber is connected, and later the subscribers connect and
//! drain them, each phase measurable on its own. The state file the publish phase writes
//! carries what the drain phase needs to account for every message: the run id (so another
//! run's leftovers count as stale, not as deliveries), the run clock's epoch (latency is then
//! the time from the publish to the delivery, queueing included), and which messages the
//! broker took (so a message it took and never delivered counts as lost).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::accounting::SeqSet;
use super::clock::Clock;
use super::publisher::PublisherOutcome;
use super::{LoadError, Settings};

/// Which phase of a split run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Only the publishers connect and publish; the state file is written at the end.
    Publish,
    /// Only the subscribers connect, and receive what the publish phase left queued.
    Drain,
}

impl Phase {
    /// The phase's name in the report.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Drain => "drain",
        }
    }
}

/// What the publish phase leaves for the drain phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseState {
    /// The run's id, in every message's header.
    pub run_id: u32,
    /// The run clock's epoch, in ns since the Unix epoch (wall clock).
    pub epoch_unix_ns: u64,
    /// Publishers.
    pub publishers: u32,
    /// Messages per publisher.
    pub messages: u64,
    /// Payload bytes per message.
    pub payload_bytes: usize,
    /// The publish phase's rate of taken messages.
    pub published_per_s: f64,
    /// Messages each publisher wrote to its connection.
    pub written: Vec<u64>,
    /// The messages the broker took, per publisher, as half-open ranges of sequence numbers.
    pub taken: Vec<Vec<(u64, u64)>>,
}

impl PhaseState {
    /// The state after a publish phase whose clock is `clock`.
    #[must_use]
    pub fn after_publish(
        settings: &Settings,
        run_id: u32,
        clock: Clock,
        published: &[PublisherOutcome],
        published_per_s: f64,
    ) -> Self {
        let now_unix_ns = unix_ns(SystemTime::now());
        Self {
            run_id,
            epoch_unix_ns: now_unix_ns.saturating_sub(clock.now_ns()),
            publishers: settings.publishers,
            messages: settings.messages,
            payload_bytes: settings.payload_bytes,
            published_per_s,
            written: published.iter().map(|p| p.written).collect(),
            taken: published.iter().map(|p| p.taken.ranges()).collect(),
        }
    }

    /// The publish phase's clock, continued in this process.
    #[must_use]
    pub fn clock(&self) -> Clock {
        let now_unix_ns = unix_ns(SystemTime::now());
        Clock::started_ago(Duration::from_nanos(
            now_unix_ns.saturating_sub(self.epoch_unix_ns),
        ))
    }

    /// The publishers' outcomes as the drain phase accounts for them.
    #[must_use]
    pub fn outcomes(&self) -> Vec<PublisherOutcome> {
        (0..self.publishers)
            .map(|index| PublisherOutcome {
                index,
                taken: SeqSet::from_ranges(
                    self.messages,
                    self.taken.get(index as usize).map_or(&[], Vec::as_slice),
                ),
                written: self.written.get(index as usize).copied().unwrap_or(0),
                last_taken_ns: None,
                error: None,
            })
            .collect()
    }

    /// Checks that a drain phase's settings match the publish phase's.
    ///
    /// # Errors
    ///
    /// When the publishers, the message count or the payload size differ.
    pub fn check(&self, settings: &Settings) -> Result<(), LoadError> {
        let mismatch = |what: &str, theirs: String, ours: String| {
            Err(LoadError::Settings(format!(
                "the publish phase had {theirs} {what}, this run has {ours}: give the same options to both phases"
            )))
        };
        if self.publishers != settings.publishers {
            return mismatch(
                "publishers",
                self.publishers.to_string(),
                settings.publishers.to_string(),
            );
        }
        if self.messages != settings.messages {
            return mismatch(
                "messages per publisher",
                self.messages.to_string(),
                settings.messages.to_string(),
            );
        }
        if self.taken.len() != self.publishers as usize {
            return Err(LoadError::Settings(format!(
                "the state names {} publishers' messages for {} publishers",
                self.taken.len(),
                self.publishers
            )));
        }
        Ok(())
    }

    /// Writes the state to `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), LoadError> {
        let text = serde_json::to_string(self)
            .map_err(|e| LoadError::State(format!("serializing the state: {e}")))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| LoadError::State(format!("writing {}: {e}", path.display())))
    }

    /// Reads the state from `path`.
    ///
    /// # Errors
    ///
    /// When the file cannot be read or is not a state file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadError::State(format!("reading {}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            LoadError::State(format!(
                "{} is not a publish phase's state: {e}",
                path.display()
            ))
        })
    }
}

fn unix_ns(time: SystemTime) -> u64 {
    u64::try_from(
        time.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    )
    .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PhaseState {
        PhaseState {
            run_id: 7,
            epoch_unix_ns: unix_ns(SystemTime::now()) - 3_000_000_000,
            publishers: 2,
            messages: 100,
            payload_bytes: 256,
            published_per_s: 1234.5,
            written: vec![100, 60],
            taken: vec![vec![(0, 100)], vec![(0, 50), (51, 60)]],
        }
    }

    #[test]
    fn the_state_survives_a_file_and_gives_back_what_was_taken() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("state.json");
        let saved = state();
        saved.save(&path).expect("saved");
        let loaded = PhaseState::load(&path).expect("loaded");
        assert_eq!(loaded, saved);
        let outcomes = loaded.outcomes();
        assert_eq!(outcomes[0].taken.len(), 100);
        assert_eq!(outcomes[1].taken.len(), 59);
        assert!(!outcomes[1].taken.contains(50));
        assert_eq!(outcomes[1].written, 60);
        // The drain phase's clock continues the publish phase's.
        let ns = loaded.clock().now_ns();
        assert!((3_000_000_000..4_000_000_000).contains(&ns), "{ns}");
    }

    #[test]
    fn a_missing_or_foreign_state_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("state.json");
        let missing = PhaseState::load(&path).expect_err("no file");
        assert!(missing.to_string().contains("state.json"), "{missing}");
        std::fs::write(&path, "{}").expect("written");
        let foreign = PhaseState::load(&path).expect_err("not a state");
        assert!(foreign.to_string().contains("publish phase"), "{foreign}");
    }
}
