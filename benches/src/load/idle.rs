//! Idle clients (`--idle-clients`): modules that connect, subscribe to their own inputs and
//! stay connected through the run without sending anything, so that a few others carry the
//! load among many connections. At most a bounded number of them are connecting at once
//! ([`super::Extras::connect_concurrency`]): a broker's accept backlog is not what is measured.

use std::sync::Arc;
use std::time::Instant;

use rumqttc::{ConnectionError, Event, MqttOptions, Packet, QoS};
use tokio::sync::{Semaphore, oneshot, watch};

use super::publisher::disconnect;

/// The module name (hub) or client id (plain) of idle client `index`.
#[must_use]
pub fn idle_module(index: u32) -> String {
    format!("load-idle-{index}")
}

/// The filter idle client `index` subscribes to in plain mode (no one publishes on it).
#[must_use]
pub fn plain_idle_filter(index: u32) -> String {
    format!("load/idle/{index}")
}

/// What one idle client is to do.
#[derive(Debug)]
pub struct IdlePlan {
    /// The client's index.
    pub index: u32,
    /// Its MQTT options.
    pub options: MqttOptions,
    /// The filter it subscribes to.
    pub filter: String,
    /// When it gives up connecting.
    pub deadline: Instant,
}

/// Why a client did not get connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectFailure {
    /// The broker answered the CONNECT with a refusal (or refused the subscription).
    pub refused: bool,
    /// What happened.
    pub reason: String,
}

/// What an idle client went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleOutcome {
    /// The client's index.
    pub index: u32,
    /// Why it did not get connected and subscribed, if it did not.
    pub failure: Option<ConnectFailure>,
    /// Why the connection ended before the run did, if it did.
    pub dropped: Option<String>,
    /// Messages it received (none is routed to it).
    pub messages: u64,
}

/// Connects (holding a permit of `gate` until subscribed), reports on `ready`, then keeps the
/// connection alive until `stop` turns true, and disconnects.
pub async fn hold(
    plan: IdlePlan,
    gate: Arc<Semaphore>,
    ready: oneshot::Sender<Result<(), ConnectFailure>>,
    mut stop: watch::Receiver<bool>,
) -> IdleOutcome {
    let mut outcome = IdleOutcome {
        index: plan.index,
        failure: None,
        dropped: None,
        messages: 0,
    };
    // The SUBSCRIBE and the DISCONNECT.
    let (client, mut eventloop) = super::connect::client(plan.options.clone(), 4);
    let connected = {
        let Ok(_permit) = gate.acquire().await else {
            return outcome;
        };
        match client.try_subscribe(plan.filter.as_str(), QoS::AtLeastOnce) {
            Ok(()) => subscribe(&plan, &mut eventloop, &mut outcome.messages).await,
            Err(e) => Err(ConnectFailure {
                refused: false,
                reason: format!("idle client {}: {e}", plan.index),
            }),
        }
    };
    if let Err(failure) = connected {
        let _ = ready.send(Err(failure.clone()));
        outcome.failure = Some(failure);
        return outcome;
    }
    let _ = ready.send(Ok(()));
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(_))) => outcome.messages += 1,
                Ok(_) => {}
                Err(error) => {
                    outcome.dropped = Some(format!("idle client {}: {error}", plan.index));
                    return outcome;
                }
            },
        }
    }
    disconnect(&client, &mut eventloop).await;
    outcome
}

/// Polls the connection until the SUBACK (the CONNECT goes first), an error or the deadline.
async fn subscribe(
    plan: &IdlePlan,
    eventloop: &mut rumqttc::EventLoop,
    messages: &mut u64,
) -> Result<(), ConnectFailure> {
    let index = plan.index;
    let failed = |refused: bool, reason: String| ConnectFailure {
        refused,
        reason: format!("idle client {index}: {reason}"),
    };
    loop {
        match tokio::time::timeout_at(plan.deadline.into(), eventloop.poll()).await {
            Err(_) => return Err(failed(false, "not subscribed before the deadline".into())),
            Ok(Err(error @ ConnectionError::ConnectionRefused(_))) => {
                return Err(failed(true, error.to_string()));
            }
            Ok(Err(error)) => return Err(failed(false, error.to_string())),
            Ok(Ok(Event::Incoming(Packet::SubAck(ack)))) => {
                if super::connect::refuses(&ack) {
                    return Err(failed(true, "the subscription was refused".into()));
                }
                return Ok(());
            }
            Ok(Ok(Event::Incoming(Packet::Publish(_)))) => *messages += 1,
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_clients_have_names_of_their_own() {
        assert_eq!(idle_module(12), "load-idle-12");
        assert_eq!(plain_idle_filter(3), "load/idle/3");
        assert_ne!(idle_module(0), super::super::topology::publisher_module(0));
    }
}
