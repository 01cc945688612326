//! The end of a run: rates, latency percentiles, and losses, duplicates and reorders per
//! stream; printed as a table for people and as one JSON line for scripts.

use std::fmt::{self, Write as _};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::topology::Topology;

/// One `(sender, receiver)` stream's accounting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamReport {
    /// The publisher's index.
    pub sender: u32,
    /// The subscriber's index.
    pub receiver: u32,
    /// Messages of the sender the broker took (PUBACK at QoS 1, written at QoS 0).
    pub taken: u64,
    /// Distinct messages of the sender the receiver got.
    pub delivered: u64,
    /// Taken messages the receiver never got.
    pub lost: u64,
    /// Receipts of a message received before.
    pub duplicates: u64,
    /// First receipts after a higher sequence number.
    pub reordered: u64,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Highest.
    pub max_us: f64,
}

impl Latency {
    /// The percentiles of a histogram of nanoseconds (zeros when it is empty).
    #[must_use]
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        if histogram.is_empty() {
            return Self {
                p50_us: 0.0,
                p90_us: 0.0,
                p99_us: 0.0,
                p999_us: 0.0,
                max_us: 0.0,
            };
        }
        Self {
            p50_us: us(histogram.value_at_quantile(0.50)),
            p90_us: us(histogram.value_at_quantile(0.90)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
        }
    }
}

/// The connections of a staged run (`--idle-clients`, `--ready-file`): every client connects,
/// and subscribes when it subscribes, before the load starts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnectionsReport {
    /// Clients that tried: idle clients, subscribers and publishers.
    pub clients: u64,
    /// Of which idle clients.
    pub idle_clients: u32,
    /// Most connection attempts of idle clients at once.
    pub concurrency: usize,
    /// Clients connected (and subscribed: idle clients and subscribers) before the load.
    pub connected: u64,
    /// Clients the broker refused (a CONNACK or SUBACK refusal).
    pub refused: u64,
    /// Clients that failed otherwise (I/O errors, timeouts, the deadline).
    pub failed: u64,
    /// Idle clients whose connection ended before the run did.
    pub dropped: u64,
    /// Messages idle clients received (no route leads to them: should be 0).
    pub idle_messages: u64,
    /// Seconds from the first connection attempt to the last client ready.
    pub connect_s: f64,
    /// The first few distinct failures.
    pub errors: Vec<String>,
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// `hub` or `plain`.
    pub mode: &'static str,
    /// Whether the clients used TLS.
    pub tls: bool,
    /// QoS of publications and subscriptions.
    pub qos: u8,
    /// Publishing clients.
    pub publishers: u32,
    /// Subscribing clients.
    pub subscribers: u32,
    /// How they are connected.
    pub topology: Topology,
    /// Messages per publisher.
    pub messages_per_publisher: u64,
    /// Payload size in bytes.
    pub payload_bytes: usize,
    /// Most messages in flight per publisher.
    pub window: usize,
    /// The fixed total rate asked for, msgs/s; `None`: open loop.
    pub offered_per_s: Option<u64>,
    /// Messages the broker took, all publishers.
    pub published: u64,
    /// Distinct deliveries, all streams.
    pub delivered: u64,
    /// Deliveries expected had every message been sent and delivered.
    pub expected_deliveries: u64,
    /// Taken messages per second, from the start to the last one taken.
    pub published_per_s: f64,
    /// Deliveries per second, from the start to the last delivery.
    pub delivered_per_s: f64,
    /// Seconds from the first publish to the stop.
    pub elapsed_s: f64,
    /// Publish-to-delivery latency: from the hand-off to the client in open loop; at a fixed
    /// rate from the due time when the publisher was behind schedule (see `publisher`).
    #[serde(flatten)]
    pub latency: Latency,
    /// Taken messages never delivered, all streams.
    pub lost: u64,
    /// Duplicate receipts, all streams.
    pub duplicates: u64,
    /// Reordered first receipts, all streams.
    pub reordered: u64,
    /// Messages of earlier runs received (left queued in the broker).
    pub stale: u64,
    /// Payloads that were not this run's load messages for that subscriber.
    pub foreign: u64,
    /// Whether the run hit its timeout before every message was delivered.
    pub timed_out: bool,
    /// Client errors (connections lost or refused).
    pub errors: Vec<String>,
    /// Each stream's accounting.
    pub streams: Vec<StreamReport>,
    /// `publish` or `drain` for a run split in phases (`--phase`): the publish phase delivers
    /// nothing; the drain phase reports the publish phase's `published` and `published_per_s`,
    /// and divides its deliveries by the time from its own start. Absent for a whole run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<&'static str>,
    /// The connections of a staged run; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionsReport>,
}

