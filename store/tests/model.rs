//! Model-based test: random enqueue, read, ack, rewind, clock moves, endpoint removal and
//! re-adding, close and reopen, checked against a trivial in-memory model.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use common::{T0, config, periodic};
use proptest::prelude::*;
use store::{Clock, Entry, ManualClock, Reader, Store, StoreError, Target, Ttl};

const ENDPOINTS: [&str; 3] = ["iothub", "dev/mod/in1", "dev/mod/in2"];

#[derive(Debug, Clone)]
enum Op {
    /// Per endpoint: (priority, TTL in seconds or never), if targeted.
    Enqueue([Option<(u32, Option<u64>)>; 3]),
    Read {
        endpoint: usize,
        max: usize,
    },
    /// Acks the `pick`-th delivered, unacknowledged entry of the endpoint.
    Ack {
        endpoint: usize,
        pick: usize,
    },
    Rewind {
        endpoint: usize,
    },
    Advance {
        secs: u64,
    },
    Remove {
        endpoint: usize,
    },
    Add {
        endpoint: usize,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let target = proptest::option::of((0u32..3, proptest::option::of(1u64..20)));
    prop_oneof![
        6 => [target.clone(), target.clone(), target].prop_map(Op::Enqueue),
        4 => (0..3usize, 1..6usize).prop_map(|(endpoint, max)| Op::Read { endpoint, max }),
        4 => (0..3usize, 0..8usize).prop_map(|(endpoint, pick)| Op::Ack { endpoint, pick }),
        1 => (0..3usize).prop_map(|endpoint| Op::Rewind { endpoint }),
        2 => (0u64..12).prop_map(|secs| Op::Advance { secs }),
        1 => (0..3usize).prop_map(|endpoint| Op::Remove { endpoint }),
        1 => (0..3usize).prop_map(|endpoint| Op::Add { endpoint }),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone)]
struct ModelEntry {
    payload: String,
    expiry_ms: u64,
}

/// One endpoint of the model: unacknowledged entries per priority, how many of each queue's
/// front were handed out or skipped.
#[derive(Debug, Default)]
struct ModelEndpoint {
    queues: BTreeMap<u32, VecDeque<ModelEntry>>,
    passed: BTreeMap<u32, usize>,
}

impl ModelEndpoint {
    fn read(&mut self, max: usize, now_ms: u64) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        for (&priority, queue) in &self.queues {
            let passed = self.passed.entry(priority).or_default();
            while *passed < queue.len() && out.len() < max {
                let entry = &queue[*passed];
                *passed += 1;
                if entry.expiry_ms > now_ms {
                    out.push((priority, entry.payload.clone()));
                }
            }
        }
        out
    }

    fn ack(&mut self, priority: u32, payload: &str) {
        let queue = self.queues.get_mut(&priority).expect("acked queue exists");
        let upto = queue
            .iter()
            .position(|e| e.payload == payload)
            .expect("acked entry queued");
        queue.drain(..=upto);
        let passed = self.passed.entry(priority).or_default();
        *passed -= upto + 1;
    }

    fn rewind(&mut self) {
        self.passed.clear();
    }
}

