//! `edgehub deploy [--config FILE] manifest.json`: checks a deployment manifest's `$edgeHub`
//! routes, then applies them to the running hub.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;
use router::EdgeHubRoutes;

use super::twin::{self, Failure, HubArgs, REQUEST_TIMEOUT, invalid};
use crate::identity::id::EDGE_HUB;
use crate::manifest;

#[derive(Debug, Args)]
pub(super) struct DeployArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// The deployment manifest (`modulesContent.$edgeHub."properties.desired"`, with or
    /// without the Azure CLI's `content` wrapper).
    #[arg(value_name = "MANIFEST")]
    manifest: PathBuf,
}

/// Checks the manifest locally (every bad route is printed with its name, exit 2), then sends
/// it to the running hub, which replaces its route table atomically; prints
/// {"lastDesiredVersion": n, "lastDesiredStatus": {"code": 200, ...}}. The hub keeps the new
/// routes until it restarts; the configuration's manifest applies again at start.
pub(super) fn run(args: &DeployArgs) -> Result<ExitCode> {
    twin::finish(deploy(args))
}

fn deploy(args: &DeployArgs) -> Result<(), Failure> {
    let text = std::fs::read_to_string(&args.manifest)
        .with_context(|| format!("reading {}", args.manifest.display()))
        .map_err(Failure::Io)?;
    let document = twin::parse_json(&text, &args.manifest.display().to_string())?;
    let desired = manifest::desired_properties(&document, EDGE_HUB)
        .map_err(|e| invalid(format!("{}: {e}", args.manifest.display())))?;
    EdgeHubRoutes::from_desired(desired)
        .and_then(|routes| routes.table())
        .map_err(|errors| {
            invalid(
                errors
                    .0
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
    let config = args.hub.load()?;
    let outcome = twin::call(
        &config,
        "POST",
        "/deployment",
        Some(&document),
        REQUEST_TIMEOUT,
    )?;
    println!("{outcome}");
    Ok(())
}
