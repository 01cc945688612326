//! The hub's configuration: the TOML file of `edgehub run --config FILE`, or the embedded
//! default of `edgehub run`. `config/edgehub.example.toml` documents every key.
//!
//! Unknown keys and bad values are errors that name the key. Relative paths in a file
//! (`data_dir`, `manifest`, `tls.cert`, `tls.key`) are resolved against the file's folder, so
//! a configuration means the same whatever the working directory.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
pub use store::{Durability, Quota, QuotaPolicy};
use thiserror::Error;

use crate::identity::{Hostnames, IdentityError, IdentityRegistry, validate_module_id};
use crate::manifest;

/// The example deployment manifest shipped in the repository, used by the embedded default.
pub const EXAMPLE_MANIFEST: &str = include_str!("../config/deployment.example.json");

/// The hub's configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The edge device's id: the device of every module identity.
    pub device_id: String,
    /// The IoT Hub's hostname (`HostName=` of connection strings).
    pub iothub_hostname: String,
    /// The hostname modules and leaf devices use to reach the hub (`GatewayHostName=`, the
    /// server certificate's name).
    pub gateway_hostname: String,
    /// The folder of the store, the identities and the generated certificates.
    pub data_dir: PathBuf,
    /// The deployment manifest: routes, TTL, and the modules that get identities
    /// ([`ManifestSource::FromUpstream`] when a child hub has none of its own).
    pub manifest: ManifestSource,
    /// The listening addresses.
    pub listen: ListenConfig,
    /// The server certificate and key; `None`: generated under `data_dir/certs`.
    pub tls: Option<TlsConfig>,
    /// The store's settings.
    pub store: StoreSettings,
    /// Decision D2: a publish to a topic outside the documented set closes the connection
    /// (`true`) instead of being acknowledged, dropped and counted (`false`, the default).
    pub strict_topics: bool,
    /// `[upstream]`: where `$upstream` messages go; `None`: they wait in their queue.
    pub upstream: Option<UpstreamConfig>,
    /// `[limits]`.
    pub limits: Limits,
    /// `[runtime]`.
    pub runtime: Runtime,
}

/// The `[runtime]` table: the threads of the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Runtime {
    /// `worker_threads`: threads of the async runtime (connections, routing, deliveries);
    /// `None`: [`Runtime::default_worker_threads`]. The store's writer and syncer threads
    /// come on top.
    pub worker_threads: Option<usize>,
}

impl Runtime {
    /// The async runtime's threads when the configuration does not say: one per CPU less
    /// one (for the store's writer and syncer threads), and at least one. Each thread more
    /// costs wake-ups between threads, hence CPU, at a modest message rate (BENCHMARKS.md,
    /// issue 15).
    #[must_use]
    pub fn default_worker_threads() -> usize {
        std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .saturating_sub(1)
            .max(1)
    }

    /// The async runtime's threads.
    #[must_use]
    pub fn worker_threads(&self) -> usize {
        self.worker_threads
            .unwrap_or_else(Self::default_worker_threads)
    }
}

/// The `[upstream]` table: IoT Hub, or the parent hub in a nested deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// `connection_string`: this hub's `$edgeHub` connection string; the host connected to is
    /// its `GatewayHostName` when present (a parent hub), else its `HostName` (IoT Hub).
    pub connection_string: crate::upstream::ConnectionString,
    /// `port` (default 8883).
    pub port: u16,
    /// `ca`: the CA that signs upstream's server certificate (PEM); default: the system's
    /// roots.
    pub ca: Option<PathBuf>,
    /// `live_first` (default `false`): messages that arrive while upstream keeps up leave
    /// before the backlog stored during an outage (order is then kept within each, not across
    /// them).
    pub live_first: bool,
    /// `https_port` (default 443): upstream's HTTPS port, where its device-scope API is.
    pub https_port: u16,
    /// `scope_refresh_secs` (default 30, 1 to 86400): how often the identities of this hub's
    /// device scope are fetched from upstream (also at start, and at once, at most every few
    /// seconds, when an unknown identity tries to connect).
    pub scope_refresh: Duration,
}

/// The `[limits]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `max_connections`: the most connections open at once over MQTT, MQTTS and HTTPS
    /// (default 16,384); more are closed as soon as they are accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: crate::hub::HubSettings::MAX_CONNECTIONS,
        }
    }
}

