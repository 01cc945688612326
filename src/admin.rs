//! The local admin endpoint and the manifest watcher: how an operator manages a running hub
//! without a cloud.
//!
//! The endpoint is HTTP/1.1 on the unix socket `<data_dir>/admin.sock` (mode 0600, in a 0700
//! folder): only the local operator reaches it. Bodies are JSON, at most [`MAX_BODY`] bytes.
//!
//! | Request | Answer |
//! |---|---|
//! | `GET /twins/{clientId}` | 200, the twin (`$edgeHub`: the hub's own twin) |
//! | `PATCH /twins/{clientId}/properties/desired`, body = patch | 200 `{"$version": n}`; 400 invalid patch; 500 storage failure |
//! | `POST /deployment`, body = deployment manifest | 200 `{"lastDesiredVersion", "lastDesiredStatus"}`; 400 `{"message", "errors"}` (the running routes stay) |
//! | `POST /methods/{clientId}/{methodName}`, body = `{"payload", "responseTimeoutInSeconds", "connectTimeoutInSeconds"}` | 200 `{"status": n, "payload": ...}` |
//!
//! Client ids are `device/module` or `device`, percent-encoded in the path (`edge%2Ffilter`);
//! an unencoded `/` between device and module is accepted too. Errors are
//! `{"message": "..."}` with a 4xx status for bad input and 5xx for the hub's own failures.
//!
//! [`watch_manifest`] polls the configuration's manifest file and deploys it when it changes;
//! [`Client`] is the command line's side of the endpoint.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::hub::Hub;
use crate::identity::id::{EDGE_HUB, validate_device_id, validate_module_id};

/// The socket's file name in the data folder.
pub const SOCKET_NAME: &str = "admin.sock";

/// The largest request body accepted (larger gets 413).
pub const MAX_BODY: usize = 1 << 20;

/// How often [`watch_manifest`] looks at the manifest file.
pub const MANIFEST_POLL: Duration = Duration::from_secs(2);

/// The longest a direct method may wait for its answer or for its target (IoT Hub's limit).
const MAX_METHOD_TIMEOUT_SECS: u64 = 300;

/// How long a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connections may finish their requests once the endpoint stops.
const DRAIN: Duration = Duration::from_secs(5);

/// The admin socket of the hub whose data folder is `data_dir`.
#[must_use]
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// Binds the admin socket at `path` with mode 0600, replacing a stale socket file.
///
/// # Errors
///
/// When another hub answers on `path`, or the socket cannot be created.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another hub answers on {}", path.display()),
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed a stale admin socket"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The admin endpoint and the manifest watcher of a running hub.
#[derive(Debug)]
pub struct Admin {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Admin {
    /// Binds `<data_dir>/admin.sock` (see [`bind`]) and starts serving it and watching the
    /// configuration's manifest file for changes since `loaded` (taken before the hub read
    /// it). Call it within the Tokio runtime.
    ///
    /// # Errors
    ///
    /// When the socket cannot be bound.
    pub fn start(
        hub: &Arc<Hub>,
        config: &crate::config::Config,
        loaded: ManifestStamp,
    ) -> io::Result<Self> {
        let socket = socket_path(&config.data_dir);
        let listener = bind(&socket)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", socket.display())))?;
        tracing::info!(socket = %socket.display(), "admin endpoint ready");
        let (stop, stopped) = watch::channel(false);
        let until_stopped = || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let mut tasks = JoinSet::new();
        tasks.spawn(serve(listener, Arc::clone(hub), until_stopped()));
        tasks.spawn(watch_manifest(
            Arc::clone(hub),
            config.clone(),
            loaded,
            MANIFEST_POLL,
            until_stopped(),
        ));
        Ok(Self { stop, tasks })
    }

