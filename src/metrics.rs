//! The hub's counters, rendered in the Prometheus text format. Names follow the legacy
//! edgeHub metrics where they exist (`edgehub_messages_received_total`, ...).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

/// The name of the store's state, as `/metrics` and the `$edgeHub` twin report it:
/// `writable`, `disk_full` or `failing`.
#[must_use]
pub fn store_state(health: store::Health) -> &'static str {
    match health {
        store::Health::Writable => "writable",
        store::Health::DiskFull => "disk_full",
        _ => "failing",
    }
}

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No route selected it (accepted and dropped).
    NoRoute,
    /// Published on a topic outside the documented set (decision D2).
    UnknownTopic,
    /// Over the size limit (decision D4).
    TooLarge,
    /// The store refused it (quota, failure); the publisher gets no PUBACK.
    StoreRefused,
    /// Its stored record could not be read back.
    Unreadable,
    /// Stored, but too large to publish to its receiver (topic or packet over the limits):
    /// dropped so that it does not hold the queue behind it.
    Undeliverable,
}

impl DropReason {
    /// Every reason, in declaration order: `reason as usize` indexes the counters.
    const ALL: [Self; 6] = [
        Self::NoRoute,
        Self::UnknownTopic,
        Self::TooLarge,
        Self::StoreRefused,
        Self::Unreadable,
        Self::Undeliverable,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::UnknownTopic => "unknown_topic",
            Self::TooLarge => "too_large",
            Self::StoreRefused => "store_refused",
            Self::Unreadable => "unreadable",
            Self::Undeliverable => "undeliverable",
        }
    }
}

/// Why the store refused a message, as far as the hub can tell (see [`RefusalReason::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The disk under the store is full (`ENOSPC`).
    DiskFull,
    /// The store's quota is exhausted (`reject` policy).
    Quota,
    /// Another storage failure (a write or a sync failed).
    Failure,
    /// The store is closed (the hub is stopping).
    Closed,
}

impl RefusalReason {
    /// Every reason, in declaration order: `reason as usize` indexes the counters.
    const ALL: [Self; 4] = [Self::DiskFull, Self::Quota, Self::Failure, Self::Closed];

    /// The reason of a refusal that says something about the store's state; `None` for the
    /// caller's own mistakes (no target, an endpoint removed by a new deployment) and for a
    /// full inbox (`Busy`, which the hub waits out).
    ///
    #[must_use]
    pub fn of(error: &store::EnqueueError) -> Option<Self> {
        use store::EnqueueError as E;
        match error {
            E::QuotaExceeded => Some(Self::Quota),
            E::Closed => Some(Self::Closed),
            E::DiskFull => Some(Self::DiskFull),
            E::Unavailable => Some(Self::Failure),
            E::Backend(e) if e.is_disk_full() => Some(Self::DiskFull),
            E::Backend(_) => Some(Self::Failure),
            E::UnknownEndpoint(_) | E::DuplicateTarget(_) | E::NoTargets | E::Busy => None,
        }
    }

    /// The label of the metric and the value of the reported property.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::DiskFull => "disk_full",
            Self::Quota => "quota",
            Self::Failure => "failure",
            Self::Closed => "closed",
        }
    }
}

/// The store's refusals as the hub saw them: counted per reason, and grouped in episodes (from
/// the first refusal to the first message made durable at least [`StoreHealth::QUIET`] after
/// the last refusal), each logged once when it starts and once when it ends, whatever the
/// number of messages refused in between. The quiet time keeps an episode whole while
/// messages already durable before it began are still being acknowledged between refusals.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// Whether an episode is open: the only thing the data path reads when all is well.
    refusing: AtomicBool,
    refusals: [AtomicU64; 4],
    episodes: AtomicU64,
    episode: Mutex<Option<Episode>>,
}

/// An open episode of refusals.
#[derive(Debug, Clone, Copy)]
struct Episode {
    reason: RefusalReason,
    since: SystemTime,
    started: Instant,
    last_refusal: Instant,
    refusals: u64,
}

/// The store's state as the `$edgeHub` twin reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreState {
    /// The reason of the last refusal of the open episode; `None` while the store accepts.
    pub refusing: Option<RefusalReason>,
    /// When the open episode began.
    pub since: Option<SystemTime>,
    /// Messages refused in the open episode.
    pub refusals: u64,
    /// Episodes since the hub started.
    pub episodes: u64,
}

