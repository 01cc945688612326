//! The identity registry: `<data_dir>/identities.json`, shared by the running hub and the
//! `edgehub identity` command line.
//!
//! - The file is readable by its owner only (0600, its folder 0700 when the store creates it).
//! - Writers take an exclusive lock on `identities.lock`, re-read the file, change it, and
//!   replace it atomically (write a temporary file, fsync, rename, fsync the folder): two
//!   `edgehub identity add` at once cannot lose each other's identity or leave half a file.
//! - Readers never lock: [`IdentityRegistry::get`] compares the file's stamp (size, mtime, inode)
//!   with the one it loaded and re-reads it when another process replaced it, so a running hub
//!   accepts an identity added after it started.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::fs::write_atomically;

use super::id::{EDGE_HUB, IdError, validate_device_id, validate_module_id};
use super::key::{KeyFingerprint, KeySlot, RandomError, SymmetricKey};
use super::{ClientIdentity, Hostnames};

/// The registry's file name under the data folder.
pub const FILE_NAME: &str = "identities.json";
const LOCK_NAME: &str = "identities.lock";

/// An identity the hub accepts: a module of the edge device, or a leaf device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Who it is.
    pub id: ClientIdentity,
    /// The primary key.
    pub primary_key: SymmetricKey,
    /// The secondary key.
    pub secondary_key: SymmetricKey,
    /// For a device: the edge device it is registered under, when it is downstream of a
    /// child edge device (nested deployments, spec 6.2); `None` for this hub's own leaf
    /// devices and for modules.
    pub parent: Option<String>,
    /// Where it comes from: registered here, or learned from the parent hub's device scope.
    pub origin: Origin,
}

/// Where an identity of the registry comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Origin {
    /// Registered on this hub (`edgehub identity add`, the deployment's modules): only this
    /// hub's command line changes or removes it.
    #[default]
    Local,
    /// Learned from the parent hub's device scope ([`crate::upstream::scope`]): the next sync
    /// updates or removes it; the command line does not change it.
    Upstream,
}

impl Origin {
    fn is_local(&self) -> bool {
        *self == Self::Local
    }
}

/// What [`IdentityRegistry::replace_upstream`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamChanges {
    /// Identities learned for the first time.
    pub added: usize,
    /// Identities whose keys or parent changed.
    pub updated: usize,
    /// Identities gone from upstream's answer, removed here.
    pub removed: usize,
    /// Identities upstream names that exist here as local ones: the local one is kept.
    pub conflicts: Vec<ClientIdentity>,
}

impl UpstreamChanges {
    /// Whether the registry changed.
    #[must_use]
    pub fn changed(&self) -> bool {
        self.added + self.updated + self.removed > 0
    }
}

impl Identity {
    /// The connection string a module or device uses to reach the hub, with the primary key:
    /// `HostName=..;DeviceId=..;ModuleId=..;SharedAccessKey=..;GatewayHostName=..` (no
    /// `ModuleId` for a device).
    #[must_use]
    pub fn connection_string(&self, hostnames: &Hostnames) -> String {
        self.connection_string_with(hostnames, KeySlot::Primary)
    }

    /// The connection string with the key in `slot` (the same layout as
    /// [`connection_string`](Self::connection_string)).
    #[must_use]
    pub fn connection_string_with(&self, hostnames: &Hostnames, slot: KeySlot) -> String {
        let module = self
            .id
            .module_id
            .as_ref()
            .map(|m| format!("ModuleId={m};"))
            .unwrap_or_default();
        format!(
            "HostName={};DeviceId={};{module}SharedAccessKey={};GatewayHostName={}",
            hostnames.iothub,
            self.id.device_id,
            self.key(slot).to_base64(),
            hostnames.gateway,
        )
    }

    /// The key in `slot`.
    #[must_use]
    pub fn key(&self, slot: KeySlot) -> &SymmetricKey {
        match slot {
            KeySlot::Primary => &self.primary_key,
            KeySlot::Secondary => &self.secondary_key,
        }
    }

    /// The slot of the current key whose fingerprint is `fingerprint`, if any.
    #[must_use]
    pub fn slot_of(&self, fingerprint: &KeyFingerprint) -> Option<KeySlot> {
        [KeySlot::Primary, KeySlot::Secondary]
            .into_iter()
            .find(|&slot| self.key(slot).fingerprint() == *fingerprint)
    }

    /// Whether it is a module (rather than a device).
    #[must_use]
    pub fn is_module(&self) -> bool {
        self.id.module_id.is_some()
    }

    fn generate(id: ClientIdentity) -> Result<Self, RandomError> {
        Ok(Self {
            id,
            primary_key: SymmetricKey::generate()?,
            secondary_key: SymmetricKey::generate()?,
            parent: None,
            origin: Origin::Local,
        })
    }
}

