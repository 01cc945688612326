//! From text to [`crate::ast`]: runs the pest grammar, then builds the tree.

use pest::Parser as _;
use pest::error::InputLocation;
use pest::iterators::Pair;

use crate::ast::{
    BinaryOp, Condition, Expr, ExprKind, Literal, Number, Route, Sink, Source, Span, UnaryOp,
};
use crate::error::SyntaxError;
use crate::lexical;

#[derive(pest_derive::Parser)]
#[grammar = "route.pest"]
struct RouteParser;

/// The longest route or condition text we accept. Real routes are a few hundred bytes.
pub const MAX_TEXT_LEN: usize = 64 * 1024;
/// The deepest expression tree we accept; every later pass may recurse this deep.
pub const MAX_EXPR_DEPTH: usize = 128;
/// The deepest nesting of parentheses and braces we accept.
pub const MAX_NESTING: usize = 64;

/// Parses a whole route.
///
/// # Errors
///
/// A [`SyntaxError`] with the place of the first token the grammar cannot accept.
pub fn parse_route(text: &str) -> Result<Route, SyntaxError> {
    let lines = LineIndex::new(text);
    check_limits(text, &lines)?;
    let mut pairs =
        RouteParser::parse(Rule::route, text).map_err(|e| describe_pest_error(text, &lines, &e))?;
    let route = pairs.next().expect("the route rule yields one pair");
    Builder {
        text,
        lines: &lines,
    }
    .route(route)
}

/// Parses a condition on its own, as the reference compiles the text after `WHERE`.
/// An empty condition (only whitespace and comments) gives `None`.
///
/// # Errors
///
/// A [`SyntaxError`] with the place of the first token the grammar cannot accept.
pub fn parse_condition(text: &str) -> Result<Option<Expr>, SyntaxError> {
    let lines = LineIndex::new(text);
    check_limits(text, &lines)?;
    let mut pairs = RouteParser::parse(Rule::condition_only, text)
        .map_err(|e| describe_pest_error(text, &lines, &e))?;
    let top = pairs.next().expect("the condition rule yields one pair");
    let builder = Builder {
        text,
        lines: &lines,
    };
    match top.into_inner().find(|p| p.as_rule() == Rule::expr) {
        Some(expr) => builder.expr(expr).map(Some),
        None => Ok(None),
    }
}

fn check_limits(text: &str, lines: &LineIndex) -> Result<(), SyntaxError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(SyntaxError::new(
            format!(
                "text is {} bytes long; at most {MAX_TEXT_LEN} are accepted",
                text.len()
            ),
            lines.span(0, 0),
        ));
    }
    // Count nesting outside quoted text; this bounds the parser's recursion before it starts.
    let mut depth = 0usize;
    let mut quote = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '{') => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(SyntaxError::new(
                        format!("parentheses nest more than {MAX_NESTING} deep"),
                        lines.span(i, i + 1),
                    ));
                }
            }
            (None, ')' | '}') => depth = depth.saturating_sub(1),
            (None, _) => {}
        }
    }
    Ok(())
}

/// Turns pest pairs into the syntax tree.
struct Builder<'t> {
    text: &'t str,
    lines: &'t LineIndex,
}

