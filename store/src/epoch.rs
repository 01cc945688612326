//! Epochs: the store's log is cut into sled databases, one directory per epoch, so that disk
//! space comes back by deleting whole directories (sled never shrinks a database, see
//! sled-findings.md). This module owns the directory layout and the table of readable epochs.
//!
//! ```text
//! <dir>/meta/                 endpoints, checkpoints (MetaDb)
//! <dir>/epochs/<id:020>/      segments of epoch <id> (EpochDb)
//! <dir>/trash/                epochs being deleted (renamed first, so deletion is atomic)
//! <dir>/quarantine/           databases that could not be opened, moved aside, never deleted
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::backend::{EpochDb, OpenFailure};
use crate::error::OpenError;

/// Liveness of an epoch: every queue segment in the epoch holds an `Arc` of its token, so the
/// epoch may be deleted when the writer holds the only one left.
#[derive(Debug)]
pub(crate) struct EpochToken {
    pub id: u64,
    /// One past the highest segment number of this epoch whose flush succeeded in this run
    /// (0: none known). A segment below it that cannot be read held acknowledged messages:
    /// a storage fault, told apart in the log from the segments of a failed flush.
    synced_below: AtomicU64,
}

impl EpochToken {
    pub fn new(id: u64) -> Self {
        Self {
            id,
            synced_below: AtomicU64::new(0),
        }
    }

    /// The segments below `below` were flushed.
    pub fn note_synced(&self, below: u64) {
        self.synced_below.fetch_max(below, Ordering::Relaxed);
    }

    /// Whether segment `segno` is known to have been flushed in this run.
    pub fn was_synced(&self, segno: u64) -> bool {
        segno < self.synced_below.load(Ordering::Relaxed)
    }
}

/// A database that could not be opened and was moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where the database was.
    pub original: PathBuf,
    /// Where it is now (under `<dir>/quarantine/`).
    pub moved_to: PathBuf,
    /// Why it could not be opened.
    pub reason: String,
}

/// Paths of the store's directories.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub meta: PathBuf,
    epochs: PathBuf,
    trash: PathBuf,
    quarantine: PathBuf,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self {
            meta: root.join("meta"),
            epochs: root.join("epochs"),
            trash: root.join("trash"),
            quarantine: root.join("quarantine"),
        }
    }

    /// Creates the directories and finishes deletions interrupted by a crash.
    pub fn prepare(&self) -> Result<(), OpenError> {
        for dir in [&self.epochs, &self.trash, &self.quarantine] {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        for entry in fs::read_dir(&self.trash).map_err(io_error(&self.trash))? {
            let path = entry.map_err(io_error(&self.trash))?.path();
            fs::remove_dir_all(&path).map_err(io_error(&path))?;
        }
        Ok(())
    }

    pub fn epoch_dir(&self, id: u64) -> PathBuf {
        self.epochs.join(format!("{id:020}"))
    }

    /// Ids of the epoch directories, in increasing order; other names are left alone.
    pub fn epoch_ids(&self) -> Result<Vec<u64>, OpenError> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.epochs).map_err(io_error(&self.epochs))? {
            let entry = entry.map_err(io_error(&self.epochs))?;
            match entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                Some(id) => ids.push(id),
                None => {
                    tracing::warn!(path = %entry.path().display(), "ignoring unknown entry in epochs/");
                }
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Moves a database that cannot be opened out of the way, loudly.
    pub fn quarantine(
        &self,
        path: &Path,
        reason: String,
        now_ms: u64,
    ) -> Result<Quarantined, OpenError> {
        let name = path
            .file_name()
            .map_or_else(|| "db".into(), |n| n.to_string_lossy().into_owned());
        let moved_to = self.quarantine.join(format!("{name}-{now_ms}"));
        fs::rename(path, &moved_to).map_err(io_error(path))?;
        tracing::error!(
            original = %path.display(),
            moved_to = %moved_to.display(),
            %reason,
            "store database could not be opened; moved aside, its messages are not served"
        );
        Ok(Quarantined {
            original: path.to_owned(),
            moved_to,
            reason,
        })
    }

    /// Deletes an epoch directory: renamed into trash (atomic), then removed.
    pub fn delete_epoch(&self, id: u64) -> io::Result<()> {
        let from = self.epoch_dir(id);
        let to = self.trash.join(format!("{id:020}"));
        fs::rename(&from, &to)?;
        fs::remove_dir_all(&to)
    }
}

