//! One reconcile pass (spec 3): read what runs, plan against the deployment, run the plan
//! with per-command retry memory (spec 4.5), keep the restart records and `lastDesiredStatus`.
//!
//! [`Reconciler`] is the single owner of this state; the run loop calls [`Reconciler::pass`]
//! with the clock's reading, so tests drive time themselves.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::manifest::{Deployment, DeploymentError, Desired, ModuleSpec, StatusCode};
use crate::plan::{Action, PlanInput, RestartRecord, Step, plan};
use crate::restart::RestartSettings;
use crate::runtime::{CreateRequest, ModuleState, Runtime, credentials_for};

/// What the agent adds to a module before it is created: its environment (identity,
/// workload API) and its workload socket.
pub trait ModuleEnvironment: Send + Sync {
    /// The variables the agent injects for `spec` (they win over the deployment's) and the
    /// module's workload socket (host path, path inside the module), if any.
    ///
    /// # Errors
    ///
    /// When the module's identity cannot be made.
    fn prepare(&self, spec: &ModuleSpec) -> Result<Prepared, String>;
    /// `name` was removed: forget what was prepared for it.
    fn forget(&self, name: &str);
}

/// What [`ModuleEnvironment::prepare`] gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    /// Injected variables.
    pub env: Vec<(String, String)>,
    /// Workload socket: on the host, and as the module sees it.
    pub workload_socket: Option<(PathBuf, PathBuf)>,
}

/// No injected environment (tests, or a module that needs none).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEnvironment;

impl ModuleEnvironment for NoEnvironment {
    fn prepare(&self, _: &ModuleSpec) -> Result<Prepared, String> {
        Ok(Prepared::default())
    }
    fn forget(&self, _: &str) {}
}

/// A judged deployment: its id, and what it turned out to be.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    /// The deployment id (`$version` or the file counter).
    pub version: u64,
    /// The deployment, or why it was refused.
    pub outcome: Result<Desired, DeploymentError>,
}

/// `lastDesiredStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredStatusReport {
    /// The code.
    pub code: StatusCode,
    /// The description (empty for 200).
    pub description: String,
}

#[derive(Debug, Default)]
struct RetryMemory {
    version: Option<u64>,
    failures: HashMap<String, (u32, OffsetDateTime)>,
}

/// The most times one failing command runs.
const MAX_COMMAND_RUNS: u32 = 20;

impl RetryMemory {
    fn reset_if_new(&mut self, version: u64) {
        if self.version != Some(version) {
            self.version = Some(version);
            self.failures.clear();
        }
    }

    /// Whether the command `id` waits out its cool-off (10 s × 2^runs, no cap), or gave up.
    fn skip(&self, id: &str, now: OffsetDateTime, settings: &RestartSettings) -> bool {
        let Some((runs, last)) = self.failures.get(id) else {
            return false;
        };
        if *runs >= MAX_COMMAND_RUNS {
            return true;
        }
        let factor = 1u32.checked_shl((*runs).min(31)).unwrap_or(u32::MAX);
        let wait = settings.cool_off_unit.saturating_mul(factor);
        now - *last < wait
    }
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq)]
pub struct PassOutcome {
    /// The steps run (ids), in order.
    pub ran: Vec<String>,
    /// The steps skipped because they wait out a retry cool-off.
    pub skipped: Vec<String>,
    /// The failures, one message per failed step.
    pub failures: Vec<String>,
}

/// The agent's reconcile state and the runtime it drives.
#[derive(Debug)]
pub struct Reconciler<R> {
    runtime: R,
    environment: Arc<dyn ModuleEnvironment>,
    settings: RestartSettings,
    last_applied: Option<Deployment>,
    restarts: BTreeMap<String, RestartRecord>,
    retries: RetryMemory,
    status: DesiredStatusReport,
    judged_version: u64,
    judged: Option<Deployment>,
    states: Vec<ModuleState>,
}

impl std::fmt::Debug for dyn ModuleEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModuleEnvironment")
    }
}

