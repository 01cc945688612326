//! The deployment: `$edgeAgent`'s desired properties, parsed and validated with the reference
//! status codes (spec 1-2).
//!
//! [`parse_manifest`] takes a whole deployment manifest (`modulesContent.$edgeAgent."properties.desired"`)
//! or a bare `$edgeAgent` desired document and gives a [`Desired`] or a [`DeploymentError`]
//! whose [`StatusCode`] is 400 (naming the offending property), 412 (schema version) or 417
//! (nothing but metadata). Nothing here panics on any input.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use crate::create_options::{self, json_kind};

/// The name of the agent's own module.
pub const EDGE_AGENT: &str = "edgeAgent";
/// The name of the hub's module.
pub const EDGE_HUB: &str = "edgeHub";

/// `lastDesiredStatus.code`: the outcome of judging or applying a deployment (spec 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatusCode {
    /// 200: applied (or nothing to do).
    Successful,
    /// 400: the document is not a deployment.
    ConfigFormatError,
    /// 406: the agent is not running (or has not reported yet).
    Unknown,
    /// 412: the schema version is not one this agent reads.
    InvalidSchemaVersion,
    /// 417: the desired properties hold nothing but metadata.
    ConfigEmptyError,
    /// 500: applying failed.
    Failed,
}

impl StatusCode {
    /// The number reported.
    #[must_use]
    pub fn code(self) -> u16 {
        match self {
            Self::Successful => 200,
            Self::ConfigFormatError => 400,
            Self::Unknown => 406,
            Self::InvalidSchemaVersion => 412,
            Self::ConfigEmptyError => 417,
            Self::Failed => 500,
        }
    }
}

/// Why a desired document is not a deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {}", .code.code(), .description)]
pub struct DeploymentError {
    /// 400, 412 or 417.
    pub code: StatusCode,
    /// What is wrong, naming the property.
    pub description: String,
}

impl DeploymentError {
    fn format(property: &str, problem: impl fmt::Display) -> Self {
        Self {
            code: StatusCode::ConfigFormatError,
            description: format!("Agent configuration format is invalid: {property}: {problem}"),
        }
    }
}

/// A module's desired status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DesiredStatus {
    /// Keep it running.
    Running,
    /// Keep it stopped.
    Stopped,
}

impl DesiredStatus {
    /// The text in the twin.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
        }
    }
}

/// When a module that stopped is started again (spec 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    /// Never.
    Never,
    /// When it exited with a code other than 0.
    OnFailure,
    /// Like on-failure (there are no health probes).
    OnUnhealthy,
    /// Whenever it is not running.
    Always,
}

impl RestartPolicy {
    /// The text in the twin.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Never => "never",
            Self::OnFailure => "on-failure",
            Self::OnUnhealthy => "on-unhealthy",
            Self::Always => "always",
        }
    }
}

/// When the image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImagePullPolicy {
    /// When the module is created or updated.
    OnCreate,
    /// Never: the image must be there.
    Never,
}

impl ImagePullPolicy {
    /// The text in the twin.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnCreate => "on-create",
            Self::Never => "never",
        }
    }
}

/// A module's `settings`.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The image, with `:latest` added when it has no tag; empty for a process module
    /// without an image.
    pub image: String,
    /// The reassembled createOptions, if any.
    pub create_options: Option<Value>,
    /// For the process runtime: the executable (`settings.path`), an extension the reference
    /// agent ignores.
    pub path: Option<String>,
    /// For the process runtime: its arguments (`settings.args`).
    pub args: Vec<String>,
}

/// One module of the deployment (also `edgeHub`, and `edgeAgent` with its fixed policy).
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleSpec {
    /// The key in the modules map.
    pub name: String,
    /// Free text; a change forces a recreate.
    pub version: String,
    /// Always `docker`.
    pub kind: String,
    /// Desired status.
    pub status: DesiredStatus,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Image pull policy.
    pub image_pull_policy: ImagePullPolicy,
    /// Lower first; absent is `u32::MAX`.
    pub startup_order: u32,
    /// Image, createOptions, process path.
    pub settings: Settings,
    /// Environment from the deployment.
    pub env: BTreeMap<String, String>,
}

