//! Delivery pumps: one task per module input endpoint, moving messages from the store to the
//! module's connection.
//!
//! A pump waits until its module is connected and subscribed to its inputs, reads a window of
//! messages (priority first, then FIFO), publishes them all, then acknowledges them in order
//! as the module's PUBACKs come back. A missing PUBACK (timeout, or the connection went away)
//! rewinds the reader: the unacknowledged messages are sent again, in order, marked DUP, when
//! the module is back (at-least-once; the legacy hub sends one message at a time).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::hub::Shared;
use crate::metrics::DropReason;
use crate::mqtt::session::Outbound;
use crate::mqtt::topic::{encode_bag, module_input_topic};
use crate::stored;

/// Messages published to a module before waiting for their acknowledgements.
pub const WINDOW: usize = 32;
/// Payload bytes of one window, at most (at least one message is always sent).
const WINDOW_BYTES: usize = 1024 * 1024;
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
pub async fn pump(
    shared: Arc<Shared>,
    target: ModuleInput,
    mut reader: store::Reader,
    mut stop: watch::Receiver<bool>,
) {
    let client_id = format!("{}/{}", target.device, target.module);
    let probe = module_input_topic(&target.device, &target.module, &target.input, "");
    let mut changes = shared.sessions.watch(&client_id);
    let mut redelivery = false;
    loop {
        let Some((link, qos)) = shared.sessions.route(&client_id, &probe) else {
            tokio::select! {
                _ = changes.changed() => continue,
                _ = stop.changed() => return,
            }
        };
        tokio::select! {
            () = reader.ready() => {}
            _ = changes.changed() => continue,
            _ = stop.changed() => return,
        }
        let batch = match reader.read(WINDOW, WINDOW_BYTES) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::info!(endpoint = %target.endpoint, error = %e, "delivery pump stops");
                return;
            }
        };
        let mut awaiting = Vec::with_capacity(batch.len());
        let mut complete = true;
        for entry in batch {
            let message = match stored::decode(&entry.payload) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(endpoint = %target.endpoint, error = %e, "stored message unreadable; dropped");
                    shared.metrics.dropped(DropReason::Unreadable);
                    awaiting.push((entry.id, None));
                    continue;
                }
            };
            let bag = encode_bag(&message.properties, &message.system_properties);
            let (acked, ack) = oneshot::channel();
            let outbound = Outbound {
                topic: module_input_topic(&target.device, &target.module, &target.input, &bag),
                payload: message.body,
                qos,
                dup: redelivery,
                acked,
            };
            if link.outbox.send(outbound).await.is_err() {
                complete = false;
                break;
            }
            awaiting.push((entry.id, Some(ack)));
        }
        for (id, ack) in awaiting {
            if let Some(ack) = ack
                && !matches!(tokio::time::timeout(ACK_TIMEOUT, ack).await, Ok(Ok(())))
            {
                complete = false;
                break;
            }
            if let Err(e) = reader.ack(id) {
                tracing::error!(endpoint = %target.endpoint, error = %e, "acknowledgement refused by the store");
            }
        }
        redelivery = !complete;
        if !complete {
            reader.rewind();
        }
    }
}
