//! The environment the agent gives each module (spec 9): the `IOTEDGE_*` variables, its
//! identity (made through the hub's command line) and its own workload socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::task::JoinHandle;

use crate::identity::Identities;
use crate::manifest::{EDGE_HUB, ModuleSpec};
use crate::reconcile::{ModuleEnvironment, Prepared};
use crate::workload::{API_VERSION, Workload, serve};

/// The folder modules see their workload socket in, inside a container.
pub const CONTAINER_SOCKET_DIR: &str = "/var/run/iotedge";

/// The socket's file name.
pub const SOCKET_NAME: &str = "workload.sock";

/// Where modules run, which decides the paths they see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Containers: the socket's folder is mounted at [`CONTAINER_SOCKET_DIR`].
    Container,
    /// Processes on this host: the socket's host path.
    Host,
}

/// The agent's [`ModuleEnvironment`].
#[derive(Debug)]
pub struct AgentEnvironment {
    identities: Arc<Identities>,
    workload: Arc<Workload>,
    socket_dir: PathBuf,
    placement: Placement,
    log_level: String,
    servers: Mutex<BTreeMap<String, JoinHandle<()>>>,
}

impl AgentEnvironment {
    /// Workload sockets go in `socket_dir/<module>/workload.sock`.
    #[must_use]
    pub fn new(
        identities: Arc<Identities>,
        socket_dir: PathBuf,
        placement: Placement,
        log_level: String,
    ) -> Self {
        let workload = Arc::new(Workload::new(Arc::clone(&identities)));
        Self {
            identities,
            workload,
            socket_dir,
            placement,
            log_level,
            servers: Mutex::default(),
        }
    }

    fn servers(&self) -> MutexGuard<'_, BTreeMap<String, JoinHandle<()>>> {
        self.servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The folder of `module`'s workload socket on the host.
    #[must_use]
    pub fn socket_folder(&self, module: &str) -> PathBuf {
        self.socket_dir.join(module)
    }

    fn ensure_server(&self, module: &str, module_id: &str, folder: &Path) -> Result<(), String> {
        let mut servers = self.servers();
        if servers.get(module).is_some_and(|s| !s.is_finished()) {
            return Ok(());
        }
        let handle = serve(
            Arc::clone(&self.workload),
            module_id.to_owned(),
            &folder.join(SOCKET_NAME),
        )
        .map_err(|e| format!("workload socket {}: {e}", folder.display()))?;
        servers.insert(module.to_owned(), handle);
        Ok(())
    }
}

impl Drop for AgentEnvironment {
    fn drop(&mut self) {
        for (_, server) in std::mem::take(&mut *self.servers()) {
            server.abort();
        }
    }
}

impl ModuleEnvironment for AgentEnvironment {
    fn prepare(&self, spec: &ModuleSpec) -> Result<Prepared, String> {
        let hub = self.identities.hub();
        let is_hub = spec.name == EDGE_HUB;
        let module_id = if is_hub {
            "$edgeHub".to_owned()
        } else {
            spec.name.clone()
        };
        let generation_id = if is_hub {
            String::new()
        } else {
            self.identities
                .ensure(&spec.name)
                .map_err(|e| e.to_string())?
                .generation_id
        };
        let folder = self.socket_folder(&spec.name);
        self.ensure_server(&spec.name, &module_id, &folder)?;
        let (socket, mount) = match self.placement {
            Placement::Container => (
                format!("{CONTAINER_SOCKET_DIR}/{SOCKET_NAME}"),
                Some((folder.clone(), PathBuf::from(CONTAINER_SOCKET_DIR))),
            ),
            Placement::Host => (folder.join(SOCKET_NAME).display().to_string(), None),
        };
        let mut env = vec![
            ("IOTEDGE_WORKLOADURI".to_owned(), format!("unix://{socket}")),
            ("IOTEDGE_AUTHSCHEME".to_owned(), "sasToken".to_owned()),
            ("IOTEDGE_MODULEGENERATIONID".to_owned(), generation_id),
            (
                "IOTEDGE_IOTHUBHOSTNAME".to_owned(),
                hub.iothub_hostname.clone(),
            ),
            ("IOTEDGE_DEVICEID".to_owned(), hub.device_id.clone()),
            ("IOTEDGE_MODULEID".to_owned(), module_id),
            ("IOTEDGE_APIVERSION".to_owned(), API_VERSION.to_owned()),
        ];
        if is_hub {
            env.push((
                "EdgeDeviceHostName".to_owned(),
                hub.gateway_hostname.clone(),
            ));
        } else {
            env.push((
                "IOTEDGE_GATEWAYHOSTNAME".to_owned(),
                hub.gateway_hostname.clone(),
            ));
        }
        if !spec.env.contains_key("RuntimeLogLevel") {
            env.push(("RuntimeLogLevel".to_owned(), self.log_level.clone()));
        }
        Ok(Prepared {
            env,
            workload_socket: mount,
        })
    }

    fn forget(&self, name: &str) {
        if let Some(server) = self.servers().remove(name) {
            server.abort();
        }
        self.identities.forget(name);
        let _ = std::fs::remove_file(self.socket_folder(name).join(SOCKET_NAME));
    }
}
