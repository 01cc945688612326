//! One client connection, from CONNECT to close.
//!
//! A connection is one task that owns its socket, its in-flight tables and its order of
//! acknowledgements; it shares nothing mutable with other connections. Inbound QoS 1 messages
//! are PUBACKed in the order they arrived, each only when the store says it is durable in every
//! target queue; at most [`INBOUND_WINDOW`] wait at once, beyond which the socket is not read
//! (backpressure reaches the client). Outbound messages come from the delivery pumps through
//! the bounded outbox of the session's [`Link`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use rumqttc::mqttbytes::v4::{
    Codec, ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Protocol, QoS};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::{Framed, FramedParts};

use super::auth::{Authenticator, Credentials, Grant};
use super::session::{Burst, Link, Outbound, Sessions};
use super::topic::{self, Inbound, SubscriptionKind, decode_bag};
use crate::ingest::{Ingest, Publisher};
use crate::methods::Methods;
use crate::metrics::{DropReason, Metrics};
use crate::twin::Twins;

use super::limits::MAX_CONNECT_PACKET;
pub use super::limits::MAX_PACKET;
/// How long one write to the client may take: a client that stops reading is closed after
/// it, so that keep-alive, takeover and token expiry are never held up for longer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Refused CONNECTs are logged at most [`REFUSAL_LOG_BURST`] per this interval
/// (process-wide); all are counted in the metrics.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// See [`REFUSAL_LOG_INTERVAL`].
const REFUSAL_LOG_BURST: u32 = 10;
/// Initial capacity of a connection's read and write buffers.
const INITIAL_BUFFER: usize = 1024;
/// Inbound QoS 1 messages awaiting durability before the socket stops being read.
pub const INBOUND_WINDOW: usize = 64;
/// Capacity of a connection's outbox, in bursts; also the number of messages from which the
/// connection stops gathering bursts into one write.
pub const OUTBOX: usize = 64;
/// Outbound QoS 1 messages awaiting a PUBACK before the outbox stops being read: packet ids
/// run out at 65,535, and a last gathered write may add up to `OUTBOX` plus a burst.
const MAX_IN_FLIGHT: usize = u16::MAX as usize - 256;

/// An inbound QoS 1 publish waiting for its PUBACK: its packet id and, when it was routed,
/// the store's ticket.
type PendingAck = (u16, Option<store::Ticket>);

/// Waits until the oldest pending publish is durable (or failed) and takes it out: its packet
/// id and whether the store took it (`Ok(false)`: nothing to store, no route wanted it).
/// Tickets complete in the order their messages were stored, so only the oldest needs a
/// waker. Pending forever while none waits.
fn oldest_settled(
    pending: &mut VecDeque<PendingAck>,
) -> impl Future<Output = (u16, Result<bool, store::EnqueueError>)> + '_ {
    std::future::poll_fn(move |cx| {
        let Some((_, ticket)) = pending.front_mut() else {
            return Poll::Pending;
        };
        let result = match ticket {
            None => Ok(false),
            Some(ticket) => std::task::ready!(Pin::new(ticket).poll(cx)).map(|()| true),
        };
        let (pkid, _) = pending.pop_front().expect("the front was just seen");
        Poll::Ready((pkid, result))
    })
}

/// What a connection uses of the hub: the ingest path for what its client publishes, the
/// sessions for its subscriptions and deliveries, twins and methods for the `$iothub` topics.
#[derive(Debug)]
pub struct Services {
    /// Where telemetry goes: routes, then the store.
    pub ingest: Arc<Ingest>,
    /// Subscriptions and live links of every client.
    pub sessions: Arc<Sessions>,
    /// Who may connect.
    pub auth: Arc<dyn Authenticator>,
    /// The twins of the identities.
    pub twins: Arc<Twins>,
    /// Direct method requests awaiting their responses.
    pub methods: Arc<Methods>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Time a new connection has to finish its TLS handshake and send its CONNECT.
    pub connect_timeout: Duration,
    /// Close connections that publish to unknown topics (decision D2) instead of dropping.
    pub strict_topics: bool,
    /// Changes when identities may have been removed or keys rotated: each connection then
    /// rechecks its grant ([`Authenticator::recheck`]).
    pub identity_changes: watch::Receiver<u64>,
    /// With upstream: where accepted reported patches go up.
    pub mirror: Option<Arc<crate::upstream::mirror::Mirror>>,
}

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    /// The client said goodbye (DISCONNECT).
    Disconnected,
    /// The client went away without a DISCONNECT.
    Client,
    /// Another connection with the same client id took over.
    TakenOver,
    /// The client broke a rule; the reason is logged.
    Violation(String),
    /// The store refused a message: closed without its PUBACK so that the client sends it
    /// again. Logged at debug only: the hub logs the episode once (`StoreHealth`).
    StoreRefused(String),
}

