//! One MQTT connection upstream for one identity (decision D8), opened when first needed,
//! closed when idle, renewed before its token expires, reconnected with jittered exponential
//! back-off.
//!
//! A link is a task that owns a rumqttc event loop. It takes publications from its owners
//! (the forwarder, the [`super::mirror`]) and completes each one's acknowledgement when
//! upstream's PUBACK comes; it keeps the subscriptions its owners ask for on every connection
//! (a link with subscriptions never idles out), and hands what upstream publishes to it (twin
//! answers, desired patches, method calls) to its `inbound` channel. It
//! correlates by order: rumqttc sends the requests of one event loop in the order they were
//! made and reports each as `Outgoing::Publish(pkid)`; a connection that fails is dropped
//! whole (no rumqttc replay), failing everything in flight, so the forwarder puts this
//! identity's messages back and sends them again once a link is up: at least once, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, Transport};
use tokio::sync::{mpsc, oneshot, watch};

use super::backoff::Backoff;
use super::settings::{Login, UpstreamSettings};
use super::status::UpstreamStatus;
use crate::identity::ClientIdentity;
use crate::stop::Stop;

/// Subscribed on every connection: the answers to twin requests.
const TWIN_RESPONSES: &str = super::from_upstream::subscriptions::TWIN_RESPONSES;
/// Publications a link holds before it is connected or while they wait for rumqttc.
const QUEUE: usize = 256;
/// MQTT keep-alive of a link: a connection that died silently is noticed within about 1.5
/// times this.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// First and longest wait between attempts to connect: the cap bounds how long a link that
/// came back stays unused (a parent that returns is found within 15 s).
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(15);

/// A publication for upstream.
#[derive(Debug)]
pub struct Publication {
    /// The topic (`devices/{d}[/modules/{m}]/messages/events/{bag}`).
    pub topic: String,
    /// The body.
    pub payload: Bytes,
    /// Completed when upstream acknowledged it; dropped if the connection failed first.
    pub acked: oneshot::Sender<()>,
}

/// What upstream sent on a link, for the owner of its `inbound` channel.
#[derive(Debug)]
pub enum Inbound {
    /// The link of `identity` connected (again): its subscriptions are in place.
    Connected(ClientIdentity),
    /// Upstream published `payload` on `topic` to `identity`.
    Publish {
        /// Whose link it came on.
        identity: ClientIdentity,
        /// The topic, e.g. `$iothub/methods/POST/reset/?$rid=1`.
        topic: String,
        /// The body.
        payload: Bytes,
    },
}

/// What an owner asks of a link.
#[derive(Debug)]
enum Command {
    Publish(Publication),
    /// Keep exactly these subscriptions (an empty set lets the link close when idle).
    Subscriptions(Vec<String>),
    /// Upstream let a publication wait too long: if this connection has any in flight, it is
    /// dropped and made again (a link cut off without a reset looks alive for minutes).
    Recycle,
}

/// A handle of a link; clones share it. The link's task ends when idle, when the hub stops, or
/// when every handle is dropped.
#[derive(Debug, Clone)]
pub struct Link {
    commands: mpsc::Sender<Command>,
    connected: watch::Receiver<bool>,
}

impl Link {
    /// Starts the link task of `identity`; it connects at once and bumps `link_up` every time
    /// it connects. What upstream publishes to it goes to `inbound` (dropped, and logged, when
    /// that channel is full). It ends when idle, when `stop` fires, or when every handle is
    /// dropped.
    pub fn start(
        identity: ClientIdentity,
        settings: Arc<UpstreamSettings>,
        status: Arc<UpstreamStatus>,
        link_up: watch::Sender<u64>,
        inbound: mpsc::Sender<Inbound>,
        stop: Stop,
    ) -> Self {
        let (commands, queue) = mpsc::channel(QUEUE);
        let (connected_tx, connected) = watch::channel(false);
        let task = LinkTask {
            identity,
            settings,
            status,
            link_up,
            connected: connected_tx,
            queue,
            inbound,
            subscriptions: Vec::new(),
            stop,
        };
        tokio::spawn(task.run());
        Self {
            commands,
            connected,
        }
    }

    /// Whether the link's task still runs (it ends when idle).
    pub fn is_alive(&self) -> bool {
        !self.commands.is_closed()
    }

    /// Keeps exactly `topics` subscribed upstream, on this connection and every later one; a
    /// link with subscriptions stays open. `false` when the link is gone or full.
    pub fn subscribe(&self, topics: Vec<String>) -> bool {
        self.commands
            .try_send(Command::Subscriptions(topics))
            .is_ok()
    }

