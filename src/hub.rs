//! The hub: the route table, the store, the sessions and the listeners, wired together.
//!
//! [`Hub::start`] opens the store, installs the routes (a store endpoint per route endpoint, a
//! delivery pump per module input), binds the listeners and serves connections until
//! [`Hub::shutdown`], which stops accepting, closes connections, stops the pumps and closes
//! the store (flushing what was persisted).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use router::{ConfigErrors, EdgeHubRoutes, Endpoint, RouteTable, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::delivery::{self, ModuleInput};
use crate::metrics::Metrics;
use crate::mqtt::auth::Authenticator;
use crate::mqtt::connection;
use crate::mqtt::session::Sessions;

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
    pub connect_timeout: std::time::Duration,
    /// The `$version` of the `$edgeHub` desired properties the routes came from (1 when the
    /// manifest has none).
    pub desired_version: u64,
    /// Close connections that publish to unknown topics (decision D2) instead of dropping.
    pub strict_topics: bool,
}

impl HubSettings {
    /// The default time a connection has to send its CONNECT.
    pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
}

/// State shared by connections and pumps.
#[derive(Debug)]
pub struct Shared {
    /// This edge device's id (module endpoints are `{device_id}/{module}/{input}`).
    pub device_id: String,
    /// The running route table.
    pub router: Router,
    /// The store.
    pub store: store::Store,
    /// The sessions.
    pub sessions: Sessions,
    /// Who may connect.
    pub auth: Arc<dyn Authenticator>,
    /// Counters.
    pub metrics: Metrics,
    /// Time a new connection has to send its CONNECT.
    pub connect_timeout: std::time::Duration,
    /// The twins of the identities.
    pub twins: crate::twin::Twins,
    /// What the `$edgeHub` twin reports.
    pub edge_hub: crate::edgehub_twin::EdgeHubState,
    /// Direct method requests awaiting their responses.
    pub methods: crate::methods::Methods,
    /// Close connections that publish to unknown topics.
    pub strict_topics: bool,
}

