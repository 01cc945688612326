//! The hub's HTTP/1.1 endpoints (hyper), each in its own file:
//! - [`metrics`]: `GET /metrics` in the Prometheus text format, on the `metrics` address;
//! - [`methods`]: direct methods between modules over HTTPS on the `https` address;
//! - [`scope`]: the device-scope API on the same address, for child hubs (spec 6.2);
//!
//! and what they share: serving one connection until the hub stops, and JSON responses. The
//! operator's admin endpoint on the unix socket is [`crate::admin`].

pub mod methods;
pub mod metrics;
pub mod scope;

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::stop::Stop;

/// How long a client has to send a request's headers, the first one or, on a kept-alive
/// connection, the next one (hyper starts it when the connection turns idle): also the idle
/// timeout of HTTP connections.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 requests on one connection with `service` until the client closes it or
/// `stop` fires (then the request in progress finishes and the connection closes). A client
/// that takes longer than [`HEADER_TIMEOUT`] to send a request's headers is disconnected.
pub async fn serve_connection<IO, S>(io: IO, service: S, mut stop: Stop)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<Full<Bytes>>, Error = Infallible>,
    S::Future: Send + 'static,
{
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.stopped() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A response with a JSON body.
#[must_use]
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
