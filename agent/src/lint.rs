//! `edgeagent check`: the mistakes people make when they write a manifest by hand, each
//! named with its fix, on top of the agent's own validation ([`crate::manifest`]).

use serde_json::{Map, Value};

use crate::manifest::{self, Desired, StatusCode};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The manifest does not do what it says (or is refused): exit 2.
    Error,
    /// Worth a look; the manifest is valid.
    Warning,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// Where (a dotted path in the manifest).
    pub at: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{word}: {}: {}", self.at, self.message)
    }
}

/// Everything `edgeagent check` says about `manifest`: the hand-made mistakes first, then the
/// agent's verdict (400/412/417) when it refuses the deployment and no hand-made finding
/// already explains it.
#[must_use]
pub fn check(manifest: &Value) -> Vec<Finding> {
    let mut findings = Vec::new();
    if let Some(hub) = manifest
        .get("modulesContent")
        .and_then(|c| c.get("$edgeHub"))
        .and_then(|h| h.get("properties.desired"))
        .and_then(Value::as_object)
    {
        lint_hub(hub, &mut findings);
    }
    let desired = manifest::desired_document(manifest);
    if let Ok(desired) = desired {
        lint_agent(desired, &mut findings);
    }
    match manifest::parse_manifest(manifest, 1) {
        Ok(Desired::Deployment(_)) => {}
        Ok(Desired::Empty) => findings.push(Finding {
            severity: Severity::Error,
            at: "$edgeAgent".into(),
            message: format!(
                "{} the desired properties are empty: add schemaVersion, runtime, systemModules and modules",
                StatusCode::ConfigEmptyError.code()
            ),
        }),
        Err(e) => {
            let explained = findings.iter().any(|f| {
                f.severity == Severity::Error && e.description.contains(f.at.as_str())
            });
            if !explained {
                findings.push(Finding {
                    severity: Severity::Error,
                    at: "$edgeAgent".into(),
                    message: e.to_string(),
                });
            }
        }
    }
    findings
}

fn lint_hub(hub: &Map<String, Value>, findings: &mut Vec<Finding>) {
    if hub.contains_key("storeAndForward") && !hub.contains_key("storeAndForwardConfiguration") {
        findings.push(Finding {
            severity: Severity::Error,
            at: "$edgeHub.properties.desired.storeAndForward".into(),
            message: "edgeHub reads storeAndForwardConfiguration; storeAndForward is ignored (rename it to storeAndForwardConfiguration)".into(),
        });
    }
    if !hub.contains_key("routes") {
        findings.push(Finding {
            severity: Severity::Warning,
            at: "$edgeHub.properties.desired".into(),
            message: "no routes: no message will be delivered (add \"routes\": {...})".into(),
        });
    }
}

fn lint_agent(desired: &Map<String, Value>, findings: &mut Vec<Finding>) {
    if desired.contains_key("routes") {
        findings.push(Finding {
            severity: Severity::Error,
            at: "$edgeAgent.routes".into(),
            message: "routes belong to $edgeHub: move them to modulesContent.$edgeHub.\"properties.desired\".routes".into(),
        });
    }
    let mut modules: Vec<(String, &Map<String, Value>)> = Vec::new();
    if let Some(system) = desired.get("systemModules").and_then(Value::as_object) {
        for (name, module) in system {
            if let Some(module) = module.as_object() {
                modules.push((format!("systemModules.{name}"), module));
            }
        }
    }
    if let Some(user) = desired.get("modules").and_then(Value::as_object) {
        for (name, module) in user {
            if let Some(module) = module.as_object() {
                modules.push((format!("modules.{name}"), module));
            }
        }
    }
    for (at, module) in modules {
        lint_module(&at, module, findings);
    }
}

fn lint_module(at: &str, module: &Map<String, Value>, findings: &mut Vec<Finding>) {
    for key in ["image", "createOptions", "routes"] {
        if module.contains_key(key) {
            let message = if key == "routes" {
                "routes belong to $edgeHub: move them to modulesContent.$edgeHub.\"properties.desired\".routes".to_owned()
            } else {
                format!("{key} belongs inside \"settings\": move it to {at}.settings.{key}")
            };
            findings.push(Finding {
                severity: Severity::Error,
                at: format!("{at}.{key}"),
                message,
            });
        }
    }
    if let Some(settings) = module.get("settings").and_then(Value::as_object)
        && settings.contains_key("routes")
    {
        findings.push(Finding {
            severity: Severity::Error,
            at: format!("{at}.settings.routes"),
            message: "routes belong to $edgeHub: move them to modulesContent.$edgeHub.\"properties.desired\".routes".into(),
        });
    }
    if let Some(policy) = module.get("restartPolicy").and_then(Value::as_str) {
        let fix = match policy
            .to_ascii_lowercase()
            .replace(['_', ' '], "-")
            .as_str()
        {
            "on-failed" | "onfailure" | "on-failure" => Some("on-failure"),
            "on-unhealthy" | "onunhealthy" => Some("on-unhealthy"),
            "always" => Some("always"),
            "never" | "no" => Some("never"),
            _ => None,
        };
        let valid = ["never", "on-failure", "on-unhealthy", "always"].contains(&policy);
        if !valid {
            let message = match fix {
                Some(fix) => format!("{policy:?} is not a restart policy: write \"{fix}\""),
                None => format!(
                    "{policy:?} is not a restart policy: write \"never\", \"on-failure\", \"on-unhealthy\" or \"always\""
                ),
            };
            findings.push(Finding {
                severity: Severity::Error,
                at: format!("{at}.restartPolicy"),
                message,
            });
        }
    }
    if let Some(env) = module.get("env").and_then(Value::as_object) {
        for (name, value) in env {
            let ok = value.as_object().is_some_and(|o| o.contains_key("value"));
            if !ok {
                let shown = match value {
                    Value::String(s) => format!("{{\"value\": {s:?}}}"),
                    other => format!("{{\"value\": \"{}\"}}", other.to_string().trim_matches('"')),
                };
                findings.push(Finding {
                    severity: Severity::Error,
                    at: format!("{at}.env.{name}"),
                    message: format!("an env value is an object: write \"{name}\": {shown}"),
                });
            }
        }
    }
    if let Some(image) = module
        .get("settings")
        .and_then(|s| s.get("image"))
        .and_then(Value::as_str)
    {
        let last = image.rsplit('/').next().unwrap_or(image);
        if !last.contains(':') && !image.contains('@') && !image.trim().is_empty() {
            findings.push(Finding {
                severity: Severity::Warning,
                at: format!("{at}.settings.image"),
                message: format!(
                    "{image:?} has no tag: it means {image}:latest, which moves; pin a tag"
                ),
            });
        }
    }
    if at.starts_with("modules.") && !module.contains_key("restartPolicy") {
        findings.push(Finding {
            severity: Severity::Warning,
            at: format!("{at}.restartPolicy"),
            message: "absent: the module gets \"on-unhealthy\" (restarted when it fails)".into(),
        });
    }
}

