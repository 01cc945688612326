//! The topics upstream (IoT Hub or a parent hub) publishes to a client: what a device SDK
//! subscribes to, read here from the client's side (protocol spec 2.5 and 2.6).

/// A topic published by upstream to one identity's link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromUpstream<'t> {
    /// `$iothub/twin/res/{status}/?$rid={rid}[&$version={n}]`: the answer to a twin request.
    TwinResponse {
        /// The status code.
        status: u16,
        /// The request id.
        rid: &'t str,
    },
    /// `$iothub/twin/PATCH/properties/desired/?$version={n}`: a desired-properties patch.
    DesiredPatch {
        /// The desired version the patch makes.
        version: Option<u64>,
    },
    /// `$iothub/methods/POST/{method}/?$rid={rid}`: a direct method call.
    MethodCall {
        /// The method's name.
        method: &'t str,
        /// The request id, echoed in the answer.
        rid: &'t str,
    },
    /// Anything else (ignored).
    Other,
}

impl<'t> FromUpstream<'t> {
    /// Classifies `topic`; never fails (what is not understood is [`FromUpstream::Other`]).
    #[must_use]
    pub fn parse(topic: &'t str) -> Self {
        let Some(rest) = topic.strip_prefix("$iothub/") else {
            return Self::Other;
        };
        let (path, query) = rest.split_once("/?").unwrap_or((rest, ""));
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        };
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["twin", "res", status] => match (status.parse(), param("$rid")) {
                (Ok(status), Some(rid)) if !rid.is_empty() => Self::TwinResponse { status, rid },
                _ => Self::Other,
            },
            ["twin", "PATCH", "properties", "desired"] => Self::DesiredPatch {
                version: param("$version").and_then(|v| v.parse().ok()),
            },
            ["methods", "POST", method] if !method.is_empty() => match param("$rid") {
                Some(rid) if !rid.is_empty() => Self::MethodCall { method, rid },
                _ => Self::Other,
            },
            _ => Self::Other,
        }
    }
}

/// The topics a link subscribes to for an identity whose twin and methods are mirrored.
pub mod subscriptions {
    /// Answers to twin requests.
    pub const TWIN_RESPONSES: &str = "$iothub/twin/res/#";
    /// Desired-property patches.
    pub const DESIRED: &str = "$iothub/twin/PATCH/properties/desired/#";
    /// Direct method calls.
    pub const METHODS: &str = "$iothub/methods/POST/#";
}

/// `$iothub/twin/GET/?$rid={rid}`.
#[must_use]
pub fn twin_get(rid: &str) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

/// `$iothub/twin/PATCH/properties/reported/?$rid={rid}`.
#[must_use]
pub fn reported_patch(rid: &str) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// `$iothub/methods/res/{status}/?$rid={rid}`.
#[must_use]
pub fn method_answer(status: u32, rid: &str) -> String {
    format!("$iothub/methods/res/{status}/?$rid={rid}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_topics_of_the_sdks_subscriptions_are_read() {
        assert_eq!(
            FromUpstream::parse("$iothub/twin/res/200/?$rid=7&$version=3"),
            FromUpstream::TwinResponse {
                status: 200,
                rid: "7"
            }
        );
        assert_eq!(
            FromUpstream::parse("$iothub/twin/PATCH/properties/desired/?$version=12"),
            FromUpstream::DesiredPatch { version: Some(12) }
        );
        assert_eq!(
            FromUpstream::parse("$iothub/methods/POST/reset/?$rid=ab12"),
            FromUpstream::MethodCall {
                method: "reset",
                rid: "ab12"
            }
        );
        for other in [
            "",
            "$iothub/twin/res/x/?$rid=1",
            "$iothub/twin/res/200/?$version=1",
            "$iothub/methods/POST//?$rid=1",
            "$iothub/methods/POST/m/?$rid=",
            "devices/d/messages/devicebound/",
        ] {
            assert_eq!(FromUpstream::parse(other), FromUpstream::Other, "{other}");
        }
    }

    #[test]
    fn requests_are_written_as_the_sdks_write_them() {
        assert_eq!(twin_get("4"), "$iothub/twin/GET/?$rid=4");
        assert_eq!(
            reported_patch("5"),
            "$iothub/twin/PATCH/properties/reported/?$rid=5"
        );
        assert_eq!(method_answer(200, "ab"), "$iothub/methods/res/200/?$rid=ab");
    }

    proptest! {
        #[test]
        fn any_topic_is_classified_without_panicking(topic in "(\\$iothub/)?[a-zA-Z0-9/?&=$#.%-]{0,80}") {
            let _ = FromUpstream::parse(&topic);
        }
    }
}
