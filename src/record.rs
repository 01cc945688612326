//! The bytes of a message as the hub keeps them in the store. Decoding never trusts the
//! bytes (a damaged record is an error, not a panic).
//!
//! Version 2, written by this build: the property bag as a module receives it on its input
//! topic (encoded once, when the message arrives, instead of once per delivery), then the
//! properties and system properties, then the body:
//!
//! ```text
//! [2] [bag length: u32] [bag] [length of the maps: u32] [properties] [system properties] [body]
//! ```
//!
//! where each map is `[count: u16]` and that many `[length: u32] [key] [length: u32] [value]`.
//! Version 1, written by earlier builds and still read: `[1] [properties] [system properties]
//! [body]`.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use router::{Message, Properties};

/// The first format, without the delivery bag.
const V1: u8 = 1;
/// The format written now.
const V2: u8 = 2;

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

/// Encodes a message for the store (version 2), with `delivery_bag`: the property bag as a
/// module will receive it on its input topic, already encoded by the caller (the record
/// knows nothing of MQTT).
pub fn encode(message: &Message, delivery_bag: &str) -> Bytes {
    let bag = delivery_bag;
    let maps_len = [&message.properties, &message.system_properties]
        .iter()
        .map(|p| 2 + p.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>())
        .sum::<usize>();
    let mut out = BytesMut::with_capacity(9 + bag.len() + maps_len + message.body.len());
    out.put_u8(V2);
    out.put_u32(length(bag.len()));
    out.put_slice(bag.as_bytes());
    out.put_u32(length(maps_len));
    put_maps(&mut out, message);
    out.put_slice(&message.body);
    out.freeze()
}

/// Writes the properties and the system properties.
fn put_maps(out: &mut BytesMut, message: &Message) {
    for properties in [&message.properties, &message.system_properties] {
        out.put_u16(u16::try_from(properties.len()).expect("property bags are limited to 256 KiB"));
        for (key, value) in properties.iter() {
            for text in [key, value] {
                out.put_u32(length(text.len()));
                out.put_slice(text.as_bytes());
            }
        }
    }
}

/// A length that fits in the record's u32 fields: messages are limited to 256 KiB.
fn length(len: usize) -> u32 {
    u32::try_from(len).expect("messages are limited to 256 KiB")
}

/// Decodes a stored message. The body shares the record's buffer.
///
/// # Errors
///
/// When the record is damaged or of an unknown format.
pub fn decode(record: &Bytes) -> Result<Message, DecodeError> {
    let mut reader = Reader { record, pos: 0 };
    match reader.u8()? {
        V1 => {}
        V2 => {
            let bag_len = reader.u32()?;
            reader.take(bag_len)?;
            reader.u32()?;
        }
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

/// What a delivery to a module needs of a stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForDelivery<'r> {
    /// The property bag of the module's input topic, percent-encoded.
    pub bag: Cow<'r, str>,
    /// The body, sharing the record's buffer.
    pub body: Bytes,
}

/// Reads the delivery bag and the body of a stored message without decoding its property maps.
/// A version 1 record has no delivery bag: it is decoded and `encode_bag` makes its bag from
/// the properties and system properties.
///
/// # Errors
///
/// When the record is damaged or of an unknown format.
pub fn decode_for_delivery(
    record: &Bytes,
    encode_bag: impl FnOnce(&Properties, &Properties) -> String,
) -> Result<ForDelivery<'_>, DecodeError> {
    let mut reader = Reader { record, pos: 0 };
    if reader.u8()? != V2 {
        let message = decode(record)?;
        return Ok(ForDelivery {
            bag: Cow::Owned(encode_bag(&message.properties, &message.system_properties)),
            body: message.body,
        });
    }
    let bag_len = reader.u32()?;
    let bag = std::str::from_utf8(reader.take(bag_len)?).map_err(|_| DecodeError::NotUtf8)?;
    let maps_len = reader.u32()?;
    reader.take(maps_len)?;
    Ok(ForDelivery {
        bag: Cow::Borrowed(bag),
        body: record.slice(reader.pos..),
    })
}

struct Reader<'r> {
    record: &'r Bytes,
    pos: usize,
}

impl<'r> Reader<'r> {
    fn take(&mut self, n: usize) -> Result<&'r [u8], DecodeError> {
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

    fn u32(&mut self) -> Result<usize, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()?;
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

    /// A stand-in for the MQTT bag encoder: the record only stores what it is given.
    fn bag(properties: &Properties, system_properties: &Properties) -> String {
        properties
            .iter()
            .chain(system_properties.iter())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// A record as this build writes it.
    fn encode_v2(message: &Message) -> Bytes {
        encode(
            message,
            &bag(&message.properties, &message.system_properties),
        )
    }

    /// A record as builds before version 2 wrote it.
    fn encode_v1(message: &Message) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(V1);
        put_maps(&mut out, message);
        out.put_slice(&message.body);
        out.freeze()
    }

    #[test]
    fn a_message_survives_the_round_trip() {
        let m = message();
        assert_eq!(decode(&encode_v2(&m)).unwrap(), m);
    }

    #[test]
    fn records_of_earlier_builds_are_still_read() {
        let m = message();
        let v1 = encode_v1(&m);
        assert_eq!(decode(&v1).unwrap(), m);
        assert_eq!(
            decode_for_delivery(&v1, bag).unwrap(),
            decode_for_delivery(&encode_v2(&m), bag).unwrap()
        );
    }

    #[test]
    fn the_delivery_bag_is_the_bag_of_the_properties() {
        let m = message();
        let record = encode_v2(&m);
        let delivery = decode_for_delivery(&record, |_, _| unreachable!()).unwrap();
        assert_eq!(delivery.bag, bag(&m.properties, &m.system_properties));
        assert!(matches!(delivery.bag, Cow::Borrowed(_)));
        assert_eq!(delivery.body, m.body);
    }

    #[test]
    fn damaged_records_are_errors() {
        for bytes in [encode_v2(&message()), encode_v1(&message())] {
            for cut in 0..bytes.len() - 8 {
                assert!(decode(&bytes.slice(..cut)).is_err(), "cut at {cut}");
                assert!(
                    decode_for_delivery(&bytes.slice(..cut), bag).is_err(),
                    "cut at {cut}"
                );
            }
        }
        assert_eq!(
            decode(&Bytes::from_static(&[9])),
            Err(DecodeError::Version(9))
        );
    }

    proptest! {
        #[test]
        fn decoding_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let bytes = Bytes::from(bytes);
            let _ = decode(&bytes);
            let _ = decode_for_delivery(&bytes, bag);
        }
    }
}
