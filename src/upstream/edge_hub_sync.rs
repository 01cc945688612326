//! The `$edgeHub` twin from upstream (issue 16, protocol spec 4 and 6.1): with `[upstream]`,
//! the hub connects as its own `$edgeHub` identity, reads its twin and follows its desired
//! patches. Routes and `storeAndForwardConfiguration` deployed upstream replace the running
//! ones, live, with the same validation as a local deployment (a bad one is refused whole, the
//! running routes stay, and the refusal is reported). `lastDesiredVersion`,
//! `lastDesiredStatus` and `clients` are reported back up, as patches that keep what upstream
//! holds equal to this hub's report, within upstream's size limit ([`super::report`]).
//!
//! The last deployment applied from upstream is kept in `<data_dir>/upstream-desired.json`;
//! `edgehub run` starts on it, so an offline restart keeps what upstream deployed. A twin
//! whose desired properties hold no `schemaVersion` (nothing deployed upstream yet) leaves the
//! local manifest in charge.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::from_upstream::{self, FromUpstream, subscriptions};
use super::link::{Inbound, Link};
use super::report::ReportSync;
use crate::identity::ClientIdentity;
use crate::identity::id::EDGE_HUB;
use crate::stop::Stop;

/// The file of the last deployment applied from upstream, in the data folder.
pub const LAST_APPLIED: &str = "upstream-desired.json";
/// How often the whole twin is read again, patches or not (legacy `ConfigRefreshFrequencySecs`).
const REFRESH: Duration = Duration::from_secs(3600);
/// How long client changes settle before the `clients` report goes up.
const REPORT_SETTLE: Duration = Duration::from_secs(1);
/// The request ids of reported patches start with this.
const REPORT_RID: &str = "edgehub-report-";
/// The request ids of twin GETs start with this.
const GET_RID: &str = "edgehub-get-";

/// The last deployment applied from upstream, kept in `data_dir`: `None` when there is none
/// (or it cannot be read, which is logged).
#[must_use]
pub fn last_applied(data_dir: &Path) -> Option<Value> {
    let path = data_dir.join(LAST_APPLIED);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "last deployment from upstream unreadable; the local manifest serves");
            return None;
        }
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(desired) if desired.is_object() => Some(desired),
        _ => {
            tracing::warn!(path = %path.display(), "last deployment from upstream is not a JSON object; the local manifest serves");
            None
        }
    }
}

/// What the follower needs of the hub (the hub implements it; the follower holds it weakly,
/// so that it never keeps a stopping hub alive).
pub trait EdgeHubTwin: Send + Sync {
    /// This edge device.
    fn device_id(&self) -> &str;
    /// The `$version` of the `$edgeHub` desired properties last processed.
    fn desired_version(&self) -> Option<u64>;
    /// Applies `desired` as a deployment; `true` when applied.
    fn deploy(&self, desired: &Value) -> bool;
    /// The `$edgeHub` reported properties.
    fn reported(&self) -> Value;
    /// Changes whenever a client connects, disconnects or (un)subscribes.
    fn client_changes(&self) -> watch::Receiver<u64>;
}

/// The `$edgeHub` twin's follower.
pub(crate) struct EdgeHubSync {
    hub: Weak<dyn EdgeHubTwin>,
    link: Link,
    data_dir: PathBuf,
    /// The `$version` of the desired properties last applied (or refused).
    applied: Option<u64>,
    /// The request id of the twin GET in flight.
    pending_get: Option<String>,
    /// What upstream was last sent of the reported properties.
    reported: ReportSync,
    next_rid: u64,
}