impl<R: Runtime> Reconciler<R> {
    /// A reconciler that has applied nothing yet.
    pub fn new(
        runtime: R,
        environment: Arc<dyn ModuleEnvironment>,
        settings: RestartSettings,
    ) -> Self {
        Self {
            runtime,
            environment,
            settings,
            last_applied: None,
            restarts: BTreeMap::new(),
            retries: RetryMemory::default(),
            status: DesiredStatusReport {
                code: StatusCode::Unknown,
                description: String::new(),
            },
            judged_version: 0,
            judged: None,
            states: Vec::new(),
        }
    }

    /// The runtime.
    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    /// `lastDesiredStatus`.
    pub fn status(&self) -> &DesiredStatusReport {
        &self.status
    }

    /// The id of the deployment judged last (`lastDesiredVersion`).
    pub fn judged_version(&self) -> u64 {
        self.judged_version
    }

    /// The deployment applied last.
    pub fn last_applied(&self) -> Option<&Deployment> {
        self.last_applied.as_ref()
    }

    /// Sets the deployment applied before this agent started (read from its store).
    pub fn set_last_applied(&mut self, deployment: Option<Deployment>) {
        self.last_applied = deployment;
    }

    /// Restart records by module.
    pub fn restarts(&self) -> &BTreeMap<String, RestartRecord> {
        &self.restarts
    }

    /// Sets the restart records kept before this agent started (read from its store).
    pub fn set_restarts(&mut self, restarts: BTreeMap<String, RestartRecord>) {
        self.restarts = restarts;
    }

    /// Restart settings.
    pub fn settings(&self) -> &RestartSettings {
        &self.settings
    }

    /// What the runtime ran at the end of the last pass.
    pub fn states(&self) -> &[ModuleState] {
        &self.states
    }

    /// One pass at `now` against the deployment `judged`.
    pub async fn pass(&mut self, judged: &Judged, now: OffsetDateTime) -> PassOutcome {
        let mut outcome = PassOutcome {
            ran: Vec::new(),
            skipped: Vec::new(),
            failures: Vec::new(),
        };
        self.judged_version = judged.version;
        let current = match self.runtime.list().await {
            Ok(current) => current,
            Err(e) => {
                self.status = DesiredStatusReport {
                    code: StatusCode::Failed,
                    description: format!(
                        "reading the modules from the {} runtime: {e}",
                        self.runtime.kind()
                    ),
                };
                outcome.failures.push(self.status.description.clone());
                return outcome;
            }
        };
        self.states.clone_from(&current);
        let (target, refusal) = match &judged.outcome {
            Ok(Desired::Deployment(d)) => (Some((**d).clone()), None),
            Ok(Desired::Empty) => (
                self.last_applied.clone(),
                Some(DesiredStatusReport {
                    code: StatusCode::ConfigEmptyError,
                    description: "the deployment is empty: $edgeAgent has no desired properties"
                        .into(),
                }),
            ),
            Err(e) => (
                self.last_applied.clone(),
                Some(DesiredStatusReport {
                    code: e.code,
                    description: e.description.clone(),
                }),
            ),
        };
        if refusal.is_none() {
            self.judged.clone_from(&target);
        }
        let Some(target) = target else {
            if let Some(refusal) = refusal {
                self.status = refusal;
            }
            return outcome;
        };
        self.retries.reset_if_new(target.version);
        let steps = plan(&PlanInput {
            desired: &target,
            last_applied: self.last_applied.as_ref(),
            current: &current,
            restarts: &self.restarts,
            now,
            settings: &self.settings,
        });
        for step in &steps {
            if self.retries.skip(&step.id, now, &self.settings) {
                tracing::info!(command = %step.id, "waiting out the retry cool-off of a failed command");
                outcome.skipped.push(step.id.clone());
                continue;
            }
            match self.run_step(step, &target, now).await {
                Ok(()) => {
                    self.retries.failures.remove(&step.id);
                    outcome.ran.push(step.id.clone());
                }
                Err(message) => {
                    tracing::warn!(command = %step.id, error = %message, "command failed");
                    let entry = self
                        .retries
                        .failures
                        .entry(step.id.clone())
                        .or_insert((0, now));
                    entry.0 += 1;
                    entry.1 = now;
                    outcome.failures.push(message);
                }
            }
        }
        self.last_applied = Some(target);
        if let Ok(states) = self.runtime.list().await {
            self.states = states;
        }
        self.status = if let Some(refusal) = refusal {
            refusal
        } else if !outcome.failures.is_empty() {
            DesiredStatusReport {
                code: StatusCode::Failed,
                description: outcome.failures.join("; "),
            }
        } else if outcome.skipped.is_empty() {
            DesiredStatusReport {
                code: StatusCode::Successful,
                description: String::new(),
            }
        } else {
            // Commands still in their cool-off: the status of the pass that failed stays.
            self.status.clone()
        };
        outcome
    }

