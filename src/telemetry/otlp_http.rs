//! The HTTP client OTLP/HTTP exports through (`OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`).
//!
//! opentelemetry-otlp's own clients do not fit: its hyper client has no TLS, and the exporters
//! call it from their own threads, outside Tokio, where hyper's connector cannot run. This one
//! sends each request on the runtime [`client`] was built in, with TLS from the same `OTEL_*`
//! settings as the gRPC exporter, and a deadline of `OTEL_EXPORTER_OTLP_[<SIGNAL>_]TIMEOUT`.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};

use super::{CollectorTls, otlp_setting};

/// The most of a collector's answer that is read (it is a small protobuf, or an error text).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The OTLP default, `OTEL_EXPORTER_OTLP_TIMEOUT` unset.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends OTLP/HTTP requests on a Tokio runtime, whoever calls it.
#[derive(Debug, Clone)]
pub(super) struct CollectorClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

/// The client for `signal`, TLS as `tls` says (`None`: plaintext `http://`). Call inside the Tokio
/// runtime that is to carry the exports.
pub(super) fn client(signal: &str, tls: Option<CollectorTls>) -> Result<CollectorClient, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(rustls_config(tls.unwrap_or_default())?)
        .https_or_http()
        .enable_http1()
        .build();
    let timeout = otlp_setting(signal, "TIMEOUT")
        .and_then(|ms| ms.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
    Ok(CollectorClient {
        client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
        runtime: tokio::runtime::Handle::try_current()
            .map_err(|_| "OTLP/HTTP needs a Tokio runtime".to_owned())?,
        timeout,
    })
}

fn rustls_config(tls: CollectorTls) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("CERTIFICATE: {e}"))?;
                roots.add(cert).map_err(|e| format!("CERTIFICATE: {e}"))?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    match tls.identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("CLIENT_CERTIFICATE: {e}"))?;
            let key =
                PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("CLIENT_KEY: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("CLIENT_CERTIFICATE: {e}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

#[tonic::async_trait]
impl HttpClient for CollectorClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let request = Request::from_parts(parts, Full::new(body));
        let client = self.client.clone();
        let timeout = self.timeout;
        let sent = self.runtime.spawn(async move {
            tokio::time::timeout(timeout, async move {
                let response = client.request(request).await?;
                let (parts, body) = response.into_parts();
                let body = Limited::new(body, MAX_RESPONSE_BYTES)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            })
            .await
            .map_err(|_| HttpError::from("the collector did not answer in time"))?
        });
        sent.await?
    }
}
