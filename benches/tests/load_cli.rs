//! `edgehub-load` as a command: the deployment it writes, and its refusals.

use std::process::Command;

fn load() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edgehub-load"))
}

#[test]
fn write_deployment_writes_a_manifest_whose_routes_the_hub_accepts() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("deployment.json");
    let out = load()
        .args([
            "-p",
            "4",
            "-s",
            "4",
            "--topology",
            "pairs",
            "--write-deployment",
        ])
        .arg(&path)
        .output()
        .expect("edgehub-load runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("the manifest exists"))
            .expect("the manifest is JSON");
    let desired = &manifest["modulesContent"]["$edgeHub"]["properties.desired"];
    let routes = desired["routes"].as_object().expect("routes");
    assert_eq!(routes.len(), 4);
    assert!(router::EdgeHubRoutes::from_desired(desired).is_ok());
}

#[test]
fn a_pairs_topology_with_unequal_counts_is_refused() {
    let out = load()
        .args(["--plain", "-p", "2", "-s", "3", "--topology", "pairs"])
        .output()
        .expect("edgehub-load runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("as many publishers as subscribers"),
        "{stderr}"
    );
}

#[test]
fn hub_mode_without_a_configuration_says_what_is_missing() {
    let out = load().output().expect("edgehub-load runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--config"), "{stderr}");
}
