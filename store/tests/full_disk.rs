//! A full disk, for real: the store runs on a small file system of its own (a loop-mounted
//! ext4 image, or a tmpfs if loop devices are not available), which the test fills with
//! messages and a filler file, then frees.
//!
//! Needs root (mount). Where mounting is impossible the test prints why and passes.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{id_of, numbered, wait_until};
use store::{EnqueueError, Health, Store, StoreConfig, Target, Ttl};

/// Size of the test file system.
const FS_MIB: u64 = 48;
/// Free space the filler leaves for the store to fill with messages.
const LEFT_FOR_MESSAGES: u64 = 6 << 20;

/// A mounted file system, unmounted (and its image removed) when dropped, also when the test
/// fails.
struct Mounted {
    mountpoint: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Mounted {
    /// Mounts a fresh file system; `Err` says why it cannot be done here.
    fn new() -> Result<Self, String> {
        let scratch = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mountpoint = scratch.path().join("mnt");
        std::fs::create_dir(&mountpoint).map_err(|e| format!("mkdir: {e}"))?;
        let image = scratch.path().join("fs.img");
        let ext4 = (|| {
            let file = std::fs::File::create(&image).map_err(|e| format!("image: {e}"))?;
            file.set_len(FS_MIB << 20)
                .map_err(|e| format!("image: {e}"))?;
            // No blocks reserved for root: the store (running as root here) sees ENOSPC when
            // the free space the test measures is gone.
            run("mkfs.ext4", &["-F", "-q", "-m", "0", path_str(&image)?])?;
            run(
                "mount",
                &["-o", "loop", path_str(&image)?, path_str(&mountpoint)?],
            )
        })();
        if let Err(ext4) = ext4 {
            let size = format!("size={FS_MIB}m");
            run(
                "mount",
                &["-t", "tmpfs", "-o", &size, "tmpfs", path_str(&mountpoint)?],
            )
            .map_err(|tmpfs| format!("ext4 on a loop device: {ext4}; tmpfs: {tmpfs}"))?;
            eprintln!("loop-mounted ext4 unavailable ({ext4}); using tmpfs");
        }
        Ok(Self {
            mountpoint,
            _scratch: scratch,
        })
    }
}

impl Mounted {
    /// A fresh file system, or `None` (saying why) where none can be mounted: the test then
    /// passes without running.
    fn or_skip() -> Option<Self> {
        Self::new()
            .inspect_err(|why| eprintln!("SKIPPED: cannot mount a small file system here: {why}"))
            .ok()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let path = self.mountpoint.display().to_string();
        // Files may still be open for a moment (sled's threads let go of them after the store
        // is dropped, also when the test failed): retry, then detach it anyway.
        for _ in 0..50 {
            if run("umount", &[&path]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = run("umount", &["-l", &path]) {
            eprintln!("cannot unmount the test file system: {e}");
        }
    }
}

fn path_str(path: &Path) -> Result<&str, String> {
    path.to_str().ok_or_else(|| "non-UTF-8 path".to_owned())
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

/// Writes a file of zeros that leaves about `leave` bytes free (written, not sparse), or
/// fills the disk if the store wrote meanwhile.
fn fill(path: &Path, leave: u64) {
    let free = free_bytes(path.parent().expect("filler has a parent"));
    let mut left = free.saturating_sub(leave);
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 1 << 20];
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).expect("small");
        match file.write_all(&chunk[..n]) {
            Ok(()) => left -= n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filler write: {e}"),
        }
    }
    match file.sync_all() {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {}
        Err(e) => panic!("filler sync: {e}"),
    }
}

fn payload(id: u64) -> Bytes {
    numbered(id, 4096)
}

/// Reads everything the reader has (waiting for epochs to open), acknowledging it if `ack`.
fn read_all(store: &Store, ack: bool) -> Vec<u64> {
    let mut reader = store.reader("e").expect("reader");
    let mut ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.endpoint_stats("e").map_or(0, |s| s.count) > ids.len() as u64 || ack {
        assert!(
            Instant::now() < deadline,
            "could not read everything stored"
        );
        if !reader.wait(Duration::from_millis(100)) {
            break;
        }
        let batch = reader
            .read(256, usize::MAX)
            .expect("reading while the disk is full");
        if batch.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        ids.extend(batch.iter().map(|e| id_of(&e.payload)));
        if ack && let Some(last) = batch.last() {
            reader.ack(last.id).expect("ack");
        }
    }
    ids
}

/// Small epochs (several sealed ones to read back while the disk is full) and a reserve large
/// enough for readers to open them all: sled writes up to 512 KiB (it pads its last log
/// segment) and a snapshot the first time a database is opened after it was written.
fn config(dir: &Path) -> StoreConfig {
    StoreConfig::new(dir)
        .with_epoch_bytes(1 << 20)
        .with_resume_free_bytes(1 << 20)
        .with_reserve_bytes(4 << 20)
        .with_cleanup_interval(Duration::from_millis(50))
}

#[test]
fn a_full_disk_refuses_new_messages_serves_stored_ones_and_recovers_when_space_returns() {
    let Some(mounted) = Mounted::or_skip() else {
        return;
    };
    let dir = mounted.mountpoint.join("store");
    let filler = mounted.mountpoint.join("filler");
    let store = Store::open(config(&dir)).expect("open");
    let e = store.add_endpoint("e").expect("add");
    let target = [Target::new(&e, 0, Ttl::Never)];
    fill(&filler, LEFT_FOR_MESSAGES);

    // Fill the rest with messages until the store says the disk is full.
    let mut acked = BTreeSet::new();
    let mut next = 0;
    let refused_at = loop {
        assert!(next < 100_000, "the disk never filled up");
        let id = next;
        next += 1;
        match store.enqueue_durable(payload(id), &target) {
            Ok(()) => {
                acked.insert(id);
            }
            Err(EnqueueError::DiskFull) => break id,
            Err(other) => panic!("message {id}: expected DiskFull, got {other:?}"),
        }
    };
    assert!(
        !acked.is_empty(),
        "some messages fit before the disk was full"
    );
    eprintln!(
        "{} messages stored, message {refused_at} refused: disk full",
        acked.len()
    );

    // While full: refused at once, typed, counted; the state can be queried.
    wait_until("the store to report a full disk", || {
        store.health() == Health::DiskFull
    });
    let refused_before = store.stats().refused;
    for _ in 0..10 {
        let id = next;
        next += 1;
        match store.enqueue(payload(id), &target) {
            Err(EnqueueError::DiskFull) => {}
            Ok(ticket) => panic!("message {id} accepted on a full disk: {:?}", ticket.wait()),
            Err(other) => panic!("message {id}: expected DiskFull, got {other:?}"),
        }
    }
    let stats = store.stats();
    assert!(stats.refused >= refused_before + 10, "{stats:?}");
    assert_eq!(stats.health, Health::DiskFull);

    // What was stored is still delivered (read, not acknowledged: space must come back from
    // the filler, not from consumed epochs).
    let read: BTreeSet<u64> = read_all(&store, false).into_iter().collect();
    assert_eq!(
        read, acked,
        "every acknowledged message is readable while the disk is full"
    );
    assert_eq!(store.health(), Health::DiskFull, "still full");

    // Space returns: the store writes again by itself within seconds.
    std::fs::remove_file(&filler).expect("remove filler");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let id = next;
        next += 1;
        match store.enqueue_durable(payload(id), &target) {
            Ok(()) => {
                acked.insert(id);
                break;
            }
            Err(EnqueueError::DiskFull) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(other) => panic!("the store did not recover within 10 s: {other:?}"),
        }
    }
    assert_eq!(store.health(), Health::Writable);
    for _ in 0..100 {
        let id = next;
        next += 1;
        store
            .enqueue_durable(payload(id), &target)
            .expect("writable again");
        acked.insert(id);
    }
    store
        .flush()
        .expect("flush, checkpoints included, after recovery");
    store.close().expect("close");

