//! Long measurements that do not belong in `cargo test` or criterion:
//!
//! ```text
//! cargo run --release -p store --example soak -- churn  [messages] [backlog] [periodic|sync] [away]
//! cargo run --release -p store --example soak -- reopen [queued]
//! ```
//!
//! `churn` pushes `messages` (default 10,000,000) 256-byte messages through one endpoint whose
//! consumer keeps `backlog` (default 100,000) messages queued, and prints the size on disk, the
//! epochs and the resident memory every 500,000 messages, then throughput and CPU per message
//! (process and per thread). With `away` > 0 the consumer reads nothing until `away` messages
//! were produced (a backlog spike, e.g. an outage), then catches up.
//!
//! `reopen` queues `queued` (default 1,000,000) messages, closes the store, then re-executes
//! itself to open the store in a fresh process and prints the time to open, the time to the
//! first message and the resident memory there.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use store::{Durability, Store, StoreConfig, Target, Ttl};

const PAYLOAD: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| {
        args.get(i)
            .and_then(|a| a.replace('_', "").parse().ok())
            .unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("churn") => {
            let durability = match args.get(3).map(String::as_str) {
                Some("sync") => Durability::Sync,
                _ => Durability::Periodic {
                    interval: Duration::from_millis(10),
                },
            };
            churn(arg(1, 10_000_000), arg(2, 100_000), durability, arg(4, 0));
        }
        Some("reopen") => reopen(arg(1, 1_000_000)),
        Some("reopen-child") => reopen_child(Path::new(args.get(1).expect("directory"))),
        _ => eprintln!(
            "usage: soak churn [messages] [backlog] [periodic|sync] | soak reopen [queued]"
        ),
    }
}

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// (utime + stime) of a /proc stat file, as a duration (USER_HZ = 100).
fn cpu_of(stat: &str) -> Duration {
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn process_cpu() -> Duration {
    cpu_of(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

/// CPU time per thread name, summed over threads of the same name.
fn thread_cpu() -> Vec<(String, Duration)> {
    let mut out: Vec<(String, Duration)> = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let cpu = cpu_of(&std::fs::read_to_string(task.path().join("stat")).unwrap_or_default());
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += cpu,
            None => out.push((name, cpu)),
        }
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.1));
    out
}

fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        total += entries.flatten().map(|e| du(&e.path())).sum::<u64>();
    }
    total
}

fn open(dir: &Path, durability: Durability) -> Arc<Store> {
    let store = Store::open(StoreConfig::new(dir).with_durability(durability)).expect("open store");
    store.add_endpoint("e").expect("add endpoint");
    Arc::new(store)
}

/// Enqueues `n` messages with up to 1,024 tickets in flight.
fn produce(store: &Store, n: u64, mut on_progress: impl FnMut(u64)) {
    let payload = Bytes::from(vec![b's'; PAYLOAD]);
    let endpoint = store.endpoint("e").expect("added at open");
    let target = [Target::new(&endpoint, 0, Ttl::Never)];
    let mut tickets = std::collections::VecDeque::with_capacity(1024);
    for i in 0..n {
        if tickets.len() == 1024
            && let Some(t) = tickets.pop_front()
        {
            store::Ticket::wait(t).expect("durable");
        }
        tickets.push_back(store.enqueue(payload.clone(), &target).expect("enqueue"));
        on_progress(i + 1);
    }
    for t in tickets {
        t.wait().expect("durable");
    }
}

