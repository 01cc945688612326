//! The `docker` runtime: one container per module on the local engine (bollard), named by
//! the module id as the reference names them (`edgeHub` for the hub), labelled with the
//! agent's owner label so that the agent lists only its own containers.
//!
//! Create options are the module's `createOptions` with, added by the agent (spec 7): the
//! image, the owner and original-image labels, the environment (the agent's variables, then
//! `createOptions.Env` wins last), a bind mount of the module's workload socket folder, and
//! the edge network when no `NetworkingConfig.EndpointsConfig` is given (for `edgeHub` with
//! the device's host name as an alias). `Privileged` and
//! `CapAdd` are dropped unless elevated modules are allowed.
//!
//! Pulls use the deployment's registry credentials. When a pull fails but the image is
//! present locally (images built on the device, such as `edgehub:local`, have no registry),
//! the local image is used and a warning logged.

use std::collections::HashMap;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::models::{ContainerCreateBody, ContainerStateStatusEnum, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectContainerOptions, ListContainersOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt as _;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{CreateRequest, ModuleState, RawStatus, Runtime, RuntimeError};
use crate::manifest::RegistryCredential;

/// The label marking the agent's containers.
pub const OWNER_LABEL: &str = "net.azure-devices.edge.owner";
/// Our value of it.
pub const OWNER: &str = "edgehub.agent";
/// The label with the image as the deployment named it.
pub const IMAGE_LABEL: &str = "net.azure-devices.edge.original-image";

/// The Docker runtime.
#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    containers: ContainerSettings,
}

/// What the agent adds to every container it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSettings {
    /// The edge network.
    pub network: String,
    /// The owner label's value.
    pub owner: String,
    /// Keep `Privileged` and `CapAdd`.
    pub allow_elevated: bool,
}

fn failed(what: impl std::fmt::Display) -> impl FnOnce(bollard::errors::Error) -> RuntimeError {
    move |e| RuntimeError(format!("{what}: {e}"))
}

impl DockerRuntime {
    /// Connects to the local engine (`DOCKER_HOST` or `/var/run/docker.sock`) and makes sure
    /// the network `network` exists.
    ///
    /// # Errors
    ///
    /// When no engine answers, or the network cannot be made.
    pub async fn connect(network: &str) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(failed("connecting to the Docker engine"))?;
        docker
            .ping()
            .await
            .map_err(failed("connecting to the Docker engine"))?;
        let containers = ContainerSettings {
            network: network.to_owned(),
            owner: OWNER.to_owned(),
            allow_elevated: false,
        };
        let runtime = Self { docker, containers };
        runtime.ensure_network().await?;
        Ok(runtime)
    }

    /// Uses `owner` as the owner label's value (tests keep their containers apart with it).
    #[must_use]
    pub fn with_owner(mut self, owner: &str) -> Self {
        owner.clone_into(&mut self.containers.owner);
        self
    }

    /// Keeps `Privileged` and `CapAdd` of createOptions (dropped by default).
    #[must_use]
    pub fn allow_elevated(mut self, allow: bool) -> Self {
        self.containers.allow_elevated = allow;
        self
    }

    /// The engine client.
    #[must_use]
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// What the agent adds to the containers.
    #[must_use]
    pub fn containers(&self) -> &ContainerSettings {
        &self.containers
    }

    async fn ensure_network(&self) -> Result<(), RuntimeError> {
        let network = &self.containers.network;
        if self.docker.inspect_network(network, None).await.is_ok() {
            return Ok(());
        }
        let request = NetworkCreateRequest {
            name: network.clone(),
            driver: Some("bridge".into()),
            ..NetworkCreateRequest::default()
        };
        self.docker
            .create_network(request)
            .await
            .map_err(failed(format!("creating the network {network}")))?;
        Ok(())
    }
}

