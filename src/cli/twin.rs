//! `edgehub twin get` and `edgehub twin set-desired`, and what the commands that talk to a
//! running hub share (`deploy`, `method invoke`): the target's client id, one request to the
//! admin endpoint, and exit codes (0 done, 2 input refused by the command or the hub, 1 no hub
//! or an I/O failure).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::INVALID;
use crate::admin::Client;
use crate::config::{Config, ConfigError};
use crate::identity::id::{EDGE_HUB, validate_device_id, validate_module_id};

#[derive(Debug, Subcommand)]
pub(super) enum TwinCommand {
    /// Print the twin of a module of this edge device (`$edgeHub`: the hub's own twin with its
    /// reported properties), of a module of another device as <deviceId>/<moduleId> (e.g.
    /// 'child-1/$edgeHub': what a child hub reported), or of a leaf device with --device.
    Get(GetArgs),
    /// Merge a JSON patch into the desired properties of a module (<deviceId>/<moduleId> for a
    /// module of another device, e.g. of a child edge device; or of a leaf device with
    /// --device, then the only argument is the patch); `null` deletes a property. The patch
    /// reaches the client at once when it is connected, and on its next twin read otherwise.
    /// Prints the new desired version: {"$version": n}.
    #[command(
        override_usage = "edgehub twin set-desired [OPTIONS] <MODULE_ID> <PATCH>\n       \
                                edgehub twin set-desired [OPTIONS] --device <ID> <PATCH>"
    )]
    SetDesired(SetDesiredArgs),
}

/// Where the running hub is.
#[derive(Debug, Args)]
pub(super) struct HubArgs {
    /// The hub's configuration; without it, the embedded default (data folder ./data).
    #[arg(long, value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(super) struct GetArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The module id, `$edgeHub`, or <deviceId>/<moduleId> for a module of another device.
    #[arg(required_unless_present = "device", conflicts_with = "device")]
    module_id: Option<String>,
    /// A leaf device id, instead of a module.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct SetDesiredArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The module id and the JSON patch, e.g. filter '{"threshold": 30}' (only the patch with
    /// --device).
    #[arg(value_names = ["MODULE_ID", "PATCH"], num_args = 1..=2, required = true)]
    args: Vec<String>,
    /// A leaf device id, instead of a module.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
}

pub(super) fn run(command: TwinCommand) -> Result<ExitCode> {
    finish(match command {
        TwinCommand::Get(args) => get(&args),
        TwinCommand::SetDesired(args) => set_desired(&args),
    })
}

/// The time a twin or deployment request may take.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn get(args: &GetArgs) -> Result<(), Failure> {
    let config = args.hub.load()?;
    let client_id = client_id(&config, args.module_id.as_deref(), args.device.as_deref())?;
    let twin = call(
        &config,
        "GET",
        &format!("/twins/{}", encode(&client_id)),
        None,
        REQUEST_TIMEOUT,
    )?;
    println!("{}", pretty(&twin));
    Ok(())
}

fn set_desired(args: &SetDesiredArgs) -> Result<(), Failure> {
    let (module_id, patch) = match (args.args.as_slice(), &args.device) {
        ([module_id, patch], None) => (Some(module_id.as_str()), patch),
        ([patch], Some(_)) => (None, patch),
        ([_], None) => return Err(invalid("give the module id and the JSON patch")),
        (_, Some(_)) => return Err(invalid("with --device, give only the JSON patch")),
        _ => return Err(invalid("give the module id and the JSON patch")),
    };
    let patch = parse_json(patch, "the patch")?;
    if !patch.is_object() {
        return Err(invalid("the patch must be a JSON object"));
    }
    let config = args.hub.load()?;
    let client_id = client_id(&config, module_id, args.device.as_deref())?;
    let version = call(
        &config,
        "PATCH",
        &format!("/twins/{}/properties/desired", encode(&client_id)),
        Some(&patch),
        REQUEST_TIMEOUT,
    )?;
    println!("{version}");
    Ok(())
}

impl HubArgs {
    /// The configuration named by `--config`, or the embedded default.
    pub(super) fn load(&self) -> Result<Config, Failure> {
        Ok(Config::load_or_default(self.config.as_deref())?)
    }
}

/// The client id of a module of this edge device (`$edgeHub` stays as is), of a module of
/// another device named as `<deviceId>/<moduleId>` (the form of an MQTT client id, e.g. a
/// module of a child edge device), or of a leaf device.
pub(super) fn client_id(
    config: &Config,
    module_id: Option<&str>,
    device: Option<&str>,
) -> Result<String, Failure> {
    match (module_id, device) {
        (Some(EDGE_HUB), None) => Ok(EDGE_HUB.to_owned()),
        (Some(qualified), None) if qualified.contains('/') => {
            let (device, module_id) = qualified.split_once('/').expect("it holds a slash");
            validate_device_id(device).map_err(|e| invalid(e.to_string()))?;
            validate_module_id(module_id).map_err(|e| invalid(e.to_string()))?;
            Ok(qualified.to_owned())
        }
        (Some(module_id), None) => {
            validate_module_id(module_id).map_err(|e| invalid(e.to_string()))?;
            Ok(format!("{}/{module_id}", config.device_id))
        }
        (None, Some(device)) => {
            validate_device_id(device).map_err(|e| invalid(e.to_string()))?;
            Ok(device.to_owned())
        }
        _ => Err(invalid("give a module id or --device, not both")),
    }
}

/// A client id as one path segment.
pub(super) fn encode(client_id: &str) -> String {
    percent_encoding::utf8_percent_encode(client_id, percent_encoding::NON_ALPHANUMERIC).collect()
}

/// JSON given on the command line.
pub(super) fn parse_json(text: &str, what: &str) -> Result<Value, Failure> {
    serde_json::from_str(text).map_err(|e| invalid(format!("{what} is not valid JSON: {e}")))
}

/// One request to the hub of `config`: the body of a 2xx answer; a 4xx answer is input the
/// hub refuses (its message, and each error on its own line); anything else is a failure.
pub(super) fn call(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Value, Failure> {
    let reply = Client::new(&config.data_dir)
        .request(method, path, body, timeout)
        .map_err(|e| Failure::Io(e.into()))?;
    match reply.status {
        200..=299 => Ok(reply.body),
        400..=499 => {
            let errors: Vec<&str> = reply
                .body
                .get("errors")
                .and_then(Value::as_array)
                .map(|errors| errors.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            Err(Failure::Invalid(if errors.is_empty() {
                reply.message()
            } else {
                errors.join("\n")
            }))
        }
        status => Err(Failure::Io(anyhow!(
            "the hub failed ({status}): {}",
            reply.message()
        ))),
    }
}

/// JSON for people: indented.
pub(super) fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// How a command fails: input refused (exit code 2, each line on stderr) or an I/O failure,
/// a missing hub included (exit code 1).
#[derive(Debug)]
pub(super) enum Failure {
    Invalid(String),
    Io(anyhow::Error),
}

pub(super) fn invalid(message: impl Into<String>) -> Failure {
    Failure::Invalid(message.into())
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        match error {
            ConfigError::Read { .. } => Self::Io(error.into()),
            _ => Self::Invalid(format!("{:#}", anyhow::Error::new(error))),
        }
    }
}

/// The exit code of a command's outcome.
pub(super) fn finish(outcome: Result<(), Failure>) -> Result<ExitCode> {
    match outcome {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(Failure::Invalid(message)) => {
            for line in message.lines() {
                eprintln!("error: {line}");
            }
            Ok(ExitCode::from(INVALID))
        }
        Err(Failure::Io(error)) => Err(error),
    }
}
