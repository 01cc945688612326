//! The hub's HTTP endpoints (HTTP/1.1 with hyper):
//! - `GET /metrics` in the Prometheus text format, on the `metrics` address;
//! - direct methods between modules over HTTPS on the `https` address, as the SDKs call them:
//!   `POST /twins/{device}/modules/{module}/methods` (or `/twins/{device}/methods` for a leaf
//!   device), the caller named by `x-ms-edge-moduleId` and proven by a SAS token in
//!   `Authorization` (protocol spec 2.6).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::hub::Shared;
use crate::metrics::Gauge;

/// Serves `/metrics` until `stop`.
pub async fn serve_metrics(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    serve(listener, None, shared, stop, respond).await;
}

/// Accepts HTTP/1.1 connections (after a TLS handshake when `tls` is given) until `stop`,
/// answering each request with `handler`.
async fn serve<H, F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(Arc<Shared>, Request<Incoming>) -> F + Copy + Send + Sync + 'static,
    F: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTP accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (tls, shared) = (tls.clone(), Arc::clone(&shared));
                tokio::spawn(async move {
                    let timeout = shared.connect_timeout;
                    let service = service_fn(move |request| handler(Arc::clone(&shared), request));
                    let http = http1::Builder::new();
                    match tls {
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                        Some(tls) => {
                            if let Ok(Ok(stream)) = tokio::time::timeout(timeout, tls.accept(stream)).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
            }
            _ = stop.changed() => return,
        }
    }
}

async fn respond(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if request.method() == Method::GET && request.uri().path() == "/metrics" {
        Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(render(&shared))))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found\n")))
    };
    Ok(response.expect("static response parts are valid"))
}

/// Largest method request body accepted.
const MAX_METHOD_BODY: usize = 128 * 1024;

/// Serves direct method calls over TLS until `stop`.
pub async fn serve_methods(
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    serve(listener, Some(tls), shared, stop, method_call).await;
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
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match authorize_and_invoke(&shared, request).await {
        Ok(result) => json_response(
            StatusCode::OK,
            &serde_json::json!({"status": result.status, "payload": result.payload}),
        ),
        Err((status, message)) => json_response(status, &serde_json::json!({"message": message})),
    };
    Ok(response)
}

async fn authorize_and_invoke(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<crate::methods::MethodResult, (StatusCode, String)> {
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
    if caller_device != shared.device_id {
        return Err((
            StatusCode::UNAUTHORIZED,
            "the caller must be a module of this edge device".to_owned(),
        ));
    }
    // The username's host is not checked; the token's audience is.
    let username = format!("edgehub/{caller_device}/{caller_module}/?api-version=2019-10-01");
    let credentials = crate::mqtt::auth::Credentials {
        client_id: &caller,
        username: Some(&username),
        password: Some(&token),
    };
    if let Err(reason) = shared.auth.authenticate(&credentials) {
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
    let result = shared
        .methods
        .invoke(
            &shared.sessions,
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

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

/// The counters plus the gauges read now: queues per endpoint, clients, store size.
pub fn render(shared: &Shared) -> String {
    let endpoints = shared.store.endpoints();
    let stats: Vec<(String, store::EndpointStats)> = endpoints
        .into_iter()
        .filter_map(|id| shared.store.endpoint_stats(&id).map(|s| (id, s)))
        .collect();
    let label = |id: &str| {
        format!(
            "{{endpoint=\"{}\"}}",
            id.replace('\\', "\\\\").replace('"', "\\\"")
        )
    };
    #[allow(clippy::cast_precision_loss)]
    let gauges = [
        Gauge {
            name: "edgehub_queue_length",
            help: "Messages waiting in an endpoint's queue.",
            samples: stats
                .iter()
                .map(|(id, s)| (label(id), s.count as f64))
                .collect(),
        },
        Gauge {
            name: "edgehub_queue_bytes",
            help: "Payload bytes waiting in an endpoint's queue.",
            samples: stats
                .iter()
                .map(|(id, s)| (label(id), s.bytes as f64))
                .collect(),
        },
        Gauge {
            name: "edgehub_queue_oldest_age_seconds",
            help: "Age of the oldest message waiting in an endpoint's queue.",
            samples: stats
                .iter()
                .map(|(id, s)| (label(id), s.oldest_age.map_or(0.0, |a| a.as_secs_f64())))
                .collect(),
        },
        Gauge {
            name: "edgehub_connected_clients",
            help: "Clients connected now.",
            samples: vec![(String::new(), shared.sessions.connected() as f64)],
        },
        Gauge {
            name: "edgehub_store_disk_bytes",
            help: "Bytes the store occupies on disk.",
            samples: vec![(String::new(), shared.store.stats().disk_bytes as f64)],
        },
    ];
    shared.metrics.render(&gauges)
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
