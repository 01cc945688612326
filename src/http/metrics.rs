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
use crate::upstream::UpstreamStatus;
use crate::upstream::lanes::LIVE_QUEUE;

/// What the metrics endpoint reads: the counters, and the gauges it reads when asked.
#[derive(Debug)]
pub struct MetricsSources {
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// Queues per endpoint and the store's size.
    pub store: Arc<store::Store>,
    /// Connected clients.
    pub sessions: Arc<Sessions>,
    /// The upstream links, when upstream is configured.
    pub upstream: Option<Arc<UpstreamStatus>>,
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
    let store_stats = store.stats();
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
    let mut gauges = vec![
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
            samples: vec![(String::new(), store_stats.disk_bytes as f64)],
        },
        Gauge {
            name: "edgehub_store_state",
            help: "1 for the store's state: writable, disk_full (new messages refused until space returns) or failing.",
            samples: vec![(
                format!(
                    "{{state=\"{}\"}}",
                    crate::metrics::store_state(store_stats.health)
                ),
                1.0,
            )],
        },
        Gauge {
            name: "edgehub_store_over_quota",
            help: "1 while the store is over its quota (max_store_bytes or the free-disk floor).",
            samples: vec![(String::new(), f64::from(u8::from(store_stats.over_quota)))],
        },
        Gauge {
            name: "edgehub_messages_expired_total",
            help: "Messages dropped from a queue because their time to live ran out, since start.",
            samples: vec![(String::new(), store_stats.expired as f64)],
        },
    ];
    if let Some(upstream) = &sources.upstream {
        gauges.extend(upstream_gauges(upstream));
        gauges.push(Gauge {
            name: "edgehub_upstream_backlog",
            help: "Messages waiting to go upstream, per priority (0 is the highest).",
            samples: upstream_backlog(store)
                .into_iter()
                .map(|(priority, count)| (format!("{{priority=\"{priority}\"}}"), count as f64))
                .collect(),
        });
    }
    sources.metrics.render(&gauges)
}

/// Messages waiting to go upstream per priority: the `$upstream` queue and, with live data
/// first, its live queue.
fn upstream_backlog(store: &store::Store) -> std::collections::BTreeMap<u32, u64> {
    let mut backlog = std::collections::BTreeMap::new();
    for queue in [router::Endpoint::Upstream.id("").as_str(), LIVE_QUEUE] {
        for (priority, count) in store.backlog_by_priority(queue).unwrap_or_default() {
            *backlog.entry(priority).or_default() += count;
        }
    }
    backlog
}

/// The upstream link's state, reconnects, messages in flight and forwarded.
#[allow(clippy::cast_precision_loss)]
fn upstream_gauges(upstream: &UpstreamStatus) -> [Gauge<'static>; 5] {
    let (connected, failing) = upstream.link_counts();
    let state = upstream.state();
    [
        Gauge {
            name: "edgehub_upstream_connected",
            help: "1 when every open upstream link is connected (or none is needed), 0 otherwise.",
            samples: vec![(
                format!("{{state=\"{}\"}}", state.name()),
                if state == crate::upstream::status::State::Disconnected {
                    0.0
                } else {
                    1.0
                },
            )],
        },
        Gauge {
            name: "edgehub_upstream_links",
            help: "Upstream links (one per identity) by state.",
            samples: vec![
                ("{state=\"connected\"}".to_owned(), connected as f64),
                ("{state=\"failing\"}".to_owned(), failing as f64),
            ],
        },
        Gauge {
            name: "edgehub_upstream_reconnects_total",
            help: "Upstream connections made again after a failure or a token renewal.",
            samples: vec![(String::new(), upstream.reconnects() as f64)],
        },
        Gauge {
            name: "edgehub_upstream_in_flight",
            help: "Messages sent upstream and not acknowledged yet.",
            samples: vec![(String::new(), upstream.in_flight() as f64)],
        },
        Gauge {
            name: "edgehub_upstream_forwarded_total",
            help: "Messages acknowledged by upstream.",
            samples: vec![(String::new(), upstream.forwarded_total() as f64)],
        },
    ]
}
