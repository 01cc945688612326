//! Shared inputs of the benchmarks (and, later, the load generator).

pub mod load;
pub mod router_inputs;
