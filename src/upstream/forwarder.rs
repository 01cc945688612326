//! The forwarder: the pump of the `$upstream` queue. It reads the queue (priority first), hands
//! each message to its sender's [`Outbox`], sends it on that sender's link with a window in
//! flight per link, and acknowledges to the store only what upstream acknowledged: at least
//! once, in order per sender and priority, and nothing is dropped because upstream is away.
//!
//! # No head-of-line blocking between senders
//!
//! Each sender has its own link (D8), window and share of memory ([`super::outbox`]). When a
//! send fails (no link yet, a link down or refused, no PUBACK in time), only that sender puts
//! its messages in flight back in front and waits (until a link comes up, or [`RETRY`]); the
//! others keep flowing. Completion is thus out of order across senders, while the store
//! acknowledges in order per queue and priority: the [`Ledger`] marks every entry read, and the
//! store is acknowledged up to the first entry not settled yet; entries settled after it stay
//! marked, so they are not sent again.
//!
//! Memory stays bounded. A waiting sender holds at most its share; what is read for it beyond
//! is deferred (a mark in the ledger, the message left in the store) and read again after a
//! rewind of the reader, once the sender can take it. A sender that holds its share while it
//! can send pauses reading until it sent some (no deferring needed), and so does a total of
//! [`HELD_BYTES`] held by all senders (many waiting at once). Marks are bounded by
//! [`MARKS`]: a sender refused for so long that the others sent that many messages past its
//! oldest one holds everything up, since the store cannot acknowledge past that one; a restart
//! then sends again what was settled behind it (at least once). With live data first it reads
//! two queues (see [`super::lanes`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::lanes::{Lane, LiveLane};
use super::ledger::{Key, Ledger, Mark};
use super::link::Publication;
use super::links::Links;
use super::outbox::{Admission, Message, Outbox};
use super::settings::UpstreamSettings;
use super::status::UpstreamStatus;
use crate::identity::ClientIdentity;
use crate::metrics::{DropReason, Metrics};
use crate::mqtt::topic::{encode_upstream_bag, telemetry};
use crate::record;
use crate::stop::Stop;
use router::message::system;

pub use super::outbox::WINDOW;

/// Entries read from one queue at a time.
const READ_BATCH: usize = WINDOW;
/// Payload bytes read from one queue at a time, at most (at least one entry is always read).
const READ_BYTES: usize = 4 * 1024 * 1024;
/// Payload bytes held by all senders, at most: beyond, nothing more is read.
pub const HELD_BYTES: usize = 32 * 1024 * 1024;
/// Ledger marks, at most, before new entries wait in the store (see the module doc).
pub const MARKS: usize = 64 * 1024;
/// How long upstream has to acknowledge a message before it is sent again.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed send, the longest wait before trying again when no link comes up (a link
/// being opened, or one in back-off, bumps `link_up` the moment it connects).
const RETRY: Duration = Duration::from_secs(2);
/// How long the forwarder waits before reading again when a read found nothing it could
/// deliver.
const READ_RETRY: Duration = Duration::from_millis(5);

/// What the forwarder needs.
#[derive(Debug)]
pub struct Forwarder {
    /// Where and how to connect.
    pub settings: Arc<UpstreamSettings>,
    /// What it reports.
    pub status: Arc<UpstreamStatus>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Opened while upstream keeps up, closed when a send fails (read by ingest with live
    /// data first).
    pub lane: Arc<LiveLane>,
    /// The links, one per sender, shared with the mirror.
    pub links: Arc<Links>,
}

/// The queues the forwarder reads: the `$upstream` endpoint's own (the backlog) and, with live
/// data first, the live one.
#[derive(Debug)]
pub struct Lanes {
    /// The `$upstream` endpoint's queue: every message, or the backlog with live data first.
    pub backlog: store::Reader,
    /// The live queue, when it exists.
    pub live: Option<store::Reader>,
}

impl Lanes {
    fn reader(&mut self, lane: Lane) -> Option<&mut store::Reader> {
        match lane {
            Lane::Live => self.live.as_mut(),
            Lane::Backlog => Some(&mut self.backlog),
        }
    }

