//! The typed condition: the syntax tree after static type checking (spec 6.2 to 6.7), with
//! every name resolved to what it reads. Both the compiler and the reference interpreter start
//! from here.

use std::fmt;

use grammar::{BinaryOp, Span};

use crate::body::BodyPath;

/// The static type of an expression. Undefined lives inside each type (a missing string
/// property, a NaN, an undefined bool); `Undefined` itself is the type of the `undefined` literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    /// A string (application and system properties are strings).
    String,
    /// A double.
    Number,
    /// A three-valued boolean.
    Bool,
    /// The `null` literal and logic on it.
    Null,
    /// The `undefined` literal.
    Undefined,
    /// A body query: its kind is known only at run time.
    Dynamic,
}

impl Type {
    /// The name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Bool => "bool",
            Self::Null => "null",
            Self::Undefined => "undefined",
            Self::Dynamic => "dynamic",
        }
    }

    /// Whether two static types may meet in a comparison or `??`: identical, or dynamic with
    /// null, number, string or bool.
    pub fn compatible(self, other: Self) -> bool {
        let concrete = |t: Self| matches!(t, Self::Null | Self::Number | Self::String | Self::Bool);
        self == other
            || (self == Self::Dynamic && concrete(other))
            || (other == Self::Dynamic && concrete(self))
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A typed expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Typed {
    /// Its static type.
    pub ty: Type,
    /// What it computes.
    pub node: Node,
    /// Where it is written.
    pub span: Span,
}

/// What a typed expression computes.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A string literal.
    Str(String),
    /// A number literal (NaN for a hex literal that overflows: undefined).
    Num(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// `undefined`, or a `$name` that holds brackets but is no body query.
    Undefined,
    /// An application property (identifier).
    AppProperty(String),
    /// `$name` or `{$name}`.
    SysProperty(SysLookup),
    /// `$body.path` or `{$body.path}`.
    Body {
        /// The path.
        path: BodyPath,
        /// The application property that shadows the query (`$body.path` literally), unless
        /// braces force the query.
        app_key: Option<String>,
    },
    /// Unary minus.
    Neg(Box<Typed>),
    /// `NOT`.
    Not(Box<Typed>),
    /// A binary operator.
    Binary {
        /// The operator.
        op: BinaryOp,
        /// Left operand.
        lhs: Box<Typed>,
        /// Right operand.
        rhs: Box<Typed>,
    },
    /// A built-in function call.
    Call {
        /// The function.
        func: Func,
        /// Its arguments.
        args: Vec<Typed>,
    },
}

/// How a `$name` is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysLookup {
    /// The application property that wins when present (`$name` literally); `None` for `{$name}`.
    pub app_key: Option<String>,
    /// The system property keys to try, in order: the edge key of an IoT Hub alias first
    /// (decision D7), then the name as written.
    pub keys: Vec<String>,
}

/// The built-in functions (spec 6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum Func {
    Abs,
    Ceiling,
    Exp,
    Floor,
    Power,
    Sign,
    Sqrt,
    Square,
    AsNumber,
    IsBool,
    IsNumber,
    IsString,
    IsDefined,
    IsNull,
    Concat,
    Length,
    Lower,
    Upper,
    Substring,
    IndexOf,
    Contains,
    StartsWith,
    EndsWith,
}

impl Func {
    const ALL: [Self; 23] = [
        Self::Abs,
        Self::Ceiling,
        Self::Exp,
        Self::Floor,
        Self::Power,
        Self::Sign,
        Self::Sqrt,
        Self::Square,
        Self::AsNumber,
        Self::IsBool,
        Self::IsNumber,
        Self::IsString,
        Self::IsDefined,
        Self::IsNull,
        Self::Concat,
        Self::Length,
        Self::Lower,
        Self::Upper,
        Self::Substring,
        Self::IndexOf,
        Self::Contains,
        Self::StartsWith,
        Self::EndsWith,
    ];

