//! `$edgeAgent`'s reported properties (spec 10): the document, and the patch from the last
//! reported one (changed leaves only, a module that disappeared as `null`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::create_options;
use crate::manifest::{Deployment, EDGE_AGENT, EDGE_HUB, ModuleSpec};
use crate::plan::RestartRecord;
use crate::reconcile::DesiredStatusReport;
use crate::restart::{RestartSettings, RuntimeStatus, runtime_status};
use crate::runtime::ModuleState;

/// "Never happened".
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// Everything the document is made of.
#[derive(Debug, Clone, Copy)]
pub struct ReportInput<'a> {
    /// The deployment the modules' configuration comes from.
    pub deployment: Option<&'a Deployment>,
    /// What runs.
    pub states: &'a [ModuleState],
    /// Restart records.
    pub restarts: &'a BTreeMap<String, RestartRecord>,
    /// Restart knobs.
    pub settings: &'a RestartSettings,
    /// `lastDesiredStatus`.
    pub status: &'a DesiredStatusReport,
    /// `lastDesiredVersion`.
    pub judged_version: u64,
    /// `runtime.type` reported (`docker`, `process`).
    pub runtime_kind: &'a str,
    /// When this agent started.
    pub agent_started: OffsetDateTime,
    /// True once the agent is shutting down: every module is `unknown`.
    pub shutting_down: bool,
}

/// RFC 3339 in UTC with `Z`, or [`NEVER`].
#[must_use]
pub fn timestamp(at: Option<OffsetDateTime>) -> String {
    at.and_then(|t| t.to_offset(time::UtcOffset::UTC).format(&Rfc3339).ok())
        .unwrap_or_else(|| NEVER.to_owned())
}

/// The reported document.
#[must_use]
pub fn document(input: &ReportInput<'_>) -> Value {
    let mut system = Map::new();
    let agent_spec = input.deployment.map(|d| &d.edge_agent);
    system.insert(
        EDGE_AGENT.into(),
        json!({
            "type": "docker",
            "runtimeStatus": if input.shutting_down { "unknown" } else { "running" },
            "imagePullPolicy": agent_spec.map_or("on-create", |s| s.image_pull_policy.as_str()),
            "exitCode": 0,
            "statusDescription": "running",
            "lastStartTimeUtc": timestamp(Some(input.agent_started)),
            "lastExitTimeUtc": NEVER,
            "settings": settings(agent_spec, None),
        }),
    );
    let mut modules = Map::new();
    for state in input.states.iter().filter(|s| s.name != EDGE_AGENT) {
        let spec = input.deployment.and_then(|d| d.module(&state.name));
        let entry = module_entry(state, spec, input);
        if state.name == EDGE_HUB {
            system.insert(EDGE_HUB.into(), entry);
        } else {
            modules.insert(state.name.clone(), entry);
        }
    }
    let mut doc = json!({
        "schemaVersion": "1.0",
        "version": { "version": env!("CARGO_PKG_VERSION"), "build": "", "commit": "" },
        "lastDesiredVersion": input.judged_version,
        "lastDesiredStatus": { "code": input.status.code.code(), "description": input.status.description },
        "runtime": {
            "type": input.runtime_kind,
            "platform": { "os": std::env::consts::OS, "architecture": std::env::consts::ARCH,
                          "version": env!("CARGO_PKG_VERSION") },
        },
        "systemModules": system,
        "modules": modules,
    });
    if let Some(d) = input.deployment {
        doc["runtime"]["settings"] = json!({
            "minDockerVersion": d.runtime.min_docker_version,
            "loggingOptions": d.runtime.logging_options,
            "registryCredentials": {},
        });
    }
    doc
}

fn settings(spec: Option<&ModuleSpec>, state: Option<&ModuleState>) -> Value {
    let mut out = Map::new();
    let image = state
        .map(|s| s.image.clone())
        .filter(|i| !i.is_empty())
        .or_else(|| spec.map(|s| s.settings.image.clone()))
        .unwrap_or_default();
    out.insert("image".into(), json!(image));
    out.insert(
        "imageHash".into(),
        json!(state.map(|s| s.image_hash.clone()).unwrap_or_default()),
    );
    let options = spec
        .and_then(|s| s.settings.create_options.clone())
        .unwrap_or_else(|| json!({}));
    match create_options::split(&options) {
        Ok(pieces) => {
            for (k, v) in pieces {
                out.insert(k, json!(v));
            }
        }
        Err(e) => {
            out.insert("createOptions".into(), json!(format!("<{e}>")));
        }
    }
    if let Some(path) = spec.and_then(|s| s.settings.path.clone()) {
        out.insert("path".into(), json!(path));
    }
    Value::Object(out)
}