impl Close {
    /// The close of a connection whose message was not taken: a store refusal, or a rule the
    /// message broke.
    fn not_taken(error: crate::ingest::IngestError) -> Self {
        match error {
            crate::ingest::IngestError::Store(e) => Self::StoreRefused(e.to_string()),
            e => Self::Violation(e.to_string()),
        }
    }
}

/// Serves one client connection until it closes: CONNECT (which must arrive before
/// `connect_deadline`), authentication, registration in the sessions, then packets both ways
/// until it ends.
pub async fn serve<S>(stream: S, services: Arc<Services>, connect_deadline: tokio::time::Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut framed = framed(stream);
    let Some(connect) = read_connect(&mut framed, connect_deadline).await else {
        return;
    };
    let Some(grant) = authenticate(&mut framed, &services, &connect).await else {
        return;
    };
    let client_id = grant.identity.client_id();
    let Some((link_id, outbox, close)) =
        register(&mut framed, &services, &client_id, connect.clean_session).await
    else {
        return;
    };
    tracing::info!(%client_id, clean_session = connect.clean_session, "client connected");
    framed.codec_mut().max_incoming_size = MAX_PACKET;
    let mut connection = Connection::new(
        framed,
        Arc::clone(&services),
        grant,
        connect.keep_alive,
        close,
    );
    let close = connection.run(outbox).await;
    services.sessions.disconnect(&client_id, link_id);
    // Spec 1.1: a connection that ends without DISCONNECT publishes its will, routed like
    // telemetry (not after a takeover: the client is still there).
    if let Some(will) = connect.last_will
        && matches!(
            close,
            Close::Client | Close::Violation(_) | Close::StoreRefused(_)
        )
    {
        // Boxed: rare, and its future (routing, storing) would enlarge every connection's.
        Box::pin(connection.publish_will(will)).await;
    }
    match close {
        Close::Disconnected => tracing::info!(%client_id, "client disconnected"),
        Close::Client => tracing::info!(%client_id, "client went away without DISCONNECT"),
        Close::TakenOver => tracing::info!(%client_id, "connection replaced by a newer one"),
        Close::Violation(reason) => tracing::warn!(%client_id, %reason, "connection closed"),
        Close::StoreRefused(reason) => {
            tracing::debug!(%client_id, %reason, "connection closed without PUBACK");
        }
    }
}

/// The MQTT codec over `stream`, with small buffers to start with (tokio-util's default is
/// 8 KiB each way): most connections of a large fleet are idle, and a buffer grows when a
/// bigger packet or burst needs it.
fn framed<S: AsyncRead + AsyncWrite>(stream: S) -> Framed<S, Codec> {
    // No large buffer for a client that has not authenticated: until its CONNECT is read, a
    // packet may be at most MAX_CONNECT_PACKET (the codec reserves what a header announces).
    let codec = Codec {
        max_incoming_size: MAX_CONNECT_PACKET,
        max_outgoing_size: MAX_PACKET,
    };
    let mut parts = FramedParts::new::<Packet>(stream, codec);
    parts.read_buf = bytes::BytesMut::with_capacity(INITIAL_BUFFER);
    parts.write_buf = bytes::BytesMut::with_capacity(INITIAL_BUFFER);
    Framed::from_parts(parts)
}

/// Waits until `deadline` for the first packet, which must be an MQTT 3.1.1 CONNECT; anything
/// else closes the connection (`None`), with CONNACK 1 for another protocol version.
async fn read_connect<S>(
    framed: &mut Framed<S, Codec>,
    deadline: tokio::time::Instant,
) -> Option<Connect>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connect = match tokio::time::timeout_at(deadline, framed.next()).await {
        Ok(Some(Ok(Packet::Connect(connect)))) => connect,
        Ok(Some(Ok(other))) => {
            tracing::debug!(packet = ?other, "first packet is not CONNECT; closing");
            return None;
        }
        Ok(Some(Err(e))) => {
            tracing::debug!(error = %e, "unreadable first packet; closing");
            return None;
        }
        Ok(None) | Err(_) => return None,
    };
    if connect.protocol != Protocol::V4 {
        let refused = ConnAck::new(ConnectReturnCode::RefusedProtocolVersion, false);
        let _ = tokio::time::timeout(WRITE_TIMEOUT, framed.send(Packet::ConnAck(refused))).await;
        return None;
    }
    Some(connect)
}

