//! The compiled form of a condition, and its evaluation.
//!
//! A condition compiles to code specialised by static type: [`BoolCode`] yields a three-valued
//! boolean, [`NumCode`] a double (NaN is undefined), [`StrCode`] an optional string borrowed
//! from the message or the program, [`DynCode`] a body value. There are no run-time type tests
//! beyond what a body value needs, no name resolution (aliases, app-over-system precedence and
//! body paths are settled at compile time), constants are folded, comparisons against a constant
//! have their own instructions, and `AND`/`OR` short-circuit. The body is parsed lazily, once
//! per message, by the evaluation context ([`Cx`]) shared by all routes.

use std::borrow::Cow;
use std::cell::OnceCell;

use grammar::BinaryOp;

use crate::body::{Body, BodyPath};
use crate::builtins;
use crate::message::{Message, PropKey};
use crate::text;
use crate::typed::Func;
use crate::value::{CmpOp, Dyn, Outcome, Tri, compare_dyn, compare_numbers};

/// Evaluation context for one message: the message and its body, parsed on first use.
#[derive(Debug)]
pub struct Cx<'a> {
    message: &'a Message,
    body: OnceCell<Option<Body<'a>>>,
}

impl<'a> Cx<'a> {
    /// A context for `message`; nothing is parsed yet.
    pub fn new(message: &'a Message) -> Self {
        Self {
            message,
            body: OnceCell::new(),
        }
    }

    /// The message.
    pub fn message(&self) -> &'a Message {
        self.message
    }

    /// The parsed body, if the message has a queryable one. Parsed at most once.
    pub fn body(&self) -> Option<&Body<'a>> {
        self.body.get_or_init(|| Body::parse(self.message)).as_ref()
    }

    /// Whether the body has been parsed (for tests of laziness).
    pub fn body_parsed(&self) -> bool {
        self.body.get().is_some()
    }

    fn app(&self, key: &PropKey) -> Option<&'a str> {
        self.message.properties.get_key(key)
    }

    fn dollar_app(&self, key: &PropKey) -> Option<&'a str> {
        self.message.properties.get_dollar(key)
    }

    fn sys(&self, key: &PropKey) -> Option<&'a str> {
        self.message.system_properties.get_key(key)
    }
}

/// A compiled expression of any static type.
#[derive(Debug, Clone)]
pub(crate) enum Code {
    Bool(BoolCode),
    Num(NumCode),
    Str(StrCode),
    Dyn(DynCode),
    /// Static `null`: always the value null.
    Null,
    /// Static `undefined`: always undefined.
    Undefined,
}

/// Tests a body value with one of the `is_*` functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DynTest {
    Bool,
    Number,
    String,
    Defined,
    Null,
}

/// Code of static type bool.
#[derive(Debug, Clone)]
pub(crate) enum BoolCode {
    Const(Tri),
    Not(Box<BoolCode>),
    And(Box<BoolCode>, Box<BoolCode>),
    Or(Box<BoolCode>, Box<BoolCode>),
    Coalesce(Box<BoolCode>, Box<BoolCode>),
    StrCmp(CmpOp, StrCode, StrCode),
    StrCmpConst(CmpOp, StrCode, Box<str>),
    /// A property compared with a constant: the most common condition, in one instruction.
    PropCmpConst(CmpOp, Lookup, Box<str>),
    NumCmp(CmpOp, NumCode, NumCode),
    NumCmpConst(CmpOp, NumCode, f64),
    BoolCmp(CmpOp, Box<BoolCode>, Box<BoolCode>),
    DynCmp(CmpOp, DynCode, DynCode),
    DynCmpConst(CmpOp, DynCode, Dyn<'static>),
    /// `AND`/`OR` with a body value on the left: defined only when both sides are booleans.
    DynLogic(BinaryOp, DynCode, DynCode),
    DynNot(DynCode),
    DefinedStr(StrCode),
    DefinedNum(NumCode),
    DefinedBool(Box<BoolCode>),
    /// `is_number` of a static number: finite.
    FiniteNum(NumCode),
    /// `is_bool` of a static bool: true, or undefined when it is undefined.
    BoolIsBool(Box<BoolCode>),
    DynTest(DynTest, DynCode),
    Text(Func, StrArg, StrArg),
}

/// Code of static type number; NaN is undefined.
#[derive(Debug, Clone)]
pub(crate) enum NumCode {
    Const(f64),
    Neg(Box<NumCode>),
    Arith(BinaryOp, Box<NumCode>, Box<NumCode>),
    Math(Func, Box<NumArg>),
    Power(Box<NumArg>, Box<NumArg>),
    /// `as_number` of a string.
    Parse(Box<StrCode>),
    /// `as_number` of a body value: numbers pass, strings are parsed.
    DynAsNumber(Box<DynCode>),
    Length(Box<StrArg>),
    IndexOf(Box<StrArg>, Box<StrArg>),
    Coalesce(Box<NumCode>, Box<NumCode>),
}

/// Code of static type string; `None` is undefined.
#[derive(Debug, Clone)]
pub(crate) enum StrCode {
    Const(Option<Box<str>>),
    Prop(Lookup),
    Concat(Vec<StrArg>),
    Lower(Box<StrArg>),
    Upper(Box<StrArg>),
    Substring(Box<StrArg>, NumArg, Option<NumArg>),
    Coalesce(Box<StrCode>, Box<StrCode>),
}

/// A property read. Two equal lookups read the same property of every message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Lookup {
    /// An application property (identifier).
    App(PropKey),
    /// `$name`: the application property `app_key` if present, else the first system key
    /// found.
    Sys {
        app_key: Option<PropKey>,
        keys: Box<[PropKey]>,
    },
}

