//! Syntax errors, with the place they were found and what was expected there.

use crate::ast::Span;

/// A route or condition that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("syntax error at {span}: {message}")]
pub struct SyntaxError {
    /// What is wrong, for a person: `unterminated string`, `invalid symbol '@'`, ...
    pub message: String,
    /// Where it is wrong: the offending token (empty at the end of the input).
    pub span: Span,
    /// What the grammar would have accepted there, if that is known.
    pub expected: Vec<String>,
}

impl SyntaxError {
    pub(crate) fn new(message: impl Into<String>, span: Span) -> Self {
        Self {
            message: message.into(),
            span,
            expected: Vec::new(),
        }
    }
}
