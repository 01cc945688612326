//! The operator's side of a running hub, through the real binary: `edgehub twin`,
//! `edgehub deploy`, `edgehub method invoke`, the manifest watcher, and the admin endpoint's
//! answers to bad requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgehub::identity::SymmetricKey;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

const HUB_HOST: &str = "test-hub.azure-devices.net";
const DEVICE: &str = "edge";
mod common;
use common::{SENDER_TO_RECEIVER, free_port};

/// A deployment manifest with these `$edgeHub` routes, for modules `sender` and `receiver`.
fn manifest(routes: &Value) -> Value {
    common::manifest(routes, &["sender", "receiver"])
}

/// A hub in a temporary folder, stopped when dropped (also when the test fails).
struct Hub {
    child: Option<Child>,
    dir: tempfile::TempDir,
    config: PathBuf,
    mqtt: u16,
}

impl Hub {
    /// Writes a configuration and a manifest with one route (sender out1 → receiver in1) and
    /// starts the hub; returns once its admin endpoint answers.
    fn start() -> Self {
        let mut hub = Self::configure(tempfile::tempdir().unwrap());
        hub.launch();
        hub
    }

    /// Starts the hub process (killing a running one first).
    fn launch(&mut self) {
        self.kill();
        let child = Command::new(env!("CARGO_BIN_EXE_edgehub"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("edgehub starts");
        self.child = Some(child);
        let socket = self.path("data/admin.sock");
        common::wait_until(
            Duration::from_secs(30),
            "the admin endpoint answers",
            || std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        );
    }

    /// SIGTERM; the exit status, within 20 s.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the hub runs");
        common::terminate(&mut child)
    }

    /// SIGKILL: the hub leaves its socket file behind.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The configuration and manifest of a hub that is not started.
    fn configure(dir: tempfile::TempDir) -> Self {
        let mqtt = free_port();
        let mqtts = free_port();
        std::fs::write(
            dir.path().join("deployment.json"),
            manifest(&json!({"senderToReceiver": SENDER_TO_RECEIVER})).to_string(),
        )
        .unwrap();
        let config = dir.path().join("edgehub.toml");
        std::fs::write(
            &config,
            format!(
                "device_id = \"{DEVICE}\"\niothub_hostname = \"{HUB_HOST}\"\n\
                 gateway_hostname = \"localhost\"\ndata_dir = \"data\"\n\
                 manifest = \"deployment.json\"\n[listen]\nmqtt = \"127.0.0.1:{mqtt}\"\n\
                 mqtts = \"127.0.0.1:{mqtts}\"\nhttps = \"127.0.0.1:0\"\n"
            ),
        )
        .unwrap();
        Self {
            child: None,
            dir,
            config,
            mqtt,
        }
    }

    /// Runs `edgehub <args> --config <this hub's config>`.
    fn edgehub(&self, args: &[&str]) -> Output {
        let (command, rest) = args.split_at(if args[0] == "deploy" { 1 } else { 2 });
        Command::new(env!("CARGO_BIN_EXE_edgehub"))
            .args(command)
            .arg("--config")
            .arg(&self.config)
            .args(rest)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; its stdout as JSON.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.edgehub(args);
        assert!(
            out.status.success(),
            "edgehub {args:?} exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The `$edgeHub` reported properties.
    fn edge_hub_reported(&self) -> Value {
        self.json(&["twin", "get", "$edgeHub"])["reported"].clone()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// MQTT options for a module of this hub (its identity is created if needed).
    fn module(&self, module: &str) -> MqttOptions {
        let out = self.edgehub(&["identity", "add", module]);
        assert!(out.status.success());
        let connection_string = String::from_utf8(out.stdout).unwrap();
        let fields: HashMap<&str, &str> = connection_string
            .trim()
            .split(';')
            .filter_map(|f| f.split_once('='))
            .collect();
        let key = SymmetricKey::from_base64(fields["SharedAccessKey"]).unwrap();
        let resource = format!("{HUB_HOST}/devices/{DEVICE}/modules/{module}");
        let expiry = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let mut options = MqttOptions::new(format!("{DEVICE}/{module}"), "127.0.0.1", self.mqtt);
        options.set_credentials(
            format!("{HUB_HOST}/{DEVICE}/{module}/?api-version=2021-04-12"),
            edgehub::sas::sign(&resource, &key, expiry),
        );
        options.set_keep_alive(Duration::from_secs(30));
        options
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `eventloop` until a publish arrives (or `timeout` passes).
async fn next_publish(eventloop: &mut EventLoop, timeout: Duration) -> Option<rumqttc::Publish> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => return Some(p),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("MQTT connection failed: {e}"),
            Err(_) => return None,
        }
    }
}

/// Sends one message on `sender`'s `output` and returns the delivery of that message (its
/// body) to `receiver`, if it comes within a few seconds. Earlier messages redelivered because
/// an earlier receiver left before acknowledging them are skipped.
async fn route_one(hub: &Hub, output: &str, body: &str) -> Option<rumqttc::Publish> {
    let (receiver, mut receiver_loop) = AsyncClient::new(hub.module("receiver"), 10);
    receiver
        .subscribe(
            format!("devices/{DEVICE}/modules/receiver/inputs/#"),
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    // Wait for the SUBACK so that the message is not published before the subscription.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), receiver_loop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
            Ok(Ok(_)) => {}
            other => panic!("the receiver did not subscribe: {other:?}"),
        }
    }
    let (sender, mut sender_loop) = AsyncClient::new(hub.module("sender"), 10);
    sender
        .publish(
            format!("devices/{DEVICE}/modules/sender/messages/events/%24.on={output}"),
            QoS::AtLeastOnce,
            false,
            body.as_bytes().to_vec(),
        )
        .await
        .unwrap();
    let pump = tokio::spawn(async move { while sender_loop.poll().await.is_ok() {} });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let got = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_publish(&mut receiver_loop, left).await {
            Some(p) if p.payload.as_ref() != body.as_bytes() => {}
            other => break other,
        }
    };
    pump.abort();
    // Let the acknowledgement out before leaving.
    let _ = receiver.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while receiver_loop.poll().await.is_ok() {}
    })
    .await;
    got
}

