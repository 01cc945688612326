//! The reference interpreter: a plain walk over the typed tree with one dynamic value type,
//! written for obviousness rather than speed. It re-parses the body with `serde_json` at every
//! query and allocates freely. Property tests check the compiled code against it, benchmarks
//! measure the compiled code's lead over it, and `--explain` uses it to show the value of every
//! sub-expression.

use grammar::BinaryOp;

use crate::body::{self, BodyPath, Step};
use crate::builtins;
use crate::message::{Message, system};
use crate::text;
use crate::typed::{Func, Node, Type, Typed};
use crate::value::{CmpOp, Outcome};

/// A run-time value of the interpreter.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Undefined (a NaN is undefined too).
    Undefined,
    /// Null.
    Null,
    /// A body path that does not exist: null, except for `is_null`.
    Missing,
    /// A boolean.
    Bool(bool),
    /// A number, never NaN.
    Num(f64),
    /// A string.
    Str(String),
}

impl Value {
    fn num(n: f64) -> Self {
        if n.is_nan() {
            Self::Undefined
        } else {
            Self::Num(n)
        }
    }

    fn tri(b: Option<bool>) -> Self {
        b.map_or(Self::Undefined, Self::Bool)
    }

    fn as_num(&self) -> f64 {
        match self {
            Self::Num(n) => *n,
            _ => f64::NAN,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// How `--explain` shows the value.
    pub fn describe(&self) -> String {
        match self {
            Self::Undefined => "undefined".to_owned(),
            Self::Null => "null".to_owned(),
            Self::Missing => "null (missing in body)".to_owned(),
            Self::Bool(b) => b.to_string(),
            Self::Num(n) => n.to_string(),
            Self::Str(s) => format!("'{s}'"),
        }
    }
}

/// The route decision for a condition's value, by its static type (spec 6.6).
pub fn outcome(root: &Typed, value: &Value) -> Outcome {
    match (root.ty, value) {
        (Type::Bool | Type::Dynamic, Value::Bool(true)) => Outcome::True,
        (Type::Bool | Type::Dynamic, Value::Bool(false)) | (Type::Null, _) => Outcome::False,
        _ => Outcome::Undefined,
    }
}

/// Evaluates a typed expression against a message.
pub fn eval(t: &Typed, m: &Message) -> Value {
    match &t.node {
        Node::Str(s) => Value::Str(s.clone()),
        Node::Num(n) => Value::num(*n),
        Node::Bool(b) => Value::Bool(*b),
        Node::Null => Value::Null,
        Node::Undefined => Value::Undefined,
        Node::AppProperty(name) => string(m.properties.get(name)),
        Node::SysProperty(lookup) => {
            if let Some(key) = &lookup.app_key
                && let Some(v) = m.properties.get(key)
            {
                return Value::Str(v.to_owned());
            }
            string(lookup.keys.iter().find_map(|k| m.system_properties.get(k)))
        }
        Node::Body { path, app_key } => {
            if let Some(key) = app_key
                && let Some(v) = m.properties.get(key)
            {
                return Value::Str(v.to_owned());
            }
            query_body(m, path)
        }
        Node::Neg(a) => Value::num(-eval(a, m).as_num()),
        Node::Not(a) => match (a.ty, eval(a, m)) {
            (Type::Null, _) => Value::Bool(true),
            (_, Value::Bool(b)) => Value::Bool(!b),
            _ => Value::Undefined,
        },
        Node::Binary { op, lhs, rhs } => binary(*op, t.ty, lhs, rhs, m),
        Node::Call { func, args } => call(*func, args, m),
    }
}

fn string(s: Option<&str>) -> Value {
    s.map_or(Value::Undefined, |s| Value::Str(s.to_owned()))
}

fn binary(op: BinaryOp, ty: Type, lhs: &Typed, rhs: &Typed, m: &Message) -> Value {
    let (a, b) = (eval(lhs, m), eval(rhs, m));
    match op {
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => {
            match (a, b) {
                (Value::Num(x), Value::Num(y)) => Value::num(builtins::arithmetic(op, x, y)),
                _ => Value::Undefined,
            }
        }
        BinaryOp::Concat => match (a, b) {
            (Value::Str(x), Value::Str(y)) => Value::Str(x + &y),
            _ => Value::Undefined,
        },
        BinaryOp::And | BinaryOp::Or => logic(op, ty, lhs, rhs, a, b),
        BinaryOp::Coalesce => {
            if a == Value::Undefined {
                b
            } else {
                a
            }
        }
        _ => compare(op, &a, &b),
    }
}

fn logic(op: BinaryOp, ty: Type, lhs: &Typed, rhs: &Typed, a: Value, b: Value) -> Value {
    let and = op == BinaryOp::And;
    if lhs.ty == Type::Dynamic {
        return match (a, b) {
            (Value::Bool(x), Value::Bool(y)) => Value::Bool(if and { x && y } else { x || y }),
            _ => Value::Undefined,
        };
    }
    if ty == Type::Null {
        return Value::Null;
    }
    if lhs.ty == Type::Null {
        return b;
    }
    if rhs.ty == Type::Null {
        return a;
    }
    let known = |v: &Value| match v {
        Value::Bool(x) => Some(*x),
        _ => None,
    };
    let (x, y) = (known(&a), known(&b));
    Value::tri(if and {
        match (x, y) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }
    } else {
        match (x, y) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        }
    })
}

