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
//!
//! [`Extras`] (all off by default) change that for the scale scenarios: idle clients that
//! connect and stay connected while the others carry the load, a staged start (everything
//! connected before the load, with a file as a handshake with a script), and a run split in a
//! publish phase and a drain phase ([`phase`]).

pub mod accounting;
pub mod clock;
pub mod connect;
pub mod idle;
pub mod pacing;
pub mod payload;
pub mod phase;
pub mod progress;
pub mod publisher;
pub mod report;
pub mod subscriber;
pub mod topology;

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::QoS;
use thiserror::Error;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;

pub use connect::{Auth, Endpoint, HubModules};
pub use phase::{Phase, PhaseState};
pub use report::{ConnectionsReport, Report};
pub use topology::{ExtraRoutes, Topology};

use clock::Clock;
use idle::{ConnectFailure, IdleOutcome, IdlePlan};
use pacing::Schedule;
use publisher::{Gate, PublisherOutcome, PublisherPlan};
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

/// What a run does beyond [`Settings`]; [`Extras::default`] is a plain run.
#[derive(Debug, Clone)]
pub struct Extras {
    /// Clients that connect, subscribe to their own inputs and stay connected, idle, through
    /// the run (modules `load-idle-{k}` in hub mode). Any makes the run staged.
    pub idle_clients: u32,
    /// Most idle clients connecting at once (from the TCP connect to the SUBACK).
    pub connect_concurrency: usize,
    /// A handshake with a script; makes the run staged. The generator creates this file (one
    /// JSON line) once every client is connected, and again once the load is done and before
    /// the clients disconnect; each time it waits until the file is removed.
    pub ready_file: Option<PathBuf>,
    /// One phase of a run split in two processes, and its state file.
    pub phase: Option<(Phase, PathBuf)>,
    /// Where the subscribers connect when not where the publishers do ([`Settings::endpoint`]
    /// and [`Settings::auth`]): another broker, e.g. the parent hub to which the publishers'
    /// hub forwards its `$upstream` messages. Idle clients stay with the publishers. Not with
    /// [`Extras::phase`].
    pub subscribers_at: Option<(Endpoint, Auth)>,
}

impl Default for Extras {
    fn default() -> Self {
        Self {
            idle_clients: 0,
            connect_concurrency: DEFAULT_CONNECT_CONCURRENCY,
            ready_file: None,
            phase: None,
            subscribers_at: None,
        }
    }
}

impl Extras {
    /// Whether every client connects before the load starts (publishers included).
    #[must_use]
    pub fn staged(&self) -> bool {
        self.idle_clients > 0 || self.ready_file.is_some()
    }
}

/// The default of [`Extras::connect_concurrency`].
pub const DEFAULT_CONNECT_CONCURRENCY: usize = 100;

/// How many distinct connection failures a report lists.
const MAX_LISTED_FAILURES: usize = 5;

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
    /// The state file of a split run cannot be written or read.
    #[error("{0}")]
    State(String),
    /// The ready file cannot be written.
    #[error("writing the ready file {path}: {source}")]
    ReadyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
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
    run_with(settings, &Extras::default()).await
}

/// As [`run`], with [`Extras`]: idle clients, a staged start, or one phase of a split run.
///
/// # Errors
///
/// As [`run`]; also a state file that cannot be written (publish phase) or read, or that does
/// not match the settings (drain phase), and a ready file that cannot be written.
pub async fn run_with(settings: &Settings, extras: &Extras) -> Result<Report, LoadError> {
    check(settings)?;
    if extras.phase.is_some() && extras.subscribers_at.is_some() {
        return Err(LoadError::Settings(
            "a split run (phase) keeps its subscribers with the publishers".to_owned(),
        ));
    }
    match &extras.phase {
        Some((Phase::Publish, state)) => publish_phase(settings, state).await,
        Some((Phase::Drain, state)) => drain_phase(settings, &PhaseState::load(state)?).await,
        None => whole_run(settings, extras).await,
    }
}

/// Clients of a run, started.
struct Started {
    subscribers: JoinSet<SubscriberOutcome>,
    idle: JoinSet<IdleOutcome>,
    stop: watch::Sender<bool>,
}

impl Started {
    fn new() -> Self {
        Self {
            subscribers: JoinSet::new(),
            idle: JoinSet::new(),
            stop: watch::channel(false).0,
        }
    }

