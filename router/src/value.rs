//! Run-time values: three-valued booleans, and the dynamic values of body queries.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::text;

/// A three-valued boolean (Kleene logic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tri {
    /// True.
    True,
    /// False.
    False,
    /// Undefined: a missing property, a NaN, a failed body query, ...
    Undefined,
}

impl Tri {
    /// `true` or `false` as a `Tri`.
    pub fn from_bool(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }

    /// Kleene AND.
    pub fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::False, _) | (_, Self::False) => Self::False,
            (Self::True, Self::True) => Self::True,
            _ => Self::Undefined,
        }
    }

    /// Kleene OR.
    pub fn or(self, other: Self) -> Self {
        match (self, other) {
            (Self::True, _) | (_, Self::True) => Self::True,
            (Self::False, Self::False) => Self::False,
            _ => Self::Undefined,
        }
    }

    /// Kleene NOT.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Self {
        match self {
            Self::True => Self::False,
            Self::False => Self::True,
            Self::Undefined => Self::Undefined,
        }
    }

    /// The value as an `Option<bool>` (`None` for undefined).
    pub fn known(self) -> Option<bool> {
        match self {
            Self::True => Some(true),
            Self::False => Some(false),
            Self::Undefined => None,
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `=`
    Eq,
    /// `!=` and `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CmpOp {
    /// The comparison a binary operator performs (`!=` and `<>` are the same).
    ///
    /// # Panics
    ///
    /// When `op` is not one of the six comparison operators (the type checker guarantees it).
    pub fn of(op: grammar::BinaryOp) -> Self {
        use grammar::BinaryOp;
        match op {
            BinaryOp::Eq => Self::Eq,
            BinaryOp::Ne | BinaryOp::LtGt => Self::Ne,
            BinaryOp::Lt => Self::Lt,
            BinaryOp::Le => Self::Le,
            BinaryOp::Gt => Self::Gt,
            BinaryOp::Ge => Self::Ge,
            other => unreachable!("{} is not a comparison", other.symbol()),
        }
    }

    /// Whether `ordering` satisfies this operator.
    pub fn holds(self, ordering: Ordering) -> bool {
        match self {
            Self::Eq => ordering == Ordering::Equal,
            Self::Ne => ordering != Ordering::Equal,
            Self::Lt => ordering == Ordering::Less,
            Self::Le => ordering != Ordering::Greater,
            Self::Gt => ordering == Ordering::Greater,
            Self::Ge => ordering != Ordering::Less,
        }
    }

    /// The operator with its operands swapped: `a < b` is `b > a`.
    #[must_use]
    pub fn flipped(self) -> Self {
        match self {
            Self::Lt => Self::Gt,
            Self::Le => Self::Ge,
            Self::Gt => Self::Lt,
            Self::Ge => Self::Le,
            other => other,
        }
    }
}

/// Compares two numbers; NaN (undefined) on either side gives undefined.
pub fn compare_numbers(op: CmpOp, a: f64, b: f64) -> Tri {
    match a.partial_cmp(&b) {
        Some(ordering) => Tri::from_bool(op.holds(ordering)),
        None => Tri::Undefined,
    }
}

/// A value of a body query (static type `dynamic`), known only at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum Dyn<'a> {
    /// Undefined: no JSON body, an object or array, a date string, a NaN.
    Undefined,
    /// JSON `null`, or the `null` literal.
    Null,
    /// A path that does not exist in the body. It behaves as `Null` everywhere except in
    /// `is_null`, which is false for it (quirk).
    Missing,
    /// A boolean.
    Bool(bool),
    /// A number, never NaN.
    Number(f64),
    /// A string.
    Str(Cow<'a, str>),
}

impl<'a> Dyn<'a> {
    /// A number as a dynamic value: NaN is undefined.
    pub fn number(n: f64) -> Self {
        if n.is_nan() {
            Self::Undefined
        } else {
            Self::Number(n)
        }
    }

    /// A string, undefined when absent.
    pub fn string(s: Option<Cow<'a, str>>) -> Self {
        s.map_or(Self::Undefined, Self::Str)
    }

    /// A three-valued boolean as a dynamic value.
    pub fn tri(t: Tri) -> Self {
        t.known().map_or(Self::Undefined, Self::Bool)
    }

    /// Whether the value is defined (`is_defined`): everything but `Undefined`.
    pub fn is_defined(&self) -> bool {
        !matches!(self, Self::Undefined)
    }

    /// The number, or NaN when this is not a number.
    pub fn as_number(&self) -> f64 {
        match self {
            Self::Number(n) => *n,
            _ => f64::NAN,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The string, if this is one, keeping its borrow.
    pub fn into_str(self) -> Option<Cow<'a, str>> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Rank of the kind in the cross-kind order: Bool < Number < String < Null.
    fn kind_rank(&self) -> u8 {
        match self {
            Self::Bool(_) => 0,
            Self::Number(_) => 1,
            Self::Str(_) => 2,
            Self::Null | Self::Missing => 3,
            Self::Undefined => 4,
        }
    }
}

/// Compares two dynamic values: undefined on either side gives undefined; values of the same
/// kind compare naturally; values of different kinds are ordered by kind (quirk), so they are
/// never equal but always comparable.
pub fn compare_dyn(op: CmpOp, a: &Dyn<'_>, b: &Dyn<'_>) -> Tri {
    let ordering = match (a, b) {
        (Dyn::Undefined, _) | (_, Dyn::Undefined) => return Tri::Undefined,
        (Dyn::Number(x), Dyn::Number(y)) => return compare_numbers(op, *x, *y),
        (Dyn::Str(x), Dyn::Str(y)) => text::utf16_cmp(x, y),
        (Dyn::Bool(x), Dyn::Bool(y)) => x.cmp(y),
        (x, y) => x.kind_rank().cmp(&y.kind_rank()),
    };
    Tri::from_bool(op.holds(ordering))
}

/// The value of a whole condition, as `edgehub route test` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The condition is true: the message routes.
    True,
    /// The condition is false (or null).
    False,
    /// Anything else: undefined, a number, a string, a non-boolean body value.
    Undefined,
}

impl Outcome {
    /// `"true"`, `"false"` or `"undefined"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "true",
            Self::False => "false",
            Self::Undefined => "undefined",
        }
    }

    /// Whether a route with this outcome fires.
    pub fn routes(self) -> bool {
        self == Self::True
    }
}

