//! Who sends to whom: the scenario's streams, the MQTT topics of both modes, and the hub's
//! deployment manifest whose routes carry them.

use serde::Serialize;
use serde_json::{Map, Value, json};
use thiserror::Error;

/// How publishers map to subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// Publisher `i` to subscriber `i` (as many publishers as subscribers).
    Pairs,
    /// Every publisher to every subscriber.
    Fanout,
}

/// A topology that does not fit the client counts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopologyError {
    /// No publisher or no subscriber.
    #[error("a scenario needs at least one publisher and one subscriber")]
    Empty,
    /// `pairs` with different counts.
    #[error(
        "the pairs topology needs as many publishers as subscribers ({publishers} != {subscribers})"
    )]
    Unpaired {
        /// Publishers asked for.
        publishers: u32,
        /// Subscribers asked for.
        subscribers: u32,
    },
}

/// The module name of publisher `index` in hub mode.
#[must_use]
pub fn publisher_module(index: u32) -> String {
    format!("load-pub-{index}")
}

/// The module name of subscriber `index` in hub mode.
#[must_use]
pub fn subscriber_module(index: u32) -> String {
    format!("load-sub-{index}")
}

/// The output every publisher module sends on, and the input every subscriber receives on.
pub const OUTPUT: &str = "out";
/// The input name of the routes' sinks.
pub const INPUT: &str = "in";

/// The topic publisher `index` publishes on in plain mode.
#[must_use]
pub fn plain_topic(index: u32) -> String {
    format!("load/{index}")
}

/// The topic publisher `index` publishes on in hub mode.
#[must_use]
pub fn hub_publish_topic(device: &str, index: u32) -> String {
    format!(
        "devices/{device}/modules/{}/messages/events/%24.on={OUTPUT}",
        publisher_module(index)
    )
}

/// The filter subscriber `index` subscribes to in hub mode: all its module's inputs.
#[must_use]
pub fn hub_inputs_filter(device: &str, index: u32) -> String {
    hub_module_inputs_filter(device, &subscriber_module(index))
}

/// The filter of all the inputs of module `module` in hub mode.
#[must_use]
pub fn hub_module_inputs_filter(device: &str, module: &str) -> String {
    format!("devices/{device}/modules/{module}/inputs/#")
}

impl Topology {
    /// Checks that the topology fits `publishers` and `subscribers`.
    ///
    /// # Errors
    ///
    /// When one count is zero, or `pairs` has different counts.
    pub fn check(self, publishers: u32, subscribers: u32) -> Result<(), TopologyError> {
        if publishers == 0 || subscribers == 0 {
            return Err(TopologyError::Empty);
        }
        if self == Self::Pairs && publishers != subscribers {
            return Err(TopologyError::Unpaired {
                publishers,
                subscribers,
            });
        }
        Ok(())
    }

    /// The publishers subscriber `receiver` hears.
    #[must_use]
    pub fn senders_of(self, receiver: u32, publishers: u32) -> Vec<u32> {
        match self {
            Self::Pairs => vec![receiver],
            Self::Fanout => (0..publishers).collect(),
        }
    }

    /// Every `(sender, receiver)` stream, by receiver then sender.
    #[must_use]
    pub fn streams(self, publishers: u32, subscribers: u32) -> Vec<(u32, u32)> {
        (0..subscribers)
            .flat_map(|receiver| {
                self.senders_of(receiver, publishers)
                    .into_iter()
                    .map(move |sender| (sender, receiver))
            })
            .collect()
    }

    /// The `$edgeHub` routes that carry every stream: `load-pub-{i}`'s output to
    /// `load-sub-{j}`'s input.
    #[must_use]
    pub fn hub_routes(self, publishers: u32, subscribers: u32) -> Map<String, Value> {
        self.streams(publishers, subscribers)
            .into_iter()
            .map(|(sender, receiver)| {
                let route = format!(
                    "FROM /messages/modules/{}/outputs/{OUTPUT} INTO BrokeredEndpoint(\"/modules/{}/inputs/{INPUT}\")",
                    publisher_module(sender),
                    subscriber_module(receiver)
                );
                (format!("load{sender}to{receiver}"), Value::String(route))
            })
            .collect()
    }

