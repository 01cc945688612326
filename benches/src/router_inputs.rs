//! Inputs of the route engine benchmarks, shared so that every figure is measured on the same
//! messages and routes.

use router::{DEFAULT_PRIORITY, Message, RouteSpec};

/// The property condition of issue 2's target (at most 25 ns per evaluation).
pub const PROPERTY_CONDITION: &str = "$connectionModuleId = 'm1' AND level = 'high'";

/// The body condition of issue 2's target (at most 500 ns, body parse included).
pub const BODY_CONDITION: &str = "$body.temperature > 30";

/// A 200-byte JSON telemetry body.
pub const BODY_200: &str = r#"{"temperature": 31.5, "humidity": 40, "pressure": 1013.25, "deviceId": "sensor-0042", "timeCreated": "2026-11-23T10:00:00Z", "status": "ok", "location": {"line": 3, "cell": "B"}, "tags": ["ab", "bc"]}"#;

/// A module output message as the hub sees it, with typical system and application properties.
pub fn telemetry_message(module: &str) -> Message {
    let mut m = Message::default();
    for (k, v) in [
        ("messageId", "5c8e3a2a-0001"),
        ("connectionDeviceId", "edge-device-1"),
        ("connectionModuleId", module),
        ("outputName", "output1"),
        ("contentType", "application/json"),
        ("contentEncoding", "utf-8"),
    ] {
        m.system_properties.insert(k, v);
    }
    m.properties.insert("level", "high");
    m.properties.insert("site", "plant-7");
    m.body = BODY_200.as_bytes().to_vec().into();
    m
}

/// A module message whose body is [`BODY_200`].
pub fn json_message() -> Message {
    telemetry_message("sensor")
}

/// `count` routes, one per module `m{i}`, each with the property condition's shape.
pub fn module_routes(count: usize) -> Vec<RouteSpec> {
    (0..count)
        .map(|i| RouteSpec {
            name: format!("route{i}"),
            text: format!(
                "FROM /messages/modules/m{i}/outputs/* WHERE $connectionModuleId = 'm{i}' AND level = 'high' \
                 INTO BrokeredEndpoint(\"/modules/sink{i}/inputs/in\")"
            ),
            priority: DEFAULT_PRIORITY,
            ttl_secs: 0,
        })
        .collect()
}

/// The source of every route of [`equality_routes`] and [`mixed_routes`]: the outputs of
/// module `m1`, which [`telemetry_message`]`("m1")` comes from.
const SAME_SOURCE: &str = "/messages/modules/m1/outputs/*";

/// The device id of route `i` of [`equality_routes`].
pub fn device_id(i: usize) -> String {
    format!("device-{i}")
}

/// `count` routes on one source, route `i` selecting the messages of device
/// [`device_id`]`(i)` (`$connectionDeviceId = 'device-{i}'`), each into a sink of its own:
/// the shape of a per-device routing table (issue 15).
pub fn equality_routes(count: usize) -> Vec<RouteSpec> {
    (0..count)
        .map(|i| RouteSpec {
            name: format!("device{i}"),
            text: format!(
                "FROM {SAME_SOURCE} WHERE $connectionDeviceId = '{}' \
                 INTO BrokeredEndpoint(\"/modules/sink{i}/inputs/in\")",
                device_id(i)
            ),
            priority: DEFAULT_PRIORITY,
            ttl_secs: 0,
        })
        .collect()
}

/// `count` routes on one source in the three shapes of `benches/scale.sh`'s same-source
/// scenario (an application property equal to a constant, a system property equal to a
/// constant, a function of a property compared with a number), none true for
/// [`telemetry_message`].
pub fn mixed_routes(count: usize) -> Vec<RouteSpec> {
    (0..count)
        .map(|i| {
            let condition = match i % 3 {
                0 => format!("level = 'extra-{i}'"),
                1 => format!("$contentType = 'application/x-extra-{i}'"),
                _ => format!("as_number(temperature) > {i} AND IS_DEFINED(level)"),
            };
            RouteSpec {
                name: format!("mixed{i}"),
                text: format!(
                    "FROM {SAME_SOURCE} WHERE {condition} \
                     INTO BrokeredEndpoint(\"/modules/sink{i}/inputs/in\")"
                ),
                priority: DEFAULT_PRIORITY,
                ttl_secs: 0,
            }
        })
        .collect()
}

/// [`telemetry_message`]`("m1")` sent by device `device`.
pub fn device_message(device: &str) -> Message {
    let mut m = telemetry_message("m1");
    m.system_properties.insert("connectionDeviceId", device);
    m
}