/// The epochs readers may read from, shared between the writer (which adds, closes and
/// removes) and the readers (which read a segment they hold a reference to).
///
/// Readers never open an epoch on their own thread (they run on the hub's async threads, and
/// opening replays a sled log): a reader that needs a closed epoch registers as a waiter and
/// gets `None`; the store's opener thread ([`run_opener`](Self::run_opener)) opens it and
/// wakes the waiters. An epoch that cannot be opened (its lock is still held, or it fails) is
/// tried again after a delay that doubles up to [`RETRY_MAX`].
///
/// Only the current epoch and a few sealed ones are open at a time: an open sled database
/// keeps megabytes in memory, and a backlog may span hundreds of epochs. The writer closes an
/// epoch when it seals it; a reader opens a closed epoch when it needs one of its segments,
/// closing the sealed epoch used least recently beyond [`OPEN_FOR_READERS`]. Readers never
/// keep a database handle beyond one read, so the table usually holds the only handle of a
/// sealed epoch and can close it. More readers than that, each behind in a different sealed
/// epoch, make epochs close and open again in turn (slower, not wrong).
#[derive(Debug)]
pub(crate) struct EpochTable {
    table: RwLock<Table>,
    /// Rung when an open is requested (capacity 1: a ring that is not answered yet is enough).
    doorbell: (Sender<()>, Receiver<()>),
    /// Set when the store closes: the opener thread returns.
    stopped: AtomicBool,
    /// Opens done (unit tests check on which thread).
    #[cfg(test)]
    opened_on: std::sync::Mutex<Vec<String>>,
    /// Ticks of use, to find the epoch used least recently.
    clock: AtomicU64,
    layout: Layout,
    cache_bytes: u64,
}

/// Sealed epochs kept open for readers at most (beyond those a handle still holds).
pub(crate) const OPEN_FOR_READERS: usize = 8;

/// First delay before an epoch that could not be opened is tried again (a lock that a handle
/// closed a moment ago still holds usually goes within a millisecond or two).
const RETRY_MIN: Duration = Duration::from_millis(1);
/// Longest delay between attempts to open an epoch.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(5);

/// A reader waiting for a closed epoch: the opener thread calls it once the epoch is open
/// (or gone), with no lock of the table held. Endpoints are the waiters of the store.
pub(crate) trait Waiter: Send + Sync + std::fmt::Debug {
    /// The epoch waited for can be read now (or will never be).
    fn epoch_ready(&self);
}

/// What [`EpochTable::run_if_open`] found.
enum Lookup<R, F> {
    /// The epoch was open: what `f` returned.
    Ran(R),
    /// Not an epoch on disk.
    Unknown,
    /// On disk, closed: `f`, not run.
    Closed(F),
    /// Open through a handle a read failed on ([`EpochTable::reopen`]): `f`, not run.
    Stale(F),
}

/// An epoch readers wait for.
#[derive(Debug)]
struct Pending {
    waiters: Vec<Arc<dyn Waiter>>,
    /// Failed attempts so far.
    attempts: u32,
    next_try: Instant,
    /// Whether a failure (other than a held lock) was logged.
    logged: bool,
}

impl Pending {
    /// Counts a failed attempt; the next one comes after a delay that doubles each time.
    fn retry_later(&mut self) {
        self.attempts = self.attempts.saturating_add(1);
        let delay = RETRY_MIN
            .saturating_mul(1 << self.attempts.min(16))
            .min(RETRY_MAX);
        self.next_try = Instant::now() + delay;
    }
}

#[derive(Debug)]
struct Open {
    db: Arc<EpochDb>,
    last_used: AtomicU64,
}

#[derive(Debug, Default)]
struct Table {
    open: BTreeMap<u64, Open>,
    /// Epochs on disk that are not open.
    closed: BTreeSet<u64>,
    /// Epochs opened by readers (the others open are the current one and those the writer
    /// has yet to close).
    opened_for_readers: BTreeSet<u64>,
    /// Closed epochs readers wait for, to be opened by the opener thread.
    pending: BTreeMap<u64, Pending>,
    /// Open epochs a read failed on ([`EpochTable::reopen`]): not read through that handle
    /// again. The opener closes it once nobody else holds it and opens the epoch afresh.
    stale: BTreeSet<u64>,
}

