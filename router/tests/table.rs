//! Route tables: dispatch, one delivery per endpoint, the source index, atomic replacement.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use router::{
    Cx, DEFAULT_PRIORITY, EdgeHubRoutes, Endpoint, Message, RouteSpec, RouteTable, Router, Ttl,
};
use serde_json::json;

fn spec(name: &str, text: &str, priority: u32, ttl_secs: u32) -> RouteSpec {
    RouteSpec {
        name: name.to_owned(),
        text: text.to_owned(),
        priority,
        ttl_secs,
    }
}

fn module_message(module: &str, output: &str, body: &str) -> Message {
    Message::from_json(&json!({
        "body": body,
        "contentType": "application/json",
        "contentEncoding": "utf-8",
        "systemProperties": {"connectionDeviceId": "edge", "connectionModuleId": module, "outputName": output},
        "properties": {"level": "high"}
    }))
    .unwrap()
}

#[test]
fn an_endpoint_gets_one_delivery_with_the_best_priority_and_longest_ttl() {
    let table = RouteTable::new(
        &[
            spec("a", "FROM /messages/* INTO $upstream", 5, 60),
            spec("b", "FROM /messages/modules/m1/* INTO $upstream", 1, 10),
            spec(
                "c",
                "FROM /messages/modules/m1/outputs/o1 WHERE level = 'high' INTO $upstream",
                DEFAULT_PRIORITY,
                0,
            ),
            spec(
                "d",
                "FROM /messages/* WHERE level = 'low' INTO $upstream",
                0,
                99_999,
            ),
            spec(
                "e",
                "FROM /messages/* INTO BrokeredEndpoint(\"/modules/sink/inputs/in\")",
                3,
                0,
            ),
        ],
        Ttl::Secs(7200),
    )
    .unwrap();
    let deliveries = table.dispatch(&module_message("m1", "o1", "{}"));
    assert_eq!(deliveries.len(), 2);
    let upstream = deliveries
        .iter()
        .find(|d| *d.endpoint == Endpoint::Upstream)
        .unwrap();
    assert_eq!((upstream.priority, upstream.ttl), (1, Ttl::Secs(7200)));
    let sink = deliveries
        .iter()
        .find(|d| *d.endpoint != Endpoint::Upstream)
        .unwrap();
    assert_eq!(sink.endpoint.id("edge"), "edge/sink/in");
    assert_eq!((sink.priority, sink.ttl), (3, Ttl::Secs(7200)));
}

#[test]
fn a_negative_global_ttl_never_expires_and_wins_as_longest() {
    let routes = EdgeHubRoutes::from_desired(&json!({
        "schemaVersion": "1.1",
        "routes": {
            "short": {"route": "FROM /messages/* INTO $upstream", "timeToLiveSecs": 5},
            "global": "FROM /messages/* INTO $upstream"
        },
        "storeAndForwardConfiguration": {"timeToLiveSecs": -1}
    }))
    .unwrap();
    let table = routes.table().unwrap();
    let deliveries = table.dispatch(&module_message("m1", "o1", "{}"));
    assert_eq!(deliveries[0].ttl, Ttl::Never);
}

#[test]
fn only_routes_whose_source_matches_are_evaluated_and_the_body_is_parsed_only_for_them() {
    let table = RouteTable::new(
        &[
            spec(
                "other",
                "FROM /messages/modules/m2/* WHERE $body.t > 1 INTO $upstream",
                0,
                0,
            ),
            spec(
                "mine",
                "FROM /messages/modules/m1/* WHERE level = 'high' INTO $upstream",
                0,
                0,
            ),
        ],
        Ttl::Never,
    )
    .unwrap();
    let message = module_message("m1", "o1", r#"{"t": 5}"#);
    let cx = Cx::new(&message);
    let mut out = Vec::new();
    table.dispatch_in(&cx, &mut out);
    assert_eq!(out.len(), 1);
    assert!(
        !cx.body_parsed(),
        "the m2 route must not be evaluated for an m1 message"
    );

    let from_m2 = module_message("m2", "o1", r#"{"t": 5}"#);
    let cx = Cx::new(&from_m2);
    out.clear();
    table.dispatch_in(&cx, &mut out);
    assert_eq!(out.len(), 1);
    assert!(cx.body_parsed());
}

#[test]
fn sources_match_case_insensitively_through_the_index() {
    let table = RouteTable::new(
        &[spec(
            "r",
            "FROM /Messages/Modules/M1/Outputs/O1 INTO $upstream",
            0,
            0,
        )],
        Ttl::Never,
    )
    .unwrap();
    assert_eq!(table.dispatch(&module_message("m1", "o1", "{}")).len(), 1);
    assert_eq!(table.dispatch(&module_message("m1", "o10", "{}")).len(), 0);
    assert_eq!(table.dispatch(&module_message("m10", "o1", "{}")).len(), 0);
}

#[test]
fn a_table_swapped_while_messages_flow_is_seen_whole() {
    let to = |module: &str| {
        RouteTable::new(
            &[
                spec(
                    "x",
                    &format!(
                        "FROM /messages/* INTO BrokeredEndpoint(\"/modules/{module}/inputs/a\")"
                    ),
                    0,
                    0,
                ),
                spec(
                    "y",
                    &format!(
                        "FROM /messages/* INTO BrokeredEndpoint(\"/modules/{module}/inputs/b\")"
                    ),
                    0,
                    0,
                ),
            ],
            Ttl::Never,
        )
        .unwrap()
    };
    let router = Arc::new(Router::new(to("one")));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (router, stop) = (Arc::clone(&router), Arc::clone(&stop));
            std::thread::spawn(move || {
                let message = module_message("m1", "o1", "{}");
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let table = router.load();
                    let deliveries = table.dispatch(&message);
                    // Both deliveries always come from the same table.
                    let modules: Vec<_> = deliveries
                        .iter()
                        .map(|d| match d.endpoint {
                            Endpoint::ModuleInput { module, .. } => module.clone(),
                            Endpoint::Upstream => unreachable!(),
                        })
                        .collect();
                    assert_eq!(modules.len(), 2);
                    assert_eq!(modules[0], modules[1], "a dispatch mixed two tables");
                    seen += 1;
                }
                seen
            })
        })
        .collect();
    for i in 0..500 {
        router.replace(to(if i % 2 == 0 { "two" } else { "one" }));
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
}