/// What can go wrong in the identity registry.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The id breaks IoT Hub's rules.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// A file operation failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What we were doing ("read", "write", "lock", ...).
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not a valid identity registry.
    #[error("{} is not a valid identity registry", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// No random bytes for a new key.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The registry has no such identity (remove, rotate).
    #[error("there is no identity {0}")]
    Unknown(ClientIdentity),
    /// A device was to be registered under a device that is not a child edge device here.
    #[error("{0} is not an edge device of this hub (add it with --edge-device first)")]
    NotAnEdgeDevice(String),
    /// The identity was learned from the parent hub (remove, rotate): it is managed there.
    #[error("{0} comes from the parent hub's device scope; change it on the parent hub")]
    FromUpstream(ClientIdentity),
}

/// Whether a key that authenticated a connection still does, as
/// [`IdentityRegistry::key_status`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// The identity exists and the key is one of its two current keys (in this slot).
    Current(KeySlot),
    /// The identity exists, but neither of its keys is that one any more (rotated).
    Retired,
    /// The identity is no longer in the registry.
    Removed,
}

/// The identities the hub accepts, kept in `<data_dir>/identities.json`.
///
/// Cheap to share behind an `Arc`: every method takes `&self`; an internal mutex is held only
/// while the in-memory copy is read or replaced. [`get`](Self::get) does one `stat` per call
/// (and a read when the file changed): call it from `spawn_blocking` if that matters.
#[derive(Debug)]
pub struct IdentityRegistry {
    dir: PathBuf,
    path: PathBuf,
    edge_device_id: String,
    loaded: Mutex<Loaded>,
    /// Bumped every time the in-memory copy is replaced (see [`Self::generation`]).
    loads: std::sync::atomic::AtomicU64,
}

/// The in-memory copy of the file and the stamp of the file it came from.
#[derive(Debug, Default)]
struct Loaded {
    stamp: Option<Stamp>,
    identities: BTreeMap<ClientIdentity, Identity>,
}

/// What tells that the file was replaced: a rename gives a new inode and status-change time,
/// a rewrite a new size or mtime. A rotated key leaves the size as it was and a freed inode
/// number can come back, so both times are compared too; only three replacements within one
/// tick of the file system's clock, read in between, could look unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    inode: u64,
}

impl Stamp {
    fn of(metadata: &fs::Metadata) -> Self {
        Self {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
            inode: metadata.ino(),
        }
    }
}

/// The file's layout.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    identities: Vec<Record>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Record {
    device_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    module_id: Option<String>,
    primary_key: SymmetricKey,
    secondary_key: SymmetricKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    parent: Option<String>,
    #[serde(default, skip_serializing_if = "Origin::is_local")]
    origin: Origin,
}

const FORMAT_VERSION: u32 = 1;

