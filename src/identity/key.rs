//! Symmetric keys: 32 random bytes, shown as base64 and never logged.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// How many random bytes a generated key has (what IoT Hub generates).
pub const KEY_LEN: usize = 32;

/// A shared access key. Its `Debug` output hides the key, so it can sit in logged structs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SymmetricKey(Vec<u8>);

/// The operating system could not give random bytes.
#[derive(Debug, Clone, Copy, Error)]
#[error("the system's random number generator failed")]
pub struct RandomError;

/// A key that is not base64.
#[derive(Debug, Clone, Error)]
#[error("a shared access key is not base64: {0}")]
pub struct KeyDecodeError(#[from] base64::DecodeError);

impl SymmetricKey {
    /// A new key of [`KEY_LEN`] random bytes from the system's secure generator.
    ///
    /// # Errors
    ///
    /// When the generator fails.
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = vec![0; KEY_LEN];
        rustls::crypto::ring::default_provider()
            .secure_random
            .fill(&mut bytes)
            .map_err(|_| RandomError)?;
        Ok(Self(bytes))
    }

    /// A key from raw bytes (tests, and keys from elsewhere).
    #[must_use]
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// Decodes a base64 key as it appears in a connection string.
    ///
    /// # Errors
    ///
    /// When `text` is not standard, padded base64.
    pub fn from_base64(text: &str) -> Result<Self, KeyDecodeError> {
        Ok(Self(STANDARD.decode(text)?))
    }

    /// The raw key: what HMAC takes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The key in base64, as in a connection string.
    #[must_use]
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.0)
    }
}

/// Which of an identity's two keys (IoT Hub's model: either signs a valid token, and each can
/// be regenerated on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySlot {
    /// The primary key: the one connection strings carry.
    Primary,
    /// The secondary key.
    Secondary,
}

impl fmt::Display for KeySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Primary => "primary",
            Self::Secondary => "secondary",
        })
    }
}

/// What identifies a key without revealing it: the SHA-256 of its bytes. Remembered by a
/// connection to tell later whether the key that authenticated it is still current; its
/// `Debug` output shows only the first 4 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyFingerprint([u8; 32]);

impl KeyFingerprint {
    /// The fingerprint of `key`.
    #[must_use]
    pub fn of(key: &SymmetricKey) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }
}

impl fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyFingerprint(")?;
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "..)")
    }
}

impl SymmetricKey {
    /// This key's [`KeyFingerprint`].
    #[must_use]
    pub fn fingerprint(&self) -> KeyFingerprint {
        KeyFingerprint::of(self)
    }
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SymmetricKey(<redacted>)")
    }
}

impl TryFrom<String> for SymmetricKey {
    type Error = KeyDecodeError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::from_base64(&text)
    }
}

impl From<SymmetricKey> for String {
    fn from(key: SymmetricKey) -> Self {
        key.to_base64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_32_random_bytes() {
        let a = SymmetricKey::generate().unwrap();
        let b = SymmetricKey::generate().unwrap();
        assert_eq!(a.as_bytes().len(), KEY_LEN);
        assert_ne!(a, b);
        assert_eq!(a.to_base64().len(), 44);
    }

    #[test]
    fn base64_round_trips() {
        let key = SymmetricKey::generate().unwrap();
        assert_eq!(SymmetricKey::from_base64(&key.to_base64()).unwrap(), key);
        assert!(SymmetricKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn fingerprints_tell_keys_apart_and_show_little() {
        let a = SymmetricKey::generate().unwrap();
        let b = SymmetricKey::generate().unwrap();
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
        let shown = format!("{:?}", a.fingerprint());
        assert_eq!(shown.len(), "KeyFingerprint(01234567..)".len(), "{shown}");
        assert!(!shown.contains(&a.to_base64()));
        assert_eq!(KeySlot::Secondary.to_string(), "secondary");
    }

    #[test]
    fn debug_output_hides_the_key() {
        let key = SymmetricKey::from_bytes(*b"secret");
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.to_base64()), "{shown}");
        assert_eq!(shown, "SymmetricKey(<redacted>)");
    }
}
