//! The IoT Edge route language: `[SELECT *] FROM <source> [WHERE <condition>] INTO <sink>`.
//!
//! This crate turns route and condition text into a syntax tree with spans, exactly as the
//! reference edgeHub tokenises and parses it (`../shared/spec/routes.md`, sections 2, 3 and 6.1):
//! maximal-munch tokens, case rules for keywords and literals, comments, string escapes, number
//! forms and operator precedence. It knows nothing of types or messages; the `router` crate
//! compiles the tree.
//!
//! Layout:
//! - `route.pest`: the grammar, with the look-aheads that make PEG behave like maximal munch;
//! - [`parse`]: runs the grammar and builds the tree by precedence climbing;
//! - [`ast`]: the tree, and a printer whose output parses back to the same tree;
//! - [`lexical`]: string unescaping, hex values, and the wording of syntax errors;
//! - [`error`]: [`SyntaxError`], with line, column and what was expected.
//!
//! ```
//! let route = grammar::parse_route("FROM /messages/* WHERE temp > 30 INTO $upstream").unwrap();
//! assert_eq!(route.source.text, "/messages/*");
//! assert_eq!(route.condition.unwrap().text, "temp > 30");
//!
//! let err = grammar::parse_route("FROM /messages/* WHERE x == 'a' INTO $upstream").unwrap_err();
//! assert_eq!((err.span.line, err.span.column), (1, 27));
//! ```

pub mod ast;
pub mod error;
pub mod lexical;
pub mod parse;

pub use ast::{BinaryOp, Condition, Expr, ExprKind, Literal, Route, Sink, Source, Span, UnaryOp};
pub use error::SyntaxError;
pub use parse::{parse_condition, parse_route};
