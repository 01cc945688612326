//! Hostile clients (issue 11): nobody answers for another, no input blocks a queue, no flood
//! stops the hub. Each test fails without the fix it names.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::inproc::{Client, TestKeys, connect, options, recv, settings, start_hub};
use edgehub::hub::Hub;
use edgehub::metrics::DropReason;
use rumqttc::{QoS, SubscribeReasonCode};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const METHODS: &str = "$iothub/methods/POST/#";

/// Subscribes `client` to `filter` and gives the SUBACK's codes.
async fn subscribe(client: &mut Client, filter: &str) -> Vec<SubscribeReasonCode> {
    client
        .client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), client.subacks.recv())
        .await
        .expect("SUBACK within 5 s")
        .expect("the client runs")
}

/// The `$rid` of a method request topic.
fn request_id(topic: &str) -> String {
    topic.split("$rid=").nth(1).expect("a $rid").to_owned()
}

fn a_to_b() -> serde_json::Value {
    json!({"aToB": "FROM /messages/modules/a/outputs/out1 INTO BrokeredEndpoint(\"/modules/b/inputs/in1\")"})
}

/// Reads from `stream` until it is closed by the hub; `true` if it closed within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn a_method_response_is_taken_only_from_the_client_it_was_sent_to() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Arc::new(start_hub(dir.path(), json!({})).await);
    let mut target = connect(options(&hub, "target", "key-target"));
    subscribe(&mut target, METHODS).await;
    let forger = connect(options(&hub, "forger", "key-forger"));

    let call = {
        let hub = Arc::clone(&hub);
        tokio::spawn(async move {
            hub.invoke_method(
                "edge/target",
                "reset",
                &json!({}),
                Duration::ZERO,
                Duration::from_secs(10),
            )
            .await
        })
    };
    let request = recv(&mut target).await;
    let rid = request_id(&request.topic);
    // Guessing: request ids that count up from 1 would be forged here.
    for n in 1..=200u32 {
        forger
            .send(
                &format!("$iothub/methods/res/200/?$rid={n:x}"),
                b"{\"forged\":true}".to_vec(),
            )
            .await;
    }
    // Knowing the id (it leaked): still not the forger's to answer.
    forger
        .send(
            &format!("$iothub/methods/res/200/?$rid={rid}"),
            b"{\"forged\":true}".to_vec(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    target
        .send(
            &format!("$iothub/methods/res/201/?$rid={rid}"),
            b"{\"real\":true}".to_vec(),
        )
        .await;

    let result = call.await.unwrap();
    assert_eq!(result.status, 201);
    assert_eq!(result.payload, json!({"real": true}));
    assert!(rid.len() >= 32, "request ids are not guessable: {rid}");
    drop((target, forger));
    Arc::try_unwrap(hub).unwrap().shutdown().await.unwrap();
}

#[tokio::test]
async fn subscriptions_outside_the_documented_topics_are_refused_and_capped() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path(), json!({})).await;
    let mut client = connect(options(&hub, "m", "key-m"));
    assert_eq!(
        subscribe(&mut client, "#").await,
        [SubscribeReasonCode::Failure]
    );
    assert_eq!(
        subscribe(&mut client, "anything/else").await,
        [SubscribeReasonCode::Failure]
    );
    assert_eq!(
        subscribe(&mut client, METHODS).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let cap = edgehub::mqtt::session::MAX_SUBSCRIPTIONS;
    let mut codes = Vec::new();
    for i in 1..=cap {
        codes.extend(subscribe(&mut client, &format!("$iothub/methods/POST/{i}")).await);
    }
    assert!(
        codes[..cap - 1]
            .iter()
            .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
    );
    assert_eq!(codes[cap - 1], SubscribeReasonCode::Failure, "over the cap");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_message_whose_delivery_topic_cannot_be_sent_is_refused_and_blocks_nothing() {
    let (dir, hub) = {
        let dir = tempfile::tempdir().unwrap();
        let hub = start_hub(dir.path(), a_to_b()).await;
        (dir, hub)
    };
    let mut b = connect(options(&hub, "b", "key-b"));
    b.subscribe_inputs("b").await;
    // 60,000 '!' grow to 180,000 bytes in the delivery bag: over MQTT's 65,535-byte topic.
    let mut large = options(&hub, "a", "key-a");
    large.set_max_packet_size(300 * 1024, 300 * 1024);
    let a = connect(large);
    let poison = format!(
        "devices/edge/modules/a/messages/events/%24.on=out1&k={}",
        "!".repeat(60_000)
    );
    a.send(&poison, vec![b'x'; 100 * 1024]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hub.metrics().dropped_total(DropReason::TooLarge), 1);

    // The sender reconnects (the refusal closed its connection) and the next message flows.
    let a = connect(options(&hub, "a", "key-a"));
    a.send(
        "devices/edge/modules/a/messages/events/%24.on=out1",
        b"next".to_vec(),
    )
    .await;
    let got = recv(&mut b).await;
    assert_eq!(got.payload.as_ref(), b"next");
    hub.shutdown().await.unwrap();
    drop(dir);
}

#[tokio::test]
async fn a_connect_announcing_a_huge_packet_is_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut slow = settings(dir.path(), &json!({}));
    slow.connect_timeout = Duration::from_secs(30);
    let hub = Hub::start(slow, Arc::new(TestKeys)).await.unwrap();
    let mut stream = TcpStream::connect(hub.mqtt_addr().unwrap()).await.unwrap();
    // CONNECT announcing 272 KiB: nothing to reserve before the client authenticated.
    stream.write_all(&[0x10, 0xf0, 0xfd, 0x10]).await.unwrap();
    assert!(
        closed_within(&mut stream, Duration::from_secs(5)).await,
        "closed without waiting for 272 KiB or the 30 s CONNECT deadline"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_and_the_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let mut limited = settings(dir.path(), &a_to_b());
    limited.max_connections = 4;
    let hub = Hub::start(limited, Arc::new(TestKeys)).await.unwrap();
    let mut b = connect(options(&hub, "b", "key-b"));
    b.subscribe_inputs("b").await;
    let a = connect(options(&hub, "a", "key-a"));
    a.send(
        "devices/edge/modules/a/messages/events/%24.on=out1",
        b"1".to_vec(),
    )
    .await;
    assert_eq!(recv(&mut b).await.payload.as_ref(), b"1");
    // Two idle sockets take the remaining permits; the next is closed at once.
    let _idle: Vec<TcpStream> = vec![
        TcpStream::connect(hub.mqtt_addr().unwrap()).await.unwrap(),
        TcpStream::connect(hub.mqtt_addr().unwrap()).await.unwrap(),
    ];
    let mut over = TcpStream::connect(hub.mqtt_addr().unwrap()).await.unwrap();
    assert!(closed_within(&mut over, Duration::from_secs(5)).await);
    a.send(
        "devices/edge/modules/a/messages/events/%24.on=out1",
        b"2".to_vec(),
    )
    .await;
    assert_eq!(recv(&mut b).await.payload.as_ref(), b"2");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_taken_over_and_its_messages_reach_the_new_connection() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path(), a_to_b()).await;
    const MESSAGES: u32 = 1500;
    // `b` connects and subscribes by hand, then never reads its socket again.
    let mut stuck = TcpStream::connect(hub.mqtt_addr().unwrap()).await.unwrap();
    stuck
        .write_all(&raw_connect("edge/b", "key-b"))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    stuck.read_exact(&mut connack).await.unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    let filter = b"devices/edge/modules/b/inputs/#";
    let mut subscribe = vec![
        0x82,
        (2 + 2 + filter.len() + 1) as u8,
        0,
        1,
        0,
        filter.len() as u8,
    ];
    subscribe.extend_from_slice(filter);
    subscribe.push(1);
    stuck.write_all(&subscribe).await.unwrap();

    // Enough to fill the socket's buffers and the pump's window.
    let a = connect(options(&hub, "a", "key-a"));
    for i in 0..MESSAGES {
        let mut body = i.to_be_bytes().to_vec();
        body.resize(8 * 1024, 0);
        a.send("devices/edge/modules/a/messages/events/%24.on=out1", body)
            .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The module comes back on a new connection: the takeover wins at once, and everything
    // arrives, in order, on the new connection.
    let mut b = connect(options(&hub, "b", "key-b"));
    let mut next = 0u32;
    while next < MESSAGES {
        let got = recv(&mut b).await;
        let seq = u32::from_be_bytes(got.payload[..4].try_into().unwrap());
        assert!(
            seq <= next,
            "in order (redeliveries allowed): {seq} after {next}"
        );
        if seq == next {
            next += 1;
        }
    }
    drop(stuck);
    hub.shutdown().await.unwrap();
}

/// An MQTT 3.1.1 CONNECT with `clean_session = 0` for `client_id`, password `password`.
fn raw_connect(client_id: &str, password: &str) -> Vec<u8> {
    let (device, module) = client_id.split_once('/').unwrap();
    let username = format!("hub/{device}/{module}/?api-version=2021-04-12");
    let mut variable = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0000, 0, 60];
    for field in [client_id, &username, password] {
        variable.extend_from_slice(&(field.len() as u16).to_be_bytes());
        variable.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10, variable.len() as u8];
    packet.extend(variable);
    packet
}

