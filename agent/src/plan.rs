//! The reconcile planner (spec 3-4), pure: the deployment, the last applied one, what the
//! runtime runs and the restart records in; the ordered steps that make the runtime match out.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash as _, Hasher as _};

use time::OffsetDateTime;

use crate::manifest::{
    Deployment, DesiredStatus, EDGE_AGENT, ImagePullPolicy, ModuleSpec, RestartPolicy,
};
use crate::restart::{RestartSettings, RuntimeStatus, runtime_status};
use crate::runtime::{ModuleState, RawStatus};

/// How often a module was restarted by its policy, and when last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartRecord {
    /// Restarts so far.
    pub count: u32,
    /// The last one.
    pub last_restart: OffsetDateTime,
}

/// One thing to ask of the runtime (or of the agent's restart records).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Pull the image.
    Pull(String),
    /// Create the module (not started).
    Create(Box<ModuleSpec>),
    /// Start it.
    Start(String),
    /// Stop it.
    Stop(String),
    /// Remove it.
    Remove(String),
    /// Stop and start it, counting a restart.
    Restart(String),
    /// Forget its restart record.
    ClearRestartState(String),
}

/// A command of the plan: actions run in order, stopping at the first failure. Its id keys
/// the retry memory: a create or update of a new spec is a new command.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// `create filter 1a2b…`, `start filter`, …
    pub id: String,
    /// The module it is about.
    pub module: String,
    /// What it does.
    pub actions: Vec<Action>,
}

/// How the deployment and the runtime differ for one module (spec 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Added,
    Removed,
    StatusChanged,
    Updated,
    Unchanged,
}

/// What [`plan`] reads.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// The deployment to apply.
    pub desired: &'a Deployment,
    /// The deployment applied last (the configuration of what runs).
    pub last_applied: Option<&'a Deployment>,
    /// What the runtime runs.
    pub current: &'a [ModuleState],
    /// Restart records by module.
    pub restarts: &'a BTreeMap<String, RestartRecord>,
    /// The clock.
    pub now: OffsetDateTime,
    /// Back-off knobs.
    pub settings: &'a RestartSettings,
}

/// The configuration of a module that runs: the last applied spec with the image the
/// runtime really used; `None` when the last deployment did not have it.
fn current_config(state: &ModuleState, last_applied: Option<&Deployment>) -> Option<ModuleSpec> {
    let mut spec = last_applied?.module(&state.name)?.clone();
    if !state.image.is_empty() {
        spec.settings.image.clone_from(&state.image);
    }
    Some(spec)
}

/// A short stable hash of a spec, so that a new spec makes a new command id.
fn spec_hash(spec: &ModuleSpec) -> String {
    let mut h = DefaultHasher::new();
    format!("{spec:?}").hash(&mut h);
    format!("{:016x}", h.finish())
}

