//! The device-scope sync (spec 6.2): with `[upstream]`, the hub learns the identities of its
//! scope from upstream (the parent hub's device-scope API, [`crate::http::scope`], or IoT
//! Hub's), so that leaf devices and modules registered up there connect here with no local
//! `edgehub identity add`.
//!
//! - When: at start, then every `scope_refresh_secs` (30 s by default: a removal at the parent
//!   reaches the child within half a minute, and one small HTTPS request per child every 30 s
//!   costs the parent nothing; the legacy hub's hour is too slow to revoke a device), and at
//!   once, at most every [`ON_DEMAND_GAP`], when a client is refused for an identity or key
//!   this hub does not know ([`crate::mqtt::auth::SasAuthenticator::with_unknown_identity_hint`]).
//! - What: the answer becomes the registry's upstream identities
//!   ([`IdentityRegistry::replace_upstream`]), persisted in `identities.json` so an offline
//!   restart keeps them. Gone from the answer means removed here (a running hub closes their
//!   connections at its next recheck, within seconds). Local identities are never removed or
//!   replaced: on a conflicting id the local identity wins and the conflict is logged.
//! - Failures (upstream away, refused, a bad answer) keep what was learned before, are logged
//!   once per episode, and are retried with jittered back-off (1 s doubling up to the refresh
//!   interval). The hub works fully offline.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::ConnectionString;
use super::backoff::Backoff;
use crate::identity::id::EDGE_HUB;
use crate::identity::scope::{API_VERSION, MAX_PAGE_SIZE, ScopeRequest, ScopeResult};
use crate::identity::{ClientIdentity, IdentityError, IdentityRegistry, SymmetricKey};
use crate::stop::{Stop, StopSignal};

/// How often the scope is fetched, unless `scope_refresh_secs` says otherwise.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

/// Upstream's HTTPS port, unless `https_port` says otherwise.
pub const DEFAULT_HTTPS_PORT: u16 = 443;

/// The shortest time between two fetches that unknown clients asked for: a client retrying
/// with a bad key cannot make this hub hammer upstream.
pub const ON_DEMAND_GAP: Duration = Duration::from_secs(5);

/// How long one page may take, connection and TLS included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The largest answer page accepted.
const MAX_RESPONSE: usize = 8 * 1024 * 1024;

/// The most pages of one answer (a hundred thousand identities).
const MAX_PAGES: usize = 100;

/// How long the token of a request is valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Where upstream's device-scope API is, and how this hub proves who it is there.
#[derive(Debug, Clone)]
pub struct ScopeSyncSettings {
    /// The host: the parent's `GatewayHostName`, else IoT Hub's `HostName`.
    pub host: String,
    /// Its HTTPS port.
    pub port: u16,
    /// TLS: the same roots as the MQTT link.
    pub tls: Arc<rustls::ClientConfig>,
    /// The audience host of tokens (`HostName`).
    pub iothub_hostname: String,
    /// This edge device.
    pub device_id: String,
    /// The key of this hub's `$edgeHub`.
    pub edge_hub_key: SymmetricKey,
    /// How often the scope is fetched.
    pub refresh: Duration,
}

impl ScopeSyncSettings {
    /// Settings from the `[upstream]` table's connection string, HTTPS port, CA (or the
    /// system's roots) and refresh interval.
    ///
    /// # Errors
    ///
    /// When the CA cannot be read.
    pub fn new(
        connection_string: &ConnectionString,
        port: u16,
        ca: Option<&Path>,
        refresh: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            host: connection_string
                .gateway_hostname
                .clone()
                .unwrap_or_else(|| connection_string.iothub_hostname.clone()),
            port,
            tls: super::settings::client_tls(ca)?,
            iothub_hostname: connection_string.iothub_hostname.clone(),
            device_id: connection_string.device_id.clone(),
            edge_hub_key: connection_string.key.clone(),
            refresh,
        })
    }
}

