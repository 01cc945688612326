//! `edgehub identity add` and `edgehub identity list`.
//!
//! Both work whether or not a hub runs on the same data folder: the identity registry is shared
//! through its file, and a running hub sees new identities at their first connection.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::INVALID;
use crate::config::{Config, ConfigError};
use crate::identity::IdentityError;
use crate::identity::id::is_system_module;

#[derive(Debug, Subcommand)]
pub(super) enum IdentityCommand {
    /// Create the identity of a module of this edge device (or of a leaf device with
    /// --device), or find the existing one, and print its connection string.
    Add(AddArgs),
    /// List the identities: one line each, `<id>  module|device`; keys are not shown.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub(super) struct AddArgs {
    /// The hub's configuration; without it, the embedded default (data folder ./data).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The module id.
    #[arg(required_unless_present = "device", conflicts_with = "device")]
    module_id: Option<String>,
    /// A leaf device id, instead of a module.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// The hub's configuration; without it, the embedded default (data folder ./data).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub(super) fn run(command: IdentityCommand) -> Result<ExitCode> {
    let outcome = match command {
        IdentityCommand::Add(args) => add(&args),
        IdentityCommand::List(args) => list(&args),
    };
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Failure::Invalid(message)) => {
            eprintln!("error: {message}");
            Ok(ExitCode::from(INVALID))
        }
        Err(Failure::Io(error)) => Err(error),
    }
}

fn add(args: &AddArgs) -> Result<(), Failure> {
    if let Some(module_id) = args.module_id.as_deref().filter(|m| is_system_module(m)) {
        return Err(Failure::Invalid(format!(
            "{module_id} is the runtime's own module; its identity is not handed out"
        )));
    }
    let config = Config::load_or_default(args.config.as_deref())?;
    let store = config.identity_registry()?;
    let identity = match (&args.module_id, &args.device) {
        (Some(module_id), _) => store.add_module(module_id)?,
        (None, Some(device_id)) => store.add_device(device_id)?,
        (None, None) => unreachable!("clap requires a module id or --device"),
    };
    println!("{}", identity.connection_string(&config.hostnames()));
    Ok(())
}

fn list(args: &ListArgs) -> Result<(), Failure> {
    let store = Config::load_or_default(args.config.as_deref())?.identity_registry()?;
    for identity in store.list()? {
        let kind = if identity.is_module() {
            "module"
        } else {
            "device"
        };
        println!("{}  {kind}", identity.id);
    }
    Ok(())
}

/// How a command fails: input it rejects (exit code 2, the message names the culprit) or an
/// I/O failure (exit code 1).
enum Failure {
    Invalid(String),
    Io(anyhow::Error),
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        match error {
            ConfigError::Read { .. } => Self::Io(error.into()),
            _ => Self::Invalid(chain(error)),
        }
    }
}

impl From<IdentityError> for Failure {
    fn from(error: IdentityError) -> Self {
        match error {
            IdentityError::InvalidId(_) => Self::Invalid(chain(error)),
            _ => Self::Io(error.into()),
        }
    }
}

/// An error and its causes on one line: `what: why: deeper why`.
fn chain(error: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::new(error))
}