impl From<Tri> for Outcome {
    fn from(t: Tri) -> Self {
        match t {
            Tri::True => Self::True,
            Tri::False => Self::False,
            Tri::Undefined => Self::Undefined,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kleene_tables_hold() {
        use Tri::{False as F, True as T, Undefined as U};
        assert_eq!(U.and(F), F);
        assert_eq!(U.and(T), U);
        assert_eq!(U.or(T), T);
        assert_eq!(U.or(F), U);
        assert_eq!(U.not(), U);
    }

    #[test]
    fn different_kinds_order_bool_number_string_null() {
        let n = Dyn::Number(50.0);
        let s = Dyn::Str("50".into());
        assert_eq!(compare_dyn(CmpOp::Eq, &n, &s), Tri::False);
        assert_eq!(compare_dyn(CmpOp::Ne, &n, &s), Tri::True);
        assert_eq!(compare_dyn(CmpOp::Lt, &n, &s), Tri::True);
        assert_eq!(compare_dyn(CmpOp::Gt, &Dyn::Missing, &n), Tri::True);
        assert_eq!(compare_dyn(CmpOp::Eq, &Dyn::Missing, &Dyn::Null), Tri::True);
        assert_eq!(
            compare_dyn(CmpOp::Eq, &Dyn::Undefined, &Dyn::Null),
            Tri::Undefined
        );
    }
}
