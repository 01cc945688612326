//! Warnings for routes that load but hit a quirk of the language (spec, "Decisions"): the route
//! behaves as in the reference, and the warning says what it does and what was likely meant.

use grammar::{BinaryOp, Expr, ExprKind, Route, Span};
use serde::Serialize;

use crate::condition::Condition;
use crate::endpoint::Endpoint;
use crate::source::SourceFilter;
use crate::text;
use crate::typed::{Func, Node, Type, Typed};

/// A construct that loads but probably does not do what its author meant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// 1-based line in the route text.
    pub line: usize,
    /// 1-based column in the route text.
    pub column: usize,
    /// What the construct does.
    pub message: String,
    /// What was likely meant, when there is a good guess.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<String>,
}

impl Warning {
    fn new(span: Span, message: String, suggestion: Option<String>) -> Self {
        Self {
            line: span.line,
            column: span.column,
            message,
            suggestion,
        }
    }
}

/// All warnings for a loaded route, in text order.
pub(crate) fn route(
    text: &str,
    ast: &Route,
    source: &SourceFilter,
    condition: &Condition,
    endpoint: &Endpoint,
    irregular_address: bool,
) -> Vec<Warning> {
    let mut out = Vec::new();
    for comment in &ast.comments {
        comment_warning(text, comment, ast, &mut out);
    }
    source_warnings(ast, source, &mut out);
    if let Some(c) = &ast.condition {
        expr_warnings(&c.expr, &mut out);
    }
    if let Some(typed) = condition.typed() {
        typed_warnings(typed, text, &mut out);
    }
    if irregular_address && let Endpoint::ModuleInput { module, input } = endpoint {
        let span = match &ast.sink {
            grammar::Sink::Function { span, .. } | grammar::Sink::System { span, .. } => *span,
        };
        out.push(Warning::new(
            span,
            format!(
                "the address is read as module '{module}', input '{input}': only its second \
                 and fourth parts are used, and empty parts are accepted"
            ),
            Some(format!(
                "BrokeredEndpoint(\"/modules/{module}/inputs/{input}\")"
            )),
        ));
    }
    if let Some(span) = ast.trailing {
        out.push(Warning::new(
            span,
            format!(
                "'{}' after the sink is ignored",
                text.get(span.start..span.end).unwrap_or_default()
            ),
            None,
        ));
    }
    out.sort_by_key(|w| (w.line, w.column));
    out
}

fn comment_warning(text: &str, comment: &Span, ast: &Route, out: &mut Vec<Warning>) {
    let body = text.get(comment.start..comment.end).unwrap_or_default();
    let swallows_keyword = body.split(|c: char| !c.is_ascii_alphabetic()).any(|w| {
        ["where", "into", "from", "select"]
            .iter()
            .any(|k| w.eq_ignore_ascii_case(k))
    });
    let glued_to_source = comment.start == ast.source.span.end;
    if swallows_keyword || glued_to_source {
        out.push(Warning::new(
            *comment,
            format!(
                "'/*' starts a comment that runs to the first '*/', so {body:?} is ignored{}",
                if ast.condition.is_none() && swallows_keyword {
                    " and the route has no condition"
                } else {
                    ""
                }
            ),
            glued_to_source.then(|| {
                "if '/*' was meant as the source wildcard, remove the comment or keep '*/' out \
                 of the route"
                    .to_owned()
            }),
        ));
    }
}

fn source_warnings(ast: &Route, source: &SourceFilter, out: &mut Vec<Warning>) {
    let span = ast.source.span;
    let segments: Vec<&str> = ast
        .source
        .text
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(last) = segments.last()
        && last.len() > 1
        && last.ends_with('*')
        && !last.trim_end_matches('*').is_empty()
    {
        let stem = last.trim_end_matches('*');
        out.push(Warning::new(
            span,
            format!(
                "'{last}' matches '{stem}' only: a '*' glued to a segment is dropped, it is not \
                 a prefix wildcard"
            ),
            Some(format!(
                "list each source, e.g. FROM {}/* ",
                source.prefix().trim_end_matches('/')
            )),
        ));
    }
    if segments.len() > 1 && segments[..segments.len() - 1].contains(&"*") {
        out.push(Warning::new(
            span,
            "a '*' before the last segment is a literal '*': this source matches no message"
                .to_owned(),
            Some("use a source per module, e.g. FROM /messages/modules/m1/outputs/*".to_owned()),
        ));
    }
    let first = source.segments().first().map(String::as_str);
    let known = matches!(first, None | Some("messages" | "twinchangenotifications"));
    let events = source.segments().len() >= 2 && source.segments()[..2] == ["messages", "events"];
    if !known || events {
        out.push(Warning::new(
            span,
            format!("no message on the edge has a source under '{}'", source.prefix()),
            Some("device telemetry is /messages, module outputs /messages/modules/{id}/outputs/{output}".to_owned()),
        ));
    }
}

