//! `edgehub identity add`, `list`, `remove` and `rotate`.
//!
//! They work whether or not a hub runs on the same data folder: the identity registry is shared
//! through its file, and a running hub sees new identities at their first connection, and
//! closes within seconds the connections of a removed identity or of a rotated key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};

use super::INVALID;
use crate::config::{Config, ConfigError};
use crate::identity::id::is_system_module;
use crate::identity::{ClientIdentity, IdentityError, IdentityRegistry, KeySlot, Origin};

#[derive(Debug, Subcommand)]
pub(super) enum IdentityCommand {
    /// Create the identity of a module of this edge device (or of a child edge device's module
    /// named `<deviceId>/<moduleId>`, or of a leaf device with --device), or find the existing
    /// one, and print its connection string.
    Add(AddArgs),
    /// List the identities: one line each, `<id>  module|device`, followed by `  upstream` for
    /// one learned from the parent hub; keys are not shown.
    List(ListArgs),
    /// Remove the identity of a module (or of a leaf device with --device); a running hub
    /// closes its connections within seconds. A module of the deployment gets a new identity
    /// when the hub starts again.
    Remove(RemoveArgs),
    /// Replace the primary (or --key secondary) key of an identity with a new one and print
    /// the connection string with the new key; a running hub closes within seconds the
    /// connections authenticated with the old key.
    Rotate(RotateArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("a_device").args(["device", "edge_device"])))]
pub(super) struct AddArgs {
    /// The hub's configuration; without it, the embedded default (data folder ./data).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The module id, or `<deviceId>/<moduleId>` for a module of a child edge device.
    #[arg(
        required_unless_present_any = ["device", "edge_device"],
        conflicts_with_all = ["device", "edge_device"]
    )]
    module_id: Option<String>,
    /// A leaf device id, instead of a module.
    #[arg(long, value_name = "ID", conflicts_with = "edge_device")]
    device: Option<String>,
    /// A child edge device (nested deployments): prints the connection string of its
    /// `$edgeHub`, for the `[upstream]` of the child hub.
    #[arg(long, value_name = "ID")]
    edge_device: Option<String>,
    /// With --device or --edge-device: the child edge device it sits under (its hub connects
    /// here on the device's behalf).
    #[arg(long, value_name = "EDGE_DEVICE_ID", requires = "a_device")]
    parent: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct RemoveArgs {
    /// The hub's configuration; without it, the embedded default (data folder ./data).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The module id, or `<deviceId>/<moduleId>` for a module of a child edge device.
    #[arg(required_unless_present = "device", conflicts_with = "device")]
    module_id: Option<String>,
    /// A leaf device id, instead of a module.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct RotateArgs {
    /// The hub's configuration; without it, the embedded default (data folder ./data).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The module id, or `<deviceId>/<moduleId>` for a module of a child edge device.
    #[arg(required_unless_present = "device", conflicts_with = "device")]
    module_id: Option<String>,
    /// A leaf device id, instead of a module.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// Which key to replace.
    #[arg(long, value_enum, default_value_t = KeyArg::Primary)]
    key: KeyArg,
}

/// `--key primary|secondary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KeyArg {
    Primary,
    Secondary,
}

impl From<KeyArg> for KeySlot {
    fn from(key: KeyArg) -> Self {
        match key {
            KeyArg::Primary => Self::Primary,
            KeyArg::Secondary => Self::Secondary,
        }
    }
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
        IdentityCommand::Remove(args) => remove(&args),
        IdentityCommand::Rotate(args) => rotate(&args),
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
    if let Some(module_id) = args
        .module_id
        .as_deref()
        .map(|m| split_module(m).1)
        .filter(|m| is_system_module(m))
    {
        return Err(Failure::Invalid(format!(
            "{module_id} is the runtime's own module; its identity is not handed out"
        )));
    }
    let config = Config::load_or_default(args.config.as_deref())?;
    let store = config.identity_registry()?;
    let parent = args.parent.as_deref();
    let identity = match (&args.module_id, &args.device, &args.edge_device) {
        (Some(module_id), _, _) => match split_module(module_id) {
            (None, module_id) => store.add_module(module_id)?,
            // A module of a child edge device: its hub learns it through the device scope.
            (Some(device_id), module_id) => {
                store
                    .add_module_of(device_id, module_id)
                    .map_err(|error| match error {
                        IdentityError::NotAnEdgeDevice(_) => Failure::Invalid(chain(error)),
                        error => Failure::from(error),
                    })?
            }
        },
        (None, Some(device_id), _) => match parent {
            Some(parent) => store.add_device_under(device_id, parent)?,
            None => store.add_device(device_id)?,
        },
        (None, None, Some(edge_device)) => store.add_edge_device(edge_device, parent)?,
        (None, None, None) => unreachable!("clap requires a module id, --device or --edge-device"),
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
        match identity.origin {
            Origin::Local => println!("{}  {kind}", identity.id),
            Origin::Upstream => println!("{}  {kind}  upstream", identity.id),
        }
    }
    Ok(())
}

fn remove(args: &RemoveArgs) -> Result<(), Failure> {
    let (_, store, id) = target(
        args.config.as_deref(),
        args.module_id.as_deref(),
        args.device.as_deref(),
    )?;
    store.remove(&id)?;
    eprintln!("removed {id}");
    Ok(())
}

fn rotate(args: &RotateArgs) -> Result<(), Failure> {
    let (config, store, id) = target(
        args.config.as_deref(),
        args.module_id.as_deref(),
        args.device.as_deref(),
    )?;
    let slot = KeySlot::from(args.key);
    let identity = store.rotate(&id, slot)?;
    println!(
        "{}",
        identity.connection_string_with(&config.hostnames(), slot)
    );
    Ok(())
}

/// The configuration, its registry and the identity a `remove` or `rotate` names.
fn target(
    config: Option<&std::path::Path>,
    module_id: Option<&str>,
    device_id: Option<&str>,
) -> Result<(Config, IdentityRegistry, ClientIdentity), Failure> {
    if let Some(module_id) = module_id
        .map(|m| split_module(m).1)
        .filter(|m| is_system_module(m))
    {
        return Err(Failure::Invalid(format!(
            "{module_id} is the runtime's own module; its identity is not managed here"
        )));
    }
    let config = Config::load_or_default(config)?;
    let store = config.identity_registry()?;
    let id = match (module_id.map(split_module), device_id) {
        (Some((None, module_id)), _) => store.module_identity(module_id),
        (Some((Some(device_id), module_id)), _) => ClientIdentity::module(device_id, module_id),
        (None, Some(device_id)) => ClientIdentity::device(device_id),
        (None, None) => unreachable!("clap requires a module id or --device"),
    };
    Ok((config, store, id))
}

/// A module named `<deviceId>/<moduleId>` (the form of an MQTT client id: a module of a child
/// edge device) or by its bare id (a module of this hub's own device).
fn split_module(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((device_id, module_id)) => (Some(device_id), module_id),
        None => (None, name),
    }
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
            IdentityError::InvalidId(_)
            | IdentityError::Unknown(_)
            | IdentityError::FromUpstream(_) => Self::Invalid(chain(error)),
            _ => Self::Io(error.into()),
        }
    }
}

/// An error and its causes on one line: `what: why: deeper why`.
fn chain(error: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::new(error))
}
