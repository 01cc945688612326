//! The MQTT CONNECT username of the Azure IoT SDKs (spec 1.2) and the client id check (spec 1.1).
//!
//! ```text
//! A) {host}/{deviceId}/?{props}              device, modern SDKs
//! B) {host}/{deviceId}/{moduleId}/?{props}   module, modern SDKs
//! C) {host}/{deviceId}/{props}               device, old C SDK
//! D) {host}/{deviceId}/{moduleId}/{props}    module, no '?'
//! E) {host}/{deviceId}/{moduleId}/api-version=2017-06-30/DeviceClientType=Microsoft.Azure.Devices.Client/1.5.1-preview-003
//! props = name "=" value *( "&" name "=" value )
//! ```
//!
//! The host segment is ignored; values are percent-decoded (`+` stays `+`); the first occurrence
//! of a property wins and unknown properties are ignored; `api-version` is mandatory but its
//! value is not checked. The ids (trimmed) must follow IoT Hub's rules ([`super::id`]): at most
//! 128 characters of its set, as `edgehub identity add` requires.

use std::fmt;

use percent_encoding::percent_decode_str;
use thiserror::Error;

use super::id::{IdError, validate_device_id, validate_module_id};

/// Who a client says it is: a device (a leaf device, or the edge device itself) or a module of
/// a device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientIdentity {
    /// The device id.
    pub device_id: String,
    /// The module id, for a module.
    pub module_id: Option<String>,
}

impl ClientIdentity {
    /// A device identity.
    #[must_use]
    pub fn device(device_id: impl Into<String>) -> Self {
        Self {
            device_id: device_id.into(),
            module_id: None,
        }
    }

    /// A module identity.
    #[must_use]
    pub fn module(device_id: impl Into<String>, module_id: impl Into<String>) -> Self {
        Self {
            device_id: device_id.into(),
            module_id: Some(module_id.into()),
        }
    }
}

/// `device` or `device/module`: the MQTT client id this identity must use.
impl fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.module_id {
            Some(module_id) => write!(f, "{}/{module_id}", self.device_id),
            None => f.write_str(&self.device_id),
        }
    }
}

/// A parsed CONNECT username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    /// The identity the username names.
    pub identity: ClientIdentity,
    /// `api-version`, as sent (never checked).
    pub api_version: String,
    /// `DeviceClientType`: the SDK's product string, reported upstream.
    pub device_client_type: Option<String>,
    /// `model-id`: the IoT Plug and Play model id, stamped on the client's telemetry.
    pub model_id: Option<String>,
    /// `auth-chain`: `leafId;childEdgeId;...;parentEdgeId`, for on-behalf-of connections.
    pub auth_chain: Option<String>,
}

/// Why a username or a client id is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UsernameError {
    /// Not 3 or 4 `/`-separated segments (nor the one legacy 6-segment string).
    #[error("the username has {0} '/'-separated segments; expected 3 (device) or 4 (module)")]
    SegmentCount(usize),
    /// The device or module segment is empty.
    #[error("the username has an empty {0} id")]
    EmptyId(&'static str),
    /// A device or module id breaks IoT Hub's rules (length, characters).
    #[error("the username's {0}")]
    InvalidId(IdError),
    /// No `api-version` property.
    #[error("the username has no api-version property")]
    MissingApiVersion,
    /// The MQTT client id is not the identity of the username.
    #[error("client id {client_id:?} is not {expected:?}, the identity named by the username")]
    ClientIdMismatch {
        /// The client id of the CONNECT packet.
        client_id: String,
        /// `device` or `device/module` from the username.
        expected: String,
    },
}

/// Form E: the exact username tail an old Azure ML container sends, accepted verbatim.
const LEGACY_TAIL: &str =
    "api-version=2017-06-30/DeviceClientType=Microsoft.Azure.Devices.Client/1.5.1-preview-003";
const LEGACY_API_VERSION: &str = "2017-06-30";
const LEGACY_CLIENT_TYPE: &str = "Microsoft.Azure.Devices.Client/1.5.1-preview-003";

