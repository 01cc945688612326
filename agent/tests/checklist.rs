//! The spec's section 13 checklist, against the fake runtime: no Docker, no sleeping (the
//! tests move the clock).

use std::sync::Arc;

use agent::manifest::{Desired, StatusCode, parse_manifest};
use agent::reconcile::{Judged, NoEnvironment, Reconciler};
use agent::restart::{RestartSettings, RuntimeStatus, runtime_status};
use agent::runtime::RawStatus;
use agent::runtime::fake::FakeRuntime;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

fn t0() -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + Duration::days(20_000)
}

fn module(image: &str, order: Option<u32>, policy: &str, status: &str) -> Value {
    let mut m = json!({ "type": "docker", "status": status, "restartPolicy": policy,
                        "settings": { "image": image } });
    if let Some(order) = order {
        m["startupOrder"] = json!(order);
    }
    m
}

fn manifest(modules: &Value) -> Value {
    json!({ "modulesContent": { "$edgeAgent": { "properties.desired": {
        "schemaVersion": "1.1",
        "runtime": { "type": "docker", "settings": {} },
        "systemModules": {
            "edgeAgent": { "type": "docker", "settings": { "image": "edgeagent:local" } },
            "edgeHub": { "type": "docker", "status": "running", "restartPolicy": "always",
                         "startupOrder": 0, "settings": { "image": "edgehub:local" } } },
        "modules": modules } } } })
}

fn judge(m: &Value, version: u64) -> Judged {
    Judged {
        version,
        outcome: parse_manifest(m, version),
    }
}

fn agent(now: OffsetDateTime) -> Reconciler<FakeRuntime> {
    Reconciler::new(
        FakeRuntime::new(now),
        Arc::new(NoEnvironment),
        RestartSettings::default(),
    )
}

fn status_of(agent: &Reconciler<FakeRuntime>, name: &str) -> RuntimeStatus {
    let state = agent.states().iter().find(|s| s.name == name).expect(name);
    let spec = agent.last_applied().unwrap().module(name).unwrap();
    let count = agent.restarts().get(name).map_or(0, |r| r.count);
    runtime_status(
        state.raw,
        spec.status,
        spec.restart_policy,
        count,
        agent.settings(),
    )
}

// 1. Validation codes.
#[tokio::test]
async fn validation_codes_and_a_refused_deployment_leaves_modules_alone() {
    let good = manifest(&json!({ "f": module("f:1", Some(1), "always", "running") }));
    let mut a = agent(t0());
    a.pass(&judge(&good, 1), t0()).await;
    assert_eq!(a.status().code, StatusCode::Successful);
    a.runtime().take_calls();

    let mut no_schema = good.clone();
    no_schema["modulesContent"]["$edgeAgent"]["properties.desired"]
        .as_object_mut()
        .unwrap()
        .remove("schemaVersion");
    let mut v12 = good.clone();
    v12["modulesContent"]["$edgeAgent"]["properties.desired"]["schemaVersion"] = json!("1.2");
    let mut v1 = good.clone();
    v1["modulesContent"]["$edgeAgent"]["properties.desired"]["schemaVersion"] = json!("1");
    let empty =
        json!({ "modulesContent": { "$edgeAgent": { "properties.desired": { "$version": 5 } } } });
    for (m, code) in [
        (&no_schema, StatusCode::ConfigFormatError),
        (&v12, StatusCode::InvalidSchemaVersion),
        (&v1, StatusCode::InvalidSchemaVersion),
        (&empty, StatusCode::ConfigEmptyError),
    ] {
        let judged = judge(m, 9);
        let outcome = a.pass(&judged, t0() + Duration::seconds(1)).await;
        assert_eq!(a.status().code, code, "{m}");
        assert_eq!(a.judged_version(), 9);
        assert!(outcome.ran.is_empty(), "{:?}", outcome.ran);
        assert!(a.runtime().take_calls().is_empty());
        assert_eq!(
            a.runtime().module("f").unwrap().state.raw,
            RawStatus::Running
        );
    }
    a.pass(&judge(&good, 10), t0() + Duration::seconds(2)).await;
    assert_eq!(a.status().code, StatusCode::Successful);
}

