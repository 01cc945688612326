//! The official Azure IoT Python SDK (`azure-iot-device`, unmodified), from a virtualenv made
//! on first use (`.venv`, from `tests/sdk/requirements.txt`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv's python, created and filled on first use.
pub fn python() -> PathBuf {
    let venv = repo().join(".venv");
    let python = venv.join("bin/python");
    let ready = |python: &Path| {
        Command::new(python)
            .args(["-c", "import azure.iot.device, paho.mqtt.client"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ready(&python) {
        let status = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs");
        assert!(status.success(), "python3 -m venv failed");
        let status = Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "-r"])
            .arg(repo().join("tests/sdk/requirements.txt"))
            .status()
            .expect("pip runs");
        assert!(status.success(), "pip install of the Azure IoT SDK failed");
    }
    python
}
