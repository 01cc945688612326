//! Shared access signature (SAS) tokens, and [`authenticate`]: everything the MQTT server asks
//! of a CONNECT packet (spec 1.1 to 1.3).
//!
//! ```text
//! SharedAccessSignature sr={URL-encoded resource URI}&sig={URL-encoded base64 HMAC}&se={expiry}[&skn={policy}]
//! ```
//!
//! - Field names are case-insensitive and in any order; `skn` is ignored.
//! - `sig` is HMAC-SHA256, keyed with the identity's primary or secondary key, over the `sr`
//!   value *as transmitted* (still percent-encoded), `"\n"`, and the `se` value as transmitted.
//! - A token is expired when `se` + 5 minutes of clock skew is before now.
//! - The decoded `sr` is `{host}/devices/{d}` or `{host}/devices/{d}/modules/{m}`; the host is
//!   the IoT Hub's or the gateway's hostname, the ids match the client (both case-insensitively);
//!   a device audience serves that device's modules, a module audience never serves a device.
//!
//! Errors never carry the token or the signature: they are safe to log.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit as _, Mac as _};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;
use thiserror::Error;

use crate::identity::{
    ClientIdentity, Hostnames, Identity, IdentityError, IdentityRegistry, KeyFingerprint, KeySlot,
    SymmetricKey, Username, UsernameError, check_client_id, parse_username,
};

/// How far a token's expiry may lie in the past (clients' clocks drift).
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The latest expiry a token may have: 9999-12-31T23:59:59Z, in seconds since the Unix epoch.
/// Later ones (up to `u64::MAX`) would overflow the clock arithmetic that follows; they are
/// refused when the token is parsed, before the signature is checked.
pub const MAX_EXPIRY: u64 = 253_402_300_799;

const PREFIX: &str = "SharedAccessSignature ";

/// What `sign` percent-encodes: everything but the unreserved characters of RFC 3986.
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

type HmacSha256 = Hmac<Sha256>;

/// A parsed SAS token. The raw fields are kept as transmitted: the signature covers them so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SasToken {
    /// `sr` exactly as transmitted (percent-encoded).
    raw_resource_uri: String,
    /// `se` exactly as transmitted.
    raw_expiry: String,
    /// `se` as seconds since the Unix epoch.
    expiry: u64,
    /// The decoded signature bytes.
    signature: Vec<u8>,
}

/// Why a password is not a well-formed SAS token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// It does not start with `SharedAccessSignature `.
    #[error("the password is not a SharedAccessSignature token")]
    NotSas,
    /// A field is not `name=value`.
    #[error("a token field has no '='")]
    MalformedField,
    /// A field appears twice.
    #[error("the token has field {0:?} twice")]
    DuplicateField(&'static str),
    /// A mandatory field is missing.
    #[error("the token has no {0:?} field")]
    MissingField(&'static str),
    /// `se` is not a whole number of seconds.
    #[error("the token's expiry (se) is not a whole number of seconds")]
    BadExpiry,
    /// `se` lies after [`MAX_EXPIRY`] (the year 9999).
    #[error("the token's expiry (se) {0} is after the year 9999")]
    ExpiryOutOfRange(u64),
    /// `sig` is not base64.
    #[error("the token's signature (sig) is not base64")]
    BadSignatureEncoding,
}

/// Why a token's audience (`sr`) does not fit the connecting client.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AudienceError {
    /// Not `{host}/devices/{d}` or `{host}/devices/{d}/modules/{m}`.
    #[error("audience {0:?} is not {{host}}/devices/{{device}}[/modules/{{module}}]")]
    Shape(String),
    /// The host is neither the IoT Hub's nor the gateway's hostname.
    #[error("audience host {0:?} is neither the IoT Hub's nor the gateway's hostname")]
    Host(String),
    /// The audience names another identity.
    #[error("audience {audience:?} does not name client {client}")]
    Identity {
        /// The decoded audience.
        audience: String,
        /// The connecting identity.
        client: ClientIdentity,
    },
}

