//! IoT Hub MQTT topics (protocol spec 2.1 to 2.4), both directions: what a client publishes to
//! and what its subscriptions mean; the topics the hub publishes on (module inputs, twin
//! responses, desired patches, method requests); and the property bags carried in topic segments.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use router::Properties;
use router::message::PropKey;

/// What an inbound PUBLISH topic addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'t> {
    /// Telemetry of a device, or an output of a module: `devices/{d}[/modules/{m}]/messages/events[/{bag}][/]`.
    Telemetry {
        /// The device id in the topic.
        device: &'t str,
        /// The module id in the topic, for modules.
        module: Option<&'t str>,
        /// The property bag segment (may be empty).
        bag: &'t str,
    },
    /// `$iothub/twin/GET/?$rid={rid}`.
    TwinGet {
        /// The request id.
        rid: Option<String>,
    },
    /// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
    TwinPatchReported {
        /// The request id.
        rid: Option<String>,
    },
    /// `$iothub/methods/res/{status}/?$rid={rid}`.
    MethodResponse {
        /// The status segment, as sent.
        status: &'t str,
        /// The request id.
        rid: Option<String>,
    },
    /// Any other topic (decision D2: acknowledged, dropped, counted).
    Unknown,
}

impl<'t> Inbound<'t> {
    /// Classifies an inbound topic.
    pub fn parse(topic: &'t str) -> Self {
        if let Some(rest) = topic.strip_prefix("$iothub/") {
            return Self::parse_iothub(rest);
        }
        let segments: Vec<&str> = topic.split('/').collect();
        let (device, module, rest) = match segments.as_slice() {
            ["devices", d, "modules", m, "messages", "events", rest @ ..] => (*d, Some(*m), rest),
            ["devices", d, "messages", "events", rest @ ..] => (*d, None, rest),
            _ => return Self::Unknown,
        };
        let bag = match rest {
            [] | [""] => "",
            [bag] | [bag, ""] => bag,
            _ => return Self::Unknown,
        };
        if device.is_empty() || module.is_some_and(str::is_empty) {
            return Self::Unknown;
        }
        Self::Telemetry {
            device,
            module,
            bag,
        }
    }

    fn parse_iothub(rest: &'t str) -> Self {
        let (path, query) = rest.split_once("/?").unwrap_or((rest, ""));
        let rid = query_value(query, "$rid");
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["twin", "GET"] => Self::TwinGet { rid },
            ["twin", "PATCH", "properties", "reported"] => Self::TwinPatchReported { rid },
            ["methods", "res", status] => Self::MethodResponse { status, rid },
            _ => Self::Unknown,
        }
    }
}

/// The value of `name` in a `a=1&b=2` query, percent-decoded.
fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| decode(v))
    })
}

/// What a subscription filter asks for (spec 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionKind {
    /// `$iothub/methods/POST/#`
    Methods,
    /// `$iothub/twin/PATCH/properties/desired/#`
    DesiredProperties,
    /// `$iothub/twin/res/#`
    TwinResponses,
    /// `devices/{d}/messages/devicebound/#`
    CloudToDevice,
    /// `devices/{d}/modules/{m}/#` or `.../inputs/#`
    ModuleMessages,
    /// Anything else: acknowledged and ignored.
    Unknown,
}

impl SubscriptionKind {
    /// Classifies a filter by prefix and suffix, as edgeHub does.
    pub fn of(filter: &str) -> Self {
        if filter.starts_with("$iothub/methods/POST/") {
            Self::Methods
        } else if filter.starts_with("$iothub/twin/PATCH/properties/desired/") {
            Self::DesiredProperties
        } else if filter == "$iothub/twin/res/#" {
            Self::TwinResponses
        } else if filter.starts_with("devices/") && filter.ends_with("messages/devicebound/#") {
            Self::CloudToDevice
        } else if is_module_messages(filter) {
            Self::ModuleMessages
        } else {
            Self::Unknown
        }
    }
}

/// Whether `identity` may subscribe to `filter` (decision D3): topics under `devices/` must
/// name the identity itself; `$iothub/` topics are per connection anyway; anything else is
/// accepted and ignored, as edgeHub does.
pub fn may_subscribe(identity: &super::auth::Identity, filter: &str) -> bool {
    let Some(rest) = filter.strip_prefix("devices/") else {
        return true;
    };
    let own = match &identity.module_id {
        Some(module) => format!("{}/modules/{module}/", identity.device_id),
        None => format!("{}/", identity.device_id),
    };
    rest.starts_with(&own)
        && (identity.module_id.is_some() || !rest[own.len()..].starts_with("modules/"))
}

