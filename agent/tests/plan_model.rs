//! A model test of the planner: from any deployment, any previous deployment and any runtime
//! state, one pass on the fake runtime converges: the runtime holds exactly the deployment's
//! modules, each created from the deployment's spec, running when desired (unless its policy
//! says to wait or give up), and a second pass at the same instant has nothing to do.

use std::collections::BTreeMap;
use std::sync::Arc;

use agent::manifest::{Deployment, Desired, DesiredStatus, ModuleSpec, parse_manifest};
use agent::reconcile::{Judged, NoEnvironment, Reconciler};
use agent::restart::{RestartSettings, RuntimeStatus, runtime_status};
use agent::runtime::fake::FakeRuntime;
use agent::runtime::{CreateRequest, ModuleState, RawStatus};
use proptest::prelude::*;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

const NAMES: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

fn module_strategy() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("running"), Just("stopped")],
        prop_oneof![Just("never"), Just("on-failure"), Just("on-unhealthy"), Just("always")],
        0u32..3,
        0u8..2,
        0u8..2,
    )
        .prop_map(|(status, policy, order, image, env)| {
            json!({ "type": "docker", "status": status, "restartPolicy": policy, "startupOrder": order,
                    "settings": { "image": format!("img:{image}") }, "env": { "E": { "value": env.to_string() } } })
        })
}

fn deployment_strategy() -> impl Strategy<Value = Value> {
    (proptest::collection::btree_map(prop::sample::select(NAMES.to_vec()), module_strategy(), 0..4), module_strategy())
        .prop_map(|(modules, hub)| {
            json!({ "schemaVersion": "1.1", "runtime": { "type": "docker" },
                    "systemModules": { "edgeAgent": { "type": "docker", "settings": { "image": "agent:1" } },
                                       "edgeHub": hub },
                    "modules": modules })
        })
}

#[derive(Debug, Clone)]
struct Existing {
    raw: RawStatus,
    exit_code: i64,
    exited_secs_ago: i64,
    image: u8,
}

fn existing_strategy() -> impl Strategy<Value = BTreeMap<String, Existing>> {
    let names = prop::sample::select(vec![
        "alpha", "beta", "gamma", "delta", "edgeHub", "stranger",
    ]);
    let state = (
        prop_oneof![
            Just(RawStatus::Running),
            Just(RawStatus::Stopped),
            Just(RawStatus::Failed)
        ],
        0i64..500,
        0u8..2,
    )
        .prop_map(|(raw, ago, image)| Existing {
            raw,
            exit_code: if raw == RawStatus::Failed { 1 } else { 0 },
            exited_secs_ago: ago,
            image,
        });
    proptest::collection::btree_map(names.prop_map(str::to_owned), state, 0..6)
}

fn parse(desired: &Value, version: u64) -> Deployment {
    match parse_manifest(desired, version) {
        Ok(Desired::Deployment(d)) => *d,
        other => panic!("generated deployment refused: {other:?}"),
    }
}

fn placeholder(name: &str, image: &str) -> ModuleSpec {
    let d = parse(
        &json!({ "schemaVersion": "1.1", "runtime": { "type": "docker" },
        "systemModules": { "edgeAgent": { "type": "docker", "settings": { "image": "a" } },
                           "edgeHub": { "type": "docker", "settings": { "image": image } } } }),
        1,
    );
    ModuleSpec {
        name: name.to_owned(),
        ..d.edge_hub
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn one_pass_converges(previous in deployment_strategy(), desired in deployment_strategy(), existing in existing_strategy()) {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let previous = parse(&previous, 1);
        let runtime = FakeRuntime::new(now);
        for (name, e) in &existing {
            let image = format!("img:{}", e.image);
            // The container runs `image`, whatever the previous deployment said.
            let mut spec = previous.module(name).cloned().unwrap_or_else(|| placeholder(name, &image));
            spec.settings.image.clone_from(&image);
            runtime.seed(
                CreateRequest { spec, env: Vec::new(), credentials: None, workload_socket: None },
                ModuleState {
                    name: name.clone(), id: format!("old-{name}"), raw: e.raw, description: String::new(),
                    exit_code: e.exit_code,
                    started_at: Some(now - Duration::seconds(e.exited_secs_ago + 1000)),
                    exited_at: (e.raw != RawStatus::Running).then(|| now - Duration::seconds(e.exited_secs_ago)),
                    image,
                    image_hash: String::new(),
                },
            );
        }
        let mut agent = Reconciler::new(runtime.clone(), Arc::new(NoEnvironment), RestartSettings::default());
        agent.set_last_applied(Some(previous));
        let judged = Judged { version: 2, outcome: parse_manifest(&desired, 2) };
        let target = parse(&desired, 2);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();

        let first = rt.block_on(agent.pass(&judged, now));
        prop_assert!(first.failures.is_empty(), "{:?}", first.failures);
        let states: BTreeMap<String, ModuleState> = agent.states().iter().map(|s| (s.name.clone(), s.clone())).collect();
        let wanted: Vec<&str> = target.managed_modules().map(|m| m.name.as_str()).collect();
        prop_assert_eq!(states.keys().map(String::as_str).collect::<Vec<_>>(), { let mut w = wanted.clone(); w.sort_unstable(); w });
        for spec in target.managed_modules() {
            let module = runtime.module(&spec.name).unwrap();
            // A change of status alone starts or stops the module without recreating it.
            prop_assert!(module.request.spec.equal_but_status(spec), "{} not created from the deployment: {:?}", spec.name, module.request.spec);
            let state = &states[&spec.name];
            let count = agent.restarts().get(&spec.name).map_or(0, |r| r.count);
            let status = runtime_status(state.raw, spec.status, spec.restart_policy, count, agent.settings());
            match spec.status {
                DesiredStatus::Stopped => prop_assert_ne!(state.raw, RawStatus::Running, "{} runs", spec.name),
                DesiredStatus::Running => prop_assert!(
                    matches!(status, RuntimeStatus::Running | RuntimeStatus::Backoff | RuntimeStatus::Failed)
                        || (status == RuntimeStatus::Stopped && spec.restart_policy == agent::manifest::RestartPolicy::Never),
                    "{} is {:?}", spec.name, status
                ),
            }
        }
        let second = rt.block_on(agent.pass(&judged, now));
        prop_assert!(second.ran.is_empty() && second.skipped.is_empty(), "second pass: {:?}", second);
    }
}