// 2. Chunked createOptions reach the runtime reassembled; a gap is 400.
#[tokio::test]
async fn chunked_create_options_are_reassembled_and_a_gap_is_400() {
    let options = json!({ "Labels": { "pad": "p".repeat(1260) } }).to_string();
    let pieces = agent::create_options::split_text(&options).unwrap();
    assert_eq!(pieces.len(), 3);
    let mut m = module("f:1", Some(1), "always", "running");
    for (k, v) in &pieces {
        m["settings"][k] = json!(v);
    }
    let mut a = agent(t0());
    a.pass(&judge(&manifest(&json!({ "f": m.clone() })), 1), t0())
        .await;
    let created = a.runtime().module("f").unwrap();
    assert_eq!(
        created.request.spec.settings.create_options,
        Some(serde_json::from_str::<Value>(&options).unwrap())
    );

    m["settings"]
        .as_object_mut()
        .unwrap()
        .remove("createOptions01");
    let judged = judge(&manifest(&json!({ "f": m })), 2);
    let Err(e) = &judged.outcome else {
        panic!("accepted")
    };
    assert_eq!(e.code, StatusCode::ConfigFormatError);
    assert!(
        e.description
            .contains("createOptions02 without createOptions01"),
        "{}",
        e.description
    );
}

// 3. Crash loop with `always`: 10, 20, 40, … 300 s; the 21st crash is failed.
#[tokio::test]
async fn a_crashing_module_backs_off_exponentially_then_fails() {
    let m = manifest(&json!({ "f": module("f:1", Some(1), "always", "running") }));
    let judged = judge(&m, 1);
    let mut now = t0();
    let mut a = agent(now);
    a.pass(&judged, now).await;
    let mut waits = Vec::new();
    for crash in 0..21u32 {
        a.runtime().set_now(now);
        a.runtime().exit("f", 1);
        let exit = now;
        // Passes every second until the restart happens (or 400 s: then it gave up).
        let mut restarted_after = None;
        for s in 1..=400 {
            now = exit + Duration::seconds(s);
            a.runtime().set_now(now);
            let outcome = a.pass(&judged, now).await;
            if outcome.ran.iter().any(|id| id == "restart f") {
                restarted_after = Some(s);
                break;
            }
        }
        match restarted_after {
            Some(s) => waits.push(s),
            None => {
                assert_eq!(crash, 20, "gave up after {crash} restarts");
                assert_eq!(status_of(&a, "f"), RuntimeStatus::Failed);
            }
        }
    }
    // Restart strictly after the cool-off, on the next one-second pass.
    assert_eq!(
        waits,
        [
            11, 21, 41, 81, 161, 301, 301, 301, 301, 301, 301, 301, 301, 301, 301, 301, 301, 301,
            301, 301
        ]
    );
    assert_eq!(a.restarts()["f"].count, 20);
}

// 3b. The restart limit is configurable.
#[tokio::test]
async fn the_restart_limit_is_configurable() {
    let settings = RestartSettings {
        max_restart_count: 2,
        ..RestartSettings::default()
    };
    let judged = judge(
        &manifest(&json!({ "f": module("f:1", Some(1), "always", "running") })),
        1,
    );
    let mut now = t0();
    let mut a = Reconciler::new(FakeRuntime::new(now), Arc::new(NoEnvironment), settings);
    a.pass(&judged, now).await;
    for _ in 0..3 {
        a.runtime().exit("f", 1);
        now += Duration::seconds(400);
        a.runtime().set_now(now);
        a.pass(&judged, now).await;
    }
    assert_eq!(a.restarts()["f"].count, 2);
    assert_eq!(status_of(&a, "f"), RuntimeStatus::Failed);
}

// 4. Running more than 10 minutes clears the count.
#[tokio::test]
async fn ten_minutes_running_clears_the_restart_count() {
    let judged = judge(
        &manifest(&json!({ "f": module("f:1", Some(1), "always", "running") })),
        1,
    );
    let mut now = t0();
    let mut a = agent(now);
    a.pass(&judged, now).await;
    a.runtime().exit("f", 1);
    now += Duration::seconds(11);
    a.runtime().set_now(now);
    a.pass(&judged, now).await;
    assert_eq!(a.restarts()["f"].count, 1);
    now += Duration::minutes(9);
    a.pass(&judged, now).await;
    assert_eq!(a.restarts()["f"].count, 1, "cleared too early");
    now += Duration::minutes(2);
    let outcome = a.pass(&judged, now).await;
    assert!(outcome.ran.contains(&"clear f".to_owned()), "{outcome:?}");
    assert!(!a.restarts().contains_key("f"));
}

