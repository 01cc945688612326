//! `edgeagent run`: the manifest file watched every 2 s, a reconcile pass after each change
//! and every period, the reported properties published on the agent's socket and written to
//! `<data_dir>/reported.json`, and an orderly stop.
//!
//! The agent keeps `$edgeAgent`'s reported properties itself (the patch of each pass applied
//! to the document it holds, what `edgeagent status` shows) and writes them to the hub's
//! twin of `$edgeAgent` through the hub's admin socket ([`crate::hub_twin`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::control;
use crate::hub_twin::HubTwin;
use crate::manifest::{self, DeploymentError, Desired, StatusCode};
use crate::plan::RestartRecord;
use crate::reconcile::{Judged, Reconciler};
use crate::reported::{self, ReportInput};
use crate::runtime::Runtime;

/// How `run` behaves.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The deployment manifest.
    pub manifest: PathBuf,
    /// The agent's folder (socket, reported.json, deployment id, last applied deployment).
    pub data_dir: PathBuf,
    /// The pause after each pass (reference 5 s).
    pub period: Duration,
    /// How often the manifest file is looked at (2 s).
    pub poll: Duration,
    /// On stop, leave the modules running.
    pub leave_modules: bool,
    /// The longest a pass may take before it is abandoned (reference 10 min).
    pub pass_timeout: Duration,
    /// The hub's twin of `$edgeAgent`, where the reported properties are written too.
    pub hub_twin: Option<HubTwin>,
}

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data folder or the control socket.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// The manifest file, judged again whenever its content changes; the deployment id is a
/// counter kept in `<data_dir>/deployment-id` and bumped on each change.
#[derive(Debug)]
pub struct ManifestSource {
    path: PathBuf,
    id_file: PathBuf,
    counter: u64,
    hash: Option<u64>,
    fresh: bool,
}

impl ManifestSource {
    /// Watches `path`; the counter continues from `data_dir`.
    #[must_use]
    pub fn open(path: PathBuf, data_dir: &Path) -> Self {
        let id_file = data_dir.join("deployment-id");
        let (counter, hash) = std::fs::read_to_string(&id_file)
            .ok()
            .and_then(|text| {
                let (c, h) = text.trim().split_once(' ')?;
                Some((c.parse().ok()?, h.parse().ok()))
            })
            .unwrap_or((0, None));
        Self {
            path,
            id_file,
            counter,
            hash,
            fresh: true,
        }
    }

    /// The file judged again if it changed since the last call (always on the first).
    pub fn poll(&mut self) -> Option<(Judged, Option<Value>)> {
        let fresh = self.fresh;
        let (judged, desired, changed) = self.judge();
        (fresh || changed).then_some((judged, desired))
    }

    /// The file judged now, with its desired document, and whether it changed since the
    /// last look.
    pub fn judge(&mut self) -> (Judged, Option<Value>, bool) {
        let content = std::fs::read(&self.path);
        let mut h = DefaultHasher::new();
        match &content {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.kind().to_string().hash(&mut h),
        }
        let hash = h.finish();
        let changed = self.hash != Some(hash);
        self.fresh = false;
        if changed {
            self.counter += 1;
            self.hash = Some(hash);
            let _ = std::fs::write(&self.id_file, format!("{} {hash}\n", self.counter));
        }
        let version = self.counter;
        let format = |description: String| DeploymentError {
            code: StatusCode::ConfigFormatError,
            description,
        };
        let outcome = match content {
            Err(e) => Err(format(format!("reading {}: {e}", self.path.display()))),
            Ok(bytes) => match serde_json::from_slice::<Value>(&bytes) {
                Err(e) => Err(format(format!("{} is not JSON: {e}", self.path.display()))),
                Ok(value) => {
                    let desired = manifest::desired_document(&value)
                        .ok()
                        .map(|d| Value::Object(d.clone()));
                    return (
                        Judged {
                            version,
                            outcome: manifest::parse_manifest(&value, version),
                        },
                        desired,
                        changed,
                    );
                }
            },
        };
        (Judged { version, outcome }, None, changed)
    }
}

/// Reads the deployment applied last (`<data_dir>/last-applied.json`).
#[must_use]
pub fn load_last_applied(data_dir: &Path) -> Option<manifest::Deployment> {
    let text = std::fs::read_to_string(data_dir.join("last-applied.json")).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    let version = value.get("version")?.as_u64()?;
    match manifest::parse_manifest(value.get("desired")?, version) {
        Ok(Desired::Deployment(d)) => Some(*d),
        _ => None,
    }
}

