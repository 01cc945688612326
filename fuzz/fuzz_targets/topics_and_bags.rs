//! Topics and property bags (`edgehub::mqtt::topic`): inbound topics, subscription filters,
//! and the bag a sender writes against the bag a receiver gets.

#![no_main]

use arbitrary::Arbitrary;
use edgehub::mqtt::auth::Identity;
use edgehub::mqtt::topic::{
    Inbound, MAX_PROPERTIES, SubscriptionKind, decode_bag, encode_bag, filter_matches,
    may_subscribe, module_input_prefix,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    topic: String,
    filter: String,
    bag: String,
    device: String,
    module: Option<String>,
}

/// System properties that travel both ways keep their value through a delivery; the others
/// are inbound only (`outputName`, `iothub-interface-id`) or written by the hub.
const INBOUND_ONLY: [&str; 2] = ["outputName", "iothub-interface-id"];

/// Application properties that would name the sender, in any letter case.
const SENDER_KEYS: [&str; 4] = [
    "$.cdid",
    "$.cmid",
    "$connectionDeviceId",
    "$connectionModuleId",
];

fuzz_target!(|input: Input| {
    // Inbound topics: only well-formed telemetry topics name a sender.
    if let Inbound::Telemetry {
        device,
        module,
        bag,
    } = Inbound::parse(&input.topic)
    {
        assert!(input.topic.starts_with("devices/"));
        assert!(!device.is_empty() && !device.contains('/'));
        assert!(module.is_none_or(|m| !m.is_empty() && !m.contains('/')));
        assert!(!bag.contains('/'));
    }
    let _ = SubscriptionKind::of(&input.filter);
    let identity = Identity {
        device_id: input.device.clone(),
        module_id: input.module.clone(),
    };
    let _ = may_subscribe(&identity, &input.filter);
    let matched = filter_matches(&input.filter, &input.topic);
    if !input.topic.contains(['+', '#']) {
        assert!(
            filter_matches(&input.topic, &input.topic),
            "{:?}",
            input.topic
        );
    }
    if matched && !input.filter.contains(['+', '#']) {
        assert_eq!(input.filter, input.topic);
    }
    assert!(filter_matches("#", &input.topic));

    // The bag a sender writes, as a receiver gets it, read back by the receiver's SDK (which
    // decodes as the hub does).
    let Ok(sent) = decode_bag(&input.bag) else {
        assert!(input.bag.split('&').filter(|p| !p.is_empty()).count() > MAX_PROPERTIES);
        return;
    };
    assert!(sent.properties.len() + sent.system_properties.len() <= MAX_PROPERTIES);
    // Only the hub names the sender.
    for (k, _) in sent.properties.iter() {
        assert!(
            !SENDER_KEYS.iter().any(|s| s.eq_ignore_ascii_case(k)),
            "the sender named itself with {k:?}"
        );
    }
    let encoded = encode_bag(&sent.properties, &sent.system_properties);
    assert!(!encoded.contains(['/', '#', '+', '?']), "{encoded:?}");
    let received = decode_bag(&encoded).expect("a bag the hub encodes is read back");
    assert_eq!(received.properties, sent.properties, "bag {:?}", input.bag);
    // System properties go out in the hub's order, not the sender's.
    let sorted = |p: &router::Properties| {
        let mut v: Vec<(String, String)> = p
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        v.sort();
        v
    };
    let mut expected_system = sorted(&sent.system_properties);
    expected_system.retain(|(k, _)| !INBOUND_ONLY.contains(&k.as_str()));
    assert_eq!(
        sorted(&received.system_properties),
        expected_system,
        "bag {:?}",
        input.bag
    );

    // The delivery topic of a module input is a topic the receiver's subscription matches,
    // and its bag is a single level.
    if !input.device.is_empty()
        && !input.device.contains(['/', '+', '#'])
        && let Some(module) = input
            .module
            .as_deref()
            .filter(|m| !m.is_empty() && !m.contains(['/', '+', '#']))
    {
        let topic = format!(
            "{}{encoded}",
            module_input_prefix(&input.device, module, "in")
        );
        let filter = format!("devices/{}/modules/{module}/#", input.device);
        assert!(
            filter_matches(&filter, &topic),
            "{filter:?} does not match {topic:?}"
        );
        assert!(may_subscribe(&identity, &filter));
    }
});