    async fn run_step(
        &mut self,
        step: &Step,
        target: &Deployment,
        now: OffsetDateTime,
    ) -> Result<(), String> {
        for action in &step.actions {
            self.run_action(action, target, now).await?;
        }
        Ok(())
    }

    async fn run_action(
        &mut self,
        action: &Action,
        target: &Deployment,
        now: OffsetDateTime,
    ) -> Result<(), String> {
        let credentials = |image: &str| {
            credentials_for(image, target.runtime.registry_credentials.values()).cloned()
        };
        match action {
            Action::Pull(image) => {
                let creds = credentials(image);
                self.runtime
                    .pull(image, creds.as_ref())
                    .await
                    .map_err(|e| e.to_string())
            }
            Action::Create(spec) => {
                let prepared = self
                    .environment
                    .prepare(spec)
                    .map_err(|e| format!("preparing {}: {e}", spec.name))?;
                let request = CreateRequest {
                    env: merge_env(spec, &prepared.env),
                    credentials: credentials(&spec.settings.image),
                    workload_socket: prepared.workload_socket,
                    spec: (**spec).clone(),
                };
                self.runtime
                    .create(&request)
                    .await
                    .map_err(|e| e.to_string())
            }
            Action::Start(name) => self.runtime.start(name).await.map_err(|e| e.to_string()),
            Action::Stop(name) => self.runtime.stop(name).await.map_err(|e| e.to_string()),
            Action::Remove(name) => {
                self.runtime.remove(name).await.map_err(|e| e.to_string())?;
                if target.module(name).is_none() {
                    self.environment.forget(name);
                }
                Ok(())
            }
            Action::Restart(name) => {
                self.runtime.stop(name).await.map_err(|e| e.to_string())?;
                self.runtime.start(name).await.map_err(|e| e.to_string())?;
                let record = self.restarts.entry(name.clone()).or_insert(RestartRecord {
                    count: 0,
                    last_restart: now,
                });
                record.count += 1;
                record.last_restart = now;
                tracing::info!(module = %name, restarts = record.count, "restarted by its restart policy");
                Ok(())
            }
            Action::ClearRestartState(name) => {
                self.restarts.remove(name);
                Ok(())
            }
        }
    }

    /// Stops every module, in parallel (SIGTERM of the agent), and reports 406.
    pub async fn shutdown(&mut self) {
        if let Ok(current) = self.runtime.list().await {
            let runtime = &self.runtime;
            let stops = current.iter().map(|module| async move {
                if let Err(e) = runtime.stop(&module.name).await {
                    tracing::warn!(module = %module.name, error = %e, "stopping at shutdown failed");
                }
            });
            futures_util::future::join_all(stops).await;
        }
        self.mark_not_running().await;
    }

    /// Reports 406 "Agent is not running" (SIGTERM, leaving the modules as they are).
    pub async fn mark_not_running(&mut self) {
        if let Ok(states) = self.runtime.list().await {
            self.states = states;
        }
        self.status = DesiredStatusReport {
            code: StatusCode::Unknown,
            description: "Agent is not running".into(),
        };
    }

    /// The deployment judged last that was valid (for reporting).
    pub fn judged_deployment(&self) -> Option<&Deployment> {
        self.judged.as_ref().or(self.last_applied.as_ref())
    }
}

/// The deployment's env, then the injected variables, which win (with a warning).
#[must_use]
pub fn merge_env(spec: &ModuleSpec, injected: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: BTreeMap<String, String> = spec.env.clone();
    for (name, value) in injected {
        if let Some(old) = env.insert(name.clone(), value.clone())
            && old != *value
        {
            tracing::warn!(module = %spec.name, variable = %name, "the deployment sets a variable the agent injects; the agent's value wins");
        }
    }
    env.into_iter().collect()
}
