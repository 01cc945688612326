//! The `edgehub` command line. The commands, arguments and outputs are a contract that tools
//! outside the project rely on: extend them, never change them.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod deploy;
mod identity;
mod method;
mod route;
mod run;
mod twin;

/// An IoT Edge hub: routes, durable store-and-forward, MQTT for the official device SDKs.
#[derive(Debug, Parser)]
#[command(name = "edgehub", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check and test routes.
    #[command(subcommand)]
    Route(route::RouteCommand),
    /// Create, list and remove the identities of modules and leaf devices, and rotate their keys.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Run the hub until SIGTERM or SIGINT.
    Run(run::RunArgs),
    /// Read twins and set desired properties through the running hub.
    #[command(subcommand)]
    Twin(twin::TwinCommand),
    /// Check a deployment manifest and apply its routes to the running hub.
    Deploy(deploy::DeployArgs),
    /// Invoke direct methods of connected modules and leaf devices.
    #[command(subcommand)]
    Method(method::MethodCommand),
}

/// Runs a parsed command line.
///
/// # Errors
///
/// Failures that are not the command's own verdict (unreadable files and the like); a verdict
/// such as "this route is invalid" is an exit code.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Route(command) => route::run(command),
        Command::Identity(command) => identity::run(command),
        Command::Run(args) => run::run(&args),
        Command::Twin(command) => twin::run(command),
        Command::Deploy(args) => deploy::run(&args),
        Command::Method(command) => method::run(command),
    }
}

/// Exit code for input that the command rejects (an invalid route, a malformed file).
const INVALID: u8 = 2;
