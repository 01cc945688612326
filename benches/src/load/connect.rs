//! How a load client reaches the broker: where, over TCP or TLS, and as whom (a hub module
//! with a SAS token, or an anonymous plain MQTT client).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgehub::identity::{IdentityError, IdentityRegistry, SymmetricKey};
use rumqttc::{AsyncClient, EventLoop, MqttOptions, NetworkOptions, TlsConfiguration, Transport};
use thiserror::Error;

/// Where the broker listens.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name or address; with TLS, also the name the server certificate must carry.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS settings; `None`: plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// How clients authenticate.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Plain MQTT: no credentials.
    Plain,
    /// IoT Edge hub modules with SAS tokens.
    Hub(HubModules),
}

/// The hub modules the generator connects as, with their keys.
#[derive(Clone)]
pub struct HubModules {
    /// The edge device's id.
    pub device_id: String,
    /// The IoT Hub host name that token audiences and usernames name.
    pub iothub_hostname: String,
    /// Each module's primary key, by module id.
    pub keys: HashMap<String, SymmetricKey>,
}

impl std::fmt::Debug for HubModules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubModules")
            .field("device_id", &self.device_id)
            .field("iothub_hostname", &self.iothub_hostname)
            .field("modules", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A failure to prepare the clients' connections.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// The CA file cannot be read.
    #[error("reading the CA certificate {path}: {source}")]
    ReadCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("the CA file {path} holds no usable certificate: {reason}")]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The identity store refused.
    #[error("creating the load modules' identities: {0}")]
    Identity(#[from] IdentityError),
    /// A module has no key.
    #[error("no key for module {0}")]
    NoKey(String),
}

/// A TLS client configuration trusting only the CA certificates in `ca_pem`.
///
/// # Errors
///
/// When the file cannot be read or holds no valid certificate.
pub fn tls_trusting(ca_pem: &Path) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    // Another caller may have installed it already; either way ring is then the provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read_error = |source| ConnectError::ReadCa {
        path: ca_pem.to_owned(),
        source,
    };
    let bad = |reason: String| ConnectError::BadCa {
        path: ca_pem.to_owned(),
        reason,
    };
    let mut reader = BufReader::new(File::open(ca_pem).map_err(read_error)?);
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut reader) {
        roots
            .add(cert.map_err(read_error)?)
            .map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no CERTIFICATE block".to_owned()));
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl HubModules {
    /// The identities of `modules` in `store` (created when missing, in one write).
    ///
    /// # Errors
    ///
    /// When the store refuses a module id or cannot be written.
    pub fn from_store(
        store: &IdentityRegistry,
        device_id: &str,
        iothub_hostname: &str,
        modules: &[String],
    ) -> Result<Self, ConnectError> {
        let identities = store.add_modules(modules.iter().map(String::as_str))?;
        let keys = identities
            .into_iter()
            .filter_map(|identity| Some((identity.id.module_id?, identity.primary_key)))
            .collect();
        Ok(Self {
            device_id: device_id.to_owned(),
            iothub_hostname: iothub_hostname.to_owned(),
            keys,
        })
    }

    /// The client id, username and SAS token of `module`, the token valid for `valid_for`.
    ///
    /// # Errors
    ///
    /// When the module has no key.
    pub fn credentials(
        &self,
        module: &str,
        valid_for: Duration,
    ) -> Result<(String, String, String), ConnectError> {
        let key = self
            .keys
            .get(module)
            .ok_or_else(|| ConnectError::NoKey(module.to_owned()))?;
        let (device, hub) = (&self.device_id, &self.iothub_hostname);
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(valid_for)
            .as_secs();
        let token = edgehub::sas::sign(
            &format!("{hub}/devices/{device}/modules/{module}"),
            key,
            expiry,
        );
        Ok((
            format!("{device}/{module}"),
            format!("{hub}/{device}/{module}/?api-version=2021-04-12"),
            token,
        ))
    }
}

/// The MQTT options of one load client, `name` being its module id in hub mode or the base
/// of its client id in plain mode.
///
/// # Errors
///
/// When a hub module has no key.
pub fn options(
    endpoint: &Endpoint,
    auth: &Auth,
    name: &str,
    max_payload: usize,
    inflight: u16,
    valid_for: Duration,
) -> Result<MqttOptions, ConnectError> {
    let mut options = match auth {
        Auth::Plain => MqttOptions::new(name, &endpoint.host, endpoint.port),
        Auth::Hub(modules) => {
            let (client_id, username, password) = modules.credentials(name, valid_for)?;
            let mut options = MqttOptions::new(client_id, &endpoint.host, endpoint.port);
            options.set_credentials(username, password);
            options
        }
    };
    if let Some(tls) = &endpoint.tls {
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::clone(tls))));
    }
    // Topics, properties and the fixed header on top of the payload.
    let max_packet = max_payload + 16 * 1024;
    options
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(max_packet, max_packet)
        .set_inflight(inflight.max(1));
    Ok(options)
}

/// Whether a SUBACK refuses one of the subscriptions.
#[must_use]
pub fn refuses(ack: &rumqttc::SubAck) -> bool {
    ack.return_codes
        .iter()
        .any(|code| matches!(code, rumqttc::SubscribeReasonCode::Failure))
}

/// A client and its event loop with Nagle's algorithm off (rumqttc leaves it on): small
/// PUBLISH and PUBACK packets must not wait for the peer's delayed ACK (a 40 ms stall on
/// Linux), or the generator measures itself instead of the broker.
#[must_use]
pub fn client(options: MqttOptions, capacity: usize) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, capacity);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    (client, eventloop)
}