    /// Stops the endpoint (requests in progress get a few seconds) and the watcher; once it
    /// returns, neither holds the hub any more.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Serves the admin endpoint on `listener` until `stop` completes; then lets requests in
/// progress finish for a few seconds, drops the rest, and removes the socket file. Every
/// clone of `hub` it made is dropped when it returns.
pub async fn serve(listener: UnixListener, hub: Arc<Hub>, stop: impl Future<Output = ()>) {
    let socket = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    let (stopping, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(connection(stream, Arc::clone(&hub), stopped.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut stop => break,
        }
    }
    drop(listener);
    if let Some(socket) = socket {
        let _ = std::fs::remove_file(socket);
    }
    let _ = stopping.send(true);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// One admin connection: requests until the client closes it or the endpoint stops (then
/// the request in progress finishes and the connection closes).
async fn connection(
    stream: tokio::net::UnixStream,
    hub: Arc<Hub>,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let hub = Arc::clone(&hub);
        async move { Ok::<_, Infallible>(handle(&hub, request).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = async { let _ = stop.wait_for(|stopped| *stopped).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A request the endpoint refuses or fails: its status and `{"message", "errors"}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    errors: Vec<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn response(self) -> Response<Full<Bytes>> {
        let mut body = json!({"message": self.message});
        if !self.errors.is_empty() {
            body["errors"] = json!(self.errors);
        }
        json_response(self.status, &body)
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// What a request asks for, from its method and path.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    GetTwin(String),
    PatchDesired(String),
    Deploy,
    Invoke { client_id: String, method: String },
}

async fn handle(hub: &Hub, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let outcome = match route(request.method(), request.uri().path()) {
        Ok(route) => match read_body(request).await {
            Ok(body) => dispatch(hub, route, &body).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match outcome {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(e) => {
            tracing::debug!(status = %e.status, message = %e.message, "admin request refused");
            e.response()
        }
    }
}

async fn dispatch(hub: &Hub, route: Route, body: &[u8]) -> Result<Value, ApiError> {
    match route {
        Route::GetTwin(client_id) => get_twin(hub, &client_id),
        Route::PatchDesired(client_id) => patch_desired(hub, &client_id, body),
        Route::Deploy => deploy(hub, body),
        Route::Invoke { client_id, method } => invoke(hub, &client_id, &method, body).await,
    }
}

/// The route of a request; the client ids and method names are decoded and checked.
fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let segments = path
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| ApiError::bad_request(format!("{path}: not UTF-8 once decoded")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let not_allowed = || {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        )
    };
    match segments.as_slice() {
        ["twins", rest @ ..] if !rest.is_empty() => match (method, rest) {
            (&Method::PATCH, [id @ .., "properties", "desired"]) if !id.is_empty() => {
                Ok(Route::PatchDesired(client_id(&id.join("/"))?))
            }
            (&Method::GET, id) => Ok(Route::GetTwin(client_id(&id.join("/"))?)),
            (&Method::PATCH, _) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "{path}: desired properties are patched at /twins/{{clientId}}/properties/desired"
                ),
            )),
            _ => Err(not_allowed()),
        },
        ["deployment"] if method == Method::POST => Ok(Route::Deploy),
        ["deployment"] => Err(not_allowed()),
        ["methods", id @ .., name] if !id.is_empty() => {
            if method != Method::POST {
                return Err(not_allowed());
            }
            Ok(Route::Invoke {
                client_id: client_id(&id.join("/"))?,
                method: method_name(name)?,
            })
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such resource: {path}"),
        )),
    }
}

/// Checks a client id: `$edgeHub`, `device` or `device/module`.
fn client_id(id: &str) -> Result<String, ApiError> {
    if id == EDGE_HUB {
        return Ok(id.to_owned());
    }
    let invalid = |e: crate::identity::id::IdError| {
        ApiError::bad_request(format!("invalid client id {id:?}: {e}"))
    };
    match id.split_once('/') {
        Some((device, module)) => {
            validate_device_id(device).map_err(invalid)?;
            validate_module_id(module).map_err(invalid)?;
        }
        None => validate_device_id(id).map_err(invalid)?,
    }
    Ok(id.to_owned())
}

/// Checks a method name: it becomes an MQTT topic level, so no `/`, `+`, `#`, `?` or control
/// characters, and at most 100 bytes.
fn method_name(name: &str) -> Result<String, ApiError> {
    let bad = name.is_empty()
        || name.len() > 100
        || name
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#' | '?') || c.is_control());
    if bad {
        return Err(ApiError::bad_request(format!(
            "invalid method name {name:?}: 1 to 100 bytes without '/', '+', '#', '?' or control characters"
        )));
    }
    Ok(name.to_owned())
}

/// The request body, at most [`MAX_BODY`] bytes.
async fn read_body(request: Request<Incoming>) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("reading the body: {e}"))),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

fn storage_failure(e: &crate::twin::StorageError) -> ApiError {
    tracing::error!(error = %e, "twin storage failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("twin storage failed: {e}"),
    )
}

fn get_twin(hub: &Hub, client_id: &str) -> Result<Value, ApiError> {
    if client_id == EDGE_HUB || is_edge_hub_of(hub, client_id) {
        return Ok(hub.edge_hub_twin());
    }
    hub.twin(client_id).map_err(|e| storage_failure(&e))
}

fn patch_desired(hub: &Hub, client_id: &str, body: &[u8]) -> Result<Value, ApiError> {
    if client_id == EDGE_HUB || is_edge_hub_of(hub, client_id) {
        return Err(ApiError::bad_request(
            "the desired properties of $edgeHub are set by a deployment (POST /deployment)",
        ));
    }
    match hub.set_desired(client_id, body) {
        Ok(Ok(version)) => {
            tracing::info!(%client_id, version, "desired properties set by the operator");
            Ok(json!({"$version": version}))
        }
        Ok(Err(e)) => Err(ApiError::bad_request(format!("invalid desired patch: {e}"))),
        Err(e) => Err(storage_failure(&e)),
    }
}

/// Whether `client_id` is `{this device}/$edgeHub`.
fn is_edge_hub_of(hub: &Hub, client_id: &str) -> bool {
    client_id
        .strip_suffix(EDGE_HUB)
        .and_then(|d| d.strip_suffix('/'))
        .is_some_and(|device| device == hub.shared().device_id)
}

fn deploy(hub: &Hub, body: &[u8]) -> Result<Value, ApiError> {
    let manifest = parse_json(body)?;
    let desired = crate::manifest::desired_properties(&manifest, EDGE_HUB)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let outcome = apply(hub, desired, "admin endpoint");
    let reported = hub.edge_hub_twin();
    let status = json!({
        "lastDesiredVersion": reported["reported"]["lastDesiredVersion"],
        "lastDesiredStatus": reported["reported"]["lastDesiredStatus"],
    });
    match outcome {
        Ok(()) => Ok(status),
        Err(errors) => Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("Error while parsing desired properties - {errors}"),
            errors: errors.0.iter().map(ToString::to_string).collect(),
        }),
    }
}

/// Deploys `$edgeHub` desired properties and logs the outcome.
fn apply(hub: &Hub, desired: &Value, origin: &str) -> Result<(), router::ConfigErrors> {
    let outcome = hub.deploy(desired);
    match &outcome {
        Ok(()) => tracing::info!(origin, "deployment applied"),
        Err(errors) => {
            tracing::error!(origin, %errors, "deployment rejected; the running routes stay");
        }
    }
    outcome
}

async fn invoke(hub: &Hub, client_id: &str, method: &str, body: &[u8]) -> Result<Value, ApiError> {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json(body)?
    };
    let Some(request) = request.as_object() else {
        return Err(ApiError::bad_request("the body is not a JSON object"));
    };
    let seconds = |key: &str, default: u64| match request.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|&s| s <= MAX_METHOD_TIMEOUT_SECS)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{key} must be a whole number of seconds from 0 to {MAX_METHOD_TIMEOUT_SECS}"
                ))
            }),
    };
    let response_timeout = seconds("responseTimeoutInSeconds", 30)?;
    let connect_timeout = seconds("connectTimeoutInSeconds", 0)?;
    let payload = request.get("payload").cloned().unwrap_or(Value::Null);
    if client_id == EDGE_HUB || is_edge_hub_of(hub, client_id) {
        // Protocol spec 2.6: the only method of $edgeHub.
        let status = if method == "RefreshDeviceScopeIdentityCache" {
            200
        } else {
            404
        };
        return Ok(json!({"status": status, "payload": null}));
    }
    let result = hub
        .invoke_method(
            client_id,
            method,
            &payload,
            Duration::from_secs(connect_timeout),
            Duration::from_secs(response_timeout),
        )
        .await;
    tracing::info!(%client_id, method, status = result.status, "direct method invoked by the operator");
    Ok(json!({"status": result.status, "payload": result.payload}))
}

