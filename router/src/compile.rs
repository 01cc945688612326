//! Lowering of the typed tree to [`Code`]: specialises every operator by static type and operand
//! shape, and folds what reads nothing from the message.

use std::borrow::Cow;

use grammar::BinaryOp;

use crate::message::{Message, PropKey};
use crate::program::{
    BoolCode, Code, Cx, DynCode, DynTest, Lookup, NumArg, NumCode, StrArg, StrCode,
};
use crate::typed::{Func, Node, Type, Typed};
use crate::value::{CmpOp, Dyn, Tri};

/// Lowers typed trees; remembers whether anything read the body.
#[derive(Debug, Default)]
pub(crate) struct Compiler {
    pub(crate) reads_body: bool,
}

impl Compiler {
    pub(crate) fn lower(&mut self, t: &Typed) -> Code {
        match &t.node {
            Node::Str(s) => Code::Str(StrCode::Const(Some(s.as_str().into()))),
            Node::Num(n) => Code::Num(NumCode::Const(*n)),
            Node::Bool(b) => Code::Bool(BoolCode::Const(Tri::from_bool(*b))),
            Node::Null => Code::Null,
            Node::Undefined => Code::Undefined,
            Node::AppProperty(name) => Code::Str(StrCode::Prop(Lookup::App(PropKey::new(name)))),
            Node::SysProperty(lookup) => Code::Str(StrCode::Prop(Lookup::Sys {
                app_key: lookup.app_key.as_deref().map(PropKey::new),
                keys: lookup.keys.iter().map(|k| PropKey::new(k)).collect(),
            })),
            Node::Body { path, app_key } => {
                self.reads_body = true;
                Code::Dyn(DynCode::Body {
                    path: path.clone(),
                    app_key: app_key.as_deref().map(PropKey::new),
                })
            }
            Node::Neg(a) => {
                let a = self.lower(a);
                let constant = a.is_const();
                let code = Code::Num(NumCode::Neg(Box::new(num(a))));
                if constant { fold(&code) } else { code }
            }
            Node::Not(a) => {
                let ty = a.ty;
                let a = self.lower(a);
                let constant = a.is_const();
                let code = Code::Bool(match ty {
                    Type::Bool => BoolCode::Not(Box::new(boolean(a))),
                    Type::Null => BoolCode::Const(Tri::True),
                    _ => BoolCode::DynNot(dynamic(a)),
                });
                if constant { fold(&code) } else { code }
            }
            Node::Binary { op, lhs, rhs } => {
                let l = self.lower(lhs);
                let r = self.lower(rhs);
                self.binary(*op, t.ty, lhs.ty, l, r)
            }
            Node::Call { func, args } => {
                let types: Vec<Type> = args.iter().map(|a| a.ty).collect();
                let codes: Vec<Code> = args.iter().map(|a| self.lower(a)).collect();
                let all_const = codes.iter().all(Code::is_const);
                let code = call(*func, &types, codes);
                if all_const { fold(&code) } else { code }
            }
        }
    }

    fn binary(&mut self, op: BinaryOp, ty: Type, lhs_ty: Type, l: Code, r: Code) -> Code {
        let all_const = l.is_const() && r.is_const();
        let code = match op {
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => {
                if ty == Type::Number {
                    Code::Num(NumCode::Arith(op, Box::new(num(l)), Box::new(num(r))))
                } else {
                    Code::Dyn(DynCode::Arith(
                        op,
                        Box::new(dynamic(l)),
                        Box::new(dynamic(r)),
                    ))
                }
            }
            BinaryOp::Concat => Code::Str(StrCode::Concat(vec![str_arg(l), str_arg(r)])),
            BinaryOp::And | BinaryOp::Or => logic(op, ty, lhs_ty, l, r),
            BinaryOp::Coalesce => match ty {
                Type::String => {
                    Code::Str(StrCode::Coalesce(Box::new(string(l)), Box::new(string(r))))
                }
                Type::Number => Code::Num(NumCode::Coalesce(Box::new(num(l)), Box::new(num(r)))),
                Type::Bool => Code::Bool(BoolCode::Coalesce(
                    Box::new(boolean(l)),
                    Box::new(boolean(r)),
                )),
                Type::Null => Code::Null,
                Type::Undefined => Code::Undefined,
                Type::Dynamic => Code::Dyn(DynCode::Coalesce(
                    Box::new(dynamic(l)),
                    Box::new(dynamic(r)),
                )),
            },
            _ => compare(CmpOp::of(op), l, r),
        };
        if all_const { fold(&code) } else { code }
    }
}

