//! Module and device twins, kept by the hub so that they work offline (protocol spec 2.5).
//!
//! A twin is `{"desired": {..., "$version": n}, "reported": {..., "$version": m}}`, one JSON
//! file per identity under `<data_dir>/twins/`, replaced atomically. A reported patch is
//! validated with IoT Hub's limits, merged (`null` deletes a key) and bumps the reported
//! version; a patch that would make its section larger than [`MAX_SECTION_BYTES`] is refused.
//!
//! Locking: a hub-wide map hands out one slot per identity (held for a lookup only); a patch
//! holds its identity's writer lock while it merges and writes the file, so two patches of one
//! identity apply in order, and patches of different identities never wait for each other's
//! `fsync`. Reading a twin never waits for a write either: it sees the last twin stored.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};

use crate::mqtt::session::{Outbound, Sessions};

/// Why a reported patch is refused (answered with status 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The body is not a JSON object.
    #[error("the patch is not a JSON object")]
    NotAnObject,
    /// The patch is larger than 32 KiB.
    #[error("the patch is {0} bytes; at most 32768 are allowed")]
    TooLarge(usize),
    /// With the patch applied, the section would be larger than [`MAX_SECTION_BYTES`].
    #[error(
        "with this patch the {section} properties would be {size} bytes; at most 32768 are allowed"
    )]
    SectionTooLarge {
        /// `"desired"` or `"reported"`.
        section: &'static str,
        /// The section's size, as stored, with the patch applied.
        size: usize,
    },
    /// Objects and arrays nest more than 10 levels.
    #[error("the patch nests more than 10 levels")]
    TooDeep,
    /// A property name is empty, too long, or holds `.`, `$`, `#`, white space or a control character.
    #[error("invalid property name {0:?}")]
    BadName(String),
    /// A string value is longer than 4096 bytes.
    #[error("a string value is longer than 4096 bytes")]
    LongString,
    /// An array holds `null`.
    #[error("arrays must not contain null")]
    NullInArray,
}

