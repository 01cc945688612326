//! Disk follows the live backlog (epochs of consumed messages are deleted), and the quota
//! rejects or evicts.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{T0, config, periodic, to, wait_until};
use store::{EnqueueError, ManualClock, Quota, QuotaPolicy, Reader, Store, StoreConfig};

const PAYLOAD: usize = 256;

fn small_epochs(dir: &std::path::Path, clock: &ManualClock) -> StoreConfig {
    let mut config = config(dir, clock)
        .with_durability(periodic())
        .with_epoch_bytes(128 * 1024)
        .with_segment_bytes(16 * 1024);
    config.compaction_delay = Duration::from_millis(50);
    config
}

/// Reads and acks up to `n` entries.
/// Reads and acks up to `n` entries, waiting (briefly) until some are readable: a sealed
/// epoch is opened by the store's opener thread, not by the read.
fn consume(reader: &mut Reader, n: usize) -> usize {
    reader.wait(Duration::from_millis(200));
    let batch = reader.read(n, usize::MAX).expect("read");
    if let Some(last) = batch.last() {
        reader.ack(last.id).expect("ack");
    }
    batch.len()
}

#[test]
fn disk_follows_the_backlog_not_the_traffic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(small_epochs(dir.path(), &ManualClock::new(T0))).expect("open");
    let e = store.add_endpoint("e").expect("add");
    let mut reader = store.reader("e").expect("reader");
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let backlog = 1_000;
    let mut peak_disk = 0;
    let mut peak_epochs = 0;
    // 40,000 messages (10 MB) through a backlog of 1,000 (256 KB): 80 epochs written.
    for i in 0..40_000 {
        let ticket = store
            .enqueue(payload.clone(), &[to(&e, 0)])
            .expect("enqueue");
        if i % 100 == 99 {
            ticket.wait().expect("durable");
            let backlog_now = store.endpoint_stats("e").map_or(0, |s| s.count);
            if backlog_now > backlog {
                consume(&mut reader, (backlog_now - backlog) as usize);
            }
            let stats = store.stats();
            peak_disk = peak_disk.max(stats.disk_bytes);
            if i > 10_000 {
                peak_epochs = peak_epochs.max(stats.epochs);
            }
        }
    }
    let live = backlog * PAYLOAD as u64;
    println!("peak disk {peak_disk} B, peak epochs {peak_epochs}, live {live} B");
    // The backlog spans at most 3 epochs of 128 KiB, plus the one being written and one whose
    // deletion waits for the next cleaner run.
    assert!(peak_epochs <= 6, "epochs pile up: {peak_epochs}");
    let traffic = 40_000 * PAYLOAD as u64;
    assert!(
        peak_disk < traffic / 4,
        "disk {peak_disk} B follows the traffic ({traffic} B)"
    );

    while consume(&mut reader, 4096) > 0 {}
    wait_until("consumed epochs to be deleted", || {
        store.stats().epochs == 1
    });
}

#[test]
fn reject_policy_refuses_enqueues_until_space_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let empty = {
        let store = Store::open(small_epochs(dir.path(), &clock)).expect("open");
        store.add_endpoint("e").expect("add");
        wait_until("a disk measurement", || store.stats().disk_bytes > 0);
        store.stats().disk_bytes
    };
    let quota = Quota {
        // sled grows a fresh database by a few hundred KiB: leave room above that.
        max_store_bytes: Some(empty + 4 * 1024 * 1024),
        min_free_disk_bytes: None,
        policy: QuotaPolicy::Reject,
    };
    let store = Store::open(small_epochs(dir.path(), &clock).with_quota(quota)).expect("open");
    let e = store.endpoint("e").expect("recovered endpoint");
    let payload = Bytes::from(vec![b'r'; 4096]);
    let mut accepted = 0;
    let rejected = loop {
        match store.enqueue(payload.clone(), &[to(&e, 0)]) {
            Ok(ticket) => {
                ticket.wait().expect("durable");
                accepted += 1;
            }
            Err(EnqueueError::QuotaExceeded) => break true,
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(accepted < 100_000, "quota never reached");
    };
    assert!(rejected && accepted > 10, "accepted {accepted}");
    let stats = store.stats();
    assert!(stats.over_quota && stats.rejected >= 1, "{stats:?}");

    let mut reader = store.reader("e").expect("reader");
    while consume(&mut reader, 4096) > 0 {}
    wait_until("the store to be back under quota", || {
        !store.stats().over_quota
    });
    store
        .enqueue_durable(payload, &[to(&e, 0)])
        .expect("accepted again");
}

