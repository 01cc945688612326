//! The docker runtime on the real engine: a deployment comes up in startupOrder, a container
//! killed from outside is restarted after ~10 s then ~20 s and counted, a redeploy that
//! changes one module's env recreates only that container, and 412/400/417 leave the running
//! containers untouched.
//!
//! The test builds its own image (`docker import` of a root file system holding the host's
//! `/bin/sh` and `sleep` with their libraries), uses its own network and owner label, and
//! removes every container, network and image it made, also on failure. Without a reachable
//! engine it prints why and passes without testing.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::manifest::{StatusCode, parse_manifest};
use agent::reconcile::{Judged, Reconciler};
use agent::restart::RestartSettings;
use agent::runtime::docker::{DockerRuntime, OWNER_LABEL};
use agent::runtime::{ModuleState, RawStatus, Runtime as _};
use serde_json::{Value, json};
use time::OffsetDateTime;

mod common;
use common::ModuleIdEnv;

/// Removes what the test made, whatever happens.
struct Cleanup {
    owner: String,
    network: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label={OWNER_LABEL}={}", self.owner),
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .status();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn engine_reachable() -> Result<(), String> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .map_err(|e| format!("no docker command: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// `docker import` of the host's sh and sleep with the libraries they link.
fn build_shell_image(tag: &str) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    let mut files = vec!["/bin/sh".to_owned(), "/bin/sleep".to_owned()];
    for bin in ["/bin/sh", "/bin/sleep"] {
        let ldd = Command::new("ldd").arg(bin).output().unwrap();
        for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
            if word.starts_with('/') {
                files.push(word.to_owned());
            }
        }
    }
    for file in files {
        let to = root.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(&file).unwrap(), &to).unwrap();
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let import = Command::new("docker")
        .args(["import", "-", tag])
        .stdin(tar.stdout.take().unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(tar.wait().unwrap().success(), "tar failed");
    assert!(import.success(), "docker import failed");
}

fn module(image: &str, order: u32, env: &str) -> Value {
    // sh as PID 1 ends on SIGTERM within a second.
    let options =
        json!({ "Cmd": ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do /bin/sleep 1; done"] });
    json!({ "type": "docker", "status": "running", "restartPolicy": "always", "startupOrder": order,
            "imagePullPolicy": "never", "env": { "SETTING": { "value": env } },
            "settings": { "image": image, "createOptions": options.to_string() } })
}

fn manifest(image: &str, b_env: &str, schema: Option<&str>) -> Value {
    let mut desired = json!({
        "runtime": { "type": "docker", "settings": {} },
        "systemModules": {
            "edgeAgent": { "type": "docker", "settings": { "image": "edgeagent:local" } },
            "edgeHub": module(image, 0, "hub") },
        "modules": { "modA": module(image, 1, "a"), "modB": module(image, 2, b_env) } });
    if let Some(schema) = schema {
        desired["schemaVersion"] = json!(schema);
    }
    json!({ "modulesContent": { "$edgeAgent": { "properties.desired": desired } } })
}

fn by_name(states: Vec<ModuleState>) -> BTreeMap<String, ModuleState> {
    states.into_iter().map(|s| (s.name.clone(), s)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_on_the_docker_engine() {
    if let Err(why) = engine_reachable() {
        println!("skipped: no Docker engine reachable ({why})");
        return;
    }
    let suffix = format!(
        "{}-{}",
        std::process::id(),
        OffsetDateTime::now_utc().unix_timestamp_nanos() % 1_000_000
    );
    let cleanup = Cleanup {
        owner: format!("edgeagent-test-{suffix}"),
        network: format!("edgeagent-test-{suffix}"),
        image: format!("edgeagent-test-shell:{suffix}"),
    };
    for name in ["edgeHub", "modA", "modB"] {
        let exists = Command::new("docker")
            .args(["inspect", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if exists.success() {
            println!("skipped: a container named {name} exists already");
            return;
        }
    }
    build_shell_image(&cleanup.image);
    let runtime = DockerRuntime::connect(&cleanup.network)
        .await
        .unwrap()
        .with_owner(&cleanup.owner);
    let mut agent = Reconciler::new(runtime, Arc::new(ModuleIdEnv), RestartSettings::default());
    let image = cleanup.image.clone();
    let judged = |version: u64, m: &Value| Judged {
        version,
        outcome: parse_manifest(m, version),
    };

    // Up in startupOrder.
    let v1 = judged(1, &manifest(&image, "b1", Some("1.1")));
    agent.pass(&v1, OffsetDateTime::now_utc()).await;
    assert_eq!(
        agent.status().code,
        StatusCode::Successful,
        "{:?}",
        agent.status()
    );
    let up = by_name(agent.runtime().list().await.unwrap());
    assert_eq!(up.keys().collect::<Vec<_>>(), ["edgeHub", "modA", "modB"]);
    assert!(up.values().all(|s| s.raw == RawStatus::Running), "{up:#?}");
    let started = |n: &str| up[n].started_at.unwrap();
    assert!(
        started("edgeHub") <= started("modA") && started("modA") <= started("modB"),
        "{up:#?}"
    );
    let inspect_env = Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Env}}", "modA"])
        .output()
        .unwrap();
    let env = String::from_utf8_lossy(&inspect_env.stdout);
    assert!(
        env.contains("SETTING=a") && env.contains("IOTEDGE_MODULEID=modA"),
        "{env}"
    );

    // Killed from outside: restarted after the back-off (10 s, then 20 s), counted.
    for (n, wait) in [(1u32, 10i64), (2, 20)] {
        let killed = Command::new("docker")
            .args(["kill", "modA"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(killed.success());
        let exit_seen = Instant::now();
        let restarted_after = loop {
            agent.pass(&v1, OffsetDateTime::now_utc()).await;
            if agent.restarts().get("modA").is_some_and(|r| r.count == n) {
                break exit_seen.elapsed();
            }
            assert!(
                exit_seen.elapsed() < Duration::from_secs(60),
                "modA not restarted"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert!(
            restarted_after >= Duration::from_secs((wait - 1) as u64),
            "restart {n} after {restarted_after:?}"
        );
        assert!(
            restarted_after <= Duration::from_secs((wait + 5) as u64),
            "restart {n} after {restarted_after:?}"
        );
        let now = by_name(agent.runtime().list().await.unwrap());
        assert_eq!(now["modA"].raw, RawStatus::Running);
        assert_eq!(
            now["modA"].id, up["modA"].id,
            "a restart keeps the container"
        );
    }

    // A redeploy changing modB's env recreates modB only.
    let v2 = judged(2, &manifest(&image, "b2", Some("1.1")));
    agent.pass(&v2, OffsetDateTime::now_utc()).await;
    assert_eq!(
        agent.status().code,
        StatusCode::Successful,
        "{:?}",
        agent.status()
    );
    let after = by_name(agent.runtime().list().await.unwrap());
    assert_eq!(after["edgeHub"].id, up["edgeHub"].id);
    assert_eq!(after["modA"].id, up["modA"].id);
    assert_ne!(after["modB"].id, up["modB"].id);
    assert_eq!(after["modB"].raw, RawStatus::Running);

    // A new agent that knows the last applied deployment adopts the running containers.
    let runtime = DockerRuntime::connect(&cleanup.network)
        .await
        .unwrap()
        .with_owner(&cleanup.owner);
    let mut successor = Reconciler::new(runtime, Arc::new(ModuleIdEnv), RestartSettings::default());
    successor.set_last_applied(agent.last_applied().cloned());
    let adopted = successor.pass(&v2, OffsetDateTime::now_utc()).await;
    assert!(
        adopted.ran.is_empty() && adopted.failures.is_empty(),
        "{adopted:?}"
    );
    assert_eq!(successor.status().code, StatusCode::Successful);
    drop(successor);

    // 412, 400 and 417 leave the containers untouched.
    let empty = json!({ "modulesContent": { "$edgeAgent": { "properties.desired": {} } } });
    for (m, code) in [
        (
            manifest(&image, "b3", Some("1.2")),
            StatusCode::InvalidSchemaVersion,
        ),
        (manifest(&image, "b3", None), StatusCode::ConfigFormatError),
        (empty, StatusCode::ConfigEmptyError),
    ] {
        agent.pass(&judged(3, &m), OffsetDateTime::now_utc()).await;
        assert_eq!(agent.status().code, code);
        let now = by_name(agent.runtime().list().await.unwrap());
        for (name, state) in &after {
            assert_eq!(now[name].id, state.id, "{name} recreated after a {code:?}");
            assert_eq!(
                now[name].raw,
                RawStatus::Running,
                "{name} stopped after a {code:?}"
            );
        }
    }

    agent.shutdown().await;
    let stopped = agent.runtime().list().await.unwrap();
    assert!(
        stopped.iter().all(|s| s.raw != RawStatus::Running),
        "{stopped:#?}"
    );
    drop(cleanup);
}
