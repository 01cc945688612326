//! The two-minute soak (issue 14), the same command as the one-hour run of `benches/soak.sh`:
//! two module pairs at half the measured 1 -> 1 capacity through the real hub binary, with a
//! module restart, a hub SIGTERM, a hub SIGKILL and a full-disk episode (a loop-mounted
//! filesystem of its own; without the privilege to mount, the soak says so and leaves the
//! episode out). No acknowledged message may be lost.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// The `edgehub` binary next to this package's binaries: `cargo test --workspace` (`./test`)
/// has built it; without it (`cargo test -p edgehub-benches` on a fresh target folder) it is
/// built here. Not rebuilt when present: `cargo build -p edgehub` resolves other features than
/// the workspace's test build, and would rebuild it (and its dependencies) at every run.
fn hub_binary() -> PathBuf {
    let soak = PathBuf::from(env!("CARGO_BIN_EXE_edgehub-soak"));
    let dir = soak.parent().expect("the binary is in a folder");
    let hub = dir.join("edgehub");
    if !hub.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--locked", "-p", "edgehub", "--bin", "edgehub"]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        assert!(
            build.status().expect("cargo runs").success(),
            "building edgehub"
        );
    }
    hub
}

#[test]
fn two_minute_soak_loses_no_acknowledged_message() {
    let hub = hub_binary();
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_edgehub-soak"))
        .arg("--hub")
        .arg(&hub)
        .arg("--out")
        .arg(out.path())
        .args(["--duration", "120", "--fault-every", "20", "--pairs", "2"])
        .args([
            "--calibrate",
            "5",
            "--full-disk-hold",
            "5",
            "--fs-mib",
            "128",
        ])
        .args(["--drain", "60"])
        .output()
        .expect("edgehub-soak runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}{stdout}");
    let report: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| {
            let log = std::fs::read_to_string(out.path().join("hub.log")).unwrap_or_default();
            panic!(
                "no report (exit {:?}); hub log tail:\n{}",
                output.status,
                &log[log.len().saturating_sub(4000)..]
            )
        });
    assert_eq!(report["lost"], 0, "acknowledged messages lost: {report}");
    assert!(report["acknowledged"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["acknowledged"].as_u64(),
        report["delivered"]
            .as_u64()
            .map(|d| { d - report["delivered_unacknowledged"].as_u64().unwrap() }),
        "{report}"
    );
    for fault in ["module_restart", "sigterm", "sigkill"] {
        assert!(
            report["faults"][fault].as_u64() >= Some(1),
            "{fault}: {report}"
        );
    }
    if report["full_disk"] == true {
        assert_eq!(report["faults"]["full_disk"], 1, "{report}");
    } else {
        eprintln!("full-disk episode skipped: {}", report["full_disk_note"]);
    }
    assert!(output.status.success(), "{report}");
    assert!(out.path().join("soak.png").exists());
}
