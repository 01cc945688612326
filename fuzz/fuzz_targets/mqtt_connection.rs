//! The MQTT path through the hub's own handling, after the codec: one client connection
//! served by `edgehub::mqtt::connection::serve` over an in-memory stream, from its CONNECT
//! (credentials checked by the real SAS authenticator against a registry of two identities)
//! through publishes (telemetry with property bags, twin requests, method responses),
//! subscriptions and raw bytes, until the client goes away. The hub around it (store, routes,
//! sessions, twins) is built once per process.

#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use bytes::BytesMut;
use edgehub::identity::{Hostnames, IdentityRegistry};
use edgehub::ingest::{Ingest, InstalledRoutes};
use edgehub::methods::Methods;
use edgehub::metrics::Metrics;
use edgehub::mqtt::auth::SasAuthenticator;
use edgehub::mqtt::connection::{Services, serve};
use edgehub::mqtt::session::Sessions;
use edgehub::twin::Twins;
use libfuzzer_sys::fuzz_target;
use router::{RouteSpec, RouteTable, Ttl};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    Connect, LastWill, Packet, PubAck, Publish, Subscribe, SubscribeFilter, Unsubscribe,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[path = "../common/mod.rs"]
mod common;

const EDGE: &str = "edge";
const GATEWAY: &str = "gateway";

/// The identities a client may connect as: a module of the edge device and a leaf device.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Who {
    Module,
    Device,
}

impl Who {
    fn client_id(self) -> &'static str {
        match self {
            Self::Module => "edge/filter",
            Self::Device => "leaf",
        }
    }

    /// The topic prefix of its telemetry (its own, or another identity's with `other`).
    fn telemetry(self) -> &'static str {
        match self {
            Self::Module => "devices/edge/modules/filter/messages/events/",
            Self::Device => "devices/leaf/messages/events/",
        }
    }
}

struct Fixture {
    services: Arc<Services>,
    /// A valid SAS token for each identity, for ten years.
    module_token: String,
    device_token: String,
    _identity_changes: tokio::sync::watch::Sender<u64>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = common::scratch_dir("mqtt_connection");
        let hostnames = Hostnames {
            iothub: "hub.azure-devices.net".to_owned(),
            gateway: GATEWAY.to_owned(),
        };
        let registry = IdentityRegistry::open(&dir.join("identities"), EDGE).expect("a registry");
        let module = registry.add_module("filter").expect("a module");
        let device = registry.add_device("leaf").expect("a device");
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            + 10 * 365 * 24 * 3600;
        let module_token = edgehub::sas::sign(
            &format!("{GATEWAY}/devices/edge/modules/filter"),
            &module.primary_key,
            expiry,
        );
        let device_token =
            edgehub::sas::sign(&format!("{GATEWAY}/devices/leaf"), &device.primary_key, expiry);

        // A store that does not fsync each message and drops the oldest past 64 MiB: the
        // fuzzer publishes millions of messages nobody reads.
        let store_config = store::StoreConfig::new(dir.join("store"))
            .with_durability(store::Durability::Periodic {
                interval: Duration::from_millis(100),
            })
            .with_quota(store::Quota {
                max_store_bytes: Some(64 << 20),
                min_free_disk_bytes: None,
                policy: store::QuotaPolicy::DropOldest,
            });
        let store = Arc::new(store::Store::open(store_config).expect("a store"));
        let metrics = Arc::new(Metrics::default());
        let ingest = Ingest::new(EDGE.to_owned(), Arc::clone(&store), Arc::clone(&metrics));
        let route = |name: &str, text: &str| RouteSpec {
            name: name.to_owned(),
            text: text.to_owned(),
            priority: router::DEFAULT_PRIORITY,
            ttl_secs: 0,
        };
        let table = RouteTable::new(
            &[
                route("all", "FROM /messages/* INTO $upstream"),
                route(
                    "hot",
                    "FROM /messages/modules/filter/outputs/* WHERE $body.temperature > 30 OR level = 'high' INTO BrokeredEndpoint(\"/modules/sink/inputs/in\")",
                ),
                route("twins", "FROM /twinChangeNotifications INTO $upstream"),
            ],
            Ttl::Secs(60),
        )
        .expect("the routes load");
        ingest.install(InstalledRoutes::resolve(table, EDGE, &store).expect("the endpoints"));
        // Identities never change here; the sender lives as long as the process.
        let identity_changes = tokio::sync::watch::Sender::new(0);
        let services = Services {
            ingest: Arc::new(ingest),
            sessions: Arc::new(Sessions::new(None)),
            auth: Arc::new(SasAuthenticator::new(registry, hostnames)),
            twins: Arc::new(Twins::new(dir.join("twins"))),
            methods: Arc::new(Methods::default()),
            metrics,
            connect_timeout: Duration::from_secs(5),
            strict_topics: false,
            identity_changes: identity_changes.subscribe(),
            mirror: None,
        };
        Fixture {
            services: Arc::new(services),
            _identity_changes: identity_changes,
            module_token,
            device_token,
        }
    })
}

