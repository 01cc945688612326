//! Where upstream is and how this hub proves who it is there: the `[upstream]` table, built on
//! the connection string of this hub's `$edgeHub` identity (the shape of the legacy runtime's
//! `EdgeHubConnectionString` with `GatewayHostName`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::identity::id::EDGE_HUB;
use crate::identity::{ClientIdentity, IdentityRegistry, SymmetricKey};

/// The MQTT-over-TLS port of IoT Hub and of a parent hub.
pub const DEFAULT_PORT: u16 = 8883;

/// How long a token minted for an upstream connection is valid; a link reconnects with a
/// fresh one before it expires.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// A link with nothing to send and nothing in flight for this long closes (D8), unless the
/// settings say otherwise.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A connection is renewed this long before its token expires, unless the settings say
/// otherwise.
pub const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// A connection string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    /// A `name=value` field is missing.
    #[error("the connection string has no {0}")]
    Missing(&'static str),
    /// A part is not `name=value`.
    #[error("the connection string has a part that is not name=value: {0:?}")]
    Malformed(String),
    /// The key is not base64.
    #[error("the connection string's SharedAccessKey is not base64")]
    Key,
    /// Not the connection string of a `$edgeHub` identity.
    #[error("the connection string is not that of an edge hub (ModuleId must be $edgeHub)")]
    NotEdgeHub,
}

/// The connection string of an edge hub's `$edgeHub` identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// `HostName`: the IoT Hub (the audience of tokens).
    pub iothub_hostname: String,
    /// `DeviceId`: this edge device.
    pub device_id: String,
    /// `SharedAccessKey` of `$edgeHub`.
    pub key: SymmetricKey,
    /// `GatewayHostName`: the parent hub, in a nested deployment.
    pub gateway_hostname: Option<String>,
}

impl ConnectionString {
    /// Parses `HostName=..;DeviceId=..;ModuleId=$edgeHub;SharedAccessKey=..[;GatewayHostName=..]`
    /// (names case-insensitive, any order; the key's value may contain `=`).
    ///
    /// # Errors
    ///
    /// A missing or malformed field, or another identity than `$edgeHub`.
    pub fn parse(text: &str) -> Result<Self, ConnectionStringError> {
        let (mut host, mut device, mut module, mut key, mut gateway) =
            (None, None, None, None, None);
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| ConnectionStringError::Malformed(part.to_owned()))?;
            let slot = match name.to_ascii_lowercase().as_str() {
                "hostname" => &mut host,
                "deviceid" => &mut device,
                "moduleid" => &mut module,
                "sharedaccesskey" => &mut key,
                "gatewayhostname" => &mut gateway,
                _ => continue,
            };
            *slot = Some(value.to_owned());
        }
        if module.as_deref() != Some(EDGE_HUB) {
            return Err(ConnectionStringError::NotEdgeHub);
        }
        let key = key.ok_or(ConnectionStringError::Missing("SharedAccessKey"))?;
        Ok(Self {
            iothub_hostname: host.ok_or(ConnectionStringError::Missing("HostName"))?,
            device_id: device.ok_or(ConnectionStringError::Missing("DeviceId"))?,
            key: SymmetricKey::from_base64(&key).map_err(|_| ConnectionStringError::Key)?,
            gateway_hostname: gateway.filter(|g| !g.is_empty()),
        })
    }
}

/// How the hub reaches upstream.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// The host connected to: the parent's `GatewayHostName`, else IoT Hub's `HostName`.
    pub host: String,
    /// Its MQTT-over-TLS port.
    pub port: u16,
    /// TLS: the roots that sign upstream's server certificate.
    pub tls: Arc<rustls::ClientConfig>,
    /// How each identity proves itself upstream.
    pub credentials: Arc<Credentials>,
    /// Live data first: new messages leave before the backlog (see [`super::lanes`]); off
    /// unless set.
    pub live_first: bool,
    /// How long a link with nothing to send, nothing in flight and no subscription stays open
    /// (D8): [`IDLE_TIMEOUT`] unless set (tests set short ones).
    pub idle_timeout: Duration,
    /// How long before its token expires a link reconnects with a fresh one:
    /// [`RENEW_BEFORE`] unless set (tests set one close to [`TOKEN_LIFETIME`]).
    pub renew_before: Duration,
}

