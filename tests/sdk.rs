//! Compatibility with the official Azure IoT Python SDK (`azure-iot-device`, unmodified), run
//! from a virtualenv this test creates (`.venv`, from `tests/sdk/requirements.txt`) against
//! `edgehub run` on port 8883 of `localhost`, over TLS with the hub's generated CA.
//!
//! The SDK has no port option, so the scenarios run one after another in one test.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::sdk::{python, repo};

const GATEWAY_PORT: u16 = 8883;

/// A hub process, stopped when dropped (also when the test fails).
struct HubProcess {
    child: Child,
}

impl HubProcess {
    fn start(config: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_edgehub"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "edgehub=info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("edgehub starts");
        let hub = Self { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", GATEWAY_PORT)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the hub did not listen on {GATEWAY_PORT} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        hub
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        common::terminate(&mut self.child)
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn edgehub(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_edgehub"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "edgehub {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn the_python_sdk_talks_to_the_hub() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let manifest = common::manifest(
        &serde_json::json!({"senderToReceiver": common::SENDER_TO_RECEIVER}),
        &["sender", "receiver"],
    );
    std::fs::write(dir.path().join("deployment.json"), manifest.to_string()).unwrap();
    let config = dir.path().join("edgehub.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"edge-device\"\niothub_hostname = \"test-hub.azure-devices.net\"\n\
             gateway_hostname = \"localhost\"\ndata_dir = \"data\"\nmanifest = \"deployment.json\"\n\
             [listen]\nmqtts = \"127.0.0.1:{GATEWAY_PORT}\"\nhttps = \"127.0.0.1:443\"\n"
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let cs_a = edgehub(&["identity", "add", "--config", config_arg, "sender"]);
    let cs_b = edgehub(&["identity", "add", "--config", config_arg, "receiver"]);
    assert!(cs_a.starts_with(
        "HostName=test-hub.azure-devices.net;DeviceId=edge-device;ModuleId=sender;SharedAccessKey="
    ));
    assert!(cs_a.ends_with(";GatewayHostName=localhost"));

    let hub = HubProcess::start(&config);
    let ca = dir.path().join("data/certs/ca.pem");
    for scenario in [
        "module_to_module",
        "twin",
        "desired",
        "offline_desired",
        "methods",
        "wrong_key",
        "expired_token",
    ] {
        let out = Command::new(&python)
            .arg(repo().join("tests/sdk/scenarios.py"))
            .arg(scenario)
            .env("CS_A", &cs_a)
            .env("CS_B", &cs_b)
            .env("CA_FILE", &ca)
            .env("EDGEHUB_BIN", env!("CARGO_BIN_EXE_edgehub"))
            .env("EDGEHUB_CONFIG", &config)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scenario {scenario} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = hub.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM ends the hub with exit 0");
}
