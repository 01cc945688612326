//! A compiled `WHERE` condition.

use grammar::Expr;

use crate::check::check;
use crate::compile::Compiler;
use crate::error::{CompileError, RouteError};
use crate::interpret::{self, Explanation};
use crate::message::Message;
use crate::program::{BoolCode, Code, Cx};
use crate::typed::Typed;
use crate::value::{Outcome, Tri};

/// A condition, type-checked and compiled.
#[derive(Debug, Clone)]
pub struct Condition {
    text: String,
    /// The text the spans of `typed` point into: the condition itself, or the whole route.
    span_text: String,
    /// `None` for an empty condition, which evaluates to undefined.
    typed: Option<Typed>,
    code: Code,
    reads_body: bool,
}

impl Condition {
    /// Compiles a condition on its own (as `route test --condition` does). An empty condition
    /// is accepted and evaluates to undefined.
    ///
    /// # Errors
    ///
    /// A syntax or compile error with its place in `text`.
    pub fn compile(text: &str) -> Result<Self, RouteError> {
        match grammar::parse_condition(text)? {
            Some(expr) => Ok(Self::from_expr(text, text, &expr)?),
            None => Ok(Self {
                text: text.to_owned(),
                span_text: text.to_owned(),
                typed: None,
                code: Code::Undefined,
                reads_body: false,
            }),
        }
    }

    /// The condition of a route without `WHERE`: `true`.
    pub fn always() -> Self {
        Self {
            text: "true".to_owned(),
            span_text: String::new(),
            typed: None,
            code: Code::Bool(BoolCode::Const(Tri::True)),
            reads_body: false,
        }
    }

    /// Compiles a parsed expression: `text` is the condition, `span_text` the text that the
    /// expression's spans point into.
    pub(crate) fn from_expr(
        text: &str,
        span_text: &str,
        expr: &Expr,
    ) -> Result<Self, CompileError> {
        let typed = check(expr)?;
        let mut compiler = Compiler::default();
        let code = compiler.lower(&typed);
        Ok(Self {
            text: text.to_owned(),
            span_text: span_text.to_owned(),
            typed: Some(typed),
            code,
            reads_body: compiler.reads_body,
        })
    }

    /// The condition's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The typed tree (`None` for an empty or absent condition).
    pub fn typed(&self) -> Option<&Typed> {
        self.typed.as_ref()
    }

    /// Whether evaluating this condition may parse the message body.
    pub fn reads_body(&self) -> bool {
        self.reads_body
    }

    /// Whether the condition folded to a constant `true`.
    pub fn is_always_true(&self) -> bool {
        matches!(self.code, Code::Bool(BoolCode::Const(Tri::True)))
    }

    /// The compiled code.
    pub(crate) fn code(&self) -> &Code {
        &self.code
    }

    /// Evaluates the compiled condition.
    pub fn evaluate(&self, message: &Message) -> Outcome {
        let cx = Cx::new(message);
        self.evaluate_in(&cx)
    }

    /// Evaluates in a context shared with other routes (the body is parsed once for all).
    pub fn evaluate_in<'a>(&'a self, cx: &'a Cx<'_>) -> Outcome {
        self.code.outcome(cx)
    }

    /// Evaluates with the reference interpreter (slow; for tests and benchmarks).
    pub fn interpret(&self, message: &Message) -> Outcome {
        match &self.typed {
            Some(typed) => interpret::outcome(typed, &interpret::eval(typed, message)),
            None => self.evaluate(message),
        }
    }

    /// The value of every sub-expression for `message`; `None` for an empty or absent
    /// condition.
    pub fn explain(&self, message: &Message) -> Option<Explanation> {
        self.typed
            .as_ref()
            .map(|typed| interpret::explain(typed, message, &self.span_text))
    }
}
