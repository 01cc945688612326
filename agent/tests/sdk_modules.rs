//! The whole device on the process runtime: `edgeagent run` starts the real hub (`edgehub`)
//! and two modules built with the Azure IoT Python SDK, which connect with
//! `create_from_edge_environment` (keys only the agent holds, through the workload socket)
//! and exchange messages through a route.
//!
//! Opt-in (it binds port 8883, where the SDKs always connect): `EDGEAGENT_E2E=1`, with the
//! `edgehub` binary built (`target/{release,debug}/edgehub`) and a Python with
//! `azure-iot-device` in `.venv` at the workspace root. Otherwise it prints why and passes
//! without testing.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{edgehub, workspace};

const AGENT: &str = env!("CARGO_BIN_EXE_edgeagent");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sdk_modules_exchange_messages_through_the_hub_under_the_agent() {
    if std::env::var_os("EDGEAGENT_E2E").is_none() {
        println!("skipped: set EDGEAGENT_E2E=1 to run (binds port 8883)");
        return;
    }
    let Some(edgehub) = edgehub() else {
        println!("skipped: no edgehub binary (cargo build -p edgehub)");
        return;
    };
    let python = workspace().join(".venv/bin/python");
    let sdk = Command::new(&python)
        .args(["-c", "import azure.iot.device"])
        .status();
    if !sdk.is_ok_and(|s| s.success()) {
        println!("skipped: {} has no azure-iot-device", python.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(root.join("edgehub.toml"), "device_id = \"edge-device\"\niothub_hostname = \"myhub.azure-devices.net\"\ngateway_hostname = \"localhost\"\ndata_dir = \"data\"\nmanifest = \"deployment.json\"\n[listen]\nmqtts = \"127.0.0.1:8883\"\nhttps = \"127.0.0.1:0\"\n").unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk");
    let received = root.join("received.txt");
    let py = |script: &str, order: u32, args: Vec<String>| {
        let mut all = vec![scripts.join(script).display().to_string()];
        all.extend(args);
        json!({ "type": "docker", "status": "running", "restartPolicy": "always", "startupOrder": order,
                "settings": { "image": format!("{}:1", script.trim_end_matches(".py")), "path": python.display().to_string(), "args": all } })
    };
    let deployment = json!({ "modulesContent": {
        "$edgeAgent": { "properties.desired": {
            "schemaVersion": "1.1", "runtime": { "type": "docker", "settings": {} },
            "systemModules": {
                "edgeAgent": { "type": "docker", "settings": { "image": "edgeagent:local" } },
                "edgeHub": { "type": "docker", "status": "running", "restartPolicy": "always", "startupOrder": 0,
                             "settings": { "image": "edgehub:local" } } },
            "modules": {
                "receiver": py("receiver.py", 1, vec![received.display().to_string()]),
                "sender": py("sender.py", 2, vec![]) } } },
        "$edgeHub": { "properties.desired": { "schemaVersion": "1.1",
            "routes": { "toReceiver": "FROM /messages/modules/sender/outputs/out1 INTO BrokeredEndpoint(\"/modules/receiver/inputs/in1\")" },
            "storeAndForwardConfiguration": { "timeToLiveSecs": 600 } } } } });
    std::fs::write(
        root.join("deployment.json"),
        serde_json::to_vec_pretty(&deployment).unwrap(),
    )
    .unwrap();
    let agent = Running(
        Command::new(AGENT)
            .current_dir(root)
            .args([
                "run",
                "--runtime",
                "process",
                "--period",
                "1",
                "--manifest",
                "deployment.json",
                "--hub-config",
                "edgehub.toml",
                "--edgehub",
            ])
            .arg(&edgehub)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&received).unwrap_or_default();
        if text
            .lines()
            .filter(|l| l.starts_with("in1 {\"n\": "))
            .count()
            >= 3
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let log = |name: &str| std::fs::read_to_string(root.join(name)).unwrap_or_default();
            panic!(
                "no messages received.\nagent:\n{}\nhub:\n{}\nsender:\n{}\nreceiver:\n{}",
                log("agent.log"),
                log("agent-data/logs/edgeHub.log"),
                log("agent-data/logs/sender.log"),
                log("agent-data/logs/receiver.log")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = Command::new(AGENT)
        .current_dir(root)
        .args(["status"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    println!("{table}");
    assert!(
        table.contains("sender") && table.contains("receiver"),
        "{table}"
    );
    // The same reported properties are in the hub's twin of $edgeAgent.
    let start = Instant::now();
    loop {
        let output = Command::new(&edgehub)
            .current_dir(root)
            .args(["twin", "get", "--config", "edgehub.toml", "$edgeAgent"])
            .output()
            .unwrap();
        let twin: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|_| String::from_utf8_lossy(&output.stderr).into());
        let modules = &twin["reported"]["modules"];
        if modules["sender"]["runtimeStatus"] == "running"
            && modules["receiver"]["runtimeStatus"] == "running"
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the hub's $edgeAgent twin reports the modules: {twin}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(agent);
}
