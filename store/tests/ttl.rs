//! Time to live, with an injected clock.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{T0, config, drain, payloads, wait_until};
use store::{EndpointHandle, ManualClock, Store, StoreConfig, Target, Ttl};

fn ttl(secs: u64) -> Ttl {
    Ttl::After(Duration::from_secs(secs))
}

/// A store with endpoint `e` (and its handle) whose cleaner does not run during the test, so
/// that only the reader meets expired entries.
fn store_without_cleaner(dir: &std::path::Path, clock: &ManualClock) -> (Store, EndpointHandle) {
    let mut cfg = config(dir, clock);
    cfg.cleanup_interval = Duration::from_secs(3600);
    let store = Store::open(cfg).expect("open");
    let e = store.add_endpoint("e").expect("add");
    (store, e)
}

#[test]
fn expired_entries_are_never_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let (store, e) = store_without_cleaner(dir.path(), &clock);
    for (payload, secs) in [("short", 10), ("long", 100), ("short2", 10)] {
        store
            .enqueue_durable(Bytes::from(payload), &[Target::new(&e, 0, ttl(secs))])
            .expect("enqueue");
    }
    store
        .enqueue_durable(
            Bytes::from_static(b"forever"),
            &[Target::new(&e, 0, Ttl::Never)],
        )
        .expect("enqueue");
    clock.advance(Duration::from_secs(10));
    let mut reader = store.reader("e").expect("reader");
    assert_eq!(drain(&mut reader), ["long", "forever"]);
    assert_eq!(store.stats().expired, 2);
    assert_eq!(store.endpoint_stats("e").map(|s| s.count), Some(0));
}

#[test]
fn an_entry_that_expires_while_in_flight_is_settled_by_a_later_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let (store, e) = store_without_cleaner(dir.path(), &clock);
    store
        .enqueue_durable(Bytes::from_static(b"a"), &[Target::new(&e, 0, Ttl::Never)])
        .expect("enqueue");
    store
        .enqueue_durable(Bytes::from_static(b"b"), &[Target::new(&e, 0, ttl(5))])
        .expect("enqueue");
    store
        .enqueue_durable(Bytes::from_static(b"c"), &[Target::new(&e, 0, Ttl::Never)])
        .expect("enqueue");
    let mut reader = store.reader("e").expect("reader");
    let first = reader.read(1, usize::MAX).expect("read");
    clock.advance(Duration::from_secs(6));
    let rest = reader.read(10, usize::MAX).expect("read");
    assert_eq!(payloads(&rest), ["c"]);
    reader.rewind();
    clock.advance(Duration::from_secs(1));
    let again = reader.read(10, usize::MAX).expect("read");
    assert_eq!(payloads(&again), ["a", "c"]);
    reader.ack(again[1].id).expect("ack");
    assert_eq!(first.len(), 1);
    assert_eq!(store.endpoint_stats("e").map(|s| s.count), Some(0));
    assert_eq!(store.stats().expired, 1, "counted once despite the rewind");
}

#[test]
fn the_position_covers_entries_passed_over_because_they_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let (store, e) = store_without_cleaner(dir.path(), &clock);
    for (payload, ttl) in [("a", Ttl::Never), ("b", ttl(5))] {
        store
            .enqueue_durable(Bytes::from(payload), &[Target::new(&e, 0, ttl)])
            .expect("enqueue");
    }
    let mut reader = store.reader("e").expect("reader");
    assert_eq!(reader.position(0), 0, "nothing read yet");
    let a = reader.read(1, usize::MAX).expect("read")[0].id;
    assert_eq!(reader.position(0), a.seq, "a handed out");
    clock.advance(Duration::from_secs(10));
    assert!(reader.read(10, usize::MAX).expect("read").is_empty());
    assert!(reader.position(0) > a.seq, "b passed over: it expired");
    reader.rewind();
    assert!(reader.position(0) < a.seq, "a is handed out again");
    assert_eq!(reader.position(7), 0, "no queue of priority 7");
}

#[test]
fn the_cleaner_drops_expired_entries_nobody_reads_and_frees_their_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let cfg = config(dir.path(), &clock).with_epoch_bytes(4 * 1024);
    let store = Store::open(cfg).expect("open");
    let offline = store.add_endpoint("offline").expect("add");
    let payload = Bytes::from(vec![7u8; 1024]);
    for _ in 0..32 {
        store
            .enqueue_durable(payload.clone(), &[Target::new(&offline, 3, ttl(60))])
            .expect("enqueue");
    }
    wait_until("epochs to rotate", || store.stats().epochs > 4);
    let stats = store.endpoint_stats("offline").expect("endpoint");
    assert_eq!((stats.count, stats.bytes), (32, 32 * 1024));

    clock.advance(Duration::from_secs(61));
    wait_until("the cleaner to expire everything", || {
        store
            .endpoint_stats("offline")
            .is_some_and(|s| s.count == 0)
    });
    wait_until("consumed epochs to be deleted", || {
        store.stats().epochs <= 1
    });
    assert_eq!(store.stats().expired, 32);
}