fn module_entry(state: &ModuleState, spec: Option<&ModuleSpec>, input: &ReportInput<'_>) -> Value {
    let record = input.restarts.get(&state.name);
    let count = record.map_or(0, |r| r.count);
    let status = if input.shutting_down {
        RuntimeStatus::Unknown
    } else {
        match spec {
            Some(spec) => runtime_status(
                state.raw,
                spec.status,
                spec.restart_policy,
                count,
                input.settings,
            ),
            None => runtime_status(
                state.raw,
                crate::manifest::DesiredStatus::Stopped,
                crate::manifest::RestartPolicy::Never,
                count,
                input.settings,
            ),
        }
    };
    let mut entry = json!({
        "type": "docker",
        "runtimeStatus": status.as_str(),
        "exitCode": state.exit_code,
        "statusDescription": state.description,
        "lastStartTimeUtc": timestamp(state.started_at),
        "lastExitTimeUtc": timestamp(state.exited_at),
        "restartCount": count,
        "lastRestartTimeUtc": timestamp(record.map(|r| r.last_restart)),
        "settings": settings(spec, Some(state)),
    });
    if let Some(spec) = spec {
        entry["status"] = json!(spec.status.as_str());
        entry["restartPolicy"] = json!(spec.restart_policy.as_str());
        entry["imagePullPolicy"] = json!(spec.image_pull_policy.as_str());
        if spec.startup_order != u32::MAX {
            entry["startupOrder"] = json!(spec.startup_order);
        }
        if !spec.version.is_empty() {
            entry["version"] = json!(spec.version);
        }
        let env: Map<String, Value> = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), json!({ "value": v })))
            .collect();
        entry["env"] = Value::Object(env);
    }
    entry
}

/// The patch that turns `old` into `new`: changed leaves, removed keys as `null`; `None` when
/// nothing changed.
#[must_use]
pub fn patch(old: &Value, new: &Value) -> Option<Value> {
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut out = Map::new();
            for (key, value) in new {
                match old.get(key) {
                    Some(before) if before == value => {}
                    Some(before @ Value::Object(_)) if value.is_object() => {
                        if let Some(inner) = patch(before, value) {
                            out.insert(key.clone(), inner);
                        }
                    }
                    _ => {
                        out.insert(key.clone(), value.clone());
                    }
                }
            }
            for key in old.keys() {
                if !new.contains_key(key) {
                    out.insert(key.clone(), Value::Null);
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        (old, new) if old == new => None,
        (_, new) => Some(new.clone()),
    }
}

/// Applies a merge `patch` to `doc` (null removes), as the twin does.
pub fn apply(doc: &mut Value, patch: &Value) {
    match (doc, patch) {
        (Value::Object(doc), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    doc.remove(key);
                } else if let Some(existing) = doc
                    .get_mut(key)
                    .filter(|e| e.is_object() && value.is_object())
                {
                    apply(existing, value);
                } else {
                    doc.insert(key.clone(), value.clone());
                }
            }
        }
        (doc, patch) => *doc = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_module_is_patched_as_null_and_no_change_sends_nothing() {
        let old = json!({ "modules": { "a": { "runtimeStatus": "running", "exitCode": 0 },
                                       "b": { "runtimeStatus": "running" } },
                          "lastDesiredVersion": 1 });
        let new = json!({ "modules": { "a": { "runtimeStatus": "backoff", "exitCode": 0 } },
                          "lastDesiredVersion": 1 });
        let p = patch(&old, &new).unwrap();
        assert_eq!(
            p,
            json!({ "modules": { "a": { "runtimeStatus": "backoff" }, "b": null } })
        );
        let mut applied = old.clone();
        apply(&mut applied, &p);
        assert_eq!(applied, new);
        assert_eq!(patch(&new, &new), None);
    }

    /// JSON without nulls (a null in a patch means "remove").
    fn arb_doc() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            (0i64..5).prop_map(|n| json!(n)),
            "[ab]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
        .prop_map(|v| if v.is_object() { v } else { json!({ "x": v }) })
    }

    proptest::proptest! {
        #[test]
        fn applying_the_patch_gives_the_new_document(old in arb_doc(), new in arb_doc()) {
            let mut applied = old.clone();
            if let Some(p) = patch(&old, &new) {
                apply(&mut applied, &p);
            }
            proptest::prop_assert_eq!(applied, new);
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_or_the_minimum_date() {
        assert_eq!(timestamp(None), NEVER);
        let t = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(1500);
        assert_eq!(timestamp(Some(t)), "1970-01-01T00:00:01.5Z");
    }
}
