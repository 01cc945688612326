//! A runtime in memory, for tests: modules are entries in a map, the clock is set by the
//! test, calls are recorded, and failures can be injected.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;

use super::{CreateRequest, ModuleState, RawStatus, Runtime, RuntimeError};
use crate::manifest::RegistryCredential;

/// A module of the fake runtime.
#[derive(Debug, Clone)]
pub struct FakeModule {
    /// What `create` was given.
    pub request: CreateRequest,
    /// Its state.
    pub state: ModuleState,
}

#[derive(Debug, Default)]
struct Inner {
    now: Option<OffsetDateTime>,
    modules: BTreeMap<String, FakeModule>,
    calls: Vec<String>,
    failing_pulls: BTreeSet<String>,
    failing_creates: BTreeSet<String>,
    next_id: u64,
}

/// The fake runtime; clones share their state.
#[derive(Debug, Clone, Default)]
pub struct FakeRuntime {
    inner: Arc<Mutex<Inner>>,
}

impl FakeRuntime {
    /// An empty runtime whose clock reads `now`.
    #[must_use]
    pub fn new(now: OffsetDateTime) -> Self {
        let runtime = Self::default();
        runtime.lock().now = Some(now);
        runtime
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the clock (start and exit times use it).
    pub fn set_now(&self, now: OffsetDateTime) {
        self.lock().now = Some(now);
    }

    /// The calls made so far (`pull x`, `create m`, `start m`, …), and forgets them.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().calls)
    }

    /// Makes pulls of `image` fail (or succeed again).
    pub fn fail_pull(&self, image: &str, fail: bool) {
        let mut inner = self.lock();
        if fail {
            inner.failing_pulls.insert(image.to_owned());
        } else {
            inner.failing_pulls.remove(image);
        }
    }

    /// Makes creates of `name` fail (or succeed again).
    pub fn fail_create(&self, name: &str, fail: bool) {
        let mut inner = self.lock();
        if fail {
            inner.failing_creates.insert(name.to_owned());
        } else {
            inner.failing_creates.remove(name);
        }
    }

    /// The module `name` exits with `code` now.
    pub fn exit(&self, name: &str, code: i64) {
        let mut inner = self.lock();
        let now = inner.now;
        if let Some(m) = inner.modules.get_mut(name) {
            m.state.raw = if code == 0 {
                RawStatus::Stopped
            } else {
                RawStatus::Failed
            };
            m.state.exit_code = code;
            m.state.exited_at = now;
            m.state.description = "exited".into();
        }
    }

    /// Puts a module in the runtime as if it had been created long ago, in `state`.
    pub fn seed(&self, request: CreateRequest, state: ModuleState) {
        self.lock()
            .modules
            .insert(state.name.clone(), FakeModule { request, state });
    }

    /// Removes `name` behind the agent's back.
    pub fn delete(&self, name: &str) {
        self.lock().modules.remove(name);
    }

    /// The module `name`, if it exists.
    #[must_use]
    pub fn module(&self, name: &str) -> Option<FakeModule> {
        self.lock().modules.get(name).cloned()
    }
}

impl Runtime for FakeRuntime {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn list(&self) -> Result<Vec<ModuleState>, RuntimeError> {
        Ok(self
            .lock()
            .modules
            .values()
            .map(|m| m.state.clone())
            .collect())
    }

    async fn pull(&self, image: &str, _: Option<&RegistryCredential>) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(format!("pull {image}"));
        if inner.failing_pulls.contains(image) {
            return Err(RuntimeError(format!("pulling {image}: manifest unknown")));
        }
        Ok(())
    }

    async fn create(&self, request: &CreateRequest) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        let name = request.spec.name.clone();
        inner.calls.push(format!("create {name}"));
        if inner.failing_creates.contains(&name) {
            return Err(RuntimeError(format!("creating {name}: injected failure")));
        }
        if inner.modules.contains_key(&name) {
            return Err(RuntimeError(format!("creating {name}: the name is in use")));
        }
        inner.next_id += 1;
        let id = format!("fake-{}", inner.next_id);
        let state = ModuleState {
            name: name.clone(),
            id,
            raw: RawStatus::Stopped,
            description: "created".into(),
            exit_code: 0,
            started_at: None,
            exited_at: None,
            image: request.spec.settings.image.clone(),
            image_hash: format!("sha256:{:x}", request.spec.settings.image.len()),
        };
        inner.modules.insert(
            name,
            FakeModule {
                request: request.clone(),
                state,
            },
        );
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(format!("start {name}"));
        let now = inner.now;
        let m = inner
            .modules
            .get_mut(name)
            .ok_or_else(|| RuntimeError(format!("starting {name}: no such module")))?;
        if m.state.raw != RawStatus::Running {
            m.state.raw = RawStatus::Running;
            m.state.started_at = now;
            m.state.description = "running".into();
        }
        Ok(())
    }

    async fn stop(&self, name: &str) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(format!("stop {name}"));
        let now = inner.now;
        let m = inner
            .modules
            .get_mut(name)
            .ok_or_else(|| RuntimeError(format!("stopping {name}: no such module")))?;
        if m.state.raw == RawStatus::Running {
            m.state.raw = RawStatus::Stopped;
            m.state.exit_code = 0;
            m.state.exited_at = now;
            m.state.description = "exited".into();
        }
        Ok(())
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let mut inner = self.lock();
        inner.calls.push(format!("remove {name}"));
        inner
            .modules
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| RuntimeError(format!("removing {name}: no such module")))
    }
}