#[test]
fn ttl_is_fixed_at_enqueue_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    {
        let store = Store::open(config(dir.path(), &clock)).expect("open");
        let e = store.add_endpoint("e").expect("add");
        store
            .enqueue_durable(Bytes::from_static(b"x"), &[Target::new(&e, 0, ttl(30))])
            .expect("enqueue");
        store
            .enqueue_durable(Bytes::from_static(b"y"), &[Target::new(&e, 0, ttl(90))])
            .expect("enqueue");
    }
    clock.advance(Duration::from_secs(60));
    let store = Store::open(config(dir.path(), &clock)).expect("reopen");
    let mut reader = store.reader("e").expect("reader");
    assert!(reader.wait(Duration::from_secs(10)), "the epoch opens");
    let batch = reader.read(10, usize::MAX).expect("read");
    assert_eq!(payloads(&batch), ["y"]);
    assert_eq!(batch[0].enqueued_at_ms, T0);
    assert_eq!(batch[0].expires_at_ms, Some(T0 + 90_000));
    let age = store.endpoint_stats("e").and_then(|s| s.oldest_age);
    assert_eq!(age, Some(Duration::from_secs(60)));
}

const DAY: Duration = Duration::from_secs(86_400);

/// The entries of endpoint `e` that are readable now (acknowledged).
fn readable(store: &Store) -> Vec<String> {
    let mut reader = store.reader("e").expect("reader");
    drain(&mut reader)
}

fn age(store: &Store) -> Option<Duration> {
    store.endpoint_stats("e").and_then(|s| s.oldest_age)
}

#[test]
fn a_wall_clock_jumping_a_day_ahead_while_running_expires_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = Store::open(config(dir.path(), &clock)).expect("open");
    let e = store.add_endpoint("e").expect("add");
    for p in ["a", "b"] {
        store
            .enqueue_durable(Bytes::from(p), &[Target::new(&e, 0, ttl(7200))])
            .expect("enqueue");
    }
    clock.jump_forward(DAY);
    // Give the cleaner (every 20 ms here) a chance to act on the jump.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(age(&store), Some(Duration::ZERO), "no time passed");
    assert_eq!(store.stats().expired, 0);
    let mut reader = store.reader("e").expect("reader");
    assert!(reader.wait(Duration::from_secs(10)));
    assert_eq!(payloads(&reader.read(1, usize::MAX).expect("read")), ["a"]);
    // Time passing does expire them.
    clock.advance(Duration::from_secs(7200));
    assert!(reader.read(10, usize::MAX).expect("read").is_empty());
}

#[test]
fn a_wall_clock_set_a_day_back_while_running_does_not_keep_entries_alive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = Store::open(config(dir.path(), &clock)).expect("open");
    let e = store.add_endpoint("e").expect("add");
    store
        .enqueue_durable(Bytes::from("short"), &[Target::new(&e, 0, ttl(60))])
        .expect("enqueue");
    store
        .enqueue_durable(Bytes::from("long"), &[Target::new(&e, 0, ttl(7200))])
        .expect("enqueue");
    clock.jump_back(DAY);
    assert_eq!(age(&store), Some(Duration::ZERO), "no negative age");
    clock.advance(Duration::from_secs(61));
    assert_eq!(age(&store), Some(Duration::from_secs(61)));
    assert_eq!(
        readable(&store),
        ["long"],
        "61 s passed: the 60 s entry expired"
    );
}

#[test]
fn a_wall_clock_a_day_ahead_at_restart_counts_as_at_most_max_downtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    {
        let store = Store::open(config(dir.path(), &clock)).expect("open");
        let e = store.add_endpoint("e").expect("add");
        store
            .enqueue_durable(Bytes::from("soon"), &[Target::new(&e, 0, ttl(1800))])
            .expect("enqueue");
        store
            .enqueue_durable(Bytes::from("later"), &[Target::new(&e, 0, ttl(7200))])
            .expect("enqueue");
        store.close().expect("close");
    }
    clock.jump_forward(DAY);
    let store = Store::open(config(dir.path(), &clock)).expect("reopen");
    let max_downtime = StoreConfig::new(dir.path()).max_downtime;
    assert_eq!(
        age(&store),
        Some(max_downtime),
        "the gap counts up to max_downtime"
    );
    assert_eq!(
        readable(&store),
        ["later"],
        "only what had less than max_downtime left expired, not the whole backlog"
    );
}

#[test]
fn a_wall_clock_a_day_back_at_restart_neither_ages_negatively_nor_keeps_entries_forever() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    {
        let store = Store::open(config(dir.path(), &clock)).expect("open");
        let e = store.add_endpoint("e").expect("add");
        store
            .enqueue_durable(Bytes::from("x"), &[Target::new(&e, 0, ttl(60))])
            .expect("enqueue");
        store.close().expect("close");
    }
    clock.jump_back(DAY);
    let store = Store::open(config(dir.path(), &clock)).expect("reopen");
    assert_eq!(
        age(&store),
        Some(Duration::ZERO),
        "continues from the last run"
    );
    clock.advance(Duration::from_secs(30));
    {
        let mut reader = store.reader("e").expect("reader");
        assert!(reader.wait(Duration::from_secs(10)));
        let batch = reader.read(10, usize::MAX).expect("read");
        assert_eq!(payloads(&batch), ["x"], "still alive after 30 s");
        // Not acknowledged: handed out again to the next reader.
    }
    clock.advance(Duration::from_secs(31));
    assert!(
        readable(&store).is_empty(),
        "expired 61 s later, not a day later"
    );
}