impl ModuleSpec {
    /// Equal in everything but the desired status (spec 3.2's "desired-status-changed").
    #[must_use]
    pub fn equal_but_status(&self, other: &Self) -> bool {
        let mut a = self.clone();
        a.status = other.status;
        a == *other
    }
}

/// Credentials of one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCredential {
    /// Registry host.
    pub address: String,
    /// User.
    pub username: String,
    /// Password.
    pub password: String,
}

/// `runtime.settings`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RuntimeSettings {
    /// `minDockerVersion`.
    pub min_docker_version: String,
    /// `loggingOptions`.
    pub logging_options: String,
    /// Credentials by name.
    pub registry_credentials: BTreeMap<String, RegistryCredential>,
}

/// A valid deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    /// The deployment id (`$version`, or the agent's counter for a file).
    pub version: u64,
    /// `schemaVersion` as written.
    pub schema_version: String,
    /// `runtime.settings`.
    pub runtime: RuntimeSettings,
    /// `systemModules.edgeAgent`.
    pub edge_agent: ModuleSpec,
    /// `systemModules.edgeHub`.
    pub edge_hub: ModuleSpec,
    /// User modules by name.
    pub modules: BTreeMap<String, ModuleSpec>,
}

impl Deployment {
    /// `edgeHub` and the user modules (the agent manages these; it is not one of them).
    pub fn managed_modules(&self) -> impl Iterator<Item = &ModuleSpec> {
        std::iter::once(&self.edge_hub).chain(self.modules.values())
    }

    /// The managed module called `name`.
    #[must_use]
    pub fn module(&self, name: &str) -> Option<&ModuleSpec> {
        if name == EDGE_HUB {
            Some(&self.edge_hub)
        } else {
            self.modules.get(name)
        }
    }
}

/// What the desired properties ask for.
#[derive(Debug, Clone, PartialEq)]
pub enum Desired {
    /// Nothing but metadata: no deployment was ever set (417 when judged).
    Empty,
    /// A deployment.
    Deployment(Box<Deployment>),
}

/// Finds `$edgeAgent`'s desired document in a manifest: `modulesContent.$edgeAgent."properties.desired"`,
/// `$edgeAgent."properties.desired"` at the top, or the document itself (it has `modules`,
/// `systemModules`, `schemaVersion` or `runtime`, or nothing but metadata).
///
/// # Errors
///
/// 400 when the document is not an object.
pub fn desired_document(manifest: &Value) -> Result<&Map<String, Value>, DeploymentError> {
    let Value::Object(top) = manifest else {
        return Err(DeploymentError::format(
            "manifest",
            format!("must be a JSON object, found {}", json_kind(manifest)),
        ));
    };
    let content = top
        .get("modulesContent")
        .or_else(|| top.get("content").and_then(|c| c.get("modulesContent")));
    if let Some(content) = content {
        let agent = content.get("$edgeAgent").ok_or_else(|| DeploymentError {
            code: StatusCode::ConfigEmptyError,
            description: "modulesContent has no $edgeAgent: the deployment is empty".into(),
        })?;
        return desired_of(agent, "modulesContent.$edgeAgent");
    }
    if let Some(agent) = top.get("$edgeAgent") {
        return desired_of(agent, "$edgeAgent");
    }
    Ok(top)
}

fn desired_of<'a>(agent: &'a Value, at: &str) -> Result<&'a Map<String, Value>, DeploymentError> {
    match agent.get("properties.desired") {
        Some(Value::Object(desired)) => Ok(desired),
        Some(other) => Err(DeploymentError::format(
            &format!("{at}.properties.desired"),
            format!("must be an object, found {}", json_kind(other)),
        )),
        None => match agent {
            Value::Object(map) if map.is_empty() => Err(DeploymentError {
                code: StatusCode::ConfigEmptyError,
                description: format!("{at} has no desired properties"),
            }),
            _ => Err(DeploymentError::format(
                &format!("{at}.properties.desired"),
                "missing",
            )),
        },
    }
}

