//! Black-box tests of the `edgeagent` binary: `check` exit codes and messages, and `run` on
//! the process runtime with `status` asking it (a stand-in `edgehub` script makes identities).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const AGENT: &str = env!("CARGO_BIN_EXE_edgeagent");

fn write(path: &Path, value: &Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn manifest(modules: &Value, schema: &str) -> Value {
    json!({ "modulesContent": {
        "$edgeAgent": { "properties.desired": {
            "schemaVersion": schema, "runtime": { "type": "docker", "settings": {} },
            "systemModules": {
                "edgeAgent": { "type": "docker", "settings": { "image": "edgeagent:local" } },
                "edgeHub": { "type": "docker", "status": "running", "restartPolicy": "always", "startupOrder": 0,
                             "settings": { "image": "edgehub:local", "path": "/bin/sh", "args": ["-c", "exec sleep 300"] } } },
            "modules": modules } },
        "$edgeHub": { "properties.desired": { "schemaVersion": "1.1", "routes": { "all": "FROM /messages/* INTO $upstream" },
                                              "storeAndForwardConfiguration": { "timeToLiveSecs": 60 } } } } })
}

#[test]
fn check_exits_0_for_a_valid_manifest_and_2_naming_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    write(
        &good,
        &manifest(
            &json!({ "f": { "type": "docker", "status": "running", "restartPolicy": "always",
                                           "settings": { "image": "f" } } }),
            "1.1",
        ),
    );
    let out = Command::new(AGENT)
        .arg("check")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning: modules.f.settings.image"),
        "{stderr}"
    );

    let bad = dir.path().join("bad.json");
    write(
        &bad,
        &manifest(
            &json!({ "f": { "type": "docker", "status": "running", "restartPolicy": "On-Failed",
                                          "settings": { "image": "f:1" }, "env": { "X": "1" } } }),
            "1.1",
        ),
    );
    let out = Command::new(AGENT).arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: modules.f.restartPolicy: \"On-Failed\" is not a restart policy: write \"on-failure\""), "{stderr}");
    assert!(
        stderr.contains(
            "error: modules.f.env.X: an env value is an object: write \"X\": {\"value\": \"1\"}"
        ),
        "{stderr}"
    );

    let v12 = dir.path().join("v12.json");
    write(&v12, &manifest(&json!({}), "1.2"));
    let out = Command::new(AGENT).arg("check").arg(&v12).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("412 schemaVersion \"1.2\" is newer than 1.1")
    );
}