    /// A deployment manifest whose `$edgeHub` routes carry every stream (and whose `$edgeAgent`
    /// names no module: the generator creates its identities itself).
    #[must_use]
    pub fn deployment_manifest(self, publishers: u32, subscribers: u32) -> Value {
        manifest(self.hub_routes(publishers, subscribers))
    }

    /// As [`Self::deployment_manifest`], plus `count` routes of `kind` that carry none of the
    /// load's messages.
    #[must_use]
    pub fn deployment_manifest_with_extra(
        self,
        publishers: u32,
        subscribers: u32,
        kind: ExtraRoutes,
        count: u32,
    ) -> Value {
        let mut routes = self.hub_routes(publishers, subscribers);
        routes.extend(kind.routes(count, publishers));
        manifest(routes)
    }
}

/// Routes that never carry the load's messages, to measure what a big route table costs
/// (`--extra-routes`). Each has a `WHERE` condition on properties the load's messages lack,
/// and a sink of its own (`load-extra-{k}`'s input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ExtraRoutes {
    /// Sources no load module sends from (`load-extra-src-{k}`): the source index skips them.
    OtherSources,
    /// The publishers' own outputs: every message is evaluated against every condition
    /// (publisher `k % P`'s output for route `k`), and none matches.
    SameSource,
}

/// The module name of the sink of extra route `index`.
#[must_use]
pub fn extra_module(index: u32) -> String {
    format!("load-extra-{index}")
}

/// A condition on properties the load's messages never carry, in one of three shapes
/// (an application property, a system property, a function and a comparison).
fn extra_condition(index: u32) -> String {
    match index % 3 {
        0 => format!("level = 'extra-{index}'"),
        1 => format!("$contentType = 'application/x-extra-{index}'"),
        _ => format!("as_number(temperature) > {index} AND IS_DEFINED(level)"),
    }
}

impl ExtraRoutes {
    /// `count` routes of this kind, named `extra{k}`, for a scenario of `publishers`
    /// publishers.
    #[must_use]
    pub fn routes(self, count: u32, publishers: u32) -> Map<String, Value> {
        (0..count)
            .map(|index| {
                let source = match self {
                    Self::OtherSources => format!("load-extra-src-{index}"),
                    Self::SameSource => publisher_module(index % publishers.max(1)),
                };
                let route = format!(
                    "FROM /messages/modules/{source}/outputs/{OUTPUT} WHERE {} INTO BrokeredEndpoint(\"/modules/{}/inputs/{INPUT}\")",
                    extra_condition(index),
                    extra_module(index)
                );
                (format!("extra{index}"), Value::String(route))
            })
            .collect()
    }
}

/// A deployment manifest with these `$edgeHub` routes and an `$edgeAgent` that names no
/// module (the generator creates its identities itself).
fn manifest(routes: Map<String, Value>) -> Value {
    json!({"modulesContent": {
        "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {}}},
        "$edgeHub": {"properties.desired": edge_hub_desired(routes)}
    }})
}