impl Report {
    /// The report as one line of JSON.
    ///
    /// # Errors
    ///
    /// Never in practice: every field serializes.
    pub fn json_line(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }

    /// The report as a table for people.
    #[must_use]
    pub fn table(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let offered = self
            .offered_per_s
            .map_or_else(|| "open loop".to_owned(), |rate| format!("{rate} msgs/s"));
        let phase = self
            .phase
            .map_or_else(String::new, |phase| format!(" ({phase} phase)"));
        writeln!(
            f,
            "scenario {}{phase}: {} mode{}, QoS {}, {} -> {} ({:?}), {} x {} B per publisher, window {}, {offered}",
            self.scenario,
            self.mode,
            if self.tls { " over TLS" } else { "" },
            self.qos,
            self.publishers,
            self.subscribers,
            self.topology,
            self.messages_per_publisher,
            self.payload_bytes,
            self.window,
        )?;
        let mut rows = String::new();
        let mut row = |name: &str, value: String| writeln!(rows, "  {name:<22} {value:>14}");
        row("published", self.published.to_string())?;
        row(
            "delivered",
            format!("{} / {}", self.delivered, self.expected_deliveries),
        )?;
        row("published msgs/s", format!("{:.0}", self.published_per_s))?;
        row("delivered msgs/s", format!("{:.0}", self.delivered_per_s))?;
        row("elapsed s", format!("{:.3}", self.elapsed_s))?;
        row("latency p50 us", format!("{:.1}", self.latency.p50_us))?;
        row("latency p90 us", format!("{:.1}", self.latency.p90_us))?;
        row("latency p99 us", format!("{:.1}", self.latency.p99_us))?;
        row("latency p99.9 us", format!("{:.1}", self.latency.p999_us))?;
        row("latency max us", format!("{:.1}", self.latency.max_us))?;
        row("lost", self.lost.to_string())?;
        row("duplicates", self.duplicates.to_string())?;
        row("reordered", self.reordered.to_string())?;
        row("stale (earlier runs)", self.stale.to_string())?;
        row("foreign", self.foreign.to_string())?;
        row("timed out", self.timed_out.to_string())?;
        if let Some(c) = &self.connections {
            row(
                "clients",
                format!("{} ({} idle)", c.clients, c.idle_clients),
            )?;
            row("connected", c.connected.to_string())?;
            row("refused / failed", format!("{} / {}", c.refused, c.failed))?;
            row("dropped (idle)", c.dropped.to_string())?;
            row("connect s", format!("{:.3}", c.connect_s))?;
        }
        f.write_str(&rows)?;
        writeln!(
            f,
            "  {:>6} {:>8} {:>10} {:>10} {:>8} {:>10} {:>9}",
            "sender", "receiver", "taken", "delivered", "lost", "duplicates", "reordered"
        )?;
        for s in &self.streams {
            writeln!(
                f,
                "  {:>6} {:>8} {:>10} {:>10} {:>8} {:>10} {:>9}",
                s.sender, s.receiver, s.taken, s.delivered, s.lost, s.duplicates, s.reordered
            )?;
        }
        for error in &self.errors {
            writeln!(f, "  error: {error}")?;
        }
        for error in self.connections.iter().flat_map(|c| &c.errors) {
            writeln!(f, "  connection error: {error}")?;
        }
        Ok(())
    }
}

/// Messages per second of `count` messages over `ns` nanoseconds (0 when no time passed).
#[must_use]
pub fn per_second(count: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        count as f64 * 1e9 / ns as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::subscriber::latency_histogram;

    #[test]
    fn latency_percentiles_are_read_in_microseconds() {
        let mut histogram = latency_histogram();
        for us in 1..=1000u64 {
            histogram.record(us * 1000).expect("within bounds");
        }
        let latency = Latency::of(&histogram);
        assert!((latency.p50_us - 500.0).abs() <= 1.0, "{latency:?}");
        assert!((latency.p99_us - 990.0).abs() <= 1.0, "{latency:?}");
        assert!((latency.max_us - 1000.0).abs() <= 1.0, "{latency:?}");
        assert_eq!(Latency::of(&latency_histogram()).max_us, 0.0);
    }

    #[test]
    fn rates_divide_by_elapsed_nanoseconds() {
        assert_eq!(per_second(50_000, 500_000_000), 100_000.0);
        assert_eq!(per_second(10, 0), 0.0);
    }
}