/// A twin could not be read or written (answered with status 500).
#[derive(Debug, thiserror::Error)]
#[error("twin storage failed: {0}")]
pub struct StorageError(#[from] std::io::Error);

/// The most bytes the desired or the reported properties of a twin may take, each, as stored
/// (serialized JSON, `$version` included): IoT Hub's 32 KB.
pub const MAX_SECTION_BYTES: usize = 32 * 1024;

/// The size of an object as the section limits count it: its serialized JSON bytes.
#[must_use]
pub fn serialized_bytes(object: &Map<String, Value>) -> usize {
    serde_json::to_vec(object)
        .expect("JSON values serialise")
        .len()
}

/// The twins of this hub's identities.
#[derive(Debug)]
pub struct Twins {
    dir: PathBuf,
    /// One slot per identity; the map's lock is held only to find or add a slot.
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// One identity's twin.
#[derive(Debug, Default)]
struct Slot {
    /// Held by a patch from before it reads the twin until the new twin is stored: patches of
    /// one identity apply one after the other.
    writer: Mutex<()>,
    /// The twin as last stored; `None` until read from its file. Held only to read or replace
    /// it (and to read the file, once).
    twin: Mutex<Option<Value>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every guarded value is replaced whole, never left half-updated: a poisoned lock is fine.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Twins {
    /// Twins stored under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            slots: Mutex::default(),
        }
    }

    /// The twin of `client_id` (`device` or `device/module`); an identity without a stored twin
    /// has empty desired and reported properties, both at version 1.
    ///
    /// # Errors
    ///
    /// When the stored twin cannot be read.
    pub fn get(&self, client_id: &str) -> Result<Value, StorageError> {
        self.current(&self.slot(client_id), client_id)
    }

    /// Validates and merges a reported patch; returns the new reported version.
    ///
    /// # Errors
    ///
    /// `Ok(Err(_))` for a patch IoT Hub would refuse; `Err(_)` when storage fails.
    pub fn patch_reported(
        &self,
        client_id: &str,
        body: &[u8],
    ) -> Result<Result<u64, PatchError>, StorageError> {
        Ok(self
            .patch(client_id, Section::Reported, body)?
            .map(|(_, version)| version))
    }

    /// Merges a desired patch (set by the operator); returns the patch as clients receive it,
    /// with the new `$version`.
    ///
    /// # Errors
    ///
    /// `Ok(Err(_))` for a patch that is not a JSON object or breaks IoT Hub's limits; `Err(_)`
    /// when storage fails.
    pub fn patch_desired(
        &self,
        client_id: &str,
        body: &[u8],
    ) -> Result<Result<Value, PatchError>, StorageError> {
        Ok(self
            .patch(client_id, Section::Desired, body)?
            .map(|(mut patch, version)| {
                patch.insert("$version".to_owned(), Value::from(version));
                Value::Object(patch)
            }))
    }

    /// Replaces the desired properties of `client_id` whole (a deployment, or the copy of
    /// upstream's twin a child keeps); `desired` carries its own `$version` (the stored one
    /// plus one when it has none). Gives the patch that turns the old desired properties into
    /// the new ones (changed keys, removed ones as `null`, the new `$version`), `None` when
    /// nothing changed.
    ///
    /// # Errors
    ///
    /// `Ok(Err(_))` when `desired` is not an object or breaks IoT Hub's limits; `Err(_)` when
    /// storage fails.
    pub fn replace_desired(
        &self,
        client_id: &str,
        desired: &Value,
    ) -> Result<Result<Option<Value>, PatchError>, StorageError> {
        let Some(new) = desired.as_object() else {
            return Ok(Err(PatchError::NotAnObject));
        };
        let mut new = new.clone();
        let body = serde_json::to_vec(&strip_version(new.clone())).expect("JSON values serialise");
        if let Err(e) = validate(&body) {
            return Ok(Err(e));
        }
        let slot = self.slot(client_id);
        let _writer = lock(&slot.writer);
        let mut twin = self.current(&slot, client_id)?;
        let old = twin["desired"].as_object().cloned().unwrap_or_default();
        let old_version = old.get("$version").and_then(Value::as_u64).unwrap_or(1);
        let given = new.get("$version").and_then(Value::as_u64);
        if strip_version(new.clone()) == strip_version(old.clone())
            && given.is_none_or(|v| v == old_version)
        {
            return Ok(Ok(None));
        }
        let version = given.unwrap_or(old_version + 1);
        new.insert("$version".to_owned(), Value::from(version));
        let mut patch = Map::new();
        for (key, value) in &new {
            if old.get(key) != Some(value) {
                patch.insert(key.clone(), value.clone());
            }
        }
        for key in old.keys().filter(|key| !new.contains_key(*key)) {
            patch.insert(key.clone(), Value::Null);
        }
        twin["desired"] = Value::Object(new);
        self.save(client_id, &twin)?;
        *lock(&slot.twin) = Some(twin);
        Ok(Ok(Some(Value::Object(patch))))
    }

    /// Merges a desired patch that upstream made at `version` (a child's copy of its
    /// parent's twin): the stored desired properties take upstream's `$version`.
    ///
    /// # Errors
    ///
    /// `Ok(Err(_))` for a patch that is not a JSON object or breaks IoT Hub's limits; `Err(_)`
    /// when storage fails.
    pub fn merge_desired_at(
        &self,
        client_id: &str,
        patch: &[u8],
        version: u64,
    ) -> Result<Result<(), PatchError>, StorageError> {
        // Upstream's patch carries its `$version`, a name clients may not write.
        let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(patch) else {
            return Ok(Err(PatchError::NotAnObject));
        };
        let body = serde_json::to_vec(&strip_version(patch)).expect("JSON values serialise");
        let patch = match validate(&body) {
            Ok(patch) => patch,
            Err(e) => return Ok(Err(e)),
        };
        let slot = self.slot(client_id);
        let _writer = lock(&slot.writer);
        let mut twin = self.current(&slot, client_id)?;
        let desired = twin
            .get_mut("desired")
            .and_then(Value::as_object_mut)
            .expect("a loaded twin always holds desired and reported objects");
        merge(desired, patch);
        desired.insert("$version".to_owned(), Value::from(version));
        self.save(client_id, &twin)?;
        *lock(&slot.twin) = Some(twin);
        Ok(Ok(()))
    }

    /// Validates `body`, merges it into one section of the twin, bumps that section's
    /// `$version` and persists the twin; returns the patch and the new version.
    fn patch(
        &self,
        client_id: &str,
        section: Section,
        body: &[u8],
    ) -> Result<Result<Applied, PatchError>, StorageError> {
        let patch = match validate(body) {
            Ok(patch) => patch,
            Err(e) => return Ok(Err(e)),
        };
        let slot = self.slot(client_id);
        let _writer = lock(&slot.writer);
        let mut twin = self.current(&slot, client_id)?;
        let properties = twin
            .get_mut(section.key())
            .and_then(Value::as_object_mut)
            .expect("a loaded twin always holds desired and reported objects");
        merge(properties, patch.clone());
        let version = properties
            .get("$version")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            + 1;
        properties.insert("$version".to_owned(), Value::from(version));
        let size = serialized_bytes(properties);
        if size > MAX_SECTION_BYTES {
            return Ok(Err(PatchError::SectionTooLarge {
                section: section.key(),
                size,
            }));
        }
        // Only this identity's writer lock is held across the write.
        self.save(client_id, &twin)?;
        *lock(&slot.twin) = Some(twin);
        Ok(Ok((patch, version)))
    }

    /// The slot of `client_id`, added if missing (the map's lock is held for this only).
    fn slot(&self, client_id: &str) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        match slots.get(client_id) {
            Some(slot) => Arc::clone(slot),
            None => {
                let slot = Arc::new(Slot::default());
                slots.insert(client_id.to_owned(), Arc::clone(&slot));
                slot
            }
        }
    }

    /// The twin of a slot as last stored, read from its file the first time.
    fn current(&self, slot: &Slot, client_id: &str) -> Result<Value, StorageError> {
        let mut twin = lock(&slot.twin);
        if let Some(twin) = &*twin {
            return Ok(twin.clone());
        }
        let loaded = match std::fs::read(self.path(client_id)) {
            Ok(bytes) => {
                let stored: Value = serde_json::from_slice(&bytes).map_err(std::io::Error::from)?;
                well_formed(stored, client_id)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => empty_twin(),
            Err(e) => return Err(e.into()),
        };
        *twin = Some(loaded.clone());
        Ok(loaded)
    }

    fn save(&self, client_id: &str, twin: &Value) -> Result<(), StorageError> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = serde_json::to_vec(twin).expect("twins serialise");
        crate::fs::write_atomically(&self.path(client_id), &bytes, 0o600)?;
        Ok(())
    }

    fn path(&self, client_id: &str) -> PathBuf {
        // Ids may hold characters a file name should not; encode them.
        let name: String =
            percent_encoding::utf8_percent_encode(client_id, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        self.dir.join(format!("{name}.json"))
    }
}

/// Pushes a desired patch (with its `$version`) to `client_id` if it is connected and
/// subscribed to desired-property updates; a client that is offline or busy reads the twin
/// on its next GET. Gives the patch's version.
pub fn push_desired(sessions: &Sessions, client_id: &str, patch: &Value) -> u64 {
    let version = patch["$version"].as_u64().unwrap_or_default();
    let topic = crate::mqtt::topic::desired_patch(version);
    if let Some((link, qos)) = sessions.route(client_id, &topic) {
        let outbound = Outbound::unacknowledged(topic, patch.to_string().into(), qos);
        if link.outbox.try_send(vec![outbound]).is_err() {
            tracing::warn!(%client_id, "desired patch not pushed (connection busy); the client reads it on its next GET");
        }
    }
    version
}

/// `properties` without its `$version`.
fn strip_version(mut properties: Map<String, Value>) -> Map<String, Value> {
    properties.remove("$version");
    properties
}

/// A patch as applied, and the section's new `$version`.
type Applied = (Map<String, Value>, u64);

/// The two halves of a twin.
#[derive(Debug, Clone, Copy)]
enum Section {
    Desired,
    Reported,
}

impl Section {
    fn key(self) -> &'static str {
        match self {
            Self::Desired => "desired",
            Self::Reported => "reported",
        }
    }
}

