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

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
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

/// The epochs readers may read from, shared between the writer (which adds, reopens and
/// removes) and the readers (which read a segment they hold a reference to).
///
/// Readers never keep a database handle: they read under the table's read lock. So when the
/// table holds the only handle (no sync job in flight), the writer can close and reopen a
/// sealed epoch, which frees the memory sled keeps for everything written to it.
#[derive(Debug, Default)]
pub(crate) struct EpochTable(RwLock<BTreeMap<u64, Arc<EpochDb>>>);

/// Outcome of [`EpochTable::reopen`].
#[derive(Debug)]
pub(crate) enum Reopen {
    Done,
    /// Someone else holds a handle; try again later.
    Busy,
    /// Closed, but could not be opened again; readers wait until a later attempt succeeds.
    Failed(OpenFailure),
}

impl EpochTable {
    /// Runs `f` on epoch `id`'s database, or returns `None` if it is not open.
    pub fn with<R>(&self, id: u64, f: impl FnOnce(&EpochDb) -> R) -> Option<R> {
        let table = self.0.read().unwrap_or_else(PoisonError::into_inner);
        table.get(&id).map(|db| f(db))
    }

    pub fn insert(&self, id: u64, db: EpochDb) -> Arc<EpochDb> {
        let db = Arc::new(db);
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::clone(&db));
        db
    }

    pub fn remove(&self, id: u64) -> Option<Arc<EpochDb>> {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
    }

    /// Closes epoch `id` and opens it again with `open`, if nobody else holds a handle.
    pub fn reopen(&self, id: u64, open: impl FnOnce() -> Result<EpochDb, OpenFailure>) -> Reopen {
        let mut table = self.0.write().unwrap_or_else(PoisonError::into_inner);
        match table.get(&id) {
            Some(db) if Arc::strong_count(db) == 1 => {}
            Some(_) => return Reopen::Busy,
            // Closed by an earlier attempt whose open failed: try again.
            None => {}
        }
        // Dropping the last handle closes the database (its file lock goes a moment later).
        table.remove(&id);
        match open() {
            Ok(db) => {
                table.insert(id, Arc::new(db));
                Reopen::Done
            }
            Err(e) => Reopen::Failed(e),
        }
    }

    pub fn clear(&self) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}
