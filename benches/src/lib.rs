//! Shared inputs of the benchmarks, the load generator and the charts of compare.sh.

pub mod chart;
pub mod load;
pub mod router_inputs;