impl EdgeHubSync {
    /// Starts the link of `{device}/$edgeHub` and the task that follows its twin; the task
    /// holds the hub weakly and ends when `stop` fires.
    pub(crate) fn start(
        hub: &Arc<dyn EdgeHubTwin>,
        settings: Arc<super::UpstreamSettings>,
        status: Arc<super::UpstreamStatus>,
        data_dir: PathBuf,
        stop: Stop,
    ) -> impl Future<Output = ()> + Send + 'static {
        let identity = ClientIdentity::module(hub.device_id().to_owned(), EDGE_HUB);
        let (inbound_tx, inbound) = mpsc::channel(64);
        let link = Link::start(
            identity,
            settings,
            status,
            watch::channel(0).0,
            inbound_tx,
            stop.clone(),
        );
        link.subscribe(vec![subscriptions::DESIRED.to_owned()]);
        let sync = Self {
            hub: Arc::downgrade(hub),
            link,
            data_dir,
            applied: hub.desired_version(),
            pending_get: None,
            reported: ReportSync::default(),
            next_rid: 1,
        };
        let changes = hub.client_changes();
        sync.run(inbound, changes, stop)
    }

    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut changes: watch::Receiver<u64>,
        mut stop: Stop,
    ) {
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.stopped() => return,
                received = inbound.recv() => match received {
                    Some(Inbound::Connected(_)) => {
                        self.reported.connected();
                        self.get();
                        self.report();
                    }
                    Some(Inbound::Publish { topic, payload, .. }) => self.received(&topic, &payload),
                    None => return,
                },
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tokio::time::sleep(REPORT_SETTLE).await;
                    changes.mark_unchanged();
                    self.report();
                }
                _ = refresh.tick() => {
                    self.get();
                    // Sends nothing unless a report was lost since.
                    self.report();
                }
            }
        }
    }

    fn received(&mut self, topic: &str, payload: &[u8]) {
        match FromUpstream::parse(topic) {
            FromUpstream::TwinResponse { status, rid } => {
                if self.pending_get.as_deref() != Some(rid) {
                    if status >= 300 && rid.starts_with(REPORT_RID) {
                        tracing::warn!(
                            status,
                            "upstream refused the $edgeHub reported properties; the next report sends them whole"
                        );
                        self.reported.lost();
                    }
                    return;
                }
                self.pending_get = None;
                if status != 200 {
                    tracing::warn!(status, "upstream refused to give the $edgeHub twin");
                    return;
                }
                match serde_json::from_slice::<Value>(payload) {
                    Ok(twin) => self.apply(&twin["desired"]),
                    Err(e) => {
                        tracing::warn!(error = %e, "the $edgeHub twin from upstream is not JSON");
                    }
                }
            }
            // A patch may remove routes: read the whole desired document again.
            FromUpstream::DesiredPatch { .. } => self.get(),
            FromUpstream::MethodCall { .. } | FromUpstream::Other => {}
        }
    }

    /// Applies the desired properties upstream holds, unless already applied.
    fn apply(&mut self, desired: &Value) {
        if desired.get("schemaVersion").is_none() {
            tracing::debug!("nothing deployed upstream for $edgeHub; the local manifest stays");
            return;
        }
        let version = desired.get("$version").and_then(Value::as_u64);
        if version.is_some() && version == self.applied {
            return;
        }
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        tracing::info!(?version, "deployment from upstream");
        let applied = hub.deploy(desired);
        drop(hub);
        self.applied = version;
        if applied && let Err(e) = self.keep(desired) {
            tracing::error!(error = %e, "deployment from upstream applied but not kept on disk; an offline restart starts on the local manifest");
        }
        self.report();
    }

    /// Keeps `desired` for offline restarts.
    fn keep(&self, desired: &Value) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(desired).expect("JSON values serialise");
        crate::fs::write_atomically(&self.data_dir.join(LAST_APPLIED), &bytes, 0o600)
    }

    /// Reads the twin upstream.
    fn get(&mut self) {
        let rid = self.rid(GET_RID);
        if self
            .link
            .request(from_upstream::twin_get(&rid), Bytes::new())
        {
            self.pending_get = Some(rid);
        }
    }

    /// Sends up what changed in the reported properties since the last report (when
    /// connected; every connection sends them whole again).
    fn report(&mut self) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let reported = hub.reported();
        drop(hub);
        for patch in self.reported.patches(&reported) {
            let rid = self.rid(REPORT_RID);
            if !self.link.request(
                from_upstream::reported_patch(&rid),
                Bytes::from(patch.to_string()),
            ) {
                // Not connected (the next connection reports again) or the link is full.
                self.reported.lost();
                return;
            }
        }
    }

    fn rid(&mut self, prefix: &str) -> String {
        self.next_rid += 1;
        format!("{prefix}{}", self.next_rid)
    }
}
