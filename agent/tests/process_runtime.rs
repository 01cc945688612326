//! The `process` runtime under the reconciler: real child processes (`/bin/sh`), real exits,
//! restarts by policy (with a short back-off so the test runs in seconds).

use std::sync::Arc;
use std::time::Duration;

use agent::manifest::{StatusCode, parse_manifest};
use agent::reconcile::{Judged, Reconciler};
use agent::restart::RestartSettings;
use agent::runtime::process::ProcessRuntime;
use agent::runtime::{RawStatus, Runtime as _};
use serde_json::{Value, json};
use time::OffsetDateTime;

mod common;
use common::ModuleIdEnv;

fn sh(script: &str, policy: &str, status: &str, order: u32) -> Value {
    json!({ "type": "docker", "status": status, "restartPolicy": policy, "startupOrder": order,
            "settings": { "path": "/bin/sh", "args": ["-c", script] } })
}

fn manifest(modules: &Value, hub: &Value) -> Value {
    json!({ "schemaVersion": "1.1", "runtime": { "type": "docker" },
            "systemModules": { "edgeAgent": { "type": "docker", "settings": { "image": "edgeagent:local" } },
                               "edgeHub": hub },
            "modules": modules })
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn modules_run_as_processes_with_their_env_exit_codes_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env.out");
    let settings = RestartSettings {
        cool_off_unit: Duration::from_millis(200),
        max_cool_off: Duration::from_secs(1),
        max_restart_count: 3,
        ..RestartSettings::default()
    };
    let runtime = ProcessRuntime::new(dir.path().join("logs")).grace(Duration::from_secs(2));
    let mut agent = Reconciler::new(runtime, Arc::new(ModuleIdEnv), settings);
    let hub = sh("exec sleep 30", "always", "running", 0);
    let modules = json!({
        "env": { "type": "docker", "status": "running", "restartPolicy": "always", "startupOrder": 1,
                 "env": { "GREETING": { "value": "hello" } },
                 "settings": { "path": "/bin/sh",
                               "args": ["-c", format!("echo \"$GREETING $IOTEDGE_MODULEID\" > {}; exec sleep 30", out.display())] } },
        "crash": sh("exit 3", "always", "running", 2),
    });
    let judged = Judged {
        version: 1,
        outcome: parse_manifest(&manifest(&modules, &hub), 1),
    };
    agent.pass(&judged, OffsetDateTime::now_utc()).await;
    assert_eq!(
        agent.status().code,
        StatusCode::Successful,
        "{:?}",
        agent.status()
    );

    eventually("the env module's output", async || {
        std::fs::read_to_string(&out).is_ok_and(|s| s == "hello env\n")
    })
    .await;
    eventually("the crash module's exit", async || {
        agent
            .runtime()
            .list()
            .await
            .unwrap()
            .iter()
            .any(|s| s.name == "crash" && s.raw == RawStatus::Failed && s.exit_code == 3)
    })
    .await;

    // Passes keep restarting it until the limit (3), then it is left failed.
    for _ in 0..60 {
        agent.pass(&judged, OffsetDateTime::now_utc()).await;
        if agent.restarts().get("crash").is_some_and(|r| r.count == 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(agent.restarts()["crash"].count, 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = agent.runtime().list().await.unwrap();
    agent.pass(&judged, OffsetDateTime::now_utc()).await;
    assert_eq!(
        agent.restarts()["crash"].count,
        3,
        "restarted past the limit"
    );
    let crash = before.iter().find(|s| s.name == "crash").unwrap();
    assert_eq!(crash.raw, RawStatus::Failed);

    // The others kept their processes.
    let env_pid = before.iter().find(|s| s.name == "env").unwrap().id.clone();
    assert!(!env_pid.is_empty());

    // Stopping by deployment: SIGTERM reaches the process.
    let mut stopped = modules.clone();
    stopped["env"]["status"] = json!("stopped");
    let judged2 = Judged {
        version: 2,
        outcome: parse_manifest(&manifest(&stopped, &hub), 2),
    };
    agent.pass(&judged2, OffsetDateTime::now_utc()).await;
    let env = agent
        .runtime()
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == "env")
        .unwrap();
    assert_eq!(
        env.raw,
        RawStatus::Failed,
        "sleep killed by SIGTERM exits 143: {env:?}"
    );
    assert_eq!(env.exit_code, 128 + 15);
    assert_eq!(env.id, env_pid, "a status flip must not recreate");

    agent.shutdown().await;
    for s in agent.runtime().list().await.unwrap() {
        assert_ne!(s.raw, RawStatus::Running, "{} still runs", s.name);
    }
}

#[tokio::test]
async fn a_module_without_a_path_is_a_clear_500() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = ProcessRuntime::new(dir.path().join("logs"));
    let mut agent = Reconciler::new(runtime, Arc::new(ModuleIdEnv), RestartSettings::default());
    let hub = json!({ "type": "docker", "status": "running", "restartPolicy": "always",
                      "settings": { "image": "edgehub:local" } });
    let judged = Judged {
        version: 1,
        outcome: parse_manifest(&manifest(&json!({}), &hub), 1),
    };
    agent.pass(&judged, OffsetDateTime::now_utc()).await;
    assert_eq!(agent.status().code, StatusCode::Failed);
    assert!(
        agent.status().description.contains("set settings.path"),
        "{}",
        agent.status().description
    );
}
