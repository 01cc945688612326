//! `GET /metrics`: the hub's counters and gauges in the Prometheus text format.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::metrics::{Gauge, Metrics};
use crate::mqtt::session::Sessions;
use crate::stop::Stop;

/// What the metrics endpoint reads: the counters, and the gauges it reads when asked.
#[derive(Debug)]
pub struct MetricsSources {
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// Queues per endpoint and the store's size.
    pub store: Arc<store::Store>,
    /// Connected clients.
    pub sessions: Arc<Sessions>,
}

/// Serves one connection of the metrics listener.
pub async fn serve_connection<IO>(io: IO, sources: Arc<MetricsSources>, stop: Stop)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let response = respond(&sources, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    super::serve_connection(io, service, stop).await;
}

fn respond(sources: &MetricsSources, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let response = if request.method() == Method::GET && request.uri().path() == "/metrics" {
        Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(render(sources))))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"not found\n")))
    };
    response.expect("static response parts are valid")
}

/// The counters plus the gauges read now: queues per endpoint, clients, store size.
pub fn render(sources: &MetricsSources) -> String {
    let store = &sources.store;
    let stats: Vec<(String, store::EndpointStats)> = store
        .endpoints()
        .into_iter()
        .filter_map(|id| store.endpoint_stats(&id).map(|s| (id, s)))
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
            samples: vec![(String::new(), sources.sessions.connected() as f64)],
        },
        Gauge {
            name: "edgehub_store_disk_bytes",
            help: "Bytes the store occupies on disk.",
            samples: vec![(String::new(), store.stats().disk_bytes as f64)],
        },
    ];
    sources.metrics.render(&gauges)
}
