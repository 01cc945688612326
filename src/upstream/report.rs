//! The `$edgeHub` reported properties as they go upstream (protocol spec 4.2): as patches that
//! bring what upstream holds to what this hub reports, within upstream's size limits.
//!
//! A reported patch only adds and replaces, unless it says `null`: a client that left this hub
//! (a leaf device that disconnected, or every client of a run before a restart) stays listed
//! upstream until a patch removes it. So, as the legacy hub does at start ("clients": null), the
//! first report on every connection of the `$edgeHub` link resets the report's objects
//! (`clients`, `store`, `upstream`, ...) with `null` and the whole report follows; after that,
//! each report is the difference from the report sent before it (`null` for what went away),
//! and nothing when nothing changed. A report that upstream refuses, or that could not be sent,
//! makes what upstream holds unknown again: the next report starts over the same way.
//!
//! Upstream refuses a report whose section would grow past 32 KiB ([`MAX_SECTION_BYTES`]), and
//! a map of clients grows with every leaf device. The report sent up therefore lists the most
//! recently active clients that fit ([`fit`]: connected ones first, the latest connection
//! first, then the latest disconnections) and counts the others in `clientsOmitted` (`0` when
//! all are listed), so that `lastDesiredStatus` and the rest always get through. The hub's own
//! `$edgeHub` twin (`edgehub twin get '$edgeHub'` here) still lists every client.

use serde_json::{Map, Value};

use crate::twin::{MAX_SECTION_BYTES, serialized_bytes};

/// The reported property that counts the clients left out of `clients` upstream.
pub const CLIENTS_OMITTED: &str = "clientsOmitted";
/// Bytes of the reported section kept free of this hub's report: upstream's `$version`, and
/// properties upstream holds that this hub does not send.
const SLACK: usize = 1024;
/// The most bytes of a reported patch upstream accepts (IoT Hub's limit, as `crate::twin`).
const MAX_PATCH_BYTES: usize = 32 * 1024;
/// The longest string value upstream accepts; longer ones are cut (e.g. a refusal's
/// description that names many bad routes).
const MAX_STRING_BYTES: usize = 4096;

/// What upstream was last sent of the reported properties, and the patches that follow.
#[derive(Debug, Default)]
pub struct ReportSync {
    /// What upstream holds if it accepted every patch sent (objects without `null` members);
    /// `None` when unknown: the next report resets it.
    sent: Option<Map<String, Value>>,
}

impl ReportSync {
    /// The `$edgeHub` link connected (again): what upstream holds is unknown (a patch may have
    /// been lost with the connection, and a restarted hub's clients are gone).
    pub fn connected(&mut self) {
        self.sent = None;
    }

    /// A report was refused by upstream, or could not be handed to the link: the next one
    /// starts over.
    pub fn lost(&mut self) {
        self.sent = None;
    }

    /// The patches, in order, that bring upstream to `reported` (this hub's reported
    /// properties, every client listed): empty when upstream already holds it.
    pub fn patches(&mut self, reported: &Value) -> Vec<Value> {
        let report = fit(reported);
        let patches = match &self.sent {
            Some(sent) => {
                let patch = diff(sent, &report);
                if patch.is_empty() {
                    Vec::new()
                } else if serialized_bytes(&patch) <= MAX_PATCH_BYTES {
                    vec![Value::Object(patch)]
                } else {
                    // Many clients replaced by others: removing them one by one would not fit
                    // in a patch.
                    reset(&report)
                }
            }
            None => reset(&report),
        };
        self.sent = Some(report);
        patches
    }
}

/// The patches that make upstream hold exactly `report`: its objects set to `null`, then the
/// whole report.
fn reset(report: &Map<String, Value>) -> Vec<Value> {
    let wipe: Map<String, Value> = report
        .iter()
        .filter(|(_, value)| value.is_object())
        .map(|(key, _)| (key.clone(), Value::Null))
        .collect();
    vec![Value::Object(wipe), Value::Object(report.clone())]
}

