//! Upstream between two in-process hubs over TLS: a child forwards what its routes send to
//! `$upstream` to its parent, on behalf of each sender, and rides out the parent's absence.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::eventually;
use common::inproc::{Client, TestKeys, connect, settings};
use edgehub::hub::Hub;
use edgehub::identity::{IdentityRegistry, KeySlot, SymmetricKey};
use edgehub::mqtt::auth::{Authenticator, Credentials, Grant, Identity};
use edgehub::upstream::settings::TOKEN_LIFETIME;
use edgehub::upstream::status::State;
use edgehub::upstream::{ConnectionString, UpstreamSettings};
use rumqttc::MqttOptions;
use serde_json::json;

const CHILD: &str = "child-1";
const IOTHUB: &str = "hub.example.net";
const SENSOR_OUT: &str = "devices/child-1/modules/sensor/messages/events/%24.on=out1";

/// The key of the child's `$edgeHub`, as the parent knows it.
fn edge_hub_key() -> SymmetricKey {
    SymmetricKey::from_bytes(b"the child's edgeHub key, 32 byte".to_vec())
}

/// The parent's authenticator: its own modules with `TestKeys`; the child's identities on
/// behalf of `child-1/$edgeHub` (a token of its key, `auth-chain` naming the child).
#[derive(Debug)]
struct ParentKeys;

impl Authenticator for ParentKeys {
    fn authenticate(&self, c: &Credentials<'_>) -> Result<Grant, String> {
        let username = c.username.ok_or("no username")?;
        if !username.contains("auth-chain=") {
            return TestKeys.authenticate(c);
        }
        let token = edgehub::sas::SasToken::parse(c.password.ok_or("no password")?)
            .map_err(|e| e.to_string())?;
        if token.audience() != format!("{IOTHUB}/devices/{CHILD}/modules/$edgeHub")
            || !token.is_signed_with(&edge_hub_key())
            || token.is_expired(SystemTime::now())
        {
            return Err("not the child's edge hub".to_owned());
        }
        let (device, module) = match c.client_id.split_once('/') {
            Some((d, m)) => (d, Some(m)),
            None => (c.client_id, None),
        };
        if device != CHILD {
            return Err("outside the child's scope".to_owned());
        }
        Ok(Grant {
            identity: Identity {
                device_id: device.to_owned(),
                module_id: module.map(str::to_owned),
            },
            valid_until: Some(token.valid_until()),
            model_id: None,
            key: None,
        })
    }
}

/// IoT Hub as a child without a gateway sees it: `child-1/sensor` logs in with a token of its
/// own key, the username the SDKs send and no `auth-chain`; the counter module with `TestKeys`.
#[derive(Debug)]
struct IotHubKeys {
    sensor_key: SymmetricKey,
}

impl Authenticator for IotHubKeys {
    fn authenticate(&self, c: &Credentials<'_>) -> Result<Grant, String> {
        if c.client_id != format!("{CHILD}/sensor") {
            return TestKeys.authenticate(c);
        }
        let username = format!("{IOTHUB}/{CHILD}/sensor/?api-version=2021-04-12");
        if c.username != Some(username.as_str()) {
            return Err(format!("not the username of the SDKs: {:?}", c.username));
        }
        let token = edgehub::sas::SasToken::parse(c.password.ok_or("no password")?)
            .map_err(|e| e.to_string())?;
        if token.audience() != format!("{IOTHUB}/devices/{CHILD}/modules/sensor")
            || !token.is_signed_with(&self.sensor_key)
            || token.is_expired(SystemTime::now())
        {
            return Err("not a token of the sensor's own key".to_owned());
        }
        Ok(Grant {
            identity: Identity {
                device_id: CHILD.to_owned(),
                module_id: Some("sensor".to_owned()),
            },
            valid_until: Some(token.valid_until()),
            model_id: None,
            key: None,
        })
    }
}

/// A parent hub on `mqtts_port` (0: any) with generated certificates for `localhost`; gives
/// it and its CA's path.
async fn parent(dir: &std::path::Path, mqtts_port: u16) -> (Hub, std::path::PathBuf) {
    parent_with(dir, mqtts_port, Arc::new(ParentKeys)).await
}

