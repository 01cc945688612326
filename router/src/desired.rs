//! The routing part of `$edgeHub` desired properties (protocol spec 4.1): `schemaVersion`,
//! `routes` and `storeAndForwardConfiguration.timeToLiveSecs`.

use serde_json::{Map, Value};

use crate::error::{ConfigError, ConfigErrors};
use crate::table::{DEFAULT_PRIORITY, RouteSpec, RouteTable, Ttl};

/// The global TTL when the configuration names none (the documented default).
pub const DEFAULT_TTL_SECS: i64 = 7200;

/// What the route engine takes from `$edgeHub` desired properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeHubRoutes {
    /// `schemaVersion`, e.g. `1.1`.
    pub schema_version: String,
    /// The routes, in document order.
    pub routes: Vec<RouteSpec>,
    /// `storeAndForwardConfiguration.timeToLiveSecs`: negative means never.
    pub time_to_live_secs: i64,
}

impl EdgeHubRoutes {
    /// Reads the desired properties, reporting every problem at once.
    ///
    /// # Errors
    ///
    /// Every malformed entry, each route named.
    pub fn from_desired(desired: &Value) -> Result<Self, ConfigErrors> {
        let doc = |m: &str| ConfigErrors(vec![ConfigError::Document(m.to_owned())]);
        let desired = desired
            .as_object()
            .ok_or_else(|| doc("the $edgeHub desired properties must be a JSON object"))?;
        let version = desired
            .get("schemaVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| doc("schemaVersion is required (a string such as \"1.1\")"))?;
        let minor = parse_version(version).ok_or_else(|| {
            doc(&format!(
                "schemaVersion '{version}' is not supported (expected 1.0, 1.1, 1.2 or 1.3)"
            ))
        })?;
        let mut errors = Vec::new();
        let routes = match desired.get("routes") {
            Some(Value::Object(map)) => route_specs(map, minor, &mut errors),
            None | Some(Value::Null) if minor == 0 => Vec::new(),
            None | Some(Value::Null) => {
                errors.push(ConfigError::Document(format!(
                    "routes is required with schemaVersion {version}"
                )));
                Vec::new()
            }
            Some(_) => {
                errors.push(ConfigError::Document(
                    "routes must be a JSON object".to_owned(),
                ));
                Vec::new()
            }
        };
        let time_to_live_secs = match desired.get("storeAndForwardConfiguration") {
            Some(Value::Object(sf)) => match sf.get("timeToLiveSecs") {
                None | Some(Value::Null) => DEFAULT_TTL_SECS,
                Some(v) => v.as_i64().unwrap_or_else(|| {
                    errors.push(ConfigError::Document(
                        "storeAndForwardConfiguration.timeToLiveSecs must be an integer".to_owned(),
                    ));
                    DEFAULT_TTL_SECS
                }),
            },
            None | Some(Value::Null) if minor == 0 => DEFAULT_TTL_SECS,
            _ => {
                errors.push(ConfigError::Document(format!(
                    "storeAndForwardConfiguration is required (an object) with schemaVersion {version}"
                )));
                DEFAULT_TTL_SECS
            }
        };
        if errors.is_empty() {
            Ok(Self {
                schema_version: version.to_owned(),
                routes,
                time_to_live_secs,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Compiles the routes into a table.
    ///
    /// # Errors
    ///
    /// Every route that does not load, by name.
    pub fn table(&self) -> Result<RouteTable, ConfigErrors> {
        RouteTable::new(&self.routes, Ttl::from_global_secs(self.time_to_live_secs))
    }
}

/// `1.x` with x in 0..=3 gives x.
fn parse_version(version: &str) -> Option<u32> {
    let mut parts = version.trim().split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    (major == 1 && minor <= 3 && parts.all(|p| p.parse::<u32>().is_ok())).then_some(minor)
}

fn route_specs(
    map: &Map<String, Value>,
    minor: u32,
    errors: &mut Vec<ConfigError>,
) -> Vec<RouteSpec> {
    let mut specs = Vec::new();
    for (name, value) in map {
        let mut bad = |reason: String| {
            errors.push(ConfigError::RouteSpec {
                name: name.clone(),
                reason,
            });
        };
        if name.trim().is_empty() {
            bad("a route name must not be empty".to_owned());
            continue;
        }
        let (text, priority, ttl_secs) = match value {
            Value::String(text) => (text.clone(), DEFAULT_PRIORITY, 0),
            Value::Object(obj) if minor >= 1 => {
                let Some(text) = obj.get("route").and_then(Value::as_str) else {
                    bad("\"route\" (a string) is required".to_owned());
                    continue;
                };
                let priority = match obj.get("priority") {
                    None | Some(Value::Null) => DEFAULT_PRIORITY,
                    Some(p) => match p.as_u64().filter(|p| *p <= 9) {
                        Some(p) => u32::try_from(p).expect("at most 9"),
                        None => {
                            bad(format!(
                                "priority {p} is invalid: it must be an integer from 0 to 9"
                            ));
                            continue;
                        }
                    },
                };
                let ttl_secs = match obj.get("timeToLiveSecs") {
                    None | Some(Value::Null) => 0,
                    Some(t) => match t.as_u64().and_then(|t| u32::try_from(t).ok()) {
                        Some(t) => t,
                        None => {
                            bad(format!(
                                "timeToLiveSecs {t} is invalid: it must be a non-negative 32-bit integer"
                            ));
                            continue;
                        }
                    },
                };
                (text.to_owned(), priority, ttl_secs)
            }
            Value::Object(_) => {
                bad("schemaVersion 1.0 allows only route strings".to_owned());
                continue;
            }
            other => {
                bad(format!(
                    "a route must be a string or an object, not {other}"
                ));
                continue;
            }
        };
        if text.trim().is_empty() {
            if minor >= 1 {
                bad("the route is empty".to_owned());
            }
            continue;
        }
        specs.push(RouteSpec {
            name: name.clone(),
            text,
            priority,
            ttl_secs,
        });
    }
    specs
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn schema_1_1_reads_strings_and_objects() {
        let routes = EdgeHubRoutes::from_desired(&json!({
            "schemaVersion": "1.1",
            "routes": {
                "a": "FROM /messages/* INTO $upstream",
                "b": {"route": "FROM /messages/modules/m/* INTO $upstream", "priority": 0, "timeToLiveSecs": 60}
            },
            "storeAndForwardConfiguration": {"timeToLiveSecs": -1}
        }))
        .unwrap();
        assert_eq!(routes.routes.len(), 2);
        assert_eq!(routes.routes[0].priority, DEFAULT_PRIORITY);
        assert_eq!(
            (routes.routes[1].priority, routes.routes[1].ttl_secs),
            (0, 60)
        );
        assert_eq!(Ttl::from_global_secs(routes.time_to_live_secs), Ttl::Never);
        assert!(routes.table().is_ok());
    }

    #[test]
    fn schema_1_0_skips_empty_routes_and_refuses_objects() {
        let ok = EdgeHubRoutes::from_desired(&json!({
            "schemaVersion": "1.0",
            "routes": {"a": "  ", "b": "FROM /messages INTO $upstream"}
        }))
        .unwrap();
        assert_eq!(ok.routes.len(), 1);
        assert_eq!(ok.time_to_live_secs, DEFAULT_TTL_SECS);
        assert!(
            EdgeHubRoutes::from_desired(&json!({
                "schemaVersion": "1.0",
                "routes": {"a": {"route": "FROM /messages INTO $upstream"}}
            }))
            .is_err()
        );
    }

    #[test]
    fn every_bad_route_is_named() {
        let routes = EdgeHubRoutes::from_desired(&json!({
            "schemaVersion": "1.2",
            "routes": {
                "good": "FROM /messages INTO $upstream",
                "badSyntax": "FROM /messages WHERE x == 1 INTO $upstream",
                "badSink": "FROM /messages INTO $cloud",
                "badPriority": {"route": "FROM /messages INTO $upstream", "priority": 10}
            },
            "storeAndForwardConfiguration": {}
        }));
        let spec_errors = routes.unwrap_err().to_string();
        assert!(spec_errors.contains("badPriority"), "{spec_errors}");
        let routes = EdgeHubRoutes::from_desired(&json!({
            "schemaVersion": "1.2",
            "routes": {
                "good": "FROM /messages INTO $upstream",
                "badSyntax": "FROM /messages WHERE x == 1 INTO $upstream",
                "badSink": "FROM /messages INTO $cloud"
            },
            "storeAndForwardConfiguration": {}
        }))
        .unwrap();
        let message = routes.table().unwrap_err().to_string();
        assert!(
            message.contains("Error parsing route badSyntax"),
            "{message}"
        );
        assert!(message.contains("Error parsing route badSink"), "{message}");
        assert!(!message.contains("good"), "{message}");
    }

    #[test]
    fn unsupported_schema_versions_are_refused() {
        for version in ["2.0", "1.4", "x", ""] {
            assert!(
                EdgeHubRoutes::from_desired(&json!({"schemaVersion": version, "routes": {}}))
                    .is_err()
            );
        }
    }
}