#[test]
fn drop_oldest_policy_evicts_old_epochs_and_keeps_the_newest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let quota = Quota {
        max_store_bytes: Some(4 * 1024 * 1024),
        min_free_disk_bytes: None,
        policy: QuotaPolicy::DropOldest,
    };
    let store = Store::open(small_epochs(dir.path(), &clock).with_quota(quota)).expect("open");
    let e = store.add_endpoint("e").expect("add");
    let total = 8_000u64;
    for i in 0..total {
        let mut payload = format!("{i:08}").into_bytes();
        payload.resize(1024, b'd');
        store
            .enqueue_durable(Bytes::from(payload), &[to(&e, 0)])
            .expect("never rejected");
    }
    wait_until("eviction", || store.stats().evicted > 0);
    let stats = store.stats();
    let backlog = store.endpoint_stats("e").expect("endpoint").count;
    assert_eq!(
        backlog + stats.evicted,
        total,
        "every entry is queued or counted as evicted"
    );

    let mut reader = store.reader("e").expect("reader");
    let mut last = None;
    loop {
        reader.wait(Duration::from_millis(200));
        let batch = reader.read(4096, usize::MAX).expect("read");
        let Some(entry) = batch.last() else { break };
        reader.ack(entry.id).expect("ack");
        last = Some(String::from_utf8_lossy(&entry.payload[..8]).into_owned());
    }
    assert_eq!(
        last.as_deref(),
        Some("00007999"),
        "the newest message survives"
    );
}

#[test]
fn a_slow_endpoint_does_not_pin_epochs_thanks_to_compaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let payload = |i: u64| {
        let mut p = format!("{i:08}").into_bytes();
        p.resize(PAYLOAD, b'c');
        Bytes::from(p)
    };
    let mut slow_ids = Vec::new();
    {
        let store = Store::open(small_epochs(dir.path(), &clock)).expect("open");
        let fast_endpoint = store.add_endpoint("fast").expect("add");
        let slow_endpoint = store.add_endpoint("slow").expect("add");
        let mut fast = store.reader("fast").expect("reader");
        // 20,000 messages (5 MB, 40 epochs); one in 100 also goes to an endpoint nobody reads.
        let mut tickets = Vec::new();
        for i in 0..20_000u64 {
            let targets = if i % 100 == 0 {
                slow_ids.push(format!("{i:08}"));
                vec![to(&fast_endpoint, 0), to(&slow_endpoint, 0)]
            } else {
                vec![to(&fast_endpoint, 0)]
            };
            tickets.push(store.enqueue(payload(i), &targets).expect("enqueue"));
            if i % 500 == 499 {
                for ticket in tickets.drain(..) {
                    ticket.wait().expect("durable");
                }
                while consume(&mut fast, 4096) > 0 {}
            }
        }
        // Compaction runs one epoch at a time (at rotations and cleaner runs): let it catch up.
        // Without it, the 40 epochs written all stay.
        wait_until("compaction to release the epochs", || {
            store.stats().epochs <= 6
        });
        assert!(store.stats().compacted > 0);
    }
    // Order and content survive compaction and reopen.
    let store = Store::open(small_epochs(dir.path(), &clock)).expect("reopen");
    let mut slow = store.reader("slow").expect("reader");
    let got: Vec<String> = common::drain(&mut slow)
        .into_iter()
        .map(|p| p[..8].to_owned())
        .collect();
    assert_eq!(got, slow_ids);
}
