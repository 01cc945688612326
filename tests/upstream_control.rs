//! Control from upstream (issue 16) between `edgehub` processes on loopback: a deployment made
//! at the parent reaches a child that has no manifest of its own, and the child's report comes
//! back; desired properties set at the parent reach a module of the child, also when the
//! module or the child was offline; methods invoked at the parent are answered by a module one
//! and two layers down.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::eventually;
use common::hubproc::HubProcess;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const CHILD: &str = "child-1";

/// The parent: it routes the child's sensor (by its original identity) to its module
/// `counter`.
fn parent() -> HubProcess {
    HubProcess::start_device(
        "parent",
        &json!({"fromChild": "FROM /messages/modules/sensor/* INTO BrokeredEndpoint(\"/modules/counter/inputs/in\")"}),
        &["counter"],
        "",
    )
}

/// A hub of device `device`, registered at `parent` as a child edge device, with no manifest
/// of its own (no routes, no modules until the parent deploys).
fn child_of(parent: &HubProcess, device: &str) -> HubProcess {
    let connection_string = parent.identity(&["add", "--edge-device", device]);
    let upstream = format!(
        "[upstream]\nconnection_string = \"{}\"\nport = {}\nhttps_port = {}\nca = \"{}\"\nscope_refresh_secs = 2\n",
        connection_string.trim(),
        parent.mqtts,
        parent.https,
        parent.ca().display()
    );
    HubProcess::start_without_manifest(device, &upstream)
}

/// A deployment manifest with these routes and modules, written in `parent`'s folder.
fn deployment_file(parent: &HubProcess, routes: &Value, modules: &[&str]) -> PathBuf {
    let file = parent.dir.path().join("child-deployment.json");
    std::fs::write(&file, common::manifest(routes, modules).to_string()).unwrap();
    file
}

/// `edgehub deploy --device child-1 <file>` on `parent`: the `$version` of the `$edgeHub`
/// desired properties it kept (those of `$edgeAgent` are kept too).
fn deploy_to_child(parent: &HubProcess, file: &Path) -> u64 {
    let kept: Value =
        serde_json::from_str(&parent.cli(&["deploy", "--device", CHILD, file.to_str().unwrap()]))
            .unwrap();
    assert!(kept["$edgeAgent"]["$version"].is_u64(), "{kept}");
    kept["$edgeHub"]["$version"].as_u64().unwrap()
}

/// `edgehub twin get` of `client_id` on `hub`, parsed.
fn twin(hub: &HubProcess, client_id: &str) -> Value {
    serde_json::from_str(&hub.cli(&["twin", "get", client_id])).unwrap()
}

