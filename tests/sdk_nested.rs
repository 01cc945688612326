//! The official Python SDK (`azure-iot-device`, unmodified) on a child hub, reached by the
//! operator at the parent (issue 16): desired properties set at the parent arrive at the
//! module, also when it or its hub was offline, and a method invoked at the parent is answered
//! by it.
//!
//! The SDK has no port option: the child listens on port 8883 of `localhost`, so this runs in
//! its own test binary (test binaries run one after another), scenarios one after another.

mod common;

use std::process::Command;

use common::hubproc::HubProcess;
use common::sdk::{python, repo};
use serde_json::json;

const GATEWAY_PORT: u16 = 8883;

#[test]
fn the_python_sdk_on_a_child_hub_is_reached_from_the_parent() {
    let python = python();
    let parent = HubProcess::start_device("parent", &json!({}), &[], "");
    let connection_string = parent.identity(&["add", "--edge-device", "child-1"]);
    let upstream = format!(
        "[upstream]\nconnection_string = \"{}\"\nport = {}\nhttps_port = {}\nca = \"{}\"\n",
        connection_string.trim(),
        parent.mqtts,
        parent.https,
        parent.ca().display()
    );
    let mut child =
        HubProcess::start_device_on("child-1", &json!({}), &["filter"], &upstream, GATEWAY_PORT);
    let filter = child.identity(&["add", "filter"]);
    for scenario in ["desired", "offline_desired", "operator_method"] {
        run(&python, &parent, &child, &filter, scenario, &[]);
    }

    // Set while the child hub is down: the module reads it once the child is back.
    child.kill();
    parent.cli(&[
        "twin",
        "set-desired",
        "child-1/filter",
        r#"{"setWhileChildDown": 7}"#,
    ]);
    child.spawn();
    run(
        &python,
        &parent,
        &child,
        &filter,
        "desired_on_connect",
        &[("EXPECT_KEY", "setWhileChildDown"), ("EXPECT_VALUE", "7")],
    );
}

/// Runs one scenario of `tests/sdk/scenarios.py` with module B = `filter` (a connection string
/// of the child), the operator at the parent; it must pass.
fn run(
    python: &std::path::Path,
    parent: &HubProcess,
    child: &HubProcess,
    filter: &str,
    scenario: &str,
    extra: &[(&str, &str)],
) {
    let out = Command::new(python)
        .arg(repo().join("tests/sdk/scenarios.py"))
        .arg(scenario)
        .env("CS_A", filter.trim())
        .env("CS_B", filter.trim())
        .env("CA_FILE", child.ca())
        .env("EDGEHUB_BIN", env!("CARGO_BIN_EXE_edgehub"))
        .env("EDGEHUB_CONFIG", parent.config())
        .env("OPERATOR_TARGET", "child-1/filter")
        .envs(extra.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scenario {scenario} failed:\n{}\n{}\nchild's log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        child.log()
    );
}