/// The plan making the runtime match `input.desired`, in `startupOrder` groups.
#[must_use]
pub fn plan(input: &PlanInput<'_>) -> Vec<Step> {
    let desired: BTreeMap<&str, &ModuleSpec> = input
        .desired
        .managed_modules()
        .map(|m| (m.name.as_str(), m))
        .collect();
    let current: BTreeMap<&str, &ModuleState> = input
        .current
        .iter()
        .filter(|s| s.name != EDGE_AGENT)
        .map(|s| (s.name.as_str(), s))
        .collect();
    let names: BTreeSet<&str> = desired.keys().chain(current.keys()).copied().collect();

    // priority -> (name, change)
    let mut groups: BTreeMap<u32, Vec<(&str, Change)>> = BTreeMap::new();
    for name in names {
        let (change, priority) = match (desired.get(name), current.get(name)) {
            (Some(d), None) => (Change::Added, d.startup_order),
            (None, Some(c)) => (
                Change::Removed,
                current_config(c, input.last_applied).map_or(0, |s| s.startup_order),
            ),
            (Some(d), Some(c)) => {
                let change = match current_config(c, input.last_applied) {
                    Some(config) if config == **d => Change::Unchanged,
                    Some(config) if config.equal_but_status(d) => Change::StatusChanged,
                    _ => Change::Updated,
                };
                (change, d.startup_order)
            }
            (None, None) => continue,
        };
        groups.entry(priority).or_default().push((name, change));
    }

    let mut steps = Vec::new();
    for members in groups.values() {
        let of = |wanted: Change| {
            members
                .iter()
                .filter(move |(_, c)| *c == wanted)
                .map(|(n, _)| *n)
        };
        let is_dead = |name: &str| current.get(name).is_some_and(|s| s.raw == RawStatus::Dead);
        for name in of(Change::Removed) {
            steps.push(simple(name, "stop", Action::Stop(name.to_owned())));
        }
        for name in of(Change::Removed) {
            steps.push(simple(name, "remove", Action::Remove(name.to_owned())));
        }
        let dead: Vec<&str> = members
            .iter()
            .filter(|(n, c)| matches!(c, Change::Unchanged | Change::StatusChanged) && is_dead(n))
            .map(|(n, _)| *n)
            .collect();
        for name in &dead {
            steps.push(simple(name, "remove", Action::Remove((*name).to_owned())));
        }
        for (name, change) in members {
            let clears = matches!(
                change,
                Change::Removed | Change::Updated | Change::StatusChanged
            ) || dead.contains(name);
            if clears && input.restarts.contains_key(*name) {
                steps.push(simple(
                    name,
                    "clear",
                    Action::ClearRestartState((*name).to_owned()),
                ));
            }
        }
        for name in of(Change::Added) {
            let spec = desired[name];
            let mut actions = pull(spec);
            actions.push(Action::Create(Box::new(spec.clone())));
            if spec.status == DesiredStatus::Running {
                actions.push(Action::Start(name.to_owned()));
            }
            steps.push(Step {
                id: format!("create {name} {}", spec_hash(spec)),
                module: name.to_owned(),
                actions,
            });
        }
        for name in of(Change::Updated) {
            let spec = desired[name];
            let mut actions = pull(spec);
            actions.push(Action::Stop(name.to_owned()));
            actions.push(Action::Remove(name.to_owned()));
            actions.push(Action::Create(Box::new(spec.clone())));
            if spec.status == DesiredStatus::Running {
                actions.push(Action::Start(name.to_owned()));
            }
            steps.push(Step {
                id: format!("update {name} {}", spec_hash(spec)),
                module: name.to_owned(),
                actions,
            });
        }
        for name in of(Change::Unchanged) {
            if dead.contains(&name) {
                continue;
            }
            if let Some(step) = runtime_driven(desired[name], current[name], input) {
                steps.push(step);
            }
        }
        for name in of(Change::StatusChanged) {
            if dead.contains(&name) {
                continue;
            }
            let state = current[name];
            match desired[name].status {
                DesiredStatus::Running if state.raw != RawStatus::Running => {
                    steps.push(simple(name, "start", Action::Start(name.to_owned())));
                }
                DesiredStatus::Stopped if state.raw == RawStatus::Running => {
                    steps.push(simple(name, "stop", Action::Stop(name.to_owned())));
                }
                _ => {}
            }
        }
        for name in of(Change::Unchanged) {
            let state = current[name];
            let spec = desired[name];
            if !input.restarts.contains_key(name) {
                continue;
            }
            let long_enough = state
                .started_at
                .is_some_and(|started| input.now - started > input.settings.intensive_care);
            if state.raw == RawStatus::Running
                && spec.status == DesiredStatus::Running
                && long_enough
            {
                steps.push(simple(
                    name,
                    "clear",
                    Action::ClearRestartState(name.to_owned()),
                ));
            }
        }
    }
    steps
}

fn simple(name: &str, verb: &str, action: Action) -> Step {
    Step {
        id: format!("{verb} {name}"),
        module: name.to_owned(),
        actions: vec![action],
    }
}

fn pull(spec: &ModuleSpec) -> Vec<Action> {
    if spec.image_pull_policy == ImagePullPolicy::OnCreate && !spec.settings.image.is_empty() {
        vec![Action::Pull(spec.settings.image.clone())]
    } else {
        Vec::new()
    }
}

