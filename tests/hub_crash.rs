//! Kill the hub with SIGKILL during a QoS 1 stream, start it again: every message that got a
//! PUBACK is delivered (at least once).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgehub::identity::SymmetricKey;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

const HUB_HOST: &str = "test-hub.azure-devices.net";

mod common;
use common::free_port;

struct HubProcess(Child);

impl HubProcess {
    fn start(config: &Path, port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_edgehub"))
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("edgehub starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the hub did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn options(port: u16, connection_string: &str) -> MqttOptions {
    let fields: HashMap<&str, &str> = connection_string
        .split(';')
        .filter_map(|f| f.split_once('='))
        .collect();
    let (device, module) = (fields["DeviceId"], fields["ModuleId"]);
    let key = SymmetricKey::from_base64(fields["SharedAccessKey"]).unwrap();
    let resource = format!("{HUB_HOST}/devices/{device}/modules/{module}");
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = edgehub::sas::sign(&resource, &key, expiry);
    let mut options = MqttOptions::new(format!("{device}/{module}"), "127.0.0.1", port);
    options.set_credentials(
        format!("{HUB_HOST}/{device}/{module}/?api-version=2021-04-12"),
        token,
    );
    options.set_clean_session(false);
    options.set_keep_alive(Duration::from_secs(30));
    options
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt, mqtts) = (free_port(), free_port());
    let manifest = common::manifest(&serde_json::json!({"r": common::SENDER_TO_RECEIVER}), &[]);
    std::fs::write(dir.path().join("deployment.json"), manifest.to_string()).unwrap();
    let config = dir.path().join("edgehub.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"edge\"\niothub_hostname = \"{HUB_HOST}\"\ngateway_hostname = \"localhost\"\n\
             data_dir = \"data\"\nmanifest = \"deployment.json\"\n[listen]\nmqtt = \"127.0.0.1:{mqtt}\"\n\
             mqtts = \"127.0.0.1:{mqtts}\"\nhttps = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let identity = |module: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_edgehub"))
            .args([
                "identity",
                "add",
                "--config",
                config.to_str().unwrap(),
                module,
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (sender_cs, receiver_cs) = (identity("sender"), identity("receiver"));

    // A QoS 1 stream; the hub dies under it.
    let hub = HubProcess::start(&config, mqtt);
    let (client, mut eventloop) = AsyncClient::new(options(mqtt, &sender_cs), 1000);
    let publisher = tokio::spawn(async move {
        for seq in 0u32.. {
            if client
                .publish(
                    "devices/edge/modules/sender/messages/events/%24.on=out1",
                    QoS::AtLeastOnce,
                    false,
                    seq.to_be_bytes().to_vec(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut sent = VecDeque::new();
    let mut in_flight = HashMap::new();
    let mut acked = BTreeSet::new();
    let mut next_seq = 0u32;
    let kill_at = Instant::now() + Duration::from_millis(700);
    let mut hub = Some(hub);
    loop {
        if Instant::now() >= kill_at
            && let Some(hub) = hub.take()
        {
            hub.kill();
        }
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                sent.push_back(next_seq);
                in_flight.insert(pkid, next_seq);
                next_seq += 1;
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                if let Some(seq) = in_flight.remove(&ack.pkid) {
                    acked.insert(seq);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    publisher.abort();
    assert!(hub.is_none(), "the stream ended before the kill");
    assert!(
        !acked.is_empty(),
        "some messages were acknowledged before the kill"
    );

    // Start again; the receiver drains its queue.
    let restart = Instant::now();
    let hub = HubProcess::start(&config, mqtt);
    eprintln!(
        "restarted in {:?}; {} acknowledged of {} sent",
        restart.elapsed(),
        acked.len(),
        sent.len()
    );
    let (receiver, mut eventloop) = AsyncClient::new(options(mqtt, &receiver_cs), 1000);
    receiver
        .subscribe("devices/edge/modules/receiver/inputs/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut received = BTreeSet::new();
    while let Ok(Ok(event)) = tokio::time::timeout(Duration::from_secs(3), eventloop.poll()).await {
        if let Event::Incoming(Packet::Publish(p)) = event {
            received.insert(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
        }
    }
    let lost: Vec<_> = acked.difference(&received).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, e.g. {:?} (acked {}, received {})",
        lost.len(),
        &lost[..lost.len().min(5)],
        acked.len(),
        received.len()
    );
    drop(hub);
}
