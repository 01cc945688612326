//! A module that publishes sequence numbers and counts its PUBACKs: the hub acknowledges in
//! order, so the count is the acknowledged prefix of what was sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// The publisher; its event loop runs on a task of its own and reconnects by itself.
pub struct Sensor {
    client: AsyncClient,
    acked: Arc<AtomicU32>,
    topic: String,
}

impl Sensor {
    /// Connects with `options`; every message goes to `topic`.
    pub fn connect(options: MqttOptions, topic: &str) -> Self {
        let (client, mut events) = AsyncClient::new(options, 1000);
        let acked = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&acked);
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Self {
            client,
            acked,
            topic: topic.to_owned(),
        }
    }

    /// Publishes `seq` (4 bytes, big endian) at QoS 1.
    pub async fn send(&self, seq: u32) {
        self.client
            .publish(
                self.topic.as_str(),
                QoS::AtLeastOnce,
                false,
                seq.to_be_bytes().to_vec(),
            )
            .await
            .unwrap();
    }

    /// PUBACKs received so far.
    pub fn acked(&self) -> u32 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Waits until `n` messages are acknowledged (30 s at most).
    pub async fn wait_acked(&self, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acked() < n {
            assert!(Instant::now() < deadline, "{n} acknowledged within 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
