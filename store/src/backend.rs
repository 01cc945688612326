//! Everything that knows sled: the seam to swap the engine (redb, fjall) without touching the
//! queue logic.
//!
//! Two kinds of database, each a sled `Db` directory:
//! - an **epoch** ([`EpochDb`]) holds segments: key `s` + segno (u64 BE) -> summary, and key
//!   `d` + segno + part (u16 BE) -> data, each part at most [`PART_BYTES`];
//! - the **meta** database ([`MetaDb`]) holds small records: `e` + endpoint id -> endpoint
//!   number (u32 BE), `n` -> next endpoint number, `q` -> reserved sequence numbers (u64 BE),
//!   `c` + endpoint number + priority (u32 BE each) -> checkpoint (u64 BE).
//!
//! Big-endian keys sort like the integers they encode.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
#[cfg(test)]
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::BackendError;

/// Largest sled value written. sled stores any page over 128 KiB (a quarter of its 512 KiB log
/// segment) as a separate blob file and never deletes replaced blobs; a leaf page holds up to
/// 17 entries before it splits, so 17 parts of 7 KiB keep every leaf under that threshold.
/// (With 60 KiB parts an epoch took 4-5x its data on disk, mostly stale blobs.)
pub(crate) const PART_BYTES: usize = 7 * 1024;

/// Why a database directory could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum OpenFailure {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("sled panicked while opening: {0}")]
    Panic(String),
    /// Another handle (in this process or another) holds the database's file lock.
    #[error("database locked by another handle")]
    Locked,
}

/// How long an open waits for a file lock that a just-closed handle still holds.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// A sled database and its log file, which [`flush`](Durable::flush) syncs itself.
///
/// sled 0.34.7 "flushes" with `sync_file_range(2)`, which writes dirty pages but neither the
/// file's metadata nor the device's write cache: a write it covered can be lost in a power cut
/// or a kernel crash. `fdatasync` on the log after sled's flush closes that gap.
#[derive(Debug)]
struct Durable {
    db: sled::Db,
    log: std::fs::File,
    /// The error of the first flush that failed, returned by every later flush.
    failed: OnceLock<BackendError>,
    /// Injected failures (unit tests only: no cost in the built library).
    #[cfg(test)]
    faults: Option<Arc<faults::Faults>>,
}

impl Durable {
    fn open(path: &Path, cache_bytes: u64, lock_wait: Duration) -> Result<Self, OpenFailure> {
        let created = !path.join(LOG_FILE).exists();
        let db = open_db(path, cache_bytes, lock_wait)?;
        let log = std::fs::File::open(path.join(LOG_FILE)).map_err(BackendError::from)?;
        if created {
            // The new directory and its files must survive a power cut too.
            sync_dir(path).map_err(BackendError::from)?;
            if let Some(parent) = path.parent() {
                sync_dir(parent).map_err(BackendError::from)?;
            }
        }
        Ok(Self {
            db,
            log,
            failed: OnceLock::new(),
            #[cfg(test)]
            faults: None,
        })
    }

    /// Makes everything written so far durable: sled's flush, then `fdatasync` of its log.
    ///
    /// Once a flush failed, every later one fails with the same error, without trying: after
    /// an `fdatasync` error the kernel may have dropped the dirty pages it could not write and
    /// report the next `fdatasync` as a success (PostgreSQL's lesson of 2018), so no later
    /// flush of this database can prove that a write is on disk. (sled does the same with
    /// its own write errors.)
    fn flush(&self) -> Result<(), BackendError> {
        if let Some(e) = self.failed.get() {
            return Err(e.clone());
        }
        self.flush_inner()
            .inspect_err(|e| drop(self.failed.set(e.clone())))
    }

    fn flush_inner(&self) -> Result<(), BackendError> {
        self.db.flush()?;
        #[cfg(test)]
        if let Some(faults) = &self.faults {
            faults.sync()?;
        }
        self.log.sync_data()?;
        Ok(())
    }

    /// Writes a small probe record (key `p`, which nothing reads) and flushes: whether the
    /// database can write and sync at all, after a failure.
    fn probe(&self) -> Result<(), BackendError> {
        self.db.insert(b"p", &[0u8; 512][..])?;
        self.flush()
    }

    /// Notes a write (unit tests: counts writes to a database whose flush failed).
    #[cfg(test)]
    fn note_write(&self) {
        if let Some(faults) = &self.faults
            && self.failed.get().is_some()
        {
            faults.note_write_after_failed_flush();
        }
    }
}