    /// Drops the connection and makes it again if publications wait on it (see
    /// [`Command::Recycle`]); `false` when the link is gone or full.
    pub fn recycle_if_stalled(&self) -> bool {
        self.commands.try_send(Command::Recycle).is_ok()
    }

    /// Publishes a request (a twin GET or patch, a method's answer) at QoS 1, without waiting
    /// for its acknowledgement: `false` when the link is not connected, gone or full.
    pub fn request(&self, topic: String, payload: Bytes) -> bool {
        let (acked, _) = oneshot::channel();
        self.publish(Publication {
            topic,
            payload,
            acked,
        })
    }

    /// Whether the link is connected now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Follows whether the link is connected.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Hands a publication to the link: `false` (and the publication dropped, so its
    /// acknowledgement fails) when the link is not connected, is gone, or is full.
    pub fn publish(&self, publication: Publication) -> bool {
        self.is_connected()
            && self
                .commands
                .try_send(Command::Publish(publication))
                .is_ok()
    }
}

struct LinkTask {
    identity: ClientIdentity,
    settings: Arc<UpstreamSettings>,
    status: Arc<UpstreamStatus>,
    link_up: watch::Sender<u64>,
    connected: watch::Sender<bool>,
    queue: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<Inbound>,
    /// The subscriptions made on every connection.
    subscriptions: Vec<String>,
    stop: Stop,
}

/// Why a connection ended.
enum Ended {
    /// Idle, stopped, or the owner went away: the link closes.
    Done,
    /// The token is about to expire: reconnect at once with a fresh one.
    Renew,
    /// The connection failed: reconnect after a back-off.
    Failed(String),
}

impl LinkTask {
    async fn run(mut self) {
        let client_id = super::settings::client_id(&self.identity);
        let seed = client_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP, seed ^ now_nanos());
        loop {
            let ended = match self
                .settings
                .credentials
                .login(&self.identity, SystemTime::now())
            {
                Ok(login) => self.connection(&login, &mut backoff).await,
                Err(e) => Ended::Failed(format!("no credentials: {e:#}")),
            };
            self.connected.send_replace(false);
            match ended {
                Ended::Done => {
                    self.status.link_closed(&client_id);
                    return;
                }
                Ended::Renew => {}
                Ended::Failed(reason) => {
                    let delay = backoff.next_delay();
                    self.status.link_failed(&client_id, &reason);
                    tracing::warn!(%client_id, %reason, retry_in = ?delay, "upstream connection failed");
                    // Publications queued meanwhile cannot be sent: fail them now (the latest
                    // subscriptions are kept for the next connection).
                    while let Ok(command) = self.queue.try_recv() {
                        if let Command::Subscriptions(topics) = command {
                            self.subscriptions = topics;
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.stop.stopped() => return,
                    }
                }
            }
        }
    }