    /// The function's name in lower case.
    pub fn name(self) -> &'static str {
        match self {
            Self::Abs => "abs",
            Self::Ceiling => "ceiling",
            Self::Exp => "exp",
            Self::Floor => "floor",
            Self::Power => "power",
            Self::Sign => "sign",
            Self::Sqrt => "sqrt",
            Self::Square => "square",
            Self::AsNumber => "as_number",
            Self::IsBool => "is_bool",
            Self::IsNumber => "is_number",
            Self::IsString => "is_string",
            Self::IsDefined => "is_defined",
            Self::IsNull => "is_null",
            Self::Concat => "concat",
            Self::Length => "length",
            Self::Lower => "lower",
            Self::Upper => "upper",
            Self::Substring => "substring",
            Self::IndexOf => "index_of",
            Self::Contains => "contains",
            Self::StartsWith => "starts_with",
            Self::EndsWith => "ends_with",
        }
    }

    /// The function with this name, ignoring case. `twin_change_includes` is not available on
    /// the edge.
    pub fn lookup(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// Whether the arguments' static types are accepted, and the result type.
    pub fn signature(self, args: &[Type]) -> Option<Type> {
        use Type::{Dynamic as D, Number as N, String as S};
        let num = |t: Type| matches!(t, N | D);
        let text = |t: Type| matches!(t, S | D);
        let ok = match (self, args) {
            (Self::Abs | Self::Ceiling | Self::Exp | Self::Floor, [a])
            | (Self::Sign | Self::Sqrt | Self::Square, [a]) => num(*a),
            (Self::Power, [a, b]) => num(*a) && num(*b),
            (Self::AsNumber, [a]) => matches!(a, S | D | N),
            (
                Self::IsBool | Self::IsNumber | Self::IsString | Self::IsDefined | Self::IsNull,
                [_],
            ) => true,
            (Self::Concat, args) => args.len() >= 2 && args.iter().all(|t| text(*t)),
            (Self::Length | Self::Lower | Self::Upper, [a]) => text(*a),
            (Self::Substring, [s, start]) => text(*s) && num(*start),
            (Self::Substring, [s, start, len]) => text(*s) && num(*start) && num(*len),
            (Self::IndexOf | Self::Contains | Self::StartsWith | Self::EndsWith, [a, b]) => {
                text(*a) && text(*b)
            }
            _ => false,
        };
        ok.then_some(match self {
            Self::Concat | Self::Lower | Self::Upper | Self::Substring => S,
            Self::IsBool
            | Self::IsNumber
            | Self::IsString
            | Self::IsDefined
            | Self::IsNull
            | Self::Contains
            | Self::StartsWith
            | Self::EndsWith => Type::Bool,
            _ => N,
        })
    }
}

/// IoT Hub system property names and the keys edgeHub stores them under (decision D7), in
/// lower case.
const ALIASES: [(&str, &str); 12] = [
    ("correlationid", "cid"),
    ("iothub-enqueuedtime", "enqueuedTime"),
    ("iothub-connection-device-id", "connectionDeviceId"),
    ("iothub-connection-module-id", "connectionModuleId"),
    ("iothub-connection-auth-method", "connectionAuthMethod"),
    (
        "iothub-connection-auth-generation-id",
        "connectionDeviceGenerationId",
    ),
    ("iothub-creation-time-utc", "creationTime"),
    ("iothub-message-schema", "messageSchema"),
    ("iothub-outputname", "outputName"),
    ("iothub-inputname", "inputName"),
    ("expirytimeutc", "absolute-expiry-time"),
    ("iothub-app-expiry-time-utc", "absolute-expiry-time"),
];

/// The system property keys to try for `$name`: the edge key of an alias, then the name.
pub fn system_keys(name: &str) -> Vec<String> {
    let lower = name.to_ascii_lowercase();
    ALIASES
        .iter()
        .filter(|(alias, _)| *alias == lower)
        .map(|(_, key)| (*key).to_owned())
        .chain(std::iter::once(name.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_are_found_ignoring_case_and_twin_change_includes_is_not() {
        assert_eq!(Func::lookup("IS_DEFINED"), Some(Func::IsDefined));
        assert_eq!(Func::lookup("Is_Defined"), Some(Func::IsDefined));
        assert_eq!(Func::lookup("twin_change_includes"), None);
    }

    #[test]
    fn aliases_resolve_to_edge_keys() {
        assert_eq!(system_keys("correlationId"), ["cid", "correlationId"]);
        assert_eq!(system_keys("cid"), ["cid"]);
    }
}
