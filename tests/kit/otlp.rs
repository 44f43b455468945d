//! OTLP collector servers in this process: over gRPC for whatever collector service the caller
//! implements (the API tests keep every span they receive, the bench only counts them), and over
//! HTTP, keeping every request.

use std::{future::Future, net::SocketAddr};

use opentelemetry_proto::tonic::collector::{
    metrics::v1::metrics_service_server::{MetricsService, MetricsServiceServer},
    trace::v1::trace_service_server::{TraceService, TraceServiceServer},
};
use tokio::task::JoinHandle;
use tonic::transport::{Identity, ServerTlsConfig, server::TcpIncoming};

/// Serves `collector`'s trace and metrics services on 127.0.0.1:0, over TLS with `identity` when
/// given, until `shutdown` resolves; returns the address and the server's task.
pub async fn serve_otlp<C>(
    collector: C,
    identity: Option<Identity>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (SocketAddr, JoinHandle<Result<(), tonic::transport::Error>>)
where
    C: TraceService + MetricsService + Clone,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("port 0 binds");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let mut server = tonic::transport::Server::builder();
    if let Some(identity) = identity {
        server = server
            .tls_config(ServerTlsConfig::new().identity(identity))
            .expect("a server TLS config with an identity is valid");
    }
    let server = server
        .add_service(TraceServiceServer::new(collector.clone()))
        .add_service(MetricsServiceServer::new(collector))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown);
    (addr, tokio::spawn(server))
}

/// What an OTLP/HTTP receiver got: each request's path, `content-type` and body.
pub type HttpExports = std::sync::Arc<std::sync::Mutex<Vec<(String, String, bytes::Bytes)>>>;

/// An OTLP/HTTP receiver on 127.0.0.1:0 (`POST /v1/traces`, `POST /v1/metrics`), answering each
/// export with an empty protobuf success, for as long as the test runs; returns its address and
/// what it receives.
pub async fn serve_otlp_http() -> (SocketAddr, HttpExports) {
    use axum::{body::Bytes, http::HeaderMap, routing::post};
    let exports = HttpExports::default();
    let receive = |path: &'static str, exports: HttpExports| {
        post(move |headers: HeaderMap, body: Bytes| async move {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            exports
                .lock()
                .expect("no test thread panicked holding it")
                .push((path.to_owned(), content_type, body));
            // An empty Export*ServiceResponse encodes to no bytes.
            (
                [("content-type", "application/x-protobuf")],
                Vec::<u8>::new(),
            )
        })
    };
    let app = axum::Router::new()
        .route("/v1/traces", receive("/v1/traces", exports.clone()))
        .route("/v1/metrics", receive("/v1/metrics", exports.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("port 0 binds");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, exports)
}