/// Fault injection for unit tests, compiled only with `cfg(test)`.
#[cfg(test)]
pub(crate) mod faults {
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    /// Failures to inject into the databases that carry it.
    #[derive(Debug, Default)]
    pub(crate) struct Faults {
        /// The next this many log syncs (`fdatasync`) fail with `EIO`.
        pub fail_syncs: AtomicU32,
        /// Writes made to a database after one of its flushes failed.
        pub writes_after_failed_flush: AtomicU64,
        /// The next this many segment reads fail with `EIO`.
        pub fail_reads: AtomicU32,
    }

    /// `EIO` while `count` is above zero (taking one off), else success.
    fn fail_if_counted(count: &AtomicU32) -> std::io::Result<()> {
        match count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => Err(std::io::Error::from_raw_os_error(5)),
            Err(_) => Ok(()),
        }
    }

    impl Faults {
        /// Fails the next `n` syncs.
        pub fn fail_next_syncs(&self, n: u32) {
            self.fail_syncs.store(n, Ordering::SeqCst);
        }

        pub(super) fn sync(&self) -> std::io::Result<()> {
            fail_if_counted(&self.fail_syncs)
        }

        /// Fails the next `n` segment reads.
        pub fn fail_next_reads(&self, n: u32) {
            self.fail_reads.store(n, Ordering::SeqCst);
        }

        pub(super) fn read(&self) -> std::io::Result<()> {
            fail_if_counted(&self.fail_reads)
        }

        pub(super) fn note_write_after_failed_flush(&self) {
            self.writes_after_failed_flush
                .fetch_add(1, Ordering::SeqCst);
        }

        pub fn writes_after_failed_flush(&self) -> u64 {
            self.writes_after_failed_flush.load(Ordering::SeqCst)
        }
    }
}

/// The file in which sled 0.34.7 keeps its log, in the database's directory.
const LOG_FILE: &str = "db";

fn sync_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

fn open_db(path: &Path, cache_bytes: u64, lock_wait: Duration) -> Result<sled::Db, OpenFailure> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::LowSpace)
        // The store decides when to flush (group commit); no sled flusher thread per Db.
        .flush_every_ms(None);
    let deadline = Instant::now() + lock_wait;
    loop {
        // sled 0.34.7 is known to panic on some damaged logs instead of returning an error.
        match catch_unwind(AssertUnwindSafe(|| config.open())) {
            Ok(Ok(db)) => return Ok(db),
            // A database closed a moment ago keeps its file lock until sled's I/O threads let
            // go of it: wait a little. Held longer, another handle or process has it.
            Ok(Err(sled::Error::Io(e))) if e.to_string().contains("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(OpenFailure::Locked);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Ok(Err(e)) => return Err(OpenFailure::Backend(e.into())),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(ToString::to_string)
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                return Err(OpenFailure::Panic(msg));
            }
        }
    }
}

fn summary_key(segno: u64) -> [u8; 9] {
    let mut key = [b's'; 9];
    key[1..].copy_from_slice(&segno.to_be_bytes());
    key
}

