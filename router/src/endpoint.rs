//! Sinks: where a route delivers (spec section 5).

use std::fmt;

use grammar::Sink;

use crate::error::{RouteError, Stage};

/// An endpoint a route delivers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `$upstream`: IoT Hub (or the parent hub).
    Upstream,
    /// `BrokeredEndpoint("/modules/{module}/inputs/{input}")`: a module's input.
    ModuleInput {
        /// The target module id.
        module: String,
        /// The target input name.
        input: String,
    },
}

impl Endpoint {
    /// The endpoint's id in the store: `iothub` for upstream, `{device}/{module}/{input}` for a
    /// module input of the edge device `device_id`.
    pub fn id(&self, device_id: &str) -> String {
        match self {
            Self::Upstream => "iothub".to_owned(),
            Self::ModuleInput { module, input } => format!("{device_id}/{module}/{input}"),
        }
    }

    /// Binds the `INTO` part of a route. Also returns whether the address bends the rules
    /// (parts 1 and 3 not `modules` and `inputs`, or empty parts), which the reference accepts.
    pub(crate) fn bind(sink: &Sink) -> Result<(Self, bool), RouteError> {
        match sink {
            Sink::System { name, span } => {
                if name.eq_ignore_ascii_case("upstream") {
                    Ok((Self::Upstream, false))
                } else {
                    Err(RouteError {
                        stage: Stage::Sink,
                        message: format!("System endpoint type '${name}' not supported."),
                        span: *span,
                    })
                }
            }
            Sink::Function {
                name,
                address,
                span,
            } => {
                let error = |message: String| RouteError {
                    stage: Stage::Sink,
                    message,
                    span: *span,
                };
                if !name.eq_ignore_ascii_case("BrokeredEndpoint") {
                    return Err(error(format!(
                        "Function endpoint type '{name}' not supported."
                    )));
                }
                let trimmed = address.trim();
                if trimmed.is_empty() {
                    return Err(error("Brokered endpoint address is blank.".to_owned()));
                }
                let inner = trimmed.strip_prefix('/').unwrap_or(trimmed);
                let inner = inner.strip_suffix('/').unwrap_or(inner);
                let parts: Vec<&str> = inner.split('/').collect();
                let [first, module, third, input] = parts[..] else {
                    return Err(error(format!(
                        "Endpoint address '{address}' could not be parsed. Expect input in this \
                         format - /modules/{{mid}}/inputs/{{input}}"
                    )));
                };
                let irregular = first != "modules"
                    || third != "inputs"
                    || module.is_empty()
                    || input.is_empty();
                Ok((
                    Self::ModuleInput {
                        module: module.to_owned(),
                        input: input.to_owned(),
                    },
                    irregular,
                ))
            }
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Upstream => f.write_str("$upstream"),
            Self::ModuleInput { module, input } => {
                write!(f, "BrokeredEndpoint(\"/modules/{module}/inputs/{input}\")")
            }
        }
    }
}
