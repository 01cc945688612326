//! Helpers shared by the black-box tests.
#![allow(dead_code, reason = "each test crate uses a different subset")]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

use bytes::Bytes;
use store::{
    Durability, EndpointHandle, Entry, ManualClock, Reader, Store, StoreConfig, Target, Ttl,
};

/// Start of the manual clock in tests: 2026-01-01.
pub const T0: u64 = 1_767_225_600_000;

pub fn periodic() -> Durability {
    Durability::Periodic {
        interval: Duration::from_millis(10),
    }
}

/// A config with a manual clock and small sizes so that rotation happens in tests.
pub fn config(dir: &std::path::Path, clock: &ManualClock) -> StoreConfig {
    let mut config = StoreConfig::new(dir)
        .with_clock(Arc::new(clock.clone()))
        .with_cleanup_interval(Duration::from_millis(20));
    config.checkpoint_interval = Duration::from_millis(5);
    config
}

/// A target that never expires.
pub fn to(endpoint: &EndpointHandle, priority: u32) -> Target<'_> {
    Target::new(endpoint, priority, Ttl::Never)
}

pub fn put(store: &Store, payload: &str, targets: &[Target<'_>]) {
    store
        .enqueue_durable(Bytes::copy_from_slice(payload.as_bytes()), targets)
        .expect("enqueue");
}

pub fn payloads(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .collect()
}

/// Reads and acks everything stored, waiting (briefly) for sealed epochs to be opened by the
/// store's opener thread: a read never opens one itself.
pub fn drain(reader: &mut Reader) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let batch = reader.read(64, usize::MAX).expect("read");
        let Some(last) = batch.last() else {
            if reader.wait(Duration::from_millis(200)) {
                continue;
            }
            return out;
        };
        reader.ack(last.id).expect("ack");
        out.extend(payloads(&batch));
    }
}

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: polls `future` on this thread, parking between wake-ups, at most
/// `timeout`; `None` on time-out.
pub fn block_on<F: Future>(future: F, timeout: Duration) -> Option<F::Output> {
    let deadline = std::time::Instant::now() + timeout;
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return Some(out);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::park_timeout(left);
    }
}

/// Polls `cond` until it holds; fails the test after 20 s.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A payload of `size` bytes (at least 16) that starts with `id`, zero-padded to 16 digits.
pub fn numbered(id: u64, size: usize) -> Bytes {
    let mut p = format!("{id:016}").into_bytes();
    p.resize(size.max(16), b'.');
    Bytes::from(p)
}

/// The id a [`numbered`] payload starts with.
pub fn id_of(payload: &[u8]) -> u64 {
    std::str::from_utf8(&payload[..16])
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("payload starts with its id")
}