    /// Waits until one of the queues that may be read (`live`, `backlog`) has something.
    async fn ready(&self, live: bool, backlog: bool) {
        let live = async {
            match self.live.as_ref().filter(|_| live) {
                Some(reader) => reader.ready().await,
                None => std::future::pending().await,
            }
        };
        let backlog = async {
            if backlog {
                self.backlog.ready().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = live => {}
            () = backlog => {}
        }
    }
}

/// How a publication ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acked,
    /// Not sent, or its connection failed.
    Failed,
    /// No PUBACK within [`ACK_TIMEOUT`].
    TimedOut,
}

/// The end of one attempt to send a message.
#[derive(Debug)]
struct Completion {
    sender: Arc<ClientIdentity>,
    attempt: u64,
    key: Key,
    outcome: Outcome,
}

impl Forwarder {
    /// Runs until `stop`: reads the `$upstream` queues and forwards.
    pub async fn run(self, mut lanes: Lanes, mut stop: Stop) {
        let mut links_changed = self.links.link_up();
        let mut pump = Pump {
            forwarder: self,
            ledger: Ledger::default(),
            senders: HashMap::new(),
            completions: FuturesUnordered::new(),
            attempts: 0,
            rewound: BTreeSet::new(),
            retry_at: None,
        };
        loop {
            pump.report();
            let live = lanes.live.is_some() && pump.may_read(Lane::Live);
            let backlog = pump.may_read(Lane::Backlog);
            let retry_at = pump.retry_at;
            tokio::select! {
                biased;
                () = stop.stopped() => return,
                Some(done) = pump.completions.next() => pump.complete(&done),
                () = lanes.ready(live, backlog), if live || backlog => {
                    match pump.read(&mut lanes, live, backlog) {
                        Ok(true) => {}
                        Ok(false) => tokio::time::sleep(READ_RETRY).await,
                        Err(e) => {
                            tracing::info!(error = %e, "upstream forwarder stops");
                            return;
                        }
                    }
                }
                changed = links_changed.changed(), if retry_at.is_some() => {
                    if changed.is_ok() {
                        pump.retry();
                    }
                }
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    pump.retry();
                }
            }
            pump.rewind_where_useful(&mut lanes);
            pump.acknowledge(&mut lanes);
        }
    }
}

/// The forwarder at work: the only owner of its ledger and outboxes.
struct Pump {
    forwarder: Forwarder,
    ledger: Ledger,
    senders: HashMap<Arc<ClientIdentity>, Outbox>,
    completions: FuturesUnordered<BoxFuture<'static, Completion>>,
    /// Attempts made so far (each send is a new one).
    attempts: u64,
    /// Queues rewound whose entries the store has not all handed out again yet.
    rewound: BTreeSet<Lane>,
    /// When senders that wait try again (if no link comes up first).
    retry_at: Option<Instant>,
}

impl Pump {
    fn report(&self) {
        let in_flight = self.senders.values().map(Outbox::in_flight).sum();
        self.forwarder.status.set_in_flight(in_flight);
    }

    /// Whether reading `lane` now keeps memory within bounds.
    fn may_read(&self, lane: Lane) -> bool {
        if self.senders.values().any(Outbox::is_over) {
            return false;
        }
        if self.senders.values().map(Outbox::bytes).sum::<usize>() >= HELD_BYTES {
            return false;
        }
        // Reading a rewound queue goes over marks the ledger has (and a few new ones).
        self.rewound.contains(&lane) || self.ledger.marks() < MARKS
    }

    /// Reads a batch from each queue that may be read (live first) and hands it out; `false`
    /// when both were empty.
    fn read(
        &mut self,
        lanes: &mut Lanes,
        live: bool,
        backlog: bool,
    ) -> Result<bool, store::StoreError> {
        let mut touched = BTreeSet::new();
        let mut any = false;
        for (lane, wanted) in [(Lane::Live, live), (Lane::Backlog, backlog)] {
            let Some(reader) = lanes.reader(lane).filter(|_| wanted) else {
                continue;
            };
            let batch = reader.read(READ_BATCH, READ_BYTES)?;
            let empty = batch.is_empty();
            any |= !empty;
            for entry in batch {
                self.take(lane, &entry, &mut touched);
            }
            // Deferred entries the store went past without handing them out had expired.
            let mut gone = Vec::new();
            for priority in self.ledger.priorities(lane) {
                let position = reader.position(priority);
                self.ledger.passed(lane, priority, position, &mut gone);
            }
            self.forget(gone);
            // The store handed out everything again (or has nothing more to hand out): a new
            // rewind may be useful later.
            if empty || self.ledger.caught_up(lane) {
                self.rewound.remove(&lane);
            }
        }
        for sender in touched {
            self.send(&sender);
        }
        Ok(any)
    }