/// Checks the CONNECT's credentials; a refusal is answered with CONNACK 5 (decision D1),
/// counted, logged (throttled, the client id cut short) and closes the connection (`None`).
async fn authenticate<S>(
    framed: &mut Framed<S, Codec>,
    services: &Services,
    connect: &Connect,
) -> Option<Grant>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let credentials = Credentials {
        client_id: &connect.client_id,
        username: connect.login.as_ref().map(|l| l.username.as_str()),
        password: connect.login.as_ref().map(|l| l.password.as_str()),
    };
    static REFUSAL_LOG: Throttle = Throttle::new(REFUSAL_LOG_INTERVAL, REFUSAL_LOG_BURST);
    let refusal_log = &REFUSAL_LOG;
    match services.auth.authenticate(&credentials) {
        Ok(grant) => Some(grant),
        Err(reason) => {
            services.metrics.connection_refused();
            if refusal_log.allow() {
                tracing::warn!(
                    client_id = %truncated(&connect.client_id),
                    %reason,
                    "connection refused (at most 10 refusals are logged per 10 s; all are counted)"
                );
            }
            let refused = ConnAck::new(ConnectReturnCode::NotAuthorized, false);
            let _ =
                tokio::time::timeout(WRITE_TIMEOUT, framed.send(Packet::ConnAck(refused))).await;
            None
        }
    }
}

/// Registers the connection in the sessions (taking over an older one of the same client)
/// and answers CONNACK; gives the link's id, its outbox and its close signal, or `None` when
/// the CONNACK could not be written.
async fn register<S>(
    framed: &mut Framed<S, Codec>,
    services: &Services,
    client_id: &str,
    clean_session: bool,
) -> Option<(u64, mpsc::Receiver<Burst>, watch::Receiver<bool>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (outbox, outbox_rx) = mpsc::channel(OUTBOX);
    let (close, close_rx) = watch::channel(false);
    let link = Link {
        id: services.sessions.next_link_id(),
        outbox,
        close,
    };
    let link_id = link.id;
    let connected = services.sessions.connect(client_id, clean_session, link);
    if connected.replaced.is_some() {
        tracing::info!(%client_id, "a new connection took over the client's previous one");
    }
    let ack = ConnAck::new(ConnectReturnCode::Success, connected.session_present);
    let acked = tokio::time::timeout(WRITE_TIMEOUT, framed.send(Packet::ConnAck(ack))).await;
    if !matches!(acked, Ok(Ok(()))) {
        services.sessions.disconnect(client_id, link_id);
        return None;
    }
    Some((link_id, outbox_rx, close_rx))
}