/// A topic: one of the hub's, with the fuzzer's property bag, request id or status, or any text.
#[derive(Debug, Arbitrary)]
enum Topic {
    /// The client's own telemetry topic (a module's output when `output` is set).
    Telemetry {
        output: Option<String>,
        bag: String,
    },
    /// Another identity's telemetry topic.
    OtherTelemetry {
        who: Who,
        bag: String,
    },
    TwinGet {
        rid: String,
    },
    TwinPatch {
        rid: String,
    },
    MethodResponse {
        status: String,
        rid: String,
    },
    Text(String),
}

impl Topic {
    fn text(&self, who: Who) -> String {
        match self {
            Self::Telemetry { output, bag } => {
                let output = output
                    .as_ref()
                    .map(|o| format!("$.on={o}&"))
                    .unwrap_or_default();
                format!("{}{output}{bag}", who.telemetry())
            }
            Self::OtherTelemetry { who: other, bag } => {
                let other = match (who, other) {
                    (Who::Module, Who::Module) => "devices/edge/messages/events/",
                    (_, other) => other.telemetry(),
                };
                format!("{other}{bag}")
            }
            Self::TwinGet { rid } => format!("$iothub/twin/GET/?$rid={rid}"),
            Self::TwinPatch { rid } => {
                format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
            }
            Self::MethodResponse { status, rid } => {
                format!("$iothub/methods/res/{status}/?$rid={rid}")
            }
            Self::Text(text) => text.clone(),
        }
    }
}

/// A subscription filter: the ones the SDKs use, or any text.
#[derive(Debug, Arbitrary)]
enum Filter {
    Methods,
    Desired,
    TwinResponses,
    OwnInputs,
    CloudToDevice,
    Everything,
    Text(String),
}

impl Filter {
    fn text(&self, who: Who) -> String {
        match self {
            Self::Methods => "$iothub/methods/POST/#".to_owned(),
            Self::Desired => "$iothub/twin/PATCH/properties/desired/#".to_owned(),
            Self::TwinResponses => "$iothub/twin/res/#".to_owned(),
            Self::OwnInputs => match who {
                Who::Module => "devices/edge/modules/filter/#".to_owned(),
                Who::Device => "devices/leaf/modules/x/#".to_owned(),
            },
            Self::CloudToDevice => format!("devices/{}/messages/devicebound/#", who.client_id()),
            Self::Everything => "#".to_owned(),
            Self::Text(text) => text.clone(),
        }
    }
}