/// Reads the restart records (`<data_dir>/restarts.json`); none when absent or unreadable.
#[must_use]
pub fn load_restarts(data_dir: &Path) -> BTreeMap<String, RestartRecord> {
    let Some(Value::Object(map)) = std::fs::read_to_string(data_dir.join("restarts.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
    else {
        return BTreeMap::new();
    };
    map.into_iter()
        .filter_map(|(name, record)| {
            let count = u32::try_from(record.get("restartCount")?.as_u64()?).ok()?;
            let at = record.get("lastRestartTimeUtc")?.as_str()?;
            let last_restart =
                OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()?;
            Some((
                name,
                RestartRecord {
                    count,
                    last_restart,
                },
            ))
        })
        .collect()
}

fn save_restarts(data_dir: &Path, restarts: &BTreeMap<String, RestartRecord>) {
    let doc: serde_json::Map<String, Value> = restarts
        .iter()
        .map(|(name, r)| {
            (name.clone(), json!({ "restartCount": r.count, "lastRestartTimeUtc": reported::timestamp(Some(r.last_restart)) }))
        })
        .collect();
    let path = data_dir.join("restarts.json");
    if let Err(e) = std::fs::write(&path, Value::Object(doc).to_string()) {
        tracing::warn!(file = %path.display(), error = %e, "writing the restart records failed");
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError {
    let path = path.to_owned();
    move |source| DaemonError::Io { what, path, source }
}

/// Runs the agent until `shutdown` completes.
///
/// # Errors
///
/// When the data folder or the control socket cannot be set up.
pub async fn run<R: Runtime>(
    mut reconciler: Reconciler<R>,
    options: DaemonOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&options.data_dir).map_err(io("creating", &options.data_dir))?;
    if reconciler.last_applied().is_none() {
        reconciler.set_last_applied(load_last_applied(&options.data_dir));
        reconciler.set_restarts(load_restarts(&options.data_dir));
    }
    let started = OffsetDateTime::now_utc();
    let reported_file = options.data_dir.join("reported.json");
    let mut last_reported: Value = std::fs::read_to_string(&reported_file)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| json!({}));
    let (publish, published) = watch::channel(last_reported.clone());
    let socket = control::socket_path(&options.data_dir);
    if let Some(hub_twin) = options.hub_twin.clone() {
        tokio::spawn(hub_twin.sync(published.clone()));
    }
    let control = control::serve(&socket, published).map_err(io("serving", &socket))?;
    tracing::info!(socket = %socket.display(), manifest = %options.manifest.display(), runtime = reconciler.runtime().kind(), "agent running");

    let mut source = ManifestSource::open(options.manifest.clone(), &options.data_dir);
    let (mut judged, mut desired_doc, _) = source.judge();
    let mut saved_version = reconciler.last_applied().map(|d| d.version);
    let mut refusal_logged = None;
    let mut saved_restarts = reconciler.restarts().clone();
    let mut poll = tokio::time::interval(options.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        if let Some((next, doc)) = source.poll() {
            tracing::info!(version = next.version, "the manifest changed");
            judged = next;
            desired_doc = doc;
        }
        if let Err(e) = &judged.outcome
            && refusal_logged != Some(judged.version)
        {
            tracing::warn!(code = e.code.code(), error = %e.description, "deployment refused; the modules keep running");
            refusal_logged = Some(judged.version);
        }
        let pass = reconciler.pass(&judged, OffsetDateTime::now_utc());
        match tokio::time::timeout(options.pass_timeout, pass).await {
            Ok(outcome) => {
                for failure in &outcome.failures {
                    tracing::warn!(error = %failure, "reconcile");
                }
            }
            Err(_) => tracing::error!(
                timeout = ?options.pass_timeout,
                "a reconcile pass took too long and was abandoned; the next one starts"
            ),
        }
        let applied = reconciler.last_applied().map(|d| d.version);
        if applied != saved_version && applied == Some(judged.version) {
            if let Some(desired) = &desired_doc {
                let record = json!({ "version": judged.version, "desired": desired });
                let _ = std::fs::write(
                    options.data_dir.join("last-applied.json"),
                    record.to_string(),
                );
            }
            saved_version = applied;
        }
        if *reconciler.restarts() != saved_restarts {
            save_restarts(&options.data_dir, reconciler.restarts());
            saved_restarts.clone_from(reconciler.restarts());
        }
        publish_report(
            &reconciler,
            started,
            false,
            &mut last_reported,
            &reported_file,
            &publish,
        );

        // Until the period is over, the manifest changes, or the agent is told to stop.
        let pause = tokio::time::sleep(options.period);
        tokio::pin!(pause);
        let stop = loop {
            tokio::select! {
                () = &mut shutdown => break true,
                () = &mut pause => break false,
                _ = poll.tick() => {
                    if let Some((next, doc)) = source.poll() {
                        tracing::info!(version = next.version, "the manifest changed");
                        judged = next;
                        desired_doc = doc;
                        break false;
                    }
                }
            }
        };
        if stop {
            break;
        }
    }
    if options.leave_modules {
        tracing::info!("stopping; the modules are left running");
        reconciler.mark_not_running().await;
    } else {
        tracing::info!("stopping the modules");
        reconciler.shutdown().await;
    }
    publish_report(
        &reconciler,
        started,
        true,
        &mut last_reported,
        &reported_file,
        &publish,
    );
    control.abort();
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

fn publish_report<R: Runtime>(
    reconciler: &Reconciler<R>,
    started: OffsetDateTime,
    shutting_down: bool,
    last: &mut Value,
    file: &Path,
    publish: &watch::Sender<Value>,
) {
    let doc = reported::document(&ReportInput {
        deployment: reconciler.judged_deployment(),
        states: reconciler.states(),
        restarts: reconciler.restarts(),
        settings: reconciler.settings(),
        status: reconciler.status(),
        judged_version: reconciler.judged_version(),
        runtime_kind: reconciler.runtime().kind(),
        agent_started: started,
        shutting_down,
    });
    let Some(patch) = reported::patch(last, &doc) else {
        return;
    };
    tracing::debug!(patch = %patch, "reported properties");
    reported::apply(last, &patch);
    if let Err(e) = std::fs::write(file, serde_json::to_string_pretty(last).unwrap_or_default()) {
        tracing::warn!(file = %file.display(), error = %e, "writing the reported properties failed");
    }
    publish.send_replace(last.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent_manifest(schema: &str) -> String {
        json!({ "schemaVersion": schema, "runtime": { "type": "docker" },
                "systemModules": { "edgeAgent": { "type": "docker", "settings": { "image": "a:1" } },
                                   "edgeHub": { "type": "docker", "status": "running", "settings": { "image": "h:1" } } } })
        .to_string()
    }

    #[test]
    fn the_deployment_id_is_bumped_only_when_the_file_changes_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deployment.json");
        std::fs::write(&file, agent_manifest("1.1")).unwrap();
        let mut source = ManifestSource::open(file.clone(), dir.path());
        let (first, doc) = source.poll().unwrap();
        assert_eq!(first.version, 1);
        assert!(matches!(first.outcome, Ok(Desired::Deployment(_))));
        assert!(doc.is_some());
        assert!(source.poll().is_none(), "unchanged");
        std::fs::write(&file, agent_manifest("1.2")).unwrap();
        let (second, _) = source.poll().unwrap();
        assert_eq!(second.version, 2);
        assert_eq!(
            second.outcome.unwrap_err().code,
            StatusCode::InvalidSchemaVersion
        );
        std::fs::write(&file, "{ not json").unwrap();
        let (third, doc) = source.poll().unwrap();
        assert_eq!(third.version, 3);
        assert_eq!(
            third.outcome.unwrap_err().code,
            StatusCode::ConfigFormatError
        );
        assert!(doc.is_none());

        // A new agent on the same data folder and an unchanged file keeps the id.
        let mut again = ManifestSource::open(file.clone(), dir.path());
        assert_eq!(again.poll().unwrap().0.version, 3);
        std::fs::remove_file(&file).unwrap();
        let (missing, _) = again.poll().unwrap();
        assert_eq!(missing.version, 4);
        assert!(missing.outcome.unwrap_err().description.contains("reading"));
    }

    #[test]
    fn restart_records_survive_a_restart_of_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_restarts(dir.path()).is_empty());
        let at = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(90);
        let records = BTreeMap::from([(
            "f".to_owned(),
            RestartRecord {
                count: 4,
                last_restart: at,
            },
        )]);
        save_restarts(dir.path(), &records);
        assert_eq!(load_restarts(dir.path()), records);
    }

    #[test]
    fn the_last_applied_deployment_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_last_applied(dir.path()).is_none());
        let desired: Value = serde_json::from_str(&agent_manifest("1.1")).unwrap();
        std::fs::write(
            dir.path().join("last-applied.json"),
            json!({ "version": 7, "desired": desired }).to_string(),
        )
        .unwrap();
        assert_eq!(load_last_applied(dir.path()).unwrap().version, 7);
        std::fs::write(dir.path().join("last-applied.json"), "garbage").unwrap();
        assert!(load_last_applied(dir.path()).is_none());
    }
}
