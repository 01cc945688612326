//! The runtimes modules run on, behind one trait: [`fake`] (tests), [`process`] (native
//! processes) and [`docker`] (the Docker engine).

use std::future::Future;
use std::path::PathBuf;

use time::OffsetDateTime;

use crate::manifest::{ModuleSpec, RegistryCredential};

pub mod docker;
pub mod fake;
pub mod process;

/// A module's state as its runtime sees it (spec 5.1), before the restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RawStatus {
    /// Running.
    Running,
    /// Created, paused, or exited with code 0.
    Stopped,
    /// Exited with a code other than 0.
    Failed,
    /// Dead.
    Dead,
    /// Anything else.
    Unknown,
}

/// What a runtime knows of one module it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleState {
    /// The module's name (the container's name).
    pub name: String,
    /// The runtime's id of it (container id, or process id).
    pub id: String,
    /// Its state.
    pub raw: RawStatus,
    /// The runtime's words for the state (`running`, `exited`, …).
    pub description: String,
    /// The last exit code (0 when it never exited).
    pub exit_code: i64,
    /// When it last started.
    pub started_at: Option<OffsetDateTime>,
    /// When it last exited.
    pub exited_at: Option<OffsetDateTime>,
    /// The image it was created from (as the deployment named it).
    pub image: String,
    /// The image's id, when the runtime knows it.
    pub image_hash: String,
}

/// Everything a runtime needs to create a module.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateRequest {
    /// The module as deployed.
    pub spec: ModuleSpec,
    /// Its environment: the deployment's, then the agent's (identity, workload API).
    pub env: Vec<(String, String)>,
    /// Credentials for its image's registry, if the deployment has some.
    pub credentials: Option<RegistryCredential>,
    /// The folder of this module's workload socket on the host, and where the module sees it
    /// (mounted there by container runtimes).
    pub workload_socket: Option<(PathBuf, PathBuf)>,
}

/// A runtime's failure, with a message that names the module and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuntimeError(pub String);

/// Runs modules. Every method is for one module, named as in the deployment; the runtime
/// keeps nothing the agent does not give it again.
pub trait Runtime: Send + Sync {
    /// The runtime's name (`docker`, `process`).
    fn kind(&self) -> &'static str;
    /// Every module this runtime runs for the agent.
    fn list(&self) -> impl Future<Output = Result<Vec<ModuleState>, RuntimeError>> + Send;
    /// Pulls `image` (with `credentials`).
    fn pull(
        &self,
        image: &str,
        credentials: Option<&RegistryCredential>,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Creates a module (not started).
    fn create(
        &self,
        request: &CreateRequest,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Starts a module.
    fn start(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Stops a module (gracefully, then by force).
    fn stop(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Removes a stopped module.
    fn remove(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}

/// The registry host of `image`: its first path segment when that has a `.` or `:` or is
/// `localhost`, otherwise Docker Hub (spec 8).
#[must_use]
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// The first credentials whose address is the registry of `image` (case-insensitive).
#[must_use]
pub fn credentials_for<'a>(
    image: &str,
    credentials: impl IntoIterator<Item = &'a RegistryCredential>,
) -> Option<&'a RegistryCredential> {
    let registry = registry_of(image);
    credentials
        .into_iter()
        .find(|c| c.address.eq_ignore_ascii_case(registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_picked_by_registry_host() {
        let creds = [
            RegistryCredential {
                address: "MyReg.azurecr.io".into(),
                username: "u".into(),
                password: "p".into(),
            },
            RegistryCredential {
                address: "docker.io".into(),
                username: "d".into(),
                password: "q".into(),
            },
        ];
        assert_eq!(
            credentials_for("myreg.azurecr.io/a:1", &creds)
                .unwrap()
                .username,
            "u"
        );
        assert_eq!(
            credentials_for("library/a:1", &creds).unwrap().username,
            "d"
        );
        assert_eq!(credentials_for("a:1", &creds).unwrap().username, "d");
        assert!(credentials_for("other.io/a:1", &creds).is_none());
        assert_eq!(registry_of("localhost:5000/a"), "localhost:5000");
    }
}