/// Comparisons. Values of different kinds meet only where a body value is involved, and are
/// then ordered by kind: Bool < Number < String < Null.
fn compare(op: BinaryOp, a: &Value, b: &Value) -> Value {
    let rank = |v: &Value| match v {
        Value::Bool(_) => 0,
        Value::Num(_) => 1,
        Value::Str(_) => 2,
        Value::Null | Value::Missing => 3,
        Value::Undefined => 4,
    };
    let ordering = match (a, b) {
        (Value::Undefined, _) | (_, Value::Undefined) => return Value::Undefined,
        (Value::Num(x), Value::Num(y)) => x.partial_cmp(y),
        (Value::Str(x), Value::Str(y)) => Some(text::utf16_cmp(x, y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (x, y) => Some(rank(x).cmp(&rank(y))),
    };
    let Some(ordering) = ordering else {
        return Value::Undefined;
    };
    Value::Bool(CmpOp::of(op).holds(ordering))
}

fn call(func: Func, args: &[Typed], m: &Message) -> Value {
    let values: Vec<Value> = args.iter().map(|a| eval(a, m)).collect();
    let ty = args[0].ty;
    let v = &values[0];
    match func {
        Func::Abs
        | Func::Ceiling
        | Func::Exp
        | Func::Floor
        | Func::Sign
        | Func::Sqrt
        | Func::Square => Value::num(builtins::math(func, v.as_num())),
        Func::Power => Value::num(builtins::power(v.as_num(), values[1].as_num())),
        Func::AsNumber => match v {
            Value::Num(n) => Value::Num(*n),
            Value::Str(s) => Value::num(text::parse_dotnet_number(s).unwrap_or(f64::NAN)),
            _ => Value::Undefined,
        },
        Func::IsBool => match (ty, v) {
            (Type::Bool | Type::Dynamic, Value::Undefined) => Value::Undefined,
            (Type::Bool | Type::Dynamic, v) => Value::Bool(matches!(v, Value::Bool(_))),
            _ => Value::Bool(false),
        },
        Func::IsNumber => Value::Bool(
            matches!(ty, Type::Number | Type::Dynamic)
                && matches!(v, Value::Num(n) if n.is_finite()),
        ),
        Func::IsString => {
            Value::Bool(matches!(ty, Type::String | Type::Dynamic) && matches!(v, Value::Str(_)))
        }
        Func::IsDefined => Value::Bool(*v != Value::Undefined),
        Func::IsNull => match (ty, v) {
            (Type::Null, _) => Value::Bool(true),
            (Type::Dynamic, Value::Undefined) => Value::Undefined,
            (Type::Dynamic, v) => Value::Bool(*v != Value::Missing),
            _ => Value::Bool(false),
        },
        Func::Concat => {
            let mut out = String::new();
            for v in &values {
                match v.as_str() {
                    Some(s) => out.push_str(s),
                    None => return Value::Undefined,
                }
            }
            Value::Str(out)
        }
        Func::Length => v.as_str().map_or(Value::Undefined, |s| {
            #[allow(clippy::cast_precision_loss)]
            Value::Num(text::utf16_len(s) as f64)
        }),
        Func::Lower => v.as_str().map_or(Value::Undefined, |s| {
            Value::Str(text::lower(s).into_owned())
        }),
        Func::Upper => v.as_str().map_or(Value::Undefined, |s| {
            Value::Str(text::upper(s).into_owned())
        }),
        Func::Substring => {
            let Some(s) = v.as_str() else {
                return Value::Undefined;
            };
            let part = match values.get(2) {
                None => builtins::substring_from(s, values[1].as_num()),
                Some(count) => builtins::substring_range(s, values[1].as_num(), count.as_num()),
            };
            part.map_or(Value::Undefined, |p| Value::Str(p.into_owned()))
        }
        Func::IndexOf => match (v.as_str(), values[1].as_str()) {
            (Some(s), Some(f)) => Value::Num(text::utf16_index_of(s, f)),
            _ => Value::Undefined,
        },
        Func::Contains | Func::StartsWith | Func::EndsWith => {
            match (v.as_str(), values[1].as_str()) {
                (Some(s), Some(f)) => Value::Bool(builtins::text_test(func, s, f)),
                _ => Value::Undefined,
            }
        }
    }
}

/// A body query the slow way: decode, parse the whole body with `serde_json`, walk the path.
fn query_body(m: &Message, path: &BodyPath) -> Value {
    let sys = &m.system_properties;
    let json_type = sys
        .get(system::CONTENT_TYPE)
        .is_some_and(|t| t.eq_ignore_ascii_case("application/json"));
    let Some(encoding) = sys.get(system::CONTENT_ENCODING).filter(|_| json_type) else {
        return Value::Undefined;
    };
    let Some(text) = body::decode(&m.body, encoding) else {
        return Value::Undefined;
    };
    let Ok(root @ serde_json::Value::Object(_)) = serde_json::from_str::<serde_json::Value>(&text)
    else {
        return Value::Undefined;
    };
    let mut node = &root;
    for step in path.steps() {
        let next = match (step, node) {
            (Step::Key(k), serde_json::Value::Object(map)) => map.get(k),
            (Step::Index(i), serde_json::Value::Array(items)) => items.get(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return Value::Missing,
        }
    }
    match node {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => Value::num(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) if body::looks_like_date(s) => Value::Undefined,
        serde_json::Value::String(s) => Value::Str(s.clone()),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => Value::Undefined,
    }
}

/// One node of an explanation: a sub-expression, as written, and its value for the message.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The sub-expression's text.
    pub expr: String,
    /// Its 1-based line and column in the condition.
    pub line: usize,
    /// See `line`.
    pub column: usize,
    /// Its static type.
    pub ty: Type,
    /// Its value, as shown to a person (`true`, `undefined`, `'abc'`, `42`).
    pub value: String,
    /// The sub-expressions it is made of.
    pub children: Vec<Explanation>,
}

/// Evaluates every sub-expression of `t` and returns the tree of values.
pub fn explain(t: &Typed, m: &Message, text: &str) -> Explanation {
    let children = match &t.node {
        Node::Neg(a) | Node::Not(a) => vec![explain(a, m, text)],
        Node::Binary { lhs, rhs, .. } => vec![explain(lhs, m, text), explain(rhs, m, text)],
        Node::Call { args, .. } => args.iter().map(|a| explain(a, m, text)).collect(),
        _ => Vec::new(),
    };
    Explanation {
        expr: text
            .get(t.span.start..t.span.end)
            .unwrap_or_default()
            .to_owned(),
        line: t.span.line,
        column: t.span.column,
        ty: t.ty,
        value: eval(t, m).describe(),
        children,
    }
}