struct Connection<S> {
    framed: Framed<S, Codec>,
    /// Turns true when another connection of the same client takes over (or the hub stops).
    close: watch::Receiver<bool>,
    services: Arc<Services>,
    /// Who the client is, how it proved it (rechecked when identities change) and the model id
    /// it announced (stamped on its messages as `modelId`).
    grant: Grant,
    /// See [`Services::identity_changes`].
    identity_changes: watch::Receiver<u64>,
    keep_alive: Duration,
    /// Inbound QoS 1 publishes awaiting durability, in arrival order.
    pending_acks: VecDeque<PendingAck>,
    /// Outbound QoS 1 publishes awaiting the client's PUBACK.
    in_flight: HashMap<u16, oneshot::Sender<()>>,
    next_pkid: u16,
    /// When the connection's credentials expire.
    expires: Option<tokio::time::Instant>,
    /// Publishes to unknown topics are warned about at most once a minute per connection.
    last_unknown_topic_warning: Option<tokio::time::Instant>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// The state of an accepted connection; `keep_alive` is the CONNECT's, in seconds.
    fn new(
        framed: Framed<S, Codec>,
        services: Arc<Services>,
        grant: Grant,
        keep_alive: u16,
        close: watch::Receiver<bool>,
    ) -> Self {
        // MQTT 3.1.1: the server allows one and a half times the keep-alive; 0 (none) and very
        // long ones are bounded by 10 minutes.
        let keep_alive = match keep_alive {
            0 => Duration::from_secs(600),
            secs => Duration::from_millis(u64::from(secs) * 1500).min(Duration::from_secs(600)),
        };
        let expires = grant.valid_until.map(|until| {
            let left = until
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let mut identity_changes = services.identity_changes.clone();
        identity_changes.mark_unchanged();
        Self {
            framed,
            close,
            services,
            grant,
            identity_changes,
            keep_alive,
            pending_acks: VecDeque::with_capacity(INBOUND_WINDOW),
            in_flight: HashMap::new(),
            next_pkid: 1,
            expires,
            last_unknown_topic_warning: None,
        }
    }

    async fn run(&mut self, mut outbox: mpsc::Receiver<Burst>) -> Close {
        // One timer for the keep-alive, moved only when it fires: re-arming a timer for every
        // packet would cost more than the packet.
        let mut last_heard = tokio::time::Instant::now();
        let keep_alive = tokio::time::sleep(self.keep_alive);
        tokio::pin!(keep_alive);
        // Likewise one future for the token's expiry, not a new timer at every turn.
        let expiry = sleep_until(self.expires);
        tokio::pin!(expiry);
        loop {
            let reading = self.pending_acks.len() < INBOUND_WINDOW;
            let sending = self.in_flight.len() < MAX_IN_FLIGHT;
            tokio::select! {
                packet = self.framed.next(), if reading => {
                    last_heard = tokio::time::Instant::now();
                    if let Err(close) = self.on_read(packet).await {
                        return close;
                    }
                }
                first = oldest_settled(&mut self.pending_acks) => {
                    if let Err(close) = self.acknowledge(first).await {
                        return close;
                    }
                }
                Some(mut burst) = outbox.recv(), if sending => {
                    // Write what is waiting as one burst, then flush once.
                    while burst.len() < OUTBOX {
                        match outbox.try_recv() {
                            Ok(more) => burst.extend(more),
                            Err(_) => break,
                        }
                    }
                    if self.deliver(burst).await.is_err() {
                        return Close::Client;
                    }
                }
                () = &mut keep_alive => {
                    if !reading {
                        // Not the client's silence: the socket is not being read.
                        last_heard = tokio::time::Instant::now();
                    }
                    let mut deadline = last_heard + self.keep_alive;
                    if deadline <= tokio::time::Instant::now() {
                        // A long write may have kept this loop from reading: what the client
                        // sent meanwhile counts before its silence is judged.
                        let Some(packet) = self.framed.next().now_or_never() else {
                            return Close::Violation("keep-alive expired".to_owned());
                        };
                        last_heard = tokio::time::Instant::now();
                        deadline = last_heard + self.keep_alive;
                        if let Err(close) = self.on_read(packet).await {
                            return close;
                        }
                    }
                    keep_alive.as_mut().reset(deadline);
                }
                _ = self.close.changed() => return Close::TakenOver,
                () = &mut expiry => {
                    return Close::Violation("the SAS token expired".to_owned());
                }
                Ok(()) = self.identity_changes.changed() => {
                    if let Err(reason) = self.services.auth.recheck(&self.grant) {
                        return Close::Violation(reason);
                    }
                }
            }
        }
    }

    /// PUBACKs `first` and every later message already durable, in arrival order, with one
    /// flush. A message the store refused closes the connection without its PUBACK, so that
    /// the client sends it again.
    async fn acknowledge(
        &mut self,
        first: (u16, Result<bool, store::EnqueueError>),
    ) -> Result<(), Close> {
        let mut next = Some(first);
        while let Some((pkid, durable)) = next {
            let stored = match durable {
                Ok(stored) => stored,
                Err(e) => {
                    self.services.metrics.store().refused(&e);
                    // Flush what was acknowledged before it; the connection closes anyway.
                    let _ = guarded(&mut self.close, self.framed.flush()).await;
                    return Err(Close::StoreRefused(format!(
                        "message not stored ({e}); closing without PUBACK"
                    )));
                }
            };
            if stored {
                self.services.metrics.store().accepted();
            }
            guarded(
                &mut self.close,
                self.framed.feed(Packet::PubAck(PubAck::new(pkid))),
            )
            .await?;
            next = oldest_settled(&mut self.pending_acks).now_or_never();
        }
        guarded(&mut self.close, self.framed.flush()).await
    }

    /// Handles what reading the socket gave: a packet, an unreadable one, or its end.
    async fn on_read(
        &mut self,
        packet: Option<Result<Packet, rumqttc::mqttbytes::Error>>,
    ) -> Result<(), Close> {
        match packet {
            None => Err(Close::Client),
            Some(Err(e)) => Err(Close::Violation(format!("malformed packet: {e}"))),
            Some(Ok(packet)) => self.on_packet(packet).await,
        }
    }

    async fn on_packet(&mut self, packet: Packet) -> Result<(), Close> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish).await,
            Packet::PubAck(ack) => {
                if let Some(acked) = self.in_flight.remove(&ack.pkid) {
                    let _ = acked.send(());
                }
                Ok(())
            }
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe) => {
                self.services
                    .sessions
                    .unsubscribe(&self.grant.identity.client_id(), &unsubscribe.topics);
                self.send(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
                    .await
            }
            Packet::PingReq => self.send(Packet::PingResp).await,
            Packet::Disconnect => Err(Close::Disconnected),
            Packet::Connect(_) => Err(Close::Violation("second CONNECT".to_owned())),
            other => Err(Close::Violation(format!("unexpected packet {other:?}"))),
        }
    }

    /// Grants the documented filters (spec 2.1) within the cap; refuses the others with
    /// SUBACK 0x80 (never stored); closes the connection on another identity's topic (D3).
    async fn on_subscribe(&mut self, subscribe: Subscribe) -> Result<(), Close> {
        if let Some(foreign) = subscribe
            .filters
            .iter()
            .find(|f| !topic::may_subscribe(&self.grant.identity, &f.path))
        {
            return Err(Close::Violation(format!(
                "subscribed to another identity's topic {:?}",
                truncated(&foreign.path)
            )));
        }
        // Filters outside the documented set (spec 2.1) are refused (SUBACK 0x80) and
        // never stored; the others are granted at QoS 1 at most, within the cap.
        let mut codes = vec![SubscribeReasonCode::Failure; subscribe.filters.len()];
        let mut known = Vec::with_capacity(subscribe.filters.len());
        for (i, filter) in subscribe.filters.into_iter().enumerate() {
            if SubscriptionKind::of(&filter.path) == SubscriptionKind::Unknown {
                tracing::info!(client_id = %self.grant.identity, filter = %truncated(&filter.path), "subscription outside the documented topics refused");
            } else {
                known.push((i, (filter.path, filter.qos)));
            }
        }
        let filters: Vec<(String, QoS)> = known.iter().map(|(_, f)| f.clone()).collect();
        let granted = self
            .services
            .sessions
            .subscribe(&self.grant.identity.client_id(), &filters);
        for ((i, _), granted) in known.iter().zip(granted) {
            match granted {
                Ok(qos) => codes[*i] = SubscribeReasonCode::Success(qos),
                Err(e) => {
                    tracing::warn!(client_id = %self.grant.identity, reason = %e, "subscription refused");
                }
            }
        }
        self.send(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
            .await
    }

    async fn send(&mut self, packet: Packet) -> Result<(), Close> {
        guarded(&mut self.close, self.framed.send(packet)).await
    }

    async fn on_publish(&mut self, publish: Publish) -> Result<(), Close> {
        if publish.qos == QoS::ExactlyOnce {
            return Err(Close::Violation("QoS 2 is not supported".to_owned()));
        }
        let ticket = match Inbound::parse(&publish.topic) {
            Inbound::Telemetry {
                device,
                module,
                bag,
            } => {
                if device != self.grant.identity.device_id
                    || module != self.grant.identity.module_id.as_deref()
                {
                    return Err(Close::Violation(format!(
                        "published as {device}{} on topic {:?}",
                        module.map(|m| format!("/{m}")).unwrap_or_default(),
                        publish.topic
                    )));
                }
                let bag = decode_bag(bag).map_err(|e| Close::Violation(e.to_string()))?;
                let publisher = self.publisher();
                self.services
                    .ingest
                    .telemetry(&publisher, bag, publish.payload)
                    .await
                    .map_err(Close::not_taken)?
            }
            Inbound::Unknown => {
                self.services.metrics.dropped(DropReason::UnknownTopic);
                if self.services.strict_topics {
                    return Err(Close::Violation(format!(
                        "published to the unknown topic {:?} (strict_topics)",
                        publish.topic
                    )));
                }
                let now = tokio::time::Instant::now();
                if self
                    .last_unknown_topic_warning
                    .is_none_or(|last| now - last >= Duration::from_secs(60))
                {
                    self.last_unknown_topic_warning = Some(now);
                    tracing::warn!(client_id = %self.grant.identity, topic = %publish.topic, "publish to an unknown topic dropped (counted; warned once a minute)");
                }
                None
            }
            Inbound::TwinGet { rid } => {
                let Some(rid) = rid.filter(|r| !r.is_empty()) else {
                    return Err(Close::Violation("twin GET without $rid".to_owned()));
                };
                if let Some(mirror) = &self.services.mirror {
                    // Cache-through: upstream's desired properties when it answers in time.
                    mirror.refresh(&self.client_identity()).await;
                }
                let (status, body) = match self.services.twins.get(&self.grant.identity.client_id())
                {
                    Ok(twin) => (200, twin.to_string().into_bytes()),
                    Err(e) => {
                        tracing::error!(client_id = %self.grant.identity, error = %e, "twin unreadable");
                        (500, Vec::new())
                    }
                };
                self.twin_response(status, &rid, None, body).await?;
                None
            }
            Inbound::TwinPatchReported { rid } => {
                let result = self
                    .services
                    .twins
                    .patch_reported(&self.grant.identity.client_id(), &publish.payload);
                let (status, version) = match result {
                    Ok(Ok(version)) => {
                        if let Some(mirror) = &self.services.mirror {
                            mirror.reported(&self.client_identity(), publish.payload.clone());
                        }
                        self.notify_twin_change(publish.payload.clone(), version)
                            .await;
                        (204, Some(version))
                    }
                    Ok(Err(refused)) => {
                        tracing::info!(client_id = %self.grant.identity, reason = %refused, "reported properties refused");
                        (400, None)
                    }
                    Err(e) => {
                        tracing::error!(client_id = %self.grant.identity, error = %e, "twin not stored");
                        (500, None)
                    }
                };
                if let Some(rid) = rid.filter(|r| !r.is_empty()) {
                    self.twin_response(status, &rid, version, Vec::new())
                        .await?;
                }
                None
            }
            Inbound::MethodResponse { status, rid } => {
                if let Some(rid) = rid {
                    let responder = self.grant.identity.client_id();
                    let accepted = self.services.methods.respond(
                        &responder,
                        &rid,
                        status,
                        publish.payload.clone(),
                    );
                    if !accepted {
                        tracing::warn!(client_id = %self.grant.identity, rid = %truncated(&rid), "method response to no request of this client ignored");
                    }
                }
                None
            }
        };
        if publish.qos == QoS::AtLeastOnce {
            self.pending_acks.push_back((publish.pkid, ticket));
        }
        Ok(())
    }

    /// The identity stamped on what this client publishes.
    fn publisher(&self) -> Publisher<'_> {
        Publisher {
            device_id: &self.grant.identity.device_id,
            module_id: self.grant.identity.module_id.as_deref(),
            model_id: self.grant.model_id.as_deref(),
        }
    }

    /// Publishes a client's will as if it had sent it: routed and stored like its telemetry,
    /// when its topic is one of the client's telemetry topics.
    async fn publish_will(&mut self, will: rumqttc::mqttbytes::v4::LastWill) {
        let Inbound::Telemetry {
            device,
            module,
            bag,
        } = Inbound::parse(&will.topic)
        else {
            tracing::warn!(client_id = %self.grant.identity, topic = %will.topic, "will on a topic that is not telemetry; dropped");
            return;
        };
        if device != self.grant.identity.device_id
            || module != self.grant.identity.module_id.as_deref()
        {
            tracing::warn!(client_id = %self.grant.identity, topic = %will.topic, "will on another identity's topic; dropped");
            return;
        }
        let bag = match decode_bag(bag) {
            Ok(bag) => bag,
            Err(e) => {
                tracing::warn!(client_id = %self.grant.identity, error = %e, "will dropped");
                return;
            }
        };
        let publisher = self.publisher();
        match self
            .services
            .ingest
            .telemetry(&publisher, bag, will.message)
            .await
        {
            Ok(_) => tracing::info!(client_id = %self.grant.identity, "will published"),
            Err(e) => {
                tracing::warn!(client_id = %self.grant.identity, error = %e, "will not stored");
            }
        }
    }

    /// The connection's identity, as the upstream side names identities.
    fn client_identity(&self) -> crate::identity::ClientIdentity {
        crate::identity::ClientIdentity {
            device_id: self.grant.identity.device_id.clone(),
            module_id: self.grant.identity.module_id.clone(),
        }
    }

    /// Routes an accepted reported patch as a twin change notification (source
    /// `/twinChangeNotifications`), carrying the reporter as its connection ids. It is not
    /// waited for: the reported patch is already stored and answered.
    async fn notify_twin_change(&mut self, patch: bytes::Bytes, version: u64) {
        let publisher = self.publisher();
        if let Err(e) = self
            .services
            .ingest
            .twin_change(&publisher, patch, version)
            .await
        {
            tracing::warn!(client_id = %self.grant.identity, error = %e, "twin change notification not stored");
        }
    }

    /// Answers a twin request on `$iothub/twin/res/{status}/?$rid={rid}[&$version={n}]`, even
    /// when the client has not subscribed to the responses yet (the Python SDK asks first).
    async fn twin_response(
        &mut self,
        status: u16,
        rid: &str,
        version: Option<u64>,
        body: Vec<u8>,
    ) -> Result<(), Close> {
        let topic = topic::twin_response(status, rid, version);
        self.send(Packet::Publish(Publish::new(topic, QoS::AtMostOnce, body)))
            .await
    }

    /// Publishes messages from the delivery pumps, flushing once for the burst.
    async fn deliver(&mut self, burst: Vec<Outbound>) -> Result<(), Close> {
        let mut written = Vec::new();
        for outbound in burst {
            let mut publish = Publish::new(outbound.topic, outbound.qos, Vec::new());
            publish.payload = outbound.payload;
            publish.dup = outbound.dup;
            if outbound.qos == QoS::AtMostOnce {
                written.push(outbound.acked);
            } else {
                publish.pkid = self.next_free_pkid();
                self.in_flight.insert(publish.pkid, outbound.acked);
            }
            guarded(&mut self.close, self.framed.feed(Packet::Publish(publish))).await?;
            self.services.metrics.sent();
        }
        guarded(&mut self.close, self.framed.flush()).await?;
        // QoS 0 is complete once written.
        for acked in written {
            let _ = acked.send(());
        }
        Ok(())
    }

    fn next_free_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.in_flight.contains_key(&pkid) {
                return pkid;
            }
        }
    }
}

