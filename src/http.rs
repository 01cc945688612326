//! The metrics endpoint: `GET /metrics` in the Prometheus text format, on the `metrics`
//! address of the configuration (HTTP/1.1 with hyper).

use std::convert::Infallible;
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
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| respond(Arc::clone(&shared), request));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
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