/// The modification time and size of the configuration's manifest file (`None` for an
/// embedded or missing one): the watcher deploys the file when this changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestStamp(Option<(SystemTime, u64)>);

impl ManifestStamp {
    /// The stamp of the configuration's manifest now; take it before reading the manifest, so
    /// that a change made while the hub starts is deployed too.
    #[must_use]
    pub fn of(config: &crate::config::Config) -> Self {
        match &config.manifest {
            crate::config::ManifestSource::File(path) => Self::of_file(path),
            crate::config::ManifestSource::Embedded(_) => Self(None),
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
/// returns at once when the manifest is embedded. The deployment's modules get their
/// identities first. An unreadable or malformed file is logged and retried at its next
/// change; invalid `$edgeHub` routes are reported with code 400 and the running routes stay.
pub async fn watch_manifest(
    hub: Arc<Hub>,
    config: crate::config::Config,
    loaded: ManifestStamp,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    let crate::config::ManifestSource::File(manifest) = config.manifest.clone() else {
        return;
    };
    let mut seen = loaded;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut stop => return,
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
            .identity_store()
            .and_then(|s| s.add_modules(deployment.modules.iter().map(String::as_str)))
        {
            Ok(identities) => {
                tracing::debug!(modules = identities.len(), "module identities ready");
            }
            Err(e) => {
                tracing::error!(error = %e, "creating the identities of the deployment's modules");
            }
        }
        let _ = apply(&hub, &deployment.edge_hub, "manifest file");
    }
}

/// The command line's side of the admin endpoint: one request per connection, blocking.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

/// A response of the admin endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body (`null` when empty).
    pub body: Value,
}

impl Reply {
    /// The error message of a refused request (`message` of the body).
    #[must_use]
    pub fn message(&self) -> String {
        match self.body.get("message").and_then(Value::as_str) {
            Some(message) => message.to_owned(),
            None => format!("the hub answered {}: {}", self.status, self.body),
        }
    }
}

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("no hub runs on this data folder: cannot connect to {}", socket.display())]
    NotRunning {
        /// The socket.
        socket: PathBuf,
        /// Why the connection failed.
        source: io::Error,
    },
    /// The connection failed mid-request.
    #[error("talking to the hub at {}", socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The hub closed the connection without answering (it is stopping).
    #[error("the hub closed the connection without answering (is it stopping?)")]
    Closed,
    /// The answer is not HTTP with a JSON body.
    #[error("the hub's answer is malformed: {0}")]
    Malformed(String),
}