// 5. on-failure exit 0 → started at once, count unchanged; never exit 1 → failed, untouched.
#[tokio::test]
async fn on_failure_exit_zero_restarts_at_once_and_never_stays_failed() {
    let judged = judge(
        &manifest(&json!({
            "ok": module("ok:1", Some(1), "on-failure", "running"),
            "nv": module("nv:1", Some(1), "never", "running"),
        })),
        1,
    );
    let mut now = t0();
    let mut a = agent(now);
    a.pass(&judged, now).await;
    a.runtime().take_calls();
    a.runtime().exit("ok", 0);
    a.runtime().exit("nv", 1);
    now += Duration::seconds(1);
    a.pass(&judged, now).await;
    assert_eq!(a.runtime().take_calls(), ["start ok"]);
    assert!(!a.restarts().contains_key("ok"));
    assert_eq!(status_of(&a, "nv"), RuntimeStatus::Failed);
    now += Duration::seconds(600);
    a.pass(&judged, now).await;
    assert!(a.runtime().take_calls().is_empty());
}

// 6. status flip → one stop; restartPolicy change → recreate.
#[tokio::test]
async fn a_status_flip_stops_and_a_policy_change_recreates() {
    let mut now = t0();
    let mut a = agent(now);
    let v1 = manifest(
        &json!({ "f": module("f:1", Some(1), "always", "running"), "g": module("g:1", Some(1), "always", "running") }),
    );
    a.pass(&judge(&v1, 1), now).await;
    let g_id = a.runtime().module("g").unwrap().state.id;
    a.runtime().take_calls();
    let v2 = manifest(
        &json!({ "f": module("f:1", Some(1), "always", "stopped"), "g": module("g:1", Some(1), "always", "running") }),
    );
    now += Duration::seconds(5);
    a.pass(&judge(&v2, 2), now).await;
    assert_eq!(a.runtime().take_calls(), ["stop f"]);
    assert_eq!(a.status().code, StatusCode::Successful);
    let v3 = manifest(
        &json!({ "f": module("f:1", Some(1), "never", "stopped"), "g": module("g:1", Some(1), "always", "running") }),
    );
    now += Duration::seconds(5);
    a.pass(&judge(&v3, 3), now).await;
    assert_eq!(
        a.runtime().take_calls(),
        ["pull f:1", "stop f", "remove f", "create f"]
    );
    assert_eq!(
        a.runtime().module("g").unwrap().state.id,
        g_id,
        "g was recreated"
    );
}

// 7. startupOrder groups; a failing group-0 create does not block group 1.
#[tokio::test]
async fn startup_order_groups_and_a_failure_does_not_block_the_next_group() {
    let m = manifest(&json!({
        "late": module("late:1", None, "always", "running"),
        "one": module("one:1", Some(1), "always", "running"),
        "zero": module("zero:1", Some(0), "always", "running"),
    }));
    let mut a = agent(t0());
    a.runtime().fail_create("edgeHub", true);
    a.pass(&judge(&m, 1), t0()).await;
    let creates: Vec<String> = a
        .runtime()
        .take_calls()
        .into_iter()
        .filter(|c| c.starts_with("create") || c.starts_with("start"))
        .collect();
    let pos = |c: &str| {
        creates
            .iter()
            .position(|x| x == c)
            .unwrap_or_else(|| panic!("{c} missing from {creates:?}"))
    };
    assert!(pos("create edgeHub") < pos("create one"));
    assert!(pos("create zero") < pos("create one"));
    assert!(pos("start one") < pos("create late"));
    assert!(a.runtime().module("late").is_some());
    assert_eq!(a.status().code, StatusCode::Failed);
    assert!(
        a.status().description.contains("edgeHub"),
        "{}",
        a.status().description
    );
}

// 8. A module deleted behind the agent's back is recreated.
#[tokio::test]
async fn a_module_deleted_behind_the_agents_back_is_recreated() {
    let judged = judge(
        &manifest(&json!({ "f": module("f:1", Some(1), "always", "running") })),
        1,
    );
    let mut a = agent(t0());
    a.pass(&judged, t0()).await;
    a.runtime().delete("f");
    a.runtime().take_calls();
    a.pass(&judged, t0() + Duration::seconds(5)).await;
    assert_eq!(
        a.runtime().take_calls(),
        ["pull f:1", "create f", "start f"]
    );
    assert_eq!(
        a.runtime().module("f").unwrap().state.raw,
        RawStatus::Running
    );
}

