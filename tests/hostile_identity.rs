//! A running hub and `edgehub identity remove|rotate` in other processes: the live
//! connections of a removed identity, or authenticated with a rotated key, are closed within
//! seconds; the others stay. Through the real binary and a real MQTT client.

use std::time::Duration;

use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet};

mod common;
use common::hubproc::HubProcess;
use common::probe::{closed_within, refused};

/// How long a closed connection may stay open: the hub rechecks every few seconds.
const CLOSED_WITHIN: Duration = Duration::from_secs(10);

/// A connected client: its event loop, once the CONNACK accepted it.
async fn connect(options: MqttOptions) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => {
            assert_eq!(ack.code, ConnectReturnCode::Success);
        }
        other => panic!("no CONNACK: {other:?}"),
    }
    (client, eventloop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_key_closes_the_connections_it_authenticated_and_only_those() {
    let hub = HubProcess::start();
    let primary = hub.identity(&["add", "--device", "leaf"]);
    let (_on_primary, mut primary_loop) = connect(hub.leaf("leaf", &primary)).await;
    let other = hub.identity(&["add", "--device", "bystander"]);
    let (_bystander, mut bystander_loop) = connect(hub.leaf("bystander", &other)).await;

    // Rotating the secondary key leaves a connection made with the primary one alone.
    let secondary = hub.identity(&["rotate", "--device", "leaf", "--key", "secondary"]);
    assert!(!closed_within(&mut primary_loop, Duration::from_secs(5)).await);
    let (_on_secondary, mut secondary_loop) = connect(hub.leaf("leaf", &secondary)).await;

    // Rotating the primary key closes the connection it authenticated, not the others.
    let new_primary = hub.identity(&["rotate", "--device", "leaf"]);
    assert!(closed_within(&mut primary_loop, CLOSED_WITHIN).await);
    assert!(!closed_within(&mut secondary_loop, Duration::from_secs(3)).await);
    assert!(!closed_within(&mut bystander_loop, Duration::from_millis(100)).await);
    // The old key no longer connects; the new one does.
    assert!(refused(hub.leaf("leaf", &primary)).await);
    connect(hub.leaf("leaf", &new_primary)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_identity_closes_its_connections_and_refuses_new_ones() {
    let hub = HubProcess::start();
    let leaf = hub.identity(&["add", "--device", "leaf"]);
    let other = hub.identity(&["add", "--device", "bystander"]);
    let (_leaf, mut leaf_loop) = connect(hub.leaf("leaf", &leaf)).await;
    let (_bystander, mut bystander_loop) = connect(hub.leaf("bystander", &other)).await;
    assert_eq!(hub.identity(&["remove", "--device", "leaf"]), "");
    assert!(closed_within(&mut leaf_loop, CLOSED_WITHIN).await);
    assert!(!closed_within(&mut bystander_loop, Duration::from_secs(1)).await);
    assert!(refused(hub.leaf("leaf", &leaf)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_with_an_id_iot_hub_would_refuse_is_refused() {
    let hub = HubProcess::start();
    let leaf = hub.identity(&["add", "--device", "leaf"]);
    // A well-formed token, but a device id of 129 characters (no such identity could exist).
    let long = "d".repeat(129);
    assert!(refused(hub.leaf(&long, &leaf)).await);
    // A character outside IoT Hub's set.
    assert!(refused(hub.leaf("le af", &leaf)).await);
    connect(hub.leaf("leaf", &leaf)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_expire_at_the_edge_of_time_neither_panic_nor_pass() {
    let hub = HubProcess::start();
    let leaf = hub.identity(&["add", "--device", "leaf"]);
    for expiry in [u64::MAX, i64::MAX as u64, edgehub::sas::MAX_EXPIRY + 1] {
        assert!(
            refused(hub.leaf_until("leaf", &leaf, expiry)).await,
            "{expiry}"
        );
    }
    // The latest expiry accepted connects and stays connected (its deadline is representable).
    let (_client, mut eventloop) =
        connect(hub.leaf_until("leaf", &leaf, edgehub::sas::MAX_EXPIRY)).await;
    assert!(!closed_within(&mut eventloop, Duration::from_secs(3)).await);
    // The hub is still there for everyone else.
    connect(hub.leaf("leaf", &leaf)).await;
}