/// Parses a manifest (or a bare desired document) as deployment number `version`.
///
/// # Errors
///
/// 400, 412 or 417 as in spec 2.
pub fn parse_manifest(manifest: &Value, version: u64) -> Result<Desired, DeploymentError> {
    parse_desired(desired_document(manifest)?, version)
}

/// Parses `$edgeAgent`'s desired properties. `$version` in the document, when present,
/// overrides `version`.
///
/// # Errors
///
/// 400, 412 or 417 as in spec 2.
pub fn parse_desired(
    desired: &Map<String, Value>,
    version: u64,
) -> Result<Desired, DeploymentError> {
    if desired.keys().all(|k| k == "$version" || k == "$metadata") {
        return Ok(Desired::Empty);
    }
    let version = desired
        .get("$version")
        .and_then(Value::as_u64)
        .unwrap_or(version);
    let schema_version = match desired.get("schemaVersion") {
        None | Some(Value::Null) => {
            return Err(DeploymentError::format("schemaVersion", "missing"));
        }
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(DeploymentError::format(
                "schemaVersion",
                format!(
                    "must be a string such as \"1.1\", found {}",
                    json_kind(other)
                ),
            ));
        }
    };
    check_schema_version(&schema_version)?;
    let runtime = parse_runtime(desired.get("runtime"))?;
    let system = object_at(desired.get("systemModules"), "systemModules")?;
    let agent_value = system
        .get(EDGE_AGENT)
        .ok_or_else(|| DeploymentError::format("systemModules.edgeAgent", "missing"))?;
    let hub_value = system
        .get(EDGE_HUB)
        .ok_or_else(|| DeploymentError::format("systemModules.edgeHub", "missing"))?;
    let edge_agent = parse_module(
        EDGE_AGENT,
        agent_value,
        "systemModules.edgeAgent",
        Role::Agent,
    )?;
    let edge_hub = parse_module(EDGE_HUB, hub_value, "systemModules.edgeHub", Role::Hub)?;
    let mut modules = BTreeMap::new();
    match desired.get("modules") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let at = format!("modules.{name}");
                check_module_name(name, &at)?;
                modules.insert(name.clone(), parse_module(name, value, &at, Role::User)?);
            }
        }
        Some(other) => {
            return Err(DeploymentError::format(
                "modules",
                format!("must be an object, found {}", json_kind(other)),
            ));
        }
    }
    Ok(Desired::Deployment(Box::new(Deployment {
        version,
        schema_version,
        runtime,
        edge_agent,
        edge_hub,
        modules,
    })))
}

/// 412 unless `text` is `major.minor[.build]` with major 1 and at most 1.1.
fn check_schema_version(text: &str) -> Result<(), DeploymentError> {
    let refuse = |why: &str| DeploymentError {
        code: StatusCode::InvalidSchemaVersion,
        description: format!("schemaVersion {text:?} {why}; this agent reads 1.0 and 1.1"),
    };
    let parts: Vec<&str> = text.trim().split('.').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(refuse("is not major.minor"));
    }
    let numbers: Option<Vec<u64>> = parts.iter().map(|p| p.parse::<u64>().ok()).collect();
    let Some(numbers) = numbers else {
        return Err(refuse("is not major.minor"));
    };
    if numbers[0] != 1 {
        return Err(refuse("has an unsupported major version"));
    }
    if numbers[1] > 1 {
        return Err(refuse("is newer than 1.1"));
    }
    Ok(())
}

fn check_module_name(name: &str, at: &str) -> Result<(), DeploymentError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('$')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-:.+%_#*?!(),=@'".contains(c));
    if !ok {
        return Err(DeploymentError::format(
            at,
            "a module name is 1-128 characters of A-Z a-z 0-9 - : . + % _ # * ? ! ( ) , = @ '",
        ));
    }
    if name == EDGE_AGENT || name == EDGE_HUB {
        return Err(DeploymentError::format(
            at,
            format!("{name} is a system module: it belongs in systemModules"),
        ));
    }
    Ok(())
}