impl Builder<'_> {
    fn span(&self, pair: &Pair<'_, Rule>) -> Span {
        let s = pair.as_span();
        self.lines.span(s.start(), s.end())
    }

    fn route(&self, route: Pair<'_, Rule>) -> Result<Route, SyntaxError> {
        let mut source = None;
        let mut condition = None;
        let mut sink = None;
        let mut trailing = None;
        let mut comments: Vec<Span> = route
            .clone()
            .into_inner()
            .flatten()
            .filter(|p| p.as_rule() == Rule::COMMENT)
            .map(|p| self.span(&p))
            .collect();
        for pair in route.into_inner() {
            match pair.as_rule() {
                Rule::source => source = Some(self.source(pair)),
                Rule::condition => {
                    let expr_pair = pair
                        .into_inner()
                        .find(|p| p.as_rule() == Rule::expr)
                        .expect("a condition holds an expression");
                    let expr = self.expr(expr_pair)?;
                    condition = Some(Condition {
                        text: self.text[expr.span.start..expr.span.end].to_owned(),
                        expr,
                    });
                }
                Rule::sink => sink = Some(self.sink(pair)),
                Rule::trailing => trailing = Some(self.span(&pair)),
                _ => {}
            }
        }
        comments.sort_by_key(|s| s.start);
        comments.dedup();
        Ok(Route {
            source: source.expect("the grammar requires a source"),
            condition,
            sink: sink.expect("the grammar requires a sink"),
            trailing,
            comments,
        })
    }

    fn source(&self, pair: Pair<'_, Rule>) -> Source {
        let span = self.span(&pair);
        let text = pair
            .into_inner()
            .filter(|p| p.as_rule() != Rule::COMMENT)
            .map(|p| p.as_str().to_owned())
            .collect();
        Source { text, span }
    }

    fn sink(&self, pair: Pair<'_, Rule>) -> Sink {
        let span = self.span(&pair);
        let inner = pair
            .into_inner()
            .find(|p| p.as_rule() != Rule::COMMENT)
            .expect("a sink holds a token");
        match inner.as_rule() {
            Rule::sys_prop => Sink::System {
                name: inner.as_str()[1..].to_owned(),
                span,
            },
            _ => {
                let mut parts = inner.into_inner().filter(|p| p.as_rule() != Rule::COMMENT);
                let name = parts
                    .next()
                    .expect("function sink name")
                    .as_str()
                    .to_owned();
                let string = parts.next().expect("function sink argument");
                let address = string
                    .into_inner()
                    .next()
                    .map(|body| body.as_str().to_owned())
                    .unwrap_or_default();
                Sink::Function {
                    name,
                    address,
                    span,
                }
            }
        }
    }

    /// Builds an expression from the flat `prefix* primary (infix prefix* primary)*` sequence
    /// by precedence climbing. Unary operators bind tighter than every binary operator.
    fn expr(&self, pair: Pair<'_, Rule>) -> Result<Expr, SyntaxError> {
        let mut items = Vec::new();
        for p in pair.into_inner() {
            let item = match p.as_rule() {
                Rule::COMMENT => continue,
                Rule::neg => Item::Prefix(UnaryOp::Neg, self.span(&p)),
                Rule::kw_not => Item::Prefix(UnaryOp::Not, self.span(&p)),
                rule => match binary_op(rule) {
                    Some(op) => Item::Infix(op, self.span(&p)),
                    None => Item::Operand(self.primary(p)?),
                },
            };
            items.push(item);
        }
        let mut items = items.into_iter().peekable();
        let expr = self.climb(&mut items, 0)?;
        debug_assert!(items.next().is_none(), "every item is consumed");
        Ok(expr)
    }

    fn climb(
        &self,
        items: &mut std::iter::Peekable<std::vec::IntoIter<Item>>,
        min_precedence: u8,
    ) -> Result<Expr, SyntaxError> {
        let mut lhs = self.unary(items)?;
        while let Some(&Item::Infix(op, op_span)) = items.peek() {
            if op.precedence() < min_precedence {
                break;
            }
            items.next();
            let rhs = self.climb(items, op.precedence() + 1)?;
            let span = self.lines.span(lhs.span.start, rhs.span.end);
            lhs = self.checked_depth(Expr {
                kind: ExprKind::Binary {
                    op,
                    op_span,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
                span,
            })?;
        }
        Ok(lhs)
    }

    fn unary(
        &self,
        items: &mut std::iter::Peekable<std::vec::IntoIter<Item>>,
    ) -> Result<Expr, SyntaxError> {
        // Iterative, so that a long run of prefixes cannot exhaust the stack before the depth
        // check sees it.
        let mut prefixes = Vec::new();
        loop {
            match items
                .next()
                .expect("the grammar puts an operand after every operator")
            {
                Item::Prefix(op, op_span) => {
                    prefixes.push((op, op_span));
                    if prefixes.len() > MAX_EXPR_DEPTH {
                        return Err(SyntaxError::new(
                            format!("expression nests more than {MAX_EXPR_DEPTH} levels deep"),
                            op_span,
                        ));
                    }
                }
                Item::Operand(mut expr) => {
                    for (op, op_span) in prefixes.into_iter().rev() {
                        let span = self.lines.span(op_span.start, expr.span.end);
                        expr = self.checked_depth(Expr {
                            kind: ExprKind::Unary {
                                op,
                                operand: Box::new(expr),
                            },
                            span,
                        })?;
                    }
                    return Ok(expr);
                }
                Item::Infix(..) => {
                    unreachable!("the grammar never starts an operand with an infix")
                }
            }
        }
    }

    fn checked_depth(&self, expr: Expr) -> Result<Expr, SyntaxError> {
        // Children were checked when they were built, so only this level can overflow, and
        // `depth` recurses at most MAX_EXPR_DEPTH + 1 levels.
        if expr.depth() > MAX_EXPR_DEPTH {
            return Err(SyntaxError::new(
                format!("expression nests more than {MAX_EXPR_DEPTH} levels deep"),
                expr.span,
            ));
        }
        Ok(expr)
    }

    fn primary(&self, pair: Pair<'_, Rule>) -> Result<Expr, SyntaxError> {
        let span = self.span(&pair);
        let kind = match pair.as_rule() {
            Rule::lit_true => ExprKind::Literal(Literal::True),
            Rule::lit_false => ExprKind::Literal(Literal::False),
            Rule::lit_null => ExprKind::Literal(Literal::Null),
            Rule::lit_undefined => ExprKind::Literal(Literal::Undefined),
            Rule::number => ExprKind::Literal(Literal::Number(number(pair))),
            Rule::string => {
                let raw = pair.into_inner().next().map_or("", |body| body.as_str());
                ExprKind::Literal(Literal::String(lexical::unescape(raw)))
            }
            Rule::ident => ExprKind::Property(pair.as_str().to_owned()),
            Rule::sys_prop => ExprKind::SystemProperty {
                name: pair.as_str()[1..].to_owned(),
                braced: false,
            },
            Rule::braced_sys_prop => {
                let inner = pair
                    .into_inner()
                    .find(|p| p.as_rule() == Rule::sys_prop)
                    .expect("braces hold a system property");
                ExprKind::SystemProperty {
                    name: inner.as_str()[1..].to_owned(),
                    braced: true,
                }
            }
            Rule::call => {
                let mut inner = pair.into_inner().filter(|p| p.as_rule() != Rule::COMMENT);
                let name_pair = inner.next().expect("a call has a name");
                let name_span = self.span(&name_pair);
                let args = inner.map(|a| self.expr(a)).collect::<Result<Vec<_>, _>>()?;
                let expr = Expr {
                    kind: ExprKind::Call {
                        name: name_pair.as_str().to_owned(),
                        name_span,
                        args,
                    },
                    span,
                };
                return self.checked_depth(expr);
            }
            Rule::paren => {
                let inner = pair
                    .into_inner()
                    .find(|p| p.as_rule() == Rule::expr)
                    .expect("parentheses hold an expression");
                let mut expr = self.expr(inner)?;
                // The parenthesised expression spans its parentheses.
                expr.span = span;
                return Ok(expr);
            }
            rule => unreachable!("not a primary: {rule:?}"),
        };
        Ok(Expr { kind, span })
    }
}