/// A module connected with `clean_session=0` that answers every direct method with
/// `{"method": <name>, "payload": <payload>}` (status 200) and hands the desired patches it
/// receives to the returned channel. Subscribes once, as the Python SDK does (decision D9).
fn module(options: MqttOptions) -> (AsyncClient, mpsc::UnboundedReceiver<Value>) {
    let (client, mut events) = AsyncClient::new(options, 100);
    let (patches_tx, patches) = mpsc::unbounded_channel();
    let responder = client.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                    for filter in [
                        "$iothub/twin/PATCH/properties/desired/#",
                        "$iothub/methods/POST/#",
                        "$iothub/twin/res/#",
                    ] {
                        let _ = responder.subscribe(filter, QoS::AtLeastOnce).await;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let topic = p.topic.clone();
                    if topic.starts_with("$iothub/twin/PATCH/properties/desired/") {
                        let patch = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if patches_tx.send(patch).is_err() {
                            return;
                        }
                    } else if let Some(rest) = topic.strip_prefix("$iothub/methods/POST/") {
                        let (name, query) = rest.split_once("/?$rid=").unwrap();
                        let payload: Value =
                            serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let answer = json!({"method": name, "payload": payload});
                        let _ = responder
                            .publish(
                                format!("$iothub/methods/res/200/?$rid={query}"),
                                QoS::AtLeastOnce,
                                false,
                                answer.to_string(),
                            )
                            .await;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    (client, patches)
}

/// Waits for a desired patch that sets `key` to `value`.
async fn patch_with(
    patches: &mut mpsc::UnboundedReceiver<Value>,
    key: &str,
    value: &Value,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let patch = tokio::time::timeout_at(deadline, patches.recv())
            .await
            .unwrap_or_else(|_| panic!("a desired patch with {key} = {value} within 30 s"))
            .expect("the module runs");
        if patch.get(key) == Some(value) {
            return patch;
        }
    }
}

/// `edgehub method invoke` of `client_id` on `hub`, parsed; retried while the answer is 404
/// (the module's subscription reaches the parent a moment after it connects).
async fn invoke(hub: &HubProcess, client_id: &str, method: &str, payload: &str) -> Value {
    invoke_waiting(hub, client_id, method, payload, 10).await
}

/// The same, waiting `response_timeout` seconds for each answer.
async fn invoke_waiting(
    hub: &HubProcess,
    client_id: &str,
    method: &str,
    payload: &str,
    response_timeout: u64,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer: Value = serde_json::from_str(&hub.cli(&[
            "method",
            "invoke",
            client_id,
            method,
            payload,
            "--response-timeout",
            &response_timeout.to_string(),
        ]))
        .unwrap();
        if answer["status"] != 404 || tokio::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_at_the_parent_runs_on_the_child_and_its_report_comes_back() {
    let parent = parent();
    let mut child = child_of(&parent, CHILD);
    assert!(
        child
            .log()
            .contains("no manifest of its own: no routes until upstream deploys"),
        "{}",
        child.log()
    );
    let manifest = deployment_file(
        &parent,
        &json!({
            "up": "FROM /messages/modules/sensor/* INTO $upstream",
            "copy": "FROM /messages/modules/sensor/* INTO BrokeredEndpoint(\"/modules/local/inputs/in\")",
        }),
        &["sensor", "local"],
    );

    // A device that is not a child edge device is refused before anything is kept.
    let refused = parent.command(&["deploy", "--device", "stranger", manifest.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a child edge device"));

    let version = deploy_to_child(&parent, &manifest);

    // The child applies it and reports back to the parent.
    eventually(
        Duration::from_secs(30),
        "the child reports the deployment",
        || {
            let reported = &twin(&parent, "child-1/$edgeHub")["reported"];
            reported["lastDesiredVersion"] == version
                && reported["lastDesiredStatus"]["code"] == 200
        },
    )
    .await;
    assert_eq!(
        twin(&parent, "child-1/$edgeHub")["desired"]["routes"]["up"],
        "FROM /messages/modules/sensor/* INTO $upstream"
    );

    // Its routes carry messages: the sensor's output reaches the parent's counter.
    let (counter, mut counted) = receiver(
        parent.module("parent", "counter"),
        "devices/parent/modules/counter/inputs/#",
    );
    let sensor_options = child.module(CHILD, "sensor");
    let sensor = sender(sensor_options.clone());
    assert!(
        publish_until_it_arrives(&sensor, SENSOR_EVENTS, "hello", &mut counted, 30).await,
        "the deployed route carries the sensor's messages to the parent within 30 s"
    );

    // A deployment the child cannot apply is refused whole and reported; its routes stay.
    parent.cli(&[
        "twin",
        "set-desired",
        "child-1/$edgeHub",
        r#"{"routes": {"broken": "FROM /messages/* WHERE INTO $upstream"}}"#,
    ]);
    eventually(
        Duration::from_secs(30),
        "the child reports the refusal",
        || twin(&parent, "child-1/$edgeHub")["reported"]["lastDesiredStatus"]["code"] == 400,
    )
    .await;

    // Restarted while the parent is away, the child starts on what it was last deployed, and
    // its routes carry messages: to its own module at once, and to the parent once it is back.
    // The first clients leave for good first: rumqttc reconnects on its own, and the old
    // counter would take (and acknowledge) the message meant for the new one, the old sensor
    // take over from the new one.
    let _ = sensor.disconnect().await;
    let _ = counter.disconnect().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop((counter, counted, sensor));
    child.terminate();
    let mut parent = parent;
    parent.kill();
    child.spawn();
    assert!(
        child
            .log()
            .contains("starting on the last deployment from upstream"),
        "{}",
        child.log()
    );
    let (_local, mut copied) = receiver(
        child.module(CHILD, "local"),
        "devices/child-1/modules/local/inputs/#",
    );
    let sensor = sender(sensor_options);
    assert!(
        publish_until_it_arrives(&sensor, SENSOR_EVENTS, "offline", &mut copied, 30).await,
        "the restarted child's routes carry the sensor's messages to its module within 30 s\n{}",
        child.log()
    );
    parent.spawn();
    let (_counter, mut counted) = receiver(
        parent.module("parent", "counter"),
        "devices/parent/modules/counter/inputs/#",
    );
    assert!(
        arrives(&mut counted, "offline", 60).await,
        "what the sensor sent while the parent was away reaches it within 60 s of its return\n{}",
        child.log()
    );
}

/// Where the child's module `sensor` sends its telemetry.
const SENSOR_EVENTS: &str = "devices/child-1/modules/sensor/messages/events/";

/// A client that keeps its connection (retrying after failures) until dropped.
fn sender(options: MqttOptions) -> AsyncClient {
    let (client, mut events) = AsyncClient::new(options, 100);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    client
}

/// Whether `body` arrives on `received` within `within_secs` (other bodies are skipped).
async fn arrives(
    received: &mut mpsc::UnboundedReceiver<String>,
    body: &str,
    within_secs: u64,
) -> bool {
    tokio::time::timeout(Duration::from_secs(within_secs), async {
        while let Some(got) = received.recv().await {
            if got == body {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false)
}

/// Publishes `body` on `topic` about once a second until it arrives on `received`; whether it
/// did within `within_secs`.
async fn publish_until_it_arrives(
    sender: &AsyncClient,
    topic: &str,
    body: &str,
    received: &mut mpsc::UnboundedReceiver<String>,
    within_secs: u64,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(within_secs);
    while tokio::time::Instant::now() < deadline {
        // A publication the client cannot take now is sent again at the next turn.
        let _ = sender
            .publish(topic, QoS::AtLeastOnce, false, body.to_owned())
            .await;
        if arrives(received, body, 1).await {
            return true;
        }
    }
    false
}

/// A leaf device of `hub` with a 119-character id (`leaf-{n}-xxx...`), added there, and its
/// connected client ([`sender`]).
fn long_leaf(hub: &HubProcess, n: usize) -> (String, AsyncClient) {
    let id = format!("leaf-{n:03}-{}", "x".repeat(110));
    let connection_string = hub.identity(&["add", "--device", &id]);
    let client = sender(hub.leaf(&id, &connection_string));
    (id, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parent_forgets_clients_that_left_the_child_and_a_big_client_map_is_not_refused() {
    let parent = parent();
    let child = child_of(&parent, CHILD);
    let reported = || twin(&parent, "child-1/$edgeHub")["reported"].clone();

    // A leaf device connects to the child: the parent sees it; it leaves: the parent forgets
    // it (leaf devices that disconnect are removed, spec 4.2).
    let (first, client) = long_leaf(&child, 0);
    eventually(Duration::from_secs(30), "the parent lists the leaf", || {
        reported()["clients"][&first]["status"] == "Connected"
    })
    .await;
    client.disconnect().await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the parent forgets the leaf that left",
        || {
            let reported = reported();
            reported["clients"].is_object() && reported["clients"].get(&first).is_none()
        },
    )
    .await;

    // 220 leaf devices with long ids: about 40 KB of clients, more than the parent's 32 KiB
    // of reported properties. The most recent ones are listed, the others counted.
    let mut leaves = Vec::new();
    for n in 1..=220 {
        leaves.push(long_leaf(&child, n));
    }
    eventually(
        Duration::from_secs(60),
        "the parent lists or counts all 220 leaves",
        || {
            let reported = reported();
            let listed = reported["clients"]
                .as_object()
                .map_or(0, serde_json::Map::len);
            reported["clientsOmitted"]
                .as_u64()
                .is_some_and(|omitted| omitted > 0 && listed as u64 + omitted == 220)
        },
    )
    .await;
    let size = serde_json::to_vec(&reported()).unwrap().len();
    assert!(size <= 32 * 1024, "the parent holds {size} bytes");

    // Reports still get through: a deployment's status reaches the parent.
    let manifest = deployment_file(
        &parent,
        &json!({"up": "FROM /messages/* INTO $upstream"}),
        &[],
    );
    let version = deploy_to_child(&parent, &manifest);
    eventually(
        Duration::from_secs(30),
        "the child's report of the deployment reaches the parent",
        || reported()["lastDesiredVersion"] == version,
    )
    .await;
    assert!(
        !child
            .log()
            .contains("refused the $edgeHub reported properties"),
        "{}",
        child.log()
    );
    drop(leaves);
}

/// A client subscribed to `filter` whose publications' bodies arrive on the returned channel.
fn receiver(
    options: MqttOptions,
    filter: &'static str,
) -> (AsyncClient, mpsc::UnboundedReceiver<String>) {
    let (client, mut events) = AsyncClient::new(options, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let subscriber = client.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                    let _ = subscriber.subscribe(filter, QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx
                        .send(String::from_utf8_lossy(&p.payload).into_owned())
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_properties_and_methods_set_at_the_parent_reach_a_module_of_the_child() {
    let mut parent = parent();
    let mut child = child_of(&parent, CHILD);
    let filter_options = child.module(CHILD, "filter");
    let (filter, mut patches) = module(filter_options.clone());

    // Desired properties set at the parent reach the module.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut threshold = 30;
    let patch = loop {
        // Until the module's subscription is mirrored, the patch waits in the parent's twin
        // and reaches the module when the child reads it: either way it arrives.
        parent.cli(&[
            "twin",
            "set-desired",
            "child-1/filter",
            &json!({"threshold": threshold}).to_string(),
        ]);
        if let Ok(Some(patch)) = tokio::time::timeout(Duration::from_secs(2), patches.recv()).await
        {
            break patch;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a desired patch reaches the module"
        );
        threshold += 1;
    };
    assert!(
        patch["threshold"].is_u64() && patch["$version"].is_u64(),
        "{patch}"
    );

    // A method invoked at the parent is answered by the module.
    let answer = invoke(&parent, "child-1/filter", "reset", r#"{"level": 2}"#).await;
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(
        answer["payload"],
        json!({"method": "reset", "payload": {"level": 2}})
    );
    // A module connected nowhere: 404.
    let nowhere = invoke(&parent, "child-1/ghost", "reset", "{}").await;
    assert_eq!(nowhere["status"], 404, "{nowhere}");
    // A module of the child that gets the call and never answers: 504 at the parent once its
    // response timeout is over, as for a module of its own (the child's wait is not the
    // parent's caller's).
    let (_mute, mut calls) = receiver(child.module(CHILD, "mute"), "$iothub/methods/POST/#");
    let started = tokio::time::Instant::now();
    let silent = invoke_waiting(&parent, "child-1/mute", "reset", r#"{"n": 5}"#, 3).await;
    let waited = started.elapsed();
    assert_eq!(silent["status"], 504, "{silent}");
    assert_eq!(silent["payload"], Value::Null, "{silent}");
    let call = tokio::time::timeout(Duration::from_secs(5), calls.recv())
        .await
        .expect("the call reached the silent module")
        .unwrap();
    assert_eq!(call, r#"{"n":5}"#);
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(20),
        "answered after {waited:?}"
    );

    // What the module reports goes up to the parent's twin.
    filter
        .publish(
            "$iothub/twin/PATCH/properties/reported/?$rid=1",
            QoS::AtLeastOnce,
            false,
            r#"{"temperature": 21}"#,
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the module's report reaches the parent",
        || twin(&parent, "child-1/filter")["reported"]["temperature"] == 21,
    )
    .await;

    // Set while the module is offline: it gets the patch when it reconnects.
    filter.disconnect().await.unwrap();
    drop((filter, patches));
    tokio::time::sleep(Duration::from_secs(1)).await;
    parent.cli(&[
        "twin",
        "set-desired",
        "child-1/filter",
        r#"{"threshold": 40}"#,
    ]);
    let (filter, mut patches) = module(filter_options.clone());
    patch_with(&mut patches, "threshold", &json!(40)).await;

    // Set while the child is offline: the module gets it once the child is back.
    filter.disconnect().await.unwrap();
    drop((filter, patches));
    child.kill();
    parent.cli(&[
        "twin",
        "set-desired",
        "child-1/filter",
        r#"{"threshold": 50}"#,
    ]);
    child.spawn();
    let (filter, mut patches) = module(filter_options);
    patch_with(&mut patches, "threshold", &json!(50)).await;

    // A twin GET while the parent is away is answered from the child's copy.
    parent.kill();
    assert_eq!(twin(&child, "child-1/filter")["desired"]["threshold"], 50);
    drop(filter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_top_deploys_two_layers_down_reaches_a_module_there_and_gets_a_leafs_messages() {
    let top = HubProcess::start_device(
        "top",
        &json!({"fromLeaf": "FROM /messages/* WHERE $connectionDeviceId = 'leaf-9' INTO BrokeredEndpoint(\"/modules/counter/inputs/in\")"}),
        &["counter"],
        "",
    );
    let middle = child_of(&top, "middle");
    top.identity(&["add", "--edge-device", "bottom", "--parent", "middle"]);
    let bottom = child_of(&middle, "bottom");

    // A method invoked at the top is answered by a module two layers down.
    let (_filter, _patches) = module(bottom.module("bottom", "filter"));
    let answer = invoke(&top, "bottom/filter", "ping", r#"{"n": 1}"#).await;
    assert_eq!(answer["status"], 200, "{answer}\n{}", bottom.log());
    assert_eq!(
        answer["payload"],
        json!({"method": "ping", "payload": {"n": 1}})
    );

    // Deployments made at the top reach the middle and, through it, the bottom.
    let upward = top.dir.path().join("upward.json");
    std::fs::write(
        &upward,
        common::manifest(&json!({"up": "FROM /messages/* INTO $upstream"}), &[]).to_string(),
    )
    .unwrap();
    for device in ["middle", "bottom"] {
        top.cli(&["deploy", "--device", device, upward.to_str().unwrap()]);
    }
    for (hub, device) in [(&top, "middle"), (&top, "bottom")] {
        eventually(
            Duration::from_secs(30),
            &format!("{device} reports the deployment"),
            || {
                twin(hub, &format!("{device}/$edgeHub"))["reported"]["lastDesiredStatus"]["code"]
                    == 200
            },
        )
        .await;
    }

    // A leaf device registered only at the top, under the bottom hub, connects to the bottom
    // hub (its identity learned through the middle) and its messages reach the top.
    let leaf = top.identity(&["add", "--device", "leaf-9", "--parent", "bottom"]);
    let (_counter, mut counted) = receiver(
        top.module("top", "counter"),
        "devices/top/modules/counter/inputs/#",
    );
    let leaf = sender(bottom.leaf("leaf-9", &leaf));
    assert!(
        publish_until_it_arrives(
            &leaf,
            "devices/leaf-9/messages/events/",
            "from the bottom",
            &mut counted,
            60
        )
        .await,
        "the leaf's message reaches the top within 60 s\nbottom:\n{}\nmiddle:\n{}",
        bottom.log(),
        middle.log()
    );
}