impl Table {
    /// Closes epoch `id` if the table holds its only handle; `true` if it is not open now.
    fn close(&mut self, id: u64) -> bool {
        match self.open.get(&id) {
            Some(open) if Arc::strong_count(&open.db) == 1 => {
                // Dropping the last handle closes the database (its file lock goes a moment
                // later).
                self.open.remove(&id);
                self.closed.insert(id);
                self.opened_for_readers.remove(&id);
                self.stale.remove(&id);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Whether epoch `id` can be read only once the opener has opened it: closed, or open
    /// through a handle a read failed on.
    fn must_open(&self, id: u64) -> bool {
        self.closed.contains(&id) || self.stale.contains(&id)
    }

    /// Closes the epochs readers used least recently until there is room for one more
    /// (skipping those still in use).
    fn make_room_for_readers(&mut self) {
        while self.opened_for_readers.len() >= OPEN_FOR_READERS {
            let idle = self
                .opened_for_readers
                .iter()
                .filter_map(|id| self.open.get(id).map(|open| (id, open)))
                .filter(|(_, open)| Arc::strong_count(&open.db) == 1)
                .min_by_key(|(_, open)| open.last_used.load(Ordering::Relaxed))
                .map(|(&id, _)| id);
            match idle {
                Some(id) => {
                    self.close(id);
                }
                None => break,
            }
        }
    }
}

impl EpochTable {
    /// An empty table for the epochs of `layout`, opened with `cache_bytes` of sled cache.
    pub fn new(layout: Layout, cache_bytes: u64) -> Self {
        Self {
            table: RwLock::default(),
            doorbell: crossbeam_channel::bounded(1),
            stopped: AtomicBool::new(false),
            #[cfg(test)]
            opened_on: std::sync::Mutex::default(),
            clock: AtomicU64::new(0),
            layout,
            cache_bytes,
        }
    }

    /// Runs `f` on epoch `id`'s database if it is open. If it is closed, `waiter` is woken
    /// once the opener thread has opened it, and the result is `None` (also if it is not on
    /// disk). Never opens a database on the caller's thread.
    pub fn with<R>(
        &self,
        id: u64,
        waiter: &Arc<impl Waiter + 'static>,
        f: impl FnOnce(&EpochDb) -> R,
    ) -> Option<R> {
        match self.run_if_open(id, f) {
            Lookup::Ran(r) => Some(r),
            Lookup::Unknown => None,
            Lookup::Closed(_) | Lookup::Stale(_) => {
                self.request(id, waiter);
                None
            }
        }
    }

    /// Runs `f` on epoch `id`'s database if it is open (under the table's read lock); hands
    /// `f` back if the epoch is closed, or open through a handle a read failed on.
    fn run_if_open<R, F: FnOnce(&EpochDb) -> R>(&self, id: u64, f: F) -> Lookup<R, F> {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        if table.stale.contains(&id) {
            return Lookup::Stale(f);
        }
        if let Some(open) = table.open.get(&id) {
            open.last_used.store(self.tick(), Ordering::Relaxed);
            return Lookup::Ran(f(&open.db));
        }
        if table.closed.contains(&id) {
            Lookup::Closed(f)
        } else {
            Lookup::Unknown
        }
    }

    /// Whether epoch `id` can be read now: open, or not an epoch this table knows (nothing to
    /// wait for). If it is closed, asks the opener thread to open it and wake `waiter`.
    pub fn available(&self, id: u64, waiter: &Arc<impl Waiter + 'static>) -> bool {
        if !self
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .must_open(id)
        {
            return true;
        }
        !self.request(id, waiter)
    }

    /// Asks the opener thread to open closed epoch `id` and wake `waiter`; `false` if it is
    /// not closed (any more).
    fn request(&self, id: u64, waiter: &Arc<impl Waiter + 'static>) -> bool {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        if !table.must_open(id) {
            return false;
        }
        let pending = table.pending.entry(id).or_insert_with(|| Pending {
            waiters: Vec::new(),
            attempts: 0,
            next_try: Instant::now(),
            logged: false,
        });
        let known = pending
            .waiters
            .iter()
            .any(|w| std::ptr::addr_eq(Arc::as_ptr(w), Arc::as_ptr(waiter)));
        if !known {
            pending.waiters.push(Arc::clone(waiter) as Arc<dyn Waiter>);
        }
        let due = pending.attempts == 0;
        drop(table);
        if due {
            let _ = self.doorbell.0.try_send(());
        }
        true
    }

    /// Body of the store's opener thread: opens the epochs readers wait for, retrying those
    /// that cannot be opened with a delay that doubles each time (up to [`RETRY_MAX`]), and
    /// wakes their readers. Returns after [`shutdown`](Self::shutdown).
    pub fn run_opener(&self) {
        while !self.stopped.load(Ordering::Acquire) {
            let now = Instant::now();
            let (due, next) = {
                let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
                let due: Vec<u64> = table
                    .pending
                    .iter()
                    .filter(|(_, p)| p.next_try <= now)
                    .map(|(&id, _)| id)
                    .collect();
                let next = table
                    .pending
                    .values()
                    .filter(|p| p.next_try > now)
                    .map(|p| p.next_try)
                    .min();
                (due, next)
            };
            for id in due {
                self.open_pending(id);
            }
            if !self
                .table
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .pending
                .values()
                .any(|p| p.next_try <= Instant::now())
            {
                let wait = next.map_or(RETRY_MAX, |t| t.saturating_duration_since(Instant::now()));
                let _ = self.doorbell.1.recv_timeout(wait);
            }
        }
    }

    /// One attempt to open a pending epoch; wakes its waiters if it opened (or went away).
    fn open_pending(&self, id: u64) {
        {
            let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
            if table.stale.contains(&id) && !table.close(id) {
                // The failed handle is still held (a sync job, the writer): later.
                if let Some(p) = table.pending.get_mut(&id) {
                    p.retry_later();
                }
                return;
            }
        }
        let opened = EpochDb::try_open(&self.layout.epoch_dir(id), self.cache_bytes);
        #[cfg(test)]
        self.opened_on
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(std::thread::current().name().unwrap_or("").to_owned());
        let waiters = {
            let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
            if !table.closed.contains(&id) {
                // Deleted meanwhile (or opened by the writer): nothing to wait for.
                table.pending.remove(&id).map(|p| p.waiters)
            } else {
                match opened {
                    Ok(db) => {
                        let db = Arc::new(db);
                        table.make_room_for_readers();
                        table.closed.remove(&id);
                        table.open.insert(id, self.entry(&db));
                        table.opened_for_readers.insert(id);
                        let pending = table.pending.remove(&id);
                        if pending.as_ref().is_some_and(|p| p.logged) {
                            tracing::info!(
                                epoch = id,
                                "a sealed epoch that could not be opened is open now"
                            );
                        }
                        pending.map(|p| p.waiters)
                    }
                    Err(e) => {
                        if let Some(p) = table.pending.get_mut(&id) {
                            p.retry_later();
                            if !matches!(e, OpenFailure::Locked) && !p.logged {
                                p.logged = true;
                                tracing::error!(epoch = id, error = %e, "a sealed epoch cannot be opened; its readers wait, retrying");
                            }
                        }
                        None
                    }
                }
            }
        };
        for waiter in waiters.into_iter().flatten() {
            waiter.epoch_ready();
        }
    }

    /// Stops the opener thread.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
        let _ = self.doorbell.0.try_send(());
    }

    /// Runs `f` on epoch `id`'s database, opening it on this thread if it is closed (the
    /// writer's compaction); `None` if it is not on disk or cannot be opened right now. The
    /// database is opened without holding the table's lock: replaying its log takes a while.
    pub fn with_blocking<R>(&self, id: u64, f: impl FnOnce(&EpochDb) -> R) -> Option<R> {
        let f = match self.run_if_open(id, f) {
            Lookup::Ran(r) => return Some(r),
            Lookup::Unknown => return None,
            Lookup::Closed(f) => f,
            // Its failed handle is still open (and locks the files): the opener reopens it.
            Lookup::Stale(_) => return None,
        };
        let opened = EpochDb::try_open(&self.layout.epoch_dir(id), self.cache_bytes);
        let db = {
            let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
            let db = match opened {
                // Removed meanwhile (consumed, deleted): drop the handle.
                Ok(_) if !table.closed.contains(&id) => return None,
                Ok(db) => Arc::new(db),
                Err(OpenFailure::Locked) => return None,
                Err(e) => {
                    tracing::warn!(epoch = id, error = %e, "a sealed epoch cannot be opened");
                    return None;
                }
            };
            table.make_room_for_readers();
            table.closed.remove(&id);
            table.open.insert(id, self.entry(&db));
            table.opened_for_readers.insert(id);
            db
        };
        Some(f(&db))
    }

    /// Adds an open epoch (the one being written).
    pub fn insert(&self, id: u64, db: EpochDb) -> Arc<EpochDb> {
        let db = Arc::new(db);
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .insert(id, self.entry(&db));
        db
    }

    /// The next tick of use.
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// A table entry for `db`, used now.
    fn entry(&self, db: &Arc<EpochDb>) -> Open {
        Open {
            db: Arc::clone(db),
            last_used: AtomicU64::new(self.tick()),
        }
    }

    /// Adds an epoch on disk without opening it.
    pub fn insert_closed(&self, id: u64) {
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .closed
            .insert(id);
    }

    /// Forgets epoch `id` (closing it when the last handle goes).
    pub fn remove(&self, id: u64) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        table.open.remove(&id);
        table.closed.remove(&id);
        table.opened_for_readers.remove(&id);
        table.stale.remove(&id);
        let waiters = table.pending.remove(&id);
        drop(table);
        // Nothing of it is left to read: let its readers look again.
        for waiter in waiters.into_iter().flat_map(|p| p.waiters) {
            waiter.epoch_ready();
        }
    }

