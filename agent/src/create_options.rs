//! `createOptions` as IoT Hub stores them: a string of JSON split into 512-character pieces
//! (`createOptions`, `createOptions01` … `createOptions99`), reassembled before use and split
//! again when reported (spec 7). Unknown Docker fields are kept: the options stay a JSON value.

use serde_json::{Map, Value};

/// The most characters one piece holds.
pub const CHUNK_CHARS: usize = 512;

/// The most pieces: `createOptions` and `createOptions01` … `createOptions99`.
pub const MAX_CHUNKS: usize = 100;

/// The key every piece starts with.
pub const KEY: &str = "createOptions";

/// Why the pieces of a `settings` object do not make createOptions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateOptionsError {
    /// A piece is not a string.
    #[error("{key} must be a string of JSON")]
    NotAString {
        /// The piece's key.
        key: String,
    },
    /// The numbering has a gap or does not start at `createOptions`.
    #[error(
        "{key} without {missing}: pieces must be numbered createOptions, createOptions01, createOptions02, … with no gap"
    )]
    Gap {
        /// The piece found.
        key: String,
        /// The piece expected before it.
        missing: String,
    },
    /// The reassembled text is not JSON, or not a JSON object.
    #[error("createOptions is not a JSON object: {0}")]
    NotJson(String),
    /// The options are too long to be split into 100 pieces.
    #[error("createOptions is {0} characters, more than 100 pieces of 512")]
    TooLong(usize),
}

/// The suffix number of a createOptions piece key: `createOptions` is 0, `createOptions07` is
/// 7; `None` for other keys (`createOptions7` and `createOptions100` are not pieces).
#[must_use]
pub fn piece_number(key: &str) -> Option<usize> {
    let rest = key.strip_prefix(KEY)?;
    if rest.is_empty() {
        return Some(0);
    }
    if rest.len() == 2 && rest.bytes().all(|b| b.is_ascii_digit()) {
        return rest.parse().ok().filter(|n| *n > 0);
    }
    None
}

/// Reassembles the createOptions pieces of `settings`: `Ok(None)` when there are none, or
/// when the text is empty, blank or `null`.
///
/// # Errors
///
/// A piece that is not a string, a gap in the numbering, or text that is not a JSON object.
pub fn reassemble(settings: &Map<String, Value>) -> Result<Option<Value>, CreateOptionsError> {
    let mut pieces: Vec<(usize, &str, &Value)> = settings
        .iter()
        .filter_map(|(key, value)| piece_number(key).map(|n| (n, key.as_str(), value)))
        .collect();
    if pieces.is_empty() {
        return Ok(None);
    }
    pieces.sort_by_key(|(n, _, _)| *n);
    let mut text = String::new();
    for (expected, (n, key, value)) in pieces.iter().enumerate() {
        if *n != expected {
            return Err(CreateOptionsError::Gap {
                key: (*key).to_owned(),
                missing: piece_key(expected),
            });
        }
        let Value::String(piece) = value else {
            return Err(CreateOptionsError::NotAString {
                key: (*key).to_owned(),
            });
        };
        text.push_str(piece);
    }
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed == "null" {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(value @ Value::Object(_)) => Ok(Some(value)),
        Ok(other) => Err(CreateOptionsError::NotJson(format!(
            "found {}",
            json_kind(&other)
        ))),
        Err(e) => Err(CreateOptionsError::NotJson(e.to_string())),
    }
}

/// The key of piece `n`: `createOptions`, `createOptions01`, …
#[must_use]
pub fn piece_key(n: usize) -> String {
    if n == 0 {
        KEY.to_owned()
    } else {
        format!("{KEY}{n:02}")
    }
}

/// Splits `options` (serialised compactly) into pieces of at most 512 characters, keyed as
/// in the twin.
///
/// # Errors
///
/// When more than 100 pieces would be needed.
pub fn split(options: &Value) -> Result<Vec<(String, String)>, CreateOptionsError> {
    split_text(&options.to_string())
}

/// [`split`] of text already serialised.
///
/// # Errors
///
/// When more than 100 pieces would be needed.
pub fn split_text(text: &str) -> Result<Vec<(String, String)>, CreateOptionsError> {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() > CHUNK_CHARS * MAX_CHUNKS {
        return Err(CreateOptionsError::TooLong(chars.len()));
    }
    if chars.is_empty() {
        return Ok(vec![(piece_key(0), String::new())]);
    }
    Ok(chars
        .chunks(CHUNK_CHARS)
        .enumerate()
        .map(|(n, piece)| (piece_key(n), piece.iter().collect()))
        .collect())
}