/// Where the deployment manifest comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestSource {
    /// A file.
    File(PathBuf),
    /// Text built into the binary ([`EXAMPLE_MANIFEST`] for the embedded default).
    Embedded(&'static str),
    /// None of its own: `manifest` left out of a configuration with `[upstream]`. The hub
    /// starts with no routes and no modules (or on the last deployment from upstream, kept in
    /// its data folder) and takes its deployment from upstream ([`Config::load_deployment`]
    /// gives [`no_routes`]).
    FromUpstream,
}

/// The `$edgeHub` desired properties of a hub with no manifest of its own, until upstream
/// deploys: schema 1.1, no routes, the default TTL (7200 s), and `$version` 0, which no
/// deployment from upstream has (IoT Hub's versions start at 1), so that the first one is
/// applied whatever its version.
#[must_use]
pub fn no_routes() -> Value {
    serde_json::json!({
        "schemaVersion": "1.1",
        "routes": {},
        "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
        "$version": 0,
    })
}

/// The `[listen]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// MQTT over TLS (default `0.0.0.0:8883`).
    pub mqtts: SocketAddr,
    /// Plain MQTT, for development and benchmarks (default: off).
    pub mqtt: Option<SocketAddr>,
    /// HTTPS, for the direct methods API (default `0.0.0.0:443`).
    pub https: SocketAddr,
    /// Prometheus metrics at `/metrics` (default: off).
    pub metrics: Option<SocketAddr>,
}

/// The `[tls]` table: a server certificate chain and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, server certificate first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The `[store]` table, in the store's own terms: `store.durability` (with
/// `store.flush_interval_ms`), and the quota (`store.max_store_bytes`,
/// `store.min_free_disk_bytes`, `store.quota_policy`: decision D10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// When a message counts as stored (and the publisher gets its PUBACK): `"sync"`
    /// (default) or `"periodic"`.
    pub durability: Durability,
    /// The limits on the store's disk use, and what happens when one is reached: `"reject"`
    /// (default) or `"drop_oldest"`.
    pub quota: Quota,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            quota: Quota::default(),
        }
    }
}

/// Default of `store.flush_interval_ms`.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            mqtts: SocketAddr::from(([0, 0, 0, 0], 8883)),
            mqtt: None,
            https: SocketAddr::from(([0, 0, 0, 0], 443)),
            metrics: None,
        }
    }
}

/// The parts of the deployment manifest the hub needs at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// `modulesContent.$edgeHub."properties.desired"`: routes, store-and-forward settings.
    pub edge_hub: Value,
    /// The module ids of `$edgeAgent`'s `modules`: each gets an identity at start.
    pub modules: Vec<String>,
}