/// `^devices/.+/modules/.+/#$`
fn is_module_messages(filter: &str) -> bool {
    filter
        .strip_prefix("devices/")
        .and_then(|rest| rest.strip_suffix("/#"))
        .and_then(|middle| middle.split_once("/modules/"))
        .is_some_and(|(d, m)| !d.is_empty() && !m.is_empty())
}

/// Standard MQTT topic filter matching (`+` one level, `#` the rest), ordinal.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match level {
            "#" => return true,
            "+" => {
                if topic_levels.next().is_none() {
                    return false;
                }
            }
            literal => {
                if topic_levels.next() != Some(literal) {
                    return false;
                }
            }
        }
    }
    topic_levels.next().is_none()
}

/// The topic a module input message is published on (spec 2.4) without its property bag,
/// which follows it: `devices/{device}/modules/{module}/inputs/{input}/`.
pub fn module_input_prefix(device: &str, module: &str, input: &str) -> String {
    format!("devices/{device}/modules/{module}/inputs/{input}/")
}

/// The topic a desired-properties patch is pushed on:
/// `$iothub/twin/PATCH/properties/desired/?$version={version}`.
pub fn desired_patch(version: u64) -> String {
    format!("$iothub/twin/PATCH/properties/desired/?$version={version}")
}

/// The topic of the answer to a twin request:
/// `$iothub/twin/res/{status}/?$rid={rid}[&$version={version}]` (`rid` percent-encoded).
pub fn twin_response(status: u16, rid: &str, version: Option<u64>) -> String {
    let rid = encode_component(rid);
    match version {
        Some(v) => format!("$iothub/twin/res/{status}/?$rid={rid}&$version={v}"),
        None => format!("$iothub/twin/res/{status}/?$rid={rid}"),
    }
}

/// The topic a direct method request is published on: `$iothub/methods/POST/{method}/?$rid={rid}`.
pub fn method_request(method: &str, rid: &str) -> String {
    format!("$iothub/methods/POST/{method}/?$rid={rid}")
}

/// How a system property travels (spec 2.3 and 2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Read from senders and sent to receivers.
    Both,
    /// Read from senders, never sent to receivers (`$.on`, `$.ifid`).
    InboundOnly,
    /// Written by the hub (the sender's identity), sent to receivers.
    OutboundOnly,
}

/// Wire names of system properties, the keys the hub stores them under, and their direction;
/// outbound bags list them in this order.
/// The internal names are prepared keys, so looking them up hashes nothing per message.
static SYSTEM_PROPERTIES: [(&str, PropKey, Direction); 16] = [
    ("$.mid", PropKey::from_static("messageId"), Direction::Both),
    ("$.cid", PropKey::from_static("cid"), Direction::Both),
    ("$.uid", PropKey::from_static("userId"), Direction::Both),
    ("$.to", PropKey::from_static("to"), Direction::Both),
    (
        "$.exp",
        PropKey::from_static("absolute-expiry-time"),
        Direction::Both,
    ),
    ("$.ct", PropKey::from_static("contentType"), Direction::Both),
    (
        "$.ce",
        PropKey::from_static("contentEncoding"),
        Direction::Both,
    ),
    (
        "$.schema",
        PropKey::from_static("messageSchema"),
        Direction::Both,
    ),
    (
        "$.ctime",
        PropKey::from_static("creationTime"),
        Direction::Both,
    ),
    (
        "$.on",
        PropKey::from_static("outputName"),
        Direction::InboundOnly,
    ),
    (
        "$.ifid",
        PropKey::from_static("iothub-interface-id"),
        Direction::InboundOnly,
    ),
    ("$.sub", PropKey::from_static("dt-subject"), Direction::Both),
    (
        "$.cdid",
        PropKey::from_static("connectionDeviceId"),
        Direction::OutboundOnly,
    ),
    (
        "$.cmid",
        PropKey::from_static("connectionModuleId"),
        Direction::OutboundOnly,
    ),
    (
        "iothub-operation",
        PropKey::from_static("operation"),
        Direction::Both,
    ),
    ("ack", PropKey::from_static("ack"), Direction::Both),
];

