//! Ingest: a message in, its endpoints picked by the routes, encoded once, handed to the store,
//! a ticket out (it completes when the message is durable in every target queue).
//!
//! The routes are installed as [`InstalledRoutes`]: the route table together with the store
//! endpoint of each of its endpoints, resolved once, when the table is installed. A message
//! therefore costs no endpoint-id formatting and no lookup by name; the router's dispatch gives
//! one delivery per endpoint (decision D6: best priority, longest TTL) and that is the only
//! place D6 is applied.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use router::message::system;
use router::{Delivery, Endpoint, Message, RouteTable, Ttl as RouteTtl};

use crate::metrics::{DropReason, Metrics};
use crate::mqtt::limits::{Undeliverable, check_publish};
use crate::mqtt::topic::{PropertyBag, encode_bag, module_input_prefix};
use crate::record;
use crate::upstream::lanes::LiveLane;

/// The largest routed message (body plus property keys and values), as IoT Hub (decision D4).
pub const MAX_MESSAGE: usize = 256 * 1024;

/// The authenticated client a message comes from; its identity is stamped on the message.
#[derive(Debug, Clone, Copy)]
pub struct Publisher<'a> {
    /// Its device id.
    pub device_id: &'a str,
    /// Its module id, for a module.
    pub module_id: Option<&'a str>,
    /// The model id it announced at CONNECT, stamped as `modelId`.
    pub model_id: Option<&'a str>,
}