/// `reported` as it goes upstream: `null` members dropped (a patch would read them as
/// deletions), strings cut to what upstream accepts, and `clients` cut to the most recently
/// active clients that keep the section under [`MAX_SECTION_BYTES`], with [`CLIENTS_OMITTED`]
/// counting the others.
#[must_use]
pub fn fit(reported: &Value) -> Map<String, Value> {
    let Value::Object(mut report) = without_nulls(reported) else {
        return Map::new();
    };
    let clients = match report.remove("clients") {
        Some(Value::Object(clients)) => clients,
        _ => Map::new(),
    };
    let total = clients.len();
    report.insert(CLIENTS_OMITTED.to_owned(), Value::from(total));
    report.insert("clients".to_owned(), Value::Object(Map::new()));
    // What the rest takes, with an empty map and the widest count.
    let budget = MAX_SECTION_BYTES.saturating_sub(serialized_bytes(&report) + SLACK);
    let mut ranked: Vec<(String, Value)> = clients.into_iter().collect();
    ranked.sort_by(|(a_id, a), (b_id, b)| recency(b).cmp(&recency(a)).then_with(|| a_id.cmp(b_id)));
    let mut listed = Map::new();
    let mut used = 0;
    for (id, entry) in ranked {
        // `"id":{...},`
        let cost = id.len() + 4 + entry.to_string().len();
        if used + cost > budget {
            break;
        }
        used += cost;
        listed.insert(id, entry);
    }
    report.insert(
        CLIENTS_OMITTED.to_owned(),
        Value::from(total - listed.len()),
    );
    report.insert("clients".to_owned(), Value::Object(listed));
    report
}

/// How recently a `clients` entry was active: connected ones first, then by the time of their
/// last connection or disconnection (ISO 8601 UTC of one format sorts as time does).
fn recency(entry: &Value) -> (bool, &str) {
    let connected = entry["status"] == "Connected";
    let at = if connected {
        &entry["lastConnectedTimeUtc"]
    } else {
        &entry["lastDisconnectedTimeUtc"]
    };
    (connected, at.as_str().unwrap_or(""))
}

/// The merge patch that turns `old` into `new` (RFC 7386): members gone are `null`, objects
/// are compared member by member, anything else that differs is replaced.
fn diff(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut patch = Map::new();
    for key in old.keys().filter(|key| !new.contains_key(*key)) {
        patch.insert(key.clone(), Value::Null);
    }
    for (key, value) in new {
        match (old.get(key), value) {
            (Some(Value::Object(before)), Value::Object(after)) => {
                let inner = diff(before, after);
                if !inner.is_empty() {
                    patch.insert(key.clone(), Value::Object(inner));
                }
            }
            (Some(before), after) if before == after => {}
            _ => {
                patch.insert(key.clone(), value.clone());
            }
        }
    }
    patch
}

