//! The `edgehub route` command line, run as a process: the contract other tools rely on.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn edgehub(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgehub"))
        .args(args)
        .output()
        .expect("edgehub runs")
}

fn stdout_json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON object ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn write_message(dir: &Path, message: &Value) -> String {
    let path = dir.join("message.json");
    std::fs::write(&path, message.to_string()).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn check_prints_the_parts_of_a_valid_route() {
    let out = edgehub(&[
        "route",
        "check",
        r#"FROM /messages/modules/filter/outputs/output1 WHERE temp = 'hot' INTO BrokeredEndpoint("/modules/sink/inputs/input1")"#,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let json = stdout_json(&out);
    assert_eq!(json["source"], "/messages/modules/filter/outputs/output1");
    assert_eq!(json["condition"], "temp = 'hot'");
    assert_eq!(
        json["sink"],
        serde_json::json!({"type": "module", "moduleId": "sink", "input": "input1"})
    );
    assert_eq!(json["warnings"], serde_json::json!([]));
}

#[test]
fn check_rejects_an_invalid_route_with_line_and_column() {
    let out = edgehub(&[
        "route",
        "check",
        "FROM /messages/*\nWHERE x == 'a'\nINTO $upstream",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2, column 10"), "{stderr}");
}

#[test]
fn check_warns_about_quirks() {
    let out = edgehub(&[
        "route",
        "check",
        "FROM /messages/* WHERE key1!='x' INTO $upstream",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let warnings = stdout_json(&out)["warnings"].as_array().unwrap().clone();
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        (warnings[0]["line"].as_u64(), warnings[0]["column"].as_u64()),
        (Some(1), Some(24))
    );
}

#[test]
fn check_manifest_names_every_bad_route() {
    let ok = edgehub(&[
        "route",
        "check",
        "--manifest",
        "config/deployment.example.json",
    ]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(stdout_json(&ok)["routes"].as_object().unwrap().len(), 3);

    let dir = tempfile::tempdir().unwrap();
    let manifest = serde_json::json!({"modulesContent": {"$edgeHub": {"properties.desired": {
        "schemaVersion": "1.1",
        "routes": {
            "fine": "FROM /messages/* INTO $upstream",
            "broken": "FROM /messages/* WHERE a == 1 INTO $upstream",
            "alsoBroken": "FROM /messages/* INTO $cloud"
        },
        "storeAndForwardConfiguration": {"timeToLiveSecs": 7200}
    }}}});
    let path = dir.path().join("deployment.json");
    std::fs::write(&path, manifest.to_string()).unwrap();
    let out = edgehub(&["route", "check", "--manifest", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'broken'") && stderr.contains("'alsoBroken'"),
        "{stderr}"
    );
    assert!(!stderr.contains("'fine'"), "{stderr}");
}

#[test]
fn test_derives_the_source_from_system_properties() {
    let dir = tempfile::tempdir().unwrap();
    let message = write_message(
        dir.path(),
        &serde_json::json!({"systemProperties": {"connectionModuleId": "m1", "outputName": "o1"}}),
    );
    let run = |route: &str, extra: &[&str]| {
        let mut args = vec!["route", "test", "--route", route, "--message", &message];
        args.extend_from_slice(extra);
        stdout_json(&edgehub(&args))
    };
    assert_eq!(
        run("FROM /messages/modules/m1/outputs/o1 INTO $upstream", &[])["routed"],
        true
    );
    assert_eq!(
        run("FROM /messages/modules/m2 INTO $upstream", &[])["routed"],
        false
    );
    let overridden = run(
        "FROM /messages/modules/m2 INTO $upstream",
        &["--source", "/messages/modules/m2"],
    );
    assert_eq!(
        overridden,
        serde_json::json!({"result": "true", "routed": true})
    );
}

#[test]
fn test_explain_shows_every_part() {
    let dir = tempfile::tempdir().unwrap();
    let message = write_message(dir.path(), &serde_json::json!({"properties": {"a": "1"}}));
    let out = edgehub(&[
        "route",
        "test",
        "--condition",
        "a = '1' AND b = '2'",
        "--message",
        &message,
        "--explain",
    ]);
    let json = stdout_json(&out);
    assert_eq!(json["result"], "undefined");
    assert_eq!(json["explain"]["children"][1]["value"], "undefined");
    assert!(String::from_utf8_lossy(&out.stderr).contains("b = '2'  =>  undefined"));
}

/// Every public vector through the command line, as an outside tool would run it.
#[test]
fn every_public_vector_through_the_command_line() {
    let vectors: Value =
        serde_json::from_str(include_str!("../router/tests/data/routes-public.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for v in vectors.as_array().unwrap() {
        let (out, want) = match v["kind"].as_str().unwrap() {
            "parse" => {
                let out = edgehub(&["route", "check", v["route"].as_str().unwrap()]);
                let ok = v["ok"].as_bool().unwrap();
                if ok && out.status.code() == Some(0) {
                    let json = stdout_json(&out);
                    if json["source"] != v["source"]
                        || json["condition"] != v["condition"]
                        || json["sink"] != v["sink"]
                    {
                        failures.push(format!("{}: got {json}", v["route"]));
                    }
                } else if ok || out.status.code() != Some(2) {
                    failures.push(format!("{}: exit {:?}", v["route"], out.status.code()));
                }
                continue;
            }
            "eval" => {
                let message = write_message(dir.path(), &v["message"]);
                let condition = v["condition"].as_str().unwrap();
                let out = edgehub(&[
                    "route",
                    "test",
                    "--condition",
                    condition,
                    "--message",
                    &message,
                ]);
                (
                    out,
                    serde_json::json!({"result": v["result"], "routed": v["expected"]}),
                )
            }
            _ => {
                let message = write_message(dir.path(), &v["message"]);
                let route = v["route"].as_str().unwrap();
                let out = edgehub(&["route", "test", "--route", route, "--message", &message]);
                let json = stdout_json(&out);
                if json["routed"] != v["expected"] {
                    failures.push(format!("{route}: got {json}"));
                }
                continue;
            }
        };
        let json = stdout_json(&out);
        if json != want {
            failures.push(format!("{}: got {json}, want {want}", v["condition"]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn values_that_start_with_a_minus_sign_are_conditions_and_routes_not_flags() {
    let dir = tempfile::tempdir().unwrap();
    let message = write_message(dir.path(), &serde_json::json!({}));
    let out = edgehub(&[
        "route",
        "test",
        "--condition",
        "-5 = -5",
        "--message",
        &message,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout_json(&out),
        serde_json::json!({"result": "true", "routed": true})
    );
    // A route that starts with '-' reaches the route parser, which names the problem.
    let out = edgehub(&["route", "test", "--route", "-5", "--message", &message]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("syntax error"), "{stderr}");
    assert!(!stderr.contains("unexpected argument"), "{stderr}");
}
