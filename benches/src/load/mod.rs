//! The load generator behind `edgehub-load`: P publishing and S subscribing MQTT clients, N
//! messages of B bytes each, QoS 0 or 1, a window of messages in flight per publisher, open
//! loop or a fixed total rate; the result is a [`Report`].
//!
//! Two modes share everything but topics and credentials ([`connect::Auth`]):
//! - **hub**: IoT Edge module topics and SAS tokens; publisher `i` is module `load-pub-{i}`,
//!   subscriber `j` module `load-sub-{j}`, and the hub's routes
//!   ([`Topology::deployment_manifest`]) carry the streams;
//! - **plain**: publisher `i` publishes on `load/{i}` and subscribers subscribe to the topics
//!   of their publishers, for any MQTT broker.
//!
//! A run: subscribers connect and subscribe; publishers start together; when they are done
//! (or the timeout struck) the generator waits until every written message is delivered, no
//! delivery came for [`Settings::drain_idle`], or the timeout; then it stops the subscribers
//! and accounts for every stream.

pub mod accounting;
pub mod clock;
pub mod connect;
pub mod pacing;
pub mod payload;
pub mod progress;
pub mod publisher;
pub mod report;
pub mod subscriber;
pub mod topology;

use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::QoS;
use thiserror::Error;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

pub use connect::{Auth, Endpoint, HubModules};
pub use report::Report;
pub use topology::Topology;

use clock::Clock;
use pacing::Schedule;
use publisher::{PublisherOutcome, PublisherPlan};
use report::{Latency, StreamReport, per_second};
use subscriber::{SubscriberOutcome, SubscriberPlan};

/// A run's parameters.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The scenario's name in the report.
    pub scenario: String,
    /// Where the broker listens.
    pub endpoint: Endpoint,
    /// Hub modules or plain MQTT.
    pub auth: Auth,
    /// Publishing clients (P).
    pub publishers: u32,
    /// Subscribing clients (S).
    pub subscribers: u32,
    /// How publishers map to subscribers.
    pub topology: Topology,
    /// Messages per publisher (N).
    pub messages: u64,
    /// Payload bytes per message (B); at least the header's 28.
    pub payload_bytes: usize,
    /// QoS of publications and subscriptions.
    pub qos: QoS,
    /// Most messages per publisher sent and not yet acknowledged.
    pub window: usize,
    /// The total rate of all publishers, msgs/s; `None`: open loop.
    pub rate: Option<NonZeroU64>,
    /// The whole run's limit; at it the run stops and reports what it has.
    pub timeout: Duration,
    /// After the publishers are done, how long without a delivery ends the wait for the rest.
    pub drain_idle: Duration,
    /// Whether to draw a progress bar on stderr (only drawn on a terminal).
    pub progress: bool,
}

/// Counters shared by the clients, read by the progress bar and the drain wait.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages taken by the broker, all publishers.
    pub published: AtomicU64,
    /// Distinct deliveries, all subscribers.
    pub delivered: AtomicU64,
}