#[test]
fn desired_properties_set_with_the_cli_are_read_back() {
    let hub = Hub::start();
    let set = |patch: &str| hub.json(&["twin", "set-desired", "filter", patch]);
    let first = set(r#"{"threshold": 30, "mode": "a"}"#);
    assert_eq!(first, json!({"$version": 2}));
    let second = set(r#"{"mode": null, "unit": {"c": true}}"#);
    assert_eq!(second, json!({"$version": 3}));
    let twin = hub.json(&["twin", "get", "filter"]);
    assert_eq!(
        twin["desired"],
        json!({"$version": 3, "threshold": 30, "unit": {"c": true}}),
        "{twin}"
    );
    assert_eq!(twin["reported"]["$version"], 1, "{twin}");

    // A leaf device, with --device.
    assert_eq!(
        hub.json(&[
            "twin",
            "set-desired",
            "--device",
            "leaf-1",
            r#"{"interval": 5}"#
        ]),
        json!({"$version": 2})
    );
    assert_eq!(
        hub.json(&["twin", "get", "--device", "leaf-1"])["desired"]["interval"],
        5
    );

    // Refused input: exit 2 and a reason.
    let not_object = hub.edgehub(&["twin", "set-desired", "filter", "[1]"]);
    assert_eq!(not_object.status.code(), Some(2));
    assert!(
        stderr(&not_object).contains("JSON object"),
        "{}",
        stderr(&not_object)
    );
    let bad_name = hub.edgehub(&["twin", "set-desired", "filter", r#"{"a.b": 1}"#]);
    assert_eq!(bad_name.status.code(), Some(2));
    assert!(stderr(&bad_name).contains("a.b"), "{}", stderr(&bad_name));
    let bad_module = hub.edgehub(&["twin", "get", "$nope"]);
    assert_eq!(bad_module.status.code(), Some(2));
    // Nothing changed.
    assert_eq!(
        hub.json(&["twin", "get", "filter"])["desired"]["$version"],
        3
    );
}

#[test]
fn the_edge_hub_twin_reports_the_running_deployment() {
    let hub = Hub::start();
    let reported = hub.edge_hub_reported();
    assert_eq!(reported["schemaVersion"], "1.0", "{reported}");
    assert_eq!(
        reported["lastDesiredStatus"],
        json!({"code": 200, "description": ""}),
        "{reported}"
    );
    assert_eq!(reported["lastDesiredVersion"], 1, "{reported}");
    assert!(
        reported["version"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{reported}"
    );
    let set = hub.edgehub(&["twin", "set-desired", "$edgeHub", r#"{"a": 1}"#]);
    assert_eq!(
        set.status.code(),
        Some(2),
        "$edgeHub is configured by deployments"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_refuses_bad_routes_and_applies_good_ones_live() {
    let hub = Hub::start();
    let bad = manifest(&json!({
        "senderToReceiver": SENDER_TO_RECEIVER,
        "brokenRoute": "FROM /messages/* INTO nowhere",
    }));
    std::fs::write(hub.path("bad.json"), bad.to_string()).unwrap();
    let out = hub.edgehub(&["deploy", hub.path("bad.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("brokenRoute"), "{}", stderr(&out));
    // Nothing was sent: the running deployment stays, and so do its routes.
    let reported = hub.edge_hub_reported();
    assert_eq!(reported["lastDesiredVersion"], 1, "{reported}");
    assert_eq!(reported["lastDesiredStatus"]["code"], 200, "{reported}");
    let got = route_one(&hub, "out1", "before").await;
    assert_eq!(got.map(|p| p.payload.to_vec()), Some(b"before".to_vec()));

    // A valid deployment with a new route applies at once.
    let mut good = manifest(&json!({
        "senderToReceiver": SENDER_TO_RECEIVER,
        "second": "FROM /messages/modules/sender/outputs/out2 INTO BrokeredEndpoint(\"/modules/receiver/inputs/in2\")",
    }));
    good["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["newcomer"] = json!({});
    std::fs::write(hub.path("good.json"), good.to_string()).unwrap();
    let outcome = hub.json(&["deploy", hub.path("good.json").to_str().unwrap()]);
    assert_eq!(
        outcome,
        json!({"lastDesiredVersion": 2, "lastDesiredStatus": {"code": 200, "description": ""}})
    );
    assert_eq!(hub.edge_hub_reported()["lastDesiredVersion"], 2);
    let identities = hub.edgehub(&["identity", "list"]);
    assert!(
        String::from_utf8_lossy(&identities.stdout).contains("newcomer  module"),
        "the deployment's new module has an identity"
    );
    let got = route_one(&hub, "out2", "after")
        .await
        .expect("out2 is routed");
    assert!(got.topic.contains("/inputs/in2/"), "{}", got.topic);
    assert_eq!(got.payload.as_ref(), b"after");

    // Every bad route is named, a malformed entry and a route that does not compile alike.
    let two_bad = manifest(&json!({
        "badPriority": {"route": SENDER_TO_RECEIVER, "priority": 12},
        "badSink": "FROM /messages/* INTO nowhere",
    }));
    std::fs::write(hub.path("two_bad.json"), two_bad.to_string()).unwrap();
    let out = hub.edgehub(&["deploy", hub.path("two_bad.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    for name in ["badPriority", "badSink"] {
        assert!(stderr(&out).contains(name), "{name}: {}", stderr(&out));
    }

    // A manifest without $edgeHub, and a missing file.
    std::fs::write(hub.path("empty.json"), r#"{"modulesContent": {}}"#).unwrap();
    let out = hub.edgehub(&["deploy", hub.path("empty.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = hub.edgehub(&["deploy", hub.path("missing.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

/// Polls the `$edgeHub` reported properties until `done` holds (at most 20 s).
fn wait_for_reported(hub: &Hub, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reported = hub.edge_hub_reported();
        if done(&reported) {
            return reported;
        }
        assert!(
            Instant::now() < deadline,
            "the manifest change was not applied within 20 s: {reported}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_manifest_file_is_deployed_and_a_bad_one_reported() {
    let hub = Hub::start();
    let manifest_file = hub.path("deployment.json");
    let bad = manifest(&json!({
        "senderToReceiver": SENDER_TO_RECEIVER,
        "brokenRoute": "FROM /messages/* INTO nowhere",
    }));
    std::fs::write(&manifest_file, bad.to_string()).unwrap();
    let reported = wait_for_reported(&hub, |r| r["lastDesiredStatus"]["code"] == 400);
    let description = reported["lastDesiredStatus"]["description"]
        .as_str()
        .unwrap();
    assert!(description.contains("brokenRoute"), "{reported}");
    assert_eq!(reported["lastDesiredVersion"], 2, "{reported}");
    // The running routes stay.
    let got = route_one(&hub, "out1", "still routed").await;
    assert_eq!(
        got.map(|p| p.payload.to_vec()),
        Some(b"still routed".to_vec())
    );

    // Fixed: applied, version 3.
    std::fs::write(
        &manifest_file,
        manifest(&json!({"senderToReceiver": SENDER_TO_RECEIVER, "toCloud": "FROM /messages/* INTO $upstream"}))
            .to_string(),
    )
    .unwrap();
    let reported = wait_for_reported(&hub, |r| r["lastDesiredStatus"]["code"] == 200);
    assert_eq!(reported["lastDesiredVersion"], 3, "{reported}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_reach_connected_modules_and_absent_ones_give_404() {
    let hub = Hub::start();
    let absent = hub.json(&["method", "invoke", "filter", "reset", r#"{"level": 2}"#]);
    assert_eq!(absent, json!({"status": 404, "payload": null}));

    // A module that answers every method with 201 and the request's payload.
    let (client, mut eventloop) = AsyncClient::new(hub.module("receiver"), 10);
    client
        .subscribe("$iothub/methods/POST/#", QoS::AtMostOnce)
        .await
        .unwrap();
    let responder = tokio::spawn(async move {
        while let Some(request) = next_publish(&mut eventloop, Duration::from_secs(60)).await {
            let rid = request.topic.rsplit("$rid=").next().unwrap().to_owned();
            let payload: Value = serde_json::from_slice(&request.payload).unwrap();
            client
                .publish(
                    format!("$iothub/methods/res/201/?$rid={rid}"),
                    QoS::AtMostOnce,
                    false,
                    json!({"echo": payload, "topic": request.topic}).to_string(),
                )
                .await
                .unwrap();
        }
    });
    let config = hub.config.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_edgehub"))
            .args(["method", "invoke", "--config"])
            .arg(config)
            .args([
                "receiver",
                "echo",
                r#"{"hello": "world"}"#,
                "--connect-timeout",
                "20",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    responder.abort();
    assert!(out.status.success(), "{}", stderr(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], 201, "{result}");
    assert_eq!(
        result["payload"]["echo"],
        json!({"hello": "world"}),
        "{result}"
    );
    assert!(
        result["payload"]["topic"]
            .as_str()
            .unwrap()
            .starts_with("$iothub/methods/POST/echo/?$rid="),
        "{result}"
    );

    // $edgeHub's own method, and refused input.
    assert_eq!(
        hub.json(&[
            "method",
            "invoke",
            "$edgeHub",
            "RefreshDeviceScopeIdentityCache",
            "{}"
        ])["status"],
        200
    );
    let bad_payload = hub.edgehub(&["method", "invoke", "filter", "reset", "{nope"]);
    assert_eq!(bad_payload.status.code(), Some(2));
    let bad_timeout = hub.edgehub(&[
        "method",
        "invoke",
        "filter",
        "reset",
        "--response-timeout",
        "100000",
    ]);
    assert_eq!(bad_timeout.status.code(), Some(2));
    assert!(
        stderr(&bad_timeout).contains("responseTimeoutInSeconds"),
        "{}",
        stderr(&bad_timeout)
    );
}

#[test]
fn commands_without_a_running_hub_say_so() {
    let hub = Hub::configure(tempfile::tempdir().unwrap());
    for args in [
        &["twin", "get", "filter"][..],
        &["twin", "set-desired", "filter", "{}"],
        &["method", "invoke", "filter", "reset", "{}"],
    ] {
        let out = hub.edgehub(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("no hub runs"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

/// Sends raw bytes to the admin socket and returns the status of the answer.
fn raw_status(socket: &Path, request: &[u8]) -> u16 {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The hub may answer (and stop reading) before the whole body is written.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

#[test]
fn the_admin_endpoint_refuses_bad_requests_with_client_errors() {
    let hub = Hub::start();
    let socket = hub.path("data/admin.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the socket is the owner's only");
    let request = |head: &str, body: &[u8]| {
        let mut bytes = format!(
            "{head}\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        raw_status(&socket, &bytes)
    };
    let large = vec![b' '; edgehub::admin::MAX_BODY + 1];
    assert_eq!(
        request(
            "PATCH /twins/edge%2Ffilter/properties/desired HTTP/1.1",
            &large
        ),
        413
    );
    assert_eq!(request("POST /deployment HTTP/1.1", &large), 413);
    // Larger than allowed without a declared length.
    let mut chunked = b"POST /deployment HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 65536).as_bytes());
        chunked.extend_from_slice(&[b' '; 65536]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw_status(&socket, &chunked), 413);
    assert_eq!(request("GET /nothing HTTP/1.1", b""), 404);
    assert_eq!(request("DELETE /twins/edge HTTP/1.1", b""), 405);
    assert_eq!(request("GET /twins/a%20b HTTP/1.1", b""), 400);
    assert_eq!(
        request(
            "PATCH /twins/edge%2Ffilter/properties/desired HTTP/1.1",
            b"{nope"
        ),
        400
    );
    assert_eq!(request("POST /deployment HTTP/1.1", b"[]"), 400);
    assert_eq!(
        request(
            "POST /methods/edge%2Ffilter/reset HTTP/1.1",
            b"{\"responseTimeoutInSeconds\": -1}"
        ),
        400
    );
    assert_eq!(raw_status(&socket, b"NONSENSE\r\n\r\n"), 400);
    // Still serving.
    assert_eq!(request("GET /twins/edge%2Ffilter HTTP/1.1", b""), 200);
    assert_eq!(hub.edge_hub_reported()["lastDesiredStatus"]["code"], 200);
}

#[test]
fn a_hub_killed_leaves_a_socket_that_the_next_one_replaces() {
    let mut hub = Hub::start();
    hub.json(&["twin", "set-desired", "filter", r#"{"kept": true}"#]);
    hub.kill();
    assert!(
        hub.path("data/admin.sock").exists(),
        "SIGKILL leaves the socket file"
    );
    let out = hub.edgehub(&["twin", "get", "filter"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "nobody answers on a stale socket"
    );
    assert!(stderr(&out).contains("no hub runs"), "{}", stderr(&out));
    hub.launch();
    assert_eq!(
        hub.json(&["twin", "get", "filter"])["desired"],
        json!({"$version": 2, "kept": true})
    );
}

#[test]
fn sigterm_stops_the_hub_while_an_operator_request_waits() {
    let mut hub = Hub::start();
    // A method call that waits for its target to connect, which it never does.
    let waiting = Command::new(env!("CARGO_BIN_EXE_edgehub"))
        .args(["method", "invoke", "--config"])
        .arg(&hub.config)
        .args(["filter", "reset", "{}", "--connect-timeout", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let status = hub.terminate();
    assert_eq!(status.code(), Some(0), "a clean shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped in {:?}",
        started.elapsed()
    );
    assert!(
        !hub.path("data/admin.sock").exists(),
        "the socket is removed"
    );
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("hub"), "{}", stderr(&out));
}