fn object_at<'a>(
    value: Option<&'a Value>,
    at: &str,
) -> Result<&'a Map<String, Value>, DeploymentError> {
    match value {
        Some(Value::Object(map)) => Ok(map),
        None | Some(Value::Null) => Err(DeploymentError::format(at, "missing")),
        Some(other) => Err(DeploymentError::format(
            at,
            format!("must be an object, found {}", json_kind(other)),
        )),
    }
}

fn string_at(
    map: &Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<String>, DeploymentError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(DeploymentError::format(
            &format!("{at}.{key}"),
            format!("must be a string, found {}", json_kind(other)),
        )),
    }
}

fn parse_runtime(value: Option<&Value>) -> Result<RuntimeSettings, DeploymentError> {
    let runtime = object_at(value, "runtime")?;
    let kind = string_at(runtime, "type", "runtime")?;
    match kind.as_deref() {
        Some("docker") => {}
        Some(other) => {
            return Err(DeploymentError::format(
                "runtime.type",
                format!("{other:?} is not a runtime type; use \"docker\""),
            ));
        }
        None => return Err(DeploymentError::format("runtime.type", "missing")),
    }
    let settings = match runtime.get("settings") {
        None | Some(Value::Null) => return Ok(RuntimeSettings::default()),
        Some(_) => object_at(runtime.get("settings"), "runtime.settings")?,
    };
    let mut registry_credentials = BTreeMap::new();
    match settings.get("registryCredentials") {
        None | Some(Value::Null) => {}
        Some(Value::Object(creds)) => {
            for (name, value) in creds {
                let at = format!("runtime.settings.registryCredentials.{name}");
                let cred = object_at(Some(value), &at)?;
                let field = |key: &str| -> Result<String, DeploymentError> {
                    string_at(cred, key, &at)?
                        .ok_or_else(|| DeploymentError::format(&format!("{at}.{key}"), "missing"))
                };
                registry_credentials.insert(
                    name.clone(),
                    RegistryCredential {
                        address: field("address")?,
                        username: field("username")?,
                        password: field("password")?,
                    },
                );
            }
        }
        Some(other) => {
            return Err(DeploymentError::format(
                "runtime.settings.registryCredentials",
                format!("must be an object, found {}", json_kind(other)),
            ));
        }
    }
    Ok(RuntimeSettings {
        min_docker_version: string_at(settings, "minDockerVersion", "runtime.settings")?
            .unwrap_or_default(),
        logging_options: string_at(settings, "loggingOptions", "runtime.settings")?
            .unwrap_or_default(),
        registry_credentials,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Agent,
    Hub,
    User,
}

fn parse_module(
    name: &str,
    value: &Value,
    at: &str,
    role: Role,
) -> Result<ModuleSpec, DeploymentError> {
    let module = object_at(Some(value), at)?;
    match string_at(module, "type", at)?.as_deref() {
        Some("docker") => {}
        Some(other) => {
            return Err(DeploymentError::format(
                &format!("{at}.type"),
                format!("{other:?} is not a module type; use \"docker\""),
            ));
        }
        None => return Err(DeploymentError::format(&format!("{at}.type"), "missing")),
    }
    let status = match string_at(module, "status", at)?.as_deref() {
        Some("running") => DesiredStatus::Running,
        Some("stopped") => DesiredStatus::Stopped,
        Some(other) => {
            return Err(DeploymentError::format(
                &format!("{at}.status"),
                format!("{other:?} is not a status; use \"running\" or \"stopped\""),
            ));
        }
        None if role == Role::User => {
            return Err(DeploymentError::format(&format!("{at}.status"), "missing"));
        }
        None => DesiredStatus::Running,
    };
    let restart_policy = match string_at(module, "restartPolicy", at)?.as_deref() {
        Some("never") => RestartPolicy::Never,
        Some("on-failure") => RestartPolicy::OnFailure,
        Some("on-unhealthy") => RestartPolicy::OnUnhealthy,
        Some("always") => RestartPolicy::Always,
        Some(other) => {
            return Err(DeploymentError::format(
                &format!("{at}.restartPolicy"),
                format!(
                    "{other:?} is not a restart policy; use \"never\", \"on-failure\", \"on-unhealthy\" or \"always\""
                ),
            ));
        }
        None => RestartPolicy::OnUnhealthy,
    };
    let image_pull_policy = match string_at(module, "imagePullPolicy", at)?.as_deref() {
        Some("on-create") | None => ImagePullPolicy::OnCreate,
        Some("never") => ImagePullPolicy::Never,
        Some(other) => {
            return Err(DeploymentError::format(
                &format!("{at}.imagePullPolicy"),
                format!("{other:?} is not a pull policy; use \"on-create\" or \"never\""),
            ));
        }
    };
    let startup_order = match module.get("startupOrder") {
        None | Some(Value::Null) => u32::MAX,
        Some(Value::Number(n)) => {
            n.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    DeploymentError::format(
                        &format!("{at}.startupOrder"),
                        format!("{n} is not an unsigned 32-bit number"),
                    )
                })?
        }
        Some(other) => {
            return Err(DeploymentError::format(
                &format!("{at}.startupOrder"),
                format!("must be a number, found {}", json_kind(other)),
            ));
        }
    };
    let version = match module.get("version") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => {
            return Err(DeploymentError::format(
                &format!("{at}.version"),
                format!("must be a string, found {}", json_kind(other)),
            ));
        }
    };
    let settings = parse_settings(module.get("settings"), &format!("{at}.settings"))?;
    let env = parse_env(module.get("env"), &format!("{at}.env"))?;
    let (status, restart_policy, startup_order) = if role == Role::Agent {
        (DesiredStatus::Running, RestartPolicy::Always, 0)
    } else {
        (status, restart_policy, startup_order)
    };
    Ok(ModuleSpec {
        name: name.to_owned(),
        version,
        kind: "docker".into(),
        status,
        restart_policy,
        image_pull_policy,
        startup_order,
        settings,
        env,
    })
}

