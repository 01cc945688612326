//! Delivery pumps: one task per module input endpoint, moving messages from the store to the
//! module's connection.
//!
//! A pump waits until its module is connected and subscribed to its inputs, then keeps a
//! sliding window of messages in flight (priority first, then FIFO), acknowledging them to the
//! store in order as the module's PUBACKs come back. A missing PUBACK (timeout, or the connection went away)
//! rewinds the reader: the unacknowledged messages are sent again, in order, marked DUP, when
//! the module is back (at-least-once; the legacy hub sends one message at a time).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::in_flight::{InFlight, front_ack};
use crate::metrics::{DropReason, Metrics};
use crate::mqtt::limits::check_publish;
use crate::mqtt::session::{Outbound, Sessions};
use crate::mqtt::topic::{encode_bag, module_input_prefix};
use crate::record;
use crate::stop::Stop;

/// Messages published to a module before waiting for their acknowledgements.
pub const WINDOW: usize = 32;
/// Payload bytes of one window, at most (at least one message is always sent).
const WINDOW_BYTES: usize = 1024 * 1024;
/// How long a pump waits before reading again when a read found nothing it could deliver.
const READ_RETRY: Duration = Duration::from_millis(5);
/// How long a module has to acknowledge a message before it is sent again.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A module input endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInput {
    /// The store's endpoint id: `{device}/{module}/{input}`.
    pub endpoint: String,
    /// The edge device.
    pub device: String,
    /// The target module.
    pub module: String,
    /// The target input.
    pub input: String,
}

/// Runs the pump of one module input until `stop` turns true or the endpoint is removed.
///
/// A sliding window: up to [`WINDOW`] messages are in flight; each acknowledgement, taken in
/// order, lets one more go. A missed one rewinds the reader and starts over from it.
pub async fn pump(
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    target: ModuleInput,
    mut reader: store::Reader,
    mut stop: Stop,
) {
    let client_id = format!("{}/{}", target.device, target.module);
    // The input topic without its property bag; also what the session's filters are matched
    // against.
    let topic_prefix = module_input_prefix(&target.device, &target.module, &target.input);
    let mut changes = sessions.watch(&client_id);
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(WINDOW);
    let mut redelivery = false;
    // Where to deliver, looked up again only when the session changed (it is not cheap:
    // a lock and topic-filter matching).
    let mut route = None;
    let mut stale = true;
    loop {
        if stale || changes.has_changed().unwrap_or(true) {
            changes.borrow_and_update();
            route = sessions.route(&client_id, &topic_prefix);
            stale = false;
        }
        let Some((link, qos)) = &route else {
            // Whatever was in flight went with the connection: send it again later.
            if !in_flight.is_empty() {
                in_flight.clear();
                reader.rewind();
                redelivery = true;
            }
            tokio::select! {
                _ = changes.changed() => {
                    stale = true;
                    continue;
                }
                () = stop.stopped() => return,
            }
        };
        let qos = *qos;
        let room = WINDOW - in_flight.len();
        let front_deadline = in_flight.front().map(|f| f.deadline);
        tokio::select! {
            () = reader.ready(), if room > 0 => {
                let batch = match reader.read(room, WINDOW_BYTES) {
                    Ok(batch) => batch,
                    Err(e) => {
                        tracing::info!(endpoint = %target.endpoint, error = %e, "delivery pump stops");
                        return;
                    }
                };
                if batch.is_empty() {
                    // Something is waiting but could not be read now (its epoch is being
                    // opened, or it expired meanwhile): look again in a moment, not at once.
                    tokio::time::sleep(READ_RETRY).await;
                    continue;
                }
                // One burst for the batch: the connection writes it with one flush.
                let mut burst = Vec::with_capacity(batch.len());
                let mut acks = Vec::with_capacity(batch.len());
                for entry in batch {
                    let ack = match outbound(&metrics, &target, &topic_prefix, qos, &entry, redelivery) {
                        Some((outbound, ack)) => {
                            burst.push(outbound);
                            Some(ack)
                        }
                        None => None,
                    };
                    acks.push((entry.id, ack));
                }
                // A closed outbox drops the acks' senders: they are missed and the reader
                // rewinds. So does a session change while the outbox is full (a takeover: the
                // old connection may never read it again).
                if !burst.is_empty() {
                    tokio::select! {
                        _ = link.outbox.send(burst) => {}
                        _ = changes.changed() => stale = true,
                        () = stop.stopped() => return,
                    }
                }
                // The module's time to acknowledge starts once the burst is handed over.
                let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
                in_flight.extend(acks.into_iter().map(|(id, ack)| InFlight { id, ack, deadline }));
            }
            acked = front_ack(in_flight.front_mut()), if front_deadline.is_some() => {
                let front = in_flight.pop_front().expect("a front entry was awaited");
                if acked {
                    if let Err(e) = reader.ack(front.id) {
                        tracing::error!(endpoint = %target.endpoint, error = %e, "acknowledgement refused by the store");
                    }
                    redelivery = false;
                } else {
                    in_flight.clear();
                    reader.rewind();
                    redelivery = true;
                }
            }
            _ = changes.changed() => stale = true,
            () = stop.stopped() => return,
        }
    }
}

/// The publication of one stored message to the module, and the receiver of its
/// acknowledgement; `None` when the record is unreadable (it is dropped and counted).
fn outbound(
    metrics: &Metrics,
    target: &ModuleInput,
    topic_prefix: &str,
    qos: rumqttc::QoS,
    entry: &store::Entry,
    dup: bool,
) -> Option<(Outbound, oneshot::Receiver<()>)> {
    let message = match record::decode_for_delivery(&entry.payload, encode_bag) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(endpoint = %target.endpoint, error = %e, "stored message unreadable; dropped");
            metrics.dropped(DropReason::Unreadable);
            return None;
        }
    };
    // Ingest refuses such messages; one stored by an older build, or before a limit changed,
    // must not hold the queue behind it either.
    if let Err(e) = check_publish(topic_prefix.len() + message.bag.len(), message.body.len()) {
        tracing::error!(endpoint = %target.endpoint, error = %e, "stored message undeliverable; dropped");
        metrics.dropped(DropReason::Undeliverable);
        return None;
    }
    let mut topic = String::with_capacity(topic_prefix.len() + message.bag.len());
    topic.push_str(topic_prefix);
    topic.push_str(&message.bag);
    let (acked, ack) = oneshot::channel();
    let outbound = Outbound {
        topic,
        payload: message.body,
        qos,
        dup,
        acked,
    };
    Some((outbound, ack))
}
