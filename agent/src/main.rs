//! `edgeagent`: the command line of the edge agent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// The IoT Edge agent.
#[derive(Debug, Parser)]
#[command(name = "edgeagent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a deployment manifest: exit 0 when valid (warnings on stderr), 2 otherwise.
    Check {
        /// The deployment manifest.
        manifest: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check { manifest } => check(&manifest),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edgeagent: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {}: not JSON: {e}", path.display());
            return Ok(ExitCode::from(2));
        }
    };
    let findings = agent::lint::check(&manifest);
    for finding in &findings {
        eprintln!("{finding}");
    }
    if agent::lint::has_errors(&findings) {
        Ok(ExitCode::from(2))
    } else {
        println!("{}: valid", path.display());
        Ok(ExitCode::SUCCESS)
    }
}
