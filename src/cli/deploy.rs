//! `edgehub deploy [--config FILE] manifest.json`: checks a deployment manifest's `$edgeHub`
//! routes, then applies them to the running hub.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;
use router::{CompiledRoute, ConfigError, EdgeHubRoutes};
use serde_json::Value;

use super::twin::{self, Failure, HubArgs, REQUEST_TIMEOUT, invalid};
use crate::config::{Config, ManifestSource};
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
    /// A child edge device (nested deployments): the manifest is kept as the desired
    /// properties of its `$edgeHub` (and `$edgeAgent`) twins, which its hub reads at once when
    /// connected, at its next connection otherwise. Prints their new versions:
    /// {"$edgeHub": {"$version": n}, "$edgeAgent": {"$version": m}}.
    #[arg(long, value_name = "ID")]
    device: Option<String>,
}

/// Checks the manifest locally (every bad route is printed with its name, exit 2), then sends
/// it to the running hub, which replaces its route table atomically; prints
/// {"lastDesiredVersion": n, "lastDesiredStatus": {"code": 200, ...}}; the deployment's modules
/// get identities (`edgehub identity add`). The hub keeps the new routes until it restarts;
/// the configuration's manifest applies again at start.
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
    let problems = route_problems(desired);
    if !problems.is_empty() {
        return Err(invalid(problems.join("\n")));
    }
    let config = args.hub.load()?;
    if let Some(device) = &args.device {
        return deploy_to_child(&config, device, &document);
    }
    // The modules of $edgeAgent, read as `edgehub run` reads its manifest.
    let modules = Config {
        manifest: ManifestSource::File(args.manifest.clone()),
        ..config.clone()
    }
    .load_deployment()?
    .modules;
    let outcome = twin::call(
        &config,
        "POST",
        "/deployment",
        Some(&document),
        REQUEST_TIMEOUT,
    )?;
    // As at start: every module of the deployment has an identity (a running hub sees new
    // ones at their first connection).
    config
        .identity_registry()
        .and_then(|store| store.add_modules(modules.iter().map(String::as_str)))
        .context("creating the identities of the deployment's modules")
        .map_err(Failure::Io)?;
    println!("{outcome}");
    Ok(())
}

/// Keeps the deployment for the child edge device `device`, registered here with
/// `edgehub identity add --edge-device`.
fn deploy_to_child(config: &Config, device: &str, document: &Value) -> Result<(), Failure> {
    crate::identity::id::validate_device_id(device).map_err(|e| invalid(e.to_string()))?;
    let registered = config
        .identity_registry()
        .and_then(|registry| registry.is_edge_device(device))
        .context("reading the identity registry")
        .map_err(Failure::Io)?;
    if !registered {
        return Err(invalid(format!(
            "{device} is not a child edge device of this hub (register it with: edgehub identity add --edge-device {device})"
        )));
    }
    let outcome = twin::call(
        config,
        "POST",
        &format!("/devices/{}/deployment", twin::encode(device)),
        Some(document),
        REQUEST_TIMEOUT,
    )?;
    println!("{outcome}");
    Ok(())
}

/// Every problem of `$edgeHub` desired properties, one line each, every bad route named:
/// those of the document and its entries and, since the route engine compiles routes only
/// once the entries are well formed, also the readable routes that do not compile.
fn route_problems(desired: &Value) -> Vec<String> {
    let errors = match EdgeHubRoutes::from_desired(desired) {
        Ok(routes) => {
            return routes
                .table()
                .err()
                .map(|e| e.0)
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect();
        }
        Err(errors) => errors.0,
    };
    let named = |name: &str| {
        errors.iter().any(|e| matches!(e, ConfigError::Route { name: n, .. } | ConfigError::RouteSpec { name: n, .. } if n == name))
    };
    let mut problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let routes = desired.get("routes").and_then(Value::as_object);
    for (name, value) in routes.into_iter().flatten() {
        let text = value
            .as_str()
            .or_else(|| value.get("route").and_then(Value::as_str))
            .filter(|text| !text.trim().is_empty());
        if let (Some(text), false) = (text, named(name))
            && let Err(error) = CompiledRoute::compile(text)
        {
            problems.push(
                ConfigError::Route {
                    name: name.clone(),
                    error,
                }
                .to_string(),
            );
        }
    }
    problems
}