impl Lookup {
    pub(crate) fn get<'a>(&self, cx: &Cx<'a>) -> Option<&'a str> {
        match self {
            Self::App(key) => cx.app(key),
            Self::Sys { app_key, keys } => {
                if let Some(v) = app_key.as_ref().and_then(|k| cx.dollar_app(k)) {
                    return Some(v);
                }
                keys.iter().find_map(|k| cx.sys(k))
            }
        }
    }
}

/// Code of static type dynamic.
#[derive(Debug, Clone)]
pub(crate) enum DynCode {
    Const(Dyn<'static>),
    /// A body query, shadowed by the application property `app_key` when present.
    Body {
        path: BodyPath,
        app_key: Option<PropKey>,
    },
    FromStr(Box<StrCode>),
    FromNum(Box<NumCode>),
    FromBool(Box<BoolCode>),
    Arith(BinaryOp, Box<DynCode>, Box<DynCode>),
    Coalesce(Box<DynCode>, Box<DynCode>),
}

/// An argument that accepts a string or a body value (`s|d` in the spec).
#[derive(Debug, Clone)]
pub(crate) enum StrArg {
    Str(StrCode),
    Dyn(DynCode),
}

/// An argument that accepts a number or a body value (`n|d` in the spec).
#[derive(Debug, Clone)]
pub(crate) enum NumArg {
    Num(NumCode),
    Dyn(DynCode),
}

impl Code {
    /// The route decision for the value of a whole condition (spec 6.6).
    pub(crate) fn outcome<'a>(&'a self, cx: &'a Cx<'_>) -> Outcome {
        match self {
            Self::Bool(code) => code.eval(cx).into(),
            Self::Null => Outcome::False,
            Self::Dyn(code) => match code.eval(cx) {
                Dyn::Bool(b) => Tri::from_bool(b).into(),
                _ => Outcome::Undefined,
            },
            Self::Num(_) | Self::Str(_) | Self::Undefined => Outcome::Undefined,
        }
    }

    /// Whether this code reads nothing from the message.
    pub(crate) fn is_const(&self) -> bool {
        match self {
            Self::Bool(c) => matches!(c, BoolCode::Const(_)),
            Self::Num(c) => matches!(c, NumCode::Const(_)),
            Self::Str(c) => matches!(c, StrCode::Const(_)),
            Self::Dyn(c) => matches!(c, DynCode::Const(_)),
            Self::Null | Self::Undefined => true,
        }
    }
}