struct Agent {
    child: Child,
    data: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn status(&self) -> Option<Value> {
        let out = Command::new(AGENT)
            .args(["status", "--json", "--data-dir"])
            .arg(&self.data)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn wait_for(&self, what: &str, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(doc) = self.status()
                && check(&doc)
            {
                return doc;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}: {:#}",
                self.status().unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn run_brings_up_the_modules_applies_edits_refuses_bad_manifests_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A stand-in for `edgehub identity add`: a fixed key per module.
    let edgehub = root.join("edgehub");
    std::fs::write(&edgehub, "#!/bin/sh\necho \"HostName=hub.example.net;DeviceId=edge;ModuleId=$5;SharedAccessKey=AAECAwQ=;GatewayHostName=localhost\"\n").unwrap();
    std::fs::set_permissions(
        &edgehub,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let hub_config = root.join("edgehub.toml");
    std::fs::write(&hub_config, "device_id = \"edge\"\niothub_hostname = \"hub.example.net\"\ngateway_hostname = \"localhost\"\ndata_dir = \"hubdata\"\n").unwrap();
    let out = root.join("sensor.env");
    let sensor = |greeting: &str| {
        json!({ "type": "docker", "status": "running", "restartPolicy": "always", "startupOrder": 1,
        "env": { "GREETING": { "value": greeting } },
        "settings": { "image": "sensor:1", "path": "/bin/sh",
                      "args": ["-c", format!("env | sort > {}; echo $$ > {}.pid; exec sleep 300", out.display(), out.display())] } })
    };
    let deployment = root.join("deployment.json");
    write(
        &deployment,
        &manifest(&json!({ "sensor": sensor("hello") }), "1.1"),
    );
    let data = root.join("agent-data");
    let child = Command::new(AGENT)
        .args(["run", "--runtime", "process", "--period", "1", "--manifest"])
        .arg(&deployment)
        .arg("--hub-config")
        .arg(&hub_config)
        .arg("--edgehub")
        .arg(&edgehub)
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let agent = Agent {
        child,
        data: data.clone(),
    };

    let doc = agent.wait_for("the modules running", Duration::from_secs(20), |d| {
        d["lastDesiredStatus"]["code"] == 200
            && d["modules"]["sensor"]["runtimeStatus"] == "running"
            && d["systemModules"]["edgeHub"]["runtimeStatus"] == "running"
    });
    assert_eq!(doc["lastDesiredVersion"], json!(1));
    let table = Command::new(AGENT)
        .args(["status", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("deployment 1: 200"), "{table}");
    assert!(
        table.contains("sensor") && table.contains("edgeHub"),
        "{table}"
    );

    // The module got its environment.
    let start = Instant::now();
    while !out.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let env = std::fs::read_to_string(&out).unwrap();
    for line in [
        "GREETING=hello",
        "IOTEDGE_MODULEID=sensor",
        "IOTEDGE_DEVICEID=edge",
        "IOTEDGE_IOTHUBHOSTNAME=hub.example.net",
        "IOTEDGE_GATEWAYHOSTNAME=localhost",
        "IOTEDGE_AUTHSCHEME=sasToken",
        "IOTEDGE_APIVERSION=2019-01-30",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} missing from {env}");
    }
    let socket = data.join("workload/sensor/workload.sock");
    assert!(
        env.contains(&format!("IOTEDGE_WORKLOADURI=unix://{}", socket.display())),
        "{env}"
    );
    assert!(socket.exists());
    let hub_id = doc["systemModules"]["edgeHub"]["lastStartTimeUtc"].clone();
    let first_pid = std::fs::read_to_string(out.with_extension("env.pid")).unwrap();

    // An edit of one module's env recreates that module only.
    write(
        &deployment,
        &manifest(&json!({ "sensor": sensor("bonjour") }), "1.1"),
    );
    agent.wait_for("the edit applied", Duration::from_secs(20), |d| {
        d["lastDesiredVersion"] == 2
            && d["modules"]["sensor"]["env"]["GREETING"]["value"] == "bonjour"
            && d["modules"]["sensor"]["runtimeStatus"] == "running"
    });
    let start = Instant::now();
    while std::fs::read_to_string(out.with_extension("env.pid")).unwrap_or_default() == first_pid {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "sensor not recreated"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        std::fs::read_to_string(&out)
            .unwrap()
            .contains("GREETING=bonjour")
    );
    let doc = agent.status().unwrap();
    assert_eq!(
        doc["systemModules"]["edgeHub"]["lastStartTimeUtc"], hub_id,
        "the hub was restarted"
    );

    // 412 leaves everything running.
    write(
        &deployment,
        &manifest(&json!({ "sensor": sensor("ignored") }), "1.2"),
    );
    let doc = agent.wait_for("412", Duration::from_secs(10), |d| {
        d["lastDesiredStatus"]["code"] == 412
    });
    assert_eq!(doc["lastDesiredVersion"], json!(3));
    assert_eq!(doc["modules"]["sensor"]["runtimeStatus"], json!("running"));
    assert_eq!(
        doc["modules"]["sensor"]["env"]["GREETING"]["value"],
        json!("bonjour")
    );

    // A module killed from outside is restarted by its policy (after ~10 s) and counted.
    let pid = std::fs::read_to_string(out.with_extension("env.pid")).unwrap();
    let killed = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    let doc = agent.wait_for("the restart", Duration::from_secs(30), |d| {
        d["modules"]["sensor"]["restartCount"] == 1
            && d["modules"]["sensor"]["runtimeStatus"] == "running"
    });
    assert_eq!(doc["modules"]["sensor"]["exitCode"], json!(137));

    // SIGTERM stops the modules and reports 406.
    let term = Command::new("kill")
        .args(["-TERM", &agent.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let mut agent = agent;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent did not stop"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    let reported: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("reported.json")).unwrap())
            .unwrap();
    assert_eq!(
        reported["lastDesiredStatus"],
        json!({ "code": 406, "description": "Agent is not running" })
    );
    assert_eq!(
        reported["modules"]["sensor"]["runtimeStatus"],
        json!("unknown")
    );
    let pid = std::fs::read_to_string(out.with_extension("env.pid")).unwrap();
    let alive = Command::new("kill")
        .args(["-0", pid.trim()])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!alive.success(), "the module outlived the agent");
}