/// Why the configuration (or its deployment manifest) cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Not TOML, an unknown key, a missing key, or a value of the wrong type (the message
    /// names the key and shows its line).
    #[error("{}: {error}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML reader says (not a `source`: it is the message itself).
        error: Box<toml::de::Error>,
    },
    /// A value of the right type that is not acceptable.
    #[error("{origin}: invalid `{key}`: {reason}")]
    Invalid {
        /// The file, or `<embedded default>`.
        origin: Origin,
        /// The key, with its table (`listen.mqtts`).
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The deployment manifest cannot be read or lacks what the hub needs.
    #[error("deployment manifest {origin}: {reason}")]
    Manifest {
        /// The manifest file, or `<embedded example>`.
        origin: Origin,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// The key a [`ConfigError::Invalid`] is about.
    #[must_use]
    pub fn key(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Where a configuration or manifest came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file.
    File(PathBuf),
    /// Built into the binary.
    Embedded,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => path.display().fmt(f),
            Self::Embedded => f.write_str("<embedded default>"),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    ///
    /// When the file cannot be read, is not TOML, has an unknown or missing key, or a bad
    /// value; the error names the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The configuration of a command line: the file at `path`, or without one the
    /// [embedded default](Self::embedded_default) in the working directory.
    ///
    /// # Errors
    ///
    /// As [`Config::load`]; [`ConfigError::Read`] when the working directory is unknown.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => Self::load(path),
            None => std::env::current_dir()
                .map(|dir| Self::embedded_default(&dir))
                .map_err(|source| ConfigError::Read {
                    path: PathBuf::from("."),
                    source,
                }),
        }
    }

    /// Parses configuration text as if read from `path` (relative paths resolve against its
    /// folder).
    ///
    /// # Errors
    ///
    /// As [`Config::load`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let parse_error = |error| ConfigError::Parse {
            path: path.to_owned(),
            error: Box::new(error),
        };
        let raw: RawConfig = toml::from_str(text).map_err(parse_error)?;
        if raw.manifest.is_none() && raw.upstream.is_none() {
            // Only a child hub may go without: the error of a missing required key.
            toml::from_str::<RequiredManifest>(text).map_err(parse_error)?;
        }
        let base = path.parent().unwrap_or(Path::new(""));
        raw.validate(&Validator {
            origin: Origin::File(path.to_owned()),
            base,
        })
    }

    /// The configuration of `edgehub run` without `--config`: a `localhost` gateway, the data
    /// folder `working_dir/data`, generated certificates, MQTT over TLS on `0.0.0.0:8883`,
    /// plain MQTT on `127.0.0.1:1883`, metrics on `127.0.0.1:9600`, and the example
    /// deployment manifest built into the binary.
    #[must_use]
    pub fn embedded_default(working_dir: &Path) -> Self {
        Self {
            device_id: "edge-device".to_owned(),
            iothub_hostname: "edgehub.local".to_owned(),
            gateway_hostname: "localhost".to_owned(),
            data_dir: working_dir.join("data"),
            manifest: ManifestSource::Embedded(EXAMPLE_MANIFEST),
            listen: ListenConfig {
                mqtt: Some(SocketAddr::from(([127, 0, 0, 1], 1883))),
                metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9600))),
                ..ListenConfig::default()
            },
            tls: None,
            store: StoreSettings::default(),
            strict_topics: false,
            upstream: None,
            limits: Limits::default(),
            runtime: Runtime::default(),
        }
    }

    /// The hostnames clients use (for connection strings and token audiences).
    #[must_use]
    pub fn hostnames(&self) -> Hostnames {
        Hostnames {
            iothub: self.iothub_hostname.clone(),
            gateway: self.gateway_hostname.clone(),
        }
    }

    /// What the operator should be warned about at start: plain MQTT (`listen.mqtt`) or
    /// metrics (`listen.metrics`) on an address other than loopback, where anyone on the
    /// network can reach them without TLS. One sentence each, naming the key and the address.
    #[must_use]
    pub fn exposure_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let Some(address) = self.listen.mqtt.filter(|a| !is_loopback(*a)) {
            warnings.push(format!(
                "listen.mqtt = {address}: plain MQTT (no TLS: tokens and messages travel in \
                 clear text) is reachable from other machines; use 127.0.0.1 or turn it off"
            ));
        }
        if let Some(address) = self.listen.metrics.filter(|a| !is_loopback(*a)) {
            warnings.push(format!(
                "listen.metrics = {address}: the metrics endpoint (no TLS, no authentication: \
                 client ids and traffic figures) is reachable from other machines; use \
                 127.0.0.1 or turn it off"
            ));
        }
        warnings
    }

    /// Opens the identity registry of this configuration (`data_dir`, `device_id`).
    ///
    /// # Errors
    ///
    /// As [`IdentityRegistry::open`].
    pub fn identity_registry(&self) -> Result<IdentityRegistry, IdentityError> {
        IdentityRegistry::open(&self.data_dir, &self.device_id)
    }

    /// Reads the deployment manifest: `$edgeHub`'s desired properties and the module ids of
    /// `$edgeAgent` (none when the manifest has no `$edgeAgent`). Without a manifest
    /// ([`ManifestSource::FromUpstream`]): [`no_routes`] and no modules.
    ///
    /// # Errors
    ///
    /// When the manifest cannot be read, is not JSON, has no `$edgeHub` desired properties, or
    /// names a module whose id IoT Hub would refuse.
    pub fn load_deployment(&self) -> Result<Deployment, ConfigError> {
        let (origin, text) = match &self.manifest {
            ManifestSource::File(path) => {
                let origin = Origin::File(path.clone());
                match std::fs::read_to_string(path) {
                    Ok(text) => (origin, text),
                    Err(e) => {
                        return Err(ConfigError::Manifest {
                            origin,
                            reason: e.to_string(),
                        });
                    }
                }
            }
            ManifestSource::Embedded(text) => (Origin::Embedded, (*text).to_owned()),
            ManifestSource::FromUpstream => {
                return Ok(Deployment {
                    edge_hub: no_routes(),
                    modules: Vec::new(),
                });
            }
        };
        parse_deployment(&text).map_err(|reason| ConfigError::Manifest { origin, reason })
    }
}