/// Application properties a sender may not set: the hub writes the sender's identity.
/// Compared without regard to letter case; dropped when a message comes in and never sent.
const SENDER_KEYS: [&str; 4] = [
    "$.cdid",
    "$.cmid",
    "$connectionDeviceId",
    "$connectionModuleId",
];

/// Whether `key` names the sender's identity (an application property nobody may set).
fn is_sender_key(key: &str) -> bool {
    SENDER_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

/// The most properties (application and system) one message may carry. Checked before
/// anything is decoded; IoT Hub's 256 KiB message limit applies as well.
pub const MAX_PROPERTIES: usize = 1024;

/// A property bag that is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BagError {
    /// More than [`MAX_PROPERTIES`] properties.
    #[error("more than {MAX_PROPERTIES} properties in the topic")]
    TooManyProperties,
}

/// A property bag split into application and system properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PropertyBag {
    /// Application properties.
    pub properties: Properties,
    /// System properties under the hub's internal names (`messageId`, `contentType`, ...).
    pub system_properties: Properties,
}

/// Decodes a property bag segment: `key=value&...`, percent-decoded (`+` is a plus), a key
/// without `=` has an empty value, a `?` in a key is removed, the last duplicate wins.
/// Properties that name the sender (`$.cdid`, `$connectionModuleId`, ... in any letter case)
/// are dropped: only the hub says who sent a message.
///
/// # Errors
///
/// More than [`MAX_PROPERTIES`] properties (counted before decoding).
pub fn decode_bag(bag: &str) -> Result<PropertyBag, BagError> {
    let pairs = || bag.split('&').filter(|p| !p.is_empty());
    if pairs().nth(MAX_PROPERTIES).is_some() {
        return Err(BagError::TooManyProperties);
    }
    let mut out = PropertyBag::default();
    for pair in pairs() {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(&key.replace('?', ""));
        if key.is_empty() || is_sender_key(&key) {
            continue;
        }
        let value = decode(value);
        let system = SYSTEM_PROPERTIES
            .iter()
            .find(|(wire, _, direction)| *wire == key && *direction != Direction::OutboundOnly);
        match system {
            Some((_, internal, _)) => out.system_properties.insert(internal.name(), value),
            None => out.properties.insert(key, value),
        }
    }
    Ok(out)
}

/// Encodes the bag a receiver sees: application properties, then the outbound system
/// properties (spec 2.4).
pub fn encode_bag(properties: &Properties, system_properties: &Properties) -> String {
    encode_bag_with(properties, system_properties, |d| {
        d != Direction::InboundOnly
    })
}

/// Encodes the bag of a message forwarded upstream: application properties, then every
/// system property a sender may set (`$.on` and `$.ifid` included: a parent hub routes by the
/// output name); never the sender's identity, which upstream takes from the connection.
pub fn encode_upstream_bag(properties: &Properties, system_properties: &Properties) -> String {
    encode_bag_with(properties, system_properties, |d| {
        d != Direction::OutboundOnly
    })
}

/// Application properties (never the sender's identity), then the system properties whose
/// direction `include` accepts, in the order of [`SYSTEM_PROPERTIES`].
fn encode_bag_with(
    properties: &Properties,
    system_properties: &Properties,
    include: impl Fn(Direction) -> bool,
) -> String {
    let mut out = String::new();
    let mut push = |key: &str, value: &str| {
        if !out.is_empty() {
            out.push('&');
        }
        out.extend(utf8_percent_encode(key, BAG));
        out.push('=');
        out.extend(utf8_percent_encode(value, BAG));
    };
    for (key, value) in properties.iter() {
        if !is_sender_key(key) {
            push(key, value);
        }
    }
    for (wire, internal, direction) in &SYSTEM_PROPERTIES {
        if include(*direction)
            && let Some(value) = system_properties.get_key(internal)
        {
            push(wire, value);
        }
    }
    out
}

