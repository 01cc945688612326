//! The authentication matrix of issue 11 against the real binary: every way of claiming to
//! be someone else is refused (CONNACK 5, or the connection closed for a foreign topic), the
//! reason is logged, and no secret (key, signature, token) reaches the log.

mod common;

use std::time::Duration;

use common::hubproc::{HUB_HOST, HubProcess, epoch_secs, key_of};
use edgehub::identity::SymmetricKey;
use edgehub::sas::sign;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS};

/// The outcome of a CONNECT.
async fn connack(options: MqttOptions) -> (ConnectReturnCode, AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let code = match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) => ack.code,
        Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => code,
        other => panic!("no CONNACK: {other:?}"),
    };
    (code, client, eventloop)
}

/// Whether the hub closes the connection within 10 s.
async fn closed(eventloop: &mut EventLoop) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return true,
            Err(_) => return false,
        }
    }
}

fn module_username(module: &str) -> String {
    format!("{HUB_HOST}/edge/{module}/?api-version=2021-04-12")
}

fn module_audience(module: &str) -> String {
    format!("{HUB_HOST}/devices/edge/modules/{module}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_false_claim_is_refused_with_its_reason_logged_and_no_secret() {
    let hub = HubProcess::start();
    let sender_cs = hub.identity(&["add", "sender"]);
    let receiver_cs = hub.identity(&["add", "receiver"]);
    let sender_key = key_of(&sender_cs);
    let receiver_key = key_of(&receiver_cs);
    let hour = epoch_secs(3600);
    let good = sign(&module_audience("sender"), &sender_key, hour);
    let mut secrets = vec![sender_key.to_base64(), receiver_key.to_base64()];

    // (case, client id, username, password, what the log must say)
    let forged_key = SymmetricKey::from_bytes(b"not the key of anyone at all 32b".to_vec());
    let cases = [
        (
            "forged",
            "edge/sender",
            module_username("sender"),
            sign(&module_audience("sender"), &forged_key, hour),
            "signature",
        ),
        (
            "expired beyond the 5-minute skew",
            "edge/sender",
            module_username("sender"),
            sign(&module_audience("sender"), &sender_key, epoch_secs(-400)),
            "expired",
        ),
        (
            "wrong audience",
            "edge/sender",
            module_username("sender"),
            sign(&module_audience("receiver"), &sender_key, hour),
            "audience",
        ),
        (
            "wrong key (another identity's)",
            "edge/sender",
            module_username("sender"),
            sign(&module_audience("sender"), &receiver_key, hour),
            "signature",
        ),
        (
            "client id that differs from the username",
            "edge/receiver",
            module_username("sender"),
            good.clone(),
            "client id",
        ),
    ];
    for (case, client_id, username, password, reason) in &cases {
        secrets.push(password.clone());
        let (code, _client, _events) = connack(hub.options(client_id, username, password)).await;
        assert_eq!(code, ConnectReturnCode::NotAuthorized, "{case}");
        let log = hub.log();
        assert!(
            log.lines()
                .any(|l| l.contains("connection refused") && l.to_lowercase().contains(reason)),
            "{case}: a refusal naming {reason:?} in the log:\n{log}"
        );
    }

    // Within the skew: accepted.
    let (code, _c, _e) = connack(hub.options(
        "edge/sender",
        &module_username("sender"),
        &sign(&module_audience("sender"), &sender_key, epoch_secs(-200)),
    ))
    .await;
    assert_eq!(code, ConnectReturnCode::Success, "within the 5-minute skew");

    // Cross-identity topics close the connection, each with its reason.
    for (topic, subscribe) in [
        ("devices/edge/modules/receiver/messages/events/", false),
        ("devices/other/messages/events/", false),
        ("devices/edge/modules/receiver/inputs/#", true),
        ("devices/edge/messages/devicebound/#", true),
    ] {
        let (code, client, mut events) =
            connack(hub.options("edge/sender", &module_username("sender"), &good)).await;
        assert_eq!(code, ConnectReturnCode::Success);
        if subscribe {
            client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        } else {
            client
                .publish(topic, QoS::AtLeastOnce, false, b"x".to_vec())
                .await
                .unwrap();
        }
        assert!(
            closed(&mut events).await,
            "{topic}: the connection is closed"
        );
        let log = hub.log();
        assert!(
            log.lines()
                .any(|l| l.contains("connection closed") && l.contains(topic.trim_end_matches('#'))),
            "{topic}: the reason in the log:\n{log}"
        );
    }

    // Removed, and rotated: refused.
    hub.identity(&["rotate", "sender"]);
    let (code, _c, _e) =
        connack(hub.options("edge/sender", &module_username("sender"), &good)).await;
    assert_eq!(
        code,
        ConnectReturnCode::NotAuthorized,
        "a token of the rotated key"
    );
    hub.identity(&["remove", "receiver"]);
    let token = sign(&module_audience("receiver"), &receiver_key, hour);
    secrets.push(token.clone());
    let (code, _c, _e) =
        connack(hub.options("edge/receiver", &module_username("receiver"), &token)).await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized, "a removed identity");

    let log = hub.log();
    for secret in &secrets {
        let signature = secret
            .split("sig=")
            .nth(1)
            .map_or(secret.as_str(), |s| s.split('&').next().unwrap());
        assert!(!log.contains(signature), "a secret in the log: {signature}");
    }
}
