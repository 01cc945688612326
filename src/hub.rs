//! The hub: the wiring of the rooms that do the work.
//!
//! [`Hub::start`] opens the store, creates the shared pieces (ingest, sessions, twins, methods,
//! metrics), installs the routes (a store endpoint per route endpoint, a delivery pump per
//! module input) and binds the listeners, each task getting the narrow handle it needs. It
//! serves until [`Hub::shutdown`], which stops accepting, closes connections, stops the pumps
//! and closes the store (flushing what was persisted).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result};
use router::{ConfigErrors, EdgeHubRoutes, Endpoint, RouteTable};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::delivery::{self, ModuleInput};
use crate::edgehub_twin::{DesiredStatus, EdgeHubState};
use crate::http::methods::MethodsEndpoint;
use crate::http::metrics::MetricsSources;
use crate::ingest::{Ingest, InstalledRoutes};
use crate::listener;
use crate::methods::{MethodResult, Methods};
use crate::metrics::Metrics;
use crate::mqtt::auth::Authenticator;
use crate::mqtt::connection::{self, Services};
use crate::mqtt::session::Sessions;
use crate::stop::StopSignal;
use crate::twin::{PatchError, StorageError, Twins};
use crate::upstream::edge_hub_sync::{EdgeHubSync, EdgeHubTwin};
use crate::upstream::forwarder::{Forwarder, Lanes};
use crate::upstream::lanes::{LIVE_QUEUE, LiveLane};
use crate::upstream::links::Links;
use crate::upstream::mirror::Mirror;
use crate::upstream::{UpstreamSettings, UpstreamStatus};

/// How long open connections get to finish once the hub stops accepting.
const DRAIN: Duration = Duration::from_secs(5);

/// How often the hub looks whether identities changed (removed, keys rotated by `edgehub
/// identity` in another process); connections recheck their grant when they did.
const IDENTITY_POLL: Duration = Duration::from_secs(2);

/// How long the pumps and listeners get to stop before they are aborted.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// What a hub needs to start; built from the configuration file by the binary.
#[derive(Debug)]
pub struct HubSettings {
    /// This edge device's id.
    pub device_id: String,
    /// Where the hub keeps its state (store, sessions).
    pub data_dir: PathBuf,
    /// Plain MQTT listener (development, benchmarks).
    pub mqtt: Option<SocketAddr>,
    /// MQTT over TLS listener and its TLS configuration.
    pub mqtts: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    /// Prometheus metrics listener (`GET /metrics`).
    pub metrics: Option<SocketAddr>,
    /// HTTPS listener for module-to-module direct methods (the SDKs call port 443).
    pub https: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
    /// Store settings (its `dir` is set under `data_dir` when empty).
    pub store: store::StoreConfig,
    /// The routes and the global TTL, from the `$edgeHub` desired properties.
    pub routes: EdgeHubRoutes,
    /// Time a new connection has to send its CONNECT (and finish its TLS handshake).
    pub connect_timeout: Duration,
    /// The `$version` of the `$edgeHub` desired properties the routes came from (1 when the
    /// manifest has none).
    pub desired_version: u64,
    /// Close connections that publish to unknown topics (decision D2) instead of dropping.
    pub strict_topics: bool,
    /// The most connections open at once over MQTT, MQTTS and HTTPS together; more are
    /// closed as soon as they are accepted (clients already connected are not affected).
    pub max_connections: usize,
    /// Where `$upstream` messages go; without it they wait in their queue.
    pub upstream: Option<UpstreamSettings>,
}

impl HubSettings {
    /// The default time a new connection has to finish its TLS handshake and send its
    /// CONNECT (both within it).
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    /// The default most connections open at once (a fleet of 10,000 modules fits).
    pub const MAX_CONNECTIONS: usize = 16_384;
}

/// Why a deployment was not applied.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The `$edgeHub` desired properties are invalid (every problem named); reported with
    /// code 400.
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
    /// The deployment is valid but the store could not add an endpoint it needs; reported
    /// with code 500.
    #[error("the store could not add an endpoint: {0}")]
    Store(#[from] store::StoreError),
}

/// The addresses the listeners are bound to (useful when a port was 0).
#[derive(Debug, Clone, Copy, Default)]
struct Bound {
    mqtt: Option<SocketAddr>,
    mqtts: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    https: Option<SocketAddr>,
}

