//! The agent's own socket, `<data_dir>/agent.sock` (mode 0600): `GET /reported` answers the
//! `$edgeAgent` reported properties the agent holds; `edgeagent status` is its client.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The socket's file name in the agent's data folder.
pub const SOCKET_NAME: &str = "agent.sock";

/// The control socket of the agent whose data folder is `data_dir`.
#[must_use]
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Why the running agent could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No agent answers.
    #[error("no agent answers on {path}: {source}")]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("asking the agent on {path}: {message}")]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Serves the reported properties published on `reported` at `path`, until aborted.
///
/// # Errors
///
/// When another agent answers there, or the socket cannot be bound.
pub fn serve(path: &Path, reported: watch::Receiver<Value>) -> std::io::Result<JoinHandle<()>> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("another agent answers on {}", path.display()),
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let reported = reported.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let doc = reported.borrow().clone();
                    async move { Ok::<_, Infallible>(answer(&request, doc)) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

fn answer<B>(request: &Request<B>, doc: Value) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/reported") => (StatusCode::OK, doc),
        _ => (
            StatusCode::NOT_FOUND,
            json!({ "message": "only GET /reported" }),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
}

/// Asks the agent answering at `path` for its reported properties.
///
/// # Errors
///
/// When no agent answers, or the answer is not JSON.
pub async fn fetch_reported(path: &Path) -> Result<Value, ControlError> {
    let exchange = |message: String| ControlError::Exchange {
        path: path.to_owned(),
        message,
    };
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Unreachable {
            path: path.to_owned(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| exchange(e.to_string()))?;
    tokio::spawn(connection);
    let request = Request::get("/reported")
        .header(hyper::header::HOST, "agent")
        .body(Empty::<Bytes>::new())
        .map_err(|e| exchange(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| exchange(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| exchange(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(exchange(format!("status {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| exchange(e.to_string()))
}

/// The operator's table of a reported document.
#[must_use]
pub fn table(doc: &Value) -> String {
    let mut out = String::new();
    let status = &doc["lastDesiredStatus"];
    out.push_str(&format!(
        "deployment {}: {} {}\n",
        doc["lastDesiredVersion"],
        status["code"],
        status["description"].as_str().unwrap_or_default()
    ));
    let mut rows = vec![[
        "MODULE".to_owned(),
        "STATUS".to_owned(),
        "DESIRED".to_owned(),
        "EXIT".to_owned(),
        "RESTARTS".to_owned(),
        "STARTED".to_owned(),
        "IMAGE".to_owned(),
    ]];
    for section in ["systemModules", "modules"] {
        if let Some(modules) = doc[section].as_object() {
            for (name, m) in modules {
                let text = |v: &Value| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => "-".to_owned(),
                    other => other.to_string(),
                };
                rows.push([
                    name.clone(),
                    text(&m["runtimeStatus"]),
                    text(&m["status"]),
                    text(&m["exitCode"]),
                    text(&m["restartCount"]),
                    text(&m["lastStartTimeUtc"]),
                    text(&m["settings"]["image"]),
                ]);
            }
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_asks_the_running_agent_over_its_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let doc = json!({ "lastDesiredVersion": 3, "lastDesiredStatus": { "code": 200, "description": "" },
                          "systemModules": { "edgeHub": { "runtimeStatus": "running", "status": "running",
                              "exitCode": 0, "restartCount": 0, "lastStartTimeUtc": "t", "settings": { "image": "edgehub:local" } } },
                          "modules": { "f": { "runtimeStatus": "backoff", "status": "running", "exitCode": 3,
                              "restartCount": 2, "lastStartTimeUtc": "t", "settings": { "image": "f:1" } } } });
        let (tx, rx) = watch::channel(doc.clone());
        let server = serve(&path, rx).unwrap();
        assert_eq!(fetch_reported(&path).await.unwrap(), doc);
        tx.send_replace(json!({ "lastDesiredVersion": 4 }));
        assert_eq!(
            fetch_reported(&path).await.unwrap()["lastDesiredVersion"],
            json!(4)
        );
        assert!(
            serve(&path, tx.subscribe()).is_err(),
            "a second agent on the same socket"
        );
        server.abort();
        let t = table(&doc);
        assert!(t.starts_with("deployment 3: 200 \n"), "{t}");
        assert!(t.contains("f        backoff  running  3     2"), "{t}");
    }

    #[tokio::test]
    async fn no_agent_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = fetch_reported(&socket_path(dir.path())).await.unwrap_err();
        assert!(e.to_string().starts_with("no agent answers on"), "{e}");
    }
}
