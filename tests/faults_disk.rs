//! A full disk under the real hub (issue 14): its data folder on a small file system of its
//! own, filled by a filler file and by the hub's messages. While the disk is full the hub
//! refuses new messages cleanly (no PUBACK: the connection closes and the client sends them
//! again), says so once in its log, in `/metrics` and in the `$edgeHub` reported properties,
//! and keeps what it holds; once the filler is removed it takes messages again by itself, and
//! every acknowledged message reaches its receiver.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::SENDER_TO_RECEIVER;
use common::eventually;
use common::hubproc::HubProcess;
use common::small_fs::SmallFs;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::{Value, json};

const OUT1: &str = "devices/edge/modules/sender/messages/events/%24.on=out1";
/// The size of the hub's file system.
const FS_MIB: u64 = 64;
/// A message's body: large (below rumqttc's default 10 KiB packet limit), so that a few
/// hundred fill what the filler leaves.
const BODY: usize = 8 * 1024;

/// A sender that publishes numbered messages as fast as its window allows and counts the
/// PUBACKs; after a closed connection it reconnects (a new event loop poll) and goes on from
/// the first unacknowledged number, as the SDKs do.
struct Sender {
    client: AsyncClient,
    acked: Arc<AtomicU32>,
    closes: Arc<AtomicU32>,
}

impl Sender {
    fn start(options: rumqttc::MqttOptions) -> Self {
        let (client, mut events) = AsyncClient::new(options, 16);
        let acked = Arc::new(AtomicU32::new(0));
        let closes = Arc::new(AtomicU32::new(0));
        let (counted, closed) = (Arc::clone(&acked), Arc::clone(&closes));
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counted.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => {
                        closed.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        });
        Self {
            client,
            acked,
            closes,
        }
    }

    fn acked(&self) -> u32 {
        self.acked.load(Ordering::SeqCst)
    }

    async fn send(&self, seq: u32) {
        let mut body = vec![0u8; BODY];
        body[..4].copy_from_slice(&seq.to_be_bytes());
        let _ = self.client.try_publish(OUT1, QoS::AtLeastOnce, false, body);
        tokio::task::yield_now().await;
    }
}

fn reported(hub: &HubProcess) -> Value {
    let twin: Value = serde_json::from_str(&hub.cli(&["twin", "get", "$edgeHub"])).unwrap();
    twin["reported"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_cleanly_and_the_hub_recovers_by_itself_when_space_returns() {
    let mut hub = HubProcess::prepare(
        "edge",
        &json!({"senderToReceiver": SENDER_TO_RECEIVER}),
        &["sender", "receiver"],
        "",
        common::free_port(),
    );
    let disk = match SmallFs::mount_at(&hub.dir.path().join("data"), FS_MIB) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: no small file system can be mounted here ({why})");
            return;
        }
    };
    hub.spawn();
    let sender = Sender::start(hub.module("edge", "sender"));
    let receiver_options = hub.module("edge", "receiver");

    // The filler leaves 3 MiB (beside the store's reserve); the sender's messages, waiting
    // for a receiver that is not there, fill the rest.
    let filler = disk.fill("filler", 3 << 20);
    let mut seq = 0u32;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !hub
        .metrics()
        .contains("edgehub_store_state{state=\"disk_full\"} 1")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the disk fills within 120 s\n{}",
            hub.log()
        );
        // Up to 16 unacknowledged at a time.
        while seq < sender.acked() + 16 {
            sender.send(seq).await;
            seq += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Full: refusals close the sender's connection without PUBACK, and the hub says so.
    eventually(
        Duration::from_secs(20),
        "a refused publish closes the connection",
        || sender.closes.load(Ordering::SeqCst) > 0,
    )
    .await;
    let store = &reported(&hub)["store"];
    assert_eq!(store["health"], "disk_full", "{store}");
    assert_eq!(store["state"], "Refusing", "{store}");
    let metrics = hub.metrics();
    assert!(
        !metrics.contains("edgehub_store_refusals_total{reason=\"disk_full\"} 0\n"),
        "refusals are counted:\n{metrics}"
    );
    let acked_while_full = sender.acked();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = hub.log();
    let warnings = log.matches("store disk full").count();
    assert!(
        warnings == 1,
        "the episode is logged once, not per message ({warnings} times):\n{log}"
    );

    // Space returns: the hub takes messages again by itself, within seconds.
    std::fs::remove_file(filler).unwrap();
    eventually(
        Duration::from_secs(30),
        "the store is writable again",
        || {
            hub.metrics()
                .contains("edgehub_store_state{state=\"writable\"} 1")
        },
    )
    .await;
    // The sender goes on publishing (its unacknowledged messages are sent again at each
    // reconnection, new ones follow): they are acknowledged again.
    let resumed_from = sender.acked();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while sender.acked() <= resumed_from {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new messages are acknowledged again within 60 s\n{}",
            hub.log()
        );
        if seq < sender.acked() + 16 {
            sender.send(seq).await;
            seq += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reported(&hub)["store"]["health"], "writable");
    let acked = sender.acked();
    println!(
        "full disk: {acked_while_full} acknowledged before the disk filled, {acked} in all, \
         {} connection(s) closed without PUBACK while full",
        sender.closes.load(Ordering::SeqCst)
    );

    // Everything acknowledged reaches the receiver.
    let (receiver, mut events) = AsyncClient::new(receiver_options, 100);
    receiver
        .subscribe("devices/edge/modules/receiver/inputs/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut received = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while (received.len() as u32) < acked {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                received.insert(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
            }
            Ok(_) => {}
            Err(_) => panic!(
                "{} of {acked} acknowledged messages received",
                received.len()
            ),
        }
    }
    drop(sender);
    hub.terminate();
    drop(disk);
}
