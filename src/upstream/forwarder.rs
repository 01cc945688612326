//! The forwarder: the pump of the `$upstream` queue. It reads the queue in order (priority
//! first), sends each message on the link of its sender's identity, and acknowledges to the
//! store, in order, only what upstream acknowledged. When a send fails (no link yet, a link
//! down, no PUBACK in time) it rewinds and waits until a link comes up (or a short retry),
//! then sends again from the oldest unacknowledged message: at least once, in order per sender
//! and priority, and nothing is dropped because upstream is away. With live data first it
//! reads two queues, the live one first (see [`super::lanes`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::lanes::LiveLane;
use super::link::Publication;
use super::links::Links;
use super::settings::UpstreamSettings;
use super::status::UpstreamStatus;
use crate::identity::ClientIdentity;
use crate::in_flight::{InFlight, front_ack};
use crate::metrics::{DropReason, Metrics};
use crate::mqtt::topic::{encode_upstream_bag, telemetry};
use crate::record;
use crate::stop::Stop;
use router::message::system;

/// Messages sent upstream before waiting for their acknowledgements.
pub const WINDOW: usize = 64;
/// Payload bytes of one window, at most (at least one message is always sent).
const WINDOW_BYTES: usize = 4 * 1024 * 1024;
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
/// data first, the live one, read first.
#[derive(Debug)]
pub struct Lanes {
    /// The `$upstream` endpoint's queue: every message, or the backlog with live data first.
    pub backlog: store::Reader,
    /// The live queue, when it exists.
    pub live: Option<store::Reader>,
}

/// Which of the [`Lanes`] a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Backlog,
    Live,
}

impl Lanes {
    fn reader(&mut self, lane: Lane) -> &mut store::Reader {
        match (lane, self.live.as_mut()) {
            (Lane::Live, Some(live)) => live,
            _ => &mut self.backlog,
        }
    }

    /// Waits until the live queue has something to read.
    async fn live_ready(&self) {
        match self.live.as_ref() {
            Some(live) => live.ready().await,
            None => std::future::pending().await,
        }
    }

    fn rewind(&mut self) {
        self.backlog.rewind();
        if let Some(live) = self.live.as_mut() {
            live.rewind();
        }
    }
}

impl Forwarder {
    /// Runs until `stop`: reads the `$upstream` queues (the live one first) and forwards.
    pub async fn run(self, mut lanes: Lanes, mut stop: Stop) {
        let mut links_changed = self.links.link_up();
        // Sent and not acknowledged yet, in the order sent, each with the queue it came from
        // (acknowledgements to each queue stay in that queue's order).
        let mut in_flight: VecDeque<(Lane, InFlight)> = VecDeque::with_capacity(WINDOW);
        // After a failed send: wait for a link to come up before reading again.
        let mut paused = false;
        loop {
            self.status.set_in_flight(in_flight.len());
            let room = WINDOW - in_flight.len();
            let front_deadline = in_flight.front().map(|(_, f)| f.deadline);
            let ready = tokio::select! {
                biased;
                () = stop.stopped() => return,
                acked = front_ack(in_flight.front_mut().map(|(_, f)| f)), if front_deadline.is_some() => {
                    let (lane, front) = in_flight.pop_front().expect("a front entry was awaited");
                    if acked {
                        if let Err(e) = lanes.reader(lane).ack(front.id) {
                            tracing::error!(error = %e, "acknowledgement refused by the store");
                        }
                        if front.ack.is_some() {
                            self.status.forwarded();
                            self.lane.open();
                        }
                    } else {
                        if tokio::time::Instant::now() >= front.deadline {
                            // Sent and never acknowledged: the connection may be dead without
                            // knowing it (cut off without a reset); make it again.
                            self.links.recycle_stalled();
                        }
                        // Not sent or not acknowledged: everything after it goes again, in
                        // order, once a link is up; meanwhile new messages join the backlog.
                        self.lane.close();
                        in_flight.clear();
                        lanes.rewind();
                        paused = true;
                    }
                    continue;
                }
                () = lanes.live_ready(), if room > 0 && !paused => Lane::Live,
                () = lanes.backlog.ready(), if room > 0 && !paused => Lane::Backlog,
                changed = links_changed.changed(), if paused => {
                    if changed.is_ok() {
                        paused = false;
                    }
                    continue;
                }
                () = tokio::time::sleep(RETRY), if paused => {
                    paused = false;
                    continue;
                }
            };
            let batch = match lanes.reader(ready).read(room, WINDOW_BYTES) {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::info!(error = %e, "upstream forwarder stops");
                    return;
                }
            };
            if batch.is_empty() {
                tokio::time::sleep(READ_RETRY).await;
                continue;
            }
            let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
            for entry in batch {
                let ack = self.send(&entry);
                in_flight.push_back((
                    ready,
                    InFlight {
                        id: entry.id,
                        ack,
                        deadline,
                    },
                ));
            }
        }
    }

    /// Sends one stored message on its sender's link (opened if needed); the receiver of its
    /// acknowledgement, already failed when it could not be sent, or `None` for a record that
    /// cannot be sent at all (dropped and counted).
    fn send(&self, entry: &store::Entry) -> Option<oneshot::Receiver<()>> {
        let message = match record::decode(&entry.payload) {
            Ok(message) => message,
            Err(e) => {
                tracing::error!(error = %e, "stored message unreadable; dropped");
                self.metrics.dropped(DropReason::Unreadable);
                return None;
            }
        };
        let Some(device) = message.system_properties.get(system::CONNECTION_DEVICE_ID) else {
            tracing::error!("stored message without a sender; dropped");
            self.metrics.dropped(DropReason::Unreadable);
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
        let (acked, ack) = oneshot::channel();
        let link = self.links.get(&sender);
        // When the link cannot take it, the publication (and `acked`) is dropped: the
        // acknowledgement fails at once and the forwarder rewinds.
        link.publish(Publication {
            topic,
            payload: message.body,
            acked,
        });
        Some(ack)
    }
}