fn parse_deployment(text: &str) -> Result<Deployment, String> {
    let document: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let edge_hub = manifest::desired_properties(&document, "$edgeHub")
        .map_err(|e| e.to_string())?
        .clone();
    let has_agent = manifest::modules_content(&document)
        .map_err(|e| e.to_string())?
        .get("$edgeAgent")
        .is_some();
    let mut modules = Vec::new();
    if has_agent {
        let desired =
            manifest::desired_properties(&document, "$edgeAgent").map_err(|e| e.to_string())?;
        match desired.get("modules") {
            None => {}
            Some(Value::Object(map)) => modules.extend(map.keys().cloned()),
            Some(_) => return Err("\"$edgeAgent\" has \"modules\" that is not an object".into()),
        }
    }
    for module in &modules {
        validate_module_id(module).map_err(|e| format!("in $edgeAgent's modules: {e}"))?;
    }
    Ok(Deployment { edge_hub, modules })
}

/// The file as written: strings where the hub wants richer types, so that validation can name
/// the key of a bad value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    device_id: String,
    iothub_hostname: String,
    gateway_hostname: String,
    data_dir: PathBuf,
    /// Required unless `[upstream]` is set.
    manifest: Option<PathBuf>,
    #[serde(default)]
    listen: RawListen,
    tls: Option<RawTls>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    strict_topics: bool,
    upstream: Option<RawUpstream>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    runtime: RawRuntime,
}

/// The `manifest` key alone: read again from a configuration without `[upstream]` that lacks
/// it, for the error a missing required key gets (it names the key and shows the table).
#[derive(Debug, Deserialize)]
struct RequiredManifest {
    #[expect(dead_code, reason = "read only for the error when it is missing")]
    manifest: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuntime {
    worker_threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    connection_string: String,
    port: Option<u16>,
    ca: Option<PathBuf>,
    #[serde(default)]
    live_first: bool,
    https_port: Option<u16>,
    scope_refresh_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    mqtts: Option<String>,
    mqtt: Option<String>,
    https: Option<String>,
    metrics: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    durability: Option<String>,
    flush_interval_ms: Option<u64>,
    max_store_bytes: Option<u64>,
    min_free_disk_bytes: Option<u64>,
    quota_policy: Option<String>,
}

/// Turns raw values into checked ones, naming the key of the first bad one.
struct Validator<'a> {
    origin: Origin,
    base: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: &'static str, reason: impl fmt::Display) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            key,
            reason: reason.to_string(),
        }
    }

    fn hostname(&self, key: &'static str, value: String) -> Result<String, ConfigError> {
        if is_hostname(&value) {
            Ok(value)
        } else {
            Err(self.invalid(
                key,
                format_args!("{value:?} is not a hostname or an IP address"),
            ))
        }
    }

    fn path(&self, key: &'static str, value: &Path) -> Result<PathBuf, ConfigError> {
        if value.as_os_str().is_empty() {
            Err(self.invalid(key, "the path is empty"))
        } else {
            Ok(self.base.join(value))
        }
    }

    fn address(
        &self,
        key: &'static str,
        value: Option<String>,
    ) -> Result<Option<SocketAddr>, ConfigError> {
        value
            .map(|text| {
                text.parse().map_err(|_| {
                    self.invalid(
                        key,
                        format_args!("{text:?} is not an address:port such as 0.0.0.0:8883"),
                    )
                })
            })
            .transpose()
    }
}

impl RawConfig {
    fn validate(self, v: &Validator<'_>) -> Result<Config, ConfigError> {
        crate::identity::validate_device_id(&self.device_id)
            .map_err(|e| v.invalid("device_id", e))?;
        let defaults = ListenConfig::default();
        let listen = ListenConfig {
            mqtts: v
                .address("listen.mqtts", self.listen.mqtts)?
                .unwrap_or(defaults.mqtts),
            mqtt: v.address("listen.mqtt", self.listen.mqtt)?,
            https: v
                .address("listen.https", self.listen.https)?
                .unwrap_or(defaults.https),
            metrics: v.address("listen.metrics", self.listen.metrics)?,
        };
        let tls = self
            .tls
            .map(|tls| {
                Ok::<_, ConfigError>(TlsConfig {
                    cert: v.path("tls.cert", &tls.cert)?,
                    key: v.path("tls.key", &tls.key)?,
                })
            })
            .transpose()?;
        Ok(Config {
            iothub_hostname: v.hostname("iothub_hostname", self.iothub_hostname)?,
            gateway_hostname: v.hostname("gateway_hostname", self.gateway_hostname)?,
            data_dir: v.path("data_dir", &self.data_dir)?,
            manifest: match &self.manifest {
                Some(manifest) => ManifestSource::File(v.path("manifest", manifest)?),
                None => ManifestSource::FromUpstream,
            },
            listen,
            tls,
            store: self.store.validate(v)?,
            strict_topics: self.strict_topics,
            upstream: self
                .upstream
                .map(|raw| raw.validate(v, &self.device_id))
                .transpose()?,
            limits: self.limits.validate(v)?,
            runtime: self.runtime.validate(v)?,
            device_id: self.device_id,
        })
    }
}

