//! The mirror: module and device twins and direct methods through the hierarchy (issue 16).
//!
//! For every client connected here that subscribes to desired-property updates or to direct
//! methods (a module of this device, a leaf device, an identity of a child hub connected on
//! its behalf, or a child hub's own `$edgeHub`, which follows its deployments), the mirror keeps the same subscriptions on that identity's upstream link,
//! so that upstream (IoT Hub, or the parent hub standing where IoT Hub stands) reaches it:
//!
//! - **desired patches** from upstream are merged into this hub's copy of the twin (at
//!   upstream's `$version`) and pushed to the client;
//! - **every time the link connects** the twin is read upstream (GET): a desired version that
//!   differs from the copy replaces it, and the difference is pushed to the client (what was
//!   set while the client or this hub was offline); the copy's reported properties go up, so
//!   that what was reported offline reaches upstream;
//! - **reported patches** accepted here go up at once when the link is connected;
//! - **method calls** from upstream are invoked on the client here, and the answer goes back
//!   (404 when it is not connected, 504 when it is silent).
//!
//! A twin GET from a client is answered from this hub's copy, online or not.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::from_upstream::{self, FromUpstream, subscriptions};
use super::link::Inbound;
use super::links::Links;
use crate::identity::ClientIdentity;
use crate::methods::{MAX_TIMEOUT, Methods};
use crate::mqtt::session::Sessions;
use crate::mqtt::topic;
use crate::stop::Stop;
use crate::twin::{Twins, push_desired};

/// How long the mirror lets client changes settle before it updates the links' subscriptions
/// (10,000 clients connecting cause a few updates, not 10,000).
const SETTLE: Duration = Duration::from_millis(200);

/// What the mirror needs.
#[derive(Debug)]
pub struct Mirror {
    /// The upstream links.
    pub links: Arc<Links>,
    /// The clients connected here and their subscriptions.
    pub sessions: Arc<Sessions>,
    /// This hub's twins (the copies).
    pub twins: Arc<Twins>,
    /// Direct method calls to clients here.
    pub methods: Arc<Methods>,
    /// Twin GETs sent upstream and not answered yet, by request id: whose twin, and who waits
    /// for the answer (a client's own GET, cache-through).
    pending_gets: Mutex<HashMap<String, PendingGet>>,
    next_rid: AtomicU64,
}

/// A twin GET sent upstream.
#[derive(Debug)]
struct PendingGet {
    identity: ClientIdentity,
    answered: Option<oneshot::Sender<()>>,
}

/// How long a client's twin GET waits for its link to connect, then for upstream's answer,
/// before it is answered from this hub's copy.
const REFRESH_CONNECT: Duration = Duration::from_secs(2);
const REFRESH_ANSWER: Duration = Duration::from_secs(3);

/// What a client here wants from upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Interest {
    desired: bool,
    methods: bool,
}

impl Interest {
    /// Beside the twin responses every link subscribes to.
    fn topics(self) -> Vec<String> {
        let mut topics = Vec::new();
        if self.desired {
            topics.push(subscriptions::DESIRED.to_owned());
        }
        if self.methods {
            topics.push(subscriptions::METHODS.to_owned());
        }
        topics
    }
}

impl Mirror {
    /// A mirror for this hub's clients.
    #[must_use]
    pub fn new(
        links: Arc<Links>,
        sessions: Arc<Sessions>,
        twins: Arc<Twins>,
        methods: Arc<Methods>,
    ) -> Self {
        Self {
            links,
            sessions,
            twins,
            methods,
            pending_gets: Mutex::default(),
            next_rid: AtomicU64::new(1),
        }
    }

