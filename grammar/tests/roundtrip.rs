//! Property tests: printing a tree and parsing it back gives the same tree, and no input makes
//! the parser panic.

use grammar::ast::Number;
use grammar::{BinaryOp, Expr, ExprKind, Literal, Span, UnaryOp, parse_condition, parse_route};
use proptest::prelude::*;

fn node(kind: ExprKind) -> Expr {
    Expr {
        kind,
        span: Span::default(),
    }
}

fn is_reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    ["select", "from", "where", "into", "and", "or", "not"].contains(&lower.as_str())
        || ["true", "false", "null", "undefined"].contains(&name)
        // `e5` is a REAL token.
        || (lower.starts_with('e') && lower.len() > 1 && lower[1..].trim_start_matches(['+', '-']).bytes().all(|b| b.is_ascii_digit()))
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_.-]{0,6}[a-zA-Z0-9_]?".prop_filter("not a keyword or literal", |n| {
        !is_reserved(n) && !n.ends_with('.')
    })
}

fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i32>().prop_map(|i| i.to_string()),
        (-1.0e6f64..1.0e6).prop_map(|f| f.to_string()),
        (0u32..0xFFFF).prop_map(|h| format!("0x{h:X}")),
    ]
    .prop_map(|text| {
        let value = match text.strip_prefix("0x") {
            Some(digits) => grammar::lexical::hex_value(digits),
            None => text.parse().ok(),
        };
        Number { text, value }
    })
}

fn string() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 '\"\\\\\n😀ü*/()=]{0,8}".prop_filter("no \\u escape", |s| {
        !s.contains("\\u") && !s.contains("\\U")
    })
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        string().prop_map(|s| node(ExprKind::Literal(Literal::String(s)))),
        number().prop_map(|n| node(ExprKind::Literal(Literal::Number(n)))),
        Just(node(ExprKind::Literal(Literal::True))),
        Just(node(ExprKind::Literal(Literal::False))),
        Just(node(ExprKind::Literal(Literal::Null))),
        Just(node(ExprKind::Literal(Literal::Undefined))),
        name().prop_map(|n| node(ExprKind::Property(n))),
        (name(), any::<bool>())
            .prop_map(|(name, braced)| node(ExprKind::SystemProperty { name, braced })),
        "[a-z]{1,4}(\\[[0-9]\\])?".prop_map(|p| node(ExprKind::SystemProperty {
            name: format!("body.{p}"),
            braced: false
        })),
    ]
}

const BINARY: [BinaryOp; 16] = [
    BinaryOp::Mul,
    BinaryOp::Div,
    BinaryOp::Rem,
    BinaryOp::Add,
    BinaryOp::Sub,
    BinaryOp::Concat,
    BinaryOp::Lt,
    BinaryOp::Le,
    BinaryOp::Gt,
    BinaryOp::Ge,
    BinaryOp::Eq,
    BinaryOp::Ne,
    BinaryOp::LtGt,
    BinaryOp::And,
    BinaryOp::Or,
    BinaryOp::Coalesce,
];

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(5, 40, 3, |inner| {
        prop_oneof![
            (
                prop::sample::select(BINARY.to_vec()),
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(op, l, r)| node(ExprKind::Binary {
                    op,
                    op_span: Span::default(),
                    lhs: Box::new(l),
                    rhs: Box::new(r)
                })),
            (prop::bool::ANY, inner.clone()).prop_map(|(not, e)| node(ExprKind::Unary {
                op: if not { UnaryOp::Not } else { UnaryOp::Neg },
                operand: Box::new(e),
            })),
            (
                prop::sample::select(vec!["abs", "IS_DEFINED", "concat", "Substring"]),
                prop::collection::vec(inner, 0..3)
            )
                .prop_map(|(name, args)| node(ExprKind::Call {
                    name: name.to_owned(),
                    name_span: Span::default(),
                    args
                })),
        ]
    })
}

proptest! {
    #[test]
    fn printing_then_parsing_gives_the_same_tree(e in expr()) {
        let text = e.to_string();
        let parsed = parse_condition(&text)
            .unwrap_or_else(|err| panic!("{text:?} does not parse: {err}"))
            .expect("not empty");
        prop_assert_eq!(parsed.without_spans(), e.without_spans(), "text: {}", text);
        prop_assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn any_text_parses_or_fails_without_panicking(text in "\\PC{0,60}") {
        let _ = parse_condition(&text);
        let _ = parse_route(&text);
    }

    #[test]
    fn route_like_text_parses_or_fails_without_panicking(
        parts in prop::collection::vec(prop::sample::select(vec![
            "FROM", "WHERE", "INTO", "SELECT", "*", "/", "/*", "*/", "messages", "$upstream", "(", ")", "'",
            "\"", "a", "=", "==", "<>", "AND", "NOT", "-", "5", "0x", "1e", ".", "$body.a[0]", "[", "]",
            "BrokeredEndpoint", "\"/modules/m/inputs/i\"", "||", "??", ",", "{", "}", "@", "\\", " ", "\n",
        ]), 0..25)
    ) {
        let text = parts.concat();
        let _ = parse_route(&text);
        let _ = parse_condition(&text);
        let spaced = parts.join(" ");
        let _ = parse_route(&spaced);
        let _ = parse_condition(&spaced);
    }
}
