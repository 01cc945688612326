//! Direct methods: a caller invokes a method of a connected client, which answers on
//! `$iothub/methods/res/{status}/?$rid={rid}` (protocol spec 2.6).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use crate::mqtt::session::{Outbound, Sessions};

/// What the caller of a direct method gets.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodResult {
    /// The status the client answered with; 404 when it is not connected or not subscribed to
    /// methods in time, 504 when it does not answer in time, 400000 when its status was not an
    /// integer (as IoT Hub).
    pub status: u32,
    /// The client's JSON payload (`null` when empty or on errors).
    pub payload: Value,
}

impl MethodResult {
    fn error(status: u32) -> Self {
        Self {
            status,
            payload: Value::Null,
        }
    }
}

/// Direct method requests awaiting their responses.
#[derive(Debug, Default)]
pub struct Methods {
    pending: Mutex<HashMap<String, oneshot::Sender<(String, bytes::Bytes)>>>,
    next_rid: AtomicU64,
}

impl Methods {
    /// Invokes `method` on `client_id` (`device/module` or `device`).
    pub async fn invoke(
        &self,
        sessions: &Sessions,
        client_id: &str,
        method: &str,
        payload: &Value,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> MethodResult {
        let rid = format!("{:x}", self.next_rid.fetch_add(1, Ordering::Relaxed) + 1);
        let topic = crate::mqtt::topic::method_request(method, &rid);
        let Some((link, qos)) =
            wait_for_subscriber(sessions, client_id, &topic, connect_timeout).await
        else {
            return MethodResult::error(404);
        };
        let (respond, response) = oneshot::channel();
        self.lock().insert(rid.clone(), respond);
        let outbound = Outbound::unacknowledged(topic, payload.to_string().into(), qos);
        if link.outbox.send(vec![outbound]).await.is_err() {
            self.lock().remove(&rid);
            return MethodResult::error(404);
        }
        let answer = tokio::time::timeout(response_timeout, response).await;
        self.lock().remove(&rid);
        match answer {
            Ok(Ok((status, body))) => match status.parse::<u32>() {
                Ok(status) => MethodResult {
                    status,
                    payload: serde_json::from_slice(&body).unwrap_or(Value::Null),
                },
                Err(_) => MethodResult::error(400_000),
            },
            Ok(Err(_)) | Err(_) => MethodResult::error(504),
        }
    }

    /// A client's response; responses with an unknown `$rid` are ignored.
    pub fn respond(&self, rid: &str, status: &str, body: bytes::Bytes) {
        let waiting = self.lock().remove(&rid.to_ascii_lowercase());
        if let Some(waiting) = waiting {
            let _ = waiting.send((status.to_owned(), body));
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<(String, bytes::Bytes)>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The client's link once it is connected and subscribed to `topic`, waiting up to `timeout`.
async fn wait_for_subscriber(
    sessions: &Sessions,
    client_id: &str,
    topic: &str,
    timeout: Duration,
) -> Option<(crate::mqtt::session::Link, rumqttc::QoS)> {
    let mut changes = sessions.watch(client_id);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = sessions.route(client_id, topic) {
            return Some(found);
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            return None;
        }
    }
}