/// The same with `auth` deciding who logs in.
async fn parent_with(
    dir: &std::path::Path,
    mqtts_port: u16,
    auth: Arc<dyn Authenticator>,
) -> (Hub, std::path::PathBuf) {
    let certs =
        edgehub::certs::ensure_generated(&dir.join("certs"), "localhost", SystemTime::now())
            .unwrap();
    let tls = edgehub::certs::server_config(&certs.server_chain, &certs.server_key).unwrap();
    let mut settings = settings(
        dir,
        &json!({"fromChild": "FROM /messages/modules/sensor/* INTO BrokeredEndpoint(\"/modules/counter/inputs/in\")"}),
    );
    settings.mqtts = Some((format!("127.0.0.1:{mqtts_port}").parse().unwrap(), tls));
    let hub = Hub::start(settings, auth).await.unwrap();
    (hub, certs.ca_cert)
}

/// A child hub forwarding `sensor`'s output to its parent at `port`.
async fn child(dir: &std::path::Path, port: u16, ca: &std::path::Path) -> Hub {
    child_with(dir, port, ca, |_| {}).await
}

/// A child hub forwarding `sensor`'s output to its parent at `port`, with upstream settings
/// changed by `change` (live data first, short timeouts).
async fn child_with(
    dir: &std::path::Path,
    port: u16,
    ca: &std::path::Path,
    change: impl FnOnce(&mut UpstreamSettings),
) -> Hub {
    let connection_string = ConnectionString::parse(&format!(
        "HostName={IOTHUB};DeviceId={CHILD};ModuleId=$edgeHub;SharedAccessKey={};GatewayHostName=localhost",
        edge_hub_key().to_base64()
    ))
    .unwrap();
    let mut upstream = UpstreamSettings::new(&connection_string, port, Some(ca), None).unwrap();
    change(&mut upstream);
    start_child(dir, upstream).await
}

/// A child hub forwarding `sensor`'s output with `upstream`.
async fn start_child(dir: &std::path::Path, upstream: UpstreamSettings) -> Hub {
    let mut settings = settings(
        dir,
        &json!({"up": "FROM /messages/modules/sensor/* INTO $upstream"}),
    );
    settings.device_id = CHILD.to_owned();
    settings.upstream = Some(upstream);
    Hub::start(settings, Arc::new(ChildKeys)).await.unwrap()
}

/// The child's modules: `child-1/<module>` with the password `key-<module>`.
#[derive(Debug)]
struct ChildKeys;

impl Authenticator for ChildKeys {
    fn authenticate(&self, c: &Credentials<'_>) -> Result<Grant, String> {
        let (device, module) = c.client_id.split_once('/').ok_or("not a module")?;
        if device != CHILD || c.password != Some(&format!("key-{module}")) {
            return Err("bad credentials".to_owned());
        }
        Ok(Grant {
            identity: Identity {
                device_id: device.to_owned(),
                module_id: Some(module.to_owned()),
            },
            valid_until: None,
            model_id: None,
            key: None,
        })
    }
}

fn module_options(hub: &Hub, device: &str, module: &str) -> MqttOptions {
    let addr = hub.mqtt_addr().unwrap();
    let mut options = MqttOptions::new(
        format!("{device}/{module}"),
        addr.ip().to_string(),
        addr.port(),
    );
    options.set_credentials(
        format!("hub/{device}/{module}/?api-version=2021-04-12"),
        format!("key-{module}"),
    );
    options.set_clean_session(false);
    options
}

/// Receives until `n` distinct sequence numbers arrived; gives (distinct in order, duplicates).
async fn count(counter: &mut Client, n: u32, within: Duration) -> (Vec<u32>, u32) {
    let mut arrivals = Arrivals::default();
    arrivals.until(counter, n, within).await;
    (arrivals.order, arrivals.duplicates)
}

/// What a counter received: distinct sequence numbers in their order of arrival, duplicates.
#[derive(Default)]
struct Arrivals {
    seen: std::collections::BTreeSet<u32>,
    order: Vec<u32>,
    duplicates: u32,
}