/// `value` without `null` object members (at any depth), its strings cut to
/// [`MAX_STRING_BYTES`].
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        Value::String(s) if s.len() > MAX_STRING_BYTES => {
            let mut end = MAX_STRING_BYTES;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            Value::String(s[..end].to_owned())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::twin::Twins;

    const EDGE_HUB: &str = "child-1/$edgeHub";

    /// A connected client entry at second `second` of a minute.
    fn connected(second: u32) -> Value {
        json!({"status": "Connected", "lastConnectedTimeUtc": format!("2026-12-07T04:40:{second:02}.000Z")})
    }

    fn reported(clients: &Value) -> Value {
        json!({
            "schemaVersion": "1.0",
            "lastDesiredVersion": 3,
            "lastDesiredStatus": {"code": 200, "description": ""},
            "clients": clients,
        })
    }

    /// Sends `patches` to a parent's twins as the link does; panics if one is refused.
    fn send(parent: &Twins, patches: &[Value]) {
        for patch in patches {
            let body = patch.to_string();
            match parent.patch_reported(EDGE_HUB, body.as_bytes()) {
                Ok(Ok(_)) => {}
                refused => panic!("the parent refused {patch}: {refused:?}"),
            }
        }
    }

    fn parent_holds(parent: &Twins) -> Value {
        parent.get(EDGE_HUB).unwrap()["reported"].clone()
    }

    #[test]
    fn a_client_that_left_is_removed_upstream_and_a_restart_wipes_the_last_runs_clients() {
        let dir = tempfile::tempdir().unwrap();
        let parent = Twins::new(dir.path().to_owned());
        let mut sync = ReportSync::default();
        sync.connected();
        let both = reported(&json!({"child-1/filter": connected(1), "leaf-9": connected(2)}));
        let first = sync.patches(&both);
        assert_eq!(first[0]["clients"], Value::Null, "{first:?}");
        send(&parent, &first);
        assert_eq!(
            parent_holds(&parent)["clients"]["leaf-9"]["status"],
            "Connected"
        );
        assert_eq!(parent_holds(&parent)[CLIENTS_OMITTED], 0);

        // The leaf disconnects: leaf devices are no longer listed here, and the patch says so.
        let filter_only = reported(&json!({"child-1/filter": connected(1)}));
        let patches = sync.patches(&filter_only);
        assert_eq!(patches, [json!({"clients": {"leaf-9": null}})]);
        send(&parent, &patches);
        let holds = parent_holds(&parent);
        assert!(holds["clients"].get("leaf-9").is_none(), "{holds}");
        assert_eq!(holds["clients"]["child-1/filter"]["status"], "Connected");

        // Nothing changed: nothing to send.
        assert!(sync.patches(&filter_only).is_empty());

        // A restart: the new run has other clients; the old run's are wiped at connection.
        let mut restarted = ReportSync::default();
        restarted.connected();
        send(
            &parent,
            &restarted.patches(&reported(&json!({"child-1/sensor": connected(5)}))),
        );
        let holds = parent_holds(&parent);
        assert_eq!(
            holds["clients"],
            json!({"child-1/sensor": connected(5)}),
            "{holds}"
        );
        assert_eq!(holds["lastDesiredStatus"]["code"], 200);
    }

    #[test]
    fn a_store_that_accepts_again_loses_its_refusal_upstream() {
        let dir = tempfile::tempdir().unwrap();
        let parent = Twins::new(dir.path().to_owned());
        let mut sync = ReportSync::default();
        let mut refusing = reported(&json!({}));
        refusing["store"] = json!({"state": "Refusing", "reason": "disk_full", "refusals": 3});
        send(&parent, &sync.patches(&refusing));
        let mut accepting = reported(&json!({}));
        accepting["store"] = json!({"state": "Accepting", "reason": null});
        send(&parent, &sync.patches(&accepting));
        assert_eq!(
            parent_holds(&parent)["store"],
            json!({"state": "Accepting"})
        );
    }

    #[test]
    fn a_big_client_map_is_cut_to_the_most_recent_clients_and_never_refused() {
        let dir = tempfile::tempdir().unwrap();
        let parent = Twins::new(dir.path().to_owned());
        let mut sync = ReportSync::default();
        // 1,000 leaf devices with long ids: about 230 KB of `clients`.
        let mut clients = Map::new();
        for n in 0..1000u32 {
            let id = format!("{}-{n:04}", "leaf".repeat(30));
            let entry = json!({"status": "Connected", "lastConnectedTimeUtc": format!("2026-12-07T04:{:02}:{:02}.000Z", n / 60, n % 60)});
            clients.insert(id, entry);
        }
        let mut report = reported(&Value::Object(clients.clone()));
        report["lastDesiredStatus"]["description"] = json!("x".repeat(10_000));
        send(&parent, &sync.patches(&report));
        let holds = parent_holds(&parent);
        let listed = holds["clients"].as_object().unwrap();
        let omitted = holds[CLIENTS_OMITTED].as_u64().unwrap();
        assert!(listed.len() > 50, "{} listed", listed.len());
        assert_eq!(listed.len() as u64 + omitted, 1000);
        // The most recent ones are listed.
        assert!(listed.contains_key(&format!("{}-0999", "leaf".repeat(30))));
        assert!(!listed.contains_key(&format!("{}-0000", "leaf".repeat(30))));
        assert_eq!(
            holds["lastDesiredStatus"]["description"]
                .as_str()
                .unwrap()
                .len(),
            MAX_STRING_BYTES
        );

        // Every client replaced by another 1,000: still accepted, the old ones gone.
        let mut others = Map::new();
        for n in 0..1000u32 {
            let id = format!("{}-{n:04}", "next".repeat(30));
            others.insert(id, connected(n % 60));
        }
        let mut report = reported(&Value::Object(others));
        report["lastDesiredVersion"] = json!(4);
        send(&parent, &sync.patches(&report));
        let holds = parent_holds(&parent);
        assert_eq!(holds["lastDesiredVersion"], 4);
        assert!(
            holds["clients"]
                .as_object()
                .unwrap()
                .keys()
                .all(|id| id.starts_with("next")),
            "{holds}"
        );
    }

    #[test]
    fn connected_clients_rank_before_disconnected_ones() {
        let disconnected = json!({"status": "Disconnected", "lastDisconnectedTimeUtc": "2026-12-07T05:00:00.000Z"});
        assert!(recency(&connected(1)) > recency(&disconnected));
        assert!(recency(&connected(2)) > recency(&connected(1)));
    }

    #[test]
    fn a_lost_report_starts_over_with_a_reset() {
        let mut sync = ReportSync::default();
        let report = reported(&json!({"leaf-1": connected(1)}));
        assert_eq!(sync.patches(&report).len(), 2);
        assert!(sync.patches(&report).is_empty());
        sync.lost();
        let again = sync.patches(&report);
        assert_eq!(again.len(), 2);
        assert_eq!(
            again[0],
            json!({"lastDesiredStatus": null, "clients": null})
        );
    }
}