/// Parses a CONNECT username (forms A to E of this module's documentation).
///
/// # Errors
///
/// When the username has none of the accepted forms, an empty id, or no `api-version`.
pub fn parse_username(username: &str) -> Result<Username, UsernameError> {
    let segments: Vec<&str> = username.split('/').collect();
    let (device, module, props) = match segments[..] {
        [_host, device, props] => (device, None, props),
        [_host, device, module, props] => (device, Some(module), props),
        [_host, device, module, ..] if username.splitn(4, '/').nth(3) == Some(LEGACY_TAIL) => {
            let identity = identity(device, Some(module))?;
            return Ok(Username {
                identity,
                api_version: LEGACY_API_VERSION.to_owned(),
                device_client_type: Some(LEGACY_CLIENT_TYPE.to_owned()),
                model_id: None,
                auth_chain: None,
            });
        }
        _ => return Err(UsernameError::SegmentCount(segments.len())),
    };
    let identity = identity(device, module)?;
    // Forms A and B put a '?' before the properties; C and D do not.
    let props = Properties::parse(props.strip_prefix('?').unwrap_or(props));
    Ok(Username {
        identity,
        api_version: props.api_version.ok_or(UsernameError::MissingApiVersion)?,
        device_client_type: props.device_client_type,
        model_id: props.model_id,
        auth_chain: props.auth_chain,
    })
}

/// Checks that the CONNECT client id is exactly `device` or `device/module` of `identity`
/// (ordinal, case-sensitive).
///
/// # Errors
///
/// [`UsernameError::ClientIdMismatch`] when it is not.
pub fn check_client_id(client_id: &str, identity: &ClientIdentity) -> Result<(), UsernameError> {
    let expected = identity.to_string();
    if client_id == expected {
        Ok(())
    } else {
        Err(UsernameError::ClientIdMismatch {
            client_id: client_id.to_owned(),
            expected,
        })
    }
}

fn identity(device: &str, module: Option<&str>) -> Result<ClientIdentity, UsernameError> {
    let device_id = device.trim();
    if device_id.is_empty() {
        return Err(UsernameError::EmptyId("device"));
    }
    validate_device_id(device_id).map_err(|e| UsernameError::InvalidId(shorten(e)))?;
    let module_id = match module.map(str::trim) {
        Some("") => return Err(UsernameError::EmptyId("module")),
        Some(module_id) => {
            validate_module_id(module_id).map_err(|e| UsernameError::InvalidId(shorten(e)))?;
            Some(module_id.to_owned())
        }
        None => None,
    };
    Ok(ClientIdentity {
        device_id: device_id.to_owned(),
        module_id,
    })
}

/// An id error whose id is cut to 128 characters and a marker: a client may send 64 KiB of id,
/// and the error ends up in the log.
fn shorten(error: IdError) -> IdError {
    let cut = |id: String| -> String {
        if id.chars().count() <= super::id::MAX_ID_LEN {
            id
        } else {
            let mut short: String = id.chars().take(super::id::MAX_ID_LEN).collect();
            short.push_str("...");
            short
        }
    };
    match error {
        IdError::TooLong { kind, id } => IdError::TooLong { kind, id: cut(id) },
        IdError::BadCharacter {
            kind,
            id,
            character,
        } => IdError::BadCharacter {
            kind,
            id: cut(id),
            character,
        },
        IdError::Reserved { id } => IdError::Reserved { id: cut(id) },
        IdError::Empty { kind } => IdError::Empty { kind },
    }
}

/// The recognised properties of a username.
#[derive(Default)]
struct Properties {
    api_version: Option<String>,
    device_client_type: Option<String>,
    model_id: Option<String>,
    auth_chain: Option<String>,
}

