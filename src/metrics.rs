//! The hub's counters, rendered in the Prometheus text format. Names follow the legacy
//! edgeHub metrics where they exist (`edgehub_messages_received_total`, ...).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
