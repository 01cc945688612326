//! Direct methods: a caller invokes a method of a connected client, which answers on
//! `$iothub/methods/res/{status}/?$rid={rid}` (protocol spec 2.6).

use std::collections::HashMap;
use std::sync::Mutex;
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
    /// A result without a client's answer: `status` and a `null` payload.
    #[must_use]
    pub fn error(status: u32) -> Self {
        Self {
            status,
            payload: Value::Null,
        }
    }
}

/// The longest a caller may wait for a method's target to connect, or for its answer
/// (IoT Hub's bound).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// The most bytes of a method name (it becomes an MQTT topic level).
const MAX_NAME: usize = 100;

/// A method name that cannot be a topic level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid method name {0:?}: 1 to {MAX_NAME} bytes without '/', '+', '#', '?', '$' at the start, or control characters"
)]
pub struct InvalidMethodName(pub String);

/// Checks a method name: it becomes an MQTT topic level of the request, so no `/`, `+`, `#`,
/// `?`, no leading `$`, no control characters (NUL included), and at most 100 bytes.
///
/// # Errors
///
/// When the name is not one a client could be called by.
pub fn validate_method_name(name: &str) -> Result<(), InvalidMethodName> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME
        || name.starts_with('$')
        || name
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#' | '?') || c.is_control());
    if bad {
        return Err(InvalidMethodName(name.to_owned()));
    }
    Ok(())
}

/// A request sent and not answered yet: who must answer it, and where the answer goes.
#[derive(Debug)]
struct Pending {
    /// The client id the request went to: the only one whose answer is accepted.
    target: String,
    respond: oneshot::Sender<(String, bytes::Bytes)>,
}

/// Direct method requests awaiting their responses, by request id. Request ids are 128
/// random bits: nobody can guess the id of another's request, and an answer is accepted only
/// from the client the request went to.
#[derive(Debug, Default)]
pub struct Methods {
    pending: Mutex<HashMap<String, Pending>>,
}

/// Removes a request's entry when its caller stops waiting, however it stops (answer,
/// timeout, or the caller's future dropped because its HTTP client went away).
struct Waiting<'m> {
    methods: &'m Methods,
    rid: String,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.methods.lock().remove(&self.rid);
    }
}

