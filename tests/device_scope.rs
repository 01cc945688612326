//! Identities from upstream (issue 16, spec 6.2): leaf devices and modules registered at a
//! parent hub for a child's scope connect to the child with no `edgehub identity add` there,
//! also after a child restart with the parent down, and are refused by the child once removed
//! at the parent; with three layers, what is registered at the top reaches the bottom through
//! the middle. Real `edgehub` processes on loopback, real MQTT clients.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::hubproc::{HUB_HOST, HubProcess, epoch_secs, key_of};
use common::probe::{closed_within, refused};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet};
use serde_json::json;

const CHILD: &str = "child-1";

/// The children's `scope_refresh_secs`: short, so a removal reaches them quickly.
const REFRESH_SECS: u64 = 2;

/// How long a removal at the parent may take to close the child's connections: the refresh
/// interval, the child's identity recheck (2 s) and a wide margin for a loaded machine.
const REMOVAL_WITHIN: Duration = Duration::from_secs(20);

/// How long identities registered upstream may take to reach a child that just started (two
/// layers down: the middle learns them first).
const LEARNED_WITHIN: Duration = Duration::from_secs(60);

/// A hub with no modules and no routes.
fn hub(device_id: &str) -> HubProcess {
    HubProcess::start_device(device_id, &json!({}), &[], "")
}

/// A hub of device `device_id` below `parent`, with the `$edgeHub` connection string
/// `edge_hub` that `parent` printed for it; it has no identity of its own.
fn child_of(parent: &HubProcess, device_id: &str, edge_hub: &str) -> HubProcess {
    let upstream = format!(
        "[upstream]\nconnection_string = \"{}\"\nport = {}\nca = \"{}\"\nhttps_port = {}\nscope_refresh_secs = {REFRESH_SECS}\n",
        edge_hub.trim(),
        parent.mqtts,
        parent.ca().display(),
        parent.https,
    );
    HubProcess::start_device(device_id, &json!({}), &[], &upstream)
}

/// MQTT options for module `device/module` on `hub`, with the key of `connection_string`.
fn module(hub: &HubProcess, device: &str, module: &str, connection_string: &str) -> MqttOptions {
    let token = edgehub::sas::sign(
        &format!("{HUB_HOST}/devices/{device}/modules/{module}"),
        &key_of(connection_string),
        epoch_secs(3600),
    );
    hub.options(
        &format!("{device}/{module}"),
        &format!("{HUB_HOST}/{device}/{module}/?api-version=2021-04-12"),
        &token,
    )
}

/// A CONNECT with `options`: the connected client, or why it was not accepted.
async fn try_connect(options: MqttOptions) -> Result<(AsyncClient, EventLoop), String> {
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => {
            Ok((client, eventloop))
        }
        other => Err(format!("{other:?}")),
    }
}

/// A connected client; panics when the hub does not accept `options`.
async fn connect(options: MqttOptions) -> (AsyncClient, EventLoop) {
    try_connect(options)
        .await
        .unwrap_or_else(|why| panic!("not accepted: {why}"))
}