/// Why a CONNECT is refused. Every variant is an authentication failure (CONNACK 5, decision
/// D1) except [`AuthError::Store`], an internal failure; none holds the token.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The CONNECT has no username.
    #[error("no username")]
    NoUsername,
    /// The username is malformed, or the client id is not its identity.
    #[error(transparent)]
    Username(#[from] UsernameError),
    /// The CONNECT has no password (X.509 client authentication is not supported).
    #[error("no password (SAS token)")]
    NoPassword,
    /// The password is not a well-formed SAS token.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token expired (more than [`CLOCK_SKEW`] ago).
    #[error("the token expired at {expiry} (seconds since the epoch)")]
    Expired {
        /// The token's `se`.
        expiry: u64,
    },
    /// The audience does not fit.
    #[error(transparent)]
    Audience(#[from] AudienceError),
    /// The hub has no identity of that name.
    #[error("unknown identity {0}")]
    UnknownIdentity(ClientIdentity),
    /// The signature matches neither key.
    #[error("the token's signature matches neither key of {0}")]
    BadSignature(ClientIdentity),
    /// The identity registry could not be read.
    #[error("cannot read the identity registry")]
    Store(#[from] IdentityError),
    /// An on-behalf-of username whose `auth-chain` is malformed or does not start with the
    /// client.
    #[error("auth-chain {0:?} is not `{{client}};{{edge device}}[;...]`")]
    AuthChain(String),
    /// The `auth-chain` is not a path of this hub's device scope: the client is not in the
    /// scope of the edge device that acts for it.
    #[error("{client} is not in the scope of edge device {actor}")]
    NotInScope {
        /// The identity claimed.
        client: ClientIdentity,
        /// The edge device acting for it.
        actor: String,
    },
}

impl AuthError {
    /// Whether the failure is the hub's (the identity registry is unreadable) rather than the
    /// client's credentials.
    #[must_use]
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

/// A client that proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The identity, with the ids as the username spelled them.
    pub identity: ClientIdentity,
    /// The parsed username (`DeviceClientType`, `model-id`, `auth-chain`).
    pub username: Username,
    /// When the token stops being valid (its `se` plus [`CLOCK_SKEW`]): the client must be
    /// disconnected after that.
    pub valid_until: SystemTime,
    /// Which of the identity's keys signed the token.
    pub key: KeySlot,
    /// That key's fingerprint: the connection stays only while it is a current key of the
    /// identity (see [`IdentityRegistry::key_status`]).
    pub fingerprint: KeyFingerprint,
    /// Whose key it is: the identity itself, or, for an on-behalf-of connection (spec 1.5),
    /// the `$edgeHub` of the child edge device acting for it.
    pub signer: ClientIdentity,
}

impl SasToken {
    /// Parses a token (the CONNECT password).
    ///
    /// # Errors
    ///
    /// When the text is not a well-formed token.
    pub fn parse(text: &str) -> Result<Self, TokenError> {
        let fields = text.strip_prefix(PREFIX).ok_or(TokenError::NotSas)?;
        let (mut sr, mut sig, mut se) = (None, None, None);
        for field in fields.split('&') {
            let (name, value) = field.split_once('=').ok_or(TokenError::MalformedField)?;
            let (slot, name) = if name.eq_ignore_ascii_case("sr") {
                (&mut sr, "sr")
            } else if name.eq_ignore_ascii_case("sig") {
                (&mut sig, "sig")
            } else if name.eq_ignore_ascii_case("se") {
                (&mut se, "se")
            } else {
                continue; // skn, and anything newer
            };
            if slot.replace(value).is_some() {
                return Err(TokenError::DuplicateField(name));
            }
        }
        let raw_resource_uri = sr.ok_or(TokenError::MissingField("sr"))?;
        let raw_signature = sig.ok_or(TokenError::MissingField("sig"))?;
        let raw_expiry = se.ok_or(TokenError::MissingField("se"))?;
        let expiry: u64 = decode(raw_expiry)
            .parse()
            .map_err(|_| TokenError::BadExpiry)?;
        if expiry > MAX_EXPIRY {
            return Err(TokenError::ExpiryOutOfRange(expiry));
        }
        let signature = STANDARD
            .decode(decode(raw_signature))
            .map_err(|_| TokenError::BadSignatureEncoding)?;
        Ok(Self {
            raw_resource_uri: raw_resource_uri.to_owned(),
            raw_expiry: raw_expiry.to_owned(),
            expiry,
            signature,
        })
    }

    /// The expiry, seconds since the Unix epoch.
    #[must_use]
    pub fn expiry(&self) -> u64 {
        self.expiry
    }

    /// The decoded audience (`sr`).
    #[must_use]
    pub fn audience(&self) -> String {
        decode(&self.raw_resource_uri)
    }

    /// Whether the token is expired at `now`, allowing [`CLOCK_SKEW`].
    #[must_use]
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.valid_until() < now
    }

    /// The last instant at which the token is accepted (no overflow: a parsed token's expiry
    /// is at most [`MAX_EXPIRY`]).
    #[must_use]
    pub fn valid_until(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expiry) + CLOCK_SKEW
    }

    /// Whether the signature was made with `key`.
    #[must_use]
    pub fn is_signed_with(&self, key: &SymmetricKey) -> bool {
        mac(key, &self.raw_resource_uri, &self.raw_expiry)
            .verify_slice(&self.signature)
            .is_ok()
    }

    /// Checks the audience against the connecting `client` and the accepted hostnames.
    ///
    /// # Errors
    ///
    /// When the audience has the wrong shape, host or identity.
    pub fn check_audience(
        &self,
        client: &ClientIdentity,
        hostnames: &Hostnames,
    ) -> Result<(), AudienceError> {
        let audience = self.audience();
        let parts: Vec<&str> = audience.split('/').collect();
        let (host, device, module) = match parts[..] {
            [host, devices, device] if devices.eq_ignore_ascii_case("devices") => {
                (host, device, None)
            }
            [host, devices, device, modules, module]
                if devices.eq_ignore_ascii_case("devices")
                    && modules.eq_ignore_ascii_case("modules") =>
            {
                (host, device, Some(module))
            }
            _ => return Err(AudienceError::Shape(audience)),
        };
        if !host.eq_ignore_ascii_case(&hostnames.iothub)
            && !host.eq_ignore_ascii_case(&hostnames.gateway)
        {
            return Err(AudienceError::Host(host.to_owned()));
        }
        let device_matches = device.eq_ignore_ascii_case(&client.device_id);
        let module_matches = match (module, client.module_id.as_deref()) {
            // A device audience serves the device and each of its modules.
            (None, _) => true,
            (Some(audience), Some(client)) => audience.eq_ignore_ascii_case(client),
            // A module audience never serves a device.
            (Some(_), None) => false,
        };
        if device_matches && module_matches {
            Ok(())
        } else {
            Err(AudienceError::Identity {
                audience,
                client: client.clone(),
            })
        }
    }
}