/// A running hub.
#[derive(Debug)]
pub struct Hub {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<JoinSet<()>>,
    /// Endpoints whose delivery pump runs.
    pumps: Mutex<std::collections::HashSet<String>>,
    mqtt_addr: Option<SocketAddr>,
    mqtts_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
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
        let store = store::Store::open(settings.store).context("opening the store")?;
        for quarantined in &store.recovery_report().quarantined {
            tracing::error!(
                ?quarantined,
                "an unreadable store database was moved aside; its messages are not delivered"
            );
        }
        let shared = Arc::new(Shared {
            device_id: settings.device_id,
            router: Router::new(RouteTable::empty()),
            store,
            sessions: Sessions::new(Some(settings.data_dir.join("sessions.json"))),
            auth,
            metrics: Metrics::default(),
            connect_timeout: settings.connect_timeout,
            twins: crate::twin::Twins::new(settings.data_dir.join("twins")),
            edge_hub: crate::edgehub_twin::EdgeHubState::default(),
            methods: crate::methods::Methods::default(),
            strict_topics: settings.strict_topics,
        });
        let (stop, _) = watch::channel(false);
        let mut hub = Self {
            shared,
            stop,
            tasks: Mutex::new(JoinSet::new()),
            pumps: Mutex::default(),
            mqtt_addr: None,
            mqtts_addr: None,
            metrics_addr: None,
            https_addr: None,
        };
        hub.install(table).context("installing the routes")?;
        hub.shared
            .edge_hub
            .desired_processed(crate::edgehub_twin::DesiredStatus {
                version: settings.desired_version,
                code: 200,
                description: String::new(),
            });
        if let Some(addr) = settings.mqtt {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding MQTT on {addr}"))?;
            hub.mqtt_addr = Some(listener.local_addr()?);
            tracing::info!(addr = %listener.local_addr()?, "listening for MQTT");
            hub.spawn(accept(
                listener,
                None,
                Arc::clone(&hub.shared),
                hub.stop.subscribe(),
            ));
        }
        if let Some((addr, tls)) = settings.mqtts {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding MQTTS on {addr}"))?;
            hub.mqtts_addr = Some(listener.local_addr()?);
            tracing::info!(addr = %listener.local_addr()?, "listening for MQTT over TLS");
            hub.spawn(accept(
                listener,
                Some(tokio_rustls::TlsAcceptor::from(tls)),
                Arc::clone(&hub.shared),
                hub.stop.subscribe(),
            ));
        }
        if let Some((addr, tls)) = settings.https {
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    hub.https_addr = Some(listener.local_addr()?);
                    tracing::info!(addr = %listener.local_addr()?, "serving direct methods over HTTPS");
                    hub.spawn(crate::http::serve_methods(
                        listener,
                        tokio_rustls::TlsAcceptor::from(tls),
                        Arc::clone(&hub.shared),
                        hub.stop.subscribe(),
                    ));
                }
                // Port 443 needs privileges a newcomer's shell may not have; the rest of the
                // hub is useful without module-to-module methods.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => tracing::warn!(
                    %addr,
                    "cannot bind HTTPS (permission denied): direct methods between modules are off; \
                     run with the privilege to bind it or set listen.https to another address"
                ),
                Err(e) => return Err(e).with_context(|| format!("binding HTTPS on {addr}")),
            }
        }
        if let Some(addr) = settings.metrics {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics on {addr}"))?;
            hub.metrics_addr = Some(listener.local_addr()?);
            tracing::info!(addr = %listener.local_addr()?, "serving metrics at /metrics");
            hub.spawn(crate::http::serve_metrics(
                listener,
                Arc::clone(&hub.shared),
                hub.stop.subscribe(),
            ));
        }
        Ok(hub)
    }

    /// The HTTPS (direct methods) listener's address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The metrics listener's address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The plain MQTT listener's address (useful when bound to port 0).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    /// The TLS listener's address.
    pub fn mqtts_addr(&self) -> Option<SocketAddr> {
        self.mqtts_addr
    }

    /// State shared with connections (metrics, sessions, store).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Validates and installs a new set of routes while messages flow: endpoints are added to
    /// the store and pumps started before the table is swapped in.
    ///
    /// # Errors
    ///
    /// Every bad route, by name; the running table stays.
    pub fn install_routes(&self, routes: &EdgeHubRoutes) -> Result<(), ConfigErrors> {
        let table = routes.table()?;
        self.install(table)
            .map_err(|e| ConfigErrors(vec![router::ConfigError::Document(format!("{e:#}"))]))
    }

    fn install(&self, table: RouteTable) -> Result<()> {
        let existing = self.shared.store.endpoints();
        for endpoint in table.endpoints() {
            let id = endpoint.id(&self.shared.device_id);
            if !existing.contains(&id) {
                self.shared
                    .store
                    .add_endpoint(&id)
                    .with_context(|| format!("adding endpoint {id}"))?;
            }
            let new_pump = self
                .pumps
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id.clone());
            if let (true, Endpoint::ModuleInput { module, input }) = (new_pump, endpoint) {
                let reader = self
                    .shared
                    .store
                    .reader(&id)
                    .with_context(|| format!("reading endpoint {id}"))?;
                let target = ModuleInput {
                    endpoint: id,
                    device: self.shared.device_id.clone(),
                    module: module.clone(),
                    input: input.clone(),
                };
                self.spawn(delivery::pump(
                    Arc::clone(&self.shared),
                    target,
                    reader,
                    self.stop.subscribe(),
                ));
            }
        }
        self.shared.router.replace(table);
        Ok(())
    }

    /// Applies new `$edgeHub` desired properties while messages flow: the whole document is
    /// validated first; an invalid one changes nothing and is reported with code 400 and the
    /// reason (every bad route named); a valid one replaces the route table atomically.
    /// Endpoints of removed routes keep their queues (drained by their pumps when the module
    /// reads them, or expired by TTL); new TTLs apply to new messages.
    ///
    /// # Errors
    ///
    /// Every problem of an invalid document.
    pub fn deploy(&self, desired: &serde_json::Value) -> Result<(), ConfigErrors> {
        let version = desired
            .get("$version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| {
                self.shared
                    .edge_hub
                    .last_desired()
                    .map_or(1, |s| s.version + 1)
            });
        let result =
            EdgeHubRoutes::from_desired(desired).and_then(|routes| self.install_routes(&routes));
        let (code, description) = match &result {
            Ok(()) => (200, String::new()),
            Err(e) => (400, format!("Error while parsing desired properties - {e}")),
        };
        self.shared
            .edge_hub
            .desired_processed(crate::edgehub_twin::DesiredStatus {
                version,
                code,
                description,
            });
        result
    }

    /// The `$edgeHub` twin: no desired properties of its own here, and the reported properties
    /// of protocol spec 4.2.
    pub fn edge_hub_twin(&self) -> serde_json::Value {
        let reported = self
            .shared
            .edge_hub
            .reported(&self.shared.sessions.clients());
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
        connect_timeout: std::time::Duration,
        response_timeout: std::time::Duration,
    ) -> crate::methods::MethodResult {
        self.shared
            .methods
            .invoke(
                &self.shared.sessions,
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
    pub fn twin(&self, client_id: &str) -> Result<serde_json::Value, crate::twin::StorageError> {
        self.shared.twins.get(client_id)
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
    ) -> Result<Result<u64, crate::twin::PatchError>, crate::twin::StorageError> {
        let pushed = match self.shared.twins.patch_desired(client_id, patch)? {
            Ok(pushed) => pushed,
            Err(e) => return Ok(Err(e)),
        };
        let version = pushed["$version"].as_u64().unwrap_or_default();
        let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
        if let Some((link, qos)) = self.shared.sessions.route(client_id, &topic) {
            let outbound = crate::mqtt::session::Outbound::unacknowledged(
                topic,
                pushed.to_string().into(),
                qos,
            );
            if link.outbox.try_send(vec![outbound]).is_err() {
                tracing::warn!(%client_id, "desired patch not pushed (connection busy); the client reads it on its next GET");
            }
        }
        Ok(Ok(version))
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .spawn(task);
    }

    /// Stops accepting, closes every connection, stops the pumps, then closes the store
    /// (everything acknowledged is already durable; this flushes checkpoints too).
    ///
    /// # Errors
    ///
    /// When the store fails to close cleanly.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.stop.send(true);
        self.shared.sessions.close_all();
        let mut tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let drained = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("some tasks did not stop within 10 s; aborting them");
            tasks.abort_all();
        }
        // Closing the store waits for its threads: keep that off the runtime's workers.
        let closing = tokio::task::spawn_blocking(move || match Arc::try_unwrap(self.shared) {
            Ok(shared) => shared.store.close().context("closing the store"),
            Err(shared) => shared.store.flush().context("flushing the store"),
        });
        closing.await.context("the store's closing task failed")?
    }
}

/// Accepts connections until `stop`, each served in its own task (after a TLS handshake when
/// `tls` is given); on stop, waits for the connections to close.
async fn accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let (tls, shared) = (tls.clone(), Arc::clone(&shared));
                    // The serving future and the TLS handshake are boxed: a task is as large as
                    // the largest future it may hold, and the TLS ones would make every plain
                    // connection's task 10 KiB (memory per connection counts with 10,000).
                    connections.spawn(async move {
                        let Some(acceptor) = tls else {
                            return Box::pin(connection::serve(stream, shared)).await;
                        };
                        let handshake = Box::pin(acceptor.accept(stream));
                        match tokio::time::timeout(shared.connect_timeout, handshake).await {
                            Ok(Ok(stream)) => Box::pin(connection::serve(stream, shared)).await,
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    while connections.join_next().await.is_some() {}
}
