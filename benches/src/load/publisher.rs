//! One publishing client: sends its messages (paced or open loop, at most a window of them
//! unacknowledged), and records which ones the broker took.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{Semaphore, oneshot, watch};

use super::Counters;
use super::accounting::SeqSet;
use super::clock::Clock;
use super::pacing::Schedule;
use super::payload::Header;

/// What one publisher is to do.
#[derive(Debug)]
pub struct PublisherPlan {
    /// The publisher's index (the sender in each payload header).
    pub index: u32,
    /// Its MQTT options.
    pub options: MqttOptions,
    /// The topic it publishes on.
    pub topic: String,
    /// How many messages.
    pub messages: u64,
    /// Each message's size in bytes.
    pub payload_bytes: usize,
    /// QoS 0 or 1.
    pub qos: QoS,
    /// Most messages sent and not yet acknowledged (QoS 1) or not yet written (QoS 0).
    pub window: usize,
    /// When each message is due; `None`: as fast as the window allows.
    pub schedule: Option<Schedule>,
    /// The run's id, in each header.
    pub run_id: u32,
    /// The run's clock.
    pub clock: Clock,
    /// When publishing starts (due times count from it).
    pub start: Instant,
    /// When the publisher gives up.
    pub deadline: Instant,
}

/// What a publisher did.
#[derive(Debug)]
pub struct PublisherOutcome {
    /// The publisher's index.
    pub index: u32,
    /// The messages the broker took: acknowledged at QoS 1, written at QoS 0.
    pub taken: SeqSet,
    /// How many messages were written to the connection.
    pub written: u64,
    /// When the last message was taken, in ns of the run's clock.
    pub last_taken_ns: Option<u64>,
    /// Why it stopped early, if it did (a connection error).
    pub error: Option<String>,
}

/// A publisher's start in a staged run: it connects first, says so on `connected`, then keeps
/// the connection alive until `start` holds the instant publishing starts.
#[derive(Debug)]
pub struct Gate {
    /// Connected (CONNACK received), or why not.
    pub connected: oneshot::Sender<Result<(), String>>,
    /// The instant the load starts, once it does.
    pub start: watch::Receiver<Option<Instant>>,
}

/// Connects, publishes the plan's messages and disconnects; stops at the deadline.
pub async fn publish(plan: PublisherPlan, counters: Arc<Counters>) -> PublisherOutcome {
    publish_gated(plan, counters, None).await
}

/// As [`publish`]; with a gate, connects first and waits for the start it gives (the plan's
/// `start` is replaced by it).
pub async fn publish_gated(
    mut plan: PublisherPlan,
    counters: Arc<Counters>,
    gate: Option<Gate>,
) -> PublisherOutcome {
    let capacity = plan.window.clamp(10, 1024);
    let (client, mut eventloop) = super::connect::client(plan.options.clone(), capacity);
    if let Some(gate) = gate {
        match connect_then_wait(&plan, &mut eventloop, gate).await {
            Ok(start) => plan.start = start,
            Err(reason) => {
                return PublisherOutcome {
                    index: plan.index,
                    taken: SeqSet::new(plan.messages),
                    written: 0,
                    last_taken_ns: None,
                    error: Some(reason),
                };
            }
        }
    }
    let window = Arc::new(Semaphore::new(plan.window.max(1)));
    let feeder = tokio::spawn(feed(
        client.clone(),
        Arc::clone(&window),
        FeedPlan {
            index: plan.index,
            topic: plan.topic.clone(),
            messages: plan.messages,
            payload_bytes: plan.payload_bytes,
            qos: plan.qos,
            schedule: plan.schedule,
            run_id: plan.run_id,
            clock: plan.clock,
            start: plan.start,
        },
    ));
    let (outcome, connected) = drive(&plan, &mut eventloop, &window, &counters).await;
    feeder.abort();
    if connected {
        disconnect(&client, &mut eventloop).await;
    }
    outcome
}

/// Polls the connection until the CONNACK, reports it through the gate, then keeps polling
/// (keep-alive) until the start instant comes; an error or the deadline ends it.
async fn connect_then_wait(
    plan: &PublisherPlan,
    eventloop: &mut EventLoop,
    gate: Gate,
) -> Result<Instant, String> {
    let index = plan.index;
    let Gate {
        connected,
        mut start,
    } = gate;
    let mut connected = Some(connected);
    let waited = async {
        loop {
            tokio::select! {
                started = start.wait_for(Option::is_some), if connected.is_none() => {
                    return match started {
                        Ok(start) => Ok((*start).unwrap_or_else(Instant::now)),
                        Err(_) => Err(format!("publisher {index}: the run ended before the start")),
                    };
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(connected) = connected.take() {
                            let _ = connected.send(Ok(()));
                        }
                    }
                    Ok(_) => {}
                    Err(error) => return Err(format!("publisher {index}: {error}")),
                },
            }
        }
    };
    let result = match tokio::time::timeout_at(plan.deadline.into(), waited).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "publisher {index}: not started before the deadline"
        )),
    };
    if let (Err(reason), Some(connected)) = (&result, connected) {
        let _ = connected.send(Err(reason.clone()));
    }
    result
}

