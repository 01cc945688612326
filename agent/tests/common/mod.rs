//! Helpers shared by the agent's black-box tests.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};

use agent::manifest::ModuleSpec;
use agent::reconcile::{ModuleEnvironment, Prepared};

/// The workspace's root folder.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The hub's binary, release build first, if one is built.
pub fn edgehub() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("edgehub"))
        .find(|p| p.is_file())
}

/// A module environment that only names the module (`IOTEDGE_MODULEID`).
pub struct ModuleIdEnv;

impl ModuleEnvironment for ModuleIdEnv {
    fn prepare(&self, spec: &ModuleSpec) -> Result<Prepared, String> {
        Ok(Prepared {
            env: vec![("IOTEDGE_MODULEID".into(), spec.name.clone())],
            workload_socket: None,
        })
    }
    fn forget(&self, _: &str) {}
}
