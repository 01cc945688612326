//! Black-box behaviour of enqueue, read, ack, priorities, fan-out, endpoints and reopen.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{T0, block_on, config, drain, payloads, periodic, put, to};
use store::{AckError, EnqueueError, ManualClock, Store, StoreError};

#[test]
fn entries_come_out_by_priority_then_in_enqueue_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(dir.path(), &ManualClock::new(T0))).expect("open");
    let iothub = store.add_endpoint("iothub").expect("add");
    put(&store, "low-1", &[to(&iothub, 2_000_000_000)]);
    put(&store, "high-1", &[to(&iothub, 0)]);
    put(&store, "low-2", &[to(&iothub, 2_000_000_000)]);
    put(&store, "mid-1", &[to(&iothub, 5)]);
    put(&store, "high-2", &[to(&iothub, 0)]);

    assert_eq!(
        store.backlog_by_priority("iothub"),
        Some(vec![(0, 2), (5, 1), (2_000_000_000, 2)])
    );
    assert_eq!(store.backlog_by_priority("nope"), None);

    let mut reader = store.reader("iothub").expect("reader");
    let batch = reader.read(3, usize::MAX).expect("read");
    assert_eq!(payloads(&batch), ["high-1", "high-2", "mid-1"]);
    put(&store, "high-3", &[to(&iothub, 0)]);
    let batch = reader.read(10, usize::MAX).expect("read");
    assert_eq!(
        payloads(&batch),
        ["high-3", "low-1", "low-2"],
        "a new high-priority entry goes first"
    );
}

#[test]
fn acked_entries_are_gone_and_unacked_come_back_after_rewind_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    {
        let store = Store::open(config(dir.path(), &clock)).expect("open");
        let module = store.add_endpoint("m/in").expect("add");
        for i in 0..5 {
            put(&store, &format!("m{i}"), &[to(&module, 1)]);
        }
        let mut reader = store.reader("m/in").expect("reader");
        let batch = reader.read(3, usize::MAX).expect("read");
        reader.ack(batch[1].id).expect("ack");
        assert_eq!(store.endpoint_stats("m/in").map(|s| s.count), Some(3));
        reader.rewind();
        assert_eq!(payloads(&reader.read(1, usize::MAX).expect("read")), ["m2"]);
        store.close().expect("close");
    }
    let store = Store::open(config(dir.path(), &clock)).expect("reopen");
    assert_eq!(store.recovery_report().entries, 3);
    let mut reader = store.reader("m/in").expect("reader");
    assert_eq!(drain(&mut reader), ["m2", "m3", "m4"]);
    assert_eq!(
        store.endpoint_stats("m/in").map(|s| (s.count, s.bytes)),
        Some((0, 0))
    );
}

#[test]
fn a_message_to_several_endpoints_is_read_by_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(dir.path(), &ManualClock::new(T0)).with_durability(periodic()))
        .expect("open");
    let [a, b, c] = ["a", "b", "c"].map(|e| store.add_endpoint(e).expect("add"));
    put(&store, "x", &[to(&a, 0), to(&b, 3), to(&c, 0)]);
    put(&store, "y", &[to(&b, 3)]);
    for (e, want) in [("a", vec!["x"]), ("b", vec!["x", "y"]), ("c", vec!["x"])] {
        let mut reader = store.reader(e).expect("reader");
        assert_eq!(drain(&mut reader), want, "endpoint {e}");
    }
    let stats = store.stats();
    assert_eq!(stats.enqueued, 2);
}

#[test]
fn duplicate_targets_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = Store::open(config(dir.path(), &clock)).expect("open");
    let e = store.add_endpoint("e").expect("add");
    let other = store.add_endpoint("other").expect("add");
    let again = store.endpoint("e").expect("handle by name");
    let short = store::Target::new(&e, 9, store::Ttl::After(Duration::from_secs(1)));
    let long = store::Target::new(&again, 4, store::Ttl::After(Duration::from_secs(60)));
    assert!(matches!(
        store.enqueue(Bytes::from_static(b"twice"), &[short, to(&other, 0), long]),
        Err(EnqueueError::DuplicateTarget(name)) if name == "e"
    ));
    store.flush().expect("flush");
    assert_eq!(store.endpoint_stats("e").map(|s| s.count), Some(0));
    assert_eq!(store.endpoint_stats("other").map(|s| s.count), Some(0));
    assert_eq!(store.stats().enqueued, 0);
}

#[test]
fn add_endpoint_returns_the_existing_endpoint_and_handles_name_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(dir.path(), &ManualClock::new(T0))).expect("open");
    assert!(store.endpoint("e").is_none());
    let first = store.add_endpoint("e").expect("add");
    let second = store.add_endpoint("e").expect("add again");
    assert_eq!(first.name(), "e");
    put(&store, "via first", &[to(&first, 0)]);
    put(&store, "via second", &[to(&second, 0)]);
    let mut reader = store.reader("e").expect("reader");
    assert_eq!(drain(&mut reader), ["via first", "via second"]);
    assert_eq!(store.endpoints(), ["e"]);
}

#[test]
fn byte_limit_caps_a_batch_but_never_below_one_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(dir.path(), &ManualClock::new(T0))).expect("open");
    let e = store.add_endpoint("e").expect("add");
    for p in ["aaaa", "bbbb", "cccc"] {
        put(&store, p, &[to(&e, 0)]);
    }
    let mut reader = store.reader("e").expect("reader");
    assert_eq!(reader.read(10, 1).expect("read").len(), 1);
    assert_eq!(reader.read(10, 8).expect("read").len(), 2);
}

