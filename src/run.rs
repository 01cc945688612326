//! `edgehub run`: from a configuration to a running hub, until SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use router::EdgeHubRoutes;

use crate::config::Config;
use crate::hub::{Hub, HubSettings};
use crate::identity::IdentityRegistry;
use crate::mqtt::auth::SasAuthenticator;
use crate::upstream::UpstreamSettings;
use crate::upstream::scope::{ScopeSync, ScopeSyncSettings};

/// Runs the hub described by `config` until SIGTERM or SIGINT, then shuts it down cleanly
/// (stop accepting, close connections, close the store).
///
/// # Errors
///
/// When the deployment, the identities, the certificates, the store or a listener cannot be
/// set up, or the store fails to close.
pub async fn run(config: Config) -> Result<()> {
    // Keys, certificates, twins and the store are the owner's only, whatever the umask the hub
    // was started with; so is the data folder.
    let umask = crate::fs::restrict_umask();
    tracing::debug!(
        previous = format_args!("{umask:03o}"),
        "file-creation mask set to 077"
    );
    crate::fs::create_private_dir(&config.data_dir).with_context(|| {
        format!(
            "making the data folder {} private",
            config.data_dir.display()
        )
    })?;
    if let Err(e) = crate::fs::remove_leftovers(&config.data_dir) {
        tracing::warn!(error = %e, "cannot look for leftover temporary files");
    }
    for warning in config.exposure_warnings() {
        tracing::warn!("{warning}");
    }
    let manifest_stamp = crate::admin::ManifestStamp::of(&config);
    let deployment = config
        .load_deployment()
        .context("reading the deployment manifest")?;
    // With upstream, the last deployment applied from upstream wins over the local manifest
    // (an offline restart keeps what upstream deployed); a child hub without a manifest of
    // its own starts with no routes until then.
    let edge_hub_desired = match config
        .upstream
        .as_ref()
        .and_then(|_| crate::upstream::edge_hub_sync::last_applied(&config.data_dir))
    {
        Some(desired) => {
            tracing::info!(version = %desired["$version"], "starting on the last deployment from upstream");
            desired
        }
        None => {
            if config.manifest == crate::config::ManifestSource::FromUpstream {
                tracing::info!("no manifest of its own: no routes until upstream deploys");
            }
            deployment.edge_hub.clone()
        }
    };
    let routes = EdgeHubRoutes::from_desired(&edge_hub_desired)
        .map_err(|e| anyhow::anyhow!("the $edgeHub desired properties are invalid: {e}"))?;
    let identities = Arc::new(
        config
            .identity_registry()
            .context("opening the identity registry")?,
    );
    let created = identities
        .add_modules(deployment.modules.iter().map(String::as_str))
        .context("creating the identities of the deployment's modules")?;
    tracing::info!(modules = created.len(), "module identities ready");
    let tls = Arc::new(crate::certs::ServerTls::load(&config).context("setting up TLS")?);
    let settings = HubSettings {
        device_id: config.device_id.clone(),
        data_dir: config.data_dir.clone(),
        mqtt: config.listen.mqtt,
        mqtts: Some((config.listen.mqtts, tls.config())),
        https: Some((config.listen.https, tls.config())),
        metrics: config.listen.metrics,
        store: store_config(&config),
        routes,
        connect_timeout: HubSettings::CONNECT_TIMEOUT,
        max_connections: config.limits.max_connections,
        upstream: upstream_settings(&config, &identities)?,
        desired_version: edge_hub_desired
            .get("$version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(1),
        strict_topics: config.strict_topics,
    };
    let unknown_identity = Arc::new(tokio::sync::Notify::new());
    let scope_sync = scope_sync(&config, &identities, &unknown_identity)?;
    let auth = Arc::new(
        SasAuthenticator::new(Arc::clone(&identities), config.hostnames())
            .with_unknown_identity_hint(unknown_identity),
    );
    let hub = Hub::start(settings, auth).await?;
    let hub = Arc::new(hub);
    // Renews the generated certificate (or reloads changed [tls] files) for new handshakes.
    let _renewal = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(tls.keep_fresh()));
    hub.follow_upstream_twin();
    let scope_sync = scope_sync.map(ScopeSync::spawn);
    let admin = match crate::admin::Admin::start(&hub, &config, manifest_stamp) {
        Ok(admin) => admin,
        Err(e) => {
            if let Some(sync) = scope_sync {
                sync.stop().await;
            }
            stop(hub).await?;
            return Err(e).context("binding the admin socket");
        }
    };
    tracing::info!(device_id = %config.device_id, gateway = %config.gateway_hostname, "edgehub running");
    let signalled = shutdown_signal().await;
    tracing::info!("shutting down");
    if let Some(sync) = scope_sync {
        sync.stop().await;
    }
    admin.stop().await;
    stop(hub).await?;
    signalled
}

/// Shuts the hub down once nothing else holds it (the admin endpoint has stopped).
async fn stop(hub: Arc<Hub>) -> Result<()> {
    Arc::try_unwrap(hub)
        .map_err(|_| anyhow::anyhow!("the hub is still shared at shutdown"))?
        .shutdown()
        .await
}

/// The `[upstream]` table as the hub needs it: TLS roots read, credentials chosen (toward IoT
/// Hub, from the same registry the hub authenticates with).
fn upstream_settings(
    config: &Config,
    identities: &Arc<IdentityRegistry>,
) -> Result<Option<UpstreamSettings>> {
    let Some(upstream) = &config.upstream else {
        return Ok(None);
    };
    let mut settings = UpstreamSettings::new(
        &upstream.connection_string,
        upstream.port,
        upstream.ca.as_deref(),
        Some(Arc::clone(identities)),
    )
    .context("setting up the upstream connection")?;
    settings.live_first = upstream.live_first;
    Ok(Some(settings))
}

/// The device-scope sync of the `[upstream]` table (not started yet), woken by
/// `unknown_identity`.
fn scope_sync(
    config: &Config,
    identities: &Arc<IdentityRegistry>,
    unknown_identity: &Arc<tokio::sync::Notify>,
) -> Result<Option<ScopeSync>> {
    let Some(upstream) = &config.upstream else {
        return Ok(None);
    };
    let settings = ScopeSyncSettings::new(
        &upstream.connection_string,
        upstream.https_port,
        upstream.ca.as_deref(),
        upstream.scope_refresh,
    )
    .context("setting up the device scope sync")?;
    Ok(Some(ScopeSync::new(
        settings,
        Arc::clone(identities),
        Arc::clone(unknown_identity),
    )))
}

fn store_config(config: &Config) -> store::StoreConfig {
    store::StoreConfig::new(config.data_dir.join("store"))
        .with_durability(config.store.durability)
        .with_quota(config.store.quota)
}

async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
