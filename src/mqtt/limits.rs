//! What fits on the wire: the size limits of MQTT packets and topics, in and out.

/// The largest packet accepted from or sent to an authenticated client: IoT Hub's 256 KiB
/// message plus room for the topic.
pub const MAX_PACKET: usize = 256 * 1024 + 16 * 1024;

/// The largest first packet (CONNECT) accepted: a connection that has not authenticated yet
/// gets no large buffer. The SDKs' CONNECT is a few hundred bytes (ids, a SAS token, the
/// user agent); a will message is bounded by this as well.
pub const MAX_CONNECT_PACKET: usize = 16 * 1024;

/// The longest topic MQTT can carry: its length is a 16-bit field.
pub const MAX_TOPIC: usize = u16::MAX as usize;

/// The size of a QoS 1 PUBLISH of `topic_len` and `payload_len` bytes, fixed header included.
#[must_use]
pub fn publish_size(topic_len: usize, payload_len: usize) -> usize {
    // Fixed header (at most 5 bytes), topic length (2), packet id (2).
    5 + 2 + topic_len + 2 + payload_len
}

/// Why a message cannot be published to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Undeliverable {
    /// The topic (its property bag included) is longer than MQTT allows.
    #[error("its topic would be {0} bytes; MQTT allows {MAX_TOPIC}")]
    TopicTooLong(usize),
    /// The packet would be larger than the hub sends.
    #[error("its packet would be {0} bytes; at most {MAX_PACKET} are sent")]
    PacketTooLarge(usize),
}

/// Checks that a publication of `topic_len` and `payload_len` bytes can be sent.
///
/// # Errors
///
/// Which limit it breaks.
pub fn check_publish(topic_len: usize, payload_len: usize) -> Result<(), Undeliverable> {
    if topic_len > MAX_TOPIC {
        return Err(Undeliverable::TopicTooLong(topic_len));
    }
    let size = publish_size(topic_len, payload_len);
    if size > MAX_PACKET {
        return Err(Undeliverable::PacketTooLarge(size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_packets_are_checked_against_the_wire_limits() {
        assert!(check_publish(100, 256 * 1024).is_ok());
        assert_eq!(
            check_publish(MAX_TOPIC + 1, 0),
            Err(Undeliverable::TopicTooLong(MAX_TOPIC + 1))
        );
        assert!(matches!(
            check_publish(60_000, 256 * 1024),
            Err(Undeliverable::PacketTooLarge(_))
        ));
    }
}