impl UpstreamSettings {
    /// Settings for `connection_string` on `port`, trusting `ca` (a PEM file) or, without
    /// it, the system's roots. Identities of this device that upstream is IoT Hub sign their
    /// own tokens with their keys from `registry`.
    ///
    /// # Errors
    ///
    /// A bad connection string, or a CA that cannot be read.
    pub fn new(
        connection_string: &ConnectionString,
        port: u16,
        ca: Option<&Path>,
        registry: Option<Arc<IdentityRegistry>>,
    ) -> anyhow::Result<Self> {
        let host = connection_string
            .gateway_hostname
            .clone()
            .unwrap_or_else(|| connection_string.iothub_hostname.clone());
        let credentials = match &connection_string.gateway_hostname {
            Some(_) => Credentials::OnBehalfOf {
                iothub_hostname: connection_string.iothub_hostname.clone(),
                edge_device_id: connection_string.device_id.clone(),
                edge_hub_key: connection_string.key.clone(),
                registry: registry.clone(),
            },
            None => Credentials::OwnKeys {
                iothub_hostname: connection_string.iothub_hostname.clone(),
                registry: registry.ok_or_else(|| {
                    anyhow::anyhow!("upstream to IoT Hub needs the identity registry")
                })?,
            },
        };
        Ok(Self {
            host,
            port,
            tls: client_tls(ca)?,
            credentials: Arc::new(credentials),
            live_first: false,
            idle_timeout: IDLE_TIMEOUT,
            renew_before: RENEW_BEFORE,
        })
    }
}

/// A rustls client configuration (ring) trusting `ca`, or the system's roots without it.
///
/// # Errors
///
/// When the CA file cannot be read or holds no certificate.
pub fn client_tls(ca: Option<&Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use anyhow::Context as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the upstream CA {}", path.display()))?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.with_context(|| format!("parsing {}", path.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("adding the upstream CA {}", path.display()))?;
                added += 1;
            }
            anyhow::ensure!(added > 0, "{} holds no certificate", path.display());
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::warn!(%error, "a system root certificate could not be loaded");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            tracing::info!(
                roots = added,
                "upstream trusts the system's root certificates"
            );
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// How an identity's upstream connection authenticates.
#[derive(Debug)]
pub enum Credentials {
    /// To a parent hub (spec 1.5): every identity connects on behalf of this hub, with a
    /// token of this hub's `$edgeHub` and `auth-chain` in the username; module and leaf keys
    /// never leave the device.
    OnBehalfOf {
        /// The audience host of tokens (`HostName` of the connection string).
        iothub_hostname: String,
        /// This edge device.
        edge_device_id: String,
        /// The key of this hub's `$edgeHub`.
        edge_hub_key: SymmetricKey,
        /// Where the parents of devices further down are (a leaf device of a grandchild edge
        /// device connects through it); without it, chains have one hop below this hub.
        registry: Option<Arc<IdentityRegistry>>,
    },
    /// To IoT Hub: every identity signs its own token with its key from the registry.
    OwnKeys {
        /// IoT Hub's hostname.
        iothub_hostname: String,
        /// Where the keys are.
        registry: Arc<IdentityRegistry>,
    },
}

/// What an upstream CONNECT carries for one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The client id: `device` or `device/module`.
    pub client_id: String,
    /// The username, `{host}/{device}[/{module}]/?api-version=..[&auth-chain=..]`.
    pub username: String,
    /// A SAS token.
    pub password: String,
    /// When the token expires.
    pub expires: SystemTime,
}

/// The api-version the SDKs send.
const API_VERSION: &str = "2021-04-12";

