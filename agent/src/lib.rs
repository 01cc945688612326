//! The IoT Edge agent: reads a deployment manifest (`$edgeAgent`'s desired properties), runs
//! the hub and the modules it names through a runtime, restarts them by their policy, and
//! reports what runs.
//!
//! Layout:
//! - [`manifest`]: the deployment, parsed and validated with the reference status codes.
//! - [`create_options`]: `createOptions` pieces, reassembled and split.
//! - [`lint`]: `edgeagent check`, the hand-made mistakes with their fixes.
pub mod control;
pub mod create_options;
pub mod daemon;
pub mod environment;
pub mod hub_twin;
pub mod identity;
pub mod lint;
pub mod manifest;
pub mod plan;
pub mod reconcile;
pub mod reported;
pub mod restart;
pub mod runtime;
pub mod workload;
