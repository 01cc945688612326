//! Errors of the route engine. All of them happen when routes are loaded; evaluating a loaded
//! route never fails (run-time problems are the value undefined).

use std::fmt;

use grammar::{Span, SyntaxError};

/// The stage of loading that rejected a route (spec section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The text does not parse.
    Syntax,
    /// The `INTO` target is not a supported endpoint.
    Sink,
    /// The condition does not type-check, or names an unknown function.
    Compile,
}

impl Stage {
    /// `"syntax"`, `"sink"` or `"compile"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syntax => "syntax",
            Self::Sink => "sink",
            Self::Compile => "compile",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition the compiler rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CompileError {
    /// What is wrong.
    pub message: String,
    /// Where.
    pub span: Span,
}

impl CompileError {
    pub(crate) fn new(message: impl Into<String>, span: Span) -> Self {
        Self {
            message: message.into(),
            span,
        }
    }
}

/// A route rejected at load, with the stage, place and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stage} error at {span}: {message}")]
pub struct RouteError {
    /// The stage that rejected it.
    pub stage: Stage,
    /// What is wrong.
    pub message: String,
    /// Where, in the route text.
    pub span: Span,
}

impl From<SyntaxError> for RouteError {
    fn from(e: SyntaxError) -> Self {
        Self {
            stage: Stage::Syntax,
            message: e.message,
            span: e.span,
        }
    }
}

impl From<CompileError> for RouteError {
    fn from(e: CompileError) -> Self {
        Self {
            stage: Stage::Compile,
            message: e.message,
            span: e.span,
        }
    }
}

/// A routes configuration (the `routes` of `$edgeHub` desired properties) that cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// One route is bad; the message names it as the reference does.
    #[error("Error parsing route {name} - {error}")]
    Route {
        /// The route's name.
        name: String,
        /// Why it was rejected.
        error: RouteError,
    },
    /// A route entry has a bad shape or value (priority out of range, empty text, ...).
    #[error("Error parsing route {name} - {reason}")]
    RouteSpec {
        /// The route's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The desired properties as a whole are malformed.
    #[error("{0}")]
    Document(String),
}

/// Every problem found in one routes configuration, so that an operator can fix them at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors(pub Vec<ConfigError>);