    /// A read of epoch `id` failed through its open handle: that handle may be what failed
    /// (sled keeps a database's first write error for good and fails what follows, and a read
    /// may write: it completes node splits). The epoch is read again only through a fresh
    /// handle, opened from disk by the opener thread once the failed one is closed (at once
    /// if nobody else holds it, else when the writer or a sync job lets go); `waiter` is
    /// woken then.
    pub fn reopen(&self, id: u64, waiter: &Arc<impl Waiter + 'static>) {
        {
            let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
            if table.open.contains_key(&id) && !table.close(id) {
                table.stale.insert(id);
            }
        }
        self.request(id, waiter);
    }

    /// Whether a read failed through epoch `id`'s open handle, which is not closed yet.
    pub fn is_stale(&self, id: u64) -> bool {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .stale
            .contains(&id)
    }

    /// Closes a sealed epoch if nobody else holds a handle; `false` if somebody does (a sync
    /// job in flight, a read): try again later.
    pub fn close(&self, id: u64) -> bool {
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .close(id)
    }

    /// Whether epoch `id` is open.
    #[cfg(test)]
    pub fn is_open(&self, id: u64) -> bool {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .contains_key(&id)
    }

    /// How many epochs are open.
    #[cfg(test)]
    pub fn open_count(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .len()
    }

