//! The manifest watcher: deploys the configuration's manifest file when it changes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::{Config, ManifestSource};
use crate::hub::Hub;
use crate::stop::Stop;

/// How often [`watch_manifest`] looks at the manifest file.
pub const MANIFEST_POLL: Duration = Duration::from_secs(2);

/// The modification time and size of the configuration's manifest file (`None` for an
/// embedded, absent or missing one): the watcher deploys the file when this changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestStamp(Option<(SystemTime, u64)>);

impl ManifestStamp {
    /// The stamp of the configuration's manifest now; take it before reading the manifest, so
    /// that a change made while the hub starts is deployed too.
    #[must_use]
    pub fn of(config: &Config) -> Self {
        match &config.manifest {
            ManifestSource::File(path) => Self::of_file(path),
            ManifestSource::Embedded(_) | ManifestSource::FromUpstream => Self(None),
        }
    }

    fn of_file(path: &Path) -> Self {
        let stamp = std::fs::metadata(path)
            .ok()
            .and_then(|meta| Some((meta.modified().ok()?, meta.len())));
        Self(stamp)
    }
}

/// Deploys the configuration's manifest file whenever its modification time or size differs
/// from the last seen (`loaded` first; looked at every `interval`), until `stop` completes;
/// returns at once when the manifest is embedded or there is none. The deployment's modules get their
/// identities first. An unreadable or malformed file is logged and retried at its next
/// change; invalid `$edgeHub` routes are reported with code 400 and the running routes stay.
pub async fn watch_manifest(
    hub: Arc<Hub>,
    config: Config,
    loaded: ManifestStamp,
    interval: Duration,
    mut stop: Stop,
) {
    let ManifestSource::File(manifest) = config.manifest.clone() else {
        return;
    };
    let mut seen = loaded;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.stopped() => return,
        }
        let now = ManifestStamp::of_file(&manifest);
        if now.0.is_none() || now == seen {
            continue;
        }
        seen = now;
        tracing::info!(manifest = %manifest.display(), "the deployment manifest changed");
        let deployment = match config.load_deployment() {
            Ok(deployment) => deployment,
            Err(e) => {
                tracing::error!(error = %e, "the changed manifest is not used; the running routes stay");
                continue;
            }
        };
        match config
            .identity_registry()
            .and_then(|s| s.add_modules(deployment.modules.iter().map(String::as_str)))
        {
            Ok(identities) => {
                tracing::debug!(modules = identities.len(), "module identities ready");
            }
            Err(e) => {
                tracing::error!(error = %e, "creating the identities of the deployment's modules");
            }
        }
        tracing::info!("deploying the changed manifest file");
        let _ = hub.deploy(&deployment.edge_hub);
    }
}
