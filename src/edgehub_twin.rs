//! The `$edgeHub` module twin's reported properties (protocol spec 4.2): what the hub runs,
//! the last deployment it applied, and its clients.

use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::metrics::StoreState;
use crate::mqtt::session::ClientStatus;

/// The outcome of the last desired properties (deployment) the hub processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredStatus {
    /// The desired `$version` (or the count of deployments applied, when it has none).
    pub version: u64,
    /// 200 when applied, 400 when refused.
    pub code: u16,
    /// Empty on success; on failure names the bad route and why.
    pub description: String,
}

/// The hub's own state as `$edgeHub` reports it.
#[derive(Debug, Default)]
pub struct EdgeHubState {
    last_desired: Mutex<Option<DesiredStatus>>,
}

impl EdgeHubState {
    /// Records the outcome of a deployment.
    pub fn desired_processed(&self, status: DesiredStatus) {
        *self
            .last_desired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(status);
    }

    /// The last outcome recorded.
    pub fn last_desired(&self) -> Option<DesiredStatus> {
        self.last_desired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The reported properties: `schemaVersion`, `version`, `lastDesiredVersion`,
    /// `lastDesiredStatus`, `clients` (leaf devices that went away are not listed).
    pub fn reported(&self, clients: &[ClientStatus]) -> Value {
        let mut out = Map::new();
        out.insert("schemaVersion".to_owned(), json!("1.0"));
        out.insert(
            "version".to_owned(),
            json!({
                "version": env!("CARGO_PKG_VERSION"),
                "build": env!("EDGEHUB_BUILD"),
                "commit": env!("EDGEHUB_COMMIT"),
            }),
        );
        if let Some(status) = self.last_desired() {
            out.insert("lastDesiredVersion".to_owned(), json!(status.version));
            out.insert(
                "lastDesiredStatus".to_owned(),
                json!({"code": status.code, "description": status.description}),
            );
        }
        let mut listed = Map::new();
        for client in clients {
            let is_module = client.client_id.contains('/');
            let entry = match (client.connected, is_module) {
                (true, _) => json!({
                    "status": "Connected",
                    "lastConnectedTimeUtc": client.last_connected.map(timestamp),
                }),
                (false, true) => json!({
                    "status": "Disconnected",
                    "lastDisconnectedTimeUtc": client.last_disconnected.map(timestamp),
                }),
                (false, false) => continue,
            };
            listed.insert(escape_client_id(&client.client_id), entry);
        }
        out.insert("clients".to_owned(), Value::Object(listed));
        Value::Object(out)
    }
}

/// The store's state as the `store` reported property: `state` (`Accepting` or `Refusing`),
/// with the reason (`disk_full`, `quota`, `failure`, `closed`), the start and the count of
/// refusals of the open episode, `episodes` since the hub started, and the store's size and
/// quota state.
pub fn store_reported(state: &StoreState, stats: &store::StoreStats) -> Value {
    let mut out = Map::new();
    let status = if state.refusing.is_some() {
        "Refusing"
    } else {
        "Accepting"
    };
    out.insert("state".to_owned(), json!(status));
    // What the store says of itself: `writable`, `disk_full` (it resumes by itself once space
    // returns) or `failing`.
    out.insert(
        "health".to_owned(),
        json!(crate::metrics::store_state(stats.health)),
    );
    if let Some(reason) = state.refusing {
        out.insert("reason".to_owned(), json!(reason.label()));
        out.insert("sinceUtc".to_owned(), json!(state.since.map(timestamp)));
        out.insert("refusals".to_owned(), json!(state.refusals));
    }
    out.insert("episodes".to_owned(), json!(state.episodes));
    out.insert("diskBytes".to_owned(), json!(stats.disk_bytes));
    out.insert("overQuota".to_owned(), json!(stats.over_quota));
    Value::Object(out)
}

/// Client ids as `clients` keys: `.` → `%2E`, `$` → `%24`, space → `%20` (as the legacy
/// hub), and `#` → `%23`: an id may hold `#`, a property name may not, and upstream would
/// refuse the whole report for it.
pub fn escape_client_id(client_id: &str) -> String {
    client_id
        .replace('.', "%2E")
        .replace('$', "%24")
        .replace(' ', "%20")
        .replace('#', "%23")
}

/// ISO 8601 UTC with milliseconds: `2024-05-01T10:00:00.000Z`.
pub fn timestamp(at: SystemTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from(at)
        .format(&format)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn reported_properties_follow_the_legacy_shape() {
        let state = EdgeHubState::default();
        state.desired_processed(DesiredStatus {
            version: 3,
            code: 400,
            description: "Error parsing route r - bad".to_owned(),
        });
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_714_557_600_123);
        let clients = [
            ClientStatus {
                client_id: "dev.1/filter".into(),
                connected: true,
                last_connected: Some(at),
                last_disconnected: None,
            },
            ClientStatus {
                client_id: "dev1/sensor".into(),
                connected: false,
                last_connected: Some(at),
                last_disconnected: Some(at),
            },
            ClientStatus {
                client_id: "leaf#2".into(),
                connected: true,
                last_connected: Some(at),
                last_disconnected: None,
            },
            ClientStatus {
                client_id: "leaf".into(),
                connected: false,
                last_connected: Some(at),
                last_disconnected: Some(at),
            },
        ];
        let reported = state.reported(&clients);
        assert_eq!(reported["schemaVersion"], "1.0");
        assert_eq!(reported["lastDesiredVersion"], 3);
        assert_eq!(reported["lastDesiredStatus"]["code"], 400);
        assert_eq!(reported["clients"]["dev%2E1/filter"]["status"], "Connected");
        assert_eq!(
            reported["clients"]["dev%2E1/filter"]["lastConnectedTimeUtc"],
            "2024-05-01T10:00:00.123Z"
        );
        assert_eq!(reported["clients"]["dev1/sensor"]["status"], "Disconnected");
        assert!(reported["clients"].get("leaf").is_none());
        assert_eq!(reported["clients"]["leaf%232"]["status"], "Connected");
        assert_eq!(reported["version"]["version"], env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn the_store_state_names_an_open_episode() {
        let stats = store::StoreStats::default();
        let accepting = StoreState {
            refusing: None,
            since: None,
            refusals: 0,
            episodes: 1,
        };
        let reported = store_reported(&accepting, &stats);
        assert_eq!(reported["state"], "Accepting");
        assert!(reported.get("reason").is_none());
        let refusing = StoreState {
            refusing: Some(crate::metrics::RefusalReason::DiskFull),
            since: Some(SystemTime::UNIX_EPOCH),
            refusals: 7,
            episodes: 2,
        };
        let reported = store_reported(&refusing, &stats);
        assert_eq!(reported["state"], "Refusing");
        assert_eq!(reported["reason"], "disk_full");
        assert_eq!(reported["refusals"], 7);
        assert_eq!(reported["sinceUtc"], "1970-01-01T00:00:00.000Z");
    }
}
