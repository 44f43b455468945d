//! An OTLP/gRPC collector server in this process, for whatever collector service the caller
//! implements: the API tests keep every span they receive, the bench only counts them.

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
