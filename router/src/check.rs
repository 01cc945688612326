//! Static type checking: from the syntax tree to the [`Typed`] tree, rejecting every operand
//! and argument type the reference rejects (spec 6.5 and 6.7), even in code that could never
//! run.

use grammar::{BinaryOp, Expr, ExprKind, Literal, Span, UnaryOp};

use crate::body::BodyPath;
use crate::error::CompileError;
use crate::typed::{Func, Node, SysLookup, Type, Typed, system_keys};

/// Type-checks a condition.
///
/// # Errors
///
/// The first operand, argument or name the reference would reject, with its place.
pub fn check(expr: &Expr) -> Result<Typed, CompileError> {
    let (ty, node) = match &expr.kind {
        ExprKind::Literal(literal) => literal_node(literal, expr.span)?,
        ExprKind::Property(name) => (Type::String, Node::AppProperty(name.clone())),
        ExprKind::SystemProperty { name, braced } => name_node(name, *braced, expr.span)?,
        ExprKind::Unary { op, operand } => {
            let operand = check(operand)?;
            let ty = unary_type(*op, operand.ty).ok_or_else(|| {
                CompileError::new(
                    format!(
                        "Invalid operand to unary operator '{}': have '{}', expected {}",
                        op.symbol(),
                        operand.ty,
                        match op {
                            UnaryOp::Neg => "'number'",
                            UnaryOp::Not => "'bool', 'null' or a body value",
                        }
                    ),
                    expr.span,
                )
            })?;
            let operand = Box::new(operand);
            let node = match op {
                UnaryOp::Neg => Node::Neg(operand),
                UnaryOp::Not => Node::Not(operand),
            };
            (ty, node)
        }
        ExprKind::Binary {
            op,
            op_span,
            lhs,
            rhs,
        } => {
            let lhs = check(lhs)?;
            let rhs = check(rhs)?;
            let ty = binary_type(*op, lhs.ty, rhs.ty).ok_or_else(|| {
                CompileError::new(
                    format!(
                        "Invalid operands to binary operator '{}': have '{}' and '{}'{}",
                        op.symbol(),
                        lhs.ty,
                        rhs.ty,
                        binary_hint(*op, lhs.ty, rhs.ty)
                    ),
                    *op_span,
                )
            })?;
            (
                ty,
                Node::Binary {
                    op: *op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
            )
        }
        ExprKind::Call {
            name,
            name_span,
            args,
        } => {
            let func = Func::lookup(name).ok_or_else(|| {
                CompileError::new(format!("Invalid built-in function '{name}'"), *name_span)
            })?;
            let args = args.iter().map(check).collect::<Result<Vec<_>, _>>()?;
            let types: Vec<Type> = args.iter().map(|a| a.ty).collect();
            let ty = func.signature(&types).ok_or_else(|| {
                let shown: Vec<&str> = types.iter().map(|t| t.name()).collect();
                CompileError::new(
                    format!(
                        "Invalid arguments to built-in function '{name}': {}({})",
                        func.name(),
                        shown.join(", ")
                    ),
                    expr.span,
                )
            })?;
            (ty, Node::Call { func, args })
        }
    };
    Ok(Typed {
        ty,
        node,
        span: expr.span,
    })
}

fn literal_node(literal: &Literal, span: Span) -> Result<(Type, Node), CompileError> {
    Ok(match literal {
        Literal::String(s) => (Type::String, Node::Str(s.clone())),
        Literal::Number(n) => match n.value {
            Some(v) => (Type::Number, Node::Num(v)),
            // A hex literal beyond 64 bits is an undefined number.
            None if n
                .text
                .get(..2)
                .is_some_and(|p| p.eq_ignore_ascii_case("0x")) =>
            {
                (Type::Number, Node::Num(f64::NAN))
            }
            None => {
                return Err(CompileError::new(
                    format!("Invalid number literal '{}'", n.text),
                    span,
                ));
            }
        },
        Literal::True => (Type::Bool, Node::Bool(true)),
        Literal::False => (Type::Bool, Node::Bool(false)),
        Literal::Null => (Type::Null, Node::Null),
        Literal::Undefined => (Type::Undefined, Node::Undefined),
    })
}

/// `$name`, `{$name}`, `$body.path`, `{$body.path}` (spec 6.3).
fn name_node(name: &str, braced: bool, span: Span) -> Result<(Type, Node), CompileError> {
    let app_key = (!braced).then(|| format!("${name}"));
    if let Some(path) = name
        .get(..5)
        .filter(|prefix| prefix.eq_ignore_ascii_case("body."))
        .map(|_| &name[5..])
    {
        let path_text = path;
        let path = BodyPath::parse(path_text).map_err(|reason| {
            CompileError::new(
                format!("Invalid body query '$body.{path_text}': {reason}"),
                span,
            )
        })?;
        return Ok((Type::Dynamic, Node::Body { path, app_key }));
    }
    if name.contains(['[', ']']) {
        return Ok((Type::Undefined, Node::Undefined));
    }
    Ok((
        Type::String,
        Node::SysProperty(SysLookup {
            app_key,
            keys: system_keys(name),
        }),
    ))
}

fn unary_type(op: UnaryOp, operand: Type) -> Option<Type> {
    match (op, operand) {
        (UnaryOp::Neg, Type::Number) => Some(Type::Number),
        (UnaryOp::Not, Type::Bool | Type::Null | Type::Dynamic) => Some(Type::Bool),
        _ => None,
    }
}

/// The result type of a binary operator, or `None` when the operands are rejected.
pub(crate) fn binary_type(op: BinaryOp, lhs: Type, rhs: Type) -> Option<Type> {
    use Type::{Bool, Dynamic, Null, Number, String, Undefined};
    let numeric = |t: Type| matches!(t, Number | Dynamic);
    let textual = |t: Type| matches!(t, String | Dynamic);
    let logical = |t: Type| matches!(t, Bool | Null | Undefined);
    match op {
        BinaryOp::Mul | BinaryOp::Div | BinaryOp::Add | BinaryOp::Sub => {
            (numeric(lhs) && numeric(rhs)).then_some(if lhs == Number && rhs == Number {
                Number
            } else {
                Dynamic
            })
        }
        BinaryOp::Rem => (lhs == Number && rhs == Number).then_some(Number),
        BinaryOp::Concat => (textual(lhs) && textual(rhs)).then_some(String),
        BinaryOp::Lt
        | BinaryOp::Le
        | BinaryOp::Gt
        | BinaryOp::Ge
        | BinaryOp::Eq
        | BinaryOp::Ne
        | BinaryOp::LtGt => lhs.compatible(rhs).then_some(Bool),
        BinaryOp::And | BinaryOp::Or => {
            if lhs == Dynamic {
                // Quirk: a body value on the left accepts anything on the right.
                return Some(Bool);
            }
            if !logical(lhs) || !logical(rhs) {
                return None;
            }
            match (lhs, rhs) {
                (Null, Undefined) | (Undefined, Null) => None,
                (Null, Null) => Some(Null),
                (Null, _) | (_, Null) if op == BinaryOp::And => Some(Null),
                _ => Some(Bool),
            }
        }
        BinaryOp::Coalesce => lhs
            .compatible(rhs)
            .then_some(if lhs == rhs { lhs } else { Dynamic }),
    }
}

fn binary_hint(op: BinaryOp, lhs: Type, rhs: Type) -> &'static str {
    match op {
        _ if op.is_comparison() && (lhs, rhs) == (Type::String, Type::Number) => {
            " (properties are strings: compare as_number(property) with a number)"
        }
        _ if op.is_comparison() && (lhs, rhs) == (Type::Number, Type::String) => {
            " (properties are strings: compare a number with as_number(property))"
        }
        BinaryOp::Add if lhs == Type::String || rhs == Type::String => {
            " ('+' is numeric; concatenate strings with '||' or concat())"
        }
        BinaryOp::And | BinaryOp::Or if rhs == Type::Dynamic => {
            " (a body value is accepted only on the left of AND/OR)"
        }
        _ => "",
    }
}
