//! `edgehub method invoke`: calls a direct method of a module or leaf device connected to the
//! running hub.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::twin::{self, Failure, HubArgs, invalid};

#[derive(Debug, Subcommand)]
pub(super) enum MethodCommand {
    /// Invoke a direct method and print {"status": n, "payload": ...}: the client's answer,
    /// 404 when it is not connected and subscribed to methods within --connect-timeout, 504
    /// when it does not answer within --response-timeout. The command exits 0 whatever the
    /// status: it is the method's answer.
    #[command(
        override_usage = "edgehub method invoke [OPTIONS] <MODULE_ID> <METHOD> [PAYLOAD]\n       \
                                edgehub method invoke [OPTIONS] --device <ID> <METHOD> [PAYLOAD]"
    )]
    Invoke(InvokeArgs),
}

#[derive(Debug, Args)]
pub(super) struct InvokeArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The module id (<deviceId>/<moduleId> for a module of another device, e.g. of a child
    /// edge device), the method name and the JSON payload, e.g. filter reset '{"level": 2}'
    /// (without the module id with --device; the payload defaults to null).
    #[arg(value_names = ["MODULE_ID", "METHOD", "PAYLOAD"], num_args = 1..=3, required = true)]
    args: Vec<String>,
    /// A leaf device id, instead of a module.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
    /// Seconds to wait for the answer (0 to 300).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    response_timeout: u64,
    /// Seconds to wait for the client to be connected and subscribed (0 to 300).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    connect_timeout: u64,
}

pub(super) fn run(command: MethodCommand) -> Result<ExitCode> {
    match command {
        MethodCommand::Invoke(args) => twin::finish(invoke(&args)),
    }
}

fn invoke(args: &InvokeArgs) -> Result<(), Failure> {
    let (module_id, method, payload) = match (args.args.as_slice(), &args.device) {
        ([module_id, method, rest @ ..], None) => (Some(module_id.as_str()), method, rest.first()),
        ([method, rest @ ..], Some(_)) if rest.len() <= 1 => (None, method, rest.first()),
        (_, None) => return Err(invalid("give the module id and the method name")),
        (_, Some(_)) => {
            return Err(invalid(
                "with --device, give only the method name and the payload",
            ));
        }
    };
    let payload = match payload {
        Some(text) => twin::parse_json(text, "the payload")?,
        None => Value::Null,
    };
    let config = args.hub.load()?;
    let client_id = twin::client_id(&config, module_id, args.device.as_deref())?;
    let request = json!({
        "payload": payload,
        "responseTimeoutInSeconds": args.response_timeout,
        "connectTimeoutInSeconds": args.connect_timeout,
    });
    let waited = Duration::from_secs(args.response_timeout.saturating_add(args.connect_timeout));
    let result = twin::call(
        &config,
        "POST",
        &format!(
            "/methods/{}/{}",
            twin::encode(&client_id),
            twin::encode(method)
        ),
        Some(&request),
        waited + twin::REQUEST_TIMEOUT,
    )?;
    println!("{result}");
    Ok(())
}
