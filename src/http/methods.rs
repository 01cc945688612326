//! Direct methods between modules over HTTPS, as the SDKs call them:
//! `POST /twins/{device}/modules/{module}/methods` (or `/twins/{device}/methods` for a leaf
//! device), the caller named by `x-ms-edge-moduleId` and proven by a SAS token in
//! `Authorization` (protocol spec 2.6).

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::json_response;
use crate::methods::{MethodResult, Methods};
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

/// Serves one (TLS) connection of the direct-methods listener.
pub async fn serve_connection<IO>(io: IO, endpoint: Arc<MethodsEndpoint>, stop: Stop)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let endpoint = Arc::clone(&endpoint);
        async move { Ok::<_, Infallible>(method_call(&endpoint, request).await) }
    });
    super::serve_connection(io, service, stop).await;
}

/// The body of a method call, as the SDKs send it.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MethodCall {
    method_name: String,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default = "default_response_timeout")]
    response_timeout_in_seconds: u64,
    #[serde(default)]
    connect_timeout_in_seconds: u64,
}

fn default_response_timeout() -> u64 {
    30
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
    let target = method_target(request.uri().path())
        .ok_or((StatusCode::NOT_FOUND, "no such resource".to_owned()))?;
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
    let call: MethodCall = serde_json::from_slice(&body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid method call: {e}")))?;
    let result = endpoint
        .methods
        .invoke(
            &endpoint.sessions,
            &target,
            &call.method_name,
            &call.payload,
            std::time::Duration::from_secs(call.connect_timeout_in_seconds),
            std::time::Duration::from_secs(call.response_timeout_in_seconds),
        )
        .await;
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
}
