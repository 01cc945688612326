//! The syntax tree of a route and of a condition, with the place of every node in the text.

use std::fmt;

/// A place in the parsed text: byte offsets, and the 1-based line and column of its start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset one past the last character.
    pub end: usize,
    /// 1-based line of `start`.
    pub line: usize,
    /// 1-based column (in characters) of `start`.
    pub column: usize,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// A whole route: `[SELECT *] FROM <source> [WHERE <condition>] INTO <sink>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// The `FROM` path.
    pub source: Source,
    /// The `WHERE` condition, if any (no `WHERE` means `true`).
    pub condition: Option<Condition>,
    /// The `INTO` target, as written; binding it to an endpoint is the router's job.
    pub sink: Sink,
    /// Tokens after a complete sink. The reference ignores them; we keep them to warn.
    pub trailing: Option<Span>,
    /// Comments found between the tokens of the route, in order.
    pub comments: Vec<Span>,
}

/// The `FROM` path of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// The concatenation of the path's tokens, whitespace and comments removed: `/messages/*`.
    pub text: String,
    /// Where the path is written.
    pub span: Span,
}

/// The `WHERE` part of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The original text from the first to the last token of the condition.
    pub text: String,
    /// The parsed expression.
    pub expr: Expr,
}

/// The `INTO` part of a route, before it is bound to an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Sink {
    /// `$name`, e.g. `$upstream` (the name is kept without the `$`).
    System {
        /// The name after `$`.
        name: String,
        /// Where it is written.
        span: Span,
    },
    /// `Name("address")`, e.g. `BrokeredEndpoint("/modules/m/inputs/i")`.
    Function {
        /// The function name as written.
        name: String,
        /// The raw characters between the quotes; escapes are not interpreted.
        address: String,
        /// Where the whole sink is written.
        span: Span,
    },
}

/// An expression of the condition language, with its place in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What the expression is.
    pub kind: ExprKind,
    /// Where it is written.
    pub span: Span,
}

/// The kinds of expression.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A literal value.
    Literal(Literal),
    /// An identifier: an application property name, as written.
    Property(String),
    /// `$name` (`braced: false`) or `{$name}` (`braced: true`); the name is kept without `$`.
    SystemProperty {
        /// The text after `$`, e.g. `connectionModuleId` or `body.temp`.
        name: String,
        /// Whether braces force the system property (or the body query).
        braced: bool,
    },
    /// A built-in function call.
    Call {
        /// The function name as written.
        name: String,
        /// Where the name is written.
        name_span: Span,
        /// The arguments.
        args: Vec<Expr>,
    },
    /// `-x` or `NOT x`.
    Unary {
        /// The operator.
        op: UnaryOp,
        /// The operand.
        operand: Box<Expr>,
    },
    /// `a <op> b`.
    Binary {
        /// The operator.
        op: BinaryOp,
        /// Where the operator is written.
        op_span: Span,
        /// The left operand.
        lhs: Box<Expr>,
        /// The right operand.
        rhs: Box<Expr>,
    },
}

/// A literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A string literal, unescaped. Strings that held lone surrogates carry U+FFFD instead.
    String(String),
    /// A number literal.
    Number(Number),
    /// `true`.
    True,
    /// `false`.
    False,
    /// `null`.
    Null,
    /// `undefined`.
    Undefined,
}

/// A number literal: its text and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Number {
    /// The literal as written.
    pub text: String,
    /// Its value; `None` when it has none (a hex literal that overflows 64 bits).
    pub value: Option<f64>,
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `NOT x`
    Not,
}

/// Binary operators, loosest last in [`BinaryOp::precedence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `||`
    Concat,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `<>`
    LtGt,
    /// `AND`
    And,
    /// `OR`
    Or,
    /// `??`
    Coalesce,
}

