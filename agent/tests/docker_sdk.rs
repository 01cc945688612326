//! The whole device on Docker: `edgeagent run` starts the hub from the image `edgehub:local`
//! (built by `docker/build-images.sh`) as the `edgeHub` container, configured by the
//! environment and the workload API as under the legacy runtime, and two Python SDK modules
//! (an image this test builds with `docker/build-sdk-image.sh`) that connect with
//! `create_from_edge_environment` through their workload sockets and exchange messages
//! through a route; SIGTERM stops the containers.
//!
//! Opt-in: `EDGEAGENT_E2E=1`, with a reachable engine, the image `edgehub:local`, the
//! `edgehub` binary and `.venv` with azure-iot-device. Otherwise it prints why and passes
//! without testing. It removes every container, network and image it made.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{edgehub, workspace};

const AGENT: &str = env!("CARGO_BIN_EXE_edgeagent");

fn docker(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Cleanup {
    agent: Option<Child>,
    network: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        for name in ["edgeHub", "sender", "receiver"] {
            let label = Command::new("docker")
                .args([
                    "inspect",
                    "--format",
                    "{{index .Config.Labels \"net.azure-devices.edge.owner\"}}",
                    name,
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default();
            if label == agent::runtime::docker::OWNER {
                docker(&["rm", "-f", name]);
            }
        }
        docker(&["network", "rm", &self.network]);
        docker(&["rmi", "-f", &self.image]);
    }
}

#[test]
fn sdk_containers_exchange_messages_through_the_hub_container() {
    if std::env::var_os("EDGEAGENT_E2E").is_none() {
        println!("skipped: set EDGEAGENT_E2E=1 to run");
        return;
    }
    if !docker(&["version"]) {
        println!("skipped: no Docker engine reachable");
        return;
    }
    if !docker(&["image", "inspect", "edgehub:local"]) {
        println!("skipped: no image edgehub:local (docker/build-images.sh)");
        return;
    }
    let Some(edgehub) = edgehub() else {
        println!("skipped: no edgehub binary (cargo build -p edgehub)");
        return;
    };
    for name in ["edgeHub", "sender", "receiver"] {
        if docker(&["inspect", name]) {
            println!("skipped: a container named {name} exists already");
            return;
        }
    }
    let suffix = std::process::id();
    let mut cleanup = Cleanup {
        agent: None,
        network: format!("edgeagent-e2e-{suffix}"),
        image: format!("edgeagent-sdk:e2e-{suffix}"),
    };
    let built = Command::new(workspace().join("docker/build-sdk-image.sh"))
        .arg(&cleanup.image)
        .status()
        .unwrap();
    assert!(built.success(), "building the SDK image");

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("out")).unwrap();
    std::fs::write(root.join("edgehub.toml"), "device_id = \"edge-device\"\niothub_hostname = \"myhub.azure-devices.net\"\ngateway_hostname = \"edgeHub\"\ndata_dir = \"data\"\nmanifest = \"deployment.json\"\n[listen]\nmqtts = \"0.0.0.0:8883\"\nhttps = \"127.0.0.1:0\"\n").unwrap();
    let module = |cmd: &[&str], order: u32, binds: &[String]| {
        let options = json!({ "Cmd": cmd, "HostConfig": { "Binds": binds } });
        json!({ "type": "docker", "status": "running", "restartPolicy": "always", "startupOrder": order,
                "imagePullPolicy": "never",
                "settings": { "image": cleanup.image, "createOptions": options.to_string() } })
    };
    // The hub takes its identity, server certificate and trust bundle from the environment
    // and the workload API (no --config); its data folder and manifest are the host's.
    let hub_options = json!({ "Cmd": ["run"], "HostConfig": { "Binds": [format!("{}:/etc/edgehub", root.display())] } });
    let hub_env = json!({ "EDGEHUB_DATA_DIR": { "value": "/etc/edgehub/data" },
                          "EDGEHUB_MANIFEST": { "value": "/etc/edgehub/deployment.json" } });
    let deployment = json!({ "modulesContent": {
        "$edgeAgent": { "properties.desired": {
            "schemaVersion": "1.1", "runtime": { "type": "docker", "settings": {} },
            "systemModules": {
                "edgeAgent": { "type": "docker", "settings": { "image": "edgeagent:local" } },
                "edgeHub": { "type": "docker", "status": "running", "restartPolicy": "always", "startupOrder": 0,
                             "imagePullPolicy": "never", "env": hub_env,
                             "settings": { "image": "edgehub:local", "createOptions": hub_options.to_string() } } },
            "modules": {
                "receiver": module(&["python3", "/sdk/receiver.py", "/out/received.txt"], 1, &[format!("{}:/out", root.join("out").display())]),
                "sender": module(&["python3", "/sdk/sender.py"], 2, &[]) } } },
        "$edgeHub": { "properties.desired": { "schemaVersion": "1.1",
            "routes": { "toReceiver": "FROM /messages/modules/sender/outputs/out1 INTO BrokeredEndpoint(\"/modules/receiver/inputs/in1\")" },
            "storeAndForwardConfiguration": { "timeToLiveSecs": 600 } } } } });
    std::fs::write(
        root.join("deployment.json"),
        serde_json::to_vec_pretty(&deployment).unwrap(),
    )
    .unwrap();
    cleanup.agent = Some(
        Command::new(AGENT)
            .current_dir(root)
            .args([
                "run",
                "--runtime",
                "docker",
                "--period",
                "1",
                "--manifest",
                "deployment.json",
                "--hub-config",
                "edgehub.toml",
                "--network",
                &cleanup.network,
                "--edgehub",
            ])
            .arg(&edgehub)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let received = root.join("out/received.txt");
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
        if start.elapsed() > Duration::from_secs(90) {
            let logs = |name: &str| {
                Command::new("docker")
                    .args(["logs", name])
                    .output()
                    .map(|o| {
                        format!(
                            "{}{}",
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        )
                    })
                    .unwrap_or_default()
            };
            panic!(
                "no messages received.\nagent:\n{}\nhub:\n{}\nsender:\n{}\nreceiver:\n{}",
                std::fs::read_to_string(root.join("agent.log")).unwrap_or_default(),
                logs("edgeHub"),
                logs("sender"),
                logs("receiver")
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
        table.contains("edgeHub") && table.contains("sender") && table.contains("receiver"),
        "{table}"
    );

    // SIGTERM stops the containers.
    let mut agent = cleanup.agent.take().unwrap();
    assert!(
        Command::new("kill")
            .args(["-TERM", &agent.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    let exit = loop {
        if let Some(exit) = agent.try_wait().unwrap() {
            break exit;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the agent did not stop"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(exit.success());
    for name in ["edgeHub", "sender", "receiver"] {
        let running = Command::new("docker")
            .args(["inspect", "--format", "{{.State.Running}}", name])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&running.stdout).trim(),
            "false",
            "{name} still runs"
        );
    }
}