    /// One connection: CONNECT, then publications and acknowledgements until it ends.
    async fn connection(&mut self, login: &Login, backoff: &mut Backoff) -> Ended {
        let (client, mut events) = AsyncClient::new(self.options(login), QUEUE);
        // Until the CONNACK.
        let connack = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        });
        tokio::select! {
            result = connack => match result {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => return Ended::Failed(reason),
                Err(_) => return Ended::Failed("no CONNACK within 20 s".to_owned()),
            },
            () = self.stop.stopped() => return Ended::Done,
        }
        backoff.reset();
        // Answers to twin requests, on every link (they do not keep a link open).
        if let Err(e) = client.try_subscribe(TWIN_RESPONSES, QoS::AtLeastOnce) {
            return Ended::Failed(format!("rumqttc refused a subscription: {e}"));
        }
        for topic in &self.subscriptions {
            if let Err(e) = client.try_subscribe(topic.as_str(), QoS::AtLeastOnce) {
                return Ended::Failed(format!("rumqttc refused a subscription: {e}"));
            }
        }
        self.connected.send_replace(true);
        self.status.link_connected(&login.client_id);
        self.deliver(Inbound::Connected(self.identity.clone()));
        self.link_up.send_modify(|n| *n += 1);
        tracing::info!(client_id = %login.client_id, host = %self.settings.host, "upstream connection up");
        let idle_timeout = self.settings.idle_timeout;
        let renew_at = login
            .expires
            .checked_sub(self.settings.renew_before)
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        let renew = tokio::time::sleep(renew_at);
        tokio::pin!(renew);
        let mut flow = Flow::default();
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                command = self.queue.recv() => {
                    let Some(command) = command else {
                        let _ = client.try_disconnect();
                        return Ended::Done;
                    };
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    if let Err(reason) = self.command(&client, command, &mut flow) {
                        return Ended::Failed(reason);
                    }
                }
                event = events.poll() => match event {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => flow.sent(pkid),
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        flow.acknowledged(ack.pkid);
                        idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                        self.deliver(Inbound::Publish {
                            identity: self.identity.clone(),
                            topic: publish.topic,
                            payload: publish.payload,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => return Ended::Failed(e.to_string()),
                },
                () = &mut renew => {
                    tracing::info!(client_id = %login.client_id, "upstream token about to expire; connecting again with a new one");
                    let _ = client.try_disconnect();
                    return Ended::Renew;
                }
                () = &mut idle, if flow.is_empty() && self.subscriptions.is_empty() => {
                    let _ = client.try_disconnect();
                    tracing::info!(client_id = %login.client_id, "upstream connection idle; closed");
                    return Ended::Done;
                }
                () = self.stop.stopped() => {
                    let _ = client.try_disconnect();
                    return Ended::Done;
                }
            }
        }
    }

    /// Carries out an owner's command on the connection; `Err` when rumqttc refuses it.
    fn command(
        &mut self,
        client: &AsyncClient,
        command: Command,
        flow: &mut Flow,
    ) -> Result<(), String> {
        match command {
            Command::Publish(publication) => {
                client
                    .try_publish(
                        publication.topic,
                        QoS::AtLeastOnce,
                        false,
                        publication.payload.to_vec(),
                    )
                    .map_err(|e| format!("rumqttc refused a publication: {e}"))?;
                flow.requested.push_back(publication.acked);
            }
            Command::Recycle => {
                if !flow.is_empty() {
                    return Err("upstream did not acknowledge in time".to_owned());
                }
            }
            Command::Subscriptions(topics) => {
                for topic in topics.iter().filter(|t| !self.subscriptions.contains(t)) {
                    client
                        .try_subscribe(topic.as_str(), QoS::AtLeastOnce)
                        .map_err(|e| format!("rumqttc refused a subscription: {e}"))?;
                }
                for topic in self.subscriptions.iter().filter(|t| !topics.contains(t)) {
                    client
                        .try_unsubscribe(topic.as_str())
                        .map_err(|e| format!("rumqttc refused an unsubscription: {e}"))?;
                }
                self.subscriptions = topics;
            }
        }
        Ok(())
    }

    /// Hands what came from upstream to the link's owner; dropped when the owner lags.
    fn deliver(&self, inbound: Inbound) {
        if let Err(e) = self.inbound.try_send(inbound) {
            tracing::warn!(identity = %self.identity, error = %e, "upstream request dropped: its handler lags");
        }
    }

    fn options(&self, login: &Login) -> MqttOptions {
        let mut options =
            MqttOptions::new(&login.client_id, &self.settings.host, self.settings.port);
        options.set_credentials(&login.username, &login.password);
        options.set_clean_session(true);
        options.set_keep_alive(KEEP_ALIVE);
        options.set_max_packet_size(
            crate::mqtt::limits::MAX_PACKET,
            crate::mqtt::limits::MAX_PACKET,
        );
        options.set_inflight(64);
        options.set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::clone(&self.settings.tls)),
        ));
        options
    }
}

/// The publications of one connection: requested (waiting for rumqttc to send them, in
/// order) and in flight (sent, by packet id, waiting for the PUBACK).
#[derive(Default)]
struct Flow {
    requested: VecDeque<oneshot::Sender<()>>,
    in_flight: HashMap<u16, oneshot::Sender<()>>,
}

impl Flow {
    /// rumqttc sent the oldest requested publication with `pkid`.
    fn sent(&mut self, pkid: u16) {
        if let Some(acked) = self.requested.pop_front() {
            self.in_flight.insert(pkid, acked);
        }
    }

    /// Upstream acknowledged `pkid`.
    fn acknowledged(&mut self, pkid: u16) {
        if let Some(acked) = self.in_flight.remove(&pkid) {
            let _ = acked.send(());
        }
    }

    fn is_empty(&self) -> bool {
        self.requested.is_empty() && self.in_flight.is_empty()
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_follow_the_order_publications_were_sent_in() {
        let mut flow = Flow::default();
        let (a, mut a_acked) = oneshot::channel();
        let (b, mut b_acked) = oneshot::channel();
        flow.requested.extend([a, b]);
        flow.sent(7);
        flow.sent(8);
        flow.acknowledged(8);
        assert!(b_acked.try_recv().is_ok());
        assert!(a_acked.try_recv().is_err());
        flow.acknowledged(7);
        assert!(a_acked.try_recv().is_ok());
        assert!(flow.is_empty());
        // A stray PUBACK changes nothing.
        flow.acknowledged(9);
        assert!(flow.is_empty());
    }
}
