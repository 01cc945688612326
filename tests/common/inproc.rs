//! An in-process hub and rumqttc clients, for the black-box tests of the MQTT head.

use std::sync::Arc;
use std::time::Duration;

use edgehub::hub::{Hub, HubSettings};
use edgehub::mqtt::auth::{Authenticator, Credentials, Grant, Identity};
use router::EdgeHubRoutes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::sync::mpsc;

pub const DEVICE: &str = "edge";

/// Accepts `edge/<module>` with the password `key-<module>`.
#[derive(Debug)]
pub struct TestKeys;

impl Authenticator for TestKeys {
    fn authenticate(&self, c: &Credentials<'_>) -> Result<Grant, String> {
        let (device, module) = c.client_id.split_once('/').ok_or("not a module")?;
        if device != DEVICE || c.password != Some(&format!("key-{module}")) {
            return Err("bad credentials".to_owned());
        }
        Ok(Grant {
            identity: Identity {
                device_id: device.to_owned(),
                module_id: Some(module.to_owned()),
            },
            // Module `brief` holds a token that expires a second after it connects.
            valid_until: (module == "brief")
                .then(|| std::time::SystemTime::now() + Duration::from_secs(1)),
            model_id: None,
            key: None,
        })
    }
}

pub async fn start_hub(data: &std::path::Path, routes: serde_json::Value) -> Hub {
    Hub::start(settings(data, &routes), Arc::new(TestKeys))
        .await
        .unwrap()
}

pub fn settings(data: &std::path::Path, routes: &serde_json::Value) -> HubSettings {
    HubSettings {
        device_id: DEVICE.to_owned(),
        data_dir: data.to_owned(),
        mqtt: Some("127.0.0.1:0".parse().unwrap()),
        mqtts: None,
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        https: None,
        store: store::StoreConfig::new(data.join("store")),
        routes: EdgeHubRoutes::from_desired(&json!({
            "schemaVersion": "1.1",
            "routes": routes,
            "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}
        }))
        .unwrap(),
        connect_timeout: Duration::from_secs(2),
        max_connections: HubSettings::MAX_CONNECTIONS,
        upstream: None,
        desired_version: 1,
        strict_topics: false,
    }
}

pub struct Client {
    pub client: AsyncClient,
    pub incoming: mpsc::UnboundedReceiver<rumqttc::Publish>,
    pub connack: mpsc::UnboundedReceiver<rumqttc::ConnectReturnCode>,
    pub subacks: mpsc::UnboundedReceiver<Vec<rumqttc::SubscribeReasonCode>>,
}

/// Where module `a` publishes its output `out1`.
pub const A_OUT1: &str = "devices/edge/modules/a/messages/events/%24.on=out1";

impl Client {
    /// Publishes at QoS 1 on `topic` (queued in the client; the PUBACK comes later).
    pub async fn send(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Subscribes to the module's inputs and waits for the SUBACK.
    pub async fn subscribe_inputs(&mut self, module: &str) {
        self.client
            .subscribe(
                format!("devices/{DEVICE}/modules/{module}/inputs/#"),
                QoS::AtLeastOnce,
            )
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.subacks.recv())
            .await
            .expect("SUBACK within 5 s");
    }
}

pub fn options(hub: &Hub, module: &str, password: &str) -> MqttOptions {
    let addr = hub.mqtt_addr().unwrap();
    let mut options = MqttOptions::new(
        format!("{DEVICE}/{module}"),
        addr.ip().to_string(),
        addr.port(),
    );
    options.set_credentials(
        format!("hub/{DEVICE}/{module}/?api-version=2021-04-12"),
        password,
    );
    options.set_clean_session(false);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

pub fn connect(options: MqttOptions) -> Client {
    let (client, eventloop) = AsyncClient::new(options, 100);
    let (publishes, incoming) = mpsc::unbounded_channel();
    let (acks, connack) = mpsc::unbounded_channel();
    let (subscribed, subacks) = mpsc::unbounded_channel();
    tokio::spawn(drive(eventloop, publishes, acks, subscribed));
    Client {
        client,
        incoming,
        connack,
        subacks,
    }
}

async fn drive(
    mut eventloop: EventLoop,
    publishes: mpsc::UnboundedSender<rumqttc::Publish>,
    acks: mpsc::UnboundedSender<rumqttc::ConnectReturnCode>,
    subscribed: mpsc::UnboundedSender<Vec<rumqttc::SubscribeReasonCode>>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if publishes.send(p).is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(c))) => {
                let _ = acks.send(c.code);
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let _ = subscribed.send(ack.return_codes);
            }
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                let _ = acks.send(code);
                return;
            }
            Err(_) => return,
        }
    }
}

pub async fn recv(client: &mut Client) -> rumqttc::Publish {
    tokio::time::timeout(Duration::from_secs(10), client.incoming.recv())
        .await
        .expect("a message arrives within 10 s")
        .expect("the client runs")
}
