//! One subscribing client: subscribes, then records every message it receives (which stream,
//! which sequence number, how long after it was sent) until told to stop.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::{oneshot, watch};

use super::Counters;
use super::accounting::{Receipt, StreamReceipts};
use super::clock::Clock;
use super::payload::Header;
use super::publisher::disconnect;

/// What one subscriber is to do.
#[derive(Debug)]
pub struct SubscriberPlan {
    /// The subscriber's index.
    pub index: u32,
    /// Its MQTT options.
    pub options: MqttOptions,
    /// The filters it subscribes to.
    pub filters: Vec<String>,
    /// The subscriptions' QoS.
    pub qos: QoS,
    /// The publishers it should hear.
    pub senders: Vec<u32>,
    /// How many messages each publisher sends.
    pub messages: u64,
    /// The run's id: messages of other runs are counted as stale, not delivered.
    pub run_id: u32,
    /// The run's clock.
    pub clock: Clock,
    /// When it gives up subscribing.
    pub deadline: Instant,
}

/// What a subscriber saw.
#[derive(Debug)]
pub struct SubscriberOutcome {
    /// The subscriber's index.
    pub index: u32,
    /// Its receipts, by sender.
    pub streams: HashMap<u32, StreamReceipts>,
    /// Publish-to-delivery latency of first receipts, in ns.
    pub latency: Histogram<u64>,
    /// Messages of an earlier run (left queued in the broker).
    pub stale: u64,
    /// Payloads that are not load messages, or come from a publisher it should not hear.
    pub foreign: u64,
    /// When the last first receipt arrived, in ns of the run's clock.
    pub last_delivery_ns: Option<u64>,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// The highest latency the histograms record exactly (an hour); higher values are clamped.
const MAX_LATENCY_NS: u64 = 3_600 * 1_000_000_000;

/// An empty latency histogram: 1 ns to an hour, 3 significant digits.
#[must_use]
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .expect("1 ns to an hour at 3 significant digits are valid bounds")
}

/// Connects and subscribes, reports readiness (or why not) on `ready`, then receives until
/// `stop` turns true.
pub async fn subscribe(
    plan: SubscriberPlan,
    counters: Arc<Counters>,
    ready: oneshot::Sender<Result<(), String>>,
    mut stop: watch::Receiver<bool>,
) -> SubscriberOutcome {
    let mut outcome = SubscriberOutcome {
        index: plan.index,
        streams: plan
            .senders
            .iter()
            .map(|&sender| (sender, StreamReceipts::new(plan.messages)))
            .collect(),
        latency: latency_histogram(),
        stale: 0,
        foreign: 0,
        last_delivery_ns: None,
        error: None,
    };
    // Room for every SUBSCRIBE (sent before the event loop runs) and the DISCONNECT.
    let capacity = plan.filters.len() + 2;
    let (client, mut eventloop) = super::connect::client(plan.options.clone(), capacity);
    if let Err(reason) =
        subscribe_all(&plan, &client, &mut eventloop, &counters, &mut outcome).await
    {
        let _ = ready.send(Err(reason.clone()));
        outcome.error = Some(reason);
        return outcome;
    }
    let _ = ready.send(Ok(()));
    loop {
        let event = tokio::select! {
            changed = stop.wait_for(|stop| *stop) => {
                let _ = changed;
                break;
            }
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                receive(&plan, &counters, &mut outcome, &publish.payload);
            }
            Ok(_) => {}
            Err(error) => {
                outcome.error = Some(format!("subscriber {}: {error}", plan.index));
                return outcome;
            }
        }
    }
    disconnect(&client, &mut eventloop).await;
    outcome
}

/// Sends the subscriptions and waits for their SUBACKs. Messages arriving meanwhile are
/// recorded: those of this run as deliveries (a queue drained as soon as the subscriber
/// subscribes, in the drain phase of a run), the others as stale.
async fn subscribe_all(
    plan: &SubscriberPlan,
    client: &AsyncClient,
    eventloop: &mut EventLoop,
    counters: &Counters,
    outcome: &mut SubscriberOutcome,
) -> Result<(), String> {
    let index = plan.index;
    for filter in &plan.filters {
        client
            .try_subscribe(filter.as_str(), plan.qos)
            .map_err(|e| format!("subscriber {index}: subscribing to {filter}: {e}"))?;
    }
    let mut acknowledged = 0;
    while acknowledged < plan.filters.len() {
        match tokio::time::timeout_at(plan.deadline.into(), eventloop.poll()).await {
            Err(_) => return Err(format!("subscriber {index}: no SUBACK before the deadline")),
            Ok(Err(error)) => return Err(format!("subscriber {index}: {error}")),
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                if super::connect::refuses(&ack) {
                    return Err(format!("subscriber {index}: a subscription was refused"));
                }
                acknowledged += 1;
            }
            Ok(Ok(Event::Incoming(Packet::Publish(publish)))) => {
                match Header::decode(&publish.payload) {
                    Ok(header) if header.run_id == plan.run_id => {
                        receive(plan, counters, outcome, &publish.payload);
                    }
                    Ok(_) => outcome.stale += 1,
                    Err(_) => {}
                }
            }
            Ok(Ok(_)) => {}
        }
    }
    Ok(())
}

/// Records one received payload.
fn receive(
    plan: &SubscriberPlan,
    counters: &Counters,
    outcome: &mut SubscriberOutcome,
    payload: &[u8],
) {
    let now_ns = plan.clock.now_ns();
    let Ok(header) = Header::decode(payload) else {
        outcome.foreign += 1;
        return;
    };
    if header.run_id != plan.run_id {
        outcome.stale += 1;
        return;
    }
    let Some(stream) = outcome.streams.get_mut(&header.sender) else {
        outcome.foreign += 1;
        return;
    };
    match stream.record(header.seq) {
        Receipt::First | Receipt::Reordered => {
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            outcome.last_delivery_ns = Some(now_ns);
            let latency = now_ns
                .saturating_sub(header.sent_at_ns)
                .clamp(1, MAX_LATENCY_NS);
            outcome.latency.saturating_record(latency);
        }
        Receipt::Duplicate | Receipt::OutOfRange => {}
    }
}
