//! What only the API tests use: requests with a deadline, reading a status's details, waiting for
//! a condition, a raw HTTP/2 client, certificates. What the benchmark needs too (spawning the app
//! or the binary, the fake Cognito, temporary files) is in the kit, `tests/kit/`.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use cognito_gateway::proto::ResetUserPasswordRequest;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tonic::{Request, Status};
use tonic_types::{ErrorDetails, ErrorInfo, StatusExt as _};

/// The same request with a gRPC deadline.
pub fn with_deadline(
    request: ResetUserPasswordRequest,
    timeout: Duration,
) -> Request<ResetUserPasswordRequest> {
    let mut request = Request::new(request);
    request.set_timeout(timeout);
    request
}

/// The status's `ErrorInfo`; every non-OK status must have exactly one.
pub fn error_info(status: &Status) -> ErrorInfo {
    status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("status without ErrorInfo: {status:?}"))
}

/// All details of the status.
pub fn details(status: &Status) -> ErrorDetails {
    status.get_error_details()
}

/// Waits (polling the observable condition, never a fixed sleep) until `check` holds or 10 s pass.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A bare HTTP/2 client that speaks gRPC by hand. tonic's client enforces deadlines itself and
/// refuses to send malformed messages; this one asks the server exactly what it is given.
pub mod raw {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    /// What came back: the HTTP status, the gRPC status and its details (trailers-only or trailers).
    #[derive(Debug)]
    pub struct Reply {
        pub http: u16,
        pub grpc_status: Option<i32>,
        pub status: Option<tonic::Status>,
    }

    /// Sends one unary call to `path` with the raw message `payload` (framed here) and extra headers.
    pub async fn call(
        addr: SocketAddr,
        path: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut frame = Vec::with_capacity(payload.len() + 5);
        frame.push(0);
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(payload);
        call_framed(addr, path, frame, headers).await
    }

    /// Sends an already framed (or deliberately mis-framed) body.
    pub async fn call_framed(
        addr: SocketAddr,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut request = http::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let response = sender.send_request(request).await.unwrap();
        let http = response.status().as_u16();
        let head = response.headers().clone();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let source = if head.contains_key("grpc-status") {
            &head
        } else {
            &trailers
        };
        let grpc_status = source
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let status = tonic::Status::from_header_map(source);
        Reply {
            http,
            grpc_status,
            status,
        }
    }
}

/// A certificate authority that can issue leaf certificates.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf (certificate PEM, key PEM) for DNS names or a SPIFFE ID.
    pub fn issue(&self, dns: &[&str], spiffe: Option<&str>) -> (String, String) {
        self.issue_with_uris(dns, spiffe.as_slice())
    }

    /// A leaf (certificate PEM, key PEM) for DNS names and any number of URI SANs, in order.
    pub fn issue_with_uris(&self, dns: &[&str], uris: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(dns.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}
