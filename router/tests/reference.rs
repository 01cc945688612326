//! Property test: the compiled code agrees with the reference interpreter on generated,
//! well-typed conditions and generated messages. And no route text makes loading or
//! evaluation panic.

use proptest::prelude::*;
use router::{CompiledRoute, Condition, Message};

fn pick(options: &[&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(options.to_vec())
        .prop_map(str::to_owned)
        .boxed()
}

fn call1(name: &'static str, a: BoxedStrategy<String>) -> BoxedStrategy<String> {
    a.prop_map(move |a| format!("{name}({a})")).boxed()
}

fn op2(
    a: BoxedStrategy<String>,
    ops: &[&'static str],
    b: BoxedStrategy<String>,
) -> BoxedStrategy<String> {
    (a, prop::sample::select(ops.to_vec()), b)
        .prop_map(|(a, op, b)| format!("({a} {op} {b})"))
        .boxed()
}

/// Expressions of static type string.
fn string_expr(depth: u32) -> BoxedStrategy<String> {
    let leaf = pick(&[
        "'abc'",
        "'ABC'",
        "''",
        "'1,000'",
        "' 12 '",
        "'😀x'",
        "'ß'",
        "a",
        "b",
        "A",
        "missing",
        "$s1",
        "{$s1}",
        "$connectionModuleId",
        "$correlationId",
        "$dollar",
        "{$dollar}",
    ]);
    if depth == 0 {
        return leaf;
    }
    let s = || string_expr(depth - 1);
    let n = || number_expr(depth - 1);
    prop_oneof![
        3 => leaf,
        1 => (s(), s()).prop_map(|(x, y)| format!("concat({x}, {y})")),
        1 => call1("lower", s()),
        1 => call1("upper", s()),
        1 => (s(), n()).prop_map(|(x, i)| format!("substring({x}, {i})")),
        1 => (s(), n(), n()).prop_map(|(x, i, j)| format!("substring({x}, {i}, {j})")),
        1 => op2(s(), &["??", "||"], s()),
        1 => op2(s(), &["||"], dyn_expr(depth - 1)),
    ]
    .boxed()
}

/// Expressions of static type number.
fn number_expr(depth: u32) -> BoxedStrategy<String> {
    let leaf = pick(&[
        "0", "1", "-2", "2.5", "3", "0x10", "1e3", ".5", "(1/0)", "(0/0)",
    ]);
    if depth == 0 {
        return leaf;
    }
    let n = || number_expr(depth - 1);
    let s = || string_expr(depth - 1);
    prop_oneof![
        3 => leaf,
        2 => op2(n(), &["+", "-", "*", "/", "%", "??"], n()),
        1 => n().prop_map(|x| format!("(- {x})")).boxed(),
        1 => (pick(&["abs", "ceiling", "floor", "exp", "sign", "sqrt", "square"]), n())
            .prop_map(|(f, x)| format!("{f}({x})")),
        1 => (n(), n()).prop_map(|(x, y)| format!("power({x}, {y})")),
        1 => call1("as_number", s()),
        1 => call1("as_number", dyn_expr(depth - 1)),
        1 => call1("length", s()),
        1 => (s(), s()).prop_map(|(x, y)| format!("index_of({x}, {y})")),
    ]
    .boxed()
}

/// Expressions of static type dynamic (body values).
fn dyn_expr(depth: u32) -> BoxedStrategy<String> {
    let leaf = pick(&[
        "$body.n",
        "$body.s",
        "$body.b",
        "$body.f",
        "$body.z",
        "$body.arr[1]",
        "$body.arr[9]",
        "$body.obj",
        "$body.obj.k",
        "$body.missing",
        "{$body.n}",
        "$body.ts",
        "$body.d",
    ]);
    if depth == 0 {
        return leaf;
    }
    let d = || dyn_expr(depth - 1);
    prop_oneof![
        3 => leaf,
        1 => op2(d(), &["+", "-", "*", "/"], number_expr(depth - 1)),
        1 => op2(number_expr(depth - 1), &["+", "*"], d()),
        1 => op2(d(), &["??"], prop_oneof![number_expr(0), string_expr(0), d()].boxed()),
    ]
    .boxed()
}

/// Expressions of static type bool (plus the null and undefined literals where allowed).
fn bool_expr(depth: u32) -> BoxedStrategy<String> {
    let leaf = pick(&["true", "false", "undefined"]);
    if depth == 0 {
        return leaf;
    }
    let b = || bool_expr(depth - 1);
    let s = || string_expr(depth - 1);
    let n = || number_expr(depth - 1);
    let d = || dyn_expr(depth - 1);
    let cmp = &["=", "!=", "<>", "<", "<=", ">", ">="];
    let concrete = || prop_oneof![s(), n(), b(), Just("null".to_owned()), d()].boxed();
    prop_oneof![
        2 => leaf,
        2 => op2(s(), cmp, s()),
        2 => op2(n(), cmp, n()),
        1 => op2(b(), cmp, b()),
        2 => op2(d(), cmp, concrete()),
        1 => op2(concrete(), cmp, d()),
        2 => op2(b(), &["AND", "OR"], b()),
        1 => op2(pick(&["null"]), &["AND", "OR"], b()),
        1 => op2(d(), &["AND", "OR"], concrete()),
        1 => b().prop_map(|x| format!("(NOT {x})")).boxed(),
        1 => d().prop_map(|x| format!("(NOT {x})")).boxed(),
        1 => op2(b(), &["??"], b()),
        2 => (pick(&["is_bool", "is_number", "is_string", "is_defined", "is_null"]),
              prop_oneof![s(), n(), b(), d(), pick(&["null", "undefined"])])
            .prop_map(|(f, x)| format!("{f}({x})")),
        1 => (pick(&["contains", "starts_with", "ends_with"]), s(), prop_oneof![s(), d()])
            .prop_map(|(f, x, y)| format!("{f}({x}, {y})")),
    ]
    .boxed()
}

fn condition() -> BoxedStrategy<String> {
    prop_oneof![
        8 => bool_expr(3),
        1 => dyn_expr(2),
        1 => string_expr(2),
        1 => number_expr(2),
        1 => Just("null".to_owned()),
    ]
    .boxed()
}

fn message() -> impl Strategy<Value = Message> {
    let value = prop::sample::select(vec![
        "", "1", "abc", "ABC", "2.5", " 12 ", "1,000", "😀x", "ß", "-0",
    ]);
    let bodies = prop::sample::select(vec![
        r#"{"n": 5, "s": "abc", "b": true, "f": false, "z": null, "arr": [1, 2.5, "x"], "obj": {"k": "v"}, "ts": "2017-03-09T00:00:00Z", "d": -0.5}"#,
        r#"{"n": "5", "s": 3, "b": "true", "arr": [], "obj": null}"#,
        r#"{"n": 1e3, "s": "a\u00df\n", "b": false, "n": 7}"#,
        r#"[1, 2]"#,
        r#"{"n": 5"#,
        "",
        r#"{"s": "😀", "d": "2017-03-09T00:00:00.000Z"}"#,
    ]);
    let content_type = prop::sample::select(vec![
        Some("application/json"),
        Some("Application/JSON"),
        Some("text/plain"),
        None,
    ]);
    let encoding = prop::sample::select(vec![
        Some("utf-8"),
        Some("UTF-8"),
        Some("utf-16"),
        Some("latin1"),
        None,
    ]);
    (
        prop::collection::vec(
            (
                prop::sample::select(vec!["a", "b", "A", "$s1", "$body.n", "$dollar"]),
                value.clone(),
            ),
            0..5,
        ),
        prop::collection::vec(
            (
                prop::sample::select(vec!["s1", "connectionModuleId", "cid", "dollar"]),
                value,
            ),
            0..4,
        ),
        bodies,
        content_type,
        encoding,
    )
        .prop_map(|(props, sys, body, ct, enc)| {
            let mut m = Message::default();
            for (k, v) in props {
                m.properties.insert(k, v);
            }
            for (k, v) in sys {
                m.system_properties.insert(k, v);
            }
            if let Some(ct) = ct {
                m.system_properties.insert("contentType", ct);
            }
            if let Some(enc) = enc {
                m.system_properties.insert("contentEncoding", enc);
            }
            m.body = if enc == Some("utf-16") {
                body.encode_utf16()
                    .flat_map(u16::to_le_bytes)
                    .collect::<Vec<u8>>()
                    .into()
            } else {
                body.as_bytes().to_vec().into()
            };
            m
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn compiled_code_agrees_with_the_reference_interpreter(text in condition(), messages in prop::collection::vec(message(), 1..4)) {
        let Ok(condition) = Condition::compile(&text) else {
            // A few generated combinations are ill-typed on purpose (e.g. `NOT null`-like
            // shapes); they must be rejected by both paths alike, which compile() is.
            return Ok(());
        };
        for m in &messages {
            prop_assert_eq!(condition.evaluate(m), condition.interpret(m), "condition: {}\nmessage: {:?}", text, m);
        }
    }

    #[test]
    fn loading_and_evaluating_any_route_never_panics(text in "\\PC{0,80}", m in message()) {
        if let Ok(route) = CompiledRoute::compile(&text) {
            let _ = route.routes(&m);
            let _ = route.condition().interpret(&m);
        }
        if let Ok(condition) = Condition::compile(&text) {
            let _ = condition.evaluate(&m);
            let _ = condition.explain(&m);
        }
    }
}

#[test]
fn generated_conditions_mostly_compile() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = condition();
    let total = 500;
    let compiled = (0..total)
        .filter(|_| Condition::compile(&strategy.new_tree(&mut runner).unwrap().current()).is_ok())
        .count();
    assert!(
        compiled * 10 >= total * 9,
        "only {compiled} of {total} generated conditions compile"
    );
}
