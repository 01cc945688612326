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
    format!(
        "devices/{device}/modules/{}/inputs/#",
        subscriber_module(index)
    )
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
        json!({"modulesContent": {
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {}}},
            "$edgeHub": {"properties.desired": edge_hub_desired(self.hub_routes(publishers, subscribers))}
        }})
    }
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
