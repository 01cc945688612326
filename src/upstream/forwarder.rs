//! The forwarder: the pump of the `$upstream` queue. It reads the queue in order (priority
//! first), sends each message on the link of its sender's identity, and acknowledges to the
//! store, in order, only what upstream acknowledged. When a send fails (no link yet, a link
//! down, no PUBACK in time) it rewinds and waits until a link comes up (or a short retry),
//! then sends again from the oldest unacknowledged message: at least once, in order per sender
//! and priority, and nothing is dropped because upstream is away.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::link::{Link, Publication};
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
}

impl Forwarder {
    /// Runs until `stop`: reads `reader` (the `$upstream` queue) and forwards.
    pub async fn run(self, mut reader: store::Reader, mut stop: Stop) {
        let (link_up, mut links_changed) = watch::channel(0u64);
        let mut links: HashMap<ClientIdentity, Link> = HashMap::new();
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(WINDOW);
        // After a failed send: wait for a link to come up before reading again.
        let mut paused = false;
        loop {
            self.status.set_in_flight(in_flight.len());
            let room = WINDOW - in_flight.len();
            let front_deadline = in_flight.front().map(|f| f.deadline);
            tokio::select! {
                () = reader.ready(), if room > 0 && !paused => {
                    let batch = match reader.read(room, WINDOW_BYTES) {
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
                    links.retain(|_, link| link.is_alive());
                    let deadline = tokio::time::Instant::now() + ACK_TIMEOUT;
                    for entry in batch {
                        let ack = self.send(&entry, &mut links, &link_up, &stop);
                        in_flight.push_back(InFlight { id: entry.id, ack, deadline });
                    }
                }
                acked = front_ack(in_flight.front_mut()), if front_deadline.is_some() => {
                    let front = in_flight.pop_front().expect("a front entry was awaited");
                    if acked {
                        if let Err(e) = reader.ack(front.id) {
                            tracing::error!(error = %e, "acknowledgement refused by the store");
                        }
                        if front.ack.is_some() {
                            self.status.forwarded();
                        }
                    } else {
                        // Not sent or not acknowledged: everything after it goes again, in
                        // order, once a link is up.
                        in_flight.clear();
                        reader.rewind();
                        paused = true;
                    }
                }
                changed = links_changed.changed(), if paused => {
                    if changed.is_ok() {
                        paused = false;
                    }
                }
                () = tokio::time::sleep(RETRY), if paused => paused = false,
                () = stop.stopped() => return,
            }
        }
    }

    /// Sends one stored message on its sender's link (opened if needed); the receiver of its
    /// acknowledgement, already failed when it could not be sent, or `None` for a record that
    /// cannot be sent at all (dropped and counted).
    fn send(
        &self,
        entry: &store::Entry,
        links: &mut HashMap<ClientIdentity, Link>,
        link_up: &watch::Sender<u64>,
        stop: &Stop,
    ) -> Option<oneshot::Receiver<()>> {
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
        let link = links.entry(sender.clone()).or_insert_with(|| {
            Link::start(
                sender,
                Arc::clone(&self.settings),
                Arc::clone(&self.status),
                link_up.clone(),
                stop.clone(),
            )
        });
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
