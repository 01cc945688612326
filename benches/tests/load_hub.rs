//! The load generator end to end against an in-process hub (plain MQTT listener, the real SAS
//! authenticator over an identity store in a temporary folder, routes from the generator's
//! own deployment manifest).

use std::num::NonZeroU64;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edgehub::hub::{Hub, HubSettings};
use edgehub::identity::{Hostnames, IdentityRegistry};
use edgehub::mqtt::auth::SasAuthenticator;
use edgehub_benches::load::{self, Auth, Endpoint, HubModules, Report, Settings, Topology};
use rumqttc::QoS;
use serde_json::{Map, Value};

const DEVICE: &str = "edge";
const IOTHUB: &str = "load-test.azure-devices.net";

/// A hub whose routes are `routes`, and the generator's modules' identities in its store.
async fn start_hub(
    dir: &Path,
    routes: Map<String, Value>,
    clients: &[String],
) -> (Hub, HubModules) {
    start_hub_with(dir, routes, clients, None).await
}

/// As [`start_hub`], with an MQTT over TLS listener when `tls` is given.
async fn start_hub_with(
    dir: &Path,
    routes: Map<String, Value>,
    clients: &[String],
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (Hub, HubModules) {
    let identities = IdentityRegistry::open(dir, DEVICE).expect("the identity store opens");
    let modules = HubModules::from_store(&identities, DEVICE, IOTHUB, clients)
        .expect("the load modules get identities");
    let desired = load::topology::edge_hub_desired(routes);
    let settings = HubSettings {
        device_id: DEVICE.to_owned(),
        data_dir: dir.to_owned(),
        mqtt: Some(([127, 0, 0, 1], 0).into()),
        mqtts: tls.map(|tls| (([127, 0, 0, 1], 0).into(), tls)),
        metrics: None,
        https: None,
        store: store::StoreConfig::new(dir.join("store")),
        routes: router::EdgeHubRoutes::from_desired(&desired).expect("the routes are valid"),
        connect_timeout: Duration::from_secs(5),
        max_connections: HubSettings::MAX_CONNECTIONS,
        upstream: None,
        desired_version: 1,
        strict_topics: false,
    };
    let hostnames = Hostnames {
        iothub: IOTHUB.to_owned(),
        gateway: "localhost".to_owned(),
    };
    let auth = Arc::new(SasAuthenticator::new(identities, hostnames));
    let hub = Hub::start(settings, auth).await.expect("the hub starts");
    (hub, modules)
}

fn settings(hub: &Hub, modules: HubModules, topology: Topology, clients: (u32, u32)) -> Settings {
    let addr = hub.mqtt_addr().expect("the hub listens for MQTT");
    Settings {
        scenario: "test".to_owned(),
        endpoint: Endpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
            tls: None,
        },
        auth: Auth::Hub(modules),
        publishers: clients.0,
        subscribers: clients.1,
        topology,
        messages: 500,
        payload_bytes: 256,
        qos: QoS::AtLeastOnce,
        window: 32,
        rate: None,
        timeout: Duration::from_secs(20),
        drain_idle: Duration::from_secs(2),
        progress: false,
    }
}

fn assert_complete(report: &Report) {
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(!report.timed_out, "{report}");
    assert_eq!(report.delivered, report.expected_deliveries, "{report}");
    assert_eq!(
        (report.lost, report.duplicates, report.reordered),
        (0, 0, 0),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_through_the_hub_delivers_every_message_once_in_order() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let clients = load::client_names(1, 3);
    let (hub, modules) = start_hub(dir.path(), Topology::Fanout.hub_routes(1, 3), &clients).await;
    let report = load::run(&settings(&hub, modules, Topology::Fanout, (1, 3)))
        .await
        .expect("the run completes");
    hub.shutdown().await.expect("the hub stops");

    assert_complete(&report);
    assert_eq!(report.published, 500);
    assert_eq!(report.expected_deliveries, 1_500);
    assert_eq!(report.streams.len(), 3);
    assert!(
        report
            .streams
            .iter()
            .all(|s| s.delivered == 500 && s.taken == 500)
    );
    assert!(report.published_per_s > 0.0 && report.delivered_per_s > 0.0);
    assert!(
        report.latency.p50_us > 0.0 && report.latency.p50_us <= report.latency.max_us,
        "{report}"
    );

    // The JSON line carries the figures a script reads.
    let json: Value = serde_json::from_str(&report.json_line().expect("serializes"))
        .expect("the JSON line parses");
    for key in [
        "scenario",
        "published_per_s",
        "delivered_per_s",
        "p50_us",
        "p999_us",
        "lost",
    ] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(json["delivered"], 1_500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_at_a_fixed_rate_take_as_long_as_the_rate_says() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let clients = load::client_names(2, 2);
    let (hub, modules) = start_hub(dir.path(), Topology::Pairs.hub_routes(2, 2), &clients).await;
    let mut settings = settings(&hub, modules, Topology::Pairs, (2, 2));
    settings.messages = 300;
    settings.rate = NonZeroU64::new(1_000);
    let report = load::run(&settings).await.expect("the run completes");
    hub.shutdown().await.expect("the hub stops");

    assert_complete(&report);
    assert_eq!(report.delivered, 600);
    // 600 messages at 1,000 msgs/s: the last is due 599 ms after the start.
    assert!(report.elapsed_s >= 0.599, "{report}");
    assert!(report.published_per_s <= 1_100.0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_a_route_are_reported_lost_for_their_stream_only() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let clients = load::client_names(2, 2);
    // Only publisher 0's route: the hub takes publisher 1's messages and routes them nowhere.
    let mut routes = Topology::Pairs.hub_routes(2, 2);
    routes.remove("load1to1");
    let (hub, modules) = start_hub(dir.path(), routes, &clients).await;
    let mut settings = settings(&hub, modules, Topology::Pairs, (2, 2));
    settings.messages = 200;
    settings.drain_idle = Duration::from_millis(500);
    let report = load::run(&settings).await.expect("the run completes");
    hub.shutdown().await.expect("the hub stops");

    assert!(!report.timed_out, "{report}");
    assert_eq!(report.published, 400);
    assert_eq!(report.delivered, 200);
    assert_eq!(report.lost, 200);
    let lost: Vec<_> = report.streams.iter().map(|s| (s.sender, s.lost)).collect();
    assert_eq!(lost, [(0, 0), (1, 200)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_connects_over_tls_trusting_the_hubs_generated_ca() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    // The hub's generated CA and a server certificate for `localhost`, as `edgehub run` makes them.
    let mut config = edgehub::config::Config::embedded_default(dir.path());
    config.gateway_hostname = "localhost".to_owned();
    let server_tls = edgehub::certs::load_server_tls(&config).expect("certificates are generated");
    let clients = load::client_names(1, 1);
    let (hub, modules) = start_hub_with(
        &config.data_dir,
        Topology::Pairs.hub_routes(1, 1),
        &clients,
        Some(server_tls),
    )
    .await;
    let mut settings = settings(&hub, modules, Topology::Pairs, (1, 1));
    let ca = config.data_dir.join("certs").join("ca.pem");
    settings.endpoint = Endpoint {
        host: "localhost".to_owned(),
        port: hub.mqtts_addr().expect("the hub listens for MQTTS").port(),
        tls: Some(load::connect::tls_trusting(&ca).expect("the CA loads")),
    };
    settings.messages = 200;
    let report = load::run(&settings).await.expect("the run completes");
    hub.shutdown().await.expect("the hub stops");

    assert_complete(&report);
    assert!(report.tls);
    assert_eq!(report.delivered, 200);
}
