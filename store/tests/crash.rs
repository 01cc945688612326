//! Crash test: a child process (this test binary, re-executed) writes and consumes messages
//! and prints what the store acknowledged; the parent kills it with SIGKILL mid-stream, reopens
//! the store and checks that every acknowledged message is still there or was consumed.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use store::{Store, StoreConfig, Target, Ttl};

mod common;
use common::{id_of, numbered};

const CHILD_ENV: &str = "STORE_CRASH_CHILD_DIR";
const PRODUCERS: u64 = 8;

fn config(dir: &str) -> StoreConfig {
    // Small epochs, so that rotation and deletion of consumed epochs happen under the kill.
    StoreConfig::new(dir).with_epoch_bytes(256 * 1024)
}

fn payload(id: u64) -> Bytes {
    numbered(id, 256)
}

/// The child: producers print `ACK <id>` once the store acknowledged; the consumer prints
/// `DONE <id>` once it acknowledged delivery. Runs until killed (or 30 s, as a safety net).
fn child(dir: &str, round: u64) {
    let store = Arc::new(Store::open(config(dir)).expect("child opens the store"));
    let e = store.add_endpoint("e").expect("add endpoint");
    let deadline = Instant::now() + Duration::from_secs(30);
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let store = Arc::clone(&store);
            let e = e.clone();
            std::thread::spawn(move || {
                let target = [Target::new(&e, (p % 2) as u32, Ttl::Never)];
                let mut n = 0;
                while Instant::now() < deadline {
                    let id = (round << 40) | (p << 32) | n;
                    n += 1;
                    store
                        .enqueue_durable(payload(id), &target)
                        .expect("enqueue");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {id}")
                        .and_then(|()| out.flush())
                        .expect("stdout");
                }
            })
        })
        .collect();
    let mut reader = store.reader("e").expect("reader");
    while Instant::now() < deadline {
        let batch = reader
            .read_timeout(32, usize::MAX, Duration::from_millis(50))
            .expect("read");
        for entry in &batch {
            reader.ack(entry.id).expect("ack");
            let mut out = std::io::stdout().lock();
            writeln!(out, "DONE {}", id_of(&entry.payload))
                .and_then(|()| out.flush())
                .expect("stdout");
        }
        // Consume more slowly than producing, so that a backlog builds up.
        std::thread::sleep(Duration::from_millis(2));
    }
    for p in producers {
        p.join().expect("producer");
    }
}

/// Kills the child on drop, so that a failing assertion never leaves it running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round = std::env::var("STORE_CRASH_ROUND").map_or(0, |r| r.parse().unwrap_or(0));
        child(&dir, round);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_str = dir.path().to_str().expect("utf-8 temp path").to_owned();
    let mut acked = BTreeSet::new();
    let mut done = BTreeSet::new();
    // `STORE_CRASH_ROUNDS` runs more rounds (a soak); three by default.
    let rounds = std::env::var("STORE_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3u64);
    for round in 1..=rounds {
        let exe = std::env::current_exe().expect("test binary");
        let child = Command::new(exe)
            .args([
                "acknowledged_messages_survive_sigkill",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir_str)
            .env("STORE_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let mut child = KillOnDrop(child);
        let stdout = child.0.stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::channel();
        let collector = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        // Let it run until it has acknowledged a few thousand messages (or 5 s), then kill.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut acked_this_round = 0;
        while acked_this_round < 3_000 && Instant::now() < deadline {
            let Ok(line) = received.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            acked_this_round += u64::from(record(&line, &mut acked, &mut done));
        }
        child.0.kill().expect("SIGKILL the child");
        child.0.wait().expect("reap the child");
        collector.join().expect("collector");
        for line in received.try_iter() {
            record(&line, &mut acked, &mut done);
        }
        assert!(
            acked_this_round > 0,
            "round {round}: the child acknowledged nothing"
        );

        let store = Store::open(config(&dir_str)).expect("reopen after SIGKILL");
        assert!(
            store.recovery_report().quarantined.is_empty(),
            "round {round}: nothing moved aside"
        );
        let mut present = BTreeSet::new();
        let mut reader = store.reader("e").expect("reader");
        // Sealed epochs are opened by the store's opener thread: wait for them.
        let stored = store.endpoint_stats("e").map_or(0, |s| s.count);
        let mut read = 0;
        while read < stored {
            assert!(
                reader.wait(Duration::from_secs(20)),
                "round {round}: stored entries never became readable"
            );
            let batch = reader.read(1024, usize::MAX).expect("read");
            read += batch.len() as u64;
            present.extend(batch.iter().map(|e| id_of(&e.payload)));
        }
        let lost: Vec<_> = acked
            .iter()
            .filter(|id| !present.contains(id) && !done.contains(id))
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged messages lost, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
}

/// Records one line of the child's output; returns whether it was an enqueue acknowledgement.
/// The test harness may print its own text before the child's first line, so markers are
/// looked for anywhere in the line.
fn record(line: &str, acked: &mut BTreeSet<u64>, done: &mut BTreeSet<u64>) -> bool {
    let after = |marker: &str| {
        line.split_once(marker)
            .and_then(|(_, id)| id.trim().parse::<u64>().ok())
    };
    if let Some(id) = after("ACK ") {
        acked.insert(id);
        true
    } else {
        if let Some(id) = after("DONE ") {
            done.insert(id);
        }
        false
    }
}

/// The state a crash can leave now that readers see entries before their fsync: a reader
/// acknowledged entries and their checkpoint was saved (the meta database is flushed on its
/// own), but the log lost them. Modelled by removing every epoch after a clean close: the
/// checkpoint then lies above the end of the durable log. A message enqueued after the reopen
/// must be numbered above that checkpoint and delivered; numbered from the log's end, it would
/// fall under the checkpoint and be skipped as already consumed.
#[test]
fn a_checkpoint_above_the_durable_log_never_hides_a_new_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_str = dir.path().to_str().expect("utf-8 temp path").to_owned();
    let store = Store::open(config(&dir_str)).expect("open");
    let e = store.add_endpoint("e").expect("add endpoint");
    let target = [Target::new(&e, 0, Ttl::Never)];
    for id in 1..=5 {
        store
            .enqueue_durable(payload(id), &target)
            .expect("enqueue");
    }
    let mut reader = store.reader("e").expect("reader");
    let batch = reader
        .read_timeout(16, usize::MAX, Duration::from_secs(10))
        .expect("read");
    assert_eq!(batch.len(), 5, "every entry is readable");
    reader
        .ack(batch.last().expect("five entries").id)
        .expect("ack");
    drop(reader);
    store.close().expect("close saves the checkpoint");

    // The crash: the log ends before the checkpoint (here, nothing of it is left).
    let epochs = dir.path().join("epochs");
    for entry in std::fs::read_dir(&epochs).expect("epochs/") {
        std::fs::remove_dir_all(entry.expect("entry").path()).expect("remove an epoch");
    }

    let store = Store::open(config(&dir_str)).expect("reopen");
    let e = store.endpoint("e").expect("the endpoint is still there");
    store
        .enqueue_durable(payload(6), &[Target::new(&e, 0, Ttl::Never)])
        .expect("enqueue after the crash");
    let mut reader = store.reader("e").expect("reader");
    let batch = reader
        .read_timeout(16, usize::MAX, Duration::from_secs(10))
        .expect("read");
    let ids: Vec<u64> = batch.iter().map(|e| id_of(&e.payload)).collect();
    assert_eq!(
        ids,
        [6],
        "the new message is delivered, not taken as consumed"
    );
}
