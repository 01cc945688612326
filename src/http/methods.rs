//! Direct methods between modules over HTTPS, as the SDKs call them:
//! `POST /twins/{device}/modules/{module}/methods` (or `/twins/{device}/methods` for a leaf
//! device), the caller named by `x-ms-edge-moduleId` and proven by a SAS token in
//! `Authorization` (protocol spec 2.6).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::json_response;
use crate::identity::{validate_device_id, validate_module_id};
use crate::methods::{MethodResult, Methods, validate_method_name};
use crate::mqtt::auth::{Authenticator, Credentials};
use crate::mqtt::session::Sessions;
use crate::stop::Stop;

/// Largest method request body accepted.
const MAX_METHOD_BODY: usize = 128 * 1024;

/// What the direct-methods endpoint uses of the hub.
#[derive(Debug)]
pub struct MethodsEndpoint {
    /// This edge device's id: callers must be its modules.
    pub device_id: String,
    /// Checks the caller's SAS token.
    pub auth: Arc<dyn Authenticator>,
    /// Correlates requests and responses.
    pub methods: Arc<Methods>,
    /// Where the target is connected.
    pub sessions: Arc<Sessions>,
}

/// Serves one (TLS) connection of the HTTPS listener: direct methods, and the device-scope
/// API ([`super::scope`]) for paths under `/devices/`.
pub async fn serve_connection<IO>(io: IO, endpoint: Arc<MethodsEndpoint>, stop: Stop)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let endpoint = Arc::clone(&endpoint);
        async move {
            // The same listener serves the device-scope API to child hubs (spec 6.2).
            let response = if super::scope::is_scope_path(request.uri().path()) {
                super::scope::serve(&*endpoint.auth, &endpoint.device_id, request).await
            } else {
                method_call(&endpoint, request).await
            };
            Ok::<_, Infallible>(response)
        }
    });
    super::serve_connection(io, service, stop).await;
}

/// The body of a method call, as the SDKs send it.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MethodCallBody {
    method_name: String,
    #[serde(default)]
    payload: serde_json::Value,
    response_timeout_in_seconds: Option<u64>,
    connect_timeout_in_seconds: Option<u64>,
}

/// IoT Hub's bounds of a direct method's response timeout, in seconds.
const RESPONSE_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 5..=300;
/// IoT Hub's bounds of a direct method's connect timeout, in seconds.
const CONNECT_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 0..=300;
/// The response timeout of a call that names none.
const DEFAULT_RESPONSE_TIMEOUT_SECS: u64 = 30;

/// A direct method call, checked: its target, method, payload and timeouts.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodCall {
    /// The target client id: `device/module` or `device`, valid ids.
    pub target: String,
    /// The method's name, valid as a topic level.
    pub method: String,
    /// The JSON payload.
    pub payload: serde_json::Value,
    /// How long to wait for the target to connect (0 to 300 s).
    pub connect_timeout: Duration,
    /// How long to wait for its answer (5 to 300 s).
    pub response_timeout: Duration,
}

/// Reads a method call from its path (`/twins/{device}[/modules/{module}]/methods`) and JSON
/// body, with IoT Hub's bounds: ids valid, method name valid as a topic level, response
/// timeout 5 to 300 s (default 30), connect timeout 0 to 300 s (default 0). The body's size
/// is bounded by the caller.
///
/// # Errors
///
/// The status to answer (404 for an unknown path, 400 otherwise) and why.
pub fn parse_call(path: &str, body: &[u8]) -> Result<MethodCall, (StatusCode, String)> {
    let bad = |message: String| (StatusCode::BAD_REQUEST, message);
    let target =
        method_target(path).ok_or((StatusCode::NOT_FOUND, "no such resource".to_owned()))?;
    validate_target(&target).map_err(bad)?;
    let call: MethodCallBody =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid method call: {e}")))?;
    validate_method_name(&call.method_name).map_err(|e| bad(e.to_string()))?;
    let seconds =
        |value: Option<u64>, default: u64, bounds: std::ops::RangeInclusive<u64>, name: &str| {
            let secs = value.unwrap_or(default);
            if bounds.contains(&secs) {
                Ok(Duration::from_secs(secs))
            } else {
                Err(bad(format!(
                    "{name} must be from {} to {} seconds",
                    bounds.start(),
                    bounds.end()
                )))
            }
        };
    Ok(MethodCall {
        target,
        method: call.method_name,
        payload: call.payload,
        connect_timeout: seconds(
            call.connect_timeout_in_seconds,
            0,
            CONNECT_TIMEOUT_SECS,
            "connectTimeoutInSeconds",
        )?,
        response_timeout: seconds(
            call.response_timeout_in_seconds,
            DEFAULT_RESPONSE_TIMEOUT_SECS,
            RESPONSE_TIMEOUT_SECS,
            "responseTimeoutInSeconds",
        )?,
    })
}

/// Checks a target client id: `device/module` or `device`, each a valid IoT Hub id.
fn validate_target(target: &str) -> Result<(), String> {
    let invalid = |e: crate::identity::IdError| format!("invalid target {target:?}: {e}");
    match target.split_once('/') {
        Some((device, module)) => {
            validate_device_id(device).map_err(invalid)?;
            validate_module_id(module).map_err(invalid)
        }
        None => validate_device_id(target).map_err(invalid),
    }
}

async fn method_call(
    endpoint: &MethodsEndpoint,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match authorize_and_invoke(endpoint, request).await {
        Ok(result) => json_response(
            StatusCode::OK,
            &serde_json::json!({"status": result.status, "payload": result.payload}),
        ),
        Err((status, message)) => json_response(status, &serde_json::json!({"message": message})),
    }
}

