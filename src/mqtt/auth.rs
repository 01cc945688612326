//! Authentication of a CONNECT: the seam between the MQTT head and the identity registry.

use std::fmt;

/// The identity a connection acts as, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The device id.
    pub device_id: String,
    /// The module id, for modules.
    pub module_id: Option<String>,
}

impl Identity {
    /// The MQTT client id of this identity: `device` or `device/module`.
    pub fn client_id(&self) -> String {
        match &self.module_id {
            Some(module) => format!("{}/{module}", self.device_id),
            None => self.device_id.clone(),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.client_id())
    }
}

/// The credentials of a CONNECT packet.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The client id.
    pub client_id: &'a str,
    /// The username, if any.
    pub username: Option<&'a str>,
    /// The password (a SAS token), if any. Never logged.
    pub password: Option<&'a str>,
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "<redacted>"))
            .finish()
    }
}

/// A connection's proven identity, and until when its credentials hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who the connection acts as.
    pub identity: Identity,
    /// When the credentials expire (a SAS token's `se` plus the clock skew); the connection is
    /// closed then, and the SDK reconnects with a fresh token. `None`: no expiry.
    pub valid_until: Option<std::time::SystemTime>,
    /// The IoT Plug and Play model id the client announced (`model-id` in its username); the
    /// hub stamps it on the client's messages as the system property `modelId`.
    pub model_id: Option<String>,
}

/// Decides who a connection is. Every refusal is answered with CONNACK 5 (decision D1); the
/// reason is logged, never the token.
pub trait Authenticator: fmt::Debug + Send + Sync + 'static {
    /// The identity these credentials prove, or why they do not.
    ///
    /// # Errors
    ///
    /// A reason for the log when the credentials are refused.
    fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Grant, String>;
}

/// The hub's authenticator: SAS tokens checked against the identity registry (protocol spec 1.2
/// and 1.3), which is re-read when another process (`edgehub identity add`) changed it.
#[derive(Debug)]
pub struct SasAuthenticator {
    identities: crate::identity::IdentityRegistry,
    hostnames: crate::identity::Hostnames,
}

impl SasAuthenticator {
    /// An authenticator over `identities`, accepting tokens for these hostnames.
    pub fn new(
        identities: crate::identity::IdentityRegistry,
        hostnames: crate::identity::Hostnames,
    ) -> Self {
        Self {
            identities,
            hostnames,
        }
    }
}

impl Authenticator for SasAuthenticator {
    fn authenticate(&self, credentials: &Credentials<'_>) -> Result<Grant, String> {
        let authenticated = crate::sas::authenticate(
            credentials.client_id,
            credentials.username,
            credentials.password,
            &self.identities,
            &self.hostnames,
            std::time::SystemTime::now(),
        )
        .map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
        Ok(Grant {
            identity: Identity {
                device_id: authenticated.identity.device_id,
                module_id: authenticated.identity.module_id,
            },
            valid_until: Some(authenticated.valid_until),
            model_id: authenticated.username.model_id,
        })
    }
}