/// Warnings that need only the syntax tree: names that glue operator characters.
fn expr_warnings(expr: &Expr, out: &mut Vec<Warning>) {
    match &expr.kind {
        ExprKind::Property(name) => {
            if let Some(w) = glued_name_warning(name, expr.span) {
                out.push(w);
            }
        }
        ExprKind::SystemProperty { name, .. } if name.contains('$') => out.push(Warning::new(
            expr.span,
            format!("'${name}' is read as one system property name"),
            Some(format!(
                "put spaces around the operator: {}",
                spaced(&format!("${name}"))
            )),
        )),
        ExprKind::Call { args, .. } => args.iter().for_each(|a| expr_warnings(a, out)),
        ExprKind::Unary { operand, .. } => expr_warnings(operand, out),
        ExprKind::Binary { lhs, rhs, .. } => {
            expr_warnings(lhs, out);
            expr_warnings(rhs, out);
        }
        _ => {}
    }
}

fn glued_name_warning(name: &str, span: Span) -> Option<Warning> {
    if ["true", "false", "null", "undefined"]
        .iter()
        .any(|l| name.eq_ignore_ascii_case(l))
    {
        return Some(Warning::new(
            span,
            format!("'{name}' is an application property name: literals are lower case"),
            Some(name.to_ascii_lowercase()),
        ));
    }
    if name.starts_with('\'') {
        return Some(Warning::new(
            span,
            format!("{name} is read as one property name, not a string"),
            Some(if name.contains("''") {
                "quotes are escaped with a backslash: 'it\\'s'".to_owned()
            } else {
                format!("put a space after the closing quote: {}", spaced(name))
            }),
        ));
    }
    let glued = name.contains(['!', '|', '+', '*', '%', '&', '^', '~'])
        || name.starts_with('-')
        || name.starts_with(|c: char| c.is_ascii_digit())
        || name.ends_with('.');
    glued.then(|| {
        let suggestion = match name.strip_suffix('!') {
            Some(stem) => format!("{stem} != ..."),
            None => spaced(name),
        };
        Warning::new(
            span,
            format!(
                "'{name}' is read as one application property name: operators need spaces \
                 around them when they touch name characters"
            ),
            Some(suggestion),
        )
    })
}

