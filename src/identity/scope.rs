//! The device scope of a child edge device (nested deployments, spec 6.2), in the JSON of the
//! legacy API `POST /devices/{actor}/modules/$edgeHub/devicesAndModulesInTargetDeviceScope`
//! (edgeHub's `DeviceScopeController`, IoT Hub's identity shapes).
//!
//! - A parent answers with [`answer`]: the target edge device, its modules, and every device
//!   and module below it, transitively (a grandchild edge device, its modules and its leaf
//!   devices), with their keys. The actor (a child's `$edgeHub`) may ask for its own scope or
//!   for that of an edge device below it, nothing else.
//! - A child turns the answer into registry identities with [`learn`].
//!
//! The tree comes from the registry: a device's parent is the edge device it was registered
//! under (`--parent`), or this hub's own device when it has none. A scope is named
//! `ms-azure-iot-edge://{deviceId}-{generationId}`, as IoT Hub names it; the generation id is
//! derived from the device id (the registry keeps none), so a scope name is stable.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::id::{EDGE_HUB, is_system_module, validate_device_id, validate_module_id};
use super::{ClientIdentity, Identity, Origin, SymmetricKey};

/// The `api-version` a child sends (the legacy hub's nested API version).
pub const API_VERSION: &str = "2020-06-30-preview";

/// The most identities in one page of an answer (the legacy client's largest batch).
pub const MAX_PAGE_SIZE: usize = 1000;

/// How deep a tree of edge devices may be: deeper chains are not followed (a guard against a
/// cycle in a hand-edited registry).
const MAX_DEPTH: usize = 16;

/// The body of a scope request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeRequest {
    /// `target;...`: the first hop (its device id, before any `/`) is the edge device whose
    /// scope is asked for.
    pub auth_chain: String,
    /// The most identities per page; 0 or absent: [`MAX_PAGE_SIZE`], larger: capped to it.
    #[serde(default)]
    pub page_size: Option<u32>,
    /// Where the previous page ended (the answer's `continuationLink`); empty or absent: the
    /// first page.
    #[serde(default)]
    pub continuation_link: Option<String>,
}

/// An answer: one page of the devices and modules in the target's scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeResult {
    /// Devices, IoT Hub's device JSON.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub devices: Vec<ScopeDevice>,
    /// Modules, IoT Hub's module JSON.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub modules: Vec<ScopeModule>,
    /// What to send as `continuationLink` for the next page; `None` on the last page.
    #[serde(default)]
    pub continuation_link: Option<String>,
}

/// A device of a scope answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeDevice {
    /// The device id.
    pub device_id: String,
    /// IoT Hub's generation id.
    #[serde(default)]
    pub generation_id: String,
    /// `enabled` or `disabled`; a disabled device is not learned.
    #[serde(default = "enabled")]
    pub status: String,
    /// Its keys.
    pub authentication: Authentication,
    /// Whether it is an edge device.
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    /// An edge device's own scope; a leaf device's parent's scope.
    #[serde(default)]
    pub device_scope: Option<String>,
    /// The scope of the edge device it is registered under.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub parent_scopes: Vec<String>,
}

/// A module of a scope answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScopeModule {
    /// The module id.
    pub module_id: String,
    /// Its device.
    pub device_id: String,
    /// IoT Hub's generation id.
    #[serde(default)]
    pub generation_id: String,
    /// Its keys.
    pub authentication: Authentication,
}

/// IoT Hub's `authentication` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// `sas`, `selfSigned`, `certificateAuthority` or `none`; only `sas` is learned.
    #[serde(rename = "type")]
    pub kind: String,
    /// The keys, for `sas`.
    #[serde(default)]
    pub symmetric_key: Option<SymmetricKeys>,
    /// The thumbprints, for `selfSigned` (always empty here).
    #[serde(default)]
    pub x509_thumbprint: Option<X509Thumbprint>,
}

/// IoT Hub's `symmetricKey` object: base64 keys.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymmetricKeys {
    /// The primary key.
    pub primary_key: Option<String>,
    /// The secondary key.
    pub secondary_key: Option<String>,
}

impl std::fmt::Debug for SymmetricKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SymmetricKeys(<redacted>)")
    }
}

