//! Store benchmarks (issue 3): 256-byte messages, enqueue + read + ack, in `periodic` and `sync`
//! durability, fan-out to 4 endpoints, CPU per message, and raw sled in the same run for the
//! ratio. Run with `cargo bench -p edgehub-benches --bench store`.
//!
//! Throughput benches report wall time per batch of messages (criterion's `elem/s` is messages
//! per second). The `cpu` group reports the *process CPU time* (user + system, all threads,
//! from /proc/self/stat) per batch instead of wall time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{
    BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime,
};
use store::{Durability, EndpointHandle, Reader, Store, StoreConfig, Target, Ticket, Ttl};

const PAYLOAD: usize = 256;
/// Messages per measured iteration.
const BATCH: u64 = 20_000;

fn periodic() -> Durability {
    Durability::Periodic {
        interval: Duration::from_millis(10),
    }
}

/// A store in a fresh temporary directory with endpoints `e0..e{n}`.
fn open(durability: Durability, endpoints: usize) -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::open(StoreConfig::new(dir.path()).with_durability(durability)).expect("open store");
    for i in 0..endpoints {
        store.add_endpoint(&format!("e{i}")).expect("add endpoint");
    }
    (dir, Arc::new(store))
}

/// Reads and acks `n` entries; returns when all were read.
fn consume(reader: &mut Reader, n: u64) {
    let mut seen = 0;
    while seen < n {
        let batch = reader.read(512, usize::MAX).expect("read");
        match batch.last() {
            Some(last) => {
                seen += batch.len() as u64;
                reader.ack(last.id).expect("ack");
            }
            None => {
                reader.wait(Duration::from_millis(100));
            }
        }
    }
}

/// Enqueues `n` messages from `producers` threads, each keeping up to `window` tickets in
/// flight, while one consumer thread per endpoint reads and acks; returns the wall time.
fn run(
    store: &Arc<Store>,
    readers: &mut [Reader],
    n: u64,
    producers: u64,
    window: usize,
) -> Duration {
    let endpoints: Vec<EndpointHandle> = readers
        .iter()
        .map(|r| store.endpoint(r.endpoint()).expect("endpoint of a reader"))
        .collect();
    let payload = Bytes::from(vec![b'm'; PAYLOAD]);
    let start = Instant::now();
    thread::scope(|s| {
        for p in 0..producers {
            let store = Arc::clone(store);
            let payload = payload.clone();
            let endpoints = &endpoints;
            s.spawn(move || {
                let targets: Vec<Target<'_>> = endpoints
                    .iter()
                    .map(|e| Target::new(e, 0, Ttl::Never))
                    .collect();
                let count = n / producers + u64::from(p < n % producers);
                let mut tickets: VecDeque<Ticket> = VecDeque::with_capacity(window);
                for _ in 0..count {
                    if tickets.len() == window
                        && let Some(t) = tickets.pop_front()
                    {
                        t.wait().expect("durable");
                    }
                    tickets.push_back(store.enqueue(payload.clone(), &targets).expect("enqueue"));
                }
                for t in tickets {
                    t.wait().expect("durable");
                }
            });
        }
        for reader in readers.iter_mut() {
            s.spawn(move || consume(reader, n));
        }
    });
    start.elapsed()
}

/// Process CPU time (user + system, all threads) from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    // The kernel's USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn bench_store(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    durability: Durability,
    endpoints: usize,
    producers: u64,
    window: usize,
) {
    let (_dir, store) = open(durability, endpoints);
    let mut readers: Vec<Reader> = (0..endpoints)
        .map(|i| store.reader(&format!("e{i}")).expect("reader"))
        .collect();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run(&store, &mut readers, BATCH, producers, window))
                .sum()
        });
    });
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(BATCH));
    // (name, durability, endpoints, producer threads, tickets in flight per thread).
    // 64 messages in flight are run two ways: as 64 OS threads blocked on their ticket (one
    // thread switch per message on 2 cores), and as the hub will do it, tasks awaiting their
    // tickets (4 threads x 16).
    let cases = [
        ("periodic_1ep_4producers", periodic(), 1, 4, 1024),
        (
            "sync_1ep_64threads_1_in_flight_each",
            Durability::Sync,
            1,
            64,
            1,
        ),
        (
            "sync_1ep_4threads_16_in_flight_each",
            Durability::Sync,
            1,
            4,
            16,
        ),
        (
            "sync_1ep_4threads_256_in_flight_each",
            Durability::Sync,
            1,
            4,
            256,
        ),
        ("periodic_fanout4_4producers", periodic(), 4, 4, 1024),
    ];
    for (name, durability, endpoints, producers, window) in cases {
        bench_store(&mut group, name, durability, endpoints, producers, window);
    }
    group.finish();
}

fn cpu(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(BATCH));
    let (_dir, store) = open(periodic(), 1);
    let mut readers = vec![store.reader("e0").expect("reader")];
    group.bench_function("periodic_1ep_process_cpu", |b| {
        b.iter_custom(|iters| {
            let before = cpu_time();
            for _ in 0..iters {
                run(&store, &mut readers, BATCH, 1, 1024);
            }
            cpu_time() - before
        });
    });
    group.finish();
}

/// When the raw-sled baseline calls `flush()`.
#[derive(Clone, Copy)]
enum Flush {
    /// Like the store's `periodic` mode: when 10 ms passed since the last flush. (Done by the
    /// loop itself: sled's own flusher thread, `flush_every_ms`, was seen spinning forever in
    /// `Log::reserve` during this benchmark.)
    Every10ms,
    /// After every 64 inserts, like a group commit of 64.
    Per64,
}

/// Raw sled, same payloads: insert every message under a big-endian key, then remove it (what
/// a one-key-per-message queue does), with the store's flush policies.
fn raw_sled(c: &mut Criterion) {
    let mut group = c.benchmark_group("raw_sled");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(BATCH));
    for (name, flush) in [
        ("insert_remove_flush_10ms", Flush::Every10ms),
        ("insert_remove_flush_per_64", Flush::Per64),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(64 << 20)
            .flush_every_ms(None)
            .open()
            .expect("open sled");
        let payload = vec![b'm'; PAYLOAD];
        let mut next: u64 = 0;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let mut last_flush = start;
                for _ in 0..iters {
                    let first = next;
                    for i in first..first + BATCH {
                        db.insert(i.to_be_bytes(), payload.as_slice())
                            .expect("insert");
                        let due = match flush {
                            Flush::Every10ms => last_flush.elapsed() >= Duration::from_millis(10),
                            Flush::Per64 => i % 64 == 63,
                        };
                        if due {
                            db.flush().expect("flush");
                            last_flush = Instant::now();
                        }
                    }
                    for i in first..first + BATCH {
                        let value = db.remove(i.to_be_bytes()).expect("remove");
                        assert!(value.is_some());
                    }
                    next += BATCH;
                }
                start.elapsed()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, throughput, cpu, raw_sled);
criterion_main!(benches);
