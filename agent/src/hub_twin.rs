//! `$edgeAgent`'s reported properties in the hub's twin: the agent writes them through the
//! hub's admin socket (`<hub data_dir>/admin.sock`, `PATCH /twins/{device}%2F%24edgeAgent/
//! properties/reported`), so that the operator (`edgehub twin get '$edgeAgent'`) and, with an
//! upstream, IoT Hub see what runs.
//!
//! Each change of the document is sent as the patch from what the hub holds now (read back
//! first), so a patch lost while the hub was down, or a hub that restarted, never leaves the
//! twin behind: the next attempt sends whatever differs. Failed attempts are retried every
//! few seconds; the hub not running is not an error of the agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::watch;

use crate::reported;

/// The wait before trying again after the hub did not take a patch.
const RETRY: Duration = Duration::from_secs(5);
/// The longest one exchange with the hub may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const MAX_ANSWER: usize = 4 << 20;

/// The hub's admin socket and the twin of `$edgeAgent` in it.
#[derive(Debug, Clone)]
pub struct HubTwin {
    socket: PathBuf,
    /// `/twins/{device}%2F%24edgeAgent`.
    twin_path: String,
}

impl HubTwin {
    /// The twin of `{device_id}/$edgeAgent` in the hub whose data folder is `hub_data_dir`.
    #[must_use]
    pub fn new(hub_data_dir: &Path, device_id: &str) -> Self {
        let client_id = format!("{device_id}/$edgeAgent");
        let encoded =
            percent_encoding::utf8_percent_encode(&client_id, percent_encoding::NON_ALPHANUMERIC);
        Self {
            socket: hub_data_dir.join("admin.sock"),
            twin_path: format!("/twins/{encoded}"),
        }
    }

    /// Keeps the hub's copy equal to the documents `documents` gives, until it closes.
    pub async fn sync(self, mut documents: watch::Receiver<Value>) {
        loop {
            let document = documents.borrow_and_update().clone();
            match self.send(&document).await {
                Ok(()) => {
                    if documents.changed().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "reported properties not written to the hub yet");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY) => {}
                        changed = documents.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }

    /// Sends the patch from the hub's reported properties to `document`, if any.
    async fn send(&self, document: &Value) -> anyhow::Result<()> {
        let (status, twin) = self.exchange("GET", &self.twin_path, None).await?;
        anyhow::ensure!(status == 200, "the hub answered {status} to GET: {twin}");
        let mut held = twin.get("reported").cloned().unwrap_or(Value::Null);
        if let Some(held) = held.as_object_mut() {
            held.remove("$version");
        }
        let Some(patch) = reported::patch(&held, document) else {
            return Ok(());
        };
        let path = format!("{}/properties/reported", self.twin_path);
        let (status, answer) = self.exchange("PATCH", &path, Some(&patch)).await?;
        anyhow::ensure!(
            status == 200,
            "the hub answered {status} to PATCH: {answer}"
        );
        tracing::debug!(version = %answer["$version"], "reported properties written to the hub");
        Ok(())
    }

    /// One request over the admin socket (HTTP/1.1), its status and JSON body.
    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            let stream = tokio::net::UnixStream::connect(&self.socket).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            let driver = tokio::spawn(connection);
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "localhost")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    body.map(Value::to_string).unwrap_or_default(),
                )))?;
            let response = sender.send_request(request).await?;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the hub's answer: {e}"))?
                .to_bytes();
            driver.abort();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes)?
            };
            Ok((status, body))
        })
        .await
        .map_err(|_| anyhow::anyhow!("the hub did not answer within {EXCHANGE_TIMEOUT:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_twin_of_the_agent_is_named_with_its_device_encoded() {
        let twin = HubTwin::new(Path::new("/var/lib/edgehub"), "edge-1");
        assert_eq!(twin.socket, Path::new("/var/lib/edgehub/admin.sock"));
        assert_eq!(twin.twin_path, "/twins/edge%2D1%2F%24edgeAgent");
    }
}