impl Credentials {
    /// The CONNECT credentials of `target`, with a token valid from `now` for
    /// [`TOKEN_LIFETIME`].
    ///
    /// # Errors
    ///
    /// When upstream is IoT Hub and the registry has no key for `target`.
    pub fn login(&self, target: &ClientIdentity, now: SystemTime) -> anyhow::Result<Login> {
        let expires = now + TOKEN_LIFETIME;
        let expiry = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let client_id = client_id(target);
        match self {
            Self::OnBehalfOf {
                iothub_hostname,
                edge_device_id,
                edge_hub_key,
                registry,
            } => {
                let audience =
                    format!("{iothub_hostname}/devices/{edge_device_id}/modules/{EDGE_HUB}");
                let chain = auth_chain(target, edge_device_id, registry.as_deref());
                Ok(Login {
                    username: format!(
                        "{iothub_hostname}/{client_id}/?api-version={API_VERSION}&auth-chain={chain}"
                    ),
                    password: crate::sas::sign(&audience, edge_hub_key, expiry),
                    client_id,
                    expires,
                })
            }
            Self::OwnKeys {
                iothub_hostname,
                registry,
            } => {
                let identity = registry
                    .get(&target.device_id, target.module_id.as_deref())?
                    .ok_or_else(|| anyhow::anyhow!("no identity {client_id} to sign for"))?;
                let audience = match &target.module_id {
                    Some(module) => format!(
                        "{iothub_hostname}/devices/{}/modules/{module}",
                        target.device_id
                    ),
                    None => format!("{iothub_hostname}/devices/{}", target.device_id),
                };
                Ok(Login {
                    username: format!("{iothub_hostname}/{client_id}/?api-version={API_VERSION}"),
                    password: crate::sas::sign(
                        &audience,
                        identity.key(crate::identity::KeySlot::Primary),
                        expiry,
                    ),
                    client_id,
                    expires,
                })
            }
        }
    }
}

/// The `auth-chain` of `target` connecting through this edge device, URL-encoded for the
/// username: `{target};[{edge device};...]{this edge device}`. A module of a device further
/// down (a grandchild edge device) names that device as its first hop, and a device further
/// down names the edge devices it sits under, as `registry` knows them, so that the parent can
/// check the path in its device scope.
fn auth_chain(
    target: &ClientIdentity,
    edge_device_id: &str,
    registry: Option<&IdentityRegistry>,
) -> String {
    /// The most hops a chain names (the parent refuses longer ones).
    const MAX_HOPS: usize = 8;
    let mut hops = vec![client_id(target)];
    if target.module_id.is_some() && target.device_id != edge_device_id {
        hops.push(target.device_id.clone());
    }
    let mut below = target.device_id.clone();
    while let Some(parent) = registry
        .and_then(|registry| registry.parent_of(&below).ok().flatten())
        .filter(|parent| parent != edge_device_id && !hops.contains(parent))
    {
        if hops.len() >= MAX_HOPS {
            break;
        }
        hops.push(parent.clone());
        below = parent;
    }
    hops.push(edge_device_id.to_owned());
    percent_encoding::utf8_percent_encode(&hops.join(";"), percent_encoding::NON_ALPHANUMERIC)
        .to_string()
}