fn empty_twin() -> Value {
    serde_json::json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
}

/// A stored twin with both sections as objects: a file that is not an object, or lacks a
/// section, or has one that is not an object, gets empty sections in their place (logged once,
/// when the file is read; the file is rewritten at the next patch).
fn well_formed(stored: Value, client_id: &str) -> Value {
    let Value::Object(mut twin) = stored else {
        tracing::warn!(%client_id, "stored twin is not a JSON object; read as an empty twin");
        return empty_twin();
    };
    for section in [Section::Desired, Section::Reported] {
        let key = section.key();
        if !twin.get(key).is_some_and(Value::is_object) {
            tracing::warn!(%client_id, section = key, "stored twin has no valid section; read as empty");
            twin.insert(key.to_owned(), serde_json::json!({"$version": 1}));
        }
    }
    Value::Object(twin)
}

/// Merges `patch` into `target`: objects merge recursively, `null` deletes, anything else
/// replaces.
fn merge(target: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (key, value) in patch {
        match value {
            Value::Null => {
                target.remove(&key);
            }
            Value::Object(inner) => match target.get_mut(&key) {
                Some(Value::Object(existing)) => merge(existing, inner),
                _ => {
                    let mut fresh = Map::new();
                    merge(&mut fresh, inner);
                    target.insert(key, Value::Object(fresh));
                }
            },
            other => {
                target.insert(key, other);
            }
        }
    }
}