#[test]
fn errors_are_typed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(dir.path(), &ManualClock::new(T0))).expect("open");
    store.add_endpoint("e").expect("add");
    let removed = store.add_endpoint("removed").expect("add");
    assert!(store.remove_endpoint("removed").expect("remove"));
    assert!(matches!(
        store.enqueue(Bytes::new(), &[to(&removed, 0)]),
        Err(EnqueueError::UnknownEndpoint(name)) if name == "removed"
    ));
    let readded = store.add_endpoint("removed").expect("add again");
    assert!(
        matches!(
            store.enqueue(Bytes::new(), &[to(&removed, 0)]),
            Err(EnqueueError::UnknownEndpoint(_))
        ),
        "a handle of the removed endpoint does not name the new one"
    );
    store
        .enqueue_durable(Bytes::new(), &[to(&readded, 0)])
        .expect("the new handle works");
    assert!(matches!(
        store.enqueue(Bytes::new(), &[]),
        Err(EnqueueError::NoTargets)
    ));
    let mut reader = store.reader("e").expect("reader");
    assert!(matches!(store.reader("e"), Err(StoreError::ReaderBusy(_))));
    assert!(matches!(
        store.reader("zz"),
        Err(StoreError::UnknownEndpoint(_))
    ));
    let bogus = store::EntryId {
        priority: 0,
        seq: 99,
    };
    assert_eq!(
        reader.ack(bogus),
        Err(AckError::NotDelivered {
            priority: 0,
            seq: 99
        })
    );
    drop(reader);
    assert!(
        store.reader("e").is_ok(),
        "dropping a reader frees the endpoint"
    );
}

#[test]
fn removing_an_endpoint_drops_its_entries_and_its_reader_learns_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    {
        let store = Store::open(config(dir.path(), &clock)).expect("open");
        let gone = store.add_endpoint("gone").expect("add");
        let kept = store.add_endpoint("kept").expect("add");
        put(&store, "x", &[to(&gone, 0), to(&kept, 0)]);
        let mut reader = store.reader("gone").expect("reader");
        assert!(store.remove_endpoint("gone").expect("remove"));
        assert!(!store.remove_endpoint("gone").expect("remove twice"));
        assert!(matches!(
            reader.read(1, 1),
            Err(StoreError::EndpointRemoved(_))
        ));
        assert!(
            reader.wait(Duration::ZERO),
            "a removed endpoint is ready (to report removal)"
        );
        assert_eq!(store.endpoints(), ["kept"]);
        store.add_endpoint("gone").expect("add again");
        assert_eq!(
            store.endpoint_stats("gone").map(|s| s.count),
            Some(0),
            "old entries do not come back"
        );
    }
    let store = Store::open(config(dir.path(), &clock)).expect("reopen");
    assert_eq!(store.endpoint_stats("gone").map(|s| s.count), Some(0));
    assert_eq!(store.endpoint_stats("kept").map(|s| s.count), Some(1));
}

#[test]
fn readers_are_woken_by_new_work_blocking_and_async() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        std::sync::Arc::new(Store::open(config(dir.path(), &ManualClock::new(T0))).expect("open"));
    let e = store.add_endpoint("e").expect("add");
    let mut reader = store.reader("e").expect("reader");
    assert!(!reader.wait(Duration::from_millis(10)));

    let producer = {
        let store = std::sync::Arc::clone(&store);
        let e = e.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            put(&store, "async", &[to(&e, 0)]);
        })
    };
    assert_eq!(block_on(reader.ready(), Duration::from_secs(10)), Some(()));
    producer.join().expect("producer");
    let batch = reader
        .read_timeout(1, usize::MAX, Duration::from_secs(10))
        .expect("read");
    reader.ack(batch[0].id).expect("ack");

    let producer = {
        let store = std::sync::Arc::clone(&store);
        let e = e.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            put(&store, "blocking", &[to(&e, 0)]);
        })
    };
    let batch = reader
        .read_timeout(1, usize::MAX, Duration::from_secs(10))
        .expect("read");
    assert_eq!(payloads(&batch), ["blocking"]);
    producer.join().expect("producer");
}

#[test]
fn tickets_are_futures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(dir.path(), &ManualClock::new(T0))).expect("open");
    let e = store.add_endpoint("e").expect("add");
    let ticket = store
        .enqueue(Bytes::from_static(b"f"), &[to(&e, 0)])
        .expect("enqueue");
    let result = block_on(ticket, Duration::from_secs(10)).expect("completes in time");
    assert!(result.is_ok());
    assert_eq!(store.endpoint_stats("e").map(|s| s.count), Some(1));
}

#[test]
fn a_large_message_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(dir.path(), &ManualClock::new(T0))).expect("open");
    let e = store.add_endpoint("e").expect("add");
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 253) as u8).collect();
    store
        .enqueue_durable(Bytes::from(big.clone()), &[to(&e, 0)])
        .expect("enqueue");
    let mut reader = store.reader("e").expect("reader");
    assert_eq!(
        reader.read(1, usize::MAX).expect("read")[0].payload,
        Bytes::from(big)
    );
}

#[test]
fn closing_the_store_tells_the_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(config(dir.path(), &ManualClock::new(T0))).expect("open");
    store.add_endpoint("e").expect("add");
    let mut reader = store.reader("e").expect("reader");
    store.close().expect("close");
    assert!(matches!(reader.read(1, 1), Err(StoreError::Closed)));
}

#[test]
fn handles_can_move_to_other_threads_and_tasks() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Store>();
    send_sync::<store::Reader>();
    send_sync::<store::EndpointHandle>();
    send::<store::Ticket>();
    send::<store::Ready<'static>>();
}