/// Makes a token for `resource_uri` (e.g. `hub/devices/d/modules/m`, not encoded) signed with
/// `key`, expiring at `expiry` seconds since the Unix epoch: what the SDKs do.
#[must_use]
pub fn sign(resource_uri: &str, key: &SymmetricKey, expiry: u64) -> String {
    let sr = utf8_percent_encode(resource_uri, ENCODE).to_string();
    let se = expiry.to_string();
    let signature = STANDARD.encode(mac(key, &sr, &se).finalize().into_bytes());
    let sig = utf8_percent_encode(&signature, ENCODE);
    format!("{PREFIX}sr={sr}&sig={sig}&se={se}")
}

/// Authenticates a CONNECT: parses the username, checks that the client id is its identity,
/// and that the password is a valid, unexpired SAS token for it, signed with the primary or
/// the secondary key of an identity in `store`.
///
/// # Errors
///
/// The first rule the CONNECT breaks, as a typed reason (safe to log: no token inside).
pub fn authenticate(
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
    store: &IdentityRegistry,
    hostnames: &Hostnames,
    now: SystemTime,
) -> Result<Authenticated, AuthError> {
    let username = parse_username(username.ok_or(AuthError::NoUsername)?)?;
    let client = &username.identity;
    check_client_id(client_id, client)?;
    let token = SasToken::parse(password.ok_or(AuthError::NoPassword)?)?;
    if token.is_expired(now) {
        return Err(AuthError::Expired {
            expiry: token.expiry(),
        });
    }
    // On behalf of (spec 1.5): the token is the acting edge hub's, for a client in its scope.
    let signer = match &username.auth_chain {
        Some(chain) => acting_edge_hub(client, chain, store)?,
        None => client.clone(),
    };
    let (key, fingerprint) = check_signature(&token, &signer, store, hostnames)?;
    Ok(Authenticated {
        identity: client.clone(),
        valid_until: token.valid_until(),
        key,
        fingerprint,
        signer,
        username,
    })
}

/// Checks that `token` (the text of an `Authorization: SharedAccessSignature ...` header) is a
/// valid, unexpired token for `signer`, signed with one of its keys in `store`: how an HTTP
/// caller (the device-scope API's actor) proves who it is.
///
/// # Errors
///
/// The first rule the token breaks, as a typed reason (safe to log: no token inside).
pub fn verify_token(
    token: &str,
    signer: &ClientIdentity,
    store: &IdentityRegistry,
    hostnames: &Hostnames,
    now: SystemTime,
) -> Result<KeySlot, AuthError> {
    let token = SasToken::parse(token.trim())?;
    if token.is_expired(now) {
        return Err(AuthError::Expired {
            expiry: token.expiry(),
        });
    }
    Ok(check_signature(&token, signer, store, hostnames)?.0)
}