impl Methods {
    /// Invokes `method` on `client_id` (`device/module` or `device`): waits up to
    /// `connect_timeout` for it to be connected and subscribed to methods (else 404), then up
    /// to `response_timeout` for its answer (else 504). Both are capped at [`MAX_TIMEOUT`];
    /// callers validate `method` with [`validate_method_name`].
    pub async fn invoke(
        &self,
        sessions: &Sessions,
        client_id: &str,
        method: &str,
        payload: &Value,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> MethodResult {
        let Ok(rid) = request_id() else {
            tracing::error!("the system's random number generator failed; method not invoked");
            return MethodResult::error(500);
        };
        let topic = crate::mqtt::topic::method_request(method, &rid);
        let Some((link, qos)) = wait_for_subscriber(
            sessions,
            client_id,
            &topic,
            connect_timeout.min(MAX_TIMEOUT),
        )
        .await
        else {
            return MethodResult::error(404);
        };
        let (respond, response) = oneshot::channel();
        self.lock().insert(
            rid.clone(),
            Pending {
                target: client_id.to_owned(),
                respond,
            },
        );
        let _waiting = Waiting { methods: self, rid };
        let outbound = Outbound::unacknowledged(topic, payload.to_string().into(), qos);
        if link.outbox.send(vec![outbound]).await.is_err() {
            return MethodResult::error(404);
        }
        let answer = tokio::time::timeout(response_timeout.min(MAX_TIMEOUT), response).await;
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

    /// The answer of `responder` (its client id) to request `rid`. Accepted only when `rid`
    /// is pending and was sent to `responder`; anything else is ignored (`false`).
    pub fn respond(&self, responder: &str, rid: &str, status: &str, body: bytes::Bytes) -> bool {
        let mut pending = self.lock();
        let rid = rid.to_ascii_lowercase();
        if pending.get(&rid).is_none_or(|p| p.target != responder) {
            return false;
        }
        let Some(waiting) = pending.remove(&rid) else {
            return false;
        };
        drop(pending);
        let _ = waiting.respond.send((status.to_owned(), body));
        true
    }

    /// Requests waiting for their answers.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A fresh request id: 128 bits from the system's secure generator, in lower-case hex.
fn request_id() -> Result<String, ()> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| ())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The client's link once it is connected and subscribed to `topic`, waiting up to `timeout`.
async fn wait_for_subscriber(
    sessions: &Sessions,
    client_id: &str,
    topic: &str,
    timeout: Duration,
) -> Option<(crate::mqtt::session::Link, rumqttc::QoS)> {
    // The registry's changes, not the client's own: watching a client would create a session
    // entry for any id a caller names.
    let mut changes = sessions.changes();
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

#[cfg(test)]
mod tests {
    use tokio::sync::{mpsc, watch};

    use super::*;
    use crate::mqtt::session::Link;

    /// Connects `client_id` to `sessions`, subscribed to methods; gives its outbox.
    fn connected(
        sessions: &Sessions,
        client_id: &str,
    ) -> mpsc::Receiver<crate::mqtt::session::Burst> {
        let (outbox, requests) = mpsc::channel(4);
        let (close, _) = watch::channel(false);
        let link = Link {
            id: sessions.next_link_id(),
            outbox,
            close,
        };
        sessions.connect(client_id, true, link);
        let granted = sessions.subscribe(
            client_id,
            &[(
                "$iothub/methods/POST/#".to_owned(),
                rumqttc::QoS::AtLeastOnce,
            )],
        );
        assert!(granted[0].is_ok());
        requests
    }

    #[test]
    fn method_names_that_would_change_the_topic_are_refused() {
        for good in ["reset", "get-status", "a.b_c", "ünïcode"] {
            assert!(validate_method_name(good).is_ok(), "{good}");
        }
        let long = "m".repeat(101);
        for bad in [
            "",
            "a/b",
            "#",
            "+",
            "/?$rid=5",
            "$rid",
            "a\0b",
            "a\nb",
            long.as_str(),
        ] {
            assert!(validate_method_name(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_absent_target_is_404_and_leaves_no_session_behind() {
        let (methods, sessions) = (Methods::default(), Sessions::new(None));
        let result = methods
            .invoke(
                &sessions,
                "dev/nobody",
                "m",
                &Value::Null,
                Duration::from_millis(20),
                Duration::from_secs(1),
            )
            .await;
        assert_eq!(result.status, 404);
        assert!(!sessions.is_known("dev/nobody"));
        assert_eq!(methods.pending(), 0);
    }

    #[tokio::test]
    async fn only_the_target_answers_and_a_caller_that_goes_away_leaves_nothing_pending() {
        let (methods, sessions) = (Methods::default(), Sessions::new(None));
        let mut requests = connected(&sessions, "dev/target");
        {
            let call = methods.invoke(
                &sessions,
                "dev/target",
                "m",
                &Value::Null,
                Duration::ZERO,
                Duration::from_secs(60),
            );
            tokio::pin!(call);
            // Drive the call until its request is out, then give up on it (the HTTP client
            // went away).
            let request = tokio::select! {
                _ = &mut call => panic!("no answer was given"),
                burst = requests.recv() => burst.unwrap().remove(0),
            };
            let rid = request.topic.rsplit("$rid=").next().unwrap().to_owned();
            assert_eq!(rid.len(), 32);
            assert_eq!(methods.pending(), 1);
            assert!(!methods.respond("dev/other", &rid, "200", bytes::Bytes::new()));
            assert_eq!(methods.pending(), 1, "a stranger's answer is ignored");
        }
        assert_eq!(methods.pending(), 0, "the abandoned call's entry is gone");
    }
}