impl StoreHealth {
    /// How long after the last refusal a message made durable ends the episode.
    pub const QUIET: Duration = Duration::from_secs(1);

    /// The store refused a message (at once, or when it failed to make it durable).
    pub fn refused(&self, error: &store::EnqueueError) {
        let Some(reason) = RefusalReason::of(error) else {
            return;
        };
        self.refusals[reason as usize].fetch_add(1, Ordering::Relaxed);
        let mut episode = self.episode.lock().unwrap_or_else(PoisonError::into_inner);
        match episode.as_mut() {
            Some(open) => {
                open.reason = reason;
                open.refusals += 1;
                open.last_refusal = Instant::now();
            }
            None => {
                let now = Instant::now();
                *episode = Some(Episode {
                    reason,
                    since: SystemTime::now(),
                    started: now,
                    last_refusal: now,
                    refusals: 1,
                });
                self.episodes.fetch_add(1, Ordering::Relaxed);
                self.refusing.store(true, Ordering::Relaxed);
                tracing::error!(
                    reason = reason.label(),
                    error = %error,
                    "the store refuses messages: publishers are closed without PUBACK until it \
                     takes messages again (logged once per episode; counted in \
                     edgehub_store_refusals_total)"
                );
            }
        }
    }

    /// A message was made durable: ends an open episode whose last refusal is [`Self::QUIET`]
    /// old (one relaxed load when none is open).
    pub fn accepted(&self) {
        self.accepted_at(Instant::now());
    }

    fn accepted_at(&self, now: Instant) {
        if !self.refusing.load(Ordering::Relaxed) {
            return;
        }
        let mut episode = self.episode.lock().unwrap_or_else(PoisonError::into_inner);
        let quiet = episode
            .as_ref()
            .is_some_and(|open| now.saturating_duration_since(open.last_refusal) >= Self::QUIET);
        if quiet && let Some(ended) = episode.take() {
            self.refusing.store(false, Ordering::Relaxed);
            tracing::info!(
                last_reason = ended.reason.label(),
                refused = ended.refusals,
                lasted = ?ended.started.elapsed(),
                "the store takes messages again"
            );
        }
    }

    /// The state to report.
    pub fn state(&self) -> StoreState {
        let episode = *self.episode.lock().unwrap_or_else(PoisonError::into_inner);
        StoreState {
            refusing: episode.map(|e| e.reason),
            since: episode.map(|e| e.since),
            refusals: episode.map_or(0, |e| e.refusals),
            episodes: self.episodes.load(Ordering::Relaxed),
        }
    }

    /// Refusals so far for `reason`.
    pub fn refusals_total(&self, reason: RefusalReason) -> u64 {
        self.refusals[reason as usize].load(Ordering::Relaxed)
    }
}

/// A gauge to render with the counters: its samples are `(labels, value)`, labels in
/// Prometheus form (`{endpoint="iothub"}`) or empty.
#[derive(Debug, Clone)]
pub struct Gauge<'a> {
    /// Metric name.
    pub name: &'a str,
    /// Help text.
    pub help: &'a str,
    /// Samples.
    pub samples: Vec<(String, f64)>,
}

/// Counters updated on the data path (relaxed atomics: a few nanoseconds each).
#[derive(Debug, Default)]
pub struct Metrics {
    received: AtomicU64,
    sent: AtomicU64,
    refused: AtomicU64,
    dropped: [AtomicU64; 6],
    route_nanos: AtomicU64,
    routed: AtomicU64,
    store: StoreHealth,
}

impl Metrics {
    /// A message was accepted from a client.
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    /// A message was published to a client.
    pub fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A CONNECT was refused.
    pub fn connection_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A message was dropped.
    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The store's refusals and their episodes.
    pub fn store(&self) -> &StoreHealth {
        &self.store
    }