/// A word for the kind of a JSON value, for messages.
#[must_use]
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings_of(pieces: &[(String, String)]) -> Map<String, Value> {
        pieces
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect()
    }

    #[test]
    fn a_1300_character_option_splits_into_three_pieces_and_reassembles() {
        let padding = "x".repeat(1300 - 40);
        let options = json!({ "Labels": { "pad": padding }, "Env": ["A=1"] });
        let text = options.to_string();
        assert!(
            text.len() >= 1300 - 10 && text.len() <= 1300 + 10,
            "{}",
            text.len()
        );
        let pieces = split(&options).unwrap();
        let keys: Vec<&str> = pieces.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["createOptions", "createOptions01", "createOptions02"]
        );
        assert!(pieces.iter().all(|(_, p)| p.chars().count() <= CHUNK_CHARS));
        assert_eq!(reassemble(&settings_of(&pieces)).unwrap(), Some(options));
    }

    #[test]
    fn piece_two_without_piece_one_is_a_gap() {
        let mut settings = Map::new();
        settings.insert("createOptions".into(), json!("{\"a\":"));
        settings.insert("createOptions02".into(), json!("1}"));
        let err = reassemble(&settings).unwrap_err();
        assert_eq!(
            err,
            CreateOptionsError::Gap {
                key: "createOptions02".into(),
                missing: "createOptions01".into()
            }
        );
    }

    #[test]
    fn empty_blank_and_null_mean_no_options() {
        for text in ["", "  ", "null"] {
            let mut settings = Map::new();
            settings.insert("createOptions".into(), json!(text));
            assert_eq!(reassemble(&settings).unwrap(), None, "{text:?}");
        }
        assert_eq!(reassemble(&Map::new()).unwrap(), None);
    }

    #[test]
    fn unknown_docker_fields_survive_a_round_trip() {
        let options = json!({"HostConfig": {"FutureField": {"x": [1, 2]}}, "Zzz": true});
        let pieces = split(&options).unwrap();
        assert_eq!(reassemble(&settings_of(&pieces)).unwrap(), Some(options));
    }

    #[test]
    fn only_two_digit_suffixes_are_pieces() {
        assert_eq!(piece_number("createOptions"), Some(0));
        assert_eq!(piece_number("createOptions01"), Some(1));
        assert_eq!(piece_number("createOptions99"), Some(99));
        assert_eq!(piece_number("createOptions1"), None);
        assert_eq!(piece_number("createOptions00"), None);
        assert_eq!(piece_number("createOptions100"), None);
        assert_eq!(piece_number("image"), None);
    }

    #[test]
    fn more_than_a_hundred_pieces_is_refused() {
        let text = "y".repeat(CHUNK_CHARS * MAX_CHUNKS + 1);
        assert_eq!(
            split_text(&text).unwrap_err(),
            CreateOptionsError::TooLong(CHUNK_CHARS * MAX_CHUNKS + 1)
        );
        assert_eq!(
            split_text(&"y".repeat(CHUNK_CHARS * MAX_CHUNKS))
                .unwrap()
                .len(),
            100
        );
    }

    #[test]
    fn text_that_is_not_an_object_is_refused() {
        let mut settings = Map::new();
        settings.insert("createOptions".into(), json!("[1]"));
        assert!(matches!(
            reassemble(&settings),
            Err(CreateOptionsError::NotJson(_))
        ));
        settings.insert("createOptions".into(), json!("{"));
        assert!(matches!(
            reassemble(&settings),
            Err(CreateOptionsError::NotJson(_))
        ));
        settings.insert("createOptions".into(), json!(3));
        assert!(matches!(
            reassemble(&settings),
            Err(CreateOptionsError::NotAString { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn split_then_reassemble_is_identity(s in "\\PC{0,3000}") {
            let options = serde_json::json!({ "s": s });
            let pieces = split(&options).unwrap();
            proptest::prop_assert!(pieces.len() <= MAX_CHUNKS);
            proptest::prop_assert_eq!(reassemble(&settings_of(&pieces)).unwrap(), Some(options));
        }
    }
}
