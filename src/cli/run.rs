//! `edgehub run [--config FILE]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;

use super::INVALID;
use crate::config::Config;

#[derive(Debug, Args)]
pub(super) struct RunArgs {
    /// The configuration file (TOML). Without it, the embedded default runs: a `localhost`
    /// gateway, a data folder `./data`, generated certificates and an example deployment.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub(super) fn run(args: &RunArgs) -> Result<ExitCode> {
    // Without --config, under an IoT Edge runtime: the environment and the workload API.
    let loaded = match args
        .config
        .as_deref()
        .map_or_else(crate::edge_environment::config_from_environment, |_| None)
    {
        Some(from_runtime) => from_runtime.map_err(|e| e.to_string()),
        None => Config::load_or_default(args.config.as_deref()).map_err(|e| e.to_string()),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(INVALID));
        }
    };
    // sled's own log is off: every error of sled reaches the store as an `Err`, which logs it
    // (a full disk once per episode, where sled logs each failed write and flush).
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sled=off")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.runtime.worker_threads())
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(crate::run::run(config))?;
    Ok(ExitCode::SUCCESS)
}