/// Comparisons, with a dedicated instruction when one side is a constant.
fn compare(op: CmpOp, l: Code, r: Code) -> Code {
    let code = match (l, r) {
        (Code::Str(a), Code::Str(b)) => match (a, b) {
            (StrCode::Const(None), _) | (_, StrCode::Const(None)) => {
                BoolCode::Const(Tri::Undefined)
            }
            (StrCode::Prop(p), StrCode::Const(Some(c))) => BoolCode::PropCmpConst(op, p, c),
            (StrCode::Const(Some(c)), StrCode::Prop(p)) => {
                BoolCode::PropCmpConst(op.flipped(), p, c)
            }
            (a, StrCode::Const(Some(c))) if !matches!(a, StrCode::Const(_)) => {
                BoolCode::StrCmpConst(op, a, c)
            }
            (StrCode::Const(Some(c)), b) if !matches!(b, StrCode::Const(_)) => {
                BoolCode::StrCmpConst(op.flipped(), b, c)
            }
            (a, b) => BoolCode::StrCmp(op, a, b),
        },
        (Code::Num(a), Code::Num(b)) => match (a, b) {
            (a, NumCode::Const(c)) if !matches!(a, NumCode::Const(_)) => {
                BoolCode::NumCmpConst(op, a, c)
            }
            (NumCode::Const(c), b) if !matches!(b, NumCode::Const(_)) => {
                BoolCode::NumCmpConst(op.flipped(), b, c)
            }
            (a, b) => BoolCode::NumCmp(op, a, b),
        },
        (Code::Bool(a), Code::Bool(b)) => BoolCode::BoolCmp(op, Box::new(a), Box::new(b)),
        (Code::Null, Code::Null) => {
            BoolCode::Const(Tri::from_bool(op.holds(std::cmp::Ordering::Equal)))
        }
        (Code::Undefined, Code::Undefined) => BoolCode::Const(Tri::Undefined),
        (l, r) => match (dynamic(l), dynamic(r)) {
            (a, DynCode::Const(c)) if !matches!(a, DynCode::Const(_)) => {
                BoolCode::DynCmpConst(op, a, c)
            }
            (DynCode::Const(c), b) if !matches!(b, DynCode::Const(_)) => {
                BoolCode::DynCmpConst(op.flipped(), b, c)
            }
            (a, b) => BoolCode::DynCmp(op, a, b),
        },
    };
    Code::Bool(code)
}

/// `AND` and `OR` (spec 6.5, logic): Kleene logic on booleans, the null rules, and the quirk
/// rule when a body value is on the left. Constant operands short-circuit at compile time.
fn logic(op: BinaryOp, ty: Type, lhs_ty: Type, l: Code, r: Code) -> Code {
    if lhs_ty == Type::Dynamic {
        return Code::Bool(BoolCode::DynLogic(op, dynamic(l), dynamic(r)));
    }
    if ty == Type::Null {
        return Code::Null;
    }
    // `null OR x` and `x OR null` are x.
    let (l, r) = match (l, r) {
        (Code::Null, other) | (other, Code::Null) => return other,
        pair => pair,
    };
    let (a, b) = (boolean(l), boolean(r));
    let code = match (op, a, b) {
        (BinaryOp::And, BoolCode::Const(Tri::False), _) => BoolCode::Const(Tri::False),
        (BinaryOp::And, BoolCode::Const(Tri::True), b) => b,
        (BinaryOp::Or, BoolCode::Const(Tri::True), _) => BoolCode::Const(Tri::True),
        (BinaryOp::Or, BoolCode::Const(Tri::False), b) => b,
        (BinaryOp::And, a, b) => BoolCode::And(Box::new(a), Box::new(b)),
        (_, a, b) => BoolCode::Or(Box::new(a), Box::new(b)),
    };
    Code::Bool(code)
}