/// Spec 4.3: stop, start or restart a module the deployment did not touch.
fn runtime_driven(spec: &ModuleSpec, state: &ModuleState, input: &PlanInput<'_>) -> Option<Step> {
    let name = spec.name.as_str();
    let count = input.restarts.get(name).map_or(0, |r| r.count);
    let status = runtime_status(
        state.raw,
        spec.status,
        spec.restart_policy,
        count,
        input.settings,
    );
    match spec.status {
        DesiredStatus::Stopped => (state.raw == RawStatus::Running)
            .then(|| simple(name, "stop", Action::Stop(name.to_owned()))),
        DesiredStatus::Running => match status {
            RuntimeStatus::Stopped
                if spec.restart_policy != RestartPolicy::Never || state.started_at.is_none() =>
            {
                Some(simple(name, "start", Action::Start(name.to_owned())))
            }
            RuntimeStatus::Backoff
                if input
                    .settings
                    .cool_off_elapsed(count, state.exited_at, input.now) =>
            {
                Some(simple(name, "restart", Action::Restart(name.to_owned())))
            }
            _ => None,
        },
    }
}

/// When a module in back-off will be restarted (for logs and `statusDescription`).
#[must_use]
pub fn next_restart(
    state: &ModuleState,
    record: Option<&RestartRecord>,
    settings: &RestartSettings,
) -> Option<OffsetDateTime> {
    let count = record.map_or(0, |r| r.count);
    state.exited_at.map(|exit| exit + settings.cool_off(count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Desired, parse_manifest};
    use serde_json::json;

    fn deployment(modules: &serde_json::Value, version: u64) -> Deployment {
        let m = json!({ "schemaVersion": "1.1", "runtime": { "type": "docker" },
            "systemModules": { "edgeAgent": { "type": "docker", "settings": { "image": "a:1" } },
                               "edgeHub": { "type": "docker", "status": "running", "startupOrder": 0, "settings": { "image": "h:1" } } },
            "modules": modules });
        match parse_manifest(&m, version).unwrap() {
            Desired::Deployment(d) => *d,
            Desired::Empty => unreachable!(),
        }
    }

    fn running(name: &str, image: &str) -> ModuleState {
        ModuleState {
            name: name.into(),
            id: name.into(),
            raw: RawStatus::Running,
            description: "running".into(),
            exit_code: 0,
            started_at: Some(OffsetDateTime::UNIX_EPOCH),
            exited_at: None,
            image: image.into(),
            image_hash: String::new(),
        }
    }

    fn ids(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| s.id.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[test]
    fn unknown_containers_go_first_and_removed_modules_keep_their_group() {
        let m = |order: u32| json!({ "type": "docker", "status": "running", "startupOrder": order, "settings": { "image": "m:1" } });
        let last = deployment(&json!({ "old": m(2), "keep": m(1) }), 1);
        let desired = deployment(&json!({ "keep": m(1), "new": m(3) }), 2);
        let current = [
            running("stranger", "x:1"),
            running("old", "m:1"),
            running("keep", "m:1"),
            running("edgeHub", "h:1"),
        ];
        let steps = plan(&PlanInput {
            desired: &desired,
            last_applied: Some(&last),
            current: &current,
            restarts: &BTreeMap::new(),
            now: OffsetDateTime::UNIX_EPOCH,
            settings: &RestartSettings::default(),
        });
        assert_eq!(
            ids(&steps),
            [
                "stop stranger",
                "remove stranger",
                "stop old",
                "remove old",
                "create new"
            ]
        );
    }

    #[test]
    fn an_image_changed_behind_the_agent_is_an_update() {
        let m = json!({ "type": "docker", "status": "running", "startupOrder": 1, "settings": { "image": "m:1" } });
        let d = deployment(&json!({ "m": m }), 1);
        let current = [running("m", "m:0"), running("edgeHub", "h:1")];
        let steps = plan(&PlanInput {
            desired: &d,
            last_applied: Some(&d),
            current: &current,
            restarts: &BTreeMap::new(),
            now: OffsetDateTime::UNIX_EPOCH,
            settings: &RestartSettings::default(),
        });
        assert_eq!(ids(&steps), ["update m"]);
        assert_eq!(
            steps[0]
                .actions
                .iter()
                .map(|a| format!("{a:?}")
                    .split('(')
                    .next()
                    .unwrap_or_default()
                    .to_owned())
                .collect::<Vec<_>>(),
            ["Pull", "Stop", "Remove", "Create", "Start"]
        );
    }
}