impl IdentityRegistry {
    /// Opens (or starts) the store under `data_dir` for the edge device `edge_device_id`, whose
    /// modules [`add_module`](Self::add_module) creates. Creates `data_dir` (mode 0700) if it
    /// does not exist.
    ///
    /// # Errors
    ///
    /// When the folder cannot be created or the file cannot be read or parsed.
    pub fn open(data_dir: &Path, edge_device_id: &str) -> Result<Self, IdentityError> {
        validate_device_id(edge_device_id)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|source| IdentityError::Io {
                action: "create the folder",
                path: data_dir.to_owned(),
                source,
            })?;
        let store = Self {
            dir: data_dir.to_owned(),
            path: data_dir.join(FILE_NAME),
            edge_device_id: edge_device_id.to_owned(),
            loaded: Mutex::default(),
            loads: std::sync::atomic::AtomicU64::new(0),
        };
        store.reload_if_changed()?;
        Ok(store)
    }

    /// The edge device whose modules [`add_module`](Self::add_module) creates.
    #[must_use]
    pub fn edge_device_id(&self) -> &str {
        &self.edge_device_id
    }

    /// The path of the store's file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The identity of module `module_id` of the edge device, created with new keys if it does
    /// not exist yet.
    ///
    /// # Errors
    ///
    /// An invalid module id, or a failure to read or write the file.
    pub fn add_module(&self, module_id: &str) -> Result<Identity, IdentityError> {
        validate_module_id(module_id)?;
        let id = ClientIdentity::module(&self.edge_device_id, module_id);
        Ok(self.add_all(vec![id])?.remove(0))
    }

    /// Makes sure every module in `module_ids` has an identity (one write for all of them):
    /// what the hub does at start for the modules of the deployment manifest.
    ///
    /// # Errors
    ///
    /// An invalid module id (then nothing is written), or a failure to read or write the file.
    pub fn add_modules<'a>(
        &self,
        module_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<Identity>, IdentityError> {
        let ids = module_ids
            .into_iter()
            .map(|module_id| {
                validate_module_id(module_id)?;
                Ok(ClientIdentity::module(&self.edge_device_id, module_id))
            })
            .collect::<Result<Vec<_>, IdError>>()?;
        self.add_all(ids)
    }

    /// The identity of leaf device `device_id`, created with new keys if it does not exist yet.
    ///
    /// # Errors
    ///
    /// An invalid device id, or a failure to read or write the file.
    pub fn add_device(&self, device_id: &str) -> Result<Identity, IdentityError> {
        validate_device_id(device_id)?;
        Ok(self
            .add_all(vec![ClientIdentity::device(device_id)])?
            .remove(0))
    }

    /// Registers `device_id` as a child edge device (nested deployments, spec 6.2), under the
    /// edge device `parent` when it sits further down: the device itself and its `$edgeHub`,
    /// whose identity (and keys) is returned; what exists is kept. The child's `$edgeHub` then
    /// connects on behalf of the child's modules and of the devices registered under it.
    ///
    /// # Errors
    ///
    /// An invalid id, a `parent` that is not an edge device here, or a failure to read or
    /// write the file.
    pub fn add_edge_device(
        &self,
        device_id: &str,
        parent: Option<&str>,
    ) -> Result<Identity, IdentityError> {
        validate_device_id(device_id)?;
        let ids = vec![
            ClientIdentity::device(device_id),
            ClientIdentity::module(device_id, EDGE_HUB),
        ];
        Ok(self.add_under(ids, parent)?.remove(1))
    }

    /// The identity of leaf device `device_id` registered under the child edge device
    /// `parent` (created with new keys if it does not exist yet; an existing one is moved under
    /// `parent`).
    ///
    /// # Errors
    ///
    /// An invalid id, a `parent` that is not an edge device here, or a failure to read or
    /// write the file.
    pub fn add_device_under(
        &self,
        device_id: &str,
        parent: &str,
    ) -> Result<Identity, IdentityError> {
        validate_device_id(device_id)?;
        Ok(self
            .add_under(vec![ClientIdentity::device(device_id)], Some(parent))?
            .remove(0))
    }

    /// The identity of module `module_id` of device `device_id`, created with new keys if it
    /// does not exist yet: a module of this edge device, or of a child edge device registered
    /// here (whose hub then learns it through the device scope, spec 6.2).
    ///
    /// # Errors
    ///
    /// An invalid id, [`IdentityError::NotAnEdgeDevice`] when `device_id` is neither this edge
    /// device nor a child edge device here, or a failure to read or write the file.
    pub fn add_module_of(
        &self,
        device_id: &str,
        module_id: &str,
    ) -> Result<Identity, IdentityError> {
        if device_id == self.edge_device_id {
            return self.add_module(module_id);
        }
        validate_device_id(device_id)?;
        validate_module_id(module_id)?;
        let id = ClientIdentity::module(device_id, module_id);
        Ok(self.add_under(vec![id], Some(device_id))?.remove(0))
    }

    /// Makes the identities learned from upstream exactly `learned` (each marked
    /// [`Origin::Upstream`]), in one atomic write, only when something changed: learned ones
    /// gone from `learned` are removed (a running hub then closes their connections), new ones
    /// added, changed ones replaced. Local identities are never removed or replaced: an id that
    /// exists here as a local identity keeps its local keys and is reported as a conflict.
    ///
    /// # Errors
    ///
    /// A failure to read or write the file.
    pub fn replace_upstream(
        &self,
        learned: impl IntoIterator<Item = Identity>,
    ) -> Result<UpstreamChanges, IdentityError> {
        let _lock = self.lock_writers()?;
        let mut fresh = self.read()?;
        let mut changes = UpstreamChanges::default();
        let mut wanted = BTreeMap::new();
        for mut identity in learned {
            identity.origin = Origin::Upstream;
            match fresh.identities.get(&identity.id) {
                Some(existing) if existing.origin == Origin::Local => {
                    changes.conflicts.push(identity.id);
                }
                _ => {
                    wanted.insert(identity.id.clone(), identity);
                }
            }
        }
        fresh.identities.retain(|id, identity| {
            let keep = identity.origin == Origin::Local || wanted.contains_key(id);
            changes.removed += usize::from(!keep);
            keep
        });
        for (id, identity) in wanted {
            match fresh.identities.get(&id) {
                None => changes.added += 1,
                Some(old) if *old != identity => changes.updated += 1,
                Some(_) => continue,
            }
            fresh.identities.insert(id, identity);
        }
        if !changes.changed() {
            return Ok(changes);
        }
        self.write(&fresh.identities)?;
        fresh.stamp = self.stamp()?;
        tracing::info!(path = %self.path.display(), "identity registry updated from upstream");
        *self.lock_loaded() = fresh;
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(changes)
    }

    /// Whether `device_id` is a child edge device here (it has a `$edgeHub` identity).
    ///
    /// # Errors
    ///
    /// When the file changed and cannot be read or parsed.
    pub fn is_edge_device(&self, device_id: &str) -> Result<bool, IdentityError> {
        Ok(self.get(device_id, Some(EDGE_HUB))?.is_some())
    }

    /// The edge device `device_id` is registered under, if any.
    ///
    /// # Errors
    ///
    /// When the file changed and cannot be read or parsed.
    pub fn parent_of(&self, device_id: &str) -> Result<Option<String>, IdentityError> {
        Ok(self.get(device_id, None)?.and_then(|d| d.parent))
    }

    /// Adds the identities in `ids` that are missing and sets the parent of the devices among
    /// them to `parent` (which must be an edge device here), under the writers' lock.
    fn add_under(
        &self,
        ids: Vec<ClientIdentity>,
        parent: Option<&str>,
    ) -> Result<Vec<Identity>, IdentityError> {
        let _lock = self.lock_writers()?;
        let mut fresh = self.read()?;
        if let Some(parent) = parent
            && !fresh
                .identities
                .contains_key(&ClientIdentity::module(parent, EDGE_HUB))
        {
            return Err(IdentityError::NotAnEdgeDevice(parent.to_owned()));
        }
        let mut result = Vec::with_capacity(ids.len());
        for id in ids {
            let identity = match fresh.identities.get_mut(&id) {
                Some(existing) => existing,
                None => fresh
                    .identities
                    .entry(id.clone())
                    .or_insert(Identity::generate(id.clone())?),
            };
            if id.module_id.is_none() && parent.is_some() {
                identity.parent = parent.map(str::to_owned);
            }
            result.push(identity.clone());
        }
        self.write(&fresh.identities)?;
        fresh.stamp = self.stamp()?;
        tracing::info!(path = %self.path.display(), "identity registry updated");
        *self.lock_loaded() = fresh;
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(result)
    }

    /// The identity `device_id` or `device_id/module_id` (ids compared exactly), re-reading the
    /// file first if another process changed it.
    ///
    /// # Errors
    ///
    /// When the file changed and cannot be read or parsed.
    pub fn get(
        &self,
        device_id: &str,
        module_id: Option<&str>,
    ) -> Result<Option<Identity>, IdentityError> {
        self.reload_if_changed()?;
        let key = ClientIdentity {
            device_id: device_id.to_owned(),
            module_id: module_id.map(str::to_owned),
        };
        Ok(self.lock_loaded().identities.get(&key).cloned())
    }

    /// Every identity, sorted by device id, then module id (a device before its modules).
    ///
    /// # Errors
    ///
    /// When the file changed and cannot be read or parsed.
    pub fn list(&self) -> Result<Vec<Identity>, IdentityError> {
        self.reload_if_changed()?;
        Ok(self.lock_loaded().identities.values().cloned().collect())
    }

    /// The identity of module `module_id` of the edge device (ids are not checked: an identity
    /// is looked up by exactly the id it was stored with).
    #[must_use]
    pub fn module_identity(&self, module_id: &str) -> ClientIdentity {
        ClientIdentity::module(&self.edge_device_id, module_id)
    }

    /// Removes the identity `id` (its twin file, if any, is kept). A running hub closes the
    /// connections of a removed identity at its next recheck.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Unknown`] when there is no such identity, [`IdentityError::FromUpstream`]
    /// when it was learned from the parent hub (nothing is written then), or a failure to read
    /// or write the file.
    pub fn remove(&self, id: &ClientIdentity) -> Result<Identity, IdentityError> {
        self.change(id, |identities| {
            match identities.get(id).map(|identity| identity.origin) {
                None => Err(IdentityError::Unknown(id.clone())),
                Some(Origin::Upstream) => Err(IdentityError::FromUpstream(id.clone())),
                Some(Origin::Local) => Ok(identities.remove(id).expect("just found")),
            }
        })
    }

    /// Replaces the key in `slot` of identity `id` with a new random key and returns the
    /// identity with its new keys; the other key is kept. Connections authenticated with the
    /// old key are closed by a running hub at their next recheck.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Unknown`] when there is no such identity, [`IdentityError::FromUpstream`]
    /// when it was learned from the parent hub (nothing is written then), no random bytes, or a
    /// failure to read or write the file.
    pub fn rotate(&self, id: &ClientIdentity, slot: KeySlot) -> Result<Identity, IdentityError> {
        let key = SymmetricKey::generate()?;
        self.change(id, |identities| {
            let identity = identities
                .get_mut(id)
                .ok_or_else(|| IdentityError::Unknown(id.clone()))?;
            if identity.origin == Origin::Upstream {
                return Err(IdentityError::FromUpstream(id.clone()));
            }
            match slot {
                KeySlot::Primary => identity.primary_key = key,
                KeySlot::Secondary => identity.secondary_key = key,
            }
            Ok(identity.clone())
        })
    }

    /// Whether the key whose fingerprint is `key` is still a current key of identity
    /// `device_id[/module_id]`, re-reading the file first if another process changed it (one
    /// `stat`, one map lookup and two hashes of 32 bytes when nothing changed).
    ///
    /// # Errors
    ///
    /// When the file changed and cannot be read or parsed.
    pub fn key_status(
        &self,
        device_id: &str,
        module_id: Option<&str>,
        key: &KeyFingerprint,
    ) -> Result<KeyStatus, IdentityError> {
        self.reload_if_changed()?;
        let id = ClientIdentity {
            device_id: device_id.to_owned(),
            module_id: module_id.map(str::to_owned),
        };
        Ok(match self.lock_loaded().identities.get(&id) {
            None => KeyStatus::Removed,
            Some(identity) => identity
                .slot_of(key)
                .map_or(KeyStatus::Retired, KeyStatus::Current),
        })
    }

    /// A number that changes whenever the registry was read again (another process changed
    /// the file) or changed here: what a watcher compares to learn that identities or keys
    /// may have changed. One `stat` when nothing changed.
    ///
    /// # Errors
    ///
    /// When the file changed and cannot be read or parsed.
    pub fn generation(&self) -> Result<u64, IdentityError> {
        self.reload_if_changed()?;
        Ok(self.loads.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Re-reads the file if it is not the one last loaded (one `stat` when it is).
    ///
    /// # Errors
    ///
    /// When the file cannot be read or parsed; the previous copy is kept then.
    pub fn reload_if_changed(&self) -> Result<(), IdentityError> {
        if self.lock_loaded().stamp == self.stamp()? {
            return Ok(());
        }
        let fresh = self.read()?;
        *self.lock_loaded() = fresh;
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Adds the identities in `ids` that are missing, under the writers' lock, and returns all
    /// of them in the same order.
    fn add_all(&self, ids: Vec<ClientIdentity>) -> Result<Vec<Identity>, IdentityError> {
        let _lock = self.lock_writers()?;
        let mut fresh = self.read()?;
        let mut changed = false;
        let mut result = Vec::with_capacity(ids.len());
        for id in ids {
            let identity = match fresh.identities.get(&id) {
                Some(existing) => existing.clone(),
                None => {
                    let identity = Identity::generate(id.clone())?;
                    fresh.identities.insert(id, identity.clone());
                    changed = true;
                    identity
                }
            };
            result.push(identity);
        }
        if changed {
            self.write(&fresh.identities)?;
            fresh.stamp = self.stamp()?;
            tracing::info!(path = %self.path.display(), "identity registry updated");
        }
        *self.lock_loaded() = fresh;
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(result)
    }

    /// Applies `edit` to a fresh copy of the file under the writers' lock and writes the
    /// result; an error from `edit` writes nothing.
    fn change<T>(
        &self,
        id: &ClientIdentity,
        edit: impl FnOnce(&mut BTreeMap<ClientIdentity, Identity>) -> Result<T, IdentityError>,
    ) -> Result<T, IdentityError> {
        let _lock = self.lock_writers()?;
        let mut fresh = self.read()?;
        let result = edit(&mut fresh.identities)?;
        self.write(&fresh.identities)?;
        fresh.stamp = self.stamp()?;
        tracing::info!(path = %self.path.display(), identity = %id, "identity registry updated");
        *self.lock_loaded() = fresh;
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(result)
    }

    fn lock_loaded(&self) -> std::sync::MutexGuard<'_, Loaded> {
        // The guarded data is replaced whole, never left half-updated: a poisoned lock is fine.
        self.loaded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An exclusive lock on the lock file, released when the returned file is dropped (or the
    /// process dies).
    fn lock_writers(&self) -> Result<File, IdentityError> {
        let path = self.dir.join(LOCK_NAME);
        let io_error = |action| {
            let path = path.clone();
            move |source| IdentityError::Io {
                action,
                path,
                source,
            }
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error("open"))?;
        file.lock().map_err(io_error("lock"))?;
        Ok(file)
    }

    fn stamp(&self) -> Result<Option<Stamp>, IdentityError> {
        match fs::metadata(&self.path) {
            Ok(metadata) => Ok(Some(Stamp::of(&metadata))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(self.io_error("read", source)),
        }
    }

    /// Reads the file; a missing file is an empty store. The stamp is taken from the open file
    /// so that it describes exactly the bytes read.
    fn read(&self) -> Result<Loaded, IdentityError> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::default()),
            Err(source) => return Err(self.io_error("read", source)),
        };
        let metadata = file
            .metadata()
            .map_err(|source| self.io_error("read", source))?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .map_err(|source| self.io_error("read", source))?;
        let parsed: StoreFile =
            serde_json::from_slice(&text).map_err(|source| IdentityError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        let identities = parsed
            .identities
            .into_iter()
            .map(|r| {
                let id = ClientIdentity {
                    device_id: r.device_id,
                    module_id: r.module_id,
                };
                let identity = Identity {
                    id: id.clone(),
                    primary_key: r.primary_key,
                    secondary_key: r.secondary_key,
                    parent: r.parent,
                    origin: r.origin,
                };
                (id, identity)
            })
            .collect();
        Ok(Loaded {
            stamp: Some(Stamp::of(&metadata)),
            identities,
        })
    }

    /// Replaces the file atomically, readable by its owner only.
    fn write(&self, identities: &BTreeMap<ClientIdentity, Identity>) -> Result<(), IdentityError> {
        let contents = StoreFile {
            version: FORMAT_VERSION,
            identities: identities
                .values()
                .map(|identity| Record {
                    device_id: identity.id.device_id.clone(),
                    module_id: identity.id.module_id.clone(),
                    primary_key: identity.primary_key.clone(),
                    secondary_key: identity.secondary_key.clone(),
                    parent: identity.parent.clone(),
                    origin: identity.origin,
                })
                .collect(),
        };
        let mut text =
            serde_json::to_vec_pretty(&contents).expect("identity records always serialize");
        text.push(b'\n');
        write_atomically(&self.path, &text, 0o600).map_err(|source| self.io_error("write", source))
    }

    fn io_error(&self, action: &'static str, source: io::Error) -> IdentityError {
        IdentityError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Arc;

    use super::*;

    fn hostnames() -> Hostnames {
        Hostnames {
            iothub: "hub.example.net".to_owned(),
            gateway: "gateway.local".to_owned(),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn adding_twice_returns_the_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityRegistry::open(dir.path(), "edge").unwrap();
        let first = store.add_module("filter").unwrap();
        let second = store.add_module("filter").unwrap();
        assert_eq!(first, second);
        assert_ne!(first.primary_key, first.secondary_key);
        assert_eq!(first.id, ClientIdentity::module("edge", "filter"));
    }

    #[test]
    fn identities_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let module = IdentityRegistry::open(dir.path(), "edge")
            .unwrap()
            .add_module("filter")
            .unwrap();
        let reopened = IdentityRegistry::open(dir.path(), "edge").unwrap();
        assert_eq!(reopened.get("edge", Some("filter")).unwrap(), Some(module));
    }

    #[test]
    fn connection_strings_have_the_documented_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityRegistry::open(dir.path(), "edge").unwrap();
        let module = store.add_module("filter").unwrap();
        let key = module.primary_key.to_base64();
        assert_eq!(
            module.connection_string(&hostnames()),
            format!(
                "HostName=hub.example.net;DeviceId=edge;ModuleId=filter;SharedAccessKey={key};GatewayHostName=gateway.local"
            )
        );
        let leaf = store.add_device("leaf-1").unwrap();
        let key = leaf.primary_key.to_base64();
        assert_eq!(
            leaf.connection_string(&hostnames()),
            format!(
                "HostName=hub.example.net;DeviceId=leaf-1;SharedAccessKey={key};GatewayHostName=gateway.local"
            )
        );
    }

    #[test]
    fn get_is_exact_and_distinguishes_devices_from_modules() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityRegistry::open(dir.path(), "edge").unwrap();
        store.add_module("filter").unwrap();
        store.add_device("leaf").unwrap();
        assert!(store.get("edge", Some("filter")).unwrap().is_some());
        assert!(store.get("edge", Some("Filter")).unwrap().is_none());
        assert!(store.get("edge", None).unwrap().is_none());
        assert!(store.get("leaf", None).unwrap().is_some());
        assert!(store.get("leaf", Some("filter")).unwrap().is_none());
    }

    #[test]
    fn invalid_ids_are_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityRegistry::open(dir.path(), "edge").unwrap();
        assert!(matches!(
            store.add_module("a/b"),
            Err(IdentityError::InvalidId(_))
        ));
        assert!(matches!(
            store.add_modules(["good", "$bad"]),
            Err(IdentityError::InvalidId(IdError::Reserved { .. }))
        ));
        assert!(matches!(
            store.add_device(""),
            Err(IdentityError::InvalidId(_))
        ));
        assert!(store.list().unwrap().is_empty());
        assert!(!store.path().exists());
    }

    #[test]
    fn file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = IdentityRegistry::open(&data, "edge").unwrap();
        store.add_device("leaf").unwrap();
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(mode(&data), 0o700);
        assert!(!data.join("identities.json.tmp").exists());
    }

    #[test]
    fn an_identity_added_by_another_process_is_seen_without_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let hub = IdentityRegistry::open(dir.path(), "edge").unwrap();
        assert!(hub.get("edge", Some("late")).unwrap().is_none());
        // A second store on the same folder stands for `edgehub identity add` in another process.
        let added = IdentityRegistry::open(dir.path(), "edge")
            .unwrap()
            .add_module("late")
            .unwrap();
        assert_eq!(hub.get("edge", Some("late")).unwrap(), Some(added));
        assert_eq!(hub.list().unwrap().len(), 1);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let dir = Arc::clone(&dir);
                std::thread::spawn(move || {
                    // Separate stores, as separate processes would have.
                    let store = IdentityRegistry::open(dir.path(), "edge").unwrap();
                    for i in 0..5 {
                        store.add_module(&format!("m{t}-{i}")).unwrap();
                        store.add_module("shared").unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let store = IdentityRegistry::open(dir.path(), "edge").unwrap();
        assert_eq!(store.list().unwrap().len(), 8 * 5 + 1);
    }

    #[test]
    fn add_modules_creates_only_the_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityRegistry::open(dir.path(), "edge").unwrap();
        let sensor = store.add_module("sensor").unwrap();
        let all = store.add_modules(["sensor", "filter"]).unwrap();
        assert_eq!(all[0], sensor);
        assert_eq!(all[1].id, ClientIdentity::module("edge", "filter"));
        assert_eq!(store.list().unwrap().len(), 2);
    }

    #[test]
    fn a_corrupt_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let error = IdentityRegistry::open(dir.path(), "edge").unwrap_err();
        assert!(matches!(error, IdentityError::Corrupt { .. }));
        assert!(error.to_string().contains(FILE_NAME), "{error}");
    }

    #[test]
    fn remove_takes_the_identity_out_and_a_running_hub_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let hub = IdentityRegistry::open(dir.path(), "edge").unwrap();
        let module = hub.add_module("filter").unwrap();
        hub.add_device("leaf").unwrap();
        let key = module.primary_key.fingerprint();
        assert_eq!(
            hub.key_status("edge", Some("filter"), &key).unwrap(),
            KeyStatus::Current(KeySlot::Primary)
        );
        // Another process (`edgehub identity remove`) removes it.
        let cli = IdentityRegistry::open(dir.path(), "edge").unwrap();
        let removed = cli.remove(&cli.module_identity("filter")).unwrap();
        assert_eq!(removed, module);
        assert_eq!(
            hub.key_status("edge", Some("filter"), &key).unwrap(),
            KeyStatus::Removed
        );
        assert!(hub.get("edge", Some("filter")).unwrap().is_none());
        assert_eq!(hub.list().unwrap().len(), 1, "the device stays");
        assert!(matches!(
            cli.remove(&ClientIdentity::module("edge", "filter")),
            Err(IdentityError::Unknown(id)) if id == ClientIdentity::module("edge", "filter")
        ));
        assert!(matches!(
            cli.remove(&ClientIdentity::device("stranger")),
            Err(IdentityError::Unknown(_))
        ));
    }

    #[test]
    fn rotate_replaces_one_key_and_retires_it() {
        let dir = tempfile::tempdir().unwrap();
        let hub = IdentityRegistry::open(dir.path(), "edge").unwrap();
        let before = hub.add_device("leaf").unwrap();
        let (primary, secondary) = (
            before.primary_key.fingerprint(),
            before.secondary_key.fingerprint(),
        );
        let cli = IdentityRegistry::open(dir.path(), "edge").unwrap();
        let after = cli
            .rotate(&ClientIdentity::device("leaf"), KeySlot::Secondary)
            .unwrap();
        assert_eq!(after.primary_key, before.primary_key);
        assert_ne!(after.secondary_key, before.secondary_key);
        assert_eq!(hub.get("leaf", None).unwrap(), Some(after.clone()));
        assert_eq!(
            hub.key_status("leaf", None, &primary).unwrap(),
            KeyStatus::Current(KeySlot::Primary)
        );
        assert_eq!(
            hub.key_status("leaf", None, &secondary).unwrap(),
            KeyStatus::Retired
        );
        assert_eq!(
            hub.key_status("leaf", None, &after.secondary_key.fingerprint())
                .unwrap(),
            KeyStatus::Current(KeySlot::Secondary)
        );
        let again = cli
            .rotate(&ClientIdentity::device("leaf"), KeySlot::Primary)
            .unwrap();
        assert_ne!(again.primary_key, before.primary_key);
        assert_eq!(again.secondary_key, after.secondary_key);
        assert_eq!(
            hub.key_status("leaf", None, &primary).unwrap(),
            KeyStatus::Retired
        );
        let key = again.primary_key.to_base64();
        assert!(
            again
                .connection_string_with(&hostnames(), KeySlot::Primary)
                .contains(&format!("SharedAccessKey={key};"))
        );
        let key = again.secondary_key.to_base64();
        assert!(
            again
                .connection_string_with(&hostnames(), KeySlot::Secondary)
                .contains(&format!("SharedAccessKey={key};"))
        );
        assert!(matches!(
            cli.rotate(&ClientIdentity::device("nobody"), KeySlot::Primary),
            Err(IdentityError::Unknown(_))
        ));
    }

    #[test]
    fn every_one_of_rapid_rotations_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let hub = IdentityRegistry::open(dir.path(), "edge").unwrap();
        hub.add_device("leaf").unwrap();
        let cli = IdentityRegistry::open(dir.path(), "edge").unwrap();
        for _ in 0..50 {
            let rotated = cli
                .rotate(&ClientIdentity::device("leaf"), KeySlot::Primary)
                .unwrap();
            assert_eq!(hub.get("leaf", None).unwrap(), Some(rotated));
        }
    }

    #[test]
    fn list_is_sorted_and_keys_stay_out_of_debug_output() {
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityRegistry::open(dir.path(), "edge").unwrap();
        store.add_device("zeta").unwrap();
        let module = store.add_module("filter").unwrap();
        store.add_device("alpha").unwrap();
        let ids: Vec<String> = store
            .list()
            .unwrap()
            .iter()
            .map(|i| i.id.to_string())
            .collect();
        assert_eq!(ids, ["alpha", "edge/filter", "zeta"]);
        let debug = format!("{module:?}");
        assert!(!debug.contains(&module.primary_key.to_base64()), "{debug}");
    }

    fn learned(id: ClientIdentity, parent: Option<&str>) -> Identity {
        Identity {
            id,
            primary_key: SymmetricKey::generate().unwrap(),
            secondary_key: SymmetricKey::generate().unwrap(),
            parent: parent.map(str::to_owned),
            origin: Origin::Upstream,
        }
    }

    #[test]
    fn upstream_identities_are_replaced_whole_and_local_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let hub = IdentityRegistry::open(dir.path(), "child").unwrap();
        let local = hub.add_device("local").unwrap();
        let clash = hub.add_device("clash").unwrap();
        let leaf = learned(ClientIdentity::device("leaf"), None);
        let grand = learned(ClientIdentity::device("grand"), None);
        let grand_hub = learned(ClientIdentity::module("grand", EDGE_HUB), None);
        let under = learned(ClientIdentity::device("under"), Some("grand"));
        let changes = hub
            .replace_upstream([
                leaf.clone(),
                grand,
                grand_hub,
                under,
                learned(ClientIdentity::device("clash"), None),
            ])
            .unwrap();
        assert_eq!(changes.added, 4);
        assert_eq!(changes.conflicts, [ClientIdentity::device("clash")]);
        assert_eq!(
            hub.get("clash", None).unwrap(),
            Some(clash),
            "the local one stays"
        );
        assert_eq!(hub.get("leaf", None).unwrap(), Some(leaf.clone()));
        assert!(hub.is_edge_device("grand").unwrap());
        assert_eq!(hub.parent_of("under").unwrap().as_deref(), Some("grand"));

        // An answer without grand removes grand, its hub and its leaf; the same answer again
        // writes nothing.
        let generation = hub.generation().unwrap();
        let again = hub.replace_upstream([leaf.clone()]).unwrap();
        assert_eq!((again.added, again.removed), (0, 3));
        let generation_after = hub.generation().unwrap();
        assert_ne!(generation, generation_after);
        assert!(!hub.replace_upstream([leaf.clone()]).unwrap().changed());
        assert_eq!(hub.generation().unwrap(), generation_after);

        // Kept across a restart, marked; a new key replaces the old one.
        let reopened = IdentityRegistry::open(dir.path(), "child").unwrap();
        assert_eq!(
            reopened.get("leaf", None).unwrap().unwrap().origin,
            Origin::Upstream
        );
        assert_eq!(reopened.get("local", None).unwrap(), Some(local.clone()));
        let rotated = learned(ClientIdentity::device("leaf"), None);
        assert_eq!(
            reopened
                .replace_upstream([rotated.clone()])
                .unwrap()
                .updated,
            1
        );
        assert_eq!(hub.get("leaf", None).unwrap(), Some(rotated));

        // An empty answer removes every learned identity, and only those.
        assert_eq!(hub.replace_upstream([]).unwrap().removed, 1);
        let ids: Vec<String> = hub
            .list()
            .unwrap()
            .iter()
            .map(|i| i.id.to_string())
            .collect();
        assert_eq!(ids, ["clash", "local"]);
    }

    #[test]
    fn the_command_line_does_not_change_learned_identities() {
        let dir = tempfile::tempdir().unwrap();
        let hub = IdentityRegistry::open(dir.path(), "child").unwrap();
        hub.replace_upstream([learned(ClientIdentity::module("child", "filter"), None)])
            .unwrap();
        let id = hub.module_identity("filter");
        assert!(matches!(
            hub.remove(&id),
            Err(IdentityError::FromUpstream(_))
        ));
        assert!(matches!(
            hub.rotate(&id, KeySlot::Primary),
            Err(IdentityError::FromUpstream(_))
        ));
        assert!(hub.get("child", Some("filter")).unwrap().is_some());
        // Adding it finds the learned one, unchanged.
        assert_eq!(hub.add_module("filter").unwrap().origin, Origin::Upstream);
    }

    #[test]
    fn modules_of_a_child_edge_device_need_the_edge_device() {
        let dir = tempfile::tempdir().unwrap();
        let hub = IdentityRegistry::open(dir.path(), "parent").unwrap();
        assert!(matches!(
            hub.add_module_of("child-1", "filter"),
            Err(IdentityError::NotAnEdgeDevice(d)) if d == "child-1"
        ));
        hub.add_device("leaf").unwrap();
        assert!(matches!(
            hub.add_module_of("leaf", "filter"),
            Err(IdentityError::NotAnEdgeDevice(_))
        ));
        hub.add_edge_device("child-1", None).unwrap();
        let filter = hub.add_module_of("child-1", "filter").unwrap();
        assert_eq!(filter.id, ClientIdentity::module("child-1", "filter"));
        assert_eq!(filter.parent, None);
        assert_eq!(hub.add_module_of("child-1", "filter").unwrap(), filter);
        assert_eq!(
            hub.add_module_of("parent", "own").unwrap().id,
            ClientIdentity::module("parent", "own")
        );
        assert!(matches!(
            hub.add_module_of("child-1", "a/b"),
            Err(IdentityError::InvalidId(_))
        ));
    }
}