impl Arrivals {
    /// Receives until `n` distinct sequence numbers arrived in all.
    async fn until(&mut self, counter: &mut Client, n: u32, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.seen.len() < n as usize {
            let got = tokio::time::timeout_at(deadline, counter.incoming.recv())
                .await
                .unwrap_or_else(|_| panic!("{} of {n} arrived in time", self.seen.len()))
                .expect("the counter runs");
            let seq = u32::from_be_bytes(got.payload[..4].try_into().unwrap());
            if self.seen.insert(seq) {
                self.order.push(seq);
            } else {
                self.duplicates += 1;
            }
        }
    }
}

#[tokio::test]
async fn a_child_forwards_on_behalf_of_its_module_and_the_parent_routes_by_the_sender() {
    let (parent_dir, child_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (parent, ca) = parent(parent_dir.path(), 0).await;
    let mut counter = connect(module_options(&parent, "edge", "counter"));
    counter.subscribe_inputs("counter").await;
    let child = child(child_dir.path(), parent.mqtts_addr().unwrap().port(), &ca).await;
    let sensor = connect(module_options(&child, CHILD, "sensor"));
    sensor
        .send(
            "devices/child-1/modules/sensor/messages/events/%24.on=out1&%24.ct=application%2Fjson&level=high",
            0u32.to_be_bytes().to_vec(),
        )
        .await;
    let got = tokio::time::timeout(Duration::from_secs(20), counter.incoming.recv())
        .await
        .expect("forwarded within 20 s")
        .unwrap();
    assert_eq!(
        got.topic,
        "devices/edge/modules/counter/inputs/in/level=high&%24.ct=application%2Fjson&%24.cdid=child-1&%24.cmid=sensor"
    );
    let reported = child.edge_hub_twin();
    assert_eq!(reported["reported"]["upstream"]["state"], "connected");
    // The parent's module can get the message before the child has read the parent's PUBACK:
    // wait (a few seconds at most) for the child's count to catch up.
    let mut metrics = get_metrics(&child).await;
    for _ in 0..50 {
        if metrics.contains("edgehub_upstream_forwarded_total 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = get_metrics(&child).await;
    }
    for line in [
        "edgehub_upstream_connected{state=\"connected\"} 1",
        "edgehub_upstream_links{state=\"connected\"} 1",
        "edgehub_upstream_forwarded_total 1",
        "edgehub_upstream_in_flight 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    drop((sensor, counter));
    child.shutdown().await.unwrap();
    parent.shutdown().await.unwrap();
}

#[tokio::test]
async fn messages_sent_while_the_parent_is_away_arrive_in_order_once_it_is_back() {
    const N: u32 = 300;
    let (parent_dir, child_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, ca) = parent(parent_dir.path(), 0).await;
    let port = first.mqtts_addr().unwrap().port();
    let child = child(child_dir.path(), port, &ca).await;
    let sensor = connect(module_options(&child, CHILD, "sensor"));
    // The parent goes away before anything is sent, and stays away while the child stores.
    first.shutdown().await.unwrap();
    for seq in 0..N {
        sensor
            .send(
                "devices/child-1/modules/sensor/messages/events/%24.on=out1",
                seq.to_be_bytes().to_vec(),
            )
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        child.edge_hub_twin()["reported"]["upstream"]["state"],
        "disconnected"
    );

    let (parent, _) = parent_again(parent_dir.path(), port).await;
    let mut counter = connect(module_options(&parent, "edge", "counter"));
    counter.subscribe_inputs("counter").await;
    let (order, duplicates) = count(&mut counter, N, Duration::from_secs(90)).await;
    assert_eq!(order, (0..N).collect::<Vec<_>>(), "in order, none lost");
    println!("duplicates after the outage: {duplicates}");
    drop((sensor, counter));
    child.shutdown().await.unwrap();
    parent.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_live_data_first_new_messages_overtake_the_backlog_of_an_outage() {
    const BACKLOG: u32 = 4_000;
    const LIVE: u32 = 20;
    const LIVE_BASE: u32 = 1_000_000;
    let (parent_dir, child_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, ca) = parent(parent_dir.path(), 0).await;
    let port = first.mqtts_addr().unwrap().port();
    first.shutdown().await.unwrap();
    let child = child_with(child_dir.path(), port, &ca, |upstream| {
        upstream.live_first = true;
    })
    .await;
    let sensor = connect(module_options(&child, CHILD, "sensor"));
    for seq in 0..BACKLOG {
        sensor.send(SENSOR_OUT, seq.to_be_bytes().to_vec()).await;
    }
    // Everything of the outage is stored before the parent returns.
    let stored = format!("edgehub_upstream_backlog{{priority=\"2000000000\"}} {BACKLOG}");
    let mut metrics = get_metrics(&child).await;
    for _ in 0..300 {
        if metrics.contains(&stored) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        metrics = get_metrics(&child).await;
    }
    assert!(metrics.contains(&stored), "{stored} in\n{metrics}");

    let (parent, _) = parent_again(parent_dir.path(), port).await;
    let mut counter = connect(module_options(&parent, "edge", "counter"));
    counter.subscribe_inputs("counter").await;
    // The backlog starts to leave; what is published now is live.
    let mut arrivals = Arrivals::default();
    arrivals
        .until(&mut counter, 1, Duration::from_secs(60))
        .await;
    assert_eq!(arrivals.order, [0], "the backlog leaves in order");
    // Upstream keeps up once the child has read a PUBACK (the parent's module may get the
    // message a moment before): from then on, new messages are live.
    let mut forwarded = String::new();
    for _ in 0..100 {
        forwarded = get_metrics(&child).await;
        let acknowledged = forwarded
            .lines()
            .find_map(|line| line.strip_prefix("edgehub_upstream_forwarded_total "))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        if acknowledged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !forwarded.contains("edgehub_upstream_forwarded_total 0\n"),
        "{forwarded}"
    );
    for seq in LIVE_BASE..LIVE_BASE + LIVE {
        sensor.send(SENSOR_OUT, seq.to_be_bytes().to_vec()).await;
    }
    arrivals
        .until(&mut counter, BACKLOG + LIVE, Duration::from_secs(120))
        .await;
    let order = &arrivals.order;
    let position = |seq: u32| order.iter().position(|&s| s == seq).unwrap();
    let live: Vec<u32> = order.iter().copied().filter(|&s| s >= LIVE_BASE).collect();
    let backlog: Vec<u32> = order.iter().copied().filter(|&s| s < LIVE_BASE).collect();
    assert_eq!(
        live,
        (LIVE_BASE..LIVE_BASE + LIVE).collect::<Vec<_>>(),
        "live in order"
    );
    assert_eq!(
        backlog,
        (0..BACKLOG).collect::<Vec<_>>(),
        "backlog in order, none lost"
    );
    let last_live = position(LIVE_BASE + LIVE - 1);
    let last_backlog = position(BACKLOG - 1);
    println!(
        "live data first: the last live message arrived {last_live}th of {}, the backlog's last \
         {last_backlog}th; {} duplicates",
        order.len(),
        arrivals.duplicates
    );
    assert!(
        last_live < last_backlog,
        "live messages overtake the backlog ({last_live} < {last_backlog})"
    );
    drop((sensor, counter));
    child.shutdown().await.unwrap();
    parent.shutdown().await.unwrap();
}

/// A parent with its counter module and a child (its upstream settings changed by `change`)
/// with its sensor module, each hub in a folder of its own.
struct Pair {
    parent: Hub,
    child: Hub,
    sensor: Client,
    counter: Client,
    arrivals: Arrivals,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Pair {
    async fn start(change: impl FnOnce(&mut UpstreamSettings)) -> Self {
        let (parent_dir, child_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (parent, ca) = parent(parent_dir.path(), 0).await;
        let mut counter = connect(module_options(&parent, "edge", "counter"));
        counter.subscribe_inputs("counter").await;
        let port = parent.mqtts_addr().unwrap().port();
        let child = child_with(child_dir.path(), port, &ca, change).await;
        let sensor = connect(module_options(&child, CHILD, "sensor"));
        Self {
            parent,
            child,
            sensor,
            counter,
            arrivals: Arrivals::default(),
            _dirs: (parent_dir, child_dir),
        }
    }

    /// The sensor sends `seq`; waits until it arrived at the counter (20 s at most) and gives
    /// what arrived so far.
    async fn forward(&mut self, seq: u32) -> &[u32] {
        self.sensor
            .send(SENSOR_OUT, seq.to_be_bytes().to_vec())
            .await;
        let n = u32::try_from(self.arrivals.seen.len()).unwrap() + 1;
        self.arrivals
            .until(&mut self.counter, n, Duration::from_secs(20))
            .await;
        &self.arrivals.order
    }

    async fn shutdown(self) {
        drop((self.sensor, self.counter));
        self.child.shutdown().await.unwrap();
        self.parent.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_link_renews_its_token_before_it_expires_and_keeps_forwarding() {
    // Tokens live an hour; this child renews a link's a second after it connected.
    let mut pair = Pair::start(|upstream| {
        upstream.renew_before = TOKEN_LIFETIME - Duration::from_secs(1);
    })
    .await;
    pair.forward(0).await;
    // No outage: each new connection of the link is a renewal.
    let status = pair.child.upstream_status();
    eventually(Duration::from_secs(20), "two renewals", || {
        status.reconnects() >= 2
    })
    .await;
    assert_eq!(pair.forward(1).await, [0, 1], "forwarded across renewals");
    pair.shutdown().await;
}

#[tokio::test]
async fn an_idle_link_closes_and_opens_again_for_the_next_message() {
    let mut pair = Pair::start(|upstream| {
        upstream.idle_timeout = Duration::from_secs(1);
    })
    .await;
    pair.forward(0).await;
    let status = pair.child.upstream_status();
    eventually(Duration::from_secs(20), "the idle link closes", || {
        status.state() == State::Idle
    })
    .await;
    assert_eq!(status.link_counts(), (0, 0), "no link open");
    assert_eq!(
        pair.forward(1).await,
        [0, 1],
        "a new link carries the next message"
    );
    assert_eq!(
        pair.child.upstream_status().reconnects(),
        0,
        "closed when idle, not failed"
    );
    pair.shutdown().await;
}

#[tokio::test]
async fn without_a_gateway_each_identity_logs_in_to_iot_hub_with_its_own_key() {
    let (iothub_dir, child_dir, registry_dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let registry = Arc::new(IdentityRegistry::open(registry_dir.path(), CHILD).unwrap());
    let sensor_key = registry
        .add_module("sensor")
        .unwrap()
        .key(KeySlot::Primary)
        .clone();
    let (iothub, ca) = parent_with(iothub_dir.path(), 0, Arc::new(IotHubKeys { sensor_key })).await;
    let mut counter = connect(module_options(&iothub, "edge", "counter"));
    counter.subscribe_inputs("counter").await;
    let connection_string = ConnectionString::parse(&format!(
        "HostName={IOTHUB};DeviceId={CHILD};ModuleId=$edgeHub;SharedAccessKey={}",
        edge_hub_key().to_base64()
    ))
    .unwrap();
    let port = iothub.mqtts_addr().unwrap().port();
    let mut upstream =
        UpstreamSettings::new(&connection_string, port, Some(&ca), Some(registry)).unwrap();
    assert_eq!(upstream.host, IOTHUB, "IoT Hub itself, without a gateway");
    // That name does not resolve here: the stand-in for IoT Hub listens on loopback.
    "localhost".clone_into(&mut upstream.host);
    let child = start_child(child_dir.path(), upstream).await;
    let sensor = connect(module_options(&child, CHILD, "sensor"));
    sensor.send(SENSOR_OUT, 0u32.to_be_bytes().to_vec()).await;
    let got = tokio::time::timeout(Duration::from_secs(20), counter.incoming.recv())
        .await
        .expect("forwarded within 20 s")
        .unwrap();
    assert!(
        got.topic.ends_with("%24.cdid=child-1&%24.cmid=sensor"),
        "sent as child-1/sensor: {}",
        got.topic
    );
    drop((sensor, counter));
    child.shutdown().await.unwrap();
    iothub.shutdown().await.unwrap();
}

/// The parent started again on the same data folder and port.
async fn parent_again(dir: &std::path::Path, port: u16) -> (Hub, std::path::PathBuf) {
    // The port was just released by the stopped hub; binding may need a moment.
    for _ in 0..50 {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    parent(dir, port).await
}

/// The body of `GET /metrics` of `hub`.
async fn get_metrics(hub: &Hub) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(hub.metrics_addr().unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}