impl BoolCode {
    pub(crate) fn eval<'a>(&'a self, cx: &'a Cx<'_>) -> Tri {
        match self {
            Self::Const(t) => *t,
            Self::Not(a) => a.eval(cx).not(),
            Self::And(a, b) => match a.eval(cx) {
                Tri::False => Tri::False,
                left => left.and(b.eval(cx)),
            },
            Self::Or(a, b) => match a.eval(cx) {
                Tri::True => Tri::True,
                left => left.or(b.eval(cx)),
            },
            Self::Coalesce(a, b) => match a.eval(cx) {
                Tri::Undefined => b.eval(cx),
                defined => defined,
            },
            Self::StrCmp(op, a, b) => match (a.eval(cx), b.eval(cx)) {
                (Some(x), Some(y)) => Tri::from_bool(op.holds(text::utf16_cmp(&x, &y))),
                _ => Tri::Undefined,
            },
            Self::StrCmpConst(op, a, c) => match a.eval(cx) {
                Some(x) => compare_with_constant(*op, &x, c),
                None => Tri::Undefined,
            },
            Self::PropCmpConst(op, lookup, c) => match lookup.get(cx) {
                Some(x) => compare_with_constant(*op, x, c),
                None => Tri::Undefined,
            },
            Self::NumCmp(op, a, b) => compare_numbers(*op, a.eval(cx), b.eval(cx)),
            Self::NumCmpConst(op, a, c) => compare_numbers(*op, a.eval(cx), *c),
            Self::BoolCmp(op, a, b) => match (a.eval(cx).known(), b.eval(cx).known()) {
                (Some(x), Some(y)) => Tri::from_bool(op.holds(x.cmp(&y))),
                _ => Tri::Undefined,
            },
            Self::DynCmp(op, a, b) => compare_dyn(*op, &a.eval(cx), &b.eval(cx)),
            Self::DynCmpConst(op, a, c) => compare_dyn(*op, &a.eval(cx), c),
            Self::DynLogic(op, a, b) => {
                let Dyn::Bool(x) = a.eval(cx) else {
                    return Tri::Undefined;
                };
                let Dyn::Bool(y) = b.eval(cx) else {
                    return Tri::Undefined;
                };
                Tri::from_bool(if *op == BinaryOp::And { x && y } else { x || y })
            }
            Self::DynNot(a) => match a.eval(cx) {
                Dyn::Bool(x) => Tri::from_bool(!x),
                _ => Tri::Undefined,
            },
            Self::DefinedStr(a) => Tri::from_bool(a.eval(cx).is_some()),
            Self::DefinedNum(a) => Tri::from_bool(!a.eval(cx).is_nan()),
            Self::DefinedBool(a) => Tri::from_bool(a.eval(cx) != Tri::Undefined),
            Self::FiniteNum(a) => Tri::from_bool(a.eval(cx).is_finite()),
            Self::BoolIsBool(a) => match a.eval(cx) {
                Tri::Undefined => Tri::Undefined,
                _ => Tri::True,
            },
            Self::DynTest(test, a) => dyn_test(*test, &a.eval(cx)),
            Self::Text(func, s, fragment) => match (s.eval(cx), fragment.eval(cx)) {
                (Some(s), Some(f)) => Tri::from_bool(builtins::text_test(*func, &s, &f)),
                _ => Tri::Undefined,
            },
        }
    }
}

/// A string compared with a constant; equality of short strings is cheaper inline than
/// through `memcmp`.
fn compare_with_constant(op: CmpOp, x: &str, c: &str) -> Tri {
    let equal = || text::same_bytes(x.as_bytes(), c.as_bytes());
    match op {
        CmpOp::Eq => Tri::from_bool(equal()),
        CmpOp::Ne => Tri::from_bool(!equal()),
        _ => Tri::from_bool(op.holds(text::utf16_cmp(x, c))),
    }
}

/// `is_*` of a body value (spec 6.7).
pub(crate) fn dyn_test(test: DynTest, value: &Dyn<'_>) -> Tri {
    match (test, value) {
        (DynTest::Defined, v) => Tri::from_bool(v.is_defined()),
        (DynTest::Number, v) => Tri::from_bool(matches!(v, Dyn::Number(n) if n.is_finite())),
        (DynTest::String, v) => Tri::from_bool(matches!(v, Dyn::Str(_))),
        (_, Dyn::Undefined) => Tri::Undefined,
        (DynTest::Bool, v) => Tri::from_bool(matches!(v, Dyn::Bool(_))),
        // Quirk: true for every value found in the body, false only for a missing path.
        (DynTest::Null, v) => Tri::from_bool(!matches!(v, Dyn::Missing)),
    }
}