impl RawUpstream {
    fn validate(self, v: &Validator<'_>, device_id: &str) -> Result<UpstreamConfig, ConfigError> {
        let connection_string = crate::upstream::ConnectionString::parse(&self.connection_string)
            .map_err(|e| v.invalid("upstream.connection_string", e))?;
        if connection_string.device_id != device_id {
            return Err(v.invalid(
                "upstream.connection_string",
                format_args!(
                    "its DeviceId {:?} is not this hub's device_id {device_id:?}",
                    connection_string.device_id
                ),
            ));
        }
        if self.port == Some(0) {
            return Err(v.invalid("upstream.port", "must be a port number (1 to 65535)"));
        }
        if self.https_port == Some(0) {
            return Err(v.invalid("upstream.https_port", "must be a port number (1 to 65535)"));
        }
        let refresh = self
            .scope_refresh_secs
            .unwrap_or(crate::upstream::scope::DEFAULT_REFRESH.as_secs());
        if !(1..=86_400).contains(&refresh) {
            return Err(v.invalid(
                "upstream.scope_refresh_secs",
                "must be from 1 to 86400 seconds",
            ));
        }
        Ok(UpstreamConfig {
            connection_string,
            port: self.port.unwrap_or(crate::upstream::settings::DEFAULT_PORT),
            ca: self.ca.map(|ca| v.path("upstream.ca", &ca)).transpose()?,
            live_first: self.live_first,
            https_port: self
                .https_port
                .unwrap_or(crate::upstream::scope::DEFAULT_HTTPS_PORT),
            scope_refresh: Duration::from_secs(refresh),
        })
    }
}

impl RawLimits {
    fn validate(self, v: &Validator<'_>) -> Result<Limits, ConfigError> {
        match self.max_connections {
            Some(0) => Err(v.invalid("limits.max_connections", "must be positive")),
            Some(max_connections) => Ok(Limits { max_connections }),
            None => Ok(Limits::default()),
        }
    }
}

impl RawRuntime {
    fn validate(self, v: &Validator<'_>) -> Result<Runtime, ConfigError> {
        match self.worker_threads {
            Some(0) => Err(v.invalid("runtime.worker_threads", "must be positive")),
            Some(n) if n > 1024 => Err(v.invalid("runtime.worker_threads", "1024 at most")),
            worker_threads => Ok(Runtime { worker_threads }),
        }
    }
}

impl RawStore {
    fn validate(self, v: &Validator<'_>) -> Result<StoreSettings, ConfigError> {
        let interval = match self.flush_interval_ms {
            Some(0) => return Err(v.invalid("store.flush_interval_ms", "must be positive")),
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_FLUSH_INTERVAL,
        };
        let durability = match self.durability.as_deref() {
            None | Some("sync") => Durability::Sync,
            Some("periodic") => Durability::Periodic { interval },
            Some(other) => {
                return Err(v.invalid(
                    "store.durability",
                    format_args!("{other:?} is neither \"sync\" nor \"periodic\""),
                ));
            }
        };
        let quota_policy = match self.quota_policy.as_deref() {
            None | Some("reject") => QuotaPolicy::Reject,
            Some("drop_oldest") => QuotaPolicy::DropOldest,
            Some(other) => {
                return Err(v.invalid(
                    "store.quota_policy",
                    format_args!("{other:?} is neither \"reject\" nor \"drop_oldest\""),
                ));
            }
        };
        Ok(StoreSettings {
            durability,
            quota: Quota {
                max_store_bytes: self.max_store_bytes,
                min_free_disk_bytes: self.min_free_disk_bytes,
                policy: quota_policy,
            },
        })
    }
}