fn churn(messages: u64, backlog: u64, durability: Durability, away: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    if std::env::var_os("SOAK_KEEP").is_some() {
        println!("directory kept: {}", dir.path().display());
    }
    let store = open(dir.path(), durability);
    let done = Arc::new(AtomicBool::new(false));
    let back = Arc::new(AtomicBool::new(away == 0));
    let consumer = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        let back = Arc::clone(&back);
        std::thread::Builder::new()
            .name("consumer".into())
            .spawn(move || {
                let mut reader = store.reader("e").expect("reader");
                while !done.load(Ordering::Relaxed) {
                    let queued = store.endpoint_stats("e").map_or(0, |s| s.count);
                    if queued <= backlog || !back.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    let want = usize::try_from(queued - backlog)
                        .unwrap_or(usize::MAX)
                        .min(4096);
                    let batch = reader.read(want, usize::MAX).expect("read");
                    if let Some(last) = batch.last() {
                        reader.ack(last.id).expect("ack");
                    }
                }
            })
            .expect("spawn consumer")
    };
    println!(
        "durability {durability:?}, {messages} messages of {PAYLOAD} B, backlog {backlog}, consumer away for the first {away}"
    );
    println!(
        "{:>12} {:>12} {:>8} {:>10} {:>10} {:>10}",
        "messages", "du_bytes", "epochs", "x_live", "rss_bytes", "msgs/s"
    );
    let live = backlog * PAYLOAD as u64;
    let start = Instant::now();
    let cpu_start = process_cpu();
    let mut last = (Instant::now(), 0u64);
    let mut max_du = 0;
    let mut samples = Vec::new();
    produce(&store, messages, |i| {
        if i == away {
            back.store(true, Ordering::Relaxed);
        }
        if i % 500_000 == 0 {
            let disk = du(dir.path());
            let now = Instant::now();
            let rate = (i - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, i);
            if i >= 1_000_000 {
                max_du = max_du.max(disk);
                samples.push(disk);
            }
            println!(
                "{i:>12} {disk:>12} {:>8} {:>10.2} {:>10} {rate:>10.0}",
                store.stats().epochs,
                disk as f64 / live as f64,
                rss()
            );
        }
    });
    let elapsed = start.elapsed();
    let cpu = process_cpu() - cpu_start;
    let threads = thread_cpu();
    done.store(true, Ordering::Relaxed);
    consumer.join().expect("consumer");
    if std::env::var_os("SOAK_KEEP").is_some() {
        let _ = dir.keep();
    }
    println!(
        "throughput {:.0} msgs/s, process CPU {:.2} us/msg, max du after 1M msgs {max_du} B = {:.2} x live ({:.0} B per live message), epochs compacted {}",
        messages as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / messages as f64,
        max_du as f64 / live as f64,
        max_du as f64 / backlog as f64,
        store.stats().compacted,
    );
    println!("CPU per thread (us/msg):");
    for (name, cpu) in threads {
        println!(
            "  {name:<16} {:.2}",
            cpu.as_secs_f64() * 1e6 / messages as f64
        );
    }
}

fn reopen(queued: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(
            dir.path(),
            Durability::Periodic {
                interval: Duration::from_millis(10),
            },
        );
        let start = Instant::now();
        produce(&store, queued, |_| {});
        println!(
            "queued {queued} messages in {:.1} s; RSS of the filling process {} B; du {} B",
            start.elapsed().as_secs_f64(),
            rss(),
            du(dir.path())
        );
        match Arc::try_unwrap(store) {
            Ok(store) => store.close().expect("close"),
            Err(_) => unreachable!("no other handle"),
        }
    }
    let exe = std::env::current_exe().expect("own path");
    let status = Command::new(exe)
        .arg("reopen-child")
        .arg(dir.path())
        .status()
        .expect("run the reopening process");
    assert!(status.success(), "reopen child failed");
}

fn reopen_child(dir: &Path) {
    let rss_before = rss();
    let start = Instant::now();
    let store = Store::open(StoreConfig::new(dir)).expect("reopen");
    let opened = start.elapsed();
    let mut reader = store.reader("e").expect("reader");
    let first = reader.read(1, usize::MAX).expect("read");
    let first_at = start.elapsed();
    assert_eq!(first.len(), 1, "a message is queued");
    let queued = store.endpoint_stats("e").map_or(0, |s| s.count);
    println!(
        "fresh process: open {:.1} ms, first message after {:.1} ms, {queued} queued, RSS {} B (process before open {} B)",
        opened.as_secs_f64() * 1e3,
        first_at.as_secs_f64() * 1e3,
        rss(),
        rss_before
    );
    let mut read = 1u64;
    let drain_start = Instant::now();
    loop {
        let batch = reader.read(4096, usize::MAX).expect("read");
        let Some(last) = batch.last() else { break };
        read += batch.len() as u64;
        reader.ack(last.id).expect("ack");
    }
    println!(
        "drained {read} messages in {:.1} s; RSS after draining {} B",
        drain_start.elapsed().as_secs_f64(),
        rss()
    );
}