async fn authorize_and_invoke(
    endpoint: &MethodsEndpoint,
    request: Request<Incoming>,
) -> Result<MethodResult, (StatusCode, String)> {
    use http_body_util::BodyExt as _;
    if request.method() != Method::POST {
        return Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "only POST is served".to_owned(),
        ));
    }
    let path = request.uri().path().to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let caller = header("x-ms-edge-moduleId").ok_or((
        StatusCode::UNAUTHORIZED,
        "x-ms-edge-moduleId is required".to_owned(),
    ))?;
    let token = header("authorization").ok_or((
        StatusCode::UNAUTHORIZED,
        "Authorization is required".to_owned(),
    ))?;
    let (caller_device, caller_module) = caller.split_once('/').ok_or((
        StatusCode::UNAUTHORIZED,
        "the caller must be a module".to_owned(),
    ))?;
    if caller_device != endpoint.device_id {
        return Err((
            StatusCode::UNAUTHORIZED,
            "the caller must be a module of this edge device".to_owned(),
        ));
    }
    // The username's host is not checked; the token's audience is.
    let username = format!("edgehub/{caller_device}/{caller_module}/?api-version=2019-10-01");
    let credentials = Credentials {
        client_id: &caller,
        username: Some(&username),
        password: Some(&token),
    };
    if let Err(reason) = endpoint.auth.authenticate(&credentials) {
        tracing::warn!(%caller, %reason, "direct method call refused");
        return Err((StatusCode::UNAUTHORIZED, "not authorized".to_owned()));
    }
    let body = http_body_util::Limited::new(request.into_body(), MAX_METHOD_BODY)
        .collect()
        .await
        .map_err(|_| {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body exceeds {MAX_METHOD_BODY} bytes"),
            )
        })?
        .to_bytes();
    let call = parse_call(&path, &body)?;
    let result = endpoint
        .methods
        .invoke(
            &endpoint.sessions,
            &call.target,
            &call.method,
            &call.payload,
            call.connect_timeout,
            call.response_timeout,
        )
        .await;
    let target = call.target;
    match result.status {
        404 => Err((
            StatusCode::NOT_FOUND,
            format!("client {target} is not connected or not subscribed to methods"),
        )),
        504 => Err((
            StatusCode::GATEWAY_TIMEOUT,
            format!("client {target} did not answer in time"),
        )),
        _ => Ok(result),
    }
}

/// The target client id of `/twins/{device}/modules/{module}/methods` or
/// `/twins/{device}/methods` (ids URL-encoded, `+` a space).
fn method_target(path: &str) -> Option<String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .ok()
            .map(std::borrow::Cow::into_owned)
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["twins", device, "modules", module, "methods"] => {
            Some(format!("{}/{}", decode(device)?, decode(module)?))
        }
        ["twins", device, "methods"] => decode(device),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_targets_are_decoded_from_the_path() {
        assert_eq!(
            method_target("/twins/dev/modules/mod%2Db/methods").as_deref(),
            Some("dev/mod-b")
        );
        assert_eq!(
            method_target("/twins/leaf%201/methods").as_deref(),
            Some("leaf 1")
        );
        assert_eq!(
            method_target("/twins/leaf+1/methods").as_deref(),
            Some("leaf 1")
        );
        assert_eq!(method_target("/twins/dev/modules/m"), None);
        assert_eq!(method_target("/metrics"), None);
    }

    #[test]
    fn calls_are_checked_against_iot_hubs_bounds() {
        let path = "/twins/dev/modules/filter/methods";
        let call = parse_call(path, br#"{"methodName": "reset", "payload": {"a": 1}}"#).unwrap();
        assert_eq!(call.target, "dev/filter");
        assert_eq!(call.method, "reset");
        assert_eq!(call.response_timeout, Duration::from_secs(30));
        assert_eq!(call.connect_timeout, Duration::ZERO);
        for (body, why) in [
            (
                r#"{"methodName": "m", "connectTimeoutInSeconds": 18446744073709551615}"#,
                "connect timeout beyond u64 seconds",
            ),
            (
                r#"{"methodName": "m", "connectTimeoutInSeconds": 301}"#,
                "connect timeout over 300 s",
            ),
            (
                r#"{"methodName": "m", "responseTimeoutInSeconds": 4}"#,
                "response timeout under 5 s",
            ),
            (
                r#"{"methodName": "m", "responseTimeoutInSeconds": 301}"#,
                "response timeout over 300 s",
            ),
            (
                r#"{"methodName": "m", "responseTimeoutInSeconds": -1}"#,
                "negative timeout",
            ),
            (
                r#"{"methodName": "/?$rid=5"}"#,
                "a name that forges a topic",
            ),
            (r##"{"methodName": "#"}"##, "a wildcard"),
            ("{\"methodName\": \"a\\u0000b\"}", "NUL"),
            (r#"{"methodName": ""}"#, "empty"),
            (r#"{"payload": 1}"#, "no name"),
            ("not json", "not JSON"),
        ] {
            let (status, message) = parse_call(path, body.as_bytes()).expect_err(why);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {message}");
        }
        let long = format!(r#"{{"methodName": "{}"}}"#, "m".repeat(65536));
        assert!(parse_call(path, long.as_bytes()).is_err());
        let (status, _) =
            parse_call("/twins/a%00b/methods", br#"{"methodName": "m"}"#).unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST, "NUL in the target");
        let (status, _) = parse_call("/twins/x", br#"{"methodName": "m"}"#).unwrap_err();
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