    /// Hands out one entry read from `lane`: to its sender's outbox, left in the store, or
    /// skipped (held or settled already).
    fn take(
        &mut self,
        lane: Lane,
        entry: &store::Entry,
        touched: &mut BTreeSet<Arc<ClientIdentity>>,
    ) {
        let key = Key { lane, id: entry.id };
        let mut gone = Vec::new();
        let seen = self.ledger.handed(key, &mut gone);
        self.forget(gone);
        match seen {
            Some(Mark::Held | Mark::Settled) => {}
            Some(Mark::Deferred(sender)) => {
                let outbox = self.senders.entry(Arc::clone(&sender)).or_default();
                if outbox.admit(key) == Admission::Defer {
                    return;
                }
                outbox.undefer(key);
                match decode(&self.forwarder.metrics, key, entry) {
                    Some((_, message)) => {
                        self.ledger.hold(key);
                        outbox.hold(message);
                        touched.insert(sender);
                    }
                    None => self.ledger.settle(key),
                }
            }
            None => {
                let Some((identity, message)) = decode(&self.forwarder.metrics, key, entry) else {
                    self.ledger.record(key, Mark::Settled);
                    return;
                };
                let sender = match self.senders.get_key_value(&identity) {
                    Some((sender, _)) => Arc::clone(sender),
                    None => Arc::new(identity),
                };
                let outbox = self.senders.entry(Arc::clone(&sender)).or_default();
                match outbox.admit(key) {
                    Admission::Hold => {
                        outbox.hold(message);
                        self.ledger.record(key, Mark::Held);
                        touched.insert(sender);
                    }
                    Admission::Defer => {
                        outbox.defer(key);
                        self.ledger.record(key, Mark::Deferred(sender));
                    }
                }
            }
        }
    }

    /// Deferred entries that expired in the store: their senders no longer wait for them.
    fn forget(&mut self, gone: Vec<(Arc<ClientIdentity>, Key)>) {
        for (sender, key) in gone {
            if let Some(outbox) = self.senders.get_mut(&sender) {
                outbox.undefer(key);
            }
        }
    }

    /// Sends what `sender` may send now on its link (opened if needed).
    fn send(&mut self, sender: &Arc<ClientIdentity>) {
        let Some(outbox) = self.senders.get_mut(sender).filter(|o| o.can_send()) else {
            return;
        };
        let link = self.forwarder.links.get(sender);
        while let Some(message) = outbox.next_to_send() {
            let (acked, ack) = oneshot::channel();
            let publication = Publication {
                topic: message.topic.clone(),
                payload: message.payload.clone(),
                acked,
            };
            if !link.publish(publication) {
                // Not connected (yet, or refused): this sender waits, the others go on.
                for key in outbox.release(Some(message)) {
                    self.ledger.defer(key, Arc::clone(sender));
                }
                self.forwarder.lane.close();
                self.retry_at.get_or_insert_with(|| Instant::now() + RETRY);
                return;
            }
            self.attempts += 1;
            let (attempt, key) = (self.attempts, message.key);
            outbox.sent(attempt, message);
            let sender = Arc::clone(sender);
            let deadline = Instant::now() + ACK_TIMEOUT;
            self.completions.push(Box::pin(async move {
                let outcome = match tokio::time::timeout_at(deadline, ack).await {
                    Ok(Ok(())) => Outcome::Acked,
                    Ok(Err(_)) => Outcome::Failed,
                    Err(_) => Outcome::TimedOut,
                };
                Completion {
                    sender,
                    attempt,
                    key,
                    outcome,
                }
            }));
        }
    }