/// The part of the plan the feeding task needs.
#[derive(Debug)]
struct FeedPlan {
    index: u32,
    topic: String,
    messages: u64,
    payload_bytes: usize,
    qos: QoS,
    schedule: Option<Schedule>,
    run_id: u32,
    clock: Clock,
    start: Instant,
}

/// Hands the messages to the client, each when it is due and a window slot is free.
async fn feed(client: AsyncClient, window: Arc<Semaphore>, plan: FeedPlan) {
    let start_ns = plan.clock.ns_at(plan.start);
    for seq in 0..plan.messages {
        let due_ns = plan
            .schedule
            .map(|schedule| start_ns.saturating_add(schedule.due_ns(seq)));
        let stamp_ns = match due_ns {
            Some(due_ns) => Some(send_time(plan.clock, due_ns).await),
            None => None,
        };
        match window.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return,
        }
        let header = Header {
            run_id: plan.run_id,
            sent_at_ns: stamp_ns.unwrap_or_else(|| plan.clock.now_ns()),
            sender: plan.index,
            seq,
        };
        let payload = header.encode(plan.payload_bytes);
        if client
            .publish(plan.topic.as_str(), plan.qos, false, payload)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Waits until `due_ns` and returns the time to stamp the message with.
///
/// - Ahead of schedule, it sleeps and returns when it woke: the timer's coarseness (about a
///   millisecond) is the generator's, not the broker's, and is not counted as latency.
/// - Behind schedule (a full window or a slow broker held earlier messages back) it returns
///   the due time, so the delay counts as latency instead of being hidden (no coordinated
///   omission). The wait for a window slot comes after the stamp for the same reason.
async fn send_time(clock: Clock, due_ns: u64) -> u64 {
    if clock.now_ns() >= due_ns {
        return due_ns;
    }
    tokio::time::sleep_until(clock.instant_at(due_ns).into()).await;
    clock.now_ns()
}

/// Polls the connection until every message is taken, an error, or the deadline. Returns the
/// outcome and whether the connection still works.
async fn drive(
    plan: &PublisherPlan,
    eventloop: &mut EventLoop,
    window: &Semaphore,
    counters: &Counters,
) -> (PublisherOutcome, bool) {
    let mut outcome = PublisherOutcome {
        index: plan.index,
        taken: SeqSet::new(plan.messages),
        written: 0,
        last_taken_ns: None,
        error: None,
    };
    // Packet id -> sequence number of the QoS 1 messages awaiting their PUBACK.
    let mut pending = std::collections::HashMap::with_capacity(plan.window);
    let take = |outcome: &mut PublisherOutcome, seq: u64| {
        if outcome.taken.insert(seq) == Some(true) {
            counters.published.fetch_add(1, Ordering::Relaxed);
            outcome.last_taken_ns = Some(plan.clock.now_ns());
        }
        window.add_permits(1);
    };
    while outcome.taken.len() < plan.messages {
        let event = match tokio::time::timeout_at(plan.deadline.into(), eventloop.poll()).await {
            Err(_) => return (outcome, true),
            Ok(Err(error)) => {
                outcome.error = Some(format!("publisher {}: {error}", plan.index));
                return (outcome, false);
            }
            Ok(Ok(event)) => event,
        };
        match event {
            // Messages leave in the order they were handed over (no reconnection here), so
            // the n-th written PUBLISH is sequence number n.
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let seq = outcome.written;
                outcome.written += 1;
                if plan.qos == QoS::AtMostOnce {
                    take(&mut outcome, seq);
                } else {
                    pending.insert(pkid, seq);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seq) = pending.remove(&ack.pkid) {
                    take(&mut outcome, seq);
                }
            }
            _ => {}
        }
    }
    (outcome, true)
}

/// How long a client may take to write its DISCONNECT.
pub const DISCONNECT_GRACE: Duration = Duration::from_secs(1);

/// Sends DISCONNECT and polls the connection until it is written (at most
/// [`DISCONNECT_GRACE`]), so the last messages are flushed and the broker sees a clean close.
pub async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let written = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    // Past the grace period the connection is dropped as it is.
    let _ = tokio::time::timeout(DISCONNECT_GRACE, written).await;
}