/// A run that could not be carried out.
#[derive(Debug, Error)]
pub enum LoadError {
    /// Bad settings.
    #[error("invalid settings: {0}")]
    Settings(String),
    /// The topology does not fit the client counts.
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
    /// A client's options could not be built.
    #[error(transparent)]
    Connect(#[from] connect::ConnectError),
    /// A subscriber did not get subscribed.
    #[error("a subscriber is not ready: {0}")]
    NotReady(String),
    /// A client task panicked or was cancelled.
    #[error("a client task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// The module (hub) or client id base (plain) of every client of a scenario: publishers
/// first.
#[must_use]
pub fn client_names(publishers: u32, subscribers: u32) -> Vec<String> {
    (0..publishers)
        .map(topology::publisher_module)
        .chain((0..subscribers).map(topology::subscriber_module))
        .collect()
}

/// Runs a scenario to its end (every message delivered, or the timeout) and reports.
///
/// # Errors
///
/// Invalid settings, or a subscriber that could not subscribe; client errors during the run
/// are reported in [`Report::errors`] instead.
pub async fn run(settings: &Settings) -> Result<Report, LoadError> {
    check(settings)?;
    let clock = Clock::start();
    let deadline = clock.epoch() + settings.timeout;
    let run_id = run_id();
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);

    let mut subscribers = JoinSet::new();
    let mut readiness = Vec::new();
    for index in 0..settings.subscribers {
        let plan = subscriber_plan(settings, index, run_id, clock, deadline)?;
        let (ready, is_ready) = oneshot::channel();
        readiness.push(is_ready);
        subscribers.spawn(subscriber::subscribe(
            plan,
            Arc::clone(&counters),
            ready,
            stopped.clone(),
        ));
    }
    for is_ready in readiness {
        let outcome = is_ready
            .await
            .unwrap_or_else(|_| Err("the subscriber ended before subscribing".to_owned()));
        if let Err(reason) = outcome {
            let _ = stop.send(true);
            return Err(LoadError::NotReady(reason));
        }
    }

    let expected = settings.messages
        * settings
            .topology
            .streams(settings.publishers, settings.subscribers)
            .len() as u64;
    let progress = progress::Progress::start(expected, Arc::clone(&counters), settings.progress);
    let start = Instant::now();
    let mut publishers = JoinSet::new();
    for index in 0..settings.publishers {
        let plan = publisher_plan(settings, index, run_id, clock, start, deadline)?;
        publishers.spawn(publisher::publish(plan, Arc::clone(&counters)));
    }
    let mut published: Vec<PublisherOutcome> = join_all(publishers).await?;
    published.sort_by_key(|outcome| outcome.index);

    let written: u64 = settings
        .topology
        .streams(settings.publishers, settings.subscribers)
        .iter()
        .map(|&(sender, _)| published[sender as usize].written)
        .sum();
    let drained = wait_for_deliveries(&counters, written, settings.drain_idle, deadline).await;
    let _ = stop.send(true);
    let mut received: Vec<SubscriberOutcome> = join_all(subscribers).await?;
    received.sort_by_key(|outcome| outcome.index);
    progress.finish();

    let stop_ns = clock.now_ns();
    let all_taken = published.iter().all(|p| p.taken.len() == settings.messages);
    Ok(assemble(
        settings,
        &Accounts {
            published: &published,
            received: &received,
            start_ns: clock.ns_at(start),
            stop_ns,
            timed_out: !(drained && all_taken) && Instant::now() >= deadline,
        },
    ))
}

fn check(settings: &Settings) -> Result<(), LoadError> {
    settings
        .topology
        .check(settings.publishers, settings.subscribers)?;
    if settings.window == 0 {
        return Err(LoadError::Settings(
            "the window must be at least 1".to_owned(),
        ));
    }
    if settings.payload_bytes < payload::HEADER_LEN {
        return Err(LoadError::Settings(format!(
            "messages must be at least {} bytes (the header)",
            payload::HEADER_LEN
        )));
    }
    if settings.qos == QoS::ExactlyOnce {
        return Err(LoadError::Settings("QoS 2 is not supported".to_owned()));
    }
    Ok(())
}

/// An id that tells this run's messages from an earlier run's: the low bits of the wall
/// clock's nanoseconds mixed with the process id.
fn run_id() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    // Truncation intended: only the low, fast-changing bits matter.
    (nanos as u32) ^ std::process::id().rotate_left(16)
}

/// Lifetime of the SAS tokens: the run, plus a margin.
fn token_lifetime(settings: &Settings) -> Duration {
    settings.timeout + Duration::from_secs(3600)
}

fn inflight(window: usize) -> u16 {
    u16::try_from(window).unwrap_or(u16::MAX)
}

fn subscriber_plan(
    settings: &Settings,
    index: u32,
    run_id: u32,
    clock: Clock,
    deadline: Instant,
) -> Result<SubscriberPlan, LoadError> {
    let senders = settings.topology.senders_of(index, settings.publishers);
    let filters = match &settings.auth {
        Auth::Plain => senders.iter().map(|&s| topology::plain_topic(s)).collect(),
        Auth::Hub(modules) => vec![topology::hub_inputs_filter(&modules.device_id, index)],
    };
    Ok(SubscriberPlan {
        index,
        options: connect::options(
            &settings.endpoint,
            &settings.auth,
            &topology::subscriber_module(index),
            settings.payload_bytes,
            inflight(settings.window),
            token_lifetime(settings),
        )?,
        filters,
        qos: settings.qos,
        senders,
        messages: settings.messages,
        run_id,
        clock,
        deadline,
    })
}

fn publisher_plan(
    settings: &Settings,
    index: u32,
    run_id: u32,
    clock: Clock,
    start: Instant,
    deadline: Instant,
) -> Result<PublisherPlan, LoadError> {
    let topic = match &settings.auth {
        Auth::Plain => topology::plain_topic(index),
        Auth::Hub(modules) => topology::hub_publish_topic(&modules.device_id, index),
    };
    Ok(PublisherPlan {
        index,
        options: connect::options(
            &settings.endpoint,
            &settings.auth,
            &topology::publisher_module(index),
            settings.payload_bytes,
            inflight(settings.window),
            token_lifetime(settings),
        )?,
        topic,
        messages: settings.messages,
        payload_bytes: settings.payload_bytes,
        qos: settings.qos,
        window: settings.window,
        schedule: settings
            .rate
            .map(|rate| Schedule::new(rate, settings.publishers, index)),
        run_id,
        clock,
        start,
        deadline,
    })
}