fn parse_settings(value: Option<&Value>, at: &str) -> Result<Settings, DeploymentError> {
    let settings = object_at(value, at)?;
    let path = string_at(settings, "path", at)?;
    let image = match string_at(settings, "image", at)? {
        Some(image) => normalise_image(&image)
            .map_err(|why| DeploymentError::format(&format!("{at}.image"), why))?,
        None if path.is_some() => String::new(),
        None => return Err(DeploymentError::format(&format!("{at}.image"), "missing")),
    };
    let args = match settings.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    DeploymentError::format(&format!("{at}.args"), "must be an array of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(DeploymentError::format(
                &format!("{at}.args"),
                "must be an array of strings",
            ));
        }
    };
    let create_options =
        create_options::reassemble(settings).map_err(|e| DeploymentError::format(at, e))?;
    Ok(Settings {
        image,
        create_options,
        path,
        args,
    })
}

fn parse_env(value: Option<&Value>, at: &str) -> Result<BTreeMap<String, String>, DeploymentError> {
    let mut env = BTreeMap::new();
    let map = match value {
        None | Some(Value::Null) => return Ok(env),
        Some(_) => object_at(value, at)?,
    };
    for (name, entry) in map {
        let value = match entry.get("value") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => {
                return Err(DeploymentError::format(
                    &format!("{at}.{name}"),
                    "must be an object {\"value\": \"...\"}",
                ));
            }
        };
        env.insert(name.clone(), value);
    }
    Ok(env)
}

