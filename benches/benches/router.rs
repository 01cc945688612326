//! Route engine benchmarks: `cargo bench -p edgehub-benches --bench router`.
//!
//! One group per question of issue 2: evaluation cost of a property condition and of a body
//! condition (body parse included), dispatch cost with 1 and 1,000 routes, compile time of
//! 1,000 routes, and the compiled code against the reference interpreter. Issue 15 adds
//! dispatch with 1 and 1,000 routes on one source whose conditions compare a property with a
//! constant (`same source`).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use edgehub_benches::router_inputs::{
    BODY_CONDITION, PROPERTY_CONDITION, device_id, device_message, equality_routes, json_message,
    mixed_routes, module_routes, telemetry_message,
};
use router::{Condition, RouteTable, Ttl};

fn evaluation(c: &mut Criterion) {
    let mut group = c.benchmark_group("evaluate");
    let message = telemetry_message("m1");
    let condition = Condition::compile(PROPERTY_CONDITION).expect("compiles");
    assert!(condition.evaluate(&message).routes());
    group.bench_function("property condition, compiled", |b| {
        b.iter(|| condition.evaluate(black_box(&message)));
    });
    group.bench_function("property condition, reference interpreter", |b| {
        b.iter(|| condition.interpret(black_box(&message)));
    });

    let message = json_message();
    assert_eq!(
        message.body.len(),
        200,
        "the body benchmark uses a 200-byte body"
    );
    let condition = Condition::compile(BODY_CONDITION).expect("compiles");
    assert!(condition.evaluate(&message).routes());
    group.bench_function("body condition with parse, compiled", |b| {
        b.iter(|| condition.evaluate(black_box(&message)));
    });
    group.bench_function("body condition with parse, reference interpreter", |b| {
        b.iter(|| condition.interpret(black_box(&message)));
    });
    group.finish();
}

fn dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    for count in [1, 1_000] {
        let table = RouteTable::new(&module_routes(count), Ttl::Secs(7200)).expect("routes load");
        // The message comes from the last module, so it is not the first route that matches.
        let message = telemetry_message(&format!("m{}", count - 1));
        assert_eq!(table.dispatch(&message).len(), 1);
        let mut out = Vec::with_capacity(4);
        group.bench_function(
            format!("{count} routes with distinct module sources"),
            |b| {
                b.iter(|| {
                    out.clear();
                    table.dispatch_into(black_box(&message), &mut out);
                    out.len()
                });
            },
        );
    }
    group.finish();
}

/// Issue 15: routes on the message's own source, so that the source index does not skip them.
/// Each case names how many routes the table has and how many of them select the message.
fn same_source(c: &mut Criterion) {
    let mut group = c.benchmark_group("same source");
    let cases = [
        (
            "1 equality route, matching",
            equality_routes(1),
            device_id(0),
            1,
        ),
        (
            "1000 equality routes, the last one matching",
            equality_routes(1_000),
            device_id(999),
            1,
        ),
        (
            "1 equality route, none matching",
            equality_routes(1),
            device_id(1_000),
            0,
        ),
        (
            "1000 equality routes, none matching",
            equality_routes(1_000),
            device_id(1_000),
            0,
        ),
        (
            "1000 routes of scale.sh's three shapes, none matching",
            mixed_routes(1_000),
            device_id(1_000),
            0,
        ),
    ];
    for (name, specs, device, matching) in cases {
        let table = RouteTable::new(&specs, Ttl::Secs(7200)).expect("routes load");
        let message = device_message(&device);
        assert_eq!(table.dispatch(&message).len(), matching, "{name}");
        let mut out = Vec::with_capacity(4);
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                table.dispatch_into(black_box(&message), &mut out);
                out.len()
            });
        });
    }
    group.finish();
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(20);
    let specs = module_routes(1_000);
    group.bench_function("1000 routes", |b| {
        b.iter(|| RouteTable::new(black_box(&specs), Ttl::Secs(7200)).expect("routes load"));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = evaluation, dispatch, same_source, compile
}
criterion_main!(benches);
