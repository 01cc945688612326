//! `edgehub-chart`: the charts and the `BENCHMARKS.md` block of `benches/compare.sh`.
//!
//! ```sh
//! # throughput.png, cpu.png and latency.png from compare.sh's results (one JSON run a line):
//! edgehub-chart render results.jsonl --out benches/results/2026-11-23T1444 --commit af1cc3d
//! # Replace the lines between the compare.sh markers of BENCHMARKS.md with a file's text:
//! edgehub-chart splice BENCHMARKS.md --block block.md
//! ```

use std::fs;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use edgehub_benches::chart::draw::render_all;
use edgehub_benches::chart::results::{Summary, read_runs};
use edgehub_benches::chart::splice::splice_file;

/// Charts and the BENCHMARKS.md block of benches/compare.sh.
#[derive(Debug, Parser)]
#[command(name = "edgehub-chart", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Draw throughput.png, cpu.png and latency.png (medians over the rounds).
    Render {
        /// compare.sh's results: one JSON object per run and line.
        results: PathBuf,
        /// The folder of the PNGs (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The commit measured, named under the titles.
        #[arg(long)]
        commit: Option<String>,
    },
    /// Replace the lines between `<!-- compare.sh: begin -->` and `<!-- compare.sh: end -->`
    /// of a Markdown file with a block (markers and block appended when there are none).
    Splice {
        /// The Markdown file, rewritten through a temporary file and a rename.
        file: PathBuf,
        /// The file holding the new block.
        #[arg(long, value_name = "FILE")]
        block: PathBuf,
    },
}

fn main() -> Result<()> {
    match Args::parse().command {
        Command::Render {
            results,
            out,
            commit,
        } => {
            let summary = Summary::of(&read_runs(&results)?);
            for path in render_all(&summary, &out, commit.as_deref())? {
                println!("{}", path.display());
            }
        }
        Command::Splice { file, block } => {
            let block = fs::read_to_string(&block)
                .with_context(|| format!("cannot read the block {}", block.display()))?;
            splice_file(&file, &block)?;
        }
    }
    Ok(())
}
