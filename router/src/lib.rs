//! The route engine: compiles IoT Edge routes and picks the endpoints of each message.
//!
//! Pure and synchronous: no I/O, no async runtime, no storage. The hub hands a [`Message`] to
//! [`RouteTable::dispatch`] and gets one [`Delivery`] per endpoint (decision D6).
//!
//! Layout, in the order a route goes through it:
//! - [`grammar`] (another crate) parses the text;
//! - [`endpoint`] binds the sink; [`source`] normalises the `FROM` path;
//! - `check` type-checks the condition into a `typed` tree (names resolved, aliases applied);
//! - `compile` lowers it to `program` code specialised by type, folding constants;
//! - [`route`] puts the three stages together; [`lint`] explains quirks;
//! - [`table`] indexes routes by source and dispatches, `index` indexes a source's routes by
//!   the property values their conditions require; [`desired`] reads `$edgeHub` desired
//!   properties;
//! - [`interpret`] is the slow reference interpreter, used by tests, benchmarks and `--explain`;
//! - [`message`], [`value`], [`text`], `body`, `builtins`: the data and its semantics.
//!
//! ```
//! use router::{CompiledRoute, Message, Outcome};
//!
//! let route = CompiledRoute::compile(
//!     "FROM /messages/modules/sensor/* WHERE $body.temperature > 30 INTO $upstream",
//! )
//! .unwrap();
//! let mut message = Message::default();
//! message.body = r#"{"temperature": 31.5}"#.into();
//! message.system_properties.insert("connectionModuleId", "sensor");
//! message.system_properties.insert("contentType", "application/json");
//! message.system_properties.insert("contentEncoding", "utf-8");
//! assert_eq!(route.condition().evaluate(&message), Outcome::True);
//! assert!(route.routes(&message));
//! ```

pub mod body;
mod builtins;
mod check;
mod compile;
mod condition;
pub mod desired;
pub mod endpoint;
pub mod error;
mod index;
pub mod interpret;
pub mod lint;
pub mod message;
mod program;
pub mod route;
pub mod source;
pub mod table;
pub mod text;
pub mod typed;
pub mod value;

pub use condition::Condition;
pub use desired::EdgeHubRoutes;
pub use endpoint::Endpoint;
pub use error::{ConfigError, ConfigErrors, RouteError, Stage};
pub use lint::Warning;
pub use message::{Message, MessageSource, Properties};
pub use program::Cx;
pub use route::CompiledRoute;
pub use source::SourceFilter;
pub use table::{DEFAULT_PRIORITY, Delivery, RouteSpec, RouteTable, Router, TableRoute, Ttl};
pub use value::Outcome;