fn data_key(segno: u64, part: u16) -> [u8; 11] {
    let mut key = [b'd'; 11];
    key[1..9].copy_from_slice(&segno.to_be_bytes());
    key[9..].copy_from_slice(&part.to_be_bytes());
    key
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn be_u32(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

/// A segment ready to be written.
#[derive(Debug)]
pub(crate) struct SegmentWrite<'a> {
    pub segno: u64,
    pub data: &'a [u8],
    pub summary: Vec<u8>,
}

/// One epoch's database of segments. Deliberately not `Clone`: handles are counted through
/// the `Arc`s of the epoch table, so that a sealed epoch can be closed and reopened.
#[derive(Debug)]
pub(crate) struct EpochDb {
    durable: Durable,
}

impl EpochDb {
    fn db(&self) -> &sled::Db {
        &self.durable.db
    }

    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, OpenFailure> {
        Durable::open(path, cache_bytes, LOCK_WAIT).map(|durable| Self { durable })
    }

    /// Like [`open`](Self::open), but fails at once with [`OpenFailure::Locked`] if the file
    /// lock is still held (the writer retries later instead of waiting).
    pub fn try_open(path: &Path, cache_bytes: u64) -> Result<Self, OpenFailure> {
        Durable::open(path, cache_bytes, Duration::ZERO).map(|durable| Self { durable })
    }

    /// Writes segments, each one's data parts before its summary; not durable before
    /// [`flush`](Self::flush).
    ///
    /// The summary is the segment's commit record: sled recovers a prefix of its log, and one
    /// thread writes in this order, so a recovered summary implies every part of its segment
    /// (a torn segment has parts without a summary, which nothing reads). Plain inserts, not a
    /// `sled::Batch`: sled writes out and syncs its I/O buffer twice to open a batch, which
    /// made three disk writes of every group commit instead of one.
    pub fn write(&self, segments: &[SegmentWrite<'_>]) -> Result<(), BackendError> {
        #[cfg(test)]
        self.durable.note_write();
        for seg in segments {
            for (part, chunk) in seg.data.chunks(PART_BYTES).enumerate() {
                let part = u16::try_from(part).expect("segments are far smaller than 65,536 parts");
                self.db().insert(data_key(seg.segno, part), chunk)?;
            }
            self.db()
                .insert(summary_key(seg.segno), seg.summary.as_slice())?;
        }
        Ok(())
    }

    /// Makes everything written so far durable (sled's flush, then `fdatasync`).
    pub fn flush(&self) -> Result<(), BackendError> {
        self.durable.flush()
    }

    /// See `Durable::probe`.
    pub fn probe(&self) -> Result<(), BackendError> {
        self.durable.probe()
    }

    /// Makes this database fail as `faults` says (unit tests).
    #[cfg(test)]
    pub fn inject(&mut self, faults: Option<Arc<faults::Faults>>) {
        self.durable.faults = faults;
    }

    /// The data of segment `segno`, or `None` if it is not there.
    pub fn read(&self, segno: u64) -> Result<Option<Bytes>, BackendError> {
        #[cfg(test)]
        if let Some(faults) = &self.durable.faults {
            faults.read()?;
        }
        let first = data_key(segno, 0);
        let end = data_key(segno, u16::MAX);
        let mut parts = self.db().range(first..=end);
        let Some(head) = parts.next().transpose()? else {
            return Ok(None);
        };
        let head = head.1;
        let Some(second) = parts.next().transpose()? else {
            return Ok(Some(Bytes::from_owner(head)));
        };
        let mut data = Vec::with_capacity(head.len() * 2);
        data.extend_from_slice(&head);
        data.extend_from_slice(&second.1);
        for part in parts {
            data.extend_from_slice(&part?.1);
        }
        Ok(Some(Bytes::from(data)))
    }

    /// Every segment summary, in segment order.
    pub fn summaries(&self) -> impl Iterator<Item = Result<(u64, sled::IVec), BackendError>> + '_ {
        self.db().scan_prefix(b"s").map(|item| {
            let (key, value) = item?;
            let segno = be_u64(&key[1..]).unwrap_or(u64::MAX);
            Ok((segno, value))
        })
    }
}

/// What the meta database holds, read at open.
#[derive(Debug, Default)]
pub(crate) struct MetaContents {
    pub endpoints: Vec<(String, u32)>,
    pub next_endpoint: u32,
    pub seq_reserved: u64,
    /// (endpoint number, priority, checkpoint)
    pub checkpoints: Vec<(u32, u32, u64)>,
    /// The store's time when it was last saved (0: never).
    pub time_ms: u64,
}

/// The small records: endpoints, checkpoints, reserved sequence numbers.
#[derive(Debug)]
pub(crate) struct MetaDb {
    durable: Durable,
}

fn checkpoint_key(endpoint: u32, priority: u32) -> [u8; 9] {
    let mut key = [b'c'; 9];
    key[1..5].copy_from_slice(&endpoint.to_be_bytes());
    key[5..].copy_from_slice(&priority.to_be_bytes());
    key
}

fn endpoint_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(b'e');
    key.extend_from_slice(name.as_bytes());
    key
}

impl MetaDb {
    fn db(&self) -> &sled::Db {
        &self.durable.db
    }

    pub fn open(path: &Path) -> Result<Self, OpenFailure> {
        Durable::open(path, 1 << 20, LOCK_WAIT).map(|durable| Self { durable })
    }

    /// Like [`open`](Self::open), but fails at once with [`OpenFailure::Locked`] if the file
    /// lock is still held (reopening after a write error: the writer retries later).
    pub fn try_open(path: &Path) -> Result<Self, OpenFailure> {
        Durable::open(path, 1 << 20, Duration::ZERO).map(|durable| Self { durable })
    }

    /// See `Durable::probe`.
    pub fn probe(&self) -> Result<(), BackendError> {
        self.durable.probe()
    }

    pub fn load(&self) -> Result<MetaContents, BackendError> {
        let mut contents = MetaContents::default();
        for item in self.db().scan_prefix(b"e") {
            let (key, value) = item?;
            let name = String::from_utf8_lossy(&key[1..]).into_owned();
            if let Some(num) = be_u32(&value) {
                contents.endpoints.push((name, num));
            }
        }
        for item in self.db().scan_prefix(b"c") {
            let (key, value) = item?;
            if let (Some(endpoint), Some(priority), Some(seq)) =
                (be_u32(&key[1..5]), be_u32(&key[5..]), be_u64(&value))
            {
                contents.checkpoints.push((endpoint, priority, seq));
            }
        }
        contents.next_endpoint = self.db().get(b"n")?.and_then(|v| be_u32(&v)).unwrap_or(0);
        contents.seq_reserved = self.db().get(b"q")?.and_then(|v| be_u64(&v)).unwrap_or(0);
        contents.time_ms = self.db().get(b"t")?.and_then(|v| be_u64(&v)).unwrap_or(0);
        Ok(contents)
    }