struct Harness {
    dir: tempfile::TempDir,
    clock: ManualClock,
    store: Option<Store>,
    readers: [Option<Reader>; 3],
    /// Entries handed out by each reader and not yet acknowledged, in delivery order.
    delivered: [Vec<Entry>; 3],
    model: [Option<ModelEndpoint>; 3],
    next_payload: u64,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(T0);
        let mut harness = Self {
            dir,
            clock,
            store: None,
            readers: [None, None, None],
            delivered: [Vec::new(), Vec::new(), Vec::new()],
            model: [None, None, None],
            next_payload: 0,
        };
        harness.open();
        for endpoint in 0..3 {
            harness.apply(&Op::Add { endpoint });
        }
        harness
    }

    fn open(&mut self) {
        let mut cfg = config(self.dir.path(), &self.clock)
            .with_durability(periodic())
            .with_epoch_bytes(512)
            .with_segment_bytes(64);
        // The cleaner works at segment granularity, invisible to the model: keep it away.
        cfg.cleanup_interval = Duration::from_secs(3600);
        // Compact as soon as possible, so that order across copied epochs is exercised.
        cfg.compaction_delay = Duration::ZERO;
        self.store = Some(Store::open(cfg).expect("open"));
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("open")
    }

    fn reader(&mut self, endpoint: usize) -> &mut Reader {
        let store = self.store.as_ref().expect("open");
        self.readers[endpoint]
            .get_or_insert_with(|| store.reader(ENDPOINTS[endpoint]).expect("reader"))
    }

    fn apply(&mut self, op: &Op) {
        let now_ms = self.clock.now_ms();
        match op {
            Op::Enqueue(targets) => {
                let payload = format!("p{}", self.next_payload);
                self.next_payload += 1;
                let mut chosen = Vec::new();
                for (endpoint, target) in targets.iter().enumerate() {
                    let (Some((priority, ttl)), Some(model)) =
                        (target, self.model[endpoint].as_mut())
                    else {
                        continue;
                    };
                    let ttl = ttl.map_or(Ttl::Never, |s| Ttl::After(Duration::from_secs(s)));
                    let expiry_ms = ttl_deadline(ttl, now_ms);
                    model
                        .queues
                        .entry(*priority)
                        .or_default()
                        .push_back(ModelEntry {
                            payload: payload.clone(),
                            expiry_ms,
                        });
                    let handle = self
                        .store()
                        .endpoint(ENDPOINTS[endpoint])
                        .expect("the model and the store agree on the endpoints");
                    chosen.push((handle, *priority, ttl));
                }
                let list: Vec<Target<'_>> = chosen
                    .iter()
                    .map(|(handle, priority, ttl)| Target::new(handle, *priority, *ttl))
                    .collect();
                if !list.is_empty() {
                    self.store()
                        .enqueue_durable(Bytes::from(payload), &list)
                        .expect("enqueue");
                }
            }
            Op::Read { endpoint, max } => {
                let endpoint = *endpoint;
                let Some(model) = self.model[endpoint].as_mut() else {
                    return;
                };
                let want = model.read(*max, now_ms);
                let batch = read_expected(self.reader(endpoint), *max, want.len());
                let got = contents(&batch);
                assert_eq!(got, want, "batch of {}", ENDPOINTS[endpoint]);
                self.delivered[endpoint].extend(batch);
            }
            Op::Ack { endpoint, pick } => {
                let endpoint = *endpoint;
                let Some(model) = self.model[endpoint].as_mut() else {
                    return;
                };
                let delivered = &mut self.delivered[endpoint];
                if delivered.is_empty() {
                    return;
                }
                let entry = delivered[pick % delivered.len()].clone();
                let payload = String::from_utf8_lossy(&entry.payload).into_owned();
                model.ack(entry.id.priority, &payload);
                delivered.retain(|e| e.id.priority != entry.id.priority || e.id.seq > entry.id.seq);
                self.reader(endpoint).ack(entry.id).expect("ack");
            }
            Op::Rewind { endpoint } => {
                if let Some(model) = self.model[*endpoint].as_mut() {
                    model.rewind();
                    self.delivered[*endpoint].clear();
                    self.reader(*endpoint).rewind();
                }
            }
            Op::Advance { secs } => self.clock.advance(Duration::from_secs(*secs)),
            Op::Remove { endpoint } => {
                let existed = self.model[*endpoint].take().is_some();
                self.delivered[*endpoint].clear();
                let removed = self
                    .store()
                    .remove_endpoint(ENDPOINTS[*endpoint])
                    .expect("remove");
                assert_eq!(removed, existed);
                if let Some(mut reader) = self.readers[*endpoint].take() {
                    assert!(matches!(
                        reader.read(1, 1),
                        Err(StoreError::EndpointRemoved(_))
                    ));
                }
            }
            Op::Add { endpoint } => {
                self.store()
                    .add_endpoint(ENDPOINTS[*endpoint])
                    .expect("add");
                self.model[*endpoint].get_or_insert_with(ModelEndpoint::default);
            }
            Op::Reopen => {
                self.readers = [None, None, None];
                self.delivered = [Vec::new(), Vec::new(), Vec::new()];
                for model in self.model.iter_mut().flatten() {
                    model.rewind();
                }
                self.store.take().expect("open").close().expect("close");
                self.open();
            }
        }
    }

    /// Every entry still queued and not expired comes out, in order, and nothing else.
    fn check_drained(&mut self) {
        let now_ms = self.clock.now_ms();
        for (endpoint, name) in ENDPOINTS.iter().enumerate() {
            let Some(model) = self.model[endpoint].as_mut() else {
                assert!(self.store().endpoint_stats(name).is_none());
                continue;
            };
            model.rewind();
            let want = model.read(usize::MAX, now_ms);
            // Everything is acknowledged below.
            *model = ModelEndpoint::default();
            let reader = self.reader(endpoint);
            reader.rewind();
            let batch = read_expected(reader, usize::MAX, want.len());
            let got = contents(&batch);
            assert_eq!(got, want, "final contents of {name}");
            let mut last_per_queue = BTreeMap::new();
            for e in &batch {
                last_per_queue.insert(e.id.priority, e.id);
            }
            for id in last_per_queue.into_values() {
                reader.ack(id).expect("ack");
            }
            let stats = self.store().endpoint_stats(name).expect("endpoint");
            assert_eq!((stats.count, stats.bytes), (0, 0), "{name} settled");
        }
    }
}

/// (priority, payload) of each entry.
fn contents(batch: &[Entry]) -> Vec<(u32, String)> {
    batch
        .iter()
        .map(|e| {
            (
                e.id.priority,
                String::from_utf8_lossy(&e.payload).into_owned(),
            )
        })
        .collect()
}

fn ttl_deadline(ttl: Ttl, now_ms: u64) -> u64 {
    match ttl {
        Ttl::Never => u64::MAX,
        Ttl::After(d) => now_ms + d.as_millis() as u64,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_behaves_like_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut harness = Harness::new();
        for op in &ops {
            harness.apply(op);
        }
        harness.check_drained();
        harness.apply(&Op::Reopen);
        harness.check_drained();
    }
}

/// Reads up to `max` entries, of which `expected` are waiting: sealed epochs are opened by the
/// store's opener thread (a read returns what precedes one that is not open yet), so this
/// waits and reads again until it has them all.
fn read_expected(reader: &mut Reader, max: usize, expected: usize) -> Vec<Entry> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut out = reader.read(max, usize::MAX).expect("read");
    while out.len() < expected.min(max) {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {expected} entries became readable",
            out.len()
        );
        reader.wait(Duration::from_millis(50));
        out.extend(reader.read(max - out.len(), usize::MAX).expect("read"));
    }
    out
}
