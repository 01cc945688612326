//! Module and device twins, kept by the hub so that they work offline (protocol spec 2.5).
//!
//! A twin is `{"desired": {..., "$version": n}, "reported": {..., "$version": m}}`, one JSON
//! file per identity under `<data_dir>/twins/`, replaced atomically. A reported patch is
//! validated with IoT Hub's limits, merged (`null` deletes a key) and bumps the reported
//! version.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::{Map, Value};

/// Why a reported patch is refused (answered with status 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The body is not a JSON object.
    #[error("the patch is not a JSON object")]
    NotAnObject,
    /// The patch is larger than 32 KiB.
    #[error("the patch is {0} bytes; at most 32768 are allowed")]
    TooLarge(usize),
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

/// The twins of this hub's identities.
#[derive(Debug)]
pub struct Twins {
    dir: PathBuf,
    /// One writer at a time per hub; twins are small and patches rare.
    lock: Mutex<HashMap<String, Value>>,
}

impl Twins {
    /// Twins stored under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            lock: Mutex::default(),
        }
    }

    /// The twin of `client_id` (`device` or `device/module`); an identity without a stored twin
    /// has empty desired and reported properties, both at version 1.
    ///
    /// # Errors
    ///
    /// When the stored twin cannot be read.
    pub fn get(&self, client_id: &str) -> Result<Value, StorageError> {
        let mut cache = self.cache();
        self.load(&mut cache, client_id).cloned()
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
        let mut cache = self.cache();
        let mut twin = self.load(&mut cache, client_id)?.clone();
        let properties = twin
            .get_mut(section.key())
            .and_then(Value::as_object_mut)
            .expect("twins always hold desired and reported objects");
        merge(properties, patch.clone());
        let version = properties
            .get("$version")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            + 1;
        properties.insert("$version".to_owned(), Value::from(version));
        self.save(client_id, &twin)?;
        cache.insert(client_id.to_owned(), twin);
        Ok(Ok((patch, version)))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Value>> {
        self.lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn load<'c>(
        &self,
        cache: &'c mut HashMap<String, Value>,
        client_id: &str,
    ) -> Result<&'c Value, StorageError> {
        if !cache.contains_key(client_id) {
            let twin = match std::fs::read(self.path(client_id)) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::from)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => empty_twin(),
                Err(e) => return Err(e.into()),
            };
            cache.insert(client_id.to_owned(), twin);
        }
        Ok(&cache[client_id])
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
