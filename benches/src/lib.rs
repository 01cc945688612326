//! Shared inputs of the benchmarks, the load generator, the charts of compare.sh and the soak
//! (`soak`, issue 14).

pub mod chart;
pub mod load;
pub mod router_inputs;
pub mod soak;