/// Checks the audience of `token` against `signer` and its signature against `signer`'s keys.
fn check_signature(
    token: &SasToken,
    signer: &ClientIdentity,
    store: &IdentityRegistry,
    hostnames: &Hostnames,
) -> Result<(KeySlot, KeyFingerprint), AuthError> {
    token.check_audience(signer, hostnames)?;
    let identity: Identity = store
        .get(&signer.device_id, signer.module_id.as_deref())?
        .ok_or_else(|| AuthError::UnknownIdentity(signer.clone()))?;
    let key = [KeySlot::Primary, KeySlot::Secondary]
        .into_iter()
        .find(|&slot| token.is_signed_with(identity.key(slot)))
        .ok_or_else(|| AuthError::BadSignature(signer.clone()))?;
    Ok((key, identity.key(key).fingerprint()))
}

/// The `$edgeHub` that acts for `client` along `chain` (`{client};{edge};...[;{this hub}]`):
/// each step of the chain is the device itself (a module of that edge device) or the edge
/// device it is registered under here, and every edge device is registered here as one. The
/// last edge device of the chain is the actor; its `$edgeHub` must have signed the token.
///
/// # Errors
///
/// A malformed chain, or one that is not a path of this hub's device scope.
fn acting_edge_hub(
    client: &ClientIdentity,
    chain: &str,
    store: &IdentityRegistry,
) -> Result<ClientIdentity, AuthError> {
    let malformed = || AuthError::AuthChain(chain.chars().take(256).collect());
    let mut hops: Vec<&str> = chain.split(';').map(str::trim).collect();
    if hops.first().copied() != Some(client.to_string().as_str()) {
        return Err(malformed());
    }
    hops.remove(0);
    if hops.last().copied() == Some(store.edge_device_id()) {
        hops.pop();
    }
    if hops.is_empty() || hops.len() > 8 || hops.iter().any(|h| h.is_empty()) {
        return Err(malformed());
    }
    let mut current = client.device_id.clone();
    for hop in &hops {
        let in_scope = current == *hop || store.parent_of(&current)?.as_deref() == Some(*hop);
        if !in_scope || !store.is_edge_device(hop)? {
            return Err(AuthError::NotInScope {
                client: client.clone(),
                actor: (*hop).to_owned(),
            });
        }
        current = (*hop).to_owned();
    }
    Ok(ClientIdentity::module(
        current,
        crate::identity::id::EDGE_HUB,
    ))
}