/// The largest answer read (twins are small; this only bounds a broken peer).
const MAX_REPLY: usize = 64 << 20;

impl Client {
    /// A client of the hub whose data folder is `data_dir`.
    #[must_use]
    pub fn new(data_dir: &Path) -> Self {
        Self {
            socket: socket_path(data_dir),
        }
    }

    /// Sends one request (HTTP/1.1 with hyper over the unix socket) and reads its answer,
    /// waiting at most `timeout` for it. Blocking: for the command line.
    ///
    /// # Errors
    ///
    /// When no hub listens, the connection fails, or the answer is not JSON.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| self.io_error(source))?;
        runtime.block_on(async {
            tokio::time::timeout(timeout, self.exchange(method, path, body))
                .await
                .map_err(|_| self.io_error(io::ErrorKind::TimedOut.into()))?
        })
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::NotRunning {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.io_error(io::Error::other(e)))?;
        let driver = tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(Value::to_string).unwrap_or_default(),
            )))
            .map_err(|e| ClientError::Malformed(e.to_string()))?;
        let response = sender.send_request(request).await.map_err(|e| {
            if e.is_incomplete_message() || e.is_canceled() {
                ClientError::Closed
            } else {
                self.io_error(io::Error::other(e))
            }
        })?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| ClientError::Malformed(e.to_string()))?
            .to_bytes();
        driver.abort();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Malformed(e.to_string()))?
        };
        Ok(Reply { status, body })
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            socket: self.socket.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_decode_client_ids_encoded_or_not() {
        assert_eq!(
            route(&Method::GET, "/twins/edge%2Ffilter").unwrap(),
            Route::GetTwin("edge/filter".into())
        );
        assert_eq!(
            route(&Method::GET, "/twins/edge/filter").unwrap(),
            Route::GetTwin("edge/filter".into())
        );
        assert_eq!(
            route(&Method::GET, "/twins/%24edgeHub").unwrap(),
            Route::GetTwin("$edgeHub".into())
        );
        assert_eq!(
            route(&Method::PATCH, "/twins/edge%2Ffilter/properties/desired").unwrap(),
            Route::PatchDesired("edge/filter".into())
        );
        assert_eq!(
            route(&Method::PATCH, "/twins/leaf/properties/desired").unwrap(),
            Route::PatchDesired("leaf".into())
        );
        assert_eq!(
            route(&Method::POST, "/methods/edge%2Ffilter/reboot").unwrap(),
            Route::Invoke {
                client_id: "edge/filter".into(),
                method: "reboot".into()
            }
        );
        assert_eq!(route(&Method::POST, "/deployment").unwrap(), Route::Deploy);
    }

    #[test]
    fn bad_paths_get_clear_client_errors() {
        let cases = [
            (Method::GET, "/nothing", StatusCode::NOT_FOUND),
            (Method::GET, "/twins", StatusCode::NOT_FOUND),
            (
                Method::DELETE,
                "/twins/edge",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (Method::GET, "/deployment", StatusCode::METHOD_NOT_ALLOWED),
            (
                Method::GET,
                "/methods/edge/m",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (Method::PATCH, "/twins/edge/reported", StatusCode::NOT_FOUND),
            (Method::GET, "/twins/%FF", StatusCode::BAD_REQUEST),
            (Method::GET, "/twins/a%20b", StatusCode::BAD_REQUEST),
            (Method::GET, "/twins/edge/%24other", StatusCode::BAD_REQUEST),
            (Method::GET, "/twins/a/b/c", StatusCode::BAD_REQUEST),
            (
                Method::POST,
                "/methods/edge/m/a%23b",
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                "/methods/edge/m/a%2Bb",
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (method, path, status) in cases {
            let refused = route(&method, path).expect_err(path);
            assert_eq!(
                refused.status, status,
                "{method} {path}: {}",
                refused.message
            );
        }
    }
}
