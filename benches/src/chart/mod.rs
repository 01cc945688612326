//! **edgehub-chart**: the charts of `benches/compare.sh` from its results file (one JSON
//! object per run), and the generated block of `BENCHMARKS.md`.
//!
//! - [`results`]: reads the runs and takes the medians over the rounds per scenario and broker.
//! - [`draw`]: `throughput.png`, `cpu.png` and `latency.png` (PNG, with an embedded font).
//! - [`splice`]: replaces the block between the compare.sh markers of a Markdown file.

pub mod draw;
pub mod results;
pub mod splice;

use std::path::PathBuf;

use thiserror::Error;

/// What can go wrong reading results, drawing charts or splicing the Markdown block.
#[derive(Debug, Error)]
pub enum ChartError {
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line of the results file is not a run.
    #[error("{}:{line}: not a compare.sh run", path.display())]
    Json {
        /// The results file.
        path: PathBuf,
        /// Its line number, from 1.
        line: usize,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The results file holds no run.
    #[error("{}: no runs in the results file", path.display())]
    NoRuns {
        /// The results file.
        path: PathBuf,
    },
    /// The embedded font was refused.
    #[error("the embedded font could not be loaded")]
    Font,
    /// A chart could not be drawn or written.
    #[error("cannot draw {}", path.display())]
    Draw {
        /// The PNG file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The markers of the generated block are not one begin line followed by one end line.
    #[error("{}: {problem}", path.display())]
    Markers {
        /// The Markdown file.
        path: PathBuf,
        /// What is wrong with its markers.
        problem: splice::MarkerProblem,
    },
}