/// Why a message was not taken.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Over the size limit (decision D4).
    #[error("message of {size} bytes exceeds {MAX_MESSAGE}")]
    TooLarge {
        /// Its size: body plus property keys and values.
        size: usize,
    },
    /// Its property bag, as a receiver would get it in its topic, makes it undeliverable
    /// (decision D4: refused when it comes in, never left to block a queue).
    #[error("message cannot be delivered: {0}")]
    Undeliverable(#[from] Undeliverable),
    /// The store refused or failed to take it.
    #[error("store refused the message: {0}")]
    Store(#[from] store::EnqueueError),
}

/// A route table with the store endpoint of each of its endpoints.
#[derive(Debug)]
pub struct InstalledRoutes {
    table: RouteTable,
    /// `queues[i]` is the store endpoint of `table.endpoints()[i]`.
    queues: Vec<store::EndpointHandle>,
    /// `topic_prefixes[i]`: the length of the topic a message for `table.endpoints()[i]` is
    /// delivered on, without its bag; `None` for upstream, where it depends on the sender.
    topic_prefixes: Vec<Option<usize>>,
    /// With live data first: the live queue of `$upstream` and when to use it.
    live_upstream: Option<LiveUpstream>,
}

/// Live data first (see [`crate::upstream::lanes`]): `$upstream` messages join `queue` while
/// `lane` is open.
#[derive(Debug)]
struct LiveUpstream {
    /// The index of `$upstream` in the table's endpoints.
    endpoint_index: usize,
    queue: store::EndpointHandle,
    lane: Arc<LiveLane>,
}

impl InstalledRoutes {
    /// No routes: every message is accepted and dropped.
    #[must_use]
    pub fn empty() -> Self {
        Self {
            table: RouteTable::empty(),
            queues: Vec::new(),
            topic_prefixes: Vec::new(),
            live_upstream: None,
        }
    }

    /// Resolves every endpoint of `table` to its store endpoint (`device_id` names this edge
    /// device's module inputs), adding those the store does not have yet. Blocks for a small
    /// synchronous write per new endpoint.
    ///
    /// # Errors
    ///
    /// When the store cannot add an endpoint.
    pub fn resolve(
        table: RouteTable,
        device_id: &str,
        store: &store::Store,
    ) -> Result<Self, store::StoreError> {
        let queues = table
            .endpoints()
            .iter()
            .map(|endpoint| {
                // Known endpoints cost a map lookup; only new ones go to the writer thread.
                let id = endpoint.id(device_id);
                store
                    .endpoint(&id)
                    .map_or_else(|| store.add_endpoint(&id), Ok)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let topic_prefixes = table
            .endpoints()
            .iter()
            .map(|endpoint| match endpoint {
                Endpoint::Upstream => None,
                Endpoint::ModuleInput { module, input } => {
                    Some(module_input_prefix(device_id, module, input).len())
                }
            })
            .collect();
        Ok(Self {
            table,
            queues,
            topic_prefixes,
            live_upstream: None,
        })
    }

    /// Live data first: when the table sends to `$upstream`, its messages join the store
    /// endpoint `live_queue` (added if new) while `lane` is open, the backlog otherwise.
    ///
    /// # Errors
    ///
    /// When the store cannot add the live queue.
    pub fn with_live_upstream(
        mut self,
        live_queue: &str,
        lane: Arc<LiveLane>,
        store: &store::Store,
    ) -> Result<Self, store::StoreError> {
        let upstream = self
            .table
            .endpoints()
            .iter()
            .position(|endpoint| matches!(endpoint, Endpoint::Upstream));
        if let Some(endpoint_index) = upstream {
            let queue = store
                .endpoint(live_queue)
                .map_or_else(|| store.add_endpoint(live_queue), Ok)?;
            self.live_upstream = Some(LiveUpstream {
                endpoint_index,
                queue,
                lane,
            });
        }
        Ok(self)
    }

    /// The route table.
    #[must_use]
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// The store endpoints, in the order of [`RouteTable::endpoints`].
    #[must_use]
    pub fn queues(&self) -> &[store::EndpointHandle] {
        &self.queues
    }

    /// Checks that `message`, with its encoded `bag`, can be published to every endpoint it is
    /// delivered to: the longest topic within MQTT's limit, the packet within the hub's.
    fn check_deliverable(
        &self,
        deliveries: &[Delivery<'_>],
        message: &Message,
        bag: &str,
    ) -> Result<(), Undeliverable> {
        let upstream_prefix = || {
            let id = |key| message.system_properties.get(key).map_or(0, str::len);
            // `devices/{d}/modules/{m}/messages/events/`
            "devices//modules//messages/events/".len()
                + id(system::CONNECTION_DEVICE_ID)
                + id(system::CONNECTION_MODULE_ID)
        };
        let longest_prefix = deliveries
            .iter()
            .map(|d| self.topic_prefixes[d.endpoint_index].unwrap_or_else(upstream_prefix))
            .max()
            .unwrap_or(0);
        check_publish(longest_prefix + bag.len(), message.body.len())
    }

    fn target(&self, delivery: &Delivery<'_>) -> store::Target<'_> {
        let queue = match &self.live_upstream {
            Some(live) if live.endpoint_index == delivery.endpoint_index && live.lane.is_open() => {
                &live.queue
            }
            _ => &self.queues[delivery.endpoint_index],
        };
        store::Target::new(queue, delivery.priority, store_ttl(delivery.ttl))
    }
}

/// The ingest path shared by every connection (and, later, the upstream link).
#[derive(Debug)]
pub struct Ingest {
    device_id: String,
    routes: ArcSwap<InstalledRoutes>,
    store: Arc<store::Store>,
    metrics: Arc<Metrics>,
}

/// What routing and the first, non-blocking, enqueue attempt gave.
enum Attempt {
    Done(Result<Option<store::Ticket>, IngestError>),
    /// The writer's inbox was full: the enqueue waits on the blocking pool.
    Busy {
        payload: Bytes,
        targets: Vec<(store::EndpointHandle, u32, store::Ttl)>,
    },
}

impl Ingest {
    /// An ingest path with no routes yet, for this edge device (`device_id`).
    #[must_use]
    pub fn new(device_id: String, store: Arc<store::Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            device_id,
            routes: ArcSwap::from_pointee(InstalledRoutes::empty()),
            store,
            metrics,
        }
    }

    /// This edge device's id.
    #[must_use]
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The store behind it.
    #[must_use]
    pub fn store(&self) -> &Arc<store::Store> {
        &self.store
    }

    /// Swaps in new routes between two messages: a message is routed entirely by the old
    /// routes or entirely by the new ones.
    pub fn install(&self, routes: InstalledRoutes) {
        self.routes.store(Arc::new(routes));
    }

    /// Telemetry from `publisher` (a device's events or a module's output): stamped with the
    /// sender's identity and the system properties edgeHub adds (spec section 3), checked
    /// against the size limit, routed and stored. `None` when no route wants it.
    ///
    /// # Errors
    ///
    /// Too large, or refused by the store: the publisher gets no PUBACK.
    pub async fn telemetry(
        &self,
        publisher: &Publisher<'_>,
        bag: PropertyBag,
        body: Bytes,
    ) -> Result<Option<store::Ticket>, IngestError> {
        let PropertyBag {
            properties,
            mut system_properties,
        } = bag;
        system_properties.insert(system::CONNECTION_DEVICE_ID, publisher.device_id);
        if let Some(module) = publisher.module_id {
            system_properties.insert(system::CONNECTION_MODULE_ID, module);
        }
        let origin = if publisher.device_id == self.device_id {
            "internal"
        } else {
            "downstream"
        };
        system_properties.insert("edgeHubOriginInterface", origin);
        if let Some(model_id) = publisher.model_id {
            system_properties.insert("modelId", model_id);
        }
        let message = Message {
            body,
            properties,
            system_properties,
        };
        let size = message_size(&message);
        if size > MAX_MESSAGE {
            self.metrics.dropped(DropReason::TooLarge);
            return Err(IngestError::TooLarge { size });
        }
        self.metrics.received();
        self.route_and_store(&message).await
    }

    /// An accepted reported-properties patch of `publisher`, routed as a twin change
    /// notification (source `/twinChangeNotifications`) carrying the reporter as its
    /// connection ids.
    ///
    /// # Errors
    ///
    /// Refused by the store.
    pub async fn twin_change(
        &self,
        publisher: &Publisher<'_>,
        patch: Bytes,
        version: u64,
    ) -> Result<Option<store::Ticket>, IngestError> {
        let mut system_properties = router::Properties::new();
        for (key, value) in [
            (system::MESSAGE_TYPE, "twinChangeNotification"),
            ("messageSchema", "twinChangeNotification"),
            (system::CONTENT_TYPE, "application/json"),
            (system::CONTENT_ENCODING, "utf-8"),
            (system::CONNECTION_DEVICE_ID, publisher.device_id),
        ] {
            system_properties.insert(key, value);
        }
        if let Some(module) = publisher.module_id {
            system_properties.insert(system::CONNECTION_MODULE_ID, module);
        }
        system_properties.insert("version", version.to_string());
        let message = Message {
            body: patch,
            properties: router::Properties::new(),
            system_properties,
        };
        self.route_and_store(&message).await
    }

    /// Routes `message` and hands it to the store for every endpoint selected; `None` when no
    /// route wants it (counted as dropped). When the store's inbox is full, the enqueue runs
    /// on the blocking pool and the caller waits for it (so its messages keep their order):
    /// the runtime is never blocked.
    async fn route_and_store(
        &self,
        message: &Message,
    ) -> Result<Option<store::Ticket>, IngestError> {
        let result = match self.attempt(message) {
            Attempt::Done(Err(IngestError::Undeliverable(e))) => {
                self.metrics.dropped(DropReason::TooLarge);
                return Err(IngestError::Undeliverable(e));
            }
            Attempt::Done(result) => result,
            Attempt::Busy { payload, targets } => {
                let store = Arc::clone(&self.store);
                tokio::task::spawn_blocking(move || {
                    let targets: Vec<store::Target<'_>> = targets
                        .iter()
                        .map(|(queue, priority, ttl)| store::Target::new(queue, *priority, *ttl))
                        .collect();
                    store.enqueue(payload, &targets).map(Some)
                })
                .await
                .unwrap_or(Err(store::EnqueueError::Closed))
                .map_err(IngestError::Store)
            }
        };
        result.inspect_err(|e| {
            self.metrics.dropped(DropReason::StoreRefused);
            if let IngestError::Store(e) = e {
                self.metrics.store().refused(e);
            }
        })
    }

    /// Routes, encodes and tries to enqueue without blocking (synchronous: the installed routes
    /// are borrowed only here).
    fn attempt(&self, message: &Message) -> Attempt {
        let routes = self.routes.load();
        let started = Instant::now();
        let deliveries = routes.table.dispatch(message);
        self.metrics.route_evaluated(started.elapsed());
        if deliveries.is_empty() {
            self.metrics.dropped(DropReason::NoRoute);
            return Attempt::Done(Ok(None));
        }
        let bag = encode_bag(&message.properties, &message.system_properties);
        if let Err(e) = routes.check_deliverable(&deliveries, message, &bag) {
            return Attempt::Done(Err(e.into()));
        }
        let payload = record::encode(message, &bag);
        let targets: Vec<store::Target<'_>> = deliveries.iter().map(|d| routes.target(d)).collect();
        match self.store.try_enqueue(payload.clone(), &targets) {
            Err(store::EnqueueError::Busy) => Attempt::Busy {
                payload,
                targets: targets
                    .iter()
                    .map(|t| (t.endpoint.clone(), t.priority, t.ttl))
                    .collect(),
            },
            other => Attempt::Done(other.map(Some).map_err(IngestError::Store)),
        }
    }
}

/// A message's size as IoT Hub counts it: body plus property keys and values.
fn message_size(message: &Message) -> usize {
    message.body.len()
        + [&message.properties, &message.system_properties]
            .iter()
            .flat_map(|p| p.iter())
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

fn store_ttl(ttl: RouteTtl) -> store::Ttl {
    match ttl {
        RouteTtl::Never => store::Ttl::Never,
        RouteTtl::Secs(secs) => store::Ttl::After(Duration::from_secs(secs)),
    }
}

#[cfg(test)]
mod tests {
    use router::RouteSpec;

    use super::*;
    use crate::mqtt::topic::decode_bag;

    const DEVICE: &str = "edge";

    fn route(name: &str, text: &str, priority: u32, ttl_secs: u32) -> RouteSpec {
        RouteSpec {
            name: name.to_owned(),
            text: text.to_owned(),
            priority,
            ttl_secs,
        }
    }

    /// An ingest path over a fresh store in `dir` with `routes` installed.
    fn ingest(dir: &std::path::Path, routes: &[RouteSpec]) -> Ingest {
        let store = Arc::new(store::Store::open(store::StoreConfig::new(dir)).unwrap());
        let ingest = Ingest::new(DEVICE.to_owned(), store, Arc::default());
        let table = RouteTable::new(routes, RouteTtl::Secs(7200)).unwrap();
        let installed = InstalledRoutes::resolve(table, DEVICE, ingest.store()).unwrap();
        ingest.install(installed);
        ingest
    }

    fn sensor() -> Publisher<'static> {
        Publisher {
            device_id: DEVICE,
            module_id: Some("sensor"),
            model_id: Some("dtmi:x;1"),
        }
    }

    /// Everything waiting in the store endpoint `id`, decoded.
    fn queued(ingest: &Ingest, id: &str) -> Vec<(store::EntryId, Message)> {
        let mut reader = ingest.store().reader(id).unwrap();
        reader
            .read(100, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|entry| (entry.id, record::decode(&entry.payload).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn telemetry_is_stamped_routed_and_durable_when_its_ticket_completes() {
        let dir = tempfile::tempdir().unwrap();
        let ingest = ingest(
            dir.path(),
            &[route(
                "r",
                "FROM /messages/modules/sensor/* WHERE level = 'high' INTO BrokeredEndpoint(\"/modules/filter/inputs/in\")",
                0,
                0,
            )],
        );
        let ticket = ingest
            .telemetry(
                &sensor(),
                decode_bag("level=high&%24.on=out1").unwrap(),
                Bytes::from_static(b"{}"),
            )
            .await
            .unwrap()
            .expect("routed");
        ticket.await.unwrap();

        let queued = queued(&ingest, "edge/filter/in");
        assert_eq!(queued.len(), 1);
        let message = &queued[0].1;
        assert_eq!(message.properties.get("level"), Some("high"));
        for (key, value) in [
            (system::CONNECTION_DEVICE_ID, "edge"),
            (system::CONNECTION_MODULE_ID, "sensor"),
            ("outputName", "out1"),
            ("edgeHubOriginInterface", "internal"),
            ("modelId", "dtmi:x;1"),
        ] {
            assert_eq!(message.system_properties.get(key), Some(value), "{key}");
        }
        assert_eq!(ingest.metrics.received_total(), 1);
    }

    #[tokio::test]
    async fn two_routes_to_one_endpoint_store_one_copy_with_the_best_priority() {
        let dir = tempfile::tempdir().unwrap();
        let sink = "INTO BrokeredEndpoint(\"/modules/filter/inputs/in\")";
        let ingest = ingest(
            dir.path(),
            &[
                route("low", &format!("FROM /messages/* {sink}"), 7, 0),
                route(
                    "high",
                    &format!("FROM /messages/modules/sensor/* {sink}"),
                    1,
                    0,
                ),
            ],
        );
        let ticket = ingest
            .telemetry(&sensor(), PropertyBag::default(), Bytes::from_static(b"x"))
            .await
            .unwrap()
            .expect("routed");
        ticket.await.unwrap();
        let queued = queued(&ingest, "edge/filter/in");
        assert_eq!(queued.len(), 1, "decision D6: one copy per endpoint");
        assert_eq!(queued[0].0.priority, 1);
    }

    #[tokio::test]
    async fn unrouted_messages_are_accepted_and_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let ingest = ingest(dir.path(), &[]);
        let outcome = ingest
            .telemetry(&sensor(), PropertyBag::default(), Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert!(outcome.is_none());
        assert_eq!(ingest.metrics.dropped_total(DropReason::NoRoute), 1);
    }

    #[tokio::test]
    async fn messages_over_the_limit_are_refused_before_routing() {
        let dir = tempfile::tempdir().unwrap();
        let ingest = ingest(
            dir.path(),
            &[route("all", "FROM /messages/* INTO $upstream", 0, 0)],
        );
        let body = Bytes::from(vec![b'x'; MAX_MESSAGE]);
        let refused = ingest
            .telemetry(&sensor(), decode_bag("k=v").unwrap(), body)
            .await
            .unwrap_err();
        assert!(matches!(refused, IngestError::TooLarge { size } if size > MAX_MESSAGE));
        assert_eq!(ingest.metrics.dropped_total(DropReason::TooLarge), 1);
        assert_eq!(ingest.metrics.received_total(), 0);
        assert!(queued(&ingest, "iothub").is_empty());
    }

    #[tokio::test]
    async fn a_reported_patch_is_routed_as_a_twin_change_notification() {
        let dir = tempfile::tempdir().unwrap();
        let ingest = ingest(
            dir.path(),
            &[route(
                "twins",
                "FROM /twinChangeNotifications INTO $upstream",
                0,
                0,
            )],
        );
        let ticket = ingest
            .twin_change(&sensor(), Bytes::from_static(b"{\"a\":1}"), 4)
            .await
            .unwrap()
            .expect("routed");
        ticket.await.unwrap();
        let queued = queued(&ingest, "iothub");
        assert_eq!(queued.len(), 1);
        let message = &queued[0].1;
        assert_eq!(message.body.as_ref(), b"{\"a\":1}");
        assert_eq!(message.system_properties.get("version"), Some("4"));
        assert_eq!(
            message.system_properties.get(system::CONNECTION_MODULE_ID),
            Some("sensor")
        );
    }

    #[tokio::test]
    async fn new_routes_apply_to_the_next_message() {
        let dir = tempfile::tempdir().unwrap();
        let ingest = ingest(dir.path(), &[]);
        let message = || PropertyBag::default();
        assert!(
            ingest
                .telemetry(&sensor(), message(), Bytes::from_static(b"1"))
                .await
                .unwrap()
                .is_none()
        );
        let table = RouteTable::new(
            &[route("all", "FROM /messages/* INTO $upstream", 0, 0)],
            RouteTtl::Never,
        )
        .unwrap();
        ingest.install(InstalledRoutes::resolve(table, DEVICE, ingest.store()).unwrap());
        let ticket = ingest
            .telemetry(&sensor(), message(), Bytes::from_static(b"2"))
            .await
            .unwrap()
            .expect("routed by the new table");
        ticket.await.unwrap();
        assert_eq!(queued(&ingest, "iothub").len(), 1);
    }
}