    /// Stops the subscribers and idle clients and collects what they saw.
    async fn stop(self) -> Result<(Vec<SubscriberOutcome>, Vec<IdleOutcome>), LoadError> {
        let _ = self.stop.send(true);
        let mut received = join_all(self.subscribers).await?;
        received.sort_by_key(|outcome| outcome.index);
        let mut idle = join_all(self.idle).await?;
        idle.sort_by_key(|outcome| outcome.index);
        Ok((received, idle))
    }
}

/// Starts the subscribers (their plans from `plan`), and waits until they are subscribed.
async fn start_subscribers(
    settings: &Settings,
    counters: &Arc<Counters>,
    plan: impl Fn(u32) -> Result<SubscriberPlan, LoadError>,
    started: &mut Started,
) -> Result<(), LoadError> {
    let mut readiness = Vec::new();
    for index in 0..settings.subscribers {
        let (ready, is_ready) = oneshot::channel();
        readiness.push(is_ready);
        started.subscribers.spawn(subscriber::subscribe(
            plan(index)?,
            Arc::clone(counters),
            ready,
            started.stop.subscribe(),
        ));
    }
    for is_ready in readiness {
        let outcome = is_ready
            .await
            .unwrap_or_else(|_| Err("the subscriber ended before subscribing".to_owned()));
        if let Err(reason) = outcome {
            let _ = started.stop.send(true);
            return Err(LoadError::NotReady(reason));
        }
    }
    Ok(())
}

