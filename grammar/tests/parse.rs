//! Table-driven checks of the tokenisation and parsing rules of the spec, sections 2, 3, 6.1.

use grammar::{BinaryOp, ExprKind, Literal, Sink, parse_condition, parse_route};

fn cond(text: &str) -> String {
    parse_condition(text)
        .unwrap_or_else(|e| panic!("{text:?} should parse: {e}"))
        .map_or_else(|| "<empty>".to_owned(), |e| e.to_string())
}

fn cond_err(text: &str) -> String {
    match parse_condition(text) {
        Ok(e) => panic!("{text:?} should not parse, got {e:?}"),
        Err(e) => e.message,
    }
}

#[test]
fn operators_glued_to_identifier_characters_become_identifiers() {
    assert_eq!(cond("a-b"), "a-b");
    assert_eq!(cond("x+1"), "x+1");
    assert_eq!(cond("3-1 = 2"), "(3-1 = 2)");
    assert_eq!(cond("key1!='x'"), "(key1! = 'x')");
    assert_eq!(cond("'a'||'b' = 'ab'"), "('a'||'b' = 'ab')");
    assert_eq!(cond("-undefined"), "-undefined");
    assert_eq!(cond("$a+$b"), "$a+$b");
    assert_eq!(cond("'it''s'"), "'it''s'");
    assert_eq!(cond("5."), "5.");
}

#[test]
fn spaced_operators_are_operators() {
    assert_eq!(cond("'a' || 'b' = 'ab'"), "(('a' || 'b') = 'ab')");
    assert_eq!(cond("10 - 2 - 3 = 5"), "(((10 - 2) - 3) = 5)");
    assert_eq!(cond("1 - -2 = 3"), "((1 - -2) = 3)");
    assert_eq!(cond("- 5"), "(- 5)");
    assert_eq!(cond("2 * 3 % 4 = 2"), "(((2 * 3) % 4) = 2)");
    assert_eq!(cond("a<>b"), "(a <> b)");
    assert_eq!(cond("a!=b"), "(a! = b)");
    assert_eq!(cond("a != b"), "(a != b)");
}

#[test]
fn precedence_follows_the_spec() {
    assert_eq!(cond("NOT a = b"), "((NOT a) = b)");
    assert_eq!(cond("false = 1 > 2"), "(false = (1 > 2))");
    assert_eq!(cond("x ?? 'd' = 'd'"), "(x ?? ('d' = 'd'))");
    assert_eq!(cond("a OR b AND c"), "(a OR (b AND c))");
    assert_eq!(cond("NOT NOT true"), "(NOT (NOT true))");
    assert_eq!(cond("- NOT true"), "(- (NOT true))");
    assert_eq!(cond("a = b = c"), "((a = b) = c)");
}

#[test]
fn keywords_ignore_case_but_literals_do_not() {
    assert_eq!(cond("true AnD false"), "(true AND false)");
    assert_eq!(cond("TRUE"), "TRUE");
    assert!(matches!(
        parse_condition("TRUE").unwrap().unwrap().kind,
        ExprKind::Property(_)
    ));
    assert!(matches!(
        parse_condition("Undefined").unwrap().unwrap().kind,
        ExprKind::Property(_)
    ));
    assert_eq!(cond("order = 'x'"), "(order = 'x')");
    assert_eq!(cond("android"), "android");
    assert_eq!(cond("fromage"), "fromage");
    assert!(parse_condition("from = 'x'").is_err());
}

#[test]
fn numbers_take_every_documented_form() {
    let value = |t: &str| match parse_condition(t).unwrap().unwrap().kind {
        ExprKind::Literal(Literal::Number(n)) => n.value,
        other => panic!("{t}: not a number: {other:?}"),
    };
    assert_eq!(value("42"), Some(42.0));
    assert_eq!(value("-7"), Some(-7.0));
    assert_eq!(value("007"), Some(7.0));
    assert_eq!(value("0x10"), Some(16.0));
    assert_eq!(value("0X1f"), Some(31.0));
    assert_eq!(value(".5"), Some(0.5));
    assert_eq!(value("-1.25"), Some(-1.25));
    assert_eq!(value("1e3"), Some(1000.0));
    assert_eq!(value("1E+5"), Some(100_000.0));
    assert_eq!(value("10e1000"), Some(f64::INFINITY));
    assert_eq!(value("0x1FFFFFFFFFFFFFFFF"), None);
}