impl ContainerSettings {
    /// The Docker create body of `request` (see the module documentation).
    ///
    /// # Errors
    ///
    /// When the createOptions do not fit Docker's create body.
    pub fn create_body(&self, request: &CreateRequest) -> Result<Value, RuntimeError> {
        let spec = &request.spec;
        let mut body = match &spec.settings.create_options {
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        };
        body.insert("Image".into(), json!(spec.settings.image));
        let mut env: Vec<(String, String)> = request.env.clone();
        if let Some(Value::Array(items)) = body.get("Env") {
            for item in items.iter().filter_map(Value::as_str) {
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                env.retain(|(name, _)| name != k);
                env.push((k.to_owned(), v.to_owned()));
            }
        }
        body.insert(
            "Env".into(),
            json!(
                env.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
            ),
        );
        with_object(&mut body, "Labels", |labels| {
            labels.insert(OWNER_LABEL.into(), json!(self.owner));
            labels.insert(IMAGE_LABEL.into(), json!(spec.settings.image));
        });
        with_object(&mut body, "HostConfig", |host| {
            if let Some((host_dir, container_dir)) = &request.workload_socket {
                let bind = format!("{}:{}", host_dir.display(), container_dir.display());
                match host.get_mut("Binds") {
                    Some(Value::Array(binds)) => binds.push(json!(bind)),
                    _ => {
                        host.insert("Binds".into(), json!([bind]));
                    }
                }
            }
            if !self.allow_elevated {
                host.remove("Privileged");
                host.remove("CapAdd");
            }
        });
        let has_endpoints = body
            .get("NetworkingConfig")
            .and_then(|n| n.get("EndpointsConfig"))
            .is_some_and(|e| e.as_object().is_some_and(|o| !o.is_empty()));
        if !has_endpoints {
            with_object(&mut body, "HostConfig", |host| {
                host.entry("NetworkMode")
                    .or_insert_with(|| json!(self.network));
            });
            // The hub is also reachable by the device's host name on the edge network.
            let alias = (spec.name == crate::manifest::EDGE_HUB)
                .then(|| request.env.iter().find(|(k, _)| k == "EdgeDeviceHostName"))
                .flatten()
                .map(|(_, host)| host.clone())
                .filter(|host| !host.is_empty() && host != &spec.name);
            let endpoint = match alias {
                Some(alias) => json!({ "Aliases": [alias] }),
                None => json!({}),
            };
            body.insert(
                "NetworkingConfig".into(),
                json!({ "EndpointsConfig": { self.network.clone(): endpoint } }),
            );
        }
        Ok(Value::Object(body))
    }
}

impl DockerRuntime {
    async fn state_of(&self, name: &str) -> Result<ModuleState, RuntimeError> {
        let inspect = self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(failed(format!("inspecting {name}")))?;
        let state = inspect.state.unwrap_or_default();
        let exit_code = state.exit_code.unwrap_or(0);
        let raw = match state.status {
            Some(ContainerStateStatusEnum::RUNNING) => RawStatus::Running,
            Some(
                ContainerStateStatusEnum::CREATED
                | ContainerStateStatusEnum::PAUSED
                | ContainerStateStatusEnum::RESTARTING,
            ) => RawStatus::Stopped,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::REMOVING) => {
                if exit_code == 0 {
                    RawStatus::Stopped
                } else {
                    RawStatus::Failed
                }
            }
            Some(ContainerStateStatusEnum::DEAD) => RawStatus::Dead,
            _ => RawStatus::Unknown,
        };
        let labels = inspect.config.and_then(|c| c.labels).unwrap_or_default();
        Ok(ModuleState {
            name: name.to_owned(),
            id: inspect.id.unwrap_or_default(),
            raw,
            description: state.status.map(|s| s.to_string()).unwrap_or_default(),
            exit_code,
            started_at: docker_time(state.started_at.as_deref()),
            exited_at: docker_time(state.finished_at.as_deref()),
            image: labels.get(IMAGE_LABEL).cloned().unwrap_or_default(),
            image_hash: inspect.image.unwrap_or_default(),
        })
    }
}

/// Edits the object at `key` of `map` (made empty when absent or not an object).
fn with_object(
    map: &mut Map<String, Value>,
    key: &str,
    edit: impl FnOnce(&mut Map<String, Value>),
) {
    let mut inner = match map.remove(key) {
        Some(Value::Object(inner)) => inner,
        _ => Map::new(),
    };
    edit(&mut inner);
    map.insert(key.to_owned(), Value::Object(inner));
}

/// Docker's times; its zero time (`0001-01-01T00:00:00Z`) is "never".
fn docker_time(text: Option<&str>) -> Option<OffsetDateTime> {
    let t = OffsetDateTime::parse(text?, &Rfc3339).ok()?;
    (t.year() > 1).then_some(t)
}

impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn list(&self) -> Result<Vec<ModuleState>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("{OWNER_LABEL}={}", self.containers.owner)],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..ListContainersOptions::default()
        };
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(failed("listing containers"))?;
        let mut states = Vec::new();
        for container in containers {
            let Some(name) = container.names.and_then(|n| n.into_iter().next()) else {
                continue;
            };
            match self.state_of(name.trim_start_matches('/')).await {
                Ok(state) => states.push(state),
                // Removed between the list and the inspect.
                Err(e) => tracing::debug!(error = %e, "container gone while listing"),
            }
        }
        Ok(states)
    }

    async fn pull(
        &self,
        image: &str,
        credentials: Option<&RegistryCredential>,
    ) -> Result<(), RuntimeError> {
        let options = CreateImageOptions {
            from_image: Some(image.to_owned()),
            ..CreateImageOptions::default()
        };
        let credentials = credentials.map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            serveraddress: Some(c.address.clone()),
            ..DockerCredentials::default()
        });
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        let mut failure = None;
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                failure = Some(e);
                break;
            }
        }
        match failure {
            None => Ok(()),
            Some(e) => {
                if self.docker.inspect_image(image).await.is_ok() {
                    tracing::warn!(%image, error = %e, "pull failed; using the image present locally");
                    Ok(())
                } else {
                    Err(RuntimeError(format!("pulling {image}: {e}")))
                }
            }
        }
    }

    async fn create(&self, request: &CreateRequest) -> Result<(), RuntimeError> {
        let name = &request.spec.name;
        let body = self.containers.create_body(request)?;
        let typed: ContainerCreateBody = serde_json::from_value(body.clone()).map_err(|e| {
            RuntimeError(format!(
                "createOptions of {name} do not fit Docker's create body: {e}"
            ))
        })?;
        if let Ok(Value::Object(back)) = serde_json::to_value(&typed) {
            let lost: Vec<&String> = body
                .as_object()
                .map(|b| b.keys().filter(|k| !back.contains_key(*k)).collect())
                .unwrap_or_default();
            if !lost.is_empty() {
                tracing::warn!(module = %name, fields = ?lost, "createOptions fields this Docker client does not know are not sent");
            }
        }
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..CreateContainerOptions::default()
        };
        self.docker
            .create_container(Some(options), typed)
            .await
            .map_err(failed(format!("creating {name}")))?;
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        self.docker
            .start_container(name, None)
            .await
            .map_err(failed(format!("starting {name}")))
    }

    async fn stop(&self, name: &str) -> Result<(), RuntimeError> {
        let options = StopContainerOptions {
            t: Some(10),
            ..StopContainerOptions::default()
        };
        match self.docker.stop_container(name, Some(options)).await {
            Ok(())
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(RuntimeError(format!("stopping {name}: {e}"))),
        }
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            ..RemoveContainerOptions::default()
        };
        self.docker
            .remove_container(name, Some(options))
            .await
            .map_err(failed(format!("removing {name}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{DesiredStatus, ImagePullPolicy, ModuleSpec, RestartPolicy, Settings};

    fn runtime() -> ContainerSettings {
        ContainerSettings {
            network: "azure-iot-edge".into(),
            owner: OWNER.into(),
            allow_elevated: false,
        }
    }

    fn request(options: Option<Value>) -> CreateRequest {
        CreateRequest {
            spec: ModuleSpec {
                name: "filter".into(),
                version: String::new(),
                kind: "docker".into(),
                status: DesiredStatus::Running,
                restart_policy: RestartPolicy::Always,
                image_pull_policy: ImagePullPolicy::OnCreate,
                startup_order: 1,
                settings: Settings {
                    image: "filter:1".into(),
                    create_options: options,
                    path: None,
                    args: Vec::new(),
                },
                env: Default::default(),
            },
            env: vec![("A".into(), "agent".into()), ("B".into(), "agent".into())],
            credentials: None,
            workload_socket: Some(("/agent/workload/filter".into(), "/var/run/iotedge".into())),
        }
    }

    #[test]
    fn the_create_body_adds_labels_env_mount_and_network_and_keeps_the_rest() {
        let options = json!({ "Env": ["B=options"], "HostConfig": { "Binds": ["/data:/data"], "Privileged": true,
                                 "FutureKnob": 1 }, "Labels": { "mine": "x" } });
        let body = runtime().create_body(&request(Some(options))).unwrap();
        assert_eq!(body["Image"], json!("filter:1"));
        assert_eq!(body["Env"], json!(["A=agent", "B=options"]));
        assert_eq!(
            body["Labels"],
            json!({ "mine": "x", OWNER_LABEL: OWNER, IMAGE_LABEL: "filter:1" })
        );
        assert_eq!(
            body["HostConfig"]["Binds"],
            json!(["/data:/data", "/agent/workload/filter:/var/run/iotedge"])
        );
        assert_eq!(body["HostConfig"]["FutureKnob"], json!(1));
        assert!(body["HostConfig"].get("Privileged").is_none());
        assert_eq!(body["HostConfig"]["NetworkMode"], json!("azure-iot-edge"));
        assert_eq!(
            body["NetworkingConfig"],
            json!({ "EndpointsConfig": { "azure-iot-edge": {} } })
        );
    }

    #[test]
    fn the_hub_gets_the_device_host_name_as_a_network_alias() {
        let mut hub = request(None);
        hub.spec.name = "edgeHub".into();
        hub.env
            .push(("EdgeDeviceHostName".into(), "gateway.local".into()));
        let body = runtime().create_body(&hub).unwrap();
        assert_eq!(
            body["NetworkingConfig"],
            json!({ "EndpointsConfig": { "azure-iot-edge": { "Aliases": ["gateway.local"] } } })
        );
    }

    #[test]
    fn given_endpoints_are_left_alone_and_docker_zero_time_is_never() {
        let options = json!({ "NetworkingConfig": { "EndpointsConfig": { "mine": {} } } });
        let body = runtime().create_body(&request(Some(options))).unwrap();
        assert_eq!(
            body["NetworkingConfig"],
            json!({ "EndpointsConfig": { "mine": {} } })
        );
        assert!(body["HostConfig"].get("NetworkMode").is_none());
        assert_eq!(docker_time(Some("0001-01-01T00:00:00Z")), None);
        assert!(docker_time(Some("2026-12-07T01:02:03.123456789Z")).is_some());
    }
}
