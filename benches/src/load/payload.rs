//! The header at the start of every load message: which run, when it was sent, by whom, which
//! one. The rest of the payload is padding up to the message size.
//!
//! Layout (big-endian, [`HEADER_LEN`] bytes): magic `EHLD` (4), run id (4), send time in
//! nanoseconds since the run's [`Clock`](super::clock::Clock) epoch (8), sender index (4),
//! sequence number (8).

use thiserror::Error;

/// Bytes taken by the header; the smallest message size the generator accepts.
pub const HEADER_LEN: usize = 28;

const MAGIC: [u8; 4] = *b"EHLD";
const PADDING: u8 = b'.';

/// What a load message says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The run that sent it: messages of an earlier run (left in a broker's queue) are told apart.
    pub run_id: u32,
    /// When it was sent (or due, at a fixed rate), in ns since the run's clock epoch.
    pub sent_at_ns: u64,
    /// The publisher's index.
    pub sender: u32,
    /// The publisher's sequence number, from 0.
    pub seq: u64,
}

/// A payload that is not a load message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// Fewer bytes than a header.
    #[error("a payload of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// The payload's length.
        len: usize,
    },
    /// The payload does not start with the magic bytes.
    #[error("the payload does not start with the load header's magic bytes")]
    BadMagic,
}

impl Header {
    /// The payload of `size` bytes (at least [`HEADER_LEN`]; a smaller size still gets the
    /// whole header) carrying this header, padded.
    #[must_use]
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let mut payload = Vec::with_capacity(size.max(HEADER_LEN));
        payload.extend_from_slice(&MAGIC);
        payload.extend_from_slice(&self.run_id.to_be_bytes());
        payload.extend_from_slice(&self.sent_at_ns.to_be_bytes());
        payload.extend_from_slice(&self.sender.to_be_bytes());
        payload.extend_from_slice(&self.seq.to_be_bytes());
        payload.resize(size.max(HEADER_LEN), PADDING);
        payload
    }

    /// Reads the header at the start of `payload`.
    ///
    /// # Errors
    ///
    /// When the payload is too short or does not start with the magic bytes.
    pub fn decode(payload: &[u8]) -> Result<Self, PayloadError> {
        let header: &[u8; HEADER_LEN] = payload
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(PayloadError::TooShort { len: payload.len() })?;
        let (magic, rest) = header.split_at(4);
        if magic != MAGIC {
            return Err(PayloadError::BadMagic);
        }
        let (run_id, rest) = rest.split_at(4);
        let (sent_at_ns, rest) = rest.split_at(8);
        let (sender, seq) = rest.split_at(4);
        Ok(Self {
            run_id: u32::from_be_bytes(to_array(run_id)),
            sent_at_ns: u64::from_be_bytes(to_array(sent_at_ns)),
            sender: u32::from_be_bytes(to_array(sender)),
            seq: u64::from_be_bytes(to_array(seq)),
        })
    }
}

/// A slice whose length the caller split exactly, as an array.
fn to_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut array = [0; N];
    array.copy_from_slice(bytes);
    array
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Header = Header {
        run_id: 0xdead_beef,
        sent_at_ns: 1_234_567_890_123,
        sender: 7,
        seq: u64::MAX - 1,
    };

    #[test]
    fn a_header_survives_encode_and_decode_at_every_size() {
        for size in [HEADER_LEN, 29, 256, 4096] {
            let payload = HEADER.encode(size);
            assert_eq!(payload.len(), size);
            assert_eq!(Header::decode(&payload), Ok(HEADER));
        }
    }

    #[test]
    fn padding_fills_the_payload_after_the_header() {
        let payload = HEADER.encode(64);
        assert!(payload[HEADER_LEN..].iter().all(|&b| b == PADDING));
        assert_eq!(&payload[..4], b"EHLD");
    }

    #[test]
    fn a_size_below_the_header_still_carries_the_whole_header() {
        let payload = HEADER.encode(4);
        assert_eq!(payload.len(), HEADER_LEN);
        assert_eq!(Header::decode(&payload), Ok(HEADER));
    }

    #[test]
    fn foreign_payloads_are_refused() {
        assert_eq!(
            Header::decode(b"short"),
            Err(PayloadError::TooShort { len: 5 })
        );
        let mut payload = HEADER.encode(64);
        payload[0] = b'X';
        assert_eq!(Header::decode(&payload), Err(PayloadError::BadMagic));
    }
}
