//! `--metrics-listen`: `GET /metrics` in Prometheus's text format, gathered from the same
//! MeterProvider that OTLP exports from, on a listener of its own (never the gRPC port).
//!
//! A scraper, or anyone who can reach the port, must not be able to hold it: connections are
//! capped ([`MAX_CONNECTIONS`], past it closed at once) by the accept loop every listener uses
//! (`crate::listener`), each must send its request head within [`REQUEST_TIMEOUT`], and each
//! serves one request and lives at most [`CONNECTION_DEADLINE`], a slow reader included.
//! Prometheus opens a connection per scrape without complaint.

use std::{convert::Infallible, io, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder as _, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;

use crate::listener::{self, Bounds};

/// Scrapes served at once: Prometheus (one per replica that scrapes) and a person with curl.
pub(crate) const MAX_CONNECTIONS: usize = 8;
/// From accept to a complete request head.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection lives, response included: Prometheus's default scrape timeout.
pub(crate) const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// The `/metrics` endpoint, bound and not yet serving.
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: TcpListener,
    registry: Registry,
}

impl MetricsEndpoint {
    /// Binds `addr` (port 0 picks a free port) for the metrics in `registry`.
    pub(crate) async fn bind(addr: SocketAddr, registry: Registry) -> io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            registry,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until the task running it is dropped or aborted.
    pub async fn run(self) {
        let bounds = Bounds {
            max_connections: MAX_CONNECTIONS,
            // Scrapes come from one Prometheus or two: one address may take every place.
            max_connections_per_peer: MAX_CONNECTIONS,
            // The accept loop's own deadline: the first bytes of the request. hyper's below covers
            // the rest of the head.
            handshake_timeout: REQUEST_TIMEOUT,
            tcp_keepalive: Duration::from_secs(60),
        };
        let mut connections = listener::plain(self.listener, bounds);
        while let Some(Ok(connection)) = connections.next().await {
            let registry = self.registry.clone();
            tokio::spawn(async move {
                let served = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(REQUEST_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(
                        TokioIo::new(connection),
                        service_fn(move |request| {
                            let registry = registry.clone();
                            async move { Ok::<_, Infallible>(answer(&request, &registry)) }
                        }),
                    );
                // Past the deadline the connection is dropped, and with it its place.
                let _ = tokio::time::timeout(CONNECTION_DEADLINE, served).await;
            });
        }
    }
}

/// `GET` (or `HEAD`) `/metrics`; anything else is 404 or 405.
fn answer(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let status = |status: StatusCode| {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return status(StatusCode::NOT_FOUND);
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(error) = encoder.encode(&registry.gather(), &mut body) {
        tracing::error!(%error, "cannot encode the metrics");
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let mut response = Response::new(Full::new(Bytes::from(body)));
    if let Ok(content_type) = encoder.format_type().parse() {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}
