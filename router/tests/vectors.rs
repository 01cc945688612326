//! Every public route vector (`tests/data/routes-public.json`, copied from the shared vectors).

use router::{CompiledRoute, Condition, Message, Outcome, RouteError};
use serde_json::Value;

fn vectors() -> Vec<Value> {
    let text = include_str!("data/routes-public.json");
    serde_json::from_str::<Value>(text)
        .expect("the vectors are JSON")
        .as_array()
        .expect("the vectors are an array")
        .clone()
}

fn describe(v: &Value) -> String {
    format!(
        "{} ({})",
        v.get("route")
            .or_else(|| v.get("condition"))
            .unwrap_or(&Value::Null),
        v["why"]
    )
}

fn sink_json(route: &CompiledRoute) -> Value {
    match route.endpoint() {
        router::Endpoint::Upstream => serde_json::json!({"type": "upstream"}),
        router::Endpoint::ModuleInput { module, input } => {
            serde_json::json!({"type": "module", "moduleId": module, "input": input})
        }
    }
}

fn check_parse(v: &Value) -> Result<(), String> {
    let text = v["route"].as_str().unwrap();
    match (CompiledRoute::compile(text), v["ok"].as_bool().unwrap()) {
        (Ok(route), true) => {
            let got = (
                route.source().text().to_owned(),
                route.source().prefix().to_owned(),
                route.condition().text().to_owned(),
                sink_json(&route),
            );
            let want = (
                v["source"].as_str().unwrap().to_owned(),
                v["sourcePrefix"].as_str().unwrap().to_owned(),
                v["condition"].as_str().unwrap().to_owned(),
                v["sink"].clone(),
            );
            if got == want {
                Ok(())
            } else {
                Err(format!("got {got:?}, want {want:?}"))
            }
        }
        (Err(RouteError { stage, .. }), false) if stage.as_str() == v["stage"] => Ok(()),
        (Err(e), false) => Err(format!(
            "rejected at stage {}, want {}: {e}",
            e.stage, v["stage"]
        )),
        (Err(e), true) => Err(format!("rejected: {e}")),
        (Ok(_), false) => Err(format!("accepted, want rejection at {}", v["stage"])),
    }
}

fn check_eval(v: &Value) -> Result<(), String> {
    let condition = Condition::compile(v["condition"].as_str().unwrap())
        .map_err(|e| format!("does not compile: {e}"))?;
    let message = Message::from_json(&v["message"])?;
    let compiled = condition.evaluate(&message);
    let reference = condition.interpret(&message);
    let want = v["result"].as_str().unwrap();
    if compiled.as_str() != want {
        return Err(format!("compiled gives {}, want {want}", compiled.as_str()));
    }
    if reference.as_str() != want {
        return Err(format!(
            "reference gives {}, want {want}",
            reference.as_str()
        ));
    }
    if (compiled == Outcome::True) != v["expected"].as_bool().unwrap() {
        return Err("routing decision differs from 'expected'".to_owned());
    }
    Ok(())
}

fn check_match(v: &Value) -> Result<(), String> {
    let route = CompiledRoute::compile(v["route"].as_str().unwrap()).map_err(|e| e.to_string())?;
    let message = Message::from_json(&v["message"])?;
    let want = v["expected"].as_bool().unwrap();
    let derived = route.routes(&message);
    let by_path = route
        .source()
        .matches_path(v["messageSource"].as_str().unwrap())
        && route.condition().evaluate(&message) == Outcome::True;
    if message.source().path() != v["messageSource"].as_str().unwrap() {
        return Err(format!(
            "derived source {}, want {}",
            message.source().path(),
            v["messageSource"]
        ));
    }
    if derived != want || by_path != want {
        return Err(format!(
            "routes: {derived} (by path {by_path}), want {want}"
        ));
    }
    Ok(())
}

#[test]
fn every_public_vector_passes() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 150, "the vector file changed size");
    let failures: Vec<String> = vectors
        .iter()
        .filter_map(|v| {
            let result = match v["kind"].as_str().unwrap() {
                "parse" => check_parse(v),
                "eval" => check_eval(v),
                "match" => check_match(v),
                other => Err(format!("unknown kind {other}")),
            };
            result.err().map(|e| format!("{}: {e}", describe(v)))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