enum Item {
    Prefix(UnaryOp, Span),
    Infix(BinaryOp, Span),
    Operand(Expr),
}

fn binary_op(rule: Rule) -> Option<BinaryOp> {
    Some(match rule {
        Rule::star => BinaryOp::Mul,
        Rule::divide => BinaryOp::Div,
        Rule::percent => BinaryOp::Rem,
        Rule::plus => BinaryOp::Add,
        Rule::minus => BinaryOp::Sub,
        Rule::op_concat => BinaryOp::Concat,
        Rule::op_lt => BinaryOp::Lt,
        Rule::op_le => BinaryOp::Le,
        Rule::op_gt => BinaryOp::Gt,
        Rule::op_ge => BinaryOp::Ge,
        Rule::op_eq => BinaryOp::Eq,
        Rule::op_ne => BinaryOp::Ne,
        Rule::op_ltgt => BinaryOp::LtGt,
        Rule::kw_and => BinaryOp::And,
        Rule::kw_or => BinaryOp::Or,
        Rule::op_coalesce => BinaryOp::Coalesce,
        _ => return None,
    })
}

fn number(pair: Pair<'_, Rule>) -> Number {
    let text = pair.as_str().to_owned();
    let inner = pair.into_inner().next().expect("a number has a form");
    let value = match inner.as_rule() {
        Rule::hex => lexical::hex_value(&text[2..]),
        _ => text.parse::<f64>().ok(),
    };
    Number { text, value }
}

