//! Shared test plumbing: spawn the real app on port 0 and talk to it over a real socket.

#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, time::Duration};

use cognito_gateway::{
    App, Config,
    cognito::{Backend, SdkBackend},
    config::{CognitoSettings, LimitSettings},
    proto::{
        ResetUserPasswordRequest, ResetUserPasswordResponse,
        user_admin_service_client::UserAdminServiceClient,
    },
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Status,
    transport::{Channel, Endpoint},
};
use tonic_types::{ErrorDetails, ErrorInfo, StatusExt as _};

/// A gateway running in this process.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: UserAdminServiceClient<Channel>,
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Cognito settings for tests: fast backoff so retry tests take milliseconds.
pub fn test_settings() -> CognitoSettings {
    CognitoSettings {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..CognitoSettings::default()
    }
}

/// The config tests start from: port 0, no authentication, limits and the per-user cooldown out of
/// the way (the tests of limits set their own).
pub fn test_config() -> Config {
    let mut config = Config::with_listen("127.0.0.1:0".parse().expect("a literal address"));
    config.limits = LimitSettings {
        backend_rps: 10_000,
        backend_burst: 10_000,
        default_rate_per_second: 10_000,
        default_burst: 10_000,
        user_cooldown: Duration::ZERO,
        ..LimitSettings::default()
    };
    config
}

/// The real SDK backend, pointed at `endpoint` (wiremock, moto, the local Cognito).
pub async fn sdk_backend(endpoint: &str, settings: CognitoSettings) -> SdkBackend {
    SdkBackend::with_endpoint(endpoint, "us-east-1", settings).await
}

/// Spawns the gateway in front of `endpoint` with test settings.
pub async fn spawn_app(endpoint: &str) -> TestApp {
    spawn_app_with(test_config(), sdk_backend(endpoint, test_settings()).await).await
}

/// Spawns the gateway with a given config and backend.
pub async fn spawn_app_with<B: Backend>(config: Config, backend: B) -> TestApp {
    let app = App::build(config, backend).await.expect("port 0 binds");
    let addr = app.local_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(async {
        let _ = rx.await;
    }));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the app is listening");
    TestApp {
        addr,
        client: UserAdminServiceClient::new(channel.clone()),
        channel,
        shutdown: Some(tx),
        handle,
    }
}

impl TestApp {
    /// One ResetUserPassword call.
    pub async fn reset(
        &self,
        pool: &str,
        username: &str,
    ) -> Result<ResetUserPasswordResponse, Status> {
        self.reset_request(request(pool, username)).await
    }

    /// One call with a full request (client metadata, a deadline...).
    pub async fn reset_request(
        &self,
        request: impl tonic::IntoRequest<ResetUserPasswordRequest>,
    ) -> Result<ResetUserPasswordResponse, Status> {
        self.client
            .clone()
            .reset_user_password(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Triggers graceful shutdown (as SIGTERM does) and waits for the server to stop.
    pub async fn stop(mut self) -> Result<(), tonic::transport::Error> {
        self.begin_shutdown();
        self.handle.await.expect("the server task does not panic")
    }

    /// Triggers graceful shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A request without metadata.
pub fn request(pool: &str, username: &str) -> ResetUserPasswordRequest {
    ResetUserPasswordRequest {
        user_pool_id: pool.to_owned(),
        username: username.to_owned(),
        client_metadata: Default::default(),
    }
}

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