/// A running hub.
#[derive(Debug)]
pub struct Hub {
    ingest: Arc<Ingest>,
    sessions: Arc<Sessions>,
    twins: Arc<Twins>,
    methods: Arc<Methods>,
    metrics: Arc<Metrics>,
    /// What the `$edgeHub` twin reports.
    edge_hub: EdgeHubState,
    stop: StopSignal,
    /// Listeners and delivery pumps.
    tasks: Mutex<JoinSet<()>>,
    /// Endpoints whose delivery pump runs.
    pumps: Mutex<HashSet<String>>,
    bound: Bound,
    /// Permits for connections, shared by the MQTT, MQTTS and HTTPS listeners.
    connection_limit: Arc<Semaphore>,
    /// Where `$upstream` messages go, when configured.
    upstream: Option<Arc<UpstreamSettings>>,
    /// What the upstream links report.
    upstream_status: Arc<UpstreamStatus>,
    /// With live data first: which `$upstream` queue new messages join.
    live_lane: Arc<LiveLane>,
    /// With upstream: its links, one per identity, and the mirror of twins and methods.
    links: Option<(Arc<Links>, Arc<Mirror>)>,
    /// The data folder.
    data_dir: PathBuf,
}

impl Hub {
    /// Opens the store, installs the routes, binds the listeners and starts serving.
    ///
    /// # Errors
    ///
    /// When the store cannot be opened, the routes do not load, or a listener cannot bind.
    pub async fn start(settings: HubSettings, auth: Arc<dyn Authenticator>) -> Result<Self> {
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("creating data folder {}", settings.data_dir.display()))?;
        let table = settings
            .routes
            .table()
            .map_err(|e| anyhow::anyhow!("routes do not load: {e}"))?;
        let store = open_store(settings.store)?;
        let metrics = Arc::new(Metrics::default());
        let mut hub = Self {
            ingest: Arc::new(Ingest::new(settings.device_id, store, Arc::clone(&metrics))),
            sessions: Arc::new(Sessions::new(Some(settings.data_dir.join("sessions.json")))),
            twins: Arc::new(Twins::new(settings.data_dir.join("twins"))),
            methods: Arc::new(Methods::default()),
            metrics,
            edge_hub: EdgeHubState::default(),
            stop: StopSignal::new(),
            tasks: Mutex::new(JoinSet::new()),
            pumps: Mutex::default(),
            bound: Bound::default(),
            connection_limit: Arc::new(Semaphore::new(settings.max_connections)),
            upstream: settings.upstream.map(Arc::new),
            upstream_status: Arc::default(),
            live_lane: Arc::default(),
            links: None,
            data_dir: settings.data_dir.clone(),
        };
        hub.start_mirror();
        hub.install(table).context("installing the routes")?;
        hub.edge_hub.desired_processed(DesiredStatus {
            version: settings.desired_version,
            code: 200,
            description: String::new(),
        });
        let identity_changes = hub.watch_identities(Arc::clone(&auth));
        let services = Arc::new(hub.connection_services(
            Arc::clone(&auth),
            settings.connect_timeout,
            settings.strict_topics,
            identity_changes,
        ));
        if let Some(addr) = settings.mqtt {
            hub.bound.mqtt = Some(hub.listen_mqtt(addr, None, &services).await?);
        }
        if let Some((addr, tls)) = settings.mqtts {
            hub.bound.mqtts = Some(hub.listen_mqtt(addr, Some(tls), &services).await?);
        }
        if let Some((addr, tls)) = settings.https {
            hub.bound.https = hub.listen_methods(addr, tls, auth).await?;
        }
        if let Some(addr) = settings.metrics {
            hub.bound.metrics = Some(hub.listen_metrics(addr).await?);
        }
        Ok(hub)
    }

    /// With upstream: opens nothing yet, but sets up the links (opened when first needed) and
    /// starts the mirror of twins and methods.
    fn start_mirror(&mut self) {
        let Some(settings) = &self.upstream else {
            return;
        };
        let (links, inbound) = Links::new(
            Arc::clone(settings),
            Arc::clone(&self.upstream_status),
            self.stop.subscribe(),
        );
        let links = Arc::new(links);
        let mirror = Arc::new(Mirror::new(
            Arc::clone(&links),
            Arc::clone(&self.sessions),
            Arc::clone(&self.twins),
            Arc::clone(&self.methods),
        ));
        self.spawn(Arc::clone(&mirror).run(inbound, self.stop.subscribe()));
        self.links = Some((links, mirror));
    }

    /// With upstream: follows this hub's `$edgeHub` twin upstream (deployments from upstream,
    /// reported properties sent up; see [`crate::upstream::edge_hub_sync`]). Call it once the
    /// hub is shared; without upstream it does nothing.
    pub fn follow_upstream_twin(self: &Arc<Self>) {
        let Some(settings) = &self.upstream else {
            return;
        };
        let twin: Arc<dyn EdgeHubTwin> = Arc::clone(self) as Arc<dyn EdgeHubTwin>;
        let task = EdgeHubSync::start(
            &twin,
            Arc::clone(settings),
            Arc::clone(&self.upstream_status),
            self.data_dir.clone(),
            self.stop.subscribe(),
        );
        self.spawn(task);
    }

    /// The `$version` of the `$edgeHub` desired properties last processed.
    #[must_use]
    pub fn edge_hub_desired_version(&self) -> Option<u64> {
        self.edge_hub.last_desired().map(|status| status.version)
    }

    /// What every MQTT connection uses of the hub.
    fn connection_services(
        &self,
        auth: Arc<dyn Authenticator>,
        connect_timeout: Duration,
        strict_topics: bool,
        identity_changes: watch::Receiver<u64>,
    ) -> Services {
        Services {
            ingest: Arc::clone(&self.ingest),
            sessions: Arc::clone(&self.sessions),
            auth,
            twins: Arc::clone(&self.twins),
            methods: Arc::clone(&self.methods),
            metrics: Arc::clone(&self.metrics),
            connect_timeout,
            strict_topics,
            identity_changes,
            mirror: self.links.as_ref().map(|(_, mirror)| Arc::clone(mirror)),
        }
    }

    /// Polls the authenticator's generation every [`IDENTITY_POLL`] (one `stat` of the
    /// registry) and bumps the returned watch when it moved: connections recheck then, and cost
    /// nothing while identities stay as they are.
    fn watch_identities(&self, auth: Arc<dyn Authenticator>) -> watch::Receiver<u64> {
        let (changed, changes) = watch::channel(0);
        let mut stop = self.stop.subscribe();
        self.spawn(async move {
            let mut seen = auth.generation();
            let mut poll = tokio::time::interval(IDENTITY_POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = poll.tick() => {}
                    () = stop.stopped() => return,
                }
                let now = auth.generation();
                if now != seen {
                    seen = now;
                    changed.send_modify(|n| *n += 1);
                }
            }
        });
        changes
    }

    /// Serves MQTT on `addr`, over TLS when `tls` is given; returns the bound address.
    async fn listen_mqtt(
        &self,
        addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        services: &Arc<Services>,
    ) -> Result<SocketAddr> {
        let what = if tls.is_some() { "MQTTS" } else { "MQTT" };
        let (listener, bound) = bind(addr, what).await?;
        let services = Arc::clone(services);
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        self.spawn(listener::serve(
            "mqtt",
            listener,
            Some(Arc::clone(&self.connection_limit)),
            self.stop.subscribe(),
            DRAIN,
            move |stream, peer, _stop| {
                let (services, tls) = (Arc::clone(&services), tls.clone());
                // The TLS handshake and the CONNECT share one deadline. The serving future and
                // the handshake are boxed: a task is as large as the largest future it may
                // hold, and the TLS ones would make every plain connection's task 10 KiB
                // (memory per connection counts with 10,000).
                let deadline = tokio::time::Instant::now() + services.connect_timeout;
                async move {
                    let Some(acceptor) = tls else {
                        return Box::pin(connection::serve(stream, services, deadline)).await;
                    };
                    let handshake = Box::pin(acceptor.accept(stream));
                    match tokio::time::timeout_at(deadline, handshake).await {
                        Ok(Ok(stream)) => {
                            Box::pin(connection::serve(stream, services, deadline)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            },
        ));
        Ok(bound)
    }

    /// Serves module-to-module direct methods over HTTPS on `addr`; `None` (with a warning)
    /// when the port needs privileges the hub does not have.
    async fn listen_methods(
        &self,
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        auth: Arc<dyn Authenticator>,
    ) -> Result<Option<SocketAddr>> {
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            // Port 443 needs privileges a newcomer's shell may not have; the rest of the hub
            // is useful without module-to-module methods.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                tracing::warn!(
                    %addr,
                    "cannot bind HTTPS (permission denied): direct methods between modules are off; \
                     run with the privilege to bind it or set listen.https to another address"
                );
                return Ok(None);
            }
            Err(e) => return Err(e).with_context(|| format!("binding HTTPS on {addr}")),
        };
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, "serving direct methods over HTTPS");
        let endpoint = Arc::new(MethodsEndpoint {
            device_id: self.device_id().to_owned(),
            auth,
            methods: Arc::clone(&self.methods),
            sessions: Arc::clone(&self.sessions),
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let handshake_timeout = HubSettings::CONNECT_TIMEOUT;
        self.spawn(listener::serve(
            "https",
            listener,
            Some(Arc::clone(&self.connection_limit)),
            self.stop.subscribe(),
            DRAIN,
            move |stream, _peer, stop| {
                let (endpoint, acceptor) = (Arc::clone(&endpoint), acceptor.clone());
                async move {
                    let handshake = acceptor.accept(stream);
                    if let Ok(Ok(stream)) = tokio::time::timeout(handshake_timeout, handshake).await
                    {
                        crate::http::methods::serve_connection(stream, endpoint, stop).await;
                    }
                }
            },
        ));
        Ok(Some(bound))
    }

    /// Serves `/metrics` on `addr`; returns the bound address.
    async fn listen_metrics(&self, addr: SocketAddr) -> Result<SocketAddr> {
        let (listener, bound) = bind(addr, "metrics").await?;
        let sources = Arc::new(MetricsSources {
            metrics: Arc::clone(&self.metrics),
            store: Arc::clone(self.ingest.store()),
            sessions: Arc::clone(&self.sessions),
            upstream: self
                .upstream
                .is_some()
                .then(|| Arc::clone(&self.upstream_status)),
        });
        self.spawn(listener::serve(
            "metrics",
            listener,
            None,
            self.stop.subscribe(),
            DRAIN,
            move |stream, _peer, stop| {
                crate::http::metrics::serve_connection(stream, Arc::clone(&sources), stop)
            },
        ));
        Ok(bound)
    }

    /// This edge device's id.
    pub fn device_id(&self) -> &str {
        self.ingest.device_id()
    }

    /// The HTTPS (direct methods) listener's address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.bound.https
    }

    /// The metrics listener's address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.bound.metrics
    }

    /// The plain MQTT listener's address (useful when bound to port 0).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.bound.mqtt
    }

    /// The TLS listener's address.
    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.bound.mqtts
    }

    /// The hub's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The sessions: subscriptions and live connections.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Installs a new route table while messages flow: its endpoints are resolved to store
    /// endpoints (added when new) and pumps started for new module inputs before the table is
    /// swapped in.
    fn install(&self, table: RouteTable) -> Result<(), store::StoreError> {
        let store = self.ingest.store();
        let mut routes = InstalledRoutes::resolve(table, self.device_id(), store)?;
        if self
            .upstream
            .as_ref()
            .is_some_and(|upstream| upstream.live_first)
        {
            routes = routes.with_live_upstream(LIVE_QUEUE, Arc::clone(&self.live_lane), store)?;
        }
        for (endpoint, queue) in routes.table().endpoints().iter().zip(routes.queues()) {
            match endpoint {
                Endpoint::ModuleInput { module, input } => {
                    self.start_pump(queue.name(), module, input)?;
                }
                Endpoint::Upstream => self.start_forwarder(queue.name())?,
            }
        }
        self.ingest.install(routes);
        Ok(())
    }

    /// Starts the delivery pump of a module input, unless it runs already.
    fn start_pump(&self, queue: &str, module: &str, input: &str) -> Result<(), store::StoreError> {
        let Some(reader) = self.claim_reader(queue)? else {
            return Ok(());
        };
        let target = ModuleInput {
            endpoint: queue.to_owned(),
            device: self.device_id().to_owned(),
            module: module.to_owned(),
            input: input.to_owned(),
        };
        self.spawn(delivery::pump(
            Arc::clone(&self.sessions),
            Arc::clone(&self.metrics),
            target,
            reader,
            self.stop.subscribe(),
        ));
        Ok(())
    }

    /// Starts the forwarder of the `$upstream` queue when upstream is configured, unless it
    /// runs already.
    fn start_forwarder(&self, queue: &str) -> Result<(), store::StoreError> {
        let (Some(settings), Some((links, _))) = (&self.upstream, &self.links) else {
            return Ok(());
        };
        let Some(backlog) = self.claim_reader(queue)? else {
            return Ok(());
        };
        // The live queue is read whenever it exists, also after `live_first` was turned off:
        // what it holds still leaves.
        let live = match self.ingest.store().endpoint(LIVE_QUEUE) {
            Some(_) => self.claim_reader(LIVE_QUEUE)?,
            None => None,
        };
        let forwarder = Forwarder {
            settings: Arc::clone(settings),
            status: Arc::clone(&self.upstream_status),
            metrics: Arc::clone(&self.metrics),
            lane: Arc::clone(&self.live_lane),
            links: Arc::clone(links),
        };
        self.spawn(forwarder.run(Lanes { backlog, live }, self.stop.subscribe()));
        tracing::info!(host = %settings.host, port = settings.port, "forwarding $upstream messages");
        Ok(())
    }

    /// The reader of `queue` for the task that will pump it; `None` when a task pumps it
    /// already (one reader per queue, for the hub's lifetime).
    fn claim_reader(&self, queue: &str) -> Result<Option<store::Reader>, store::StoreError> {
        let new = self
            .pumps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.to_owned());
        if !new {
            return Ok(None);
        }
        self.ingest
            .store()
            .reader(queue)
            .map(Some)
            .inspect_err(|_| {
                // Nobody pumps it after all: a later install may try again.
                self.pumps
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(queue);
            })
    }

    /// What the upstream links report (idle when upstream is not configured).
    pub fn upstream_status(&self) -> &UpstreamStatus {
        &self.upstream_status
    }

    /// Applies new `$edgeHub` desired properties while messages flow: the whole document is
    /// validated first; an invalid one changes nothing and is reported with code 400 and the
    /// reason (every bad route named); a valid one replaces the route table atomically (a
    /// store failure while adding its endpoints is reported with code 500). Endpoints of
    /// removed routes keep their queues (drained by their pumps when the module reads them, or
    /// expired by TTL); new TTLs apply to new messages. The outcome is logged.
    ///
    /// # Errors
    ///
    /// Every problem of an invalid document, or the store's failure.
    pub fn deploy(&self, desired: &serde_json::Value) -> Result<(), DeployError> {
        let version = desired
            .get("$version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| self.edge_hub.last_desired().map_or(1, |s| s.version + 1));
        let result = EdgeHubRoutes::from_desired(desired)
            .and_then(|routes| routes.table())
            .map_err(DeployError::Invalid)
            .and_then(|table| self.install(table).map_err(DeployError::Store));
        let (code, description) = match &result {
            Ok(()) => {
                tracing::info!(version, "deployment applied");
                (200, String::new())
            }
            Err(DeployError::Invalid(errors)) => {
                tracing::error!(version, %errors, "deployment rejected; the running routes stay");
                (
                    400,
                    format!("Error while parsing desired properties - {errors}"),
                )
            }
            Err(DeployError::Store(e)) => {
                tracing::error!(version, error = %e, "deployment not applied: the store failed; the running routes stay");
                (
                    500,
                    format!("Error while applying desired properties - {e}"),
                )
            }
        };
        self.edge_hub.desired_processed(DesiredStatus {
            version,
            code,
            description,
        });
        result
    }

    /// The `$edgeHub` twin: no desired properties of its own here, and the reported properties
    /// of protocol spec 4.2.
    pub fn edge_hub_twin(&self) -> serde_json::Value {
        let mut reported = self.edge_hub.reported(&self.sessions.clients());
        reported["store"] = crate::edgehub_twin::store_reported(
            &self.metrics.store().state(),
            &self.ingest.store().stats(),
        );
        if self.upstream.is_some() {
            reported["upstream"] = self.upstream_status.reported();
        }
        serde_json::json!({"desired": {}, "reported": reported})
    }

    /// Invokes a direct method on a connected client (`device/module` or `device`): waits up
    /// to `connect_timeout` for it to be connected and subscribed to methods (else 404), then
    /// up to `response_timeout` for its answer (else 504).
    pub async fn invoke_method(
        &self,
        client_id: &str,
        method: &str,
        payload: &serde_json::Value,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> MethodResult {
        self.methods
            .invoke(
                &self.sessions,
                client_id,
                method,
                payload,
                connect_timeout,
                response_timeout,
            )
            .await
    }

    /// The twin of `client_id` (`device` or `device/module`).
    ///
    /// # Errors
    ///
    /// When the stored twin cannot be read.
    pub fn twin(&self, client_id: &str) -> Result<serde_json::Value, StorageError> {
        self.twins.get(client_id)
    }

    /// Merges a reported-properties patch into the twin of `client_id` (for the edge agent,
    /// which writes `$edgeAgent`'s through the admin socket); returns the new reported version.
    ///
    /// # Errors
    ///
    /// `Ok(Err(_))` for an invalid patch; `Err(_)` when storage fails.
    pub fn patch_reported(
        &self,
        client_id: &str,
        patch: &[u8],
    ) -> Result<Result<u64, PatchError>, StorageError> {
        self.twins.patch_reported(client_id, patch)
    }

    /// Sets desired properties of `client_id`, and pushes the patch to the client if it is
    /// connected and subscribed to desired-property updates. A client that is offline reads
    /// the current twin when it comes back (the SDKs GET it on every connection).
    ///
    /// # Errors
    ///
    /// `Ok(Err(_))` for an invalid patch; `Err(_)` when storage fails.
    pub fn set_desired(
        &self,
        client_id: &str,
        patch: &[u8],
    ) -> Result<Result<u64, PatchError>, StorageError> {
        let pushed = match self.twins.patch_desired(client_id, patch)? {
            Ok(pushed) => pushed,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(crate::twin::push_desired(
            &self.sessions,
            client_id,
            &pushed,
        )))
    }

    /// Replaces the desired properties of `client_id` whole (a deployment for a child edge
    /// device's `$edgeHub` or `$edgeAgent`); a `$version` in `desired` is ignored: the twin's
    /// version goes up by one when anything changed. The change is pushed to the client if it
    /// is connected and subscribed. Gives the desired version.
    ///
    /// # Errors
    ///
    /// `Ok(Err(_))` for desired properties IoT Hub would refuse; `Err(_)` when storage fails.
    pub fn replace_desired(
        &self,
        client_id: &str,
        desired: &serde_json::Value,
    ) -> Result<Result<u64, PatchError>, StorageError> {
        let mut desired = desired.clone();
        if let Some(properties) = desired.as_object_mut() {
            properties.remove("$version");
        }
        let current = |twins: &Twins| -> Result<u64, StorageError> {
            Ok(twins.get(client_id)?["desired"]["$version"]
                .as_u64()
                .unwrap_or(1))
        };
        match self.twins.replace_desired(client_id, &desired)? {
            Ok(Some(patch)) => Ok(Ok(crate::twin::push_desired(
                &self.sessions,
                client_id,
                &patch,
            ))),
            Ok(None) => Ok(Ok(current(&self.twins)?)),
            Err(e) => Ok(Err(e)),
        }
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spawn(task);
    }

    /// Stops accepting, closes every connection, stops the pumps, then closes the store
    /// (everything acknowledged is already durable; this flushes checkpoints too).
    ///
    /// # Errors
    ///
    /// When the store fails to close cleanly.
    pub async fn shutdown(self) -> Result<()> {
        self.stop.fire();
        self.sessions.close_all();
        let mut tasks =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let stopped = tokio::time::timeout(STOP_DEADLINE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if stopped.is_err() {
            tracing::warn!("some tasks did not stop within {STOP_DEADLINE:?}; aborting them");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        let store = Arc::clone(self.ingest.store());
        drop(self);
        // Closing the store waits for its threads: keep that off the runtime's workers.
        let closing = tokio::task::spawn_blocking(move || match Arc::try_unwrap(store) {
            Ok(store) => store.close().context("closing the store"),
            Err(store) => store.flush().context("flushing the store"),
        });
        closing.await.context("the store's closing task failed")?
    }
}

/// Binds a TCP listener for `what`; gives it and the address it got.
async fn bind(addr: SocketAddr, what: &str) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {what} on {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "listening for {what}");
    Ok((listener, bound))
}

/// Opens the store and logs what it had to move aside.
fn open_store(config: store::StoreConfig) -> Result<Arc<store::Store>> {
    let store = store::Store::open(config).context("opening the store")?;
    for quarantined in &store.recovery_report().quarantined {
        tracing::error!(
            ?quarantined,
            "an unreadable store database was moved aside; its messages are not delivered"
        );
    }
    Ok(Arc::new(store))
}

impl EdgeHubTwin for Hub {
    fn device_id(&self) -> &str {
        Hub::device_id(self)
    }

    fn desired_version(&self) -> Option<u64> {
        self.edge_hub_desired_version()
    }

    fn deploy(&self, desired: &serde_json::Value) -> bool {
        Hub::deploy(self, desired).is_ok()
    }

    fn reported(&self) -> serde_json::Value {
        self.edge_hub_twin()["reported"].clone()
    }

    fn client_changes(&self) -> watch::Receiver<u64> {
        self.sessions.changes()
    }
}