/// One write to the client, within [`WRITE_TIMEOUT`]; a takeover (or the hub's stop) ends it
/// at once: a client that stops reading can always be replaced or closed.
async fn guarded<E>(
    close: &mut watch::Receiver<bool>,
    write: impl Future<Output = Result<(), E>>,
) -> Result<(), Close> {
    tokio::select! {
        written = tokio::time::timeout(WRITE_TIMEOUT, write) => match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Close::Client),
            Err(_) => Err(Close::Violation(format!(
                "a write did not complete within {WRITE_TIMEOUT:?}: the client does not read"
            ))),
        },
        _ = close.changed() => Err(Close::TakenOver),
    }
}

/// Lets at most `burst` events through per interval (process-wide), for log lines an
/// attacker could otherwise repeat at will: a few distinct refusals are all logged, a flood
/// is not.
struct Throttle {
    interval: Duration,
    burst: u32,
    /// The current window's start and the events let through in it.
    window: std::sync::Mutex<Option<(std::time::Instant, u32)>>,
}

impl Throttle {
    const fn new(interval: Duration, burst: u32) -> Self {
        Self {
            interval,
            burst,
            window: std::sync::Mutex::new(None),
        }
    }

    fn allow(&self) -> bool {
        let mut window = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        match &mut *window {
            Some((start, count)) if now.duration_since(*start) < self.interval => {
                *count += 1;
                *count <= self.burst
            }
            _ => {
                *window = Some((now, 1));
                true
            }
        }
    }
}

/// A client-supplied text cut for a log line: at most 128 characters.
fn truncated(text: &str) -> &str {
    match text.char_indices().nth(128) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lets_a_burst_through_then_nothing_until_the_next_window() {
        let throttle = Throttle::new(Duration::from_secs(3600), 3);
        assert!((0..3).all(|_| throttle.allow()));
        assert!(!throttle.allow());
        assert!(!throttle.allow());
    }

    #[test]
    fn log_lines_cut_client_supplied_text() {
        let long = "é".repeat(1000);
        assert_eq!(truncated(&long).chars().count(), 128);
        assert_eq!(truncated("short"), "short");
    }
}
