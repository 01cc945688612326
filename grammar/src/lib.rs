//! The route language grammar.
