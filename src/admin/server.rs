//! The admin endpoint's requests (the table in [`super`]): routes, bodies, answers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::http::json_response;
use crate::hub::{DeployError, Hub};
use crate::identity::id::{EDGE_AGENT, EDGE_HUB, validate_device_id, validate_module_id};
use crate::stop::Stop;

/// The largest request body accepted (larger gets 413).
pub const MAX_BODY: usize = 1 << 20;

/// The longest a direct method may wait for its answer or for its target (IoT Hub's limit).
const MAX_METHOD_TIMEOUT_SECS: u64 = 300;

/// Serves one admin connection: requests until the client closes it or the endpoint stops
/// (then the request in progress finishes and the connection closes).
pub async fn serve_connection(stream: tokio::net::UnixStream, hub: Arc<Hub>, stop: Stop) {
    let service = service_fn(move |request| {
        let hub = Arc::clone(&hub);
        async move { Ok::<_, Infallible>(handle(&hub, request).await) }
    });
    crate::http::serve_connection(stream, service, stop).await;
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

/// What a request asks for, from its method and path.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    GetTwin(String),
    PatchDesired(String),
    PatchReported(String),
    Deploy,
    /// A deployment for a child edge device: kept as its `$edgeHub` (and `$edgeAgent`)
    /// desired properties, which its hub reads.
    DeployTo(String),
    Invoke {
        client_id: String,
        method: String,
    },
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
        Route::PatchReported(client_id) => patch_reported(hub, &client_id, body),
        Route::Deploy => deploy(hub, body),
        Route::DeployTo(device) => deploy_to(hub, &device, body),
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
            (&Method::PATCH, [id @ .., "properties", "reported"]) if !id.is_empty() => {
                Ok(Route::PatchReported(client_id(&id.join("/"))?))
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
        ["devices", device, "deployment"] if method == Method::POST => {
            validate_device_id(device)
                .map_err(|e| ApiError::bad_request(format!("invalid device id {device:?}: {e}")))?;
            Ok(Route::DeployTo((*device).to_owned()))
        }
        ["devices", _, "deployment"] => Err(not_allowed()),
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

/// Checks a method name ([`crate::methods::validate_method_name`]).
fn method_name(name: &str) -> Result<String, ApiError> {
    crate::methods::validate_method_name(name).map_err(|e| ApiError::bad_request(e.to_string()))?;
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

/// Patches the reported properties of `$edgeAgent` (the edge agent, which reaches the hub
/// through this socket rather than MQTT); other clients report over MQTT themselves.
fn patch_reported(hub: &Hub, client_id: &str, body: &[u8]) -> Result<Value, ApiError> {
    let agent = format!("{}/{EDGE_AGENT}", hub.device_id());
    if client_id != EDGE_AGENT && client_id != agent {
        return Err(ApiError::bad_request(
            "only the reported properties of $edgeAgent are written here; modules report over MQTT",
        ));
    }
    match hub.patch_reported(&agent, body) {
        Ok(Ok(version)) => Ok(json!({"$version": version})),
        Ok(Err(e)) => Err(ApiError::bad_request(format!(
            "invalid reported patch: {e}"
        ))),
        Err(e) => Err(storage_failure(&e)),
    }
}

/// Whether `client_id` is `{this device}/$edgeHub`.
fn is_edge_hub_of(hub: &Hub, client_id: &str) -> bool {
    client_id
        .strip_suffix(EDGE_HUB)
        .and_then(|d| d.strip_suffix('/'))
        .is_some_and(|device| device == hub.device_id())
}

fn deploy(hub: &Hub, body: &[u8]) -> Result<Value, ApiError> {
    let manifest = parse_json(body)?;
    let desired = crate::manifest::desired_properties(&manifest, EDGE_HUB)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    tracing::info!("deploying a manifest posted to the admin endpoint");
    let outcome = hub.deploy(desired);
    let reported = hub.edge_hub_twin();
    let status = json!({
        "lastDesiredVersion": reported["reported"]["lastDesiredVersion"],
        "lastDesiredStatus": reported["reported"]["lastDesiredStatus"],
    });
    match outcome {
        Ok(()) => Ok(status),
        Err(DeployError::Invalid(errors)) => Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("Error while parsing desired properties - {errors}"),
            errors: errors.0.iter().map(ToString::to_string).collect(),
        }),
        Err(DeployError::Store(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the deployment is valid but the store failed to take it: {e}"),
        )),
    }
}

/// Keeps a deployment for the child edge device `device`: the `$edgeHub` desired properties
/// (required) and the `$edgeAgent` ones (when the manifest has them) replace those of its
/// twins; gives their new versions.
fn deploy_to(hub: &Hub, device: &str, body: &[u8]) -> Result<Value, ApiError> {
    if device == hub.device_id() {
        return Err(ApiError::bad_request(
            "this is the hub's own device: deploy without a device (POST /deployment)",
        ));
    }
    let manifest = parse_json(body)?;
    let mut versions = serde_json::Map::new();
    for module in [EDGE_HUB, EDGE_AGENT] {
        let desired = match crate::manifest::desired_properties(&manifest, module) {
            Ok(desired) => desired,
            Err(_) if module == EDGE_AGENT => continue,
            Err(e) => return Err(ApiError::bad_request(e.to_string())),
        };
        match hub.replace_desired(&format!("{device}/{module}"), desired) {
            Ok(Ok(version)) => {
                versions.insert(module.to_owned(), json!({"$version": version}));
            }
            Ok(Err(e)) => {
                return Err(ApiError::bad_request(format!(
                    "the {module} desired properties cannot be kept: {e}"
                )));
            }
            Err(e) => return Err(storage_failure(&e)),
        }
    }
    tracing::info!(%device, "deployment kept for a child edge device");
    Ok(Value::Object(versions))
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
        assert_eq!(
            route(
                &Method::PATCH,
                "/twins/edge%2F%24edgeAgent/properties/reported"
            )
            .unwrap(),
            Route::PatchReported("edge/$edgeAgent".into())
        );
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
