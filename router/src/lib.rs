//! The route engine.