fn qos(n: u8) -> QoS {
    match n % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Publish {
        topic: Topic,
        payload: Vec<u8>,
        qos: u8,
        pkid: u16,
        dup: bool,
        retain: bool,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<(Filter, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<Filter>,
    },
    PubAck(u16),
    PingReq,
    Disconnect,
    SecondConnect,
    /// Bytes that may not be a packet at all.
    Raw(Vec<u8>),
}

/// The CONNECT: valid credentials of `who` by default, each part replaceable.
#[derive(Debug, Arbitrary)]
struct ConnectChoice {
    who: Who,
    client_id: Option<String>,
    /// Replaces the username (`None` inside: no login at all).
    username: Option<Option<String>>,
    /// Appended to the username's properties (`model-id`, `DeviceClientType`, ...).
    username_properties: String,
    password: Option<String>,
    clean_session: bool,
    keep_alive: u16,
    will: Option<(Topic, Vec<u8>, u8)>,
}

#[derive(Debug, Arbitrary)]
enum Start {
    Connect(ConnectChoice),
    /// Bytes instead of a CONNECT.
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
struct Input {
    start: Start,
    ops: Vec<Op>,
}

fn write(packet: Packet, out: &mut BytesMut) {
    // A packet the codec refuses to write is one a client could not send either.
    let _ = packet.write(out, usize::MAX);
}

fn connect_packet(choice: &ConnectChoice, fixture: &Fixture) -> Connect {
    let who = choice.who;
    let mut connect = Connect::new(
        choice
            .client_id
            .clone()
            .unwrap_or(who.client_id().to_owned()),
    );
    connect.clean_session = choice.clean_session;
    connect.keep_alive = choice.keep_alive;
    let username = match &choice.username {
        Some(username) => username.clone(),
        None => Some(format!(
            "{GATEWAY}/{}/?api-version=2021-04-12&{}",
            who.client_id(),
            choice.username_properties
        )),
    };
    let password = choice.password.clone().unwrap_or_else(|| match who {
        Who::Module => fixture.module_token.clone(),
        Who::Device => fixture.device_token.clone(),
    });
    if let Some(username) = username {
        connect.set_login(username, password);
    }
    connect.last_will = choice
        .will
        .as_ref()
        .map(|(topic, payload, q)| LastWill::new(topic.text(who), payload.clone(), qos(*q), false));
    connect
}

/// The bytes the client sends.
fn client_bytes(input: &Input, fixture: &Fixture) -> (Vec<u8>, Who) {
    let mut out = BytesMut::new();
    let who = match &input.start {
        Start::Connect(choice) => {
            write(Packet::Connect(connect_packet(choice, fixture)), &mut out);
            choice.who
        }
        Start::Raw(bytes) => {
            out.extend_from_slice(bytes);
            Who::Module
        }
    };
    for op in &input.ops {
        match op {
            Op::Publish {
                topic,
                payload,
                qos: q,
                pkid,
                dup,
                retain,
            } => {
                let mut publish = Publish::new(topic.text(who), qos(*q), payload.clone());
                publish.pkid = *pkid;
                publish.dup = *dup;
                publish.retain = *retain;
                write(Packet::Publish(publish), &mut out);
            }
            Op::Subscribe { pkid, filters } => {
                let mut subscribe = Subscribe::new_many(
                    filters
                        .iter()
                        .map(|(f, q)| SubscribeFilter::new(f.text(who), qos(*q))),
                );
                subscribe.pkid = *pkid;
                write(Packet::Subscribe(subscribe), &mut out);
            }
            Op::Unsubscribe { pkid, filters } => {
                let mut unsubscribe = Unsubscribe::new("");
                unsubscribe.topics = filters.iter().map(|f| f.text(who)).collect();
                unsubscribe.pkid = *pkid;
                write(Packet::Unsubscribe(unsubscribe), &mut out);
            }
            Op::PubAck(pkid) => write(Packet::PubAck(PubAck::new(*pkid)), &mut out),
            Op::PingReq => write(Packet::PingReq, &mut out),
            Op::Disconnect => write(Packet::Disconnect, &mut out),
            Op::SecondConnect => write(Packet::Connect(Connect::new(who.client_id())), &mut out),
            Op::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
    (out.to_vec(), who)
}

/// Keeps the twin of `who` small across inputs: deletes its reported properties once there
/// are many (the fuzzer's patches would otherwise pile up in one twin for the whole run).
fn trim_twin(services: &Services, who: Who) {
    let client_id = who.client_id();
    let Ok(twin) = services.twins.get(client_id) else {
        return;
    };
    let Some(reported) = twin["reported"].as_object() else {
        return;
    };
    if reported.len() > 32 || twin.to_string().len() > 16 * 1024 {
        let nulls: serde_json::Map<String, serde_json::Value> = reported
            .keys()
            .filter(|k| !k.starts_with('$'))
            .map(|k| (k.clone(), serde_json::Value::Null))
            .collect();
        let _ = services.twins.patch_reported(
            client_id,
            serde_json::Value::Object(nulls).to_string().as_bytes(),
        );
    }
}

fuzz_target!(|input: Input| {
    let fixture = fixture();
    let (bytes, who) = client_bytes(&input, fixture);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (mut from_hub, mut to_hub) = tokio::io::split(client);
        let services = Arc::clone(&fixture.services);
        let deadline = tokio::time::Instant::now() + services.connect_timeout;
        let hub = serve(server, services, deadline);
        let sender = async {
            let _ = to_hub.write_all(&bytes).await;
            // The client goes away once it has said everything.
            let _ = to_hub.shutdown().await;
        };
        let receiver = async {
            let mut answers = Vec::new();
            let _ = from_hub.read_to_end(&mut answers).await;
        };
        let served = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(hub, sender, receiver)
        })
        .await;
        assert!(
            served.is_ok(),
            "the connection was still served 10 s after its client went away"
        );
    });
    trim_twin(&fixture.services, who);
});
