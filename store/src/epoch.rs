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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::backend::{EpochDb, OpenFailure};
use crate::error::OpenError;

/// Liveness of an epoch: every queue segment in the epoch holds an `Arc` of its token, so the
/// epoch may be deleted when the writer holds the only one left.
#[derive(Debug)]
pub(crate) struct EpochToken {
    pub id: u64,
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
    /// Ticks of use, to find the epoch used least recently.
    clock: AtomicU64,
    layout: Layout,
    cache_bytes: u64,
}

/// Sealed epochs kept open for readers at most (beyond those a handle still holds).
pub(crate) const OPEN_FOR_READERS: usize = 8;

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
    /// Epochs whose opening failed for another reason than a held lock, said once each.
    failed: BTreeSet<u64>,
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
                true
            }
            Some(_) => false,
            None => true,
        }
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
            clock: AtomicU64::new(0),
            layout,
            cache_bytes,
        }
    }

    /// Runs `f` on epoch `id`'s database, opening it if it is closed; `None` if it is not on
    /// disk or cannot be opened right now (a handle closed a moment ago still holds its file
    /// lock: the reader tries again later). The database is opened without holding the
    /// table's lock: replaying its log takes a while.
    pub fn with<R>(&self, id: u64, f: impl FnOnce(&EpochDb) -> R) -> Option<R> {
        {
            let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(open) = table.open.get(&id) {
                open.last_used.store(self.tick(), Ordering::Relaxed);
                return Some(f(&open.db));
            }
            if !table.closed.contains(&id) {
                return None;
            }
        }
        let opened = EpochDb::try_open(&self.layout.epoch_dir(id), self.cache_bytes);
        let db = {
            let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
            let db = match opened {
                // Removed meanwhile (consumed, deleted): drop the handle.
                Ok(_) if !table.closed.contains(&id) => return None,
                Ok(db) => Arc::new(db),
                Err(OpenFailure::Locked) => return None,
                Err(e) => {
                    if table.failed.insert(id) {
                        tracing::error!(epoch = id, error = %e, "a sealed epoch cannot be opened; its readers wait, retrying");
                    }
                    return None;
                }
            };
            table.make_room_for_readers();
            table.closed.remove(&id);
            table.failed.remove(&id);
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
        table.failed.remove(&id);
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
        table.failed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            if let Some(found) = table.with(id, |db| db.read(0).expect("read").is_none()) {
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
            table.with(99, |_| ()).is_none(),
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
}
