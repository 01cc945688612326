//! One route, loaded through its three stages: syntax, sink, compile (spec section 1).

use crate::condition::Condition;
use crate::endpoint::Endpoint;
use crate::error::RouteError;
use crate::lint::{self, Warning};
use crate::message::Message;
use crate::source::SourceFilter;
use crate::value::Outcome;

/// A route that loaded: its source filter, compiled condition and endpoint.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    text: String,
    source: SourceFilter,
    condition: Condition,
    endpoint: Endpoint,
    warnings: Vec<Warning>,
}

impl CompiledRoute {
    /// Parses, binds and compiles a route.
    ///
    /// # Errors
    ///
    /// The first stage that rejects the route, with the place and the reason.
    pub fn compile(text: &str) -> Result<Self, RouteError> {
        let ast = grammar::parse_route(text)?;
        let (endpoint, irregular_address) = Endpoint::bind(&ast.sink)?;
        let condition = match &ast.condition {
            Some(c) => Condition::from_expr(&c.text, text, &c.expr)?,
            None => Condition::always(),
        };
        let source = SourceFilter::new(&ast.source.text);
        let warnings = lint::route(
            text,
            &ast,
            &source,
            &condition,
            &endpoint,
            irregular_address,
        );
        Ok(Self {
            text: text.to_owned(),
            source,
            condition,
            endpoint,
            warnings,
        })
    }

    /// The route's text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The `FROM` filter.
    pub fn source(&self) -> &SourceFilter {
        &self.source
    }

    /// The `WHERE` condition (`true` when absent).
    pub fn condition(&self) -> &Condition {
        &self.condition
    }

    /// The `INTO` endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Constructs that hit a quirk of the language, with the likely intent.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// Whether the route sends `message` to its endpoint: the source matches and the condition
    /// is true.
    pub fn routes(&self, message: &Message) -> bool {
        self.source.matches(message.source()) && self.condition.evaluate(message) == Outcome::True
    }
}