    /// Records a new endpoint and flushes.
    pub fn add_endpoint(&self, name: &str, num: u32) -> Result<(), BackendError> {
        let mut batch = sled::Batch::default();
        batch.insert(endpoint_key(name), &num.to_be_bytes());
        batch.insert(b"n", &(num + 1).to_be_bytes());
        self.db().apply_batch(batch)?;
        self.flush()
    }

    /// Forgets an endpoint and its checkpoints, and flushes.
    pub fn remove_endpoint(&self, name: &str, num: u32) -> Result<(), BackendError> {
        let mut batch = sled::Batch::default();
        batch.remove(endpoint_key(name));
        for item in self.db().scan_prefix(&checkpoint_key(num, 0)[..5]) {
            batch.remove(item?.0);
        }
        self.db().apply_batch(batch)?;
        self.flush()
    }

    /// Writes checkpoints (not flushed).
    pub fn save_checkpoints(&self, checkpoints: &[(u32, u32, u64)]) -> Result<(), BackendError> {
        let mut batch = sled::Batch::default();
        for &(endpoint, priority, seq) in checkpoints {
            batch.insert(&checkpoint_key(endpoint, priority), &seq.to_be_bytes());
        }
        self.db().apply_batch(batch)?;
        Ok(())
    }

    /// Records the store's time (not flushed), for the next open (see `StoreTime`).
    pub fn save_time(&self, now_ms: u64) -> Result<(), BackendError> {
        self.db().insert(b"t", &now_ms.to_be_bytes())?;
        Ok(())
    }

    /// Records that sequence numbers up to `upto` may be in use, and flushes.
    pub fn reserve_seq(&self, upto: u64) -> Result<(), BackendError> {
        self.db().insert(b"q", &upto.to_be_bytes())?;
        self.flush()
    }

    pub fn flush(&self) -> Result<(), BackendError> {
        self.durable.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_segments_are_split_into_parts_and_read_back_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = EpochDb::open(dir.path(), 1 << 20).expect("open");
        let big: Vec<u8> = (0..PART_BYTES * 2 + 17).map(|i| (i % 251) as u8).collect();
        db.write(&[
            SegmentWrite {
                segno: 1,
                data: &big,
                summary: b"one".to_vec(),
            },
            SegmentWrite {
                segno: 2,
                data: b"small",
                summary: b"two".to_vec(),
            },
        ])
        .expect("write");
        db.flush().expect("flush");
        assert_eq!(db.read(1).expect("read").as_deref(), Some(&big[..]));
        assert_eq!(db.read(2).expect("read").as_deref(), Some(&b"small"[..]));
        assert_eq!(db.read(3).expect("read"), None);
        let summaries: Vec<u64> = db.summaries().map(|s| s.expect("scan").0).collect();
        assert_eq!(summaries, vec![1, 2]);
    }

    #[test]
    fn meta_round_trips_endpoints_checkpoints_and_reservations() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let meta = MetaDb::open(dir.path()).expect("open");
            meta.add_endpoint("iothub", 0).expect("add");
            meta.add_endpoint("d/m/in", 1).expect("add");
            meta.save_checkpoints(&[(0, 2, 40), (1, 0, 7)])
                .expect("save");
            meta.remove_endpoint("d/m/in", 1).expect("remove");
            meta.reserve_seq(1_000).expect("reserve");
        }
        let meta = MetaDb::open(dir.path()).expect("reopen");
        let c = meta.load().expect("load");
        assert_eq!(c.endpoints, vec![("iothub".to_owned(), 0)]);
        assert_eq!(c.checkpoints, vec![(0, 2, 40)]);
        assert_eq!((c.next_endpoint, c.seq_reserved), (2, 1_000));
    }

    #[test]
    fn a_database_whose_flush_failed_never_flushes_successfully_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = EpochDb::open(dir.path(), 1 << 20).expect("open");
        let faults = Arc::new(faults::Faults::default());
        db.inject(Some(Arc::clone(&faults)));
        db.flush().expect("healthy");
        faults.fail_next_syncs(1);
        assert!(db.flush().is_err());
        // The next fdatasync would succeed, but the pages of the failed one may be gone.
        assert!(db.flush().is_err(), "the failure is remembered");
    }
}