/// IoT Hub's `x509Thumbprint` object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Thumbprint {
    /// The primary thumbprint.
    pub primary_thumbprint: Option<String>,
    /// The secondary thumbprint.
    pub secondary_thumbprint: Option<String>,
}

/// IoT Hub's `capabilities` object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Whether the device is an edge device.
    #[serde(default)]
    pub iot_edge: bool,
}

/// Why a scope is not served.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScopeError {
    /// The actor is not an edge hub: only a `$edgeHub` reads a device scope (403).
    #[error("{0} is not an edge hub; only $edgeHub reads a device scope")]
    NotAnEdgeHub(ClientIdentity),
    /// The target is not the actor's edge device or an edge device below it (403).
    #[error("{target} is not in the scope of edge device {actor}")]
    OutOfScope {
        /// The actor's edge device.
        actor: String,
        /// The device asked for.
        target: String,
    },
    /// The `authChain` names no valid device (400).
    #[error("authChain {0:?} does not start with a valid device id")]
    AuthChain(String),
    /// The `continuationLink` is not one this hub handed out (400).
    #[error("continuationLink {0:?} is not one this hub handed out")]
    ContinuationLink(String),
}

/// The scope name of edge device `device_id`.
#[must_use]
pub fn scope_name(device_id: &str) -> String {
    format!(
        "ms-azure-iot-edge://{device_id}-{}",
        generation_id(device_id)
    )
}

