//! The hub over plain MQTT with rumqttc clients: routing module to module, order, offline
//! backlog, authorization, protocol violations and garbage on the socket.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::inproc::{A_OUT1, Client, TestKeys, connect, options, recv, settings, start_hub};
use edgehub::hub::Hub;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

/// A hub routing `a`'s output `out1` to `b`'s input `in1`, with `b` connected and subscribed.
async fn hub_with_b() -> (tempfile::TempDir, Hub, Client) {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path(), module_to_module()).await;
    let mut b = connect(options(&hub, "b", "key-b"));
    b.subscribe_inputs("b").await;
    (dir, hub, b)
}

fn module_to_module() -> serde_json::Value {
    json!({"aToB": "FROM /messages/modules/a/outputs/out1 INTO BrokeredEndpoint(\"/modules/b/inputs/in1\")"})
}

#[tokio::test]
async fn a_module_output_reaches_another_module_input_with_its_properties() {
    let (_dir, hub, mut b) = hub_with_b().await;
    let a = connect(options(&hub, "a", "key-a"));
    a.send("devices/edge/modules/a/messages/events/%24.on=out1&%24.mid=m1&%24.ct=application%2Fjson&%24.ce=utf-8&color=red%2Fblue", br#"{"t": 1}"#.to_vec()).await;
    let got = recv(&mut b).await;
    assert_eq!(got.payload.as_ref(), br#"{"t": 1}"#);
    assert_eq!(
        got.topic,
        "devices/edge/modules/b/inputs/in1/color=red%2Fblue&%24.mid=m1&%24.ct=application%2Fjson&%24.ce=utf-8&%24.cdid=edge&%24.cmid=a"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_thousand_messages_arrive_in_order() {
    let (_dir, hub, mut b) = hub_with_b().await;
    let a = connect(options(&hub, "a", "key-a"));
    let sender = tokio::spawn(async move {
        for i in 0..1000u32 {
            a.send(A_OUT1, i.to_be_bytes().to_vec()).await;
        }
        a
    });
    for i in 0..1000u32 {
        let got = recv(&mut b).await;
        assert_eq!(got.payload.as_ref(), i.to_be_bytes(), "message {i}");
    }
    drop(sender.await.unwrap());
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_offline_module_gets_its_backlog_when_it_returns_without_subscribing_again() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path(), module_to_module()).await;
    {
        let mut b = connect(options(&hub, "b", "key-b"));
        b.subscribe_inputs("b").await;
        b.client.disconnect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let a = connect(options(&hub, "a", "key-a"));
    for i in 0..20u8 {
        a.send(A_OUT1, vec![i]).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Back, with the same persistent session, and no SUBSCRIBE (as the Python SDK does).
    let mut b = connect(options(&hub, "b", "key-b"));
    for i in 0..20u8 {
        assert_eq!(recv(&mut b).await.payload.as_ref(), [i]);
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn wrong_credentials_get_connack_not_authorized() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path(), module_to_module()).await;
    let mut bad = connect(options(&hub, "a", "wrong"));
    let code = tokio::time::timeout(Duration::from_secs(5), bad.connack.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, rumqttc::ConnectReturnCode::NotAuthorized);
    assert_eq!(hub.metrics().received_total(), 0);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn publishing_as_another_identity_closes_the_connection() {
    let (_dir, hub, mut b) = hub_with_b().await;
    let a = connect(options(&hub, "a", "key-a"));
    // Module a pretends to be module c.
    a.send(
        "devices/edge/modules/c/messages/events/%24.on=out1",
        b"x".to_vec(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hub.metrics().received_total(), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), b.incoming.recv())
            .await
            .is_err()
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_message_without_a_route_is_accepted_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path(), module_to_module()).await;
    let a = connect(options(&hub, "a", "key-a"));
    a.send(
        "devices/edge/modules/a/messages/events/%24.on=unrouted",
        b"x".to_vec(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        hub.metrics()
            .dropped_total(edgehub::metrics::DropReason::NoRoute),
        1
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn garbage_on_one_socket_closes_only_that_connection() {
    let (_dir, hub, mut b) = hub_with_b().await;
    let addr = hub.mqtt_addr().unwrap();
    for garbage in [
        vec![0xff; 64],
        vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x7f],
        vec![0x10, 0x05, 0x00, 0x04, b'M'],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        raw.write_all(&garbage).await.unwrap();
        let mut buf = [0u8; 16];
        let closed = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "garbage {garbage:?} must close the socket"
        );
    }
    let a = connect(options(&hub, "a", "key-a"));
    a.send(A_OUT1, b"still here".to_vec()).await;
    assert_eq!(recv(&mut b).await.payload.as_ref(), b"still here");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn qos_2_and_oversized_messages_close_the_connection_and_are_not_delivered() {
    let (_dir, hub, mut b) = hub_with_b().await;
    let a = connect(options(&hub, "a", "key-a"));
    a.client
        .publish(
            "devices/edge/modules/a/messages/events/%24.on=out1",
            QoS::ExactlyOnce,
            false,
            b"qos2".to_vec(),
        )
        .await
        .unwrap();
    let mut big = options(&hub, "a2", "key-a2");
    big.set_max_packet_size(1024 * 1024, 1024 * 1024);
    let a2 = connect(big);
    a2.send(
        "devices/edge/modules/a2/messages/events/%24.on=out1",
        vec![7u8; 300 * 1024],
    )
    .await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), b.incoming.recv())
            .await
            .is_err()
    );
    assert_eq!(hub.metrics().received_total(), 0);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_over() {
    let (_dir, hub, _b) = hub_with_b().await;
    // A second `b`: the first is closed, the new one gets the messages (session kept).
    let mut b2 = connect(options(&hub, "b", "key-b"));
    let code = tokio::time::timeout(Duration::from_secs(5), b2.connack.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, rumqttc::ConnectReturnCode::Success);
    let a = connect(options(&hub, "a", "key-a"));
    a.send(A_OUT1, b"to the newest".to_vec()).await;
    assert_eq!(recv(&mut b2).await.payload.as_ref(), b"to the newest");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn subscriptions_and_queued_messages_survive_a_hub_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let hub = start_hub(dir.path(), module_to_module()).await;
        let mut b = connect(options(&hub, "b", "key-b"));
        b.subscribe_inputs("b").await;
        b.client.disconnect().await.unwrap();
        let a = connect(options(&hub, "a", "key-a"));
        for i in 0..10u8 {
            a.send(A_OUT1, vec![i]).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        hub.shutdown().await.unwrap();
    }
    let hub = start_hub(dir.path(), module_to_module()).await;
    // No SUBSCRIBE after the restart: the persisted session is enough.
    let mut b = connect(options(&hub, "b", "key-b"));
    for i in 0..10u8 {
        assert_eq!(recv(&mut b).await.payload.as_ref(), [i]);
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn subscribing_to_another_identitys_topics_closes_the_connection() {
    let (_dir, hub, _b) = hub_with_b().await;
    let mut spy = connect(options(&hub, "a", "key-a"));
    spy.client
        .subscribe("devices/edge/modules/b/inputs/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), spy.subacks.recv())
            .await
            .map_or(true, |suback| suback.is_none()),
        "no SUBACK for a foreign subscription"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_show_counters_and_the_upstream_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let routes = json!({"toCloud": "FROM /messages/modules/a/* INTO $upstream"});
    let hub = start_hub(dir.path(), routes).await;
    let a = connect(options(&hub, "a", "key-a"));
    for _ in 0..3 {
        a.send("devices/edge/modules/a/messages/events/", b"x".to_vec())
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut stream = tokio::net::TcpStream::connect(hub.metrics_addr().unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("edgehub_messages_received_total 3"), "{text}");
    assert!(
        text.contains("edgehub_queue_length{endpoint=\"iothub\"} 3"),
        "{text}"
    );
    assert!(text.contains("edgehub_connected_clients 1"), "{text}");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_connection_closes_when_its_token_expires() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path(), module_to_module()).await;
    let mut brief = connect(options(&hub, "brief", "key-brief"));
    let code = tokio::time::timeout(Duration::from_secs(5), brief.connack.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, rumqttc::ConnectReturnCode::Success);
    assert_eq!(hub.sessions().connected(), 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        hub.sessions().connected(),
        0,
        "the expired connection was closed"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_desired_patch_reaches_a_subscribed_module_with_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path(), module_to_module()).await;
    let mut b = connect(options(&hub, "b", "key-b"));
    b.client
        .subscribe("$iothub/twin/PATCH/properties/desired/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), b.subacks.recv())
        .await
        .unwrap();
    assert_eq!(
        hub.set_desired("edge/b", br#"{"interval": 5}"#).unwrap(),
        Ok(2)
    );
    let got = recv(&mut b).await;
    assert_eq!(
        got.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=2"
    );
    let body: serde_json::Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(body, json!({"interval": 5, "$version": 2}));
    assert_eq!(hub.twin("edge/b").unwrap()["desired"]["interval"], 5);
    assert!(hub.set_desired("edge/b", b"[1]").unwrap().is_err());
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_deployment_switches_routes_live_and_a_bad_one_changes_nothing() {
    let (_dir, hub, mut b) = hub_with_b().await;
    let bad = json!({
        "schemaVersion": "1.1",
        "$version": 7,
        "routes": {"broken": "FROM /messages/* WHERE x == 1 INTO $upstream"},
        "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}
    });
    let error = hub.deploy(&bad).unwrap_err().to_string();
    assert!(error.contains("broken"), "{error}");
    let reported = &hub.edge_hub_twin()["reported"];
    assert_eq!(reported["lastDesiredVersion"], 7);
    assert_eq!(reported["lastDesiredStatus"]["code"], 400);
    assert!(
        reported["lastDesiredStatus"]["description"]
            .as_str()
            .unwrap()
            .contains("broken")
    );
    assert_eq!(reported["clients"]["edge/b"]["status"], "Connected");

    // The old routes still run.
    let a = connect(options(&hub, "a", "key-a"));
    let topic = "devices/edge/modules/a/messages/events/%24.on=out1";
    a.send(topic, b"old".to_vec()).await;
    assert_eq!(recv(&mut b).await.payload.as_ref(), b"old");

    // A valid deployment: out1 now goes to input in2.
    let good = json!({
        "schemaVersion": "1.1",
        "$version": 8,
        "routes": {"aToB2": "FROM /messages/modules/a/outputs/out1 INTO BrokeredEndpoint(\"/modules/b/inputs/in2\")"},
        "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}
    });
    hub.deploy(&good).unwrap();
    assert_eq!(
        hub.edge_hub_twin()["reported"]["lastDesiredStatus"]["code"],
        200
    );
    a.send(topic, b"new".to_vec()).await;
    let got = recv(&mut b).await;
    assert_eq!(got.payload.as_ref(), b"new");
    assert!(
        got.topic.starts_with("devices/edge/modules/b/inputs/in2/"),
        "{}",
        got.topic
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn direct_methods_answer_404_when_absent_504_when_silent_and_the_response_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path(), module_to_module()).await;
    let payload = json!({"x": 1});
    let quick = Duration::from_millis(300);
    let absent = hub
        .invoke_method("edge/b", "echo", &payload, quick, quick)
        .await;
    assert_eq!(absent.status, 404);

    let mut b = connect(options(&hub, "b", "key-b"));
    b.client
        .subscribe("$iothub/methods/POST/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), b.subacks.recv())
        .await
        .unwrap();
    let silent = hub
        .invoke_method("edge/b", "echo", &payload, quick, quick)
        .await;
    assert_eq!(silent.status, 504);
    let _ = recv(&mut b).await; // the request that was not answered

    let responder = tokio::spawn(async move {
        let request = recv(&mut b).await;
        let rid = request.topic.split("$rid=").nth(1).unwrap().to_owned();
        assert!(
            request
                .topic
                .starts_with("$iothub/methods/POST/echo/?$rid=")
        );
        let body: serde_json::Value = serde_json::from_slice(&request.payload).unwrap();
        b.send(
            &format!("$iothub/methods/res/201/?$rid={rid}"),
            json!({"echo": body}).to_string(),
        )
        .await;
        b
    });
    let answered = hub
        .invoke_method("edge/b", "echo", &payload, quick, Duration::from_secs(5))
        .await;
    assert_eq!(answered.status, 201);
    assert_eq!(answered.payload, json!({"echo": {"x": 1}}));
    drop(responder.await.unwrap());
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_redeploy_under_a_steady_stream_loses_and_duplicates_nothing() {
    let (_dir, hub, mut b) = hub_with_b().await;
    let hub = Arc::new(hub);
    let a = connect(options(&hub, "a", "key-a"));
    let total = 600u32;
    let sender = tokio::spawn(async move {
        for i in 0..total {
            a.send(A_OUT1, i.to_be_bytes().to_vec()).await;
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        a
    });
    let redeployer = {
        let hub = Arc::clone(&hub);
        tokio::spawn(async move {
            for version in 2..12u64 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                // The same route under another name, plus an unrelated one: the table is
                // replaced each time while messages flow.
                let desired = json!({
                    "schemaVersion": "1.1",
                    "$version": version,
                    "routes": {
                        format!("aToB{version}"): "FROM /messages/modules/a/outputs/out1 INTO BrokeredEndpoint(\"/modules/b/inputs/in1\")",
                        "other": "FROM /messages/modules/z/* INTO $upstream"
                    },
                    "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}
                });
                hub.deploy(&desired).unwrap();
            }
        })
    };
    let mut seen = std::collections::BTreeMap::new();
    while seen.values().sum::<u32>() < total {
        let got = recv(&mut b).await;
        *seen
            .entry(u32::from_be_bytes(got.payload[..4].try_into().unwrap()))
            .or_insert(0) += 1;
    }
    redeployer.await.unwrap();
    drop(sender.await.unwrap());
    // Nothing more arrives: no duplicates beyond the count.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b.incoming.recv())
            .await
            .is_err()
    );
    assert_eq!(seen.len() as u32, total, "every message arrived");
    assert!(seen.values().all(|n| *n == 1), "no message arrived twice");
    assert_eq!(hub.edge_hub_twin()["reported"]["lastDesiredVersion"], 11);
    Arc::try_unwrap(hub).unwrap().shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reported_patch_is_answered_and_routed_as_a_twin_change_notification() {
    let dir = tempfile::tempdir().unwrap();
    let routes = json!({"twins": "FROM /twinChangeNotifications INTO BrokeredEndpoint(\"/modules/b/inputs/twin\")"});
    let hub = start_hub(dir.path(), routes).await;
    let mut b = connect(options(&hub, "b", "key-b"));
    b.subscribe_inputs("b").await;
    let mut a = connect(options(&hub, "a", "key-a"));
    a.send(
        "$iothub/twin/PATCH/properties/reported/?$rid=7",
        br#"{"fw": "1.0"}"#.to_vec(),
    )
    .await;
    let response = recv(&mut a).await;
    assert_eq!(response.topic, "$iothub/twin/res/204/?$rid=7&$version=2");
    let notification = recv(&mut b).await;
    assert_eq!(notification.payload.as_ref(), br#"{"fw": "1.0"}"#);
    assert!(
        notification
            .topic
            .starts_with("devices/edge/modules/b/inputs/twin/"),
        "{}",
        notification.topic
    );
    assert!(
        notification.topic.contains("%24.cmid=a"),
        "{}",
        notification.topic
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_topics_are_dropped_or_with_strict_topics_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path(), module_to_module()).await;
    let a = connect(options(&hub, "a", "key-a"));
    a.send("some/other/topic", b"x".to_vec()).await;
    a.send(A_OUT1, b"after".to_vec()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = &hub.metrics();
    assert_eq!(
        metrics.dropped_total(edgehub::metrics::DropReason::UnknownTopic),
        1
    );
    assert_eq!(metrics.received_total(), 1, "the connection stayed open");
    hub.shutdown().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut strict = settings(dir.path(), &module_to_module());
    strict.strict_topics = true;
    let hub = Hub::start(strict, Arc::new(TestKeys)).await.unwrap();
    let a = connect(options(&hub, "a", "key-a"));
    a.send("some/other/topic", b"x".to_vec()).await;
    a.send(A_OUT1, b"after".to_vec()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        hub.metrics().received_total(),
        0,
        "the connection was closed"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_goes_away_without_disconnect_publishes_its_will() {
    let (_dir, hub, mut b) = hub_with_b().await;
    let mut with_will = options(&hub, "a", "key-a");
    with_will.set_last_will(rumqttc::LastWill::new(
        A_OUT1,
        b"gone".to_vec(),
        QoS::AtLeastOnce,
        false,
    ));
    let (client, mut eventloop) = AsyncClient::new(with_will, 10);
    let (connected, mut connack) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            if let Ok(Event::Incoming(Packet::ConnAck(_))) = eventloop.poll().await {
                let _ = connected.send(());
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), connack.recv())
        .await
        .unwrap();
    // The socket closes without a DISCONNECT.
    task.abort();
    let _ = task.await;
    drop(client);
    assert_eq!(recv(&mut b).await.payload.as_ref(), b"gone");
    hub.shutdown().await.unwrap();
}
