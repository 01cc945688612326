//! The byte format of a message in the store (`edgehub::record`): decoding any bytes is an
//! error or a message, never a panic; what `encode` writes decodes to the same message.

#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use edgehub::mqtt::topic::encode_bag;
use edgehub::record;
use libfuzzer_sys::fuzz_target;
use router::{Message, Properties};

/// A message as the hub stores it.
#[derive(Debug, Arbitrary)]
struct Written {
    properties: Vec<(String, String)>,
    system_properties: Vec<(String, String)>,
    delivery_bag: String,
    body: Vec<u8>,
}

/// `[0] stored bytes`: bytes read back from a store (damaged, old, or from another build);
/// `[1] ...`: a message, built by `arbitrary`, as the hub stores it.
#[derive(Debug)]
enum Input {
    Stored(Vec<u8>),
    Message(Written),
}

impl Input {
    fn split(data: &[u8]) -> Option<Self> {
        let (&mode, rest) = data.split_first()?;
        if mode & 1 == 0 {
            return Some(Self::Stored(rest.to_vec()));
        }
        let mut u = arbitrary::Unstructured::new(rest);
        Written::arbitrary(&mut u).ok().map(Self::Message)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::split(data) else {
        return;
    };
    match input {
        Input::Stored(bytes) => {
            let bytes = Bytes::from(bytes);
            // Damaged records are errors, never panics. (The two decoders may disagree on a
            // damaged record: `decode` skips the maps' length field, `decode_for_delivery`
            // trusts it.)
            let _ = record::decode(&bytes);
            let _ = record::decode_for_delivery(&bytes, encode_bag);
        }
        Input::Message(Written {
            properties,
            system_properties,
            delivery_bag,
            body,
        }) => {
            let mut message = Message {
                body: Bytes::from(body),
                properties: Properties::new(),
                system_properties: Properties::new(),
            };
            for (k, v) in properties {
                message.properties.insert(k, v);
            }
            for (k, v) in system_properties {
                message.system_properties.insert(k, v);
            }
            let bytes = record::encode(&message, &delivery_bag);
            assert_eq!(record::decode(&bytes).as_ref(), Ok(&message));
            let delivery = record::decode_for_delivery(&bytes, |_, _| {
                unreachable!("a version 2 record carries its bag")
            })
            .expect("a record just written is read back");
            assert_eq!(delivery.bag, delivery_bag);
            assert_eq!(delivery.body, message.body);
        }
    }
});