/// A generation id derived from the id: stable across restarts and rotations.
fn generation_id(id: &str) -> String {
    let digest = Sha256::digest(format!("edgehub generation\n{id}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    // IoT Hub's generation ids are 18 decimal digits.
    format!(
        "{:018}",
        u64::from_be_bytes(bytes) % 1_000_000_000_000_000_000
    )
}

/// The registry as a tree of devices under this hub's device.
struct Tree<'a> {
    this_device: &'a str,
    devices: BTreeMap<&'a str, &'a Identity>,
    /// Modules by device id.
    modules: BTreeMap<&'a str, Vec<&'a Identity>>,
    /// Devices by the device they are registered under.
    children: BTreeMap<&'a str, Vec<&'a str>>,
}

impl<'a> Tree<'a> {
    fn new(identities: &'a [Identity], this_device: &'a str) -> Self {
        let mut tree = Self {
            this_device,
            devices: BTreeMap::new(),
            modules: BTreeMap::new(),
            children: BTreeMap::new(),
        };
        for identity in identities {
            let device = identity.id.device_id.as_str();
            if identity.is_module() {
                tree.modules.entry(device).or_default().push(identity);
            } else {
                tree.devices.insert(device, identity);
                let parent = identity.parent.as_deref().unwrap_or(this_device);
                tree.children.entry(parent).or_default().push(device);
            }
        }
        tree
    }

    fn is_edge(&self, device: &str) -> bool {
        device == self.this_device
            || self.modules.get(device).is_some_and(|m| {
                m.iter()
                    .any(|i| i.id.module_id.as_deref() == Some(EDGE_HUB))
            })
    }

    fn parent(&self, device: &str) -> &'a str {
        self.devices
            .get(device)
            .and_then(|d| d.parent.as_deref())
            .unwrap_or(self.this_device)
    }

    /// Whether `target` is `actor` or below it.
    fn is_within(&self, target: &str, actor: &str) -> bool {
        let mut current = target;
        for _ in 0..=MAX_DEPTH {
            if current == actor {
                return true;
            }
            if current == self.this_device || !self.devices.contains_key(current) {
                return false;
            }
            current = self.parent(current);
        }
        false
    }

    /// `target`, its modules and everything below it, sorted by identity.
    fn subtree(&self, target: &'a str) -> Vec<&'a Identity> {
        let mut found: BTreeMap<&ClientIdentity, &Identity> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut level = vec![target];
        for _ in 0..=MAX_DEPTH {
            let mut next = Vec::new();
            for device in level {
                if !seen.insert(device) {
                    continue;
                }
                if let Some(identity) = self.devices.get(device) {
                    found.insert(&identity.id, identity);
                }
                for module in self.modules.get(device).into_iter().flatten() {
                    found.insert(&module.id, module);
                }
                if self.is_edge(device) {
                    next.extend(self.children.get(device).into_iter().flatten().copied());
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        found.into_values().collect()
    }

    fn device_json(&self, identity: &Identity) -> ScopeDevice {
        let id = identity.id.device_id.as_str();
        let parent_scope = scope_name(self.parent(id));
        let edge = self.is_edge(id);
        ScopeDevice {
            device_id: id.to_owned(),
            generation_id: generation_id(id),
            status: enabled(),
            authentication: Authentication::sas(identity),
            capabilities: Some(Capabilities { iot_edge: edge }),
            device_scope: Some(if edge {
                scope_name(id)
            } else {
                parent_scope.clone()
            }),
            parent_scopes: vec![parent_scope],
        }
    }
}

impl Authentication {
    fn sas(identity: &Identity) -> Self {
        Self {
            kind: "sas".to_owned(),
            symmetric_key: Some(SymmetricKeys {
                primary_key: Some(identity.primary_key.to_base64()),
                secondary_key: Some(identity.secondary_key.to_base64()),
            }),
            x509_thumbprint: Some(X509Thumbprint::default()),
        }
    }

    /// The two keys, when this is SAS authentication with two base64 keys.
    fn keys(&self) -> Option<(SymmetricKey, SymmetricKey)> {
        if !self.kind.eq_ignore_ascii_case("sas") {
            return None;
        }
        let keys = self.symmetric_key.as_ref()?;
        let decode = |key: &Option<String>| {
            key.as_deref()
                .filter(|k| !k.is_empty())
                .and_then(|k| SymmetricKey::from_base64(k).ok())
        };
        Some((decode(&keys.primary_key)?, decode(&keys.secondary_key)?))
    }
}

/// The page of the scope of the edge device named first in `request.auth_chain` that this hub
/// (device `this_device`, with `identities`) serves to `actor`.
///
/// # Errors
///
/// The actor is not a `$edgeHub`, the target is not the actor's device or an edge device
/// below it, or the request is malformed.
pub fn answer(
    identities: &[Identity],
    this_device: &str,
    actor: &ClientIdentity,
    request: &ScopeRequest,
) -> Result<ScopeResult, ScopeError> {
    if actor.module_id.as_deref() != Some(EDGE_HUB) {
        return Err(ScopeError::NotAnEdgeHub(actor.clone()));
    }
    let target = target_of(&request.auth_chain)?;
    let tree = Tree::new(identities, this_device);
    if !tree.is_edge(target) || !tree.is_within(target, &actor.device_id) {
        return Err(ScopeError::OutOfScope {
            actor: actor.device_id.clone(),
            target: target.to_owned(),
        });
    }
    let offset = match request.continuation_link.as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(link) => link
            .parse::<usize>()
            .map_err(|_| ScopeError::ContinuationLink(link.chars().take(64).collect()))?,
    };
    let page_size = match request.page_size {
        None | Some(0) => MAX_PAGE_SIZE,
        Some(n) => usize::try_from(n).map_or(MAX_PAGE_SIZE, |n| n.min(MAX_PAGE_SIZE)),
    };
    let all = tree.subtree(target);
    let end = offset.saturating_add(page_size).min(all.len());
    let mut result = ScopeResult {
        continuation_link: (end < all.len()).then(|| end.to_string()),
        ..ScopeResult::default()
    };
    for identity in all.get(offset..end).unwrap_or_default() {
        match &identity.id.module_id {
            Some(module_id) => result.modules.push(ScopeModule {
                module_id: module_id.clone(),
                device_id: identity.id.device_id.clone(),
                generation_id: generation_id(&identity.id.to_string()),
                authentication: Authentication::sas(identity),
            }),
            None => result.devices.push(tree.device_json(identity)),
        }
    }
    Ok(result)
}

/// The device id that the first hop of `auth_chain` names.
fn target_of(auth_chain: &str) -> Result<&str, ScopeError> {
    let first = auth_chain.split(';').next().unwrap_or_default().trim();
    let device = first.split('/').next().unwrap_or_default();
    validate_device_id(device)
        .map_err(|_| ScopeError::AuthChain(auth_chain.chars().take(256).collect()))?;
    Ok(device)
}

/// What a child learned from its scope: the identities to keep, and what it left out.
#[derive(Debug, Default)]
pub struct Learned {
    /// Identities for the registry (marked [`Origin::Upstream`]).
    pub identities: Vec<Identity>,
    /// What was left out, and why (for the log).
    pub skipped: Vec<(String, &'static str)>,
}

/// Turns the answer to this hub's scope request (all pages) into identities for this hub,
/// device `this_device`: its own modules (but its own device, `$edgeHub` and `$edgeAgent`,
/// which this hub does not serve), its leaf devices, and the edge devices below it with their
/// modules and leaf devices (a device under this hub gets no parent, one under an edge device
/// below gets that device). Identities that are disabled, not SAS, have an invalid id or hang
/// under no known edge device are skipped.
#[must_use]
pub fn learn(answer: &ScopeResult, this_device: &str) -> Learned {
    let mut learned = Learned::default();
    let own_scope = answer
        .devices
        .iter()
        .find(|d| d.device_id == this_device)
        .and_then(|d| d.device_scope.clone())
        .unwrap_or_else(|| scope_name(this_device));
    // The edge devices of the answer that come with their $edgeHub: only those can act for
    // the devices below them.
    let edge_hubs: BTreeSet<&str> = answer
        .modules
        .iter()
        .filter(|m| m.module_id == EDGE_HUB)
        .map(|m| m.device_id.as_str())
        .collect();
    let edge_by_scope: BTreeMap<&str, &str> = answer
        .devices
        .iter()
        .filter(|d| {
            d.capabilities.is_some_and(|c| c.iot_edge) && edge_hubs.contains(d.device_id.as_str())
        })
        .filter_map(|d| Some((d.device_scope.as_deref()?, d.device_id.as_str())))
        .collect();
    let mut devices = BTreeSet::new();
    for device in &answer.devices {
        let id = &device.device_id;
        if id == this_device {
            continue;
        }
        let skip = |why| (id.clone(), why);
        if validate_device_id(id).is_err() {
            learned.skipped.push(skip("invalid device id"));
            continue;
        }
        if !device.status.eq_ignore_ascii_case("enabled") {
            learned.skipped.push(skip("disabled"));
            continue;
        }
        let Some((primary_key, secondary_key)) = device.authentication.keys() else {
            learned.skipped.push(skip("not SAS with two keys"));
            continue;
        };
        let parent_scope = device
            .parent_scopes
            .first()
            .or(device.device_scope.as_ref())
            .map(String::as_str);
        let parent = match parent_scope {
            Some(scope) if scope == own_scope => None,
            Some(scope) => match edge_by_scope.get(scope) {
                Some(&parent) if parent != this_device && parent != id => Some(parent.to_owned()),
                _ => {
                    learned.skipped.push(skip("under no known edge device"));
                    continue;
                }
            },
            None => None,
        };
        devices.insert(id.as_str());
        learned.identities.push(Identity {
            id: ClientIdentity::device(id.clone()),
            primary_key,
            secondary_key,
            parent,
            origin: Origin::Upstream,
        });
    }
    for module in &answer.modules {
        let id = ClientIdentity::module(module.device_id.clone(), module.module_id.clone());
        let skip = |why| (id.to_string(), why);
        let (device, module_id) = (module.device_id.as_str(), module.module_id.as_str());
        if device == this_device && is_system_module(module_id) {
            continue;
        }
        if validate_device_id(device).is_err() || validate_module_id(module_id).is_err() {
            learned.skipped.push(skip("invalid id"));
            continue;
        }
        if device != this_device && !(devices.contains(device) && edge_hubs.contains(device)) {
            learned
                .skipped
                .push(skip("not a module of a known edge device"));
            continue;
        }
        let Some((primary_key, secondary_key)) = module.authentication.keys() else {
            learned.skipped.push(skip("not SAS with two keys"));
            continue;
        };
        learned.identities.push(Identity {
            id,
            primary_key,
            secondary_key,
            parent: None,
            origin: Origin::Upstream,
        });
    }
    learned
}

fn enabled() -> String {
    "enabled".to_owned()
}

/// A list that may be `null` (IoT Hub's `Required.AllowNull`).
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityRegistry;

    /// The parent `parent` with: child-1 (leaf-9, module filter, and the edge device grand
    /// below it, with leaf-g), child-2 (leaf-2), and its own leaf and module.
    fn parent() -> (tempfile::TempDir, Vec<Identity>) {
        let dir = tempfile::tempdir().unwrap();
        let registry = IdentityRegistry::open(dir.path(), "parent").unwrap();
        registry.add_edge_device("child-1", None).unwrap();
        registry.add_edge_device("child-2", None).unwrap();
        registry.add_edge_device("grand", Some("child-1")).unwrap();
        registry.add_device_under("leaf-9", "child-1").unwrap();
        registry.add_device_under("leaf-2", "child-2").unwrap();
        registry.add_device_under("leaf-g", "grand").unwrap();
        registry.add_module_of("child-1", "filter").unwrap();
        registry.add_device("own-leaf").unwrap();
        registry.add_module("own-module").unwrap();
        let identities = registry.list().unwrap();
        (dir, identities)
    }

    fn request(chain: &str) -> ScopeRequest {
        ScopeRequest {
            auth_chain: chain.to_owned(),
            page_size: None,
            continuation_link: None,
        }
    }

    fn edge_hub(device: &str) -> ClientIdentity {
        ClientIdentity::module(device, EDGE_HUB)
    }

    fn ids(result: &ScopeResult) -> Vec<String> {
        let mut ids: Vec<String> = result
            .devices
            .iter()
            .map(|d| d.device_id.clone())
            .chain(
                result
                    .modules
                    .iter()
                    .map(|m| format!("{}/{}", m.device_id, m.module_id)),
            )
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_child_gets_its_modules_and_everything_below_it_transitively() {
        let (_dir, identities) = parent();
        let result = answer(
            &identities,
            "parent",
            &edge_hub("child-1"),
            &request("child-1;parent"),
        )
        .unwrap();
        assert_eq!(
            ids(&result),
            [
                "child-1",
                "child-1/$edgeHub",
                "child-1/filter",
                "grand",
                "grand/$edgeHub",
                "leaf-9",
                "leaf-g"
            ]
        );
        assert_eq!(result.continuation_link, None);
        let device = |id: &str| result.devices.iter().find(|d| d.device_id == id).unwrap();
        let child = device("child-1");
        assert_eq!(child.capabilities, Some(Capabilities { iot_edge: true }));
        assert_eq!(child.device_scope, Some(scope_name("child-1")));
        assert_eq!(child.parent_scopes, [scope_name("parent")]);
        let grand = device("grand");
        assert_eq!(grand.device_scope, Some(scope_name("grand")));
        assert_eq!(grand.parent_scopes, [scope_name("child-1")]);
        let leaf = device("leaf-9");
        assert_eq!(leaf.capabilities, Some(Capabilities { iot_edge: false }));
        assert_eq!(leaf.device_scope, Some(scope_name("child-1")));
        assert_eq!(leaf.parent_scopes, [scope_name("child-1")]);
        let registered = identities
            .iter()
            .find(|i| i.id.device_id == "leaf-9")
            .unwrap();
        assert_eq!(
            leaf.authentication.keys(),
            Some((
                registered.primary_key.clone(),
                registered.secondary_key.clone()
            ))
        );
        assert_eq!(leaf.status, "enabled");
        assert_eq!(generation_id("leaf-9").len(), 18);
    }

    #[test]
    fn the_answer_has_iot_hubs_json_shapes() {
        let (_dir, identities) = parent();
        let result = answer(&identities, "parent", &edge_hub("grand"), &request("grand")).unwrap();
        let json = serde_json::to_value(&result).unwrap();
        let leaf = &json["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["deviceId"] == "leaf-g")
            .unwrap();
        for field in ["generationId", "status", "deviceScope", "parentScopes"] {
            assert!(leaf.get(field).is_some(), "{field} in {leaf}");
        }
        assert_eq!(leaf["authentication"]["type"], "sas");
        assert!(leaf["authentication"]["symmetricKey"]["primaryKey"].is_string());
        assert!(leaf["authentication"]["symmetricKey"]["secondaryKey"].is_string());
        assert_eq!(leaf["capabilities"]["iotEdge"], false);
        let module = &json["modules"][0];
        assert_eq!(module["moduleId"], "$edgeHub");
        assert_eq!(module["deviceId"], "grand");
        assert!(json.get("continuationLink").is_some(), "{json}");
    }

    #[test]
    fn a_child_may_ask_for_an_edge_device_below_it_only() {
        let (_dir, identities) = parent();
        let below = answer(
            &identities,
            "parent",
            &edge_hub("child-1"),
            &request("grand"),
        )
        .unwrap();
        assert_eq!(ids(&below), ["grand", "grand/$edgeHub", "leaf-g"]);
        for (actor, chain) in [
            ("child-1", "child-2"),
            ("child-2", "child-1;parent"),
            ("grand", "child-1"),
            ("child-1", "parent"),
            ("child-1", "own-leaf"),
            ("child-1", "leaf-9"),
            ("child-1", "nobody"),
            ("nobody", "nobody"),
        ] {
            assert!(
                matches!(
                    answer(&identities, "parent", &edge_hub(actor), &request(chain)),
                    Err(ScopeError::OutOfScope { .. })
                ),
                "{actor} asking for {chain}"
            );
        }
        let module = ClientIdentity::module("child-1", "filter");
        assert_eq!(
            answer(&identities, "parent", &module, &request("child-1")),
            Err(ScopeError::NotAnEdgeHub(module))
        );
        let leaf = ClientIdentity::device("child-1");
        assert!(matches!(
            answer(&identities, "parent", &leaf, &request("child-1")),
            Err(ScopeError::NotAnEdgeHub(_))
        ));
    }

    #[test]
    fn the_target_is_the_device_of_the_chains_first_hop() {
        assert_eq!(target_of("child-1"), Ok("child-1"));
        assert_eq!(target_of(" child-1/$edgeHub;parent"), Ok("child-1"));
        for bad in ["", ";parent", "/m", "a b;c", &"d".repeat(129)] {
            assert!(
                matches!(target_of(bad), Err(ScopeError::AuthChain(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pages_follow_continuation_links_to_the_whole_answer() {
        let (_dir, identities) = parent();
        let actor = edge_hub("child-1");
        let whole = answer(&identities, "parent", &actor, &request("child-1")).unwrap();
        let mut paged = ScopeResult::default();
        let mut link = None;
        let mut pages = 0;
        loop {
            let page = answer(
                &identities,
                "parent",
                &actor,
                &ScopeRequest {
                    auth_chain: "child-1".to_owned(),
                    page_size: Some(2),
                    continuation_link: link,
                },
            )
            .unwrap();
            assert!(page.devices.len() + page.modules.len() <= 2);
            paged.devices.extend(page.devices);
            paged.modules.extend(page.modules);
            pages += 1;
            link = page.continuation_link;
            if link.is_none() {
                break;
            }
        }
        assert_eq!(pages, 4);
        assert_eq!(ids(&paged), ids(&whole));
        let beyond = ScopeRequest {
            continuation_link: Some("1000".to_owned()),
            ..request("child-1")
        };
        let empty = answer(&identities, "parent", &actor, &beyond).unwrap();
        assert!(empty.devices.is_empty() && empty.modules.is_empty());
        for bad in ["x", "-1", "99999999999999999999999"] {
            let request = ScopeRequest {
                continuation_link: Some(bad.to_owned()),
                ..request("child-1")
            };
            assert!(matches!(
                answer(&identities, "parent", &actor, &request),
                Err(ScopeError::ContinuationLink(_))
            ));
        }
    }

    #[test]
    fn requests_parse_as_the_legacy_client_sends_them() {
        let legacy: ScopeRequest = serde_json::from_str(
            r#"{"pageSize": 1000, "continuationLink": "", "authChain": "child-1;parent"}"#,
        )
        .unwrap();
        assert_eq!(legacy.auth_chain, "child-1;parent");
        assert_eq!(legacy.page_size, Some(1000));
        let minimal: ScopeRequest = serde_json::from_str(r#"{"authChain": "c"}"#).unwrap();
        assert_eq!(minimal, request("c"));
        for bad in [
            r#"{"pageSize": 10}"#,
            r#"{"authChain": 5}"#,
            r#"{"authChain": "c", "pageSize": -1}"#,
            r#"{"authChain": "c", "pageSize": 1.5}"#,
            "[]",
            "",
        ] {
            assert!(serde_json::from_str::<ScopeRequest>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_child_learns_its_scope_from_the_answer() {
        let (_dir, identities) = parent();
        let result = answer(
            &identities,
            "parent",
            &edge_hub("child-1"),
            &request("child-1"),
        )
        .unwrap();
        // Through the wire, as the child reads it.
        let wire: ScopeResult =
            serde_json::from_str(&serde_json::to_string(&result).unwrap()).unwrap();
        let learned = learn(&wire, "child-1");
        assert!(learned.skipped.is_empty(), "{:?}", learned.skipped);
        let mut got: Vec<(String, Option<String>)> = learned
            .identities
            .iter()
            .map(|i| (i.id.to_string(), i.parent.clone()))
            .collect();
        got.sort();
        let expected: Vec<(String, Option<String>)> = [
            ("child-1/filter", None),
            ("grand", None),
            ("grand/$edgeHub", None),
            ("leaf-9", None),
            ("leaf-g", Some("grand")),
        ]
        .into_iter()
        .map(|(id, parent)| (id.to_owned(), parent.map(str::to_owned)))
        .collect();
        assert_eq!(got, expected);
        for identity in &learned.identities {
            let original = identities.iter().find(|i| i.id == identity.id).unwrap();
            assert_eq!(identity.primary_key, original.primary_key);
            assert_eq!(identity.secondary_key, original.secondary_key);
            assert_eq!(identity.origin, Origin::Upstream);
        }
    }

    #[test]
    fn what_a_child_cannot_use_is_skipped() {
        let (_dir, identities) = parent();
        let mut result = answer(
            &identities,
            "parent",
            &edge_hub("child-1"),
            &request("child-1"),
        )
        .unwrap();
        let device = |result: &ScopeResult, id: &str| -> usize {
            result
                .devices
                .iter()
                .position(|d| d.device_id == id)
                .unwrap()
        };
        let leaf = device(&result, "leaf-9");
        result.devices[leaf].status = "disabled".to_owned();
        let grand = device(&result, "grand");
        result.devices[grand].authentication = Authentication {
            kind: "selfSigned".to_owned(),
            symmetric_key: None,
            x509_thumbprint: Some(X509Thumbprint::default()),
        };
        // Without grand's $edgeHub, leaf-g hangs under no edge device this child knows.
        result.modules.retain(|m| m.device_id != "grand");
        let mut orphan = result.devices[leaf].clone();
        orphan.device_id = "orphan".to_owned();
        orphan.status = "enabled".to_owned();
        orphan.parent_scopes = vec![scope_name("elsewhere")];
        result.devices.push(orphan);
        let learned = learn(&result, "child-1");
        let ids: Vec<String> = learned
            .identities
            .iter()
            .map(|i| i.id.to_string())
            .collect();
        assert_eq!(ids, ["child-1/filter"]);
        let skipped: Vec<&str> = learned.skipped.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(skipped, ["grand", "leaf-9", "leaf-g", "orphan"]);
    }

    #[test]
    fn answers_with_null_lists_and_unknown_fields_are_read() {
        let result: ScopeResult = serde_json::from_str(
            r#"{"devices": null, "modules": null, "continuationLink": null, "extra": 1}"#,
        )
        .unwrap();
        assert_eq!(result, ScopeResult::default());
        let device: ScopeDevice = serde_json::from_str(
            r#"{"deviceId": "d", "etag": "x", "connectionState": "Disconnected",
                "authentication": {"type": "sas", "symmetricKey": {"primaryKey": "AAAA", "secondaryKey": "AAAA"}}}"#,
        )
        .unwrap();
        assert_eq!(device.status, "enabled");
        assert!(device.authentication.keys().is_some());
        assert!(format!("{:?}", device.authentication).contains("redacted"));
    }
}