#[tokio::test]
async fn a_sender_cannot_pose_as_another_identity_to_routes_or_receivers() {
    let dir = tempfile::tempdir().unwrap();
    let routes = json!({
        "spoofed": "FROM /messages/* WHERE $connectionModuleId = 'trusted' INTO BrokeredEndpoint(\"/modules/b/inputs/spoofed\")",
        "all": "FROM /messages/modules/a/* INTO BrokeredEndpoint(\"/modules/b/inputs/in1\")"
    });
    let hub = start_hub(dir.path(), routes).await;
    let mut b = connect(options(&hub, "b", "key-b"));
    b.subscribe_inputs("b").await;
    let a = connect(options(&hub, "a", "key-a"));
    a.send(
        "devices/edge/modules/a/messages/events/%24.on=out1&%24connectionModuleId=trusted&%24.CMID=trusted&%24.cdid=other",
        b"hi".to_vec(),
    )
    .await;
    let got = recv(&mut b).await;
    assert!(
        got.topic.starts_with("devices/edge/modules/b/inputs/in1/"),
        "{}",
        got.topic
    );
    assert!(
        got.topic.ends_with("%24.cdid=edge&%24.cmid=a"),
        "{}",
        got.topic
    );
    assert!(!got.topic.contains("trusted"), "{}", got.topic);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b.incoming.recv())
            .await
            .is_err(),
        "the route on the sender's identity did not fire"
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_http_client_that_sends_nothing_or_idles_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let hub = start_hub(dir.path(), json!({})).await;
    let addr = hub.metrics_addr().unwrap();
    // Headers that never end.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // A kept-alive connection that goes quiet after one request.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let within = edgehub::http::HEADER_TIMEOUT + Duration::from_secs(5);
    assert!(closed_within(&mut slow, within).await, "unfinished headers");
    assert!(
        closed_within(&mut idle, within).await,
        "an idle kept-alive connection"
    );
    hub.shutdown().await.unwrap();
}