/// `device` or `device/module`.
#[must_use]
pub fn client_id(identity: &ClientIdentity) -> String {
    match &identity.module_id {
        Some(module) => format!("{}/{module}", identity.device_id),
        None => identity.device_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "c2VjcmV0LWtleS1vZi1lZGdlaHViLTAxMjM0NTY3ODk=";

    #[test]
    fn the_edge_hub_connection_string_is_read_in_any_order_and_case() {
        let parsed = ConnectionString::parse(&format!(
            "DeviceId=child-1;hostname=hub.example.net;ModuleId=$edgeHub;SharedAccessKey={KEY};GatewayHostName=parent.local"
        ))
        .unwrap();
        assert_eq!(parsed.iothub_hostname, "hub.example.net");
        assert_eq!(parsed.device_id, "child-1");
        assert_eq!(parsed.gateway_hostname.as_deref(), Some("parent.local"));
        assert_eq!(parsed.key.to_base64(), KEY);
    }

    #[test]
    fn bad_connection_strings_say_what_is_wrong() {
        let cases = [
            (
                "HostName=h;DeviceId=d;ModuleId=filter;SharedAccessKey=a2V5",
                ConnectionStringError::NotEdgeHub,
            ),
            (
                "HostName=h;DeviceId=d;SharedAccessKey=a2V5",
                ConnectionStringError::NotEdgeHub,
            ),
            (
                "HostName=h;ModuleId=$edgeHub;SharedAccessKey=a2V5",
                ConnectionStringError::Missing("DeviceId"),
            ),
            (
                "DeviceId=d;ModuleId=$edgeHub;SharedAccessKey=a2V5",
                ConnectionStringError::Missing("HostName"),
            ),
            (
                "HostName=h;DeviceId=d;ModuleId=$edgeHub",
                ConnectionStringError::Missing("SharedAccessKey"),
            ),
            (
                "HostName=h;DeviceId=d;ModuleId=$edgeHub;SharedAccessKey=!!",
                ConnectionStringError::Key,
            ),
            (
                "HostName=h;junk;ModuleId=$edgeHub",
                ConnectionStringError::Malformed("junk".into()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                ConnectionString::parse(text).unwrap_err(),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn on_behalf_of_logins_carry_the_auth_chain_and_an_edge_hub_token() {
        let credentials = Credentials::OnBehalfOf {
            iothub_hostname: "hub.example.net".into(),
            edge_device_id: "child-1".into(),
            edge_hub_key: SymmetricKey::from_base64(KEY).unwrap(),
            registry: None,
        };
        let target = ClientIdentity {
            device_id: "child-1".into(),
            module_id: Some("sensor".into()),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let login = credentials.login(&target, now).unwrap();
        assert_eq!(login.client_id, "child-1/sensor");
        assert_eq!(
            login.username,
            "hub.example.net/child-1/sensor/?api-version=2021-04-12&auth-chain=child%2D1%2Fsensor%3Bchild%2D1"
        );
        let token = crate::sas::SasToken::parse(&login.password).unwrap();
        assert_eq!(
            token.audience(),
            "hub.example.net/devices/child-1/modules/$edgeHub"
        );
        assert!(token.is_signed_with(&SymmetricKey::from_base64(KEY).unwrap()));
        assert_eq!(login.expires, now + TOKEN_LIFETIME);
    }

    #[test]
    fn iot_hub_logins_are_signed_with_the_identitys_own_key_without_an_auth_chain() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(IdentityRegistry::open(dir.path(), "edge-1").unwrap());
        let sensor = registry.add_module("sensor").unwrap();
        let leaf = registry.add_device("leaf-1").unwrap();
        let credentials = Credentials::OwnKeys {
            iothub_hostname: "hub.example.net".into(),
            registry: Arc::clone(&registry),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for (target, key, username, audience) in [
            (
                ClientIdentity {
                    device_id: "edge-1".into(),
                    module_id: Some("sensor".into()),
                },
                sensor.key(crate::identity::KeySlot::Primary),
                "hub.example.net/edge-1/sensor/?api-version=2021-04-12",
                "hub.example.net/devices/edge-1/modules/sensor",
            ),
            (
                ClientIdentity {
                    device_id: "leaf-1".into(),
                    module_id: None,
                },
                leaf.key(crate::identity::KeySlot::Primary),
                "hub.example.net/leaf-1/?api-version=2021-04-12",
                "hub.example.net/devices/leaf-1",
            ),
        ] {
            let login = credentials.login(&target, now).unwrap();
            assert_eq!(login.client_id, client_id(&target));
            assert_eq!(login.username, username);
            let token = crate::sas::SasToken::parse(&login.password).unwrap();
            assert_eq!(token.audience(), audience);
            assert!(token.is_signed_with(key), "{username}");
            assert_eq!(login.expires, now + TOKEN_LIFETIME);
        }
        let stranger = ClientIdentity {
            device_id: "nobody".into(),
            module_id: None,
        };
        assert!(
            credentials.login(&stranger, now).is_err(),
            "no key, no login"
        );
    }

    #[test]
    fn a_device_further_down_names_the_edge_devices_it_sits_under() {
        let dir = tempfile::tempdir().unwrap();
        let registry = IdentityRegistry::open(dir.path(), "middle").unwrap();
        registry.add_edge_device("bottom", None).unwrap();
        registry.add_device_under("leaf-9", "bottom").unwrap();
        registry.add_device("leaf-1").unwrap();
        let chain = |device: &str, module: Option<&str>| {
            let target = ClientIdentity {
                device_id: device.into(),
                module_id: module.map(Into::into),
            };
            percent_encoding::percent_decode_str(&auth_chain(&target, "middle", Some(&registry)))
                .decode_utf8()
                .unwrap()
                .into_owned()
        };
        assert_eq!(chain("leaf-9", None), "leaf-9;bottom;middle");
        assert_eq!(chain("leaf-1", None), "leaf-1;middle");
        assert_eq!(
            chain("bottom", Some("filter")),
            "bottom/filter;bottom;middle"
        );
        assert_eq!(chain("middle", Some("sensor")), "middle/sensor;middle");
    }
}
