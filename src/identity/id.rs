//! IoT Hub's rules for device and module ids.
//!
//! An id is 1 to 128 characters of `[A-Za-z0-9-:.+%_#*?!(),=@$']`. A module id must not start
//! with `$`: that prefix is reserved for the runtime's own modules, `$edgeHub` and `$edgeAgent`.

use thiserror::Error;

/// The most characters an id may have.
pub const MAX_ID_LEN: usize = 128;

/// The hub's own module identity.
pub const EDGE_HUB: &str = "$edgeHub";
/// The agent's module identity.
pub const EDGE_AGENT: &str = "$edgeAgent";

/// Why an id breaks IoT Hub's rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The id is the empty string.
    #[error("{kind} id is empty")]
    Empty {
        /// `"device"` or `"module"`.
        kind: &'static str,
    },
    /// The id has more than [`MAX_ID_LEN`] characters.
    #[error("{kind} id {id:?} is longer than {MAX_ID_LEN} characters")]
    TooLong {
        /// `"device"` or `"module"`.
        kind: &'static str,
        /// The offending id.
        id: String,
    },
    /// The id holds a character outside the allowed set.
    #[error("{kind} id {id:?} contains {character:?}, which IoT Hub does not allow in ids")]
    BadCharacter {
        /// `"device"` or `"module"`.
        kind: &'static str,
        /// The offending id.
        id: String,
        /// The first character that is not allowed.
        character: char,
    },
    /// A module id starts with `$` but is not one of the runtime's modules.
    #[error("module id {id:?} starts with '$', which is reserved for $edgeHub and $edgeAgent")]
    Reserved {
        /// The offending id.
        id: String,
    },
}

/// Checks a device id.
///
/// # Errors
///
/// When `id` breaks the rules in this module's documentation.
pub fn validate_device_id(id: &str) -> Result<(), IdError> {
    validate(id, "device")
}

/// Checks a module id: the general rules, and no leading `$` other than [`EDGE_HUB`] and
/// [`EDGE_AGENT`].
///
/// # Errors
///
/// When `id` breaks the rules in this module's documentation.
pub fn validate_module_id(id: &str) -> Result<(), IdError> {
    validate(id, "module")?;
    if id.starts_with('$') && !is_system_module(id) {
        return Err(IdError::Reserved { id: id.to_owned() });
    }
    Ok(())
}

/// Whether `id` is one of the runtime's own modules (`$edgeHub`, `$edgeAgent`).
#[must_use]
pub fn is_system_module(id: &str) -> bool {
    id == EDGE_HUB || id == EDGE_AGENT
}

fn validate(id: &str, kind: &'static str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if id.chars().count() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            id: id.to_owned(),
        });
    }
    if let Some(character) = id.chars().find(|&c| !is_id_char(c)) {
        return Err(IdError::BadCharacter {
            kind,
            id: id.to_owned(),
            character,
        });
    }
    Ok(())
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-:.+%_#*?!(),=@$'".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_allowed_character() {
        validate_device_id("aZ09-:.+%_#*?!(),=@$'").unwrap();
        validate_module_id("aZ09-:.+%_#*?!(),=@$'").unwrap();
    }

    #[test]
    fn length_is_between_one_and_128() {
        assert_eq!(
            validate_device_id(""),
            Err(IdError::Empty { kind: "device" })
        );
        validate_device_id(&"a".repeat(128)).unwrap();
        assert!(matches!(
            validate_module_id(&"a".repeat(129)),
            Err(IdError::TooLong { kind: "module", .. })
        ));
    }

    #[test]
    fn rejects_slash_space_and_non_ascii() {
        for id in ["a/b", "a b", "café", "a&b", "a\"b"] {
            assert!(
                matches!(validate_device_id(id), Err(IdError::BadCharacter { .. })),
                "{id}"
            );
        }
    }

    #[test]
    fn module_ids_starting_with_dollar_are_reserved_for_the_runtime() {
        validate_module_id("$edgeHub").unwrap();
        validate_module_id("$edgeAgent").unwrap();
        assert!(matches!(
            validate_module_id("$filter"),
            Err(IdError::Reserved { .. })
        ));
        // A device id may start with '$'; only module ids carry the reservation.
        validate_device_id("$device").unwrap();
        assert!(is_system_module("$edgeHub"));
        assert!(!is_system_module("$edgehub"));
    }
}