/// Whether only this machine can reach `address`: a loopback address (`127.0.0.0/8`, `::1`,
/// or `::ffff:127.x.y.z`). The unspecified address (`0.0.0.0`, `::`) is every interface.
fn is_loopback(address: SocketAddr) -> bool {
    match address.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A DNS name (labels of letters, digits, `-` and `_`, at most 253 characters) or an IP
/// address.
fn is_hostname(text: &str) -> bool {
    if text.parse::<IpAddr>().is_ok() {
        return true;
    }
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
device_id = "edge-1"
iothub_hostname = "myhub.azure-devices.net"
gateway_hostname = "gateway.local"
data_dir = "data"
manifest = "deployment.json"
"#;

    fn parse(extra: &str) -> Result<Config, ConfigError> {
        Config::parse(
            &format!("{MINIMAL}{extra}"),
            Path::new("/etc/edgehub/edgehub.toml"),
        )
    }

    fn invalid_key(extra: &str) -> &'static str {
        let error = parse(extra).unwrap_err();
        error
            .key()
            .unwrap_or_else(|| panic!("not an invalid value: {error}"))
    }

    #[test]
    fn the_upstream_and_limits_tables_are_read_and_checked() {
        let key = "c2VjcmV0LWtleS1vZi1lZGdlaHViLTAxMjM0NTY3ODk=";
        let connection_string = |device: &str| {
            format!(
                "HostName=hub.example.net;DeviceId={device};ModuleId=$edgeHub;SharedAccessKey={key};GatewayHostName=parent.local"
            )
        };
        let config = parse(&format!(
            "[upstream]\nconnection_string = \"{}\"\nport = 18883\nca = \"parent-ca.pem\"\nlive_first = true\n[limits]\nmax_connections = 100\n[runtime]\nworker_threads = 3\n",
            connection_string("edge-1")
        ))
        .unwrap();
        let upstream = config.upstream.unwrap();
        assert_eq!(upstream.port, 18883);
        assert!(upstream.live_first);
        assert_eq!(
            upstream.ca.unwrap(),
            Path::new("/etc/edgehub/parent-ca.pem")
        );
        assert_eq!(
            upstream.connection_string.gateway_hostname.as_deref(),
            Some("parent.local")
        );
        assert_eq!(config.limits.max_connections, 100);
        assert_eq!(config.runtime.worker_threads(), 3);
        let default_port = parse(&format!(
            "[upstream]\nconnection_string = \"{}\"\n",
            connection_string("edge-1")
        ))
        .unwrap();
        let default_port = default_port.upstream.unwrap();
        assert_eq!(default_port.port, 8883);
        assert!(
            !default_port.live_first,
            "the backlog leaves first unless asked"
        );

        assert_eq!(
            invalid_key(&format!(
                "[upstream]\nconnection_string = \"{}\"\n",
                connection_string("someone-else")
            )),
            "upstream.connection_string"
        );
        assert_eq!(
            invalid_key("[upstream]\nconnection_string = \"HostName=h;DeviceId=edge-device\"\n"),
            "upstream.connection_string"
        );
        assert_eq!(
            invalid_key(&format!(
                "[upstream]\nconnection_string = \"{}\"\nport = 0\n",
                connection_string("edge-1")
            )),
            "upstream.port"
        );
        assert_eq!(
            invalid_key("[limits]\nmax_connections = 0\n"),
            "limits.max_connections"
        );
        assert_eq!(
            invalid_key("[runtime]\nworker_threads = 0\n"),
            "runtime.worker_threads"
        );
    }

    #[test]
    fn the_device_scope_keys_of_upstream_are_read_and_checked() {
        let connection_string = "HostName=hub.example.net;DeviceId=edge-1;ModuleId=$edgeHub;SharedAccessKey=c2VjcmV0;GatewayHostName=parent.local";
        let upstream = |extra: &str| {
            format!("[upstream]\nconnection_string = \"{connection_string}\"\n{extra}")
        };
        let defaults = parse(&upstream("")).unwrap().upstream.unwrap();
        assert_eq!(defaults.https_port, 443);
        assert_eq!(defaults.scope_refresh, Duration::from_secs(30));
        let set = parse(&upstream("https_port = 10443\nscope_refresh_secs = 2\n"))
            .unwrap()
            .upstream
            .unwrap();
        assert_eq!(set.https_port, 10443);
        assert_eq!(set.scope_refresh, Duration::from_secs(2));
        assert_eq!(
            invalid_key(&upstream("https_port = 0\n")),
            "upstream.https_port"
        );
        for bad in ["0", "86401"] {
            assert_eq!(
                invalid_key(&upstream(&format!("scope_refresh_secs = {bad}\n"))),
                "upstream.scope_refresh_secs"
            );
        }
        assert!(parse(&upstream("https_port = 70000\n")).is_err());
        assert!(parse(&upstream("scope_refresh_secs = -1\n")).is_err());
    }

    #[test]
    fn only_a_hub_with_upstream_may_go_without_a_manifest() {
        let without = MINIMAL.replace("manifest = \"deployment.json\"\n", "");
        let error = Config::parse(&without, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing field `manifest`"), "{error}");
        assert!(error.starts_with("c.toml: "), "{error}");

        let key = "c2VjcmV0LWtleS1vZi1lZGdlaHViLTAxMjM0NTY3ODk=";
        let child = format!(
            "{without}[upstream]\nconnection_string = \"HostName=hub.example.net;DeviceId=edge-1;ModuleId=$edgeHub;SharedAccessKey={key};GatewayHostName=parent.local\"\n"
        );
        let config = Config::parse(&child, Path::new("c.toml")).unwrap();
        assert_eq!(config.manifest, ManifestSource::FromUpstream);
        let deployment = config.load_deployment().unwrap();
        assert!(deployment.modules.is_empty());
        assert_eq!(deployment.edge_hub, no_routes());
        let routes = router::EdgeHubRoutes::from_desired(&deployment.edge_hub).unwrap();
        assert_eq!(routes.routes.len(), 0);
    }

    #[test]
    fn minimal_file_gets_the_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.device_id, "edge-1");
        assert_eq!(config.data_dir, Path::new("/etc/edgehub/data"));
        assert_eq!(
            config.manifest,
            ManifestSource::File("/etc/edgehub/deployment.json".into())
        );
        assert_eq!(config.listen, ListenConfig::default());
        assert_eq!(config.listen.mqtts.to_string(), "0.0.0.0:8883");
        assert_eq!(config.listen.https.to_string(), "0.0.0.0:443");
        assert_eq!(config.tls, None);
        assert_eq!(config.store, StoreSettings::default());
    }

    #[test]
    fn absolute_paths_are_kept() {
        let config = parse("[tls]\ncert = \"/pki/server.pem\"\nkey = \"key.pem\"\n").unwrap();
        let tls = config.tls.unwrap();
        assert_eq!(tls.cert, Path::new("/pki/server.pem"));
        assert_eq!(tls.key, Path::new("/etc/edgehub/key.pem"));
    }

    #[test]
    fn every_listener_and_store_key_is_read() {
        let config = parse(
            r#"
[listen]
mqtts = "[::]:8883"
mqtt = "127.0.0.1:1883"
https = "0.0.0.0:8443"
metrics = "127.0.0.1:9600"

[store]
durability = "periodic"
flush_interval_ms = 250
max_store_bytes = 1073741824
min_free_disk_bytes = 104857600
quota_policy = "drop_oldest"
"#,
        )
        .unwrap();
        assert_eq!(config.listen.mqtts.to_string(), "[::]:8883");
        assert_eq!(config.listen.mqtt.unwrap().to_string(), "127.0.0.1:1883");
        assert_eq!(config.listen.https.port(), 8443);
        assert_eq!(config.listen.metrics.unwrap().port(), 9600);
        assert_eq!(
            config.store,
            StoreSettings {
                durability: Durability::Periodic {
                    interval: Duration::from_millis(250)
                },
                quota: Quota {
                    max_store_bytes: Some(1 << 30),
                    min_free_disk_bytes: Some(100 << 20),
                    policy: QuotaPolicy::DropOldest,
                },
            }
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(invalid_key("[listen]\nmqtts = \"8883\"\n"), "listen.mqtts");
        assert_eq!(
            invalid_key("[listen]\nmetrics = \"x:1\"\n"),
            "listen.metrics"
        );
        assert_eq!(
            invalid_key("[store]\ndurability = \"fast\"\n"),
            "store.durability"
        );
        assert_eq!(
            invalid_key("[store]\nquota_policy = \"evict\"\n"),
            "store.quota_policy"
        );
        assert_eq!(
            invalid_key("[store]\nflush_interval_ms = 0\n"),
            "store.flush_interval_ms"
        );
        let bad_device = MINIMAL.replace("edge-1", "edge/1");
        let error = Config::parse(&bad_device, Path::new("c.toml")).unwrap_err();
        assert_eq!(error.key(), Some("device_id"));
        assert!(error.to_string().contains("`device_id`"), "{error}");
        let bad_host = MINIMAL.replace("gateway.local", "");
        let error = Config::parse(&bad_host, Path::new("c.toml")).unwrap_err();
        assert_eq!(error.key(), Some("gateway_hostname"));
    }

    #[test]
    fn unknown_and_missing_keys_are_named() {
        let unknown = parse("colour = \"blue\"\n").unwrap_err().to_string();
        assert!(unknown.contains("colour"), "{unknown}");
        let nested = parse("[listen]\namqp = \"0.0.0.0:5671\"\n")
            .unwrap_err()
            .to_string();
        assert!(nested.contains("amqp"), "{nested}");
        let missing = Config::parse(
            &MINIMAL.replace("device_id = \"edge-1\"", ""),
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(missing.contains("device_id"), "{missing}");
        let wrong_type = parse("[store]\nmax_store_bytes = \"1GB\"\n")
            .unwrap_err()
            .to_string();
        assert!(wrong_type.contains("max_store_bytes"), "{wrong_type}");
    }

    #[test]
    fn hostnames_are_dns_names_or_ip_addresses() {
        for good in [
            "localhost",
            "gw.example.com",
            "my_gw-1",
            "192.168.1.10",
            "::1",
        ] {
            assert!(is_hostname(good), "{good}");
        }
        for bad in [
            "",
            "a..b",
            "a b",
            "gw.example.com.",
            "https://gw",
            "gw:8883",
        ] {
            assert!(!is_hostname(bad), "{bad}");
        }
    }

    #[test]
    fn plain_mqtt_and_metrics_beyond_loopback_are_warned_about() {
        let warnings = |listen: &str| parse(listen).unwrap().exposure_warnings();
        assert!(warnings("").is_empty(), "both off by default");
        for quiet in [
            "[listen]\nmqtt = \"127.0.0.1:1883\"\nmetrics = \"127.0.0.2:9600\"\n",
            "[listen]\nmqtt = \"[::1]:1883\"\nmetrics = \"[::ffff:127.0.0.1]:9600\"\n",
            "[listen]\nmqtts = \"0.0.0.0:8883\"\nhttps = \"0.0.0.0:443\"\n",
        ] {
            assert!(warnings(quiet).is_empty(), "{quiet}");
        }
        let both = warnings("[listen]\nmqtt = \"0.0.0.0:1883\"\nmetrics = \"[::]:9600\"\n");
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(
            both[0].starts_with("listen.mqtt = 0.0.0.0:1883"),
            "{}",
            both[0]
        );
        assert!(
            both[1].starts_with("listen.metrics = [::]:9600"),
            "{}",
            both[1]
        );
        let lan = warnings("[listen]\nmqtt = \"192.168.1.10:1883\"\n");
        assert_eq!(lan.len(), 1);
        assert!(lan[0].contains("listen.mqtt"), "{lan:?}");
        assert!(
            Config::embedded_default(Path::new("/w"))
                .exposure_warnings()
                .is_empty()
        );
    }

    #[test]
    fn embedded_default_runs_the_example_deployment() {
        let config = Config::embedded_default(Path::new("/work"));
        assert_eq!(config.gateway_hostname, "localhost");
        assert_eq!(config.data_dir, Path::new("/work/data"));
        assert_eq!(config.listen.mqtt.unwrap().to_string(), "127.0.0.1:1883");
        let deployment = config.load_deployment().unwrap();
        assert_eq!(deployment.modules, ["sensor", "filter"]);
        assert!(deployment.edge_hub["routes"].is_object());
    }

    #[test]
    fn deployment_without_agent_has_no_modules() {
        let text = r#"{"modulesContent": {"$edgeHub": {"properties.desired": {"routes": {}}}}}"#;
        let deployment = parse_deployment(text).unwrap();
        assert!(deployment.modules.is_empty());
        assert_eq!(deployment.edge_hub["routes"], serde_json::json!({}));
    }

    #[test]
    fn deployment_errors_say_what_is_missing() {
        let no_hub = r#"{"modulesContent": {"$edgeAgent": {"properties.desired": {}}}}"#;
        assert!(parse_deployment(no_hub).unwrap_err().contains("$edgeHub"));
        let bad_module = r#"{"modulesContent": {
            "$edgeHub": {"properties.desired": {}},
            "$edgeAgent": {"properties.desired": {"modules": {"a/b": {}}}}}}"#;
        assert!(parse_deployment(bad_module).unwrap_err().contains("a/b"));
        assert!(parse_deployment("not json").is_err());
        let missing = Config {
            manifest: ManifestSource::File("/nonexistent/deployment.json".into()),
            ..Config::embedded_default(Path::new("/"))
        };
        let error = missing.load_deployment().unwrap_err().to_string();
        assert!(error.contains("/nonexistent/deployment.json"), "{error}");
    }
}