// 9. A failing pull → 500; skipped until 10 s × 2^n; a new deployment clears the memory.
#[tokio::test]
async fn a_failing_pull_is_500_retried_with_backoff_and_forgotten_on_a_new_deployment() {
    let judged = judge(
        &manifest(&json!({ "f": module("f:1", Some(1), "always", "running") })),
        1,
    );
    let mut a = agent(t0());
    a.runtime().fail_pull("f:1", true);
    a.pass(&judged, t0()).await;
    assert_eq!(a.status().code, StatusCode::Failed);
    assert!(
        a.status()
            .description
            .contains("pulling f:1: manifest unknown"),
        "{}",
        a.status().description
    );
    let create_id =
        |o: &agent::reconcile::PassOutcome| o.skipped.iter().any(|s| s.starts_with("create f "));
    let o = a.pass(&judged, t0() + Duration::seconds(5)).await;
    assert!(create_id(&o), "not skipped: {o:?}");
    assert_eq!(
        a.status().code,
        StatusCode::Failed,
        "a skipped command leaves the status"
    );
    let o = a.pass(&judged, t0() + Duration::seconds(21)).await;
    assert!(!create_id(&o), "retried after 20 s: {o:?}");
    assert_eq!(o.failures.len(), 1);
    let o = a.pass(&judged, t0() + Duration::seconds(50)).await;
    assert!(create_id(&o), "second wait is 40 s: {o:?}");
    a.runtime().fail_pull("f:1", false);
    let v2 = judge(
        &manifest(&json!({ "f": module("f:1", Some(1), "always", "running") })),
        2,
    );
    let o = a.pass(&v2, t0() + Duration::seconds(51)).await;
    assert!(o.skipped.is_empty(), "{o:?}");
    assert_eq!(a.status().code, StatusCode::Successful);
}

#[test]
fn an_empty_desired_document_parses_as_empty() {
    assert_eq!(parse_manifest(&json!({}), 1).unwrap(), Desired::Empty);
}

fn report(a: &Reconciler<FakeRuntime>) -> Value {
    agent::reported::document(&agent::reported::ReportInput {
        deployment: a.judged_deployment(),
        states: a.states(),
        restarts: a.restarts(),
        settings: a.settings(),
        status: a.status(),
        judged_version: a.judged_version(),
        runtime_kind: "fake",
        agent_started: t0(),
        shutting_down: false,
    })
}

// 10. A removed module is patched as null; an unchanged state sends no patch.
#[tokio::test]
async fn the_reported_patch_nulls_a_removed_module_and_is_empty_when_nothing_changed() {
    let mut a = agent(t0());
    let v1 = manifest(
        &json!({ "f": module("f:1", Some(1), "always", "running"), "g": module("g:1", Some(2), "on-failure", "running") }),
    );
    a.pass(&judge(&v1, 1), t0()).await;
    let first = report(&a);
    assert_eq!(first["lastDesiredVersion"], json!(1));
    assert_eq!(
        first["lastDesiredStatus"],
        json!({ "code": 200, "description": "" })
    );
    assert_eq!(first["modules"]["f"]["runtimeStatus"], json!("running"));
    assert_eq!(first["modules"]["g"]["restartPolicy"], json!("on-failure"));
    assert_eq!(
        first["systemModules"]["edgeHub"]["runtimeStatus"],
        json!("running")
    );
    a.pass(&judge(&v1, 1), t0() + Duration::seconds(5)).await;
    assert_eq!(agent::reported::patch(&first, &report(&a)), None);

    let v2 = manifest(&json!({ "f": module("f:1", Some(1), "always", "running") }));
    a.pass(&judge(&v2, 2), t0() + Duration::seconds(10)).await;
    let p = agent::reported::patch(&first, &report(&a)).unwrap();
    assert_eq!(p["modules"], json!({ "g": null }));
    assert_eq!(p["lastDesiredVersion"], json!(2));
}

// 3c. A module in back-off is reported with its restart count.
#[tokio::test]
async fn a_module_in_backoff_is_reported_with_its_restart_count() {
    let judged = judge(
        &manifest(&json!({ "f": module("f:1", Some(1), "always", "running") })),
        1,
    );
    let mut a = agent(t0());
    a.pass(&judged, t0()).await;
    a.runtime().set_now(t0() + Duration::seconds(1));
    a.runtime().exit("f", 3);
    a.pass(&judged, t0() + Duration::seconds(12)).await;
    a.runtime().set_now(t0() + Duration::seconds(13));
    a.runtime().exit("f", 3);
    a.pass(&judged, t0() + Duration::seconds(14)).await;
    let doc = report(&a);
    assert_eq!(doc["modules"]["f"]["runtimeStatus"], json!("backoff"));
    assert_eq!(doc["modules"]["f"]["restartCount"], json!(1));
    assert_eq!(doc["modules"]["f"]["exitCode"], json!(3));
}