    // Nothing acknowledged was lost, across a restart too. (Messages whose ticket failed may
    // come back: at-least-once, their publisher sent them again.)
    let store = Store::open(config(&dir)).expect("reopen");
    let read: BTreeSet<u64> = read_all(&store, true).into_iter().collect();
    let missing: Vec<_> = acked.difference(&read).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    store.close().expect("close");
}

/// Full-disk episodes under load, as the hub meets them: producers on several threads whose
/// messages are acknowledged (or refused) while a reader consumes and acknowledges, small
/// epochs rotating, sealed ones closed and opened again, and the disk filled and freed again
/// and again. Every message whose ticket succeeded must be read, during the run or after a
/// restart. `FULL_DISK_CYCLES` sets the number of episodes (default 4; more for a soak).
#[test]
fn acknowledged_messages_survive_repeated_full_disks_under_concurrent_load() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let Some(mounted) = Mounted::or_skip() else {
        return;
    };
    let cycles: u32 = std::env::var("FULL_DISK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = mounted.mountpoint.join("store");
    let filler = mounted.mountpoint.join("filler");
    let config = || {
        StoreConfig::new(&dir)
            .with_epoch_bytes(256 << 10)
            .with_resume_free_bytes(1 << 20)
            .with_reserve_bytes(2 << 20)
            .with_cleanup_interval(Duration::from_millis(20))
    };
    let store = Arc::new(Store::open(config()).expect("open"));
    store.add_endpoint("e").expect("add");
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let read = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let (store, acked, stop, next) = (
                Arc::clone(&store),
                Arc::clone(&acked),
                Arc::clone(&stop),
                Arc::clone(&next),
            );
            std::thread::spawn(move || {
                let e = store.endpoint("e").expect("endpoint");
                let target = [Target::new(&e, 0, Ttl::Never)];
                while !stop.load(Ordering::Relaxed) {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let stored = store
                        .enqueue(numbered(id, 300), &target)
                        .and_then(store::Ticket::wait);
                    match stored {
                        Ok(()) => {
                            acked.lock().unwrap().insert(id);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            })
        })
        .collect();
    let consumer = {
        let (store, read, stop) = (Arc::clone(&store), Arc::clone(&read), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut reader = store.reader("e").expect("reader");
            while !stop.load(Ordering::Relaxed) {
                if !reader.wait(Duration::from_millis(50)) {
                    continue;
                }
                let batch = reader.read(32, usize::MAX).expect("read");
                read.lock()
                    .unwrap()
                    .extend(batch.iter().map(|e| id_of(&e.payload)));
                if let Some(last) = batch.last() {
                    reader.ack(last.id).expect("ack");
                }
            }
        })
    };
    for _ in 0..cycles {
        std::thread::sleep(Duration::from_millis(300));
        fill(&filler, 256 << 10);
        std::thread::sleep(Duration::from_millis(400));
        std::fs::remove_file(&filler).expect("remove filler");
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().expect("producer");
    }
    consumer.join().expect("consumer");
    let stats = store.stats();
    let store = Arc::into_inner(store).expect("the threads are done");
    store.close().expect("close");

    // After a restart, whatever was not consumed yet comes back.
    let store = Store::open(config()).expect("reopen");
    read.lock().unwrap().extend(read_all(&store, true));
    store.close().expect("close");
    let acked = acked.lock().unwrap();
    let read = read.lock().unwrap();
    let missing: Vec<_> = acked.difference(&read).collect();
    eprintln!(
        "{} acknowledged, {} read, {} refused, {} write failures, {} lost by the store",
        acked.len(),
        read.len(),
        stats.refused,
        stats.write_failures,
        stats.lost
    );
    assert!(
        stats.write_failures > 0,
        "the disk was never full: {stats:?}"
    );
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}
