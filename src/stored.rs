//! The bytes of a message as the hub keeps them in the store: properties, system properties
//! and body, length-prefixed. Decoding never trusts the bytes (a damaged record is an error,
//! not a panic).

use bytes::{BufMut, Bytes, BytesMut};
use router::{Message, Properties};

/// Format version written in the first byte.
const VERSION: u8 = 1;

/// A stored record that cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The first byte names a format this build does not know.
    #[error("unknown stored message format {0}")]
    Version(u8),
    /// The record ends inside a field.
    #[error("stored message truncated")]
    Truncated,
    /// A key or value is not UTF-8.
    #[error("stored message holds a property that is not UTF-8")]
    NotUtf8,
}

/// Encodes a message for the store.
pub fn encode(message: &Message) -> Bytes {
    let props_len = |p: &Properties| p.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(
        5 + props_len(&message.properties)
            + props_len(&message.system_properties)
            + message.body.len(),
    );
    out.put_u8(VERSION);
    for properties in [&message.properties, &message.system_properties] {
        out.put_u16(u16::try_from(properties.len()).expect("property bags are limited to 256 KiB"));
        for (key, value) in properties.iter() {
            for text in [key, value] {
                out.put_u32(
                    u32::try_from(text.len()).expect("property bags are limited to 256 KiB"),
                );
                out.put_slice(text.as_bytes());
            }
        }
    }
    out.put_slice(&message.body);
    out.freeze()
}

/// Decodes a stored message. The body shares the record's buffer.
///
/// # Errors
///
/// When the record is damaged or of an unknown format.
pub fn decode(record: &Bytes) -> Result<Message, DecodeError> {
    let mut reader = Reader { record, pos: 0 };
    match reader.u8()? {
        VERSION => {}
        other => return Err(DecodeError::Version(other)),
    }
    let properties = reader.properties()?;
    let system_properties = reader.properties()?;
    Ok(Message {
        body: record.slice(reader.pos..),
        properties,
        system_properties,
    })
}

struct Reader<'r> {
    record: &'r Bytes,
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated)?;
        let bytes = self
            .record
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let b = self.take(4)?;
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }

    fn properties(&mut self) -> Result<Properties, DecodeError> {
        let count = self.u16()?;
        let mut properties = Properties::new();
        for _ in 0..count {
            let key = self.text()?;
            let value = self.text()?;
            properties.insert(key, value);
        }
        Ok(properties)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn message() -> Message {
        Message {
            body: Bytes::from_static(b"{\"t\": 1}"),
            properties: [("a", "1"), ("Zürich", "ü")].into_iter().collect(),
            system_properties: [("connectionDeviceId", "dev"), ("outputName", "out1")]
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn a_message_survives_the_round_trip() {
        let m = message();
        assert_eq!(decode(&encode(&m)).unwrap(), m);
    }

    #[test]
    fn damaged_records_are_errors() {
        let bytes = encode(&message());
        for cut in 0..bytes.len() - 8 {
            assert!(decode(&bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        assert_eq!(
            decode(&Bytes::from_static(&[9])),
            Err(DecodeError::Version(9))
        );
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&Bytes::from(bytes));
        }
    }
}