#[test]
fn strings_unescape_and_span_lines() {
    let lit = |t: &str| match parse_condition(t).unwrap().unwrap().kind {
        ExprKind::Literal(Literal::String(s)) => s,
        other => panic!("{t}: not a string: {other:?}"),
    };
    assert_eq!(lit(r#""he said \"hi\"""#), "he said \"hi\"");
    assert_eq!(lit(r"'\u0041'"), "A");
    assert_eq!(lit(r"'\\u0041'"), r"\A");
    assert_eq!(lit("'two\nlines'"), "two\nlines");
    assert_eq!(lit("'😀'"), "😀");
}

#[test]
fn system_properties_and_body_paths_are_single_tokens() {
    assert_eq!(cond("$body.a[0].b = 1"), "($body.a[0].b = 1)");
    assert_eq!(cond("{ $x } = 'y'"), "({$x} = 'y')");
    assert!(matches!(
        parse_condition("$").unwrap().unwrap().kind,
        ExprKind::Property(_)
    ));
}

#[test]
fn comments_are_skipped() {
    assert_eq!(cond("/* leading comment */ true"), "true");
    assert_eq!(cond("a /* x */ = /* y */ 'b'"), "(a = 'b')");
    assert_eq!(cond("/* only */"), "<empty>");
    assert_eq!(cond(""), "<empty>");
}

#[test]
fn syntax_errors_say_what_is_wrong() {
    assert_eq!(cond_err("x == 'a'"), "'==' is not an operator; use '='");
    assert_eq!(cond_err("x = 'abc"), "unterminated string");
    assert!(cond_err(r"x = 'a\nb'").starts_with("invalid escape sequence"));
    assert_eq!(cond_err("x = @"), "invalid symbol '@'");
    assert_eq!(cond_err("x ; y"), "invalid symbol ';'");
    assert_eq!(cond_err("(x = 'a'"), "missing closing ')'");
    assert_eq!(cond_err("x = 'a')"), "unmatched closing ')'");
    assert!(cond_err("arr[0] = 1").contains("brackets"));
    assert!(cond_err("x = 'a'AND y = 'b'").starts_with("unexpected"));
    assert!(parse_condition("a b").is_err());
    assert!(parse_condition("a =").is_err());
    assert!(parse_condition("abs(").is_err());
}

#[test]
fn errors_carry_line_and_column() {
    let e = parse_route("FROM /messages/*\nWHERE x == 'a'\nINTO $upstream").unwrap_err();
    assert_eq!((e.span.line, e.span.column), (2, 10));
}

#[test]
fn routes_parse_in_every_form() {
    let r = parse_route("SELECT * FROM /messages/* WHERE a = 'b' INTO $upstream").unwrap();
    assert_eq!(r.source.text, "/messages/*");
    assert_eq!(r.condition.unwrap().text, "a = 'b'");
    assert!(matches!(&r.sink, Sink::System { name, .. } if name == "upstream"));

    let r = parse_route("from / messages / * into $UPSTREAM").unwrap();
    assert_eq!(r.source.text, "/messages/*");
    assert!(r.condition.is_none());

    let r = parse_route(
        r#"FROM /messages/modules/filter/outputs/output1 INTO BrokeredEndpoint("/modules/sink/inputs/input1")"#,
    )
    .unwrap();
    match r.sink {
        Sink::Function { name, address, .. } => {
            assert_eq!(name, "BrokeredEndpoint");
            assert_eq!(address, "/modules/sink/inputs/input1");
        }
        other => panic!("{other:?}"),
    }

    let r =
        parse_route("  FROM /messages   WHERE a = 'b'   AND c = 'd'  INTO  $upstream  ").unwrap();
    assert_eq!(r.condition.unwrap().text, "a = 'b'   AND c = 'd'");

    let r = parse_route("FROM /messages/modules/ab* INTO $upstream").unwrap();
    assert_eq!(r.source.text, "/messages/modules/ab*");
    let r = parse_route("FROM /messages/** INTO $upstream").unwrap();
    assert_eq!(r.source.text, "/messages/**");
}

#[test]
fn a_comment_can_swallow_a_condition() {
    let r = parse_route("FROM /messages/* WHERE x = 'a' /* note */ INTO $upstream").unwrap();
    assert_eq!(r.source.text, "/messages");
    assert!(r.condition.is_none());
    assert_eq!(r.comments.len(), 1);
}

#[test]
fn malformed_routes_are_syntax_errors() {
    for route in [
        "FORM /* INTO $upstream",
        "FROM INTO $upstream",
        "FROM /messages WHERE INTO $upstream",
        "FROM /messages",
        "FROM messages/* INTO $upstream",
        "FROM /messages/ INTO $upstream",
        "FROM /messages INTO upstream",
        "FROM /messages INTO BrokeredEndpoint(/x)",
        "FROM /messages/* INTO \"/modules/m/inputs/i\"",
        "FROM /messages/* INTO BrokeredEndpoint(\"/modules/m/inputs/i\"",
        "SELECT FROM /messages INTO $upstream",
        "FROM /messages/* WHERE x = 'a'AND y = 'b' INTO $upstream",
    ] {
        assert!(parse_route(route).is_err(), "{route:?} should not parse");
    }
}

#[test]
fn tokens_after_the_sink_are_kept_for_a_warning() {
    let r = parse_route("FROM /messages INTO $upstream WHERE x = 'y'").unwrap();
    assert!(r.trailing.is_some());
    assert!(parse_route("FROM /messages INTO $upstream @").is_err());
}

#[test]
fn deep_nesting_is_refused_not_a_crash() {
    let deep = format!("{}true{}", "(".repeat(10_000), ")".repeat(10_000));
    assert!(parse_condition(&deep).is_err());
    let nots = format!("{}true", "NOT ".repeat(10_000));
    assert!(parse_condition(&nots).is_err());
    let chain = vec!["a = 'b'"; 2_000].join(" OR ");
    assert!(parse_condition(&chain).is_err());
    let ok = vec!["a = 'b'"; 50].join(" OR ");
    assert!(parse_condition(&ok).is_ok());
}

#[test]
fn binary_operators_know_their_symbols() {
    assert_eq!(BinaryOp::LtGt.symbol(), "<>");
}