    pub fn clear(&self) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        table.open.clear();
        table.closed.clear();
        table.opened_for_readers.clear();
        let pending = std::mem::take(&mut table.pending);
        drop(table);
        for waiter in pending.into_values().flat_map(|p| p.waiters) {
            waiter.epoch_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A table over `epochs` empty epoch databases created on disk, all closed.
    fn table_of(dir: &Path, epochs: u64) -> EpochTable {
        let layout = Layout::new(dir);
        layout.prepare().expect("layout");
        let table = EpochTable::new(layout.clone(), 1 << 20);
        for id in 1..=epochs {
            drop(EpochDb::open(&layout.epoch_dir(id), 1 << 20).expect("create"));
            table.insert_closed(id);
        }
        table
    }

    /// Reads epoch `id`, retrying while a handle closed a moment ago still holds its lock.
    fn read(table: &EpochTable, id: u64) -> bool {
        for _ in 0..500 {
            if let Some(found) = table.with_blocking(id, |db| db.read(0).expect("read").is_none()) {
                return found;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("epoch {id} never opened");
    }

    #[test]
    fn readers_open_sealed_epochs_lazily_and_keep_few_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = table_of(dir.path(), 12);
        assert_eq!(table.open_count(), 0, "nothing is open before a read");
        for id in 1..=12 {
            assert!(read(&table, id));
            assert!(table.open_count() <= OPEN_FOR_READERS);
        }
        // Going back to an epoch closed meanwhile opens it again.
        assert!(read(&table, 1));
        assert!(
            table.with_blocking(99, |_| ()).is_none(),
            "an unknown epoch is not opened"
        );
    }

    #[test]
    fn the_epoch_used_least_recently_is_closed_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let last = OPEN_FOR_READERS as u64 + 1;
        let table = table_of(dir.path(), last);
        for id in 1..last {
            assert!(read(&table, id));
        }
        assert!(read(&table, 1), "epoch 1 used again");
        assert!(read(&table, last));
        assert!(table.is_open(1), "used recently");
        assert!(!table.is_open(2), "used least recently");
        assert_eq!(table.open_count(), OPEN_FOR_READERS);
    }

    #[test]
    fn an_epoch_in_use_is_not_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        layout.prepare().expect("layout");
        let table = EpochTable::new(layout.clone(), 1 << 20);
        let held = table.insert(
            1,
            EpochDb::open(&layout.epoch_dir(1), 1 << 20).expect("open"),
        );
        assert!(!table.close(1), "a handle is held");
        drop(held);
        assert!(table.close(1));
        assert_eq!(table.open_count(), 0);
        assert!(read(&table, 1), "a closed epoch opens again for a reader");
    }