/// Every task's output, or the first task that panicked.
async fn join_all<T: 'static>(mut tasks: JoinSet<T>) -> Result<Vec<T>, LoadError> {
    let mut outputs = Vec::with_capacity(tasks.len());
    while let Some(output) = tasks.join_next().await {
        outputs.push(output?);
    }
    Ok(outputs)
}

/// How often the drain wait looks at the counters.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// Waits until `written` deliveries arrived (true), or none came for `idle`, or the
/// deadline (false).
async fn wait_for_deliveries(
    counters: &Counters,
    written: u64,
    idle: Duration,
    deadline: Instant,
) -> bool {
    let mut last = counters.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let delivered = counters.delivered.load(Ordering::Relaxed);
        if delivered >= written {
            return true;
        }
        let now = Instant::now();
        if delivered != last {
            (last, last_change) = (delivered, now);
        }
        if now >= deadline || now.duration_since(last_change) >= idle {
            return false;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// What the clients reported, for the report.
struct Accounts<'a> {
    published: &'a [PublisherOutcome],
    received: &'a [SubscriberOutcome],
    start_ns: u64,
    stop_ns: u64,
    timed_out: bool,
}

fn assemble(settings: &Settings, accounts: &Accounts<'_>) -> Report {
    let mut streams = Vec::new();
    for (sender, receiver) in settings
        .topology
        .streams(settings.publishers, settings.subscribers)
    {
        let taken = &accounts.published[sender as usize].taken;
        let Some(receipts) = accounts.received[receiver as usize].streams.get(&sender) else {
            continue;
        };
        streams.push(StreamReport {
            sender,
            receiver,
            taken: taken.len(),
            delivered: receipts.seen().len(),
            lost: receipts.lost(taken),
            duplicates: receipts.duplicates(),
            reordered: receipts.reordered(),
        });
    }
    let mut latency = subscriber::latency_histogram();
    for outcome in accounts.received {
        // Same bounds on every histogram: adding cannot fail.
        let _ = latency.add(&outcome.latency);
    }
    let published: u64 = accounts.published.iter().map(|p| p.taken.len()).sum();
    let delivered: u64 = streams.iter().map(|s| s.delivered).sum();
    let since_start = |ns: Option<u64>| ns.map_or(0, |ns| ns.saturating_sub(accounts.start_ns));
    let last_taken = accounts
        .published
        .iter()
        .filter_map(|p| p.last_taken_ns)
        .max();
    let last_delivery = accounts
        .received
        .iter()
        .filter_map(|r| r.last_delivery_ns)
        .max();
    Report {
        scenario: settings.scenario.clone(),
        mode: match settings.auth {
            Auth::Plain => "plain",
            Auth::Hub(_) => "hub",
        },
        tls: settings.endpoint.tls.is_some(),
        qos: settings.qos as u8,
        publishers: settings.publishers,
        subscribers: settings.subscribers,
        topology: settings.topology,
        messages_per_publisher: settings.messages,
        payload_bytes: settings.payload_bytes,
        window: settings.window,
        offered_per_s: settings.rate.map(NonZeroU64::get),
        published,
        delivered,
        expected_deliveries: settings.messages * streams.len() as u64,
        published_per_s: per_second(published, since_start(last_taken)),
        delivered_per_s: per_second(delivered, since_start(last_delivery)),
        elapsed_s: accounts.stop_ns.saturating_sub(accounts.start_ns) as f64 / 1e9,
        latency: Latency::of(&latency),
        lost: streams.iter().map(|s| s.lost).sum(),
        duplicates: streams.iter().map(|s| s.duplicates).sum(),
        reordered: streams.iter().map(|s| s.reordered).sum(),
        stale: accounts.received.iter().map(|r| r.stale).sum(),
        foreign: accounts.received.iter().map(|r| r.foreign).sum(),
        timed_out: accounts.timed_out,
        errors: accounts
            .published
            .iter()
            .filter_map(|p| p.error.clone())
            .chain(accounts.received.iter().filter_map(|r| r.error.clone()))
            .collect(),
        streams,
    }
}