/// IoT Hub's limits on reported properties (protocol spec 2.5).
fn validate(body: &[u8]) -> Result<Map<String, Value>, PatchError> {
    if body.len() > 32 * 1024 {
        return Err(PatchError::TooLarge(body.len()));
    }
    let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(body) else {
        return Err(PatchError::NotAnObject);
    };
    fn check(value: &Value, depth: usize) -> Result<(), PatchError> {
        match value {
            Value::Object(map) => {
                if depth > 10 {
                    return Err(PatchError::TooDeep);
                }
                for (name, inner) in map {
                    let bad = name.is_empty()
                        || name.len() > 1024
                        || name.chars().any(|c| {
                            matches!(c, '.' | '$' | '#') || c.is_whitespace() || c.is_control()
                        });
                    if bad {
                        return Err(PatchError::BadName(name.clone()));
                    }
                    check(inner, depth + 1)?;
                }
                Ok(())
            }
            Value::Array(items) => {
                if depth > 10 {
                    return Err(PatchError::TooDeep);
                }
                if items.iter().any(Value::is_null) {
                    return Err(PatchError::NullInArray);
                }
                items.iter().try_for_each(|item| check(item, depth + 1))
            }
            Value::String(s) if s.len() > 4096 => Err(PatchError::LongString),
            _ => Ok(()),
        }
    }
    check(&Value::Object(patch.clone()), 1)?;
    Ok(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_twin_is_empty_at_version_1() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::new(dir.path().to_owned());
        assert_eq!(twins.get("d/m").unwrap(), empty_twin());
    }

    #[test]
    fn replacing_the_desired_properties_gives_the_difference_and_bumps_the_version() {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::new(dir.path().to_owned());
        let first = twins
            .replace_desired("c/$edgeHub", &json!({"routes": {"a": "x", "b": "y"}}))
            .unwrap()
            .unwrap();
        assert_eq!(
            first,
            Some(json!({"routes": {"a": "x", "b": "y"}, "$version": 2}))
        );
        // The same content again: nothing changes.
        assert_eq!(
            twins
                .replace_desired("c/$edgeHub", &json!({"routes": {"a": "x", "b": "y"}}))
                .unwrap(),
            Ok(None)
        );
        // Removed keys come as null in the difference; upstream's version is taken as is.
        twins
            .replace_desired("c/m", &json!({"keep": 1, "drop": 2, "$version": 7}))
            .unwrap()
            .unwrap();
        let patch = twins
            .replace_desired("c/m", &json!({"keep": 1, "new": 3, "$version": 9}))
            .unwrap()
            .unwrap();
        assert_eq!(patch, Some(json!({"new": 3, "drop": null, "$version": 9})));
        assert_eq!(
            Twins::new(dir.path().to_owned()).get("c/m").unwrap()["desired"],
            json!({"keep": 1, "new": 3, "$version": 9})
        );
        assert_eq!(
            twins
                .replace_desired("c/m", &json!(["not", "an", "object"]))
                .unwrap(),
            Err(PatchError::NotAnObject)
        );
        assert!(matches!(
            twins
                .replace_desired("c/m", &json!({"bad name": 1}))
                .unwrap(),
            Err(PatchError::BadName(_))
        ));
    }

    #[test]
    fn a_desired_patch_from_upstream_merges_at_upstreams_version() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::new(dir.path().to_owned());
        twins
            .merge_desired_at("c/m", br#"{"a": 1, "$version": 5}"#, 5)
            .unwrap()
            .unwrap();
        twins
            .merge_desired_at("c/m", br#"{"a": null, "b": 2, "$version": 6}"#, 6)
            .unwrap()
            .unwrap();
        assert_eq!(
            twins.get("c/m").unwrap()["desired"],
            serde_json::json!({"b": 2, "$version": 6})
        );
        assert_eq!(
            twins.merge_desired_at("c/m", b"[]", 7).unwrap(),
            Err(PatchError::NotAnObject)
        );
    }

    #[test]
    fn reported_patches_merge_delete_and_bump_the_version_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::new(dir.path().to_owned());
        assert_eq!(
            twins
                .patch_reported("d/m", br#"{"a": 1, "o": {"x": 1, "y": 2}}"#)
                .unwrap(),
            Ok(2)
        );
        assert_eq!(
            twins
                .patch_reported("d/m", br#"{"a": null, "o": {"y": 3}}"#)
                .unwrap(),
            Ok(3)
        );
        let reopened = Twins::new(dir.path().to_owned());
        assert_eq!(
            reopened.get("d/m").unwrap()["reported"],
            serde_json::json!({"o": {"x": 1, "y": 3}, "$version": 3})
        );
    }

    #[test]
    fn desired_patches_carry_their_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::new(dir.path().to_owned());
        let pushed = twins
            .patch_desired("d/m", br#"{"interval": 5}"#)
            .unwrap()
            .unwrap();
        assert_eq!(pushed, serde_json::json!({"interval": 5, "$version": 2}));
        assert_eq!(
            twins.get("d/m").unwrap()["desired"],
            serde_json::json!({"interval": 5, "$version": 2})
        );
    }

    /// A patch of `n` properties of 1 KiB each, named `{prefix}{i}`.
    fn kilobytes(prefix: &str, n: usize) -> Vec<u8> {
        let value = "x".repeat(1000);
        let map: Map<String, Value> = (0..n)
            .map(|i| (format!("{prefix}{i}"), Value::from(value.clone())))
            .collect();
        serde_json::to_vec(&map).unwrap()
    }

    #[test]
    fn a_section_stops_growing_at_32_kilobytes() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::new(dir.path().to_owned());
        // Each patch is under the 32 KiB patch limit; together they would pass the section's.
        for (i, prefix) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(
                twins.patch_reported("d/m", &kilobytes(prefix, 10)).unwrap(),
                Ok(i as u64 + 2)
            );
        }
        let refused = twins.patch_reported("d/m", &kilobytes("e", 10)).unwrap();
        assert!(
            matches!(refused, Err(PatchError::SectionTooLarge { section: "reported", size }) if size > MAX_SECTION_BYTES),
            "{refused:?}"
        );
        // Nothing of the refused patch is kept, in memory or on disk.
        let twin = twins.get("d/m").unwrap();
        assert_eq!(twin["reported"]["$version"], 4);
        assert!(twin["reported"].get("e0").is_none());
        let reopened = Twins::new(dir.path().to_owned());
        assert_eq!(reopened.get("d/m").unwrap(), twin);
        // Deleting makes room again; the desired section has its own 32 KB.
        let deletes = br#"{"a0": null, "a1": null, "a2": null}"#;
        assert_eq!(twins.patch_reported("d/m", deletes).unwrap(), Ok(5));
        for prefix in ["a", "b", "c"] {
            twins
                .patch_desired("d/m", &kilobytes(prefix, 10))
                .unwrap()
                .unwrap();
        }
        assert!(matches!(
            twins.patch_desired("d/m", &kilobytes("e", 10)).unwrap(),
            Err(PatchError::SectionTooLarge {
                section: "desired",
                ..
            })
        ));
    }

    #[test]
    fn a_stored_twin_without_its_sections_reads_as_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::new(dir.path().to_owned());
        for (client, stored) in [
            ("d/no-desired", r#"{"reported": {"$version": 3, "a": 1}}"#),
            ("d/no-reported", r#"{"desired": {"$version": 2}}"#),
            ("d/not-objects", r#"{"desired": [1], "reported": "x"}"#),
            ("d/array", "[1, 2]"),
            ("d/null", "null"),
        ] {
            std::fs::write(twins.path(client), stored).unwrap();
            let twin = twins.get(client).unwrap();
            assert!(twin["desired"].is_object(), "{client}: {twin}");
            assert!(twin["reported"].is_object(), "{client}: {twin}");
            twins
                .patch_reported(client, br#"{"ok": true}"#)
                .unwrap()
                .unwrap();
            twins
                .patch_desired(client, br#"{"ok": true}"#)
                .unwrap()
                .unwrap();
        }
        let kept = twins.get("d/no-desired").unwrap();
        assert_eq!(
            kept["reported"],
            serde_json::json!({"$version": 4, "a": 1, "ok": true})
        );
        assert_eq!(
            kept["desired"],
            serde_json::json!({"$version": 2, "ok": true})
        );
        // A file that is not JSON at all is a storage error, not a panic.
        std::fs::write(twins.path("d/garbage"), "{not json").unwrap();
        assert!(twins.get("d/garbage").is_err());
    }

    #[test]
    fn patches_of_one_identity_apply_in_order_and_others_do_not_wait() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Arc::new(Twins::new(dir.path().to_owned()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let twins = Arc::clone(&twins);
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let body = format!(r#"{{"t{t}": {i}}}"#);
                        twins
                            .patch_reported("d/shared", body.as_bytes())
                            .unwrap()
                            .unwrap();
                        twins
                            .patch_reported(&format!("d/own{t}"), body.as_bytes())
                            .unwrap()
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let shared = Twins::new(dir.path().to_owned()).get("d/shared").unwrap();
        assert_eq!(shared["reported"]["$version"], 41, "no patch lost");
        for t in 0..4 {
            assert_eq!(
                shared["reported"][format!("t{t}")],
                9,
                "each thread's last patch wins"
            );
        }
    }

    #[test]
    fn a_slow_write_of_one_twin_does_not_hold_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::new(dir.path().to_owned());
        twins
            .patch_reported("d/a", br#"{"x": 1}"#)
            .unwrap()
            .unwrap();
        // Hold identity a's writer lock, as a patch does across its fsync.
        let slot = twins.slot("d/a");
        let _writing = lock(&slot.writer);
        // Another identity patches, and a's twin reads, without waiting for it.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                twins
                    .patch_reported("d/b", br#"{"y": 1}"#)
                    .unwrap()
                    .unwrap();
                let a = twins.get("d/a").unwrap();
                done.send(a["reported"]["x"].clone()).unwrap();
            });
            assert_eq!(
                finished.recv_timeout(std::time::Duration::from_secs(10)),
                Ok(Value::from(1))
            );
        });
    }

    #[test]
    fn patches_iot_hub_would_refuse_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let twins = Twins::new(dir.path().to_owned());
        for (body, error) in [
            (&b"[1]"[..], PatchError::NotAnObject),
            (b"not json", PatchError::NotAnObject),
            (br#"{"a.b": 1}"#, PatchError::BadName("a.b".into())),
            (br#"{"$x": 1}"#, PatchError::BadName("$x".into())),
            (br#"{"a": [1, null]}"#, PatchError::NullInArray),
            (
                br#"{"a":{"a":{"a":{"a":{"a":{"a":{"a":{"a":{"a":{"a":{"a":1}}}}}}}}}}}"#,
                PatchError::TooDeep,
            ),
        ] {
            assert_eq!(twins.patch_reported("d/m", body).unwrap(), Err(error));
        }
        assert_eq!(twins.get("d/m").unwrap(), empty_twin());
    }
}