impl NumCode {
    pub(crate) fn eval<'a>(&'a self, cx: &'a Cx<'_>) -> f64 {
        match self {
            Self::Const(n) => *n,
            Self::Neg(a) => -a.eval(cx),
            Self::Arith(op, a, b) => builtins::arithmetic(*op, a.eval(cx), b.eval(cx)),
            Self::Math(func, a) => builtins::math(*func, a.eval(cx)),
            Self::Power(a, b) => builtins::power(a.eval(cx), b.eval(cx)),
            Self::Parse(a) => a
                .eval(cx)
                .and_then(|s| text::parse_dotnet_number(&s))
                .unwrap_or(f64::NAN),
            Self::DynAsNumber(a) => match a.eval(cx) {
                Dyn::Number(n) => n,
                Dyn::Str(s) => text::parse_dotnet_number(&s).unwrap_or(f64::NAN),
                _ => f64::NAN,
            },
            #[allow(clippy::cast_precision_loss)]
            Self::Length(a) => a.eval(cx).map_or(f64::NAN, |s| text::utf16_len(&s) as f64),
            Self::IndexOf(a, b) => match (a.eval(cx), b.eval(cx)) {
                (Some(s), Some(f)) => text::utf16_index_of(&s, &f),
                _ => f64::NAN,
            },
            Self::Coalesce(a, b) => {
                let x = a.eval(cx);
                if x.is_nan() { b.eval(cx) } else { x }
            }
        }
    }
}

impl StrCode {
    pub(crate) fn eval<'a>(&'a self, cx: &'a Cx<'_>) -> Option<Cow<'a, str>> {
        match self {
            Self::Const(s) => s.as_deref().map(Cow::Borrowed),
            Self::Prop(lookup) => lookup.get(cx).map(Cow::Borrowed),
            Self::Concat(parts) => {
                let mut out = String::new();
                for part in parts {
                    out.push_str(&part.eval(cx)?);
                }
                Some(Cow::Owned(out))
            }
            Self::Lower(a) => Some(match a.eval(cx)? {
                Cow::Borrowed(s) => text::lower(s),
                Cow::Owned(s) => Cow::Owned(text::lower(&s).into_owned()),
            }),
            Self::Upper(a) => Some(match a.eval(cx)? {
                Cow::Borrowed(s) => text::upper(s),
                Cow::Owned(s) => Cow::Owned(text::upper(&s).into_owned()),
            }),
            Self::Substring(s, start, count) => {
                let s = s.eval(cx)?;
                let start = start.eval(cx);
                let part = match count {
                    None => builtins::substring_from(&s, start)?,
                    Some(count) => builtins::substring_range(&s, start, count.eval(cx))?,
                };
                Some(Cow::Owned(part.into_owned()))
            }
            Self::Coalesce(a, b) => a.eval(cx).or_else(|| b.eval(cx)),
        }
    }
}

impl DynCode {
    pub(crate) fn eval<'a>(&'a self, cx: &'a Cx<'_>) -> Dyn<'a> {
        match self {
            Self::Const(d) => borrow_dyn(d),
            Self::Body { path, app_key } => {
                if let Some(v) = app_key.as_ref().and_then(|k| cx.dollar_app(k)) {
                    return Dyn::Str(Cow::Borrowed(v));
                }
                cx.body().map_or(Dyn::Undefined, |body| body.query(path))
            }
            Self::FromStr(a) => Dyn::string(a.eval(cx)),
            Self::FromNum(a) => Dyn::number(a.eval(cx)),
            Self::FromBool(a) => Dyn::tri(a.eval(cx)),
            Self::Arith(op, a, b) => match (a.eval(cx), b.eval(cx)) {
                (Dyn::Number(x), Dyn::Number(y)) => Dyn::number(builtins::arithmetic(*op, x, y)),
                _ => Dyn::Undefined,
            },
            Self::Coalesce(a, b) => match a.eval(cx) {
                Dyn::Undefined => b.eval(cx),
                defined => defined,
            },
        }
    }
}

fn borrow_dyn<'a>(d: &'a Dyn<'static>) -> Dyn<'a> {
    match d {
        Dyn::Str(s) => Dyn::Str(Cow::Borrowed(s)),
        Dyn::Undefined => Dyn::Undefined,
        Dyn::Null => Dyn::Null,
        Dyn::Missing => Dyn::Missing,
        Dyn::Bool(b) => Dyn::Bool(*b),
        Dyn::Number(n) => Dyn::Number(*n),
    }
}

impl StrArg {
    pub(crate) fn eval<'a>(&'a self, cx: &'a Cx<'_>) -> Option<Cow<'a, str>> {
        match self {
            Self::Str(code) => code.eval(cx),
            Self::Dyn(code) => code.eval(cx).into_str(),
        }
    }
}

impl NumArg {
    pub(crate) fn eval<'a>(&'a self, cx: &'a Cx<'_>) -> f64 {
        match self {
            Self::Num(code) => code.eval(cx),
            Self::Dyn(code) => code.eval(cx).as_number(),
        }
    }
}