    /// An attempt ended: settled when acknowledged; otherwise its sender releases what it
    /// holds and waits.
    fn complete(&mut self, done: &Completion) {
        let Some(outbox) = self.senders.get_mut(&done.sender) else {
            return;
        };
        match done.outcome {
            Outcome::Acked => {
                if outbox.acknowledged(done.attempt, done.key) {
                    self.ledger.settle(done.key);
                    self.forwarder.status.forwarded();
                    self.forwarder.lane.open();
                }
            }
            Outcome::Failed | Outcome::TimedOut => {
                if !outbox.is_in_flight(done.attempt) {
                    // An attempt given up already.
                    return;
                }
                if done.outcome == Outcome::TimedOut
                    && let Some(link) = self.forwarder.links.find(&done.sender)
                {
                    // Sent and never acknowledged: the connection may be dead without knowing
                    // it (cut off without a reset); make it again.
                    link.recycle_if_stalled();
                }
                for key in outbox.release(None) {
                    self.ledger.defer(key, Arc::clone(&done.sender));
                }
                self.forwarder.lane.close();
                self.retry_at.get_or_insert_with(|| Instant::now() + RETRY);
            }
        }
        self.send(&done.sender);
        if self.senders.get(&done.sender).is_some_and(Outbox::is_empty) {
            self.senders.remove(&done.sender);
        }
    }

    /// A link came up, or the retry time came: every waiting sender whose link is up goes
    /// on (its deferred entries come back with a rewind); the others wait on.
    fn retry(&mut self) {
        self.retry_at = None;
        let mut still_waiting = false;
        for (sender, outbox) in self.senders.iter_mut().filter(|(_, o)| o.is_waiting()) {
            // The link of a sender that waits keeps trying to connect (with its back-off);
            // `get` starts it again if it closed meanwhile.
            if self.forwarder.links.get(sender).is_connected() {
                outbox.retry();
            } else {
                still_waiting = true;
            }
        }
        if still_waiting {
            self.retry_at = Some(Instant::now() + RETRY);
        }
        self.senders.retain(|_, outbox| !outbox.is_empty());
    }

    /// Rewinds the reader of a queue when a sender that can take them again has entries left
    /// in it (and the queue is not being read again already).
    fn rewind_where_useful(&mut self, lanes: &mut Lanes) {
        for lane in [Lane::Live, Lane::Backlog] {
            if self.rewound.contains(&lane)
                || !self
                    .senders
                    .values()
                    .any(|outbox| outbox.wants_rewind(lane))
            {
                continue;
            }
            let Some(reader) = lanes.reader(lane) else {
                continue;
            };
            reader.rewind();
            self.ledger.rewind(lane);
            self.rewound.insert(lane);
            tracing::debug!(?lane, "deferred upstream messages are read again");
        }
    }

    /// Acknowledges to the store what is settled, in order.
    fn acknowledge(&mut self, lanes: &mut Lanes) {
        for key in self.ledger.take_settled() {
            if let Some(reader) = lanes.reader(key.lane)
                && let Err(e) = reader.ack(key.id)
            {
                tracing::error!(error = %e, "acknowledgement refused by the store");
            }
        }
    }
}

/// The sender and the publication of a stored message; `None` for a record that cannot
/// be sent at all (dropped and counted).
fn decode(metrics: &Metrics, key: Key, entry: &store::Entry) -> Option<(ClientIdentity, Message)> {
    let message = match record::decode(&entry.payload) {
        Ok(message) => message,
        Err(e) => {
            tracing::error!(error = %e, "stored message unreadable; dropped");
            metrics.dropped(DropReason::Unreadable);
            return None;
        }
    };
    let Some(device) = message.system_properties.get(system::CONNECTION_DEVICE_ID) else {
        tracing::error!("stored message without a sender; dropped");
        metrics.dropped(DropReason::Unreadable);
        return None;
    };
    let sender = ClientIdentity {
        device_id: device.to_owned(),
        module_id: message
            .system_properties
            .get(system::CONNECTION_MODULE_ID)
            .map(str::to_owned),
    };
    let bag = encode_upstream_bag(&message.properties, &message.system_properties);
    let topic = telemetry(&sender.device_id, sender.module_id.as_deref(), &bag);
    let message = Message {
        key,
        topic,
        payload: message.body,
    };
    Some((sender, message))
}