/// `a||b` -> `a || b`: spaces around operator characters, for suggestions.
fn spaced(name: &str) -> String {
    let mut out = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '|' if chars.peek() == Some(&'|') => {
                chars.next();
                out.push_str(" || ");
            }
            '+' | '*' | '%' | '-' if !out.is_empty() => {
                out.push(' ');
                out.push(c);
                out.push(' ');
            }
            '\'' if !out.is_empty() && out.matches('\'').count() % 2 == 1 => {
                out.push(c);
                out.push(' ');
            }
            c => out.push(c),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Warnings that need types: string comparisons of numbers, body quirks.
fn typed_warnings(t: &Typed, text: &str, out: &mut Vec<Warning>) {
    let snippet = |t: &Typed| {
        text.get(t.span.start..t.span.end)
            .unwrap_or_default()
            .to_owned()
    };
    match &t.node {
        Node::Binary { op, lhs, rhs } => {
            if matches!(
                op,
                BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge
            ) && lhs.ty == Type::String
                && rhs.ty == Type::String
                && (numeric_literal(lhs) || numeric_literal(rhs))
            {
                let convert = |side: &Typed| match &side.node {
                    Node::Str(s) => s.trim().to_owned(),
                    _ => format!("as_number({})", snippet(side)),
                };
                out.push(Warning::new(
                    t.span,
                    format!(
                        "'{}' compares strings character by character ('10' < '9' is true), not numbers",
                        snippet(t)
                    ),
                    Some(format!("{} {} {}", convert(lhs), op.symbol(), convert(rhs))),
                ));
            }
            if op.is_comparison() {
                for (body, other) in [(lhs, rhs), (rhs, lhs)] {
                    if matches!(body.node, Node::Body { .. })
                        && let Node::Str(s) = &other.node
                        && crate::body::looks_like_date(s)
                    {
                        out.push(Warning::new(
                            t.span,
                            format!(
                                "date strings in the body are undefined (quirk): '{}' never routes",
                                snippet(t)
                            ),
                            None,
                        ));
                    }
                }
            }
            if matches!(op, BinaryOp::And | BinaryOp::Or) && lhs.ty == Type::Dynamic {
                out.push(Warning::new(
                    t.span,
                    format!(
                        "with a body value on the left, {} is undefined unless both sides are \
                         booleans at run time (a missing field makes the whole expression undefined)",
                        op.symbol()
                    ),
                    Some(format!("{} = true {} ...", snippet(lhs), op.symbol())),
                ));
            }
            typed_warnings(lhs, text, out);
            typed_warnings(rhs, text, out);
        }
        Node::Call { func, args } => {
            if *func == Func::IsNull && args[0].ty == Type::Dynamic {
                let arg = snippet(&args[0]);
                out.push(Warning::new(
                    t.span,
                    format!(
                        "is_null({arg}) is true for every value found in the body (quirk), not \
                         only for JSON null"
                    ),
                    Some(format!("{arg} = null AND is_null({arg})")),
                ));
            }
            args.iter().for_each(|a| typed_warnings(a, text, out));
        }
        Node::Neg(a) | Node::Not(a) => typed_warnings(a, text, out),
        _ => {}
    }
}

fn numeric_literal(t: &Typed) -> bool {
    matches!(&t.node, Node::Str(s) if !s.trim().is_empty() && text::parse_dotnet_number(s).is_some())
}

#[cfg(test)]
mod tests {
    use crate::CompiledRoute;

    fn warnings(route: &str) -> Vec<String> {
        CompiledRoute::compile(route)
            .unwrap_or_else(|e| panic!("{route}: {e}"))
            .warnings()
            .iter()
            .map(|w| w.message.clone())
            .collect()
    }

    #[test]
    fn clean_routes_have_no_warnings() {
        for route in [
            "FROM /messages/* INTO $upstream",
            "FROM / messages / * INTO $upstream",
            "FROM /messages/* WHERE $body.a * 2 > $body.b / 3 INTO $upstream",
            "FROM /messages/modules/filter/outputs/output1 INTO BrokeredEndpoint(\"/modules/sink/inputs/input1\")",
            "FROM /* INTO BrokeredEndpoint(\"modules/m/inputs/i/\")",
            "  FROM /messages   WHERE a = 'b'   AND c = 'd'  INTO  $upstream  ",
            "FROM /messages/* WHERE $body.arr[0] = 10 INTO $upstream",
            "FROM /messages/* WHERE a-b = 'x' AND as_number(num) > 30 INTO $upstream",
            "FROM /twinChangeNotifications INTO $upstream",
        ] {
            assert_eq!(warnings(route), Vec::<String>::new(), "{route}");
        }
    }

    #[test]
    fn quirks_are_explained() {
        for (route, needle) in [
            (
                "FROM /messages/* WHERE x = 'a' /* note */ INTO $upstream",
                "comment",
            ),
            ("FROM /messages/* WHERE key1!='x' INTO $upstream", "key1!"),
            (
                "FROM /messages/* WHERE 'a'||'b' = 'ab' INTO $upstream",
                "one property name",
            ),
            ("FROM /messages/* WHERE TRUE INTO $upstream", "lower case"),
            (
                "FROM /messages/* WHERE x = 'it''s' INTO $upstream",
                "not a string",
            ),
            (
                "FROM /messages/* WHERE num > '100' INTO $upstream",
                "compares strings",
            ),
            (
                "FROM /messages/* WHERE is_null($body.x) INTO $upstream",
                "is_null",
            ),
            (
                "FROM /messages/* WHERE $body.x OR true INTO $upstream",
                "booleans",
            ),
            (
                "FROM /messages/modules/ab* INTO $upstream",
                "prefix wildcard",
            ),
            (
                "FROM /messages/*/outputs/* INTO $upstream",
                "matches no message",
            ),
            ("FROM /messages/events INTO $upstream", "no message"),
            (
                "FROM /* INTO BrokeredEndpoint(\"/devices/m/foo/i\")",
                "second and fourth",
            ),
            ("FROM /messages INTO $upstream WHERE x = 'y'", "ignored"),
            (
                "FROM /messages/* WHERE $body.ts = '2017-03-09T00:00:00.000Z' INTO $upstream",
                "date",
            ),
        ] {
            let found = warnings(route);
            assert!(
                found.iter().any(|w| w.contains(needle)),
                "{route}: {found:?}"
            );
        }
    }
}
