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

/// An OTLP/HTTP receiver on 127.0.0.1:0 (`POST /v1/traces`, `POST /v1/metrics`), over TLS with
/// `identity` (certificate chain PEM, key PEM) when given, answering each export with an empty
/// protobuf success, for as long as the test runs; returns its address and what it receives.
pub async fn serve_otlp_http(identity: Option<(String, String)>) -> (SocketAddr, HttpExports) {
    use http_body_util::{BodyExt as _, Full};
    use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

    let exports = HttpExports::default();
    let tls = identity.map(|(chain, key)| {
        let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("a PEM chain");
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("a PEM key");
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("the default versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a key that fits its certificate");
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("port 0 binds");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let kept = exports.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let exports = kept.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let receive = service_fn(move |request: Request<Incoming>| {
                    let exports = exports.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let content_type = request
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        exports
                            .lock()
                            .expect("no test thread panicked holding it")
                            .push((path, content_type, body));
                        // An empty Export*ServiceResponse encodes to no bytes.
                        let mut response = Response::new(Full::new(bytes::Bytes::new()));
                        response.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let served = match tls {
                    Some(tls) => match tls.accept(tcp).await {
                        Ok(stream) => {
                            http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), receive)
                                .await
                        }
                        Err(_) => return,
                    },
                    None => {
                        http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), receive)
                            .await
                    }
                };
                drop(served);
            });
        }
    });
    (addr, exports)
}