/// `$edgeHub`'s desired properties with these routes and a two-hour TTL.
#[must_use]
pub fn edge_hub_desired(routes: Map<String, Value>) -> Value {
    json!({
        "schemaVersion": "1.1",
        "routes": Value::Object(routes),
        "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_connect_each_publisher_to_its_subscriber() {
        assert_eq!(
            Topology::Pairs.streams(4, 4),
            [(0, 0), (1, 1), (2, 2), (3, 3)]
        );
        assert_eq!(
            Topology::Pairs.check(4, 3),
            Err(TopologyError::Unpaired {
                publishers: 4,
                subscribers: 3
            })
        );
    }

    #[test]
    fn fanout_connects_every_publisher_to_every_subscriber() {
        assert_eq!(
            Topology::Fanout.streams(1, 4),
            [(0, 0), (0, 1), (0, 2), (0, 3)]
        );
        assert_eq!(Topology::Fanout.streams(2, 2).len(), 4);
        assert_eq!(Topology::Fanout.check(0, 4), Err(TopologyError::Empty));
    }

    #[test]
    fn the_manifest_routes_are_valid_edge_hub_routes() {
        let manifest = Topology::Fanout.deployment_manifest(1, 4);
        let desired = &manifest["modulesContent"]["$edgeHub"]["properties.desired"];
        let routes = router::EdgeHubRoutes::from_desired(desired);
        assert!(routes.is_ok(), "{routes:?}");
        assert_eq!(
            desired["routes"]["load0to3"],
            "FROM /messages/modules/load-pub-0/outputs/out INTO BrokeredEndpoint(\"/modules/load-sub-3/inputs/in\")"
        );
    }

    /// A load message of publisher `sender`, as the hub sees it.
    fn load_message(sender: u32) -> router::Message {
        let header = super::super::payload::Header {
            run_id: 1,
            sent_at_ns: 2,
            sender,
            seq: 3,
        };
        let mut message = router::Message {
            body: header.encode(256).into(),
            ..router::Message::default()
        };
        message
            .system_properties
            .insert("connectionModuleId", publisher_module(sender));
        message.system_properties.insert("outputName", OUTPUT);
        message
    }

    #[test]
    fn extra_routes_compile_and_carry_none_of_the_load() {
        for kind in [ExtraRoutes::OtherSources, ExtraRoutes::SameSource] {
            let manifest = Topology::Pairs.deployment_manifest_with_extra(2, 2, kind, 999);
            let desired = &manifest["modulesContent"]["$edgeHub"]["properties.desired"];
            assert_eq!(desired["routes"].as_object().map(Map::len), Some(1_001));
            let table = router::EdgeHubRoutes::from_desired(desired).and_then(|r| r.table());
            let table = table.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
            assert_eq!(table.routes().len(), 1_001, "{kind:?}");
            // Every extra route has a sink of its own, besides the two live ones.
            assert_eq!(table.endpoints().len(), 1_001, "{kind:?}");
            for sender in 0..2 {
                let deliveries = table.dispatch(&load_message(sender));
                assert_eq!(deliveries.len(), 1, "{kind:?}: publisher {sender}");
            }
        }
    }

    #[test]
    fn extra_routes_take_the_publishers_sources_or_others() {
        let same = ExtraRoutes::SameSource.routes(4, 2);
        assert_eq!(
            same["extra3"],
            "FROM /messages/modules/load-pub-1/outputs/out WHERE level = 'extra-3' INTO BrokeredEndpoint(\"/modules/load-extra-3/inputs/in\")"
        );
        let other = ExtraRoutes::OtherSources.routes(3, 1);
        assert_eq!(
            other["extra1"],
            "FROM /messages/modules/load-extra-src-1/outputs/out WHERE $contentType = 'application/x-extra-1' INTO BrokeredEndpoint(\"/modules/load-extra-1/inputs/in\")"
        );
        assert!(
            other["extra2"]
                .as_str()
                .is_some_and(|r| r.contains("as_number(temperature) > 2 AND IS_DEFINED(level)"))
        );
        assert!(ExtraRoutes::SameSource.routes(0, 1).is_empty());
        // The same-source conditions are evaluated for a load message, and are false.
        for (name, route) in ExtraRoutes::SameSource.routes(6, 1) {
            let text = route.as_str().expect("a route is text");
            let compiled = router::CompiledRoute::compile(text);
            let compiled = compiled.unwrap_or_else(|e| panic!("{name}: {text}: {e}"));
            assert!(!compiled.routes(&load_message(0)), "{name}: {text}");
        }
    }

    #[test]
    fn hub_topics_follow_the_module_naming() {
        assert_eq!(
            hub_publish_topic("edge", 2),
            "devices/edge/modules/load-pub-2/messages/events/%24.on=out"
        );
        assert_eq!(
            hub_inputs_filter("edge", 1),
            "devices/edge/modules/load-sub-1/inputs/#"
        );
        assert_eq!(plain_topic(3), "load/3");
    }
}
