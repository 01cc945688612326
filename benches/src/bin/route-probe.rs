//! Runs one route engine case many times, for instruction counting under
//! `valgrind --tool=callgrind` (repeatable on a noisy machine, unlike wall time):
//!
//! ```text
//! cargo build --release -p edgehub-benches --bin route-probe
//! valgrind --tool=callgrind target/release/route-probe property-compiled 100000
//! ```
//!
//! Cases: property-compiled, property-reference, body-compiled, body-reference,
//! dispatch-1, dispatch-1000, compile-1000.

use std::hint::black_box;

use edgehub_benches::router_inputs::{
    BODY_CONDITION, PROPERTY_CONDITION, json_message, module_routes, telemetry_message,
};
use router::{Condition, RouteTable, Ttl};

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args
        .next()
        .unwrap_or_else(|| "property-compiled".to_owned());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let property = Condition::compile(PROPERTY_CONDITION).expect("compiles");
    let body = Condition::compile(BODY_CONDITION).expect("compiles");
    let telemetry = telemetry_message("m1");
    let json = json_message();
    let repeat = |once: &dyn Fn() -> bool| (0..n).filter(|_| once()).count();
    let routed = match case.as_str() {
        "property-compiled" => repeat(&|| property.evaluate(black_box(&telemetry)).routes()),
        "property-reference" => repeat(&|| property.interpret(black_box(&telemetry)).routes()),
        "body-compiled" => repeat(&|| body.evaluate(black_box(&json)).routes()),
        "body-reference" => repeat(&|| body.interpret(black_box(&json)).routes()),
        "compile-1000" => {
            let specs = module_routes(1_000);
            repeat(&|| RouteTable::new(black_box(&specs), Ttl::Secs(7200)).is_ok())
        }
        "dispatch-1" | "dispatch-1000" => {
            let count = if case == "dispatch-1" { 1 } else { 1_000 };
            let table =
                RouteTable::new(&module_routes(count), Ttl::Secs(7200)).expect("routes load");
            let message = telemetry_message(&format!("m{}", count - 1));
            repeat(&|| !table.dispatch(black_box(&message)).is_empty())
        }
        other => {
            eprintln!("unknown case {other}");
            std::process::exit(2);
        }
    };
    println!("{case}: {routed} of {n} routed");
}