    /// Routes were evaluated for one message in `elapsed`.
    pub fn route_evaluated(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.route_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.routed.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages received so far.
    pub fn received_total(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Messages dropped so far for `reason`.
    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// The counters in the Prometheus text format, plus the gauges the caller passes.
    pub fn render(&self, gauges: &[Gauge<'_>]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            &mut out,
            "edgehub_messages_received_total",
            "Messages received from clients.",
            self.received.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "edgehub_messages_sent_total",
            "Messages published to clients.",
            self.sent.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "edgehub_connections_refused_total",
            "CONNECT packets refused.",
            self.refused.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP edgehub_messages_dropped_total Messages dropped, by reason.\n# TYPE edgehub_messages_dropped_total counter"
        );
        for (reason, count) in DropReason::ALL.iter().zip(&self.dropped) {
            let _ = writeln!(
                out,
                "edgehub_messages_dropped_total{{reason=\"{}\"}} {}",
                reason.label(),
                count.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP edgehub_store_refusals_total Messages the store refused or failed to make durable, by reason.\n# TYPE edgehub_store_refusals_total counter"
        );
        for reason in RefusalReason::ALL {
            let _ = writeln!(
                out,
                "edgehub_store_refusals_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.store.refusals_total(reason)
            );
        }
        counter(
            &mut out,
            "edgehub_store_refusal_episodes_total",
            "Episodes of store refusals (from the first refusal to the first message stored a second after the last one).",
            self.store.episodes.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP edgehub_store_refusing Whether the store refuses messages now (1) or takes them (0).\n# TYPE edgehub_store_refusing gauge\nedgehub_store_refusing {}",
            u8::from(self.store.refusing.load(Ordering::Relaxed))
        );
        counter(
            &mut out,
            "edgehub_route_evaluations_total",
            "Messages whose routes were evaluated.",
            self.routed.load(Ordering::Relaxed),
        );
        #[allow(clippy::cast_precision_loss)]
        let seconds = self.route_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(
            out,
            "# HELP edgehub_route_evaluation_seconds_total Time spent evaluating routes.\n# TYPE edgehub_route_evaluation_seconds_total counter\nedgehub_route_evaluation_seconds_total {seconds}"
        );
        for Gauge {
            name,
            help,
            samples,
        } in gauges
        {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_full() -> store::EnqueueError {
        store::EnqueueError::Backend(store::BackendError::from(
            std::io::Error::from_raw_os_error(28),
        ))
    }

    #[test]
    fn refusals_are_counted_by_reason_and_grouped_in_episodes() {
        let metrics = Metrics::default();
        let health = metrics.store();
        assert_eq!(
            RefusalReason::of(&disk_full()),
            Some(RefusalReason::DiskFull)
        );
        assert_eq!(
            RefusalReason::of(&store::EnqueueError::Backend(store::BackendError::from(
                std::io::Error::other("EIO")
            ))),
            Some(RefusalReason::Failure)
        );
        assert_eq!(RefusalReason::of(&store::EnqueueError::Busy), None);
        health.accepted();
        assert_eq!(health.state().episodes, 0);
        for _ in 0..3 {
            health.refused(&disk_full());
        }
        health.refused(&store::EnqueueError::NoTargets);
        let state = health.state();
        assert_eq!(state.refusing, Some(RefusalReason::DiskFull));
        assert_eq!((state.refusals, state.episodes), (3, 1));
        assert!(state.since.is_some());
        let text = metrics.render(&[]);
        assert!(text.contains("edgehub_store_refusals_total{reason=\"disk_full\"} 3"));
        assert!(text.contains("edgehub_store_refusing 1"));
        // Acknowledgements of messages stored before the refusals do not end the episode.
        health.accepted();
        assert_eq!(health.state().refusing, Some(RefusalReason::DiskFull));
        health.accepted_at(Instant::now() + StoreHealth::QUIET);
        assert_eq!(health.state().refusing, None);
        health.refused(&store::EnqueueError::QuotaExceeded);
        assert_eq!(health.state().episodes, 2);
        assert_eq!(health.refusals_total(RefusalReason::Quota), 1);
        assert!(
            metrics
                .render(&[])
                .contains("edgehub_store_refusal_episodes_total 2")
        );
    }

    #[test]
    fn drop_reasons_index_their_counters_in_declaration_order() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
        let metrics = Metrics::default();
        metrics.dropped(DropReason::StoreRefused);
        assert_eq!(metrics.dropped_total(DropReason::StoreRefused), 1);
        assert_eq!(metrics.dropped_total(DropReason::NoRoute), 0);
        assert!(
            metrics
                .render(&[])
                .contains("edgehub_messages_dropped_total{reason=\"store_refused\"} 1")
        );
    }
}