/// True when `findings` hold an error.
#[must_use]
pub fn has_errors(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[allow(clippy::needless_pass_by_value)]
    fn manifest(hub: Value, modules: Value) -> Value {
        json!({ "modulesContent": {
            "$edgeAgent": { "properties.desired": {
                "schemaVersion": "1.1", "runtime": { "type": "docker" },
                "systemModules": {
                    "edgeAgent": { "type": "docker", "settings": { "image": "edgeagent:local" } },
                    "edgeHub": { "type": "docker", "status": "running", "restartPolicy": "always",
                                 "settings": { "image": "edgehub:local" } } },
                "modules": modules } },
            "$edgeHub": { "properties.desired": hub } } })
    }

    fn errors(findings: &[Finding]) -> Vec<&Finding> {
        findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .collect()
    }

    #[test]
    fn a_clean_manifest_has_no_errors() {
        let m = manifest(
            json!({"schemaVersion": "1.1", "routes": {"r": "FROM /* INTO $upstream"}, "storeAndForwardConfiguration": {"timeToLiveSecs": 10}}),
            json!({"f": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "f:1"}}}),
        );
        let findings = check(&m);
        assert!(findings.is_empty(), "{findings:?}");
    }

    #[test]
    fn each_hand_made_mistake_is_named_with_its_fix() {
        let m = manifest(
            json!({"routes": {}, "storeAndForward": {"timeToLiveSecs": 10}}),
            json!({
                "a": {"type": "docker", "status": "running", "restartPolicy": "On-Failed", "settings": {"image": "a:1"}},
                "b": {"type": "docker", "status": "running", "restartPolicy": "On-Unhealthy", "settings": {"image": "b:1"}},
                "c": {"type": "docker", "status": "running", "restartPolicy": "always", "image": "c:1", "settings": {}},
                "d": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "d:1"}, "env": {"X": "1"}},
                "e": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "e:1"}, "routes": {}}
            }),
        );
        let findings = check(&m);
        let text: Vec<String> = errors(&findings).iter().map(ToString::to_string).collect();
        let expect = [
            ("storeAndForward", "storeAndForwardConfiguration"),
            ("modules.a.restartPolicy", "write \"on-failure\""),
            ("modules.b.restartPolicy", "write \"on-unhealthy\""),
            ("modules.c.image", "modules.c.settings.image"),
            ("modules.d.env.X", "{\"value\": \"1\"}"),
            ("modules.e.routes", "$edgeHub"),
        ];
        for (at, fix) in expect {
            assert!(
                text.iter().any(|t| t.contains(at) && t.contains(fix)),
                "{at} / {fix} missing from {text:#?}"
            );
        }
    }

    #[test]
    fn refused_deployments_are_errors_with_their_code() {
        let mut m = manifest(json!({"routes": {}}), json!({}));
        m["modulesContent"]["$edgeAgent"]["properties.desired"]["schemaVersion"] = json!("1.2");
        let findings = check(&m);
        assert!(
            errors(&findings)
                .iter()
                .any(|f| f.message.starts_with("412")),
            "{findings:?}"
        );
        let findings =
            check(&json!({"modulesContent": {"$edgeAgent": {"properties.desired": {}}}}));
        assert!(
            errors(&findings)
                .iter()
                .any(|f| f.message.starts_with("417")),
            "{findings:?}"
        );
    }

    proptest::proptest! {
        #[test]
        fn check_never_panics_on_a_mutated_manifest(path in proptest::collection::vec("[a-zA-Z.$]{1,12}", 1..5), value in "\\PC{0,20}") {
            let mut m = manifest(json!({"routes": {}}), json!({"f": {"type": "docker", "status": "running", "settings": {"image": "f"}}}));
            let mut at = &mut m;
            for key in &path {
                if !at.is_object() {
                    *at = json!({});
                }
                at = at.as_object_mut().map(|o| o.entry(key.clone()).or_insert(Value::Null)).unwrap_or_else(|| unreachable!());
            }
            *at = serde_json::from_str(&value).unwrap_or(Value::String(value));
            let _ = check(&m);
        }
    }

    #[test]
    fn an_untagged_image_is_a_warning_only() {
        let m = manifest(
            json!({"routes": {}}),
            json!({"f": {"type": "docker", "status": "running", "restartPolicy": "always", "settings": {"image": "f"}}}),
        );
        let findings = check(&m);
        assert!(!has_errors(&findings));
        assert!(findings.iter().any(|f| f.at == "modules.f.settings.image"));
    }
}