fn mac(key: &SymmetricKey, raw_resource_uri: &str, raw_expiry: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(raw_resource_uri.as_bytes());
    mac.update(b"\n");
    mac.update(raw_expiry.as_bytes());
    mac
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_800_000_000;
    const HOUR: u64 = 3600;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    fn hostnames() -> Hostnames {
        Hostnames {
            iothub: "myhub.azure-devices.net".to_owned(),
            gateway: "gateway.local".to_owned(),
        }
    }

    /// A store with module `edge/filter` and leaf device `leaf`.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: IdentityRegistry,
        module: Identity,
        leaf: Identity,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityRegistry::open(dir.path(), "edge").unwrap();
        let module = store.add_module("filter").unwrap();
        let leaf = store.add_device("leaf").unwrap();
        Fixture {
            _dir: dir,
            store,
            module,
            leaf,
        }
    }

    /// A token for `sr` signed with `key`, valid for an hour.
    fn valid_token(sr: &str, key: &SymmetricKey) -> String {
        sign(sr, key, NOW + HOUR)
    }

    const MODULE_USER: &str = "myhub.azure-devices.net/edge/filter/?api-version=2021-04-12";
    const LEAF_USER: &str = "myhub.azure-devices.net/leaf/?api-version=2021-04-12";

    fn auth(
        f: &Fixture,
        client_id: &str,
        username: &str,
        token: &str,
    ) -> Result<Authenticated, AuthError> {
        authenticate(
            client_id,
            Some(username),
            Some(token),
            &f.store,
            &hostnames(),
            now(),
        )
    }

    #[test]
    fn sign_then_parse_round_trips() {
        let key = SymmetricKey::from_bytes(*b"0123456789abcdef");
        let token = SasToken::parse(&sign("hub/devices/d/modules/m", &key, 42)).unwrap();
        assert_eq!(token.audience(), "hub/devices/d/modules/m");
        assert_eq!(token.expiry(), 42);
        assert!(token.is_signed_with(&key));
        assert!(!token.is_signed_with(&SymmetricKey::from_bytes(*b"other")));
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // HMAC-SHA256(key = 32 zero bytes, "hub%2Fdevices%2Fd\n1000"),
        // computed independently with Python's hmac module.
        let key = SymmetricKey::from_bytes([0u8; 32]);
        let token = sign("hub/devices/d", &key, 1000);
        assert_eq!(
            token,
            "SharedAccessSignature sr=hub%2Fdevices%2Fd&sig=alt8zvgG1qrybpYOLg1%2FFD48%2BZQ3Yax6zA6MEgd2fcw%3D&se=1000"
        );
    }

    #[test]
    fn module_with_its_own_token_is_accepted() {
        let f = fixture();
        let token = valid_token(
            "myhub.azure-devices.net/devices/edge/modules/filter",
            &f.module.primary_key,
        );
        let ok = auth(&f, "edge/filter", MODULE_USER, &token).unwrap();
        assert_eq!(ok.identity, ClientIdentity::module("edge", "filter"));
        assert_eq!(ok.key, KeySlot::Primary);
        assert_eq!(ok.fingerprint, f.module.primary_key.fingerprint());
        assert_eq!(ok.username.api_version, "2021-04-12");
        assert_eq!(
            ok.valid_until,
            UNIX_EPOCH + Duration::from_secs(NOW + HOUR) + CLOCK_SKEW
        );
    }

    #[test]
    fn secondary_key_is_accepted_too() {
        let f = fixture();
        let token = valid_token("gateway.local/devices/leaf", &f.leaf.secondary_key);
        let ok = auth(&f, "leaf", LEAF_USER, &token).unwrap();
        assert_eq!(ok.key, KeySlot::Secondary);
        assert_eq!(ok.fingerprint, f.leaf.secondary_key.fingerprint());
    }

    #[test]
    fn wrong_key_is_refused() {
        let f = fixture();
        let token = valid_token(
            "myhub.azure-devices.net/devices/leaf",
            &f.module.primary_key,
        );
        assert!(matches!(
            auth(&f, "leaf", LEAF_USER, &token),
            Err(AuthError::BadSignature(_))
        ));
    }

    #[test]
    fn signature_covers_sr_as_transmitted() {
        let f = fixture();
        let key = &f.leaf.primary_key;
        // Lower-case escapes, as some SDKs send: the signature is over these exact bytes.
        let sr = "myhub.azure-devices.net%2fdevices%2fleaf";
        let se = (NOW + HOUR).to_string();
        let sig = STANDARD.encode(mac(key, sr, &se).finalize().into_bytes());
        let sig = utf8_percent_encode(&sig, ENCODE);
        let token = format!("SharedAccessSignature sr={sr}&sig={sig}&se={se}");
        auth(&f, "leaf", LEAF_USER, &token).unwrap();
        // The same token with the escapes re-encoded in upper case no longer verifies.
        let reencoded = token.replace("%2f", "%2F");
        assert!(matches!(
            auth(&f, "leaf", LEAF_USER, &reencoded),
            Err(AuthError::BadSignature(_))
        ));
    }

    #[test]
    fn expiry_allows_five_minutes_of_skew() {
        let f = fixture();
        let key = &f.leaf.primary_key;
        let at = |expiry| sign("myhub.azure-devices.net/devices/leaf", key, expiry);
        auth(&f, "leaf", LEAF_USER, &at(NOW - 300)).unwrap();
        assert!(matches!(
            auth(&f, "leaf", LEAF_USER, &at(NOW - 301)),
            Err(AuthError::Expired { expiry }) if expiry == NOW - 301
        ));
    }

    #[test]
    fn fields_are_case_insensitive_in_any_order_and_skn_is_ignored() {
        let f = fixture();
        let token = valid_token("myhub.azure-devices.net/devices/leaf", &f.leaf.primary_key);
        let fields = token.strip_prefix(PREFIX).unwrap();
        let mut parts: Vec<String> = fields.split('&').map(uppercase_name).collect();
        parts.reverse();
        parts.insert(1, "skn=policy".to_owned());
        let shuffled = format!("{PREFIX}{}", parts.join("&"));
        auth(&f, "leaf", LEAF_USER, &shuffled).unwrap();
    }

    /// `sr=value` -> `SR=value`.
    fn uppercase_name(field: &str) -> String {
        let (name, value) = field.split_once('=').unwrap();
        format!("{}={value}", name.to_uppercase())
    }

    #[test]
    fn audience_host_may_be_iothub_or_gateway_in_any_case() {
        let f = fixture();
        let key = &f.leaf.primary_key;
        for host in ["MyHub.Azure-Devices.net", "GATEWAY.local"] {
            let token = valid_token(&format!("{host}/devices/leaf"), key);
            auth(&f, "leaf", LEAF_USER, &token).unwrap();
        }
        let token = valid_token("elsewhere.net/devices/leaf", key);
        assert!(matches!(
            auth(&f, "leaf", LEAF_USER, &token),
            Err(AuthError::Audience(AudienceError::Host(h))) if h == "elsewhere.net"
        ));
    }

    #[test]
    fn audience_ids_match_case_insensitively() {
        let f = fixture();
        let token = valid_token(
            "myhub.azure-devices.net/devices/EDGE/modules/Filter",
            &f.module.primary_key,
        );
        auth(&f, "edge/filter", MODULE_USER, &token).unwrap();
    }

    #[test]
    fn device_audience_serves_the_devices_modules() {
        let f = fixture();
        let token = valid_token(
            "myhub.azure-devices.net/devices/edge",
            &f.module.primary_key,
        );
        auth(&f, "edge/filter", MODULE_USER, &token).unwrap();
    }

    #[test]
    fn module_audience_never_serves_a_device() {
        let f = fixture();
        let token = valid_token(
            "myhub.azure-devices.net/devices/leaf/modules/m",
            &f.leaf.primary_key,
        );
        assert!(matches!(
            auth(&f, "leaf", LEAF_USER, &token),
            Err(AuthError::Audience(AudienceError::Identity { .. }))
        ));
    }

    #[test]
    fn audience_of_another_identity_is_refused() {
        let f = fixture();
        let key = &f.module.primary_key;
        for sr in [
            "myhub.azure-devices.net/devices/other/modules/filter",
            "myhub.azure-devices.net/devices/edge/modules/other",
            "myhub.azure-devices.net/devices/other",
        ] {
            let token = valid_token(sr, key);
            assert!(
                matches!(
                    auth(&f, "edge/filter", MODULE_USER, &token),
                    Err(AuthError::Audience(AudienceError::Identity { .. }))
                ),
                "{sr}"
            );
        }
    }

    #[test]
    fn audience_of_another_shape_is_refused() {
        let f = fixture();
        let key = &f.leaf.primary_key;
        for sr in [
            "myhub.azure-devices.net",
            "myhub.azure-devices.net/leaf",
            "myhub.azure-devices.net/things/leaf",
            "myhub.azure-devices.net/devices/leaf/modules",
            "myhub.azure-devices.net/devices/leaf/x/m",
        ] {
            let token = valid_token(sr, key);
            assert!(
                matches!(
                    auth(&f, "leaf", LEAF_USER, &token),
                    Err(AuthError::Audience(AudienceError::Shape(_)))
                ),
                "{sr}"
            );
        }
    }

    #[test]
    fn unknown_identity_is_refused_even_with_a_well_signed_token() {
        let f = fixture();
        let key = SymmetricKey::generate().unwrap();
        let token = valid_token("myhub.azure-devices.net/devices/stranger", &key);
        assert!(matches!(
            auth(&f, "stranger", "h/stranger/?api-version=1", &token),
            Err(AuthError::UnknownIdentity(id)) if id == ClientIdentity::device("stranger")
        ));
    }

    #[test]
    fn identity_lookup_is_case_sensitive() {
        let f = fixture();
        let token = valid_token("myhub.azure-devices.net/devices/LEAF", &f.leaf.primary_key);
        assert!(matches!(
            auth(&f, "LEAF", "h/LEAF/?api-version=1", &token),
            Err(AuthError::UnknownIdentity(_))
        ));
    }

    #[test]
    fn client_id_must_be_the_usernames_identity() {
        let f = fixture();
        let token = valid_token("myhub.azure-devices.net/devices/leaf", &f.leaf.primary_key);
        assert!(matches!(
            auth(&f, "leaf2", LEAF_USER, &token),
            Err(AuthError::Username(UsernameError::ClientIdMismatch { .. }))
        ));
    }

    #[test]
    fn missing_or_malformed_credentials_are_typed_failures() {
        let f = fixture();
        let store = &f.store;
        let h = hostnames();
        assert!(matches!(
            authenticate("leaf", None, Some("x"), store, &h, now()),
            Err(AuthError::NoUsername)
        ));
        assert!(matches!(
            authenticate("leaf", Some(LEAF_USER), None, store, &h, now()),
            Err(AuthError::NoPassword)
        ));
        assert!(matches!(
            authenticate("leaf", Some("garbage"), Some("x"), store, &h, now()),
            Err(AuthError::Username(UsernameError::SegmentCount(1)))
        ));
        assert!(matches!(
            authenticate("leaf", Some(LEAF_USER), Some("hunter2"), store, &h, now()),
            Err(AuthError::Token(TokenError::NotSas))
        ));
    }

    #[test]
    fn token_parse_errors_name_the_problem() {
        let parse = |fields: &str| SasToken::parse(&format!("{PREFIX}{fields}"));
        assert_eq!(parse("sr=a&sig=AAAA"), Err(TokenError::MissingField("se")));
        assert_eq!(parse("sr=a&se=1"), Err(TokenError::MissingField("sig")));
        assert_eq!(parse("sig=AAAA&se=1"), Err(TokenError::MissingField("sr")));
        assert_eq!(
            parse("sr=a&sig=AAAA&se=1&SR=b"),
            Err(TokenError::DuplicateField("sr"))
        );
        assert_eq!(parse("sr=a&sig=AAAA&se=soon"), Err(TokenError::BadExpiry));
        assert_eq!(parse("sr=a&sig=AAAA&se=-1"), Err(TokenError::BadExpiry));
        assert_eq!(
            parse("sr=a&sig=!!!&se=1"),
            Err(TokenError::BadSignatureEncoding)
        );
        assert_eq!(parse("sr=a&sig"), Err(TokenError::MalformedField));
        assert_eq!(
            SasToken::parse("sharedaccesssignature sr=a&sig=AAAA&se=1"),
            Err(TokenError::NotSas)
        );
    }

    #[test]
    fn expiries_near_the_integer_limits_are_refused_without_overflow() {
        let f = fixture();
        let key = &f.leaf.primary_key;
        let sr = "myhub.azure-devices.net/devices/leaf";
        for expiry in [
            MAX_EXPIRY + 1,
            i64::MAX as u64 - 300,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX - 1,
            u64::MAX,
        ] {
            // Well signed with the right key: only the expiry is wrong.
            assert!(
                matches!(
                    auth(&f, "leaf", LEAF_USER, &sign(sr, key, expiry)),
                    Err(AuthError::Token(TokenError::ExpiryOutOfRange(e))) if e == expiry
                ),
                "{expiry}"
            );
        }
        let past_u64 = sign(sr, key, 1).replace("se=1", "se=18446744073709551616");
        assert!(matches!(
            auth(&f, "leaf", LEAF_USER, &past_u64),
            Err(AuthError::Token(TokenError::BadExpiry))
        ));
        // The latest accepted expiry works, and its end of validity is representable.
        let latest = auth(&f, "leaf", LEAF_USER, &sign(sr, key, MAX_EXPIRY)).unwrap();
        assert_eq!(
            latest.valid_until,
            UNIX_EPOCH + Duration::from_secs(MAX_EXPIRY) + CLOCK_SKEW
        );
    }

    #[test]
    fn errors_never_show_the_token() {
        let f = fixture();
        let token = valid_token(
            "myhub.azure-devices.net/devices/leaf",
            &f.module.primary_key,
        );
        let error = auth(&f, "leaf", LEAF_USER, &token).unwrap_err();
        let sig = token
            .split("sig=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap();
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains(sig), "{shown}");
        }
    }

    /// Text built from the grammars' own pieces, so that the parsers get past their first checks.
    fn grammar_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just("?".to_owned()),
            Just("&".to_owned()),
            Just("=".to_owned()),
            Just("SharedAccessSignature ".to_owned()),
            Just("api-version".to_owned()),
            Just("sr".to_owned()),
            Just("sig".to_owned()),
            Just("se".to_owned()),
            Just("devices".to_owned()),
            Just("modules".to_owned()),
            "%[0-9a-fA-F]{0,2}",
            "\\PC{0,3}",
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_text() {
        let f = fixture();
        let text = || prop_oneof![grammar_text(), any::<String>()];
        proptest!(|(client_id in text(), username in text(), password in text())| {
            let _ = parse_username(&username);
            if let Ok(token) = SasToken::parse(&format!("{PREFIX}{password}")) {
                let _ = token.check_audience(&ClientIdentity::device("leaf"), &hostnames());
            }
            let _ = auth(&f, &client_id, &username, &password);
        });
    }

    /// A token of the `$edgeHub` of `edge_device`, valid for an hour.
    fn edge_hub_token(f: &Fixture, edge_device: &str) -> String {
        let identity = f
            .store
            .get(edge_device, Some("$edgeHub"))
            .unwrap()
            .expect("a registered edge device");
        valid_token(
            &format!("myhub.azure-devices.net/devices/{edge_device}/modules/$edgeHub"),
            identity.key(KeySlot::Primary),
        )
    }

    fn chain_user(client: &str, chain: &str) -> String {
        let chain = utf8_percent_encode(chain, NON_ALPHANUMERIC);
        format!("myhub.azure-devices.net/{client}/?api-version=2021-04-12&auth-chain={chain}")
    }

    #[test]
    fn a_child_edge_hub_connects_on_behalf_of_what_is_in_its_scope() {
        let f = fixture();
        f.store.add_edge_device("child-1", None).unwrap();
        f.store.add_edge_device("child-2", None).unwrap();
        f.store.add_device_under("leaf-7", "child-1").unwrap();
        f.store.add_edge_device("bottom", Some("child-1")).unwrap();
        let token = edge_hub_token(&f, "child-1");
        for (client, chain) in [
            ("child-1/sensor", "child-1/sensor;child-1"),
            ("child-1/sensor", "child-1/sensor;child-1;edge"),
            ("leaf-7", "leaf-7;child-1"),
            ("bottom/filter", "bottom/filter;bottom;child-1"),
        ] {
            let authenticated = auth(&f, client, &chain_user(client, chain), &token)
                .unwrap_or_else(|e| panic!("{client} via {chain}: {e}"));
            assert_eq!(authenticated.identity.to_string(), client);
            assert_eq!(authenticated.signer.to_string(), "child-1/$edgeHub");
        }
    }

    #[test]
    fn on_behalf_of_connections_outside_the_scope_are_refused() {
        let f = fixture();
        f.store.add_edge_device("child-1", None).unwrap();
        f.store.add_edge_device("child-2", None).unwrap();
        f.store.add_device_under("leaf-9", "child-2").unwrap();
        let token = edge_hub_token(&f, "child-1");
        for (client, chain) in [
            // the parent's own module and leaf, another child's module and leaf
            ("edge/filter", "edge/filter;child-1"),
            ("leaf", "leaf;child-1"),
            ("child-2/sensor", "child-2/sensor;child-1"),
            ("leaf-9", "leaf-9;child-1"),
            // a device that is not an edge device acting
            ("leaf/x", "leaf/x;leaf"),
        ] {
            let refused = auth(&f, client, &chain_user(client, chain), &token).unwrap_err();
            assert!(
                matches!(refused, AuthError::NotInScope { .. }),
                "{client} via {chain}: {refused}"
            );
        }
        for (client, chain) in [
            ("child-1/sensor", "child-1/other;child-1"),
            ("child-1/sensor", "child-1/sensor"),
            ("child-1/sensor", "child-1/sensor;;child-1"),
        ] {
            let refused = auth(&f, client, &chain_user(client, chain), &token).unwrap_err();
            assert!(
                matches!(refused, AuthError::AuthChain(_)),
                "{chain}: {refused}"
            );
        }
        // Another edge hub's token does not act for child-1.
        let other = edge_hub_token(&f, "child-2");
        let refused = auth(
            &f,
            "child-1/sensor",
            &chain_user("child-1/sensor", "child-1/sensor;child-1"),
            &other,
        )
        .unwrap_err();
        assert!(matches!(refused, AuthError::Audience(_)), "{refused}");
    }

    proptest! {
        #[test]
        fn every_signed_token_verifies_with_its_key_only(
            uri in "\\PC{1,64}",
            key in proptest::collection::vec(any::<u8>(), 1..64),
            expiry in 0..=MAX_EXPIRY,
        ) {
            let key = SymmetricKey::from_bytes(key);
            let token = SasToken::parse(&sign(&uri, &key, expiry)).unwrap();
            prop_assert_eq!(token.audience(), uri);
            prop_assert_eq!(token.expiry(), expiry);
            prop_assert!(token.is_signed_with(&key));
            let mut other = key.as_bytes().to_vec();
            other[0] ^= 1;
            prop_assert!(!token.is_signed_with(&SymmetricKey::from_bytes(other)));
        }
    }
}