/// A whole run: every client in this process, from the connections to the last delivery.
async fn whole_run(settings: &Settings, extras: &Extras) -> Result<Report, LoadError> {
    let clock = Clock::start();
    let deadline = clock.epoch() + settings.timeout;
    let run_id = run_id();
    let counters = Arc::new(Counters::default());
    let mut started = Started::new();

    let staged = extras.staged();
    let subscribers_at = extras
        .subscribers_at
        .as_ref()
        .map_or((&settings.endpoint, &settings.auth), |(e, a)| (e, a));
    let connecting = Instant::now();
    let idle_ready = start_idle(settings, extras, deadline, &mut started)?;
    let (start_tx, start_rx) = watch::channel(None);
    let mut publishers = JoinSet::new();
    let mut publisher_ready = Vec::new();
    if staged {
        for index in 0..settings.publishers {
            let (connected, is_connected) = oneshot::channel();
            publisher_ready.push(is_connected);
            let gate = Gate {
                connected,
                start: start_rx.clone(),
            };
            // The start is replaced by the gate's.
            let plan = publisher_plan(settings, index, run_id, clock, connecting, deadline)?;
            publishers.spawn(publisher::publish_gated(
                plan,
                Arc::clone(&counters),
                Some(gate),
            ));
        }
    }
    let subscribed = start_subscribers(
        settings,
        &counters,
        |index| subscriber_plan(settings, subscribers_at, index, run_id, clock, deadline),
        &mut started,
    )
    .await;
    if let Err(error) = subscribed {
        publishers.abort_all();
        started.idle.abort_all();
        return Err(error);
    }
    let mut connections = if staged {
        let mut tally = ConnectionTally::default();
        for is_ready in idle_ready {
            tally.idle(is_ready.await);
        }
        for is_connected in publisher_ready {
            tally.publisher(is_connected.await);
        }
        Some(tally.report(settings, extras, connecting.elapsed()))
    } else {
        None
    };
    if let (Some(path), Some(connections)) = (&extras.ready_file, &connections) {
        let line = serde_json::json!({"stage": "connected", "connections": connections});
        hand_over(path, &line, deadline).await?;
    }

    let expected = settings.messages
        * settings
            .topology
            .streams(settings.publishers, settings.subscribers)
            .len() as u64;
    let progress = progress::Progress::start(expected, Arc::clone(&counters), settings.progress);
    let start = Instant::now();
    if staged {
        let _ = start_tx.send(Some(start));
    } else {
        for index in 0..settings.publishers {
            let plan = publisher_plan(settings, index, run_id, clock, start, deadline)?;
            publishers.spawn(publisher::publish(plan, Arc::clone(&counters)));
        }
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
    if let Some(path) = &extras.ready_file {
        let line = serde_json::json!({"stage": "done", "delivered": counters.delivered.load(Ordering::Relaxed)});
        hand_over(path, &line, deadline).await?;
    }
    let (received, idle) = started.stop().await?;
    progress.finish();
    if let Some(connections) = &mut connections {
        connections.dropped = idle.iter().filter(|o| o.dropped.is_some()).count() as u64;
        connections.idle_messages = idle.iter().map(|o| o.messages).sum();
        for reason in idle.iter().filter_map(|o| o.dropped.as_ref()) {
            if connections.errors.len() < MAX_LISTED_FAILURES {
                connections.errors.push(reason.clone());
            }
        }
    }

    let stop_ns = clock.now_ns();
    let all_taken = published.iter().all(|p| p.taken.len() == settings.messages);
    let mut report = assemble(
        settings,
        &Accounts {
            published: &published,
            received: &received,
            start_ns: clock.ns_at(start),
            stop_ns,
            timed_out: !(drained && all_taken) && Instant::now() >= deadline,
        },
    );
    report.connections = connections;
    Ok(report)
}

/// Spawns the idle clients of `extras`; returns their readiness, in index order.
fn start_idle(
    settings: &Settings,
    extras: &Extras,
    deadline: Instant,
    started: &mut Started,
) -> Result<Vec<oneshot::Receiver<Result<(), ConnectFailure>>>, LoadError> {
    let gate = Arc::new(Semaphore::new(extras.connect_concurrency.max(1)));
    let mut readiness = Vec::new();
    for index in 0..extras.idle_clients {
        let name = idle::idle_module(index);
        let filter = match &settings.auth {
            Auth::Plain => idle::plain_idle_filter(index),
            Auth::Hub(modules) => topology::hub_module_inputs_filter(&modules.device_id, &name),
        };
        let plan = IdlePlan {
            index,
            options: connect::options(
                &settings.endpoint,
                &settings.auth,
                &name,
                settings.payload_bytes,
                1,
                token_lifetime(settings),
            )?,
            filter,
            deadline,
        };
        let (ready, is_ready) = oneshot::channel();
        readiness.push(is_ready);
        started.idle.spawn(idle::hold(
            plan,
            Arc::clone(&gate),
            ready,
            started.stop.subscribe(),
        ));
    }
    Ok(readiness)
}

/// Connections counted as the clients report them.
#[derive(Debug, Default)]
struct ConnectionTally {
    connected: u64,
    refused: u64,
    failed: u64,
    errors: Vec<String>,
}

impl ConnectionTally {
    fn idle(&mut self, readiness: Result<Result<(), ConnectFailure>, oneshot::error::RecvError>) {
        match readiness {
            Ok(Ok(())) => self.connected += 1,
            Ok(Err(failure)) => {
                if failure.refused {
                    self.refused += 1;
                } else {
                    self.failed += 1;
                }
                self.note(failure.reason);
            }
            Err(_) => {
                self.failed += 1;
                self.note("an idle client ended before connecting".to_owned());
            }
        }
    }

    fn publisher(&mut self, readiness: Result<Result<(), String>, oneshot::error::RecvError>) {
        match readiness {
            Ok(Ok(())) => self.connected += 1,
            Ok(Err(reason)) => {
                // rumqttc's words for a CONNACK refusal.
                if reason.contains("Connection refused") {
                    self.refused += 1;
                } else {
                    self.failed += 1;
                }
                self.note(reason);
            }
            Err(_) => {
                self.failed += 1;
                self.note("a publisher ended before connecting".to_owned());
            }
        }
    }

    fn note(&mut self, reason: String) {
        if self.errors.len() < MAX_LISTED_FAILURES && !self.errors.contains(&reason) {
            self.errors.push(reason);
        }
    }

    /// The report, the subscribers (all subscribed, or the run would have stopped) included.
    fn report(self, settings: &Settings, extras: &Extras, took: Duration) -> ConnectionsReport {
        ConnectionsReport {
            clients: u64::from(extras.idle_clients)
                + u64::from(settings.publishers)
                + u64::from(settings.subscribers),
            idle_clients: extras.idle_clients,
            concurrency: extras.connect_concurrency.max(1),
            connected: self.connected + u64::from(settings.subscribers),
            refused: self.refused,
            failed: self.failed,
            dropped: 0,
            idle_messages: 0,
            connect_s: took.as_secs_f64(),
            errors: self.errors,
        }
    }
}

/// Creates `path` holding `line`, then waits until it is removed (or the deadline).
async fn hand_over(
    path: &Path,
    line: &serde_json::Value,
    deadline: Instant,
) -> Result<(), LoadError> {
    let error = |source| LoadError::ReadyFile {
        path: path.to_owned(),
        source,
    };
    // Written aside and renamed: whoever sees the file sees all of it.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("{line}\n")).map_err(error)?;
    std::fs::rename(&partial, path).map_err(error)?;
    while path.exists() && Instant::now() < deadline {
        tokio::time::sleep(HAND_OVER_POLL).await;
    }
    Ok(())
}

/// How often a hand-over looks whether its file is gone.
const HAND_OVER_POLL: Duration = Duration::from_millis(20);

/// The publish phase: publishers only; the state goes to `state` for the drain phase.
async fn publish_phase(settings: &Settings, state: &Path) -> Result<Report, LoadError> {
    let clock = Clock::start();
    let deadline = clock.epoch() + settings.timeout;
    let run_id = run_id();
    let counters = Arc::new(Counters::default());
    let expected = settings.messages * u64::from(settings.publishers);
    let progress = progress::Progress::start(expected, Arc::clone(&counters), settings.progress);
    let start = Instant::now();
    let mut publishers = JoinSet::new();
    for index in 0..settings.publishers {
        let plan = publisher_plan(settings, index, run_id, clock, start, deadline)?;
        publishers.spawn(publisher::publish(plan, Arc::clone(&counters)));
    }
    let mut published: Vec<PublisherOutcome> = join_all(publishers).await?;
    published.sort_by_key(|outcome| outcome.index);
    progress.finish();
    let all_taken = published.iter().all(|p| p.taken.len() == settings.messages);
    // No receiver: no stream is accounted for, nothing is expected to arrive yet.
    let mut report = assemble(
        settings,
        &Accounts {
            published: &published,
            received: &[],
            start_ns: clock.ns_at(start),
            stop_ns: clock.now_ns(),
            timed_out: !all_taken && Instant::now() >= deadline,
        },
    );
    report.phase = Some(Phase::Publish.name());
    PhaseState::after_publish(settings, run_id, clock, &published, report.published_per_s)
        .save(state)?;
    Ok(report)
}

/// The drain phase: subscribers only, accounting for what the publish phase's broker took.
async fn drain_phase(settings: &Settings, state: &PhaseState) -> Result<Report, LoadError> {
    state.check(settings)?;
    let clock = state.clock();
    let start = Instant::now();
    let deadline = start + settings.timeout;
    let counters = Arc::new(Counters::default());
    let mut started = Started::new();
    let published = state.outcomes();
    let written: u64 = settings
        .topology
        .streams(settings.publishers, settings.subscribers)
        .iter()
        .map(|&(sender, _)| published[sender as usize].taken.len())
        .sum();
    let progress = progress::Progress::start(written, Arc::clone(&counters), settings.progress);
    start_subscribers(
        settings,
        &counters,
        |index| {
            subscriber_plan(
                settings,
                (&settings.endpoint, &settings.auth),
                index,
                state.run_id,
                clock,
                deadline,
            )
        },
        &mut started,
    )
    .await?;
    let drained = wait_for_deliveries(&counters, written, settings.drain_idle, deadline).await;
    let (received, _) = started.stop().await?;
    progress.finish();
    let mut report = assemble(
        settings,
        &Accounts {
            published: &published,
            received: &received,
            start_ns: clock.ns_at(start),
            stop_ns: clock.now_ns(),
            timed_out: !drained && Instant::now() >= deadline,
        },
    );
    report.published_per_s = state.published_per_s;
    report.phase = Some(Phase::Drain.name());
    Ok(report)
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

/// The plan of subscriber `index`, connecting to `endpoint` as `auth` says.
fn subscriber_plan(
    settings: &Settings,
    (endpoint, auth): (&Endpoint, &Auth),
    index: u32,
    run_id: u32,
    clock: Clock,
    deadline: Instant,
) -> Result<SubscriberPlan, LoadError> {
    let senders = settings.topology.senders_of(index, settings.publishers);
    let filters = match auth {
        Auth::Plain => senders.iter().map(|&s| topology::plain_topic(s)).collect(),
        Auth::Hub(modules) => vec![topology::hub_inputs_filter(&modules.device_id, index)],
    };
    Ok(SubscriberPlan {
        index,
        options: connect::options(
            endpoint,
            auth,
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
        let Some(receipts) = accounts
            .received
            .get(receiver as usize)
            .and_then(|received| received.streams.get(&sender))
        else {
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
        phase: None,
        connections: None,
    }
}
