//! What the hub does with an MQTT client: refuse its credentials, or close its connection.

use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet};

/// Whether the hub refuses these credentials (a CONNACK other than success, or a refused
/// connection); panics when it neither accepts nor refuses within 10 s.
pub async fn refused(options: MqttOptions) -> bool {
    let (_client, mut eventloop) = AsyncClient::new(options, 10);
    match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => ack.code != ConnectReturnCode::Success,
        Ok(Err(rumqttc::ConnectionError::ConnectionRefused(_))) => true,
        other => panic!("neither accepted nor refused: {other:?}"),
    }
}

/// Whether the hub closes the connection of `eventloop` within `within` (its pings keep it
/// busy meanwhile).
pub async fn closed_within(eventloop: &mut EventLoop, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return true,
            Err(_) => return false,
        }
    }
}