/// Trims `image`, checks the loose `[registry/…]name[:tag][@digest]` pattern and appends
/// `:latest` when there is no tag.
///
/// # Errors
///
/// When the image is empty or has characters an image reference cannot have.
pub fn normalise_image(image: &str) -> Result<String, String> {
    let image = image.trim();
    if image.is_empty() {
        return Err("is empty".into());
    }
    let valid = image
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._/:@$".contains(c))
        && !image.starts_with(['/', ':', '@', '.', '-'])
        && !image.ends_with(['/', ':', '@']);
    if !valid {
        return Err(format!(
            "{image:?} is not an image name such as registry/name:tag"
        ));
    }
    if image.contains('@') {
        return Ok(image.to_owned());
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains(':') {
        Ok(image.to_owned())
    } else {
        Ok(format!("{image}:latest"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[allow(clippy::needless_pass_by_value)]
    pub(crate) fn manifest(modules: Value) -> Value {
        json!({
            "modulesContent": {
                "$edgeAgent": {
                    "properties.desired": {
                        "schemaVersion": "1.1",
                        "runtime": { "type": "docker", "settings": { "minDockerVersion": "v1.25" } },
                        "systemModules": {
                            "edgeAgent": { "type": "docker", "settings": { "image": "edgeagent:local" } },
                            "edgeHub": { "type": "docker", "status": "running", "restartPolicy": "always",
                                         "startupOrder": 0, "settings": { "image": "edgehub:local" } }
                        },
                        "modules": modules
                    }
                }
            }
        })
    }

    fn desired_mut(m: &mut Value) -> &mut Map<String, Value> {
        m["modulesContent"]["$edgeAgent"]["properties.desired"]
            .as_object_mut()
            .unwrap()
    }

    #[test]
    fn a_valid_manifest_parses_with_defaults() {
        let m = manifest(json!({ "filter": { "type": "docker", "status": "running",
            "settings": { "image": "filter" }, "env": { "A": { "value": "1" } } } }));
        let Desired::Deployment(d) = parse_manifest(&m, 3).unwrap() else {
            panic!()
        };
        assert_eq!(d.version, 3);
        let f = &d.modules["filter"];
        assert_eq!(f.settings.image, "filter:latest");
        assert_eq!(f.restart_policy, RestartPolicy::OnUnhealthy);
        assert_eq!(f.image_pull_policy, ImagePullPolicy::OnCreate);
        assert_eq!(f.startup_order, u32::MAX);
        assert_eq!(f.env["A"], "1");
        assert_eq!(d.edge_hub.startup_order, 0);
    }

    #[test]
    fn missing_schema_version_is_400_and_names_it() {
        let mut m = manifest(json!({}));
        desired_mut(&mut m).remove("schemaVersion");
        let e = parse_manifest(&m, 1).unwrap_err();
        assert_eq!(e.code, StatusCode::ConfigFormatError);
        assert!(e.description.contains("schemaVersion"), "{}", e.description);
    }

    #[test]
    fn schema_versions_1_2_2_0_and_bare_1_are_412() {
        for v in ["1.2", "2.0", "1", "", "x.y"] {
            let mut m = manifest(json!({}));
            desired_mut(&mut m).insert("schemaVersion".into(), json!(v));
            let e = parse_manifest(&m, 1).unwrap_err();
            assert_eq!(e.code, StatusCode::InvalidSchemaVersion, "{v}");
        }
        for v in ["1.0", "1.1", "1.0.3"] {
            let mut m = manifest(json!({}));
            desired_mut(&mut m).insert("schemaVersion".into(), json!(v));
            assert!(parse_manifest(&m, 1).is_ok(), "{v}");
        }
    }

    #[test]
    fn metadata_only_is_empty_and_an_empty_agent_is_417() {
        assert_eq!(
            parse_manifest(&json!({"$version": 4}), 1).unwrap(),
            Desired::Empty
        );
        let e = parse_manifest(&json!({"modulesContent": {"$edgeAgent": {}}}), 1).unwrap_err();
        assert_eq!(e.code, StatusCode::ConfigEmptyError);
        let e = parse_manifest(&json!({"modulesContent": {}}), 1).unwrap_err();
        assert_eq!(e.code, StatusCode::ConfigEmptyError);
    }

    #[test]
    fn bad_enums_types_and_images_are_400_naming_the_property() {
        let cases = [
            (
                json!({"m": {"type": "docker", "status": "paused", "settings": {"image": "a"}}}),
                "modules.m.status",
            ),
            (
                json!({"m": {"type": "rkt", "status": "running", "settings": {"image": "a"}}}),
                "modules.m.type",
            ),
            (
                json!({"m": {"type": "docker", "status": "running", "restartPolicy": "On-Failed", "settings": {"image": "a"}}}),
                "modules.m.restartPolicy",
            ),
            (
                json!({"m": {"type": "docker", "status": "running", "settings": {"image": "bad image"}}}),
                "modules.m.settings.image",
            ),
            (
                json!({"m": {"type": "docker", "status": "running", "image": "a", "settings": {}}}),
                "modules.m.settings.image",
            ),
            (
                json!({"m": {"type": "docker", "status": "running", "settings": {"image": "a"}, "env": {"A": "1"}}}),
                "modules.m.env.A",
            ),
            (
                json!({"m": {"type": "docker", "status": "running", "settings": {"image": "a", "createOptions": "{"}}}),
                "modules.m.settings",
            ),
            (
                json!({"m": {"type": "docker", "status": "running", "startupOrder": -1, "settings": {"image": "a"}}}),
                "modules.m.startupOrder",
            ),
            (
                json!({"m": {"type": "docker", "settings": {"image": "a"}}}),
                "modules.m.status",
            ),
        ];
        for (modules, property) in cases {
            let e = parse_manifest(&manifest(modules.clone()), 1).unwrap_err();
            assert_eq!(e.code, StatusCode::ConfigFormatError, "{modules}");
            assert!(
                e.description.contains(property),
                "{property} not in {}",
                e.description
            );
        }
    }

    #[test]
    fn a_bare_desired_document_is_accepted() {
        let m = manifest(json!({}));
        let desired = m["modulesContent"]["$edgeAgent"]["properties.desired"].clone();
        assert!(matches!(
            parse_manifest(&desired, 1).unwrap(),
            Desired::Deployment(_)
        ));
    }

    #[test]
    fn images_are_normalised() {
        assert_eq!(normalise_image(" foo ").unwrap(), "foo:latest");
        assert_eq!(normalise_image("foo:1").unwrap(), "foo:1");
        assert_eq!(
            normalise_image("host:5000/foo").unwrap(),
            "host:5000/foo:latest"
        );
        assert_eq!(normalise_image("a/b@sha256:00").unwrap(), "a/b@sha256:00");
        assert!(normalise_image("").is_err());
        assert!(normalise_image("a b").is_err());
    }

    #[test]
    fn status_alone_differs_is_recognised() {
        let m = manifest(
            json!({ "f": { "type": "docker", "status": "running", "settings": { "image": "f" } } }),
        );
        let Desired::Deployment(d) = parse_manifest(&m, 1).unwrap() else {
            panic!()
        };
        let mut other = d.modules["f"].clone();
        other.status = DesiredStatus::Stopped;
        assert!(d.modules["f"].equal_but_status(&other));
        other.restart_policy = RestartPolicy::Never;
        assert!(!d.modules["f"].equal_but_status(&other));
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            prop_oneof![
                Just("docker".to_owned()),
                Just("running".to_owned()),
                Just("1.1".to_owned()),
                Just("createOptions".to_owned()),
                "\\PC{0,12}"
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            let keys = prop_oneof![
                Just("modulesContent".to_owned()),
                Just("$edgeAgent".to_owned()),
                Just("properties.desired".to_owned()),
                Just("schemaVersion".to_owned()),
                Just("runtime".to_owned()),
                Just("type".to_owned()),
                Just("systemModules".to_owned()),
                Just("edgeAgent".to_owned()),
                Just("edgeHub".to_owned()),
                Just("modules".to_owned()),
                Just("settings".to_owned()),
                Just("image".to_owned()),
                Just("env".to_owned()),
                Just("value".to_owned()),
                Just("status".to_owned()),
                Just("createOptions01".to_owned()),
                Just("createOptions".to_owned()),
                Just("startupOrder".to_owned()),
                "[a-z]{1,6}"
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn no_input_makes_the_parser_panic(v in arb_json()) {
            let _ = parse_manifest(&v, 1);
        }

        #[test]
        fn a_valid_manifest_with_any_module_field_mutated_never_panics(v in arb_json(), field in "[a-zA-Z]{1,14}") {
            let mut m = manifest(json!({ "f": { "type": "docker", "status": "running", "settings": { "image": "f" } } }));
            m["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["f"][field] = v;
            let _ = parse_manifest(&m, 1);
        }
    }
}