impl BinaryOp {
    /// The operator as written in a condition.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Mul => "*",
            Self::Div => "/",
            Self::Rem => "%",
            Self::Add => "+",
            Self::Sub => "-",
            Self::Concat => "||",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Eq => "=",
            Self::Ne => "!=",
            Self::LtGt => "<>",
            Self::And => "AND",
            Self::Or => "OR",
            Self::Coalesce => "??",
        }
    }

    /// Binding strength: higher binds tighter. Every binary operator is left-associative.
    pub fn precedence(self) -> u8 {
        match self {
            Self::Mul | Self::Div | Self::Rem => 7,
            Self::Add | Self::Sub | Self::Concat => 6,
            Self::Lt | Self::Le | Self::Gt | Self::Ge => 5,
            Self::Eq | Self::Ne | Self::LtGt => 4,
            Self::And => 3,
            Self::Or => 2,
            Self::Coalesce => 1,
        }
    }

    /// Whether this is one of the six comparison operators.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            Self::Lt | Self::Le | Self::Gt | Self::Ge | Self::Eq | Self::Ne | Self::LtGt
        )
    }
}

impl UnaryOp {
    /// The operator as written in a condition.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::Neg => "-",
            Self::Not => "NOT",
        }
    }
}

impl Expr {
    /// The same expression with every span reset, for comparing trees parsed from different text.
    #[must_use]
    pub fn without_spans(&self) -> Expr {
        let kind = match &self.kind {
            ExprKind::Call { name, args, .. } => ExprKind::Call {
                name: name.clone(),
                name_span: Span::default(),
                args: args.iter().map(Expr::without_spans).collect(),
            },
            ExprKind::Unary { op, operand } => ExprKind::Unary {
                op: *op,
                operand: Box::new(operand.without_spans()),
            },
            ExprKind::Binary { op, lhs, rhs, .. } => ExprKind::Binary {
                op: *op,
                op_span: Span::default(),
                lhs: Box::new(lhs.without_spans()),
                rhs: Box::new(rhs.without_spans()),
            },
            other => other.clone(),
        };
        Expr {
            kind,
            span: Span::default(),
        }
    }

    /// Depth of the tree (a leaf has depth 1).
    pub fn depth(&self) -> usize {
        match &self.kind {
            ExprKind::Call { args, .. } => 1 + args.iter().map(Expr::depth).max().unwrap_or(0),
            ExprKind::Unary { operand, .. } => 1 + operand.depth(),
            ExprKind::Binary { lhs, rhs, .. } => 1 + lhs.depth().max(rhs.depth()),
            _ => 1,
        }
    }
}

/// Prints a condition that parses back to the same tree: binary and unary expressions are
/// parenthesised, operators are surrounded by spaces, strings are escaped.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ExprKind::Literal(literal) => literal.fmt(f),
            ExprKind::Property(name) => f.write_str(name),
            ExprKind::SystemProperty {
                name,
                braced: false,
            } => write!(f, "${name}"),
            ExprKind::SystemProperty { name, braced: true } => write!(f, "{{${name}}}"),
            ExprKind::Call { name, args, .. } => {
                write!(f, "{name}(")?;
                for (i, arg) in args.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    arg.fmt(f)?;
                }
                f.write_str(")")
            }
            ExprKind::Unary { op, operand } => write!(f, "({} {operand})", op.symbol()),
            ExprKind::Binary { op, lhs, rhs, .. } => {
                write!(f, "({lhs} {} {rhs})", op.symbol())
            }
        }
    }
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(s) => {
                f.write_str("'")?;
                for c in s.chars() {
                    match c {
                        '\'' => f.write_str("\\'")?,
                        '\\' => f.write_str("\\\\")?,
                        c => write!(f, "{c}")?,
                    }
                }
                f.write_str("'")
            }
            Self::Number(n) => f.write_str(&n.text),
            Self::True => f.write_str("true"),
            Self::False => f.write_str("false"),
            Self::Null => f.write_str("null"),
            Self::Undefined => f.write_str("undefined"),
        }
    }
}