    /// Runs until `stop`: follows the clients' subscriptions, and handles what upstream sends
    /// down the links (`inbound`).
    pub async fn run(self: Arc<Self>, mut inbound: mpsc::Receiver<Inbound>, mut stop: Stop) {
        let mut changes = self.sessions.changes();
        let mut mirrored: HashMap<ClientIdentity, Interest> = HashMap::new();
        // The first pass runs at once: clients of persisted sessions reconnect quickly.
        changes.mark_changed();
        loop {
            tokio::select! {
                () = stop.stopped() => return,
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::time::sleep(SETTLE).await;
                    changes.mark_unchanged();
                    self.follow_clients(&mut mirrored);
                }
                received = inbound.recv() => match received {
                    Some(Inbound::Connected(identity)) => {
                        if mirrored.contains_key(&identity) {
                            self.synchronise(&identity);
                        }
                    }
                    Some(Inbound::Publish { identity, topic, payload }) => {
                        self.received(&identity, &topic, payload);
                    }
                    None => return,
                },
            }
        }
    }

    /// A reported patch a client made here (accepted and stored): it goes up now when the
    /// client's link is connected, else at the link's next connection.
    pub fn reported(&self, identity: &ClientIdentity, patch: Bytes) {
        if let Some(link) = self.links.find(identity) {
            link.request(from_upstream::reported_patch(&self.rid()), patch);
        }
    }

    /// Before a client's twin GET is answered here: reads the twin upstream (the link opened
    /// if needed) and brings this hub's copy of its desired properties up to date. Returns at
    /// once when the link is failing, after a few seconds at most otherwise; the GET is then
    /// answered from the copy, whatever happened.
    pub async fn refresh(&self, identity: &ClientIdentity) {
        if self
            .links
            .find(identity)
            .is_some_and(|link| !link.is_connected())
        {
            // Its link is down (upstream away, or in back-off): no wait.
            return;
        }
        let link = self.links.get(identity);
        let mut connected = link.connected();
        let up = tokio::time::timeout(REFRESH_CONNECT, connected.wait_for(|up| *up))
            .await
            .is_ok_and(|up| up.is_ok());
        if !up {
            return;
        }
        let (answered, answer) = oneshot::channel();
        let rid = self.get(&link, identity, Some(answered));
        if tokio::time::timeout(REFRESH_ANSWER, answer).await.is_err() {
            tracing::info!(%identity, "upstream did not answer a twin GET in time; answered from this hub's copy");
            self.pending().remove(&rid);
        }
    }

    /// Sends a twin GET for `identity` on `link`; gives its request id.
    fn get(
        &self,
        link: &super::link::Link,
        identity: &ClientIdentity,
        answered: Option<oneshot::Sender<()>>,
    ) -> String {
        let rid = self.rid();
        self.pending().insert(
            rid.clone(),
            PendingGet {
                identity: identity.clone(),
                answered,
            },
        );
        link.request(from_upstream::twin_get(&rid), Bytes::new());
        rid
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingGet>> {
        self.pending_gets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Updates the links' subscriptions to what the clients connected here subscribe to.
    fn follow_clients(&self, mirrored: &mut HashMap<ClientIdentity, Interest>) {
        let desired_topic = topic::desired_patch(1);
        let method_topic = topic::method_request("m", "1");
        let mut now = HashMap::new();
        for client in self.sessions.clients().into_iter().filter(|c| c.connected) {
            // A child hub's own `$edgeHub` is mirrored too: deployments from further up reach
            // it through this hub.
            let identity = identity_of(&client.client_id);
            let interest = Interest {
                desired: self
                    .sessions
                    .route(&client.client_id, &desired_topic)
                    .is_some(),
                methods: self
                    .sessions
                    .route(&client.client_id, &method_topic)
                    .is_some(),
            };
            if interest.desired || interest.methods {
                now.insert(identity, interest);
            }
        }
        for (identity, interest) in &now {
            if mirrored.get(identity) != Some(interest) {
                let link = self.links.get(identity);
                if !link.subscribe(interest.topics()) {
                    tracing::warn!(%identity, "upstream subscriptions not updated (link busy); retried at the next change");
                    continue;
                }
                if link.is_connected() {
                    // A client that connects here while its link is up: read its twin now.
                    self.synchronise(identity);
                }
            }
        }
        let gone: HashSet<&ClientIdentity> = mirrored
            .keys()
            .filter(|identity| !now.contains_key(*identity))
            .collect();
        for identity in gone {
            if let Some(link) = self.links.find(identity) {
                link.subscribe(Vec::new());
            }
        }
        *mirrored = now;
    }

    /// The link of `identity` connected: read its twin upstream, and send up what it
    /// reported here.
    fn synchronise(&self, identity: &ClientIdentity) {
        let Some(link) = self.links.find(identity) else {
            return;
        };
        self.get(&link, identity, None);
        match self.twins.get(&identity.to_string()) {
            Ok(twin) => {
                let mut reported = twin["reported"].clone();
                if let Some(reported) = reported.as_object_mut() {
                    reported.remove("$version");
                    if !reported.is_empty() {
                        link.request(
                            from_upstream::reported_patch(&self.rid()),
                            Bytes::from(Value::Object(reported.clone()).to_string()),
                        );
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%identity, error = %e, "twin unreadable; its reported properties not sent up");
            }
        }
    }

    /// Handles one publication upstream sent down `identity`'s link.
    fn received(self: &Arc<Self>, identity: &ClientIdentity, topic: &str, payload: Bytes) {
        let client_id = identity.to_string();
        match FromUpstream::parse(topic) {
            FromUpstream::TwinResponse { status, rid } => {
                let asked = self.pending().remove(rid);
                let Some(asked) = asked.filter(|asked| asked.identity == *identity) else {
                    // The answer to a reported patch (or to nothing we asked).
                    if status >= 300 {
                        tracing::warn!(%client_id, status, "upstream refused a twin request");
                    }
                    return;
                };
                if status == 200 {
                    self.desired_from_upstream(&client_id, &payload);
                } else {
                    tracing::warn!(%client_id, status, "upstream refused a twin GET");
                }
                if let Some(answered) = asked.answered {
                    let _ = answered.send(());
                }
            }
            FromUpstream::DesiredPatch { version } => {
                let Some(version) = version else {
                    tracing::warn!(%client_id, "desired patch from upstream without a version; ignored");
                    return;
                };
                match self.twins.merge_desired_at(&client_id, &payload, version) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(%client_id, error = %e, "desired patch from upstream refused");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(%client_id, error = %e, "desired patch from upstream not stored; pushed anyway");
                    }
                }
                match serde_json::from_slice::<Value>(&payload) {
                    Ok(Value::Object(mut patch)) => {
                        patch.insert("$version".to_owned(), Value::from(version));
                        push_desired(&self.sessions, &client_id, &Value::Object(patch));
                    }
                    _ => {
                        tracing::warn!(%client_id, "desired patch from upstream is not a JSON object");
                    }
                }
            }
            FromUpstream::MethodCall { method, rid } => {
                let (method, rid) = (method.to_owned(), rid.to_owned());
                let mirror = Arc::clone(self);
                let identity = identity.clone();
                tokio::spawn(async move { mirror.call(identity, method, rid, payload).await });
            }
            FromUpstream::Other => {
                tracing::debug!(%client_id, topic, "publication from upstream ignored");
            }
        }
    }

    /// Upstream's twin of `client_id` (the body of a GET's answer): a desired version other
    /// than the copy's replaces it, and the difference goes to the client.
    fn desired_from_upstream(&self, client_id: &str, body: &[u8]) {
        let desired = match serde_json::from_slice::<Value>(body) {
            Ok(twin) => twin["desired"].clone(),
            Err(e) => {
                tracing::warn!(%client_id, error = %e, "twin from upstream is not JSON; ignored");
                return;
            }
        };
        match self.twins.replace_desired(client_id, &desired) {
            Ok(Ok(Some(patch))) => {
                tracing::info!(%client_id, version = %patch["$version"], "desired properties caught up with upstream");
                push_desired(&self.sessions, client_id, &patch);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(%client_id, error = %e, "desired properties from upstream refused");
            }
            Err(e) => {
                tracing::error!(%client_id, error = %e, "desired properties from upstream not stored");
            }
        }
    }

    /// Invokes a method upstream called on `identity` here, and answers upstream.
    async fn call(&self, identity: ClientIdentity, method: String, rid: String, payload: Bytes) {
        let client_id = identity.to_string();
        let result = match crate::methods::validate_method_name(&method) {
            Ok(()) => {
                let payload = serde_json::from_slice(&payload).unwrap_or(Value::Null);
                self.methods
                    .invoke(
                        &self.sessions,
                        &client_id,
                        &method,
                        &payload,
                        Duration::ZERO,
                        MAX_TIMEOUT,
                    )
                    .await
            }
            Err(_) => crate::methods::MethodResult::error(400),
        };
        tracing::info!(%client_id, method, status = result.status, "direct method from upstream");
        let answer = Bytes::from(result.payload.to_string());
        match self.links.find(&identity) {
            Some(link)
                if link.request(from_upstream::method_answer(result.status, &rid), answer) => {}
            _ => {
                tracing::warn!(%client_id, method, "the answer to upstream's method call could not be sent");
            }
        }
    }

    fn rid(&self) -> String {
        self.next_rid.fetch_add(1, Ordering::Relaxed).to_string()
    }
}

/// `device` or `device/module` as an identity.
fn identity_of(client_id: &str) -> ClientIdentity {
    match client_id.split_once('/') {
        Some((device, module)) => ClientIdentity {
            device_id: device.to_owned(),
            module_id: Some(module.to_owned()),
        },
        None => ClientIdentity {
            device_id: client_id.to_owned(),
            module_id: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_names_a_module_or_a_device() {
        let module = identity_of("child-1/filter");
        assert_eq!(module.device_id, "child-1");
        assert_eq!(module.module_id.as_deref(), Some("filter"));
        let device = identity_of("leaf-7");
        assert_eq!(device.device_id, "leaf-7");
        assert_eq!(device.module_id, None);
    }

    #[test]
    fn the_topics_follow_what_the_client_subscribed_to() {
        let both = Interest {
            desired: true,
            methods: true,
        };
        assert_eq!(
            both.topics(),
            [subscriptions::DESIRED, subscriptions::METHODS]
        );
        let methods = Interest {
            desired: false,
            methods: true,
        };
        assert_eq!(methods.topics(), [subscriptions::METHODS]);
    }
}