/// The telemetry topic of `device` (or of its module `module`) with `bag`:
/// `devices/{d}[/modules/{m}]/messages/events/{bag}`.
pub fn telemetry(device: &str, module: Option<&str>, bag: &str) -> String {
    match module {
        Some(module) => format!("devices/{device}/modules/{module}/messages/events/{bag}"),
        None => format!("devices/{device}/messages/events/{bag}"),
    }
}

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
const BAG: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a topic component, leaving RFC 3986 unreserved characters as they are.
pub fn encode_component(text: &str) -> String {
    utf8_percent_encode(text, BAG).collect()
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn any_topic_or_bag_is_classified_without_panicking(text in "\\PC{0,80}") {
            let _ = Inbound::parse(&text);
            let _ = SubscriptionKind::of(&text);
            let _ = decode_bag(&text);
            let _ = filter_matches(&text, "devices/d/modules/m/inputs/x/");
        }

        #[test]
        fn application_properties_survive_encode_then_decode(
            pairs in prop::collection::vec(("[a-zA-Z0-9 /&=%?+$._~-]{1,12}", "\\PC{0,12}"), 0..6)
        ) {
            let properties: Properties = pairs
                .iter()
                .filter(|(k, _)| !k.contains('?') && !is_sender_key(k))
                .filter(|(k, _)| !SYSTEM_PROPERTIES.iter().any(|(wire, _, _)| wire.eq_ignore_ascii_case(k)))
                .cloned()
                .collect();
            let decoded = decode_bag(&encode_bag(&properties, &Properties::new())).unwrap();
            prop_assert_eq!(decoded.properties, properties);
        }
    }

    #[test]
    fn telemetry_topics_in_every_documented_form() {
        for (topic, device, module, bag) in [
            ("devices/d/messages/events/", "d", None, ""),
            ("devices/d/messages/events", "d", None, ""),
            ("devices/d/messages/events/a=1/", "d", None, "a=1"),
            ("devices/d/messages/events/a=1", "d", None, "a=1"),
            ("devices/d/modules/m/messages/events/", "d", Some("m"), ""),
            (
                "devices/d/modules/m/messages/events/%24.on=out1&x=2",
                "d",
                Some("m"),
                "%24.on=out1&x=2",
            ),
        ] {
            assert_eq!(
                Inbound::parse(topic),
                Inbound::Telemetry {
                    device,
                    module,
                    bag
                },
                "{topic}"
            );
        }
        for topic in [
            "devices/d/messages/events/a/b",
            "devices//messages/events/",
            "devices/d/modules//messages/events/",
            "devices/d/messages/devicebound/x",
            "random/topic",
            "",
        ] {
            assert_eq!(Inbound::parse(topic), Inbound::Unknown, "{topic}");
        }
    }

    #[test]
    fn iothub_topics_carry_their_request_id() {
        assert_eq!(
            Inbound::parse("$iothub/twin/GET/?$rid=42"),
            Inbound::TwinGet {
                rid: Some("42".into())
            }
        );
        assert_eq!(
            Inbound::parse("$iothub/twin/PATCH/properties/reported/?$rid=7&$version=3"),
            Inbound::TwinPatchReported {
                rid: Some("7".into())
            }
        );
        assert_eq!(
            Inbound::parse("$iothub/methods/res/200/?$rid=abc"),
            Inbound::MethodResponse {
                status: "200",
                rid: Some("abc".into())
            }
        );
        assert_eq!(
            Inbound::parse("$iothub/twin/GET/foo/?$rid=1"),
            Inbound::Unknown
        );
    }

    #[test]
    fn subscriptions_are_classified_like_edgehub() {
        use SubscriptionKind::*;
        for (filter, kind) in [
            ("$iothub/methods/POST/#", Methods),
            ("$iothub/twin/PATCH/properties/desired/#", DesiredProperties),
            ("$iothub/twin/res/#", TwinResponses),
            ("devices/d/messages/devicebound/#", CloudToDevice),
            ("devices/d/modules/m/#", ModuleMessages),
            ("devices/d/modules/m/inputs/#", ModuleMessages),
            ("devices/d/#", Unknown),
            ("a/b", Unknown),
        ] {
            assert_eq!(SubscriptionKind::of(filter), kind, "{filter}");
        }
    }

    #[test]
    fn clients_subscribe_only_to_their_own_topics() {
        use crate::mqtt::auth::Identity;
        let module = Identity {
            device_id: "d".into(),
            module_id: Some("m".into()),
        };
        let device = Identity {
            device_id: "d".into(),
            module_id: None,
        };
        assert!(may_subscribe(&module, "devices/d/modules/m/#"));
        assert!(may_subscribe(&module, "devices/d/modules/m/inputs/#"));
        assert!(may_subscribe(&module, "$iothub/methods/POST/#"));
        assert!(!may_subscribe(&module, "devices/d/modules/other/#"));
        assert!(!may_subscribe(&module, "devices/d/modules/m2/#"));
        assert!(!may_subscribe(&module, "devices/#"));
        assert!(!may_subscribe(&module, "devices/+/modules/m/#"));
        assert!(may_subscribe(&device, "devices/d/messages/devicebound/#"));
        assert!(!may_subscribe(&device, "devices/d/modules/m/#"));
        assert!(!may_subscribe(
            &device,
            "devices/other/messages/devicebound/#"
        ));
    }

    #[test]
    fn filters_match_like_mqtt() {
        assert!(filter_matches(
            "devices/d/modules/m/#",
            "devices/d/modules/m/inputs/in1/x=1"
        ));
        assert!(filter_matches(
            "devices/d/modules/m/inputs/#",
            "devices/d/modules/m/inputs/in1/"
        ));
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/c/d"));
        assert!(!filter_matches(
            "devices/d/modules/m/#",
            "devices/d/modules/n/inputs/in1"
        ));
        assert!(filter_matches("#", "anything/at/all"));
    }

    #[test]
    fn bags_decode_keys_and_values_and_map_system_properties() {
        let bag = decode_bag(
            "%24.on=out1&%24.mid=mid-1&%24.cid=cid-1&%24.ct=application%2Fjson&%24.ce=utf-8&color=red%2Fblue%20%26x%3D1&n=5&plus=a+b&?q&dup=1&dup=2",
        )
        .unwrap();
        let sys = &bag.system_properties;
        assert_eq!(sys.get("outputName"), Some("out1"));
        assert_eq!(sys.get("messageId"), Some("mid-1"));
        assert_eq!(sys.get("cid"), Some("cid-1"));
        assert_eq!(sys.get("contentType"), Some("application/json"));
        assert_eq!(sys.get("contentEncoding"), Some("utf-8"));
        let app = &bag.properties;
        assert_eq!(app.get("color"), Some("red/blue &x=1"));
        assert_eq!(app.get("plus"), Some("a+b"));
        assert_eq!(app.get("q"), Some(""));
        assert_eq!(app.get("dup"), Some("2"));
        assert_eq!(app.len(), 5);
    }

    #[test]
    fn outbound_bags_carry_the_sender_and_never_the_output_name() {
        let props: Properties = [("color", "red/blue &x=1"), ("$.cdid", "spoofed")]
            .into_iter()
            .collect();
        let sys: Properties = [
            ("messageId", "mid-1"),
            ("outputName", "out1"),
            ("contentType", "application/json"),
            ("connectionDeviceId", "dev1"),
            ("connectionModuleId", "modA"),
        ]
        .into_iter()
        .collect();
        let bag = encode_bag(&props, &sys);
        assert_eq!(
            bag,
            "color=red%2Fblue%20%26x%3D1&%24.mid=mid-1&%24.ct=application%2Fjson&%24.cdid=dev1&%24.cmid=modA"
        );
        let back = decode_bag(&bag).unwrap();
        assert_eq!(back.properties.get("color"), Some("red/blue &x=1"));
        // Read back as a sender's bag, the sender's identity is not the sender's to say.
        assert_eq!(back.properties.get("$.cdid"), None);
    }

    #[test]
    fn a_sender_cannot_name_itself_in_any_letter_case() {
        let bag = decode_bag(
            "%24connectionDeviceId=other&%24ConnectionModuleId=m&%24.CDID=x&%24.cMid=y&%24.cdid=z&ok=1",
        )
        .unwrap();
        assert_eq!(bag.properties.len(), 1, "{:?}", bag.properties);
        assert_eq!(bag.properties.get("ok"), Some("1"));
        let outbound = encode_bag(
            &[("$.CDID", "x"), ("$connectionModuleId", "m"), ("ok", "1")]
                .into_iter()
                .collect(),
            &Properties::new(),
        );
        assert_eq!(outbound, "ok=1");
    }

    #[test]
    fn the_number_of_properties_is_capped_before_decoding() {
        let at_cap = vec!["k=v"; MAX_PROPERTIES].join("&");
        assert!(decode_bag(&at_cap).is_ok());
        let over = vec!["k=v"; MAX_PROPERTIES + 1].join("&");
        assert_eq!(decode_bag(&over), Err(BagError::TooManyProperties));
        // Empty pairs are not properties.
        assert!(decode_bag(&format!("{at_cap}&&&")).is_ok());
    }
}