/// Maps byte offsets to 1-based lines and columns.
#[derive(Debug)]
pub(crate) struct LineIndex {
    text: String,
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            text: text.to_owned(),
            starts,
        }
    }

    pub(crate) fn span(&self, start: usize, end: usize) -> Span {
        let line = self.starts.partition_point(|&s| s <= start);
        let line_start = self.starts[line - 1];
        let column = self.text[line_start..start].chars().count() + 1;
        Span {
            start,
            end,
            line,
            column,
        }
    }
}

/// Explains where and why pest stopped, in the words of the spec's error table.
fn describe_pest_error(
    text: &str,
    lines: &LineIndex,
    error: &pest::error::Error<Rule>,
) -> SyntaxError {
    let pos = match error.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((p, _)) => p,
    };
    let expected = match &error.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<String> = positives.iter().filter_map(|r| rule_name(*r)).collect();
            names.sort();
            names.dedup();
            names
        }
        pest::error::ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let rest = &text[pos..];
    let token = lexical::token_text(rest);
    let span = lines.span(
        pos,
        pos + token
            .len()
            .max(rest.chars().next().map_or(0, char::len_utf8)),
    );
    let message = lexical::explain_failure(text, pos, token, &expected);
    SyntaxError {
        message,
        span,
        expected,
    }
}

fn rule_name(rule: Rule) -> Option<String> {
    let name = match rule {
        Rule::kw_select => "SELECT",
        Rule::kw_from => "FROM",
        Rule::kw_where => "WHERE",
        Rule::kw_into => "INTO",
        Rule::kw_and => "AND",
        Rule::kw_or => "OR",
        Rule::kw_not => "NOT",
        Rule::string => "a string",
        Rule::number => "a number",
        Rule::ident => "an identifier",
        Rule::sys_prop => "a system property ($name)",
        Rule::sink | Rule::function_sink => "a sink ($upstream or BrokeredEndpoint(\"...\"))",
        Rule::source | Rule::slash => "'/'",
        Rule::segment => "a path segment",
        Rule::expr | Rule::condition | Rule::call | Rule::braced_sys_prop | Rule::paren => {
            "an expression"
        }
        Rule::lit_true | Rule::lit_false | Rule::lit_null | Rule::lit_undefined => "a literal",
        Rule::star => "'*'",
        Rule::EOI => "end of input",
        Rule::op_eq
        | Rule::op_ne
        | Rule::op_ltgt
        | Rule::op_le
        | Rule::op_ge
        | Rule::op_lt
        | Rule::op_gt => "a comparison",
        Rule::plus
        | Rule::minus
        | Rule::divide
        | Rule::percent
        | Rule::op_concat
        | Rule::op_coalesce => "an operator",
        Rule::neg => "'-'",
        _ => return None,
    };
    Some(name.to_owned())
}