    /// A waiter that remembers it was woken.
    #[derive(Debug, Default)]
    struct Doorbell {
        rung: std::sync::Mutex<bool>,
        ring: std::sync::Condvar,
    }

    impl Waiter for Doorbell {
        fn epoch_ready(&self) {
            *self.rung.lock().unwrap_or_else(PoisonError::into_inner) = true;
            self.ring.notify_all();
        }
    }

    impl Doorbell {
        /// Waits until rung (then unrings it) or `timeout` passes; returns whether it rang.
        fn wait(&self, timeout: Duration) -> bool {
            let rung = self.rung.lock().unwrap_or_else(PoisonError::into_inner);
            let mut rung = self
                .ring
                .wait_timeout_while(rung, timeout, |rung| !*rung)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            std::mem::take(&mut *rung)
        }
    }

    fn spawn_opener(table: &Arc<EpochTable>) -> std::thread::JoinHandle<()> {
        let table = Arc::clone(table);
        std::thread::Builder::new()
            .name("store-opener".into())
            .spawn(move || table.run_opener())
            .expect("spawn")
    }

    fn opens(table: &EpochTable) -> Vec<String> {
        table
            .opened_on
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    #[test]
    fn readers_never_open_an_epoch_the_opener_thread_does_and_wakes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = Arc::new(table_of(dir.path(), 1));
        let reader = Arc::new(Doorbell::default());
        assert!(
            table.with(1, &reader, |_| ()).is_none(),
            "a read of a closed epoch does not open it"
        );
        assert!(
            !table.available(1, &reader),
            "a closed epoch is not available yet"
        );
        assert!(
            opens(&table).is_empty(),
            "nothing opened on the caller's thread"
        );
        let opener = spawn_opener(&table);
        assert!(
            reader.wait(Duration::from_secs(10)),
            "the reader is woken once the epoch is open"
        );
        assert!(table.is_open(1));
        assert!(table.available(1, &reader));
        assert!(opens(&table).iter().all(|t| t == "store-opener"));
        assert_eq!(table.with(1, &reader, |_| 7), Some(7));
        table.shutdown();
        opener.join().expect("opener");
    }

    #[test]
    fn an_epoch_that_cannot_be_opened_is_retried_with_growing_delays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = Arc::new(table_of(dir.path(), 1));
        // Another handle holds the epoch's file lock: every attempt fails.
        let held = EpochDb::open(&Layout::new(dir.path()).epoch_dir(1), 1 << 20).expect("open");
        let reader = Arc::new(Doorbell::default());
        assert!(!table.available(1, &reader));
        let opener = spawn_opener(&table);
        assert!(
            !reader.wait(Duration::from_secs(1)),
            "the reader waits while the epoch cannot be opened"
        );
        let attempts = opens(&table).len();
        // 1, 2, 4, ... ms: about 10 attempts in a second (polling every 5 ms made 200).
        assert!(
            (1..=12).contains(&attempts),
            "{attempts} attempts in a second"
        );
        drop(held);
        assert!(
            reader.wait(RETRY_MAX * 2),
            "opened once the lock is free, and the reader woken"
        );
        table.shutdown();
        opener.join().expect("opener");
    }
}