impl Properties {
    fn parse(text: &str) -> Self {
        let mut props = Self::default();
        for pair in text.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "api-version" => &mut props.api_version,
                "DeviceClientType" => &mut props.device_client_type,
                "model-id" => &mut props.model_id,
                "auth-chain" => &mut props.auth_chain,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(percent_decode_str(value).decode_utf8_lossy().into_owned());
            }
        }
        props
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(username: &str) -> Username {
        parse_username(username).unwrap_or_else(|e| panic!("{username}: {e}"))
    }

    #[test]
    fn form_a_device_with_question_mark() {
        let u = parse(
            "hub.azure-devices.net/leaf-1/?api-version=2021-04-12&DeviceClientType=py-azure-iot-device%2F2.12.0",
        );
        assert_eq!(u.identity, ClientIdentity::device("leaf-1"));
        assert_eq!(u.api_version, "2021-04-12");
        assert_eq!(
            u.device_client_type.as_deref(),
            Some("py-azure-iot-device/2.12.0")
        );
        assert_eq!(u.model_id, None);
    }

    #[test]
    fn form_b_module_with_question_mark() {
        let u = parse(
            "gw/edge-device/filter/?api-version=2020-09-30&model-id=dtmi%3Acom%3Aexample%3B1",
        );
        assert_eq!(u.identity, ClientIdentity::module("edge-device", "filter"));
        assert_eq!(u.model_id.as_deref(), Some("dtmi:com:example;1"));
    }

    #[test]
    fn form_c_device_without_question_mark() {
        let u =
            parse("iotHub1/device1/api-version=2010-01-01&DeviceClientType=customDeviceClient1");
        assert_eq!(u.identity, ClientIdentity::device("device1"));
        assert_eq!(u.device_client_type.as_deref(), Some("customDeviceClient1"));
    }

    #[test]
    fn form_d_module_without_question_mark() {
        let u = parse("iotHub1/device1/module1/api-version=2010-01-01");
        assert_eq!(u.identity, ClientIdentity::module("device1", "module1"));
        assert_eq!(u.device_client_type, None);
    }

    #[test]
    fn form_e_legacy_string_is_accepted_verbatim() {
        let u = parse(
            "iotHub1/device1/module1/api-version=2017-06-30/DeviceClientType=Microsoft.Azure.Devices.Client/1.5.1-preview-003",
        );
        assert_eq!(u.identity, ClientIdentity::module("device1", "module1"));
        assert_eq!(u.api_version, "2017-06-30");
        assert_eq!(
            u.device_client_type.as_deref(),
            Some("Microsoft.Azure.Devices.Client/1.5.1-preview-003")
        );
        // Any other six-segment username is refused.
        assert_eq!(
            parse_username(
                "h/d/m/api-version=2017-06-30/DeviceClientType=Microsoft.Azure.Devices.Client/1.5.2"
            ),
            Err(UsernameError::SegmentCount(6))
        );
    }

    #[test]
    fn api_version_is_mandatory_but_not_checked() {
        assert_eq!(
            parse_username("h/d/?DeviceClientType=x"),
            Err(UsernameError::MissingApiVersion)
        );
        assert_eq!(
            parse_username("h/d/m/?"),
            Err(UsernameError::MissingApiVersion)
        );
        assert_eq!(parse("h/d/?api-version=whatever").api_version, "whatever");
        assert_eq!(parse("h/d/?api-version=").api_version, "");
    }

    #[test]
    fn segment_count_other_than_three_or_four_is_refused() {
        assert_eq!(
            parse_username("h/?api-version=1"),
            Err(UsernameError::SegmentCount(2))
        );
        assert_eq!(parse_username(""), Err(UsernameError::SegmentCount(1)));
        assert_eq!(
            parse_username("h/d/m/x/?api-version=1"),
            Err(UsernameError::SegmentCount(5))
        );
    }

    #[test]
    fn question_mark_inside_an_id_is_an_id_character() {
        let u = parse("h/dev?1/?api-version=1");
        assert_eq!(u.identity, ClientIdentity::device("dev?1"));
    }

    #[test]
    fn ids_are_trimmed_and_must_not_be_empty() {
        assert_eq!(
            parse(" h / dev1 / mod1 /?api-version=1").identity,
            ClientIdentity::module("dev1", "mod1")
        );
        assert_eq!(
            parse_username("h/ /?api-version=1"),
            Err(UsernameError::EmptyId("device"))
        );
        assert_eq!(
            parse_username("h/d//?api-version=1"),
            Err(UsernameError::EmptyId("module"))
        );
    }

    #[test]
    fn ids_iot_hub_would_refuse_are_refused_with_the_reason() {
        let long = "d".repeat(129);
        for (username, kind) in [
            (format!("h/{long}/?api-version=1"), "device"),
            (format!("h/d/{long}/?api-version=1"), "module"),
            ("h/a b/?api-version=1".to_owned(), "device"),
            ("h/d/caf\u{e9}/?api-version=1".to_owned(), "module"),
            ("h/d/m\"x/?api-version=1".to_owned(), "module"),
            ("h/d\0/?api-version=1".to_owned(), "device"),
        ] {
            let error = parse_username(&username).unwrap_err();
            assert!(
                matches!(&error, UsernameError::InvalidId(e) if e.to_string().starts_with(kind)),
                "{username}: {error}"
            );
        }
        assert!(matches!(
            parse_username("h/d/$custom/?api-version=1"),
            Err(UsernameError::InvalidId(IdError::Reserved { .. }))
        ));
        // The log line stays short even when the id is huge.
        let huge = "x".repeat(65_000);
        let error = parse_username(&format!("h/{huge}/?api-version=1")).unwrap_err();
        assert!(error.to_string().len() < 300, "{}", error.to_string().len());
        // The limits themselves are accepted.
        let longest = "d".repeat(128);
        assert_eq!(
            parse(&format!("h/{longest}/$edgeHub/?api-version=1")).identity,
            ClientIdentity::module(longest.clone(), "$edgeHub")
        );
        parse("h/aZ09-:.+%_#*?!(),=@$'/?api-version=1");
    }

    #[test]
    fn host_segment_is_ignored() {
        assert_eq!(
            parse("anything at all/d/?api-version=1").identity,
            parse("/d/?api-version=1").identity
        );
    }

    #[test]
    fn first_occurrence_wins_and_unknown_properties_are_ignored() {
        let u = parse(
            "h/d/?foo=bar&api-version=1&api-version=2&auth-chain=leaf%3Bchild%3Bparent&noequals&model-id=a&model-id=b",
        );
        assert_eq!(u.api_version, "1");
        assert_eq!(u.auth_chain.as_deref(), Some("leaf;child;parent"));
        assert_eq!(u.model_id.as_deref(), Some("a"));
    }

    #[test]
    fn plus_stays_plus_when_decoding_values() {
        let u = parse("h/d/?api-version=1&DeviceClientType=a+b%20c");
        assert_eq!(u.device_client_type.as_deref(), Some("a+b c"));
    }

    #[test]
    fn client_id_must_equal_the_identity_exactly() {
        let module = ClientIdentity::module("edge", "filter");
        check_client_id("edge/filter", &module).unwrap();
        for wrong in [
            "edge",
            "Edge/filter",
            "edge/Filter",
            "edge/filter/",
            " edge/filter",
        ] {
            assert!(
                matches!(
                    check_client_id(wrong, &module),
                    Err(UsernameError::ClientIdMismatch { .. })
                ),
                "{wrong}"
            );
        }
        let device = ClientIdentity::device("leaf");
        check_client_id("leaf", &device).unwrap();
        assert!(check_client_id("leaf/m", &device).is_err());
    }

    /// An id IoT Hub accepts; `$` first only for devices.
    const ID: &str = "[A-Za-z0-9\\-:.+%_#*?!(),=@']{1,20}";

    proptest! {
        #[test]
        fn every_form_names_the_identity_it_was_built_from(
            host in "[a-z0-9.\\-]{0,30}",
            device in ID,
            module in proptest::option::of(ID),
            question_mark: bool,
            api_version in "[0-9\\-]{0,10}",
            client_type in "\\PC{0,20}",
        ) {
            let ids = match &module {
                Some(module) => format!("{device}/{module}"),
                None => device.clone(),
            };
            let props = format!(
                "api-version={api_version}&DeviceClientType={}",
                percent_encoding::utf8_percent_encode(&client_type, percent_encoding::NON_ALPHANUMERIC)
            );
            let username = format!("{host}/{ids}/{}{props}", if question_mark { "?" } else { "" });
            let parsed = parse_username(&username).unwrap();
            prop_assert_eq!(&parsed.identity.device_id, &device);
            prop_assert_eq!(&parsed.identity.module_id, &module);
            prop_assert_eq!(parsed.api_version, api_version);
            prop_assert_eq!(parsed.device_client_type, Some(client_type));
            check_client_id(&ids, &parsed.identity).unwrap();
        }
    }
}
