//! A store that refuses messages (issue 14, decision D10): the publisher is closed without its
//! PUBACK each time, the refusals are counted by reason, they make one episode however many
//! there are, and the `$edgeHub` reported properties show the store refusing and why. (The
//! refusal here is the quota's: a full disk is the same path with reason `disk_full`.)

use std::sync::Arc;
use std::time::Duration;

use edgehub::hub::Hub;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::json;

mod common;
use common::inproc::{self, A_OUT1, TestKeys};

/// Publishes one QoS 1 message as module `a` on a new connection; whether it got its PUBACK
/// (else the hub closed the connection).
async fn publish_once(hub: &Hub) -> bool {
    let mut options = inproc::options(hub, "a", "key-a");
    options.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .publish(A_OUT1, QoS::AtLeastOnce, false, b"refused?".to_vec())
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("a PUBACK or a closed connection within 10 s");
    drop(client);
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_refusals_close_without_puback_and_make_one_reported_episode() {
    let data = tempfile::tempdir().unwrap();
    let mut settings = inproc::settings(
        data.path(),
        &json!({"r": "FROM /messages/modules/a/outputs/out1 INTO BrokeredEndpoint(\"/modules/b/inputs/in1\")"}),
    );
    // A quota no disk meets: the store refuses every message once the cleaner measured.
    settings.store = settings
        .store
        .with_quota(store::Quota {
            max_store_bytes: None,
            min_free_disk_bytes: Some(u64::MAX),
            policy: store::QuotaPolicy::Reject,
        })
        .with_cleanup_interval(Duration::from_millis(50));
    let hub = Hub::start(settings, Arc::new(TestKeys)).await.unwrap();
    let twin = hub.edge_hub_twin();
    assert_eq!(twin["reported"]["store"]["state"], "Accepting", "{twin}");

    // The first refusal may wait for the cleaner's first measurement.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while publish_once(&hub).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the store never refused"
        );
    }
    for _ in 0..3 {
        assert!(!publish_once(&hub).await, "refused again, no PUBACK");
    }

    let reported = &hub.edge_hub_twin()["reported"]["store"];
    assert_eq!(reported["state"], "Refusing", "{reported}");
    assert_eq!(reported["reason"], "quota", "{reported}");
    assert!(reported["refusals"].as_u64().unwrap() >= 4, "{reported}");
    assert_eq!(reported["episodes"], 1, "one episode: {reported}");
    assert!(reported["sinceUtc"].is_string(), "{reported}");
    let metrics = hub.metrics().render(&[]);
    assert!(metrics.contains("edgehub_store_refusing 1"), "{metrics}");
    assert!(
        metrics.contains("edgehub_store_refusal_episodes_total 1"),
        "{metrics}"
    );
    let quota_refusals: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("edgehub_store_refusals_total{reason=\"quota\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(quota_refusals >= 4, "{metrics}");
    hub.shutdown().await.unwrap();
}