/// Why one page of the scope could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No TCP connection.
    #[error("cannot connect to {address}")]
    Connect {
        /// `host:port`.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The host is not a name TLS can check.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// The TLS handshake failed (e.g. a certificate the CA did not sign).
    #[error("TLS handshake with {address} failed")]
    Tls {
        /// `host:port`.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The request could not be built.
    #[error("cannot build the request")]
    Request(#[from] hyper::http::Error),
    /// The HTTP exchange failed.
    #[error("the HTTP exchange failed")]
    Http(#[from] hyper::Error),
    /// The answer's body could not be read whole.
    #[error("the answer's body could not be read (at most {MAX_RESPONSE} bytes)")]
    Body,
    /// No answer in time.
    #[error("no answer within {REQUEST_TIMEOUT:?}")]
    Timeout,
    /// Upstream refused (401/403: this hub's `$edgeHub` is not registered there, or its key
    /// changed; 404: upstream serves no device scope).
    #[error("upstream answered {status}: {message}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// Upstream's message, shortened.
        message: String,
    },
    /// The answer is not a scope result.
    #[error("the answer is not a device scope")]
    Json(#[from] serde_json::Error),
    /// Upstream kept handing out continuation links.
    #[error("the answer has more than {MAX_PAGES} pages")]
    TooManyPages,
}

/// Why one sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The scope could not be fetched.
    #[error("fetching the device scope from upstream")]
    Fetch(#[from] FetchError),
    /// The registry could not be updated.
    #[error("storing the identities learned from upstream")]
    Registry(#[from] IdentityError),
    /// The blocking registry update panicked or was cancelled.
    #[error("the registry update did not finish")]
    Join(#[from] tokio::task::JoinError),
}

/// The sync task, before it runs.
#[derive(Debug)]
pub struct ScopeSync {
    settings: ScopeSyncSettings,
    registry: Arc<IdentityRegistry>,
    wake: Arc<Notify>,
}

/// The running sync: stop it with [`ScopeSyncHandle::stop`].
#[derive(Debug)]
pub struct ScopeSyncHandle {
    stop: StopSignal,
    task: JoinHandle<()>,
}

impl ScopeSyncHandle {
    /// Stops the sync and waits for it (a fetch in progress is abandoned).
    pub async fn stop(self) {
        self.stop.fire();
        let _ = self.task.await;
    }
}

/// What was last logged about an answer, so that a steady state is logged once.
#[derive(Debug, Default)]
struct Reported {
    conflicts: Vec<ClientIdentity>,
    skipped: Vec<(String, &'static str)>,
}

impl ScopeSync {
    /// A sync of `registry` with upstream, fetching at once when `wake` is notified.
    #[must_use]
    pub fn new(
        settings: ScopeSyncSettings,
        registry: Arc<IdentityRegistry>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            settings,
            registry,
            wake,
        }
    }

    /// Starts the sync on the current runtime.
    #[must_use]
    pub fn spawn(self) -> ScopeSyncHandle {
        let stop = StopSignal::new();
        let task = tokio::spawn(self.run(stop.subscribe()));
        ScopeSyncHandle { stop, task }
    }

    /// Syncs until `stop` fires.
    async fn run(self, mut stop: Stop) {
        let seed = u64::from(std::process::id()) ^ now_secs();
        let mut backoff = Backoff::new(Duration::from_secs(1), self.settings.refresh, seed);
        let mut failing = false;
        let mut reported = Reported::default();
        tracing::info!(
            host = %self.settings.host,
            port = self.settings.port,
            every = ?self.settings.refresh,
            "syncing the device scope from upstream"
        );
        loop {
            let attempt = tokio::time::Instant::now();
            let outcome = tokio::select! {
                outcome = self.sync_once(&mut reported) => outcome,
                () = stop.stopped() => return,
            };
            let delay = match outcome {
                Ok(()) => {
                    if failing {
                        tracing::info!("device scope sync works again");
                    }
                    failing = false;
                    backoff.reset();
                    self.settings.refresh
                }
                Err(error) => {
                    let error = format!("{:#}", anyhow::Error::from(error));
                    if failing {
                        tracing::debug!(%error, "device scope sync failed again");
                    } else {
                        tracing::warn!(
                            %error,
                            "device scope sync failed; the identities learned before stay; retrying with back-off"
                        );
                    }
                    failing = true;
                    backoff.next_delay()
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.wake.notified() => {
                    tokio::select! {
                        () = tokio::time::sleep_until(attempt + ON_DEMAND_GAP) => {}
                        () = stop.stopped() => return,
                    }
                    tracing::debug!("device scope sync asked for by an unknown client");
                }
                () = stop.stopped() => return,
            }
        }
    }

    /// Fetches the scope and stores it.
    async fn sync_once(&self, reported: &mut Reported) -> Result<(), SyncError> {
        let answer = self.fetch().await?;
        let learned = crate::identity::scope::learn(&answer, &self.settings.device_id);
        if learned.skipped != reported.skipped {
            for (id, why) in &learned.skipped {
                tracing::warn!(identity = %id, why, "an identity of the device scope is not used");
            }
            reported.skipped = learned.skipped;
        }
        let registry = Arc::clone(&self.registry);
        let identities = learned.identities;
        let changes =
            tokio::task::spawn_blocking(move || registry.replace_upstream(identities)).await??;
        if changes.changed() {
            tracing::info!(
                added = changes.added,
                updated = changes.updated,
                removed = changes.removed,
                "identities from upstream updated"
            );
        }
        if changes.conflicts != reported.conflicts {
            for id in &changes.conflicts {
                tracing::warn!(
                    identity = %id,
                    "upstream names an identity that exists here as a local one; the local one is kept"
                );
            }
            reported.conflicts = changes.conflicts;
        }
        Ok(())
    }

    /// Every page of this hub's scope.
    async fn fetch(&self) -> Result<ScopeResult, FetchError> {
        let mut all = ScopeResult::default();
        let mut continuation = None;
        for _ in 0..MAX_PAGES {
            let page = tokio::time::timeout(REQUEST_TIMEOUT, self.fetch_page(continuation))
                .await
                .map_err(|_| FetchError::Timeout)??;
            all.devices.extend(page.devices);
            all.modules.extend(page.modules);
            match page.continuation_link.filter(|link| !link.is_empty()) {
                None => return Ok(all),
                Some(link) => continuation = Some(link),
            }
        }
        Err(FetchError::TooManyPages)
    }

    /// One page, over a connection of its own.
    async fn fetch_page(&self, continuation: Option<String>) -> Result<ScopeResult, FetchError> {
        let settings = &self.settings;
        let address = format!("{}:{}", settings.host, settings.port);
        let tcp = TcpStream::connect((settings.host.as_str(), settings.port))
            .await
            .map_err(|source| FetchError::Connect {
                address: address.clone(),
                source,
            })?;
        let name = rustls::pki_types::ServerName::try_from(settings.host.clone())
            .map_err(|_| FetchError::ServerName(settings.host.clone()))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(&settings.tls))
            .connect(name, tcp)
            .await
            .map_err(|source| FetchError::Tls { address, source })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection's driver lives as long as this exchange, no longer.
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let response = sender.send_request(self.request(continuation)?).await?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|_| FetchError::Body)?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(FetchError::Refused {
                status,
                message: error_message(&body),
            });
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// The POST of one page.
    fn request(&self, continuation: Option<String>) -> Result<Request<Full<Bytes>>, FetchError> {
        let settings = &self.settings;
        let device = percent_encoding::utf8_percent_encode(
            &settings.device_id,
            percent_encoding::NON_ALPHANUMERIC,
        );
        let path = format!(
            "/devices/{device}/modules/%24edgeHub/devicesAndModulesInTargetDeviceScope?api-version={API_VERSION}"
        );
        let audience = format!(
            "{}/devices/{}/modules/{EDGE_HUB}",
            settings.iothub_hostname, settings.device_id
        );
        let token = crate::sas::sign(
            &audience,
            &settings.edge_hub_key,
            now_secs() + TOKEN_LIFETIME.as_secs(),
        );
        let body = ScopeRequest {
            auth_chain: settings.device_id.clone(),
            page_size: u32::try_from(MAX_PAGE_SIZE).ok(),
            continuation_link: continuation,
        };
        let body = serde_json::to_vec(&body).expect("a scope request always serializes");
        Ok(Request::post(path)
            .header(hyper::header::HOST, &settings.host)
            .header(hyper::header::AUTHORIZATION, token)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?)
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `ErrorMessage` of a refusal, or the start of its body.
fn error_message(body: &[u8]) -> String {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("ErrorMessage")
                .or_else(|| v.get("message"))
                .and_then(|m| m.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    message.chars().take(200).collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_shortened_to_their_message() {
        assert_eq!(
            error_message(br#"{"ErrorMessage": "not authorized"}"#),
            "not authorized"
        );
        assert_eq!(error_message(b"plain"), "plain");
        assert_eq!(error_message(&[b'x'; 1000]).len(), 200);
    }
}