/// A connected client, once the hub accepts `options` (tried every half second).
async fn connect_within(options: &MqttOptions, within: Duration) -> (AsyncClient, EventLoop) {
    let deadline = Instant::now() + within;
    loop {
        match try_connect(options.clone()).await {
            Ok(connected) => return connected,
            Err(why) => assert!(
                Instant::now() < deadline,
                "not accepted within {within:?}: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_registered_only_at_the_parent_connects_to_the_child_offline_too_until_removed_there()
 {
    let mut parent = hub("parent");
    let edge_hub = parent.identity(&["add", "--edge-device", CHILD]);
    let leaf = parent.identity(&["add", "--device", "leaf-9", "--parent", CHILD]);
    let mut child = child_of(&parent, CHILD, &edge_hub);
    // A local identity of the child works beside the learned ones.
    let local = child.identity(&["add", "--device", "local-1"]);

    // The leaf connects to the child with the connection string the parent printed.
    connect_within(&child.leaf("leaf-9", &leaf), LEARNED_WITHIN).await;
    connect(child.leaf("local-1", &local)).await;
    let listed = child.identity(&["list"]);
    assert!(listed.contains("leaf-9  device  upstream\n"), "{listed}");
    assert!(listed.contains("local-1  device\n"), "{listed}");

    // The child restarts while the parent is down: it still knows the leaf.
    parent.kill();
    child.terminate();
    let before_restart = child.log().len();
    child.spawn();
    connect(child.leaf("leaf-9", &leaf)).await;
    connect(child.leaf("local-1", &local)).await;
    // The outage is logged once, however many attempts fail meanwhile.
    tokio::time::sleep(Duration::from_secs(3 * REFRESH_SECS)).await;
    let log = child.log();
    assert_eq!(
        log[before_restart..]
            .matches("device scope sync failed;")
            .count(),
        1,
        "{log}"
    );

    // Removed at the parent, the leaf is disconnected and refused by the child.
    parent.spawn();
    let (_leaf, mut leaf_loop) = connect(child.leaf("leaf-9", &leaf)).await;
    let (_local, mut local_loop) = connect(child.leaf("local-1", &local)).await;
    parent.identity(&["remove", "--device", "leaf-9"]);
    assert!(closed_within(&mut leaf_loop, REMOVAL_WITHIN).await);
    assert!(refused(child.leaf("leaf-9", &leaf)).await);
    assert!(!closed_within(&mut local_loop, Duration::from_secs(1)).await);
    connect(child.leaf("local-1", &local)).await;
    assert!(child.log().contains("device scope sync works again"));
    // The child's command line does not manage what the parent does.
    let listed = child.identity(&["list"]);
    assert!(!listed.contains("leaf-9"), "{listed}");
}

/// `edgehub identity <args>` on `hub`: its exit code and stderr.
fn identity_command(hub: &HubProcess, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgehub"))
        .arg("identity")
        .args(args)
        .arg("--config")
        .arg(hub.config())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_of_the_child_registered_at_the_parent_connects_to_the_child() {
    let parent = hub("parent");
    let edge_hub = parent.identity(&["add", "--edge-device", CHILD]);
    let filter = parent.identity(&["add", "child-1/filter"]);
    assert!(
        filter.starts_with(&format!(
            "HostName={HUB_HOST};DeviceId=child-1;ModuleId=filter;SharedAccessKey="
        )),
        "{filter}"
    );
    assert_eq!(
        parent.identity(&["add", "child-1/filter"]),
        filter,
        "found again"
    );
    // Only a registered child edge device has modules here.
    let (code, stderr) = identity_command(&parent, &["add", "child-2/filter"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("child-2 is not an edge device of this hub"),
        "{stderr}"
    );
    let (code, stderr) = identity_command(&parent, &["add", "child-1/$edgeAgent"]);
    assert_eq!(code, Some(2), "{stderr}");

    let child = child_of(&parent, CHILD, &edge_hub);
    connect_within(&module(&child, CHILD, "filter", &filter), LEARNED_WITHIN).await;

    // A key rotated at the parent reaches the child; the old one is refused there.
    let rotated = parent.identity(&["rotate", "child-1/filter"]);
    connect_within(&module(&child, CHILD, "filter", &rotated), REMOVAL_WITHIN).await;
    assert!(refused(module(&child, CHILD, "filter", &filter)).await);
    // The child's command line leaves it to the parent.
    let (code, stderr) = identity_command(&child, &["rotate", "filter"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("parent hub"), "{stderr}");

    assert_eq!(parent.identity(&["remove", "child-1/filter"]), "");
    let deadline = Instant::now() + REMOVAL_WITHIN;
    while !refused(module(&child, CHILD, "filter", &rotated)).await {
        assert!(Instant::now() < deadline, "still accepted after removal");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_layers_a_leaf_registered_at_the_top_connects_to_the_bottom() {
    let top = hub("top");
    let middle_edge_hub = top.identity(&["add", "--edge-device", "middle"]);
    let bottom_edge_hub = top.identity(&["add", "--edge-device", "bottom", "--parent", "middle"]);
    let leaf = top.identity(&["add", "--device", "leaf-b", "--parent", "bottom"]);
    let sensor = top.identity(&["add", "bottom/sensor"]);
    let middle = child_of(&top, "middle", &middle_edge_hub);
    let bottom = child_of(&middle, "bottom", &bottom_edge_hub);
    // The middle learns the bottom's identities as part of its scope and serves them down.
    connect_within(&bottom.leaf("leaf-b", &leaf), LEARNED_WITHIN).await;
    connect_within(
        &module(&bottom, "bottom", "sensor", &sensor),
        LEARNED_WITHIN,
    )
    .await;
    let listed = middle.identity(&["list"]);
    assert!(
        listed.contains("bottom/$edgeHub  module  upstream\n"),
        "{listed}"
    );
    assert!(listed.contains("leaf-b  device  upstream\n"), "{listed}");
}