fn call(func: Func, types: &[Type], mut args: Vec<Code>) -> Code {
    let mut next = || args.remove(0);
    match func {
        Func::Abs
        | Func::Ceiling
        | Func::Exp
        | Func::Floor
        | Func::Sign
        | Func::Sqrt
        | Func::Square => Code::Num(NumCode::Math(func, Box::new(num_arg(next())))),
        Func::Power => {
            let (x, y) = (num_arg(next()), num_arg(next()));
            Code::Num(NumCode::Power(Box::new(x), Box::new(y)))
        }
        Func::AsNumber => match next() {
            Code::Num(n) => Code::Num(n),
            Code::Str(s) => Code::Num(NumCode::Parse(Box::new(s))),
            other => Code::Num(NumCode::DynAsNumber(Box::new(dynamic(other)))),
        },
        Func::IsBool => Code::Bool(match (types[0], next()) {
            (Type::Bool, a) => BoolCode::BoolIsBool(Box::new(boolean(a))),
            (Type::Dynamic, a) => BoolCode::DynTest(DynTest::Bool, dynamic(a)),
            _ => BoolCode::Const(Tri::False),
        }),
        Func::IsNumber => Code::Bool(match (types[0], next()) {
            (Type::Number, a) => BoolCode::FiniteNum(num(a)),
            (Type::Dynamic, a) => BoolCode::DynTest(DynTest::Number, dynamic(a)),
            _ => BoolCode::Const(Tri::False),
        }),
        Func::IsString => Code::Bool(match (types[0], next()) {
            (Type::String, a) => BoolCode::DefinedStr(string(a)),
            (Type::Dynamic, a) => BoolCode::DynTest(DynTest::String, dynamic(a)),
            _ => BoolCode::Const(Tri::False),
        }),
        Func::IsDefined => Code::Bool(match (types[0], next()) {
            (Type::String, a) => BoolCode::DefinedStr(string(a)),
            (Type::Number, a) => BoolCode::DefinedNum(num(a)),
            (Type::Bool, a) => BoolCode::DefinedBool(Box::new(boolean(a))),
            (Type::Null, _) => BoolCode::Const(Tri::True),
            (Type::Undefined, _) => BoolCode::Const(Tri::False),
            (Type::Dynamic, a) => BoolCode::DynTest(DynTest::Defined, dynamic(a)),
        }),
        Func::IsNull => Code::Bool(match (types[0], next()) {
            (Type::Null, _) => BoolCode::Const(Tri::True),
            (Type::Dynamic, a) => BoolCode::DynTest(DynTest::Null, dynamic(a)),
            _ => BoolCode::Const(Tri::False),
        }),
        Func::Concat => Code::Str(StrCode::Concat(args.into_iter().map(str_arg).collect())),
        Func::Length => Code::Num(NumCode::Length(Box::new(str_arg(next())))),
        Func::Lower => Code::Str(StrCode::Lower(Box::new(str_arg(next())))),
        Func::Upper => Code::Str(StrCode::Upper(Box::new(str_arg(next())))),
        Func::Substring => {
            let s = str_arg(next());
            let start = num_arg(next());
            let count = (!args.is_empty()).then(|| num_arg(args.remove(0)));
            Code::Str(StrCode::Substring(Box::new(s), start, count))
        }
        Func::IndexOf => {
            let (s, f) = (str_arg(next()), str_arg(next()));
            Code::Num(NumCode::IndexOf(Box::new(s), Box::new(f)))
        }
        Func::Contains | Func::StartsWith | Func::EndsWith => {
            let (s, f) = (str_arg(next()), str_arg(next()));
            Code::Bool(BoolCode::Text(func, s, f))
        }
    }
}

/// Replaces code that reads nothing from the message by its value.
fn fold(code: &Code) -> Code {
    let empty = Message::default();
    let cx = Cx::new(&empty);
    match code {
        Code::Bool(c) => Code::Bool(BoolCode::Const(c.eval(&cx))),
        Code::Num(c) => Code::Num(NumCode::Const(c.eval(&cx))),
        Code::Str(c) => Code::Str(StrCode::Const(
            c.eval(&cx).map(|s| s.into_owned().into_boxed_str()),
        )),
        Code::Dyn(c) => Code::Dyn(DynCode::Const(owned_dyn(c.eval(&cx)))),
        Code::Null => Code::Null,
        Code::Undefined => Code::Undefined,
    }
}

fn owned_dyn(d: Dyn<'_>) -> Dyn<'static> {
    match d {
        Dyn::Str(s) => Dyn::Str(Cow::Owned(s.into_owned())),
        Dyn::Undefined => Dyn::Undefined,
        Dyn::Null => Dyn::Null,
        Dyn::Missing => Dyn::Missing,
        Dyn::Bool(b) => Dyn::Bool(b),
        Dyn::Number(n) => Dyn::Number(n),
    }
}

// Conversions between code kinds. The type checker guarantees which kinds reach each one.

fn num(code: Code) -> NumCode {
    match code {
        Code::Num(c) => c,
        other => unreachable!("type checker let a non-number through: {other:?}"),
    }
}

fn string(code: Code) -> StrCode {
    match code {
        Code::Str(c) => c,
        other => unreachable!("type checker let a non-string through: {other:?}"),
    }
}

fn boolean(code: Code) -> BoolCode {
    match code {
        Code::Bool(c) => c,
        Code::Undefined => BoolCode::Const(Tri::Undefined),
        other => unreachable!("type checker let a non-bool through: {other:?}"),
    }
}

fn dynamic(code: Code) -> DynCode {
    match code {
        Code::Dyn(c) => c,
        Code::Str(StrCode::Const(s)) => {
            DynCode::Const(Dyn::string(s.map(|s| Cow::Owned(s.into()))))
        }
        Code::Str(c) => DynCode::FromStr(Box::new(c)),
        Code::Num(NumCode::Const(n)) => DynCode::Const(Dyn::number(n)),
        Code::Num(c) => DynCode::FromNum(Box::new(c)),
        Code::Bool(BoolCode::Const(t)) => DynCode::Const(Dyn::tri(t)),
        Code::Bool(c) => DynCode::FromBool(Box::new(c)),
        Code::Null => DynCode::Const(Dyn::Null),
        Code::Undefined => DynCode::Const(Dyn::Undefined),
    }
}

fn str_arg(code: Code) -> StrArg {
    match code {
        Code::Dyn(c) => StrArg::Dyn(c),
        other => StrArg::Str(string(other)),
    }
}

fn num_arg(code: Code) -> NumArg {
    match code {
        Code::Dyn(c) => NumArg::Dyn(c),
        other => NumArg::Num(num(other)),
    }
}
